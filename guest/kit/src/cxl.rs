//! CXL: the platform entries of the boot info (host bridges, fixed memory windows), the DVSECs
//! of a CXL function, component registers with their HDM decoders, and the device registers of
//! a Type-3 memory device with its mailbox.
//!
//! Every register block is reached through [`BootInfo::device_mmio`], so an address read from
//! the platform (a BAR plus a Register Locator offset) is only used when it lies inside a range
//! the boot info lists (and the ABI therefore maps). Accesses have the widths Linux uses:
//! component registers 4 bytes; device registers 8 bytes for the capability array, Command,
//! Status and Memory Device Status, 4 bytes for Mailbox Capabilities and Control, 4 bytes and
//! single bytes for the payload.
//!
//! Pure encodings, payload parsing and region planning are in [`calc`] (re-exported here).

pub mod calc;

use core::fmt;

pub use calc::*;

use crate::boot::{BootInfo, Device, DeviceKind, boot_info};
use crate::mmio::Mmio;
use crate::pci::Function;

/// Most window targets (kind 6 holds 8, kind 7 the next 8).
pub const MAX_WINDOW_TARGETS: usize = 16;

/// A CXL host bridge entry (device kind 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostBridgeEntry {
    /// `_UID` (the entry's flags).
    pub uid: u32,
    /// Guest-physical address of its component registers (CHBCR).
    pub chbcr: u64,
    /// Size of the CHBCR range.
    pub size: u64,
    /// Root bus number.
    pub root_bus: u8,
    /// Number of root ports.
    pub root_ports: u8,
    /// No HDM decoders (one root port, everything goes to it).
    pub passthrough: bool,
}

impl HostBridgeEntry {
    /// Decodes a device table entry of kind 5.
    pub fn from_device(dev: &Device) -> Option<Self> {
        if dev.kind != DeviceKind::CxlHostBridge {
            return None;
        }
        let (root_bus, root_ports, passthrough) = decode_hb_port(dev.port);
        Some(Self {
            uid: dev.flags,
            chbcr: dev.base,
            size: dev.size,
            root_bus,
            root_ports,
            passthrough,
        })
    }
}

/// The host bridge entries of the boot info, in table order.
pub fn host_bridges(boot: &BootInfo) -> impl Iterator<Item = HostBridgeEntry> + '_ {
    boot.devices()
        .filter_map(|d| HostBridgeEntry::from_device(&d))
}

/// Interleave arithmetic of a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arithmetic {
    /// Position = (HPA / granularity) mod ways.
    #[default]
    Modulo,
    /// Position bits are parities of HPA bits (power-of-2 ways).
    Xor,
    /// An arithmetic this kit does not know.
    Unknown(u8),
}

impl fmt::Display for Arithmetic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Modulo => f.write_str("modulo"),
            Self::Xor => f.write_str("xor"),
            Self::Unknown(n) => write!(f, "unknown({n})"),
        }
    }
}

/// A CXL fixed memory window entry (device kind 6, with the kind 7 entry after it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowEntry {
    /// Guest-physical base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// The raw flags, decoded.
    pub flags: WindowFlags,
    /// Host-bridge interleave ways (0 when the encoding is invalid).
    pub ways: u32,
    /// Host-bridge interleave granularity in bytes (0 when the encoding is invalid).
    pub gran: u64,
    /// Interleave arithmetic.
    pub arithmetic: Arithmetic,
    targets: [u32; MAX_WINDOW_TARGETS],
    target_count: u8,
}

impl WindowEntry {
    /// Host bridge UIDs in interleave position order.
    pub fn targets(&self) -> &[u32] {
        &self.targets[..usize::from(self.target_count)]
    }
}

/// The window entries of the boot info, in table order (index `i` = the `i`-th kind 6 entry).
/// Targets 8–15 come from a kind 7 entry right after the window with the same base.
pub fn windows(boot: &BootInfo) -> impl Iterator<Item = WindowEntry> + '_ {
    let mut next = boot.devices().skip(1);
    boot.devices().filter_map(move |d| {
        let after = next.next();
        if d.kind != DeviceKind::CxlWindow {
            return None;
        }
        let flags = decode_window_flags(d.flags);
        let mut w = WindowEntry {
            base: d.base,
            size: d.size,
            flags,
            ways: enc_to_ways(flags.ways_enc).unwrap_or(0),
            gran: enc_to_gran(flags.gran_enc).unwrap_or(0),
            arithmetic: match flags.arithmetic {
                0 => Arithmetic::Modulo,
                1 => Arithmetic::Xor,
                n => Arithmetic::Unknown(n),
            },
            ..WindowEntry::default()
        };
        let count = usize::from(flags.targets).min(MAX_WINDOW_TARGETS);
        let more = after.filter(|a| a.kind == DeviceKind::CxlWindowTargets && a.base == d.base);
        for i in 0..count {
            let port = if i < 8 {
                d.port
            } else if let Some(m) = more {
                m.port
            } else {
                break;
            };
            w.targets[i] = u32::from((port >> (8 * (i % 8))) as u8);
            w.target_count = (i + 1) as u8;
        }
        Some(w)
    })
}

/// Component and device register block addresses from a function's Register Locator DVSEC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterBlocks {
    /// Component registers (block ID 1): BAR address + offset.
    pub component: Option<u64>,
    /// CXL memory device registers (block ID 3).
    pub device: Option<u64>,
}

/// Decodes the Register Locator DVSEC of `f` (`None` when it has none). Entries whose BAR is
/// not a memory BAR are skipped; the first entry of each block ID wins.
pub fn register_blocks(f: &Function) -> Option<RegisterBlocks> {
    let dvsec = f.find_dvsec(CXL_VENDOR, dvsec_id::REGISTER_LOCATOR)?;
    let mut blocks = RegisterBlocks::default();
    for i in 0..register_locator_count(dvsec.header.length) {
        let at = u32::from(dvsec.offset) + u32::from(REGISTER_LOCATOR_ENTRIES) + 8 * u32::from(i);
        if at + 8 > 4096 {
            break;
        }
        let at = at as u16;
        let entry = decode_register_block(f.read32(at), f.read32(at + 4));
        let Some(addr) = f
            .bar_address(entry.bir)
            .and_then(|bar| bar.checked_add(entry.offset))
        else {
            continue;
        };
        match entry.id {
            block_id::COMPONENT => {
                blocks.component.get_or_insert(addr);
            }
            block_id::MEMORY_DEVICE => {
                blocks.device.get_or_insert(addr);
            }
            _ => {}
        }
    }
    Some(blocks)
}

/// The PCIe DVSEC for CXL Devices (ID 0) of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceDvsec {
    function: Function,
    offset: u16,
}

impl DeviceDvsec {
    /// The DVSEC of `f`, if it has one.
    pub fn find(f: &Function) -> Option<Self> {
        let d = f.find_dvsec(CXL_VENDOR, dvsec_id::DEVICE)?;
        (d.offset <= 4096 - 0x38).then_some(Self {
            function: *f,
            offset: d.offset,
        })
    }

    /// Configuration-space offset of the DVSEC.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// CXL Capability (16 bit at +0x0A).
    pub fn capability(&self) -> u16 {
        self.function.read16(self.offset + device_dvsec::CAPABILITY)
    }

    /// CXL Control (16 bit at +0x0C).
    pub fn control(&self) -> u16 {
        self.function.read16(self.offset + device_dvsec::CONTROL)
    }

    /// Writes CXL Control.
    pub fn set_control(&self, value: u16) {
        self.function
            .write16(self.offset + device_dvsec::CONTROL, value)
    }

    /// Sets Mem_Enable (Control bit 2); true when it reads back set.
    pub fn enable_mem(&self) -> bool {
        self.set_control(self.control() | device_dvsec::CTRL_MEM_ENABLE);
        self.control() & device_dvsec::CTRL_MEM_ENABLE != 0
    }

    /// Range `i` (0 or 1) Size Low register (valid/active flags in bits 1:0).
    pub fn range_size_low(&self, i: u8) -> u32 {
        let off = device_dvsec::RANGE1_SIZE_LOW + device_dvsec::RANGE_STRIDE * u16::from(i & 1);
        self.function.read32(self.offset + off)
    }

    /// Size of range `i` (0 or 1).
    pub fn range_size(&self, i: u8) -> u64 {
        let off = device_dvsec::RANGE1_SIZE_HIGH + device_dvsec::RANGE_STRIDE * u16::from(i & 1);
        dvsec_range_size(
            self.function.read32(self.offset + off),
            self.range_size_low(i),
        )
    }
}

/// Sets the CXL direct-mapping control port ([`port::CXL_DIRECT`](crate::port::CXL_DIRECT)):
/// `false` = every CXL range on the exact MMIO path, `true` = direct mappings where the decoders
/// allow them. The switch is complete when this returns. Returns the state the port reads back
/// afterwards (0 or 1; all-ones when cxlvm does not know the port).
pub fn set_direct(on: bool) -> u32 {
    crate::port::outl(crate::port::CXL_DIRECT, u32::from(on));
    direct_state()
}

/// The CXL direct-mapping control port's state (1 = direct mappings allowed).
pub fn direct_state() -> u32 {
    crate::port::inl(crate::port::CXL_DIRECT)
}

/// MMIO accesses the CXL window dispatchers served so far (low 32 bits of cxlvm's counter; each
/// is one VM exit). Compare readings with `wrapping_sub`.
pub fn window_exits() -> u32 {
    crate::port::inl(crate::port::CXL_EXITS)
}

/// Resets the CXL window exit counter to 0.
pub fn reset_window_exits() {
    crate::port::outl(crate::port::CXL_EXITS, 0)
}

/// Waits about `ns` nanoseconds (by the TSC when the boot info gives its rate; otherwise about
/// one microsecond per 64 spins, a guess).
pub fn delay_ns(ns: u64) {
    let start = crate::cpu::rdtsc();
    if crate::cpu::tsc_to_ns(1_000_000_000).is_some() {
        while crate::cpu::tsc_to_ns(crate::cpu::rdtsc().wrapping_sub(start)).unwrap_or(u64::MAX)
            < ns
        {
            core::hint::spin_loop();
        }
    } else {
        for _ in 0..ns / 16 {
            core::hint::spin_loop();
        }
    }
}

/// Calls `done` until it returns true or about `timeout_ns` passed (by the TSC; without a TSC
/// rate, one call per microsecond of the timeout, each call being at least one MMIO exit).
fn poll_until(timeout_ns: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = crate::cpu::rdtsc();
    let mut calls = 0u64;
    loop {
        if done() {
            return true;
        }
        calls += 1;
        let elapsed = crate::cpu::tsc_to_ns(crate::cpu::rdtsc().wrapping_sub(start))
            .unwrap_or(calls.saturating_mul(1000));
        if elapsed >= timeout_ns {
            return done();
        }
        core::hint::spin_loop();
    }
}

/// The CXL.cache/mem registers of a component register block (bytes 0x1000..0x2000).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComponentRegs {
    base: u64,
    cm: Mmio,
}

impl ComponentRegs {
    /// The block at `base`, if its CXL.cache/mem range lies in a listed range.
    pub fn new(base: u64) -> Option<Self> {
        let cm = boot_info()?.device_mmio(base.checked_add(CM_ARRAY_OFFSET)?, CM_RANGE_LEN)?;
        Some(Self { base, cm })
    }

    /// Address of the block.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The CXL.cache/mem capability array header (dword at +0x1000).
    pub fn array_header(&self) -> u32 {
        self.cm.read_u32(0)
    }

    /// The capability headers of the array (NULL ones included), in array order; nothing when
    /// the array header's ID is not 1.
    pub fn for_each_cap(&self, mut f: impl FnMut(CmCapHeader)) {
        let Some(size) = cm_array_size(self.array_header()) else {
            return;
        };
        for i in 1..=u64::from(size) {
            if 4 * i + 4 > CM_RANGE_LEN {
                return;
            }
            f(decode_cm_cap_header(self.cm.read_u32(4 * i)));
        }
    }

    /// The first capability with `id`.
    pub fn find_cap(&self, id: u16) -> Option<CmCapHeader> {
        let mut found = None;
        self.for_each_cap(|h| {
            if found.is_none() && h.id == id {
                found = Some(h);
            }
        });
        found
    }

    /// The HDM Decoder capability, if the array lists one that fits the CXL.cache/mem range.
    pub fn hdm(&self) -> Option<Hdm> {
        let ptr = u64::from(self.find_cap(cm_cap_id::HDM)?.pointer);
        if ptr % 4 != 0 || ptr + 0x10 > CM_RANGE_LEN {
            return None;
        }
        let capability = self.cm.read_u32(ptr);
        let decoders = hdm_decoder_count(capability);
        let len = hdm_block_len(decoders);
        if decoders == 0 || ptr + len > CM_RANGE_LEN {
            return None;
        }
        // SAFETY: a sub-range of `self.cm`, which `device_mmio` checked to be listed.
        let regs = unsafe { Mmio::new(self.cm.base() + ptr, len) };
        Some(Hdm {
            regs,
            decoders,
            targets: hdm_target_count(capability),
        })
    }
}

/// What a decoder is programmed with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecoderSetup {
    /// HPA base (256 MiB aligned).
    pub base: u64,
    /// HPA size (multiple of 256 MiB).
    pub size: u64,
    /// Interleave ways encoding.
    pub iw_enc: u8,
    /// Interleave granularity encoding.
    pub ig_enc: u8,
    /// Target list (port decoders: byte `i` = port of way `i`) or DPA skip (endpoints).
    pub target: u64,
}

/// The registers of one decoder, as read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecoderState {
    /// Base.
    pub base: u64,
    /// Size.
    pub size: u64,
    /// Control.
    pub control: u32,
    /// Target list or DPA skip.
    pub target: u64,
}

impl DecoderState {
    /// Committed bit.
    pub fn committed(&self) -> bool {
        self.control & ctrl::COMMITTED != 0
    }
}

/// Why a commit failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitError {
    /// Error Not Committed was set (the Commit bit was cleared again).
    ErrorNotCommitted,
    /// Neither Committed nor Error Not Committed after 20 polls 1 ms apart.
    Timeout,
    /// No such decoder.
    NoDecoder,
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ErrorNotCommitted => "error-not-committed",
            Self::Timeout => "timeout",
            Self::NoDecoder => "no-decoder",
        })
    }
}

/// Polls of Control after a commit (Linux: 20, 1 ms apart).
pub const COMMIT_POLLS: u32 = 20;

/// An HDM Decoder Capability structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hdm {
    regs: Mmio,
    decoders: u32,
    targets: u32,
}

impl Hdm {
    /// Address of the structure.
    pub fn base(&self) -> u64 {
        self.regs.base()
    }

    /// Bytes of the structure (`0x10 + 0x20 * decoders`).
    pub fn len(&self) -> u64 {
        self.regs.size()
    }

    /// Never empty (at least one decoder); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of decoders.
    pub fn decoder_count(&self) -> u32 {
        self.decoders
    }

    /// Target Count field.
    pub fn target_count(&self) -> u32 {
        self.targets
    }

    /// Dword at `off` of the structure (4-byte aligned, inside it).
    #[track_caller]
    pub fn read(&self, off: u64) -> u32 {
        self.regs.read_u32(off)
    }

    /// Writes the dword at `off`.
    #[track_caller]
    pub fn write(&self, off: u64, value: u32) {
        self.regs.write_u32(off, value)
    }

    /// HDM Decoder Capability register.
    pub fn capability(&self) -> u32 {
        self.read(hdm::CAPABILITY)
    }

    /// Global Control register.
    pub fn global_control(&self) -> u32 {
        self.read(hdm::GLOBAL_CONTROL)
    }

    /// Sets HDM Decoder Enable (Global Control bit 1); true when it reads back set.
    pub fn enable(&self) -> bool {
        self.write(
            hdm::GLOBAL_CONTROL,
            self.global_control() | hdm::GLOBAL_ENABLE,
        );
        self.global_control() & hdm::GLOBAL_ENABLE != 0
    }

    fn reg(&self, n: u32, reg: u64) -> u32 {
        self.read(decoder_reg(n, reg))
    }

    fn set_reg(&self, n: u32, reg: u64, value: u32) {
        self.write(decoder_reg(n, reg), value)
    }

    /// Control of decoder `n`.
    pub fn control(&self, n: u32) -> u32 {
        self.reg(n, hdm::CONTROL)
    }

    /// Writes Control of decoder `n` (one register write, nothing polled). Clearing Commit of a
    /// committed decoder uncommits it and keeps its base, size and target list, so writing the
    /// old Control value back commits it again (cxlvm validates synchronously).
    pub fn set_control(&self, n: u32, value: u32) {
        self.set_reg(n, hdm::CONTROL, value)
    }

    /// Registers of decoder `n` (`n` < [`decoder_count`](Self::decoder_count)).
    pub fn decoder(&self, n: u32) -> DecoderState {
        let pair = |lo, hi| u64::from(self.reg(n, lo)) | (u64::from(self.reg(n, hi)) << 32);
        DecoderState {
            base: pair(hdm::BASE_LO, hdm::BASE_HI),
            size: pair(hdm::SIZE_LO, hdm::SIZE_HI),
            control: self.control(n),
            target: pair(hdm::TARGET_LO, hdm::TARGET_HI),
        }
    }

    /// The lowest decoder whose Committed bit is clear.
    pub fn first_uncommitted(&self) -> Option<u32> {
        (0..self.decoders).find(|&n| self.control(n) & ctrl::COMMITTED == 0)
    }

    /// Programs and commits decoder `n` in Linux's order: Base High, Base Low, Size High, Size
    /// Low, Target List (or DPA Skip) High, Low, then Control = IG | IW << 4 | Commit |
    /// host-only; then polls Control up to [`COMMIT_POLLS`] times, 1 ms apart. On Error Not
    /// Committed it clears Commit again.
    pub fn commit(&self, n: u32, setup: &DecoderSetup) -> Result<(), CommitError> {
        if n >= self.decoders {
            return Err(CommitError::NoDecoder);
        }
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        self.set_reg(n, hdm::BASE_HI, hi(setup.base));
        self.set_reg(n, hdm::BASE_LO, lo(setup.base));
        self.set_reg(n, hdm::SIZE_HI, hi(setup.size));
        self.set_reg(n, hdm::SIZE_LO, lo(setup.size));
        self.set_reg(n, hdm::TARGET_HI, hi(setup.target));
        self.set_reg(n, hdm::TARGET_LO, lo(setup.target));
        let control = commit_control(setup.iw_enc, setup.ig_enc);
        self.set_reg(n, hdm::CONTROL, control);
        for poll in 0..COMMIT_POLLS {
            let c = self.control(n);
            if c & ctrl::ERR_NOT_COMMITTED != 0 {
                self.set_reg(n, hdm::CONTROL, c & !ctrl::COMMIT);
                return Err(CommitError::ErrorNotCommitted);
            }
            if c & ctrl::COMMITTED != 0 {
                return Ok(());
            }
            if poll + 1 < COMMIT_POLLS {
                delay_ns(1_000_000);
            }
        }
        Err(CommitError::Timeout)
    }

    /// Resets decoder `n` as Linux does: clears Commit in Control, then zeroes Size High, Size
    /// Low, Base High, Base Low. True when Committed then reads clear.
    pub fn uncommit(&self, n: u32) -> bool {
        if n >= self.decoders {
            return false;
        }
        let c = self.control(n);
        self.set_reg(n, hdm::CONTROL, c & !ctrl::COMMIT);
        self.set_reg(n, hdm::SIZE_HI, 0);
        self.set_reg(n, hdm::SIZE_LO, 0);
        self.set_reg(n, hdm::BASE_HI, 0);
        self.set_reg(n, hdm::BASE_LO, 0);
        self.control(n) & ctrl::COMMITTED == 0
    }
}

/// One capability of the device register block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevCap {
    /// Capability ID (see [`dev_cap_id`]).
    pub id: u16,
    /// Version.
    pub version: u8,
    /// Offset of the structure from the block.
    pub offset: u32,
    /// Length of the structure.
    pub len: u32,
}

/// Most device capabilities kept.
pub const MAX_DEV_CAPS: usize = 16;

/// Why a device register block could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevRegsError {
    /// The block (or its capability headers) is not inside a listed range.
    Unmapped,
    /// The Device Capabilities Array register's ID is not 0 (the raw register).
    BadArray(u64),
}

impl fmt::Display for DevRegsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unmapped => f.write_str("device registers not in a listed range"),
            Self::BadArray(v) => write!(f, "capability array register {v:#x} has ID != 0"),
        }
    }
}

/// The CXL device register block of a memory device (Register Locator block ID 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRegs {
    base: u64,
    count: u16,
    caps: [DevCap; MAX_DEV_CAPS],
}

impl DeviceRegs {
    /// Reads the capability array at `base` (64-bit array register, then the headers).
    pub fn new(base: u64) -> Result<Self, DevRegsError> {
        let boot = boot_info().ok_or(DevRegsError::Unmapped)?;
        let head = boot.device_mmio(base, 0x10).ok_or(DevRegsError::Unmapped)?;
        let array = head.read_u64(0);
        let count = dev_cap_array_count(array).ok_or(DevRegsError::BadArray(array))?;
        let kept = usize::from(count).min(MAX_DEV_CAPS);
        let headers = boot
            .device_mmio(base, 0x10 * (kept as u64 + 1))
            .ok_or(DevRegsError::Unmapped)?;
        let mut caps = [DevCap::default(); MAX_DEV_CAPS];
        for (i, cap) in caps.iter_mut().enumerate().take(kept) {
            let at = 0x10 * (i as u64 + 1);
            let dw0 = headers.read_u32(at);
            *cap = DevCap {
                id: dw0 as u16,
                version: (dw0 >> 16) as u8,
                offset: headers.read_u32(at + 4),
                len: headers.read_u32(at + 8),
            };
        }
        Ok(Self { base, count, caps })
    }

    /// Address of the block.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Capabilities Count of the array register.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The capabilities read (at most [`MAX_DEV_CAPS`]).
    pub fn caps(&self) -> &[DevCap] {
        &self.caps[..usize::from(self.count).min(MAX_DEV_CAPS)]
    }

    /// The capability with `id`.
    pub fn find(&self, id: u16) -> Option<DevCap> {
        self.caps().iter().copied().find(|c| c.id == id)
    }

    /// Access to a capability's structure, if it lies in a listed range.
    pub fn cap_mmio(&self, cap: &DevCap) -> Option<Mmio> {
        boot_info()?.device_mmio(
            self.base.checked_add(u64::from(cap.offset))?,
            u64::from(cap.len),
        )
    }

    /// Memory Device Status (64-bit read at the Memory Device capability).
    pub fn memdev_status(&self) -> Option<u64> {
        let cap = self.find(dev_cap_id::MEMORY_DEVICE)?;
        let regs = boot_info()?.device_mmio(self.base.checked_add(u64::from(cap.offset))?, 8)?;
        (regs.base() % 8 == 0).then(|| regs.read_u64(0))
    }

    /// The primary mailbox.
    pub fn mailbox(&self) -> Option<Mailbox> {
        let cap = self.find(dev_cap_id::PRIMARY_MAILBOX)?;
        Mailbox::new(self.base.checked_add(u64::from(cap.offset))?)
    }
}

/// Why a mailbox command failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MailboxError {
    /// The doorbell was set before the command.
    Busy,
    /// The input does not fit the payload.
    InputTooLong,
    /// The doorbell did not clear within 2 s.
    Timeout,
    /// The command completed with this non-zero return code.
    Rc(u16),
}

impl MailboxError {
    /// The return code, for [`MailboxError::Rc`].
    pub fn rc(&self) -> Option<u16> {
        match *self {
            Self::Rc(rc) => Some(rc),
            _ => None,
        }
    }
}

impl fmt::Display for MailboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Busy => f.write_str("doorbell-busy"),
            Self::InputTooLong => f.write_str("input-too-long"),
            Self::Timeout => f.write_str("doorbell-timeout"),
            Self::Rc(rc) => write!(f, "rc={rc}"),
        }
    }
}

/// How long a command may keep the doorbell set (Linux: 2 s).
pub const MAILBOX_TIMEOUT_NS: u64 = 2_000_000_000;
/// Largest payload used (Linux caps it at 1 MiB too).
pub const MAX_PAYLOAD: u64 = 1 << 20;

/// A mailbox: registers and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mailbox {
    regs: Mmio,
    payload_size: usize,
}

impl Mailbox {
    /// The mailbox at `base` (8-byte aligned) with the payload size its Capabilities register
    /// gives (at most [`MAX_PAYLOAD`]), if registers and payload lie in a listed range.
    pub fn new(base: u64) -> Option<Self> {
        if !base.is_multiple_of(8) {
            return None;
        }
        let boot = boot_info()?;
        let head = boot.device_mmio(base, mbox::PAYLOAD)?;
        let payload = mbox_payload_size(head.read_u32(mbox::CAPS)).min(MAX_PAYLOAD);
        let regs = boot.device_mmio(base, mbox::PAYLOAD + payload)?;
        Some(Self {
            regs,
            payload_size: payload as usize,
        })
    }

    /// Address of the registers.
    pub fn base(&self) -> u64 {
        self.regs.base()
    }

    /// Registers and payload (for fuzzers).
    pub fn regs(&self) -> &Mmio {
        &self.regs
    }

    /// Payload bytes.
    pub fn payload_size(&self) -> usize {
        self.payload_size
    }

    /// Mailbox Capabilities (32 bit).
    pub fn caps(&self) -> u32 {
        self.regs.read_u32(mbox::CAPS)
    }

    /// Whether the doorbell is set.
    pub fn busy(&self) -> bool {
        self.regs.read_u32(mbox::CONTROL) & mbox::DOORBELL != 0
    }

    /// Copies `data` to the payload at `at` with 4-byte writes (single bytes around them).
    #[track_caller]
    pub fn write_payload(&self, at: usize, data: &[u8]) {
        let base = mbox::PAYLOAD + at as u64;
        let mut i = 0;
        while i < data.len() {
            let off = base + i as u64;
            if off.is_multiple_of(4) && i + 4 <= data.len() {
                let word = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
                self.regs.write_u32(off, word);
                i += 4;
            } else {
                self.regs.write_u8(off, data[i]);
                i += 1;
            }
        }
    }

    /// Copies the payload at `at` to `out` with 4-byte reads (single bytes around them).
    #[track_caller]
    pub fn read_payload(&self, at: usize, out: &mut [u8]) {
        let base = mbox::PAYLOAD + at as u64;
        let mut i = 0;
        while i < out.len() {
            let off = base + i as u64;
            if off.is_multiple_of(4) && i + 4 <= out.len() {
                out[i..i + 4].copy_from_slice(&self.regs.read_u32(off).to_le_bytes());
                i += 4;
            } else {
                out[i] = self.regs.read_u8(off);
                i += 1;
            }
        }
    }

    /// Runs a command: checks the doorbell is clear, copies `input` to the payload, writes
    /// Command (opcode, length; 8 bytes), sets the doorbell, polls it clear (2 s at most), reads
    /// Status; on return code 0 reads the output length from Command and copies
    /// `min(length, output.len(), payload)` bytes to `output`. Returns the output length the
    /// device reported.
    pub fn send(
        &self,
        opcode: u16,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<usize, MailboxError> {
        if input.len() > self.payload_size {
            return Err(MailboxError::InputTooLong);
        }
        if self.busy() {
            return Err(MailboxError::Busy);
        }
        self.write_payload(0, input);
        self.regs
            .write_u64(mbox::COMMAND, mbox_command(opcode, input.len()));
        self.regs.write_u32(mbox::CONTROL, mbox::DOORBELL);
        if !poll_until(MAILBOX_TIMEOUT_NS, || !self.busy()) {
            return Err(MailboxError::Timeout);
        }
        let rc = mbox_return_code(self.regs.read_u64(mbox::STATUS));
        if rc != rc::SUCCESS {
            return Err(MailboxError::Rc(rc));
        }
        let len = mbox_command_len(self.regs.read_u64(mbox::COMMAND));
        let n = len.min(output.len()).min(self.payload_size);
        self.read_payload(0, &mut output[..n]);
        Ok(len)
    }
}
