//! Mailbox command payloads checked byte for byte against the CXL r3.x layouts, and the device
//! register block driven the way Linux's `cxl_pci` drives it.

use std::collections::BTreeSet;
use std::sync::Arc;

use cxlvm_cxl::devregs::DeviceRegs;
use cxlvm_cxl::mailbox::{Mailbox, MemdevParams, ReturnCode};
use cxlvm_memory::RamBacking;
use proptest::prelude::*;

const GIB: u64 = 1 << 30;
const PAYLOAD: usize = 2048;
const LSA_SIZE: u64 = 8192;

/// The CEL UUID 0da9c0b5-bf41-4b78-8f79-96b1623b3f17, bytes in the order a payload carries them.
const CEL: [u8; 16] = [
    0x0d, 0xa9, 0xc0, 0xb5, 0xbf, 0x41, 0x4b, 0x78, 0x8f, 0x79, 0x96, 0xb1, 0x62, 0x3b, 0x3f, 0x17,
];

/// Every opcode this device implements when it has an LSA.
/// The commands of a persistent device with a label area (`lsa_dev`).
const IMPLEMENTED: [u16; 15] = [
    0x0100, 0x0101, 0x0102, 0x0103, 0x0200, 0x0300, 0x0301, 0x0400, 0x0401, 0x4000, 0x4100, 0x4102,
    0x4103, 0x4200, 0x4500,
];

fn params(volatile: u64, persistent: u64, lsa: Option<Arc<RamBacking>>) -> MemdevParams {
    MemdevParams {
        volatile_bytes: volatile,
        persistent_bytes: persistent,
        lsa,
        fw_revision: "cxlvm-fw 1.2".into(),
        serial: 0x1234_5678_9abc_def0,
    }
}

fn volatile_dev() -> Mailbox {
    Mailbox::new(params(4 * GIB, 0, None))
}

fn lsa_dev() -> (Mailbox, Arc<RamBacking>) {
    let lsa = RamBacking::memfd("lsa", LSA_SIZE).unwrap();
    (Mailbox::new(params(2 * GIB, GIB, Some(lsa.clone()))), lsa)
}

fn run(mb: &mut Mailbox, op: u16, input: &[u8]) -> (ReturnCode, Vec<u8>) {
    let (rc, out) = mb.execute(op, input, PAYLOAD);
    assert!(out.len() <= PAYLOAD);
    if rc != ReturnCode::Success {
        assert!(out.is_empty(), "error {rc:?} with output");
    }
    (rc, out)
}

fn ok(mb: &mut Mailbox, op: u16, input: &[u8]) -> Vec<u8> {
    let (rc, out) = run(mb, op, input);
    assert_eq!(rc, ReturnCode::Success, "opcode {op:#06x}");
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn get_log_input(uuid: &[u8; 16], offset: u32, length: u32) -> Vec<u8> {
    let mut v = uuid.to_vec();
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&length.to_le_bytes());
    v
}

fn lsa_get_input(offset: u32, length: u32) -> Vec<u8> {
    let mut v = offset.to_le_bytes().to_vec();
    v.extend_from_slice(&length.to_le_bytes());
    v
}

fn lsa_set_input(offset: u32, data: &[u8]) -> Vec<u8> {
    let mut v = offset.to_le_bytes().to_vec();
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(data);
    v
}

fn read_cel(mb: &mut Mailbox) -> Vec<u8> {
    let gsl = ok(mb, 0x0400, &[]);
    let size = u32_at(&gsl, 24);
    ok(mb, 0x0401, &get_log_input(&CEL, 0, size))
}

fn cel_opcodes(cel: &[u8]) -> Vec<u16> {
    assert_eq!(cel.len() % 4, 0);
    cel.chunks_exact(4).map(|e| u16_at(e, 0)).collect()
}

// ---------------------------------------------------------------------------------------------
// Return codes
// ---------------------------------------------------------------------------------------------

#[test]
fn return_code_values_follow_the_spec_table() {
    let expect = [
        (ReturnCode::Success, 0x00),
        (ReturnCode::BackgroundStarted, 0x01),
        (ReturnCode::InvalidInput, 0x02),
        (ReturnCode::Unsupported, 0x03),
        (ReturnCode::InternalError, 0x04),
        (ReturnCode::Retry, 0x05),
        (ReturnCode::Busy, 0x06),
        (ReturnCode::MediaDisabled, 0x07),
        (ReturnCode::FwTransferInProgress, 0x08),
        (ReturnCode::FwTransferOutOfOrder, 0x09),
        (ReturnCode::FwVerificationFailed, 0x0A),
        (ReturnCode::InvalidSlot, 0x0B),
        (ReturnCode::ActivationFailedRolledBack, 0x0C),
        (ReturnCode::ActivationFailedColdReset, 0x0D),
        (ReturnCode::InvalidHandle, 0x0E),
        (ReturnCode::InvalidPhysicalAddress, 0x0F),
        (ReturnCode::InjectPoisonLimitReached, 0x10),
        (ReturnCode::PermanentMediaFailure, 0x11),
        (ReturnCode::Aborted, 0x12),
        (ReturnCode::InvalidSecurityState, 0x13),
        (ReturnCode::IncorrectPassphrase, 0x14),
        (ReturnCode::UnsupportedMailbox, 0x15),
        (ReturnCode::InvalidPayloadLength, 0x16),
        (ReturnCode::InvalidLog, 0x17),
        (ReturnCode::Interrupted, 0x18),
        (ReturnCode::UnsupportedFeatureVersion, 0x19),
        (ReturnCode::UnsupportedFeatureSelectionValue, 0x1A),
        (ReturnCode::FeatureTransferInProgress, 0x1B),
        (ReturnCode::FeatureTransferOutOfOrder, 0x1C),
        (ReturnCode::ResourcesExhausted, 0x1D),
        (ReturnCode::InvalidExtentList, 0x1E),
    ];
    for (rc, code) in expect {
        assert_eq!(rc.code(), code, "{rc:?}");
        assert!(rc.code() <= 0x1E);
    }
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

#[test]
fn get_supported_logs_lists_the_cel_with_its_size() {
    let (mut mb, _lsa) = lsa_dev();
    let out = ok(&mut mb, 0x0400, &[]);
    assert_eq!(out.len(), 28);
    assert_eq!(u16_at(&out, 0), 1, "one supported log");
    assert_eq!(&out[2..8], &[0; 6], "reserved");
    assert_eq!(&out[8..24], &CEL);
    assert_eq!(u32_at(&out, 24), 4 * IMPLEMENTED.len() as u32);
}

#[test]
fn cel_lists_exactly_the_implemented_opcodes() {
    let (mut mb, _lsa) = lsa_dev();
    let cel = read_cel(&mut mb);
    let ops = cel_opcodes(&cel);
    assert_eq!(ops, IMPLEMENTED.to_vec());
    // Effects: only the spec-defined bits 0..=6 may be set; commands that change state say so.
    let effects: Vec<u16> = cel.chunks_exact(4).map(|e| u16_at(e, 2)).collect();
    assert!(effects.iter().all(|e| e & !0x7F == 0));
    for (op, eff) in ops.iter().zip(&effects) {
        match op {
            0x0101 => assert_eq!(*eff, 1 << 4, "clear events: immediate log change"),
            0x0103 | 0x0301 | 0x4103 => assert_ne!(*eff, 0, "{op:#06x}"),
            _ => assert_eq!(*eff, 0, "{op:#06x} is read-only"),
        }
    }

    // Every opcode outside the CEL is Unsupported and every opcode inside it is not.
    let listed: BTreeSet<u16> = ops.into_iter().collect();
    for op in 0..=u16::MAX {
        let (rc, _) = run(&mut mb, op, &[]);
        if listed.contains(&op) {
            assert_ne!(rc, ReturnCode::Unsupported, "{op:#06x}");
        } else {
            assert_eq!(rc, ReturnCode::Unsupported, "{op:#06x}");
        }
    }
}

#[test]
fn cel_without_lsa_drops_the_lsa_commands() {
    // A volatile device: no label area, no persistent-memory security state.
    let mut mb = volatile_dev();
    let ops = cel_opcodes(&read_cel(&mut mb));
    let expect: Vec<u16> = IMPLEMENTED
        .iter()
        .copied()
        .filter(|&op| op != 0x4102 && op != 0x4103 && op != 0x4500)
        .collect();
    assert_eq!(ops, expect);
    assert_eq!(u32_at(&ok(&mut mb, 0x0400, &[]), 24), 4 * 12);
}

#[test]
fn get_log_returns_exact_slices() {
    let (mut mb, _lsa) = lsa_dev();
    let cel = read_cel(&mut mb);
    let size = cel.len() as u32;
    assert_eq!(ok(&mut mb, 0x0401, &get_log_input(&CEL, 4, 8)), &cel[4..12]);
    assert_eq!(
        ok(&mut mb, 0x0401, &get_log_input(&CEL, size - 1, 1)),
        &cel[cel.len() - 1..]
    );
    assert_eq!(
        ok(&mut mb, 0x0401, &get_log_input(&CEL, 7, 0)),
        Vec::<u8>::new()
    );
    assert_eq!(
        ok(&mut mb, 0x0401, &get_log_input(&CEL, size, 0)),
        Vec::<u8>::new()
    );
    // Chunked reads, the way the kernel walks a log bigger than its transfer size.
    let mut joined = Vec::new();
    let mut off = 0;
    while off < size {
        let n = (size - off).min(12);
        joined.extend(ok(&mut mb, 0x0401, &get_log_input(&CEL, off, n)));
        off += n;
    }
    assert_eq!(joined, cel);
}

#[test]
fn get_log_rejects_bad_uuid_ranges_and_lengths() {
    let (mut mb, _lsa) = lsa_dev();
    let size = u32_at(&ok(&mut mb, 0x0400, &[]), 24);
    let inval = |mb: &mut Mailbox, input: Vec<u8>| run(mb, 0x0401, &input).0;

    // Unknown log, and the CEL UUID in the wrong (mixed-endian) byte order.
    let mut other = CEL;
    other[15] ^= 1;
    assert_eq!(
        inval(&mut mb, get_log_input(&other, 0, 4)),
        ReturnCode::InvalidLog
    );
    let mut swapped = CEL;
    swapped[..4].reverse();
    swapped[4..6].reverse();
    swapped[6..8].reverse();
    assert_eq!(
        inval(&mut mb, get_log_input(&swapped, 0, 4)),
        ReturnCode::InvalidLog
    );
    assert_eq!(ReturnCode::InvalidLog.code(), 0x17);

    // Out of range.
    assert_eq!(
        inval(&mut mb, get_log_input(&CEL, size + 1, 0)),
        ReturnCode::InvalidInput
    );
    assert_eq!(
        inval(&mut mb, get_log_input(&CEL, size, 1)),
        ReturnCode::InvalidInput
    );
    assert_eq!(
        inval(&mut mb, get_log_input(&CEL, 0, size + 1)),
        ReturnCode::InvalidInput
    );
    assert_eq!(
        inval(&mut mb, get_log_input(&CEL, 4, size)),
        ReturnCode::InvalidInput
    );
    assert_eq!(
        inval(&mut mb, get_log_input(&CEL, u32::MAX, u32::MAX)),
        ReturnCode::InvalidInput
    );
    assert_eq!(
        inval(&mut mb, get_log_input(&CEL, 1, u32::MAX)),
        ReturnCode::InvalidInput
    );
    // Longer than the payload, even where the log would be long enough.
    let (rc, out) = mb.execute(0x0401, &get_log_input(&CEL, 0, 8), 4);
    assert_eq!((rc, out.len()), (ReturnCode::InvalidInput, 0));

    // Wrong input sizes.
    let good = get_log_input(&CEL, 0, 4);
    assert_eq!(
        inval(&mut mb, good[..0x17].to_vec()),
        ReturnCode::InvalidPayloadLength
    );
    let mut long = good.clone();
    long.push(0);
    assert_eq!(inval(&mut mb, long), ReturnCode::InvalidPayloadLength);
    assert_eq!(inval(&mut mb, Vec::new()), ReturnCode::InvalidPayloadLength);
}

// ---------------------------------------------------------------------------------------------
// Identify, partitions, health, firmware
// ---------------------------------------------------------------------------------------------

#[test]
fn identify_reports_capacities_and_lsa_at_spec_offsets() {
    let (mut mb, _lsa) = lsa_dev();
    let out = ok(&mut mb, 0x4000, &[]);
    assert!(out.len() >= 0x43);
    assert_eq!(out.len(), 0x45);
    assert_eq!(&out[..16], b"cxlvm-fw 1.2\0\0\0\0");
    assert_eq!(u64_at(&out, 0x10), 12, "total = 3 GiB in 256 MiB units");
    assert_eq!(u64_at(&out, 0x18), 8, "volatile only");
    assert_eq!(u64_at(&out, 0x20), 4, "persistent only");
    assert_eq!(u64_at(&out, 0x28), 0, "partition alignment");
    for log in 0..4 {
        assert_ne!(u16_at(&out, 0x30 + 2 * log), 0, "event log {log} size");
    }
    assert_eq!(u32_at(&out, 0x38), LSA_SIZE as u32);
    assert_eq!(&out[0x3C..0x3F], &[0; 3], "poison list max records");
    assert_eq!(u16_at(&out, 0x3F), 0, "inject poison limit");
    assert_eq!(out[0x41], 0, "poison caps");
    assert_eq!(out[0x42], 0, "QoS telemetry caps");
    assert_eq!(u16_at(&out, 0x43), 0, "DC event log size");
}

#[test]
fn identify_of_a_volatile_device_without_lsa() {
    let mut mb = volatile_dev();
    let out = ok(&mut mb, 0x4000, &[]);
    assert_eq!(u64_at(&out, 0x10), 16);
    assert_eq!(u64_at(&out, 0x18), 16);
    assert_eq!(u64_at(&out, 0x20), 0);
    assert_eq!(u32_at(&out, 0x38), 0);
    // Capacities that are not a multiple of 256 MiB round down; total stays vol + pers.
    let mut odd = Mailbox::new(params((1 << 28) * 3 + 5, (1 << 28) - 1, None));
    let out = ok(&mut odd, 0x4000, &[]);
    assert_eq!(
        (u64_at(&out, 0x10), u64_at(&out, 0x18), u64_at(&out, 0x20)),
        (3, 3, 0)
    );
}

#[test]
fn partition_info_layout() {
    let (mut mb, _lsa) = lsa_dev();
    let out = ok(&mut mb, 0x4100, &[]);
    assert_eq!(out.len(), 0x20);
    assert_eq!(u64_at(&out, 0x00), 8, "active volatile");
    assert_eq!(u64_at(&out, 0x08), 4, "active persistent");
    assert_eq!(u64_at(&out, 0x10), 0, "next volatile (no change pending)");
    assert_eq!(u64_at(&out, 0x18), 0, "next persistent");
}

#[test]
fn health_info_layout() {
    let mut mb = volatile_dev();
    let out = ok(&mut mb, 0x4200, &[]);
    assert_eq!(out.len(), 0x12);
    assert_eq!(out[0x00], 0, "health status");
    assert_eq!(out[0x01], 0, "media status normal");
    assert_eq!(out[0x02], 0, "additional status");
    assert_eq!(out[0x03], 0, "life used");
    assert_eq!(u16_at(&out, 0x04), 0xFFFF, "temperature not reported");
    assert_eq!(u32_at(&out, 0x06), 0, "dirty shutdown count");
    assert_eq!(u32_at(&out, 0x0A), 0, "corrected volatile errors");
    assert_eq!(u32_at(&out, 0x0E), 0, "corrected persistent errors");
}

#[test]
fn fw_info_layout() {
    let mut mb = volatile_dev();
    let out = ok(&mut mb, 0x0200, &[]);
    assert_eq!(out.len(), 0x50);
    assert_eq!(out[0x00], 1, "slots supported");
    assert_eq!(out[0x01] & 0x7, 1, "active slot");
    assert_eq!((out[0x01] >> 3) & 0x7, 0, "no staged slot");
    assert_eq!(out[0x02], 0, "activation caps");
    assert_eq!(&out[0x03..0x10], &[0; 13]);
    assert_eq!(&out[0x10..0x20], b"cxlvm-fw 1.2\0\0\0\0");
    assert_eq!(&out[0x20..0x50], &[0; 0x30], "slots 2..4 empty");
}

// ---------------------------------------------------------------------------------------------
// Timestamp
// ---------------------------------------------------------------------------------------------

#[test]
fn timestamp_is_set_value_plus_elapsed_and_monotonic() {
    let mut mb = volatile_dev();
    let t = 1_700_000_000_000_000_000u64;
    assert!(ok(&mut mb, 0x0301, &t.to_le_bytes()).is_empty());
    let mut prev = t;
    for _ in 0..100 {
        let out = ok(&mut mb, 0x0300, &[]);
        assert_eq!(out.len(), 8);
        let now = u64_at(&out, 0);
        assert!(now >= prev, "{now} < {prev}");
        prev = now;
    }
    std::thread::sleep(std::time::Duration::from_millis(2));
    let later = u64_at(&ok(&mut mb, 0x0300, &[]), 0);
    assert!(later >= t + 2_000_000 && later < t + 60_000_000_000);
    // Setting it back in time is honoured; near u64::MAX it saturates instead of wrapping.
    ok(&mut mb, 0x0301, &5u64.to_le_bytes());
    assert!(u64_at(&ok(&mut mb, 0x0300, &[]), 0) < t);
    ok(&mut mb, 0x0301, &u64::MAX.to_le_bytes());
    assert_eq!(u64_at(&ok(&mut mb, 0x0300, &[]), 0), u64::MAX);
}

#[test]
fn timestamp_rejects_wrong_lengths() {
    let mut mb = volatile_dev();
    for len in [0, 4, 7, 9, 16] {
        assert_eq!(
            run(&mut mb, 0x0301, &vec![1; len]).0,
            ReturnCode::InvalidPayloadLength
        );
    }
    assert_eq!(
        run(&mut mb, 0x0300, &[0]).0,
        ReturnCode::InvalidPayloadLength
    );
}

// ---------------------------------------------------------------------------------------------
// LSA
// ---------------------------------------------------------------------------------------------

#[test]
fn lsa_round_trip_reaches_the_backing() {
    let (mut mb, lsa) = lsa_dev();
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
    assert!(ok(&mut mb, 0x4103, &lsa_set_input(1000, &data)).is_empty());
    // The bytes are in the RamBacking...
    let mut direct = vec![0u8; data.len()];
    lsa.read(1000, &mut direct).unwrap();
    assert_eq!(direct, data);
    // ...and Get LSA reads them (and the backing's own writes) back.
    assert_eq!(ok(&mut mb, 0x4102, &lsa_get_input(1000, 300)), data);
    lsa.write(LSA_SIZE - 4, &[0xde, 0xad, 0xbe, 0xef]).unwrap();
    assert_eq!(
        ok(&mut mb, 0x4102, &lsa_get_input(LSA_SIZE as u32 - 4, 4)),
        [0xde, 0xad, 0xbe, 0xef]
    );
    // Full-payload read and an empty write at the very end.
    assert_eq!(
        ok(&mut mb, 0x4102, &lsa_get_input(0, PAYLOAD as u32)).len(),
        PAYLOAD
    );
    ok(&mut mb, 0x4103, &lsa_set_input(LSA_SIZE as u32, &[]));
    // Largest write that fits a payload.
    let big = vec![0x5a; PAYLOAD - 8];
    ok(
        &mut mb,
        0x4103,
        &lsa_set_input(LSA_SIZE as u32 - big.len() as u32, &big),
    );
    assert_eq!(
        ok(&mut mb, 0x4102, &lsa_get_input(LSA_SIZE as u32 - 8, 8)),
        [0x5a; 8]
    );
}

#[test]
fn lsa_bounds_and_lengths_are_checked() {
    let (mut mb, lsa) = lsa_dev();
    let size = LSA_SIZE as u32;
    let snapshot = |lsa: &RamBacking| {
        let mut v = vec![0u8; LSA_SIZE as usize];
        lsa.read(0, &mut v).unwrap();
        v
    };
    lsa.write(0, &[0x11; LSA_SIZE as usize]).unwrap();
    let before = snapshot(&lsa);

    for (offset, len) in [
        (size, 1),
        (size - 3, 4),
        (size + 1, 0),
        (u32::MAX, 1),
        (u32::MAX, u32::MAX),
        (1, u32::MAX),
        (0, PAYLOAD as u32 + 1),
    ] {
        assert_eq!(
            run(&mut mb, 0x4102, &lsa_get_input(offset, len)).0,
            ReturnCode::InvalidInput,
            "get {offset:#x}+{len:#x}"
        );
    }
    for (offset, len) in [(size, 1usize), (size - 3, 4), (size + 1, 0), (u32::MAX, 2)] {
        assert_eq!(
            run(&mut mb, 0x4103, &lsa_set_input(offset, &vec![0xEE; len])).0,
            ReturnCode::InvalidInput,
            "set {offset:#x}+{len:#x}"
        );
    }
    assert_eq!(snapshot(&lsa), before, "failed writes changed nothing");

    for len in [0, 4, 7, 9, 16] {
        assert_eq!(
            run(&mut mb, 0x4102, &vec![0; len]).0,
            ReturnCode::InvalidPayloadLength
        );
    }
    for len in [0, 1, 7] {
        assert_eq!(
            run(&mut mb, 0x4103, &vec![0; len]).0,
            ReturnCode::InvalidPayloadLength
        );
    }
}

#[test]
fn lsa_commands_are_unsupported_without_an_lsa() {
    let mut mb = volatile_dev();
    assert_eq!(
        run(&mut mb, 0x4102, &lsa_get_input(0, 4)).0,
        ReturnCode::Unsupported
    );
    assert_eq!(
        run(&mut mb, 0x4103, &lsa_set_input(0, &[1])).0,
        ReturnCode::Unsupported
    );
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[test]
fn get_event_records_returns_an_empty_header_per_log() {
    let mut mb = volatile_dev();
    for log in 0..=3u8 {
        let out = ok(&mut mb, 0x0100, &[log]);
        assert_eq!(out.len(), 0x20);
        assert_eq!(out[0], 0, "flags: no overflow, no more records");
        assert_eq!(u16_at(&out, 0x02), 0, "overflow count");
        assert_eq!(u64_at(&out, 0x04), 0);
        assert_eq!(u64_at(&out, 0x0C), 0);
        assert_eq!(u16_at(&out, 0x14), 0, "record count");
        assert_eq!(out, vec![0; 0x20]);
    }
    for log in [4u8, 5, 0xFF] {
        assert_eq!(run(&mut mb, 0x0100, &[log]).0, ReturnCode::InvalidInput);
    }
    assert_eq!(
        run(&mut mb, 0x0100, &[]).0,
        ReturnCode::InvalidPayloadLength
    );
    assert_eq!(
        run(&mut mb, 0x0100, &[0, 0]).0,
        ReturnCode::InvalidPayloadLength
    );
}

#[test]
fn clear_event_records_accepts_no_handles_and_rejects_any_handle() {
    let mut mb = volatile_dev();
    // log, flags, handle count, 3 reserved, handles.
    ok(&mut mb, 0x0101, &[0, 0, 0, 0, 0, 0]);
    ok(&mut mb, 0x0101, &[3, 1, 0, 0, 0, 0]);
    assert_eq!(
        run(&mut mb, 0x0101, &[1, 0, 1, 0, 0, 0, 0x34, 0x12]).0,
        ReturnCode::InvalidHandle
    );
    assert_eq!(ReturnCode::InvalidHandle.code(), 0x0E);
    assert_eq!(
        run(&mut mb, 0x0101, &[1, 0, 2, 0, 0, 0, 1, 0, 2, 0]).0,
        ReturnCode::InvalidHandle
    );
    // Clear-all with handles, bad log.
    assert_eq!(
        run(&mut mb, 0x0101, &[0, 1, 1, 0, 0, 0, 1, 0]).0,
        ReturnCode::InvalidInput
    );
    assert_eq!(
        run(&mut mb, 0x0101, &[4, 0, 0, 0, 0, 0]).0,
        ReturnCode::InvalidInput
    );
    // Length must be 6 + 2 * count.
    for input in [
        &[][..],
        &[0, 0][..],
        &[0, 0, 0, 0, 0][..],
        &[0, 0, 0, 0, 0, 0, 0][..],
        &[0, 0, 1, 0, 0, 0][..],
        &[0, 0, 1, 0, 0, 0, 1][..],
        &[0, 0, 1, 0, 0, 0, 1, 0, 0][..],
    ] {
        assert_eq!(
            run(&mut mb, 0x0101, input).0,
            ReturnCode::InvalidPayloadLength,
            "{input:?}"
        );
    }
}

#[test]
fn event_interrupt_policy_is_stored() {
    let mut mb = volatile_dev();
    assert_eq!(ok(&mut mb, 0x0102, &[]), [0; 4], "no interrupts by default");
    let policy = [0x01, 0x11, 0x21, 0x32];
    ok(&mut mb, 0x0103, &policy);
    assert_eq!(ok(&mut mb, 0x0102, &[]), policy);
    // r3.x fifth (DCD) byte accepted and ignored.
    ok(&mut mb, 0x0103, &[0x41, 0x41, 0x41, 0x41, 0x01]);
    assert_eq!(ok(&mut mb, 0x0102, &[]), [0x41; 4]);
    // Reserved mode 3 is rejected and leaves the policy alone.
    assert_eq!(
        run(&mut mb, 0x0103, &[0, 0, 3, 0]).0,
        ReturnCode::InvalidInput
    );
    assert_eq!(ok(&mut mb, 0x0102, &[]), [0x41; 4]);
    for len in [0, 3, 6] {
        assert_eq!(
            run(&mut mb, 0x0103, &vec![0; len]).0,
            ReturnCode::InvalidPayloadLength
        );
    }
    assert_eq!(
        run(&mut mb, 0x0102, &[0]).0,
        ReturnCode::InvalidPayloadLength
    );
}

// ---------------------------------------------------------------------------------------------
// Generic error paths
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_opcodes_are_unsupported() {
    let (mut mb, _lsa) = lsa_dev();
    for op in [
        0x0000, 0x0001, 0x0104, 0x0201, 0x0202, 0x0402, 0x4101, 0x4300, 0x4400, 0xCD00, 0xFFFF,
    ] {
        assert_eq!(
            run(&mut mb, op, &[]).0,
            ReturnCode::Unsupported,
            "{op:#06x}"
        );
        assert_eq!(
            run(&mut mb, op, &[1; 40]).0,
            ReturnCode::Unsupported,
            "{op:#06x}"
        );
    }
}

#[test]
fn commands_without_input_reject_any_input() {
    let (mut mb, _lsa) = lsa_dev();
    for op in [0x0102, 0x0200, 0x0300, 0x0400, 0x4000, 0x4100, 0x4200] {
        ok(&mut mb, op, &[]);
        for len in [1, 8, PAYLOAD] {
            assert_eq!(
                run(&mut mb, op, &vec![0; len]).0,
                ReturnCode::InvalidPayloadLength,
                "{op:#06x} with {len} bytes"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary input to any implemented (or nearby) opcode never panics, never produces a code
    /// above 0x1E, never exceeds `max_output`, and with a full payload never fails internally.
    #[test]
    fn arbitrary_commands_are_handled(
        op in prop_oneof![
            proptest::sample::select(IMPLEMENTED.to_vec()),
            any::<u16>(),
        ],
        input in proptest::collection::vec(any::<u8>(), 0..2100),
        max_output in prop_oneof![Just(PAYLOAD), 0usize..4096],
    ) {
        let (mut mb, lsa) = lsa_dev();
        let (rc, out) = mb.execute(op, &input, max_output);
        prop_assert!(rc.code() <= 0x1E);
        prop_assert!(out.len() <= max_output);
        if max_output >= 256 {
            prop_assert_ne!(rc, ReturnCode::InternalError);
        }
        prop_assert_eq!(lsa.size(), LSA_SIZE);
    }
}

// ---------------------------------------------------------------------------------------------
// Through the register block, the way cxl_pci does it
// ---------------------------------------------------------------------------------------------

/// A test-side driver that finds everything through the capability array, like `cxl_pci`.
struct Driver {
    regs: DeviceRegs,
    mbox: u64,
    mbox_len: u64,
    memdev: u64,
    payload_size: usize,
}

impl Driver {
    fn readq(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.regs.read(at, &mut b);
        u64::from_le_bytes(b)
    }
    fn readl(&self, at: u64) -> u32 {
        let mut b = [0u8; 4];
        self.regs.read(at, &mut b);
        u32::from_le_bytes(b)
    }
    fn writeq(&mut self, at: u64, v: u64) {
        self.regs.write(at, &v.to_le_bytes());
    }
    fn writel(&mut self, at: u64, v: u32) {
        self.regs.write(at, &v.to_le_bytes());
    }

    fn probe(regs: DeviceRegs) -> Self {
        assert!(DeviceRegs::SIZE.is_power_of_two() && DeviceRegs::SIZE >= 4096);
        let mut d = Driver {
            regs,
            mbox: 0,
            mbox_len: 0,
            memdev: 0,
            payload_size: 0,
        };
        let cap_array = d.readq(0);
        assert_eq!(cap_array & 0xFFFF, 0, "capability array id");
        assert_eq!((cap_array >> 16) & 0xFF, 1, "capability array version");
        let count = (cap_array >> 32) & 0xFFFF;
        assert_eq!(count, 3);
        let (mut status, mut mbox, mut memdev) = (None, None, None);
        let mut spans = Vec::new();
        for n in 1..=count {
            let lo = d.readq(n * 0x10);
            let hi = d.readq(n * 0x10 + 8);
            let id = (lo & 0xFFFF) as u16;
            let version = (lo >> 16) & 0xFF;
            let offset = lo >> 32;
            let length = hi & 0xFFFF_FFFF;
            assert_eq!(offset % 8, 0);
            assert!(offset + length <= DeviceRegs::SIZE as u64);
            assert!(offset >= 0x40, "structures start after the headers");
            spans.push((offset, offset + length));
            match id {
                0x0001 => {
                    assert_eq!(version, 2);
                    assert!(length >= 8);
                    status = Some(offset);
                }
                0x0002 => {
                    assert_eq!(version, 1);
                    mbox = Some((offset, length));
                }
                0x4000 => {
                    assert_eq!(version, 1);
                    assert!(length >= 8);
                    memdev = Some(offset);
                }
                other => panic!("unexpected capability {other:#x}"),
            }
        }
        spans.sort();
        assert!(
            spans.windows(2).all(|w| w[0].1 <= w[1].0),
            "overlap: {spans:x?}"
        );
        let status = status.expect("device status capability");
        (d.mbox, d.mbox_len) = mbox.expect("primary mailbox capability");
        d.memdev = memdev.expect("memory device capability");

        assert_eq!(d.readq(status), 0, "event status: no events");
        let md = d.readq(d.memdev);
        assert_eq!(md & 0b11, 0, "not fatal, no FW halt");
        assert_eq!((md >> 2) & 0b11, 1, "media ready");
        assert_eq!((md >> 4) & 1, 1, "mailbox interfaces ready");
        assert_eq!((md >> 5) & 0b111, 0, "no reset needed");
        assert_eq!(md, 0x14);

        let caps = d.readl(d.mbox);
        let log2 = caps & 0x1F;
        assert!(log2 >= 8);
        d.payload_size = 1 << log2;
        assert_eq!(d.payload_size, 2048);
        assert_eq!((caps >> 5) & 0b11, 0, "no doorbell/background interrupts");
        assert!(d.mbox_len >= 0x20 + d.payload_size as u64);
        d
    }

    /// Writes `data` at `at` in a rotating mix of 1-, 2- and 4-byte accesses (some unaligned).
    fn memcpy_toio(&mut self, at: u64, data: &[u8]) {
        let mut i = 0;
        let mut k = 0;
        while i < data.len() {
            let want = [1, 2, 4, 4, 2][k % 5];
            k += 1;
            let n = want.min(data.len() - i);
            let n = if n == 3 { 2 } else { n };
            self.regs.write(at + i as u64, &data[i..i + n]);
            i += n;
        }
    }

    /// Reads `len` bytes at `at` with a rotating mix of 4-, 2- and 1-byte accesses.
    fn memcpy_fromio(&self, at: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut i = 0;
        let mut k = 0;
        while i < len {
            let want = [4, 1, 2, 4, 1][k % 5];
            k += 1;
            let n = want.min(len - i);
            let n = if n == 3 { 2 } else { n };
            self.regs.read(at + i as u64, &mut out[i..i + n]);
            i += n;
        }
        out
    }

    fn send(&mut self, opcode: u16, input: &[u8]) -> (u16, Vec<u8>) {
        assert_eq!(self.readl(self.mbox + 4) & 1, 0, "doorbell busy");
        self.memcpy_toio(self.mbox + 0x20, input);
        self.writeq(
            self.mbox + 8,
            u64::from(opcode) | ((input.len() as u64) << 16),
        );
        self.writel(self.mbox + 4, 1);
        assert_eq!(self.readl(self.mbox + 4) & 1, 0, "doorbell still set");
        let status = self.readq(self.mbox + 0x10);
        assert_eq!(status & 1, 0, "no background operation");
        let rc = ((status >> 32) & 0xFFFF) as u16;
        assert!(rc <= 0x1E);
        assert_eq!(self.readq(self.mbox + 0x18), 0, "background status");
        let cmd = self.readq(self.mbox + 8);
        assert_eq!(cmd & 0xFFFF, u64::from(opcode), "opcode preserved");
        let out_len = ((cmd >> 16) & 0x1F_FFFF) as usize;
        if rc != 0 {
            assert_eq!(out_len, 0);
            return (rc, Vec::new());
        }
        let n = out_len.min(self.payload_size);
        (rc, self.memcpy_fromio(self.mbox + 0x20, n))
    }
}

fn driver_with_lsa() -> (Driver, Arc<RamBacking>) {
    let (mb, lsa) = lsa_dev();
    (Driver::probe(DeviceRegs::new(mb)), lsa)
}

#[test]
fn regs_driver_probe_sequence() {
    let (mut d, _lsa) = driver_with_lsa();

    // 1. Get Supported Logs.
    let (rc, gsl) = d.send(0x0400, &[]);
    assert_eq!(rc, 0);
    assert_eq!(gsl.len(), 28);
    assert_eq!(u16_at(&gsl, 0), 1);
    assert_eq!(&gsl[8..24], &CEL);
    let size = u32_at(&gsl, 24);
    assert_eq!(size, 4 * IMPLEMENTED.len() as u32);

    // 2. Get Log until `size` bytes are read, in transfers of at most the payload size (and
    //    here deliberately odd-sized ones too).
    let mut cel = Vec::new();
    let mut off = 0u32;
    while off < size {
        let n = (size - off).min(d.payload_size as u32).min(10);
        let (rc, chunk) = d.send(0x0401, &get_log_input(&CEL, off, n));
        assert_eq!(rc, 0);
        assert_eq!(chunk.len(), n as usize);
        cel.extend(chunk);
        off += n;
    }
    assert_eq!(cel_opcodes(&cel), IMPLEMENTED.to_vec());
    let (rc, whole) = d.send(0x0401, &get_log_input(&CEL, 0, size));
    assert_eq!((rc, whole), (0, cel));

    // 3. Set Timestamp.
    let t = 1_750_000_000_123_456_789u64;
    let (rc, out) = d.send(0x0301, &t.to_le_bytes());
    assert_eq!((rc, out.len()), (0, 0));
    let (rc, out) = d.send(0x0300, &[]);
    assert_eq!(rc, 0);
    assert!(u64_at(&out, 0) >= t);

    // 4. Identify.
    let (rc, id) = d.send(0x4000, &[]);
    assert_eq!(rc, 0);
    assert!(id.len() >= 0x43);
    assert_eq!(u64_at(&id, 0x10), 12);
    assert_eq!(u64_at(&id, 0x18), 8);
    assert_eq!(u64_at(&id, 0x20), 4);
    assert_eq!(u64_at(&id, 0x28), 0);
    assert_eq!(u32_at(&id, 0x38), LSA_SIZE as u32);

    // 5. Event records once per log (what happens without MSI / _OSC control).
    for log in [3u8, 2, 1, 0] {
        let (rc, hdr) = d.send(0x0100, &[log]);
        assert_eq!((rc, hdr.len(), u16_at(&hdr, 0x14)), (0, 0x20, 0));
    }
}

#[test]
fn regs_error_paths_and_lsa() {
    let (mut d, lsa) = driver_with_lsa();
    assert_eq!(d.send(0x4300, &[]).0, 0x03, "unsupported");
    assert_eq!(d.send(0x0401, &get_log_input(&[0; 16], 0, 4)).0, 0x17);
    assert_eq!(d.send(0x4000, &[1, 2, 3]).0, 0x16);
    assert_eq!(d.send(0x0101, &[0, 0, 1, 0, 0, 0, 9, 9]).0, 0x0E);

    // Payload length above the payload size.
    d.writeq(d.mbox + 8, 0x4000 | ((d.payload_size as u64 + 1) << 16));
    d.writel(d.mbox + 4, 1);
    assert_eq!((d.readq(d.mbox + 0x10) >> 32) & 0xFFFF, 0x16);
    assert_eq!((d.readq(d.mbox + 8) >> 16) & 0x1F_FFFF, 0);
    assert_eq!(d.readl(d.mbox + 4), 0);

    // LSA through the payload.
    let data: Vec<u8> = (0..d.payload_size - 8).map(|i| (i % 251) as u8).collect();
    assert_eq!(d.send(0x4103, &lsa_set_input(17, &data)).0, 0);
    let (rc, back) = d.send(0x4102, &lsa_get_input(17, data.len() as u32));
    assert_eq!((rc, &back), (0, &data));
    let mut direct = vec![0; data.len()];
    lsa.read(17, &mut direct).unwrap();
    assert_eq!(direct, data);
    assert_eq!(d.send(0x4102, &lsa_get_input(LSA_SIZE as u32, 1)).0, 0x02);

    // Out-of-range and unimplemented offsets read 0 and ignore writes.
    for at in [
        0x08u64,
        0x40,
        0x48,
        d.mbox - 8,
        DeviceRegs::SIZE as u64,
        u64::MAX - 7,
    ] {
        d.writeq(at, u64::MAX);
        assert_eq!(d.readq(at), 0, "{at:#x}");
    }
    // Read-only registers ignore writes.
    let before: Vec<u64> = (0..8).map(|i| d.readq(i * 8)).collect();
    for i in 0..8 {
        d.writeq(i * 8, 0);
    }
    assert_eq!((0..8).map(|i| d.readq(i * 8)).collect::<Vec<_>>(), before);
    d.writeq(d.memdev, 0);
    assert_eq!(d.readq(d.memdev), 0x14);
    d.writel(d.mbox, 0);
    assert_eq!(d.readl(d.mbox) & 0x1F, 11);

    // Reset clears command state but keeps the LSA.
    d.regs.reset();
    assert_eq!(d.readq(d.mbox + 8), 0);
    assert_eq!(d.readq(d.mbox + 0x10), 0);
    let (rc, back) = d.send(0x4102, &lsa_get_input(17, 8));
    assert_eq!((rc, back.as_slice()), (0, &data[..8]));
}

/// SplitMix64, so the random test is reproducible without extra dependencies.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the device will see when a write rings the doorbell: the Command register and payload
/// as they will be after the write's own bytes land.
fn predict(d: &Driver, at: u64, data: &[u8]) -> Option<(u64, Vec<u8>)> {
    let control = d.mbox + 4;
    let cmd_at = d.mbox + 8;
    let payload_at = d.mbox + 0x20;
    let rings = data
        .iter()
        .enumerate()
        .any(|(i, b)| at.checked_add(i as u64) == Some(control) && b & 1 != 0);
    if !rings {
        return None;
    }
    let mut cmd = d.readq(cmd_at).to_le_bytes();
    let mut payload = vec![0u8; d.payload_size];
    d.regs.read(payload_at, &mut payload);
    for (i, &b) in data.iter().enumerate() {
        let Some(a) = at.checked_add(i as u64) else {
            continue;
        };
        if (cmd_at..cmd_at + 8).contains(&a) {
            cmd[(a - cmd_at) as usize] = b;
        } else if (payload_at..payload_at + d.payload_size as u64).contains(&a) {
            payload[(a - payload_at) as usize] = b;
        }
    }
    Some((u64::from_le_bytes(cmd), payload))
}

#[test]
fn regs_random_accesses_never_panic_and_keep_the_lsa_in_bounds() {
    let (mut d, lsa) = driver_with_lsa();
    let mut shadow = vec![0u8; LSA_SIZE as usize];
    let mut rng = Rng(0x00C0_FFEE_D15E_A5E5);
    let size = DeviceRegs::SIZE as u64;
    let (mut doorbells, mut lsa_writes, mut lsa_rejects) = (0u32, 0u32, 0u32);

    for step in 0..20_000u32 {
        let at = match rng.below(10) {
            0..=4 => d.mbox + rng.below(0x20 + d.payload_size as u64 + 8),
            5..=7 => rng.below(size + 64),
            8 => u64::MAX - rng.below(16),
            _ => rng.next(),
        };
        let len = [1usize, 2, 4, 8, 1, 2, 4, 8, 3, 16][rng.below(10) as usize];
        let kind = rng.below(10);

        if kind < 4 {
            let mut buf = vec![0u8; len];
            d.regs.read(at, &mut buf);
            continue;
        }

        // Writes. Some are structured commands aimed at the LSA edges, some ring the doorbell
        // with whatever is in Command and the payload, the rest are random bytes.
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut at = at;
        if kind >= 8 {
            let op = [
                0x4102u16, 0x4103, 0x4103, 0x0401, 0x0101, 0x0103, 0x0301, 0x4000,
            ][rng.below(8) as usize];
            let edge = LSA_SIZE as u32;
            let offset = match rng.below(6) {
                0 => 0,
                1 => rng.below(u64::from(edge)) as u32,
                2 => edge.wrapping_sub(rng.below(64) as u32),
                3 => edge + rng.below(64) as u32,
                4 => u32::MAX - rng.below(64) as u32,
                _ => rng.next() as u32,
            };
            let dlen = match rng.below(4) {
                0 => rng.below(16) as u32,
                1 => rng.below(d.payload_size as u64 + 16) as u32,
                2 => rng.next() as u32,
                _ => 8,
            };
            let mut input = offset.to_le_bytes().to_vec();
            if op == 0x4103 {
                input.extend_from_slice(&[0; 4]);
                let n = (dlen as usize).min(d.payload_size + 8);
                input.extend((0..n).map(|_| rng.next() as u8));
            } else {
                input.extend_from_slice(&dlen.to_le_bytes());
            }
            let in_len = if rng.below(8) == 0 {
                rng.below(1 << 21)
            } else {
                input.len() as u64
            };
            d.memcpy_toio(d.mbox + 0x20, &input[..input.len().min(d.payload_size)]);
            d.writeq(d.mbox + 8, u64::from(op) | (in_len << 16));
            data = 1u32.to_le_bytes().to_vec();
            at = d.mbox + 4;
        } else if kind == 7 {
            data = vec![1];
            at = d.mbox + 4;
        }

        let expect = predict(&d, at, &data);
        d.regs.write(at, &data);
        assert_eq!(
            d.readl(d.mbox + 4) & 1,
            0,
            "doorbell left set at step {step}"
        );
        let Some((cmd, payload)) = expect else {
            continue;
        };
        doorbells += 1;
        let status = d.readq(d.mbox + 0x10);
        let rc = ((status >> 32) & 0xFFFF) as u16;
        assert!(rc <= 0x1E, "step {step}: rc {rc:#x}");
        assert_ne!(rc, 0x04, "step {step}: internal error");
        let out_len = ((d.readq(d.mbox + 8) >> 16) & 0x1F_FFFF) as usize;
        assert!(out_len <= d.payload_size);

        let op = (cmd & 0xFFFF) as u16;
        let in_len = ((cmd >> 16) & 0x1F_FFFF) as usize;
        if in_len > d.payload_size {
            assert_eq!(rc, 0x16, "step {step}");
            continue;
        }
        let input = &payload[..in_len];
        match op {
            0x4103 if in_len >= 8 => {
                let off = u32_at(input, 0) as usize;
                let body = &input[8..];
                if off + body.len() <= shadow.len() {
                    assert_eq!(rc, 0, "step {step}: set lsa {off:#x}+{:#x}", body.len());
                    shadow[off..off + body.len()].copy_from_slice(body);
                    lsa_writes += 1;
                } else {
                    assert_eq!(rc, 0x02, "step {step}: set lsa {off:#x}+{:#x}", body.len());
                    lsa_rejects += 1;
                }
            }
            0x4102 if in_len == 8 => {
                let off = u32_at(input, 0) as usize;
                let n = u32_at(input, 4) as usize;
                if n <= d.payload_size && off + n <= shadow.len() {
                    assert_eq!((rc, out_len), (0, n), "step {step}");
                    let out = d.memcpy_fromio(d.mbox + 0x20, n);
                    assert_eq!(out, shadow[off..off + n], "step {step}");
                } else {
                    assert_eq!(rc, 0x02, "step {step}");
                    lsa_rejects += 1;
                }
            }
            0x4102 | 0x4103 => assert_eq!(rc, 0x16, "step {step}"),
            _ => {}
        }
    }

    let mut contents = vec![0u8; LSA_SIZE as usize];
    lsa.read(0, &mut contents).unwrap();
    assert_eq!(contents, shadow, "LSA differs from the model");
    assert!(doorbells > 2000, "{doorbells} doorbells");
    assert!(
        lsa_writes > 50 && lsa_rejects > 50,
        "{lsa_writes} / {lsa_rejects}"
    );
}
