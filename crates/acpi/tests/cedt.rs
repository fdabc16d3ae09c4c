//! The sample's CEDT against bytes computed by hand from the CXL 3.1 layouts (table 9-21 …
//! 9-23: CHBS, CFMWS, CXIMS) — not from this crate's code — and against the checks Linux's
//! `cxl_acpi` makes when it parses them.

mod common;

use cxlvm_acpi::*;

#[rustfmt::skip]
const BODY: [u8; 208] = [
    // CHBS, host bridge UID 0: type 0, reserved, length 32; UID; CXL version 1 (CXL 2.0);
    // reserved; base 0xd010_0000; length 64 KiB.
    0x00, 0x00, 0x20, 0x00,  0x00, 0x00, 0x00, 0x00,  0x01, 0x00, 0x00, 0x00,  0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x10, 0xd0, 0x00, 0x00, 0x00, 0x00,   0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
    // CHBS, UID 7 at 0xd011_0000.
    0x00, 0x00, 0x20, 0x00,  0x07, 0x00, 0x00, 0x00,  0x01, 0x00, 0x00, 0x00,  0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x11, 0xd0, 0x00, 0x00, 0x00, 0x00,   0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
    // CFMWS 0: type 1, reserved, length 44 (36 + 4 x 2); reserved; base 1 TiB; size 2 GiB;
    // ENIW 1 (2 ways); modulo; reserved; HBIG 4 (4 KiB); restrictions 0x6 (Type-3,
    // volatile); QTG 0; targets UID 0, UID 7.
    0x01, 0x00, 0x2c, 0x00,  0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,   0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00,  0x04, 0x00, 0x00, 0x00,  0x06, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,  0x07, 0x00, 0x00, 0x00,
    // CFMWS 1: base 1 TiB + 2 GiB; size 1 GiB; ENIW 1; XOR; HBIG 0 (256 B); restrictions 0x6;
    // QTG 1; targets UID 7, UID 0.
    0x01, 0x00, 0x2c, 0x00,  0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x80, 0x00, 0x01, 0x00, 0x00,   0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x01, 0x00, 0x00,  0x00, 0x00, 0x00, 0x00,  0x06, 0x00, 0x01, 0x00,
    0x07, 0x00, 0x00, 0x00,  0x00, 0x00, 0x00, 0x00,
    // CFMWS 2: length 40; base 1 TiB + 4 GiB; size 512 MiB; ENIW 0 (1 way); modulo; HBIG 6
    // (16 KiB); restrictions 0xa (Type-3, persistent); QTG 2; target UID 7.
    0x01, 0x00, 0x28, 0x00,  0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00,   0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,  0x06, 0x00, 0x00, 0x00,  0x0a, 0x00, 0x02, 0x00,
    0x07, 0x00, 0x00, 0x00,
    // CXIMS for HBIG 0: type 2, reserved, length 16; reserved (2); HBIG 0; 1 map:
    // bit 8 | bit 21 (cxlvm's map for 2 ways at 256 B).
    0x02, 0x00, 0x10, 0x00,  0x00, 0x00,  0x00,  0x01,
    0x00, 0x01, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,
];

#[test]
fn cedt_matches_the_hand_computed_bytes() {
    let t = common::build();
    let cedt = &t.get(TableKind::Cedt).unwrap().bytes;
    assert_eq!(&cedt[..4], b"CEDT");
    assert_eq!(u32::from_le_bytes(cedt[4..8].try_into().unwrap()), 36 + 208);
    assert_eq!(cedt[8], 1, "CEDT revision");
    assert_eq!(byte_sum(cedt), 0);
    assert_eq!(cedt.len(), 36 + BODY.len());
    for (i, (ours, hand)) in cedt[36..].iter().zip(BODY.iter()).enumerate() {
        assert_eq!(
            ours, hand,
            "CEDT body byte {i:#x}: {ours:#04x}, hand computation {hand:#04x}"
        );
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Walks the CEDT the way Linux's `acpi_table_parse_cedt` and `cxl_acpi` do and applies
/// their checks: every CHBS UID has an ACPI0016 host bridge, CXL version 1 with 64 KiB;
/// every CFMWS is 256 MiB aligned and sized, its length covers its targets, its ENIW, HBIG and
/// arithmetic are defined, its targets are CHBS UIDs, Type-3 is set; an XOR window of 2+ ways
/// has a CXIMS of its granularity with enough maps.
#[test]
fn cedt_passes_linux_checks() {
    let p = common::sample();
    let t = common::build();
    let cedt = &t.get(TableKind::Cedt).unwrap().bytes;
    let mut at = 36;
    let (mut chbs, mut cfmws, mut cxims) = (Vec::new(), Vec::new(), Vec::new());
    while at < cedt.len() {
        let len = usize::from(u16_at(cedt, at + 2));
        assert!(
            len >= 4 && at + len <= cedt.len(),
            "structure at {at:#x} overruns"
        );
        let s = &cedt[at..at + len];
        match s[0] {
            0 => chbs.push(s),
            1 => cfmws.push(s),
            2 => cxims.push(s),
            t => panic!("unexpected CEDT structure type {t}"),
        }
        at += len;
    }
    assert_eq!(at, cedt.len());
    let uids: Vec<u32> = chbs.iter().map(|s| u32_at(s, 4)).collect();
    assert_eq!(
        uids,
        p.host_bridges.iter().map(|h| h.uid).collect::<Vec<_>>()
    );
    for s in &chbs {
        assert_eq!(s.len(), 32);
        assert_eq!(u32_at(s, 8), 1, "CXL 2.0 CHBCR");
        assert_ne!(u64_at(s, 16), 0);
        assert_eq!(u64_at(s, 24), 0x1_0000);
    }
    assert_eq!(cfmws.len(), p.windows.len());
    for (s, w) in cfmws.iter().zip(&p.windows) {
        let eniw = s[24];
        let ways = match eniw {
            0..=4 => 1u32 << eniw,
            8..=10 => 3 << (eniw - 8),
            _ => panic!("ENIW {eniw}"),
        };
        assert!(s.len() >= 36 + 4 * ways as usize, "CFMWS length");
        let (base, size) = (u64_at(s, 8), u64_at(s, 16));
        assert_eq!(base % (256 << 20), 0, "CFMWS Base HPA not 256MB aligned");
        assert_eq!(size % (256 << 20), 0);
        assert_eq!((base, size), (w.range.base, w.range.size));
        assert!(s[25] <= 1, "arithmetic");
        let hbig = u32_at(s, 28);
        assert!(hbig <= 6, "HBIG");
        let restrictions = u16_at(s, 32);
        assert_ne!(restrictions & 0x2, 0, "Type-3 (host-only coherent)");
        assert_eq!(restrictions & 0x1, 0, "not Type-2");
        assert_eq!(restrictions & 0x4 != 0, w.restrictions.volatile);
        assert_eq!(restrictions & 0x8 != 0, w.restrictions.persistent);
        assert_eq!(u16_at(s, 34), w.qtg);
        let targets: Vec<u32> = (0..ways as usize).map(|i| u32_at(s, 36 + 4 * i)).collect();
        assert_eq!(targets, w.targets);
        assert!(targets.iter().all(|t| uids.contains(t)));
        if s[25] == 1 && ways != 1 && ways != 3 {
            let needed = if ways.is_power_of_two() {
                ways.ilog2()
            } else {
                (ways / 3).ilog2()
            };
            let c = cxims
                .iter()
                .find(|c| u32::from(c[6]) == hbig)
                .expect("XOR window without a CXIMS of its granularity");
            assert!(u32::from(c[7]) >= needed);
            assert_eq!(c.len(), 8 + 8 * usize::from(c[7]));
        }
    }
}
