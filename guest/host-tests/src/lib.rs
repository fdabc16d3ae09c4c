//! The guest kit's target-independent modules, compiled for the host so that `cargo test` can
//! run their unit tests (`tests.rs`). The files are the kit's own, included by path.

pub mod acpi;
#[path = "../../kit/src/cxl/calc.rs"]
pub mod cxl_calc;
#[path = "../../kit/src/fixed.rs"]
pub mod fixed;
#[path = "../../kit/src/pci/calc.rs"]
pub mod pci_calc;
#[path = "../../kit/src/rand.rs"]
pub mod rand;
#[path = "../../kit/src/stats.rs"]
pub mod stats;

#[cfg(test)]
mod acpi_tests;
#[cfg(test)]
mod tests;
