//! RAM backings: the one home of guest-visible bytes (guest RAM, device capacity).
//!
//! A backing is a shared mapping of a memfd or a user file. Because it is a file, the same bytes can
//! be mapped again elsewhere (KVM slots, stitched interleave maps) without copying.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
    file: Arc<File>,
    file_offset: u64,
    mmap: MmapRegion,
}

impl std::fmt::Debug for RamBacking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamBacking")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("size", &format_args!("{:#x}", self.size))
            .field("file_offset", &format_args!("{:#x}", self.file_offset))
            .finish()
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
            file,
            file_offset: offset,
            mmap,
        }))
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

    /// The file holding the bytes (memfd or user file), for mapping it again elsewhere.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Offset of byte 0 of the backing inside [`RamBacking::file`].
    pub fn file_offset(&self) -> u64 {
        self.file_offset
    }

    /// Host virtual address of byte `offset`, or `None` when `offset..offset+len` is outside.
    pub fn host_address(&self, offset: u64, len: u64) -> Option<u64> {
        let end = offset.checked_add(len)?;
        (end <= self.size).then(|| self.mmap.as_ptr() as u64 + offset)
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
        self.mmap
            .as_volatile_slice()
            .read_slice(buf, off)
            .map_err(|_| self.oob(offset, buf.len()))
    }

    /// Copies bytes into the backing (aligned 1/2/4/8-byte writes are single accesses).
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), BackingError> {
        let off = self.check(offset, buf.len())?;
        self.mmap
            .as_volatile_slice()
            .write_slice(buf, off)
            .map_err(|_| self.oob(offset, buf.len()))
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
