//! How a run ended, and what it measured.

use std::time::Duration;

/// Why a vCPU could not go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Triple fault (`KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// `KVM_EXIT_INTERNAL_ERROR` with this suberror (1 = emulation failure).
    InternalError(u32),
    /// `KVM_EXIT_FAIL_ENTRY` with this hardware reason.
    FailEntry(u64),
    /// Any other exit cxlvm does not handle.
    Unexpected(String),
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultKind::Shutdown => write!(
                f,
                "guest shut down (triple fault: an exception with no IDT)"
            ),
            FaultKind::InternalError(1) => {
                write!(
                    f,
                    "KVM internal error, suberror 1 (emulation failure: KVM cannot emulate this instruction on MMIO)"
                )
            }
            FaultKind::InternalError(s) => write!(f, "KVM internal error, suberror {s}"),
            FaultKind::FailEntry(r) => write!(f, "KVM entry failed, hardware reason {r:#x}"),
            FaultKind::Unexpected(e) => write!(f, "unexpected exit {e}"),
        }
    }
}

/// A failure that ended the run (not the guest's doing).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// `KVM_RUN` itself failed.
    #[error("vCPU {vcpu}: KVM_RUN failed: {source}")]
    KvmRun {
        /// vCPU index.
        vcpu: u32,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
    /// A device failed in a way it cannot hide from the guest.
    #[error("{0}")]
    Device(cxlvm_devices::DeviceFailure),
    /// A thread could not install its seccomp filter (the error is `run`'s `Err`).
    #[error("{thread}: cannot install its seccomp filter")]
    Confine {
        /// The thread.
        thread: String,
    },
    /// A thread could not be started (the error is `run`'s `Err`).
    #[error("a thread could not be started")]
    ThreadStart,
    /// The run thread panicked.
    #[error("the run thread panicked")]
    RunThreadPanicked,
    /// A stop was requested with no reason recorded (a bug).
    #[error("stop requested without a reason")]
    NoReason,
    /// The threads ended and nobody recorded an outcome (a bug).
    #[error("run ended without an outcome")]
    NoOutcome,
}

/// cxlvm's exit status when the guest resets the machine (`reboot`).
pub const RESET_STATUS: i32 = 3;

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote the exit port.
    Exit(u8),
    /// A vCPU hit something it cannot continue from.
    Fault {
        /// vCPU index.
        vcpu: u32,
        /// What happened.
        kind: FaultKind,
        /// Instruction pointer.
        rip: u64,
        /// Up to 16 bytes at RIP.
        bytes: Vec<u8>,
        /// KVM's extra data words.
        data: Vec<u64>,
    },
    /// `--timeout` expired.
    Timeout(Duration),
    /// The guest powered off (ACPI S5): status 0.
    PowerOff,
    /// The guest reset the machine: status [`RESET_STATUS`] (cxlvm does not reboot it).
    Reset,
    /// A device or KVM failed while the guest ran.
    Error(RunError),
}

impl Outcome {
    /// cxlvm's exit status for this outcome.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exit(c) => i32::from(*c),
            Outcome::Fault { .. } | Outcome::Error(_) => 1,
            Outcome::Timeout(_) => 124,
            Outcome::PowerOff => 0,
            Outcome::Reset => RESET_STATUS,
        }
    }

    /// One-line description for the user (None for a normal exit).
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::Exit(_) | Outcome::PowerOff => None,
            Outcome::Reset => {
                Some("guest reset the machine; cxlvm ends the run (no reboot)".into())
            }
            Outcome::Fault {
                vcpu,
                kind,
                rip,
                bytes,
                data,
            } => {
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let mut s = format!(
                    "vCPU {vcpu}: {kind} at RIP {rip:#x}, instruction bytes [{}]",
                    hex.join(" ")
                );
                if data.len() > 1 {
                    let d: Vec<String> = data.iter().map(|v| format!("{v:#x}")).collect();
                    s.push_str(&format!(", KVM data [{}]", d.join(", ")));
                }
                Some(s)
            }
            Outcome::Timeout(d) => Some(format!(
                "guest still running after --timeout {:.1}s; stopped",
                d.as_secs_f64()
            )),
            Outcome::Error(e) => Some(e.to_string()),
        }
    }
}

/// Counters and timings of one run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// MMIO exits handled in userspace.
    pub mmio_exits: u64,
    /// Port-I/O exits handled in userspace.
    pub pio_exits: u64,
    /// MMIO bytes that hit no region (reads all-ones, writes dropped).
    pub unassigned_bytes: u64,
    /// From cxlvm start to the guest's boot-mark write, in microseconds (test guests).
    pub start_to_first_instruction_us: Option<u64>,
    /// From cxlvm start to the boot vCPU's first `KVM_RUN` (its first instruction follows at
    /// once; the figure for kernels, which write no boot mark), in microseconds.
    pub start_to_first_entry_us: Option<u64>,
    /// Wall-clock time the vCPUs ran, in microseconds.
    pub run_us: u64,
    /// Peak resident set size of the process, KiB (VmHWM).
    pub peak_rss_kib: u64,
    /// Resident shared memory at exit (touched guest RAM and device memory), KiB.
    pub guest_resident_kib: u64,
    /// Peak RSS beyond guest memory, KiB (VmHWM minus RssShmem at exit).
    pub rss_overhead_kib: u64,
    /// Scratch window: accesses served through MMIO.
    pub scratch_mmio_accesses: Option<u64>,
    /// Scratch window: alias switches.
    pub scratch_switches: Option<u64>,
    /// KVM memory slots installed at exit.
    pub slots_at_exit: usize,
}

/// Result of [`crate::Machine::run`].
#[derive(Clone, Debug)]
pub struct RunReport {
    /// How the run ended.
    pub outcome: Outcome,
    /// What it measured.
    pub stats: Stats,
}

/// One range of the flat view, for dumps.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ViewRange {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Leaf region name.
    pub name: String,
    /// `"ram"` or `"mmio"`.
    pub kind: &'static str,
}

/// One CXL window, for dumps.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WindowState {
    /// Index.
    pub index: usize,
    /// Base.
    pub base: u64,
    /// Size.
    pub size: u64,
    /// Accesses served by its MMIO dispatcher (exits).
    pub exits: u64,
    /// Of those, unclaimed bytes/accesses.
    pub unclaimed: u64,
    /// How each decoded range is served.
    pub ranges: Vec<cxlvm_mapping::overlay::RangeState>,
}

/// The machine's memory state: what `cxlvm run --mtree` prints at exit and on SIGUSR1.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryState {
    /// The flat view.
    pub flat_view: Vec<ViewRange>,
    /// CXL windows.
    pub windows: Vec<WindowState>,
    /// KVM memory slots: (slot, start, len, backing).
    pub slots: Vec<(u32, u64, u64, String)>,
    /// The region tree, as text.
    #[serde(skip)]
    pub tree: String,
}

impl std::fmt::Display for MemoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "memory tree:")?;
        for l in self.tree.lines() {
            writeln!(f, "  {l}")?;
        }
        writeln!(f, "flat view:")?;
        for r in &self.flat_view {
            writeln!(
                f,
                "  [{:#014x}, {:#014x}) {:4} {}",
                r.start, r.end, r.kind, r.name
            )?;
        }
        writeln!(f, "KVM slots:")?;
        for (slot, start, len, b) in &self.slots {
            writeln!(
                f,
                "  slot {slot:3} [{start:#014x}, {:#014x}) {b}",
                start + len
            )?;
        }
        for w in &self.windows {
            writeln!(
                f,
                "CXL window {} [{:#x}, {:#x}): {} exits served ({} unclaimed)",
                w.index,
                w.base,
                w.base + w.size,
                w.exits,
                w.unclaimed
            )?;
            for r in &w.ranges {
                writeln!(
                    f,
                    "  [{:#x}, {:#x}) {:11} {}",
                    r.hpa,
                    r.hpa + r.len,
                    r.mode,
                    r.detail
                )?;
            }
        }
        Ok(())
    }
}
