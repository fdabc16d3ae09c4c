//! Linux's own CXL drivers as the oracle (issue 11): the minimal test kernel
//! (`scripts/test-kernel.sh`: Debian's linux-source-6.12 with `scripts/test-kernel.config`, CXL,
//! DAX, kmem and LIBNVDIMM built in, cached in target/linux) boots with a spinning `/init` on two
//! platforms where cxlvm, playing firmware, committed a region:
//!
//! - one host bridge, two root ports, two devices with free capacity, a 2-way region at 4 KiB;
//! - two host bridges under a 2-way XOR window with a region across them, and a persistent
//!   device with a label storage area behind a passthrough host bridge.
//!
//! Each test asserts on the kernel's own log (with the CXL, DAX and NVDIMM drivers' debug
//! output): the CXL root and a port per host bridge, `_OSC`, each memdev probed with its capacity
//! through its mailbox, the decoders, the region assembled with its base, size, ways and
//! granularity, the DAX region handed to kmem — then sends a serial break and `m` (magic SysRq,
//! show memory) and checks from the kernel's per-node report that the region became a NUMA node
//! of its size. No warning, BUG, call trace or CXL error may appear. Each run stops as soon as
//! the last awaited line appears; the two boots run in parallel.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 clearcpuid=xsave,cx16,bmi1,bmi2,smap,fsgsbase,pcid,invpcid,rdpid,popcnt,erms,fsrm,rdseed,clflushopt,clwb,ssse3,sse4_1,sse4_2 nopcid nofsgsbase mitigations=off nowatchdog loglevel=8 dyndbg=\"file drivers/cxl/* +p; file drivers/dax/* +p; file drivers/nvdimm/* +p\"";

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

/// Two host bridges, one device each, under a 2 GiB window that XOR-interleaves them at 4 KiB
/// (with its CXIMS); firmware commits a 1 GiB region across both. A third, passthrough host
/// bridge (one root port, no HDM decoders) holds a 256 MiB persistent device with a label
/// storage area, under a window of its own.
const TOPOLOGY_XOR: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 1
[[host_bridge]]
id = "hb1"
root_ports = 1
[[host_bridge]]
id = "hb2"
root_ports = 1
passthrough = true
[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "512M"
[[device]]
id = "mem1"
host_bridge = "hb1"
root_port = 0
volatile = "512M"
[[device]]
id = "pmem0"
host_bridge = "hb2"
root_port = 0
persistent = "256M"
persistent_file = "pmem0.img"
lsa_file = "pmem0.lsa"
[[window]]
id = "w0"
size = "2G"
targets = ["hb0", "hb1"]
granularity = "4K"
arithmetic = "xor"
[[window]]
id = "w1"
size = "1G"
targets = ["hb2"]
[[region]]
id = "r0"
window = "w0"
devices = ["mem0", "mem1"]
size = "1G"
"#;

/// What Linux says when it accepts [`TOPOLOGY_XOR`]: each window its own node, a port per
/// host bridge (the XOR pair with HDM decoders at 8 KiB = 4 KiB × 2 host bridges, the third a
/// passthrough port), the region assembled across both bridges, the persistent device handed to
/// LIBNVDIMM, whose DIMM driver read the whole 128 KiB label area through the mailbox.
const EXPECTED_XOR: &[&str] = &[
    "cxl_acpi ACPI0017:00: root0 added",
    "acpi ACPI0016:00: _OSC: OS now controls [PCIeCapability]",
    "acpi ACPI0016:01: _OSC: OS now controls [PCIeCapability]",
    "acpi ACPI0016:02: _OSC: OS now controls [PCIeCapability]",
    "decode range: node: 1 range [0x10000000000 - 0x1007fffffff]",
    "decode range: node: 2 range [0x10080000000 - 0x100bfffffff]",
    "pci0000:10: host supports CXL",
    "pci0000:20: host supports CXL",
    "pci0000:30: host supports CXL",
    "cxl_port port1: decoder1.0: range: 0x10000000000-0x1003fffffff iw: 1 ig: 8192",
    "cxl_port port2: decoder2.0: range: 0x10000000000-0x1003fffffff iw: 1 ig: 8192",
    "cxl_port port3: Fallback to passthrough decoder",
    "cxl_pci 0000:11:00.0: DPA(ram): [mem 0x00000000-0x1fffffff",
    "cxl_pci 0000:21:00.0: DPA(ram): [mem 0x00000000-0x1fffffff",
    "cxl_pci 0000:31:00.0: DPA(pmem): [mem 0x00000000-0x0fffffff",
    "cxl_port endpoint4: decoder4.0: range: 0x10000000000-0x1003fffffff iw: 2 ig: 4096",
    "cxl_port endpoint5: decoder5.0: range: 0x10000000000-0x1003fffffff iw: 2 ig: 4096",
    "cxl_acpi ACPI0017:00: decoder0.0: created region0",
    "construct_region region0 res: [mem 0x10000000000-0x1003fffffff flags 0x200] iw: 2 ig: 4096",
    "cxl region0: region sort successful",
    "cxl region0: pci0000:10:port1 iw: 1 ig: 8192",
    "cxl region0: pci0000:20:port2 iw: 1 ig: 8192",
    "dax0.0: alloc range[0]: 0x0000010000000000:0x000001003fffffff",
    "nvdimm nmem0: config data size: 131072",
    "cxl_nvdimm pmem2: probe: 0",
    "cxl_mem mem0: probe: 0",
    "cxl_mem mem1: probe: 0",
    "cxl_mem mem2: probe: 0",
    "cxl_dax_region dax_region0: probe: 0",
    "cxl_region region0: probe: 0",
    "Run /init as init process",
];

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

/// Never anywhere in the log.
const FORBIDDEN: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Call Trace",
    "Kernel panic",
    "probe of",
    "failed with error",
    "Mailbox operation had an error",
    "Unknown NUMA node",
];

/// A line of Linux's CXL, NVDIMM or DAX code (or about a CXL host bridge or the CXL root).
const CXL_LINE: &[&str] = &["cxl", "nvdimm", "nd_bus", "dax", "ACPI0016", "ACPI0017"];

/// Words of an error on such a line.
const ERROR_WORDS: &[&str] = &[
    "error",
    "Error",
    "fail",
    "Fail",
    "unsupported",
    "not supported",
];

/// Debug lines with error words that name what cxlvm's model leaves out, on purpose, and that
/// Linux works without (docs/linux.md, "What Linux says about the model"):
const KNOWN_GAPS: &[&str] = &[
    // The Type-3 devices have no MSI/MSI-X: the mailbox is polled, events are not signalled.
    "Failed to alloc irq vectors: -22",
    // No SRAT Generic Port affinity or HMAT entries for host bridges: no performance data.
    "Failed to get generic port perf coordinates.",
    // The CXL command sets Linux knows but does not drive (as on real devices).
    "unsupported by driver",
    // The FADT says the virtual PCIe links have no ASPM (IAPC_BOOT_ARCH bit 4), on purpose.
    "FADT indicates ASPM is unsupported",
];

/// CXL lines with error words that are not known gaps.
fn cxl_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| CXL_LINE.iter().any(|m| l.contains(m)))
        .filter(|l| ERROR_WORDS.iter().any(|w| l.contains(w)))
        .filter(|l| !KNOWN_GAPS.iter().any(|g| l.contains(g)))
        .collect()
}

/// The test kernel and its initramfs (`scripts/test-kernel.sh` prints their paths last).
fn test_kernel() -> (PathBuf, PathBuf) {
    let mut paths = common::kernel_script("test-kernel.sh");
    let initrd = paths.pop().expect("initramfs path");
    let vmlinux = paths.pop().expect("vmlinux path");
    (vmlinux, initrd)
}

/// One kernel boot: a topology, the lines Linux must print for it, and the memory node its
/// firmware region must become.
struct Boot {
    name: &'static str,
    topology: &'static str,
    expected: &'static [&'static str],
    /// The NUMA node the firmware region is onlined as, and its size in KiB (Linux's `present`).
    cxl_node: NodeSize,
}

struct NodeSize {
    node: u32,
    kib: u64,
}

/// The SysRq `m` report ends with this line.
const SHOW_MEM_END: &str = "pages reserved";

/// Boots `boot` until every expected line appeared, then asks the kernel for its per-node memory
/// report over the serial console (a break, then `m`: magic SysRq "show memory") and checks the
/// CXL node's size. Returns the kernel log.
fn run(boot: &Boot) -> String {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test boots Linux and needs /dev/kvm, which is missing"
    );
    let (vmlinux, initrd) = test_kernel();
    let dir = std::env::temp_dir().join(format!(
        "cxlvm-linux-cxl-{}-{}",
        boot.name,
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let topo = dir.join("topology.toml");
    std::fs::write(&topo, boot.topology).unwrap();
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
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cxlvm runs");
    let deadline = Duration::from_secs(900);
    let (mut ended, all_seen) =
        common::wait_for_log_lines(&mut child, &serial, boot.expected, started, deadline);
    eprintln!(
        "[{}] all lines seen: {all_seen} after {:?}",
        boot.name,
        started.elapsed()
    );
    let booted = started.elapsed();
    if all_seen {
        // Ctrl-A b: cxlvm's console escape for a break; then the SysRq key.
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"\x01bm").expect("console input");
        stdin.flush().unwrap();
        let (e, _) =
            common::wait_for_log_lines(&mut child, &serial, &[SHOW_MEM_END], started, deadline);
        ended = e;
        eprintln!(
            "[{}] SysRq m answered in {:?}",
            boot.name,
            started.elapsed() - booted
        );
    }
    if ended.is_none() {
        let _ = child.kill();
    }
    let (log, err) = common::finish(&mut child, &serial);
    if let Some(status) = ended {
        panic!("cxlvm ended by itself ({status:?}) before Linux got that far: {err}\n{log}");
    }
    for l in boot.expected {
        assert!(
            log.contains(l),
            "[{}] kernel log lacks '{l}':\n{log}\ncxlvm: {err}",
            boot.name
        );
    }
    for f in FORBIDDEN {
        assert!(
            !log.contains(f),
            "[{}] kernel log has '{f}':\n{log}",
            boot.name
        );
    }
    let errors = cxl_errors(&log);
    assert!(
        errors.is_empty(),
        "[{}] CXL errors in the kernel log: {errors:#?}",
        boot.name
    );
    let sizes = present_kib_per_node(&log);
    let want = &boot.cxl_node;
    assert_eq!(
        sizes.get(&want.node),
        Some(&want.kib),
        "[{}] node {} should hold the region's {} KiB (per-node present memory from SysRq m: {sizes:?}):\n{log}",
        boot.name,
        want.node,
        want.kib
    );
    eprintln!("[{}] present KiB per node: {sizes:?}", boot.name);
    // Where the time went, from the kernel's own timestamps.
    for mark in [
        "root0 added",
        "created region0",
        "dax_region0: probe: 0",
        "Run /init",
        "sysrq: Show Memory",
    ] {
        if let Some(l) = log.lines().find(|l| l.contains(mark)) {
            eprintln!("[{}] {}", boot.name, l.trim());
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    log
}

/// Sums the `present:` memory of every zone line of the SysRq `m` report
/// ("Node N Zone free:…kB … present:…kB …"), per node.
fn present_kib_per_node(log: &str) -> BTreeMap<u32, u64> {
    let mut sizes = BTreeMap::new();
    let report = match log.find("sysrq: Show Memory") {
        Some(at) => &log[at..],
        None => return sizes,
    };
    for line in report.lines() {
        let Some(rest) = line.split("Node ").nth(1) else {
            continue;
        };
        let Some((node, rest)) = rest.split_once(' ') else {
            continue;
        };
        let (Ok(node), Some(present)) = (node.parse::<u32>(), rest.split(" present:").nth(1))
        else {
            continue;
        };
        if !rest.contains(" free:") {
            continue;
        }
        if let Some(kib) = present
            .split("kB")
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            *sizes.entry(node).or_insert(0) += kib;
        }
    }
    sizes
}

#[test]
fn linux_cxl_drivers_assemble_an_xor_region_across_host_bridges_and_read_a_label_area() {
    run(&Boot {
        name: "xor-pmem",
        topology: TOPOLOGY_XOR,
        expected: EXPECTED_XOR,
        cxl_node: NodeSize {
            node: 1,
            kib: 1 << 20,
        },
    });
}

#[test]
fn linux_cxl_drivers_assemble_and_online_a_firmware_region() {
    run(&Boot {
        name: "one-bridge",
        topology: TOPOLOGY,
        expected: EXPECTED,
        cxl_node: NodeSize {
            node: 1,
            kib: 512 << 10,
        },
    });
}
