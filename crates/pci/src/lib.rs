//! Generic PCI/PCIe emulation for cxlvm.
//!
//! * [`config`]: [`ConfigSpace`], 4 KiB of configuration bytes with per-byte write and
//!   write-1-to-clear masks, type 0/1 header builders, standard and extended capability lists,
//!   DVSECs and a PCIe capability helper.
//! * [`bar`]: memory BARs whose backing regions are placed in the address space where the guest
//!   programs them, while Command.MEM is set.
//! * [`function`]: the [`PciFunction`] / [`PciBridge`] traits, [`ConfigHooks`] for device models,
//!   and the generic [`Endpoint`] (type 0) and [`RootPort`] (type 1) implementations.
//! * [`ecam`]: [`PciSegment`], root buses of host bridges, configuration routing through root
//!   ports and the ECAM [`MmioHandler`](cxlvm_memory::MmioHandler).
//! * [`lspci`]: dumps readable by `lspci -F`.
//!
//! The CXL layer builds on top: it fills a [`ConfigSpace`] with its DVSECs, creates MMIO regions
//! for its register blocks and hands both to the builders here.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use cxlvm_memory::{AddressSpace, MmioHandler};
//! use cxlvm_pci::{BarSpec, ConfigSpace, Endpoint, PciSegment, PciePortType, RootPort, devfn};
//!
//! struct Regs;
//! impl MmioHandler for Regs {
//!     fn read(&self, _offset: u64, data: &mut [u8]) { data.fill(0) }
//!     fn write(&self, _offset: u64, _data: &[u8]) {}
//! }
//!
//! let space = Arc::new(Mutex::new(AddressSpace::new("guest", 1 << 36)));
//! // The BAR's backing: an (unplaced) MMIO region over the register block.
//! let regs = {
//!     let mut space = space.lock().unwrap();
//!     let mut tx = space.begin();
//!     let regs = tx.add_mmio("mem0 regs", 0x2_0000, Arc::new(Regs))?;
//!     tx.commit()?;
//!     regs
//! };
//!
//! // Endpoint: header, PCIe capability, a DVSEC, one 64-bit BAR over the register region.
//! let mut cfg = ConfigSpace::new_type0(0x8086, 0x0d93, 0x05_02_10, 1);
//! cfg.add_pcie_capability(PciePortType::Endpoint, 0)?;
//! cfg.add_dvsec(0x1e98, 1, 0, &[0u8; 0x2e], &[])?;
//! let ep = Endpoint::builder("mem0", cfg)
//!     .bar(0, BarSpec::memory64(0x2_0000, regs))
//!     .address_space(space.clone())
//!     .build()?;
//!
//! // Root port 3 on root bus 0, the endpoint below it.
//! let rp = RootPort::builder("rp0", 0x8086, 0x7075, 3).build()?;
//! rp.attach(0, ep.clone())?;
//! let segment = PciSegment::new("pci0", 0, 0xff)?;
//! segment.add_root_bus(0, "hb0")?;
//! segment.attach(0, devfn(1, 0), rp.clone())?;
//! segment.program_bus_numbers()?;
//! ep.assign_bar(0, 0xfe00_0000)?;
//! assert!(space.lock().unwrap().view().lookup(0xfe00_0000).is_some());
//! # Ok::<(), cxlvm_pci::PciError>(())
//! ```
#![forbid(unsafe_code)]

pub mod bar;
pub mod config;
pub mod ecam;
mod error;
pub mod function;
pub mod lspci;
pub mod regs;

pub use bar::{BAR_PRIORITY, BarSpec, BarWidth};
pub use config::{ConfigSpace, PciePortType};
pub use ecam::{PciSegment, devfn};
pub use error::PciError;
pub use function::{
    ConfigHooks, Endpoint, EndpointBuilder, PciBridge, PciFunction, RootPort, RootPortBuilder,
};
pub use lspci::{lspci_dump, lspci_dump_function};
