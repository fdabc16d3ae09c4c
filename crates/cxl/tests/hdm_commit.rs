//! HDM decoder register semantics and commit validation, one test per rule.

use cxlvm_cxl::hdm::{
    CTRL_COMMIT, CTRL_COMMITTED, CTRL_ERR_NOT_COMMITTED, CTRL_HOST_ONLY, CTRL_LOCK_ON_COMMIT,
    CommitError, DEC_BASE_HI, DEC_BASE_LO, DEC_CTRL, DEC_SIZE_HI, DEC_SIZE_LO, DEC_TL_HI,
    DEC_TL_LO, DecoderTargets, HDM_CAP, HDM_GLOBAL_CTRL, HDM_UNIT, HdmBlock, HdmCaps, HdmChange,
    HdmKind, StaticEnv,
};
use cxlvm_cxl::interleave::{Granularity, Ways};

const WIN: u64 = 0x10_0000_0000; // 64 GiB
const WIN_SIZE: u64 = 0x10_0000_0000;
const GIB: u64 = 1 << 30;

fn env() -> StaticEnv {
    StaticEnv {
        windows: vec![(WIN, WIN_SIZE)],
        ports: (1..=8).collect(),
        capacity: 4 * GIB,
    }
}

fn endpoint() -> HdmBlock {
    HdmBlock::new(HdmKind::Endpoint, HdmCaps::endpoint(4))
}

fn port() -> HdmBlock {
    HdmBlock::new(HdmKind::Port, HdmCaps::port(4, 4))
}

fn dec(n: usize, reg: usize) -> usize {
    0x10 + 0x20 * n + reg
}

fn r32(b: &HdmBlock, off: usize) -> u32 {
    let mut d = [0u8; 4];
    b.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w32(b: &mut HdmBlock, off: usize, v: u32, env: &StaticEnv) -> HdmChange {
    b.write(off, &v.to_le_bytes(), env)
}

fn ctrl(ways: Ways, gran: Granularity) -> u32 {
    u32::from(gran.enc()) | u32::from(ways.enc()) << 4 | CTRL_HOST_ONLY
}

/// Programs decoder `n` the way Linux does (base hi/lo, size hi/lo, TL/skip hi/lo), without
/// touching Control.
fn setup(b: &mut HdmBlock, n: usize, base: u64, size: u64, tl: u64, env: &StaticEnv) {
    w32(b, dec(n, DEC_BASE_HI), (base >> 32) as u32, env);
    w32(b, dec(n, DEC_BASE_LO), base as u32, env);
    w32(b, dec(n, DEC_SIZE_HI), (size >> 32) as u32, env);
    w32(b, dec(n, DEC_SIZE_LO), size as u32, env);
    w32(b, dec(n, DEC_TL_HI), (tl >> 32) as u32, env);
    w32(b, dec(n, DEC_TL_LO), tl as u32, env);
}

/// Programs and commits decoder `n`; returns the change and the Control readback.
#[allow(clippy::too_many_arguments)]
fn commit(
    b: &mut HdmBlock,
    n: usize,
    base: u64,
    size: u64,
    ways: Ways,
    gran: Granularity,
    tl: u64,
    env: &StaticEnv,
) -> (HdmChange, u32) {
    setup(b, n, base, size, tl, env);
    let ch = w32(b, dec(n, DEC_CTRL), ctrl(ways, gran) | CTRL_COMMIT, env);
    (ch, r32(b, dec(n, DEC_CTRL)))
}

/// Asserts that decoder `n` failed to commit with `err`.
fn assert_failed(b: &HdmBlock, n: usize, err: CommitError) {
    let c = r32(b, dec(n, DEC_CTRL));
    assert_eq!(c & CTRL_COMMITTED, 0, "ctrl {c:#x}");
    assert_ne!(c & CTRL_ERR_NOT_COMMITTED, 0, "ctrl {c:#x}");
    assert_eq!(b.last_error(n), Some(&err));
    assert!(!b.is_committed(n));
}

fn assert_committed(b: &HdmBlock, n: usize) {
    let c = r32(b, dec(n, DEC_CTRL));
    assert_ne!(
        c & CTRL_COMMITTED,
        0,
        "ctrl {c:#x}, error {:?}",
        b.last_error(n)
    );
    assert_eq!(c & CTRL_ERR_NOT_COMMITTED, 0);
    assert!(b.is_committed(n));
}

#[test]
fn power_on_state_reads_zero() {
    for b in [endpoint(), port()] {
        assert_eq!(b.len(), 0x10 + 0x20 * 4);
        for off in (4..b.len()).step_by(4) {
            assert_eq!(r32(&b, off), 0, "offset {off:#x}");
        }
        assert!(b.committed().is_empty());
        assert!(!b.global_enable());
    }
}

#[test]
fn capability_register_encodes_caps() {
    let b = endpoint();
    // 4 decoders (enc 2), target count 0, A11to8, A14to12, 3/6/12, 16.
    assert_eq!(r32(&b, HDM_CAP), 0x2 | 1 << 8 | 1 << 9 | 1 << 11 | 1 << 12);
    let b = port();
    assert_eq!(r32(&b, HDM_CAP), 0x2 | 4 << 4 | 1 << 8 | 1 << 9);
    let caps = HdmCaps {
        decoders: 10,
        target_count: 8,
        a11to8: false,
        a14to12: true,
        ways_3_6_12: false,
        ways_16: false,
    };
    let b = HdmBlock::new(HdmKind::Port, caps);
    assert_eq!(r32(&b, HDM_CAP), 0x5 | 8 << 4 | 1 << 9);
    assert_eq!(b.len(), 0x10 + 0x20 * 10);
    assert_eq!(
        HdmBlock::new(HdmKind::Port, HdmCaps::port(1, 1)).len(),
        0x30
    );
}

#[test]
fn invalid_caps_are_reported_or_normalized() {
    assert!(HdmBlock::try_new(HdmKind::Endpoint, HdmCaps::endpoint(3)).is_err());
    assert!(HdmBlock::try_new(HdmKind::Port, HdmCaps::port(4, 0)).is_err());
    assert!(HdmBlock::try_new(HdmKind::Port, HdmCaps::port(4, 9)).is_err());
    assert!(HdmBlock::try_new(HdmKind::Endpoint, HdmCaps::port(4, 1)).is_err());
    let b = HdmBlock::new(HdmKind::Port, HdmCaps::port(3, 0));
    assert_eq!(b.decoder_count(), 2);
    assert_eq!(b.caps().target_count, 1);
    assert_eq!(
        HdmBlock::new(HdmKind::Endpoint, HdmCaps::endpoint(0)).decoder_count(),
        1
    );
    assert_eq!(
        HdmBlock::new(HdmKind::Endpoint, HdmCaps::endpoint(99)).decoder_count(),
        16
    );
}

#[test]
fn capability_register_is_read_only() {
    let e = env();
    let mut b = endpoint();
    let before = r32(&b, HDM_CAP);
    assert_eq!(w32(&mut b, HDM_CAP, 0xFFFF_FFFF, &e), HdmChange::None);
    assert_eq!(w32(&mut b, HDM_CAP, 0, &e), HdmChange::None);
    assert_eq!(r32(&b, HDM_CAP), before);
}

#[test]
fn global_control_mask_and_change() {
    let e = env();
    let mut b = endpoint();
    assert_eq!(
        w32(&mut b, HDM_GLOBAL_CTRL, 0xFFFF_FFFF, &e),
        HdmChange::Decoding
    );
    assert_eq!(r32(&b, HDM_GLOBAL_CTRL), 0x3);
    assert!(b.global_enable());
    assert_eq!(w32(&mut b, HDM_GLOBAL_CTRL, 0x3, &e), HdmChange::None);
    // Poison enable alone does not change decoding.
    assert_eq!(w32(&mut b, HDM_GLOBAL_CTRL, 0x2, &e), HdmChange::None);
    assert_eq!(r32(&b, HDM_GLOBAL_CTRL), 0x2);
    assert_eq!(w32(&mut b, HDM_GLOBAL_CTRL, 0x1, &e), HdmChange::Decoding);
    assert!(!b.global_enable());
    // Reserved dwords 0x08 and 0x0C.
    w32(&mut b, 0x08, 0xFFFF_FFFF, &e);
    w32(&mut b, 0x0C, 0xFFFF_FFFF, &e);
    assert_eq!(r32(&b, 0x08), 0);
    assert_eq!(r32(&b, 0x0C), 0);
}

#[test]
fn write_masks_and_reserved_bits() {
    let e = env();
    for (mut b, tl_lo) in [(endpoint(), 0xF000_0000u32), (port(), 0xFFFF_FFFF)] {
        for n in 0..4 {
            for reg in [DEC_BASE_LO, DEC_SIZE_LO] {
                w32(&mut b, dec(n, reg), 0xFFFF_FFFF, &e);
                assert_eq!(r32(&b, dec(n, reg)), 0xF000_0000);
            }
            for reg in [DEC_BASE_HI, DEC_SIZE_HI, DEC_TL_HI] {
                w32(&mut b, dec(n, reg), 0xFFFF_FFFF, &e);
                assert_eq!(r32(&b, dec(n, reg)), 0xFFFF_FFFF);
            }
            w32(&mut b, dec(n, DEC_TL_LO), 0xFFFF_FFFF, &e);
            assert_eq!(r32(&b, dec(n, DEC_TL_LO)), tl_lo);
            // Everything but Commit: only IG, IW, Lock-On-Commit and Target Type stick.
            w32(&mut b, dec(n, DEC_CTRL), !CTRL_COMMIT, &e);
            assert_eq!(r32(&b, dec(n, DEC_CTRL)), 0x11FF);
            // Reserved dword at +0x1C.
            w32(&mut b, dec(n, 0x1C), 0xFFFF_FFFF, &e);
            assert_eq!(r32(&b, dec(n, 0x1C)), 0);
        }
    }
}

#[test]
fn committed_and_error_bits_are_read_only() {
    let e = env();
    let mut b = endpoint();
    assert_eq!(
        w32(
            &mut b,
            dec(0, DEC_CTRL),
            CTRL_COMMITTED | CTRL_ERR_NOT_COMMITTED,
            &e
        ),
        HdmChange::None
    );
    assert_eq!(r32(&b, dec(0, DEC_CTRL)), 0);
    assert!(b.committed().is_empty());
}

#[test]
fn linux_style_commit_succeeds() {
    let e = env();
    let mut b = endpoint();
    let (ch, c) = commit(&mut b, 0, WIN, GIB, Ways::X1, Granularity::B256, 0, &e);
    assert_eq!(ch, HdmChange::Decoding);
    assert_eq!(c, 0x1200 | CTRL_COMMITTED);
    let d = b.committed();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].index, 0);
    assert_eq!(d[0].base, WIN);
    assert_eq!(d[0].size, GIB);
    assert_eq!(d[0].ways, Ways::X1);
    assert_eq!(d[0].gran, Granularity::B256);
    assert_eq!(d[0].dpa_base, 0);
    assert_eq!(d[0].dpa_skip, 0);
    assert!(d[0].host_only);
    assert!(d[0].targets.is_empty());
    // Writing Commit=1 again while committed changes nothing.
    assert_eq!(w32(&mut b, dec(0, DEC_CTRL), c, &e), HdmChange::None);
}

#[test]
fn port_commit_reports_targets_in_position_order() {
    let e = env();
    let mut b = port();
    let (ch, _) = commit(
        &mut b,
        0,
        WIN,
        4 * GIB,
        Ways::X4,
        Granularity::B512,
        0x0000_0000_0102_0304,
        &e,
    );
    assert_eq!(ch, HdmChange::Decoding);
    let d = b.committed();
    assert_eq!(d[0].targets, vec![4, 3, 2, 1]);
    assert_eq!(d[0].dpa_base, 0);
}

#[test]
fn rule_size_non_zero() {
    let e = env();
    let mut b = endpoint();
    let (ch, _) = commit(&mut b, 0, WIN, 0, Ways::X1, Granularity::B256, 0, &e);
    assert_eq!(ch, HdmChange::None);
    assert_failed(&b, 0, CommitError::ZeroSize);
}

#[test]
fn rule_alignment() {
    let e = env();
    let mut b = endpoint();
    // Register writes cannot express an unaligned base or size: bits 27:0 are reserved.
    setup(
        &mut b,
        0,
        WIN + 0x0FFF_F000,
        GIB | 0x0234_5678,
        0x0123_4567,
        &e,
    );
    assert_eq!(r32(&b, dec(0, DEC_BASE_LO)), WIN as u32);
    assert_eq!(r32(&b, dec(0, DEC_SIZE_LO)), GIB as u32);
    assert_eq!(r32(&b, dec(0, DEC_TL_LO)), 0);
    // Firmware programming refuses them.
    for (base, size, skip) in [
        (WIN + 4096, GIB, 0),
        (WIN, GIB + HDM_UNIT / 2, 0),
        (WIN, GIB, 1 << 20),
    ] {
        assert_eq!(
            b.program(
                0,
                base,
                size,
                Ways::X1,
                Granularity::B256,
                DecoderTargets::DpaSkip(skip),
                &e
            ),
            Err(CommitError::Misaligned)
        );
    }
    assert_eq!(r32(&b, dec(0, DEC_CTRL)), 0, "nothing written on refusal");
}

#[test]
fn rule_no_overflow() {
    let e = StaticEnv {
        windows: vec![(0, u64::MAX)],
        ..env()
    };
    let mut b = endpoint();
    commit(
        &mut b,
        0,
        0xFFFF_FFFF_F000_0000,
        HDM_UNIT,
        Ways::X1,
        Granularity::B256,
        0,
        &e,
    );
    assert_failed(&b, 0, CommitError::Overflow);
    commit(
        &mut b,
        0,
        0xFFFF_FFFF_0000_0000,
        0xFFFF_FFFF_0000_0000,
        Ways::X1,
        Granularity::B256,
        0,
        &e,
    );
    assert_failed(&b, 0, CommitError::Overflow);
}

#[test]
fn rule_commit_in_order() {
    let e = env();
    let mut b = endpoint();
    commit(&mut b, 1, WIN, GIB, Ways::X1, Granularity::B256, 0, &e);
    assert_failed(&b, 1, CommitError::OutOfOrder(0));
    commit(&mut b, 0, WIN, GIB, Ways::X1, Granularity::B256, 0, &e);
    assert_committed(&b, 0);
    commit(
        &mut b,
        2,
        WIN + GIB,
        GIB,
        Ways::X1,
        Granularity::B256,
        0,
        &e,
    );
    assert_failed(&b, 2, CommitError::OutOfOrder(1));
    assert_eq!(b.committed().len(), 1);
}

#[test]
fn rule_ascending_without_overlap() {
    let e = env();
    let mut b = port();
    commit(
        &mut b,
        0,
        WIN + GIB,
        GIB,
        Ways::X1,
        Granularity::B256,
        1,
        &e,
    );
    assert_committed(&b, 0);
    // Overlapping the end of decoder 0.
    commit(
        &mut b,
        1,
        WIN + GIB + HDM_UNIT,
        GIB,
        Ways::X1,
        Granularity::B256,
        1,
        &e,
    );
    assert_failed(&b, 1, CommitError::NotAscending(0));
    // Entirely below decoder 0 (no overlap, but not ascending).
    commit(&mut b, 1, WIN, HDM_UNIT, Ways::X1, Granularity::B256, 1, &e);
    assert_failed(&b, 1, CommitError::NotAscending(0));
    // Same range.
    commit(
        &mut b,
        1,
        WIN + GIB,
        GIB,
        Ways::X1,
        Granularity::B256,
        1,
        &e,
    );
    assert_failed(&b, 1, CommitError::NotAscending(0));
    // Directly adjacent is fine.
    commit(
        &mut b,
        1,
        WIN + 2 * GIB,
        GIB,
        Ways::X1,
        Granularity::B256,
        1,
        &e,
    );
    assert_committed(&b, 1);
}

#[test]
fn rule_ways_encoding_valid() {
    let e = env();
    for bad in [5u32, 6, 7, 11, 12, 13, 14, 15] {
        let mut b = endpoint();
        setup(&mut b, 0, WIN, 16 * GIB, 0, &e);
        w32(&mut b, dec(0, DEC_CTRL), bad << 4 | CTRL_COMMIT, &e);
        assert_failed(&b, 0, CommitError::InvalidWays(bad as u8));
    }
}

#[test]
fn rule_granularity_encoding_valid() {
    let e = env();
    for bad in 7u32..=15 {
        let mut b = endpoint();
        setup(&mut b, 0, WIN, GIB, 0, &e);
        w32(&mut b, dec(0, DEC_CTRL), bad | CTRL_COMMIT, &e);
        assert_failed(&b, 0, CommitError::InvalidGranularity(bad as u8));
    }
}

#[test]
fn rule_3_6_12_ways_need_capability() {
    let e = StaticEnv {
        capacity: 64 * GIB,
        ..env()
    };
    for ways in [Ways::X3, Ways::X6, Ways::X12] {
        let caps = HdmCaps {
            ways_3_6_12: false,
            ..HdmCaps::endpoint(1)
        };
        let mut b = HdmBlock::new(HdmKind::Endpoint, caps);
        commit(&mut b, 0, WIN, 12 * GIB, ways, Granularity::B256, 0, &e);
        assert_failed(&b, 0, CommitError::WaysNotSupported(ways.count()));
        let mut b = HdmBlock::new(HdmKind::Endpoint, HdmCaps::endpoint(1));
        commit(&mut b, 0, WIN, 12 * GIB, ways, Granularity::B256, 0, &e);
        assert_committed(&b, 0);
        assert_eq!(
            b.committed()[0].dpa_size(),
            12 * GIB / u64::from(ways.count())
        );
    }
}

#[test]
fn rule_16_ways_need_capability() {
    let e = env();
    let caps = HdmCaps {
        ways_16: false,
        ..HdmCaps::endpoint(1)
    };
    let mut b = HdmBlock::new(HdmKind::Endpoint, caps);
    commit(
        &mut b,
        0,
        WIN,
        16 * GIB,
        Ways::X16,
        Granularity::B256,
        0,
        &e,
    );
    assert_failed(&b, 0, CommitError::WaysNotSupported(16));
    let mut b = HdmBlock::new(HdmKind::Endpoint, HdmCaps::endpoint(1));
    commit(
        &mut b,
        0,
        WIN,
        16 * GIB,
        Ways::X16,
        Granularity::B256,
        0,
        &e,
    );
    assert_committed(&b, 0);
}

#[test]
fn rule_port_ways_within_target_count() {
    let e = env();
    let mut b = HdmBlock::new(HdmKind::Port, HdmCaps::port(2, 2));
    commit(
        &mut b,
        0,
        WIN,
        4 * GIB,
        Ways::X4,
        Granularity::B256,
        0x0403_0201,
        &e,
    );
    assert_failed(
        &b,
        0,
        CommitError::TooManyWays {
            ways: 4,
            target_count: 2,
        },
    );
    commit(
        &mut b,
        0,
        WIN,
        4 * GIB,
        Ways::X2,
        Granularity::B256,
        0x0201,
        &e,
    );
    assert_committed(&b, 0);
}

#[test]
fn rule_interleave_bits_11_to_8_need_capability() {
    let e = StaticEnv {
        capacity: 64 * GIB,
        ..env()
    };
    let caps = HdmCaps {
        a11to8: false,
        ..HdmCaps::endpoint(1)
    };
    // 2 ways at 256 B select on bit 8.
    let mut b = HdmBlock::new(HdmKind::Endpoint, caps);
    commit(&mut b, 0, WIN, 2 * GIB, Ways::X2, Granularity::B256, 0, &e);
    assert_failed(&b, 0, CommitError::InterleaveBitNotSupported(8));
    // 4 ways at 2 KiB select on bits 11 and 12.
    commit(&mut b, 0, WIN, 4 * GIB, Ways::X4, Granularity::K2, 0, &e);
    assert_failed(&b, 0, CommitError::InterleaveBitNotSupported(11));
    // 4 ways at 4 KiB select on bits 12 and 13: fine.
    commit(&mut b, 0, WIN, 4 * GIB, Ways::X4, Granularity::K4, 0, &e);
    assert_committed(&b, 0);
    // 1 and 3 ways use no selection bit at any granularity.
    for ways in [Ways::X1, Ways::X3] {
        let caps = HdmCaps {
            a11to8: false,
            a14to12: false,
            ..HdmCaps::endpoint(1)
        };
        let mut b = HdmBlock::new(HdmKind::Endpoint, caps);
        commit(&mut b, 0, WIN, 3 * GIB, ways, Granularity::B256, 0, &e);
        assert_committed(&b, 0);
    }
}

#[test]
fn rule_interleave_bits_14_to_12_need_capability() {
    let e = StaticEnv {
        capacity: 64 * GIB,
        ..env()
    };
    let caps = HdmCaps {
        a14to12: false,
        ..HdmCaps::endpoint(1)
    };
    let mut b = HdmBlock::new(HdmKind::Endpoint, caps);
    // 6 ways at 4 KiB: the factor 2 selects on bit 12.
    commit(&mut b, 0, WIN, 6 * GIB, Ways::X6, Granularity::K4, 0, &e);
    assert_failed(&b, 0, CommitError::InterleaveBitNotSupported(12));
    // 8 ways at 2 KiB: bits 11..=13.
    commit(&mut b, 0, WIN, 8 * GIB, Ways::X8, Granularity::K2, 0, &e);
    assert_failed(&b, 0, CommitError::InterleaveBitNotSupported(12));
    // 2 ways at 16 KiB: bit 14.
    commit(&mut b, 0, WIN, 2 * GIB, Ways::X2, Granularity::K16, 0, &e);
    assert_failed(&b, 0, CommitError::InterleaveBitNotSupported(14));
    // 8 ways at 512 B: bits 9..=11 only.
    commit(&mut b, 0, WIN, 8 * GIB, Ways::X8, Granularity::B512, 0, &e);
    assert_committed(&b, 0);
}

#[test]
fn interleave_bits_above_14_are_always_allowed() {
    let e = StaticEnv {
        capacity: 64 * GIB,
        ..env()
    };
    // 16 ways at 16 KiB select on bits 14..=17; bit 14 needs A14to12, bits 15..=17 need nothing.
    let caps = HdmCaps {
        a11to8: false,
        ..HdmCaps::endpoint(1)
    };
    let mut b = HdmBlock::new(HdmKind::Endpoint, caps);
    commit(&mut b, 0, WIN, 16 * GIB, Ways::X16, Granularity::K16, 0, &e);
    assert_committed(&b, 0);
    let caps = HdmCaps {
        a14to12: false,
        ..caps
    };
    let mut b = HdmBlock::new(HdmKind::Endpoint, caps);
    commit(&mut b, 0, WIN, 16 * GIB, Ways::X16, Granularity::K16, 0, &e);
    assert_failed(&b, 0, CommitError::InterleaveBitNotSupported(14));
}

#[test]
fn rule_size_multiple_of_ways_units() {
    let e = StaticEnv {
        capacity: 64 * GIB,
        ..env()
    };
    let mut b = endpoint();
    // 1 GiB over 3 ways: not a whole number of 256 MiB units per device.
    commit(&mut b, 0, WIN, GIB, Ways::X3, Granularity::B256, 0, &e);
    assert_failed(&b, 0, CommitError::SizeNotMultipleOfWays);
    // 256 MiB over 2 ways.
    commit(&mut b, 0, WIN, HDM_UNIT, Ways::X2, Granularity::B256, 0, &e);
    assert_failed(&b, 0, CommitError::SizeNotMultipleOfWays);
    commit(
        &mut b,
        0,
        WIN,
        3 * HDM_UNIT,
        Ways::X3,
        Granularity::B256,
        0,
        &e,
    );
    assert_committed(&b, 0);
}

#[test]
fn rule_port_targets_exist() {
    let e = env();
    let mut b = port();
    // Position 1 names port 0x42, which does not exist.
    commit(
        &mut b,
        0,
        WIN,
        2 * GIB,
        Ways::X2,
        Granularity::B256,
        0x4201,
        &e,
    );
    assert_failed(&b, 0, CommitError::NoSuchTarget(0x42));
    // Entries beyond `ways` are not checked.
    commit(
        &mut b,
        0,
        WIN,
        2 * GIB,
        Ways::X2,
        Granularity::B256,
        0xFFFF_0201,
        &e,
    );
    assert_committed(&b, 0);
    assert_eq!(b.committed()[0].targets, vec![1, 2]);
}

#[test]
fn rule_endpoint_dpa_within_capacity() {
    let e = env(); // 4 GiB
    let mut b = endpoint();
    // 8 GiB, 1 way: needs 8 GiB of DPA.
    commit(&mut b, 0, WIN, 8 * GIB, Ways::X1, Granularity::B256, 0, &e);
    assert_failed(
        &b,
        0,
        CommitError::DpaExceedsCapacity {
            dpa_base: 0,
            dpa_size: 8 * GIB,
            capacity: 4 * GIB,
        },
    );
    // 8 GiB over 2 ways: 4 GiB per device, fits exactly.
    commit(&mut b, 0, WIN, 8 * GIB, Ways::X2, Granularity::B256, 0, &e);
    assert_committed(&b, 0);
    // Skip pushes decoder 1 past the end.
    commit(
        &mut b,
        1,
        WIN + 8 * GIB,
        GIB,
        Ways::X1,
        Granularity::B256,
        0,
        &e,
    );
    assert!(matches!(
        b.last_error(1),
        Some(CommitError::DpaExceedsCapacity { dpa_base, .. }) if *dpa_base == 4 * GIB
    ));
}

#[test]
fn rule_range_allowed_by_parent() {
    let e = env();
    let mut b = port();
    commit(
        &mut b,
        0,
        WIN - GIB,
        GIB,
        Ways::X1,
        Granularity::B256,
        1,
        &e,
    );
    assert_failed(&b, 0, CommitError::RangeNotAllowed);
    commit(
        &mut b,
        0,
        WIN + WIN_SIZE - GIB,
        2 * GIB,
        Ways::X1,
        Granularity::B256,
        1,
        &e,
    );
    assert_failed(&b, 0, CommitError::RangeNotAllowed);
    commit(
        &mut b,
        0,
        WIN + WIN_SIZE - GIB,
        GIB,
        Ways::X1,
        Granularity::B256,
        1,
        &e,
    );
    assert_committed(&b, 0);
}

#[test]
fn error_cleared_by_commit_zero_and_retry_revalidates() {
    let e = env();
    let mut b = endpoint();
    commit(&mut b, 0, WIN, 0, Ways::X1, Granularity::B256, 0, &e);
    assert_failed(&b, 0, CommitError::ZeroSize);
    // Fixing the size without a Control write changes nothing.
    w32(&mut b, dec(0, DEC_SIZE_LO), GIB as u32, &e);
    assert!(!b.is_committed(0));
    // A write to byte 0 of Control (IG/IW) does not touch Commit, so it does not retry.
    assert_eq!(b.write(dec(0, DEC_CTRL), &[0], &e), HdmChange::None);
    assert!(!b.is_committed(0));
    assert!(b.last_error(0).is_some());
    // Writing Commit=1 again while not committed retries.
    let c = r32(&b, dec(0, DEC_CTRL));
    assert_eq!(w32(&mut b, dec(0, DEC_CTRL), c, &e), HdmChange::Decoding);
    assert_committed(&b, 0);

    // Linux's error path: Control with Commit cleared clears the error bit.
    let mut b = endpoint();
    commit(&mut b, 0, WIN, 0, Ways::X1, Granularity::B256, 0, &e);
    let c = r32(&b, dec(0, DEC_CTRL));
    assert_eq!(
        w32(&mut b, dec(0, DEC_CTRL), c & !CTRL_COMMIT, &e),
        HdmChange::None
    );
    assert_eq!(
        r32(&b, dec(0, DEC_CTRL)) & (CTRL_COMMIT | CTRL_ERR_NOT_COMMITTED),
        0
    );
    assert_eq!(b.last_error(0), None);
}

#[test]
fn committed_decoder_ignores_configuration_writes() {
    let e = env();
    let mut b = port();
    commit(
        &mut b,
        0,
        WIN,
        2 * GIB,
        Ways::X2,
        Granularity::B256,
        0x0201,
        &e,
    );
    let before: Vec<u32> = (0..8).map(|i| r32(&b, dec(0, 4 * i))).collect();
    for reg in [
        DEC_BASE_LO,
        DEC_BASE_HI,
        DEC_SIZE_LO,
        DEC_SIZE_HI,
        DEC_TL_LO,
        DEC_TL_HI,
    ] {
        assert_eq!(w32(&mut b, dec(0, reg), 0x5A5A_5A5A, &e), HdmChange::None);
    }
    // Control with Commit still set but other configuration changed.
    let c = before[4];
    assert_eq!(
        w32(
            &mut b,
            dec(0, DEC_CTRL),
            (c & !0xFF) | 0x13 | CTRL_LOCK_ON_COMMIT,
            &e
        ),
        HdmChange::None
    );
    assert_eq!(
        w32(&mut b, dec(0, DEC_CTRL), c & !CTRL_HOST_ONLY, &e),
        HdmChange::None
    );
    let after: Vec<u32> = (0..8).map(|i| r32(&b, dec(0, 4 * i))).collect();
    assert_eq!(before, after);
    assert_eq!(b.committed()[0].targets, vec![1, 2]);
}

#[test]
fn uncommit_clears_committed_and_reports_change() {
    let e = env();
    let mut b = endpoint();
    let (_, c) = commit(&mut b, 0, WIN, GIB, Ways::X1, Granularity::B256, 0, &e);
    assert_eq!(
        w32(&mut b, dec(0, DEC_CTRL), c & !CTRL_COMMIT, &e),
        HdmChange::Decoding
    );
    assert_eq!(r32(&b, dec(0, DEC_CTRL)), 0x1000);
    assert!(b.committed().is_empty());
    // Linux then zeroes size and base: now writable again.
    w32(&mut b, dec(0, DEC_SIZE_LO), 0, &e);
    w32(&mut b, dec(0, DEC_BASE_HI), 0, &e);
    assert_eq!(r32(&b, dec(0, DEC_SIZE_LO)), 0);
    assert_eq!(r32(&b, dec(0, DEC_BASE_HI)), 0);
}

#[test]
fn uncommit_below_a_committed_decoder_is_ignored() {
    let e = env();
    let mut b = endpoint();
    let (_, c0) = commit(&mut b, 0, WIN, GIB, Ways::X1, Granularity::B256, 0, &e);
    let (_, c1) = commit(
        &mut b,
        1,
        WIN + GIB,
        GIB,
        Ways::X1,
        Granularity::B256,
        0,
        &e,
    );
    assert_eq!(
        w32(&mut b, dec(0, DEC_CTRL), c0 & !CTRL_COMMIT, &e),
        HdmChange::None
    );
    assert_committed(&b, 0);
    // Top-down release works.
    assert_eq!(
        w32(&mut b, dec(1, DEC_CTRL), c1 & !CTRL_COMMIT, &e),
        HdmChange::Decoding
    );
    assert_eq!(
        w32(&mut b, dec(0, DEC_CTRL), c0 & !CTRL_COMMIT, &e),
        HdmChange::Decoding
    );
    assert!(b.committed().is_empty());
}

#[test]
fn lock_on_commit_ignores_all_writes_until_reset() {
    let e = env();
    let mut b = endpoint();
    setup(&mut b, 0, WIN, GIB, 0, &e);
    let c = ctrl(Ways::X1, Granularity::B256) | CTRL_LOCK_ON_COMMIT | CTRL_COMMIT;
    assert_eq!(w32(&mut b, dec(0, DEC_CTRL), c, &e), HdmChange::Decoding);
    assert_committed(&b, 0);
    assert_eq!(w32(&mut b, dec(0, DEC_CTRL), 0, &e), HdmChange::None);
    assert_eq!(b.write(dec(0, DEC_CTRL) + 1, &[0], &e), HdmChange::None);
    w32(&mut b, dec(0, DEC_SIZE_LO), 0, &e);
    assert_committed(&b, 0);
    assert_eq!(b.committed()[0].size, GIB);
    // Lock-On-Commit set on a decoder that is not committed does not lock it.
    setup(&mut b, 1, WIN + GIB, GIB, 0, &e);
    w32(&mut b, dec(1, DEC_CTRL), CTRL_LOCK_ON_COMMIT, &e);
    w32(&mut b, dec(1, DEC_SIZE_LO), HDM_UNIT as u32, &e);
    assert_eq!(r32(&b, dec(1, DEC_SIZE_LO)), HDM_UNIT as u32);
    b.reset();
    assert!(b.committed().is_empty());
    assert_eq!(r32(&b, dec(0, DEC_CTRL)), 0);
    // Writable again after reset.
    commit(
        &mut b,
        0,
        WIN + GIB,
        GIB,
        Ways::X1,
        Granularity::B256,
        0,
        &e,
    );
    assert_committed(&b, 0);
}

#[test]
fn lock_set_after_commit_does_not_lock() {
    let e = env();
    let mut b = endpoint();
    let (_, c) = commit(&mut b, 0, WIN, GIB, Ways::X1, Granularity::B256, 0, &e);
    w32(&mut b, dec(0, DEC_CTRL), c | CTRL_LOCK_ON_COMMIT, &e);
    assert_eq!(
        w32(&mut b, dec(0, DEC_CTRL), c & !CTRL_COMMIT, &e),
        HdmChange::Decoding
    );
}

#[test]
fn reset_returns_to_power_on_state() {
    let e = env();
    let mut b = port();
    w32(&mut b, HDM_GLOBAL_CTRL, 3, &e);
    commit(&mut b, 0, WIN, GIB, Ways::X1, Granularity::B256, 1, &e);
    commit(&mut b, 1, WIN, GIB, Ways::X1, Granularity::B256, 1, &e);
    b.reset();
    for off in (4..b.len()).step_by(4) {
        assert_eq!(r32(&b, off), 0, "offset {off:#x}");
    }
    assert!(b.committed().is_empty());
    assert!(!b.global_enable());
    assert_eq!(b.last_error(1), None);
}

#[test]
fn endpoint_dpa_accounting_with_skip_across_two_decoders() {
    let e = StaticEnv {
        capacity: 8 * GIB,
        ..env()
    };
    let mut b = endpoint();
    // Decoder 0: skip 256 MiB, 2 GiB over 2 ways -> DPA [256 MiB, 1.25 GiB).
    commit(
        &mut b,
        0,
        WIN,
        2 * GIB,
        Ways::X2,
        Granularity::K1,
        HDM_UNIT,
        &e,
    );
    // Decoder 1: skip 512 MiB, 3 GiB over 3 ways -> DPA [1.75 GiB, 2.75 GiB).
    commit(
        &mut b,
        1,
        WIN + 4 * GIB,
        3 * GIB,
        Ways::X3,
        Granularity::B256,
        2 * HDM_UNIT,
        &e,
    );
    assert_committed(&b, 1);
    let d = b.committed();
    assert_eq!(d[0].dpa_skip, HDM_UNIT);
    assert_eq!(d[0].dpa_base, HDM_UNIT);
    assert_eq!(d[0].dpa_size(), GIB);
    assert_eq!(d[1].dpa_skip, 2 * HDM_UNIT);
    assert_eq!(d[1].dpa_base, HDM_UNIT + GIB + 2 * HDM_UNIT);
    assert_eq!(d[1].dpa_size(), GIB);
    // Decoder 2 with a skip that would end exactly at the capacity commits; one unit more fails.
    let used = d[1].dpa_base + d[1].dpa_size();
    let skip = 8 * GIB - used - GIB;
    commit(
        &mut b,
        2,
        WIN + 8 * GIB,
        2 * GIB,
        Ways::X2,
        Granularity::B256,
        skip + HDM_UNIT,
        &e,
    );
    assert!(matches!(
        b.last_error(2),
        Some(CommitError::DpaExceedsCapacity { .. })
    ));
    commit(
        &mut b,
        2,
        WIN + 8 * GIB,
        2 * GIB,
        Ways::X2,
        Granularity::B256,
        skip,
        &e,
    );
    assert_committed(&b, 2);
    assert_eq!(b.committed()[2].dpa_base + GIB, 8 * GIB);
}

#[test]
fn firmware_program_commits_and_validates() {
    let e = env();
    let mut p = port();
    assert_eq!(
        p.program(
            0,
            WIN,
            2 * GIB,
            Ways::X2,
            Granularity::K4,
            DecoderTargets::Ports(&[3, 4]),
            &e
        ),
        Ok(())
    );
    let d = p.committed();
    assert_eq!(d[0].targets, vec![3, 4]);
    assert_eq!(d[0].gran, Granularity::K4);
    assert!(d[0].host_only);
    assert_eq!(r32(&p, dec(0, DEC_TL_LO)), 0x0403);
    assert_eq!(
        p.program(
            0,
            WIN,
            GIB,
            Ways::X1,
            Granularity::B256,
            DecoderTargets::Ports(&[1]),
            &e
        ),
        Err(CommitError::AlreadyCommitted(0))
    );
    assert_eq!(
        p.program(
            9,
            WIN,
            GIB,
            Ways::X1,
            Granularity::B256,
            DecoderTargets::Ports(&[1]),
            &e
        ),
        Err(CommitError::NoSuchDecoder(9))
    );
    for bad in [
        DecoderTargets::Ports(&[1, 2]),
        DecoderTargets::Ports(&[]),
        DecoderTargets::DpaSkip(0),
    ] {
        assert_eq!(
            p.program(1, WIN + 2 * GIB, GIB, Ways::X1, Granularity::B256, bad, &e),
            Err(CommitError::TargetsMismatch)
        );
    }
    // 12 ports never fit the 8-entry list.
    let twelve = [1u8; 12];
    assert_eq!(
        p.program(
            1,
            WIN + 3 * GIB,
            3 * GIB,
            Ways::X12,
            Granularity::B256,
            DecoderTargets::Ports(&twelve),
            &e
        ),
        Err(CommitError::TargetsMismatch)
    );
    // A validation failure leaves the registers programmed with Error-Not-Committed.
    assert_eq!(
        p.program(
            1,
            WIN + 2 * GIB,
            GIB,
            Ways::X1,
            Granularity::B256,
            DecoderTargets::Ports(&[99]),
            &e
        ),
        Err(CommitError::NoSuchTarget(99))
    );
    assert_failed(&p, 1, CommitError::NoSuchTarget(99));

    let mut ep = endpoint();
    assert_eq!(
        ep.program(
            0,
            WIN,
            GIB,
            Ways::X1,
            Granularity::B256,
            DecoderTargets::DpaSkip(HDM_UNIT),
            &e
        ),
        Ok(())
    );
    assert_eq!(ep.committed()[0].dpa_base, HDM_UNIT);
    assert_eq!(
        ep.program(
            1,
            WIN + GIB,
            GIB,
            Ways::X1,
            Granularity::B256,
            DecoderTargets::Ports(&[1]),
            &e
        ),
        Err(CommitError::TargetsMismatch)
    );
    assert_eq!(
        ep.program(
            2,
            WIN + GIB,
            GIB,
            Ways::X1,
            Granularity::B256,
            DecoderTargets::DpaSkip(0),
            &e
        ),
        Err(CommitError::OutOfOrder(1))
    );
}

#[test]
fn byte_and_qword_accesses() {
    let e = env();
    let mut b = endpoint();
    // 8-byte write of Base Low + High, and of Size Low + High.
    b.write(dec(0, DEC_BASE_LO), &WIN.to_le_bytes(), &e);
    b.write(dec(0, DEC_SIZE_LO), &GIB.to_le_bytes(), &e);
    let mut q = [0u8; 8];
    b.read(dec(0, DEC_BASE_LO), &mut q);
    assert_eq!(u64::from_le_bytes(q), WIN);
    // Byte 0 of Control: IG/IW; byte 1: Commit + host-only.
    b.write(dec(0, DEC_CTRL), &[0x00], &e);
    assert_eq!(
        b.write(dec(0, DEC_CTRL) + 1, &[0x12], &e),
        HdmChange::Decoding
    );
    assert_committed(&b, 0);
    let mut one = [0u8; 1];
    b.read(dec(0, DEC_CTRL) + 1, &mut one);
    assert_eq!(one[0], 0x16);
    // Odd sizes and an unaligned qword spanning Size High and Control are handled.
    let mut odd = [0u8; 3];
    b.read(dec(0, DEC_SIZE_HI) + 2, &mut odd);
    assert_eq!(odd, [0, 0, 0]);
    b.read(dec(0, DEC_SIZE_HI), &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x1600_u64 << 32);
}

#[test]
fn out_of_range_accesses_read_zero_and_are_ignored() {
    let e = env();
    let mut b = endpoint();
    let len = b.len();
    for off in [len, len + 4, 0x1000, usize::MAX - 3, usize::MAX] {
        assert_eq!(b.write(off, &[0xFF; 8], &e), HdmChange::None);
        let mut d = [0xAAu8; 8];
        b.read(off, &mut d);
        assert_eq!(d, [0; 8]);
    }
    // A write that straddles the end only touches the in-range part.
    b.write(len - 4, &[0xFF; 8], &e);
    assert_eq!(r32(&b, len - 4), 0); // reserved dword of the last decoder
    assert!(b.committed().is_empty());
    // Empty accesses.
    b.write(0, &[], &e);
    b.read(0, &mut []);
}
