//! The region tree, transactions and listeners.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::{FlatDiff, FlatView, FlatViewHandle, MmioHandler, RamBacking};

/// Identifies a region of one [`AddressSpace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(pub(crate) u32);

impl std::fmt::Display for RegionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// What a region is.
#[derive(Clone)]
pub enum RegionKind {
    /// Holds subregions; its holes are transparent (lower-priority siblings show through).
    Container,
    /// Bytes of a backing, starting at `offset` in it.
    Ram {
        /// The backing.
        backing: Arc<RamBacking>,
        /// Offset in the backing of the region's first byte (page aligned).
        offset: u64,
        /// Guest writes do not reach the bytes.
        readonly: bool,
    },
    /// A device reached through exits.
    Mmio(Arc<dyn MmioHandler>),
    /// A window onto `[offset, offset + size)` of another region.
    Alias {
        /// The aliased region.
        target: RegionId,
        /// Offset in the target of the alias's first byte.
        offset: u64,
    },
}

/// Read-only description of a region, for dumps and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// Name given at creation.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether the region is visible.
    pub enabled: bool,
    /// Parent container, offset in it and priority, when placed.
    pub placement: Option<(RegionId, u64, i32)>,
}

/// Errors of the memory API. A failed commit leaves the address space as it was.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Regions must have a non-zero size.
    #[error("region '{0}': size must not be zero")]
    ZeroSize(String),
    /// No such region (removed, or from another address space).
    #[error("no region {0}")]
    NoSuchRegion(RegionId),
    /// The RAM region does not fit in its backing.
    #[error("region '{name}': RAM range {offset:#x}+{size:#x} is outside backing of {backing_size:#x} bytes")]
    RamOutOfBacking {
        /// Region name.
        name: String,
        /// Offset in the backing.
        offset: u64,
        /// Region size.
        size: u64,
        /// Backing size.
        backing_size: u64,
    },
    /// The alias reaches past the end of its target.
    #[error("alias '{name}': {offset:#x}+{size:#x} is outside target of {target_size:#x} bytes")]
    AliasOutOfRange {
        /// Alias name.
        name: String,
        /// Offset in the target.
        offset: u64,
        /// Alias size.
        size: u64,
        /// Target size.
        target_size: u64,
    },
    /// The parent is not a container.
    #[error("region '{0}' is not a container")]
    NotAContainer(String),
    /// The region is already placed in a container (or is the root).
    #[error("region '{0}' is already placed")]
    AlreadyPlaced(String),
    /// The region is not placed anywhere.
    #[error("region '{0}' is not placed")]
    NotPlaced(String),
    /// A subregion must lie inside its parent.
    #[error("region '{child}' at {offset:#x}+{size:#x} does not fit in '{parent}' of {parent_size:#x} bytes")]
    OutOfParent {
        /// Child name.
        child: String,
        /// Parent name.
        parent: String,
        /// Offset in the parent.
        offset: u64,
        /// Child size.
        size: u64,
        /// Parent size.
        parent_size: u64,
    },
    /// Two enabled siblings overlap at the same priority (which one wins would be arbitrary).
    #[error("regions '{a}' and '{b}' overlap at the same priority {priority} in '{parent}'")]
    SamePriorityOverlap {
        /// Parent name.
        parent: String,
        /// One sibling.
        a: String,
        /// The other sibling.
        b: String,
        /// Their priority.
        priority: i32,
    },
    /// Aliases and containers form a cycle (or nest deeper than the renderer allows).
    #[error("region '{0}' is part of a cycle or nests too deeply")]
    Cycle(String),
    /// A RAM range of the rendered view is not page aligned (KVM cannot map it).
    #[error("RAM of region '{name}' at {start:#x}+{len:#x} (backing offset {offset:#x}) is not 4 KiB aligned")]
    MisalignedRam {
        /// Leaf region name.
        name: String,
        /// Guest-physical start.
        start: u64,
        /// Length.
        len: u64,
        /// Backing offset.
        offset: u64,
    },
    /// The region is still in use (placed, has children, or is an alias target).
    #[error("region '{0}' is still in use")]
    InUse(String),
    /// The root region cannot be changed this way.
    #[error("the root region cannot be moved, disabled or removed")]
    Root,
    /// A listener refused the change (the address space is unchanged).
    #[error("memory listener failed: {0}")]
    Listener(#[source] ListenerError),
}

/// Error type listeners return.
pub type ListenerError = Box<dyn std::error::Error + Send + Sync>;

/// Something that mirrors the flat view elsewhere (KVM memory slots, a dump, a test recorder).
///
/// On commit, `prepare` runs before the new view is published and `finish` after it. A KVM slot
/// listener adds slots in `prepare` (MMIO → RAM: the mapping exists before the view says RAM)
/// and deletes slots that nothing new overlaps in `finish` (RAM → MMIO: the view says MMIO
/// before the slot goes).
pub trait MemoryListener: Send {
    /// Called with the diff before the new view is published. An error aborts the commit; the
    /// listener must then have undone its own partial work.
    fn prepare(&mut self, diff: &FlatDiff, new: &FlatView) -> Result<(), ListenerError>;
    /// Called with the same diff after the new view is published.
    fn finish(&mut self, diff: &FlatDiff, new: &FlatView);
}

/// Counts from one commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Generation of the published view.
    pub generation: u64,
    /// Ranges in the new view.
    pub ranges: usize,
    /// Ranges removed.
    pub removed: usize,
    /// Ranges added.
    pub added: usize,
}

/// A guest-physical address space: a region tree rooted at a container, its current flat view
/// and its listeners.
pub struct AddressSpace {
    // Implementation detail: arena of nodes, root id, published view, listeners, generation.
    view: Arc<ArcSwap<FlatView>>,
}

impl AddressSpace {
    /// Creates an address space whose root container spans `[0, size)`.
    pub fn new(name: &str, size: u64) -> Self {
        todo!()
    }

    /// The root container.
    pub fn root(&self) -> RegionId {
        todo!()
    }

    /// Registers a listener and immediately replays the current view to it as a diff from empty.
    pub fn add_listener(&mut self, listener: Box<dyn MemoryListener>) -> Result<(), MemoryError> {
        todo!()
    }

    /// The current view.
    pub fn view(&self) -> Arc<FlatView> {
        self.view.load_full()
    }

    /// A lock-free handle to the current view for other threads.
    pub fn view_handle(&self) -> FlatViewHandle {
        FlatViewHandle(self.view.clone())
    }

    /// Describes a region.
    pub fn region(&self, id: RegionId) -> Option<RegionInfo> {
        todo!()
    }

    /// Starts a transaction. Dropping it without [`Transaction::commit`] discards its changes.
    pub fn begin(&mut self) -> Transaction<'_> {
        todo!()
    }
}

/// A batch of changes to an [`AddressSpace`], applied and rendered once by [`Transaction::commit`].
pub struct Transaction<'a> {
    space: &'a mut AddressSpace,
}

impl Transaction<'_> {
    /// Creates an (unplaced) container.
    pub fn add_container(&mut self, name: &str, size: u64) -> Result<RegionId, MemoryError> {
        todo!()
    }
    /// Creates an (unplaced) RAM region over `backing[offset..offset+size]`.
    pub fn add_ram(
        &mut self,
        name: &str,
        backing: Arc<RamBacking>,
        offset: u64,
        size: u64,
        readonly: bool,
    ) -> Result<RegionId, MemoryError> {
        todo!()
    }
    /// Creates an (unplaced) MMIO region of `size` bytes.
    pub fn add_mmio(
        &mut self,
        name: &str,
        size: u64,
        handler: Arc<dyn MmioHandler>,
    ) -> Result<RegionId, MemoryError> {
        todo!()
    }
    /// Creates an (unplaced) alias of `target[offset..offset+size]`.
    pub fn add_alias(
        &mut self,
        name: &str,
        target: RegionId,
        offset: u64,
        size: u64,
    ) -> Result<RegionId, MemoryError> {
        todo!()
    }
    /// Places `child` in container `parent` at `offset` with `priority` (higher wins).
    pub fn place(
        &mut self,
        parent: RegionId,
        child: RegionId,
        offset: u64,
        priority: i32,
    ) -> Result<(), MemoryError> {
        todo!()
    }
    /// Takes `child` out of its container (it stays alive and can be placed again).
    pub fn unplace(&mut self, child: RegionId) -> Result<(), MemoryError> {
        todo!()
    }
    /// Moves a placed region to `offset` in its container.
    pub fn set_offset(&mut self, id: RegionId, offset: u64) -> Result<(), MemoryError> {
        todo!()
    }
    /// Changes a placed region's priority.
    pub fn set_priority(&mut self, id: RegionId, priority: i32) -> Result<(), MemoryError> {
        todo!()
    }
    /// Shows or hides a region (everywhere it appears, aliases included).
    pub fn set_enabled(&mut self, id: RegionId, enabled: bool) -> Result<(), MemoryError> {
        todo!()
    }
    /// Deletes an unplaced region that has no children and is no alias's target.
    pub fn remove(&mut self, id: RegionId) -> Result<(), MemoryError> {
        todo!()
    }
    /// Validates the tree, renders it once, hands the diff to the listeners and publishes the new
    /// view. On any error nothing changes.
    pub fn commit(self) -> Result<CommitStats, MemoryError> {
        todo!()
    }
}
