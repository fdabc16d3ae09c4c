//! The fixed-window MMIO dispatcher: the exact, always-present path from an HPA to device bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use cxlvm_memory::{MmioHandler, RamBacking};
use tracing::debug;

use crate::graph::{DecodeGraph, Target};

/// The bytes of one Type-3 device: volatile capacity at DPA 0, persistent capacity after it.
#[derive(Clone, Debug)]
pub struct DeviceMemory {
    /// Volatile capacity (memfd).
    pub volatile: Option<Arc<RamBacking>>,
    /// Persistent capacity (user file).
    pub persistent: Option<Arc<RamBacking>>,
}

impl DeviceMemory {
    /// Volatile bytes.
    pub fn volatile_bytes(&self) -> u64 {
        self.volatile.as_ref().map_or(0, |b| b.size())
    }

    /// Backing and offset holding DPA `dpa` (with at least `len` bytes left in it).
    pub fn locate(&self, dpa: u64, len: u64) -> Option<(&Arc<RamBacking>, u64)> {
        let v = self.volatile_bytes();
        let (b, off) = if dpa < v {
            (self.volatile.as_ref()?, dpa)
        } else {
            (self.persistent.as_ref()?, dpa - v)
        };
        (off.checked_add(len)? <= b.size()).then_some((b, off))
    }
}

/// Serves one window through the current decode graph.
pub struct WindowDispatcher {
    index: usize,
    base: u64,
    graph: Arc<ArcSwap<DecodeGraph>>,
    devices: Arc<[DeviceMemory]>,
    accesses: AtomicU64,
    unclaimed: AtomicU64,
}

impl WindowDispatcher {
    /// Dispatcher of window `index` at `base`.
    pub fn new(
        index: usize,
        base: u64,
        graph: Arc<ArcSwap<DecodeGraph>>,
        devices: Arc<[DeviceMemory]>,
    ) -> Self {
        Self {
            index,
            base,
            graph,
            devices,
            accesses: AtomicU64::new(0),
            unclaimed: AtomicU64::new(0),
        }
    }

    /// Accesses served (each one a VM exit).
    pub fn accesses(&self) -> u64 {
        self.accesses.load(Ordering::Relaxed)
    }

    /// Accesses (or bytes of split accesses) that nothing claimed.
    pub fn unclaimed(&self) -> u64 {
        self.unclaimed.load(Ordering::Relaxed)
    }

    /// Resolves `len` bytes at `hpa` to one backing range, if they all land contiguously on one
    /// device (always true for aligned accesses of ≤ 8 bytes, as granules are ≥ 256 B).
    fn resolve(
        &self,
        graph: &DecodeGraph,
        hpa: u64,
        len: usize,
    ) -> Option<(&Arc<RamBacking>, u64)> {
        let Target::Device { device, dpa } = graph.route_in(self.index, hpa) else {
            return None;
        };
        if len > 1 {
            let last = hpa.checked_add(len as u64 - 1)?;
            match graph.route_in(self.index, last) {
                Target::Device {
                    device: d2,
                    dpa: p2,
                } if d2 == device && p2 == dpa + len as u64 - 1 => {}
                _ => return None,
            }
        }
        self.devices.get(device)?.locate(dpa, len as u64)
    }

    fn for_each_piece(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(Option<(&Arc<RamBacking>, u64)>, usize, usize),
    ) {
        self.accesses.fetch_add(1, Ordering::Relaxed);
        let graph = self.graph.load();
        let hpa = self.base.wrapping_add(offset);
        if let Some(hit) = self.resolve(&graph, hpa, len) {
            return f(Some(hit), 0, len);
        }
        // Straddles a granule (unaligned) or partly unclaimed: byte by byte.
        for i in 0..len {
            let hit = self.resolve(&graph, hpa.wrapping_add(i as u64), 1);
            if hit.is_none() {
                self.unclaimed.fetch_add(1, Ordering::Relaxed);
                debug!(
                    "window {} HPA {:#x}: {:?}",
                    self.index,
                    hpa + i as u64,
                    graph.route_in(self.index, hpa + i as u64)
                );
            }
            f(hit, i, 1);
        }
    }
}

impl MmioHandler for WindowDispatcher {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        self.for_each_piece(offset, len, |hit, at, n| {
            let buf = &mut data[at..at + n];
            match hit {
                Some((b, off)) if b.read(off, buf).is_ok() => {}
                _ => buf.fill(0xff),
            }
        });
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.for_each_piece(offset, data.len(), |hit, at, n| {
            if let Some((b, off)) = hit {
                let _ = b.write(off, &data[at..at + n]);
            }
        });
    }
}
