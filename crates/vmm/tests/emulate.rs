//! Real-KVM tests of instruction completion (`cxlvm-emulate`): the `emulate` guest compares
//! instructions on the scratch window's MMIO path with the same instructions on RAM, and the
//! `ring0` guest runs at CPL0 (`Privilege::Kernel`), where `kvm_pvm` sends every instruction
//! through KVM's emulator, and checks exceptions and its own paging. Each guest prints one line
//! per case and exits 0 only when every case passed (4: a mismatch, 5: the CPU lacks a feature a
//! case needs, which it names).

mod common;

use common::{boot, config};
use cxlvm_emulate::{Exception, Mnemonic};
use cxlvm_vmm::{Outcome, Privilege, RunReport};

/// Boots `guest` with `cmdline` and a 2 MiB scratch window; asserts exit 0.
fn run(guest: &str, cmdline: &str, vcpus: u32, privilege: Privilege) -> (RunReport, String) {
    let (mut cfg, cap) = config(guest, cmdline);
    cfg.scratch_window = Some(2 << 20);
    cfg.vcpus = vcpus;
    cfg.privilege = privilege;
    let (_m, r, text) = boot(cfg, &cap);
    assert_eq!(
        r.outcome,
        Outcome::Exit(0),
        "{guest} {cmdline}: serial:\n{text}"
    );
    (r, text)
}

fn emulate(mode: &str) -> (RunReport, String) {
    run("emulate", &format!("mode={mode}"), 1, Privilege::User)
}

fn ring0(case: &str) -> (RunReport, String) {
    let (r, text) = run("ring0", &format!("mode={case}"), 1, Privilege::Kernel);
    assert!(
        text.contains(&format!("ring0 {case} ok")),
        "serial:\n{text}"
    );
    (r, text)
}

#[test]
fn sse_and_avx_moves_on_mmio_match_ram() {
    let (r, text) = emulate("moves");
    assert!(
        text.contains("62 ok, 0 mismatched, 0 not run"),
        "serial:\n{text}"
    );
    let e = &r.stats.emulation;
    // Legacy-SSE moves KVM may do itself; the VEX forms and the partial moves it cannot.
    for m in [
        Mnemonic::Vmovdqu,
        Mnemonic::Vmovups,
        Mnemonic::Vmovaps,
        Mnemonic::Vmovdqa,
        Mnemonic::Vmovntdq,
        Mnemonic::Vmovntdqa,
        Mnemonic::Vmovd,
        Mnemonic::Vmovq,
        Mnemonic::Vmovss,
        Mnemonic::Vmovsd,
        Mnemonic::Movq,
        Mnemonic::Movd,
        Mnemonic::Movhps,
    ] {
        assert!(e.completed(m) >= 1, "{m:?} completed by cxlvm: {e:?}");
    }
    assert_eq!(e.injected(Exception::GeneralProtection), 0, "{e:?}");
    assert_eq!(e.injected(Exception::PageFault), 0, "{e:?}");
}

#[test]
fn xsave_family_on_mmio_matches_ram() {
    let (r, text) = emulate("xsave");
    assert!(
        text.contains("case xsavec-x87-sse-avx ok"),
        "serial:\n{text}"
    );
    assert!(
        text.contains("case xsavec-xrstor-window-round-trip ok"),
        "serial:\n{text}"
    );
    let e = &r.stats.emulation;
    // Three XSAVEC saves on the window, plus the round trip's.
    assert!(e.completed(Mnemonic::Xsavec64) >= 4, "{e:?}");
    assert!(e.completed(Mnemonic::Xsave64) >= 3, "{e:?}");
    assert!(e.completed(Mnemonic::Xsaveopt64) >= 3, "{e:?}");
    assert!(e.completed(Mnemonic::Xrstor64) >= 3, "{e:?}");
    assert!(e.completed(Mnemonic::Fxsave) >= 1, "{e:?}");
    assert!(e.completed(Mnemonic::Fxsave64) >= 2, "{e:?}");
    assert!(e.completed(Mnemonic::Fxrstor64) >= 2, "{e:?}");
}

#[test]
fn cmpxchg16b_and_cmpxchg8b_on_mmio_match_ram() {
    let (r, text) = emulate("cmpxchg16b");
    assert!(text.contains("8 ok, 0 mismatched"), "serial:\n{text}");
    // Four CMPXCHG16B on the window (success/failure, with and without LOCK).
    assert!(
        r.stats.emulation.completed(Mnemonic::Cmpxchg16b) >= 4,
        "{:?}",
        r.stats.emulation
    );
}

#[test]
fn lock_cmpxchg16b_on_mmio_is_atomic_across_vcpus() {
    let n = 2000u64;
    let vcpus = 4u32;
    let (r, text) = run(
        "emulate",
        &format!("mode=count n={n}"),
        vcpus,
        Privilege::User,
    );
    assert!(text.contains("case count ok"), "serial:\n{text}");
    // At least one attempt per increment.
    assert!(
        r.stats.emulation.completed(Mnemonic::Cmpxchg16b) >= u64::from(vcpus) * n,
        "{:?}",
        r.stats.emulation
    );
}

#[test]
fn rep_string_instructions_on_mmio_match_ram() {
    let (_r, text) = emulate("string");
    assert!(
        text.contains("22 ok, 0 mismatched, 0 not run"),
        "serial:\n{text}"
    );
}

#[test]
fn ring0_int3_reaches_the_breakpoint_handler_once() {
    let (r, text) = ring0("int3");
    assert!(text.contains("#BP count=1"), "serial:\n{text}");
    assert_eq!(
        r.stats.emulation.injected(Exception::Breakpoint),
        1,
        "{:?}",
        r.stats.emulation
    );
}

#[test]
fn ring0_fwait_without_pending_x87_exception_does_nothing() {
    let (r, text) = ring0("fwait");
    assert!(
        text.contains("ring0: 0 exceptions in all"),
        "serial:\n{text}"
    );
    assert_eq!(r.stats.emulation.injected(Exception::MathFault), 0);
}

#[test]
fn ring0_ldmxcsr_stmxcsr_round_trip_and_reserved_bit_raises_gp0() {
    let (r, text) = ring0("mxcsr");
    assert!(text.contains("-> #GP(0)"), "serial:\n{text}");
    let e = &r.stats.emulation;
    assert_eq!(e.injected(Exception::GeneralProtection), 1, "{e:?}");
    assert!(e.completed(Mnemonic::Ldmxcsr) >= 7, "{e:?}");
    assert!(e.completed(Mnemonic::Stmxcsr) >= 7, "{e:?}");
}

#[test]
fn ring0_stac_and_clac_set_and_clear_ac() {
    let (r, _text) = ring0("smap");
    let e = &r.stats.emulation;
    assert!(e.completed(Mnemonic::Stac) >= 1, "{e:?}");
    assert!(e.completed(Mnemonic::Clac) >= 2, "{e:?}");
}

#[test]
fn ring0_sse_moves_on_ram() {
    let (r, _text) = ring0("sse");
    assert!(r.stats.emulation.total() >= 1, "{:?}", r.stats.emulation);
}

#[test]
fn ring0_page_faults_from_emulated_accesses_carry_cr2_and_error_code() {
    let (r, text) = ring0("pagefault");
    for sub in [
        "a-avx-store-not-present: cr2=0x700000000100 error=0x2",
        "b-avx-store-read-only: cr2=0x700000001200 error=0x3",
        "c-avx-load-not-present: cr2=0x700000002300 error=0x0",
        "d-avx-store-crossing: cr2=0x700000004000 error=0x2",
        "e-avx-store-ram-then-window ok",
        "b-mov-store-read-only: cr2=0x700000007208 error=0x3",
        "c-mov-load-not-present: cr2=0x700000008308 error=0x0",
        "d-mov-store-crossing: cr2=0x70000000a000 error=0x2",
    ] {
        assert!(
            text.contains(&format!("ring0 pagefault {sub}")),
            "{sub}; serial:\n{text}"
        );
    }
    // (a)–(d): the AVX accesses, whose page walks and #PF are cxlvm's.
    assert!(
        r.stats.emulation.injected(Exception::PageFault) >= 4,
        "{:?}",
        r.stats.emulation
    );
}

#[test]
fn ring0_all_cases_in_one_boot() {
    let (_r, text) = run("ring0", "mode=all", 1, Privilege::Kernel);
    for case in ["int3", "fwait", "mxcsr", "smap", "pagefault", "sse"] {
        assert!(
            text.contains(&format!("ring0 {case} ok")),
            "{case}; serial:\n{text}"
        );
    }
}
