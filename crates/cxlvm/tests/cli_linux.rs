//! `cxlvm run --kernel`: boot protocol, power registers, console, ACPI dump and input errors,
//! with tiny PVH kernels written here (32-bit ring-0 code that does one thing), so the checks
//! take milliseconds. A real Linux kernel boots in tests/linux_boot.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{cxlvm, require_kvm, stderr, user_error};

fn tmp(name: &str) -> PathBuf {
    common::tmp("cli-linux", name)
}

const LOAD: u64 = 0x20_0000;

/// An x86-64 ELF whose one segment (`code`, at 2 MiB) is entered through a Xen PVH note.
fn pvh_kernel(name: &str, code: &[u8], with_note: bool) -> PathBuf {
    let note: Vec<u8> = if with_note {
        [
            &4u32.to_le_bytes()[..],
            &8u32.to_le_bytes(),
            &18u32.to_le_bytes(),
            b"Xen\0",
            &LOAD.to_le_bytes(),
        ]
        .concat()
    } else {
        Vec::new()
    };
    let phnum: u16 = if with_note { 2 } else { 1 };
    let data_off = 64 + 56 * u64::from(phnum);
    let code_off = data_off + note.len() as u64;
    let mut b = vec![0u8; 64];
    b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    b[16..18].copy_from_slice(&2u16.to_le_bytes());
    b[18..20].copy_from_slice(&62u16.to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&LOAD.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&phnum.to_le_bytes());
    let ph = |ty: u32, off: u64, addr: u64, len: u64| {
        [
            &ty.to_le_bytes()[..],
            &7u32.to_le_bytes(),
            &off.to_le_bytes(),
            &addr.to_le_bytes(),
            &addr.to_le_bytes(),
            &len.to_le_bytes(),
            &len.to_le_bytes(),
            &4u64.to_le_bytes(),
        ]
        .concat()
    };
    b.extend(ph(1, code_off, LOAD, code.len() as u64));
    if with_note {
        b.extend(ph(4, data_off, 0, note.len() as u64));
    }
    b.extend(&note);
    b.extend(code);
    let p = tmp(name);
    std::fs::write(&p, b).unwrap();
    p
}

/// 32-bit code: `out imm8 value to port`, then spin.
fn out_then_spin(port: u16, value: u8) -> Vec<u8> {
    let mut c = vec![0xb0, value]; // mov al, value
    c.extend([0x66, 0xba]); // mov dx, port
    c.extend(port.to_le_bytes());
    c.push(0xee); // out dx, al
    c.extend([0xeb, 0xfe]); // jmp $
    c
}

fn run_kernel(kernel: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", "--kernel", kernel.to_str().unwrap()];
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout", "60"]);
    }
    args.extend(extra);
    cxlvm(&args)
}

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
host_bridge = "hb1"
root_port = 0
volatile = "256M"
[[window]]
id = "w0"
size = "512M"
targets = ["hb0", "hb1"]
granularity = "4K"
"#;

#[test]
fn poweroff_ends_with_status_0_and_reset_with_status_3() {
    require_kvm();
    // Linux's poweroff: SLP_TYP 5 | SLP_EN to the FADT's sleep control register (0x600).
    let k = pvh_kernel("poweroff.elf", &out_then_spin(0x600, 0x34), true);
    let o = run_kernel(&k, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The reset register (0xcf9, value 6).
    let k = pvh_kernel("reset.elf", &out_then_spin(0xcf9, 0x06), true);
    let o = run_kernel(&k, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // A sleep request that is not S5 does not stop the machine.
    let k = pvh_kernel("s3.elf", &out_then_spin(0x600, (3 << 2) | 0x20), true);
    let o = run_kernel(&k, &["--timeout", "2"]);
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
}

#[test]
fn the_console_is_com1() {
    require_kvm();
    let k = pvh_kernel(
        "hello.elf",
        &[
            out_then_spin(0x3f8, b'L')[..7].to_vec(),
            out_then_spin(0x600, 0x34),
        ]
        .concat(),
        true,
    );
    let o = run_kernel(&k, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "L");
}

#[test]
fn acpi_tables_are_dumped_and_iasl_decodes_each_without_complaint() {
    require_kvm();
    let topo = tmp("acpi-topo.toml");
    std::fs::write(&topo, TOPOLOGY).unwrap();
    let dir = tmp("acpi-dump");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let k = pvh_kernel("acpi.elf", &out_then_spin(0x600, 0x34), true);
    let o = run_kernel(
        &k,
        &[
            "--vcpus",
            "2",
            "--memory",
            "512M",
            "--config",
            topo.to_str().unwrap(),
            "--dump-acpi",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for sig in [
        "RSDP", "XSDT", "FACP", "DSDT", "APIC", "MCFG", "SRAT", "SLIT", "CEDT",
    ] {
        assert!(
            dir.join(format!("{sig}.dat")).is_file(),
            "{sig}.dat missing"
        );
    }
    for sig in ["XSDT", "FACP", "DSDT", "APIC", "MCFG", "SRAT", "SLIT"] {
        let f = dir.join(format!("{sig}.dat"));
        let out = Command::new("iasl")
            .arg("-d")
            .arg(&f)
            .current_dir(&dir)
            .output()
            .expect("iasl (acpica-tools) must be installed: ./test.sh installs it");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl -d {sig}: {text}");
        let lower = text.to_lowercase();
        assert!(
            !lower.contains("error") && !lower.contains("warning"),
            "iasl -d {sig}: {text}"
        );
        let dsl = std::fs::read_to_string(dir.join(format!("{sig}.dsl"))).unwrap();
        match sig {
            // Two host bridges with their UIDs.
            "DSDT" => {
                assert_eq!(dsl.matches("\"ACPI0016\"").count(), 2, "{dsl}");
                assert!(dsl.contains("\"ACPI0017\""), "{dsl}");
            }
            // One Local APIC per vCPU.
            "APIC" => assert_eq!(dsl.matches("Processor Local APIC").count(), 2, "{dsl}"),
            _ => {}
        }
    }
}

#[test]
fn kernel_input_errors_are_one_line() {
    let text = tmp("not-a-kernel");
    std::fs::write(&text, "hello").unwrap();
    user_error(
        &cxlvm(&["run", "--kernel", text.to_str().unwrap()]),
        &["neither an ELF vmlinux nor a bzImage"],
    );
    user_error(
        &cxlvm(&["run", "--kernel", "/nonexistent/vmlinux"]),
        &["cannot read kernel /nonexistent/vmlinux"],
    );
    let no_note = pvh_kernel("no-note.elf", &out_then_spin(0x600, 0x34), false);
    user_error(
        &cxlvm(&["run", "--kernel", no_note.to_str().unwrap()]),
        &["without a Xen PVH entry note"],
    );
    let k = pvh_kernel("ok.elf", &out_then_spin(0x600, 0x34), true);
    let ks = k.to_str().unwrap();
    user_error(
        &cxlvm(&["run", "--kernel", ks, "--initrd", "/nonexistent/initrd"]),
        &["initrd /nonexistent/initrd"],
    );
    require_kvm();
    let big = tmp("big-initrd");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(80 << 20).unwrap();
    user_error(
        &cxlvm(&[
            "run",
            "--kernel",
            ks,
            "--memory",
            "64M",
            "--initrd",
            big.to_str().unwrap(),
        ]),
        &["initrd", "use more --memory"],
    );
    // A kernel that loads beyond guest RAM (its one segment at 2 MiB is 80 MiB long).
    let huge = pvh_kernel("huge.elf", &vec![0x90u8; 80 << 20], true);
    user_error(
        &cxlvm(&["run", "--kernel", huge.to_str().unwrap(), "--memory", "64M"]),
        &["kernel", "huge.elf"],
    );
    // Too little RAM for Linux.
    user_error(
        &cxlvm(&["run", "--kernel", ks, "--memory", "8M"]),
        &["--memory", "at least 16 MiB"],
    );
    // --guest and --kernel together, or neither.
    user_error(
        &cxlvm(&["run", "--kernel", ks, "--guest", ks]),
        &["--guest"],
    );
    user_error(&cxlvm(&["run"]), &["--guest", "--kernel"]);
}
