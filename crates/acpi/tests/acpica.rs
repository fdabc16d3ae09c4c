//! ACPICA's own tools as the oracle for the sample platform's tables:
//!
//! - `iasl -d` disassembles every table (one at a time, then all in one run) with no error or
//!   warning, and decodes the fields to the platform's values;
//! - iasl's compiler rebuilds each data table from its disassembly byte for byte (bar the
//!   checksum and the creator fields it writes itself), recompiles the DSDT with no error,
//!   warning or remark, and builds the RSDP from a source written here;
//! - `acpiexec` loads the DSDT and evaluates every host bridge's `_HID`, `_CID`, `_UID`, `_SEG`,
//!   `_BBN`, `_PXM`, `_CRS` and `_OSC` (CXL, PCIe and an unknown UUID, and the error cases), the CXL
//!   root, COM1, the motherboard resources and `\_S5`.
//!
//! A missing tool fails the test with what to install (Debian: acpica-tools; `./test.sh`
//! installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cxlvm_acpi::*;

/// The path of `tool`, or a failure that says what to install.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: the ACPI tests use ACPICA's iasl and acpiexec as their \
             oracle. Install Debian's acpica-tools (`apt-get install acpica-tools`; ./test.sh \
             does it)"
        )
    })
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("acpi-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `tool args` in `dir`; returns (success, stdout + stderr).
fn run(dir: &Path, tool_name: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool(tool_name))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {tool_name}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Lines of iasl/acpiexec output that report a problem. This iasl (Debian's 20200925)
/// predates the CEDT and says so; that one line is expected for the CEDT only, whose fields
/// `cedt.rs` checks against a hand computation instead.
fn problems(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| {
            let low = l.to_ascii_lowercase();
            (low.contains("error") || low.contains("warning") || l.contains("AE_"))
                && !low.contains(" 0 errors, 0 warnings")
        })
        .chain(output.lines().filter(|l| {
            l.contains("Unknown ACPI table signature") && !l.contains("[CEDT]")
                || l.contains("does not contain a valid ACPI table")
        }))
        .collect()
}

/// The `Field : Value` lines of a disassembled data table, in order.
fn fields(dsl: &str) -> Vec<(String, String)> {
    dsl.lines()
        .filter(|l| !l.trim_start().starts_with("0") && !l.starts_with(" *"))
        .filter_map(|l| {
            let (k, v) = l.split_once(" : ")?;
            let k = k.rsplit(']').next().unwrap_or(k).trim();
            Some((k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Values of every field named `name`.
fn all<'a>(f: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    f.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn one<'a>(f: &'a [(String, String)], name: &str) -> &'a str {
    let v = all(f, name);
    assert_eq!(v.len(), 1, "field {name}: {v:?}");
    v[0]
}

fn hex(v: &str) -> u64 {
    let v = v.split_whitespace().next().unwrap();
    u64::from_str_radix(v, 16).unwrap_or_else(|_| panic!("not hex: {v}"))
}

fn dump_sample(name: &str) -> (PathBuf, AcpiTables) {
    let dir = scratch(name);
    let tables = common::build();
    tables.dump(&dir).unwrap();
    (dir, tables)
}

/// Data tables iasl knows (the CEDT is not among them in 20200925; the RSDP cannot be read
/// from a file by it).
const DATA: [&str; 6] = ["XSDT", "FACP", "APIC", "MCFG", "SRAT", "SLIT"];

#[test]
fn iasl_disassembles_each_table_without_complaint() {
    let (dir, _) = dump_sample("iasl-each");
    for sig in DATA.iter().chain(&["DSDT", "CEDT"]) {
        let file = format!("{sig}.dat");
        let (ok, out) = run(&dir, "iasl", &["-d", &file]);
        assert!(ok, "iasl -d {file} failed:\n{out}");
        assert!(
            problems(&out).is_empty(),
            "iasl -d {file}: {:?}\n{out}",
            problems(&out)
        );
        assert!(
            out.contains(&format!("Input file {file}")),
            "iasl did not read {file} as an ACPI table:\n{out}"
        );
        assert!(dir.join(format!("{sig}.dsl")).is_file());
    }
}

#[test]
fn iasl_disassembles_all_tables_together() {
    let (dir, _) = dump_sample("iasl-all");
    let files: Vec<String> = DATA
        .iter()
        .chain(&["DSDT", "CEDT"])
        .map(|s| format!("{s}.dat"))
        .collect();
    let mut args = vec!["-d"];
    args.extend(files.iter().map(String::as_str));
    let (ok, out) = run(&dir, "iasl", &args);
    assert!(ok, "iasl -d (all tables) failed:\n{out}");
    assert!(problems(&out).is_empty(), "{:?}\n{out}", problems(&out));
    let dsdt = std::fs::read_to_string(dir.join("DSDT.dsl")).unwrap();
    assert!(
        !dsdt.contains("External ("),
        "DSDT refers to objects it does not define:\n{dsdt}"
    );
}

#[test]
fn iasl_decodes_the_platform() {
    let (dir, tables) = dump_sample("iasl-fields");
    let p = common::sample();
    for sig in DATA {
        let (ok, out) = run(&dir, "iasl", &["-d", &format!("{sig}.dat")]);
        assert!(ok, "{out}");
    }
    let read =
        |sig: &str| fields(&std::fs::read_to_string(dir.join(format!("{sig}.dsl"))).unwrap());
    let addr = |k: TableKind| tables.get(k).unwrap().address;

    let xsdt = read("XSDT");
    let listed: Vec<u64> = xsdt
        .iter()
        .filter(|(k, _)| k.starts_with("ACPI Table Address"))
        .map(|(_, v)| hex(v))
        .collect();
    let expect: Vec<u64> = [
        TableKind::Fadt,
        TableKind::Madt,
        TableKind::Mcfg,
        TableKind::Srat,
        TableKind::Slit,
        TableKind::Cedt,
    ]
    .iter()
    .map(|k| addr(*k))
    .collect();
    assert_eq!(listed, expect);

    let fadt = read("FACP");
    assert_eq!(one(&fadt, "Hardware Reduced (V5)"), "1");
    assert_eq!(one(&fadt, "Reset Register Supported (V2)"), "1");
    assert_eq!(one(&fadt, "8042 Present on ports 60/64 (V2)"), "0");
    assert_eq!(one(&fadt, "CMOS RTC Not Present (V5)"), "1");
    assert_eq!(one(&fadt, "Value to cause reset"), "06");
    assert_eq!(one(&fadt, "FADT Minor Revision"), "05");
    assert_eq!(hex(one(&fadt, "SCI Interrupt")), 9);
    assert_eq!(
        all(&fadt, "DSDT Address")
            .iter()
            .map(|v| hex(v))
            .collect::<Vec<_>>(),
        vec![addr(TableKind::Dsdt); 2]
    );
    assert_eq!(
        all(&fadt, "FACS Address"),
        vec!["00000000", "0000000000000000"]
    );
    // Reset, sleep control, sleep status: system I/O, byte, at cxlvm's ports.
    let spaces: Vec<&str> = all(&fadt, "Space ID");
    let addresses: Vec<u64> = all(&fadt, "Address").iter().map(|v| hex(v)).collect();
    assert_eq!(spaces.len(), 11, "{spaces:?}");
    assert_eq!(spaces[0], "01 [SystemIO]");
    assert_eq!(addresses[0], 0xcf9);
    assert_eq!(&spaces[9..], &["01 [SystemIO]", "01 [SystemIO]"]);
    assert_eq!(&addresses[9..], &[0x600, 0x601]);
    assert!(spaces[1..9].iter().all(|s| s.starts_with("00")));
    assert!(addresses[1..9].iter().all(|a| *a == 0));

    let madt = read("APIC");
    assert_eq!(hex(one(&madt, "Local Apic Address")), 0xfee0_0000);
    assert_eq!(one(&madt, "PC-AT Compatibility"), "1");
    assert_eq!(
        all(&madt, "Subtable Type"),
        vec![
            "00 [Processor Local APIC]",
            "00 [Processor Local APIC]",
            "01 [I/O APIC]",
            "02 [Interrupt Source Override]",
            "04 [Local APIC NMI]"
        ]
    );
    assert_eq!(all(&madt, "Local Apic ID"), vec!["00", "01"]);
    assert_eq!(all(&madt, "Processor Enabled"), vec!["1", "1"]);
    assert_eq!(hex(one(&madt, "Address")), 0xfec0_0000);
    assert_eq!(one(&madt, "Source"), "00");
    assert_eq!(all(&madt, "Interrupt"), vec!["00000000", "00000002"]);
    assert_eq!(all(&madt, "Polarity"), vec!["1", "0"]); // override: high; NMI: conforming
    assert_eq!(all(&madt, "Trigger Mode"), vec!["1", "0"]); // override: edge
    assert_eq!(one(&madt, "Interrupt Input LINT"), "01");

    let mcfg = read("MCFG");
    assert_eq!(hex(one(&mcfg, "Base Address")), p.ecam.unwrap().base);
    assert_eq!(one(&mcfg, "Segment Group Number"), "0000");
    assert_eq!(one(&mcfg, "Start Bus Number"), "00");
    assert_eq!(one(&mcfg, "End Bus Number"), "FF");

    let srat = read("SRAT");
    assert_eq!(all(&srat, "Apic ID"), vec!["00", "01"]);
    assert_eq!(
        all(&srat, "Base Address")
            .iter()
            .map(|v| hex(v))
            .collect::<Vec<_>>(),
        p.ram.iter().map(|r| r.base).collect::<Vec<_>>()
    );
    assert_eq!(
        all(&srat, "Address Length")
            .iter()
            .map(|v| hex(v))
            .collect::<Vec<_>>(),
        p.ram.iter().map(|r| r.size).collect::<Vec<_>>()
    );
    assert!(all(&srat, "Enabled").iter().all(|v| *v == "1"));
    // Nothing for the windows: Linux gives each CFMWS a node of its own.
    assert_eq!(all(&srat, "Subtable Type").len(), 4);

    let slit = read("SLIT");
    assert_eq!(hex(one(&slit, "Localities")), 1);
    assert_eq!(one(&slit, "Locality   0"), "0A");
}

#[test]
fn iasl_recompiles_every_table_to_the_same_bytes() {
    let (dir, tables) = dump_sample("iasl-roundtrip");
    for sig in DATA {
        let (ok, out) = run(&dir, "iasl", &["-d", &format!("{sig}.dat")]);
        assert!(ok, "{out}");
        let (ok, out) = run(&dir, "iasl", &[&format!("{sig}.dsl")]);
        assert!(ok && problems(&out).is_empty(), "iasl {sig}.dsl:\n{out}");
        assert!(out.contains("0 Errors, 0 Warnings, 0 Remarks"), "{out}");
        let ours = std::fs::read(dir.join(format!("{sig}.dat"))).unwrap();
        let theirs = std::fs::read(dir.join(format!("{sig}.aml"))).unwrap();
        // iasl writes its own checksum (9) and creator id/revision (28..36).
        assert_eq!(ours.len(), theirs.len(), "{sig}: length");
        assert_eq!(ours[..9], theirs[..9], "{sig}: header");
        assert_eq!(ours[10..28], theirs[10..28], "{sig}: header");
        assert_eq!(ours[36..], theirs[36..], "{sig}: body");
    }
    // The DSDT's ASL compiles cleanly (iasl optimises name paths, so bytes may differ).
    let (ok, out) = run(&dir, "iasl", &["-d", "DSDT.dat"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&dir, "iasl", &["DSDT.dsl"]);
    assert!(ok && problems(&out).is_empty(), "iasl DSDT.dsl:\n{out}");
    assert!(
        out.contains("Compilation successful. 0 Errors, 0 Warnings, 0 Remarks"),
        "{out}"
    );
    // The RSDP: iasl builds it (checksums included) from its fields, written here.
    let xsdt = tables.get(TableKind::Xsdt).unwrap().address;
    let src = format!(
        "[0008] Signature : \"RSD PTR \"\n\
         [0001] Checksum : 00\n\
         [0006] Oem ID : \"CXLVM \"\n\
         [0001] Revision : 02\n\
         [0004] RSDT Address : 00000000\n\
         [0004] Length : 00000024\n\
         [0008] XSDT Address : {xsdt:016X}\n\
         [0001] Extended Checksum : 00\n\
         [0003] Reserved : 000000\n"
    );
    std::fs::write(dir.join("rsdp-ref.asl"), src).unwrap();
    let (ok, out) = run(&dir, "iasl", &["rsdp-ref.asl"]);
    assert!(ok && problems(&out).is_empty(), "{out}");
    assert_eq!(
        std::fs::read(dir.join("rsdp-ref.aml")).unwrap(),
        std::fs::read(dir.join("RSDP.dat")).unwrap()
    );
}

// ---- acpiexec ----------------------------------------------------------------------------

/// The 16 bytes of `ToUUID (uuid)`: the first three groups little endian, the rest in order.
fn uuid_bytes(uuid: &str) -> Vec<u8> {
    let g: Vec<&str> = uuid.split('-').collect();
    let mut out = Vec::new();
    for (i, part) in g.iter().enumerate() {
        let mut b: Vec<u8> = (0..part.len())
            .step_by(2)
            .map(|j| u8::from_str_radix(&part[j..j + 2], 16).unwrap())
            .collect();
        if i < 3 {
            b.reverse();
        }
        out.extend(b);
    }
    out
}

/// An acpiexec buffer argument: `(0B D5 ...)`.
fn buf_arg(bytes: &[u8]) -> String {
    let b: Vec<String> = bytes.iter().map(|x| format!("{x:02X}")).collect();
    format!("({})", b.join(" "))
}

fn dwords(d: &[u32]) -> Vec<u8> {
    d.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One evaluation's result as acpiexec prints it.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Int(u64),
    Pkg(Vec<Value>),
    Buf(Vec<u8>),
}

/// Parses the value lines after "Evaluation of ... returned object".
fn parse_value(lines: &[&str]) -> (Value, usize) {
    let l = lines[0].trim();
    if let Some(rest) = l.strip_prefix("[String]") {
        let s = rest.split_once('"').unwrap().1.trim_end_matches('"');
        (Value::Str(s.to_string()), 1)
    } else if let Some(rest) = l.strip_prefix("[Integer] = ") {
        (Value::Int(hex(rest)), 1)
    } else if let Some(rest) = l.strip_prefix("[Package] Contains ") {
        let n: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
        let mut used = 1;
        let mut items = Vec::new();
        for _ in 0..n {
            let (v, k) = parse_value(&lines[used..]);
            items.push(v);
            used += k;
        }
        (Value::Pkg(items), used)
    } else if let Some(rest) = l.strip_prefix("[Buffer] Length ") {
        let n = hex(rest) as usize;
        let row_bytes = |row: &str| -> Vec<u8> {
            let data = row.split_once(": ").map_or("", |(_, d)| d);
            let data = data.split("//").next().unwrap();
            data.split_whitespace().map(|b| hex(b) as u8).collect()
        };
        // Short buffers are printed on the same line as their length.
        let mut bytes = row_bytes(rest.split_once('=').unwrap().1);
        let mut used = 1;
        while bytes.len() < n {
            bytes.extend(row_bytes(lines[used]));
            used += 1;
        }
        (Value::Buf(bytes), used)
    } else {
        panic!("unexpected acpiexec value line: {l}");
    }
}

/// acpiexec's limit on a batch command line (1023 characters in 20200925).
const BATCH_MAX: usize = 1000;

/// Runs acpiexec in batch mode on the DSDT (as many runs as its command-line limit needs);
/// returns each evaluation's (path, value), in order, and all the output.
fn acpiexec(dir: &Path, commands: &[String]) -> (Vec<(String, Value)>, String) {
    let mut batches: Vec<String> = Vec::new();
    for c in commands {
        assert!(c.len() < BATCH_MAX, "command too long for acpiexec: {c}");
        match batches.last_mut() {
            Some(b) if b.len() + 2 + c.len() < BATCH_MAX => {
                b.push_str("; ");
                b.push_str(c);
            }
            _ => batches.push(c.clone()),
        }
    }
    let mut results = Vec::new();
    let mut all = String::new();
    for batch in &batches {
        // -r: a hardware-reduced FADT, like cxlvm's.
        let (ok, out) = run(dir, "acpiexec", &["-r", "-b", batch, "DSDT.dat"]);
        assert!(ok, "acpiexec failed:\n{out}");
        assert!(
            out.contains("1 ACPI AML tables successfully acquired and loaded"),
            "acpiexec did not load the DSDT:\n{out}"
        );
        let lines: Vec<&str> = out.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if let Some(rest) = lines[i].strip_prefix("Evaluation of ") {
                let path = rest.split_whitespace().next().unwrap().to_string();
                let (v, used) = parse_value(&lines[i + 1..]);
                results.push((path, v));
                i += used;
            }
            i += 1;
        }
        all.push_str(&out);
    }
    (results, all)
}

/// EISA id of a 7-character PNP id, as acpiexec shows the integer (independent encoding).
fn eisa(id: &str) -> u64 {
    let c = id.as_bytes();
    let l = |x: u8| u32::from(x - b'@');
    let v =
        l(c[0]) << 26 | l(c[1]) << 21 | l(c[2]) << 16 | u32::from_str_radix(&id[3..], 16).unwrap();
    u64::from(v.swap_bytes())
}

/// Resource descriptors of a `_CRS` buffer, decoded here: (kind, min, max) for address
/// spaces, Memory32Fixed and IO; ("IRQ", mask, 0); ("END", 0, 0).
fn resources(b: &[u8]) -> Vec<(&'static str, u64, u64)> {
    let mut out = Vec::new();
    let mut i = 0;
    let le = |s: &[u8]| s.iter().rev().fold(0u64, |a, x| a << 8 | u64::from(*x));
    while i < b.len() {
        let tag = b[i];
        if tag & 0x80 != 0 {
            let len = le(&b[i + 1..i + 3]) as usize;
            let d = &b[i + 3..i + 3 + len];
            match tag {
                0x88 => out.push(("WordSpace", le(&d[5..7]), le(&d[7..9]))),
                0x87 => out.push(("DWordSpace", le(&d[7..11]), le(&d[11..15]))),
                0x8a => out.push(("QWordSpace", le(&d[11..19]), le(&d[19..27]))),
                0x86 => out.push(("Memory32Fixed", le(&d[1..5]), le(&d[5..9]))),
                _ => panic!("unexpected large resource {tag:#x}"),
            }
            if matches!(tag, 0x88 | 0x87 | 0x8a) {
                // resource type 0 memory / 2 bus; producer; min and max fixed
                assert_eq!(d[1] & 0x0d, 0x0c, "flags of descriptor {tag:#x}");
            }
            i += 3 + len;
        } else {
            let len = usize::from(tag & 7);
            let d = &b[i + 1..i + 1 + len];
            match tag >> 3 & 0xf {
                0x4 => out.push(("IRQ", le(d), 0)),
                0x8 => out.push(("IO", le(&d[1..3]), u64::from(d[6]))),
                0xf => {
                    out.push(("END", 0, 0));
                    return out;
                }
                t => panic!("unexpected small resource {t:#x}"),
            }
            i += 1 + len;
        }
    }
    panic!("no end tag in {b:02x?}");
}

#[test]
fn acpiexec_evaluates_the_host_bridges() {
    let (dir, _) = dump_sample("acpiexec");
    let p = common::sample();
    let cxl = buf_arg(&uuid_bytes(CXL_OSC_UUID));
    let pcie = buf_arg(&uuid_bytes(PCIE_OSC_UUID));
    let unknown = buf_arg(&uuid_bytes("0811B06E-4A27-44F9-8D60-3CBBC22E7B48"));
    // What Debian's 6.12 kernel sends (research notes): support 0x11f, control 0x3f; CXL
    // support 0xf, control 0x1 (memory error reporting).
    let cxl_query = buf_arg(&dwords(&[1, 0x11f, 0x3f, 0xf, 0x1]));
    let cxl_final = buf_arg(&dwords(&[0, 0x11f, 0x10, 0xf, 0]));
    let pcie_query = buf_arg(&dwords(&[1, 0x11f, 0x3f]));
    let pcie_final = buf_arg(&dwords(&[0, 0x11f, 0x10]));
    let mut cmds = Vec::new();
    for i in 0..p.host_bridges.len() {
        let d = format!("\\_SB.{}", host_bridge_name(i));
        for m in ["_HID", "_CID", "_UID", "_SEG", "_BBN", "_PXM", "_CRS"] {
            cmds.push(format!("evaluate {d}.{m}"));
        }
        cmds.push(format!("evaluate {d}._OSC {cxl} 1 5 {cxl_query}"));
        cmds.push(format!("evaluate {d}._OSC {cxl} 1 5 {cxl_final}"));
        cmds.push(format!("evaluate {d}._OSC {pcie} 1 3 {pcie_query}"));
        cmds.push(format!("evaluate {d}._OSC {pcie} 1 3 {pcie_final}"));
        cmds.push(format!("evaluate {d}._OSC {unknown} 1 3 {pcie_query}"));
        cmds.push(format!("evaluate {d}._OSC {cxl} 2 5 {cxl_query}"));
        cmds.push(format!(
            "evaluate {d}._OSC {cxl} 1 3 {}",
            buf_arg(&dwords(&[1, 0x11f, 0x3f]))
        ));
    }
    for m in [
        "CXLR._HID",
        "COM1._HID",
        "COM1._UID",
        "COM1._CRS",
        "MBRS._HID",
        "MBRS._CRS",
    ] {
        cmds.push(format!("evaluate \\_SB.{m}"));
    }
    cmds.push("evaluate \\_S5".to_string());
    let (results, out) = acpiexec(&dir, &cmds);
    assert!(problems(&out).is_empty(), "{:?}\n{out}", problems(&out));
    assert_eq!(results.len(), cmds.len(), "one result per command:\n{out}");

    let mut r = results.iter();
    let mut next = |path: &str| {
        let (p, v) = r.next().unwrap();
        assert_eq!(p, path);
        v
    };
    let osc = |d: &[u32]| Value::Buf(dwords(d));
    for (i, h) in p.host_bridges.iter().enumerate() {
        let d = format!("\\_SB.{}", host_bridge_name(i));
        assert_eq!(*next(&format!("{d}._HID")), Value::Str("ACPI0016".into()));
        assert_eq!(
            *next(&format!("{d}._CID")),
            Value::Pkg(vec![
                Value::Int(eisa("PNP0A08")),
                Value::Int(eisa("PNP0A03"))
            ])
        );
        assert_eq!(*next(&format!("{d}._UID")), Value::Int(u64::from(h.uid)));
        assert_eq!(*next(&format!("{d}._SEG")), Value::Int(0));
        assert_eq!(
            *next(&format!("{d}._BBN")),
            Value::Int(u64::from(h.buses.start))
        );
        assert_eq!(
            *next(&format!("{d}._PXM")),
            Value::Int(u64::from(cxlvm_acpi::HOST_DOMAIN)),
            "host bridges are in the vCPUs' proximity domain"
        );
        let Value::Buf(crs) = next(&format!("{d}._CRS")) else {
            panic!("_CRS is not a buffer")
        };
        let mut expect = vec![(
            "WordSpace",
            u64::from(h.buses.start),
            u64::from(h.buses.end),
        )];
        for m in &h.mmio {
            let kind = if m.base + m.size <= 1 << 32 {
                "DWordSpace"
            } else {
                "QWordSpace"
            };
            expect.push((kind, m.base, m.base + m.size - 1));
        }
        expect.push(("END", 0, 0));
        assert_eq!(resources(crs), expect, "{d}._CRS");
        // Neither the windows nor the CHBCR are in _CRS.
        for (_, min, max) in resources(crs).iter().skip(1) {
            for w in &p.windows {
                assert!(*max < w.range.base || *min >= w.range.base + w.range.size);
            }
            for o in &p.host_bridges {
                assert!(*max < o.chbcr.base || *min >= o.chbcr.base + o.chbcr.size);
            }
        }
        // CXL query: PCIe capability structure control granted, the rest of DW3 and all of
        // DW5 masked (status: query | capabilities masked); support dwords untouched.
        assert_eq!(
            *next(&format!("{d}._OSC")),
            osc(&[0x11, 0x11f, 0x10, 0xf, 0])
        );
        // CXL final call with what was granted: accepted as is.
        assert_eq!(*next(&format!("{d}._OSC")), osc(&[0, 0x11f, 0x10, 0xf, 0]));
        // PCIe UUID, 3 dwords.
        assert_eq!(*next(&format!("{d}._OSC")), osc(&[0x11, 0x11f, 0x10]));
        assert_eq!(*next(&format!("{d}._OSC")), osc(&[0, 0x11f, 0x10]));
        // Unknown UUID: status bit 2, nothing granted or changed.
        assert_eq!(*next(&format!("{d}._OSC")), osc(&[0x5, 0x11f, 0x3f]));
        // Unknown revision: status bit 3.
        assert_eq!(
            *next(&format!("{d}._OSC")),
            osc(&[0x9, 0x11f, 0x3f, 0xf, 0x1])
        );
        // CXL UUID with 3 dwords: failure (bit 1), buffer untouched otherwise.
        assert_eq!(*next(&format!("{d}._OSC")), osc(&[0x3, 0x11f, 0x3f]));
    }
    assert_eq!(*next("\\_SB.CXLR._HID"), Value::Str("ACPI0017".into()));
    assert_eq!(*next("\\_SB.COM1._HID"), Value::Int(eisa("PNP0501")));
    assert_eq!(*next("\\_SB.COM1._UID"), Value::Int(1));
    let Value::Buf(crs) = next("\\_SB.COM1._CRS") else {
        panic!("COM1._CRS")
    };
    assert_eq!(
        resources(crs),
        vec![("IO", 0x3f8, 8), ("IRQ", 1 << 4, 0), ("END", 0, 0)]
    );
    assert_eq!(*next("\\_SB.MBRS._HID"), Value::Int(eisa("PNP0C02")));
    let Value::Buf(crs) = next("\\_SB.MBRS._CRS") else {
        panic!("MBRS._CRS")
    };
    assert_eq!(
        resources(crs),
        vec![("Memory32Fixed", 0xe000_0000, 0x1000_0000), ("END", 0, 0)]
    );
    assert_eq!(
        *next("\\_S5"),
        Value::Pkg(vec![
            Value::Int(u64::from(S5_SLEEP_TYPE)),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0)
        ])
    );
}
