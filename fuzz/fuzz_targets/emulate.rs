//! `emulate` fuzz target: see `cxlvm_fuzz::emulate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cxlvm_fuzz::emulate::emulate(data));
