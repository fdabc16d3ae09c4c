//! The 64 KiB component register block: capability array discovery the way Linux walks it, and
//! HDM programming through absolute offsets.

use cxlvm_cxl::component::{COMPONENT_BLOCK_SIZE, ComponentKind, ComponentRegs};
use cxlvm_cxl::hdm::{
    CTRL_COMMITTED, CTRL_ERR_NOT_COMMITTED, DecoderTargets, HdmCaps, HdmChange, StaticEnv,
};
use cxlvm_cxl::interleave::{Granularity, Ways};

const WIN: u64 = 0x20_0000_0000;
const GIB: u64 = 1 << 30;

fn env() -> StaticEnv {
    StaticEnv {
        windows: vec![(WIN, 16 * GIB)],
        ports: vec![0, 1],
        capacity: 2 * GIB,
    }
}

fn r32(c: &ComponentRegs, off: usize) -> u32 {
    let mut d = [0u8; 4];
    c.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w32(c: &mut ComponentRegs, off: usize, v: u32, e: &StaticEnv) -> HdmChange {
    c.write(off, &v.to_le_bytes(), e)
}

/// What a capability walk found: (id, version, absolute offset).
type Found = Vec<(u16, u32, usize)>;

/// A walker in the style of Linux's `cxl_probe_component_regs`: read the array header at
/// 0x1000, check ID 1, then read `array size` headers after it and follow their pointers.
fn walk(c: &ComponentRegs) -> Option<Found> {
    let base = 0x1000;
    let hdr = r32(c, base);
    if hdr & 0xFFFF != 1 {
        return None;
    }
    assert_eq!((hdr >> 16) & 0xF, 1, "capability version");
    assert_eq!((hdr >> 20) & 0xF, 1, "CXL.cache/mem version");
    let count = (hdr >> 24) as usize;
    let mut found = Vec::new();
    for i in 1..=count {
        let h = r32(c, base + 4 * i);
        let id = (h & 0xFFFF) as u16;
        if id == 0 {
            continue;
        }
        let version = (h >> 16) & 0xF;
        let ptr = (h >> 20) as usize;
        found.push((id, version, base + ptr));
    }
    Some(found)
}

/// Length of a structure as Linux computes it when mapping.
fn struct_len(c: &ComponentRegs, id: u16, off: usize) -> usize {
    match id {
        2 => 0x58,
        4 => 0x50,
        5 => {
            let cap = r32(c, off);
            let enc = (cap & 0xF) as usize;
            let decoders = if enc == 0 { 1 } else { enc * 2 };
            0x10 + 0x20 * decoders
        }
        other => panic!("unexpected capability {other}"),
    }
}

fn assert_layout(c: &ComponentRegs, expect_ids: &[u16]) -> Found {
    let found = walk(c).expect("array header with ID 1");
    let ids: Vec<u16> = found.iter().map(|f| f.0).collect();
    assert_eq!(ids, expect_ids);
    let header_end = 0x1000 + 4 * (found.len() + 1);
    let mut spans: Vec<(usize, usize)> = found
        .iter()
        .map(|&(id, _, off)| (off, off + struct_len(c, id, off)))
        .collect();
    spans.sort();
    let mut prev_end = header_end;
    for (start, end) in spans {
        assert!(start >= prev_end, "structures overlap");
        assert!(end <= 0x2000, "structure leaves the CXL.cache/mem area");
        assert_eq!(start % 4, 0);
        prev_end = end;
    }
    found
}

#[test]
fn endpoint_walk_finds_ras_link_and_hdm() {
    let c = ComponentRegs::new(ComponentKind::Endpoint, None);
    let found = assert_layout(&c, &[2, 4, 5]);
    assert_eq!(found[0].1, 2, "RAS version");
    let hdm = found.iter().find(|f| f.0 == 5).unwrap();
    assert_eq!(Some(hdm.2), c.hdm_offset());
    assert_eq!(r32(&c, hdm.2), c.hdm().unwrap().caps().register());
}

#[test]
fn host_bridge_walk_finds_hdm_with_target_count() {
    let c = ComponentRegs::new(
        ComponentKind::HostBridge {
            passthrough: false,
            target_count: 2,
        },
        Some(HdmCaps::port(8, 7)),
    );
    let found = assert_layout(&c, &[5]);
    let cap = r32(&c, found[0].2);
    assert_eq!(cap & 0xF, 4, "8 decoders");
    assert_eq!((cap >> 4) & 0xF, 2, "target count from the kind");
    assert_eq!(c.hdm().unwrap().decoder_count(), 8);
}

#[test]
fn passthrough_host_bridge_has_no_hdm() {
    let c = ComponentRegs::new(
        ComponentKind::HostBridge {
            passthrough: true,
            target_count: 1,
        },
        Some(HdmCaps::port(4, 1)),
    );
    let found = assert_layout(&c, &[]);
    assert!(found.iter().all(|f| f.0 != 5));
    assert!(c.hdm().is_none());
    assert_eq!(c.hdm_offset(), None);
}

#[test]
fn root_port_has_hdm_only_when_asked() {
    let c = ComponentRegs::new(ComponentKind::RootPort, None);
    assert_layout(&c, &[2, 4]);
    assert!(c.hdm().is_none());
    let c = ComponentRegs::new(ComponentKind::RootPort, Some(HdmCaps::port(2, 1)));
    assert_layout(&c, &[2, 4, 5]);
}

#[test]
fn hdm_programming_end_to_end() {
    let e = env();
    let mut c = ComponentRegs::new(ComponentKind::Endpoint, None);
    let hdm = walk(&c).unwrap().into_iter().find(|f| f.0 == 5).unwrap().2;
    let d0 = hdm + 0x10;
    // Global enable, as Linux's cxl_hdm_decode_init does.
    assert_eq!(w32(&mut c, hdm + 4, 0x2, &e), HdmChange::Decoding);
    // Linux order: base high, base low, size high, size low, skip high, skip low, control.
    w32(&mut c, d0 + 0x04, (WIN >> 32) as u32, &e);
    w32(&mut c, d0, WIN as u32, &e);
    w32(&mut c, d0 + 0x0C, 0, &e);
    w32(&mut c, d0 + 0x08, GIB as u32, &e);
    w32(&mut c, d0 + 0x18, 0, &e);
    w32(&mut c, d0 + 0x14, 0, &e);
    assert_eq!(w32(&mut c, d0 + 0x10, 0x1200, &e), HdmChange::Decoding);
    let ctrl = r32(&c, d0 + 0x10);
    assert_ne!(ctrl & CTRL_COMMITTED, 0);
    assert_eq!(ctrl & CTRL_ERR_NOT_COMMITTED, 0);
    let hdm_block = c.hdm().unwrap();
    assert!(hdm_block.global_enable());
    let d = hdm_block.committed();
    assert_eq!((d[0].base, d[0].size, d[0].dpa_base), (WIN, GIB, 0));
    // A 64-bit read of base low/high.
    let mut q = [0u8; 8];
    c.read(d0, &mut q);
    assert_eq!(u64::from_le_bytes(q), WIN);
    // Decoder 1 overflowing the 2 GiB device fails with Error-Not-Committed.
    let d1 = d0 + 0x20;
    c.write(d1, &(WIN + GIB).to_le_bytes(), &e);
    c.write(d1 + 0x08, &(2 * GIB).to_le_bytes(), &e);
    assert_eq!(w32(&mut c, d1 + 0x10, 0x1200, &e), HdmChange::None);
    assert_ne!(r32(&c, d1 + 0x10) & CTRL_ERR_NOT_COMMITTED, 0);
    // Uncommit decoder 0 (Linux reset), then reset the whole block.
    assert_eq!(w32(&mut c, d0 + 0x10, 0x1000, &e), HdmChange::Decoding);
    assert!(c.hdm().unwrap().committed().is_empty());
    c.hdm_mut()
        .unwrap()
        .program(
            0,
            WIN,
            GIB,
            Ways::X1,
            Granularity::B256,
            DecoderTargets::DpaSkip(0),
            &e,
        )
        .unwrap();
    assert_ne!(r32(&c, d0 + 0x10) & CTRL_COMMITTED, 0);
    c.reset();
    assert_eq!(r32(&c, d0 + 0x10), 0);
    assert_eq!(r32(&c, hdm + 4), 0);
}

#[test]
fn host_bridge_decoder_through_component_offsets() {
    let e = env();
    let mut c = ComponentRegs::new(
        ComponentKind::HostBridge {
            passthrough: false,
            target_count: 2,
        },
        None,
    );
    let d0 = c.hdm_offset().unwrap() + 0x10;
    c.write(d0, &WIN.to_le_bytes(), &e);
    c.write(d0 + 0x08, &(2 * GIB).to_le_bytes(), &e);
    c.write(d0 + 0x14, &[1, 0], &e);
    // Control as two 16-bit halves: IW=1 (2 ways), IG=1 (512 B), then Commit + host-only.
    assert_eq!(c.write(d0 + 0x10, &[0x11, 0x00], &e), HdmChange::None);
    assert_eq!(c.write(d0 + 0x12, &[0x00, 0x00], &e), HdmChange::None);
    assert_eq!(c.write(d0 + 0x11, &[0x12], &e), HdmChange::Decoding);
    let d = c.hdm().unwrap().committed();
    assert_eq!(d[0].targets, vec![1, 0]);
    assert_eq!(d[0].ways, Ways::X2);
    assert_eq!(d[0].gran, Granularity::B512);
}

#[test]
fn access_sizes_on_the_array_header() {
    let c = ComponentRegs::new(ComponentKind::Endpoint, None);
    let hdr = r32(&c, 0x1000);
    assert_eq!(hdr, 0x0311_0001);
    let mut b = [0u8; 1];
    c.read(0x1003, &mut b);
    assert_eq!(b[0], 3);
    let mut w = [0u8; 2];
    c.read(0x1000, &mut w);
    assert_eq!(u16::from_le_bytes(w), 1);
    let mut q = [0u8; 8];
    c.read(0x1000, &mut q);
    assert_eq!(u64::from_le_bytes(q) as u32, hdr);
    assert_eq!((u64::from_le_bytes(q) >> 32) as u32, r32(&c, 0x1004));
}

#[test]
fn headers_are_read_only() {
    let e = env();
    let mut c = ComponentRegs::new(ComponentKind::Endpoint, None);
    let before: Vec<u32> = (0..4).map(|i| r32(&c, 0x1000 + 4 * i)).collect();
    for i in 0..4 {
        w32(&mut c, 0x1000 + 4 * i, 0, &e);
    }
    let after: Vec<u32> = (0..4).map(|i| r32(&c, 0x1000 + 4 * i)).collect();
    assert_eq!(before, after);
}

#[test]
fn unimplemented_and_out_of_range_offsets_read_zero() {
    let e = env();
    let mut c = ComponentRegs::new(ComponentKind::Endpoint, None);
    let link = walk(&c).unwrap().into_iter().find(|f| f.0 == 4).unwrap().2;
    for off in [
        0,
        0x0FF8,
        link,
        link + 0x4C,
        0x1FFC,
        0x2000,
        0xE000,
        COMPONENT_BLOCK_SIZE - 8,
        COMPONENT_BLOCK_SIZE,
        usize::MAX - 3,
        usize::MAX,
    ] {
        for size in [1usize, 2, 4, 8] {
            assert_eq!(c.write(off, &[0xFF; 8][..size], &e), HdmChange::None);
            let mut d = vec![0xAAu8; size];
            c.read(off, &mut d);
            assert!(d.iter().all(|&x| x == 0), "offset {off:#x} size {size}");
        }
    }
    assert!(c.hdm().unwrap().committed().is_empty());
}

#[test]
fn ras_registers_reset_values_masks_and_rw1c() {
    let e = env();
    let mut c = ComponentRegs::new(ComponentKind::Endpoint, None);
    let ras = walk(&c).unwrap().into_iter().find(|f| f.0 == 2).unwrap().2;
    assert_eq!(Some(ras), c.ras_offset());
    assert_eq!(r32(&c, ras), 0);
    assert_eq!(r32(&c, ras + 0x04), 0x1_CFFF);
    assert_eq!(r32(&c, ras + 0x08), 0x1_CFFF);
    assert_eq!(r32(&c, ras + 0x0C), 0);
    assert_eq!(r32(&c, ras + 0x10), 0x7F);
    assert_eq!(r32(&c, ras + 0x14), 0);
    // Masks are RW on defined bits only.
    w32(&mut c, ras + 0x04, 0xFFFF_8000, &e);
    assert_eq!(r32(&c, ras + 0x04), 0x1_8000);
    w32(&mut c, ras + 0x10, 0xFFFF_FFF0, &e);
    assert_eq!(r32(&c, ras + 0x10), 0x70);
    // Status: RW1C.
    c.inject_ras(1 << 5 | 1 << 14, 1 << 2 | 1 << 3);
    assert_eq!(r32(&c, ras), 1 << 5 | 1 << 14);
    assert_eq!(r32(&c, ras + 0x14) & 0x3F, 5, "first error pointer");
    w32(&mut c, ras, 1 << 5, &e);
    assert_eq!(r32(&c, ras), 1 << 14);
    w32(&mut c, ras + 0x0C, 1 << 2, &e);
    assert_eq!(r32(&c, ras + 0x0C), 1 << 3);
    // Header log reads 0 and ignores writes.
    w32(&mut c, ras + 0x18, 0xFFFF_FFFF, &e);
    assert_eq!(r32(&c, ras + 0x18), 0);
    c.reset();
    assert_eq!(r32(&c, ras), 0);
    assert_eq!(r32(&c, ras + 0x04), 0x1_CFFF);
    assert_eq!(r32(&c, ras + 0x0C), 0);
}
