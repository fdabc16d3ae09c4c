//! `emulate`: instructions on the MMIO path (the scratch window with its RAM alias off) must give
//! exactly what they give on RAM.
//!
//! Each case runs the same instruction once on a RAM buffer (a static) and once on the scratch
//! window, both pre-filled with the same bytes, and compares the memory around the access and the
//! registers the instruction produces byte for byte. `mode=` (default `moves`):
//! - `moves`: SSE and AVX loads and stores (128 and 256 bits), aligned forms at an aligned
//!   offset, unaligned forms at offsets 0, 1, 7, 15 and across a 4 KiB page; every YMM register
//!   is set to a pattern first and all 16 are compared after.
//! - `xsave`: XSAVE, XSAVEOPT, XSAVEC (RFBM x87|SSE|AVX, SSE, AVX), FXSAVE, FXSAVE64 with
//!   non-initial x87/SSE/AVX state and MXCSR; XRSTOR (standard and compacted) and FXRSTOR64 of
//!   the same image from RAM and from the window; XSAVEC → XRSTOR and FXSAVE64 → FXRSTOR64
//!   round trips on the window.
//! - `cmpxchg16b`: CMPXCHG16B and CMPXCHG8B, success and failure, with and without LOCK (ZF,
//!   RDX:RAX, memory).
//! - `count` (2+ vCPUs, `n=`, default 2000): every vCPU adds 1 `n` times to one 16-byte window
//!   word with a LOCK CMPXCHG16B loop; vCPU 0 checks the total.
//! - `string`: `rep movsb`/`movsq`/`stosb`/`stosq` and a single `movsb`, many lengths, DF = 0 and
//!   1, RAM→window, window→RAM, window→window; memory, RSI, RDI and RCX against RAM→RAM.
//!
//! Output: `case <name> ok` or `case <name> MISMATCH ...`, `case <name> NOT RUN (...)`; exit
//! status 0 all passed, 2 bad argument, 3 no scratch window (or too small), 4 a mismatch, 5 the
//! CPU lacks a feature some case needs (named; those cases did not run).
#![no_std]
#![no_main]

use core::arch::asm;
use core::cell::UnsafeCell;

use cxlvm_guest::cpu::{self, cpuid};
use cxlvm_guest::mmio::Mmio;
use cxlvm_guest::sync::Barrier;
use cxlvm_guest::{BootInfo, DeviceKind, arg, arg_u64, port, println};

cxlvm_guest::entry!(main);

const BAD_ARG: i32 = 2;
const NO_DEVICE: i32 = 3;
const MISMATCH: i32 = 4;
const UNSUPPORTED: i32 = 5;

/// A page-aligned RAM buffer in the image's `.bss`.
#[repr(C, align(4096))]
struct Buf<const N: usize>(UnsafeCell<[u8; N]>);
// SAFETY: only touched through raw pointers (volatile accesses and asm) on one vCPU at a time.
unsafe impl<const N: usize> Sync for Buf<N> {}
impl<const N: usize> Buf<N> {
    const fn new() -> Self {
        Self(UnsafeCell::new([0; N]))
    }
    fn addr(&self) -> u64 {
        self.0.get().addr() as u64
    }
}

fn rd(addr: u64) -> u8 {
    // SAFETY: callers pass addresses inside this program's buffers.
    unsafe { core::ptr::with_exposed_provenance::<u8>(addr as usize).read_volatile() }
}

fn wr(addr: u64, v: u8) {
    // SAFETY: as in `rd`.
    unsafe { core::ptr::with_exposed_provenance_mut::<u8>(addr as usize).write_volatile(v) }
}

/// Pattern byte for position `i` with `seed`.
fn pat(seed: u8, i: u64) -> u8 {
    (i as u8).wrapping_mul(13).wrapping_add(seed) ^ ((i >> 8) as u8)
}

/// The scratch window with its alias off.
struct Window {
    mmio: Mmio,
}

impl Window {
    fn addr(&self, off: u64) -> u64 {
        self.mmio.addr(off)
    }
    /// Writes the pattern over `[off, off + len)` (8-aligned, multiple of 8) through MMIO, as
    /// `fill_ram` writes it over a RAM buffer whose offset 0 is window offset `origin`.
    fn fill(&self, off: u64, len: u64, seed: u8, origin: u64) {
        let mut i = 0;
        while i < len {
            let mut w = [0u8; 8];
            for (k, b) in w.iter_mut().enumerate() {
                *b = pat(seed, off - origin + i + k as u64);
            }
            self.mmio.write_u64(off + i, u64::from_le_bytes(w));
            i += 8;
        }
    }
    /// Copies `len` bytes (8-aligned, multiple of 8) from RAM `src` to window `off` through MMIO.
    fn copy_in(&self, off: u64, src: u64, len: u64) {
        let mut i = 0;
        while i < len {
            let mut w = [0u8; 8];
            for (k, b) in w.iter_mut().enumerate() {
                *b = rd(src + i + k as u64);
            }
            self.mmio.write_u64(off + i, u64::from_le_bytes(w));
            i += 8;
        }
    }
    /// Copies `len` bytes (8-aligned, multiple of 8) from window `off` to RAM `dst` through MMIO.
    fn copy_out(&self, off: u64, dst: u64, len: u64) {
        let mut i = 0;
        while i < len {
            let w = self.mmio.read_u64(off + i).to_le_bytes();
            for (k, b) in w.iter().enumerate() {
                wr(dst + i + k as u64, *b);
            }
            i += 8;
        }
    }
}

fn fill_ram(addr: u64, len: u64, seed: u8, base: u64) {
    for i in 0..len {
        wr(addr + i, pat(seed, addr + i - base));
    }
}

/// First differing byte of `len` bytes at `a` and `b`.
fn diff(a: u64, b: u64, len: u64) -> Option<(u64, u8, u8)> {
    (0..len).find_map(|i| {
        let (x, y) = (rd(a + i), rd(b + i));
        (x != y).then_some((i, x, y))
    })
}

/// Counts cases and prints their lines.
#[derive(Default)]
struct Tally {
    ok: u32,
    failed: u32,
    not_run: u32,
}

impl Tally {
    fn result(&mut self, name: &str, r: Result<(), ()>) {
        match r {
            Ok(()) => {
                self.ok += 1;
                println!("case {name} ok");
            }
            Err(()) => self.failed += 1,
        }
    }
    fn not_run(&mut self, name: &str, why: &str) {
        self.not_run += 1;
        println!("case {name} NOT RUN ({why})");
    }
    fn status(&self, mode: &str) -> i32 {
        println!(
            "emulate {mode}: {} ok, {} mismatched, {} not run",
            self.ok, self.failed, self.not_run
        );
        if self.failed > 0 {
            MISMATCH
        } else if self.not_run > 0 {
            UNSUPPORTED
        } else {
            0
        }
    }
}

/// Compares `len` bytes of the RAM run (`ram`) with the window run copied to RAM (`win`).
fn same(name: &str, what: &str, ram: u64, win: u64, len: u64) -> Result<(), ()> {
    match diff(ram, win, len) {
        None => Ok(()),
        Some((i, r, w)) => {
            println!(
                "case {name} MISMATCH {what}: byte {i:#x}: RAM run {r:#04x}, window run {w:#04x}"
            );
            Err(())
        }
    }
}

fn main(boot: &BootInfo, vcpu: u32) -> i32 {
    let mode = arg("mode").unwrap_or("moves");
    let Some(dev) = boot.find_device(DeviceKind::ScratchWindow) else {
        if vcpu == 0 {
            println!("emulate: no scratch window device (needs --scratch-window)");
        }
        return NO_DEVICE;
    };
    let w = Window { mmio: dev.mmio() };
    let control = dev.control_port().unwrap_or(port::SCRATCH_CONTROL);
    if mode == "count" {
        return count(boot, vcpu, &w);
    }
    if vcpu != 0 {
        return 0;
    }
    if w.mmio.size() < 512 << 10 {
        println!("emulate: the scratch window must be at least 512 KiB");
        return NO_DEVICE;
    }
    port::outl(control, 0);
    if port::inl(control) != 0 {
        println!("emulate: cannot switch the scratch window alias off");
        return MISMATCH;
    }
    println!(
        "emulate: mode={mode} window={:#x} (alias off: MMIO path)",
        w.mmio.base()
    );
    let mut t = Tally::default();
    match mode {
        "moves" => moves(&w, &mut t),
        "xsave" => xsave(&w, &mut t),
        "cmpxchg16b" => cmpxchg(&w, &mut t),
        "string" => string(&w, &mut t),
        other => {
            println!("emulate: bad mode `{other}` (moves, xsave, cmpxchg16b, count, string)");
            return BAD_ARG;
        }
    }
    t.status(mode)
}

// ---------------------------------------------------------------- moves

/// Initial YMM0..15 (512 bytes), the register dump of the RAM run and of the window run.
static YMM_INIT: Buf<4096> = Buf::new();
static YMM_RAM: Buf<4096> = Buf::new();
static YMM_WIN: Buf<4096> = Buf::new();
/// RAM side of the memory operand (two pages, so that an access can cross between them).
static MOVE_RAM: Buf<8192> = Buf::new();
/// The window's bytes after the window run, copied out.
static MOVE_WIN: Buf<8192> = Buf::new();

/// One instruction: loads/stores at `[m]`, YMM0..15 loaded from `init` first and stored to
/// `out` after.
type MoveFn = unsafe fn(m: u64, init: u64, out: u64);

macro_rules! move_fn {
    ($name:ident, $feat:literal, $ins:literal) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name(m: u64, init: u64, out: u64) {
            // SAFETY: the caller passes `m` valid for the access (RAM buffer or window), `init`
            // and `out` 512 bytes each; every YMM register is declared clobbered.
            unsafe {
                asm!(
                    "vmovdqu ymm0, [{i}]", "vmovdqu ymm1, [{i} + 32]",
                    "vmovdqu ymm2, [{i} + 64]", "vmovdqu ymm3, [{i} + 96]",
                    "vmovdqu ymm4, [{i} + 128]", "vmovdqu ymm5, [{i} + 160]",
                    "vmovdqu ymm6, [{i} + 192]", "vmovdqu ymm7, [{i} + 224]",
                    "vmovdqu ymm8, [{i} + 256]", "vmovdqu ymm9, [{i} + 288]",
                    "vmovdqu ymm10, [{i} + 320]", "vmovdqu ymm11, [{i} + 352]",
                    "vmovdqu ymm12, [{i} + 384]", "vmovdqu ymm13, [{i} + 416]",
                    "vmovdqu ymm14, [{i} + 448]", "vmovdqu ymm15, [{i} + 480]",
                    $ins,
                    "vmovdqu [{o}], ymm0", "vmovdqu [{o} + 32], ymm1",
                    "vmovdqu [{o} + 64], ymm2", "vmovdqu [{o} + 96], ymm3",
                    "vmovdqu [{o} + 128], ymm4", "vmovdqu [{o} + 160], ymm5",
                    "vmovdqu [{o} + 192], ymm6", "vmovdqu [{o} + 224], ymm7",
                    "vmovdqu [{o} + 256], ymm8", "vmovdqu [{o} + 288], ymm9",
                    "vmovdqu [{o} + 320], ymm10", "vmovdqu [{o} + 352], ymm11",
                    "vmovdqu [{o} + 384], ymm12", "vmovdqu [{o} + 416], ymm13",
                    "vmovdqu [{o} + 448], ymm14", "vmovdqu [{o} + 480], ymm15",
                    "vzeroupper",
                    m = in(reg) m,
                    i = in(reg) init,
                    o = in(reg) out,
                    out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                    out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                    out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                    out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                    options(nostack),
                )
            }
        }
    };
}

move_fn!(movups_l, "avx", "movups xmm1, [{m}]");
move_fn!(movups_s, "avx", "movups [{m}], xmm1");
move_fn!(movaps_l, "avx", "movaps xmm2, [{m}]");
move_fn!(movaps_s, "avx", "movaps [{m}], xmm2");
move_fn!(movupd_l, "avx", "movupd xmm3, [{m}]");
move_fn!(movupd_s, "avx", "movupd [{m}], xmm3");
move_fn!(movapd_l, "avx", "movapd xmm4, [{m}]");
move_fn!(movapd_s, "avx", "movapd [{m}], xmm4");
move_fn!(movdqu_l, "avx", "movdqu xmm5, [{m}]");
move_fn!(movdqu_s, "avx", "movdqu [{m}], xmm5");
move_fn!(movdqa_l, "avx", "movdqa xmm6, [{m}]");
move_fn!(movdqa_s, "avx", "movdqa [{m}], xmm6");
move_fn!(movntdq_s, "avx", "movntdq [{m}], xmm7");
move_fn!(movntps_s, "avx", "movntps [{m}], xmm8");
move_fn!(movntpd_s, "avx", "movntpd [{m}], xmm9");
move_fn!(movd_l, "avx", "movd xmm10, dword ptr [{m}]");
move_fn!(movd_s, "avx", "movd dword ptr [{m}], xmm10");
move_fn!(movq_l, "avx", "movq xmm11, qword ptr [{m}]");
move_fn!(movq_s, "avx", "movq qword ptr [{m}], xmm11");
move_fn!(movss_l, "avx", "movss xmm12, dword ptr [{m}]");
move_fn!(movss_s, "avx", "movss dword ptr [{m}], xmm12");
move_fn!(movsd_l, "avx", "movsd xmm13, qword ptr [{m}]");
move_fn!(movsd_s, "avx", "movsd qword ptr [{m}], xmm13");
move_fn!(movlps_l, "avx", "movlps xmm14, qword ptr [{m}]");
move_fn!(movlps_s, "avx", "movlps qword ptr [{m}], xmm14");
move_fn!(movhps_l, "avx", "movhps xmm15, qword ptr [{m}]");
move_fn!(movhps_s, "avx", "movhps qword ptr [{m}], xmm15");
move_fn!(movlpd_l, "avx", "movlpd xmm0, qword ptr [{m}]");
move_fn!(movlpd_s, "avx", "movlpd qword ptr [{m}], xmm0");
move_fn!(movhpd_l, "avx", "movhpd xmm1, qword ptr [{m}]");
move_fn!(movhpd_s, "avx", "movhpd qword ptr [{m}], xmm1");
move_fn!(movntdqa_l, "avx,sse4.1", "movntdqa xmm2, [{m}]");
move_fn!(vmovups_l128, "avx", "vmovups xmm3, [{m}]");
move_fn!(vmovups_s128, "avx", "vmovups [{m}], xmm3");
move_fn!(vmovups_l256, "avx", "vmovups ymm4, [{m}]");
move_fn!(vmovups_s256, "avx", "vmovups [{m}], ymm4");
move_fn!(vmovaps_l128, "avx", "vmovaps xmm5, [{m}]");
move_fn!(vmovaps_s128, "avx", "vmovaps [{m}], xmm5");
move_fn!(vmovaps_l256, "avx", "vmovaps ymm6, [{m}]");
move_fn!(vmovaps_s256, "avx", "vmovaps [{m}], ymm6");
move_fn!(vmovdqu_l128, "avx", "vmovdqu xmm7, [{m}]");
move_fn!(vmovdqu_s128, "avx", "vmovdqu [{m}], xmm7");
move_fn!(vmovdqu_l256, "avx", "vmovdqu ymm8, [{m}]");
move_fn!(vmovdqu_s256, "avx", "vmovdqu [{m}], ymm8");
move_fn!(vmovdqa_l128, "avx", "vmovdqa xmm9, [{m}]");
move_fn!(vmovdqa_s128, "avx", "vmovdqa [{m}], xmm9");
move_fn!(vmovdqa_l256, "avx", "vmovdqa ymm10, [{m}]");
move_fn!(vmovdqa_s256, "avx", "vmovdqa [{m}], ymm10");
move_fn!(vmovntdq_s128, "avx", "vmovntdq [{m}], xmm11");
move_fn!(vmovntdq_s256, "avx", "vmovntdq [{m}], ymm11");
move_fn!(vmovntps_s128, "avx", "vmovntps [{m}], xmm12");
move_fn!(vmovntps_s256, "avx", "vmovntps [{m}], ymm12");
move_fn!(vmovntdqa_l128, "avx", "vmovntdqa xmm13, [{m}]");
move_fn!(vmovntdqa_l256, "avx,avx2", "vmovntdqa ymm14, [{m}]");
move_fn!(vmovd_l, "avx", "vmovd xmm15, dword ptr [{m}]");
move_fn!(vmovd_s, "avx", "vmovd dword ptr [{m}], xmm15");
move_fn!(vmovq_l, "avx", "vmovq xmm0, qword ptr [{m}]");
move_fn!(vmovq_s, "avx", "vmovq qword ptr [{m}], xmm0");
move_fn!(vmovss_l, "avx", "vmovss xmm1, dword ptr [{m}]");
move_fn!(vmovss_s, "avx", "vmovss dword ptr [{m}], xmm1");
move_fn!(vmovsd_l, "avx", "vmovsd xmm2, qword ptr [{m}]");
move_fn!(vmovsd_s, "avx", "vmovsd qword ptr [{m}], xmm2");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Avx,
    Sse41,
    Avx2,
}

/// (name, function, access size, required alignment (1 = unaligned form), CPU feature).
const MOVES: &[(&str, MoveFn, u64, u64, Need)] = &[
    ("movups-load", movups_l, 16, 1, Need::Avx),
    ("movups-store", movups_s, 16, 1, Need::Avx),
    ("movaps-load", movaps_l, 16, 16, Need::Avx),
    ("movaps-store", movaps_s, 16, 16, Need::Avx),
    ("movupd-load", movupd_l, 16, 1, Need::Avx),
    ("movupd-store", movupd_s, 16, 1, Need::Avx),
    ("movapd-load", movapd_l, 16, 16, Need::Avx),
    ("movapd-store", movapd_s, 16, 16, Need::Avx),
    ("movdqu-load", movdqu_l, 16, 1, Need::Avx),
    ("movdqu-store", movdqu_s, 16, 1, Need::Avx),
    ("movdqa-load", movdqa_l, 16, 16, Need::Avx),
    ("movdqa-store", movdqa_s, 16, 16, Need::Avx),
    ("movntdq-store", movntdq_s, 16, 16, Need::Avx),
    ("movntps-store", movntps_s, 16, 16, Need::Avx),
    ("movntpd-store", movntpd_s, 16, 16, Need::Avx),
    ("movd-load", movd_l, 4, 1, Need::Avx),
    ("movd-store", movd_s, 4, 1, Need::Avx),
    ("movq-load", movq_l, 8, 1, Need::Avx),
    ("movq-store", movq_s, 8, 1, Need::Avx),
    ("movss-load", movss_l, 4, 1, Need::Avx),
    ("movss-store", movss_s, 4, 1, Need::Avx),
    ("movsd-load", movsd_l, 8, 1, Need::Avx),
    ("movsd-store", movsd_s, 8, 1, Need::Avx),
    ("movlps-load", movlps_l, 8, 1, Need::Avx),
    ("movlps-store", movlps_s, 8, 1, Need::Avx),
    ("movhps-load", movhps_l, 8, 1, Need::Avx),
    ("movhps-store", movhps_s, 8, 1, Need::Avx),
    ("movlpd-load", movlpd_l, 8, 1, Need::Avx),
    ("movlpd-store", movlpd_s, 8, 1, Need::Avx),
    ("movhpd-load", movhpd_l, 8, 1, Need::Avx),
    ("movhpd-store", movhpd_s, 8, 1, Need::Avx),
    ("movntdqa-load", movntdqa_l, 16, 16, Need::Sse41),
    ("vmovups-load-128", vmovups_l128, 16, 1, Need::Avx),
    ("vmovups-store-128", vmovups_s128, 16, 1, Need::Avx),
    ("vmovups-load-256", vmovups_l256, 32, 1, Need::Avx),
    ("vmovups-store-256", vmovups_s256, 32, 1, Need::Avx),
    ("vmovaps-load-128", vmovaps_l128, 16, 16, Need::Avx),
    ("vmovaps-store-128", vmovaps_s128, 16, 16, Need::Avx),
    ("vmovaps-load-256", vmovaps_l256, 32, 32, Need::Avx),
    ("vmovaps-store-256", vmovaps_s256, 32, 32, Need::Avx),
    ("vmovdqu-load-128", vmovdqu_l128, 16, 1, Need::Avx),
    ("vmovdqu-store-128", vmovdqu_s128, 16, 1, Need::Avx),
    ("vmovdqu-load-256", vmovdqu_l256, 32, 1, Need::Avx),
    ("vmovdqu-store-256", vmovdqu_s256, 32, 1, Need::Avx),
    ("vmovdqa-load-128", vmovdqa_l128, 16, 16, Need::Avx),
    ("vmovdqa-store-128", vmovdqa_s128, 16, 16, Need::Avx),
    ("vmovdqa-load-256", vmovdqa_l256, 32, 32, Need::Avx),
    ("vmovdqa-store-256", vmovdqa_s256, 32, 32, Need::Avx),
    ("vmovntdq-store-128", vmovntdq_s128, 16, 16, Need::Avx),
    ("vmovntdq-store-256", vmovntdq_s256, 32, 32, Need::Avx),
    ("vmovntps-store-128", vmovntps_s128, 16, 16, Need::Avx),
    ("vmovntps-store-256", vmovntps_s256, 32, 32, Need::Avx),
    ("vmovntdqa-load-128", vmovntdqa_l128, 16, 16, Need::Avx),
    ("vmovntdqa-load-256", vmovntdqa_l256, 32, 32, Need::Avx2),
    ("vmovd-load", vmovd_l, 4, 1, Need::Avx),
    ("vmovd-store", vmovd_s, 4, 1, Need::Avx),
    ("vmovq-load", vmovq_l, 8, 1, Need::Avx),
    ("vmovq-store", vmovq_s, 8, 1, Need::Avx),
    ("vmovss-load", vmovss_l, 4, 1, Need::Avx),
    ("vmovss-store", vmovss_s, 4, 1, Need::Avx),
    ("vmovsd-load", vmovsd_l, 8, 1, Need::Avx),
    ("vmovsd-store", vmovsd_s, 8, 1, Need::Avx),
];

/// Offsets (within the buffer's first page) of the accesses; `CROSS` is replaced by an offset
/// that makes the access cross into the second page.
const CROSS: u64 = u64::MAX;
const OFFSETS: [u64; 5] = [0x800, 0x801, 0x807, 0x80f, CROSS];
/// Bytes compared around an access: `[at - 64, at + 128)` rounded to 64.
const AROUND: u64 = 256;

fn moves(w: &Window, t: &mut Tally) {
    let avx = cpu::has_avx();
    let sse41 = cpuid(1, 0).ecx & (1 << 19) != 0;
    let avx2 = avx && cpuid(0, 0).eax >= 7 && cpuid(7, 0).ebx & (1 << 5) != 0;
    fill_ram(YMM_INIT.addr(), 512, 0x5c, 0);
    for &(name, f, size, align, need) in MOVES {
        let have = match need {
            Need::Avx => avx,
            Need::Sse41 => avx && sse41,
            Need::Avx2 => avx2,
        };
        if !have {
            let why = match need {
                Need::Avx => "the CPU lacks AVX",
                Need::Sse41 => "the CPU lacks SSE4.1 (or AVX, used to set the registers)",
                Need::Avx2 => "the CPU lacks AVX2",
            };
            t.not_run(name, why);
            continue;
        }
        let mut r = Ok(());
        for off in OFFSETS {
            let at = if off == CROSS { 4096 - size / 2 } else { off };
            if !at.is_multiple_of(align) {
                continue;
            }
            r = r.and_then(|()| move_once(w, name, f, at));
        }
        t.result(name, r);
    }
}

/// Runs `f` at offset `at` on RAM and on the window (both holding the same pattern) and
/// compares the bytes around and the YMM registers.
fn move_once(w: &Window, name: &str, f: MoveFn, at: u64) -> Result<(), ()> {
    let start = (at & !63) - 64;
    fill_ram(MOVE_RAM.addr() + start, AROUND, 0x21, MOVE_RAM.addr());
    w.fill(start, AROUND, 0x21, 0);
    // SAFETY: AVX (and the case's feature) checked by the caller; `at` is inside both 8 KiB
    // ranges with room for 32 bytes, aligned as the form needs; the dumps are 512 bytes.
    unsafe {
        f(MOVE_RAM.addr() + at, YMM_INIT.addr(), YMM_RAM.addr());
        f(w.addr(at), YMM_INIT.addr(), YMM_WIN.addr());
    }
    w.copy_out(start, MOVE_WIN.addr() + start, AROUND);
    same(
        name,
        "memory",
        MOVE_RAM.addr() + start,
        MOVE_WIN.addr() + start,
        AROUND,
    )
    .and_then(|()| same(name, "ymm0..15", YMM_RAM.addr(), YMM_WIN.addr(), 512))
    .inspect_err(|()| println!("case {name}   (access at offset {at:#x})"))
}

// ---------------------------------------------------------------- xsave

/// Save areas (4 KiB, 64-byte aligned): RAM run, window run copied out, images, dumps.
static XS_RAM: Buf<4096> = Buf::new();
static XS_WIN: Buf<4096> = Buf::new();
static XS_IMAGE: Buf<4096> = Buf::new();
static XS_DUMP_RAM: Buf<4096> = Buf::new();
static XS_DUMP_WIN: Buf<4096> = Buf::new();
/// Values the x87/SSE/AVX registers are set to.
static XS_REGS: Buf<4096> = Buf::new();

const MXCSR_SET: u32 = 0x3fa0;
const MXCSR_DEFAULT: u32 = 0x1f80;

/// A save instruction at `[m]` with RFBM `mask`, after setting x87 (three constants pushed,
/// a non-default control word), MXCSR and YMM0..15 (from `regs`); the state is put back to
/// the defaults after.
type SaveFn = unsafe fn(m: u64, mask: u64, regs: u64);

macro_rules! save_fn {
    ($name:ident, $ins:literal) => {
        #[target_feature(enable = "avx,xsave,xsaveopt,xsavec,fxsr")]
        unsafe fn $name(m: u64, mask: u64, regs: u64) {
            let mx = MXCSR_SET;
            let mxd = MXCSR_DEFAULT;
            let fcw: u16 = 0x027f;
            // SAFETY: `m` is a 64-byte aligned 4 KiB area (RAM or window), `regs` 512 readable
            // bytes; the x87 stack is emptied (FNINIT) and MXCSR restored before the end;
            // every vector register is declared clobbered.
            unsafe {
                asm!(
                    "fninit",
                    "fldcw [{fcw}]",
                    "fld1",
                    "fldpi",
                    "fldl2t",
                    "ldmxcsr [{mx}]",
                    "vmovdqu ymm0, [{r}]", "vmovdqu ymm1, [{r} + 32]",
                    "vmovdqu ymm2, [{r} + 64]", "vmovdqu ymm3, [{r} + 96]",
                    "vmovdqu ymm4, [{r} + 128]", "vmovdqu ymm5, [{r} + 160]",
                    "vmovdqu ymm6, [{r} + 192]", "vmovdqu ymm7, [{r} + 224]",
                    "vmovdqu ymm8, [{r} + 256]", "vmovdqu ymm9, [{r} + 288]",
                    "vmovdqu ymm10, [{r} + 320]", "vmovdqu ymm11, [{r} + 352]",
                    "vmovdqu ymm12, [{r} + 384]", "vmovdqu ymm13, [{r} + 416]",
                    "vmovdqu ymm14, [{r} + 448]", "vmovdqu ymm15, [{r} + 480]",
                    $ins,
                    "fninit",
                    "ldmxcsr [{mxd}]",
                    "vzeroupper",
                    m = in(reg) m,
                    r = in(reg) regs,
                    fcw = in(reg) &raw const fcw,
                    mx = in(reg) &raw const mx,
                    mxd = in(reg) &raw const mxd,
                    in("eax") mask as u32,
                    in("edx") (mask >> 32) as u32,
                    out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                    out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                    out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                    out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                    options(nostack),
                )
            }
        }
    };
}

save_fn!(do_xsave, "xsave64 [{m}]");
save_fn!(do_xsaveopt, "xsaveopt64 [{m}]");
save_fn!(do_xsavec, "xsavec64 [{m}]");
save_fn!(do_fxsave, "fxsave [{m}]");
save_fn!(do_fxsave64, "fxsave64 [{m}]");

/// A restore from `[m]` (after clobbering x87, MXCSR and YMM), then a native `xsave64` (RFBM
/// x87|SSE|AVX) of the restored state to `dump`, then the defaults back.
type RestoreFn = unsafe fn(m: u64, dump: u64);

macro_rules! restore_fn {
    ($name:ident, $ins:literal) => {
        #[target_feature(enable = "avx,xsave,fxsr")]
        unsafe fn $name(m: u64, dump: u64) {
            let mxd = MXCSR_DEFAULT;
            // SAFETY: `m` holds a valid image made by the matching save (RAM or window copy),
            // `dump` is a 64-byte aligned 4 KiB RAM area; FNINIT/LDMXCSR restore the defaults
            // the code around expects; vector registers are declared clobbered.
            unsafe {
                asm!(
                    "fninit",
                    "ldmxcsr [{mxd}]",
                    "vzeroall",
                    "mov eax, 7",
                    "xor edx, edx",
                    $ins,
                    "mov eax, 7",
                    "xor edx, edx",
                    "xsave64 [{d}]",
                    "fninit",
                    "ldmxcsr [{mxd}]",
                    "vzeroupper",
                    m = in(reg) m,
                    d = in(reg) dump,
                    mxd = in(reg) &raw const mxd,
                    out("eax") _,
                    out("edx") _,
                    out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                    out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                    out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                    out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                    options(nostack),
                )
            }
        }
    };
}

restore_fn!(do_xrstor, "xrstor64 [{m}]");
restore_fn!(do_fxrstor64, "fxrstor64 [{m}]");

fn xsave(w: &Window, t: &mut Tally) {
    let ecx1 = cpuid(1, 0).ecx;
    let xsave_ok = ecx1 & (1 << 26) != 0 && cpu::has_avx();
    let leaf = if cpuid(0, 0).eax >= 0xd {
        cpuid(0xd, 1).eax
    } else {
        0
    };
    let (opt, compact) = (leaf & 1 != 0, leaf & 2 != 0);
    if !xsave_ok || !opt || !compact {
        let mut missing = [""; 3];
        if !xsave_ok {
            missing[0] = "XSAVE/AVX ";
        }
        if !opt {
            missing[1] = "XSAVEOPT ";
        }
        if !compact {
            missing[2] = "XSAVEC ";
        }
        println!(
            "emulate xsave: the CPU lacks {}{}{}",
            missing[0], missing[1], missing[2]
        );
        t.not_run("xsave", "missing CPU features above");
        return;
    }
    fill_ram(XS_REGS.addr(), 512, 0x77, 0);
    const X87: u64 = 1;
    const SSE: u64 = 2;
    const AVX: u64 = 4;
    let saves: [(&str, SaveFn, u64); 11] = [
        ("xsave-x87-sse-avx", do_xsave, X87 | SSE | AVX),
        ("xsave-sse", do_xsave, SSE),
        ("xsave-avx", do_xsave, AVX),
        ("xsaveopt-x87-sse-avx", do_xsaveopt, X87 | SSE | AVX),
        ("xsaveopt-sse", do_xsaveopt, SSE),
        ("xsaveopt-avx", do_xsaveopt, AVX),
        ("xsavec-x87-sse-avx", do_xsavec, X87 | SSE | AVX),
        ("xsavec-sse", do_xsavec, SSE),
        ("xsavec-avx", do_xsavec, AVX),
        ("fxsave", do_fxsave, 0),
        ("fxsave64", do_fxsave64, 0),
    ];
    for (name, f, mask) in saves {
        fill_ram(XS_RAM.addr(), 4096, 0x3d, XS_RAM.addr());
        w.fill(0, 4096, 0x3d, 0);
        // SAFETY: features checked above; both areas are 4 KiB, 64-byte aligned (the window
        // base is page aligned).
        unsafe {
            f(XS_RAM.addr(), mask, XS_REGS.addr());
            f(w.addr(0), mask, XS_REGS.addr());
        }
        w.copy_out(0, XS_WIN.addr(), 4096);
        t.result(
            name,
            same(name, "save area", XS_RAM.addr(), XS_WIN.addr(), 4096),
        );
    }

    // Restores of one image from RAM and from the window.
    let restores: [(&str, SaveFn, u64, RestoreFn); 3] = [
        ("xrstor-standard", do_xsave, 7, do_xrstor),
        ("xrstor-compacted", do_xsavec, 7, do_xrstor),
        ("fxrstor64", do_fxsave64, 0, do_fxrstor64),
    ];
    for (name, save, mask, restore) in restores {
        fill_ram(XS_IMAGE.addr(), 4096, 0x11, XS_IMAGE.addr());
        zero_header(w, XS_IMAGE.addr(), false);
        // SAFETY: as above.
        unsafe { save(XS_IMAGE.addr(), mask, XS_REGS.addr()) };
        w.copy_in(0, XS_IMAGE.addr(), 4096);
        fill_ram(XS_DUMP_RAM.addr(), 4096, 0x4e, XS_DUMP_RAM.addr());
        fill_ram(XS_DUMP_WIN.addr(), 4096, 0x4e, XS_DUMP_WIN.addr());
        // SAFETY: the image is valid for the restore in both places; the dumps are RAM.
        unsafe {
            restore(XS_IMAGE.addr(), XS_DUMP_RAM.addr());
            restore(w.addr(0), XS_DUMP_WIN.addr());
        }
        let r = same(
            name,
            "state after restore",
            XS_DUMP_RAM.addr(),
            XS_DUMP_WIN.addr(),
            4096,
        )
        .and_then(|()| restored_the_registers(name, XS_DUMP_WIN.addr(), mask != 0));
        t.result(name, r);
    }

    // Round trips on the window: save there, restore from there.
    let trips: [(&str, SaveFn, u64, RestoreFn); 2] = [
        ("xsavec-xrstor-window-round-trip", do_xsavec, 7, do_xrstor),
        (
            "fxsave64-fxrstor64-window-round-trip",
            do_fxsave64,
            0,
            do_fxrstor64,
        ),
    ];
    for (name, save, mask, restore) in trips {
        fill_ram(XS_IMAGE.addr(), 4096, 0x11, XS_IMAGE.addr());
        w.fill(0, 4096, 0x11, 0);
        zero_header(w, XS_IMAGE.addr(), true);
        fill_ram(XS_DUMP_RAM.addr(), 4096, 0x4e, XS_DUMP_RAM.addr());
        fill_ram(XS_DUMP_WIN.addr(), 4096, 0x4e, XS_DUMP_WIN.addr());
        // SAFETY: as above: the same sequence on RAM and on the window.
        unsafe {
            save(XS_IMAGE.addr(), mask, XS_REGS.addr());
            restore(XS_IMAGE.addr(), XS_DUMP_RAM.addr());
            save(w.addr(0), mask, XS_REGS.addr());
            restore(w.addr(0), XS_DUMP_WIN.addr());
        }
        let r = same(
            name,
            "state after restore",
            XS_DUMP_RAM.addr(),
            XS_DUMP_WIN.addr(),
            4096,
        )
        .and_then(|()| restored_the_registers(name, XS_DUMP_WIN.addr(), mask != 0));
        t.result(name, r);
    }
}

/// Zeroes the XSAVE header (bytes 512..576) of the RAM image at `ram` and, with `window`, of
/// the window's image: XSAVE writes only XSTATE_BV there, and XRSTOR of the standard form
/// raises #GP unless XCOMP_BV and the reserved bytes are 0 (an OS zeroes its save areas once).
fn zero_header(w: &Window, ram: u64, window: bool) {
    for i in 0..64 {
        wr(ram + 512 + i, 0);
    }
    if window {
        for i in 0..8 {
            w.mmio.write_u64(512 + 8 * i, 0);
        }
    }
}

/// Checks that a standard-format dump holds the registers `save_fn` set: XMM0..15 (legacy area
/// offset 160), with `avx` YMM_Hi128 (offset 576; FXRSTOR leaves the upper halves alone), and
/// MXCSR (offset 24).
fn restored_the_registers(name: &str, dump: u64, avx: bool) -> Result<(), ()> {
    for i in 0..16u64 {
        let lo = diff(dump + 160 + 16 * i, XS_REGS.addr() + 32 * i, 16);
        let hi = diff(dump + 576 + 16 * i, XS_REGS.addr() + 32 * i + 16, 16);
        if lo.is_some() || (avx && hi.is_some()) {
            println!("case {name} MISMATCH: ymm{i} was not restored");
            return Err(());
        }
    }
    let mxcsr = u32::from_le_bytes([rd(dump + 24), rd(dump + 25), rd(dump + 26), rd(dump + 27)]);
    if mxcsr != MXCSR_SET {
        println!("case {name} MISMATCH: MXCSR {mxcsr:#x} after restore, expected {MXCSR_SET:#x}");
        return Err(());
    }
    Ok(())
}

// ---------------------------------------------------------------- cmpxchg16b

static CX_RAM: Buf<4096> = Buf::new();
static CX_WIN: Buf<4096> = Buf::new();

/// Result registers: RAX, RDX, RFLAGS status bits (all set by `cmp rax, rax` just before, so
/// any change but ZF's shows).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct CxRegs {
    rax: u64,
    rdx: u64,
    flags: u64,
}

/// Status flags (CF PF AF ZF SF OF).
const STATUS_FLAGS: u64 = 0x8d5;

fn cx16(m: u64, locked: bool, expect: (u64, u64), new: (u64, u64)) -> CxRegs {
    let (mut rax, mut rdx) = expect;
    let mut b = new.0;
    let flags: u64;
    // SAFETY: `m` is 16-byte aligned and valid (RAM buffer or window); RBX (reserved by LLVM)
    // is swapped in and back; the push is popped at once.
    unsafe {
        if locked {
            asm!(
                // Known flags before: ZF=1, PF=1, the others 0.
                "cmp rax, rax",
                "xchg {b}, rbx",
                "lock cmpxchg16b xmmword ptr [{m}]",
                "xchg {b}, rbx",
                "pushfq",
                "pop {f}",
                m = in(reg) m,
                b = inout(reg) b,
                f = out(reg) flags,
                inout("rax") rax,
                inout("rdx") rdx,
                in("rcx") new.1,
            )
        } else {
            asm!(
                // Known flags before: ZF=1, PF=1, the others 0.
                "cmp rax, rax",
                "xchg {b}, rbx",
                "cmpxchg16b xmmword ptr [{m}]",
                "xchg {b}, rbx",
                "pushfq",
                "pop {f}",
                m = in(reg) m,
                b = inout(reg) b,
                f = out(reg) flags,
                inout("rax") rax,
                inout("rdx") rdx,
                in("rcx") new.1,
            )
        }
    }
    let _ = b;
    CxRegs {
        rax,
        rdx,
        flags: flags & STATUS_FLAGS,
    }
}

fn cx8(m: u64, locked: bool, expect: u64, new: u64) -> CxRegs {
    let mut rax = expect & 0xffff_ffff;
    let mut rdx = expect >> 32;
    let mut b = new & 0xffff_ffff;
    let flags: u64;
    // SAFETY: as in `cx16`; 8-byte access.
    unsafe {
        if locked {
            asm!(
                // Known flags before: ZF=1, PF=1, the others 0.
                "cmp rax, rax",
                "xchg {b}, rbx",
                "lock cmpxchg8b qword ptr [{m}]",
                "xchg {b}, rbx",
                "pushfq",
                "pop {f}",
                m = in(reg) m,
                b = inout(reg) b,
                f = out(reg) flags,
                inout("rax") rax,
                inout("rdx") rdx,
                in("rcx") new >> 32,
            )
        } else {
            asm!(
                // Known flags before: ZF=1, PF=1, the others 0.
                "cmp rax, rax",
                "xchg {b}, rbx",
                "cmpxchg8b qword ptr [{m}]",
                "xchg {b}, rbx",
                "pushfq",
                "pop {f}",
                m = in(reg) m,
                b = inout(reg) b,
                f = out(reg) flags,
                inout("rax") rax,
                inout("rdx") rdx,
                in("rcx") new >> 32,
            )
        }
    }
    let _ = b;
    CxRegs {
        rax,
        rdx,
        flags: flags & STATUS_FLAGS,
    }
}

fn cmpxchg(w: &Window, t: &mut Tally) {
    if cpuid(1, 0).ecx & (1 << 13) == 0 {
        t.not_run("cmpxchg16b", "the CPU lacks CMPXCHG16B (CPUID.1:ECX[13])");
        return;
    }
    const OFF: u64 = 0x140;
    let word = |addr: u64| {
        let mut v = 0u64;
        for k in 0..8 {
            v |= u64::from(rd(addr + k)) << (8 * k);
        }
        v
    };
    let cases: [(&str, bool, bool, bool); 8] = [
        // (name, 16 bytes, locked, success)
        ("cmpxchg16b-success", true, false, true),
        ("cmpxchg16b-failure", true, false, false),
        ("lock-cmpxchg16b-success", true, true, true),
        ("lock-cmpxchg16b-failure", true, true, false),
        ("cmpxchg8b-success", false, false, true),
        ("cmpxchg8b-failure", false, false, false),
        ("lock-cmpxchg8b-success", false, true, true),
        ("lock-cmpxchg8b-failure", false, true, false),
    ];
    for (name, wide, locked, success) in cases {
        fill_ram(CX_RAM.addr(), 1024, 0x60, CX_RAM.addr());
        w.fill(0, 1024, 0x60, 0);
        let cur = (word(CX_RAM.addr() + OFF), word(CX_RAM.addr() + OFF + 8));
        let expect = if success { cur } else { (cur.0 ^ 0x100, cur.1) };
        let new = (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        let (r, wr) = if wide {
            (
                cx16(CX_RAM.addr() + OFF, locked, expect, new),
                cx16(w.addr(OFF), locked, expect, new),
            )
        } else {
            (
                cx8(CX_RAM.addr() + OFF, locked, expect.0, new.0),
                cx8(w.addr(OFF), locked, expect.0, new.0),
            )
        };
        w.copy_out(0, CX_WIN.addr(), 1024);
        let zf = r.flags & (1 << 6) != 0;
        let res = if r != wr {
            println!("case {name} MISMATCH registers: RAM run {r:x?}, window run {wr:x?}");
            Err(())
        } else if zf != success {
            println!("case {name} MISMATCH: ZF={zf} on RAM, expected {success}");
            Err(())
        } else {
            same(name, "memory", CX_RAM.addr(), CX_WIN.addr(), 1024)
        };
        t.result(name, res);
    }
}

// ---------------------------------------------------------------- count

static COUNT_START: Barrier = Barrier::new();
static COUNT_END: Barrier = Barrier::new();
/// Start value of the 128-bit counter: the low half carries into the high half after 256.
const COUNT_INIT: (u64, u64) = (u64::MAX - 255, 7);

fn count(boot: &BootInfo, vcpu: u32, w: &Window) -> i32 {
    let n = arg_u64("n", 2000);
    let vcpus = boot.vcpu_count();
    if vcpus < 2 {
        println!("emulate count: needs at least 2 vCPUs");
        return BAD_ARG;
    }
    if cpuid(1, 0).ecx & (1 << 13) == 0 {
        println!("emulate count: the CPU lacks CMPXCHG16B (CPUID.1:ECX[13])");
        return UNSUPPORTED;
    }
    const OFF: u64 = 0x1000;
    if vcpu == 0 {
        let control = port::SCRATCH_CONTROL;
        port::outl(control, 0);
        w.mmio.write_u64(OFF, COUNT_INIT.0);
        w.mmio.write_u64(OFF + 8, COUNT_INIT.1);
        println!("emulate count: {vcpus} vCPUs x {n} LOCK CMPXCHG16B increments on the window");
    }
    COUNT_START.wait(vcpus);
    let m = w.addr(OFF);
    let mut retries: u64 = 0;
    for _ in 0..n {
        // SAFETY: `m` is the 16-byte aligned window word; RBX swapped in and back. The loop
        // retries with the value CMPXCHG16B returned until its increment lands.
        unsafe {
            asm!(
                "xor eax, eax",
                "xor edx, edx",
                "2:",
                "mov {b}, rax",
                "mov rcx, rdx",
                "add {b}, 1",
                "adc rcx, 0",
                "xchg {b}, rbx",
                "lock cmpxchg16b xmmword ptr [{m}]",
                "xchg {b}, rbx",
                "jz 3f",
                "inc {r}",
                "jmp 2b",
                "3:",
                m = in(reg) m,
                b = out(reg) _,
                r = inout(reg) retries,
                out("rax") _,
                out("rdx") _,
                out("rcx") _,
            )
        }
    }
    COUNT_END.wait(vcpus);
    if vcpu != 0 {
        return 0;
    }
    let lo = w.mmio.read_u64(OFF);
    let hi = w.mmio.read_u64(OFF + 8);
    let total = u128::from(vcpus) * u128::from(n);
    let want = ((u128::from(COUNT_INIT.1) << 64) | u128::from(COUNT_INIT.0)) + total;
    let got = (u128::from(hi) << 64) | u128::from(lo);
    println!("emulate count: vCPU 0 retried {retries} times");
    if got != want {
        println!(
            "case count MISMATCH: counter advanced by {}, expected {total} ({vcpus} x {n})",
            got.wrapping_sub(want - total)
        );
        return MISMATCH;
    }
    println!("case count ok ({total} increments, 128-bit carry included)");
    0
}

// ---------------------------------------------------------------- string

const STR_LENS: [u64; 9] = [0, 1, 7, 8, 63, 4095, 4096, 4097, 65539];
const STR_SPAN: u64 = 72 << 10;
/// Offsets of source and destination in their buffers (and window areas).
const SRC_OFF: u64 = 0x80 + 3;
const DST_OFF: u64 = 0x100 + 5;
/// Window areas: source at 0, destination at 128 KiB.
const WIN_SRC: u64 = 0;
const WIN_DST: u64 = 128 << 10;

static STR_SRC: Buf<{ 72 << 10 }> = Buf::new();
static STR_REF: Buf<{ 72 << 10 }> = Buf::new();
static STR_DST: Buf<{ 72 << 10 }> = Buf::new();
static STR_OUT: Buf<{ 72 << 10 }> = Buf::new();

#[derive(Clone, Copy)]
enum Op {
    RepMovsb,
    RepMovsq,
    RepStosb,
    RepStosq,
    Movsb,
}

/// Runs `op` with RSI = `src`, RDI = `dst`, RCX = `count`, DF = `down`; returns (RSI, RDI, RCX).
fn string_op(op: Op, src: u64, dst: u64, count: u64, down: bool) -> (u64, u64, u64) {
    let (mut si, mut di, mut cx) = (src, dst, count);
    let df = u64::from(down);
    // SAFETY: the caller passes ranges that hold the whole operation in either direction; DF
    // is set only inside the block and cleared before it ends.
    unsafe {
        match op {
            Op::RepMovsb => asm!(
                "test {df}, {df}", "jz 2f", "std", "2:", "rep movsb", "cld",
                df = in(reg) df, inout("rsi") si, inout("rdi") di, inout("rcx") cx,
                options(nostack),
            ),
            Op::RepMovsq => asm!(
                "test {df}, {df}", "jz 2f", "std", "2:", "rep movsq", "cld",
                df = in(reg) df, inout("rsi") si, inout("rdi") di, inout("rcx") cx,
                options(nostack),
            ),
            Op::RepStosb => asm!(
                "test {df}, {df}", "jz 2f", "std", "2:", "rep stosb", "cld",
                df = in(reg) df, in("al") 0x5au8, inout("rdi") di, inout("rcx") cx,
                options(nostack),
            ),
            Op::RepStosq => asm!(
                "test {df}, {df}", "jz 2f", "std", "2:", "rep stosq", "cld",
                df = in(reg) df, in("rax") 0x1122_3344_5566_7788u64, inout("rdi") di,
                inout("rcx") cx, options(nostack),
            ),
            Op::Movsb => asm!(
                "test {df}, {df}", "jz 2f", "std", "2:", "movsb", "cld",
                df = in(reg) df, inout("rsi") si, inout("rdi") di, inout("rcx") cx,
                options(nostack),
            ),
        }
    }
    (si, di, cx)
}

fn string(w: &Window, t: &mut Tally) {
    let ops = [
        ("rep-movsb", Op::RepMovsb, 1, true),
        ("rep-movsq", Op::RepMovsq, 8, true),
        ("rep-stosb", Op::RepStosb, 1, false),
        ("rep-stosq", Op::RepStosq, 8, false),
        ("movsb", Op::Movsb, 1, true),
    ];
    // Paths: (name, source in window, destination in window).
    let paths = [
        ("ram-to-window", false, true),
        ("window-to-ram", true, false),
        ("window-to-window", true, true),
    ];
    fill_ram(STR_SRC.addr(), STR_SPAN, 0x0b, STR_SRC.addr());
    w.fill(WIN_SRC, STR_SPAN, 0x0b, WIN_SRC);
    for (opname, op, elem, has_src) in ops {
        for down in [false, true] {
            for (pname, src_win, dst_win) in paths {
                if !has_src && !dst_win {
                    continue;
                }
                let pname = if has_src { pname } else { "window" };
                if !has_src && src_win && dst_win {
                    continue;
                }
                let df = if down { "df1" } else { "df0" };
                let lens: &[u64] = if matches!(op, Op::Movsb) {
                    &[1]
                } else {
                    &STR_LENS
                };
                let mut r = Ok(());
                for &len in lens {
                    r = r.and_then(|()| {
                        string_once(w, op, elem, len, down, src_win, dst_win).inspect_err(|()| {
                            println!("case {opname}-{df}-{pname}   (length {len})")
                        })
                    });
                }
                // Cases print as `<op>-<df>-<path>`.
                let mut name = [0u8; 64];
                let mut n = 0;
                for part in [opname, "-", df, "-", pname] {
                    name[n..n + part.len()].copy_from_slice(part.as_bytes());
                    n += part.len();
                }
                let name = core::str::from_utf8(&name[..n]).unwrap_or("?");
                if let Err(()) = r {
                    println!("case {name} MISMATCH (see above)");
                }
                t.result(name, r);
            }
        }
    }
}

/// One operation of `len` bytes (`len.div_ceil(elem)` elements) RAM→RAM and along the path;
/// compares the destination area and RSI/RDI/RCX (relative to their buffers).
fn string_once(
    w: &Window,
    op: Op,
    elem: u64,
    len: u64,
    down: bool,
    src_win: bool,
    dst_win: bool,
) -> Result<(), ()> {
    let count = if matches!(op, Op::Movsb) {
        1
    } else {
        len.div_ceil(elem)
    };
    let bytes = count * elem;
    let area = (DST_OFF + bytes + 64).next_multiple_of(8);
    // With DF = 1 the first element is the last of the range.
    let first = if down && bytes > 0 { bytes - elem } else { 0 };
    fill_ram(STR_REF.addr(), area, 0xd7, STR_REF.addr());
    let (rs, rd_, rc) = string_op(
        op,
        STR_SRC.addr() + SRC_OFF + first,
        STR_REF.addr() + DST_OFF + first,
        count,
        down,
    );
    let (src_base, dst_base) = (
        if src_win {
            w.addr(WIN_SRC)
        } else {
            STR_SRC.addr()
        },
        if dst_win {
            w.addr(WIN_DST)
        } else {
            STR_DST.addr()
        },
    );
    if dst_win {
        w.fill(WIN_DST, area, 0xd7, WIN_DST);
    } else {
        fill_ram(STR_DST.addr(), area, 0xd7, STR_DST.addr());
    }
    let (ts, td, tc) = string_op(
        op,
        src_base + SRC_OFF + first,
        dst_base + DST_OFF + first,
        count,
        down,
    );
    let out = if dst_win {
        w.copy_out(WIN_DST, STR_OUT.addr(), area);
        STR_OUT.addr()
    } else {
        STR_DST.addr()
    };
    let regs_ram = (
        rs.wrapping_sub(STR_SRC.addr()),
        rd_.wrapping_sub(STR_REF.addr()),
        rc,
    );
    let regs_path = (ts.wrapping_sub(src_base), td.wrapping_sub(dst_base), tc);
    let has_src = matches!(op, Op::RepMovsb | Op::RepMovsq | Op::Movsb);
    let regs_ram = if has_src {
        regs_ram
    } else {
        (0, regs_ram.1, regs_ram.2)
    };
    let regs_path = if has_src {
        regs_path
    } else {
        (0, regs_path.1, regs_path.2)
    };
    if regs_ram != regs_path {
        println!(
            "string MISMATCH registers (rsi, rdi, rcx relative to their buffers): RAM {regs_ram:x?}, path {regs_path:x?}"
        );
        return Err(());
    }
    match diff(STR_REF.addr(), out, area) {
        None => Ok(()),
        Some((i, r, p)) => {
            println!("string MISMATCH destination byte {i:#x}: RAM→RAM {r:#04x}, path {p:#04x}");
            Err(())
        }
    }
}
