//! Unit tests of the region tree, rendering, transactions and listeners.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::*;

const P: u64 = PAGE_SIZE;

/// MMIO handler that counts accesses and answers reads with `tag + offset` (low byte first).
#[derive(Default)]
struct Counter {
    tag: u8,
    reads: AtomicU64,
    writes: AtomicU64,
    last_write: Mutex<Option<(u64, Vec<u8>)>>,
}

impl Counter {
    fn new(tag: u8) -> Arc<Self> {
        Arc::new(Self {
            tag,
            ..Self::default()
        })
    }
}

impl MmioHandler for Counter {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.tag.wrapping_add((offset as u8).wrapping_add(i as u8));
        }
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        *self.last_write.lock().unwrap() = Some((offset, data.to_vec()));
    }
}

fn mmio() -> Arc<dyn MmioHandler> {
    Counter::new(0)
}

fn backing(pages: u64) -> Arc<RamBacking> {
    RamBacking::memfd("test", pages * P).unwrap()
}

/// (start, len, region) of every range.
fn layout(v: &FlatView) -> Vec<(u64, u64, RegionId)> {
    v.ranges()
        .iter()
        .map(|r| (r.start, r.len, r.region))
        .collect()
}

fn ram_offset(r: &FlatRange) -> u64 {
    match &r.target {
        FlatTarget::Ram { offset, .. } => *offset,
        FlatTarget::Mmio { .. } => panic!("{r:?} is not RAM"),
    }
}

fn mmio_offset(r: &FlatRange) -> u64 {
    match &r.target {
        FlatTarget::Mmio { offset, .. } => *offset,
        FlatTarget::Ram { .. } => panic!("{r:?} is not MMIO"),
    }
}

/// Snapshot used to prove a failed operation changed nothing.
fn snapshot(space: &AddressSpace) -> (u64, Vec<(u64, u64, RegionId)>, String) {
    let v = space.view();
    (v.generation(), layout(&v), space.dump())
}

// ---------------------------------------------------------------- errors of single operations

#[test]
fn zero_size_is_refused_for_every_kind() {
    let mut space = AddressSpace::new("as", 16 * P);
    let b = backing(1);
    let mut t = space.begin();
    let c = t.add_container("c", P).unwrap();
    assert!(matches!(t.add_container("z", 0), Err(MemoryError::ZeroSize(n)) if n == "z"));
    assert!(matches!(
        t.add_ram("z", b, 0, 0, false),
        Err(MemoryError::ZeroSize(_))
    ));
    assert!(matches!(
        t.add_mmio("z", 0, mmio()),
        Err(MemoryError::ZeroSize(_))
    ));
    assert!(matches!(
        t.add_alias("z", c, 0, 0),
        Err(MemoryError::ZeroSize(_))
    ));
}

#[test]
fn unknown_and_removed_ids_are_no_such_region() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let bogus = RegionId(999);
    let mut t = space.begin();
    let c = t.add_container("c", P).unwrap();
    assert!(
        matches!(t.place(root, bogus, 0, 0), Err(MemoryError::NoSuchRegion(id)) if id == bogus)
    );
    assert!(matches!(
        t.place(bogus, c, 0, 0),
        Err(MemoryError::NoSuchRegion(_))
    ));
    assert!(matches!(
        t.add_alias("a", bogus, 0, P),
        Err(MemoryError::NoSuchRegion(_))
    ));
    assert!(matches!(
        t.set_enabled(bogus, true),
        Err(MemoryError::NoSuchRegion(_))
    ));
    t.remove(c).unwrap();
    assert!(matches!(
        t.place(root, c, 0, 0),
        Err(MemoryError::NoSuchRegion(_))
    ));
    assert!(matches!(t.remove(c), Err(MemoryError::NoSuchRegion(_))));
    assert!(t.region(c).is_none());
    t.commit().unwrap();
    assert!(space.region(c).is_none());
    assert!(space.region(bogus).is_none());
}

#[test]
fn ram_must_fit_its_backing() {
    let mut space = AddressSpace::new("as", 16 * P);
    let b = backing(4);
    let mut t = space.begin();
    t.add_ram("ok", b.clone(), P, 3 * P, false).unwrap();
    assert!(matches!(
        t.add_ram("big", b.clone(), P, 4 * P, false),
        Err(MemoryError::RamOutOfBacking { offset, size, backing_size, .. })
            if offset == P && size == 4 * P && backing_size == 4 * P
    ));
    assert!(matches!(
        t.add_ram("wrap", b, u64::MAX - P + 1, 2 * P, false),
        Err(MemoryError::RamOutOfBacking { .. })
    ));
}

#[test]
fn alias_must_fit_its_target() {
    let mut space = AddressSpace::new("as", 16 * P);
    let mut t = space.begin();
    let m = t.add_mmio("m", 4 * P, mmio()).unwrap();
    t.add_alias("ok", m, P, 3 * P).unwrap();
    assert!(matches!(
        t.add_alias("bad", m, P, 4 * P),
        Err(MemoryError::AliasOutOfRange { target_size, .. }) if target_size == 4 * P
    ));
    assert!(matches!(
        t.add_alias("wrap", m, u64::MAX, 2),
        Err(MemoryError::AliasOutOfRange { .. })
    ));
}

#[test]
fn place_checks_container_root_placement_and_fit() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let mut t = space.begin();
    let m = t.add_mmio("m", P, mmio()).unwrap();
    let m2 = t.add_mmio("m2", P, mmio()).unwrap();
    let c = t.add_container("c", 4 * P).unwrap();
    assert!(matches!(t.place(m, m2, 0, 0), Err(MemoryError::NotAContainer(n)) if n == "m"));
    assert!(matches!(t.place(c, root, 0, 0), Err(MemoryError::Root)));
    t.place(root, m, 0, 0).unwrap();
    assert!(matches!(t.place(c, m, 0, 0), Err(MemoryError::AlreadyPlaced(n)) if n == "m"));
    assert!(matches!(
        t.place(c, m2, 4 * P, 0),
        Err(MemoryError::OutOfParent { offset, parent_size, .. }) if offset == 4 * P && parent_size == 4 * P
    ));
    assert!(matches!(
        t.place(c, m2, u64::MAX, 0),
        Err(MemoryError::OutOfParent { .. })
    ));
    t.place(c, m2, 3 * P, 0).unwrap();
    assert_eq!(t.region(m2).unwrap().placement, Some((c, 3 * P, 0)));
}

#[test]
fn placing_a_container_inside_itself_is_a_cycle() {
    let mut space = AddressSpace::new("as", 16 * P);
    let mut t = space.begin();
    let a = t.add_container("a", 4 * P).unwrap();
    let b = t.add_container("b", 4 * P).unwrap();
    assert!(matches!(t.place(a, a, 0, 0), Err(MemoryError::Cycle(_))));
    t.place(a, b, 0, 0).unwrap();
    assert!(matches!(t.place(b, a, 0, 0), Err(MemoryError::Cycle(n)) if n == "a"));
}

#[test]
fn unplaced_and_root_regions_refuse_moves() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let mut t = space.begin();
    let m = t.add_mmio("m", P, mmio()).unwrap();
    assert!(matches!(t.unplace(m), Err(MemoryError::NotPlaced(n)) if n == "m"));
    assert!(matches!(t.set_offset(m, 0), Err(MemoryError::NotPlaced(_))));
    assert!(matches!(
        t.set_priority(m, 1),
        Err(MemoryError::NotPlaced(_))
    ));
    assert!(matches!(t.unplace(root), Err(MemoryError::Root)));
    assert!(matches!(t.set_offset(root, 0), Err(MemoryError::Root)));
    assert!(matches!(t.set_priority(root, 1), Err(MemoryError::Root)));
    assert!(matches!(t.set_enabled(root, false), Err(MemoryError::Root)));
    t.set_enabled(root, true).unwrap();
    assert!(matches!(t.remove(root), Err(MemoryError::Root)));
}

#[test]
fn set_offset_rechecks_fit() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let mut t = space.begin();
    let m = t.add_mmio("m", 2 * P, mmio()).unwrap();
    t.place(root, m, 0, 0).unwrap();
    t.set_offset(m, 14 * P).unwrap();
    assert!(matches!(
        t.set_offset(m, 15 * P),
        Err(MemoryError::OutOfParent { .. })
    ));
    assert!(matches!(
        t.set_offset(m, u64::MAX),
        Err(MemoryError::OutOfParent { .. })
    ));
    assert_eq!(t.region(m).unwrap().placement, Some((root, 14 * P, 0)));
}

#[test]
fn remove_refuses_regions_in_use() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let mut t = space.begin();
    let c = t.add_container("c", 4 * P).unwrap();
    let m = t.add_mmio("m", P, mmio()).unwrap();
    let target = t.add_mmio("target", P, mmio()).unwrap();
    let alias = t.add_alias("alias", target, 0, P).unwrap();
    t.place(root, c, 0, 0).unwrap();
    t.place(c, m, 0, 0).unwrap();
    assert!(matches!(t.remove(c), Err(MemoryError::InUse(n)) if n == "c")); // placed
    t.unplace(c).unwrap();
    assert!(matches!(t.remove(c), Err(MemoryError::InUse(_)))); // has a child
    assert!(matches!(t.remove(target), Err(MemoryError::InUse(_)))); // alias target
    t.unplace(m).unwrap();
    t.remove(c).unwrap();
    t.remove(m).unwrap();
    t.remove(alias).unwrap();
    t.remove(target).unwrap();
    t.commit().unwrap();
    for id in [c, m, alias, target] {
        assert!(space.region(id).is_none());
    }
}

// ---------------------------------------------------------------- errors at commit

#[test]
fn same_priority_overlap_fails_commit_and_changes_nothing() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let mut t = space.begin();
    let a = t.add_mmio("a", 4 * P, mmio()).unwrap();
    let b = t.add_mmio("b", 4 * P, mmio()).unwrap();
    t.place(root, a, 0, 1).unwrap();
    t.place(root, b, 4 * P, 1).unwrap();
    t.commit().unwrap();
    let before = snapshot(&space);

    let mut t = space.begin();
    t.set_offset(b, 3 * P).unwrap();
    let err = t.commit().unwrap_err();
    assert!(
        matches!(&err, MemoryError::SamePriorityOverlap { parent, a, b, priority: 1 }
            if parent == "as" && a == "a" && b == "b"),
        "{err}"
    );
    assert_eq!(snapshot(&space), before);
    assert_eq!(space.region(b).unwrap().placement, Some((root, 4 * P, 1)));

    // A different priority, or a disabled sibling, makes the same overlap legal.
    let mut t = space.begin();
    t.set_offset(b, 3 * P).unwrap();
    t.set_enabled(b, false).unwrap();
    t.commit().unwrap();
    let mut t = space.begin();
    t.set_enabled(b, true).unwrap();
    t.set_priority(b, 2).unwrap();
    t.commit().unwrap();
    assert_eq!(
        layout(&space.view()),
        vec![(0, 3 * P, a), (3 * P, 4 * P, b)]
    );
}

#[test]
fn overlap_is_checked_in_containers_reached_only_through_aliases() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let mut t = space.begin();
    let c = t.add_container("hidden", 4 * P).unwrap();
    let x = t.add_mmio("x", 2 * P, mmio()).unwrap();
    let y = t.add_mmio("y", 2 * P, mmio()).unwrap();
    t.place(c, x, 0, 0).unwrap();
    t.place(c, y, P, 0).unwrap();
    // Not reachable: fine.
    t.commit().unwrap();
    let before = snapshot(&space);

    let mut t = space.begin();
    let alias = t.add_alias("window", c, 0, 4 * P).unwrap();
    t.place(root, alias, 0, 0).unwrap();
    assert!(matches!(
        t.commit(),
        Err(MemoryError::SamePriorityOverlap { parent, .. }) if parent == "hidden"
    ));
    assert_eq!(snapshot(&space), before);

    // With the alias disabled the container is unreachable again.
    let mut t = space.begin();
    let alias = t.add_alias("window", c, 0, 4 * P).unwrap();
    t.place(root, alias, 0, 0).unwrap();
    t.set_enabled(alias, false).unwrap();
    t.commit().unwrap();
}

#[test]
fn alias_whose_target_contains_it_is_a_cycle() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let before = snapshot(&space);
    let mut t = space.begin();
    let c = t.add_container("c", 4 * P).unwrap();
    let loop_alias = t.add_alias("loop", c, 0, 2 * P).unwrap();
    t.place(c, loop_alias, 2 * P, 0).unwrap();
    t.place(root, c, 0, 0).unwrap();
    assert!(matches!(t.commit(), Err(MemoryError::Cycle(_))));
    assert_eq!(snapshot(&space), before);

    // An alias of the root placed in the root loops too.
    let mut t = space.begin();
    let a = t.add_alias("root-alias", root, 0, P).unwrap();
    t.place(root, a, 0, 0).unwrap();
    assert!(matches!(t.commit(), Err(MemoryError::Cycle(_))));

    // A loop through a disabled alias is never walked.
    let mut t = space.begin();
    let c = t.add_container("c", 4 * P).unwrap();
    let loop_alias = t.add_alias("loop", c, 0, 2 * P).unwrap();
    t.place(c, loop_alias, 2 * P, 0).unwrap();
    t.place(root, c, 0, 0).unwrap();
    t.set_enabled(loop_alias, false).unwrap();
    t.commit().unwrap();
    assert_eq!(space.view().generation(), 1);
}

/// Root plus `containers` nested containers plus one leaf.
fn nested(containers: usize) -> Result<CommitStats, MemoryError> {
    let mut space = AddressSpace::new("as", 16 * P);
    let mut t = space.begin();
    let mut parent = t.root();
    for i in 0..containers {
        let c = t.add_container(&format!("c{i}"), 16 * P)?;
        t.place(parent, c, 0, 0)?;
        parent = c;
    }
    let m = t.add_mmio("leaf", P, mmio())?;
    t.place(parent, m, 0, 0)?;
    t.commit()
}

#[test]
fn nesting_deeper_than_max_depth_is_refused() {
    assert!(nested(MAX_DEPTH - 2).is_ok());
    assert!(matches!(nested(MAX_DEPTH - 1), Err(MemoryError::Cycle(_))));
    assert!(matches!(nested(200), Err(MemoryError::Cycle(_))));
}

#[test]
fn depth_counts_paths_through_aliases() {
    // A chain of aliases of aliases: depth = root + aliases + leaf.
    let run = |aliases: usize| {
        let mut space = AddressSpace::new("as", 16 * P);
        let mut t = space.begin();
        let mut target = t.add_mmio("leaf", P, mmio()).unwrap();
        for i in 0..aliases {
            target = t.add_alias(&format!("a{i}"), target, 0, P).unwrap();
        }
        let root = t.root();
        t.place(root, target, 0, 0).unwrap();
        t.commit()
    };
    assert!(run(MAX_DEPTH - 2).is_ok());
    assert!(matches!(run(MAX_DEPTH - 1), Err(MemoryError::Cycle(_))));
}

#[test]
fn misaligned_ram_fails_commit_but_mmio_may_be_unaligned() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let b = backing(4);
    let before = snapshot(&space);

    let cases: [(u64, u64, u64); 3] = [(0x800, 0, P), (0, 0x800, P), (0, 0, 0x800)];
    for (place_at, backing_off, size) in cases {
        let mut t = space.begin();
        let r = t
            .add_ram("ram", b.clone(), backing_off, size, false)
            .unwrap();
        t.place(root, r, place_at, 0).unwrap();
        assert!(
            matches!(t.commit(), Err(MemoryError::MisalignedRam { .. })),
            "{place_at:#x} {backing_off:#x} {size:#x}"
        );
        assert_eq!(snapshot(&space), before);
    }

    // A higher-priority MMIO region cutting RAM mid-page misaligns the visible RAM.
    let mut t = space.begin();
    let r = t.add_ram("ram", b.clone(), 0, 2 * P, false).unwrap();
    let m = t.add_mmio("m", 0x10, mmio()).unwrap();
    t.place(root, r, 0, 0).unwrap();
    t.place(root, m, 0x100, 1).unwrap();
    assert!(matches!(
        t.commit(),
        Err(MemoryError::MisalignedRam {
            start: 0,
            len: 0x100,
            ..
        })
    ));

    let mut t = space.begin();
    let m = t.add_mmio("m", 0x10, mmio()).unwrap();
    t.place(root, m, 0x104, 0).unwrap();
    t.commit().unwrap();
    assert_eq!(layout(&space.view()), vec![(0x104, 0x10, m)]);
}

// ---------------------------------------------------------------- rendering

#[test]
fn higher_priority_wins_and_container_holes_are_transparent() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let b = backing(16);
    let mut t = space.begin();
    let ram = t.add_ram("ram", b.clone(), 0, 16 * P, false).unwrap();
    let dev = t.add_container("dev", 8 * P).unwrap();
    let m1 = t.add_mmio("m1", P, mmio()).unwrap();
    let m2 = t.add_mmio("m2", 2 * P, mmio()).unwrap();
    let under = t.add_mmio("under", 8 * P, mmio()).unwrap();
    t.place(root, ram, 0, 0).unwrap();
    t.place(root, dev, 4 * P, 1).unwrap();
    t.place(dev, m1, P, 0).unwrap();
    t.place(dev, m2, 5 * P, 0).unwrap();
    // Lower than `dev` but higher than `ram`: shows through dev's holes, hides ram there.
    t.place(root, under, 2 * P, 0).unwrap();
    // Same priority as `under` and overlapping it until lowered below it.
    t.set_priority(ram, -1).unwrap();
    let stats = t.commit().unwrap();
    assert_eq!(stats.generation, 1);

    let v = space.view();
    assert_eq!(
        layout(&v),
        vec![
            (0, 2 * P, ram),
            (2 * P, 3 * P, under),
            (5 * P, P, m1),
            (6 * P, 3 * P, under),
            (9 * P, 2 * P, m2),
            (11 * P, 5 * P, ram),
        ]
    );
    let r = v.ranges();
    assert_eq!(ram_offset(&r[0]), 0);
    assert_eq!(mmio_offset(&r[1]), 0);
    assert_eq!(mmio_offset(&r[2]), 0);
    assert_eq!(mmio_offset(&r[3]), 4 * P);
    assert_eq!(ram_offset(&r[5]), 11 * P);
    assert_eq!(&*r[4].name, "m2");
    assert_eq!(stats.ranges, 6);
    assert_eq!(stats.added, 6);
    assert_eq!(stats.removed, 0);
}

#[test]
fn aliases_of_aliases_compose_offsets() {
    let mut space = AddressSpace::new("as", 32 * P);
    let root = space.root();
    let b = backing(16);
    let mut t = space.begin();
    let ram = t.add_ram("ram", b.clone(), 2 * P, 12 * P, true).unwrap(); // backing pages 2..14
    let a1 = t.add_alias("a1", ram, 3 * P, 8 * P).unwrap(); // ram pages 3..11 = backing 5..13
    let a2 = t.add_alias("a2", a1, 2 * P, 4 * P).unwrap(); // a1 pages 2..6 = backing 7..11
    t.place(root, a2, 20 * P, 0).unwrap();
    t.commit().unwrap();
    let v = space.view();
    assert_eq!(layout(&v), vec![(20 * P, 4 * P, ram)]);
    assert_eq!(ram_offset(&v.ranges()[0]), 7 * P);
    assert!(matches!(
        v.ranges()[0].target,
        FlatTarget::Ram { readonly: true, .. }
    ));
    assert!(Arc::ptr_eq(
        match &v.ranges()[0].target {
            FlatTarget::Ram { backing, .. } => backing,
            FlatTarget::Mmio { .. } => unreachable!(),
        },
        &b
    ));
}

#[test]
fn alias_windows_clip_their_target() {
    let mut space = AddressSpace::new("as", 32 * P);
    let root = space.root();
    let mut t = space.begin();
    let c = t.add_container("c", 10 * P).unwrap();
    let m1 = t.add_mmio("m1", 4 * P, mmio()).unwrap();
    let m2 = t.add_mmio("m2", 4 * P, mmio()).unwrap();
    t.place(c, m1, 0, 0).unwrap();
    t.place(c, m2, 6 * P, 0).unwrap();
    // Window [2, 8) of c: the tail of m1, a hole, the head of m2.
    let w = t.add_alias("w", c, 2 * P, 6 * P).unwrap();
    t.place(root, w, 16 * P, 0).unwrap();
    t.commit().unwrap();
    let v = space.view();
    assert_eq!(layout(&v), vec![(16 * P, 2 * P, m1), (20 * P, 2 * P, m2)]);
    assert_eq!(mmio_offset(&v.ranges()[0]), 2 * P);
    assert_eq!(mmio_offset(&v.ranges()[1]), 0);

    // Nested windows: `ow` shows [2, 4) of `outer`, where alias `w2` (m2 pages 1..4) sits at
    // page 1, so only w2's pages 1..3 = m2 pages 2..4 are visible.
    let mut t = space.begin();
    let outer = t.add_container("outer", 4 * P).unwrap();
    let w2 = t.add_alias("w2", m2, P, 3 * P).unwrap();
    t.place(outer, w2, P, 0).unwrap();
    let ow = t.add_alias("ow", outer, 2 * P, 2 * P).unwrap();
    t.place(root, ow, 8 * P, 0).unwrap();
    t.commit().unwrap();
    let v = space.view();
    assert_eq!(layout(&v)[0], (8 * P, 2 * P, m2));
    assert_eq!(mmio_offset(&v.ranges()[0]), 2 * P);
}

#[test]
fn disable_and_enable_hide_regions_everywhere() {
    let mut space = AddressSpace::new("as", 32 * P);
    let root = space.root();
    let mut t = space.begin();
    let low = t.add_mmio("low", 8 * P, mmio()).unwrap();
    let high = t.add_mmio("high", 2 * P, mmio()).unwrap();
    let alias = t.add_alias("alias", high, 0, 2 * P).unwrap();
    t.place(root, low, 0, 0).unwrap();
    t.place(root, high, 2 * P, 1).unwrap();
    t.place(root, alias, 16 * P, 0).unwrap();
    t.commit().unwrap();
    assert_eq!(
        layout(&space.view()),
        vec![
            (0, 2 * P, low),
            (2 * P, 2 * P, high),
            (4 * P, 4 * P, low),
            (16 * P, 2 * P, high)
        ]
    );

    let mut t = space.begin();
    t.set_enabled(high, false).unwrap();
    t.commit().unwrap();
    // Disabled: gone at its own place and through the alias; `low` shows through again.
    assert_eq!(layout(&space.view()), vec![(0, 8 * P, low)]);
    assert!(!space.region(high).unwrap().enabled);

    let mut t = space.begin();
    t.set_enabled(high, true).unwrap();
    t.set_enabled(alias, false).unwrap();
    t.commit().unwrap();
    assert_eq!(
        layout(&space.view()),
        vec![(0, 2 * P, low), (2 * P, 2 * P, high), (4 * P, 4 * P, low)]
    );
}

#[test]
fn moving_a_region_moves_its_range_and_diffs_exactly() {
    let mut space = AddressSpace::new("as", 32 * P);
    let root = space.root();
    let b = backing(8);
    let mut t = space.begin();
    let ram = t.add_ram("ram", b, 0, 8 * P, false).unwrap();
    let m = t.add_mmio("m", P, mmio()).unwrap();
    t.place(root, ram, 0, 0).unwrap();
    t.place(root, m, 16 * P, 0).unwrap();
    t.commit().unwrap();
    let old = space.view();

    let mut t = space.begin();
    t.set_offset(m, 20 * P).unwrap();
    let stats = t.commit().unwrap();
    let new = space.view();
    assert_eq!(layout(&new), vec![(0, 8 * P, ram), (20 * P, P, m)]);
    assert_eq!(space.region(m).unwrap().placement, Some((root, 20 * P, 0)));
    assert_eq!((stats.removed, stats.added, stats.generation), (1, 1, 2));
    let diff = FlatDiff::between(&old, &new);
    assert_eq!(layout_of(&diff.removed), vec![(16 * P, P, m)]);
    assert_eq!(layout_of(&diff.added), vec![(20 * P, P, m)]);

    // Unplace and place elsewhere.
    let mut t = space.begin();
    t.unplace(ram).unwrap();
    t.place(root, ram, 24 * P, 3).unwrap();
    t.commit().unwrap();
    assert_eq!(
        layout(&space.view()),
        vec![(20 * P, P, m), (24 * P, 8 * P, ram)]
    );
    assert_eq!(ram_offset(&space.view().ranges()[1]), 0);
}

fn layout_of(ranges: &[FlatRange]) -> Vec<(u64, u64, RegionId)> {
    ranges.iter().map(|r| (r.start, r.len, r.region)).collect()
}

#[test]
fn contiguous_pieces_of_one_leaf_merge() {
    let mut space = AddressSpace::new("as", 32 * P);
    let root = space.root();
    let b = backing(8);
    let mut t = space.begin();
    let ram = t.add_ram("ram", b, 0, 8 * P, false).unwrap();
    // Two aliases showing consecutive halves of the RAM next to each other.
    let lo = t.add_alias("lo", ram, 0, 4 * P).unwrap();
    let hi = t.add_alias("hi", ram, 4 * P, 4 * P).unwrap();
    t.place(root, lo, 8 * P, 0).unwrap();
    t.place(root, hi, 12 * P, 0).unwrap();
    // And two showing the same half twice (not contiguous in the backing: no merge).
    let x = t.add_alias("x", ram, 0, 2 * P).unwrap();
    let y = t.add_alias("y", ram, 0, 2 * P).unwrap();
    t.place(root, x, 20 * P, 0).unwrap();
    t.place(root, y, 22 * P, 0).unwrap();
    t.commit().unwrap();
    let v = space.view();
    assert_eq!(
        layout(&v),
        vec![
            (8 * P, 8 * P, ram),
            (20 * P, 2 * P, ram),
            (22 * P, 2 * P, ram)
        ]
    );

    // A higher-priority region splitting RAM, then removed: one range again.
    let mut t = space.begin();
    let m = t.add_mmio("m", P, mmio()).unwrap();
    t.place(root, m, 10 * P, 1).unwrap();
    t.commit().unwrap();
    assert_eq!(
        layout(&space.view())[..3],
        [(8 * P, 2 * P, ram), (10 * P, P, m), (11 * P, 5 * P, ram)]
    );
    let mut t = space.begin();
    t.unplace(m).unwrap();
    t.commit().unwrap();
    assert_eq!(layout(&space.view())[0], (8 * P, 8 * P, ram));
}

#[test]
fn root_sized_to_the_top_of_the_address_space_renders() {
    let mut space = AddressSpace::new("as", u64::MAX);
    let root = space.root();
    let mut t = space.begin();
    let m = t.add_mmio("top", 0x10, mmio()).unwrap();
    t.place(root, m, u64::MAX - 0x10, 0).unwrap();
    let big = t.add_mmio("big", u64::MAX, mmio()).unwrap();
    let a = t.add_alias("a", big, u64::MAX - 0x20, 0x20).unwrap();
    t.place(root, a, 0, 0).unwrap();
    t.commit().unwrap();
    let v = space.view();
    assert_eq!(layout(&v), vec![(0, 0x20, big), (u64::MAX - 0x10, 0x10, m)]);
    assert_eq!(mmio_offset(&v.ranges()[0]), u64::MAX - 0x20);
    // One byte of `top`, the unassigned last byte, then two bytes of the alias after wrapping.
    let mut out = [0u8; 4];
    let outcome = v.read(u64::MAX - 1, &mut out);
    assert_eq!(
        outcome,
        AccessOutcome {
            ram_bytes: 0,
            mmio_bytes: 3,
            unassigned_bytes: 1
        }
    );
}

// ---------------------------------------------------------------- transactions and listeners

#[test]
fn dropped_transaction_discards_and_empty_commit_bumps_generation() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let before = snapshot(&space);
    let m;
    {
        let mut t = space.begin();
        m = t.add_mmio("m", P, mmio()).unwrap();
        t.place(root, m, 0, 0).unwrap();
    }
    assert_eq!(snapshot(&space), before);
    assert!(space.region(m).is_none());
    assert_eq!(space.view().generation(), 0);

    let stats = space.begin().commit().unwrap();
    assert_eq!(
        stats,
        CommitStats {
            generation: 1,
            ranges: 0,
            removed: 0,
            added: 0
        }
    );
    let stats = space.begin().commit().unwrap();
    assert_eq!(stats.generation, 2);
    assert_eq!(space.view().generation(), 2);
    assert_eq!(space.generation(), 2);

    // Ids of discarded regions are not handed out again.
    let mut t = space.begin();
    let n = t.add_mmio("n", P, mmio()).unwrap();
    assert_ne!(n, m);
}

type Log = Arc<Mutex<Vec<String>>>;

/// Listener that logs each call with the generation of the view it is given and the generation
/// the shared handle shows at that moment.
struct Recorder {
    name: &'static str,
    log: Log,
    handle: FlatViewHandle,
    /// Fail `prepare` for views of this generation.
    fail_on: Option<u64>,
}

fn fmt_ranges(ranges: &[FlatRange]) -> String {
    let v: Vec<String> = ranges
        .iter()
        .map(|r| format!("{}@{:#x}+{:#x}", r.name, r.start, r.len))
        .collect();
    v.join(",")
}

impl MemoryListener for Recorder {
    fn prepare(&mut self, diff: &FlatDiff, new: &FlatView) -> Result<(), ListenerError> {
        self.log.lock().unwrap().push(format!(
            "{} prepare new=g{} published=g{} -[{}] +[{}]",
            self.name,
            new.generation(),
            self.handle.load().generation(),
            fmt_ranges(&diff.removed),
            fmt_ranges(&diff.added)
        ));
        if self.fail_on == Some(new.generation()) {
            return Err(format!("{} refuses", self.name).into());
        }
        Ok(())
    }

    fn finish(&mut self, diff: &FlatDiff, new: &FlatView) {
        self.log.lock().unwrap().push(format!(
            "{} finish new=g{} published=g{} -[{}] +[{}]",
            self.name,
            new.generation(),
            self.handle.load().generation(),
            fmt_ranges(&diff.removed),
            fmt_ranges(&diff.added)
        ));
    }
}

fn recorder(
    space: &AddressSpace,
    name: &'static str,
    log: &Log,
    fail_on: Option<u64>,
) -> Box<Recorder> {
    Box::new(Recorder {
        name,
        log: log.clone(),
        handle: space.view_handle(),
        fail_on,
    })
}

fn take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn listeners_prepare_before_publication_and_finish_after() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let log = Log::default();
    let mut t = space.begin();
    let m = t.add_mmio("m", P, mmio()).unwrap();
    t.place(root, m, 0, 0).unwrap();
    t.commit().unwrap();

    // A late listener catches up with a diff from the empty view.
    space
        .add_listener(recorder(&space, "a", &log, None))
        .unwrap();
    assert_eq!(
        take(&log),
        [
            "a prepare new=g1 published=g1 -[] +[m@0x0+0x1000]",
            "a finish new=g1 published=g1 -[] +[m@0x0+0x1000]"
        ]
    );
    space
        .add_listener(recorder(&space, "b", &log, None))
        .unwrap();
    take(&log);

    let mut t = space.begin();
    t.set_offset(m, P).unwrap();
    t.commit().unwrap();
    assert_eq!(
        take(&log),
        [
            "a prepare new=g2 published=g1 -[m@0x0+0x1000] +[m@0x1000+0x1000]",
            "b prepare new=g2 published=g1 -[m@0x0+0x1000] +[m@0x1000+0x1000]",
            "a finish new=g2 published=g2 -[m@0x0+0x1000] +[m@0x1000+0x1000]",
            "b finish new=g2 published=g2 -[m@0x0+0x1000] +[m@0x1000+0x1000]",
        ]
    );
}

#[test]
fn failing_listener_rolls_back_the_earlier_ones_and_changes_nothing() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let log = Log::default();
    let mut t = space.begin();
    let m = t.add_mmio("m", P, mmio()).unwrap();
    t.place(root, m, 0, 0).unwrap();
    t.commit().unwrap();
    space
        .add_listener(recorder(&space, "a", &log, None))
        .unwrap();
    space
        .add_listener(recorder(&space, "b", &log, Some(2)))
        .unwrap();
    space
        .add_listener(recorder(&space, "c", &log, None))
        .unwrap();
    take(&log);
    let before = snapshot(&space);

    let mut t = space.begin();
    t.set_offset(m, P).unwrap();
    let err = t.commit().unwrap_err();
    assert!(matches!(&err, MemoryError::Listener(e) if e.to_string() == "b refuses"));
    assert_eq!(
        take(&log),
        [
            "a prepare new=g2 published=g1 -[m@0x0+0x1000] +[m@0x1000+0x1000]",
            "b prepare new=g2 published=g1 -[m@0x0+0x1000] +[m@0x1000+0x1000]",
            // a undoes: the reversed diff against the old view; c was never asked.
            "a prepare new=g1 published=g1 -[m@0x1000+0x1000] +[m@0x0+0x1000]",
        ]
    );
    assert_eq!(snapshot(&space), before);
    assert_eq!(space.region(m).unwrap().placement, Some((root, 0, 0)));
}

#[test]
fn listener_refusing_the_catch_up_is_not_registered() {
    let mut space = AddressSpace::new("as", 16 * P);
    let log = Log::default();
    assert!(matches!(
        space.add_listener(recorder(&space, "x", &log, Some(0))),
        Err(MemoryError::Listener(_))
    ));
    assert_eq!(take(&log), ["x prepare new=g0 published=g0 -[] +[]"]);
    space.begin().commit().unwrap();
    assert!(take(&log).is_empty());
}

// ---------------------------------------------------------------- diff

#[test]
fn flat_diff_is_exact() {
    let b = backing(8);
    let h: Arc<dyn MmioHandler> = mmio();
    let ram = |start, len, offset, name: &str| FlatRange {
        start,
        len,
        region: RegionId(1),
        name: name.into(),
        target: FlatTarget::Ram {
            backing: b.clone(),
            offset,
            readonly: false,
        },
    };
    let dev = |start, len, region, offset| FlatRange {
        start,
        len,
        region: RegionId(region),
        name: "dev".into(),
        target: FlatTarget::Mmio {
            handler: h.clone(),
            offset,
        },
    };
    let old = FlatView::from_sorted(
        vec![
            ram(0, P, 0, "same"),
            ram(P, P, P, "len-changes"),
            dev(4 * P, P, 2, 0),
            dev(6 * P, P, 2, 0),
            dev(8 * P, P, 2, 0),
            dev(10 * P, P, 2, 0),
        ],
        1,
    );
    let new = FlatView::from_sorted(
        vec![
            ram(0, P, 0, "renamed-only"),
            ram(P, 2 * P, P, "len-changes"),
            dev(4 * P, P, 2, 0x10), // offset changes
            dev(6 * P, P, 3, 0),    // region changes
            dev(9 * P, P, 2, 0),    // moved
            dev(10 * P, P, 2, 0),   // same
            dev(12 * P, P, 2, 0),   // new
        ],
        2,
    );
    let d = FlatDiff::between(&old, &new);
    let starts = |rs: &[FlatRange]| rs.iter().map(|r| r.start / P).collect::<Vec<_>>();
    assert_eq!(starts(&d.removed), vec![1, 4, 6, 8]);
    assert_eq!(starts(&d.added), vec![1, 4, 6, 9, 12]);
    assert_eq!(d.added[0].len, 2 * P);
    assert_eq!(mmio_offset(&d.added[1]), 0x10);
    assert_eq!(d.added[2].region, RegionId(3));

    let back = d.reversed();
    assert_eq!(starts(&back.removed), vec![1, 4, 6, 9, 12]);
    assert_eq!(starts(&back.added), vec![1, 4, 6, 8]);

    assert!(FlatDiff::between(&old, &old).is_empty());
    let empty = FlatView::default();
    assert_eq!(FlatDiff::between(&empty, &old).added.len(), 6);
    assert_eq!(FlatDiff::between(&old, &empty).removed.len(), 6);

    // A different backing with the same offset is a different target.
    let other = backing(8);
    let swapped = FlatView::from_sorted(
        vec![FlatRange {
            target: FlatTarget::Ram {
                backing: other,
                offset: 0,
                readonly: false,
            },
            ..ram(0, P, 0, "same")
        }],
        3,
    );
    let first = FlatView::from_sorted(vec![ram(0, P, 0, "same")], 2);
    let d = FlatDiff::between(&first, &swapped);
    assert_eq!((d.removed.len(), d.added.len()), (1, 1));
}

// ---------------------------------------------------------------- access dispatch

#[test]
fn reads_and_writes_dispatch_across_ram_mmio_and_holes() {
    let mut space = AddressSpace::new("as", 16 * P);
    let root = space.root();
    let b = backing(2);
    let dev = Counter::new(0x40);
    let rom_b = backing(1);
    rom_b.write(0, &[0x5a; 8]).unwrap();
    let mut t = space.begin();
    let ram = t.add_ram("ram", b.clone(), 0, P, false).unwrap();
    let m = t.add_mmio("dev", P, dev.clone()).unwrap();
    let rom = t.add_ram("rom", rom_b.clone(), 0, P, true).unwrap();
    t.place(root, ram, 0, 0).unwrap(); // [0, 1P)
    t.place(root, m, P, 0).unwrap(); // [1P, 2P), then a hole [2P, 3P)
    t.place(root, rom, 3 * P, 0).unwrap(); // [3P, 4P)
    t.commit().unwrap();
    let v = space.view();

    // RAM -> MMIO boundary: 4 bytes each side; the MMIO piece (4 bytes) is one access.
    let data = [1, 2, 3, 4, 5, 6, 7, 8];
    let out = v.write(P - 4, &data);
    assert_eq!(
        out,
        AccessOutcome {
            ram_bytes: 4,
            mmio_bytes: 4,
            unassigned_bytes: 0
        }
    );
    let mut ram_bytes = [0u8; 4];
    b.read(P - 4, &mut ram_bytes).unwrap();
    assert_eq!(ram_bytes, [1, 2, 3, 4]);
    assert_eq!(dev.writes.load(Ordering::Relaxed), 1);
    assert_eq!(*dev.last_write.lock().unwrap(), Some((0, vec![5, 6, 7, 8])));

    // MMIO -> hole: 3 bytes of MMIO (issued byte by byte), 2 bytes of hole read as 0xff.
    let mut buf = [0u8; 5];
    let out = v.read(2 * P - 3, &mut buf);
    assert_eq!(
        out,
        AccessOutcome {
            ram_bytes: 0,
            mmio_bytes: 3,
            unassigned_bytes: 2
        }
    );
    let off = (P - 3) as u8;
    assert_eq!(
        buf,
        [
            0x40u8.wrapping_add(off),
            0x40u8.wrapping_add(off + 1),
            0x40u8.wrapping_add(off + 2),
            0xff,
            0xff
        ]
    );
    assert_eq!(dev.reads.load(Ordering::Relaxed), 3);

    // Hole -> read-only RAM: writes to both are dropped, the ROM bytes stay.
    let out = v.write(3 * P - 2, &[0; 6]);
    assert_eq!(
        out,
        AccessOutcome {
            ram_bytes: 4,
            mmio_bytes: 0,
            unassigned_bytes: 2
        }
    );
    let mut rom_bytes = [0u8; 4];
    rom_b.read(0, &mut rom_bytes).unwrap();
    assert_eq!(rom_bytes, [0x5a; 4]);
    let mut buf = [0u8; 6];
    v.read(3 * P - 2, &mut buf);
    assert_eq!(buf, [0xff, 0xff, 0x5a, 0x5a, 0x5a, 0x5a]);

    // Past the end of everything, wrapping around the top of the address space.
    let mut buf = [0u8; 4];
    let out = v.read(u64::MAX - 1, &mut buf);
    // Two unassigned bytes at the top, then two RAM bytes at address 0.
    assert_eq!((out.unassigned_bytes, out.ram_bytes), (2, 2));
    assert_eq!(buf[..2], [0xff, 0xff]);
}

// ---------------------------------------------------------------- dumps and speed

#[test]
fn dump_and_display_describe_tree_and_view() {
    let mut space = AddressSpace::new("sys", 16 * P);
    let root = space.root();
    let b = backing(4);
    let mut t = space.begin();
    let ram = t.add_ram("ram0", b, 0, 4 * P, false).unwrap();
    let c = t.add_container("pci", 8 * P).unwrap();
    let m = t.add_mmio("bar0", P, mmio()).unwrap();
    let a = t.add_alias("ram-alias", ram, P, P).unwrap();
    let spare = t.add_mmio("spare", P, mmio()).unwrap();
    t.place(root, ram, 0, 0).unwrap();
    t.place(root, c, 8 * P, 1).unwrap();
    t.place(c, m, 2 * P, 5).unwrap();
    t.place(c, a, 4 * P, 0).unwrap();
    t.set_enabled(m, false).unwrap();
    t.commit().unwrap();
    let dump = space.dump();
    let expected = format!(
        "address space 'sys' (generation 1)
  [0x0000000000000000, 0x0000000000010000) container: sys
    [0x0000000000008000, 0x0000000000010000) prio 1 container: pci
      [0x000000000000a000, 0x000000000000b000) prio 5 mmio: bar0 [disabled]
      [0x000000000000c000, 0x000000000000d000) prio 0 alias of {ram} 'ram0' @0x1000: ram-alias
    [0x0000000000000000, 0x0000000000004000) prio 0 ram test+0x0: ram0
unplaced:
  [0x0000000000000000, 0x0000000000001000) mmio: spare
"
    );
    assert_eq!(dump, expected);
    assert_eq!(space.region(spare).unwrap().placement, None);

    let text = space.view().to_string();
    assert_eq!(
        text,
        "[0x0000000000000000, 0x0000000000004000) ram0 ram test+0x0\n\
         [0x000000000000c000, 0x000000000000d000) ram0 ram test+0x1000\n"
    );
    assert_eq!(space.children(root), vec![c, ram]);
    assert!(
        matches!(space.region_kind(a), Some(RegionKind::Alias { target, offset }) if target == ram && offset == P)
    );
}

#[test]
fn commit_of_fifty_regions_is_fast() {
    let mut space = AddressSpace::new("as", 1 << 40);
    let root = space.root();
    let b = backing(256);
    let mut t = space.begin();
    let mut movable = Vec::new();
    for i in 0..12u64 {
        let c = t.add_container(&format!("c{i}"), 64 * P).unwrap();
        t.place(root, c, i * 64 * P, (i % 3) as i32).unwrap();
        let r = t
            .add_ram(&format!("r{i}"), b.clone(), i * 16 * P, 16 * P, false)
            .unwrap();
        t.place(c, r, 0, 0).unwrap();
        let m = t.add_mmio(&format!("m{i}"), P, mmio()).unwrap();
        t.place(c, m, 4 * P, 1).unwrap();
        let a = t.add_alias(&format!("a{i}"), r, 2 * P, 8 * P).unwrap();
        t.place(c, a, 32 * P, 0).unwrap();
        movable.push(m);
    }
    t.commit().unwrap();
    let rounds = 200u32;
    let start = std::time::Instant::now();
    for i in 0..rounds {
        let mut t = space.begin();
        t.set_offset(movable[(i % 12) as usize], u64::from(4 + i % 8) * P)
            .unwrap();
        t.commit().unwrap();
    }
    let per_commit = start.elapsed() / rounds;
    println!(
        "{} ranges, {per_commit:?} per commit",
        space.view().ranges().len()
    );
    // Generous bound: debug builds are far slower than release.
    assert!(
        per_commit < std::time::Duration::from_millis(5),
        "{per_commit:?}"
    );
}

#[test]
fn space_and_views_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<AddressSpace>();
    send_sync::<FlatView>();
    send_sync::<FlatViewHandle>();
    send_sync::<FlatDiff>();
    send_sync::<RegionKind>();
}

#[test]
fn data_ranges_find_written_pages_and_discard_gives_them_back() {
    let b = RamBacking::memfd("data", 64 * PAGE_SIZE).unwrap();
    assert_eq!(
        b.data_ranges(0, b.size()).unwrap(),
        vec![],
        "a fresh memfd is all holes"
    );
    b.write(3 * PAGE_SIZE + 10, &[1, 2, 3]).unwrap();
    b.write(10 * PAGE_SIZE, &[4; 2 * PAGE_SIZE as usize])
        .unwrap();
    assert_eq!(
        b.data_ranges(0, b.size()).unwrap(),
        vec![(3 * PAGE_SIZE, PAGE_SIZE), (10 * PAGE_SIZE, 2 * PAGE_SIZE)]
    );
    // Clipped to the range asked for.
    assert_eq!(
        b.data_ranges(11 * PAGE_SIZE + 5, 100).unwrap(),
        vec![(11 * PAGE_SIZE + 5, 100)]
    );
    // Discarding part of a page zeroes it; whole pages become holes.
    b.discard(10 * PAGE_SIZE + 8, 2 * PAGE_SIZE - 8).unwrap();
    let mut v = [0xffu8; 16];
    b.read(10 * PAGE_SIZE, &mut v).unwrap();
    assert_eq!(v, [4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        b.data_ranges(0, b.size()).unwrap(),
        vec![(3 * PAGE_SIZE, PAGE_SIZE), (10 * PAGE_SIZE, PAGE_SIZE)]
    );
    b.discard(0, b.size()).unwrap();
    assert_eq!(b.data_ranges(0, b.size()).unwrap(), vec![]);
    b.read(3 * PAGE_SIZE + 10, &mut v[..3]).unwrap();
    assert_eq!(v[..3], [0, 0, 0]);
    assert!(b.data_ranges(b.size(), 1).is_err());
}

#[test]
fn copy_to_moves_bytes_between_backings_and_checks_both_ranges() {
    let a = RamBacking::memfd("a", 4 * PAGE_SIZE).unwrap();
    let b = RamBacking::memfd("b", 4 * PAGE_SIZE).unwrap();
    a.write(100, b"interleave").unwrap();
    a.copy_to(100, &b, 3 * PAGE_SIZE + 7, 10).unwrap();
    let mut v = [0u8; 10];
    b.read(3 * PAGE_SIZE + 7, &mut v).unwrap();
    assert_eq!(&v, b"interleave");
    assert!(
        a.copy_to(0, &b, 4 * PAGE_SIZE - 4, 8).is_err(),
        "past the destination"
    );
    assert!(
        a.copy_to(4 * PAGE_SIZE - 4, &b, 0, 8).is_err(),
        "past the source"
    );
}
