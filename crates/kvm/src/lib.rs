//! cxlvm's KVM layer.
//!
//! - [`Hypervisor`] / [`Vm`]: opening `/dev/kvm` with clear errors, creating the VM.
//! - [`SlotListener`]: a [`cxlvm_memory::MemoryListener`] that keeps KVM memory slots equal to the
//!   RAM ranges of the published flat view.
//! - [`Vcpu`]: vCPU creation, CPL3 long-mode entry state, running, exit details and kicks.
//!
//! This is the only crate of cxlvm's VMM with `unsafe` code (memory-slot ioctls and the vCPU kick
//! signal); every block carries a `SAFETY:` comment.

mod complete;
mod slots;
mod vcpu;

use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VmFd};

pub use complete::CompletionState;
pub use kvm_ioctls::VcpuExit;
pub use slots::{SlotInfo, SlotListener, SlotTable};
pub use vcpu::{EntryState, LinuxEntry, Vcpu, install_kick_handler, kick_signal};

/// Errors of the KVM layer.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    #[error("{0} not found: KVM is not available on this host")]
    NotFound(String),
    /// `/dev/kvm` exists but cannot be opened.
    #[error("permission denied opening {0}: run as root or join the 'kvm' group")]
    PermissionDenied(String),
    /// The path opened, but it is not a KVM device (the API version query failed or is wrong).
    #[error("{path} is not a KVM device (KVM_GET_API_VERSION answered {answer})")]
    NotKvm {
        /// Device path.
        path: String,
        /// What the API version query returned (-1: the ioctl failed).
        answer: i32,
    },
    /// Some other failure opening the device.
    #[error("cannot open {path}: {source}")]
    Open {
        /// Device path.
        path: String,
        /// Cause.
        source: vmm_sys_util::errno::Error,
    },
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Ioctl {
        /// What was attempted.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// A memory slot could not be installed.
    #[error("KVM memory slot for [{start:#x}, {end:#x}) failed: {reason}")]
    Slot {
        /// Guest-physical start.
        start: u64,
        /// Guest-physical end.
        end: u64,
        /// Why.
        reason: SlotFailure,
    },
}

/// Why a KVM memory slot could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SlotFailure {
    /// The range is not inside its backing's host mapping.
    #[error("range is outside its backing")]
    OutsideBacking,
    /// Every slot KVM offers is taken.
    #[error("all {0} KVM memory slots are in use")]
    NoFreeSlot(usize),
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("KVM_SET_USER_MEMORY_REGION: {0}")]
    Ioctl(#[source] kvm_ioctls::Error),
}

pub(crate) fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// An open `/dev/kvm`.
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    /// Opens the KVM device at `path` (normally `/dev/kvm`).
    pub fn open(path: &str) -> Result<Self, KvmError> {
        let cpath =
            std::ffi::CString::new(path).map_err(|_| KvmError::NotFound(path.to_owned()))?;
        let kvm = Kvm::new_with_path(cpath).map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENODEV => KvmError::NotFound(path.to_owned()),
            libc::EACCES | libc::EPERM => KvmError::PermissionDenied(path.to_owned()),
            _ => KvmError::Open {
                path: path.to_owned(),
                source: e,
            },
        })?;
        // KVM's API version has been 12 since Linux 2.6.22; anything else is not /dev/kvm.
        let answer = kvm.get_api_version();
        if answer != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(KvmError::NotKvm {
                path: path.to_owned(),
                answer,
            });
        }
        Ok(Self { kvm })
    }

    /// CPUID KVM supports on this host.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("GET_SUPPORTED_CPUID"))
    }

    /// Creates a VM.
    pub fn create_vm(&self) -> Result<Vm, KvmError> {
        let fd = self.kvm.create_vm().map_err(ioctl("CREATE_VM"))?;
        // Needed on Intel VT-x before the first KVM_RUN; harmless elsewhere.
        fd.set_tss_address(0xfffb_d000)
            .map_err(ioctl("SET_TSS_ADDR"))?;
        Ok(Vm {
            fd: Arc::new(fd),
            max_slots: self.kvm.get_nr_memslots(),
        })
    }
}

/// A KVM virtual machine.
pub struct Vm {
    fd: Arc<VmFd>,
    max_slots: usize,
}

impl Vm {
    /// Creates a slot listener bound to this VM, sharing `table` for introspection.
    pub fn slot_listener(&self, table: Arc<SlotTable>) -> SlotListener {
        SlotListener::new(self.fd.clone(), self.max_slots, table)
    }

    /// Creates vCPU `index`.
    pub fn create_vcpu(&self, index: u32) -> Result<Vcpu, KvmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(ioctl("CREATE_VCPU"))?;
        Ok(Vcpu::new(fd, index))
    }

    /// Creates KVM's in-kernel interrupt controllers (PIC, IOAPIC, and a LAPIC per vCPU created
    /// afterwards) and the PIT, as a Linux guest expects. Call before creating vCPUs.
    pub fn create_irqchip_and_pit(&self) -> Result<(), KvmError> {
        self.fd.create_irq_chip().map_err(ioctl("CREATE_IRQCHIP"))?;
        let pit = kvm_bindings::kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(ioctl("CREATE_PIT2"))?;
        Ok(())
    }

    /// Raises interrupt line `gsi` of the in-kernel irqchip whenever `event` is written.
    pub fn register_irqfd(
        &self,
        event: &vmm_sys_util::eventfd::EventFd,
        gsi: u32,
    ) -> Result<(), KvmError> {
        self.fd.register_irqfd(event, gsi).map_err(ioctl("IRQFD"))
    }

    /// Number of memory slots KVM offers.
    pub fn max_slots(&self) -> usize {
        self.max_slots
    }
}
