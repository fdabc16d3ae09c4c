//! The cxlvm memory API.
//!
//! A guest-physical address space is a tree of regions (containers, RAM, MMIO and aliases) placed at
//! offsets with priorities. Changes happen inside a [`Transaction`]; one commit renders the tree once
//! into an immutable [`FlatView`] (sorted, non-overlapping ranges resolved to a RAM backing or an MMIO
//! handler), computes the [`FlatDiff`] against the previous view, hands it to the registered
//! [`MemoryListener`]s and publishes the new view lock-free for vCPU threads ([`FlatViewHandle`]).
//!
//! Nothing in this crate knows about KVM: the KVM slot listener lives in `cxlvm-kvm`.
#![forbid(unsafe_code)]

mod backing;
mod flat;
mod mmio;
#[cfg(test)]
mod tests;
mod tree;

pub use backing::{BackingError, RamBacking};
pub use flat::{AccessOutcome, FlatDiff, FlatRange, FlatTarget, FlatView, FlatViewHandle};
pub use mmio::{BackingMmio, MmioHandler};
pub use tree::{
    AddressSpace, CommitStats, ListenerError, MAX_DEPTH, MemoryError, MemoryListener, RegionId,
    RegionInfo, RegionKind, Transaction,
};

/// Granularity KVM maps RAM at; RAM ranges in a flat view must be aligned to it.
pub const PAGE_SIZE: u64 = 4096;
