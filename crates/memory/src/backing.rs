//! RAM backings: the one home of guest-visible bytes (guest RAM, device capacity).
//!
//! A backing is a shared mapping of a memfd or a user file. Because it is a file, the same bytes can
//! be mapped again elsewhere (KVM slots, stitched interleave maps) without copying.
//!
//! A *stitched* backing ([`RamBacking::stitched`]) owns no bytes of its own: it is one contiguous
//! host range made of page runs of other backings' files (`cxlvm-stitch`), so that an interleaved
//! CXL range can be given to the guest as one KVM slot while every byte stays in its device's
//! backing.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cxlvm_stitch::{Piece, StitchError, StitchedMap};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, VolatileMemory};

use crate::PAGE_SIZE;

/// Errors creating or accessing a [`RamBacking`].
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    /// Size is zero or not a multiple of the page size.
    #[error("backing '{name}': size {size:#x} must be a non-zero multiple of 4 KiB")]
    BadSize {
        /// Backing name.
        name: String,
        /// Requested size.
        size: u64,
    },
    /// File offset not page aligned.
    #[error("backing '{name}': file offset {offset:#x} is not 4 KiB aligned")]
    BadOffset {
        /// Backing name.
        name: String,
        /// Requested offset.
        offset: u64,
    },
    /// memfd_create failed.
    #[error("backing '{name}': cannot create memfd: {source}")]
    Memfd {
        /// Backing name.
        name: String,
        /// Cause.
        source: memfd::Error,
    },
    /// Sizing or inspecting the file failed.
    #[error("backing '{name}': {what}: {source}")]
    Io {
        /// Backing name.
        name: String,
        /// What was attempted.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is smaller than the range asked for.
    #[error("backing '{name}': file holds {have:#x} bytes, need {need:#x}")]
    FileTooSmall {
        /// Backing name.
        name: String,
        /// Bytes the file has.
        have: u64,
        /// Bytes needed (offset + size).
        need: u64,
    },
    /// mmap failed.
    #[error("backing '{name}': cannot map {size:#x} bytes: {source}")]
    Mmap {
        /// Backing name.
        name: String,
        /// Size of the mapping.
        size: u64,
        /// Cause.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// A piece of a stitched backing is empty, unaligned or outside its source backing.
    #[error(
        "stitched backing '{name}': piece {index} ({offset:#x}+{len:#x} of '{source_name}', which \
         holds {source_size:#x} bytes): {problem}"
    )]
    BadPiece {
        /// Name of the stitched backing.
        name: String,
        /// Index of the piece.
        index: usize,
        /// Name of the piece's source backing.
        source_name: String,
        /// Size of the source backing.
        source_size: u64,
        /// Offset of the piece in the source backing.
        offset: u64,
        /// Length of the piece.
        len: u64,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Building the stitched map failed (nothing stays mapped).
    #[error("stitched backing '{name}': {source}")]
    Stitch {
        /// Name of the stitched backing.
        name: String,
        /// Cause; its piece indices are those of the pieces given to [`RamBacking::stitched`].
        source: StitchError,
    },
    /// An access fell (partly) outside the backing.
    #[error(
        "backing '{name}': access of {len} bytes at {offset:#x} is outside its {size:#x} bytes"
    )]
    OutOfBounds {
        /// Backing name.
        name: String,
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: usize,
        /// Size of the backing.
        size: u64,
    },
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A shared, file-backed host mapping that holds guest-visible bytes.
pub struct RamBacking {
    id: u64,
    name: String,
    size: u64,
    mapping: Mapping,
}

/// Where the bytes of a backing are mapped.
enum Mapping {
    /// One shared mapping of `file` from `file_offset`.
    File {
        file: Arc<File>,
        file_offset: u64,
        mmap: MmapRegion,
    },
    /// Page runs of other backings' files stitched into one range.
    Stitched {
        map: StitchedMap,
        /// The file ranges making up the map, in order, with their offsets in the backing
        /// (adjacent runs of one file merged). Used to stitch a stitched backing again.
        segments: Vec<Segment>,
        /// The backings the pieces came from, kept alive (each once) for as long as this one.
        _sources: Vec<Arc<RamBacking>>,
    },
}

/// A file range inside a stitched backing.
#[derive(Clone)]
struct Segment {
    /// Offset of the range in the stitched backing.
    offset: u64,
    file: Arc<File>,
    file_offset: u64,
    len: u64,
}

impl std::fmt::Debug for RamBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("RamBacking");
        d.field("id", &self.id)
            .field("name", &self.name)
            .field("size", &format_args!("{:#x}", self.size));
        match &self.mapping {
            Mapping::File { file_offset, .. } => {
                d.field("file_offset", &format_args!("{file_offset:#x}"))
            }
            Mapping::Stitched { map, segments, .. } => d
                .field("stitched_segments", &segments.len())
                .field("mappings", &map.mappings()),
        };
        d.finish()
    }
}

impl RamBacking {
    /// Creates a sparse memfd of `size` bytes and maps it shared. Nothing is touched: a 1 TiB
    /// backing costs no memory until written.
    pub fn memfd(name: &str, size: u64) -> Result<Arc<Self>, BackingError> {
        check_size(name, size)?;
        let mfd = memfd::MemfdOptions::default()
            .close_on_exec(true)
            .allow_sealing(true)
            .create(name)
            .map_err(|source| BackingError::Memfd {
                name: name.to_owned(),
                source,
            })?;
        let file = mfd.into_file();
        file.set_len(size).map_err(|source| BackingError::Io {
            name: name.to_owned(),
            what: "cannot size memfd",
            source,
        })?;
        Self::map(name, file, 0, size)
    }

    /// Maps `size` bytes of `file` starting at `offset`, shared: writes reach the file.
    pub fn from_file(
        name: &str,
        file: File,
        offset: u64,
        size: u64,
    ) -> Result<Arc<Self>, BackingError> {
        check_size(name, size)?;
        if !offset.is_multiple_of(PAGE_SIZE) {
            return Err(BackingError::BadOffset {
                name: name.to_owned(),
                offset,
            });
        }
        let have = file
            .metadata()
            .map_err(|source| BackingError::Io {
                name: name.to_owned(),
                what: "cannot stat file",
                source,
            })?
            .len();
        let need = offset.saturating_add(size);
        if have < need {
            return Err(BackingError::FileTooSmall {
                name: name.to_owned(),
                have,
                need,
            });
        }
        Self::map(name, file, offset, size)
    }

    fn map(name: &str, file: File, offset: u64, size: u64) -> Result<Arc<Self>, BackingError> {
        let file = Arc::new(file);
        let len = usize::try_from(size).map_err(|_| BackingError::BadSize {
            name: name.to_owned(),
            size,
        })?;
        let mmap = MmapRegion::from_file(FileOffset::from_arc(file.clone(), offset), len).map_err(
            |source| BackingError::Mmap {
                name: name.to_owned(),
                size,
                source,
            },
        )?;
        Ok(Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            size,
            mapping: Mapping::File {
                file,
                file_offset: offset,
                mmap,
            },
        }))
    }

    /// Builds one contiguous backing out of pieces of other backings, in order: piece
    /// `(source, offset, len)` is bytes `offset..offset + len` of `source` (both multiples of
    /// 4 KiB, `len` non-zero). The bytes are not copied: each piece is a shared mapping of the
    /// source's file, so writes through the stitched backing land in the sources and writes to
    /// the sources are seen through it. Adjacent pieces that are contiguous in one file share one
    /// mapping; [`RamBacking::mappings`] tells how many VMAs the result uses. A source may itself
    /// be stitched. The sources are kept alive as long as the stitched backing.
    pub fn stitched(
        name: &str,
        pieces: &[(Arc<RamBacking>, u64, u64)],
    ) -> Result<Arc<Self>, BackingError> {
        if pieces.is_empty() {
            return Err(BackingError::BadSize {
                name: name.to_owned(),
                size: 0,
            });
        }
        // File ranges, and for each the index of the caller's piece it comes from.
        let mut ranges: Vec<(Arc<File>, u64, u64)> = Vec::with_capacity(pieces.len());
        let mut origin: Vec<usize> = Vec::with_capacity(pieces.len());
        let mut sources: Vec<Arc<RamBacking>> = Vec::new();
        for (index, (source, offset, len)) in pieces.iter().enumerate() {
            let (offset, len) = (*offset, *len);
            let bad = |problem| BackingError::BadPiece {
                name: name.to_owned(),
                index,
                source_name: source.name.clone(),
                source_size: source.size,
                offset,
                len,
                problem,
            };
            if len == 0 {
                return Err(bad("length is zero"));
            }
            if !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
                return Err(bad("offset and length must be multiples of 4 KiB"));
            }
            if offset.checked_add(len).is_none_or(|end| end > source.size) {
                return Err(bad("range is outside the source backing"));
            }
            let before = ranges.len();
            source.file_ranges(offset, len, &mut ranges);
            origin.resize(ranges.len(), index);
            debug_assert!(ranges.len() > before);
            if !sources.iter().any(|s| Arc::ptr_eq(s, source)) {
                sources.push(source.clone());
            }
        }

        let stitch_pieces: Vec<Piece<'_>> = ranges
            .iter()
            .map(|(file, file_offset, len)| Piece {
                file,
                file_offset: *file_offset,
                len: *len,
            })
            .collect();
        let map = StitchedMap::new(&stitch_pieces).map_err(|mut source| {
            renumber(&mut source, &origin);
            BackingError::Stitch {
                name: name.to_owned(),
                source,
            }
        })?;
        drop(stitch_pieces);

        let mut segments: Vec<Segment> = Vec::new();
        let mut offset = 0;
        for (file, file_offset, len) in ranges {
            match segments.last_mut() {
                Some(last)
                    if Arc::ptr_eq(&last.file, &file)
                        && last.file_offset + last.len == file_offset =>
                {
                    last.len += len;
                }
                _ => segments.push(Segment {
                    offset,
                    file,
                    file_offset,
                    len,
                }),
            }
            offset += len;
        }
        debug_assert_eq!(offset, map.len() as u64);
        Ok(Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            size: offset,
            mapping: Mapping::Stitched {
                map,
                segments,
                _sources: sources,
            },
        }))
    }

    /// Appends the file ranges holding bytes `offset..offset + len` (inside the backing).
    fn file_ranges(&self, offset: u64, len: u64, out: &mut Vec<(Arc<File>, u64, u64)>) {
        match &self.mapping {
            Mapping::File {
                file, file_offset, ..
            } => out.push((file.clone(), file_offset + offset, len)),
            Mapping::Stitched { segments, .. } => {
                let end = offset + len;
                // First segment that ends after `offset`.
                let first = segments.partition_point(|s| s.offset + s.len <= offset);
                for seg in segments[first..].iter().take_while(|s| s.offset < end) {
                    let from = offset.max(seg.offset);
                    let to = end.min(seg.offset + seg.len);
                    out.push((
                        seg.file.clone(),
                        seg.file_offset + (from - seg.offset),
                        to - from,
                    ));
                }
            }
        }
    }

    /// A process-unique id (stable for the life of the backing).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file holding the bytes (memfd or user file), for mapping it again elsewhere; `None`
    /// for a stitched backing, whose bytes live in several files.
    pub fn file(&self) -> Option<&Arc<File>> {
        match &self.mapping {
            Mapping::File { file, .. } => Some(file),
            Mapping::Stitched { .. } => None,
        }
    }

    /// Offset of byte 0 of the backing inside [`RamBacking::file`] (0 for a stitched backing,
    /// which has no single file).
    pub fn file_offset(&self) -> u64 {
        match &self.mapping {
            Mapping::File { file_offset, .. } => *file_offset,
            Mapping::Stitched { .. } => 0,
        }
    }

    /// Whether the backing was built by [`RamBacking::stitched`].
    pub fn is_stitched(&self) -> bool {
        matches!(self.mapping, Mapping::Stitched { .. })
    }

    /// Number of host mappings (VMAs) the backing uses: 1 for a file backing, the number of
    /// mmaps of the stitched map for a stitched one.
    pub fn mappings(&self) -> usize {
        match &self.mapping {
            Mapping::File { .. } => 1,
            Mapping::Stitched { map, .. } => map.mappings(),
        }
    }

    /// Host virtual address of byte `offset`, or `None` when `offset..offset+len` is outside.
    /// The whole backing is one contiguous host range, stitched or not.
    pub fn host_address(&self, offset: u64, len: u64) -> Option<u64> {
        let end = offset.checked_add(len)?;
        let base = match &self.mapping {
            Mapping::File { mmap, .. } => mmap.as_ptr(),
            Mapping::Stitched { map, .. } => map.as_ptr(),
        };
        (end <= self.size).then(|| base as u64 + offset)
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize, BackingError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(offset as usize),
            _ => Err(BackingError::OutOfBounds {
                name: self.name.clone(),
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Copies bytes out of the backing (aligned 1/2/4/8-byte reads are single accesses).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), BackingError> {
        let off = self.check(offset, buf.len())?;
        match &self.mapping {
            Mapping::File { mmap, .. } => mmap
                .as_volatile_slice()
                .read_slice(buf, off)
                .map_err(|_| self.oob(offset, buf.len())),
            Mapping::Stitched { map, .. } => map
                .read(offset, buf)
                .map_err(|_| self.oob(offset, buf.len())),
        }
    }

    /// Copies bytes into the backing (aligned 1/2/4/8-byte writes are single accesses).
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), BackingError> {
        let off = self.check(offset, buf.len())?;
        match &self.mapping {
            Mapping::File { mmap, .. } => mmap
                .as_volatile_slice()
                .write_slice(buf, off)
                .map_err(|_| self.oob(offset, buf.len())),
            Mapping::Stitched { map, .. } => map
                .write(offset, buf)
                .map_err(|_| self.oob(offset, buf.len())),
        }
    }

    /// Copies `len` bytes at `offset` to `dst` at `dst_offset`: one copy between the two host
    /// mappings (through a bounce buffer when either is stitched).
    pub fn copy_to(
        &self,
        offset: u64,
        dst: &RamBacking,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), BackingError> {
        let n = usize::try_from(len).map_err(|_| self.oob(offset, usize::MAX))?;
        let src_at = self.check(offset, n)?;
        let dst_at = dst.check(dst_offset, n)?;
        if let (Mapping::File { mmap: s, .. }, Mapping::File { mmap: d, .. }) =
            (&self.mapping, &dst.mapping)
        {
            let from = s
                .as_volatile_slice()
                .subslice(src_at, n)
                .map_err(|_| self.oob(offset, n))?;
            let to = d
                .as_volatile_slice()
                .subslice(dst_at, n)
                .map_err(|_| dst.oob(dst_offset, n))?;
            from.copy_to_volatile_slice(to);
            return Ok(());
        }
        let mut buf = vec![0u8; n.min(64 << 10)];
        let mut done = 0;
        while done < len {
            let k = (len - done).min(buf.len() as u64);
            let b = &mut buf[..k as usize];
            self.read(offset + done, b)?;
            dst.write(dst_offset + done, b)?;
            done += k;
        }
        Ok(())
    }

    /// The parts of `[offset, offset + len)` that may hold data, in order, as `(offset, len)`:
    /// the file's data extents (`SEEK_DATA`/`SEEK_HOLE`), page granular, so never-written and
    /// discarded pages are skipped. A stitched backing reports the whole range.
    pub fn data_ranges(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>, BackingError> {
        let end = match offset.checked_add(len) {
            Some(e) if e <= self.size => e,
            _ => return Err(self.oob(offset, usize::try_from(len).unwrap_or(usize::MAX))),
        };
        let (file, base) = match &self.mapping {
            Mapping::File {
                file, file_offset, ..
            } => (file, *file_offset),
            Mapping::Stitched { .. } => return Ok(vec![(offset, len)]),
        };
        let io = |what, source: rustix::io::Errno| BackingError::Io {
            name: self.name.clone(),
            what,
            source: source.into(),
        };
        let mut out = Vec::new();
        let mut at = offset;
        while at < end {
            let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(base + at)) {
                Ok(d) => d - base,
                // No data at or after `at`.
                Err(rustix::io::Errno::NXIO) => break,
                Err(e) => return Err(io("cannot find data (SEEK_DATA)", e)),
            };
            if data >= end {
                break;
            }
            let hole = match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(base + data)) {
                Ok(h) => (h - base).min(end),
                Err(e) => return Err(io("cannot find a hole (SEEK_HOLE)", e)),
            };
            out.push((data, hole - data));
            at = hole;
        }
        Ok(out)
    }

    /// Gives the storage of `[offset, offset + len)` back: whole pages become holes
    /// (`FALLOC_FL_PUNCH_HOLE`), the partial pages at either end are zeroed; reads then return
    /// zeros, as from a fresh backing. Not for stitched backings (their bytes belong to others).
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), BackingError> {
        let end = match offset.checked_add(len) {
            Some(e) if e <= self.size => e,
            _ => return Err(self.oob(offset, usize::try_from(len).unwrap_or(usize::MAX))),
        };
        let Mapping::File {
            file, file_offset, ..
        } = &self.mapping
        else {
            return Err(BackingError::Io {
                name: self.name.clone(),
                what: "cannot discard bytes of a stitched backing",
                source: std::io::ErrorKind::Unsupported.into(),
            });
        };
        let first = offset.next_multiple_of(PAGE_SIZE).min(end);
        let last = (end / PAGE_SIZE * PAGE_SIZE).max(first);
        let zero = vec![0u8; PAGE_SIZE as usize];
        for (a, b) in [(offset, first), (last, end)] {
            if b > a {
                self.write(a, &zero[..(b - a) as usize])?;
            }
        }
        if last > first {
            rustix::fs::fallocate(
                file,
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                file_offset + first,
                last - first,
            )
            .map_err(|e| BackingError::Io {
                name: self.name.clone(),
                what: "cannot discard pages (FALLOC_FL_PUNCH_HOLE)",
                source: e.into(),
            })?;
        }
        Ok(())
    }

    fn oob(&self, offset: u64, len: usize) -> BackingError {
        BackingError::OutOfBounds {
            name: self.name.clone(),
            offset,
            len,
            size: self.size,
        }
    }
}

/// Rewrites the piece index of a stitch error (an index into the expanded file ranges) to the
/// index of the caller's piece it came from.
fn renumber(err: &mut StitchError, origin: &[usize]) {
    match err {
        StitchError::BadLength { index, .. }
        | StitchError::BadOffset { index, .. }
        | StitchError::FileRangeOverflow { index, .. }
        | StitchError::TotalOverflow { index }
        | StitchError::Stat { index, .. }
        | StitchError::BeyondEof { index, .. }
        | StitchError::Map { index, .. } => {
            if let Some(&caller) = origin.get(*index) {
                *index = caller;
            }
        }
        StitchError::Empty | StitchError::Reserve { .. } => {}
    }
}

fn check_size(name: &str, size: u64) -> Result<(), BackingError> {
    if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
        return Err(BackingError::BadSize {
            name: name.to_owned(),
            size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_backing_reads_back_writes_and_bounds_checks() {
        let b = RamBacking::memfd("t", 2 * PAGE_SIZE).unwrap();
        b.write(PAGE_SIZE - 4, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let mut out = [0u8; 8];
        b.read(PAGE_SIZE - 4, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(matches!(
            b.write(2 * PAGE_SIZE - 4, &[0; 8]),
            Err(BackingError::OutOfBounds { .. })
        ));
        assert!(matches!(
            b.read(u64::MAX - 2, &mut out),
            Err(BackingError::OutOfBounds { .. })
        ));
        assert_eq!(b.host_address(2 * PAGE_SIZE, 1), None);
    }

    #[test]
    fn rejects_zero_and_unaligned_sizes() {
        assert!(matches!(
            RamBacking::memfd("z", 0),
            Err(BackingError::BadSize { .. })
        ));
        assert!(matches!(
            RamBacking::memfd("u", 100),
            Err(BackingError::BadSize { .. })
        ));
    }

    #[test]
    fn sparse_terabyte_backing_starts_without_touching_memory() {
        let b = RamBacking::memfd("big", 1 << 40).unwrap();
        b.write((1 << 40) - 8, &[0xaa; 8]).unwrap();
        let mut out = [0u8; 8];
        b.read((1 << 40) - 8, &mut out).unwrap();
        assert_eq!(out, [0xaa; 8]);
    }
}
