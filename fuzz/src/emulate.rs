//! The `emulate` target: instruction completion (`cxlvm-emulate`) on guest-controlled bytes,
//! registers, control registers, page tables and vector state.
//!
//! Input: a state header (GPRs, RFLAGS, CR0/CR3/CR4 choices, CPL, XCR0), 15 instruction bytes,
//! then the contents guest memory repeats (page tables included). Invariants: no panic; a
//! completion leaves RIP on the instruction or just past it (never elsewhere); a page fault
//! carries CR2 and an error code with only architectural bits; writes land only where a
//! translation allowed them (the memory model records every write); the XSAVE image keeps its
//! size.

use std::cell::RefCell;
use std::collections::BTreeMap;

use cxlvm_emulate::state::{Component, XsaveLayout, cr};
use cxlvm_emulate::{
    Completion, Cpu, CpuError, Exception, Gpa, Memory, Registers, System, XState, complete,
};

use crate::reader::Reader;

/// Guest memory: `pattern` repeated over the whole physical space, overlaid with what was
/// written. Addresses at or above `MMIO` are "MMIO" (not RAM).
struct FuzzMemory<'a> {
    pattern: &'a [u8],
    written: RefCell<BTreeMap<u64, u8>>,
}

const MMIO: u64 = 1 << 36;

impl Memory for FuzzMemory<'_> {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) {
        let w = self.written.borrow();
        for (i, b) in buf.iter_mut().enumerate() {
            let a = gpa.0.wrapping_add(i as u64);
            *b = w.get(&a).copied().unwrap_or_else(|| {
                if self.pattern.is_empty() {
                    0
                } else {
                    self.pattern[(a % self.pattern.len() as u64) as usize]
                }
            });
        }
    }

    fn write(&self, gpa: Gpa, data: &[u8]) {
        let mut w = self.written.borrow_mut();
        for (i, b) in data.iter().enumerate() {
            w.insert(gpa.0.wrapping_add(i as u64), *b);
        }
    }

    fn is_ram(&self, gpa: Gpa) -> bool {
        gpa.0 < MMIO
    }
}

struct FuzzCpu {
    regs: Registers,
    sys: System,
    xs: XState,
}

impl Cpu for FuzzCpu {
    fn registers(&mut self) -> Result<&mut Registers, CpuError> {
        Ok(&mut self.regs)
    }
    fn system(&mut self) -> Result<System, CpuError> {
        Ok(self.sys)
    }
    fn xstate(&mut self) -> Result<&mut XState, CpuError> {
        Ok(&mut self.xs)
    }
}

pub fn emulate(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut regs = Registers::default();
    for g in &mut regs.gpr {
        // Small values often, so that addresses land on the page tables' pattern.
        *g = if r.bool() {
            u64::from(r.u16()) << 4
        } else {
            r.u64()
        };
    }
    regs.rflags = 2 | (r.u64() & 0x0004_0cd5);
    regs.rip = 0x40_0000 + u64::from(r.u16());
    let flags = r.u16();
    let sys = System {
        cr0: 1
            | cr::CR0_PG
            | if flags & 1 != 0 { cr::CR0_WP } else { 0 }
            | if flags & 2 != 0 { cr::CR0_TS } else { 0 }
            | if flags & 4 != 0 { cr::CR0_EM } else { 0 },
        cr3: u64::from(r.u32()) & !0xfff,
        cr4: cr::CR4_PAE
            | if flags & 8 != 0 { cr::CR4_OSFXSR } else { 0 }
            | if flags & 16 != 0 { cr::CR4_OSXSAVE } else { 0 }
            | if flags & 32 != 0 { cr::CR4_LA57 } else { 0 }
            | if flags & 64 != 0 { cr::CR4_SMEP } else { 0 }
            | if flags & 128 != 0 { cr::CR4_SMAP } else { 0 },
        efer: cr::EFER_LMA | (1 << 8) | if flags & 256 != 0 { cr::EFER_NXE } else { 0 },
        cpl: if flags & 512 != 0 { 3 } else { 0 },
        long_mode: flags & 1024 == 0,
        fs_base: if flags & 2048 != 0 { r.u64() } else { 0 },
        gs_base: 0,
    };
    let xcr0 = 1 | (u64::from(r.u8()) & 0b110);
    let mut image = r.slice(64).to_vec();
    image.resize(4096, 0);
    let mut components = vec![None; 64];
    components[2] = Some(Component {
        offset: 576,
        size: 256,
        align64: false,
    });
    let mut cpu = FuzzCpu {
        regs,
        sys,
        xs: XState {
            image,
            xcr0,
            layout: XsaveLayout { components },
        },
    };
    let bytes: [u8; 15] = r.bytes();
    let give_bytes = flags & 4096 == 0;
    let mem = FuzzMemory {
        pattern: r.slice(usize::MAX),
        written: RefCell::new(BTreeMap::new()),
    };
    let before = cpu.regs;
    let out = complete(&mut cpu, &mem, give_bytes.then_some(&bytes[..]));
    assert_eq!(cpu.xs.image.len(), 4096, "XSAVE image resized");
    match out {
        Ok(Completion::Done { .. }) => {
            let advanced = cpu.regs.rip.wrapping_sub(before.rip);
            assert!(
                advanced <= 15,
                "RIP moved from {:#x} to {:#x}",
                before.rip,
                cpu.regs.rip
            );
        }
        Ok(Completion::Raise { fault, .. }) => {
            if fault.exception == Exception::PageFault {
                assert!(fault.cr2.is_some(), "#PF without CR2");
                let code = fault.error_code.expect("#PF without error code");
                assert_eq!(code & !0x1f, 0, "error code {code:#x}");
            }
            if fault.exception != Exception::Breakpoint {
                // A fault is taken on the instruction: RIP stays (a rep string keeps the
                // iterations it did but not RIP).
                assert_eq!(cpu.regs.rip, before.rip, "{fault:?} moved RIP");
            }
        }
        Err(_) => {}
    }
}
