//! `window`: exercises the scratch window device (device kind 1) and its control port.
//!
//! `mode=` selects the test (default `roundtrip`):
//! - `roundtrip` (`words=`, default 512): pattern through MMIO, read back through MMIO and the
//!   RAM alias, second pattern through the alias, everything read back through MMIO;
//! - `xsavec` (`alias=on|off`, default off): XSAVEC (x87|SSE|AVX) to the window base;
//! - `avx` (`alias=on|off`, default off): one 32-byte `vmovdqu` store to the window base and a
//!   load back;
//! - `stress` (`words=`, default 65536; `toggles=`, default 2000; needs 2 vCPUs): vCPU 0
//!   streams a pattern into the window while vCPU 1 toggles the alias, then vCPU 0 checks it;
//! - `exits` (`count=`, default 20000): cycles per access of window MMIO (alias off), null MMIO
//!   and the null port;
//! - `uncovered`: `vaddps ymm0, ymm0, [window]` with the alias off — an instruction neither
//!   KVM's emulator nor cxlvm completes, so the run must end with a report naming it;
//! - `fetch`: jumps into the window with the alias off — instruction fetch from the MMIO path.
//!
//! Exit status: 0 ok, 2 bad argument (or too few vCPUs, or a window too small), 3 no scratch
//! window (or no null MMIO device for `exits`), 4 data mismatch, 5 CPU lacks XSAVEC/AVX,
//! 6 the control port does not read back what was written.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cxlvm_guest::cpu::{self, rdtsc_ordered};
use cxlvm_guest::mmio::Mmio;
use cxlvm_guest::sync::Barrier;
use cxlvm_guest::{BootInfo, DeviceKind, arg, arg_u64, port, println};

cxlvm_guest::entry!(main);

const BAD_ARG: i32 = 2;
const NO_DEVICE: i32 = 3;
const MISMATCH: i32 = 4;
const UNSUPPORTED: i32 = 5;
const BAD_CONTROL: i32 = 6;

/// Pattern of the first half in `roundtrip` (ORed with the word index).
const PATTERN_A: u64 = 0xC0DE_0000_0000_0000;
/// Pattern of the second half in `roundtrip`.
const PATTERN_B: u64 = 0xA11A_0000_0000_0000;
/// Pattern of `stress`.
const PATTERN_STRESS: u64 = 0x5E90_0000_0000_0000;

fn main(boot: &BootInfo, vcpu: u32) -> i32 {
    let mode = arg("mode").unwrap_or("roundtrip");
    if mode == "stress" {
        return stress(boot, vcpu);
    }
    if vcpu != 0 {
        return 0;
    }
    let Some(window) = Window::find(boot) else {
        println!("window: no scratch window device");
        return NO_DEVICE;
    };
    println!(
        "window: base={:#x} size={:#x} port={:#x} mode={mode}",
        window.mmio.base(),
        window.mmio.size(),
        window.port
    );
    let result = match mode {
        "roundtrip" => roundtrip(&window),
        "xsavec" => xsavec(&window),
        "avx" => avx(&window),
        "exits" => exits(boot, &window),
        "uncovered" => uncovered(&window),
        "fetch" => fetch(&window),
        other => {
            println!(
                "window: bad mode `{other}` (roundtrip, xsavec, avx, stress, exits, uncovered, fetch)"
            );
            Err(BAD_ARG)
        }
    };
    result.err().unwrap_or(0)
}

/// The scratch window: its range and its control port.
struct Window {
    mmio: Mmio,
    port: u16,
}

impl Window {
    fn find(boot: &BootInfo) -> Option<Self> {
        let dev = boot.find_device(DeviceKind::ScratchWindow)?;
        Some(Self {
            mmio: dev.mmio(),
            port: dev.control_port().unwrap_or(port::SCRATCH_CONTROL),
        })
    }

    /// Switches the RAM alias and checks that the control port reads the new state back.
    fn set_alias(&self, on: bool) -> Result<(), i32> {
        port::outl(self.port, u32::from(on));
        let state = port::inl(self.port);
        if state != u32::from(on) {
            println!(
                "window: control port reads {state} after writing {}",
                u32::from(on)
            );
            return Err(BAD_CONTROL);
        }
        Ok(())
    }

    /// Checks that the window holds `words` u64 words (bytes `0 .. words * 8`).
    fn check_words(&self, words: u64) -> Result<(), i32> {
        if words == 0 {
            println!("window: words must be at least 1");
            return Err(BAD_ARG);
        }
        let need = words.saturating_mul(8);
        if need > self.mmio.size() {
            println!(
                "window: {words} words ({need:#x} bytes) do not fit a window of {:#x} bytes",
                self.mmio.size()
            );
            return Err(BAD_ARG);
        }
        Ok(())
    }

    /// Reads word `i` and compares it with `expected`.
    fn expect(&self, phase: &str, i: u64, expected: u64) -> Result<(), i32> {
        let got = self.mmio.read_u64(i * 8);
        if got != expected {
            println!(
                "window mismatch phase={phase} word={i} addr={:#x} expected={expected:#x} got={got:#x}",
                self.mmio.base() + i * 8
            );
            return Err(MISMATCH);
        }
        Ok(())
    }
}

/// `alias=on|off` (default off).
fn alias_arg() -> Result<bool, i32> {
    match arg("alias").unwrap_or("off") {
        "on" => Ok(true),
        "off" => Ok(false),
        other => {
            println!("window: bad alias `{other}` (on or off)");
            Err(BAD_ARG)
        }
    }
}

fn roundtrip(w: &Window) -> Result<(), i32> {
    let n = arg_u64("words", 512);
    // Words 0..n hold the first pattern, n..2n the second.
    w.check_words(n.saturating_mul(2))?;
    println!("roundtrip: words={n}");

    w.set_alias(false)?;
    let t0 = rdtsc_ordered();
    for i in 0..n {
        w.mmio.write_u64(i * 8, PATTERN_A | i);
    }
    let t1 = rdtsc_ordered();
    for i in 0..n {
        w.expect("mmio-read", i, PATTERN_A | i)?;
    }
    let t2 = rdtsc_ordered();

    w.set_alias(true)?;
    let t3 = rdtsc_ordered();
    for i in 0..n {
        w.expect("alias-read", i, PATTERN_A | i)?;
    }
    let t4 = rdtsc_ordered();
    for i in n..2 * n {
        w.mmio.write_u64(i * 8, PATTERN_B | i);
    }
    let t5 = rdtsc_ordered();

    w.set_alias(false)?;
    let t6 = rdtsc_ordered();
    for i in 0..2 * n {
        let expected = if i < n { PATTERN_A | i } else { PATTERN_B | i };
        w.expect("mmio-readback", i, expected)?;
    }
    let t7 = rdtsc_ordered();

    println!(
        "roundtrip words={n} mmio_write_cyc={} mmio_read_cyc={} alias_on_cyc={} alias_read_cyc={} alias_write_cyc={} alias_off_cyc={} mmio_readback_cyc={}",
        t1 - t0,
        t2 - t1,
        t3 - t2,
        t4 - t3,
        t5 - t4,
        t6 - t5,
        t7 - t6
    );
    println!("window roundtrip ok");
    Ok(())
}

fn xsavec(w: &Window) -> Result<(), i32> {
    let alias = alias_arg()?;
    if !cpu::has_xsavec() {
        println!("xsavec: not supported by this CPU");
        return Err(UNSUPPORTED);
    }
    let mask = cpu::xstate::X87 | cpu::xstate::SSE | cpu::xstate::AVX;
    let size = cpu::xsavec_size(mask).unwrap_or(u64::MAX);
    if !w.mmio.base().is_multiple_of(64) || size > w.mmio.size() {
        println!("xsavec: window cannot hold a {size}-byte save area at a 64-byte aligned base");
        return Err(BAD_ARG);
    }
    w.set_alias(alias)?;
    println!(
        "xsavec: alias={} dst={:#x} mask={mask:#x} size={size}",
        on_off(alias),
        w.mmio.base()
    );
    // SAFETY: the window is a device range (mapped, aliasing no Rust memory) of at least
    // `size` bytes from a 64-byte aligned base, and the CPU supports XSAVEC.
    unsafe { cpu::xsavec(w.mmio.ptr(0), mask) };
    let xstate_bv = w.mmio.read_u64(512);
    let xcomp_bv = w.mmio.read_u64(520);
    println!("xsavec header xstate_bv={xstate_bv:#x} xcomp_bv={xcomp_bv:#x}");
    if xcomp_bv >> 63 == 0 || xstate_bv & !mask != 0 {
        println!("xsavec: header is not a compacted save of mask {mask:#x}");
        return Err(MISMATCH);
    }
    println!("xsavec ok");
    Ok(())
}

fn avx(w: &Window) -> Result<(), i32> {
    let alias = alias_arg()?;
    if !cpu::has_avx() {
        println!("avx: not usable on this CPU");
        return Err(UNSUPPORTED);
    }
    if w.mmio.size() < 32 {
        println!("avx: window smaller than 32 bytes");
        return Err(BAD_ARG);
    }
    let mut data = [0u8; 32];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(0x5a);
    }
    w.set_alias(alias)?;
    println!("avx: alias={} dst={:#x}", on_off(alias), w.mmio.base());
    // SAFETY: the window is a device range (mapped, aliasing no Rust memory) of at least 32
    // bytes, and AVX is usable.
    unsafe { cpu::avx_store32(w.mmio.ptr(0), &data) };
    // SAFETY: as for the store.
    let back = unsafe { cpu::avx_load32(w.mmio.ptr(0)) };
    if back != data {
        println!("avx mismatch: stored {data:02x?} loaded {back:02x?}");
        return Err(MISMATCH);
    }
    for (i, chunk) in (0u64..).zip(data.chunks_exact(8)) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        w.expect("avx-words", i, u64::from_le_bytes(word))?;
    }
    println!("avx ok");
    Ok(())
}

/// An AVX arithmetic instruction with its memory operand on the MMIO path: returns only if the
/// VMM completed it (which it must not claim to).
fn uncovered(w: &Window) -> Result<(), i32> {
    if !cpu::has_avx() {
        println!("uncovered: AVX not usable on this CPU");
        return Err(UNSUPPORTED);
    }
    w.set_alias(false)?;
    println!("uncovered: vaddps ymm0, ymm0, [{:#x}]", w.mmio.base());
    // SAFETY: the window is a mapped device range of at least 32 bytes; AVX is usable; ymm0 is
    // declared clobbered.
    unsafe {
        core::arch::asm!(
            "vaddps ymm0, ymm0, ymmword ptr [{p}]",
            p = in(reg) w.mmio.ptr(0),
            out("ymm0") _,
            options(nostack),
        );
    }
    println!("uncovered: the instruction returned");
    Err(MISMATCH)
}

/// Jumps to the window base with the alias off: the instruction fetch reaches the MMIO path.
fn fetch(w: &Window) -> Result<(), i32> {
    w.set_alias(false)?;
    println!("fetch: jumping to {:#x}", w.mmio.base());
    // SAFETY: control leaves for device memory on purpose; the VMM must end the run there (the
    // window reads back zeroes, which decode as `add [rax], al`, so nothing sensible returns).
    unsafe {
        core::arch::asm!("jmp {p}", p = in(reg) w.mmio.ptr(0), options(noreturn));
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

static STRESS_BARRIER: Barrier = Barrier::new();
/// Writes vCPU 0 has done so far (word `n % words` holds `PATTERN_STRESS | n`).
static WRITES: AtomicU64 = AtomicU64::new(0);
/// Set by vCPU 1 when it stopped toggling (alias off).
static TOGGLER_DONE: AtomicBool = AtomicBool::new(false);
static TOGGLES_DONE: AtomicU64 = AtomicU64::new(0);

/// vCPU 0 writes `words` words while vCPU 1 toggles the alias at least `toggles` times and
/// until vCPU 0 is done (an even number of times, so the alias ends off); then vCPU 0 checks
/// every word through MMIO. Other vCPUs do nothing.
fn stress(boot: &BootInfo, vcpu: u32) -> i32 {
    if vcpu >= 2 {
        return 0;
    }
    // Both vCPUs make the same checks, so that they agree on whether to go on.
    let report = |status: i32, msg: core::fmt::Arguments<'_>| {
        if vcpu == 0 {
            println!("stress: {msg}");
        }
        status
    };
    if boot.vcpu_count() < 2 {
        return report(
            BAD_ARG,
            format_args!("needs at least 2 vCPUs, have {}", boot.vcpu_count()),
        );
    }
    let Some(w) = Window::find(boot) else {
        return report(NO_DEVICE, format_args!("no scratch window device"));
    };
    let words = arg_u64("words", 65536);
    let toggles = arg_u64("toggles", 2000);
    if words == 0 || words.saturating_mul(8) > w.mmio.size() {
        return report(
            BAD_ARG,
            format_args!(
                "{words} words do not fit a window of {:#x} bytes",
                w.mmio.size()
            ),
        );
    }

    if vcpu == 0 {
        println!(
            "stress: base={:#x} words={words} toggles={toggles} tag={:#x}",
            w.mmio.base(),
            PATTERN_STRESS
        );
        if let Err(status) = w.set_alias(false) {
            // vCPU 1 waits at the barrier forever; the exit ends it.
            return status;
        }
    }
    STRESS_BARRIER.wait(2);

    if vcpu == 1 {
        // Toggle until at least `toggles` switches are done, vCPU 0 has streamed at least one
        // full lap of the window meanwhile, and the count is even (alias ends off).
        let mut done: u64 = 0;
        loop {
            // Even counts turn the alias on, odd ones off.
            port::outl(w.port, u32::from(done.is_multiple_of(2)));
            done += 1;
            if done.is_multiple_of(2) && done >= toggles && WRITES.load(Ordering::Acquire) >= words
            {
                break;
            }
        }
        TOGGLES_DONE.store(done, Ordering::Relaxed);
        TOGGLER_DONE.store(true, Ordering::Release);
        STRESS_BARRIER.wait(2);
        return 0;
    }

    // vCPU 0 streams a sequence round the window for as long as vCPU 1 toggles: write `n` goes
    // to word `n % words` with value `PATTERN_STRESS | n`. The last `words` writes all happened
    // while the alias was switching under them.
    let t0 = rdtsc_ordered();
    let mut n: u64 = 0;
    while !TOGGLER_DONE.load(Ordering::Acquire) {
        w.mmio.write_u64((n % words) * 8, PATTERN_STRESS | n);
        n += 1;
        WRITES.store(n, Ordering::Release);
    }
    let t1 = rdtsc_ordered();
    STRESS_BARRIER.wait(2);
    let toggled = TOGGLES_DONE.load(Ordering::Relaxed);
    let t2 = rdtsc_ordered();

    let state = port::inl(w.port);
    if state != 0 {
        println!("stress: control port reads {state} after the toggling ended with alias off");
        return BAD_CONTROL;
    }
    for i in 0..words {
        // The last write that went to word i.
        let last = n - 1 - ((n - 1 - i) % words);
        if let Err(status) = w.expect("stress", i, PATTERN_STRESS | last) {
            return status;
        }
    }
    let t3 = rdtsc_ordered();
    println!(
        "stress write_cyc={} wait_cyc={} verify_cyc={}",
        t1 - t0,
        t2 - t1,
        t3 - t2
    );
    println!("stress ok words={words} toggles={toggled} writes={n}");
    0
}

fn exits(boot: &BootInfo, w: &Window) -> Result<(), i32> {
    let count = arg_u64("count", 20000);
    if count == 0 {
        println!("exits: count must be > 0");
        return Err(BAD_ARG);
    }
    let Some(null) = boot.find_device(DeviceKind::NullMmio) else {
        println!("exits: no null MMIO device");
        return Err(NO_DEVICE);
    };
    let null = null.mmio();
    w.set_alias(false)?;

    // Stores cycle over the first 64 words (or hit word 0 of a range smaller than that).
    let offset_mask = |m: &Mmio| if m.size() >= 64 * 8 { 63 } else { 0 };
    let (wmask, nmask) = (offset_mask(&w.mmio), offset_mask(&null));
    if w.mmio.size() < 8 || null.size() < 8 {
        println!("exits: ranges smaller than 8 bytes");
        return Err(BAD_ARG);
    }

    // Warm up each path (page walks, KVM's MMIO caches) before timing it.
    for i in 0..64 {
        w.mmio.write_u64((i & wmask) * 8, i);
        null.write_u64((i & nmask) * 8, i);
        port::outl(port::NULL, i as u32);
    }

    let t0 = rdtsc_ordered();
    for i in 0..count {
        w.mmio.write_u64((i & wmask) * 8, i);
    }
    let t1 = rdtsc_ordered();
    for i in 0..count {
        null.write_u64((i & nmask) * 8, i);
    }
    let t2 = rdtsc_ordered();
    for i in 0..count {
        port::outl(port::NULL, i as u32);
    }
    let t3 = rdtsc_ordered();

    let (window, null_mmio, null_pio) = (t1 - t0, t2 - t1, t3 - t2);
    let tsc_khz = boot.tsc_khz();
    println!(
        "exits window_cyc={} null_mmio_cyc={} null_pio_cyc={} tsc_khz={tsc_khz} count={count} window_vs_null_mmio={} window_vs_null_pio={}",
        window / count,
        null_mmio / count,
        null_pio / count,
        Ratio(window, null_mmio),
        Ratio(window, null_pio)
    );
    Ok(())
}

/// `a / b` with three decimals, rounded, in integer arithmetic.
struct Ratio(u64, u64);

impl core::fmt::Display for Ratio {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (a, b) = (u128::from(self.0), u128::from(self.1));
        if b == 0 {
            return f.write_str("inf");
        }
        let milli = (a * 1000 + b / 2) / b;
        write!(f, "{}.{:03}", milli / 1000, milli % 1000)
    }
}
