//! Every built guest image is a static ELF64 x86-64 executable that cxlvm can load
//! (docs/guest-abi.md, "Image").

use std::path::Path;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
/// Lowest address a segment may load at.
const IMAGE_MIN: u64 = 0x10_0000;
/// Where the kit links images.
const LINK_BASE: u64 = 0x20_0000;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

struct Phdr {
    p_type: u32,
    p_flags: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn check_image(path: &Path) {
    let name = path.display();
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(b.len() >= 64, "{name}: too short for an ELF header");
    assert_eq!(&b[..4], b"\x7fELF", "{name}: not an ELF file");
    assert_eq!(b[4], 2, "{name}: not ELF64");
    assert_eq!(b[5], 1, "{name}: not little endian");
    assert_eq!(u16_at(&b, 0x10), ET_EXEC, "{name}: not ET_EXEC");
    assert_eq!(u16_at(&b, 0x12), EM_X86_64, "{name}: not x86-64");
    let entry = u64_at(&b, 0x18);
    let phoff = u64_at(&b, 0x20) as usize;
    let phentsize = usize::from(u16_at(&b, 0x36));
    let phnum = usize::from(u16_at(&b, 0x38));
    assert_eq!(phentsize, 56, "{name}: unexpected program header size");
    assert!(
        phoff + phnum * phentsize <= b.len(),
        "{name}: program headers out of the file"
    );

    let phdrs: Vec<Phdr> = (0..phnum)
        .map(|i| {
            let at = phoff + i * phentsize;
            Phdr {
                p_type: u32_at(&b, at),
                p_flags: u32_at(&b, at + 4),
                offset: u64_at(&b, at + 8),
                vaddr: u64_at(&b, at + 0x10),
                paddr: u64_at(&b, at + 0x18),
                filesz: u64_at(&b, at + 0x20),
                memsz: u64_at(&b, at + 0x28),
            }
        })
        .collect();
    assert!(
        phdrs
            .iter()
            .all(|p| p.p_type != PT_INTERP && p.p_type != PT_DYNAMIC),
        "{name}: has PT_INTERP or PT_DYNAMIC (not a static image)"
    );
    let loads: Vec<&Phdr> = phdrs.iter().filter(|p| p.p_type == PT_LOAD).collect();
    assert!(!loads.is_empty(), "{name}: no PT_LOAD segment");
    for p in &loads {
        assert!(
            p.paddr >= IMAGE_MIN,
            "{name}: PT_LOAD at {:#x} below 1 MiB",
            p.paddr
        );
        assert_eq!(p.vaddr, p.paddr, "{name}: PT_LOAD not identity mapped");
        assert!(p.filesz <= p.memsz, "{name}: PT_LOAD with filesz > memsz");
        assert!(
            p.offset + p.filesz <= b.len() as u64,
            "{name}: PT_LOAD data out of the file"
        );
    }
    assert_eq!(
        loads.iter().map(|p| p.paddr).min(),
        Some(LINK_BASE),
        "{name}: not linked at {LINK_BASE:#x}"
    );
    let exec = loads
        .iter()
        .find(|p| (p.vaddr..p.vaddr + p.memsz).contains(&entry))
        .unwrap_or_else(|| panic!("{name}: entry {entry:#x} outside every PT_LOAD"));
    assert!(
        exec.p_flags & 1 != 0,
        "{name}: entry {entry:#x} in a non-executable segment"
    );
}

#[test]
fn every_image_is_a_static_elf64_x86_64_executable() {
    for name in cxlvm_test_guests::NAMES {
        check_image(&cxlvm_test_guests::path(name));
    }
}

#[test]
fn dir_holds_every_image() {
    for name in cxlvm_test_guests::NAMES {
        assert_eq!(
            cxlvm_test_guests::path(name),
            cxlvm_test_guests::dir().join(name)
        );
    }
}

#[test]
#[should_panic(expected = "unknown test guest `helo`")]
fn unknown_guest_names_panic() {
    cxlvm_test_guests::path("helo");
}

#[test]
fn try_path_rejects_unknown_names() {
    assert_eq!(cxlvm_test_guests::try_path("nope"), None);
    assert!(cxlvm_test_guests::try_path("spin").is_some());
}
