//! Writes the seed corpora of the structured targets (`ecam`, `hdm`, `window`, `mailbox`, `elf`)
//! into `fuzz/corpus/<target>/seed-*`: `cargo run --example seeds` from `fuzz/`. The `topology`
//! seeds are plain TOML files kept by hand.

use std::path::Path;

use cxlvm_cxl::mailbox::{CEL_UUID, opcode};
use cxlvm_fuzz::ops::{ECAM_OPS, HDM_OPS, Kind, Op, RegionArgs};
use cxlvm_fuzz::reader::Writer;

fn ops(budget: u8, ops: &[Op], table: &[Kind]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(budget);
    for op in ops {
        op.encode(&mut w, table);
    }
    w.0
}

fn region(win: u8, k: u8, gran: u8) -> RegionArgs {
    RegionArgs {
        win,
        k,
        gran,
        enable: true,
        ..RegionArgs::default()
    }
}

fn win_rw(win: u8, off: u64, width: u8) -> Op {
    Op::Window {
        win,
        off,
        width,
        write: true,
        val: 0x0123_4567_89ab_cdef,
    }
}

fn hdm_seeds() -> Vec<Vec<u8>> {
    let t = HDM_OPS;
    vec![
        // 1-way region behind the passthrough host bridge: one linear range; then traffic,
        // uncommit top-down, disable/enable direct mappings.
        ops(
            6,
            &[
                Op::Region(RegionArgs {
                    offset: 1,
                    ..region(1, 0, 9)
                }),
                win_rw(1, 0x1000_1000, 3),
                Op::Direct(false),
                win_rw(1, 0x2000, 2),
                Op::Direct(true),
                Op::Uncommit { comp: 10, n: 9 },
                Op::Region(RegionArgs {
                    win: 1,
                    units: 1,
                    offset: 2,
                    skip: 1,
                    enable: true,
                    ..RegionArgs::default()
                }),
            ],
            t,
        ),
        // 2-way across host bridges at 4 KiB (131072 pieces: over budget, MMIO).
        ops(
            0,
            &[
                Op::Region(region(0, 0, 9)),
                win_rw(0, 0xfff, 3),
                Op::HdmGlobal { comp: 11, val: 0 },
                Op::HdmGlobal { comp: 11, val: 2 },
            ],
            t,
        ),
        // 2 devices under hb0 at 16 KiB on w3: interleaved, stitched with the large budget.
        ops(
            0,
            &[
                Op::Region(region(3, 1, 6)),
                win_rw(3, 0x4000, 4),
                Op::MemEnable { dev: 1, val: 2 },
                Op::MemEnable { dev: 1, val: 6 },
            ],
            t,
        ),
        // The XOR window, then a secondary bus reset of the first root port.
        ops(
            11,
            &[
                Op::Region(region(2, 0, 9)),
                win_rw(2, 0x100, 1),
                Op::BridgeControl { func: 0, val: 0x40 },
                Op::BridgeControl { func: 0, val: 0 },
            ],
            t,
        ),
        // Raw decoder programming: m0 (component 8) with HDM enable, and hb0's CHBCR.
        ops(
            6,
            &[
                Op::HdmGlobal { comp: 8, val: 2 },
                Op::MemEnable { dev: 0, val: 6 },
                Op::Decoder {
                    comp: 8,
                    n: 0,
                    base_units: 0,
                    size_units: 1,
                    ctrl: 0x1000,
                    tl: 0,
                },
                Op::Decoder {
                    comp: 0,
                    n: 0,
                    base_units: 0,
                    size_units: 1,
                    ctrl: 0x1000,
                    tl: 0,
                },
                Op::CompRead {
                    comp: 0,
                    off: 0x230,
                    width: 3,
                },
                Op::CompWrite {
                    comp: 8,
                    off: 0x220,
                    width: 2,
                    val: 0,
                },
                Op::Command { func: 5, val: 0 },
            ],
            t,
        ),
    ]
}

fn ecam_seeds() -> Vec<Vec<u8>> {
    let t = ECAM_OPS;
    vec![
        // Config reads of every function position, BAR sizing and moving.
        ops(
            6,
            &[
                Op::CfgRead {
                    bus: 0x10,
                    devfn: 0,
                    off: 0,
                    width: 2,
                },
                Op::CfgRead {
                    bus: 0x11,
                    devfn: 0,
                    off: 0x100,
                    width: 3,
                },
                Op::Bar {
                    func: 5,
                    bar: 0,
                    val: 1 << 63 | 0xffff_ffff_ffff_fff0,
                },
                Op::Bar {
                    func: 5,
                    bar: 0,
                    val: 0x20_0000,
                },
                Op::Bar {
                    func: 5,
                    bar: 2,
                    val: 0x40_0000,
                },
                Op::Command { func: 5, val: 0 },
                Op::Command { func: 5, val: 6 },
            ],
            t,
        ),
        // Renumber buses, commit a region, clear Mem_Enable and memory space.
        ops(
            6,
            &[
                Op::Region(RegionArgs {
                    offset: 1,
                    ..region(1, 0, 9)
                }),
                Op::BusNumbers {
                    func: 2,
                    pri: 0x30,
                    sec: 0x40,
                    sub: 0x41,
                },
                Op::MemEnable { dev: 2, val: 2 },
                Op::MemEnable { dev: 2, val: 6 },
                Op::Command { func: 2, val: 0 },
                Op::Command { func: 2, val: 6 },
            ],
            t,
        ),
        // Secondary bus reset while a region is committed; DVSEC writes.
        ops(
            11,
            &[
                Op::Region(region(3, 1, 6)),
                Op::BridgeControl { func: 0, val: 0x40 },
                Op::CfgRead {
                    bus: 0x11,
                    devfn: 0,
                    off: 0,
                    width: 2,
                },
                Op::BridgeControl { func: 0, val: 0 },
                Op::FnWrite {
                    func: 5,
                    off: 0x8000 | 0x10c,
                    width: 1,
                    val: 0xffff,
                },
            ],
            t,
        ),
        // Raw writes all over the header of each root port.
        ops(
            1,
            &(0..5u8)
                .map(|i| Op::FnWrite {
                    func: i,
                    off: u16::from(i) * 4,
                    width: 3,
                    val: u64::MAX,
                })
                .collect::<Vec<_>>(),
            t,
        ),
    ]
}

fn window_seed(
    hdr: u8,
    g0: u8,
    g1: u8,
    regions: &[RegionArgs],
    accesses: &[(u8, u64, u8, u8)],
) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(hdr).u8(g0).u8(g1).u8(regions.len() as u8);
    for r in regions {
        r.encode(&mut w);
    }
    for &(win, raw, width, mode) in accesses {
        w.u8(win)
            .u64(raw)
            .u8(width)
            .u8(mode)
            .u64(0xfeed_f00d_dead_beef);
    }
    w.0
}

fn window_seeds() -> Vec<Vec<u8>> {
    // raw: bits 63:62 pick the unit (1, 256, 4K, 256M), 39:32 a signed delta, 31:0 the index.
    let edge = |unit: u64, idx: u64, delta: i8| unit << 62 | u64::from(delta as u8) << 32 | idx;
    vec![
        // Modulo 2-way at 4 KiB with a 4-device region, accesses across granule edges.
        window_seed(
            6,
            4,
            4,
            &[region(0, 1, 9)],
            &[
                (0, edge(2, 1, -2), 2, 1),
                (0, edge(1, 3, -4), 3, 3),
                (0, edge(2, 7, 0), 5, 1),
                (0, edge(0, 12345, 0), 7, 0),
                (1, edge(3, 1, -1), 1, 1),
            ],
        ),
        // XOR 2-way at 256 B plus a 1-way region on w1 (linear).
        window_seed(
            0x86,
            0,
            6,
            &[region(0, 0, 9), region(1, 0, 9)],
            &[
                (0, edge(1, 1, -3), 3, 1),
                (0, edge(1, 2, 0), 4, 3),
                (1, edge(2, 5, -8), 7, 1),
                (1, edge(3, 2, -1), 0, 2),
            ],
        ),
        // Persistent-only device interleaved with a volatile one, 16 KiB, stitched.
        window_seed(
            0,
            6,
            6,
            &[RegionArgs {
                win: 0,
                k: 0,
                rot: 1,
                gran: 9,
                units: 0,
                enable: true,
                ..RegionArgs::default()
            }],
            &[(0, edge(2, 4, -1), 3, 1), (0, edge(3, 1, 0), 7, 3)],
        ),
        // Nothing committed: everything unclaimed.
        window_seed(1, 2, 2, &[], &[(0, 0, 3, 1), (1, edge(2, 9, 3), 6, 3)]),
    ]
}

struct Mb(Writer);

impl Mb {
    fn new(hdr: u8) -> Self {
        let mut w = Writer::default();
        w.u8(hdr);
        Mb(w)
    }
    /// A command through the registers: op by value, input at payload offset 0.
    fn cmd(&mut self, op: u16, input: &[u8], len: Option<u32>) -> &mut Self {
        let len = len.unwrap_or(input.len() as u32);
        self.0
            .u8(0)
            .u16(0x8000)
            .u16(op)
            .u32(len)
            .u16(0)
            .u8(input.len() as u8)
            .bytes(input)
            .u8(0)
            .u8(0);
        self
    }
    fn raw(&mut self, off: u16, width: u8, val: u64, write: bool) -> &mut Self {
        self.0.u8(4).u16(off).u8(width).u64(val).bool(write);
        self
    }
}

fn mailbox_seeds() -> Vec<Vec<u8>> {
    let mut log = CEL_UUID.to_vec();
    log.extend_from_slice(&0u32.to_le_bytes());
    log.extend_from_slice(&0x20u32.to_le_bytes());
    let mut set_lsa = 0x100u32.to_le_bytes().to_vec();
    set_lsa.extend_from_slice(&[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    let mut get_lsa = 0xfcu32.to_le_bytes().to_vec();
    get_lsa.extend_from_slice(&16u32.to_le_bytes());
    vec![
        // Linux's probe: supported logs, the CEL, identify, partition info, health, events.
        Mb::new(0x12)
            .cmd(opcode::GET_SUPPORTED_LOGS, &[], None)
            .cmd(opcode::GET_LOG, &log, None)
            .cmd(opcode::IDENTIFY_MEMORY_DEVICE, &[], None)
            .cmd(opcode::GET_PARTITION_INFO, &[], None)
            .cmd(opcode::GET_HEALTH_INFO, &[], None)
            .cmd(opcode::GET_EVENT_RECORDS, &[1], None)
            .cmd(opcode::CLEAR_EVENT_RECORDS, &[0, 1, 0, 0, 0, 0], None)
            .cmd(opcode::GET_FW_INFO, &[], None)
            .0
            .0
            .clone(),
        // Label storage round trip, policy, timestamp.
        Mb::new(0x31)
            .cmd(opcode::SET_LSA, &set_lsa, None)
            .cmd(opcode::GET_LSA, &get_lsa, None)
            .cmd(opcode::SET_EVENT_INTERRUPT_POLICY, &[1, 0x12, 2, 0], None)
            .cmd(opcode::GET_EVENT_INTERRUPT_POLICY, &[], None)
            .cmd(opcode::SET_TIMESTAMP, &1_000_000u64.to_le_bytes(), None)
            .cmd(opcode::GET_TIMESTAMP, &[], None)
            .0
            .0
            .clone(),
        // Bad lengths and unknown opcodes, raw register traffic, a reset.
        Mb::new(0x02)
            .cmd(opcode::GET_TIMESTAMP, &[], Some(2049))
            .cmd(0x4300, &[], None)
            .cmd(opcode::GET_LSA, &get_lsa, None)
            .raw(0x08, 3, 0x0300_0000_0000, true)
            .raw(0x04, 0, 1, true)
            .raw(0x8000 | 0x7ff8, 3, u64::MAX, true)
            .0
            .u8(6)
            .0
            .clone(),
    ]
}

/// A minimal static x86-64 executable: `segments` PT_LOADs of (paddr, file size, mem size).
fn elf_image(entry: u64, segments: &[(u64, u64, u64)], extra: &[u32]) -> Vec<u8> {
    let phnum = segments.len() + extra.len();
    let data_at = 64 + 56 * phnum;
    let mut f = vec![0u8; data_at];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes());
    f[18..20].copy_from_slice(&62u16.to_le_bytes());
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&entry.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes());
    f[52..54].copy_from_slice(&64u16.to_le_bytes());
    f[54..56].copy_from_slice(&56u16.to_le_bytes());
    f[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    let mut file_off = data_at as u64;
    for (i, &(paddr, filesz, memsz)) in segments.iter().enumerate() {
        let ph = 64 + 56 * i;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        f[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&file_off.to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        f[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        file_off += filesz;
    }
    for (j, &pt) in extra.iter().enumerate() {
        let ph = 64 + 56 * (segments.len() + j);
        f[ph..ph + 4].copy_from_slice(&pt.to_le_bytes());
    }
    let body: u64 = segments.iter().map(|s| s.1).sum();
    f.extend((0..body).map(|i| 0xcc ^ i as u8));
    f
}

fn elf_seeds() -> Vec<Vec<u8>> {
    vec![
        elf_image(0x20_0000, &[(0x20_0000, 16, 0x1000)], &[]),
        elf_image(
            0x20_1000,
            &[(0x20_0000, 32, 0x1000), (0x20_1000, 48, 0x3000)],
            &[4, 0x6474_e551],
        ),
        elf_image(0x10_0000, &[(0x10_0000, 0, 0x10), (0x40_0000, 8, 8)], &[3]),
    ]
}

fn write(target: &str, seeds: Vec<Vec<u8>>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
    }
    println!("{target}: {} seeds", seeds.len());
}

fn regions_seeds() -> Vec<Vec<u8>> {
    // Byte layout: see cxlvm_fuzz::targets::generate_topology.
    vec![
        // 2 host bridges × 2 devices of 512 MiB, a 2-way 4 KiB window, one 4-device region.
        vec![1, 1, 2, 2, 1, 2, 2, 0, 0x01, 0x35, 1, 0x04, 0, 0],
        // The same over an XOR window.
        vec![1, 1, 2, 2, 1, 2, 2, 0, 0x01, 0xb3, 1, 0x04, 0, 0],
        // Passthrough host bridge, persistent capacity, three windows and regions (one
        // persistent, one at an explicit base with its own granularity), an empty root port.
        vec![
            2, 1, 6, 2, 0x10, 5, 0x21, 1, 0x81, 2, 0x01, 0x35, 0x04, 0x10, 0x08, 0x20, 3, 0x00, 0,
            0x00, 0x01, 0, 0x10, 0x22, 0, 0x0b,
        ],
    ]
}

fn main() {
    write("regions", regions_seeds());
    write("hdm", hdm_seeds());
    write("ecam", ecam_seeds());
    write("window", window_seeds());
    write("mailbox", mailbox_seeds());
    write("elf", elf_seeds());
}
