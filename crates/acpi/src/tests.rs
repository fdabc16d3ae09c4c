//! Unit tests: checksums, lengths, layout, encodings, validation.

use crate::*;

fn hb(uid: u32, bus: u8, chbcr: u64) -> HostBridge {
    HostBridge {
        uid,
        buses: BusRange {
            start: bus,
            end: bus + 0xf,
        },
        chbcr: MemRange::new(chbcr, CHBCR_SIZE),
        mmio: vec![MemRange::new(
            0x40_0000_0000 + u64::from(uid) * (1 << 30),
            1 << 30,
        )],
    }
}

fn window(base: u64, targets: Vec<u32>) -> FixedWindow {
    FixedWindow {
        range: MemRange::new(base, (256 << 20) * targets.len() as u64),
        ways: Ways::from_count(targets.len() as u32).unwrap(),
        targets,
        granularity: Granularity::K4,
        arithmetic: Arithmetic::Modulo,
        restrictions: Restrictions {
            volatile: true,
            persistent: false,
        },
        qtg: 0,
    }
}

fn platform() -> Platform {
    Platform {
        cpus: vec![Cpu { apic_id: 0 }, Cpu { apic_id: 1 }],
        ram: vec![MemRange::new(0, 1 << 30)],
        ioapic: IoApic {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0,
        },
        overrides: vec![InterruptOverride::TIMER],
        ecam: Some(Ecam {
            base: 0xe000_0000,
            segment: 0,
            buses: BusRange {
                start: 0,
                end: 0xff,
            },
        }),
        host_bridges: vec![hb(0, 0x10, 0xd010_0000), hb(1, 0x20, 0xd011_0000)],
        windows: vec![window(1 << 40, vec![0, 1])],
        serial: Some(SerialPort::COM1),
        power: PowerRegisters::CXLVM,
    }
}

fn build(p: &Platform) -> AcpiTables {
    Layout::new(0x10_0000).build(p).unwrap()
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn checksum_makes_the_sum_zero() {
    assert_eq!(checksum(&[]), 0);
    assert_eq!(checksum(&[1]), 0xff);
    assert_eq!(checksum(&[0x80, 0x80]), 0);
    let mut v = vec![0x12, 0x34, 0, 0xfe];
    v[2] = checksum(&v);
    assert_eq!(byte_sum(&v), 0);
}

#[test]
fn every_table_sums_to_zero_and_says_its_length() {
    let t = build(&platform());
    for table in t.tables() {
        let b = &table.bytes;
        assert_eq!(byte_sum(b), 0, "{:?}", table.kind);
        if table.kind == TableKind::Rsdp {
            assert_eq!(byte_sum(&b[..20]), 0, "RSDP first 20 bytes");
            assert_eq!(le32(b, 20) as usize, b.len());
            assert_eq!(&b[..8], b"RSD PTR ");
        } else {
            assert_eq!(le32(b, 4) as usize, b.len(), "{:?}", table.kind);
            assert_eq!(&b[..4], table.kind.signature().as_bytes());
            assert_eq!(&b[10..16], &OEM_ID);
            assert_eq!(&b[16..24], &OEM_TABLE_ID);
        }
        // A flipped byte is caught.
        let mut bad = b.clone();
        bad[b.len() - 1] ^= 0x40;
        assert_ne!(byte_sum(&bad), 0);
    }
}

#[test]
fn layout_places_tables_contiguously_and_links_them() {
    let t = build(&platform());
    let kinds: Vec<TableKind> = t.tables().iter().map(|x| x.kind).collect();
    use TableKind::*;
    assert_eq!(
        kinds,
        vec![Rsdp, Xsdt, Fadt, Dsdt, Madt, Mcfg, Srat, Slit, Cedt]
    );
    assert_eq!(t.rsdp_address(), 0x10_0000);
    assert_eq!(t.range().base, 0x10_0000);
    let mut end = t.range().base;
    for x in t.tables() {
        assert_eq!(x.address % TABLE_ALIGN as u64, 0);
        assert!(
            x.address >= end,
            "{:?} overlaps the table before it",
            x.kind
        );
        assert!(
            x.address - end < TABLE_ALIGN as u64,
            "gap before {:?}",
            x.kind
        );
        end = x.address + x.bytes.len() as u64;
        let off = (x.address - t.range().base) as usize;
        assert_eq!(&t.blob()[off..off + x.bytes.len()], &x.bytes[..]);
    }
    assert_eq!(end, t.range().base + t.range().size);
    let at = |k| t.get(k).unwrap().address;
    let rsdp = &t.get(Rsdp).unwrap().bytes;
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(le32(rsdp, 16), 0, "no RSDT");
    assert_eq!(le64(rsdp, 24), at(Xsdt));
    let xsdt = &t.get(Xsdt).unwrap().bytes;
    let listed: Vec<u64> = (36..xsdt.len()).step_by(8).map(|o| le64(xsdt, o)).collect();
    assert_eq!(
        listed,
        vec![at(Fadt), at(Madt), at(Mcfg), at(Srat), at(Slit), at(Cedt)]
    );
    let fadt = &t.get(Fadt).unwrap().bytes;
    assert_eq!(fadt.len(), FADT_LEN);
    assert_eq!(le32(fadt, 40) as u64, at(Dsdt));
    assert_eq!(le64(fadt, 140), at(Dsdt));
}

#[test]
fn dsdt_above_4g_has_only_the_64_bit_pointer() {
    let t = Layout::new(0x1_0000_0000).build(&platform()).unwrap();
    let fadt = &t.get(TableKind::Fadt).unwrap().bytes;
    assert_eq!(le32(fadt, 40), 0);
    assert_eq!(le64(fadt, 140), t.get(TableKind::Dsdt).unwrap().address);
}

#[test]
fn fadt_is_hardware_reduced_with_io_power_registers() {
    let t = build(&platform());
    let f = &t.get(TableKind::Fadt).unwrap().bytes;
    assert_eq!(f[8], 6, "revision");
    assert_eq!(f[131], 5, "minor revision");
    assert_eq!(le32(f, 112) & 1 << 20, 1 << 20, "HW_REDUCED_ACPI");
    assert_eq!(le32(f, 112) & 1 << 10, 1 << 10, "RESET_REG_SUP");
    // GAS: space 1 (I/O), 8 bits, offset 0, byte access, address.
    let gas = |at: usize| (f[at], f[at + 1], f[at + 2], f[at + 3], le64(f, at + 4));
    assert_eq!(gas(116), (1, 8, 0, 1, 0xcf9));
    assert_eq!(f[128], 6);
    assert_eq!(gas(244), (1, 8, 0, 1, 0x600));
    assert_eq!(gas(256), (1, 8, 0, 1, 0x601));
    // No PM blocks, no FACS.
    assert!(f[56..88].iter().all(|b| *b == 0));
    assert!(f[148..244].iter().all(|b| *b == 0));
    assert_eq!(le64(f, 132), 0);
}

#[test]
fn poweroff_is_slp_typ_5_with_slp_en() {
    let v = S5_SLEEP_TYPE << 2 | SLEEP_ENABLE;
    assert_eq!(v, 0x34);
    assert!(sleep_control_is_poweroff(v));
    assert!(!sleep_control_is_poweroff(S5_SLEEP_TYPE << 2)); // no SLP_EN
    assert!(!sleep_control_is_poweroff(3 << 2 | SLEEP_ENABLE));
    assert_eq!(sleep_control_request(3 << 2 | SLEEP_ENABLE), Some(3));
    assert_eq!(sleep_control_request(WAKE_STATUS), None);
}

#[test]
fn x2apic_ids_get_x2apic_entries() {
    let mut p = platform();
    p.cpus = vec![Cpu { apic_id: 0 }, Cpu { apic_id: 300 }];
    let t = build(&p);
    let madt = &t.get(TableKind::Madt).unwrap().bytes;
    let mut types = Vec::new();
    let mut at = 44;
    while at < madt.len() {
        types.push((madt[at], madt[at + 1]));
        if madt[at] == 9 {
            assert_eq!(le32(madt, at + 4), 300);
            assert_eq!(le32(madt, at + 8), 1, "enabled");
            assert_eq!(le32(madt, at + 12), 1, "UID");
        }
        at += usize::from(madt[at + 1]);
    }
    assert_eq!(at, madt.len());
    assert_eq!(
        types,
        vec![(0, 8), (9, 16), (1, 12), (2, 10), (4, 6), (0x0a, 12)]
    );
    let srat = &t.get(TableKind::Srat).unwrap().bytes;
    let mut kinds = Vec::new();
    let mut at = 48;
    while at < srat.len() {
        kinds.push(srat[at]);
        if srat[at] == 2 {
            assert_eq!(le32(srat, at + 8), 300);
        }
        at += usize::from(srat[at + 1]);
    }
    assert_eq!(kinds, vec![0, 2, 1]);
}

#[test]
fn interrupt_override_flags() {
    assert_eq!(InterruptOverride::TIMER.inti_flags(), 0b0101);
    let sci = InterruptOverride {
        isa_irq: 9,
        gsi: 9,
        polarity: Polarity::ActiveHigh,
        trigger: Trigger::Level,
    };
    assert_eq!(sci.inti_flags(), 0b1101);
    let low = InterruptOverride {
        polarity: Polarity::ActiveLow,
        trigger: Trigger::Conforming,
        ..sci
    };
    assert_eq!(low.inti_flags(), 0b0011);
}

#[test]
fn encodings_round_trip() {
    for w in Ways::ALL {
        assert_eq!(Ways::from_count(w.count()).unwrap(), w);
        assert_eq!(Ways::from_encoded(w.encoded()).unwrap(), w);
    }
    assert_eq!(Ways::ALL.map(Ways::encoded), [0, 1, 2, 3, 4, 8, 9, 10]);
    assert!(Ways::from_count(5).is_err());
    assert!(Ways::from_encoded(5).is_err());
    for (i, g) in Granularity::ALL.into_iter().enumerate() {
        assert_eq!(g.encoded() as usize, i);
        assert_eq!(g.bytes(), 256 << i);
        assert_eq!(Granularity::from_bytes(g.bytes()).unwrap(), g);
        assert_eq!(Granularity::from_encoded(g.encoded()).unwrap(), g);
    }
    assert!(Granularity::from_bytes(32 << 10).is_err());
    assert!(Granularity::from_encoded(7).is_err());
    assert_eq!(
        Restrictions {
            volatile: true,
            persistent: false
        }
        .bits(),
        0x6
    );
    assert_eq!(
        Restrictions {
            volatile: false,
            persistent: true
        }
        .bits(),
        0xa
    );
    assert_eq!(
        Restrictions {
            volatile: true,
            persistent: true
        }
        .bits(),
        0xe
    );
}

#[test]
fn no_host_bridges_means_no_cedt_and_no_cxl_root() {
    let mut p = platform();
    p.host_bridges.clear();
    p.windows.clear();
    let t = build(&p);
    assert!(t.get(TableKind::Cedt).is_none());
    let dsdt = &t.get(TableKind::Dsdt).unwrap().bytes;
    let has = |s: &[u8]| dsdt.windows(s.len()).any(|w| w == s);
    assert!(!has(b"ACPI0017"));
    assert!(!has(b"ACPI0016"));
    assert!(has(b"_S5_"));
    let xsdt = &t.get(TableKind::Xsdt).unwrap().bytes;
    assert_eq!(xsdt.len(), 36 + 8 * 5);
}

#[test]
fn ecam_above_4g_is_a_qword_consumer() {
    let mut p = platform();
    p.ecam.as_mut().unwrap().base = 0x80_0000_0000;
    let t = build(&p);
    let dsdt = &t.get(TableKind::Dsdt).unwrap().bytes;
    // QWord memory descriptor: tag, length 43, memory, consumer|min fixed|max fixed.
    let d = [0x8a, 43, 0, 0, 0x0d];
    let at = dsdt
        .windows(d.len())
        .position(|w| w == d)
        .expect("QWordMemory consumer");
    assert_eq!(le64(dsdt, at + 14), 0x80_0000_0000);
    assert_eq!(le64(dsdt, at + 22), 0x80_0fff_ffff);
    assert_eq!(le64(dsdt, at + 38), 0x1000_0000);
}

#[test]
fn mmio_below_4g_reaching_4g_uses_a_qword() {
    let mut p = platform();
    p.ram = vec![MemRange::new(0, 1 << 20)];
    p.ecam.as_mut().unwrap().base = 0x80_0000_0000;
    p.host_bridges[0].mmio = vec![MemRange::new(0, 1 << 32)];
    p.host_bridges[0].chbcr.base = 0x7f_0000_0000;
    p.host_bridges[1].chbcr.base = 0x7f_0001_0000;
    p.ram.clear();
    let t = build(&p);
    let dsdt = &t.get(TableKind::Dsdt).unwrap().bytes;
    // QWordMemory producer, min 0, max 0xffff_ffff (a DWord length cannot hold 4 GiB).
    let mut d = vec![0x8a, 43, 0, 0, 0x0c, 0x01];
    d.extend(0u64.to_le_bytes());
    d.extend(0u64.to_le_bytes());
    d.extend(0xffff_ffffu64.to_le_bytes());
    assert!(dsdt.windows(d.len()).any(|w| w == d));
}

fn err(p: &Platform) -> AcpiError {
    Layout::new(0x10_0000).build(p).unwrap_err()
}

#[test]
fn invalid_platforms_are_refused() {
    let mut p = platform();
    p.cpus.clear();
    assert!(matches!(err(&p), AcpiError::NoCpus));

    let mut p = platform();
    p.cpus[1].apic_id = 0;
    assert!(matches!(err(&p), AcpiError::DuplicateApicId { apic_id: 0 }));

    let mut p = platform();
    p.ram.push(MemRange::new(0x1000, 0));
    assert!(matches!(
        err(&p),
        AcpiError::EmptyRange {
            item: Item::Ram { index: 1 }
        }
    ));

    let mut p = platform();
    p.ram.push(MemRange::new(u64::MAX, 2));
    assert!(matches!(err(&p), AcpiError::RangeOverflow { .. }));

    let mut p = platform();
    p.windows[0].range.base = 0;
    assert!(matches!(
        err(&p),
        AcpiError::Overlap {
            first: Item::Ram { index: 0 },
            second: Item::Window { index: 0 }
        }
    ));

    let mut p = platform();
    p.host_bridges[1].mmio = p.host_bridges[0].mmio.clone();
    assert!(matches!(
        err(&p),
        AcpiError::Overlap {
            first: Item::Mmio { uid: 0 },
            second: Item::Mmio { uid: 1 }
        }
    ));

    let mut p = platform();
    p.host_bridges[0].mmio = vec![MemRange::new(0xd010_0000, 1 << 20)];
    assert!(matches!(err(&p), AcpiError::Overlap { .. }));

    let mut p = platform();
    p.ecam.as_mut().unwrap().base += 0x1000;
    assert!(matches!(err(&p), AcpiError::Ecam { .. }));

    let mut p = platform();
    p.host_bridges[1].uid = 0;
    p.windows.clear();
    assert!(matches!(err(&p), AcpiError::DuplicateUid { uid: 0 }));

    let mut p = platform();
    p.host_bridges[1].buses.start = 0x1f;
    assert!(matches!(
        err(&p),
        AcpiError::BusOverlap {
            first: 0,
            second: 1
        }
    ));

    let mut p = platform();
    p.ecam.as_mut().unwrap().buses.end = 0x1f;
    assert!(matches!(err(&p), AcpiError::BusRange { uid: 1, .. }));

    let mut p = platform();
    p.host_bridges[0].chbcr.size = 0x2000;
    assert!(matches!(err(&p), AcpiError::Chbcr { uid: 0, .. }));

    let mut p = platform();
    p.windows[0].range.base += 1 << 20;
    assert!(matches!(err(&p), AcpiError::WindowBase { index: 0, .. }));

    let mut p = platform();
    p.windows[0].range.size = 256 << 20;
    assert!(matches!(err(&p), AcpiError::WindowSize { ways: 2, .. }));

    let mut p = platform();
    p.windows[0].ways = Ways::X4;
    p.windows[0].range.size = 1 << 30;
    assert!(matches!(
        err(&p),
        AcpiError::TargetCount {
            targets: 2,
            ways: 4,
            ..
        }
    ));

    let mut p = platform();
    p.windows[0].targets[1] = 9;
    assert!(matches!(err(&p), AcpiError::UnknownTarget { uid: 9, .. }));

    let mut p = platform();
    p.windows[0].targets[1] = 0;
    assert!(matches!(err(&p), AcpiError::DuplicateTarget { uid: 0, .. }));

    let mut p = platform();
    p.windows[0].restrictions.volatile = false;
    assert!(matches!(err(&p), AcpiError::NoCapacityType { index: 0 }));

    let mut p = platform();
    p.windows[0].arithmetic = Arithmetic::Xor { maps: vec![] };
    assert!(matches!(
        err(&p),
        AcpiError::XorMaps {
            needed: 1,
            given: 0,
            ..
        }
    ));

    let mut p = platform();
    p.windows[0].arithmetic = Arithmetic::Xor { maps: vec![0x100] };
    let mut w = window((1 << 40) + (1 << 30), vec![1, 0]);
    w.arithmetic = Arithmetic::Xor { maps: vec![0x200] };
    p.windows.push(w);
    assert!(matches!(
        err(&p),
        AcpiError::XorMapConflict {
            first: 0,
            second: 1,
            granularity: Granularity::K4
        }
    ));

    let mut p = platform();
    p.serial = Some(SerialPort {
        io_base: 0x2f8,
        irq: 16,
    });
    assert!(matches!(err(&p), AcpiError::SerialIrq { irq: 16 }));

    let mut p = platform();
    p.host_bridges = (0..=256u32)
        .map(|i| HostBridge {
            uid: i,
            buses: BusRange { start: 0, end: 0 },
            chbcr: MemRange::new(0xd000_0000 + u64::from(i) * CHBCR_SIZE, CHBCR_SIZE),
            mmio: vec![],
        })
        .collect();
    assert!(matches!(
        err(&p),
        AcpiError::TooManyHostBridges { count: 257 }
    ));

    assert!(matches!(
        Layout::new(0x10_0008).build(&platform()).unwrap_err(),
        AcpiError::TableBase { base: 0x10_0008 }
    ));
    assert!(matches!(
        Layout::new(u64::MAX - 15).build(&platform()).unwrap_err(),
        AcpiError::TableOverflow { .. }
    ));
}

#[test]
fn xor_windows_of_one_granularity_share_one_cxims() {
    let mut p = platform();
    let maps4 = vec![1 << 12 | 1 << 26, 1 << 13 | 1 << 27];
    p.windows[0].arithmetic = Arithmetic::Xor {
        maps: maps4[..1].to_vec(),
    };
    p.host_bridges.push(hb(2, 0x30, 0xd012_0000));
    p.host_bridges.push(hb(3, 0x40, 0xd013_0000));
    let mut w = window((1 << 40) + (1 << 30), vec![0, 1, 2, 3]);
    w.arithmetic = Arithmetic::Xor {
        maps: maps4.clone(),
    };
    p.windows.push(w);
    let t = build(&p);
    let cedt = &t.get(TableKind::Cedt).unwrap().bytes;
    let mut at = 36;
    let mut cxims = Vec::new();
    while at < cedt.len() {
        let len = usize::from(u16::from_le_bytes([cedt[at + 2], cedt[at + 3]]));
        if cedt[at] == 2 {
            let n = usize::from(cedt[at + 7]);
            assert_eq!(len, 8 + 8 * n);
            cxims.push((
                cedt[at + 6],
                (0..n)
                    .map(|i| le64(cedt, at + 8 + 8 * i))
                    .collect::<Vec<_>>(),
            ));
        }
        at += len;
    }
    assert_eq!(at, cedt.len());
    assert_eq!(cxims, vec![(Granularity::K4.encoded(), maps4)]);
}

#[test]
fn without_an_ecam_the_mcfg_is_empty_and_nothing_reserves_one() {
    let eisa = [0x41u8, 0xd0, 0x0c, 0x02];
    let with = Layout::new(0xe_0000).build(&platform()).unwrap();
    let dsdt = &with.get(TableKind::Dsdt).unwrap().bytes;
    assert!(dsdt.windows(4).any(|w| w == eisa), "PNP0C02 with an ECAM");
    let mut p = platform();
    p.ecam = None;
    p.host_bridges.clear();
    p.windows.clear();
    let t = Layout::new(0xe_0000).build(&p).unwrap();
    let mcfg = &t.get(TableKind::Mcfg).unwrap().bytes;
    assert_eq!(mcfg.len(), 36 + 8, "header and reserved field only");
    let dsdt = &t.get(TableKind::Dsdt).unwrap().bytes;
    // PNP0C02 as an EISA id (the motherboard-resources device) must be absent.
    assert!(!dsdt.windows(4).any(|w| w == eisa), "no PNP0C02");
}
