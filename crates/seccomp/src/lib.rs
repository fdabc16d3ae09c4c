//! cxlvm's seccomp filters: each thread that runs a guest is confined to the system calls it needs.
//!
//! - [`ThreadKind`]: the threads cxlvm confines — every vCPU thread, and the *run thread* that
//!   waits for them (`Machine::run`'s waiting thread: timeout, SIGUSR1 dumps, kicks).
//! - [`rules`] / [`compile`]: the allowlist of each kind (with argument filters where they are
//!   cheap and meaningful: `ioctl` only with the KVM requests the thread uses, `mmap`/`mprotect`
//!   never executable, `openat` read-only, `tgkill` only the vCPU kick to this process) compiled
//!   into a BPF program with [`seccompiler`]. Anything else traps.
//! - [`apply`]: installs a compiled filter on the calling thread (for good: filters cannot be
//!   removed) and records the thread's name for the report.
//! - [`install_sigsys_handler`]: the process-wide `SIGSYS` handler. A forbidden call raises
//!   `SIGSYS`; the handler writes one line, [`Violation`]'s format,
//!   `cxlvm: seccomp: thread vcpu0 made forbidden system call 41 (socket); stopping`, to stderr
//!   and ends the process with [`EXIT_STATUS`] (159 = 128 + SIGSYS, what a shell reports for a
//!   process killed by SIGSYS). The handler is async-signal-safe: it formats into a stack buffer
//!   and only calls `write(2)` and `_exit(2)`.
//!
//! Only x86-64 is supported (the only architecture cxlvm runs on).
//!
//! This crate holds all of cxlvm's seccomp `unsafe` (the signal handler and its installation);
//! every block carries a `SAFETY:` comment.

mod filters;
mod names;
mod report;

pub use filters::{Params, ThreadKind, compile, ioctls, rules};
pub use report::{EXIT_STATUS, Violation, install_sigsys_handler, syscall_name};
pub use seccompiler::BpfProgram;

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The allowlist could not be turned into a BPF program.
    #[error("cannot compile the {kind} seccomp filter: {source}")]
    Compile {
        /// Which thread's filter.
        kind: ThreadKind,
        /// Cause.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter (`prctl(PR_SET_NO_NEW_PRIVS)` or `seccomp(2)` failed).
    #[error("cannot install the {kind} seccomp filter: {source}")]
    Install {
        /// Which thread's filter.
        kind: ThreadKind,
        /// Cause.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// Installs `program` (compiled by [`compile`] for `kind`) on the calling thread, after recording
/// `thread_name` (up to 31 bytes are kept) for the SIGSYS report. From here on the thread, and
/// any thread it creates, may only make the system calls the filter allows. Call
/// [`install_sigsys_handler`] first, or a forbidden call kills the process without a report.
pub fn apply(
    kind: ThreadKind,
    program: &BpfProgram,
    thread_name: &str,
) -> Result<(), SeccompError> {
    report::set_thread_name(thread_name);
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { kind, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A confined thread can do what its kind needs and end normally (thread exit runs under the
    /// filter too).
    #[test]
    fn a_thread_runs_and_ends_under_each_filter() {
        install_sigsys_handler().unwrap();
        let params = Params::for_this_process(libc::SIGRTMIN());
        for kind in ThreadKind::ALL {
            let prog = compile(kind, &params).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let t = std::thread::Builder::new()
                .name(format!("test-{kind}"))
                .spawn(move || {
                    apply(kind, &prog, &format!("test-{kind}")).unwrap();
                    let v: Vec<u64> = (0..1 << 20).collect();
                    let m: std::collections::HashMap<u64, u64> =
                        v.iter().map(|&x| (x, x)).collect();
                    tx.send(m.len() + v.len()).unwrap();
                })
                .unwrap();
            assert_eq!(rx.recv().unwrap(), 2 << 20);
            t.join().unwrap();
        }
    }

    /// Set in the children of the tests below: what the confined thread does.
    const CHILD: &str = "CXLVM_SECCOMP_UNIT_CHILD";

    /// Only does something as a child of the tests below: confines a thread of each kind in turn
    /// and lets it do what `CHILD` says.
    #[test]
    fn child() {
        let Some(what) = std::env::var_os(CHILD) else {
            return;
        };
        install_sigsys_handler().unwrap();
        let params = Params::for_this_process(libc::SIGRTMIN());
        let kind = if what == "abort-run" {
            ThreadKind::Run
        } else {
            ThreadKind::Vcpu
        };
        let prog = compile(kind, &params).unwrap();
        std::thread::Builder::new()
            .spawn(move || {
                apply(kind, &prog, "confined").unwrap();
                if what == "socket" {
                    let _ = std::os::unix::net::UnixDatagram::unbound();
                } else {
                    std::process::abort();
                }
            })
            .unwrap()
            .join()
            .unwrap();
        eprintln!("the child survived");
    }

    fn run_child(what: &str) -> std::process::Output {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::child", "--nocapture", "--test-threads=1"])
            .env(CHILD, what)
            .output()
            .unwrap()
    }

    #[test]
    fn a_forbidden_call_exits_159_with_the_report() {
        let out = run_child("socket");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_STATUS), "{stderr}");
        let v = Violation::find(&stderr).unwrap_or_else(|| panic!("no report: {stderr}"));
        assert_eq!(
            v,
            Violation {
                thread: "confined".into(),
                syscall: libc::SYS_socket as u32
            }
        );
    }

    /// `abort()` (a panic with `panic = "abort"`) still aborts on a confined thread instead of
    /// being reported as a forbidden `tgkill`.
    #[test]
    fn abort_still_aborts_under_each_filter() {
        use std::os::unix::process::ExitStatusExt;
        for what in ["abort-vcpu", "abort-run"] {
            let out = run_child(what);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{what}: {stderr}");
            assert_eq!(Violation::find(&stderr), None, "{what}: {stderr}");
        }
    }
}
