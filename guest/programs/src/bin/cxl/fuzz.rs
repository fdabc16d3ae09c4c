//! `mode=fuzz`: seeded random reads and writes to HDM decoder registers, mailboxes,
//! configuration space and windows. The VMM must survive; afterwards every function must still
//! answer and every mailbox must still run Identify.
//!
//! Every access stays inside a range the boot info lists: HDM blocks, mailboxes and windows
//! through [`Mmio`] ranges checked by `BootInfo::device_mmio`, configuration space through ECAM
//! (bounds-checked). Configuration writes skip the registers that keep functions reachable:
//! Command, BARs, ROM BARs, bus numbers, bridge windows and Bridge Control (see
//! `pci::calc::protected_header_ranges`), and the PCI Express, power management, MSI and MSI-X
//! capabilities (function reset, link disable, D3, interrupt messages).

use cxlvm_guest::cxl::{self, CEL_UUID, Hdm, Mailbox, VALID_WAYS, mbox, opcode, out_len};
use cxlvm_guest::fixed::FixedVec;
use cxlvm_guest::mmio::Mmio;
use cxlvm_guest::pci::{self, Bdf, cap_id};
use cxlvm_guest::rand::XorShift64;
use cxlvm_guest::{BootInfo, arg_u64, println};

use crate::topology::{MAX_FUNCTIONS, MAX_TYPE3, MAX_WINDOWS, Topology};
use crate::{BAD_REGISTERS, MAILBOX, NO_DEVICE};

/// Most HDM blocks (host bridges, root ports, devices).
const MAX_HDMS: usize = 128;
/// Most protected capability ranges per function.
const MAX_PROTECTED: usize = 6;
/// Opcodes of cxlvm's mailbox, for structured commands.
const OPCODES: [u16; 14] = [
    opcode::GET_EVENT_RECORDS,
    opcode::CLEAR_EVENT_RECORDS,
    opcode::GET_EVENT_INTERRUPT_POLICY,
    opcode::SET_EVENT_INTERRUPT_POLICY,
    opcode::GET_FW_INFO,
    opcode::GET_TIMESTAMP,
    opcode::SET_TIMESTAMP,
    opcode::GET_SUPPORTED_LOGS,
    opcode::GET_LOG,
    opcode::IDENTIFY,
    opcode::GET_PARTITION_INFO,
    opcode::GET_LSA,
    opcode::SET_LSA,
    opcode::GET_HEALTH_INFO,
];

/// A function as the fuzzer sees it.
#[derive(Clone, Copy, Debug, Default)]
struct FuzzFunction {
    bdf: Bdf,
    header_type: u8,
    vendor: u16,
    protected: [(u16, u16); MAX_PROTECTED],
    protected_count: usize,
}

/// Everything the fuzzer may touch.
struct Targets {
    hdms: FixedVec<Option<Hdm>, MAX_HDMS>,
    mailboxes: FixedVec<(u8, Option<Mailbox>), MAX_TYPE3>,
    functions: FixedVec<FuzzFunction, MAX_FUNCTIONS>,
    windows: FixedVec<Option<Mmio>, MAX_WINDOWS>,
}

impl Targets {
    fn collect(boot: &BootInfo, topo: &Topology) -> Self {
        let mut t = Self {
            hdms: FixedVec::new(),
            mailboxes: FixedVec::new(),
            functions: FixedVec::new(),
            windows: FixedVec::new(),
        };
        for hb in topo.hbs.iter() {
            let _ = t.hdms.push(hb.hdm);
            for rp in hb.ports.iter() {
                if rp.hdm.is_some() {
                    let _ = t.hdms.push(rp.hdm);
                }
            }
        }
        for (i, d) in topo.type3s.iter().enumerate() {
            let _ = t.hdms.push(d.hdm);
            let mb = d
                .blocks
                .device
                .and_then(|base| cxl::DeviceRegs::new(base).ok())
                .and_then(|r| r.mailbox());
            if mb.is_some() {
                let _ = t.mailboxes.push((i as u8, mb));
            }
        }
        // `None` entries (passthrough host bridges, devices without HDM) are dropped here.
        let mut kept = FixedVec::new();
        for h in t.hdms.iter().filter(|h| h.is_some()) {
            let _ = kept.push(*h);
        }
        t.hdms = kept;
        for f in topo.functions.iter() {
            let func = topo.function(f.bdf);
            let mut ff = FuzzFunction {
                bdf: f.bdf,
                header_type: f.header_type,
                vendor: f.vendor,
                ..FuzzFunction::default()
            };
            func.for_each_cap(|off, id| {
                let len = match id {
                    cap_id::PCIE => pci::calc::PCIE_CAP_LEN,
                    cap_id::PM => 8,
                    cap_id::MSI => 0x18,
                    cap_id::MSIX => 0x0c,
                    _ => return,
                };
                if ff.protected_count < MAX_PROTECTED {
                    ff.protected[ff.protected_count] = (off, len);
                    ff.protected_count += 1;
                }
            });
            let _ = t.functions.push(ff);
        }
        for w in topo.windows.iter() {
            let _ = t.windows.push(boot.device_mmio(w.base, w.size));
        }
        t
    }
}

#[derive(Default)]
struct Stats {
    hdm: u64,
    mailbox: u64,
    config: u64,
    window: u64,
    reads: u64,
    writes: u64,
    commands: u64,
    commits: u64,
    committed: u64,
    skipped: u64,
}

pub fn run(boot: &BootInfo) -> Result<(), i32> {
    let ops = arg_u64("ops", 20000);
    let seed = arg_u64("seed", 1);
    let topo = Topology::discover(boot)?;
    let targets = Targets::collect(boot, &topo);
    println!(
        "fuzz seed={seed} ops={ops} hdm={} mailboxes={} functions={} windows={}",
        targets.hdms.len(),
        targets.mailboxes.len(),
        targets.functions.len(),
        targets.windows.iter().flatten().count()
    );
    let mut kinds = FixedVec::<u8, 4>::new();
    for (kind, present) in [
        (0, !targets.hdms.is_empty()),
        (1, !targets.mailboxes.is_empty()),
        (2, !targets.functions.is_empty()),
        (3, targets.windows.iter().any(Option::is_some)),
    ] {
        if present {
            let _ = kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        println!("cxl: nothing to fuzz");
        return Err(NO_DEVICE);
    }
    let mut rng = XorShift64::new(seed);
    let mut stats = Stats::default();
    for _ in 0..ops {
        match rng.pick(&kinds).copied().unwrap_or(2) {
            0 => hdm_op(&mut rng, &targets, &mut stats),
            1 => mailbox_op(&mut rng, &targets, &mut stats),
            2 => config_op(&mut rng, &topo, &targets, &mut stats),
            _ => window_op(&mut rng, &targets, &mut stats),
        }
    }
    println!(
        "fuzz stats hdm={} mailbox={} config={} window={} reads={} writes={} commands={} commits={} committed={} skipped={}",
        stats.hdm,
        stats.mailbox,
        stats.config,
        stats.window,
        stats.reads,
        stats.writes,
        stats.commands,
        stats.commits,
        stats.committed,
        stats.skipped
    );
    post_check(&topo, &targets)?;
    println!("fuzz ok ops={ops}");
    Ok(())
}

/// A random access size among `sizes`, and an offset aligned to it below `len` (which must be
/// at least the largest size).
fn access(rng: &mut XorShift64, len: u64, sizes: &[u64]) -> (u64, u64) {
    let size = rng.pick(sizes).copied().unwrap_or(1).min(len.max(1));
    let off = rng.below(len - size + 1) & !(size - 1);
    (off, size)
}

fn mmio_op(rng: &mut XorShift64, m: &Mmio, sizes: &[u64], stats: &mut Stats) {
    let (off, size) = access(rng, m.size(), sizes);
    let v = rng.next_u64();
    if rng.one_in(2) {
        stats.reads += 1;
        match size {
            1 => {
                let _ = m.read_u8(off);
            }
            2 => {
                let _ = m.read_u16(off);
            }
            4 => {
                let _ = m.read_u32(off);
            }
            _ => {
                let _ = m.read_u64(off);
            }
        }
    } else {
        stats.writes += 1;
        match size {
            1 => m.write_u8(off, v as u8),
            2 => m.write_u16(off, v as u16),
            4 => m.write_u32(off, v as u32),
            _ => m.write_u64(off, v),
        }
    }
}

fn hdm_op(rng: &mut XorShift64, t: &Targets, stats: &mut Stats) {
    stats.hdm += 1;
    let Some(Some(hdm)) = rng.pick(&t.hdms).copied() else {
        return;
    };
    if rng.one_in(8) {
        // A whole decoder programmed the Linux way, at a random place of a window (or a
        // random reset), so that commits really map memory now and then.
        let n = rng.below(u64::from(hdm.decoder_count())) as u32;
        if rng.one_in(4) {
            hdm.uncommit(n);
            stats.writes += 5;
            return;
        }
        let window = rng.pick(&t.windows).copied().flatten();
        let base = match window {
            Some(w) => w.base() + rng.below(w.size() / cxl::UNIT) * cxl::UNIT,
            None => rng.next_u64() & !(cxl::UNIT - 1),
        };
        let setup = if rng.one_in(2) {
            // Plausible: 1 or 2 ways, a size that fits them, targets among ports 0..=3 (for an
            // endpoint that is a DPA skip of 0), so that some commits succeed and map memory.
            let iw_enc = rng.below(2) as u8;
            let targets = [rng.below(4) as u8, rng.below(4) as u8];
            cxl::DecoderSetup {
                base,
                size: cxl::UNIT * (1 << iw_enc) * (1 + rng.below(2)),
                iw_enc,
                ig_enc: rng.below(7) as u8,
                target: cxl::pack_target_list(&targets),
            }
        } else {
            cxl::DecoderSetup {
                base,
                size: cxl::UNIT * (1 + rng.below(4)),
                iw_enc: cxl::ways_to_enc(rng.pick(&VALID_WAYS).copied().unwrap_or(1)).unwrap_or(0),
                ig_enc: rng.below(7) as u8,
                target: rng.next_u64(),
            }
        };
        // One read of Control is enough: cxlvm commits synchronously. Errors are expected.
        if commit_no_wait(&hdm, n, &setup) & cxl::ctrl::COMMITTED != 0 {
            stats.committed += 1;
        }
        stats.writes += 7;
        stats.commits += 1;
        return;
    }
    let off = rng.below(hdm.len() / 4) * 4;
    if rng.one_in(2) {
        stats.reads += 1;
        let _ = hdm.read(off);
    } else {
        stats.writes += 1;
        hdm.write(off, rng.next_u32());
    }
}

/// Writes a decoder in Linux's order and reads Control once.
fn commit_no_wait(hdm: &Hdm, n: u32, s: &cxl::DecoderSetup) -> u32 {
    let reg = |r| cxl::decoder_reg(n, r);
    hdm.write(reg(cxl::hdm::BASE_HI), (s.base >> 32) as u32);
    hdm.write(reg(cxl::hdm::BASE_LO), s.base as u32);
    hdm.write(reg(cxl::hdm::SIZE_HI), (s.size >> 32) as u32);
    hdm.write(reg(cxl::hdm::SIZE_LO), s.size as u32);
    hdm.write(reg(cxl::hdm::TARGET_HI), (s.target >> 32) as u32);
    hdm.write(reg(cxl::hdm::TARGET_LO), s.target as u32);
    hdm.write(
        reg(cxl::hdm::CONTROL),
        cxl::commit_control(s.iw_enc, s.ig_enc),
    );
    hdm.control(n)
}

fn mailbox_op(rng: &mut XorShift64, t: &Targets, stats: &mut Stats) {
    stats.mailbox += 1;
    let Some((_, Some(mb))) = rng.pick(&t.mailboxes).copied() else {
        return;
    };
    if !rng.one_in(8) {
        mmio_op(rng, mb.regs(), &[1, 2, 4, 8], stats);
        return;
    }
    // A whole command: random (mostly known) opcode, random payload and length, doorbell.
    let op = if rng.one_in(4) {
        rng.next_u32() as u16
    } else {
        rng.pick(&OPCODES).copied().unwrap_or(opcode::IDENTIFY)
    };
    let payload = mb.payload_size() as u64;
    let len = match rng.below(8) {
        0 => payload + rng.below(64),
        1..=3 => rng.below(payload + 1),
        _ => rng.below(65),
    };
    let regs = mb.regs();
    for i in 0..len.min(payload).div_ceil(4) {
        regs.write_u32(mbox::PAYLOAD + 4 * i, rng.next_u32());
    }
    if op == opcode::GET_LOG && rng.one_in(2) {
        let input = cxl::get_log_input(&CEL_UUID, rng.below(64) as u32 * 4, rng.below(256) as u32);
        mb.write_payload(0, &input);
    }
    regs.write_u64(mbox::COMMAND, cxl::mbox_command(op, len as usize));
    stats.writes += len.min(payload).div_ceil(4) + 1;
    if mb.busy() {
        stats.skipped += 1;
        return;
    }
    regs.write_u32(mbox::CONTROL, mbox::DOORBELL);
    stats.commands += 1;
    for _ in 0..1000 {
        if !mb.busy() {
            break;
        }
        core::hint::spin_loop();
    }
}

fn config_op(rng: &mut XorShift64, topo: &Topology, t: &Targets, stats: &mut Stats) {
    stats.config += 1;
    let Some(ff) = rng.pick(&t.functions).copied() else {
        return;
    };
    let f = topo.function(ff.bdf);
    let (off, size) = access(rng, u64::from(pci::calc::CONFIG_SIZE), &[1, 2, 4]);
    let (off, len) = (off as u16, size as u16);
    let protected = &ff.protected[..ff.protected_count];
    let write = rng.one_in(2);
    if write && !pci::calc::write_protected(ff.header_type, off, len, protected) {
        stats.writes += 1;
        let v = rng.next_u32();
        match len {
            1 => f.write8(off, v as u8),
            2 => f.write16(off, v as u16),
            _ => f.write32(off, v),
        }
    } else {
        stats.reads += 1;
        match len {
            1 => {
                let _ = f.read8(off);
            }
            2 => {
                let _ = f.read16(off);
            }
            _ => {
                let _ = f.read32(off);
            }
        }
    }
}

fn window_op(rng: &mut XorShift64, t: &Targets, stats: &mut Stats) {
    stats.window += 1;
    if let Some(Some(w)) = rng.pick(&t.windows).copied() {
        mmio_op(rng, &w, &[1, 2, 4, 8], stats);
    }
}

/// After the storm: every function still answers with its vendor ID and every mailbox runs
/// Identify.
fn post_check(topo: &Topology, t: &Targets) -> Result<(), i32> {
    for ff in t.functions.iter() {
        let vendor = topo.function(ff.bdf).vendor_id();
        if vendor != ff.vendor {
            println!(
                "fuzz fail pci {} vendor={vendor:04x} expected={:04x}",
                ff.bdf, ff.vendor
            );
            return Err(BAD_REGISTERS);
        }
    }
    let mut buf = [0u8; 256];
    for &(i, mb) in t.mailboxes.iter() {
        let Some(mb) = mb else { continue };
        match mb.send(opcode::IDENTIFY, &[], &mut buf) {
            Ok(len) if len >= out_len::IDENTIFY => {}
            Ok(len) => {
                println!("fuzz fail mem{i} identify short={len}");
                return Err(MAILBOX);
            }
            Err(e) => {
                println!("fuzz fail mem{i} identify {e}");
                return Err(MAILBOX);
            }
        }
    }
    Ok(())
}
