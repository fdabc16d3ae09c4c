//! Shared helpers for the real-KVM tests.
#![allow(dead_code)]

use std::time::Duration;

use cxlvm_vmm::{Machine, MachineConfig, RunReport, SerialOut};

/// Serial output captured in memory.
pub type Capture = cxlvm_test_guests::SerialCapture;

/// Fails loudly when KVM is missing: these tests must not pass without it.
pub fn require_kvm() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests boot real guests and need /dev/kvm, which is missing on this machine"
    );
}

/// A config for test guest `name` with serial captured and a safety timeout.
pub fn config(name: &str, cmdline: &str) -> (MachineConfig, Capture) {
    require_kvm();
    let cap = Capture::default();
    let mut cfg = MachineConfig::new(cxlvm_test_guests::path(name));
    cfg.cmdline = cmdline.to_owned();
    cfg.serial = SerialOut::Writer(Box::new(cap.clone()));
    cfg.timeout = Some(Duration::from_secs(120));
    (cfg, cap)
}

/// Builds and runs; returns the machine (for host-side inspection), report and serial text.
pub fn boot(cfg: MachineConfig, cap: &Capture) -> (Machine, RunReport, String) {
    let mut m = Machine::build(cfg).expect("machine builds");
    let r = m.run().expect("machine runs");
    let text = cap.text();
    (m, r, text)
}

/// Reads little-endian u64 word `i` of a backing.
pub fn word(m: &cxlvm_memory::RamBacking, i: u64) -> u64 {
    let mut b = [0u8; 8];
    m.read(i * 8, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// What the `cxl` guest's verify pass writes at HPA `hpa`: `VERIFY_TAG | hpa`.
pub const VERIFY_TAG: u64 = 0xC710_0000_0000_0000;

/// Asserts that device `dev`'s volatile memory holds the verify word of `hpa` at `dpa` (read
/// through the storage map: the bytes may live in a region store).
pub fn assert_verify_word(cxl: &cxlvm_platform::CxlPlatform, dev: usize, dpa: u64, hpa: u64) {
    let mut b = [0u8; 8];
    assert!(
        cxl.memories[dev].read(dpa, &mut b),
        "DPA {dpa:#x} of mem{dev}"
    );
    assert_eq!(
        u64::from_le_bytes(b),
        VERIFY_TAG | hpa,
        "HPA {hpa:#x} must be in mem{dev} at DPA {dpa:#x}"
    );
}
