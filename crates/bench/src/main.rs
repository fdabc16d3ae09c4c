//! `cargo run --release -p cxlvm-bench`: measures what cxlvm claims, side by side in the same
//! runs, and prints a table plus a JSON file (schema in docs/performance.md).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cxlvm_cxl::topology::Topology;
use cxlvm_memory::RamBacking;
use cxlvm_vmm::{Boot, LinuxKernel, Machine, MachineConfig, Outcome, RunReport, SerialOut};
use serde::Serialize;

/// cxlvm benchmarks.
#[derive(Parser)]
#[command(about)]
struct Args {
    /// Small sizes and one run per figure (CI: checks that everything runs and parses).
    #[arg(long)]
    quick: bool,
    /// Runs per figure (median/min/max over them); default 5, 1 with --quick.
    #[arg(long)]
    runs: Option<usize>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
    /// Internal: boot one guest in this fresh process and print its statistics as JSON
    /// (start-up and footprint must not see other machines of the same process).
    #[arg(long, hide = true, value_name = "DEVICE_BYTES")]
    single: Option<u64>,
    /// Internal: boot this Linux kernel in this fresh process up to its first instruction and
    /// print the start-up time as JSON (with --window: one CXL device of that many bytes).
    #[arg(long, hide = true, value_name = "KERNEL")]
    single_linux: Option<PathBuf>,
    /// Pretend only this many host mappings (VMAs) are left, instead of what vm.max_map_count
    /// leaves (tests the checks made before each case).
    #[arg(long, hide = true, value_name = "N")]
    vma_room: Option<u64>,
    /// Run only the cases whose name contains this text (case-insensitive), e.g. `--only xsavec`.
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Internal: device (and window) bytes for --single-linux (0: no CXL).
    #[arg(long, hide = true, default_value_t = 0)]
    window: u64,
}

/// Start-up statistics of one machine in a fresh process: (start to first instruction in ms,
/// peak RSS beyond guest memory in MiB, resident guest memory in MiB).
fn single_process(device_bytes: u64) -> anyhow::Result<(f64, f64, f64)> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--single", &device_bytes.to_string()])
        .output()?;
    if !out.status.success() {
        bail!(
            "single-machine run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let f = |k: &str| v[k].as_f64().with_context(|| format!("{k} in {v}"));
    Ok((
        f("first_ms")?,
        f("rss_overhead_mib")?,
        f("guest_resident_mib")?,
    ))
}

/// Start to the boot vCPU's first instruction (ms) of a Linux kernel in a fresh process, with
/// one CXL device and window of `window` bytes (0: none).
fn linux_single_process(kernel: &std::path::Path, window: u64) -> anyhow::Result<f64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--single-linux")
        .arg(kernel)
        .args(["--window", &window.to_string()])
        .output()?;
    if !out.status.success() {
        bail!(
            "single Linux run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["first_entry_ms"]
        .as_f64()
        .with_context(|| format!("first_entry_ms in {v}"))
}

/// The Linux kernel the start-up case boots: $CXLVM_BENCH_KERNEL, or the one
/// scripts/debian-kernel.sh cached in target/linux.
fn bench_kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("CXLVM_BENCH_KERNEL") {
        return Some(PathBuf::from(k)).filter(|p| p.is_file());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("target/linux")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("vmlinux")))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Median, min and max of one figure over the runs.
#[derive(Clone, Debug, Serialize)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    runs: usize,
    unit: &'static str,
}

fn stat(mut v: Vec<f64>, unit: &'static str) -> Stat {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stat {
        median,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
        runs: n,
        unit,
    }
}

struct Run {
    report: RunReport,
    serial: String,
}

fn boot(
    guest: &str,
    cmdline: &str,
    topo: Option<Topology>,
    vcpus: u32,
    memory: u64,
) -> anyhow::Result<Run> {
    let cap = cxlvm_test_guests::SerialCapture::default();
    let mut cfg = MachineConfig::new(cxlvm_test_guests::path(guest));
    cfg.cmdline = cmdline.to_owned();
    cfg.serial = SerialOut::Writer(Box::new(cap.clone()));
    cfg.timeout = Some(Duration::from_secs(300));
    cfg.vcpus = vcpus;
    cfg.memory = memory;
    cfg.cxl = topo;
    cfg.started = Some(Instant::now());
    let mut m = Machine::build(cfg).context("building the benchmark machine")?;
    let report = m.run()?;
    let serial = cap.text();
    Ok(Run { report, serial })
}

fn boot_ok(guest: &str, cmdline: &str, topo: Option<Topology>, memory: u64) -> anyhow::Result<Run> {
    let r = boot(guest, cmdline, topo, 1, memory)?;
    if r.report.outcome != Outcome::Exit(0) {
        bail!("{guest} {cmdline}: {:?}\n{}", r.report.outcome, r.serial);
    }
    Ok(r)
}

/// `key=value` tokens of the serial lines starting with `prefix`.
fn lines<'a>(
    serial: &'a str,
    prefix: &'a str,
) -> impl Iterator<Item = BTreeMap<&'a str, &'a str>> + 'a {
    serial
        .lines()
        .filter(move |l| l.starts_with(prefix))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|t| t.split_once('='))
                .collect()
        })
}

fn num(m: &BTreeMap<&str, &str>, k: &str) -> anyhow::Result<f64> {
    m.get(k)
        .with_context(|| format!("missing {k} in {m:?}"))?
        .parse::<f64>()
        .with_context(|| format!("{k} is not a number in {m:?}"))
}

const MIB: u64 = 1 << 20;

/// The bandwidth configurations: name, devices, granularity, region size.
fn bw_configs(quick: bool) -> Vec<(&'static str, u8, u64, u64)> {
    let gib = 1u64 << 30;
    let mut v = vec![("1-way", 1, 4096, 256 * MIB)];
    v.push(("2-way 256", 2, 256, 512 * MIB));
    v.push(("2-way 1K", 2, 1024, 512 * MIB));
    v.push(("2-way 4K", 2, 4096, 512 * MIB));
    v.push(("2-way 16K", 2, 16384, 512 * MIB));
    if !quick {
        v.push(("4-way 4K", 4, 4096, gib));
        v.push(("4-way 16K", 4, 16384, gib));
    }
    v
}

#[derive(Serialize, Default)]
struct Results {
    machine: String,
    quick: bool,
    bandwidth_mbps: BTreeMap<String, Stat>,
    bandwidth_ratio: BTreeMap<String, Stat>,
    mmio: BTreeMap<String, Stat>,
    remap_us: BTreeMap<String, Stat>,
    stitch_build_ms: BTreeMap<String, Stat>,
    region_store: BTreeMap<String, Stat>,
    startup: BTreeMap<String, Stat>,
    xsavec_avx: BTreeMap<String, serde_json::Value>,
    /// Cases that did not run (or did not finish), with why; every other case ran.
    not_run: BTreeMap<String, NotRun>,
    /// `--vma-room`, when given.
    #[serde(skip)]
    vma_room: Option<u64>,
    /// `--only`, lower case, when given.
    #[serde(skip)]
    only: Option<String>,
}

impl Results {
    /// Whether `--only` selects case `name`.
    fn selected(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| name.to_lowercase().contains(o))
    }
}

/// Why a benchmark case has no figures.
#[derive(Serialize, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum NotRun {
    /// Checked before starting: the case needs more host mappings (VMAs) than this process may
    /// still create, so its range would stay on the MMIO path and measure the wrong thing.
    Skipped {
        /// Host mappings the case needs.
        needed: u64,
        /// Host mappings left (vm.max_map_count minus those in use minus a margin).
        room: u64,
        /// The vm.max_map_count that would let it run.
        max_map_count_needed: u64,
    },
    /// Something the case needs is not on this machine.
    Missing {
        /// What, and how to get it.
        what: String,
    },
    /// It started and failed; the error as printed.
    Failed {
        /// The error.
        error: String,
    },
}

impl std::fmt::Display for NotRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRun::Skipped {
                needed,
                room,
                max_map_count_needed,
            } => write!(
                f,
                "skipped: needs {needed} host mappings, {room} left under vm.max_map_count (sysctl -w vm.max_map_count={max_map_count_needed} runs it)"
            ),
            NotRun::Missing { what } => write!(f, "skipped: {what}"),
            NotRun::Failed { error } => write!(f, "failed: {error}"),
        }
    }
}

/// Mappings kept free for everything else in the process (as the VMM's default budget does).
const VMA_MARGIN: u64 = 4096;

/// Host mappings this process may still create (or `pretend`), and vm.max_map_count, if the
/// kernel says.
fn vma_room(pretend: Option<u64>) -> Option<(u64, u64)> {
    let limit = cxlvm_stitch::vma_limit()?;
    let used = cxlvm_stitch::vmas_in_use()?;
    let room = limit.saturating_sub(used).saturating_sub(VMA_MARGIN);
    Some((pretend.unwrap_or(room), limit))
}

/// Runs one case unless it needs more host mappings than are left; a case that cannot run or
/// fails is recorded in `res.not_run` (and said on stderr) and the benchmark goes on.
fn case(
    res: &mut Results,
    name: &str,
    mappings: u64,
    f: impl FnOnce(&mut Results) -> anyhow::Result<()>,
) {
    if !res.selected(name) {
        return;
    }
    if let Some((room, limit)) = vma_room(res.vma_room)
        && mappings > room
    {
        let why = NotRun::Skipped {
            needed: mappings,
            room,
            max_map_count_needed: limit + (mappings - room),
        };
        eprintln!("bench: {name}: {why}");
        res.not_run.insert(name.to_owned(), why);
        return;
    }
    eprintln!("bench: {name}");
    if let Err(e) = f(res) {
        let why = NotRun::Failed {
            error: format!("{e:#}"),
        };
        eprintln!("bench: {name}: {why}");
        res.not_run.insert(name.to_owned(), why);
    }
}

/// Host mappings a volatile region costs: one, at any granularity (a linear alias, or one
/// region store for an interleave).
fn region_mappings(_devices: u8, _gran: u64, _size: u64) -> u64 {
    1
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let kvm = std::fs::read_to_string("/proc/modules")
        .ok()
        .map(|m| {
            if m.contains("kvm_pvm") {
                "kvm_pvm"
            } else if m.contains("kvm_intel") {
                "kvm_intel"
            } else if m.contains("kvm_amd") {
                "kvm_amd"
            } else {
                "kvm"
            }
        })
        .unwrap_or("kvm");
    format!(
        "{cpu}, {} CPUs, {kvm}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(bytes) = args.single {
        // 0: the hello guest without CXL; otherwise the cxl guest probing one device of `bytes`.
        let r = if bytes == 0 {
            boot_ok("hello", "", None, 64 * MIB)?
        } else {
            boot_ok(
                "cxl",
                "mode=probe",
                Some(Topology::simple(1, bytes, 4096, false)),
                64 * MIB,
            )?
        };
        let s = &r.report.stats;
        println!(
            "{}",
            serde_json::json!({
                "first_ms": s.start_to_first_instruction_us.unwrap_or(0) as f64 / 1000.0,
                "rss_overhead_mib": s.rss_overhead_kib as f64 / 1024.0,
                "guest_resident_mib": s.guest_resident_kib as f64 / 1024.0,
            })
        );
        return Ok(());
    }
    if let Some(kernel) = &args.single_linux {
        let topo = (args.window > 0).then(|| Topology::simple(1, args.window, 4096, false));
        let cfg = MachineConfig {
            memory: 256 * MIB,
            cxl: topo,
            serial: SerialOut::Null,
            timeout: Some(Duration::from_millis(20)),
            started: Some(Instant::now()),
            ..MachineConfig::booting(Boot::Linux(LinuxKernel {
                kernel: kernel.clone(),
                initrd: None,
                hypervisor_bit: false,
            }))
        };
        let mut m = Machine::build(cfg)?;
        let r = m.run()?;
        let first = r
            .stats
            .start_to_first_entry_us
            .context("the boot vCPU never entered")?;
        println!(
            "{}",
            serde_json::json!({ "first_entry_ms": first as f64 / 1000.0 })
        );
        return Ok(());
    }
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 5 }).max(1);
    let mut res = Results {
        machine: machine(),
        quick: args.quick,
        vma_room: args.vma_room,
        only: args.only.as_ref().map(|o| o.to_lowercase()),
        ..Default::default()
    };
    let mib = if args.quick { 4 } else { 64 };
    let mem = (2 * mib + 64) * MIB;

    // 1. Bandwidth, window vs RAM, same guest, same run.
    for (name, devices, gran, size) in bw_configs(args.quick) {
        let label = format!("bandwidth {name}");
        case(
            &mut res,
            &label,
            region_mappings(devices, gran, size),
            |res| bandwidth(res, name, devices, gran, size, runs, mib, mem),
        );
    }
    // 2. MMIO path cost vs the exit floor.
    case(&mut res, "MMIO path", 1, |res| {
        mmio_path(res, args.quick, runs)
    });
    // 3. Remap latency.
    for (name, devices, gran, size) in [
        ("1-way", 1u8, 4096u64, 256 * MIB),
        ("2-way 16K", 2, 16384, 512 * MIB),
    ] {
        let label = format!("remap {name}");
        case(
            &mut res,
            &label,
            region_mappings(devices, gran, size),
            |res| remap(res, name, devices, gran, size, runs, args.quick),
        );
    }
    // 4. Build cost of a stitched interleave map (host side).
    for (name, size, gran) in [
        ("256 MiB @ 4 KiB", 256 * MIB, 4096u64),
        ("1 GiB @ 16 KiB", 1024 * MIB, 16384),
    ] {
        let size = if args.quick { size / 16 } else { size };
        let label = format!("stitch build {name}");
        case(&mut res, &label, size / gran, |res| {
            stitch_build(res, name, size, gran, runs)
        });
    }
    // 4b. Region stores: first commit of a fresh region, moving populated data.
    for (name, ways, gran) in [("2-way 256 B", 2usize, 256u64), ("4-way 4 KiB", 4, 4096)] {
        let label = format!("region store 1 GiB {name}");
        case(&mut res, &label, 1, |res| {
            region_store(res, name, ways, gran, runs, args.quick)
        });
    }
    // 5. Start-up and footprint, each in a fresh process.
    case(&mut res, "start-up and footprint", 1, |res| {
        startup(res, runs)
    });
    // 6. Linux start-up: a ~60 MiB vmlinux to its first instruction, each in a fresh process.
    match bench_kernel().filter(|_| res.selected("Linux start-up")) {
        _ if !res.selected("Linux start-up") => {}
        Some(kernel) => case(&mut res, "Linux start-up", 1, |res| {
            linux_startup(res, &kernel, runs)
        }),
        None => {
            let why = NotRun::Missing {
                what: "no Linux kernel: run scripts/debian-kernel.sh or set CXLVM_BENCH_KERNEL to a vmlinux"
                    .into(),
            };
            eprintln!("bench: Linux start-up: {why}");
            res.not_run.insert("Linux start-up".into(), why);
        }
    }
    // 7. XSAVEC / AVX on the MMIO path: completed by cxlvm, and what a completion costs.
    case(&mut res, "XSAVEC / AVX on the MMIO path", 1, |res| {
        xsavec(res, args.quick, runs)
    });

    print_table(&res);
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&res)? + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nJSON: {}", args.json.display());
    let failed = res
        .not_run
        .values()
        .filter(|n| matches!(n, NotRun::Failed { .. }))
        .count();
    if failed > 0 {
        bail!("{failed} benchmark case(s) failed (see the table)");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bandwidth(
    res: &mut Results,
    name: &str,
    devices: u8,
    gran: u64,
    size: u64,
    runs: usize,
    mib: u64,
    mem: u64,
) -> anyhow::Result<()> {
    {
        let mut per: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut ratio: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for _ in 0..runs {
            let topo = Topology::simple(devices, size / u64::from(devices), gran, false);
            let r = boot_ok(
                "cxl",
                &format!("mode=bw mib={mib} gran={gran} size={size:#x}"),
                Some(topo),
                mem,
            )?;
            let mut ram = BTreeMap::new();
            for l in lines(&r.serial, "bw target=") {
                let (t, op) = (
                    l.get("target").copied().unwrap_or(""),
                    l.get("op").copied().unwrap_or(""),
                );
                let v = num(&l, "mbps")?;
                per.entry(format!("{name} {t} {op}")).or_default().push(v);
                if t == "ram" {
                    ram.insert(op.to_owned(), v);
                } else if let Some(&rv) = ram.get(op) {
                    ratio
                        .entry(format!("{name} {op}"))
                        .or_default()
                        .push(v / rv);
                }
            }
            if !r.serial.contains("bw ok") {
                bail!("bandwidth guest did not finish: {}", r.serial);
            }
        }
        for (k, v) in per {
            res.bandwidth_mbps.insert(k, stat(v, "MB/s"));
        }
        for (k, v) in ratio {
            res.bandwidth_ratio.insert(k, stat(v, "window/RAM"));
        }
    }
    Ok(())
}

fn mmio_path(res: &mut Results, quick: bool, runs: usize) -> anyhow::Result<()> {
    let count = if quick { 2000 } else { 20000 };
    let (mut w, mut d) = (Vec::new(), Vec::new());
    let (mut wc, mut nc) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let r = boot_ok(
            "cxl",
            &format!("mode=exits count={count}"),
            Some(Topology::simple(1, 256 * MIB, 4096, false)),
            64 * MIB,
        )?;
        let e = lines(&r.serial, "exits window_cyc=")
            .next()
            .context("no exits line")?;
        let dec = lines(&r.serial, "exits decoded_cyc=")
            .next()
            .context("no decoded line")?;
        let floor = num(&e, "null_mmio_cyc")?;
        w.push(num(&e, "window_cyc")? / floor);
        d.push(num(&dec, "decoded_cyc")? / floor);
        let khz = num(&e, "tsc_khz")?;
        wc.push(num(&e, "window_cyc")? / khz * 1000.0);
        nc.push(floor / khz * 1000.0);
    }
    res.mmio.insert(
        "unclaimed window access / null MMIO exit".into(),
        stat(w, "ratio"),
    );
    res.mmio.insert(
        "decoded window access (MMIO path) / null MMIO exit".into(),
        stat(d, "ratio"),
    );
    res.mmio
        .insert("unclaimed window access".into(), stat(wc, "us"));
    res.mmio
        .insert("null MMIO exit (floor)".into(), stat(nc, "us"));
    Ok(())
}

fn remap(
    res: &mut Results,
    name: &str,
    devices: u8,
    gran: u64,
    size: u64,
    runs: usize,
    quick: bool,
) -> anyhow::Result<()> {
    let cycles = if quick { 20 } else { 200 };
    {
        let mut s: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for _ in 0..runs {
            let topo = Topology::simple(devices, size / u64::from(devices), gran, false);
            let r = boot_ok(
                "cxl",
                &format!("mode=remap cycles={cycles} gran={gran} size={size:#x}"),
                Some(topo),
                64 * MIB,
            )?;
            for l in lines(&r.serial, "remap dir=") {
                let dir = l.get("dir").copied().unwrap_or("?");
                for p in ["p50_ns", "p99_ns"] {
                    s.entry(format!("{name} {dir} {}", &p[..3]))
                        .or_default()
                        .push(num(&l, p)? / 1000.0);
                }
            }
        }
        for (k, v) in s {
            res.remap_us.insert(k, stat(v, "us"));
        }
    }
    Ok(())
}

fn stitch_build(
    res: &mut Results,
    name: &str,
    size: u64,
    gran: u64,
    runs: usize,
) -> anyhow::Result<()> {
    {
        let devs: Vec<Arc<RamBacking>> = (0..2)
            .map(|i| RamBacking::memfd(&format!("bench{i}"), size / 2))
            .collect::<Result<_, _>>()?;
        let pieces: Vec<(Arc<RamBacking>, u64, u64)> = (0..size / gran)
            .map(|k| (devs[(k % 2) as usize].clone(), (k / 2) * gran, gran))
            .collect();
        let mut t = Vec::new();
        for _ in 0..runs.max(3) {
            let t0 = Instant::now();
            let b = RamBacking::stitched("bench", &pieces)?;
            t.push(t0.elapsed().as_secs_f64() * 1000.0);
            drop(b);
        }
        res.stitch_build_ms.insert(name.into(), stat(t, "ms"));
    }
    Ok(())
}

/// The host side of committing a volatile interleave over 1 GiB: making its region store and
/// filling it. Fresh devices move nothing (the cost must not depend on the size); populated ones
/// move every byte (reported per GiB).
fn region_store(
    res: &mut Results,
    name: &str,
    ways: usize,
    gran: u64,
    runs: usize,
    quick: bool,
) -> anyhow::Result<()> {
    use cxlvm_mapping::storage::{self, Layout, RegionStore};
    use cxlvm_mapping::window::DeviceMemory;
    let size = if quick { 256 * MIB } else { 1024 * MIB };
    let share = size / ways as u64;
    let devices = || -> anyhow::Result<Vec<DeviceMemory>> {
        (0..ways)
            .map(|i| {
                Ok(DeviceMemory::new(
                    Some(RamBacking::memfd(&format!("bench{i}"), share)?),
                    None,
                ))
            })
            .collect()
    };
    let order: Vec<usize> = (0..ways).collect();
    let layout = Arc::new(
        Layout::modulo(&order, gran, size, 0)
            .ok_or_else(|| anyhow::anyhow!("{ways} ways at {gran} B is not a layout"))?,
    );
    let (mut fresh, mut moved, mut mappings) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs.max(3) {
        let mem = devices()?;
        let t0 = Instant::now();
        let store = RegionStore::new(0, 0, layout.clone())?;
        let m = storage::adopt(&mem, &store)?;
        fresh.push(t0.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(m.bytes == 0, "a fresh device moved {} bytes", m.bytes);
        mappings.push(store.backing.mappings() as f64);
        // Populated: every page of every device written once, then moved.
        let mem = devices()?;
        let page = vec![0x5au8; 1 << 20];
        for d in &mem {
            let own = d.volatile.as_ref().expect("volatile");
            for at in (0..share).step_by(page.len()) {
                own.write(at, &page)?;
            }
        }
        let t0 = Instant::now();
        let store = RegionStore::new(0, 0, layout.clone())?;
        let m = storage::adopt(&mem, &store)?;
        let secs = t0.elapsed().as_secs_f64();
        anyhow::ensure!(m.bytes == size, "moved {} of {size} bytes", m.bytes);
        moved.push(secs * 1000.0 * (1024 * MIB) as f64 / size as f64);
    }
    let what = if quick { "256 MiB (quick)" } else { "1 GiB" };
    res.region_store.insert(
        format!("first commit, fresh {what} {name}"),
        stat(fresh, "ms"),
    );
    res.region_store.insert(
        format!("moving populated data, {name}, per GiB"),
        stat(moved, "ms"),
    );
    res.region_store.insert(
        format!("host mappings per region, {name}"),
        stat(mappings, "mappings"),
    );
    Ok(())
}

fn startup(res: &mut Results, runs: usize) -> anyhow::Result<()> {
    let (mut first, mut rss) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(3) {
        let (f, r, _) = single_process(0)?;
        first.push(f);
        rss.push(r);
    }
    res.startup
        .insert("start to first guest instruction".into(), stat(first, "ms"));
    res.startup
        .insert("peak RSS beyond guest memory".into(), stat(rss, "MiB"));
    for (name, bytes) in [("256 MiB", 256 * MIB), ("1 TiB", 1 << 40)] {
        let (_, overhead, resident) = single_process(bytes)?;
        res.startup.insert(
            format!("resident guest + device memory, one {name} device (probe run)"),
            stat(vec![resident], "MiB"),
        );
        res.startup.insert(
            format!("peak RSS beyond guest memory, one {name} device"),
            stat(vec![overhead], "MiB"),
        );
    }
    Ok(())
}

fn linux_startup(res: &mut Results, kernel: &std::path::Path, runs: usize) -> anyhow::Result<()> {
    let mib = std::fs::metadata(kernel)?.len() >> 20;
    for (name, window) in [("no CXL", 0u64), ("a 1 TiB CXL window", 1 << 40)] {
        let mut t = Vec::new();
        for _ in 0..runs.max(3) {
            t.push(linux_single_process(kernel, window)?);
        }
        res.startup.insert(
            format!("start to a {mib} MiB vmlinux's first instruction, {name}"),
            stat(t, "ms"),
        );
    }
    Ok(())
}

fn xsavec(res: &mut Results, quick: bool, runs: usize) -> anyhow::Result<()> {
    let n = if quick { 1 } else { runs };
    let loops = if quick { 200 } else { 2000 };
    let mut failed_direct = 0;
    let mut completed_mmio = 0;
    let (mut store_us, mut avx_ratio, mut xsavec_ratio, mut xsavec_per_s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let topo = Topology::simple(1, 256 * MIB, 4096, false);
        let r = boot(
            "cxl",
            &format!("mode=xsavec_loop runs={loops}"),
            Some(topo.clone()),
            1,
            64 * MIB,
        )?;
        if r.report.outcome != Outcome::Exit(0) {
            failed_direct += 1;
        }
        // The same loop with the region on the MMIO path: every XSAVEC and AVX access exits and
        // cxlvm completes it; the guest checks the bytes and exits 0 only if they are right.
        let r = boot(
            "cxl",
            &format!("mode=xsavec_loop runs={loops} direct=0"),
            Some(topo),
            1,
            64 * MIB,
        )?;
        if r.report.outcome != Outcome::Exit(0) {
            eprintln!(
                "bench: XSAVEC/AVX on the MMIO path: {:?}\n{}",
                r.report.outcome, r.serial
            );
            continue;
        }
        completed_mmio += 1;
        let c = lines(&r.serial, "xsavec_loop cost ")
            .next()
            .context("no xsavec_loop cost line")?;
        let store = num(&c, "store_cyc")?;
        let khz = num(&c, "tsc_khz")?;
        store_us.push(store / khz * 1000.0);
        avx_ratio.push(num(&c, "vmovdqu_cyc")? / store);
        xsavec_ratio.push(num(&c, "xsavec_cyc")? / store);
        xsavec_per_s.push(khz * 1000.0 / num(&c, "xsavec_cyc")?);
    }
    res.xsavec_avx.insert("runs".into(), n.into());
    res.xsavec_avx.insert(
        "failures on committed CXL memory (direct mapping)".into(),
        failed_direct.into(),
    );
    res.xsavec_avx.insert(
        "runs completed with correct bytes on the MMIO path".into(),
        completed_mmio.into(),
    );
    if !store_us.is_empty() {
        res.mmio.insert(
            "plain 8-byte store, CXL window on the MMIO path".into(),
            stat(store_us, "us"),
        );
        res.mmio.insert(
            "completed 32-byte vmovdqu / plain MMIO store (target <= 2)".into(),
            stat(avx_ratio, "ratio"),
        );
        res.mmio.insert(
            "completed XSAVEC (x87|SSE|AVX) / plain MMIO store".into(),
            stat(xsavec_ratio, "ratio"),
        );
        res.mmio.insert(
            "XSAVEC loop over 4 KiB on the MMIO path".into(),
            stat(xsavec_per_s, "per s"),
        );
    }
    Ok(())
}

fn print_table(r: &Results) {
    println!(
        "cxlvm benchmarks on {} ({} mode)\n",
        r.machine,
        if r.quick { "quick" } else { "full" }
    );
    let section = |title: &str, m: &BTreeMap<String, Stat>| {
        println!("{title}");
        for (k, s) in m {
            println!(
                "  {k:<58} {:>12.3} {:<10} (min {:.3}, max {:.3}, n={})",
                s.median, s.unit, s.min, s.max, s.runs
            );
        }
        println!();
    };
    section("Bandwidth (median MB/s)", &r.bandwidth_mbps);
    section(
        "Window / RAM bandwidth ratio (same run)",
        &r.bandwidth_ratio,
    );
    section("MMIO path", &r.mmio);
    section(
        "Remap latency (commit/uncommit write to first access)",
        &r.remap_us,
    );
    section("Stitched interleave map build", &r.stitch_build_ms);
    section(
        "Region stores (volatile interleave, host side)",
        &r.region_store,
    );
    section("Start-up and footprint", &r.startup);
    println!("XSAVEC / AVX on the MMIO path");
    for (k, v) in &r.xsavec_avx {
        println!("  {k:<58} {v}");
    }
    if !r.not_run.is_empty() {
        println!("\nNot measured");
        for (k, why) in &r.not_run {
            println!("  {k:<58} {why}");
        }
    }
}
