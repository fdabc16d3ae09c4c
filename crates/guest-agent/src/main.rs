//! `cxlvm-agent`: see the library's documentation and docs/linux.md ("Linux guest kit").
//!
//! Runs as a child of the kit's `/init` script, or as `/init` itself: as PID 1 it first mounts
//! proc, sysfs and devtmpfs where they are missing, and at the end powers the machine off
//! (unless `--no-poweroff`). Prints one JSON object on stdout; messages go to stderr. Exit
//! status: 0 when the report says `ok`, 1 when it does not, 2 for a usage error.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cxlvm_guest_agent::{Options, fs::RootFs, run};

const USAGE: &str = "\
usage: cxlvm-agent [--sysfs DIR] [--no-measure] [--no-poweroff] [--buffer-mib N]
                   [--passes N] [--wait-secs N] [--xsavec-iterations N]

Finds the CXL topology under DIR/bus/cxl/devices (DIR defaults to /sys), creates and binds a
RAM region if none is committed, waits for its memory to come online on a CPU-less NUMA node,
measures node 0 against that node (8-byte stores, 32-byte AVX stores, memcpy) and runs an
XSAVEC + AVX loop on it, then prints one JSON object. As PID 1 it mounts /proc, /sys and /dev
first and powers off at the end.";

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Options>> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--sysfs" => o.sysfs = PathBuf::from(value("--sysfs")?),
            "--no-measure" => o.measure = false,
            "--no-poweroff" => o.poweroff = false,
            "--buffer-mib" => o.buffer_mib = number(&value("--buffer-mib")?, "--buffer-mib")?,
            "--passes" => o.passes = number(&value("--passes")?, "--passes")?.max(1),
            "--wait-secs" => {
                o.wait = Duration::from_secs(number(&value("--wait-secs")?, "--wait-secs")? as u64)
            }
            "--xsavec-iterations" => {
                o.xsavec_iterations = number(&value("--xsavec-iterations")?, "--xsavec-iterations")?
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(o))
}

fn number(s: &str, name: &str) -> Result<usize> {
    s.parse()
        .with_context(|| format!("{name}: {s:?} is not a number"))
}

/// As PID 1: mounts what is missing. Failures are reported, not fatal (the sysfs read that
/// follows names the file it cannot find).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn mount_basics(notes: &mut Vec<String>) {
    use cxlvm_guest_agent::sys;
    for (probe, dir, fstype) in [
        ("/proc/self", "/proc", "proc"),
        ("/sys/kernel", "/sys", "sysfs"),
        ("/dev/null", "/dev", "devtmpfs"),
    ] {
        if std::path::Path::new(probe).exists() {
            continue;
        }
        let _ = std::fs::create_dir_all(dir);
        if let Err(e) = sys::mount(fstype, dir, fstype) {
            notes.push(format!("mount {fstype} on {dir}: {e}"));
        }
    }
}

fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("cxlvm-agent: {e:#}");
            std::process::exit(2);
        }
    };
    let pid1 = std::process::id() == 1;
    let mut early = Vec::new();
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    if pid1 {
        mount_basics(&mut early);
    }
    let fs = RootFs::new(&opts.sysfs);
    let mut report = run(&fs, &opts);
    report.notes.splice(0..0, early);
    if pid1 {
        report.notes.push("running as PID 1".to_owned());
    }
    match serde_json::to_string(&report) {
        Ok(j) => println!("{j}"),
        Err(e) => eprintln!("cxlvm-agent: cannot encode the report: {e}"),
    }
    if let Some(e) = &report.error {
        eprintln!("cxlvm-agent: {}", e.message);
    }
    let status = if report.ok { 0 } else { 1 };
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    if pid1 {
        // PID 1 must not exit (the kernel would panic): power off, or wait.
        if opts.poweroff {
            let e = cxlvm_guest_agent::sys::power_off();
            eprintln!("cxlvm-agent: power off failed: {e}");
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    std::process::exit(status);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags() {
        let o = parse_args(args(
            "--sysfs /tmp/x --no-measure --no-poweroff --wait-secs 2",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(o.sysfs, PathBuf::from("/tmp/x"));
        assert!(!o.measure && !o.poweroff);
        assert_eq!(o.wait, Duration::from_secs(2));
        assert!(parse_args(args("--bogus")).is_err());
        assert!(parse_args(args("--sysfs")).is_err());
        assert!(parse_args(args("--help")).unwrap().is_none());
    }
}
