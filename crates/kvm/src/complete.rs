//! The vCPU state a completion (`cxlvm-emulate`) reads and writes, fetched lazily through
//! KVM's register ioctls and written back, with the exception to inject, before re-entry.

use cxlvm_emulate::{Cpu, CpuError, Fault, Registers, System, XState};
use kvm_bindings::{kvm_regs, kvm_sregs, kvm_xsave};

use crate::{KvmError, Vcpu, ioctl};

/// Bytes of the `KVM_GET_XSAVE` image.
const XSAVE_BYTES: usize = 4096;

/// One completion's access to a vCPU's registers. Create it with [`Vcpu::completion_state`],
/// hand it to `cxlvm_emulate::complete`, then call [`CompletionState::finish`].
pub struct CompletionState<'a> {
    vcpu: &'a Vcpu,
    regs: Option<(kvm_regs, Registers)>,
    sregs: Option<kvm_sregs>,
    xstate: Option<XState>,
    /// The image as KVM gave it (written back only if the completion changed it).
    xstate_read: Vec<u8>,
    /// Registers handed out mutably (may have changed).
    regs_dirty: bool,
    xstate_dirty: bool,
}

fn cpu_error(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> CpuError {
    move |e| CpuError::Access {
        what,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

fn to_registers(r: &kvm_regs) -> Registers {
    Registers {
        gpr: [
            r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn from_registers(mut r: kvm_regs, g: &Registers) -> kvm_regs {
    let [
        rax,
        rcx,
        rdx,
        rbx,
        rsp,
        rbp,
        rsi,
        rdi,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
    ] = g.gpr;
    r.rax = rax;
    r.rcx = rcx;
    r.rdx = rdx;
    r.rbx = rbx;
    r.rsp = rsp;
    r.rbp = rbp;
    r.rsi = rsi;
    r.rdi = rdi;
    r.r8 = r8;
    r.r9 = r9;
    r.r10 = r10;
    r.r11 = r11;
    r.r12 = r12;
    r.r13 = r13;
    r.r14 = r14;
    r.r15 = r15;
    r.rip = g.rip;
    r.rflags = g.rflags;
    r
}

impl Vcpu {
    /// Lazily fetched register access for completing one instruction.
    pub fn completion_state(&self) -> CompletionState<'_> {
        CompletionState {
            vcpu: self,
            regs: None,
            sregs: None,
            xstate: None,
            xstate_read: Vec::new(),
            regs_dirty: false,
            xstate_dirty: false,
        }
    }
}

impl CompletionState<'_> {
    fn sregs(&mut self) -> Result<kvm_sregs, CpuError> {
        if let Some(s) = self.sregs {
            return Ok(s);
        }
        let s = self
            .vcpu
            .fd
            .get_sregs()
            .map_err(cpu_error("read the vCPU's special registers"))?;
        self.sregs = Some(s);
        Ok(s)
    }

    /// Writes back what the completion changed and injects `fault` if any. A page fault sets
    /// CR2 first.
    pub fn finish(self, fault: Option<Fault>) -> Result<(), KvmError> {
        if self.regs_dirty
            && let Some((raw, regs)) = &self.regs
        {
            let new = from_registers(*raw, regs);
            if new != *raw {
                self.vcpu.fd.set_regs(&new).map_err(ioctl("SET_REGS"))?;
            }
        }
        if self.xstate_dirty
            && let Some(x) = &self.xstate
            && x.image != self.xstate_read
        {
            let mut image = kvm_xsave::default();
            for (i, w) in image.region.iter_mut().enumerate() {
                let b = &x.image[i * 4..i * 4 + 4];
                *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            // SAFETY: the image is the 4 KiB KVM_GET_XSAVE returned for this vCPU, changed only
            // inside the components of its XCR0, whose standard-form layout fits 4 KiB
            // (checked when it was read); the kernel reads no more than that.
            unsafe { self.vcpu.fd.set_xsave(&image) }.map_err(ioctl("SET_XSAVE"))?;
        }
        let Some(fault) = fault else {
            return Ok(());
        };
        if let Some(cr2) = fault.cr2 {
            let mut s = match self.sregs {
                Some(s) => s,
                None => self.vcpu.fd.get_sregs().map_err(ioctl("GET_SREGS"))?,
            };
            s.cr2 = cr2;
            self.vcpu.fd.set_sregs(&s).map_err(ioctl("SET_SREGS"))?;
        }
        let mut events = self
            .vcpu
            .fd
            .get_vcpu_events()
            .map_err(ioctl("GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.pending = 0;
        events.exception.nr = fault.exception.vector();
        events.exception.has_error_code = u8::from(fault.error_code.is_some());
        events.exception.error_code = fault.error_code.unwrap_or(0);
        events.exception_has_payload = 0;
        self.vcpu
            .fd
            .set_vcpu_events(&events)
            .map_err(ioctl("SET_VCPU_EVENTS"))?;
        Ok(())
    }
}

impl Cpu for CompletionState<'_> {
    fn registers(&mut self) -> Result<&mut Registers, CpuError> {
        if self.regs.is_none() {
            let raw = self
                .vcpu
                .fd
                .get_regs()
                .map_err(cpu_error("read the vCPU's registers"))?;
            self.regs = Some((raw, to_registers(&raw)));
        }
        self.regs_dirty = true;
        self.regs
            .as_mut()
            .map(|r| &mut r.1)
            .ok_or(CpuError::Access {
                what: "keep the vCPU's registers",
                source: std::io::Error::from_raw_os_error(libc::EFAULT),
            })
    }

    fn system(&mut self) -> Result<System, CpuError> {
        let s = self.sregs()?;
        Ok(System {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
            cpl: s.cs.dpl,
            long_mode: s.cs.l == 1,
            fs_base: s.fs.base,
            gs_base: s.gs.base,
        })
    }

    fn xstate(&mut self) -> Result<&mut XState, CpuError> {
        if self.xstate.is_none() {
            let raw = self
                .vcpu
                .fd
                .get_xsave()
                .map_err(cpu_error("read the vCPU's XSAVE state"))?;
            let xcrs = self
                .vcpu
                .fd
                .get_xcrs()
                .map_err(cpu_error("read the vCPU's XCR0"))?;
            let xcr0 = xcrs.xcrs[..(xcrs.nr_xcrs as usize).min(xcrs.xcrs.len())]
                .iter()
                .find(|x| x.xcr == 0)
                .map_or(0b11, |x| x.value);
            let layout = self.vcpu.xsave_layout.get().cloned().unwrap_or_default();
            // Every enabled component must fit the 4 KiB image KVM_GET_XSAVE gives.
            let fits = (2..64u32).filter(|i| xcr0 & (1 << i) != 0).all(|i| {
                layout
                    .component(i)
                    .is_some_and(|c| (c.offset + c.size) as usize <= XSAVE_BYTES)
            });
            if !fits {
                return Err(CpuError::XsaveTooLarge { xcr0 });
            }
            let image: Vec<u8> = raw.region.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.xstate_read = image.clone();
            self.xstate = Some(XState {
                image,
                xcr0,
                layout,
            });
        }
        self.xstate_dirty = true;
        self.xstate.as_mut().ok_or(CpuError::Access {
            what: "keep the vCPU's XSAVE state",
            source: std::io::Error::from_raw_os_error(libc::EFAULT),
        })
    }
}
