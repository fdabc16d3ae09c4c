//! Decoding and executing one instruction.

use std::sync::Mutex;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::paging::{AccessKind, Walker};
use crate::state::{Cpu, Gpa, Linear, Memory, Registers, System, cr, flags, gpr};
use crate::{Completion, Exception, Failure, Fault};

/// Locked read-modify-write instructions completed by cxlvm hold this lock, so that two vCPUs
/// completing CMPXCHG16B on the same MMIO path are atomic against each other.
static RMW: Mutex<()> = Mutex::new(());

/// Upper bound of bytes one completion of a `rep` string instruction moves before it returns
/// to the guest (RIP stays on the instruction, counters updated), so that a huge count cannot
/// hold a vCPU thread for long.
pub(crate) const REP_CHUNK: u64 = 256 * 1024;

/// The longest x86 instruction.
const MAX_INSN: usize = 15;

/// One completion's view of the guest: state, memory, paging, and a small translation cache.
pub(crate) struct Ctx<'a> {
    pub(crate) cpu: &'a mut dyn Cpu,
    pub(crate) mem: &'a dyn Memory,
    pub(crate) sys: System,
    pub(crate) walker: Walker,
    /// (linear page, kind) → guest-physical page, for this completion only.
    tlb: Vec<(u64, AccessKind, u64)>,
}

impl Ctx<'_> {
    fn translate_page(&mut self, la: u64, kind: AccessKind) -> Result<(Gpa, u64), Fault> {
        let page = la & !0xfff;
        let off = la & 0xfff;
        if let Some(&(_, _, g)) = self
            .tlb
            .iter()
            .find(|&&(p, k, _)| p == page && (k == kind || k == AccessKind::Write))
        {
            return Ok((Gpa(g | off), 0x1000 - off));
        }
        let t = self.walker.translate(self.mem, Linear(la), kind)?;
        if self.tlb.len() >= 64 {
            self.tlb.clear();
        }
        self.tlb.push((page, kind, t.gpa.0 & !0xfff));
        Ok((t.gpa, (0x1000 - off).min(t.room)))
    }

    /// The guest-physical pieces of `[la, la + len)` for an access of `kind`.
    fn pieces(
        &mut self,
        la: Linear,
        len: usize,
        kind: AccessKind,
    ) -> Result<Vec<(Gpa, usize)>, Fault> {
        let mut out = Vec::with_capacity(2);
        let mut done = 0usize;
        while done < len {
            let (gpa, room) = self.translate_page(la.0.wrapping_add(done as u64), kind)?;
            let n = (len - done).min(room as usize);
            out.push((gpa, n));
            done += n;
        }
        Ok(out)
    }

    /// Reads `buf.len()` bytes at linear `la` (every page translated before any byte is read).
    pub(crate) fn read(&mut self, la: Linear, buf: &mut [u8]) -> Result<(), Fault> {
        let pieces = self.pieces(la, buf.len(), AccessKind::Read)?;
        let mut at = 0;
        for (gpa, n) in pieces {
            self.mem.read(gpa, &mut buf[at..at + n]);
            at += n;
        }
        Ok(())
    }

    /// Writes `data` at linear `la`: every page is translated (and may fault) before the first
    /// byte is written.
    pub(crate) fn write(&mut self, la: Linear, data: &[u8]) -> Result<(), Fault> {
        let pieces = self.pieces(la, data.len(), AccessKind::Write)?;
        let mut at = 0;
        for (gpa, n) in pieces {
            self.mem.write(gpa, &data[at..at + n]);
            at += n;
        }
        Ok(())
    }

    /// Checks that a write to `[la, la + len)` would be allowed (for read-modify-write operands).
    pub(crate) fn probe_write(&mut self, la: Linear, len: usize) -> Result<(), Fault> {
        self.pieces(la, len, AccessKind::Write).map(|_| ())
    }

    /// #UD/#NM conditions of SSE instructions.
    pub(crate) fn sse_ok(&self) -> Result<(), Fault> {
        if self.sys.cr0 & cr::CR0_EM != 0 || self.sys.cr4 & cr::CR4_OSFXSR == 0 {
            return Err(Fault::plain(Exception::InvalidOpcode));
        }
        if self.sys.cr0 & cr::CR0_TS != 0 {
            return Err(Fault::plain(Exception::DeviceNotAvailable));
        }
        Ok(())
    }

    /// #UD/#NM conditions of VEX (AVX) instructions and XSAVE-enabled state.
    pub(crate) fn avx_ok(&mut self) -> Result<(), FaultOr> {
        let xcr0 = self.cpu.xstate()?.xcr0;
        if self.sys.cr4 & cr::CR4_OSXSAVE == 0 || xcr0 & 0b110 != 0b110 {
            return Err(Fault::plain(Exception::InvalidOpcode).into());
        }
        if self.sys.cr0 & cr::CR0_TS != 0 {
            return Err(Fault::plain(Exception::DeviceNotAvailable).into());
        }
        Ok(())
    }
}

/// An exception to raise, or a state failure.
pub(crate) enum FaultOr {
    Fault(Fault),
    Failure(Failure),
}

impl From<Fault> for FaultOr {
    fn from(f: Fault) -> Self {
        Self::Fault(f)
    }
}

impl From<crate::CpuError> for FaultOr {
    fn from(e: crate::CpuError) -> Self {
        Self::Failure(Failure::Cpu(e))
    }
}

/// Completes the instruction at the vCPU's RIP. `bytes` are the instruction bytes KVM attached
/// to the exit (at least the instruction; up to 15); without them the instruction is fetched
/// from guest RAM through the guest's page tables.
pub fn complete(
    cpu: &mut dyn Cpu,
    mem: &dyn Memory,
    bytes: Option<&[u8]>,
) -> Result<Completion, Failure> {
    let sys = cpu.system()?;
    if !sys.long_mode || sys.efer & cr::EFER_LMA == 0 {
        return Err(Failure::NotLongMode);
    }
    let regs = *cpu.registers()?;
    let walker = Walker::new(sys, regs.rflags);
    let mut ctx = Ctx {
        cpu,
        mem,
        sys,
        walker,
        tlb: Vec::new(),
    };
    let fetched;
    let bytes = match bytes {
        Some(b) if !b.is_empty() => b,
        _ => {
            fetched = match fetch(&mut ctx, regs.rip)? {
                Ok(b) => b,
                Err(fault) => {
                    return Ok(Completion::Raise {
                        mnemonic: Mnemonic::INVALID,
                        fault,
                    });
                }
            };
            &fetched
        }
    };
    let mut decoder = Decoder::with_ip(64, bytes, regs.rip, DecoderOptions::NONE);
    let ins = decoder.decode();
    if ins.is_invalid() {
        return Err(Failure::Decode {
            bytes: bytes.to_vec(),
        });
    }
    let mnemonic = ins.mnemonic();
    match execute(&mut ctx, &ins, regs) {
        Ok(()) => Ok(Completion::Done { mnemonic }),
        Err(FaultOr::Fault(fault)) => Ok(Completion::Raise { mnemonic, fault }),
        Err(FaultOr::Failure(f)) => Err(f),
    }
}

/// Fetches up to 15 instruction bytes at `rip` from RAM (the bytes may straddle a page).
fn fetch(ctx: &mut Ctx<'_>, rip: u64) -> Result<Result<Vec<u8>, Fault>, Failure> {
    let mut out = vec![0u8; MAX_INSN];
    let mut done = 0usize;
    while done < MAX_INSN {
        let la = Linear(rip.wrapping_add(done as u64));
        let t = match ctx.walker.translate(ctx.mem, la, AccessKind::Fetch) {
            Ok(t) => t,
            // The tail of the window may be unmapped: decode what the first page holds.
            Err(_) if done > 0 => break,
            Err(fault) => return Ok(Err(fault)),
        };
        if !ctx.mem.is_ram(t.gpa) {
            if done > 0 {
                break;
            }
            return Err(Failure::FetchFromMmio { gpa: t.gpa });
        }
        let n = (MAX_INSN - done).min(t.room as usize);
        ctx.mem.read(t.gpa, &mut out[done..done + n]);
        done += n;
    }
    out.truncate(done);
    Ok(Ok(out))
}

/// The linear address of memory operand `op`.
pub(crate) fn address(ctx: &Ctx<'_>, ins: &Instruction, regs: &Registers, op: u32) -> Linear {
    let sys = ctx.sys;
    let la = ins.virtual_address(op, 0, |reg, _, _| {
        Some(match reg {
            Register::FS => sys.fs_base,
            Register::GS => sys.gs_base,
            Register::ES | Register::CS | Register::SS | Register::DS => 0,
            r => read_gpr(regs, r),
        })
    });
    Linear(la.unwrap_or(0))
}

/// Reads a general-purpose register of any width (zero-extended).
pub(crate) fn read_gpr(regs: &Registers, r: Register) -> u64 {
    let full = r.full_register();
    let Some(i) = gpr_index(full) else {
        return 0;
    };
    let v = regs.gpr[i];
    match r.size() {
        1 if r >= Register::AH && r <= Register::BH => (v >> 8) & 0xff,
        1 => v & 0xff,
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    }
}

/// Index of a 64-bit general-purpose register in [`Registers::gpr`].
fn gpr_index(full: Register) -> Option<usize> {
    full.is_gpr64().then(|| full.number())
}

/// Writes a 32- or 64-bit general-purpose register (32-bit writes zero-extend, as on hardware).
fn write_gpr(regs: &mut Registers, r: Register, v: u64) {
    if let Some(i) = gpr_index(r.full_register()) {
        regs.gpr[i] = if r.size() == 4 { v & 0xffff_ffff } else { v };
    }
}

fn execute(ctx: &mut Ctx<'_>, ins: &Instruction, regs: Registers) -> Result<(), FaultOr> {
    if let Some(spec) = move_spec(ins.code()) {
        return vector_move(ctx, ins, regs, spec);
    }
    match ins.code() {
        Code::Cmpxchg16b_m128 => cmpxchg(ctx, ins, regs, 16),
        Code::Cmpxchg8b_m64 => cmpxchg(ctx, ins, regs, 8),
        Code::Movsb_m8_m8
        | Code::Movsw_m16_m16
        | Code::Movsd_m32_m32
        | Code::Movsq_m64_m64
        | Code::Stosb_m8_AL
        | Code::Stosw_m16_AX
        | Code::Stosd_m32_EAX
        | Code::Stosq_m64_RAX => string(ctx, ins, regs),
        Code::Movdir64b_r64_m512 => movdir64b(ctx, ins, regs),
        Code::Movnti_m32_r32 | Code::Movnti_m64_r64 => {
            let la = address(ctx, ins, &regs, 0);
            let v = read_gpr(&regs, ins.op1_register());
            let n = ins.op1_register().size();
            ctx.write(la, &v.to_le_bytes()[..n])?;
            advance(ctx, ins, regs)
        }
        Code::Int3 => {
            let mut r = regs;
            r.rip = ins.next_ip();
            *ctx.cpu.registers()? = r;
            Err(Fault::plain(Exception::Breakpoint).into())
        }
        Code::Wait => {
            if ctx.sys.cr0 & (cr::CR0_TS | 2) == (cr::CR0_TS | 2) {
                return Err(Fault::plain(Exception::DeviceNotAvailable).into());
            }
            // FSW.ES: an unmasked x87 exception is pending.
            let fsw = {
                let x = ctx.cpu.xstate()?;
                u16::from_le_bytes([x.image[2], x.image[3]])
            };
            if fsw & 0x80 != 0 {
                return Err(Fault::plain(Exception::MathFault).into());
            }
            advance(ctx, ins, regs)
        }
        Code::Ldmxcsr_m32 | Code::VEX_Vldmxcsr_m32 => {
            if ins.code() == Code::VEX_Vldmxcsr_m32 {
                ctx.avx_ok()?;
            } else {
                ctx.sse_ok()?;
            }
            let la = address(ctx, ins, &regs, 0);
            let mut b = [0u8; 4];
            ctx.read(la, &mut b)?;
            let v = u32::from_le_bytes(b);
            let x = ctx.cpu.xstate()?;
            if v & !x.mxcsr_mask() != 0 {
                return Err(Fault::gp(0).into());
            }
            x.set_mxcsr(v);
            advance(ctx, ins, regs)
        }
        Code::Stmxcsr_m32 | Code::VEX_Vstmxcsr_m32 => {
            if ins.code() == Code::VEX_Vstmxcsr_m32 {
                ctx.avx_ok()?;
            } else {
                ctx.sse_ok()?;
            }
            let la = address(ctx, ins, &regs, 0);
            let v = ctx.cpu.xstate()?.mxcsr();
            ctx.write(la, &v.to_le_bytes())?;
            advance(ctx, ins, regs)
        }
        Code::Xgetbv => {
            if ctx.sys.cr4 & cr::CR4_OSXSAVE == 0 {
                return Err(Fault::plain(Exception::InvalidOpcode).into());
            }
            let x = ctx.cpu.xstate()?;
            let v = match regs.gpr[gpr::RCX] & 0xffff_ffff {
                0 => x.xcr0,
                // XINUSE (where XGETBV with ECX = 1 is supported).
                1 => x.xinuse() & x.xcr0,
                _ => return Err(Fault::gp(0).into()),
            };
            let mut r = regs;
            r.gpr[gpr::RAX] = v & 0xffff_ffff;
            r.gpr[gpr::RDX] = v >> 32;
            advance(ctx, ins, r)
        }
        Code::Clac | Code::Stac => {
            if ctx.sys.cpl != 0 {
                return Err(Fault::plain(Exception::InvalidOpcode).into());
            }
            let mut r = regs;
            if ins.code() == Code::Stac {
                r.rflags |= flags::AC;
            } else {
                r.rflags &= !flags::AC;
            }
            r.rip = ins.next_ip();
            *ctx.cpu.registers()? = r;
            Ok(())
        }
        Code::Xsave_mem
        | Code::Xsave64_mem
        | Code::Xsaveopt_mem
        | Code::Xsaveopt64_mem
        | Code::Xsavec_mem
        | Code::Xsavec64_mem
        | Code::Xrstor_mem
        | Code::Xrstor64_mem
        | Code::Fxsave_m512byte
        | Code::Fxsave64_m512byte
        | Code::Fxrstor_m512byte
        | Code::Fxrstor64_m512byte => crate::xsave::execute(ctx, ins, regs),
        _ => Err(FaultOr::Failure(Failure::Unsupported {
            mnemonic: ins.mnemonic(),
        })),
    }
}

/// Moves RIP past the instruction (registers otherwise as given).
pub(crate) fn advance(
    ctx: &mut Ctx<'_>,
    ins: &Instruction,
    regs: Registers,
) -> Result<(), FaultOr> {
    let r = ctx.cpu.registers()?;
    *r = regs;
    r.rip = ins.next_ip();
    Ok(())
}

/// How a vector move writes its destination register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fill {
    /// The whole operand width; legacy encodings keep bits above 128, VEX zeroes above it.
    Full,
    /// A scalar (movss/movsd/movd/movq): zero-extended to 128 bits (VEX: to the full register);
    /// movss/movsd between registers merge instead.
    Scalar {
        /// movss/movsd: register-to-register forms merge into the low element.
        merge_reg: bool,
    },
    /// movlps/movlpd: the low 8 bytes, the rest kept.
    Low,
    /// movhps/movhpd: the high 8 bytes of the XMM register (loads and stores).
    High,
}

#[derive(Clone, Copy, Debug)]
struct MoveSpec {
    width: usize,
    aligned: bool,
    vex: bool,
    fill: Fill,
}

const fn mv(width: usize, aligned: bool, vex: bool, fill: Fill) -> Option<MoveSpec> {
    Some(MoveSpec {
        width,
        aligned,
        vex,
        fill,
    })
}

/// The vector moves cxlvm completes.
fn move_spec(code: Code) -> Option<MoveSpec> {
    use Code::*;
    const S: Fill = Fill::Scalar { merge_reg: false };
    const SM: Fill = Fill::Scalar { merge_reg: true };
    match code {
        Movups_xmm_xmmm128 | Movups_xmmm128_xmm | Movupd_xmm_xmmm128 | Movupd_xmmm128_xmm
        | Movdqu_xmm_xmmm128 | Movdqu_xmmm128_xmm | Lddqu_xmm_m128 => {
            mv(16, false, false, Fill::Full)
        }
        Movaps_xmm_xmmm128 | Movaps_xmmm128_xmm | Movapd_xmm_xmmm128 | Movapd_xmmm128_xmm
        | Movdqa_xmm_xmmm128 | Movdqa_xmmm128_xmm | Movntps_m128_xmm | Movntpd_m128_xmm
        | Movntdq_m128_xmm | Movntdqa_xmm_m128 => mv(16, true, false, Fill::Full),
        VEX_Vmovups_xmm_xmmm128
        | VEX_Vmovups_xmmm128_xmm
        | VEX_Vmovupd_xmm_xmmm128
        | VEX_Vmovupd_xmmm128_xmm
        | VEX_Vmovdqu_xmm_xmmm128
        | VEX_Vmovdqu_xmmm128_xmm
        | VEX_Vlddqu_xmm_m128 => mv(16, false, true, Fill::Full),
        VEX_Vmovups_ymm_ymmm256
        | VEX_Vmovups_ymmm256_ymm
        | VEX_Vmovupd_ymm_ymmm256
        | VEX_Vmovupd_ymmm256_ymm
        | VEX_Vmovdqu_ymm_ymmm256
        | VEX_Vmovdqu_ymmm256_ymm
        | VEX_Vlddqu_ymm_m256 => mv(32, false, true, Fill::Full),
        VEX_Vmovaps_xmm_xmmm128
        | VEX_Vmovaps_xmmm128_xmm
        | VEX_Vmovapd_xmm_xmmm128
        | VEX_Vmovapd_xmmm128_xmm
        | VEX_Vmovdqa_xmm_xmmm128
        | VEX_Vmovdqa_xmmm128_xmm
        | VEX_Vmovntps_m128_xmm
        | VEX_Vmovntpd_m128_xmm
        | VEX_Vmovntdq_m128_xmm
        | VEX_Vmovntdqa_xmm_m128 => mv(16, true, true, Fill::Full),
        VEX_Vmovaps_ymm_ymmm256
        | VEX_Vmovaps_ymmm256_ymm
        | VEX_Vmovapd_ymm_ymmm256
        | VEX_Vmovapd_ymmm256_ymm
        | VEX_Vmovdqa_ymm_ymmm256
        | VEX_Vmovdqa_ymmm256_ymm
        | VEX_Vmovntps_m256_ymm
        | VEX_Vmovntpd_m256_ymm
        | VEX_Vmovntdq_m256_ymm
        | VEX_Vmovntdqa_ymm_m256 => mv(32, true, true, Fill::Full),
        Movss_xmm_xmmm32 | Movss_xmmm32_xmm => mv(4, false, false, SM),
        Movsd_xmm_xmmm64 | Movsd_xmmm64_xmm => mv(8, false, false, SM),
        Movd_xmm_rm32 | Movd_rm32_xmm => mv(4, false, false, S),
        Movq_xmm_rm64 | Movq_rm64_xmm | Movq_xmm_xmmm64 | Movq_xmmm64_xmm => mv(8, false, false, S),
        VEX_Vmovss_xmm_m32 | VEX_Vmovss_m32_xmm | VEX_Vmovd_xmm_rm32 | VEX_Vmovd_rm32_xmm => {
            mv(4, false, true, S)
        }
        VEX_Vmovsd_xmm_m64 | VEX_Vmovsd_m64_xmm | VEX_Vmovq_xmm_rm64 | VEX_Vmovq_rm64_xmm
        | VEX_Vmovq_xmm_xmmm64 | VEX_Vmovq_xmmm64_xmm => mv(8, false, true, S),
        Movlps_xmm_m64 | Movlps_m64_xmm | Movlpd_xmm_m64 | Movlpd_m64_xmm => {
            mv(8, false, false, Fill::Low)
        }
        VEX_Vmovlps_m64_xmm | VEX_Vmovlpd_m64_xmm => mv(8, false, true, Fill::Low),
        Movhps_xmm_m64 | Movhps_m64_xmm | Movhpd_xmm_m64 | Movhpd_m64_xmm => {
            mv(8, false, false, Fill::High)
        }
        VEX_Vmovhps_m64_xmm | VEX_Vmovhpd_m64_xmm => mv(8, false, true, Fill::High),
        VEX_Vmovss_xmm_xmm_xmm | VEX_Vmovss_xmm_xmm_xmm_0F11 => mv(4, false, true, SM),
        VEX_Vmovsd_xmm_xmm_xmm | VEX_Vmovsd_xmm_xmm_xmm_0F11 => mv(8, false, true, SM),
        _ => None,
    }
}

/// Vector register number of an XMM/YMM operand.
fn vreg(r: Register) -> Option<usize> {
    (r.is_xmm() || r.is_ymm()).then(|| r.number())
}

fn vector_move(
    ctx: &mut Ctx<'_>,
    ins: &Instruction,
    regs: Registers,
    spec: MoveSpec,
) -> Result<(), FaultOr> {
    if spec.vex {
        ctx.avx_ok()?;
    } else {
        ctx.sse_ok()?;
    }
    let w = spec.width;
    let high = if spec.fill == Fill::High { 8 } else { 0 };
    // VEX three-operand vmovss/vmovsd xmm1, xmm2, xmm3: low element from xmm3, the rest of
    // the low 128 bits from xmm2, upper bits zeroed.
    if ins.op_count() == 3 {
        let (Some(d), Some(a), Some(b)) = (
            vreg(ins.op0_register()),
            vreg(ins.op1_register()),
            vreg(ins.op2_register()),
        ) else {
            return Err(unsupported(ins));
        };
        let x = ctx.cpu.xstate()?;
        let vl = x.vlmax();
        let mut va = [0u8; 32];
        let mut vb = [0u8; 32];
        x.read_vector(a, &mut va[..vl]);
        x.read_vector(b, &mut vb[..vl]);
        va[..w].copy_from_slice(&vb[..w]);
        va[16..].fill(0);
        x.write_vector(d, &va[..vl]);
        return advance(ctx, ins, regs);
    }
    // Source bytes.
    let mut data = [0u8; 32];
    let src_is_mem = ins.op1_kind() == OpKind::Memory;
    let src_is_vec = vreg(ins.op1_register()).is_some() && !src_is_mem;
    match ins.op1_kind() {
        OpKind::Memory => {
            let la = address(ctx, ins, &regs, 1);
            if spec.aligned && !la.0.is_multiple_of(w as u64) {
                return Err(Fault::gp(0).into());
            }
            ctx.read(la, &mut data[..w])?;
        }
        OpKind::Register => {
            let r = ins.op1_register();
            if let Some(n) = vreg(r) {
                let x = ctx.cpu.xstate()?;
                let mut v = [0u8; 32];
                x.read_vector(n, &mut v[..x.vlmax()]);
                data[..w].copy_from_slice(&v[high..high + w]);
            } else if r.is_gpr() {
                data[..8].copy_from_slice(&read_gpr(&regs, r).to_le_bytes());
            } else {
                return Err(unsupported(ins));
            }
        }
        _ => return Err(unsupported(ins)),
    }
    // Destination.
    match ins.op0_kind() {
        OpKind::Memory => {
            let la = address(ctx, ins, &regs, 0);
            if spec.aligned && !la.0.is_multiple_of(w as u64) {
                return Err(Fault::gp(0).into());
            }
            ctx.write(la, &data[..w])?;
            advance(ctx, ins, regs)
        }
        OpKind::Register => {
            let r = ins.op0_register();
            if let Some(n) = vreg(r) {
                let x = ctx.cpu.xstate()?;
                let vl = x.vlmax();
                let mut cur = [0u8; 32];
                x.read_vector(n, &mut cur[..vl]);
                match spec.fill {
                    Fill::Full => {
                        cur[..w].copy_from_slice(&data[..w]);
                        if spec.vex {
                            cur[w..].fill(0);
                        }
                    }
                    Fill::Scalar { merge_reg } => {
                        cur[..w].copy_from_slice(&data[..w]);
                        if !(merge_reg && src_is_vec) {
                            cur[w..16].fill(0);
                        }
                        if spec.vex {
                            cur[16..].fill(0);
                        }
                    }
                    Fill::Low => cur[..8].copy_from_slice(&data[..8]),
                    Fill::High => cur[8..16].copy_from_slice(&data[..8]),
                }
                // Legacy encodings leave the upper YMM half alone: write only the XMM part.
                let len = if spec.vex { vl } else { 16 };
                x.write_vector(n, &cur[..len]);
                advance(ctx, ins, regs)
            } else if r.is_gpr() {
                let mut out = regs;
                let mut b = [0u8; 8];
                b[..w].copy_from_slice(&data[..w]);
                write_gpr(&mut out, r, u64::from_le_bytes(b));
                advance(ctx, ins, out)
            } else {
                Err(unsupported(ins))
            }
        }
        _ => Err(unsupported(ins)),
    }
}

fn unsupported(ins: &Instruction) -> FaultOr {
    FaultOr::Failure(Failure::Unsupported {
        mnemonic: ins.mnemonic(),
    })
}

fn cmpxchg(
    ctx: &mut Ctx<'_>,
    ins: &Instruction,
    regs: Registers,
    width: usize,
) -> Result<(), FaultOr> {
    let la = address(ctx, ins, &regs, 0);
    if width == 16 && !la.0.is_multiple_of(16) {
        return Err(Fault::gp(0).into());
    }
    let half = width / 2;
    let mask = if half == 8 { u64::MAX } else { 0xffff_ffff };
    let _held = RMW.lock().unwrap_or_else(|e| e.into_inner());
    // The operand is written whatever the outcome on hardware: fault on a read-only page.
    ctx.probe_write(la, width)?;
    let mut cur = [0u8; 16];
    ctx.read(la, &mut cur[..width])?;
    let lo_of = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..half].copy_from_slice(&b[..half]);
        u64::from_le_bytes(w)
    };
    let mem_lo = lo_of(&cur[..half]);
    let mem_hi = lo_of(&cur[half..width]);
    let mut out = regs;
    if mem_lo == regs.gpr[gpr::RAX] & mask && mem_hi == regs.gpr[gpr::RDX] & mask {
        let mut new = [0u8; 16];
        new[..half].copy_from_slice(&regs.gpr[gpr::RBX].to_le_bytes()[..half]);
        new[half..width].copy_from_slice(&regs.gpr[gpr::RCX].to_le_bytes()[..half]);
        ctx.write(la, &new[..width])?;
        out.rflags |= flags::ZF;
    } else {
        out.gpr[gpr::RAX] = mem_lo;
        out.gpr[gpr::RDX] = mem_hi;
        out.rflags &= !flags::ZF;
    }
    advance(ctx, ins, out)
}

fn movdir64b(ctx: &mut Ctx<'_>, ins: &Instruction, regs: Registers) -> Result<(), FaultOr> {
    // Destination: ES:[r64] (ES base is 0 in 64-bit mode), 64-byte aligned; source: m512.
    let dst = Linear(read_gpr(&regs, ins.op0_register()));
    if !dst.0.is_multiple_of(64) {
        return Err(Fault::gp(0).into());
    }
    let src = address(ctx, ins, &regs, 1);
    let mut b = [0u8; 64];
    ctx.read(src, &mut b)?;
    ctx.write(dst, &b)?;
    advance(ctx, ins, regs)
}

fn string(ctx: &mut Ctx<'_>, ins: &Instruction, regs: Registers) -> Result<(), FaultOr> {
    let is_movs = ins.mnemonic() == Mnemonic::Movsb
        || ins.mnemonic() == Mnemonic::Movsw
        || ins.mnemonic() == Mnemonic::Movsd
        || ins.mnemonic() == Mnemonic::Movsq;
    // 64-bit addressing only (RSI/RDI/RCX); a 0x67 prefix is not covered.
    let dst_kind = ins.op0_kind();
    if dst_kind != OpKind::MemoryESRDI || (is_movs && ins.op1_kind() != OpKind::MemorySegRSI) {
        return Err(unsupported(ins));
    }
    let size = match ins.code() {
        Code::Movsb_m8_m8 | Code::Stosb_m8_AL => 1u64,
        Code::Movsw_m16_m16 | Code::Stosw_m16_AX => 2,
        Code::Movsd_m32_m32 | Code::Stosd_m32_EAX => 4,
        _ => 8,
    };
    let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
    let step = if regs.rflags & flags::DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };
    let src_base = if is_movs {
        match ins.memory_segment() {
            Register::FS => ctx.sys.fs_base,
            Register::GS => ctx.sys.gs_base,
            _ => 0,
        }
    } else {
        0
    };
    let mut r = regs;
    let value = regs.gpr[gpr::RAX].to_le_bytes();
    let mut moved = 0u64;
    loop {
        if rep && r.gpr[gpr::RCX] == 0 {
            break;
        }
        if rep && moved >= REP_CHUNK {
            // Bounded work per completion: leave RIP on the instruction.
            *ctx.cpu.registers()? = r;
            return Ok(());
        }
        let mut buf = [0u8; 8];
        let n = size as usize;
        let dst = Linear(r.gpr[gpr::RDI]);
        let res = if is_movs {
            let src = Linear(src_base.wrapping_add(r.gpr[gpr::RSI]));
            ctx.read(src, &mut buf[..n])
                .and_then(|()| ctx.write(dst, &buf[..n]))
        } else {
            ctx.write(dst, &value[..n])
        };
        if let Err(fault) = res {
            // Iterations done so far stay done; the fault is taken on this one.
            *ctx.cpu.registers()? = r;
            return Err(fault.into());
        }
        if is_movs {
            r.gpr[gpr::RSI] = r.gpr[gpr::RSI].wrapping_add(step);
        }
        r.gpr[gpr::RDI] = r.gpr[gpr::RDI].wrapping_add(step);
        moved += size;
        if !rep {
            break;
        }
        r.gpr[gpr::RCX] -= 1;
    }
    advance(ctx, ins, r)
}
