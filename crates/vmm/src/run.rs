//! Running a machine: one thread per vCPU, exits handled on that thread, lock-free view lookups;
//! a run thread waits for the outcome. Each of these threads confines itself with its seccomp
//! filter (`cxlvm-seccomp`) before the guest runs, unless the config turns seccomp off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cxlvm_devices::{PioBus, StopReason, Stopper};
use cxlvm_kvm::{Vcpu, VcpuExit, install_kick_handler, kick_signal};
use cxlvm_memory::{AccessOutcome, FlatViewHandle};
use cxlvm_seccomp::{BpfProgram, Params, SeccompError, ThreadKind};
use tracing::{debug, error};
use vmm_sys_util::signal::Killable;

use crate::report::{EmulationStats, FaultKind, NotCompleted, Outcome, RunError, RunReport, Stats};
use crate::{Machine, VmmError};

/// Shared by the vCPU threads and the thread that waits for them.
#[derive(Default)]
struct Control {
    outcome: Mutex<Option<Outcome>>,
    changed: Condvar,
    stop: AtomicBool,
    mmio_exits: AtomicU64,
    pio_exits: AtomicU64,
    unassigned: AtomicU64,
    /// When the boot vCPU first entered `KVM_RUN`.
    first_entry: std::sync::OnceLock<Instant>,
    /// The first thread that could not install its seccomp filter.
    confine_error: Mutex<Option<SeccompError>>,
}

impl Control {
    /// Records how the run ends (the first report wins) and asks every vCPU to stop.
    fn finish(&self, o: Outcome) {
        let mut g = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(o);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }
}

impl Control {
    /// Counts an MMIO exit and the bytes of it that hit no region (logged at debug).
    fn count_mmio(&self, o: AccessOutcome, what: &str, addr: u64, len: usize) {
        self.mmio_exits.fetch_add(1, Ordering::Relaxed);
        if o.unassigned_bytes > 0 {
            self.unassigned
                .fetch_add(o.unassigned_bytes as u64, Ordering::Relaxed);
            debug!("MMIO {what} of {len} bytes at {addr:#x} hit no region");
        }
    }
}

struct VcpuCtx {
    view: FlatViewHandle,
    pio: Arc<PioBus>,
    stopper: Arc<Stopper>,
    ctl: Arc<Control>,
    emulation: Arc<Mutex<EmulationStats>>,
}

/// `KVM_INTERNAL_ERROR_EMULATION`: KVM's instruction emulator gave up.
const INTERNAL_ERROR_EMULATION: u32 = 1;

/// Guest-physical memory for completions: the current flat view, looked up per access (a
/// completion's own writes may change the memory map), counting bytes that hit no region.
struct ViewMemory<'a> {
    view: &'a FlatViewHandle,
    unassigned: std::cell::Cell<u64>,
}

impl cxlvm_emulate::Memory for ViewMemory<'_> {
    fn read(&self, gpa: cxlvm_emulate::Gpa, buf: &mut [u8]) {
        let o = self.view.with(|v| v.read(gpa.0, buf));
        self.unassigned
            .set(self.unassigned.get() + o.unassigned_bytes as u64);
    }

    fn write(&self, gpa: cxlvm_emulate::Gpa, data: &[u8]) {
        let o = self.view.with(|v| v.write(gpa.0, data));
        self.unassigned
            .set(self.unassigned.get() + o.unassigned_bytes as u64);
    }

    fn is_ram(&self, gpa: cxlvm_emulate::Gpa) -> bool {
        self.view
            .with(|v| v.lookup(gpa.0).is_some_and(|r| r.is_ram()))
    }
}

/// Completes the instruction KVM's emulator gave up on (`cxlvm-emulate`), injecting the
/// exception it raises if any, and lets the vCPU go on; or ends the run with the reason.
fn complete_instruction(vcpu: &mut Vcpu, ctx: &VcpuCtx, data: Vec<u64>) -> Option<Outcome> {
    let bytes = kvm_instruction_bytes(&data);
    let mem = ViewMemory {
        view: &ctx.view,
        unassigned: std::cell::Cell::new(0),
    };
    let mut state = vcpu.completion_state();
    let result = cxlvm_emulate::complete(&mut state, &mem, bytes.as_deref());
    let unassigned = mem.unassigned.get();
    if unassigned > 0 {
        ctx.ctl.unassigned.fetch_add(unassigned, Ordering::Relaxed);
    }
    let why = match result {
        Ok(c) => {
            let (mnemonic, fault) = match c {
                cxlvm_emulate::Completion::Done { mnemonic } => (mnemonic, None),
                cxlvm_emulate::Completion::Raise { mnemonic, fault } => (mnemonic, Some(fault)),
            };
            if let Err(e) = state.finish(fault) {
                let (what, source) = match e {
                    cxlvm_kvm::KvmError::Ioctl { what, source } => (what, source),
                    _ => ("ioctl", vmm_sys_util::errno::Error::new(libc::EIO)),
                };
                return Some(Outcome::Error(RunError::Complete {
                    vcpu: vcpu.index(),
                    what,
                    source,
                }));
            }
            ctx.emulation
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(mnemonic, fault.map(|f| f.exception));
            match fault {
                None => debug!(
                    vcpu = vcpu.index(),
                    "completed {}",
                    crate::mnemonic_name(mnemonic)
                ),
                Some(f) => debug!(
                    vcpu = vcpu.index(),
                    "completed {}: injecting #{} (error code {:?}, CR2 {:x?})",
                    crate::mnemonic_name(mnemonic),
                    f.exception.name(),
                    f.error_code,
                    f.cr2
                ),
            }
            return None;
        }
        Err(cxlvm_emulate::Failure::Unsupported { mnemonic }) => {
            NotCompleted::Unsupported(mnemonic)
        }
        Err(cxlvm_emulate::Failure::Decode { .. }) => NotCompleted::Undecodable,
        Err(cxlvm_emulate::Failure::NotLongMode) => NotCompleted::NotLongMode,
        Err(cxlvm_emulate::Failure::FetchFromMmio { gpa }) => NotCompleted::FetchFromMmio(gpa.0),
        Err(cxlvm_emulate::Failure::Cpu(e)) => {
            error!(vcpu = vcpu.index(), "cannot complete an instruction: {e}");
            NotCompleted::StateUnavailable
        }
    };
    drop(state);
    Some(fault(
        vcpu,
        &ctx.view,
        FaultKind::InternalError(INTERNAL_ERROR_EMULATION),
        data,
        Some(why),
    ))
}

/// The instruction bytes KVM attached to an emulation failure: `data` is [suberror, flags,
/// length | bytes..., ...] with flags bit 0 set when the bytes are present (the length in the low
/// byte of the first word after the flags, the bytes after it).
fn kvm_instruction_bytes(data: &[u64]) -> Option<Vec<u8>> {
    if data.first() != Some(&1) || data.get(1).is_none_or(|f| f & 1 == 0) {
        return None;
    }
    let raw: Vec<u8> = data
        .get(2..)?
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let len = usize::from(*raw.first()?).min(raw.len() - 1);
    (len > 0).then(|| raw[1..=len].to_vec())
}

fn fault(
    vcpu: &mut Vcpu,
    view: &FlatViewHandle,
    kind: FaultKind,
    data: Vec<u64>,
    not_completed: Option<NotCompleted>,
) -> Outcome {
    let rip = vcpu.rip();
    // KVM's own copy of the instruction when it gives one (right whatever the guest's paging);
    // otherwise read at RIP, which is a guest-physical address for identity-mapped test guests.
    let bytes = kvm_instruction_bytes(&data).unwrap_or_else(|| {
        let mut b = vec![0u8; 16];
        view.with(|v| v.read(rip, &mut b));
        b
    });
    Outcome::Fault {
        vcpu: vcpu.index(),
        kind,
        rip,
        bytes,
        data,
        not_completed,
    }
}

/// The compiled seccomp filters of one run.
struct Filters {
    vcpu: Arc<BpfProgram>,
    run: BpfProgram,
    console: BpfProgram,
}

impl Filters {
    /// Installs the SIGSYS report handler and compiles both filters (before any thread starts).
    fn new() -> Result<Self, SeccompError> {
        cxlvm_seccomp::install_sigsys_handler()?;
        let params = Params::for_this_process(kick_signal());
        Ok(Self {
            vcpu: Arc::new(cxlvm_seccomp::compile(ThreadKind::Vcpu, &params)?),
            run: cxlvm_seccomp::compile(ThreadKind::Run, &params)?,
            console: cxlvm_seccomp::compile(ThreadKind::ConsoleInput, &params)?,
        })
    }
}

/// Installs `filter` (if seccomp is on) on the calling thread. On failure the run ends and `run`
/// returns the error; the caller must not run its work.
fn confine(kind: ThreadKind, filter: Option<&BpfProgram>, thread: &str, ctl: &Control) -> bool {
    let Some(filter) = filter else {
        return true;
    };
    match cxlvm_seccomp::apply(kind, filter, thread) {
        Ok(()) => true,
        Err(e) => {
            ctl.confine_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(e);
            ctl.finish(Outcome::Error(RunError::Confine {
                thread: thread.to_owned(),
            }));
            false
        }
    }
}

fn vcpu_loop(mut vcpu: Vcpu, ctx: VcpuCtx) {
    vcpu.arm_kick();
    let ctl = &ctx.ctl;
    if vcpu.index() == 0 {
        // The boot vCPU's first entry: its first guest instruction follows at once.
        ctl.first_entry.get_or_init(Instant::now);
    }
    while !ctl.stop.load(Ordering::SeqCst) {
        let result = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                ctl.pio_exits.fetch_add(1, Ordering::Relaxed);
                ctx.pio.write(port, data);
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                ctl.pio_exits.fetch_add(1, Ordering::Relaxed);
                ctx.pio.read(port, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                let o = ctx.view.with(|v| v.read(addr, data));
                ctl.count_mmio(o, "read", addr, data.len());
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                let o = ctx.view.with(|v| v.write(addr, data));
                ctl.count_mmio(o, "write", addr, data.len());
                None
            }
            Ok(VcpuExit::Shutdown) => Some(fault(
                &mut vcpu,
                &ctx.view,
                FaultKind::Shutdown,
                vec![],
                None,
            )),
            Ok(VcpuExit::InternalError) => {
                let data = vcpu.internal_error_data();
                let sub = data.first().copied().unwrap_or(0) as u32;
                if sub == INTERNAL_ERROR_EMULATION {
                    complete_instruction(&mut vcpu, &ctx, data)
                } else {
                    Some(fault(
                        &mut vcpu,
                        &ctx.view,
                        FaultKind::InternalError(sub),
                        data,
                        None,
                    ))
                }
            }
            Ok(VcpuExit::FailEntry(reason, _cpu)) => Some(fault(
                &mut vcpu,
                &ctx.view,
                FaultKind::FailEntry(reason),
                vec![],
                None,
            )),
            Ok(VcpuExit::Intr) => None,
            Ok(other) => {
                let name = format!("{other:?}");
                Some(fault(
                    &mut vcpu,
                    &ctx.view,
                    FaultKind::Unexpected(name),
                    vec![],
                    None,
                ))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.clear_kick();
                None
            }
            Err(e) => Some(Outcome::Error(RunError::KvmRun {
                vcpu: vcpu.index(),
                source: e,
            })),
        };
        if let Some(o) = result {
            ctl.finish(o);
        } else if ctx.stopper.requested() {
            ctl.finish(match ctx.stopper.reason() {
                Some(StopReason::Exit(code)) => Outcome::Exit(code),
                Some(StopReason::Fatal(f)) => Outcome::Error(RunError::Device(f)),
                Some(StopReason::PowerOff) => Outcome::PowerOff,
                Some(StopReason::Reset) => Outcome::Reset,
                None => Outcome::Error(RunError::NoReason),
            });
        }
    }
}

/// Name of the console input thread.
const CONSOLE_THREAD: &str = "console-in";

/// Feeds cxlvm's stdin to the guest's UART until end of file, waiting for room in its FIFO.
/// `Ctrl-A b` sends a break (for Linux's magic SysRq), `Ctrl-A Ctrl-A` a `Ctrl-A`.
fn console_input(serial: &cxlvm_devices::Serial) {
    use cxlvm_devices::{ConsoleInput, ConsoleKeys};
    use std::io::Read;
    let wait = || std::thread::sleep(Duration::from_millis(5));
    let mut stdin = std::io::stdin().lock();
    let mut keys = ConsoleKeys::default();
    let mut buf = [0u8; 64];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                debug!("console input ends: {e}");
                return;
            }
        };
        for input in keys.feed(&buf[..n]) {
            match input {
                ConsoleInput::Bytes(bytes) => {
                    let mut rest = bytes.as_slice();
                    while !rest.is_empty() {
                        let q = serial.input(rest);
                        rest = &rest[q..];
                        if q == 0 {
                            wait();
                        }
                    }
                }
                ConsoleInput::Break => {
                    while !serial.input_break() {
                        wait();
                    }
                    debug!("console: break sent");
                }
            }
        }
    }
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

impl Machine {
    /// Runs the guest until it exits, faults, or the timeout expires. The machine stays
    /// inspectable afterwards (backings, slots, counters).
    pub fn run(&mut self) -> Result<RunReport, VmmError> {
        install_kick_handler()?;
        let filters = if self.seccomp {
            Some(Filters::new()?)
        } else {
            None
        };
        let ctl = Arc::new(Control::default());
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for vcpu in std::mem::take(&mut self.vcpus) {
            let ctx = VcpuCtx {
                view: self.view.clone(),
                pio: self.pio.clone(),
                stopper: self.stopper.clone(),
                ctl: ctl.clone(),
                emulation: self.emulation.clone(),
            };
            let name = format!("vcpu{}", vcpu.index());
            let filter = filters.as_ref().map(|f| f.vcpu.clone());
            let h = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    if confine(ThreadKind::Vcpu, filter.as_deref(), &name, &ctx.ctl) {
                        vcpu_loop(vcpu, ctx);
                    }
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    ctl.finish(Outcome::Error(RunError::ThreadStart));
                    stop_all(&handles);
                    return Err(VmmError::Thread(e));
                }
            }
        }
        if let Some(serial) = self.console_input.take() {
            let filter = filters.as_ref().map(|f| f.console.clone());
            let console_ctl = ctl.clone();
            // Detached: it blocks in read(stdin) and ends with the process.
            let spawned = std::thread::Builder::new()
                .name(CONSOLE_THREAD.into())
                .spawn(move || {
                    if confine(
                        ThreadKind::ConsoleInput,
                        filter.as_ref(),
                        CONSOLE_THREAD,
                        &console_ctl,
                    ) {
                        console_input(&serial);
                    }
                });
            if let Err(e) = spawned {
                ctl.finish(Outcome::Error(RunError::ThreadStart));
                stop_all(&handles);
                return Err(VmmError::Thread(e));
            }
        }
        // The run thread waits for the outcome and kicks the vCPUs; it is a thread of its own so
        // that its seccomp filter never confines the caller's thread (a test harness, the binary's
        // main thread), which goes on after the run.
        let run_filter = filters.as_ref().map(|f| &f.run);
        let this = &*self;
        let waited = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(RUN_THREAD.into())
                .spawn_scoped(s, || {
                    if confine(ThreadKind::Run, run_filter, RUN_THREAD, &ctl) {
                        this.wait_for_outcome(&ctl, t0);
                    }
                    stop_all(&handles);
                })
                .map(|h| h.join().is_ok())
        });
        match waited {
            Ok(true) => {}
            Ok(false) => ctl.finish(Outcome::Error(RunError::RunThreadPanicked)),
            Err(e) => {
                ctl.finish(Outcome::Error(RunError::ThreadStart));
                stop_all(&handles);
                for h in handles {
                    let _ = h.join();
                }
                return Err(VmmError::Thread(e));
            }
        }
        stop_all(&handles);
        for h in handles {
            if h.join().is_err() {
                error!("a vCPU thread panicked");
            }
        }
        if let Some(e) = ctl
            .confine_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(e.into());
        }
        let run_us = t0.elapsed().as_micros() as u64;
        let outcome = ctl
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(Outcome::Error(RunError::NoOutcome));
        let peak = proc_status_kib("VmHWM:");
        let shmem = proc_status_kib("RssShmem:");
        let stats = Stats {
            mmio_exits: ctl.mmio_exits.load(Ordering::Relaxed),
            pio_exits: ctl.pio_exits.load(Ordering::Relaxed),
            unassigned_bytes: ctl.unassigned.load(Ordering::Relaxed),
            start_to_first_instruction_us: self
                .boot_mark
                .first()
                .map(|t| t.saturating_duration_since(self.started).as_micros() as u64),
            start_to_first_entry_us: ctl
                .first_entry
                .get()
                .map(|t| t.saturating_duration_since(self.started).as_micros() as u64),
            run_us,
            peak_rss_kib: peak,
            guest_resident_kib: shmem,
            rss_overhead_kib: peak.saturating_sub(shmem),
            scratch_mmio_accesses: self.scratch.as_ref().map(|s| s.mmio_accesses()),
            scratch_switches: self.scratch.as_ref().map(|s| s.switches()),
            slots_at_exit: self.slots.snapshot().len(),
            emulation: self
                .emulation
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        Ok(RunReport { outcome, stats })
    }
}

impl Machine {
    /// Waits (on the run thread) until a vCPU or the timeout reports an outcome, serving SIGUSR1
    /// memory dumps meanwhile.
    fn wait_for_outcome(&self, ctl: &Control, t0: Instant) {
        let mut g = ctl.outcome.lock().unwrap_or_else(|e| e.into_inner());
        // Wait for an outcome; wake up for the timeout and, while a dump can be requested
        // (SIGUSR1), every 100 ms to serve it.
        let poll = self
            .dump_request
            .as_ref()
            .map(|_| Duration::from_millis(100));
        while g.is_none() {
            if self
                .dump_request
                .as_ref()
                .is_some_and(|f| f.swap(false, Ordering::Relaxed))
            {
                drop(g);
                eprint!("{}", self.memory_state());
                g = ctl.outcome.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let left = self.timeout.map(|t| t.saturating_sub(t0.elapsed()));
            if left.is_some_and(|l| l.is_zero()) {
                drop(g);
                ctl.finish(Outcome::Timeout(self.timeout.unwrap_or_default()));
                g = ctl.outcome.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            g = match (left, poll) {
                (None, None) => ctl.changed.wait(g).unwrap_or_else(|e| e.into_inner()),
                (l, p) => {
                    let wait = l.into_iter().chain(p).min().unwrap_or_default();
                    ctl.changed
                        .wait_timeout(g, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

/// Name of the run thread.
const RUN_THREAD: &str = "cxlvm-run";

/// Kicks every vCPU thread out of `KVM_RUN`; they see `stop` and return.
fn stop_all(handles: &[std::thread::JoinHandle<()>]) {
    for h in handles {
        if !h.is_finished() {
            // A thread that already left its loop ignores the signal.
            let _ = h.kill(kick_signal());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn instruction_bytes_come_from_kvm_data_when_flagged() {
        // An INT3 reported by KVM: suberror 1, flags 1, 15 bytes "cc 90 90 90 90 83 7c 24 ...".
        let data = [
            0x1,
            0x1,
            0x7c83_9090_9090_cc0f,
            0xc7c7_4827_7501_0424,
            0x1000,
        ];
        let b = super::kvm_instruction_bytes(&data).unwrap();
        assert_eq!(b.len(), 15);
        assert_eq!(&b[..4], &[0xcc, 0x90, 0x90, 0x90]);
        // No bytes flagged: nothing.
        assert_eq!(super::kvm_instruction_bytes(&[0x1, 0x0, 0x0f]), None);
        assert_eq!(super::kvm_instruction_bytes(&[0x2, 0x1, 0x0f]), None);
    }
}
