//! The boot info block handed to test guests in RDI (docs/guest-abi.md, version 1).

/// `CXLB` as a little-endian u32.
pub const MAGIC: u32 = 0x424c_5843;
/// ABI version written by this cxlvm.
pub const VERSION: u16 = 1;
/// Size of the fixed header in version 1.
pub const HEADER_SIZE: u16 = 0x60;

/// Memory map entry kinds.
pub mod mem_kind {
    /// Guest RAM.
    pub const RAM: u32 = 1;
    /// RAM reserved by cxlvm (boot info, GDT, page tables, stacks).
    pub const RESERVED: u32 = 2;
    /// RAM holding the ACPI tables (reserved like [`RESERVED`]; the guest must not write it).
    pub const ACPI: u32 = 3;
}

/// Device table kinds.
pub mod dev_kind {
    /// Scratch window (container of MMIO + RAM alias); `port` is its control port.
    pub const SCRATCH_WINDOW: u32 = 1;
    /// Null MMIO device: exits that do nothing.
    pub const NULL_MMIO: u32 = 2;
    /// Port-I/O window: port `p` at MMIO address `base + p`.
    pub const PIO_WINDOW: u32 = 3;
    /// PCIe ECAM: `flags` = start bus | end bus << 8.
    pub const ECAM: u32 = 4;
    /// CXL host bridge: base/size = CHBCR, `flags` = UID, `port` = root bus | root ports << 8 |
    /// passthrough << 16.
    pub const CXL_HOST_BRIDGE: u32 = 5;
    /// CXL fixed memory window: `flags` = ways enc | gran enc << 4 | arithmetic << 8 | targets << 16,
    /// `port` = target UIDs 0-7 (bytes).
    pub const CXL_WINDOW: u32 = 6;
    /// Targets 8-15 of the window before it.
    pub const CXL_WINDOW_TARGETS: u32 = 7;
    /// PCI MMIO aperture.
    pub const PCI_APERTURE: u32 = 8;
    /// ACPI tables: `base` = the RSDP (revision 2), `size` = bytes of every table from the
    /// RSDP on (they lie in `[base, base + size)`).
    pub const ACPI_TABLES: u32 = 9;
}

/// One device table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    /// Kind (see [`dev_kind`]).
    pub kind: u32,
    /// Kind-specific flags.
    pub flags: u32,
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Control port, or 0.
    pub port: u64,
}

/// Contents of the boot info.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// TSC frequency in kHz (0 if unknown).
    pub tsc_khz: u64,
    /// Total guest RAM.
    pub ram_size: u64,
    /// Free RAM the guest may use: `[free_start, free_end)`.
    pub free_start: u64,
    /// End of the free range.
    pub free_end: u64,
    /// Top of vCPU 0's stack.
    pub stack_top: u64,
    /// Stack bytes per vCPU.
    pub stack_size: u64,
    /// Memory map: (base, size, kind).
    pub mem_map: Vec<(u64, u64, u32)>,
    /// Device table.
    pub devices: Vec<Device>,
    /// Guest command line.
    pub cmdline: String,
}

impl BootInfo {
    /// Serialises the block (header, memory map, devices, command line).
    pub fn to_bytes(&self) -> Vec<u8> {
        let hdr = usize::from(HEADER_SIZE);
        let mm_off = hdr;
        let dev_off = mm_off + self.mem_map.len() * 24;
        let cmd_off = dev_off + self.devices.len() * 32;
        let total = cmd_off + self.cmdline.len();
        let mut b = vec![0u8; total];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(0x00, &MAGIC.to_le_bytes());
        put(0x04, &VERSION.to_le_bytes());
        put(0x06, &HEADER_SIZE.to_le_bytes());
        put(0x08, &(total as u32).to_le_bytes());
        put(0x0c, &self.vcpu_count.to_le_bytes());
        put(0x10, &self.tsc_khz.to_le_bytes());
        put(0x18, &self.ram_size.to_le_bytes());
        put(0x20, &self.free_start.to_le_bytes());
        put(0x28, &self.free_end.to_le_bytes());
        put(0x30, &self.stack_top.to_le_bytes());
        put(0x38, &self.stack_size.to_le_bytes());
        put(0x40, &(mm_off as u32).to_le_bytes());
        put(0x44, &(self.mem_map.len() as u32).to_le_bytes());
        put(0x48, &(dev_off as u32).to_le_bytes());
        put(0x4c, &(self.devices.len() as u32).to_le_bytes());
        put(0x50, &(cmd_off as u32).to_le_bytes());
        put(0x54, &(self.cmdline.len() as u32).to_le_bytes());
        for (i, &(base, size, kind)) in self.mem_map.iter().enumerate() {
            let at = mm_off + i * 24;
            put(at, &base.to_le_bytes());
            put(at + 8, &size.to_le_bytes());
            put(at + 16, &kind.to_le_bytes());
        }
        for (i, d) in self.devices.iter().enumerate() {
            let at = dev_off + i * 32;
            put(at, &d.kind.to_le_bytes());
            put(at + 4, &d.flags.to_le_bytes());
            put(at + 8, &d.base.to_le_bytes());
            put(at + 16, &d.size.to_le_bytes());
            put(at + 24, &d.port.to_le_bytes());
        }
        put(cmd_off, self.cmdline.as_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn layout_matches_the_documented_offsets() {
        let bi = BootInfo {
            vcpu_count: 2,
            tsc_khz: 2_000_000,
            ram_size: 64 << 20,
            free_start: 0x30_0000,
            free_end: 0x3f0_0000,
            stack_top: 0x3ff_0000,
            stack_size: 0x4_0000,
            mem_map: vec![(0, 64 << 20, mem_kind::RAM)],
            devices: vec![Device {
                kind: dev_kind::SCRATCH_WINDOW,
                flags: 0,
                base: 64 << 30,
                size: 1 << 20,
                port: 0x50c,
            }],
            cmdline: "mode=stress".into(),
        };
        let b = bi.to_bytes();
        assert_eq!(u32_at(&b, 0), MAGIC);
        assert_eq!(&b[0..4], b"CXLB");
        assert_eq!(u32_at(&b, 0x0c), 2);
        assert_eq!(u64_at(&b, 0x18), 64 << 20);
        let mm = u32_at(&b, 0x40) as usize;
        assert_eq!(u64_at(&b, mm + 8), 64 << 20);
        let dev = u32_at(&b, 0x48) as usize;
        assert_eq!(u32_at(&b, dev), dev_kind::SCRATCH_WINDOW);
        assert_eq!(u64_at(&b, dev + 8), 64 << 30);
        assert_eq!(u64_at(&b, dev + 24), 0x50c);
        let cmd = u32_at(&b, 0x50) as usize;
        let len = u32_at(&b, 0x54) as usize;
        assert_eq!(&b[cmd..cmd + len], b"mode=stress");
        assert_eq!(u32_at(&b, 0x08) as usize, b.len());
    }
}
