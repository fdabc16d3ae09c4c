//! Builds the guest-visible CXL platform from a validated [`Topology`]: device backings, the
//! fabric, fixed windows (containers holding the decoding dispatcher), host-bridge component
//! registers (CHBCR), root ports and Type-3 endpoints on a PCIe segment behind ECAM, and BARs
//! assigned like firmware, and the topology's `[[region]]`s committed like firmware
//! ([`cxlvm_cxl::region`]).
#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::sync::{Arc, Mutex};

use cxlvm_memory::{AddressSpace, BackingError, MemoryError, MmioHandler, RamBacking, RegionId};
use cxlvm_pci::{
    BarSpec, ConfigHooks, ConfigSpace, Endpoint, PciError, PciSegment, PciePortType, RootPort,
    devfn,
};
use tracing::info;

use cxlvm_cxl::devregs::DeviceRegs;
use cxlvm_cxl::dvsec;
use cxlvm_cxl::fabric::{ComponentId, ComponentMmio, Fabric, FabricSpec};
use cxlvm_cxl::graph::WindowNode;
use cxlvm_cxl::interleave::{Granularity, Ways, xormaps};
use cxlvm_cxl::mailbox::{Mailbox, MemdevParams};
use cxlvm_cxl::topology::{Arithmetic, LSA_SIZE, Topology};
use cxlvm_mapping::overlay::OverlayManager;
use cxlvm_mapping::window::{DeviceMemory, WindowDispatcher};

/// PCI vendor ID cxlvm's functions use (Red Hat, the vendor of many emulated devices).
pub const PCI_VENDOR: u16 = 0x1b36;
/// Device ID of cxlvm's CXL root ports.
pub const ROOT_PORT_DEVICE: u16 = 0x0c01;
/// Device ID of cxlvm's Type-3 memory expanders.
pub const TYPE3_DEVICE: u16 = 0x0c02;
/// Class code of a CXL memory device.
pub const CXL_MEMORY_CLASS: u32 = 0x05_02_10;
/// Size of a component register block.
pub const COMPONENT_SIZE: u64 = 0x1_0000;

/// Where the platform's fixed ranges go (chosen by the machine builder).
#[derive(Clone, Copy, Debug)]
pub struct PlatformLayout {
    /// ECAM base (256 MiB: buses 0–255).
    pub ecam_base: u64,
    /// First CHBCR; host bridge *i* at `chbcr_base + i * 64 KiB`.
    pub chbcr_base: u64,
    /// PCI MMIO aperture for BARs.
    pub aperture_base: u64,
    /// Its size.
    pub aperture_size: u64,
}

/// Run-time choices for the overlays.
pub struct OverlayOptions {
    /// Most host mappings (VMAs) the interleaved overlays may use.
    pub vma_budget: u64,
    /// Allow direct mappings at start (else everything stays on the MMIO path until enabled).
    pub direct: bool,
    /// Stops the VM when a mapping the decoders no longer justify cannot be removed.
    pub fatal: Box<dyn Fn(cxlvm_mapping::overlay::OverlayFailure) + Send + Sync>,
}

/// Root bus of host bridge `i`: each host bridge owns 16 buses, host bridge 0 from bus 0x10,
/// host bridge 14 from 0xf0, and the 16th (index 15) takes the remaining buses 0x00-0x0f.
pub fn root_bus(i: usize) -> u8 {
    debug_assert!(i < cxlvm_cxl::topology::MAX_HOST_BRIDGES);
    (((i + 1) % 16) * 0x10) as u8
}

/// Errors building the platform (files that cannot be opened are the user's).
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// A device's file cannot be used.
    #[error("device '{device}': {what} {path}: {source}")]
    File {
        /// Device id.
        device: String,
        /// Which file.
        what: &'static str,
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A device's file is too small.
    #[error("device '{device}': {what} {path} holds {have:#x} bytes, needs {need:#x}")]
    FileTooSmall {
        /// Device id.
        device: String,
        /// Which file.
        what: &'static str,
        /// Path.
        path: String,
        /// Bytes in the file.
        have: u64,
        /// Bytes needed.
        need: u64,
    },
    /// A device's memory could not be mapped into cxlvm (the host refused the size).
    #[error(
        "device '{device}': cannot map its {mib} MiB of {what} memory (after {before_mib} MiB of other device memory); the host refused: {source}"
    )]
    DeviceMemory {
        /// Device id.
        device: String,
        /// Which capacity.
        what: &'static str,
        /// Its size in MiB.
        mib: u64,
        /// Device memory mapped before it, in MiB.
        before_mib: u64,
        /// Cause.
        source: Box<BackingError>,
    },
    /// A backing could not be created.
    #[error(transparent)]
    Backing(#[from] BackingError),
    /// The memory map could not be built.
    #[error("CXL memory map: {0}")]
    Memory(#[from] MemoryError),
    /// PCI setup failed.
    #[error("CXL PCI setup: {0}")]
    Pci(#[from] PciError),
    /// A window's interleave set cannot be encoded (validation should have refused it).
    #[error(
        "window '{window}': {targets} targets and {granularity} B granularity cannot be encoded"
    )]
    WindowEncoding {
        /// Window id.
        window: String,
        /// Number of targets.
        targets: usize,
        /// Granularity in bytes.
        granularity: u64,
    },
    /// The regions could not be planned (the topology was not validated).
    #[error("CXL regions: {0}")]
    Regions(#[source] Box<cxlvm_cxl::topology::TopologyError>),
    /// A firmware commit failed although validation accepted the region.
    #[error("CXL firmware commit: {0}")]
    Firmware(#[source] Box<cxlvm_cxl::region::FirmwareError>),
    /// The devices' BARs do not fit in the PCI MMIO aperture.
    #[error("too many CXL BARs for the {aperture_mib} MiB PCI MMIO aperture")]
    ApertureFull {
        /// Aperture size in MiB.
        aperture_mib: u64,
    },
}

impl PlatformError {
    /// Whether the user can fix it (bad or unusable files).
    pub fn is_user_error(&self) -> bool {
        match self {
            PlatformError::File { .. }
            | PlatformError::FileTooSmall { .. }
            | PlatformError::ApertureFull { .. } => true,
            PlatformError::DeviceMemory { source, .. } => {
                matches!(**source, BackingError::Mmap { .. })
            }
            _ => false,
        }
    }
}

/// A host bridge as the guest is told about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBridgeInfo {
    /// CHBCR address.
    pub chbcr: u64,
    /// UID.
    pub uid: u32,
    /// Root bus.
    pub root_bus: u8,
    /// Root ports.
    pub root_ports: u8,
    /// No HDM decoders.
    pub passthrough: bool,
    /// This host bridge's share of the PCI MMIO aperture (base, size): the memory window its
    /// `_CRS` describes, holding its root ports' BARs and, behind each root port's memory window,
    /// its device's BARs.
    pub mmio: (u64, u64),
}

/// A window as the guest is told about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowInfo {
    /// Base.
    pub base: u64,
    /// Size.
    pub size: u64,
    /// Ways encoding.
    pub ways_enc: u8,
    /// Granularity encoding.
    pub gran_enc: u8,
    /// 0 modulo, 1 XOR.
    pub arithmetic: u8,
    /// Target UIDs in position order.
    pub target_uids: Vec<u32>,
    /// Granularity in bytes.
    pub granularity: u64,
    /// The XOR maps (CXIMS), for XOR windows.
    pub xor_maps: Vec<u64>,
}

/// The built platform.
pub struct CxlPlatform {
    /// The live fabric.
    pub fabric: Arc<Fabric>,
    /// The PCIe segment (ECAM handler).
    pub segment: Arc<PciSegment>,
    /// Device memories, by device index.
    pub memories: Arc<[DeviceMemory]>,
    /// Window dispatchers, by window index.
    pub dispatchers: Vec<Arc<WindowDispatcher>>,
    /// Window container regions (where RAM alias overlays go), by window index.
    pub window_regions: Vec<RegionId>,
    /// Host bridges for the boot info.
    pub host_bridges: Vec<HostBridgeInfo>,
    /// Windows for the boot info.
    pub windows: Vec<WindowInfo>,
    /// ECAM (base, size).
    pub ecam: (u64, u64),
    /// PCI MMIO aperture (base, size).
    pub aperture: (u64, u64),
    /// Ranges the guest must be able to reach (windows, ECAM, CHBCRs, aperture).
    pub mapped: Vec<(u64, u64)>,
    /// Type-3 endpoints, by device index.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Root ports, by host bridge then port.
    pub root_ports: Vec<Vec<Arc<RootPort>>>,
    /// The RAM alias overlays of the windows.
    pub overlays: Arc<OverlayManager>,
    /// The regions committed at build (`[[region]]`), in topology order.
    pub regions: Vec<cxlvm_cxl::region::RegionPlan>,
}

/// A device's opened (persistent capacity, label storage area) files.
pub type DeviceFiles = (Option<std::fs::File>, Option<std::fs::File>);

struct DevRegsMmio(Mutex<DeviceRegs>);

impl MmioHandler for DevRegsMmio {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, data);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset, data);
    }
}

struct EndpointHooks {
    fabric: Arc<Fabric>,
    device: usize,
    dvsec: u16,
    regs: Arc<DevRegsMmio>,
}

impl ConfigHooks for EndpointHooks {
    fn written(&self, cfg: &mut ConfigSpace, offset: u16, len: usize) {
        let ctl = self.dvsec + dvsec::DEVICE_CONTROL;
        if usize::from(offset) < usize::from(ctl) + 2
            && usize::from(ctl) < usize::from(offset) + len
        {
            let on = cfg.u16(ctl) & dvsec::MEM_ENABLE != 0;
            self.fabric.set_mem_enable(self.device, on);
        }
    }
    fn memory_enable_changed(&self, enabled: bool) {
        self.fabric
            .set_pci_mem(ComponentId::Device(self.device), enabled);
    }
    fn reset(&self) {
        self.fabric.reset(ComponentId::Device(self.device));
        self.regs
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
    }
}

struct PortHooks {
    fabric: Arc<Fabric>,
    id: ComponentId,
}

impl ConfigHooks for PortHooks {
    fn memory_enable_changed(&self, enabled: bool) {
        self.fabric.set_pci_mem(self.id, enabled);
    }
    fn secondary_bus_reset(&self, asserted: bool) {
        if asserted {
            self.fabric.reset(self.id);
        }
    }
}

fn open_file(
    device: &str,
    what: &'static str,
    path: &std::path::Path,
    size: u64,
) -> Result<std::fs::File, PlatformError> {
    let err = |source| PlatformError::File {
        device: device.to_owned(),
        what,
        path: path.display().to_string(),
        source,
    };
    let existed = path.exists();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    let have = f.metadata().map_err(err)?.len();
    if !existed || have == 0 {
        f.set_len(size).map_err(err)?;
    } else if have < size {
        return Err(PlatformError::FileTooSmall {
            device: device.to_owned(),
            what,
            path: path.display().to_string(),
            have,
            need: size,
        });
    }
    Ok(f)
}

fn add_mmio(
    space: &Arc<Mutex<AddressSpace>>,
    name: &str,
    size: u64,
    h: Arc<dyn MmioHandler>,
    at: Option<u64>,
) -> Result<RegionId, MemoryError> {
    let mut sp = space.lock().unwrap_or_else(|e| e.into_inner());
    let root = sp.root();
    let mut tx = sp.begin();
    let r = tx.add_mmio(name, size, h)?;
    if let Some(a) = at {
        tx.place(root, r, a, 0)?;
    }
    tx.commit()?;
    Ok(r)
}

/// Each PCI-to-PCI bridge memory window firmware opens (one per root port): the PCI minimum.
pub const BRIDGE_WINDOW: u64 = 1 << 20;

/// Splits the PCI MMIO aperture into one equal share per host bridge, each starting on a 1 MiB
/// boundary and a whole number of MiB long, large enough for the host bridge's root-port BARs
/// (the first MiB) and one bridge window per root port (`root_ports[i]` of host bridge `i`).
pub fn host_bridge_apertures(
    base: u64,
    size: u64,
    root_ports: &[u8],
) -> Result<Vec<(u64, u64)>, PlatformError> {
    let full = || PlatformError::ApertureFull {
        aperture_mib: size >> 20,
    };
    let start = base
        .checked_next_multiple_of(BRIDGE_WINDOW)
        .ok_or_else(full)?;
    let usable = base.saturating_add(size).saturating_sub(start);
    let n = root_ports.len().max(1) as u64;
    let share = usable / n / BRIDGE_WINDOW * BRIDGE_WINDOW;
    let need = root_ports
        .iter()
        .map(|&p| (1 + u64::from(p)) * BRIDGE_WINDOW)
        .max()
        .unwrap_or(BRIDGE_WINDOW);
    if share < need {
        return Err(full());
    }
    Ok((0..root_ports.len() as u64)
        .map(|i| (start + i * share, share))
        .collect())
}

/// The guest-physical ranges the platform of `topo` will occupy (windows, CHBCRs, ECAM, BAR
/// aperture), known before anything is built (for page tables and overlap checks).
pub fn planned_ranges(topo: &Topology, layout: &PlatformLayout) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = topo
        .windows
        .iter()
        .map(|w| (w.base.map_or(0, |b| b.0), w.size.0))
        .collect();
    if !topo.host_bridges.is_empty() {
        v.push((
            layout.chbcr_base,
            COMPONENT_SIZE * topo.host_bridges.len() as u64,
        ));
        v.push((layout.ecam_base, 256 << 20));
        v.push((layout.aperture_base, layout.aperture_size));
    }
    v
}

impl CxlPlatform {
    /// Opens (or creates, sparse) every device file. Call before anything else is started so
    /// that unusable files are reported as user errors with nothing half-built.
    pub fn open_files(topo: &Topology) -> Result<Vec<DeviceFiles>, PlatformError> {
        topo.devices
            .iter()
            .map(|d| {
                let p = match &d.persistent_file {
                    Some(path) => Some(open_file(
                        &d.id,
                        "persistent_file",
                        path,
                        d.persistent_bytes(),
                    )?),
                    None => None,
                };
                let l = match &d.lsa_file {
                    Some(path) => Some(open_file(&d.id, "lsa_file", path, LSA_SIZE)?),
                    None => None,
                };
                Ok((p, l))
            })
            .collect()
    }

    /// Builds everything into `space`. `topo` must have passed [`Topology::validate`].
    pub fn build(
        topo: &Topology,
        files: Vec<DeviceFiles>,
        space: &Arc<Mutex<AddressSpace>>,
        layout: PlatformLayout,
        options: OverlayOptions,
    ) -> Result<Self, PlatformError> {
        // Device memory.
        let mut memories = Vec::new();
        let mut lsas = Vec::new();
        let mut mapped: u64 = 0;
        for (d, (pfile, lfile)) in topo.devices.iter().zip(files) {
            let failed = |what: &'static str, bytes: u64, before: u64| {
                move |source| PlatformError::DeviceMemory {
                    device: d.id.clone(),
                    what,
                    mib: bytes >> 20,
                    before_mib: before >> 20,
                    source: Box::new(source),
                }
            };
            let volatile = match d.volatile_bytes() {
                0 => None,
                v => Some(
                    RamBacking::memfd(&format!("{}.volatile", d.id), v)
                        .map_err(failed("volatile", v, mapped))?,
                ),
            };
            mapped += d.volatile_bytes();
            let persistent = match pfile {
                Some(f) => Some(
                    RamBacking::from_file(
                        &format!("{}.persistent", d.id),
                        f,
                        0,
                        d.persistent_bytes(),
                    )
                    .map_err(failed(
                        "persistent",
                        d.persistent_bytes(),
                        mapped,
                    ))?,
                ),
                None => None,
            };
            mapped += d.persistent_bytes();
            let lsa = match (d.persistent_bytes(), lfile) {
                (0, _) => None,
                (_, Some(f)) => Some(RamBacking::from_file(
                    &format!("{}.lsa", d.id),
                    f,
                    0,
                    LSA_SIZE,
                )?),
                (_, None) => Some(RamBacking::memfd(&format!("{}.lsa", d.id), LSA_SIZE)?),
            };
            memories.push(DeviceMemory::new(volatile, persistent));
            lsas.push(lsa);
        }
        let memories: Arc<[DeviceMemory]> = memories.into();

        // Windows and fabric.
        let mut windows = Vec::new();
        let mut winfo = Vec::new();
        for w in &topo.windows {
            let encoding = || PlatformError::WindowEncoding {
                window: w.id.clone(),
                targets: w.targets.len(),
                granularity: w.granularity_bytes(),
            };
            let ways = Ways::from_count(w.targets.len() as u32).ok_or_else(encoding)?;
            let gran = Granularity::from_bytes(w.granularity_bytes()).ok_or_else(encoding)?;
            let targets: Vec<usize> = w
                .targets
                .iter()
                .filter_map(|t| topo.host_bridge(t))
                .collect();
            let base = w.base.map_or(0, |b| b.0);
            windows.push(WindowNode {
                base,
                size: w.size.0,
                ways,
                gran,
                arithmetic: w.arithmetic,
                xormaps: if w.arithmetic == Arithmetic::Xor {
                    xormaps(ways, gran)
                } else {
                    vec![]
                },
                targets: targets.clone(),
            });
            winfo.push(WindowInfo {
                base,
                size: w.size.0,
                ways_enc: ways.enc(),
                gran_enc: gran.enc(),
                arithmetic: u8::from(w.arithmetic == Arithmetic::Xor),
                target_uids: targets.iter().map(|&h| topo.uid(h)).collect(),
                granularity: w.granularity_bytes(),
                xor_maps: if w.arithmetic == Arithmetic::Xor {
                    xormaps(ways, gran)
                } else {
                    Vec::new()
                },
            });
        }
        let spec = FabricSpec {
            windows: windows.clone(),
            host_bridges: topo
                .host_bridges
                .iter()
                .map(|h| (h.passthrough, h.hdm_caps(), h.root_ports))
                .collect(),
            devices: topo
                .devices
                .iter()
                .map(|d| {
                    let hb = topo.host_bridge(&d.host_bridge).unwrap_or(0);
                    (
                        hb,
                        d.root_port,
                        d.hdm_caps(),
                        d.volatile_bytes(),
                        d.persistent_bytes(),
                    )
                })
                .collect(),
        };
        let fabric = Fabric::new(spec);

        // Windows in the address space: a container holding the decoding dispatcher.
        let mut dispatchers = Vec::new();
        let mut window_regions = Vec::new();
        let mapped = planned_ranges(topo, &layout);
        for (i, w) in windows.iter().enumerate() {
            let disp = Arc::new(WindowDispatcher::new(
                i,
                w.base,
                fabric.graph_handle(),
                memories.clone(),
            ));
            let mut sp = space.lock().unwrap_or_else(|e| e.into_inner());
            let root = sp.root();
            let mut tx = sp.begin();
            let name = &topo.windows[i].id;
            let c = tx.add_container(name, w.size)?;
            let m = tx.add_mmio(&format!("{name}.decode"), w.size, disp.clone())?;
            tx.place(c, m, 0, 0)?;
            tx.place(root, c, w.base, 0)?;
            tx.commit()?;
            info!(
                "CXL window '{name}' [{:#x}, {:#x}): {} way(s) at {} B",
                w.base,
                w.base + w.size,
                w.ways.count(),
                w.gran.bytes()
            );
            dispatchers.push(disp);
            window_regions.push(c);
        }

        let apertures = host_bridge_apertures(
            layout.aperture_base,
            layout.aperture_size,
            &topo
                .host_bridges
                .iter()
                .map(|h| h.root_ports)
                .collect::<Vec<_>>(),
        )?;
        // Host bridge component registers.
        let mut hbinfo = Vec::new();
        for (i, h) in topo.host_bridges.iter().enumerate() {
            let at = layout.chbcr_base + COMPONENT_SIZE * i as u64;
            add_mmio(
                space,
                &format!("{}.chbcr", h.id),
                COMPONENT_SIZE,
                Arc::new(ComponentMmio::new(
                    fabric.clone(),
                    ComponentId::HostBridge(i),
                )),
                Some(at),
            )?;
            hbinfo.push(HostBridgeInfo {
                chbcr: at,
                uid: topo.uid(i),
                root_bus: root_bus(i),
                root_ports: h.root_ports,
                passthrough: h.passthrough,
                mmio: apertures[i],
            });
        }

        // PCI: root ports and endpoints.
        let segment = Arc::new(PciSegment::new("cxl-pci", 0, 0xff)?);
        let mut root_ports = Vec::new();
        for (i, h) in topo.host_bridges.iter().enumerate() {
            segment.add_root_bus(root_bus(i), &h.id)?;
            let mut ports = Vec::new();
            for p in 0..h.root_ports {
                let id = ComponentId::RootPort {
                    hb: i,
                    port: usize::from(p),
                };
                let name = format!("{}.rp{p}", h.id);
                let comp = add_mmio(
                    space,
                    &format!("{name}.component"),
                    COMPONENT_SIZE,
                    Arc::new(ComponentMmio::new(fabric.clone(), id)),
                    None,
                )?;
                let mut b = RootPort::builder(&name, PCI_VENDOR, ROOT_PORT_DEVICE, p)
                    .bar(0, BarSpec::memory64(COMPONENT_SIZE, comp))
                    .hooks(Arc::new(PortHooks {
                        fabric: fabric.clone(),
                        id,
                    }))
                    .address_space(space.clone());
                let cfg = b.config_mut();
                dvsec::add_port_dvsecs(cfg)?;
                dvsec::add_flex_bus(cfg)?;
                dvsec::add_register_locator(cfg, &[(0, dvsec::block::COMPONENT)])?;
                let rp = b.build()?;
                segment.attach(root_bus(i), devfn(p, 0), rp.clone())?;
                ports.push(rp);
            }
            root_ports.push(ports);
        }
        let mut endpoints = Vec::new();
        let mut dvsecs = Vec::new();
        for (i, (d, lsa)) in topo.devices.iter().zip(lsas).enumerate() {
            let hb = topo.host_bridge(&d.host_bridge).unwrap_or(0);
            let capacity = d.volatile_bytes() + d.persistent_bytes();
            let comp = add_mmio(
                space,
                &format!("{}.component", d.id),
                COMPONENT_SIZE,
                Arc::new(ComponentMmio::new(fabric.clone(), ComponentId::Device(i))),
                None,
            )?;
            let mailbox = Mailbox::new(MemdevParams {
                volatile_bytes: d.volatile_bytes(),
                persistent_bytes: d.persistent_bytes(),
                lsa,
                fw_revision: format!("cxlvm {}", env!("CARGO_PKG_VERSION")),
                serial: d.serial.unwrap_or(i as u64 + 1),
            });
            let regs = Arc::new(DevRegsMmio(Mutex::new(DeviceRegs::new(mailbox))));
            let regs_region = add_mmio(
                space,
                &format!("{}.devregs", d.id),
                DeviceRegs::SIZE as u64,
                regs.clone(),
                None,
            )?;
            let mut cfg = ConfigSpace::new_type0(PCI_VENDOR, TYPE3_DEVICE, CXL_MEMORY_CLASS, 1);
            cfg.add_pcie_capability(PciePortType::Endpoint, 0)?;
            let dvsec_off = dvsec::add_device(&mut cfg, capacity)?;
            dvsecs.push(dvsec_off);
            dvsec::add_register_locator(
                &mut cfg,
                &[(0, dvsec::block::COMPONENT), (2, dvsec::block::DEVICE)],
            )?;
            dvsec::add_gpf_device(&mut cfg)?;
            dvsec::add_flex_bus(&mut cfg)?;
            let ep = Endpoint::builder(&d.id, cfg)
                .bar(0, BarSpec::memory64(COMPONENT_SIZE, comp))
                .bar(2, BarSpec::memory64(DeviceRegs::SIZE as u64, regs_region))
                .hooks(Arc::new(EndpointHooks {
                    fabric: fabric.clone(),
                    device: i,
                    dvsec: dvsec_off,
                    regs,
                }))
                .address_space(space.clone())
                .build()?;
            root_ports[hb][usize::from(d.root_port)].attach(0, ep.clone())?;
            endpoints.push(ep);
        }
        segment.program_bus_numbers()?;
        let ecam_size = segment.ecam_size();
        add_mmio(
            space,
            "ecam",
            ecam_size,
            segment.clone(),
            Some(layout.ecam_base),
        )?;

        // BARs, like firmware: each host bridge's root-port BARs at the start of its share of
        // the aperture, then one 1 MiB block per root port holding its device's BARs, which the
        // root port's memory window (base/limit, 1 MiB granular, 32-bit) covers where the
        // aperture lies below 4 GiB — so Linux finds every BAR inside its bridges' windows.
        for (i, ports) in root_ports.iter().enumerate() {
            let (base, _) = apertures[i];
            for (p, rp) in ports.iter().enumerate() {
                rp.assign_bar(0, base + p as u64 * COMPONENT_SIZE)?;
                let window = base + (1 + p as u64) * BRIDGE_WINDOW;
                if window + BRIDGE_WINDOW <= 1 << 32 {
                    rp.set_memory_window(window, BRIDGE_WINDOW)?;
                }
            }
        }
        for (ep, d) in endpoints.iter().zip(&topo.devices) {
            let hb = topo.host_bridge(&d.host_bridge).unwrap_or(0);
            let window = apertures[hb].0 + (1 + u64::from(d.root_port)) * BRIDGE_WINDOW;
            ep.assign_bar(0, window)?;
            ep.assign_bar(2, window + COMPONENT_SIZE)?;
        }
        // Unplaced RAM regions over each device backing: the targets of linear overlays.
        let mut device_ram = Vec::new();
        {
            let mut sp = space.lock().unwrap_or_else(|e| e.into_inner());
            let mut tx = sp.begin();
            for (d, m) in topo.devices.iter().zip(memories.iter()) {
                let mut one = |b: &Option<Arc<RamBacking>>,
                               what: &str|
                 -> Result<Option<RegionId>, MemoryError> {
                    b.as_ref()
                        .map(|b| {
                            tx.add_ram(&format!("{}.{what}", d.id), b.clone(), 0, b.size(), false)
                        })
                        .transpose()
                };
                let v = one(&m.volatile, "volatile")?;
                let p = one(&m.persistent, "persistent")?;
                device_ram.push((v, p));
            }
            tx.commit()?;
        }
        // Regions, like firmware: committed before the overlays see the first graph, so their
        // mappings are planned once and in place before the guest starts.
        let regions =
            cxlvm_cxl::region::plan(topo).map_err(|e| PlatformError::Regions(Box::new(e)))?;
        cxlvm_cxl::region::commit(topo, &regions, &fabric, &endpoints, &dvsecs, &root_ports)
            .map_err(|e| PlatformError::Firmware(Box::new(e)))?;
        for r in &regions {
            info!(
                "CXL region '{}' [{:#x}, {:#x}): {} way(s) at {} B over devices {:?}, {}, committed by firmware{}",
                r.id,
                r.base,
                r.end(),
                r.ways.count(),
                r.gran.bytes(),
                r.devices(),
                r.capacity,
                if r.lock { " (locked)" } else { "" }
            );
        }
        let overlays = Arc::new(OverlayManager::new(
            space.clone(),
            window_regions
                .iter()
                .zip(&windows)
                .map(|(&r, w)| (r, w.base))
                .collect(),
            device_ram,
            memories.clone(),
            options.vma_budget,
            fabric.graph_handle(),
            options.direct,
            options.fatal,
        ));
        fabric.set_listener(overlays.clone());
        Ok(Self {
            overlays,
            fabric,
            segment,
            memories,
            dispatchers,
            window_regions,
            host_bridges: hbinfo,
            windows: winfo,
            ecam: (layout.ecam_base, ecam_size),
            aperture: (layout.aperture_base, layout.aperture_size),
            mapped,
            endpoints,
            root_ports,
            regions,
        })
    }
}
