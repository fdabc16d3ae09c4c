//! Linux boot protocols for cxlvm: loads a kernel into guest memory and writes what its entry
//! expects, through `linux-loader`.
//!
//! * An uncompressed ELF `vmlinux` with a Xen PVH note boots through the **PVH** entry: 32-bit
//!   protected mode, paging off, `EBX` = address of an `hvm_start_info` (command line, memory
//!   map, initrd as module 0, RSDP).
//! * A **bzImage** boots through the 64-bit boot protocol: long mode with identity page tables,
//!   `RSI` = address of the zero page (`boot_params` with setup header, e820, command line,
//!   initrd, RSDP).
//!
//! Everything here is data placed in guest memory plus the entry state the VMM must give the
//! boot vCPU ([`Entry`]); creating vCPUs and setting registers is the VMM's job.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Where the boot structures go in low guest memory (below 1 MiB, reserved in the memory map).
pub mod layout {
    /// GDT for the 64-bit boot protocol (4 entries).
    pub const GDT: u64 = 0x500;
    /// `hvm_start_info` (PVH) or the zero page (`boot_params`, bzImage).
    pub const BOOT_PARAMS: u64 = 0x7000;
    /// PVH memory map table (after `hvm_start_info`).
    pub const PVH_MEMMAP: u64 = 0x7100;
    /// PVH module list (the initrd).
    pub const PVH_MODLIST: u64 = 0x7f00;
    /// Identity page tables for the 64-bit boot protocol: PML4, PDPT, 4 PDs (first 4 GiB).
    pub const PAGE_TABLES: u64 = 0x9000;
    /// Kernel command line.
    pub const CMDLINE: u64 = 0x2_0000;
    /// Most bytes of command line (with its NUL).
    pub const CMDLINE_MAX: u64 = 0x1_0000;
    /// Lowest address the kernel may load at.
    pub const HIGH_MEMORY: u64 = 0x10_0000;
    /// Start of the reserved area below 1 MiB (EBDA / BIOS area; ACPI tables live here).
    pub const LOW_RESERVED: u64 = 0x9_fc00;
}

/// e820 / PVH memory-map entry types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// Usable RAM.
    Ram,
    /// Reserved (not RAM, keep out).
    Reserved,
    /// ACPI tables (reclaimable once parsed).
    Acpi,
}

impl MemKind {
    fn e820(self) -> u32 {
        match self {
            MemKind::Ram => 1,
            MemKind::Reserved => 2,
            MemKind::Acpi => 3,
        }
    }
}

/// One memory-map entry (guest-physical).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemEntry {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
    /// What it is.
    pub kind: MemKind,
}

/// What to boot and with what.
#[derive(Clone, Debug)]
pub struct LinuxBoot {
    /// Kernel image: ELF `vmlinux` with a PVH note, or bzImage.
    pub kernel: PathBuf,
    /// Initial ramdisk, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// The guest's memory map (RAM, reserved, ACPI), sorted by base.
    pub memory_map: Vec<MemEntry>,
    /// Guest-physical address of the ACPI RSDP, if there are ACPI tables.
    pub rsdp: Option<u64>,
}

/// The kernel format found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// ELF `vmlinux` through the PVH entry.
    Pvh,
    /// bzImage through the 64-bit boot protocol.
    BzImage,
}

/// How the boot vCPU must start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// 32-bit protected mode, paging off, flat segments; `RIP` = `rip`, `RBX` = `start_info`.
    Pvh {
        /// Entry point.
        rip: u64,
        /// Address of `hvm_start_info`.
        start_info: u64,
    },
    /// 64-bit long mode with the identity tables at [`layout::PAGE_TABLES`] and the GDT at
    /// [`layout::GDT`]; `RIP` = `rip`, `RSI` = `zero_page`.
    Linux64 {
        /// Entry point (64-bit entry of the protected-mode kernel).
        rip: u64,
        /// Address of `boot_params`.
        zero_page: u64,
    },
}

/// What was loaded where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The kernel format.
    pub format: KernelFormat,
    /// How to enter it.
    pub entry: Entry,
    /// Kernel image `[start, end)`.
    pub kernel: (u64, u64),
    /// Initrd `[start, end)`, if any.
    pub initrd: Option<(u64, u64)>,
}

/// Why a kernel could not be booted (all but `Memory` are the user's to fix).
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Unreadable {
        /// Which file.
        what: &'static str,
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A file is not a regular file.
    #[error("{what} {path}: not a regular file")]
    NotRegular {
        /// Which file.
        what: &'static str,
        /// Path.
        path: String,
    },
    /// Neither an ELF vmlinux nor a bzImage.
    #[error(
        "kernel {path}: neither an ELF vmlinux nor a bzImage (a compressed vmlinuz is a bzImage; a .deb or .gz is not)"
    )]
    UnknownFormat {
        /// Path.
        path: String,
    },
    /// An ELF kernel without a PVH entry note.
    #[error("kernel {path}: ELF without a Xen PVH entry note (build with CONFIG_PVH=y)")]
    NoPvhEntry {
        /// Path.
        path: String,
    },
    /// The loader refused the image (it does not fit, or is malformed).
    #[error("kernel {path}: {source}")]
    Load {
        /// Path.
        path: String,
        /// Cause.
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit in RAM below 4 GiB after the kernel.
    #[error(
        "initrd {path} is {size} bytes; it must fit in guest RAM below 4 GiB after the kernel ({room} bytes free); use more --memory"
    )]
    InitrdTooLarge {
        /// Path.
        path: String,
        /// Initrd size.
        size: u64,
        /// Bytes available.
        room: u64,
    },
    /// The command line is too long.
    #[error("kernel command line is {len} bytes; at most {max}")]
    CmdlineTooLong {
        /// Length with the NUL.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// The memory map has more entries than the zero page holds.
    #[error("memory map has {0} entries; the zero page holds 128")]
    MemoryMapTooLong(usize),
    /// Guest RAM could not be mapped for loading.
    #[error("mapping guest RAM for the loader: {0}")]
    MapRam(#[source] std::io::Error),
    /// Writing to guest memory failed.
    #[error("writing the boot structures to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The PVH configurator failed.
    #[error("PVH boot structures: {0}")]
    Pvh(#[from] linux_loader::configurator::Error),
}

impl BootError {
    /// Whether the user can fix it (a bad file or size), as opposed to an internal failure.
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            BootError::Memory(_) | BootError::Pvh(_) | BootError::MapRam(_)
        )
    }
}

fn open_regular(what: &'static str, path: &Path) -> Result<File, BootError> {
    let shown = || path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| BootError::Unreadable {
        what,
        path: shown(),
        source,
    })?;
    if !meta.is_file() {
        return Err(BootError::NotRegular {
            what,
            path: shown(),
        });
    }
    File::open(path).map_err(|source| BootError::Unreadable {
        what,
        path: shown(),
        source,
    })
}

/// The format of `kernel` from its first bytes.
pub fn detect(kernel: &Path) -> Result<KernelFormat, BootError> {
    let mut f = open_regular("kernel", kernel)?;
    let mut head = [0u8; 0x206];
    let n = read_up_to(&mut f, &mut head).map_err(|source| BootError::Unreadable {
        what: "kernel",
        path: kernel.display().to_string(),
        source,
    })?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Pvh);
    }
    if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::UnknownFormat {
        path: kernel.display().to_string(),
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// One range of guest RAM: `size` bytes at guest-physical `gpa`, stored in `file` from `offset`.
#[derive(Debug)]
pub struct RamRange<'a> {
    /// Guest-physical start.
    pub gpa: u64,
    /// Bytes.
    pub size: u64,
    /// The backing file (a memfd).
    pub file: &'a File,
    /// Offset of `gpa` in `file`.
    pub offset: u64,
}

/// A `vm-memory` view of guest RAM (its own shared mapping of the same files), for the loaders.
pub fn guest_memory(ranges: &[RamRange<'_>]) -> Result<GuestMemoryMmap, BootError> {
    let mut regions = Vec::with_capacity(ranges.len());
    for r in ranges {
        let file = r.file.try_clone().map_err(BootError::MapRam)?;
        regions.push((
            GuestAddress(r.gpa),
            r.size as usize,
            Some(vm_memory::FileOffset::new(file, r.offset)),
        ));
    }
    GuestMemoryMmap::from_ranges_with_files(&regions)
        .map_err(|e| BootError::MapRam(std::io::Error::other(e.to_string())))
}

/// Highest RAM address + 1 below 4 GiB in `map` (where the initrd must end).
fn low_ram_end(map: &[MemEntry]) -> u64 {
    map.iter()
        .filter(|e| e.kind == MemKind::Ram && e.base < 1 << 32)
        .map(|e| (e.base + e.size).min(1 << 32))
        .max()
        .unwrap_or(0)
}

/// Loads the kernel and initrd of `boot` into `mem` and writes the boot structures for its
/// format. Checks everything it can before writing.
pub fn load(mem: &GuestMemoryMmap, boot: &LinuxBoot) -> Result<Loaded, BootError> {
    let format = detect(&boot.kernel)?;
    let kpath = boot.kernel.display().to_string();
    let cmdline_len = boot.cmdline.len() as u64 + 1;
    if cmdline_len > layout::CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: cmdline_len,
            max: layout::CMDLINE_MAX,
        });
    }
    let mut kfile = open_regular("kernel", &boot.kernel)?;
    let load_err = |source| BootError::Load {
        path: kpath.clone(),
        source,
    };
    let high = Some(GuestAddress(layout::HIGH_MEMORY));
    let result = match format {
        KernelFormat::Pvh => Elf::load(mem, None, &mut kfile, high).map_err(load_err)?,
        KernelFormat::BzImage => BzImage::load(mem, None, &mut kfile, high).map_err(load_err)?,
    };
    let kernel_start = result.kernel_load.raw_value();
    let kernel_end = result.kernel_end;

    // The initrd goes at the top of RAM below 4 GiB, page aligned, as bootloaders do.
    let initrd = match &boot.initrd {
        None => None,
        Some(p) => {
            let mut f = open_regular("initrd", p)?;
            let size = f
                .seek(SeekFrom::End(0))
                .and_then(|s| f.seek(SeekFrom::Start(0)).map(|_| s))
                .map_err(|source| BootError::Unreadable {
                    what: "initrd",
                    path: p.display().to_string(),
                    source,
                })?;
            let top = low_ram_end(&boot.memory_map);
            let floor = kernel_end.next_multiple_of(4096);
            let start = top.saturating_sub(size) & !0xfff;
            if start < floor || top == 0 {
                return Err(BootError::InitrdTooLarge {
                    path: p.display().to_string(),
                    size,
                    room: top.saturating_sub(floor),
                });
            }
            mem.read_exact_volatile_from(GuestAddress(start), &mut f, size as usize)
                .map_err(BootError::Memory)?;
            Some((start, start + size))
        }
    };

    mem.write_slice(boot.cmdline.as_bytes(), GuestAddress(layout::CMDLINE))?;
    mem.write_obj(
        0u8,
        GuestAddress(layout::CMDLINE + boot.cmdline.len() as u64),
    )?;

    let entry = match format {
        KernelFormat::Pvh => {
            let PvhBootCapability::PvhEntryPresent(rip) = result.pvh_boot_cap else {
                return Err(BootError::NoPvhEntry { path: kpath });
            };
            write_pvh(mem, boot, initrd)?;
            Entry::Pvh {
                rip: rip.raw_value(),
                start_info: layout::BOOT_PARAMS,
            }
        }
        KernelFormat::BzImage => {
            let hdr = result.setup_header.unwrap_or_default();
            write_zero_page(mem, boot, hdr, initrd)?;
            write_long_mode_tables(mem)?;
            Entry::Linux64 {
                // The 64-bit entry is 0x200 past the protected-mode kernel's start.
                rip: kernel_start + 0x200,
                zero_page: layout::BOOT_PARAMS,
            }
        }
    };
    Ok(Loaded {
        format,
        entry,
        kernel: (kernel_start, kernel_end),
        initrd,
    })
}

/// `XEN_HVM_START_MAGIC_VALUE`.
const PVH_MAGIC: u32 = 0x336e_c578;

fn write_pvh(
    mem: &GuestMemoryMmap,
    boot: &LinuxBoot,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = boot
        .memory_map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.base,
            size: e.size,
            type_: e.kind.e820(),
            reserved: 0,
        })
        .collect();
    let max = (layout::PVH_MODLIST - layout::PVH_MEMMAP) as usize
        / std::mem::size_of::<hvm_memmap_table_entry>();
    if memmap.len() > max {
        return Err(BootError::MemoryMapTooLong(memmap.len()));
    }
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE,
        rsdp_paddr: boot.rsdp.unwrap_or(0),
        memmap_paddr: layout::PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(layout::BOOT_PARAMS));
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP));
    if let Some((start, end)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST;
        params = BootParams::new(&info, GuestAddress(layout::BOOT_PARAMS));
        params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: start,
                size: end - start,
                cmdline_paddr: 0,
                reserved: 0,
            }],
            GuestAddress(layout::PVH_MODLIST),
        );
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)?;
    Ok(())
}

/// `type_of_loader`: "undefined" bootloader id, as other VMMs use.
const LOADER_TYPE: u8 = 0xff;
/// `loadflags`: CAN_USE_HEAP.
const CAN_USE_HEAP: u8 = 0x80;

fn write_zero_page(
    mem: &GuestMemoryMmap,
    boot: &LinuxBoot,
    mut hdr: setup_header,
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let mut zp = boot_params::default();
    if boot.memory_map.len() > zp.e820_table.len() {
        return Err(BootError::MemoryMapTooLong(boot.memory_map.len()));
    }
    hdr.type_of_loader = LOADER_TYPE;
    hdr.loadflags |= CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = layout::CMDLINE as u32;
    hdr.cmdline_size = boot.cmdline.len() as u32;
    if let Some((start, end)) = initrd {
        hdr.ramdisk_image = start as u32;
        hdr.ramdisk_size = (end - start) as u32;
    }
    zp.hdr = hdr;
    zp.acpi_rsdp_addr = boot.rsdp.unwrap_or(0);
    for (i, e) in boot.memory_map.iter().enumerate() {
        zp.e820_table[i].addr = e.base;
        zp.e820_table[i].size = e.size;
        zp.e820_table[i].r#type = e.kind.e820();
    }
    zp.e820_entries = boot.memory_map.len() as u8;
    mem.write_obj(zp, GuestAddress(layout::BOOT_PARAMS))?;
    Ok(())
}

/// Identity-maps the first 4 GiB with 2 MiB pages (PML4, one PDPT, four PDs) and writes a GDT
/// with a 64-bit code segment (selector 0x10) and a data segment (0x18).
fn write_long_mode_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    const PRESENT_RW: u64 = 0x3;
    const LARGE: u64 = 0x80;
    let pml4 = layout::PAGE_TABLES;
    let pdpt = pml4 + 0x1000;
    let pd = pdpt + 0x1000;
    mem.write_obj(pdpt | PRESENT_RW, GuestAddress(pml4))?;
    for i in 0..4u64 {
        mem.write_obj((pd + i * 0x1000) | PRESENT_RW, GuestAddress(pdpt + i * 8))?;
    }
    for j in 0..2048u64 {
        mem.write_obj((j << 21) | PRESENT_RW | LARGE, GuestAddress(pd + j * 8))?;
    }
    for (i, d) in gdt().iter().enumerate() {
        mem.write_obj(*d, GuestAddress(layout::GDT + i as u64 * 8))?;
    }
    Ok(())
}

/// The boot GDT: null, null, 64-bit code (0x10), data (0x18).
pub fn gdt() -> [u64; 4] {
    [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff]
}

#[cfg(test)]
mod tests;
