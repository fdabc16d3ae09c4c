//! Property test: random region trees rendered by `cxlvm-memory` against a naive per-page model.
//!
//! Every operation is applied both to a real [`Transaction`] and to a plain model of the tree.
//! The model predicts each operation's error (if any) and, at every commit, whether the tree is
//! valid; for valid trees it resolves every page of the address space on its own (recursively,
//! one page at a time) and the flat view must agree page by page.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cxlvm_memory::{
    AddressSpace, FlatDiff, FlatRange, FlatTarget, FlatView, ListenerError, MAX_DEPTH, MemoryError,
    MemoryListener, MmioHandler, PAGE_SIZE, RamBacking, RegionId, RegionInfo, Transaction,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const P: u64 = PAGE_SIZE;
const ROOT_PAGES: u64 = 64;
const BACKING_PAGES: u64 = 32;
const MAX_REGIONS: usize = 12;

/// One random operation. Indices and offsets are raw numbers, interpreted against the model at
/// the time they run (so most of them name existing regions and most placements fit).
#[derive(Clone, Debug)]
enum Op {
    Container {
        pages: u64,
    },
    Ram {
        backing: usize,
        off: u64,
        pages: u64,
        readonly: bool,
    },
    Mmio {
        pages: u64,
    },
    Alias {
        target: usize,
        off: u64,
        pages: u64,
    },
    Place {
        parent: usize,
        child: usize,
        off: u64,
        prio: i32,
    },
    Unplace {
        idx: usize,
    },
    Move {
        idx: usize,
        off: u64,
    },
    Prio {
        idx: usize,
        prio: i32,
    },
    Enable {
        idx: usize,
        on: bool,
    },
    Remove {
        idx: usize,
    },
    Commit,
}

fn create_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..=32).prop_map(|pages| Op::Container { pages }),
        2 => (0usize..2, 0u64..BACKING_PAGES, 0u64..=16, any::<bool>())
            .prop_map(|(backing, off, pages, readonly)| Op::Ram { backing, off, pages, readonly }),
        2 => (0u64..=8).prop_map(|pages| Op::Mmio { pages }),
        3 => (any::<usize>(), any::<u64>(), any::<u64>())
            .prop_map(|(target, off, pages)| Op::Alias { target, off, pages }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        9 => create_op(),
        8 => (any::<usize>(), any::<usize>(), any::<u64>(), 0i32..2)
            .prop_map(|(parent, child, off, prio)| Op::Place { parent, child, off, prio }),
        1 => any::<usize>().prop_map(|idx| Op::Unplace { idx }),
        2 => (any::<usize>(), any::<u64>()).prop_map(|(idx, off)| Op::Move { idx, off }),
        1 => (any::<usize>(), 0i32..3).prop_map(|(idx, prio)| Op::Prio { idx, prio }),
        2 => (any::<usize>(), prop::bool::weighted(0.6)).prop_map(|(idx, on)| Op::Enable { idx, on }),
        1 => any::<usize>().prop_map(|idx| Op::Remove { idx }),
        1 => Just(Op::Commit),
    ]
}

/// MMIO handler that does nothing; each MMIO region gets its own, so handlers identify regions.
struct Dummy;

impl MmioHandler for Dummy {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}

#[derive(Clone)]
enum Kind {
    Container,
    Ram {
        backing: usize,
        off: u64,
        readonly: bool,
    },
    Mmio(Arc<dyn MmioHandler>),
    Alias {
        target: RegionId,
        off: u64,
    },
}

/// A model region; sizes and offsets are in pages.
#[derive(Clone)]
struct Region {
    name: String,
    pages: u64,
    kind: Kind,
    enabled: bool,
    /// (parent, offset, priority)
    placement: Option<(RegionId, u64, i32)>,
}

/// The naive model of a region tree.
#[derive(Clone)]
struct Model {
    root: RegionId,
    regions: BTreeMap<RegionId, Region>,
}

/// Why the model thinks a commit must fail.
#[derive(Debug, PartialEq)]
enum Invalid {
    Cycle,
    Overlap,
}

/// Which error an operation must return (by variant).
#[derive(Debug, PartialEq, Clone, Copy)]
enum Expect {
    Ok,
    ZeroSize,
    RamOutOfBacking,
    AliasOutOfRange,
    NotAContainer,
    AlreadyPlaced,
    NotPlaced,
    OutOfParent,
    Cycle,
    InUse,
    Root,
}

fn kind_of<T>(r: &Result<T, MemoryError>) -> Expect {
    match r {
        Ok(_) => Expect::Ok,
        Err(MemoryError::ZeroSize(_)) => Expect::ZeroSize,
        Err(MemoryError::RamOutOfBacking { .. }) => Expect::RamOutOfBacking,
        Err(MemoryError::AliasOutOfRange { .. }) => Expect::AliasOutOfRange,
        Err(MemoryError::NotAContainer(_)) => Expect::NotAContainer,
        Err(MemoryError::AlreadyPlaced(_)) => Expect::AlreadyPlaced,
        Err(MemoryError::NotPlaced(_)) => Expect::NotPlaced,
        Err(MemoryError::OutOfParent { .. }) => Expect::OutOfParent,
        Err(MemoryError::Cycle(_)) => Expect::Cycle,
        Err(MemoryError::InUse(_)) => Expect::InUse,
        Err(MemoryError::Root) => Expect::Root,
        Err(e) => panic!("unexpected error from an operation: {e}"),
    }
}

impl Model {
    fn get(&self, id: RegionId) -> &Region {
        &self.regions[&id]
    }

    fn children(&self, id: RegionId) -> Vec<(RegionId, u64, i32)> {
        self.regions
            .iter()
            .filter_map(|(&c, r)| match r.placement {
                Some((p, off, prio)) if p == id => Some((c, off, prio)),
                _ => None,
            })
            .collect()
    }

    /// The `n`-th live region (root included), modulo the count.
    fn nth(&self, n: usize) -> RegionId {
        *self.regions.keys().nth(n % self.regions.len()).unwrap()
    }

    fn containers(&self) -> Vec<RegionId> {
        self.regions
            .iter()
            .filter(|(_, r)| matches!(r.kind, Kind::Container))
            .map(|(&id, _)| id)
            .collect()
    }

    fn info(&self, id: RegionId) -> RegionInfo {
        let r = self.get(id);
        RegionInfo {
            name: r.name.clone(),
            size: r.pages * P,
            enabled: r.enabled,
            placement: r.placement.map(|(p, off, prio)| (p, off * P, prio)),
        }
    }

    /// Regions reachable along the edges the renderer follows (enabled targets only).
    fn edges(&self, id: RegionId) -> Vec<RegionId> {
        let r = self.get(id);
        let targets = match &r.kind {
            Kind::Container => self.children(id).into_iter().map(|(c, _, _)| c).collect(),
            Kind::Alias { target, .. } => vec![*target],
            _ => vec![],
        };
        targets
            .into_iter()
            .filter(|t| self.get(*t).enabled)
            .collect()
    }

    /// Naive validity: explores every path from the root keeping the path itself; a region seen
    /// twice on one path is a cycle, a path longer than MAX_DEPTH regions is too deep. Then every
    /// pair of enabled same-priority siblings in every reached container is compared.
    fn validity(&self) -> Result<(), (Invalid, RegionId)> {
        fn walk(
            m: &Model,
            id: RegionId,
            path: &mut Vec<RegionId>,
            reached: &mut BTreeSet<RegionId>,
        ) -> Result<(), (Invalid, RegionId)> {
            if path.contains(&id) || path.len() >= MAX_DEPTH {
                // Blame the region whose edge closes the loop (never the root: nothing
                // points at the root except aliases, and those are not the root).
                let culprit = path.last().copied().unwrap_or(id);
                return Err((Invalid::Cycle, culprit));
            }
            reached.insert(id);
            path.push(id);
            for next in m.edges(id) {
                walk(m, next, path, reached)?;
            }
            path.pop();
            Ok(())
        }
        let mut reached = BTreeSet::new();
        walk(self, self.root, &mut Vec::new(), &mut reached)?;
        for &id in &reached {
            let kids: Vec<_> = self
                .children(id)
                .into_iter()
                .filter(|(c, _, _)| self.get(*c).enabled)
                .collect();
            for (i, &(a, ao, ap)) in kids.iter().enumerate() {
                for &(b, bo, bp) in &kids[i + 1..] {
                    let (ae, be) = (ao + self.get(a).pages, bo + self.get(b).pages);
                    if ap == bp && ao < be && bo < ae {
                        return Err((Invalid::Overlap, b));
                    }
                }
            }
        }
        Ok(())
    }

    /// Which leaf (and which page of it) shows at `page` of region `id`, if any, with the
    /// regions the lookup went through (leaf last).
    fn resolve(&self, id: RegionId, page: u64) -> Option<(RegionId, u64, Vec<RegionId>)> {
        let r = self.get(id);
        if !r.enabled || page >= r.pages {
            return None;
        }
        let (leaf, leaf_page, mut path) = match &r.kind {
            Kind::Container => {
                let mut kids = self.children(id);
                kids.sort_by_key(|&(_, _, prio)| std::cmp::Reverse(prio));
                kids.into_iter()
                    .filter(|&(c, off, _)| page >= off && page < off + self.get(c).pages)
                    .find_map(|(c, off, _)| self.resolve(c, page - off))?
            }
            Kind::Alias { target, off } => self.resolve(*target, page + off)?,
            Kind::Ram { .. } | Kind::Mmio(_) => (id, page, Vec::new()),
        };
        path.insert(0, id);
        Some((leaf, leaf_page, path))
    }

    /// Whether `id` is `ancestor` or sits (through containers) inside it.
    fn within(&self, mut id: RegionId, ancestor: RegionId) -> bool {
        loop {
            if id == ancestor {
                return true;
            }
            match self.get(id).placement {
                Some((p, _, _)) => id = p,
                None => return false,
            }
        }
    }

    fn placed_or_err(&self, id: RegionId) -> Result<(RegionId, u64, i32), Expect> {
        if id == self.root {
            return Err(Expect::Root);
        }
        self.get(id).placement.ok_or(Expect::NotPlaced)
    }
}

/// Listener that mirrors the view by applying every diff it is given in `finish`.
struct Mirror(Arc<Mutex<Vec<FlatRange>>>);

impl MemoryListener for Mirror {
    fn prepare(&mut self, _diff: &FlatDiff, _new: &FlatView) -> Result<(), ListenerError> {
        Ok(())
    }
    fn finish(&mut self, diff: &FlatDiff, _new: &FlatView) {
        let mut ranges = self.0.lock().unwrap();
        *ranges = apply(&ranges, diff);
    }
}

/// `old` with `diff.removed` taken out and `diff.added` put in, sorted.
fn apply(old: &[FlatRange], diff: &FlatDiff) -> Vec<FlatRange> {
    let mut out: Vec<FlatRange> = old
        .iter()
        .filter(|r| !diff.removed.iter().any(|x| x.same_mapping(r)))
        .cloned()
        .collect();
    out.extend(diff.added.iter().cloned());
    out.sort_by_key(|r| r.start);
    out
}

fn same_ranges(a: &[FlatRange], b: &[FlatRange]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same_mapping(y))
}

/// Where one byte of a range lands: (backing or handler identity, offset, readonly).
fn target_at(r: &FlatRange, addr: u64) -> (usize, u64, bool) {
    let d = addr - r.start;
    match &r.target {
        FlatTarget::Ram {
            backing,
            offset,
            readonly,
        } => (Arc::as_ptr(backing) as usize, offset + d, *readonly),
        FlatTarget::Mmio { handler, offset } => (
            Arc::as_ptr(handler) as *const u8 as usize,
            offset + d,
            false,
        ),
    }
}

/// Counters that show the random cases actually exercise what they are meant to.
#[derive(Default)]
struct Coverage {
    valid_commits: AtomicUsize,
    nonempty_views: AtomicUsize,
    rich_views: AtomicUsize,
    cycles: AtomicUsize,
    overlaps: AtomicUsize,
    /// Views with a page resolved through an alias.
    alias_views: AtomicUsize,
    /// Views with a page resolved through two or more aliases (aliases of aliases, or of
    /// containers holding aliases).
    alias_chain_views: AtomicUsize,
    /// Views with a page resolved through an alias of a container.
    alias_of_container_views: AtomicUsize,
    op_errors: AtomicUsize,
}

struct Case {
    space: AddressSpace,
    committed: Model,
    backings: [Arc<RamBacking>; 2],
    mirror: Arc<Mutex<Vec<FlatRange>>>,
    created: usize,
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(msg()))
    }
}

impl Case {
    fn new() -> Self {
        let mut space = AddressSpace::new("root", ROOT_PAGES * P);
        let root = space.root();
        let mirror = Arc::new(Mutex::new(Vec::new()));
        space
            .add_listener(Box::new(Mirror(mirror.clone())))
            .unwrap();
        let committed = Model {
            root,
            regions: BTreeMap::from([(
                root,
                Region {
                    name: "root".into(),
                    pages: ROOT_PAGES,
                    kind: Kind::Container,
                    enabled: true,
                    placement: None,
                },
            )]),
        };
        let backings = [
            RamBacking::memfd("b0", BACKING_PAGES * P).unwrap(),
            RamBacking::memfd("b1", BACKING_PAGES * P).unwrap(),
        ];
        Self {
            space,
            committed,
            backings,
            mirror,
            created: 0,
        }
    }
}

/// Applies one op to the transaction and the model; checks the outcome the model predicts.
fn step(
    t: &mut Transaction<'_>,
    m: &mut Model,
    backings: &[Arc<RamBacking>; 2],
    created: &mut usize,
    op: &Op,
    cov: &Coverage,
) -> Result<(), TestCaseError> {
    let live = m.regions.len() - 1;
    let (expect, got) = match *op {
        Op::Container { .. } | Op::Ram { .. } | Op::Mmio { .. } | Op::Alias { .. }
            if live >= MAX_REGIONS =>
        {
            return Ok(());
        }
        Op::Container { pages } => {
            let name = format!("c{created}");
            let expect = if pages == 0 {
                Expect::ZeroSize
            } else {
                Expect::Ok
            };
            let r = t.add_container(&name, pages * P);
            if let Ok(id) = r {
                let region = Region {
                    name,
                    pages,
                    kind: Kind::Container,
                    enabled: true,
                    placement: None,
                };
                m.regions.insert(id, region);
            }
            (expect, kind_of(&r))
        }
        Op::Ram {
            backing,
            off,
            pages,
            readonly,
        } => {
            let name = format!("ram{created}");
            let expect = if pages == 0 {
                Expect::ZeroSize
            } else if off + pages > BACKING_PAGES {
                Expect::RamOutOfBacking
            } else {
                Expect::Ok
            };
            let r = t.add_ram(
                &name,
                backings[backing].clone(),
                off * P,
                pages * P,
                readonly,
            );
            if let Ok(id) = r {
                let kind = Kind::Ram {
                    backing,
                    off,
                    readonly,
                };
                let region = Region {
                    name,
                    pages,
                    kind,
                    enabled: true,
                    placement: None,
                };
                m.regions.insert(id, region);
            }
            (expect, kind_of(&r))
        }
        Op::Mmio { pages } => {
            let name = format!("mmio{created}");
            let expect = if pages == 0 {
                Expect::ZeroSize
            } else {
                Expect::Ok
            };
            let handler: Arc<dyn MmioHandler> = Arc::new(Dummy);
            let r = t.add_mmio(&name, pages * P, handler.clone());
            if let Ok(id) = r {
                let region = Region {
                    name,
                    pages,
                    kind: Kind::Mmio(handler),
                    enabled: true,
                    placement: None,
                };
                m.regions.insert(id, region);
            }
            (expect, kind_of(&r))
        }
        Op::Alias { target, off, pages } => {
            let name = format!("alias{created}");
            // The root (an alias of it loops once placed) only one time in eight.
            // Otherwise a container three times in eight (when there is one), else any region.
            let others: Vec<RegionId> = m
                .regions
                .keys()
                .copied()
                .filter(|&id| id != m.root)
                .collect();
            let containers: Vec<RegionId> = m
                .containers()
                .into_iter()
                .filter(|&id| id != m.root)
                .collect();
            let target = if target.is_multiple_of(8) || others.is_empty() {
                m.nth(target / 8)
            } else if target % 8 <= 3 && !containers.is_empty() {
                containers[(target / 8) % containers.len()]
            } else {
                others[(target / 8) % others.len()]
            };
            let tp = m.get(target).pages;
            // Mostly a window that fits (a quarter of them the whole target); one in eight
            // reaches past the end.
            let off = if pages % 8 < 2 { 0 } else { off % tp };
            let pages = match pages % 8 {
                0 => tp - off + 1 + pages % 3,
                1 => tp,
                _ => 1 + pages % (tp - off),
            };
            let expect = if off + pages > tp {
                Expect::AliasOutOfRange
            } else {
                Expect::Ok
            };
            let r = t.add_alias(&name, target, off * P, pages * P);
            if let Ok(id) = r {
                let region = Region {
                    name,
                    pages,
                    kind: Kind::Alias { target, off },
                    enabled: true,
                    placement: None,
                };
                m.regions.insert(id, region);
            }
            (expect, kind_of(&r))
        }
        Op::Place {
            parent,
            child,
            off,
            prio,
        } => {
            // Mostly a container that is the root or placed, and an unplaced child.
            let parent = if parent.is_multiple_of(6) {
                m.nth(parent / 6)
            } else {
                let cs = m.containers();
                let placed: Vec<RegionId> = cs
                    .iter()
                    .copied()
                    .filter(|&c| c == m.root || m.get(c).placement.is_some())
                    .collect();
                if parent % 6 == 1 {
                    cs[(parent / 6) % cs.len()]
                } else {
                    placed[(parent / 6) % placed.len()]
                }
            };
            let unplaced: Vec<RegionId> = m
                .regions
                .iter()
                .filter(|(id, r)| **id != m.root && r.placement.is_none())
                .map(|(&id, _)| id)
                .collect();
            let child = if child.is_multiple_of(5) || unplaced.is_empty() {
                m.nth(child / 5)
            } else {
                unplaced[(child / 5) % unplaced.len()]
            };
            let (pp, cp) = (m.get(parent).pages, m.get(child).pages);
            let off = fitting_offset(pp, cp, off);
            let expect = if !matches!(m.get(parent).kind, Kind::Container) {
                Expect::NotAContainer
            } else if child == m.root {
                Expect::Root
            } else if m.get(child).placement.is_some() {
                Expect::AlreadyPlaced
            } else if off + cp > pp {
                Expect::OutOfParent
            } else if m.within(parent, child) {
                Expect::Cycle
            } else {
                Expect::Ok
            };
            let r = t.place(parent, child, off * P, prio);
            if r.is_ok() {
                m.regions.get_mut(&child).unwrap().placement = Some((parent, off, prio));
            }
            (expect, kind_of(&r))
        }
        Op::Unplace { idx } => {
            let id = placed_pick(m, idx);
            let expect = m.placed_or_err(id).err().unwrap_or(Expect::Ok);
            let r = t.unplace(id);
            if r.is_ok() {
                m.regions.get_mut(&id).unwrap().placement = None;
            }
            (expect, kind_of(&r))
        }
        Op::Move { idx, off } => {
            let id = placed_pick(m, idx);
            let (expect, new_off) = match m.placed_or_err(id) {
                Err(e) => (e, 0),
                Ok((p, _, _)) => {
                    let off = fitting_offset(m.get(p).pages, m.get(id).pages, off);
                    if off + m.get(id).pages > m.get(p).pages {
                        (Expect::OutOfParent, off)
                    } else {
                        (Expect::Ok, off)
                    }
                }
            };
            let r = t.set_offset(id, new_off * P);
            if r.is_ok() {
                let p = m.regions.get_mut(&id).unwrap().placement.as_mut().unwrap();
                p.1 = new_off;
            }
            (expect, kind_of(&r))
        }
        Op::Prio { idx, prio } => {
            let id = placed_pick(m, idx);
            let expect = m.placed_or_err(id).err().unwrap_or(Expect::Ok);
            let r = t.set_priority(id, prio);
            if r.is_ok() {
                let p = m.regions.get_mut(&id).unwrap().placement.as_mut().unwrap();
                p.2 = prio;
            }
            (expect, kind_of(&r))
        }
        Op::Enable { idx, on } => {
            let id = m.nth(idx);
            let expect = if id == m.root && !on {
                Expect::Root
            } else {
                Expect::Ok
            };
            let r = t.set_enabled(id, on);
            if r.is_ok() {
                m.regions.get_mut(&id).unwrap().enabled = on;
            }
            (expect, kind_of(&r))
        }
        Op::Remove { idx } => {
            let id = m.nth(idx);
            let r = m.get(id);
            let aliased = m
                .regions
                .values()
                .any(|a| matches!(a.kind, Kind::Alias { target, .. } if target == id));
            let expect = if id == m.root {
                Expect::Root
            } else if r.placement.is_some() || !m.children(id).is_empty() || aliased {
                Expect::InUse
            } else {
                Expect::Ok
            };
            let r = t.remove(id);
            if r.is_ok() {
                m.regions.remove(&id);
                check(t.region(id).is_none(), || {
                    format!("{id} still there after remove")
                })?;
            }
            (expect, kind_of(&r))
        }
        Op::Commit => unreachable!("commits split the batches"),
    };
    if matches!(
        op,
        Op::Container { .. } | Op::Ram { .. } | Op::Mmio { .. } | Op::Alias { .. }
    ) {
        *created += 1;
    }
    if got != Expect::Ok {
        cov.op_errors.fetch_add(1, Ordering::Relaxed);
    }
    check(got == expect, || {
        format!("{op:?}: expected {expect:?}, got {got:?}")
    })
}

/// Mostly an offset (in pages) that fits; one in eight does not.
fn fitting_offset(parent_pages: u64, child_pages: u64, raw: u64) -> u64 {
    match parent_pages.checked_sub(child_pages) {
        Some(slack) if !raw.is_multiple_of(8) => (raw / 8) % (slack + 1),
        Some(slack) => slack + 1 + (raw / 8) % 3,
        None => (raw / 8) % parent_pages,
    }
}

/// Mostly a placed region (so moves and unplaces usually apply), sometimes any region.
fn placed_pick(m: &Model, idx: usize) -> RegionId {
    let placed: Vec<RegionId> = m
        .regions
        .iter()
        .filter(|(_, r)| r.placement.is_some())
        .map(|(&id, _)| id)
        .collect();
    if idx.is_multiple_of(6) || placed.is_empty() {
        m.nth(idx / 6)
    } else {
        placed[(idx / 6) % placed.len()]
    }
}

/// Checks the published view against the committed model.
fn check_view(case: &Case, view: &FlatView, cov: &Coverage) -> Result<(), TestCaseError> {
    let m = &case.committed;
    let ranges = view.ranges();
    for r in ranges {
        check(r.len > 0, || format!("empty range {r:?}"))?;
        check(r.start.is_multiple_of(P) && r.len.is_multiple_of(P), || {
            format!("range not page granular: {r:?}")
        })?;
        check(r.end() <= ROOT_PAGES * P, || {
            format!("range past the root: {r:?}")
        })?;
    }
    for w in ranges.windows(2) {
        check(w[0].end() <= w[1].start, || {
            format!("unsorted or overlapping: {:?} {:?}", w[0], w[1])
        })?;
        let mergeable = w[0].end() == w[1].start
            && w[0].region == w[1].region
            && target_at(&w[0], w[0].end() - 1).0 == target_at(&w[1], w[1].start).0
            && target_at(&w[0], w[0].end() - 1).1 + 1 == target_at(&w[1], w[1].start).1;
        check(!mergeable, || format!("not merged: {:?} {:?}", w[0], w[1]))?;
    }
    let mut shown = 0;
    let mut leaves = BTreeSet::new();
    let (mut via_alias, mut via_alias_chain, mut via_alias_of_container) = (false, false, false);
    for page in 0..ROOT_PAGES {
        let addr = page * P;
        let want = m.resolve(m.root, page);
        let got = view.lookup(addr);
        match (want, got) {
            (None, None) => {}
            (Some((leaf, lp, path)), Some(r)) => {
                shown += 1;
                leaves.insert(leaf);
                let region = m.get(leaf);
                check(r.region == leaf && *r.name == *region.name, || {
                    format!("page {page}: {r:?} is not {leaf} ({})", region.name)
                })?;
                let (who, offset, readonly) = target_at(r, addr);
                let (want_who, want_offset, want_ro) = match &region.kind {
                    Kind::Ram {
                        backing,
                        off,
                        readonly,
                    } => (
                        Arc::as_ptr(&case.backings[*backing]) as usize,
                        (off + lp) * P,
                        *readonly,
                    ),
                    Kind::Mmio(h) => (Arc::as_ptr(h) as *const u8 as usize, lp * P, false),
                    _ => unreachable!("leaves are RAM or MMIO"),
                };
                check(
                    (who, offset, readonly) == (want_who, want_offset, want_ro),
                    || {
                        format!(
                            "page {page}: {r:?} maps offset {offset:#x}, model says {want_offset:#x} of {leaf}"
                        )
                    },
                )?;
                let aliases: Vec<&Region> = path
                    .iter()
                    .map(|&id| m.get(id))
                    .filter(|r| matches!(r.kind, Kind::Alias { .. }))
                    .collect();
                via_alias |= !aliases.is_empty();
                via_alias_chain |= aliases.len() >= 2;
                via_alias_of_container |= aliases.iter().any(|a| {
                    matches!(a.kind, Kind::Alias { target, .. }
                        if matches!(m.get(target).kind, Kind::Container))
                });
            }
            (want, got) => {
                return Err(TestCaseError::fail(format!(
                    "page {page}: model {want:?}, view {got:?}\nview:\n{view}\ndump:\n{}",
                    case.space.dump()
                )));
            }
        }
    }
    if shown > 0 {
        cov.nonempty_views.fetch_add(1, Ordering::Relaxed);
    }
    for (flag, counter) in [
        (leaves.len() >= 3, &cov.rich_views),
        (via_alias, &cov.alias_views),
        (via_alias_chain, &cov.alias_chain_views),
        (via_alias_of_container, &cov.alias_of_container_views),
    ] {
        if flag {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    // The listener mirror, built only from diffs, equals the view.
    let mirror = case.mirror.lock().unwrap();
    check(same_ranges(&mirror, ranges), || {
        format!("listener mirror diverged\nview:\n{view}")
    })
}

/// Applies one batch in one transaction and commits it, checking the outcome against the model.
/// With `repair`, regions the model blames for an invalid tree are disabled before the commit
/// (so the batch's other changes still land). Returns whether the commit succeeded.
fn commit_batch(
    case: &mut Case,
    batch: &[Op],
    repair: bool,
    cov: &Coverage,
) -> Result<bool, TestCaseError> {
    let old = case.space.view();
    let mut work = case.committed.clone();
    let mut t = case.space.begin();
    for op in batch {
        step(
            &mut t,
            &mut work,
            &case.backings,
            &mut case.created,
            op,
            cov,
        )?;
    }
    if repair {
        while let Err((_, culprit)) = work.validity() {
            let r = t.set_enabled(culprit, false);
            check(r.is_ok(), || format!("cannot disable {culprit}: {r:?}"))?;
            work.regions.get_mut(&culprit).unwrap().enabled = false;
        }
    }
    let validity = work.validity();
    let result = t.commit();
    let new = case.space.view();
    let committed = match validity {
        Ok(()) => {
            let stats = result.map_err(|e| {
                TestCaseError::fail(format!("model says valid, commit failed: {e}"))
            })?;
            cov.valid_commits.fetch_add(1, Ordering::Relaxed);
            case.committed = work;
            check(new.generation() == old.generation() + 1, || {
                "generation did not advance by one".into()
            })?;
            check(stats.generation == new.generation(), || {
                "stats.generation".into()
            })?;
            check(stats.ranges == new.ranges().len(), || "stats.ranges".into())?;
            let diff = FlatDiff::between(&old, &new);
            check(
                (stats.removed, stats.added) == (diff.removed.len(), diff.added.len()),
                || "stats counts differ from the diff".into(),
            )?;
            check(
                same_ranges(&apply(old.ranges(), &diff), new.ranges()),
                || "old + diff != new".into(),
            )?;
            // Exactness: nothing unchanged is reported.
            for r in &diff.removed {
                check(!new.ranges().iter().any(|x| x.same_mapping(r)), || {
                    format!("unchanged range reported removed: {r:?}")
                })?;
            }
            for r in &diff.added {
                check(!old.ranges().iter().any(|x| x.same_mapping(r)), || {
                    format!("unchanged range reported added: {r:?}")
                })?;
            }
            true
        }
        Err((why, _)) => {
            let kind = match &result {
                Err(MemoryError::Cycle(_)) => Invalid::Cycle,
                Err(MemoryError::SamePriorityOverlap { .. }) => Invalid::Overlap,
                other => {
                    return Err(TestCaseError::fail(format!(
                        "model says {why:?}, commit gave {other:?}\ndump:\n{}",
                        case.space.dump()
                    )));
                }
            };
            check(kind == why, || {
                format!("model says {why:?}, commit says {kind:?}")
            })?;
            match why {
                Invalid::Cycle => cov.cycles.fetch_add(1, Ordering::Relaxed),
                Invalid::Overlap => cov.overlaps.fetch_add(1, Ordering::Relaxed),
            };
            // Nothing changed: the very same view is still published.
            check(Arc::ptr_eq(&old, &new), || {
                "view changed on a failed commit".into()
            })?;
            false
        }
    };
    check_view(case, &new, cov)?;
    // The committed tree is exactly the model (regions of failed batches are gone).
    for &id in case.committed.regions.keys() {
        check(
            case.space.region(id) == Some(case.committed.info(id)),
            || format!("region {id} differs from the model"),
        )?;
        let mut want: Vec<(RegionId, u64, i32)> = case.committed.children(id);
        want.sort_by_key(|&(c, off, prio)| (std::cmp::Reverse(prio), off, c));
        let want: Vec<RegionId> = want.into_iter().map(|(c, _, _)| c).collect();
        check(case.space.children(id) == want, || {
            format!("children of {id}")
        })?;
    }
    let live: Vec<RegionId> = case.committed.regions.keys().copied().collect();
    check(case.space.region_ids() == live, || {
        "live regions differ from the model (a failed batch leaked?)".into()
    })?;
    Ok(committed)
}

fn run_case(ops: &[Op], cov: &Coverage) -> Result<(), TestCaseError> {
    let mut case = Case::new();
    for batch in ops.split(|op| matches!(op, Op::Commit)) {
        if !commit_batch(&mut case, batch, false, cov)? {
            // Same batch again (the model interprets it the same way), minus what broke it.
            check(commit_batch(&mut case, batch, true, cov)?, || {
                "repaired batch still failed".into()
            })?;
        }
    }
    Ok(())
}

#[test]
fn flat_view_matches_naive_model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let cov = Coverage::default();
    // A few regions first (so there is something to place), then anything, commits included.
    let strategy = (
        prop::collection::vec(create_op(), 0..8),
        prop::collection::vec(op(), 1..80),
    )
        .prop_map(|(mut build, ops)| {
            build.extend(ops);
            build
        });
    if let Err(e) = runner.run(&strategy, |ops| run_case(&ops, &cov)) {
        panic!("{e}");
    }
    let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let summary = format!(
        "valid commits {}, non-empty views {}, views with >= 3 leaves {}, cycles {}, overlaps {}, \
         views through aliases {} (>= 2 aliases {}, alias of container {}), refused ops {}",
        get(&cov.valid_commits),
        get(&cov.nonempty_views),
        get(&cov.rich_views),
        get(&cov.cycles),
        get(&cov.overlaps),
        get(&cov.alias_views),
        get(&cov.alias_chain_views),
        get(&cov.alias_of_container_views),
        get(&cov.op_errors),
    );
    println!("{summary}");
    // The random trees must reach the interesting situations, or the test proves little.
    let n = cases as usize;
    assert!(get(&cov.nonempty_views) >= n / 2, "{summary}");
    assert!(get(&cov.rich_views) >= n / 8, "{summary}");
    assert!(get(&cov.cycles) >= n / 64, "{summary}");
    assert!(get(&cov.overlaps) >= n / 16, "{summary}");
    assert!(get(&cov.alias_views) >= n / 4, "{summary}");
    assert!(get(&cov.alias_chain_views) >= n / 64, "{summary}");
    assert!(get(&cov.alias_of_container_views) >= n / 64, "{summary}");
}
