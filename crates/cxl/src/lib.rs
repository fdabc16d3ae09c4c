//! The CXL model of cxlvm: registers, decoders and decoding. Which decoded ranges are mapped
//! directly is `cxlvm-mapping`'s job; assembling the guest-visible platform is
//! `cxlvm-platform`'s.
//!
//! - [`interleave`]: interleave-ways / granularity encodings and the HPA <-> DPA maths.
//! - [`hdm`]: HDM decoder capability register emulation with commit validation.
//! - [`component`]: the 64 KiB CXL component register block (CXL.cache/mem capability array, RAS,
//!   HDM decoders) of host bridges, root ports and Type-3 devices.
//! - [`mailbox`] / [`devregs`]: the Type-3 device register block and its mailbox commands.
//! - [`graph`]: the decode graph (committed decoder state as data) and HPA routing.
//! - [`fabric`]: the live components (registers, enables) behind one lock; republishes the graph.
//! - [`dvsec`]: CXL DVSECs in PCI configuration space.
//! - [`region`]: firmware-committed regions (`[[region]]`): checks, decoder and DPA planning,
//!   and the commit at machine build.
//! - [`topology`]: host bridges, devices, windows and regions from TOML or short flags, and their
//!   checks.
#![forbid(unsafe_code)]

pub mod component;
pub mod devregs;
pub mod dvsec;
pub mod fabric;
pub mod graph;
pub mod hdm;
pub mod interleave;
pub mod mailbox;
pub mod region;
pub mod topology;
