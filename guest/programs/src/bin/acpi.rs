//! `acpi`: finds the ACPI tables through the boot info (device kind 9), checks the RSDP's two
//! checksums, walks the XSDT verifying every table's checksum (and the DSDT's, through the
//! FADT), and checks that the MADT, MCFG, SRAT and CEDT describe exactly the platform of the
//! boot info (`cxlvm_guest::acpi::check`). Only vCPU 0 works.
//!
//! `tamper=checksum|target` changes the guest's copy of the tables before the check (never
//! guest memory), to see the check fail: `checksum` flips a byte of the CEDT (or, without one,
//! the MADT), `target` changes the first CFMWS's first target UID and fixes the CEDT's checksum.
//!
//! guest/README.md lists the output lines and exit statuses.
#![no_std]
#![no_main]

use cxlvm_guest::acpi::{self, Area, BootPlatform, Signature, TABLES_MAX, Tables};
use cxlvm_guest::sync::SpinLock;
use cxlvm_guest::{BootInfo, arg, println};

cxlvm_guest::entry!(main);

/// Bad argument.
const BAD_ARG: i32 = 2;
/// No ACPI tables entry, or one too large for the buffer, or a boot info with more entries than
/// the checker keeps.
const NO_TABLES: i32 = 3;
/// A checksum, signature, length or pointer is wrong.
const BAD_TABLES: i32 = 4;
/// The tables differ from the boot info.
const MISMATCH: i32 = 5;

/// The copy of the tables.
static BUF: SpinLock<[u8; TABLES_MAX]> = SpinLock::new([0; TABLES_MAX]);

fn main(boot: &BootInfo, vcpu: u32) -> i32 {
    if vcpu != 0 {
        return 0;
    }
    run(boot).err().unwrap_or(0)
}

fn run(boot: &BootInfo) -> Result<(), i32> {
    let tamper = arg("tamper");
    if !matches!(tamper, None | Some("checksum" | "target")) {
        println!(
            "acpi: bad tamper `{}` (checksum or target)",
            tamper.unwrap_or("")
        );
        return Err(BAD_ARG);
    }
    let mut buf = BUF.lock();
    let (base, len) = match acpi::read_area(boot, &mut buf[..]) {
        Ok(a) => (a.base(), a.len()),
        Err(e) => {
            println!("acpi: {e}");
            return Err(NO_TABLES);
        }
    };
    if let Some(how) = tamper {
        tamper_with(&mut buf[..len], base, how)?;
    }
    let area = Area::new(base, &buf[..len]);
    let tables = Tables::load(area, base).map_err(|e| {
        println!("acpi fail {e}");
        BAD_TABLES
    })?;
    let r = tables.rsdp();
    println!(
        "acpi rsdp={:#x} revision={} length={} xsdt={:#x} size={:#x}",
        r.address, r.revision, r.length, r.xsdt, len
    );
    let line = |t: acpi::Sdt<'_>| {
        println!(
            "acpi table {} addr={:#x} length={} revision={} checksum=ok",
            t.signature(),
            t.address(),
            t.length(),
            t.revision()
        );
    };
    line(tables.xsdt());
    tables.listed().for_each(line);
    if let Some(d) = tables.dsdt() {
        line(d);
    }
    let platform = BootPlatform::from_boot(boot);
    if platform.truncated {
        println!("acpi: the boot info lists more entries than the checker keeps");
        return Err(NO_TABLES);
    }
    let summary = platform
        .with(|p| acpi::check::check(&tables, p, &mut |m| println!("acpi mismatch {m}")))
        .map_err(|e| {
            println!("acpi fail {e}");
            BAD_TABLES
        })?;
    if summary.mismatches > 0 {
        println!("acpi differs mismatches={}", summary.mismatches);
        return Err(MISMATCH);
    }
    let (ecam, seg, start, end) = summary.ecam.map_or((0, 0, 0, 0), |e| {
        (e.base, e.segment, e.start_bus, e.end_bus)
    });
    println!(
        "acpi ok tables={} cpus={} lapic={:#x} ioapic={:#x} ecam={:#x} segment={} buses={}-{} srat_cpus={} srat_memory={} chbs={} cfmws={} cxims={}",
        summary.tables,
        summary.cpus,
        summary.local_apic,
        summary.ioapic.unwrap_or(0),
        ecam,
        seg,
        start,
        end,
        summary.srat_cpus,
        summary.srat_memory,
        summary.host_bridges,
        summary.windows,
        summary.xor_maps
    );
    Ok(())
}

/// Changes the copy of the tables at `base` as `tamper=` asks.
fn tamper_with(buf: &mut [u8], base: u64, how: &str) -> Result<(), i32> {
    // Where to change, found on the intact copy.
    let (table, at, len) = {
        let tables = Tables::load(Area::new(base, buf), base).map_err(|e| {
            println!("acpi fail {e}");
            BAD_TABLES
        })?;
        let cedt = tables.find(Signature::CEDT);
        let (table, at) = match how {
            "checksum" => match cedt.or_else(|| tables.find(Signature::MADT)) {
                // A byte of the body (past the header), or the header's OEM revision.
                Some(t) => (t, t.length().min(48) - 8),
                None => return missing("a CEDT or MADT"),
            },
            _ => {
                let Some(t) = cedt else {
                    return missing("a CEDT");
                };
                // CEDT structures: type (1 byte), reserved, length (2 bytes); a CFMWS's
                // first target follows its 36 fixed bytes.
                let b = t.bytes();
                let mut off = acpi::parse::HEADER_LEN;
                let mut found = None;
                while off + 4 <= b.len() {
                    let size = usize::from(u16::from_le_bytes([b[off + 2], b[off + 3]]));
                    if b[off] == acpi::parse::cedt_kind::CFMWS {
                        found = Some(off + acpi::parse::CFMWS_FIXED);
                        break;
                    }
                    if size == 0 {
                        break;
                    }
                    off += size;
                }
                match found {
                    Some(at) => (t, at),
                    None => return missing("a CFMWS"),
                }
            }
        };
        ((table.address() - base) as usize, at, table.length())
    };
    let bytes = &mut buf[table..table + len];
    bytes[at] = bytes[at].wrapping_add(1);
    if how == "target" {
        // Keep the checksum right: only the content differs.
        bytes[9] = bytes[9].wrapping_sub(1);
    }
    println!("acpi tamper={how} offset={at:#x}");
    Ok(())
}

fn missing(what: &str) -> Result<(), i32> {
    println!("acpi: tamper needs {what}");
    Err(NO_TABLES)
}
