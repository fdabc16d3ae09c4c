//! `mode=xsavec_loop`: commits a region like `mode=region`, then `runs=` times an XSAVEC
//! (x87|SSE|AVX) to region base + 0x1000 and a 32-byte AVX store and load at base + 0x2000 —
//! instructions KVM cannot emulate on MMIO, so they only work while the region is mapped
//! directly. `direct=0` switches direct mappings off (port 0x510 = 0) before the loop: the first
//! XSAVEC then ends the VM with cxlvm's emulation failure report (what a harness expects).

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
        // Expected to end the VM at the first XSAVEC below.
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
    println!("xsavec_loop runs={runs} ok");
    Ok(())
}
