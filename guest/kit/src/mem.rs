//! The C memory functions that compiled Rust code calls (`core` relies on them and there is no
//! libc). They are string instructions in inline asm, so the compiler cannot turn their bodies
//! back into calls to themselves.

use core::arch::asm;

use crate::cpu::{rep_movsb, rep_stosb};

/// # Safety
/// C `memcpy`: `src` readable and `dst` writable for `n` bytes, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees valid, non-overlapping ranges.
    unsafe { rep_movsb(dst, src, n) };
    dst
}

/// # Safety
/// C `memmove`: `src` readable and `dst` writable for `n` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if n == 0 {
        return dst;
    }
    let (d, s) = (dst.addr(), src.addr());
    if d <= s || d >= s + n {
        // SAFETY: the caller guarantees the ranges; a forward copy is correct when `dst` is
        // below `src` or past its end.
        unsafe { rep_movsb(dst, src, n) };
    } else {
        // `dst` lies inside `src`'s range: copy backwards, from the last byte down.
        // SAFETY: the caller guarantees the ranges; RSI/RDI start at the last byte of each and
        // RCX = n, so the backward copy stays inside them. DF is set only for this instruction
        // and cleared again before the asm ends, as Rust requires.
        unsafe {
            asm!(
                "std",
                "rep movsb",
                "cld",
                inout("rcx") n => _,
                inout("rdi") dst.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack, preserves_flags),
            )
        }
    }
    dst
}

/// # Safety
/// C `memset`: `dst` writable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range.
    unsafe { rep_stosb(dst, c as u8, n) };
    dst
}

/// # Safety
/// C `memcmp`: `a` and `b` readable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let (end_a, end_b): (*const u8, *const u8);
    // SAFETY: the caller guarantees both ranges. `repe cmpsb` compares [RSI] with [RDI] and
    // stops after the first differing byte or after n bytes, leaving RSI/RDI one past the last
    // byte it compared; it only reads memory.
    unsafe {
        asm!(
            "repe cmpsb",
            inout("rcx") n => _,
            inout("rsi") a => end_a,
            inout("rdi") b => end_b,
            options(nostack, readonly),
        )
    }
    // SAFETY: at least one byte was compared, so one before each end pointer is inside the
    // caller's ranges. Equal buffers end on an equal pair, giving 0.
    let (x, y) = unsafe { (*end_a.sub(1), *end_b.sub(1)) };
    i32::from(x) - i32::from(y)
}

/// # Safety
/// C `bcmp`: `a` and `b` readable for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
