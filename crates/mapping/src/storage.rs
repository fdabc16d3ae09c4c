//! Where the bytes of a device's volatile capacity are stored: the storage map.
//!
//! A device's DPA space is the identity of its bytes, not where they are kept. Each byte lives in
//! exactly one place:
//!
//! - in the device's own store (its memfd, in DPA order) — the default; or
//! - in a **region store**: one memfd per committed interleave set, in HPA order, at the offset
//!   the set's [`Layout`] gives. A region store is one contiguous host range, so the whole
//!   interleaved range is one KVM slot over one host mapping, at any granularity and any number
//!   of ways.
//!
//! A device's [`Placements`](crate::window::DeviceMemory) say which of its DPA extents live in
//! which region store. Every reader (the MMIO path, dumps, tests) resolves a DPA through them
//! under the device's lock, and every move holds that lock for writing while it copies and
//! re-points, so no reader ever sees a half-moved extent and no write is lost.
//!
//! Moves cost what exists: sources are scanned with `SEEK_DATA`/`SEEK_HOLE`, so a fresh device
//! moves nothing, and the pages moved out are discarded (`FALLOC_FL_PUNCH_HOLE`) so the bytes
//! are stored once. Persistent capacity never moves: its file stays the single source of truth.

use std::sync::Arc;

use cxlvm_memory::{BackingError, RamBacking};

use crate::window::{DeviceMemory, Placement};

/// A run of one period of an interleave set: `len` bytes at offset `off` of each period are
/// device `device`'s DPA `dpa + k·stride` in period `k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct LayoutRun {
    /// Offset in the period.
    pub off: u64,
    /// Length.
    pub len: u64,
    /// Device index.
    pub device: usize,
    /// DPA in period 0.
    pub dpa: u64,
    /// DPA advance per period.
    pub stride: u64,
}

/// One device's share of a layout: its DPA extent and its runs in DPA order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Share {
    device: usize,
    /// First DPA of the extent.
    dpa: u64,
    /// Bytes of the device in the range (the extent is dense).
    len: u64,
    /// DPA advance per period (0 when the range is one period or less).
    stride: u64,
    /// `(DPA offset in the period, offset in the period)` of each of the device's runs, with
    /// their lengths, in DPA order.
    runs: Vec<(u64, u64, u64)>,
}

/// The geometry of an interleave set over `len` bytes of HPA: a periodic pattern of runs, each
/// device's bytes forming one dense DPA extent. Maps store offsets (= HPA − base) to DPA and
/// back in O(log runs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    period: u64,
    len: u64,
    runs: Vec<LayoutRun>,
    shares: Vec<Share>,
}

/// A contiguous stretch found by a [`Layout`] lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stretch {
    /// Device index.
    pub device: usize,
    /// DPA of the first byte.
    pub dpa: u64,
    /// Store offset of the first byte.
    pub offset: u64,
    /// Bytes that continue contiguously in both DPA and the store.
    pub len: u64,
}

impl Layout {
    /// The layout of `runs` (one period, in offset order, covering `[0, min(period, len))`)
    /// repeated over `len` bytes; `None` unless every device's bytes form one dense DPA extent
    /// whose runs advance in DPA as they advance in offset (true of every interleave).
    pub fn new(period: u64, len: u64, runs: Vec<LayoutRun>) -> Option<Self> {
        if period == 0 || len == 0 || runs.is_empty() {
            return None;
        }
        let mut at = 0;
        for r in &runs {
            if r.off != at || r.len == 0 {
                return None;
            }
            at = at.checked_add(r.len)?;
        }
        if at != period.min(len) {
            return None;
        }
        let mut devices: Vec<usize> = runs.iter().map(|r| r.device).collect();
        devices.sort_unstable();
        devices.dedup();
        let (full, tail) = (len / period, len % period);
        let mut shares = Vec::with_capacity(devices.len());
        for device in devices {
            let mine: Vec<&LayoutRun> = runs.iter().filter(|r| r.device == device).collect();
            let dpa = mine[0].dpa;
            let stride = mine[0].stride;
            let mut next = dpa;
            let mut share_runs = Vec::with_capacity(mine.len());
            for r in &mine {
                if r.dpa != next || r.stride != stride {
                    return None;
                }
                share_runs.push((r.dpa - dpa, r.off, r.len));
                next = r.dpa.checked_add(r.len)?;
            }
            let per_period = next - dpa;
            if full >= 1 && len > period && stride != per_period {
                return None;
            }
            let tail_bytes: u64 = mine
                .iter()
                .filter(|r| r.off < tail)
                .map(|r| r.len.min(tail - r.off))
                .sum();
            let len = if len <= period {
                per_period
            } else {
                full.checked_mul(per_period)?.checked_add(tail_bytes)?
            };
            shares.push(Share {
                device,
                dpa,
                len,
                stride,
                runs: share_runs,
            });
        }
        Some(Layout {
            period,
            len,
            runs,
            shares,
        })
    }

    /// A modulo interleave over `len` bytes: position `i` of each period of `devices.len() ×
    /// gran` bytes is device `devices[i]`, every device's share starting at DPA `dpa`; `None`
    /// when that is not a layout (a device twice, `len` not whole periods of a device share).
    pub fn modulo(devices: &[usize], gran: u64, len: u64, dpa: u64) -> Option<Self> {
        let period = gran.checked_mul(devices.len() as u64)?;
        let runs = devices
            .iter()
            .enumerate()
            .map(|(i, &device)| LayoutRun {
                off: i as u64 * gran,
                len: gran,
                device,
                dpa,
                stride: gran,
            })
            .collect();
        Layout::new(period, len, runs)
    }

    /// Bytes covered (the store's size).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it covers nothing (never, for a built layout).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes per period.
    pub fn period(&self) -> u64 {
        self.period
    }

    /// The runs of one period.
    pub fn runs(&self) -> &[LayoutRun] {
        &self.runs
    }

    /// Each device's DPA extent as `(device, first DPA, length)`, by device index.
    pub fn extents(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        self.shares.iter().map(|s| (s.device, s.dpa, s.len))
    }

    /// Shortest run (the interleave granularity, or less at odd boundaries).
    pub fn min_run(&self) -> u64 {
        self.runs.iter().map(|r| r.len).min().unwrap_or(0)
    }

    /// What store offset `offset` holds.
    pub fn at_offset(&self, offset: u64) -> Option<Stretch> {
        if offset >= self.len {
            return None;
        }
        let (k, r) = (offset / self.period, offset % self.period);
        let i = self.runs.partition_point(|run| run.off + run.len <= r);
        let run = self.runs.get(i)?;
        let into = r - run.off;
        Some(Stretch {
            device: run.device,
            dpa: run.dpa + k * run.stride + into,
            offset,
            len: (run.len - into).min(self.len - offset),
        })
    }

    /// Where device `device`'s DPA `dpa` is in the store.
    pub fn at_dpa(&self, device: usize, dpa: u64) -> Option<Stretch> {
        let s = self.shares.iter().find(|s| s.device == device)?;
        let rel = dpa.checked_sub(s.dpa)?;
        if rel >= s.len {
            return None;
        }
        // A stride of 0: the range is one period or less.
        let (k, within) = match (rel.checked_div(s.stride), rel.checked_rem(s.stride)) {
            (Some(k), Some(w)) => (k, w),
            _ => (0, rel),
        };
        let i = s.runs.partition_point(|&(d, _, l)| d + l <= within);
        let &(d, off, l) = s.runs.get(i)?;
        let into = within - d;
        Some(Stretch {
            device,
            dpa,
            offset: k * self.period + off + into,
            len: (l - into).min(s.len - rel),
        })
    }
}

/// A region store: the bytes of one committed interleave set of a window, in HPA order.
#[derive(Debug)]
pub struct RegionStore {
    /// Window index.
    pub window: usize,
    /// HPA of offset 0.
    pub hpa: u64,
    /// The set's geometry.
    pub layout: Arc<Layout>,
    /// The memfd holding the bytes (one host mapping).
    pub backing: Arc<RamBacking>,
}

impl RegionStore {
    /// A fresh (all-zero, sparse) store for `layout` at `hpa` of window `window`.
    pub fn new(window: usize, hpa: u64, layout: Arc<Layout>) -> Result<Arc<Self>, BackingError> {
        let backing = RamBacking::memfd(&format!("cxl.region.w{window}.{hpa:#x}"), layout.len())?;
        Ok(Arc::new(RegionStore {
            window,
            hpa,
            layout,
            backing,
        }))
    }

    /// Whether it serves exactly this set.
    pub fn serves(&self, window: usize, hpa: u64, layout: &Layout) -> bool {
        self.window == window && self.hpa == hpa && *self.layout == *layout
    }
}

/// Why bytes could not be moved.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A layout's device does not exist or has no volatile store.
    #[error("device {device} has no volatile store for DPA {dpa:#x}..+{len:#x}")]
    NoVolatileStore {
        /// Device index.
        device: usize,
        /// First DPA.
        dpa: u64,
        /// Length.
        len: u64,
    },
    /// Copying, scanning or discarding failed.
    #[error("moving CXL device bytes: {0}")]
    Backing(#[from] BackingError),
}

/// Bytes moved by one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Moved {
    /// Bytes copied (only populated pages are copied).
    pub bytes: u64,
}

impl std::ops::AddAssign for Moved {
    fn add_assign(&mut self, o: Self) {
        self.bytes += o.bytes;
    }
}

/// The region store already holding this set, if an earlier commit of the same geometry left it
/// (uncommitting leaves data where it is).
pub fn find_store(
    memories: &[DeviceMemory],
    window: usize,
    hpa: u64,
    layout: &Layout,
) -> Option<Arc<RegionStore>> {
    let (device, dpa, _) = layout.extents().next()?;
    let placements = memories.get(device)?.placements();
    let (_, p) = placements.range(..=dpa).next_back()?;
    (p.store.serves(window, hpa, layout)
        && layout
            .extents()
            .all(|(d, a, l)| memories.get(d).is_some_and(|m| m.is_placed(a, l, &p.store))))
    .then(|| p.store.clone())
}

/// Makes `store` the home of every device extent of its layout: extents in other region stores
/// come home first, then each device's populated bytes move into the store and its own pages are
/// discarded. Holds each device's storage lock for writing while it moves that device's bytes.
pub fn adopt(memories: &[DeviceMemory], store: &Arc<RegionStore>) -> Result<Moved, StorageError> {
    let mut moved = Moved::default();
    for (device, dpa, len) in store.layout.extents() {
        let mem = memories
            .get(device)
            .filter(|m| {
                dpa.checked_add(len)
                    .is_some_and(|e| e <= m.volatile_bytes())
            })
            .ok_or(StorageError::NoVolatileStore { device, dpa, len })?;
        let home =
            mem.volatile
                .clone()
                .ok_or(StorageError::NoVolatileStore { device, dpa, len })?;
        let mut placements = mem.placements_mut();
        if placements
            .get(&dpa)
            .is_some_and(|p| p.len == len && Arc::ptr_eq(&p.store, store))
        {
            continue;
        }
        moved += evict_locked(&mut placements, &home, device, dpa, len)?;
        for (at, n) in home.data_ranges(dpa, len)? {
            let mut done = 0;
            while done < n {
                let s = store
                    .layout
                    .at_dpa(device, at + done)
                    .ok_or(StorageError::NoVolatileStore { device, dpa, len })?;
                let c = s.len.min(n - done);
                home.copy_to(at + done, &store.backing, s.offset, c)?;
                done += c;
            }
            moved.bytes += n;
        }
        home.discard(dpa, len)?;
        placements.insert(
            dpa,
            Placement {
                len,
                device,
                store: store.clone(),
            },
        );
    }
    Ok(moved)
}

/// Brings device `device`'s DPA `[dpa, dpa + len)` back to its own store (before a mapping of
/// the device's own memfd, or a different geometry, covers it). Whole placements move.
pub fn evict(
    memories: &[DeviceMemory],
    device: usize,
    dpa: u64,
    len: u64,
) -> Result<Moved, StorageError> {
    let Some(mem) = memories.get(device) else {
        return Ok(Moved::default());
    };
    let Some(home) = mem.volatile.clone() else {
        return Ok(Moved::default());
    };
    let mut placements = mem.placements_mut();
    evict_locked(&mut placements, &home, device, dpa, len)
}

fn evict_locked(
    placements: &mut std::collections::BTreeMap<u64, Placement>,
    home: &RamBacking,
    device: usize,
    dpa: u64,
    len: u64,
) -> Result<Moved, StorageError> {
    let end = dpa.saturating_add(len);
    let overlapping: Vec<u64> = placements
        .iter()
        .filter(|(s, p)| **s < end && s.saturating_add(p.len) > dpa)
        .map(|(s, _)| *s)
        .collect();
    let mut moved = Moved::default();
    for start in overlapping {
        let Some(p) = placements.remove(&start) else {
            continue;
        };
        // The store's populated parts that are this device's extent, copied home.
        let layout = &p.store.layout;
        for (off, n) in p.store.backing.data_ranges(0, layout.len())? {
            let mut at = off;
            while at < off + n {
                let Some(s) = layout.at_offset(at) else { break };
                let c = s.len.min(off + n - at);
                if s.device == device && s.dpa >= start && s.dpa < start + p.len {
                    p.store.backing.copy_to(at, home, s.dpa, c)?;
                    moved.bytes += c;
                }
                at += c;
            }
        }
    }
    Ok(moved)
}
