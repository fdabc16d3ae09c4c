//! cxlvm's completion of instructions KVM's instruction emulator cannot run.
//!
//! When an instruction touches MMIO (or, on hosts like `kvm_pvm`, runs at ring 0) KVM emulates
//! it; its emulator lacks the XSAVE family, CMPXCHG16B, MOVDIR64B, VEX vector moves and, on
//! some hosts, INT3, FWAIT, LDMXCSR/STMXCSR, CLAC/STAC and SSE moves. `KVM_RUN` then returns
//! `KVM_EXIT_INTERNAL_ERROR` (emulation). [`complete`] finishes such an instruction:
//!
//! 1. decode it with `iced-x86` (bytes from KVM's exit data, else fetched from guest RAM at
//!    RIP through the guest's page tables);
//! 2. translate each memory operand's linear address with the guest's paging ([`paging`]),
//!    honouring present, R/W (CR0.WP), U/S, NX, SMEP and SMAP; a forbidden access becomes a
//!    #PF to inject with its CR2 and error code, never a silent success;
//! 3. perform the accesses through [`Memory`] (the current flat view: RAM or MMIO handlers,
//!    including accesses that cross a page or a RAM/MMIO boundary), all translations before
//!    the first write so that a faulting store writes nothing;
//! 4. update registers ([`Cpu`]: general purpose and flags, vector state as an XSAVE image)
//!    and RIP.
//!
//! The outcome is a [`Completion`] — done, or an exception to inject ([`Fault`]) — or a
//! [`Failure`] (not decodable, not covered, fetched from MMIO, state unreachable) that ends the
//! run with a report naming the mnemonic. Everything is plain data and pure functions of the
//! state and memory the traits give; the caller (`cxlvm-vmm`) talks to KVM.
#![forbid(unsafe_code)]

mod exec;
pub mod paging;
pub mod state;
#[cfg(test)]
mod tests;
mod xsave;

pub use exec::complete;
pub use iced_x86::Mnemonic;
pub use state::{
    Component, Cpu, CpuError, Gpa, Linear, Memory, Registers, System, XState, XsaveLayout,
};

/// An exception a completion raises (what the caller injects).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exception {
    /// #BP (vector 3), raised by INT3: a trap, RIP already past the instruction.
    Breakpoint,
    /// #UD (vector 6).
    InvalidOpcode,
    /// #NM (vector 7): x87/SSE/AVX with CR0.TS set.
    DeviceNotAvailable,
    /// #GP (vector 13).
    GeneralProtection,
    /// #PF (vector 14), with CR2.
    PageFault,
    /// #MF (vector 16): FWAIT with an unmasked x87 exception pending.
    MathFault,
}

impl Exception {
    /// The interrupt vector.
    pub fn vector(self) -> u8 {
        match self {
            Self::Breakpoint => 3,
            Self::InvalidOpcode => 6,
            Self::DeviceNotAvailable => 7,
            Self::GeneralProtection => 13,
            Self::PageFault => 14,
            Self::MathFault => 16,
        }
    }

    /// Every exception a completion can raise.
    pub const ALL: [Self; 6] = [
        Self::Breakpoint,
        Self::InvalidOpcode,
        Self::DeviceNotAvailable,
        Self::GeneralProtection,
        Self::PageFault,
        Self::MathFault,
    ];

    /// Short name (`bp`, `ud`, `nm`, `gp`, `pf`, `mf`) for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Breakpoint => "bp",
            Self::InvalidOpcode => "ud",
            Self::DeviceNotAvailable => "nm",
            Self::GeneralProtection => "gp",
            Self::PageFault => "pf",
            Self::MathFault => "mf",
        }
    }
}

/// An exception with what the caller needs to deliver it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Which.
    pub exception: Exception,
    /// Error code pushed by the exception, if it has one.
    pub error_code: Option<u32>,
    /// CR2 for a page fault.
    pub cr2: Option<u64>,
}

impl Fault {
    /// #GP with `code`.
    pub fn gp(code: u32) -> Self {
        Self {
            exception: Exception::GeneralProtection,
            error_code: Some(code),
            cr2: None,
        }
    }

    /// An exception without error code.
    pub fn plain(exception: Exception) -> Self {
        Self {
            exception,
            error_code: None,
            cr2: None,
        }
    }
}

/// What [`complete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The instruction ran: registers and memory updated, RIP advanced (for a `rep` string
    /// instruction stopped after a bounded number of iterations, RIP stays on it with the
    /// counters updated, as an interrupted `rep` does on hardware).
    Done {
        /// The instruction.
        mnemonic: Mnemonic,
    },
    /// The instruction raised an exception: inject it. For faults RIP still points at the
    /// instruction; for #BP (a trap) it is past it.
    Raise {
        /// The instruction.
        mnemonic: Mnemonic,
        /// The exception.
        fault: Fault,
    },
}

/// Why an instruction could not be completed (the run ends with a report).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The bytes do not decode as an instruction.
    #[error("instruction bytes {bytes:02x?} do not decode")]
    Decode {
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The instruction decodes but cxlvm does not complete it.
    #[error("cxlvm does not complete {mnemonic:?}")]
    Unsupported {
        /// The instruction.
        mnemonic: Mnemonic,
    },
    /// The vCPU is not in 64-bit mode (completions cover long mode only).
    #[error("the vCPU is not in 64-bit mode")]
    NotLongMode,
    /// The instruction's bytes are on the MMIO path (instruction fetch is served from RAM only).
    #[error("instruction fetch from {gpa:?}, which is not RAM")]
    FetchFromMmio {
        /// Where the instruction is.
        gpa: Gpa,
    },
    /// The vCPU's state could not be read or written.
    #[error(transparent)]
    Cpu(#[from] CpuError),
}
