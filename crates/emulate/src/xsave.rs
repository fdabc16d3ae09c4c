//! The XSAVE family and FXSAVE/FXRSTOR against the vCPU's XSAVE image.
//!
//! The image (standard form, as `KVM_GET_XSAVE` returns it) holds every register; its
//! XSTATE_BV is the in-use bitmap XINUSE. Saves copy from it into guest memory in the standard
//! or compacted form, restores copy from guest memory into it and set XINUSE as the
//! architecture says, so that re-entry loads exactly the restored state.

use iced_x86::{Code, Instruction};

use crate::exec::{Ctx, FaultOr, address, advance};
use crate::state::{Linear, Registers, XState, component, cr, gpr, legacy};
use crate::{Exception, Fault};

/// Initial x87 control word.
const FCW_INIT: u16 = 0x037f;
/// Initial MXCSR.
const MXCSR_INIT: u32 = 0x1f80;
/// Bytes of the legacy region holding x87 state other than MXCSR/MXCSR_MASK.
const X87_PARTS: [(usize, usize); 2] = [(0, 24), (32, 160)];
/// MXCSR and MXCSR_MASK.
const MXCSR_PART: (usize, usize) = (24, 32);
/// XMM0–15.
const XMM_PART: (usize, usize) = (legacy::XMM0, legacy::END);

pub(crate) fn execute(
    ctx: &mut Ctx<'_>,
    ins: &Instruction,
    regs: Registers,
) -> Result<(), FaultOr> {
    let la = address(ctx, ins, &regs, 0);
    match ins.code() {
        Code::Fxsave_m512byte | Code::Fxsave64_m512byte => {
            fx_checks(ctx, la)?;
            let x = ctx.cpu.xstate()?;
            // The image is in the 64-bit (REX.W) layout; for FIP/FDP below 4 GiB and the
            // FCS/FDS a CPU that deprecates them stores (0), both layouts hold the same bytes.
            let bytes = x.image[..legacy::END].to_vec();
            ctx.write(la, &bytes)?;
            advance(ctx, ins, regs)
        }
        Code::Fxrstor_m512byte | Code::Fxrstor64_m512byte => {
            fx_checks(ctx, la)?;
            let mut b = vec![0u8; legacy::END];
            ctx.read(la, &mut b)?;
            let x = ctx.cpu.xstate()?;
            let mxcsr = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
            if mxcsr & !x.mxcsr_mask() != 0 {
                return Err(Fault::gp(0).into());
            }
            for (s, e) in X87_PARTS.into_iter().chain([XMM_PART]) {
                x.image[s..e].copy_from_slice(&b[s..e]);
            }
            x.image[24..28].copy_from_slice(&b[24..28]);
            x.mark_in_use(0b11);
            advance(ctx, ins, regs)
        }
        code => {
            if ctx.sys.cr4 & cr::CR4_OSXSAVE == 0 {
                return Err(Fault::plain(Exception::InvalidOpcode).into());
            }
            if ctx.sys.cr0 & cr::CR0_TS != 0 {
                return Err(Fault::plain(Exception::DeviceNotAvailable).into());
            }
            if !la.0.is_multiple_of(64) {
                return Err(Fault::gp(0).into());
            }
            let xcr0 = ctx.cpu.xstate()?.xcr0;
            let edx_eax = (regs.gpr[gpr::RDX] << 32) | (regs.gpr[gpr::RAX] & 0xffff_ffff);
            let rfbm = edx_eax & xcr0;
            match code {
                Code::Xrstor_mem | Code::Xrstor64_mem => xrstor(ctx, la, rfbm)?,
                Code::Xsavec_mem | Code::Xsavec64_mem => save(ctx, la, rfbm, Form::Compacted)?,
                Code::Xsaveopt_mem | Code::Xsaveopt64_mem => save(ctx, la, rfbm, Form::Optimised)?,
                _ => save(ctx, la, rfbm, Form::Standard)?,
            }
            advance(ctx, ins, regs)
        }
    }
}

fn fx_checks(ctx: &Ctx<'_>, la: Linear) -> Result<(), Fault> {
    if ctx.sys.cr0 & (cr::CR0_TS | cr::CR0_EM) != 0 {
        return Err(Fault::plain(Exception::DeviceNotAvailable));
    }
    if !la.0.is_multiple_of(16) {
        return Err(Fault::gp(0));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// XSAVE: every requested component, standard offsets.
    Standard,
    /// XSAVEOPT: standard offsets, components in their initial configuration skipped.
    Optimised,
    /// XSAVEC: compacted offsets, components in their initial configuration skipped.
    Compacted,
}

/// (offset in memory, offset in the image, length) of each component ≥ 2 of `bits`.
fn extended_parts(
    x: &XState,
    bits: u64,
    compacted: Option<u64>,
) -> Option<Vec<(usize, usize, usize)>> {
    let mut out = Vec::new();
    let offs = match compacted {
        Some(xcomp) => x.layout.compacted_offsets(xcomp)?,
        None => (2..63u32)
            .filter(|i| bits & (1 << i) != 0)
            .map(|i| Some((i, x.layout.component(i)?.offset)))
            .collect::<Option<Vec<_>>>()?,
    };
    for (i, at) in offs {
        if bits & (1 << i) == 0 {
            continue;
        }
        let c = x.layout.component(i)?;
        out.push((at as usize, c.offset as usize, c.size as usize));
    }
    Some(out)
}

fn save(ctx: &mut Ctx<'_>, la: Linear, rfbm: u64, form: Form) -> Result<(), FaultOr> {
    let x = ctx.cpu.xstate()?;
    let xinuse = x.xinuse() & x.xcr0;
    // Which components are written: XSAVE writes all requested; the optimised forms skip
    // components in their initial configuration.
    let write = match form {
        Form::Standard => rfbm,
        Form::Optimised | Form::Compacted => rfbm & xinuse,
    };
    let compacted = (form == Form::Compacted).then_some(rfbm | 1 << 63);
    let Some(ext) = extended_parts(x, write, compacted) else {
        return Err(Fault::gp(0).into());
    };
    let size = match compacted {
        Some(xcomp) => x.layout.compacted_size(xcomp),
        None => (2..63u32)
            .filter(|i| rfbm & (1 << i) != 0)
            .map(|i| x.layout.component(i).map(|c| c.offset + c.size))
            .try_fold(576u32, |m, e| e.map(|e| m.max(e))),
    };
    let Some(size) = size else {
        return Err(Fault::gp(0).into());
    };
    // (offset, bytes) to write.
    let mut writes: Vec<(usize, Vec<u8>)> = Vec::new();
    if write & 1 != 0 {
        for (s, e) in X87_PARTS {
            writes.push((s, x.image[s..e].to_vec()));
        }
    }
    // MXCSR: the standard forms save it whenever SSE or AVX state is requested; XSAVEC only
    // with the SSE state it belongs to (measured on this host: an AVX-only XSAVEC leaves it).
    let mxcsr = match form {
        Form::Compacted => write & 0b10 != 0,
        Form::Standard | Form::Optimised => rfbm & 0b110 != 0,
    };
    if mxcsr {
        writes.push((MXCSR_PART.0, x.image[MXCSR_PART.0..MXCSR_PART.1].to_vec()));
    }
    if write & 2 != 0 {
        writes.push((XMM_PART.0, x.image[XMM_PART.0..XMM_PART.1].to_vec()));
    }
    for (mem_at, img_at, len) in ext {
        writes.push((mem_at, x.image[img_at..img_at + len].to_vec()));
    }
    // Header: XSTATE_BV (standard forms: only the requested bits change), XCOMP_BV (compacted).
    let header_rmw = compacted.is_none();
    ctx.probe_write(la, size as usize)?;
    let mut header = [0u8; 16];
    match compacted {
        Some(xcomp) => {
            header[..8].copy_from_slice(&(xinuse & rfbm).to_le_bytes());
            header[8..].copy_from_slice(&xcomp.to_le_bytes());
            writes.push((legacy::HEADER, header.to_vec()));
        }
        None => {
            debug_assert!(header_rmw);
            let mut old = [0u8; 8];
            ctx.read(Linear(la.0 + legacy::XSTATE_BV as u64), &mut old)?;
            let bv = (u64::from_le_bytes(old) & !rfbm) | (xinuse & rfbm);
            writes.push((legacy::XSTATE_BV, bv.to_le_bytes().to_vec()));
        }
    }
    writes.sort_by_key(|w| w.0);
    for (at, bytes) in writes {
        ctx.write(Linear(la.0 + at as u64), &bytes)?;
    }
    Ok(())
}

fn xrstor(ctx: &mut Ctx<'_>, la: Linear, rfbm: u64) -> Result<(), FaultOr> {
    let mut head = vec![0u8; 576];
    ctx.read(la, &mut head)?;
    let u64_at = |b: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let xstate_bv = u64_at(&head, legacy::XSTATE_BV);
    let xcomp_bv = u64_at(&head, legacy::XCOMP_BV);
    let compacted = xcomp_bv >> 63 == 1;
    let mut x = ctx.cpu.xstate()?.clone();
    let xcr0 = x.xcr0;
    if compacted {
        if xcomp_bv & !(xcr0 | 1 << 63) != 0
            || xstate_bv & !xcomp_bv != 0
            || head[legacy::HEADER + 16..576].iter().any(|&b| b != 0)
        {
            return Err(Fault::gp(0).into());
        }
    } else if xstate_bv & !xcr0 != 0
        || head[legacy::HEADER + 8..legacy::HEADER + 24]
            .iter()
            .any(|&b| b != 0)
    {
        return Err(Fault::gp(0).into());
    }
    let load = rfbm & xstate_bv;
    // MXCSR: the standard form loads it whenever SSE or AVX is requested; the compacted form
    // only with SSE or AVX state present, and otherwise resets it with SSE state.
    let mxcsr_from_memory = if compacted {
        load & 0b110 != 0
    } else {
        rfbm & 0b110 != 0
    };
    if mxcsr_from_memory {
        let m = u32::from_le_bytes([head[24], head[25], head[26], head[27]]);
        if m & !x.mxcsr_mask() != 0 {
            return Err(Fault::gp(0).into());
        }
        x.image[24..28].copy_from_slice(&m.to_le_bytes());
    } else if compacted && rfbm & 2 != 0 {
        x.image[24..28].copy_from_slice(&MXCSR_INIT.to_le_bytes());
    }
    if rfbm & 1 != 0 {
        if load & 1 != 0 {
            for (s, e) in X87_PARTS {
                x.image[s..e].copy_from_slice(&head[s..e]);
            }
        } else {
            for (s, e) in X87_PARTS {
                x.image[s..e].fill(0);
            }
            x.image[0..2].copy_from_slice(&FCW_INIT.to_le_bytes());
        }
    }
    if rfbm & 2 != 0 {
        if load & 2 != 0 {
            x.image[XMM_PART.0..XMM_PART.1].copy_from_slice(&head[XMM_PART.0..XMM_PART.1]);
        } else {
            x.image[XMM_PART.0..XMM_PART.1].fill(0);
        }
    }
    // Components 2 and up: loaded where present, initialised (zero) otherwise.
    let offsets = if compacted {
        x.layout.compacted_offsets(xcomp_bv)
    } else {
        Some(
            (2..63u32)
                .filter_map(|i| Some((i, x.layout.component(i)?.offset)))
                .collect(),
        )
    };
    let Some(offsets) = offsets else {
        return Err(Fault::gp(0).into());
    };
    for i in (2..63u32).filter(|i| rfbm & (1 << i) != 0) {
        let Some(c) = x.layout.component(i) else {
            return Err(Fault::gp(0).into());
        };
        let (img_at, len) = (c.offset as usize, c.size as usize);
        let mem_at = offsets.iter().find(|o| o.0 == i).map(|o| o.1 as usize);
        match mem_at {
            Some(mem_at) if load & (1 << i) != 0 => {
                let mut b = vec![0u8; len];
                ctx.read(Linear(la.0 + mem_at as u64), &mut b)?;
                x.image[img_at..img_at + len].copy_from_slice(&b);
            }
            _ => x.image[img_at..img_at + len].fill(0),
        }
    }
    x.set_in_use(rfbm, load);
    // A non-default MXCSR is only loaded on re-entry with SSE state marked present (its
    // registers are in the image either way).
    if x.mxcsr() != MXCSR_INIT {
        x.mark_in_use(1 << component::SSE);
    }
    *ctx.cpu.xstate()? = x;
    Ok(())
}
