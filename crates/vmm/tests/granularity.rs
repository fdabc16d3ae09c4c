//! Interleave at every granularity (issue 12), on real KVM with the `cxl` test guest at CPL3:
//! 2-, 3-, 4-, 6-, 8-, 12- and 16-way regions at 256 B, 1 KiB, 4 KiB and 16 KiB (all 27
//! combinations the HDM encodings allow: a 16-way region at 16 KiB needs host-bridge decoders at
//! 64 KiB), across root ports and host bridges, modulo and (for 2 and 4 host bridges) XOR. For each one the guest
//! writes its pattern through the MMIO path, turns direct mappings on and reads it back with
//! **zero exits**, runs XSAVEC and an AVX store inside the region (instructions KVM cannot
//! emulate on MMIO), and reads everything back through the MMIO path again. The host then finds
//! every pattern word at the device and DPA an independent formula gives (modulo) or the decode
//! graph gives (XOR), through the storage map, and checks that the range is one KVM slot over
//! one host mapping.

mod common;

use common::{boot, config};
use cxlvm_cxl::graph::Target;
use cxlvm_cxl::topology::Topology;
use cxlvm_mapping::overlay::RangeMode;
use cxlvm_vmm::Outcome;

const DEVICE: u64 = 256 << 20;

/// `hbs` host bridges with `ports` root ports each, one 256 MiB volatile device per port, one
/// window over the host bridges at `gran` (the host-bridge interleave granularity of a region).
fn topology(hbs: usize, ports: usize, gran: u64, xor: bool) -> Topology {
    let mut t = String::new();
    for h in 0..hbs {
        t += &format!("[[host_bridge]]\nid = \"hb{h}\"\nroot_ports = {ports}\n");
    }
    for h in 0..hbs {
        for p in 0..ports {
            t += &format!(
                "[[device]]\nid = \"m{h}_{p}\"\nhost_bridge = \"hb{h}\"\nroot_port = {p}\nvolatile = \"256M\"\n"
            );
        }
    }
    let targets: Vec<String> = (0..hbs).map(|h| format!("\"hb{h}\"")).collect();
    t += &format!(
        "[[window]]\nid = \"w0\"\nsize = {}\ntargets = [{}]\ngranularity = {gran}\narithmetic = \"{}\"\n",
        DEVICE * (hbs * ports) as u64,
        targets.join(", "),
        if xor { "xor" } else { "modulo" }
    );
    Topology::from_toml(&t).unwrap_or_else(|e| panic!("{e}\n{t}"))
}

/// The HPA offsets the guest's pattern covers (`words` words, `stride` apart).
fn offsets(words: u64, stride: u64, size: u64) -> impl Iterator<Item = u64> {
    (0..words)
        .map(move |k| k * stride)
        .take_while(move |o| o + 8 <= size)
}

fn case(hbs: usize, ports: usize, gran: u64, xor: bool) {
    let ways = (hbs * ports) as u64;
    let what = format!(
        "{ways}-way ({hbs} host bridge(s) x {ports} port(s)) at {gran} B{}",
        if xor { ", XOR" } else { "" }
    );
    let (words, stride) = (1024u64, gran / 2 + 8);
    let (mut cfg, cap) = config(
        "cxl",
        &format!("mode=region direct=1 words={words} stride={stride} gran={gran}"),
    );
    cfg.cxl = Some(topology(hbs, ports, gran, xor));
    cfg.memory = 128 << 20;
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "{what}; serial:\n{text}");
    for want in [" exits=0", "direct xsavec ok", "direct avx ok", "direct ok"] {
        assert!(
            text.contains(want),
            "{what}: '{want}' missing; serial:\n{text}"
        );
    }
    let state = m.memory_state();
    let ranges = &state.windows[0].ranges;
    assert_eq!(ranges.len(), 1, "{what}: {state}");
    assert_eq!(ranges[0].mode, RangeMode::Interleaved, "{what}: {state}");
    assert_eq!(ranges[0].mappings, 1, "{what}: one host mapping: {state}");
    assert_eq!(
        ranges[0].len,
        DEVICE * ways,
        "{what}: the whole region: {state}"
    );
    let cxl = m.cxl().unwrap();
    let base = cxl.windows[0].base;
    assert!(m.slots().covering(base).is_some(), "{what}: one KVM slot");
    // Every pattern word where the decoders say: modulo by the formula (position p of the
    // guest's default order is host bridge p mod hbs, its port p / hbs), XOR by the graph.
    let graph = cxl.fabric.graph();
    // The guest's XSAVEC area and AVX store (region offsets 0x1000..0x2020) replace the pattern
    // there; the guest itself checked them on both paths.
    let saved = 0x1000..0x2020;
    for off in offsets(words, stride, DEVICE * ways).filter(|o| !saved.contains(o)) {
        let hpa = base + off;
        let (dev, dpa) = if xor {
            match graph.route(hpa) {
                Target::Device { device, dpa } => (device, dpa),
                t => panic!("{what}: HPA {hpa:#x} routes to {t:?}"),
            }
        } else {
            let chunk = off / gran;
            let p = (chunk % ways) as usize;
            (
                (p % hbs) * ports + p / hbs,
                chunk / ways * gran + off % gran,
            )
        };
        common::assert_verify_word(cxl, dev, dpa, hpa);
    }
}

#[test]
fn every_way_count_at_every_granularity_runs_at_ram_speed_and_keeps_every_byte() {
    common::require_kvm();
    // (host bridges, root ports each): the window interleaves host bridges at the region
    // granularity; their decoders interleave root ports at the granularity × the window's
    // power-of-2 ways (Linux's rule: a window of 3 host bridges counts as 1), which must
    // be at most 16 KiB (the HDM encoding).
    let layouts: &[(u64, usize, usize)] = &[
        (2, 2, 1),
        (3, 3, 1),
        (4, 2, 2),
        (6, 3, 2),
        (8, 2, 4),
        (12, 3, 4),
        (16, 4, 4),
    ];
    let hb_gran = |gran: u64, hbs: usize| {
        gran * if hbs.is_power_of_two() {
            hbs as u64
        } else {
            hbs as u64 / 3
        }
    };
    for gran in [256u64, 1024, 4096, 16384] {
        for &(ways, hbs, ports) in layouts {
            let (hbs, ports) = if hb_gran(gran, hbs) > 16384 {
                // Then only root ports can interleave, and a host-bridge decoder takes at most
                // 8 and no factor 3 (its capability has no 3/6/12-way bit): a 16 KiB region of
                // 16 ways has no encoding.
                if ways > 8 || !ways.is_power_of_two() {
                    continue;
                }
                (1, ways as usize)
            } else {
                (hbs, ports)
            };
            case(hbs, ports, gran, false);
        }
    }
}

#[test]
fn xor_interleave_at_every_granularity_runs_at_ram_speed_and_keeps_every_byte() {
    common::require_kvm();
    for gran in [256u64, 1024, 4096] {
        for (hbs, ports) in [(2, 1), (4, 1), (2, 2), (4, 2)] {
            if gran * hbs as u64 > 16384 {
                continue;
            }
            case(hbs, ports, gran, true);
        }
    }
}

/// What `vm.max_map_count` allows by default: stitching a granule per mapping could map neither
/// region below (262 144 and 4 194 304 granules); region stores need one mapping each.
const DEFAULT_MAX_MAP_COUNT: u64 = 65_530;

#[test]
fn a_gib_at_256_bytes_and_16_gib_at_4_kib_fit_the_default_mapping_limit() {
    common::require_kvm();
    let toml = r#"
[[host_bridge]]
id = "hb0"
root_ports = 2
[[host_bridge]]
id = "hb1"
root_ports = 4
[[device]]
id = "a0"
host_bridge = "hb0"
root_port = 0
volatile = "512M"
[[device]]
id = "a1"
host_bridge = "hb0"
root_port = 1
volatile = "512M"
[[device]]
id = "b0"
host_bridge = "hb1"
root_port = 0
volatile = "4G"
[[device]]
id = "b1"
host_bridge = "hb1"
root_port = 1
volatile = "4G"
[[device]]
id = "b2"
host_bridge = "hb1"
root_port = 2
volatile = "4G"
[[device]]
id = "b3"
host_bridge = "hb1"
root_port = 3
volatile = "4G"
[[window]]
id = "w0"
size = "1G"
targets = ["hb0"]
[[window]]
id = "w1"
size = "16G"
targets = ["hb1"]
[[region]]
id = "small"
window = "w0"
devices = ["a0", "a1"]
size = "1G"
granularity = 256
[[region]]
id = "large"
window = "w1"
devices = ["b0", "b1", "b2", "b3"]
size = "16G"
granularity = "4K"
"#;
    let (mut cfg, cap) = config(
        "cxl",
        "mode=firmware regions=2 lock=1 words=4096 stride=4104",
    );
    cfg.cxl = Some(Topology::from_toml(toml).unwrap());
    cfg.memory = 128 << 20;
    // The budget a default host leaves at most (the whole limit, nothing else mapped).
    cfg.vma_budget = Some(DEFAULT_MAX_MAP_COUNT);
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    let state = m.memory_state();
    for (w, len) in [(0usize, 1u64 << 30), (1, 16 << 30)] {
        let ranges = &state.windows[w].ranges;
        assert_eq!(ranges.len(), 1, "{state}");
        assert_eq!(
            ranges[0].mode,
            RangeMode::Interleaved,
            "window {w}: {state}"
        );
        assert_eq!(ranges[0].len, len, "{state}");
        assert!(
            ranges[0].mappings <= 4,
            "window {w}: {} host mappings: {state}",
            ranges[0].mappings
        );
    }
}
