//! Guest-physical layout of a test-guest machine.

/// Boot info block (one page; more if the tables need it).
pub const BOOT_INFO: u64 = 0x1000;
/// Room reserved for the boot info and its tables.
pub const BOOT_INFO_MAX: u64 = 0x4000;
/// GDT (and the TSS right after it).
pub const GDT: u64 = 0x5000;
/// TSS used by every vCPU (CPL3 guests never switch stacks through it).
pub const TSS: u64 = 0x5100;
/// ACPI tables (the RSDP first), up to [`IMAGE_MIN`]: the same place as on Linux machines (the
/// BIOS area), inside the reserved first MiB.
pub const ACPI_TABLES: u64 = 0xE_0000;
/// Lowest address a guest image may load at.
pub const IMAGE_MIN: u64 = 0x10_0000;
/// Low RAM ends at most here; the rest of RAM goes above 4 GiB.
pub const LOW_RAM_MAX: u64 = 0xC000_0000;
/// Where RAM beyond [`LOW_RAM_MAX`] continues.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// Default stack per vCPU.
pub const STACK_SIZE: u64 = 256 * 1024;
/// Platform devices of the foundation (null MMIO page) sit in the 32-bit hole.
pub const NULL_MMIO_BASE: u64 = 0xD000_0000;
/// Size of the null MMIO device.
pub const NULL_MMIO_SIZE: u64 = 0x1000;
/// The port-I/O window: port `p` is the MMIO address `PIO_WINDOW_BASE + p` (for CPL3 guests on
/// hosts that do not honour IOPL, such as `kvm_pvm`).
pub const PIO_WINDOW_BASE: u64 = 0xD001_0000;
/// Size of the port-I/O window (the whole 16-bit port space).
pub const PIO_WINDOW_SIZE: u64 = 0x1_0000;
/// CXL host bridge component registers: host bridge *i* at `CHBCR_BASE + i * 64 KiB`.
pub const CHBCR_BASE: u64 = 0xD010_0000;
/// PCIe ECAM (buses 0-255).
pub const ECAM_BASE: u64 = 0xE000_0000;
/// PCI MMIO aperture where BARs are assigned.
pub const PCI_APERTURE_BASE: u64 = 0x40_0000_0000;
/// Size of the PCI MMIO aperture.
pub const PCI_APERTURE_SIZE: u64 = 1 << 30;
/// CXL fixed memory windows start here (1 TiB) unless the topology gives bases.
pub const CXL_WINDOW_MIN: u64 = 1 << 40;
/// ... and must end below this (64 TiB; identity-mapped, below every x86-64 CPU's limit).
pub const CXL_WINDOW_MAX: u64 = 1 << 46;
/// Default base of the scratch window: 64 GiB, far above RAM.
pub const SCRATCH_WINDOW_BASE: u64 = 64 << 30;
/// Highest guest-physical address + 1 test guests can identity-map (canonical, 47 bits).
pub const MAX_GPA: u64 = 1 << 47;

/// I/O ports of the test-guest ABI.
pub mod ports {
    /// COM1 base (8 registers).
    pub const COM1: u16 = 0x3f8;
    /// Exit port: status = value & 0xff.
    pub const EXIT: u16 = 0x500;
    /// Boot mark: records the time of the guest's first instruction.
    pub const BOOT_MARK: u16 = 0x504;
    /// Null port: an exit that does nothing (the exit floor).
    pub const NULL: u16 = 0x508;
    /// Scratch window control: 1 = RAM alias on, 0 = off.
    pub const SCRATCH_CONTROL: u16 = 0x50c;
    /// CXL direct-mapping control: 1 = direct mappings allowed, 0 = MMIO path only.
    pub const CXL_DIRECT: u16 = 0x510;
    /// CXL window exit counter (read; write resets).
    pub const CXL_EXITS: u16 = 0x514;
}

/// Splits `ram_size` bytes of guest RAM into (guest address, size, offset in the RAM backing).
pub fn ram_ranges(ram_size: u64) -> Vec<(u64, u64, u64)> {
    let low = ram_size.min(LOW_RAM_MAX);
    let mut out = vec![(0, low, 0)];
    if ram_size > low {
        out.push((HIGH_RAM_START, ram_size - low, low));
    }
    out
}

/// Where the boot-time structures at the top of low RAM go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopOfRam {
    /// First byte of the page-table area.
    pub page_tables: u64,
    /// Lowest byte of the stacks (vCPU `n-1`'s stack bottom).
    pub stacks_bottom: u64,
    /// Top of vCPU 0's stack.
    pub stack_top: u64,
}

/// Places `pt_bytes` of page tables at the very top of low RAM and `vcpus` stacks below them.
/// Returns `None` when they do not fit above the image area.
pub fn top_of_ram(
    low_ram_end: u64,
    pt_bytes: u64,
    vcpus: u32,
    stack_size: u64,
) -> Option<TopOfRam> {
    let page_tables = low_ram_end.checked_sub(pt_bytes)? & !0xfff;
    let stacks = stack_size.checked_mul(u64::from(vcpus))?;
    let stacks_bottom = page_tables.checked_sub(stacks)?;
    (stacks_bottom >= IMAGE_MIN).then_some(TopOfRam {
        page_tables,
        stacks_bottom,
        stack_top: page_tables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_32bit_hole() {
        assert_eq!(ram_ranges(64 << 20), vec![(0, 64 << 20, 0)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, LOW_RAM_MAX, 0),
                (HIGH_RAM_START, (4 << 30) - LOW_RAM_MAX, LOW_RAM_MAX)
            ]
        );
    }

    #[test]
    fn top_of_ram_refuses_when_it_reaches_the_image_area() {
        let t = top_of_ram(16 << 20, 0x3000, 2, STACK_SIZE).unwrap();
        assert_eq!(t.page_tables, (16 << 20) - 0x3000);
        assert_eq!(t.stacks_bottom, t.page_tables - 2 * STACK_SIZE);
        assert_eq!(top_of_ram(IMAGE_MIN + 0x1000, 0x1000, 1, STACK_SIZE), None);
    }
}
