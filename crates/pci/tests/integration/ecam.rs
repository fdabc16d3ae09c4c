//! ECAM decoding and routing through root ports.

use std::sync::Arc;

use cxlvm_memory::MmioHandler;
use cxlvm_pci::regs::{PRIMARY_BUS, SECONDARY_BUS, SUBORDINATE_BUS};
use cxlvm_pci::{PciBridge, PciError, PciFunction, PciSegment, devfn};

use crate::common::*;

fn ecam_offset(bus: u8, dev: u8, func: u8, reg: u16) -> u64 {
    u64::from(bus) << 20 | u64::from(dev) << 15 | u64::from(func) << 12 | u64::from(reg)
}

fn ecam_read32(seg: &PciSegment, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    seg.read(offset, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn absent_functions_read_all_ones_and_ignore_writes() {
    let seg = PciSegment::new("pci", 0, 3).unwrap();
    assert_eq!(seg.ecam_size(), 4 << 20);
    seg.add_root_bus(0, "hb").unwrap();
    for size in [1usize, 2, 4, 8] {
        let mut b = vec![0u8; size];
        seg.read(ecam_offset(0, 3, 0, 0), &mut b);
        assert!(b.iter().all(|&x| x == 0xff), "size {size}");
    }
    seg.write(ecam_offset(0, 3, 0, 4), &[0xff; 4]);
    // Past the segment's buses.
    assert_eq!(ecam_read32(&seg, 4 << 20), u32::MAX);
    assert_eq!(ecam_read32(&seg, u64::MAX - 1), u32::MAX);
    seg.write(u64::MAX - 3, &[0; 8]);
    assert!(seg.functions().is_empty());
}

#[test]
fn segment_errors() {
    assert!(matches!(
        PciSegment::new("p", 5, 4),
        Err(PciError::BadBusRange { .. })
    ));
    let seg = PciSegment::new("pci", 0x10, 0x1f).unwrap();
    assert!(matches!(
        seg.add_root_bus(0, "hb"),
        Err(PciError::BusOutOfRange(0))
    ));
    seg.add_root_bus(0x10, "hb").unwrap();
    assert!(matches!(
        seg.add_root_bus(0x10, "hb"),
        Err(PciError::DuplicateRootBus(0x10))
    ));
    let rp = root_port(0);
    assert!(matches!(
        seg.attach(0x11, 0, rp.clone()),
        Err(PciError::NoSuchRootBus(0x11))
    ));
    seg.attach(0x10, 0, rp.clone()).unwrap();
    assert!(matches!(
        seg.attach(0x10, 0, rp),
        Err(PciError::SlotTaken {
            bus: 0x10,
            devfn: 0
        })
    ));
    assert_eq!(seg.root_buses(), vec![(0x10, "hb".to_owned())]);
}

#[test]
fn endpoint_behind_root_port_is_visible_only_once_bus_numbers_are_set() {
    let space = space(64 * GIB);
    let region = mmio_region(&space, "regs", 0x2_0000);
    let ep = cxl_endpoint(&space, "ep", region, 0x2_0000);
    let rp = root_port(3);
    rp.attach(0, ep.clone()).unwrap();
    let seg = PciSegment::new("pci", 0, 0xff).unwrap();
    seg.add_root_bus(0, "hb").unwrap();
    seg.attach(0, devfn(2, 0), rp.clone()).unwrap();

    // The root port answers on bus 0; nothing answers below it yet.
    assert_eq!(ecam_read32(&seg, ecam_offset(0, 2, 0, 0)), 0x7075_8086);
    assert_eq!(rp.bus_range(), None);
    for bus in 0..=3u8 {
        if bus != 0 {
            assert_eq!(ecam_read32(&seg, ecam_offset(bus, 0, 0, 0)), u32::MAX);
        }
    }

    // Firmware-like enumeration.
    assert_eq!(seg.program_bus_numbers().unwrap(), 1);
    let rpf: &dyn PciFunction = rp.as_ref();
    assert_eq!(read8(rpf, PRIMARY_BUS), 0);
    assert_eq!(read8(rpf, SECONDARY_BUS), 1);
    assert_eq!(read8(rpf, SUBORDINATE_BUS), 1);
    assert_eq!(ecam_read32(&seg, ecam_offset(1, 0, 0, 0)), 0x0d93_8086);
    assert_eq!(ecam_read32(&seg, ecam_offset(1, 0, 0, 8)) >> 8, 0x05_02_10);
    // Only device 0 on a root port's secondary bus; other buses empty.
    assert_eq!(ecam_read32(&seg, ecam_offset(1, 1, 0, 0)), u32::MAX);
    assert_eq!(ecam_read32(&seg, ecam_offset(2, 0, 0, 0)), u32::MAX);

    // Writes go through: BAR programming via ECAM maps the region.
    seg.write(ecam_offset(1, 0, 0, 0x10), &0xfe00_0000u32.to_le_bytes());
    seg.write(ecam_offset(1, 0, 0, 0x14), &0u32.to_le_bytes());
    seg.write(ecam_offset(1, 0, 0, 0x04), &2u16.to_le_bytes());
    assert_eq!(placement(&space, region), Some(0xfe00_0000));

    // The guest renumbers: the endpoint follows.
    seg.write(ecam_offset(0, 2, 0, 0x18), &[0, 5, 7, 0]);
    assert_eq!(ecam_read32(&seg, ecam_offset(1, 0, 0, 0)), u32::MAX);
    assert_eq!(ecam_read32(&seg, ecam_offset(5, 0, 0, 0)), 0x0d93_8086);
    assert_eq!(ecam_read32(&seg, ecam_offset(6, 0, 0, 0)), u32::MAX);
    // Subordinate below secondary: closed.
    seg.write(ecam_offset(0, 2, 0, 0x18), &[0, 5, 4, 0]);
    assert_eq!(ecam_read32(&seg, ecam_offset(5, 0, 0, 0)), u32::MAX);
    assert_eq!(seg.functions().len(), 1);
}

#[test]
fn ecam_access_sizes() {
    let space = space(64 * GIB);
    let region = mmio_region(&space, "regs", 0x2_0000);
    let ep = cxl_endpoint(&space, "ep", region, 0x2_0000);
    let seg = PciSegment::new("pci", 0, 0).unwrap();
    seg.add_root_bus(0, "hb").unwrap();
    seg.attach(0, devfn(0, 0), ep.clone()).unwrap();
    let mut b1 = [0u8; 1];
    seg.read(1, &mut b1);
    assert_eq!(b1, [0x80]);
    let mut b2 = [0u8; 2];
    seg.read(2, &mut b2);
    assert_eq!(u16::from_le_bytes(b2), 0x0d93);
    let mut b8 = [0u8; 8];
    seg.read(0, &mut b8);
    assert_eq!(
        u64::from_le_bytes(b8),
        0x0010_0000_0d93_8086,
        "status has the cap list bit"
    );
    // An 8-byte write is two dword writes: command and BAR bits land.
    seg.write(0x10, &0x0000_0000_fe00_0000u64.to_le_bytes());
    seg.write(0x04, &2u64.to_le_bytes()[..2]);
    assert_eq!(placement(&space, region), Some(0xfe00_0000));
    // 8 bytes straddling two functions: the second half is all-ones (absent devfn 1).
    seg.read(0xffc, &mut b8);
    assert_eq!(&b8[4..], &[0xff; 4]);
    // Misaligned 4-byte access.
    let mut b4 = [0u8; 4];
    seg.read(1, &mut b4);
    assert_eq!(b4, [0x80, 0x93, 0x0d, 0x02]);
}

#[test]
fn nested_bridges_and_several_host_bridges() {
    let space = space(64 * GIB);
    let r1 = mmio_region(&space, "r1", 0x2_0000);
    let r2 = mmio_region(&space, "r2", 0x2_0000);
    let ep1 = cxl_endpoint(&space, "ep1", r1, 0x2_0000);
    let ep2 = cxl_endpoint(&space, "ep2", r2, 0x2_0000);
    // Host bridge 0: rp0 -> rp_inner -> ep1, plus rp1 -> nothing.
    let rp0 = root_port(0);
    let inner = root_port(9);
    inner.attach(0, ep1.clone()).unwrap();
    rp0.attach(0, inner.clone()).unwrap();
    let rp1 = root_port(1);
    // Host bridge 0x80: rp2 -> ep2.
    let rp2 = root_port(2);
    rp2.attach(0, ep2.clone()).unwrap();

    let seg = PciSegment::new("pci", 0, 0xff).unwrap();
    seg.add_root_bus(0, "hb0").unwrap();
    seg.add_root_bus(0x80, "hb1").unwrap();
    seg.attach(0, devfn(1, 0), rp0.clone()).unwrap();
    seg.attach(0, devfn(2, 0), rp1.clone()).unwrap();
    seg.attach(0x80, devfn(0, 0), rp2.clone()).unwrap();
    assert_eq!(seg.program_bus_numbers().unwrap(), 0x81);
    assert_eq!(rp0.bus_range(), Some((1, 2)));
    assert_eq!(inner.bus_range(), Some((2, 2)));
    assert_eq!(rp1.bus_range(), Some((3, 3)));
    assert_eq!(rp2.bus_range(), Some((0x81, 0x81)));
    assert_eq!(read8(inner.as_ref(), PRIMARY_BUS), 1);

    let found: Vec<(u8, u8)> = seg.functions().iter().map(|(b, d, _)| (*b, *d)).collect();
    assert_eq!(
        found,
        vec![(0, 8), (0, 16), (1, 0), (2, 0), (0x80, 0), (0x81, 0)]
    );
    let f = seg.function(2, 0).unwrap();
    assert!(std::ptr::addr_eq(Arc::as_ptr(&f), Arc::as_ptr(&ep1)));
    assert_eq!(ecam_read32(&seg, ecam_offset(0x81, 0, 0, 0)), 0x0d93_8086);
    // A bus between the host bridges that nothing claims.
    assert_eq!(ecam_read32(&seg, ecam_offset(0x40, 0, 0, 0)), u32::MAX);
}

#[test]
fn bus_numbers_run_out() {
    let seg = PciSegment::new("pci", 0, 0xff).unwrap();
    seg.add_root_bus(0, "hb0").unwrap();
    seg.add_root_bus(1, "hb1").unwrap();
    seg.attach(0, 0, root_port(0)).unwrap();
    assert!(matches!(
        seg.program_bus_numbers(),
        Err(PciError::BusNumbersExhausted(0))
    ));
}
