//! Stitched maps: one contiguous host virtual range built out of page runs of several files.
//!
//! CXL interleaving spreads consecutive granules of a guest-physical range over several devices.
//! To hand such a range to the guest as one KVM memory slot, cxlvm builds one contiguous host
//! range whose pages are shared mappings of the devices' files: the range is reserved with one
//! anonymous `PROT_NONE` mapping, then each run of pages is mapped over it with
//! `mmap(MAP_SHARED | MAP_FIXED)`. The bytes stay in the files — a write through the stitched map
//! lands in the file, and a write to the file (or through any other mapping of it) is visible
//! through the stitched map.
//!
//! Every `mmap` costs one VMA, and a process has a limited number of them
//! (`vm.max_map_count`, 65530 by default): [`vma_limit`] and [`vmas_in_use`] let the caller derive
//! a budget before stitching, and [`StitchedMap::mappings`] tells what a map costs.
//!
//! This crate holds the only `unsafe` of the stitching path; each block says why it is sound.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vm_memory::{Bytes, VolatileSlice};

#[cfg(test)]
mod tests;

/// Granularity of pieces: file offsets and lengths must be multiples of it.
pub const PAGE_SIZE: u64 = 4096;

/// One run of pages of a file, placed right after the previous piece in the stitched range.
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    /// The file holding the bytes (opened read-write: the map is `PROT_READ | PROT_WRITE`).
    pub file: &'a File,
    /// Offset of the run inside `file` (a multiple of [`PAGE_SIZE`]).
    pub file_offset: u64,
    /// Length of the run (a non-zero multiple of [`PAGE_SIZE`]).
    pub len: u64,
}

/// Errors building a [`StitchedMap`]. Piece indices are indices into the slice given to
/// [`StitchedMap::new`].
#[derive(Debug, thiserror::Error)]
pub enum StitchError {
    /// No pieces were given.
    #[error("nothing to stitch: no pieces")]
    Empty,
    /// A piece length is zero or not page aligned.
    #[error("piece {index}: length {len:#x} must be a non-zero multiple of 4 KiB")]
    BadLength {
        /// Index of the piece.
        index: usize,
        /// Its length.
        len: u64,
    },
    /// A piece file offset is not page aligned.
    #[error("piece {index}: file offset {file_offset:#x} must be a multiple of 4 KiB")]
    BadOffset {
        /// Index of the piece.
        index: usize,
        /// Its file offset.
        file_offset: u64,
    },
    /// `file_offset + len` does not fit a file offset (`off_t`).
    #[error("piece {index}: file range {file_offset:#x}+{len:#x} overflows a file offset")]
    FileRangeOverflow {
        /// Index of the piece.
        index: usize,
        /// Its file offset.
        file_offset: u64,
        /// Its length.
        len: u64,
    },
    /// The sum of the lengths up to this piece does not fit the host address space.
    #[error("piece {index}: total stitched length overflows the host address space")]
    TotalOverflow {
        /// Index of the piece.
        index: usize,
    },
    /// Inspecting a piece's file failed.
    #[error("piece {index}: cannot stat its file: {source}")]
    Stat {
        /// Index of the piece.
        index: usize,
        /// Cause.
        source: io::Error,
    },
    /// A piece of a regular file reaches past the end of the file (accesses would fault).
    #[error(
        "piece {index}: file range {file_offset:#x}..{end:#x} goes past the end of its file \
         ({file_size:#x} bytes)"
    )]
    BeyondEof {
        /// Index of the piece.
        index: usize,
        /// Its file offset.
        file_offset: u64,
        /// End of its file range.
        end: u64,
        /// Size of the file.
        file_size: u64,
    },
    /// Reserving the contiguous host range failed.
    #[error("cannot reserve {len:#x} bytes of host address space: {source}")]
    Reserve {
        /// Total length asked for.
        len: u64,
        /// Cause.
        source: io::Error,
    },
    /// Mapping a run of pieces failed; everything mapped so far was unmapped.
    #[error(
        "piece {index}: mmap #{mapping} ({len:#x} bytes of file offset {file_offset:#x} at \
         stitched offset {offset:#x}) failed: {source}{hint}"
    )]
    Map {
        /// Index of the first piece of the failed run (adjacent pieces are merged into one mmap).
        index: usize,
        /// Number of the failed mmap (0-based; the earlier ones succeeded).
        mapping: usize,
        /// Offset of the run inside the stitched range.
        offset: u64,
        /// Offset of the run inside its file.
        file_offset: u64,
        /// Length of the run.
        len: u64,
        /// errno of the failed mmap.
        source: io::Error,
        /// Explanation of a likely cause (empty when there is none to add).
        hint: String,
    },
}

/// An access outside a [`StitchedMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("access of {len} bytes at {offset:#x} is outside the stitched map's {size:#x} bytes")]
pub struct OutOfBounds {
    /// Offset of the access.
    pub offset: u64,
    /// Length of the access.
    pub len: usize,
    /// Size of the map.
    pub size: u64,
}

/// A run of consecutive pieces of one file with contiguous offsets: one mmap.
#[derive(Clone, Copy, Debug)]
struct Run {
    first_piece: usize,
    fd: RawFd,
    file_offset: u64,
    offset: u64,
    len: u64,
}

/// One contiguous host virtual range whose pages are shared mappings of pieces of files.
///
/// The map owns its address range and unmaps it on drop. It does not keep the files open: a
/// shared mapping holds its own reference to the file, so the bytes stay reachable through the
/// map even after the `File`s are closed.
pub struct StitchedMap {
    base: *mut u8,
    len: usize,
    mappings: usize,
}

impl std::fmt::Debug for StitchedMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StitchedMap")
            .field("base", &self.base)
            .field("len", &format_args!("{:#x}", self.len))
            .field("mappings", &self.mappings)
            .finish()
    }
}

// SAFETY: `StitchedMap` exclusively owns its address range (it reserved it and is the only one
// that unmaps it, in `Drop`); the raw pointer is only an address, not a borrow of thread-local
// data. The memory is a shared file mapping that may be accessed from any thread, and the map
// itself only ever touches it with volatile copies (`read`/`write`), the same discipline the
// guest, KVM and other mappings of the same files follow. Moving the owner to another thread
// therefore cannot invalidate anything.
unsafe impl Send for StitchedMap {}
// SAFETY: all methods take `&self` and either return plain values (`as_ptr`, `len`, `mappings`)
// or perform bounds-checked volatile copies into/out of the mapping; no `&`/`&mut` reference to
// the mapped bytes is ever created, so concurrent use from several threads creates no aliasing
// references. Concurrent accesses to the same bytes behave like concurrent guest accesses to
// shared memory (as with `vm_memory::MmapRegion`, which is `Sync` for the same reason).
unsafe impl Sync for StitchedMap {}

impl StitchedMap {
    /// Reserves one contiguous range of the pieces' total length and maps each piece into it, in
    /// order. Adjacent pieces of the same file descriptor with contiguous file offsets are merged
    /// into one mmap first. On failure nothing stays mapped.
    pub fn new(pieces: &[Piece<'_>]) -> Result<StitchedMap, StitchError> {
        let (runs, total) = plan(pieces)?;
        let len = usize::try_from(total).map_err(|_| StitchError::TotalOverflow {
            index: pieces.len() - 1,
        })?;

        // SAFETY: a fresh anonymous mapping with a null hint chooses a range nobody else uses;
        // it touches no existing memory. The result is checked against MAP_FAILED below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(StitchError::Reserve {
                len: total,
                source: io::Error::last_os_error(),
            });
        }
        // From here on, dropping `map` unmaps the whole range, also on the error path.
        let mut map = StitchedMap {
            base: base.cast::<u8>(),
            len,
            mappings: 0,
        };

        for (mapping, run) in runs.iter().enumerate() {
            // Both fit: `run.offset + run.len <= total == len` and `file_offset + len <= i64::MAX`
            // were checked by `plan`.
            let at = run.offset as usize;
            let run_len = run.len as usize;
            let file_offset = run.file_offset as libc::off_t;
            // SAFETY: `map.base + at .. + run_len` lies inside the range reserved above
            // (`plan` guarantees `run.offset + run.len <= total`), which this `StitchedMap` owns
            // exclusively, and no reference into it exists yet; MAP_FIXED therefore only
            // replaces our own reservation (or nothing else). `run.fd` is the descriptor of a
            // `&File` the caller keeps open for the duration of this call. The result is
            // checked against MAP_FAILED below.
            let got = unsafe {
                libc::mmap(
                    map.base.add(at).cast::<libc::c_void>(),
                    run_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    run.fd,
                    file_offset,
                )
            };
            if got == libc::MAP_FAILED {
                let source = io::Error::last_os_error();
                // Unmap everything (mapped pieces and what is left of the reservation) before
                // looking at the VMA numbers, so that they describe the state the caller sees.
                drop(map);
                let hint = if source.raw_os_error() == Some(libc::ENOMEM) {
                    enomem_hint(runs.len())
                } else {
                    String::new()
                };
                return Err(StitchError::Map {
                    index: run.first_piece,
                    mapping,
                    offset: run.offset,
                    file_offset: run.file_offset,
                    len: run.len,
                    source,
                    hint,
                });
            }
            debug_assert_eq!(got.cast::<u8>(), map.base.wrapping_add(at));
            map.mappings += 1;
        }
        Ok(map)
    }

    /// Host virtual address of byte 0. Whoever dereferences it must use volatile accesses and
    /// stay within [`StitchedMap::len`] bytes while the map is alive.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base
    }

    /// Length in bytes (the sum of the pieces' lengths).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a stitched map is never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of mmaps performed, which is the number of VMAs the map uses (pieces merged by
    /// [`StitchedMap::new`] count once).
    pub fn mappings(&self) -> usize {
        self.mappings
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize, OutOfBounds> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len as u64 => Ok(offset as usize),
            _ => Err(OutOfBounds {
                offset,
                len,
                size: self.len as u64,
            }),
        }
    }

    fn volatile(&self) -> VolatileSlice<'_> {
        // SAFETY: `base .. base + len` is mapped read-write for as long as `self` lives (only
        // `Drop` unmaps it), and the returned slice borrows `self`, so it cannot outlive the
        // mapping. All users of these bytes (this map, other mappings of the files, the guest)
        // access them with volatile or hardware accesses; no Rust reference to them exists.
        unsafe { VolatileSlice::new(self.base, self.len) }
    }

    /// Copies `buf.len()` bytes at `offset` out of the map. Aligned 1/2/4/8-byte reads are single
    /// accesses (as with `vm_memory::VolatileSlice`).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        let at = self.check(offset, buf.len())?;
        self.volatile()
            .read_slice(buf, at)
            .map_err(|_| self.oob(offset, buf.len()))
    }

    /// Copies `buf` into the map at `offset`; the bytes land in the pieces' files. Aligned
    /// 1/2/4/8-byte writes are single accesses.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), OutOfBounds> {
        let at = self.check(offset, buf.len())?;
        self.volatile()
            .write_slice(buf, at)
            .map_err(|_| self.oob(offset, buf.len()))
    }

    fn oob(&self, offset: u64, len: usize) -> OutOfBounds {
        OutOfBounds {
            offset,
            len,
            size: self.len as u64,
        }
    }
}

impl Drop for StitchedMap {
    fn drop(&mut self) {
        // SAFETY: `base .. base + len` is the range this map reserved and exclusively owns; no
        // borrow of it can outlive `self` (`volatile` borrows `self`), and raw pointers from
        // `as_ptr` are documented to be valid only while the map lives.
        let rc = unsafe { libc::munmap(self.base.cast::<libc::c_void>(), self.len) };
        debug_assert_eq!(rc, 0, "munmap of a stitched map failed");
    }
}

/// Validates the pieces and merges them into runs (one mmap each). Returns the runs and the
/// total length.
fn plan(pieces: &[Piece<'_>]) -> Result<(Vec<Run>, u64), StitchError> {
    if pieces.is_empty() {
        return Err(StitchError::Empty);
    }
    // Sizes of the regular files seen so far, by descriptor (pieces come from a few files).
    let mut sizes: Vec<(RawFd, Option<u64>)> = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    let mut total: u64 = 0;
    for (index, piece) in pieces.iter().enumerate() {
        let Piece {
            file,
            file_offset,
            len,
        } = *piece;
        if len == 0 || !len.is_multiple_of(PAGE_SIZE) {
            return Err(StitchError::BadLength { index, len });
        }
        if !file_offset.is_multiple_of(PAGE_SIZE) {
            return Err(StitchError::BadOffset { index, file_offset });
        }
        let end = file_offset
            .checked_add(len)
            .filter(|&end| end <= i64::MAX as u64)
            .ok_or(StitchError::FileRangeOverflow {
                index,
                file_offset,
                len,
            })?;
        let offset = total;
        total = total
            .checked_add(len)
            .filter(|&t| usize::try_from(t).is_ok() && t <= isize::MAX as u64)
            .ok_or(StitchError::TotalOverflow { index })?;

        let fd = file.as_raw_fd();
        let size = match sizes.iter().find(|(f, _)| *f == fd) {
            Some(&(_, size)) => size,
            None => {
                let meta = file
                    .metadata()
                    .map_err(|source| StitchError::Stat { index, source })?;
                // Only regular files have a meaningful length; device files (e.g. DAX) report 0.
                let size = meta.file_type().is_file().then_some(meta.len());
                sizes.push((fd, size));
                size
            }
        };
        if let Some(file_size) = size
            && end > file_size
        {
            return Err(StitchError::BeyondEof {
                index,
                file_offset,
                end,
                file_size,
            });
        }

        match runs.last_mut() {
            Some(run) if run.fd == fd && run.file_offset + run.len == file_offset => {
                run.len += len;
            }
            _ => runs.push(Run {
                first_piece: index,
                fd,
                file_offset,
                offset,
                len,
            }),
        }
    }
    Ok((runs, total))
}

fn enomem_hint(needed: usize) -> String {
    let limit = vma_limit().map_or_else(|| "unknown".to_owned(), |l| l.to_string());
    let in_use = vmas_in_use().map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    format!(
        " (ENOMEM here most likely means the process ran out of VMAs: the map needs {needed} \
         mmaps, vm.max_map_count is {limit} and {in_use} are in use; use fewer, larger pieces \
         (coarser interleave granules) or raise vm.max_map_count)"
    )
}

/// The per-process VMA limit (`/proc/sys/vm/max_map_count`), if readable.
pub fn vma_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The number of VMAs this process uses now (lines of `/proc/self/maps`), if readable.
pub fn vmas_in_use() -> Option<u64> {
    let maps = std::fs::read("/proc/self/maps").ok()?;
    Some(maps.iter().filter(|&&b| b == b'\n').count() as u64)
}
