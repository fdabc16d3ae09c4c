//! Every `unsafe` of the agent: `mount`, `reboot`, an anonymous mapping bound to a NUMA node
//! (`mmap` + `mbind` + `move_pages` through `libc::syscall`), and the store loops and the
//! XSAVEC round trip in inline assembly. Each block says why it is sound; everything outside
//! this module is safe code over the slices and values these functions hand out.

use std::arch::asm;
use std::ffi::CString;
use std::io;
use std::ptr;

/// `MPOL_BIND` (include/uapi/linux/mempolicy.h).
const MPOL_BIND: libc::c_ulong = 2;
/// `MPOL_MF_STRICT`: fail if existing pages are not on the node (there are none yet).
const MPOL_MF_STRICT: libc::c_ulong = 1;
/// Node mask words: node ids below 1024.
const MASK_WORDS: usize = 16;

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `mount(source, target, fstype, 0, NULL)`.
pub fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    let (s, t, f) = (cstring(source)?, cstring(target)?, cstring(fstype)?);
    // SAFETY: three NUL-terminated strings that live across the call, no flags, and a null
    // data pointer, which mount(2) accepts for these file systems.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Syncs and powers the machine off (ACPI S5 under cxlvm). Returns only on failure.
pub fn power_off() -> io::Error {
    // SAFETY: sync(2) and reboot(2) take no pointers; reboot either stops the machine or
    // fails with an errno (not PID 1 / no CAP_SYS_BOOT).
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    io::Error::last_os_error()
}

/// An anonymous private mapping whose pages the kernel must take from one NUMA node
/// (`mbind(MPOL_BIND)` before the first touch), unmapped on drop.
#[derive(Debug)]
pub struct NodeBuffer {
    ptr: *mut u8,
    len: usize,
    node: u32,
}

impl NodeBuffer {
    /// Maps `len` bytes (a non-zero multiple of the page size) bound to `node`.
    pub fn new(len: usize, node: u32) -> io::Result<Self> {
        if len == 0 || !len.is_multiple_of(4096) || node as usize >= MASK_WORDS * 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer of {len} bytes on node {node}"),
            ));
        }
        // SAFETY: a fresh anonymous mapping with a null hint: the kernel picks a range that
        // nothing else uses; the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // From here on, drop unmaps.
        let buf = Self {
            ptr: p.cast(),
            len,
            node,
        };
        let mut mask = [0 as libc::c_ulong; MASK_WORDS];
        mask[node as usize / 64] |= 1 << (node % 64);
        // SAFETY: mbind(2) on the range we own; the mask array outlives the call and holds
        // MASK_WORDS * 64 bits, and maxnode is that count + 1 (the kernel reads maxnode - 1 bits).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                buf.ptr,
                len,
                MPOL_BIND,
                mask.as_ptr(),
                (MASK_WORDS * 64 + 1) as libc::c_ulong,
                MPOL_MF_STRICT,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(buf)
    }

    pub fn node(&self) -> u32 {
        self.node
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr .. ptr + len` is mapped readable for as long as `self` lives, and the
        // shared borrow of `self` keeps `as_mut_slice` from handing out an aliasing `&mut`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, writable, and the exclusive borrow of `self` makes this the only
        // reference into the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The nodes `samples` evenly spaced pages are on (`move_pages` without target nodes
    /// queries; a negative value is `-errno`, e.g. -ENOENT for a page not yet faulted in).
    pub fn page_nodes(&self, samples: usize) -> io::Result<Vec<i32>> {
        let pages = (self.len / 4096).max(1);
        let samples = samples.clamp(1, pages);
        let addrs: Vec<*const libc::c_void> = (0..samples)
            .map(|i| self.ptr.wrapping_add(i * pages / samples * 4096) as *const libc::c_void)
            .collect();
        let mut status = vec![i32::MIN; samples];
        // SAFETY: move_pages(2) for our own process (pid 0) with `nodes` null only reads the
        // `samples` page addresses (all inside our mapping) and writes `samples` ints of status.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_pages,
                0 as libc::c_long,
                samples as libc::c_ulong,
                addrs.as_ptr(),
                ptr::null::<libc::c_int>(),
                status.as_mut_ptr(),
                0 as libc::c_long,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(status)
    }
}

impl Drop for NodeBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `new` mapped; no reference into it outlives `self`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// 8-byte stores (`mov qword`) of `value` over `buf`, front to back. `buf.len()` must be a
/// non-zero multiple of 32.
pub fn store8(buf: &mut [u8], value: u64) {
    assert!(
        !buf.is_empty() && buf.len().is_multiple_of(32),
        "store8: length {}",
        buf.len()
    );
    let p = buf.as_mut_ptr();
    let end = p.wrapping_add(buf.len());
    // SAFETY: the loop writes 32 bytes per iteration from `p` while `p < end`; `buf` is an
    // exclusively borrowed slice whose length is a non-zero multiple of 32, so every store lies
    // inside it. No stack use, no other register changes than the declared ones and flags.
    unsafe {
        asm!(
            "2:",
            "mov qword ptr [{p}], {v}",
            "mov qword ptr [{p} + 8], {v}",
            "mov qword ptr [{p} + 16], {v}",
            "mov qword ptr [{p} + 24], {v}",
            "add {p}, 32",
            "cmp {p}, {end}",
            "jb 2b",
            p = inout(reg) p => _,
            end = in(reg) end,
            v = in(reg) value,
            options(nostack),
        );
    }
}

/// Whether the CPU and the kernel let userspace use AVX (CPUID and XCR0).
pub fn has_avx() -> bool {
    std::arch::is_x86_feature_detected!("avx")
}

/// Whether XSAVEC (and AVX, for the loop's registers) can be used.
pub fn has_xsavec() -> bool {
    has_avx()
        && std::arch::is_x86_feature_detected!("xsave")
        && std::arch::is_x86_feature_detected!("xsavec")
}

#[target_feature(enable = "avx")]
unsafe fn store32_avx_raw(p: *mut u8, end: *mut u8, pattern: *const u8) {
    // SAFETY: the caller guarantees `p .. end` is writable, 32-byte aligned and a non-zero
    // multiple of 128 bytes long, `pattern` points at 32 readable bytes and AVX is usable.
    unsafe {
        asm!(
            "vmovdqu ymm0, ymmword ptr [{pat}]",
            "2:",
            "vmovdqa ymmword ptr [{p}], ymm0",
            "vmovdqa ymmword ptr [{p} + 32], ymm0",
            "vmovdqa ymmword ptr [{p} + 64], ymm0",
            "vmovdqa ymmword ptr [{p} + 96], ymm0",
            "add {p}, 128",
            "cmp {p}, {end}",
            "jb 2b",
            p = inout(reg) p => _,
            end = in(reg) end,
            pat = in(reg) pattern,
            out("ymm0") _,
            options(nostack),
        );
    }
}

/// 32-byte AVX stores (`vmovdqa ymm`) of `pattern` over `buf`. `buf` must be 32-byte aligned
/// and a non-zero multiple of 128 bytes long. Returns false (and stores nothing) without AVX.
pub fn store32_avx(buf: &mut [u8], pattern: &[u8; 32]) -> bool {
    if !has_avx() {
        return false;
    }
    assert!(
        !buf.is_empty()
            && buf.len().is_multiple_of(128)
            && (buf.as_ptr() as usize).is_multiple_of(32),
        "store32_avx: buffer {:p} + {}",
        buf.as_ptr(),
        buf.len()
    );
    let p = buf.as_mut_ptr();
    // SAFETY: AVX is usable (checked above); the slice is exclusively borrowed, aligned and
    // sized as `store32_avx_raw` requires (asserted above); `pattern` is 32 bytes.
    unsafe { store32_avx_raw(p, p.wrapping_add(buf.len()), pattern.as_ptr()) };
    true
}

/// Size of the XSAVE area the round trip uses: legacy region, header and the AVX component
/// in the compacted format (512 + 64 + 256), rounded up.
pub const XSAVE_AREA: usize = 1024;

#[target_feature(enable = "avx,xsave,xsavec")]
unsafe fn xsavec_round_raw(src: *const u8, out1: *mut u8, area: *mut u8, out2: *mut u8) {
    // SAFETY: the caller guarantees 128 readable bytes at `src`, 128 writable bytes at `out1`
    // and `out2`, a 64-byte aligned, zeroed XSAVE_AREA at `area`, and XSAVEC/AVX usability.
    // XSAVEC with RFBM = x87|SSE|AVX writes at most 512 + 64 + 256 bytes; XRSTOR restores the
    // very state XSAVEC saved, so only ymm0-3 (declared) change between them; x87, MXCSR and
    // the other vector registers come back as they were.
    unsafe {
        asm!(
            "vmovdqu ymm0, ymmword ptr [{src}]",
            "vmovdqu ymm1, ymmword ptr [{src} + 32]",
            "vmovdqu ymm2, ymmword ptr [{src} + 64]",
            "vmovdqu ymm3, ymmword ptr [{src} + 96]",
            "vmovdqu ymmword ptr [{out1}], ymm0",
            "vmovdqu ymmword ptr [{out1} + 32], ymm1",
            "vmovdqu ymmword ptr [{out1} + 64], ymm2",
            "vmovdqu ymmword ptr [{out1} + 96], ymm3",
            "xsavec64 [{area}]",
            "vpxor ymm0, ymm0, ymm0",
            "vpxor ymm1, ymm1, ymm1",
            "vpxor ymm2, ymm2, ymm2",
            "vpxor ymm3, ymm3, ymm3",
            "xrstor64 [{area}]",
            "vmovdqu ymmword ptr [{out2}], ymm0",
            "vmovdqu ymmword ptr [{out2} + 32], ymm1",
            "vmovdqu ymmword ptr [{out2} + 64], ymm2",
            "vmovdqu ymmword ptr [{out2} + 96], ymm3",
            src = in(reg) src,
            out1 = in(reg) out1,
            area = in(reg) area,
            out2 = in(reg) out2,
            in("eax") 7u32,
            in("edx") 0u32,
            out("ymm0") _,
            out("ymm1") _,
            out("ymm2") _,
            out("ymm3") _,
            options(nostack),
        );
    }
}

/// One round: loads ymm0-3 from `slot[0..128]`, stores them to `slot[128..256]` (AVX
/// stores), XSAVECs into `slot[256..256 + XSAVE_AREA]`, clears ymm0-3, XRSTORs and stores them
/// to `slot[256 + XSAVE_AREA..][..128]`. `slot` must be 64-byte aligned and at least
/// `384 + XSAVE_AREA` bytes. Returns false (and does nothing) without XSAVEC/AVX.
pub fn xsavec_round(slot: &mut [u8]) -> bool {
    if !has_xsavec() {
        return false;
    }
    assert!(
        slot.len() >= 384 + XSAVE_AREA && (slot.as_ptr() as usize).is_multiple_of(64),
        "xsavec_round: slot {:p} + {}",
        slot.as_ptr(),
        slot.len()
    );
    // The header's reserved bytes must be zero for XRSTOR.
    slot[256..256 + XSAVE_AREA].fill(0);
    let p = slot.as_mut_ptr();
    // SAFETY: XSAVEC and AVX are usable (checked); the four ranges lie inside the exclusively
    // borrowed `slot` (asserted length), do not overlap, and the area is 64-byte aligned
    // (slot aligned, offset 256) and zeroed just above.
    unsafe {
        xsavec_round_raw(
            p,
            p.wrapping_add(128),
            p.wrapping_add(256),
            p.wrapping_add(256 + XSAVE_AREA),
        )
    };
    true
}
