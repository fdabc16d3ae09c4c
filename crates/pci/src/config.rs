//! Configuration spaces: 4 KiB of bytes with per-byte write and write-1-to-clear masks, header
//! builders and capability lists.
//!
//! A [`ConfigSpace`] has two faces:
//!
//! * the **guest face**, [`ConfigSpace::read`] / [`ConfigSpace::write`]: any offset, any length,
//!   byte by byte, so misaligned or dword-crossing accesses are safe; bytes past 4 KiB read as
//!   `0xff` and writes to them are dropped. A write changes only the bits its write mask allows,
//!   and clears the write-1-to-clear bits it writes ones to;
//! * the **device face**, the typed setters (`set_u16`, `set_wmask_u32`, ...): raw access that
//!   ignores the masks, used by the VMM to lay out registers and by device models to update
//!   read-only status.
//!
//! Capabilities are appended: standard ones from 0x40 (linked from 0x34, Status bit 4 set),
//! extended ones from 0x100. Each `add_*` returns the offset the capability landed at.

use tracing::warn;

use crate::PciError;
use crate::regs::*;

/// Device/port type of a PCI Express capability (bits 7:4 of the PCI Express Capabilities
/// register).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PciePortType {
    /// PCI Express endpoint (CXL type-3 devices are this).
    Endpoint = 0x0,
    /// Legacy PCI Express endpoint.
    LegacyEndpoint = 0x1,
    /// Root port of a root complex.
    RootPort = 0x4,
    /// Upstream port of a switch.
    UpstreamPort = 0x5,
    /// Downstream port of a switch.
    DownstreamPort = 0x6,
    /// PCI Express to PCI/PCI-X bridge.
    PcieToPciBridge = 0x7,
    /// PCI/PCI-X to PCI Express bridge.
    PciToPcieBridge = 0x8,
    /// Root complex integrated endpoint (no link).
    RcIntegratedEndpoint = 0x9,
    /// Root complex event collector (no link).
    RcEventCollector = 0xa,
}

impl PciePortType {
    /// Whether the function has a link (and therefore link registers).
    pub fn has_link(self) -> bool {
        !matches!(self, Self::RcIntegratedEndpoint | Self::RcEventCollector)
    }

    /// Whether the function is a downstream-facing port (reports data-link-layer link active).
    pub fn is_downstream_port(self) -> bool {
        matches!(self, Self::RootPort | Self::DownstreamPort)
    }

    /// Whether the capability carries the root registers (Root Control/Capabilities/Status).
    pub fn has_root_registers(self) -> bool {
        matches!(self, Self::RootPort | Self::RcEventCollector)
    }
}

/// Link speed advertised by [`ConfigSpace::add_pcie_capability`] (5 = 32 GT/s, PCIe 5.0, what
/// CXL 2.0 runs on).
pub const PCIE_LINK_SPEED: u16 = 5;
/// Link width advertised by [`ConfigSpace::add_pcie_capability`].
pub const PCIE_LINK_WIDTH: u16 = 16;

/// A 4 KiB PCIe configuration space with per-byte write and write-1-to-clear masks.
///
/// See the [module documentation](self) for the two ways to access it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    data: Box<[u8; CONFIG_SPACE_SIZE]>,
    wmask: Box<[u8; CONFIG_SPACE_SIZE]>,
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    /// Where the next standard capability goes.
    next_cap: u16,
    /// Offset of the last standard capability (its next pointer is patched on append).
    last_cap: Option<u16>,
    /// Where the next extended capability goes.
    next_ext: u16,
    /// Offset of the last extended capability.
    last_ext: Option<u16>,
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor", &format_args!("{:#06x}", self.u16(VENDOR_ID)))
            .field("device", &format_args!("{:#06x}", self.u16(DEVICE_ID)))
            .field("class", &format_args!("{:#08x}", self.class_code()))
            .field(
                "header_type",
                &format_args!("{:#04x}", self.u8(HEADER_TYPE)),
            )
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// An all-zero configuration space with all-zero masks (everything read-only).
    pub fn new() -> Self {
        Self {
            data: Box::new([0; CONFIG_SPACE_SIZE]),
            wmask: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; CONFIG_SPACE_SIZE]),
            next_cap: CAP_START,
            last_cap: None,
            next_ext: EXT_CAP_START,
            last_ext: None,
        }
    }

    /// Fields common to both header types.
    fn new_common(vendor: u16, device: u16, class_code: u32, revision: u8, header: u8) -> Self {
        let mut c = Self::new();
        c.set_u16(VENDOR_ID, vendor);
        c.set_u16(DEVICE_ID, device);
        c.set_u8(REVISION_ID, revision);
        let class = (class_code & 0x00ff_ffff).to_le_bytes();
        c.set_bytes(CLASS_CODE, &class[..3]);
        c.set_u8(HEADER_TYPE, header);
        c.set_wmask_u16(
            COMMAND,
            COMMAND_IO
                | COMMAND_MEMORY
                | COMMAND_BUS_MASTER
                | COMMAND_PARITY
                | COMMAND_SERR
                | COMMAND_INTX_DISABLE,
        );
        c.set_w1c_u16(STATUS, STATUS_W1C);
        c.set_wmask_u8(CACHE_LINE_SIZE, 0xff);
        c.set_wmask_u8(INTERRUPT_LINE, 0xff);
        c
    }

    /// A type 0 (endpoint) header: IDs, 24-bit class code (base class in bits 23:16, e.g.
    /// `0x050210` for a CXL memory device), revision. Command, cache line size and interrupt line
    /// are writable, Status error bits are write-1-to-clear, no BARs, no capabilities, no
    /// interrupt pin.
    pub fn new_type0(vendor: u16, device: u16, class_code: u32, revision: u8) -> Self {
        Self::new_common(vendor, device, class_code, revision, HEADER_TYPE_NORMAL)
    }

    /// A type 1 (PCI-to-PCI bridge) header, class code usually `0x060400`. On top of the common
    /// fields: bus numbers, I/O base/limit (16-bit I/O), memory base/limit, prefetchable
    /// base/limit (64-bit, with the upper dwords) and bridge control are writable; secondary
    /// status error bits are write-1-to-clear. The windows start closed (base above limit).
    pub fn new_type1(vendor: u16, device: u16, class_code: u32, revision: u8) -> Self {
        let mut c = Self::new_common(vendor, device, class_code, revision, HEADER_TYPE_BRIDGE);
        for reg in [PRIMARY_BUS, SECONDARY_BUS, SUBORDINATE_BUS] {
            c.set_wmask_u8(reg, 0xff);
        }
        // Windows start closed (base above limit) until firmware or the guest opens them.
        c.set_u8(IO_BASE, 0xf0);
        c.set_wmask_u8(IO_BASE, 0xf0);
        c.set_wmask_u8(IO_LIMIT, 0xf0);
        c.set_w1c_u16(SECONDARY_STATUS, STATUS_W1C);
        c.set_u16(MEMORY_BASE, 0xfff0);
        c.set_wmask_u16(MEMORY_BASE, 0xfff0);
        c.set_wmask_u16(MEMORY_LIMIT, 0xfff0);
        // Low nibble 1: 64-bit prefetchable window.
        c.set_u16(PREF_MEMORY_BASE, 0xfff1);
        c.set_u16(PREF_MEMORY_LIMIT, 0x0001);
        c.set_wmask_u16(PREF_MEMORY_BASE, 0xfff0);
        c.set_wmask_u16(PREF_MEMORY_LIMIT, 0xfff0);
        c.set_wmask_u32(PREF_BASE_UPPER32, u32::MAX);
        c.set_wmask_u32(PREF_LIMIT_UPPER32, u32::MAX);
        // Parity response, SERR, ISA, VGA, VGA 16-bit decode, secondary bus reset.
        c.set_wmask_u16(BRIDGE_CONTROL, 0x005f);
        c
    }

    // ---- guest face -------------------------------------------------------------------------

    /// Reads `data.len()` bytes at `offset`, as the guest sees them. Bytes past the end read as
    /// `0xff`.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::from(offset)
                .checked_add(i)
                .and_then(|a| self.data.get(a))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Writes `data` at `offset` the way a guest write works: per byte, only the bits of the
    /// write mask change; ones written to write-1-to-clear bits clear them. Bytes past the end
    /// are dropped.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let a = usize::from(offset) + i;
            let (Some(byte), Some(&w), Some(&c)) =
                (self.data.get_mut(a), self.wmask.get(a), self.w1c.get(a))
            else {
                break;
            };
            let rw = w & !c;
            *byte = ((*byte & !rw) | (v & rw)) & !(v & c);
        }
    }

    // ---- device face ------------------------------------------------------------------------

    /// All 4096 bytes.
    pub fn bytes(&self) -> &[u8; CONFIG_SPACE_SIZE] {
        &self.data
    }

    /// Reads a byte (`0xff` past the end).
    pub fn u8(&self, offset: u16) -> u8 {
        let mut b = [0; 1];
        self.read(offset, &mut b);
        b[0]
    }

    /// Reads a little-endian u16 (all-ones past the end).
    pub fn u16(&self, offset: u16) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads a little-endian u32 (all-ones past the end).
    pub fn u32(&self, offset: u16) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The 24-bit class code.
    pub fn class_code(&self) -> u32 {
        self.u32(REVISION_ID) >> 8
    }

    /// Header layout (bits 6:0 of the header type register: 0 endpoint, 1 bridge).
    pub fn header_layout(&self) -> u8 {
        self.u8(HEADER_TYPE) & 0x7f
    }

    /// Writes bytes ignoring the masks. Bytes past the end are dropped with a warning (a VMM
    /// bug, never a guest action).
    pub fn set_bytes(&mut self, offset: u16, bytes: &[u8]) {
        Self::store(&mut self.data, offset, bytes, "value");
    }

    /// Sets a byte, ignoring the masks.
    pub fn set_u8(&mut self, offset: u16, v: u8) {
        self.set_bytes(offset, &[v]);
    }

    /// Sets a little-endian u16, ignoring the masks.
    pub fn set_u16(&mut self, offset: u16, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets a little-endian u32, ignoring the masks.
    pub fn set_u32(&mut self, offset: u16, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets the write mask of `mask.len()` bytes (1 = the guest may change the bit).
    pub fn set_wmask(&mut self, offset: u16, mask: &[u8]) {
        Self::store(&mut self.wmask, offset, mask, "write mask");
    }

    /// Sets the write mask of one byte.
    pub fn set_wmask_u8(&mut self, offset: u16, mask: u8) {
        self.set_wmask(offset, &[mask]);
    }

    /// Sets the write mask of a 16-bit register.
    pub fn set_wmask_u16(&mut self, offset: u16, mask: u16) {
        self.set_wmask(offset, &mask.to_le_bytes());
    }

    /// Sets the write mask of a 32-bit register.
    pub fn set_wmask_u32(&mut self, offset: u16, mask: u32) {
        self.set_wmask(offset, &mask.to_le_bytes());
    }

    /// Sets the write-1-to-clear mask of `mask.len()` bytes.
    pub fn set_w1c(&mut self, offset: u16, mask: &[u8]) {
        Self::store(&mut self.w1c, offset, mask, "w1c mask");
    }

    /// Sets the write-1-to-clear mask of one byte.
    pub fn set_w1c_u8(&mut self, offset: u16, mask: u8) {
        self.set_w1c(offset, &[mask]);
    }

    /// Sets the write-1-to-clear mask of a 16-bit register.
    pub fn set_w1c_u16(&mut self, offset: u16, mask: u16) {
        self.set_w1c(offset, &mask.to_le_bytes());
    }

    /// Sets the write-1-to-clear mask of a 32-bit register.
    pub fn set_w1c_u32(&mut self, offset: u16, mask: u32) {
        self.set_w1c(offset, &mask.to_le_bytes());
    }

    /// The write mask of a 32-bit register (0 past the end).
    pub fn wmask_u32(&self, offset: u16) -> u32 {
        Self::load_u32(&self.wmask, offset)
    }

    /// The write-1-to-clear mask of a 32-bit register (0 past the end).
    pub fn w1c_u32(&self, offset: u16) -> u32 {
        Self::load_u32(&self.w1c, offset)
    }

    fn load_u32(buf: &[u8; CONFIG_SPACE_SIZE], offset: u16) -> u32 {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = buf.get(usize::from(offset) + i).copied().unwrap_or(0);
        }
        u32::from_le_bytes(b)
    }

    fn store(buf: &mut [u8; CONFIG_SPACE_SIZE], offset: u16, bytes: &[u8], what: &str) {
        let start = usize::from(offset);
        let end = start + bytes.len();
        if end > CONFIG_SPACE_SIZE {
            warn!(
                offset,
                len = bytes.len(),
                "config space {what} past the end dropped"
            );
        }
        if let Some(dst) = buf.get_mut(start..end.min(CONFIG_SPACE_SIZE)) {
            let n = dst.len();
            dst.copy_from_slice(&bytes[..n]);
        }
    }

    // ---- capabilities -----------------------------------------------------------------------

    /// Appends a standard capability: a 2-byte header (`id`, next pointer) followed by `body`.
    /// `wmask` covers the body from its first byte (it may be shorter; the rest is read-only).
    /// The capability is placed dword aligned from 0x40 upward and linked at the end of the list
    /// that starts at 0x34; Status bit 4 (capabilities list) is set. Returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], wmask: &[u8]) -> Result<u8, PciError> {
        check_mask(body, wmask)?;
        let len = 2 + body.len();
        let off = self.next_cap;
        let end = usize::from(off) + len;
        let Ok(off8) = u8::try_from(off) else {
            return Err(PciError::NoCapabilitySpace { id, len });
        };
        if end > usize::from(EXT_CAP_START) {
            return Err(PciError::NoCapabilitySpace { id, len });
        }
        self.set_u8(off, id);
        self.set_u8(off + 1, 0);
        self.set_bytes(off + 2, body);
        self.set_wmask(off + 2, wmask);
        match self.last_cap {
            Some(prev) => self.set_u8(prev + 1, off8),
            None => self.set_u8(CAPABILITIES_POINTER, off8),
        }
        let status = self.u16(STATUS);
        self.set_u16(STATUS, status | STATUS_CAP_LIST);
        self.last_cap = Some(off);
        // `end` <= 0x100, so this fits in u16.
        self.next_cap = align4(end) as u16;
        Ok(off8)
    }

    /// Appends an extended capability: a 4-byte header (`id | version << 16 | next << 20`)
    /// followed by `body`, whose write mask is `wmask` (from the body's first byte). Placed dword
    /// aligned from 0x100 upward and linked at the end of the extended list. Returns its offset.
    pub fn add_ext_capability(
        &mut self,
        id: u16,
        version: u8,
        body: &[u8],
        wmask: &[u8],
    ) -> Result<u16, PciError> {
        check_mask(body, wmask)?;
        if version > 0xf {
            return Err(PciError::BadVersion(version));
        }
        let len = 4 + body.len();
        let off = self.next_ext;
        let end = usize::from(off) + len;
        if end > CONFIG_SPACE_SIZE {
            return Err(PciError::NoExtCapabilitySpace { id, len });
        }
        self.set_u32(off, u32::from(id) | u32::from(version) << 16);
        self.set_bytes(off + 4, body);
        self.set_wmask(off + 4, wmask);
        if let Some(prev) = self.last_ext {
            let header = self.u32(prev) & 0x000f_ffff;
            self.set_u32(prev, header | u32::from(off) << 20);
        }
        self.last_ext = Some(off);
        // `end` <= 0x1000, so this fits in u16.
        self.next_ext = align4(end) as u16;
        Ok(off)
    }

    /// Appends a Designated Vendor-Specific Extended Capability (extended capability 0x23,
    /// version 1). DVSEC header 1 is `vendor | revision << 16 | length << 20` where length counts
    /// the 10-byte header; header 2 is `dvsec_id`. `body` (and `wmask`) start at +0x0A. Returns
    /// the DVSEC's offset.
    pub fn add_dvsec(
        &mut self,
        vendor: u16,
        revision: u8,
        dvsec_id: u16,
        body: &[u8],
        wmask: &[u8],
    ) -> Result<u16, PciError> {
        check_mask(body, wmask)?;
        if revision > 0xf {
            return Err(PciError::BadVersion(revision));
        }
        let length = usize::from(DVSEC_HEADER_LEN) + body.len();
        if length > 0xfff {
            return Err(PciError::DvsecTooLong(length));
        }
        let header1 = u32::from(vendor) | u32::from(revision) << 16 | (length as u32) << 20;
        let mut ext_body = Vec::with_capacity(length - 4);
        ext_body.extend_from_slice(&header1.to_le_bytes());
        ext_body.extend_from_slice(&dvsec_id.to_le_bytes());
        ext_body.extend_from_slice(body);
        let mut ext_mask = vec![0u8; 6];
        ext_mask.extend_from_slice(wmask);
        self.add_ext_capability(EXT_CAP_ID_DVSEC, 1, &ext_body, &ext_mask)
    }

    /// Appends a version 2 PCI Express capability (ID 0x10, 0x3C bytes) for a function of
    /// `port_type`; `port_number` goes to Link Capabilities bits 31:24. Returns its offset.
    ///
    /// Contents: no slot; Device Capabilities with 128-byte max payload and role-based error
    /// reporting; Device Control RW (reset: relaxed ordering, no snoop, 512-byte read requests);
    /// Device Status error bits W1C; a x16, 32 GT/s link that is up (Link Status shows the
    /// negotiated speed and width; downstream ports report data-link-layer link active); Link
    /// Control ASPM, common clock, extended synch and autonomous width disable RW, Link Disable
    /// and Retrain read-only zero; root ports get Root Control RW and Root Status PME W1C;
    /// Device Control 2 completion timeout fields RW; Link Control 2 target speed RW.
    /// Functions without a link (root-complex integrated) get zero link registers.
    pub fn add_pcie_capability(
        &mut self,
        port_type: PciePortType,
        port_number: u8,
    ) -> Result<u8, PciError> {
        let body = [0u8; PCIE_CAP_LEN as usize - 2];
        let cap = self.add_capability(CAP_ID_PCIE, &body, &[])?;
        let c = u16::from(cap);
        self.set_u16(c + PCIE_CAPS, 2 | u16::from(port_type as u8) << 4);

        let mut devcap: u32 = 1 << 15; // role-based error reporting
        if matches!(
            port_type,
            PciePortType::Endpoint
                | PciePortType::LegacyEndpoint
                | PciePortType::RcIntegratedEndpoint
        ) {
            devcap |= 0b111 << 6 | 0b111 << 9; // acceptable L0s/L1 latency: no limit
        }
        self.set_u32(c + PCIE_DEVCAP, devcap);
        self.set_u16(c + PCIE_DEVCTL, 0x2810);
        self.set_wmask_u16(c + PCIE_DEVCTL, 0x79ff);
        self.set_w1c_u16(c + PCIE_DEVSTA, 0x000f);

        if port_type.has_link() {
            let mut lnkcap = u32::from(PCIE_LINK_SPEED)
                | u32::from(PCIE_LINK_WIDTH) << 4
                | 1 << 22 // ASPM optionality compliance
                | u32::from(port_number) << 24;
            let mut lnksta = PCIE_LINK_SPEED | PCIE_LINK_WIDTH << 4 | 1 << 12; // slot clock
            if port_type.is_downstream_port() {
                lnkcap |= 1 << 20; // data link layer link active reporting capable
                lnksta |= 1 << 13; // data link layer link active
            }
            self.set_u32(c + PCIE_LNKCAP, lnkcap);
            self.set_wmask_u16(c + PCIE_LNKCTL, 0x02cb);
            self.set_u16(c + PCIE_LNKSTA, lnksta);
            self.set_u32(c + PCIE_LNKCAP2, 0b1_1111 << 1); // 2.5 to 32 GT/s
            self.set_u16(c + PCIE_LNKCTL2, PCIE_LINK_SPEED);
            self.set_wmask_u16(c + PCIE_LNKCTL2, 0x000f);
        }
        if port_type.has_root_registers() {
            self.set_wmask_u16(c + PCIE_RTCTL, 0x000f);
            self.set_w1c_u32(c + PCIE_RTSTA, 1 << 16); // PME status
        }
        self.set_u32(c + PCIE_DEVCAP2, 1 << 4); // completion timeout disable supported
        self.set_wmask_u16(c + PCIE_DEVCTL2, 0x001f);
        Ok(cap)
    }

    /// The standard capabilities as `(id, offset)` pairs in list order. The walk stops at a
    /// null or out-of-area pointer and after 48 entries (so a looping list ends).
    pub fn capabilities(&self) -> Vec<(u8, u8)> {
        let mut out = Vec::new();
        let mut ptr = self.u8(CAPABILITIES_POINTER) & 0xfc;
        while ptr >= CAP_START as u8 && out.len() < 48 {
            out.push((self.u8(u16::from(ptr)), ptr));
            ptr = self.u8(u16::from(ptr) + 1) & 0xfc;
        }
        out
    }

    /// The extended capabilities as `(id, version, offset)` in list order. The walk stops at a
    /// zero or all-ones header, a next pointer below 0x100, and after 1024 entries.
    pub fn ext_capabilities(&self) -> Vec<(u16, u8, u16)> {
        let mut out = Vec::new();
        let mut off = EXT_CAP_START;
        while out.len() < 1024 {
            let header = self.u32(off);
            if header == 0 || header == u32::MAX {
                break;
            }
            out.push((header as u16, (header >> 16 & 0xf) as u8, off));
            let next = (header >> 20) as u16 & 0xffc;
            if next < EXT_CAP_START {
                break;
            }
            off = next;
        }
        out
    }

    /// Offset of the first standard capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<u8> {
        self.capabilities()
            .into_iter()
            .find(|&(i, _)| i == id)
            .map(|(_, off)| off)
    }

    /// Offset of the first extended capability with `id`.
    pub fn find_ext_capability(&self, id: u16) -> Option<u16> {
        self.ext_capabilities()
            .into_iter()
            .find(|&(i, _, _)| i == id)
            .map(|(_, _, off)| off)
    }

    /// Offset of the first DVSEC with this vendor and DVSEC ID.
    pub fn find_dvsec(&self, vendor: u16, dvsec_id: u16) -> Option<u16> {
        self.ext_capabilities()
            .into_iter()
            .filter(|&(id, _, _)| id == EXT_CAP_ID_DVSEC)
            .map(|(_, _, off)| off)
            .find(|&off| self.u16(off + 4) == vendor && self.u16(off + 8) == dvsec_id)
    }
}

fn check_mask(body: &[u8], wmask: &[u8]) -> Result<(), PciError> {
    if wmask.len() > body.len() {
        return Err(PciError::MaskTooLong {
            mask: wmask.len(),
            body: body.len(),
        });
    }
    Ok(())
}

fn align4(x: usize) -> usize {
    x.next_multiple_of(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_write_keeps_read_only_bits() {
        let mut c = ConfigSpace::new();
        c.set_u8(0x40, 0b1010_0000);
        c.set_wmask_u8(0x40, 0b0000_1111);
        c.write(0x40, &[0b0101_0101]);
        assert_eq!(c.u8(0x40), 0b1010_0101);
    }

    #[test]
    fn w1c_clears_only_the_ones_written() {
        let mut c = ConfigSpace::new();
        c.set_u8(0x40, 0b1111_0000);
        c.set_w1c_u8(0x40, 0b1100_0000);
        c.write(0x40, &[0b1011_1111]);
        assert_eq!(c.u8(0x40), 0b0111_0000);
    }

    #[test]
    fn accesses_past_the_end() {
        let mut c = ConfigSpace::new();
        c.set_u8(0xfff, 0x12);
        c.set_wmask_u8(0xfff, 0xff);
        let mut b = [0u8; 4];
        c.read(0xffe, &mut b);
        assert_eq!(b, [0, 0x12, 0xff, 0xff]);
        c.write(0xfff, &[0x34, 0x56]);
        assert_eq!(c.u8(0xfff), 0x34);
        c.read(u16::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
        c.write(u16::MAX, &[1, 2, 3, 4]);
        c.set_u32(0xffe, 0xdead_beef);
        assert_eq!(c.u16(0xffe), 0xbeef);
    }
}
