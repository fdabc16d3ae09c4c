//! `mode=exits`: the cost of one MMIO exit on three paths, in TSC cycles per 8-byte store:
//! - `window`: the window base with nothing committed (the CXL window dispatcher finds no
//!   decoder and drops the store);
//! - `null_mmio`: the null MMIO device (boot info kind 2), which does nothing: the exit floor;
//! - `decoded`: a committed region (one device per host bridge) with direct mappings off
//!   (port 0x510 = 0): dispatcher, decoders, device backing.
//!
//! The window exit counter (port 0x514) must count every window and decoded store.

use core::ptr;

use cxlvm_guest::cxl::{set_direct, window_exits};
use cxlvm_guest::{BootInfo, DeviceKind, arg_u64, cpu, println};

use crate::region::{self, Defaults};
use crate::topology::Topology;
use crate::{BAD_ARG, DIRECT, MISMATCH, NO_DEVICE};

/// `count` 8-byte stores to `addr` (value = store index); returns TSC cycles for all of them.
fn stores(addr: u64, count: u64) -> u64 {
    let p = ptr::with_exposed_provenance_mut::<u64>(addr as usize);
    let start = cpu::rdtsc_ordered();
    for i in 0..count {
        // SAFETY: `addr` is the base of a listed device range (identity mapped, 8-byte
        // aligned) that aliases no Rust memory.
        unsafe { ptr::write_volatile(p, i) };
    }
    cpu::rdtsc_ordered().wrapping_sub(start)
}

/// Checks the window exit counter grew by `expected` over a phase.
fn check_exits(phase: &str, before: u32, expected: u64) -> Result<(), i32> {
    let exits = window_exits().wrapping_sub(before);
    if u64::from(exits) != expected & 0xffff_ffff {
        println!("exits fail phase={phase} exits={exits} expected={expected}");
        return Err(DIRECT);
    }
    Ok(())
}

fn switch(on: bool) -> Result<(), i32> {
    let state = set_direct(on);
    if state != u32::from(on) {
        println!("exits fail control={state:#x} expected={}", u32::from(on));
        return Err(DIRECT);
    }
    Ok(())
}

pub fn run(boot: &BootInfo) -> Result<(), i32> {
    let topo = Topology::discover(boot)?;
    let defaults = Defaults {
        one_per_host_bridge: true,
        unit_per_device: true,
    };
    let (req, mem) = region::plan(boot, &topo, defaults)?;
    let count = arg_u64("count", 20000);
    if count == 0 {
        println!("cxl: count must be at least 1");
        return Err(BAD_ARG);
    }
    let Some(null) = boot.find_device(DeviceKind::NullMmio) else {
        println!("cxl: no null MMIO device (kind 2)");
        return Err(NO_DEVICE);
    };
    let window = req.window().base;
    let khz = boot.tsc_khz();

    // Nothing is committed yet: the window base decodes to nothing.
    // SAFETY: the window base is in a listed device range that aliases no Rust memory.
    let got = unsafe { ptr::read_volatile(ptr::with_exposed_provenance::<u64>(window as usize)) };
    if got != u64::MAX {
        println!(
            "exits mismatch phase=window addr={window:#x} expected=0xffffffffffffffff got={got:#x}"
        );
        return Err(MISMATCH);
    }
    let before = window_exits();
    let window_cycles = stores(window, count);
    check_exits("window", before, count)?;
    let null_cycles = stores(null.base, count);
    println!(
        "exits window_cyc={} null_mmio_cyc={} count={count} tsc_khz={khz}",
        window_cycles / count,
        null_cycles / count
    );

    switch(false)?;
    region::commit(&topo, &req)?;
    let before = window_exits();
    let decoded_cycles = stores(mem.base(), count);
    check_exits("decoded", before, count)?;
    let got = mem.read_u64(0);
    if got != count - 1 {
        println!(
            "exits mismatch phase=decoded addr={:#x} expected={:#x} got={got:#x}",
            mem.base(),
            count - 1
        );
        return Err(MISMATCH);
    }
    println!("exits decoded_cyc={} count={count}", decoded_cycles / count);
    switch(true)?;
    println!("exits ok");
    Ok(())
}
