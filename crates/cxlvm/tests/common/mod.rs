//! Helpers shared by the CLI tests: run the binary, read what it said, check a user error.
// Each test crate uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

/// The `cxlvm` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cxlvm"))
}

/// Runs `cxlvm args...` to completion.
pub fn cxlvm(args: &[&str]) -> Output {
    bin().args(args).output().expect("cxlvm binary runs")
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path in this test process's own temporary directory (`group` keeps test files apart).
pub fn tmp(group: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cxlvm-{group}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// The path of a test guest image.
pub fn guest(name: &str) -> String {
    cxlvm_test_guests::path(name).display().to_string()
}

/// Fails with a clear message where /dev/kvm is missing.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test boots a guest and needs /dev/kvm, which is missing"
    );
}

/// A user error: status 2, exactly one stderr line containing every needle, no panic, nothing
/// on stdout (no guest ran).
pub fn user_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected, got:\n{err}");
    for n in needles {
        assert!(err.contains(n), "expected '{n}' in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        o.stdout.is_empty(),
        "no guest may run: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Polls `serial` (a kernel log being written by `child`) until every line of `wanted` is in it,
/// `child` ends, or `deadline` passes since `started`. Returns how `child` ended, if it did
/// (then it was not waited for all lines), and whether every line was seen.
pub fn wait_for_log_lines(
    child: &mut Child,
    serial: &Path,
    wanted: &[&str],
    started: Instant,
    deadline: Duration,
) -> (Option<ExitStatus>, bool) {
    while started.elapsed() < deadline {
        if let Some(s) = child.try_wait().expect("wait") {
            return (Some(s), false);
        }
        let log = std::fs::read_to_string(serial).unwrap_or_default();
        if wanted.iter().all(|l| log.contains(l)) {
            return (None, true);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    (None, false)
}

/// Runs `scripts/<script>` (a kernel build or download, cached in target/linux) and returns the
/// lines it prints on stdout: the paths it made, last.
pub fn kernel_script(script: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts").join(script))
        .env("CXLVM_KERNEL_DIR", root.join("target/linux"))
        .output()
        .unwrap_or_else(|e| panic!("bash cannot run scripts/{script}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{script} failed (it needs Debian's archive): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// Waits for `child` (stopped or ended) and returns the kernel log it wrote to `serial` and
/// what it said on its piped stderr.
pub fn finish(child: &mut Child, serial: &Path) -> (String, String) {
    use std::io::Read;
    let _ = child.wait();
    let log = std::fs::read_to_string(serial).unwrap_or_default();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (log, err)
}
