//! What a machine is made of, and the checks on it.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cxlvm_x86::elf::ElfError;

/// Where the serial console goes.
pub enum SerialOut {
    /// cxlvm's stdout.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Any writer (tests).
    Writer(Box<dyn Write + Send>),
    /// Discarded.
    Null,
}

/// A machine description.
pub struct MachineConfig {
    /// Guest ELF image.
    pub guest: PathBuf,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest command line (boot info).
    pub cmdline: String,
    /// Serial console output.
    pub serial: SerialOut,
    /// Size of the scratch window, if any.
    pub scratch_window: Option<u64>,
    /// Stop the guest after this long.
    pub timeout: Option<Duration>,
    /// KVM device path.
    pub kvm_path: String,
    /// When cxlvm started (for start-up timing); defaults to when the machine is built.
    pub started: Option<Instant>,
    /// CXL topology (host bridges, Type-3 devices, fixed windows).
    pub cxl: Option<cxlvm_cxl::topology::Topology>,
    /// Map decoded CXL ranges directly at start (true) or keep them on the MMIO path.
    pub cxl_direct: bool,
    /// Most host mappings interleaved overlays may use (default: what vm.max_map_count leaves).
    pub vma_budget: Option<u64>,
}

impl MachineConfig {
    /// A config with defaults: 64 MiB, 1 vCPU, serial to stdout, `/dev/kvm`.
    pub fn new(guest: impl Into<PathBuf>) -> Self {
        Self {
            guest: guest.into(),
            memory: 64 << 20,
            vcpus: 1,
            cmdline: String::new(),
            serial: SerialOut::Stdout,
            scratch_window: None,
            timeout: None,
            kvm_path: "/dev/kvm".into(),
            started: None,
            cxl: None,
            cxl_direct: true,
            vma_budget: None,
        }
    }
}

/// Most vCPUs a machine may have.
pub const MAX_VCPUS: u32 = 64;
/// Least guest RAM.
pub const MIN_MEMORY: u64 = 4 << 20;
/// Most guest RAM.
pub const MAX_MEMORY: u64 = 1 << 40;

/// A problem with the user's input: one line, exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Guest image unreadable.
    #[error("cannot read guest image {path}: {source}")]
    GuestUnreadable {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Guest image is not a usable ELF.
    #[error("guest image {path}: {source}")]
    GuestInvalid {
        /// Path.
        path: String,
        /// Cause.
        source: ElfError,
    },
    /// Guest image does not fit.
    #[error(
        "guest image {path} needs [{start:#x}, {end:#x}) but guest RAM for images is [{min:#x}, {max:#x}) with --memory {memory_mib} MiB; use more --memory"
    )]
    GuestDoesNotFit {
        /// Path.
        path: String,
        /// Image start.
        start: u64,
        /// Image end.
        end: u64,
        /// Lowest allowed address.
        min: u64,
        /// Highest allowed end.
        max: u64,
        /// Memory given.
        memory_mib: u64,
    },
    /// Bad memory size.
    #[error("--memory {0:#x}: must be a multiple of 4 KiB between 4 MiB and 1 TiB")]
    Memory(u64),
    /// Bad vCPU count.
    #[error("--vcpus {0}: must be between 1 and {MAX_VCPUS}")]
    Vcpus(u32),
    /// Bad scratch window size.
    #[error("--scratch-window {0:#x}: must be a non-zero multiple of 2 MiB up to 64 GiB")]
    ScratchWindow(u64),
    /// The CXL topology is wrong (the message names the item).
    #[error("CXL topology: {0}")]
    Topology(String),
    /// Serial file cannot be created.
    #[error("cannot create serial output file {path}: {source}")]
    SerialFile {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl MachineConfig {
    /// Checks the scalar settings.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !self.memory.is_multiple_of(4096) || !(MIN_MEMORY..=MAX_MEMORY).contains(&self.memory) {
            return Err(ConfigError::Memory(self.memory));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if let Some(s) = self.scratch_window
            && (s == 0 || !s.is_multiple_of(2 << 20) || s > (64 << 30))
        {
            return Err(ConfigError::ScratchWindow(s));
        }
        Ok(())
    }
}
