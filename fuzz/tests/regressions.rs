//! Replays fuzz/regressions/<target>/* (its own test binary: it switches on strict mode, see
//! src/known.rs): inputs of fixed bugs must pass with every invariant enforced, inputs of open
//! bugs (named after their id in `known::OPEN`) must still fail.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use cxlvm_fuzz::known;
use cxlvm_fuzz::targets::by_name;

const TARGETS: [&str; 7] = [
    "ecam", "hdm", "mailbox", "window", "topology", "regions", "elf",
];

fn files(dir: &Path, t: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join(t)) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fixed bugs' inputs pass with every invariant enforced; open bugs' inputs still fail (when
/// one passes, the bug is fixed: take its id out of `known::OPEN`).
#[test]
fn regressions() {
    known::STRICT.store(true, Ordering::Relaxed);
    for t in TARGETS {
        let f = by_name(t).unwrap();
        for p in files(&root().join("regressions"), t) {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&p).unwrap();
            let open = known::OPEN.iter().any(|id| name.starts_with(id));
            let outcome = std::panic::catch_unwind(|| f(&data));
            if open {
                assert!(
                    outcome.is_err(),
                    "{t}/{name} passes: the bug is fixed, remove it from known::OPEN"
                );
            } else {
                assert!(outcome.is_ok(), "{t}/{name} fails again");
            }
        }
    }
}
