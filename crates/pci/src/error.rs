//! Errors of the PCI layer.
//!
//! Every error here comes from how the VMM builds a topology (a capability that does not fit, a
//! BAR of an impossible size, a slot taken twice). Guest accesses never produce errors: they are
//! absorbed (all-ones reads, dropped writes, a BAR left unmapped with a warning).

use cxlvm_memory::{MemoryError, RegionId};

/// Errors of `cxlvm-pci`.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// The capability does not fit in the standard capability area (0x40..0x100).
    #[error("capability {id:#04x} of {len} bytes does not fit in the standard capability area")]
    NoCapabilitySpace {
        /// Capability ID.
        id: u8,
        /// Capability size in bytes, header included.
        len: usize,
    },
    /// The extended capability does not fit in the extended area (0x100..0x1000).
    #[error("extended capability {id:#06x} of {len} bytes does not fit in extended config space")]
    NoExtCapabilitySpace {
        /// Extended capability ID.
        id: u16,
        /// Size in bytes, header included.
        len: usize,
    },
    /// A write mask is longer than the body it describes.
    #[error("write mask of {mask} bytes is longer than the {body}-byte body")]
    MaskTooLong {
        /// Mask length.
        mask: usize,
        /// Body length.
        body: usize,
    },
    /// A version or revision field does not fit in its 4 bits.
    #[error("version/revision {0} does not fit in 4 bits")]
    BadVersion(u8),
    /// A DVSEC is longer than its 12-bit length field can describe.
    #[error("DVSEC of {0} bytes is longer than 0xfff")]
    DvsecTooLong(usize),
    /// The configuration space has the wrong header type for this kind of function.
    #[error("{name}: header type {found:#04x}, expected {expected:#04x}")]
    WrongHeaderType {
        /// Function name.
        name: String,
        /// Header type layout found (bits 6:0 of register 0x0e).
        found: u8,
        /// Header type layout needed.
        expected: u8,
    },
    /// Firmware asked for a bridge memory window the registers cannot express.
    #[error(
        "{name}: bridge memory window [{base:#x}, +{size:#x}) is not 1 MiB aligned below 4 GiB"
    )]
    BadBridgeWindow {
        /// Function name.
        name: String,
        /// Requested base.
        base: u64,
        /// Requested size.
        size: u64,
    },
    /// A BAR index is outside the BAR slots of the header (6 for type 0, 2 for type 1), or a
    /// 64-bit BAR starts in the last slot.
    #[error("{name}: BAR index {index} is not usable here")]
    BadBarIndex {
        /// Function name.
        name: String,
        /// BAR index.
        index: usize,
    },
    /// Two BARs claim the same slot (a 64-bit BAR uses two).
    #[error("{name}: BAR {index} overlaps another BAR's slots")]
    BarSlotTaken {
        /// Function name.
        name: String,
        /// BAR index.
        index: usize,
    },
    /// A memory BAR must be a power of two of at least 4 KiB (and at most 2 GiB for 32-bit BARs).
    #[error("{name}: BAR {index} size {size:#x} is not a power of two in the allowed range")]
    BadBarSize {
        /// Function name.
        name: String,
        /// BAR index.
        index: usize,
        /// Requested size.
        size: u64,
    },
    /// BARs need the address space their regions live in.
    #[error("{name}: BARs were declared but no address space was given")]
    NoAddressSpace {
        /// Function name.
        name: String,
    },
    /// The region backing a BAR does not exist, is already placed, or is larger than the BAR.
    #[error("{name}: region {region} cannot back BAR {index}: {why}")]
    BadBarRegion {
        /// Function name.
        name: String,
        /// BAR index.
        index: usize,
        /// The region.
        region: RegionId,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No BAR was declared at this index.
    #[error("{name}: no BAR {index}")]
    NoSuchBar {
        /// Function name.
        name: String,
        /// BAR index.
        index: usize,
    },
    /// The address is not aligned to the BAR size (the BAR cannot hold it).
    #[error("{name}: address {addr:#x} is not a valid address for BAR {index} of size {size:#x}")]
    BadBarAddress {
        /// Function name.
        name: String,
        /// BAR index.
        index: usize,
        /// Requested address.
        addr: u64,
        /// BAR size.
        size: u64,
    },
    /// The BAR was programmed but its region could not be placed (see the log for the memory
    /// error, typically an overlap with another region of the same priority).
    #[error("{name}: BAR {index} at {addr:#x} could not be mapped")]
    BarNotMapped {
        /// Function name.
        name: String,
        /// BAR index.
        index: usize,
        /// Programmed address.
        addr: u64,
    },
    /// A device/function number outside what the bus allows (a root port's secondary bus
    /// only has device 0).
    #[error("devfn {0:#04x} is not available here")]
    BadDevfn(u8),
    /// The bridge already has a child at this devfn.
    #[error("{bridge}: devfn {devfn:#04x} is already taken")]
    ChildTaken {
        /// Bridge name.
        bridge: String,
        /// Device/function number.
        devfn: u8,
    },
    /// The slot already holds a function.
    #[error("bus {bus:#04x} devfn {devfn:#04x} is already taken")]
    SlotTaken {
        /// Bus number.
        bus: u8,
        /// Device/function number.
        devfn: u8,
    },
    /// The bus range of a segment is empty.
    #[error("bus range [{start:#04x}, {end:#04x}] is empty")]
    BadBusRange {
        /// First bus.
        start: u8,
        /// Last bus.
        end: u8,
    },
    /// The bus is outside the segment's bus range.
    #[error("bus {0:#04x} is outside the segment")]
    BusOutOfRange(u8),
    /// The bus is already a root bus.
    #[error("bus {0:#04x} is already a root bus")]
    DuplicateRootBus(u8),
    /// The bus is not a root bus of the segment.
    #[error("bus {0:#04x} is not a root bus")]
    NoSuchRootBus(u8),
    /// Bus enumeration ran out of bus numbers below a host bridge.
    #[error("no bus number left for a bridge below root bus {0:#04x}")]
    BusNumbersExhausted(u8),
    /// A memory API call failed while building.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}
