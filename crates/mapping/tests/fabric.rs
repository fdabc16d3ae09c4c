//! The fabric end to end on the host (no KVM): program decoders through the component register
//! MMIO the way Linux does, then check that every HPA reaches the device and DPA an independent
//! formula says, through both the decode graph and the window dispatcher.

// The register helpers of cxlvm-cxl's own tests (commit, uncommit, target lists).
#[path = "../../cxl/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use common::{caps, commit, hdm_base, rd32, target_list, uncommit, wr32};
use cxlvm_cxl::fabric::{ComponentId, ComponentMmio, Fabric, FabricSpec};
use cxlvm_cxl::graph::{Miss, Target, WindowNode};
use cxlvm_cxl::interleave::{Granularity, Ways};
use cxlvm_cxl::topology::Arithmetic;
use cxlvm_mapping::window::{DeviceMemory, WindowDispatcher};
use cxlvm_memory::{MmioHandler, RamBacking};

const GIB: u64 = 1 << 30;
const WBASE: u64 = 1 << 40;

/// `hbs[i]` root ports each; one 1 GiB device per root port; one window over all host bridges.
struct Rig {
    fabric: Arc<Fabric>,
    mem: Arc<[DeviceMemory]>,
    disp: WindowDispatcher,
    /// Device index of (hb, port).
    dev: Vec<Vec<usize>>,
    window_ways: usize,
}

fn rig(hbs: &[u8], passthrough: bool, window_gran: u64) -> Rig {
    let mut devices = Vec::new();
    let mut dev = Vec::new();
    for (h, &n) in hbs.iter().enumerate() {
        let mut v = Vec::new();
        for p in 0..n {
            v.push(devices.len());
            devices.push((h, p, caps(false, 0), GIB, 0));
        }
        dev.push(v);
    }
    let ndev = devices.len() as u64;
    let spec = FabricSpec {
        windows: vec![WindowNode {
            base: WBASE,
            size: ndev * GIB,
            ways: Ways::from_count(hbs.len() as u32).unwrap(),
            gran: Granularity::from_bytes(window_gran).unwrap(),
            arithmetic: Arithmetic::Modulo,
            xormaps: vec![],
            targets: (0..hbs.len()).collect(),
        }],
        host_bridges: hbs
            .iter()
            .map(|&n| (passthrough, (!passthrough).then(|| caps(true, n)), n))
            .collect(),
        devices,
    };
    let fabric = Fabric::new(spec);
    let mem: Arc<[DeviceMemory]> = (0..ndev)
        .map(|i| {
            DeviceMemory::new(
                Some(RamBacking::memfd(&format!("mem{i}"), GIB).unwrap()),
                None,
            )
        })
        .collect();
    let disp = WindowDispatcher::new(0, WBASE, fabric.graph_handle(), mem.clone());
    Rig {
        fabric,
        mem,
        disp,
        dev,
        window_ways: hbs.len(),
    }
}

impl Rig {
    fn mmio(&self, id: ComponentId) -> ComponentMmio {
        ComponentMmio::new(self.fabric.clone(), id)
    }

    /// Devices in region position order: position p → host bridge p % WW, its (p / WW)-th port.
    fn order(&self) -> Vec<(usize, usize)> {
        let per_hb = self.dev[0].len();
        (0..self.window_ways * per_hb)
            .map(|p| (p % self.window_ways, p / self.window_ways))
            .collect()
    }

    /// Creates a region over the whole window the way Linux does: enables, endpoint decoders
    /// first, then host-bridge decoders.
    fn region(&self, gran: u64, passthrough: bool) {
        let order = self.order();
        let w = order.len() as u32;
        let size = u64::from(w) * GIB;
        for &(h, p) in &order {
            let d = self.dev[h][p];
            let m = self.mmio(ComponentId::Device(d));
            let hdm = hdm_base(&m).unwrap();
            wr32(&m, hdm + 4, 2); // HDM Decoder Enable
            self.fabric.set_pci_mem(ComponentId::Device(d), true);
            self.fabric
                .set_pci_mem(ComponentId::RootPort { hb: h, port: p }, true);
            self.fabric.set_mem_enable(d, true);
            assert!(
                commit(&m, 0, WBASE, size, w, gran, 0),
                "endpoint {d} commits"
            );
        }
        if passthrough {
            return;
        }
        for h in 0..self.window_ways {
            let ports: Vec<u8> = order
                .iter()
                .filter(|o| o.0 == h)
                .map(|o| o.1 as u8)
                .collect();
            let m = self.mmio(ComponentId::HostBridge(h));
            // Linux: HB IG = region IG x root ways when the HB interleaves, else the region IG.
            let hb_gran = if ports.len() > 1 {
                gran * self.window_ways as u64
            } else {
                gran
            };
            assert!(
                commit(
                    &m,
                    0,
                    WBASE,
                    size,
                    ports.len() as u32,
                    hb_gran,
                    target_list(&ports)
                ),
                "HB {h} commits"
            );
        }
    }

    /// The independent formula: device and DPA of `hpa` for a region of the whole window.
    fn expect(&self, hpa: u64, gran: u64) -> (usize, u64) {
        let order = self.order();
        let w = order.len() as u64;
        let off = hpa - WBASE;
        let chunk = off / gran;
        let (h, p) = order[(chunk % w) as usize];
        (self.dev[h][p], (chunk / w) * gran + off % gran)
    }
}

fn samples(size: u64, gran: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..64 * 16).map(|i| i * gran / 4 + (i % 7)).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x % size);
    }
    v.retain(|&o| o < size);
    v
}

fn check(hbs: &[u8], passthrough: bool, gran: u64) {
    let window_gran = if hbs.len() > 1 { gran } else { 4096 };
    let r = rig(hbs, passthrough, window_gran);
    let size = r.order().len() as u64 * GIB;
    // Before commit nothing reaches any device.
    for off in samples(size, gran).into_iter().take(100) {
        assert!(matches!(
            r.fabric.graph().route(WBASE + off),
            Target::Unclaimed(_)
        ));
        r.disp.write(off & !7, &[0x55; 8]);
        let mut b = [0u8; 8];
        r.disp.read(off & !7, &mut b);
        assert_eq!(b, [0xff; 8]);
    }
    for m in r.mem.iter() {
        let mut b = [0u8; 8];
        m.volatile.as_ref().unwrap().read(0, &mut b).unwrap();
        assert_eq!(b, [0; 8], "no byte reached a device before commit");
    }
    r.region(gran, passthrough);
    let g = r.fabric.graph();
    for off in samples(size, gran) {
        let hpa = WBASE + off;
        let (dev, dpa) = r.expect(hpa, gran);
        assert_eq!(
            g.route(hpa),
            Target::Device { device: dev, dpa },
            "hpa {hpa:#x} hbs {hbs:?} gran {gran}"
        );
        // Through the dispatcher: an 8-byte aligned store lands at the formula's place.
        let a = off & !7;
        let v = (hpa & !7) ^ 0xC710_0000_0000_0000;
        r.disp.write(a, &v.to_le_bytes());
        let (d2, p2) = r.expect(WBASE + a, gran);
        let mut b = [0u8; 8];
        r.mem[d2]
            .volatile
            .as_ref()
            .unwrap()
            .read(p2, &mut b)
            .unwrap();
        assert_eq!(
            u64::from_le_bytes(b),
            v,
            "store at {:#x} in device {d2} DPA {p2:#x}",
            WBASE + a
        );
    }
}

#[test]
fn one_way_region_maps_linearly() {
    for gran in [256, 4096, 16384] {
        check(&[1], false, gran);
    }
}

#[test]
fn passthrough_host_bridge_needs_only_endpoint_decoders() {
    check(&[1], true, 4096);
}

#[test]
fn two_way_across_root_ports() {
    for gran in [256, 4096, 16384] {
        check(&[2], false, gran);
    }
}

#[test]
fn four_way_across_root_ports() {
    for gran in [256, 4096, 16384] {
        check(&[4], false, gran);
    }
}

#[test]
fn two_way_across_host_bridges() {
    for gran in [256, 4096, 16384] {
        check(&[1, 1], false, gran);
    }
}

#[test]
fn four_way_across_host_bridges_and_root_ports() {
    // 2 HBs x 2 RPs at 16 KiB would need 32 KiB HB granularity, which CXL cannot encode.
    for gran in [256, 4096, 8192] {
        check(&[2, 2], false, gran);
    }
    for gran in [256, 4096, 16384] {
        check(&[1, 1, 1, 1], false, gran);
    }
}

#[test]
fn disabling_memory_or_uncommitting_stops_decoding() {
    let r = rig(&[1], false, 4096);
    r.region(4096, false);
    assert!(matches!(
        r.fabric.graph().route(WBASE),
        Target::Device { device: 0, dpa: 0 }
    ));
    r.fabric.set_mem_enable(0, false);
    assert_eq!(
        r.fabric.graph().route(WBASE),
        Target::Unclaimed(Miss::DeviceDisabled)
    );
    r.fabric.set_mem_enable(0, true);
    r.fabric
        .set_pci_mem(ComponentId::RootPort { hb: 0, port: 0 }, false);
    assert_eq!(
        r.fabric.graph().route(WBASE),
        Target::Unclaimed(Miss::NoPort)
    );
    r.fabric
        .set_pci_mem(ComponentId::RootPort { hb: 0, port: 0 }, true);
    // Uncommit the HB decoder (clear Commit).
    let m = r.mmio(ComponentId::HostBridge(0));
    uncommit(&m, 0);
    let d = hdm_base(&m).unwrap() + 0x10;
    assert_eq!(rd32(&m, d + 0x10) & (1 << 10), 0, "Committed cleared");
    assert_eq!(
        r.fabric.graph().route(WBASE),
        Target::Unclaimed(Miss::NoHostBridgeDecoder)
    );
    // A device reset uncommits the endpoint.
    r.fabric.reset(ComponentId::Device(0));
    assert!(r.fabric.graph().devices[0].decoders.is_empty());
}

#[test]
fn decoders_outside_the_window_or_naming_missing_ports_are_refused() {
    let r = rig(&[2], false, 4096);
    let ep = r.mmio(ComponentId::Device(0));
    // Endpoint range outside every window reachable from its host bridge.
    assert!(!commit(&ep, 0, WBASE + 4 * GIB, GIB, 1, 4096, 0));
    let hb = r.mmio(ComponentId::HostBridge(0));
    // Target port 7 does not exist.
    assert!(!commit(
        &hb,
        0,
        WBASE,
        2 * GIB,
        2,
        4096,
        target_list(&[0, 7])
    ));
    // Device capacity: 1 GiB per device; a 1-way 2 GiB decoder needs 2 GiB of DPA.
    assert!(!commit(&ep, 0, WBASE, 2 * GIB, 1, 4096, 0));
}
