//! `mode=probe`: for every Type-3 device, what Linux's `cxl_pci` checks and sends at probe,
//! plus the other commands of cxlvm's mailbox.

use core::fmt;

use cxlvm_guest::cxl::{
    self, CEL_UUID, DeviceRegs, Mailbox, MailboxError, dev_cap_id, mbox, opcode, out_len, rc,
};
use cxlvm_guest::{BootInfo, arg_u64, println, tsc_to_ns};

use crate::topology::{Topology, Type3};
use crate::{BAD_REGISTERS, HexCsv, MAILBOX, MISMATCH, NO_DEVICE};

/// Largest transfer per command (the payload may be bigger).
const BUF: usize = 4096;
/// Most CEL opcodes printed.
const MAX_CEL: usize = 512;
/// What the LSA check writes at offset 0.
const LSA_PATTERN: [u8; 16] = *b"cxlvm-lsa-probe!";
/// Set Timestamp value: 2026-01-01T00:00:00Z in ns, plus the guest's TSC time.
const TIMESTAMP_BASE_NS: u64 = 1_767_225_600_000_000_000;

/// A probe failure: what failed, the mailbox return code (if any), the mailbox transport error
/// (doorbell busy or stuck), an extra value.
struct Fail {
    what: &'static str,
    rc: Option<u16>,
    error: Option<MailboxError>,
    detail: Option<u64>,
    status: i32,
}

impl Fail {
    fn reg(what: &'static str, detail: Option<u64>) -> Self {
        Self {
            what,
            rc: None,
            error: None,
            detail,
            status: BAD_REGISTERS,
        }
    }

    fn mbox(what: &'static str, e: MailboxError) -> Self {
        Self {
            what,
            rc: e.rc(),
            error: e.rc().is_none().then_some(e),
            detail: None,
            status: MAILBOX,
        }
    }

    /// A command that succeeded with a wrong output (`value`: its length or the bad field).
    fn output(what: &'static str, value: u64) -> Self {
        Self {
            what,
            rc: Some(rc::SUCCESS),
            error: None,
            detail: Some(value),
            status: MAILBOX,
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rc {
            Some(rc) => write!(f, "{} rc={rc}", self.what)?,
            None => write!(f, "{} rc=-1", self.what)?,
        }
        if let Some(e) = self.error {
            write!(f, " error={e}")?;
        }
        if let Some(v) = self.detail {
            write!(f, " value={v:#x}")?;
        }
        Ok(())
    }
}

pub fn run(boot: &BootInfo) -> Result<(), i32> {
    let topo = Topology::discover(boot)?;
    if topo.type3s.is_empty() {
        println!("cxl: no Type-3 device");
        return Err(NO_DEVICE);
    }
    for (i, t) in topo.type3s.iter().enumerate() {
        if let Err(e) = probe_device(&topo, i, t) {
            println!("probe mem{i} fail {e}");
            return Err(e.status);
        }
    }
    println!("probe ok devices={}", topo.type3s.len());
    Ok(())
}

/// Sends a command whose output must be at least `min` bytes.
fn send(
    mb: &Mailbox,
    what: &'static str,
    op: u16,
    input: &[u8],
    out: &mut [u8],
    min: usize,
) -> Result<usize, Fail> {
    let len = mb.send(op, input, out).map_err(|e| Fail::mbox(what, e))?;
    if len < min {
        return Err(Fail::output(what, len as u64));
    }
    Ok(len)
}

fn probe_device(topo: &Topology, i: usize, t: &Type3) -> Result<(), Fail> {
    // Device DVSEC range 1: Memory_Info_Valid and Memory_Active (cxl_await_media_ready).
    let dvsec = t.dvsec.ok_or(Fail::reg("no-device-dvsec", None))?;
    let low = dvsec.range_size_low(0);
    let want = cxl::device_dvsec::RANGE_INFO_VALID | cxl::device_dvsec::RANGE_ACTIVE;
    if low & want != want {
        return Err(Fail::reg("dvsec-range-not-active", Some(low.into())));
    }
    // Device registers: status, primary mailbox and memory device capabilities.
    let base = t
        .blocks
        .device
        .ok_or(Fail::reg("no-device-registers", None))?;
    let regs = DeviceRegs::new(base).map_err(|e| match e {
        cxl::DevRegsError::Unmapped => Fail::reg("device-registers-unmapped", Some(base)),
        cxl::DevRegsError::BadArray(v) => Fail::reg("device-cap-array-id", Some(v)),
    })?;
    for (id, what) in [
        (dev_cap_id::DEVICE_STATUS, "no-device-status-cap"),
        (dev_cap_id::PRIMARY_MAILBOX, "no-mailbox-cap"),
        (dev_cap_id::MEMORY_DEVICE, "no-memdev-cap"),
    ] {
        if regs.find(id).is_none() {
            return Err(Fail::reg(what, None));
        }
    }
    let status = regs
        .memdev_status()
        .ok_or(Fail::reg("memdev-status-unmapped", None))?;
    if cxl::media_status(status) != 1 || !cxl::mailbox_ready(status) {
        return Err(Fail::reg("memdev-not-ready", Some(status)));
    }
    let mb = regs.mailbox().ok_or(Fail::reg("mailbox-unmapped", None))?;
    if mb.payload_size() < mbox::MIN_PAYLOAD {
        return Err(Fail::reg(
            "payload-too-small",
            Some(mb.payload_size() as u64),
        ));
    }
    let chunk = mb.payload_size().min(BUF);
    let mut buf = [0u8; BUF];

    // 0x0400 Get Supported Logs: the CEL must be listed.
    let len = send(
        &mb,
        "get-supported-logs",
        opcode::GET_SUPPORTED_LOGS,
        &[],
        &mut buf[..chunk],
        8,
    )?;
    let cel_size = cxl::find_log(&buf[..len.min(chunk)], &CEL_UUID)
        .ok_or(Fail::output("cel-not-listed", len as u64))?;

    // 0x0401 Get Log: the whole CEL, in chunks.
    let mut opcodes = [0u16; MAX_CEL];
    let mut count = 0usize;
    let mut offset = 0u32;
    while offset < cel_size {
        let want = (cel_size - offset).min(chunk as u32);
        let input = cxl::get_log_input(&CEL_UUID, offset, want);
        send(
            &mb,
            "get-log",
            opcode::GET_LOG,
            &input,
            &mut buf[..want as usize],
            want as usize,
        )?;
        for entry in buf[..want as usize].chunks_exact(4) {
            if count < MAX_CEL {
                opcodes[count] = u16::from_le_bytes([entry[0], entry[1]]);
                count += 1;
            }
        }
        offset += want;
    }
    let more = (cel_size as usize / 4).saturating_sub(count);
    if more > 0 {
        println!("cel mem{i} opcodes={},+{more}", HexCsv(&opcodes[..count]));
    } else {
        println!("cel mem{i} opcodes={}", HexCsv(&opcodes[..count]));
    }

    // 0x0301 Set Timestamp: success, or unsupported (which Linux tolerates).
    let ns = TIMESTAMP_BASE_NS + tsc_to_ns(cxlvm_guest::rdtsc()).unwrap_or(0);
    match mb.send(opcode::SET_TIMESTAMP, &ns.to_le_bytes(), &mut []) {
        Ok(_) | Err(MailboxError::Rc(rc::UNSUPPORTED)) => {}
        Err(e) => return Err(Fail::mbox("set-timestamp", e)),
    }

    // 0x4000 Identify.
    let len = send(
        &mb,
        "identify",
        opcode::IDENTIFY,
        &[],
        &mut buf[..chunk],
        out_len::IDENTIFY,
    )?;
    let id =
        cxl::decode_identify(&buf[..len.min(chunk)]).ok_or(Fail::output("identify", len as u64))?;

    // 0x4100 Get Partition Info, 0x4200 Get Health Info.
    send(
        &mb,
        "get-partition-info",
        opcode::GET_PARTITION_INFO,
        &[],
        &mut buf[..chunk],
        out_len::PARTITION_INFO,
    )?;
    send(
        &mb,
        "get-health-info",
        opcode::GET_HEALTH_INFO,
        &[],
        &mut buf[..chunk],
        out_len::HEALTH_INFO,
    )?;

    // 0x0100 Get Event Records, logs info, warn, failure, fatal: all empty.
    for (log, what) in [
        "get-event-records-info",
        "get-event-records-warn",
        "get-event-records-fail",
        "get-event-records-fatal",
    ]
    .into_iter()
    .enumerate()
    {
        let len = send(
            &mb,
            what,
            opcode::GET_EVENT_RECORDS,
            &[log as u8],
            &mut buf[..chunk],
            out_len::EVENT_RECORDS,
        )?;
        let records = cxl::event_record_count(&buf[..len.min(chunk)]).unwrap_or(u16::MAX);
        if records != 0 {
            return Err(Fail::output(what, records.into()));
        }
    }

    // 0x0200 Get FW Info.
    send(
        &mb,
        "get-fw-info",
        opcode::GET_FW_INFO,
        &[],
        &mut buf[..chunk],
        out_len::FW_INFO,
    )?;

    if id.lsa_size > 0 {
        check_lsa(&mb, id.lsa_size)?;
    }

    // An opcode nobody implements: return code 3 (unsupported).
    match mb.send(0xffff, &[], &mut buf[..chunk]) {
        Err(MailboxError::Rc(rc::UNSUPPORTED)) => {}
        Ok(_) => {
            return Err(Fail::output("unknown-opcode", 0));
        }
        Err(e) => return Err(Fail::mbox("unknown-opcode", e)),
    }

    let serial = topo.function(t.bdf).serial_number();
    match serial {
        Some(sn) => println!(
            "probe mem{i} ok volatile={} persistent={} lsa={} serial={sn:#x}",
            id.volatile, id.persistent, id.lsa_size
        ),
        None => println!(
            "probe mem{i} ok volatile={} persistent={} lsa={}",
            id.volatile, id.persistent, id.lsa_size
        ),
    }
    Ok(())
}

/// Set LSA of a pattern at offset 0, Get LSA, compare; the old bytes are written back after.
fn check_lsa(mb: &Mailbox, lsa_size: u32) -> Result<(), Fail> {
    let n = LSA_PATTERN.len().min(lsa_size as usize);
    let get_input = |len: usize| {
        let mut input = [0u8; 8];
        input[4..].copy_from_slice(&(len as u32).to_le_bytes());
        input
    };
    let set_input = |data: &[u8]| {
        // Offset 0 (u32), reserved (u32), then the data.
        let mut input = [0u8; 8 + LSA_PATTERN.len()];
        input[8..8 + data.len()].copy_from_slice(data);
        (input, 8 + data.len())
    };
    let mut old = [0u8; LSA_PATTERN.len()];
    send(
        mb,
        "get-lsa",
        opcode::GET_LSA,
        &get_input(n),
        &mut old[..n],
        n,
    )?;
    let (input, len) = set_input(&LSA_PATTERN[..n]);
    send(mb, "set-lsa", opcode::SET_LSA, &input[..len], &mut [], 0)?;
    let mut back = [0u8; LSA_PATTERN.len()];
    send(
        mb,
        "get-lsa",
        opcode::GET_LSA,
        &get_input(n),
        &mut back[..n],
        n,
    )?;
    let matches = back[..n] == LSA_PATTERN[..n];
    // `lsa_keep=1` leaves the test label in place (so the host can see it in the LSA file).
    if arg_u64("lsa_keep", 0) == 0 {
        let (input, len) = set_input(&old[..n]);
        send(
            mb,
            "set-lsa-restore",
            opcode::SET_LSA,
            &input[..len],
            &mut [],
            0,
        )?;
    }
    if !matches {
        let first = u64::from_le_bytes(back[..8].try_into().unwrap_or([0; 8]));
        return Err(Fail {
            status: MISMATCH,
            ..Fail::output("lsa-mismatch", first)
        });
    }
    Ok(())
}
