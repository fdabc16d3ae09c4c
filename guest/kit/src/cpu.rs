//! CPU instructions the test programs need: TSC, CPUID, XSAVEC, AVX loads and stores (single
//! and looped), `rep movsb`/`rep stosb`.

use core::arch::asm;

/// Reads the time-stamp counter (`rdtsc`; not ordered against surrounding instructions).
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only writes EDX:EAX; the guest runs with CR4.TSD clear (it is allowed at
    // CPL3).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    u64::from(lo) | (u64::from(hi) << 32)
}

/// Reads the time-stamp counter after every earlier instruction completed (`lfence; rdtsc`).
#[inline]
pub fn rdtsc_ordered() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: as in `rdtsc`; LFENCE has no effect besides ordering. Not `nomem`, so the
    // compiler does not move memory accesses across it either.
    unsafe {
        asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nostack, preserves_flags))
    }
    u64::from(lo) | (u64::from(hi) << 32)
}

/// Converts TSC cycles to nanoseconds with the boot info's `tsc_khz`; `None` when cxlvm did not
/// report the TSC frequency (or before the runtime checked the boot info).
pub fn tsc_to_ns(cycles: u64) -> Option<u64> {
    let khz = crate::boot::boot_info()?.tsc_khz();
    if khz == 0 {
        return None;
    }
    let ns = u128::from(cycles) * 1_000_000 / u128::from(khz);
    Some(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// Result of [`cpuid`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpuid {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Executes CPUID for `leaf` (EAX) and `subleaf` (ECX). Every CPUID exits to KVM.
#[inline]
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: CPUID is allowed at any privilege level and only writes EAX..EDX. RBX is reserved
    // by LLVM, so it is saved in a scratch register and swapped back.
    unsafe {
        asm!(
            "mov {save:r}, rbx",
            "cpuid",
            "xchg {save:r}, rbx",
            save = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        )
    }
    Cpuid { eax, ebx, ecx, edx }
}

/// Reads extended control register `xcr` (`xgetbv`; XCR0 = 0 holds the enabled state
/// components). The guest runs with CR4.OSXSAVE set, so this is allowed at CPL3.
#[inline]
pub fn xgetbv(xcr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV only writes EDX:EAX; CR4.OSXSAVE is set (guest ABI). An unsupported `xcr`
    // raises #GP, which ends the run (no IDT) rather than corrupting anything.
    unsafe {
        asm!("xgetbv", in("ecx") xcr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    }
    u64::from(lo) | (u64::from(hi) << 32)
}

/// XSAVE state components.
pub mod xstate {
    /// x87 state.
    pub const X87: u64 = 1 << 0;
    /// SSE state (XMM registers, MXCSR).
    pub const SSE: u64 = 1 << 1;
    /// AVX state (upper halves of YMM registers).
    pub const AVX: u64 = 1 << 2;
}

/// Whether the CPU supports XSAVEC (CPUID.(EAX=0DH,ECX=1):EAX[1]).
pub fn has_xsavec() -> bool {
    cpuid(0, 0).eax >= 0xd && cpuid(1, 0).ecx & (1 << 26) != 0 && cpuid(0xd, 1).eax & (1 << 1) != 0
}

/// Whether AVX can be used: CPUID.1:ECX.AVX and .OSXSAVE, and XCR0 enables SSE and AVX state.
pub fn has_avx() -> bool {
    let ecx = cpuid(1, 0).ecx;
    ecx & (1 << 28) != 0
        && ecx & (1 << 27) != 0
        && xgetbv(0) & (xstate::SSE | xstate::AVX) == xstate::SSE | xstate::AVX
}

/// Size in bytes of the XSAVEC area for the components in `mask` (and the current XCR0), from
/// CPUID leaf 0xd; `None` when CPUID does not describe a requested component.
pub fn xsavec_size(mask: u64) -> Option<u64> {
    // Legacy region (512) and XSAVE header (64); components 2.. follow, compacted.
    let mut size: u64 = 512 + 64;
    for i in 2..63 {
        if mask & (1 << i) == 0 {
            continue;
        }
        let leaf = cpuid(0xd, i);
        if leaf.eax == 0 {
            return None;
        }
        if leaf.ecx & (1 << 1) != 0 {
            size = size.next_multiple_of(64);
        }
        size += u64::from(leaf.eax);
    }
    Some(size)
}

/// `xsavec [dst]` with requested-feature bitmap `mask` (EDX:EAX): saves the processor state
/// components in `mask` (and enabled in XCR0) to `dst` in compacted format.
///
/// # Safety
/// `dst` must be valid for writes of the whole area ([`xsavec_size`]), e.g. a range from the
/// device table, or memory the caller owns. The CPU must support XSAVEC ([`has_xsavec`]).
///
/// # Panics
/// When `dst` is not 64-byte aligned (XSAVEC would raise #GP).
#[inline]
pub unsafe fn xsavec(dst: *mut u8, mask: u64) {
    assert!(
        dst.addr().is_multiple_of(64),
        "xsavec destination {dst:p} is not 64-byte aligned"
    );
    // SAFETY: the caller guarantees `dst` is aligned and writable for the save area; XSAVEC
    // only reads processor state and writes that area.
    unsafe {
        asm!(
            "xsavec [{dst}]",
            dst = in(reg) dst,
            in("eax") mask as u32,
            in("edx") (mask >> 32) as u32,
            options(nostack, preserves_flags),
        )
    }
}

/// Stores 32 bytes at `dst` with one AVX store (`vmovdqu [dst], ymm0`), loading YMM0 from
/// `data` first.
///
/// # Safety
/// `dst` must be valid for a 32-byte write (no alignment needed) and AVX usable ([`has_avx`]).
#[inline]
#[target_feature(enable = "avx")]
pub unsafe fn avx_store32(dst: *mut u8, data: &[u8; 32]) {
    // SAFETY: `data` is 32 readable bytes; the caller guarantees `dst` and AVX; YMM0 is
    // declared clobbered.
    unsafe {
        asm!(
            "vmovdqu ymm0, ymmword ptr [{src}]",
            "vmovdqu ymmword ptr [{dst}], ymm0",
            src = in(reg) data.as_ptr(),
            dst = in(reg) dst,
            out("ymm0") _,
            options(nostack, preserves_flags),
        )
    }
}

/// Loads 32 bytes from `src` with one AVX load (`vmovdqu ymm0, [src]`).
///
/// # Safety
/// `src` must be valid for a 32-byte read (no alignment needed) and AVX usable ([`has_avx`]).
#[inline]
#[target_feature(enable = "avx")]
pub unsafe fn avx_load32(src: *const u8) -> [u8; 32] {
    let mut out = [0u8; 32];
    // SAFETY: the caller guarantees `src` and AVX; `out` is 32 writable bytes; YMM0 is
    // declared clobbered.
    unsafe {
        asm!(
            "vmovdqu ymm0, ymmword ptr [{src}]",
            "vmovdqu ymmword ptr [{dst}], ymm0",
            src = in(reg) src,
            dst = in(reg) out.as_mut_ptr(),
            out("ymm0") _,
            options(nostack, preserves_flags),
        )
    }
    out
}

/// Fills `len` bytes at `dst` with 32-byte AVX stores (`vmovdqu [dst], ymm0` in a loop), each
/// storing `data`; then `vzeroupper`. For bandwidth measurements: one store per 32 bytes, no
/// call per store.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes (no alignment needed), `len` a multiple of 32,
/// and AVX usable ([`has_avx`]).
///
/// # Panics
/// When `len` is not a multiple of 32.
#[inline]
#[target_feature(enable = "avx")]
pub unsafe fn avx_fill32(dst: *mut u8, len: usize, data: &[u8; 32]) {
    assert!(
        len.is_multiple_of(32),
        "avx_fill32 length {len} is not a multiple of 32"
    );
    // SAFETY: `data` is 32 readable bytes; the caller guarantees `dst..dst + len` and AVX. The
    // loop stores exactly `len / 32` times forward from `dst`; `vzeroupper` and the YMM
    // registers are covered by clobbering the C ABI's caller-saved registers.
    unsafe {
        asm!(
            "vmovdqu ymm0, ymmword ptr [rsi]",
            "test rcx, rcx",
            "jz 3f",
            "2:",
            "vmovdqu ymmword ptr [rdi], ymm0",
            "add rdi, 32",
            "sub rcx, 32",
            "jnz 2b",
            "3:",
            "vzeroupper",
            inout("rdi") dst => _,
            inout("rcx") len => _,
            in("rsi") data.as_ptr(),
            clobber_abi("C"),
            options(nostack),
        )
    }
}

/// Reads `len` bytes at `src` with 32-byte AVX loads (`vmovdqu ymm0, [src]` in a loop), then
/// `vzeroupper`; returns the last 32 bytes loaded (zeros when `len` is 0). For bandwidth
/// measurements: one load per 32 bytes, no call per load.
///
/// # Safety
/// `src` must be valid for reads of `len` bytes (no alignment needed), `len` a multiple of 32,
/// and AVX usable ([`has_avx`]).
///
/// # Panics
/// When `len` is not a multiple of 32.
#[inline]
#[target_feature(enable = "avx")]
pub unsafe fn avx_read32(src: *const u8, len: usize) -> [u8; 32] {
    assert!(
        len.is_multiple_of(32),
        "avx_read32 length {len} is not a multiple of 32"
    );
    let mut out = [0u8; 32];
    // SAFETY: the caller guarantees `src..src + len` and AVX; the loop loads exactly `len / 32`
    // times forward from `src`; `out` is 32 writable bytes; `vzeroupper` and the YMM registers
    // are covered by clobbering the C ABI's caller-saved registers.
    unsafe {
        asm!(
            "test rcx, rcx",
            "jz 3f",
            "2:",
            "vmovdqu ymm0, ymmword ptr [rsi]",
            "add rsi, 32",
            "sub rcx, 32",
            "jnz 2b",
            "vmovdqu ymmword ptr [rdi], ymm0",
            "3:",
            "vzeroupper",
            inout("rsi") src => _,
            inout("rcx") len => _,
            in("rdi") out.as_mut_ptr(),
            clobber_abi("C"),
            options(nostack),
        )
    }
    out
}

/// Copies `len` bytes from `src` to `dst` with `rep movsb` (forward).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes; if they overlap, `dst`
/// must not lie inside `src + 1 .. src + len` (a forward copy).
#[inline]
pub unsafe fn rep_movsb(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller guarantees both ranges; DF is clear (ABI and Rust asm rules), so the
    // copy runs forward. RDI, RSI and RCX are modified and declared so.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        )
    }
}

/// Fills `len` bytes at `dst` with `value` using `rep stosb`.
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes.
#[inline]
pub unsafe fn rep_stosb(dst: *mut u8, value: u8, len: usize) {
    // SAFETY: the caller guarantees the range; DF is clear, so the fill runs forward.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            in("al") value,
            options(nostack, preserves_flags),
        )
    }
}
