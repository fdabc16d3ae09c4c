//! `mode=stress`: decoder churn, direct-mapping switches and device resets under a running
//! stream of stores (vCPUs 0 and 1; vCPUs 2 and up park).
//!
//! vCPU 0 commits region A (the first device below a 1-way window's host bridge, alone, at the
//! window base) and streams u64 writes round-robin over its first `words` words. Meanwhile
//! vCPU 1 loops: commit region B (the second device, alone, right after A), one word written
//! and read back, uncommit B; every 10th iteration the direct-mapping control port goes off and
//! on again (A moves RAM → MMIO → RAM under the stream); every 100th the second device is reset
//! by a secondary bus reset of its root port and restored (BARs, Command, HDM Decoder Enable,
//! Mem_Enable). vCPU 1 stops after `iters` iterations once vCPU 0 wrote at least `words` words;
//! vCPU 0 stops at once, and then checks that every word of A holds its last write.
//!
//! Under a passthrough host bridge (no HDM decoders, one device) there is no region B: vCPU 1
//! only toggles.

use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use cxlvm_guest::cxl::{
    self, ComponentRegs, DecoderSetup, DeviceDvsec, Hdm, RegisterBlocks, delay_ns, set_direct,
};
use cxlvm_guest::mmio::Mmio;
use cxlvm_guest::pci::{Function, bridge_control, command, reg};
use cxlvm_guest::sync::{Barrier, SpinLock};
use cxlvm_guest::{BootInfo, arg_u64, println};

use crate::topology::Topology;
use crate::{BAD_ARG, BAD_REGISTERS, COMMIT, DIRECT, MISMATCH, NO_DEVICE};

/// What vCPU 0 writes to A (ORed with the write number).
const TAG_A: u64 = 0x57E5_0000_0000_0000;
/// What vCPU 1 writes to B (ORed with the iteration number).
const TAG_B: u64 = 0x57E5_B000_0000_0000;
/// Endpoint decoder of each device (A on the first device, B on the second).
const EP_DECODER: u32 = 0;
/// Host bridge decoder of A.
const HB_DECODER_A: u32 = 0;
/// Host bridge decoder of B.
const HB_DECODER_B: u32 = 1;
/// Iterations between direct-mapping toggles.
const TOGGLE_EVERY: u64 = 10;
/// Iterations between resets of the second device.
const RESET_EVERY: u64 = 100;
/// BAR dwords of a type 0 header.
const BARS: usize = 6;
/// Polls (1 ms apart) for the device to answer after the reset.
const RESET_POLLS: u32 = 1000;

/// Region B and what vCPU 1 needs to churn and reset its device.
#[derive(Clone, Copy, Debug)]
struct RegionB {
    mem: Mmio,
    ig_enc: u8,
    hb_uid: u32,
    hb: Hdm,
    /// Device index (`mem<i>`).
    index: u8,
    /// Port number of its root port.
    port: u8,
    dev: Function,
    root_port: Function,
    /// Endpoint decoders (found again after every reset).
    ep: Hdm,
    /// What a reset clears and the restore writes back.
    vendor: u16,
    bars: [u32; BARS],
    command: u16,
    blocks: RegisterBlocks,
}

/// What vCPU 0 hands vCPU 1.
#[derive(Clone, Copy, Debug)]
struct Setup {
    words: u64,
    iters: u64,
    b: Option<RegionB>,
}

static BARRIER: Barrier = Barrier::new();
static SETUP: SpinLock<Option<Setup>> = SpinLock::new(None);
/// Writes vCPU 0 completed so far.
static WRITES: AtomicU64 = AtomicU64::new(0);
/// Set by vCPU 1 when it stopped (counters and status below are final then).
static WORKER_DONE: AtomicBool = AtomicBool::new(false);
/// vCPU 1's result: 0, or the exit status of its failure.
static WORKER_STATUS: AtomicI32 = AtomicI32::new(0);
static ITERS: AtomicU64 = AtomicU64::new(0);
static TOGGLES: AtomicU64 = AtomicU64::new(0);
static RESETS: AtomicU64 = AtomicU64::new(0);

pub fn run(boot: &BootInfo, vcpu: u32) -> Result<(), i32> {
    match vcpu {
        0 => main_vcpu(boot),
        1 => {
            worker();
            Ok(())
        }
        _ => Ok(()),
    }
}

fn main_vcpu(boot: &BootInfo) -> Result<(), i32> {
    if boot.vcpu_count() < 2 {
        println!("stress: needs at least 2 vCPUs, have {}", boot.vcpu_count());
        return Err(BAD_ARG);
    }
    // On failure vCPU 1 waits at the barrier until the exit ends the run.
    let (a, setup) = prepare(boot)?;
    *SETUP.lock() = Some(setup);
    cxl::reset_window_exits();
    BARRIER.wait(2);

    // Write `n` goes to word `n % words` with value `TAG_A | n`, for as long as vCPU 1 works.
    let words = setup.words;
    let mut n: u64 = 0;
    let mut word: u64 = 0;
    while !WORKER_DONE.load(Ordering::Acquire) {
        a.write_u64(word * 8, TAG_A | n);
        n += 1;
        word += 1;
        if word == words {
            word = 0;
        }
        WRITES.store(n, Ordering::Release);
    }
    BARRIER.wait(2);
    let exits = cxl::window_exits();
    let status = WORKER_STATUS.load(Ordering::Acquire);
    if status != 0 {
        return Err(status);
    }
    if n < words {
        println!("stress fail writes={n} fewer than words={words}");
        return Err(MISMATCH);
    }
    for i in 0..words {
        // The last write that went to word i.
        let last = n - 1 - ((n - 1 - i) % words);
        let expected = TAG_A | last;
        let got = a.read_u64(i * 8);
        if got != expected {
            println!(
                "stress mismatch word={i} addr={:#x} expected={expected:#x} got={got:#x} writes={n}",
                a.base() + i * 8
            );
            return Err(MISMATCH);
        }
    }
    let state = cxl::direct_state();
    if state != 1 {
        println!("stress fail control={state:#x} expected=1");
        return Err(DIRECT);
    }
    // Informational: window accesses served on the MMIO path during the run (A's writes that
    // met a toggle, B's all-ones reads after each uncommit).
    println!("stress window-exits={exits}");
    println!(
        "stress ok words={words} writes={n} iters={} resets={} toggles={}",
        ITERS.load(Ordering::Relaxed),
        RESETS.load(Ordering::Relaxed),
        TOGGLES.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Finds the window, host bridge and devices, checks the arguments, enables the devices and
/// commits region A. Returns A and what vCPU 1 needs.
fn prepare(boot: &BootInfo) -> Result<(Mmio, Setup), i32> {
    let topo = Topology::discover(boot)?;
    let window_index = arg_u64("window", 0);
    let size = arg_u64("size", cxl::UNIT);
    let words = arg_u64("words", 65536);
    let iters = arg_u64("iters", 1000);

    let Some(window) = usize::try_from(window_index)
        .ok()
        .and_then(|i| topo.windows.get(i))
        .copied()
    else {
        println!(
            "cxl: no window {window_index} (the boot info has {})",
            topo.windows.len()
        );
        return Err(NO_DEVICE);
    };
    if window.ways != 1 || window.targets().len() != 1 {
        println!(
            "cxl: stress needs a 1-way window; window {window_index} has {} targets, ways={}",
            window.targets().len(),
            window.ways
        );
        return Err(BAD_ARG);
    }
    let Some(ig_enc) = cxl::gran_to_enc(window.gran) else {
        println!(
            "cxl: window {window_index} has a bad granularity encoding {}",
            window.flags.gran_enc
        );
        return Err(BAD_REGISTERS);
    };
    let uid = window.targets()[0];
    let Some(hb_index) = topo.hbs.iter().position(|hb| hb.entry.uid == uid) else {
        println!("cxl: window {window_index} target uid={uid} has no host bridge entry");
        return Err(NO_DEVICE);
    };
    let hb = &topo.hbs[hb_index];
    let passthrough = hb.hdm.is_none();
    let regions: u64 = if passthrough { 1 } else { 2 };
    // The devices below the host bridge, in device order: A on the first, B on the second.
    let mut below = [0u8; 2];
    let mut found = 0;
    for (i, t) in topo.type3s.iter().enumerate() {
        if t.hb == hb_index {
            if found < below.len() {
                below[found] = i as u8;
            }
            found += 1;
        }
    }
    if (found as u64) < regions {
        println!(
            "cxl: stress: host bridge uid={uid} has {found} Type-3 devices below it, needs {regions}"
        );
        return Err(NO_DEVICE);
    }
    if size == 0 || !size.is_multiple_of(cxl::UNIT) {
        println!("cxl: stress: size {size:#x} must be a non-zero multiple of 256 MiB");
        return Err(BAD_ARG);
    }
    if size.saturating_mul(regions) > window.size {
        println!(
            "cxl: stress: window {window_index} ({:#x} bytes) cannot hold {regions} regions of {size:#x}",
            window.size
        );
        return Err(BAD_ARG);
    }
    if words == 0 || words.saturating_mul(8) > size {
        println!("cxl: stress: words={words} must be 1 to size / 8");
        return Err(BAD_ARG);
    }

    let base = window.base;
    let (a_index, b_index) = (below[0], below[1]);
    if passthrough {
        println!(
            "stress: window={window_index} hb={uid} a=mem{a_index} b=none base={base:#x} size={size:#x} words={words} iters={iters}"
        );
        println!("stress: hb uid={uid} passthrough: no region B, no resets (toggles only)");
    } else {
        println!(
            "stress: window={window_index} hb={uid} a=mem{a_index} b=mem{b_index} base={base:#x} size={size:#x} words={words} iters={iters}"
        );
    }
    let used = if passthrough {
        &below[..1]
    } else {
        &below[..2]
    };
    for &d in used {
        enable_device(&topo, d, size)?;
    }
    if let Some(h) = hb.hdm {
        if h.decoder_count() <= HB_DECODER_B {
            println!(
                "cxl: stress: host bridge uid={uid} has {} HDM decoders, needs 2",
                h.decoder_count()
            );
            return Err(BAD_ARG);
        }
        for n in [HB_DECODER_A, HB_DECODER_B] {
            if h.decoder(n).committed() {
                println!("stress fail hb {uid} decoder {n} already-committed");
                return Err(COMMIT);
            }
        }
    }
    let state = set_direct(true);
    if state != 1 {
        println!("stress fail control={state:#x} expected=1");
        return Err(DIRECT);
    }

    let map = |at: u64| {
        boot.device_mmio(at, size).ok_or_else(|| {
            println!("cxl: region {at:#x}+{size:#x} is not in a listed range");
            BAD_REGISTERS
        })
    };
    let a = map(base)?;
    let b = if passthrough {
        None
    } else {
        let t = &topo.type3s[usize::from(b_index)];
        let Some(rp) = hb.ports.iter().find(|rp| rp.port == t.port) else {
            println!(
                "cxl: stress: no root port {} on host bridge uid={uid} above mem{b_index}",
                t.port
            );
            return Err(NO_DEVICE);
        };
        if rp.secondary != t.bdf.bus {
            println!(
                "cxl: stress: root port {} secondary={:02x} but mem{b_index} is at {}",
                rp.bdf, rp.secondary, t.bdf
            );
            return Err(BAD_REGISTERS);
        }
        let dev = topo.function(t.bdf);
        let mut bars = [0u32; BARS];
        for (i, bar) in (0u16..).zip(bars.iter_mut()) {
            *bar = dev.read32(reg::BAR0 + 4 * i);
        }
        let (Some(ep), Some(hb_hdm)) = (t.hdm, hb.hdm) else {
            return Err(BAD_REGISTERS);
        };
        Some(RegionB {
            mem: map(base + size)?,
            ig_enc,
            hb_uid: uid,
            hb: hb_hdm,
            index: b_index,
            port: t.port,
            dev,
            root_port: topo.function(rp.bdf),
            ep,
            vendor: dev.vendor_id(),
            bars,
            command: dev.command(),
            blocks: t.blocks,
        })
    };

    // Region A, endpoint first, then the host bridge (Linux's order).
    let t = &topo.type3s[usize::from(a_index)];
    let ep = t.hdm.ok_or(BAD_REGISTERS)?;
    let setup = DecoderSetup {
        base,
        size,
        iw_enc: 0,
        ig_enc,
        target: 0,
    };
    if let Err(e) = ep.commit(EP_DECODER, &setup) {
        println!("stress fail mem{a_index} decoder {EP_DECODER} {e}");
        return Err(COMMIT);
    }
    match hb.hdm {
        Some(h) => {
            let setup = DecoderSetup {
                target: cxl::pack_target_list(&[t.port]),
                ..setup
            };
            if let Err(e) = h.commit(HB_DECODER_A, &setup) {
                println!("stress fail hb {uid} decoder {HB_DECODER_A} {e}");
                return Err(COMMIT);
            }
            println!(
                "stress region a mem{a_index} base={base:#x} size={size:#x} ep-decoder={EP_DECODER} hb-decoder={HB_DECODER_A} committed"
            );
        }
        None => println!(
            "stress region a mem{a_index} base={base:#x} size={size:#x} ep-decoder={EP_DECODER} hb-decoder=none committed"
        ),
    }
    Ok((a, Setup { words, iters, b }))
}

/// Checks a device can hold a region of `size` from its endpoint decoder [`EP_DECODER`], then
/// sets HDM Decoder Enable and Mem_Enable.
fn enable_device(topo: &Topology, d: u8, size: u64) -> Result<(), i32> {
    let t = &topo.type3s[usize::from(d)];
    let (Some(hdm), Some(dvsec)) = (t.hdm, t.dvsec) else {
        println!(
            "stress fail mem{d} {}",
            if t.hdm.is_none() {
                "no-hdm-decoders"
            } else {
                "no-device-dvsec"
            }
        );
        return Err(BAD_REGISTERS);
    };
    let capacity = dvsec.range_size(0);
    if capacity < size {
        println!("cxl: stress: mem{d} holds {capacity:#x} bytes, less than size={size:#x}");
        return Err(BAD_ARG);
    }
    if hdm.decoder(EP_DECODER).committed() {
        println!("stress fail mem{d} decoder {EP_DECODER} already-committed");
        return Err(COMMIT);
    }
    enable(d, hdm, dvsec)
}

/// HDM Decoder Enable, then Mem_Enable, each read back.
fn enable(d: u8, hdm: Hdm, dvsec: DeviceDvsec) -> Result<(), i32> {
    if !hdm.enable() {
        println!(
            "stress fail mem{d} hdm-enable global_control={:#x}",
            hdm.global_control()
        );
        return Err(BAD_REGISTERS);
    }
    if !dvsec.enable_mem() {
        println!(
            "stress fail mem{d} mem-enable control={:#x}",
            dvsec.control()
        );
        return Err(BAD_REGISTERS);
    }
    Ok(())
}

/// vCPU 1: waits for A, churns, publishes its counters and status, and meets vCPU 0 again.
fn worker() {
    BARRIER.wait(2);
    let setup = *SETUP.lock();
    let status = match setup {
        Some(s) => churn(&s).err().unwrap_or(0),
        None => BAD_ARG,
    };
    WORKER_STATUS.store(status, Ordering::Release);
    WORKER_DONE.store(true, Ordering::Release);
    BARRIER.wait(2);
}

/// The loop of vCPU 1: at least `iters` iterations, and on until vCPU 0 wrote `words` words.
fn churn(s: &Setup) -> Result<(), i32> {
    let mut b = s.b;
    let mut k: u64 = 0;
    while k < s.iters || WRITES.load(Ordering::Acquire) < s.words {
        if let Some(b) = b.as_ref() {
            cycle_b(b, k)?;
        }
        k += 1;
        ITERS.store(k, Ordering::Relaxed);
        if k.is_multiple_of(TOGGLE_EVERY) {
            toggle()?;
            TOGGLES.fetch_add(1, Ordering::Relaxed);
        }
        if k.is_multiple_of(RESET_EVERY)
            && let Some(b) = b.as_mut()
        {
            reset_device(b, k)?;
            RESETS.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Iteration `k` of region B: commit (endpoint, then host bridge), one word written and read
/// back, uncommit (host bridge, then endpoint), and the word must read all-ones again.
fn cycle_b(b: &RegionB, k: u64) -> Result<(), i32> {
    let setup = DecoderSetup {
        base: b.mem.base(),
        size: b.mem.size(),
        iw_enc: 0,
        ig_enc: b.ig_enc,
        target: 0,
    };
    if let Err(e) = b.ep.commit(EP_DECODER, &setup) {
        println!(
            "stress fail mem{} decoder {EP_DECODER} {e} iter={k}",
            b.index
        );
        return Err(COMMIT);
    }
    let hb_setup = DecoderSetup {
        target: cxl::pack_target_list(&[b.port]),
        ..setup
    };
    if let Err(e) = b.hb.commit(HB_DECODER_B, &hb_setup) {
        println!(
            "stress fail hb {} decoder {HB_DECODER_B} {e} iter={k}",
            b.hb_uid
        );
        return Err(COMMIT);
    }
    // A different word each time (4104 and the size are multiples of 8).
    let off = k.wrapping_mul(4104) % b.mem.size();
    let addr = b.mem.base() + off;
    let value = TAG_B | k;
    b.mem.write_u64(off, value);
    let got = b.mem.read_u64(off);
    if got != value {
        println!("stress fail b iter={k} addr={addr:#x} expected={value:#x} got={got:#x}");
        return Err(MISMATCH);
    }
    if !b.hb.uncommit(HB_DECODER_B) {
        println!(
            "stress fail hb {} decoder {HB_DECODER_B} still-committed iter={k}",
            b.hb_uid
        );
        return Err(COMMIT);
    }
    if !b.ep.uncommit(EP_DECODER) {
        println!(
            "stress fail mem{} decoder {EP_DECODER} still-committed iter={k}",
            b.index
        );
        return Err(COMMIT);
    }
    let got = b.mem.read_u64(off);
    if got != u64::MAX {
        println!("stress fail b-uncommitted iter={k} addr={addr:#x} got={got:#x}");
        return Err(MISMATCH);
    }
    Ok(())
}

/// Direct mappings off, then on again (A: RAM → MMIO → RAM under vCPU 0's stream).
fn toggle() -> Result<(), i32> {
    for on in [false, true] {
        let state = set_direct(on);
        if state != u32::from(on) {
            println!("stress fail control={state:#x} expected={}", u32::from(on));
            return Err(DIRECT);
        }
    }
    Ok(())
}

/// Secondary bus reset of B's root port, then what the reset cleared is restored: BARs,
/// Command (memory space enable), HDM Decoder Enable and Mem_Enable, with the register blocks
/// and DVSEC found again through ECAM. The device's decoders must come back uncommitted.
fn reset_device(b: &mut RegionB, k: u64) -> Result<(), i32> {
    let d = b.index;
    let fail = |what: core::fmt::Arguments<'_>, status: i32| {
        println!("stress fail reset mem{d} iter={k} {what}");
        Err(status)
    };
    let bc = b.root_port.read16(reg::BRIDGE_CONTROL);
    b.root_port.write16(
        reg::BRIDGE_CONTROL,
        bc | bridge_control::SECONDARY_BUS_RESET,
    );
    // PCIe holds reset at least 1 ms (Linux: 2 ms).
    delay_ns(2_000_000);
    b.root_port.write16(
        reg::BRIDGE_CONTROL,
        bc & !bridge_control::SECONDARY_BUS_RESET,
    );
    let mut vendor = b.dev.vendor_id();
    for _ in 0..RESET_POLLS {
        if vendor == b.vendor {
            break;
        }
        delay_ns(1_000_000);
        vendor = b.dev.vendor_id();
    }
    if vendor != b.vendor {
        return fail(
            format_args!("vendor={vendor:04x} expected={:04x}", b.vendor),
            BAD_REGISTERS,
        );
    }

    // Memory decoding off while the BAR halves are written back, then on.
    let cmd = b.dev.command();
    b.dev.write16(reg::COMMAND, cmd & !command::MEMORY);
    for (i, &bar) in (0u16..).zip(b.bars.iter()) {
        b.dev.write32(reg::BAR0 + 4 * i, bar);
    }
    for (i, &bar) in (0u16..).zip(b.bars.iter()) {
        let got = b.dev.read32(reg::BAR0 + 4 * i);
        if got != bar {
            return fail(
                format_args!("bar{i}={got:#x} expected={bar:#x}"),
                BAD_REGISTERS,
            );
        }
    }
    b.dev.write16(reg::COMMAND, b.command | command::MEMORY);
    let cmd = b.dev.command();
    if cmd & command::MEMORY == 0 {
        return fail(format_args!("command={cmd:#x}"), BAD_REGISTERS);
    }

    let blocks = cxl::register_blocks(&b.dev);
    if blocks != Some(b.blocks) {
        let blocks = blocks.unwrap_or_default();
        return fail(
            format_args!(
                "register-blocks component={:#x} devregs={:#x}",
                blocks.component.unwrap_or(0),
                blocks.device.unwrap_or(0)
            ),
            BAD_REGISTERS,
        );
    }
    let Some(ep) = blocks
        .and_then(|bl| bl.component)
        .and_then(ComponentRegs::new)
        .and_then(|c| c.hdm())
    else {
        return fail(format_args!("no-hdm-decoders"), BAD_REGISTERS);
    };
    if ep.decoder(EP_DECODER).committed() {
        return fail(format_args!("decoder {EP_DECODER} still-committed"), COMMIT);
    }
    let Some(dvsec) = DeviceDvsec::find(&b.dev) else {
        return fail(format_args!("no-device-dvsec"), BAD_REGISTERS);
    };
    enable(d, ep, dvsec)?;
    b.ep = ep;
    Ok(())
}
