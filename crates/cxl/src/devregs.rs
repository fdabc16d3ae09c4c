//! The CXL device register block of a Type-3 memory device (Register Locator block id 3).
//!
//! Layout of the [`DeviceRegs::SIZE`]-byte block (every structure 8-byte aligned, none overlap):
//!
//! | Offset | Length | Content |
//! |---|---|---|
//! | 0x000 | 0x10 | Device Capabilities Array register: cap id 0, version 1, count 3 |
//! | 0x010 | 0x10 | Capability header: 0x0001 Device Status, version 2 |
//! | 0x020 | 0x10 | Capability header: 0x0002 Primary Mailbox, version 1 |
//! | 0x030 | 0x10 | Capability header: 0x4000 Memory Device, version 1 |
//! | [`STATUS_OFFSET`] | [`STATUS_LEN`] | Event Status register (64-bit, always 0: logs are empty) |
//! | [`MAILBOX_OFFSET`] | [`MAILBOX_LEN`] | Primary mailbox registers and the 2 KiB payload |
//! | [`MEMDEV_OFFSET`] | [`MEMDEV_LEN`] | Memory Device Status (64-bit): media ready, mailbox ready |
//!
//! Each capability header is `dword0 = id | version << 16`, `dword1` = offset of the structure
//! from the start of the block, `dword2` = its length, `dword3` reserved.
//!
//! Mailbox registers, relative to [`MAILBOX_OFFSET`]:
//!
//! | Off | Width | Register |
//! |---|---|---|
//! | 0x00 | 32 | Capabilities: payload size log2 (bits 4:0) = 11, no interrupts |
//! | 0x04 | 32 | Control: bit 0 doorbell (other bits reserved: no interrupt capability) |
//! | 0x08 | 64 | Command: opcode (15:0), payload length (36:16) |
//! | 0x10 | 64 | Status: return code (47:32); background operation bit always 0 |
//! | 0x18 | 64 | Background Command Status (always 0: no background commands) |
//! | 0x20 | 2048 | Payload |
//!
//! Protocol: a write that sets the doorbell runs the command synchronously before the write
//! returns. The input is `payload[..length]` (a length above the payload size fails with Invalid
//! Payload Length); the output is copied to the start of the payload, Command's length field
//! becomes the output length, Status gets the return code and the doorbell reads back clear.
//!
//! Accesses may have any size and any offset, including ones that straddle registers: each byte
//! is served on its own (little endian), so a byte of a register reads as the same byte of an
//! aligned 64-bit read. Unimplemented offsets and bytes past the block read 0 and ignore writes.

use crate::mailbox::{Mailbox, ReturnCode};

/// Capability ID of the Device Status capability.
pub const CAP_ID_DEVICE_STATUS: u16 = 0x0001;
/// Capability ID of the Primary Mailbox capability.
pub const CAP_ID_PRIMARY_MAILBOX: u16 = 0x0002;
/// Capability ID of the Memory Device capability.
pub const CAP_ID_MEMORY_DEVICE: u16 = 0x4000;

/// Offset of the Device Status capability structure.
pub const STATUS_OFFSET: u64 = 0x100;
/// Length of the Device Status capability structure (the 64-bit Event Status register).
pub const STATUS_LEN: u64 = 0x8;
/// Offset of the Primary Mailbox capability structure.
pub const MAILBOX_OFFSET: u64 = 0x200;
/// Offset of the payload inside the mailbox structure.
pub const PAYLOAD_REG: u64 = 0x20;
/// log2 of the mailbox payload size.
pub const PAYLOAD_SIZE_LOG2: u32 = 11;
/// Mailbox payload size in bytes (2 KiB).
pub const PAYLOAD_SIZE: usize = 1 << PAYLOAD_SIZE_LOG2;
/// Length of the Primary Mailbox capability structure (registers + payload).
pub const MAILBOX_LEN: u64 = PAYLOAD_REG + PAYLOAD_SIZE as u64;
/// Offset of the Memory Device capability structure.
pub const MEMDEV_OFFSET: u64 = 0xC00;
/// Length of the Memory Device capability structure (the Memory Device Status register).
pub const MEMDEV_LEN: u64 = 0x8;

/// Memory Device Status value: media status ready (1 in bits 3:2) and mailbox interfaces ready
/// (bit 4); no fatal error, no FW halt, no reset needed.
pub const MEMDEV_STATUS: u64 = (1 << 2) | (1 << 4);

/// Mailbox register offsets relative to [`MAILBOX_OFFSET`].
const MB_CAPS: u64 = 0x00;
const MB_CONTROL: u64 = 0x04;
const MB_COMMAND: u64 = 0x08;
const MB_STATUS: u64 = 0x10;
const MB_BG_STATUS: u64 = 0x18;

/// Command register bits that hold state: opcode (15:0) and payload length (36:16).
const COMMAND_MASK: u64 = (1 << 37) - 1;
const COMMAND_LEN_SHIFT: u32 = 16;
const COMMAND_LEN_MASK: u64 = (1 << 21) - 1;
/// Doorbell bit of the Control register.
const CONTROL_DOORBELL: u8 = 1;
/// Shift of the return code in the Status register.
const STATUS_RC_SHIFT: u32 = 32;

/// The capability headers: (id, version, offset, length), in header order.
const CAPS: [(u16, u8, u64, u64); 3] = [
    (CAP_ID_DEVICE_STATUS, 2, STATUS_OFFSET, STATUS_LEN),
    (CAP_ID_PRIMARY_MAILBOX, 1, MAILBOX_OFFSET, MAILBOX_LEN),
    (CAP_ID_MEMORY_DEVICE, 1, MEMDEV_OFFSET, MEMDEV_LEN),
];

/// The device register block of one Type-3 device, wrapping its [`Mailbox`].
#[derive(Debug)]
pub struct DeviceRegs {
    mailbox: Mailbox,
    command: u64,
    status: u64,
    payload: Vec<u8>,
}

impl DeviceRegs {
    /// Size of the register block (a power of two; the block of the BAR it is placed in).
    pub const SIZE: usize = 0x1000;

    /// Creates the register block in its reset state around `mailbox`.
    pub fn new(mailbox: Mailbox) -> Self {
        Self {
            mailbox,
            command: 0,
            status: 0,
            payload: vec![0; PAYLOAD_SIZE],
        }
    }

    /// Returns registers and payload to their reset values and resets the mailbox state
    /// ([`Mailbox::reset`]).
    pub fn reset(&mut self) {
        self.command = 0;
        self.status = 0;
        self.payload.fill(0);
        self.mailbox.reset();
    }

    /// The mailbox behind the registers.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }

    /// The mailbox behind the registers, mutably.
    pub fn mailbox_mut(&mut self) -> &mut Mailbox {
        &mut self.mailbox
    }

    /// Reads `data.len()` bytes at `offset` (little endian). Never fails: unimplemented bytes
    /// read 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            // Bytes whose address would wrap past u64::MAX read 0.
            *byte = Self::byte_address(offset, i).map_or(0, |at| self.read_byte(at));
        }
    }

    /// Writes `data` at `offset` (little endian). A write that sets the Control doorbell runs the
    /// command in the payload before returning.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let mut doorbell = false;
        for (i, &byte) in data.iter().enumerate() {
            if let Some(at) = Self::byte_address(offset, i) {
                doorbell |= self.write_byte(at, byte);
            }
        }
        if doorbell {
            self.ring_doorbell();
        }
    }

    fn byte_address(offset: u64, index: usize) -> Option<u64> {
        offset.checked_add(u64::try_from(index).ok()?)
    }

    fn payload_index(at: u64) -> Option<usize> {
        let rel = at.checked_sub(MAILBOX_OFFSET + PAYLOAD_REG)?;
        usize::try_from(rel).ok().filter(|&i| i < PAYLOAD_SIZE)
    }

    fn read_byte(&self, at: u64) -> u8 {
        if let Some(i) = Self::payload_index(at) {
            return self.payload.get(i).copied().unwrap_or(0);
        }
        let qword = self.read_qword(at & !7);
        qword.to_le_bytes()[(at & 7) as usize]
    }

    /// Value of the 64-bit register (or register pair) at the 8-byte aligned offset `at`.
    fn read_qword(&self, at: u64) -> u64 {
        match at {
            0x00 => (1 << 16) | ((CAPS.len() as u64) << 32),
            0x10..=0x3F => {
                let Some(&(id, version, offset, len)) = CAPS.get((at / 0x10 - 1) as usize) else {
                    return 0;
                };
                if at.is_multiple_of(0x10) {
                    u64::from(id) | (u64::from(version) << 16) | (offset << 32)
                } else {
                    len
                }
            }
            STATUS_OFFSET => 0,
            a if a == MAILBOX_OFFSET + MB_CAPS => {
                // Control (upper dword) always reads 0: the doorbell is clear whenever a guest
                // access can observe it and the interrupt enables are reserved here.
                u64::from(PAYLOAD_SIZE_LOG2)
            }
            a if a == MAILBOX_OFFSET + MB_COMMAND => self.command,
            a if a == MAILBOX_OFFSET + MB_STATUS => self.status,
            a if a == MAILBOX_OFFSET + MB_BG_STATUS => 0,
            MEMDEV_OFFSET => MEMDEV_STATUS,
            _ => 0,
        }
    }

    /// Stores one byte; returns true when it sets the doorbell.
    fn write_byte(&mut self, at: u64, byte: u8) -> bool {
        if let Some(i) = Self::payload_index(at) {
            if let Some(slot) = self.payload.get_mut(i) {
                *slot = byte;
            }
            return false;
        }
        let command = MAILBOX_OFFSET + MB_COMMAND;
        if (command..command + 8).contains(&at) {
            let shift = (at - command) * 8;
            let value = (self.command & !(0xFF << shift)) | (u64::from(byte) << shift);
            self.command = value & COMMAND_MASK;
            return false;
        }
        at == MAILBOX_OFFSET + MB_CONTROL && byte & CONTROL_DOORBELL != 0
    }

    fn ring_doorbell(&mut self) {
        let opcode = (self.command & 0xFFFF) as u16;
        let len = (self.command >> COMMAND_LEN_SHIFT) & COMMAND_LEN_MASK;
        let input = usize::try_from(len)
            .ok()
            .and_then(|len| self.payload.get(..len));
        let (rc, out) = match input {
            Some(input) => self.mailbox.execute(opcode, input, PAYLOAD_SIZE),
            None => (ReturnCode::InvalidPayloadLength, Vec::new()),
        };
        let out_len = match self.payload.get_mut(..out.len()) {
            Some(dst) => {
                dst.copy_from_slice(&out);
                out.len()
            }
            None => 0,
        };
        tracing::trace!(opcode, len, ?rc, out_len, "cxl mailbox command");
        self.command =
            (self.command & 0xFFFF) | (((out_len as u64) & COMMAND_LEN_MASK) << COMMAND_LEN_SHIFT);
        self.status = u64::from(rc.code()) << STATUS_RC_SHIFT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::{MemdevParams, opcode};

    fn regs() -> DeviceRegs {
        DeviceRegs::new(Mailbox::new(MemdevParams {
            volatile_bytes: 1 << 30,
            persistent_bytes: 0,
            lsa: None,
            fw_revision: "t".into(),
            serial: 1,
        }))
    }

    fn rq(r: &DeviceRegs, at: u64) -> u64 {
        let mut b = [0u8; 8];
        r.read(at, &mut b);
        u64::from_le_bytes(b)
    }

    #[test]
    fn registers_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<DeviceRegs>();
    }

    #[test]
    fn layout_is_aligned_non_overlapping_and_fits() {
        assert!(DeviceRegs::SIZE.is_power_of_two() && DeviceRegs::SIZE >= 4096);
        let mut spans: Vec<(u64, u64)> = CAPS.iter().map(|c| (c.2, c.2 + c.3)).collect();
        spans.push((0, 0x40));
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{w:x?}");
        }
        for (s, e) in &spans {
            assert_eq!(s % 8, 0);
            assert!(*e <= DeviceRegs::SIZE as u64);
        }
    }

    #[test]
    fn unaligned_and_straddling_reads_see_register_bytes() {
        let r = regs();
        let mut b = [0u8; 4];
        r.read(MEMDEV_OFFSET - 2, &mut b);
        assert_eq!(b, [0, 0, 0x14, 0]);
        let mut b = [0u8; 2];
        r.read(0x21, &mut b);
        assert_eq!(b, [0, 0x01]);
        // Past the end of the address space and past the block.
        let mut b = [0xAAu8; 8];
        r.read(u64::MAX - 3, &mut b);
        assert_eq!(b, [0; 8]);
        assert_eq!(rq(&r, DeviceRegs::SIZE as u64), 0);
    }

    #[test]
    fn doorbell_with_oversized_length_fails_with_invalid_payload_length() {
        let mut r = regs();
        let cmd = u64::from(opcode::GET_TIMESTAMP) | (((PAYLOAD_SIZE as u64) + 1) << 16);
        r.write(MAILBOX_OFFSET + MB_COMMAND, &cmd.to_le_bytes());
        r.write(MAILBOX_OFFSET + MB_CONTROL, &1u32.to_le_bytes());
        assert_eq!(rq(&r, MAILBOX_OFFSET + MB_STATUS) >> 32, 0x16);
        assert_eq!(rq(&r, MAILBOX_OFFSET + MB_COMMAND) >> 16, 0);
        assert_eq!(rq(&r, MAILBOX_OFFSET) >> 32, 0, "doorbell clear");
    }

    #[test]
    fn command_reserved_bits_read_zero_and_reset_clears() {
        let mut r = regs();
        r.write(MAILBOX_OFFSET + MB_COMMAND, &u64::MAX.to_le_bytes());
        assert_eq!(rq(&r, MAILBOX_OFFSET + MB_COMMAND), COMMAND_MASK);
        r.write(MAILBOX_OFFSET + PAYLOAD_REG, &[9; 8]);
        r.reset();
        assert_eq!(rq(&r, MAILBOX_OFFSET + MB_COMMAND), 0);
        assert_eq!(rq(&r, MAILBOX_OFFSET + PAYLOAD_REG), 0);
    }
}
