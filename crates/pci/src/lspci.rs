//! Text dumps in the format of `lspci -xxxx`, readable back with `lspci -F <file>`.
//!
//! Each function is a line `BB:DD.F <description>` followed by 256 lines of 16 bytes
//! (`XXX: hh hh ...`) covering its 4 KiB configuration space, and a blank line. Feeding the dump
//! to `lspci -F dump -vvv` shows the topology the way a guest's lspci would (BAR sizes excepted:
//! those come from sysfs, not from configuration space).

use std::fmt::Write as _;

use crate::PciSegment;
use crate::function::PciFunction;
use crate::regs::{CONFIG_SPACE_SIZE, DEVICE_ID, REVISION_ID, VENDOR_ID};

/// Dumps one function's configuration space as an `lspci -xxxx` block (header line included).
pub fn lspci_dump_function(bus: u8, devfn: u8, function: &dyn PciFunction) -> String {
    let mut cfg = vec![0u8; CONFIG_SPACE_SIZE];
    function.read_config(0, &mut cfg);
    let word = |off: u16| {
        let o = usize::from(off);
        u16::from_le_bytes([cfg[o], cfg[o + 1]])
    };
    let class = u32::from_le_bytes([cfg[8], cfg[9], cfg[10], cfg[11]]) >> 8;
    let mut out = String::with_capacity(256 * 54 + 64);
    let _ = writeln!(
        out,
        "{bus:02x}:{:02x}.{:x} Class {class:06x}: {:04x}:{:04x} (rev {:02x})",
        devfn >> 3,
        devfn & 7,
        word(VENDOR_ID),
        word(DEVICE_ID),
        cfg[usize::from(REVISION_ID)],
    );
    for (i, line) in cfg.chunks(16).enumerate() {
        let _ = write!(out, "{:03x}:", i * 16);
        for b in line {
            let _ = write!(out, " {b:02x}");
        }
        out.push('\n');
    }
    out.push('\n');
    out
}

/// Dumps every function reachable in `segment` (see [`PciSegment::functions`]).
pub fn lspci_dump(segment: &PciSegment) -> String {
    segment
        .functions()
        .into_iter()
        .map(|(bus, devfn, f)| lspci_dump_function(bus, devfn, f.as_ref()))
        .collect()
}
