//! The machine the tables describe: plain numbers, no dependency on the CXL model.
//!
//! [`Platform::validate`] checks everything the tables (and Linux reading them) rely on; every
//! builder in this crate validates first, so a table is never built from a description Linux
//! would reject or misread.

use crate::error::{AcpiError, Item};

/// A guest-physical address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemRange {
    /// First byte.
    pub base: u64,
    /// Bytes (non-zero wherever the platform uses a range).
    pub size: u64,
}

impl MemRange {
    /// `[base, base + size)`.
    pub const fn new(base: u64, size: u64) -> Self {
        MemRange { base, size }
    }

    /// The last byte (`base + size - 1`); `None` for an empty range or one past 2^64.
    pub fn last(&self) -> Option<u64> {
        self.size.checked_sub(1)?.checked_add(self.base)
    }

    /// Whether the two (non-empty, non-wrapping) ranges share a byte.
    pub fn overlaps(&self, other: &MemRange) -> bool {
        match (self.last(), other.last()) {
            (Some(a), Some(b)) => self.base <= b && other.base <= a,
            _ => false,
        }
    }

    /// Whether the range ends at or below 4 GiB (fits 32-bit descriptors).
    pub fn below_4g(&self) -> bool {
        self.last().is_some_and(|l| l <= u64::from(u32::MAX))
    }
}

/// An inclusive range of PCI bus numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BusRange {
    /// First bus (a host bridge's root bus, its `_BBN`).
    pub start: u8,
    /// Last bus (inclusive).
    pub end: u8,
}

impl BusRange {
    /// Whether the two ranges share a bus.
    pub fn overlaps(&self, other: &BusRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

/// One vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// Its local APIC id (x2APIC id). Below 255 it gets a Local APIC entry in the MADT and an
    /// APIC affinity entry in the SRAT; from 255 on, x2APIC entries. Its ACPI processor UID is
    /// its index in [`Platform::cpus`].
    pub apic_id: u32,
}

/// The I/O APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    /// I/O APIC id.
    pub id: u8,
    /// MMIO address of its registers (0xfec00000 on PCs).
    pub address: u32,
    /// First global system interrupt (GSI) of its pins.
    pub gsi_base: u32,
}

/// Interrupt polarity of an [`InterruptOverride`] (MPS INTI flags bits 1:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// Conforms to the bus (ISA: active high).
    Conforming,
    /// Active high.
    ActiveHigh,
    /// Active low.
    ActiveLow,
}

/// Trigger mode of an [`InterruptOverride`] (MPS INTI flags bits 3:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Conforms to the bus (ISA: edge).
    Conforming,
    /// Edge triggered.
    Edge,
    /// Level triggered.
    Level,
}

/// An ISA interrupt that reaches the I/O APIC at another GSI or with other flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptOverride {
    /// ISA IRQ (the MADT's bus is always ISA).
    pub isa_irq: u8,
    /// The GSI it is wired to.
    pub gsi: u32,
    /// Its polarity.
    pub polarity: Polarity,
    /// Its trigger mode.
    pub trigger: Trigger,
}

impl InterruptOverride {
    /// The PC timer: ISA IRQ 0 is I/O APIC pin 2, edge, active high (KVM's in-kernel PIT and
    /// I/O APIC are wired this way). The flags are explicit, never "conforming".
    pub const TIMER: InterruptOverride = InterruptOverride {
        isa_irq: 0,
        gsi: 2,
        polarity: Polarity::ActiveHigh,
        trigger: Trigger::Edge,
    };

    /// The MPS INTI flags of the MADT entry.
    pub fn inti_flags(&self) -> u16 {
        let polarity = match self.polarity {
            Polarity::Conforming => 0,
            Polarity::ActiveHigh => 1,
            Polarity::ActiveLow => 3,
        };
        let trigger = match self.trigger {
            Trigger::Conforming => 0,
            Trigger::Edge => 1,
            Trigger::Level => 3,
        };
        polarity | trigger << 2
    }
}

/// The PCIe enhanced configuration access mechanism (one MCFG entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ecam {
    /// Address of bus 0's configuration space (the MCFG base, even when `buses.start` > 0);
    /// 1 MiB aligned.
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// Buses it decodes (1 MiB each, from `base + start * 1 MiB`).
    pub buses: BusRange,
}

impl Ecam {
    /// The guest-physical bytes its buses occupy; `None` if they pass 2^64.
    pub fn range(&self) -> Option<MemRange> {
        let base = self.base.checked_add(u64::from(self.buses.start) << 20)?;
        let size = (u64::from(self.buses.end) + 1).checked_sub(u64::from(self.buses.start))? << 20;
        base.checked_add(size - 1)?;
        Some(MemRange { base, size })
    }
}

/// A CXL 2.0 host bridge: an `ACPI0016` device in the DSDT and a CHBS in the CEDT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBridge {
    /// `_UID` of the device and UID of its CHBS; windows name their targets by it. Unique.
    pub uid: u32,
    /// Its buses: `start` is the root bus (`_BBN`), the whole range goes in `_CRS`. Inside the
    /// ECAM's buses, disjoint from every other host bridge's.
    pub buses: BusRange,
    /// Its component registers (CHBCR), 64 KiB as CXL 2.0 requires. Only in the CEDT: never
    /// in `_CRS`.
    pub chbcr: MemRange,
    /// Memory it decodes for the BARs below it: each range becomes a (non-prefetchable)
    /// memory window of its `_CRS`, 32-bit if it ends below 4 GiB, 64-bit otherwise. Disjoint
    /// from every other host bridge's (cxlvm gives each its share of the PCI MMIO aperture). A PCI-to-PCI bridge (a root
    /// port) forwards non-prefetchable memory only below 4 GiB, so non-prefetchable BARs of
    /// devices behind root ports need a range here below 4 GiB.
    pub mmio: Vec<MemRange>,
}

/// Interleave ways of a fixed memory window, with the CEDT encoding (ENIW).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ways {
    /// 1 way (ENIW 0).
    X1,
    /// 2 ways (ENIW 1).
    X2,
    /// 4 ways (ENIW 2).
    X4,
    /// 8 ways (ENIW 3).
    X8,
    /// 16 ways (ENIW 4).
    X16,
    /// 3 ways (ENIW 8).
    X3,
    /// 6 ways (ENIW 9).
    X6,
    /// 12 ways (ENIW 10).
    X12,
}

impl Ways {
    /// Every value, in ENIW order.
    pub const ALL: [Ways; 8] = [
        Ways::X1,
        Ways::X2,
        Ways::X4,
        Ways::X8,
        Ways::X16,
        Ways::X3,
        Ways::X6,
        Ways::X12,
    ];

    /// The number of targets.
    pub fn count(self) -> u32 {
        match self {
            Ways::X1 => 1,
            Ways::X2 => 2,
            Ways::X4 => 4,
            Ways::X8 => 8,
            Ways::X16 => 16,
            Ways::X3 => 3,
            Ways::X6 => 6,
            Ways::X12 => 12,
        }
    }

    /// The CEDT encoding (ENIW): 0–4 for 1–16 ways, 8–10 for 3, 6, 12 ways.
    pub fn encoded(self) -> u8 {
        match self {
            Ways::X1 => 0,
            Ways::X2 => 1,
            Ways::X4 => 2,
            Ways::X8 => 3,
            Ways::X16 => 4,
            Ways::X3 => 8,
            Ways::X6 => 9,
            Ways::X12 => 10,
        }
    }

    /// From a number of targets.
    pub fn from_count(count: u32) -> Result<Ways, AcpiError> {
        Ways::ALL
            .into_iter()
            .find(|w| w.count() == count)
            .ok_or(AcpiError::Ways { count })
    }

    /// From the CEDT encoding.
    pub fn from_encoded(eniw: u8) -> Result<Ways, AcpiError> {
        Ways::ALL
            .into_iter()
            .find(|w| w.encoded() == eniw)
            .ok_or(AcpiError::EncodedWays { eniw })
    }

    /// XOR maps a window of these ways needs (log2 of the power-of-2 factor), as Linux counts
    /// them: 1 for 2 and 6 ways, 2 for 4 and 12, 3 for 8, 4 for 16, none for 1 and 3.
    pub fn xor_maps_needed(self) -> usize {
        match self {
            Ways::X1 | Ways::X3 => 0,
            Ways::X2 | Ways::X6 => 1,
            Ways::X4 | Ways::X12 => 2,
            Ways::X8 => 3,
            Ways::X16 => 4,
        }
    }
}

/// Host-bridge interleave granularity of a window, with the CEDT encoding (HBIG).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    /// 256 bytes (HBIG 0).
    B256,
    /// 512 bytes (HBIG 1).
    B512,
    /// 1 KiB (HBIG 2).
    K1,
    /// 2 KiB (HBIG 3).
    K2,
    /// 4 KiB (HBIG 4).
    K4,
    /// 8 KiB (HBIG 5).
    K8,
    /// 16 KiB (HBIG 6).
    K16,
}

impl Granularity {
    /// Every value, in HBIG order.
    pub const ALL: [Granularity; 7] = [
        Granularity::B256,
        Granularity::B512,
        Granularity::K1,
        Granularity::K2,
        Granularity::K4,
        Granularity::K8,
        Granularity::K16,
    ];

    /// The CEDT encoding (HBIG): bytes = 256 << HBIG.
    pub fn encoded(self) -> u8 {
        self as u8
    }

    /// Bytes.
    pub fn bytes(self) -> u64 {
        256 << self.encoded()
    }

    /// From bytes (256 … 16384, a power of 2).
    pub fn from_bytes(bytes: u64) -> Result<Granularity, AcpiError> {
        Granularity::ALL
            .into_iter()
            .find(|g| g.bytes() == bytes)
            .ok_or(AcpiError::Granularity { bytes })
    }

    /// From the CEDT encoding.
    pub fn from_encoded(hbig: u8) -> Result<Granularity, AcpiError> {
        Granularity::ALL
            .get(usize::from(hbig))
            .copied()
            .ok_or(AcpiError::EncodedGranularity { hbig })
    }
}

/// How a window picks its host bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arithmetic {
    /// Position = (offset / granularity) mod ways.
    Modulo,
    /// Bit *i* of the position is the parity of `HPA & maps[i]`. The CEDT carries the maps in
    /// one CXIMS per granularity, so XOR windows of equal granularity must agree on the maps
    /// they share (a window of 2^k ways uses the first k).
    Xor {
        /// At least [`Ways::xor_maps_needed`] maps.
        maps: Vec<u64>,
    },
}

/// What a window may map (CFMWS window restrictions). Every window is Type-3 (host-only
/// coherent, HDM-H) memory: bit 1 is always set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Restrictions {
    /// Volatile capacity (bit 2): Linux creates RAM regions only with Type-3 + volatile.
    pub volatile: bool,
    /// Persistent capacity (bit 3): Linux then registers an nvdimm bridge.
    pub persistent: bool,
}

impl Restrictions {
    /// CFMWS "Window Restrictions" bits.
    pub fn bits(self) -> u16 {
        const TYPE3: u16 = 1 << 1;
        const VOLATILE: u16 = 1 << 2;
        const PERSISTENT: u16 = 1 << 3;
        TYPE3
            | if self.volatile { VOLATILE } else { 0 }
            | if self.persistent { PERSISTENT } else { 0 }
    }
}

/// A CXL fixed memory window (one CFMWS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedWindow {
    /// Its host physical addresses: base 256 MiB aligned, size a non-zero multiple of
    /// 256 MiB × ways. Outside RAM and every `_CRS`, with no SRAT entry (Linux makes a NUMA
    /// node per window).
    pub range: MemRange,
    /// Host-bridge UIDs in interleave position order; `ways.count()` of them.
    pub targets: Vec<u32>,
    /// Interleave ways (ENIW).
    pub ways: Ways,
    /// Host-bridge interleave granularity (HBIG).
    pub granularity: Granularity,
    /// Modulo or XOR.
    pub arithmetic: Arithmetic,
    /// Volatile and/or persistent.
    pub restrictions: Restrictions,
    /// QoS throttling group (QTG id).
    pub qtg: u16,
}

/// A 16550 UART (a `PNP0501` device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SerialPort {
    /// First of its 8 I/O ports.
    pub io_base: u16,
    /// Its ISA IRQ (0–15).
    pub irq: u8,
}

impl SerialPort {
    /// COM1: ports 0x3f8–0x3ff, IRQ 4.
    pub const COM1: SerialPort = SerialPort {
        io_base: 0x3f8,
        irq: 4,
    };
}

/// The I/O ports of the hardware-reduced ACPI power registers (FADT).
///
/// Power-off: Linux evaluates `\_S5` (SLP_TYP [`S5_SLEEP_TYPE`]) and writes
/// `SLP_TYP << 2 | SLP_EN` (0x34) to `sleep_control`, after writing WAK_STS (0x80) to
/// `sleep_status`; see [`sleep_control_is_poweroff`]. Reset: Linux writes `reset_value` to
/// `reset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerRegisters {
    /// SLEEP_CONTROL_REG (8-bit I/O port).
    pub sleep_control: u16,
    /// SLEEP_STATUS_REG (8-bit I/O port).
    pub sleep_status: u16,
    /// RESET_REG (8-bit I/O port).
    pub reset: u16,
    /// RESET_VALUE.
    pub reset_value: u8,
}

impl PowerRegisters {
    /// cxlvm's ports: sleep control 0x600, sleep status 0x601 (next to the test-ABI ports at
    /// 0x500), reset 0xcf9 with value 0x06 (the PC reset control register, so Linux's
    /// `reboot=pci` fallback reaches the same device as the ACPI reset).
    pub const CXLVM: PowerRegisters = PowerRegisters {
        sleep_control: 0x600,
        sleep_status: 0x601,
        reset: 0xcf9,
        reset_value: 0x06,
    };
}

impl Default for PowerRegisters {
    fn default() -> Self {
        PowerRegisters::CXLVM
    }
}

/// SLP_TYP of `\_S5` (soft off).
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN bit of the sleep control register.
pub const SLEEP_ENABLE: u8 = 1 << 5;
/// WAK_STS bit of the sleep status register.
pub const WAKE_STATUS: u8 = 1 << 7;

/// The sleep type a write to the sleep control register asks for, if SLP_EN is set.
pub fn sleep_control_request(value: u8) -> Option<u8> {
    (value & SLEEP_ENABLE != 0).then_some((value >> 2) & 0x7)
}

/// Whether a write to the sleep control register asks for S5 (power off).
pub fn sleep_control_is_poweroff(value: u8) -> bool {
    sleep_control_request(value) == Some(S5_SLEEP_TYPE)
}

/// Address of the local APICs (MADT).
pub const LOCAL_APIC_ADDRESS: u32 = 0xfee0_0000;
/// The most host bridges the DSDT names (`HB00` … `HBFF`).
pub const MAX_HOST_BRIDGES: usize = 256;
/// CXL 2.0 CHBCR size.
pub const CHBCR_SIZE: u64 = 0x1_0000;
/// CFMWS base alignment and size unit.
pub const WINDOW_ALIGN: u64 = 256 << 20;

/// The machine the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// vCPUs, in ACPI processor UID order (UID = index); vCPU 0 is the boot processor.
    pub cpus: Vec<Cpu>,
    /// Boot RAM (SRAT memory affinity, proximity domain 0).
    pub ram: Vec<MemRange>,
    /// The I/O APIC.
    pub ioapic: IoApic,
    /// ISA interrupt overrides (e.g. [`InterruptOverride::TIMER`]).
    pub overrides: Vec<InterruptOverride>,
    /// The ECAM (MCFG; also reserved by a `PNP0C02` device in the DSDT).
    pub ecam: Option<Ecam>,
    /// CXL host bridges.
    pub host_bridges: Vec<HostBridge>,
    /// CXL fixed memory windows.
    pub windows: Vec<FixedWindow>,
    /// A 16550 UART described in the DSDT (COM1), if any.
    pub serial: Option<SerialPort>,
    /// Power-off and reset registers (FADT).
    pub power: PowerRegisters,
}

impl Platform {
    /// Checks the description; the table builders call it first.
    pub fn validate(&self) -> Result<(), AcpiError> {
        self.check_cpus()?;
        self.check_ranges()?;
        self.check_host_bridges()?;
        self.check_windows()?;
        if let Some(s) = self.serial
            && s.irq > 15
        {
            return Err(AcpiError::SerialIrq { irq: s.irq });
        }
        Ok(())
    }

    fn check_cpus(&self) -> Result<(), AcpiError> {
        if self.cpus.is_empty() {
            return Err(AcpiError::NoCpus);
        }
        let mut ids: Vec<u32> = self.cpus.iter().map(|c| c.apic_id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(AcpiError::DuplicateApicId { apic_id: w[0] });
        }
        if let Some(c) = self.cpus.iter().find(|c| c.apic_id == u32::MAX) {
            return Err(AcpiError::ApicId { apic_id: c.apic_id });
        }
        Ok(())
    }

    /// Every range the platform occupies, labelled, each checked non-empty and non-wrapping,
    /// then checked pairwise for overlap.
    fn check_ranges(&self) -> Result<(), AcpiError> {
        let mut all: Vec<(Item, MemRange)> = Vec::new();
        if let Some(e) = &self.ecam {
            if !e.base.is_multiple_of(1 << 20) || e.buses.start > e.buses.end {
                return Err(AcpiError::Ecam { ecam: *e });
            }
            all.push((Item::Ecam, e.range().ok_or(AcpiError::Ecam { ecam: *e })?));
        }
        all.extend(
            self.ram
                .iter()
                .enumerate()
                .map(|(i, r)| (Item::Ram { index: i }, *r)),
        );
        for h in &self.host_bridges {
            all.push((Item::Chbcr { uid: h.uid }, h.chbcr));
            all.extend(h.mmio.iter().map(|r| (Item::Mmio { uid: h.uid }, *r)));
        }
        all.extend(
            self.windows
                .iter()
                .enumerate()
                .map(|(i, w)| (Item::Window { index: i }, w.range)),
        );
        for (item, r) in &all {
            if r.size == 0 {
                return Err(AcpiError::EmptyRange { item: *item });
            }
            if r.last().is_none() {
                return Err(AcpiError::RangeOverflow {
                    item: *item,
                    range: *r,
                });
            }
        }
        for (i, (a, ra)) in all.iter().enumerate() {
            if let Some((b, _)) = all[i + 1..].iter().find(|(_, rb)| ra.overlaps(rb)) {
                return Err(AcpiError::Overlap {
                    first: *a,
                    second: *b,
                });
            }
        }
        Ok(())
    }

    fn check_host_bridges(&self) -> Result<(), AcpiError> {
        let hbs = &self.host_bridges;
        if hbs.len() > MAX_HOST_BRIDGES {
            return Err(AcpiError::TooManyHostBridges { count: hbs.len() });
        }
        for (i, h) in hbs.iter().enumerate() {
            if hbs[..i].iter().any(|o| o.uid == h.uid) {
                return Err(AcpiError::DuplicateUid { uid: h.uid });
            }
            let b = h.buses;
            let ecam = self.ecam.map_or(BusRange { start: 1, end: 0 }, |e| e.buses);
            if b.start > b.end || b.start < ecam.start || b.end > ecam.end {
                return Err(AcpiError::BusRange {
                    uid: h.uid,
                    buses: b,
                    ecam,
                });
            }
            if let Some(o) = hbs[..i].iter().find(|o| o.buses.overlaps(&b)) {
                return Err(AcpiError::BusOverlap {
                    first: o.uid,
                    second: h.uid,
                });
            }
            if h.chbcr.size != CHBCR_SIZE || !h.chbcr.base.is_multiple_of(CHBCR_SIZE) {
                return Err(AcpiError::Chbcr {
                    uid: h.uid,
                    range: h.chbcr,
                });
            }
        }
        Ok(())
    }

    fn check_windows(&self) -> Result<(), AcpiError> {
        for (index, w) in self.windows.iter().enumerate() {
            let ways = w.ways.count();
            if !w.range.base.is_multiple_of(WINDOW_ALIGN) {
                return Err(AcpiError::WindowBase {
                    index,
                    base: w.range.base,
                });
            }
            if !w.range.size.is_multiple_of(WINDOW_ALIGN * u64::from(ways)) {
                return Err(AcpiError::WindowSize {
                    index,
                    size: w.range.size,
                    ways,
                });
            }
            if w.targets.len() != ways as usize {
                return Err(AcpiError::TargetCount {
                    index,
                    targets: w.targets.len(),
                    ways,
                });
            }
            for (p, t) in w.targets.iter().enumerate() {
                if !self.host_bridges.iter().any(|h| h.uid == *t) {
                    return Err(AcpiError::UnknownTarget { index, uid: *t });
                }
                if w.targets[..p].contains(t) {
                    return Err(AcpiError::DuplicateTarget { index, uid: *t });
                }
            }
            if !w.restrictions.volatile && !w.restrictions.persistent {
                return Err(AcpiError::NoCapacityType { index });
            }
            if let Arithmetic::Xor { maps } = &w.arithmetic {
                let needed = w.ways.xor_maps_needed();
                if maps.len() < needed {
                    return Err(AcpiError::XorMaps {
                        index,
                        needed,
                        given: maps.len(),
                    });
                }
            }
        }
        // One CXIMS per granularity: its maps must serve every XOR window of that granularity.
        let xor = self.xor_windows();
        for (i, (gi, mi, _)) in xor.iter().enumerate() {
            for (gj, mj, j) in &xor[i + 1..] {
                let n = mi.len().min(mj.len());
                if gi == gj && mi[..n] != mj[..n] {
                    return Err(AcpiError::XorMapConflict {
                        first: xor[i].2,
                        second: *j,
                        granularity: *gi,
                    });
                }
            }
        }
        Ok(())
    }

    /// (granularity, maps used, window index) of every XOR window that uses maps.
    fn xor_windows(&self) -> Vec<(Granularity, &[u64], usize)> {
        self.windows
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match &w.arithmetic {
                Arithmetic::Xor { maps } if w.ways.xor_maps_needed() > 0 => {
                    Some((w.granularity, &maps[..w.ways.xor_maps_needed()], i))
                }
                _ => None,
            })
            .collect()
    }

    /// The CXIMS content: per granularity (ascending), the longest map list its XOR windows
    /// use (validated to be consistent).
    pub(crate) fn xor_map_sets(&self) -> Vec<(Granularity, Vec<u64>)> {
        let mut sets: Vec<(Granularity, Vec<u64>)> = Vec::new();
        for (g, maps, _) in self.xor_windows() {
            match sets.iter_mut().find(|(sg, _)| *sg == g) {
                Some((_, m)) if m.len() < maps.len() => *m = maps.to_vec(),
                Some(_) => {}
                None => sets.push((g, maps.to_vec())),
            }
        }
        sets.sort_by_key(|(g, _)| *g);
        sets
    }
}
