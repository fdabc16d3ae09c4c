//! PCI segments and their ECAM (enhanced configuration access mechanism) window.
//!
//! A [`PciSegment`] covers buses `[start_bus, end_bus]`; its ECAM window is `(end - start + 1)`
//! MiB, one MiB per bus, and a configuration register is at `(bus - start) << 20 | device << 15 |
//! function << 12 | register`. The segment is an [`MmioHandler`]: the VMM creates an MMIO region
//! of [`PciSegment::ecam_size`] bytes over it and places it where its ACPI MCFG says.
//!
//! The segment holds **root buses**, one per host bridge ([`PciSegment::add_root_bus`]), with
//! functions attached directly ([`PciSegment::attach`]). An access to any other bus is routed
//! through the root-bus bridges whose programmed `(secondary, subordinate)` range covers it,
//! recursively, like type 1 configuration cycles. Until bus numbers are programmed nothing below a
//! bridge is visible. [`PciSegment::program_bus_numbers`] does what firmware enumeration does;
//! the guest may renumber later and routing follows.
//!
//! Absent functions read all-ones (vendor 0xffff) and ignore writes. Accesses of 1, 2 or 4 bytes
//! go to the function as they are (functions handle misalignment byte-wise); 8-byte accesses are
//! split into two 4-byte ones, and pieces never cross a function's 4 KiB.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use cxlvm_memory::MmioHandler;
use tracing::{debug, warn};

use crate::PciError;
use crate::function::PciFunction;
use crate::regs::{CONFIG_SPACE_SIZE, PRIMARY_BUS, VENDOR_ID};

/// Bytes of ECAM space per bus.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// Builds a devfn from device (0-31) and function (0-7) numbers.
pub fn devfn(device: u8, function: u8) -> u8 {
    (device & 0x1f) << 3 | (function & 0x7)
}

struct RootBus {
    name: String,
    functions: BTreeMap<u8, Arc<dyn PciFunction>>,
}

/// One PCI segment (domain): its root buses and the ECAM window over its bus range.
pub struct PciSegment {
    name: String,
    start_bus: u8,
    end_bus: u8,
    root_buses: RwLock<BTreeMap<u8, RootBus>>,
}

impl std::fmt::Debug for PciSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let buses = self.buses();
        f.debug_struct("PciSegment")
            .field("name", &self.name)
            .field("start_bus", &self.start_bus)
            .field("end_bus", &self.end_bus)
            .field(
                "root_buses",
                &buses
                    .iter()
                    .map(|(b, rb)| (*b, rb.name.as_str(), rb.functions.len()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PciSegment {
    /// A segment decoding buses `[start_bus, end_bus]`.
    pub fn new(name: &str, start_bus: u8, end_bus: u8) -> Result<Self, PciError> {
        if end_bus < start_bus {
            return Err(PciError::BadBusRange {
                start: start_bus,
                end: end_bus,
            });
        }
        Ok(Self {
            name: name.to_owned(),
            start_bus,
            end_bus,
            root_buses: RwLock::new(BTreeMap::new()),
        })
    }

    /// Name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bus range `(start, end)`.
    pub fn bus_range(&self) -> (u8, u8) {
        (self.start_bus, self.end_bus)
    }

    /// Size of the ECAM window in bytes.
    pub fn ecam_size(&self) -> u64 {
        (u64::from(self.end_bus - self.start_bus) + 1) * ECAM_BUS_SIZE
    }

    fn buses(&self) -> RwLockReadGuard<'_, BTreeMap<u8, RootBus>> {
        self.root_buses
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Declares `bus` as the root bus of a host bridge called `name`.
    pub fn add_root_bus(&self, bus: u8, name: &str) -> Result<(), PciError> {
        if !(self.start_bus..=self.end_bus).contains(&bus) {
            return Err(PciError::BusOutOfRange(bus));
        }
        let mut buses = self
            .root_buses
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if buses.contains_key(&bus) {
            return Err(PciError::DuplicateRootBus(bus));
        }
        buses.insert(
            bus,
            RootBus {
                name: name.to_owned(),
                functions: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// The root buses as `(bus, host bridge name)`, ascending.
    pub fn root_buses(&self) -> Vec<(u8, String)> {
        self.buses()
            .iter()
            .map(|(b, rb)| (*b, rb.name.clone()))
            .collect()
    }

    /// Attaches `function` at `devfn` (see [`devfn`]) on root bus `bus`. Guests only scan
    /// functions 1-7 of a device when its function 0 has the multi-function bit (header type
    /// bit 7) set.
    pub fn attach(
        &self,
        bus: u8,
        devfn: u8,
        function: Arc<dyn PciFunction>,
    ) -> Result<(), PciError> {
        let mut buses = self
            .root_buses
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let rb = buses.get_mut(&bus).ok_or(PciError::NoSuchRootBus(bus))?;
        if rb.functions.contains_key(&devfn) {
            return Err(PciError::SlotTaken { bus, devfn });
        }
        rb.functions.insert(devfn, function);
        Ok(())
    }

    /// The function a configuration access to `bus`/`devfn` reaches now, if any: on a root bus
    /// directly, otherwise through the root-bus bridge whose bus range covers `bus` (the first
    /// one, by root bus then devfn, if the guest programmed overlapping ranges).
    pub fn function(&self, bus: u8, devfn: u8) -> Option<Arc<dyn PciFunction>> {
        if !(self.start_bus..=self.end_bus).contains(&bus) {
            return None;
        }
        let bridges: Vec<Arc<dyn PciFunction>> = {
            let buses = self.buses();
            if let Some(rb) = buses.get(&bus) {
                return rb.functions.get(&devfn).cloned();
            }
            buses
                .values()
                .flat_map(|rb| rb.functions.values())
                .filter(|f| f.bridge().is_some())
                .cloned()
                .collect()
        };
        for f in &bridges {
            if let Some(b) = f.bridge()
                && let Some((secondary, subordinate)) = b.bus_range()
                && (secondary..=subordinate).contains(&bus)
            {
                return b.child(bus, devfn);
            }
        }
        None
    }

    /// Reads configuration bytes of `bus`/`devfn` at `offset` (all-ones when absent).
    pub fn config_read(&self, bus: u8, devfn: u8, offset: u16, data: &mut [u8]) {
        match self.function(bus, devfn) {
            Some(f) => f.read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes configuration bytes of `bus`/`devfn` at `offset` (dropped when absent).
    pub fn config_write(&self, bus: u8, devfn: u8, offset: u16, data: &[u8]) {
        if let Some(f) = self.function(bus, devfn) {
            use std::sync::atomic::Ordering;
            let before = crate::bar::PLACEMENT_CHANGES.load(Ordering::Relaxed);
            f.write_config(offset, data);
            // A BAR that moved or stopped decoding may have freed what another function's BAR
            // waits for.
            if crate::bar::PLACEMENT_CHANGES.load(Ordering::Relaxed) != before {
                for other in self.attached() {
                    other.retry_bars();
                }
            }
        }
    }

    /// Every function attached to the segment (on a root bus, or below a bridge whatever its
    /// bus numbers), without scanning the bus space.
    fn attached(&self) -> Vec<Arc<dyn PciFunction>> {
        /// Bridges nest at most this deep (PCIe allows far less in practice).
        const MAX_DEPTH: usize = 32;
        let mut out: Vec<Arc<dyn PciFunction>> = Vec::new();
        let mut level: Vec<Arc<dyn PciFunction>> = self
            .buses()
            .values()
            .flat_map(|rb| rb.functions.values().cloned())
            .collect();
        for _ in 0..MAX_DEPTH {
            if level.is_empty() {
                break;
            }
            let next = level
                .iter()
                .filter_map(|f| f.bridge().map(|b| b.attached()))
                .flatten()
                .collect();
            out.append(&mut level);
            level = next;
        }
        out
    }

    /// Every function reachable now, as `(bus, devfn, function)` in bus then devfn order (what a
    /// guest scan of the segment would find).
    pub fn functions(&self) -> Vec<(u8, u8, Arc<dyn PciFunction>)> {
        let mut out = Vec::new();
        for bus in self.start_bus..=self.end_bus {
            for df in 0..=255u8 {
                if let Some(f) = self.function(bus, df) {
                    let mut id = [0u8; 2];
                    f.read_config(VENDOR_ID, &mut id);
                    if id != [0xff, 0xff] {
                        out.push((bus, df, f));
                    }
                }
            }
        }
        out
    }

    /// Assigns bus numbers to every bridge like firmware enumeration does: depth first, from
    /// each root bus upward, each bridge getting primary = its bus, secondary = the next free
    /// number and subordinate = the highest number used below it. Numbers below a root bus stop
    /// before the next root bus (or at the segment's end). The guest may renumber afterwards.
    /// Returns the highest bus number assigned (or the highest root bus when there are no
    /// bridges).
    pub fn program_bus_numbers(&self) -> Result<u8, PciError> {
        let roots: Vec<(u8, Vec<Arc<dyn PciFunction>>)> = self
            .buses()
            .iter()
            .map(|(b, rb)| (*b, rb.functions.values().cloned().collect()))
            .collect();
        let mut highest = 0u8;
        for (i, (root, functions)) in roots.iter().enumerate() {
            let limit = roots
                .get(i + 1)
                .map_or(self.end_bus, |(next, _)| next.saturating_sub(1));
            let mut next = u16::from(*root) + 1;
            for f in functions {
                if f.bridge().is_some() {
                    next = enumerate(f.as_ref(), *root, next, limit, *root)?;
                }
            }
            highest = highest.max((next - 1) as u8);
        }
        Ok(highest)
    }
}

/// Programs bridge `f` (on bus `primary`) with secondary bus `next`, recurses into its children
/// and returns the next free bus number.
fn enumerate(
    f: &dyn PciFunction,
    primary: u8,
    next: u16,
    limit: u8,
    root: u8,
) -> Result<u16, PciError> {
    let Some(bridge) = f.bridge() else {
        return Ok(next);
    };
    let Ok(secondary) = u8::try_from(next) else {
        return Err(PciError::BusNumbersExhausted(root));
    };
    if secondary > limit || secondary == 0 {
        warn!("bus numbers exhausted below root bus {root:#04x}");
        return Err(PciError::BusNumbersExhausted(root));
    }
    // Open the whole remaining range first so that the children are reachable.
    write_bus_numbers(f, primary, secondary, limit);
    let mut next = u16::from(secondary) + 1;
    for df in 0..=255u8 {
        if let Some(child) = bridge.child(secondary, df)
            && child.bridge().is_some()
        {
            next = enumerate(child.as_ref(), secondary, next, limit, root)?;
        }
    }
    let subordinate = (next - 1) as u8;
    write_bus_numbers(f, primary, secondary, subordinate);
    debug!(
        "bridge on bus {primary:#04x}: secondary {secondary:#04x}, subordinate {subordinate:#04x}"
    );
    Ok(next)
}

fn write_bus_numbers(f: &dyn PciFunction, primary: u8, secondary: u8, subordinate: u8) {
    let mut dword = [0u8; 4];
    f.read_config(PRIMARY_BUS, &mut dword);
    dword[0] = primary;
    dword[1] = secondary;
    dword[2] = subordinate;
    f.write_config(PRIMARY_BUS, &dword);
}

impl PciSegment {
    /// Splits an ECAM access into pieces that stay inside one function's 4 KiB and are at most
    /// 4 bytes when the access is 8 bytes; calls `f(bus, devfn, register, span)` for each.
    fn pieces(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(u8, u8, u16, std::ops::Range<usize>),
    ) {
        let max = if len == 8 { 4 } else { len.max(1) };
        let mut done = 0;
        while done < len {
            let at = offset.saturating_add(done as u64);
            let in_fn = (at % CONFIG_SPACE_SIZE as u64) as usize;
            let piece = max.min(len - done).min(CONFIG_SPACE_SIZE - in_fn);
            let bus_index = at >> 20;
            let bus = u64::from(self.start_bus) + bus_index;
            if bus <= u64::from(self.end_bus) {
                let devfn = ((at >> 12) & 0xff) as u8;
                f(bus as u8, devfn, in_fn as u16, done..done + piece);
            }
            done += piece;
        }
    }
}

impl MmioHandler for PciSegment {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        self.pieces(offset, data.len(), |bus, devfn, reg, span| {
            if let Some(buf) = data.get_mut(span) {
                self.config_read(bus, devfn, reg, buf);
            }
        });
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.pieces(offset, data.len(), |bus, devfn, reg, span| {
            if let Some(buf) = data.get(span) {
                self.config_write(bus, devfn, reg, buf);
            }
        });
    }
}
