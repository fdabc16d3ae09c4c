//! Real-KVM tests of the ACPI tables test guests get (docs/guest-abi.md, device kind 9): the
//! `acpi` guest finds the RSDP through the boot info, walks the XSDT verifying every checksum,
//! and checks that the CEDT, MCFG, MADT and SRAT describe exactly the platform in the boot
//! info; and it fails, naming the problem, when its copy of the tables is corrupted.

mod common;

use common::{boot, config};
use cxlvm_cxl::topology::Topology;
use cxlvm_vmm::Outcome;

/// Host bridges with UIDs 0 and 7 (2 and 1 root ports, a device on each), a 2-way modulo window
/// over both, a 1-way window on UID 7 and a 2-way XOR window over both.
const TOPOLOGY: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 2

[[host_bridge]]
id = "hb7"
uid = 7
root_ports = 1

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

[[device]]
id = "mem2"
host_bridge = "hb7"
root_port = 0
volatile = "256M"

[[window]]
id = "modulo"
size = "512M"
targets = ["hb0", "hb7"]
granularity = "4K"

[[window]]
id = "one"
size = "256M"
targets = ["hb7"]
granularity = "256"

[[window]]
id = "xor"
size = "1G"
targets = ["hb7", "hb0"]
granularity = "1K"
arithmetic = "xor"
"#;

/// Boots the `acpi` guest with `cmdline` on 2 vCPUs, RAM below and above 4 GiB, and the rich
/// topology; dumps the tables to `dump` if given.
fn run(cmdline: &str, dump: Option<&std::path::Path>) -> (cxlvm_vmm::Machine, Outcome, String) {
    let (mut cfg, cap) = config("acpi", cmdline);
    cfg.cxl = Some(Topology::from_toml(TOPOLOGY).unwrap());
    cfg.vcpus = 2;
    cfg.memory = (4 << 30) + (256 << 20);
    cfg.dump_acpi = dump.map(Into::into);
    let (m, r, text) = boot(cfg, &cap);
    (m, r.outcome, text)
}

#[test]
fn the_acpi_tables_describe_exactly_the_boot_info_platform() {
    let dir = std::env::temp_dir().join(format!("cxlvm-acpi-guest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (m, outcome, text) = run("", Some(&dir));
    assert_eq!(outcome, Outcome::Exit(0), "serial:\n{text}");
    for sig in [
        "XSDT", "FACP", "APIC", "MCFG", "SRAT", "SLIT", "CEDT", "DSDT",
    ] {
        assert!(
            text.contains(&format!("acpi table {sig} ")) && text.contains(" checksum=ok\n"),
            "{sig} walked:\n{text}"
        );
    }
    // Two vCPUs in the MADT and SRAT, the SRAT covering RAM below and above 4 GiB, both host
    // bridges, the three windows and the XOR window's CXIMS.
    assert!(
        text.contains(
            "acpi ok tables=8 cpus=2 lapic=0xfee00000 ioapic=0xfec00000 ecam=0xe0000000 segment=0 buses=0-255 srat_cpus=2 srat_memory=2 chbs=2 cfmws=3 cxims=1\n"
        ),
        "serial:\n{text}"
    );
    // --dump-acpi wrote the tables the guest read: each file equals guest memory at the
    // table's address (the RSDP first, at 0xe0000).
    let mut rsdp = [0u8; 36];
    m.ram().read(0xe_0000, &mut rsdp).unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(std::fs::read(dir.join("RSDP.dat")).unwrap(), rsdp);
    for line in text.lines().filter(|l| l.starts_with("acpi table ")) {
        let mut f = line.split_whitespace().skip(2);
        let sig = f.next().unwrap();
        let addr = f.next().unwrap().strip_prefix("addr=0x").unwrap();
        let addr = u64::from_str_radix(addr, 16).unwrap();
        let file = std::fs::read(dir.join(format!("{sig}.dat"))).unwrap();
        let mut mem = vec![0u8; file.len()];
        m.ram().read(addr, &mut mem).unwrap();
        assert_eq!(mem, file, "{sig} in guest memory = {sig}.dat");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupted_tables_make_the_guest_fail_naming_the_problem() {
    // A CEDT byte changed: its checksum no longer holds.
    let (_m, outcome, text) = run("tamper=checksum", None);
    assert_eq!(outcome, Outcome::Exit(4), "serial:\n{text}");
    assert!(
        text.contains("acpi fail CEDT at 0x") && text.contains(": checksum: bytes sum to 0x1\n"),
        "serial:\n{text}"
    );
    // The first CFMWS's first target changed, checksum fixed: the checksums pass, the
    // comparison with the boot info does not.
    let (_m, outcome, text) = run("tamper=target", None);
    assert_eq!(outcome, Outcome::Exit(5), "serial:\n{text}");
    assert!(
        text.contains("acpi mismatch cedt cfmws window=0 target[0]=1 boot=0\n")
            && text.contains("acpi differs mismatches=1\n"),
        "serial:\n{text}"
    );
}

#[test]
fn a_machine_without_cxl_has_no_ecam_in_its_tables() {
    let (mut cfg, cap) = config("acpi", "");
    cfg.vcpus = 1;
    let (_m, r, text) = boot(cfg, &cap);
    assert_eq!(r.outcome, Outcome::Exit(0), "serial:\n{text}");
    assert!(
        text.contains("acpi ok ") && text.contains(" chbs=0 cfmws=0 "),
        "serial:\n{text}"
    );
}
