//! `regions` fuzz target: see `cxlvm_fuzz::targets::regions`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cxlvm_fuzz::targets::regions(data));
