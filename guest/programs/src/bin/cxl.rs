//! `cxl`: plays the part of Linux's CXL drivers against cxlvm's CXL platform (boot info device
//! kinds 4–8): PCI enumeration through ECAM, the Type-3 mailbox probe sequence, Linux-style
//! interleaved region programming (HDM decoders) with data checks on the MMIO path and the
//! direct mapping, a register fuzzer, and a two-vCPU decoder/reset stress.
//!
//! `mode=` selects what runs (only vCPU 0 does anything, except in `stress`):
//! - `enumerate` (default): prints every function, host bridge, Type-3 device and window, and
//!   checks them against the ABI;
//! - `probe`: for every Type-3 device, the checks and mailbox commands of Linux's `cxl_pci`
//!   probe (and a few more);
//! - `region` (`window=`, `offset=`, `size=`, `gran=`, `devices=`, `precheck=1`, `verify=1`,
//!   `words=`, `stride=`, `direct=1`, `expect_direct=`, `uncommit=1`, `reread=1`, `hold=1`: spin
//!   at the end until the host ends the run): creates an
//!   interleaved region the way Linux commits one, optionally checks the data path (`direct`:
//!   on the MMIO path and the direct mapping, with cxlvm's direct-mapping control, port 0x510,
//!   and CXL window exit counter, port 0x514);
//! - `firmware` (`regions=`, `lock=`, `words=`, `stride=`): finds the regions cxlvm committed
//!   as firmware (`[[region]]`) the way Linux discovers them at boot, checks their decoders,
//!   enables and locks, and uses them with zero exits from the first access;
//! - `fuzz` (`ops=`, `seed=`): random accesses to HDM decoders, mailboxes, configuration space
//!   and windows; the VMM must survive;
//! - `stress` (`window=`, `ways=`, `gran=`, `regrid=1`, `size=`, `words=`, `iters=`; vCPUs 0
//!   and 1, and 2 when present): vCPU 0 (and 2) stream stores into one region while vCPU 1
//!   commits and uncommits another (with `regrid=1` at a new granularity each time, checking
//!   that its bytes followed), toggles direct mappings and resets a device;
//! - `bw` (region arguments, `mib=`, `direct=0`, `mmio_kib=`): bandwidth of 8-byte and AVX
//!   loads/stores and `rep movsb` on free RAM and on a committed region;
//! - `remap` (region arguments, `cycles=`): latency of committing/uncommitting the decoder
//!   that completes a region, up to the first read of the region base;
//! - `exits` (region arguments, `count=`): cycles per MMIO exit on an empty window, the null
//!   MMIO device and a decoded region on the MMIO path;
//! - `xsavec_loop` (region arguments, `runs=`, `direct=0`): XSAVEC and AVX in a loop on a
//!   committed region.
//!
//! guest/README.md lists the output lines and exit statuses.
#![no_std]
#![no_main]

#[path = "cxl/bw.rs"]
mod bw;
#[path = "cxl/direct.rs"]
mod direct;
#[path = "cxl/enumerate.rs"]
mod enumerate;
#[path = "cxl/exits.rs"]
mod exits;
#[path = "cxl/firmware.rs"]
mod firmware;
#[path = "cxl/fuzz.rs"]
mod fuzz;
#[path = "cxl/probe.rs"]
mod probe;
#[path = "cxl/region.rs"]
mod region;
#[path = "cxl/remap.rs"]
mod remap;
#[path = "cxl/stress.rs"]
mod stress;
#[path = "cxl/topology.rs"]
mod topology;
#[path = "cxl/xsavec_loop.rs"]
mod xsavec_loop;

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
/// Direct mapping: the control port (0x510) did not read back what was written, or the CXL
/// window exit counter (0x514) did not count what the selected path should give.
pub const DIRECT: i32 = 8;

fn main(boot: &BootInfo, vcpu: u32) -> i32 {
    let mode = arg("mode").unwrap_or("enumerate");
    if mode == "stress" {
        // vCPUs 0 and 1 work; the others return (and park).
        return stress::run(boot, vcpu).err().unwrap_or(0);
    }
    if vcpu != 0 {
        return 0;
    }
    let result = match mode {
        "enumerate" => enumerate::run(boot),
        "probe" => probe::run(boot),
        "region" => region::run(boot),
        "firmware" => firmware::run(boot),
        "fuzz" => fuzz::run(boot),
        "bw" => bw::run(boot),
        "remap" => remap::run(boot),
        "exits" => exits::run(boot),
        "xsavec_loop" => xsavec_loop::run(boot),
        other => {
            println!(
                "cxl: bad mode `{other}` (enumerate, probe, region, firmware, fuzz, stress, bw, remap, exits, xsavec_loop)"
            );
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
