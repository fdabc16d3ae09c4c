//! What a machine is made of, and the checks on it.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cxlvm_x86::elf::ElfError;

/// Why an input file (guest image, topology) cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InputFileError {
    /// It does not exist, or stat/open/read failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// It is a directory, FIFO, socket or device: reading it could block forever or mean nothing.
    #[error("not a regular file")]
    NotRegular,
}

/// Reads a whole input file, refusing anything but a regular file (checked before opening, so a
/// FIFO never blocks cxlvm).
pub fn read_input_file(path: &std::path::Path) -> Result<Vec<u8>, InputFileError> {
    check_input_file(path)?;
    let mut f = std::fs::File::open(path)?;
    // Opened after the check: make sure it is still the regular file we checked.
    if !f.metadata()?.is_file() {
        return Err(InputFileError::NotRegular);
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut bytes)?;
    Ok(bytes)
}

/// Checks that an input file exists and is a regular file (without reading it).
pub fn check_input_file(path: &std::path::Path) -> Result<(), InputFileError> {
    if std::fs::metadata(path)?.is_file() {
        Ok(())
    } else {
        Err(InputFileError::NotRegular)
    }
}

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

/// A Linux kernel to boot (instead of a test guest).
#[derive(Clone, Debug)]
pub struct LinuxKernel {
    /// ELF `vmlinux` with a PVH note, or a bzImage.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Show CPUID.1:ECX[31] (the hypervisor bit). Linux refuses to commit CXL regions itself
    /// when it sees it; without it the guest has no kvmclock and uses the TSC.
    pub hypervisor_bit: bool,
}

/// What the machine boots.
#[derive(Clone, Debug)]
pub enum Boot {
    /// A freestanding test guest (docs/guest-abi.md) at CPL3.
    TestGuest(PathBuf),
    /// A Linux kernel with in-kernel interrupt controllers, ACPI and the boot protocols.
    Linux(LinuxKernel),
}

/// The privilege level a test guest enters at (docs/guest-abi.md, "CPU state at entry").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Privilege {
    /// CPL3 (the default): on `kvm_pvm` hosts ring 3 runs natively.
    #[default]
    User,
    /// CPL0 (kernel code and data selectors), everything else as for `User`. On `kvm_pvm` every
    /// ring-0 instruction goes through KVM's instruction emulator (slow, and some instructions
    /// are not emulated there): for tests of ring-0 behaviour (exceptions, IDT, own paging).
    Kernel,
}

/// A machine description.
pub struct MachineConfig {
    /// What to boot.
    pub boot: Boot,
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
    /// Privilege level of a test guest at entry (ignored for Linux machines).
    pub privilege: Privilege,
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
    /// Confine every vCPU thread and the run thread with its seccomp filter before the guest
    /// runs (default true; see `cxlvm-seccomp`). Turning it off is a debugging aid only.
    pub seccomp: bool,
    /// Feed cxlvm's stdin to the guest's serial console during the run (Linux guests; the
    /// reading thread blocks on stdin and ends with the process, so libraries leave it off).
    pub console_input: bool,
    /// Write every ACPI table as `<SIG>.dat` into this directory at build (Linux machines and
    /// test guests).
    pub dump_acpi: Option<PathBuf>,
}

impl MachineConfig {
    /// A test-guest config with defaults: 64 MiB, 1 vCPU, serial to stdout, `/dev/kvm`.
    pub fn new(guest: impl Into<PathBuf>) -> Self {
        Self::booting(Boot::TestGuest(guest.into()))
    }

    /// A config booting `boot`, with the defaults of [`MachineConfig::new`].
    pub fn booting(boot: Boot) -> Self {
        Self {
            boot,
            memory: 64 << 20,
            vcpus: 1,
            cmdline: String::new(),
            serial: SerialOut::Stdout,
            scratch_window: None,
            privilege: Privilege::User,
            timeout: None,
            kvm_path: "/dev/kvm".into(),
            started: None,
            cxl: None,
            cxl_direct: true,
            vma_budget: None,
            seccomp: true,
            console_input: false,
            dump_acpi: None,
        }
    }
}

/// Most vCPUs a machine may have.
pub const MAX_VCPUS: u32 = 64;
/// Least guest RAM.
pub const MIN_MEMORY: u64 = 4 << 20;
/// Most guest RAM.
pub const MAX_MEMORY: u64 = 1 << 40;

/// Longest guest command line (bytes). Linux's own limit on x86 is 2048; the boot info has room
/// for this much next to the largest platform (`MAX_WINDOWS` windows, 16 host bridges).
pub const MAX_CMDLINE: usize = 4096;

/// A problem with the user's input: one line, exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Guest image unreadable.
    #[error("cannot read guest image {path}: {source}")]
    GuestUnreadable {
        /// Path.
        path: String,
        /// Cause.
        source: InputFileError,
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
    /// The guest command line is too long for the boot info.
    #[error("--cmdline is {0} bytes: at most {MAX_CMDLINE}")]
    Cmdline(usize),
    /// The identity page tables (RAM, platform ranges and CXL windows) and the vCPU stacks do not
    /// fit in low guest RAM.
    #[error(
        "the page tables for the guest-physical layout ({pt_mib} MiB, mostly for CXL windows) and {vcpus} vCPU stacks do not fit in the {low_mib} MiB of guest RAM below 4 GiB; use more --memory or smaller windows"
    )]
    PageTablesDoNotFit {
        /// Page-table bytes, in MiB (rounded up).
        pt_mib: u64,
        /// vCPUs (one stack each).
        vcpus: u32,
        /// Guest RAM below 4 GiB, in MiB.
        low_mib: u64,
    },
    /// Too little RAM for a Linux kernel.
    #[error("--memory {0:#x}: a Linux guest needs at least 16 MiB")]
    LinuxMemory(u64),
    /// Bad vCPU count.
    #[error("--vcpus {0}: must be between 1 and {MAX_VCPUS}")]
    Vcpus(u32),
    /// Bad scratch window size.
    #[error("--scratch-window {0:#x}: must be a non-zero multiple of 2 MiB up to 64 GiB")]
    ScratchWindow(u64),
    /// The CXL topology is wrong (the message names the item).
    #[error("CXL topology: {0}")]
    Topology(#[from] cxlvm_cxl::topology::TopologyError),
    /// A CXL device's file or memory cannot be used.
    #[error("CXL topology: {0}")]
    Platform(#[source] cxlvm_platform::PlatformError),
    /// The initrd cannot be read.
    #[error("cannot read initrd {path}: {source}")]
    InitrdUnreadable {
        /// Path.
        path: String,
        /// Cause.
        source: InputFileError,
    },
    /// `--dump-acpi` cannot write its directory.
    #[error("--dump-acpi {path}: {source}")]
    DumpAcpi {
        /// Directory.
        path: String,
        /// Cause.
        source: cxlvm_acpi::AcpiError,
    },
    /// The kernel or initrd cannot be booted.
    #[error(transparent)]
    Boot(cxlvm_boot::BootError),
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
        if self.cmdline.len() > MAX_CMDLINE {
            return Err(ConfigError::Cmdline(self.cmdline.len()));
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
