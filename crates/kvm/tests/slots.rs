//! The KVM slot listener against real KVM: slot order around publication, id reuse, no in-place
//! changes, and rollback when KVM refuses a slot.

use std::sync::{Arc, Mutex};

use cxlvm_kvm::{Hypervisor, SlotInfo, SlotTable};
use cxlvm_memory::{
    AddressSpace, FlatDiff, FlatView, FlatViewHandle, ListenerError, MemoryListener, RamBacking,
};

const MIB: u64 = 1 << 20;

fn vm() -> cxlvm_kvm::Vm {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm, which is missing on this machine"
    );
    Hypervisor::open("/dev/kvm")
        .expect("open /dev/kvm")
        .create_vm()
        .expect("create VM")
}

/// (phase, published generation at that moment, installed slots) per listener call.
type PhaseLog = Arc<Mutex<Vec<(&'static str, u64, Vec<SlotInfo>)>>>;

/// Registered after the slot listener: records, at each phase, whether the view already showed
/// the new generation and which slots KVM had.
struct Probe {
    table: Arc<SlotTable>,
    view: Arc<Mutex<Option<FlatViewHandle>>>,
    log: PhaseLog,
}

impl MemoryListener for Probe {
    fn prepare(&mut self, _d: &FlatDiff, _n: &FlatView) -> Result<(), ListenerError> {
        let g = self
            .view
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |v| v.load().generation());
        self.log
            .lock()
            .unwrap()
            .push(("prepare", g, self.table.snapshot()));
        Ok(())
    }
    fn finish(&mut self, _d: &FlatDiff, _n: &FlatView) {
        let g = self
            .view
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |v| v.load().generation());
        self.log
            .lock()
            .unwrap()
            .push(("finish", g, self.table.snapshot()));
    }
}

struct Setup {
    space: AddressSpace,
    table: Arc<SlotTable>,
    log: PhaseLog,
    alias: cxlvm_memory::RegionId,
    _vm: cxlvm_kvm::Vm,
}

/// RAM at 0 (4 MiB) and a window at 1 GiB: MMIO (prio 0) + disabled RAM alias (prio 1).
fn setup() -> Setup {
    let vm = vm();
    let table = Arc::new(SlotTable::default());
    let mut space = AddressSpace::new("t", 1 << 63);
    space
        .add_listener(Box::new(vm.slot_listener(table.clone())))
        .unwrap();
    let view_cell = Arc::new(Mutex::new(None));
    let log: PhaseLog = Arc::new(Mutex::new(Vec::new()));
    space
        .add_listener(Box::new(Probe {
            table: table.clone(),
            view: view_cell.clone(),
            log: log.clone(),
        }))
        .unwrap();
    *view_cell.lock().unwrap() = Some(space.view_handle());
    let ram = RamBacking::memfd("ram", 4 * MIB).unwrap();
    let dev = RamBacking::memfd("dev", 2 * MIB).unwrap();
    let root = space.root();
    let mut tx = space.begin();
    let r = tx.add_ram("ram", ram, 0, 4 * MIB, false).unwrap();
    tx.place(root, r, 0, 0).unwrap();
    let win = tx.add_container("win", 2 * MIB).unwrap();
    let mmio = tx
        .add_mmio(
            "win.mmio",
            2 * MIB,
            Arc::new(cxlvm_memory::BackingMmio::new(dev.clone(), 0, 2 * MIB)),
        )
        .unwrap();
    let devram = tx.add_ram("dev", dev, 0, 2 * MIB, false).unwrap();
    let alias = tx.add_alias("win.alias", devram, 0, 2 * MIB).unwrap();
    tx.set_enabled(alias, false).unwrap();
    tx.place(win, mmio, 0, 0).unwrap();
    tx.place(win, alias, 0, 1).unwrap();
    tx.place(root, win, 1 << 30, 0).unwrap();
    tx.commit().unwrap();
    log.lock().unwrap().clear();
    Setup {
        space,
        table,
        log,
        alias,
        _vm: vm,
    }
}

fn toggle(s: &mut Setup, on: bool) {
    let mut tx = s.space.begin();
    tx.set_enabled(s.alias, on).unwrap();
    tx.commit().unwrap();
}

#[test]
fn mmio_to_ram_adds_the_slot_before_publishing_and_ram_to_mmio_deletes_after() {
    let mut s = setup();
    let gen0 = s.space.view().generation();
    toggle(&mut s, true);
    {
        let log = s.log.lock().unwrap();
        let (phase, generation, slots) = &log[0];
        assert_eq!(
            (*phase, *generation),
            ("prepare", gen0),
            "prepare runs before publication"
        );
        assert!(
            slots.iter().any(|x| x.start == 1 << 30 && x.len == 2 * MIB),
            "the alias slot exists before the view says RAM: {slots:?}"
        );
    }
    s.log.lock().unwrap().clear();
    toggle(&mut s, false);
    let log = s.log.lock().unwrap();
    let (_, g_prep, slots_prep) = &log[0];
    let (_, g_fin, slots_fin) = &log[1];
    assert_eq!(*g_prep, gen0 + 1, "old view still published in prepare");
    assert!(
        slots_prep.iter().any(|x| x.start == 1 << 30),
        "RAM -> MMIO keeps the slot until the view says MMIO"
    );
    assert_eq!(*g_fin, gen0 + 2, "new view published before finish");
    assert!(
        !slots_fin.iter().any(|x| x.start == 1 << 30),
        "slot gone after publication"
    );
    assert!(s.table.covering(0).is_some(), "guest RAM untouched");
}

#[test]
fn slot_ids_are_reused_and_slots_never_change_in_place() {
    let mut s = setup();
    let ram_slot = s.table.covering(0).unwrap();
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..200 {
        toggle(&mut s, true);
        let w = s.table.covering(1 << 30).unwrap();
        assert_eq!((w.start, w.len, w.offset), (1 << 30, 2 * MIB, 0));
        ids.insert(w.slot);
        toggle(&mut s, false);
        assert!(s.table.covering(1 << 30).is_none());
    }
    assert_eq!(ids.len(), 1, "the freed id is reused every time: {ids:?}");
    assert_eq!(
        s.table.covering(0),
        Some(ram_slot),
        "unrelated slot never touched"
    );
}

#[test]
fn a_ram_range_split_by_a_new_overlay_is_replaced_not_resized() {
    let mut s = setup();
    // Put an MMIO page over the middle of guest RAM: the 4 MiB slot must become two slots.
    let root = s.space.root();
    let mut tx = s.space.begin();
    let hole = tx
        .add_mmio(
            "hole",
            0x1000,
            Arc::new(cxlvm_memory::BackingMmio::new(
                RamBacking::memfd("h", 0x1000).unwrap(),
                0,
                0x1000,
            )),
        )
        .unwrap();
    tx.place(root, hole, 2 * MIB, 1).unwrap();
    tx.commit().unwrap();
    let slots: Vec<(u64, u64, u64)> = s
        .table
        .snapshot()
        .iter()
        .filter(|x| x.start < 4 * MIB)
        .map(|x| (x.start, x.len, x.offset))
        .collect();
    assert_eq!(
        slots,
        vec![
            (0, 2 * MIB, 0),
            (2 * MIB + 0x1000, 2 * MIB - 0x1000, 2 * MIB + 0x1000)
        ]
    );
}

#[test]
fn a_slot_kvm_refuses_rolls_the_commit_back() {
    let mut s = setup();
    let before = s.table.snapshot();
    let generation = s.space.view().generation();
    // One commit that adds the window alias (fine) and RAM at 2^62, far beyond any host's
    // physical address width, which KVM must refuse.
    let root = s.space.root();
    let far = RamBacking::memfd("far", 2 * MIB).unwrap();
    let mut tx = s.space.begin();
    tx.set_enabled(s.alias, true).unwrap();
    let r = tx.add_ram("far", far, 0, 2 * MIB, false).unwrap();
    tx.place(root, r, 1 << 62, 0).unwrap();
    let err = tx.commit().expect_err("KVM refuses a slot at 2^62");
    assert!(err.to_string().contains("KVM memory slot"), "{err}");
    assert_eq!(s.space.view().generation(), generation, "view unchanged");
    assert_eq!(
        s.table.snapshot(),
        before,
        "slots restored: the alias slot added first is gone again"
    );
}
