//! Register state for a vCPU entering a test guest in 64-bit mode at CPL3 (or at CPL0 for
//! ring-0 test guests).

use kvm_bindings::{CpuId, kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};

use crate::layout::{GDT, TSS};

/// Kernel code selector (CPL0 guests; CPL3 guests never load it).
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
/// User 64-bit code selector with RPL 3.
pub const USER_CS: u16 = 0x18 | 3;
/// User data selector with RPL 3.
pub const USER_DS: u16 = 0x20 | 3;
/// TSS selector.
pub const TSS_SEL: u16 = 0x28;
/// Size of the TSS.
pub const TSS_SIZE: u64 = 0x68;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS reserved bit 1 plus IOPL = 3.
pub const RFLAGS_IOPL3: u64 = 0x2 | (3 << 12);

/// XCR0 bits: x87, SSE, AVX.
pub const XCR0_AVX: u64 = 0b111;
/// XCR0 bits of AVX-512 state (opmask, ZMM_Hi256, Hi16_ZMM).
pub const XCR0_AVX512: u64 = 0b1110_0000;

fn descriptor(access: u8, flags: u8) -> u64 {
    // base 0, limit 0xfffff
    let limit_lo = 0xffffu64;
    let limit_hi = 0xfu64;
    limit_lo | (u64::from(access) << 40) | (limit_hi << 48) | (u64::from(flags) << 52)
}

/// The GDT bytes (to be written at [`GDT`]): null, kernel code/data, user code/data, 16-byte TSS.
pub fn gdt() -> Vec<u8> {
    let mut entries = vec![
        0u64,
        descriptor(0x9b, 0xa), // kernel code: P, DPL0, S, exec/read/accessed; G, L
        descriptor(0x93, 0xc), // kernel data: P, DPL0, S, rw/accessed; G, D/B
        descriptor(0xfb, 0xa), // user code: P, DPL3
        descriptor(0xf3, 0xc), // user data: P, DPL3
    ];
    let limit = TSS_SIZE - 1;
    let lo = (limit & 0xffff)
        | ((TSS & 0xff_ffff) << 16)
        | (0x8bu64 << 40) // P, busy 64-bit TSS
        | (((TSS >> 24) & 0xff) << 56);
    entries.push(lo);
    entries.push(TSS >> 32);
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

fn segment(selector: u16, type_: u8, dpl: u8, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for 64-bit mode at CPL3 with paging rooted at `cr3`, starting from the
/// vCPU's current `sregs` (so that fields KVM filled in, like the APIC base, are kept).
pub fn cpl3_sregs(sregs: kvm_sregs, cr3: u64) -> kvm_sregs {
    long_mode_sregs(sregs, cr3, USER_CS, USER_DS, 3)
}

/// Special registers for 64-bit mode at CPL0 (CS = [`KERNEL_CS`], SS/DS/ES/FS/GS =
/// [`KERNEL_DS`], both DPL 0), otherwise exactly as [`cpl3_sregs`]: same GDT, TSS, paging,
/// control registers and EFER.
pub fn cpl0_sregs(sregs: kvm_sregs, cr3: u64) -> kvm_sregs {
    long_mode_sregs(sregs, cr3, KERNEL_CS, KERNEL_DS, 0)
}

/// Flat 64-bit code segment `code`, data segment `data` (both at privilege `dpl`), the GDT and
/// TSS of [`gdt`], no IDT, paging at `cr3`.
fn long_mode_sregs(mut sregs: kvm_sregs, cr3: u64, code: u16, data: u16, dpl: u8) -> kvm_sregs {
    sregs.cs = segment(code, 0xb, dpl, true);
    let data = segment(data, 0x3, dpl, false);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS,
        limit: (TSS_SIZE - 1) as u32,
        selector: TSS_SEL,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = GDT;
    sregs.gdt.limit = (7 * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

/// General registers at entry.
pub fn entry_regs(entry: u64, boot_info: u64, vcpu: u32, stack_top: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rdi: boot_info,
        rsi: u64::from(vcpu),
        rsp: stack_top,
        rflags: RFLAGS_IOPL3,
        ..Default::default()
    }
}

/// FPU state at entry: default control word and MXCSR.
pub fn entry_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// XCR0 to enable: x87 + SSE + AVX, and AVX-512 state when all of it is supported. `supported`
/// is CPUID.(EAX=0xD,ECX=0):EDX:EAX.
pub fn xcr0_for(supported: u64) -> u64 {
    let mut x = supported & XCR0_AVX;
    if x == XCR0_AVX && supported & XCR0_AVX512 == XCR0_AVX512 {
        x |= XCR0_AVX512;
    }
    x | 1
}

/// The XCR0 mask the host's CPUID (as supported by KVM) allows.
pub fn supported_xcr0(cpuid: &CpuId) -> u64 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map_or(1, |e| u64::from(e.eax) | (u64::from(e.edx) << 32))
}

/// Adjusts KVM's supported CPUID for vCPU `index`: initial APIC id in leaf 1 and extended
/// topology leaves.
pub fn patch_cpuid(cpuid: &mut CpuId, index: u32) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00ff_ffff) | (index << 24),
            0xb | 0x1f => e.edx = index,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_has_user_segments_at_dpl3_and_a_busy_tss() {
        let g = gdt();
        assert_eq!(g.len(), 56);
        let e = |i: usize| u64::from_le_bytes(g[i * 8..i * 8 + 8].try_into().unwrap());
        let dpl = |d: u64| (d >> 45) & 3;
        assert_eq!(dpl(e(3)), 3);
        assert_eq!(dpl(e(4)), 3);
        assert_eq!((e(3) >> 53) & 1, 1, "user code is 64-bit (L)");
        assert_eq!((e(5) >> 40) & 0xf, 0xb, "busy TSS type");
        assert_eq!(
            ((e(5) >> 16) & 0xff_ffff) | (((e(5) >> 56) & 0xff) << 24) | (e(6) << 32),
            TSS
        );
    }

    #[test]
    fn xcr0_never_enables_partial_avx512() {
        assert_eq!(xcr0_for(0b111), 0b111);
        assert_eq!(xcr0_for(0b11), 0b11);
        assert_eq!(xcr0_for(0b1110_0111), 0b1110_0111);
        assert_eq!(xcr0_for(0b0110_0111 | (1 << 9)), 0b111);
    }

    #[test]
    fn sregs_are_cpl3_long_mode() {
        let s = cpl3_sregs(kvm_sregs::default(), 0x1000);
        assert_eq!(s.cs.dpl, 3);
        assert_eq!(s.ss.dpl, 3);
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.efer & (EFER_LMA | EFER_LME), EFER_LMA | EFER_LME);
        assert_eq!(s.cr3, 0x1000);
    }

    #[test]
    fn ring0_sregs_are_cpl0_long_mode_with_the_kernel_selectors() {
        let s = cpl0_sregs(kvm_sregs::default(), 0x2000);
        assert_eq!(s.cs.selector, KERNEL_CS);
        assert_eq!(s.cs.dpl, 0, "CPL = CS.DPL = 0");
        assert_eq!((s.cs.type_, s.cs.l, s.cs.db, s.cs.s), (0xb, 1, 0, 1));
        for (name, seg) in [
            ("ss", s.ss),
            ("ds", s.ds),
            ("es", s.es),
            ("fs", s.fs),
            ("gs", s.gs),
        ] {
            assert_eq!(seg.selector, KERNEL_DS, "{name}");
            assert_eq!(seg.dpl, 0, "{name}");
            assert_eq!((seg.type_, seg.present, seg.s), (0x3, 1, 1), "{name}");
        }
        // The selectors name the GDT's DPL-0 descriptors, so reloading them (IRETQ pops CS and
        // SS) finds what KVM was given here.
        let g = gdt();
        let e =
            |sel: u16| u64::from_le_bytes(g[sel as usize..sel as usize + 8].try_into().unwrap());
        assert_eq!((e(KERNEL_CS) >> 45) & 3, 0);
        assert_eq!((e(KERNEL_CS) >> 53) & 1, 1, "kernel code is 64-bit (L)");
        assert_eq!((e(KERNEL_DS) >> 45) & 3, 0);
        // Everything but the segments is the CPL3 state.
        let u = cpl3_sregs(kvm_sregs::default(), 0x2000);
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (u.cr0, u.cr3, u.cr4, u.efer));
        assert_eq!((s.gdt.base, s.gdt.limit), (u.gdt.base, u.gdt.limit));
        assert_eq!((s.idt.base, s.idt.limit), (0, 0));
        assert_eq!((s.tr.selector, s.tr.base), (TSS_SEL, TSS));
        assert_eq!(s.efer & (EFER_LMA | EFER_LME), EFER_LMA | EFER_LME);
    }
}
