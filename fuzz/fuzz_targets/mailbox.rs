//! `mailbox` fuzz target: see `cxlvm_fuzz::targets::mailbox`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cxlvm_fuzz::targets::mailbox(data));
