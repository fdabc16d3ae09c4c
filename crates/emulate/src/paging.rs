//! Linear → guest-physical translation: the guest's own 4- or 5-level page tables, walked
//! through [`Memory`], with the permission rules of the architecture (present, R/W with CR0.WP,
//! U/S, execute-disable with EFER.NXE, SMEP, SMAP with RFLAGS.AC) and the accessed/dirty bits
//! set as the hardware would. A forbidden access is a [`Fault`] carrying #PF's CR2 and error code.

use crate::state::{Gpa, Linear, Memory, System, cr, flags};
use crate::{Exception, Fault};

/// What an access is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Fetch,
}

/// #PF error-code bits.
pub mod pf {
    /// The fault was a protection violation (clear: the page was not present).
    pub const PRESENT: u32 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u32 = 1 << 1;
    /// The access was made at CPL 3.
    pub const USER: u32 = 1 << 2;
    /// A reserved bit was set in a paging entry.
    pub const RESERVED: u32 = 1 << 3;
    /// The access was an instruction fetch.
    pub const FETCH: u32 = 1 << 4;
}

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
/// Physical-address bits of an entry (bits 51:12).
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The paging context of one completion: the guest's control registers, CPL and RFLAGS.AC.
#[derive(Clone, Copy, Debug)]
pub struct Walker {
    sys: System,
    ac: bool,
}

/// A translated page: where the linear page lives in guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address of the linear address.
    pub gpa: Gpa,
    /// Bytes from it to the end of its page (of the leaf's size).
    pub room: u64,
}

impl Walker {
    /// A walker for the vCPU's current paging state and RFLAGS.
    pub fn new(sys: System, rflags: u64) -> Self {
        Self {
            sys,
            ac: rflags & flags::AC != 0,
        }
    }

    /// Whether 4-level (or 5-level) paging applies; completions run only in long mode.
    pub fn long_mode(&self) -> bool {
        self.sys.efer & cr::EFER_LMA != 0 && self.sys.cr0 & cr::CR0_PG != 0
    }

    fn fault(&self, la: Linear, kind: AccessKind, bits: u32) -> Fault {
        let mut code = bits;
        if kind == AccessKind::Write {
            code |= pf::WRITE;
        }
        if self.sys.cpl == 3 {
            code |= pf::USER;
        }
        if kind == AccessKind::Fetch
            && (self.sys.efer & cr::EFER_NXE != 0 || self.sys.cr4 & cr::CR4_SMEP != 0)
        {
            code |= pf::FETCH;
        }
        Fault {
            exception: Exception::PageFault,
            error_code: Some(code),
            cr2: Some(la.0),
        }
    }

    /// Whether `la` is canonical for the paging depth in use.
    pub fn canonical(&self, la: Linear) -> bool {
        let bits = if self.sys.cr4 & cr::CR4_LA57 != 0 {
            57
        } else {
            48
        };
        let shift = 64 - bits;
        ((la.0 << shift) as i64 >> shift) as u64 == la.0
    }

    /// Translates `la` for an access of `kind`, setting accessed (and, for writes, dirty) bits.
    pub fn translate(
        &self,
        mem: &dyn Memory,
        la: Linear,
        kind: AccessKind,
    ) -> Result<Translation, Fault> {
        if !self.canonical(la) {
            return Err(Fault::gp(0));
        }
        let levels: u32 = if self.sys.cr4 & cr::CR4_LA57 != 0 {
            5
        } else {
            4
        };
        let nxe = self.sys.efer & cr::EFER_NXE != 0;
        let mut table = self.sys.cr3 & ADDR;
        // Effective rights: AND of R/W and U/S, OR of XD, over every level.
        let mut writable = true;
        let mut user = true;
        let mut no_exec = false;
        // Entries to mark accessed/dirty once the walk succeeds.
        let mut touched: [(u64, u64); 5] = [(0, 0); 5];
        for (depth, level) in (1..=levels).rev().enumerate() {
            let index = (la.0 >> (12 + 9 * (level - 1))) & 0x1ff;
            let at = table + index * 8;
            let mut b = [0u8; 8];
            mem.read(Gpa(at), &mut b);
            let e = u64::from_le_bytes(b);
            if e & P == 0 {
                return Err(self.fault(la, kind, 0));
            }
            let large = (2..=3).contains(&level) && e & PS != 0;
            let reserved = (!nxe && e & XD != 0) || (level >= 4 && e & PS != 0);
            if reserved {
                return Err(self.fault(la, kind, pf::PRESENT | pf::RESERVED));
            }
            writable &= e & RW != 0;
            user &= e & US != 0;
            no_exec |= nxe && e & XD != 0;
            touched[depth] = (at, e);
            if level == 1 || large {
                let page_bits = 12 + 9 * (level - 1);
                let page_mask = (1u64 << page_bits) - 1;
                let base = e & ADDR & !page_mask;
                self.check(la, kind, writable, user, no_exec)?;
                for &(at, e) in &touched[..=depth] {
                    let leaf = at == touched[depth].0;
                    let want = e
                        | A
                        | if leaf && kind == AccessKind::Write {
                            D
                        } else {
                            0
                        };
                    if want != e {
                        mem.write(Gpa(at), &want.to_le_bytes());
                    }
                }
                let off = la.0 & page_mask;
                return Ok(Translation {
                    gpa: Gpa(base | off),
                    room: (1u64 << page_bits) - off,
                });
            }
            table = e & ADDR;
        }
        // Unreachable: level 1 always ends the walk.
        Err(self.fault(la, kind, 0))
    }

    fn check(
        &self,
        la: Linear,
        kind: AccessKind,
        writable: bool,
        user_page: bool,
        no_exec: bool,
    ) -> Result<(), Fault> {
        let protection = |w: &Self| Err(w.fault(la, kind, pf::PRESENT));
        let supervisor = self.sys.cpl < 3;
        if !supervisor && !user_page {
            return protection(self);
        }
        if kind == AccessKind::Write && !writable && (!supervisor || self.sys.cr0 & cr::CR0_WP != 0)
        {
            return protection(self);
        }
        if kind == AccessKind::Fetch {
            if no_exec {
                return protection(self);
            }
            if supervisor && user_page && self.sys.cr4 & cr::CR4_SMEP != 0 {
                return protection(self);
            }
        } else if supervisor && user_page && self.sys.cr4 & cr::CR4_SMAP != 0 && !self.ac {
            return protection(self);
        }
        Ok(())
    }
}
