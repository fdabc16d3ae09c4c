//! Random register traffic: never panics, and the committed decoders always satisfy the
//! invariants (ordered prefix, aligned, ascending without overlap, valid and allowed encodings,
//! existing targets, DPA within capacity, range allowed). `HdmChange::Decoding` is returned
//! exactly when the decoding state changed.

use cxlvm_cxl::hdm::{
    CTRL_COMMIT, CTRL_COMMITTED, CommitEnv, CommittedDecoder, DecoderTargets, HDM_UNIT, HdmBlock,
    HdmCaps, HdmChange, HdmKind, StaticEnv,
};
use cxlvm_cxl::interleave::{Granularity, Ways};

const WIN: u64 = 0x40_0000_0000;
const WIN_SIZE: u64 = 64 << 30;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn env() -> StaticEnv {
    StaticEnv {
        windows: vec![(WIN, WIN_SIZE)],
        ports: vec![0, 1, 2, 5, 7],
        capacity: 6 << 30,
    }
}

fn check_invariants(b: &HdmBlock, e: &StaticEnv) {
    let c = b.committed();
    assert_eq!(c, b.committed(), "committed() must be pure");
    let caps = *b.caps();
    let mut dpa_next = 0u64;
    let mut end = 0u64;
    for (i, d) in c.iter().enumerate() {
        assert_eq!(d.index, i, "committed decoders form a prefix");
        assert!(d.size > 0);
        assert_eq!(d.base % HDM_UNIT, 0);
        assert_eq!(d.size % (HDM_UNIT * u64::from(d.ways.count())), 0);
        let d_end = d.base.checked_add(d.size).expect("no overflow");
        assert!(d.base >= end, "ascending, non-overlapping");
        end = d_end;
        assert!(caps.check_interleave(b.kind(), d.ways, d.gran).is_ok());
        assert!(e.range_allowed(d.base, d.size));
        match b.kind() {
            HdmKind::Port => {
                assert_eq!(d.targets.len(), d.ways.count() as usize);
                assert!(d.targets.iter().all(|&p| e.target_exists(p)));
                assert_eq!((d.dpa_base, d.dpa_skip), (0, 0));
            }
            HdmKind::Endpoint => {
                assert!(d.targets.is_empty());
                assert_eq!(d.dpa_skip % HDM_UNIT, 0);
                assert_eq!(d.dpa_base, dpa_next + d.dpa_skip);
                dpa_next = d.dpa_base + d.dpa_size();
                assert!(dpa_next <= e.dpa_capacity());
            }
        }
    }
    for n in 0..b.decoder_count() {
        let mut ctrl = [0u8; 4];
        b.read(0x20 + 0x20 * n, &mut ctrl);
        let committed = u32::from_le_bytes(ctrl) & CTRL_COMMITTED != 0;
        assert_eq!(
            committed,
            n < c.len(),
            "Committed bit agrees with committed()"
        );
        assert_eq!(b.is_committed(n), committed);
    }
}

/// A value for dword `reg` of a decoder, biased towards useful programming.
fn value(rng: &mut Rng, reg: usize) -> u32 {
    if rng.chance(10) {
        return rng.next() as u32;
    }
    let addr = WIN + rng.below(80) * HDM_UNIT;
    let size = rng.below(40) * HDM_UNIT;
    match reg {
        0x00 => addr as u32,
        0x04 => (addr >> 32) as u32,
        0x08 => size as u32,
        0x0C => (size >> 32) as u32,
        0x10 => {
            let iw = [0u32, 1, 2, 3, 4, 8, 9, 10, 5][rng.below(9) as usize];
            let ig = rng.below(8) as u32;
            let mut v = ig | iw << 4 | 1 << 12;
            if rng.chance(85) {
                v |= CTRL_COMMIT;
            }
            if rng.chance(5) {
                v |= 1 << 8;
            }
            v
        }
        0x14 => {
            let ports = [0u8, 1, 2, 5, 7, 3];
            let mut v = 0u32;
            for i in 0..4 {
                v |= u32::from(ports[rng.below(6) as usize]) << (8 * i);
            }
            if rng.chance(50) {
                v
            } else {
                (rng.below(8) as u32) << 28
            }
        }
        0x18 => {
            if rng.chance(80) {
                0
            } else {
                rng.next() as u32
            }
        }
        _ => rng.next() as u32,
    }
}

fn run(kind: HdmKind, caps: HdmCaps, seed: u64, ops: usize) {
    let e = env();
    let mut rng = Rng(seed);
    let mut b = HdmBlock::new(kind, caps);
    let len = b.len();
    let state =
        |b: &HdmBlock| -> (Vec<CommittedDecoder>, bool) { (b.committed(), b.global_enable()) };
    let mut committed_seen = 0usize;
    for _ in 0..ops {
        let before = state(&b);
        let roll = rng.below(1000);
        if roll < 3 {
            b.reset();
        } else if roll < 60 {
            // A coherent Linux-style programming sequence through the registers, usually on
            // the next free decoder, usually above the highest committed range.
            let c = b.committed();
            let n = if rng.chance(80) {
                c.len()
            } else {
                rng.below(b.decoder_count() as u64) as usize
            };
            let ways = [Ways::X1, Ways::X2, Ways::X4, Ways::X3][rng.below(4) as usize];
            let gran = Granularity::ALL[rng.below(7) as usize];
            let start = c.last().map_or(WIN, |d| d.base + d.size);
            let base = start + rng.below(3) * HDM_UNIT;
            let size = u64::from(ways.count()) * HDM_UNIT * (1 + rng.below(3));
            let tl: u64 = match kind {
                HdmKind::Port => (0..4).fold(0, |acc, i| {
                    acc | u64::from([0u8, 1, 2, 5, 7][rng.below(5) as usize]) << (8 * i)
                }),
                HdmKind::Endpoint => rng.below(2) * HDM_UNIT,
            };
            let regs = [
                (0x04, (base >> 32) as u32),
                (0x00, base as u32),
                (0x0C, (size >> 32) as u32),
                (0x08, size as u32),
                (0x18, (tl >> 32) as u32),
                (0x14, tl as u32),
            ];
            for (reg, v) in regs {
                b.write(0x10 + 0x20 * n + reg, &v.to_le_bytes(), &e);
            }
            let ctrl = u32::from(gran.enc()) | u32::from(ways.enc()) << 4 | 1 << 12 | CTRL_COMMIT;
            b.write(0x20 + 0x20 * n, &ctrl.to_le_bytes(), &e);
        } else if roll < 80 {
            let n = rng.below(b.decoder_count() as u64 + 1) as usize;
            let ways = Ways::ALL[rng.below(8) as usize];
            let gran = Granularity::ALL[rng.below(7) as usize];
            let base = WIN + rng.below(80) * HDM_UNIT;
            let size = rng.below(24) * HDM_UNIT;
            let ports: Vec<u8> = (0..ways.count())
                .map(|_| [0u8, 1, 2, 5, 7][rng.below(5) as usize])
                .collect();
            let t = match kind {
                HdmKind::Port => DecoderTargets::Ports(&ports),
                HdmKind::Endpoint => DecoderTargets::DpaSkip(rng.below(3) * HDM_UNIT),
            };
            let _ = b.program(n, base, size, ways, gran, t, &e);
        } else {
            // Mostly aligned dword writes to decoder registers; sometimes anything.
            let (off, data): (usize, Vec<u8>) = if rng.chance(85) {
                let n = rng.below(b.decoder_count() as u64) as usize;
                let reg = 4 * rng.below(8) as usize;
                let off = if rng.chance(3) {
                    0x04
                } else {
                    0x10 + 0x20 * n + reg
                };
                (off, value(&mut rng, reg).to_le_bytes().to_vec())
            } else {
                let size = [1usize, 2, 4, 8, 3][rng.below(5) as usize];
                let off = rng.below(len as u64 + 16) as usize;
                let bytes = rng.next().to_le_bytes();
                (off, bytes[..size].to_vec())
            };
            let change = b.write(off, &data, &e);
            let after = state(&b);
            assert_eq!(
                change == HdmChange::Decoding,
                before != after,
                "HdmChange must report exactly the decoding changes (write {off:#x} {data:x?})"
            );
            let mut sink = vec![0u8; data.len()];
            b.read(off, &mut sink);
        }
        check_invariants(&b, &e);
        committed_seen = committed_seen.max(b.committed().len());
    }
    assert!(
        committed_seen >= 3.min(b.decoder_count()),
        "the fuzz should reach multi-decoder states (max {committed_seen})"
    );
}

#[test]
fn random_endpoint_writes_keep_invariants() {
    for seed in 1..=4u64 {
        run(
            HdmKind::Endpoint,
            HdmCaps::endpoint(4),
            seed * 0x9E37_79B9,
            10_000,
        );
    }
    let caps = HdmCaps {
        a11to8: false,
        ways_16: false,
        ..HdmCaps::endpoint(2)
    };
    run(HdmKind::Endpoint, caps, 77, 10_000);
}

#[test]
fn random_port_writes_keep_invariants() {
    for seed in 1..=4u64 {
        run(
            HdmKind::Port,
            HdmCaps::port(4, 4),
            seed * 0x5851_F42D,
            10_000,
        );
    }
    let caps = HdmCaps {
        ways_3_6_12: true,
        ..HdmCaps::port(8, 8)
    };
    run(HdmKind::Port, caps, 99, 10_000);
}

#[test]
fn random_bytes_anywhere_never_panic() {
    let e = env();
    let mut rng = Rng(0xC0FF_EE00_D15E_A5E5);
    for kind in [HdmKind::Endpoint, HdmKind::Port] {
        let mut b = HdmBlock::new(
            kind,
            HdmCaps {
                target_count: 8,
                ..HdmCaps::endpoint(16)
            },
        );
        for _ in 0..10_000 {
            let size = rng.below(9) as usize;
            let off = match rng.below(3) {
                0 => rng.below(b.len() as u64 + 8) as usize,
                1 => usize::MAX - rng.below(8) as usize,
                _ => rng.next() as usize,
            };
            let bytes = rng.next().to_le_bytes();
            b.write(off, &bytes[..size], &e);
            let mut out = vec![0u8; size];
            b.read(off, &mut out);
            check_invariants(&b, &e);
        }
    }
}
