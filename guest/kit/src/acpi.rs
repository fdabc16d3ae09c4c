//! ACPI tables (docs/guest-abi.md, device kind 9): copied out of guest memory with volatile
//! reads ([`read_area`]), then read and checksummed ([`parse`]) and compared with the boot
//! info's platform ([`check`], [`BootPlatform`]).
//!
//! ```ignore
//! static BUF: SpinLock<[u8; TABLES_MAX]> = SpinLock::new([0; TABLES_MAX]);
//! let mut buf = BUF.lock();
//! let area = acpi::read_area(boot, &mut buf[..])?;
//! let tables = acpi::Tables::load(area, area.base())?;
//! let platform = acpi::BootPlatform::from_boot(boot);
//! let summary = platform.with(|p| acpi::check::check(&tables, p, &mut |m| println!("{m}")))?;
//! ```

pub mod check;
pub mod parse;

use core::fmt;

pub use check::{BootEcam, BootHostBridge, BootWindow, Mismatch, Platform, Summary};
pub use parse::{
    AcpiError, Area, Cedt, CedtEntry, Cfmws, Chbs, Cxims, Madt, MadtEntry, Mcfg, McfgEntry,
    Processor, Rsdp, Sdt, Signature, Srat, SratEntry, Tables,
};

use crate::boot::{BootInfo, Device, DeviceKind, MemoryKind};
use crate::cxl::{self, WindowEntry};
use crate::fixed::FixedVec;

/// Room cxlvm leaves for the tables (`0xe0000` up to 1 MiB): a buffer this large holds any
/// tables entry cxlvm writes.
pub const TABLES_MAX: usize = 0x2_0000;

/// The boot info's ACPI tables entry (kind 9).
pub fn tables_entry(boot: &BootInfo) -> Option<Device> {
    boot.find_device(DeviceKind::AcpiTables)
}

/// Why the tables could not be copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The boot info has no ACPI tables entry.
    NoEntry,
    /// The entry is larger than the buffer.
    TooLarge {
        /// The entry's size.
        size: u64,
        /// The buffer's.
        room: usize,
    },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoEntry => f.write_str("no ACPI tables entry (kind 9) in the boot info"),
            Self::TooLarge { size, room } => {
                write!(
                    f,
                    "ACPI tables entry of {size:#x} bytes, room for {room:#x}"
                )
            }
        }
    }
}

/// Copies the tables entry's bytes into `buf` (8-byte volatile reads, then single bytes) and
/// returns them as the area at the entry's base (the RSDP).
pub fn read_area<'b>(boot: &BootInfo, buf: &'b mut [u8]) -> Result<Area<'b>, ReadError> {
    let dev = tables_entry(boot).ok_or(ReadError::NoEntry)?;
    let room = buf.len();
    let len = usize::try_from(dev.size)
        .ok()
        .filter(|&n| n <= room)
        .ok_or(ReadError::TooLarge {
            size: dev.size,
            room,
        })?;
    let mmio = dev.mmio();
    let buf = &mut buf[..len];
    let aligned = dev.base.is_multiple_of(8);
    let mut at = 0;
    if aligned {
        for chunk in buf.chunks_exact_mut(8) {
            chunk.copy_from_slice(&mmio.read_u64(at as u64).to_le_bytes());
            at += 8;
        }
    }
    for b in &mut buf[at..] {
        *b = mmio.read_u8(at as u64);
        at += 1;
    }
    Ok(Area::new(dev.base, buf))
}

/// Most memory map entries of one kind [`BootPlatform`] keeps.
pub const MAX_RANGES: usize = 16;
/// Most host bridges.
pub const MAX_HOST_BRIDGES: usize = 16;
/// Most windows.
pub const MAX_WINDOWS: usize = 64;

/// The boot info's platform, collected for [`check::check`].
#[derive(Clone, Debug)]
pub struct BootPlatform {
    vcpus: u32,
    ram: FixedVec<(u64, u64), MAX_RANGES>,
    acpi_memory: FixedVec<(u64, u64), MAX_RANGES>,
    tables: (u64, u64),
    ecam: Option<BootEcam>,
    host_bridges: FixedVec<BootHostBridge, MAX_HOST_BRIDGES>,
    windows: FixedVec<WindowEntry, MAX_WINDOWS>,
    /// Whether an entry did not fit (more entries than the capacities above).
    pub truncated: bool,
}

impl BootPlatform {
    /// Collects the vCPUs, the memory map's RAM and ACPI entries, the tables entry, the first
    /// ECAM, the host bridges and the windows.
    pub fn from_boot(boot: &BootInfo) -> Self {
        let mut p = BootPlatform {
            vcpus: boot.vcpu_count(),
            ram: FixedVec::new(),
            acpi_memory: FixedVec::new(),
            tables: tables_entry(boot).map_or((0, 0), |d| (d.base, d.size)),
            ecam: boot.find_device(DeviceKind::Ecam).map(|d| ecam_of(&d)),
            host_bridges: FixedVec::new(),
            windows: FixedVec::new(),
            truncated: false,
        };
        for m in boot.memory_map() {
            let list = match m.kind {
                MemoryKind::Ram => &mut p.ram,
                MemoryKind::Acpi => &mut p.acpi_memory,
                _ => continue,
            };
            p.truncated |= list.push((m.base, m.size)).is_err();
        }
        for h in cxl::host_bridges(boot) {
            let hb = BootHostBridge {
                uid: h.uid,
                chbcr: h.chbcr,
                size: h.size,
            };
            p.truncated |= p.host_bridges.push(hb).is_err();
        }
        for w in cxl::windows(boot) {
            p.truncated |= p.windows.push(w).is_err();
        }
        p
    }

    /// Runs `f` with the platform as [`check::check`] takes it.
    pub fn with<R>(&self, f: impl FnOnce(&Platform<'_>) -> R) -> R {
        let mut windows: FixedVec<BootWindow<'_>, MAX_WINDOWS> = FixedVec::new();
        for w in self.windows.iter() {
            let _ = windows.push(BootWindow {
                base: w.base,
                size: w.size,
                ways_enc: w.flags.ways_enc,
                gran_enc: w.flags.gran_enc,
                arithmetic: w.flags.arithmetic,
                targets: w.targets(),
            });
        }
        f(&Platform {
            vcpus: self.vcpus,
            ram: &self.ram,
            acpi_memory: &self.acpi_memory,
            tables: self.tables,
            ecam: self.ecam,
            host_bridges: &self.host_bridges,
            windows: &windows,
        })
    }
}

/// The ECAM of a kind 4 entry as the MCFG describes it: bus 0's address (the entry's range
/// starts at its start bus unless it is large enough for buses 0 to end, as `pci::Ecam` reads
/// it), segment (`port`), start and end bus (`flags`).
fn ecam_of(d: &Device) -> BootEcam {
    let start_bus = d.flags as u8;
    let end_bus = (d.flags >> 8) as u8;
    let from_zero = d.size >= (u64::from(end_bus) + 1) << 20;
    let bus0 = if from_zero {
        d.base
    } else {
        d.base.wrapping_sub(u64::from(start_bus) << 20)
    };
    BootEcam {
        bus0,
        segment: d.port as u16,
        start_bus,
        end_bus,
    }
}
