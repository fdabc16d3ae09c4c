//! Replays the committed corpora and regressions through the targets without libFuzzer
//! (`cargo test --release --manifest-path fuzz/Cargo.toml`), plus a few pseudo-random inputs per
//! target. (Regressions: tests/regressions.rs.)

use std::path::{Path, PathBuf};

use cxlvm_fuzz::targets::by_name;

const TARGETS: [&str; 8] = [
    "ecam", "hdm", "mailbox", "window", "topology", "regions", "elf", "emulate",
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

#[test]
fn corpora_replay_cleanly() {
    let mut n = 0;
    for t in TARGETS {
        let f = by_name(t).unwrap();
        for p in files(&root().join("corpus"), t) {
            eprintln!("{t}: {}", p.display());
            f(&std::fs::read(&p).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no corpus");
}

#[test]
fn pseudo_random_inputs_run_cleanly() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for t in TARGETS {
        let f = by_name(t).unwrap();
        for len in [0usize, 1, 7, 40, 200, 600] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            f(&data);
        }
    }
}
