//! Placing the tables in guest memory.

use std::path::Path;

use crate::error::AcpiError;
use crate::platform::{MemRange, Platform};
use crate::{dsdt, tables};

/// Which table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// Root System Description Pointer (revision 2).
    Rsdp,
    /// Extended System Description Table.
    Xsdt,
    /// Fixed ACPI Description Table (signature `FACP`).
    Fadt,
    /// Differentiated System Description Table.
    Dsdt,
    /// Multiple APIC Description Table (signature `APIC`).
    Madt,
    /// PCI Express memory-mapped configuration space.
    Mcfg,
    /// System Resource Affinity Table.
    Srat,
    /// System Locality Information Table.
    Slit,
    /// CXL Early Discovery Table.
    Cedt,
}

impl TableKind {
    /// The table's signature (`RSDP` for the RSDP, whose own is `RSD PTR `); also the stem of
    /// its file name in [`AcpiTables::dump`].
    pub fn signature(self) -> &'static str {
        match self {
            TableKind::Rsdp => "RSDP",
            TableKind::Xsdt => "XSDT",
            TableKind::Fadt => "FACP",
            TableKind::Dsdt => "DSDT",
            TableKind::Madt => "APIC",
            TableKind::Mcfg => "MCFG",
            TableKind::Srat => "SRAT",
            TableKind::Slit => "SLIT",
            TableKind::Cedt => "CEDT",
        }
    }
}

/// One table and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Which.
    pub kind: TableKind,
    /// Its guest-physical address.
    pub address: u64,
    /// Its bytes (length and checksum final).
    pub bytes: Vec<u8>,
}

impl Table {
    /// The guest-physical range it occupies.
    pub fn range(&self) -> MemRange {
        MemRange::new(self.address, self.bytes.len() as u64)
    }
}

/// Places the tables contiguously from a guest-physical base, each 16-byte aligned, in the
/// order RSDP, XSDT, FADT, DSDT, MADT, MCFG, SRAT, SLIT, CEDT (the CEDT only when the platform
/// has CXL host bridges).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Where the RSDP goes; 16-byte aligned.
    pub base: u64,
}

/// Alignment of every table in the blob.
pub const TABLE_ALIGN: usize = 16;

/// The tables of a platform, placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    base: u64,
    blob: Vec<u8>,
    tables: Vec<Table>,
}

impl Layout {
    /// Tables from `base`.
    pub const fn new(base: u64) -> Self {
        Layout { base }
    }

    /// Validates `platform` and builds its tables at this layout's base.
    pub fn build(&self, platform: &Platform) -> Result<AcpiTables, AcpiError> {
        platform.validate()?;
        if !self.base.is_multiple_of(TABLE_ALIGN as u64) {
            return Err(AcpiError::TableBase { base: self.base });
        }
        // Tables whose bytes do not depend on where anything is.
        let mut fixed = vec![
            (TableKind::Dsdt, dsdt::dsdt(platform)),
            (TableKind::Madt, tables::madt(platform)),
            (TableKind::Mcfg, tables::mcfg(platform)),
            (TableKind::Srat, tables::srat(platform)),
            (TableKind::Slit, tables::slit(platform)),
        ];
        if !platform.host_bridges.is_empty() {
            fixed.push((TableKind::Cedt, tables::cedt(platform)));
        }
        // Offsets: RSDP, XSDT (FADT + every fixed table but the DSDT), FADT, the rest.
        let pad = |n: usize| n.next_multiple_of(TABLE_ALIGN);
        let xsdt_at = pad(tables::RSDP_LEN);
        let xsdt_len = tables::xsdt_len(fixed.len());
        let fadt_at = xsdt_at + pad(xsdt_len);
        let mut at = fadt_at + pad(tables::FADT_LEN);
        let mut offsets = Vec::with_capacity(fixed.len());
        for (_, t) in &fixed {
            offsets.push(at);
            at += pad(t.len());
        }
        let total = at;
        let addr = |off: usize| self.base + off as u64;
        if self.base.checked_add(total as u64).is_none() {
            return Err(AcpiError::TableOverflow {
                base: self.base,
                len: total,
            });
        }
        let dsdt_at = offsets[0];
        let mut in_xsdt = vec![addr(fadt_at)];
        in_xsdt.extend(offsets[1..].iter().map(|o| addr(*o)));

        let mut list = vec![
            Table {
                kind: TableKind::Rsdp,
                address: addr(0),
                bytes: tables::rsdp(addr(xsdt_at)),
            },
            Table {
                kind: TableKind::Xsdt,
                address: addr(xsdt_at),
                bytes: tables::xsdt(&in_xsdt),
            },
            Table {
                kind: TableKind::Fadt,
                address: addr(fadt_at),
                bytes: tables::fadt(addr(dsdt_at), &platform.power),
            },
        ];
        list.extend(
            fixed
                .into_iter()
                .zip(offsets)
                .map(|((kind, bytes), off)| Table {
                    kind,
                    address: addr(off),
                    bytes,
                }),
        );
        let mut blob = vec![0u8; total];
        for t in &list {
            let off = (t.address - self.base) as usize;
            blob[off..off + t.bytes.len()].copy_from_slice(&t.bytes);
        }
        Ok(AcpiTables {
            base: self.base,
            blob,
            tables: list,
        })
    }
}

impl AcpiTables {
    /// Guest-physical address of the RSDP (for `hvm_start_info.rsdp_paddr` or
    /// `boot_params.acpi_rsdp_addr`).
    pub fn rsdp_address(&self) -> u64 {
        self.base
    }

    /// The bytes to copy to [`AcpiTables::range`]`.base` (tables and the zero padding
    /// between them).
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// The guest-physical range of the blob: report it as ACPI data (E820 type 3) in the
    /// memory map (rounded out to pages if the map wants pages).
    pub fn range(&self) -> MemRange {
        MemRange::new(self.base, self.blob.len() as u64)
    }

    /// Every table, in blob order.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// One table.
    pub fn get(&self, kind: TableKind) -> Option<&Table> {
        self.tables.iter().find(|t| t.kind == kind)
    }

    /// Writes each table to `dir/<SIG>.dat` (`RSDP.dat`, `XSDT.dat`, `FACP.dat`, `DSDT.dat`,
    /// `APIC.dat`, …), creating `dir` if needed, and returns the files written.
    pub fn dump(&self, dir: &Path) -> Result<Vec<std::path::PathBuf>, AcpiError> {
        std::fs::create_dir_all(dir).map_err(|source| AcpiError::Dump {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            let path = dir.join(format!("{}.dat", t.kind.signature()));
            std::fs::write(&path, &t.bytes).map_err(|source| AcpiError::Dump {
                path: path.clone(),
                source,
            })?;
            files.push(path);
        }
        Ok(files)
    }
}
