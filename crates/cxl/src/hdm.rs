//! HDM Decoder Capability structure: register emulation with commit validation (pure data).
//!
//! The block sits at the HDM decoder capability pointer of a component register block
//! ([`crate::component`]) and is `0x10 + 0x20 * decoders` bytes long:
//!
//! | offset | register |
//! |---|---|
//! | 0x00 | HDM Decoder Capability (read-only, built from [`HdmCaps`]) |
//! | 0x04 | HDM Decoder Global Control (bit 0 poison-on-decode-error enable, bit 1 HDM Decoder Enable) |
//! | 0x10 + 0x20·n | Decoder n Base Low (bits 31:28) |
//! | 0x14 + 0x20·n | Decoder n Base High |
//! | 0x18 + 0x20·n | Decoder n Size Low (bits 31:28) |
//! | 0x1C + 0x20·n | Decoder n Size High |
//! | 0x20 + 0x20·n | Decoder n Control |
//! | 0x24 + 0x20·n | Target List Low ([`HdmKind::Port`]) / DPA Skip Low, bits 31:28 ([`HdmKind::Endpoint`]) |
//! | 0x28 + 0x20·n | Target List High / DPA Skip High |
//!
//! Control: IG (bits 3:0), IW (7:4), Lock-On-Commit (8), Commit (9), Committed (10, read-only),
//! Error-Not-Committed (11, read-only), Target Device Type (12; 1 = host-only coherent). Every
//! other bit is reserved and reads 0.
//!
//! # Behaviour
//!
//! * Reset state is all zeros (Linux rejects all-ones base/size).
//! * A Control write that sets Commit (bit 9 written 1 while the decoder is not committed)
//!   validates the programming synchronously: on success Committed is set and Error-Not-Committed
//!   cleared; on failure Error-Not-Committed is set and Committed stays 0. Writing Commit 0 clears
//!   Committed and Error-Not-Committed.
//! * While a decoder is committed its base, size, target list / DPA skip registers and its
//!   Control configuration bits (IG, IW, Lock-On-Commit, Target Device Type) ignore writes; only
//!   Commit can be cleared. A decoder committed with Lock-On-Commit set ignores every write until
//!   [`HdmBlock::reset`].
//! * Decoders commit in index order (decoder n needs 0..n-1 committed) and, symmetrically, a
//!   decoder cannot be uncommitted while decoder n+1 is committed (that Control write is ignored,
//!   as Linux only ever releases the highest committed decoder). The committed decoders are
//!   therefore always a prefix `0..k` whose registers are frozen, which keeps every committed
//!   decoder's DPA base stable.
//!
//! # Validation at commit
//!
//! Size non-zero; base and size multiples of 256 MiB (always true for register writes, whose low
//! bits are reserved; checked for [`HdmBlock::program`]); `base + size` does not overflow;
//! decoders 0..n-1 committed; base at or above the end of every lower committed decoder (ascending,
//! no overlap); valid IW/IG encodings; ways allowed by the capability (3/6/12 need
//! `ways_3_6_12`, 16 needs `ways_16`, a port needs `ways <= target_count`); interleave address
//! bits covered by the capability (see below); size a multiple of `ways * 256 MiB`; a port's
//! first `ways` target-list entries name existing downstream ports; an endpoint's DPA range
//! `[dpa_base, dpa_base + size / ways)` within the device capacity; the HPA range allowed by the
//! parent ([`CommitEnv::range_allowed`]).
//!
//! ## Interleave capability bits
//!
//! The address bits that select the power-of-2 part of the position are
//! `8 + eIG ..= 8 + eIG + log2(pow2(ways)) - 1` (none for 1 and 3 ways; for 6/12 ways only the
//! 2/4 factor has dedicated bits, the factor 3 is a modulo over all higher bits). Bits 8..=11
//! need `a11to8`, bits 12..=14 need `a14to12`. **Bits 15 and above are always accepted**: the
//! capability register has no bit for them, and a decoder that implements the 16 KiB granularity
//! and 2-way interleave already selects on bit 14 and up, so the CXL capability bits only describe
//! the optional low-bit support. Linux 6.12 (`check_interleave_cap`) is stricter: its mask only
//! contains bits 8..=14, so it never programs a combination that uses bit 15 or above (for
//! example 16 KiB × 4 ways); accepting those here only matters for firmware-style
//! [`HdmBlock::program`] calls, which should stay within bit 14 if Linux must accept the result.

use crate::interleave::{Granularity, Ways, selection_bits};

/// Alignment and size unit of HDM decoder ranges and DPA skips: 256 MiB.
pub const HDM_UNIT: u64 = 256 << 20;

/// Offset of the Capability register.
pub const HDM_CAP: usize = 0x00;
/// Offset of the Global Control register.
pub const HDM_GLOBAL_CTRL: usize = 0x04;
/// Offset of decoder 0's Base Low register.
pub const HDM_DECODER0: usize = 0x10;
/// Distance between two decoders' register sets.
pub const HDM_DECODER_STRIDE: usize = 0x20;
/// Base Low, relative to a decoder's register set.
pub const DEC_BASE_LO: usize = 0x00;
/// Base High, relative to a decoder's register set.
pub const DEC_BASE_HI: usize = 0x04;
/// Size Low, relative to a decoder's register set.
pub const DEC_SIZE_LO: usize = 0x08;
/// Size High, relative to a decoder's register set.
pub const DEC_SIZE_HI: usize = 0x0C;
/// Control, relative to a decoder's register set.
pub const DEC_CTRL: usize = 0x10;
/// Target List Low / DPA Skip Low, relative to a decoder's register set.
pub const DEC_TL_LO: usize = 0x14;
/// Target List High / DPA Skip High, relative to a decoder's register set.
pub const DEC_TL_HI: usize = 0x18;

/// Global Control: Poison-on-Decode-Error Enable.
pub const GLOBAL_POISON_ENABLE: u32 = 1 << 0;
/// Global Control: HDM Decoder Enable.
pub const GLOBAL_HDM_ENABLE: u32 = 1 << 1;
const GLOBAL_MASK: u32 = GLOBAL_POISON_ENABLE | GLOBAL_HDM_ENABLE;

/// Control: interleave granularity field (bits 3:0).
pub const CTRL_IG_MASK: u32 = 0xF;
/// Control: interleave ways field (bits 7:4).
pub const CTRL_IW_MASK: u32 = 0xF0;
/// Control: shift of the IW field.
pub const CTRL_IW_SHIFT: u32 = 4;
/// Control: Lock-On-Commit.
pub const CTRL_LOCK_ON_COMMIT: u32 = 1 << 8;
/// Control: Commit.
pub const CTRL_COMMIT: u32 = 1 << 9;
/// Control: Committed (read-only).
pub const CTRL_COMMITTED: u32 = 1 << 10;
/// Control: Error Not Committed (read-only).
pub const CTRL_ERR_NOT_COMMITTED: u32 = 1 << 11;
/// Control: Target Device Type (1 = host-only coherent, HDM-H).
pub const CTRL_HOST_ONLY: u32 = 1 << 12;
/// Control bits that configure the decoder (frozen while committed).
const CTRL_CONFIG_MASK: u32 = CTRL_IG_MASK | CTRL_IW_MASK | CTRL_LOCK_ON_COMMIT | CTRL_HOST_ONLY;

/// Low register mask of base, size and DPA skip (bits 31:28).
const LO_MASK: u32 = 0xF000_0000;

/// Capability register fields.
const CAP_A11TO8: u32 = 1 << 8;
const CAP_A14TO12: u32 = 1 << 9;
const CAP_3_6_12: u32 = 1 << 11;
const CAP_16: u32 = 1 << 12;

/// Which side of an interleave a decoder block sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HdmKind {
    /// A Type-3 device: decoders translate HPA to DPA (registers 0x24/0x28 are the DPA skip).
    Endpoint,
    /// A host bridge or switch upstream port: decoders route to downstream ports (registers
    /// 0x24/0x28 are the target list).
    Port,
}

/// Capabilities advertised in (and enforced from) the HDM Decoder Capability register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HdmCaps {
    /// Number of decoders: 1, 2, 4, 6, 8, 10, 12, 14 or 16 (the counts whose encoding Linux and
    /// the specification decode alike).
    pub decoders: u8,
    /// Port: number of target-list entries, 1..=8. Endpoint: 0.
    pub target_count: u8,
    /// Interleaving on address bits 11:8 supported.
    pub a11to8: bool,
    /// Interleaving on address bits 14:12 supported.
    pub a14to12: bool,
    /// 3, 6 and 12-way interleave supported.
    pub ways_3_6_12: bool,
    /// 16-way interleave supported.
    pub ways_16: bool,
}

/// Invalid [`HdmCaps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    /// The decoder count has no encoding.
    #[error("decoder count {0} is not encodable (1, 2, 4, 6, 8, 10, 12, 14 or 16)")]
    Decoders(u8),
    /// The target count does not suit the kind (port: 1..=8, endpoint: 0).
    #[error("target count {0} is invalid for this decoder kind")]
    TargetCount(u8),
}

impl HdmCaps {
    /// Typical endpoint capabilities: `decoders` decoders, every interleave supported.
    pub const fn endpoint(decoders: u8) -> HdmCaps {
        HdmCaps {
            decoders,
            target_count: 0,
            a11to8: true,
            a14to12: true,
            ways_3_6_12: true,
            ways_16: true,
        }
    }

    /// Typical host-bridge / switch capabilities: `decoders` decoders, `target_count` targets,
    /// interleave on bits 8 and up, power-of-2 ways only.
    pub const fn port(decoders: u8, target_count: u8) -> HdmCaps {
        HdmCaps {
            decoders,
            target_count,
            a11to8: true,
            a14to12: true,
            ways_3_6_12: false,
            ways_16: false,
        }
    }

    /// Checks the capabilities for `kind`.
    pub fn validate(&self, kind: HdmKind) -> Result<(), CapsError> {
        if decoder_count_enc(self.decoders).is_none() {
            return Err(CapsError::Decoders(self.decoders));
        }
        let ok = match kind {
            HdmKind::Endpoint => self.target_count == 0,
            HdmKind::Port => (1..=8).contains(&self.target_count),
        };
        if !ok {
            return Err(CapsError::TargetCount(self.target_count));
        }
        Ok(())
    }

    /// The capabilities made valid for `kind`: the decoder count rounded down to an encodable
    /// count (at least 1), the target count clamped to 1..=8 for a port and set to 0 for an
    /// endpoint.
    pub fn normalized(&self, kind: HdmKind) -> HdmCaps {
        let decoders = match self.decoders {
            0 | 1 => 1,
            n if n >= 16 => 16,
            n => n & !1,
        };
        let target_count = match kind {
            HdmKind::Endpoint => 0,
            HdmKind::Port => self.target_count.clamp(1, 8),
        };
        HdmCaps {
            decoders,
            target_count,
            ..*self
        }
    }

    /// The HDM Decoder Capability register value.
    pub fn register(&self) -> u32 {
        let mut v = u32::from(decoder_count_enc(self.decoders).unwrap_or(0));
        v |= (u32::from(self.target_count) & 0xF) << 4;
        if self.a11to8 {
            v |= CAP_A11TO8;
        }
        if self.a14to12 {
            v |= CAP_A14TO12;
        }
        if self.ways_3_6_12 {
            v |= CAP_3_6_12;
        }
        if self.ways_16 {
            v |= CAP_16;
        }
        v
    }

    /// Whether `ways` at `gran` is allowed by these capabilities for `kind` (the ways and
    /// interleave-bit rules of the commit validation).
    pub fn check_interleave(
        &self,
        kind: HdmKind,
        ways: Ways,
        gran: Granularity,
    ) -> Result<(), CommitError> {
        let supported = match ways {
            Ways::X3 | Ways::X6 | Ways::X12 => self.ways_3_6_12,
            Ways::X16 => self.ways_16,
            _ => true,
        };
        if !supported {
            return Err(CommitError::WaysNotSupported(ways.count()));
        }
        if kind == HdmKind::Port && ways.count() > u32::from(self.target_count) {
            return Err(CommitError::TooManyWays {
                ways: ways.count(),
                target_count: self.target_count,
            });
        }
        if let Some((low, high)) = selection_bits(ways, gran) {
            for bit in low..=high {
                let ok = match bit {
                    8..=11 => self.a11to8,
                    12..=14 => self.a14to12,
                    _ => true,
                };
                if !ok {
                    return Err(CommitError::InterleaveBitNotSupported(bit));
                }
            }
        }
        Ok(())
    }
}

/// Decoder Count field encoding of `count` (only counts that Linux's `n -> 2n` decoding and the
/// specification agree on).
fn decoder_count_enc(count: u8) -> Option<u8> {
    match count {
        1 => Some(0),
        2..=16 if count.is_multiple_of(2) => Some(count / 2),
        _ => None,
    }
}

/// A committed decoder, as decoded from its registers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CommittedDecoder {
    /// Decoder index.
    pub index: usize,
    /// HPA base.
    pub base: u64,
    /// HPA size (the whole interleaved range, not the per-device share).
    pub size: u64,
    /// Interleave ways.
    pub ways: Ways,
    /// Interleave granularity.
    pub gran: Granularity,
    /// Port: the `ways` target port numbers in position order. Endpoint: empty.
    pub targets: Vec<u8>,
    /// Endpoint: DPA skip before this decoder's range. Port: 0.
    pub dpa_skip: u64,
    /// Endpoint: DPA of the decoder's first byte (sum over lower decoders of skip + size/ways,
    /// plus own skip). Port: 0.
    pub dpa_base: u64,
    /// Target Device Type: host-only coherent (HDM-H).
    pub host_only: bool,
}

impl CommittedDecoder {
    /// End of the HPA range (exclusive).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// Whether `hpa` is inside the HPA range.
    pub fn contains(&self, hpa: u64) -> bool {
        hpa >= self.base && hpa - self.base < self.size
    }

    /// DPA bytes used by this decoder on one device (`size / ways`).
    pub fn dpa_size(&self) -> u64 {
        self.size / u64::from(self.ways.count())
    }
}

/// Facts outside the HDM block that a commit depends on, supplied by the caller at write time.
pub trait CommitEnv {
    /// Whether `[base, base + size)` is contained in a parent window or decoder reachable from
    /// this component.
    fn range_allowed(&self, base: u64, size: u64) -> bool;
    /// Port kind: whether a downstream port with port number `port` exists.
    fn target_exists(&self, port: u8) -> bool;
    /// Endpoint kind: the device capacity in bytes.
    fn dpa_capacity(&self) -> u64;
}

/// A fixed [`CommitEnv`]: a set of allowed HPA windows, a set of port numbers and a capacity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticEnv {
    /// Allowed HPA ranges as `(base, size)`.
    pub windows: Vec<(u64, u64)>,
    /// Existing downstream port numbers.
    pub ports: Vec<u8>,
    /// Device capacity in bytes.
    pub capacity: u64,
}

impl CommitEnv for StaticEnv {
    fn range_allowed(&self, base: u64, size: u64) -> bool {
        let Some(end) = base.checked_add(size) else {
            return false;
        };
        self.windows
            .iter()
            .any(|&(wb, ws)| wb.checked_add(ws).is_some_and(|we| base >= wb && end <= we))
    }

    fn target_exists(&self, port: u8) -> bool {
        self.ports.contains(&port)
    }

    fn dpa_capacity(&self) -> u64 {
        self.capacity
    }
}

/// Why a commit failed (Error-Not-Committed was set).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// No decoder with this index.
    #[error("no decoder {0}")]
    NoSuchDecoder(usize),
    /// [`HdmBlock::program`] on a decoder that is already committed.
    #[error("decoder {0} is already committed")]
    AlreadyCommitted(usize),
    /// Size is zero.
    #[error("size is zero")]
    ZeroSize,
    /// Base, size or DPA skip not a multiple of 256 MiB.
    #[error("base, size or DPA skip not 256 MiB aligned")]
    Misaligned,
    /// `base + size` overflows.
    #[error("base + size overflows")]
    Overflow,
    /// A lower decoder is not committed.
    #[error("decoder {0} below is not committed")]
    OutOfOrder(usize),
    /// The range starts below the end of a lower committed decoder.
    #[error("range is not above decoder {0}")]
    NotAscending(usize),
    /// Invalid IW encoding.
    #[error("invalid interleave ways encoding {0}")]
    InvalidWays(u8),
    /// Invalid IG encoding.
    #[error("invalid interleave granularity encoding {0}")]
    InvalidGranularity(u8),
    /// The ways value is not advertised.
    #[error("{0}-way interleave not supported")]
    WaysNotSupported(u32),
    /// More ways than target-list entries.
    #[error("{ways} ways exceed the target count {target_count}")]
    TooManyWays {
        /// Programmed ways.
        ways: u32,
        /// Advertised target count.
        target_count: u8,
    },
    /// The interleave uses an address bit the capability does not cover.
    #[error("interleave on address bit {0} not supported")]
    InterleaveBitNotSupported(u32),
    /// Size is not a multiple of `ways * 256 MiB`.
    #[error("size is not a multiple of ways x 256 MiB")]
    SizeNotMultipleOfWays,
    /// A target-list entry names a port that does not exist.
    #[error("target port {0} does not exist")]
    NoSuchTarget(u8),
    /// The target list handed to [`HdmBlock::program`] does not match the ways or the kind.
    #[error("target list / DPA skip does not match the ways or the decoder kind")]
    TargetsMismatch,
    /// The DPA range exceeds the device capacity.
    #[error("DPA range {dpa_base:#x}+{dpa_size:#x} exceeds capacity {capacity:#x}")]
    DpaExceedsCapacity {
        /// DPA base of the decoder.
        dpa_base: u64,
        /// DPA bytes the decoder needs.
        dpa_size: u64,
        /// Device capacity.
        capacity: u64,
    },
    /// The HPA range is not inside a parent window or decoder.
    #[error("HPA range not allowed by the parent")]
    RangeNotAllowed,
}

/// What a register write changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HdmChange {
    /// Nothing that affects decoding.
    #[default]
    None,
    /// The set of committed decoders or the global HDM enable changed.
    Decoding,
}

impl HdmChange {
    /// `Decoding` if either is.
    #[must_use]
    pub fn or(self, other: HdmChange) -> HdmChange {
        if self == HdmChange::Decoding || other == HdmChange::Decoding {
            HdmChange::Decoding
        } else {
            HdmChange::None
        }
    }
}

/// Target list or DPA skip for [`HdmBlock::program`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecoderTargets<'a> {
    /// Port kind: exactly `ways` port numbers, in position order.
    Ports(&'a [u8]),
    /// Endpoint kind: DPA skip (a multiple of 256 MiB).
    DpaSkip(u64),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DecoderRegs {
    base_lo: u32,
    base_hi: u32,
    size_lo: u32,
    size_hi: u32,
    ctrl: u32,
    tl_lo: u32,
    tl_hi: u32,
}

impl DecoderRegs {
    fn base(&self) -> u64 {
        u64::from(self.base_hi) << 32 | u64::from(self.base_lo & LO_MASK)
    }

    fn size(&self) -> u64 {
        u64::from(self.size_hi) << 32 | u64::from(self.size_lo & LO_MASK)
    }

    /// Target list as 8 bytes (Port) or the DPA skip (Endpoint), as a u64.
    fn tl(&self) -> u64 {
        u64::from(self.tl_hi) << 32 | u64::from(self.tl_lo)
    }

    fn committed(&self) -> bool {
        self.ctrl & CTRL_COMMITTED != 0
    }

    fn locked(&self) -> bool {
        self.committed() && self.ctrl & CTRL_LOCK_ON_COMMIT != 0
    }

    fn ways(&self) -> Result<Ways, CommitError> {
        let enc = ((self.ctrl & CTRL_IW_MASK) >> CTRL_IW_SHIFT) as u8;
        Ways::from_enc(enc).ok_or(CommitError::InvalidWays(enc))
    }

    fn gran(&self) -> Result<Granularity, CommitError> {
        let enc = (self.ctrl & CTRL_IG_MASK) as u8;
        Granularity::from_enc(enc).ok_or(CommitError::InvalidGranularity(enc))
    }
}

/// The HDM Decoder Capability register block of one component.
#[derive(Clone, Debug)]
pub struct HdmBlock {
    kind: HdmKind,
    caps: HdmCaps,
    global: u32,
    decoders: Vec<DecoderRegs>,
    last_error: Vec<Option<CommitError>>,
}

impl HdmBlock {
    /// A block in its power-on state. `caps` is [normalized](HdmCaps::normalized) for `kind`;
    /// use [`HdmBlock::try_new`] to have invalid capabilities reported instead.
    pub fn new(kind: HdmKind, caps: HdmCaps) -> Self {
        let caps = caps.normalized(kind);
        let n = usize::from(caps.decoders);
        HdmBlock {
            kind,
            caps,
            global: 0,
            decoders: vec![DecoderRegs::default(); n],
            last_error: vec![None; n],
        }
    }

    /// A block in its power-on state, or the reason `caps` is invalid for `kind`.
    pub fn try_new(kind: HdmKind, caps: HdmCaps) -> Result<Self, CapsError> {
        caps.validate(kind)?;
        Ok(HdmBlock::new(kind, caps))
    }

    /// The kind.
    pub fn kind(&self) -> HdmKind {
        self.kind
    }

    /// The (normalized) capabilities.
    pub fn caps(&self) -> &HdmCaps {
        &self.caps
    }

    /// Number of decoders.
    pub fn decoder_count(&self) -> usize {
        self.decoders.len()
    }

    /// Length of the register block: `0x10 + 0x20 * decoders`.
    pub fn len(&self) -> usize {
        HDM_DECODER0 + HDM_DECODER_STRIDE * self.decoders.len()
    }

    /// Always false (a block has at least one decoder); present for symmetry with [`len`](Self::len).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Global Control bit 1 (HDM Decoder Enable).
    pub fn global_enable(&self) -> bool {
        self.global & GLOBAL_HDM_ENABLE != 0
    }

    /// Whether decoder `index` is committed.
    pub fn is_committed(&self, index: usize) -> bool {
        self.decoders.get(index).is_some_and(DecoderRegs::committed)
    }

    /// Why the last commit attempt of decoder `index` failed, while Error-Not-Committed is set.
    pub fn last_error(&self, index: usize) -> Option<&CommitError> {
        let d = self.decoders.get(index)?;
        if d.ctrl & CTRL_ERR_NOT_COMMITTED == 0 {
            return None;
        }
        self.last_error.get(index)?.as_ref()
    }

    /// Power-on state: every register 0, nothing committed, locks released.
    pub fn reset(&mut self) {
        self.global = 0;
        self.decoders.fill(DecoderRegs::default());
        self.last_error.fill(None);
    }

    /// Reads `data.len()` bytes at `offset` (little endian). Any size and alignment is accepted;
    /// an 8-byte access reads two dwords. Bytes outside the block read 0.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        split_read(offset, data, |dw| self.read_dword(dw));
    }

    /// Writes `data` at `offset` (little endian). Any size and alignment is accepted; dwords are
    /// written in ascending order, each with its byte enables. Bytes outside the block are
    /// ignored.
    pub fn write(&mut self, offset: usize, data: &[u8], env: &dyn CommitEnv) -> HdmChange {
        let mut change = HdmChange::None;
        split_write(offset, data, |dw, val, mask| {
            change = change.or(self.write_dword(dw, val, mask, env));
        });
        change
    }

    /// The committed decoders, in index order. A pure function of the register state.
    pub fn committed(&self) -> Vec<CommittedDecoder> {
        let mut out = Vec::new();
        let mut dpa_next: u64 = 0;
        for (index, d) in self.decoders.iter().enumerate() {
            if !d.committed() {
                // Committed decoders always form a prefix.
                break;
            }
            match self.decode(index, d, dpa_next) {
                Ok(c) => {
                    dpa_next = c.dpa_base.saturating_add(c.dpa_size());
                    out.push(c);
                }
                Err(_) => break,
            }
        }
        out
    }

    /// Firmware-style programming: writes decoder `index`'s registers (host-only target type,
    /// no lock) and commits it with the same validation as a guest commit.
    ///
    /// `Ok` means the decoder is now committed, a decoding change for the caller to act on (as
    /// [`HdmChange::Decoding`] from a register write).
    ///
    /// On a validation failure the registers stay programmed with Error-Not-Committed set, as
    /// after a failed guest commit. Values the registers cannot represent (unaligned base, size
    /// or skip; a target list of the wrong length or kind) are refused before anything is
    /// written.
    #[allow(clippy::too_many_arguments)]
    pub fn program(
        &mut self,
        index: usize,
        base: u64,
        size: u64,
        ways: Ways,
        gran: Granularity,
        targets_or_skip: DecoderTargets<'_>,
        env: &dyn CommitEnv,
    ) -> Result<(), CommitError> {
        let kind = self.kind;
        let d = self
            .decoders
            .get(index)
            .ok_or(CommitError::NoSuchDecoder(index))?;
        if d.committed() {
            return Err(CommitError::AlreadyCommitted(index));
        }
        if !base.is_multiple_of(HDM_UNIT) || !size.is_multiple_of(HDM_UNIT) {
            return Err(CommitError::Misaligned);
        }
        let tl = match (kind, targets_or_skip) {
            (HdmKind::Port, DecoderTargets::Ports(p)) => {
                if p.len() != ways.count() as usize || p.len() > 8 {
                    return Err(CommitError::TargetsMismatch);
                }
                p.iter()
                    .enumerate()
                    .fold(0u64, |acc, (i, &b)| acc | u64::from(b) << (8 * i))
            }
            (HdmKind::Endpoint, DecoderTargets::DpaSkip(skip)) => {
                if !skip.is_multiple_of(HDM_UNIT) {
                    return Err(CommitError::Misaligned);
                }
                skip
            }
            _ => return Err(CommitError::TargetsMismatch),
        };
        let regs = DecoderRegs {
            base_lo: base as u32,
            base_hi: (base >> 32) as u32,
            size_lo: size as u32,
            size_hi: (size >> 32) as u32,
            ctrl: u32::from(gran.enc())
                | u32::from(ways.enc()) << CTRL_IW_SHIFT
                | CTRL_HOST_ONLY
                | CTRL_COMMIT,
            tl_lo: tl as u32,
            tl_hi: (tl >> 32) as u32,
        };
        self.decoders[index] = regs;
        self.try_commit(index, env)
    }

    fn read_dword(&self, off: usize) -> u32 {
        match off {
            HDM_CAP => self.caps.register(),
            HDM_GLOBAL_CTRL => self.global,
            _ => match self.decoder_reg(off) {
                Some((n, reg)) => {
                    let d = &self.decoders[n];
                    match reg {
                        DEC_BASE_LO => d.base_lo,
                        DEC_BASE_HI => d.base_hi,
                        DEC_SIZE_LO => d.size_lo,
                        DEC_SIZE_HI => d.size_hi,
                        DEC_CTRL => d.ctrl,
                        DEC_TL_LO => d.tl_lo,
                        DEC_TL_HI => d.tl_hi,
                        _ => 0,
                    }
                }
                None => 0,
            },
        }
    }

    /// Decoder index and register offset (relative to the decoder) of dword `off`.
    fn decoder_reg(&self, off: usize) -> Option<(usize, usize)> {
        let rel = off.checked_sub(HDM_DECODER0)?;
        let n = rel / HDM_DECODER_STRIDE;
        (n < self.decoders.len()).then_some((n, rel % HDM_DECODER_STRIDE))
    }

    /// Writes the aligned dword at `off` with bit-enable `mask` (byte enables expanded to bits).
    pub(crate) fn write_dword(
        &mut self,
        off: usize,
        val: u32,
        mask: u32,
        env: &dyn CommitEnv,
    ) -> HdmChange {
        if off == HDM_GLOBAL_CTRL {
            let old = self.global;
            self.global = merge(old, val, mask & GLOBAL_MASK);
            return if (old ^ self.global) & GLOBAL_HDM_ENABLE != 0 {
                HdmChange::Decoding
            } else {
                HdmChange::None
            };
        }
        let Some((n, reg)) = self.decoder_reg(off) else {
            return HdmChange::None;
        };
        let tl_lo_mask = match self.kind {
            HdmKind::Port => u32::MAX,
            HdmKind::Endpoint => LO_MASK,
        };
        if self.decoders[n].locked() {
            return HdmChange::None;
        }
        if reg == DEC_CTRL {
            return self.write_ctrl(n, val, mask, env);
        }
        let d = &mut self.decoders[n];
        if d.committed() {
            return HdmChange::None;
        }
        match reg {
            DEC_BASE_LO => d.base_lo = merge(d.base_lo, val, mask & LO_MASK),
            DEC_BASE_HI => d.base_hi = merge(d.base_hi, val, mask),
            DEC_SIZE_LO => d.size_lo = merge(d.size_lo, val, mask & LO_MASK),
            DEC_SIZE_HI => d.size_hi = merge(d.size_hi, val, mask),
            DEC_TL_LO => d.tl_lo = merge(d.tl_lo, val, mask & tl_lo_mask),
            DEC_TL_HI => d.tl_hi = merge(d.tl_hi, val, mask),
            _ => {}
        }
        HdmChange::None
    }

    fn write_ctrl(&mut self, n: usize, val: u32, mask: u32, env: &dyn CommitEnv) -> HdmChange {
        let commit_written = mask & CTRL_COMMIT != 0;
        let commit = val & CTRL_COMMIT != 0;
        if self.decoders[n].committed() {
            if !commit_written || commit {
                return HdmChange::None;
            }
            // Uncommit; refused while the next decoder is committed.
            if self.is_committed(n + 1) {
                return HdmChange::None;
            }
            self.decoders[n].ctrl &= !(CTRL_COMMIT | CTRL_COMMITTED | CTRL_ERR_NOT_COMMITTED);
            self.last_error[n] = None;
            return HdmChange::Decoding;
        }
        let d = &mut self.decoders[n];
        d.ctrl = merge(d.ctrl, val, mask & CTRL_CONFIG_MASK);
        if !commit_written {
            return HdmChange::None;
        }
        if !commit {
            d.ctrl &= !(CTRL_COMMIT | CTRL_ERR_NOT_COMMITTED);
            self.last_error[n] = None;
            return HdmChange::None;
        }
        d.ctrl |= CTRL_COMMIT;
        match self.try_commit(n, env) {
            Ok(()) => HdmChange::Decoding,
            Err(_) => HdmChange::None,
        }
    }

    /// Validates decoder `n` (Commit already set) and sets Committed or Error-Not-Committed.
    fn try_commit(&mut self, n: usize, env: &dyn CommitEnv) -> Result<(), CommitError> {
        let result = self.validate(n, env);
        let d = &mut self.decoders[n];
        match &result {
            Ok(()) => {
                d.ctrl = (d.ctrl | CTRL_COMMITTED) & !CTRL_ERR_NOT_COMMITTED;
                self.last_error[n] = None;
            }
            Err(e) => {
                tracing::debug!(decoder = n, error = %e, "HDM decoder commit failed");
                d.ctrl = (d.ctrl | CTRL_ERR_NOT_COMMITTED) & !CTRL_COMMITTED;
                self.last_error[n] = Some(e.clone());
            }
        }
        result
    }

    fn validate(&self, n: usize, env: &dyn CommitEnv) -> Result<(), CommitError> {
        let d = &self.decoders[n];
        // Lower decoders: all committed (ordering), and the end of their DPA use.
        let mut dpa_next: u64 = 0;
        let mut lower_end: u64 = 0;
        for (j, lower) in self.decoders[..n].iter().enumerate() {
            if !lower.committed() {
                return Err(CommitError::OutOfOrder(j));
            }
            let c = self.decode(j, lower, dpa_next)?;
            dpa_next = c
                .dpa_base
                .checked_add(c.dpa_size())
                .ok_or(CommitError::Overflow)?;
            lower_end = lower_end.max(c.end());
        }
        let c = self.decode(n, d, dpa_next)?;
        if n > 0 && c.base < lower_end {
            return Err(CommitError::NotAscending(n - 1));
        }
        match self.kind {
            HdmKind::Port => {
                if let Some(&p) = c.targets.iter().find(|&&p| !env.target_exists(p)) {
                    return Err(CommitError::NoSuchTarget(p));
                }
            }
            HdmKind::Endpoint => {
                let capacity = env.dpa_capacity();
                let fits = c
                    .dpa_base
                    .checked_add(c.dpa_size())
                    .is_some_and(|end| end <= capacity);
                if !fits {
                    return Err(CommitError::DpaExceedsCapacity {
                        dpa_base: c.dpa_base,
                        dpa_size: c.dpa_size(),
                        capacity,
                    });
                }
            }
        }
        if !env.range_allowed(c.base, c.size) {
            return Err(CommitError::RangeNotAllowed);
        }
        Ok(())
    }

    /// Decodes and checks the parts of decoder `index` that depend only on its own registers and
    /// the capabilities; `dpa_next` is the first DPA after the lower decoders.
    fn decode(
        &self,
        index: usize,
        d: &DecoderRegs,
        dpa_next: u64,
    ) -> Result<CommittedDecoder, CommitError> {
        let (base, size) = (d.base(), d.size());
        if size == 0 {
            return Err(CommitError::ZeroSize);
        }
        if !base.is_multiple_of(HDM_UNIT) || !size.is_multiple_of(HDM_UNIT) {
            return Err(CommitError::Misaligned);
        }
        if base.checked_add(size).is_none() {
            return Err(CommitError::Overflow);
        }
        let ways = d.ways()?;
        let gran = d.gran()?;
        self.caps.check_interleave(self.kind, ways, gran)?;
        if !size.is_multiple_of(HDM_UNIT * u64::from(ways.count())) {
            return Err(CommitError::SizeNotMultipleOfWays);
        }
        let (targets, dpa_skip, dpa_base) = match self.kind {
            HdmKind::Port => {
                let tl = d.tl().to_le_bytes();
                let targets = tl
                    .get(..ways.count() as usize)
                    .ok_or(CommitError::TooManyWays {
                        ways: ways.count(),
                        target_count: self.caps.target_count,
                    })?;
                (targets.to_vec(), 0, 0)
            }
            HdmKind::Endpoint => {
                let skip = d.tl() & !u64::from(!LO_MASK); // bits 27:0 reserved
                let dpa_base = dpa_next.checked_add(skip).ok_or(CommitError::Overflow)?;
                (Vec::new(), skip, dpa_base)
            }
        };
        Ok(CommittedDecoder {
            index,
            base,
            size,
            ways,
            gran,
            targets,
            dpa_skip,
            dpa_base,
            host_only: d.ctrl & CTRL_HOST_ONLY != 0,
        })
    }
}

/// `old` with the bits in `mask` replaced by those of `val`.
fn merge(old: u32, val: u32, mask: u32) -> u32 {
    (old & !mask) | (val & mask)
}

/// Splits a read of `data.len()` bytes at `offset` into aligned dword reads through `dword`.
/// Bytes whose address overflows read 0.
pub(crate) fn split_read(offset: usize, data: &mut [u8], mut dword: impl FnMut(usize) -> u32) {
    let mut cached: Option<(usize, [u8; 4])> = None;
    for (i, byte) in data.iter_mut().enumerate() {
        let Some(addr) = offset.checked_add(i) else {
            *byte = 0;
            continue;
        };
        let aligned = addr & !3;
        let bytes = match cached {
            Some((a, b)) if a == aligned => b,
            _ => {
                let b = dword(aligned).to_le_bytes();
                cached = Some((aligned, b));
                b
            }
        };
        *byte = bytes[addr & 3];
    }
}

/// Splits a write of `data` at `offset` into aligned dword writes `(offset, value, bit mask)`,
/// in ascending order. Bytes whose address overflows are dropped.
pub(crate) fn split_write(offset: usize, data: &[u8], mut dword: impl FnMut(usize, u32, u32)) {
    let mut pending: Option<(usize, u32, u32)> = None;
    for (i, &byte) in data.iter().enumerate() {
        let Some(addr) = offset.checked_add(i) else {
            break;
        };
        let aligned = addr & !3;
        let shift = 8 * (addr & 3) as u32;
        match &mut pending {
            Some((a, v, m)) if *a == aligned => {
                *v |= u32::from(byte) << shift;
                *m |= 0xFF << shift;
            }
            _ => {
                if let Some((a, v, m)) = pending.take() {
                    dword(a, v, m);
                }
                pending = Some((aligned, u32::from(byte) << shift, 0xFF << shift));
            }
        }
    }
    if let Some((a, v, m)) = pending {
        dword(a, v, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_write_groups_bytes_by_dword() {
        let mut seen = Vec::new();
        split_write(0x1e, &[1, 2, 3, 4, 5, 6, 7, 8], |a, v, m| {
            seen.push((a, v, m))
        });
        assert_eq!(
            seen,
            vec![
                (0x1c, 0x0201_0000, 0xFFFF_0000),
                (0x20, 0x0605_0403, 0xFFFF_FFFF),
                (0x24, 0x0000_0807, 0x0000_FFFF),
            ]
        );
        seen.clear();
        split_write(usize::MAX - 1, &[1, 2, 3, 4], |a, v, m| {
            seen.push((a, v, m))
        });
        assert_eq!(seen, vec![(usize::MAX - 3, 0x0201_0000, 0xFFFF_0000)]);
    }

    #[test]
    fn split_read_assembles_bytes() {
        let mut buf = [0u8; 6];
        split_read(0x2, &mut buf, |a| a as u32 * 0x0101_0101);
        assert_eq!(buf, [0, 0, 4, 4, 4, 4]);
        let mut buf = [0xAAu8; 4];
        split_read(usize::MAX - 1, &mut buf, |_| 0x1122_3344);
        assert_eq!(buf, [0x22, 0x11, 0, 0]);
    }

    #[test]
    fn decoder_count_encoding() {
        assert_eq!(decoder_count_enc(1), Some(0));
        assert_eq!(decoder_count_enc(2), Some(1));
        assert_eq!(decoder_count_enc(10), Some(5));
        assert_eq!(decoder_count_enc(16), Some(8));
        for bad in [0u8, 3, 5, 17, 18, 20, 255] {
            assert_eq!(decoder_count_enc(bad), None);
        }
        for n in 0..=255u8 {
            let c = HdmCaps::endpoint(n).normalized(HdmKind::Endpoint);
            assert!(decoder_count_enc(c.decoders).is_some(), "{n}");
            assert!(c.validate(HdmKind::Endpoint).is_ok());
            let p = HdmCaps::port(n, n).normalized(HdmKind::Port);
            assert!(p.validate(HdmKind::Port).is_ok());
        }
    }
}
