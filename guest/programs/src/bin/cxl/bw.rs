//! `mode=bw`: commits a region like `mode=region` and measures bandwidth on the guest's free RAM
//! and on the region: sequential 8-byte stores and loads, 32-byte AVX stores and loads, and a
//! `rep movsb` copy. One `bw target=... op=...` line per measurement.
//!
//! With `direct=0` the direct-mapping control (port 0x510) is switched off before the commit, so
//! the region is served on the exact MMIO path (one exit per access): its buffer is clamped to
//! `mmio_kib=` KiB, and the AVX ops, which KVM cannot emulate on MMIO, are skipped there. The
//! same happens to a region cxlvm does not map directly (its base read exits).

use core::ptr;

use cxlvm_guest::cxl::{set_direct, window_exits};
use cxlvm_guest::stats::mbps;
use cxlvm_guest::{BootInfo, arg_u64, cpu, println};

use crate::region::{self, Defaults};
use crate::topology::Topology;
use crate::{BAD_ARG, DIRECT, flag};

/// Page size the warm-up pass touches.
const PAGE: u64 = 4096;
/// What `avx_store32` stores.
const AVX_DATA: [u8; 32] = *b"cxlvm bandwidth avx store 32 B!!";

/// The measurements, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Write8,
    Read8,
    AvxStore32,
    AvxLoad32,
    CopyMovsb,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::Write8,
        Op::Read8,
        Op::AvxStore32,
        Op::AvxLoad32,
        Op::CopyMovsb,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Write8 => "write8",
            Op::Read8 => "read8",
            Op::AvxStore32 => "avx_store32",
            Op::AvxLoad32 => "avx_load32",
            Op::CopyMovsb => "copy_movsb",
        }
    }

    fn is_avx(self) -> bool {
        matches!(self, Op::AvxStore32 | Op::AvxLoad32)
    }
}

/// A buffer to measure on: `len` bytes at guest-physical `base` (identity mapped).
#[derive(Clone, Copy, Debug)]
struct Target {
    name: &'static str,
    base: u64,
    len: u64,
    /// Whether the buffer is on the MMIO path (no AVX there).
    mmio: bool,
}

pub fn run(boot: &BootInfo) -> Result<(), i32> {
    let topo = Topology::discover(boot)?;
    let (req, mem) = region::plan(boot, &topo, Defaults::default())?;
    let direct = flag("direct", true)?;
    let mib = arg_u64("mib", 64);
    let mmio_kib = arg_u64("mmio_kib", 64);
    if !direct {
        let state = set_direct(false);
        if state != 0 {
            println!("bw fail control={state:#x} expected=0");
            return Err(DIRECT);
        }
    }
    region::commit(&topo, &req)?;

    let free = boot.free_range();
    let free_len = free.end.saturating_sub(free.start);
    // Whole pages: the warm-up touches each, and halves stay 32-byte multiples for the copy.
    let len = mib.saturating_mul(1 << 20).min(mem.size()).min(free_len) / PAGE * PAGE;
    // Whether cxlvm maps the region directly: a read of its base must not exit. It does not
    // with `direct=0`, nor for regions it cannot map (e.g. 256 B granularity interleaves, or
    // over its mapping budget); those are served on the MMIO path, one exit per access.
    let before = window_exits();
    let _ = mem.read_u64(0);
    let mapped = window_exits() == before;
    let cxl_len = if mapped {
        len
    } else {
        len.min(mmio_kib.saturating_mul(1024)) / 64 * 64
    };
    if len == 0 || cxl_len == 0 {
        println!(
            "cxl: bw has no buffer: mib={mib} mmio_kib={mmio_kib} region={:#x} free={free_len:#x}",
            mem.size()
        );
        return Err(BAD_ARG);
    }
    let avx = cpu::has_avx();
    let khz = boot.tsc_khz();
    println!(
        "bw setup bytes={len} cxl_bytes={cxl_len} direct={} mapped={} tsc_khz={khz} avx={}",
        u8::from(direct),
        u8::from(mapped),
        u8::from(avx)
    );

    let ram = Target {
        name: "ram",
        base: free.start,
        len,
        mmio: false,
    };
    let cxl = Target {
        name: "cxl",
        base: mem.base(),
        len: cxl_len,
        mmio: !mapped,
    };
    measure(ram, avx, khz);
    warm_up(cxl);
    let before = window_exits();
    measure_warm(cxl, avx, khz);
    let exits = window_exits().wrapping_sub(before);
    println!("bw exits={exits}");
    // With `direct=0` port 0x510 stays 0: switching back would map the whole region again, a
    // cost the run does not need.
    println!("bw ok");
    Ok(())
}

/// Warm-up pass, then every op on `t`.
fn measure(t: Target, avx: bool, khz: u64) {
    warm_up(t);
    measure_warm(t, avx, khz);
}

/// Every op on `t` (already warmed up), one line each.
fn measure_warm(t: Target, avx: bool, khz: u64) {
    for op in Op::ALL {
        if op.is_avx() && (!avx || t.mmio) {
            let why = if avx { "mmio" } else { "no-avx" };
            println!("bw skipped target={} op={} reason={why}", t.name, op.name());
            continue;
        }
        let (bytes, cycles) = run_op(t, op);
        println!(
            "bw target={} op={} bytes={bytes} cycles={cycles} mbps={}",
            t.name,
            op.name(),
            mbps(bytes, khz, cycles)
        );
    }
}

/// Writes one word in every page of `t` so that neither the guest's nor the host's first-touch
/// faults land in a measurement.
fn warm_up(t: Target) {
    let mut off = 0;
    while off < t.len {
        // SAFETY: `t` is the boot info's free RAM or the committed region (a listed device
        // range): identity mapped, 8-byte aligned here, and no Rust object lives there.
        unsafe {
            ptr::write_volatile(
                ptr::with_exposed_provenance_mut::<u64>((t.base + off) as usize),
                off,
            )
        };
        off += PAGE;
    }
}

/// Runs `op` once over `t`; returns (bytes moved, TSC cycles).
fn run_op(t: Target, op: Op) -> (u64, u64) {
    let words = (t.len / 8) as usize;
    let p = ptr::with_exposed_provenance_mut::<u64>(t.base as usize);
    let bytes_ptr = p.cast::<u8>();
    let len = t.len as usize;
    match op {
        Op::Write8 => {
            let start = cpu::rdtsc_ordered();
            for i in 0..words {
                // SAFETY: word `i` < len / 8 of `t` (see `warm_up`).
                unsafe { ptr::write_volatile(p.add(i), i as u64) };
            }
            (t.len, cpu::rdtsc_ordered().wrapping_sub(start))
        }
        Op::Read8 => {
            let start = cpu::rdtsc_ordered();
            let mut acc = 0u64;
            for i in 0..words {
                // SAFETY: as for the stores.
                acc = acc.wrapping_add(unsafe { ptr::read_volatile(p.add(i)) });
            }
            let end = cpu::rdtsc_ordered();
            core::hint::black_box(acc);
            (t.len, end.wrapping_sub(start))
        }
        Op::AvxStore32 => {
            let start = cpu::rdtsc_ordered();
            // SAFETY: `len` (a multiple of 64) bytes of `t`; AVX checked by the caller, and
            // `t` is not on the MMIO path.
            unsafe { cpu::avx_fill32(bytes_ptr, len, &AVX_DATA) };
            (t.len, cpu::rdtsc_ordered().wrapping_sub(start))
        }
        Op::AvxLoad32 => {
            let start = cpu::rdtsc_ordered();
            // SAFETY: as for the stores.
            let last = unsafe { cpu::avx_read32(bytes_ptr, len) };
            let end = cpu::rdtsc_ordered();
            core::hint::black_box(last);
            (t.len, end.wrapping_sub(start))
        }
        Op::CopyMovsb => {
            let half = len / 2;
            let start = cpu::rdtsc_ordered();
            // SAFETY: both halves lie inside `t` and do not overlap.
            unsafe { cpu::rep_movsb(bytes_ptr.add(half), bytes_ptr, half) };
            (half as u64, cpu::rdtsc_ordered().wrapping_sub(start))
        }
    }
}
