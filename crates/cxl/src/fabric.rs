//! The live CXL fabric: every component's registers and enables behind one lock, and the decode
//! graph republished whenever decoding changes.
//!
//! Lock order (never the reverse): a PCI function's config lock → the fabric lock → the address
//! space lock. Register MMIO handlers take only the fabric lock; the decode graph is read
//! lock-free by the window dispatchers.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use cxlvm_memory::MmioHandler;
use tracing::{debug, info};

use crate::component::{ComponentKind, ComponentRegs};
use crate::graph::{DecodeGraph, DeviceNode, HostBridgeNode, PortNode, WindowNode};
use crate::hdm::{CommitEnv, CommitError, HdmCaps, HdmChange};

/// Which component a register access is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentId {
    /// Host bridge `i` (its CHBCR).
    HostBridge(usize),
    /// Root port `port` (index) of host bridge `hb`.
    RootPort {
        /// Host bridge index.
        hb: usize,
        /// Root port index (= port number).
        port: usize,
    },
    /// Type-3 device `i`.
    Device(usize),
}

struct PortState {
    port_number: u8,
    mem_enabled: bool,
    device: Option<usize>,
    regs: ComponentRegs,
}

struct HostBridgeState {
    passthrough: bool,
    regs: ComponentRegs,
    ports: Vec<PortState>,
}

struct DeviceState {
    hb: usize,
    regs: ComponentRegs,
    mem_enable: bool,
    pci_mem: bool,
    volatile: u64,
    persistent: u64,
}

struct State {
    windows: Vec<WindowNode>,
    hbs: Vec<HostBridgeState>,
    devices: Vec<DeviceState>,
}

/// Something that must see every new decode graph before the write that caused it completes
/// (the mapping planner). Called with the fabric lock held; it may take the address-space lock.
pub trait DecodeListener: Send + Sync {
    /// The graph changed to `graph`.
    fn decoding_changed(&self, graph: &Arc<DecodeGraph>);
}

/// How a fabric is described at build time.
pub struct FabricSpec {
    /// Windows (static).
    pub windows: Vec<WindowNode>,
    /// Host bridges: passthrough flag, HDM caps (None when passthrough), root-port count.
    pub host_bridges: Vec<(bool, Option<HdmCaps>, u8)>,
    /// Devices: host bridge index, root port index, HDM caps, volatile bytes, persistent bytes.
    pub devices: Vec<(usize, u8, HdmCaps, u64, u64)>,
}

/// The live fabric.
pub struct Fabric {
    state: Mutex<State>,
    graph: Arc<ArcSwap<DecodeGraph>>,
    listener: Mutex<Option<Arc<dyn DecodeListener>>>,
}

struct Env<'a> {
    windows: &'a [WindowNode],
    hb: usize,
    ports: Option<&'a [PortState]>,
    capacity: u64,
}

impl CommitEnv for Env<'_> {
    fn range_allowed(&self, base: u64, size: u64) -> bool {
        let Some(end) = base.checked_add(size) else {
            return false;
        };
        self.windows.iter().any(|w| {
            w.targets.contains(&self.hb) && base >= w.base && end <= w.base.saturating_add(w.size)
        })
    }

    fn target_exists(&self, port: u8) -> bool {
        self.ports
            .is_some_and(|p| p.iter().any(|p| p.port_number == port))
    }

    fn dpa_capacity(&self) -> u64 {
        self.capacity
    }
}

impl State {
    fn graph(&self) -> DecodeGraph {
        DecodeGraph {
            windows: self.windows.clone(),
            host_bridges: self
                .hbs
                .iter()
                .map(|h| HostBridgeNode {
                    passthrough: h.passthrough,
                    decoders: h.regs.hdm().map(|b| b.committed()).unwrap_or_default(),
                    ports: h
                        .ports
                        .iter()
                        .map(|p| PortNode {
                            port_number: p.port_number,
                            enabled: p.mem_enabled,
                            device: p.device,
                        })
                        .collect(),
                })
                .collect(),
            devices: self
                .devices
                .iter()
                .map(|d| {
                    let hdm = d.regs.hdm();
                    DeviceNode {
                        decoding: d.mem_enable
                            && d.pci_mem
                            && hdm.is_some_and(|b| b.global_enable()),
                        decoders: hdm.map(|b| b.committed()).unwrap_or_default(),
                        volatile: d.volatile,
                        persistent: d.persistent,
                    }
                })
                .collect(),
        }
    }
}

impl Fabric {
    /// Builds the fabric with every component at its reset state.
    pub fn new(spec: FabricSpec) -> Arc<Self> {
        let mut hbs: Vec<HostBridgeState> = spec
            .host_bridges
            .iter()
            .map(|&(passthrough, caps, ports)| HostBridgeState {
                passthrough,
                regs: ComponentRegs::new(
                    ComponentKind::HostBridge {
                        passthrough,
                        target_count: ports,
                    },
                    caps,
                ),
                ports: (0..ports)
                    .map(|p| PortState {
                        port_number: p,
                        mem_enabled: false,
                        device: None,
                        regs: ComponentRegs::new(ComponentKind::RootPort, None),
                    })
                    .collect(),
            })
            .collect();
        let mut devices = Vec::new();
        for (i, &(hb, port, caps, volatile, persistent)) in spec.devices.iter().enumerate() {
            if let Some(p) = hbs
                .get_mut(hb)
                .and_then(|h| h.ports.get_mut(usize::from(port)))
            {
                p.device = Some(i);
            }
            devices.push(DeviceState {
                hb,
                regs: ComponentRegs::new(ComponentKind::Endpoint, Some(caps)),
                mem_enable: false,
                pci_mem: false,
                volatile,
                persistent,
            });
        }
        let state = State {
            windows: spec.windows,
            hbs,
            devices,
        };
        let graph = Arc::new(ArcSwap::from_pointee(state.graph()));
        Arc::new(Self {
            state: Mutex::new(state),
            graph,
            listener: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock-free handle the window dispatchers read.
    pub fn graph_handle(&self) -> Arc<ArcSwap<DecodeGraph>> {
        self.graph.clone()
    }

    /// The current decode graph.
    pub fn graph(&self) -> Arc<DecodeGraph> {
        self.graph.load_full()
    }

    /// Installs the listener that must see every new graph (the mapping planner), and hands it
    /// the current one.
    pub fn set_listener(&self, l: Arc<dyn DecodeListener>) {
        let st = self.lock();
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(l.clone());
        let g = Arc::new(st.graph());
        self.graph.store(g.clone());
        l.decoding_changed(&g);
    }

    /// Rebuilds and publishes the graph (fabric lock held by the caller), then tells the
    /// listener, so that the guest write that caused the change completes only after the
    /// mappings it implies are in place.
    fn republish(&self, st: &State, why: &str) {
        let g = Arc::new(st.graph());
        if *g == **self.graph.load() {
            return;
        }
        info!("CXL decoding changed ({why})");
        self.graph.store(g.clone());
        let l = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(l) = l {
            l.decoding_changed(&g);
        }
    }

    /// A component register read.
    pub fn read(&self, id: ComponentId, offset: u64, data: &mut [u8]) {
        let st = self.lock();
        let regs = match id {
            ComponentId::HostBridge(h) => st.hbs.get(h).map(|h| &h.regs),
            ComponentId::RootPort { hb, port } => st
                .hbs
                .get(hb)
                .and_then(|h| h.ports.get(port))
                .map(|p| &p.regs),
            ComponentId::Device(d) => st.devices.get(d).map(|d| &d.regs),
        };
        match (regs, usize::try_from(offset)) {
            (Some(r), Ok(off)) => r.read(off, data),
            _ => data.fill(0),
        }
    }

    /// A component register write (HDM programming, commits).
    pub fn write(&self, id: ComponentId, offset: u64, data: &[u8]) {
        let Ok(off) = usize::try_from(offset) else {
            return;
        };
        let mut guard = self.lock();
        let st = &mut *guard;
        let windows = &st.windows;
        let change = match id {
            ComponentId::HostBridge(h) => match st.hbs.get_mut(h) {
                Some(hbs) => {
                    let env = Env {
                        windows,
                        hb: h,
                        ports: Some(&hbs.ports),
                        capacity: 0,
                    };
                    hbs.regs.write(off, data, &env)
                }
                None => HdmChange::None,
            },
            ComponentId::RootPort { hb, port } => {
                match st.hbs.get_mut(hb).and_then(|h| h.ports.get_mut(port)) {
                    Some(p) => {
                        let env = Env {
                            windows,
                            hb,
                            ports: None,
                            capacity: 0,
                        };
                        p.regs.write(off, data, &env)
                    }
                    None => HdmChange::None,
                }
            }
            ComponentId::Device(d) => match st.devices.get_mut(d) {
                Some(dev) => {
                    let env = Env {
                        windows,
                        hb: dev.hb,
                        ports: None,
                        capacity: dev.volatile + dev.persistent,
                    };
                    dev.regs.write(off, data, &env)
                }
                None => HdmChange::None,
            },
        };
        if change == HdmChange::Decoding {
            debug!(?id, offset, "HDM decoding change");
            self.republish(st, "HDM decoder state");
        }
    }

    /// Why the last commit of decoder `n` of component `id` failed, while its
    /// Error-Not-Committed bit is set.
    pub fn commit_error(&self, id: ComponentId, n: usize) -> Option<CommitError> {
        let st = self.lock();
        let regs = match id {
            ComponentId::HostBridge(h) => st.hbs.get(h).map(|h| &h.regs),
            ComponentId::RootPort { hb, port } => st
                .hbs
                .get(hb)
                .and_then(|h| h.ports.get(port))
                .map(|p| &p.regs),
            ComponentId::Device(d) => st.devices.get(d).map(|d| &d.regs),
        };
        regs?.hdm()?.last_error(n).cloned()
    }

    /// DVSEC Control Mem_Enable of device `d` was written.
    pub fn set_mem_enable(&self, d: usize, on: bool) {
        let mut st = self.lock();
        if let Some(dev) = st.devices.get_mut(d) {
            dev.mem_enable = on;
        }
        self.republish(&st, "DVSEC Mem_Enable");
    }

    /// PCI Command.MEM of a device or root port changed.
    pub fn set_pci_mem(&self, id: ComponentId, on: bool) {
        let mut st = self.lock();
        match id {
            ComponentId::Device(d) => {
                if let Some(dev) = st.devices.get_mut(d) {
                    dev.pci_mem = on;
                }
            }
            ComponentId::RootPort { hb, port } => {
                if let Some(p) = st.hbs.get_mut(hb).and_then(|h| h.ports.get_mut(port)) {
                    p.mem_enabled = on;
                }
            }
            ComponentId::HostBridge(_) => {}
        }
        self.republish(&st, "PCI memory enable");
    }

    /// Device `d` (or, for a root port, everything below it) was reset: decoders back to power-on.
    pub fn reset(&self, id: ComponentId) {
        let mut guard = self.lock();
        let st = &mut *guard;
        match id {
            ComponentId::Device(d) => {
                if let Some(dev) = st.devices.get_mut(d) {
                    dev.regs.reset();
                    dev.mem_enable = false;
                }
            }
            ComponentId::RootPort { hb, port } => {
                let dev = st
                    .hbs
                    .get(hb)
                    .and_then(|h| h.ports.get(port))
                    .and_then(|p| p.device);
                if let Some(dev) = dev.and_then(|d| st.devices.get_mut(d)) {
                    dev.regs.reset();
                    dev.mem_enable = false;
                    dev.pci_mem = false;
                }
            }
            ComponentId::HostBridge(h) => {
                if let Some(hb) = st.hbs.get_mut(h) {
                    hb.regs.reset();
                }
            }
        }
        self.republish(st, "reset");
    }
}

/// MMIO handler of one component register block (64 KiB).
pub struct ComponentMmio {
    fabric: Arc<Fabric>,
    id: ComponentId,
}

impl ComponentMmio {
    /// Handler for component `id`.
    pub fn new(fabric: Arc<Fabric>, id: ComponentId) -> Self {
        Self { fabric, id }
    }
}

impl MmioHandler for ComponentMmio {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.fabric.read(self.id, offset, data);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.fabric.write(self.id, offset, data);
    }
}
