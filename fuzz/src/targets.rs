//! The fuzz targets' bodies: one function per target, each taking the raw fuzz input. The
//! `fuzz_targets/*.rs` binaries only forward to these, so a crash reproduces with
//! `cargo test` (tests/replay.rs) as well as under libFuzzer.

use std::sync::Arc;

use cxlvm_cxl::devregs::{DeviceRegs, MAILBOX_OFFSET, MEMDEV_OFFSET, MEMDEV_STATUS, PAYLOAD_SIZE};
use cxlvm_cxl::graph::Target;
use cxlvm_cxl::mailbox::{CAPACITY_UNIT, Mailbox, MemdevParams, ReturnCode, opcode};
use cxlvm_cxl::topology::{CXL_UNIT, LSA_SIZE, Topology};
use cxlvm_memory::{AddressSpace, MmioHandler, RamBacking};
use cxlvm_platform::{CxlPlatform, OverlayOptions, PlatformError};
use cxlvm_x86::{elf, layout};

use crate::ops::{ECAM_OPS, HDM_OPS, Op, RegionArgs, WIDTHS};
use crate::reader::Reader;
use crate::rig::{self, Rig};

/// Most ops run per input (keeps every input well under a second).
pub const MAX_OPS: usize = 64;

/// The VMA budget an input picks with its first byte: one value in 16 grants enough mappings
/// for stitched interleaved ranges (~0.5 s to build each: tens of thousands of mmaps), the rest
/// none, tiny (linear ranges only) or small.
pub fn budget(b: u8) -> u64 {
    match b % 16 {
        0 => 40_000,
        1..=5 => 0,
        6..=10 => 2,
        _ => 16,
    }
}

/// The platform of the `ecam` and `hdm` targets: an interleaving host bridge with two devices,
/// a passthrough host bridge with a device holding volatile and persistent capacity, a host
/// bridge with an empty root port and 2-decoder components, modulo, XOR and 1-way windows, and a
/// firmware-committed (locked) region at the base of the 1-way window.
pub const PLATFORM: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 2
[[host_bridge]]
id = "hb1"
root_ports = 1
passthrough = true
[[host_bridge]]
id = "hb2"
root_ports = 2
decoders = 2
[[device]]
id = "m0"
host_bridge = "hb0"
root_port = 0
volatile = "256M"
[[device]]
id = "m1"
host_bridge = "hb0"
root_port = 1
volatile = "512M"
[[device]]
id = "m2"
host_bridge = "hb1"
root_port = 0
volatile = "256M"
persistent = "256M"
persistent_file = "fuzz.pmem"
[[device]]
id = "m3"
host_bridge = "hb2"
root_port = 1
volatile = "256M"
decoders = 2
[[window]]
id = "w0"
size = "2G"
targets = ["hb0", "hb2"]
granularity = "4K"
[[window]]
id = "w1"
size = "1G"
targets = ["hb1"]
[[window]]
id = "w2"
size = "1G"
targets = ["hb0", "hb1"]
arithmetic = "xor"
granularity = 256
[[window]]
id = "w3"
size = "1G"
targets = ["hb0"]
granularity = "16K"
[[region]]
id = "r0"
window = "w1"
devices = ["m2"]
size = "256M"
"#;

fn run_ops(data: &[u8], table: &[crate::ops::Kind]) {
    let mut r = Reader::new(data);
    let mut rig = Rig::build(PLATFORM, budget(r.u8()));
    rig.check_regions();
    rig.check_all();
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = Op::decode(&mut r, table);
        rig.apply(&op);
        rig.check_all();
    }
    rig.check_model();
    if std::ptr::eq(table, ECAM_OPS) {
        let _ = rig.check_functions();
    }
}

/// `ecam`: configuration traffic (raw ECAM positions, known functions, BARs, bus numbers, DVSEC
/// control, Command, secondary bus reset) mixed with region commits and window accesses.
pub fn ecam(data: &[u8]) {
    run_ops(data, ECAM_OPS);
}

/// `hdm`: HDM decoder programming through the CHBCRs and endpoint component registers (Linux
/// sequences and arbitrary values), enables, resets and window accesses.
pub fn hdm(data: &[u8]) {
    run_ops(data, HDM_OPS);
}

impl Rig {
    /// What a guest's bus scan finds: every root port where it belongs, no function twice, only
    /// cxlvm's IDs. Returns the number of functions found.
    pub fn check_functions(&self) -> usize {
        use cxlvm_platform::{PCI_VENDOR, ROOT_PORT_DEVICE, TYPE3_DEVICE, root_bus};
        // Like PciSegment::functions, but only devfn 0 below the root buses (the only slot root
        // ports have children in): 1/256 of the look-ups.
        let roots: Vec<u8> = (0..self.topo.host_bridges.len()).map(root_bus).collect();
        let mut found = Vec::new();
        for bus in 0..=255u8 {
            let devfns: Vec<u8> = if roots.contains(&bus) {
                (0..=255).collect()
            } else {
                vec![0]
            };
            for df in devfns {
                if let Some(f) = self.p.segment.function(bus, df) {
                    let mut id = [0u8; 2];
                    f.read_config(0, &mut id);
                    if id != [0xff, 0xff] {
                        found.push((bus, df, f));
                    }
                }
            }
        }
        for (i, (b, df, f)) in found.iter().enumerate() {
            for (b2, df2, f2) in &found[i + 1..] {
                assert!(
                    !std::ptr::addr_eq(Arc::as_ptr(f), Arc::as_ptr(f2)),
                    "one function at two places: {b:#x}:{df:#x} and {b2:#x}:{df2:#x}"
                );
            }
            let mut id = [0u8; 4];
            f.read_config(0, &mut id);
            let id = u32::from_le_bytes(id);
            assert!(
                id == u32::from(PCI_VENDOR) | u32::from(ROOT_PORT_DEVICE) << 16
                    || id == u32::from(PCI_VENDOR) | u32::from(TYPE3_DEVICE) << 16,
                "{b:#x}:{df:#x} has IDs {id:#x}"
            );
        }
        for (h, ports) in self.p.root_ports.iter().enumerate() {
            for (p, rp) in ports.iter().enumerate() {
                let f = self
                    .p
                    .segment
                    .function(root_bus(h), cxlvm_pci::devfn(p as u8, 0))
                    .expect("root port on its root bus");
                assert!(std::ptr::addr_eq(Arc::as_ptr(&f), Arc::as_ptr(rp)));
            }
        }
        found.len()
    }
}

// ---------------------------------------------------------------------------------------------
// window
// ---------------------------------------------------------------------------------------------

/// `window`: regions committed like Linux on two windows (the first modulo or XOR, granularity
/// chosen by the input), then accesses of every width at any alignment through the CPU view or
/// straight through the dispatcher (an MMIO exit racing a slot update). A written byte reads
/// back through both paths and through the device backing when its HPA is decoded, all-ones
/// when not; reads agree between the paths and with the backing.
pub fn window(data: &[u8]) {
    let mut r = Reader::new(data);
    let hdr = r.u8();
    let budget = budget(hdr);
    let xor = hdr & 0x80 != 0;
    let g0 = 256u64 << (r.u8() % 7);
    let g1 = 256u64 << (r.u8() % 7);
    let toml = format!(
        r#"
[[host_bridge]]
id = "hb0"
root_ports = 2
[[host_bridge]]
id = "hb1"
root_ports = 2
[[device]]
id = "m0"
host_bridge = "hb0"
root_port = 0
volatile = "256M"
[[device]]
id = "m1"
host_bridge = "hb0"
root_port = 1
volatile = "512M"
[[device]]
id = "m2"
host_bridge = "hb1"
root_port = 0
volatile = "256M"
[[device]]
id = "m3"
host_bridge = "hb1"
root_port = 1
persistent = "512M"
persistent_file = "fuzz.pmem"
[[window]]
id = "w0"
size = "2G"
targets = ["hb0", "hb1"]
granularity = {g0}
arithmetic = "{}"
[[window]]
id = "w1"
size = "1G"
targets = ["hb0"]
granularity = {g1}
"#,
        if xor { "xor" } else { "modulo" }
    );
    let mut rig = Rig::build(&toml, budget);
    for _ in 0..(r.u8() % 4) {
        rig.region(&RegionArgs::decode(&mut r));
    }
    rig.check_overlays();
    let g = rig.p.fabric.graph();
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let win = usize::from(r.u8()) % rig.p.windows.len();
        let raw = r.u64();
        let len = WIDTHS[usize::from(r.u8()) % WIDTHS.len()];
        let mode = r.u8();
        let val = r.u64();
        let (wbase, wsize) = (rig.p.windows[win].base, rig.p.windows[win].size);
        // Offsets near interesting boundaries: granules, pages, 256 MiB units, or anywhere.
        let unit = [1u64, 256, 4096, CXL_UNIT][(raw >> 62) as usize];
        let delta = i64::from((raw >> 32) as u8 as i8);
        let off = ((raw & 0xffff_ffff) % (wsize / unit) * unit).saturating_add_signed(delta);
        let off = off.min(wsize - len as u64);
        let hpa = wbase + off;
        let disp = rig.p.dispatchers[win].clone();
        let view = rig.view.load();
        let routes: Vec<Target> = (0..len as u64).map(|i| g.route(hpa + i)).collect();
        let backing_byte = |t: &Target| -> Option<u8> {
            let Target::Device { device, dpa } = *t else {
                return None;
            };
            let (b, o) = rig.p.memories[device]
                .home(dpa)
                .unwrap_or_else(|| panic!("HPA routes outside device {device}'s backing: {t:?}"));
            let mut v = [0u8];
            b.read(o, &mut v).unwrap();
            Some(v[0])
        };
        let expected: Vec<u8> = if mode & 1 != 0 {
            let data: Vec<u8> = (0..len)
                .map(|i| (val.rotate_left(8 * i as u32) as u8) ^ i as u8)
                .collect();
            if mode & 2 != 0 {
                disp.write(off, &data);
            } else {
                view.write(hpa, &data);
            }
            // The last byte written to each (device, DPA) wins.
            (0..len)
                .map(|i| match routes[i] {
                    Target::Device { .. } => {
                        let j = (0..len).rev().find(|&j| routes[j] == routes[i]).unwrap();
                        data[j]
                    }
                    Target::Unclaimed(_) => 0xff,
                })
                .collect()
        } else {
            routes
                .iter()
                .map(|t| backing_byte(t).unwrap_or(0xff))
                .collect()
        };
        let mut via_view = vec![0u8; len];
        view.read(hpa, &mut via_view);
        let mut via_disp = vec![0u8; len];
        disp.read(off, &mut via_disp);
        let via_backing: Vec<u8> = routes
            .iter()
            .map(|t| backing_byte(t).unwrap_or(0xff))
            .collect();
        assert_eq!(
            via_view, expected,
            "window {win} HPA {hpa:#x} len {len} (mode {mode:#x}): CPU view read {via_view:x?}, \
             expected {expected:x?}, routes {routes:?}"
        );
        assert_eq!(
            via_disp, expected,
            "window {win} HPA {hpa:#x} len {len} (mode {mode:#x}): MMIO path read {via_disp:x?}, \
             expected {expected:x?}, routes {routes:?}"
        );
        assert_eq!(
            via_backing, expected,
            "window {win} HPA {hpa:#x} len {len} (mode {mode:#x}): device backing holds \
             {via_backing:x?}, expected {expected:x?}, routes {routes:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// mailbox
// ---------------------------------------------------------------------------------------------

/// Opcodes worth choosing (implemented ones, neighbours, and the rest by value).
/// The implemented commands (the first 15; Get/Set LSA need a label area, Get Security State
/// persistent capacity), then unknown ones.
const OPCODES: [u16; 19] = [
    opcode::GET_EVENT_RECORDS,
    opcode::CLEAR_EVENT_RECORDS,
    opcode::GET_EVENT_INTERRUPT_POLICY,
    opcode::SET_EVENT_INTERRUPT_POLICY,
    opcode::GET_FW_INFO,
    opcode::GET_TIMESTAMP,
    opcode::SET_TIMESTAMP,
    opcode::GET_SUPPORTED_LOGS,
    opcode::GET_LOG,
    opcode::IDENTIFY_MEMORY_DEVICE,
    opcode::GET_PARTITION_INFO,
    opcode::GET_LSA,
    opcode::SET_LSA,
    opcode::GET_HEALTH_INFO,
    opcode::GET_SECURITY_STATE,
    0x0104,
    0x4101,
    0x4300,
    0xffff,
];

const MB_CONTROL: u64 = MAILBOX_OFFSET + 0x04;
const MB_COMMAND: u64 = MAILBOX_OFFSET + 0x08;
const MB_STATUS: u64 = MAILBOX_OFFSET + 0x10;
const MB_PAYLOAD: u64 = MAILBOX_OFFSET + 0x20;

fn rq(regs: &DeviceRegs, at: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    regs.read(at, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn payload(regs: &DeviceRegs) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD_SIZE];
    regs.read(MB_PAYLOAD, &mut p);
    p
}

/// Return codes this device may produce.
const CODES: [ReturnCode; 7] = [
    ReturnCode::Success,
    ReturnCode::InvalidInput,
    ReturnCode::Unsupported,
    ReturnCode::InternalError,
    ReturnCode::InvalidHandle,
    ReturnCode::InvalidPayloadLength,
    ReturnCode::InvalidLog,
];

/// Fixed output lengths of the commands that have one.
fn fixed_output(op: u16) -> Option<usize> {
    Some(match op {
        opcode::GET_EVENT_RECORDS => 0x20,
        opcode::GET_EVENT_INTERRUPT_POLICY => 4,
        opcode::GET_FW_INFO => 0x50,
        opcode::GET_TIMESTAMP => 8,
        opcode::GET_SUPPORTED_LOGS => 0x1c,
        opcode::IDENTIFY_MEMORY_DEVICE => 0x45,
        opcode::GET_PARTITION_INFO => 0x20,
        opcode::GET_HEALTH_INFO => 0x12,
        opcode::GET_SECURITY_STATE => 4,
        opcode::CLEAR_EVENT_RECORDS | opcode::SET_EVENT_INTERRUPT_POLICY => 0,
        opcode::SET_TIMESTAMP | opcode::SET_LSA => 0,
        _ => return None,
    })
}

/// `mailbox`: the device register block of a Type-3 device (with or without label storage)
/// driven through its registers: payload writes, Command (opcode and any 21-bit length), the
/// doorbell rung by writes of every shape, raw accesses anywhere, resets, and `execute` with a
/// small payload. Invariants: no panic; the doorbell reads clear; Status holds only a return
/// code, one this device documents; Command keeps the opcode and gets an output length that fits
/// the payload (0 on failure); the payload beyond the output is untouched; fixed-size outputs
/// have their size; unknown opcodes are Unsupported; over-long inputs are Invalid Payload
/// Length; label storage, the event interrupt policy and the CEL read back what a model says.
pub fn mailbox(data: &[u8]) {
    let mut r = Reader::new(data);
    let hdr = r.u8();
    let has_lsa = hdr & 1 != 0;
    let lsa = has_lsa.then(|| RamBacking::memfd("lsa", LSA_SIZE).expect("memfd"));
    let volatile = u64::from(hdr >> 1 & 3) * CAPACITY_UNIT + u64::from(hdr >> 3 & 1) * 4096;
    let persistent = u64::from(hdr >> 4 & 3) * CAPACITY_UNIT;
    let mut regs = DeviceRegs::new(Mailbox::new(MemdevParams {
        volatile_bytes: volatile,
        persistent_bytes: persistent,
        lsa: lsa.clone(),
        fw_revision: "fuzz \u{e9}t\u{e9} firmware revision".into(),
        serial: 7,
    }));
    let cel = regs.mailbox().cel().to_vec();
    let mut shadow_lsa = vec![0u8; if has_lsa { LSA_SIZE as usize } else { 0 }];
    let mut policy = [0u8; 4];
    let mut timestamp_floor = 0u64;
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 8 {
            // A command through the registers (the common case).
            0..=3 => {
                let op_sel = r.u16();
                let op = if op_sel & 0x8000 != 0 {
                    r.u16()
                } else {
                    OPCODES[usize::from(op_sel) % OPCODES.len()]
                };
                let len_raw = r.u32();
                // Mostly lengths up to the payload size; sometimes any 21-bit value.
                let len = if len_raw & 0x8000_0000 != 0 {
                    u64::from(len_raw) & 0x1f_ffff
                } else {
                    u64::from(len_raw) % (PAYLOAD_SIZE as u64 + 2)
                };
                let at = u64::from(r.u16()) % PAYLOAD_SIZE as u64;
                let n = usize::from(r.u8());
                let bytes = r.slice(n).to_vec();
                regs.write(MB_PAYLOAD + at, &bytes);
                let cmd = u64::from(op) | len << 16;
                match r.u8() % 4 {
                    0 => regs.write(MB_COMMAND, &cmd.to_le_bytes()),
                    1 => {
                        regs.write(MB_COMMAND + 4, &((cmd >> 32) as u32).to_le_bytes());
                        regs.write(MB_COMMAND, &(cmd as u32).to_le_bytes());
                    }
                    2 => {
                        for (i, b) in cmd.to_le_bytes().iter().enumerate() {
                            regs.write(MB_COMMAND + i as u64, &[*b]);
                        }
                    }
                    _ => regs.write(
                        MB_COMMAND - 1,
                        &[
                            0x5a,
                            cmd as u8,
                            (cmd >> 8) as u8,
                            (cmd >> 16) as u8,
                            (cmd >> 24) as u8,
                            (cmd >> 32) as u8,
                        ],
                    ),
                }
                let before = payload(&regs);
                let input = before[..(len as usize).min(PAYLOAD_SIZE)].to_vec();
                let style = r.u8() % 5;
                let rang = style != 4;
                match style {
                    0 => regs.write(MB_CONTROL, &1u32.to_le_bytes()),
                    1 => regs.write(MB_CONTROL, &[1]),
                    2 => regs.write(MAILBOX_OFFSET, &(1u64 << 32).to_le_bytes()),
                    3 => regs.write(MB_CONTROL - 2, &[0, 0, 0xff, 0xff]),
                    _ => regs.write(MB_CONTROL, &[0xfe]), // no doorbell
                }
                let status = rq(&regs, MB_STATUS, 8);
                let command = rq(&regs, MB_COMMAND, 8);
                let control = rq(&regs, MB_CONTROL, 4);
                let after = payload(&regs);
                assert_eq!(control, 0, "doorbell/control reads {control:#x}");
                assert_eq!(
                    status & !(0xffff << 32),
                    0,
                    "Status {status:#x}: reserved bits"
                );
                let rc = (status >> 32) as u16;
                assert!(
                    CODES.iter().any(|c| c.code() == rc),
                    "return code {rc:#x} is not one the device documents"
                );
                assert_eq!(command >> 37, 0, "Command reserved bits: {command:#x}");
                assert_eq!(command & 0xffff, u64::from(op), "Command opcode changed");
                if !rang {
                    assert_eq!(command, cmd, "Command changed without a doorbell");
                    assert_eq!(after, before, "payload changed without a doorbell");
                    continue;
                }
                let out_len = ((command >> 16) & 0x1f_ffff) as usize;
                assert!(out_len <= PAYLOAD_SIZE, "output length {out_len} > payload");
                if rc != 0 {
                    assert_eq!(out_len, 0, "failed command {rc:#x} with output");
                }
                assert_eq!(
                    after[out_len..],
                    before[out_len..],
                    "payload beyond the output ({out_len} bytes) changed"
                );
                let out = &after[..out_len];
                let known = OPCODES[..15].contains(&op)
                    && (has_lsa || !matches!(op, opcode::GET_LSA | opcode::SET_LSA))
                    && (persistent > 0 || op != opcode::GET_SECURITY_STATE);
                if len > PAYLOAD_SIZE as u64 {
                    assert_eq!(rc, ReturnCode::InvalidPayloadLength.code(), "length {len}");
                    continue;
                }
                if !known {
                    assert_eq!(rc, ReturnCode::Unsupported.code(), "opcode {op:#x}");
                    continue;
                }
                if rc != 0 {
                    continue;
                }
                if let Some(n) = fixed_output(op) {
                    assert_eq!(out_len, n, "opcode {op:#x} output length");
                }
                let le32 =
                    |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
                match op {
                    opcode::GET_LSA => {
                        let (o, l) = (le32(&input, 0) as usize, le32(&input, 4) as usize);
                        assert_eq!(out, &shadow_lsa[o..o + l], "Get LSA {o:#x}+{l:#x}");
                    }
                    opcode::SET_LSA => {
                        let o = le32(&input, 0) as usize;
                        let d = &input[8..];
                        shadow_lsa[o..o + d.len()].copy_from_slice(d);
                        let mut back = vec![0u8; d.len()];
                        lsa.as_ref().unwrap().read(o as u64, &mut back).unwrap();
                        assert_eq!(back, d, "Set LSA did not reach the backing");
                    }
                    opcode::SET_EVENT_INTERRUPT_POLICY => {
                        policy.copy_from_slice(&input[..4]);
                    }
                    opcode::GET_EVENT_INTERRUPT_POLICY => assert_eq!(out, policy),
                    opcode::SET_TIMESTAMP => {
                        timestamp_floor = u64::from_le_bytes(input[..8].try_into().unwrap());
                    }
                    opcode::GET_TIMESTAMP => {
                        let t = u64::from_le_bytes(out.try_into().unwrap());
                        assert!(t >= timestamp_floor, "timestamp went back");
                        timestamp_floor = t;
                    }
                    opcode::GET_LOG => {
                        let (o, l) = (le32(&input, 16) as usize, le32(&input, 20) as usize);
                        assert_eq!(out, &cel[o..o + l], "Get Log {o:#x}+{l:#x}");
                    }
                    opcode::IDENTIFY_MEMORY_DEVICE => {
                        let q = |at: usize| u64::from_le_bytes(out[at..at + 8].try_into().unwrap());
                        assert_eq!(q(0x18), volatile / CAPACITY_UNIT);
                        assert_eq!(q(0x20), persistent / CAPACITY_UNIT);
                        assert_eq!(q(0x10), q(0x18) + q(0x20));
                        assert_eq!(le32(out, 0x38), if has_lsa { LSA_SIZE as u32 } else { 0 });
                    }
                    opcode::GET_SECURITY_STATE => {
                        assert_eq!(out, [0; 4], "no passphrase, unlocked, not frozen")
                    }
                    _ => {}
                }
            }
            // Any access anywhere (mostly the mailbox registers).
            4 | 5 => {
                let raw = r.u16();
                let at = if raw & 0x8000 != 0 {
                    u64::from(raw & 0x7fff)
                        | if raw & 0x4000 != 0 {
                            u64::MAX - 0x7fff
                        } else {
                            0
                        }
                } else {
                    MAILBOX_OFFSET + u64::from(raw) % 0x40
                };
                let len = WIDTHS[usize::from(r.u8()) % WIDTHS.len()];
                let val = r.u64();
                let bytes: Vec<u8> = val
                    .to_le_bytes()
                    .iter()
                    .copied()
                    .cycle()
                    .take(len)
                    .collect();
                let write = r.bool();
                if write {
                    regs.write(at, &bytes);
                    // A doorbell rung this way may have run anything: resynchronise the models.
                    policy_unknown(&mut regs, &mut policy);
                    if let Some(l) = &lsa {
                        l.read(0, &mut shadow_lsa).unwrap();
                    }
                    timestamp_floor = 0;
                }
                let mut back = vec![0u8; len];
                regs.read(at, &mut back);
                assert_eq!(rq(&regs, MB_CONTROL, 4), 0);
                assert_eq!(rq(&regs, MEMDEV_OFFSET, 8), MEMDEV_STATUS);
                assert_eq!(rq(&regs, 0, 8), 1 << 16 | 3 << 32, "capability array");
            }
            // Reset (secondary bus reset of the port above).
            6 => {
                regs.reset();
                policy = [0; 4];
                timestamp_floor = 0;
                assert_eq!(rq(&regs, MB_COMMAND, 8), 0);
                assert!(payload(&regs).iter().all(|&b| b == 0));
            }
            // The command set straight, with a possibly tiny payload.
            _ => {
                let op = OPCODES[usize::from(r.u8()) % OPCODES.len()];
                let max = usize::from(r.u16()) % 4096;
                let n = usize::from(r.u16() % 4096);
                let input = r.slice(n).to_vec();
                let (rc, out) = regs.mailbox_mut().execute(op, &input, max);
                assert!(out.len() <= max, "output {} > max {max}", out.len());
                if rc != ReturnCode::Success {
                    assert!(out.is_empty(), "{rc:?} with output");
                }
                assert!(CODES.contains(&rc), "{rc:?}");
                if rc == ReturnCode::Success {
                    match op {
                        opcode::SET_EVENT_INTERRUPT_POLICY => policy.copy_from_slice(&input[..4]),
                        opcode::SET_TIMESTAMP => {
                            timestamp_floor = u64::from_le_bytes(input[..8].try_into().unwrap())
                        }
                        opcode::SET_LSA => {
                            let o = u32::from_le_bytes(input[..4].try_into().unwrap()) as usize;
                            shadow_lsa[o..o + input.len() - 8].copy_from_slice(&input[8..]);
                        }
                        opcode::GET_LSA => {
                            let o = u32::from_le_bytes(input[..4].try_into().unwrap()) as usize;
                            assert_eq!(out, shadow_lsa[o..o + out.len()]);
                        }
                        opcode::GET_EVENT_INTERRUPT_POLICY => assert_eq!(out, policy),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// After a doorbell rung by a raw write, learn the policy back from the device.
fn policy_unknown(regs: &mut DeviceRegs, policy: &mut [u8; 4]) {
    let (rc, out) =
        regs.mailbox_mut()
            .execute(opcode::GET_EVENT_INTERRUPT_POLICY, &[], PAYLOAD_SIZE);
    assert_eq!(rc, ReturnCode::Success);
    policy.copy_from_slice(&out);
}

// ---------------------------------------------------------------------------------------------
// topology
// ---------------------------------------------------------------------------------------------

/// `topology`: TOML text through `Topology::from_toml` and `validate` (the machine builder's
/// limits). Errors are one line. A validated topology has every window placed, 256 MiB aligned,
/// inside the window area, clear of the reserved ranges and of each other, keeps explicit bases,
/// and validates again unchanged; it builds into a platform (files replaced by temporary ones)
/// or fails only on host resources (backings), and the built platform has every window,
/// function and BAR where the topology says, with nothing decoded yet.
pub fn topology(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut t = match Topology::from_toml(text) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
            return;
        }
    };
    let given = t.clone();
    let limits = rig::limits();
    if let Err(e) = t.validate(&limits) {
        assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
        return;
    }
    let mut placed: Vec<(u64, u64)> = Vec::new();
    for (w, g) in t.windows.iter().zip(&given.windows) {
        let base = w.base.expect("validated window has a base").0;
        if let Some(b) = g.base {
            assert_eq!(b.0, base, "explicit base moved");
        }
        let end = base.checked_add(w.size.0).expect("window end overflows");
        assert_eq!(base % CXL_UNIT, 0);
        assert!(base >= limits.window_min && end <= limits.window_max);
        for (s, e, what) in &limits.reserved {
            assert!(end <= *s || base >= *e, "window '{}' overlaps {what}", w.id);
        }
        for &(s, e) in &placed {
            assert!(
                end <= s || base >= e,
                "window '{}' overlaps another window",
                w.id
            );
        }
        placed.push((base, end));
    }
    // The machine builder's identity page tables cover RAM and every platform range.
    let mut mapped: Vec<(u64, u64)> = limits.reserved.iter().map(|r| (r.0, r.1 - r.0)).collect();
    mapped.extend(cxlvm_platform::planned_ranges(&t, &rig::LAYOUT));
    let plan = cxlvm_x86::paging::Plan::new(&mapped)
        .unwrap_or_else(|e| panic!("validated topology cannot be identity mapped: {e}"));
    let _ = plan.size();
    let mut again = t.clone();
    assert_eq!(
        again.validate(&limits),
        Ok(()),
        "validation is not idempotent"
    );
    assert_eq!(again, t, "second validation changed the topology");

    // Build it. Huge sparse capacities are fine as long as nothing touches them; skip what
    // would take long (a bus scan is 64 Ki look-ups per bridge).
    let files = match rig::open_files(&mut t) {
        Ok(f) => f,
        Err(e) => {
            assert!(e.is_user_error(), "file error that is not the user's: {e}");
            return;
        }
    };
    let space = Arc::new(std::sync::Mutex::new(AddressSpace::new(
        "fuzz",
        layout::MAX_GPA,
    )));
    let p = match CxlPlatform::build(
        &t,
        files,
        &space,
        rig::LAYOUT,
        OverlayOptions {
            vma_budget: 16,
            direct: true,
            fatal: Box::new(|e| panic!("overlay manager fatal error: {e}")),
        },
    ) {
        Ok(p) => p,
        // Host resources: the host refused to map that much device memory.
        Err(PlatformError::Backing(_) | PlatformError::DeviceMemory { .. }) => return,
        Err(e) => panic!("a validated topology failed to build: {e}"),
    };
    assert_eq!(p.regions.len(), t.regions.len(), "every region committed");
    assert_eq!(p.windows.len(), t.windows.len());
    assert_eq!(p.host_bridges.len(), t.host_bridges.len());
    assert_eq!(p.endpoints.len(), t.devices.len());
    let view = space.lock().unwrap().view();
    for (i, (wi, w)) in p.windows.iter().zip(&t.windows).enumerate() {
        assert_eq!((wi.base, wi.size), (w.base.unwrap().0, w.size.0));
        let r = view.lookup(wi.base).expect("window mapped");
        if t.regions.is_empty() {
            assert_eq!(
                &*r.name,
                format!("{}.decode", w.id),
                "window {i} at its base"
            );
        }
    }
    for w in view.ranges().windows(2) {
        assert!(w[0].end() <= w[1].start);
    }
    if t.regions.is_empty() {
        let g = p.fabric.graph();
        assert!(g.host_bridges.iter().all(|h| h.decoders.is_empty()));
        assert!(
            g.devices
                .iter()
                .all(|d| d.decoders.is_empty() && !d.decoding)
        );
        assert!(p.overlays.ranges().is_empty());
    }
    for ep in &p.endpoints {
        assert!(ep.bar_mapping(0).is_some() && ep.bar_mapping(2).is_some());
    }
    let ports: usize = t
        .host_bridges
        .iter()
        .map(|h| usize::from(h.root_ports))
        .sum();
    for rp in p.root_ports.iter().flatten() {
        assert!(rp.bar_mapping(0).is_some());
    }
    // Everything the ecam/hdm targets check after each guest operation, and the regions.
    drop(view);
    let devices = t.devices.len();
    let mut rig = Rig::from_platform(t, p, space, 16);
    assert_eq!(rig.check_functions(), ports + devices, "bus scan");
    rig.check_all();
    rig.check_regions();
}

/// The TOML of a topology generated from structured input (the `regions` target): up to 4 host
/// bridges (some passthrough) with devices of volatile and/or persistent capacity, up to 3
/// windows (modulo or XOR, any granularity), and up to 4 `[[region]]`s whose devices are
/// mostly in the positions the window's host bridges can reach (sometimes shuffled).
pub fn generate_topology(r: &mut Reader<'_>) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    let nhb = 1 + usize::from(r.u8() % 4);
    let mut devs: Vec<Vec<String>> = vec![Vec::new(); nhb];
    let mut n = 0;
    for (h, hb_devs) in devs.iter_mut().enumerate() {
        let f = r.u8();
        let ports = 1 + f % 4;
        let passthrough = ports == 1 && f & 0x10 != 0;
        let _ = writeln!(t, "[[host_bridge]]\nid = \"h{h}\"\nroot_ports = {ports}");
        if passthrough {
            t.push_str("passthrough = true\n");
        }
        if f & 0x20 != 0 {
            let _ = writeln!(t, "decoders = {}", [1, 2, 4, 8][usize::from(f >> 6)]);
        }
        for p in 0..ports {
            let d = r.u8();
            if d & 0x80 != 0 && p > 0 {
                continue; // empty root port
            }
            let (v, pm) = (u64::from(d & 3), u64::from(d >> 2 & 3));
            let v = if v == 0 && pm == 0 { 1 } else { v };
            let _ = writeln!(
                t,
                "[[device]]\nid = \"d{n}\"\nhost_bridge = \"h{h}\"\nroot_port = {p}"
            );
            if v > 0 {
                let _ = writeln!(t, "volatile = \"{}M\"", v * 256);
            }
            if pm > 0 {
                let _ = writeln!(
                    t,
                    "persistent = \"{}M\"\npersistent_file = \"p{n}\"",
                    pm * 256
                );
            }
            if d & 0x40 != 0 {
                let _ = writeln!(t, "decoders = {}", [1, 2, 4, 8][usize::from(d >> 4 & 3)]);
            }
            hb_devs.push(format!("d{n}"));
            n += 1;
        }
    }
    let nw = 1 + usize::from(r.u8() % 3);
    let mut windows: Vec<Vec<usize>> = Vec::new();
    let mut wbases: Vec<u64> = Vec::new();
    let mut next_base = layout::CXL_WINDOW_MIN;
    for w in 0..nw {
        let f = r.u8();
        let ways = [1usize, 2, 3, 4][usize::from(f % 4)].min(nhb);
        let first = usize::from(f >> 2) % nhb;
        let targets: Vec<usize> = (0..ways).map(|i| (first + i) % nhb).collect();
        let g = r.u8();
        let size = ways as u64 * 256 * (1 + u64::from(g >> 4 & 7));
        let names: Vec<String> = targets.iter().map(|h| format!("\"h{h}\"")).collect();
        let _ = writeln!(
            t,
            "[[window]]\nid = \"w{w}\"\nsize = \"{size}M\"\ntargets = [{}]\ngranularity = {}",
            names.join(", "),
            256u64 << (g % 7)
        );
        if g & 0x80 != 0 {
            t.push_str("arithmetic = \"xor\"\n");
        }
        windows.push(targets);
        wbases.push(next_base);
        next_base += size << 20;
    }
    for i in 0..usize::from(r.u8() % 5) {
        let f = r.u8();
        let wi = usize::from(f % 4) % nw;
        let targets = &windows[wi];
        let k = [1usize, 2, 4, 1][usize::from(f >> 2 & 3)];
        let rot = usize::from(r.u8());
        let mut list = Vec::new();
        for p in 0..targets.len() * k {
            let hb = &devs[targets[p % targets.len()]];
            if hb.is_empty() {
                continue;
            }
            list.push(format!("\"{}\"", hb[(p / targets.len() + rot) % hb.len()]));
        }
        if f & 0x10 != 0 && list.len() > 1 {
            list.rotate_left(1); // usually a position error
        }
        let g = r.u8();
        let size = list.len().max(1) as u64 * 256 * (1 + u64::from(g >> 6));
        let _ = writeln!(
            t,
            "[[region]]\nid = \"r{i}\"\nwindow = \"w{wi}\"\ndevices = [{}]\nsize = \"{size}M\"",
            list.join(", ")
        );
        if g & 0x08 != 0 {
            let _ = writeln!(t, "granularity = {}", 256u64 << (g % 7));
        }
        if g & 0x10 != 0 {
            t.push_str("persistent = true\n");
        }
        if g & 0x20 != 0 {
            t.push_str("lock = false\n");
        }
        if f & 0x20 != 0 {
            // An explicit base, some steps of 256 MiB × window ways into the window (windows
            // without a base are packed from 1 TiB in order).
            let step = u64::from(f >> 6) * 256 * targets.len() as u64;
            let _ = writeln!(t, "base = {:#x}", wbases[wi] + (step << 20));
        }
    }
    t
}

/// `regions`: topologies generated from structured input ([`generate_topology`]), mostly with
/// firmware-committed regions that validate, through everything the `topology` target checks:
/// the build commits every region, every invariant of the `hdm` target holds on the result, and
/// each region decodes as Linux expects (see `Rig::check_regions`).
pub fn regions(data: &[u8]) {
    let mut r = Reader::new(data);
    let toml = generate_topology(&mut r);
    topology(toml.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// elf
// ---------------------------------------------------------------------------------------------

/// `elf`: the guest ELF checks. An accepted image has loadable segments whose file bytes lie in
/// the file (the loader's slice cannot panic), file size ≤ memory size, the entry inside a
/// segment, start/end bounding every segment; when it passes the machine builder's placement
/// check every segment lies inside the RAM it was checked against. Parsing is deterministic.
pub fn elf(data: &[u8]) {
    let Ok(img) = elf::parse(data) else { return };
    assert!(!img.segments.is_empty());
    for s in &img.segments {
        assert!(s.mem_size > 0 && s.file_size <= s.mem_size, "{s:?}");
        let end = s
            .file_offset
            .checked_add(s.file_size)
            .expect("file range overflows");
        assert!(end <= data.len() as u64, "segment outside the file: {s:?}");
        // The loader's copy (crates/vmm machine.rs).
        let bytes = &data[s.file_offset as usize..(s.file_offset + s.file_size) as usize];
        assert_eq!(bytes.len() as u64, s.file_size);
        assert!(img.start() <= s.paddr && s.end() <= img.end());
    }
    assert!(
        img.segments
            .iter()
            .any(|s| img.entry >= s.paddr && img.entry < s.end()),
        "entry outside the segments"
    );
    let top = layout::LOW_RAM_MAX;
    if img.start() >= layout::IMAGE_MIN && img.end() <= top {
        for s in &img.segments {
            let end = s.paddr.checked_add(s.mem_size).expect("segment wraps");
            assert!(s.paddr >= layout::IMAGE_MIN && end <= top, "{s:?}");
        }
    }
    assert_eq!(elf::parse(data), Ok(img));
}

/// The test harness re-runs inputs through these (tests/replay.rs).
pub fn by_name(name: &str) -> Option<fn(&[u8])> {
    Some(match name {
        "ecam" => ecam,
        "hdm" => hdm,
        "mailbox" => mailbox,
        "window" => window,
        "topology" => topology,
        "regions" => regions,
        "elf" => elf,
        "emulate" => crate::emulate::emulate,
        _ => return None,
    })
}
