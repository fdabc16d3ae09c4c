//! `mode=remap`: the guest-visible latency of a mapping switch. The region is committed like
//! `mode=region` (endpoint decoders, then the host bridge decoder); then, `cycles=` times, the
//! decoder that completed the region (the host bridge's; the endpoint's under a passthrough
//! host bridge) is uncommitted and committed again with single Control writes (an uncommitted
//! decoder keeps its base, size and target list), timing each switch up to the end of the first
//! 8-byte read of the region base that follows it:
//! - commit: the read must not exit (the region is mapped again) and must return the word
//!   written before the loop;
//! - uncommit: the read goes through MMIO (one exit) and returns all-ones.
//!
//! The exits are counted with the CXL window exit counter (port 0x514), read outside the timed
//! part.

use core::ptr;

use cxlvm_guest::cxl::{Hdm, ctrl, window_exits};
use cxlvm_guest::stats::{Summary, cycles_to_ns};
use cxlvm_guest::{BootInfo, arg_u64, cpu, println};

use crate::region::{self, Defaults, Owner};
use crate::topology::Topology;
use crate::{BAD_ARG, COMMIT, DIRECT, MISMATCH};

/// Most cycles (samples per direction; the arrays live on the stack).
pub const MAX_CYCLES: usize = 4096;
/// What the region base holds while committed.
const PATTERN: u64 = 0x7e3a_9000_0000_0001;

/// One direction of the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Commit,
    Uncommit,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Commit => "commit",
            Dir::Uncommit => "uncommit",
        }
    }
}

/// The decoder being switched and the two Control values.
struct Switch {
    hdm: Hdm,
    decoder: u32,
    owner: Owner,
    on: u32,
    off: u32,
    base: *const u64,
}

impl Switch {
    /// Writes Control for `dir`, reads the region base; returns (TSC cycles from just before
    /// the write to the end of the read, the value read).
    fn timed(&self, dir: Dir) -> (u64, u64) {
        let value = match dir {
            Dir::Commit => self.on,
            Dir::Uncommit => self.off,
        };
        let start = cpu::rdtsc_ordered();
        self.hdm.set_control(self.decoder, value);
        // SAFETY: the region base is in a listed device range (identity mapped, 8-byte
        // aligned) that aliases no Rust memory.
        let got = unsafe { ptr::read_volatile(self.base) };
        // LFENCE in `rdtsc_ordered` waits for the load to complete.
        let end = cpu::rdtsc_ordered();
        (end.wrapping_sub(start), got)
    }

    /// One timed switch, checked: Committed bit, the value read, and the exits of the read.
    fn cycle(&self, dir: Dir, k: usize) -> Result<u64, i32> {
        let before = window_exits();
        let (cycles, got) = self.timed(dir);
        let exits = window_exits().wrapping_sub(before);
        let committed = self.hdm.control(self.decoder) & ctrl::COMMITTED != 0;
        let (want_committed, want_value, want_exits) = match dir {
            Dir::Commit => (true, PATTERN, 0),
            Dir::Uncommit => (false, u64::MAX, 1),
        };
        if committed != want_committed {
            println!(
                "remap fail dir={} cycle={k} {} decoder {} control={:#x}",
                dir.name(),
                self.owner,
                self.decoder,
                self.hdm.control(self.decoder)
            );
            return Err(COMMIT);
        }
        if exits != want_exits {
            println!(
                "remap fail dir={} cycle={k} exits={exits} expected={want_exits}",
                dir.name()
            );
            return Err(DIRECT);
        }
        if got != want_value {
            println!(
                "remap mismatch dir={} cycle={k} addr={:#x} expected={want_value:#x} got={got:#x}",
                dir.name(),
                self.base.addr()
            );
            return Err(MISMATCH);
        }
        Ok(cycles)
    }
}

pub fn run(boot: &BootInfo) -> Result<(), i32> {
    let topo = Topology::discover(boot)?;
    let (req, mem) = region::plan(boot, &topo, Defaults::default())?;
    let cycles = arg_u64("cycles", 200);
    let n = match usize::try_from(cycles) {
        Ok(n @ 1..=MAX_CYCLES) => n,
        _ => {
            println!("cxl: cycles={cycles} must be 1 to {MAX_CYCLES}");
            return Err(BAD_ARG);
        }
    };
    if req.window().ways != 1 {
        println!(
            "cxl: remap needs a window over one host bridge; window {} interleaves {}",
            req.window_index(),
            req.window().ways
        );
        return Err(BAD_ARG);
    }
    let log = region::commit(&topo, &req)?;
    // The last decoder committed completed the region: the host bridge's, or under a
    // passthrough host bridge the (only) endpoint's.
    let Some(last) = log.last().copied() else {
        return Err(COMMIT);
    };
    let Some(hdm) = last.hdm else {
        return Err(COMMIT);
    };
    let on = hdm.control(last.decoder) & !(ctrl::COMMITTED | ctrl::ERR_NOT_COMMITTED);
    let sw = Switch {
        hdm,
        decoder: last.decoder,
        owner: last.owner,
        on,
        off: on & !ctrl::COMMIT,
        base: ptr::with_exposed_provenance::<u64>(mem.base() as usize),
    };
    match last.owner {
        Owner::Hb(uid) => println!("remap switch hb={uid} decoder={}", last.decoder),
        Owner::Mem(i) => println!("remap switch mem={i} decoder={}", last.decoder),
        Owner::None => {}
    }
    mem.write_u64(0, PATTERN);
    // Starts uncommitted (untimed); each cycle then commits and uncommits.
    sw.cycle(Dir::Uncommit, 0)?;

    let mut commit = [0u64; MAX_CYCLES];
    let mut uncommit = [0u64; MAX_CYCLES];
    for k in 0..n {
        commit[k] = sw.cycle(Dir::Commit, k)?;
        uncommit[k] = sw.cycle(Dir::Uncommit, k)?;
    }
    let khz = boot.tsc_khz();
    for (dir, samples) in [(Dir::Commit, &mut commit), (Dir::Uncommit, &mut uncommit)] {
        let s = Summary::of(&mut samples[..n]).map(|c| cycles_to_ns(c, khz));
        println!(
            "remap dir={} samples={} p50_ns={} p99_ns={} min_ns={} max_ns={}",
            dir.name(),
            s.samples,
            s.p50,
            s.p99,
            s.min,
            s.max
        );
    }
    println!("remap ok");
    Ok(())
}
