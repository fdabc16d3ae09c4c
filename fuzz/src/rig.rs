//! A built CXL platform in an address space, driven the way a guest drives it: every register
//! access goes through the published flat view (ECAM, CHBCRs, BARs where they are mapped now,
//! windows), so BAR moves, enables and commits take the same paths as under KVM.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cxlvm_cxl::dvsec;
use cxlvm_cxl::graph::{DecodeGraph, Target};
use cxlvm_cxl::hdm::{CTRL_COMMIT, CTRL_COMMITTED, CTRL_HOST_ONLY, HDM_UNIT};
use cxlvm_cxl::interleave::{Granularity, Ways};
use cxlvm_cxl::topology::{AddressLimits, Topology};
use cxlvm_mapping::planner::RangePlan;
use cxlvm_memory::{AddressSpace, FlatTarget, FlatViewHandle};
use cxlvm_pci::devfn;
use cxlvm_platform::{CxlPlatform, OverlayOptions, PlatformError, PlatformLayout, root_bus};
use cxlvm_x86::layout;

/// Where the platform goes: the machine builder's layout (crates/vmm).
pub const LAYOUT: PlatformLayout = PlatformLayout {
    ecam_base: layout::ECAM_BASE,
    chbcr_base: layout::CHBCR_BASE,
    aperture_base: layout::PCI_APERTURE_BASE,
    aperture_size: layout::PCI_APERTURE_SIZE,
};

/// Offset of the HDM decoder capability in every component block (0x1000 + HDM_PTR).
pub const HDM: u64 = 0x1200;

/// The placement limits the machine builder validates topologies with (256 MiB of RAM).
pub fn limits() -> AddressLimits {
    let mut reserved: Vec<(u64, u64, String)> = layout::ram_ranges(256 << 20)
        .into_iter()
        .map(|(g, s, _)| (g, g + s, "RAM".to_owned()))
        .collect();
    reserved.push((
        layout::NULL_MMIO_BASE,
        layout::NULL_MMIO_BASE + layout::NULL_MMIO_SIZE,
        "null".into(),
    ));
    reserved.push((
        layout::PIO_WINDOW_BASE,
        layout::PIO_WINDOW_BASE + layout::PIO_WINDOW_SIZE,
        "pio".into(),
    ));
    AddressLimits {
        reserved,
        window_min: layout::CXL_WINDOW_MIN,
        window_max: layout::CXL_WINDOW_MAX,
    }
}

/// A component register block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    /// Host bridge (CHBCR).
    Hb(usize),
    /// Root port (BAR0).
    Rp(usize, usize),
    /// Type-3 device (BAR0).
    Dev(usize),
}

/// A PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Func {
    /// Root port (host bridge, port).
    Rp(usize, usize),
    /// Type-3 endpoint.
    Dev(usize),
}

static FILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Replaces every file of `topo` by a fresh temporary path (the fuzz input must not name files
/// on the host), opens them through [`CxlPlatform::open_files`] and unlinks them at once: the
/// open handles keep the (sparse) files alive exactly as long as the platform.
#[allow(clippy::result_large_err)] // the platform's own error type
pub fn open_files(topo: &mut Topology) -> Result<Vec<cxlvm_platform::DeviceFiles>, PlatformError> {
    // tmpfs when there is one: page-cache reads and truncation on a disk file system cost more
    // than the whole rest of an input.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let mut paths = Vec::new();
    for d in &mut topo.devices {
        for f in [&mut d.persistent_file, &mut d.lsa_file] {
            if f.is_some() {
                let n = FILE_SEQ.fetch_add(1, Ordering::Relaxed);
                let p = dir.join(format!("cxlvm-fuzz-{}-{n}.img", std::process::id()));
                let _ = std::fs::remove_file(&p);
                *f = Some(p.clone());
                paths.push(p);
            }
        }
    }
    let files = CxlPlatform::open_files(topo);
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
    files
}

/// A platform, its address space and what a guest has learnt about it.
pub struct Rig {
    /// The platform.
    pub p: CxlPlatform,
    /// The address space it lives in.
    pub space: Arc<Mutex<AddressSpace>>,
    /// The published view (what vCPUs read).
    pub view: FlatViewHandle,
    /// The validated topology.
    pub topo: Topology,
    /// VMA budget of the overlays.
    pub budget: u64,
    /// Every component block.
    pub comps: Vec<Comp>,
    /// Every PCI function.
    pub funcs: Vec<Func>,
    /// (host bridge, port) of each device.
    pub dev_port: Vec<(usize, usize)>,
    /// Device DVSEC offset of each device.
    pub dvsec: Vec<u16>,
    rng: u64,
    /// The plan of the last graph checked (most operations leave the graph alone).
    pub(crate) last_plan: Option<(Arc<DecodeGraph>, Vec<RangePlan>)>,
    /// Every device byte written through a window: (device, DPA) → value.
    pub model: BTreeMap<(usize, u64), u8>,
}

impl Rig {
    /// Builds the platform of `toml` (must parse, validate and build) with overlays granted
    /// `budget` host mappings.
    pub fn build(toml: &str, budget: u64) -> Rig {
        let mut topo = Topology::from_toml(toml).expect("rig topology parses");
        topo.validate(&limits()).expect("rig topology validates");
        let files = open_files(&mut topo).expect("rig files");
        let space = Arc::new(Mutex::new(AddressSpace::new("fuzz", layout::MAX_GPA)));
        let p = CxlPlatform::build(
            &topo,
            files,
            &space,
            LAYOUT,
            OverlayOptions {
                vma_budget: budget,
                direct: true,
                fatal: Box::new(|e| panic!("overlay manager fatal error: {e}")),
            },
        )
        .expect("rig platform builds");
        Rig::from_platform(topo, p, space, budget)
    }

    /// A rig around a platform built from the validated `topo` into `space` with overlays granted
    /// `budget` host mappings.
    pub fn from_platform(
        topo: Topology,
        p: CxlPlatform,
        space: Arc<Mutex<AddressSpace>>,
        budget: u64,
    ) -> Rig {
        let view = space.lock().unwrap().view_handle();
        let mut comps: Vec<Comp> = (0..topo.host_bridges.len()).map(Comp::Hb).collect();
        let mut funcs = Vec::new();
        for (h, hb) in topo.host_bridges.iter().enumerate() {
            for port in 0..usize::from(hb.root_ports) {
                comps.push(Comp::Rp(h, port));
                funcs.push(Func::Rp(h, port));
            }
        }
        let mut dev_port = Vec::new();
        for (d, dev) in topo.devices.iter().enumerate() {
            comps.push(Comp::Dev(d));
            funcs.push(Func::Dev(d));
            let h = topo.host_bridge(&dev.host_bridge).unwrap();
            dev_port.push((h, usize::from(dev.root_port)));
        }
        let dvsec = p
            .endpoints
            .iter()
            .map(|ep| {
                ep.with_config(|c| c.find_dvsec(dvsec::CXL_VENDOR, dvsec::id::DEVICE))
                    .expect("device DVSEC")
            })
            .collect();
        Rig {
            p,
            space,
            view,
            topo,
            budget,
            comps,
            funcs,
            dev_port,
            dvsec,
            rng: 0x9E37_79B9_7F4A_7C15,
            last_plan: None,
            model: BTreeMap::new(),
        }
    }

    /// Deterministic sampling randomness (xorshift64*).
    pub fn rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rand() % n }
    }

    // -----------------------------------------------------------------------------------------
    // Guest accesses
    // -----------------------------------------------------------------------------------------

    /// A CPU read of `len` bytes at `addr`.
    pub fn rd(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.view.load().read(addr, &mut b);
        b
    }

    /// A CPU write.
    pub fn wr(&self, addr: u64, data: &[u8]) {
        self.view.load().write(addr, data);
    }

    /// Little-endian u32 read.
    pub fn rd32(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.rd(addr, 4).try_into().unwrap())
    }

    /// Little-endian u32 write.
    pub fn wr32(&self, addr: u64, v: u32) {
        self.wr(addr, &v.to_le_bytes());
    }

    /// ECAM address of a configuration register.
    pub fn ecam(&self, bus: u8, devfn: u8, off: u16) -> u64 {
        self.p.ecam.0 + (u64::from(bus) << 20 | u64::from(devfn) << 12 | u64::from(off & 0xfff))
    }

    /// Where the guest addresses function `f` now: root ports on their root bus, devices on
    /// their root port's secondary bus (as last programmed).
    pub fn location(&self, f: Func) -> (u8, u8) {
        match f {
            Func::Rp(h, p) => (root_bus(h), devfn(p as u8, 0)),
            Func::Dev(d) => {
                let (h, p) = self.dev_port[d];
                let mut sec = [0u8];
                cxlvm_pci::PciFunction::read_config(
                    self.p.root_ports[h][p].as_ref(),
                    cxlvm_pci::regs::SECONDARY_BUS,
                    &mut sec,
                );
                (sec[0], 0)
            }
        }
    }

    /// Configuration write to function `f` through ECAM.
    pub fn cfg_write(&self, f: Func, off: u16, data: &[u8]) {
        let (bus, df) = self.location(f);
        self.wr(self.ecam(bus, df, off), data);
    }

    /// Configuration read from function `f` through ECAM.
    pub fn cfg_read(&self, f: Func, off: u16, len: usize) -> Vec<u8> {
        let (bus, df) = self.location(f);
        self.rd(self.ecam(bus, df, off), len)
    }

    /// Guest-physical address of component block `c` now (None: its BAR is not mapped).
    pub fn comp_addr(&self, c: Comp) -> Option<u64> {
        match c {
            Comp::Hb(i) => Some(self.p.host_bridges[i].chbcr),
            Comp::Rp(h, p) => self.p.root_ports[h][p].bar_mapping(0),
            Comp::Dev(d) => self.p.endpoints[d].bar_mapping(0),
        }
    }

    /// Whether `c` has HDM decoders (non-passthrough host bridges and devices).
    pub fn has_hdm(&self, c: Comp) -> bool {
        match c {
            Comp::Hb(i) => !self.topo.host_bridges[i].passthrough,
            Comp::Rp(..) => false,
            Comp::Dev(_) => true,
        }
    }

    /// Decoder count as Linux reads it from the HDM capability register.
    pub fn decoder_count(&self, at: u64) -> u64 {
        match self.rd32(at + HDM) & 0xf {
            0 => 1,
            n => u64::from(n) * 2,
        }
    }

    /// The first decoder whose Committed bit is clear (None: all committed).
    pub fn next_free_decoder(&self, at: u64) -> Option<u64> {
        (0..self.decoder_count(at))
            .find(|&n| self.rd32(at + HDM + 0x20 + 0x20 * n) & CTRL_COMMITTED == 0)
    }

    /// Programs decoder `n` of the block at `at` like Linux's cxl_decoder_commit and sets
    /// Commit (`extra` is ORed into Control).
    #[allow(clippy::too_many_arguments)]
    pub fn program_decoder(
        &self,
        at: u64,
        n: u64,
        base: u64,
        size: u64,
        ways: Ways,
        gran: Granularity,
        tl: u64,
        extra: u32,
    ) {
        let d = at + HDM + 0x10 + 0x20 * n;
        self.wr32(d + 4, (base >> 32) as u32);
        self.wr32(d, base as u32);
        self.wr32(d + 0xc, (size >> 32) as u32);
        self.wr32(d + 8, size as u32);
        self.wr32(d + 0x18, (tl >> 32) as u32);
        self.wr32(d + 0x14, tl as u32);
        let ctl = u32::from(gran.enc())
            | u32::from(ways.enc()) << 4
            | CTRL_HOST_ONLY
            | CTRL_COMMIT
            | extra;
        self.wr32(d + 0x10, ctl);
    }

    /// Everything Linux enables on device `d` before committing its decoders: HDM Decoder
    /// Enable, DVSEC Mem_Enable, and memory space of the device and its root port.
    pub fn enable_device(&self, d: usize) {
        if let Some(at) = self.comp_addr(Comp::Dev(d)) {
            let g = self.rd32(at + HDM + 4);
            if g & 2 == 0 {
                self.wr32(at + HDM + 4, g | 2);
            }
        }
        // Like Linux: read first, write only what changes (configuration writes are the
        // expensive guest operation).
        let ctl = self.dvsec[d] + dvsec::DEVICE_CONTROL;
        let f = Func::Dev(d);
        let v = u16::from_le_bytes(self.cfg_read(f, ctl, 2).try_into().unwrap());
        if v & dvsec::MEM_ENABLE == 0 {
            self.cfg_write(f, ctl, &(v | dvsec::MEM_ENABLE).to_le_bytes());
        }
        let (h, p) = self.dev_port[d];
        for f in [f, Func::Rp(h, p)] {
            let cmd = u16::from_le_bytes(self.cfg_read(f, 4, 2).try_into().unwrap());
            if cmd & 2 == 0 {
                self.cfg_write(f, 4, &(cmd | 2).to_le_bytes());
            }
        }
    }

    /// A CPU access of `len` bytes at HPA `at` in a window (a write when `data` is given), then
    /// a read of the same bytes, checked against the device memory model: every byte that routes
    /// to a device reads what was last written to that device byte (through any HPA, at any time
    /// before, over any path), bytes nothing decodes read all-ones. Bytes the guest hid under a
    /// BAR are skipped.
    pub fn window_access(&mut self, at: u64, len: usize, data: Option<Vec<u8>>) {
        let g = self.p.fabric.graph();
        let view = self.view.load();
        let routes: Vec<Target> = (0..len as u64).map(|i| g.route(at + i)).collect();
        let shadowed: Vec<bool> = (0..len as u64)
            .map(|i| {
                let x = at + i;
                let w = g.window_of(x).expect("inside a window");
                !matches!(view.lookup(x).map(|r| &r.target), Some(FlatTarget::Ram { .. }))
                    && !matches!(
                        view.lookup(x).map(|r| &r.target),
                        Some(FlatTarget::Mmio { handler, .. })
                            if std::ptr::addr_eq(Arc::as_ptr(handler), Arc::as_ptr(&self.p.dispatchers[w]))
                    )
            })
            .collect();
        if let Some(d) = &data {
            view.write(at, d);
            for (i, t) in routes.iter().enumerate() {
                if let (Target::Device { device, dpa }, false) = (*t, shadowed[i]) {
                    self.model.insert((device, dpa), d[i]);
                }
            }
        }
        let mut back = vec![0u8; len];
        view.read(at, &mut back);
        for (i, t) in routes.iter().enumerate() {
            if shadowed[i] {
                continue;
            }
            let want = match *t {
                Target::Device { device, dpa } => match self.model.get(&(device, dpa)) {
                    Some(&v) => v,
                    None => {
                        let (b, o) = self.p.memories[device]
                            .home(dpa)
                            .expect("routed DPA has a backing");
                        let mut v = [0u8];
                        b.read(o, &mut v).unwrap();
                        v[0]
                    }
                },
                Target::Unclaimed(_) => 0xff,
            };
            assert_eq!(
                back[i],
                want,
                "HPA {:#x} ({t:?}) reads {:#04x}, the device memory model says {want:#04x}",
                at + i as u64,
                back[i]
            );
        }
    }

    /// The device backings still hold every byte the model recorded.
    pub fn check_model(&self) {
        for (&(device, dpa), &v) in &self.model {
            let (b, o) = self.p.memories[device].home(dpa).unwrap();
            let mut now = [0u8];
            b.read(o, &mut now).unwrap();
            assert_eq!(
                now[0], v,
                "device {device} DPA {dpa:#x} changed behind the model"
            );
        }
    }

    /// Creates a region like Linux: endpoint decoders in position order, then the host-bridge
    /// decoders. See [`crate::ops::RegionArgs`] for how the arguments are interpreted.
    pub fn region(&self, a: &crate::ops::RegionArgs) {
        let g = self.p.fabric.graph();
        if g.windows.is_empty() {
            return;
        }
        let wi = usize::from(a.win) % g.windows.len();
        let w = &g.windows[wi];
        let hbs = w.targets.clone();
        let r = hbs.len();
        // Ports with a device, per host bridge, rotated.
        let ports: Vec<Vec<usize>> = hbs
            .iter()
            .map(|&h| {
                let mut v: Vec<usize> = (0..usize::from(self.topo.host_bridges[h].root_ports))
                    .filter(|&p| self.dev_port.contains(&(h, p)))
                    .collect();
                if !v.is_empty() {
                    let n = v.len();
                    v.rotate_left(usize::from(a.rot) % n);
                }
                v
            })
            .collect();
        let kmax = ports.iter().map(Vec::len).min().unwrap_or(0);
        if kmax == 0 {
            return;
        }
        let mut k = 1 + usize::from(a.k) % kmax;
        while k > 1 && Ways::from_count((r * k) as u32).is_none() {
            k -= 1;
        }
        let Some(ways) = Ways::from_count((r * k) as u32) else {
            return;
        };
        let gran = Granularity::ALL
            .get(usize::from(a.gran))
            .copied()
            .unwrap_or(w.gran);
        let units = 1 + u64::from(a.units % 2);
        let size = u64::from(ways.count()) * units * HDM_UNIT;
        let slots = w.size / HDM_UNIT;
        let base = w.base + u64::from(a.offset) % slots.max(1) * HDM_UNIT;
        let skip = u64::from(a.skip % 2) * HDM_UNIT;
        let order: Vec<(usize, usize)> = (0..r * k).map(|p| (p % r, ports[p % r][p / r])).collect();
        for &(i, port) in &order {
            let h = hbs[i];
            let Some(d) = self.dev_port.iter().position(|&x| x == (h, port)) else {
                continue;
            };
            if a.enable {
                self.enable_device(d);
            }
            let Some(at) = self.comp_addr(Comp::Dev(d)) else {
                continue;
            };
            if let Some(n) = self.next_free_decoder(at) {
                self.program_decoder(at, n, base, size, ways, gran, skip, 0);
            }
        }
        let rf = u64::from(Ways::from_count(r as u32).map_or(1, |w| w.pow2_factor()));
        for (i, &h) in hbs.iter().enumerate() {
            if self.topo.host_bridges[h].passthrough {
                continue;
            }
            let hb_gran = if k > 1 {
                Granularity::from_bytes(gran.bytes() * rf).unwrap_or(gran)
            } else {
                gran
            };
            let tl = ports[i][..k]
                .iter()
                .enumerate()
                .fold(0u64, |acc, (j, &p)| acc | (p as u64) << (8 * j));
            let hb_ways = Ways::from_count(k as u32).unwrap_or(Ways::X1);
            let at = self.p.host_bridges[h].chbcr;
            if let Some(n) = self.next_free_decoder(at) {
                self.program_decoder(at, n, base, size, hb_ways, hb_gran, tl, 0);
            }
        }
    }
}
