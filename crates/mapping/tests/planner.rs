//! The mapping planner against the routing function it must agree with.
//!
//! Fabrics are built and programmed through the component registers the way Linux does (as in
//! tests/fabric.rs); a few cases that commit validation cannot produce (decoders past the device
//! capacity, XOR maps with high bits, terabyte windows) use hand-built decode graphs. Every plan
//! is checked against `DecodeGraph::route`: exactness (every mapped byte sampled, including range
//! ends and every piece's first and last byte, goes where the plan says) and completeness (every
//! claimed HPA sampled across the windows is covered, no unclaimed one is mapped).

#[path = "../../cxl/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{caps, commit, hdm_base, uncommit, wr32};
use cxlvm_cxl::fabric::{ComponentId, ComponentMmio, Fabric, FabricSpec};
use cxlvm_cxl::graph::{DecodeGraph, DeviceNode, HostBridgeNode, PortNode, Target, WindowNode};
use cxlvm_cxl::hdm::CommittedDecoder;
use cxlvm_cxl::interleave::xormaps;
use cxlvm_cxl::interleave::{Granularity, Ways};
use cxlvm_cxl::topology::Arithmetic;
use cxlvm_mapping::planner::{MmioReason, PAGE_SIZE, Piece, RangePlan, plan};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const UNIT: u64 = 256 * MIB;
const WBASE: u64 = 1 << 40;
const NO_LIMIT: u64 = u64::MAX;

// ---------------------------------------------------------------------------------------------
// Fabric rig (after tests/fabric.rs)
// ---------------------------------------------------------------------------------------------

fn window(base: u64, size: u64, targets: Vec<usize>, gran: u64, arith: Arithmetic) -> WindowNode {
    let ways = Ways::from_count(targets.len() as u32).unwrap();
    let gran = Granularity::from_bytes(gran).unwrap();
    WindowNode {
        base,
        size,
        ways,
        gran,
        arithmetic: arith,
        xormaps: if arith == Arithmetic::Xor {
            xormaps(ways, gran)
        } else {
            vec![]
        },
        targets,
    }
}

/// One device of `cap` bytes behind every root port.
struct Rig {
    fabric: Arc<Fabric>,
    /// Device index of (hb, port).
    dev: Vec<Vec<usize>>,
    passthrough: Vec<bool>,
}

/// `hbs[i]` = (passthrough, root ports); every device has `cap` bytes of persistent capacity
/// (interleaves of it are stitched from the devices' files; see [`rig_volatile`]).
fn rig(windows: Vec<WindowNode>, hbs: &[(bool, u8)], cap: u64) -> Rig {
    rig_of(windows, hbs, cap, false)
}

/// [`rig`] with volatile devices: their interleaves are region stores at any granularity.
fn rig_volatile(windows: Vec<WindowNode>, hbs: &[(bool, u8)], cap: u64) -> Rig {
    rig_of(windows, hbs, cap, true)
}

fn rig_of(windows: Vec<WindowNode>, hbs: &[(bool, u8)], cap: u64, volatile: bool) -> Rig {
    let (v, p_cap) = if volatile { (cap, 0) } else { (0, cap) };
    let mut devices = Vec::new();
    let mut dev = Vec::new();
    for (h, &(_, n)) in hbs.iter().enumerate() {
        let mut vs = Vec::new();
        for p in 0..n {
            vs.push(devices.len());
            devices.push((h, p, caps(false, 0), v, p_cap));
        }
        dev.push(vs);
    }
    let spec = FabricSpec {
        windows,
        host_bridges: hbs
            .iter()
            .map(|&(pt, n)| (pt, (!pt).then(|| caps(true, n)), n))
            .collect(),
        devices,
    };
    Rig {
        fabric: Fabric::new(spec),
        dev,
        passthrough: hbs.iter().map(|h| h.0).collect(),
    }
}

/// A rig with one modulo window over all host bridges, sized for a region over every device.
fn simple_rig(hbs: &[u8], passthrough: bool, window_gran: u64, cap: u64) -> Rig {
    let ndev: u64 = hbs.iter().map(|&n| u64::from(n)).sum();
    let w = window(
        WBASE,
        ndev * cap,
        (0..hbs.len()).collect(),
        window_gran,
        Arithmetic::Modulo,
    );
    let hbs: Vec<(bool, u8)> = hbs.iter().map(|&n| (passthrough, n)).collect();
    rig(vec![w], &hbs, cap)
}

impl Rig {
    fn mmio(&self, id: ComponentId) -> ComponentMmio {
        ComponentMmio::new(self.fabric.clone(), id)
    }

    fn graph(&self) -> Arc<DecodeGraph> {
        self.fabric.graph()
    }

    /// Everything Linux enables before committing an endpoint decoder.
    fn enable(&self, h: usize, p: usize) {
        let d = self.dev[h][p];
        let m = self.mmio(ComponentId::Device(d));
        let hdm = hdm_base(&m).unwrap();
        wr32(&m, hdm + 4, 2); // HDM Decoder Enable
        self.fabric.set_pci_mem(ComponentId::Device(d), true);
        self.fabric
            .set_pci_mem(ComponentId::RootPort { hb: h, port: p }, true);
        self.fabric.set_mem_enable(d, true);
    }

    /// Region position order: position p → host bridge `root[p % R]`, its `(p / R)`-th port of
    /// `ports[p % R]`.
    fn order(root: &[usize], ports: &[Vec<usize>]) -> Vec<(usize, usize)> {
        let r = root.len();
        let k = ports[0].len();
        (0..r * k)
            .map(|p| (root[p % r], ports[p % r][p / r]))
            .collect()
    }

    fn devices_in_order(&self, root: &[usize], ports: &[Vec<usize>]) -> Vec<usize> {
        Self::order(root, ports)
            .into_iter()
            .map(|(h, p)| self.dev[h][p])
            .collect()
    }

    /// Creates a region the way Linux does: enables, endpoint decoders (with DPA `skip`) in
    /// position order, then host-bridge decoders (HB IG = region IG × pow2(root ways) when the
    /// host bridge interleaves). Each component uses its next free decoder. Returns whether
    /// everything committed.
    fn region(
        &self,
        base: u64,
        size: u64,
        gran: u64,
        root: &[usize],
        ports: &[Vec<usize>],
        skip: u64,
    ) -> bool {
        let order = Self::order(root, ports);
        let w = order.len() as u32;
        let mut ok = true;
        for &(h, p) in &order {
            self.enable(h, p);
            let d = self.dev[h][p];
            let n = self.graph().devices[d].decoders.len() as u64;
            ok &= commit(
                &self.mmio(ComponentId::Device(d)),
                n,
                base,
                size,
                w,
                gran,
                skip,
            );
        }
        let r = Ways::from_count(root.len() as u32).map_or(1, |w| u64::from(w.pow2_factor()));
        for (i, &h) in root.iter().enumerate() {
            if self.passthrough[h] {
                continue;
            }
            let k = ports[i].len();
            let hb_gran = if k > 1 { gran * r } else { gran };
            let tl = ports[i]
                .iter()
                .enumerate()
                .fold(0u64, |a, (j, &p)| a | (p as u64) << (8 * j));
            let n = self.graph().host_bridges[h].decoders.len() as u64;
            ok &= commit(
                &self.mmio(ComponentId::HostBridge(h)),
                n,
                base,
                size,
                k as u32,
                hb_gran,
                tl,
            );
        }
        ok
    }
}

/// The independent formula: the pieces of a modulo region over `devices` (position order).
fn expected_pieces(devices: &[usize], size: u64, gran: u64, dpa_base: u64) -> Vec<Piece> {
    let w = devices.len() as u64;
    (0..size / gran)
        .map(|c| Piece {
            device: devices[(c % w) as usize],
            dpa: dpa_base + (c / w) * gran,
            len: gran,
        })
        .collect()
}

/// Piece lists are long: report the first difference rather than both lists.
fn assert_pieces(got: &[Piece], want: &[Piece], what: &str) {
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!("{what}: piece {i} is {:?}, want {:?}", got[i], want[i]);
    }
    assert_eq!(got.len(), want.len(), "{what}: piece count");
}

// ---------------------------------------------------------------------------------------------
// Checking plans against route()
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

fn dev(t: Target) -> Option<(usize, u64)> {
    match t {
        Target::Device { device, dpa } => Some((device, dpa)),
        Target::Unclaimed(_) => None,
    }
}

/// May an `MmioOnly` range with this reason contain unclaimed bytes?
fn may_have_holes(reason: &MmioReason) -> bool {
    reason.may_have_holes()
}

/// Plans with an index for point look-ups.
struct Index<'a> {
    plans: &'a [RangePlan],
    /// For Interleaved plans: HPA offset of each piece.
    offsets: Vec<Vec<u64>>,
}

enum Hit<'a> {
    None,
    Mapped(usize, u64),
    Mmio(&'a MmioReason),
}

impl<'a> Index<'a> {
    fn new(plans: &'a [RangePlan]) -> Self {
        let offsets = plans
            .iter()
            .map(|p| match p {
                RangePlan::Interleaved { pieces, .. } => pieces
                    .iter()
                    .scan(0u64, |at, pc| {
                        let o = *at;
                        *at += pc.len;
                        Some(o)
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        Index { plans, offsets }
    }

    fn lookup(&self, x: u64) -> Hit<'a> {
        let i = self.plans.partition_point(|p| p.end() <= x);
        let Some(p) = self.plans.get(i).filter(|p| p.hpa() <= x) else {
            return Hit::None;
        };
        match p {
            RangePlan::Linear {
                hpa, device, dpa, ..
            } => Hit::Mapped(*device, dpa + (x - hpa)),
            RangePlan::Interleaved { hpa, pieces, .. } => {
                let off = x - hpa;
                let offs = &self.offsets[i];
                let j = offs.partition_point(|&o| o <= off) - 1;
                Hit::Mapped(pieces[j].device, pieces[j].dpa + (off - offs[j]))
            }
            RangePlan::Stored { hpa, layout, .. } => match layout.at_offset(x - hpa) {
                Some(s) => Hit::Mapped(s.device, s.dpa),
                None => Hit::None,
            },
            RangePlan::MmioOnly { reason, .. } => Hit::Mmio(reason),
        }
    }
}

/// Offsets worth sampling in a range of `len` bytes: ends, page and granule edges, random ones.
fn offsets(len: u64, rng: &mut Rng, random: usize) -> Vec<u64> {
    let mut v = vec![0, len - 1, len / 2];
    for e in [
        255u64,
        256,
        1023,
        1024,
        4095,
        4096,
        8191,
        16383,
        16384,
        65535,
        1 << 20,
    ] {
        v.push(e);
        v.push(len.wrapping_sub(e + 1));
    }
    for _ in 0..random {
        v.push(rng.below(len));
    }
    v.retain(|&o| o < len);
    v
}

/// Exactness, ordering, alignment and budget; returns the mappings used.
fn check_exact(g: &DecodeGraph, plans: &[RangePlan], budget: u64, rng: &mut Rng) -> u64 {
    for pair in plans.windows(2) {
        assert!(pair[0].end() <= pair[1].hpa(), "sorted, disjoint: {pair:?}");
    }
    let mut used = 0;
    for p in plans {
        assert!(!p.is_empty());
        assert_eq!(g.window_of(p.hpa()), Some(p.window()), "{p:?}");
        assert_eq!(g.window_of(p.end() - 1), Some(p.window()), "{p:?}");
        used += p.mappings();
        match p {
            RangePlan::Linear {
                hpa,
                len,
                device,
                dpa,
                ..
            } => {
                assert_eq!((hpa | len | dpa) % PAGE_SIZE, 0, "aligned {p:?}");
                for off in offsets(*len, rng, 200) {
                    assert_eq!(
                        g.route(hpa + off),
                        Target::Device {
                            device: *device,
                            dpa: dpa + off
                        },
                        "Linear {hpa:#x}+{len:#x}, offset {off:#x}"
                    );
                }
            }
            RangePlan::Stored {
                hpa, len, layout, ..
            } => {
                assert_eq!((hpa | len) % PAGE_SIZE, 0, "aligned {p:?}");
                assert_eq!(layout.len(), *len, "the store is the range");
                assert!(layout.extents().count() > 1, "one device is Linear");
                for (d, dpa, n) in layout.extents() {
                    assert!(
                        dpa + n <= g.devices[d].volatile,
                        "region stores hold volatile capacity only: device {d} {dpa:#x}+{n:#x}"
                    );
                }
                for off in offsets(*len, rng, 300) {
                    let s = layout.at_offset(off).expect("inside");
                    assert_eq!(
                        g.route(hpa + off),
                        Target::Device {
                            device: s.device,
                            dpa: s.dpa
                        },
                        "Stored {hpa:#x}+{len:#x}, offset {off:#x}"
                    );
                    let back = layout.at_dpa(s.device, s.dpa).expect("its DPA");
                    assert_eq!(back.offset, off, "DPA -> offset inverts offset -> DPA");
                    assert!(s.len >= 1 && off + s.len <= *len);
                }
            }
            RangePlan::Interleaved {
                hpa, len, pieces, ..
            } => {
                assert!(pieces.len() > 1, "a single piece is Linear");
                assert_eq!(pieces.iter().map(|pc| pc.len).sum::<u64>(), *len);
                let n = pieces.len();
                // Every piece's edges for moderate counts, else the first/last 64 and a sample.
                let check_all = n <= 300_000;
                let mut at = *hpa;
                for (i, pc) in pieces.iter().enumerate() {
                    assert_eq!((pc.dpa | pc.len | at) % PAGE_SIZE, 0, "aligned {pc:?}");
                    if i > 0 {
                        let prev = pieces[i - 1];
                        assert!(
                            prev.device != pc.device || prev.dpa + prev.len != pc.dpa,
                            "pieces {i} and {} would merge",
                            i - 1
                        );
                    }
                    if check_all || i < 64 || i + 64 >= n || rng.chance(1) {
                        for off in [0, pc.len - 1, rng.below(pc.len)] {
                            assert_eq!(
                                g.route(at + off),
                                Target::Device {
                                    device: pc.device,
                                    dpa: pc.dpa + off
                                },
                                "piece {i} {pc:?} at {at:#x}, offset {off:#x}"
                            );
                        }
                    }
                    at += pc.len;
                }
            }
            RangePlan::MmioOnly {
                hpa, len, reason, ..
            } => {
                // Trimmed to claimed bytes, except where the planner documents it may not be.
                if !matches!(
                    reason,
                    MmioReason::PeriodTooLarge { .. } | MmioReason::XorPartiallyDecoded { .. }
                ) {
                    assert!(dev(g.route(*hpa)).is_some(), "starts claimed: {p:?}");
                    assert!(dev(g.route(hpa + len - 1)).is_some(), "ends claimed: {p:?}");
                }
                if !may_have_holes(reason) {
                    for off in offsets(*len, rng, 50) {
                        assert!(dev(g.route(hpa + off)).is_some(), "{p:?} at {off:#x}");
                    }
                }
            }
        }
    }
    assert!(used <= budget, "{used} mappings > budget {budget}");
    used
}

/// Completeness: claimed HPAs sampled across every window (random, and around every decoder
/// edge) are covered, mapped ones agree with route(), unclaimed ones are not mapped.
fn check_complete(g: &DecodeGraph, plans: &[RangePlan], rng: &mut Rng, random: usize) {
    let idx = Index::new(plans);
    let mut xs = Vec::new();
    let mut edges = Vec::new();
    for hb in &g.host_bridges {
        for d in &hb.decoders {
            edges.extend([d.base, d.end()]);
        }
    }
    for dv in &g.devices {
        for d in &dv.decoders {
            edges.extend([d.base, d.end()]);
        }
    }
    for w in &g.windows {
        edges.extend([w.base, w.base + w.size]);
        for _ in 0..random {
            xs.push(w.base + rng.below(w.size));
        }
    }
    for e in edges {
        for d in [0u64, 1, 256, 4096, 16384, 1 << 20] {
            xs.push(e.wrapping_sub(d + 1));
            xs.push(e.wrapping_add(d));
        }
    }
    for x in xs {
        let t = dev(g.route(x));
        match (t, idx.lookup(x)) {
            (Some(_), Hit::None) => panic!("claimed HPA {x:#x} ({t:?}) not covered"),
            (Some(t), Hit::Mapped(d, a)) => assert_eq!(t, (d, a), "HPA {x:#x}"),
            (Some(_), Hit::Mmio(_)) | (None, Hit::None) => {}
            (None, Hit::Mapped(d, a)) => panic!("unclaimed HPA {x:#x} mapped to {d}:{a:#x}"),
            (None, Hit::Mmio(r)) => {
                assert!(may_have_holes(r), "unclaimed {x:#x} in MmioOnly \"{r}\"")
            }
        }
    }
}

fn check(g: &DecodeGraph, budget: u64, seed: u64) -> Vec<RangePlan> {
    let plans = plan(g, budget);
    let mut rng = Rng::new(seed);
    check_exact(g, &plans, budget, &mut rng);
    check_complete(g, &plans, &mut rng, 2000);
    plans
}

fn linear(window: usize, hpa: u64, len: u64, device: usize, dpa: u64) -> RangePlan {
    RangePlan::Linear {
        window,
        hpa,
        len,
        device,
        dpa,
    }
}

fn pieces_of(p: &RangePlan) -> &[Piece] {
    match p {
        RangePlan::Interleaved { pieces, .. } => pieces,
        other => panic!("not Interleaved: {other:?}"),
    }
}

fn reason_of(p: &RangePlan) -> &MmioReason {
    match p {
        RangePlan::MmioOnly { reason, .. } => reason,
        other => panic!("not MmioOnly: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Linear regions
// ---------------------------------------------------------------------------------------------

#[test]
fn one_way_region_over_the_whole_window_is_one_linear_range() {
    let r = simple_rig(&[1], false, 4096, GIB);
    assert!(plan(&r.graph(), NO_LIMIT).is_empty(), "nothing committed");
    assert!(r.region(WBASE, GIB, 4096, &[0], &[vec![0]], 0));
    let plans = check(&r.graph(), NO_LIMIT, 1);
    assert_eq!(plans, vec![linear(0, WBASE, GIB, 0, 0)]);
}

#[test]
fn region_smaller_than_the_window_is_planned_alone() {
    let w = window(WBASE, 4 * GIB, vec![0], 4096, Arithmetic::Modulo);
    let r = rig(vec![w], &[(false, 1)], GIB);
    assert!(r.region(WBASE + GIB, 512 * MIB, 256, &[0], &[vec![0]], 0));
    let plans = check(&r.graph(), NO_LIMIT, 2);
    assert_eq!(plans, vec![linear(0, WBASE + GIB, 512 * MIB, 0, 0)]);
}

#[test]
fn two_regions_in_one_window_are_two_linear_ranges() {
    // One host bridge, two root ports; region A on device 0, region B on device 1, each with an
    // endpoint decoder and its own host-bridge decoder.
    let w = window(WBASE, 4 * GIB, vec![0], 4096, Arithmetic::Modulo);
    let r = rig(vec![w], &[(false, 2)], GIB);
    assert!(r.region(WBASE, 512 * MIB, 4096, &[0], &[vec![0]], 0));
    assert!(r.region(WBASE + 2 * GIB, GIB, 4096, &[0], &[vec![1]], 0));
    let g = r.graph();
    assert_eq!(g.host_bridges[0].decoders.len(), 2);
    let plans = check(&g, NO_LIMIT, 3);
    assert_eq!(
        plans,
        vec![
            linear(0, WBASE, 512 * MIB, 0, 0),
            linear(0, WBASE + 2 * GIB, GIB, 1, 0),
        ]
    );
}

#[test]
fn passthrough_host_bridge_region_is_linear() {
    let r = simple_rig(&[1], true, 4096, GIB);
    assert!(r.region(WBASE, GIB, 4096, &[0], &[vec![0]], 0));
    assert!(r.graph().host_bridges[0].decoders.is_empty());
    let plans = check(&r.graph(), NO_LIMIT, 4);
    assert_eq!(plans, vec![linear(0, WBASE, GIB, 0, 0)]);
}

#[test]
fn dpa_skip_and_second_decoder_give_nonzero_dpa() {
    let w = window(WBASE, 4 * GIB, vec![0], 4096, Arithmetic::Modulo);
    let r = rig(vec![w], &[(true, 1)], GIB);
    // Decoder 0 with a 256 MiB DPA skip: DPA 256 MiB.
    assert!(r.region(WBASE, UNIT, 4096, &[0], &[vec![0]], UNIT));
    // Decoder 1 with another 256 MiB skip: DPA 256 + 256 + 256 MiB.
    assert!(r.region(WBASE + 2 * GIB, UNIT, 4096, &[0], &[vec![0]], UNIT));
    let g = r.graph();
    assert_eq!(g.devices[0].decoders[1].dpa_base, 3 * UNIT);
    let plans = check(&g, NO_LIMIT, 5);
    assert_eq!(
        plans,
        vec![
            linear(0, WBASE, UNIT, 0, UNIT),
            linear(0, WBASE + 2 * GIB, UNIT, 0, 3 * UNIT),
        ]
    );
}

#[test]
fn contiguous_decoders_of_one_device_merge_into_one_linear_range() {
    let w = window(WBASE, 4 * GIB, vec![0], 4096, Arithmetic::Modulo);
    let r = rig(vec![w], &[(true, 1)], GIB);
    assert!(r.region(WBASE, UNIT, 4096, &[0], &[vec![0]], 0));
    assert!(r.region(WBASE + UNIT, 2 * UNIT, 256, &[0], &[vec![0]], 0));
    // Not contiguous in HPA: a separate range.
    assert!(r.region(WBASE + GIB, UNIT, 4096, &[0], &[vec![0]], 0));
    let plans = check(&r.graph(), NO_LIMIT, 6);
    assert_eq!(
        plans,
        vec![
            linear(0, WBASE, 3 * UNIT, 0, 0),
            linear(0, WBASE + GIB, UNIT, 0, 3 * UNIT),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Interleaved regions
// ---------------------------------------------------------------------------------------------

/// A region over every device of a simple rig at `gran`; checks the exact pieces.
fn interleave_case(hbs: &[u8], gran: u64, cap: u64) {
    let window_gran = if hbs.len() > 1 { gran } else { 4096 };
    let r = simple_rig(hbs, false, window_gran, cap);
    let root: Vec<usize> = (0..hbs.len()).collect();
    let ports: Vec<Vec<usize>> = hbs.iter().map(|&n| (0..n as usize).collect()).collect();
    assert!(r.region(
        WBASE,
        r.dev.iter().flatten().count() as u64 * cap,
        gran,
        &root,
        &ports,
        0
    ));
    let devices = r.devices_in_order(&root, &ports);
    let size = devices.len() as u64 * cap;
    let plans = check(&r.graph(), NO_LIMIT, gran ^ hbs.len() as u64);
    assert_eq!(plans.len(), 1, "{hbs:?} at {gran}: {:?}", plans.first());
    let RangePlan::Interleaved {
        window, hpa, len, ..
    } = &plans[0]
    else {
        panic!("{hbs:?} at {gran}: {:?}", plans[0]);
    };
    assert_eq!((*window, *hpa, *len), (0, WBASE, size));
    let want = expected_pieces(&devices, size, gran, 0);
    assert_pieces(pieces_of(&plans[0]), &want, &format!("{hbs:?} at {gran}"));
    assert_eq!(plans[0].mappings(), size / gran);
}

#[test]
fn two_and_four_way_interleave_across_root_ports_gives_exact_pieces() {
    for gran in [4096, 16384] {
        interleave_case(&[2], gran, 512 * MIB);
        interleave_case(&[4], gran, 256 * MIB);
    }
}

#[test]
fn interleave_across_host_bridges_gives_exact_pieces() {
    for gran in [4096, 16384] {
        interleave_case(&[1, 1], gran, 512 * MIB);
    }
    // 2 HBs x 2 RPs: HB granularity = 2 x region granularity.
    interleave_case(&[2, 2], 4096, 256 * MIB);
    interleave_case(&[2, 2], 8192, 256 * MIB);
    interleave_case(&[1, 1, 1, 1], 16384, 256 * MIB);
}

#[test]
fn three_way_interleave_across_host_bridges_gives_exact_pieces() {
    interleave_case(&[1, 1, 1], 4096, 256 * MIB);
    interleave_case(&[1, 1, 1], 16384, 256 * MIB);
}

#[test]
fn one_gib_four_way_4k_region_is_planned_quickly() {
    let r = simple_rig(&[4], false, 4096, 256 * MIB);
    assert!(r.region(WBASE, GIB, 4096, &[0], &[vec![0, 1, 2, 3]], 0));
    let g = r.graph();
    let t = Instant::now();
    let plans = plan(&g, NO_LIMIT);
    let took = t.elapsed();
    eprintln!("plan() of a 1 GiB 4-way 4 KiB region: {took:?} (debug build)");
    assert_eq!(plans[0].mappings(), 262_144);
    assert!(took.as_secs() < 5, "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// Not mappable
// ---------------------------------------------------------------------------------------------

#[test]
fn small_granularity_stays_on_mmio_with_a_reason() {
    for (hbs, gran) in [
        (&[2u8][..], 256),
        (&[2], 1024),
        (&[1, 1], 256),
        (&[2, 2], 1024),
    ] {
        let window_gran = if hbs.len() > 1 { gran } else { 4096 };
        let r = simple_rig(hbs, false, window_gran, 256 * MIB);
        let root: Vec<usize> = (0..hbs.len()).collect();
        let ports: Vec<Vec<usize>> = hbs.iter().map(|&n| (0..n as usize).collect()).collect();
        let size = r.dev.iter().flatten().count() as u64 * 256 * MIB;
        assert!(r.region(WBASE, size, gran, &root, &ports, 0));
        let plans = check(&r.graph(), NO_LIMIT, gran);
        assert_eq!(plans.len(), 1, "{plans:?}");
        assert_eq!((plans[0].hpa(), plans[0].len()), (WBASE, size));
        assert_eq!(reason_of(&plans[0]), &MmioReason::Granularity { run: gran });
        assert_eq!(plans[0].mappings(), 0);
    }
}

#[test]
fn vma_budget_is_granted_in_hpa_order_and_overruns_become_mmio_only() {
    // One HB, 3 ports: a 2-way 4 KiB region (131072 pieces) then a 1-way region.
    let w = window(WBASE, 4 * GIB, vec![0], 4096, Arithmetic::Modulo);
    let r = rig(vec![w], &[(false, 3)], 512 * MIB);
    assert!(r.region(WBASE, 512 * MIB, 4096, &[0], &[vec![0, 1]], 0));
    assert!(r.region(WBASE + 2 * GIB, 512 * MIB, 4096, &[0], &[vec![2]], 0));
    let g = r.graph();

    let plans = check(&g, 131_073, 7);
    assert_eq!(plans[0].mappings(), 131_072);
    assert_eq!(plans[1], linear(0, WBASE + 2 * GIB, 512 * MIB, 2, 0));

    // The interleave does not fit; the linear range after it still does (first fit).
    let plans = check(&g, 60_000, 8);
    assert_eq!(
        reason_of(&plans[0]),
        &MmioReason::VmaBudget {
            needed: 131_072,
            left: 60_000
        }
    );
    assert_eq!((plans[0].hpa(), plans[0].len()), (WBASE, 512 * MIB));
    assert_eq!(plans[1], linear(0, WBASE + 2 * GIB, 512 * MIB, 2, 0));

    // The interleave takes everything; the linear range gets nothing.
    let plans = check(&g, 131_072, 9);
    assert_eq!(plans[0].mappings(), 131_072);
    assert_eq!(
        reason_of(&plans[1]),
        &MmioReason::VmaBudget { needed: 1, left: 0 }
    );

    let plans = check(&g, 0, 10);
    assert!(
        plans
            .iter()
            .all(|p| matches!(p, RangePlan::MmioOnly { .. }))
    );
    assert_eq!(plans.len(), 2);
}

#[test]
fn disabled_or_uncommitted_devices_get_no_plan() {
    let r = simple_rig(&[1], false, 4096, GIB);
    assert!(r.region(WBASE, GIB, 4096, &[0], &[vec![0]], 0));
    assert_eq!(plan(&r.graph(), NO_LIMIT).len(), 1);
    // DVSEC Mem_Enable off.
    r.fabric.set_mem_enable(0, false);
    assert!(check(&r.graph(), NO_LIMIT, 11).is_empty());
    r.fabric.set_mem_enable(0, true);
    // Root port memory space off.
    r.fabric
        .set_pci_mem(ComponentId::RootPort { hb: 0, port: 0 }, false);
    assert!(check(&r.graph(), NO_LIMIT, 12).is_empty());
    r.fabric
        .set_pci_mem(ComponentId::RootPort { hb: 0, port: 0 }, true);
    assert_eq!(check(&r.graph(), NO_LIMIT, 13).len(), 1);
    // Host-bridge decoder uncommitted.
    uncommit(&r.mmio(ComponentId::HostBridge(0)), 0);
    assert!(r.graph().host_bridges[0].decoders.is_empty());
    assert!(check(&r.graph(), NO_LIMIT, 14).is_empty());
    // Endpoint decoder gone (device reset).
    assert!(commit(
        &r.mmio(ComponentId::HostBridge(0)),
        0,
        WBASE,
        GIB,
        1,
        4096,
        0
    ));
    assert_eq!(check(&r.graph(), NO_LIMIT, 15).len(), 1);
    r.fabric.reset(ComponentId::Device(0));
    assert!(check(&r.graph(), NO_LIMIT, 16).is_empty());
}

#[test]
fn one_disabled_device_of_an_interleave_leaves_only_mmio() {
    let r = simple_rig(&[2], false, 4096, 512 * MIB);
    assert!(r.region(WBASE, GIB, 16384, &[0], &[vec![0, 1]], 0));
    r.fabric.set_mem_enable(1, false);
    let g = r.graph();
    let plans = check(&g, NO_LIMIT, 17);
    assert_eq!(plans.len(), 1, "{plans:?}");
    assert!(matches!(
        reason_of(&plans[0]),
        MmioReason::PartiallyDecoded { .. } | MmioReason::XorPartiallyDecoded { .. }
    ));
    // From the first claimed byte (device 0's first granule) to the last one (its last granule).
    assert_eq!(plans[0].hpa(), WBASE);
    assert_eq!(plans[0].end(), WBASE + GIB - 16384);
    // With device 0 disabled instead, the range starts at device 1's first granule.
    r.fabric.set_mem_enable(1, true);
    r.fabric.set_mem_enable(0, false);
    let plans = check(&r.graph(), NO_LIMIT, 18);
    assert_eq!(
        (plans[0].hpa(), plans[0].end()),
        (WBASE + 16384, WBASE + GIB)
    );
}

// ---------------------------------------------------------------------------------------------
// XOR windows and hand-built graphs
// ---------------------------------------------------------------------------------------------

#[test]
fn xor_window_interleave_is_planned_exactly() {
    // cxlvm's own XOR maps: 2-way at 4 KiB selects on bit 12 ^ bit 25 (period 64 MiB).
    let w = window(WBASE, GIB, vec![0, 1], 4096, Arithmetic::Xor);
    let r = rig(vec![w], &[(false, 1), (false, 1)], 512 * MIB);
    assert!(r.region(WBASE, GIB, 4096, &[0, 1], &[vec![0], vec![0]], 0));
    let plans = check(&r.graph(), NO_LIMIT, 19);
    assert_eq!(plans.len(), 1);
    assert_eq!((plans[0].hpa(), plans[0].len()), (WBASE, GIB));
    assert!(pieces_of(&plans[0]).len() > 1);

    // The same at 256 B stays on the MMIO path.
    let w = window(WBASE, GIB, vec![0, 1], 256, Arithmetic::Xor);
    let r = rig(vec![w], &[(false, 1), (false, 1)], 512 * MIB);
    assert!(r.region(WBASE, GIB, 256, &[0, 1], &[vec![0], vec![0]], 0));
    let plans = check(&r.graph(), NO_LIMIT, 20);
    assert_eq!(plans.len(), 1);
    assert_eq!(reason_of(&plans[0]), &MmioReason::Granularity { run: 256 });
}

fn dec(
    base: u64,
    size: u64,
    ways: u32,
    gran: u64,
    targets: Vec<u8>,
    dpa_base: u64,
) -> CommittedDecoder {
    CommittedDecoder {
        index: 0,
        base,
        size,
        ways: Ways::from_count(ways).unwrap(),
        gran: Granularity::from_bytes(gran).unwrap(),
        targets,
        dpa_skip: 0,
        dpa_base,
        host_only: true,
    }
}

/// A persistent device (its interleaves are stitched, as in [`rig`]).
fn device(decoders: Vec<CommittedDecoder>, cap: u64) -> DeviceNode {
    DeviceNode {
        decoding: true,
        decoders,
        volatile: 0,
        persistent: cap,
    }
}

/// `n` ports numbered 0.. with devices `first..first + n`, all enabled.
fn ports(first: usize, n: usize) -> Vec<PortNode> {
    (0..n)
        .map(|i| PortNode {
            port_number: i as u8,
            enabled: true,
            device: Some(first + i),
        })
        .collect()
}

#[test]
fn xor_window_with_high_map_bits_is_walked_per_unit() {
    // Bit 12 ^ bit 45: a period of 64 TiB, analysed per host bridge, mapped by routing each unit.
    let size = 512 * MIB;
    let g = DecodeGraph {
        windows: vec![WindowNode {
            base: WBASE,
            size,
            ways: Ways::X2,
            gran: Granularity::K4,
            arithmetic: Arithmetic::Xor,
            xormaps: vec![1 << 12 | 1 << 45],
            targets: vec![0, 1],
        }],
        host_bridges: (0..2)
            .map(|h| HostBridgeNode {
                passthrough: true,
                decoders: vec![],
                ports: ports(h, 1),
            })
            .collect(),
        devices: (0..2)
            .map(|_| device(vec![dec(WBASE, size, 2, 4096, vec![], 0)], size / 2))
            .collect(),
    };
    let plans = check(&g, NO_LIMIT, 21);
    assert_eq!(plans.len(), 1);
    // WBASE has bit 40 set only, so bit 45 is 0: HB = bit 12, like modulo.
    let want = expected_pieces(&[0, 1], size, 4096, 0);
    assert_pieces(pieces_of(&plans[0]), &want, "XOR bit 12 ^ bit 45");
    // A budget too small for the walk.
    let plans = check(&g, 1000, 22);
    assert_eq!(
        reason_of(&plans[0]),
        &MmioReason::VmaBudget {
            needed: 131_072,
            left: 1000
        }
    );
    // One host bridge without a device: positions it selects reach nothing.
    let mut g2 = g.clone();
    g2.host_bridges[1].ports[0].device = None;
    let plans = check(&g2, NO_LIMIT, 23);
    assert_eq!(plans.len(), 1);
    assert!(matches!(
        reason_of(&plans[0]),
        MmioReason::PartiallyDecoded { .. } | MmioReason::XorPartiallyDecoded { .. }
    ));
    // Neither does: nothing to plan.
    g2.host_bridges[0].ports[0].enabled = false;
    assert!(check(&g2, NO_LIMIT, 24).is_empty());
}

#[test]
fn decoders_past_the_device_capacity_are_cut_at_the_capacity() {
    // Commit validation forbids this; the planner must still agree with route().
    let g = DecodeGraph {
        windows: vec![window(WBASE, 2 * GIB, vec![0], 4096, Arithmetic::Modulo)],
        host_bridges: vec![HostBridgeNode {
            passthrough: false,
            decoders: vec![
                dec(WBASE, GIB, 1, 4096, vec![0], 0),
                dec(WBASE + GIB, GIB, 2, 16384, vec![1, 2], 0),
            ],
            ports: ports(0, 3),
        }],
        devices: vec![
            // 1-way 1 GiB decoder onto 640 MiB.
            device(vec![dec(WBASE, GIB, 1, 4096, vec![], 0)], 640 * MIB),
            // 2-way 16 KiB decoders; device 1 ends 8 KiB into its granule 16384.
            device(
                vec![dec(WBASE + GIB, GIB, 2, 16384, vec![], 0)],
                256 * MIB + 8192,
            ),
            device(vec![dec(WBASE + GIB, GIB, 2, 16384, vec![], 0)], 512 * MIB),
        ],
    };
    let plans = check(&g, NO_LIMIT, 25);
    assert_eq!(plans[0], linear(0, WBASE, 640 * MIB, 0, 0));
    let RangePlan::Interleaved { hpa, len, .. } = plans[1] else {
        panic!("{:?}", plans[1]);
    };
    assert_eq!((hpa, len), (WBASE + GIB, 512 * MIB));
    let want = expected_pieces(&[1, 2], 512 * MIB, 16384, 0);
    assert_pieces(pieces_of(&plans[1]), &want, "below the capacity");
    // The rest of the 2-way decoder: device 1 reaches 8 KiB more, device 2 all of its share
    // (its last granule is the region's last).
    assert!(
        plans[2..]
            .iter()
            .all(|p| matches!(p, RangePlan::MmioOnly { .. }))
    );
    assert_eq!(plans.last().unwrap().end(), WBASE + 2 * GIB);
}

#[test]
fn terabyte_window_is_planned_analytically() {
    // 16 devices of 64 GiB, one 1 TiB 16-way 4 KiB region: 2^28 pieces, counted in closed form.
    let size = 1u64 << 40;
    let n = 16;
    let g = DecodeGraph {
        windows: vec![window(WBASE, size, vec![0], 4096, Arithmetic::Modulo)],
        host_bridges: vec![HostBridgeNode {
            passthrough: false,
            decoders: vec![dec(WBASE, size, n, 4096, (0..n as u8).collect(), 0)],
            ports: ports(0, n as usize),
        }],
        devices: (0..n)
            .map(|_| device(vec![dec(WBASE, size, n, 4096, vec![], 0)], size / 16))
            .collect(),
    };
    let t = Instant::now();
    let plans = plan(&g, 1_000_000);
    let took = t.elapsed();
    assert_eq!(plans.len(), 1);
    assert_eq!(
        reason_of(&plans[0]),
        &MmioReason::VmaBudget {
            needed: 268_435_456,
            left: 1_000_000
        }
    );
    assert!(took.as_millis() < 1000, "{took:?}");
    // A 1 TiB 1-way region is one Linear range.
    let g = DecodeGraph {
        windows: vec![window(WBASE, size, vec![0], 4096, Arithmetic::Modulo)],
        host_bridges: vec![HostBridgeNode {
            passthrough: true,
            decoders: vec![],
            ports: ports(0, 1),
        }],
        devices: vec![device(vec![dec(WBASE, size, 1, 256, vec![], 0)], size)],
    };
    assert_eq!(check(&g, 1, 26), vec![linear(0, WBASE, size, 0, 0)]);
}

#[test]
fn overlapping_windows_follow_the_first_window() {
    // route() picks the first window containing an HPA; window 1 overlaps window 0's top half.
    let w0 = window(WBASE, GIB, vec![0], 4096, Arithmetic::Modulo);
    let w1 = window(WBASE + 512 * MIB, GIB, vec![1], 4096, Arithmetic::Modulo);
    let g = DecodeGraph {
        windows: vec![w0, w1],
        host_bridges: (0..2)
            .map(|h| HostBridgeNode {
                passthrough: true,
                decoders: vec![],
                ports: ports(h, 1),
            })
            .collect(),
        devices: vec![
            device(vec![dec(WBASE, GIB, 1, 4096, vec![], 0)], GIB),
            device(vec![dec(WBASE, 2 * GIB, 1, 4096, vec![], 0)], 2 * GIB),
        ],
    };
    let plans = check(&g, NO_LIMIT, 27);
    assert_eq!(
        plans,
        vec![
            linear(0, WBASE, GIB, 0, 0),
            linear(1, WBASE + GIB, 512 * MIB, 1, GIB),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

/// Random fabric, random Linux-style programming (many commits fail), random enables.
fn random_fabric(seed: u64) -> Arc<DecodeGraph> {
    let mut rng = Rng::new(seed);
    let nhb = 1 + rng.below(3) as usize;
    let hbs: Vec<(bool, u8)> = (0..nhb)
        .map(|_| {
            if rng.chance(25) {
                (true, 1)
            } else {
                (false, 1 + rng.below(4) as u8)
            }
        })
        .collect();
    let cap = rng.pick(&[512 * MIB, GIB]);
    let grans = [256u64, 1024, 4096, 8192, 16384];
    // One or two windows, each over a random ordered set of host bridges (1, 2, 3 or 4 ways).
    let mut windows = Vec::new();
    let mut base = WBASE;
    for _ in 0..1 + rng.below(2) {
        let mut t: Vec<usize> = (0..nhb).collect();
        for i in (1..t.len()).rev() {
            t.swap(i, rng.below(i as u64 + 1) as usize);
        }
        t.truncate(1 + rng.below(nhb as u64) as usize);
        if rng.chance(15) && t.len() == 2 {
            t.push(t[0]); // 3 ways with a repeated host bridge
        }
        let size = (2 + rng.below(8)) * UNIT * t.len() as u64;
        let arith = if t.len().is_power_of_two() && rng.chance(30) {
            Arithmetic::Xor
        } else {
            Arithmetic::Modulo
        };
        windows.push(window(base, size, t, rng.pick(&grans), arith));
        base += size + rng.below(2) * GIB;
    }
    let r = if rng.chance(50) {
        rig_volatile(windows.clone(), &hbs, cap)
    } else {
        rig(windows.clone(), &hbs, cap)
    };
    // Regions mostly placed one after the other in their window (as Linux allocates them).
    let mut cursor: Vec<u64> = windows.iter().map(|w| w.base).collect();
    for _ in 0..1 + rng.below(4) {
        let wi = rng.below(windows.len() as u64) as usize;
        let w = &windows[wi];
        // Root: the window's targets (deduplicated), or one of them.
        let mut root: Vec<usize> = Vec::new();
        for &t in &w.targets {
            if !root.contains(&t) {
                root.push(t);
            }
        }
        if rng.chance(30) {
            root = vec![rng.pick(&root)];
        }
        let most = root.iter().map(|&h| u64::from(hbs[h].1)).min().unwrap();
        let k = 1 + rng.below(most) as usize;
        let ports: Vec<Vec<usize>> = root
            .iter()
            .map(|&h| {
                let mut p: Vec<usize> = (0..hbs[h].1 as usize).collect();
                for i in (1..p.len()).rev() {
                    p.swap(i, rng.below(i as u64 + 1) as usize);
                }
                p.truncate(k);
                p
            })
            .collect();
        let ways = (root.len() * k) as u64;
        let size = (1 + u64::from(rng.chance(30))) * UNIT * ways;
        let base = if rng.chance(20) {
            w.base + rng.below(w.size / UNIT) * UNIT
        } else {
            cursor[wi] + rng.below(2) * UNIT
        };
        let gran = if root.len() > 1 && rng.chance(80) {
            w.gran.bytes()
        } else {
            rng.pick(&grans)
        };
        let skip = if rng.chance(20) { UNIT } else { 0 };
        if r.region(base, size, gran, &root, &ports, skip) {
            cursor[wi] = cursor[wi].max(base + size);
        }
    }
    // Random disables and resets.
    for d in 0..r.dev.iter().flatten().count() {
        if rng.chance(10) {
            r.fabric.set_mem_enable(d, false);
        }
        if rng.chance(5) {
            r.fabric.reset(ComponentId::Device(d));
        }
    }
    for (h, hb) in hbs.iter().enumerate() {
        if rng.chance(5) {
            r.fabric.set_pci_mem(
                ComponentId::RootPort {
                    hb: h,
                    port: rng.below(u64::from(hb.1)) as usize,
                },
                false,
            );
        }
    }
    r.graph()
}

/// Random hand-built decode graphs beyond what commit validation allows: unaligned bases,
/// capacities that cut granules, overlapping windows, XOR maps with any bits, 3/6/12/16 ways,
/// missing or disabled ports.
fn random_graph(seed: u64) -> DecodeGraph {
    let mut rng = Rng::new(seed);
    let grans = [256u64, 512, 1024, 4096, 8192, 16384];
    let ways = [1u32, 1, 2, 2, 3, 4, 6, 8, 12, 16];
    let align = |rng: &mut Rng| rng.pick(&[UNIT, UNIT, UNIT, 64 << 10, 16 << 10, 4096]);
    let nhb = 1 + rng.below(3) as usize;
    let mut devices = Vec::new();
    let mut host_bridges = Vec::new();
    let mut windows = Vec::new();
    let mut base = WBASE;
    for _ in 0..1 + rng.below(2) {
        let wways = rng.pick(&[1u32, 2, 3, 4]);
        let targets: Vec<usize> = (0..wways)
            .map(|_| {
                let extra = u64::from(rng.chance(5));
                rng.below(nhb as u64 + extra) as usize
            })
            .collect();
        let wg = Granularity::from_bytes(rng.pick(&grans)).unwrap();
        let wways = Ways::from_count(wways).unwrap();
        let xor = wways.is_pow2() && rng.chance(40);
        let size = (1 + rng.below(4)) * UNIT;
        let wbase = if rng.chance(20) {
            base - UNIT / 2
        } else {
            base
        };
        windows.push(WindowNode {
            base: wbase,
            size,
            ways: wways,
            gran: wg,
            arithmetic: if xor {
                Arithmetic::Xor
            } else {
                Arithmetic::Modulo
            },
            xormaps: (0..wways.pow2_bits())
                .map(|i| {
                    let low = wg.shift() + i;
                    let mut m = 1u64 << low;
                    if rng.chance(70) {
                        m |= 1 << (low + 1 + rng.below(30) as u32);
                    }
                    if rng.chance(10) {
                        m |= 1 << (8 + rng.below(8));
                    }
                    m
                })
                .collect(),
            targets,
        });
        base = wbase + size;
    }
    let span_lo = windows.iter().map(|w| w.base).min().unwrap();
    let span_hi = windows.iter().map(|w| w.base + w.size).max().unwrap();
    let rand_range = |rng: &mut Rng, unit: u64| {
        let a = span_lo + rng.below((span_hi - span_lo) / unit) * unit;
        let len = (1 + rng.below(4)) * unit;
        (a, len)
    };
    for _ in 0..nhb {
        let nports = 1 + rng.below(4) as usize;
        let passthrough = rng.chance(25);
        let hb_decoders: Vec<CommittedDecoder> = if passthrough {
            vec![]
        } else {
            (0..1 + rng.below(2))
                .map(|_| {
                    let w = rng.pick(&[1u32, 1, 2, 4, 8]);
                    let unit = align(&mut rng);
                    let (b, len) = rand_range(&mut rng, unit);
                    let tl = (0..w)
                        .map(|_| {
                            let extra = u64::from(rng.chance(10));
                            rng.below(nports as u64 + extra) as u8
                        })
                        .collect();
                    dec(b, len * u64::from(w), w, rng.pick(&grans), tl, 0)
                })
                .collect()
        };
        let first = devices.len();
        for _ in 0..nports {
            let mut decs = Vec::new();
            let mut dpa = 0;
            for _ in 0..1 + rng.below(2) {
                let d = if !hb_decoders.is_empty() && rng.chance(60) {
                    // Coherent with one of the host bridge's decoders.
                    let h = &hb_decoders[rng.below(hb_decoders.len() as u64) as usize];
                    let hw = h.ways.count();
                    let w = rng.pick(&[1, hw, hw, 2 * hw, 3 * hw]);
                    let Some(ways) = Ways::from_count(w) else {
                        continue;
                    };
                    let g = rng.pick(&[h.gran.bytes(), h.gran.bytes(), 4096, 256]);
                    let size = h.size / u64::from(hw) * u64::from(ways.count());
                    dec(h.base, size, w, g, vec![], dpa)
                } else {
                    let w = rng.pick(&ways);
                    let unit = align(&mut rng);
                    let (b, len) = rand_range(&mut rng, unit);
                    dec(b, len * u64::from(w), w, rng.pick(&grans), vec![], dpa)
                };
                dpa += d.size / u64::from(d.ways.count()) + rng.below(2) * UNIT;
                decs.push(d);
            }
            let cap = if rng.chance(30) {
                rng.below(dpa / 256 + 1) * 256
            } else {
                dpa
            };
            let volatile = rng.chance(50);
            devices.push(DeviceNode {
                decoding: rng.chance(90),
                decoders: decs,
                volatile: if volatile { cap } else { 0 },
                persistent: if volatile { 0 } else { cap },
            });
        }
        let mut ps = ports(first, nports);
        for p in &mut ps {
            p.enabled = rng.chance(95);
            if rng.chance(5) {
                p.device = None;
            }
        }
        host_bridges.push(HostBridgeNode {
            passthrough,
            decoders: hb_decoders,
            ports: ps,
        });
    }
    DecodeGraph {
        windows,
        host_bridges,
        devices,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_fabric_programming_plans_exactly_and_completely(seed in any::<u64>()) {
        let g = random_fabric(seed);
        let mut rng = Rng::new(seed ^ 0x5555);
        let budget = if rng.chance(30) { rng.below(200_000) } else { NO_LIMIT };
        let plans = plan(&g, budget);
        check_exact(&g, &plans, budget, &mut rng);
        check_complete(&g, &plans, &mut rng, 1500);
    }

    #[test]
    fn random_decode_graphs_plan_exactly_and_completely(seed in any::<u64>()) {
        let g = random_graph(seed);
        let mut rng = Rng::new(seed ^ 0xabcd);
        let budget = if rng.chance(30) { rng.below(100_000) } else { NO_LIMIT };
        let plans = plan(&g, budget);
        check_exact(&g, &plans, budget, &mut rng);
        check_complete(&g, &plans, &mut rng, 1500);
    }
}

/// The same checks on fixed seeds (reproducible in CI), and proof that the generators reach every
/// kind of plan and reason (so the property tests test something).
#[test]
fn seeded_random_cases_plan_exactly_and_reach_every_plan_kind() {
    let mut kinds = [0u32; 4];
    for (name, make) in [
        ("fabric", random_fabric as fn(u64) -> Arc<DecodeGraph>),
        ("graph", |seed| Arc::new(random_graph(seed))),
    ] {
        let (mut lin, mut il, mut st, mut mmio) = (0, 0, 0, 0);
        let mut reasons = std::collections::BTreeMap::new();
        for seed in 0..64u64 {
            let g = make(seed);
            let mut rng = Rng::new(seed);
            let budget = if seed % 4 == 3 {
                rng.below(100_000)
            } else {
                NO_LIMIT
            };
            let plans = plan(&g, budget);
            check_exact(&g, &plans, budget, &mut rng);
            check_complete(&g, &plans, &mut rng, 500);
            for p in plans {
                match p {
                    RangePlan::Linear { .. } => lin += 1,
                    RangePlan::Interleaved { .. } => il += 1,
                    RangePlan::Stored { .. } => st += 1,
                    RangePlan::MmioOnly { reason, .. } => {
                        mmio += 1;
                        let key = format!("{reason:?}")
                            .split([' ', '{'])
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        assert_ne!(
                            reason,
                            MmioReason::NotPeriodic,
                            "the period analysis is wrong somewhere"
                        );
                        *reasons.entry(key).or_insert(0) += 1;
                    }
                }
            }
        }
        eprintln!(
            "random {name}s: {lin} Linear, {il} Interleaved, {st} Stored, {mmio} MmioOnly {reasons:?}"
        );
        for (k, n) in kinds.iter_mut().zip([lin, il, st, mmio]) {
            *k += n;
        }
    }
    // Between them (fabrics programmed like Linux, arbitrary graphs) every kind of plan appears.
    assert!(
        kinds.iter().all(|&k| k > 0),
        "Linear, Interleaved, Stored, MmioOnly: {kinds:?}"
    );
}
