//! The region tree, transactions and listeners.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use crate::{
    FlatDiff, FlatRange, FlatTarget, FlatView, FlatViewHandle, MmioHandler, PAGE_SIZE, RamBacking,
};

/// Most regions one path from the root to a leaf may pass through (root, containers, aliases
/// and the leaf, each counted once per visit). Deeper trees are refused at commit with
/// [`MemoryError::Cycle`].
pub const MAX_DEPTH: usize = 64;

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
    #[error(
        "region '{name}': RAM range {offset:#x}+{size:#x} is outside backing of {backing_size:#x} bytes"
    )]
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
    #[error(
        "region '{child}' at {offset:#x}+{size:#x} does not fit in '{parent}' of {parent_size:#x} bytes"
    )]
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
    #[error(
        "RAM of region '{name}' at {start:#x}+{len:#x} (backing offset {offset:#x}) is not 4 KiB aligned"
    )]
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
    name: String,
    /// The committed region tree.
    tree: Tree,
    /// Next region id to hand out; ids are never reused (not even those of discarded
    /// transactions) until the `u32` space runs out.
    next_id: u32,
    /// Only ever reached through `&mut self` (`Mutex::get_mut`, no locking); the mutex just
    /// makes the space `Sync` although listeners are only `Send`.
    listeners: Mutex<Vec<Box<dyn MemoryListener>>>,
    view: Arc<ArcSwap<FlatView>>,
}

impl AddressSpace {
    /// Creates an address space whose root container spans `[0, size)`.
    pub fn new(name: &str, size: u64) -> Self {
        let root = Node {
            name: name.into(),
            size,
            enabled: true,
            kind: RegionKind::Container,
            placement: None,
            children: Vec::new(),
        };
        Self {
            name: name.to_owned(),
            tree: Tree {
                nodes: vec![Some(Arc::new(root))],
                root: RegionId(0),
            },
            next_id: 1,
            listeners: Mutex::new(Vec::new()),
            view: Arc::new(ArcSwap::from_pointee(FlatView::default())),
        }
    }

    /// The root container.
    pub fn root(&self) -> RegionId {
        self.tree.root
    }

    /// Name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Generation of the published view (0 before the first commit).
    pub fn generation(&self) -> u64 {
        self.view.load().generation()
    }

    /// Registers a listener and immediately replays the current view to it as a diff from empty.
    pub fn add_listener(
        &mut self,
        mut listener: Box<dyn MemoryListener>,
    ) -> Result<(), MemoryError> {
        let current = self.view.load_full();
        let diff = FlatDiff {
            removed: Vec::new(),
            added: current.ranges().to_vec(),
        };
        listener
            .prepare(&diff, &current)
            .map_err(MemoryError::Listener)?;
        listener.finish(&diff, &current);
        self.listeners_mut().push(listener);
        Ok(())
    }

    fn listeners_mut(&mut self) -> &mut Vec<Box<dyn MemoryListener>> {
        self.listeners
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
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
        self.tree.get(id).map(Node::info)
    }

    /// Ids of all live regions (root included), ascending.
    pub fn region_ids(&self) -> Vec<RegionId> {
        self.tree.ids().collect()
    }

    /// What a region is (`None` for unknown or removed ids).
    pub fn region_kind(&self, id: RegionId) -> Option<RegionKind> {
        self.tree.get(id).map(|n| n.kind.clone())
    }

    /// The regions placed in container `id`, highest priority first, then by offset, then by id.
    /// Empty for leaves, aliases and unknown ids.
    pub fn children(&self, id: RegionId) -> Vec<RegionId> {
        self.tree
            .get(id)
            .map_or_else(Vec::new, |n| n.children.clone())
    }

    /// Starts a transaction. Dropping it without [`Transaction::commit`] discards its changes.
    pub fn begin(&mut self) -> Transaction<'_> {
        Transaction {
            work: self.tree.clone(),
            space: self,
        }
    }

    /// The committed region tree as text, one region per line, indented by nesting: absolute
    /// range `[start, end)`, priority, kind, name and `[disabled]` where it applies. Regions that
    /// are not placed anywhere follow under `unplaced:` (their ranges are relative to the
    /// topmost unplaced region). Aliases are printed as one line naming their target.
    pub fn dump(&self) -> String {
        let mut out = format!(
            "address space '{}' (generation {})\n",
            self.name,
            self.generation()
        );
        self.tree.dump_subtree(&mut out, self.tree.root, 1);
        let unplaced: Vec<RegionId> = self
            .tree
            .ids()
            .filter(|&id| id != self.tree.root)
            .filter(|&id| self.tree.get(id).is_some_and(|n| n.placement.is_none()))
            .collect();
        if !unplaced.is_empty() {
            out.push_str("unplaced:\n");
            for id in unplaced {
                self.tree.dump_subtree(&mut out, id, 1);
            }
        }
        out
    }
}

/// A batch of changes to an [`AddressSpace`], applied and rendered once by [`Transaction::commit`].
pub struct Transaction<'a> {
    space: &'a mut AddressSpace,
    /// Private working copy of the tree; nodes are shared with the committed tree until written.
    work: Tree,
}

impl Transaction<'_> {
    /// The root container.
    pub fn root(&self) -> RegionId {
        self.work.root
    }

    /// Describes a region as this transaction currently sees it.
    pub fn region(&self, id: RegionId) -> Option<RegionInfo> {
        self.work.get(id).map(Node::info)
    }

    /// The regions placed in container `id` as this transaction currently sees them, in the
    /// order of [`AddressSpace::children`].
    pub fn children(&self, id: RegionId) -> Vec<RegionId> {
        self.work
            .get(id)
            .map_or_else(Vec::new, |n| n.children.clone())
    }

    /// Creates an (unplaced) container.
    pub fn add_container(&mut self, name: &str, size: u64) -> Result<RegionId, MemoryError> {
        let node = Node::new(name, size, RegionKind::Container)?;
        self.alloc(node)
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
        if size == 0 {
            return Err(MemoryError::ZeroSize(name.to_owned()));
        }
        let backing_size = backing.size();
        if offset
            .checked_add(size)
            .is_none_or(|end| end > backing_size)
        {
            return Err(MemoryError::RamOutOfBacking {
                name: name.to_owned(),
                offset,
                size,
                backing_size,
            });
        }
        let kind = RegionKind::Ram {
            backing,
            offset,
            readonly,
        };
        let node = Node::new(name, size, kind)?;
        self.alloc(node)
    }

    /// Creates an (unplaced) MMIO region of `size` bytes.
    pub fn add_mmio(
        &mut self,
        name: &str,
        size: u64,
        handler: Arc<dyn MmioHandler>,
    ) -> Result<RegionId, MemoryError> {
        let node = Node::new(name, size, RegionKind::Mmio(handler))?;
        self.alloc(node)
    }

    /// Creates an (unplaced) alias of `target[offset..offset+size]`.
    pub fn add_alias(
        &mut self,
        name: &str,
        target: RegionId,
        offset: u64,
        size: u64,
    ) -> Result<RegionId, MemoryError> {
        if size == 0 {
            return Err(MemoryError::ZeroSize(name.to_owned()));
        }
        let target_size = self.work.node(target)?.size;
        if offset.checked_add(size).is_none_or(|end| end > target_size) {
            return Err(MemoryError::AliasOutOfRange {
                name: name.to_owned(),
                offset,
                size,
                target_size,
            });
        }
        let node = Node::new(name, size, RegionKind::Alias { target, offset })?;
        self.alloc(node)
    }

    /// Places `child` in container `parent` at `offset` with `priority` (higher wins).
    ///
    /// Besides the documented errors, placing a container inside itself or inside one of its own
    /// subregions is refused with [`MemoryError::Cycle`] (such a loop could never be reached
    /// from the root, so commit-time validation would not see it).
    pub fn place(
        &mut self,
        parent: RegionId,
        child: RegionId,
        offset: u64,
        priority: i32,
    ) -> Result<(), MemoryError> {
        let t = &mut self.work;
        let p = t.node(parent)?;
        let c = t.node(child)?;
        if !matches!(p.kind, RegionKind::Container) {
            return Err(MemoryError::NotAContainer(p.name.to_string()));
        }
        if child == t.root {
            return Err(MemoryError::Root);
        }
        if c.placement.is_some() {
            return Err(MemoryError::AlreadyPlaced(c.name.to_string()));
        }
        check_fit(p, c, offset)?;
        if t.is_within(parent, child) {
            return Err(MemoryError::Cycle(c.name.to_string()));
        }
        t.node_mut(child)?.placement = Some(Placement {
            parent,
            offset,
            priority,
        });
        t.link(parent, child)
    }

    /// Takes `child` out of its container (it stays alive and can be placed again).
    pub fn unplace(&mut self, child: RegionId) -> Result<(), MemoryError> {
        let placement = self.work.placement(child)?;
        self.work.unlink(placement.parent, child)?;
        self.work.node_mut(child)?.placement = None;
        Ok(())
    }

    /// Moves a placed region to `offset` in its container.
    pub fn set_offset(&mut self, id: RegionId, offset: u64) -> Result<(), MemoryError> {
        let placement = self.work.placement(id)?;
        check_fit(
            self.work.node(placement.parent)?,
            self.work.node(id)?,
            offset,
        )?;
        self.work.replace(
            id,
            Placement {
                offset,
                ..placement
            },
        )
    }

    /// Changes a placed region's priority.
    pub fn set_priority(&mut self, id: RegionId, priority: i32) -> Result<(), MemoryError> {
        let placement = self.work.placement(id)?;
        self.work.replace(
            id,
            Placement {
                priority,
                ..placement
            },
        )
    }

    /// Shows or hides a region (everywhere it appears, aliases included).
    pub fn set_enabled(&mut self, id: RegionId, enabled: bool) -> Result<(), MemoryError> {
        self.work.node(id)?;
        if id == self.work.root && !enabled {
            return Err(MemoryError::Root);
        }
        self.work.node_mut(id)?.enabled = enabled;
        Ok(())
    }

    /// Deletes an unplaced region that has no children and is no alias's target.
    pub fn remove(&mut self, id: RegionId) -> Result<(), MemoryError> {
        let t = &self.work;
        let node = t.node(id)?;
        if id == t.root {
            return Err(MemoryError::Root);
        }
        let aliased = t
            .nodes
            .iter()
            .flatten()
            .any(|n| matches!(n.kind, RegionKind::Alias { target, .. } if target == id));
        if node.placement.is_some() || !node.children.is_empty() || aliased {
            return Err(MemoryError::InUse(node.name.to_string()));
        }
        if let Some(slot) = self.work.nodes.get_mut(index(id)) {
            *slot = None;
        }
        Ok(())
    }

    /// Validates the tree, renders it once, hands the diff to the listeners and publishes the new
    /// view. On any error nothing changes.
    ///
    /// If a listener's `prepare` fails, the listeners that had already prepared get `prepare`
    /// again (last one first) with the reversed diff and the old view, so they can undo; then
    /// [`MemoryError::Listener`] is returned.
    pub fn commit(self) -> Result<CommitStats, MemoryError> {
        let Transaction { space, work } = self;
        work.validate()?;
        let ranges = Renderer::new(&work).run()?;
        let old = space.view.load_full();
        let generation = old.generation().saturating_add(1);
        let new = Arc::new(FlatView::from_sorted(ranges, generation));
        let diff = FlatDiff::between(&old, &new);

        let listeners = space.listeners_mut();
        for i in 0..listeners.len() {
            let Some(listener) = listeners.get_mut(i) else {
                break;
            };
            if let Err(err) = listener.prepare(&diff, &new) {
                let undo = diff.reversed();
                for (j, prepared) in listeners.iter_mut().enumerate().take(i).rev() {
                    if let Err(undo_err) = prepared.prepare(&undo, &old) {
                        tracing::warn!(
                            listener = j,
                            error = %undo_err,
                            "memory listener failed to undo a prepared change"
                        );
                    }
                }
                tracing::debug!(
                    space = %space.name,
                    listener = i,
                    error = %err,
                    "memory commit refused by a listener"
                );
                return Err(MemoryError::Listener(err));
            }
        }

        space.view.store(new.clone());
        for listener in space.listeners_mut() {
            listener.finish(&diff, &new);
        }
        space.tree = work;

        let stats = CommitStats {
            generation,
            ranges: new.ranges().len(),
            removed: diff.removed.len(),
            added: diff.added.len(),
        };
        tracing::debug!(
            space = %space.name,
            generation = stats.generation,
            ranges = stats.ranges,
            removed = stats.removed,
            added = stats.added,
            "memory commit"
        );
        Ok(stats)
    }

    /// Stores a new node under a fresh id.
    fn alloc(&mut self, node: Node) -> Result<RegionId, MemoryError> {
        let slot = if self.space.next_id < u32::MAX {
            let id = self.space.next_id;
            self.space.next_id += 1;
            index(RegionId(id))
        } else {
            // All 2^32 - 1 ids were handed out once: fall back to reusing a freed slot.
            match self.work.nodes.iter().position(Option::is_none) {
                Some(slot) => slot,
                None => return Err(MemoryError::InUse(node.name.to_string())),
            }
        };
        let id = u32::try_from(slot).map_err(|_| MemoryError::InUse(node.name.to_string()))?;
        if self.work.nodes.len() <= slot {
            self.work.nodes.resize(slot.saturating_add(1), None);
        }
        match self.work.nodes.get_mut(slot) {
            Some(entry) => *entry = Some(Arc::new(node)),
            None => return Err(MemoryError::InUse(node.name.to_string())),
        }
        Ok(RegionId(id))
    }
}

/// Refuses `child` at `offset` unless it lies inside `parent`.
fn check_fit(parent: &Node, child: &Node, offset: u64) -> Result<(), MemoryError> {
    if offset
        .checked_add(child.size)
        .is_none_or(|end| end > parent.size)
    {
        return Err(MemoryError::OutOfParent {
            child: child.name.to_string(),
            parent: parent.name.to_string(),
            offset,
            size: child.size,
            parent_size: parent.size,
        });
    }
    Ok(())
}

fn index(id: RegionId) -> usize {
    id.0 as usize
}

impl std::fmt::Debug for RegionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionKind::Container => f.write_str("Container"),
            RegionKind::Ram {
                backing,
                offset,
                readonly,
            } => f
                .debug_struct("Ram")
                .field("backing", &backing.name())
                .field("offset", &format_args!("{offset:#x}"))
                .field("readonly", readonly)
                .finish(),
            RegionKind::Mmio(_) => f.write_str("Mmio"),
            RegionKind::Alias { target, offset } => f
                .debug_struct("Alias")
                .field("target", target)
                .field("offset", &format_args!("{offset:#x}"))
                .finish(),
        }
    }
}

/// Where a placed region sits.
#[derive(Clone, Copy)]
struct Placement {
    parent: RegionId,
    offset: u64,
    priority: i32,
}

/// One region of the arena.
#[derive(Clone)]
struct Node {
    name: Arc<str>,
    size: u64,
    enabled: bool,
    kind: RegionKind,
    placement: Option<Placement>,
    /// Placed subregions (containers only): highest priority first, then by offset, then by id.
    children: Vec<RegionId>,
}

impl Node {
    fn new(name: &str, size: u64, kind: RegionKind) -> Result<Self, MemoryError> {
        if size == 0 {
            return Err(MemoryError::ZeroSize(name.to_owned()));
        }
        Ok(Self {
            name: name.into(),
            size,
            enabled: true,
            kind,
            placement: None,
            children: Vec::new(),
        })
    }

    fn info(&self) -> RegionInfo {
        RegionInfo {
            name: self.name.to_string(),
            size: self.size,
            enabled: self.enabled,
            placement: self.placement.map(|p| (p.parent, p.offset, p.priority)),
        }
    }
}

/// Regions by id. Cloning is cheap: nodes are shared (copy on write) until a transaction changes
/// them.
#[derive(Clone)]
struct Tree {
    nodes: Vec<Option<Arc<Node>>>,
    root: RegionId,
}

/// DFS state of a region during validation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    New,
    Active,
    Done,
}

impl Tree {
    fn get(&self, id: RegionId) -> Option<&Node> {
        self.nodes.get(index(id))?.as_deref()
    }

    fn node(&self, id: RegionId) -> Result<&Node, MemoryError> {
        self.get(id).ok_or(MemoryError::NoSuchRegion(id))
    }

    fn node_mut(&mut self, id: RegionId) -> Result<&mut Node, MemoryError> {
        match self.nodes.get_mut(index(id)) {
            Some(Some(node)) => Ok(Arc::make_mut(node)),
            _ => Err(MemoryError::NoSuchRegion(id)),
        }
    }

    /// Ids of all live regions, ascending.
    fn ids(&self) -> impl Iterator<Item = RegionId> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_some())
            .filter_map(|(i, _)| u32::try_from(i).ok().map(RegionId))
    }

    /// The placement of a region that must be placed (and not the root).
    fn placement(&self, id: RegionId) -> Result<Placement, MemoryError> {
        let node = self.node(id)?;
        if id == self.root {
            return Err(MemoryError::Root);
        }
        node.placement
            .ok_or_else(|| MemoryError::NotPlaced(node.name.to_string()))
    }

    /// Sort key of a child in its parent's list.
    fn child_key(&self, id: RegionId) -> (std::cmp::Reverse<i32>, u64, RegionId) {
        let p = self.get(id).and_then(|n| n.placement);
        (
            std::cmp::Reverse(p.map_or(0, |p| p.priority)),
            p.map_or(0, |p| p.offset),
            id,
        )
    }

    /// Inserts `child` (already carrying its placement) into `parent`'s sorted child list.
    fn link(&mut self, parent: RegionId, child: RegionId) -> Result<(), MemoryError> {
        let key = self.child_key(child);
        let pos = self
            .node(parent)?
            .children
            .partition_point(|&c| self.child_key(c) < key);
        self.node_mut(parent)?.children.insert(pos, child);
        Ok(())
    }

    fn unlink(&mut self, parent: RegionId, child: RegionId) -> Result<(), MemoryError> {
        self.node_mut(parent)?.children.retain(|&c| c != child);
        Ok(())
    }

    /// Changes a placed region's placement inside the same parent, keeping the child list sorted.
    fn replace(&mut self, id: RegionId, placement: Placement) -> Result<(), MemoryError> {
        self.unlink(placement.parent, id)?;
        self.node_mut(id)?.placement = Some(placement);
        self.link(placement.parent, id)
    }

    /// Whether `id` is `ancestor` or nested (through containers) inside it.
    fn is_within(&self, mut id: RegionId, ancestor: RegionId) -> bool {
        // Parent chains are acyclic (`place` keeps them so); the bound is belt and braces.
        for _ in 0..=self.nodes.len() {
            if id == ancestor {
                return true;
            }
            match self.get(id).and_then(|n| n.placement) {
                Some(p) => id = p.parent,
                None => return false,
            }
        }
        true
    }

    /// Checks what the renderer will walk: the enabled regions reachable from the root through
    /// enabled children and enabled alias targets. Any loop, or any path of more than
    /// [`MAX_DEPTH`] regions, is a [`MemoryError::Cycle`]; any two enabled siblings of a reached
    /// container that overlap at the same priority are a [`MemoryError::SamePriorityOverlap`].
    fn validate(&self) -> Result<(), MemoryError> {
        let mut marks = vec![Mark::New; self.nodes.len()];
        let mut heights = vec![0usize; self.nodes.len()];
        self.visit(self.root, 1, &mut marks, &mut heights)?;
        for (i, mark) in marks.iter().enumerate() {
            if *mark != Mark::Done {
                continue;
            }
            if let Some(node) = self.nodes.get(i).and_then(|n| n.as_deref())
                && matches!(node.kind, RegionKind::Container)
            {
                self.check_overlaps(node)?;
            }
        }
        Ok(())
    }

    /// Depth-first walk with memoised heights (regions on the longest path down from a region).
    /// `depth` counts the regions on the current path, `id` included. Recursion never goes
    /// deeper than [`MAX_DEPTH`] + 1.
    fn visit(
        &self,
        id: RegionId,
        depth: usize,
        marks: &mut [Mark],
        heights: &mut [usize],
    ) -> Result<usize, MemoryError> {
        let node = self.node(id)?;
        let i = index(id);
        let cycle = || MemoryError::Cycle(node.name.to_string());
        if depth > MAX_DEPTH {
            return Err(cycle());
        }
        match marks.get(i) {
            Some(Mark::Active) => return Err(cycle()),
            Some(Mark::Done) => {
                let height = heights.get(i).copied().unwrap_or(1);
                return if depth + height > MAX_DEPTH + 1 {
                    Err(cycle())
                } else {
                    Ok(height)
                };
            }
            Some(Mark::New) => {}
            None => return Err(MemoryError::NoSuchRegion(id)),
        }
        if let Some(m) = marks.get_mut(i) {
            *m = Mark::Active;
        }
        let mut below = 0;
        match &node.kind {
            RegionKind::Container => {
                for &c in &node.children {
                    if self.get(c).is_some_and(|n| n.enabled) {
                        below = below.max(self.visit(c, depth + 1, marks, heights)?);
                    }
                }
            }
            RegionKind::Alias { target, .. } => {
                if self.get(*target).is_some_and(|n| n.enabled) {
                    below = self.visit(*target, depth + 1, marks, heights)?;
                }
            }
            RegionKind::Ram { .. } | RegionKind::Mmio(_) => {}
        }
        if let Some(m) = marks.get_mut(i) {
            *m = Mark::Done;
        }
        if let Some(h) = heights.get_mut(i) {
            *h = below + 1;
        }
        Ok(below + 1)
    }

    /// Same-priority overlap among the enabled children of one container. Children are sorted by
    /// priority (descending) then offset, so one pass per priority run suffices.
    fn check_overlaps(&self, parent: &Node) -> Result<(), MemoryError> {
        // (priority, furthest end so far in this run, the child reaching it)
        let mut run: Option<(i32, u64, &Node)> = None;
        for &c in &parent.children {
            let Some(child) = self.get(c) else { continue };
            let Some(p) = child.placement else { continue };
            if !child.enabled {
                continue;
            }
            let end = p.offset.saturating_add(child.size);
            match run {
                Some((priority, max_end, other)) if priority == p.priority => {
                    if p.offset < max_end {
                        return Err(MemoryError::SamePriorityOverlap {
                            parent: parent.name.to_string(),
                            a: other.name.to_string(),
                            b: child.name.to_string(),
                            priority,
                        });
                    }
                    if end > max_end {
                        run = Some((priority, end, child));
                    }
                }
                _ => run = Some((p.priority, end, child)),
            }
        }
        Ok(())
    }

    /// Appends `id` and everything placed under it to `out`, `id` at byte 0.
    fn dump_subtree(&self, out: &mut String, id: RegionId, indent: usize) {
        // Explicit stack: containment chains may be long even though rendering is capped.
        let mut stack = vec![(id, 0u128, indent)];
        while let Some((id, start, indent)) = stack.pop() {
            let Some(node) = self.get(id) else { continue };
            let end = start + u128::from(node.size);
            let _ = write!(
                out,
                "{:width$}[{start:#018x}, {end:#018x}) ",
                "",
                width = indent * 2
            );
            if let Some(p) = node.placement {
                let _ = write!(out, "prio {} ", p.priority);
            }
            let _ = write!(out, "{}: {}", self.describe(node), node.name);
            if !node.enabled {
                out.push_str(" [disabled]");
            }
            out.push('\n');
            for &c in node.children.iter().rev() {
                if let Some(p) = self.get(c).and_then(|n| n.placement) {
                    stack.push((c, start + u128::from(p.offset), indent + 1));
                }
            }
        }
    }

    fn describe(&self, node: &Node) -> String {
        match &node.kind {
            RegionKind::Container => "container".to_owned(),
            RegionKind::Ram {
                backing,
                offset,
                readonly,
            } => format!(
                "ram{} {}+{offset:#x}",
                if *readonly { " ro" } else { "" },
                backing.name()
            ),
            RegionKind::Mmio(_) => "mmio".to_owned(),
            RegionKind::Alias { target, offset } => format!(
                "alias of {target} '{}' @{offset:#x}",
                self.get(*target).map_or("?", |t| &t.name)
            ),
        }
    }
}

/// A claimed piece of the address space during rendering.
struct Piece {
    end: u64,
    leaf: RegionId,
    /// Offset of the piece's first byte inside the leaf region.
    local: u64,
}

/// Renders a validated tree into flat ranges.
///
/// The tree is walked depth first from the root, higher-priority children first; every leaf
/// piece claims only the addresses no earlier (thus higher-priority) piece claimed, so holes in
/// containers stay transparent.
struct Renderer<'t> {
    tree: &'t Tree,
    /// Claimed pieces by start address (non-overlapping).
    pieces: BTreeMap<u64, Piece>,
    /// Scratch list of unclaimed sub-intervals.
    gaps: Vec<(u64, u64)>,
}

impl<'t> Renderer<'t> {
    fn new(tree: &'t Tree) -> Self {
        Self {
            tree,
            pieces: BTreeMap::new(),
            gaps: Vec::new(),
        }
    }

    fn run(mut self) -> Result<Vec<FlatRange>, MemoryError> {
        let tree = self.tree;
        if let Some(root) = tree.get(tree.root) {
            self.region(tree.root, 0, 0, root.size, 1);
        }
        self.into_ranges()
    }

    /// Renders region `id` with its byte 0 at absolute address `base` (may be negative or past
    /// the end: aliases shift their target), clipped to `[lo, hi)`.
    fn region(&mut self, id: RegionId, base: i128, lo: u64, hi: u64, depth: usize) {
        let tree = self.tree;
        let Some(node) = tree.get(id) else { return };
        if !node.enabled || depth > MAX_DEPTH {
            return;
        }
        // |base| < (MAX_DEPTH + 1) * 2^64, far from the i128 limits.
        let lo = base.max(i128::from(lo));
        let hi = (base + i128::from(node.size)).min(i128::from(hi));
        if lo >= hi {
            return;
        }
        let (Ok(lo), Ok(hi)) = (u64::try_from(lo), u64::try_from(hi)) else {
            return;
        };
        match &node.kind {
            RegionKind::Container => {
                for &c in &node.children {
                    if let Some(p) = tree.get(c).and_then(|n| n.placement) {
                        self.region(c, base + i128::from(p.offset), lo, hi, depth + 1);
                    }
                }
            }
            RegionKind::Alias { target, offset } => {
                self.region(*target, base - i128::from(*offset), lo, hi, depth + 1);
            }
            RegionKind::Ram { .. } | RegionKind::Mmio(_) => self.claim(id, base, lo, hi),
        }
    }

    /// Claims the unclaimed parts of `[lo, hi)` for leaf `leaf` whose byte 0 is at `base`.
    fn claim(&mut self, leaf: RegionId, base: i128, lo: u64, hi: u64) {
        self.gaps.clear();
        let mut cursor = lo;
        if let Some((_, p)) = self.pieces.range(..lo).next_back() {
            cursor = cursor.max(p.end);
        }
        for (&start, p) in self.pieces.range(lo..hi) {
            if start > cursor {
                self.gaps.push((cursor, start));
            }
            cursor = cursor.max(p.end);
        }
        if cursor < hi {
            self.gaps.push((cursor, hi));
        }
        for &(start, end) in &self.gaps {
            let Ok(local) = u64::try_from(i128::from(start) - base) else {
                continue;
            };
            self.pieces.insert(start, Piece { end, leaf, local });
        }
    }

    /// Merges contiguous pieces of the same leaf and resolves them to flat ranges.
    fn into_ranges(self) -> Result<Vec<FlatRange>, MemoryError> {
        let mut merged: Vec<(u64, Piece)> = Vec::with_capacity(self.pieces.len());
        for (start, piece) in self.pieces {
            if let Some((prev_start, prev)) = merged.last_mut() {
                let contiguous = prev.end == start
                    && prev.leaf == piece.leaf
                    && prev.local.checked_add(prev.end - *prev_start) == Some(piece.local);
                if contiguous {
                    prev.end = piece.end;
                    continue;
                }
            }
            merged.push((start, piece));
        }

        let mut ranges = Vec::with_capacity(merged.len());
        for (start, piece) in merged {
            let Some(node) = self.tree.get(piece.leaf) else {
                continue;
            };
            let len = piece.end - start;
            let target = match &node.kind {
                RegionKind::Ram {
                    backing,
                    offset,
                    readonly,
                } => {
                    // Cannot saturate: the piece lies inside the region, which fits its backing.
                    let offset = offset.saturating_add(piece.local);
                    if !start.is_multiple_of(PAGE_SIZE)
                        || !len.is_multiple_of(PAGE_SIZE)
                        || !offset.is_multiple_of(PAGE_SIZE)
                    {
                        return Err(MemoryError::MisalignedRam {
                            name: node.name.to_string(),
                            start,
                            len,
                            offset,
                        });
                    }
                    FlatTarget::Ram {
                        backing: backing.clone(),
                        offset,
                        readonly: *readonly,
                    }
                }
                RegionKind::Mmio(handler) => FlatTarget::Mmio {
                    handler: handler.clone(),
                    offset: piece.local,
                },
                RegionKind::Container | RegionKind::Alias { .. } => continue,
            };
            ranges.push(FlatRange {
                start,
                len,
                region: piece.leaf,
                name: node.name.clone(),
                target,
            });
        }
        Ok(ranges)
    }
}
