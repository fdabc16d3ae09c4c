//! Helpers shared by the fabric-level tests: HDM capabilities and Linux-style decoder
//! programming through a component register block.
#![allow(dead_code)]

use cxlvm_cxl::fabric::ComponentMmio;
use cxlvm_cxl::hdm::HdmCaps;
use cxlvm_cxl::interleave::{Granularity, Ways};
use cxlvm_memory::MmioHandler;

/// 4 decoders; ports get `targets` target-list entries, endpoints the 3/6/12- and 16-way caps.
pub fn caps(port: bool, targets: u8) -> HdmCaps {
    HdmCaps {
        decoders: 4,
        target_count: if port { targets } else { 0 },
        a11to8: true,
        a14to12: true,
        ways_3_6_12: !port,
        ways_16: !port,
    }
}

pub fn rd32(m: &ComponentMmio, off: u64) -> u32 {
    let mut b = [0u8; 4];
    m.read(off, &mut b);
    u32::from_le_bytes(b)
}

pub fn wr32(m: &ComponentMmio, off: u64, v: u32) {
    m.write(off, &v.to_le_bytes());
}

/// Finds the HDM block like Linux's cxl_probe_component_regs.
pub fn hdm_base(m: &ComponentMmio) -> Option<u64> {
    let hdr = rd32(m, 0x1000);
    assert_eq!(hdr & 0xffff, 1, "CXL.cache/mem capability array header");
    let n = hdr >> 24;
    (1..=n).find_map(|i| {
        let h = rd32(m, 0x1000 + 4 * u64::from(i));
        (h & 0xffff == 5).then(|| 0x1000 + u64::from(h >> 20))
    })
}

/// Target-list register value of port numbers `ports` (byte i = way i).
pub fn target_list(ports: &[u8]) -> u64 {
    ports
        .iter()
        .enumerate()
        .fold(0, |acc, (i, &p)| acc | u64::from(p) << (8 * i))
}

/// Programs and commits decoder `n` like Linux's cxl_decoder_commit (`tl`: the target list
/// of a port, the DPA skip of an endpoint); returns Committed.
pub fn commit(
    m: &ComponentMmio,
    n: u64,
    base: u64,
    size: u64,
    ways: u32,
    gran: u64,
    tl: u64,
) -> bool {
    let (Some(ways), Some(gran)) = (Ways::from_count(ways), Granularity::from_bytes(gran)) else {
        return false;
    };
    let d = hdm_base(m).expect("HDM capability") + 0x10 + 0x20 * n;
    wr32(m, d + 4, (base >> 32) as u32);
    wr32(m, d, base as u32);
    wr32(m, d + 0xc, (size >> 32) as u32);
    wr32(m, d + 8, size as u32);
    wr32(m, d + 0x18, (tl >> 32) as u32);
    wr32(m, d + 0x14, tl as u32);
    let ctl = u32::from(gran.enc()) | u32::from(ways.enc()) << 4 | 1 << 9 | 1 << 12;
    wr32(m, d + 0x10, ctl);
    let ctl = rd32(m, d + 0x10);
    assert!(ctl & (3 << 10) != 0, "commit completes synchronously");
    ctl & (1 << 10) != 0
}

/// Uncommits decoder `n` (clears Commit).
pub fn uncommit(m: &ComponentMmio, n: u64) {
    let d = hdm_base(m).unwrap() + 0x10 + 0x20 * n;
    let ctl = rd32(m, d + 0x10);
    wr32(m, d + 0x10, ctl & !(1 << 9));
}
