//! PCIe root ports (type 1 header).

use std::sync::{Arc, Mutex};

use cxlvm_memory::AddressSpace;

use super::common::{BuilderParts, FunctionCore, lock};
use super::{ConfigHooks, PciBridge, PciFunction};
use crate::PciError;
use crate::bar::BarSpec;
use crate::config::{ConfigSpace, PciePortType};
use crate::regs::{MEMORY_BASE, MEMORY_LIMIT, SECONDARY_BUS, SUBORDINATE_BUS};

/// Class code of a PCI-to-PCI bridge (what root ports report).
pub const ROOT_PORT_CLASS: u32 = 0x06_04_00;
/// BAR slots of a type 1 header.
pub const ROOT_PORT_BARS: usize = 2;
/// Functions a root port's secondary bus can hold: device 0, functions 0 to 7.
pub const ROOT_PORT_CHILDREN: usize = 8;

/// Builds a [`RootPort`]. See the [module documentation](super) for the flow.
#[derive(Debug)]
pub struct RootPortBuilder {
    parts: BuilderParts,
    port_number: u8,
    /// An error from laying out the header, reported by `build`.
    error: Option<PciError>,
}

impl RootPortBuilder {
    /// A root port with a type 1 header (class [`ROOT_PORT_CLASS`], revision 0) and a PCIe
    /// capability of type 4 whose Link Capabilities carry `port_number` (bits 31:24; the CXL
    /// dport id). More capabilities (DVSECs) can be added with
    /// [`RootPortBuilder::config_mut`].
    pub fn new(name: &str, vendor: u16, device: u16, port_number: u8) -> Self {
        let mut config = ConfigSpace::new_type1(vendor, device, ROOT_PORT_CLASS, 0);
        let error = config
            .add_pcie_capability(PciePortType::RootPort, port_number)
            .err();
        Self {
            parts: BuilderParts::new(name, config),
            port_number,
            error,
        }
    }

    /// The configuration space, to add capabilities before [`RootPortBuilder::build`].
    pub fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.parts.config
    }

    /// Declares memory BAR `index` (0 or 1; a 64-bit BAR must be BAR0 and uses both).
    pub fn bar(mut self, index: usize, spec: BarSpec) -> Self {
        self.parts.bars.push((index, spec));
        self
    }

    /// Device-model callbacks.
    pub fn hooks(mut self, hooks: Arc<dyn ConfigHooks>) -> Self {
        self.parts.hooks = Some(hooks);
        self
    }

    /// The address space the BAR regions live in (required when there are BARs).
    pub fn address_space(mut self, space: Arc<Mutex<AddressSpace>>) -> Self {
        self.parts.space = Some(space);
        self
    }

    /// Checks the BARs, lays them out and seals the configuration space.
    pub fn build(self) -> Result<Arc<RootPort>, PciError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let core = self.parts.into_core(ROOT_PORT_BARS)?;
        Ok(Arc::new(RootPort {
            core,
            port_number: self.port_number,
            children: Mutex::new(Default::default()),
        }))
    }
}

/// A PCIe root port: a type 1 function whose secondary bus holds one device (functions 0-7 of
/// device 0).
///
/// Bus numbers, memory/prefetchable/I/O windows and bridge control are writable (windows are
/// not enforced on the BARs below). Setting Bridge Control bit 6 (secondary bus reset) calls
/// [`ConfigHooks::secondary_bus_reset`] and resets every child; while it stays set the
/// secondary side is unreachable. Configuration cycles are forwarded only once the secondary and
/// subordinate bus numbers are programmed (by the guest or by
/// [`PciSegment::program_bus_numbers`](crate::PciSegment::program_bus_numbers)).
pub struct RootPort {
    core: FunctionCore,
    port_number: u8,
    children: Mutex<[Option<Arc<dyn PciFunction>>; ROOT_PORT_CHILDREN]>,
}

impl std::fmt::Debug for RootPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootPort")
            .field("name", &self.core.name())
            .field("port_number", &self.port_number)
            .finish_non_exhaustive()
    }
}

impl RootPort {
    /// Starts building a root port; see [`RootPortBuilder::new`].
    pub fn builder(name: &str, vendor: u16, device: u16, port_number: u8) -> RootPortBuilder {
        RootPortBuilder::new(name, vendor, device, port_number)
    }

    /// Name given at build (used in logs).
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// The PCIe port number (Link Capabilities bits 31:24).
    pub fn port_number(&self) -> u8 {
        self.port_number
    }

    /// Attaches `function` at `devfn` (0 to 7) on the secondary bus. Guests only scan functions
    /// 1-7 when function 0 has the multi-function bit (header type bit 7) set.
    pub fn attach(&self, devfn: u8, function: Arc<dyn PciFunction>) -> Result<(), PciError> {
        let mut children = lock(&self.children);
        let slot = children
            .get_mut(usize::from(devfn))
            .ok_or(PciError::BadDevfn(devfn))?;
        if slot.is_some() {
            return Err(PciError::ChildTaken {
                bridge: self.name().to_owned(),
                devfn,
            });
        }
        *slot = Some(function);
        Ok(())
    }

    /// The functions attached below, as `(devfn, function)`.
    pub fn children(&self) -> Vec<(u8, Arc<dyn PciFunction>)> {
        lock(&self.children)
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i as u8, c.clone()?)))
            .collect()
    }

    /// Firmware-style BAR assignment; see [`Endpoint::assign_bar`](super::Endpoint::assign_bar).
    pub fn assign_bar(&self, index: usize, addr: u64) -> Result<(), PciError> {
        let effects = self.core.assign_bar(index, addr)?;
        if effects.sbr_asserted {
            self.reset_children();
        }
        Ok(())
    }

    /// The address programmed in BAR `index`; `None` if there is no such BAR.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        self.core.bar_address(index)
    }

    /// Firmware-style: opens the (32-bit, non-prefetchable) memory window at `base` for `size`
    /// bytes, both multiples of 1 MiB and below 4 GiB.
    pub fn set_memory_window(&self, base: u64, size: u64) -> Result<(), PciError> {
        const MIB: u64 = 1 << 20;
        let end = base.checked_add(size).filter(|&e| {
            size > 0 && base.is_multiple_of(MIB) && size.is_multiple_of(MIB) && e <= 1 << 32
        });
        let Some(end) = end else {
            return Err(PciError::BadBridgeWindow {
                name: self.name().to_owned(),
                base,
                size,
            });
        };
        // Bits 15:4 of each register are address bits 31:20.
        let base_reg = ((base >> 16) & 0xfff0) as u16;
        let limit_reg = (((end - 1) >> 16) & 0xfff0) as u16;
        self.with_config(|c| {
            c.set_u16(MEMORY_BASE, base_reg);
            c.set_u16(MEMORY_LIMIT, limit_reg);
        });
        Ok(())
    }

    /// The memory window programmed now, (base, size), if open.
    pub fn memory_window(&self) -> Option<(u64, u64)> {
        let (b, l) = self.with_config(|c| (c.u16(MEMORY_BASE), c.u16(MEMORY_LIMIT)));
        let base = u64::from(b & 0xfff0) << 16;
        let end = (u64::from(l & 0xfff0) << 16) + (1 << 20);
        (base < end).then_some((base, end - base))
    }

    /// Where BAR `index`'s region is placed now, if anywhere.
    pub fn bar_mapping(&self, index: usize) -> Option<u64> {
        self.core.bar_mapping(index)
    }

    /// Runs `f` on the configuration space (device side), then updates BARs and notifications;
    /// see [`Endpoint::with_config`](super::Endpoint::with_config).
    pub fn with_config<R>(&self, f: impl FnOnce(&mut ConfigSpace) -> R) -> R {
        let (r, effects) = self.core.with_config(f);
        if effects.sbr_asserted {
            self.reset_children();
        }
        r
    }

    fn reset_children(&self) {
        for (_, child) in self.children() {
            child.reset();
        }
    }
}

impl PciFunction for RootPort {
    fn read_config(&self, offset: u16, data: &mut [u8]) {
        self.core.read(offset, data);
    }

    fn retry_bars(&self) {
        self.core.retry_bars();
    }

    fn write_config(&self, offset: u16, data: &[u8]) {
        if self.core.write(offset, data).sbr_asserted {
            self.reset_children();
        }
    }

    fn bridge(&self) -> Option<&dyn PciBridge> {
        Some(self)
    }

    fn reset(&self) {
        self.core.reset();
        self.reset_children();
    }
}

impl PciBridge for RootPort {
    fn attached(&self) -> Vec<Arc<dyn PciFunction>> {
        self.children().into_iter().map(|(_, c)| c).collect()
    }

    fn bus_range(&self) -> Option<(u8, u8)> {
        let st = self.core.lock();
        let secondary = st.cfg.u8(SECONDARY_BUS);
        let subordinate = st.cfg.u8(SUBORDINATE_BUS);
        (secondary != 0 && subordinate >= secondary).then_some((secondary, subordinate))
    }

    fn child(&self, bus: u8, devfn: u8) -> Option<Arc<dyn PciFunction>> {
        if self.core.lock().sbr {
            return None;
        }
        let (secondary, subordinate) = self.bus_range()?;
        if bus == secondary {
            return lock(&self.children)
                .get(usize::from(devfn))
                .cloned()
                .flatten();
        }
        if bus < secondary || bus > subordinate {
            return None;
        }
        // Deeper buses: through a child bridge whose range covers `bus`. Requiring the child's
        // secondary bus to be above ours bounds the recursion by the bus numbers.
        for (_, child) in self.children() {
            if let Some(b) = child.bridge()
                && let Some((s, sub)) = b.bus_range()
                && s > secondary
                && (s..=sub).contains(&bus)
            {
                return b.child(bus, devfn);
            }
        }
        None
    }
}
