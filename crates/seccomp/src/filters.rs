//! The allowlists: what each kind of thread may ask the kernel, and why.
//!
//! Found by running every workload (the whole test suite, the CLI, the demo and benchmarks) with
//! the filters on; each entry says which code needs it. Both lists share [`common`]: memory
//! management for the allocator (glibc arenas grow with `mprotect`, shrink with `madvise`/
//! `munmap`, big blocks are `mmap`ed and `mremap`ed), futexes (locks, condition variables,
//! `ArcSwap`), the signal return path and thread exit (std's alternate signal stack, glibc's
//! stack advice), clocks, `getrandom` (std's per-thread hash keys), the exit calls, and what
//! `abort()` needs to raise SIGABRT (so a `panic = "abort"` build still aborts).

use std::collections::BTreeMap;
use std::fmt;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::SeccompError;

/// A kind of thread with its own allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// A vCPU thread: `KVM_RUN` and every exit it handles — port I/O and MMIO devices (serial
    /// output to stdout, a file or a writer; logs), CXL register writes that commit decoders and
    /// so change the memory map on this thread (KVM memory slots, stitched mappings, the VMA
    /// budget read from `/proc`).
    Vcpu,
    /// The run thread (`Machine::run`'s waiting thread): waits for an outcome with a timeout,
    /// prints SIGUSR1 memory dumps on stderr, and kicks the vCPU threads out of `KVM_RUN`.
    Run,
    /// The console input thread (Linux guests): reads cxlvm's stdin and queues the bytes in the
    /// guest's UART, whose interrupt is an eventfd write.
    ConsoleInput,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vcpu, ThreadKind::Run, ThreadKind::ConsoleInput];

    /// Short name (`vcpu`, `run`).
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Run => "run",
            ThreadKind::ConsoleInput => "console-in",
        }
    }
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the filters depend on at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// This process's id: the run thread may signal its own threads only.
    pub pid: u32,
    /// The signal that kicks vCPU threads out of `KVM_RUN` (the only one the run thread sends).
    pub kick_signal: i32,
}

impl Params {
    /// Parameters for this process, with vCPU kick signal `kick_signal`.
    pub fn for_this_process(kick_signal: i32) -> Self {
        Self {
            pid: std::process::id(),
            kick_signal,
        }
    }
}

/// The KVM ioctl request numbers the vCPU thread may use (computed like `kvm-ioctls` does).
pub mod ioctls {
    use kvm_bindings::{
        KVMIO, kvm_regs, kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs,
        kvm_xsave,
    };
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_userspace_memory_region
    );
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// `arg` (32 bits) equals `value`.
fn eq(arg: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// One rule per alternative: the call is allowed when any of them matches.
fn any_of(
    conds: impl IntoIterator<Item = Result<Vec<SeccompCondition>, seccompiler::BackendError>>,
) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    conds
        .into_iter()
        .map(|c| SeccompRule::new(c?))
        .collect::<Result<_, _>>()
}

/// `prot` (argument `arg`) without `PROT_EXEC`: no thread that runs a guest maps code.
fn not_exec(arg: u8) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    any_of([Ok(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])])
}

/// What every confined thread needs.
fn common(r: &mut Rules) -> Result<(), seccompiler::BackendError> {
    // Allocator and mappings (never executable).
    r.insert(libc::SYS_brk, vec![]);
    r.insert(libc::SYS_mmap, not_exec(2)?);
    r.insert(libc::SYS_mprotect, not_exec(2)?);
    r.insert(libc::SYS_munmap, vec![]);
    r.insert(libc::SYS_mremap, vec![]);
    r.insert(libc::SYS_madvise, vec![]);
    // Locks, condition variables, parking.
    r.insert(libc::SYS_futex, vec![]);
    r.insert(libc::SYS_sched_yield, vec![]);
    // Signals (the vCPU kick, SIGUSR1 for dumps) and thread exit: std removes the thread's
    // alternate signal stack, glibc blocks signals while the thread ends.
    r.insert(libc::SYS_rt_sigreturn, vec![]);
    r.insert(libc::SYS_rt_sigprocmask, vec![]);
    r.insert(libc::SYS_sigaltstack, vec![]);
    // Clocks (usually the vDSO; the system call where the clock source has none).
    r.insert(libc::SYS_clock_gettime, vec![]);
    // std's per-thread `HashMap` keys.
    r.insert(libc::SYS_getrandom, vec![]);
    // Thread exit; `exit_group` also ends the process from the SIGSYS handler.
    r.insert(libc::SYS_exit, vec![]);
    r.insert(libc::SYS_exit_group, vec![]);
    // `abort()` (a panic in a `panic = "abort"` build, std's stack-overflow report) raises
    // SIGABRT with `tgkill(getpid(), gettid(), SIGABRT)`: see [`signals`].
    r.insert(libc::SYS_getpid, vec![]);
    r.insert(libc::SYS_gettid, vec![]);
    Ok(())
}

/// `tgkill` to threads of this process only, with SIGABRT (so that `abort()` still aborts) or one
/// of `extra`.
fn signals(r: &mut Rules, p: &Params, extra: &[i32]) -> Result<(), seccompiler::BackendError> {
    let rules = any_of(
        std::iter::once(libc::SIGABRT)
            .chain(extra.iter().copied())
            .map(|sig| Ok(vec![eq(0, u64::from(p.pid))?, eq(2, sig as u64)?])),
    )?;
    r.insert(libc::SYS_tgkill, rules);
    Ok(())
}

fn vcpu(r: &mut Rules, p: &Params) -> Result<(), seccompiler::BackendError> {
    signals(r, p, &[])?;
    // KVM: run, read RIP for fault reports, change memory slots when a guest register write
    // (CXL decoder commit, scratch-window switch) changes the memory map on this thread, and
    // complete instructions KVM's emulator gives up on (registers, special registers for
    // paging and CR2, XSAVE state and XCR0, exception injection).
    r.insert(
        libc::SYS_ioctl,
        any_of(
            [
                ioctls::KVM_RUN(),
                ioctls::KVM_GET_REGS(),
                ioctls::KVM_SET_USER_MEMORY_REGION(),
                ioctls::KVM_SET_REGS(),
                ioctls::KVM_GET_SREGS(),
                ioctls::KVM_SET_SREGS(),
                ioctls::KVM_GET_VCPU_EVENTS(),
                ioctls::KVM_SET_VCPU_EVENTS(),
                ioctls::KVM_GET_XSAVE(),
                ioctls::KVM_SET_XSAVE(),
                ioctls::KVM_GET_XCRS(),
            ]
            .map(|req| Ok(vec![eq(1, req)?])),
        )?,
    );
    // Serial output (stdout, a file, any writer), logs on stderr.
    r.insert(libc::SYS_write, vec![]);
    // The VMA budget (`/proc/sys/vm/max_map_count`, `/proc/self/maps`) when a stitched mapping is
    // planned or fails: read-only opens only.
    r.insert(
        libc::SYS_openat,
        any_of([Ok(vec![eq(2, (libc::O_RDONLY | libc::O_CLOEXEC) as u64)?])])?,
    );
    r.insert(libc::SYS_read, vec![]);
    r.insert(libc::SYS_close, vec![]);
    // std checks that a descriptor is open before closing it (`fcntl(fd, F_GETFD)`, builds with
    // debug assertions).
    r.insert(
        libc::SYS_fcntl,
        any_of([Ok(vec![eq(1, libc::F_GETFD as u64)?])])?,
    );
    // Region stores (cxlvm-mapping's storage map) are created, filled and emptied inside the
    // guest's decoder commit: a memfd sized with ftruncate, data found with lseek
    // (SEEK_DATA/SEEK_HOLE), moved pages given back with fallocate (PUNCH_HOLE).
    r.insert(libc::SYS_memfd_create, vec![]);
    r.insert(libc::SYS_ftruncate, vec![]);
    r.insert(libc::SYS_lseek, vec![]);
    r.insert(libc::SYS_fallocate, vec![]);
    // Stitching checks its files' sizes; std reads /proc files with a size hint.
    r.insert(libc::SYS_statx, vec![]);
    r.insert(libc::SYS_fstat, vec![]);
    r.insert(libc::SYS_newfstatat, vec![]);
    Ok(())
}

fn run(r: &mut Rules, p: &Params) -> Result<(), seccompiler::BackendError> {
    // Kicks: the kick signal, to a thread of this process only (glibc's `pthread_kill` asks for
    // the pid first).
    signals(r, p, &[p.kick_signal])?;
    // SIGUSR1 memory dumps on stderr (and logs on stdout or stderr).
    r.insert(
        libc::SYS_write,
        any_of([1u64, 2].map(|fd| Ok(vec![eq(0, fd)?])))?,
    );
    Ok(())
}

fn console_input(r: &mut Rules, p: &Params) -> Result<(), seccompiler::BackendError> {
    signals(r, p, &[])?;
    // stdin only.
    r.insert(libc::SYS_read, any_of([Ok(vec![eq(0, 0)?])])?);
    // The UART's interrupt (an eventfd), logs on stderr.
    r.insert(libc::SYS_write, vec![]);
    // At the end of stdin the thread may hold the last reference to the UART (the machine is
    // gone): dropping it closes the interrupt eventfd and the console file. std checks that a
    // descriptor is open before it closes it (`fcntl(fd, F_GETFD)`, debug builds).
    r.insert(libc::SYS_close, vec![]);
    r.insert(
        libc::SYS_fcntl,
        any_of([Ok(vec![eq(1, libc::F_GETFD as u64)?])])?,
    );
    // Waiting for room in the UART's FIFO.
    r.insert(libc::SYS_clock_nanosleep, vec![]);
    r.insert(libc::SYS_nanosleep, vec![]);
    Ok(())
}

/// The allowlist of `kind`: system call number → argument rules (empty: any arguments).
pub fn rules(
    kind: ThreadKind,
    params: &Params,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut r = Rules::new();
    let built = common(&mut r).and_then(|()| match kind {
        ThreadKind::Vcpu => vcpu(&mut r, params),
        ThreadKind::Run => run(&mut r, params),
        ThreadKind::ConsoleInput => console_input(&mut r, params),
    });
    built.map_err(|source| SeccompError::Compile { kind, source })?;
    Ok(r)
}

/// Compiles the filter of `kind` for x86-64: allowed calls pass, anything else traps (SIGSYS).
pub fn compile(kind: ThreadKind, params: &Params) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Compile { kind, source };
    let filter = SeccompFilter::new(
        rules(kind, params)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params::for_this_process(libc::SIGRTMIN())
    }

    #[test]
    fn every_filter_compiles_for_x86_64() {
        for kind in ThreadKind::ALL {
            let prog = compile(kind, &params()).unwrap();
            assert!(!prog.is_empty(), "{kind}");
            // A classic BPF program has at most 4096 instructions.
            assert!(prog.len() <= 4096, "{kind}: {} instructions", prog.len());
        }
    }

    #[test]
    fn kvm_request_numbers_match_the_kernel_headers() {
        assert_eq!(ioctls::KVM_RUN(), 0xAE80);
        assert_eq!(ioctls::KVM_GET_REGS(), 0x8090_AE81);
        assert_eq!(ioctls::KVM_SET_USER_MEMORY_REGION(), 0x4020_AE46);
        assert_eq!(ioctls::KVM_SET_REGS(), 0x4090_AE82);
        assert_eq!(ioctls::KVM_GET_SREGS(), 0x8138_AE83);
        assert_eq!(ioctls::KVM_SET_SREGS(), 0x4138_AE84);
        assert_eq!(ioctls::KVM_GET_VCPU_EVENTS(), 0x8040_AE9F);
        assert_eq!(ioctls::KVM_SET_VCPU_EVENTS(), 0x4040_AEA0);
        assert_eq!(ioctls::KVM_GET_XSAVE(), 0x9000_AEA4);
        assert_eq!(ioctls::KVM_SET_XSAVE(), 0x5000_AEA5);
        assert_eq!(ioctls::KVM_GET_XCRS(), 0x8188_AEA6);
    }

    #[test]
    fn lists_differ_where_the_threads_do() {
        let vcpu = rules(ThreadKind::Vcpu, &params()).unwrap();
        let run = rules(ThreadKind::Run, &params()).unwrap();
        for nr in [
            libc::SYS_ioctl,
            libc::SYS_openat,
            libc::SYS_read,
            libc::SYS_close,
        ] {
            assert!(vcpu.contains_key(&nr) && !run.contains_key(&nr), "{nr}");
        }
        // Both may abort; only the run thread kicks.
        assert_eq!(vcpu[&libc::SYS_tgkill].len(), 1);
        assert_eq!(run[&libc::SYS_tgkill].len(), 2);
        for forbidden in [
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_ptrace,
            libc::SYS_kill,
        ] {
            assert!(
                !vcpu.contains_key(&forbidden) && !run.contains_key(&forbidden),
                "{forbidden}"
            );
        }
        // Only the thread committing decoders creates region stores.
        assert!(vcpu.contains_key(&libc::SYS_memfd_create));
        assert!(!run.contains_key(&libc::SYS_memfd_create));
    }
}
