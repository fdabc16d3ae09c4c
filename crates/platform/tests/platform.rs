//! The built CXL platform as a guest OS sees its configuration space: `lspci -F` (pciutils)
//! decodes our dumps and shows the class, the root ports and the CXL DVSECs as intended.

use std::process::Command;
use std::sync::{Arc, Mutex};

use cxlvm_cxl::topology::{AddressLimits, Topology};
use cxlvm_memory::AddressSpace;
use cxlvm_platform::{CxlPlatform, PlatformLayout};

fn build(topo: &str) -> (CxlPlatform, Arc<Mutex<AddressSpace>>) {
    build_at(topo, 0x40_0000_0000)
}

/// Builds with the PCI MMIO aperture (1 GiB) at `aperture_base`.
fn build_at(topo: &str, aperture_base: u64) -> (CxlPlatform, Arc<Mutex<AddressSpace>>) {
    let mut t = Topology::from_toml(topo).unwrap();
    t.validate(&AddressLimits {
        reserved: vec![],
        window_min: 1 << 40,
        window_max: 1 << 46,
    })
    .unwrap();
    let space = Arc::new(Mutex::new(AddressSpace::new("t", 1 << 47)));
    let files = CxlPlatform::open_files(&t).unwrap();
    let layout = PlatformLayout {
        ecam_base: 0xE000_0000,
        chbcr_base: 0xD010_0000,
        aperture_base,
        aperture_size: if aperture_base < 1 << 32 {
            256 << 20
        } else {
            1 << 30
        },
    };
    let options = cxlvm_platform::OverlayOptions {
        vma_budget: 100_000,
        direct: true,
        fatal: Box::new(|e| panic!("{e}")),
    };
    (
        CxlPlatform::build(&t, files, &space, layout, options).unwrap(),
        space,
    )
}

const TOPO: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 2

[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 1
volatile = "512M"

[[window]]
id = "w0"
size = "1G"
targets = ["hb0"]
"#;

#[test]
fn lspci_decodes_root_ports_type3_class_and_cxl_dvsecs() {
    let (p, space) = build(TOPO);
    let dump = cxlvm_pci::lspci_dump(&p.segment);
    let path = std::env::temp_dir().join(format!("cxlvm-lspci-{}.txt", std::process::id()));
    std::fs::write(&path, &dump).unwrap();
    let out = Command::new("lspci")
        .arg("-F")
        .arg(&path)
        .arg("-vvv")
        .output()
        .expect("lspci (pciutils) must be installed: apt-get install pciutils");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "10:00.0 PCI bridge",
        "10:01.0 PCI bridge",
        "Root Port",
        "LnkCap:\tPort #1",
        "12:00.0 CXL",
        "CXL Memory Device",
        "Designated Vendor-Specific: Vendor=1e98 ID=0000",
        "Designated Vendor-Specific: Vendor=1e98 ID=0008",
        "Designated Vendor-Specific: Vendor=1e98 ID=0003",
        "Designated Vendor-Specific: Vendor=1e98 ID=0007",
        "Region 0: Memory at 40",
        "Region 2: Memory at 40",
    ] {
        assert!(text.contains(want), "lspci output lacks '{want}':\n{text}");
    }
    // The BARs cxlvm assigned are really mapped where lspci says.
    let bar0 = p.endpoints[0].bar_address(0).unwrap();
    assert!(space.lock().unwrap().view().lookup(bar0).is_some());
}

/// Bounded random traffic at every guest-reachable register of a multi-host-bridge platform:
/// ECAM (including BARs, bus numbers, bridge control, DVSECs), CHBCRs, root port and endpoint
/// component registers, device registers (mailbox doorbells) and the windows. Nothing may panic,
/// and the memory map must stay renderable (every commit either succeeded or changed nothing).
const TWO_HOST_BRIDGES: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 2
[[host_bridge]]
id = "hb1"
root_ports = 1
[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "256M"
[[device]]
id = "mem1"
host_bridge = "hb0"
root_port = 1
volatile = "256M"
[[device]]
id = "mem2"
host_bridge = "hb1"
root_port = 0
volatile = "256M"
[[window]]
id = "w0"
size = "1G"
targets = ["hb0", "hb1"]
granularity = "4K"
"#;

/// What Linux checks when it claims firmware's BARs: each inside its host bridge's `_CRS` share
/// of the aperture, and each device's BARs inside its root port's memory window (found by Linux
/// itself on a first boot: "can't claim; no compatible bridge window").
#[test]
fn firmware_bars_lie_inside_their_bridges_windows() {
    let (p, _space) = build_at(TWO_HOST_BRIDGES, 0xc000_0000);
    let inside = |a: u64, len: u64, (b, s): (u64, u64)| a >= b && a + len <= b + s;
    let mut slices: Vec<(u64, u64)> = p.host_bridges.iter().map(|h| h.mmio).collect();
    slices.sort();
    for w in slices.windows(2) {
        assert!(
            w[0].0 + w[0].1 <= w[1].0,
            "host bridge slices overlap: {slices:x?}"
        );
    }
    for (hb, ports) in p.root_ports.iter().enumerate() {
        let slice = p.host_bridges[hb].mmio;
        assert!(
            inside(slice.0, slice.1, p.aperture),
            "{slice:x?} outside the aperture"
        );
        for rp in ports {
            let bar = rp.bar_address(0).unwrap();
            assert!(inside(bar, 0x1_0000, slice), "{}: BAR0 {bar:#x}", rp.name());
            let window = rp.memory_window().expect("firmware opened the window");
            assert!(
                inside(window.0, window.1, slice),
                "{}: {window:x?}",
                rp.name()
            );
            assert!(
                !inside(bar, 0x1_0000, window),
                "{}: own BAR inside its window",
                rp.name()
            );
            for (_, child) in rp.children() {
                let ep = p
                    .endpoints
                    .iter()
                    .find(|e| std::ptr::addr_eq(Arc::as_ptr(e), Arc::as_ptr(&child)))
                    .expect("an endpoint");
                for (i, len) in [(0, 0x1_0000), (2, 0x1000)] {
                    let a = ep.bar_address(i).unwrap();
                    assert!(
                        inside(a, len, window),
                        "{} BAR{i} {a:#x} not in {window:x?}",
                        ep.name()
                    );
                }
            }
        }
    }
    // lspci, the independent decoder, reads the same windows back from the config space.
    let dump = cxlvm_pci::lspci_dump(&p.segment);
    let path = std::env::temp_dir().join(format!("cxlvm-lspci-win-{}.txt", std::process::id()));
    std::fs::write(&path, &dump).unwrap();
    let out = Command::new("lspci")
        .arg("-F")
        .arg(&path)
        .arg("-vv")
        .output()
        .expect("lspci (pciutils) is installed by test.sh");
    std::fs::remove_file(&path).ok();
    let text = String::from_utf8_lossy(&out.stdout);
    let behind = text
        .lines()
        .filter(|l| l.contains("Memory behind bridge:") && l.contains("[size=1M]"))
        .count();
    assert_eq!(behind, 3, "{text}");
}

#[test]
fn random_register_traffic_never_panics() {
    let topo = r#"
[[host_bridge]]
id = "a"
root_ports = 2
[[host_bridge]]
id = "b"
root_ports = 1
passthrough = true
[[device]]
id = "m0"
host_bridge = "a"
root_port = 0
volatile = "256M"
[[device]]
id = "m1"
host_bridge = "a"
root_port = 1
volatile = "256M"
[[device]]
id = "m2"
host_bridge = "b"
root_port = 0
volatile = "256M"
[[window]]
id = "w0"
size = "1G"
targets = ["a", "b"]
granularity = 256
[[window]]
id = "w1"
size = "512M"
targets = ["a"]
"#;
    let (p, space) = build(topo);
    let view = space.lock().unwrap().view_handle();
    let mut targets: Vec<(u64, u64)> = vec![(p.ecam.0, p.ecam.1), (0xD010_0000, 0x2_0000)];
    // Every function's 4 KiB of configuration space.
    for (bus, devfn, _) in p.segment.functions() {
        targets.push((
            p.ecam.0 + (u64::from(bus) << 20 | u64::from(devfn) << 12),
            0x1000,
        ));
    }
    for w in &p.windows {
        targets.push((w.base, w.size));
    }
    // Register BARs where they are now (they may move during the run; stale ones are holes).
    for ep in &p.endpoints {
        targets.push((ep.bar_address(0).unwrap(), 0x1_0000));
        targets.push((ep.bar_address(2).unwrap(), 0x1000));
    }
    for rp in p.root_ports.iter().flatten() {
        targets.push((rp.bar_address(0).unwrap(), 0x1_0000));
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let generation0 = space.lock().unwrap().view().generation();
    for _ in 0..50_000 {
        let (base, size) = targets[(next() % targets.len() as u64) as usize];
        // Bias towards the first 8 KiB of each block, where the registers are.
        let off = if next() % 4 == 0 {
            next() % size
        } else {
            next() % size.min(0x2000)
        };
        let len = [1usize, 2, 4, 8][(next() % 4) as usize];
        let v = view.load();
        if next() % 3 == 0 {
            let mut b = [0u8; 8];
            v.read(base + off, &mut b[..len]);
        } else {
            // Doorbells and commit bits get set often this way.
            let val = match next() % 4 {
                0 => u64::MAX,
                1 => 1 << (next() % 64),
                _ => next(),
            };
            v.write(base + off, &val.to_le_bytes()[..len]);
        }
    }
    // The map changed (BAR moves, enables) and is still a valid flat view.
    let sp = space.lock().unwrap();
    assert!(
        sp.view().generation() > generation0,
        "the traffic reprogrammed something"
    );
    let ranges = sp.view().ranges().to_vec();
    assert!(ranges.windows(2).all(|w| w[0].end() <= w[1].start));
}

/// Programs a 1-way region over the whole window of a one-device platform the way Linux does,
/// through ECAM and the component registers.
fn linux_commit(p: &CxlPlatform, space: &Arc<Mutex<AddressSpace>>) {
    let view = space.lock().unwrap().view_handle();
    let w = &p.windows[0];
    let ep = &p.endpoints[0];
    let comp = ep.bar_address(0).unwrap();
    let chbcr = p.host_bridges[0].chbcr;
    let wr = |addr: u64, v: u32| {
        view.load().write(addr, &v.to_le_bytes());
    };
    // Endpoint: HDM Decoder Enable, then Mem_Enable in the Device DVSEC (ECAM write).
    let hdm = 0x1200u64; // cxlvm's component layout puts the HDM capability at +0x1200
    wr(comp + hdm + 4, 2);
    set_mem_enable(p, space, true);
    for (base, kind_tl) in [(comp + hdm, 0u32), (chbcr + hdm, 0u32)] {
        let d = base + 0x10;
        wr(d + 4, (w.base >> 32) as u32);
        wr(d, w.base as u32);
        wr(d + 0xc, (w.size >> 32) as u32);
        wr(d + 8, w.size as u32);
        wr(d + 0x18, 0);
        wr(d + 0x14, kind_tl);
        wr(d + 0x10, 1 << 9 | 1 << 12);
    }
}

fn dvsec_control(p: &CxlPlatform) -> u16 {
    p.endpoints[0].with_config(|c| c.find_dvsec(0x1e98, 0).unwrap()) + 0x0c
}

fn ecam_write(
    p: &CxlPlatform,
    space: &Arc<Mutex<AddressSpace>>,
    bus: u8,
    devfn: u8,
    off: u16,
    data: &[u8],
) {
    let view = space.lock().unwrap().view_handle();
    let addr = p.ecam.0 + (u64::from(bus) << 20 | u64::from(devfn) << 12 | u64::from(off));
    view.load().write(addr, data);
}

fn set_mem_enable(p: &CxlPlatform, space: &Arc<Mutex<AddressSpace>>, on: bool) {
    let ctl = dvsec_control(p);
    let v: u16 = if on { 0x6 } else { 0x2 };
    ecam_write(p, space, 0x11, 0, ctl, &v.to_le_bytes());
}

fn is_ram_at(space: &Arc<Mutex<AddressSpace>>, addr: u64) -> bool {
    space
        .lock()
        .unwrap()
        .view()
        .lookup(addr)
        .is_some_and(|r| r.is_ram())
}

const ONE: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 1
[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "256M"
[[window]]
id = "w0"
size = "256M"
targets = ["hb0"]
"#;

#[test]
fn mem_enable_clear_removes_the_direct_mapping() {
    let (p, space) = build(ONE);
    let base = p.windows[0].base;
    assert!(!is_ram_at(&space, base), "MMIO before commit");
    linux_commit(&p, &space);
    assert!(is_ram_at(&space, base), "RAM after commit");
    set_mem_enable(&p, &space, false);
    assert!(!is_ram_at(&space, base), "Mem_Enable clear unmaps");
    set_mem_enable(&p, &space, true);
    assert!(is_ram_at(&space, base), "and setting it maps again");
}

#[test]
fn memory_space_disable_removes_the_direct_mapping() {
    let (p, space) = build(ONE);
    let base = p.windows[0].base;
    linux_commit(&p, &space);
    assert!(is_ram_at(&space, base));
    // Command register of the endpoint: memory space enable off (bus master stays).
    ecam_write(&p, &space, 0x11, 0, 0x04, &4u16.to_le_bytes());
    assert!(!is_ram_at(&space, base), "Command.MEM clear unmaps");
    ecam_write(&p, &space, 0x11, 0, 0x04, &6u16.to_le_bytes());
    assert!(is_ram_at(&space, base));
    // The root port's memory space enable gates it too.
    ecam_write(&p, &space, 0x10, 0, 0x04, &4u16.to_le_bytes());
    assert!(
        !is_ram_at(&space, base),
        "root port Command.MEM clear unmaps"
    );
}

#[test]
fn decoder_uncommit_and_device_reset_remove_the_direct_mapping() {
    let (p, space) = build(ONE);
    let base = p.windows[0].base;
    linux_commit(&p, &space);
    assert!(is_ram_at(&space, base));
    // Uncommit the host-bridge decoder (Linux resets top-down).
    let view = space.lock().unwrap().view_handle();
    let hb_ctl = p.host_bridges[0].chbcr + 0x1200 + 0x20;
    view.load().write(hb_ctl, &(1u32 << 12).to_le_bytes());
    assert!(!is_ram_at(&space, base), "HB decoder uncommit unmaps");
    view.load()
        .write(hb_ctl, &(1u32 << 9 | 1 << 12).to_le_bytes());
    assert!(is_ram_at(&space, base), "recommit maps again");
    // Secondary bus reset of the root port resets the device: its decoders uncommit.
    let bctl = 0x3e;
    ecam_write(&p, &space, 0x10, 0, bctl, &(1u16 << 6).to_le_bytes());
    ecam_write(&p, &space, 0x10, 0, bctl, &0u16.to_le_bytes());
    assert!(!is_ram_at(&space, base), "device reset unmaps");
    assert!(p.fabric.graph().devices[0].decoders.is_empty());
}

const TWO: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 2
[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "256M"
[[device]]
id = "mem1"
host_bridge = "hb0"
root_port = 1
volatile = "256M"
[[window]]
id = "w0"
size = "512M"
targets = ["hb0"]
granularity = "16K"
"#;

/// The backing the flat view maps at `addr`, if RAM.
fn ram_backing_at(
    space: &Arc<Mutex<AddressSpace>>,
    addr: u64,
) -> Option<Arc<cxlvm_memory::RamBacking>> {
    match &space.lock().unwrap().view().lookup(addr)?.target {
        cxlvm_memory::FlatTarget::Ram { backing, .. } => Some(backing.clone()),
        cxlvm_memory::FlatTarget::Mmio { .. } => None,
    }
}

#[test]
fn recommitting_an_interleaved_region_reuses_its_region_store() {
    let r = Rig::new(TWO);
    let base = r.base();
    // The HB decoder interleaves its 2 root ports at 16 KiB (the window itself is 1-way).
    r.commit(2, 16384);
    let first = ram_backing_at(&r.space, base).expect("interleaved region mapped");
    assert!(
        !first.is_stitched(),
        "volatile interleave: one region store"
    );
    assert_eq!(first.mappings(), 1);
    // Written through the mapping (the second 16 KiB granule: device 1, DPA 0), found through
    // the device's storage map after uncommit (no decoder routes the HPA any more).
    r.wr(base + 0x4000, 0xfeed_f00d);
    r.host_bridge(2, 16384, false); // uncommit
    assert!(
        ram_backing_at(&r.space, base).is_none(),
        "unmapped after uncommit"
    );
    let mut v = [0u8; 4];
    assert!(r.p.memories[1].read(0, &mut v));
    assert_eq!(
        u32::from_le_bytes(v),
        0xfeed_f00d,
        "device 1's DPA 0 is in the region store"
    );
    r.host_bridge(2, 16384, true); // recommit, same programming
    let again = ram_backing_at(&r.space, base).expect("mapped again");
    assert!(
        Arc::ptr_eq(&first, &again),
        "the region store was reused: nothing moved, nothing rebuilt"
    );
}

#[test]
fn aperture_shares_are_mib_aligned_and_fit_their_root_ports() {
    let s = cxlvm_platform::host_bridge_apertures(0xc000_0000, 256 << 20, &[2, 8, 1]).unwrap();
    assert_eq!(
        s,
        vec![
            (0xc000_0000, 85 << 20),
            (0xc000_0000 + (85 << 20), 85 << 20),
            (0xc000_0000 + (170 << 20), 85 << 20)
        ]
    );
    // A base off the MiB grid starts at the next MiB.
    let s = cxlvm_platform::host_bridge_apertures(0xc000_1000, 4 << 20, &[2]).unwrap();
    assert_eq!(s, vec![(0xc010_0000, 3 << 20)]);
    // 16 MiB for two host bridges of 8 root ports: 8 MiB each, 9 needed.
    assert!(matches!(
        cxlvm_platform::host_bridge_apertures(0xc000_0000, 16 << 20, &[8, 8]),
        Err(cxlvm_platform::PlatformError::ApertureFull { aperture_mib: 16 })
    ));
}

/// One host bridge, four root ports, four 256 MiB volatile devices under a 1 GiB window.
const FOUR: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 4
[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "256M"
[[device]]
id = "mem1"
host_bridge = "hb0"
root_port = 1
volatile = "256M"
[[device]]
id = "mem2"
host_bridge = "hb0"
root_port = 2
volatile = "256M"
[[device]]
id = "mem3"
host_bridge = "hb0"
root_port = 3
volatile = "256M"
[[window]]
id = "w0"
size = "1G"
targets = ["hb0"]
"#;

/// A built platform with its devices enabled (HDM Decoder Enable, Mem_Enable), programmed
/// through registers like Linux: regions over the whole of window 0, on one host bridge.
struct Rig {
    p: CxlPlatform,
    space: Arc<Mutex<AddressSpace>>,
    comps: Vec<u64>,
    hb: u64,
}

/// IG encoding of `gran` (256 B << ig) and IW encoding of `ways` (2 or 4).
fn encodings(ways: u64, gran: u64) -> (u32, u32) {
    (gran.trailing_zeros() - 8, ways.trailing_zeros())
}

impl Rig {
    fn new(topo: &str) -> Self {
        let (p, space) = build(topo);
        let comps: Vec<u64> = p
            .endpoints
            .iter()
            .map(|ep| ep.bar_address(0).unwrap())
            .collect();
        let hb = p.host_bridges[0].chbcr + 0x1210;
        let r = Rig {
            p,
            space,
            comps,
            hb,
        };
        for (i, ep) in r.p.endpoints.iter().enumerate() {
            r.wr(r.comps[i] + 0x1204, 2);
            let ctl = ep.with_config(|c| c.find_dvsec(0x1e98, 0).unwrap()) + 0x0c;
            ecam_write(&r.p, &r.space, 0x11 + i as u8, 0, ctl, &6u16.to_le_bytes());
        }
        r
    }
    fn base(&self) -> u64 {
        self.p.windows[0].base
    }
    fn size(&self) -> u64 {
        self.p.windows[0].size
    }
    fn wr(&self, addr: u64, v: u32) {
        let view = self.space.lock().unwrap().view_handle();
        view.load().write(addr, &v.to_le_bytes());
    }
    fn write64(&self, off: u64, v: u64) {
        let view = self.space.lock().unwrap().view_handle();
        view.load().write(self.base() + off, &v.to_le_bytes());
    }
    fn read64(&self, off: u64) -> u64 {
        let view = self.space.lock().unwrap().view_handle();
        let mut b = [0u8; 8];
        view.load().read(self.base() + off, &mut b);
        u64::from_le_bytes(b)
    }
    /// Programs decoder registers `d` for a region of `ways` devices at `gran` from the window
    /// base, with target list (or DPA skip) `targets`, committed or not.
    fn program(&self, d: u64, ways: u64, gran: u64, targets: u32, commit: bool) {
        let (ig, iw) = encodings(ways, gran);
        let size = ways * (256 << 20);
        self.wr(d + 4, (self.base() >> 32) as u32);
        self.wr(d, self.base() as u32);
        self.wr(d + 0xc, (size >> 32) as u32);
        self.wr(d + 8, size as u32);
        self.wr(d + 0x14, targets);
        self.wr(d + 0x10, ig | iw << 4 | u32::from(commit) << 9 | 1 << 12);
    }
    /// Commits or uncommits the host bridge's decoder over root ports 0.. (`ways` of them).
    fn host_bridge(&self, ways: u64, gran: u64, commit: bool) {
        self.program(self.hb, ways, gran, 0x0302_0100, commit);
    }
    /// Commits a region of the first `ways` devices (2 or 4) at `gran`: endpoints first (each
    /// from DPA 0), then the host bridge.
    fn commit(&self, ways: u64, gran: u64) {
        for c in &self.comps[..ways as usize] {
            self.program(c + 0x1210, ways, gran, 0, true);
        }
        self.host_bridge(ways, gran, true);
    }
    /// Uncommits what [`Rig::commit`] committed (host bridge first).
    fn uncommit(&self, ways: u64, gran: u64) {
        self.host_bridge(ways, gran, false);
        for c in &self.comps[..ways as usize] {
            self.program(c + 0x1210, ways, gran, 0, false);
        }
    }
}

/// The independent formula for [`Rig::commit`]: HPA offset → (device, DPA) and back.
fn to_dpa(off: u64, ways: u64, gran: u64) -> (usize, u64) {
    (
        (off / gran % ways) as usize,
        off / gran / ways * gran + off % gran,
    )
}

fn to_off(dev: usize, dpa: u64, ways: u64, gran: u64) -> u64 {
    (dpa / gran * ways + dev as u64) * gran + dpa % gran
}

#[test]
fn bytes_follow_their_dpa_across_uncommit_and_a_different_geometry() {
    const MIB: u64 = 1 << 20;
    let f = Rig::new(FOUR);
    let (p, space) = (&f.p, &f.space);
    let (base, size) = (f.base(), f.size());
    // Geometry A: 4 ways at 256 B. Words written through the MMIO path (direct off), then
    // through the mapping.
    let ga = 256u64;
    f.commit(4, ga);
    let mut model = std::collections::BTreeMap::new();
    p.overlays.set_direct(false);
    assert!(ram_backing_at(space, base).is_none(), "MMIO path");
    for k in 0..2000u64 {
        let off = (k * 0x9e37_79b9) % (size - 8) / 8 * 8;
        f.write64(off, 0x1000_0000_0000 | k);
        model.insert(to_dpa(off, 4, ga), 0x1000_0000_0000 | k);
    }
    p.overlays.set_direct(true);
    let store = ram_backing_at(space, base).expect("a 256 B interleave is mapped");
    assert_eq!(
        (store.mappings(), store.size()),
        (1, size),
        "one region store"
    );
    for (&(dev, dpa), &v) in &model {
        assert_eq!(
            f.read64(to_off(dev, dpa, 4, ga)),
            v,
            "MMIO-written word on RAM"
        );
    }
    for k in 0..2000u64 {
        let off = (k * 0x5851_f42d + 8 * 1234) % (size - 8) / 8 * 8;
        f.write64(off, 0x2000_0000_0000 | k);
        model.insert(to_dpa(off, 4, ga), 0x2000_0000_0000 | k);
    }
    // Uncommit: nothing decodes, the bytes stay where the storage map says.
    f.uncommit(4, ga);
    assert!(
        ram_backing_at(space, base).is_none(),
        "unmapped after uncommit"
    );
    for (&(dev, dpa), &v) in &model {
        let mut b = [0u8; 8];
        assert!(p.memories[dev].read(dpa, &mut b));
        assert_eq!(
            u64::from_le_bytes(b),
            v,
            "mem{dev} DPA {dpa:#x} after uncommit"
        );
    }
    // Geometry B: 4 ways at 4 KiB over the same DPA: each word is now at another HPA, on the
    // mapping and on the MMIO path.
    let gb = 4096u64;
    f.commit(4, gb);
    let again = ram_backing_at(space, base).expect("a 4 KiB interleave is mapped");
    assert!(!Arc::ptr_eq(&store, &again), "a new geometry, a new store");
    assert_eq!(again.mappings(), 1);
    for (&(dev, dpa), &v) in &model {
        assert_eq!(
            f.read64(to_off(dev, dpa, 4, gb)),
            v,
            "mem{dev} {dpa:#x} on RAM"
        );
    }
    p.overlays.set_direct(false);
    for (&(dev, dpa), &v) in &model {
        assert_eq!(
            f.read64(to_off(dev, dpa, 4, gb)),
            v,
            "mem{dev} {dpa:#x} on MMIO"
        );
    }
    p.overlays.set_direct(true);
    // The devices' own stores hold nothing of the moved extents: each byte has one home.
    for m in p.memories.iter() {
        let own = m.volatile.as_ref().unwrap();
        assert_eq!(own.data_ranges(0, 256 * MIB).unwrap(), vec![]);
    }
    f.uncommit(4, gb);
}

#[derive(Clone, Debug)]
enum Step {
    /// Commit `ways` (2 or 4) at `gran`, unless a region is committed.
    Commit(u64, u64),
    /// Uncommit the committed region.
    Uncommit,
    /// Direct mappings on or off (RAM or MMIO path for the committed region).
    Direct(bool),
    /// Write a word at this fraction of the committed region (through whichever path serves it).
    Write(u64, u64),
    /// Read back every word of the model through the committed region.
    Check,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        2 => (prop::sample::select(vec![2u64, 4]), prop::sample::select(vec![256u64, 1024, 4096, 16384]))
            .prop_map(|(w, g)| Step::Commit(w, g)),
        1 => Just(Step::Uncommit),
        1 => any::<bool>().prop_map(Step::Direct),
        6 => (any::<u64>(), any::<u64>()).prop_map(|(o, v)| Step::Write(o, v)),
        2 => Just(Step::Check),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]

    /// Random geometries committed and uncommitted through the registers, random writes through
    /// the path that serves the region at the time (RAM or MMIO), against a naive model of each
    /// device's bytes: every word is always where the current decoders put it.
    #[test]
    fn random_geometries_and_writes_match_a_model_of_every_device(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let f = Rig::new(FOUR);
        // (device, DPA) -> value.
        let mut model: std::collections::BTreeMap<(usize, u64), u64> = Default::default();
        let mut committed: Option<(u64, u64)> = None;
        for s in steps {
            match s {
                Step::Commit(w, g) => {
                    if committed.is_none() {
                        f.commit(w, g);
                        committed = Some((w, g));
                    }
                }
                Step::Uncommit => {
                    if let Some((w, g)) = committed.take() {
                        f.uncommit(w, g);
                    }
                }
                Step::Direct(on) => f.p.overlays.set_direct(on),
                Step::Write(o, v) => {
                    if let Some((w, g)) = committed {
                        let off = o % (w * (256 << 20) - 8) / 8 * 8;
                        f.write64(off, v);
                        model.insert(to_dpa(off, w, g), v);
                    }
                }
                Step::Check => {
                    for (&(dev, dpa), &v) in &model {
                        match committed {
                            Some((w, g)) if (dev as u64) < w => {
                                let got = f.read64(to_off(dev, dpa, w, g));
                                proptest::prop_assert_eq!(got, v, "mem{} DPA {:#x}", dev, dpa);
                            }
                            _ => {
                                let mut b = [0u8; 8];
                                proptest::prop_assert!(f.p.memories[dev].read(dpa, &mut b));
                                proptest::prop_assert_eq!(u64::from_le_bytes(b), v);
                            }
                        }
                    }
                }
            }
        }
    }
}
