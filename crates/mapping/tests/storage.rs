//! The storage map against a naive model of each device's bytes: random interleave geometries
//! (2 to 16 ways, 3/6/12 included, 256 B to 16 KiB) are adopted into region stores, written
//! through the store (as the guest does through the mapping) and through the devices (as the MMIO
//! path does), evicted and re-adopted with other geometries; every byte must always read back
//! as the model says, and the devices' own stores must hold nothing for extents that moved.

use std::sync::Arc;

use cxlvm_mapping::storage::{self, Layout, RegionStore};
use cxlvm_mapping::window::DeviceMemory;
use cxlvm_memory::RamBacking;
use proptest::prelude::*;

const DEV_BYTES: u64 = 4 << 20;

fn modulo(order: &[usize], gran: u64, len: u64, dpa: u64) -> Layout {
    Layout::modulo(order, gran, len, dpa).expect("a modulo interleave is a layout")
}

/// The independent formula: store offset of device `order[i]`'s DPA `dpa0 + x`.
fn formula(order: &[usize], gran: u64, dpa0: u64, device: usize, dpa: u64) -> u64 {
    let pos = order.iter().position(|&d| d == device).unwrap() as u64;
    let x = dpa - dpa0;
    (x / gran * order.len() as u64 + pos) * gran + x % gran
}

fn devices(n: usize) -> Vec<DeviceMemory> {
    (0..n)
        .map(|i| {
            DeviceMemory::new(
                Some(RamBacking::memfd(&format!("dev{i}"), DEV_BYTES).unwrap()),
                None,
            )
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Geometry {
    ways: usize,
    gran: u64,
    /// Rotation of the device order.
    rot: usize,
    /// Periods covered.
    periods: u64,
    /// DPA of each share, in granules.
    dpa_granules: u64,
}

fn geometry() -> impl Strategy<Value = Geometry> {
    (
        prop::sample::select(vec![2usize, 3, 4, 6, 8, 12, 16]),
        prop::sample::select(vec![256u64, 1024, 4096, 16384]),
        0usize..16,
        1u64..8,
        0u64..4,
    )
        .prop_map(|(ways, gran, rot, periods, dpa_granules)| Geometry {
            ways,
            gran,
            rot,
            periods,
            dpa_granules,
        })
}

impl Geometry {
    fn order(&self) -> Vec<usize> {
        (0..self.ways).map(|i| (i + self.rot) % 16).collect()
    }
    /// Whole periods and whole pages: `periods` × lcm(period, 4 KiB).
    fn len(&self) -> u64 {
        let period = self.ways as u64 * self.gran;
        let (mut a, mut b) = (period, 4096u64);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        period / a * 4096 * self.periods
    }
    fn dpa(&self) -> u64 {
        self.dpa_granules * self.gran.max(4096)
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Write through the devices (the MMIO path): device, DPA offset, byte count, value.
    Device(usize, u64, u64, u8),
    /// Write through the current store (the mapping): offset in store, count, value.
    Store(u64, u64, u8),
    /// Commit a geometry: adopt its store.
    Commit(Geometry),
    /// Evict everything (a Linear mapping of the devices' own stores would do this).
    EvictAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..16, 0u64..DEV_BYTES, 1u64..700, any::<u8>())
            .prop_map(|(d, a, n, v)| Op::Device(d, a, n, v)),
        4 => (0u64..1 << 20, 1u64..700, any::<u8>()).prop_map(|(o, n, v)| Op::Store(o, n, v)),
        2 => geometry().prop_map(Op::Commit),
        1 => Just(Op::EvictAll),
    ]
}

fn check(mem: &[DeviceMemory], model: &[Vec<u8>]) {
    for (d, m) in mem.iter().zip(model) {
        let mut got = vec![0u8; DEV_BYTES as usize];
        assert!(d.read(0, &mut got));
        if got != *m {
            let at = got.iter().zip(m).position(|(a, b)| a != b).unwrap();
            panic!("device byte {at:#x}: {:#x}, model {:#x}", got[at], m[at]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_byte_stays_where_the_model_says(ops in prop::collection::vec(op(), 1..24)) {
        let mem = devices(16);
        let mut model = vec![vec![0u8; DEV_BYTES as usize]; 16];
        let mut current: Option<(Arc<RegionStore>, Geometry)> = None;
        for op in ops {
            match op {
                Op::Device(d, a, n, v) => {
                    let n = n.min(DEV_BYTES - a);
                    assert!(mem[d].write(a, &vec![v; n as usize]));
                    model[d][a as usize..(a + n) as usize].fill(v);
                }
                Op::Store(o, n, v) => {
                    let Some((store, g)) = &current else { continue };
                    let len = store.layout.len();
                    let o = o % len;
                    let n = n.min(len - o);
                    store.backing.write(o, &vec![v; n as usize]).unwrap();
                    let order = g.order();
                    for x in o..o + n {
                        let s = store.layout.at_offset(x).unwrap();
                        assert_eq!(formula(&order, g.gran, g.dpa(), s.device, s.dpa), x);
                        model[s.device][s.dpa as usize] = v;
                    }
                }
                Op::Commit(g) => {
                    let len = g.len();
                    let dpa = g.dpa();
                    if dpa + len / g.ways as u64 > DEV_BYTES {
                        continue;
                    }
                    let layout = Arc::new(modulo(&g.order(), g.gran, len, dpa));
                    let store = match storage::find_store(&mem, 0, 0, &layout) {
                        Some(s) => s,
                        None => {
                            let s = RegionStore::new(0, 0, layout.clone()).unwrap();
                            storage::adopt(&mem, &s).unwrap();
                            s
                        }
                    };
                    // The devices' own stores hold nothing for the moved extents.
                    for (d, a, n) in layout.extents() {
                        let own = mem[d].volatile.as_ref().unwrap();
                        let mut rest = 0;
                        for (_, l) in own.data_ranges(a, n).unwrap() {
                            rest += l;
                        }
                        // Partial pages at the extent's ends are zeroed, not freed.
                        assert!(rest <= 2 * 4096, "device {d}: {rest} bytes left in its own store");
                        let mut page = vec![0u8; n.min(4096) as usize];
                        own.read(a, &mut page).unwrap();
                        assert!(page.iter().all(|&b| b == 0), "moved bytes are not left behind");
                    }
                    current = Some((store, g));
                }
                Op::EvictAll => {
                    for d in 0..16 {
                        storage::evict(&mem, d, 0, DEV_BYTES).unwrap();
                        assert!(mem[d].placements().is_empty());
                    }
                    current = None;
                }
            }
            check(&mem, &model);
        }
    }
}

#[test]
fn a_fresh_device_moves_nothing_and_a_populated_one_moves_what_exists() {
    let mem = devices(3);
    let order = [0, 1, 2];
    let layout = Arc::new(modulo(&order, 256, 3 << 20, 0));
    let store = RegionStore::new(0, 0, layout.clone()).unwrap();
    assert_eq!(
        storage::adopt(&mem, &store).unwrap().bytes,
        0,
        "nothing exists"
    );
    assert_eq!(store.backing.data_ranges(0, 3 << 20).unwrap(), vec![]);
    // Written through the store, read through the devices and the formula.
    store.backing.write(0x1234, &[0xab]).unwrap();
    let s = layout.at_offset(0x1234).unwrap();
    assert_eq!(formula(&order, 256, 0, s.device, s.dpa), 0x1234);
    let mut b = [0u8];
    assert!(mem[s.device].read(s.dpa, &mut b));
    assert_eq!(b[0], 0xab);
    // Home again: one populated page of the store holds 4096 bytes of 3 devices; only this
    // device's share of it is copied.
    let moved = storage::evict(&mem, s.device, 0, 1 << 20).unwrap();
    assert!(moved.bytes > 0 && moved.bytes <= 4096, "{moved:?}");
    let own = mem[s.device].volatile.as_ref().unwrap();
    own.read(s.dpa, &mut b).unwrap();
    assert_eq!(b[0], 0xab, "the byte is in the device's own store now");
    // Same geometry again: the store is found only while every share is still placed in it.
    assert!(storage::find_store(&mem, 0, 0, &layout).is_none());
    let again = RegionStore::new(0, 0, layout.clone()).unwrap();
    let moved = storage::adopt(&mem, &again).unwrap();
    // What exists moves, nothing else: the other two devices' shares of the old store's one
    // populated page come home, then each device's populated pages (one or two: its share of
    // that page spans ~1.3 KiB of DPA) go into the new store. 1 MiB per device is not scanned
    // byte by byte.
    assert!(moved.bytes > 0 && moved.bytes <= 7 * 4096, "{moved:?}");
    assert!(storage::find_store(&mem, 0, 0, &layout).is_some());
    assert!(mem[s.device].read(s.dpa, &mut b));
    assert_eq!(b[0], 0xab);
}
