//! The 64 KiB CXL component register block of host bridges (the CHBCR), root ports and Type-3
//! endpoints.
//!
//! | range | content |
//! |---|---|
//! | 0x0000–0x0FFF | CXL.io registers: none implemented, read 0 |
//! | 0x1000–0x1FFF | CXL.cache/mem registers: the capability array and the structures it points to |
//! | 0x2000–0xFFFF | unimplemented, read 0 |
//!
//! The CXL.cache/mem area starts with the capability array: at +0 the array header (ID 1,
//! version 1, CXL.cache/mem version 1, bits 31:24 = number of headers that follow), then one
//! dword per capability, `ID | version << 16 | pointer << 20`, the pointer being relative to
//! +0x1000. Only present capabilities get a header (no NULL slots):
//!
//! | capability | ID | version | pointer | size | present on |
//! |---|---|---|---|---|---|
//! | RAS | 2 | 2 | 0x100 | 0x58 | root port, endpoint |
//! | Link | 4 | 2 | 0x180 | 0x50 (all zero) | root port, endpoint |
//! | HDM decoder | 5 | 1 | 0x200 | 0x10 + 0x20·n (≤ 0x210) | host bridge unless passthrough; endpoint; root port when given caps |
//!
//! A passthrough host bridge has an empty array, which is how Linux learns that it has no HDM
//! decoders (it then uses a software passthrough decoder for its single root port).
//!
//! The RAS capability is a plain one: uncorrectable/correctable status registers are RW1C, mask
//! and severity registers are RW, all with their defined bits only; status reads 0 unless an
//! error is injected with [`ComponentRegs::inject_ras`]. The First Error Pointer reports the
//! lowest uncorrectable status bit set; the header log reads 0.
//!
//! Accesses of any size (the guest uses 1, 2, 4 and 8 bytes) and alignment are split into
//! dwords; out-of-range and unimplemented offsets read 0 and ignore writes.

use crate::hdm::{CommitEnv, HdmBlock, HdmCaps, HdmChange, HdmKind, split_read, split_write};

/// Size of a component register block.
pub const COMPONENT_BLOCK_SIZE: usize = 0x1_0000;
/// Offset of the CXL.cache/mem registers (the capability array header).
pub const CACHE_MEM_OFFSET: usize = 0x1000;
/// Size of the CXL.cache/mem register area.
pub const CACHE_MEM_SIZE: usize = 0x1000;

/// Capability ID of the CXL.cache/mem capability array header.
pub const CAP_ID_ARRAY: u16 = 1;
/// Capability ID of the RAS capability.
pub const CAP_ID_RAS: u16 = 2;
/// Capability ID of the Link capability.
pub const CAP_ID_LINK: u16 = 4;
/// Capability ID of the HDM decoder capability.
pub const CAP_ID_HDM: u16 = 5;

/// RAS capability pointer (relative to [`CACHE_MEM_OFFSET`]).
pub const RAS_PTR: usize = 0x100;
/// RAS capability length.
pub const RAS_LEN: usize = 0x58;
/// Link capability pointer (relative to [`CACHE_MEM_OFFSET`]).
pub const LINK_PTR: usize = 0x180;
/// Link capability length.
pub const LINK_LEN: usize = 0x50;
/// HDM decoder capability pointer (relative to [`CACHE_MEM_OFFSET`]).
pub const HDM_PTR: usize = 0x200;

const RAS_VERSION: u32 = 2;
const LINK_VERSION: u32 = 2;
const HDM_VERSION: u32 = 1;
const DEFAULT_DECODERS: u8 = 4;

/// RAS register offsets (relative to the RAS capability).
const RAS_UC_STATUS: usize = 0x00;
const RAS_UC_MASK: usize = 0x04;
const RAS_UC_SEVERITY: usize = 0x08;
const RAS_C_STATUS: usize = 0x0C;
const RAS_C_MASK: usize = 0x10;
const RAS_CAP_CTRL: usize = 0x14;
/// Defined uncorrectable error bits: 11:0 and 16:14.
const RAS_UC_BITS: u32 = 0x1_CFFF;
/// Defined correctable error bits: 6:0.
const RAS_C_BITS: u32 = 0x7F;

/// What a component register block belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    /// A CXL host bridge (its CHBCR).
    HostBridge {
        /// No HDM decoder capability (single root port, Linux passthrough decoder).
        passthrough: bool,
        /// Number of target-list entries of the HDM decoders (1..=8).
        target_count: u8,
    },
    /// A CXL root port.
    RootPort,
    /// A Type-3 memory device.
    Endpoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ras {
    uc_status: u32,
    uc_mask: u32,
    uc_severity: u32,
    c_status: u32,
    c_mask: u32,
}

impl Ras {
    const RESET: Ras = Ras {
        uc_status: 0,
        uc_mask: RAS_UC_BITS,
        uc_severity: RAS_UC_BITS,
        c_status: 0,
        c_mask: RAS_C_BITS,
    };

    fn read(&self, off: usize) -> u32 {
        match off {
            RAS_UC_STATUS => self.uc_status,
            RAS_UC_MASK => self.uc_mask,
            RAS_UC_SEVERITY => self.uc_severity,
            RAS_C_STATUS => self.c_status,
            RAS_C_MASK => self.c_mask,
            RAS_CAP_CTRL => {
                if self.uc_status == 0 {
                    0
                } else {
                    self.uc_status.trailing_zeros()
                }
            }
            _ => 0,
        }
    }

    fn write(&mut self, off: usize, val: u32, mask: u32) {
        let rw = |old: u32, bits: u32| (old & !(mask & bits)) | (val & mask & bits);
        match off {
            RAS_UC_STATUS => self.uc_status &= !(val & mask),
            RAS_UC_MASK => self.uc_mask = rw(self.uc_mask, RAS_UC_BITS),
            RAS_UC_SEVERITY => self.uc_severity = rw(self.uc_severity, RAS_UC_BITS),
            RAS_C_STATUS => self.c_status &= !(val & mask),
            RAS_C_MASK => self.c_mask = rw(self.c_mask, RAS_C_BITS),
            _ => {}
        }
    }
}

/// A 64 KiB CXL component register block.
#[derive(Clone, Debug)]
pub struct ComponentRegs {
    kind: ComponentKind,
    ras: Option<Ras>,
    link: bool,
    hdm: Option<HdmBlock>,
}

impl ComponentRegs {
    /// A block in its power-on state.
    ///
    /// HDM decoders: none for a passthrough host bridge (whatever `hdm_caps` says); for a
    /// non-passthrough host bridge `hdm_caps` (default: [`HdmCaps::port`] with 4 decoders) with
    /// the target count taken from the kind; for an endpoint `hdm_caps` (default:
    /// [`HdmCaps::endpoint`] with 4 decoders); for a root port only when `hdm_caps` is given
    /// (port kind). Capabilities are [normalized](HdmCaps::normalized).
    pub fn new(kind: ComponentKind, hdm_caps: Option<HdmCaps>) -> Self {
        let (ras, link, hdm) = match kind {
            ComponentKind::HostBridge {
                passthrough: true, ..
            } => (false, false, None),
            ComponentKind::HostBridge {
                passthrough: false,
                target_count,
            } => {
                let caps = HdmCaps {
                    target_count,
                    ..hdm_caps.unwrap_or(HdmCaps::port(DEFAULT_DECODERS, target_count))
                };
                (false, false, Some(HdmBlock::new(HdmKind::Port, caps)))
            }
            ComponentKind::RootPort => (
                true,
                true,
                hdm_caps.map(|c| HdmBlock::new(HdmKind::Port, c)),
            ),
            ComponentKind::Endpoint => {
                let caps = hdm_caps.unwrap_or(HdmCaps::endpoint(DEFAULT_DECODERS));
                (true, true, Some(HdmBlock::new(HdmKind::Endpoint, caps)))
            }
        };
        ComponentRegs {
            kind,
            ras: ras.then_some(Ras::RESET),
            link,
            hdm,
        }
    }

    /// The kind.
    pub fn kind(&self) -> ComponentKind {
        self.kind
    }

    /// The HDM decoder block, if present.
    pub fn hdm(&self) -> Option<&HdmBlock> {
        self.hdm.as_ref()
    }

    /// The HDM decoder block, if present, for firmware-style programming
    /// ([`HdmBlock::program`]).
    pub fn hdm_mut(&mut self) -> Option<&mut HdmBlock> {
        self.hdm.as_mut()
    }

    /// Absolute offset of the HDM decoder capability within the 64 KiB block, if present.
    pub fn hdm_offset(&self) -> Option<usize> {
        self.hdm.as_ref().map(|_| CACHE_MEM_OFFSET + HDM_PTR)
    }

    /// Absolute offset of the RAS capability within the 64 KiB block, if present.
    pub fn ras_offset(&self) -> Option<usize> {
        self.ras.map(|_| CACHE_MEM_OFFSET + RAS_PTR)
    }

    /// Sets RAS status bits (restricted to the defined ones), as an error would. No effect
    /// without a RAS capability.
    pub fn inject_ras(&mut self, uncorrectable: u32, correctable: u32) {
        if let Some(ras) = &mut self.ras {
            ras.uc_status |= uncorrectable & RAS_UC_BITS;
            ras.c_status |= correctable & RAS_C_BITS;
        }
    }

    /// Power-on state: RAS registers at their reset values, HDM decoders reset (locks released).
    pub fn reset(&mut self) {
        if let Some(ras) = &mut self.ras {
            *ras = Ras::RESET;
        }
        if let Some(hdm) = &mut self.hdm {
            hdm.reset();
        }
    }

    /// Reads `data.len()` bytes at `offset` within the block (little endian).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        split_read(offset, data, |dw| self.read_dword(dw));
    }

    /// Writes `data` at `offset` within the block (little endian). Returns
    /// [`HdmChange::Decoding`] when the HDM decoder state that affects decoding changed.
    pub fn write(&mut self, offset: usize, data: &[u8], env: &dyn CommitEnv) -> HdmChange {
        let mut change = HdmChange::None;
        split_write(offset, data, |dw, val, mask| {
            change = change.or(self.write_dword(dw, val, mask, env));
        });
        change
    }

    /// The capability headers that follow the array header, in order.
    fn headers(&self) -> impl Iterator<Item = u32> + '_ {
        let ras = self.ras.map(|_| header(CAP_ID_RAS, RAS_VERSION, RAS_PTR));
        let link = self
            .link
            .then(|| header(CAP_ID_LINK, LINK_VERSION, LINK_PTR));
        let hdm = self
            .hdm
            .as_ref()
            .map(|_| header(CAP_ID_HDM, HDM_VERSION, HDM_PTR));
        [ras, link, hdm].into_iter().flatten()
    }

    /// Where dword `rel` (relative to the CXL.cache/mem area) falls.
    fn locate(&self, rel: usize) -> Region {
        let count = self.headers().count();
        if rel <= 4 * count {
            return Region::Header(rel / 4);
        }
        if self.ras.is_some() && (RAS_PTR..RAS_PTR + RAS_LEN).contains(&rel) {
            return Region::Ras(rel - RAS_PTR);
        }
        if let Some(hdm) = &self.hdm
            && (HDM_PTR..HDM_PTR + hdm.len()).contains(&rel)
        {
            return Region::Hdm(rel - HDM_PTR);
        }
        Region::None
    }

    fn read_dword(&self, off: usize) -> u32 {
        let Some(rel) = cache_mem_rel(off) else {
            return 0;
        };
        match self.locate(rel) {
            Region::Header(0) => {
                let count = self.headers().count() as u32;
                u32::from(CAP_ID_ARRAY) | 1 << 16 | 1 << 20 | count << 24
            }
            Region::Header(i) => self.headers().nth(i - 1).unwrap_or(0),
            Region::Ras(r) => self.ras.map_or(0, |ras| ras.read(r)),
            Region::Hdm(r) => self.hdm.as_ref().map_or(0, |hdm| {
                let mut b = [0u8; 4];
                hdm.read(r, &mut b);
                u32::from_le_bytes(b)
            }),
            Region::None => 0,
        }
    }

    fn write_dword(&mut self, off: usize, val: u32, mask: u32, env: &dyn CommitEnv) -> HdmChange {
        let Some(rel) = cache_mem_rel(off) else {
            return HdmChange::None;
        };
        match self.locate(rel) {
            Region::Ras(r) => {
                if let Some(ras) = &mut self.ras {
                    ras.write(r, val, mask);
                }
                HdmChange::None
            }
            Region::Hdm(r) => self
                .hdm
                .as_mut()
                .map_or(HdmChange::None, |hdm| hdm.write_dword(r, val, mask, env)),
            Region::Header(_) | Region::None => HdmChange::None,
        }
    }
}

enum Region {
    Header(usize),
    Ras(usize),
    Hdm(usize),
    None,
}

fn header(id: u16, version: u32, ptr: usize) -> u32 {
    u32::from(id) | version << 16 | (ptr as u32) << 20
}

fn cache_mem_rel(off: usize) -> Option<usize> {
    let rel = off.checked_sub(CACHE_MEM_OFFSET)?;
    (rel < CACHE_MEM_SIZE).then_some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_do_not_overlap() {
        let max_hdm = 0x10 + 0x20 * 16;
        let mut spans = [
            (0, 4 * 4),
            (RAS_PTR, RAS_LEN),
            (LINK_PTR, LINK_LEN),
            (HDM_PTR, max_hdm),
        ];
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:?}");
        }
        let last = spans[spans.len() - 1];
        assert!(last.0 + last.1 <= CACHE_MEM_SIZE);
        for (ptr, _) in &spans[1..] {
            assert!(*ptr < 0x1000 && ptr % 4 == 0);
        }
    }
}
