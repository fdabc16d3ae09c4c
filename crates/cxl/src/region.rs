//! Firmware-committed regions: the `[[region]]` tables of a topology, checked and planned (which
//! decoder of which component gets what), and committed at machine build the way platform
//! firmware does, through the same component-register writes and commit validation a guest's
//! commit goes through.
//!
//! # Planning ([`plan`], called by [`Topology::validate`])
//!
//! A region of `W` devices (position `i` = the `i`-th device) in a window of `W_root` host
//! bridges at region granularity `G` is programmed as Linux programs (and, at boot, expects) a
//! region:
//!
//! - every endpoint decoder: HPA base and size of the whole region, `W` ways at `G`;
//! - the decoder of each window target (host bridge): the region's HPA range,
//!   `W_hb = W / W_root` ways at `G × pow2(W_root)` ([`child_granularity`]), its target list
//!   holding the root-port numbers of its devices: position `p` is on host bridge
//!   `targets[p mod W_root]` and is that bridge's target `(p >> log2(pow2(W_root))) mod W_hb`
//!   ([`crate::interleave::endpoint_position`] is the inverse);
//! - passthrough host bridges have no decoder (one root port, `W_hb = 1`).
//!
//! With more than one window target, `G` must equal the window's granularity (the window
//! interleaves host bridges at its own granularity; Linux refuses anything else); with one
//! target `G` is free (default: the window's). Interleaves that select on address bits above 14
//! are refused: Linux's `check_interleave_cap` only knows bits 8–14.
//!
//! **Placement**: the base defaults to the end of the highest earlier region of the same window
//! (or the window base); it must be the window base plus a multiple of 256 MiB × `W_root`.
//! Regions must not overlap.
//!
//! **Decoders and DPA**: on every component, the regions through it take decoders 0, 1, … in HPA
//! order (decoders commit in index order and must ascend). On a device of volatile capacity `V`
//! and persistent capacity `P`, the regions through it, in HPA order, take DPA from `[0, V)`
//! (volatile) or `[V, V + P)` (persistent, `persistent = true`), each after the device's earlier
//! regions of the same kind; the DPA skip covers the gap to the previous decoder's end (e.g. `V`
//! for a persistent region on a device whose volatile capacity is unused). A volatile region at a
//! higher HPA than a persistent region on the same device is refused: its DPA would go down.
//!
//! Finally every planned decoder is committed on a fresh [`HdmBlock`] with the component's
//! capabilities ([`HdmBlock::program`], the validation of a guest commit), so anything the
//! hardware model refuses is refused here, before anything starts.
//!
//! # Commit at build ([`commit`])
//!
//! For every device of a region: HDM Decoder Enable (HDM Global Control), DVSEC Mem_Enable
//! (configuration write), PCI Command.MEM of the device and its root port (already set by BAR
//! assignment; checked). Then each component's decoders in index order, endpoints first, by
//! register writes in Linux's order (Base High/Low, Size High/Low, Target List or DPA Skip
//! High/Low, Control with Commit, host-only type, IG, IW and Lock-On-Commit when `lock`).
//! A decoder that does not commit is an internal error: validation already committed it.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use cxlvm_pci::regs::{COMMAND, COMMAND_MEMORY};
use cxlvm_pci::{Endpoint, PciFunction, RootPort};

use crate::component::{CACHE_MEM_OFFSET, HDM_PTR};
use crate::dvsec;
use crate::fabric::{ComponentId, Fabric};
use crate::hdm::{
    CTRL_COMMIT, CTRL_COMMITTED, CTRL_HOST_ONLY, CTRL_IW_SHIFT, CTRL_LOCK_ON_COMMIT, CommitError,
    DEC_BASE_HI, DEC_BASE_LO, DEC_CTRL, DEC_SIZE_HI, DEC_SIZE_LO, DEC_TL_HI, DEC_TL_LO,
    DecoderTargets, GLOBAL_HDM_ENABLE, HDM_DECODER_STRIDE, HDM_DECODER0, HDM_GLOBAL_CTRL, HdmBlock,
    HdmKind, StaticEnv,
};
use crate::interleave::{Granularity, Ways, child_granularity, selection_bits};
use crate::topology::{CXL_UNIT, Topology, TopologyError, fmt_size};

/// Highest address bit a region's interleave may select on (Linux's `check_interleave_cap`
/// accepts bits 8–14 only).
pub const MAX_INTERLEAVE_BIT: u32 = 14;

/// Which capacity of its devices a region uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Capacity {
    /// DPA `[0, V)` (memfd).
    Volatile,
    /// DPA `[V, V + P)` (the persistent file).
    Persistent,
}

impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capacity::Volatile => "volatile",
            Capacity::Persistent => "persistent",
        })
    }
}

/// A component with HDM decoders, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Component {
    /// A host bridge (its CHBCR), by id.
    HostBridge(String),
    /// A Type-3 device, by id.
    Device(String),
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::HostBridge(id) => write!(f, "host bridge '{id}'"),
            Component::Device(id) => write!(f, "device '{id}'"),
        }
    }
}

fn fmt_left(b: u64) -> String {
    if b == 0 {
        "none".to_owned()
    } else {
        fmt_size(b)
    }
}

/// Why a region cannot be committed (the message follows `region '<id>': `).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// Two regions have this id.
    #[error("defined twice")]
    DefinedTwice,
    /// `window` names no window.
    #[error("window '{0}' does not exist")]
    NoSuchWindow(String),
    /// `devices` is empty.
    #[error("lists no devices")]
    NoDevices,
    /// A device id names no device.
    #[error("device '{0}' does not exist")]
    NoSuchDevice(String),
    /// A device is listed twice.
    #[error("device '{0}' is listed twice")]
    DeviceTwice(String),
    /// A device's host bridge is not a target of the window.
    #[error(
        "device '{device}' is under host bridge '{host_bridge}', which is not a target of window '{window}'"
    )]
    NotUnderWindow {
        /// Device id.
        device: String,
        /// Its host bridge.
        host_bridge: String,
        /// Window id.
        window: String,
    },
    /// The number of devices is not an interleave ways value.
    #[error("{0} devices: interleave ways must be 1, 2, 3, 4, 6, 8, 12 or 16")]
    Ways(usize),
    /// The devices do not spread evenly over the window's host bridges.
    #[error(
        "{ways} device(s) over the {targets} host bridges of window '{window}': the ways must be a multiple of the window's targets"
    )]
    NotMultiple {
        /// Devices.
        ways: usize,
        /// Window targets.
        targets: usize,
        /// Window id.
        window: String,
    },
    /// Each host bridge would interleave a number of root ports its decoder cannot.
    #[error("{0} devices per host bridge: host-bridge decoders interleave 1, 2, 4 or 8 ways")]
    HostBridgeWays(usize),
    /// The device at a position is not under the host bridge the window sends it to.
    #[error(
        "device '{device}' at position {position} is under host bridge '{host_bridge}', but window '{window}' sends position {position} to host bridge '{expected}' (position p goes to target p mod {targets})"
    )]
    WrongHostBridge {
        /// Device id.
        device: String,
        /// Its position.
        position: usize,
        /// Its host bridge.
        host_bridge: String,
        /// Window id.
        window: String,
        /// The host bridge of that position.
        expected: String,
        /// Window targets.
        targets: usize,
    },
    /// Two positions map to the same entry of a host bridge's target list.
    #[error("host bridge '{host_bridge}': positions {first} and {second} need the same target")]
    TargetConflict {
        /// Host bridge id.
        host_bridge: String,
        /// First position.
        first: usize,
        /// Second position.
        second: usize,
    },
    /// The granularity has no encoding.
    #[error("granularity {0} must be a power of two from 256 B to 16 KiB")]
    Granularity(u64),
    /// A window that interleaves host bridges needs the region at its granularity.
    #[error(
        "granularity {gran} B differs from the {window_gran} B of window '{window}', which interleaves {targets} host bridges: the region's granularity must be the window's"
    )]
    WindowGranularity {
        /// Region granularity in bytes.
        gran: u64,
        /// Window id.
        window: String,
        /// Window granularity in bytes.
        window_gran: u64,
        /// Window targets.
        targets: usize,
    },
    /// The host bridges' granularity (region granularity × window ways) has no encoding.
    #[error(
        "granularity {gran} under {targets} interleaved host bridges needs host-bridge decoders at {needed} B, above 16 KiB"
    )]
    HostBridgeGranularity {
        /// Region granularity in bytes.
        gran: u64,
        /// Window targets.
        targets: usize,
        /// What the host bridges would need.
        needed: u64,
    },
    /// The interleave selects on an address bit above [`MAX_INTERLEAVE_BIT`].
    #[error(
        "{ways} ways at {gran} B select on address bits up to {bit}; decoders are programmed on bits 8 to 14 only (what Linux accepts)"
    )]
    AddressBit {
        /// Ways of the decoder level.
        ways: u32,
        /// Its granularity in bytes.
        gran: u64,
        /// Highest bit used.
        bit: u32,
    },
    /// Size zero or not a multiple of 256 MiB × ways.
    #[error("size {} is not a non-zero multiple of 256 MiB x {ways} devices", fmt_size(*.size))]
    Size {
        /// Size in bytes.
        size: u64,
        /// Devices.
        ways: usize,
    },
    /// The base is not the window base plus a multiple of the placement unit.
    #[error(
        "base {base:#x} is not the base {window_base:#x} of window '{window}' plus a multiple of {}", fmt_size(*.unit)
    )]
    Misaligned {
        /// Base.
        base: u64,
        /// Window id.
        window: String,
        /// Window base.
        window_base: u64,
        /// 256 MiB × window targets.
        unit: u64,
    },
    /// The region does not fit its window.
    #[error(
        "[{base:#x}, {end:#x}) does not fit window '{window}' [{window_base:#x}, {window_end:#x})"
    )]
    OutsideWindow {
        /// Base.
        base: u64,
        /// End (saturated).
        end: u64,
        /// Window id.
        window: String,
        /// Window base.
        window_base: u64,
        /// Window end.
        window_end: u64,
    },
    /// Two regions overlap.
    #[error("[{base:#x}, {end:#x}) overlaps region '{other}'")]
    Overlap {
        /// Base.
        base: u64,
        /// End.
        end: u64,
        /// The other region.
        other: String,
    },
    /// A device has not enough capacity of the region's kind left.
    #[error(
        "device '{device}' has {} of its {capacity} capacity left, the region needs {} on each device", fmt_left(*.left), fmt_size(*.needed)
    )]
    Capacity {
        /// Device id.
        device: String,
        /// Which capacity.
        capacity: Capacity,
        /// Bytes left.
        left: u64,
        /// Bytes needed (size / ways).
        needed: u64,
    },
    /// A volatile region above a persistent one on the same device: DPA would go down.
    #[error(
        "on device '{device}' its volatile DPA would lie below that of persistent region '{other}' at a lower address (a device's decoders ascend in HPA and DPA together)"
    )]
    DpaOrder {
        /// Device id.
        device: String,
        /// The persistent region below it.
        other: String,
    },
    /// More regions through a component than it has decoders.
    #[error("{component} has {decoders} HDM decoder(s), fewer than the regions through it")]
    Decoders {
        /// The component.
        component: Component,
        /// Its decoders.
        decoders: u8,
    },
    /// The HDM decoder model refuses the programming (the last check, as a guest commit).
    #[error("{component} decoder {decoder} would not commit: {source}")]
    Rejected {
        /// The component.
        component: Component,
        /// Decoder index.
        decoder: usize,
        /// Why.
        #[source]
        source: CommitError,
    },
}

/// What a region programs into one Type-3 device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDecoder {
    /// Device index.
    pub device: usize,
    /// Interleave position.
    pub position: usize,
    /// Decoder index.
    pub decoder: usize,
    /// DPA skip programmed.
    pub dpa_skip: u64,
    /// DPA of the decoder's first byte.
    pub dpa_base: u64,
}

/// What a region programs into one host bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBridgeDecoder {
    /// Host bridge index.
    pub host_bridge: usize,
    /// Decoder index; `None` for a passthrough host bridge (nothing to program).
    pub decoder: Option<usize>,
    /// Ways (devices below it in the region).
    pub ways: Ways,
    /// Granularity (region granularity × power-of-2 part of the window ways).
    pub gran: Granularity,
    /// Root-port numbers in target-list order.
    pub targets: Vec<u8>,
}

/// A planned region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionPlan {
    /// Region id.
    pub id: String,
    /// Window index.
    pub window: usize,
    /// HPA base.
    pub base: u64,
    /// HPA size.
    pub size: u64,
    /// Region ways (devices).
    pub ways: Ways,
    /// Region (endpoint) granularity.
    pub gran: Granularity,
    /// Which capacity it uses.
    pub capacity: Capacity,
    /// Lock-On-Commit.
    pub lock: bool,
    /// Endpoint decoders, in position order.
    pub endpoints: Vec<EndpointDecoder>,
    /// Host-bridge decoders, in window target order.
    pub host_bridges: Vec<HostBridgeDecoder>,
}

impl RegionPlan {
    /// End of the HPA range.
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// Device index of each position.
    pub fn devices(&self) -> Vec<usize> {
        self.endpoints.iter().map(|e| e.device).collect()
    }
}

/// Checks and plans every region of `topo` (windows placed and checked first, as
/// [`Topology::validate`] does). The result is a pure function of the topology.
pub fn plan(topo: &Topology) -> Result<Vec<RegionPlan>, TopologyError> {
    let mut plans: Vec<RegionPlan> = Vec::new();
    let mut ids = BTreeSet::new();
    for r in &topo.regions {
        let err = |source| TopologyError::Region {
            id: r.id.clone(),
            source: Box::new(source),
        };
        if !ids.insert(r.id.as_str()) {
            return Err(err(RegionError::DefinedTwice));
        }
        let p = plan_one(topo, r, &plans).map_err(err)?;
        plans.push(p);
    }
    allocate(topo, &mut plans)?;
    dry_run(topo, &plans)?;
    Ok(plans)
}

fn hb_of(topo: &Topology, device: usize) -> Option<usize> {
    topo.host_bridge(&topo.devices.get(device)?.host_bridge)
}

fn plan_one(
    topo: &Topology,
    r: &crate::topology::Region,
    earlier: &[RegionPlan],
) -> Result<RegionPlan, RegionError> {
    let wi = topo
        .window(&r.window)
        .ok_or_else(|| RegionError::NoSuchWindow(r.window.clone()))?;
    let w = &topo.windows[wi];
    if r.devices.is_empty() {
        return Err(RegionError::NoDevices);
    }
    let mut devs = Vec::new();
    for (i, id) in r.devices.iter().enumerate() {
        let d = topo
            .device(id)
            .ok_or_else(|| RegionError::NoSuchDevice(id.clone()))?;
        if r.devices[..i].contains(id) {
            return Err(RegionError::DeviceTwice(id.clone()));
        }
        devs.push(d);
    }
    let targets: Vec<usize> = w
        .targets
        .iter()
        .filter_map(|t| topo.host_bridge(t))
        .collect();
    let hb_name = |h: Option<usize>| {
        h.and_then(|h| topo.host_bridges.get(h))
            .map_or_else(String::new, |h| h.id.clone())
    };
    for &d in &devs {
        let h = hb_of(topo, d);
        if !h.is_some_and(|h| targets.contains(&h)) {
            return Err(RegionError::NotUnderWindow {
                device: topo.devices[d].id.clone(),
                host_bridge: hb_name(h),
                window: w.id.clone(),
            });
        }
    }
    let n = devs.len();
    let ways = u32::try_from(n)
        .ok()
        .and_then(Ways::from_count)
        .ok_or(RegionError::Ways(n))?;
    let root = targets.len();
    let root_ways = u32::try_from(root)
        .ok()
        .and_then(Ways::from_count)
        .ok_or(RegionError::Ways(n))?;
    if root == 0 || !n.is_multiple_of(root) {
        return Err(RegionError::NotMultiple {
            ways: n,
            targets: root,
            window: w.id.clone(),
        });
    }
    let per_hb = n / root;
    let hb_ways = match per_hb {
        1 | 2 | 4 | 8 => {
            Ways::from_count(per_hb as u32).ok_or(RegionError::HostBridgeWays(per_hb))?
        }
        _ => return Err(RegionError::HostBridgeWays(per_hb)),
    };
    for (p, &d) in devs.iter().enumerate() {
        let expected = targets[p % root];
        let h = hb_of(topo, d);
        if h != Some(expected) {
            return Err(RegionError::WrongHostBridge {
                device: topo.devices[d].id.clone(),
                position: p,
                host_bridge: hb_name(h),
                window: w.id.clone(),
                expected: hb_name(Some(expected)),
                targets: root,
            });
        }
    }

    // Granularities and the address bits they select on.
    let window_gran = w.granularity_bytes();
    let gbytes = r.granularity.map_or(window_gran, |g| g.0);
    let gran = Granularity::from_bytes(gbytes).ok_or(RegionError::Granularity(gbytes))?;
    if root > 1 && gbytes != window_gran {
        return Err(RegionError::WindowGranularity {
            gran: gbytes,
            window: w.id.clone(),
            window_gran,
            targets: root,
        });
    }
    let hb_gran = child_granularity(gran, root_ways).ok_or(RegionError::HostBridgeGranularity {
        gran: gbytes,
        targets: root,
        needed: gbytes.saturating_mul(u64::from(root_ways.pow2_factor())),
    })?;
    for (wy, g) in [(ways, gran), (hb_ways, hb_gran)] {
        if let Some((_, high)) = selection_bits(wy, g)
            && high > MAX_INTERLEAVE_BIT
        {
            return Err(RegionError::AddressBit {
                ways: wy.count(),
                gran: g.bytes(),
                bit: high,
            });
        }
    }

    // Host-bridge target lists.
    let mut host_bridges: Vec<HostBridgeDecoder> = targets
        .iter()
        .map(|&h| HostBridgeDecoder {
            host_bridge: h,
            decoder: None,
            ways: hb_ways,
            gran: hb_gran,
            targets: vec![0; per_hb],
        })
        .collect();
    let mut taken: Vec<Vec<Option<usize>>> = vec![vec![None; per_hb]; root];
    let mut endpoints = Vec::new();
    for (p, &d) in devs.iter().enumerate() {
        let slot = p % root;
        let t = (p >> root_ways.pow2_bits()) % per_hb;
        if let Some(first) = taken[slot][t] {
            return Err(RegionError::TargetConflict {
                host_bridge: hb_name(Some(targets[slot])),
                first,
                second: p,
            });
        }
        taken[slot][t] = Some(p);
        host_bridges[slot].targets[t] = topo.devices[d].root_port;
        endpoints.push(EndpointDecoder {
            device: d,
            position: p,
            decoder: 0,
            dpa_skip: 0,
            dpa_base: 0,
        });
    }

    // Size and place.
    let size = r.size.0;
    let quantum = CXL_UNIT * n as u64;
    if size == 0 || !size.is_multiple_of(quantum) {
        return Err(RegionError::Size { size, ways: n });
    }
    let window_base = w.base.map_or(0, |b| b.0);
    let window_end = window_base.saturating_add(w.size.0);
    let base = match r.base {
        Some(b) => b.0,
        None => earlier
            .iter()
            .filter(|p| p.window == wi)
            .map(RegionPlan::end)
            .max()
            .unwrap_or(window_base),
    };
    let end = base.saturating_add(size);
    let outside = RegionError::OutsideWindow {
        base,
        end,
        window: w.id.clone(),
        window_base,
        window_end,
    };
    if base < window_base {
        return Err(outside);
    }
    let unit = CXL_UNIT * root as u64;
    if !(base - window_base).is_multiple_of(unit) {
        return Err(RegionError::Misaligned {
            base,
            window: w.id.clone(),
            window_base,
            unit,
        });
    }
    if base.checked_add(size).is_none_or(|e| e > window_end) {
        return Err(outside);
    }
    if let Some(o) = earlier
        .iter()
        .find(|p| p.window == wi && base < p.end() && p.base < end)
    {
        return Err(RegionError::Overlap {
            base,
            end,
            other: o.id.clone(),
        });
    }
    Ok(RegionPlan {
        id: r.id.clone(),
        window: wi,
        base,
        size,
        ways,
        gran,
        capacity: if r.persistent {
            Capacity::Persistent
        } else {
            Capacity::Volatile
        },
        lock: r.locked(),
        endpoints,
        host_bridges,
    })
}

/// Decoder indices on every component and DPA on every device, in HPA order.
fn allocate(topo: &Topology, plans: &mut [RegionPlan]) -> Result<(), TopologyError> {
    let by_base = |mut v: Vec<(usize, usize)>, plans: &[RegionPlan]| {
        v.sort_by_key(|&(pi, _)| plans[pi].base);
        v
    };
    for (d, dev) in topo.devices.iter().enumerate() {
        let mine: Vec<(usize, usize)> = plans
            .iter()
            .enumerate()
            .filter_map(|(pi, p)| {
                p.endpoints
                    .iter()
                    .position(|e| e.device == d)
                    .map(|ei| (pi, ei))
            })
            .collect();
        let mine = by_base(mine, plans);
        let decoders = dev.hdm_caps().normalized(HdmKind::Endpoint).decoders;
        let (v, p) = (dev.volatile_bytes(), dev.persistent_bytes());
        let (mut next_v, mut next_p) = (0u64, v);
        let mut end = 0u64;
        let mut last_persistent: Option<usize> = None;
        for (k, (pi, ei)) in mine.into_iter().enumerate() {
            let plan = &plans[pi];
            let err = |source| TopologyError::Region {
                id: plan.id.clone(),
                source: Box::new(source),
            };
            if k >= usize::from(decoders) {
                return Err(err(RegionError::Decoders {
                    component: Component::Device(dev.id.clone()),
                    decoders,
                }));
            }
            let share = plan.size / u64::from(plan.ways.count());
            let (start, limit) = match plan.capacity {
                Capacity::Volatile => (next_v, v),
                Capacity::Persistent => (next_p, v.saturating_add(p)),
            };
            if start.checked_add(share).is_none_or(|e| e > limit) {
                return Err(err(RegionError::Capacity {
                    device: dev.id.clone(),
                    capacity: plan.capacity,
                    left: limit.saturating_sub(start),
                    needed: share,
                }));
            }
            if start < end {
                return Err(err(RegionError::DpaOrder {
                    device: dev.id.clone(),
                    other: last_persistent.map_or_else(String::new, |o| plans[o].id.clone()),
                }));
            }
            match plan.capacity {
                Capacity::Volatile => next_v = start + share,
                Capacity::Persistent => {
                    next_p = start + share;
                    last_persistent = Some(pi);
                }
            }
            let e = &mut plans[pi].endpoints[ei];
            e.decoder = k;
            e.dpa_skip = start - end;
            e.dpa_base = start;
            end = start + share;
        }
    }
    for (h, hb) in topo.host_bridges.iter().enumerate() {
        let Some(caps) = hb.hdm_caps() else { continue };
        let decoders = caps.normalized(HdmKind::Port).decoders;
        let mine: Vec<(usize, usize)> = plans
            .iter()
            .enumerate()
            .filter_map(|(pi, p)| {
                p.host_bridges
                    .iter()
                    .position(|x| x.host_bridge == h)
                    .map(|xi| (pi, xi))
            })
            .collect();
        for (k, (pi, xi)) in by_base(mine, plans).into_iter().enumerate() {
            if k >= usize::from(decoders) {
                return Err(TopologyError::Region {
                    id: plans[pi].id.clone(),
                    source: Box::new(RegionError::Decoders {
                        component: Component::HostBridge(hb.id.clone()),
                        decoders,
                    }),
                });
            }
            plans[pi].host_bridges[xi].decoder = Some(k);
        }
    }
    Ok(())
}

/// The windows a component under host bridge `hb` may decode, as `(base, size)`.
fn windows_of(topo: &Topology, hb: usize) -> Vec<(u64, u64)> {
    topo.windows
        .iter()
        .filter(|w| w.targets.iter().any(|t| topo.host_bridge(t) == Some(hb)))
        .map(|w| (w.base.map_or(0, |b| b.0), w.size.0))
        .collect()
}

/// Commits every planned decoder on a fresh decoder block of its component, as a guest commit.
fn dry_run(topo: &Topology, plans: &[RegionPlan]) -> Result<(), TopologyError> {
    for (d, dev) in topo.devices.iter().enumerate() {
        let mut block = HdmBlock::new(HdmKind::Endpoint, dev.hdm_caps());
        let env = StaticEnv {
            windows: hb_of(topo, d).map_or_else(Vec::new, |h| windows_of(topo, h)),
            ports: vec![],
            capacity: dev.volatile_bytes().saturating_add(dev.persistent_bytes()),
        };
        let mut mine: Vec<(&RegionPlan, &EndpointDecoder)> = plans
            .iter()
            .filter_map(|p| p.endpoints.iter().find(|e| e.device == d).map(|e| (p, e)))
            .collect();
        mine.sort_by_key(|(_, e)| e.decoder);
        for (p, e) in mine {
            let result = block.program(
                e.decoder,
                p.base,
                p.size,
                p.ways,
                p.gran,
                DecoderTargets::DpaSkip(e.dpa_skip),
                &env,
            );
            let planned = block
                .committed()
                .get(e.decoder)
                .is_some_and(|c| c.dpa_base == e.dpa_base);
            if let Err(source) = result {
                return Err(TopologyError::Region {
                    id: p.id.clone(),
                    source: Box::new(RegionError::Rejected {
                        component: Component::Device(dev.id.clone()),
                        decoder: e.decoder,
                        source,
                    }),
                });
            }
            debug_assert!(planned, "region '{}': DPA base as planned", p.id);
        }
    }
    for (h, hb) in topo.host_bridges.iter().enumerate() {
        let Some(caps) = hb.hdm_caps() else { continue };
        let mut block = HdmBlock::new(HdmKind::Port, caps);
        let env = StaticEnv {
            windows: windows_of(topo, h),
            ports: (0..hb.root_ports).collect(),
            capacity: 0,
        };
        let mut mine: Vec<(&RegionPlan, &HostBridgeDecoder, usize)> = plans
            .iter()
            .filter_map(|p| {
                let x = p.host_bridges.iter().find(|x| x.host_bridge == h)?;
                Some((p, x, x.decoder?))
            })
            .collect();
        mine.sort_by_key(|&(_, _, n)| n);
        for (p, x, n) in mine {
            block
                .program(
                    n,
                    p.base,
                    p.size,
                    x.ways,
                    x.gran,
                    DecoderTargets::Ports(&x.targets),
                    &env,
                )
                .map_err(|source| TopologyError::Region {
                    id: p.id.clone(),
                    source: Box::new(RegionError::Rejected {
                        component: Component::HostBridge(hb.id.clone()),
                        decoder: n,
                        source,
                    }),
                })?;
        }
    }
    Ok(())
}

/// A firmware commit at build that did not happen (validation should have refused the region):
/// an internal error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FirmwareError {
    /// The decoder model set Error-Not-Committed.
    #[error("region '{region}': {component} decoder {decoder} did not commit: {source}")]
    Rejected {
        /// Region id.
        region: String,
        /// Component.
        component: Component,
        /// Decoder index.
        decoder: usize,
        /// Why.
        #[source]
        source: CommitError,
    },
    /// Control reads neither Committed nor an error.
    #[error(
        "region '{region}': {component} decoder {decoder} did not commit (Control {control:#x})"
    )]
    NotCommitted {
        /// Region id.
        region: String,
        /// Component.
        component: Component,
        /// Decoder index.
        decoder: usize,
        /// Control as read back.
        control: u32,
    },
    /// An enable did not read back set.
    #[error("device '{device}': {what} does not read back set after firmware set it")]
    Enable {
        /// Device id.
        device: String,
        /// Which enable.
        what: &'static str,
    },
}

/// Offset of decoder `n`'s register `reg` in a component register block.
fn decoder_reg(n: usize, reg: usize) -> u64 {
    (CACHE_MEM_OFFSET + HDM_PTR + HDM_DECODER0 + HDM_DECODER_STRIDE * n + reg) as u64
}

fn write32(fabric: &Fabric, id: ComponentId, off: u64, v: u32) {
    fabric.write(id, off, &v.to_le_bytes());
}

fn read32(fabric: &Fabric, id: ComponentId, off: u64) -> u32 {
    let mut b = [0u8; 4];
    fabric.read(id, off, &mut b);
    u32::from_le_bytes(b)
}

fn config16(f: &dyn PciFunction, off: u16) -> u16 {
    let mut b = [0u8; 2];
    f.read_config(off, &mut b);
    u16::from_le_bytes(b)
}

/// One decoder to program: which component, which decoder, and its registers.
struct Program<'a> {
    region: &'a RegionPlan,
    id: ComponentId,
    component: Component,
    decoder: usize,
    ways: Ways,
    gran: Granularity,
    /// Target list (port) or DPA skip (endpoint).
    tl: u64,
}

/// Programs and commits every region of `plans` (from [`plan`] of `topo`) through the fabric's
/// register path, like platform firmware at reset: enables on every device of a region, then
/// each component's decoders in index order, endpoints first. `endpoints[i]` is device `i`'s
/// PCI function with its Device DVSEC at `dvsecs[i]`; `root_ports[h][p]` the root ports.
pub fn commit(
    topo: &Topology,
    plans: &[RegionPlan],
    fabric: &Fabric,
    endpoints: &[Arc<Endpoint>],
    dvsecs: &[u16],
    root_ports: &[Vec<Arc<RootPort>>],
) -> Result<(), FirmwareError> {
    let hdm_base = (CACHE_MEM_OFFSET + HDM_PTR) as u64;
    let mut devices: Vec<usize> = plans.iter().flat_map(RegionPlan::devices).collect();
    devices.sort_unstable();
    devices.dedup();
    for &d in &devices {
        let (Some(ep), Some(&dv), Some(dev)) =
            (endpoints.get(d), dvsecs.get(d), topo.devices.get(d))
        else {
            continue;
        };
        let id = ComponentId::Device(d);
        let enable = |what| FirmwareError::Enable {
            device: dev.id.clone(),
            what,
        };
        let g = read32(fabric, id, hdm_base + HDM_GLOBAL_CTRL as u64);
        write32(
            fabric,
            id,
            hdm_base + HDM_GLOBAL_CTRL as u64,
            g | GLOBAL_HDM_ENABLE,
        );
        if read32(fabric, id, hdm_base + HDM_GLOBAL_CTRL as u64) & GLOBAL_HDM_ENABLE == 0 {
            return Err(enable("HDM Decoder Enable"));
        }
        let ctl = dv + dvsec::DEVICE_CONTROL;
        let c = config16(ep.as_ref(), ctl);
        ep.write_config(ctl, &(c | dvsec::MEM_ENABLE).to_le_bytes());
        if config16(ep.as_ref(), ctl) & dvsec::MEM_ENABLE == 0 {
            return Err(enable("DVSEC Mem_Enable"));
        }
        // Command.MEM: set when the BARs were assigned; a region needs it on both functions.
        let rp = topo
            .host_bridge(&dev.host_bridge)
            .and_then(|h| root_ports.get(h))
            .and_then(|ports| ports.get(usize::from(dev.root_port)));
        if config16(ep.as_ref(), COMMAND) & COMMAND_MEMORY == 0
            || rp.is_some_and(|rp| config16(rp.as_ref(), COMMAND) & COMMAND_MEMORY == 0)
        {
            return Err(enable("PCI Command.MEM"));
        }
    }

    let mut programs: Vec<Program<'_>> = Vec::new();
    for &d in &devices {
        let mut mine: Vec<Program<'_>> = plans
            .iter()
            .filter_map(|p| {
                let e = p.endpoints.iter().find(|e| e.device == d)?;
                Some(Program {
                    region: p,
                    id: ComponentId::Device(d),
                    component: Component::Device(topo.devices[d].id.clone()),
                    decoder: e.decoder,
                    ways: p.ways,
                    gran: p.gran,
                    tl: e.dpa_skip,
                })
            })
            .collect();
        mine.sort_by_key(|p| p.decoder);
        programs.extend(mine);
    }
    for (h, hb) in topo.host_bridges.iter().enumerate() {
        let mut mine: Vec<Program<'_>> = plans
            .iter()
            .filter_map(|p| {
                let x = p.host_bridges.iter().find(|x| x.host_bridge == h)?;
                Some(Program {
                    region: p,
                    id: ComponentId::HostBridge(h),
                    component: Component::HostBridge(hb.id.clone()),
                    decoder: x.decoder?,
                    ways: x.ways,
                    gran: x.gran,
                    tl: x
                        .targets
                        .iter()
                        .enumerate()
                        .fold(0u64, |acc, (i, &t)| acc | u64::from(t) << (8 * i)),
                })
            })
            .collect();
        mine.sort_by_key(|p| p.decoder);
        programs.extend(mine);
    }
    for p in programs {
        let reg = |r| decoder_reg(p.decoder, r);
        let (base, size) = (p.region.base, p.region.size);
        for (r, v) in [
            (DEC_BASE_HI, (base >> 32) as u32),
            (DEC_BASE_LO, base as u32),
            (DEC_SIZE_HI, (size >> 32) as u32),
            (DEC_SIZE_LO, size as u32),
            (DEC_TL_HI, (p.tl >> 32) as u32),
            (DEC_TL_LO, p.tl as u32),
        ] {
            write32(fabric, p.id, reg(r), v);
        }
        let mut ctrl = u32::from(p.gran.enc())
            | u32::from(p.ways.enc()) << CTRL_IW_SHIFT
            | CTRL_HOST_ONLY
            | CTRL_COMMIT;
        if p.region.lock {
            ctrl |= CTRL_LOCK_ON_COMMIT;
        }
        write32(fabric, p.id, reg(DEC_CTRL), ctrl);
        let control = read32(fabric, p.id, reg(DEC_CTRL));
        if control & CTRL_COMMITTED == 0 {
            return Err(match fabric.commit_error(p.id, p.decoder) {
                Some(source) => FirmwareError::Rejected {
                    region: p.region.id.clone(),
                    component: p.component,
                    decoder: p.decoder,
                    source,
                },
                None => FirmwareError::NotCommitted {
                    region: p.region.id.clone(),
                    component: p.component,
                    decoder: p.decoder,
                    control,
                },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
