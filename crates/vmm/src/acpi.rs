//! The machine's ACPI description (`cxlvm-acpi` input) from what the VMM built.

use cxlvm_acpi::{
    AcpiTables, Arithmetic, BusRange, Cpu, Ecam, FixedWindow, Granularity, HostBridge,
    InterruptOverride, IoApic, Layout, MemRange, Platform, PowerRegisters, Restrictions,
    SerialPort, Ways,
};
use cxlvm_platform::CxlPlatform;

use crate::VmmError;

/// Buses each host bridge owns (its root bus and the 15 after it).
const BUSES_PER_HOST_BRIDGE: u8 = 16;

/// Describes a machine with `vcpus` vCPUs (APIC id = index), boot RAM `ram` (gpa, size), the
/// in-kernel IOAPIC at `ioapic`, COM1, the ACPI power registers and the CXL platform `cxl`.
pub(crate) fn platform(
    vcpus: u32,
    ram: &[(u64, u64)],
    ioapic: u64,
    cxl: Option<&CxlPlatform>,
) -> Result<Platform, VmmError> {
    let (ecam, host_bridges, windows) = match cxl {
        None => (None, Vec::new(), Vec::new()),
        Some(c) => {
            let hbs = c
                .host_bridges
                .iter()
                .map(|h| HostBridge {
                    uid: h.uid,
                    buses: BusRange {
                        start: h.root_bus,
                        end: h.root_bus.saturating_add(BUSES_PER_HOST_BRIDGE - 1),
                    },
                    chbcr: MemRange::new(h.chbcr, cxlvm_platform::COMPONENT_SIZE),
                    mmio: vec![MemRange::new(h.mmio.0, h.mmio.1)],
                })
                .collect();
            let wins = c
                .windows
                .iter()
                .map(|w| -> Result<FixedWindow, VmmError> {
                    Ok(FixedWindow {
                        range: MemRange::new(w.base, w.size),
                        targets: w.target_uids.clone(),
                        ways: Ways::from_encoded(w.ways_enc)?,
                        granularity: Granularity::from_bytes(w.granularity)?,
                        arithmetic: if w.xor_maps.is_empty() {
                            Arithmetic::Modulo
                        } else {
                            Arithmetic::Xor {
                                maps: w.xor_maps.clone(),
                            }
                        },
                        restrictions: Restrictions {
                            volatile: true,
                            persistent: true,
                        },
                        qtg: 0,
                    })
                })
                .collect::<Result<_, _>>()?;
            (
                Some(Ecam {
                    base: c.ecam.0,
                    segment: 0,
                    buses: BusRange {
                        start: 0,
                        end: ((c.ecam.1 >> 20).saturating_sub(1)).min(255) as u8,
                    },
                }),
                hbs,
                wins,
            )
        }
    };
    Ok(Platform {
        cpus: (0..vcpus).map(|apic_id| Cpu { apic_id }).collect(),
        ram: ram.iter().map(|&(b, s)| MemRange::new(b, s)).collect(),
        ioapic: IoApic {
            id: 0,
            address: ioapic as u32,
            gsi_base: 0,
        },
        overrides: vec![InterruptOverride::TIMER],
        ecam,
        host_bridges,
        windows,
        serial: Some(SerialPort::COM1),
        power: PowerRegisters::CXLVM,
    })
}

/// Builds the tables of `platform` at `base`.
pub(crate) fn tables(platform: &Platform, base: u64) -> Result<AcpiTables, VmmError> {
    Ok(Layout::new(base).build(platform)?)
}
