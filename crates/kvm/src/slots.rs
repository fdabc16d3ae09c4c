//! Keeps KVM memory slots equal to the RAM ranges of the published flat view.
//!
//! Rules:
//! - one slot per RAM flat range; a slot is never resized, split or merged in place: a changed
//!   range is a delete plus an add;
//! - slot ids are reused (lowest free id first);
//! - MMIO → RAM: the slot is added in `prepare`, before the new view is published;
//! - RAM → MMIO: the slot is deleted in `finish`, after the new view is published — unless a new
//!   RAM range overlaps it, in which case it must go first (KVM rejects overlapping slots); an
//!   exit in that short gap finds RAM in the still-current view and is served from the backing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cxlvm_memory::{
    FlatDiff, FlatRange, FlatTarget, FlatView, ListenerError, MemoryListener, RamBacking,
};
use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use tracing::info;

use crate::{KvmError, SlotFailure};

/// One installed slot, for introspection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// KVM slot id.
    pub slot: u32,
    /// Guest-physical start.
    pub start: u64,
    /// Length.
    pub len: u64,
    /// Backing name.
    pub backing: String,
    /// Offset in the backing.
    pub offset: u64,
    /// Read-only slot.
    pub readonly: bool,
}

/// A shared, read-only copy of the installed slots (updated on every change).
#[derive(Default)]
pub struct SlotTable(Mutex<Vec<SlotInfo>>);

impl SlotTable {
    /// The installed slots, sorted by start.
    pub fn snapshot(&self) -> Vec<SlotInfo> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The slot covering `addr`, if any.
    pub fn covering(&self, addr: u64) -> Option<SlotInfo> {
        self.snapshot()
            .into_iter()
            .find(|s| addr >= s.start && addr - s.start < s.len)
    }
}

struct Slot {
    slot: u32,
    len: u64,
    offset: u64,
    readonly: bool,
    backing: Arc<RamBacking>,
}

/// The KVM memory-slot listener.
pub struct SlotListener {
    vm: Arc<VmFd>,
    max_slots: usize,
    slots: BTreeMap<u64, Slot>,
    free: Vec<u32>,
    next: u32,
    pending_delete: Vec<u64>,
    table: Arc<SlotTable>,
}

fn ram(r: &FlatRange) -> Option<(&Arc<RamBacking>, u64, bool)> {
    match &r.target {
        FlatTarget::Ram {
            backing,
            offset,
            readonly,
        } => Some((backing, *offset, *readonly)),
        FlatTarget::Mmio { .. } => None,
    }
}

fn overlaps(a: &FlatRange, b: &FlatRange) -> bool {
    a.start < b.end() && b.start < a.end()
}

impl SlotListener {
    pub(crate) fn new(vm: Arc<VmFd>, max_slots: usize, table: Arc<SlotTable>) -> Self {
        Self {
            vm,
            max_slots,
            slots: BTreeMap::new(),
            free: Vec::new(),
            next: 0,
            pending_delete: Vec::new(),
            table,
        }
    }

    fn set_region(
        &self,
        slot: u32,
        start: u64,
        len: u64,
        hva: u64,
        readonly: bool,
    ) -> Result<(), KvmError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: if readonly { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: start,
            memory_size: len,
            userspace_addr: hva,
        };
        // SAFETY: for an add (len > 0), `hva..hva+len` lies inside a live shared mapping of the
        // backing (checked by `RamBacking::host_address`), and that mapping stays alive for as long
        // as the slot exists because the slot table holds an `Arc` to the backing until the slot is
        // deleted. A delete (len == 0) makes KVM drop its reference to the old range.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|e| KvmError::Slot {
            start,
            end: start.saturating_add(len),
            reason: SlotFailure::Ioctl(e),
        })
    }

    fn add(&mut self, r: &FlatRange) -> Result<(), KvmError> {
        let Some((backing, offset, readonly)) = ram(r) else {
            return Ok(());
        };
        let slot_err = |reason: SlotFailure| KvmError::Slot {
            start: r.start,
            end: r.end(),
            reason,
        };
        let hva = backing
            .host_address(offset, r.len)
            .ok_or_else(|| slot_err(SlotFailure::OutsideBacking))?;
        let slot = match self.free.pop() {
            Some(s) => s,
            None if (self.next as usize) < self.max_slots => {
                self.next += 1;
                self.next - 1
            }
            None => {
                return Err(slot_err(SlotFailure::NoFreeSlot(self.max_slots)));
            }
        };
        if let Err(e) = self.set_region(slot, r.start, r.len, hva, readonly) {
            self.release(slot);
            return Err(e);
        }
        info!(
            slot,
            "map [{:#x}, {:#x}) -> RAM {}+{:#x}{} ({})",
            r.start,
            r.end(),
            backing.name(),
            offset,
            if readonly { " read-only" } else { "" },
            r.name
        );
        self.slots.insert(
            r.start,
            Slot {
                slot,
                len: r.len,
                offset,
                readonly,
                backing: backing.clone(),
            },
        );
        Ok(())
    }

    fn release(&mut self, slot: u32) {
        self.free.push(slot);
        // Reuse the lowest id first.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }

    fn delete(&mut self, start: u64) -> Result<(), KvmError> {
        let Some(s) = self.slots.get(&start) else {
            return Ok(());
        };
        let (slot, len) = (s.slot, s.len);
        self.set_region(slot, start, 0, 0, false)?;
        info!(
            slot,
            "unmap [{:#x}, {:#x}) (back to MMIO or hole)",
            start,
            start + len
        );
        self.slots.remove(&start);
        self.release(slot);
        Ok(())
    }

    fn publish_table(&self) {
        let snap = self
            .slots
            .iter()
            .map(|(&start, s)| SlotInfo {
                slot: s.slot,
                start,
                len: s.len,
                backing: s.backing.name().to_owned(),
                offset: s.offset,
                readonly: s.readonly,
            })
            .collect();
        *self.table.0.lock().unwrap_or_else(|e| e.into_inner()) = snap;
    }

    /// Re-adds a slot that `prepare` deleted early, after a failure (best effort).
    fn restore(&mut self, r: &FlatRange) {
        if let Err(e) = self.add(r) {
            tracing::error!(
                "could not restore slot for [{:#x}, {:#x}): {e}",
                r.start,
                r.end()
            );
        }
    }
}

impl MemoryListener for SlotListener {
    fn prepare(&mut self, diff: &FlatDiff, _new: &FlatView) -> Result<(), ListenerError> {
        let removed: Vec<&FlatRange> = diff.removed.iter().filter(|r| r.is_ram()).collect();
        let added: Vec<&FlatRange> = diff.added.iter().filter(|r| r.is_ram()).collect();
        let mut early = Vec::new();
        let mut done = Vec::new();
        let mut result = Ok(());
        for r in &removed {
            if added.iter().any(|a| overlaps(a, r)) {
                match self.delete(r.start) {
                    Ok(()) => early.push(*r),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        if result.is_ok() {
            for a in &added {
                match self.add(a) {
                    Ok(()) => done.push(a.start),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        if let Err(e) = result {
            for start in done {
                let _ = self.delete(start);
            }
            for r in early {
                self.restore(r);
            }
            self.publish_table();
            return Err(Box::new(e));
        }
        self.pending_delete = removed
            .iter()
            .filter(|r| !early.iter().any(|e| e.start == r.start))
            .filter(|r| {
                self.slots.contains_key(&r.start) && !added.iter().any(|a| a.start == r.start)
            })
            .map(|r| r.start)
            .collect();
        self.publish_table();
        Ok(())
    }

    fn finish(&mut self, _diff: &FlatDiff, _new: &FlatView) {
        for start in std::mem::take(&mut self.pending_delete) {
            if let Err(e) = self.delete(start) {
                // The view already says MMIO; a stale slot only means the guest keeps RAM speed
                // on bytes that are still the same backing. Report it loudly.
                tracing::error!("{e}");
            }
        }
        self.publish_table();
    }
}
