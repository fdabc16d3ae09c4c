//! Direct mappings of decoded CXL ranges.
//!
//! - [`planner`]: which HPA ranges of the windows can be RAM overlays (linear, interleaved) and
//!   why the others stay on the MMIO path, derived from a decode graph alone.
//! - [`overlay`]: keeps every window's RAM overlays equal to the current plan, in one memory
//!   transaction inside the guest's register write (the fabric's decode listener).
//! - [`window`]: the fixed-window MMIO dispatcher: the exact path from an HPA to device bytes,
//!   always present under the overlays.
#![forbid(unsafe_code)]

pub mod overlay;
pub mod planner;
pub mod storage;
pub mod window;
