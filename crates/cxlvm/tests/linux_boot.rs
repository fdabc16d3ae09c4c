//! Linux's early boot as the oracle: Debian's packaged 6.12 kernel (fetched from Debian's archive
//! by scripts/debian-kernel.sh, cached in target/linux) boots through PVH on a CXL topology, and
//! the test asserts on the kernel's own log: the memory map, every ACPI table with no checksum
//! complaint, SRAT CPU and memory affinity, a NUMA node per CFMWS, the CPUs and IOAPIC from the
//! MADT. On a host whose KVM emulates guest ring 0 (kvm_pvm) the kernel meets instructions that
//! emulator rejects (INT3 in `int3_selftest` and text patching, FWAIT, LDMXCSR/STMXCSR, ...):
//! cxlvm completes them (`cxlvm-emulate`), so the kernel must run past them — through the
//! alternatives self-test, bringing up the second CPU and the memory allocator — with cxlvm's
//! own count showing INT3 completions. The test then stops cxlvm itself.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// The cmdline the research note found necessary under kvm_pvm (FPU setup dies without it).
/// `nowatchdog`: ring 0 runs at ~1 M instructions/s under this host's emulator, which the soft
/// lockup detector would report as a stuck CPU.
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 clearcpuid=xsave,cx16,bmi1,bmi2,smap,fsgsbase,pcid,invpcid,rdpid,popcnt,erms,fsrm,rdseed,clflushopt,clwb,ssse3,sse4_1,sse4_2 nopcid nofsgsbase mitigations=off init_on_alloc=0 cryptomgr.notests=1 nowatchdog loglevel=8";

const TOPOLOGY: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 2
[[host_bridge]]
id = "hb1"
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
host_bridge = "hb1"
root_port = 0
volatile = "256M"
[[window]]
id = "w0"
size = "1G"
targets = ["hb0"]
[[window]]
id = "w1"
size = "2G"
targets = ["hb0", "hb1"]
granularity = "4K"
"#;

/// The log lines the kernel must print, in no particular order.
const EXPECTED: &[&str] = &[
    // The memory map cxlvm gave: RAM, the ACPI area, RAM from 1 MiB to the end (512 MiB).
    "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    "BIOS-e820: [mem 0x00000000000e0000-0x00000000000fffff] ACPI data",
    "BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable",
    "BIOS-e820: [mem 0x00000000e0000000-0x00000000efffffff] reserved",
    // Every table, where cxlvm put it.
    "ACPI: RSDP 0x00000000000E0000",
    "ACPI: XSDT 0x",
    "ACPI: FACP 0x",
    "ACPI: DSDT 0x",
    "ACPI: APIC 0x",
    "ACPI: MCFG 0x",
    "ACPI: SRAT 0x",
    "ACPI: SLIT 0x",
    "ACPI: CEDT 0x",
    // SRAT: boot RAM on node 0; the two CFMWS become two more nodes (memoryless at boot).
    "ACPI: SRAT: Node 0 PXM 0 [mem 0x00000000-0x1fffffff]",
    "Initmem setup node 1 as memoryless",
    "Initmem setup node 2 as memoryless",
    "nr_node_ids:3",
    // MADT: the IOAPIC, the timer override, two CPUs.
    "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23",
    "ACPI: INT_SRC_OVR (bus 0 bus_irq 0 global_irq 2 high edge)",
    "Allowing 2 present CPUs plus 0 hotplug CPUs",
];

/// Kernel complaints that must not appear.
/// Lines printed after the points where the kernel stopped before cxlvm completed instructions
/// (`int3_selftest` runs while alternatives are applied, before these).
const PAST: &[&str] = &[
    "Freeing SMP alternatives memory",
    "smp: Brought up 1 node, 2 CPUs",
    "Memory: ",
];

const FORBIDDEN: &[&str] = &[
    "Incorrect checksum",
    "ACPI BIOS Error",
    "ACPI Error",
    "Call Trace",
    "BUG:",
    "WARNING:",
];

#[test]
fn debian_kernel_early_boot_sees_the_platform_cxlvm_describes() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test boots Linux and needs /dev/kvm, which is missing"
    );
    let vmlinux = common::kernel_script("debian-kernel.sh")
        .pop()
        .expect("the script prints the vmlinux path");
    let dir = std::env::temp_dir().join(format!("cxlvm-linux-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topo = dir.join("topology.toml");
    std::fs::write(&topo, TOPOLOGY).unwrap();
    let serial = dir.join("serial.log");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cxlvm"))
        .args(["run", "--kernel"])
        .arg(&vmlinux)
        .args(["--memory", "512M", "--vcpus", "2", "--config"])
        .arg(&topo)
        .args(["--cmdline", CMDLINE, "--timeout", "1500", "--serial-file"])
        .arg(&serial)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cxlvm runs");
    // Wait for every expected line and every line past the old stopping points, or for cxlvm
    // to end (it must not: that would be an instruction it could not complete, or a crash).
    let wanted: Vec<&str> = EXPECTED.iter().chain(PAST).copied().collect();
    let (ended, all_seen) = common::wait_for_log_lines(
        &mut child,
        &serial,
        &wanted,
        started,
        Duration::from_secs(1500),
    );
    eprintln!("lines seen: {all_seen} after {:?}", started.elapsed());
    if ended.is_none() {
        // cxlvm's own count of completions: the SIGUSR1 memory dump, then stop it.
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-USR1", &pid]).status();
        std::thread::sleep(Duration::from_secs(2));
        let _ = child.kill();
    }
    let (log, err) = common::finish(&mut child, &serial);
    for l in EXPECTED {
        assert!(
            log.contains(l),
            "kernel log lacks '{l}':\n{log}\ncxlvm: {err}"
        );
    }
    for f in FORBIDDEN {
        assert!(!log.contains(f), "kernel log has '{f}':\n{log}");
    }
    if let Some(status) = ended {
        panic!("cxlvm ended by itself ({status:?}) before the kernel got that far: {err}\n{log}");
    }
    for l in PAST {
        assert!(
            log.contains(l),
            "kernel log lacks '{l}' (did not run past the old stopping points):\n{log}\ncxlvm: {err}"
        );
    }
    let completed = err
        .lines()
        .find(|l| l.starts_with("instructions completed by cxlvm:"))
        .unwrap_or_else(|| panic!("no completion count in the SIGUSR1 dump: {err}"));
    assert!(completed.contains("int3 "), "{completed}");
    assert!(
        completed.contains("#bp "),
        "INT3 became #BP in the guest: {completed}"
    );
    eprintln!("{completed}");
}
