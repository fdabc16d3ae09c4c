//! Machine assembly for cxlvm: turns a [`MachineConfig`] into a running VM (memory map, KVM slots,
//! devices, boot structures, vCPUs) and reports how the run ended.
#![forbid(unsafe_code)]

mod acpi;
mod config;
mod linux;
mod machine;
mod report;
mod run;

pub use config::{
    Boot, ConfigError, InputFileError, LinuxKernel, MachineConfig, Privilege, SerialOut,
    read_input_file,
};
pub use machine::Machine;
pub use report::{
    EmulationStats, FaultKind, MemoryState, NotCompleted, Outcome, RESET_STATUS, RunError,
    RunReport, Stats, ViewRange, WindowState, mnemonic_name,
};

/// Errors building or running a machine.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The user's input is wrong (exit status 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM is unavailable or refused an operation.
    #[error(transparent)]
    Kvm(#[from] cxlvm_kvm::KvmError),
    /// The memory map could not be built.
    #[error("memory map: {0}")]
    Memory(#[from] cxlvm_memory::MemoryError),
    /// A backing could not be created or written.
    #[error(transparent)]
    Backing(#[from] cxlvm_memory::BackingError),
    /// The identity page tables could not be planned.
    #[error("page tables: {0}")]
    Paging(#[from] cxlvm_x86::paging::PagingError),
    /// The scratch window could not be installed.
    #[error("scratch window: {0}")]
    Scratch(#[from] cxlvm_devices::WindowError),
    /// A port-I/O device could not be registered.
    #[error("port I/O: {0}")]
    Pio(#[from] cxlvm_devices::PioError),
    /// The CXL platform could not be built (not the user's input: an internal or host failure).
    #[error(transparent)]
    Platform(cxlvm_platform::PlatformError),
    /// Loading the kernel failed inside cxlvm (not the image's fault).
    #[error("kernel boot: {0}")]
    Boot(#[source] cxlvm_boot::BootError),
    /// The ACPI tables could not be built from the machine (an internal inconsistency).
    #[error("ACPI tables: {0}")]
    Acpi(#[from] cxlvm_acpi::AcpiError),
    /// The ACPI tables outgrew their room.
    #[error("ACPI tables are {size} bytes, room for {room}")]
    AcpiTooLarge {
        /// Bytes needed.
        size: usize,
        /// Bytes available.
        room: u64,
    },
    /// An eventfd could not be created.
    #[error("eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Guest RAM has no file to map for the kernel loader.
    #[error("guest RAM is not file-backed")]
    NoRamFile,
    /// The boot info outgrew its room (the configuration limits should make this impossible).
    #[error("boot info is {size} bytes, room for {room}")]
    BootInfoTooLarge {
        /// Bytes needed.
        size: usize,
        /// Bytes available.
        room: u64,
    },
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] cxlvm_seccomp::SeccompError),
    /// A thread could not be started.
    #[error("cannot start vCPU thread: {0}")]
    Thread(std::io::Error),
}

impl VmmError {
    /// Whether the error is the user's to fix (bad input or no usable /dev/kvm): exit status 2.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            VmmError::Config(_)
                | VmmError::Kvm(
                    cxlvm_kvm::KvmError::NotFound(_)
                        | cxlvm_kvm::KvmError::PermissionDenied(_)
                        | cxlvm_kvm::KvmError::NotKvm { .. }
                )
        )
    }
}
