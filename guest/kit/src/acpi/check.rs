//! Whether the ACPI tables describe exactly the platform of the boot info (docs/guest-abi.md):
//! the CEDT's CHBSs are the host bridges, its CFMWSs the windows (with the ABI's XOR maps in a
//! CXIMS), the MCFG the ECAM, the MADT one enabled local APIC per vCPU, and the SRAT every vCPU
//! and RAM, but nothing of a window.
//!
//! Pure `core` (host-tested by guest/host-tests): the caller describes the boot info's platform
//! as a [`Platform`] and gets every difference as a [`Mismatch`].

use core::fmt;

use super::parse::{
    AcpiError, Cfmws, McfgEntry, Signature, Tables, restriction, ways_of, xor_maps_needed,
};

/// A CXL host bridge of the boot info (device kind 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootHostBridge {
    /// UID.
    pub uid: u32,
    /// CHBCR base.
    pub chbcr: u64,
    /// CHBCR size.
    pub size: u64,
}

/// A CXL fixed memory window of the boot info (device kinds 6 and 7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootWindow<'a> {
    /// Base.
    pub base: u64,
    /// Size.
    pub size: u64,
    /// Interleave-ways encoding (the CEDT's ENIW encoding).
    pub ways_enc: u8,
    /// Granularity encoding (the CEDT's HBIG encoding).
    pub gran_enc: u8,
    /// Arithmetic: 0 modulo, 1 XOR.
    pub arithmetic: u8,
    /// Target UIDs in position order.
    pub targets: &'a [u32],
}

/// The ECAM of the boot info (device kind 4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootEcam {
    /// Address of bus 0's configuration space (what the MCFG holds).
    pub bus0: u64,
    /// PCI segment.
    pub segment: u16,
    /// First bus.
    pub start_bus: u8,
    /// Last bus.
    pub end_bus: u8,
}

/// The platform the boot info describes.
#[derive(Clone, Copy, Debug)]
pub struct Platform<'a> {
    /// vCPUs; vCPU *i* has APIC id *i*.
    pub vcpus: u32,
    /// The memory map's RAM entries (base, size).
    pub ram: &'a [(u64, u64)],
    /// The memory map's ACPI entries (base, size).
    pub acpi_memory: &'a [(u64, u64)],
    /// The ACPI tables entry (device kind 9): base (the RSDP) and size.
    pub tables: (u64, u64),
    /// The ECAM, if the boot info lists one.
    pub ecam: Option<BootEcam>,
    /// The host bridges.
    pub host_bridges: &'a [BootHostBridge],
    /// The windows, in boot info order.
    pub windows: &'a [BootWindow<'a>],
}

/// Map `i` of the ABI's XOR arithmetic for a window of `2^k` ways at granularity encoding `g`:
/// `1 << (8 + g + i) | 1 << (8 + g + k + 12 + i)`.
pub fn abi_xor_map(gran_enc: u8, k: u32, i: u32) -> u64 {
    let g = u32::from(gran_enc);
    let bit = |n: u32| 1u64.checked_shl(n).unwrap_or(0);
    bit(8 + g + i) | bit(8 + g + k + 12 + i)
}

/// One way the tables differ from the boot info.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The ACPI tables entry does not lie inside an ACPI entry of the memory map.
    TablesNotInAcpiMemory {
        /// The entry's base.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// The XSDT does not list a table the platform needs.
    MissingTable {
        /// Its signature.
        signature: Signature,
    },
    /// The XSDT lists a CEDT although the boot info has no host bridge.
    UnexpectedCedt,
    /// MADT: no enabled Local (x2)APIC entry for the vCPU with this APIC id.
    CpuMissing {
        /// APIC id.
        apic_id: u32,
    },
    /// MADT: more than one Local (x2)APIC entry for this APIC id.
    CpuDuplicate {
        /// APIC id.
        apic_id: u32,
    },
    /// MADT: an enabled processor that is no vCPU.
    CpuExtra {
        /// APIC id.
        apic_id: u32,
    },
    /// MADT: not exactly one I/O APIC.
    IoApicCount {
        /// I/O APIC entries.
        count: usize,
    },
    /// MCFG: not one entry per ECAM of the boot info (1 or 0).
    McfgCount {
        /// Entries in the MCFG.
        count: usize,
        /// ECAMs in the boot info.
        expected: usize,
    },
    /// MCFG: the entry differs from the boot info's ECAM.
    McfgEcam {
        /// The MCFG entry.
        acpi: McfgEntry,
        /// The boot info's ECAM.
        boot: BootEcam,
    },
    /// SRAT: no enabled processor affinity entry for the vCPU with this APIC id.
    SratCpuMissing {
        /// APIC id.
        apic_id: u32,
    },
    /// SRAT: an enabled processor affinity entry that is no vCPU.
    SratCpuExtra {
        /// APIC id.
        apic_id: u32,
    },
    /// SRAT: boot RAM that no enabled memory affinity entry covers (the first such range).
    SratRamUncovered {
        /// First uncovered byte.
        base: u64,
        /// Bytes up to the next covered one.
        size: u64,
    },
    /// SRAT: an enabled memory affinity entry reaches beyond RAM.
    SratMemoryNotRam {
        /// The entry's base.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// SRAT: an enabled memory affinity entry overlaps a window (Linux would put the window's
    /// memory in that node instead of giving it a node of its own).
    SratMemoryOverlapsWindow {
        /// The entry's base.
        base: u64,
        /// Its size.
        size: u64,
        /// The window's index.
        window: usize,
    },
    /// CEDT: no CHBS for this host bridge.
    HostBridgeMissing {
        /// UID.
        uid: u32,
    },
    /// CEDT: a CHBS whose UID is no host bridge's.
    HostBridgeExtra {
        /// UID.
        uid: u32,
    },
    /// CEDT: two CHBSs with this UID.
    HostBridgeDuplicate {
        /// UID.
        uid: u32,
    },
    /// CEDT: a CHBS's base is not the host bridge's CHBCR.
    HostBridgeBase {
        /// UID.
        uid: u32,
        /// The CHBS's base.
        acpi: u64,
        /// The CHBCR.
        boot: u64,
    },
    /// CEDT: a CHBS's length is not the CHBCR's size.
    HostBridgeLength {
        /// UID.
        uid: u32,
        /// The CHBS's length.
        acpi: u64,
        /// The CHBCR's size.
        boot: u64,
    },
    /// CEDT: a CHBS is not CXL 2.0 (version 1: a CHBCR).
    HostBridgeVersion {
        /// UID.
        uid: u32,
        /// Its CXL version field.
        version: u32,
    },
    /// CEDT: no CFMWS at this window's base.
    WindowMissing {
        /// The window's index.
        index: usize,
        /// Its base.
        base: u64,
    },
    /// CEDT: a CFMWS at no window's base.
    WindowExtra {
        /// Its base.
        base: u64,
    },
    /// CEDT: two CFMWSs at this window's base.
    WindowDuplicate {
        /// The window's index.
        index: usize,
    },
    /// CEDT: a CFMWS's size differs.
    WindowSize {
        /// The window's index.
        index: usize,
        /// The CFMWS's size.
        acpi: u64,
        /// The window's.
        boot: u64,
    },
    /// CEDT: a CFMWS's ENIW differs from the window's ways encoding.
    WindowWays {
        /// The window's index.
        index: usize,
        /// ENIW.
        acpi: u8,
        /// The window's encoding.
        boot: u8,
    },
    /// CEDT: a CFMWS's HBIG differs from the window's granularity encoding.
    WindowGranularity {
        /// The window's index.
        index: usize,
        /// HBIG.
        acpi: u32,
        /// The window's encoding.
        boot: u8,
    },
    /// CEDT: a CFMWS's interleave arithmetic differs.
    WindowArithmetic {
        /// The window's index.
        index: usize,
        /// The CFMWS's.
        acpi: u8,
        /// The window's.
        boot: u8,
    },
    /// CEDT: a CFMWS's target at `position` differs (`None`: it has no such position).
    WindowTarget {
        /// The window's index.
        index: usize,
        /// The interleave position.
        position: usize,
        /// The CFMWS's target UID.
        acpi: Option<u32>,
        /// The window's.
        boot: Option<u32>,
    },
    /// CEDT: a CFMWS's restrictions are not Type-3 memory (bit 1, not bit 0) with volatile or
    /// persistent capacity.
    WindowRestrictions {
        /// The window's index.
        index: usize,
        /// The restriction bits.
        bits: u16,
    },
    /// CEDT: no CXIMS with the XOR window's granularity, or one with fewer maps than its ways
    /// need.
    XorMapsMissing {
        /// The window's index.
        index: usize,
        /// Maps its ways need.
        needed: u32,
        /// Maps a CXIMS of its granularity has (0: no CXIMS).
        found: usize,
    },
    /// CEDT: a CXIMS map differs from the ABI's XOR map.
    XorMap {
        /// The window's index.
        index: usize,
        /// The map's index.
        map: usize,
        /// The CXIMS's map.
        acpi: u64,
        /// The ABI's.
        boot: u64,
    },
    /// CEDT: two CXIMSs with one granularity.
    XorMapsDuplicate {
        /// Their HBIG.
        hbig: u8,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Mismatch as M;
        let opt = |v: Option<u32>| v.map_or(-1, i64::from);
        match *self {
            M::TablesNotInAcpiMemory { base, size } => write!(
                f,
                "tables base={base:#x} size={size:#x} not inside an ACPI memory map entry"
            ),
            M::MissingTable { signature } => write!(f, "table {signature} missing"),
            M::UnexpectedCedt => write!(f, "cedt present without host bridges"),
            M::CpuMissing { apic_id } => write!(f, "madt cpu apic_id={apic_id} missing"),
            M::CpuDuplicate { apic_id } => write!(f, "madt cpu apic_id={apic_id} duplicate"),
            M::CpuExtra { apic_id } => write!(f, "madt cpu apic_id={apic_id} is no vcpu"),
            M::IoApicCount { count } => write!(f, "madt ioapics={count} expected=1"),
            M::McfgCount { count, expected } => {
                write!(f, "mcfg entries={count} expected={expected}")
            }
            M::McfgEcam { acpi, boot } => write!(
                f,
                "mcfg base={:#x} segment={} buses={}-{} boot base={:#x} segment={} buses={}-{}",
                acpi.base,
                acpi.segment,
                acpi.start_bus,
                acpi.end_bus,
                boot.bus0,
                boot.segment,
                boot.start_bus,
                boot.end_bus
            ),
            M::SratCpuMissing { apic_id } => write!(f, "srat cpu apic_id={apic_id} missing"),
            M::SratCpuExtra { apic_id } => write!(f, "srat cpu apic_id={apic_id} is no vcpu"),
            M::SratRamUncovered { base, size } => {
                write!(f, "srat ram base={base:#x} size={size:#x} not covered")
            }
            M::SratMemoryNotRam { base, size } => {
                write!(f, "srat memory base={base:#x} size={size:#x} not ram")
            }
            M::SratMemoryOverlapsWindow { base, size, window } => write!(
                f,
                "srat memory base={base:#x} size={size:#x} overlaps window={window}"
            ),
            M::HostBridgeMissing { uid } => write!(f, "cedt chbs uid={uid} missing"),
            M::HostBridgeExtra { uid } => write!(f, "cedt chbs uid={uid} is no host bridge"),
            M::HostBridgeDuplicate { uid } => write!(f, "cedt chbs uid={uid} duplicate"),
            M::HostBridgeBase { uid, acpi, boot } => {
                write!(f, "cedt chbs uid={uid} base={acpi:#x} boot={boot:#x}")
            }
            M::HostBridgeLength { uid, acpi, boot } => {
                write!(f, "cedt chbs uid={uid} length={acpi:#x} boot={boot:#x}")
            }
            M::HostBridgeVersion { uid, version } => {
                write!(f, "cedt chbs uid={uid} version={version} expected=1")
            }
            M::WindowMissing { index, base } => {
                write!(f, "cedt cfmws window={index} base={base:#x} missing")
            }
            M::WindowExtra { base } => write!(f, "cedt cfmws base={base:#x} is no window"),
            M::WindowDuplicate { index } => write!(f, "cedt cfmws window={index} duplicate"),
            M::WindowSize { index, acpi, boot } => {
                write!(f, "cedt cfmws window={index} size={acpi:#x} boot={boot:#x}")
            }
            M::WindowWays { index, acpi, boot } => {
                write!(f, "cedt cfmws window={index} eniw={acpi} boot={boot}")
            }
            M::WindowGranularity { index, acpi, boot } => {
                write!(f, "cedt cfmws window={index} hbig={acpi} boot={boot}")
            }
            M::WindowArithmetic { index, acpi, boot } => {
                write!(f, "cedt cfmws window={index} arithmetic={acpi} boot={boot}")
            }
            M::WindowTarget {
                index,
                position,
                acpi,
                boot,
            } => write!(
                f,
                "cedt cfmws window={index} target[{position}]={} boot={}",
                opt(acpi),
                opt(boot)
            ),
            M::WindowRestrictions { index, bits } => {
                write!(f, "cedt cfmws window={index} restrictions={bits:#x}")
            }
            M::XorMapsMissing {
                index,
                needed,
                found,
            } => write!(f, "cedt cxims window={index} maps={found} needed={needed}"),
            M::XorMap {
                index,
                map,
                acpi,
                boot,
            } => write!(
                f,
                "cedt cxims window={index} map[{map}]={acpi:#x} boot={boot:#x}"
            ),
            M::XorMapsDuplicate { hbig } => write!(f, "cedt cxims hbig={hbig} duplicate"),
        }
    }
}

/// What the tables hold, as checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tables: the XSDT, those it lists and the DSDT.
    pub tables: usize,
    /// Enabled processors in the MADT.
    pub cpus: usize,
    /// The local APICs' address (MADT).
    pub local_apic: u32,
    /// The first I/O APIC's address (MADT).
    pub ioapic: Option<u32>,
    /// The MCFG's first entry.
    pub ecam: Option<McfgEntry>,
    /// Enabled processor affinity entries (SRAT).
    pub srat_cpus: usize,
    /// Enabled memory affinity entries (SRAT).
    pub srat_memory: usize,
    /// CHBSs.
    pub host_bridges: usize,
    /// CFMWSs.
    pub windows: usize,
    /// CXIMSs.
    pub xor_maps: usize,
    /// Differences reported.
    pub mismatches: usize,
}

/// The first part of `[base, base + size)` that none of `ranges` covers, as (base, size).
pub fn uncovered(
    base: u64,
    size: u64,
    ranges: impl Iterator<Item = (u64, u64)> + Clone,
) -> Option<(u64, u64)> {
    let end = base.saturating_add(size);
    let mut at = base;
    while at < end {
        let reach = ranges
            .clone()
            .filter(|&(b, s)| b <= at && at < b.saturating_add(s))
            .map(|(b, s)| b.saturating_add(s))
            .max();
        match reach {
            Some(e) => at = e,
            None => {
                let next = ranges
                    .clone()
                    .map(|(b, _)| b)
                    .filter(|&b| b > at && b < end)
                    .min()
                    .unwrap_or(end);
                return Some((at, next - at));
            }
        }
    }
    None
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.1 != 0 && b.1 != 0 && a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Compares `tables` with `platform`, calling `report` for every difference; errors only when a
/// table cannot be parsed.
pub fn check(
    tables: &Tables<'_>,
    platform: &Platform<'_>,
    report: &mut dyn FnMut(Mismatch),
) -> Result<Summary, AcpiError> {
    let mut summary = Summary {
        tables: tables.count(),
        ..Summary::default()
    };
    let mut mismatches = 0;
    let mut out = |m: Mismatch| {
        mismatches += 1;
        report(m);
    };
    let (base, size) = platform.tables;
    if uncovered(base, size, platform.acpi_memory.iter().copied()).is_some() {
        out(Mismatch::TablesNotInAcpiMemory { base, size });
    }
    check_madt(tables, platform, &mut summary, &mut out)?;
    check_mcfg(tables, platform, &mut summary, &mut out)?;
    check_srat(tables, platform, &mut summary, &mut out)?;
    check_cedt(tables, platform, &mut summary, &mut out)?;
    summary.mismatches = mismatches;
    Ok(summary)
}

/// Whether `apic_id` is a vCPU's.
fn is_vcpu(platform: &Platform<'_>, apic_id: u32) -> bool {
    apic_id < platform.vcpus
}

fn check_madt(
    tables: &Tables<'_>,
    platform: &Platform<'_>,
    summary: &mut Summary,
    out: &mut dyn FnMut(Mismatch),
) -> Result<(), AcpiError> {
    let Some(madt) = tables.madt()? else {
        out(Mismatch::MissingTable {
            signature: Signature::MADT,
        });
        return Ok(());
    };
    summary.local_apic = madt.local_apic_address();
    for id in 0..platform.vcpus {
        match madt.processors().filter(|p| p.apic_id == id).count() {
            0 => out(Mismatch::CpuMissing { apic_id: id }),
            1 if !madt.processors().any(|p| p.apic_id == id && p.enabled) => {
                out(Mismatch::CpuMissing { apic_id: id })
            }
            1 => {}
            _ => out(Mismatch::CpuDuplicate { apic_id: id }),
        }
    }
    for p in madt.processors().filter(|p| p.enabled) {
        summary.cpus += 1;
        if !is_vcpu(platform, p.apic_id) {
            out(Mismatch::CpuExtra { apic_id: p.apic_id });
        }
    }
    let ioapics = madt.entries().filter_map(|e| match e {
        super::parse::MadtEntry::IoApic { address, .. } => Some(address),
        _ => None,
    });
    summary.ioapic = ioapics.clone().next();
    let count = ioapics.count();
    if count != 1 {
        out(Mismatch::IoApicCount { count });
    }
    Ok(())
}

fn check_mcfg(
    tables: &Tables<'_>,
    platform: &Platform<'_>,
    summary: &mut Summary,
    out: &mut dyn FnMut(Mismatch),
) -> Result<(), AcpiError> {
    let Some(mcfg) = tables.mcfg()? else {
        out(Mismatch::MissingTable {
            signature: Signature::MCFG,
        });
        return Ok(());
    };
    summary.ecam = mcfg.entries().next();
    let count = mcfg.entries().count();
    let Some(boot) = platform.ecam else {
        // No ECAM in the boot info: the MCFG must not promise one.
        if count != 0 {
            out(Mismatch::McfgCount { count, expected: 0 });
        }
        return Ok(());
    };
    if count != 1 {
        out(Mismatch::McfgCount { count, expected: 1 });
    }
    if let Some(acpi) = summary.ecam {
        let same = acpi.base == boot.bus0
            && acpi.segment == boot.segment
            && acpi.start_bus == boot.start_bus
            && acpi.end_bus == boot.end_bus;
        if !same {
            out(Mismatch::McfgEcam { acpi, boot });
        }
    }
    Ok(())
}

fn check_srat(
    tables: &Tables<'_>,
    platform: &Platform<'_>,
    summary: &mut Summary,
    out: &mut dyn FnMut(Mismatch),
) -> Result<(), AcpiError> {
    let Some(srat) = tables.srat()? else {
        out(Mismatch::MissingTable {
            signature: Signature::SRAT,
        });
        return Ok(());
    };
    for id in 0..platform.vcpus {
        if !srat.processors().any(|p| p.enabled && p.apic_id == id) {
            out(Mismatch::SratCpuMissing { apic_id: id });
        }
    }
    for p in srat.processors().filter(|p| p.enabled) {
        summary.srat_cpus += 1;
        if !is_vcpu(platform, p.apic_id) {
            out(Mismatch::SratCpuExtra { apic_id: p.apic_id });
        }
    }
    for &(base, size) in platform.ram {
        if let Some((base, size)) = uncovered(base, size, srat.memory()) {
            out(Mismatch::SratRamUncovered { base, size });
        }
    }
    for (base, size) in srat.memory() {
        summary.srat_memory += 1;
        if uncovered(base, size, platform.ram.iter().copied()).is_some() {
            out(Mismatch::SratMemoryNotRam { base, size });
        }
        for (window, w) in platform.windows.iter().enumerate() {
            if overlaps((base, size), (w.base, w.size)) {
                out(Mismatch::SratMemoryOverlapsWindow { base, size, window });
            }
        }
    }
    Ok(())
}

fn check_cedt(
    tables: &Tables<'_>,
    platform: &Platform<'_>,
    summary: &mut Summary,
    out: &mut dyn FnMut(Mismatch),
) -> Result<(), AcpiError> {
    let Some(cedt) = tables.cedt()? else {
        if !platform.host_bridges.is_empty() || !platform.windows.is_empty() {
            out(Mismatch::MissingTable {
                signature: Signature::CEDT,
            });
        }
        return Ok(());
    };
    if platform.host_bridges.is_empty() && platform.windows.is_empty() {
        out(Mismatch::UnexpectedCedt);
    }
    // Host bridges, by UID.
    for hb in platform.host_bridges {
        let mut found = cedt.host_bridges().filter(|c| c.uid == hb.uid);
        let Some(c) = found.next() else {
            out(Mismatch::HostBridgeMissing { uid: hb.uid });
            continue;
        };
        if found.next().is_some() {
            out(Mismatch::HostBridgeDuplicate { uid: hb.uid });
        }
        if c.version != 1 {
            out(Mismatch::HostBridgeVersion {
                uid: hb.uid,
                version: c.version,
            });
        }
        if c.base != hb.chbcr {
            out(Mismatch::HostBridgeBase {
                uid: hb.uid,
                acpi: c.base,
                boot: hb.chbcr,
            });
        }
        if c.length != hb.size {
            out(Mismatch::HostBridgeLength {
                uid: hb.uid,
                acpi: c.length,
                boot: hb.size,
            });
        }
    }
    for c in cedt.host_bridges() {
        summary.host_bridges += 1;
        if !platform.host_bridges.iter().any(|h| h.uid == c.uid) {
            out(Mismatch::HostBridgeExtra { uid: c.uid });
        }
    }
    // Windows, by base.
    for (index, w) in platform.windows.iter().enumerate() {
        let mut found = cedt.windows().filter(|c| c.base == w.base);
        let Some(c) = found.next() else {
            out(Mismatch::WindowMissing {
                index,
                base: w.base,
            });
            continue;
        };
        if found.next().is_some() {
            out(Mismatch::WindowDuplicate { index });
        }
        check_window(index, w, &c, out);
        if w.arithmetic == 1 {
            check_xor_maps(index, w, &cedt, out);
        }
    }
    for c in cedt.windows() {
        summary.windows += 1;
        if !platform.windows.iter().any(|w| w.base == c.base) {
            out(Mismatch::WindowExtra { base: c.base });
        }
    }
    for (i, x) in cedt.xor_maps().enumerate() {
        summary.xor_maps += 1;
        if cedt.xor_maps().take(i).any(|o| o.hbig == x.hbig) {
            out(Mismatch::XorMapsDuplicate { hbig: x.hbig });
        }
    }
    Ok(())
}

fn check_window(index: usize, w: &BootWindow<'_>, c: &Cfmws<'_>, out: &mut dyn FnMut(Mismatch)) {
    if c.size != w.size {
        out(Mismatch::WindowSize {
            index,
            acpi: c.size,
            boot: w.size,
        });
    }
    if c.eniw != w.ways_enc {
        out(Mismatch::WindowWays {
            index,
            acpi: c.eniw,
            boot: w.ways_enc,
        });
    }
    if c.hbig != u32::from(w.gran_enc) {
        out(Mismatch::WindowGranularity {
            index,
            acpi: c.hbig,
            boot: w.gran_enc,
        });
    }
    if c.arithmetic != w.arithmetic {
        out(Mismatch::WindowArithmetic {
            index,
            acpi: c.arithmetic,
            boot: w.arithmetic,
        });
    }
    let positions = (c.ways() as usize).max(w.targets.len());
    for position in 0..positions {
        let acpi = c.target(position);
        let boot = w.targets.get(position).copied();
        if acpi != boot {
            out(Mismatch::WindowTarget {
                index,
                position,
                acpi,
                boot,
            });
        }
    }
    let bits = c.restrictions;
    let capacity = restriction::VOLATILE | restriction::PERSISTENT;
    if bits & restriction::TYPE3 == 0 || bits & restriction::TYPE2 != 0 || bits & capacity == 0 {
        out(Mismatch::WindowRestrictions { index, bits });
    }
}

fn check_xor_maps(
    index: usize,
    w: &BootWindow<'_>,
    cedt: &super::parse::Cedt<'_>,
    out: &mut dyn FnMut(Mismatch),
) {
    let k = xor_maps_needed(ways_of(w.ways_enc).unwrap_or(0));
    if k == 0 {
        return;
    }
    let cxims = cedt.xor_maps().find(|x| x.hbig == w.gran_enc);
    let found = cxims.map_or(0, |x| x.count());
    let Some(x) = cxims.filter(|_| found >= k as usize) else {
        out(Mismatch::XorMapsMissing {
            index,
            needed: k,
            found,
        });
        return;
    };
    for (map, acpi) in x.maps().take(k as usize).enumerate() {
        let boot = abi_xor_map(w.gran_enc, k, map as u32);
        if acpi != boot {
            out(Mismatch::XorMap {
                index,
                map,
                acpi,
                boot,
            });
        }
    }
}
