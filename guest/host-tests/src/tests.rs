use crate::cxl_calc::*;
use crate::fixed::FixedVec;
use crate::pci_calc::*;
use crate::rand::XorShift64;
use crate::stats::{Summary, cycles_to_ns, mbps, percentile};

// ---------------------------------------------------------------------------------------------
// PCI

#[test]
fn bars_decode_io_mem32_mem64() {
    assert_eq!(decode_bar(0xc001, 0), Bar::Io { addr: 0xc000 });
    assert_eq!(
        decode_bar(0xfe00_0000, 0),
        Bar::Mem32 {
            addr: 0xfe00_0000,
            prefetchable: false
        }
    );
    assert!(bar_is_64(0xfe00_000c));
    assert!(!bar_is_64(0xfe00_0000));
    assert!(!bar_is_64(0xc005), "I/O BARs are never 64-bit");
    assert_eq!(
        decode_bar(0x8000_000c, 0x1),
        Bar::Mem64 {
            addr: 0x1_8000_0000,
            prefetchable: true
        }
    );
    assert_eq!(decode_bar(0x8000_000c, 0x1).mem_addr(), Some(0x1_8000_0000));
    assert_eq!(decode_bar(0x2, 0), Bar::Reserved);
    assert_eq!(Bar::Io { addr: 0 }.mem_addr(), None);
    assert_eq!(
        (bar_count(0), bar_count(1), bar_count(0x80), bar_count(2)),
        (6, 2, 6, 0)
    );
}

#[test]
fn extended_capability_and_dvsec_headers() {
    // DVSEC (0x23), version 1, next 0x150.
    let h = decode_ext_cap_header(0x1501_0023);
    assert_eq!(
        h,
        ExtCapHeader {
            id: ext_cap_id::DVSEC,
            version: 1,
            next: 0x150
        }
    );
    // Vendor 0x1e98, revision 2, length 0x3c; DVSEC ID 8.
    let d = decode_dvsec(0x03c2_1e98, 8);
    assert_eq!(
        d,
        DvsecHeader {
            vendor: CXL_VENDOR,
            revision: 2,
            length: 0x3c,
            id: 8
        }
    );
}

#[test]
fn fuzz_never_writes_bars_command_or_bus_numbers() {
    // Type 0: Command and BARs 0x10..0x27, ROM BAR.
    for (off, len) in [
        (0x04, 2),
        (0x04, 1),
        (0x05, 1),
        (0x04, 4),
        (0x10, 4),
        (0x24, 4),
        (0x27, 1),
        (0x30, 4),
    ] {
        assert!(write_protected(0, off, len, &[]), "type 0 {off:#x}/{len}");
    }
    for (off, len) in [
        (0x00, 4),
        (0x06, 2),
        (0x08, 4),
        (0x0c, 4),
        (0x28, 4),
        (0x2c, 4),
        (0x3c, 4),
        (0x100, 4),
    ] {
        assert!(!write_protected(0, off, len, &[]), "type 0 {off:#x}/{len}");
    }
    // The multi-function bit does not change the layout.
    assert!(write_protected(0x80, 0x10, 4, &[]));
    // Type 1: BARs 0x10..0x17, bus numbers 0x18..0x1b, windows, ROM, Bridge Control.
    for (off, len) in [
        (0x10, 4),
        (0x14, 4),
        (0x18, 1),
        (0x19, 1),
        (0x1a, 1),
        (0x18, 4),
        (0x1c, 2),
        (0x20, 4),
        (0x2c, 4),
        (0x30, 4),
        (0x38, 4),
        (0x3e, 2),
    ] {
        assert!(write_protected(1, off, len, &[]), "type 1 {off:#x}/{len}");
    }
    for (off, len) in [(0x06, 2), (0x1e, 2), (0x34, 1), (0x3c, 2), (0x200, 4)] {
        assert!(!write_protected(1, off, len, &[]), "type 1 {off:#x}/{len}");
    }
    // Extra ranges (capabilities) count too, partially overlapping accesses included.
    let extra = [(0x40, 0x3c)];
    assert!(write_protected(0, 0x48, 2, &extra));
    assert!(write_protected(0, 0x7b, 1, &extra));
    assert!(!write_protected(0, 0x7c, 4, &extra));
    assert!(
        write_protected(0, 0x3e, 4, &extra),
        "0x3e..0x42 overlaps 0x40"
    );
}

#[test]
fn overlap_is_half_open() {
    assert!(overlaps(0, 4, 3, 1));
    assert!(!overlaps(0, 4, 4, 1));
    assert!(!overlaps(4, 4, 0, 4));
    assert!(!overlaps(0, 0, 0, 4), "empty never overlaps");
    assert!(overlaps(0xfff, 1, 0xffe, 4));
}

// ---------------------------------------------------------------------------------------------
// CXL encodings and registers

#[test]
fn interleave_encodings_round_trip() {
    let table = [
        (1, 0),
        (2, 1),
        (4, 2),
        (8, 3),
        (16, 4),
        (3, 8),
        (6, 9),
        (12, 10),
    ];
    for (ways, enc) in table {
        assert_eq!(ways_to_enc(ways), Some(enc));
        assert_eq!(enc_to_ways(enc), Some(ways));
    }
    for ways in [0, 5, 7, 9, 10, 24, 32] {
        assert_eq!(ways_to_enc(ways), None, "{ways}");
    }
    for enc in [5, 6, 7, 11, 15] {
        assert_eq!(enc_to_ways(enc), None, "{enc}");
    }
    for n in 0..=6u8 {
        let g = 256u64 << n;
        assert_eq!(gran_to_enc(g), Some(n));
        assert_eq!(enc_to_gran(n), Some(g));
    }
    for g in [0, 128, 255, 257, 384, 32768] {
        assert_eq!(gran_to_enc(g), None, "{g}");
    }
    assert_eq!(enc_to_gran(7), None);
    assert_eq!(VALID_WAYS.iter().filter_map(|&w| ways_to_enc(w)).count(), 8);
}

#[test]
fn hdm_capability_fields() {
    let counts: Vec<u32> = (0..16).map(hdm_decoder_count).collect();
    assert_eq!(
        counts,
        [1, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 0, 0, 0]
    );
    // 4 decoders (enc 2), 8 targets.
    assert_eq!(hdm_decoder_count(0x82), 4);
    assert_eq!(hdm_target_count(0x82), 8);
    assert_eq!(hdm_block_len(4), 0x90);
    assert_eq!(decoder_reg(0, hdm::CONTROL), 0x20);
    assert_eq!(decoder_reg(3, hdm::BASE_LO), 0x70);
    assert_eq!(decoder_reg(1, hdm::TARGET_HI), 0x48);
}

#[test]
fn commit_control_matches_linux_values() {
    // research/linux-cxl.md §4.5: a 1-way, 256 B decoder is committed with Control = 0x1200.
    assert_eq!(commit_control(0, 0), 0x1200);
    // 4 ways (enc 2) at 4 KiB (enc 4).
    assert_eq!(commit_control(2, 4), 0x1224);
    // 12 ways (enc 10) at 16 KiB (enc 6).
    assert_eq!(commit_control(10, 6), 0x12a6);
    let c = commit_control(3, 1);
    assert_eq!(c & ctrl::IG_MASK, 1);
    assert_eq!((c & ctrl::IW_MASK) >> ctrl::IW_SHIFT, 3);
    assert_eq!(
        c & (ctrl::COMMITTED | ctrl::ERR_NOT_COMMITTED | ctrl::LOCK),
        0
    );
}

#[test]
fn target_lists_pack_ports_by_byte() {
    assert_eq!(pack_target_list(&[]), 0);
    assert_eq!(pack_target_list(&[5]), 5);
    assert_eq!(pack_target_list(&[1, 0]), 0x0001);
    assert_eq!(pack_target_list(&[3, 2, 1, 0]), 0x0001_0203);
    assert_eq!(
        pack_target_list(&[0, 1, 2, 3, 4, 5, 6, 7]),
        0x0706_0504_0302_0100
    );
    assert_eq!(
        pack_target_list(&[0, 1, 2, 3, 4, 5, 6, 7, 8]),
        0x0706_0504_0302_0100,
        "at most 8 targets"
    );
}

#[test]
fn register_locator_and_cm_headers() {
    // BAR 2, block 3 (memory device registers), offset 0x20000; high offset 1.
    let b = decode_register_block(0x0002_0302, 0x1);
    assert_eq!(
        b,
        RegisterBlock {
            bir: 2,
            id: block_id::MEMORY_DEVICE,
            offset: 0x1_0002_0000
        }
    );
    let c = decode_register_block(0x0000_0100, 0);
    assert_eq!((c.bir, c.id, c.offset), (0, block_id::COMPONENT, 0));
    assert_eq!(register_locator_count(0x1c), 2);
    assert_eq!(register_locator_count(0x24), 3);
    assert_eq!(register_locator_count(0x08), 0);
    // Research example: array header 0x02110001, HDM header 0x20010005.
    assert_eq!(cm_array_size(0x0211_0001), Some(2));
    assert_eq!(cm_array_size(0x0211_0002), None);
    assert_eq!(
        decode_cm_cap_header(0x2001_0005),
        CmCapHeader {
            id: cm_cap_id::HDM,
            version: 1,
            pointer: 0x200
        }
    );
}

#[test]
fn device_dvsec_fields() {
    assert_eq!(dvsec_hdm_count(0x0016), 1);
    assert!(dvsec_mem_capable(0x0016));
    assert!(!dvsec_mem_capable(0x0012));
    assert_eq!(dvsec_hdm_count(0x0026), 2);
    assert_eq!(dvsec_range_size(1, 0x1000_0003), 0x1_1000_0000);
}

#[test]
fn device_registers_and_mailbox_fields() {
    // Cap array: ID 0, version 1, count 3.
    assert_eq!(dev_cap_array_count(0x0000_0003_0001_0000), Some(3));
    assert_eq!(dev_cap_array_count(0x0000_0003_0001_0001), None);
    assert_eq!(media_status(0x14), 1);
    assert!(mailbox_ready(0x14));
    assert!(!mailbox_ready(0x04));
    assert_eq!(media_status(0x0c), 3);
    assert_eq!(mbox_payload_size(11), 2048);
    assert_eq!(mbox_payload_size(0x40 | 8), 256, "only bits 4:0");
    let cmd = mbox_command(opcode::GET_LOG, 0x18);
    assert_eq!(cmd, 0x18_0401);
    assert_eq!(mbox_command_len(cmd), 0x18);
    assert_eq!(mbox_command_len(mbox_command(0x4000, 0x1f_ffff)), 0x1f_ffff);
    assert_eq!(
        mbox_command_len(mbox_command(0x4000, 0x20_0000)),
        0,
        "21-bit field"
    );
    assert_eq!(mbox_return_code(0x0003_0000_0000), rc::UNSUPPORTED);
    assert_eq!(mbox_return_code(0xffff_0016_0000_0001), 0x16);
}

fn gsl(entries: &[([u8; 16], u32)]) -> Vec<u8> {
    let mut out = vec![0u8; 8];
    out[..2].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for (uuid, size) in entries {
        out.extend_from_slice(uuid);
        out.extend_from_slice(&size.to_le_bytes());
    }
    out
}

#[test]
fn cel_is_found_in_get_supported_logs() {
    assert_eq!(CEL_UUID[0], 0x0d);
    assert_eq!(CEL_UUID[15], 0x17);
    assert_eq!(find_log(&gsl(&[(CEL_UUID, 56)]), &CEL_UUID), Some(56));
    let other = [0xaa; 16];
    assert_eq!(
        find_log(&gsl(&[(other, 4), (CEL_UUID, 12)]), &CEL_UUID),
        Some(12)
    );
    assert_eq!(find_log(&gsl(&[(other, 4)]), &CEL_UUID), None);
    assert_eq!(find_log(&gsl(&[]), &CEL_UUID), None);
    // A count larger than the output: entries past the end are ignored, no panic.
    let mut truncated = gsl(&[(CEL_UUID, 8)]);
    truncated[0] = 5;
    assert_eq!(find_log(&truncated, &CEL_UUID), Some(8));
    truncated.truncate(20);
    assert_eq!(find_log(&truncated, &CEL_UUID), None);
    assert_eq!(find_log(&[], &CEL_UUID), None);
    let input = get_log_input(&CEL_UUID, 0x100, 0x40);
    assert_eq!(&input[..16], &CEL_UUID);
    assert_eq!(le_u32(&input, 16), Some(0x100));
    assert_eq!(le_u32(&input, 20), Some(0x40));
}

#[test]
fn identify_and_event_records_decode() {
    let mut out = vec![0u8; 0x45];
    out[0x10..0x18].copy_from_slice(&6u64.to_le_bytes());
    out[0x18..0x20].copy_from_slice(&4u64.to_le_bytes());
    out[0x20..0x28].copy_from_slice(&2u64.to_le_bytes());
    out[0x38..0x3c].copy_from_slice(&0x2_0000u32.to_le_bytes());
    let id = decode_identify(&out).unwrap();
    assert_eq!(
        id,
        Identify {
            total: 6 * UNIT,
            volatile: 4 * UNIT,
            persistent: 2 * UNIT,
            partition_align: 0,
            lsa_size: 0x2_0000
        }
    );
    assert!(decode_identify(&out[..0x43]).is_some());
    assert!(decode_identify(&out[..0x42]).is_none());
    let mut ev = vec![0u8; 0x20];
    assert_eq!(event_record_count(&ev), Some(0));
    ev[0x14] = 3;
    assert_eq!(event_record_count(&ev), Some(3));
    assert_eq!(event_record_count(&ev[..0x1f]), None);
    assert_eq!(le_u16(&[1, 2], 1), None);
    assert_eq!(le_u64(&[1, 0, 0, 0, 0, 0, 0, 0], 0), Some(1));
    assert_eq!(le_u32(&[0; 4], usize::MAX), None, "no overflow");
}

#[test]
fn platform_entries_decode() {
    assert_eq!(decode_hb_port(0x1_0210), (0x10, 2, true));
    assert_eq!(decode_hb_port(0x0120), (0x20, 1, false));
    // 4 ways (enc 2), 4 KiB (enc 4), XOR, 4 targets.
    let f = decode_window_flags(0x04_0142);
    assert_eq!(
        f,
        WindowFlags {
            ways_enc: 2,
            gran_enc: 4,
            arithmetic: 1,
            targets: 4
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Region planning

#[test]
fn host_bridge_granularity_follows_window_ways() {
    assert_eq!(hb_gran_factor(1), Some(1));
    assert_eq!(hb_gran_factor(2), Some(2));
    assert_eq!(hb_gran_factor(8), Some(8));
    assert_eq!(hb_gran_factor(3), Some(1));
    assert_eq!(hb_gran_factor(6), Some(2));
    assert_eq!(hb_gran_factor(12), Some(4));
    assert_eq!(hb_gran_factor(5), None);
    assert_eq!(hb_granularity(256, 2), Some(512));
    assert_eq!(hb_granularity(4096, 4), Some(16384));
    assert_eq!(hb_granularity(4096, 8), None, "32 KiB has no encoding");
    assert_eq!(hb_granularity(1024, 3), Some(1024));
    assert_eq!(hb_granularity(1024, 12), Some(4096));
    // Power-of-2 windows: a host bridge's devices in position order.
    assert_eq!(hb_target_index(0, 2, 2), Some(0));
    assert_eq!(hb_target_index(2, 2, 2), Some(1));
    assert_eq!(hb_target_index(5, 2, 4), Some(2));
    assert_eq!(hb_target_index(0, 2, 0), None);
}

fn dev(hb_uid: u32, port: u8) -> PlanDevice {
    PlanDevice { hb_uid, port }
}

#[test]
fn default_order_alternates_host_bridges_in_port_order() {
    // Enumeration: hb 7 ports 1, 0; hb 3 ports 0, 1.
    let devices = [dev(7, 1), dev(7, 0), dev(3, 0), dev(3, 1)];
    let mut out = [0u8; MAX_WAYS];
    let ways = default_order(&[3, 7], &devices, &mut out).unwrap();
    assert_eq!(ways, 4);
    // p0: hb 3 port 0 (dev 2), p1: hb 7 port 0 (dev 1), p2: hb 3 port 1, p3: hb 7 port 1.
    assert_eq!(&out[..4], &[2, 1, 3, 0]);
    let plan = plan_region(&[3, 7], &devices, &out[..4]).unwrap();
    assert_eq!(plan.ways(), 4);
    let hbs = plan.host_bridges();
    assert_eq!(hbs.len(), 2);
    assert_eq!(
        (hbs[0].uid, hbs[0].ways, hbs[0].ports(), hbs[0].devices()),
        (3, 2, &[0u8, 1][..], &[2u8, 3][..])
    );
    assert_eq!(
        (hbs[1].uid, hbs[1].ways, hbs[1].ports(), hbs[1].devices()),
        (7, 2, &[0u8, 1][..], &[1u8, 0][..])
    );
}

#[test]
fn default_order_single_host_bridge_and_errors() {
    let devices = [dev(0, 2), dev(0, 0), dev(1, 0)];
    let mut out = [0u8; MAX_WAYS];
    assert_eq!(default_order(&[0], &devices, &mut out), Ok(2));
    assert_eq!(&out[..2], &[1, 0]);
    assert_eq!(default_order(&[1], &devices, &mut out), Ok(1));
    assert_eq!(&out[..1], &[2]);
    assert_eq!(
        default_order(&[0, 1], &devices, &mut out),
        Err(RegionError::Unbalanced {
            uid: 1,
            count: 1,
            expected: 2
        })
    );
    assert_eq!(
        default_order(&[0, 9], &devices, &mut out),
        Err(RegionError::NoDevices(9))
    );
    assert_eq!(
        default_order(&[0, 0], &devices, &mut out),
        Err(RegionError::DuplicateTarget(0))
    );
    assert_eq!(
        default_order(&[], &devices, &mut out),
        Err(RegionError::BadWindowWays(0))
    );
    // 5 devices on one host bridge: not a valid ways value (caught by the plan).
    let five: Vec<_> = (0..5).map(|p| dev(0, p)).collect();
    let n = default_order(&[0], &five, &mut out).unwrap();
    assert_eq!(
        plan_region(&[0], &five, &out[..n]),
        Err(RegionError::BadWays(5))
    );
}

#[test]
fn plan_rejects_bad_layouts() {
    let devices = [dev(0, 0), dev(0, 1), dev(1, 0), dev(1, 1), dev(0, 1)];
    let t = [0, 1];
    assert_eq!(plan_region(&t, &devices, &[]), Err(RegionError::BadWays(0)));
    assert_eq!(
        plan_region(&t, &devices, &[0]),
        Err(RegionError::NotMultiple {
            ways: 1,
            window_ways: 2
        })
    );
    assert_eq!(
        plan_region(&t, &devices, &[0, 9]),
        Err(RegionError::UnknownDevice(9))
    );
    assert_eq!(
        plan_region(&t, &devices, &[0, 2, 0, 3]),
        Err(RegionError::DuplicateDevice(0))
    );
    assert_eq!(
        plan_region(&t, &devices, &[2, 0]),
        Err(RegionError::WrongHostBridge {
            position: 0,
            device: 2,
            expected: 0,
            found: 1
        })
    );
    // Devices 1 and 4 share port 1 of host bridge 0.
    assert_eq!(
        plan_region(&t, &devices, &[1, 2, 4, 3]),
        Err(RegionError::DuplicatePort { uid: 0, port: 1 })
    );
    assert_eq!(
        plan_region(&[0, 1, 2, 3, 4], &devices, &[0]),
        Err(RegionError::BadWindowWays(5))
    );
    // 16 devices on one host bridge: the decoder has 8 targets at most.
    let many: Vec<_> = (0..16).map(|p| dev(0, p)).collect();
    let order: Vec<u8> = (0..16).collect();
    assert_eq!(
        plan_region(&[0], &many, &order),
        Err(RegionError::BadHostBridgeWays(16))
    );
    // 3-way window with 3 devices per host bridge (9 ways) is not a valid ways value anyway.
    let nine: Vec<_> = (0..9).map(|i| dev(i % 3, (i / 3) as u8)).collect();
    let order: Vec<u8> = (0..9).collect();
    assert_eq!(
        plan_region(&[0, 1, 2], &nine, &order),
        Err(RegionError::BadWays(9))
    );
}

/// Routes every chunk of an interleave set through the planned decoders (window: modulo on the
/// region granularity; host bridge: modulo on its granularity) and checks that the chunk lands
/// on the device whose region position is `chunk mod ways` — what the endpoint decoders,
/// programmed with IW = ways and IG = region granularity, expect.
fn check_routing(window_targets: &[u32], devices: &[PlanDevice], order: &[u8]) {
    let plan = plan_region(window_targets, devices, order).unwrap();
    let ww = window_targets.len() as u64;
    let ways = u64::from(plan.ways());
    let f = u64::from(hb_gran_factor(ww as u32).unwrap());
    for c in 0..ways * 24 {
        let slot = (c % ww) as usize;
        let hb = &plan.host_bridges()[slot];
        let t = ((c / f) % u64::from(hb.ways)) as usize;
        let routed = hb.devices()[t];
        let position = (c % ways) as usize;
        assert_eq!(
            routed, order[position],
            "window {window_targets:?} order {order:?}: chunk {c} went to device {routed}, position {position} is device {}",
            order[position]
        );
    }
}

#[test]
fn planned_decoders_route_every_chunk_to_its_position() {
    // (window ways, devices per host bridge) for every valid combination.
    let combos = [
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
        (1, 6),
        (1, 8),
        (2, 1),
        (2, 2),
        (2, 3),
        (2, 4),
        (2, 6),
        (2, 8),
        (4, 1),
        (4, 2),
        (4, 3),
        (4, 4),
        (8, 1),
        (8, 2),
        (16, 1),
        (3, 1),
        (3, 2),
        (3, 4),
        (6, 1),
        (6, 2),
        (12, 1),
    ];
    for (ww, n) in combos {
        let targets: Vec<u32> = (0..ww).map(|i| 10 + i).collect();
        // Devices enumerated host bridge by host bridge, ports in reverse to make the order
        // matter.
        let devices: Vec<PlanDevice> = (0..ww)
            .flat_map(|h| (0..n).map(move |p| dev(10 + h, (n - 1 - p) as u8)))
            .collect();
        let mut out = [0u8; MAX_WAYS];
        let ways = default_order(&targets, &devices, &mut out).unwrap();
        assert_eq!(ways, (ww * n) as usize);
        check_routing(&targets, &devices, &out[..ways]);
        // Any other valid assignment routes consistently too: rotate each host bridge's devices.
        let mut rotated = out;
        for slot in 0..ww as usize {
            let positions: Vec<usize> = (slot..ways).step_by(ww as usize).collect();
            let first = rotated[positions[0]];
            for w in positions.windows(2) {
                rotated[w[0]] = rotated[w[1]];
            }
            rotated[*positions.last().unwrap()] = first;
        }
        check_routing(&targets, &devices, &rotated[..ways]);
    }
}

#[test]
fn three_way_windows_use_the_power_of_two_part() {
    // 6 devices over a 3-way window: host bridges interleave 2 ways at the region granularity,
    // and position p uses target p mod 2.
    let targets = [0, 1, 2];
    let devices: Vec<_> = (0..6).map(|i| dev(i % 3, (i / 3) as u8)).collect();
    let order: Vec<u8> = (0..6).collect();
    let plan = plan_region(&targets, &devices, &order).unwrap();
    // Host bridge 1 has positions 1 (port 0) and 4 (port 1): targets 1 and 0.
    let hb1 = plan.host_bridges()[1];
    assert_eq!(hb1.devices(), &[4, 1]);
    assert_eq!(hb1.ports(), &[1, 0]);
    let hb0 = plan.host_bridges()[0];
    assert_eq!(hb0.devices(), &[0, 3]);
}

#[test]
fn region_range_checks() {
    let w = 4 << 30;
    assert_eq!(check_region_range(w, 0, w, 1), Ok(()));
    assert_eq!(check_region_range(w, UNIT, 2 * UNIT, 2), Ok(()));
    assert_eq!(
        check_region_range(w, 0x1000, UNIT, 1),
        Err(RegionError::OffsetUnaligned(0x1000))
    );
    assert_eq!(check_region_range(w, 0, 0, 1), Err(RegionError::BadSize(0)));
    assert_eq!(
        check_region_range(w, 0, UNIT, 2),
        Err(RegionError::BadSize(UNIT))
    );
    assert_eq!(check_region_range(w, 0, 3 * UNIT, 3), Ok(()));
    assert_eq!(
        check_region_range(w, 15 * UNIT, 2 * UNIT, 1),
        Err(RegionError::OutOfWindow {
            offset: 15 * UNIT,
            size: 2 * UNIT,
            window: w
        })
    );
    assert!(
        check_region_range(w, !(UNIT - 1), UNIT, 1).is_err(),
        "no overflow"
    );
}

#[test]
fn region_errors_print() {
    let e = RegionError::WrongHostBridge {
        position: 1,
        device: 2,
        expected: 3,
        found: 4,
    };
    assert_eq!(
        e.to_string(),
        "position 1 needs host bridge 3, device 2 is below 4"
    );
    assert!(
        RegionError::BadSize(UNIT)
            .to_string()
            .contains("0x10000000")
    );
}

#[test]
fn spread_offsets_are_aligned_inside_and_distinct() {
    for size in [UNIT, 2 * UNIT, 12 * UNIT, 64 * 8, 4096] {
        let offs: Vec<u64> = (0..64).map(|k| spread_offset(k, 64, size)).collect();
        for (k, &o) in offs.iter().enumerate() {
            assert_eq!(o % 8, 0);
            assert!(o + 8 <= size, "size {size:#x} k {k}: {o:#x}");
        }
        let mut sorted = offs.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 64, "size {size:#x}: distinct and increasing");
    }
    assert_eq!(verify_pattern(0x1_0000_0008), 0xc710_0001_0000_0008);
}

// ---------------------------------------------------------------------------------------------
// Helpers

#[test]
fn fixed_vec_pushes_up_to_capacity() {
    let mut v = FixedVec::<u32, 3>::new();
    assert!(v.is_empty());
    assert_eq!(v.capacity(), 3);
    v.push(1).unwrap();
    v.push(2).unwrap();
    v.push(3).unwrap();
    assert!(v.is_full());
    assert_eq!(v.push(4), Err(4));
    assert_eq!(&*v, &[1, 2, 3]);
    v[1] = 5;
    assert_eq!(v.iter().sum::<u32>(), 9);
    let copy = v;
    v.clear();
    assert!(v.is_empty());
    assert_eq!(copy.len(), 3);
    assert_ne!(copy, v);
}

#[test]
fn xorshift_is_deterministic_and_bounded() {
    let mut a = XorShift64::new(1);
    let mut b = XorShift64::new(1);
    let mut c = XorShift64::new(2);
    let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
    let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
    let zs: Vec<u64> = (0..100).map(|_| c.next_u64()).collect();
    assert_eq!(xs, ys);
    assert_ne!(xs, zs);
    let mut z = XorShift64::new(0);
    assert_ne!(z.next_u64(), 0, "seed 0 still runs");
    let mut r = XorShift64::new(42);
    let mut seen = [0u32; 7];
    for _ in 0..7000 {
        let v = r.below(7);
        assert!(v < 7);
        seen[v as usize] += 1;
    }
    assert!(seen.iter().all(|&n| n > 800), "roughly uniform: {seen:?}");
    assert_eq!(r.below(0), 0);
    assert!(r.one_in(1));
    assert_eq!(r.pick::<u8>(&[]), None);
    assert_eq!(r.pick(&[9]), Some(&9));
}

#[test]
fn mbps_and_ns_from_tsc_cycles() {
    // 64 MiB in 0.01 s at 3 GHz: 6710 MB/s.
    assert_eq!(mbps(64 << 20, 3_000_000, 30_000_000), 6710);
    assert_eq!(mbps(1_000_000, 1_000_000, 1_000_000), 1000, "1 MB in 1 ms");
    assert_eq!(mbps(1, 3_000_000, 0), 0, "no cycles: no rate");
    assert_eq!(mbps(1, 0, 5), 0, "unknown TSC rate");
    assert_eq!(mbps(u64::MAX, u64::MAX, 1), u64::MAX, "saturates");
    assert_eq!(cycles_to_ns(3_000, 3_000_000), 1_000);
    assert_eq!(cycles_to_ns(2, 3_000_000), 0, "rounded down");
    assert_eq!(cycles_to_ns(1_000, 0), 0);
}

#[test]
fn percentiles_are_nearest_rank() {
    assert_eq!(percentile(&[], 50), 0);
    assert_eq!(percentile(&[7], 0), 7);
    assert_eq!(percentile(&[7], 99), 7);
    let v: Vec<u64> = (1..=200).collect();
    assert_eq!(percentile(&v, 0), 1);
    assert_eq!(percentile(&v, 50), 100);
    assert_eq!(percentile(&v, 99), 198);
    assert_eq!(percentile(&v, 100), 200);
    assert_eq!(percentile(&v, 250), 200, "clamped to 100");
    let v: Vec<u64> = (1..=10).collect();
    assert_eq!(percentile(&v, 50), 5);
    assert_eq!(percentile(&v, 99), 10);
}

#[test]
fn summary_sorts_in_place_and_maps() {
    let mut s = [5u64, 1, 9, 3, 7];
    let sum = Summary::of(&mut s);
    assert_eq!(s, [1, 3, 5, 7, 9]);
    assert_eq!(
        sum,
        Summary {
            samples: 5,
            p50: 5,
            p99: 9,
            min: 1,
            max: 9
        }
    );
    let ns = sum.map(|c| c * 10);
    assert_eq!(
        (ns.samples, ns.p50, ns.p99, ns.min, ns.max),
        (5, 50, 90, 10, 90)
    );
    assert_eq!(Summary::of(&mut []), Summary::default());
}
