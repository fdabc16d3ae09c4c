//! PCI configuration space through the ECAM range of the boot info (device kind 4).
//!
//! Every access is one volatile MMIO access of its width (1, 2 or 4 bytes, naturally aligned).
//! Reads of a bus outside the ECAM range return all-ones (like a master abort) and writes there
//! are dropped, so a walk can never touch memory the boot info does not list.
//!
//! ```ignore
//! let ecam = Ecam::find(boot).expect("no ECAM");
//! pci::walk(&ecam, root_bus, &mut |visit| {
//!     println!("{} vendor={:04x}", visit.function.bdf(), visit.function.vendor_id());
//! });
//! ```

pub mod calc;

use core::fmt;

pub use calc::{
    Bar, DvsecHeader, ExtCapHeader, VENDOR_NONE, bridge_control, cap_id, command, ext_cap_id,
    port_type, reg,
};

use crate::boot::{BootInfo, Device, DeviceKind};
use crate::mmio::Mmio;

/// Bus, device and function numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    /// Bus (0..=255).
    pub bus: u8,
    /// Device (0..=31).
    pub dev: u8,
    /// Function (0..=7).
    pub func: u8,
}

impl Bdf {
    /// `bus:dev.func`.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        Self { bus, dev, func }
    }
}

impl fmt::Display for Bdf {
    /// `BB:DD.F` in hex, as `lspci` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{:x}", self.bus, self.dev, self.func)
    }
}

/// The ECAM window: bus `b`'s configuration space is the 1 MiB at `base + (b - base_bus) << 20`.
///
/// The boot info entry gives the range and, in `flags`, the first and last bus (`start | end <<
/// 8`). The range is taken to start at bus `start` (it covers exactly `start..=end`); a range
/// large enough to cover buses `0..=end` is taken to start at bus 0 (the ACPI MCFG convention).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ecam {
    mmio: Mmio,
    base_bus: u8,
    start_bus: u8,
    end_bus: u8,
    segment: u16,
}

impl Ecam {
    /// The ECAM of a device table entry of kind 4.
    pub fn from_device(dev: &Device) -> Option<Self> {
        if dev.kind != DeviceKind::Ecam {
            return None;
        }
        let start = dev.flags as u8;
        let end = (dev.flags >> 8) as u8;
        if end < start {
            return None;
        }
        let bus_bytes = |n: u32| u64::from(n) << 20;
        let base_bus = if start > 0 && dev.size >= bus_bytes(u32::from(end) + 1) {
            0
        } else {
            start
        };
        // Buses past the end of the range are out of reach, whatever `end` says.
        let in_range = (dev.size >> 20).min(256) as u32;
        if in_range == 0 || u32::from(start - base_bus) >= in_range {
            return None;
        }
        let last = (u32::from(base_bus) + in_range - 1).min(u32::from(end)) as u8;
        Some(Self {
            mmio: dev.mmio(),
            base_bus,
            start_bus: start,
            end_bus: last,
            segment: dev.port as u16,
        })
    }

    /// The first ECAM entry of the boot info.
    pub fn find(boot: &BootInfo) -> Option<Self> {
        boot.devices().find_map(|d| Self::from_device(&d))
    }

    /// Guest-physical base of the range.
    pub fn base(&self) -> u64 {
        self.mmio.base()
    }

    /// Size of the range.
    pub fn size(&self) -> u64 {
        self.mmio.size()
    }

    /// First bus.
    pub fn start_bus(&self) -> u8 {
        self.start_bus
    }

    /// Last bus reachable through the range.
    pub fn end_bus(&self) -> u8 {
        self.end_bus
    }

    /// PCI segment.
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// Whether `bus` is inside the range.
    pub fn covers(&self, bus: u8) -> bool {
        (self.start_bus..=self.end_bus).contains(&bus)
    }

    /// Offset in the range of `off` in the configuration space of `bus:dev.func`, or `None`
    /// outside the range (or for `dev` > 31, `func` > 7, `off` >= 4096).
    fn offset(&self, bus: u8, dev: u8, func: u8, off: u16) -> Option<u64> {
        if !self.covers(bus) || dev > 31 || func > 7 || off >= calc::CONFIG_SIZE {
            return None;
        }
        Some(
            (u64::from(bus - self.base_bus) << 20)
                | (u64::from(dev) << 15)
                | (u64::from(func) << 12)
                | u64::from(off),
        )
    }

    /// Guest-physical address of `off` in the configuration space of `bus:dev.func`.
    pub fn address(&self, bus: u8, dev: u8, func: u8, off: u16) -> Option<u64> {
        self.offset(bus, dev, func, off)
            .map(|o| self.mmio.base() + o)
    }

    /// 32-bit read (`off` 4-byte aligned); all-ones outside the range.
    ///
    /// # Panics
    /// When `off` is misaligned.
    #[track_caller]
    pub fn read32(&self, bus: u8, dev: u8, func: u8, off: u16) -> u32 {
        self.offset(bus, dev, func, off)
            .map_or(!0, |o| self.mmio.read_u32(o))
    }

    /// 16-bit read (`off` 2-byte aligned); all-ones outside the range.
    #[track_caller]
    pub fn read16(&self, bus: u8, dev: u8, func: u8, off: u16) -> u16 {
        self.offset(bus, dev, func, off)
            .map_or(!0, |o| self.mmio.read_u16(o))
    }

    /// 8-bit read; all-ones outside the range.
    #[track_caller]
    pub fn read8(&self, bus: u8, dev: u8, func: u8, off: u16) -> u8 {
        self.offset(bus, dev, func, off)
            .map_or(!0, |o| self.mmio.read_u8(o))
    }

    /// 32-bit write (`off` 4-byte aligned); dropped outside the range.
    #[track_caller]
    pub fn write32(&self, bus: u8, dev: u8, func: u8, off: u16, value: u32) {
        if let Some(o) = self.offset(bus, dev, func, off) {
            self.mmio.write_u32(o, value);
        }
    }

    /// 16-bit write (`off` 2-byte aligned); dropped outside the range.
    #[track_caller]
    pub fn write16(&self, bus: u8, dev: u8, func: u8, off: u16, value: u16) {
        if let Some(o) = self.offset(bus, dev, func, off) {
            self.mmio.write_u16(o, value);
        }
    }

    /// 8-bit write; dropped outside the range.
    #[track_caller]
    pub fn write8(&self, bus: u8, dev: u8, func: u8, off: u16, value: u8) {
        if let Some(o) = self.offset(bus, dev, func, off) {
            self.mmio.write_u8(o, value);
        }
    }

    /// The function at `bdf`, if one answers (vendor ID not all-ones).
    pub fn function(&self, bdf: Bdf) -> Option<Function> {
        let f = Function { ecam: *self, bdf };
        (f.vendor_id() != VENDOR_NONE).then_some(f)
    }
}

/// A DVSEC found in a function's extended configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dvsec {
    /// Offset of the extended capability header.
    pub offset: u16,
    /// Decoded DVSEC headers.
    pub header: DvsecHeader,
}

/// Most capabilities a list walk follows (a loop in a broken list ends there).
const MAX_CAPS: usize = 64;
/// Most extended capabilities a walk follows.
const MAX_EXT_CAPS: usize = (calc::CONFIG_SIZE as usize - 0x100) / 4;

/// One PCI function, reached through an [`Ecam`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    ecam: Ecam,
    bdf: Bdf,
}

impl Function {
    /// A handle for `bdf`, whether or not a function answers there.
    pub fn new(ecam: Ecam, bdf: Bdf) -> Self {
        Self { ecam, bdf }
    }

    /// Its address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// The ECAM it is reached through.
    pub fn ecam(&self) -> &Ecam {
        &self.ecam
    }

    /// 32-bit configuration read.
    #[track_caller]
    pub fn read32(&self, off: u16) -> u32 {
        let b = self.bdf;
        self.ecam.read32(b.bus, b.dev, b.func, off)
    }

    /// 16-bit configuration read.
    #[track_caller]
    pub fn read16(&self, off: u16) -> u16 {
        let b = self.bdf;
        self.ecam.read16(b.bus, b.dev, b.func, off)
    }

    /// 8-bit configuration read.
    #[track_caller]
    pub fn read8(&self, off: u16) -> u8 {
        let b = self.bdf;
        self.ecam.read8(b.bus, b.dev, b.func, off)
    }

    /// 32-bit configuration write.
    #[track_caller]
    pub fn write32(&self, off: u16, value: u32) {
        let b = self.bdf;
        self.ecam.write32(b.bus, b.dev, b.func, off, value)
    }

    /// 16-bit configuration write.
    #[track_caller]
    pub fn write16(&self, off: u16, value: u16) {
        let b = self.bdf;
        self.ecam.write16(b.bus, b.dev, b.func, off, value)
    }

    /// 8-bit configuration write.
    #[track_caller]
    pub fn write8(&self, off: u16, value: u8) {
        let b = self.bdf;
        self.ecam.write8(b.bus, b.dev, b.func, off, value)
    }

    /// Vendor ID ([`VENDOR_NONE`] when nothing answers).
    pub fn vendor_id(&self) -> u16 {
        self.read16(reg::VENDOR_ID)
    }

    /// Device ID.
    pub fn device_id(&self) -> u16 {
        self.read16(reg::DEVICE_ID)
    }

    /// Class code: base class, subclass, programming interface (`0x050210` for a CXL memory
    /// device).
    pub fn class_code(&self) -> u32 {
        self.read32(reg::CLASS_REVISION) >> 8
    }

    /// Header layout (bits 6:0 of the header type: 0 endpoint, 1 PCI-PCI bridge).
    pub fn header_type(&self) -> u8 {
        self.read8(reg::HEADER_TYPE) & 0x7f
    }

    /// Multi-function bit of the header type.
    pub fn is_multi_function(&self) -> bool {
        self.read8(reg::HEADER_TYPE) & 0x80 != 0
    }

    /// Command register.
    pub fn command(&self) -> u16 {
        self.read16(reg::COMMAND)
    }

    /// Number of BARs of its header layout.
    pub fn bar_count(&self) -> u8 {
        calc::bar_count(self.header_type())
    }

    /// BAR `index` decoded (a 64-bit BAR includes the next dword), or `None` past the last BAR
    /// (or for a 64-bit BAR whose upper half would be past it). Reads only; no sizing.
    pub fn bar(&self, index: u8) -> Option<Bar> {
        let count = self.bar_count();
        if index >= count {
            return None;
        }
        let off = reg::BAR0 + 4 * u16::from(index);
        let lo = self.read32(off);
        if calc::bar_is_64(lo) {
            if index + 1 >= count {
                return None;
            }
            return Some(calc::decode_bar(lo, self.read32(off + 4)));
        }
        Some(calc::decode_bar(lo, 0))
    }

    /// Address of memory BAR `index` (see [`bar`](Self::bar)).
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        self.bar(index).and_then(Bar::mem_addr)
    }

    /// Type 1: secondary bus number.
    pub fn secondary_bus(&self) -> u8 {
        self.read8(reg::SECONDARY_BUS)
    }

    /// Type 1: subordinate bus number.
    pub fn subordinate_bus(&self) -> u8 {
        self.read8(reg::SUBORDINATE_BUS)
    }

    /// Offsets of the capabilities of the classic list, with their IDs, in list order
    /// (`f(offset, id)`); stops after [`MAX_CAPS`] entries or at a bad pointer.
    pub fn for_each_cap(&self, mut f: impl FnMut(u16, u8)) {
        if self.read16(reg::STATUS) & (1 << 4) == 0 {
            return;
        }
        let mut ptr = u16::from(self.read8(reg::CAP_PTR) & 0xfc);
        for _ in 0..MAX_CAPS {
            if ptr < 0x40 {
                return;
            }
            let header = self.read16(ptr);
            f(ptr, header as u8);
            ptr = (header >> 8) & 0xfc;
        }
    }

    /// Offset of the first capability with `id`.
    pub fn find_cap(&self, id: u8) -> Option<u16> {
        let mut found = None;
        self.for_each_cap(|off, cap| {
            if found.is_none() && cap == id {
                found = Some(off);
            }
        });
        found
    }

    /// Extended capabilities in list order (`f(offset, header)`); stops at an empty or all-ones
    /// header, a pointer below 0x100 or not dword aligned, or after the most that fit.
    pub fn for_each_ext_cap(&self, mut f: impl FnMut(u16, ExtCapHeader)) {
        let mut off = reg::EXT_CAP_START;
        for _ in 0..MAX_EXT_CAPS {
            let raw = self.read32(off);
            if raw == 0 || raw == !0 {
                return;
            }
            let header = calc::decode_ext_cap_header(raw);
            f(off, header);
            if header.next < reg::EXT_CAP_START || !header.next.is_multiple_of(4) {
                return;
            }
            off = header.next;
        }
    }

    /// Offset of the first extended capability with `id`.
    pub fn find_ext_cap(&self, id: u16) -> Option<u16> {
        let mut found = None;
        self.for_each_ext_cap(|off, h| {
            if found.is_none() && h.id == id {
                found = Some(off);
            }
        });
        found
    }

    /// The DVSEC of `vendor` with DVSEC ID `id`.
    pub fn find_dvsec(&self, vendor: u16, id: u16) -> Option<Dvsec> {
        let mut found = None;
        self.for_each_ext_cap(|off, h| {
            if found.is_some() || h.id != ext_cap_id::DVSEC || off > calc::CONFIG_SIZE - 12 {
                return;
            }
            let header = calc::decode_dvsec(self.read32(off + 4), self.read16(off + 8));
            if header.vendor == vendor && header.id == id {
                found = Some(Dvsec {
                    offset: off,
                    header,
                });
            }
        });
        found
    }

    /// Offset of the PCI Express capability.
    pub fn pcie_cap(&self) -> Option<u16> {
        self.find_cap(cap_id::PCIE)
    }

    /// PCI Express Device/Port Type (see [`port_type`]).
    pub fn port_type(&self) -> Option<u8> {
        let cap = self.pcie_cap()?;
        Some(((self.read16(cap + 2) >> 4) & 0xf) as u8)
    }

    /// Port Number of the PCI Express Link Capabilities (bits 31:24).
    pub fn port_number(&self) -> Option<u8> {
        let cap = self.pcie_cap()?;
        Some((self.read32(cap + calc::PCIE_LINK_CAP) >> 24) as u8)
    }

    /// Device Serial Number (extended capability 3).
    pub fn serial_number(&self) -> Option<u64> {
        let cap = self.find_ext_cap(ext_cap_id::DSN)?;
        Some(u64::from(self.read32(cap + 4)) | (u64::from(self.read32(cap + 8)) << 32))
    }
}

/// One function found by [`walk`].
#[derive(Clone, Copy, Debug)]
pub struct Visit {
    /// The function.
    pub function: Function,
    /// The bridge on the root bus below which it sits (`None` on the root bus itself).
    pub root_port: Option<Function>,
    /// Bridges between the root bus and the function (0 on the root bus).
    pub depth: u8,
}

/// Most bridge levels [`walk`] descends.
pub const MAX_DEPTH: u8 = 4;

/// Every function on `bus` (device 0..=31; functions 1..=7 only for multi-function devices), in
/// device/function order.
pub fn scan_bus(ecam: &Ecam, bus: u8, f: &mut dyn FnMut(Function)) {
    if !ecam.covers(bus) {
        return;
    }
    for dev in 0..32 {
        let Some(f0) = ecam.function(Bdf::new(bus, dev, 0)) else {
            continue;
        };
        f(f0);
        if f0.is_multi_function() {
            for func in 1..8 {
                if let Some(fx) = ecam.function(Bdf::new(bus, dev, func)) {
                    f(fx);
                }
            }
        }
    }
}

/// Every function on `root_bus` and, depth first, below its bridges (header type 1: each
/// secondary bus once, only buses above the bridge's own, inside the ECAM range, at most
/// [`MAX_DEPTH`] levels). A bridge is visited before the functions below it.
pub fn walk(ecam: &Ecam, root_bus: u8, f: &mut dyn FnMut(&Visit)) {
    let mut seen = [false; 256];
    walk_bus(ecam, root_bus, None, 0, &mut seen, f);
}

fn walk_bus(
    ecam: &Ecam,
    bus: u8,
    root_port: Option<Function>,
    depth: u8,
    seen: &mut [bool; 256],
    f: &mut dyn FnMut(&Visit),
) {
    if seen[usize::from(bus)] {
        return;
    }
    seen[usize::from(bus)] = true;
    scan_bus(ecam, bus, &mut |function| {
        f(&Visit {
            function,
            root_port,
            depth,
        });
        if function.header_type() == 1 && depth < MAX_DEPTH {
            let secondary = function.secondary_bus();
            if secondary > bus && ecam.covers(secondary) {
                let rp = root_port.or(Some(function));
                walk_bus(ecam, secondary, rp, depth + 1, seen, f);
            }
        }
    });
}
