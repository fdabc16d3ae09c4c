//! The decode graph: committed decoder state as data, and the one routing function derived from
//! it.
//!
//! ```text
//! HPA ─► fixed window (base, size, ways, granularity, modulo|xor) ─► host bridge
//!     ─► HB decoder (or passthrough) ─► root port (by PCIe port number)
//!     ─► Type-3 endpoint decoder ─► DPA ─► volatile backing | persistent backing
//! ```
//!
//! A [`DecodeGraph`] is an immutable snapshot rebuilt whenever anything that affects decoding
//! changes (a decoder commit or uncommit at any level, HDM global enable, DVSEC Mem_Enable, PCI
//! memory enable, resets). The window dispatcher routes MMIO through it; the mapping planner
//! derives RAM mappings from the same snapshot, so the two can never disagree.

use crate::hdm::CommittedDecoder;
use crate::interleave::{self, Granularity, Ways};
use crate::topology::Arithmetic;

/// A fixed memory window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowNode {
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host-bridge interleave ways.
    pub ways: Ways,
    /// Host-bridge interleave granularity.
    pub gran: Granularity,
    /// Arithmetic.
    pub arithmetic: Arithmetic,
    /// XOR maps (one per way-selection bit) when `arithmetic` is XOR.
    pub xormaps: Vec<u64>,
    /// Host bridge index of each interleave position.
    pub targets: Vec<usize>,
}

/// A root port as decoding sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortNode {
    /// PCIe port number (what HB target lists name).
    pub port_number: u8,
    /// Memory decoding enabled (PCI Command.MEM of the port).
    pub enabled: bool,
    /// Device index behind it.
    pub device: Option<usize>,
}

/// A host bridge as decoding sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBridgeNode {
    /// No HDM decoders: everything goes to the single root port.
    pub passthrough: bool,
    /// Committed HB decoders (index order).
    pub decoders: Vec<CommittedDecoder>,
    /// Root ports.
    pub ports: Vec<PortNode>,
}

/// A Type-3 device as decoding sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// DVSEC Mem_Enable, HDM global enable and PCI Command.MEM all set.
    pub decoding: bool,
    /// Committed endpoint decoders (index order).
    pub decoders: Vec<CommittedDecoder>,
    /// Volatile capacity (DPA `[0, volatile)`).
    pub volatile: u64,
    /// Persistent capacity (DPA `[volatile, volatile + persistent)`).
    pub persistent: u64,
}

/// Where an HPA lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Device `device`, DPA `dpa`.
    Device {
        /// Device index.
        device: usize,
        /// Device physical address.
        dpa: u64,
    },
    /// Nothing decodes it (reads all-ones, writes dropped), and why.
    Unclaimed(Miss),
}

/// Why an HPA is not claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// Outside every window.
    NoWindow,
    /// The window's host bridge has no committed decoder covering the HPA.
    NoHostBridgeDecoder,
    /// The HB decoder names a port that does not exist, is disabled or is empty.
    NoPort,
    /// The device is not decoding (Mem_Enable, HDM enable or memory space off).
    DeviceDisabled,
    /// The device has no committed decoder covering the HPA.
    NoEndpointDecoder,
    /// The DPA is beyond the device's capacity.
    BeyondCapacity,
}

/// The whole decode state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeGraph {
    /// Windows.
    pub windows: Vec<WindowNode>,
    /// Host bridges.
    pub host_bridges: Vec<HostBridgeNode>,
    /// Devices.
    pub devices: Vec<DeviceNode>,
}

fn covering(decoders: &[CommittedDecoder], hpa: u64) -> Option<&CommittedDecoder> {
    decoders
        .iter()
        .find(|d| hpa >= d.base && hpa - d.base < d.size)
}

impl WindowNode {
    /// Interleave position of `hpa` (inside the window).
    pub fn position(&self, hpa: u64) -> u32 {
        match self.arithmetic {
            Arithmetic::Modulo => interleave::position(hpa - self.base, self.ways, self.gran),
            Arithmetic::Xor => interleave::xor_position(hpa, self.ways, &self.xormaps).unwrap_or(0),
        }
    }

    /// Whether `hpa` is inside the window.
    pub fn contains(&self, hpa: u64) -> bool {
        hpa >= self.base && hpa - self.base < self.size
    }
}

impl DecodeGraph {
    /// Index of the window containing `hpa`.
    pub fn window_of(&self, hpa: u64) -> Option<usize> {
        self.windows.iter().position(|w| w.contains(hpa))
    }

    /// Routes `hpa` exactly as the hardware would.
    pub fn route(&self, hpa: u64) -> Target {
        match self.window_of(hpa) {
            Some(w) => self.route_in(w, hpa),
            None => Target::Unclaimed(Miss::NoWindow),
        }
    }

    /// Routes `hpa`, known to be inside window `w`.
    pub fn route_in(&self, w: usize, hpa: u64) -> Target {
        let win = &self.windows[w];
        let Some(&hb) = win.targets.get(win.position(hpa) as usize) else {
            return Target::Unclaimed(Miss::NoWindow);
        };
        let Some(hb) = self.host_bridges.get(hb) else {
            return Target::Unclaimed(Miss::NoWindow);
        };
        let port = if hb.passthrough {
            hb.ports.first()
        } else {
            let Some(d) = covering(&hb.decoders, hpa) else {
                return Target::Unclaimed(Miss::NoHostBridgeDecoder);
            };
            let pos = interleave::position(hpa - d.base, d.ways, d.gran) as usize;
            let Some(&pn) = d.targets.get(pos) else {
                return Target::Unclaimed(Miss::NoPort);
            };
            hb.ports.iter().find(|p| p.port_number == pn)
        };
        let Some(device) = port.filter(|p| p.enabled).and_then(|p| p.device) else {
            return Target::Unclaimed(Miss::NoPort);
        };
        let Some(dev) = self.devices.get(device) else {
            return Target::Unclaimed(Miss::NoPort);
        };
        if !dev.decoding {
            return Target::Unclaimed(Miss::DeviceDisabled);
        }
        let Some(d) = covering(&dev.decoders, hpa) else {
            return Target::Unclaimed(Miss::NoEndpointDecoder);
        };
        let dpa = d.dpa_base + interleave::device_offset(hpa - d.base, d.ways, d.gran);
        if dpa >= dev.volatile.saturating_add(dev.persistent) {
            return Target::Unclaimed(Miss::BeyondCapacity);
        }
        Target::Device { device, dpa }
    }
}
