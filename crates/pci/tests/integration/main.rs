//! Integration tests of `cxlvm-pci` through its public API.

mod bars;
mod common;
mod config;
mod ecam;
mod lspci;
mod random;
