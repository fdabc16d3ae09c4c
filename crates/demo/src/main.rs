//! `cargo run --release -p cxlvm-demo`: two 1 GiB CXL Type-3 expanders behind one host bridge
//! and one fixed memory window. A test guest (at CPL3, playing Linux's CXL drivers) enumerates
//! them, probes their mailboxes, commits a 2 GiB region interleaved at 256 B (the finest CXL
//! granularity; one region store, one host mapping), and measures bandwidth through the window
//! against ordinary RAM — first with cxlvm's direct mapping, then on the exact MMIO path the way
//! other VMMs serve CXL memory. The mapping switches are logged as they happen.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cxlvm_cxl::topology::Topology;
use cxlvm_vmm::{Machine, MachineConfig, Outcome, SerialOut};

const TOPOLOGY: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 2

[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "1G"

[[device]]
id = "mem1"
host_bridge = "hb0"
root_port = 1
volatile = "1G"

[[window]]
id = "cfmw0"
size = "2G"
targets = ["hb0"]
"#;

fn boot(cmdline: &str) -> anyhow::Result<(Machine, String)> {
    let cap = cxlvm_test_guests::SerialCapture::default();
    let mut cfg = MachineConfig::new(cxlvm_test_guests::path("cxl"));
    cfg.cmdline = cmdline.to_owned();
    cfg.memory = 256 << 20;
    cfg.serial = SerialOut::Writer(Box::new(cap.clone()));
    cfg.timeout = Some(Duration::from_secs(300));
    cfg.cxl = Some(Topology::from_toml(TOPOLOGY)?);
    cfg.started = Some(Instant::now());
    let mut m = Machine::build(cfg)?;
    let r = m.run()?;
    let text = cap.text();
    if r.outcome != Outcome::Exit(0) {
        anyhow::bail!("guest '{cmdline}' ended with {:?}:\n{text}", r.outcome);
    }
    Ok((m, text))
}

fn show(text: &str, prefixes: &[&str]) {
    for l in text
        .lines()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
    {
        println!("   guest| {l}");
    }
}

/// (target, op, MB/s) from the guest's `bw` lines, computed from bytes and TSC cycles (the
/// guest's own `mbps` is an integer, too coarse for the MMIO path).
fn bandwidth(text: &str) -> Vec<(String, String, f64)> {
    let kv = |l: &str| -> std::collections::BTreeMap<String, String> {
        l.split_whitespace()
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    };
    let tsc_khz: f64 = text
        .lines()
        .find(|l| l.starts_with("bw setup"))
        .and_then(|l| kv(l).get("tsc_khz")?.parse().ok())
        .unwrap_or(0.0);
    text.lines()
        .filter(|l| l.starts_with("bw target="))
        .filter_map(|l| {
            let m = kv(l);
            let bytes: f64 = m.get("bytes")?.parse().ok()?;
            let cycles: f64 = m.get("cycles")?.parse().ok()?;
            let mbps = bytes / (cycles / (tsc_khz * 1000.0)) / 1e6;
            Some((m.get("target")?.clone(), m.get("op")?.clone(), mbps))
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    // Mapping switches (window, range, direction, why) are logged at info by the overlay manager.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,cxlvm_mapping::overlay=info")
            }),
        )
        .with_target(false)
        .with_writer(std::io::stdout)
        .init();
    println!(
        "cxlvm demo: 2 x 1 GiB CXL Type-3 expanders, one host bridge, one 2 GiB window\n{TOPOLOGY}"
    );

    println!(
        "== 1. The guest enumerates ECAM and probes each device's mailbox like Linux's cxl_pci"
    );
    let (_, text) = boot("mode=enumerate")?;
    show(&text, &["pci ", "hb ", "type3 ", "window "]);
    let (_, text) = boot("mode=probe")?;
    show(&text, &["probe mem", "cel "]);

    println!(
        "\n== 2. It commits a 2-way region interleaved at 256 B and compares bandwidth with RAM"
    );
    let (m, text) = boot("mode=bw mib=64 gran=256")?;
    show(&text, &["region ", "bw exits"]);
    let bw = bandwidth(&text);
    println!(
        "\n   {:<12} {:>12} {:>12} {:>8}",
        "op", "RAM MB/s", "CXL MB/s", "CXL/RAM"
    );
    for (_, op, v) in bw.iter().filter(|(t, _, _)| t == "cxl") {
        if let Some((_, _, r)) = bw.iter().find(|(t2, o2, _)| t2 == "ram" && o2 == op) {
            println!("   {op:<12} {r:>12.0} {v:>12.0} {:>8.3}", v / r);
        }
    }
    println!("\n   window state at exit:");
    for w in m.memory_state().windows {
        println!(
            "   window {} [{:#x}, {:#x}): {} exits served",
            w.index,
            w.base,
            w.base + w.size,
            w.exits
        );
        for r in w.ranges {
            println!(
                "     [{:#x}, {:#x}) {} ({})",
                r.hpa,
                r.hpa + r.len,
                r.mode,
                r.detail
            );
        }
    }

    // Release the first machine (and its region store) before booting the next.
    drop(m);
    println!("\n== 3. The same region on the exact MMIO path (what a pure-MMIO window gives)");
    let (_, text) = boot("mode=bw mib=64 gran=256 direct=0 mmio_kib=64")?;
    let bw = bandwidth(&text);
    for (t, op, v) in bw.iter().filter(|(t, _, _)| t == "cxl") {
        let ram = bw
            .iter()
            .find(|(t2, o2, _)| t2 == "ram" && o2 == op)
            .map_or(f64::NAN, |x| x.2);
        println!(
            "   {t} {op:<12} {v:>10.3} MB/s  ({:.0}x slower than RAM; every access is a VM exit)",
            ram / v
        );
    }
    show(&text, &["bw skipped"]);
    println!(
        "\nDone. Benchmarks with medians over several runs: cargo run --release -p cxlvm-bench"
    );
    Ok(())
}
