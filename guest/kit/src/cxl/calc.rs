//! Pure CXL helpers: register field encodings and decodings, mailbox payload parsing and region
//! planning. No register access, only `core`, so that the host-side test crate
//! (`guest/host-tests`) can include this file and unit-test it.

use core::fmt;

/// DVSEC vendor ID of the CXL consortium.
pub const CXL_VENDOR: u16 = 0x1e98;
/// Class code of a CXL memory device (Type-3): base 05, sub 02, prog-if 0x10.
pub const CLASS_CXL_MEMORY: u32 = 0x05_02_10;
/// 256 MiB: the unit of capacities, HDM decoder bases and sizes, window bases and sizes.
pub const UNIT: u64 = 256 << 20;

/// DVSEC IDs (vendor [`CXL_VENDOR`]).
pub mod dvsec_id {
    /// PCIe DVSEC for CXL Devices.
    pub const DEVICE: u16 = 0;
    /// CXL Extensions DVSEC for Ports.
    pub const PORT_EXTENSIONS: u16 = 3;
    /// GPF DVSEC for Ports.
    pub const GPF_PORT: u16 = 4;
    /// GPF DVSEC for Devices.
    pub const GPF_DEVICE: u16 = 5;
    /// Flex Bus Port DVSEC.
    pub const FLEX_BUS: u16 = 7;
    /// Register Locator DVSEC.
    pub const REGISTER_LOCATOR: u16 = 8;
}

/// Registers of the PCIe DVSEC for CXL Devices (offsets from the DVSEC).
pub mod device_dvsec {
    /// CXL Capability (16 bit).
    pub const CAPABILITY: u16 = 0x0a;
    /// CXL Control (16 bit).
    pub const CONTROL: u16 = 0x0c;
    /// CXL Status (16 bit).
    pub const STATUS: u16 = 0x0e;
    /// Range 1 Size High (32 bit); range 2 is 0x10 further.
    pub const RANGE1_SIZE_HIGH: u16 = 0x18;
    /// Range 1 Size Low (32 bit).
    pub const RANGE1_SIZE_LOW: u16 = 0x1c;
    /// Distance between range 1 and range 2 registers.
    pub const RANGE_STRIDE: u16 = 0x10;
    /// Capability bit 2: Mem_Capable.
    pub const CAP_MEM_CAPABLE: u16 = 1 << 2;
    /// Control bit 2: Mem_Enable.
    pub const CTRL_MEM_ENABLE: u16 = 1 << 2;
    /// Range Size Low bit 0: Memory_Info_Valid.
    pub const RANGE_INFO_VALID: u32 = 1 << 0;
    /// Range Size Low bit 1: Memory_Active.
    pub const RANGE_ACTIVE: u32 = 1 << 1;
}

/// HDM_Count of a Device DVSEC Capability (bits 5:4).
pub fn dvsec_hdm_count(capability: u16) -> u8 {
    ((capability >> 4) & 3) as u8
}

/// Mem_Capable of a Device DVSEC Capability.
pub fn dvsec_mem_capable(capability: u16) -> bool {
    capability & device_dvsec::CAP_MEM_CAPABLE != 0
}

/// Size of a Device DVSEC range from its Size High and Size Low registers (low bits 31:28).
pub fn dvsec_range_size(high: u32, low: u32) -> u64 {
    (u64::from(high) << 32) | u64::from(low & 0xf000_0000)
}

/// Register Block Identifiers of the Register Locator DVSEC.
pub mod block_id {
    /// Component registers.
    pub const COMPONENT: u8 = 1;
    /// BAR virtualization ACL registers.
    pub const BAR_VIRTUALIZATION: u8 = 2;
    /// CXL memory device registers.
    pub const MEMORY_DEVICE: u8 = 3;
    /// CPMU registers.
    pub const CPMU: u8 = 4;
}

/// Offset of the first Register Locator entry in its DVSEC.
pub const REGISTER_LOCATOR_ENTRIES: u16 = 0x0c;

/// Number of 8-byte entries of a Register Locator DVSEC of `length` bytes.
pub fn register_locator_count(length: u16) -> u16 {
    length.saturating_sub(REGISTER_LOCATOR_ENTRIES) / 8
}

/// One Register Locator entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterBlock {
    /// BAR Indicator: the BAR (0..=5) holding the block.
    pub bir: u8,
    /// Register Block Identifier (see [`block_id`]).
    pub id: u8,
    /// Offset of the block in the BAR (64 KiB aligned).
    pub offset: u64,
}

/// Decodes a Register Locator entry: low dword BIR [2:0], block ID [15:8], offset bits 31:16 in
/// bits 31:16; high dword offset bits 63:32.
pub fn decode_register_block(lo: u32, hi: u32) -> RegisterBlock {
    RegisterBlock {
        bir: (lo & 7) as u8,
        id: (lo >> 8) as u8,
        offset: (u64::from(hi) << 32) | u64::from(lo & 0xffff_0000),
    }
}

/// Offset of the CXL.cache/mem capability array in a component register block.
pub const CM_ARRAY_OFFSET: u64 = 0x1000;
/// Size of the CXL.cache/mem register range (the array and the structures it points to).
pub const CM_RANGE_LEN: u64 = 0x1000;

/// CXL.cache/mem capability IDs.
pub mod cm_cap_id {
    /// The capability array header itself.
    pub const ARRAY: u16 = 1;
    /// RAS capability.
    pub const RAS: u16 = 2;
    /// Link capability.
    pub const LINK: u16 = 4;
    /// HDM Decoder capability.
    pub const HDM: u16 = 5;
}

/// A CXL.cache/mem capability header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CmCapHeader {
    /// Capability ID (bits 15:0; 0 is a NULL capability to skip).
    pub id: u16,
    /// Version (bits 19:16).
    pub version: u8,
    /// Byte offset of the structure from the array (bits 31:20).
    pub pointer: u16,
}

/// Decodes a CXL.cache/mem capability header dword.
pub fn decode_cm_cap_header(v: u32) -> CmCapHeader {
    CmCapHeader {
        id: v as u16,
        version: ((v >> 16) & 0xf) as u8,
        pointer: (v >> 20) as u16,
    }
}

/// Array Size (bits 31:24) of a CXL.cache/mem array header, if its ID is 1.
pub fn cm_array_size(v: u32) -> Option<u8> {
    (v as u16 == cm_cap_id::ARRAY).then_some((v >> 24) as u8)
}

/// HDM Decoder Capability structure registers (offsets from the structure).
pub mod hdm {
    /// HDM Decoder Capability.
    pub const CAPABILITY: u64 = 0x00;
    /// HDM Decoder Global Control.
    pub const GLOBAL_CONTROL: u64 = 0x04;
    /// Global Control bit 1: HDM Decoder Enable.
    pub const GLOBAL_ENABLE: u32 = 1 << 1;
    /// Decoder 0 Base Low; decoder n's registers are `0x20 * n` further.
    pub const BASE_LO: u64 = 0x10;
    /// Base High.
    pub const BASE_HI: u64 = 0x14;
    /// Size Low.
    pub const SIZE_LO: u64 = 0x18;
    /// Size High.
    pub const SIZE_HI: u64 = 0x1c;
    /// Control.
    pub const CONTROL: u64 = 0x20;
    /// Target List Low (ports) or DPA Skip Low (endpoints).
    pub const TARGET_LO: u64 = 0x24;
    /// Target List High or DPA Skip High.
    pub const TARGET_HI: u64 = 0x28;
    /// Distance between decoders.
    pub const STRIDE: u64 = 0x20;
}

/// Decoder Control bits.
pub mod ctrl {
    /// Interleave granularity encoding (bits 3:0).
    pub const IG_MASK: u32 = 0xf;
    /// Interleave ways encoding shift (bits 7:4).
    pub const IW_SHIFT: u32 = 4;
    /// Interleave ways encoding mask.
    pub const IW_MASK: u32 = 0xf << IW_SHIFT;
    /// Lock On Commit.
    pub const LOCK: u32 = 1 << 8;
    /// Commit.
    pub const COMMIT: u32 = 1 << 9;
    /// Committed (read only).
    pub const COMMITTED: u32 = 1 << 10;
    /// Error Not Committed (read only).
    pub const ERR_NOT_COMMITTED: u32 = 1 << 11;
    /// Target Device Type: 1 = host-only coherent (HDM-H, Type-3).
    pub const HOST_ONLY: u32 = 1 << 12;
}

/// Offset of register `reg` (one of the `hdm::BASE_LO..=TARGET_HI` values) of decoder `n`.
pub fn decoder_reg(n: u32, reg: u64) -> u64 {
    reg + hdm::STRIDE * u64::from(n)
}

/// Number of decoders from the Decoder Count field (capability bits 3:0): 0 → 1, n → 2n up to
/// 8 → 16, then 9..=12 → 20, 24, 28, 32; reserved values give 0.
pub fn hdm_decoder_count(capability: u32) -> u32 {
    match capability & 0xf {
        0 => 1,
        n @ 1..=8 => 2 * n,
        n @ 9..=12 => 20 + 4 * (n - 9),
        _ => 0,
    }
}

/// Target Count field (capability bits 7:4).
pub fn hdm_target_count(capability: u32) -> u32 {
    (capability >> 4) & 0xf
}

/// Bytes of an HDM Decoder Capability structure with `decoders` decoders.
pub fn hdm_block_len(decoders: u32) -> u64 {
    0x10 + hdm::STRIDE * u64::from(decoders)
}

/// Control value that commits a host-only decoder: `IG | IW << 4 | Commit | host-only`.
pub fn commit_control(iw_enc: u8, ig_enc: u8) -> u32 {
    (u32::from(ig_enc) & ctrl::IG_MASK)
        | ((u32::from(iw_enc) << ctrl::IW_SHIFT) & ctrl::IW_MASK)
        | ctrl::COMMIT
        | ctrl::HOST_ONLY
}

/// Target list value for a port decoder: byte `i` = port number of way `i` (at most 8).
pub fn pack_target_list(ports: &[u8]) -> u64 {
    ports
        .iter()
        .take(8)
        .enumerate()
        .fold(0, |acc, (i, &p)| acc | (u64::from(p) << (8 * i)))
}

/// Interleave ways in the order of their encodings: `ways_to_enc`/`enc_to_ways` map 1, 2, 4, 8,
/// 16, 3, 6, 12 to 0, 1, 2, 3, 4, 8, 9, 10.
pub const VALID_WAYS: [u32; 8] = [1, 2, 4, 8, 16, 3, 6, 12];

/// Encoding of `ways` (1, 2, 4, 8, 16 → 0..=4; 3, 6, 12 → 8..=10).
pub fn ways_to_enc(ways: u32) -> Option<u8> {
    match ways {
        1 => Some(0),
        2 => Some(1),
        4 => Some(2),
        8 => Some(3),
        16 => Some(4),
        3 => Some(8),
        6 => Some(9),
        12 => Some(10),
        _ => None,
    }
}

/// Ways of an interleave-ways encoding.
pub fn enc_to_ways(enc: u8) -> Option<u32> {
    match enc {
        0..=4 => Some(1 << enc),
        8..=10 => Some(3 << (enc - 8)),
        _ => None,
    }
}

/// Encoding of a granularity in bytes (256 << n, n = 0..=6: 256 B .. 16 KiB).
pub fn gran_to_enc(gran: u64) -> Option<u8> {
    if !gran.is_power_of_two() || !(256..=16384).contains(&gran) {
        return None;
    }
    Some((gran.trailing_zeros() - 8) as u8)
}

/// Granularity in bytes of an encoding (0..=6).
pub fn enc_to_gran(enc: u8) -> Option<u64> {
    (enc <= 6).then(|| 256u64 << enc)
}

/// Factor between a host bridge decoder's granularity and the region granularity under a
/// window of `window_ways` host bridges: the window ways for 1, 2, 4, 8, 16, and their
/// power-of-2 part for 3, 6, 12 (the modulo-3 step leaves the address bits above the
/// granularity to the host bridges, so they use power-of-2 maths).
pub fn hb_gran_factor(window_ways: u32) -> Option<u32> {
    ways_to_enc(window_ways)?;
    Some(if window_ways.is_power_of_two() {
        window_ways
    } else {
        window_ways / 3
    })
}

/// Granularity a host bridge decoder needs for region granularity `region_gran` under a window
/// of `window_ways` host bridges; `None` when it has no encoding.
pub fn hb_granularity(region_gran: u64, window_ways: u32) -> Option<u64> {
    let g = region_gran.checked_mul(u64::from(hb_gran_factor(window_ways)?))?;
    gran_to_enc(g).map(|_| g)
}

/// Index in its host bridge's target list of the device at region position `position`, for a
/// window of `window_ways` host bridges with `hb_ways` devices each.
///
/// The host bridge decoder picks target `(HPA / hb_gran) mod hb_ways`, and the device at
/// position `p` owns the chunks `c = HPA / region_gran` with `c mod ways == p`; with
/// `hb_gran = region_gran * f` ([`hb_gran_factor`]) that target is `(p / f) mod hb_ways`. For
/// power-of-2 windows this is `p / window_ways`: the host bridge's devices in position order.
pub fn hb_target_index(position: u32, window_ways: u32, hb_ways: u32) -> Option<u32> {
    let f = hb_gran_factor(window_ways)?;
    if hb_ways == 0 {
        return None;
    }
    Some((position / f) % hb_ways)
}

/// Capability IDs of the CXL device register block.
pub mod dev_cap_id {
    /// Device Status.
    pub const DEVICE_STATUS: u16 = 0x0001;
    /// Primary Mailbox.
    pub const PRIMARY_MAILBOX: u16 = 0x0002;
    /// Secondary Mailbox.
    pub const SECONDARY_MAILBOX: u16 = 0x0003;
    /// Memory Device.
    pub const MEMORY_DEVICE: u16 = 0x4000;
}

/// Capabilities Count (bits 47:32) of the Device Capabilities Array register, if its
/// Capability ID (bits 15:0) is 0.
pub fn dev_cap_array_count(v: u64) -> Option<u16> {
    (v as u16 == 0).then_some((v >> 32) as u16)
}

/// Media Status (bits 3:2) of the Memory Device Status register: 0 not ready, 1 ready, 2 error,
/// 3 disabled.
pub fn media_status(memdev_status: u64) -> u8 {
    ((memdev_status >> 2) & 3) as u8
}

/// Mailbox Interfaces Ready (bit 4) of the Memory Device Status register.
pub fn mailbox_ready(memdev_status: u64) -> bool {
    memdev_status & (1 << 4) != 0
}

/// Mailbox registers (offsets from the mailbox capability).
pub mod mbox {
    /// Mailbox Capabilities (32 bit): payload size log2 in bits 4:0.
    pub const CAPS: u64 = 0x00;
    /// Mailbox Control (32 bit): doorbell in bit 0.
    pub const CONTROL: u64 = 0x04;
    /// Command (64 bit): opcode 15:0, payload length 36:16.
    pub const COMMAND: u64 = 0x08;
    /// Status (64 bit): return code 47:32.
    pub const STATUS: u64 = 0x10;
    /// Background Command Status (64 bit).
    pub const BG_STATUS: u64 = 0x18;
    /// Payload.
    pub const PAYLOAD: u64 = 0x20;
    /// Control bit 0: doorbell.
    pub const DOORBELL: u32 = 1;
    /// Smallest payload Linux accepts.
    pub const MIN_PAYLOAD: usize = 256;
}

/// Payload size in bytes from the Mailbox Capabilities register (2^bits 4:0).
pub fn mbox_payload_size(caps: u32) -> u64 {
    1u64 << (caps & 0x1f)
}

/// Command register value: opcode and payload length (21 bits).
pub fn mbox_command(opcode: u16, len: usize) -> u64 {
    u64::from(opcode) | (((len as u64) & 0x1f_ffff) << 16)
}

/// Payload length of a Command register value.
pub fn mbox_command_len(command: u64) -> usize {
    ((command >> 16) & 0x1f_ffff) as usize
}

/// Return code of a Status register value.
pub fn mbox_return_code(status: u64) -> u16 {
    (status >> 32) as u16
}

/// Mailbox opcodes.
pub mod opcode {
    /// Get Event Records (input: log type byte).
    pub const GET_EVENT_RECORDS: u16 = 0x0100;
    /// Clear Event Records.
    pub const CLEAR_EVENT_RECORDS: u16 = 0x0101;
    /// Get Event Interrupt Policy.
    pub const GET_EVENT_INTERRUPT_POLICY: u16 = 0x0102;
    /// Set Event Interrupt Policy.
    pub const SET_EVENT_INTERRUPT_POLICY: u16 = 0x0103;
    /// Get FW Info.
    pub const GET_FW_INFO: u16 = 0x0200;
    /// Get Timestamp.
    pub const GET_TIMESTAMP: u16 = 0x0300;
    /// Set Timestamp (input: u64 ns).
    pub const SET_TIMESTAMP: u16 = 0x0301;
    /// Get Supported Logs.
    pub const GET_SUPPORTED_LOGS: u16 = 0x0400;
    /// Get Log (input: UUID, offset u32, length u32).
    pub const GET_LOG: u16 = 0x0401;
    /// Identify Memory Device.
    pub const IDENTIFY: u16 = 0x4000;
    /// Get Partition Info.
    pub const GET_PARTITION_INFO: u16 = 0x4100;
    /// Get LSA (input: offset u32, length u32).
    pub const GET_LSA: u16 = 0x4102;
    /// Set LSA (input: offset u32, reserved u32, data).
    pub const SET_LSA: u16 = 0x4103;
    /// Get Health Info.
    pub const GET_HEALTH_INFO: u16 = 0x4200;
}

/// Mailbox return codes.
pub mod rc {
    /// Success.
    pub const SUCCESS: u16 = 0x00;
    /// Background command started.
    pub const BACKGROUND_STARTED: u16 = 0x01;
    /// Invalid input.
    pub const INVALID_INPUT: u16 = 0x02;
    /// Unsupported.
    pub const UNSUPPORTED: u16 = 0x03;
    /// Highest code the specification defines (and Linux can index).
    pub const MAX: u16 = 0x1e;
}

/// Command Effects Log UUID `0da9c0b5-bf41-4b78-8f79-96b1623b3f17`, in payload byte order
/// (big endian, as written).
pub const CEL_UUID: [u8; 16] = [
    0x0d, 0xa9, 0xc0, 0xb5, 0xbf, 0x41, 0x4b, 0x78, 0x8f, 0x79, 0x96, 0xb1, 0x62, 0x3b, 0x3f, 0x17,
];

/// Output sizes the probe expects.
pub mod out_len {
    /// Identify Memory Device (CXL 2.0 layout; 3.x adds 2 bytes).
    pub const IDENTIFY: usize = 0x43;
    /// Get Partition Info.
    pub const PARTITION_INFO: usize = 0x20;
    /// Get Health Info.
    pub const HEALTH_INFO: usize = 0x12;
    /// Get Event Records header.
    pub const EVENT_RECORDS: usize = 0x20;
    /// Get FW Info.
    pub const FW_INFO: usize = 0x50;
}

/// Little-endian u16 at `off`.
pub fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// Little-endian u32 at `off`.
pub fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// Little-endian u64 at `off`.
pub fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Size of the log `uuid` in a Get Supported Logs output (`u16 entries`, 6 reserved bytes,
/// then 20-byte entries `uuid[16], u32 size`); entries past the end of `out` are ignored.
pub fn find_log(out: &[u8], uuid: &[u8; 16]) -> Option<u32> {
    let entries = usize::from(le_u16(out, 0)?);
    (0..entries)
        .map(|i| 8 + 20 * i)
        .take_while(|&at| at + 20 <= out.len())
        .find(|&at| out[at..at + 16] == uuid[..])
        .and_then(|at| le_u32(out, at + 16))
}

/// Get Log input: `uuid`, offset, length.
pub fn get_log_input(uuid: &[u8; 16], offset: u32, length: u32) -> [u8; 0x18] {
    let mut input = [0u8; 0x18];
    input[..16].copy_from_slice(uuid);
    input[16..20].copy_from_slice(&offset.to_le_bytes());
    input[20..24].copy_from_slice(&length.to_le_bytes());
    input
}

/// Capacities and LSA size from an Identify Memory Device output (capacities in bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Identify {
    /// Total capacity.
    pub total: u64,
    /// Volatile-only capacity.
    pub volatile: u64,
    /// Persistent-only capacity.
    pub persistent: u64,
    /// Partition alignment (0: not partitionable).
    pub partition_align: u64,
    /// Label storage area size.
    pub lsa_size: u32,
}

/// Decodes an Identify Memory Device output (`None` when shorter than 0x43 bytes).
pub fn decode_identify(out: &[u8]) -> Option<Identify> {
    if out.len() < out_len::IDENTIFY {
        return None;
    }
    let units = |off| le_u64(out, off).map(|u| u.saturating_mul(UNIT));
    Some(Identify {
        total: units(0x10)?,
        volatile: units(0x18)?,
        persistent: units(0x20)?,
        partition_align: units(0x28)?,
        lsa_size: le_u32(out, 0x38)?,
    })
}

/// Record Count (u16 at 0x14) of a Get Event Records output.
pub fn event_record_count(out: &[u8]) -> Option<u16> {
    if out.len() < out_len::EVENT_RECORDS {
        return None;
    }
    le_u16(out, 0x14)
}

/// A host bridge entry's `port` field: root bus, root-port count, passthrough.
pub fn decode_hb_port(port: u64) -> (u8, u8, bool) {
    (port as u8, (port >> 8) as u8, (port >> 16) & 1 != 0)
}

/// A window entry's `flags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowFlags {
    /// Interleave-ways encoding (bits 3:0).
    pub ways_enc: u8,
    /// Granularity encoding (bits 7:4).
    pub gran_enc: u8,
    /// Arithmetic (bits 11:8): 0 modulo, 1 XOR.
    pub arithmetic: u8,
    /// Target count (bits 23:16).
    pub targets: u8,
}

/// Decodes a window entry's `flags`.
pub fn decode_window_flags(flags: u32) -> WindowFlags {
    WindowFlags {
        ways_enc: (flags & 0xf) as u8,
        gran_enc: ((flags >> 4) & 0xf) as u8,
        arithmetic: ((flags >> 8) & 0xf) as u8,
        targets: (flags >> 16) as u8,
    }
}

/// Problems with a region's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionError {
    /// Ways not in 1, 2, 3, 4, 6, 8, 12, 16.
    BadWays(usize),
    /// The window's own ways are invalid (or it has no target).
    BadWindowWays(usize),
    /// Ways not a multiple of the window's ways.
    NotMultiple {
        /// Region ways.
        ways: usize,
        /// Window ways.
        window_ways: usize,
    },
    /// Each host bridge would get a number of devices that no decoder can interleave (not a
    /// valid ways value, or more than 8 targets).
    BadHostBridgeWays(usize),
    /// The window names a host bridge twice.
    DuplicateTarget(u32),
    /// A device index that does not exist.
    UnknownDevice(u8),
    /// A device listed twice.
    DuplicateDevice(u8),
    /// The device at `position` is not below the window's host bridge for that position.
    WrongHostBridge {
        /// Region position.
        position: u8,
        /// Device index.
        device: u8,
        /// UID the position needs.
        expected: u32,
        /// UID of the device's host bridge.
        found: u32,
    },
    /// Two devices of one host bridge sit on the same root port.
    DuplicatePort {
        /// Host bridge UID.
        uid: u32,
        /// Port number.
        port: u8,
    },
    /// Two positions need the same target of a host bridge (a 3/6/12-way window whose host
    /// bridges get a multiple of 3 devices).
    TargetConflict {
        /// Host bridge UID.
        uid: u32,
    },
    /// Default order: the window's host bridges have different numbers of devices.
    Unbalanced {
        /// Host bridge UID.
        uid: u32,
        /// Its devices.
        count: usize,
        /// Devices of the first host bridge.
        expected: usize,
    },
    /// Default order: a host bridge of the window has no device.
    NoDevices(u32),
    /// The offset is not a multiple of 256 MiB.
    OffsetUnaligned(u64),
    /// The size is 0 or not a multiple of 256 MiB × ways.
    BadSize(u64),
    /// `offset + size` is beyond the window.
    OutOfWindow {
        /// Offset.
        offset: u64,
        /// Size.
        size: u64,
        /// Window size.
        window: u64,
    },
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadWays(w) => write!(f, "{w} devices: ways must be 1, 2, 3, 4, 6, 8, 12 or 16"),
            Self::BadWindowWays(w) => write!(f, "window has {w} targets: not a valid ways value"),
            Self::NotMultiple { ways, window_ways } => {
                write!(
                    f,
                    "{ways} ways is not a multiple of the window's {window_ways} ways"
                )
            }
            Self::BadHostBridgeWays(n) => {
                write!(
                    f,
                    "{n} devices per host bridge cannot be interleaved by its decoder"
                )
            }
            Self::DuplicateTarget(uid) => write!(f, "window names host bridge {uid} twice"),
            Self::UnknownDevice(d) => write!(f, "no device {d}"),
            Self::DuplicateDevice(d) => write!(f, "device {d} listed twice"),
            Self::WrongHostBridge {
                position,
                device,
                expected,
                found,
            } => write!(
                f,
                "position {position} needs host bridge {expected}, device {device} is below {found}"
            ),
            Self::DuplicatePort { uid, port } => {
                write!(f, "two devices on port {port} of host bridge {uid}")
            }
            Self::TargetConflict { uid } => {
                write!(f, "host bridge {uid}: two positions need the same target")
            }
            Self::Unbalanced {
                uid,
                count,
                expected,
            } => write!(
                f,
                "host bridge {uid} has {count} devices, the window's first host bridge {expected}"
            ),
            Self::NoDevices(uid) => write!(f, "host bridge {uid} has no device"),
            Self::OffsetUnaligned(o) => write!(f, "offset {o:#x} is not 256 MiB aligned"),
            Self::BadSize(s) => write!(
                f,
                "size {s:#x} is not a non-zero multiple of 256 MiB x ways"
            ),
            Self::OutOfWindow {
                offset,
                size,
                window,
            } => write!(
                f,
                "offset {offset:#x} + size {size:#x} is beyond the window size {window:#x}"
            ),
        }
    }
}

/// Most devices of a region.
pub const MAX_WAYS: usize = 16;
/// Most targets of a host bridge decoder (its two target list dwords).
pub const MAX_HB_TARGETS: usize = 8;

/// What region planning needs to know of a device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanDevice {
    /// UID of its host bridge.
    pub hb_uid: u32,
    /// Port number of its root port.
    pub port: u8,
}

/// The host bridge part of a region: what its decoder gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HbPlan {
    /// UID.
    pub uid: u32,
    /// Its position in the window's target list.
    pub slot: u8,
    /// Devices below it in the region (its decoder's ways).
    pub ways: u8,
    /// Target list: port number of target `i`.
    pub ports: [u8; MAX_HB_TARGETS],
    /// Device index of target `i`.
    pub devices: [u8; MAX_HB_TARGETS],
}

impl HbPlan {
    /// The target list ports (`ways` of them).
    pub fn ports(&self) -> &[u8] {
        &self.ports[..usize::from(self.ways)]
    }

    /// The devices in target-list order.
    pub fn devices(&self) -> &[u8] {
        &self.devices[..usize::from(self.ways)]
    }
}

/// A checked region layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionPlan {
    ways: u8,
    order: [u8; MAX_WAYS],
    hb_count: u8,
    hbs: [HbPlan; MAX_WAYS],
}

impl RegionPlan {
    /// Region ways (number of devices).
    pub fn ways(&self) -> u32 {
        u32::from(self.ways)
    }

    /// Device index of each position.
    pub fn order(&self) -> &[u8] {
        &self.order[..usize::from(self.ways)]
    }

    /// One entry per window target, in window target order.
    pub fn host_bridges(&self) -> &[HbPlan] {
        &self.hbs[..usize::from(self.hb_count)]
    }
}

fn check_window_targets(window_targets: &[u32]) -> Result<u32, RegionError> {
    let ww = window_targets.len();
    let ww32 = u32::try_from(ww).map_err(|_| RegionError::BadWindowWays(ww))?;
    ways_to_enc(ww32).ok_or(RegionError::BadWindowWays(ww))?;
    for (i, uid) in window_targets.iter().enumerate() {
        if window_targets[..i].contains(uid) {
            return Err(RegionError::DuplicateTarget(*uid));
        }
    }
    Ok(ww32)
}

/// The default device order of a region over a window with host bridges `window_targets` (UIDs
/// in window position order): every device below those host bridges, position `p` using host
/// bridge `window_targets[p % window_ways]` and, within a host bridge, its devices in port
/// order (ties by device index). Writes the device indices to `out`; returns the ways.
pub fn default_order(
    window_targets: &[u32],
    devices: &[PlanDevice],
    out: &mut [u8; MAX_WAYS],
) -> Result<usize, RegionError> {
    let ww = check_window_targets(window_targets)? as usize;
    let mut per_hb = 0;
    for (slot, &uid) in window_targets.iter().enumerate() {
        let count = devices.iter().filter(|d| d.hb_uid == uid).count();
        if count == 0 {
            return Err(RegionError::NoDevices(uid));
        }
        if slot == 0 {
            per_hb = count;
        } else if count != per_hb {
            return Err(RegionError::Unbalanced {
                uid,
                count,
                expected: per_hb,
            });
        }
    }
    let ways = ww * per_hb;
    if ways > MAX_WAYS {
        return Err(RegionError::BadWays(ways));
    }
    for (slot, &uid) in window_targets.iter().enumerate() {
        // The host bridge's devices sorted by (port, index): selection by rank.
        let mut taken = 0usize;
        let mut last: Option<(u8, usize)> = None;
        while taken < per_hb {
            let next = devices
                .iter()
                .enumerate()
                .filter(|(_, d)| d.hb_uid == uid)
                .map(|(i, d)| (d.port, i))
                .filter(|&key| last.is_none_or(|l| key > l))
                .min();
            let Some((_, index)) = next else { break };
            let index_u8 = u8::try_from(index).map_err(|_| RegionError::BadWays(devices.len()))?;
            out[slot + ww * taken] = index_u8;
            last = next;
            taken += 1;
        }
    }
    Ok(ways)
}

/// Checks a region of `order.len()` devices (device indices in position order) over a window
/// with host bridges `window_targets`, and works out each host bridge's decoder targets.
///
/// Rules: the ways are a valid value and a multiple of the window's ways; position `p`'s device
/// sits below host bridge `window_targets[p % window_ways]`; so each host bridge gets
/// `ways / window_ways` devices, a number its decoder can interleave (valid ways, at most 8), on
/// distinct ports. The target of position `p` in its host bridge's list is
/// [`hb_target_index`].
pub fn plan_region(
    window_targets: &[u32],
    devices: &[PlanDevice],
    order: &[u8],
) -> Result<RegionPlan, RegionError> {
    let ways = order.len();
    let ways32 = u32::try_from(ways).map_err(|_| RegionError::BadWays(ways))?;
    if ways > MAX_WAYS || ways_to_enc(ways32).is_none() {
        return Err(RegionError::BadWays(ways));
    }
    let ww = check_window_targets(window_targets)?;
    if ways32 % ww != 0 {
        return Err(RegionError::NotMultiple {
            ways,
            window_ways: ww as usize,
        });
    }
    let per_hb = ways32 / ww;
    if ways_to_enc(per_hb).is_none() || per_hb as usize > MAX_HB_TARGETS {
        return Err(RegionError::BadHostBridgeWays(per_hb as usize));
    }
    for (p, &d) in order.iter().enumerate() {
        let dev = devices
            .get(usize::from(d))
            .ok_or(RegionError::UnknownDevice(d))?;
        if order[..p].contains(&d) {
            return Err(RegionError::DuplicateDevice(d));
        }
        let expected = window_targets[p % ww as usize];
        if dev.hb_uid != expected {
            return Err(RegionError::WrongHostBridge {
                position: p as u8,
                device: d,
                expected,
                found: dev.hb_uid,
            });
        }
    }
    let mut plan = RegionPlan {
        ways: ways as u8,
        hb_count: ww as u8,
        ..RegionPlan::default()
    };
    plan.order[..ways].copy_from_slice(order);
    for (slot, &uid) in window_targets.iter().enumerate() {
        let hb = &mut plan.hbs[slot];
        hb.uid = uid;
        hb.slot = slot as u8;
        hb.ways = per_hb as u8;
        let mut filled = [false; MAX_HB_TARGETS];
        for p in (slot..ways).step_by(ww as usize) {
            let t = hb_target_index(p as u32, ww, per_hb)
                .ok_or(RegionError::BadWindowWays(ww as usize))? as usize;
            if filled[t] {
                return Err(RegionError::TargetConflict { uid });
            }
            filled[t] = true;
            let d = order[p];
            hb.ports[t] = devices[usize::from(d)].port;
            hb.devices[t] = d;
        }
        // `per_hb` positions went to distinct targets, so every target is filled.
        let ports = hb.ports();
        for (i, port) in ports.iter().enumerate() {
            if ports[..i].contains(port) {
                return Err(RegionError::DuplicatePort { uid, port: *port });
            }
        }
    }
    Ok(plan)
}

/// Checks a region's place in its window: `offset` 256 MiB aligned, `size` a non-zero multiple
/// of 256 MiB × `ways`, and `offset + size` inside a window of `window_size` bytes.
pub fn check_region_range(
    window_size: u64,
    offset: u64,
    size: u64,
    ways: u32,
) -> Result<(), RegionError> {
    if !offset.is_multiple_of(UNIT) {
        return Err(RegionError::OffsetUnaligned(offset));
    }
    let quantum = UNIT * u64::from(ways.max(1));
    if size == 0 || !size.is_multiple_of(quantum) {
        return Err(RegionError::BadSize(size));
    }
    if offset.checked_add(size).is_none_or(|end| end > window_size) {
        return Err(RegionError::OutOfWindow {
            offset,
            size,
            window: window_size,
        });
    }
    Ok(())
}

/// Offset of word `k` of `count` words spread over `size` bytes: one word in each of `count`
/// equal slices, at an offset inside the slice that moves with `k` (so that the words fall on
/// different devices of an interleave), 8-byte aligned. `size` must be at least `8 * count`.
pub fn spread_offset(k: u64, count: u64, size: u64) -> u64 {
    let slice = size / count.max(1);
    if slice < 8 {
        return (k * 8).min(size.saturating_sub(8));
    }
    (k * slice + (k * 0x1108) % slice) & !7
}

/// Value the region verifier writes at `hpa`.
pub fn verify_pattern(hpa: u64) -> u64 {
    0xc710_0000_0000_0000 | hpa
}
