//! CXL configuration errors through the binary: one line naming the item, exit status 2, nothing
//! started.

use std::path::PathBuf;
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cxlvm-cli-cxl-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxlvm"))
        .args(["run", "--guest"])
        .arg(cxlvm_test_guests::path("hello"))
        .args(args)
        .output()
        .expect("cxlvm runs")
}

fn with_topology(name: &str, toml: &str) -> Output {
    let p = tmp(name);
    std::fs::write(&p, toml).unwrap();
    run(&["--config", p.to_str().unwrap()])
}

fn user_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected:\n{err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(
        o.stdout.is_empty(),
        "nothing may run: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

const HB: &str = "[[host_bridge]]\nid = \"hb0\"\nroot_ports = 2\n";
const DEV: &str =
    "[[device]]\nid = \"mem0\"\nhost_bridge = \"hb0\"\nroot_port = 0\nvolatile = \"256M\"\n";

fn window(extra: &str) -> String {
    format!("{HB}{DEV}[[window]]\nid = \"w0\"\nsize = \"1G\"\ntargets = [\"hb0\"]\n{extra}")
}

#[test]
fn window_errors() {
    user_error(
        &with_topology("misaligned.toml", &window("base = \"0x10000001000\"\n")),
        "window 'w0': base 0x10000001000 is not 256 MiB aligned",
    );
    user_error(
        &with_topology(
            "size.toml",
            &format!("{HB}{DEV}[[window]]\nid = \"w0\"\nsize = \"100M\"\ntargets = [\"hb0\"]\n"),
        ),
        "window 'w0': size 100 MiB",
    );
    user_error(
        &with_topology("gran.toml", &window("granularity = \"32K\"\n")),
        "window 'w0': granularity 32768",
    );
    user_error(
        &with_topology("gran2.toml", &window("granularity = 100\n")),
        "window 'w0': granularity 100",
    );
    user_error(
        &with_topology(
            "target.toml",
            &format!("{HB}{DEV}[[window]]\nid = \"w0\"\nsize = \"1G\"\ntargets = [\"hbX\"]\n"),
        ),
        "window 'w0': target 'hbX' is not a host bridge",
    );
    user_error(
        &with_topology("low.toml", &window("base = \"0x10000000\"\n")),
        "window 'w0': [0x10000000, 0x50000000) is outside the window area",
    );
    let two = format!(
        "{}[[window]]\nid = \"w1\"\nsize = \"1G\"\nbase = \"0x10000000000\"\ntargets = [\"hb0\"]\n",
        window("base = \"0x10010000000\"\n")
    );
    user_error(&with_topology("overlap.toml", &two), "overlaps window 'w0'");
    // 5 host bridges in one window: 5 ways cannot be encoded.
    let mut five = String::new();
    for i in 0..5 {
        five += &format!("[[host_bridge]]\nid = \"h{i}\"\nroot_ports = 1\n");
    }
    five += "[[window]]\nid = \"w5\"\nsize = \"5G\"\ntargets = [\"h0\", \"h1\", \"h2\", \"h3\", \"h4\"]\n";
    user_error(
        &with_topology("ways.toml", &five),
        "window 'w5': 5 targets: interleave ways must be",
    );
}

#[test]
fn device_and_host_bridge_errors() {
    user_error(
        &with_topology(
            "cap.toml",
            &format!(
                "{HB}[[device]]\nid = \"m\"\nhost_bridge = \"hb0\"\nroot_port = 0\nvolatile = \"300M\"\n"
            ),
        ),
        "device 'm': volatile capacity 300 MiB is not a multiple of 256 MiB",
    );
    user_error(
        &with_topology(
            "rp.toml",
            &format!(
                "{HB}[[device]]\nid = \"m\"\nhost_bridge = \"hb0\"\nroot_port = 4\nvolatile = \"256M\"\n"
            ),
        ),
        "device 'm': root_port 4 does not exist",
    );
    user_error(
        &with_topology(
            "pmem.toml",
            &format!(
                "{HB}[[device]]\nid = \"m\"\nhost_bridge = \"hb0\"\nroot_port = 0\npersistent = \"256M\"\n"
            ),
        ),
        "device 'm': persistent capacity needs persistent_file",
    );
    user_error(
        &with_topology(
            "nofile.toml",
            &format!(
                "{HB}[[device]]\nid = \"m\"\nhost_bridge = \"hb0\"\nroot_port = 0\npersistent = \"256M\"\npersistent_file = \"/nonexistent-dir/pmem.img\"\n"
            ),
        ),
        "device 'm': persistent_file /nonexistent-dir/pmem.img:",
    );
    let small = tmp("small.img");
    std::fs::write(&small, [1u8; 4096]).unwrap();
    user_error(
        &with_topology(
            "small.toml",
            &format!(
                "{HB}[[device]]\nid = \"m\"\nhost_bridge = \"hb0\"\nroot_port = 0\npersistent = \"256M\"\npersistent_file = \"{}\"\n",
                small.display()
            ),
        ),
        "device 'm': persistent_file",
    );
    user_error(
        &with_topology(
            "pt.toml",
            "[[host_bridge]]\nid = \"hb0\"\nroot_ports = 2\npassthrough = true\n",
        ),
        "host bridge 'hb0': passthrough needs exactly one root port, has 2",
    );
    user_error(
        &with_topology("dup.toml", &format!("{HB}{HB}")),
        "host bridge 'hb0': defined twice",
    );
}

#[test]
fn file_and_syntax_errors() {
    user_error(
        &run(&["--config", "/nonexistent/topology.toml"]),
        "cannot read topology file /nonexistent/topology.toml",
    );
    user_error(
        &with_topology(
            "field.toml",
            "[[host_bridge]]\nid = \"hb0\"\nroot_ports = 1\ncolour = \"blue\"\n",
        ),
        "unknown field `colour`",
    );
    user_error(&with_topology("syntax.toml", "[[host_bridge]\n"), "line 1:");
    user_error(
        &run(&["--cxl-devices", "2", "--cxl-size", "100M"]),
        "device 'mem0': volatile capacity 100 MiB",
    );
    user_error(&run(&["--cxl-devices", "0"]), "--cxl-devices 0");
    user_error(
        &run(&["--cxl-passthrough"]),
        "--cxl-passthrough needs --cxl-devices 1",
    );
    user_error(
        &run(&["--cxl-devices", "2", "--cxl-passthrough"]),
        "passthrough needs exactly one root port",
    );
}

fn run_cxl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxlvm"))
        .args(["-v", "run", "--guest"])
        .arg(cxlvm_test_guests::path("cxl"))
        .args(args)
        .output()
        .expect("cxlvm runs")
}

#[test]
fn over_budget_range_stays_mmio_and_is_reported_once_at_the_default_level() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test boots a guest and needs /dev/kvm"
    );
    let json = tmp("budget.json");
    // No -v: the default log level must say that the committed range is slow.
    let o = Command::new(env!("CARGO_BIN_EXE_cxlvm"))
        .args(["run", "--guest"])
        .arg(cxlvm_test_guests::path("cxl"))
        .args([
            "--cxl-devices",
            "2",
            // A volatile interleave is one region store: one mapping, which a budget of 0
            // does not allow.
            "--vma-budget",
            "0",
            "--mtree-json",
            json.to_str().unwrap(),
            "--cmdline",
            "mode=region direct=1 expect_direct=0 words=64",
        ])
        .output()
        .expect("cxlvm runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("vm.max_map_count"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning for the one range:\n{err}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("needs 1 host mappings"),
        "{err}"
    );
    // The reason is typed in the JSON dump, with its numbers.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = &v["windows"][0]["ranges"][0];
    assert_eq!(r["mode"], "mmio", "{r}");
    assert_eq!(r["reason"]["kind"], "vma_budget", "{r}");
    assert_eq!(r["reason"]["needed"], 1, "{r}");
    assert_eq!(r["reason"]["left"], 0, "{r}");
}

#[test]
fn mode_changes_are_logged_and_the_memory_state_is_dumped_as_json() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test boots a guest and needs /dev/kvm"
    );
    let json = tmp("mtree.json");
    let o = run_cxl(&[
        "--cxl-devices",
        "1",
        "--mtree",
        "--mtree-json",
        json.to_str().unwrap(),
        "--cmdline",
        "mode=region verify=1 words=64 uncommit=1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    // The switch to a direct mapping and back, each with the window and range.
    assert!(
        err.contains(
            "window 0 [0x10000000000, 0x10010000000): MMIO -> RAM (linear: device 0 DPA 0x0)"
        ),
        "{err}"
    );
    assert!(
        err.contains("window 0 [0x10000000000, 0x10010000000): RAM -> MMIO"),
        "{err}"
    );
    // The text dump and the JSON agree on the window's exits and ranges.
    assert!(
        err.contains("CXL window 0 [0x10000000000, 0x10010000000):"),
        "{err}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let w = &v["windows"][0];
    assert_eq!(w["base"], 0x100_0000_0000u64);
    assert!(w["exits"].as_u64().is_some());
    assert!(
        v["flat_view"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["name"] == "cfmw0.decode"))
    );
    assert!(v["slots"].as_array().is_some_and(|a| !a.is_empty()));
}

/// hb0 (2 root ports): mem0 (512M, 1 decoder), mem1; hb1 (1 root port): mem2. w0 over hb0, w1
/// over hb0 and hb1, 4 KiB; then `regions`.
fn with_regions(name: &str, regions: &str) -> Output {
    let topo = format!(
        "{HB}[[host_bridge]]\nid = \"hb1\"\nroot_ports = 1\n\
         [[device]]\nid = \"mem0\"\nhost_bridge = \"hb0\"\nroot_port = 0\nvolatile = \"512M\"\ndecoders = 1\n\
         [[device]]\nid = \"mem1\"\nhost_bridge = \"hb0\"\nroot_port = 1\nvolatile = \"256M\"\n\
         [[device]]\nid = \"mem2\"\nhost_bridge = \"hb1\"\nroot_port = 0\nvolatile = \"256M\"\n\
         [[window]]\nid = \"w0\"\nsize = \"1G\"\ntargets = [\"hb0\"]\n\
         [[window]]\nid = \"w1\"\nsize = \"1G\"\ntargets = [\"hb0\", \"hb1\"]\n{regions}"
    );
    with_topology(name, &topo)
}

fn region(id: &str, window: &str, devices: &str, size: &str, extra: &str) -> String {
    format!(
        "[[region]]\nid = \"{id}\"\nwindow = \"{window}\"\ndevices = [{devices}]\nsize = \"{size}\"\n{extra}"
    )
}

#[test]
fn region_errors() {
    // The base topology with a good region in each window runs.
    let ok = with_regions(
        "r-ok.toml",
        &format!(
            "{}{}",
            region("a", "w0", "\"mem1\"", "256M", ""),
            region("b", "w1", "\"mem0\", \"mem2\"", "512M", "")
        ),
    );
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let cases = [
        (
            "r-window.toml",
            region("r", "nope", "\"mem0\"", "256M", ""),
            "region 'r': window 'nope' does not exist",
        ),
        (
            "r-device.toml",
            region("r", "w0", "\"mem9\"", "256M", ""),
            "region 'r': device 'mem9' does not exist",
        ),
        (
            "r-under.toml",
            region("r", "w0", "\"mem2\"", "256M", ""),
            "region 'r': device 'mem2' is under host bridge 'hb1', which is not a target of window 'w0'",
        ),
        (
            "r-fit.toml",
            region("r", "w0", "\"mem0\"", "2G", ""),
            "region 'r': [0x10000000000, 0x10080000000) does not fit window 'w0'",
        ),
        (
            "r-capacity.toml",
            region("r", "w0", "\"mem1\"", "512M", ""),
            "region 'r': device 'mem1' has 256 MiB of its volatile capacity left, the region needs 512 MiB on each device",
        ),
        (
            "r-persistent.toml",
            region("r", "w0", "\"mem1\"", "256M", "persistent = true\n"),
            "region 'r': device 'mem1' has none of its persistent capacity left",
        ),
        (
            "r-ways.toml",
            region("r", "w1", "\"mem0\"", "256M", ""),
            "region 'r': 1 device(s) over the 2 host bridges of window 'w1'",
        ),
        (
            "r-position.toml",
            region("r", "w1", "\"mem2\", \"mem0\"", "512M", ""),
            "region 'r': device 'mem2' at position 0 is under host bridge 'hb1', but window 'w1' sends position 0 to host bridge 'hb0'",
        ),
        (
            "r-gran.toml",
            region(
                "r",
                "w1",
                "\"mem0\", \"mem2\"",
                "512M",
                "granularity = \"8K\"\n",
            ),
            "region 'r': granularity 8192 B differs from the 4096 B of window 'w1'",
        ),
        (
            "r-gran2.toml",
            region("r", "w0", "\"mem0\"", "256M", "granularity = \"32K\"\n"),
            "region 'r': granularity 32768 must be a power of two from 256 B to 16 KiB",
        ),
        (
            "r-size.toml",
            region("r", "w1", "\"mem0\", \"mem2\"", "256M", ""),
            "region 'r': size 256 MiB is not a non-zero multiple of 256 MiB x 2 devices",
        ),
        (
            "r-base.toml",
            region(
                "r",
                "w1",
                "\"mem0\", \"mem2\"",
                "512M",
                "base = \"0x10050000000\"\n",
            ),
            "region 'r': base 0x10050000000 is not the base 0x10040000000 of window 'w1' plus a multiple of 512 MiB",
        ),
        (
            "r-overlap.toml",
            format!(
                "{}{}",
                region("r1", "w0", "\"mem0\"", "256M", ""),
                region("r2", "w0", "\"mem1\"", "256M", "base = \"0x10000000000\"\n")
            ),
            "region 'r2': [0x10000000000, 0x10010000000) overlaps region 'r1'",
        ),
        (
            "r-decoders.toml",
            format!(
                "{}{}",
                region("r1", "w0", "\"mem0\"", "256M", ""),
                region("r2", "w0", "\"mem0\"", "256M", "")
            ),
            "region 'r2': device 'mem0' has 1 HDM decoder(s), fewer than the regions through it",
        ),
        (
            "r-twice.toml",
            format!(
                "{}{}",
                region("r1", "w0", "\"mem0\"", "256M", ""),
                region("r1", "w0", "\"mem1\"", "256M", "")
            ),
            "region 'r1': defined twice",
        ),
    ];
    for (name, regions, needle) in cases {
        user_error(&with_regions(name, &regions), needle);
    }
    user_error(
        &with_regions(
            "r-field.toml",
            &region("r", "w0", "\"mem0\"", "256M", "ways = 2\n"),
        ),
        "unknown field `ways`",
    );
}

#[test]
fn dump_acpi_writes_a_test_guests_tables() {
    let dir = tmp("acpi-dump");
    let _ = std::fs::remove_dir_all(&dir);
    let o = run(&[
        "--cxl-devices",
        "2",
        "--vcpus",
        "2",
        "--dump-acpi",
        dir.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // hello lists the tables entry (kind 9) and the ACPI memory.
    assert!(out.contains("kind=acpi-tables base=0xe0000 "), "{out}");
    assert!(
        out.contains("base=0xe0000 size=0x20000 kind=acpi\n"),
        "{out}"
    );
    for sig in [
        "RSDP", "XSDT", "FACP", "DSDT", "APIC", "MCFG", "SRAT", "SLIT", "CEDT",
    ] {
        let f = dir.join(format!("{sig}.dat"));
        assert!(f.is_file(), "{sig}.dat missing");
    }
    let rsdp = std::fs::read(dir.join("RSDP.dat")).unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    // A directory that cannot be created: one line, status 2, nothing runs.
    let file = tmp("acpi-not-a-dir");
    std::fs::write(&file, "").unwrap();
    user_error(
        &run(&["--dump-acpi", file.join("sub").to_str().unwrap()]),
        "--dump-acpi",
    );
}
