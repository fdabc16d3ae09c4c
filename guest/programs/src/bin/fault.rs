//! `fault`: raises an exception on vCPU 0, which is a triple fault (there is no IDT).
//!
//! `kind=ud2` (default) executes `ud2`; `kind=unmapped` reads from 0x7fff_0000_0000, which is
//! not mapped.
#![no_std]
#![no_main]

use cxlvm_guest::{BootInfo, arg, mmio, println};

cxlvm_guest::entry!(main);

/// Not mapped: far above RAM and every platform range.
const UNMAPPED: u64 = 0x7fff_0000_0000;

fn main(_boot: &BootInfo, vcpu: u32) -> i32 {
    if vcpu != 0 {
        return 0;
    }
    match arg("kind").unwrap_or("ud2") {
        "ud2" => {
            println!("fault: executing ud2");
            // SAFETY: UD2 raises #UD, which ends the run (triple fault); it touches nothing.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
        }
        "unmapped" => {
            println!("fault: reading {UNMAPPED:#x}");
            // SAFETY: the address is not mapped, so the read raises #PF, which ends the run
            // (triple fault); it aliases no Rust memory.
            let v = unsafe { mmio::read_u64(UNMAPPED) };
            println!("fault: read {v:#x}");
        }
        other => {
            println!("fault: bad kind `{other}` (ud2 or unmapped)");
            return 2;
        }
    }
    println!("fault: no fault happened");
    1
}
