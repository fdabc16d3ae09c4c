//! BAR sizing, placement in the address space, hooks and resets.

use std::sync::{Arc, Mutex};

use cxlvm_pci::regs::{BAR0, BRIDGE_CONTROL, COMMAND, SECONDARY_BUS, SUBORDINATE_BUS};
use cxlvm_pci::{
    BarSpec, ConfigHooks, ConfigSpace, Endpoint, PciBridge, PciError, PciFunction, PciSegment,
    RootPort, devfn,
};

use crate::common::*;

fn endpoint_with(
    space: &Arc<Mutex<cxlvm_memory::AddressSpace>>,
    bars: &[(usize, BarSpec)],
) -> Result<Arc<Endpoint>, PciError> {
    let mut b = Endpoint::builder("ep", ConfigSpace::new_type0(1, 2, 0x05_02_10, 0))
        .address_space(space.clone());
    for &(i, spec) in bars {
        b = b.bar(i, spec);
    }
    b.build()
}

/// Sizes BAR `index` like an OS: save, write all-ones, read, restore.
fn size_bar(f: &dyn PciFunction, index: u16) -> u32 {
    let off = BAR0 + 4 * index;
    let saved = read32(f, off);
    write32(f, off, u32::MAX);
    let v = read32(f, off);
    write32(f, off, saved);
    v
}

#[test]
fn bar_sizing_returns_size_masks_with_type_bits() {
    let space = space(64 * GIB);
    let r32 = mmio_region(&space, "r32", 0x1_0000);
    let r32p = mmio_region(&space, "r32p", 0x4000);
    let r64 = mmio_region(&space, "r64", 0x2_0000);
    let r64big = mmio_region(&space, "r64big", 0x1000);
    let ep = endpoint_with(
        &space,
        &[
            (0, BarSpec::memory32(0x1_0000, r32)),
            (1, BarSpec::memory32(0x4000, r32p).prefetchable(true)),
            (2, BarSpec::memory64(0x2_0000, r64)),
            (4, BarSpec::memory64(8 * GIB, r64big).prefetchable(true)),
        ],
    )
    .unwrap();
    let f: &dyn PciFunction = ep.as_ref();
    // Reset values: only the type bits.
    assert_eq!(read32(f, BAR0), 0);
    assert_eq!(read32(f, BAR0 + 4), 0x8);
    assert_eq!(read32(f, BAR0 + 8), 0x4);
    assert_eq!(read32(f, BAR0 + 16), 0xc);
    assert_eq!(size_bar(f, 0), 0xffff_0000);
    assert_eq!(size_bar(f, 1), 0xffff_c008);
    assert_eq!(size_bar(f, 2), 0xfffe_0004);
    assert_eq!(
        size_bar(f, 3),
        0xffff_ffff,
        "upper dword of a small 64-bit BAR"
    );
    assert_eq!(
        size_bar(f, 4),
        0x0000_000c,
        "8 GiB: no address bits in the low dword"
    );
    assert_eq!(size_bar(f, 5), 0xffff_fffe, "8 GiB: upper dword");
    // Restored.
    assert_eq!(read32(f, BAR0 + 8), 0x4);
    assert_eq!(read32(f, BAR0 + 12), 0);
}

#[test]
fn bar_build_errors() {
    let space = space(64 * GIB);
    let r = mmio_region(&space, "r", 0x1000);
    let big = mmio_region(&space, "big", 0x10_0000);
    let size_err = |bars: &[(usize, BarSpec)]| {
        matches!(
            endpoint_with(&space, bars),
            Err(PciError::BadBarSize { .. })
        )
    };
    assert!(size_err(&[(0, BarSpec::memory32(0x3000, r))]));
    assert!(size_err(&[(0, BarSpec::memory32(0x800, r))]));
    assert!(size_err(&[(0, BarSpec::memory32(4 * GIB, r))]));
    assert!(size_err(&[(0, BarSpec::memory64(0, r))]));
    assert!(matches!(
        endpoint_with(&space, &[(5, BarSpec::memory64(0x1000, r))]),
        Err(PciError::BadBarIndex { index: 5, .. })
    ));
    assert!(matches!(
        endpoint_with(&space, &[(6, BarSpec::memory32(0x1000, r))]),
        Err(PciError::BadBarIndex { .. })
    ));
    assert!(matches!(
        endpoint_with(
            &space,
            &[
                (0, BarSpec::memory64(0x1000, r)),
                (1, BarSpec::memory32(0x1000, big))
            ]
        ),
        Err(PciError::BarSlotTaken { index: 1, .. })
    ));
    assert!(matches!(
        endpoint_with(&space, &[(0, BarSpec::memory32(0x1000, big))]),
        Err(PciError::BadBarRegion { .. })
    ));
    // An already placed region.
    {
        let mut s = space.lock().unwrap();
        let mut tx = s.begin();
        let root = tx.root();
        tx.place(root, r, 0x1000, 0).unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(
        endpoint_with(&space, &[(0, BarSpec::memory32(0x1000, r))]),
        Err(PciError::BadBarRegion { .. })
    ));
    let no_space = Endpoint::builder("ep", ConfigSpace::new_type0(1, 2, 0, 0))
        .bar(0, BarSpec::memory32(0x10_0000, big))
        .build();
    assert!(matches!(no_space, Err(PciError::NoAddressSpace { .. })));
    let wrong = Endpoint::builder("ep", ConfigSpace::new_type1(1, 2, 0x060400, 0)).build();
    assert!(matches!(wrong, Err(PciError::WrongHeaderType { .. })));
    // Root ports have two BAR slots.
    let rp = RootPort::builder("rp", 1, 2, 0)
        .bar(1, BarSpec::memory64(0x10_0000, big))
        .address_space(space.clone())
        .build();
    assert!(matches!(rp, Err(PciError::BadBarIndex { .. })));
}

#[test]
fn bar_placement_follows_address_and_memory_enable() {
    let space = space(64 * GIB);
    let region = mmio_region(&space, "ep regs", 0x2_0000);
    let ep = cxl_endpoint(&space, "ep", region, 0x2_0000);
    let f: &dyn PciFunction = ep.as_ref();

    // Programmed but MEM off: not decoding.
    write32(f, BAR0, 0xfe00_0000);
    write32(f, BAR0 + 4, 0);
    assert_eq!(ep.bar_address(0), Some(0xfe00_0000));
    assert_eq!(placement(&space, region), None);
    assert_eq!(region_at(&space, 0xfe00_0000), None);

    // MEM on: placed exactly over the BAR.
    set_mem(f, true);
    assert_eq!(placement(&space, region), Some(0xfe00_0000));
    assert_eq!(ep.bar_mapping(0), Some(0xfe00_0000));
    assert_eq!(region_at(&space, 0xfe00_0000), Some(region));
    assert_eq!(region_at(&space, 0xfe01_ffff), Some(region));
    assert_eq!(region_at(&space, 0xfe02_0000), None);
    assert_eq!(region_at(&space, 0xfdff_ffff), None);
    // Accesses reach the region's handler.
    let mut b = [0u8; 4];
    space.lock().unwrap().view().read(0xfe00_0010, &mut b);
    assert_eq!(b, [0x10, 0x11, 0x12, 0x13]);

    // Reprogramming with MEM on moves it (upper dword first, then lower).
    write32(f, BAR0 + 4, 0x2);
    write32(f, BAR0, 0x0004_0000);
    assert_eq!(placement(&space, region), Some(0x2_0004_0000));
    assert_eq!(region_at(&space, 0x2_0004_0000), Some(region));
    assert_eq!(region_at(&space, 0xfe00_0000), None);

    // Sizing while decoding (low dword, then upper dword, then restore both): unmapped while
    // the upper dword is all-ones, back in place afterwards.
    write32(f, BAR0, u32::MAX);
    assert_eq!(read32(f, BAR0), 0xfffe_0004);
    write32(f, BAR0 + 4, u32::MAX);
    assert_eq!(read32(f, BAR0 + 4), u32::MAX);
    assert_eq!(
        placement(&space, region),
        None,
        "upper dword all-ones: sizing"
    );
    write32(f, BAR0, 0x0004_0000);
    assert_eq!(placement(&space, region), None);
    write32(f, BAR0 + 4, 0x2);
    assert_eq!(placement(&space, region), Some(0x2_0004_0000));
    // A 64-bit BAR decodes at its size mask in the low dword (just below 4 GiB); only an
    // all-ones upper dword means sizing.
    write32(f, BAR0, 0xfffe_0000);
    write32(f, BAR0 + 4, 0);
    assert_eq!(placement(&space, region), Some(0xfffe_0000));
    write32(f, BAR0 + 4, 0x2);
    write32(f, BAR0, 0x0004_0000);
    assert_eq!(placement(&space, region), Some(0x2_0004_0000));

    // Address 0 means unassigned.
    write32(f, BAR0, 0);
    write32(f, BAR0 + 4, 0);
    assert_eq!(placement(&space, region), None);
    write32(f, BAR0, 0xfe00_0000);
    assert_eq!(placement(&space, region), Some(0xfe00_0000));

    // MEM off removes it.
    set_mem(f, false);
    assert_eq!(placement(&space, region), None);
    assert_eq!(region_at(&space, 0xfe00_0000), None);
    assert_eq!(ep.bar_mapping(0), None);
}

#[test]
fn bar32_sizing_while_decoding_unmaps() {
    let space = space(64 * GIB);
    let region = mmio_region(&space, "r", 0x4000);
    let ep = endpoint_with(&space, &[(1, BarSpec::memory32(0x4000, region))]).unwrap();
    ep.assign_bar(1, 0xc000_4000).unwrap();
    let f: &dyn PciFunction = ep.as_ref();
    write32(f, BAR0 + 4, u32::MAX);
    assert_eq!(read32(f, BAR0 + 4), 0xffff_c000);
    assert_eq!(placement(&space, region), None);
    write32(f, BAR0 + 4, 0xc000_4000);
    assert_eq!(placement(&space, region), Some(0xc000_4000));
    // Unimplemented BARs read zero and size to zero.
    assert_eq!(size_bar(f, 0), 0);
    assert_eq!(size_bar(f, 2), 0);
}

#[test]
fn overlapping_bars_leave_one_unmapped_without_panicking() {
    let space = space(64 * GIB);
    let ra = mmio_region(&space, "a", 0x1000);
    let rb = mmio_region(&space, "b", 0x1000);
    let ep = endpoint_with(
        &space,
        &[
            (0, BarSpec::memory32(0x1000, ra)),
            (1, BarSpec::memory32(0x1000, rb)),
        ],
    )
    .unwrap();
    let f: &dyn PciFunction = ep.as_ref();
    write32(f, BAR0, 0xc000_0000);
    write32(f, BAR0 + 4, 0xc000_0000);
    set_mem(f, true);
    assert_eq!(placement(&space, ra), Some(0xc000_0000));
    assert_eq!(placement(&space, rb), None, "the second one stays unmapped");
    assert_eq!(ep.bar_mapping(1), None);
    assert_eq!(region_at(&space, 0xc000_0000), Some(ra));

    // Moving the first away lets the second decode.
    write32(f, BAR0, 0xd000_0000);
    assert_eq!(placement(&space, ra), Some(0xd000_0000));
    assert_eq!(placement(&space, rb), Some(0xc000_0000));

    // A BAR moved onto another one is the one that stays unmapped.
    write32(f, BAR0, 0xc000_0000);
    assert_eq!(placement(&space, ra), None);
    assert_eq!(placement(&space, rb), Some(0xc000_0000));

    // Across functions too.
    let rc = mmio_region(&space, "c", 0x1000);
    let other = endpoint_with(&space, &[(0, BarSpec::memory32(0x1000, rc))]).unwrap();
    assert!(matches!(
        other.assign_bar(0, 0xc000_0000),
        Err(PciError::BarNotMapped { .. })
    ));
    assert_eq!(placement(&space, rc), None);
    assert_eq!(other.bar_address(0), Some(0xc000_0000));
    other.assign_bar(0, 0xe000_0000).unwrap();
    assert_eq!(placement(&space, rc), Some(0xe000_0000));
}

#[test]
fn bar_outside_the_address_space_stays_unmapped() {
    let space = space(4 * GIB);
    let region = mmio_region(&space, "r", 0x2_0000);
    let ep = cxl_endpoint(&space, "ep", region, 0x2_0000);
    assert!(matches!(
        ep.assign_bar(0, 0x10_0000_0000),
        Err(PciError::BarNotMapped { .. })
    ));
    assert_eq!(placement(&space, region), None);
    // The last page that fits works; the BAR then moves back in.
    ep.assign_bar(0, 4 * GIB - 0x2_0000).unwrap();
    assert_eq!(placement(&space, region), Some(4 * GIB - 0x2_0000));
}

#[test]
fn assign_bar_programs_and_enables() {
    let space = space(64 * GIB);
    let region = mmio_region(&space, "r", 0x2_0000);
    let ep = cxl_endpoint(&space, "ep", region, 0x2_0000);
    assert!(matches!(
        ep.assign_bar(0, 0xfe01_0000),
        Err(PciError::BadBarAddress { .. })
    ));
    assert!(matches!(
        ep.assign_bar(1, 0xfe00_0000),
        Err(PciError::NoSuchBar { .. })
    ));
    assert!(matches!(
        ep.assign_bar(0, 0),
        Err(PciError::BadBarAddress { .. })
    ));
    ep.assign_bar(0, 0x8_0000_0000).unwrap();
    let f: &dyn PciFunction = ep.as_ref();
    assert_eq!(read16(f, COMMAND) & 2, 2);
    assert_eq!(read32(f, BAR0), 0x4);
    assert_eq!(read32(f, BAR0 + 4), 0x8);
    assert_eq!(placement(&space, region), Some(0x8_0000_0000));
    // Reassignment moves it directly.
    ep.assign_bar(0, 0xfe00_0000).unwrap();
    assert_eq!(placement(&space, region), Some(0xfe00_0000));
    assert_eq!(region_at(&space, 0x8_0000_0000), None);
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

impl ConfigHooks for Recorder {
    fn written(&self, cfg: &mut ConfigSpace, offset: u16, len: usize) {
        // Mirror the CXL DVSEC's Mem_Enable (Control bit 2) into Status bit 2, like a device
        // model reacting to a control write.
        if let Some(dvsec) = cfg.find_dvsec(0x1e98, 0) {
            let enabled = cfg.u16(dvsec + 0x0c) & 4;
            cfg.set_u16(dvsec + 0x0e, enabled);
        }
        self.events
            .lock()
            .unwrap()
            .push(format!("written {offset:#x}+{len}"));
    }

    fn memory_enable_changed(&self, enabled: bool) {
        self.events.lock().unwrap().push(format!("mem {enabled}"));
    }

    fn reset(&self) {
        self.events.lock().unwrap().push("reset".into());
    }

    fn secondary_bus_reset(&self, asserted: bool) {
        self.events.lock().unwrap().push(format!("sbr {asserted}"));
    }
}

fn hooked_endpoint(
    space: &Arc<Mutex<cxlvm_memory::AddressSpace>>,
    hooks: Arc<Recorder>,
) -> (Arc<Endpoint>, cxlvm_memory::RegionId, u16) {
    let region = mmio_region(space, "regs", 0x2_0000);
    let mut b = Endpoint::builder("ep", ConfigSpace::new_type0(0x8086, 0x0d93, 0x05_02_10, 1));
    let dvsec = b
        .config_mut()
        .add_dvsec(0x1e98, 1, 0, &dvsec_body(), &[0, 0, 0xfd, 0x4f])
        .unwrap();
    let ep = b
        .bar(0, BarSpec::memory64(0x2_0000, region))
        .hooks(hooks)
        .address_space(space.clone())
        .build()
        .unwrap();
    (ep, region, dvsec)
}

#[test]
fn hooks_see_writes_and_memory_enable() {
    let space = space(64 * GIB);
    let rec = Arc::new(Recorder::default());
    let (ep, _, dvsec) = hooked_endpoint(&space, rec.clone());
    let f: &dyn PciFunction = ep.as_ref();

    write16(f, dvsec + 0x0c, 0x0004);
    assert_eq!(read16(f, dvsec + 0x0e), 0x0004, "hook mirrored Mem_Enable");
    assert_eq!(rec.take(), vec![format!("written {:#x}+2", dvsec + 0x0c)]);

    set_mem(f, true);
    assert_eq!(rec.take(), vec!["written 0x4+2", "mem true"]);
    set_mem(f, true);
    assert_eq!(
        rec.take(),
        vec!["written 0x4+2"],
        "no change, no notification"
    );
    ep.assign_bar(0, 0xfe00_0000).unwrap();
    assert_eq!(rec.take(), vec!["written 0x10+8", "written 0x4+2"]);
    set_mem(f, false);
    assert_eq!(rec.take(), vec!["written 0x4+2", "mem false"]);

    // with_config: device-side update, BARs follow, no `written`.
    ep.with_config(|c| c.set_u16(COMMAND, 2));
    assert_eq!(rec.take(), vec!["mem true"]);
    assert_eq!(ep.bar_mapping(0), Some(0xfe00_0000));

    // Reset: configuration back to build state, BAR unmapped, hooks told.
    f.reset();
    assert_eq!(rec.take(), vec!["mem false", "reset"]);
    assert_eq!(read16(f, COMMAND), 0);
    assert_eq!(read32(f, BAR0), 0x4);
    assert_eq!(read16(f, dvsec + 0x0c), 0);
    assert_eq!(ep.bar_mapping(0), None);
}

#[test]
fn secondary_bus_reset_resets_the_children() {
    let space = space(64 * GIB);
    let ep_rec = Arc::new(Recorder::default());
    let (ep, region, dvsec) = hooked_endpoint(&space, ep_rec.clone());
    let rp_rec = Arc::new(Recorder::default());
    let rp = RootPort::builder("rp", 0x8086, 0x7075, 1)
        .hooks(rp_rec.clone())
        .build()
        .unwrap();
    rp.attach(0, ep.clone()).unwrap();
    assert!(matches!(
        rp.attach(0, ep.clone()),
        Err(PciError::ChildTaken { devfn: 0, .. })
    ));
    assert!(matches!(
        rp.attach(8, ep.clone()),
        Err(PciError::BadDevfn(8))
    ));
    let seg = PciSegment::new("pci", 0, 0xff).unwrap();
    seg.add_root_bus(0, "hb").unwrap();
    seg.attach(0, devfn(1, 0), rp.clone()).unwrap();
    seg.program_bus_numbers().unwrap();
    assert_eq!(rp.bus_range(), Some((1, 1)));

    ep.assign_bar(0, 0xfe00_0000).unwrap();
    write16(ep.as_ref(), dvsec + 0x0c, 4);
    ep_rec.take();
    assert_eq!(
        rp_rec.take(),
        vec!["written 0x18+4", "written 0x18+4"],
        "enumeration"
    );
    assert_eq!(placement(&space, region), Some(0xfe00_0000));

    let rpf: &dyn PciFunction = rp.as_ref();
    let bc = read16(rpf, BRIDGE_CONTROL);
    write16(rpf, BRIDGE_CONTROL, bc | 0x40);
    assert_eq!(rp_rec.take(), vec!["written 0x3e+2", "sbr true"]);
    assert_eq!(ep_rec.take(), vec!["mem false", "reset"]);
    assert_eq!(placement(&space, region), None);
    assert!(seg.function(1, 0).is_none(), "secondary side held in reset");
    let mut id = [0u8; 4];
    seg.config_read(1, 0, 0, &mut id);
    assert_eq!(id, [0xff; 4]);

    write16(rpf, BRIDGE_CONTROL, bc);
    assert_eq!(rp_rec.take(), vec!["written 0x3e+2", "sbr false"]);
    let f = seg.function(1, 0).expect("visible again");
    assert_eq!(read16(f.as_ref(), 0), 0x8086);
    assert_eq!(read16(f.as_ref(), COMMAND), 0);
    assert_eq!(read16(f.as_ref(), dvsec + 0x0c), 0, "DVSEC control reset");
    assert_eq!(read32(f.as_ref(), BAR0), 0x4);
    // Bus numbers of the port itself are untouched by SBR.
    assert_eq!(read16(rpf, SECONDARY_BUS), 0x0101);
    assert_eq!(read8(rpf, SUBORDINATE_BUS), 1);
}

#[test]
fn root_port_bar_maps_like_an_endpoint_bar() {
    let space = space(64 * GIB);
    let region = mmio_region(&space, "rp regs", 0x1_0000);
    let rp = RootPort::builder("rp", 0x8086, 0x7075, 2)
        .bar(0, BarSpec::memory64(0x1_0000, region))
        .address_space(space.clone())
        .build()
        .unwrap();
    let f: &dyn PciFunction = rp.as_ref();
    assert_eq!(size_bar(f, 0), 0xffff_0004);
    assert_eq!(size_bar(f, 1), 0xffff_ffff);
    rp.assign_bar(0, 0xfd00_0000).unwrap();
    assert_eq!(placement(&space, region), Some(0xfd00_0000));
    assert_eq!(rp.bar_mapping(0), Some(0xfd00_0000));
    f.reset();
    assert_eq!(placement(&space, region), None);
}

/// Found by the `ecam` fuzz target: a BAR refused because another function's BAR held its
/// addresses was never placed after that BAR moved away. Through the segment (as a guest's
/// ECAM writes go), the waiting BAR is placed as soon as the space is free.
#[test]
fn a_bar_waiting_for_another_functions_space_is_placed_when_it_frees() {
    let space = space(64 * GIB);
    let ra = mmio_region(&space, "a", 0x1000);
    let rb = mmio_region(&space, "b", 0x1000);
    let a = endpoint_with(&space, &[(0, BarSpec::memory32(0x1000, ra))]).unwrap();
    let b = endpoint_with(&space, &[(0, BarSpec::memory32(0x1000, rb))]).unwrap();
    let seg = PciSegment::new("seg", 0, 0).unwrap();
    seg.add_root_bus(0, "hb").unwrap();
    seg.attach(0, devfn(1, 0), a.clone()).unwrap();
    seg.attach(0, devfn(2, 0), b.clone()).unwrap();
    let write =
        |dev: u8, off: u16, v: u32| seg.config_write(0, devfn(dev, 0), off, &v.to_le_bytes());
    for dev in [1, 2] {
        write(dev, BAR0, 0xc000_0000);
        write(dev, COMMAND, 0x2);
    }
    assert_eq!(placement(&space, ra), Some(0xc000_0000));
    assert_eq!(
        placement(&space, rb),
        None,
        "b waits: a holds its addresses"
    );
    // a moves away: b decodes at its programmed address and is placed there.
    write(1, BAR0, 0xd000_0000);
    assert_eq!(placement(&space, ra), Some(0xd000_0000));
    assert_eq!(placement(&space, rb), Some(0xc000_0000));
    assert_eq!(b.bar_mapping(0), Some(0xc000_0000));
}
