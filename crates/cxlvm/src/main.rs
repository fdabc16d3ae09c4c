//! The `cxlvm` command.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use cxlvm_vmm::{Boot, LinuxKernel, Machine, MachineConfig, SerialOut};

/// cxlvm — a KVM virtual machine monitor for CXL memory.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// More logging (-v: info, including every MMIO <-> RAM mapping change; -vv: debug).
    /// RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a test guest (a freestanding 64-bit ELF, see docs/guest-abi.md) at CPL3.
    Run(RunArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("boot").required(true).args(["guest", "kernel"])))]
struct RunArgs {
    /// Test guest: a freestanding 64-bit ELF (docs/guest-abi.md), run at CPL3.
    #[arg(long, value_name = "ELF")]
    guest: Option<PathBuf>,
    /// Linux kernel: an ELF vmlinux (PVH entry) or a bzImage (docs/linux.md).
    #[arg(long, value_name = "PATH", conflicts_with = "guest")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk for --kernel.
    #[arg(long, value_name = "PATH", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// --kernel only: show the hypervisor CPUID bit (on) or hide it (off, the default: Linux
    /// then commits CXL regions itself; it uses the TSC instead of kvmclock).
    #[arg(
        long,
        value_name = "on|off",
        value_enum,
        default_value = "off",
        num_args = 0..=1,
        default_missing_value = "on"
    )]
    cpuid_hypervisor: Switch,
    /// Write every ACPI table cxlvm builds (for --kernel or --guest) as DIR/<SIG>.dat
    /// (RSDP.dat, DSDT.dat, CEDT.dat, ...), for people and tools such as `iasl -d`.
    #[arg(long, value_name = "DIR")]
    dump_acpi: Option<PathBuf>,
    /// Guest RAM, e.g. 64M, 1G, 0x4000000.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Command line handed to the guest in its boot info.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Write the serial console to this file instead of stdout.
    #[arg(long, value_name = "PATH")]
    serial_file: Option<PathBuf>,
    /// Add a scratch window of this size (MMIO path + switchable RAM alias over one backing).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    scratch_window: Option<u64>,
    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout, allow_negative_numbers = true)]
    timeout: Option<Duration>,
    /// Print run statistics (exits, start-up time, RSS) as JSON on stderr at exit.
    #[arg(long)]
    stats: bool,
    /// Write run statistics as JSON to this file.
    #[arg(long, value_name = "PATH")]
    stats_json: Option<PathBuf>,
    /// KVM device.
    #[arg(long, default_value = "/dev/kvm", value_name = "PATH")]
    kvm: String,
    /// CXL topology file (TOML: [[host_bridge]], [[device]], [[window]]; see docs/cxl.md).
    #[arg(long, value_name = "TOML", conflicts_with = "cxl_devices")]
    config: Option<PathBuf>,
    /// Short form: one window over one host bridge with this many root ports, each holding a
    /// volatile Type-3 device of --cxl-size.
    #[arg(long, value_name = "N")]
    cxl_devices: Option<u8>,
    /// Capacity of each --cxl-devices device (multiple of 256M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    cxl_size: u64,
    /// Host-bridge interleave granularity of the --cxl-devices window (256 B - 16 KiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4K")]
    cxl_granularity: u64,
    /// --cxl-devices 1 only: a passthrough host bridge (no HDM decoders).
    #[arg(long)]
    cxl_passthrough: bool,
    /// Map every decoded CXL range directly (on, the default) or keep everything on the exact
    /// MMIO path (off); the guest can switch at run time through port 0x510.
    #[arg(
        long,
        value_name = "on|off",
        value_enum,
        default_value = "on",
        num_args = 0..=1,
        default_missing_value = "on"
    )]
    cxl_direct: Switch,
    /// Most host mappings (VMAs) interleaved CXL ranges may use (default: what
    /// vm.max_map_count leaves, minus a margin).
    #[arg(long, value_name = "N")]
    vma_budget: Option<u64>,
    /// At exit (and on SIGUSR1) print the memory tree, flat view, KVM slots and each CXL
    /// window's ranges (mode, exits served) on stderr.
    #[arg(long)]
    mtree: bool,
    /// At exit write the same memory state as JSON to this file.
    #[arg(long, value_name = "PATH")]
    mtree_json: Option<PathBuf>,
    /// Confine each vCPU thread and the run thread with a seccomp filter that allows only the
    /// system calls it needs (on, the default); a forbidden call stops cxlvm with status 159 and
    /// one line naming the thread and the call. `off` is a debugging aid (e.g. to strace or
    /// profile a workload the filters would refuse), not a way to run.
    #[arg(
        long,
        value_name = "on|off",
        value_enum,
        default_value = "on",
        num_args = 0..=1,
        default_missing_value = "on"
    )]
    seccomp: Switch,
}

/// An on/off setting (`--flag on`, `--flag off`, `--flag=off`; a bare `--flag` means on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl Switch {
    fn on(self) -> bool {
        self == Switch::On
    }
}

/// Most seconds `--timeout` accepts (about 31 years): any larger number is a mistake.
const MAX_TIMEOUT_SECS: f64 = 1e9;

/// Parses `--timeout`: a positive number of seconds up to [`MAX_TIMEOUT_SECS`].
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS) {
        return Err(format!(
            "'{s}': must be a positive number of seconds up to {MAX_TIMEOUT_SECS:e}"
        ));
    }
    Duration::try_from_secs_f64(t).map_err(|e| format!("'{s}': {e}"))
}

/// The CXL topology from --config or the short flags; `Err` is the one-line user error.
fn topology(args: &RunArgs) -> Result<Option<cxlvm_cxl::topology::Topology>, String> {
    use cxlvm_cxl::topology::Topology;
    if let Some(p) = &args.config {
        let bytes = cxlvm_vmm::read_input_file(p)
            .map_err(|e| format!("cannot read topology file {}: {e}", p.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("topology file {}: not UTF-8 text", p.display()))?;
        return Topology::from_toml(&text)
            .map(Some)
            .map_err(|e| format!("topology file {}: {e}", p.display()));
    }
    match args.cxl_devices {
        Some(0) => Err("--cxl-devices 0: need at least one device".into()),
        Some(n) => Ok(Some(Topology::simple(
            n,
            args.cxl_size,
            args.cxl_granularity,
            args.cxl_passthrough,
        ))),
        None if args.cxl_passthrough => Err("--cxl-passthrough needs --cxl-devices 1".into()),
        None => Ok(None),
    }
}

/// Parses sizes like `4096`, `0x1000`, `64K`, `64M`, `2G`, `1T` (also `KiB`/`MiB`/`GiB`/`TiB`).
fn parse_size(s: &str) -> Result<u64, String> {
    cxlvm_cxl::topology::parse_size(s)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Parses the command line; a usage error is printed as one line (clap's first paragraph, its
/// lines joined) and ends cxlvm with status 2. Help and version go to stdout as usual.
fn parse_cli() -> Result<Cli, ExitCode> {
    use clap::error::ErrorKind;
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            Err(ExitCode::from(2))
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text.split("\n\n").next().unwrap_or_default();
            let line = first.split_whitespace().collect::<Vec<_>>().join(" ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("cxlvm: {line}");
            Err(ExitCode::from(2))
        }
    }
}

/// Creates (or truncates) an output file named on the command line before anything starts, so
/// that an unwritable path is a one-line user error and not a failure after the guest ran.
fn output_file(flag: &str, path: &std::path::Path) -> Result<std::fs::File, String> {
    std::fs::File::create(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

fn run(args: RunArgs, started: Instant) -> anyhow::Result<u8> {
    let timeout = args.timeout;
    let mut outputs = Vec::new();
    for (flag, path) in [
        ("--stats-json", &args.stats_json),
        ("--mtree-json", &args.mtree_json),
    ] {
        let Some(p) = path else {
            outputs.push(None);
            continue;
        };
        match output_file(flag, p) {
            Ok(f) => outputs.push(Some(f)),
            Err(e) => {
                eprintln!("cxlvm: {e}");
                return Ok(2);
            }
        }
    }
    let mtree_file = outputs.pop().flatten();
    let stats_file = outputs.pop().flatten();
    let cxl = match topology(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cxlvm: {e}");
            return Ok(2);
        }
    };
    let boot = match (args.guest, args.kernel) {
        (Some(g), _) => Boot::TestGuest(g),
        (None, Some(kernel)) => Boot::Linux(LinuxKernel {
            kernel,
            initrd: args.initrd,
            hypervisor_bit: args.cpuid_hypervisor.on(),
        }),
        (None, None) => {
            eprintln!("cxlvm: --guest or --kernel is required");
            return Ok(2);
        }
    };
    let cfg = MachineConfig {
        cxl,
        cxl_direct: args.cxl_direct.on(),
        vma_budget: args.vma_budget,
        seccomp: args.seccomp.on(),
        console_input: matches!(boot, Boot::Linux(_)),
        dump_acpi: args.dump_acpi,
        memory: args.memory,
        vcpus: args.vcpus,
        cmdline: args.cmdline,
        serial: match args.serial_file {
            Some(p) => SerialOut::File(p),
            None => SerialOut::Stdout,
        },
        scratch_window: args.scratch_window,
        timeout,
        kvm_path: args.kvm,
        started: Some(started),
        ..MachineConfig::booting(boot)
    };
    let mut machine = match Machine::build(cfg) {
        Ok(m) => m,
        Err(e) if e.is_user_error() => {
            eprintln!("cxlvm: {e}");
            return Ok(2);
        }
        Err(e) => return Err(e.into()),
    };
    // SIGUSR1 prints the memory state while the guest runs.
    let dump = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, dump.clone())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGUSR1 handler: {e}"))?;
    machine.set_dump_request(dump);
    let report = machine.run()?;
    if args.mtree || args.mtree_json.is_some() {
        let state = machine.memory_state();
        if args.mtree {
            eprint!("{state}");
        }
        if let (Some(mut f), Some(p)) = (mtree_file, &args.mtree_json) {
            let json = serde_json::to_string_pretty(&state)?;
            f.write_all((json + "\n").as_bytes())
                .map_err(|e| anyhow::anyhow!("cannot write --mtree-json {}: {e}", p.display()))?;
        }
    }
    if let Some(msg) = report.outcome.message() {
        eprintln!("cxlvm: {msg}");
    }
    let json = serde_json::to_string_pretty(&report.stats)?;
    if args.stats {
        eprintln!("{json}");
    }
    if let (Some(mut f), Some(p)) = (stats_file, &args.stats_json) {
        f.write_all((json + "\n").as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write --stats-json {}: {e}", p.display()))?;
    }
    Ok(report.outcome.exit_status() as u8)
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Run(args) => run(args, started),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // cxlvm's error messages already include their cause; print the top one only.
            eprintln!("cxlvm: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_units_and_hex() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
