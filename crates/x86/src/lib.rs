//! x86-64 platform data for cxlvm test guests: where things go in guest-physical memory, the
//! identity page tables and GDT a CPL3 guest runs on, the register state at entry, the boot info
//! block (docs/guest-abi.md) and the checks on a guest ELF image.
//!
//! Everything here is plain data: it produces bytes and register values and never touches KVM or
//! guest memory itself.
#![forbid(unsafe_code)]

pub mod bootinfo;
pub mod cpu;
pub mod elf;
pub mod layout;
pub mod linux;
pub mod paging;
