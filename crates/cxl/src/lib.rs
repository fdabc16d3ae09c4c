//! The CXL model of cxlvm.
//!
//! - [`interleave`]: interleave-ways / granularity encodings and the HPA <-> DPA maths.
//! - [`hdm`]: HDM decoder capability register emulation with commit validation.
//! - [`mailbox`] / [`devregs`]: the Type-3 device register block and its mailbox commands.
#![forbid(unsafe_code)]

pub mod devregs;
pub mod hdm;
pub mod interleave;
pub mod mailbox;
