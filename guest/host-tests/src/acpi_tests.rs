//! The kit's ACPI reader and checker against tables `cxlvm-acpi` builds: a platform like the one
//! cxlvm gives a test guest reads back exactly; corrupted tables are refused with the error
//! that names the problem, and tables that describe another platform give the exact
//! mismatches.

use cxlvm_acpi as build;

use crate::acpi::check::{
    BootEcam, BootHostBridge, BootWindow, Mismatch, Platform, Summary, abi_xor_map, check,
    uncovered,
};
use crate::acpi::parse::{
    AcpiError, Area, CedtEntry, Chbs, Madt, MadtEntry, McfgEntry, Processor, Sdt, Signature,
    SratEntry, Tables, byte_sum, ways_of, xor_maps_needed,
};

/// Where the tables go (as on cxlvm's machines).
const BASE: u64 = 0xe_0000;
const RAM: u64 = 256 << 20;
const W0: u64 = 1 << 40;
const W1: u64 = W0 + (512 << 20);
const W2: u64 = W1 + (256 << 20);

/// 2 vCPUs, 256 MiB of RAM, host bridges with UIDs 0 and 7, a 2-way modulo window over both,
/// a 1-way window on UID 7 and a 2-way XOR window over both (the ABI's maps).
fn sample() -> build::Platform {
    // Each host bridge's half of a 1 GiB aperture.
    let aperture = [
        build::MemRange::new(0x40_0000_0000, 512 << 20),
        build::MemRange::new(0x40_2000_0000, 512 << 20),
    ];
    let hb = |uid, bus: u8, chbcr: u64, mmio| build::HostBridge {
        uid,
        buses: build::BusRange {
            start: bus,
            end: bus + 15,
        },
        chbcr: build::MemRange::new(chbcr, build::CHBCR_SIZE),
        mmio: vec![mmio],
    };
    let window =
        |base, size, targets: Vec<u32>, ways, granularity, arithmetic| build::FixedWindow {
            range: build::MemRange::new(base, size),
            targets,
            ways,
            granularity,
            arithmetic,
            restrictions: build::Restrictions {
                volatile: true,
                persistent: true,
            },
            qtg: 0,
        };
    build::Platform {
        cpus: vec![build::Cpu { apic_id: 0 }, build::Cpu { apic_id: 1 }],
        ram: vec![build::MemRange::new(0, RAM)],
        ioapic: build::IoApic {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0,
        },
        overrides: vec![build::InterruptOverride::TIMER],
        ecam: Some(build::Ecam {
            base: 0xe000_0000,
            segment: 0,
            buses: build::BusRange { start: 0, end: 255 },
        }),
        host_bridges: vec![
            hb(0, 0x10, 0xd010_0000, aperture[0]),
            hb(7, 0x20, 0xd011_0000, aperture[1]),
        ],
        windows: vec![
            window(
                W0,
                512 << 20,
                vec![0, 7],
                build::Ways::X2,
                build::Granularity::K4,
                build::Arithmetic::Modulo,
            ),
            window(
                W1,
                256 << 20,
                vec![7],
                build::Ways::X1,
                build::Granularity::B256,
                build::Arithmetic::Modulo,
            ),
            window(
                W2,
                512 << 20,
                vec![7, 0],
                build::Ways::X2,
                build::Granularity::K1,
                build::Arithmetic::Xor {
                    maps: vec![abi_xor_map(2, 1, 0)],
                },
            ),
        ],
        serial: Some(build::SerialPort::COM1),
        power: build::PowerRegisters::CXLVM,
    }
}

/// The tables of `p` at [`BASE`].
fn blob(p: &build::Platform) -> Vec<u8> {
    build::Layout::new(BASE).build(p).unwrap().blob().to_vec()
}

const HBS: [BootHostBridge; 2] = [
    BootHostBridge {
        uid: 0,
        chbcr: 0xd010_0000,
        size: 0x1_0000,
    },
    BootHostBridge {
        uid: 7,
        chbcr: 0xd011_0000,
        size: 0x1_0000,
    },
];

/// The boot info of the machine [`sample`] describes, handed to `f` (with the tables entry
/// covering `len` bytes).
fn with_boot<R>(len: usize, f: impl FnOnce(&mut Platform<'_>) -> R) -> R {
    let windows = [
        BootWindow {
            base: W0,
            size: 512 << 20,
            ways_enc: 1,
            gran_enc: 4,
            arithmetic: 0,
            targets: &[0, 7],
        },
        BootWindow {
            base: W1,
            size: 256 << 20,
            ways_enc: 0,
            gran_enc: 0,
            arithmetic: 0,
            targets: &[7],
        },
        BootWindow {
            base: W2,
            size: 512 << 20,
            ways_enc: 1,
            gran_enc: 2,
            arithmetic: 1,
            targets: &[7, 0],
        },
    ];
    let mut p = Platform {
        vcpus: 2,
        ram: &[(0, RAM)],
        acpi_memory: &[(BASE, 0x2_0000)],
        tables: (BASE, len as u64),
        ecam: Some(BootEcam {
            bus0: 0xe000_0000,
            segment: 0,
            start_bus: 0,
            end_bus: 255,
        }),
        host_bridges: &HBS,
        windows: &windows,
    };
    f(&mut p)
}

/// Loads `bytes` as tables at [`BASE`] and checks them against `p`: the summary and every
/// mismatch in order.
fn run(bytes: &[u8], p: &Platform<'_>) -> (Summary, Vec<Mismatch>) {
    let tables = Tables::load(Area::new(BASE, bytes), BASE).expect("tables load");
    let mut found = Vec::new();
    let s = check(&tables, p, &mut |m| found.push(m)).expect("tables parse");
    assert_eq!(s.mismatches, found.len());
    (s, found)
}

/// Offset of the table with `sig` in a blob at [`BASE`].
fn offset(bytes: &[u8], sig: Signature) -> usize {
    let t = Tables::load(Area::new(BASE, bytes), BASE).unwrap();
    (t.find(sig).unwrap().address() - BASE) as usize
}

/// Rewrites the byte at `at` of the table at `table` and fixes the table's checksum.
fn patch(bytes: &mut [u8], table: usize, at: usize, value: u8) {
    bytes[table + at] = value;
    let len = u32::from_le_bytes(bytes[table + 4..table + 8].try_into().unwrap()) as usize;
    bytes[table + 9] = 0;
    bytes[table + 9] = byte_sum(&bytes[table..table + len]).wrapping_neg();
}

#[test]
fn cxlvm_tables_describe_exactly_the_sample_platform() {
    let bytes = blob(&sample());
    let (s, found) = with_boot(bytes.len(), |p| run(&bytes, p));
    assert_eq!(found, []);
    assert_eq!(
        s,
        Summary {
            // XSDT, FADT, MADT, MCFG, SRAT, SLIT, CEDT, DSDT.
            tables: 8,
            cpus: 2,
            local_apic: 0xfee0_0000,
            ioapic: Some(0xfec0_0000),
            ecam: Some(McfgEntry {
                base: 0xe000_0000,
                segment: 0,
                start_bus: 0,
                end_bus: 255
            }),
            srat_cpus: 2,
            srat_memory: 1,
            host_bridges: 2,
            windows: 3,
            xor_maps: 1,
            mismatches: 0,
        }
    );
}

#[test]
fn the_reader_decodes_every_structure() {
    let bytes = blob(&sample());
    let t = Tables::load(Area::new(BASE, &bytes), BASE).unwrap();
    assert_eq!(t.rsdp().revision, 2);
    assert_eq!(&t.rsdp().oem_id, b"CXLVM ");
    assert_eq!(t.rsdp().xsdt, t.xsdt().address());
    let sigs: Vec<String> = t.listed().map(|s| s.signature().to_string()).collect();
    assert_eq!(sigs, ["FACP", "APIC", "MCFG", "SRAT", "SLIT", "CEDT"]);
    assert_eq!(t.dsdt().unwrap().signature(), Signature::DSDT);

    let madt = t.madt().unwrap().unwrap();
    let entries: Vec<MadtEntry> = madt.entries().collect();
    assert_eq!(
        entries[..3],
        [
            MadtEntry::LocalApic {
                uid: 0,
                apic_id: 0,
                flags: 1
            },
            MadtEntry::LocalApic {
                uid: 1,
                apic_id: 1,
                flags: 1
            },
            MadtEntry::IoApic {
                id: 0,
                address: 0xfec0_0000,
                gsi_base: 0
            },
        ]
    );
    assert!(entries.contains(&MadtEntry::InterruptOverride {
        bus: 0,
        source: 0,
        gsi: 2,
        flags: 5
    }));
    assert!(entries.contains(&MadtEntry::LocalApicNmi {
        uid: 0xff,
        flags: 0,
        lint: 1
    }));
    assert_eq!(madt.flags(), 1);

    let srat: Vec<SratEntry> = t.srat().unwrap().unwrap().entries().collect();
    assert_eq!(
        srat,
        [
            SratEntry::ProcessorApic {
                domain: 0,
                apic_id: 0,
                flags: 1
            },
            SratEntry::ProcessorApic {
                domain: 0,
                apic_id: 1,
                flags: 1
            },
            SratEntry::Memory {
                domain: 0,
                base: 0,
                size: RAM,
                flags: 1
            },
        ]
    );

    let cedt = t.cedt().unwrap().unwrap();
    let chbs: Vec<Chbs> = cedt.host_bridges().collect();
    assert_eq!(
        chbs,
        [
            Chbs {
                uid: 0,
                version: 1,
                base: 0xd010_0000,
                length: 0x1_0000
            },
            Chbs {
                uid: 7,
                version: 1,
                base: 0xd011_0000,
                length: 0x1_0000
            },
        ]
    );
    let w: Vec<_> = cedt.windows().collect();
    assert_eq!(w.len(), 3);
    assert_eq!(
        (w[0].base, w[0].size, w[0].eniw, w[0].hbig),
        (W0, 512 << 20, 1, 4)
    );
    assert_eq!(w[0].targets().collect::<Vec<_>>(), [0, 7]);
    assert_eq!(w[0].restrictions, 0b1110, "Type-3, volatile, persistent");
    assert_eq!((w[1].ways(), w[1].hbig, w[1].target(0)), (1, 0, Some(7)));
    assert_eq!(w[1].target(1), None);
    assert_eq!((w[2].arithmetic, w[2].hbig), (1, 2));
    let x: Vec<_> = cedt.xor_maps().collect();
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].hbig, 2);
    assert_eq!(x[0].maps().collect::<Vec<_>>(), [abi_xor_map(2, 1, 0)]);
    assert_eq!(abi_xor_map(2, 1, 0), 1 << 10 | 1 << 23);
    assert!(matches!(cedt.entries().next(), Some(CedtEntry::Chbs(_))));
}

#[test]
fn x2apic_entries_are_read() {
    let mut p = sample();
    p.cpus = vec![build::Cpu { apic_id: 0 }, build::Cpu { apic_id: 300 }];
    let bytes = blob(&p);
    let t = Tables::load(Area::new(BASE, &bytes), BASE).unwrap();
    let madt = t.madt().unwrap().unwrap();
    assert!(madt.entries().any(|e| e
        == MadtEntry::LocalX2Apic {
            apic_id: 300,
            flags: 1,
            uid: 1
        }));
    assert!(
        madt.entries()
            .any(|e| matches!(e, MadtEntry::LocalX2ApicNmi { uid: u32::MAX, .. }))
    );
    let srat = t.srat().unwrap().unwrap();
    assert_eq!(
        srat.processors().collect::<Vec<_>>(),
        [
            Processor {
                apic_id: 0,
                enabled: true
            },
            Processor {
                apic_id: 300,
                enabled: true
            }
        ]
    );
    // The ABI gives vCPU 1 APIC id 1: the checker sees a vCPU missing and a stranger.
    let (_, found) = with_boot(bytes.len(), |b| run(&bytes, b));
    assert_eq!(
        found,
        [
            Mismatch::CpuMissing { apic_id: 1 },
            Mismatch::CpuExtra { apic_id: 300 },
            Mismatch::SratCpuMissing { apic_id: 1 },
            Mismatch::SratCpuExtra { apic_id: 300 },
        ]
    );
}

#[test]
fn a_bad_checksum_anywhere_is_refused_by_name() {
    let good = blob(&sample());
    let load = |b: &[u8]| Tables::load(Area::new(BASE, b), BASE).map(|_| ());
    for sig in [
        Signature::XSDT,
        Signature::FADT,
        Signature::MADT,
        Signature::MCFG,
        Signature::SRAT,
        Signature::SLIT,
        Signature::CEDT,
        Signature::DSDT,
    ] {
        let t = Tables::load(Area::new(BASE, &good), BASE).unwrap();
        let addr = match sig {
            Signature::XSDT => t.xsdt().address(),
            Signature::DSDT => t.dsdt().unwrap().address(),
            s => t.find(s).unwrap().address(),
        };
        let mut bad = good.clone();
        // The last byte of the table.
        let len = t
            .listed()
            .chain([t.xsdt(), t.dsdt().unwrap()])
            .find(|x| x.address() == addr)
            .unwrap()
            .length();
        let last = (addr - BASE) as usize + len - 1;
        bad[last] = bad[last].wrapping_add(0x40);
        assert_eq!(
            load(&bad),
            Err(AcpiError::Checksum {
                signature: sig,
                addr,
                sum: 0x40
            }),
            "{sig}"
        );
    }
    // The RSDP: byte 0-19 checksum, then the extended one.
    let mut bad = good.clone();
    bad[10] ^= 1;
    assert_eq!(load(&bad), Err(AcpiError::RsdpChecksum { sum: 1 }));
    let mut bad = good.clone();
    bad[33] = 1;
    assert_eq!(load(&bad), Err(AcpiError::RsdpExtendedChecksum { sum: 1 }));
    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(load(&bad), Err(AcpiError::RsdpSignature { addr: BASE }));
}

#[test]
fn pointers_and_lengths_must_stay_inside_the_tables_entry() {
    let good = blob(&sample());
    let load = |b: &[u8]| Tables::load(Area::new(BASE, b), BASE).map(|_| ());
    // The entry is cut short: the CEDT (last) no longer fits.
    let t = Tables::load(Area::new(BASE, &good), BASE).unwrap();
    let cedt = t.find(Signature::CEDT).unwrap();
    let short = &good[..(cedt.address() - BASE) as usize + 40];
    assert_eq!(
        load(short),
        Err(AcpiError::OutsideArea {
            what: Signature::CEDT,
            addr: cedt.address(),
            len: cedt.length() as u64
        })
    );
    // An XSDT entry pointing elsewhere.
    let mut bad = good.clone();
    let x = (t.xsdt().address() - BASE) as usize;
    patch(&mut bad, x, 36 + 7, 0x10);
    assert!(matches!(
        load(&bad),
        Err(AcpiError::OutsideArea {
            what: Signature([b'?', b'?', b'?', b'?']),
            ..
        })
    ));
    // The RSDP names a table that is not an XSDT.
    let mut bad = good.clone();
    let fadt = t.find(Signature::FADT).unwrap().address();
    bad[24..32].copy_from_slice(&fadt.to_le_bytes());
    bad[32] = 0;
    bad[32] = byte_sum(&bad[..36]).wrapping_neg();
    assert_eq!(
        load(&bad),
        Err(AcpiError::Signature {
            addr: fadt,
            expected: Signature::XSDT,
            found: Signature::FADT
        })
    );
    // The XSDT lists the MADT twice.
    let mut bad = good.clone();
    let madt = t.find(Signature::MADT).unwrap().address();
    for (i, b) in madt.to_le_bytes().into_iter().enumerate() {
        patch(&mut bad, x, 36 + 8 * 2 + i, b);
    }
    assert_eq!(
        load(&bad),
        Err(AcpiError::DuplicateTable {
            signature: Signature::MADT
        })
    );
}

/// A table with `sig` and `body` at [`BASE`], checksum right.
fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut t = sig.to_vec();
    t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
    t.extend_from_slice(&[1, 0]);
    t.extend_from_slice(b"CXLVM CXLVM   ");
    t.extend_from_slice(&[0; 12]);
    t.extend_from_slice(body);
    t[9] = byte_sum(&t).wrapping_neg();
    t
}

#[test]
fn malformed_structures_are_refused() {
    let parse = |sig: &[u8; 4], body: &[u8]| {
        let t = table(sig, body);
        let sdt = Sdt::parse(&Area::new(BASE, &t), BASE).unwrap();
        match sig {
            b"CEDT" => crate::acpi::parse::Cedt::new(sdt).map(|_| ()),
            b"APIC" => Madt::new(sdt).map(|_| ()),
            b"SRAT" => crate::acpi::parse::Srat::new(sdt).map(|_| ()),
            _ => crate::acpi::parse::Mcfg::new(sdt).map(|_| ()),
        }
    };
    // acpi_tables' CHBS: 24 bytes.
    let mut chbs = vec![0u8, 0, 24, 0];
    chbs.resize(24, 0);
    assert_eq!(
        parse(b"CEDT", &chbs),
        Err(AcpiError::StructureLength {
            table: Signature::CEDT,
            offset: 36,
            kind: 0,
            length: 24
        })
    );
    // A CFMWS of 2 ways with one target.
    let mut cfmws = vec![1u8, 0, 40, 0];
    cfmws.resize(40, 0);
    cfmws[24] = 1;
    assert_eq!(
        parse(b"CEDT", &cfmws),
        Err(AcpiError::StructureLength {
            table: Signature::CEDT,
            offset: 36,
            kind: 1,
            length: 40
        })
    );
    cfmws[24] = 5;
    assert_eq!(
        parse(b"CEDT", &cfmws),
        Err(AcpiError::CfmwsWays {
            offset: 36,
            eniw: 5
        })
    );
    // A CXIMS whose NIXM promises more maps than it has.
    let mut cxims = vec![2u8, 0, 16, 0, 0, 0, 4, 2];
    cxims.resize(16, 0);
    assert!(parse(b"CEDT", &cxims).is_err());
    // A structure running past the table, or of length 0.
    assert!(parse(b"APIC", &[0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]).is_err());
    assert!(parse(b"APIC", &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    // A Local APIC entry of 6 bytes.
    assert_eq!(
        parse(b"APIC", &[0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0]),
        Err(AcpiError::StructureLength {
            table: Signature::MADT,
            offset: 44,
            kind: 0,
            length: 6
        })
    );
    // A memory affinity entry of 24 bytes.
    let mut srat = vec![0u8; 12];
    srat.extend_from_slice(&[1, 24]);
    srat.resize(12 + 24, 0);
    assert!(parse(b"SRAT", &srat).is_err());
    // An MCFG with half an entry.
    assert!(parse(b"MCFG", &[0; 16]).is_err());
    assert!(parse(b"MCFG", &[0; 24]).is_ok());
    // A table of the wrong kind.
    assert_eq!(
        parse(b"APIC", &[0; 8]).and_then(|_| {
            let t = table(b"SRAT", &[0; 12]);
            Madt::new(Sdt::parse(&Area::new(BASE, &t), BASE).unwrap()).map(|_| ())
        }),
        Err(AcpiError::Signature {
            addr: BASE,
            expected: Signature::MADT,
            found: Signature::SRAT
        })
    );
}

#[test]
fn a_cfmws_that_is_not_the_window_gives_typed_mismatches() {
    let good = blob(&sample());
    let cedt = offset(&good, Signature::CEDT);
    // Structures: CHBS 0 (36), CHBS 7 (68), CFMWS W0 (100, 44 bytes), CFMWS W1 (144, 40 bytes),
    // CFMWS W2 (184), CXIMS.
    let w0 = 36 + 2 * 32;
    let w1 = w0 + 44;
    let mut bad = good.clone();
    // W0: targets swapped (7, 0), size 1 GiB (byte 3 of the size: 0x20 -> 0x40), HBIG 5.
    patch(&mut bad, cedt, w0 + 36, 7);
    patch(&mut bad, cedt, w0 + 40, 0);
    patch(&mut bad, cedt, w0 + 16 + 3, 0x40);
    patch(&mut bad, cedt, w0 + 28, 5);
    // W1: XOR, Type-2 restriction.
    patch(&mut bad, cedt, w1 + 25, 1);
    patch(&mut bad, cedt, w1 + 32, 0b0111);
    let (s, found) = with_boot(bad.len(), |p| run(&bad, p));
    assert_eq!(
        found,
        [
            Mismatch::WindowSize {
                index: 0,
                acpi: 1 << 30,
                boot: 512 << 20
            },
            Mismatch::WindowGranularity {
                index: 0,
                acpi: 5,
                boot: 4
            },
            Mismatch::WindowTarget {
                index: 0,
                position: 0,
                acpi: Some(7),
                boot: Some(0)
            },
            Mismatch::WindowTarget {
                index: 0,
                position: 1,
                acpi: Some(0),
                boot: Some(7)
            },
            Mismatch::WindowArithmetic {
                index: 1,
                acpi: 1,
                boot: 0
            },
            Mismatch::WindowRestrictions {
                index: 1,
                bits: 0b0111
            },
        ]
    );
    assert_eq!(s.mismatches, 6);
}

#[test]
fn windows_and_host_bridges_the_boot_info_does_not_have() {
    let bytes = blob(&sample());
    with_boot(bytes.len(), |p| {
        // The boot info names UID 3 for the second host bridge, a CHBCR elsewhere for UID 0,
        // and moves window 1.
        let hbs = [
            BootHostBridge {
                chbcr: 0xd020_0000,
                ..HBS[0]
            },
            BootHostBridge { uid: 3, ..HBS[1] },
        ];
        let mut windows = p.windows.to_vec();
        windows[1].base = W1 + (1 << 30);
        windows[1].targets = &[3];
        let q = Platform {
            host_bridges: &hbs,
            windows: &windows,
            ..*p
        };
        let (_, found) = run(&bytes, &q);
        assert_eq!(
            found,
            [
                Mismatch::HostBridgeBase {
                    uid: 0,
                    acpi: 0xd010_0000,
                    boot: 0xd020_0000
                },
                Mismatch::HostBridgeMissing { uid: 3 },
                Mismatch::HostBridgeExtra { uid: 7 },
                Mismatch::WindowMissing {
                    index: 1,
                    base: W1 + (1 << 30)
                },
                Mismatch::WindowExtra { base: W1 },
            ]
        );
    });
}

#[test]
fn xor_maps_must_be_the_abis() {
    let good = blob(&sample());
    let cedt = offset(&good, Signature::CEDT);
    let t = Tables::load(Area::new(BASE, &good), BASE).unwrap();
    let len = t.find(Signature::CEDT).unwrap().length();
    // The CXIMS is the last structure: its only map is the table's last 8 bytes.
    let mut bad = good.clone();
    patch(&mut bad, cedt, len - 8, 0x01);
    let (_, found) = with_boot(bad.len(), |p| run(&bad, p));
    assert_eq!(
        found,
        [Mismatch::XorMap {
            index: 2,
            map: 0,
            acpi: abi_xor_map(2, 1, 0) | 1,
            boot: abi_xor_map(2, 1, 0)
        }]
    );
    // Its HBIG names another granularity: the window has no maps.
    let mut bad = good.clone();
    patch(&mut bad, cedt, len - 16 + 6, 3);
    let (_, found) = with_boot(bad.len(), |p| run(&bad, p));
    assert_eq!(
        found,
        [Mismatch::XorMapsMissing {
            index: 2,
            needed: 1,
            found: 0
        }]
    );
}

#[test]
fn cpus_ram_ecam_and_the_tables_entry_are_compared() {
    let bytes = blob(&sample());
    with_boot(bytes.len(), |p| {
        p.vcpus = 3;
        p.ram = &[(0, RAM), (1 << 32, 1 << 30)];
        p.acpi_memory = &[];
        p.ecam = Some(BootEcam {
            end_bus: 127,
            ..p.ecam.unwrap()
        });
        let (_, found) = run(&bytes, p);
        assert_eq!(
            found,
            [
                Mismatch::TablesNotInAcpiMemory {
                    base: BASE,
                    size: bytes.len() as u64
                },
                Mismatch::CpuMissing { apic_id: 2 },
                Mismatch::McfgEcam {
                    acpi: McfgEntry {
                        base: 0xe000_0000,
                        segment: 0,
                        start_bus: 0,
                        end_bus: 255
                    },
                    boot: BootEcam {
                        bus0: 0xe000_0000,
                        segment: 0,
                        start_bus: 0,
                        end_bus: 127
                    }
                },
                Mismatch::SratCpuMissing { apic_id: 2 },
                Mismatch::SratRamUncovered {
                    base: 1 << 32,
                    size: 1 << 30
                },
            ]
        );
    });
    with_boot(bytes.len(), |p| {
        // Less RAM than the SRAT says, a window inside it, no ECAM.
        p.vcpus = 1;
        p.ram = &[(0, RAM / 2)];
        p.ecam = None;
        let mut windows = p.windows.to_vec();
        windows.push(BootWindow {
            base: RAM / 2,
            size: RAM / 2,
            ..windows[1]
        });
        let q = Platform {
            windows: &windows,
            ..*p
        };
        let (_, found) = run(&bytes, &q);
        assert_eq!(
            found,
            [
                Mismatch::CpuExtra { apic_id: 1 },
                Mismatch::McfgCount {
                    count: 1,
                    expected: 0
                },
                Mismatch::SratCpuExtra { apic_id: 1 },
                Mismatch::SratMemoryNotRam { base: 0, size: RAM },
                Mismatch::SratMemoryOverlapsWindow {
                    base: 0,
                    size: RAM,
                    window: 3
                },
                Mismatch::WindowMissing {
                    index: 3,
                    base: RAM / 2
                },
            ]
        );
    });
}

#[test]
fn a_platform_without_cxl_has_no_cedt() {
    let mut p = sample();
    p.host_bridges.clear();
    p.windows.clear();
    let bytes = blob(&p);
    let t = Tables::load(Area::new(BASE, &bytes), BASE).unwrap();
    assert!(t.find(Signature::CEDT).is_none());
    with_boot(bytes.len(), |b| {
        b.host_bridges = &[];
        b.windows = &[];
        let (s, found) = run(&bytes, b);
        assert_eq!(found, []);
        assert_eq!((s.host_bridges, s.windows, s.tables), (0, 0, 7));
        // The boot info has host bridges: the CEDT is missing.
        b.host_bridges = &HBS;
        let (_, found) = run(&bytes, b);
        assert_eq!(
            found,
            [Mismatch::MissingTable {
                signature: Signature::CEDT
            }]
        );
    });
}

#[test]
fn coverage_and_encodings() {
    let r = [(0x1000, 0x1000), (0x2000, 0x1000), (0x5000, 0x1000)];
    assert_eq!(uncovered(0x1000, 0x2000, r.iter().copied()), None);
    assert_eq!(
        uncovered(0x1000, 0x5000, r.iter().copied()),
        Some((0x3000, 0x2000))
    );
    assert_eq!(uncovered(0, 0x1000, r.iter().copied()), Some((0, 0x1000)));
    assert_eq!(uncovered(0x1800, 0, r.iter().copied()), None);
    assert_eq!(
        uncovered(0x5800, 0x1000, r.iter().copied()),
        Some((0x6000, 0x800))
    );
    let ways: Vec<_> = (0..12).map(ways_of).collect();
    assert_eq!(
        ways,
        [
            Some(1),
            Some(2),
            Some(4),
            Some(8),
            Some(16),
            None,
            None,
            None,
            Some(3),
            Some(6),
            Some(12),
            None
        ]
    );
    let maps: Vec<_> = [1, 2, 3, 4, 6, 8, 12, 16]
        .into_iter()
        .map(xor_maps_needed)
        .collect();
    assert_eq!(maps, [0, 1, 0, 2, 1, 3, 2, 4]);
    assert_eq!(Signature(*b"AB\0D").to_string(), "AB?D");
    // The ABI's maps: bit 8 + g + i and bit 8 + g + k + 12 + i.
    assert_eq!(abi_xor_map(4, 2, 1), 1 << 13 | 1 << 27);
}
