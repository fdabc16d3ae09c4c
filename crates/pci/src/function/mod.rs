//! PCI functions: the [`PciFunction`] and [`PciBridge`] traits, the [`ConfigHooks`] through
//! which device models react to configuration writes, and two generic implementations:
//! [`Endpoint`] (type 0 header) and [`RootPort`] (type 1 header, PCIe root port).
//!
//! # Building a function
//!
//! The caller fills a [`ConfigSpace`] first — header, PCIe capability, DVSECs and any other
//! capability — and hands it to a builder ([`EndpointBuilder`] / [`RootPortBuilder`]), which
//! also takes the BARs ([`BarSpec`](crate::BarSpec)), the optional hooks and the address space
//! the BAR regions live in. The builder's `config_mut()` gives access to the configuration space
//! until `build()`; after that it is sealed: its state at `build()` is also what a reset restores.
//!
//! # Locking
//!
//! Each function has one configuration lock. A configuration write takes it, applies the write,
//! calls the hooks, and — when a BAR has to move — takes the address-space lock. So the order is
//! always **function lock, then address-space lock**: never call into a function (config
//! accesses, `assign_bar`, `with_config`, `reset`) while holding the address-space lock.
//! A root port resetting its secondary bus takes its children's locks only after releasing its
//! own. [`ConfigHooks`] run with the function's lock held, so a hook must not call back into the
//! function (that deadlocks) nor into the PCI segment, and must not hold the address-space lock
//! when it returns.

mod common;
mod endpoint;
mod root_port;

use std::sync::Arc;

pub use endpoint::{Endpoint, EndpointBuilder};
pub use root_port::{ROOT_PORT_CLASS, RootPort, RootPortBuilder};

use crate::ConfigSpace;

/// A PCI function as the configuration-access paths (ECAM, bridges) see it.
///
/// Implementations use interior mutability and must never panic on any offset, length or value:
/// offsets past 4 KiB read as all-ones and ignore writes.
pub trait PciFunction: Send + Sync {
    /// Fills `data` with the configuration bytes at `offset` (little endian, any length).
    fn read_config(&self, offset: u16, data: &mut [u8]);
    /// Writes `data` (little endian, any length) at `offset`.
    fn write_config(&self, offset: u16, data: &[u8]);
    /// The bridge side of the function, for functions with a type 1 header.
    fn bridge(&self) -> Option<&dyn PciBridge> {
        None
    }
    /// Conventional reset (a secondary bus reset of the bridge above): configuration back to its
    /// state at build, BARs unmapped. The default does nothing.
    fn reset(&self) {}
    /// Tries again to place BARs that decode but could not be placed (another function's BAR
    /// was in the way). The segment calls it on every function after a configuration write,
    /// since a move of one function's BAR can free the space another one waits for. The
    /// default does nothing.
    fn retry_bars(&self) {}
}

/// The downstream side of a PCI-to-PCI bridge (root port, switch port).
pub trait PciBridge: Send + Sync {
    /// The programmed `(secondary, subordinate)` bus numbers, or `None` while they do not form a
    /// usable range (secondary 0, or subordinate below secondary).
    fn bus_range(&self) -> Option<(u8, u8)>;
    /// Every function attached below this bridge's secondary side, whatever the bus numbers
    /// (reachable or not).
    fn attached(&self) -> Vec<Arc<dyn PciFunction>>;
    /// The function at `devfn` on bus `bus` below this bridge: on its secondary bus, or
    /// recursively through child bridges when `bus` is in `(secondary, subordinate]`.
    fn child(&self, bus: u8, devfn: u8) -> Option<Arc<dyn PciFunction>>;
}

/// Device-model callbacks of an [`Endpoint`] or [`RootPort`].
///
/// All callbacks run on the thread that made the configuration access (a vCPU thread for guest
/// accesses) **with the function's configuration lock held**: they must not call back into the
/// function or the PCI segment (deadlock). They may take the address-space lock (it comes after
/// the function lock in the lock order) but must release it before returning.
pub trait ConfigHooks: Send + Sync {
    /// After a configuration write of `len` bytes at `offset` was applied to `cfg` (which the
    /// hook may update further, e.g. to reflect a Control write in a Status register). Called
    /// for every write, including writes that changed nothing. BAR placement is brought in line
    /// with `cfg` after this returns.
    fn written(&self, cfg: &mut ConfigSpace, offset: u16, len: usize) {
        let _ = (cfg, offset, len);
    }
    /// Command.MEM (memory space enable) changed; BARs were already (un)mapped accordingly.
    fn memory_enable_changed(&self, enabled: bool) {
        let _ = enabled;
    }
    /// The function was reset; its configuration space is back to its state at build.
    fn reset(&self) {}
    /// Root ports only: Bridge Control bit 6 (secondary bus reset) was set (`true`) or cleared
    /// (`false`). The children are reset after the hook returns on assertion and stay
    /// unreachable until it is cleared.
    fn secondary_bus_reset(&self, asserted: bool) {
        let _ = asserted;
    }
}
