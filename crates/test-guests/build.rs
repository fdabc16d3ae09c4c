//! Builds the guest workspace (`guest/`) with a nested cargo and tells `lib.rs` where the images
//! are (`CXLVM_TEST_GUESTS_DIR`).
//!
//! The nested cargo runs in `guest/` (so that `guest/.cargo/config.toml` applies: the guest
//! rustflags, for the guest target only) with a clean environment: everything the outer cargo
//! sets for build scripts or for `cargo clippy`/`cargo llvm-cov`/`sccache` (rustflags, wrappers,
//! target dir, jobserver, features, cfgs) would otherwise leak into the guest build.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

include!("src/names.rs");

/// Guests are built for the host target, as freestanding static ELFs.
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"),
    );
    let guest_dir = manifest_dir.join("../../guest");
    let guest_dir = guest_dir
        .canonicalize()
        .unwrap_or_else(|e| panic!("guest workspace {}: {e}", guest_dir.display()));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let target_dir = out_dir.join("guest-target");

    for input in [
        "kit",
        "programs",
        "Cargo.toml",
        "Cargo.lock",
        ".cargo/config.toml",
    ] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(input).display());
    }
    println!("cargo:rerun-if-changed=src/names.rs");
    println!("cargo:rerun-if-changed=build.rs");

    build_guests(&guest_dir, &target_dir);

    let images = target_dir.join(GUEST_TARGET).join("release");
    for name in NAMES {
        let image = images.join(name);
        assert!(
            image.is_file(),
            "the guest build succeeded but did not produce `{}`: is `{name}` a [[bin]] of guest/programs?",
            image.display()
        );
    }
    println!("cargo:rustc-env=CXLVM_TEST_GUESTS_DIR={}", images.display());
}

fn build_guests(guest_dir: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(guest_dir)
        .arg("build")
        .arg("--release")
        .arg("--bins")
        // guest/ has no dependencies, so its lock file is complete and nothing is fetched.
        .arg("--locked")
        .arg("--offline")
        // An explicit --target keeps the guest rustflags off the (host) build scripts.
        .args(["--target", GUEST_TARGET])
        .arg("--manifest-path")
        .arg(guest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    if let Some(jobs) = env::var_os("NUM_JOBS") {
        cmd.arg("--jobs").arg(jobs);
    }
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if leaks_into_nested_cargo(key) {
            cmd.env_remove(key);
        }
    }

    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&cargo).display()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let command: Vec<_> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy())
            .collect();
        panic!(
            "building the test guests failed ({}): `{}` in {}\n--- stderr:\n{stderr}\n--- stdout:\n{}",
            output.status,
            command.join(" "),
            guest_dir.display(),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    for line in stderr.lines().filter(|l| l.starts_with("warning:")) {
        println!("cargo:warning=guest build: {line}");
    }
}

/// Whether the outer cargo's environment variable `key` must not reach the nested cargo.
fn leaks_into_nested_cargo(key: &str) -> bool {
    // Kept: where cargo keeps its registry cache and config.
    const KEEP: &[&str] = &["CARGO_HOME"];
    const REMOVE: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "MAKEFLAGS",
        "MFLAGS",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
    ];
    // `CARGO_*` covers CARGO_ENCODED_RUSTFLAGS, CARGO_BUILD_*, CARGO_TARGET_DIR,
    // CARGO_TARGET_<triple>_*, CARGO_MAKEFLAGS, CARGO_PRIMARY_PACKAGE, CARGO_FEATURE_*,
    // CARGO_CFG_*, CARGO_PROFILE_*, CARGO_PKG_* and CARGO_MANIFEST_*; `__CARGO_*` is cargo's
    // internal state (e.g. `cargo fix`).
    if KEEP.contains(&key) {
        return false;
    }
    key.starts_with("CARGO_") || key.starts_with("__CARGO") || REMOVE.contains(&key)
}
