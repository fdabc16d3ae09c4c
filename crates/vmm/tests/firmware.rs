//! Real-KVM tests of firmware-committed regions (`[[region]]`): the `cxl` guest's
//! `mode=firmware` finds the decoders committed and locked the way Linux reads them at boot,
//! assembles the regions from the registers alone, and uses them with zero exits (port 0x514)
//! from its very first access; the host checks where every written word landed against an
//! independent interleave formula.

mod common;

use common::{VERIFY_TAG, boot, config};
use cxlvm_cxl::topology::Topology;
use cxlvm_mapping::overlay::RangeMode;
use cxlvm_vmm::Outcome;

const MIB: u64 = 1 << 20;
const WORDS: u64 = 2048;
const STRIDE: u64 = 4104;

/// Boots `mode=firmware` over `toml`; checks the guest's region line (`expect`, the part after
/// `firmware region `), zero exits and the lock check. Returns the machine and the serial text.
fn run(toml: &str, lock: bool, expect: &str) -> (cxlvm_vmm::Machine, String) {
    let topo = Topology::from_toml(toml).unwrap();
    let (mut cfg, cap) = config(
        "cxl",
        &format!(
            "mode=firmware regions=1 lock={} words={WORDS} stride={STRIDE}",
            u8::from(lock)
        ),
    );
    cfg.cxl = Some(topo);
    cfg.memory = 128 << 20;
    let (m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    let line = format!("firmware region {expect}\n");
    assert!(text.contains(&line), "expected '{line}' in:\n{text}");
    assert!(
        text.contains(&format!(
            "firmware access regions=1 accesses={} exits_at_start=0 exits=0",
            2 * WORDS
        )),
        "{text}"
    );
    if lock {
        assert!(text.contains(" exits=0\nfirmware ok"), "{text}");
        assert!(text.contains("firmware lock decoders="), "{text}");
    }
    assert!(text.contains("firmware ok"), "{text}");
    (m, text)
}

/// Where word `k` of the guest's pass went: (device, DPA) by the interleave formula, devices
/// given by position with their region DPA base.
fn placement(k: u64, gran: u64, order: &[(usize, u64)]) -> (usize, u64) {
    let off = k * STRIDE;
    let ways = order.len() as u64;
    let chunk = off / gran;
    let (dev, dpa_base) = order[(chunk % ways) as usize];
    (dev, dpa_base + (chunk / ways) * gran + off % gran)
}

/// The region is mapped (one KVM slot at its base, the range direct) and every word is where
/// the formula says.
fn check(m: &cxlvm_vmm::Machine, base: u64, gran: u64, order: &[(usize, u64)], mode: RangeMode) {
    assert!(
        m.slots().covering(base).is_some(),
        "a KVM slot maps the region"
    );
    let state = m.memory_state();
    assert!(
        state
            .windows
            .iter()
            .flat_map(|w| &w.ranges)
            .any(|r| r.hpa == base && r.mode == mode),
        "{state}"
    );
    let cxl = m.cxl().unwrap();
    for k in 0..WORDS {
        let (dev, dpa) = placement(k, gran, order);
        common::assert_verify_word(cxl, dev, dpa, base + k * STRIDE);
    }
}

const HB1: &str = "[[host_bridge]]\nid = \"hb0\"\nroot_ports = 1\n";

fn dev(id: &str, hb: &str, port: u8, extra: &str) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\nhost_bridge = \"{hb}\"\nroot_port = {port}\nvolatile = \"256M\"\n{extra}"
    )
}

#[test]
fn one_way_region_is_committed_locked_and_mapped_before_the_first_instruction() {
    let toml = format!(
        "{HB1}{}[[window]]\nid = \"w0\"\nsize = \"512M\"\ntargets = [\"hb0\"]\n\
         [[region]]\nid = \"r0\"\nwindow = \"w0\"\ndevices = [\"mem0\"]\nsize = \"256M\"\n",
        dev("mem0", "hb0", 0, "")
    );
    let (m, _) = run(
        &toml,
        true,
        "window=0 base=0x10000000000 size=0x10000000 ways=1 gran=4096 devices=0 dpa=0x0 skip=0x0 locked=1",
    );
    check(&m, 1 << 40, 4096, &[(0, 0)], RangeMode::Linear);
}

#[test]
fn two_way_region_across_root_ports_at_4k() {
    let toml = format!(
        "[[host_bridge]]\nid = \"hb0\"\nroot_ports = 2\n{}{}\
         [[window]]\nid = \"w0\"\nsize = \"512M\"\ntargets = [\"hb0\"]\n\
         [[region]]\nid = \"r0\"\nwindow = \"w0\"\ndevices = [\"mem1\", \"mem0\"]\nsize = \"512M\"\ngranularity = \"4K\"\n",
        dev("mem0", "hb0", 0, ""),
        dev("mem1", "hb0", 1, "")
    );
    // Position 0 is mem1: the host bridge's target list is [1, 0].
    let (m, _) = run(
        &toml,
        true,
        "window=0 base=0x10000000000 size=0x20000000 ways=2 gran=4096 devices=1,0 dpa=0x0,0x0 skip=0x0,0x0 locked=1",
    );
    check(&m, 1 << 40, 4096, &[(1, 0), (0, 0)], RangeMode::Interleaved);
}

#[test]
fn two_way_region_across_two_host_bridges() {
    let toml = format!(
        "{HB1}[[host_bridge]]\nid = \"hb1\"\nroot_ports = 1\n{}{}\
         [[window]]\nid = \"w0\"\nsize = \"1G\"\ntargets = [\"hb0\", \"hb1\"]\ngranularity = \"4K\"\n\
         [[region]]\nid = \"r0\"\nwindow = \"w0\"\ndevices = [\"mem0\", \"mem1\"]\nsize = \"512M\"\nbase = \"0x10020000000\"\n",
        dev("mem0", "hb0", 0, ""),
        dev("mem1", "hb1", 0, "")
    );
    let (m, _) = run(
        &toml,
        true,
        "window=0 base=0x10020000000 size=0x20000000 ways=2 gran=4096 devices=0,1 dpa=0x0,0x0 skip=0x0,0x0 locked=1",
    );
    check(
        &m,
        (1 << 40) + 512 * MIB,
        4096,
        &[(0, 0), (1, 0)],
        RangeMode::Interleaved,
    );
}

#[test]
fn persistent_region_writes_land_in_the_persistent_file() {
    let dir = std::env::temp_dir().join(format!("cxlvm-firmware-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pmem.img");
    let _ = std::fs::remove_file(&file);
    // 256 MiB volatile (unused) + 256 MiB persistent: the decoder skips the volatile DPA.
    let toml = format!(
        "{HB1}{}[[window]]\nid = \"w0\"\nsize = \"256M\"\ntargets = [\"hb0\"]\n\
         [[region]]\nid = \"p0\"\nwindow = \"w0\"\ndevices = [\"mem0\"]\nsize = \"256M\"\npersistent = true\nlock = false\n",
        dev(
            "mem0",
            "hb0",
            0,
            &format!(
                "persistent = \"256M\"\npersistent_file = \"{}\"\n",
                file.display()
            )
        )
    );
    let (m, _) = run(
        &toml,
        false,
        "window=0 base=0x10000000000 size=0x10000000 ways=1 gran=4096 devices=0 dpa=0x10000000 skip=0x10000000 locked=0",
    );
    let base = 1u64 << 40;
    let state = m.memory_state();
    assert!(
        state.windows[0]
            .ranges
            .iter()
            .any(|r| r.hpa == base && r.mode == RangeMode::Linear),
        "{state}"
    );
    drop(m);
    let bytes = std::fs::read(&file).unwrap();
    for k in 0..WORDS {
        // DPA = 256 MiB + offset; file offset = DPA - volatile capacity.
        let off = (k * STRIDE) as usize;
        let got = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap());
        assert_eq!(
            got,
            VERIFY_TAG | (base + k * STRIDE),
            "file offset {off:#x}"
        );
    }
}
