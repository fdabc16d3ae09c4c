//! Real-KVM tests of the mapping planner: every committed CXL range the decoders map onto device
//! memory runs at RAM speed (zero exits, XSAVEC and AVX work), the rest stays on the exact MMIO
//! path, and switching never loses a byte. The `cxl` guest counts exits with port 0x514 and
//! switches paths with port 0x510 (docs/guest-abi.md).

mod common;

use common::{VERIFY_TAG, boot, config};
use cxlvm_cxl::topology::Topology;
use cxlvm_mapping::overlay::RangeMode;
use cxlvm_mapping::planner::MmioReason;
use cxlvm_vmm::Outcome;

fn run(topo: Topology, cmdline: &str, vcpus: u32) -> (cxlvm_vmm::Machine, String) {
    let (mut cfg, cap) = config("cxl", cmdline);
    cfg.cxl = Some(topo);
    cfg.vcpus = vcpus;
    cfg.memory = 128 << 20;
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "{cmdline}; serial:\n{text}");
    (m, text)
}

/// The guest's `direct=1` run: pattern written through MMIO (exits counted), read back through
/// the direct mapping with zero exits plus XSAVEC and an AVX store, read back through MMIO again.
fn direct(topo: Topology, region: &str) -> (cxlvm_vmm::Machine, String) {
    let (m, text) = run(
        topo,
        &format!("mode=region direct=1 words=1024 {region}"),
        1,
    );
    for want in [
        "committed",
        "direct ram-reads=",
        " exits=0",
        "direct xsavec ok",
        "direct avx ok",
        "direct ok",
    ] {
        assert!(text.contains(want), "'{want}' missing; serial:\n{text}");
    }
    // After the run the range is mapped (direct restored to on): one KVM slot over it.
    let base = m.cxl().unwrap().windows[0].base;
    assert!(
        m.slots().covering(base).is_some(),
        "a KVM slot maps the region; serial:\n{text}"
    );
    (m, text)
}

#[test]
fn one_way_region_runs_without_exits_and_keeps_mmio_written_bytes() {
    let (m, text) = direct(Topology::simple(1, 256 << 20, 4096, false), "");
    let state = m.memory_state();
    assert!(
        state.windows[0]
            .ranges
            .iter()
            .any(|r| r.mode == RangeMode::Linear),
        "{state}"
    );
    assert!(
        text.contains("direct mmio-writes=1024 exits=1024"),
        "{text}"
    );
}

#[test]
fn region_smaller_than_its_window() {
    let (m, _) = direct(Topology::simple(1, 1 << 30, 4096, false), "size=0x10000000");
    let state = m.memory_state();
    let r = &state.windows[0].ranges;
    assert_eq!(r.len(), 1, "{state}");
    assert_eq!(
        (r[0].mode, r[0].len),
        (RangeMode::Linear, 256 << 20),
        "{state}"
    );
}

#[test]
fn passthrough_host_bridge_region() {
    direct(Topology::simple(1, 256 << 20, 4096, true), "");
}

#[test]
fn persistent_device_file_holds_the_bytes_after_exit() {
    let dir = std::env::temp_dir().join(format!("cxlvm-direct-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pmem.img");
    let _ = std::fs::remove_file(&file);
    let topo = Topology::from_toml(&format!(
        "[[host_bridge]]\nid = \"hb0\"\nroot_ports = 1\n\
         [[device]]\nid = \"p0\"\nhost_bridge = \"hb0\"\nroot_port = 0\npersistent = \"256M\"\npersistent_file = \"{}\"\n\
         [[window]]\nid = \"w0\"\nsize = \"256M\"\ntargets = [\"hb0\"]\n",
        file.display()
    ))
    .unwrap();
    let (m, _) = direct(topo, "");
    let base = m.cxl().unwrap().windows[0].base;
    drop(m);
    // The guest wrote verify_pattern(hpa) at offsets k * stride (stride 4096 / 2 + 8) and XSAVEC /
    // AVX data over a few of them near +0x1000 / +0x2000; check words well away from those.
    let bytes = std::fs::read(&file).unwrap();
    let stride = 4096 / 2 + 8;
    let mut checked = 0;
    for k in 8..1024u64 {
        let off = k * stride;
        if (0x1000..0x3000).contains(&off) {
            continue;
        }
        let got = u64::from_le_bytes(bytes[off as usize..off as usize + 8].try_into().unwrap());
        assert_eq!(got, VERIFY_TAG | (base + off), "file offset {off:#x}");
        checked += 1;
    }
    assert!(checked > 900);
}

/// Interleaved regions: zero exits after commit; the guest proved the MMIO path and the direct
/// mapping see the same bytes; the host checks the placement in each device backing against the
/// interleave formula.
fn interleaved(devices: u8, gran: u64) {
    let size = u64::from(devices) * (256 << 20);
    let (m, text) = direct(
        Topology::simple(devices, 256 << 20, 4096, false),
        &format!("gran={gran} size={size:#x}"),
    );
    let state = m.memory_state();
    let r = &state.windows[0].ranges;
    assert!(
        r.iter().any(|r| r.mode == RangeMode::Interleaved),
        "{state}\n{text}"
    );
    let cxl = m.cxl().unwrap();
    let base = cxl.windows[0].base;
    let ways = u64::from(devices);
    let stride = gran / 2 + 8;
    for k in 16..1024u64 {
        let off = k * stride;
        if (0x1000..0x3000).contains(&off) {
            continue;
        }
        let chunk = off / gran;
        let dev = (chunk % ways) as usize;
        let dpa = (chunk / ways) * gran + off % gran;
        common::assert_verify_word(cxl, dev, dpa, base + off);
    }
}

#[test]
fn two_way_interleave_at_4k_and_16k_is_mapped() {
    interleaved(2, 4096);
    interleaved(2, 16384);
}

#[test]
fn four_way_interleave_at_4k_and_16k_is_mapped() {
    interleaved(4, 4096);
    interleaved(4, 16384);
}

#[test]
fn sub_page_granularity_is_one_region_store_at_ram_speed_and_correct() {
    for (devices, gran) in [(2u8, 256u64), (4, 256), (4, 1024), (2, 4096)] {
        let (m, text) = run(
            Topology::simple(devices, 256 << 20, 4096, false),
            &format!("mode=region direct=1 expect_direct=1 words=512 gran={gran}"),
            1,
        );
        assert!(text.contains("direct ok"), "{devices} x {gran}: {text}");
        let state = m.memory_state();
        let r = &state.windows[0].ranges;
        assert_eq!(r.len(), 1, "{state}");
        assert_eq!(
            r[0].mode,
            RangeMode::Interleaved,
            "{devices} x {gran}: {state}"
        );
        assert_eq!(r[0].mappings, 1, "one region store, one mapping: {state}");
        assert!(
            m.slots().covering(state.windows[0].base).is_some(),
            "one KVM slot covers the range"
        );
    }
}

#[test]
fn over_the_vma_budget_the_range_stays_mmio_and_correct() {
    let (mut cfg, cap) = config("cxl", "mode=region direct=1 expect_direct=0 words=512");
    cfg.cxl = Some(Topology::simple(2, 256 << 20, 4096, false));
    // A volatile interleave is one region store: one mapping, which a budget of 0 does not allow.
    cfg.vma_budget = Some(0);
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(text.contains("direct ok"), "{text}");
    let state = m.memory_state();
    let ranges = &state.windows[0].ranges;
    assert!(
        ranges.iter().all(|r| r.mode == RangeMode::Mmio) && !ranges.is_empty(),
        "{state}"
    );
    assert!(
        matches!(
            ranges[0].reason,
            Some(MmioReason::VmaBudget { needed: 1, left: 0 })
        ),
        "the reason is the budget, with its numbers: {state}"
    );
    assert!(m.slots().covering(state.windows[0].base).is_none());
}

/// Issue 12's stress: two vCPUs stream into a 2-way 256 B region (a region store) while a third
/// commits and uncommits another 2-way region whose granularity changes every iteration (its
/// bytes move between region stores each time, and the last word must be found where the new
/// geometry puts it), toggles direct mappings (the streamed region moves RAM → MMIO → RAM) and
/// resets a device.
#[test]
fn two_streams_survive_changing_geometries_toggles_and_resets() {
    let (_m, text) = run(
        Topology::simple(4, 256 << 20, 4096, false),
        "mode=stress ways=2 gran=256 regrid=1 iters=400 words=8192",
        3,
    );
    assert!(text.contains("stress ok"), "{text}");
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(field("streamers="), 2, "{text}");
    assert!(field("resets=") >= 4, "device resets: {text}");
    assert!(field("toggles=") >= 40, "direct toggles: {text}");
    // Every iteration but the first and those right after a reset found the previous word
    // where the new geometry puts it.
    assert!(field("moved-checks=") >= 390, "{text}");
}

#[test]
fn streaming_while_another_range_commits_and_uncommits_loses_nothing() {
    let (_m, text) = run(
        Topology::simple(2, 256 << 20, 4096, false),
        "mode=stress iters=1000",
        2,
    );
    assert!(text.contains("stress ok"), "{text}");
    let resets = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("resets="))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(resets >= 10, "the churn included device resets: {text}");
}
