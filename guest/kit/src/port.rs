//! Port I/O and the cxlvm ports of the test-guest ABI.
//!
//! Ports are reached through cxlvm's **port-I/O window**, an MMIO range at [`WINDOW_BASE`] where
//! the byte at offset `p` is port `p` (docs/guest-abi.md). Real `in`/`out` instructions need
//! RFLAGS.IOPL = 3 at CPL3, which hardware KVM honours but `kvm_pvm` does not (there they raise
//! #GP, which is a triple fault without an IDT); the window works everywhere. [`raw`] has the real
//! instructions for guests that know they run on hardware KVM.
//!
//! The accessors are safe: the cxlvm platform has no device that can write guest memory behind
//! the program's back (no DMA), so a port access cannot break memory safety. It can end the run,
//! though ([`EXIT`]). Each access is also a compiler memory barrier (the asm is not `nomem`):
//! memory accesses in program order before a port write are emitted before it, which matters for
//! ports that change what memory means (the scratch window control) or end the run.

use core::arch::asm;

/// Guest-physical base of the port-I/O window.
pub const WINDOW_BASE: u64 = 0xD001_0000;

/// COM1 base port (16550 UART).
pub const COM1: u16 = 0x3f8;
/// Exit port: cxlvm stops every vCPU and exits with status `value & 0xff`.
pub const EXIT: u16 = 0x500;
/// Boot mark: records the time of the guest's first instruction (for `--stats`).
pub const BOOT_MARK: u16 = 0x504;
/// Null port: an exit to cxlvm that does nothing; reads return 0.
pub const NULL: u16 = 0x508;
/// Scratch window control (32 bit): write 1 = RAM alias on, 0 = off; read = current state.
pub const SCRATCH_CONTROL: u16 = 0x50c;
/// CXL direct-mapping control (32 bit): write 0 = every CXL range on the exact MMIO path (one
/// exit per access), 1 = ranges the decoders allow mapped directly as RAM (the default); read =
/// current state. The switch is complete when the write returns.
pub const CXL_DIRECT: u16 = 0x510;
/// CXL window exit counter (32 bit): read = MMIO accesses the CXL window dispatchers served so
/// far (low 32 bits); write = reset to 0.
pub const CXL_EXITS: u16 = 0x514;

#[inline]
fn addr(port: u16) -> u64 {
    WINDOW_BASE + u64::from(port)
}

/// Writes a byte to `port`.
#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: the window is identity-mapped MMIO owned by cxlvm (guest ABI), never Rust-owned
    // memory, so the store cannot alias anything; it exits to cxlvm, which emulates the port.
    unsafe {
        asm!("mov byte ptr [{a}], {v}", a = in(reg) addr(port), v = in(reg_byte) value, options(nostack, preserves_flags))
    }
}

/// Writes a 16-bit word to `port`.
#[inline]
pub fn outw(port: u16, value: u16) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("mov word ptr [{a}], {v:x}", a = in(reg) addr(port), v = in(reg) value, options(nostack, preserves_flags))
    }
}

/// Writes a 32-bit word to `port`.
#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: as in `outb`.
    unsafe {
        asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr(port), v = in(reg) value, options(nostack, preserves_flags))
    }
}

/// Reads a byte from `port`.
#[inline]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`; the load only writes the output register.
    unsafe {
        asm!("mov {v}, byte ptr [{a}]", a = in(reg) addr(port), v = out(reg_byte) value, options(nostack, preserves_flags))
    }
    value
}

/// Reads a 16-bit word from `port`.
#[inline]
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as in `inb`.
    unsafe {
        asm!("mov {v:x}, word ptr [{a}]", a = in(reg) addr(port), v = out(reg) value, options(nostack, preserves_flags))
    }
    value
}

/// Reads a 32-bit word from `port`.
#[inline]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as in `inb`.
    unsafe {
        asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) addr(port), v = out(reg) value, options(nostack, preserves_flags))
    }
    value
}

/// Real port-I/O instructions (need IOPL = 3 honoured by the hypervisor: hardware KVM only).
pub mod raw {
    use core::arch::asm;

    /// `out dx, al`.
    ///
    /// # Safety
    /// Faults (#GP, a triple fault without an IDT) where the hypervisor does not honour IOPL.
    #[inline]
    pub unsafe fn outb(port: u16, value: u8) {
        // SAFETY: the caller guarantees IOPL is honoured; no cxlvm port writes guest memory.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags))
        }
    }

    /// `in al, dx`.
    ///
    /// # Safety
    /// As [`outb`].
    #[inline]
    pub unsafe fn inb(port: u16) -> u8 {
        let value: u8;
        // SAFETY: as in `outb`; `in` only writes AL.
        unsafe {
            asm!("in al, dx", in("dx") port, out("al") value, options(nostack, preserves_flags))
        }
        value
    }
}

/// Ends the run: cxlvm exits with status `code & 0xff`. Any vCPU may call it.
///
/// Should cxlvm not stop this vCPU at once, it spins until it does.
pub fn exit(code: i32) -> ! {
    // Make every store of this vCPU visible before the VMM looks at guest memory.
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    outl(EXIT, code as u32);
    crate::rt::park()
}
