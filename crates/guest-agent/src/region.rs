//! Creating a RAM region through Linux's CXL sysfs ABI (our research note linux-cxl.md §5.2):
//! `create_ram_region` (read the next name, write it back), the region's
//! `interleave_granularity`, `interleave_ways` and `size`, then for each position the endpoint
//! decoder's `mode`/`dpa_size` and the region's `targetK`, then `commit`, then a bind through
//! the `cxl_region` driver.

use serde::Serialize;

use crate::error::{AgentError, Step};
use crate::fs::SysFs;
use crate::topology::{self, CXL_DEVICES, Region, Topology, placement, read};

/// Region sizes are multiples of 256 MiB per interleave way.
pub const REGION_ALIGN: u64 = 256 << 20;

/// `<sysfs>/bus/cxl/drivers/cxl_region/bind`.
pub const BIND: &str = "bus/cxl/drivers/cxl_region/bind";

/// `<sysfs>/devices/system/memory/auto_online_blocks`.
pub const AUTO_ONLINE: &str = "devices/system/memory/auto_online_blocks";

/// Interleave ways the CXL decoders can express.
const VALID_WAYS: [u32; 8] = [1, 2, 3, 4, 6, 8, 12, 16];

/// Whether a region of `ways` fits a window of `window_ways`: Linux takes a region's ways only
/// as a power-of-2 multiple of the window's (so 3, 6 and 12 ways need a 3-way window).
pub fn ways_fit(ways: u32, window_ways: u32) -> bool {
    VALID_WAYS.contains(&ways)
        && window_ways > 0
        && ways.is_multiple_of(window_ways)
        && (ways / window_ways).is_power_of_two()
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The root decoder (`decoderR.N`).
    pub root: String,
    pub ways: u32,
    pub granularity: u64,
    /// HPA bytes.
    pub size: u64,
    /// DPA bytes each endpoint decoder gives (`size / ways`).
    pub dpa_size: u64,
    /// `(memdev, endpoint decoder)` for positions 0, 1, …
    pub targets: Vec<(String, String)>,
}

/// The region the agent ends up with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// True when the agent created it, false when a committed region was already there.
    pub created: bool,
    pub region: Region,
    /// The memdevs left out of the region, and why.
    pub skipped: Vec<String>,
}

fn topo_err(step: Step, message: impl Into<String>) -> AgentError {
    AgentError::Topology {
        step,
        message: message.into(),
    }
}

/// Chooses root decoder, memdevs, ways, granularity and size:
/// - the first root decoder with `cap_ram` = 1;
/// - every memdev below it with at least 256 MiB of RAM and a free endpoint decoder (HPA size
///   0); for an interleaved window, position *i* must sit below the window's target
///   *i mod window ways*, so the memdevs are dealt out across the window's host bridges;
/// - ways = their count, lowered to the largest count CXL can express (1, 2, 3, 4, 6, 8, 12,
///   16) that is a power-of-2 multiple of the window's ways ([`ways_fit`]);
/// - granularity = the root decoder's `interleave_granularity`;
/// - size = the smallest RAM size × ways, rounded down to 256 MiB × ways and clipped to the
///   window.
pub fn plan(fs: &dyn SysFs, topo: &Topology) -> Result<(Plan, Vec<String>), AgentError> {
    let root = topo
        .root_decoders
        .iter()
        .find(|r| r.cap_ram)
        .ok_or_else(|| topo_err(Step::Plan, "no root decoder with cap_ram = 1"))?;
    let root_ways = root.ways.max(1);
    let mut skipped = Vec::new();
    // Candidates per window target position (index 0 when the root cannot tell).
    let mut by_pos: Vec<Vec<(&topology::Memdev, &topology::EndpointDecoder)>> =
        vec![Vec::new(); root_ways as usize];
    for m in &topo.memdevs {
        if m.endpoint.is_none() {
            skipped.push(format!(
                "{}: no endpoint port (cxl_mem has not probed it)",
                m.name
            ));
            continue;
        }
        let Some(place) = placement(fs, root, m) else {
            skipped.push(format!("{}: not below {}", m.name, root.name));
            continue;
        };
        if m.ram_size < REGION_ALIGN {
            skipped.push(format!(
                "{}: ram size {:#x} below 256 MiB",
                m.name, m.ram_size
            ));
            continue;
        }
        let Some(dec) = m.decoders.iter().find(|d| d.size == 0) else {
            skipped.push(format!("{}: no free endpoint decoder", m.name));
            continue;
        };
        let pos = match place.position {
            Some(p) => p % root_ways as usize,
            None if root_ways == 1 => 0,
            None => {
                skipped.push(format!(
                    "{}: cannot tell which target of {} {} is",
                    m.name, root.name, place.host_bridge
                ));
                continue;
            }
        };
        by_pos[pos].push((m, dec));
    }
    let per_target = by_pos.iter().map(Vec::len).min().unwrap_or(0) as u32;
    let available = per_target * root_ways;
    let ways = VALID_WAYS
        .iter()
        .copied()
        .filter(|w| *w <= available && ways_fit(*w, root_ways))
        .max()
        .ok_or_else(|| {
            topo_err(
                Step::Plan,
                format!(
                    "no usable memdevs below {} ({} ways; {})",
                    root.name,
                    root_ways,
                    if skipped.is_empty() {
                        "none found".to_owned()
                    } else {
                        skipped.join("; ")
                    }
                ),
            )
        })?;
    let mut targets = Vec::new();
    for i in 0..ways as usize {
        let (m, d) = by_pos[i % root_ways as usize][i / root_ways as usize];
        targets.push((m.name.clone(), d.name.clone()));
    }
    for group in &by_pos {
        for (m, _) in group {
            if !targets.iter().any(|(n, _)| *n == m.name) {
                skipped.push(format!("{}: left out to keep {ways} ways", m.name));
            }
        }
    }
    let min_ram = targets
        .iter()
        .filter_map(|(n, _)| topo.memdevs.iter().find(|m| m.name == *n))
        .map(|m| m.ram_size)
        .min()
        .unwrap_or(0);
    let unit = REGION_ALIGN * u64::from(ways);
    let mut size = min_ram.saturating_mul(u64::from(ways)) / unit * unit;
    if root.size > 0 {
        size = size.min(root.size / unit * unit);
    }
    if size == 0 {
        return Err(topo_err(
            Step::Plan,
            format!(
                "{} ({:#x} bytes) cannot hold a {ways}-way region of 256 MiB per way",
                root.name, root.size
            ),
        ));
    }
    Ok((
        Plan {
            root: root.name.clone(),
            ways,
            granularity: root.granularity,
            size,
            dpa_size: size / u64::from(ways),
            targets,
        },
        skipped,
    ))
}

fn write(fs: &dyn SysFs, step: Step, rel: &str, value: &str) -> Result<(), AgentError> {
    fs.write(rel, value).map_err(|source| AgentError::Write {
        step,
        path: fs.path(rel),
        value: value.to_owned(),
        source,
    })
}

/// Runs the sysfs sequence for `plan` and returns the region as read back.
pub fn create(fs: &dyn SysFs, topo: &Topology, plan: &Plan) -> Result<Region, AgentError> {
    let root = format!("{CXL_DEVICES}/{}", plan.root);
    let create = format!("{root}/create_ram_region");
    let name = read(fs, Step::CreateRegion, &create)?;
    if topology::suffix_id(&name, "region").is_none() {
        return Err(AgentError::Parse {
            step: Step::CreateRegion,
            path: fs.path(&create),
            text: name,
            expected: "the next region name (regionN)",
        });
    }
    write(fs, Step::CreateRegion, &create, &name)?;
    let region = format!("{CXL_DEVICES}/{name}");
    if !fs.exists(&region) {
        return Err(topo_err(
            Step::CreateRegion,
            format!(
                "{} did not appear after writing {create}",
                fs.path(&region).display()
            ),
        ));
    }
    write(
        fs,
        Step::Granularity,
        &format!("{region}/interleave_granularity"),
        &plan.granularity.to_string(),
    )?;
    write(
        fs,
        Step::Ways,
        &format!("{region}/interleave_ways"),
        &plan.ways.to_string(),
    )?;
    write(
        fs,
        Step::Size,
        &format!("{region}/size"),
        &format!("{:#x}", plan.size),
    )?;
    for (k, (memdev, decoder)) in plan.targets.iter().enumerate() {
        let d = format!("{CXL_DEVICES}/{decoder}");
        let current = topo
            .memdevs
            .iter()
            .find(|m| m.name == *memdev)
            .and_then(|m| m.decoders.iter().find(|x| x.name == *decoder));
        let (mode, dpa) = current.map_or((String::new(), 0), |c| (c.mode.clone(), c.dpa_size));
        // A decoder holding DPA must give it back before its mode or size can change.
        if dpa != 0 || mode != "ram" {
            write(fs, Step::EndpointMode, &format!("{d}/dpa_size"), "0")?;
        }
        if mode != "ram" {
            write(fs, Step::EndpointMode, &format!("{d}/mode"), "ram")?;
        }
        write(
            fs,
            Step::EndpointDpaSize,
            &format!("{d}/dpa_size"),
            &format!("{:#x}", plan.dpa_size),
        )?;
        write(fs, Step::Target, &format!("{region}/target{k}"), decoder)?;
    }
    write(fs, Step::Commit, &format!("{region}/commit"), "1")?;
    // kmem onlines the memory only if hot-added blocks come up online.
    if fs.read(AUTO_ONLINE).is_ok_and(|v| v == "offline") {
        write(fs, Step::AutoOnline, AUTO_ONLINE, "online")?;
    }
    if let Err(e) = write(fs, Step::Bind, BIND, &name) {
        // Already bound (a kernel that probes on commit): fine.
        if !fs.exists(&format!("{region}/driver")) {
            return Err(e);
        }
    }
    Ok(topology::read_region(fs, &name))
}

/// The region to use: a committed one if there is one (nothing is written), else a new one.
pub fn ensure(fs: &dyn SysFs, topo: &Topology) -> Result<Outcome, AgentError> {
    if let Some(r) = topo.committed_region() {
        return Ok(Outcome {
            created: false,
            region: r.clone(),
            skipped: Vec::new(),
        });
    }
    let (plan, skipped) = plan(fs, topo)?;
    let region = create(fs, topo, &plan)?;
    Ok(Outcome {
        created: true,
        region,
        skipped,
    })
}
