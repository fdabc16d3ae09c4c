//! cxlvm's Linux guest agent (`cxlvm-agent`).
//!
//! Inside a Linux guest of cxlvm it:
//! 1. finds the CXL topology under `<sysfs>/bus/cxl/devices/` ([`topology`]);
//! 2. uses the committed region if there is one, else creates a RAM region through the sysfs
//!    ABI over every memdev below the first RAM-capable root decoder ([`region`]);
//! 3. waits (bounded) for the region's memory to come online as a CPU-less NUMA node
//!    ([`node`]);
//! 4. measures 8-byte stores, 32-byte AVX stores and memcpy on node-0 memory against
//!    CXL-node memory, then runs an XSAVEC + AVX store/load loop on CXL-node memory checking
//!    every byte ([`measure`]);
//! 5. reports everything as one JSON object ([`Report`]).
//!
//! All sysfs access goes through the [`fs::SysFs`] trait with paths relative to a root
//! (`--sysfs`, default `/sys`), so tests run the same code against a fake tree. The only
//! `unsafe` code is in [`sys`] (x86-64 Linux).

pub mod error;
pub mod fs;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod measure;
pub mod node;
pub mod region;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod sys;
pub mod topology;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::error::AgentError;
use crate::fs::SysFs;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The sysfs root (`/sys`).
    pub sysfs: PathBuf,
    /// Measure bandwidth and run the XSAVEC loop.
    pub measure: bool,
    /// Power off at the end when running as PID 1.
    pub poweroff: bool,
    /// Largest buffer per node, MiB.
    pub buffer_mib: usize,
    /// Passes per operation (the median is reported).
    pub passes: usize,
    /// How long to wait for the region's memory to come online.
    pub wait: Duration,
    /// XSAVEC loop rounds.
    pub xsavec_iterations: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sysfs: PathBuf::from("/sys"),
            measure: true,
            poweroff: true,
            buffer_mib: 128,
            passes: 5,
            wait: Duration::from_secs(30),
            xsavec_iterations: 100_000,
        }
    }
}

/// A failure, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorReport {
    pub step: &'static str,
    pub file: Option<String>,
    pub message: String,
}

impl From<&AgentError> for ErrorReport {
    fn from(e: &AgentError) -> Self {
        Self {
            step: e.step().name(),
            file: e.path().map(|p| p.display().to_string()),
            message: e.to_string(),
        }
    }
}

/// The region used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionReport {
    pub created: bool,
    pub name: String,
    pub base: Option<u64>,
    pub size: u64,
    pub ways: u32,
    pub granularity: u64,
    pub targets: Vec<String>,
    pub skipped_memdevs: Vec<String>,
}

/// The NUMA node the region's memory became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeReport {
    pub id: u32,
    pub mem_total_bytes: u64,
    pub mem_free_bytes: u64,
    pub waited_ms: u64,
    pub blocks_onlined_by_agent: usize,
}

/// Everything the agent prints: one JSON object on stdout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub agent: &'static str,
    pub version: &'static str,
    /// No step failed and the XSAVEC loop (if it ran) found no mismatch.
    pub ok: bool,
    pub error: Option<ErrorReport>,
    pub sysfs: String,
    pub topology: Option<topology::Topology>,
    pub region: Option<RegionReport>,
    pub node: Option<NodeReport>,
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    pub bandwidth: Option<measure::Bandwidth>,
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    pub xsavec: Option<measure::XsavecLoop>,
    pub notes: Vec<String>,
}

impl Report {
    fn new(opts: &Options) -> Self {
        Self {
            agent: "cxlvm-agent",
            version: env!("CARGO_PKG_VERSION"),
            ok: false,
            error: None,
            sysfs: opts.sysfs.display().to_string(),
            topology: None,
            region: None,
            node: None,
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            bandwidth: None,
            #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
            xsavec: None,
            notes: Vec::new(),
        }
    }

    fn fail(mut self, e: &AgentError) -> Self {
        self.error = Some(e.into());
        self.ok = false;
        self
    }
}

/// Runs every step against `fs` and returns the report (never panics on a guest problem:
/// failures are in `error`).
pub fn run(fs: &dyn SysFs, opts: &Options) -> Report {
    let mut report = Report::new(opts);
    let topo = match topology::discover(fs) {
        Ok(t) => t,
        Err(e) => return report.fail(&e),
    };
    report.topology = Some(topo.clone());
    let outcome = match region::ensure(fs, &topo) {
        Ok(o) => o,
        Err(e) => return report.fail(&e),
    };
    let r = &outcome.region;
    report.region = Some(RegionReport {
        created: outcome.created,
        name: r.name.clone(),
        base: r.base,
        size: r.size,
        ways: r.ways,
        granularity: r.granularity,
        targets: r.targets.clone(),
        skipped_memdevs: outcome.skipped.clone(),
    });
    let onlined = match node::wait_for_node(fs, r, opts.wait, Duration::from_millis(100)) {
        Ok(o) => o,
        Err(e) => return report.fail(&e),
    };
    report.node = Some(NodeReport {
        id: onlined.node.id,
        mem_total_bytes: onlined.node.mem.total_bytes,
        mem_free_bytes: onlined.node.mem.free_bytes,
        waited_ms: onlined.waited_ms,
        blocks_onlined_by_agent: onlined.blocks_onlined_by_agent,
    });
    report.ok = true;
    if opts.measure {
        measure_into(fs, opts, &onlined.node, &mut report);
    } else {
        report
            .notes
            .push("measurements skipped (--no-measure)".to_owned());
    }
    report
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn measure_into(fs: &dyn SysFs, opts: &Options, cxl: &node::Node, report: &mut Report) {
    const MIB: usize = 1 << 20;
    const MIN: usize = 8 * MIB;
    let free0 = node::nodes(fs)
        .ok()
        .and_then(|ns| ns.into_iter().find(|n| n.id == 0))
        .map(|n| n.mem.free_bytes as usize);
    let mut len = opts.buffer_mib.saturating_mul(MIB);
    len = len.min(cxl.mem.free_bytes as usize / 2);
    if let Some(f) = free0 {
        len = len.min(f / 2);
    }
    len = len / (2 * MIB) * (2 * MIB);
    if len < MIN {
        report.notes.push(format!(
            "bandwidth skipped: {len} bytes fit on both nodes (need {MIN}); node {} has {} bytes free",
            cxl.id, cxl.mem.free_bytes
        ));
    } else {
        if !sys::has_avx() {
            report
                .notes
                .push("no AVX: 32-byte stores skipped".to_owned());
        }
        match measure::bandwidth(cxl.id, len, opts.passes) {
            Ok(b) => {
                for nb in [&b.node0, &b.cxl] {
                    if let Some(p) = nb.pages
                        && p.on_node != p.sampled
                    {
                        report.notes.push(format!(
                            "only {} of {} sampled pages are on node {}",
                            p.on_node, p.sampled, nb.node
                        ));
                    }
                }
                report.bandwidth = Some(b);
            }
            Err(e) => {
                report.ok = false;
                report
                    .notes
                    .push(format!("bandwidth failed (mmap/mbind of {len} bytes): {e}"));
            }
        }
    }
    let xlen = (16 * MIB).min(cxl.mem.free_bytes as usize / 2) / (2 * MIB) * (2 * MIB);
    if xlen == 0 {
        report
            .notes
            .push("XSAVEC loop skipped: no free memory on the CXL node".to_owned());
        return;
    }
    match measure::xsavec_loop(cxl.id, xlen, opts.xsavec_iterations) {
        Ok(x) => {
            if !x.ran {
                report
                    .notes
                    .push("XSAVEC loop skipped: the CPU or kernel lacks XSAVEC or AVX".to_owned());
            }
            if x.mismatches != 0 {
                report.ok = false;
            }
            report.xsavec = Some(x);
        }
        Err(e) => {
            report.ok = false;
            report.notes.push(format!(
                "XSAVEC loop failed (mmap/mbind of {xlen} bytes): {e}"
            ));
        }
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn measure_into(_fs: &dyn SysFs, _opts: &Options, _cxl: &node::Node, report: &mut Report) {
    report
        .notes
        .push("measurements need x86-64 Linux".to_owned());
}
