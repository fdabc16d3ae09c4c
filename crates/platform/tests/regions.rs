//! Firmware-committed regions on the host (no KVM): after `CxlPlatform::build` the decode graph
//! holds the committed decoders the `[[region]]` tables describe, the enables are set as firmware
//! sets them, the mapping planner maps the ranges, locks hold against guest-style writes, and
//! every HPA reaches the device and DPA an independent formula says.

use std::sync::{Arc, Mutex};

use cxlvm_cxl::component::{CACHE_MEM_OFFSET, HDM_PTR};
use cxlvm_cxl::dvsec;
use cxlvm_cxl::fabric::ComponentId;
use cxlvm_cxl::graph::Target;
use cxlvm_cxl::hdm::{
    CTRL_COMMIT, CTRL_COMMITTED, CTRL_HOST_ONLY, CTRL_LOCK_ON_COMMIT, DEC_CTRL, GLOBAL_HDM_ENABLE,
    HDM_DECODER_STRIDE, HDM_DECODER0, HDM_GLOBAL_CTRL,
};
use cxlvm_cxl::interleave::{Granularity, Ways};
use cxlvm_cxl::region::Capacity;
use cxlvm_cxl::topology::{AddressLimits, Topology};
use cxlvm_mapping::overlay::RangeMode;
use cxlvm_mapping::planner::{self, RangePlan};
use cxlvm_memory::{AddressSpace, MmioHandler};
use cxlvm_pci::PciFunction;
use cxlvm_platform::{CxlPlatform, OverlayOptions, PlatformError, PlatformLayout};

const MIB: u64 = 1 << 20;
const W0: u64 = 1 << 40;
const W1: u64 = W0 + 1024 * MIB;

fn layout() -> PlatformLayout {
    PlatformLayout {
        ecam_base: 0xE000_0000,
        chbcr_base: 0xD010_0000,
        aperture_base: 0x40_0000_0000,
        aperture_size: 1 << 30,
    }
}

fn options(vma_budget: u64) -> OverlayOptions {
    OverlayOptions {
        vma_budget,
        direct: true,
        fatal: Box::new(|e| panic!("{e}")),
    }
}

/// The platform and its address space (which the platform holds weakly).
type Built = (CxlPlatform, Arc<Mutex<AddressSpace>>);

fn build(t: &Topology, vma_budget: u64) -> Result<Built, PlatformError> {
    let space = Arc::new(Mutex::new(AddressSpace::new("t", 1 << 47)));
    let files = CxlPlatform::open_files(t).unwrap();
    CxlPlatform::build(t, files, &space, layout(), options(vma_budget)).map(|p| (p, space))
}

/// hb0: mem0 (rp 0, 512M), mem1 (rp 1, 256M + 256M persistent); hb1: mem2 (rp 0, 512M), mem3
/// (rp 1, no region). w0 over hb0 (1G, 4K), w1 over hb0 + hb1 (1G, 4K).
/// r0: w0, 2 ways [mem0, mem1] 512M; r1: w1, 2 ways over both host bridges [mem0, mem2]; r2: w0,
/// persistent on mem1, unlocked.
fn topology(dir: &std::path::Path) -> Topology {
    let mut t = Topology::from_toml(&format!(
        r#"
[[host_bridge]]
id = "hb0"
root_ports = 2
[[host_bridge]]
id = "hb1"
root_ports = 2
[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "512M"
[[device]]
id = "mem1"
host_bridge = "hb0"
root_port = 1
volatile = "256M"
persistent = "256M"
persistent_file = "{}/pmem1.img"
[[device]]
id = "mem2"
host_bridge = "hb1"
root_port = 0
volatile = "512M"
[[device]]
id = "mem3"
host_bridge = "hb1"
root_port = 1
volatile = "256M"
[[window]]
id = "w0"
size = "1G"
targets = ["hb0"]
[[window]]
id = "w1"
size = "1G"
targets = ["hb0", "hb1"]
[[region]]
id = "r0"
window = "w0"
devices = ["mem0", "mem1"]
size = "512M"
[[region]]
id = "r1"
window = "w1"
devices = ["mem0", "mem2"]
size = "512M"
[[region]]
id = "r2"
window = "w0"
devices = ["mem1"]
size = "256M"
persistent = true
lock = false
"#,
        dir.display()
    ))
    .unwrap();
    t.validate(&AddressLimits {
        reserved: vec![],
        window_min: 1 << 40,
        window_max: 1 << 46,
    })
    .unwrap();
    t
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cxlvm-regions-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hdm(n: usize, reg: usize) -> u64 {
    (CACHE_MEM_OFFSET + HDM_PTR + HDM_DECODER0 + HDM_DECODER_STRIDE * n + reg) as u64
}

fn rd32(p: &CxlPlatform, id: ComponentId, off: u64) -> u32 {
    let mut b = [0u8; 4];
    p.fabric.read(id, off, &mut b);
    u32::from_le_bytes(b)
}

fn config16(f: &dyn PciFunction, off: u16) -> u16 {
    let mut b = [0u8; 2];
    f.read_config(off, &mut b);
    u16::from_le_bytes(b)
}

#[test]
fn build_commits_the_decoders_sets_the_enables_and_maps_the_ranges() {
    let dir = tmpdir("build");
    let t = topology(&dir);
    // A small VMA budget: the interleaved regions stay on the MMIO path (cheap to build), the
    // linear one is mapped.
    let (p, _space) = build(&t, 16).unwrap();
    let g = p.fabric.graph();

    // Host bridge decoders: hb0 carries r0, r2 (w0) and r1 (w1), in HPA order; hb1 only r1.
    let hb0: Vec<_> = g.host_bridges[0]
        .decoders
        .iter()
        .map(|d| (d.base, d.size, d.ways, d.gran, d.targets.clone()))
        .collect();
    assert_eq!(
        hb0,
        vec![
            (W0, 512 * MIB, Ways::X2, Granularity::K4, vec![0, 1]),
            (
                W0 + 512 * MIB,
                256 * MIB,
                Ways::X1,
                Granularity::K4,
                vec![1]
            ),
            (W1, 512 * MIB, Ways::X1, Granularity::K8, vec![0]),
        ]
    );
    let hb1: Vec<_> = g.host_bridges[1]
        .decoders
        .iter()
        .map(|d| (d.base, d.size, d.ways, d.gran, d.targets.clone()))
        .collect();
    assert_eq!(
        hb1,
        vec![(W1, 512 * MIB, Ways::X1, Granularity::K8, vec![0])]
    );
    // Endpoint decoders with their DPA: mem0 r0 then r1; mem1 r0 (volatile) then r2 (persistent
    // at V = 256 MiB); mem2 r1; mem3 nothing.
    let ep = |d: usize| -> Vec<_> {
        g.devices[d]
            .decoders
            .iter()
            .map(|c| (c.base, c.ways, c.dpa_skip, c.dpa_base, c.host_only))
            .collect()
    };
    assert_eq!(
        ep(0),
        vec![
            (W0, Ways::X2, 0, 0, true),
            (W1, Ways::X2, 0, 256 * MIB, true)
        ]
    );
    assert_eq!(
        ep(1),
        vec![
            (W0, Ways::X2, 0, 0, true),
            (W0 + 512 * MIB, Ways::X1, 0, 256 * MIB, true)
        ]
    );
    assert_eq!(ep(2), vec![(W1, Ways::X2, 0, 0, true)]);
    assert!(ep(3).is_empty());
    assert_eq!(
        g.devices.iter().map(|d| d.decoding).collect::<Vec<_>>(),
        vec![true, true, true, false],
        "devices of a region decode (Mem_Enable, HDM Decoder Enable, Command.MEM); mem3 is left at reset"
    );

    // Registers as the guest reads them: HDM Decoder Enable and DVSEC Mem_Enable on region
    // devices only, Command.MEM everywhere (BARs), Committed + host-only + Lock-On-Commit on
    // locked regions only.
    for (d, ep) in p.endpoints.iter().enumerate() {
        let on = d != 3;
        let global = rd32(
            &p,
            ComponentId::Device(d),
            (CACHE_MEM_OFFSET + HDM_PTR + HDM_GLOBAL_CTRL) as u64,
        );
        assert_eq!(global & GLOBAL_HDM_ENABLE != 0, on, "mem{d}");
        let dv = ep
            .with_config(|c| c.find_dvsec(dvsec::CXL_VENDOR, dvsec::id::DEVICE))
            .unwrap();
        let ctl = config16(ep.as_ref(), dv + dvsec::DEVICE_CONTROL);
        assert_eq!(ctl & dvsec::MEM_ENABLE != 0, on, "mem{d}");
        assert_ne!(config16(ep.as_ref(), 0x04) & 0x2, 0, "mem{d} Command.MEM");
    }
    let ctrl = |id, n| rd32(&p, id, hdm(n, DEC_CTRL));
    let locked = CTRL_COMMITTED | CTRL_HOST_ONLY | CTRL_LOCK_ON_COMMIT;
    assert_eq!(ctrl(ComponentId::Device(1), 0) & locked, locked);
    assert_eq!(
        ctrl(ComponentId::Device(1), 1) & locked,
        CTRL_COMMITTED | CTRL_HOST_ONLY
    );
    assert_eq!(ctrl(ComponentId::HostBridge(0), 2) & locked, locked);
    assert_eq!(
        ctrl(ComponentId::HostBridge(0), 1) & locked,
        CTRL_COMMITTED | CTRL_HOST_ONLY
    );

    // The mapping planner maps every region: r0 and r1 interleaved over volatile capacity (one
    // region store each), r2 linear onto mem1's persistent capacity.
    let plan = planner::plan(&g, u64::MAX);
    let covering = |hpa: u64| plan.iter().find(|r| r.hpa() <= hpa && hpa < r.end());
    assert!(matches!(
        covering(W0),
        Some(RangePlan::Stored { len, .. }) if *len == 512 * MIB
    ));
    assert!(matches!(
        covering(W1),
        Some(RangePlan::Stored { len, .. }) if *len == 512 * MIB
    ));
    assert_eq!(
        covering(W0 + 512 * MIB),
        Some(&RangePlan::Linear {
            window: 0,
            hpa: W0 + 512 * MIB,
            len: 256 * MIB,
            device: 1,
            dpa: 256 * MIB
        })
    );
    // ... and the overlay manager installed the mapping the budget allows (the linear range),
    // before anything ran.
    let ranges = p.overlays.ranges();
    let r2 = ranges.iter().find(|r| r.hpa == W0 + 512 * MIB).unwrap();
    assert_eq!((r2.mode, r2.len), (RangeMode::Linear, 256 * MIB));

    // Every HPA reaches the DPA an independent formula gives (spot checks per region).
    for k in 0..2048u64 {
        let off = k * 0x4_0008 % (512 * MIB);
        let chunk = off / 4096;
        let dpa = (chunk / 2) * 4096 + off % 4096;
        assert_eq!(
            g.route(W0 + off),
            Target::Device {
                device: (chunk % 2) as usize,
                dpa
            }
        );
        assert_eq!(
            g.route(W1 + off),
            Target::Device {
                device: if chunk.is_multiple_of(2) { 0 } else { 2 },
                dpa: if chunk.is_multiple_of(2) {
                    256 * MIB + dpa
                } else {
                    dpa
                }
            }
        );
        let off2 = off % (256 * MIB);
        assert_eq!(
            g.route(W0 + 512 * MIB + off2),
            Target::Device {
                device: 1,
                dpa: 256 * MIB + off2
            }
        );
    }
    // The MMIO path agrees: a write through the window lands in the persistent file's backing.
    p.dispatchers[0].write(512 * MIB + 0x1238, &0x1122_3344_5566_7788u64.to_le_bytes());
    let mut b = [0u8; 8];
    p.memories[1]
        .persistent
        .as_ref()
        .unwrap()
        .read(0x1238, &mut b)
        .unwrap();
    assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7788);

    // The plans are exposed as built.
    assert_eq!(
        p.regions
            .iter()
            .map(|r| (r.id.as_str(), r.base, r.capacity, r.lock))
            .collect::<Vec<_>>(),
        vec![
            ("r0", W0, Capacity::Volatile, true),
            ("r1", W1, Capacity::Volatile, true),
            ("r2", W0 + 512 * MIB, Capacity::Persistent, false),
        ]
    );
}

#[test]
fn locked_decoders_ignore_uncommit_and_unlocked_ones_obey() {
    let dir = tmpdir("lock");
    let t = topology(&dir);
    let (p, _space) = build(&t, 16).unwrap();
    let before = p.fabric.graph();
    // Clearing Commit, as Linux's decoder reset does, on locked decoders: ignored.
    for (id, n) in [
        (ComponentId::HostBridge(0), 2),
        (ComponentId::HostBridge(1), 0),
        (ComponentId::Device(0), 1),
        (ComponentId::Device(2), 0),
    ] {
        let c = rd32(&p, id, hdm(n, DEC_CTRL));
        p.fabric
            .write(id, hdm(n, DEC_CTRL), &(c & !CTRL_COMMIT).to_le_bytes());
        assert_ne!(rd32(&p, id, hdm(n, DEC_CTRL)) & CTRL_COMMITTED, 0, "{id:?}");
    }
    assert_eq!(*p.fabric.graph(), *before, "nothing changed");
    // r2 (unlocked) is the top decoder of mem1: it uncommits, and its mapping goes.
    let id = ComponentId::Device(1);
    let c = rd32(&p, id, hdm(1, DEC_CTRL));
    p.fabric
        .write(id, hdm(1, DEC_CTRL), &(c & !CTRL_COMMIT).to_le_bytes());
    assert_eq!(rd32(&p, id, hdm(1, DEC_CTRL)) & CTRL_COMMITTED, 0);
    assert!(
        !p.overlays
            .ranges()
            .iter()
            .any(|r| r.hpa == W0 + 512 * MIB && r.mode == RangeMode::Linear)
    );
}

#[test]
fn an_unvalidated_topology_is_an_internal_error_at_build() {
    let dir = tmpdir("unvalidated");
    let mut t = topology(&dir);
    // Break a region after validation: the plan at build refuses it, typed.
    t.regions[0].devices.push("mem9".into());
    let err = build(&t, 16).err().expect("build refuses the region");
    assert!(matches!(err, PlatformError::Regions(_)), "{err:?}");
    assert!(!err.is_user_error());
}
