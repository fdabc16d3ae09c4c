//! ACPI tables for cxlvm: one job — turn a plain-data description of a machine
//! ([`Platform`]) into ACPI tables, placed at a guest-physical base ([`Layout`]).
//!
//! Tables: RSDP (revision 2) → XSDT → FADT (hardware-reduced ACPI) → DSDT, and MADT, MCFG,
//! SRAT, SLIT and, when there are CXL host bridges, CEDT. The DSDT describes each CXL host
//! bridge as an `ACPI0016` device with `_OSC` for the PCIe and CXL UUIDs, the CXL root
//! (`ACPI0017`), COM1, the ECAM as a motherboard resource, and `\_S5` for power-off. AML comes
//! from `acpi_tables::aml`; every other table is written here, field by field (in particular the
//! CEDT: `acpi_tables`' own CEDT builder writes the Type-2 restriction bit for Type-3 memory and
//! short CHBS records).
//!
//! ```
//! use cxlvm_acpi::*;
//! let platform = Platform {
//!     cpus: vec![Cpu { apic_id: 0 }],
//!     ram: vec![MemRange::new(0, 256 << 20)],
//!     ioapic: IoApic { id: 0, address: 0xfec0_0000, gsi_base: 0 },
//!     overrides: vec![InterruptOverride::TIMER],
//!     ecam: Some(Ecam { base: 0xe000_0000, segment: 0, buses: BusRange { start: 0, end: 0xff } }),
//!     host_bridges: vec![HostBridge {
//!         uid: 0,
//!         buses: BusRange { start: 0x10, end: 0x1f },
//!         chbcr: MemRange::new(0xd010_0000, CHBCR_SIZE),
//!         mmio: vec![MemRange::new(0xc000_0000, 64 << 20)],
//!     }],
//!     windows: vec![FixedWindow {
//!         range: MemRange::new(1 << 40, 1 << 30),
//!         targets: vec![0],
//!         ways: Ways::X1,
//!         granularity: Granularity::K4,
//!         arithmetic: Arithmetic::Modulo,
//!         restrictions: Restrictions { volatile: true, persistent: false },
//!         qtg: 0,
//!     }],
//!     serial: Some(SerialPort::COM1),
//!     power: PowerRegisters::CXLVM,
//! };
//! let acpi = Layout::new(0x000e_0000).build(&platform).unwrap();
//! assert_eq!(acpi.rsdp_address(), 0xe0000);
//! assert!(acpi.tables().iter().all(|t| t.kind == TableKind::Rsdp || byte_sum(&t.bytes) == 0));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod dsdt;
mod error;
mod layout;
mod platform;
mod tables;
#[cfg(test)]
mod tests;

pub use dsdt::{CXL_OSC_UUID, PCIE_OSC_UUID, host_bridge_name, osc};
pub use error::{AcpiError, Item};
pub use layout::{AcpiTables, Layout, TABLE_ALIGN, Table, TableKind};
pub use platform::{
    Arithmetic, BusRange, CHBCR_SIZE, Cpu, Ecam, FixedWindow, Granularity, HostBridge,
    InterruptOverride, IoApic, LOCAL_APIC_ADDRESS, MAX_HOST_BRIDGES, MemRange, Platform, Polarity,
    PowerRegisters, Restrictions, S5_SLEEP_TYPE, SLEEP_ENABLE, SerialPort, Trigger, WAKE_STATUS,
    WINDOW_ALIGN, Ways, sleep_control_is_poweroff, sleep_control_request,
};
pub use tables::{
    CEDT_CFMWS, CEDT_CHBS, CEDT_CXIMS, CHBS_CXL20, CREATOR_ID, CREATOR_REVISION, FADT_FLAGS,
    FADT_LEN, HEADER_LEN, HOST_DOMAIN, IAPC_BOOT_ARCH, MADT_FLAGS, OEM_ID, OEM_REVISION,
    OEM_TABLE_ID, RSDP_LEN, SCI_INT, byte_sum, checksum,
};
