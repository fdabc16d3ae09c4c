//! The dump read back by the real `lspci`.

use std::process::Command;

use cxlvm_pci::{BarSpec, ConfigSpace, Endpoint, PciSegment, PciePortType, devfn, lspci_dump};

use crate::common::*;

/// Runs `lspci -F <dump> -vvv`; fails (does not skip) when pciutils is missing.
fn lspci(dump: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cxlvm-pci-lspci-{}.txt", std::process::id()));
    std::fs::write(&path, dump).unwrap();
    let out = match Command::new("lspci")
        .arg("-F")
        .arg(&path)
        .arg("-vvv")
        .output()
    {
        Ok(out) => out,
        Err(err) => panic!(
            "cannot run lspci ({err}): install pciutils (apt-get install -y pciutils) to run \
             this test"
        ),
    };
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "lspci failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The block of lspci output for function `bdf` (from its header line to the next blank line).
fn block<'a>(out: &'a str, bdf: &str) -> &'a str {
    let start = out
        .find(&format!("{bdf} "))
        .unwrap_or_else(|| panic!("{bdf} missing from lspci output:\n{out}"));
    let rest = &out[start..];
    &rest[..rest.find("\n\n").unwrap_or(rest.len())]
}

#[test]
fn lspci_decodes_the_dump() {
    let space = space(64 * GIB);
    let region = mmio_region(&space, "ep regs", 0x2_0000);
    let mut cfg = ConfigSpace::new_type0(0x8086, 0x0d93, 0x05_02_10, 1);
    cfg.add_pcie_capability(PciePortType::Endpoint, 0).unwrap();
    cfg.add_dvsec(0x1e98, 1, 0, &dvsec_body(), &[0, 0, 0xfd, 0x4f])
        .unwrap();
    let ep = Endpoint::builder("mem0", cfg)
        .bar(0, BarSpec::memory64(0x2_0000, region))
        .address_space(space.clone())
        .build()
        .unwrap();
    let rp = root_port(3);
    rp.attach(0, ep.clone()).unwrap();
    let seg = PciSegment::new("pci", 0, 0xff).unwrap();
    seg.add_root_bus(0, "hb0").unwrap();
    seg.attach(0, devfn(1, 0), rp.clone()).unwrap();
    seg.program_bus_numbers().unwrap();
    ep.assign_bar(0, 0xfe00_0000).unwrap();

    let dump = lspci_dump(&seg);
    assert_eq!(dump.lines().filter(|l| l.starts_with("000:")).count(), 2);
    let out = lspci(&dump);
    if std::env::var_os("CXLVM_PCI_SHOW_LSPCI").is_some() {
        println!("{out}");
    }

    let port = block(&out, "00:01.0");
    assert!(port.contains("PCI bridge"), "{port}");
    assert!(port.contains("Root Port"), "{port}");
    assert!(port.contains("Port #3"), "{port}");
    assert!(
        port.contains("Bus: primary=00, secondary=01, subordinate=01"),
        "{port}"
    );
    assert!(
        port.lines()
            .any(|l| l.contains("Memory behind bridge:") && l.contains("[disabled]")),
        "windows start closed: {port}"
    );

    let dev = block(&out, "01:00.0");
    let header = dev.lines().next().unwrap_or_default();
    assert!(
        header.contains("CXL") || header.contains("Memory controller"),
        "class not decoded: {header}"
    );
    assert!(dev.contains("Express (v2) Endpoint"), "{dev}");
    assert!(dev.contains("Designated Vendor-Specific"), "{dev}");
    assert!(dev.contains("Vendor=1e98 ID=0000"), "{dev}");
    assert!(
        dev.contains("Region 0: Memory at fe000000 (64-bit, non-prefetchable)"),
        "{dev}"
    );
}
