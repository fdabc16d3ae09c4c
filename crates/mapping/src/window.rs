//! The fixed-window MMIO dispatcher: the exact, always-present path from an HPA to device bytes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use arc_swap::ArcSwap;
use cxlvm_memory::{MmioHandler, RamBacking};
use tracing::debug;

use cxlvm_cxl::graph::{DecodeGraph, Target};

use crate::storage::RegionStore;

/// The bytes of one Type-3 device: volatile capacity at DPA 0, persistent capacity after it,
/// and the storage map saying which volatile DPA extents were moved into region stores
/// ([`crate::storage`]).
#[derive(Debug)]
pub struct DeviceMemory {
    /// Volatile capacity (memfd): the device's own store, in DPA order.
    pub volatile: Option<Arc<RamBacking>>,
    /// Persistent capacity (user file); never moved.
    pub persistent: Option<Arc<RamBacking>>,
    /// Volatile extents living in region stores, by first DPA.
    placements: RwLock<BTreeMap<u64, Placement>>,
}

/// A volatile DPA extent of a device stored in a region store.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Length of the extent.
    pub len: u64,
    /// The device (its index in the layout).
    pub device: usize,
    /// Where the bytes are.
    pub store: Arc<RegionStore>,
}

/// Where a stretch of DPA is stored.
enum Home<'a> {
    Own(&'a Arc<RamBacking>, u64),
    Region(&'a RegionStore, u64),
}

impl DeviceMemory {
    /// A device whose bytes are all in its own stores.
    pub fn new(volatile: Option<Arc<RamBacking>>, persistent: Option<Arc<RamBacking>>) -> Self {
        Self {
            volatile,
            persistent,
            placements: RwLock::new(BTreeMap::new()),
        }
    }

    /// Volatile bytes.
    pub fn volatile_bytes(&self) -> u64 {
        self.volatile.as_ref().map_or(0, |b| b.size())
    }

    /// The storage map, for reading.
    pub fn placements(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Placement>> {
        self.placements.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The storage map, for moving bytes.
    pub(crate) fn placements_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Placement>> {
        self.placements.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `[dpa, dpa + len)` is exactly one placement in `store`.
    pub fn is_placed(&self, dpa: u64, len: u64, store: &Arc<RegionStore>) -> bool {
        self.placements()
            .get(&dpa)
            .is_some_and(|p| p.len == len && Arc::ptr_eq(&p.store, store))
    }

    /// Own backing and offset holding DPA `dpa` (with at least `len` bytes left in it), ignoring
    /// placements: where the bytes are when nothing was moved (persistent capacity always).
    /// Private: readers go through [`DeviceMemory::home`] / `read` / `write`, which honour the
    /// storage map.
    fn locate(&self, dpa: u64, len: u64) -> Option<(&Arc<RamBacking>, u64)> {
        let v = self.volatile_bytes();
        let (b, off) = if dpa < v {
            (self.volatile.as_ref()?, dpa)
        } else {
            (self.persistent.as_ref()?, dpa - v)
        };
        (off.checked_add(len)? <= b.size()).then_some((b, off))
    }

    /// Where the byte at `dpa` is stored now: the device's own backing or a region store's, and
    /// the offset in it (`None` outside the device).
    pub fn home(&self, dpa: u64) -> Option<(Arc<RamBacking>, u64)> {
        let mut out = None;
        self.with_homes(dpa, 1, |home, _, _| {
            out = Some(match home {
                Home::Own(b, off) => (b.clone(), off),
                Home::Region(store, off) => (store.backing.clone(), off),
            });
        });
        out
    }

    /// Calls `f(home, at, n)` for each contiguous stretch of `[dpa, dpa + len)` in DPA order,
    /// under the storage lock; false (after the stretches that exist) when part of the range is
    /// outside the device.
    fn with_homes(&self, dpa: u64, len: u64, mut f: impl FnMut(Home<'_>, usize, usize)) -> bool {
        let placements = self.placements();
        let mut at = 0u64;
        while at < len {
            let x = dpa + at;
            let rest = len - at;
            let placed = placements
                .range(..=x)
                .next_back()
                .filter(|(s, p)| x < *s + p.len);
            let n = if let Some((_, p)) = placed {
                let Some(s) = p.store.layout.at_dpa(p.device, x) else {
                    return false;
                };
                let n = s.len.min(rest);
                f(Home::Region(&p.store, s.offset), at as usize, n as usize);
                n
            } else {
                let next = placements
                    .range(x..)
                    .next()
                    .map_or(rest, |(s, _)| (s - x).min(rest));
                let v = self.volatile_bytes();
                let n = if x < v { next.min(v - x) } else { next };
                let Some((b, off)) = self.locate(x, n) else {
                    return false;
                };
                f(Home::Own(b, off), at as usize, n as usize);
                n
            };
            at += n;
        }
        true
    }

    /// Reads device bytes at `dpa`, wherever they are stored; false when the range is not all
    /// inside the device (the bytes outside are left as they were).
    pub fn read(&self, dpa: u64, buf: &mut [u8]) -> bool {
        let mut ok = true;
        let all = self.with_homes(dpa, buf.len() as u64, |home, at, n| {
            let b = &mut buf[at..at + n];
            ok &= match home {
                Home::Own(backing, off) => backing.read(off, b).is_ok(),
                Home::Region(store, off) => store.backing.read(off, b).is_ok(),
            };
        });
        all && ok
    }

    /// Writes device bytes at `dpa`, wherever they are stored; false when the range is not all
    /// inside the device.
    pub fn write(&self, dpa: u64, buf: &[u8]) -> bool {
        let mut ok = true;
        let all = self.with_homes(dpa, buf.len() as u64, |home, at, n| {
            let b = &buf[at..at + n];
            ok &= match home {
                Home::Own(backing, off) => backing.write(off, b).is_ok(),
                Home::Region(store, off) => store.backing.write(off, b).is_ok(),
            };
        });
        all && ok
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

    /// Resolves `len` bytes at `hpa` to one device and DPA, if they all land contiguously on one
    /// device (always true for aligned accesses of ≤ 8 bytes, as granules are ≥ 256 B).
    fn resolve(&self, graph: &DecodeGraph, hpa: u64, len: usize) -> Option<(&DeviceMemory, u64)> {
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
        Some((self.devices.get(device)?, dpa))
    }

    fn for_each_piece(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(Option<(&DeviceMemory, u64)>, usize, usize),
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
                Some((dev, dpa)) if dev.read(dpa, buf) => {}
                _ => buf.fill(0xff),
            }
        });
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.for_each_piece(offset, data.len(), |hit, at, n| {
            if let Some((dev, dpa)) = hit {
                let _ = dev.write(dpa, &data[at..at + n]);
            }
        });
    }
}
