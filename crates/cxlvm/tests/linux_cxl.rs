//! Linux's own CXL drivers as the oracle (issue 11): the minimal test kernel
//! (`scripts/test-kernel.sh`: Debian's linux-source-6.12 with `scripts/test-kernel.config`, CXL,
//! DAX and kmem built in, cached in target/linux) boots with a spinning `/init` on a platform
//! where cxlvm, playing firmware, committed a 2-way region at 4 KiB over two devices that keep
//! free capacity. The test asserts on the kernel's own log (with the CXL and DAX drivers' debug
//! output): the CXL root and host-bridge port, `_OSC`, each memdev probed with its capacity and
//! its mailbox, the endpoint decoders, the region assembled with its base, size, ways and
//! granularity, the DAX region handed to kmem and a second memory node built — and no warning,
//! BUG, call trace or CXL error. It stops cxlvm as soon as the last awaited line appears.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 clearcpuid=xsave,cx16,bmi1,bmi2,smap,fsgsbase,pcid,invpcid,rdpid,popcnt,erms,fsrm,rdseed,clflushopt,clwb,ssse3,sse4_1,sse4_2 nopcid nofsgsbase mitigations=off nowatchdog loglevel=8 dyndbg=\"file drivers/cxl/* +p; file drivers/dax/* +p\"";

/// One host bridge, two root ports, two 512 MiB devices; a 2 GiB window at 4 KiB; firmware
/// commits a 512 MiB 2-way region (256 MiB of each device), leaving 256 MiB of each free.
const TOPOLOGY: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 2
[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "512M"
[[device]]
id = "mem1"
host_bridge = "hb0"
root_port = 1
volatile = "512M"
[[window]]
id = "w0"
size = "2G"
targets = ["hb0"]
granularity = "4K"
[[region]]
id = "r0"
window = "w0"
devices = ["mem0", "mem1"]
size = "512M"
"#;

/// Lines Linux prints when it accepts the model (the window is the first CXL window cxlvm
/// places, at 1 TiB).
const EXPECTED: &[&str] = &[
    "ACPI: CEDT 0x",
    "_OSC: OS now controls [PCIeCapability]",
    "cxl_acpi ACPI0017:00: root0 added",
    "pci0000:10: host supports CXL",
    "cxl port1: found HDM decoder capability",
    "cxl_port port1: probe: 0",
    "cxl_pci 0000:11:00.0: Mailbox payload sized 2048",
    "cxl_pci 0000:12:00.0: Mailbox payload sized 2048",
    "cxl_pci 0000:11:00.0: DPA(ram): [mem 0x00000000-0x1fffffff",
    "cxl_pci 0000:12:00.0: DPA(ram): [mem 0x00000000-0x1fffffff",
    "cxl_mem mem0: probe: 0",
    "cxl_mem mem1: probe: 0",
    "range: 0x10000000000-0x1001fffffff iw: 2 ig: 4096",
    "cxl_acpi ACPI0017:00: decoder0.0: created region0",
    "construct_region region0 res: [mem 0x10000000000-0x1001fffffff",
    "cxl region0: region sort successful",
    "dax0.0: alloc range[0]: 0x0000010000000000:0x000001001fffffff",
    "Built 2 zonelists",
    "cxl_dax_region dax_region0: probe: 0",
    "cxl_region region0: probe: 0",
    "Run /init as init process",
];

const FORBIDDEN: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Call Trace",
    "Kernel panic",
    "cxl_mem: probe of",
    "cxl_pci: probe of",
    "failed to",
];

fn test_kernel() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/test-kernel.sh"))
        .env("CXLVM_KERNEL_DIR", root.join("target/linux"))
        .output()
        .expect("bash runs scripts/test-kernel.sh");
    assert!(
        out.status.success(),
        "scripts/test-kernel.sh failed (it needs Debian's archive): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut last = text.lines().rev();
    let initrd = PathBuf::from(last.next().expect("initramfs path"));
    let vmlinux = PathBuf::from(last.next().expect("vmlinux path"));
    (vmlinux, initrd)
}

#[test]
fn linux_cxl_drivers_assemble_and_online_a_firmware_region() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test boots Linux and needs /dev/kvm, which is missing"
    );
    let (vmlinux, initrd) = test_kernel();
    let dir = std::env::temp_dir().join(format!("cxlvm-linux-cxl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topo = dir.join("topology.toml");
    std::fs::write(&topo, TOPOLOGY).unwrap();
    let serial = dir.join("serial.log");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cxlvm"))
        .args(["run", "--kernel"])
        .arg(&vmlinux)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--memory", "512M", "--vcpus", "1", "--config"])
        .arg(&topo)
        .args(["--cmdline", CMDLINE, "--timeout", "900", "--serial-file"])
        .arg(&serial)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cxlvm runs");
    let (ended, all_seen) = common::wait_for_log_lines(
        &mut child,
        &serial,
        EXPECTED,
        started,
        Duration::from_secs(900),
    );
    eprintln!("all lines seen: {all_seen} after {:?}", started.elapsed());
    if ended.is_none() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if let Some(status) = ended {
        panic!("cxlvm ended by itself ({status:?}) before Linux got that far: {err}\n{log}");
    }
    for l in EXPECTED {
        assert!(
            log.contains(l),
            "kernel log lacks '{l}':\n{log}\ncxlvm: {err}"
        );
    }
    for f in FORBIDDEN {
        assert!(!log.contains(f), "kernel log has '{f}':\n{log}");
    }
    // Where the time went, from the kernel's own timestamps.
    for mark in [
        "root0 added",
        "created region0",
        "dax_region0: probe: 0",
        "Run /init",
    ] {
        if let Some(l) = log.lines().find(|l| l.contains(mark)) {
            eprintln!("{}", l.trim());
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
