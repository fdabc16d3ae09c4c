//! `mode=region direct=1`: checks that a committed region is served on the path cxlvm's
//! direct-mapping control port (0x510) selects, counting the exits with the CXL window exit
//! counter (port 0x514).
//!
//! The region's decoders are committed with direct mappings off ([`prepare`]); then [`run`]:
//! 1. writes the verify pattern through the MMIO path: one exit per write;
//! 2. turns direct mappings on and reads the pattern back: no exit when the region is mappable
//!    (`expect_direct=1`), then XSAVEC and an AVX store/load inside the region (instructions KVM
//!    cannot emulate on MMIO, so they only work on a direct mapping); one exit per read when
//!    it is not (`expect_direct=0`, no XSAVEC/AVX);
//! 3. turns direct mappings off again and reads everything back through MMIO (pattern, save
//!    area, AVX bytes): nothing written on either path may be lost, one exit per read;
//! 4. turns direct mappings back on.

use cxlvm_guest::cpu;
use cxlvm_guest::cxl::{self, reset_window_exits, set_direct, window_exits};
use cxlvm_guest::mmio::Mmio;
use cxlvm_guest::println;

use crate::region::verify_offsets;
use crate::{DIRECT, MISMATCH};

/// Region offset of the XSAVEC area (64-byte aligned).
pub const XSAVEC_OFFSET: u64 = 0x1000;
/// Most bytes the XSAVEC area may take (it must end before [`AVX_OFFSET`]).
pub const XSAVEC_MAX: u64 = AVX_OFFSET - XSAVEC_OFFSET;
/// Region offset of the AVX store.
pub const AVX_OFFSET: u64 = 0x2000;
/// XSAVEC components: x87, SSE, AVX.
pub const XSAVEC_MASK: u64 = cpu::xstate::X87 | cpu::xstate::SSE | cpu::xstate::AVX;

/// Sets the control port to `on` and checks it reads back.
fn switch(on: bool) -> Result<(), i32> {
    let state = set_direct(on);
    if state != u32::from(on) {
        println!("direct fail control={state:#x} expected={}", u32::from(on));
        return Err(DIRECT);
    }
    Ok(())
}

/// Before the decoders are programmed: direct mappings off, exit counter reset.
pub fn prepare() -> Result<(), i32> {
    switch(false)?;
    reset_window_exits();
    Ok(())
}

/// What the XSAVEC and AVX steps left in the region, for the MMIO read-back.
struct Overlay {
    /// The save area as read back through the direct mapping (`xsavec_len` bytes, rounded up
    /// to words).
    xsavec: [u64; (XSAVEC_MAX / 8) as usize],
    xsavec_len: u64,
    /// The AVX bytes, when the store was done.
    avx: Option<[u8; 32]>,
}

impl Overlay {
    /// The word at region offset `off` (8-byte aligned) if XSAVEC or AVX wrote it.
    fn word(&self, off: u64) -> Option<u64> {
        if (XSAVEC_OFFSET..XSAVEC_OFFSET + self.xsavec_len).contains(&off) {
            return Some(self.xsavec[((off - XSAVEC_OFFSET) / 8) as usize]);
        }
        let avx = self.avx?;
        (AVX_OFFSET..AVX_OFFSET + 32).contains(&off).then(|| {
            let at = (off - AVX_OFFSET) as usize;
            let mut w = [0u8; 8];
            w.copy_from_slice(&avx[at..at + 8]);
            u64::from_le_bytes(w)
        })
    }
}

/// Prints `direct <what>=<n> exits=<delta>` and checks the delta.
fn report(what: &str, accesses: u64, exits: u32, expected: u64) -> Result<(), i32> {
    println!("direct {what}={accesses} exits={exits}");
    if u64::from(exits) != expected {
        println!("direct fail phase={what} exits={exits} expected={expected}");
        return Err(DIRECT);
    }
    Ok(())
}

/// Reads the pattern words back; returns how many were read.
fn read_pattern(
    mem: &Mmio,
    words: u64,
    stride: u64,
    phase: &str,
    overlay: Option<&Overlay>,
) -> Result<u64, i32> {
    let mut reads = 0;
    for off in verify_offsets(mem, words, stride) {
        let hpa = mem.base() + off;
        let expected = overlay
            .and_then(|o| o.word(off))
            .unwrap_or_else(|| cxl::verify_pattern(hpa));
        let got = mem.read_u64(off);
        reads += 1;
        if got != expected {
            println!(
                "direct mismatch phase={phase} addr={hpa:#x} expected={expected:#x} got={got:#x}"
            );
            return Err(MISMATCH);
        }
    }
    Ok(reads)
}

pub fn run(mem: &Mmio, words: u64, stride: u64, expect_direct: bool) -> Result<(), i32> {
    // 1. Pattern through the MMIO path (direct mappings are off since `prepare`).
    let before = window_exits();
    let mut writes = 0u64;
    for off in verify_offsets(mem, words, stride) {
        mem.write_u64(off, cxl::verify_pattern(mem.base() + off));
        writes += 1;
    }
    let exits = window_exits().wrapping_sub(before);
    report("mmio-writes", writes, exits, writes)?;

    // 2. Direct mappings on: reads, then XSAVEC and AVX where the region is mapped.
    switch(true)?;
    reset_window_exits();
    let before = window_exits();
    let reads = read_pattern(mem, words, stride, "ram-read", None)?;
    let mut overlay = Overlay {
        xsavec: [0; (XSAVEC_MAX / 8) as usize],
        xsavec_len: 0,
        avx: None,
    };
    if expect_direct {
        // Any exit so far means the region is not mapped: XSAVEC/AVX would end the VM.
        let exits = window_exits().wrapping_sub(before);
        if exits != 0 {
            return report("ram-reads", reads, exits, 0);
        }
        xsavec(mem, &mut overlay)?;
        avx(mem, &mut overlay)?;
    }
    let exits = window_exits().wrapping_sub(before);
    report(
        "ram-reads",
        reads,
        exits,
        if expect_direct { 0 } else { reads },
    )?;

    // 3. Back to MMIO: everything either path wrote must be there.
    switch(false)?;
    reset_window_exits();
    let before = window_exits();
    let mut reads = read_pattern(mem, words, stride, "mmio-read", Some(&overlay))?;
    for i in 0..overlay.xsavec_len / 8 {
        let off = XSAVEC_OFFSET + 8 * i;
        let got = mem.read_u64(off);
        reads += 1;
        if got != overlay.xsavec[i as usize] {
            println!(
                "direct mismatch phase=mmio-read-xsavec addr={:#x} expected={:#x} got={got:#x}",
                mem.base() + off,
                overlay.xsavec[i as usize]
            );
            return Err(MISMATCH);
        }
    }
    if overlay.avx.is_some() {
        for off in (AVX_OFFSET..AVX_OFFSET + 32).step_by(8) {
            let expected = overlay.word(off).unwrap_or_default();
            let got = mem.read_u64(off);
            reads += 1;
            if got != expected {
                println!(
                    "direct mismatch phase=mmio-read-avx addr={:#x} expected={expected:#x} got={got:#x}",
                    mem.base() + off
                );
                return Err(MISMATCH);
            }
        }
    }
    let exits = window_exits().wrapping_sub(before);
    report("mmio-reads", reads, exits, reads)?;

    // 4. Back to the default.
    switch(true)?;
    println!("direct ok");
    Ok(())
}

/// XSAVEC (x87|SSE|AVX) to region base + [`XSAVEC_OFFSET`] through the direct mapping; checks
/// the header and keeps a copy of the area.
fn xsavec(mem: &Mmio, overlay: &mut Overlay) -> Result<(), i32> {
    if !cpu::has_xsavec() {
        println!("direct xsavec skipped: not supported by this CPU");
        return Ok(());
    }
    let Some(size) = cpu::xsavec_size(XSAVEC_MASK).filter(|&s| s <= XSAVEC_MAX) else {
        println!(
            "direct xsavec skipped: save area larger than {XSAVEC_MAX:#x} bytes or not described"
        );
        return Ok(());
    };
    let dst = mem.addr(XSAVEC_OFFSET);
    // SAFETY: the save area (`size` ≤ XSAVEC_MAX bytes from a 64-byte aligned offset of a
    // 256 MiB aligned region) lies inside the region, a listed device range that aliases no
    // Rust memory; the CPU supports XSAVEC.
    unsafe { cpu::xsavec(mem.ptr(XSAVEC_OFFSET), XSAVEC_MASK) };
    let xstate_bv = mem.read_u64(XSAVEC_OFFSET + 512);
    let xcomp_bv = mem.read_u64(XSAVEC_OFFSET + 520);
    if xcomp_bv >> 63 == 0 || xstate_bv & !XSAVEC_MASK != 0 {
        println!("direct fail xsavec dst={dst:#x} xstate_bv={xstate_bv:#x} xcomp_bv={xcomp_bv:#x}");
        return Err(MISMATCH);
    }
    let len = size.next_multiple_of(8);
    for i in 0..len / 8 {
        overlay.xsavec[i as usize] = mem.read_u64(XSAVEC_OFFSET + 8 * i);
    }
    overlay.xsavec_len = len;
    println!("direct xsavec ok dst={dst:#x} size={size}");
    Ok(())
}

/// One 32-byte AVX store at region base + [`AVX_OFFSET`] and an AVX load back.
fn avx(mem: &Mmio, overlay: &mut Overlay) -> Result<(), i32> {
    if !cpu::has_avx() {
        println!("direct avx skipped: not usable on this CPU");
        return Ok(());
    }
    let mut data = [0u8; 32];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(29).wrapping_add(0xa7);
    }
    let dst = mem.addr(AVX_OFFSET);
    // SAFETY: 32 bytes inside the region (a listed device range that aliases no Rust memory);
    // AVX is usable.
    unsafe { cpu::avx_store32(mem.ptr(AVX_OFFSET), &data) };
    // SAFETY: as for the store.
    let back = unsafe { cpu::avx_load32(mem.ptr(AVX_OFFSET)) };
    if back != data {
        println!("direct mismatch phase=avx addr={dst:#x} stored={data:02x?} loaded={back:02x?}");
        return Err(MISMATCH);
    }
    overlay.avx = Some(data);
    println!("direct avx ok dst={dst:#x}");
    Ok(())
}
