//! Runtime kit for cxlvm test guests.
//!
//! A test guest is a freestanding static ELF that cxlvm boots directly in 64-bit long mode at
//! CPL3 (see `docs/guest-abi.md`). This crate provides what such a program needs:
//!
//! - the entry point ([`entry!`]): `_start` aligns the stack, vCPU 0 writes the boot-mark port,
//!   the boot info is checked, and the program's `main(&BootInfo, vcpu) -> i32` runs on every
//!   vCPU. **Only vCPU 0's return value is written to the exit port** (which ends the whole VM);
//!   any other vCPU that returns from `main` spins forever, so that it cannot end the run early.
//! - the boot info reader ([`BootInfo`]) and the command line helpers ([`arg`], [`arg_u64`]);
//! - port I/O ([`port`]), the exit port ([`exit`]) and the serial console ([`print!`],
//!   [`println!`]);
//! - MMIO accessors ([`mmio`]) and CPU helpers ([`cpu`]): `rdtsc`, `cpuid`, `xsavec`, AVX loads
//!   and stores, `rep movsb`;
//! - multi-vCPU helpers ([`sync`]): a spin lock and a barrier on plain RAM atomics;
//! - ring-0 guests (cxlvm's `Privilege::Kernel`): an IDT with stubs for every exception and one
//!   Rust handler, control registers, `invlpg` and the way down to CPL3 ([`idt`]), and a 4-level
//!   page-table builder with remappable 4 KiB pages ([`paging`]);
//! - PCI configuration space through ECAM ([`pci`]) and CXL registers ([`cxl`]): host bridges
//!   and windows from the boot info, DVSECs, component registers and HDM decoders, device
//!   registers and the mailbox;
//! - the ACPI tables ([`acpi`]): found through the boot info, every checksum verified, the MADT,
//!   MCFG, SRAT and CEDT parsed and compared with the boot info's platform;
//! - small no-allocator helpers: [`fixed::FixedVec`], a seeded PRNG ([`rand::XorShift64`]) and
//!   measurement arithmetic ([`stats`]: MB/s, TSC cycles to ns, percentiles);
//! - `memcpy`/`memmove`/`memset`/`memcmp`/`bcmp`, which `core` needs and no libc provides;
//! - a panic handler that prints `guest panic: <info>` and exits with status [`PANIC_STATUS`].
//!
//! A guest whose boot info is missing or malformed prints `guest: bad boot info ...` and exits
//! with status [`BAD_BOOT_INFO_STATUS`].
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use cxlvm_guest::{BootInfo, println};
//!
//! cxlvm_guest::entry!(main);
//!
//! fn main(boot: &BootInfo, vcpu: u32) -> i32 {
//!     if vcpu == 0 {
//!         println!("{} vCPUs", boot.vcpu_count());
//!     }
//!     0
//! }
//! ```
#![no_std]

pub mod acpi;
pub mod boot;
pub mod console;
pub mod cpu;
pub mod cxl;
pub mod fixed;
pub mod idt;
mod mem;
pub mod mmio;
pub mod paging;
mod panic;
pub mod pci;
pub mod port;
pub mod rand;
pub mod rt;
pub mod stats;
pub mod sync;

pub use boot::{
    BootInfo, Device, DeviceKind, MemoryKind, MemoryRegion, arg, arg_u64, boot_info, parse_u64,
};
pub use cpu::{cpuid, rdtsc, tsc_to_ns};
pub use port::{exit, inb, inl, inw, outb, outl, outw};

/// Exit status of a guest that panicked.
pub const PANIC_STATUS: i32 = 0xfe;
/// Exit status of a guest whose boot info failed the magic/version check.
pub const BAD_BOOT_INFO_STATUS: i32 = 0xfd;

/// Declares the program's main function: `fn(&BootInfo, u32) -> i32`.
///
/// Expands to the image's `_start` (in `global_asm!`), which keeps RDI (boot info address) and
/// RSI (vCPU index), aligns RSP to 16 bytes and calls [`rt::run`]. Every vCPU runs `main`;
/// vCPU 0's return value becomes the exit status (`value & 0xff`), other vCPUs spin forever
/// after returning. Use it once, in the binary crate.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[doc(hidden)]
        extern "C" fn __cxlvm_guest_entry(boot_gpa: u64, vcpu: u64) -> ! {
            let main: fn(&'static $crate::BootInfo, u32) -> i32 = $main;
            $crate::rt::run(boot_gpa, vcpu, main)
        }

        ::core::arch::global_asm!(
            ".pushsection .text._start, \"ax\", @progbits",
            ".globl _start",
            ".type _start, @function",
            "_start:",
            // RDI = boot info GPA, RSI = vCPU index: already the first two C arguments.
            "    and rsp, -16",
            "    xor ebp, ebp",
            "    call {entry}",
            // Not reached: the entry never returns.
            "2:  pause",
            "    jmp 2b",
            ".size _start, . - _start",
            ".popsection",
            entry = sym __cxlvm_guest_entry,
        );
    };
}
