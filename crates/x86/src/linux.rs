//! Register state, CPUID and MSRs for a vCPU booting Linux (PVH 32-bit entry or the 64-bit boot
//! protocol), as plain data.

use kvm_bindings::{CpuId, kvm_regs, kvm_segment, kvm_sregs};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// CPUID.1:ECX bit 31, "running under a hypervisor".
pub const CPUID_HYPERVISOR: u32 = 1 << 31;

fn flat(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn tss() -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0x67,
        selector: 0x18,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    }
}

/// The PVH entry state: 32-bit protected mode, paging off, flat 4 GiB code (0x10) and data
/// (0x18) segments, from the vCPU's current `sregs` (keeps the APIC base KVM set).
pub fn pvh_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = flat(0x10, 0xb, false);
    let d = flat(0x18, 0x3, false);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    s.tr = tss();
    s.cr0 = CR0_PE | CR0_ET;
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
    s
}

/// The 64-bit boot protocol's entry state: long mode with the identity tables at `pml4`, the
/// GDT at `gdt` (4 entries: 64-bit code 0x10, data 0x18).
pub fn long_mode_sregs(mut s: kvm_sregs, pml4: u64, gdt: u64) -> kvm_sregs {
    s.cs = flat(0x10, 0xb, true);
    let d = flat(0x18, 0x3, false);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    s.tr = tss();
    s.gdt.base = gdt;
    s.gdt.limit = 4 * 8 - 1;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr0 = CR0_PE | CR0_ET | CR0_PG;
    s.cr3 = pml4;
    s.cr4 = CR4_PAE;
    s.efer = EFER_LME | EFER_LMA;
    s
}

/// General registers for the PVH entry (`RBX` = `hvm_start_info`).
pub fn pvh_regs(rip: u64, start_info: u64) -> kvm_regs {
    kvm_regs {
        rip,
        rbx: start_info,
        rflags: 0x2,
        ..Default::default()
    }
}

/// General registers for the 64-bit boot protocol (`RSI` = zero page).
pub fn long_mode_regs(rip: u64, zero_page: u64) -> kvm_regs {
    kvm_regs {
        rip,
        rsi: zero_page,
        rflags: 0x2,
        ..Default::default()
    }
}

/// CPUID for vCPU `index` of `count` booting Linux: KVM's supported set with the initial and
/// x2APIC ids, a topology of `count` single-thread cores in one package (leaves 1, 4, 0xB,
/// 0x1F), and the hypervisor bit set or hidden (`hypervisor`).
pub fn linux_cpuid(cpuid: &mut CpuId, index: u32, count: u32, hypervisor: bool) {
    let core_bits = 32 - count.saturating_sub(1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // APIC id, logical processor count, HTT when more than one.
                e.ebx = (e.ebx & 0x0000_ffff) | (index << 24) | (count.min(255) << 16);
                if count > 1 {
                    e.edx |= 1 << 28;
                }
                if hypervisor {
                    e.ecx |= CPUID_HYPERVISOR;
                } else {
                    e.ecx &= !CPUID_HYPERVISOR;
                }
            }
            4 => {
                // Cores per package - 1 in EAX[31:26]; threads sharing the cache: one.
                e.eax = (e.eax & 0x03ff_c3ff) | ((count.saturating_sub(1).min(63)) << 26);
            }
            0xb | 0x1f => {
                e.edx = index;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: `count` cores.
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: cores per package - 1 (NC) and the APIC id bits they take.
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | count.saturating_sub(1).min(255);
            }
            0x8000_001e => {
                // AMD extended topology: APIC id, core id, one thread per core, one node.
                e.eax = index;
                e.ebx = index & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// MSR indices set at boot.
pub mod msr {
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// STAR.
    pub const STAR: u32 = 0xc000_0081;
    /// LSTAR.
    pub const LSTAR: u32 = 0xc000_0082;
    /// CSTAR.
    pub const CSTAR: u32 = 0xc000_0083;
    /// SFMASK.
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// IA32_TSC.
    pub const TSC: u32 = 0x10;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
}

/// MSR values for a vCPU booting Linux: syscall MSRs cleared, TSC 0, fast strings on, MTRRs
/// enabled with write-back as the default type (no variable ranges: all RAM is WB).
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (msr::SYSENTER_CS, 0),
        (msr::SYSENTER_ESP, 0),
        (msr::SYSENTER_EIP, 0),
        (msr::STAR, 0),
        (msr::LSTAR, 0),
        (msr::CSTAR, 0),
        (msr::SYSCALL_MASK, 0),
        (msr::KERNEL_GS_BASE, 0),
        (msr::TSC, 0),
        (msr::MISC_ENABLE, 1),
        (msr::MTRR_DEF_TYPE, (1 << 11) | 6),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn cpuid() -> CpuId {
        let e = |function, index| kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        };
        CpuId::from_entries(&[e(1, 0), e(4, 0), e(0xb, 0), e(0xb, 1), e(0xb, 2)]).unwrap()
    }

    #[test]
    fn cpuid_carries_apic_ids_topology_and_the_chosen_hypervisor_bit() {
        let mut c = cpuid();
        linux_cpuid(&mut c, 3, 4, false);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_eq!(s[0].ecx & CPUID_HYPERVISOR, 0);
        assert_eq!(s[1].eax >> 26, 3);
        assert_eq!((s[2].edx, s[2].ebx, s[2].ecx >> 8), (3, 1, 1));
        assert_eq!((s[3].edx, s[3].eax, s[3].ebx, s[3].ecx >> 8), (3, 2, 4, 2));
        assert_eq!(s[4].ecx, 2);
        let mut c = cpuid();
        linux_cpuid(&mut c, 0, 1, true);
        assert_ne!(c.as_slice()[0].ecx & CPUID_HYPERVISOR, 0);
    }

    #[test]
    fn entry_modes() {
        let p = pvh_sregs(kvm_sregs::default());
        assert_eq!((p.cr0 & 1, p.cr0 >> 31, p.efer), (1, 0, 0));
        assert_eq!((p.cs.db, p.cs.l), (1, 0));
        let l = long_mode_sregs(kvm_sregs::default(), 0x9000, 0x500);
        assert_eq!((l.cr3, l.efer & EFER_LMA != 0, l.cs.l), (0x9000, true, 1));
        assert_eq!(pvh_regs(0x100_0000, 0x7000).rbx, 0x7000);
        assert_eq!(long_mode_regs(0x100_0200, 0x7000).rsi, 0x7000);
    }
}
