//! `mode=firmware`: finds the regions cxlvm committed as platform firmware (`[[region]]` in the
//! topology) the way Linux discovers them at boot, and uses them.
//!
//! 1. Reads the CXL window exit counter (port 0x514) before touching any window.
//! 2. Enumerates like Linux (ECAM, Register Locator, CHBCR) and reads every HDM decoder: the
//!    committed ones must form a prefix on each component (Linux: "committed out of order"),
//!    have a non-zero size, valid IW/IG, the host-only type and no Error-Not-Committed; their
//!    Lock-On-Commit bit is recorded. An endpoint decoder's DPA is the running sum of the lower
//!    decoders' skip + size / ways plus its own skip, and must lie inside the device's DVSEC
//!    range; a device with committed decoders must have HDM Decoder Enable, DVSEC Mem_Enable and
//!    Command.MEM (and its root port Command.MEM) set.
//! 3. Assembles regions like Linux's auto-discovery: endpoint decoders with the same HPA range
//!    are one region, inside one window of the boot info; `ways` of them, each below a window
//!    target; each host bridge (unless passthrough) has a committed decoder with the same range,
//!    `ways / window ways` ways at the region granularity × the window's power-of-2 ways, whose
//!    target list holds the device's root port; the device's position follows from its host
//!    bridge's position in the window and its root port's in the target list. A window with
//!    several targets needs the region at its granularity. No host-bridge decoder may be left
//!    over.
//! 4. Prints one `firmware region ...` line per region and checks `regions=` (count) and
//!    `lock=` (1: every decoder locked, 0: none).
//! 5. Writes the verify pattern at `k * stride` (`k < words`) of every region and reads it back:
//!    the exit counter must not have moved since step 1 (the regions are mapped from the first
//!    instruction).
//! 6. With `lock=1`: clears Commit on every decoder (what Linux's decoder reset writes); each must
//!    stay committed, and the data stay readable without exits.

use cxlvm_guest::cxl::{
    self, MAX_WAYS, ctrl, device_dvsec, enc_to_gran, enc_to_ways, hb_granularity, hb_target_index,
    hdm, window_exits,
};
use cxlvm_guest::fixed::FixedVec;
use cxlvm_guest::pci::Function;
use cxlvm_guest::{BootInfo, arg_u64, println};

use crate::region::verify_offsets;
use crate::topology::{MAX_TYPE3, Topology};
use crate::{BAD_ARG, BAD_REGISTERS, COMMIT, Csv, DIRECT, MISMATCH, NO_DEVICE};

/// Most regions found.
const MAX_REGIONS: usize = 16;
/// Most committed decoders per component looked at.
const MAX_DECODERS: usize = 10;
/// PCI Command.MEM.
const COMMAND_MEMORY: u16 = 1 << 1;

/// A committed decoder as read.
#[derive(Clone, Copy, Debug, Default)]
struct Dec {
    decoder: u32,
    base: u64,
    size: u64,
    ways: u32,
    gran: u64,
    /// Endpoint: DPA skip. Port: target list.
    target: u64,
    /// Endpoint: DPA of the first byte.
    dpa: u64,
    locked: bool,
}

/// A region as assembled.
#[derive(Clone, Copy, Debug, Default)]
struct Found {
    window: usize,
    base: u64,
    size: u64,
    ways: u32,
    gran: u64,
    /// Device index by position.
    devices: [u8; MAX_WAYS],
    dpa: [u64; MAX_WAYS],
    skip: [u64; MAX_WAYS],
    locked: bool,
}

type Decoders = FixedVec<Dec, MAX_DECODERS>;

/// The committed prefix of an HDM block's decoders. `endpoint`: DPA accounting.
fn committed(what: &dyn core::fmt::Display, h: cxl::Hdm, endpoint: bool) -> Result<Decoders, i32> {
    let mut out = Decoders::new();
    let mut dpa_next = 0u64;
    let mut prefix = true;
    for n in 0..h.decoder_count() {
        let s = h.decoder(n);
        if !s.committed() {
            prefix = false;
            continue;
        }
        if !prefix {
            println!("firmware fail {what} decoder {n} committed out of order");
            return Err(BAD_REGISTERS);
        }
        let c = s.control;
        let ways = enc_to_ways(((c & ctrl::IW_MASK) >> ctrl::IW_SHIFT) as u8);
        let gran = enc_to_gran((c & ctrl::IG_MASK) as u8);
        let (Some(ways), Some(gran)) = (ways, gran) else {
            println!("firmware fail {what} decoder {n} control={c:#x} bad encodings");
            return Err(BAD_REGISTERS);
        };
        if s.size == 0 || c & ctrl::ERR_NOT_COMMITTED != 0 || c & ctrl::HOST_ONLY == 0 {
            println!(
                "firmware fail {what} decoder {n} size={:#x} control={c:#x}",
                s.size
            );
            return Err(BAD_REGISTERS);
        }
        let mut d = Dec {
            decoder: n,
            base: s.base,
            size: s.size,
            ways,
            gran,
            target: s.target,
            dpa: 0,
            locked: c & ctrl::LOCK != 0,
        };
        if endpoint {
            d.dpa = dpa_next + s.target;
            dpa_next = d.dpa + s.size / u64::from(ways);
        }
        if out.push(d).is_err() {
            println!("firmware fail {what} more than {MAX_DECODERS} committed decoders");
            return Err(BAD_REGISTERS);
        }
    }
    Ok(out)
}

fn command_mem(f: &Function) -> bool {
    f.command() & COMMAND_MEMORY != 0
}

pub fn run(boot: &BootInfo) -> Result<(), i32> {
    // Before any window access.
    let exits_at_start = window_exits();
    let want_regions = arg_u64("regions", u64::MAX);
    let want_lock = match cxlvm_guest::arg("lock") {
        None => None,
        Some(_) => Some(crate::flag("lock", true)?),
    };
    let words = arg_u64("words", 1024);
    let stride = arg_u64("stride", 4104);
    if stride == 0 || !stride.is_multiple_of(8) {
        println!("cxl: stride {stride} must be a non-zero multiple of 8");
        return Err(BAD_ARG);
    }
    let topo = Topology::discover(boot)?;

    // Endpoint decoders, with the enables Linux relies on.
    let mut eps = [Decoders::new(); MAX_TYPE3];
    for (i, t) in topo.type3s.iter().enumerate() {
        let Some(h) = t.hdm else { continue };
        eps[i] = committed(&Owner("mem", i as u32), h, true)?;
        if eps[i].is_empty() {
            continue;
        }
        let dvsec = t.dvsec.ok_or(BAD_REGISTERS)?;
        let rp = topo.hbs[t.hb]
            .ports
            .iter()
            .find(|p| p.port == t.port)
            .map(|p| topo.function(p.bdf));
        let hdm_on = h.global_control() & hdm::GLOBAL_ENABLE != 0;
        let mem_on = dvsec.control() & device_dvsec::CTRL_MEM_ENABLE != 0;
        let cmd_on = command_mem(&topo.function(t.bdf)) && rp.is_some_and(|f| command_mem(&f));
        if !(hdm_on && mem_on && cmd_on) {
            println!(
                "firmware fail mem{i} hdm_enable={} mem_enable={} command_mem={}",
                u8::from(hdm_on),
                u8::from(mem_on),
                u8::from(cmd_on)
            );
            return Err(BAD_REGISTERS);
        }
        let capacity = dvsec.range_size(0);
        for d in eps[i].iter() {
            if d.dpa + d.size / u64::from(d.ways) > capacity {
                println!(
                    "firmware fail mem{i} decoder {} dpa={:#x} beyond the DVSEC range {capacity:#x}",
                    d.decoder, d.dpa
                );
                return Err(BAD_REGISTERS);
            }
        }
    }
    let mut hbs = [Decoders::new(); crate::topology::MAX_HBS];
    let mut hb_used = [[false; MAX_DECODERS]; crate::topology::MAX_HBS];
    for (h, hb) in topo.hbs.iter().enumerate() {
        if let Some(hd) = hb.hdm {
            hbs[h] = committed(&Owner("hb", hb.entry.uid), hd, false)?;
        }
    }

    // Regions: endpoint decoders grouped by HPA range.
    let mut found = FixedVec::<Found, MAX_REGIONS>::new();
    let mut taken = [[false; MAX_DECODERS]; MAX_TYPE3];
    for i in 0..topo.type3s.len() {
        for k in 0..eps[i].len() {
            if taken[i][k] {
                continue;
            }
            let r = assemble(&topo, &eps, &mut taken, &hbs, &mut hb_used, i, k)?;
            if found.push(r).is_err() {
                println!("firmware fail more than {MAX_REGIONS} regions");
                return Err(BAD_REGISTERS);
            }
        }
    }
    for (h, hb) in topo.hbs.iter().enumerate() {
        for (k, d) in hbs[h].iter().enumerate() {
            if !hb_used[h][k] {
                println!(
                    "firmware fail hb {} decoder {} base={:#x} belongs to no region",
                    hb.entry.uid, d.decoder, d.base
                );
                return Err(BAD_REGISTERS);
            }
        }
    }
    found.sort_unstable_by_key(|r| r.base);
    for r in found.iter() {
        let w = r.ways as usize;
        println!(
            "firmware region window={} base={:#x} size={:#x} ways={} gran={} devices={} dpa={} skip={} locked={}",
            r.window,
            r.base,
            r.size,
            r.ways,
            r.gran,
            Csv(&r.devices[..w]),
            HexList(&r.dpa[..w]),
            HexList(&r.skip[..w]),
            u8::from(r.locked)
        );
    }
    if want_regions != u64::MAX && found.len() as u64 != want_regions {
        println!(
            "firmware fail found {} regions, expected {want_regions}",
            found.len()
        );
        return Err(NO_DEVICE);
    }
    if let Some(lock) = want_lock
        && let Some(r) = found.iter().find(|r| r.locked != lock)
    {
        println!(
            "firmware fail region base={:#x} locked={} expected {}",
            r.base,
            u8::from(r.locked),
            u8::from(lock)
        );
        return Err(BAD_REGISTERS);
    }

    // Use them: no exit from the first access on.
    let mut accesses = 0u64;
    for r in found.iter() {
        let Some(mem) = boot.device_mmio(r.base, r.size) else {
            println!(
                "firmware fail region base={:#x} not in a listed range",
                r.base
            );
            return Err(BAD_REGISTERS);
        };
        for off in verify_offsets(&mem, words, stride) {
            mem.write_u64(off, cxl::verify_pattern(r.base + off));
            accesses += 1;
        }
        for off in verify_offsets(&mem, words, stride) {
            let hpa = r.base + off;
            let got = mem.read_u64(off);
            accesses += 1;
            if got != cxl::verify_pattern(hpa) {
                println!(
                    "firmware mismatch addr={hpa:#x} expected={:#x} got={got:#x}",
                    cxl::verify_pattern(hpa)
                );
                return Err(MISMATCH);
            }
        }
    }
    let exits = window_exits().wrapping_sub(exits_at_start);
    println!(
        "firmware access regions={} accesses={accesses} exits_at_start={exits_at_start} exits={exits}",
        found.len()
    );
    if exits != 0 || exits_at_start != 0 {
        println!("firmware fail the regions were not mapped from the first access");
        return Err(DIRECT);
    }

    if want_lock == Some(true) {
        let mut tried = 0u32;
        let mut clear = |h: cxl::Hdm, d: &Dec, what: &dyn core::fmt::Display| -> Result<(), i32> {
            let c = h.control(d.decoder);
            h.set_control(d.decoder, c & !ctrl::COMMIT);
            tried += 1;
            if h.control(d.decoder) & ctrl::COMMITTED == 0 {
                println!(
                    "firmware fail {what} decoder {} uncommitted although locked",
                    d.decoder
                );
                return Err(COMMIT);
            }
            Ok(())
        };
        // Top-down, as Linux resets a region.
        for (h, hb) in topo.hbs.iter().enumerate() {
            if let Some(hd) = hb.hdm {
                for d in hbs[h].iter().rev() {
                    clear(hd, d, &Owner("hb", hb.entry.uid))?;
                }
            }
        }
        for (i, t) in topo.type3s.iter().enumerate() {
            if let Some(hd) = t.hdm {
                for d in eps[i].iter().rev() {
                    clear(hd, d, &Owner("mem", i as u32))?;
                }
            }
        }
        let before = window_exits();
        for r in found.iter() {
            let Some(mem) = boot.device_mmio(r.base, r.size) else {
                return Err(BAD_REGISTERS);
            };
            if let Some(off) = verify_offsets(&mem, words, stride).last() {
                let got = mem.read_u64(off);
                if got != cxl::verify_pattern(r.base + off) {
                    println!("firmware mismatch after-uncommit addr={:#x}", r.base + off);
                    return Err(MISMATCH);
                }
            }
        }
        let exits = window_exits().wrapping_sub(before);
        println!("firmware lock decoders={tried} exits={exits}");
        if exits != 0 {
            return Err(DIRECT);
        }
    }
    println!("firmware ok");
    Ok(())
}

/// `hb <uid>` or `mem<i>`.
struct Owner(&'static str, u32);

impl core::fmt::Display for Owner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            "hb" => write!(f, "hb {}", self.1),
            other => write!(f, "{other}{}", self.1),
        }
    }
}

/// Comma-separated hex values.
struct HexList<'a>(&'a [u64]);

impl core::fmt::Display for HexList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v:#x}")?;
        }
        Ok(())
    }
}

/// Assembles the region of endpoint decoder `k` of device `first`, marking the decoders it uses.
#[allow(clippy::too_many_arguments)]
fn assemble(
    topo: &Topology,
    eps: &[Decoders; MAX_TYPE3],
    taken: &mut [[bool; MAX_DECODERS]; MAX_TYPE3],
    hbs: &[Decoders; crate::topology::MAX_HBS],
    hb_used: &mut [[bool; MAX_DECODERS]; crate::topology::MAX_HBS],
    first: usize,
    k: usize,
) -> Result<Found, i32> {
    let d0 = eps[first][k];
    let fail = |why: &str| {
        println!(
            "firmware fail region base={:#x} size={:#x}: {why}",
            d0.base, d0.size
        );
        BAD_REGISTERS
    };
    let Some((wi, w)) = topo
        .windows
        .iter()
        .enumerate()
        .find(|(_, w)| d0.base >= w.base && d0.base + d0.size <= w.base + w.size)
    else {
        return Err(fail("not inside a window"));
    };
    let root = w.ways;
    if root == 0 || !d0.ways.is_multiple_of(root) || d0.ways as usize > MAX_WAYS {
        return Err(fail("ways not a multiple of the window's"));
    }
    if root > 1 && d0.gran != w.gran {
        return Err(fail("granularity differs from the interleaving window's"));
    }
    let per_hb = d0.ways / root;
    let hb_gran =
        hb_granularity(d0.gran, root).ok_or_else(|| fail("no host-bridge granularity"))?;
    let mut r = Found {
        window: wi,
        base: d0.base,
        size: d0.size,
        ways: d0.ways,
        gran: d0.gran,
        locked: true,
        ..Found::default()
    };
    let mut filled = [false; MAX_WAYS];
    let mut members = 0u32;
    for (i, t) in topo.type3s.iter().enumerate() {
        let Some(kk) = eps[i]
            .iter()
            .position(|d| d.base == d0.base && d.size == d0.size)
        else {
            continue;
        };
        let d = eps[i][kk];
        taken[i][kk] = true;
        members += 1;
        if d.ways != d0.ways || d.gran != d0.gran {
            return Err(fail("endpoint decoders disagree on ways or granularity"));
        }
        let hb = &topo.hbs[t.hb];
        let Some(hb_pos) = w.targets().iter().position(|&u| u == hb.entry.uid) else {
            return Err(fail("a device is not below the window's host bridges"));
        };
        let rp_index = match hb.hdm {
            None => {
                if per_hb != 1 {
                    return Err(fail("passthrough host bridge with several devices"));
                }
                0
            }
            Some(_) => {
                let Some(hk) = hbs[t.hb]
                    .iter()
                    .position(|x| x.base == d0.base && x.size == d0.size)
                else {
                    return Err(fail("no host-bridge decoder for the range"));
                };
                let x = hbs[t.hb][hk];
                hb_used[t.hb][hk] = true;
                r.locked &= x.locked;
                if x.ways != per_hb || x.gran != hb_gran {
                    println!(
                        "  hb {} decoder {} ways={} gran={} expected ways={per_hb} gran={hb_gran}",
                        hb.entry.uid, x.decoder, x.ways, x.gran
                    );
                    return Err(fail("host-bridge decoder ways or granularity"));
                }
                let targets = x.target.to_le_bytes();
                match targets[..per_hb as usize].iter().position(|&p| p == t.port) {
                    Some(j) => j as u32,
                    None => return Err(fail("root port not in the host-bridge target list")),
                }
            }
        };
        let Some(p) = (0..d0.ways).find(|&p| {
            p % root == hb_pos as u32 && hb_target_index(p, root, per_hb) == Some(rp_index)
        }) else {
            return Err(fail("no interleave position fits a device"));
        };
        let p = p as usize;
        if filled[p] {
            return Err(fail("two devices at one position"));
        }
        filled[p] = true;
        r.devices[p] = i as u8;
        r.dpa[p] = d.dpa;
        r.skip[p] = d.target;
        r.locked &= d.locked;
    }
    if members != d0.ways {
        println!("  {members} endpoint decoders for {} ways", d0.ways);
        return Err(fail("wrong number of devices"));
    }
    Ok(r)
}
