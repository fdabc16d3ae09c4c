//! Real-KVM tests: test guests at CPL3 against the foundation (memory API, slot listener, ports).

mod common;

use common::{boot, config, word};
use cxlvm_emulate::Mnemonic;
use cxlvm_vmm::{FaultKind, NotCompleted, Outcome};

#[test]
fn hello_guest_prints_and_exits_zero() {
    let (cfg, cap) = config("hello", "");
    let (_m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(text.contains("hello from cxlvm guest"), "serial:\n{text}");
    assert!(
        r.stats.start_to_first_instruction_us.is_some(),
        "boot mark recorded"
    );
}

#[test]
fn exit_port_value_becomes_the_status() {
    let (cfg, cap) = config("exit", "code=42");
    let (_m, r, _) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(42));
    assert_eq!(r.outcome.exit_status(), 42);
}

#[test]
fn window_mmio_then_alias_then_mmio_keeps_every_byte() {
    let words = 512u64;
    let (mut cfg, cap) = config("window", &format!("mode=roundtrip words={words}"));
    cfg.scratch_window = Some(2 << 20);
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(text.contains("window roundtrip ok"), "serial:\n{text}");
    let s = m.scratch().unwrap();
    // Phase 1 (alias off): N writes + N reads exit. Phase 2 (alias on): N reads + N writes run
    // without exits. Phase 3 (alias off): 2N reads exit. Anything else means the alias phase
    // exited or the MMIO phases did not.
    assert_eq!(s.mmio_accesses(), 4 * words, "exits through the MMIO path");
    assert_eq!(s.switches(), 2);
    // The bytes live in the device backing, whichever path wrote them.
    for i in 0..words {
        assert_eq!(
            word(s.backing(), i),
            0xC0DE_0000_0000_0000 | i,
            "word {i} (MMIO-written)"
        );
        let j = words + i;
        assert_eq!(
            word(s.backing(), j),
            0xA11A_0000_0000_0000 | j,
            "word {j} (alias-written)"
        );
    }
    assert!(
        m.slots().covering(s.base()).is_none(),
        "alias off at exit: no slot over the window"
    );
}

/// Runs `window` with the alias off and expects it to end with an emulation failure that cxlvm
/// could not complete either, for `why`.
fn expect_uncompleted(mode: &str, why: impl Fn(&NotCompleted) -> bool) -> String {
    let (mut cfg, cap) = config("window", &format!("mode={mode} alias=off"));
    cfg.scratch_window = Some(2 << 20);
    let (m, r, text) = boot(cfg, &cap);
    match &r.outcome {
        Outcome::Fault {
            kind,
            bytes,
            rip,
            not_completed,
            ..
        } => {
            assert_eq!(*kind, FaultKind::InternalError(1), "serial:\n{text}");
            assert!(
                not_completed.as_ref().is_some_and(&why),
                "{not_completed:?}; serial:\n{text}"
            );
            // The bytes are the instruction at RIP (test guests are identity-mapped, so RIP is
            // also where it lies in guest memory, RAM or window).
            assert!((1..=16).contains(&bytes.len()), "{bytes:x?}");
            let mut at_rip = vec![0u8; bytes.len()];
            m.view().with(|v| v.read(*rip, &mut at_rip));
            assert_eq!(bytes, &at_rip);
        }
        other => panic!(
            "{mode} must end with an uncompleted instruction, got {other:?}; serial:\n{text}"
        ),
    }
    assert_eq!(r.outcome.exit_status(), 1);
    assert_eq!(r.stats.emulation.total(), 0, "nothing was completed");
    r.outcome.message().unwrap()
}

/// Runs `window` with the alias off and expects the instruction KVM cannot emulate to be
/// completed by cxlvm: the guest checks the bytes through MMIO and exits 0.
fn expect_completed(mode: &str, mnemonic: Mnemonic) {
    let (mut cfg, cap) = config("window", &format!("mode={mode} alias=off"));
    cfg.scratch_window = Some(2 << 20);
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(text.contains(&format!("{mode} ok")), "serial:\n{text}");
    assert!(
        r.stats.emulation.completed(mnemonic) >= 1,
        "{:?}",
        r.stats.emulation
    );
    assert!(
        m.scratch().unwrap().mmio_accesses() > 0,
        "went through MMIO"
    );
}

fn expect_success_on_alias(mode: &str) {
    let (mut cfg, cap) = config("window", &format!("mode={mode} alias=on"));
    cfg.scratch_window = Some(2 << 20);
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(text.contains(&format!("{mode} ok")), "serial:\n{text}");
    assert_eq!(m.scratch().unwrap().mmio_accesses(), 0);
}

#[test]
fn xsavec_to_mmio_only_window_is_completed_by_cxlvm() {
    expect_completed("xsavec", Mnemonic::Xsavec);
}

#[test]
fn xsavec_to_aliased_window_succeeds() {
    expect_success_on_alias("xsavec");
}

#[test]
fn avx_store_to_mmio_only_window_is_completed_by_cxlvm() {
    expect_completed("avx", Mnemonic::Vmovdqu);
}

#[test]
fn an_uncovered_instruction_on_the_mmio_path_ends_the_run_naming_it() {
    let msg = expect_uncompleted("uncovered", |n| {
        *n == NotCompleted::Unsupported(Mnemonic::Vaddps)
    });
    assert!(
        msg.contains("emulation failure") && msg.contains("RIP") && msg.contains("vaddps"),
        "{msg}"
    );
}

#[test]
fn instruction_fetch_from_the_mmio_path_ends_the_run() {
    let msg = expect_uncompleted(
        "fetch",
        |n| matches!(n, NotCompleted::FetchFromMmio(gpa) if *gpa == cxlvm_x86::layout::SCRATCH_WINDOW_BASE),
    );
    assert!(msg.contains("MMIO path"), "{msg}");
}

#[test]
fn avx_store_to_aliased_window_succeeds() {
    expect_success_on_alias("avx");
}

#[test]
fn two_vcpus_stream_while_the_alias_toggles_and_nothing_is_lost() {
    let words = 65536u64;
    let toggles = 1000u64;
    let (mut cfg, cap) = config(
        "window",
        &format!("mode=stress words={words} toggles={toggles}"),
    );
    cfg.scratch_window = Some(2 << 20);
    cfg.vcpus = 2;
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(text.contains("stress ok"), "serial:\n{text}");
    let s = m.scratch().unwrap();
    assert!(s.switches() >= toggles, "only {} switches", s.switches());
    // Host-side check, independent of the guest's own verification: word i holds the last of
    // the guest's `writes` sequence writes that went to it.
    let tag = number_after(&text, "tag=0x", 16);
    let writes = number_after(&text, "writes=", 10);
    assert!(
        writes >= words,
        "the stream must lap the window while toggling ({writes} writes)"
    );
    for i in 0..words {
        let last = writes - 1 - ((writes - 1 - i) % words);
        assert_eq!(word(s.backing(), i), tag | last, "word {i}");
    }
}

/// Parses the number after `key` in the guest's serial output.
fn number_after(text: &str, key: &str, radix: u32) -> u64 {
    let t = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("guest did not print {key}...; serial:\n{text}"));
    u64::from_str_radix(t, radix).unwrap()
}

#[test]
fn triple_fault_is_reported_with_rip_and_bytes() {
    let (cfg, cap) = config("fault", "kind=ud2");
    let (_m, r, text) = boot(cfg, &cap);
    match &r.outcome {
        Outcome::Fault { kind, bytes, .. } => {
            assert_eq!(*kind, FaultKind::Shutdown, "serial:\n{text}");
            assert_eq!(&bytes[..2], &[0x0f, 0x0b], "ud2 at RIP");
        }
        other => panic!("expected a shutdown, got {other:?}"),
    }
    assert_eq!(r.outcome.exit_status(), 1);
}

#[test]
fn timeout_stops_a_spinning_guest() {
    let (mut cfg, cap) = config("spin", "");
    cfg.timeout = Some(std::time::Duration::from_millis(300));
    cfg.vcpus = 2;
    let (_m, r, _) = boot(cfg, &cap);
    assert!(matches!(r.outcome, Outcome::Timeout(_)), "{:?}", r.outcome);
    assert_eq!(r.outcome.exit_status(), 124);
}
