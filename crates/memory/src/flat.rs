//! Flat views: the rendered, immutable form of an address space.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::{MmioHandler, RamBacking, RegionId};

/// What a flat range resolves to.
#[derive(Clone)]
pub enum FlatTarget {
    /// Guest-visible bytes at `offset` in `backing` (the start of the range).
    Ram {
        /// The backing holding the bytes.
        backing: Arc<RamBacking>,
        /// Offset in the backing of the range's first byte.
        offset: u64,
        /// Guest writes must not reach the bytes.
        readonly: bool,
    },
    /// An MMIO handler; `offset` is the offset, inside the MMIO region, of the range's first byte.
    Mmio {
        /// The handler.
        handler: Arc<dyn MmioHandler>,
        /// Offset in the MMIO region of the range's first byte.
        offset: u64,
    },
}

impl std::fmt::Debug for FlatTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlatTarget::Ram {
                backing,
                offset,
                readonly,
            } => write!(
                f,
                "ram {}+{offset:#x}{}",
                backing.name(),
                if *readonly { " ro" } else { "" }
            ),
            FlatTarget::Mmio { offset, .. } => write!(f, "mmio +{offset:#x}"),
        }
    }
}

impl PartialEq for FlatTarget {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                FlatTarget::Ram {
                    backing: a,
                    offset: ao,
                    readonly: ar,
                },
                FlatTarget::Ram {
                    backing: b,
                    offset: bo,
                    readonly: br,
                },
            ) => Arc::ptr_eq(a, b) && ao == bo && ar == br,
            (
                FlatTarget::Mmio {
                    handler: a,
                    offset: ao,
                },
                FlatTarget::Mmio {
                    handler: b,
                    offset: bo,
                },
            ) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)) && ao == bo,
            _ => false,
        }
    }
}

/// One range of a flat view: `[start, start + len)` in the address space.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatRange {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes (never zero).
    pub len: u64,
    /// The leaf region (RAM or MMIO) that provides the bytes.
    pub region: RegionId,
    /// Name of that leaf region (for logs and dumps).
    pub name: Arc<str>,
    /// What the range resolves to.
    pub target: FlatTarget,
}

impl FlatRange {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// Whether the range is RAM (KVM can map it).
    pub fn is_ram(&self) -> bool {
        matches!(self.target, FlatTarget::Ram { .. })
    }

    /// Whether `other` maps the same addresses the same way: same start, length, region and
    /// target (the name is ignored). This is the identity [`FlatDiff`] uses.
    pub fn same_mapping(&self, other: &FlatRange) -> bool {
        self.start == other.start
            && self.len == other.len
            && self.region == other.region
            && self.target == other.target
    }
}

/// Result of [`FlatView::read`] / [`FlatView::write`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessOutcome {
    /// Bytes served from RAM backings.
    pub ram_bytes: usize,
    /// Bytes dispatched to MMIO handlers.
    pub mmio_bytes: usize,
    /// Bytes that hit no range (reads return 0xff, writes are dropped).
    pub unassigned_bytes: usize,
}

/// An immutable rendering of an address space: sorted, non-overlapping ranges.
#[derive(Clone, Debug, Default)]
pub struct FlatView {
    pub(crate) ranges: Vec<FlatRange>,
    pub(crate) generation: u64,
}

impl FlatView {
    /// Builds a view from ranges that are already sorted and non-overlapping.
    pub(crate) fn from_sorted(ranges: Vec<FlatRange>, generation: u64) -> Self {
        debug_assert!(ranges.windows(2).all(|w| w[0].end() <= w[1].start));
        Self { ranges, generation }
    }

    /// The ranges, sorted by start.
    pub fn ranges(&self) -> &[FlatRange] {
        &self.ranges
    }

    /// Commit number that produced this view (0 for the empty initial view).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The range containing `addr`, if any.
    pub fn lookup(&self, addr: u64) -> Option<&FlatRange> {
        let idx = self.ranges.partition_point(|r| r.start <= addr);
        let r = self.ranges.get(idx.checked_sub(1)?)?;
        (addr < r.end()).then_some(r)
    }

    /// Reads `data.len()` bytes at `addr` the way a CPU access would: RAM ranges from their
    /// backing, MMIO ranges through their handler, holes as all-ones. An access that straddles
    /// ranges is split at the boundaries (MMIO pieces whose size is not 1, 2, 4 or 8 are issued
    /// byte by byte).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> AccessOutcome {
        self.pieces(addr, data.len(), |range, off, span| {
            let buf = &mut data[span];
            match range.map(|r| &r.target) {
                Some(FlatTarget::Ram {
                    backing, offset, ..
                }) => {
                    if backing.read(offset + off, buf).is_err() {
                        buf.fill(0xff);
                    }
                }
                Some(FlatTarget::Mmio { handler, offset }) => {
                    for_each_mmio_chunk(buf.len(), |s, l| {
                        handler.read(offset + off + s as u64, &mut buf[s..s + l])
                    });
                }
                None => buf.fill(0xff),
            }
        })
    }

    /// Writes `data` at `addr`; see [`FlatView::read`]. Writes to read-only RAM and to holes are
    /// dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> AccessOutcome {
        self.pieces(addr, data.len(), |range, off, span| {
            let buf = &data[span];
            match range.map(|r| &r.target) {
                Some(FlatTarget::Ram {
                    backing,
                    offset,
                    readonly: false,
                }) => {
                    // Bounds are guaranteed by rendering; a failure drops the write.
                    let _ = backing.write(offset + off, buf);
                }
                // Writes to read-only RAM are dropped.
                Some(FlatTarget::Ram { readonly: true, .. }) => {}
                Some(FlatTarget::Mmio { handler, offset }) => {
                    for_each_mmio_chunk(buf.len(), |s, l| {
                        handler.write(offset + off + s as u64, &buf[s..s + l])
                    });
                }
                None => {}
            }
        })
    }

    /// Splits an access of `len` bytes at `addr` at range boundaries and calls `f` with each
    /// piece's range (None for a hole), its offset inside that range and its span in the buffer.
    fn pieces(
        &self,
        addr: u64,
        len: usize,
        mut f: impl FnMut(Option<&FlatRange>, u64, std::ops::Range<usize>),
    ) -> AccessOutcome {
        let mut out = AccessOutcome::default();
        let mut done = 0usize;
        while done < len {
            let a = addr.wrapping_add(done as u64);
            let (piece, range) = self.piece(a, len - done);
            f(range, range.map_or(0, |r| a - r.start), done..done + piece);
            match range {
                Some(r) if r.is_ram() => out.ram_bytes += piece,
                Some(_) => out.mmio_bytes += piece,
                None => out.unassigned_bytes += piece,
            }
            done += piece;
        }
        out
    }

    /// The longest piece starting at `addr` (at most `len` bytes) that lies in one range or one hole.
    fn piece(&self, addr: u64, len: usize) -> (usize, Option<&FlatRange>) {
        let len64 = len as u64;
        match self.lookup(addr) {
            Some(r) => ((r.end() - addr).min(len64) as usize, Some(r)),
            None => {
                let next = self
                    .ranges
                    .get(self.ranges.partition_point(|r| r.start <= addr))
                    .map_or(u64::MAX, |r| r.start);
                ((next - addr).min(len64).max(1) as usize, None)
            }
        }
    }
}

impl std::fmt::Display for FlatView {
    /// One line per range: `[start, end) name target`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.ranges {
            let end = u128::from(r.start) + u128::from(r.len);
            writeln!(
                f,
                "[{:#018x}, {:#018x}) {} {:?}",
                r.start, end, r.name, r.target
            )?;
        }
        Ok(())
    }
}

/// Splits an MMIO access of `len` bytes into handler-sized chunks: the whole access when it is 1,
/// 2, 4 or 8 bytes, single bytes otherwise.
fn for_each_mmio_chunk(len: usize, mut f: impl FnMut(usize, usize)) {
    if matches!(len, 1 | 2 | 4 | 8) {
        f(0, len);
    } else {
        for i in 0..len {
            f(i, 1);
        }
    }
}

/// The difference between two flat views, handed to listeners on commit.
///
/// A range is "unchanged" when the same start, length, region and target appear in both views;
/// every other range of the old view is in `removed` and every other range of the new view in
/// `added` (both sorted by start). A range that changed in place shows up in both lists.
#[derive(Clone, Debug, Default)]
pub struct FlatDiff {
    /// Ranges of the old view that are not in the new one.
    pub removed: Vec<FlatRange>,
    /// Ranges of the new view that are not in the old one.
    pub added: Vec<FlatRange>,
}

impl FlatDiff {
    /// Computes the difference `old → new`.
    pub fn between(old: &FlatView, new: &FlatView) -> Self {
        let (a, b) = (old.ranges(), new.ranges());
        let mut diff = FlatDiff::default();
        let (mut i, mut j) = (0, 0);
        // Both lists are sorted and non-overlapping, so at most one range of each list starts at a
        // given address: a linear walk pairs every range with its only possible twin.
        while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
            match x.start.cmp(&y.start) {
                std::cmp::Ordering::Less => {
                    diff.removed.push(x.clone());
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    diff.added.push(y.clone());
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if !x.same_mapping(y) {
                        diff.removed.push(x.clone());
                        diff.added.push(y.clone());
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        diff.removed
            .extend_from_slice(a.get(i..).unwrap_or_default());
        diff.added.extend_from_slice(b.get(j..).unwrap_or_default());
        diff
    }

    /// The diff that undoes this one (`new → old`): `removed` and `added` swapped.
    pub fn reversed(&self) -> Self {
        Self {
            removed: self.added.clone(),
            added: self.removed.clone(),
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }
}

/// A cloneable, lock-free handle to the current flat view, for vCPU threads.
#[derive(Clone)]
pub struct FlatViewHandle(pub(crate) Arc<ArcSwap<FlatView>>);

impl FlatViewHandle {
    /// The current view (a cheap reference-counted snapshot; no lock taken).
    pub fn load(&self) -> Arc<FlatView> {
        self.0.load_full()
    }

    /// Runs `f` on the current view without cloning the `Arc`.
    pub fn with<R>(&self, f: impl FnOnce(&FlatView) -> R) -> R {
        f(&self.0.load())
    }
}
