//! `ecam` fuzz target: see `cxlvm_fuzz::targets::ecam`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cxlvm_fuzz::targets::ecam(data));
