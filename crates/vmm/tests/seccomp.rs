//! Real-KVM tests of the seccomp filters (`cxlvm-seccomp`): guests run with every vCPU thread and
//! the run thread confined — including CXL decoder commits, which change the memory map (KVM
//! slots, stitched mappings) on the vCPU thread — and a forbidden system call on a vCPU thread
//! stops the process with the documented status and a report naming the call.

mod common;

use std::io::{self, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{boot, config};
use cxlvm_cxl::topology::Topology;
use cxlvm_mapping::overlay::RangeMode;
use cxlvm_seccomp::{EXIT_STATUS, Violation};
use cxlvm_vmm::{Machine, Outcome, SerialOut};

/// Set in the child process of [`a_forbidden_call_on_a_vcpu_thread_stops_the_process`].
const CHILD: &str = "CXLVM_SECCOMP_TEST_CHILD";

/// A serial sink whose every write creates a socket: `socket(2)` is on no allowlist, and serial
/// writes happen on the vCPU thread.
struct SocketOnWrite;

impl Write for SocketOnWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        drop(std::os::unix::net::UnixDatagram::unbound()?);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn hello_runs_confined() {
    let (mut cfg, cap) = config("hello", "");
    cfg.seccomp = true;
    cfg.vcpus = 2;
    let (_m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(text.contains("hello from cxlvm guest"), "serial:\n{text}");
}

/// Commit an interleaved region (stitched mapping and KVM slot built inside the guest's register
/// write, on the vCPU thread), switch it to MMIO and back, uncommit it: all under the filter.
#[test]
fn cxl_region_commit_and_uncommit_run_confined() {
    let (mut cfg, cap) = config(
        "cxl",
        "mode=region direct=1 verify=1 uncommit=1 reread=1 words=256 gran=16384 size=0x20000000",
    );
    cfg.seccomp = true;
    cfg.memory = 128 << 20;
    cfg.cxl = Some(Topology::simple(2, 256 << 20, 4096, false));
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(
        text.contains("committed") && text.contains("direct ok"),
        "serial:\n{text}"
    );
    // Uncommitted at exit: the interleaved range is gone again.
    let state = m.memory_state();
    assert!(
        !state.windows[0]
            .ranges
            .iter()
            .any(|r| r.mode == RangeMode::Interleaved),
        "{state}"
    );
}

/// The run thread serves memory dumps and the timeout (futex waits with a deadline, kicks) under
/// its filter.
#[test]
fn timeout_and_dumps_run_confined() {
    let (mut cfg, cap) = config("spin", "");
    cfg.seccomp = true;
    cfg.vcpus = 2;
    cfg.timeout = Some(Duration::from_millis(300));
    let mut m = Machine::build(cfg).unwrap();
    m.set_dump_request(Arc::new(AtomicBool::new(true)));
    let r = m.run().unwrap();
    assert_eq!(
        r.outcome,
        Outcome::Timeout(Duration::from_millis(300)),
        "{}",
        cap.text()
    );
}

/// With seccomp off, the call the filter refuses goes through (the flag really turns it off).
#[test]
fn seccomp_off_lets_the_forbidden_call_through() {
    let (mut cfg, _cap) = config("hello", "");
    cfg.seccomp = false;
    cfg.serial = SerialOut::Writer(Box::new(SocketOnWrite));
    let r = Machine::build(cfg).unwrap().run().unwrap();
    assert_eq!(r.outcome, Outcome::Exit(0));
}

/// Only does something as the child of the test below: runs `hello` with a serial sink that
/// makes a forbidden call. Reaching the end means the filter let it through.
#[test]
fn forbidden_call_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let (mut cfg, _cap) = config("hello", "");
    cfg.serial = SerialOut::Writer(Box::new(SocketOnWrite));
    let r = Machine::build(cfg).unwrap().run();
    eprintln!(
        "the child survived a forbidden call: {:?}",
        r.map(|r| r.outcome)
    );
}

#[test]
fn a_forbidden_call_on_a_vcpu_thread_stops_the_process() {
    common::require_kvm();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "forbidden_call_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_STATUS), "stderr:\n{stderr}");
    let v = Violation::find(&stderr).unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    assert_eq!(
        v,
        Violation {
            thread: "vcpu0".into(),
            syscall: libc::SYS_socket as u32,
        }
    );
    assert_eq!(v.syscall_name(), Some("socket"));
}
