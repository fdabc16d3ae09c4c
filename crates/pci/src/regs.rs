//! Register offsets and bits of the PCI configuration header and the PCIe capability.
//!
//! Offsets in the header are absolute; offsets of the PCIe capability (`PCIE_*`) are relative
//! to the capability's start.

/// Size of a PCIe function's (extended) configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// End of the conventional (PCI-compatible) configuration space; extended capabilities start here.
pub const EXT_CAP_START: u16 = 0x100;
/// First byte the standard capability list may use.
pub const CAP_START: u16 = 0x40;

/// Vendor ID (16 bits).
pub const VENDOR_ID: u16 = 0x00;
/// Device ID (16 bits).
pub const DEVICE_ID: u16 = 0x02;
/// Command register (16 bits).
pub const COMMAND: u16 = 0x04;
/// Status register (16 bits).
pub const STATUS: u16 = 0x06;
/// Revision ID (8 bits).
pub const REVISION_ID: u16 = 0x08;
/// Class code (24 bits: programming interface, sub-class, base class).
pub const CLASS_CODE: u16 = 0x09;
/// Cache line size (8 bits).
pub const CACHE_LINE_SIZE: u16 = 0x0c;
/// Header type (8 bits; bit 7 = multi-function).
pub const HEADER_TYPE: u16 = 0x0e;
/// First BAR register; BAR n is at `BAR0 + 4 * n`.
pub const BAR0: u16 = 0x10;
/// Subsystem vendor ID (type 0 header).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Subsystem ID (type 0 header).
pub const SUBSYSTEM_ID: u16 = 0x2e;
/// Capabilities pointer (8 bits).
pub const CAPABILITIES_POINTER: u16 = 0x34;
/// Interrupt line (8 bits).
pub const INTERRUPT_LINE: u16 = 0x3c;
/// Interrupt pin (8 bits).
pub const INTERRUPT_PIN: u16 = 0x3d;

/// Type 1 header: primary bus number.
pub const PRIMARY_BUS: u16 = 0x18;
/// Type 1 header: secondary bus number.
pub const SECONDARY_BUS: u16 = 0x19;
/// Type 1 header: subordinate bus number.
pub const SUBORDINATE_BUS: u16 = 0x1a;
/// Type 1 header: I/O base (8 bits).
pub const IO_BASE: u16 = 0x1c;
/// Type 1 header: I/O limit (8 bits).
pub const IO_LIMIT: u16 = 0x1d;
/// Type 1 header: secondary status (16 bits).
pub const SECONDARY_STATUS: u16 = 0x1e;
/// Type 1 header: memory base (16 bits).
pub const MEMORY_BASE: u16 = 0x20;
/// Type 1 header: memory limit (16 bits).
pub const MEMORY_LIMIT: u16 = 0x22;
/// Type 1 header: prefetchable memory base (16 bits).
pub const PREF_MEMORY_BASE: u16 = 0x24;
/// Type 1 header: prefetchable memory limit (16 bits).
pub const PREF_MEMORY_LIMIT: u16 = 0x26;
/// Type 1 header: prefetchable base, upper 32 bits.
pub const PREF_BASE_UPPER32: u16 = 0x28;
/// Type 1 header: prefetchable limit, upper 32 bits.
pub const PREF_LIMIT_UPPER32: u16 = 0x2c;
/// Type 1 header: bridge control (16 bits).
pub const BRIDGE_CONTROL: u16 = 0x3e;

/// Header type layout 0 (endpoint).
pub const HEADER_TYPE_NORMAL: u8 = 0x00;
/// Header type layout 1 (PCI-to-PCI bridge, root port).
pub const HEADER_TYPE_BRIDGE: u8 = 0x01;
/// Header type bit 7: the device has several functions.
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;

/// Command: I/O space enable.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command: memory space enable (BARs decode only while set).
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: bus master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: parity error response.
pub const COMMAND_PARITY: u16 = 1 << 6;
/// Command: SERR# enable.
pub const COMMAND_SERR: u16 = 1 << 8;
/// Command: INTx emulation disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status: capabilities list present.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Status bits that are write-1-to-clear (parity and abort reporting).
pub const STATUS_W1C: u16 = 0xf900;
/// Bridge control: secondary bus reset.
pub const BRIDGE_CONTROL_SBR: u16 = 1 << 6;

/// BAR bit 0: I/O space BAR.
pub const BAR_IO: u32 = 1 << 0;
/// BAR bits 2:1 = 10: 64-bit memory BAR.
pub const BAR_MEM64: u32 = 0b10 << 1;
/// BAR bit 3: prefetchable.
pub const BAR_PREFETCHABLE: u32 = 1 << 3;

/// Capability ID of the PCI Express capability.
pub const CAP_ID_PCIE: u8 = 0x10;
/// Extended capability ID of the Designated Vendor-Specific Extended Capability.
pub const EXT_CAP_ID_DVSEC: u16 = 0x23;
/// Bytes of a DVSEC before its body (extended header, DVSEC header 1 and 2).
pub const DVSEC_HEADER_LEN: u16 = 0x0a;

/// PCIe capability: PCI Express Capabilities register (16 bits).
pub const PCIE_CAPS: u16 = 0x02;
/// PCIe capability: Device Capabilities (32 bits).
pub const PCIE_DEVCAP: u16 = 0x04;
/// PCIe capability: Device Control (16 bits).
pub const PCIE_DEVCTL: u16 = 0x08;
/// PCIe capability: Device Status (16 bits).
pub const PCIE_DEVSTA: u16 = 0x0a;
/// PCIe capability: Link Capabilities (32 bits; bits 31:24 Port Number).
pub const PCIE_LNKCAP: u16 = 0x0c;
/// PCIe capability: Link Control (16 bits).
pub const PCIE_LNKCTL: u16 = 0x10;
/// PCIe capability: Link Status (16 bits).
pub const PCIE_LNKSTA: u16 = 0x12;
/// PCIe capability: Slot Capabilities (32 bits).
pub const PCIE_SLTCAP: u16 = 0x14;
/// PCIe capability: Root Control (16 bits).
pub const PCIE_RTCTL: u16 = 0x1c;
/// PCIe capability: Root Capabilities (16 bits).
pub const PCIE_RTCAP: u16 = 0x1e;
/// PCIe capability: Root Status (32 bits).
pub const PCIE_RTSTA: u16 = 0x20;
/// PCIe capability: Device Capabilities 2 (32 bits).
pub const PCIE_DEVCAP2: u16 = 0x24;
/// PCIe capability: Device Control 2 (16 bits).
pub const PCIE_DEVCTL2: u16 = 0x28;
/// PCIe capability: Link Capabilities 2 (32 bits).
pub const PCIE_LNKCAP2: u16 = 0x2c;
/// PCIe capability: Link Control 2 (16 bits).
pub const PCIE_LNKCTL2: u16 = 0x30;
/// Size of a version 2 PCIe capability.
pub const PCIE_CAP_LEN: u16 = 0x3c;
