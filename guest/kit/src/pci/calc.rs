//! Pure PCI decoding helpers: no register access, only `core`, so that the host-side test crate
//! (`guest/host-tests`) can include this file and unit-test it.

/// Vendor ID read from a function that does not exist.
pub const VENDOR_NONE: u16 = 0xffff;

/// Configuration-space offsets of the type 0 and type 1 headers.
pub mod reg {
    /// Vendor ID (16 bit).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bit).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command (16 bit).
    pub const COMMAND: u16 = 0x04;
    /// Status (16 bit).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8 bit) and class code (24 bit), one dword.
    pub const CLASS_REVISION: u16 = 0x08;
    /// Header type (8 bit): layout in bits 6:0, multi-function in bit 7.
    pub const HEADER_TYPE: u16 = 0x0e;
    /// First BAR.
    pub const BAR0: u16 = 0x10;
    /// Type 1: primary bus number.
    pub const PRIMARY_BUS: u16 = 0x18;
    /// Type 1: secondary bus number.
    pub const SECONDARY_BUS: u16 = 0x19;
    /// Type 1: subordinate bus number.
    pub const SUBORDINATE_BUS: u16 = 0x1a;
    /// Capabilities pointer (8 bit).
    pub const CAP_PTR: u16 = 0x34;
    /// Type 1: Bridge Control (16 bit).
    pub const BRIDGE_CONTROL: u16 = 0x3e;
    /// First extended capability.
    pub const EXT_CAP_START: u16 = 0x100;
}

/// Command register bits.
pub mod command {
    /// Memory Space Enable.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus Master Enable.
    pub const BUS_MASTER: u16 = 1 << 2;
}

/// Bridge Control bits (type 1 headers).
pub mod bridge_control {
    /// Secondary Bus Reset: while set, everything below the bridge is held in reset.
    pub const SECONDARY_BUS_RESET: u16 = 1 << 6;
}

/// Size of one function's configuration space (ECAM).
pub const CONFIG_SIZE: u16 = 4096;

/// Capability IDs (the classic list).
pub mod cap_id {
    /// Power management.
    pub const PM: u8 = 0x01;
    /// MSI.
    pub const MSI: u8 = 0x05;
    /// PCI Express.
    pub const PCIE: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Extended capability IDs.
pub mod ext_cap_id {
    /// Device Serial Number.
    pub const DSN: u16 = 0x0003;
    /// Designated Vendor-Specific Extended Capability.
    pub const DVSEC: u16 = 0x0023;
}

/// PCI Express capability: Device/Port Type values (bits 7:4 of the capabilities register).
pub mod port_type {
    /// PCI Express Endpoint.
    pub const ENDPOINT: u8 = 0x0;
    /// Legacy endpoint.
    pub const LEGACY_ENDPOINT: u8 = 0x1;
    /// Root Port of a Root Complex.
    pub const ROOT_PORT: u8 = 0x4;
    /// Upstream port of a switch.
    pub const UPSTREAM: u8 = 0x5;
    /// Downstream port of a switch.
    pub const DOWNSTREAM: u8 = 0x6;
    /// Root Complex integrated Endpoint.
    pub const RCIEP: u8 = 0x9;
}

/// Bytes of the PCI Express capability structure (version 2).
pub const PCIE_CAP_LEN: u16 = 0x3c;
/// Offset of Link Capabilities inside the PCI Express capability.
pub const PCIE_LINK_CAP: u16 = 0x0c;

/// A decoded Base Address Register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// An I/O BAR (`addr` is the port base).
    Io {
        /// Port base.
        addr: u32,
    },
    /// A 32-bit memory BAR.
    Mem32 {
        /// Address.
        addr: u64,
        /// Prefetchable.
        prefetchable: bool,
    },
    /// A 64-bit memory BAR (it uses this BAR and the next).
    Mem64 {
        /// Address.
        addr: u64,
        /// Prefetchable.
        prefetchable: bool,
    },
    /// A memory BAR of a reserved type (bits 2:1 = 1 or 3).
    Reserved,
}

impl Bar {
    /// The memory address of a memory BAR.
    pub fn mem_addr(self) -> Option<u64> {
        match self {
            Self::Mem32 { addr, .. } | Self::Mem64 { addr, .. } => Some(addr),
            Self::Io { .. } | Self::Reserved => None,
        }
    }
}

/// Whether the BAR dword `lo` is the low half of a 64-bit memory BAR.
pub fn bar_is_64(lo: u32) -> bool {
    lo & 1 == 0 && (lo >> 1) & 3 == 2
}

/// Decodes a BAR from its dword `lo` and, for a 64-bit memory BAR, the next dword `hi`.
pub fn decode_bar(lo: u32, hi: u32) -> Bar {
    if lo & 1 == 1 {
        return Bar::Io { addr: lo & !0x3 };
    }
    let prefetchable = lo & 0x8 != 0;
    let low = u64::from(lo & !0xf);
    match (lo >> 1) & 3 {
        0 => Bar::Mem32 {
            addr: low,
            prefetchable,
        },
        2 => Bar::Mem64 {
            addr: low | (u64::from(hi) << 32),
            prefetchable,
        },
        _ => Bar::Reserved,
    }
}

/// Number of BAR dwords of a header layout (type 0: 6, type 1: 2, others: 0).
pub fn bar_count(header_type: u8) -> u8 {
    match header_type & 0x7f {
        0 => 6,
        1 => 2,
        _ => 0,
    }
}

/// An extended capability header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtCapHeader {
    /// Capability ID (bits 15:0).
    pub id: u16,
    /// Capability version (bits 19:16).
    pub version: u8,
    /// Offset of the next capability (bits 31:20), 0 at the end.
    pub next: u16,
}

/// Decodes an extended capability header dword.
pub fn decode_ext_cap_header(v: u32) -> ExtCapHeader {
    ExtCapHeader {
        id: v as u16,
        version: ((v >> 16) & 0xf) as u8,
        next: (v >> 20) as u16,
    }
}

/// The two DVSEC headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DvsecHeader {
    /// DVSEC vendor ID (header 1 bits 15:0).
    pub vendor: u16,
    /// DVSEC revision (header 1 bits 19:16).
    pub revision: u8,
    /// Length of the whole DVSEC in bytes, headers included (header 1 bits 31:20).
    pub length: u16,
    /// DVSEC ID (header 2 bits 15:0).
    pub id: u16,
}

/// Decodes DVSEC header 1 (the dword at +4) and header 2 (the 16 bits at +8).
pub fn decode_dvsec(header1: u32, header2: u16) -> DvsecHeader {
    DvsecHeader {
        vendor: header1 as u16,
        revision: ((header1 >> 16) & 0xf) as u8,
        length: (header1 >> 20) as u16,
        id: header2,
    }
}

/// Whether `[a, a + a_len)` and `[b, b + b_len)` overlap.
pub fn overlaps(a: u16, a_len: u16, b: u16, b_len: u16) -> bool {
    let (a, a_end) = (u32::from(a), u32::from(a) + u32::from(a_len));
    let (b, b_end) = (u32::from(b), u32::from(b) + u32::from(b_len));
    a < b_end && b < a_end
}

/// Header registers a config-space fuzzer must never write, as `(offset, length)`, so that the
/// function stays reachable: Command, BARs and the expansion ROM BAR for every layout, and for
/// type 1 also bus numbers, forwarding windows (I/O, memory, prefetchable, upper halves) and
/// Bridge Control (its secondary bus reset).
pub fn protected_header_ranges(header_type: u8) -> &'static [(u16, u16)] {
    const TYPE0: &[(u16, u16)] = &[(0x04, 2), (0x10, 0x18), (0x30, 4)];
    const TYPE1: &[(u16, u16)] = &[
        (0x04, 2),
        (0x10, 8),
        (0x18, 4),
        (0x1c, 2),
        (0x20, 0x14),
        (0x38, 4),
        (0x3e, 2),
    ];
    const OTHER: &[(u16, u16)] = &[(0x04, 2), (0x10, 0x30)];
    match header_type & 0x7f {
        0 => TYPE0,
        1 => TYPE1,
        _ => OTHER,
    }
}

/// Whether a write of `len` bytes at `off` touches a protected header register of this layout
/// (see [`protected_header_ranges`]) or one of the `extra` `(offset, length)` ranges.
pub fn write_protected(header_type: u8, off: u16, len: u16, extra: &[(u16, u16)]) -> bool {
    protected_header_ranges(header_type)
        .iter()
        .chain(extra)
        .any(|&(start, size)| overlaps(off, len, start, size))
}
