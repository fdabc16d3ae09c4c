//! Random configuration traffic: no panics, and BAR regions only ever where a BAR with MEM set
//! says.

use std::sync::{Arc, Mutex};

use cxlvm_memory::{AddressSpace, MmioHandler, RegionId};
use cxlvm_pci::regs::COMMAND;
use cxlvm_pci::{BarSpec, ConfigSpace, Endpoint, PciFunction, PciSegment, RootPort, devfn};
use proptest::prelude::*;

use crate::common::*;

struct Rig {
    space: Arc<Mutex<AddressSpace>>,
    seg: PciSegment,
    eps: Vec<Arc<Endpoint>>,
    rps: Vec<Arc<RootPort>>,
    /// (function, BAR index, region) for every BAR.
    bars: Vec<(Arc<dyn PciFunction>, usize, RegionId)>,
}

fn rig() -> Rig {
    // 64 GiB: high BAR addresses fall outside and must stay unmapped.
    let space = space(64 * GIB);
    let mut bars: Vec<(Arc<dyn PciFunction>, usize, RegionId)> = Vec::new();
    let mut eps = Vec::new();
    let mut rps = Vec::new();
    let seg = PciSegment::new("pci", 0, 7).unwrap();
    seg.add_root_bus(0, "hb").unwrap();
    for i in 0..2u8 {
        let r0 = mmio_region(&space, "ep bar0", 0x2_0000);
        let r2 = mmio_region(&space, "ep bar2", 0x1000);
        let r3 = mmio_region(&space, "ep bar3", 0x10_0000);
        let mut cfg = ConfigSpace::new_type0(0x8086, 0x0d93, 0x05_02_10, 1);
        cfg.add_pcie_capability(cxlvm_pci::PciePortType::Endpoint, 0)
            .unwrap();
        cfg.add_dvsec(0x1e98, 1, 0, &dvsec_body(), &[0, 0, 0xfd, 0x4f])
            .unwrap();
        let ep = Endpoint::builder("ep", cfg)
            .bar(0, BarSpec::memory64(0x2_0000, r0))
            .bar(2, BarSpec::memory32(0x1000, r2))
            .bar(3, BarSpec::memory64(0x10_0000, r3).prefetchable(true))
            .address_space(space.clone())
            .build()
            .unwrap();
        let rr = mmio_region(&space, "rp bar0", 0x1_0000);
        let rp = RootPort::builder("rp", 0x8086, 0x7075, i)
            .bar(0, BarSpec::memory64(0x1_0000, rr))
            .address_space(space.clone())
            .build()
            .unwrap();
        rp.attach(0, ep.clone()).unwrap();
        seg.attach(0, devfn(i + 1, 0), rp.clone()).unwrap();
        for (idx, r) in [(0, r0), (2, r2), (3, r3)] {
            bars.push((ep.clone(), idx, r));
        }
        bars.push((rp.clone(), 0, rr));
        eps.push(ep);
        rps.push(rp);
    }
    seg.program_bus_numbers().unwrap();
    Rig {
        space,
        seg,
        eps,
        rps,
        bars,
    }
}

fn bar_value(f: &dyn PciFunction, index: usize) -> u64 {
    let off = 0x10 + 4 * index as u16;
    let lo = u64::from(read32(f, off) & !0xf);
    let ty = read32(f, off) >> 1 & 3;
    let hi = if ty == 2 {
        u64::from(read32(f, off + 4))
    } else {
        0
    };
    hi << 32 | lo
}

fn check_invariant(rig: &Rig) {
    for (f, index, region) in &rig.bars {
        if let Some(at) = placement(&rig.space, *region) {
            let mem = read16(f.as_ref(), COMMAND) & 2 != 0;
            assert!(mem, "BAR {index} placed at {at:#x} with MEM clear");
            assert_eq!(
                bar_value(f.as_ref(), *index),
                at,
                "BAR {index} placed elsewhere"
            );
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Direct config write to endpoint/root port `target`.
    Write {
        target: usize,
        offset: u16,
        size: usize,
        value: u64,
    },
    /// Write through the ECAM window.
    Ecam {
        offset: u64,
        size: usize,
        value: u64,
    },
    /// Read through the ECAM window.
    EcamRead { offset: u64, size: usize },
    /// Reset function `target`.
    Reset { target: usize },
}

fn offset() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => 0u16..0x40,
        2 => 0x40u16..0x100,
        2 => 0x100u16..0x200,
        1 => any::<u16>(),
    ]
}

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => any::<u64>(),
        1 => Just(u64::MAX),
        1 => Just(0u64),
        1 => Just(0x0006u64),
        1 => Just(0x0040u64),
        // Plausible BAR addresses, some colliding, some beyond the address space.
        3 => prop::sample::select(vec![
            0xfe00_0000u64, 0xfe01_0000, 0xfe10_0000, 0xc000_0000, 0x1_0000_0000,
            0x10_0000_0000, 0xffff_f000, 0x0002_0000,
        ]),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop::sample::select(vec![1usize, 2, 3, 4, 8]);
    prop_oneof![
        6 => (0usize..4, offset(), size.clone(), value())
            .prop_map(|(target, offset, size, value)| Op::Write { target, offset, size, value }),
        3 => (0u8..4, 0u8..32, 0u8..8, offset(), size.clone(), value()).prop_map(
            |(bus, dev, func, reg, size, value)| Op::Ecam {
                offset: u64::from(bus) << 20 | u64::from(dev) << 15 | u64::from(func) << 12
                    | u64::from(reg & 0xfff),
                size,
                value,
            }
        ),
        1 => (any::<u64>(), size).prop_map(|(offset, size)| Op::EcamRead { offset, size }),
        1 => (0usize..4).prop_map(|target| Op::Reset { target }),
    ]
}

fn run(rig: &Rig, op: &Op) {
    let target = |t: usize| -> Arc<dyn PciFunction> {
        match t {
            0 | 1 => rig.eps[t].clone(),
            _ => rig.rps[t - 2].clone(),
        }
    };
    match *op {
        Op::Write {
            target: t,
            offset,
            size,
            value,
        } => {
            target(t).write_config(offset, &value.to_le_bytes()[..size]);
        }
        Op::Ecam {
            offset,
            size,
            value,
        } => rig.seg.write(offset, &value.to_le_bytes()[..size]),
        Op::EcamRead { offset, size } => {
            let mut b = vec![0u8; size];
            rig.seg.read(offset, &mut b);
        }
        Op::Reset { target: t } => target(t).reset(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_config_traffic(ops in prop::collection::vec(op(), 1..150)) {
        let rig = rig();
        for op in &ops {
            run(&rig, op);
            check_invariant(&rig);
        }
        // Everything still reads without panicking; the dump walks the whole segment.
        let _ = cxlvm_pci::lspci_dump(&rig.seg);
        let view = rig.space.lock().unwrap().view();
        for r in view.ranges() {
            prop_assert!(rig.bars.iter().any(|(_, _, id)| *id == r.region));
        }
    }
}

#[test]
fn seeded_bar_storm() {
    // A deterministic loop that hammers BARs and Command.MEM only, so that collisions between
    // BARs of different functions happen often.
    let rig = rig();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let addrs = [
        0xfe00_0000u64,
        0xfe02_0000,
        0xfe10_0000,
        0x1_0000_0000,
        0x20_0000_0000,
    ];
    let (mut mapped, mut collided) = (0usize, 0usize);
    for _ in 0..3000 {
        let r = next();
        let (f, index, _) = &rig.bars[(r % rig.bars.len() as u64) as usize];
        let f = f.as_ref();
        match r >> 8 & 3 {
            0 => {
                let cmd = read16(f, COMMAND) ^ 2;
                f.write_config(COMMAND, &cmd.to_le_bytes());
            }
            1 => f.write_config(0x10 + 4 * *index as u16, &[0xff; 4]),
            _ => {
                let a = addrs[(r >> 16) as usize % addrs.len()];
                f.write_config(0x10 + 4 * *index as u16, &a.to_le_bytes());
            }
        }
        check_invariant(&rig);
        let placed: Vec<Option<u64>> = rig
            .bars
            .iter()
            .map(|(_, _, r)| placement(&rig.space, *r))
            .collect();
        mapped += placed.iter().flatten().count();
        // Two BARs programmed to the same address with MEM set, only one of them placed.
        collided += rig
            .bars
            .iter()
            .zip(&placed)
            .filter(|((f, i, _), p)| {
                p.is_none()
                    && read16(f.as_ref(), COMMAND) & 2 != 0
                    && placed.contains(&Some(bar_value(f.as_ref(), *i)))
            })
            .count();
    }
    // The storm really exercised placement and collisions.
    assert!(mapped > 1000, "only {mapped} placements seen");
    assert!(collided > 10, "only {collided} collisions seen");
    let _: &dyn MmioHandler = &rig.seg;
}
