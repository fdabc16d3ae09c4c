//! The SIGSYS report: one line on stderr, then the process ends with [`EXIT_STATUS`].

use std::cell::Cell;
use std::sync::OnceLock;

/// Exit status of a process stopped for a forbidden system call: 128 + SIGSYS (31), what a shell
/// reports for a process killed by SIGSYS.
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS raised by a seccomp filter (`SYS_SECCOMP` in the kernel headers).
const SYS_SECCOMP: i32 = 1;

/// Longest thread name kept for the report.
const NAME_MAX: usize = 31;

const PREFIX: &str = "cxlvm: seccomp: thread ";
const MIDDLE: &str = " made forbidden system call ";
const SUFFIX: &str = "; stopping";

thread_local! {
    /// This thread's name for the report (NUL-padded). Const-initialized and without a
    /// destructor, so reading it is a plain thread-local load: async-signal-safe.
    static THREAD_NAME: Cell<[u8; NAME_MAX + 1]> = const { Cell::new([0; NAME_MAX + 1]) };
}

pub(crate) fn set_thread_name(name: &str) {
    let mut buf = [0u8; NAME_MAX + 1];
    let n = name.len().min(NAME_MAX);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    THREAD_NAME.with(|c| c.set(buf));
}

/// The name of x86-64 system call `nr`, if known.
pub fn syscall_name(nr: u32) -> Option<&'static str> {
    let t = crate::names::X86_64;
    t.binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .map(|i| t[i].1)
}

/// A fixed-size line built without allocating (usable in a signal handler).
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Self {
            buf: [0; 160],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn push_u32(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Formats the report line (with its newline) for thread `name` (NUL-padded) and system call
/// `nr` (`None`: the SIGSYS did not come from a seccomp filter).
fn report_line(name: &[u8], nr: Option<u32>) -> Line {
    let mut l = Line::new();
    l.push(PREFIX.as_bytes());
    let name = name.split(|&b| b == 0).next().unwrap_or_default();
    l.push(if name.is_empty() { b"?" } else { name });
    l.push(MIDDLE.as_bytes());
    match nr {
        Some(nr) => {
            l.push_u32(nr);
            l.push(b" (");
            l.push(syscall_name(nr).unwrap_or("unknown").as_bytes());
            l.push(b")");
        }
        None => l.push(b"? (SIGSYS not raised by seccomp)"),
    }
    l.push(SUFFIX.as_bytes());
    l.push(b"\n");
    l
}

/// A forbidden system call as reported on stderr (the report line, parsed back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Name of the thread that made the call (`?` if it had none).
    pub thread: String,
    /// The system call number.
    pub syscall: u32,
}

impl Violation {
    /// The first report line in `stderr`, parsed.
    pub fn find(stderr: &str) -> Option<Violation> {
        stderr.lines().find_map(|l| {
            let rest = l.strip_prefix(PREFIX)?;
            let (thread, rest) = rest.split_once(MIDDLE)?;
            let (nr, _) = rest.split_once(' ')?;
            Some(Violation {
                thread: thread.to_owned(),
                syscall: nr.parse().ok()?,
            })
        })
    }

    /// The system call's name, if known.
    pub fn syscall_name(&self) -> Option<&'static str> {
        syscall_name(self.syscall)
    }
}

/// The fields of a SIGSYS `siginfo_t` on x86-64 (`_sigsys` in the kernel's union).
#[repr(C)]
struct SigsysInfo {
    _signo: i32,
    _errno: i32,
    code: i32,
    _pad: i32,
    _call_addr: *mut libc::c_void,
    syscall: i32,
    _arch: u32,
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the handler is installed with SA_SIGINFO, so the kernel passes a valid `siginfo_t`;
    // for SIGSYS its union holds `_sigsys`, laid out as `SigsysInfo` on x86-64 (signo, errno,
    // code, padding to 8, then call address, syscall number, arch). Plain integer reads only.
    let (code, nr) = unsafe {
        let s = &*info.cast::<SigsysInfo>();
        (s.code, s.syscall)
    };
    let name = THREAD_NAME.with(Cell::get);
    let line = report_line(&name, (code == SYS_SECCOMP).then_some(nr as u32));
    let bytes = line.bytes();
    // SAFETY: `write(2)` and `_exit(2)` are async-signal-safe and allowed by every cxlvm filter;
    // `bytes` is a live stack buffer of `bytes.len()` bytes. `_exit` does not return.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(EXIT_STATUS);
    }
}

/// Installs the process-wide SIGSYS handler that reports a forbidden call and exits with
/// [`EXIT_STATUS`] (idempotent). Every other signal is blocked while it runs.
pub fn install_sigsys_handler() -> Result<(), crate::SeccompError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        // SAFETY: `sigaction` is a plain C struct for which all-zero bytes are valid (no handler,
        // empty mask, no flags); every field that matters is set below.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `act.sa_mask` is a valid, owned `sigset_t`; `act` describes a handler with the
        // SA_SIGINFO signature that only does async-signal-safe work; the old action is not
        // asked for (null).
        let rc = unsafe {
            libc::sigfillset(&mut act.sa_mask);
            libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    r.map_err(|errno| crate::SeccompError::Handler(std::io::Error::from_raw_os_error(errno)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> [u8; NAME_MAX + 1] {
        let mut b = [0u8; NAME_MAX + 1];
        b[..s.len()].copy_from_slice(s.as_bytes());
        b
    }

    #[test]
    fn the_report_line_parses_back() {
        let l = report_line(&name("vcpu3"), Some(libc::SYS_socket as u32));
        let text = std::str::from_utf8(l.bytes()).unwrap();
        assert!(text.ends_with("(socket); stopping\n"), "{text}");
        let v = Violation::find(&format!("noise\n{text}more\n")).unwrap();
        assert_eq!(
            v,
            Violation {
                thread: "vcpu3".into(),
                syscall: libc::SYS_socket as u32
            }
        );
        assert_eq!(v.syscall_name(), Some("socket"));
    }

    #[test]
    fn unnamed_threads_unknown_calls_and_foreign_sigsys_still_report() {
        let l = report_line(&name(""), Some(4000));
        let v = Violation::find(std::str::from_utf8(l.bytes()).unwrap()).unwrap();
        assert_eq!(
            (v.thread.as_str(), v.syscall, v.syscall_name()),
            ("?", 4000, None)
        );
        let l = report_line(&name("run"), None);
        let text = std::str::from_utf8(l.bytes()).unwrap();
        assert!(
            text.starts_with(PREFIX) && Violation::find(text).is_none(),
            "{text}"
        );
    }

    #[test]
    fn numbers_and_names() {
        let mut l = Line::new();
        for n in [0, 7, 10, 4_294_967_295] {
            l.push_u32(n);
            l.push(b",");
        }
        assert_eq!(l.bytes(), b"0,7,10,4294967295,");
        assert_eq!(syscall_name(0), Some("read"));
        assert_eq!(syscall_name(libc::SYS_ioctl as u32), Some("ioctl"));
        assert_eq!(syscall_name(libc::SYS_tgkill as u32), Some("tgkill"));
        assert_eq!(syscall_name(9999), None);
        assert!(crate::names::X86_64.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn long_names_are_cut_and_lines_never_overflow() {
        set_thread_name(&"x".repeat(100));
        let n = THREAD_NAME.with(Cell::get);
        assert_eq!(n.iter().filter(|&&b| b == b'x').count(), NAME_MAX);
        let l = report_line(&n, Some(u32::MAX));
        assert!(l.bytes().ends_with(b"\n") && l.len <= l.buf.len());
    }

    #[test]
    fn handler_installs_idempotently() {
        install_sigsys_handler().unwrap();
        install_sigsys_handler().unwrap();
    }
}
