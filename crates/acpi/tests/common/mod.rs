//! The sample platform the tests share: 2 vCPUs, 2 CXL host bridges, a 2-way modulo window
//! over both, a 2-way XOR window over both, a persistent-only window on one, COM1.
#![allow(dead_code)]

use cxlvm_acpi::*;

/// Where the sample's tables go.
pub const BASE: u64 = 0x000e_0000;

/// cxlvm's XOR maps for 2^k ways at granularity encoding g (docs/guest-abi.md).
pub fn xor_maps(k: u32, g: u32) -> Vec<u64> {
    (0..k)
        .map(|i| 1u64 << (8 + g + i) | 1u64 << (8 + g + k + 12 + i))
        .collect()
}

pub fn sample() -> Platform {
    // Each host bridge's share of a 256 MiB aperture below 4 GiB and of a 1 GiB one above.
    let apertures = [
        MemRange::new(0xc000_0000, 128 << 20),
        MemRange::new(0xc800_0000, 128 << 20),
    ];
    let high = [
        MemRange::new(0x40_0000_0000, 512 << 20),
        MemRange::new(0x40_2000_0000, 512 << 20),
    ];
    Platform {
        cpus: vec![Cpu { apic_id: 0 }, Cpu { apic_id: 1 }],
        ram: vec![
            MemRange::new(0, 0xc000_0000),
            MemRange::new(1 << 32, 1 << 30),
        ],
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
        host_bridges: vec![
            HostBridge {
                uid: 0,
                buses: BusRange {
                    start: 0x10,
                    end: 0x1f,
                },
                chbcr: MemRange::new(0xd010_0000, CHBCR_SIZE),
                mmio: vec![apertures[0], high[0]],
            },
            HostBridge {
                uid: 7,
                buses: BusRange {
                    start: 0x20,
                    end: 0x2f,
                },
                chbcr: MemRange::new(0xd011_0000, CHBCR_SIZE),
                mmio: vec![apertures[1], high[1]],
            },
        ],
        windows: vec![
            FixedWindow {
                range: MemRange::new(1 << 40, 2 << 30),
                targets: vec![0, 7],
                ways: Ways::X2,
                granularity: Granularity::K4,
                arithmetic: Arithmetic::Modulo,
                restrictions: Restrictions {
                    volatile: true,
                    persistent: false,
                },
                qtg: 0,
            },
            FixedWindow {
                range: MemRange::new((1 << 40) + (2 << 30), 1 << 30),
                targets: vec![7, 0],
                ways: Ways::X2,
                granularity: Granularity::B256,
                arithmetic: Arithmetic::Xor {
                    maps: xor_maps(1, 0),
                },
                restrictions: Restrictions {
                    volatile: true,
                    persistent: false,
                },
                qtg: 1,
            },
            FixedWindow {
                range: MemRange::new((1 << 40) + (4 << 30), 512 << 20),
                targets: vec![7],
                ways: Ways::X1,
                granularity: Granularity::K16,
                arithmetic: Arithmetic::Modulo,
                restrictions: Restrictions {
                    volatile: false,
                    persistent: true,
                },
                qtg: 2,
            },
        ],
        serial: Some(SerialPort::COM1),
        power: PowerRegisters::CXLVM,
    }
}

pub fn build() -> AcpiTables {
    Layout::new(BASE)
        .build(&sample())
        .expect("sample platform builds")
}
