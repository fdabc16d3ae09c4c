//! Finding the CXL topology in `<sysfs>/bus/cxl/devices/`.
//!
//! Names there are links to the devices' real directories:
//! `rootR` (the CXL root, from ACPI0017), `portP` (host bridges and switch ports),
//! `endpointE` (one per memdev, its `uport` link leading to the memdev), `memM` (memdevs, with
//! `ram/size`), `decoderX.Y` (decoder Y of the port whose id is X) and `regionN`. A port's
//! canonical path holds its ancestors, so `.../rootR/portP/endpointE` is an endpoint below host
//! bridge `portP` of root `rootR`. A root decoder's `target_list` names the root's downstream
//! ports by id, and `rootR/dportU` links to the host bridge whose `portP/uport` leads to the same
//! device: that is how the agent matches host bridges to root-decoder targets.

use serde::Serialize;

use crate::error::{AgentError, Step};
use crate::fs::{SysFs, parse_u64};

/// `<sysfs>/bus/cxl/devices`.
pub const CXL_DEVICES: &str = "bus/cxl/devices";

/// A root decoder (a CXL fixed memory window).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootDecoder {
    /// `decoderR.N`.
    pub name: String,
    /// `rootR`.
    pub port: String,
    pub cap_ram: bool,
    pub ways: u32,
    pub granularity: u64,
    /// The window's size in bytes.
    pub size: u64,
    /// Host-bridge (dport) ids in interleave order, from `target_list`.
    pub targets: Vec<u32>,
}

/// An endpoint decoder of a memdev's endpoint port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointDecoder {
    /// `decoderE.N`.
    pub name: String,
    /// HPA size: 0 while the decoder is in no region.
    pub size: u64,
    pub dpa_size: u64,
    /// `ram`, `pmem`, `none`, `mixed` (or empty if unreadable).
    pub mode: String,
}

/// A memory device with its endpoint port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Memdev {
    /// `memM`.
    pub name: String,
    /// Volatile capacity (`ram/size`).
    pub ram_size: u64,
    /// `endpointE`, if `cxl_mem` has probed the memdev.
    pub endpoint: Option<String>,
    /// The endpoint's canonical path (relative to the sysfs root).
    #[serde(skip)]
    pub endpoint_path: Option<String>,
    /// The endpoint's decoders, in order.
    pub decoders: Vec<EndpointDecoder>,
}

/// A region device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Region {
    pub name: String,
    /// HPA base (`resource`), when the kernel has placed it.
    pub base: Option<u64>,
    pub size: u64,
    pub ways: u32,
    pub granularity: u64,
    /// `commit` reads 1.
    pub committed: bool,
    /// `targetK` values that are set.
    pub targets: Vec<String>,
}

/// Everything the agent found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub root_decoders: Vec<RootDecoder>,
    pub memdevs: Vec<Memdev>,
    pub regions: Vec<Region>,
}

impl Topology {
    /// The first committed region.
    pub fn committed_region(&self) -> Option<&Region> {
        self.regions.iter().find(|r| r.committed)
    }
}

/// Reads `rel`, naming `step` on failure.
pub(crate) fn read(fs: &dyn SysFs, step: Step, rel: &str) -> Result<String, AgentError> {
    fs.read(rel).map_err(|source| AgentError::Read {
        step,
        path: fs.path(rel),
        source,
    })
}

/// Reads a number (`0x…` or decimal) from `rel`.
pub(crate) fn read_u64(fs: &dyn SysFs, step: Step, rel: &str) -> Result<u64, AgentError> {
    let text = read(fs, step, rel)?;
    parse_u64(&text).ok_or_else(|| AgentError::Parse {
        step,
        path: fs.path(rel),
        text,
        expected: "a number",
    })
}

/// Like [`read_u64`], `None` when the file is missing or empty (attributes older kernels lack,
/// or that a fake tree leaves empty).
pub(crate) fn read_u64_opt(fs: &dyn SysFs, rel: &str) -> Option<u64> {
    fs.read(rel).ok().and_then(|t| parse_u64(&t))
}

/// Splits `decoderX.Y` into `(X, Y)`.
pub fn decoder_ids(name: &str) -> Option<(u32, u32)> {
    let (x, y) = name.strip_prefix("decoder")?.split_once('.')?;
    Some((x.parse().ok()?, y.parse().ok()?))
}

/// The number after `prefix` in a name like `root0`, `endpoint3`, `mem1`, `region0`.
pub fn suffix_id(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// Reads the CXL devices.
pub fn discover(fs: &dyn SysFs) -> Result<Topology, AgentError> {
    let names = fs.list(CXL_DEVICES).map_err(|source| AgentError::Read {
        step: Step::Discover,
        path: fs.path(CXL_DEVICES),
        source,
    })?;
    let dev = |n: &str| format!("{CXL_DEVICES}/{n}");

    let roots: Vec<(u32, &String)> = names
        .iter()
        .filter_map(|n| suffix_id(n, "root").map(|id| (id, n)))
        .collect();
    let endpoints: Vec<(u32, &String)> = names
        .iter()
        .filter_map(|n| suffix_id(n, "endpoint").map(|id| (id, n)))
        .collect();

    let mut root_decoders = Vec::new();
    for n in &names {
        let Some((port_id, _)) = decoder_ids(n) else {
            continue;
        };
        let Some((_, root)) = roots.iter().find(|(id, _)| *id == port_id) else {
            continue;
        };
        let d = dev(n);
        let cap_ram = read(fs, Step::Discover, &format!("{d}/cap_ram"))? == "1";
        let ways = read_u64(fs, Step::Discover, &format!("{d}/interleave_ways"))? as u32;
        let granularity = read_u64(fs, Step::Discover, &format!("{d}/interleave_granularity"))?;
        let size = read_u64_opt(fs, &format!("{d}/size")).unwrap_or(0);
        let targets = fs
            .read(&format!("{d}/target_list"))
            .unwrap_or_default()
            .split(',')
            .filter_map(|t| t.trim().parse().ok())
            .collect();
        root_decoders.push(RootDecoder {
            name: n.clone(),
            port: (*root).clone(),
            cap_ram,
            ways,
            granularity,
            size,
            targets,
        });
    }

    let mut memdevs = Vec::new();
    for n in names.iter().filter(|n| suffix_id(n, "mem").is_some()) {
        let ram_size = read_u64(fs, Step::Discover, &format!("{}/ram/size", dev(n)))?;
        // The endpoint whose `uport` leads to this memdev.
        let me = fs.canonical(&dev(n)).ok();
        let mut endpoint = None;
        for (eid, e) in &endpoints {
            let Ok(up) = fs.canonical(&format!("{}/uport", dev(e))) else {
                continue;
            };
            let same = match &me {
                Some(me) => *me == up,
                None => up.rsplit('/').next() == Some(n.as_str()),
            };
            if same {
                endpoint = Some((*eid, (*e).clone()));
                break;
            }
        }
        let mut decoders = Vec::new();
        let mut endpoint_path = None;
        if let Some((eid, e)) = &endpoint {
            endpoint_path = fs.canonical(&dev(e)).ok();
            for d in &names {
                if decoder_ids(d).map(|(p, _)| p) != Some(*eid) {
                    continue;
                }
                let base = dev(d);
                decoders.push(EndpointDecoder {
                    name: d.clone(),
                    size: read_u64_opt(fs, &format!("{base}/size")).unwrap_or(0),
                    dpa_size: read_u64_opt(fs, &format!("{base}/dpa_size")).unwrap_or(0),
                    mode: fs.read(&format!("{base}/mode")).unwrap_or_default(),
                });
            }
        }
        memdevs.push(Memdev {
            name: n.clone(),
            ram_size,
            endpoint: endpoint.map(|(_, e)| e),
            endpoint_path,
            decoders,
        });
    }

    let mut regions = Vec::new();
    for n in names.iter().filter(|n| suffix_id(n, "region").is_some()) {
        regions.push(read_region(fs, n));
    }

    Ok(Topology {
        root_decoders,
        memdevs,
        regions,
    })
}

/// Reads a region's attributes; what cannot be read reads as unset (a region the kernel has
/// just created has most of them empty).
pub fn read_region(fs: &dyn SysFs, name: &str) -> Region {
    let d = format!("{CXL_DEVICES}/{name}");
    let ways = read_u64_opt(fs, &format!("{d}/interleave_ways")).unwrap_or(0) as u32;
    let mut targets = Vec::new();
    for k in 0..ways.max(1) {
        if let Ok(t) = fs.read(&format!("{d}/target{k}"))
            && !t.is_empty()
        {
            targets.push(t);
        }
    }
    Region {
        name: name.to_owned(),
        base: read_u64_opt(fs, &format!("{d}/resource")),
        size: read_u64_opt(fs, &format!("{d}/size")).unwrap_or(0),
        ways,
        granularity: read_u64_opt(fs, &format!("{d}/interleave_granularity")).unwrap_or(0),
        committed: fs.read(&format!("{d}/commit")).is_ok_and(|c| c == "1"),
        targets,
    }
}

/// Where a memdev sits below a root: the host bridge port directly below `rootR` in the
/// endpoint's canonical path, and that bridge's position in the root decoder's target list
/// (`None` when the root has no `dportU` links to match against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub host_bridge: String,
    pub position: Option<usize>,
}

/// Whether `memdev` is below root decoder `root`, and through which host bridge.
pub fn placement(fs: &dyn SysFs, root: &RootDecoder, memdev: &Memdev) -> Option<Placement> {
    let path = memdev.endpoint_path.as_deref()?;
    let parts: Vec<&str> = path.split('/').collect();
    let at = parts.iter().position(|p| *p == root.port)?;
    let hb = *parts.get(at + 1)?;
    suffix_id(hb, "port")?;
    // Match the bridge (its `uport`) against the root's dports named in the target list.
    let hb_dev = fs.canonical(&format!("{CXL_DEVICES}/{hb}/uport")).ok();
    let mut position = None;
    let mut any_link = false;
    for (i, t) in root.targets.iter().enumerate() {
        let Ok(dport) = fs.canonical(&format!("{CXL_DEVICES}/{}/dport{t}", root.port)) else {
            continue;
        };
        any_link = true;
        if hb_dev.as_deref() == Some(dport.as_str()) {
            position = Some(i);
            break;
        }
    }
    if any_link && position.is_none() {
        // The root knows its targets and this bridge is not one of this decoder's.
        return None;
    }
    Some(Placement {
        host_bridge: hb.to_owned(),
        position,
    })
}
