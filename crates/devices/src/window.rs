//! The scratch window: a fixed-memory-window model without CXL decoding.
//!
//! ```text
//! container "scratch" @ base            (priority 0 in the root)
//!   ├─ mmio  "scratch.mmio"   prio 0    BackingMmio over the backing: exact, one exit per access
//!   └─ alias "scratch.alias"  prio 1    RAM alias of the same backing, disabled at start
//! ```
//! Enabling the alias makes the whole window RAM (a KVM slot); disabling it brings the MMIO path
//! back. Both paths reach the same backing bytes, so switching never copies or loses data.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use cxlvm_memory::{AddressSpace, BackingError, BackingMmio, MemoryError, RamBacking, RegionId};
use tracing::info;

use crate::{PioDevice, StopReason, Stopper};

/// Errors installing the scratch window.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The backing could not be created.
    #[error(transparent)]
    Backing(#[from] BackingError),
    /// The regions could not be added.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// A window of `size` bytes at `base` switching between MMIO and a RAM alias.
pub struct ScratchWindow {
    /// Weak: the address space reaches this device (port-I/O window), so it must not own it.
    space: Weak<Mutex<AddressSpace>>,
    alias: RegionId,
    base: u64,
    size: u64,
    backing: Arc<RamBacking>,
    mmio: Arc<BackingMmio>,
    alias_on: AtomicBool,
    switches: AtomicU64,
    stopper: Arc<Stopper>,
}

impl ScratchWindow {
    /// Creates the backing and the regions and places the window at `base` in the root.
    pub fn install(
        space: &Arc<Mutex<AddressSpace>>,
        base: u64,
        size: u64,
        stopper: Arc<Stopper>,
    ) -> Result<Arc<Self>, WindowError> {
        let backing = RamBacking::memfd("scratch", size)?;
        let mmio = Arc::new(BackingMmio::new(backing.clone(), 0, size));
        let mut guard = space.lock().unwrap_or_else(|e| e.into_inner());
        let root = guard.root();
        let mut tx = guard.begin();
        let container = tx.add_container("scratch", size)?;
        let m = tx.add_mmio("scratch.mmio", size, mmio.clone())?;
        let ram = tx.add_ram("scratch.backing", backing.clone(), 0, size, false)?;
        let alias = tx.add_alias("scratch.alias", ram, 0, size)?;
        tx.set_enabled(alias, false)?;
        tx.place(container, m, 0, 0)?;
        tx.place(container, alias, 0, 1)?;
        tx.place(root, container, base, 0)?;
        tx.commit()?;
        drop(guard);
        info!(
            "scratch window [{base:#x}, {:#x}): MMIO (alias off)",
            base + size
        );
        Ok(Arc::new(Self {
            space: Arc::downgrade(space),
            alias,
            base,
            size,
            backing,
            mmio,
            alias_on: AtomicBool::new(false),
            switches: AtomicU64::new(0),
            stopper,
        }))
    }

    /// Turns the RAM alias on or off. Returns once the new mapping is in place.
    pub fn set_alias(&self, on: bool) -> Result<(), MemoryError> {
        let Some(space) = self.space.upgrade() else {
            return Ok(()); // the machine is gone
        };
        let mut space = space.lock().unwrap_or_else(|e| e.into_inner());
        if self.alias_on.load(Ordering::Relaxed) == on {
            return Ok(());
        }
        let mut tx = space.begin();
        tx.set_enabled(self.alias, on)?;
        tx.commit()?;
        self.alias_on.store(on, Ordering::Relaxed);
        self.switches.fetch_add(1, Ordering::Relaxed);
        info!(
            "scratch window [{:#x}, {:#x}): {}",
            self.base,
            self.base + self.size,
            if on {
                "MMIO -> RAM alias"
            } else {
                "RAM alias -> MMIO"
            }
        );
        Ok(())
    }

    /// Whether the alias is on.
    pub fn alias_on(&self) -> bool {
        self.alias_on.load(Ordering::Relaxed)
    }

    /// Guest-physical base.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The device backing (the bytes' one home).
    pub fn backing(&self) -> &Arc<RamBacking> {
        &self.backing
    }

    /// Accesses served through the MMIO path (each one a VM exit).
    pub fn mmio_accesses(&self) -> u64 {
        self.mmio.accesses()
    }

    /// Number of alias switches so far.
    pub fn switches(&self) -> u64 {
        self.switches.load(Ordering::Relaxed)
    }
}

impl PioDevice for ScratchWindow {
    fn read(&self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = u8::from(self.alias_on());
        }
    }

    fn write(&self, offset: u16, data: &[u8]) {
        if offset != 0 {
            return;
        }
        let on = data.first().is_some_and(|b| b & 1 == 1);
        if let Err(e) = self.set_alias(on) {
            self.stopper
                .request(StopReason::Fatal(crate::pio::DeviceFailure::new(
                    "scratch window alias switch",
                    e,
                )));
        }
    }
}
