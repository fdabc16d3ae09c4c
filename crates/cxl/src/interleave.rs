//! Interleave encodings and the address maths of CXL interleaving (pure functions).
//!
//! # Encodings
//!
//! HDM decoder Control (IW/IG fields) and the CFMWS (ENIW/HBIG fields) share one encoding:
//!
//! | ways | encoded (eIW) | | granularity | encoded (eIG) |
//! |---|---|---|---|---|
//! | 1 | 0 | | 256 B | 0 |
//! | 2 | 1 | | 512 B | 1 |
//! | 4 | 2 | | 1 KiB | 2 |
//! | 8 | 3 | | 2 KiB | 3 |
//! | 16 | 4 | | 4 KiB | 4 |
//! | 3 | 8 | | 8 KiB | 5 |
//! | 6 | 9 | | 16 KiB | 6 |
//! | 12 | 10 | | | |
//!
//! Every other encoding is invalid; the `from_*` constructors return `None` for them.
//!
//! # Modulo arithmetic
//!
//! All functions work on an *offset* `off` from the base of the decoder (or window) doing the
//! interleave. The range is cut into granules of `gran` bytes and granule `c = off / gran` goes to
//! position `c mod ways`. A device therefore owns every `ways`-th granule, and its share of the
//! range is made dense by [`device_offset`]:
//!
//! ```text
//! device_offset = (off / (gran * ways)) * gran + off % gran
//! ```
//!
//! For power-of-2 ways this deletes the `log2(ways)` way-selection bits that start at bit
//! `log2(gran)`. For 3, 6 and 12 ways the CXL specification phrases the rule as "strip the
//! power-of-2 selection bits, then divide the remaining granule index by 3"; that is the same
//! number, since `floor(floor(c / 2^k) / 3) = floor(c / (3 * 2^k))`. The test suite checks the
//! equivalence against the bit formula for every encoding.
//!
//! The origin of `off` matters for 3/6/12 ways: a 256 MiB aligned base is a multiple of `gran *
//! ways` only when `ways` is a power of 2, so callers must use the same origin (the decoder's
//! base) as the component that computes the position.
//!
//! # Multi-level interleaving (how Linux programs a region)
//!
//! A region of `W` ways at granularity `G` spread over host bridges and root ports is decoded at
//! three levels, each with its own modulo rule:
//!
//! 1. the fixed window (root decoder, CFMWS) selects the host bridge with `W_root` ways at the
//!    window's granularity, which Linux requires to equal `G` when host bridges are interleaved;
//! 2. each host-bridge (or switch) decoder selects a root port with `W_hb` ways at granularity
//!    `G * pow2(W_root)`, where `pow2(n)` is the power-of-2 factor of `n` (Linux: "HB IG = region
//!    IG × root ways", using only the power-of-2 part of a 3/6/12-way root for address-bit
//!    routing); see [`child_granularity`];
//! 3. every endpoint decoder is programmed with the region's own ways `W = W_root * W_hb` and
//!    granularity `G`, and converts an HPA to a DPA with [`device_offset`].
//!
//! The endpoint's position in the region (the order Linux uses for its target list) follows from
//! its host-bridge and root-port positions; [`endpoint_position`] computes it.
//!
//! # XOR arithmetic
//!
//! A CFMWS with "Interleave Arithmetic" 1 and a CXIMS structure selects the host bridge with XOR
//! maps: for power-of-2 ways, bit `i` of the position is the parity of `HPA & xormap[i]`. This
//! applies only at window (host bridge selection) level; decoders below always use modulo. See
//! [`xor_position`].

/// Number of interleave ways of a decoder or window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ways {
    /// 1 way (no interleave), eIW 0.
    X1,
    /// 2 ways, eIW 1.
    X2,
    /// 4 ways, eIW 2.
    X4,
    /// 8 ways, eIW 3.
    X8,
    /// 16 ways, eIW 4.
    X16,
    /// 3 ways, eIW 8.
    X3,
    /// 6 ways, eIW 9.
    X6,
    /// 12 ways, eIW 10.
    X12,
}

impl Ways {
    /// Every valid ways value, in encoding order.
    pub const ALL: [Ways; 8] = [
        Ways::X1,
        Ways::X2,
        Ways::X4,
        Ways::X8,
        Ways::X16,
        Ways::X3,
        Ways::X6,
        Ways::X12,
    ];

    /// The ways value for a count of targets (1, 2, 3, 4, 6, 8, 12 or 16).
    pub fn from_count(count: u32) -> Option<Ways> {
        Some(match count {
            1 => Ways::X1,
            2 => Ways::X2,
            4 => Ways::X4,
            8 => Ways::X8,
            16 => Ways::X16,
            3 => Ways::X3,
            6 => Ways::X6,
            12 => Ways::X12,
            _ => return None,
        })
    }

    /// Decodes an eIW field value (0–4, 8–10).
    pub fn from_enc(eiw: u8) -> Option<Ways> {
        Some(match eiw {
            0 => Ways::X1,
            1 => Ways::X2,
            2 => Ways::X4,
            3 => Ways::X8,
            4 => Ways::X16,
            8 => Ways::X3,
            9 => Ways::X6,
            10 => Ways::X12,
            _ => return None,
        })
    }

    /// Number of targets.
    pub fn count(self) -> u32 {
        match self {
            Ways::X1 => 1,
            Ways::X2 => 2,
            Ways::X4 => 4,
            Ways::X8 => 8,
            Ways::X16 => 16,
            Ways::X3 => 3,
            Ways::X6 => 6,
            Ways::X12 => 12,
        }
    }

    /// The eIW encoding.
    pub fn enc(self) -> u8 {
        match self {
            Ways::X1 => 0,
            Ways::X2 => 1,
            Ways::X4 => 2,
            Ways::X8 => 3,
            Ways::X16 => 4,
            Ways::X3 => 8,
            Ways::X6 => 9,
            Ways::X12 => 10,
        }
    }

    /// Whether the count is a power of 2 (1, 2, 4, 8, 16).
    pub fn is_pow2(self) -> bool {
        self.enc() < 8
    }

    /// log2 of the power-of-2 factor of the count: the number of address bits that select part of
    /// the position (1→0, 2→1, 4→2, 8→3, 16→4, 3→0, 6→1, 12→2).
    pub fn pow2_bits(self) -> u32 {
        u32::from(self.enc() & 0x7)
    }

    /// The power-of-2 factor of the count (3→1, 6→2, 12→4; the count itself otherwise).
    pub fn pow2_factor(self) -> u32 {
        1 << self.pow2_bits()
    }
}

/// Interleave granularity: the number of consecutive bytes sent to one target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    /// 256 bytes, eIG 0.
    B256,
    /// 512 bytes, eIG 1.
    B512,
    /// 1 KiB, eIG 2.
    K1,
    /// 2 KiB, eIG 3.
    K2,
    /// 4 KiB, eIG 4.
    K4,
    /// 8 KiB, eIG 5.
    K8,
    /// 16 KiB, eIG 6.
    K16,
}

impl Granularity {
    /// Every valid granularity, in encoding order.
    pub const ALL: [Granularity; 7] = [
        Granularity::B256,
        Granularity::B512,
        Granularity::K1,
        Granularity::K2,
        Granularity::K4,
        Granularity::K8,
        Granularity::K16,
    ];

    /// The granularity of `bytes` (a power of 2 from 256 to 16384).
    pub fn from_bytes(bytes: u64) -> Option<Granularity> {
        if !bytes.is_power_of_two() || bytes < 256 {
            return None;
        }
        let enc = bytes.trailing_zeros().checked_sub(8)?;
        Granularity::from_enc(u8::try_from(enc).ok()?)
    }

    /// Decodes an eIG field value (0–6).
    pub fn from_enc(eig: u8) -> Option<Granularity> {
        Granularity::ALL.get(usize::from(eig)).copied()
    }

    /// Size in bytes (`256 << eIG`).
    pub fn bytes(self) -> u64 {
        256 << self.enc()
    }

    /// The eIG encoding.
    pub fn enc(self) -> u8 {
        match self {
            Granularity::B256 => 0,
            Granularity::B512 => 1,
            Granularity::K1 => 2,
            Granularity::K2 => 3,
            Granularity::K4 => 4,
            Granularity::K8 => 5,
            Granularity::K16 => 6,
        }
    }

    /// log2 of the size (`8 + eIG`): the lowest address bit that selects the position.
    pub fn shift(self) -> u32 {
        8 + u32::from(self.enc())
    }
}

/// Position (0..ways) of the target that owns offset `off`: `(off / gran) % ways`.
pub fn position(off: u64, ways: Ways, gran: Granularity) -> u32 {
    // The remainder is < ways <= 16, so the narrowing is exact.
    ((off >> gran.shift()) % u64::from(ways.count())) as u32
}

/// Offset of `off` inside the share of its target (the target's "device offset"):
/// `(off / (gran * ways)) * gran + off % gran`.
///
/// This removes the way-selection bits for power-of-2 ways and equals the CXL specification's
/// divide-by-3 rule for 3, 6 and 12 ways. Never overflows: the result is at most `off`.
pub fn device_offset(off: u64, ways: Ways, gran: Granularity) -> u64 {
    let g = gran.bytes();
    let stride = g * u64::from(ways.count()); // <= 16 KiB * 16, no overflow
    (off / stride) * g + off % g
}

/// Inverse of ([`device_offset`], [`position`]): the offset from the interleave base of byte
/// `dev_off` of the target at `position`.
///
/// A `position >= ways` is reduced modulo `ways`; a result beyond `u64::MAX` wraps. Use
/// [`checked_host_offset`] to have both reported instead.
pub fn host_offset(dev_off: u64, position: u32, ways: Ways, gran: Granularity) -> u64 {
    let g = gran.bytes();
    let w = u64::from(ways.count());
    let pos = u64::from(position) % w;
    (dev_off / g)
        .wrapping_mul(g * w)
        .wrapping_add(pos * g)
        .wrapping_add(dev_off % g)
}

/// [`host_offset`] that returns `None` when `position >= ways` or the result overflows `u64`.
pub fn checked_host_offset(
    dev_off: u64,
    position: u32,
    ways: Ways,
    gran: Granularity,
) -> Option<u64> {
    if position >= ways.count() {
        return None;
    }
    let g = gran.bytes();
    let w = u64::from(ways.count());
    (dev_off / g)
        .checked_mul(g * w)?
        .checked_add(u64::from(position) * g)?
        .checked_add(dev_off % g)
}

/// The inclusive range of address bits that select (the power-of-2 part of) the position, or
/// `None` when no bit does (1 and 3 ways).
///
/// For power-of-2 ways these are bits `shift .. shift + log2(ways) - 1`; for 3/6/12 ways only the
/// power-of-2 factor uses dedicated bits (the factor 3 is a modulo over all higher bits), which is
/// how the decoder interleave capability bits are interpreted.
pub fn selection_bits(ways: Ways, gran: Granularity) -> Option<(u32, u32)> {
    let n = ways.pow2_bits();
    if n == 0 {
        return None;
    }
    let low = gran.shift();
    Some((low, low + n - 1))
}

/// Granularity a decoder one level below must use for a region interleaved at `parent_gran`
/// across `parent_ways` targets: `parent_gran * pow2(parent_ways)` (Linux's rule; for a 3/6/12-way
/// parent only the power-of-2 factor is used, the factor 3 is resolved by the modulo).
///
/// `None` if the product exceeds 16 KiB.
pub fn child_granularity(parent_gran: Granularity, parent_ways: Ways) -> Option<Granularity> {
    let enc = u32::from(parent_gran.enc()) + parent_ways.pow2_bits();
    Granularity::from_enc(u8::try_from(enc).ok()?)
}

/// Position of an endpoint inside a two-level region, from its host bridge's position at the
/// window (`root_pos` of `root_ways`) and its root port's position at the host-bridge decoder
/// (`hb_pos` of `hb_ways`, decoded at [`child_granularity`] of the region granularity).
///
/// The result `p` (in `0 .. root_ways * hb_ways`) is the one position whose granules reach this
/// endpoint: `p % root_ways == root_pos` and `(p / pow2(root_ways)) % hb_ways == hb_pos`. For a
/// power-of-2 root that is simply `root_pos + root_ways * hb_pos`. Endpoint decoders use the
/// region ways `root_ways * hb_ways` (which must be a valid [`Ways`]) and the region granularity.
///
/// `None` if a position is out of range, the product is not a valid ways value, or the two
/// levels do not determine a unique position.
pub fn endpoint_position(
    root_pos: u32,
    root_ways: Ways,
    hb_pos: u32,
    hb_ways: Ways,
) -> Option<u32> {
    if root_pos >= root_ways.count() || hb_pos >= hb_ways.count() {
        return None;
    }
    let region = Ways::from_count(root_ways.count() * hb_ways.count())?;
    let mut found = None;
    for p in 0..region.count() {
        if p % root_ways.count() == root_pos
            && (p >> root_ways.pow2_bits()) % hb_ways.count() == hb_pos
        {
            if found.is_some() {
                return None;
            }
            found = Some(p);
        }
    }
    found
}

/// XOR maps cxlvm publishes for a window of `ways` (power of 2) at granularity encoding `g`
/// (docs/guest-abi.md).
pub fn xormaps(ways: Ways, gran: Granularity) -> Vec<u64> {
    let k = ways.pow2_bits();
    let g = u32::from(gran.enc());
    (0..k)
        .map(|i| 1u64 << (8 + g + i) | 1u64 << (8 + g + k + 12 + i))
        .collect()
}

/// Window-level XOR interleave arithmetic: bit `i` of the position is the parity of
/// `hpa & xormaps[i]`, for `i` in `0 .. log2(ways)`.
///
/// Only power-of-2 ways are supported (`None` for 3/6/12); `None` also when fewer than
/// `log2(ways)` maps are given. Extra maps are ignored. 1 way always yields position 0.
pub fn xor_position(hpa: u64, ways: Ways, xormaps: &[u64]) -> Option<u32> {
    if !ways.is_pow2() {
        return None;
    }
    let n = ways.pow2_bits() as usize;
    let maps = xormaps.get(..n)?;
    Some(
        maps.iter()
            .enumerate()
            .fold(0, |pos, (i, m)| pos | (((hpa & m).count_ones() & 1) << i)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        for w in Ways::ALL {
            assert_eq!(Ways::from_enc(w.enc()), Some(w));
            assert_eq!(Ways::from_count(w.count()), Some(w));
            assert_eq!(w.pow2_factor() * if w.is_pow2() { 1 } else { 3 }, w.count());
        }
        for g in Granularity::ALL {
            assert_eq!(Granularity::from_enc(g.enc()), Some(g));
            assert_eq!(Granularity::from_bytes(g.bytes()), Some(g));
            assert_eq!(1u64 << g.shift(), g.bytes());
        }
        for e in [5u8, 6, 7, 11, 12, 15, 255] {
            assert_eq!(Ways::from_enc(e), None);
        }
        for c in [0u32, 5, 7, 9, 10, 11, 13, 15, 17, 24, 32, u32::MAX] {
            assert_eq!(Ways::from_count(c), None);
        }
        for e in [7u8, 8, 15, 255] {
            assert_eq!(Granularity::from_enc(e), None);
        }
        for b in [0u64, 1, 128, 255, 257, 384, 32768, u64::MAX, 1 << 63] {
            assert_eq!(Granularity::from_bytes(b), None);
        }
    }

    #[test]
    fn selection_bits_examples() {
        assert_eq!(selection_bits(Ways::X1, Granularity::B256), None);
        assert_eq!(selection_bits(Ways::X3, Granularity::K16), None);
        assert_eq!(selection_bits(Ways::X2, Granularity::B256), Some((8, 8)));
        assert_eq!(selection_bits(Ways::X16, Granularity::K16), Some((14, 17)));
        assert_eq!(selection_bits(Ways::X12, Granularity::K1), Some((10, 11)));
    }

    #[test]
    fn child_granularity_examples() {
        assert_eq!(
            child_granularity(Granularity::B256, Ways::X2),
            Some(Granularity::B512)
        );
        assert_eq!(
            child_granularity(Granularity::B256, Ways::X3),
            Some(Granularity::B256)
        );
        assert_eq!(
            child_granularity(Granularity::K1, Ways::X12),
            Some(Granularity::K4)
        );
        assert_eq!(child_granularity(Granularity::K16, Ways::X2), None);
    }

    #[test]
    fn endpoint_position_examples() {
        // 2 HBs x 2 RPs at 256 B: HB select bit 8, RP select bit 9.
        assert_eq!(endpoint_position(1, Ways::X2, 0, Ways::X2), Some(1));
        assert_eq!(endpoint_position(0, Ways::X2, 1, Ways::X2), Some(2));
        assert_eq!(endpoint_position(1, Ways::X2, 1, Ways::X2), Some(3));
        assert_eq!(endpoint_position(2, Ways::X3, 1, Ways::X2), Some(5));
        assert_eq!(endpoint_position(2, Ways::X2, 0, Ways::X2), None);
        assert_eq!(endpoint_position(0, Ways::X3, 0, Ways::X3), None);
    }

    #[test]
    fn xor_examples() {
        assert_eq!(xor_position(0xdead_beef, Ways::X1, &[]), Some(0));
        assert_eq!(xor_position(0, Ways::X2, &[]), None);
        assert_eq!(xor_position(0, Ways::X3, &[1]), None);
        assert_eq!(xor_position(0x100, Ways::X2, &[0x100]), Some(1));
        assert_eq!(xor_position(0x300, Ways::X2, &[0x300]), Some(0));
        assert_eq!(
            xor_position(0x300, Ways::X4, &[0x100, 0x200, 0xff]),
            Some(3)
        );
    }
}
