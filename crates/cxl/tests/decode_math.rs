//! Interleave maths against brute-force and specification-style models.

use cxlvm_cxl::interleave::{
    Granularity, Ways, checked_host_offset, child_granularity, device_offset, endpoint_position,
    host_offset, position, selection_bits, xor_position,
};
use proptest::prelude::*;

/// The specification's bit formula for the device offset (HPA offset -> DPA offset).
fn spec_device_offset(off: u64, ways: Ways, gran: Granularity) -> u64 {
    let eig = u32::from(gran.enc());
    let eiw = u32::from(ways.enc());
    let low = off & ((1u64 << (8 + eig)) - 1);
    if eiw < 8 {
        low | ((off >> (8 + eig + eiw)) << (8 + eig))
    } else {
        // eIG + eIW = 8 + eIG + (eIW - 8): strip the power-of-2 selection bits, divide by 3.
        low | (((off >> (eig + eiw)) / 3) << (8 + eig))
    }
}

/// Brute force for any offset: skip whole periods of `ways * gran` bytes (each gives every
/// device exactly `gran` bytes), then walk the granules of the last period round-robin.
fn periodic_model(off: u64, ways: Ways, gran: Granularity) -> (u32, u64) {
    let g = gran.bytes();
    let w = u64::from(ways.count());
    let period = off / (g * w);
    let mut rest = off % (g * w);
    let mut device = 0u32;
    while rest >= g {
        rest -= g;
        device += 1;
    }
    (device, period * g + rest)
}

#[test]
fn brute_force_walk_every_ways_and_granularity() {
    for ways in Ways::ALL {
        for gran in Granularity::ALL {
            let w = ways.count() as usize;
            let g = gran.bytes();
            let size = u64::from(ways.count()) * g * 8;
            let share = (size / u64::from(ways.count())) as usize;
            let mut cursor = vec![0u64; w];
            let mut seen = vec![vec![false; share]; w];
            let mut granule = 0usize;
            let mut off = 0u64;
            while off < size {
                let dev = granule % w;
                for within in 0..g {
                    let o = off + within;
                    let expect = cursor[dev] + within;
                    assert_eq!(
                        position(o, ways, gran) as usize,
                        dev,
                        "{ways:?} {gran:?} {o:#x}"
                    );
                    let d = device_offset(o, ways, gran);
                    assert_eq!(d, expect, "{ways:?} {gran:?} {o:#x}");
                    assert_eq!(host_offset(d, dev as u32, ways, gran), o);
                    let slot = &mut seen[dev][d as usize];
                    assert!(!*slot, "device offset hit twice");
                    *slot = true;
                }
                cursor[dev] += g;
                granule += 1;
                off += g;
            }
            for (dev, s) in seen.iter().enumerate() {
                assert_eq!(cursor[dev], share as u64);
                assert!(
                    s.iter().all(|&b| b),
                    "{ways:?} {gran:?}: device {dev} not dense"
                );
            }
        }
    }
}

#[test]
fn device_offset_equals_spec_bit_formula_exhaustively_in_small_range() {
    for ways in Ways::ALL {
        for gran in Granularity::ALL {
            let limit = u64::from(ways.count()) * gran.bytes() * 8;
            let mut off = 0;
            while off < limit {
                assert_eq!(
                    device_offset(off, ways, gran),
                    spec_device_offset(off, ways, gran),
                    "{ways:?} {gran:?} {off:#x}"
                );
                off += 61;
            }
        }
    }
}

#[test]
fn checked_host_offset_reports_bad_position_and_overflow() {
    for ways in Ways::ALL {
        for gran in Granularity::ALL {
            assert_eq!(checked_host_offset(0, ways.count(), ways, gran), None);
            assert_eq!(
                checked_host_offset(0, ways.count() - 1, ways, gran),
                Some(u64::from(ways.count() - 1) * gran.bytes())
            );
            // Largest device offset is (2^64 - 1) / ways; one granule beyond overflows.
            let max = device_offset(u64::MAX, ways, gran);
            let pos = position(u64::MAX, ways, gran);
            assert_eq!(checked_host_offset(max, pos, ways, gran), Some(u64::MAX));
            if ways != Ways::X1 {
                assert_eq!(checked_host_offset(u64::MAX, 0, ways, gran), None);
            }
            // The unchecked version wraps instead of panicking.
            let _ = host_offset(u64::MAX, u32::MAX, ways, gran);
        }
    }
}

#[test]
fn selection_bits_match_position_bits_for_pow2() {
    for ways in Ways::ALL.into_iter().filter(|w| w.is_pow2()) {
        for gran in Granularity::ALL {
            let pos_of_bit = |bit: u32| position(1u64 << bit, ways, gran);
            let used: Vec<u32> = (0..64).filter(|&b| pos_of_bit(b) != 0).collect();
            match selection_bits(ways, gran) {
                None => assert!(used.is_empty()),
                Some((lo, hi)) => assert_eq!(used, (lo..=hi).collect::<Vec<_>>()),
            }
        }
    }
}

fn any_ways() -> impl Strategy<Value = Ways> {
    prop::sample::select(Ways::ALL.to_vec())
}

fn any_gran() -> impl Strategy<Value = Granularity> {
    prop::sample::select(Granularity::ALL.to_vec())
}

fn pow2_ways() -> impl Strategy<Value = Ways> {
    prop::sample::select(vec![Ways::X1, Ways::X2, Ways::X4, Ways::X8, Ways::X16])
}

fn brute_parity(x: u64) -> u32 {
    let mut p = 0;
    for bit in 0..64 {
        p ^= ((x >> bit) & 1) as u32;
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn random_offsets_match_models(ways in any_ways(), gran in any_gran(), off in 0u64..(1 << 52)) {
        let (dev, dev_off) = periodic_model(off, ways, gran);
        prop_assert_eq!(position(off, ways, gran), dev);
        prop_assert_eq!(device_offset(off, ways, gran), dev_off);
        prop_assert_eq!(spec_device_offset(off, ways, gran), dev_off);
        prop_assert_eq!(host_offset(dev_off, dev, ways, gran), off);
        prop_assert_eq!(checked_host_offset(dev_off, dev, ways, gran), Some(off));
    }

    #[test]
    fn full_range_offsets_round_trip(ways in any_ways(), gran in any_gran(), off in any::<u64>()) {
        let pos = position(off, ways, gran);
        prop_assert!(pos < ways.count());
        let d = device_offset(off, ways, gran);
        prop_assert!(d <= off);
        prop_assert_eq!(host_offset(d, pos, ways, gran), off);
        prop_assert_eq!(checked_host_offset(d, pos, ways, gran), Some(off));
    }

    #[test]
    fn device_offsets_are_a_bijection_onto_the_share(
        ways in any_ways(), gran in any_gran(), dev_off in 0u64..(1 << 40), pos in 0u32..16,
    ) {
        let pos = pos % ways.count();
        let off = host_offset(dev_off, pos, ways, gran);
        prop_assert_eq!(position(off, ways, gran), pos);
        prop_assert_eq!(device_offset(off, ways, gran), dev_off);
    }

    #[test]
    fn xor_position_matches_brute_parity(
        ways in pow2_ways(), hpa in any::<u64>(), maps in prop::collection::vec(any::<u64>(), 4..6),
    ) {
        let n = ways.pow2_bits() as usize;
        let mut expect = 0u32;
        for (i, m) in maps.iter().take(n).enumerate() {
            expect |= brute_parity(hpa & m) << i;
        }
        prop_assert_eq!(xor_position(hpa, ways, &maps), Some(expect));
        prop_assert!(expect < ways.count());
        if n > 0 {
            prop_assert_eq!(xor_position(hpa, ways, &maps[..n - 1]), None);
        }
    }

    #[test]
    fn xor_with_single_bit_maps_is_modulo(ways in pow2_ways(), gran in any_gran(), hpa in any::<u64>()) {
        let maps: Vec<u64> = (0..ways.pow2_bits()).map(|i| 1u64 << (gran.shift() + i)).collect();
        prop_assert_eq!(xor_position(hpa, ways, &maps), Some(position(hpa, ways, gran)));
    }

    #[test]
    fn xor_rejects_non_pow2(ways in prop::sample::select(vec![Ways::X3, Ways::X6, Ways::X12]), hpa in any::<u64>()) {
        prop_assert_eq!(xor_position(hpa, ways, &[u64::MAX; 8]), None);
    }

    #[test]
    fn two_level_routing_reaches_endpoint_position(
        root in prop::sample::select(vec![Ways::X1, Ways::X2, Ways::X4, Ways::X3, Ways::X6]),
        hb in prop::sample::select(vec![Ways::X1, Ways::X2, Ways::X4, Ways::X8]),
        gran in any_gran(),
        off in 0u64..(1 << 48),
    ) {
        let Some(region) = Ways::from_count(root.count() * hb.count()) else {
            return Ok(());
        };
        let Some(hb_gran) = child_granularity(gran, root) else {
            return Ok(());
        };
        let root_pos = position(off, root, gran);
        let hb_pos = position(off, hb, hb_gran);
        let ep = endpoint_position(root_pos, root, hb_pos, hb);
        prop_assert_eq!(ep, Some(position(off, region, gran)));
    }
}

#[test]
fn every_two_level_endpoint_position_is_distinct() {
    for root in [Ways::X1, Ways::X2, Ways::X4, Ways::X3, Ways::X6, Ways::X12] {
        for hb in [Ways::X1, Ways::X2, Ways::X4, Ways::X8] {
            let Some(region) = Ways::from_count(root.count() * hb.count()) else {
                assert_eq!(endpoint_position(0, root, 0, hb), None);
                continue;
            };
            let mut seen = vec![false; region.count() as usize];
            for r in 0..root.count() {
                for h in 0..hb.count() {
                    let p = endpoint_position(r, root, h, hb).expect("unique position");
                    assert!(!seen[p as usize]);
                    seen[p as usize] = true;
                }
            }
        }
    }
}
