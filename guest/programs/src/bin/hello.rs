//! `hello`: prints a greeting and the boot info, returns 0.
#![no_std]
#![no_main]

use cxlvm_guest::{BootInfo, println};

cxlvm_guest::entry!(main);

fn main(boot: &BootInfo, vcpu: u32) -> i32 {
    if vcpu != 0 {
        return 0;
    }
    println!("hello from cxlvm guest");
    println!(
        "boot: version={} vcpus={} tsc_khz={} ram_size={:#x} ({} MiB)",
        boot.version(),
        boot.vcpu_count(),
        boot.tsc_khz(),
        boot.ram_size(),
        boot.ram_size() >> 20
    );
    println!("free: {:#x}..{:#x}", boot.free_start(), boot.free_end());
    println!(
        "stack: top={:#x} size={:#x}",
        boot.stack_top(),
        boot.stack_size()
    );
    for (i, m) in boot.memory_map().enumerate() {
        println!(
            "mem[{i}]: base={:#x} size={:#x} kind={}",
            m.base, m.size, m.kind
        );
    }
    for (i, d) in boot.devices().enumerate() {
        println!(
            "dev[{i}]: kind={} base={:#x} size={:#x} port={:#x} flags={:#x}",
            d.kind, d.base, d.size, d.port, d.flags
        );
    }
    println!("cmdline: \"{}\"", boot.cmdline());
    0
}
