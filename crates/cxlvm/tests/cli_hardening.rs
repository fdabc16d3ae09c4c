//! Every user input through the binary: a run or one line naming the problem with status 2,
//! never a panic, a hang or a half-started VM (issue 8's defects, each with the case that used
//! to fail).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, cxlvm, guest, require_kvm, stderr, user_error};

fn tmp(name: &str) -> PathBuf {
    common::tmp("cli-hard", name)
}

fn with_topology(name: &str, toml: &str, extra: &[&str]) -> Output {
    let p = tmp(name);
    std::fs::write(&p, toml).unwrap();
    let mut args = vec!["run", "--guest"];
    let g = guest("hello");
    args.push(&g);
    args.extend(["--config", p.to_str().unwrap()]);
    args.extend(extra);
    cxlvm(&args)
}

#[test]
fn any_timeout_number_runs_or_is_one_line() {
    let g = guest("hello");
    for bad in ["1e20", "1e300", "inf", "NaN", "-1", "0", "soon"] {
        let o = cxlvm(&["run", "--guest", &g, "--timeout", bad]);
        user_error(&o, &["--timeout", bad]);
    }
    require_kvm();
    // The largest accepted value runs (the guest exits before it matters).
    let o = cxlvm(&["run", "--guest", &g, "--timeout", "1e9"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A small one stops a spinning guest with the documented status.
    let o = cxlvm(&["run", "--guest", &guest("spin"), "--timeout", "0.3"]);
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
}

#[test]
fn cxl_direct_accepts_every_documented_spelling() {
    require_kvm();
    let g = guest("cxl");
    // (arguments, whether the committed range must be mapped)
    let cases: [(&[&str], bool); 5] = [
        (&["--cxl-direct", "off"], false),
        (&["--cxl-direct=off"], false),
        (&["--cxl-direct", "on"], true),
        (&["--cxl-direct=on"], true),
        (&["--cxl-direct"], true),
    ];
    let json = tmp("direct.json");
    let json_arg = json.to_str().unwrap();
    for (flag, mapped) in cases {
        // The guest commits a 1-way region and checks its bytes; it never touches port 0x510,
        // so the range's mode at exit is the command line's choice.
        let mut args = vec!["run", "--guest", &g, "--cxl-devices", "1"];
        args.extend(flag);
        args.extend([
            "--mtree-json",
            json_arg,
            "--cmdline",
            "mode=region verify=1 words=64",
        ]);
        let o = cxlvm(&args);
        assert_eq!(o.status.code(), Some(0), "{flag:?}: {}", stderr(&o));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let r = &v["windows"][0]["ranges"][0];
        if mapped {
            assert_eq!(r["mode"], "linear", "{flag:?}: {r}");
        } else {
            assert_eq!(r["mode"], "mmio", "{flag:?}: {r}");
            assert_eq!(r["reason"]["kind"], "direct_off", "{flag:?}: {r}");
        }
    }
    user_error(
        &cxlvm(&["run", "--guest", &g, "--cxl-direct", "maybe"]),
        &["--cxl-direct", "maybe"],
    );
}

const HB: &str = "[[host_bridge]]\nid = \"hb0\"\nroot_ports = 2\n";

#[test]
fn host_bridge_uid_that_guests_cannot_be_told_is_refused() {
    let toml = "[[host_bridge]]\nid = \"hb0\"\nuid = 300\nroot_ports = 1\n";
    user_error(
        &with_topology("uid.toml", toml, &[]),
        &["host bridge 'hb0'", "uid 300", "255"],
    );
    // 255 is fine (checked up to building the machine: the run then needs KVM).
    let toml = "[[host_bridge]]\nid = \"hb0\"\nuid = 255\nroot_ports = 1\n";
    let o = with_topology("uid255.toml", toml, &["--kvm", "/nonexistent/kvm"]);
    user_error(&o, &["/nonexistent/kvm"]);
}

#[test]
fn limits_of_the_boot_info_are_checked_with_the_configuration() {
    let g = guest("hello");
    let long = "x".repeat(9000);
    user_error(
        &cxlvm(&["run", "--guest", &g, "--cmdline", &long]),
        &["--cmdline", "9000 bytes", "4096"],
    );
    let mut toml = String::from(HB);
    for i in 0..300 {
        toml += &format!("[[window]]\nid = \"w{i}\"\nsize = \"256M\"\ntargets = [\"hb0\"]\n");
    }
    user_error(
        &with_topology("many-windows.toml", &toml, &[]),
        &["300 windows", "at most 64"],
    );
}

#[test]
fn capacity_beyond_what_the_host_can_map_is_refused_naming_the_device() {
    // 128 devices x 1 TiB: refused by the configuration check.
    let mut toml = String::new();
    for h in 0..16 {
        toml += &format!("[[host_bridge]]\nid = \"hb{h}\"\nroot_ports = 8\n");
        for p in 0..8 {
            toml += &format!(
                "[[device]]\nid = \"m{}\"\nhost_bridge = \"hb{h}\"\nroot_port = {p}\nvolatile = \"1T\"\n",
                h * 8 + p
            );
        }
    }
    user_error(
        &with_topology("huge.toml", &toml, &[]),
        &["device 'm64'", "total device capacity", "65 TiB", "64 TiB"],
    );
}

#[test]
fn capacity_the_host_refuses_to_map_is_one_line_naming_the_device() {
    require_kvm();
    // Within the configuration limits, but under an address-space limit (RLIMIT_AS) too small
    // for the second device: the host refuses the mapping at build time.
    let toml = format!(
        "{HB}[[device]]\nid = \"small\"\nhost_bridge = \"hb0\"\nroot_port = 0\nvolatile = \"256M\"\n\
         [[device]]\nid = \"big\"\nhost_bridge = \"hb0\"\nroot_port = 1\nvolatile = \"64G\"\n"
    );
    let p = tmp("rlimit.toml");
    std::fs::write(&p, toml).unwrap();
    let o = Command::new("prlimit")
        .arg(format!("--as={}", 16u64 << 30))
        .arg(env!("CARGO_BIN_EXE_cxlvm"))
        .args(["run", "--guest", &guest("hello"), "--config"])
        .arg(&p)
        .output()
        .expect("prlimit (util-linux) runs");
    user_error(&o, &["device 'big'", "65536 MiB", "host refused"]);
}

#[test]
fn a_file_that_is_not_kvm_is_one_line() {
    let o = cxlvm(&["run", "--guest", &guest("hello"), "--kvm", "/dev/null"]);
    user_error(&o, &["/dev/null is not a KVM device"]);
}

#[test]
fn unwritable_output_paths_fail_before_the_guest_runs() {
    for flag in ["--stats-json", "--mtree-json"] {
        let o = cxlvm(&[
            "run",
            "--guest",
            &guest("hello"),
            flag,
            "/nonexistent-dir/out.json",
        ]);
        // hello prints on the serial console (stdout): empty stdout means no guest ran.
        user_error(&o, &[flag, "/nonexistent-dir/out.json"]);
    }
}

/// Runs cxlvm with a deadline; a hang fails the test instead of blocking the suite.
fn run_with_deadline(args: &[&str], deadline: Duration) -> Output {
    let mut child = bin()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cxlvm runs");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cxlvm {args:?} still running after {deadline:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_fifo_as_guest_or_topology_is_refused_without_hanging() {
    let fifo = tmp("guest.fifo");
    let _ = std::fs::remove_file(&fifo);
    let st = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(st.success());
    let f = fifo.to_str().unwrap();
    let o = run_with_deadline(&["run", "--guest", f], Duration::from_secs(20));
    user_error(&o, &["guest image", "not a regular file"]);
    let o = run_with_deadline(
        &["run", "--guest", &guest("hello"), "--config", f],
        Duration::from_secs(20),
    );
    user_error(&o, &["topology file", "not a regular file"]);
}

#[test]
fn one_file_backing_two_things_is_refused() {
    let dir = tmp("shared-files");
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.img");
    let d = |id: &str, port: u8, pf: &Path, lf: Option<&Path>| {
        let lsa = lf.map_or(String::new(), |l| {
            format!("lsa_file = \"{}\"\n", l.display())
        });
        format!(
            "[[device]]\nid = \"{id}\"\nhost_bridge = \"hb0\"\nroot_port = {port}\n\
             persistent = \"256M\"\npersistent_file = \"{}\"\n{lsa}",
            pf.display()
        )
    };
    // Two devices, one persistent file.
    let toml = format!("{HB}{}{}", d("p0", 0, &a, None), d("p1", 1, &a, None));
    user_error(
        &with_topology("two-devs.toml", &toml, &[]),
        &["device 'p1'", "persistent_file of device 'p0'"],
    );
    // The same file as persistent_file and lsa_file of one device.
    let toml = format!("{HB}{}", d("p0", 0, &a, Some(&a)));
    user_error(
        &with_topology("pf-lsa.toml", &toml, &[]),
        &["device 'p0'", "lsa_file", "persistent_file of device 'p0'"],
    );
    // The same file under two spellings (an existing file is known by its inode).
    std::fs::write(&a, b"").unwrap();
    let alias = dir.join(".").join("a.img");
    let toml = format!("{HB}{}{}", d("p0", 0, &a, None), d("p1", 1, &alias, None));
    user_error(
        &with_topology("two-spellings.toml", &toml, &[]),
        &["device 'p1'"],
    );
}

#[test]
fn page_tables_that_do_not_fit_are_blamed_not_the_guest() {
    // A 32 TiB window needs 128 MiB of page tables, more than 64 MiB of guest RAM.
    let toml = format!(
        "{HB}[[device]]\nid = \"m0\"\nhost_bridge = \"hb0\"\nroot_port = 0\nvolatile = \"256M\"\n\
         [[window]]\nid = \"w0\"\nsize = \"32T\"\ntargets = [\"hb0\"]\n"
    );
    let o = with_topology("big-window.toml", &toml, &["--memory", "64M"]);
    user_error(&o, &["page tables", "--memory"]);
    assert!(!stderr(&o).contains("guest image"), "{}", stderr(&o));
}
