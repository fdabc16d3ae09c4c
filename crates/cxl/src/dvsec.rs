//! CXL DVSECs in PCI configuration space (CXL 3.x §8.1), built on `cxlvm-pci`'s `ConfigSpace`.

use cxlvm_pci::{ConfigSpace, PciError};

/// Vendor ID of CXL DVSECs (the CXL consortium).
pub const CXL_VENDOR: u16 = 0x1e98;
/// DVSEC IDs.
pub mod id {
    /// PCIe DVSEC for CXL Devices.
    pub const DEVICE: u16 = 0;
    /// CXL Extensions DVSEC for Ports.
    pub const PORT_EXTENSIONS: u16 = 3;
    /// GPF DVSEC for CXL Ports.
    pub const GPF_PORT: u16 = 4;
    /// GPF DVSEC for CXL Devices.
    pub const GPF_DEVICE: u16 = 5;
    /// Flex Bus Port DVSEC.
    pub const FLEX_BUS: u16 = 7;
    /// Register Locator DVSEC.
    pub const REGISTER_LOCATOR: u16 = 8;
}

/// Offset of the CXL Control register inside the Device DVSEC.
pub const DEVICE_CONTROL: u16 = 0x0c;
/// Mem_Enable bit of CXL Control.
pub const MEM_ENABLE: u16 = 1 << 2;

/// Register Locator block identifiers.
pub mod block {
    /// Component registers.
    pub const COMPONENT: u8 = 1;
    /// Memory device registers.
    pub const DEVICE: u8 = 3;
}

struct Body {
    bytes: Vec<u8>,
    mask: Vec<u8>,
}

impl Body {
    /// A body for a DVSEC of total `length` bytes (header included).
    fn new(length: usize) -> Self {
        Self {
            bytes: vec![0; length - 0x0a],
            mask: vec![0; length - 0x0a],
        }
    }
    fn at(off: u16) -> usize {
        usize::from(off) - 0x0a
    }
    fn u16(&mut self, off: u16, v: u16, wmask: u16) -> &mut Self {
        let a = Self::at(off);
        self.bytes[a..a + 2].copy_from_slice(&v.to_le_bytes());
        self.mask[a..a + 2].copy_from_slice(&wmask.to_le_bytes());
        self
    }
    fn u32(&mut self, off: u16, v: u32, wmask: u32) -> &mut Self {
        let a = Self::at(off);
        self.bytes[a..a + 4].copy_from_slice(&v.to_le_bytes());
        self.mask[a..a + 4].copy_from_slice(&wmask.to_le_bytes());
        self
    }
    fn add(&self, cfg: &mut ConfigSpace, revision: u8, dvsec: u16) -> Result<u16, PciError> {
        cfg.add_dvsec(CXL_VENDOR, revision, dvsec, &self.bytes, &self.mask)
    }
}

/// Adds the PCIe DVSEC for CXL Devices of a Type-3 device with one HDM range of `capacity`
/// bytes: Mem_Capable, HDM_Count = 1, Mem_Enable 0 at reset (writable), range 1 valid and
/// active from reset. Returns the DVSEC offset.
pub fn add_device(cfg: &mut ConfigSpace, capacity: u64) -> Result<u16, PciError> {
    let mut b = Body::new(0x3c);
    // Capability: IO_Capable, Mem_Capable, HDM_Count = 1.
    b.u16(0x0a, 1 << 1 | 1 << 2 | 1 << 4, 0)
        // Control: IO_Enable reads 1; Cache_Enable, Mem_Enable and the rest RW.
        .u16(DEVICE_CONTROL, 1 << 1, 0x4ffd)
        .u16(0x10, 0, 0x000f) // Control2
        .u16(0x14, 0, 0x0001) // Lock
        // Range 1 size: capacity, Memory_Info_Valid, Memory_Active, media type 2 (volatile or
        // persistent class memory as CXL defines it), memory class 2.
        .u32(0x18, (capacity >> 32) as u32, 0)
        .u32(
            0x1c,
            (capacity as u32 & 0xf000_0000) | 1 | 1 << 1 | 2 << 2 | 2 << 5,
            0,
        )
        .u32(0x20, 0, 0xffff_ffff)
        .u32(0x24, 0, 0xf000_0000)
        .u32(0x30, 0, 0xffff_ffff)
        .u32(0x34, 0, 0xf000_0000);
    b.add(cfg, 2, id::DEVICE)
}

/// Adds a Register Locator DVSEC with `(bar index, block id)` entries at offset 0 in their BAR.
pub fn add_register_locator(cfg: &mut ConfigSpace, entries: &[(u8, u8)]) -> Result<u16, PciError> {
    let mut b = Body::new(0x0c + 8 * entries.len());
    for (i, &(bir, blk)) in entries.iter().enumerate() {
        let off = 0x0c + 8 * i as u16;
        b.u32(off, u32::from(bir & 7) | u32::from(blk) << 8, 0);
    }
    b.add(cfg, 0, id::REGISTER_LOCATOR)
}

/// Adds the Flex Bus Port DVSEC (CXL.io and CXL.mem capable and enabled, 68B flit).
pub fn add_flex_bus(cfg: &mut ConfigSpace) -> Result<u16, PciError> {
    let mut b = Body::new(0x20);
    b.u16(0x0a, 0x26, 0)
        .u16(0x0c, 0x02, 0x003f)
        .u16(0x0e, 0x26, 0);
    b.add(cfg, 2, id::FLEX_BUS)
}

/// Adds the GPF DVSEC for devices.
pub fn add_gpf_device(cfg: &mut ConfigSpace) -> Result<u16, PciError> {
    let mut b = Body::new(0x10);
    b.u16(0x0a, 0x0603, 0).u32(0x0c, 0x33, 0);
    b.add(cfg, 0, id::GPF_DEVICE)
}

/// Adds the CXL Extensions DVSEC for Ports (Port Control "Unmask SBR" writable) and the GPF DVSEC
/// for ports.
pub fn add_port_dvsecs(cfg: &mut ConfigSpace) -> Result<(), PciError> {
    let mut b = Body::new(0x28);
    b.u16(0x0c, 0, 0x0003);
    b.add(cfg, 0, id::PORT_EXTENSIONS)?;
    let mut g = Body::new(0x10);
    g.u16(0x0c, 1, 0x0f0f).u16(0x0e, 1, 0x0f0f);
    g.add(cfg, 0, id::GPF_PORT)?;
    Ok(())
}
