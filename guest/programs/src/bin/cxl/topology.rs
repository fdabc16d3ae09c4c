//! What the enumeration finds: host bridges (by boot info entry) with their root ports, Type-3
//! devices, every function, and the windows. Every mode starts by filling a [`Topology`].

use cxlvm_guest::cxl::{
    self, CLASS_CXL_MEMORY, ComponentRegs, DeviceDvsec, Hdm, HostBridgeEntry, PlanDevice,
    RegisterBlocks, WindowEntry,
};
use cxlvm_guest::fixed::FixedVec;
use cxlvm_guest::pci::{self, Bdf, Ecam, Function, port_type};
use cxlvm_guest::{BootInfo, println};

use crate::{BAD_REGISTERS, NO_DEVICE};

/// Most host bridges.
pub const MAX_HBS: usize = 16;
/// Most root ports per host bridge.
pub const MAX_PORTS: usize = 16;
/// Most Type-3 devices.
pub const MAX_TYPE3: usize = 64;
/// Most functions.
pub const MAX_FUNCTIONS: usize = 256;
/// Most windows.
pub const MAX_WINDOWS: usize = 16;

/// One function, as enumerated.
#[derive(Clone, Copy, Debug, Default)]
pub struct FunctionInfo {
    pub bdf: Bdf,
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    /// Header layout (0 endpoint, 1 bridge).
    pub header_type: u8,
    /// PCI Express Device/Port Type, if it has the capability.
    pub port_type: Option<u8>,
    /// Port number (Link Capabilities), for root ports.
    pub port: u8,
    /// Secondary bus, for bridges.
    pub secondary: u8,
}

impl FunctionInfo {
    pub fn is_root_port(&self) -> bool {
        self.header_type == 1 && self.port_type == Some(port_type::ROOT_PORT)
    }

    /// `endpoint`, `root-port` or `other`.
    pub fn type_name(&self) -> &'static str {
        match self.port_type {
            Some(port_type::ENDPOINT) if self.header_type == 0 => "endpoint",
            Some(port_type::ROOT_PORT) if self.header_type == 1 => "root-port",
            _ => "other",
        }
    }
}

/// A root port on a host bridge's root bus.
#[derive(Clone, Copy, Debug, Default)]
pub struct RootPort {
    pub bdf: Bdf,
    /// PCIe port number (what host bridge target lists name).
    pub port: u8,
    pub secondary: u8,
    /// HDM decoders of its component registers, if it has any (fuzz target only).
    pub hdm: Option<Hdm>,
}

/// A CXL host bridge.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostBridge {
    pub entry: HostBridgeEntry,
    /// Its CHBCR, when the entry's range is listed (always, per the ABI).
    pub component: Option<ComponentRegs>,
    /// HDM decoders (`None`: passthrough).
    pub hdm: Option<Hdm>,
    /// Root ports in enumeration order.
    pub ports: FixedVec<RootPort, MAX_PORTS>,
}

/// A Type-3 memory device.
#[derive(Clone, Copy, Debug, Default)]
pub struct Type3 {
    pub bdf: Bdf,
    /// Index of its host bridge in [`Topology::hbs`].
    pub hb: usize,
    /// Port number of the root port above it.
    pub port: u8,
    /// Register blocks from the Register Locator DVSEC.
    pub blocks: RegisterBlocks,
    /// Whether it has a Register Locator DVSEC at all.
    pub has_locator: bool,
    /// Its endpoint HDM decoders.
    pub hdm: Option<Hdm>,
    /// Its PCIe DVSEC for CXL Devices.
    pub dvsec: Option<DeviceDvsec>,
}

/// Everything the enumeration found.
#[derive(Clone, Copy, Debug)]
pub struct Topology {
    pub ecam: Ecam,
    pub functions: FixedVec<FunctionInfo, MAX_FUNCTIONS>,
    pub hbs: FixedVec<HostBridge, MAX_HBS>,
    pub type3s: FixedVec<Type3, MAX_TYPE3>,
    pub windows: FixedVec<WindowEntry, MAX_WINDOWS>,
}

fn push<T: Copy + Default, const N: usize>(v: &mut FixedVec<T, N>, value: T, what: &str) {
    if v.push(value).is_err() {
        println!("cxl: more than {N} {what}; ignoring the rest");
    }
}

impl Topology {
    /// Walks the platform: ECAM, host bridges with their root buses and the buses below their
    /// root ports, Type-3 devices (class 0x050210), windows.
    pub fn discover(boot: &BootInfo) -> Result<Self, i32> {
        let Some(ecam) = Ecam::find(boot) else {
            println!("cxl: no ECAM device (kind 4)");
            return Err(NO_DEVICE);
        };
        let mut topo = Self {
            ecam,
            functions: FixedVec::new(),
            hbs: FixedVec::new(),
            type3s: FixedVec::new(),
            windows: FixedVec::new(),
        };
        for entry in cxl::host_bridges(boot) {
            if !ecam.covers(entry.root_bus) {
                println!(
                    "cxl: host bridge uid={} root bus {:02x} outside the ECAM buses {:02x}..={:02x}",
                    entry.uid,
                    entry.root_bus,
                    ecam.start_bus(),
                    ecam.end_bus()
                );
                return Err(BAD_REGISTERS);
            }
            let component = ComponentRegs::new(entry.chbcr);
            let hb = HostBridge {
                entry,
                component,
                hdm: component.and_then(|c| c.hdm()),
                ports: FixedVec::new(),
            };
            if topo.hbs.is_full() {
                println!("cxl: more than {MAX_HBS} host bridges; ignoring the rest");
                break;
            }
            push(&mut topo.hbs, hb, "host bridges");
            let hb_index = topo.hbs.len() - 1;
            topo.walk_host_bridge(hb_index);
        }
        for w in cxl::windows(boot) {
            push(&mut topo.windows, w, "windows");
        }
        Ok(topo)
    }

    fn walk_host_bridge(&mut self, hb_index: usize) {
        let ecam = self.ecam;
        let root_bus = self.hbs[hb_index].entry.root_bus;
        pci::walk(&ecam, root_bus, &mut |visit| {
            let f = visit.function;
            let info = FunctionInfo {
                bdf: f.bdf(),
                vendor: f.vendor_id(),
                device: f.device_id(),
                class: f.class_code(),
                header_type: f.header_type(),
                port_type: f.port_type(),
                port: f.port_number().unwrap_or(0),
                secondary: if f.header_type() == 1 {
                    f.secondary_bus()
                } else {
                    0
                },
            };
            push(&mut self.functions, info, "functions");
            if visit.depth == 0 && info.is_root_port() {
                let rp = RootPort {
                    bdf: info.bdf,
                    port: info.port,
                    secondary: info.secondary,
                    hdm: component_hdm(&f),
                };
                push(&mut self.hbs[hb_index].ports, rp, "root ports");
            }
            if info.class == CLASS_CXL_MEMORY {
                let blocks = cxl::register_blocks(&f);
                let t = Type3 {
                    bdf: info.bdf,
                    hb: hb_index,
                    port: visit.root_port.and_then(|rp| rp.port_number()).unwrap_or(0),
                    blocks: blocks.unwrap_or_default(),
                    has_locator: blocks.is_some(),
                    hdm: component_hdm(&f),
                    dvsec: DeviceDvsec::find(&f),
                };
                push(&mut self.type3s, t, "Type-3 devices");
            }
        });
    }

    /// The function at `bdf`.
    pub fn function(&self, bdf: Bdf) -> Function {
        Function::new(self.ecam, bdf)
    }

    /// The host bridge with `uid`.
    pub fn hb_by_uid(&self, uid: u32) -> Option<&HostBridge> {
        self.hbs.iter().find(|hb| hb.entry.uid == uid)
    }

    /// What region planning needs of each Type-3 device (index = device index).
    pub fn plan_devices(&self, out: &mut FixedVec<PlanDevice, MAX_TYPE3>) {
        out.clear();
        for t in self.type3s.iter() {
            let _ = out.push(PlanDevice {
                hb_uid: self.hbs[t.hb].entry.uid,
                port: t.port,
            });
        }
    }
}

/// The HDM decoders of a function's component registers (via its Register Locator).
fn component_hdm(f: &Function) -> Option<Hdm> {
    let base = cxl::register_blocks(f)?.component?;
    ComponentRegs::new(base)?.hdm()
}
