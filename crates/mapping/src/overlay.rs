//! RAM alias overlays: keeps, in every window container, exactly the direct RAM mappings the
//! planner derives from the current decode graph.
//!
//! Called by the fabric (as its [`DecodeListener`]) with the fabric lock held, inside the guest
//! register write that changed decoding, so the guest never sees Committed (or Mem_Enable taking
//! effect) before the mapping it implies is in place, and never keeps a mapping after the state
//! that justified it is gone. Each change is one memory-API transaction.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;

use cxlvm_memory::{AddressSpace, RamBacking, RegionId};
use tracing::{error, info, warn};

use crate::planner::{self, BuildFailure, MmioReason, Piece, RangePlan};
use crate::storage::{self, RegionStore};
use crate::window::DeviceMemory;
use cxlvm_cxl::fabric::DecodeListener;
use cxlvm_cxl::graph::DecodeGraph;

/// Why the overlays could not follow the decoders (the VM must stop: a mapping they no longer
/// justify may remain).
#[derive(Debug, thiserror::Error)]
pub enum OverlayFailure {
    /// The memory map refused to place or remove an overlay (the first refusal).
    #[error("CXL overlays: the memory map refused a change the decoders require: {0}")]
    Refused(#[source] cxlvm_memory::MemoryError),
    /// The transaction carrying the change failed.
    #[error("CXL overlays: cannot apply the mappings the decoders require: {0}")]
    Commit(#[source] cxlvm_memory::MemoryError),
}

/// Priority of overlays inside a window container (the dispatcher is at 0).
pub const OVERLAY_PRIORITY: i32 = 1;

/// Which path serves a decoded range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RangeMode {
    /// One RAM alias onto one device.
    Linear,
    /// One stitched RAM mapping over several devices.
    Interleaved,
    /// The exact MMIO path (every access exits).
    Mmio,
}

impl std::fmt::Display for RangeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RangeMode::Linear => "linear",
            RangeMode::Interleaved => "interleaved",
            RangeMode::Mmio => "mmio",
        })
    }
}

/// How a range of a window is served now.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RangeState {
    /// Window index.
    pub window: usize,
    /// HPA start.
    pub hpa: u64,
    /// Length.
    pub len: u64,
    /// The path serving it.
    pub mode: RangeMode,
    /// Host mappings (VMAs) it uses.
    pub mappings: u64,
    /// Why it stays on the MMIO path (`mode` is `Mmio`).
    pub reason: Option<MmioReason>,
    /// Why it is MMIO, or what it maps (for people).
    pub detail: String,
}

impl RangeState {
    fn mmio(window: usize, hpa: u64, len: u64, reason: MmioReason) -> Self {
        RangeState {
            window,
            hpa,
            len,
            mode: RangeMode::Mmio,
            mappings: 0,
            detail: reason.to_string(),
            reason: Some(reason),
        }
    }
}

struct Installed {
    plan: RangePlan,
    regions: Vec<RegionId>,
    mappings: u64,
    /// The stitched backing of an interleaved overlay (kept for the cache on removal).
    stitched: Option<Arc<RamBacking>>,
}

/// Most stitched backings kept after their range was unmapped, for a quick re-commit of the same
/// region (building one costs a few microseconds per granule; re-adding a cached one is a slot).
const STITCH_CACHE: usize = 4;

/// Manages the overlays of all windows.
pub struct OverlayManager {
    /// Weak: the address space owns the regions whose handlers lead back here.
    space: Weak<Mutex<AddressSpace>>,
    /// (container, base) per window.
    windows: Vec<(RegionId, u64)>,
    /// Unplaced RAM regions over each device's (volatile, persistent) backing.
    device_ram: Vec<(Option<RegionId>, Option<RegionId>)>,
    memories: Arc<[DeviceMemory]>,
    vma_budget: u64,
    graph: Arc<ArcSwap<DecodeGraph>>,
    direct: AtomicBool,
    installed: Mutex<BTreeMap<(usize, u64), Installed>>,
    /// Recently unmapped interleaved ranges: (plan, backing), newest last. Their mappings count
    /// against the VMA budget; they are dropped first when the budget is needed.
    stitch_cache: Mutex<Vec<(RangePlan, Arc<RamBacking>)>>,
    mmio_only: Mutex<Vec<RangeState>>,
    /// Ranges already reported as slow for lack of VMA budget (reported once each).
    budget_warned: Mutex<std::collections::BTreeSet<(usize, u64, u64)>>,
    fatal: Box<dyn Fn(OverlayFailure) + Send + Sync>,
}

fn same(a: &RangePlan, b: &RangePlan) -> bool {
    match (a, b) {
        (
            RangePlan::Linear {
                window,
                hpa,
                len,
                device,
                dpa,
            },
            RangePlan::Linear {
                window: w2,
                hpa: h2,
                len: l2,
                device: d2,
                dpa: p2,
            },
        ) => (window, hpa, len, device, dpa) == (w2, h2, l2, d2, p2),
        (
            RangePlan::Interleaved {
                window,
                hpa,
                len,
                pieces,
            },
            RangePlan::Interleaved {
                window: w2,
                hpa: h2,
                len: l2,
                pieces: p2,
            },
        ) => (window, hpa, len) == (w2, h2, l2) && pieces[..] == p2[..],
        (
            RangePlan::Stored {
                window,
                hpa,
                len,
                layout,
            },
            RangePlan::Stored {
                window: w2,
                hpa: h2,
                len: l2,
                layout: y2,
            },
        ) => (window, hpa, len) == (w2, h2, l2) && layout == y2,
        _ => false,
    }
}

fn describe(p: &RangePlan) -> String {
    match p {
        RangePlan::Linear { device, dpa, .. } => format!("linear: device {device} DPA {dpa:#x}"),
        RangePlan::Interleaved { pieces, .. } => {
            let mut devs: Vec<usize> = pieces.iter().map(|p| p.device).collect();
            devs.sort_unstable();
            devs.dedup();
            format!("interleaved over devices {devs:?}, {} pieces", pieces.len())
        }
        RangePlan::Stored { layout, .. } => {
            let devs: Vec<usize> = layout.extents().map(|(d, _, _)| d).collect();
            format!(
                "interleaved over devices {devs:?} at {} B, one region store",
                layout.min_run()
            )
        }
        RangePlan::MmioOnly { reason, .. } => reason.to_string(),
    }
}

fn key(p: &RangePlan) -> (usize, u64, u64) {
    match p {
        RangePlan::Linear {
            window, hpa, len, ..
        }
        | RangePlan::Interleaved {
            window, hpa, len, ..
        }
        | RangePlan::Stored {
            window, hpa, len, ..
        }
        | RangePlan::MmioOnly {
            window, hpa, len, ..
        } => (*window, *hpa, *len),
    }
}

impl OverlayManager {
    /// Overlays for `windows` (container region, base) over `memories`, whose unplaced RAM
    /// regions are `device_ram`, following the decode graph published in `graph`. `fatal` stops
    /// the VM if a mapping that is no longer justified cannot be removed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        space: Arc<Mutex<AddressSpace>>,
        windows: Vec<(RegionId, u64)>,
        device_ram: Vec<(Option<RegionId>, Option<RegionId>)>,
        memories: Arc<[DeviceMemory]>,
        vma_budget: u64,
        graph: Arc<ArcSwap<DecodeGraph>>,
        direct: bool,
        fatal: Box<dyn Fn(OverlayFailure) + Send + Sync>,
    ) -> Self {
        Self {
            space: Arc::downgrade(&space),
            windows,
            device_ram,
            memories,
            vma_budget,
            graph,
            direct: AtomicBool::new(direct),
            installed: Mutex::new(BTreeMap::new()),
            stitch_cache: Mutex::new(Vec::new()),
            mmio_only: Mutex::new(Vec::new()),
            budget_warned: Mutex::new(std::collections::BTreeSet::new()),
            fatal,
        }
    }

    /// The state of every decoded range (mapped or MMIO), sorted by window and HPA.
    pub fn ranges(&self) -> Vec<RangeState> {
        let mut v: Vec<RangeState> = self
            .installed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|i| {
                let (window, hpa, len) = key(&i.plan);
                RangeState {
                    window,
                    hpa,
                    len,
                    mode: if matches!(i.plan, RangePlan::Linear { .. }) {
                        RangeMode::Linear
                    } else {
                        RangeMode::Interleaved
                    },
                    mappings: i.mappings,
                    reason: None,
                    detail: describe(&i.plan),
                }
            })
            .collect();
        v.extend(
            self.mmio_only
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        v.sort_by_key(|r| (r.window, r.hpa));
        v
    }

    /// Translates a run of DPA into (RAM region, offset) pieces, splitting at the volatile /
    /// persistent boundary.
    fn dpa_regions(
        &self,
        device: usize,
        dpa: u64,
        len: u64,
    ) -> Vec<(RegionId, Arc<RamBacking>, u64, u64)> {
        let mut out = Vec::new();
        let Some(mem) = self.memories.get(device) else {
            return out;
        };
        let (vreg, preg) = self.device_ram.get(device).copied().unwrap_or((None, None));
        let vsize = mem.volatile_bytes();
        let (mut at, end) = (dpa, dpa + len);
        while at < end {
            if at < vsize {
                let n = (vsize - at).min(end - at);
                if let (Some(r), Some(b)) = (vreg, mem.volatile.clone()) {
                    out.push((r, b, at, n));
                }
                at += n;
            } else {
                if let (Some(r), Some(b)) = (preg, mem.persistent.clone()) {
                    out.push((r, b, at - vsize, end - at));
                }
                at = end;
            }
        }
        out
    }

    /// Whether direct mappings are allowed.
    pub fn direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// Allows direct mappings, or keeps every range on the exact MMIO path; done on return.
    pub fn set_direct(&self, on: bool) {
        if self.direct.swap(on, Ordering::Relaxed) != on {
            info!(
                "CXL direct mappings {}",
                if on {
                    "allowed"
                } else {
                    "disabled: MMIO path only"
                }
            );
            self.apply();
        }
    }

    /// Brings the overlays in line with the current decode graph (one transaction).
    pub fn apply(&self) {
        let mut installed = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        let graph = self.graph.load_full();
        let mut cache = self.stitch_cache.lock().unwrap_or_else(|e| e.into_inner());
        let cached: u64 = cache.iter().map(|(_, b)| b.mappings() as u64).sum();
        let mut plans = planner::plan(&graph, self.vma_budget.saturating_sub(cached));
        let short = |plans: &[RangePlan]| {
            plans.iter().any(|p| {
                matches!(
                    p,
                    RangePlan::MmioOnly {
                        reason: MmioReason::VmaBudget { .. },
                        ..
                    }
                )
            })
        };
        if cached > 0 && short(&plans) {
            // The cache is in the way: give its mappings back and plan with the whole budget.
            cache.clear();
            plans = planner::plan(&graph, self.vma_budget);
        }
        drop(cache);
        if !self.direct() {
            for p in &mut plans {
                if !matches!(p, RangePlan::MmioOnly { .. }) {
                    let (window, hpa, len) = key(p);
                    *p = RangePlan::MmioOnly {
                        window,
                        hpa,
                        len,
                        reason: MmioReason::DirectOff,
                    };
                }
            }
        }
        let wanted: Vec<&RangePlan> = plans
            .iter()
            .filter(|p| !matches!(p, RangePlan::MmioOnly { .. }))
            .collect();
        let stale: Vec<(usize, u64)> = installed
            .iter()
            .filter(|(_, i)| !wanted.iter().any(|p| same(p, &i.plan)))
            .map(|(k, _)| *k)
            .collect();
        let new: Vec<&RangePlan> = wanted
            .iter()
            .copied()
            .filter(|p| !installed.values().any(|i| same(p, &i.plan)))
            .collect();
        let mmio_now: Vec<RangeState> = plans
            .iter()
            .filter_map(|p| match p {
                RangePlan::MmioOnly {
                    window,
                    hpa,
                    len,
                    reason,
                } => Some(RangeState::mmio(*window, *hpa, *len, reason.clone())),
                _ => None,
            })
            .collect();
        {
            let mut mmio = self.mmio_only.lock().unwrap_or_else(|e| e.into_inner());
            for m in &mmio_now {
                if let Some(MmioReason::VmaBudget { needed, left }) = m.reason {
                    self.warn_budget(m, needed, left);
                } else if !mmio.contains(m) {
                    info!(
                        "window {} [{:#x}, {:#x}): decoded, stays on the MMIO path: {}",
                        m.window,
                        m.hpa,
                        m.hpa + m.len,
                        m.detail
                    );
                }
            }
            *mmio = mmio_now;
        }
        if stale.is_empty() && new.is_empty() {
            return;
        }
        // Bytes move only once no mapping shows them: when a new range needs bytes moved and
        // ranges go away in the same change, they go away first (one transaction), then the
        // bytes move and the new ranges come (a second one). Both happen inside the guest's
        // register write; the exact MMIO path serves the range in between.
        let mut stale = stale;
        if !stale.is_empty() && new.iter().any(|p| self.needs_moves(p)) {
            if !self.transact(&mut installed, &stale, Vec::new()) {
                return;
            }
            stale.clear();
        }
        // Move bytes and build stitched backings before taking the address-space lock (mmaps
        // and copies can take a while).
        let mut prepared = Vec::new();
        for p in &new {
            match self.prepare(p) {
                Ok(x) => prepared.push(x),
                Err(e) => {
                    let (window, hpa, len) = key(p);
                    let reason = MmioReason::BuildFailed { failure: e };
                    error!(
                        "window {window} [{hpa:#x}, {:#x}): stays on the MMIO path (slow): {reason}",
                        hpa + len
                    );
                    self.mmio_only
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(RangeState::mmio(window, hpa, len, reason));
                }
            }
        }
        self.transact(&mut installed, &stale, prepared);
    }

    /// Whether installing `p` moves bytes: a region store to fill, or device bytes to bring
    /// home from one before the device's own store is mapped.
    fn needs_moves(&self, p: &RangePlan) -> bool {
        let placed = |device: usize, dpa: u64, len: u64| {
            self.memories.get(device).is_some_and(|m| {
                m.placements()
                    .iter()
                    .any(|(s, q)| *s < dpa.saturating_add(len) && s + q.len > dpa)
            })
        };
        match p {
            RangePlan::Stored { .. } => true,
            RangePlan::Linear {
                device, dpa, len, ..
            } => placed(*device, *dpa, *len),
            RangePlan::Interleaved { pieces, .. } => {
                pieces.iter().any(|q| placed(q.device, q.dpa, q.len))
            }
            RangePlan::MmioOnly { .. } => false,
        }
    }

    /// Removes the `stale` overlays and adds the `prepared` ones in one memory transaction;
    /// false when it failed (the VM is being stopped).
    fn transact(
        &self,
        installed: &mut BTreeMap<(usize, u64), Installed>,
        stale: &[(usize, u64)],
        prepared: Vec<(&RangePlan, Vec<Part>)>,
    ) -> bool {
        let Some(space) = self.space.upgrade() else {
            return false; // the machine is gone
        };
        let mut space = space.lock().unwrap_or_else(|e| e.into_inner());
        let mut tx = space.begin();
        let mut refused: Option<cxlvm_memory::MemoryError> = None;
        let mut removed = Vec::new();
        for k in stale {
            if let Some(i) = installed.get(k) {
                for &r in &i.regions {
                    if let Err(e) = tx.unplace(r).and_then(|()| tx.remove(r)) {
                        error!("overlay removal refused: {e}");
                        refused.get_or_insert(e);
                    }
                }
                removed.push(*k);
            }
        }
        let mut added = Vec::new();
        for (plan, parts) in prepared {
            let (w, hpa, _len) = key(plan);
            let Some(&(container, base)) = self.windows.get(w) else {
                continue;
            };
            let mut regions = Vec::new();
            let mut mappings = 0;
            let mut stitched = None;
            for part in parts {
                let r = match part {
                    Part::Alias {
                        target,
                        offset,
                        at,
                        len,
                    } => tx
                        .add_alias("cxl.alias", target, offset, len)
                        .map(|r| (r, at, 1)),
                    Part::Stitched { backing, at } => {
                        let n = backing.mappings() as u64;
                        let size = backing.size();
                        stitched = Some(backing.clone());
                        tx.add_ram("cxl.interleave", backing, 0, size, false)
                            .map(|r| (r, at, n))
                    }
                    Part::Store { backing, at } => {
                        let size = backing.size();
                        tx.add_ram("cxl.region", backing, 0, size, false)
                            .map(|r| (r, at, 1))
                    }
                };
                match r.and_then(|(r, at, n)| {
                    tx.place(container, r, at - base, OVERLAY_PRIORITY)
                        .map(|()| (r, n))
                }) {
                    Ok((r, n)) => {
                        regions.push(r);
                        mappings += n;
                    }
                    Err(e) => {
                        error!("window {w} [{hpa:#x}, ..): overlay rejected: {e}");
                        refused.get_or_insert(e);
                    }
                }
            }
            added.push((plan.clone(), regions, mappings, stitched));
        }
        if let Some(e) = refused {
            drop(tx);
            drop(space);
            (self.fatal)(OverlayFailure::Refused(e));
            return false;
        }
        match tx.commit() {
            Ok(_) => {
                for k in removed {
                    if let Some(i) = installed.remove(&k) {
                        let (w, hpa, len) = key(&i.plan);
                        if let Some(b) = i.stitched.clone() {
                            let mut cache =
                                self.stitch_cache.lock().unwrap_or_else(|e| e.into_inner());
                            cache.push((i.plan.clone(), b));
                            if cache.len() > STITCH_CACHE {
                                cache.remove(0);
                            }
                        }
                        let why = if self.direct() {
                            "no longer decoded this way"
                        } else {
                            "direct mapping disabled"
                        };
                        info!(
                            "window {w} [{hpa:#x}, {:#x}): RAM -> MMIO ({why})",
                            hpa + len
                        );
                    }
                }
                for (plan, regions, mappings, stitched) in added {
                    let (w, hpa, len) = key(&plan);
                    info!(
                        "window {w} [{hpa:#x}, {:#x}): MMIO -> RAM ({})",
                        hpa + len,
                        describe(&plan)
                    );
                    installed.insert(
                        (w, hpa),
                        Installed {
                            plan,
                            regions,
                            mappings,
                            stitched,
                        },
                    );
                }
                true
            }
            Err(e) => {
                drop(space);
                (self.fatal)(OverlayFailure::Commit(e));
                false
            }
        }
    }

    /// Says, once per range and at the default log level, that a committed range runs on the
    /// slow MMIO path because the VMA budget is spent, with what would let it be mapped.
    fn warn_budget(&self, m: &RangeState, needed: u64, left: u64) {
        let mut warned = self.budget_warned.lock().unwrap_or_else(|e| e.into_inner());
        if !warned.insert((m.window, m.hpa, m.len)) {
            return;
        }
        let short = needed.saturating_sub(left);
        let advice = match cxlvm_stitch::vma_limit() {
            Some(limit) => format!(
                "raise vm.max_map_count from {limit} to at least {} (sysctl -w vm.max_map_count=...) or --vma-budget",
                limit.saturating_add(short).saturating_add(4096)
            ),
            None => format!("allow {short} more host mappings (vm.max_map_count, --vma-budget)"),
        };
        warn!(
            "window {} [{:#x}, {:#x}): committed but stays on the MMIO path, thousands of times slower than RAM: mapping it needs {needed} host mappings and the VMA budget has {left} left; {advice}",
            m.window,
            m.hpa,
            m.hpa + m.len
        );
    }

    fn prepare<'p>(&self, p: &'p RangePlan) -> Result<(&'p RangePlan, Vec<Part>), BuildFailure> {
        match p {
            RangePlan::Linear {
                hpa,
                len,
                device,
                dpa,
                ..
            } => {
                storage::evict(&self.memories, *device, *dpa, *len).map_err(storage_failure)?;
                let mut parts = Vec::new();
                let mut at = *hpa;
                for (region, _b, off, n) in self.dpa_regions(*device, *dpa, *len) {
                    parts.push(Part::Alias {
                        target: region,
                        offset: off,
                        at,
                        len: n,
                    });
                    at += n;
                }
                if at != hpa + len {
                    return Err(BuildFailure::NoBacking {
                        device: *device,
                        dpa: *dpa,
                        len: *len,
                    });
                }
                Ok((p, parts))
            }
            RangePlan::Interleaved { hpa, pieces, .. } => {
                {
                    let mut cache = self.stitch_cache.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(i) = cache.iter().position(|(c, _)| same(c, p)) {
                        let (_, backing) = cache.remove(i);
                        return Ok((p, vec![Part::Stitched { backing, at: *hpa }]));
                    }
                }
                for q in pieces.iter() {
                    storage::evict(&self.memories, q.device, q.dpa, q.len)
                        .map_err(storage_failure)?;
                }
                let mut src = Vec::with_capacity(pieces.len());
                for &Piece { device, dpa, len } in pieces.iter() {
                    for (_r, b, off, n) in self.dpa_regions(device, dpa, len) {
                        src.push((b, off, n));
                    }
                }
                let backing = RamBacking::stitched("cxl.interleave", &src)
                    .map_err(|e| BuildFailure::Stitch { error: Arc::new(e) })?;
                Ok((p, vec![Part::Stitched { backing, at: *hpa }]))
            }
            RangePlan::Stored {
                window,
                hpa,
                layout,
                ..
            } => {
                let store = match storage::find_store(&self.memories, *window, *hpa, layout) {
                    Some(s) => s,
                    None => {
                        let store = RegionStore::new(*window, *hpa, layout.clone())
                            .map_err(|e| storage_failure(storage::StorageError::Backing(e)))?;
                        let t = std::time::Instant::now();
                        let moved =
                            storage::adopt(&self.memories, &store).map_err(storage_failure)?;
                        info!(
                            "window {window} [{hpa:#x}, {:#x}): region store filled: {} bytes moved in {:?}",
                            hpa + layout.len(),
                            moved.bytes,
                            t.elapsed()
                        );
                        store
                    }
                };
                Ok((
                    p,
                    vec![Part::Store {
                        backing: store.backing.clone(),
                        at: *hpa,
                    }],
                ))
            }
            RangePlan::MmioOnly { .. } => Ok((p, vec![])),
        }
    }
}

fn storage_failure(e: storage::StorageError) -> BuildFailure {
    BuildFailure::Storage { error: Arc::new(e) }
}

enum Part {
    Alias {
        target: RegionId,
        offset: u64,
        at: u64,
        len: u64,
    },
    Stitched {
        backing: Arc<RamBacking>,
        at: u64,
    },
    /// A region store's backing (one mapping).
    Store {
        backing: Arc<RamBacking>,
        at: u64,
    },
}

impl DecodeListener for OverlayManager {
    fn decoding_changed(&self, _graph: &Arc<DecodeGraph>) {
        // The fabric published this graph before calling; apply() loads the latest under its lock.
        self.apply();
    }
}
