//! `cxl`: plays the part of Linux's CXL drivers against cxlvm's CXL platform (boot info device
//! kinds 4–8): PCI enumeration through ECAM, the Type-3 mailbox probe sequence, Linux-style
//! interleaved region programming (HDM decoders) with a data check, and a register fuzzer.
//!
//! `mode=` selects what runs (only vCPU 0 does anything):
//! - `enumerate` (default): prints every function, host bridge, Type-3 device and window, and
//!   checks them against the ABI;
//! - `probe`: for every Type-3 device, the checks and mailbox commands of Linux's `cxl_pci`
//!   probe (and a few more);
//! - `region` (`window=`, `offset=`, `size=`, `gran=`, `devices=`, `precheck=1`, `verify=1`,
//!   `words=`, `stride=`, `uncommit=1`, `reread=1`): creates an interleaved region the way
//!   Linux commits one, optionally checks the data path;
//! - `fuzz` (`ops=`, `seed=`): random accesses to HDM decoders, mailboxes, configuration space
//!   and windows; the VMM must survive.
//!
//! guest/README.md lists the output lines and exit statuses.
#![no_std]
#![no_main]

#[path = "cxl/enumerate.rs"]
mod enumerate;
#[path = "cxl/fuzz.rs"]
mod fuzz;
#[path = "cxl/probe.rs"]
mod probe;
#[path = "cxl/region.rs"]
mod region;
#[path = "cxl/topology.rs"]
mod topology;

use core::fmt;

use cxlvm_guest::{BootInfo, arg, println};

cxlvm_guest::entry!(main);

/// Bad argument (or a region the arguments describe that cannot be built).
pub const BAD_ARG: i32 = 2;
/// A device the mode needs is missing: no ECAM, no Type-3 device, no window, a window target
/// with no host bridge entry.
pub const NO_DEVICE: i32 = 3;
/// Data mismatch: region precheck/verify/reread, LSA read-back.
pub const MISMATCH: i32 = 4;
/// Registers or topology not as the ABI and the CXL specification say (enumerate checks,
/// missing DVSEC/capabilities, media not ready, enables that do not read back, a function that
/// stopped answering after fuzzing).
pub const BAD_REGISTERS: i32 = 5;
/// A mailbox command failed (return code, doorbell busy or stuck, short output).
pub const MAILBOX: i32 = 6;
/// An HDM decoder did not commit (Error Not Committed, timeout, no free decoder) or stayed
/// committed after a reset.
pub const COMMIT: i32 = 7;

fn main(boot: &BootInfo, vcpu: u32) -> i32 {
    if vcpu != 0 {
        return 0;
    }
    let result = match arg("mode").unwrap_or("enumerate") {
        "enumerate" => enumerate::run(boot),
        "probe" => probe::run(boot),
        "region" => region::run(boot),
        "fuzz" => fuzz::run(boot),
        other => {
            println!("cxl: bad mode `{other}` (enumerate, probe, region, fuzz)");
            Err(BAD_ARG)
        }
    };
    result.err().unwrap_or(0)
}

/// A boolean argument: absent → `default`; `1`, `on`, `yes`, `true` or a bare key → true;
/// `0`, `off`, `no`, `false` → false.
pub fn flag(name: &str, default: bool) -> Result<bool, i32> {
    match arg(name) {
        None => Ok(default),
        Some("" | "1" | "on" | "yes" | "true") => Ok(true),
        Some("0" | "off" | "no" | "false") => Ok(false),
        Some(other) => {
            println!("cxl: bad value `{other}` for `{name}` (1 or 0)");
            Err(BAD_ARG)
        }
    }
}

/// Comma-separated decimal list.
pub struct Csv<'a, T>(pub &'a [T]);

impl<T: fmt::Display> fmt::Display for Csv<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Comma-separated list of 4-digit hex values (no `0x`).
pub struct HexCsv<'a>(pub &'a [u16]);

impl fmt::Display for HexCsv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v:04x}")?;
        }
        Ok(())
    }
}
