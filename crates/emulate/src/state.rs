//! The vCPU state an instruction completion reads and changes, and how the emulator reaches it.

use std::fmt;

/// A linear (virtual) address: what an instruction's operands compute, before paging.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Linear(pub u64);

/// A guest-physical address: what a page walk yields and memory is accessed by.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gpa(pub u64);

impl fmt::Debug for Linear {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Linear({:#x})", self.0)
    }
}

impl fmt::Debug for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpa({:#x})", self.0)
    }
}

/// General-purpose registers, RIP and RFLAGS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8 … R15 (hardware encoding order).
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
}

/// Indices into [`Registers::gpr`].
pub mod gpr {
    /// RAX.
    pub const RAX: usize = 0;
    /// RCX.
    pub const RCX: usize = 1;
    /// RDX.
    pub const RDX: usize = 2;
    /// RBX.
    pub const RBX: usize = 3;
    /// RSI.
    pub const RSI: usize = 6;
    /// RDI.
    pub const RDI: usize = 7;
}

/// RFLAGS bits the emulator reads or writes.
pub mod flags {
    /// Zero flag.
    pub const ZF: u64 = 1 << 6;
    /// Direction flag.
    pub const DF: u64 = 1 << 10;
    /// Alignment check / SMAP override.
    pub const AC: u64 = 1 << 18;
}

/// Control-register bits the emulator honours.
pub mod cr {
    /// CR0.TS: task switched (x87/SSE/AVX raise #NM).
    pub const CR0_TS: u64 = 1 << 3;
    /// CR0.EM: x87 emulation (SSE raises #UD).
    pub const CR0_EM: u64 = 1 << 2;
    /// CR0.WP: supervisor writes honour read-only pages.
    pub const CR0_WP: u64 = 1 << 16;
    /// CR0.PG: paging.
    pub const CR0_PG: u64 = 1 << 31;
    /// CR4.PAE.
    pub const CR4_PAE: u64 = 1 << 5;
    /// CR4.OSFXSR: SSE enabled.
    pub const CR4_OSFXSR: u64 = 1 << 9;
    /// CR4.LA57: 5-level paging.
    pub const CR4_LA57: u64 = 1 << 12;
    /// CR4.OSXSAVE: XSAVE and AVX enabled.
    pub const CR4_OSXSAVE: u64 = 1 << 18;
    /// CR4.SMEP.
    pub const CR4_SMEP: u64 = 1 << 20;
    /// CR4.SMAP.
    pub const CR4_SMAP: u64 = 1 << 21;
    /// EFER.NXE: execute-disable bits are honoured.
    pub const EFER_NXE: u64 = 1 << 11;
    /// EFER.LMA: long mode active.
    pub const EFER_LMA: u64 = 1 << 10;
}

/// Control registers, privilege and segment bases (read only: a completion never changes them;
/// CR2 is written only through an injected page fault).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct System {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// Current privilege level (CS.DPL in long mode).
    pub cpl: u8,
    /// CS.L: 64-bit code segment.
    pub long_mode: bool,
    /// FS base.
    pub fs_base: u64,
    /// GS base.
    pub gs_base: u64,
}

/// Where each XSAVE state component lives, from CPUID leaf 0xD.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XsaveLayout {
    /// Per component i (2 … 63): (offset in the standard form, size, 64-byte aligned when
    /// compacted); `None` for components the CPU does not describe.
    pub components: Vec<Option<Component>>,
}

/// One extended state component's place (CPUID.(EAX=0xD, ECX=i)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component {
    /// Offset in the standard (non-compacted) form.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Aligned to 64 bytes in the compacted form.
    pub align64: bool,
}

impl XsaveLayout {
    /// The layout described by a CPUID source: `cpuid(0xd, i)` gives (eax, ebx, ecx, edx).
    pub fn from_cpuid(mut cpuid: impl FnMut(u32, u32) -> Option<[u32; 4]>) -> Self {
        let components = (0..64u32)
            .map(|i| {
                if i < 2 {
                    return None;
                }
                let [eax, ebx, ecx, _] = cpuid(0xd, i)?;
                (eax != 0).then_some(Component {
                    offset: ebx,
                    size: eax,
                    align64: ecx & 2 != 0,
                })
            })
            .collect();
        Self { components }
    }

    /// The component `i`, if described.
    pub fn component(&self, i: u32) -> Option<Component> {
        self.components.get(i as usize).copied().flatten()
    }

    /// Offset of each component of `xcomp_bv` in the compacted form (components 0 and 1 live in
    /// the legacy region); `None` when a requested component is not described.
    pub fn compacted_offsets(&self, xcomp_bv: u64) -> Option<Vec<(u32, u32)>> {
        let mut at = 576u32;
        let mut out = Vec::new();
        for i in 2..63u32 {
            if xcomp_bv & (1 << i) == 0 {
                continue;
            }
            let c = self.component(i)?;
            if c.align64 {
                at = at.next_multiple_of(64);
            }
            out.push((i, at));
            at += c.size;
        }
        Some(out)
    }

    /// The size of a compacted save of `xcomp_bv`.
    pub fn compacted_size(&self, xcomp_bv: u64) -> Option<u32> {
        let offs = self.compacted_offsets(xcomp_bv)?;
        Some(match offs.last() {
            Some(&(i, at)) => at + self.component(i)?.size,
            None => 576,
        })
    }
}

/// The x87/SSE/AVX state of a vCPU as a standard-form XSAVE image (what `KVM_GET_XSAVE`
/// returns), with XCR0 and the component layout. `XSTATE_BV` in the image's header is the
/// state-component in-use bitmap (XINUSE): a component whose bit is clear is in its initial
/// configuration, whatever bytes the image holds for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XState {
    /// Standard-form image (at least 576 bytes plus every enabled component).
    pub image: Vec<u8>,
    /// XCR0.
    pub xcr0: u64,
    /// Where components live.
    pub layout: XsaveLayout,
}

/// Byte offsets in the legacy region (the FXSAVE layout).
pub mod legacy {
    /// MXCSR.
    pub const MXCSR: usize = 24;
    /// MXCSR_MASK.
    pub const MXCSR_MASK: usize = 28;
    /// XMM0.
    pub const XMM0: usize = 160;
    /// End of the part FXSAVE writes (x87, MXCSR, XMM0–15).
    pub const END: usize = 416;
    /// The XSAVE header.
    pub const HEADER: usize = 512;
    /// XSTATE_BV in the header.
    pub const XSTATE_BV: usize = 512;
    /// XCOMP_BV in the header.
    pub const XCOMP_BV: usize = 520;
}

/// State component numbers.
pub mod component {
    /// x87.
    pub const X87: u32 = 0;
    /// SSE (XMM registers, MXCSR).
    pub const SSE: u32 = 1;
    /// AVX (upper halves of YMM registers).
    pub const AVX: u32 = 2;
}

/// MXCSR's default mask of writable bits when the image says 0.
pub const DEFAULT_MXCSR_MASK: u32 = 0xffbf;

impl XState {
    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.image[at..at + 8]);
        u64::from_le_bytes(b)
    }

    fn set_u64_at(&mut self, at: usize, v: u64) {
        self.image[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// The in-use bitmap (XSTATE_BV of the image).
    pub fn xinuse(&self) -> u64 {
        self.u64_at(legacy::XSTATE_BV)
    }

    /// Marks components in use (so that the image's bytes for them are loaded on re-entry).
    pub fn mark_in_use(&mut self, bits: u64) {
        let v = self.xinuse() | bits;
        self.set_u64_at(legacy::XSTATE_BV, v);
    }

    /// Sets the in-use bitmap for the components in `mask` to `bits`.
    pub fn set_in_use(&mut self, mask: u64, bits: u64) {
        let v = (self.xinuse() & !mask) | (bits & mask);
        self.set_u64_at(legacy::XSTATE_BV, v);
    }

    /// MXCSR.
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes(
            self.image[legacy::MXCSR..legacy::MXCSR + 4]
                .try_into()
                .unwrap_or([0; 4]),
        )
    }

    /// The writable MXCSR bits.
    pub fn mxcsr_mask(&self) -> u32 {
        let m = u32::from_le_bytes(
            self.image[legacy::MXCSR_MASK..legacy::MXCSR_MASK + 4]
                .try_into()
                .unwrap_or([0; 4]),
        );
        if m == 0 { DEFAULT_MXCSR_MASK } else { m }
    }

    /// Sets MXCSR (the caller checked reserved bits); marks SSE state in use so it is loaded.
    pub fn set_mxcsr(&mut self, v: u32) {
        self.image[legacy::MXCSR..legacy::MXCSR + 4].copy_from_slice(&v.to_le_bytes());
        self.mark_in_use(1 << component::SSE);
    }

    /// Offset and size of the upper 128 bits of YMM registers, if AVX is described.
    fn avx(&self) -> Option<(usize, usize)> {
        let c = self.layout.component(component::AVX)?;
        Some((c.offset as usize, c.size as usize))
    }

    /// Reads vector register `n` (XMM/YMM `n`): `out.len()` is 16 or 32 bytes. Bytes the image
    /// does not hold (no AVX state) read as zero.
    pub fn read_vector(&self, n: usize, out: &mut [u8]) {
        let x = legacy::XMM0 + 16 * n;
        out[..16].copy_from_slice(&self.image[x..x + 16]);
        if out.len() > 16 {
            match self.avx() {
                Some((off, _)) if self.xcr0 & 4 != 0 => {
                    let y = off + 16 * n;
                    out[16..32].copy_from_slice(&self.image[y..y + 16]);
                }
                _ => out[16..32].fill(0),
            }
        }
    }

    /// Writes vector register `n` from `data` (16 or 32 bytes): the low 16 bytes are XMM `n`,
    /// bytes 16..32 its upper YMM half (ignored without AVX state). Marks the touched components
    /// in use.
    pub fn write_vector(&mut self, n: usize, data: &[u8]) {
        let x = legacy::XMM0 + 16 * n;
        self.image[x..x + 16].copy_from_slice(&data[..16]);
        let mut used = 1 << component::SSE;
        if data.len() > 16
            && let Some((off, _)) = self.avx()
            && self.xcr0 & 4 != 0
        {
            let y = off + 16 * n;
            self.image[y..y + 16].copy_from_slice(&data[16..32]);
            used |= 1 << component::AVX;
        }
        self.mark_in_use(used);
    }

    /// Vector length available to VEX encodings: 32 with AVX state, else 16.
    pub fn vlmax(&self) -> usize {
        if self.xcr0 & 4 != 0 && self.avx().is_some() {
            32
        } else {
            16
        }
    }
}

/// A failure to read or write the vCPU's state.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A register ioctl failed.
    #[error("cannot {what}: {source}")]
    Access {
        /// What was attempted.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// XCR0 enables state that the 4 KiB XSAVE image cannot hold (AMX tiles, say).
    #[error("XCR0 {xcr0:#x} enables state beyond the 4 KiB XSAVE image")]
    XsaveTooLarge {
        /// XCR0.
        xcr0: u64,
    },
}

/// How the emulator reaches the vCPU's state. Implementations fetch lazily and write back what
/// changed after a completion (the emulator only calls the `_mut` accessors for state it
/// changes).
pub trait Cpu {
    /// General-purpose registers, RIP, RFLAGS.
    fn registers(&mut self) -> Result<&mut Registers, CpuError>;
    /// Control registers, CPL, segment bases.
    fn system(&mut self) -> Result<System, CpuError>;
    /// Vector state (XSAVE image, XCR0, layout).
    fn xstate(&mut self) -> Result<&mut XState, CpuError>;
}

/// Guest-physical memory as the current memory map serves it: RAM ranges from their backing,
/// MMIO ranges through their handlers, holes as all-ones/dropped.
pub trait Memory {
    /// Reads `buf.len()` bytes at `gpa` (may span ranges).
    fn read(&self, gpa: Gpa, buf: &mut [u8]);
    /// Writes `data` at `gpa` (may span ranges).
    fn write(&self, gpa: Gpa, data: &[u8]);
    /// Whether `gpa` is RAM in the current map (instruction fetch is only done from RAM).
    fn is_ram(&self, gpa: Gpa) -> bool;
}
