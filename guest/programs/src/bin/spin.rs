//! `spin`: loops forever on every vCPU (for `--timeout` tests).
#![no_std]
#![no_main]

use cxlvm_guest::{BootInfo, println};

cxlvm_guest::entry!(main);

fn main(_boot: &BootInfo, vcpu: u32) -> i32 {
    if vcpu == 0 {
        println!("spin: looping forever");
    }
    loop {
        core::hint::spin_loop();
    }
}
