//! `mode=stress`: decoder churn, direct-mapping switches and device resets under running
//! streams of stores.
//!
//! Region A (the first `ways` devices below a 1-way window's host bridge, interleaved at `gran`,
//! at the window base) takes u64 writes round-robin over its first `words` words from one
//! streaming vCPU (vCPU 0), or two (vCPUs 0 and 2, each owning every other word) when the guest
//! has three or more vCPUs. Meanwhile vCPU 1 loops: commit region B (the next `ways` devices,
//! right after A), one word written and read back, uncommit B; with `regrid=1` B's granularity
//! changes every iteration (256 B, 1 KiB, 4 KiB, 16 KiB) and the word of the previous iteration
//! must be found at the HPA the new geometry gives its device and DPA (the bytes moved with the
//! geometry). Every 10th iteration the direct-mapping control port goes off and on again (A
//! moves RAM → MMIO → RAM under the streams); every 100th B's first device is reset by a
//! secondary bus reset of its root port and restored (BARs, Command, HDM Decoder Enable,
//! Mem_Enable). vCPU 1 stops after `iters` iterations once every streamer wrote each of its
//! words; the streamers stop at once, and then vCPU 0 checks that every word of A holds its last
//! write.
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

/// What a streamer writes to A (ORed with its number shifted by [`STREAMER_SHIFT`] and the
/// write number).
const TAG_A: u64 = 0x57E5_0000_0000_0000;
/// Where the streamer number goes in A's values.
const STREAMER_SHIFT: u32 = 44;
/// Most streaming vCPUs (0 and 2).
const MAX_STREAMERS: usize = 2;
/// Most devices per region.
const MAX_WAYS: usize = 2;
/// B's granularities with `regrid=1`, in turn.
const REGRID: [u64; 4] = [256, 1024, 4096, 16384];
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

/// One device of region B: what commits it and what its reset clears.
#[derive(Clone, Copy, Debug)]
struct Member {
    /// Device index (`mem<i>`).
    index: u8,
    /// Port number of its root port.
    port: u8,
    dev: Function,
    root_port: Function,
    /// Endpoint decoders (found again after every reset).
    ep: Hdm,
    vendor: u16,
    bars: [u32; BARS],
    command: u16,
    blocks: RegisterBlocks,
}

/// Region B and what vCPU 1 needs to churn and reset its devices.
#[derive(Clone, Copy, Debug)]
struct RegionB {
    mem: Mmio,
    ig_enc: u8,
    hb_uid: u32,
    hb: Hdm,
    members: [Option<Member>; MAX_WAYS],
    ways: usize,
    /// The granularity changes every iteration.
    regrid: bool,
}

impl RegionB {
    fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().flatten()
    }
}

/// What vCPU 0 hands the others.
#[derive(Clone, Copy, Debug)]
struct Setup {
    a: Mmio,
    words: u64,
    iters: u64,
    streamers: usize,
    b: Option<RegionB>,
}

static BARRIER: Barrier = Barrier::new();
static SETUP: SpinLock<Option<Setup>> = SpinLock::new(None);
/// Writes each streamer completed so far.
static WRITES: [AtomicU64; MAX_STREAMERS] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Set by vCPU 1 when it stopped (counters and status below are final then).
static WORKER_DONE: AtomicBool = AtomicBool::new(false);
/// vCPU 1's result: 0, or the exit status of its failure.
static WORKER_STATUS: AtomicI32 = AtomicI32::new(0);
static ITERS: AtomicU64 = AtomicU64::new(0);
static TOGGLES: AtomicU64 = AtomicU64::new(0);
static RESETS: AtomicU64 = AtomicU64::new(0);
/// Words of B found at their new HPA after a change of geometry.
static MOVED: AtomicU64 = AtomicU64::new(0);

pub fn run(boot: &BootInfo, vcpu: u32) -> Result<(), i32> {
    match vcpu {
        0 => main_vcpu(boot),
        1 => {
            worker(boot);
            Ok(())
        }
        2 if streamers(boot) == 2 => {
            second_streamer(boot);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Streaming vCPUs: 0, and 2 when there is one.
fn streamers(boot: &BootInfo) -> usize {
    if boot.vcpu_count() >= 3 { 2 } else { 1 }
}

/// vCPUs meeting at the barrier: the streamers and vCPU 1.
fn parties(boot: &BootInfo) -> u32 {
    1 + streamers(boot) as u32
}

/// Words of A owned by streamer `s` of `n`: every `n`-th from `s`.
fn owned(words: u64, s: usize, n: usize) -> u64 {
    (words + (n - 1 - s) as u64) / n as u64
}

/// Streams writes to A's words owned by streamer `s` until vCPU 1 is done: the `n`-th write goes
/// to its word `n % owned` with value `TAG_A | s << STREAMER_SHIFT | n`. Returns the writes.
fn stream(setup: &Setup, s: usize) -> u64 {
    let mine = owned(setup.words, s, setup.streamers);
    let tag = TAG_A | (s as u64) << STREAMER_SHIFT;
    let mut n: u64 = 0;
    let mut j: u64 = 0;
    while !WORKER_DONE.load(Ordering::Acquire) {
        let word = s as u64 + j * setup.streamers as u64;
        setup.a.write_u64(word * 8, tag | n);
        n += 1;
        j += 1;
        if j == mine {
            j = 0;
        }
        WRITES[s].store(n, Ordering::Release);
    }
    n
}

/// vCPU 2: the second streamer.
fn second_streamer(boot: &BootInfo) {
    let parties = parties(boot);
    BARRIER.wait(parties);
    let setup = *SETUP.lock();
    if let Some(setup) = setup {
        stream(&setup, 1);
    }
    BARRIER.wait(parties);
}

fn main_vcpu(boot: &BootInfo) -> Result<(), i32> {
    if boot.vcpu_count() < 2 {
        println!("stress: needs at least 2 vCPUs, have {}", boot.vcpu_count());
        return Err(BAD_ARG);
    }
    let parties = parties(boot);
    // On failure the others wait at the barrier until the exit ends the run.
    let setup = prepare(boot, streamers(boot))?;
    *SETUP.lock() = Some(setup);
    cxl::reset_window_exits();
    BARRIER.wait(parties);
    stream(&setup, 0);
    BARRIER.wait(parties);
    let exits = cxl::window_exits();
    let status = WORKER_STATUS.load(Ordering::Acquire);
    if status != 0 {
        return Err(status);
    }
    let a = setup.a;
    let mut total = 0;
    for (s, writes) in WRITES.iter().enumerate().take(setup.streamers) {
        let n = writes.load(Ordering::Acquire);
        let mine = owned(setup.words, s, setup.streamers);
        total += n;
        if n < mine {
            println!("stress fail streamer={s} writes={n} fewer than its words={mine}");
            return Err(MISMATCH);
        }
        for j in 0..mine {
            let i = s as u64 + j * setup.streamers as u64;
            // The last write that went to its j-th word.
            let last = n - 1 - ((n - 1 - j) % mine);
            let expected = TAG_A | (s as u64) << STREAMER_SHIFT | last;
            let got = a.read_u64(i * 8);
            if got != expected {
                println!(
                    "stress mismatch word={i} addr={:#x} expected={expected:#x} got={got:#x} streamer={s} writes={n}",
                    a.base() + i * 8
                );
                return Err(MISMATCH);
            }
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
        "stress ok words={} writes={total} streamers={} iters={} resets={} toggles={} moved-checks={}",
        setup.words,
        setup.streamers,
        ITERS.load(Ordering::Relaxed),
        RESETS.load(Ordering::Relaxed),
        TOGGLES.load(Ordering::Relaxed),
        MOVED.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Finds the window, host bridge and devices, checks the arguments, enables the devices and
/// commits region A. Returns what every vCPU needs.
fn prepare(boot: &BootInfo, streamers: usize) -> Result<Setup, i32> {
    let topo = Topology::discover(boot)?;
    let window_index = arg_u64("window", 0);
    let ways = arg_u64("ways", 1);
    let words = arg_u64("words", 65536);
    let iters = arg_u64("iters", 1000);
    let regrid = arg_u64("regrid", 0) == 1;
    if ways == 0 || ways > MAX_WAYS as u64 {
        println!("cxl: stress: ways={ways} must be 1 or 2");
        return Err(BAD_ARG);
    }
    let ways = ways as usize;
    let size = arg_u64("size", cxl::UNIT * ways as u64);

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
    let gran = arg_u64("gran", window.gran);
    let Some(ig_enc) = cxl::gran_to_enc(gran) else {
        println!("cxl: stress: granularity {gran} must be a power of 2 from 256 to 16384");
        return Err(BAD_ARG);
    };
    let uid = window.targets()[0];
    let Some(hb_index) = topo.hbs.iter().position(|hb| hb.entry.uid == uid) else {
        println!("cxl: window {window_index} target uid={uid} has no host bridge entry");
        return Err(NO_DEVICE);
    };
    let hb = &topo.hbs[hb_index];
    let passthrough = hb.hdm.is_none();
    if passthrough && ways != 1 {
        println!("cxl: stress: a passthrough host bridge holds one device, not ways={ways}");
        return Err(BAD_ARG);
    }
    let regions: u64 = if passthrough { 1 } else { 2 };
    // The devices below the host bridge, in device order: A on the first `ways`, B on the next.
    let mut below = [0u8; 2 * MAX_WAYS];
    let mut found = 0;
    for (i, t) in topo.type3s.iter().enumerate() {
        if t.hb == hb_index {
            if found < below.len() {
                below[found] = i as u8;
            }
            found += 1;
        }
    }
    let needed = regions as usize * ways;
    if found < needed {
        println!(
            "cxl: stress: host bridge uid={uid} has {found} Type-3 devices below it, needs {needed}"
        );
        return Err(NO_DEVICE);
    }
    if size == 0 || !size.is_multiple_of(cxl::UNIT * ways as u64) {
        println!("cxl: stress: size {size:#x} must be a non-zero multiple of {ways} x 256 MiB");
        return Err(BAD_ARG);
    }
    if size.saturating_mul(regions) > window.size {
        println!(
            "cxl: stress: window {window_index} ({:#x} bytes) cannot hold {regions} regions of {size:#x}",
            window.size
        );
        return Err(BAD_ARG);
    }
    if words < streamers as u64 || words.saturating_mul(8) > size {
        println!("cxl: stress: words={words} must be {streamers} to size / 8");
        return Err(BAD_ARG);
    }
    let Some(iw_enc) = cxl::ways_to_enc(ways as u32) else {
        return Err(BAD_ARG);
    };

    let base = window.base;
    let a_devs = &below[..ways];
    let b_devs = &below[ways..needed];
    println!(
        "stress: window={window_index} hb={uid} a=mem{a_devs:?} b=mem{b_devs:?} ways={ways} gran={gran} regrid={} base={base:#x} size={size:#x} words={words} streamers={streamers} iters={iters}",
        u8::from(regrid)
    );
    if passthrough {
        println!("stress: hb uid={uid} passthrough: no region B, no resets (toggles only)");
    }
    for &d in &below[..needed] {
        enable_device(&topo, d, size / ways as u64)?;
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
    let b = match hb.hdm {
        Some(hb_hdm) => {
            let mut members = [None; MAX_WAYS];
            for (slot, &d) in members.iter_mut().zip(b_devs) {
                *slot = Some(member(&topo, hb, d)?);
            }
            Some(RegionB {
                mem: map(base + size)?,
                ig_enc,
                hb_uid: uid,
                hb: hb_hdm,
                members,
                ways,
                regrid,
            })
        }
        None => None,
    };

    // Region A, endpoints first, then the host bridge (Linux's order).
    let setup = DecoderSetup {
        base,
        size,
        iw_enc,
        ig_enc,
        target: 0,
    };
    let mut ports = [0u8; MAX_WAYS];
    for (port, &d) in ports.iter_mut().zip(a_devs) {
        let t = &topo.type3s[usize::from(d)];
        let ep = t.hdm.ok_or(BAD_REGISTERS)?;
        if let Err(e) = ep.commit(EP_DECODER, &setup) {
            println!("stress fail mem{d} decoder {EP_DECODER} {e}");
            return Err(COMMIT);
        }
        *port = t.port;
    }
    if let Some(h) = hb.hdm {
        let setup = DecoderSetup {
            target: cxl::pack_target_list(&ports[..ways]),
            ..setup
        };
        if let Err(e) = h.commit(HB_DECODER_A, &setup) {
            println!("stress fail hb {uid} decoder {HB_DECODER_A} {e}");
            return Err(COMMIT);
        }
    }
    println!(
        "stress region a mem{a_devs:?} base={base:#x} size={size:#x} ways={ways} gran={gran} committed"
    );
    Ok(Setup {
        a,
        words,
        iters,
        streamers,
        b,
    })
}

/// What B's churn and resets need of device `d` below host bridge `hb`.
fn member(topo: &Topology, hb: &crate::topology::HostBridge, d: u8) -> Result<Member, i32> {
    let t = &topo.type3s[usize::from(d)];
    let Some(rp) = hb.ports.iter().find(|rp| rp.port == t.port) else {
        println!(
            "cxl: stress: no root port {} on host bridge uid={} above mem{d}",
            t.port, hb.entry.uid
        );
        return Err(NO_DEVICE);
    };
    if rp.secondary != t.bdf.bus {
        println!(
            "cxl: stress: root port {} secondary={:02x} but mem{d} is at {}",
            rp.bdf, rp.secondary, t.bdf
        );
        return Err(BAD_REGISTERS);
    }
    let dev = topo.function(t.bdf);
    let mut bars = [0u32; BARS];
    for (i, bar) in (0u16..).zip(bars.iter_mut()) {
        *bar = dev.read32(reg::BAR0 + 4 * i);
    }
    let ep = t.hdm.ok_or(BAD_REGISTERS)?;
    Ok(Member {
        index: d,
        port: t.port,
        dev,
        root_port: topo.function(rp.bdf),
        ep,
        vendor: dev.vendor_id(),
        bars,
        command: dev.command(),
        blocks: t.blocks,
    })
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

/// vCPU 1: waits for A, churns, publishes its counters and status, and meets the others again.
fn worker(boot: &BootInfo) {
    let parties = parties(boot);
    BARRIER.wait(parties);
    let setup = *SETUP.lock();
    let status = match setup {
        Some(s) => churn(&s).err().unwrap_or(0),
        None => BAD_ARG,
    };
    WORKER_STATUS.store(status, Ordering::Release);
    WORKER_DONE.store(true, Ordering::Release);
    BARRIER.wait(parties);
}

/// Whether every streamer wrote each of its words at least once.
fn streams_covered(s: &Setup) -> bool {
    (0..s.streamers).all(|i| WRITES[i].load(Ordering::Acquire) >= owned(s.words, i, s.streamers))
}

/// The loop of vCPU 1: at least `iters` iterations, and on until the streams covered A.
fn churn(s: &Setup) -> Result<(), i32> {
    let mut b = s.b;
    let mut k: u64 = 0;
    // The word B's last iteration wrote: (position, DPA, value).
    let mut last: Option<(u64, u64, u64)> = None;
    while k < s.iters || !streams_covered(s) {
        if let Some(b) = b.as_ref() {
            last = Some(cycle_b(b, k, last)?);
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
            // What a reset leaves in volatile memory is not checked.
            last = None;
        }
    }
    Ok(())
}

/// Iteration `k` of region B: commit (endpoints, then host bridge) at this iteration's
/// granularity; the previous iteration's word must be at the HPA this geometry gives its
/// position and DPA; one word written and read back; uncommit (host bridge, then endpoints), and
/// the word must read all-ones again. Returns (position, DPA, value) of the word written.
fn cycle_b(b: &RegionB, k: u64, last: Option<(u64, u64, u64)>) -> Result<(u64, u64, u64), i32> {
    let ig_enc = if b.regrid {
        cxl::gran_to_enc(REGRID[(k % REGRID.len() as u64) as usize]).ok_or(BAD_ARG)?
    } else {
        b.ig_enc
    };
    let gran = 256u64 << ig_enc;
    let ways = b.ways as u64;
    let iw_enc = cxl::ways_to_enc(b.ways as u32).ok_or(BAD_ARG)?;
    let setup = DecoderSetup {
        base: b.mem.base(),
        size: b.mem.size(),
        iw_enc,
        ig_enc,
        target: 0,
    };
    let mut ports = [0u8; MAX_WAYS];
    for (port, m) in ports.iter_mut().zip(b.members()) {
        if let Err(e) = m.ep.commit(EP_DECODER, &setup) {
            println!(
                "stress fail mem{} decoder {EP_DECODER} {e} iter={k}",
                m.index
            );
            return Err(COMMIT);
        }
        *port = m.port;
    }
    let hb_setup = DecoderSetup {
        target: cxl::pack_target_list(&ports[..b.ways]),
        ..setup
    };
    if let Err(e) = b.hb.commit(HB_DECODER_B, &hb_setup) {
        println!(
            "stress fail hb {} decoder {HB_DECODER_B} {e} iter={k}",
            b.hb_uid
        );
        return Err(COMMIT);
    }
    if let Some((pos, dpa, value)) = last {
        let off = (dpa / gran * ways + pos) * gran + dpa % gran;
        let got = b.mem.read_u64(off);
        if got != value {
            println!(
                "stress fail b-moved iter={k} gran={gran} addr={:#x} position={pos} dpa={dpa:#x} expected={value:#x} got={got:#x}",
                b.mem.base() + off
            );
            return Err(MISMATCH);
        }
        MOVED.fetch_add(1, Ordering::Relaxed);
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
    for m in b.members() {
        if !m.ep.uncommit(EP_DECODER) {
            println!(
                "stress fail mem{} decoder {EP_DECODER} still-committed iter={k}",
                m.index
            );
            return Err(COMMIT);
        }
    }
    let got = b.mem.read_u64(off);
    if got != u64::MAX {
        println!("stress fail b-uncommitted iter={k} addr={addr:#x} got={got:#x}");
        return Err(MISMATCH);
    }
    let chunk = off / gran;
    Ok((chunk % ways, chunk / ways * gran + off % gran, value))
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

/// Secondary bus reset of the root port of B's first device, then what the reset cleared is
/// restored: BARs, Command (memory space enable), HDM Decoder Enable and Mem_Enable, with the
/// register blocks and DVSEC found again through ECAM. The device's decoders must come back
/// uncommitted.
fn reset_device(region: &mut RegionB, k: u64) -> Result<(), i32> {
    let Some(b) = region.members[0].as_mut() else {
        return Ok(());
    };
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
