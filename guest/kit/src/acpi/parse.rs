//! ACPI tables read from bytes: the RSDP (revision 2), the XSDT, every table it lists and the
//! DSDT the FADT points at, each with its checksum verified ([`Tables::load`]), and the
//! structures of the MADT, MCFG, SRAT and CEDT ([`Madt`], [`Mcfg`], [`Srat`], [`Cedt`]).
//!
//! Pure `core` over a byte slice that holds guest memory from a known guest-physical address
//! ([`Area`]): every pointer a table holds must land inside it, so nothing here touches memory
//! (the kit's `acpi` module copies the area out of guest memory with volatile reads first;
//! guest/host-tests runs this file on the host). Offsets are those of ACPI 6.5 and CXL 3.1.

use core::fmt;

/// Length of the common header of every table but the RSDP.
pub const HEADER_LEN: usize = 36;
/// Length of a revision 2 RSDP.
pub const RSDP_LEN: usize = 36;
/// Bytes of the RSDP its first checksum covers (the ACPI 1.0 part).
pub const RSDP_V1_LEN: usize = 20;
/// The RSDP's signature.
pub const RSDP_SIGNATURE: [u8; 8] = *b"RSD PTR ";
/// Offset of the FADT's 32-bit DSDT address.
pub const FADT_DSDT: usize = 40;
/// Offset of the FADT's 64-bit DSDT address (X_DSDT).
pub const FADT_X_DSDT: usize = 140;

/// The 8-bit sum of `bytes`: 0 for a table whose checksum is right.
pub fn byte_sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// The little-endian unsigned integer of `len` (≤ 8) bytes at `at`; 0 past the end (callers
/// check lengths first, so that never happens; it keeps the parser free of panics).
fn le(b: &[u8], at: usize, len: usize) -> u64 {
    match at.checked_add(len).and_then(|end| b.get(at..end)) {
        Some(s) => s
            .iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
        None => 0,
    }
}

fn u8_at(b: &[u8], at: usize) -> u8 {
    le(b, at, 1) as u8
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    le(b, at, 2) as u16
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    le(b, at, 4) as u32
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    le(b, at, 8)
}

/// A table signature: four ASCII bytes (`RSDP` stands for the RSDP, whose own is `RSD PTR `).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 4]);

impl Signature {
    /// The RSDP (in errors; its signature is really `RSD PTR `).
    pub const RSDP: Signature = Signature(*b"RSDP");
    /// Extended System Description Table.
    pub const XSDT: Signature = Signature(*b"XSDT");
    /// Fixed ACPI Description Table.
    pub const FADT: Signature = Signature(*b"FACP");
    /// Differentiated System Description Table.
    pub const DSDT: Signature = Signature(*b"DSDT");
    /// Multiple APIC Description Table.
    pub const MADT: Signature = Signature(*b"APIC");
    /// PCI Express memory-mapped configuration space.
    pub const MCFG: Signature = Signature(*b"MCFG");
    /// System Resource Affinity Table.
    pub const SRAT: Signature = Signature(*b"SRAT");
    /// System Locality Information Table.
    pub const SLIT: Signature = Signature(*b"SLIT");
    /// CXL Early Discovery Table.
    pub const CEDT: Signature = Signature(*b"CEDT");
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            };
            fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// What is wrong with the tables, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    /// `what` at `addr` (`len` bytes) is not inside the area the boot info lists.
    OutsideArea {
        /// The table (or `RSDP`).
        what: Signature,
        /// Its guest-physical address.
        addr: u64,
        /// Bytes it needs.
        len: u64,
    },
    /// The RSDP does not start with `RSD PTR `.
    RsdpSignature {
        /// Its address.
        addr: u64,
    },
    /// The first 20 bytes of the RSDP do not sum to 0.
    RsdpChecksum {
        /// Their sum.
        sum: u8,
    },
    /// The whole RSDP (its length field) does not sum to 0.
    RsdpExtendedChecksum {
        /// Its sum.
        sum: u8,
    },
    /// The RSDP is revision 0/1 (no XSDT).
    RsdpRevision {
        /// The revision.
        revision: u8,
    },
    /// The RSDP's length field is below 36.
    RsdpLength {
        /// The length.
        length: u32,
    },
    /// The RSDP's XSDT address is 0.
    NoXsdt,
    /// A table at `addr` has another signature than the pointer to it promises.
    Signature {
        /// Its address.
        addr: u64,
        /// What it should be.
        expected: Signature,
        /// What it is.
        found: Signature,
    },
    /// A table's length field is shorter than its header or its fixed fields.
    TableLength {
        /// The table.
        signature: Signature,
        /// Its address.
        addr: u64,
        /// Its length field.
        length: u32,
    },
    /// A table does not sum to 0.
    Checksum {
        /// The table.
        signature: Signature,
        /// Its address.
        addr: u64,
        /// Its sum.
        sum: u8,
    },
    /// The XSDT's entries are not a whole number of 8-byte addresses.
    XsdtLength {
        /// Its length field.
        length: u32,
    },
    /// The XSDT lists two tables with this signature.
    DuplicateTable {
        /// The signature.
        signature: Signature,
    },
    /// The FADT has neither X_DSDT nor DSDT.
    NoDsdt,
    /// A structure inside a table is shorter than its kind needs or runs past the table.
    StructureLength {
        /// The table.
        table: Signature,
        /// The structure's offset in the table.
        offset: usize,
        /// The structure's type.
        kind: u8,
        /// Its length field (or the bytes left, when even the header does not fit).
        length: usize,
    },
    /// A CFMWS whose ENIW is no valid interleave-ways encoding.
    CfmwsWays {
        /// The structure's offset in the CEDT.
        offset: usize,
        /// Its ENIW.
        eniw: u8,
    },
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutsideArea { what, addr, len } => write!(
                f,
                "{what} at {addr:#x} ({len} bytes) lies outside the ACPI tables entry"
            ),
            Self::RsdpSignature { addr } => write!(f, "no RSD PTR signature at {addr:#x}"),
            Self::RsdpChecksum { sum } => write!(f, "RSDP checksum: bytes 0-19 sum to {sum:#x}"),
            Self::RsdpExtendedChecksum { sum } => {
                write!(f, "RSDP extended checksum: the RSDP sums to {sum:#x}")
            }
            Self::RsdpRevision { revision } => {
                write!(f, "RSDP revision {revision}: no XSDT (need 2)")
            }
            Self::RsdpLength { length } => write!(f, "RSDP length {length} < {RSDP_LEN}"),
            Self::NoXsdt => write!(f, "RSDP has no XSDT address"),
            Self::Signature {
                addr,
                expected,
                found,
            } => write!(f, "table at {addr:#x} is {found}, expected {expected}"),
            Self::TableLength {
                signature,
                addr,
                length,
            } => write!(f, "{signature} at {addr:#x}: length {length} too short"),
            Self::Checksum {
                signature,
                addr,
                sum,
            } => write!(
                f,
                "{signature} at {addr:#x}: checksum: bytes sum to {sum:#x}"
            ),
            Self::XsdtLength { length } => {
                write!(f, "XSDT length {length}: entries not a multiple of 8 bytes")
            }
            Self::DuplicateTable { signature } => write!(f, "XSDT lists {signature} twice"),
            Self::NoDsdt => write!(f, "FADT has no DSDT address"),
            Self::StructureLength {
                table,
                offset,
                kind,
                length,
            } => write!(
                f,
                "{table}: structure type {kind} at offset {offset:#x}: bad length {length}"
            ),
            Self::CfmwsWays { offset, eniw } => {
                write!(f, "CEDT: CFMWS at offset {offset:#x}: bad ENIW {eniw}")
            }
        }
    }
}

/// Guest memory holding the tables: `bytes` are the bytes at guest-physical `base`.
#[derive(Clone, Copy, Debug)]
pub struct Area<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl<'a> Area<'a> {
    /// The bytes at `base`.
    pub fn new(base: u64, bytes: &'a [u8]) -> Self {
        Self { base, bytes }
    }

    /// First guest-physical address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The `len` bytes at `addr`, if they lie inside.
    pub fn get(&self, addr: u64, len: usize) -> Option<&'a [u8]> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        self.bytes.get(off..off.checked_add(len)?)
    }

    fn need(&self, what: Signature, addr: u64, len: usize) -> Result<&'a [u8], AcpiError> {
        self.get(addr, len).ok_or(AcpiError::OutsideArea {
            what,
            addr,
            len: len as u64,
        })
    }
}

/// The RSDP (revision 2 or later), checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    /// Its guest-physical address.
    pub address: u64,
    /// OEM ID.
    pub oem_id: [u8; 6],
    /// Revision (2 for ACPI 2.0 and later).
    pub revision: u8,
    /// RSDT address (0: none).
    pub rsdt: u32,
    /// Length of the whole RSDP.
    pub length: u32,
    /// XSDT address.
    pub xsdt: u64,
}

impl Rsdp {
    /// Reads and checks the RSDP at `addr`: signature, revision ≥ 2, length, checksum of the
    /// first 20 bytes and the extended checksum of the whole structure.
    pub fn parse(area: &Area<'_>, addr: u64) -> Result<Rsdp, AcpiError> {
        let v1 = area.need(Signature::RSDP, addr, RSDP_V1_LEN)?;
        if v1[..8] != RSDP_SIGNATURE {
            return Err(AcpiError::RsdpSignature { addr });
        }
        let sum = byte_sum(v1);
        if sum != 0 {
            return Err(AcpiError::RsdpChecksum { sum });
        }
        let revision = v1[15];
        if revision < 2 {
            return Err(AcpiError::RsdpRevision { revision });
        }
        let head = area.need(Signature::RSDP, addr, RSDP_LEN)?;
        let length = u32_at(head, 20);
        if (length as usize) < RSDP_LEN {
            return Err(AcpiError::RsdpLength { length });
        }
        let all = area.need(Signature::RSDP, addr, length as usize)?;
        let sum = byte_sum(all);
        if sum != 0 {
            return Err(AcpiError::RsdpExtendedChecksum { sum });
        }
        let mut oem_id = [0u8; 6];
        oem_id.copy_from_slice(&head[9..15]);
        Ok(Rsdp {
            address: addr,
            oem_id,
            revision,
            rsdt: u32_at(head, 16),
            length,
            xsdt: u64_at(head, 24),
        })
    }
}

/// A table with a common header whose length and checksum were checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sdt<'a> {
    address: u64,
    bytes: &'a [u8],
}

impl<'a> Sdt<'a> {
    /// Reads the table at `addr`: header and whole length inside the area, length ≥ 36, sum 0.
    pub fn parse(area: &Area<'a>, addr: u64) -> Result<Sdt<'a>, AcpiError> {
        Self::read(area, addr, Signature(*b"????"))
    }

    /// [`Sdt::parse`], naming the table `what` when its header lies outside the area.
    fn read(area: &Area<'a>, addr: u64, what: Signature) -> Result<Sdt<'a>, AcpiError> {
        let head = area.need(what, addr, HEADER_LEN)?;
        let mut sig = [0u8; 4];
        sig.copy_from_slice(&head[..4]);
        let signature = Signature(sig);
        let length = u32_at(head, 4);
        if (length as usize) < HEADER_LEN {
            return Err(AcpiError::TableLength {
                signature,
                addr,
                length,
            });
        }
        let bytes = area.need(signature, addr, length as usize)?;
        let sum = byte_sum(bytes);
        if sum != 0 {
            return Err(AcpiError::Checksum {
                signature,
                addr,
                sum,
            });
        }
        Ok(Sdt {
            address: addr,
            bytes,
        })
    }

    /// Its guest-physical address.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// Its signature.
    pub fn signature(&self) -> Signature {
        let mut s = [0u8; 4];
        s.copy_from_slice(&self.bytes[..4]);
        Signature(s)
    }

    /// Its length (header included).
    pub fn length(&self) -> usize {
        self.bytes.len()
    }

    /// Its revision.
    pub fn revision(&self) -> u8 {
        self.bytes[8]
    }

    /// OEM ID.
    pub fn oem_id(&self) -> [u8; 6] {
        let mut s = [0u8; 6];
        s.copy_from_slice(&self.bytes[10..16]);
        s
    }

    /// Every byte, header included.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn expect(self, expected: Signature) -> Result<Self, AcpiError> {
        let found = self.signature();
        if found != expected {
            return Err(AcpiError::Signature {
                addr: self.address,
                expected,
                found,
            });
        }
        Ok(self)
    }

    /// Checks that the table is at least `len` bytes long.
    fn at_least(self, len: usize) -> Result<Self, AcpiError> {
        if self.bytes.len() < len {
            return Err(AcpiError::TableLength {
                signature: self.signature(),
                addr: self.address,
                length: self.bytes.len() as u32,
            });
        }
        Ok(self)
    }
}

/// The tables reached from an RSDP, all checked by [`Tables::load`].
#[derive(Clone, Copy, Debug)]
pub struct Tables<'a> {
    area: Area<'a>,
    rsdp: Rsdp,
    xsdt: Sdt<'a>,
    dsdt: Option<Sdt<'a>>,
}

impl<'a> Tables<'a> {
    /// Reads the RSDP at `rsdp`, the XSDT, every table the XSDT lists and, when there is a
    /// FADT, the DSDT it points at (X_DSDT, else DSDT): every pointer inside the area, every
    /// signature as promised, every checksum right, no signature listed twice.
    pub fn load(area: Area<'a>, rsdp: u64) -> Result<Self, AcpiError> {
        let rsdp = Rsdp::parse(&area, rsdp)?;
        if rsdp.xsdt == 0 {
            return Err(AcpiError::NoXsdt);
        }
        let xsdt = Sdt::read(&area, rsdp.xsdt, Signature::XSDT)?.expect(Signature::XSDT)?;
        if !(xsdt.length() - HEADER_LEN).is_multiple_of(8) {
            return Err(AcpiError::XsdtLength {
                length: xsdt.length() as u32,
            });
        }
        let mut tables = Tables {
            area,
            rsdp,
            xsdt,
            dsdt: None,
        };
        for (i, addr) in tables.addresses().enumerate() {
            let t = Sdt::parse(&area, addr)?;
            let signature = t.signature();
            if tables
                .addresses()
                .take(i)
                .any(|a| Sdt::parse(&area, a).is_ok_and(|o| o.signature() == signature))
            {
                return Err(AcpiError::DuplicateTable { signature });
            }
        }
        if let Some(fadt) = tables.find(Signature::FADT) {
            let fadt = fadt.at_least(FADT_DSDT + 4)?;
            let x_dsdt = if fadt.length() >= FADT_X_DSDT + 8 {
                u64_at(fadt.bytes, FADT_X_DSDT)
            } else {
                0
            };
            let dsdt = match x_dsdt {
                0 => u64::from(u32_at(fadt.bytes, FADT_DSDT)),
                x => x,
            };
            if dsdt == 0 {
                return Err(AcpiError::NoDsdt);
            }
            tables.dsdt = Some(Sdt::read(&area, dsdt, Signature::DSDT)?.expect(Signature::DSDT)?);
        }
        Ok(tables)
    }

    /// The area the tables were read from.
    pub fn area(&self) -> &Area<'a> {
        &self.area
    }

    /// The RSDP.
    pub fn rsdp(&self) -> &Rsdp {
        &self.rsdp
    }

    /// The XSDT.
    pub fn xsdt(&self) -> Sdt<'a> {
        self.xsdt
    }

    /// The DSDT, when there is a FADT.
    pub fn dsdt(&self) -> Option<Sdt<'a>> {
        self.dsdt
    }

    /// The addresses the XSDT lists, in order.
    pub fn addresses(&self) -> impl Iterator<Item = u64> + Clone + 'a {
        let body = &self.xsdt.bytes[HEADER_LEN..];
        body.chunks_exact(8).map(|c| u64_at(c, 0))
    }

    /// The tables the XSDT lists, in order (checked by [`Tables::load`]).
    pub fn listed(&self) -> impl Iterator<Item = Sdt<'a>> + Clone + 'a {
        let area = self.area;
        self.addresses()
            .filter_map(move |a| Sdt::parse(&area, a).ok())
    }

    /// The listed table with `signature`.
    pub fn find(&self, signature: Signature) -> Option<Sdt<'a>> {
        self.listed().find(|t| t.signature() == signature)
    }

    /// Every table: the XSDT, the listed ones and the DSDT.
    pub fn count(&self) -> usize {
        1 + self.listed().count() + usize::from(self.dsdt.is_some())
    }

    /// The MADT, parsed, if listed.
    pub fn madt(&self) -> Result<Option<Madt<'a>>, AcpiError> {
        self.find(Signature::MADT).map(Madt::new).transpose()
    }

    /// The MCFG, parsed, if listed.
    pub fn mcfg(&self) -> Result<Option<Mcfg<'a>>, AcpiError> {
        self.find(Signature::MCFG).map(Mcfg::new).transpose()
    }

    /// The SRAT, parsed, if listed.
    pub fn srat(&self) -> Result<Option<Srat<'a>>, AcpiError> {
        self.find(Signature::SRAT).map(Srat::new).transpose()
    }

    /// The CEDT, parsed, if listed.
    pub fn cedt(&self) -> Result<Option<Cedt<'a>>, AcpiError> {
        self.find(Signature::CEDT).map(Cedt::new).transpose()
    }
}

/// How a table's structures give their length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LengthField {
    /// `type: u8, length: u8` (MADT, SRAT).
    Byte,
    /// `type: u8, reserved: u8, length: u16` (CEDT).
    Word,
}

/// One structure of a table: its offset, type and bytes (header included).
#[derive(Clone, Copy, Debug)]
struct Raw<'a> {
    offset: usize,
    kind: u8,
    bytes: &'a [u8],
}

/// The structures of `table` from `start` on.
#[derive(Clone, Debug)]
struct Structures<'a> {
    table: &'a [u8],
    at: usize,
    field: LengthField,
}

impl<'a> Structures<'a> {
    fn new(table: &'a [u8], start: usize, field: LengthField) -> Self {
        Self {
            table,
            at: start,
            field,
        }
    }

    /// The next structure, an error for one whose length is too short or too long, `None` at
    /// the end.
    fn step(&mut self) -> Option<Result<Raw<'a>, (usize, u8, usize)>> {
        let left = self.table.len().checked_sub(self.at)?;
        if left == 0 {
            return None;
        }
        let offset = self.at;
        let kind = self.table[offset];
        let (header, length) = match self.field {
            LengthField::Byte => (2, usize::from(u8_at(self.table, offset + 1))),
            LengthField::Word => (4, usize::from(u16_at(self.table, offset + 2))),
        };
        if left < header {
            self.at = self.table.len();
            return Some(Err((offset, kind, left)));
        }
        if length < header || length > left {
            self.at = self.table.len();
            return Some(Err((offset, kind, length)));
        }
        self.at += length;
        Some(Ok(Raw {
            offset,
            kind,
            bytes: &self.table[offset..offset + length],
        }))
    }
}

impl<'a> Iterator for Structures<'a> {
    type Item = Raw<'a>;

    /// The structures, stopping at the first bad one (the tables' constructors check there is
    /// none).
    fn next(&mut self) -> Option<Raw<'a>> {
        self.step()?.ok()
    }
}

/// Checks every structure of `table` from `start`: a valid length, and at least `min(kind)`
/// bytes for the kinds it knows (`extra` checks the rest).
fn check_structures(
    sdt: &Sdt<'_>,
    start: usize,
    field: LengthField,
    min: impl Fn(u8) -> usize,
    mut extra: impl FnMut(&Raw<'_>) -> Result<(), AcpiError>,
) -> Result<(), AcpiError> {
    let table = sdt.signature();
    let mut s = Structures::new(sdt.bytes, start, field);
    while let Some(r) = s.step() {
        let r = r.map_err(|(offset, kind, length)| AcpiError::StructureLength {
            table,
            offset,
            kind,
            length,
        })?;
        if r.bytes.len() < min(r.kind) {
            return Err(AcpiError::StructureLength {
                table,
                offset: r.offset,
                kind: r.kind,
                length: r.bytes.len(),
            });
        }
        extra(&r)?;
    }
    Ok(())
}

/// Flag bit of a processor or memory entry that says it is usable.
pub const ENABLED: u32 = 1;

/// One MADT structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MadtEntry {
    /// Processor Local APIC (type 0).
    LocalApic {
        /// ACPI processor UID.
        uid: u8,
        /// APIC id.
        apic_id: u8,
        /// Flags: bit 0 enabled, bit 1 online capable.
        flags: u32,
    },
    /// I/O APIC (type 1).
    IoApic {
        /// I/O APIC id.
        id: u8,
        /// Its registers' address.
        address: u32,
        /// Its first GSI.
        gsi_base: u32,
    },
    /// Interrupt Source Override (type 2).
    InterruptOverride {
        /// Bus (0: ISA).
        bus: u8,
        /// Bus-relative IRQ.
        source: u8,
        /// The GSI it is wired to.
        gsi: u32,
        /// MPS INTI flags.
        flags: u16,
    },
    /// Local APIC NMI (type 4).
    LocalApicNmi {
        /// ACPI processor UID (0xff: all).
        uid: u8,
        /// MPS INTI flags.
        flags: u16,
        /// LINT pin.
        lint: u8,
    },
    /// Processor Local x2APIC (type 9).
    LocalX2Apic {
        /// x2APIC id.
        apic_id: u32,
        /// Flags: bit 0 enabled, bit 1 online capable.
        flags: u32,
        /// ACPI processor UID.
        uid: u32,
    },
    /// Local x2APIC NMI (type 10).
    LocalX2ApicNmi {
        /// ACPI processor UID (all-ones: all).
        uid: u32,
        /// MPS INTI flags.
        flags: u16,
        /// LINT pin.
        lint: u8,
    },
    /// Any other type.
    Other {
        /// Its type.
        kind: u8,
        /// Its length.
        length: usize,
    },
}

/// A processor as the MADT or SRAT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processor {
    /// (x2)APIC id.
    pub apic_id: u32,
    /// Whether the enabled flag is set.
    pub enabled: bool,
}

impl MadtEntry {
    /// The processor a Local APIC or Local x2APIC entry describes.
    pub fn processor(&self) -> Option<Processor> {
        match *self {
            Self::LocalApic { apic_id, flags, .. } => Some(Processor {
                apic_id: u32::from(apic_id),
                enabled: flags & ENABLED != 0,
            }),
            Self::LocalX2Apic { apic_id, flags, .. } => Some(Processor {
                apic_id,
                enabled: flags & ENABLED != 0,
            }),
            _ => None,
        }
    }

    fn decode(r: &Raw<'_>) -> Self {
        let b = r.bytes;
        match r.kind {
            0 => Self::LocalApic {
                uid: u8_at(b, 2),
                apic_id: u8_at(b, 3),
                flags: u32_at(b, 4),
            },
            1 => Self::IoApic {
                id: u8_at(b, 2),
                address: u32_at(b, 4),
                gsi_base: u32_at(b, 8),
            },
            2 => Self::InterruptOverride {
                bus: u8_at(b, 2),
                source: u8_at(b, 3),
                gsi: u32_at(b, 4),
                flags: u16_at(b, 8),
            },
            4 => Self::LocalApicNmi {
                uid: u8_at(b, 2),
                flags: u16_at(b, 3),
                lint: u8_at(b, 5),
            },
            9 => Self::LocalX2Apic {
                apic_id: u32_at(b, 4),
                flags: u32_at(b, 8),
                uid: u32_at(b, 12),
            },
            10 => Self::LocalX2ApicNmi {
                flags: u16_at(b, 2),
                uid: u32_at(b, 4),
                lint: u8_at(b, 8),
            },
            kind => Self::Other {
                kind,
                length: b.len(),
            },
        }
    }

    /// Bytes a structure of `kind` needs.
    fn min_len(kind: u8) -> usize {
        match kind {
            0 => 8,
            1 => 12,
            2 => 10,
            4 => 6,
            9 => 16,
            10 => 12,
            _ => 2,
        }
    }
}

/// Where the MADT's structures start.
const MADT_ENTRIES: usize = HEADER_LEN + 8;

/// The MADT (`APIC`), its structures checked.
#[derive(Clone, Copy, Debug)]
pub struct Madt<'a> {
    sdt: Sdt<'a>,
}

impl<'a> Madt<'a> {
    /// Checks the table's fixed fields and every structure's length.
    pub fn new(sdt: Sdt<'a>) -> Result<Self, AcpiError> {
        let sdt = sdt.expect(Signature::MADT)?.at_least(MADT_ENTRIES)?;
        check_structures(
            &sdt,
            MADT_ENTRIES,
            LengthField::Byte,
            MadtEntry::min_len,
            |_| Ok(()),
        )?;
        Ok(Self { sdt })
    }

    /// The local APICs' address.
    pub fn local_apic_address(&self) -> u32 {
        u32_at(self.sdt.bytes, HEADER_LEN)
    }

    /// Flags (bit 0: PCAT_COMPAT).
    pub fn flags(&self) -> u32 {
        u32_at(self.sdt.bytes, HEADER_LEN + 4)
    }

    /// The structures, in order.
    pub fn entries(&self) -> impl Iterator<Item = MadtEntry> + Clone + 'a {
        Structures::new(self.sdt.bytes, MADT_ENTRIES, LengthField::Byte)
            .map(|r| MadtEntry::decode(&r))
    }

    /// The Local APIC and Local x2APIC entries.
    pub fn processors(&self) -> impl Iterator<Item = Processor> + Clone + 'a {
        self.entries().filter_map(|e| e.processor())
    }
}

/// One MCFG entry: an ECAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct McfgEntry {
    /// Address of bus 0's configuration space (even when `start_bus` > 0).
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus.
    pub start_bus: u8,
    /// Last bus.
    pub end_bus: u8,
}

/// Where the MCFG's entries start.
const MCFG_ENTRIES: usize = HEADER_LEN + 8;
/// Bytes of an MCFG entry.
const MCFG_ENTRY: usize = 16;

/// The MCFG, checked to hold whole entries.
#[derive(Clone, Copy, Debug)]
pub struct Mcfg<'a> {
    sdt: Sdt<'a>,
}

impl<'a> Mcfg<'a> {
    /// Checks that the entries are whole.
    pub fn new(sdt: Sdt<'a>) -> Result<Self, AcpiError> {
        let sdt = sdt.expect(Signature::MCFG)?.at_least(MCFG_ENTRIES)?;
        if !(sdt.length() - MCFG_ENTRIES).is_multiple_of(MCFG_ENTRY) {
            return Err(AcpiError::TableLength {
                signature: Signature::MCFG,
                addr: sdt.address,
                length: sdt.length() as u32,
            });
        }
        Ok(Self { sdt })
    }

    /// The ECAM entries.
    pub fn entries(&self) -> impl Iterator<Item = McfgEntry> + Clone + 'a {
        self.sdt.bytes[MCFG_ENTRIES..]
            .chunks_exact(MCFG_ENTRY)
            .map(|c| McfgEntry {
                base: u64_at(c, 0),
                segment: u16_at(c, 8),
                start_bus: u8_at(c, 10),
                end_bus: u8_at(c, 11),
            })
    }
}

/// One SRAT structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SratEntry {
    /// Processor Local APIC/SAPIC Affinity (type 0).
    ProcessorApic {
        /// Proximity domain (bits 7:0 and 31:8 together).
        domain: u32,
        /// APIC id.
        apic_id: u8,
        /// Flags: bit 0 enabled.
        flags: u32,
    },
    /// Memory Affinity (type 1).
    Memory {
        /// Proximity domain.
        domain: u32,
        /// First byte.
        base: u64,
        /// Bytes.
        size: u64,
        /// Flags: bit 0 enabled, bit 1 hot-pluggable, bit 2 non-volatile.
        flags: u32,
    },
    /// Processor Local x2APIC Affinity (type 2).
    ProcessorX2Apic {
        /// Proximity domain.
        domain: u32,
        /// x2APIC id.
        apic_id: u32,
        /// Flags: bit 0 enabled.
        flags: u32,
    },
    /// Any other type.
    Other {
        /// Its type.
        kind: u8,
        /// Its length.
        length: usize,
    },
}

impl SratEntry {
    /// The processor an affinity entry describes.
    pub fn processor(&self) -> Option<Processor> {
        match *self {
            Self::ProcessorApic { apic_id, flags, .. } => Some(Processor {
                apic_id: u32::from(apic_id),
                enabled: flags & ENABLED != 0,
            }),
            Self::ProcessorX2Apic { apic_id, flags, .. } => Some(Processor {
                apic_id,
                enabled: flags & ENABLED != 0,
            }),
            _ => None,
        }
    }

    /// The range of an enabled memory affinity entry.
    pub fn enabled_memory(&self) -> Option<(u64, u64)> {
        match *self {
            Self::Memory {
                base, size, flags, ..
            } if flags & ENABLED != 0 => Some((base, size)),
            _ => None,
        }
    }

    fn decode(r: &Raw<'_>) -> Self {
        let b = r.bytes;
        match r.kind {
            0 => Self::ProcessorApic {
                domain: u32::from(u8_at(b, 2)) | (le(b, 9, 3) as u32) << 8,
                apic_id: u8_at(b, 3),
                flags: u32_at(b, 4),
            },
            1 => Self::Memory {
                domain: u32_at(b, 2),
                base: u64_at(b, 8),
                size: u64_at(b, 16),
                flags: u32_at(b, 28),
            },
            2 => Self::ProcessorX2Apic {
                domain: u32_at(b, 4),
                apic_id: u32_at(b, 8),
                flags: u32_at(b, 12),
            },
            kind => Self::Other {
                kind,
                length: b.len(),
            },
        }
    }

    fn min_len(kind: u8) -> usize {
        match kind {
            0 => 16,
            1 => 40,
            2 => 24,
            _ => 2,
        }
    }
}

/// Where the SRAT's structures start (after 12 reserved bytes).
const SRAT_ENTRIES: usize = HEADER_LEN + 12;

/// The SRAT, its structures checked.
#[derive(Clone, Copy, Debug)]
pub struct Srat<'a> {
    sdt: Sdt<'a>,
}

impl<'a> Srat<'a> {
    /// Checks every structure's length.
    pub fn new(sdt: Sdt<'a>) -> Result<Self, AcpiError> {
        let sdt = sdt.expect(Signature::SRAT)?.at_least(SRAT_ENTRIES)?;
        check_structures(
            &sdt,
            SRAT_ENTRIES,
            LengthField::Byte,
            SratEntry::min_len,
            |_| Ok(()),
        )?;
        Ok(Self { sdt })
    }

    /// The structures, in order.
    pub fn entries(&self) -> impl Iterator<Item = SratEntry> + Clone + 'a {
        Structures::new(self.sdt.bytes, SRAT_ENTRIES, LengthField::Byte)
            .map(|r| SratEntry::decode(&r))
    }

    /// The processor affinity entries.
    pub fn processors(&self) -> impl Iterator<Item = Processor> + Clone + 'a {
        self.entries().filter_map(|e| e.processor())
    }

    /// The ranges of the enabled memory affinity entries.
    pub fn memory(&self) -> impl Iterator<Item = (u64, u64)> + Clone + 'a {
        self.entries().filter_map(|e| e.enabled_memory())
    }
}

/// CEDT structure types.
pub mod cedt_kind {
    /// CXL Host Bridge Structure.
    pub const CHBS: u8 = 0;
    /// CXL Fixed Memory Window Structure.
    pub const CFMWS: u8 = 1;
    /// CXL XOR Interleave Math Structure.
    pub const CXIMS: u8 = 2;
}

/// Bytes of a CHBS.
pub const CHBS_LEN: usize = 32;
/// Bytes of a CFMWS before its target list.
pub const CFMWS_FIXED: usize = 36;
/// Bytes of a CXIMS before its maps.
pub const CXIMS_FIXED: usize = 8;

/// CFMWS window restriction bits.
pub mod restriction {
    /// Device-coherent (Type 2) memory.
    pub const TYPE2: u16 = 1 << 0;
    /// Host-only coherent (Type 3) memory.
    pub const TYPE3: u16 = 1 << 1;
    /// Volatile memory.
    pub const VOLATILE: u16 = 1 << 2;
    /// Persistent memory.
    pub const PERSISTENT: u16 = 1 << 3;
    /// Fixed device configuration.
    pub const FIXED: u16 = 1 << 4;
}

/// Ways of an interleave-ways encoding (ENIW, and the boot info's ways encoding): 0–4 for
/// 1–16 ways, 8–10 for 3, 6, 12 ways.
pub fn ways_of(eniw: u8) -> Option<u32> {
    match eniw {
        0..=4 => Some(1 << eniw),
        8..=10 => Some(3 << (eniw - 8)),
        _ => None,
    }
}

/// XOR maps a window of `ways` needs: log2 of the power-of-2 factor of the ways.
pub fn xor_maps_needed(ways: u32) -> u32 {
    if ways == 0 { 0 } else { ways.trailing_zeros() }
}

/// A CXL Host Bridge Structure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chbs {
    /// The host bridge's `_UID`.
    pub uid: u32,
    /// CXL version (0: CXL 1.1 RCRB, 1: CXL 2.0 CHBCR).
    pub version: u32,
    /// Base of the CHBCR (or RCRB).
    pub base: u64,
    /// Its length.
    pub length: u64,
}

/// A CXL Fixed Memory Window Structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cfmws<'a> {
    /// Base HPA.
    pub base: u64,
    /// Size.
    pub size: u64,
    /// Encoded interleave ways (ENIW).
    pub eniw: u8,
    /// Interleave arithmetic: 0 modulo, 1 XOR.
    pub arithmetic: u8,
    /// Host-bridge interleave granularity encoding: 256 B << HBIG.
    pub hbig: u32,
    /// Window restrictions ([`restriction`]).
    pub restrictions: u16,
    /// QoS throttling group.
    pub qtg: u16,
    targets: &'a [u8],
}

impl<'a> Cfmws<'a> {
    /// The number of ways (checked to be valid).
    pub fn ways(&self) -> u32 {
        ways_of(self.eniw).unwrap_or(0)
    }

    /// Target host-bridge UIDs in interleave position order.
    pub fn targets(&self) -> impl Iterator<Item = u32> + Clone + 'a {
        self.targets.chunks_exact(4).map(|c| u32_at(c, 0))
    }

    /// The target at `position`.
    pub fn target(&self, position: usize) -> Option<u32> {
        self.targets().nth(position)
    }
}

/// A CXL XOR Interleave Math Structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cxims<'a> {
    /// Host-bridge interleave granularity encoding the maps serve.
    pub hbig: u8,
    maps: &'a [u8],
}

impl<'a> Cxims<'a> {
    /// The maps (NIXM of them).
    pub fn maps(&self) -> impl Iterator<Item = u64> + Clone + 'a {
        self.maps.chunks_exact(8).map(|c| u64_at(c, 0))
    }

    /// Map `i`.
    pub fn map(&self, i: usize) -> Option<u64> {
        self.maps().nth(i)
    }

    /// NIXM.
    pub fn count(&self) -> usize {
        self.maps.len() / 8
    }
}

/// One CEDT structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CedtEntry<'a> {
    /// CHBS.
    Chbs(Chbs),
    /// CFMWS.
    Cfmws(Cfmws<'a>),
    /// CXIMS.
    Cxims(Cxims<'a>),
    /// Any other type.
    Other {
        /// Its type.
        kind: u8,
        /// Its length.
        length: usize,
    },
}

impl<'a> CedtEntry<'a> {
    fn decode(r: &Raw<'a>) -> Self {
        let b = r.bytes;
        match r.kind {
            cedt_kind::CHBS => Self::Chbs(Chbs {
                uid: u32_at(b, 4),
                version: u32_at(b, 8),
                base: u64_at(b, 16),
                length: u64_at(b, 24),
            }),
            cedt_kind::CFMWS => Self::Cfmws(Cfmws {
                base: u64_at(b, 8),
                size: u64_at(b, 16),
                eniw: u8_at(b, 24),
                arithmetic: u8_at(b, 25),
                hbig: u32_at(b, 28),
                restrictions: u16_at(b, 32),
                qtg: u16_at(b, 34),
                targets: b.get(CFMWS_FIXED..).unwrap_or(&[]),
            }),
            cedt_kind::CXIMS => Self::Cxims(Cxims {
                hbig: u8_at(b, 6),
                maps: b.get(CXIMS_FIXED..).unwrap_or(&[]),
            }),
            kind => Self::Other {
                kind,
                length: b.len(),
            },
        }
    }
}

/// The CEDT, its structures checked: a CHBS is 32 bytes, a CFMWS has a valid ENIW and exactly
/// one 4-byte target per way, a CXIMS exactly NIXM 8-byte maps.
#[derive(Clone, Copy, Debug)]
pub struct Cedt<'a> {
    sdt: Sdt<'a>,
}

impl<'a> Cedt<'a> {
    /// Checks every structure.
    pub fn new(sdt: Sdt<'a>) -> Result<Self, AcpiError> {
        let sdt = sdt.expect(Signature::CEDT)?;
        let bad = |r: &Raw<'_>| AcpiError::StructureLength {
            table: Signature::CEDT,
            offset: r.offset,
            kind: r.kind,
            length: r.bytes.len(),
        };
        check_structures(
            &sdt,
            HEADER_LEN,
            LengthField::Word,
            |kind| match kind {
                cedt_kind::CHBS => CHBS_LEN,
                cedt_kind::CFMWS => CFMWS_FIXED,
                cedt_kind::CXIMS => CXIMS_FIXED,
                _ => 4,
            },
            |r| match r.kind {
                cedt_kind::CHBS if r.bytes.len() != CHBS_LEN => Err(bad(r)),
                cedt_kind::CFMWS => {
                    let eniw = u8_at(r.bytes, 24);
                    let ways = ways_of(eniw).ok_or(AcpiError::CfmwsWays {
                        offset: r.offset,
                        eniw,
                    })?;
                    if r.bytes.len() != CFMWS_FIXED + 4 * ways as usize {
                        return Err(bad(r));
                    }
                    Ok(())
                }
                cedt_kind::CXIMS
                    if r.bytes.len() != CXIMS_FIXED + 8 * usize::from(u8_at(r.bytes, 7)) =>
                {
                    Err(bad(r))
                }
                _ => Ok(()),
            },
        )?;
        Ok(Self { sdt })
    }

    /// The structures, in order.
    pub fn entries(&self) -> impl Iterator<Item = CedtEntry<'a>> + Clone + 'a {
        Structures::new(self.sdt.bytes, HEADER_LEN, LengthField::Word)
            .map(|r| CedtEntry::decode(&r))
    }

    /// The CHBSs.
    pub fn host_bridges(&self) -> impl Iterator<Item = Chbs> + Clone + 'a {
        self.entries().filter_map(|e| match e {
            CedtEntry::Chbs(c) => Some(c),
            _ => None,
        })
    }

    /// The CFMWSs.
    pub fn windows(&self) -> impl Iterator<Item = Cfmws<'a>> + Clone + 'a {
        self.entries().filter_map(|e| match e {
            CedtEntry::Cfmws(c) => Some(c),
            _ => None,
        })
    }

    /// The CXIMSs.
    pub fn xor_maps(&self) -> impl Iterator<Item = Cxims<'a>> + Clone + 'a {
        self.entries().filter_map(|e| match e {
            CedtEntry::Cxims(c) => Some(c),
            _ => None,
        })
    }
}
