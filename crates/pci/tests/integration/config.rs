//! Configuration space masks and capability chains.

use cxlvm_pci::regs::*;
use cxlvm_pci::{ConfigSpace, PciError, PciePortType};

fn guest_u32(c: &ConfigSpace, off: u16) -> u32 {
    let mut b = [0u8; 4];
    c.read(off, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn type0_header_read_only_fields_survive_all_ones() {
    let mut c = ConfigSpace::new_type0(0x8086, 0x0d93, 0x05_02_10, 0x07);
    let before = c.clone();
    for off in (0..0x40).step_by(4) {
        c.write(off, &[0xff; 4]);
    }
    assert_eq!(c.u16(VENDOR_ID), 0x8086);
    assert_eq!(c.u16(DEVICE_ID), 0x0d93);
    assert_eq!(c.u8(REVISION_ID), 0x07);
    assert_eq!(c.class_code(), 0x05_02_10);
    assert_eq!(c.u8(HEADER_TYPE), 0x00);
    assert_eq!(c.u8(CAPABILITIES_POINTER), 0);
    assert_eq!(c.u16(STATUS), 0, "status bits are RO or W1C of zero");
    // RW fields took the value.
    assert_eq!(c.u16(COMMAND), 0x0547);
    assert_eq!(c.u8(CACHE_LINE_SIZE), 0xff);
    assert_eq!(c.u8(INTERRUPT_LINE), 0xff);
    assert_eq!(c.u8(INTERRUPT_PIN), 0);
    // No BARs in a bare header.
    for bar in 0..6 {
        assert_eq!(c.u32(BAR0 + 4 * bar), 0);
    }
    // Only the writable bytes changed.
    for off in 0..0x40u16 {
        if ![COMMAND, COMMAND + 1, CACHE_LINE_SIZE, INTERRUPT_LINE].contains(&off) {
            assert_eq!(c.u8(off), before.u8(off), "byte {off:#x}");
        }
    }
}

#[test]
fn status_error_bits_are_write_one_to_clear() {
    let mut c = ConfigSpace::new_type0(1, 2, 0, 0);
    c.add_capability(0x09, &[0; 2], &[]).unwrap();
    c.set_u16(STATUS, c.u16(STATUS) | 0xf900);
    assert_eq!(c.u16(STATUS), 0xf910);
    c.write(STATUS, &0x8000u16.to_le_bytes());
    assert_eq!(c.u16(STATUS), 0x7910, "bit 15 cleared, others kept");
    c.write(STATUS, &0x0010u16.to_le_bytes());
    assert_eq!(c.u16(STATUS), 0x7910, "capabilities-list bit is read-only");
    c.write(STATUS, &0xffffu16.to_le_bytes());
    assert_eq!(c.u16(STATUS), 0x0010);
}

#[test]
fn type1_header_bridge_registers() {
    let mut c = ConfigSpace::new_type1(0x8086, 0x7075, 0x06_04_00, 0);
    assert_eq!(c.header_layout(), HEADER_TYPE_BRIDGE);
    // Windows closed at reset: base above limit.
    assert!(c.u16(MEMORY_BASE) > c.u16(MEMORY_LIMIT));
    assert!(c.u16(PREF_MEMORY_BASE) > c.u16(PREF_MEMORY_LIMIT));
    assert!(c.u8(IO_BASE) > c.u8(IO_LIMIT));
    c.write(PRIMARY_BUS, &[0x00, 0x01, 0x05, 0xff]);
    assert_eq!(c.u32(PRIMARY_BUS), 0x00_05_01_00, "latency timer RO");
    c.write(IO_BASE, &[0xff, 0xff]);
    assert_eq!(c.u16(IO_BASE), 0xf0f0, "16-bit I/O, low nibble RO");
    c.write(MEMORY_BASE, &[0xff; 4]);
    assert_eq!(c.u32(MEMORY_BASE), 0xfff0_fff0);
    c.write(PREF_MEMORY_BASE, &[0xff; 4]);
    assert_eq!(c.u32(PREF_MEMORY_BASE), 0xfff1_fff1, "64-bit prefetchable");
    c.write(PREF_BASE_UPPER32, &[0xff; 8]);
    assert_eq!(c.u32(PREF_BASE_UPPER32), u32::MAX);
    assert_eq!(c.u32(PREF_LIMIT_UPPER32), u32::MAX);
    c.write(BRIDGE_CONTROL, &[0xff, 0xff]);
    assert_eq!(c.u16(BRIDGE_CONTROL), 0x005f);
    assert_eq!(c.class_code(), 0x06_04_00);
    // Secondary status W1C.
    c.set_u16(SECONDARY_STATUS, 0xf900);
    c.write(SECONDARY_STATUS, &0x2000u16.to_le_bytes());
    assert_eq!(c.u16(SECONDARY_STATUS), 0xd900);
}

#[test]
fn misaligned_and_dword_crossing_accesses_are_bytewise() {
    let mut c = ConfigSpace::new_type0(0x1234, 0x5678, 0x05_02_10, 1);
    // 4 bytes at 0x03: device id high byte (RO), command low/high (RW), status low (RO).
    c.write(0x03, &[0xaa, 0x06, 0x00, 0xff]);
    assert_eq!(c.u16(DEVICE_ID), 0x5678);
    assert_eq!(c.u16(COMMAND), 0x0006);
    assert_eq!(c.u16(STATUS), 0);
    let mut b = [0u8; 4];
    c.read(0x01, &mut b);
    assert_eq!(b, [0x12, 0x78, 0x56, 0x06]);
    // 2 bytes straddling the last byte.
    let mut b2 = [0u8; 2];
    c.read(0xfff, &mut b2);
    assert_eq!(b2, [0x00, 0xff]);
}

/// Walks the standard list through guest reads, checking every pointer.
fn walk_caps(c: &ConfigSpace) -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    assert_ne!(c.u16(STATUS) & STATUS_CAP_LIST, 0, "Status.CapList");
    let mut ptr = (guest_u32(c, 0x34) & 0xff) as u8;
    while ptr != 0 {
        assert!(ptr >= 0x40, "pointer {ptr:#x} below 0x40");
        assert_eq!(ptr % 4, 0, "pointer {ptr:#x} not dword aligned");
        assert!(out.len() < 48, "loop in capability list");
        let header = guest_u32(c, u16::from(ptr));
        out.push(((header & 0xff) as u8, ptr));
        ptr = (header >> 8 & 0xff) as u8;
    }
    out
}

/// Walks the extended list through guest reads.
fn walk_ext_caps(c: &ConfigSpace) -> Vec<(u16, u8, u16)> {
    let mut out = Vec::new();
    let mut off = 0x100u16;
    loop {
        let header = guest_u32(c, off);
        if header == 0 {
            break;
        }
        out.push(((header & 0xffff) as u16, (header >> 16 & 0xf) as u8, off));
        let next = (header >> 20) as u16;
        if next == 0 {
            break;
        }
        assert!(next > off, "extended capabilities go upward");
        assert_eq!(next % 4, 0);
        off = next;
    }
    out
}

#[test]
fn capability_chain_walks() {
    let mut c = ConfigSpace::new_type0(1, 2, 0x05_02_10, 0);
    let pm = c
        .add_capability(0x01, &[0x03, 0x00, 0, 0, 0, 0], &[0, 0, 0x03])
        .unwrap();
    let pcie = c.add_pcie_capability(PciePortType::Endpoint, 0).unwrap();
    let vendor = c
        .add_capability(0x09, &[0x07, 0xaa, 0xbb, 0xcc, 0xdd], &[])
        .unwrap();
    assert_eq!(pm, 0x40);
    assert_eq!(pcie, 0x48, "dword aligned after the 8-byte PM capability");
    assert_eq!(vendor, 0x48 + 0x3c);
    assert_eq!(
        walk_caps(&c),
        vec![(0x01, pm), (0x10, pcie), (0x09, vendor)]
    );
    assert_eq!(c.capabilities(), walk_caps(&c));
    assert_eq!(c.find_capability(0x10), Some(pcie));
    assert_eq!(c.find_capability(0x09), Some(vendor));
    assert_eq!(c.find_capability(0x05), None);
    // Body bytes and masks: only PMCSR's low bits are writable; the header never is.
    assert_eq!(c.u8(u16::from(vendor) + 2), 0x07);
    c.write(u16::from(pm), &[0xff; 8]);
    assert_eq!(c.u8(u16::from(pm)), 0x01);
    assert_eq!(c.u8(u16::from(pm) + 1), pcie);
    assert_eq!(c.u8(u16::from(pm) + 4), 0x03);
    assert_eq!(c.u8(u16::from(pm) + 5), 0x00);
    assert_eq!(walk_caps(&c).len(), 3, "list intact after all-ones writes");
}

#[test]
fn capability_area_overflow_is_an_error() {
    let mut c = ConfigSpace::new_type0(1, 2, 0, 0);
    c.add_capability(0x09, &[0; 0xb0], &[]).unwrap();
    assert!(matches!(
        c.add_capability(0x09, &[0; 0x10], &[]),
        Err(PciError::NoCapabilitySpace { .. })
    ));
    assert!(matches!(
        c.add_capability(0x09, &[0; 2], &[0; 3]),
        Err(PciError::MaskTooLong { .. })
    ));
    // The list is unchanged by the failures.
    assert_eq!(c.capabilities(), vec![(0x09, 0x40)]);
    assert!(matches!(
        c.add_ext_capability(0x0b, 1, &[0; 0xf00], &[]),
        Err(PciError::NoExtCapabilitySpace { .. })
    ));
    assert!(matches!(
        c.add_dvsec(0x1e98, 1, 0, &[0; 0x1000], &[]),
        Err(PciError::DvsecTooLong(_))
    ));
    assert!(matches!(
        c.add_ext_capability(0x0b, 0x10, &[], &[]),
        Err(PciError::BadVersion(0x10))
    ));
    assert_eq!(c.ext_capabilities(), vec![]);
}

#[test]
fn extended_capability_and_dvsec_chain_walks() {
    let mut c = ConfigSpace::new_type0(1, 2, 0x05_02_10, 0);
    c.add_pcie_capability(PciePortType::Endpoint, 0).unwrap();
    let dsn = c
        .add_ext_capability(0x0003, 1, &0x0123_4567_89ab_cdefu64.to_le_bytes(), &[])
        .unwrap();
    let body0: Vec<u8> = (0..0x2e).map(|i| i as u8).collect();
    let dev = c
        .add_dvsec(0x1e98, 2, 0, &body0, &[0, 0, 0xfd, 0x4f])
        .unwrap();
    let loc = c.add_dvsec(0x1e98, 0, 8, &[0; 0x12], &[]).unwrap();
    let other = c.add_dvsec(0x1234, 1, 0, &[0; 2], &[]).unwrap();
    assert_eq!(dsn, 0x100);
    assert_eq!(dev, 0x10c);
    assert_eq!(loc, 0x10c + 0x38);
    assert_eq!(other, loc + 0x1c);

    let walked = walk_ext_caps(&c);
    assert_eq!(
        walked,
        vec![
            (0x03, 1, dsn),
            (0x23, 1, dev),
            (0x23, 1, loc),
            (0x23, 1, other)
        ]
    );
    assert_eq!(c.ext_capabilities(), walked);
    // DVSEC headers: vendor | rev << 16 | length << 20, then the DVSEC id.
    assert_eq!(guest_u32(&c, dev + 4), 0x1e98 | 2 << 16 | 0x38 << 20);
    assert_eq!(c.u16(dev + 8), 0);
    assert_eq!(guest_u32(&c, loc + 4), 0x1e98 | 0x1c << 20);
    assert_eq!(c.u16(loc + 8), 8);
    assert_eq!(c.u8(dev + 0x0a), 0, "body starts at +0x0A");
    assert_eq!(c.u8(dev + 0x0b), 1);
    assert_eq!(c.u32(dsn + 4), 0x89ab_cdef);
    assert_eq!(c.find_ext_capability(0x23), Some(dev));
    assert_eq!(c.find_ext_capability(0x03), Some(dsn));
    assert_eq!(c.find_dvsec(0x1e98, 0), Some(dev));
    assert_eq!(c.find_dvsec(0x1e98, 8), Some(loc));
    assert_eq!(c.find_dvsec(0x1234, 0), Some(other));
    assert_eq!(c.find_dvsec(0x1e98, 3), None);

    // Headers are read-only; the Control register (+0x0C) takes its mask.
    for off in (dev..dev + 0x0c).step_by(2) {
        c.write(off, &[0xff, 0xff]);
    }
    assert_eq!(walk_ext_caps(&c), walked);
    assert_eq!(c.u16(dev + 0x0a), 0x0100, "capability register RO");
    c.write(dev + 0x0c, &[0xff, 0xff]);
    assert_eq!(c.u16(dev + 0x0c), (0x0302 & !0x4ffd) | 0x4ffd);
}

#[test]
fn pcie_capability_for_a_root_port() {
    let mut c = ConfigSpace::new_type1(0x8086, 0x7075, 0x06_04_00, 0);
    let cap = u16::from(c.add_pcie_capability(PciePortType::RootPort, 3).unwrap());
    assert_eq!(c.u8(cap), CAP_ID_PCIE);
    let caps = c.u16(cap + PCIE_CAPS);
    assert_eq!(caps & 0xf, 2, "version 2");
    assert_eq!(caps >> 4 & 0xf, 4, "root port");
    assert_eq!(caps & 1 << 8, 0, "no slot");
    let lnkcap = c.u32(cap + PCIE_LNKCAP);
    assert_eq!(lnkcap >> 24, 3, "port number");
    assert_eq!(lnkcap & 0xf, 5);
    assert_eq!(lnkcap >> 4 & 0x3f, 16);
    assert_ne!(lnkcap & 1 << 20, 0, "DLL link active reporting");
    let lnksta = c.u16(cap + PCIE_LNKSTA);
    assert_eq!(lnksta & 0xf, 5);
    assert_eq!(lnksta >> 4 & 0x3f, 16);
    assert_ne!(lnksta & 1 << 13, 0, "link up");
    // Writes to read-only registers do nothing; Device Status errors are W1C.
    let before = c.clone();
    c.write(cap + PCIE_LNKCAP, &[0; 4]);
    c.write(cap + PCIE_LNKSTA, &[0; 2]);
    c.write(cap + PCIE_CAPS, &[0; 2]);
    assert_eq!(c, before);
    c.set_u16(cap + PCIE_DEVSTA, 0x000f);
    c.write(cap + PCIE_DEVSTA, &[0x05, 0]);
    assert_eq!(c.u16(cap + PCIE_DEVSTA), 0x000a);
    c.write(cap + PCIE_RTCTL, &[0xff, 0xff]);
    assert_eq!(c.u16(cap + PCIE_RTCTL), 0x000f);
    c.write(cap + PCIE_LNKCTL, &[0xff, 0xff]);
    assert_eq!(
        c.u16(cap + PCIE_LNKCTL) & 0x30,
        0,
        "link disable/retrain RO"
    );
}

#[test]
fn pcie_capability_for_an_endpoint() {
    let mut c = ConfigSpace::new_type0(1, 2, 0x05_02_10, 0);
    let cap = u16::from(c.add_pcie_capability(PciePortType::Endpoint, 0).unwrap());
    assert_eq!(c.u16(cap + PCIE_CAPS) >> 4 & 0xf, 0);
    assert_eq!(c.u32(cap + PCIE_LNKCAP) & 1 << 20, 0);
    assert_eq!(c.u16(cap + PCIE_LNKSTA) >> 4 & 0x3f, 16);
    c.write(cap + PCIE_RTCTL, &[0xff, 0xff]);
    assert_eq!(c.u16(cap + PCIE_RTCTL), 0, "no root registers");
    let mut rc = ConfigSpace::new_type0(1, 2, 0, 0);
    let cap = u16::from(
        rc.add_pcie_capability(PciePortType::RcIntegratedEndpoint, 0)
            .unwrap(),
    );
    assert_eq!(rc.u32(cap + PCIE_LNKCAP), 0, "no link");
}
