//! The mailbox command set of a CXL Type-3 memory device.
//!
//! [`Mailbox::execute`] takes one command (opcode and input payload) and produces its return code
//! and output payload. It knows nothing about registers: [`crate::devregs`] moves the bytes between
//! the guest-visible payload registers and this module.
//!
//! Implemented commands (CXL r3.x, section 8.2.9; all multi-byte fields little endian):
//!
//! | Opcode | Command | Input | Output |
//! |---|---|---|---|
//! | 0x0100 | Get Event Records | 1 byte log type (0..=3) | 0x20-byte header, no records |
//! | 0x0101 | Clear Event Records | 6 + 2·n bytes | none |
//! | 0x0102 | Get Event Interrupt Policy | none | 4 bytes |
//! | 0x0103 | Set Event Interrupt Policy | 4 (or 5) bytes | none |
//! | 0x0200 | Get FW Info | none | 0x50 bytes |
//! | 0x0300 | Get Timestamp | none | 8 bytes |
//! | 0x0301 | Set Timestamp | 8 bytes | none |
//! | 0x0400 | Get Supported Logs | none | 0x1C bytes (one log: the CEL) |
//! | 0x0401 | Get Log | 0x18 bytes | `length` bytes of the log |
//! | 0x4000 | Identify Memory Device | none | 0x45 bytes |
//! | 0x4100 | Get Partition Info | none | 0x20 bytes |
//! | 0x4102 | Get LSA (only with an LSA) | 8 bytes | `length` bytes |
//! | 0x4103 | Set LSA (only with an LSA) | 8 + data bytes | none |
//! | 0x4200 | Get Health Info | none | 0x12 bytes |
//! | 0x4500 | Get Security State (only with persistent capacity) | none | 4 bytes: 0 |
//!
//! Every value in an input payload is guest controlled: lengths and offsets are checked with
//! checked arithmetic before anything is indexed, and the label storage area is only reached
//! through [`RamBacking`]'s own bounds-checked accessors after this module's own range check.

use std::sync::Arc;
use std::time::Instant;

use cxlvm_memory::RamBacking;

/// Capacity fields of Identify and Get Partition Info count in units of 256 MiB.
pub const CAPACITY_UNIT: u64 = 256 << 20;

/// UUID of the Command Effects Log, in the byte order it has in a payload (big endian, as
/// written: `0da9c0b5-bf41-4b78-8f79-96b1623b3f17`).
pub const CEL_UUID: [u8; 16] = [
    0x0d, 0xa9, 0xc0, 0xb5, 0xbf, 0x41, 0x4b, 0x78, 0x8f, 0x79, 0x96, 0xb1, 0x62, 0x3b, 0x3f, 0x17,
];

/// Mailbox opcodes (command set in bits 15:8, command in bits 7:0).
pub mod opcode {
    /// Get Event Records (Events command set 0x01, command 0x00).
    pub const GET_EVENT_RECORDS: u16 = 0x0100;
    /// Clear Event Records.
    pub const CLEAR_EVENT_RECORDS: u16 = 0x0101;
    /// Get Event Interrupt Policy.
    pub const GET_EVENT_INTERRUPT_POLICY: u16 = 0x0102;
    /// Set Event Interrupt Policy.
    pub const SET_EVENT_INTERRUPT_POLICY: u16 = 0x0103;
    /// Get FW Info (Firmware Update command set 0x02).
    pub const GET_FW_INFO: u16 = 0x0200;
    /// Get Timestamp (Timestamp command set 0x03).
    pub const GET_TIMESTAMP: u16 = 0x0300;
    /// Set Timestamp.
    pub const SET_TIMESTAMP: u16 = 0x0301;
    /// Get Supported Logs (Logs command set 0x04).
    pub const GET_SUPPORTED_LOGS: u16 = 0x0400;
    /// Get Log.
    pub const GET_LOG: u16 = 0x0401;
    /// Identify Memory Device (Identify command set 0x40).
    pub const IDENTIFY_MEMORY_DEVICE: u16 = 0x4000;
    /// Get Partition Info (Capacity Configuration and Label Storage command set 0x41).
    pub const GET_PARTITION_INFO: u16 = 0x4100;
    /// Get LSA: read the label storage area.
    pub const GET_LSA: u16 = 0x4102;
    /// Set LSA: write the label storage area.
    pub const SET_LSA: u16 = 0x4103;
    /// Get Health Info (Health Info and Alerts command set 0x42).
    pub const GET_HEALTH_INFO: u16 = 0x4200;
    /// Get Security State (Persistent Memory Data-at-rest Security command set 0x45).
    pub const GET_SECURITY_STATE: u16 = 0x4500;
}

/// Command Effects Log entry effect bits (CXL r3.x, Command Effects Log entry "Command Effect").
pub mod effects {
    /// Bit 0: configuration change after cold reset.
    pub const CONFIG_CHANGE_AFTER_COLD_RESET: u16 = 1 << 0;
    /// Bit 1: immediate configuration change.
    pub const IMMEDIATE_CONFIG_CHANGE: u16 = 1 << 1;
    /// Bit 2: immediate data change.
    pub const IMMEDIATE_DATA_CHANGE: u16 = 1 << 2;
    /// Bit 3: immediate policy change.
    pub const IMMEDIATE_POLICY_CHANGE: u16 = 1 << 3;
    /// Bit 4: immediate log change.
    pub const IMMEDIATE_LOG_CHANGE: u16 = 1 << 4;
    /// Bit 5: security state change.
    pub const SECURITY_STATE_CHANGE: u16 = 1 << 5;
    /// Bit 6: the command runs as a background operation.
    pub const BACKGROUND_OPERATION: u16 = 1 << 6;
}

/// Mailbox command return codes, CXL r3.x "Command Return Codes" table (r3.0/r3.1 Table 8-34).
///
/// The values are the ones the spec assigns; the highest is 0x1E. Linux indexes a fixed table with
/// the code it reads, so nothing above [`ReturnCode::InvalidExtentList`] is ever produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReturnCode {
    /// 0x00 Success: the command completed.
    Success = 0x00,
    /// 0x01 Background Command Started (never produced: this device has no background commands).
    BackgroundStarted = 0x01,
    /// 0x02 Invalid Input: a field of the input payload is invalid or out of range.
    InvalidInput = 0x02,
    /// 0x03 Unsupported: the opcode is not implemented (or not on this device).
    Unsupported = 0x03,
    /// 0x04 Internal Error.
    InternalError = 0x04,
    /// 0x05 Retry Required.
    Retry = 0x05,
    /// 0x06 Busy: a background operation is running.
    Busy = 0x06,
    /// 0x07 Media Disabled.
    MediaDisabled = 0x07,
    /// 0x08 FW Transfer in Progress.
    FwTransferInProgress = 0x08,
    /// 0x09 FW Transfer Out of Order.
    FwTransferOutOfOrder = 0x09,
    /// 0x0A FW Verification (authentication) Failed.
    FwVerificationFailed = 0x0A,
    /// 0x0B Invalid Slot.
    InvalidSlot = 0x0B,
    /// 0x0C Activation Failed, FW Rolled Back.
    ActivationFailedRolledBack = 0x0C,
    /// 0x0D Activation Failed, Cold Reset Required.
    ActivationFailedColdReset = 0x0D,
    /// 0x0E Invalid Handle: an event record handle does not name a record.
    InvalidHandle = 0x0E,
    /// 0x0F Invalid Physical Address.
    InvalidPhysicalAddress = 0x0F,
    /// 0x10 Inject Poison Limit Reached.
    InjectPoisonLimitReached = 0x10,
    /// 0x11 Permanent Media Failure.
    PermanentMediaFailure = 0x11,
    /// 0x12 Aborted.
    Aborted = 0x12,
    /// 0x13 Invalid Security State.
    InvalidSecurityState = 0x13,
    /// 0x14 Incorrect Passphrase.
    IncorrectPassphrase = 0x14,
    /// 0x15 Unsupported Mailbox or CCI.
    UnsupportedMailbox = 0x15,
    /// 0x16 Invalid Payload Length: the input payload length is wrong for the command.
    InvalidPayloadLength = 0x16,
    /// 0x17 Invalid Log: the log UUID is not one this device supports.
    InvalidLog = 0x17,
    /// 0x18 Interrupted.
    Interrupted = 0x18,
    /// 0x19 Unsupported Feature Version.
    UnsupportedFeatureVersion = 0x19,
    /// 0x1A Unsupported Feature Selection Value.
    UnsupportedFeatureSelectionValue = 0x1A,
    /// 0x1B Feature Transfer in Progress.
    FeatureTransferInProgress = 0x1B,
    /// 0x1C Feature Transfer Out of Order.
    FeatureTransferOutOfOrder = 0x1C,
    /// 0x1D Resources Exhausted.
    ResourcesExhausted = 0x1D,
    /// 0x1E Invalid Extent List.
    InvalidExtentList = 0x1E,
}

impl ReturnCode {
    /// The numeric code as it appears in the mailbox Status register (bits 47:32).
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// Static description of the memory device behind a [`Mailbox`].
#[derive(Clone, Debug)]
pub struct MemdevParams {
    /// Volatile capacity in bytes (reported rounded down to 256 MiB units).
    pub volatile_bytes: u64,
    /// Persistent capacity in bytes (reported rounded down to 256 MiB units).
    pub persistent_bytes: u64,
    /// Label storage area of a persistent device; `None` disables Get/Set LSA. LSA sizes above
    /// `u32::MAX` are reported (and bounded) as `u32::MAX`.
    pub lsa: Option<Arc<RamBacking>>,
    /// Firmware revision reported by Identify and Get FW Info: up to 16 ASCII bytes (longer
    /// strings are cut, non-ASCII bytes become `?`).
    pub fw_revision: String,
    /// Device serial number (the PCIe Device Serial Number capability reports it; kept here so
    /// the device model has one source).
    pub serial: u64,
}

/// Output length of Get Supported Logs with one entry.
const GSL_OUT_LEN: usize = 8 + 20;
/// Input length of Get Log.
const GET_LOG_IN_LEN: usize = 0x18;
/// Output length of Identify Memory Device (r3.x layout with the DC event log size at 0x43).
const IDENTIFY_OUT_LEN: usize = 0x45;
/// Output length of Get Partition Info.
const PARTITION_INFO_OUT_LEN: usize = 0x20;
/// Output length of Get Health Info.
const HEALTH_INFO_OUT_LEN: usize = 0x12;
/// Output length of Get FW Info.
const FW_INFO_OUT_LEN: usize = 0x50;
/// Output header length of Get Event Records.
const EVENT_RECORDS_HDR_LEN: usize = 0x20;
/// Fixed part of the Clear Event Records input.
const CLEAR_EVENTS_HDR_LEN: usize = 6;
/// Number of records each event log can hold, as reported by Identify.
const EVENT_LOG_CAPACITY: u16 = 8;
/// Highest event log type accepted (0 info, 1 warning, 2 failure, 3 fatal; 4 would be DCD).
const MAX_EVENT_LOG: u8 = 3;
/// Event interrupt mode value 3 is reserved.
const EVENT_INT_MODE_RESERVED: u8 = 3;

type CmdResult = Result<Vec<u8>, ReturnCode>;

/// Mailbox command state of one Type-3 memory device.
#[derive(Debug)]
pub struct Mailbox {
    params: MemdevParams,
    fw_revision: [u8; 16],
    lsa_size: u32,
    cel: Vec<u8>,
    timestamp_base: u64,
    timestamp_set_at: Instant,
    event_policy: [u8; 4],
}

impl Mailbox {
    /// Creates the command state for a device described by `params`.
    pub fn new(params: MemdevParams) -> Self {
        let mut fw_revision = [0u8; 16];
        for (dst, src) in fw_revision.iter_mut().zip(params.fw_revision.bytes()) {
            *dst = if src.is_ascii() { src } else { b'?' };
        }
        let lsa_size = params
            .lsa
            .as_ref()
            .map_or(0, |b| u32::try_from(b.size()).unwrap_or(u32::MAX));
        let mut mailbox = Self {
            params,
            fw_revision,
            lsa_size,
            cel: Vec::new(),
            timestamp_base: 0,
            timestamp_set_at: Instant::now(),
            event_policy: [0; 4],
        };
        mailbox.cel = mailbox
            .commands()
            .into_iter()
            .flat_map(|(op, eff)| {
                let mut entry = [0u8; 4];
                entry[..2].copy_from_slice(&op.to_le_bytes());
                entry[2..].copy_from_slice(&eff.to_le_bytes());
                entry
            })
            .collect();
        mailbox
    }

    /// Returns the command state to its power-on values: the timestamp restarts from 0 and the
    /// event interrupt policy is cleared. The label storage area keeps its contents.
    pub fn reset(&mut self) {
        self.timestamp_base = 0;
        self.timestamp_set_at = Instant::now();
        self.event_policy = [0; 4];
    }

    /// The parameters the device was created with.
    pub fn params(&self) -> &MemdevParams {
        &self.params
    }

    /// Size in bytes of the label storage area as reported by Identify (0 without one).
    pub fn lsa_size(&self) -> u32 {
        self.lsa_size
    }

    /// The Command Effects Log: one `{u16 opcode, u16 effects}` entry per implemented command.
    pub fn cel(&self) -> &[u8] {
        &self.cel
    }

    /// The implemented commands and their CEL effect bits, in ascending opcode order.
    fn commands(&self) -> Vec<(u16, u16)> {
        use effects::*;
        let mut cmds = vec![
            (opcode::GET_EVENT_RECORDS, 0),
            (opcode::CLEAR_EVENT_RECORDS, IMMEDIATE_LOG_CHANGE),
            (opcode::GET_EVENT_INTERRUPT_POLICY, 0),
            (opcode::SET_EVENT_INTERRUPT_POLICY, IMMEDIATE_CONFIG_CHANGE),
            (opcode::GET_FW_INFO, 0),
            (opcode::GET_TIMESTAMP, 0),
            (opcode::SET_TIMESTAMP, IMMEDIATE_POLICY_CHANGE),
            (opcode::GET_SUPPORTED_LOGS, 0),
            (opcode::GET_LOG, 0),
            (opcode::IDENTIFY_MEMORY_DEVICE, 0),
            (opcode::GET_PARTITION_INFO, 0),
        ];
        if self.params.lsa.is_some() {
            cmds.push((opcode::GET_LSA, 0));
            cmds.push((
                opcode::SET_LSA,
                IMMEDIATE_CONFIG_CHANGE | IMMEDIATE_DATA_CHANGE,
            ));
        }
        cmds.push((opcode::GET_HEALTH_INFO, 0));
        if self.params.persistent_bytes > 0 {
            cmds.push((opcode::GET_SECURITY_STATE, 0));
        }
        cmds
    }

    /// Runs one command.
    ///
    /// `input` is the input payload (exactly the length the host put in the Command register) and
    /// `max_output` the mailbox payload size. The output is never longer than `max_output`: a
    /// fixed-size output that does not fit gives `InternalError` (it cannot happen with a
    /// spec-sized payload of at least 256 bytes); variable-size reads longer than `max_output`
    /// are rejected with `InvalidInput`. Any code other than `Success` comes with an empty output.
    pub fn execute(
        &mut self,
        opcode: u16,
        input: &[u8],
        max_output: usize,
    ) -> (ReturnCode, Vec<u8>) {
        let result = match opcode {
            opcode::GET_EVENT_RECORDS => self.get_event_records(input),
            opcode::CLEAR_EVENT_RECORDS => self.clear_event_records(input),
            opcode::GET_EVENT_INTERRUPT_POLICY => {
                expect_len(input, 0).map(|()| self.event_policy.to_vec())
            }
            opcode::SET_EVENT_INTERRUPT_POLICY => self.set_event_policy(input),
            opcode::GET_FW_INFO => expect_len(input, 0).map(|()| self.fw_info()),
            opcode::GET_TIMESTAMP => {
                expect_len(input, 0).map(|()| self.timestamp().to_le_bytes().to_vec())
            }
            opcode::SET_TIMESTAMP => self.set_timestamp(input),
            opcode::GET_SUPPORTED_LOGS => expect_len(input, 0).map(|()| self.supported_logs()),
            opcode::GET_LOG => self.get_log(input, max_output),
            opcode::IDENTIFY_MEMORY_DEVICE => expect_len(input, 0).map(|()| self.identify()),
            opcode::GET_PARTITION_INFO => expect_len(input, 0).map(|()| self.partition_info()),
            opcode::GET_LSA => self.get_lsa(input, max_output),
            opcode::SET_LSA => self.set_lsa(input),
            opcode::GET_HEALTH_INFO => expect_len(input, 0).map(|()| health_info()),
            opcode::GET_SECURITY_STATE if self.params.persistent_bytes > 0 => {
                expect_len(input, 0).map(|()| security_state())
            }
            _ => Err(ReturnCode::Unsupported),
        };
        match result {
            Ok(out) if out.len() <= max_output => (ReturnCode::Success, out),
            Ok(out) => {
                tracing::warn!(
                    opcode,
                    len = out.len(),
                    max_output,
                    "cxl mailbox: output does not fit the payload"
                );
                (ReturnCode::InternalError, Vec::new())
            }
            Err(rc) => {
                tracing::debug!(
                    opcode,
                    in_len = input.len(),
                    ?rc,
                    "cxl mailbox: command failed"
                );
                (rc, Vec::new())
            }
        }
    }

    fn capacity_units(bytes: u64) -> u64 {
        bytes / CAPACITY_UNIT
    }

    fn timestamp(&self) -> u64 {
        let elapsed = u64::try_from(self.timestamp_set_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.timestamp_base.saturating_add(elapsed)
    }

    fn set_timestamp(&mut self, input: &[u8]) -> CmdResult {
        expect_len(input, 8)?;
        self.timestamp_base = le_u64(input, 0).ok_or(ReturnCode::InvalidPayloadLength)?;
        self.timestamp_set_at = Instant::now();
        Ok(Vec::new())
    }

    /// Get Supported Logs: entry count u16 @0, 6 reserved bytes, then `{uuid[16], u32 size}`.
    fn supported_logs(&self) -> Vec<u8> {
        let mut out = vec![0u8; GSL_OUT_LEN];
        put(&mut out, 0, &1u16.to_le_bytes());
        put(&mut out, 8, &CEL_UUID);
        let size = u32::try_from(self.cel.len()).unwrap_or(u32::MAX);
        put(&mut out, 24, &size.to_le_bytes());
        out
    }

    /// Get Log: `uuid[16]`, offset u32 @0x10, length u32 @0x14.
    fn get_log(&self, input: &[u8], max_output: usize) -> CmdResult {
        expect_len(input, GET_LOG_IN_LEN)?;
        if input.get(..16) != Some(&CEL_UUID[..]) {
            return Err(ReturnCode::InvalidLog);
        }
        let offset = le_u32(input, 0x10).ok_or(ReturnCode::InvalidPayloadLength)?;
        let length = le_u32(input, 0x14).ok_or(ReturnCode::InvalidPayloadLength)?;
        let offset = usize::try_from(offset).map_err(|_| ReturnCode::InvalidInput)?;
        let length = usize::try_from(length).map_err(|_| ReturnCode::InvalidInput)?;
        if length > max_output {
            return Err(ReturnCode::InvalidInput);
        }
        let end = offset.checked_add(length).ok_or(ReturnCode::InvalidInput)?;
        self.cel
            .get(offset..end)
            .map(<[u8]>::to_vec)
            .ok_or(ReturnCode::InvalidInput)
    }

    /// Identify Memory Device output (r3.x layout, 0x45 bytes).
    fn identify(&self) -> Vec<u8> {
        let volatile = Self::capacity_units(self.params.volatile_bytes);
        let persistent = Self::capacity_units(self.params.persistent_bytes);
        let mut out = vec![0u8; IDENTIFY_OUT_LEN];
        put(&mut out, 0x00, &self.fw_revision);
        put(
            &mut out,
            0x10,
            &volatile.saturating_add(persistent).to_le_bytes(),
        );
        put(&mut out, 0x18, &volatile.to_le_bytes());
        put(&mut out, 0x20, &persistent.to_le_bytes());
        // 0x28 partition alignment 0: not partitionable, so Linux sends no Get Partition Info.
        for log in 0..4 {
            put(&mut out, 0x30 + 2 * log, &EVENT_LOG_CAPACITY.to_le_bytes());
        }
        put(&mut out, 0x38, &self.lsa_size.to_le_bytes());
        // 0x3C poison list max records (u24), 0x3F inject poison limit (u16), 0x41 poison
        // handling caps, 0x42 QoS telemetry caps, 0x43 dynamic capacity event log size: all 0.
        out
    }

    /// Get Partition Info: active volatile @0, active persistent @8, next volatile @0x10, next
    /// persistent @0x18 (256 MiB units). Next values are 0: no partition change is pending.
    fn partition_info(&self) -> Vec<u8> {
        let mut out = vec![0u8; PARTITION_INFO_OUT_LEN];
        put(
            &mut out,
            0x00,
            &Self::capacity_units(self.params.volatile_bytes).to_le_bytes(),
        );
        put(
            &mut out,
            0x08,
            &Self::capacity_units(self.params.persistent_bytes).to_le_bytes(),
        );
        out
    }

    /// Get FW Info: slots supported @0, slot info @1 (active slot in bits 2:0, staged slot in
    /// bits 5:3), activation caps @2, 13 reserved bytes, four 16-byte slot revisions @0x10.
    fn fw_info(&self) -> Vec<u8> {
        let mut out = vec![0u8; FW_INFO_OUT_LEN];
        out[0x00] = 1;
        out[0x01] = 1;
        put(&mut out, 0x10, &self.fw_revision);
        out
    }

    fn get_event_records(&self, input: &[u8]) -> CmdResult {
        expect_len(input, 1)?;
        check_event_log(input[0])?;
        // Flags 0, overflow count 0, overflow timestamps 0, record count (u16 @0x14) 0.
        Ok(vec![0u8; EVENT_RECORDS_HDR_LEN])
    }

    /// Clear Event Records: log u8 @0, flags u8 @1 (bit 0 clear all), handle count u8 @2,
    /// 3 reserved bytes, then `count` u16 handles.
    fn clear_event_records(&self, input: &[u8]) -> CmdResult {
        let count = *input.get(2).ok_or(ReturnCode::InvalidPayloadLength)?;
        expect_len(input, CLEAR_EVENTS_HDR_LEN + 2 * usize::from(count))?;
        check_event_log(input[0])?;
        let clear_all = input[1] & 1 != 0;
        match (clear_all, count) {
            (_, 0) => Ok(Vec::new()),
            (true, _) => Err(ReturnCode::InvalidInput),
            // The logs are always empty, so no handle can name a record.
            (false, _) => Err(ReturnCode::InvalidHandle),
        }
    }

    /// Set Event Interrupt Policy: info, warning, failure, fatal settings (mode in bits 1:0,
    /// message number in bits 7:4), optionally a fifth byte for the DCD log, which this device
    /// does not have and ignores. Reserved mode 3 is rejected.
    fn set_event_policy(&mut self, input: &[u8]) -> CmdResult {
        if !(4..=5).contains(&input.len()) {
            return Err(ReturnCode::InvalidPayloadLength);
        }
        let mut policy = [0u8; 4];
        policy.copy_from_slice(&input[..4]);
        if policy.iter().any(|s| s & 0x3 == EVENT_INT_MODE_RESERVED) {
            return Err(ReturnCode::InvalidInput);
        }
        self.event_policy = policy;
        Ok(Vec::new())
    }

    fn lsa(&self) -> Result<&Arc<RamBacking>, ReturnCode> {
        self.params.lsa.as_ref().ok_or(ReturnCode::Unsupported)
    }

    /// Checks `offset..offset+len` against the LSA size; returns the offset as u64.
    fn lsa_range(&self, offset: u32, len: usize) -> Result<u64, ReturnCode> {
        let len = u64::try_from(len).map_err(|_| ReturnCode::InvalidInput)?;
        let end = u64::from(offset)
            .checked_add(len)
            .ok_or(ReturnCode::InvalidInput)?;
        if end > u64::from(self.lsa_size) {
            return Err(ReturnCode::InvalidInput);
        }
        Ok(u64::from(offset))
    }

    /// Get LSA: offset u32 @0, length u32 @4.
    fn get_lsa(&self, input: &[u8], max_output: usize) -> CmdResult {
        let lsa = self.lsa()?;
        expect_len(input, 8)?;
        let offset = le_u32(input, 0).ok_or(ReturnCode::InvalidPayloadLength)?;
        let length = le_u32(input, 4).ok_or(ReturnCode::InvalidPayloadLength)?;
        let length = usize::try_from(length).map_err(|_| ReturnCode::InvalidInput)?;
        if length > max_output {
            return Err(ReturnCode::InvalidInput);
        }
        let at = self.lsa_range(offset, length)?;
        let mut out = vec![0u8; length];
        lsa.read(at, &mut out).map_err(|e| {
            tracing::error!(%e, "cxl mailbox: LSA read failed");
            ReturnCode::InternalError
        })?;
        Ok(out)
    }

    /// Set LSA: offset u32 @0, reserved u32 @4, data from @8.
    fn set_lsa(&self, input: &[u8]) -> CmdResult {
        let lsa = self.lsa()?;
        let data = input.get(8..).ok_or(ReturnCode::InvalidPayloadLength)?;
        let offset = le_u32(input, 0).ok_or(ReturnCode::InvalidPayloadLength)?;
        let at = self.lsa_range(offset, data.len())?;
        lsa.write(at, data).map_err(|e| {
            tracing::error!(%e, "cxl mailbox: LSA write failed");
            ReturnCode::InternalError
        })?;
        Ok(Vec::new())
    }
}

/// Get Health Info (0x12 bytes): health status u8 @0, media status u8 @1 (0 normal), additional
/// status u8 @2, life used u8 @3 (percent), temperature u16 @4 (0xFFFF: not reported), dirty
/// shutdown count u32 @6, corrected volatile errors u32 @0xA, corrected persistent errors u32 @0xE.
fn health_info() -> Vec<u8> {
    let mut out = vec![0u8; HEALTH_INFO_OUT_LEN];
    put(&mut out, 0x04, &u16::MAX.to_le_bytes());
    out
}

/// Get Security State (4 bytes): bit 0 user passphrase set, 1 master passphrase set, 2 locked,
/// 3 frozen, 4/5 user/master passphrase attempt limit reached. cxlvm's devices have no
/// passphrases (Set Passphrase is not implemented), so the state is always 0: unlocked, and to
/// Linux "security disabled".
fn security_state() -> Vec<u8> {
    0u32.to_le_bytes().to_vec()
}

fn check_event_log(log: u8) -> Result<(), ReturnCode> {
    if log > MAX_EVENT_LOG {
        return Err(ReturnCode::InvalidInput);
    }
    Ok(())
}

fn expect_len(input: &[u8], len: usize) -> Result<(), ReturnCode> {
    if input.len() != len {
        return Err(ReturnCode::InvalidPayloadLength);
    }
    Ok(())
}

/// Copies `bytes` into `out` at `at` (offsets are constants within fixed-size outputs).
fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = at
        .checked_add(bytes.len())
        .and_then(|end| out.get_mut(at..end))
    {
        dst.copy_from_slice(bytes);
    }
}

fn le_u32(input: &[u8], at: usize) -> Option<u32> {
    let bytes = input.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn le_u64(input: &[u8], at: usize) -> Option<u64> {
    let bytes = input.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(lsa: Option<Arc<RamBacking>>) -> Mailbox {
        Mailbox::new(MemdevParams {
            volatile_bytes: 4 << 30,
            persistent_bytes: 0,
            lsa,
            fw_revision: "cxlvm 0.1".into(),
            serial: 7,
        })
    }

    #[test]
    fn return_codes_match_the_spec_table() {
        assert_eq!(ReturnCode::Success.code(), 0);
        assert_eq!(ReturnCode::Unsupported.code(), 3);
        assert_eq!(ReturnCode::InvalidHandle.code(), 0x0E);
        assert_eq!(ReturnCode::InvalidPayloadLength.code(), 0x16);
        assert_eq!(ReturnCode::InvalidLog.code(), 0x17);
        assert_eq!(ReturnCode::InvalidExtentList.code(), 0x1E);
    }

    #[test]
    fn cel_omits_lsa_commands_without_an_lsa() {
        let mb = mailbox(None);
        let ops: Vec<u16> = mb
            .cel()
            .chunks_exact(4)
            .map(|e| u16::from_le_bytes([e[0], e[1]]))
            .collect();
        assert!(!ops.contains(&opcode::GET_LSA));
        assert!(!ops.contains(&opcode::SET_LSA));
        assert_eq!(ops.len(), 12);
        let lsa = RamBacking::memfd("lsa", 4096).unwrap();
        assert_eq!(mailbox(Some(lsa)).cel().len(), 14 * 4);
    }

    #[test]
    fn security_state_is_offered_with_persistent_capacity_only() {
        let ops = |mb: &Mailbox| -> Vec<u16> {
            mb.cel()
                .chunks_exact(4)
                .map(|e| u16::from_le_bytes([e[0], e[1]]))
                .collect()
        };
        let mut volatile = mailbox(None);
        assert!(!ops(&volatile).contains(&opcode::GET_SECURITY_STATE));
        let (rc, _) = volatile.execute(opcode::GET_SECURITY_STATE, &[], 2048);
        assert_eq!(rc, ReturnCode::Unsupported);
        let mut persistent = Mailbox::new(MemdevParams {
            volatile_bytes: 0,
            persistent_bytes: 256 << 20,
            lsa: Some(RamBacking::memfd("lsa", 4096).unwrap()),
            fw_revision: "cxlvm 0.1".into(),
            serial: 8,
        });
        assert!(ops(&persistent).contains(&opcode::GET_SECURITY_STATE));
        let (rc, out) = persistent.execute(opcode::GET_SECURITY_STATE, &[], 2048);
        assert_eq!(rc, ReturnCode::Success);
        assert_eq!(out, [0, 0, 0, 0], "no passphrase, unlocked, not frozen");
        let (rc, _) = persistent.execute(opcode::GET_SECURITY_STATE, &[1], 2048);
        assert_eq!(rc, ReturnCode::InvalidPayloadLength);
    }

    #[test]
    fn fixed_output_larger_than_payload_is_internal_error() {
        let mut mb = mailbox(None);
        let (rc, out) = mb.execute(opcode::IDENTIFY_MEMORY_DEVICE, &[], 0x10);
        assert_eq!(rc, ReturnCode::InternalError);
        assert!(out.is_empty());
    }

    #[test]
    fn odd_fw_revision_is_cut_and_sanitised() {
        let mut mb = Mailbox::new(MemdevParams {
            volatile_bytes: 0,
            persistent_bytes: 0,
            lsa: None,
            fw_revision: "é-0123456789abcdefXYZ".into(),
            serial: 0,
        });
        let (rc, out) = mb.execute(opcode::IDENTIFY_MEMORY_DEVICE, &[], 2048);
        assert_eq!(rc, ReturnCode::Success);
        assert_eq!(&out[..16], b"??-0123456789abc");
    }

    #[test]
    fn reset_clears_policy_and_timestamp() {
        let mut mb = mailbox(None);
        let ts = 1_000_000_000_000u64.to_le_bytes();
        assert_eq!(
            mb.execute(opcode::SET_TIMESTAMP, &ts, 2048).0,
            ReturnCode::Success
        );
        let policy = [0x11, 0x21, 0x31, 0x41];
        assert_eq!(
            mb.execute(opcode::SET_EVENT_INTERRUPT_POLICY, &policy, 2048)
                .0,
            ReturnCode::Success
        );
        mb.reset();
        let (_, out) = mb.execute(opcode::GET_EVENT_INTERRUPT_POLICY, &[], 2048);
        assert_eq!(out, [0; 4]);
        let (_, out) = mb.execute(opcode::GET_TIMESTAMP, &[], 2048);
        assert!(u64::from_le_bytes(out.try_into().unwrap()) < 1_000_000_000_000);
    }
}
