//! Errors: a description the tables cannot express, or one Linux would reject or misread.

use std::fmt;
use std::path::PathBuf;

use crate::platform::{BusRange, Ecam, Granularity, MemRange};

/// A range of the platform, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// Boot RAM range `index`.
    Ram {
        /// Position in `Platform::ram`.
        index: usize,
    },
    /// The ECAM's buses.
    Ecam,
    /// A host bridge's component registers.
    Chbcr {
        /// The host bridge.
        uid: u32,
    },
    /// A memory window of a host bridge's `_CRS`.
    Mmio {
        /// The host bridge.
        uid: u32,
    },
    /// A CXL fixed memory window.
    Window {
        /// Position in `Platform::windows`.
        index: usize,
    },
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Ram { index } => write!(f, "RAM range {index}"),
            Item::Ecam => write!(f, "the ECAM"),
            Item::Chbcr { uid } => write!(f, "the CHBCR of host bridge {uid}"),
            Item::Mmio { uid } => write!(f, "an MMIO window of host bridge {uid}"),
            Item::Window { index } => write!(f, "fixed memory window {index}"),
        }
    }
}

/// Why the tables cannot be built (or written).
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// No vCPU.
    #[error("the platform has no vCPU")]
    NoCpus,
    /// Two vCPUs with one APIC id.
    #[error("APIC id {apic_id} is given to more than one vCPU")]
    DuplicateApicId {
        /// The id.
        apic_id: u32,
    },
    /// An APIC id no table can carry (0xffffffff means "all" in x2APIC entries).
    #[error("APIC id {apic_id:#x} is reserved")]
    ApicId {
        /// The id.
        apic_id: u32,
    },
    /// A range of size 0.
    #[error("{item} is empty")]
    EmptyRange {
        /// Which.
        item: Item,
    },
    /// A range past 2^64.
    #[error("{item} ({:#x} + {:#x}) wraps around the address space", range.base, range.size)]
    RangeOverflow {
        /// Which.
        item: Item,
        /// The range.
        range: MemRange,
    },
    /// Two ranges share bytes.
    #[error("{first} overlaps {second}")]
    Overlap {
        /// The one listed first (RAM, ECAM, host bridges, windows).
        first: Item,
        /// The other.
        second: Item,
    },
    /// ECAM base not 1 MiB aligned, start bus after end bus, or past 2^64.
    #[error(
        "ECAM at {:#x} (buses {:#x}-{:#x}) is not 1 MiB aligned, has no buses or wraps",
        ecam.base, ecam.buses.start, ecam.buses.end
    )]
    Ecam {
        /// The ECAM.
        ecam: Ecam,
    },
    /// More host bridges than DSDT names.
    #[error("{count} host bridges; the DSDT names at most 256")]
    TooManyHostBridges {
        /// How many were given.
        count: usize,
    },
    /// Two host bridges with one UID.
    #[error("host bridge UID {uid} is used twice")]
    DuplicateUid {
        /// The UID.
        uid: u32,
    },
    /// A host bridge's buses are empty or outside the ECAM's.
    #[error(
        "host bridge {uid}: buses {:#x}-{:#x} are empty or outside the ECAM's {:#x}-{:#x}",
        buses.start, buses.end, ecam.start, ecam.end
    )]
    BusRange {
        /// The host bridge.
        uid: u32,
        /// Its buses.
        buses: BusRange,
        /// The ECAM's.
        ecam: BusRange,
    },
    /// Two host bridges share buses.
    #[error("host bridges {first} and {second} share buses")]
    BusOverlap {
        /// One UID.
        first: u32,
        /// The other.
        second: u32,
    },
    /// A CHBCR that is not one 64 KiB aligned 64 KiB block (CXL 2.0).
    #[error(
        "host bridge {uid}: CHBCR {:#x} + {:#x} is not a 64 KiB aligned 64 KiB block",
        range.base, range.size
    )]
    Chbcr {
        /// The host bridge.
        uid: u32,
        /// The CHBCR.
        range: MemRange,
    },
    /// A window base not 256 MiB aligned.
    #[error("fixed memory window {index}: base {base:#x} is not 256 MiB aligned")]
    WindowBase {
        /// The window.
        index: usize,
        /// Its base.
        base: u64,
    },
    /// A window size not a multiple of 256 MiB × ways.
    #[error("fixed memory window {index}: size {size:#x} is not a multiple of 256 MiB x {ways}")]
    WindowSize {
        /// The window.
        index: usize,
        /// Its size.
        size: u64,
        /// Its ways.
        ways: u32,
    },
    /// Target list length differs from the ways.
    #[error("fixed memory window {index}: {targets} targets for {ways}-way interleave")]
    TargetCount {
        /// The window.
        index: usize,
        /// Targets given.
        targets: usize,
        /// Ways.
        ways: u32,
    },
    /// A target UID that names no host bridge (Linux would drop the window).
    #[error("fixed memory window {index}: target {uid} is no host bridge's UID")]
    UnknownTarget {
        /// The window.
        index: usize,
        /// The UID.
        uid: u32,
    },
    /// A host bridge listed twice in one window.
    #[error("fixed memory window {index}: host bridge {uid} is listed twice")]
    DuplicateTarget {
        /// The window.
        index: usize,
        /// The UID.
        uid: u32,
    },
    /// A window that is neither volatile nor persistent.
    #[error("fixed memory window {index}: neither volatile nor persistent")]
    NoCapacityType {
        /// The window.
        index: usize,
    },
    /// An XOR window with too few maps.
    #[error("fixed memory window {index}: XOR arithmetic needs {needed} XOR maps, {given} given")]
    XorMaps {
        /// The window.
        index: usize,
        /// Maps its ways need.
        needed: usize,
        /// Maps given.
        given: usize,
    },
    /// Two XOR windows of one granularity with different maps (one CXIMS serves both).
    #[error(
        "fixed memory windows {first} and {second}: XOR maps for granularity {} B differ \
         (the CEDT has one CXIMS per granularity)",
        granularity.bytes()
    )]
    XorMapConflict {
        /// One window.
        first: usize,
        /// The other.
        second: usize,
        /// Their granularity.
        granularity: Granularity,
    },
    /// A serial port IRQ that is no ISA IRQ.
    #[error("serial port IRQ {irq} is not an ISA IRQ (0-15)")]
    SerialIrq {
        /// The IRQ.
        irq: u8,
    },
    /// Interleave ways no CFMWS can encode.
    #[error("{count}-way interleave is not 1, 2, 3, 4, 6, 8, 12 or 16")]
    Ways {
        /// Ways asked for.
        count: u32,
    },
    /// An ENIW value that is not defined.
    #[error("ENIW {eniw} is not an interleave-ways encoding (0-4, 8-10)")]
    EncodedWays {
        /// The encoding.
        eniw: u8,
    },
    /// A granularity no CFMWS can encode.
    #[error("interleave granularity {bytes} is not a power of 2 from 256 B to 16 KiB")]
    Granularity {
        /// Bytes asked for.
        bytes: u64,
    },
    /// An HBIG value that is not defined.
    #[error("HBIG {hbig} is not a granularity encoding (0-6)")]
    EncodedGranularity {
        /// The encoding.
        hbig: u8,
    },
    /// An aperture that cannot be split as asked.
    #[error(
        "PCI MMIO aperture {:#x} + {:#x} cannot give {count} host bridges 1 MiB each",
        range.base, range.size
    )]
    Aperture {
        /// The aperture.
        range: MemRange,
        /// Slices asked for.
        count: usize,
    },
    /// A table base that is not 16-byte aligned (the RSDP must be).
    #[error("ACPI tables base {base:#x} is not 16-byte aligned")]
    TableBase {
        /// The base.
        base: u64,
    },
    /// The tables would pass 2^64.
    #[error("ACPI tables of {len} bytes at {base:#x} wrap around the address space")]
    TableOverflow {
        /// The base.
        base: u64,
        /// Their size.
        len: usize,
    },
    /// Writing a table file failed.
    #[error("writing {}: {source}", path.display())]
    Dump {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
