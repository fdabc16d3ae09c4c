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
    /// Writing back a completed instruction's registers, or injecting its exception, failed.
    #[error("vCPU {vcpu}: completing an instruction: KVM {what} failed: {source}")]
    Complete {
        /// vCPU index.
        vcpu: u32,
        /// The ioctl.
        what: &'static str,
        /// The errno.
        source: vmm_sys_util::errno::Error,
    },
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
        /// For an emulation failure: why cxlvm could not complete the instruction either.
        not_completed: Option<NotCompleted>,
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
                not_completed,
            } => {
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let mut s = format!(
                    "vCPU {vcpu}: {kind} at RIP {rip:#x}, instruction bytes [{}]",
                    hex.join(" ")
                );
                if let Some(n) = not_completed {
                    s.push_str(&format!("; {n}"));
                }
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

/// Why cxlvm could not complete an instruction KVM's emulator gave up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotCompleted {
    /// It decodes as this instruction, which cxlvm does not complete.
    Unsupported(cxlvm_emulate::Mnemonic),
    /// The bytes do not decode.
    Undecodable,
    /// The vCPU is not in 64-bit mode.
    NotLongMode,
    /// The instruction lies on the MMIO path (at this guest-physical address).
    FetchFromMmio(u64),
    /// The vCPU's registers could not be read or written.
    StateUnavailable,
}

impl std::fmt::Display for NotCompleted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsupported(m) => write!(
                f,
                "decoded as {}, which cxlvm does not complete either",
                mnemonic_name(*m)
            ),
            Self::Undecodable => write!(f, "the bytes do not decode as an instruction"),
            Self::NotLongMode => write!(f, "cxlvm completes instructions in 64-bit mode only"),
            Self::FetchFromMmio(gpa) => write!(
                f,
                "the instruction itself is on the MMIO path (guest-physical {gpa:#x}); cxlvm fetches instructions from RAM only"
            ),
            Self::StateUnavailable => write!(f, "the vCPU's registers could not be read"),
        }
    }
}

/// An instruction's name as reports print it (`vmovdqu`).
pub fn mnemonic_name(m: cxlvm_emulate::Mnemonic) -> String {
    format!("{m:?}").to_lowercase()
}

/// Instructions cxlvm completed for KVM's emulator, and exceptions it injected, per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmulationStats {
    completed: std::collections::BTreeMap<cxlvm_emulate::Mnemonic, u64>,
    injected: std::collections::BTreeMap<cxlvm_emulate::Exception, u64>,
}

impl EmulationStats {
    /// How many `m` instructions cxlvm completed (including those that raised an exception).
    pub fn completed(&self, m: cxlvm_emulate::Mnemonic) -> u64 {
        self.completed.get(&m).copied().unwrap_or(0)
    }

    /// How many `e` exceptions cxlvm injected.
    pub fn injected(&self, e: cxlvm_emulate::Exception) -> u64 {
        self.injected.get(&e).copied().unwrap_or(0)
    }

    /// Every completion.
    pub fn total(&self) -> u64 {
        self.completed.values().sum()
    }

    /// Counts one completion of `m`, which raised `raised` if any.
    pub(crate) fn record(
        &mut self,
        m: cxlvm_emulate::Mnemonic,
        raised: Option<cxlvm_emulate::Exception>,
    ) {
        *self.completed.entry(m).or_default() += 1;
        if let Some(e) = raised {
            *self.injected.entry(e).or_default() += 1;
        }
    }

    /// (name, count) of each completed instruction, by name.
    pub fn completed_by_name(&self) -> Vec<(String, u64)> {
        self.completed
            .iter()
            .map(|(m, n)| (mnemonic_name(*m), *n))
            .collect()
    }
}

impl serde::Serialize for EmulationStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let completed: std::collections::BTreeMap<String, u64> =
            self.completed_by_name().into_iter().collect();
        let injected: std::collections::BTreeMap<&str, u64> =
            self.injected.iter().map(|(e, n)| (e.name(), *n)).collect();
        let mut st = s.serialize_struct("EmulationStats", 2)?;
        st.serialize_field("completed", &completed)?;
        st.serialize_field("injected", &injected)?;
        st.end()
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
    /// Instructions cxlvm completed for KVM's emulator, exceptions it injected.
    pub emulation: EmulationStats,
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
    /// Instructions completed for KVM's emulator so far, exceptions injected.
    pub emulation: EmulationStats,
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
        let done: Vec<String> = self
            .emulation
            .completed_by_name()
            .into_iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect();
        let injected: Vec<String> = cxlvm_emulate::Exception::ALL
            .into_iter()
            .filter(|e| self.emulation.injected(*e) > 0)
            .map(|e| format!("#{} {}", e.name(), self.emulation.injected(e)))
            .collect();
        writeln!(
            f,
            "instructions completed by cxlvm: {}{}",
            if done.is_empty() {
                "none".to_owned()
            } else {
                done.join(", ")
            },
            if injected.is_empty() {
                String::new()
            } else {
                format!("; exceptions injected: {}", injected.join(", "))
            }
        )?;
        Ok(())
    }
}
