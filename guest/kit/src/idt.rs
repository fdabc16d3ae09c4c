//! Exceptions and control registers for ring-0 test guests (cxlvm's `Privilege::Kernel`,
//! docs/guest-abi.md): an IDT whose stubs save every general register and call one Rust
//! dispatcher, `lidt`, CR0/CR2/CR3/CR4 and `invlpg`, and the way down to CPL3.
//!
//! Every vector 0–31 has a stub. A stub pushes a zero error code for the vectors where the CPU
//! pushes none (so the frame always has one), pushes its vector and the 15 general registers,
//! aligns the stack, clears DF and calls the dispatcher with an [`ExceptionContext`]: the
//! registers, vector, error code and the CPU's interrupt frame (RIP, CS, RFLAGS, RSP, SS), all
//! writable. The dispatcher hands it to the handler given to [`install`]; on return the stub
//! restores the (possibly changed) registers and returns with `iretq` to the (possibly changed)
//! frame. A handler that returns `false`, or an exception before [`install`], prints the context
//! with [`write_context`] and exits with [`UNHANDLED_EXCEPTION_STATUS`].
//!
//! The stubs save general registers only, not the SSE/AVX state: handlers must not change vector
//! registers an interrupted instruction may need when it is restarted (plain integer Rust code is
//! fine at opt-level 2 as long as it copies no large arrays; keep handlers to recording values
//! and editing page tables).
//!
//! **Ring 0 on `kvm_pvm`** (cxlvm's development hosts) runs every instruction through KVM's
//! instruction emulator, which cannot run most SSE instructions: the precompiled `core` formats
//! 64-bit integers with SSE (`movd`, `pinsrw`), so `println!` with numbers can end the run at
//! ring 0 there. [`write_hex`] prints without SSE. Ring-0 programs do their work at CPL0 and drop
//! to CPL3 ([`enter_user_mode`]) to check and print results.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::{console, port};

/// Exit status after an exception no handler took.
pub const UNHANDLED_EXCEPTION_STATUS: i32 = 0xfc;

/// Kernel code selector of cxlvm's GDT (docs/guest-abi.md).
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
/// User code selector (RPL 3).
pub const USER_CS: u16 = 0x18 | 3;
/// User data selector (RPL 3).
pub const USER_DS: u16 = 0x20 | 3;

/// Exception vectors.
pub mod vector {
    /// #DE divide error.
    pub const DE: u8 = 0;
    /// #DB debug.
    pub const DB: u8 = 1;
    /// NMI.
    pub const NMI: u8 = 2;
    /// #BP breakpoint (`int3`).
    pub const BP: u8 = 3;
    /// #OF overflow.
    pub const OF: u8 = 4;
    /// #BR bound range.
    pub const BR: u8 = 5;
    /// #UD invalid opcode.
    pub const UD: u8 = 6;
    /// #NM device not available.
    pub const NM: u8 = 7;
    /// #DF double fault.
    pub const DF: u8 = 8;
    /// #TS invalid TSS.
    pub const TS: u8 = 10;
    /// #NP segment not present.
    pub const NP: u8 = 11;
    /// #SS stack fault.
    pub const SS: u8 = 12;
    /// #GP general protection.
    pub const GP: u8 = 13;
    /// #PF page fault.
    pub const PF: u8 = 14;
    /// #MF x87 floating-point error.
    pub const MF: u8 = 16;
    /// #AC alignment check.
    pub const AC: u8 = 17;
    /// #MC machine check.
    pub const MC: u8 = 18;
    /// #XM SIMD floating-point exception.
    pub const XM: u8 = 19;
}

/// Page-fault error code bits.
pub mod pf {
    /// The page was present (a protection violation); clear: not present.
    pub const PRESENT: u64 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// The access was made at CPL3.
    pub const USER: u64 = 1 << 2;
    /// A reserved bit was set in a paging entry.
    pub const RESERVED: u64 = 1 << 3;
    /// The access was an instruction fetch (with EFER.NXE).
    pub const FETCH: u64 = 1 << 4;
}

/// Number of vectors with a stub and an IDT entry (the architectural exceptions).
pub const VECTORS: usize = 32;

/// General registers as the stub saved them (the last pushed first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Registers {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rax: u64,
}

/// What the CPU pushed on the exception (64-bit mode always pushes SS:RSP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptFrame {
    /// Where `iretq` returns: the faulting instruction for faults, the next one for traps
    /// (`int3`).
    pub rip: u64,
    /// Code selector of the interrupted code.
    pub cs: u64,
    /// RFLAGS of the interrupted code.
    pub rflags: u64,
    /// Stack pointer of the interrupted code.
    pub rsp: u64,
    /// Stack selector of the interrupted code.
    pub ss: u64,
}

/// Everything a handler sees and may change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExceptionContext {
    /// General registers of the interrupted code (restored from here on return).
    pub regs: Registers,
    /// Exception vector.
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error_code: u64,
    /// The interrupt frame (`iretq` returns through it).
    pub frame: InterruptFrame,
}

/// A handler: returns `true` when it handled the exception (execution resumes at
/// `ctx.frame.rip`), `false` to end the run as unhandled.
pub type Handler = fn(&mut ExceptionContext) -> bool;

/// Whether the CPU pushes an error code for `vector`.
pub const fn has_error_code(vector: usize) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

// The stubs: 16 bytes each (`push imm8` twice at most 4 bytes, `jmp rel32` 5), so that stub `v`
// is at `cxlvm_exception_stubs + 16 * v`. All of them jump to the common part, which builds an
// `ExceptionContext` on the stack (SS, RSP, RFLAGS, CS, RIP, error code by the CPU or the stub,
// then vector, then RAX … R15), passes its address in RDI, and calls the dispatcher with RSP
// 16-byte aligned (RBX keeps the unaligned value across the call: callee-saved, and restored
// from the context afterwards).
global_asm!(
    ".pushsection .text.cxlvm_exception_stubs, \"ax\", @progbits",
    ".balign 16",
    ".globl cxlvm_exception_stubs",
    "cxlvm_exception_stubs:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".balign 16",
    ".if (\\v == 8) || (\\v == 10) || (\\v == 11) || (\\v == 12) || (\\v == 13) || (\\v == 14) || (\\v == 17) || (\\v == 21) || (\\v == 29) || (\\v == 30)",
    "    push \\v",
    ".else",
    "    push 0",
    "    push \\v",
    ".endif",
    "    jmp cxlvm_exception_common",
    ".endr",
    ".balign 16",
    "cxlvm_exception_common:",
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rbx",
    "    push rbp",
    "    push rsi",
    "    push rdi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov rdi, rsp",
    "    mov rbx, rsp",
    "    and rsp, -16",
    "    cld",
    "    call {dispatch}",
    "    mov rsp, rbx",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rdi",
    "    pop rsi",
    "    pop rbp",
    "    pop rbx",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    // Vector and error code.
    "    add rsp, 16",
    "    iretq",
    ".popsection",
    dispatch = sym dispatch,
);

unsafe extern "C" {
    /// First stub (see the `global_asm!` above); not callable, only its address is used.
    static cxlvm_exception_stubs: [u8; 16 * VECTORS];
}

/// The handler given to [`install`] (a `Handler` as usize; 0 = none).
static HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Called by the common stub with the context it built.
extern "C" fn dispatch(ctx: &mut ExceptionContext) {
    let raw = HANDLER.load(Ordering::Acquire);
    let handled = if raw == 0 {
        false
    } else {
        // SAFETY: HANDLER only ever holds 0 or a `Handler` stored by `install`, and fn pointers
        // and usize have the same size on x86-64.
        let handler: Handler = unsafe { core::mem::transmute::<usize, Handler>(raw) };
        handler(ctx)
    };
    if !handled {
        console::write_str("guest: unhandled exception");
        write_context(ctx);
        port::exit(UNHANDLED_EXCEPTION_STATUS);
    }
}

/// Prints ` vector=… error=… rip=… cs=… rflags=… rsp=… cr2=…` and a newline without `core::fmt`
/// (see the module documentation).
pub fn write_context(ctx: &ExceptionContext) {
    for (name, value) in [
        (" vector=", ctx.vector),
        (" error=", ctx.error_code),
        (" rip=", ctx.frame.rip),
        (" cs=", ctx.frame.cs),
        (" rflags=", ctx.frame.rflags),
        (" rsp=", ctx.frame.rsp),
        (" cr2=", read_cr2()),
    ] {
        console::write_str(name);
        write_hex(value);
    }
    console::write_byte(b'\n');
}

/// Writes `value` as `0x…` hex with integer instructions only (no `core::fmt`, which uses SSE).
pub fn write_hex(value: u64) {
    console::write_str("0x");
    let mut started = false;
    let mut shift = 64;
    while shift > 0 {
        shift -= 4;
        let nibble = ((value >> shift) & 0xf) as u8;
        if nibble != 0 || started || shift == 0 {
            started = true;
            console::write_byte(if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            });
        }
    }
}

/// The IDT: 32 16-byte gates.
#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 2 * VECTORS]>);

// SAFETY: written only by `install` (one vCPU, before `lidt` publishes it); the CPU reads it.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([0; 2 * VECTORS]));

/// Operand of `lidt`.
#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Gate attributes: present, 64-bit interrupt gate (IF cleared on entry), DPL 0.
const GATE_KERNEL: u64 = 0x8e;
/// Present interrupt gate with DPL 3: `int3` reaches #BP from CPL3 too.
const GATE_USER: u64 = 0xee;

/// Fills the IDT with the stubs for vectors 0–31, loads it with `lidt` and makes `handler` the
/// handler of every exception. Call on each vCPU that wants exceptions (the table is shared; a
/// later call replaces the handler for all vCPUs).
///
/// # Panics
/// When not at CPL0 (`lidt` would raise #GP).
pub fn install(handler: Handler) {
    assert_eq!(cpl(), 0, "idt::install needs CPL0");
    HANDLER.store(handler as usize, Ordering::Release);
    let stubs = (&raw const cxlvm_exception_stubs).addr() as u64;
    let table = IDT.0.get().cast::<u64>();
    for v in 0..VECTORS {
        let target = stubs + 16 * v as u64;
        let attr = if v == usize::from(vector::BP) || v == usize::from(vector::OF) {
            GATE_USER
        } else {
            GATE_KERNEL
        };
        let low = (target & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | (attr << 40)
            | (((target >> 16) & 0xffff) << 48);
        // SAFETY: `table` points to the static IDT, 2 * VECTORS u64s; index 2v+1 < 2 * VECTORS.
        // Volatile: the CPU, not Rust, reads these words.
        unsafe {
            table.add(2 * v).write_volatile(low);
            table.add(2 * v + 1).write_volatile(target >> 32);
        }
    }
    let ptr = DescriptorPointer {
        limit: (16 * VECTORS - 1) as u16,
        base: table.addr() as u64,
    };
    // SAFETY: the table is a static (it lives forever) whose gates all point at the stubs
    // above with cxlvm's kernel code selector; the caller runs at CPL0 (checked).
    unsafe {
        asm!("lidt [{}]", in(reg) &raw const ptr, options(readonly, nostack, preserves_flags))
    }
}

/// Current privilege level (CS bits 1:0).
#[inline]
pub fn cpl() -> u8 {
    let cs: u16;
    // SAFETY: reading CS has no effect.
    unsafe { asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) }
    (cs & 3) as u8
}

/// Reads CR0.
#[inline]
pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no effect (#GP at CPL3, a triple fault without an IDT).
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Writes CR0.
///
/// # Safety
/// CPL0, and the new value must keep the guest running (paging, protection, WP as the caller
/// expects).
#[inline]
pub unsafe fn write_cr0(v: u64) {
    // SAFETY: the caller guarantees a sound value.
    unsafe { asm!("mov cr0, {}", in(reg) v, options(nostack, preserves_flags)) }
}

/// Reads CR2 (the linear address of the last page fault).
#[inline]
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no effect.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Reads CR3.
#[inline]
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no effect.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Writes CR3 (switches page tables; flushes non-global TLB entries).
///
/// # Safety
/// CPL0; `v` must be the physical address of a PML4 that maps everything the program uses
/// (code, stack, data, ports) at the same addresses as now.
#[inline]
pub unsafe fn write_cr3(v: u64) {
    // SAFETY: the caller guarantees the tables. Not `nomem`: every earlier store (to the
    // tables themselves) must be done before the switch.
    unsafe { asm!("mov cr3, {}", in(reg) v, options(nostack, preserves_flags)) }
}

/// Reads CR4.
#[inline]
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no effect.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) }
    v
}

/// Writes CR4.
///
/// # Safety
/// CPL0, and the value must keep the guest running (PAE, OSFXSR, OSXSAVE as the code needs).
#[inline]
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: the caller guarantees a sound value.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) }
}

/// Drops the TLB entry of the page holding linear address `addr` (`invlpg`).
///
/// # Safety
/// CPL0 (it is harmless otherwise, but #GP at CPL3).
#[inline]
pub unsafe fn invlpg(addr: u64) {
    // SAFETY: INVLPG only drops a translation; the caller runs at CPL0. Not `nomem`: a
    // page-table store before it must be emitted before it.
    unsafe { asm!("invlpg [{}]", in(reg) addr, options(nostack, preserves_flags)) }
}

/// Continues at CPL3 on the same stack: `iretq` to the user code and data selectors of cxlvm's
/// GDT with the current RSP and RFLAGS, right after itself. Data segment registers then hold
/// null selectors (harmless in 64-bit mode). Afterwards nothing privileged works: exceptions at
/// CPL3 would need a stack switch through cxlvm's TSS (whose RSP0 is 0), so they end the run.
///
/// # Safety
/// CPL0; the current page tables must map the code, stack and data the program still uses
/// as user-accessible (the kit's [`paging`](crate::paging) tables do).
#[inline(never)]
pub unsafe fn enter_user_mode() {
    // SAFETY: the frame returns to the next instruction with the same RSP (as it was before
    // the pushes) and RFLAGS, at CPL3; the caller guarantees user-accessible mappings. RAX is
    // declared clobbered.
    unsafe {
        asm!(
            "mov rax, rsp",
            "push {ds}",
            "push rax",
            "pushfq",
            "push {cs}",
            "lea rax, [rip + 2f]",
            "push rax",
            "iretq",
            "2:",
            ds = const USER_DS as u64,
            cs = const USER_CS as u64,
            out("rax") _,
        )
    }
}
