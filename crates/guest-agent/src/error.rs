//! The agent's errors: each names the step that failed and the sysfs file it was touching.

use std::fmt;
use std::path::PathBuf;

/// The steps of finding the topology, creating a region and onlining it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading the CXL devices (ports, decoders, memdevs, regions).
    Discover,
    /// Choosing root decoder, memdevs, ways, granularity and size.
    Plan,
    /// Reading then writing the root decoder's `create_ram_region`.
    CreateRegion,
    /// `regionN/interleave_granularity`.
    Granularity,
    /// `regionN/interleave_ways`.
    Ways,
    /// `regionN/size`.
    Size,
    /// An endpoint decoder's `mode` (and the `dpa_size` = 0 that must precede a mode change).
    EndpointMode,
    /// An endpoint decoder's `dpa_size`.
    EndpointDpaSize,
    /// `regionN/targetK`.
    Target,
    /// `regionN/commit`.
    Commit,
    /// `devices/system/memory/auto_online_blocks`.
    AutoOnline,
    /// `bus/cxl/drivers/cxl_region/bind`.
    Bind,
    /// Reading the region back after creation.
    ReadBack,
    /// Waiting for the region's memory to come online on a new NUMA node.
    Online,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Discover => "discover",
            Step::Plan => "plan",
            Step::CreateRegion => "create_ram_region",
            Step::Granularity => "interleave_granularity",
            Step::Ways => "interleave_ways",
            Step::Size => "size",
            Step::EndpointMode => "endpoint mode",
            Step::EndpointDpaSize => "endpoint dpa_size",
            Step::Target => "target",
            Step::Commit => "commit",
            Step::AutoOnline => "auto_online_blocks",
            Step::Bind => "bind",
            Step::ReadBack => "read back",
            Step::Online => "online",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong, with the step and the file.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{step}: cannot read {}: {source}", path.display())]
    Read {
        step: Step,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{step}: writing {value:?} to {} failed: {source}", path.display())]
    Write {
        step: Step,
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("{step}: {} holds {text:?}, expected {expected}", path.display())]
    Parse {
        step: Step,
        path: PathBuf,
        text: String,
        expected: &'static str,
    },
    #[error("{step}: {message}")]
    Topology { step: Step, message: String },
    #[error("{step}: {message}")]
    Timeout { step: Step, message: String },
}

impl AgentError {
    /// The step that failed.
    pub fn step(&self) -> Step {
        match self {
            AgentError::Read { step, .. }
            | AgentError::Write { step, .. }
            | AgentError::Parse { step, .. }
            | AgentError::Topology { step, .. }
            | AgentError::Timeout { step, .. } => *step,
        }
    }

    /// The sysfs file involved, if one was.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            AgentError::Read { path, .. }
            | AgentError::Write { path, .. }
            | AgentError::Parse { path, .. } => Some(path),
            AgentError::Topology { .. } | AgentError::Timeout { .. } => None,
        }
    }
}
