//! `mode=xsavec_loop`: commits a region like `mode=region`, then `runs=` times an XSAVEC
//! (x87|SSE|AVX) to region base + 0x1000 and a 32-byte AVX store and load at base + 0x2000 —
//! instructions KVM's emulator cannot run on MMIO. With the region mapped directly they run
//! natively; `direct=0` switches direct mappings off (port 0x510 = 0) before the loop, so that
//! every one of them takes the MMIO path and cxlvm completes it (cxlvm-emulate). Either way the
//! header and the stored bytes are checked. Then it times, on the same range, `runs` plain
//! 8-byte stores, 32-byte AVX stores and XSAVECs cycling over a 4 KiB area, and prints the
//! cycles per instruction (`xsavec_loop cost ...`).

use cxlvm_guest::cxl::{set_direct, window_exits};
use cxlvm_guest::{BootInfo, arg_u64, cpu, println};

use crate::direct::{AVX_OFFSET, XSAVEC_MASK, XSAVEC_MAX, XSAVEC_OFFSET};
use crate::region::{self, Defaults};
use crate::topology::Topology;
use crate::{DIRECT, MISMATCH, NO_DEVICE, flag};

pub fn run(boot: &BootInfo) -> Result<(), i32> {
    let topo = Topology::discover(boot)?;
    let (req, mem) = region::plan(boot, &topo, Defaults::default())?;
    let runs = arg_u64("runs", 100);
    let direct = flag("direct", true)?;
    if !cpu::has_xsavec() || !cpu::has_avx() {
        println!("cxl: xsavec_loop needs XSAVEC and AVX, which this CPU does not offer");
        return Err(NO_DEVICE);
    }
    if cpu::xsavec_size(XSAVEC_MASK).is_none_or(|s| s > XSAVEC_MAX) {
        println!("cxl: xsavec_loop: save area larger than {XSAVEC_MAX:#x} bytes or not described");
        return Err(NO_DEVICE);
    }
    region::commit(&topo, &req)?;
    if direct {
        // A region left on the MMIO path would end the VM at the first XSAVEC: check first.
        let before = window_exits();
        let _ = mem.read_u64(0);
        let exits = window_exits().wrapping_sub(before);
        if exits != 0 {
            println!("xsavec_loop fail not-mapped exits={exits} expected=0");
            return Err(DIRECT);
        }
    } else {
        // Every access below takes the MMIO path; cxlvm completes what KVM cannot.
        set_direct(false);
    }
    let xsave = mem.ptr(XSAVEC_OFFSET);
    let avx = mem.ptr(AVX_OFFSET);
    for run in 0..runs {
        // SAFETY: the save area (at most XSAVEC_MAX bytes from a 64-byte aligned offset of a
        // 256 MiB aligned region) lies inside the region, a listed device range that aliases no
        // Rust memory; XSAVEC is supported (checked above).
        unsafe { cpu::xsavec(xsave, XSAVEC_MASK) };
        let xstate_bv = mem.read_u64(XSAVEC_OFFSET + 512);
        let xcomp_bv = mem.read_u64(XSAVEC_OFFSET + 520);
        if xcomp_bv >> 63 == 0 || xstate_bv & !XSAVEC_MASK != 0 {
            println!(
                "xsavec_loop fail run={run} xsavec dst={:#x} xstate_bv={xstate_bv:#x} xcomp_bv={xcomp_bv:#x}",
                mem.addr(XSAVEC_OFFSET)
            );
            return Err(MISMATCH);
        }
        let mut data = [0u8; 32];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (run as u8).wrapping_mul(31).wrapping_add(i as u8);
        }
        // SAFETY: 32 bytes inside the region (see above); AVX is usable (checked above).
        unsafe { cpu::avx_store32(avx, &data) };
        // SAFETY: as for the store.
        let back = unsafe { cpu::avx_load32(avx) };
        if back != data {
            println!(
                "xsavec_loop mismatch run={run} addr={:#x} stored={data:02x?} loaded={back:02x?}",
                mem.addr(AVX_OFFSET)
            );
            return Err(MISMATCH);
        }
    }
    let data = [0x5au8; 32];
    let runs = runs.max(1);
    let t0 = cpu::rdtsc_ordered();
    for i in 0..runs {
        mem.write_u64(AVX_OFFSET + (i & 3) * 8, i);
    }
    let t1 = cpu::rdtsc_ordered();
    for _ in 0..runs {
        // SAFETY: as for the checked store above.
        unsafe { cpu::avx_store32(avx, &data) };
    }
    let t2 = cpu::rdtsc_ordered();
    // Save areas 1 KiB apart over the 4 KiB at XSAVEC_OFFSET when one fits in 1 KiB.
    let slots = if cpu::xsavec_size(XSAVEC_MASK).is_some_and(|s| s <= 0x400) {
        3
    } else {
        0
    };
    for i in 0..runs {
        let at = XSAVEC_OFFSET + (i & slots) * 0x400;
        // SAFETY: as for the checked XSAVEC above; each area lies inside the region.
        unsafe { cpu::xsavec(mem.ptr(at), XSAVEC_MASK) };
    }
    let t3 = cpu::rdtsc_ordered();
    println!(
        "xsavec_loop cost runs={runs} store_cyc={} vmovdqu_cyc={} xsavec_cyc={} tsc_khz={}",
        (t1 - t0) / runs,
        (t2 - t1) / runs,
        (t3 - t2) / runs,
        boot.tsc_khz()
    );
    println!("xsavec_loop runs={runs} ok");
    Ok(())
}
