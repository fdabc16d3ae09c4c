//! The static tables, written field by field (offsets from ACPI 6.5 and CXL 3.1; every
//! structure's length is the number of bytes written, checked in debug builds).

use crate::platform::{Arithmetic, Platform, PowerRegisters};

/// OEM ID of every table.
pub const OEM_ID: [u8; 6] = *b"CXLVM ";
/// OEM table ID of every table (the FADT's must equal the XSDT's).
pub const OEM_TABLE_ID: [u8; 8] = *b"CXLVM   ";
/// OEM revision.
pub const OEM_REVISION: u32 = 1;
/// Creator ID (for the DSDT: the "ASL compiler" that wrote the AML).
pub const CREATOR_ID: [u8; 4] = *b"CXLV";
/// Creator revision.
pub const CREATOR_REVISION: u32 = 1;
/// Length of the common table header.
pub const HEADER_LEN: usize = 36;

/// The 8-bit sum of `bytes` (0 for a table with a correct checksum).
pub fn byte_sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// The byte that makes `bytes` (with its checksum byte 0) sum to 0.
pub fn checksum(bytes: &[u8]) -> u8 {
    byte_sum(bytes).wrapping_neg()
}

/// Little-endian appenders.
pub(crate) trait Put {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    fn zeros(&mut self, n: usize);
}

impl Put for Vec<u8> {
    fn u8(&mut self, v: u8) {
        self.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
}

/// A table: the header (length and checksum filled in), then `body`.
pub(crate) fn sdt(signature: [u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(&signature);
    t.u32(u32::try_from(len).expect("ACPI table over 4 GiB"));
    t.u8(revision);
    t.u8(0); // checksum
    t.extend_from_slice(&OEM_ID);
    t.extend_from_slice(&OEM_TABLE_ID);
    t.u32(OEM_REVISION);
    t.extend_from_slice(&CREATOR_ID);
    t.u32(CREATOR_REVISION);
    debug_assert_eq!(t.len(), HEADER_LEN);
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// RSDP length (revision 2).
pub const RSDP_LEN: usize = 36;

/// RSDP revision 2: no RSDT, the XSDT at `xsdt`.
pub(crate) fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut t = Vec::with_capacity(RSDP_LEN);
    t.extend_from_slice(b"RSD PTR ");
    t.u8(0); // checksum of the first 20 bytes
    t.extend_from_slice(&OEM_ID);
    t.u8(2); // revision
    t.u32(0); // RSDT address: none
    t.u32(RSDP_LEN as u32);
    t.u64(xsdt);
    t.u8(0); // extended checksum
    t.zeros(3);
    debug_assert_eq!(t.len(), RSDP_LEN);
    t[8] = checksum(&t[..20]);
    t[32] = checksum(&t);
    t
}

/// XSDT: 64-bit addresses of every table but the DSDT (which the FADT points at).
pub(crate) fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(tables.len() * 8);
    for a in tables {
        b.u64(*a);
    }
    sdt(*b"XSDT", 1, &b)
}

/// Length of the XSDT for `n` tables.
pub(crate) fn xsdt_len(n: usize) -> usize {
    HEADER_LEN + 8 * n
}

/// FADT length (revision 6, ACPI 6.x).
pub const FADT_LEN: usize = 276;

/// FADT flags: WBINVD works (0), no fixed power (4) or sleep (5) button, RESET_REG supported
/// (10), hardware-reduced ACPI (20).
pub const FADT_FLAGS: u32 = 1 << 0 | 1 << 4 | 1 << 5 | 1 << 10 | 1 << 20;
/// IA-PC boot architecture flags: no VGA (2), OS must not enable ASPM (4), no CMOS RTC (5).
/// No 8042 (bit 1 clear: Linux skips the i8042 probe), no legacy ISA/LPC devices for PnP BIOS
/// (bit 0 clear; COM1 is described in the DSDT), MSI supported (bit 3 clear).
pub const IAPC_BOOT_ARCH: u16 = 1 << 2 | 1 << 4 | 1 << 5;
/// SCI_INT. Hardware-reduced ACPI has no SCI and the OS ignores the field, but Linux compares
/// each MADT interrupt override's source with it: 0 would make IRQ 0's override look like the
/// SCI's. 9 is the PC's SCI and has no override here.
pub const SCI_INT: u16 = 9;

/// A Generic Address Structure for an 8-bit I/O port.
fn gas_io8(t: &mut Vec<u8>, port: u16) {
    t.u8(1); // system I/O
    t.u8(8); // bit width
    t.u8(0); // bit offset
    t.u8(1); // access size: byte
    t.u64(u64::from(port));
}

/// FADT revision 6.5, hardware-reduced: no FACS, no PM1/GPE blocks, no SCI; the sleep
/// control/status registers and the reset register in I/O space.
pub(crate) fn fadt(dsdt: u64, power: &PowerRegisters) -> Vec<u8> {
    let mut b = Vec::with_capacity(FADT_LEN - HEADER_LEN);
    b.u32(0); // 36 FIRMWARE_CTRL: no FACS
    b.u32(u32::try_from(dsdt).unwrap_or(0)); // 40 DSDT (32-bit, when it fits)
    b.u8(0); // 44 reserved
    b.u8(0); // 45 preferred PM profile: unspecified
    b.u16(SCI_INT); // 46
    b.u32(0); // 48 SMI_CMD: none
    b.zeros(4); // 52 ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
    b.zeros(8 * 4); // 56..88 PM1a/b EVT, PM1a/b CNT, PM2 CNT, PM TMR, GPE0, GPE1 blocks
    b.zeros(8); // 88..96 block lengths, GPE1_BASE, CST_CNT
    b.zeros(8); // 96..104 P_LVL2/3_LAT, FLUSH_SIZE, FLUSH_STRIDE
    b.zeros(5); // 104..109 DUTY_OFFSET, DUTY_WIDTH, DAY_ALRM, MON_ALRM, CENTURY
    b.u16(IAPC_BOOT_ARCH); // 109
    b.u8(0); // 111 reserved
    b.u32(FADT_FLAGS); // 112
    gas_io8(&mut b, power.reset); // 116 RESET_REG
    b.u8(power.reset_value); // 128 RESET_VALUE
    b.u16(0); // 129 ARM_BOOT_ARCH
    b.u8(5); // 131 FADT minor version (6.5)
    b.u64(0); // 132 X_FIRMWARE_CTRL: no FACS
    b.u64(dsdt); // 140 X_DSDT
    b.zeros(8 * 12); // 148..244 X_PM1a/b EVT, X_PM1a/b CNT, X_PM2 CNT, X_PM TMR, X_GPE0/1
    gas_io8(&mut b, power.sleep_control); // 244 SLEEP_CONTROL_REG
    gas_io8(&mut b, power.sleep_status); // 256 SLEEP_STATUS_REG
    b.u64(0); // 268 hypervisor vendor identity
    debug_assert_eq!(b.len(), FADT_LEN - HEADER_LEN);
    sdt(*b"FACP", 6, &b)
}

/// MADT flags: PCAT_COMPAT. KVM's in-kernel irqchip has the dual 8259, so the flag is true;
/// it tells an OS to mask them before using the I/O APIC (Linux bypasses the PIC anyway on a
/// hardware-reduced ACPI platform).
pub const MADT_FLAGS: u32 = 1;

/// MADT revision 5: a Local APIC (APIC id < 255) or Local x2APIC entry per vCPU (enabled,
/// processor UID = index), the I/O APIC, the interrupt overrides, and a local APIC NMI on
/// LINT1 for all processors (in the form each kind of entry needs).
pub(crate) fn madt(p: &Platform) -> Vec<u8> {
    const ENABLED: u32 = 1;
    let mut b = Vec::new();
    b.u32(crate::platform::LOCAL_APIC_ADDRESS);
    b.u32(MADT_FLAGS);
    let (mut xapic, mut x2apic) = (false, false);
    for (uid, c) in p.cpus.iter().enumerate() {
        let uid = uid as u32;
        match u8::try_from(c.apic_id) {
            Ok(id) if id < 0xff && uid < 0xff => {
                b.u8(0); // Processor Local APIC
                b.u8(8);
                b.u8(uid as u8);
                b.u8(id);
                b.u32(ENABLED);
                xapic = true;
            }
            _ => {
                b.u8(9); // Processor Local x2APIC
                b.u8(16);
                b.u16(0);
                b.u32(c.apic_id);
                b.u32(ENABLED);
                b.u32(uid);
                x2apic = true;
            }
        }
    }
    b.u8(1); // I/O APIC
    b.u8(12);
    b.u8(p.ioapic.id);
    b.u8(0);
    b.u32(p.ioapic.address);
    b.u32(p.ioapic.gsi_base);
    for o in &p.overrides {
        b.u8(2); // Interrupt Source Override
        b.u8(10);
        b.u8(0); // bus: ISA
        b.u8(o.isa_irq);
        b.u32(o.gsi);
        b.u16(o.inti_flags());
    }
    const LINT1: u8 = 1;
    if xapic {
        b.u8(4); // Local APIC NMI
        b.u8(6);
        b.u8(0xff); // all processors
        b.u16(0); // flags: conforming
        b.u8(LINT1);
    }
    if x2apic {
        b.u8(0x0a); // Local x2APIC NMI
        b.u8(12);
        b.u16(0); // flags: conforming
        b.u32(u32::MAX); // all processors
        b.u8(LINT1);
        b.zeros(3);
    }
    sdt(*b"APIC", 5, &b)
}

/// MCFG revision 1: the ECAM (no allocation entry on a machine without PCI).
pub(crate) fn mcfg(p: &Platform) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    b.zeros(8);
    if let Some(e) = &p.ecam {
        b.u64(e.base);
        b.u16(e.segment);
        b.u8(e.buses.start);
        b.u8(e.buses.end);
        b.u32(0);
    }
    sdt(*b"MCFG", 1, &b)
}

/// The proximity domain of the vCPUs, boot RAM and host bridges: the platform is one socket.
pub const HOST_DOMAIN: u32 = 0;

/// SRAT revision 3: every vCPU (APIC or x2APIC affinity) and every boot RAM range (memory
/// affinity, enabled) in proximity domain 0. Nothing for the fixed memory windows: Linux
/// gives each CFMWS that no SRAT range covers a NUMA node of its own.
pub(crate) fn srat(p: &Platform) -> Vec<u8> {
    const ENABLED: u32 = 1;
    let mut b = Vec::new();
    b.u32(1); // reserved, 1 for backward compatibility
    b.u64(0);
    for c in &p.cpus {
        match u8::try_from(c.apic_id) {
            Ok(id) if id < 0xff => {
                b.u8(0); // Processor Local APIC/SAPIC Affinity
                b.u8(16);
                b.u8(HOST_DOMAIN as u8); // proximity domain [7:0]
                b.u8(id);
                b.u32(ENABLED);
                b.u8(0); // local SAPIC EID
                b.zeros(3); // proximity domain [31:8]
                b.u32(0); // clock domain
            }
            _ => {
                b.u8(2); // Processor Local x2APIC Affinity
                b.u8(24);
                b.u16(0);
                b.u32(HOST_DOMAIN);
                b.u32(c.apic_id);
                b.u32(ENABLED);
                b.u32(0); // clock domain
                b.u32(0);
            }
        }
    }
    for r in &p.ram {
        b.u8(1); // Memory Affinity
        b.u8(40);
        b.u32(HOST_DOMAIN);
        b.u16(0);
        b.u64(r.base);
        b.u64(r.size);
        b.u32(0);
        b.u32(ENABLED);
        b.u64(0);
    }
    sdt(*b"SRAT", 3, &b)
}

/// SLIT revision 1: the one locality the SRAT names, distance 10 to itself.
pub(crate) fn slit(_p: &Platform) -> Vec<u8> {
    let mut b = Vec::with_capacity(9);
    b.u64(1);
    b.u8(10);
    sdt(*b"SLIT", 1, &b)
}

/// CEDT structure types.
pub const CEDT_CHBS: u8 = 0;
/// CFMWS.
pub const CEDT_CFMWS: u8 = 1;
/// CXIMS.
pub const CEDT_CXIMS: u8 = 2;
/// CHBS "CXL Version" for a CXL 2.0 host bridge (CHBCR, not a CXL 1.1 RCRB).
pub const CHBS_CXL20: u32 = 1;

/// CEDT revision 1: a CHBS per host bridge, a CFMWS per window, a CXIMS per granularity of
/// the XOR windows.
pub(crate) fn cedt(p: &Platform) -> Vec<u8> {
    let mut b = Vec::new();
    for h in &p.host_bridges {
        let at = b.len();
        b.u8(CEDT_CHBS);
        b.u8(0);
        b.u16(32);
        b.u32(h.uid);
        b.u32(CHBS_CXL20);
        b.u32(0);
        b.u64(h.chbcr.base);
        b.u64(h.chbcr.size);
        debug_assert_eq!(b.len() - at, 32);
    }
    for w in &p.windows {
        let at = b.len();
        let len = 36 + 4 * w.targets.len();
        b.u8(CEDT_CFMWS);
        b.u8(0);
        b.u16(len as u16);
        b.u32(0);
        b.u64(w.range.base);
        b.u64(w.range.size);
        b.u8(w.ways.encoded()); // ENIW
        b.u8(match w.arithmetic {
            Arithmetic::Modulo => 0,
            Arithmetic::Xor { .. } => 1,
        });
        b.u16(0);
        b.u32(u32::from(w.granularity.encoded())); // HBIG
        b.u16(w.restrictions.bits());
        b.u16(w.qtg);
        for t in &w.targets {
            b.u32(*t);
        }
        debug_assert_eq!(b.len() - at, len);
    }
    for (g, maps) in p.xor_map_sets() {
        let at = b.len();
        let len = 8 + 8 * maps.len();
        b.u8(CEDT_CXIMS);
        b.u8(0);
        b.u16(len as u16);
        b.u16(0);
        b.u8(g.encoded()); // HBIG
        b.u8(maps.len() as u8); // NIXM
        for m in &maps {
            b.u64(*m);
        }
        debug_assert_eq!(b.len() - at, len);
    }
    sdt(*b"CEDT", 1, &b)
}
