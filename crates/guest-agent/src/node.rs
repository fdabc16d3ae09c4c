//! NUMA nodes (`<sysfs>/devices/system/node/nodeN/`) and waiting for a region's memory to
//! come online on a new, CPU-less node.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{AgentError, Step};
use crate::fs::{SysFs, parse_u64};
use crate::topology::{Region, suffix_id};

/// `<sysfs>/devices/system/node`.
pub const NODES: &str = "devices/system/node";
/// `<sysfs>/devices/system/memory`.
pub const MEMORY: &str = "devices/system/memory";

/// The numbers of a node's `meminfo` the agent uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Meminfo {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// Parses `nodeN/meminfo`: lines `Node 1 MemTotal:  1048576 kB`. `None` without a MemTotal.
pub fn parse_meminfo(text: &str) -> Option<Meminfo> {
    let mut total = None;
    let mut free = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("Node") {
            continue;
        }
        let _node = words.next();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(v) = value.parse::<u64>() else {
            continue;
        };
        let bytes = match words.next() {
            Some("kB") => v.saturating_mul(1024),
            None => v,
            Some(_) => continue,
        };
        match key {
            "MemTotal:" => total = Some(bytes),
            "MemFree:" => free = Some(bytes),
            _ => {}
        }
    }
    Some(Meminfo {
        total_bytes: total?,
        free_bytes: free.unwrap_or(0),
    })
}

/// One NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub id: u32,
    /// `cpulist`, empty for a CPU-less node.
    pub cpus: String,
    pub mem: Meminfo,
}

impl Node {
    /// A node with memory and no CPUs: what onlined CXL memory makes.
    pub fn is_memory_only(&self) -> bool {
        self.cpus.is_empty() && self.mem.total_bytes > 0
    }
}

/// Reads every `nodeN` (online or not; one without a readable meminfo has no memory).
pub fn nodes(fs: &dyn SysFs) -> Result<Vec<Node>, AgentError> {
    let names = fs.list(NODES).map_err(|source| AgentError::Read {
        step: Step::Online,
        path: fs.path(NODES),
        source,
    })?;
    let mut out = Vec::new();
    for n in names {
        let Some(id) = suffix_id(&n, "node") else {
            continue;
        };
        let dir = format!("{NODES}/{n}");
        let cpus = fs.read(&format!("{dir}/cpulist")).unwrap_or_default();
        let mem = fs
            .read(&format!("{dir}/meminfo"))
            .ok()
            .and_then(|t| parse_meminfo(&t))
            .unwrap_or_default();
        out.push(Node { id, cpus, mem });
    }
    Ok(out)
}

/// The first memory-only node, preferring `want` (the dax device's `target_node`) when it is one.
pub fn find_cxl_node(nodes: &[Node], want: Option<u32>) -> Option<&Node> {
    if let Some(w) = want
        && let Some(n) = nodes.iter().find(|n| n.id == w && n.is_memory_only())
    {
        return Some(n);
    }
    nodes.iter().find(|n| n.is_memory_only())
}

/// The node the region's dax device targets (`<region>/dax_regionN/daxN.M/target_node`), if
/// the tree shows one.
pub fn dax_target_node(fs: &dyn SysFs, region: &str) -> Option<u32> {
    let rdir = format!("{}/{region}", crate::topology::CXL_DEVICES);
    for dr in fs.list(&rdir).ok()? {
        if !dr.starts_with("dax_region") {
            continue;
        }
        for d in fs.list(&format!("{rdir}/{dr}")).ok()? {
            if d.starts_with("dax")
                && !d.starts_with("dax_region")
                && let Ok(t) = fs.read(&format!("{rdir}/{dr}/{d}/target_node"))
                && let Ok(id) = t.parse::<u32>()
            {
                return Some(id);
            }
        }
    }
    None
}

/// Onlines the offline memory blocks inside `[base, base + size)`: the fallback when hot-added
/// blocks do not come up by themselves. Returns how many blocks it onlined.
pub fn online_blocks(fs: &dyn SysFs, base: u64, size: u64) -> usize {
    let Some(block) = fs
        .read(&format!("{MEMORY}/block_size_bytes"))
        .ok()
        .and_then(|t| parse_block_size(&t))
        .filter(|b| *b > 0)
    else {
        return 0;
    };
    let mut done = 0;
    let first = base.div_ceil(block);
    let end = (base + size) / block;
    for i in first..end {
        let state = format!("{MEMORY}/memory{i}/state");
        if fs.read(&state).is_ok_and(|s| s == "offline") && fs.write(&state, "online").is_ok() {
            done += 1;
        }
    }
    done
}

/// What waiting found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Onlined {
    pub node: Node,
    pub waited_ms: u64,
    /// Blocks the agent onlined itself (0 when the kernel did it).
    pub blocks_onlined_by_agent: usize,
}

/// Waits up to `timeout` for a memory-only node to appear, polling every `poll`. Halfway
/// through, onlines the region's offline blocks itself.
pub fn wait_for_node(
    fs: &dyn SysFs,
    region: &Region,
    timeout: Duration,
    poll: Duration,
) -> Result<Onlined, AgentError> {
    let start = Instant::now();
    let mut blocks = 0;
    let mut tried_blocks = false;
    loop {
        let all = nodes(fs)?;
        let want = dax_target_node(fs, &region.name);
        if let Some(n) = find_cxl_node(&all, want) {
            return Ok(Onlined {
                node: n.clone(),
                waited_ms: start.elapsed().as_millis() as u64,
                blocks_onlined_by_agent: blocks,
            });
        }
        let waited = start.elapsed();
        if !tried_blocks
            && waited >= timeout / 2
            && let Some(base) = region.base
        {
            tried_blocks = true;
            blocks = online_blocks(fs, base, region.size);
            continue;
        }
        if waited >= timeout {
            let seen: Vec<String> = all
                .iter()
                .map(|n| format!("node{} cpus '{}' {} bytes", n.id, n.cpus, n.mem.total_bytes))
                .collect();
            return Err(AgentError::Timeout {
                step: Step::Online,
                message: format!(
                    "no node with memory and no CPUs after {} ms ({}); is CONFIG_DEV_DAX_KMEM \
                     built in and auto-online on?",
                    waited.as_millis(),
                    seen.join(", ")
                ),
            });
        }
        std::thread::sleep(
            poll.min(timeout.saturating_sub(waited))
                .max(Duration::from_millis(1)),
        );
    }
}

/// Parses `memory/block_size_bytes` (hex, printed without a `0x` prefix).
pub fn parse_block_size(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.starts_with("0x") {
        parse_u64(t)
    } else {
        u64::from_str_radix(t, 16).ok()
    }
}
