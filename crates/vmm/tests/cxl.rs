//! Real-KVM tests of the CXL model: test guests at CPL3 do what Linux's drivers do (enumerate ECAM,
//! find DVSECs and register blocks, run the probe-time mailbox commands, program endpoint then
//! host-bridge decoders, poll Committed) and the host checks where the bytes landed against an
//! independent formula.

mod common;

use common::{boot, config};
use cxlvm_cxl::topology::Topology;
use cxlvm_vmm::Outcome;

fn toml(hbs: &[u8], gran: u64) -> Topology {
    let mut s = String::new();
    let mut n = 0;
    for (h, &ports) in hbs.iter().enumerate() {
        s += &format!("[[host_bridge]]\nid = \"hb{h}\"\nroot_ports = {ports}\n");
        for p in 0..ports {
            s += &format!(
                "[[device]]\nid = \"mem{n}\"\nhost_bridge = \"hb{h}\"\nroot_port = {p}\nvolatile = \"256M\"\n"
            );
            n += 1;
        }
    }
    let targets: Vec<String> = (0..hbs.len()).map(|h| format!("\"hb{h}\"")).collect();
    s += &format!(
        "[[window]]\nid = \"w0\"\nsize = \"{}M\"\ntargets = [{}]\ngranularity = {gran}\n",
        256 * n,
        targets.join(", ")
    );
    Topology::from_toml(&s).unwrap()
}

/// Device index of each region position, as the guest's default order: position p → host bridge
/// p % hbs, that bridge's (p / hbs)-th root port; devices are numbered in topology order.
fn position_order(hbs: &[u8]) -> Vec<usize> {
    let firsts: Vec<usize> = hbs
        .iter()
        .scan(0usize, |acc, &n| {
            let f = *acc;
            *acc += usize::from(n);
            Some(f)
        })
        .collect();
    let ways = hbs.iter().map(|&n| usize::from(n)).sum::<usize>();
    (0..ways)
        .map(|p| firsts[p % hbs.len()] + p / hbs.len())
        .collect()
}

/// Runs `cxl mode=region` with verify over a fresh machine and checks every written word in the
/// device backings against the independent interleave formula; also that nothing else was
/// written (the precheck writes before commit must not have reached any device).
fn region(topo: Topology, hbs: &[u8], gran: u64, extra: &str) {
    let words = 256u64;
    let (mut cfg, cap) = config(
        "cxl",
        &format!("mode=region precheck=1 verify=1 words={words} gran={gran} {extra}"),
    );
    cfg.cxl = Some(topo);
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(
        text.contains("precheck ok") && text.contains("committed") && text.contains("verify ok"),
        "serial:\n{text}"
    );
    let cxl = m.cxl().unwrap();
    let order = position_order(hbs);
    let ways = order.len() as u64;
    let base = cxl.windows[0].base;
    let stride = gran / 2 + 8;
    let mut expected_per_device = vec![0u64; order.len()];
    for k in 0..words {
        let off = k * stride;
        let hpa = base + off;
        let chunk = off / gran;
        let dev = order[(chunk % ways) as usize];
        let dpa = (chunk / ways) * gran + off % gran;
        common::assert_verify_word(cxl, dev, dpa, hpa);
        expected_per_device[dev] += 1;
    }
    // Nothing else reached any device (the precheck's writes before commit included).
    for (d, mem) in cxl.memories.iter().enumerate() {
        let span = (words * stride).div_ceil(ways) + gran;
        let mut buf = vec![0u8; span as usize];
        assert!(mem.read(0, &mut buf), "mem{d} DPA 0..{span:#x}");
        let nonzero = buf.chunks(8).filter(|w| w.iter().any(|&x| x != 0)).count() as u64;
        assert_eq!(
            nonzero, expected_per_device[d],
            "mem{d} holds exactly the words routed to it"
        );
    }
}

#[test]
fn one_way_region_reaches_the_device_at_the_right_dpa() {
    for gran in [256, 4096, 16384] {
        region(Topology::simple(1, 256 << 20, 4096, false), &[1], gran, "");
    }
}

#[test]
fn passthrough_host_bridge_region() {
    region(Topology::simple(1, 256 << 20, 4096, true), &[1], 4096, "");
}

#[test]
fn two_and_four_way_interleave_across_root_ports() {
    for gran in [256, 4096, 16384] {
        region(Topology::simple(2, 256 << 20, 4096, false), &[2], gran, "");
        region(Topology::simple(4, 256 << 20, 4096, false), &[4], gran, "");
    }
}

#[test]
fn two_way_interleave_across_host_bridges() {
    for gran in [256, 4096, 16384] {
        region(toml(&[1, 1], gran), &[1, 1], gran, "");
    }
}

#[test]
fn four_way_interleave_across_host_bridges_and_root_ports() {
    // 2 HBs x 2 RPs needs HB granularity 2 x region granularity, so 16 KiB is not encodable
    // there; 4 HBs x 1 RP covers 16 KiB.
    for gran in [256, 4096] {
        region(toml(&[2, 2], gran), &[2, 2], gran, "");
    }
    for gran in [256, 4096, 16384] {
        region(toml(&[1, 1, 1, 1], gran), &[1, 1, 1, 1], gran, "");
    }
}

#[test]
fn uncommit_returns_the_window_to_unclaimed() {
    region(
        Topology::simple(2, 256 << 20, 4096, false),
        &[2],
        4096,
        "uncommit=1 reread=1",
    );
}

#[test]
fn enumeration_and_probe_like_linux() {
    let dir = std::env::temp_dir().join(format!("cxlvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topo = Topology::from_toml(&format!(
        r#"
[[host_bridge]]
id = "hb0"
root_ports = 2
[[host_bridge]]
id = "hb1"
root_ports = 1
passthrough = true
[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "256M"
[[device]]
id = "mem1"
host_bridge = "hb0"
root_port = 1
volatile = "256M"
persistent = "256M"
persistent_file = "{0}/pmem1.img"
lsa_file = "{0}/lsa1.img"
[[device]]
id = "mem2"
host_bridge = "hb1"
root_port = 0
persistent = "512M"
persistent_file = "{0}/pmem2.img"
[[window]]
id = "w0"
size = "1G"
targets = ["hb0", "hb1"]
granularity = "4K"
"#,
        dir.display()
    ))
    .unwrap();
    // A label already in the LSA file: the first probe reads it, writes its own test label, reads
    // that back through the mailbox and restores what it read (so the file must hold ours again);
    // a second probe with lsa_keep=1 leaves its label, which must then be in the file.
    let label = *b"existing-label!!";
    let mut lsa = vec![0u8; 128 << 10];
    lsa[..16].copy_from_slice(&label);
    std::fs::write(dir.join("lsa1.img"), &lsa).unwrap();
    for mode in ["enumerate", "probe"] {
        let (mut cfg, cap) = config("cxl", &format!("mode={mode}"));
        cfg.cxl = Some(topo.clone());
        let (_m, r, text) = boot(cfg, &cap);
        assert_eq!(r.outcome, Outcome::Exit(0), "{mode}; serial:\n{text}");
        if mode == "enumerate" {
            assert!(text.contains("enumerate ok functions=6 type3=3"), "{text}");
            assert!(
                text.contains("type=root-port port=1 secondary=12"),
                "{text}"
            );
            assert!(
                text.contains("hb uid=1 chbcr=0xd0110000 root_bus=20 hdm=no"),
                "{text}"
            );
            assert!(text.contains("class=050210"), "{text}");
        } else {
            assert!(
                text.contains("probe mem1 ok volatile=268435456 persistent=268435456 lsa=131072"),
                "{text}"
            );
            assert!(
                text.contains("probe mem2 ok volatile=0 persistent=536870912 lsa=131072"),
                "{text}"
            );
            assert!(text.contains("probe ok devices=3"), "{text}");
            assert!(
                text.contains(
                    "opcodes=0100,0101,0102,0103,0200,0300,0301,0400,0401,4000,4100,4102,4103,4200"
                ),
                "{text}"
            );
        }
    }
    let lsa = std::fs::read(dir.join("lsa1.img")).unwrap();
    assert_eq!(
        &lsa[..16],
        &label,
        "Get LSA read the file and Set LSA wrote it back"
    );
    let (mut cfg, cap) = config("cxl", "mode=probe lsa_keep=1");
    cfg.cxl = Some(topo);
    let (_m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    let lsa = std::fs::read(dir.join("lsa1.img")).unwrap();
    assert_eq!(
        &lsa[..16],
        b"cxlvm-lsa-probe!",
        "the guest's Set LSA reached the file"
    );
}

#[test]
fn random_register_writes_from_the_guest_never_hurt_the_vmm() {
    let (mut cfg, cap) = config("cxl", "mode=fuzz ops=20000 seed=7");
    cfg.cxl = Some(toml(&[2, 2], 4096));
    let (_m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(text.contains("fuzz ok ops=20000"), "{text}");
}

#[test]
fn xor_window_selects_host_bridges_by_parity() {
    let gran = 4096u64;
    let mut topo = toml(&[1, 1], gran);
    topo.windows[0].arithmetic = cxlvm_cxl::topology::Arithmetic::Xor;
    // Strides over 64 MiB so that both bits of the XOR map (12 and 25) vary.
    let (words, stride) = (512u64, 131_080u64);
    let (mut cfg, cap) = config(
        "cxl",
        &format!("mode=region precheck=1 verify=1 words={words} stride={stride}"),
    );
    cfg.cxl = Some(topo);
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    let cxl = m.cxl().unwrap();
    let base = cxl.windows[0].base;
    // docs/guest-abi.md: 2 ways (k = 1) at granularity encoding g = 4: M0 = bit 12 | bit 25.
    let m0 = 1u64 << 12 | 1u64 << 25;
    let mut differs_from_modulo = 0;
    for k in 0..words {
        let hpa = base + k * stride;
        let dev = ((hpa & m0).count_ones() % 2) as usize;
        let off = hpa - base;
        differs_from_modulo += usize::from(dev != ((off >> 12) & 1) as usize);
        let dpa = ((off >> 13) << 12) | (off & (gran - 1));
        common::assert_verify_word(cxl, dev, dpa, hpa);
    }
    assert!(
        differs_from_modulo > 100,
        "the sample exercises the XOR part ({differs_from_modulo})"
    );
}

#[test]
fn dropping_a_machine_releases_its_cxl_platform() {
    common::require_kvm();
    let mut cfg = cxlvm_vmm::MachineConfig::new(cxlvm_test_guests::path("hello"));
    cfg.cxl = Some(Topology::simple(2, 256 << 20, 4096, false));
    cfg.serial = cxlvm_vmm::SerialOut::Null;
    cfg.scratch_window = Some(2 << 20);
    let m = cxlvm_vmm::Machine::build(cfg).unwrap();
    let space = std::sync::Arc::downgrade(m.space());
    let scratch = std::sync::Arc::downgrade(m.scratch().unwrap());
    let fabric = std::sync::Arc::downgrade(&m.cxl().unwrap().fabric);
    let backing =
        std::sync::Arc::downgrade(m.cxl().unwrap().memories[0].volatile.as_ref().unwrap());
    let overlays = std::sync::Arc::downgrade(&m.cxl().unwrap().overlays);
    drop(m);
    assert!(
        fabric.upgrade().is_none(),
        "the fabric outlived its machine (reference cycle)"
    );
    assert!(
        overlays.upgrade().is_none(),
        "the overlay manager outlived its machine"
    );
    assert!(
        backing.upgrade().is_none(),
        "device memory outlived its machine"
    );
    assert!(
        space.upgrade().is_none(),
        "the address space outlived its machine"
    );
    assert!(
        scratch.upgrade().is_none(),
        "the scratch window outlived its machine"
    );
}
