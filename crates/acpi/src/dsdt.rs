//! The DSDT, in AML written with `acpi_tables::aml`:
//!
//! ```text
//! Scope (\_SB) {
//!     Device (HBxx) {            // per CXL host bridge, xx = its index in hex
//!         _HID "ACPI0016", _CID {PNP0A08, PNP0A03}, _UID <CHBS UID>, _SEG, _BBN <root bus>
//!         _PXM 0                 // the vCPUs' and boot RAM's proximity domain (SRAT)
//!         _CRS { WordBusNumber <buses>, DWord/QWordMemory <each MMIO range> }
//!         Method (_OSC, 4, Serialized) { ... }   // PCIe and CXL UUIDs
//!     }
//!     Device (CXLR) { _HID "ACPI0017" }          // CXL root (with host bridges only)
//!     Device (COM1) { _HID PNP0501, _UID 1, _CRS { IO <base> len 8, IRQNoFlags <irq> } }
//!     Device (MBRS) { _HID PNP0C02, _UID 0, _CRS { the ECAM } }   // motherboard resources
//! }
//! Name (\_S5, Package { 5, 0, 0, 0 })
//! ```
//!
//! `_CRS` of a host bridge holds its buses and the memory it decodes for BARs, never a fixed
//! memory window or a CHBCR (Linux inserts `_CRS` windows into the resource tree and carves
//! regions and CHBCR mappings out of free space).

use acpi_tables::Aml;
use acpi_tables::AmlSink;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, And, Arg, CreateDWordField, Device, EISAName, Equal, IO,
    If, LessThan, Local, Memory32Fixed, Method, Multiply, Name, NotEqual, Or, Package, Path,
    ResourceTemplate, Return, Scope, SizeOf, Store, Uuid, ZERO,
};

use crate::platform::{HostBridge, MemRange, Platform, S5_SLEEP_TYPE, SerialPort};
use crate::tables::{HOST_DOMAIN, sdt};

/// `_OSC` UUID of PCI host bridges (PCI Firmware Specification).
pub const PCIE_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// `_OSC` UUID of CXL host bridges (CXL 2.0 and later).
pub const CXL_OSC_UUID: &str = "68F2D50B-C469-4D8A-BD3D-941A103FD3FC";

/// `_OSC` status bits (first capabilities dword, returned).
pub mod osc {
    /// Query: the OS only asks what it would get.
    pub const QUERY: u32 = 1 << 0;
    /// The call failed (here: capabilities buffer shorter than the UUID needs).
    pub const FAILURE: u32 = 1 << 1;
    /// Unrecognized UUID.
    pub const UNRECOGNIZED_UUID: u32 = 1 << 2;
    /// Unrecognized revision (both UUIDs are revision 1).
    pub const UNRECOGNIZED_REVISION: u32 = 1 << 3;
    /// Some capability asked for was masked off.
    pub const CAPABILITIES_MASKED: u32 = 1 << 4;

    /// PCIe control granted (third dword): only "PCI Express Capability Structure control"
    /// (bit 4), which Linux needs before it asks for anything. cxlvm has no native hot-plug
    /// (bits 0, 1), no PME (2), no AER (3), no LTR (5) and no DPC (7).
    pub const PCIE_CONTROL_GRANTED: u32 = 1 << 4;
    /// CXL control granted (fifth dword): nothing. Bit 0, CXL memory error reporting, would
    /// oblige cxlvm to implement the event-record and event-interrupt mailbox flow.
    pub const CXL_CONTROL_GRANTED: u32 = 0;
}

/// AML already serialised.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

/// `IRQNoFlags () {irq}`: the small IRQ descriptor (edge, active high, exclusive: ISA).
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x22); // small resource, IRQ, 2 bytes
        sink.word(1u16 << self.0);
    }
}

/// `QWordMemory (ResourceConsumer, ...)`: a memory range this device uses (for ranges above
/// 4 GiB; `acpi_tables` writes address-space descriptors as producers only).
struct QWordMemoryConsumer(MemRange);

impl Aml for QWordMemoryConsumer {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let r = self.0;
        sink.byte(0x8a); // QWord address space descriptor
        sink.word(43);
        sink.byte(0); // memory
        sink.byte(1 | 1 << 2 | 1 << 3); // consumer, min fixed, max fixed
        sink.byte(1); // read/write, non-cacheable
        sink.qword(0); // granularity
        sink.qword(r.base);
        sink.qword(r.base + (r.size - 1));
        sink.qword(0); // translation
        sink.qword(r.size);
    }
}

/// The DSDT's ACPI name of host bridge `index`.
pub fn host_bridge_name(index: usize) -> String {
    format!("HB{index:02X}")
}

/// A memory window of a host bridge's `_CRS`: 32-bit below 4 GiB, else 64-bit.
/// Non-prefetchable, so that both prefetchable and non-prefetchable BARs may use it.
fn memory_window(r: &MemRange) -> Vec<u8> {
    let last = r.base + (r.size - 1);
    // The descriptor's length field must hold the size too.
    match (
        u32::try_from(r.base),
        u32::try_from(last),
        u32::try_from(r.size),
    ) {
        (Ok(min), Ok(max), Ok(_)) => bytes(&AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            min,
            max,
            None,
        )),
        _ => bytes(&AddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            r.base,
            last,
            None,
        )),
    }
}

/// `_OSC` of a host bridge: answers the PCIe (3 dwords) and CXL (5 dwords) UUIDs, revision 1,
/// granting [`osc::PCIE_CONTROL_GRANTED`] and [`osc::CXL_CONTROL_GRANTED`] of what is asked,
/// and returns the capabilities buffer with the status dword set:
///
/// ```text
/// CreateDWordField (Arg3, 0, CDW1)
/// Local0 = 0
/// If (Arg0 == PCIe UUID) { Local0 = 3 }
/// If (Arg0 == CXL UUID) { Local0 = 5 }
/// If (Local0 == 0) { CDW1 |= 4; Return (Arg3) }                 // unrecognized UUID
/// If (Arg1 != 1) { CDW1 |= 8; Return (Arg3) }                   // unrecognized revision
/// If (Arg2 < Local0) { CDW1 |= 2; Return (Arg3) }               // too few dwords
/// If (SizeOf (Arg3) < Local0 * 4) { CDW1 |= 2; Return (Arg3) }
/// CreateDWordField (Arg3, 8, CDW3)
/// Local1 = CDW3 & PCIE_GRANTED; If (Local1 != CDW3) { CDW1 |= 0x10 }; CDW3 = Local1
/// If (Local0 == 5) {
///     CreateDWordField (Arg3, 16, CDW5)
///     Local1 = CDW5 & CXL_GRANTED; If (Local1 != CDW5) { CDW1 |= 0x10 }; CDW5 = Local1
/// }
/// Return (Arg3)
/// ```
///
/// Support dwords (2 and 4) are the OS's and are returned as given.
fn osc_method() -> Vec<u8> {
    let cdw1 = Path::new("CDW1");
    let cdw3 = Path::new("CDW3");
    let cdw5 = Path::new("CDW5");
    let pcie = Uuid::new(PCIE_OSC_UUID);
    let cxl = Uuid::new(CXL_OSC_UUID);
    let ret = Return::new(&Arg(3));
    let (uuid_bit, rev_bit, fail_bit, mask_bit) = (
        osc::UNRECOGNIZED_UUID,
        osc::UNRECOGNIZED_REVISION,
        osc::FAILURE,
        osc::CAPABILITIES_MASKED,
    );
    let set_uuid = Or::new(&cdw1, &cdw1, &uuid_bit);
    let set_rev = Or::new(&cdw1, &cdw1, &rev_bit);
    let set_fail = Or::new(&cdw1, &cdw1, &fail_bit);
    let set_mask = Or::new(&cdw1, &cdw1, &mask_bit);
    let (three, five, four, one) = (3u8, 5u8, 4u8, 1u8);
    let dwords = Multiply::new(&ZERO, &Local(0), &four);
    let pcie_granted = osc::PCIE_CONTROL_GRANTED;
    let cxl_granted = osc::CXL_CONTROL_GRANTED;
    let (off0, off8, off16) = (0u8, 8u8, 16u8);

    let create1 = CreateDWordField::new(&cdw1, &Arg(3), &off0);
    let init = Store::new(&Local(0), &ZERO);
    let is_pcie = Equal::new(&Arg(0), &pcie);
    let is_cxl = Equal::new(&Arg(0), &cxl);
    let store3 = Store::new(&Local(0), &three);
    let store5 = Store::new(&Local(0), &five);
    let if_pcie = If::new(&is_pcie, vec![&store3]);
    let if_cxl = If::new(&is_cxl, vec![&store5]);
    let unknown = Equal::new(&Local(0), &ZERO);
    let if_unknown = If::new(&unknown, vec![&set_uuid, &ret]);
    let bad_rev = NotEqual::new(&Arg(1), &one);
    let if_rev = If::new(&bad_rev, vec![&set_rev, &ret]);
    let few = LessThan::new(&Arg(2), &Local(0));
    let if_few = If::new(&few, vec![&set_fail, &ret]);
    let size = SizeOf::new(&Arg(3));
    let short = LessThan::new(&size, &dwords);
    let if_short = If::new(&short, vec![&set_fail, &ret]);

    let create3 = CreateDWordField::new(&cdw3, &Arg(3), &off8);
    let mask3 = And::new(&Local(1), &cdw3, &pcie_granted);
    let masked3 = NotEqual::new(&Local(1), &cdw3);
    let if_masked3 = If::new(&masked3, vec![&set_mask]);
    let store_cdw3 = Store::new(&cdw3, &Local(1));

    let create5 = CreateDWordField::new(&cdw5, &Arg(3), &off16);
    let mask5 = And::new(&Local(1), &cdw5, &cxl_granted);
    let masked5 = NotEqual::new(&Local(1), &cdw5);
    let if_masked5 = If::new(&masked5, vec![&set_mask]);
    let store_cdw5 = Store::new(&cdw5, &Local(1));
    let is_cxl_len = Equal::new(&Local(0), &five);
    let if_cxl_body = If::new(
        &is_cxl_len,
        vec![&create5, &mask5, &if_masked5, &store_cdw5],
    );

    bytes(&Method::new(
        "_OSC".into(),
        4,
        true,
        vec![
            &create1,
            &init,
            &if_pcie,
            &if_cxl,
            &if_unknown,
            &if_rev,
            &if_few,
            &if_short,
            &create3,
            &mask3,
            &if_masked3,
            &store_cdw3,
            &if_cxl_body,
            &ret,
        ],
    ))
}

fn host_bridge(index: usize, h: &HostBridge, osc: &Raw) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &"ACPI0016");
    let pnp0a08 = EISAName::new("PNP0A08");
    let pnp0a03 = EISAName::new("PNP0A03");
    let cid = Name::new("_CID".into(), &Package::new(vec![&pnp0a08, &pnp0a03]));
    let uid = Name::new("_UID".into(), &h.uid);
    let seg = Name::new("_SEG".into(), &ZERO);
    let bbn = Name::new("_BBN".into(), &h.buses.start);
    // Without _PXM Linux gives the bridge's PCI buses no NUMA node ("Unknown NUMA node;
    // performance will be reduced").
    let pxm = Name::new("_PXM".into(), &HOST_DOMAIN);
    let buses =
        AddressSpace::<u16>::new_bus_number(u16::from(h.buses.start), u16::from(h.buses.end));
    let windows: Vec<Raw> = h.mmio.iter().map(|r| Raw(memory_window(r))).collect();
    let mut res: Vec<&dyn Aml> = vec![&buses];
    res.extend(windows.iter().map(|w| w as &dyn Aml));
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(res));
    bytes(&Device::new(
        host_bridge_name(index).as_str().into(),
        vec![&hid, &cid, &uid, &seg, &bbn, &pxm, &crs, osc],
    ))
}

fn cxl_root() -> Vec<u8> {
    let hid = Name::new("_HID".into(), &"ACPI0017");
    bytes(&Device::new("CXLR".into(), vec![&hid]))
}

fn serial(s: &SerialPort) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let uid = Name::new("_UID".into(), &1u8);
    let io = IO::new(s.io_base, s.io_base, 1, 8);
    let irq = IrqNoFlags(s.irq);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io, &irq]));
    bytes(&Device::new("COM1".into(), vec![&hid, &uid, &crs]))
}

/// Motherboard resources: the ECAM, reserved as the PCI Firmware Specification asks.
fn motherboard(ecam: &MemRange) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0C02"));
    let uid = Name::new("_UID".into(), &ZERO);
    let range: Raw = match (u32::try_from(ecam.base), u32::try_from(ecam.size)) {
        (Ok(base), Ok(len)) if ecam.below_4g() => Raw(bytes(&Memory32Fixed::new(true, base, len))),
        _ => Raw(bytes(&QWordMemoryConsumer(*ecam))),
    };
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&range]));
    bytes(&Device::new("MBRS".into(), vec![&hid, &uid, &crs]))
}

/// The DSDT (revision 2: 64-bit integers). The platform must be valid.
pub(crate) fn dsdt(p: &Platform) -> Vec<u8> {
    let osc = Raw(osc_method());
    let mut sb: Vec<Raw> = p
        .host_bridges
        .iter()
        .enumerate()
        .map(|(i, h)| Raw(host_bridge(i, h, &osc)))
        .collect();
    if !p.host_bridges.is_empty() {
        sb.push(Raw(cxl_root()));
    }
    if let Some(s) = &p.serial {
        sb.push(Raw(serial(s)));
    }
    if let Some(ecam) = p.ecam.and_then(|e| e.range()) {
        sb.push(Raw(motherboard(&ecam)));
    }
    let children: Vec<&dyn Aml> = sb.iter().map(|r| r as &dyn Aml).collect();
    let mut aml = bytes(&Scope::new("\\_SB_".into(), children));
    let (slp_typ, zero) = (S5_SLEEP_TYPE, 0u8);
    let s5 = Package::new(vec![&slp_typ, &zero, &zero, &zero]);
    aml.extend(bytes(&Name::new("\\_S5_".into(), &s5)));
    sdt(*b"DSDT", 2, &aml)
}
