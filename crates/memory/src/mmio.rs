//! MMIO handlers: what a flat-view range that is not RAM dispatches to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::RamBacking;

/// A device (or device-like dispatcher) reached by MMIO.
///
/// Accesses are 1, 2, 4 or 8 bytes at `offset` from the start of the region the handler was
/// added as. Handlers use interior mutability and decide their own locking; they must never panic
/// on guest input.
pub trait MmioHandler: Send + Sync {
    /// Fills `data` with the value read at `offset` (little endian).
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Writes `data` (little endian) at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
}

/// MMIO handler that serves a window of a [`RamBacking`] byte for byte, counting accesses.
///
/// This is the slow, exact path to device bytes: the same bytes a RAM alias of the backing
/// reaches, so switching between the two never copies or loses data.
pub struct BackingMmio {
    backing: Arc<RamBacking>,
    offset: u64,
    size: u64,
    accesses: AtomicU64,
}

impl BackingMmio {
    /// Serves `backing[offset..offset+size]`.
    pub fn new(backing: Arc<RamBacking>, offset: u64, size: u64) -> Self {
        Self {
            backing,
            offset,
            size,
            accesses: AtomicU64::new(0),
        }
    }

    /// Number of accesses served so far (each one is a VM exit when the range is MMIO in KVM).
    pub fn accesses(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }

    fn locate(&self, offset: u64, len: usize) -> Option<u64> {
        let end = offset.checked_add(len as u64)?;
        (end <= self.size).then_some(self.offset + offset)
    }
}

impl MmioHandler for BackingMmio {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        match self.locate(offset, data.len()) {
            Some(at) if self.backing.read(at, data).is_ok() => {}
            _ => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = self.locate(offset, data.len()) {
            // Out-of-range writes are dropped; the backing bounds-checks again.
            let _ = self.backing.write(at, data);
        }
    }
}
