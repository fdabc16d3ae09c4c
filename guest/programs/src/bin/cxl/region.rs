//! `mode=region`: programs an interleaved region the way Linux commits one (HDM decoder
//! enable, DVSEC Mem_Enable, endpoint decoders, then host bridge decoders), and optionally
//! checks that nothing decodes before the commit, that data round-trips after it (`verify`;
//! `direct` on both the MMIO path and the direct mapping, see the `direct` module), and that
//! nothing decodes again after a reset.

use core::fmt;

use cxlvm_guest::cxl::{self, DecoderSetup, Hdm, MAX_WAYS, PlanDevice, RegionPlan, WindowEntry};
use cxlvm_guest::fixed::FixedVec;
use cxlvm_guest::mmio::Mmio;
use cxlvm_guest::{BootInfo, arg, arg_u64, println};

use crate::topology::{MAX_TYPE3, Topology};
use crate::{BAD_ARG, BAD_REGISTERS, COMMIT, Csv, MISMATCH, NO_DEVICE, flag};

/// Words the precheck reads and writes.
const PRECHECK_WORDS: u64 = 64;
/// What the precheck writes (nothing must keep it).
const PRECHECK_PATTERN: u64 = 0x9e3c_0000_0000_0000;

/// Who owns a decoder, for messages: `hb <uid>` or `mem<index>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Owner {
    #[default]
    None,
    Hb(u32),
    Mem(u8),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("-"),
            Self::Hb(uid) => write!(f, "hb {uid}"),
            Self::Mem(i) => write!(f, "mem{i}"),
        }
    }
}

/// A decoder this run committed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Committed {
    pub owner: Owner,
    pub hdm: Option<Hdm>,
    pub decoder: u32,
}

/// Decoders committed so far, bottom-up (endpoints, then host bridges): the last one is the
/// decoder whose commit completed the region.
pub type CommitLog = FixedVec<Committed, { 2 * MAX_WAYS }>;

/// The region's arguments, checked.
pub struct Request {
    window: WindowEntry,
    window_index: u64,
    offset: u64,
    size: u64,
    gran: u64,
    hb_gran: Option<u64>,
    plan: RegionPlan,
}

impl Request {
    /// HPA base of the region.
    pub fn base(&self) -> u64 {
        self.window.base + self.offset
    }

    /// The window the region is in.
    pub fn window(&self) -> &WindowEntry {
        &self.window
    }

    /// Index of that window among the kind 6 entries.
    pub fn window_index(&self) -> u64 {
        self.window_index
    }
}

/// What another mode changes of the region defaults (the arguments still win).
#[derive(Clone, Copy, Debug, Default)]
pub struct Defaults {
    /// Without `devices=`: one device per host bridge of the window (the first `window ways`
    /// positions of the default order) instead of every device.
    pub one_per_host_bridge: bool,
    /// Without `size=`: 256 MiB per device instead of the rest of the window.
    pub unit_per_device: bool,
}

/// Reads the region arguments (`window=`, `offset=`, `size=`, `gran=`, `devices=`), checks them
/// against the topology and the hardware, and returns the request and the region's range.
pub fn plan(boot: &BootInfo, topo: &Topology, defaults: Defaults) -> Result<(Request, Mmio), i32> {
    let req = parse(topo, defaults)?;
    check_hardware(topo, &req)?;
    let Some(mem) = boot.device_mmio(req.base(), req.size) else {
        println!(
            "cxl: region {:#x}+{:#x} is not in a listed range",
            req.base(),
            req.size
        );
        return Err(BAD_REGISTERS);
    };
    Ok((req, mem))
}

/// Commits the planned region the way Linux does (see [`commit_region`]) and prints the
/// `region ... committed` line; on failure resets what was committed. Returns the decoders
/// committed, bottom-up.
pub fn commit(topo: &Topology, req: &Request) -> Result<CommitLog, i32> {
    let mut log = CommitLog::new();
    if let Err(status) = commit_region(topo, req, &mut log) {
        // Linux resets whatever it committed for the region when a commit fails.
        reset(&log, false);
        return Err(status);
    }
    println!(
        "region base={:#x} size={:#x} ways={} gran={} devices={} committed",
        req.base(),
        req.size,
        req.plan.ways(),
        req.gran,
        Csv(req.plan.order())
    );
    Ok(log)
}

pub fn run(boot: &BootInfo) -> Result<(), i32> {
    let topo = Topology::discover(boot)?;
    let (req, mem) = plan(boot, &topo, Defaults::default())?;
    let precheck = flag("precheck", false)?;
    let verify = flag("verify", false)?;
    let uncommit = flag("uncommit", false)?;
    let reread = flag("reread", false)?;
    let direct = flag("direct", false)?;
    let expect_direct = flag("expect_direct", true)?;
    let words = arg_u64("words", 4096);
    let stride = arg_u64("stride", req.gran / 2 + 8);
    if stride == 0 || !stride.is_multiple_of(8) {
        println!("cxl: stride {stride} must be a non-zero multiple of 8");
        return Err(BAD_ARG);
    }

    if precheck {
        run_precheck(&mem)?;
    }
    if direct {
        crate::direct::prepare()?;
    }
    let log = commit(&topo, &req)?;
    if verify {
        run_verify(&mem, words, stride)?;
    }
    if direct {
        crate::direct::run(&mem, words, stride, expect_direct)?;
    }
    if uncommit {
        if !reset(&log, true) {
            return Err(COMMIT);
        }
        println!("uncommit ok");
    }
    if reread {
        run_reread(&mem, words, stride)?;
    }
    if flag("hold", false)? {
        // For the host to end the run from outside (SIGKILL tests): spin without exiting.
        println!("region holding");
        loop {
            core::hint::spin_loop();
        }
    }
    Ok(())
}

/// Reads and checks the arguments against the topology.
fn parse(topo: &Topology, defaults: Defaults) -> Result<Request, i32> {
    let window_index = arg_u64("window", 0);
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
    if window.ways == 0 || window.gran == 0 || window.targets().len() != window.ways as usize {
        println!(
            "cxl: window {window_index} has bad encodings or {} targets for {} ways",
            window.targets().len(),
            window.ways
        );
        return Err(BAD_REGISTERS);
    }
    let gran = arg_u64("gran", window.gran);
    if cxl::gran_to_enc(gran).is_none() {
        println!("cxl: granularity {gran} must be a power of 2 from 256 to 16384");
        return Err(BAD_ARG);
    }
    if window.ways > 1 && gran != window.gran {
        println!(
            "cxl: window {window_index} interleaves {} host bridges at {}: the region granularity must be the same, not {gran}",
            window.ways, window.gran
        );
        return Err(BAD_ARG);
    }
    // Linux programs host-bridge decoders with region granularity x window ways; a bridge that
    // does not interleave (1 way) ignores its granularity, so it may keep the region's when the
    // product is not encodable (Linux itself would refuse such a region).
    let hb_gran = cxl::hb_granularity(gran, window.ways);

    let mut devices = FixedVec::<PlanDevice, MAX_TYPE3>::new();
    topo.plan_devices(&mut devices);
    let mut order = [0u8; MAX_WAYS];
    let ways = match arg("devices") {
        Some(list) => parse_devices(list, &mut order)?,
        None => {
            let n = cxl::default_order(window.targets(), &devices, &mut order).map_err(|e| {
                println!("cxl: window {window_index}: no default device set: {e}");
                BAD_ARG
            })?;
            if defaults.one_per_host_bridge {
                // Position p is on host bridge targets[p % window ways]: the first `window
                // ways` positions hold one device of each.
                n.min(window.ways as usize)
            } else {
                n
            }
        }
    };
    let plan = cxl::plan_region(window.targets(), &devices, &order[..ways]).map_err(|e| {
        println!("cxl: region: {e}");
        BAD_ARG
    })?;

    let offset = arg_u64("offset", 0);
    let default_size = if defaults.unit_per_device {
        cxl::UNIT * u64::from(plan.ways())
    } else {
        window.size.saturating_sub(offset)
    };
    let size = arg_u64("size", default_size);
    cxl::check_region_range(window.size, offset, size, plan.ways()).map_err(|e| {
        println!("cxl: region: {e}");
        BAD_ARG
    })?;
    Ok(Request {
        window,
        window_index,
        offset,
        size,
        gran,
        hb_gran,
        plan,
    })
}

/// `devices=` as device indices (decimal, comma-separated).
fn parse_devices(list: &str, order: &mut [u8; MAX_WAYS]) -> Result<usize, i32> {
    let mut n = 0;
    for item in list.split(',') {
        let Some(index) = cxlvm_guest::parse_u64(item).and_then(|v| u8::try_from(v).ok()) else {
            println!("cxl: bad device index `{item}` in devices={list}");
            return Err(BAD_ARG);
        };
        if n == MAX_WAYS {
            println!("cxl: more than {MAX_WAYS} devices in devices={list}");
            return Err(BAD_ARG);
        }
        order[n] = index;
        n += 1;
    }
    Ok(n)
}

/// Checks that every host bridge and device of the plan has what the programming needs.
fn check_hardware(topo: &Topology, req: &Request) -> Result<(), i32> {
    for hbp in req.plan.host_bridges() {
        let Some(hb) = topo.hb_by_uid(hbp.uid) else {
            println!(
                "cxl: window {} target uid={} has no host bridge entry",
                req.window_index, hbp.uid
            );
            return Err(NO_DEVICE);
        };
        match hb.hdm {
            Some(h) if h.target_count() < u32::from(hbp.ways) => {
                println!(
                    "cxl: host bridge {} decoders have {} targets, the region needs {}",
                    hbp.uid,
                    h.target_count(),
                    hbp.ways
                );
                return Err(BAD_ARG);
            }
            None if hbp.ways != 1 => {
                println!(
                    "cxl: host bridge {} is passthrough but the region puts {} devices below it",
                    hbp.uid, hbp.ways
                );
                return Err(BAD_ARG);
            }
            _ => {}
        }
    }
    for &d in req.plan.order() {
        let t = &topo.type3s[usize::from(d)];
        if t.hdm.is_none() {
            println!("region fail mem{d} no-hdm-decoders");
            return Err(BAD_REGISTERS);
        }
        if t.dvsec.is_none() {
            println!("region fail mem{d} no-device-dvsec");
            return Err(BAD_REGISTERS);
        }
    }
    Ok(())
}

/// Linux's order: for every device HDM Decoder Enable then Mem_Enable; endpoint decoders (in
/// position order); host bridge decoders (in window target order). Each decoder is the lowest
/// uncommitted one of its component.
fn commit_region(topo: &Topology, req: &Request, log: &mut CommitLog) -> Result<(), i32> {
    for &d in req.plan.order() {
        let t = &topo.type3s[usize::from(d)];
        let (Some(hdm), Some(dvsec)) = (t.hdm, t.dvsec) else {
            return Err(BAD_REGISTERS);
        };
        if !hdm.enable() {
            println!(
                "region fail mem{d} hdm-enable global_control={:#x}",
                hdm.global_control()
            );
            return Err(BAD_REGISTERS);
        }
        if !dvsec.enable_mem() {
            println!(
                "region fail mem{d} mem-enable control={:#x}",
                dvsec.control()
            );
            return Err(BAD_REGISTERS);
        }
    }
    let iw_enc = cxl::ways_to_enc(req.plan.ways()).ok_or(BAD_ARG)?;
    let ig_enc = cxl::gran_to_enc(req.gran).ok_or(BAD_ARG)?;
    for (position, &d) in req.plan.order().iter().enumerate() {
        let hdm = topo.type3s[usize::from(d)].hdm.ok_or(BAD_REGISTERS)?;
        let setup = DecoderSetup {
            base: req.base(),
            size: req.size,
            iw_enc,
            ig_enc,
            target: 0,
        };
        let n = commit_one(Owner::Mem(d), hdm, &setup, log)?;
        println!("region ep mem{d} position={position} decoder={n}");
    }
    for hbp in req.plan.host_bridges() {
        let hb_gran = match req.hb_gran {
            Some(g) => g,
            None if hbp.ways == 1 => req.gran,
            None => {
                println!(
                    "cxl: granularity {} under {} interleaved host bridges needs a host bridge granularity above 16384",
                    req.gran, hbp.ways
                );
                return Err(BAD_ARG);
            }
        };
        let hb_ig_enc = cxl::gran_to_enc(hb_gran).ok_or(BAD_ARG)?;
        let hb = topo.hb_by_uid(hbp.uid).ok_or(NO_DEVICE)?;
        let Some(hdm) = hb.hdm else {
            println!("region hb uid={} passthrough", hbp.uid);
            continue;
        };
        let setup = DecoderSetup {
            base: req.base(),
            size: req.size,
            iw_enc: cxl::ways_to_enc(u32::from(hbp.ways)).ok_or(BAD_ARG)?,
            ig_enc: hb_ig_enc,
            target: cxl::pack_target_list(hbp.ports()),
        };
        let n = commit_one(Owner::Hb(hbp.uid), hdm, &setup, log)?;
        println!(
            "region hb uid={} decoder={n} ways={} gran={} targets={}",
            hbp.uid,
            hbp.ways,
            hb_gran,
            Csv(hbp.ports())
        );
    }
    Ok(())
}

/// Commits the lowest uncommitted decoder of `hdm`; returns its number.
fn commit_one(
    owner: Owner,
    hdm: Hdm,
    setup: &DecoderSetup,
    log: &mut CommitLog,
) -> Result<u32, i32> {
    let Some(n) = hdm.first_uncommitted() else {
        println!("region fail {owner} no-free-decoder");
        return Err(COMMIT);
    };
    match hdm.commit(n, setup) {
        Ok(()) => {
            let _ = log.push(Committed {
                owner,
                hdm: Some(hdm),
                decoder: n,
            });
            Ok(n)
        }
        Err(e) => {
            println!("region fail {owner} decoder {n} {e}");
            Err(COMMIT)
        }
    }
}

/// Resets the logged decoders top-down (the reverse of the commit order). With `report`,
/// prints `uncommit fail ...` for a decoder whose Committed bit stays set; returns whether all
/// cleared.
pub fn reset(log: &CommitLog, report: bool) -> bool {
    let mut ok = true;
    for c in log.iter().rev() {
        let Some(hdm) = c.hdm else { continue };
        if !hdm.uncommit(c.decoder) {
            ok = false;
            if report {
                println!(
                    "uncommit fail {} decoder {} still-committed",
                    c.owner, c.decoder
                );
            }
        }
    }
    ok
}

/// Before any programming: every word reads all-ones, writes are dropped.
fn run_precheck(mem: &Mmio) -> Result<(), i32> {
    let off = |k| cxl::spread_offset(k, PRECHECK_WORDS, mem.size());
    let check = |phase: &str| -> Result<(), i32> {
        for k in 0..PRECHECK_WORDS {
            let got = mem.read_u64(off(k));
            if got != u64::MAX {
                println!(
                    "precheck mismatch phase={phase} addr={:#x} expected=0xffffffffffffffff got={got:#x}",
                    mem.base() + off(k)
                );
                return Err(MISMATCH);
            }
        }
        Ok(())
    };
    check("read")?;
    for k in 0..PRECHECK_WORDS {
        mem.write_u64(off(k), PRECHECK_PATTERN | k);
    }
    check("after-write")?;
    println!("precheck ok");
    Ok(())
}

/// Offsets `k * stride` for `k < words` that fit a whole word inside the region.
pub fn verify_offsets(mem: &Mmio, words: u64, stride: u64) -> impl Iterator<Item = u64> + '_ {
    (0..words)
        .map(move |k| k.saturating_mul(stride))
        .take_while(move |&off| off.checked_add(8).is_some_and(|end| end <= mem.size()))
}

fn run_verify(mem: &Mmio, words: u64, stride: u64) -> Result<(), i32> {
    let mut written = 0u64;
    for off in verify_offsets(mem, words, stride) {
        mem.write_u64(off, cxl::verify_pattern(mem.base() + off));
        written += 1;
    }
    for off in verify_offsets(mem, words, stride) {
        let hpa = mem.base() + off;
        let expected = cxl::verify_pattern(hpa);
        let got = mem.read_u64(off);
        if got != expected {
            println!("verify mismatch addr={hpa:#x} expected={expected:#x} got={got:#x}");
            return Err(MISMATCH);
        }
    }
    println!("verify ok words={written} stride={stride}");
    Ok(())
}

fn run_reread(mem: &Mmio, words: u64, stride: u64) -> Result<(), i32> {
    for off in verify_offsets(mem, words, stride) {
        let got = mem.read_u64(off);
        if got != u64::MAX {
            println!(
                "reread mismatch addr={:#x} expected=0xffffffffffffffff got={got:#x}",
                mem.base() + off
            );
            return Err(MISMATCH);
        }
    }
    println!("reread ok");
    Ok(())
}
