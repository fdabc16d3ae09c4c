//! The `cxlvm` binary: bad input gives one clear line and exit status 2; good runs pass the
//! guest's status through.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{cxlvm, guest, require_kvm, stderr};

fn tmp(name: &str) -> PathBuf {
    common::tmp("cli", name)
}

/// Status 2 and exactly one stderr line containing `needle`.
fn user_error(o: &Output, needle: &str) {
    common::user_error(o, &[needle]);
}

#[test]
fn missing_guest_file() {
    let o = cxlvm(&["run", "--guest", "/nonexistent/guest.elf"]);
    user_error(&o, "cannot read guest image /nonexistent/guest.elf");
}

#[test]
fn unreadable_guest_file() {
    // A directory cannot be read as a file, even by root.
    let dir = tmp("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    let o = cxlvm(&["run", "--guest", dir.to_str().unwrap()]);
    user_error(&o, "cannot read guest image");
}

#[test]
fn non_elf_guest() {
    let p = tmp("not-elf.txt");
    std::fs::write(&p, "just text, not a program\n").unwrap();
    let o = cxlvm(&["run", "--guest", p.to_str().unwrap()]);
    user_error(&o, "not an ELF file");
}

#[test]
fn dynamically_linked_guest() {
    // /bin/true is an ELF, but dynamic (or PIE): not a test guest.
    let o = cxlvm(&["run", "--guest", "/bin/true"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("/bin/true:"), "{err}");
}

#[test]
fn guest_that_does_not_fit_in_memory() {
    let o = cxlvm(&[
        "run",
        "--guest",
        &guest("hello"),
        "--memory",
        "4M",
        "--vcpus",
        "16",
    ]);
    user_error(&o, "use more --memory");
}

#[test]
fn bad_memory_and_vcpus() {
    user_error(
        &cxlvm(&["run", "--guest", &guest("hello"), "--memory", "1M"]),
        "--memory",
    );
    user_error(
        &cxlvm(&["run", "--guest", &guest("hello"), "--memory", "12345"]),
        "--memory",
    );
    user_error(
        &cxlvm(&["run", "--guest", &guest("hello"), "--vcpus", "0"]),
        "--vcpus 0",
    );
    user_error(
        &cxlvm(&["run", "--guest", &guest("hello"), "--scratch-window", "3M"]),
        "--scratch-window",
    );
    user_error(
        &cxlvm(&["run", "--guest", &guest("hello"), "--timeout", "0"]),
        "invalid value '0' for '--timeout",
    );
}

#[test]
fn unparsable_arguments_exit_2() {
    let o = cxlvm(&["run", "--guest", &guest("hello"), "--memory", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("'lots' is not a size"),
        "{}",
        stderr(&o)
    );
    let o = cxlvm(&["run"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--guest"));
}

#[test]
fn kvm_device_missing() {
    let o = cxlvm(&[
        "run",
        "--guest",
        &guest("hello"),
        "--kvm",
        "/nonexistent/kvm",
    ]);
    user_error(&o, "/nonexistent/kvm not found: KVM is not available");
}

#[test]
fn kvm_device_not_permitted() {
    require_kvm();
    let bin = env!("CARGO_BIN_EXE_cxlvm");
    // Run as nobody when we are root, so that /dev/kvm (mode 0600 root) is really refused;
    // otherwise we are unprivileged already.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    // Copy the guest somewhere the unprivileged user can read.
    let g = tmp("hello.elf");
    std::fs::copy(guest("hello"), &g).unwrap();
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    let o = cmd
        .args(["run", "--guest", g.to_str().unwrap()])
        .output()
        .expect("setpriv (util-linux) runs");
    let err = stderr(&o);
    if !root && o.status.code() != Some(2) {
        panic!("unprivileged user can open /dev/kvm here; cannot test the refusal: {err}");
    }
    user_error(&o, "permission denied opening /dev/kvm");
}

#[test]
fn guest_exit_status_passes_through_and_stats_are_json() {
    require_kvm();
    let stats = tmp("stats.json");
    let o = cxlvm(&[
        "run",
        "--guest",
        &guest("exit"),
        "--cmdline",
        "code=7",
        "--stats-json",
        stats.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let json = std::fs::read_to_string(&stats).unwrap();
    assert!(json.contains("\"pio_exits\""), "{json}");
    assert!(json.contains("\"start_to_first_instruction_us\""), "{json}");
}

#[test]
fn guest_fault_is_one_report_and_status_1() {
    require_kvm();
    let o = cxlvm(&["run", "--guest", &guest("fault")]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("guest shut down") && err.contains("RIP 0x") && err.contains("0f 0b"),
        "{err}"
    );
}

#[test]
fn serial_goes_to_a_file_when_asked() {
    require_kvm();
    let out = tmp("serial.txt");
    let o = cxlvm(&[
        "run",
        "--guest",
        &guest("hello"),
        "--serial-file",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("hello from cxlvm guest")
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("hello from cxlvm guest"));
}

#[test]
fn seccomp_is_on_by_default_and_can_be_turned_off() {
    require_kvm();
    for args in [
        &[][..],
        &["--seccomp", "on"],
        &["--seccomp=off"],
        &["--seccomp"],
    ] {
        let hello = guest("hello");
        let mut all = vec!["run", "--guest", &hello];
        all.extend_from_slice(args);
        let o = cxlvm(&all);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("hello from cxlvm guest"));
    }
    let o = cxlvm(&["run", "--guest", &guest("hello"), "--seccomp", "maybe"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
