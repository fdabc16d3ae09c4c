//! Fuzz harness of cxlvm: guest-reachable handlers (ECAM, HDM decoders and component registers,
//! device registers and mailbox, CXL windows, instruction completion) and untrusted inputs
//! (topology TOML, guest ELF).
//!
//! Each target in `fuzz_targets/` forwards its input to a function of [`targets`]; those build
//! what the target needs, apply the operations the input encodes the way a guest would, and
//! check invariants after every step (see [`check`] and each target's documentation), so a
//! broken invariant is a crash libFuzzer reports and minimises.

pub mod check;
pub mod emulate;
pub mod known;
pub mod ops;
pub mod reader;
pub mod rig;
pub mod targets;
