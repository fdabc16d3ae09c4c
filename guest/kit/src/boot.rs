//! The boot info block (docs/guest-abi.md, "Boot info") and the guest command line.

use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::mmio::Mmio;

/// `CXLB` as a little-endian u32.
pub const MAGIC: u32 = 0x424c_5843;
/// Oldest boot info version this kit understands.
pub const VERSION: u16 = 1;
/// Size of the fixed header in version 1; later versions only grow it.
pub const HEADER_SIZE_V1: u16 = 0x60;

const MEM_ENTRY_SIZE: usize = 24;
const DEVICE_ENTRY_SIZE: usize = 32;

/// The fixed header of the boot info, as cxlvm lays it out in guest memory.
///
/// Only the kit creates references to it (after checking magic, version and sizes), and the
/// tables that follow it are read through the accessors.
#[repr(C)]
pub struct BootInfo {
    magic: u32,
    version: u16,
    header_size: u16,
    total_size: u32,
    vcpu_count: u32,
    tsc_khz: u64,
    ram_size: u64,
    free_start: u64,
    free_end: u64,
    stack_top: u64,
    stack_size: u64,
    mem_map_offset: u32,
    mem_map_count: u32,
    device_offset: u32,
    device_count: u32,
    cmdline_offset: u32,
    cmdline_len: u32,
    reserved: u64,
}

const _: () = assert!(core::mem::size_of::<BootInfo>() == HEADER_SIZE_V1 as usize);

/// Why the boot info was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// RDI was 0 or not 8-byte aligned.
    BadAddress,
    /// The magic is not `CXLB`.
    BadMagic(u32),
    /// The version is older than [`VERSION`].
    BadVersion(u16),
    /// The header is shorter than version 1's.
    BadHeaderSize(u16),
    /// `total_size` is smaller than the header.
    BadTotalSize(u32),
    /// A table or the command line does not lie inside `total_size`.
    OutOfBounds(&'static str),
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadAddress => write!(f, "address is null or misaligned"),
            Self::BadMagic(m) => write!(f, "bad magic {m:#010x} (expected {MAGIC:#010x})"),
            Self::BadVersion(v) => write!(f, "unsupported version {v}"),
            Self::BadHeaderSize(s) => write!(f, "header size {s:#x} < {HEADER_SIZE_V1:#x}"),
            Self::BadTotalSize(s) => write!(f, "total size {s:#x} smaller than the header"),
            Self::OutOfBounds(what) => write!(f, "{what} outside the block"),
        }
    }
}

/// Address of the checked boot info, 0 before [`init`] succeeded.
static BOOT: AtomicUsize = AtomicUsize::new(0);

/// Checks the boot info at `gpa` and records it for [`boot_info`]. Called by the runtime.
pub(crate) fn init(gpa: u64) -> Result<&'static BootInfo, BootInfoError> {
    let addr = gpa as usize;
    if addr == 0 || !addr.is_multiple_of(core::mem::align_of::<BootInfo>()) {
        return Err(BootInfoError::BadAddress);
    }
    let ptr = core::ptr::with_exposed_provenance::<BootInfo>(addr);
    // SAFETY: the ABI puts the boot info (at least the version 1 header) at RDI, identity
    // mapped and aligned; the magic is read before anything else is trusted.
    let magic = unsafe { core::ptr::addr_of!((*ptr).magic).read_volatile() };
    if magic != MAGIC {
        return Err(BootInfoError::BadMagic(magic));
    }
    // SAFETY: the magic matched, so this is a boot info header of at least version 1 size,
    // which cxlvm wrote before starting the vCPUs and does not change while the guest runs
    // (read-only by convention); nothing in the guest writes it either.
    let boot: &'static BootInfo = unsafe { &*ptr };
    if boot.version < VERSION {
        return Err(BootInfoError::BadVersion(boot.version));
    }
    if boot.header_size < HEADER_SIZE_V1 {
        return Err(BootInfoError::BadHeaderSize(boot.header_size));
    }
    if boot.total_size < u32::from(boot.header_size) {
        return Err(BootInfoError::BadTotalSize(boot.total_size));
    }
    let total = boot.total_size as usize;
    let fits = |off: u32, count: u32, size: usize| {
        (count as usize)
            .checked_mul(size)
            .and_then(|len| len.checked_add(off as usize))
            .is_some_and(|end| end <= total)
    };
    if !fits(boot.mem_map_offset, boot.mem_map_count, MEM_ENTRY_SIZE) {
        return Err(BootInfoError::OutOfBounds("memory map"));
    }
    if !fits(boot.device_offset, boot.device_count, DEVICE_ENTRY_SIZE) {
        return Err(BootInfoError::OutOfBounds("device table"));
    }
    if !fits(boot.cmdline_offset, boot.cmdline_len, 1) {
        return Err(BootInfoError::OutOfBounds("command line"));
    }
    BOOT.store(addr, Ordering::Release);
    Ok(boot)
}

/// The boot info, once the runtime checked it (always, inside `main`).
pub fn boot_info() -> Option<&'static BootInfo> {
    let addr = BOOT.load(Ordering::Acquire);
    if addr == 0 {
        return None;
    }
    // SAFETY: `init` stored this address only after checking the header it points to, which
    // stays valid and unchanged for the whole run.
    Some(unsafe { &*core::ptr::with_exposed_provenance::<BootInfo>(addr) })
}

impl BootInfo {
    /// The whole block: header, tables and strings (`total_size` bytes).
    fn bytes(&self) -> &[u8] {
        let addr = (self as *const Self).expose_provenance();
        // SAFETY: `init` checked `total_size` >= the header; cxlvm writes `total_size` bytes at
        // this address before the guest starts and never changes them, and the guest does not
        // write them either (the ABI marks the block read-only).
        unsafe {
            core::slice::from_raw_parts(
                core::ptr::with_exposed_provenance(addr),
                self.total_size as usize,
            )
        }
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = self.bytes();
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from(self.u32_at(at)) | (u64::from(self.u32_at(at + 4)) << 32)
    }

    /// Boot info version (1 or later).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Size of the fixed header.
    pub fn header_size(&self) -> u16 {
        self.header_size
    }

    /// Size of the whole block: header, tables and strings.
    pub fn total_size(&self) -> u32 {
        self.total_size
    }

    /// Number of vCPUs; vCPU indices are `0..vcpu_count`.
    pub fn vcpu_count(&self) -> u32 {
        self.vcpu_count
    }

    /// TSC frequency in kHz, 0 when KVM does not report it.
    pub fn tsc_khz(&self) -> u64 {
        self.tsc_khz
    }

    /// Total guest RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// First byte of RAM the guest may use freely (4 KiB aligned).
    pub fn free_start(&self) -> u64 {
        self.free_start
    }

    /// One past the last free byte.
    pub fn free_end(&self) -> u64 {
        self.free_end
    }

    /// The RAM the guest may use freely: `free_start..free_end`.
    pub fn free_range(&self) -> Range<u64> {
        self.free_start..self.free_end
    }

    /// Top of vCPU 0's stack.
    pub fn stack_top(&self) -> u64 {
        self.stack_top
    }

    /// Stack bytes per vCPU.
    pub fn stack_size(&self) -> u64 {
        self.stack_size
    }

    /// The stack of `vcpu`: `top - size .. top`, with `top = stack_top - vcpu * stack_size`.
    pub fn vcpu_stack(&self, vcpu: u32) -> Range<u64> {
        let top = self
            .stack_top
            .saturating_sub(u64::from(vcpu).saturating_mul(self.stack_size));
        top.saturating_sub(self.stack_size)..top
    }

    /// The memory map.
    pub fn memory_map(&self) -> MemoryMap<'_> {
        MemoryMap {
            boot: self,
            next: 0,
        }
    }

    /// The device table, unknown kinds included (as [`DeviceKind::Unknown`]).
    pub fn devices(&self) -> Devices<'_> {
        Devices {
            boot: self,
            next: 0,
        }
    }

    /// The first device of `kind`.
    pub fn find_device(&self, kind: DeviceKind) -> Option<Device> {
        self.devices().find(|d| d.kind == kind)
    }

    /// Volatile access to `[base, base + size)` if it lies inside the range of one device table
    /// entry (any kind), which the ABI identity-maps; `None` otherwise (or for `size` 0).
    ///
    /// This is how code reaches registers whose addresses it read from the platform (BARs,
    /// register locators) without ever touching an address the boot info does not list.
    pub fn device_mmio(&self, base: u64, size: u64) -> Option<Mmio> {
        let end = base.checked_add(size)?;
        if size == 0 {
            return None;
        }
        self.devices()
            .find(|d| d.base <= base && d.base.checked_add(d.size).is_some_and(|e| end <= e))
            // SAFETY: the range lies inside a device table range, which the ABI identity-maps
            // and which is platform MMIO or a window, never memory Rust code owns.
            .map(|_| unsafe { Mmio::new(base, size) })
    }

    /// The guest command line (its valid UTF-8 prefix, should it not be valid UTF-8).
    pub fn cmdline(&self) -> &str {
        let start = self.cmdline_offset as usize;
        let raw = &self.bytes()[start..start + self.cmdline_len as usize];
        match core::str::from_utf8(raw) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// The value of `name` on the command line: see [`arg`].
    pub fn arg(&self, name: &str) -> Option<&str> {
        find_arg(self.cmdline(), name)
    }
}

impl fmt::Debug for BootInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootInfo")
            .field("version", &self.version)
            .field("vcpu_count", &self.vcpu_count)
            .field("tsc_khz", &self.tsc_khz)
            .field("ram_size", &self.ram_size)
            .field("free", &self.free_range())
            .field("stack_top", &self.stack_top)
            .field("stack_size", &self.stack_size)
            .field("cmdline", &self.cmdline())
            .finish_non_exhaustive()
    }
}

/// Kind of a memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// Guest RAM (1).
    Ram,
    /// RAM reserved by cxlvm: boot info, GDT/TSS, page tables, stacks (2).
    Reserved,
    /// RAM holding the ACPI tables (3), reserved like [`MemoryKind::Reserved`].
    Acpi,
    /// A kind this kit does not know.
    Unknown(u32),
}

impl MemoryKind {
    /// The kind for its ABI number.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::Ram,
            2 => Self::Reserved,
            3 => Self::Acpi,
            n => Self::Unknown(n),
        }
    }

    /// The ABI number.
    pub fn raw(self) -> u32 {
        match self {
            Self::Ram => 1,
            Self::Reserved => 2,
            Self::Acpi => 3,
            Self::Unknown(n) => n,
        }
    }
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ram => f.write_str("ram"),
            Self::Reserved => f.write_str("reserved"),
            Self::Acpi => f.write_str("acpi"),
            Self::Unknown(n) => write!(f, "unknown({n})"),
        }
    }
}

/// One memory map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Kind.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// `base..base + size`.
    pub fn range(&self) -> Range<u64> {
        self.base..self.base.saturating_add(self.size)
    }
}

/// Iterator over the memory map.
#[derive(Clone)]
pub struct MemoryMap<'a> {
    boot: &'a BootInfo,
    next: u32,
}

impl Iterator for MemoryMap<'_> {
    type Item = MemoryRegion;

    fn next(&mut self) -> Option<MemoryRegion> {
        if self.next >= self.boot.mem_map_count {
            return None;
        }
        let at = self.boot.mem_map_offset as usize + self.next as usize * MEM_ENTRY_SIZE;
        self.next += 1;
        Some(MemoryRegion {
            base: self.boot.u64_at(at),
            size: self.boot.u64_at(at + 8),
            kind: MemoryKind::from_raw(self.boot.u32_at(at + 16)),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.boot.mem_map_count - self.next) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for MemoryMap<'_> {}

/// Kind of a device table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// Scratch window (1): `base`/`size` is the window, `port` its control port.
    ScratchWindow,
    /// Null MMIO (2): accesses exit to cxlvm and do nothing; reads return 0.
    NullMmio,
    /// Port-I/O window (3): port `p` is the MMIO address `base + p`.
    PioWindow,
    /// PCIe ECAM (4): `flags` = start bus | end bus << 8, `port` = PCI segment.
    Ecam,
    /// CXL host bridge (5): its component registers (CHBCR); `flags` = UID, `port` = root bus |
    /// root-port count << 8 | passthrough << 16.
    CxlHostBridge,
    /// CXL fixed memory window (6): `flags` = ways encoding | granularity encoding << 4 |
    /// arithmetic << 8 | target count << 16; `port` = target UIDs 0–7, one byte each.
    CxlWindow,
    /// Targets 8–15 of the CXL window before it (7), in `port`.
    CxlWindowTargets,
    /// PCI MMIO aperture (8): where cxlvm assigned BARs.
    PciMmio,
    /// ACPI tables (9): `base` is the RSDP, `size` the bytes of every table from it on (in
    /// reserved RAM; read them with the `acpi` module).
    AcpiTables,
    /// A kind this kit does not know (the ABI says to skip these).
    Unknown(u32),
}

impl DeviceKind {
    /// The kind for its ABI number.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => Self::ScratchWindow,
            2 => Self::NullMmio,
            3 => Self::PioWindow,
            4 => Self::Ecam,
            5 => Self::CxlHostBridge,
            6 => Self::CxlWindow,
            7 => Self::CxlWindowTargets,
            8 => Self::PciMmio,
            9 => Self::AcpiTables,
            n => Self::Unknown(n),
        }
    }

    /// The ABI number.
    pub fn raw(self) -> u32 {
        match self {
            Self::ScratchWindow => 1,
            Self::NullMmio => 2,
            Self::PioWindow => 3,
            Self::Ecam => 4,
            Self::CxlHostBridge => 5,
            Self::CxlWindow => 6,
            Self::CxlWindowTargets => 7,
            Self::PciMmio => 8,
            Self::AcpiTables => 9,
            Self::Unknown(n) => n,
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ScratchWindow => f.write_str("scratch-window"),
            Self::NullMmio => f.write_str("null-mmio"),
            Self::PioWindow => f.write_str("pio-window"),
            Self::Ecam => f.write_str("ecam"),
            Self::CxlHostBridge => f.write_str("cxl-host-bridge"),
            Self::CxlWindow => f.write_str("cxl-window"),
            Self::CxlWindowTargets => f.write_str("cxl-window-targets"),
            Self::PciMmio => f.write_str("pci-mmio"),
            Self::AcpiTables => f.write_str("acpi-tables"),
            Self::Unknown(n) => write!(f, "unknown({n})"),
        }
    }
}

/// One device table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    /// Kind.
    pub kind: DeviceKind,
    /// Kind-specific flags.
    pub flags: u32,
    /// Guest-physical base of the device's range.
    pub base: u64,
    /// Size of the range in bytes.
    pub size: u64,
    /// Control port, or 0.
    pub port: u64,
}

impl Device {
    /// The device's control port, if it has one.
    pub fn control_port(&self) -> Option<u16> {
        u16::try_from(self.port).ok().filter(|&p| p != 0)
    }

    /// Volatile access to the device's range.
    ///
    /// Safe because the ABI identity-maps every range the device table lists and such ranges
    /// are platform ranges outside the RAM that holds the program and its data (or, for the
    /// ACPI tables, reserved RAM no Rust code owns), so volatile accesses there cannot alias
    /// anything Rust code owns. (An access may still end the run:
    /// an instruction KVM cannot emulate on MMIO is fatal.)
    pub fn mmio(&self) -> Mmio {
        // SAFETY: see above: the range is mapped and disjoint from memory Rust code uses.
        unsafe { Mmio::new(self.base, self.size) }
    }
}

/// Iterator over the device table.
#[derive(Clone)]
pub struct Devices<'a> {
    boot: &'a BootInfo,
    next: u32,
}

impl Iterator for Devices<'_> {
    type Item = Device;

    fn next(&mut self) -> Option<Device> {
        if self.next >= self.boot.device_count {
            return None;
        }
        let at = self.boot.device_offset as usize + self.next as usize * DEVICE_ENTRY_SIZE;
        self.next += 1;
        Some(Device {
            kind: DeviceKind::from_raw(self.boot.u32_at(at)),
            flags: self.boot.u32_at(at + 4),
            base: self.boot.u64_at(at + 8),
            size: self.boot.u64_at(at + 16),
            port: self.boot.u64_at(at + 24),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.boot.device_count - self.next) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Devices<'_> {}

/// The value of `name` on a command line of space-separated `key=value` tokens.
///
/// A bare `key` token yields `Some("")`; when a key appears more than once, the last one wins.
pub fn find_arg<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    let mut found = None;
    for token in cmdline.split_ascii_whitespace() {
        let (key, value) = token.split_once('=').unwrap_or((token, ""));
        if key == name {
            found = Some(value);
        }
    }
    found
}

/// The value of `name` on the guest command line (see [`find_arg`]); `None` before the runtime
/// checked the boot info (never inside `main`).
pub fn arg(name: &str) -> Option<&'static str> {
    boot_info().and_then(|b| find_arg(b.cmdline(), name))
}

/// Parses a decimal or `0x`-prefixed hexadecimal number; `_` separators are allowed.
pub fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    let mut value: u64 = 0;
    let mut any = false;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let d = c.to_digit(radix)?;
        value = value
            .checked_mul(u64::from(radix))?
            .checked_add(u64::from(d))?;
        any = true;
    }
    any.then_some(value)
}

/// The numeric command line argument `name` ([`parse_u64`] syntax), or `default` when absent.
///
/// # Panics
/// When the value is not a number (the guest then exits with
/// [`PANIC_STATUS`](crate::PANIC_STATUS), naming the argument).
#[track_caller]
pub fn arg_u64(name: &str, default: u64) -> u64 {
    match arg(name) {
        None => default,
        Some(s) => match parse_u64(s) {
            Some(v) => v,
            None => panic!("bad value for cmdline argument `{name}`: `{s}`"),
        },
    }
}
