//! Shared helpers: address spaces, MMIO regions, typical functions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cxlvm_memory::{AddressSpace, MmioHandler, RegionId};
use cxlvm_pci::regs::COMMAND;
use cxlvm_pci::{BarSpec, ConfigSpace, Endpoint, PciFunction, PciePortType, RootPort};

pub const GIB: u64 = 1 << 30;

/// An MMIO handler that returns a fixed pattern and counts accesses.
#[derive(Default)]
pub struct Pattern {
    pub accesses: AtomicU64,
}

impl MmioHandler for Pattern {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }

    fn write(&self, _offset: u64, _data: &[u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn space(size: u64) -> Arc<Mutex<AddressSpace>> {
    Arc::new(Mutex::new(AddressSpace::new("guest", size)))
}

/// Creates an unplaced MMIO region of `size` bytes.
pub fn mmio_region(space: &Arc<Mutex<AddressSpace>>, name: &str, size: u64) -> RegionId {
    let mut s = space.lock().unwrap();
    let mut tx = s.begin();
    let id = tx
        .add_mmio(name, size, Arc::new(Pattern::default()))
        .unwrap();
    tx.commit().unwrap();
    id
}

/// Where `region` is placed in the root container (asserting the BAR priority).
pub fn placement(space: &Arc<Mutex<AddressSpace>>, region: RegionId) -> Option<u64> {
    let s = space.lock().unwrap();
    let (parent, offset, prio) = s.region(region).unwrap().placement?;
    assert_eq!(parent, s.root(), "BAR regions live in the root container");
    assert_eq!(prio, cxlvm_pci::BAR_PRIORITY);
    Some(offset)
}

/// The region the flat view shows at `addr`.
pub fn region_at(space: &Arc<Mutex<AddressSpace>>, addr: u64) -> Option<RegionId> {
    space.lock().unwrap().view().lookup(addr).map(|r| r.region)
}

pub fn read32(f: &dyn PciFunction, offset: u16) -> u32 {
    let mut b = [0u8; 4];
    f.read_config(offset, &mut b);
    u32::from_le_bytes(b)
}

pub fn read16(f: &dyn PciFunction, offset: u16) -> u16 {
    let mut b = [0u8; 2];
    f.read_config(offset, &mut b);
    u16::from_le_bytes(b)
}

pub fn read8(f: &dyn PciFunction, offset: u16) -> u8 {
    let mut b = [0u8; 1];
    f.read_config(offset, &mut b);
    b[0]
}

pub fn write32(f: &dyn PciFunction, offset: u16, v: u32) {
    f.write_config(offset, &v.to_le_bytes());
}

pub fn write16(f: &dyn PciFunction, offset: u16, v: u16) {
    f.write_config(offset, &v.to_le_bytes());
}

pub fn set_mem(f: &dyn PciFunction, on: bool) {
    let cmd = read16(f, COMMAND);
    let cmd = if on { cmd | 2 } else { cmd & !2 };
    write16(f, COMMAND, cmd);
}

/// A CXL-like type-3 endpoint: class 0x050210, PCIe endpoint capability, the CXL device DVSEC
/// (vendor 0x1E98, id 0) with Control writable, a 64-bit BAR0 of `bar0` bytes over `region`.
pub fn cxl_endpoint(
    space: &Arc<Mutex<AddressSpace>>,
    name: &str,
    region: RegionId,
    bar0: u64,
) -> Arc<Endpoint> {
    let mut cfg = ConfigSpace::new_type0(0x8086, 0x0d93, 0x05_02_10, 1);
    cfg.add_pcie_capability(PciePortType::Endpoint, 0).unwrap();
    cfg.add_dvsec(0x1e98, 1, 0, &dvsec_body(), &[0, 0, 0xfd, 0x4f])
        .unwrap();
    Endpoint::builder(name, cfg)
        .bar(0, BarSpec::memory64(bar0, region))
        .address_space(space.clone())
        .build()
        .unwrap()
}

/// Body (from +0x0A) of a CXL device DVSEC, 0x2E bytes: capability 0x0016, range 1 valid and
/// active.
pub fn dvsec_body() -> Vec<u8> {
    let mut body = vec![0u8; 0x38 - 0x0a];
    body[0..2].copy_from_slice(&0x0016u16.to_le_bytes()); // +0x0A capability
    body[0x1c - 0x0a] = 0x03; // +0x1C range 1 size low: valid, active
    body
}

pub fn root_port(port: u8) -> Arc<RootPort> {
    RootPort::builder(&format!("rp{port}"), 0x8086, 0x7075, port)
        .build()
        .unwrap()
}
