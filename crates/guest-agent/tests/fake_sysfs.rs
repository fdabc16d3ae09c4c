//! The agent against a fake sysfs tree in a temporary directory, shaped like Linux 6.12's:
//! real device directories under `devices/`, links to them in `bus/cxl/devices/`.

use std::cell::RefCell;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cxlvm_guest_agent::error::{AgentError, Step};
use cxlvm_guest_agent::fs::{RootFs, SysFs};
use cxlvm_guest_agent::{Options, node, region, run, topology};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "cxlvm-agent-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes through to the real (fake) tree and records every write in order.
struct Recording {
    inner: RootFs,
    writes: RefCell<Vec<(String, String)>>,
}

impl Recording {
    fn new(root: &Path) -> Self {
        Self {
            inner: RootFs::new(root),
            writes: RefCell::new(Vec::new()),
        }
    }

    fn writes(&self) -> Vec<(String, String)> {
        self.writes.borrow().clone()
    }

    /// Index of the first write to `path`.
    fn first(&self, path: &str) -> usize {
        self.writes
            .borrow()
            .iter()
            .position(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("no write to {path}"))
    }
}

impl SysFs for Recording {
    fn path(&self, rel: &str) -> PathBuf {
        self.inner.path(rel)
    }
    fn read(&self, rel: &str) -> io::Result<String> {
        self.inner.read(rel)
    }
    fn write(&self, rel: &str, value: &str) -> io::Result<()> {
        self.writes
            .borrow_mut()
            .push((rel.to_owned(), value.to_owned()));
        self.inner.write(rel, value)
    }
    fn list(&self, rel: &str) -> io::Result<Vec<String>> {
        self.inner.list(rel)
    }
    fn exists(&self, rel: &str) -> bool {
        self.inner.exists(rel)
    }
    fn canonical(&self, rel: &str) -> io::Result<String> {
        self.inner.canonical(rel)
    }
}

/// One memdev of the fake tree.
struct Dev {
    ram: u64,
    /// Endpoint decoder 0's mode.
    mode: &'static str,
}

/// Builds the tree: `root0` (ACPI0017) with `decoder0.0` (a RAM window over host bridge
/// `port1`, uid 0), the host bridge's root ports, one memdev per root port with its endpoint
/// port (two endpoint decoders each), a pre-created `region0/` with empty attributes (what
/// the kernel shows right after `create_ram_region`), the `cxl_region` driver's `bind`, NUMA
/// nodes and memory-hotplug files.
struct Tree {
    dir: TempDir,
}

impl Tree {
    /// One host bridge holding every device.
    fn new(devs: &[Dev], window: u64) -> Self {
        Self::build(&[devs], window)
    }

    /// A window interleaved over `bridges.len()` host bridges (uid k = dport k, port 1 + k),
    /// each with its devices on its root ports; memdevs and endpoints numbered in that order.
    fn build(bridges: &[&[Dev]], window: u64) -> Self {
        let t = Tree {
            dir: TempDir::new("tree"),
        };
        let ndev: usize = bridges.iter().map(|b| b.len()).sum();
        let acpi = "devices/platform/ACPI0017:00/root0";
        t.dir(acpi);
        let rd = format!("{acpi}/decoder0.0");
        t.file(&format!("{rd}/cap_ram"), "1");
        t.file(&format!("{rd}/cap_pmem"), "0");
        t.file(&format!("{rd}/interleave_ways"), &bridges.len().to_string());
        t.file(&format!("{rd}/interleave_granularity"), "4096");
        t.file(&format!("{rd}/start"), "0x10000000000");
        t.file(&format!("{rd}/size"), &format!("{window:#x}"));
        let list: Vec<String> = (0..bridges.len()).map(|k| k.to_string()).collect();
        t.file(&format!("{rd}/target_list"), &list.join(","));
        t.file(&format!("{rd}/create_ram_region"), "region0");
        t.file(&format!("{rd}/delete_region"), "");
        let region = format!("{rd}/region0");
        for a in [
            "interleave_granularity",
            "interleave_ways",
            "size",
            "resource",
            "commit",
            "mode",
            "uuid",
        ] {
            t.file(&format!("{region}/{a}"), "");
        }
        for k in 0..ndev.max(1) {
            t.file(&format!("{region}/target{k}"), "");
        }
        let mut links = vec![
            ("root0".to_owned(), acpi.to_owned()),
            ("decoder0.0".to_owned(), rd.clone()),
            ("region0".to_owned(), region.clone()),
        ];
        let mut i = 0;
        for (k, devs) in bridges.iter().enumerate() {
            let bus = 0x34 + 0x10 * k;
            let hb = format!("devices/pci0000:{bus:02x}");
            t.file(&format!("{hb}/uevent"), "");
            t.link(&format!("{acpi}/dport{k}"), &hb);
            let pid = 1 + k;
            let port = format!("{acpi}/port{pid}");
            t.link(&format!("{port}/uport"), &hb);
            let hd = format!("{port}/decoder{pid}.0");
            t.file(&format!("{hd}/size"), "0x0");
            links.push((format!("port{pid}"), port.clone()));
            links.push((format!("decoder{pid}.0"), hd));
            for (rp, d) in devs.iter().enumerate() {
                let pci = format!(
                    "{hb}/0000:{bus:02x}:{rp:02x}.0/0000:{:02x}:00.0",
                    bus + 1 + rp
                );
                let mem = format!("{pci}/mem{i}");
                t.file(&format!("{mem}/ram/size"), &format!("{:#x}", d.ram));
                t.file(&format!("{mem}/pmem/size"), "0x0");
                t.file(&format!("{mem}/serial"), &format!("{i:#x}"));
                let eid = 1 + bridges.len() + i;
                let ep = format!("{port}/endpoint{eid}");
                t.link(&format!("{ep}/uport"), &mem);
                for n in 0..2 {
                    let dec = format!("{ep}/decoder{eid}.{n}");
                    t.file(&format!("{dec}/size"), "0x0");
                    t.file(&format!("{dec}/dpa_size"), "0x0");
                    t.file(&format!("{dec}/mode"), if n == 0 { d.mode } else { "none" });
                    t.file(&format!("{dec}/interleave_ways"), "1");
                    links.push((format!("decoder{eid}.{n}"), dec));
                }
                links.push((format!("mem{i}"), mem));
                links.push((format!("endpoint{eid}"), ep));
                i += 1;
            }
        }
        for (name, target) in links {
            t.link(&format!("bus/cxl/devices/{name}"), &target);
        }
        t.file("bus/cxl/drivers/cxl_region/bind", "");
        t.file("bus/cxl/drivers/cxl_region/unbind", "");
        t.file("devices/system/memory/auto_online_blocks", "offline");
        t.file("devices/system/memory/block_size_bytes", "8000000");
        t.node(0, "0-1", 2 * GIB, GIB);
        t
    }

    fn root(&self) -> &Path {
        &self.dir.0
    }

    fn dir(&self, rel: &str) {
        std::fs::create_dir_all(self.root().join(rel)).unwrap();
    }

    fn file(&self, rel: &str, content: &str) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root().join(rel)).unwrap()
    }

    /// A relative link at `rel` to `target` (both relative to the root), like the kernel's.
    fn link(&self, rel: &str, target: &str) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        self.dir(target);
        let depth = rel.split('/').count() - 1;
        let up = "../".repeat(depth);
        symlink(format!("{up}{target}"), p).unwrap();
    }

    fn node(&self, id: u32, cpus: &str, total: u64, free: u64) {
        let d = format!("devices/system/node/node{id}");
        self.file(&format!("{d}/cpulist"), &format!("{cpus}\n"));
        self.file(
            &format!("{d}/meminfo"),
            &format!(
                "Node {id} MemTotal:       {} kB\nNode {id} MemFree:        {} kB\n\
                 Node {id} MemUsed:        {} kB\nNode {id} HugePages_Total:     0\n",
                total / 1024,
                free / 1024,
                (total - free) / 1024
            ),
        );
    }
}

fn two_devices() -> Tree {
    Tree::new(
        &[
            Dev {
                ram: GIB,
                mode: "ram",
            },
            Dev {
                ram: GIB,
                mode: "none",
            },
        ],
        2 * GIB,
    )
}

#[test]
fn discovers_root_decoder_memdevs_and_endpoint_decoders() {
    let t = two_devices();
    let fs = RootFs::new(t.root());
    let topo = topology::discover(&fs).unwrap();
    assert_eq!(topo.root_decoders.len(), 1);
    let r = &topo.root_decoders[0];
    assert_eq!(
        (
            r.name.as_str(),
            r.port.as_str(),
            r.cap_ram,
            r.ways,
            r.granularity,
            r.size
        ),
        ("decoder0.0", "root0", true, 1, 4096, 2 * GIB)
    );
    assert_eq!(r.targets, [0]);
    let names: Vec<_> = topo.memdevs.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["mem0", "mem1"]);
    assert_eq!(topo.memdevs[0].endpoint.as_deref(), Some("endpoint2"));
    assert_eq!(topo.memdevs[1].endpoint.as_deref(), Some("endpoint3"));
    assert_eq!(topo.memdevs[1].ram_size, GIB);
    let decs: Vec<_> = topo.memdevs[1]
        .decoders
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(decs, ["decoder3.0", "decoder3.1"]);
    // region0/ exists but is not committed: no region yet.
    assert_eq!(topo.regions.len(), 1);
    assert!(topo.committed_region().is_none());
    let p = topology::placement(&fs, r, &topo.memdevs[0]).unwrap();
    assert_eq!((p.host_bridge.as_str(), p.position), ("port1", Some(0)));
}

#[test]
fn creates_a_region_with_the_exact_writes_in_order() {
    let t = two_devices();
    let fs = Recording::new(t.root());
    let topo = topology::discover(&fs).unwrap();
    assert!(fs.writes().is_empty(), "discovery writes nothing");
    let out = region::ensure(&fs, &topo).unwrap();
    let d = "bus/cxl/devices";
    let w = |p: &str, v: &str| (p.to_owned(), v.to_owned());
    assert_eq!(
        fs.writes(),
        [
            w(&format!("{d}/decoder0.0/create_ram_region"), "region0"),
            w(&format!("{d}/region0/interleave_granularity"), "4096"),
            w(&format!("{d}/region0/interleave_ways"), "2"),
            w(&format!("{d}/region0/size"), "0x80000000"),
            // decoder2.0 is already in ram mode with no DPA: only its size.
            w(&format!("{d}/decoder2.0/dpa_size"), "0x40000000"),
            w(&format!("{d}/region0/target0"), "decoder2.0"),
            // decoder3.0 is in mode "none": free DPA, switch to ram, then size.
            w(&format!("{d}/decoder3.0/dpa_size"), "0"),
            w(&format!("{d}/decoder3.0/mode"), "ram"),
            w(&format!("{d}/decoder3.0/dpa_size"), "0x40000000"),
            w(&format!("{d}/region0/target1"), "decoder3.0"),
            w(&format!("{d}/region0/commit"), "1"),
            w("devices/system/memory/auto_online_blocks", "online"),
            w("bus/cxl/drivers/cxl_region/bind", "region0"),
        ]
    );
    // The orderings the kernel depends on, spelled out.
    let at = |p: &str| fs.first(&format!("{d}/{p}"));
    assert!(at("decoder0.0/create_ram_region") < at("region0/interleave_granularity"));
    assert!(at("region0/interleave_granularity") < at("region0/interleave_ways"));
    assert!(at("region0/interleave_ways") < at("region0/size"));
    assert!(at("region0/size") < at("region0/target0"));
    assert!(at("decoder2.0/dpa_size") < at("region0/target0"));
    assert!(at("decoder3.0/mode") < at("region0/target1"));
    assert!(at("region0/target0") < at("region0/target1"));
    assert!(at("region0/target1") < at("region0/commit"));
    assert!(at("region0/commit") < fs.first("bus/cxl/drivers/cxl_region/bind"));

    assert!(out.created);
    assert!(out.skipped.is_empty(), "{:?}", out.skipped);
    let r = &out.region;
    assert_eq!(r.name, "region0");
    assert_eq!((r.size, r.ways, r.granularity), (2 * GIB, 2, 4096));
    assert_eq!(r.targets, ["decoder2.0", "decoder3.0"]);
    assert!(r.committed);
    // What landed in the files.
    let rd = "devices/platform/ACPI0017:00/root0/decoder0.0/region0";
    assert_eq!(t.read(&format!("{rd}/size")), "0x80000000");
    assert_eq!(t.read(&format!("{rd}/target1")), "decoder3.0");
    assert_eq!(t.read("bus/cxl/drivers/cxl_region/bind"), "region0");
    assert_eq!(t.read("devices/system/memory/auto_online_blocks"), "online");
}

#[test]
fn a_committed_region_is_used_and_nothing_is_written() {
    let t = two_devices();
    let rd = "devices/platform/ACPI0017:00/root0/decoder0.0/region0";
    for (a, v) in [
        ("commit", "1"),
        ("size", "0x80000000"),
        ("resource", "0x10000000000"),
        ("interleave_ways", "2"),
        ("interleave_granularity", "4096"),
        ("target0", "decoder2.0"),
        ("target1", "decoder3.0"),
    ] {
        t.file(&format!("{rd}/{a}"), &format!("{v}\n"));
    }
    let fs = Recording::new(t.root());
    let topo = topology::discover(&fs).unwrap();
    let out = region::ensure(&fs, &topo).unwrap();
    assert!(fs.writes().is_empty(), "{:?}", fs.writes());
    assert!(!out.created);
    assert_eq!(out.region.name, "region0");
    assert_eq!(out.region.base, Some(1 << 40));
    assert_eq!(out.region.size, 2 * GIB);
    assert_eq!(out.region.targets, ["decoder2.0", "decoder3.0"]);
}

#[test]
fn size_is_the_smallest_device_rounded_and_clipped_to_the_window() {
    let devs = [
        Dev {
            ram: GIB,
            mode: "ram",
        },
        Dev {
            ram: 896 * MIB,
            mode: "ram",
        },
    ];
    // 896 MiB x 2 = 1792 MiB, rounded down to 512 MiB: 1536 MiB.
    let t = Tree::new(&devs, 4 * GIB);
    let fs = RootFs::new(t.root());
    let topo = topology::discover(&fs).unwrap();
    let (plan, _) = region::plan(&fs, &topo).unwrap();
    assert_eq!(
        (plan.ways, plan.size, plan.dpa_size),
        (2, 1536 * MIB, 768 * MIB)
    );
    // A 1 GiB window clips it.
    let t = Tree::new(&devs, GIB);
    let fs = RootFs::new(t.root());
    let topo = topology::discover(&fs).unwrap();
    let (plan, _) = region::plan(&fs, &topo).unwrap();
    assert_eq!((plan.size, plan.dpa_size), (GIB, 512 * MIB));
}

#[test]
fn ways_drop_to_a_count_cxl_can_express() {
    let devs: Vec<Dev> = (0..5)
        .map(|_| Dev {
            ram: GIB,
            mode: "ram",
        })
        .collect();
    let t = Tree::new(&devs, 8 * GIB);
    let fs = RootFs::new(t.root());
    let topo = topology::discover(&fs).unwrap();
    let (plan, skipped) = region::plan(&fs, &topo).unwrap();
    assert_eq!(plan.ways, 4);
    let targets: Vec<_> = plan.targets.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(targets, ["mem0", "mem1", "mem2", "mem3"]);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].starts_with("mem4"), "{skipped:?}");
    // Three devices under a 1-way window: Linux takes only a power-of-2 multiple of the
    // window's ways, so 2.
    let t = Tree::new(&devs[..3], 8 * GIB);
    let fs = RootFs::new(t.root());
    let (plan, _) = region::plan(&fs, &topology::discover(&fs).unwrap()).unwrap();
    assert_eq!((plan.ways, plan.size), (2, 2 * GIB));
    assert!(region::ways_fit(3, 3) && region::ways_fit(6, 3) && region::ways_fit(12, 3));
    assert!(!region::ways_fit(3, 1) && !region::ways_fit(6, 2) && !region::ways_fit(4, 3));
    assert!(region::ways_fit(16, 1) && !region::ways_fit(32, 1));
}

#[test]
fn positions_follow_the_window_targets_across_host_bridges() {
    let dev = || Dev {
        ram: GIB,
        mode: "ram",
    };
    // A 2-way window over two bridges with two devices each: 4 ways, position i below the
    // window's target i mod 2 (mem0, mem1 on the first bridge; mem2, mem3 on the second).
    let (a, b) = ([dev(), dev()], [dev(), dev()]);
    let t = Tree::build(&[&a, &b], 8 * GIB);
    let fs = Recording::new(t.root());
    let topo = topology::discover(&fs).unwrap();
    assert_eq!(topo.root_decoders[0].targets, [0, 1]);
    let (plan, skipped) = region::plan(&fs, &topo).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!((plan.ways, plan.size), (4, 4 * GIB));
    let order: Vec<_> = plan
        .targets
        .iter()
        .map(|(m, d)| (m.as_str(), d.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("mem0", "decoder3.0"),
            ("mem2", "decoder5.0"),
            ("mem1", "decoder4.0"),
            ("mem3", "decoder6.0"),
        ]
    );
    region::create(&fs, &topo, &plan).unwrap();
    let targets: Vec<_> = fs
        .writes()
        .into_iter()
        .filter(|(p, _)| p.contains("region0/target"))
        .collect();
    assert_eq!(
        targets,
        [
            (
                "bus/cxl/devices/region0/target0".to_owned(),
                "decoder3.0".to_owned()
            ),
            (
                "bus/cxl/devices/region0/target1".to_owned(),
                "decoder5.0".to_owned()
            ),
            (
                "bus/cxl/devices/region0/target2".to_owned(),
                "decoder4.0".to_owned()
            ),
            (
                "bus/cxl/devices/region0/target3".to_owned(),
                "decoder6.0".to_owned()
            ),
        ]
    );
    // One device less on the second bridge: only 2 ways keep every position on its target.
    let t = Tree::build(&[&a, &b[..1]], 8 * GIB);
    let fs = RootFs::new(t.root());
    let (plan, skipped) = region::plan(&fs, &topology::discover(&fs).unwrap()).unwrap();
    assert_eq!(plan.ways, 2);
    let order: Vec<_> = plan.targets.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(order, ["mem0", "mem2"]);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
}

#[test]
fn a_failed_write_names_the_step_and_the_file() {
    let t = two_devices();
    // A directory where the commit attribute should be: the write fails.
    let commit = t
        .root()
        .join("devices/platform/ACPI0017:00/root0/decoder0.0/region0/commit");
    std::fs::remove_file(&commit).unwrap();
    std::fs::create_dir(&commit).unwrap();
    let fs = Recording::new(t.root());
    let topo = topology::discover(&fs).unwrap();
    let e = region::ensure(&fs, &topo).unwrap_err();
    assert_eq!(e.step(), Step::Commit);
    assert_eq!(
        e.path(),
        Some(t.root().join("bus/cxl/devices/region0/commit").as_path())
    );
    assert!(matches!(e, AgentError::Write { ref value, .. } if value == "1"));
    let msg = e.to_string();
    assert!(msg.starts_with("commit: writing \"1\" to "), "{msg}");
    assert!(msg.contains("region0/commit"), "{msg}");
    // Nothing after the commit was attempted.
    assert!(!fs.writes().iter().any(|(p, _)| p.ends_with("/bind")));
}

#[test]
fn no_ram_capable_root_decoder_is_a_plan_error() {
    let t = two_devices();
    t.file(
        "devices/platform/ACPI0017:00/root0/decoder0.0/cap_ram",
        "0\n",
    );
    let fs = Recording::new(t.root());
    let topo = topology::discover(&fs).unwrap();
    let e = region::ensure(&fs, &topo).unwrap_err();
    assert_eq!(e.step(), Step::Plan);
    assert!(e.to_string().contains("cap_ram"), "{e}");
    assert!(fs.writes().is_empty());
}

#[test]
fn parses_node_meminfo() {
    let text = "Node 1 MemTotal:        1048576 kB\nNode 1 MemFree:         1040000 kB\n\
                Node 1 MemUsed:            8576 kB\nNode 1 HugePages_Total:     0\n";
    let m = node::parse_meminfo(text).unwrap();
    assert_eq!(m.total_bytes, GIB);
    assert_eq!(m.free_bytes, 1_040_000 * 1024);
    assert_eq!(node::parse_meminfo("Node 0 MemFree: 5 kB\n"), None);
    assert_eq!(node::parse_meminfo(""), None);
}

#[test]
fn finds_the_memory_only_node() {
    let t = two_devices();
    t.node(1, "", 0, 0); // a CPU-less node without memory (the window before onlining)
    t.node(2, "", GIB, GIB - 8 * MIB);
    let fs = RootFs::new(t.root());
    let all = node::nodes(&fs).unwrap();
    assert_eq!(all.iter().map(|n| n.id).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(all[0].cpus, "0-1");
    let n = node::find_cxl_node(&all, None).unwrap();
    assert_eq!((n.id, n.mem.total_bytes), (2, GIB));
    // The dax device's target node wins when it is memory-only.
    t.node(3, "", GIB, GIB);
    let all = node::nodes(&fs).unwrap();
    assert_eq!(node::find_cxl_node(&all, Some(3)).unwrap().id, 3);
    assert_eq!(node::find_cxl_node(&all, Some(0)).unwrap().id, 2);
}

#[test]
fn waiting_for_a_node_is_bounded() {
    let t = two_devices();
    let fs = RootFs::new(t.root());
    let r = topology::read_region(&fs, "region0");
    let e = node::wait_for_node(&fs, &r, Duration::ZERO, Duration::from_millis(1)).unwrap_err();
    assert_eq!(e.step(), Step::Online);
    assert!(
        e.to_string().contains("no node with memory and no CPUs"),
        "{e}"
    );
}

#[test]
fn onlines_offline_blocks_of_the_region() {
    let t = two_devices();
    // 128 MiB blocks; region at 1 TiB, 256 MiB: blocks 8192 and 8193.
    for (i, s) in [
        (8191u64, "offline"),
        (8192, "offline"),
        (8193, "online"),
        (8194, "offline"),
    ] {
        t.file(&format!("devices/system/memory/memory{i}/state"), s);
    }
    let fs = RootFs::new(t.root());
    assert_eq!(node::online_blocks(&fs, 1 << 40, 256 * MIB), 1);
    assert_eq!(t.read("devices/system/memory/memory8192/state"), "online");
    assert_eq!(t.read("devices/system/memory/memory8191/state"), "offline");
    assert_eq!(t.read("devices/system/memory/memory8194/state"), "offline");
}

#[test]
fn run_without_measuring_reports_region_and_node() {
    let t = two_devices();
    t.node(1, "", 2 * GIB, 2 * GIB - 16 * MIB);
    let opts = Options {
        sysfs: t.root().to_owned(),
        measure: false,
        poweroff: false,
        wait: Duration::ZERO,
        ..Options::default()
    };
    let fs = RootFs::new(t.root());
    let report = run(&fs, &opts);
    assert!(report.ok, "{report:?}");
    let j = serde_json::to_value(&report).unwrap();
    assert_eq!(j["region"]["name"], "region0");
    assert_eq!(j["region"]["created"], true);
    assert_eq!(j["region"]["size"], 2 * GIB);
    assert_eq!(j["region"]["ways"], 2);
    assert_eq!(j["region"]["granularity"], 4096);
    assert_eq!(j["node"]["id"], 1);
    assert_eq!(j["node"]["mem_total_bytes"], 2 * GIB);
    assert_eq!(j["topology"]["memdevs"][1]["name"], "mem1");
    assert!(j["error"].is_null());
}

#[test]
fn the_binary_prints_one_json_object() {
    let t = two_devices();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cxlvm-agent"))
        .arg("--sysfs")
        .arg(t.root())
        .args(["--no-measure", "--no-poweroff", "--wait-secs", "0"])
        .output()
        .unwrap();
    // No memory-only node in this tree: the region is created, then onlining times out.
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert_eq!(j["region"]["created"], true);
    assert_eq!(j["error"]["step"], "online");
    assert_eq!(t.read("bus/cxl/drivers/cxl_region/bind"), "region0");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_cxlvm-agent"))
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// The measuring code on this host's node 0 (both "nodes" are node 0 here): the mapping binds,
/// every operation reports a rate, and the XSAVEC loop finds every byte.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn measures_and_runs_the_xsavec_loop_on_node0() {
    use cxlvm_guest_agent::measure;
    if !Path::new("/sys/devices/system/node/node0").exists() {
        eprintln!("no NUMA in this kernel: skipped");
        return;
    }
    let b = measure::bandwidth(0, 8 << 20, 1).unwrap();
    eprintln!("{}", serde_json::to_string(&b).unwrap());
    assert!(b.node0.store8_mbps > 0.0 && b.cxl.memcpy_mbps > 0.0);
    assert_eq!(
        b.node0.avx32_mbps.is_some(),
        std::arch::is_x86_feature_detected!("avx")
    );
    if let Some(p) = b.cxl.pages {
        assert_eq!(p.on_node, p.sampled);
    }
    let x = measure::xsavec_loop(0, 2 << 20, 2000).unwrap();
    if x.ran {
        assert_eq!(x.iterations, 2000);
        assert_eq!(x.mismatches, 0, "{:?}", x.first_mismatch);
        assert_eq!(x.bytes_checked, 2000 * 384);
    }
}
