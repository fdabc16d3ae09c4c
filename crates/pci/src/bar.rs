//! Memory BARs backed by regions of the address space.
//!
//! A BAR is described by a [`BarSpec`]: width (32 or 64 bits), prefetchable flag, size (a power
//! of two of at least 4 KiB) and the **unplaced** region that backs it (typically an MMIO region
//! over a register block, created by the caller in the function's `AddressSpace`).
//!
//! In configuration space a BAR is nothing but a value and a write mask: the address bits above
//! the size are writable, the low type bits read-only. Writing all-ones therefore reads back the
//! size mask with the type bits, exactly what an OS sizing a BAR expects; a 64-bit BAR is two
//! dwords and its upper dword sizes the same way.
//!
//! After every configuration write the owning function works out where each BAR should decode:
//! nowhere unless Command.MEM (bit 1) is set, the programmed address is non-zero and the BAR is
//! not being sized. A 32-bit BAR is being sized when all its address bits are set (it reads back
//! its size mask; so a 32-bit BAR never decodes at 4 GiB minus its size); a 64-bit BAR when its
//! upper dword reads back the upper size mask (all-ones below 4 GiB of size: addresses no
//! address space reaches). The transient state of a 64-bit BAR whose low dword alone was written
//! with all-ones is decoded like any other address; operating systems clear Command.MEM while
//! they size BARs. When that changes, one memory transaction unplaces the
//! region and places it in the root container at the new address with [`BAR_PRIORITY`] (above
//! RAM and holes), and the change is logged at info level as `BAR n of <name> -> [a, b)`. If the
//! commit fails (two BARs on top of each other at the same priority, an address outside the
//! address space) a warning is logged and the BAR stays unmapped; it is retried when it is
//! reprogrammed or when another BAR of the same function moves away.
//!
//! Bridge windows are not enforced: a BAR decodes at its programmed address whether or not the
//! upstream bridges' windows cover it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use cxlvm_memory::{AddressSpace, MemoryError, RegionId};
use tracing::{debug, info, warn};

use crate::PciError;
use crate::config::ConfigSpace;
use crate::regs::{BAR_MEM64, BAR_PREFETCHABLE, BAR0, COMMAND, COMMAND_MEMORY};

/// Priority BAR regions are placed at in the root container (RAM and holes are at 0).
pub const BAR_PRIORITY: i32 = 1;
/// Smallest memory BAR size.
pub const MIN_BAR_SIZE: u64 = 4096;
/// Largest 32-bit memory BAR size.
pub const MAX_BAR32_SIZE: u64 = 1 << 31;
/// Largest 64-bit memory BAR size.
pub const MAX_BAR64_SIZE: u64 = 1 << 63;

/// Address width of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarWidth {
    /// One dword, decodes below 4 GiB.
    Bits32,
    /// Two dwords (this slot and the next).
    Bits64,
}

/// Description of one memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    /// Size in bytes: a power of two, at least [`MIN_BAR_SIZE`].
    pub size: u64,
    /// 32- or 64-bit.
    pub width: BarWidth,
    /// Prefetchable flag (bit 3).
    pub prefetchable: bool,
    /// The unplaced region mapped at the BAR's address (its size must not exceed `size`).
    pub region: RegionId,
}

impl BarSpec {
    /// A 32-bit, non-prefetchable memory BAR.
    pub fn memory32(size: u64, region: RegionId) -> Self {
        Self {
            size,
            width: BarWidth::Bits32,
            prefetchable: false,
            region,
        }
    }

    /// A 64-bit, non-prefetchable memory BAR.
    pub fn memory64(size: u64, region: RegionId) -> Self {
        Self {
            width: BarWidth::Bits64,
            ..Self::memory32(size, region)
        }
    }

    /// Sets the prefetchable flag.
    pub fn prefetchable(self, prefetchable: bool) -> Self {
        Self {
            prefetchable,
            ..self
        }
    }

    /// Number of BAR slots (dwords) the BAR uses.
    pub fn slots(&self) -> usize {
        match self.width {
            BarWidth::Bits32 => 1,
            BarWidth::Bits64 => 2,
        }
    }

    /// The read-only low bits of the BAR's first dword (memory, type, prefetchable).
    pub fn type_bits(&self) -> u32 {
        let mut bits = 0;
        if self.width == BarWidth::Bits64 {
            bits |= BAR_MEM64;
        }
        if self.prefetchable {
            bits |= BAR_PREFETCHABLE;
        }
        bits
    }

    /// Write mask of the whole BAR (both dwords for 64-bit): the address bits at and above
    /// the size.
    pub fn address_mask(&self) -> u64 {
        let mask = !(self.size.wrapping_sub(1)) & !0xf;
        match self.width {
            BarWidth::Bits32 => mask & 0xffff_ffff,
            BarWidth::Bits64 => mask,
        }
    }
}

/// Config offset of BAR `index`.
pub fn bar_offset(index: usize) -> u16 {
    BAR0 + 4 * (index.min(63) as u16)
}

/// One declared BAR and its mapping state.
#[derive(Debug)]
struct BarSlot {
    index: usize,
    spec: BarSpec,
    /// Where the BAR should decode after the last config change (what was last attempted).
    target: Option<u64>,
    /// Where its region actually is in the root container.
    mapped: Option<u64>,
}

impl BarSlot {
    /// The address the BAR decodes at, or `None` when it does not decode.
    fn decoded(&self, cfg: &ConfigSpace) -> Option<u64> {
        if cfg.u16(COMMAND) & COMMAND_MEMORY == 0 {
            return None;
        }
        let off = bar_offset(self.index);
        let mask = self.spec.address_mask();
        let lo = cfg.u32(off) & !0xf;
        let hi = match self.spec.width {
            BarWidth::Bits32 => {
                if lo == mask as u32 {
                    return None; // being sized
                }
                0
            }
            BarWidth::Bits64 => {
                let hi = cfg.u32(off + 4);
                if hi == (mask >> 32) as u32 {
                    return None; // being sized
                }
                hi
            }
        };
        let addr = u64::from(hi) << 32 | u64::from(lo);
        (addr != 0).then_some(addr)
    }
}

/// The BARs of one function and the address space their regions live in.
///
/// The address space is held weakly: it owns the regions that reach this function (ECAM, BAR
/// handlers), so a strong reference would keep both alive forever.
pub(crate) struct BarSet {
    slots: Vec<BarSlot>,
    space: Option<Weak<Mutex<AddressSpace>>>,
}

impl std::fmt::Debug for BarSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarSet")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

fn lock(space: &Mutex<AddressSpace>) -> MutexGuard<'_, AddressSpace> {
    space.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BarSet {
    /// Validates `specs` for a header with `max_slots` BAR slots and checks their regions in
    /// `space` (which is locked briefly).
    pub(crate) fn new(
        name: &str,
        specs: &[(usize, BarSpec)],
        max_slots: usize,
        space: Option<Arc<Mutex<AddressSpace>>>,
    ) -> Result<Self, PciError> {
        let mut used = vec![false; max_slots];
        let mut slots = Vec::with_capacity(specs.len());
        for &(index, spec) in specs {
            let end = index.saturating_add(spec.slots());
            if end > max_slots {
                return Err(PciError::BadBarIndex {
                    name: name.to_owned(),
                    index,
                });
            }
            let max = match spec.width {
                BarWidth::Bits32 => MAX_BAR32_SIZE,
                BarWidth::Bits64 => MAX_BAR64_SIZE,
            };
            if !spec.size.is_power_of_two() || spec.size < MIN_BAR_SIZE || spec.size > max {
                return Err(PciError::BadBarSize {
                    name: name.to_owned(),
                    index,
                    size: spec.size,
                });
            }
            for u in used.iter_mut().take(end).skip(index) {
                if *u {
                    return Err(PciError::BarSlotTaken {
                        name: name.to_owned(),
                        index,
                    });
                }
                *u = true;
            }
            slots.push(BarSlot {
                index,
                spec,
                target: None,
                mapped: None,
            });
        }
        if !slots.is_empty() {
            let Some(space) = &space else {
                return Err(PciError::NoAddressSpace {
                    name: name.to_owned(),
                });
            };
            let space = lock(space);
            for s in &slots {
                let bad = |why| PciError::BadBarRegion {
                    name: name.to_owned(),
                    index: s.index,
                    region: s.spec.region,
                    why,
                };
                let info = space.region(s.spec.region).ok_or(bad("no such region"))?;
                if s.spec.region == space.root() {
                    return Err(bad("it is the root region"));
                }
                if info.placement.is_some() {
                    return Err(bad("it is already placed"));
                }
                if info.size > s.spec.size {
                    return Err(bad("it is larger than the BAR"));
                }
            }
        }
        slots.sort_by_key(|s| s.index);
        Ok(Self {
            slots,
            space: space.as_ref().map(Arc::downgrade),
        })
    }

    /// Lays the BARs out in `cfg`: clears all `max_slots` BAR registers (value and masks), then
    /// writes each declared BAR's type bits and address write mask.
    pub(crate) fn init_config(&self, cfg: &mut ConfigSpace, max_slots: usize) {
        for i in 0..max_slots {
            let off = bar_offset(i);
            cfg.set_u32(off, 0);
            cfg.set_wmask_u32(off, 0);
            cfg.set_w1c_u32(off, 0);
        }
        for s in &self.slots {
            let off = bar_offset(s.index);
            let mask = s.spec.address_mask();
            cfg.set_u32(off, s.spec.type_bits());
            cfg.set_wmask_u32(off, mask as u32);
            if s.spec.width == BarWidth::Bits64 {
                cfg.set_wmask_u32(off + 4, (mask >> 32) as u32);
            }
        }
    }

    /// The declared BAR that starts at `index`.
    pub(crate) fn spec(&self, index: usize) -> Option<BarSpec> {
        self.slot(index).map(|s| s.spec)
    }

    fn slot(&self, index: usize) -> Option<&BarSlot> {
        self.slots.iter().find(|s| s.index == index)
    }

    /// The programmed address of BAR `index` (whatever Command.MEM says), `None` if no such BAR.
    pub(crate) fn programmed(&self, cfg: &ConfigSpace, index: usize) -> Option<u64> {
        let s = self.slot(index)?;
        let off = bar_offset(s.index);
        let lo = u64::from(cfg.u32(off) & !0xf);
        let hi = match s.spec.width {
            BarWidth::Bits32 => 0,
            BarWidth::Bits64 => u64::from(cfg.u32(off + 4)),
        };
        Some(hi << 32 | lo)
    }

    /// Where BAR `index`'s region is placed now.
    pub(crate) fn mapped(&self, index: usize) -> Option<u64> {
        self.slot(index).and_then(|s| s.mapped)
    }

    /// Brings the placement of every BAR in line with `cfg`. Locks the address space only when
    /// something changes. Never fails: a BAR that cannot be placed is left unmapped.
    pub(crate) fn sync(&mut self, cfg: &ConfigSpace, owner: &str) {
        let mut moved = false;
        for i in 0..self.slots.len() {
            let Some(slot) = self.slots.get_mut(i) else {
                continue;
            };
            let desired = slot.decoded(cfg);
            if desired != slot.target {
                slot.target = desired;
                moved |= self.apply(i, owner, false);
            }
        }
        if moved {
            // Space was freed or taken: BARs that failed before may fit now.
            self.retry_pending(owner);
        }
    }

    /// Tries again to place every BAR that decodes but is not placed (cheap when none is).
    pub(crate) fn retry_pending(&mut self, owner: &str) {
        for i in 0..self.slots.len() {
            if self
                .slots
                .get(i)
                .is_some_and(|s| s.target.is_some() && s.target != s.mapped)
            {
                self.apply(i, owner, true);
            }
        }
    }

    /// Unmaps every BAR (reset).
    pub(crate) fn unmap_all(&mut self, owner: &str) {
        for i in 0..self.slots.len() {
            if let Some(slot) = self.slots.get_mut(i) {
                slot.target = None;
            }
            self.apply(i, owner, false);
        }
    }

    /// Moves slot `i`'s region to its target in one transaction. Returns whether the mapping
    /// changed.
    fn apply(&mut self, i: usize, owner: &str, retry: bool) -> bool {
        // Gone with its machine: nothing left to place BARs in.
        let Some(space) = self.space.as_ref().and_then(Weak::upgrade) else {
            return false;
        };
        let Some(slot) = self.slots.get_mut(i) else {
            return false;
        };
        if slot.target == slot.mapped {
            return false;
        }
        let before = slot.mapped;
        let (index, size, region) = (slot.index, slot.spec.size, slot.spec.region);
        let mut space = lock(&space);
        match place(&mut space, region, slot.target) {
            Ok(()) => match slot.target {
                Some(a) => info!(
                    "BAR {index} of {owner} -> [{a:#x}, {:#x})",
                    a.saturating_add(size)
                ),
                None => info!("BAR {index} of {owner} unmapped"),
            },
            Err(err) => {
                let a = slot.target.unwrap_or(0);
                if retry {
                    debug!("BAR {index} of {owner} still cannot be mapped at {a:#x}: {err}");
                } else {
                    warn!("BAR {index} of {owner} left unmapped: cannot map it at {a:#x}: {err}");
                }
                if before.is_some()
                    && let Err(err) = place(&mut space, region, None)
                {
                    warn!("BAR {index} of {owner}: cannot unmap it either: {err}");
                }
            }
        }
        // Record the truth, whatever happened.
        slot.mapped = space
            .region(region)
            .and_then(|r| r.placement)
            .filter(|&(parent, _, _)| parent == space.root())
            .map(|(_, offset, _)| offset);
        let changed = slot.mapped != before;
        if changed {
            PLACEMENT_CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        changed
    }
}

/// Counts BAR mappings that changed (placed, moved, removed), process-wide: the segment retries
/// other functions' waiting BARs only after a configuration write that changed one.
pub(crate) static PLACEMENT_CHANGES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// One transaction: take `region` out of wherever it is, then place it at `target` in the root
/// container (if any).
fn place(
    space: &mut AddressSpace,
    region: RegionId,
    target: Option<u64>,
) -> Result<(), MemoryError> {
    let mut tx = space.begin();
    let root = tx.root();
    if tx.region(region).and_then(|r| r.placement).is_some() {
        tx.unplace(region)?;
    }
    if let Some(addr) = target {
        tx.place(root, region, addr, BAR_PRIORITY)?;
    }
    tx.commit().map(|_| ())
}
