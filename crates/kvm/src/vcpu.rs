//! vCPUs: entry state, running, exit details, and kicks out of `KVM_RUN`.

use std::cell::Cell;
use std::sync::Once;

use kvm_bindings::{CpuId, kvm_run, kvm_xcrs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::{KvmError, ioctl};

/// Where and how a vCPU starts.
#[derive(Clone)]
pub struct EntryState {
    /// Entry point.
    pub entry: u64,
    /// Boot info address (RDI).
    pub boot_info: u64,
    /// Top of this vCPU's stack.
    pub stack_top: u64,
    /// Page-table root.
    pub cr3: u64,
    /// CPUID to expose (patched per vCPU).
    pub cpuid: CpuId,
    /// Enter at CPL0 (kernel code and data selectors) instead of CPL3; everything else is the
    /// same (docs/guest-abi.md).
    pub cpl0: bool,
}

/// How a vCPU starts when it boots Linux.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxEntry {
    /// The boot processor entering through PVH (32-bit, paging off).
    Pvh {
        /// Entry point.
        rip: u64,
        /// `hvm_start_info` address (RBX).
        start_info: u64,
    },
    /// The boot processor entering through the 64-bit boot protocol.
    Linux64 {
        /// Entry point.
        rip: u64,
        /// Zero page address (RSI).
        zero_page: u64,
        /// Identity page tables (CR3).
        pml4: u64,
        /// GDT address.
        gdt: u64,
    },
    /// An application processor: waits for INIT/SIPI from the boot processor (in-kernel LAPIC).
    WaitForSipi,
}

thread_local! {
    static KICK_TARGET: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KICK_TARGET.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` was set by `Vcpu::arm_kick` on this thread to the vCPU's mapped `kvm_run`
        // page, and is cleared before that vCPU (and its mapping) is dropped on this thread. A
        // single byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
    }
}

static KICK_HANDLER: Once = Once::new();

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the process-wide kick handler (idempotent).
pub fn install_kick_handler() -> Result<(), KvmError> {
    let mut result = Ok(());
    KICK_HANDLER.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick).map_err(|e| KvmError::Open {
            path: "kick signal handler".into(),
            source: e,
        });
    });
    result
}

/// A vCPU.
pub struct Vcpu {
    pub(crate) fd: VcpuFd,
    index: u32,
    armed: bool,
    /// Where XSAVE components live, from the CPUID this vCPU was given (for completions).
    pub(crate) xsave_layout: std::sync::OnceLock<cxlvm_emulate::XsaveLayout>,
}

impl Vcpu {
    pub(crate) fn new(fd: VcpuFd, index: u32) -> Self {
        Self {
            fd,
            index,
            armed: false,
            xsave_layout: std::sync::OnceLock::new(),
        }
    }

    /// vCPU index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Sets CPUID, special, general and FPU registers and XCR0 for a long-mode entry at CPL3 (or
    /// CPL0 when `st.cpl0`).
    pub fn configure(&self, st: &EntryState) -> Result<(), KvmError> {
        let mut cpuid = st.cpuid.clone();
        cxlvm_x86::cpu::patch_cpuid(&mut cpuid, self.index);
        self.fd.set_cpuid2(&cpuid).map_err(ioctl("SET_CPUID2"))?;
        self.remember_xsave_layout(&cpuid);
        let sregs = self.fd.get_sregs().map_err(ioctl("GET_SREGS"))?;
        let sregs = if st.cpl0 {
            cxlvm_x86::cpu::cpl0_sregs(sregs, st.cr3)
        } else {
            cxlvm_x86::cpu::cpl3_sregs(sregs, st.cr3)
        };
        self.fd.set_sregs(&sregs).map_err(ioctl("SET_SREGS"))?;
        self.fd
            .set_regs(&cxlvm_x86::cpu::entry_regs(
                st.entry,
                st.boot_info,
                self.index,
                st.stack_top,
            ))
            .map_err(ioctl("SET_REGS"))?;
        self.fd
            .set_fpu(&cxlvm_x86::cpu::entry_fpu())
            .map_err(ioctl("SET_FPU"))?;
        let xcr0 = cxlvm_x86::cpu::xcr0_for(cxlvm_x86::cpu::supported_xcr0(&cpuid));
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = xcr0;
        self.fd.set_xcrs(&xcrs).map_err(ioctl("SET_XCRS"))?;
        Ok(())
    }

    /// Sets vCPU `self.index()` of `count` up to boot Linux: CPUID (APIC ids, topology, the
    /// hypervisor bit as chosen), boot MSRs, FPU, LAPIC LINT0 as ExtINT and LINT1 as NMI, and
    /// for the boot processor its entry registers. Needs the in-kernel irqchip.
    pub fn configure_linux(
        &self,
        cpuid: &CpuId,
        count: u32,
        hypervisor: bool,
        entry: LinuxEntry,
    ) -> Result<(), KvmError> {
        use cxlvm_x86::linux;
        let mut cpuid = cpuid.clone();
        linux::linux_cpuid(&mut cpuid, self.index, count, hypervisor);
        self.fd.set_cpuid2(&cpuid).map_err(ioctl("SET_CPUID2"))?;
        self.remember_xsave_layout(&cpuid);
        let msrs: Vec<kvm_bindings::kvm_msr_entry> = linux::boot_msrs()
            .into_iter()
            .map(|(index, data)| kvm_bindings::kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = kvm_bindings::Msrs::from_entries(&msrs).map_err(|_| KvmError::Ioctl {
            what: "SET_MSRS (too many entries)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let set = self.fd.set_msrs(&msrs).map_err(ioctl("SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            tracing::debug!(
                vcpu = self.index,
                "KVM accepted {set} of {} boot MSRs",
                msrs.as_slice().len()
            );
        }
        self.fd
            .set_fpu(&cxlvm_x86::cpu::entry_fpu())
            .map_err(ioctl("SET_FPU"))?;
        self.set_lint()?;
        match entry {
            LinuxEntry::Pvh { rip, start_info } => {
                let s = self.fd.get_sregs().map_err(ioctl("GET_SREGS"))?;
                self.fd
                    .set_sregs(&linux::pvh_sregs(s))
                    .map_err(ioctl("SET_SREGS"))?;
                self.fd
                    .set_regs(&linux::pvh_regs(rip, start_info))
                    .map_err(ioctl("SET_REGS"))?;
            }
            LinuxEntry::Linux64 {
                rip,
                zero_page,
                pml4,
                gdt,
            } => {
                let s = self.fd.get_sregs().map_err(ioctl("GET_SREGS"))?;
                self.fd
                    .set_sregs(&linux::long_mode_sregs(s, pml4, gdt))
                    .map_err(ioctl("SET_SREGS"))?;
                self.fd
                    .set_regs(&linux::long_mode_regs(rip, zero_page))
                    .map_err(ioctl("SET_REGS"))?;
            }
            LinuxEntry::WaitForSipi => {
                let mp = kvm_bindings::kvm_mp_state {
                    mp_state: kvm_bindings::KVM_MP_STATE_UNINITIALIZED,
                };
                self.fd.set_mp_state(mp).map_err(ioctl("SET_MP_STATE"))?;
            }
        }
        Ok(())
    }

    /// Keeps the XSAVE layout the guest's CPUID describes (leaf 0xD).
    fn remember_xsave_layout(&self, cpuid: &CpuId) {
        let layout = cxlvm_emulate::XsaveLayout::from_cpuid(|leaf, sub| {
            cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == leaf && e.index == sub)
                .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
        });
        let _ = self.xsave_layout.set(layout);
    }

    /// LAPIC LVT LINT0 = ExtINT (the PIC), LINT1 = NMI, as firmware leaves them.
    fn set_lint(&self) -> Result<(), KvmError> {
        const LVT_LINT0: usize = 0x350;
        const LVT_LINT1: usize = 0x360;
        const DELIVERY_EXTINT: u32 = 0x7 << 8;
        const DELIVERY_NMI: u32 = 0x4 << 8;
        let mut lapic = self.fd.get_lapic().map_err(ioctl("GET_LAPIC"))?;
        let get = |l: &kvm_bindings::kvm_lapic_state, off: usize| {
            let b: Vec<u8> = l.regs[off..off + 4].iter().map(|&c| c as u8).collect();
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        };
        let put = |l: &mut kvm_bindings::kvm_lapic_state, off: usize, v: u32| {
            for (i, byte) in v.to_le_bytes().iter().enumerate() {
                l.regs[off + i] = *byte as _;
            }
        };
        let lint0 = (get(&lapic, LVT_LINT0) & !0x700) | DELIVERY_EXTINT;
        let lint1 = (get(&lapic, LVT_LINT1) & !0x700) | DELIVERY_NMI;
        put(&mut lapic, LVT_LINT0, lint0);
        put(&mut lapic, LVT_LINT1, lint1);
        self.fd.set_lapic(&lapic).map_err(ioctl("SET_LAPIC"))?;
        Ok(())
    }

    /// TSC frequency in kHz, if KVM reports it.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok()
    }

    /// Arms kicks for the calling thread: from now on [`kick_signal`] sent to this thread makes
    /// the current or next `KVM_RUN` return `EINTR`. Call on the thread that runs the vCPU.
    pub fn arm_kick(&mut self) {
        let run: *mut kvm_run = self.fd.get_kvm_run();
        KICK_TARGET.with(|c| c.set(run));
        self.armed = true;
    }

    /// Clears a pending kick (after `KVM_RUN` returned `EINTR`).
    pub fn clear_kick(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Runs the vCPU until the next exit.
    pub fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error> {
        self.fd.run()
    }

    /// Instruction pointer (for reports).
    pub fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// Suberror and data words of the last `KVM_EXIT_INTERNAL_ERROR`, without RIP (no ioctl).
    pub fn internal_error_data(&mut self) -> Vec<u64> {
        let run = self.fd.get_kvm_run();
        // SAFETY: reading the `internal` member of the exit union is valid after KVM_RUN returned
        // KVM_EXIT_INTERNAL_ERROR, which is the only case this is called for; all bit patterns
        // of the plain integer fields are valid.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let mut data = vec![u64::from(internal.suberror)];
        data.extend_from_slice(&internal.data[..n]);
        data
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        if self.armed {
            let run: *mut kvm_run = self.fd.get_kvm_run();
            KICK_TARGET.with(|c| {
                if c.get() == run {
                    c.set(std::ptr::null_mut());
                }
            });
        }
    }
}
