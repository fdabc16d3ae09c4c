use super::*;

const MIB: u64 = 1 << 20;

fn memory(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
}

fn map(size: u64) -> Vec<MemEntry> {
    vec![
        MemEntry {
            base: 0,
            size: layout::LOW_RESERVED,
            kind: MemKind::Ram,
        },
        MemEntry {
            base: 0xe_0000,
            size: 0x2_0000,
            kind: MemKind::Acpi,
        },
        MemEntry {
            base: layout::HIGH_MEMORY,
            size: size - layout::HIGH_MEMORY,
            kind: MemKind::Ram,
        },
    ]
}

fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cxlvm-boot-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A minimal x86-64 ELF: one PT_LOAD of `code` at 2 MiB and, if `pvh_entry`, a PT_NOTE with the
/// Xen PVH entry note (type 18, owner "Xen", 8-byte value).
fn elf(code: &[u8], pvh_entry: Option<u64>) -> Vec<u8> {
    let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
    let note: Vec<u8> = match pvh_entry {
        Some(e) => {
            let mut n = Vec::new();
            n.extend(4u32.to_le_bytes()); // namesz "Xen\0"
            n.extend(8u32.to_le_bytes()); // descsz
            n.extend(18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
            n.extend(b"Xen\0");
            n.extend(e.to_le_bytes());
            n
        }
        None => Vec::new(),
    };
    let phoff = 64u64;
    let data_off = phoff + 56 * u64::from(phnum);
    let code_off = data_off + note.len() as u64;
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little endian
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&(2 * MIB).to_le_bytes()); // e_entry
    b[32..40].copy_from_slice(&phoff.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&phnum.to_le_bytes());
    let ph = |ty: u32, off: u64, addr: u64, len: u64| {
        let mut p = vec![0u8; 56];
        p[..4].copy_from_slice(&ty.to_le_bytes());
        p[4..8].copy_from_slice(&5u32.to_le_bytes());
        p[8..16].copy_from_slice(&off.to_le_bytes());
        p[16..24].copy_from_slice(&addr.to_le_bytes());
        p[24..32].copy_from_slice(&addr.to_le_bytes());
        p[32..40].copy_from_slice(&len.to_le_bytes());
        p[40..48].copy_from_slice(&len.to_le_bytes());
        p[48..56].copy_from_slice(&4u64.to_le_bytes());
        p
    };
    b.extend(ph(1, code_off, 2 * MIB, code.len() as u64));
    if pvh_entry.is_some() {
        b.extend(ph(4, data_off, 0, note.len() as u64));
    }
    b.extend(&note);
    b.extend(code);
    b
}

/// A minimal bzImage: 4 setup sectors + the boot sector, then `payload` (the protected-mode
/// kernel) loaded at 1 MiB.
fn bzimage(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 5 * 512];
    b[0x1f1] = 4; // setup_sects
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version 2.15
    b[0x211] = 1; // loadflags: LOADED_HIGH
    b[0x214..0x218].copy_from_slice(&(MIB as u32).to_le_bytes()); // code32_start
    b.extend(payload);
    b
}

fn boot(kernel: PathBuf, initrd: Option<PathBuf>) -> LinuxBoot {
    LinuxBoot {
        kernel,
        initrd,
        cmdline: "console=ttyS0 earlyprintk=serial".into(),
        memory_map: map(64 * MIB),
        rsdp: Some(0xe_0000),
    }
}

#[test]
fn formats_are_detected_by_their_magic() {
    assert_eq!(
        detect(&tmp("a.elf", &elf(b"\xf4", Some(2 * MIB)))).unwrap(),
        KernelFormat::Pvh
    );
    assert_eq!(
        detect(&tmp("a.bz", &bzimage(b"\xf4"))).unwrap(),
        KernelFormat::BzImage
    );
    assert!(matches!(
        detect(&tmp("junk", b"just some text, not a kernel")),
        Err(BootError::UnknownFormat { .. })
    ));
    assert!(matches!(
        detect(&std::env::temp_dir()),
        Err(BootError::NotRegular { .. })
    ));
    assert!(matches!(
        detect(Path::new("/nonexistent/vmlinux")),
        Err(BootError::Unreadable { .. })
    ));
}

#[test]
fn pvh_kernel_gets_start_info_memory_map_cmdline_and_initrd() {
    let mem = memory(64 * MIB);
    let code = [0x90u8, 0x90, 0xf4];
    let k = tmp("pvh.elf", &elf(&code, Some(2 * MIB + 1)));
    let rd = tmp("initrd", &[0xabu8; 10_000]);
    let b = boot(k, Some(rd));
    let l = load(&mem, &b).unwrap();
    assert_eq!(l.format, KernelFormat::Pvh);
    assert_eq!(
        l.entry,
        Entry::Pvh {
            rip: 2 * MIB + 1,
            start_info: layout::BOOT_PARAMS
        }
    );
    let mut got = [0u8; 3];
    mem.read_slice(&mut got, GuestAddress(2 * MIB)).unwrap();
    assert_eq!(got, code);
    let info: hvm_start_info = mem.read_obj(GuestAddress(layout::BOOT_PARAMS)).unwrap();
    assert_eq!(info.magic, PVH_MAGIC);
    assert_eq!(info.rsdp_paddr, 0xe_0000);
    assert_eq!(info.memmap_entries, 3);
    assert_eq!(info.nr_modules, 1);
    let e: hvm_memmap_table_entry = mem
        .read_obj(GuestAddress(info.memmap_paddr + 2 * 24))
        .unwrap();
    assert_eq!((e.addr, e.size, e.type_), (MIB, 63 * MIB, 1));
    let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    let (start, end) = l.initrd.unwrap();
    assert_eq!((m.paddr, m.size), (start, end - start));
    assert_eq!(end - start, 10_000);
    assert!(end <= 64 * MIB && start % 4096 == 0, "{start:#x}..{end:#x}");
    let mut rd = vec![0u8; 10_000];
    mem.read_slice(&mut rd, GuestAddress(start)).unwrap();
    assert!(rd.iter().all(|&x| x == 0xab));
    let mut cl = vec![0u8; b.cmdline.len() + 1];
    mem.read_slice(&mut cl, GuestAddress(info.cmdline_paddr))
        .unwrap();
    assert_eq!(&cl[..b.cmdline.len()], b.cmdline.as_bytes());
    assert_eq!(cl[b.cmdline.len()], 0);
}

#[test]
fn elf_without_pvh_note_is_refused() {
    let mem = memory(64 * MIB);
    let k = tmp("nopvh.elf", &elf(b"\xf4", None));
    assert!(matches!(
        load(&mem, &boot(k, None)),
        Err(BootError::NoPvhEntry { .. })
    ));
}

#[test]
fn bzimage_gets_a_zero_page_and_long_mode_tables() {
    let mem = memory(64 * MIB);
    let k = tmp("k.bz", &bzimage(&[0xf4; 4096]));
    let l = load(&mem, &boot(k, None)).unwrap();
    assert_eq!(l.format, KernelFormat::BzImage);
    assert_eq!(
        l.entry,
        Entry::Linux64 {
            rip: MIB + 0x200,
            zero_page: layout::BOOT_PARAMS
        }
    );
    let zp: boot_params = mem.read_obj(GuestAddress(layout::BOOT_PARAMS)).unwrap();
    assert_eq!(zp.e820_entries, 3);
    assert_eq!({ zp.e820_table[1].r#type }, 3);
    assert_eq!({ zp.acpi_rsdp_addr }, 0xe_0000);
    assert_eq!({ zp.hdr.cmd_line_ptr }, layout::CMDLINE as u32);
    assert_eq!(zp.hdr.type_of_loader, LOADER_TYPE);
    // The identity map covers 4 GiB: PD entry for 3 GiB + 2 MiB maps itself.
    let pd = layout::PAGE_TABLES + 0x2000;
    let e: u64 = mem.read_obj(GuestAddress(pd + 1537 * 8)).unwrap();
    assert_eq!(e & !0xfff, 3 * (1 << 30) + 2 * MIB);
}

#[test]
fn an_initrd_that_does_not_fit_is_refused() {
    let mem = memory(8 * MIB);
    let k = tmp("small.elf", &elf(b"\xf4", Some(2 * MIB)));
    let rd = tmp("big-initrd", &vec![0u8; (7 * MIB) as usize]);
    let mut b = boot(k, Some(rd));
    b.memory_map = map(8 * MIB);
    assert!(matches!(
        load(&mem, &b),
        Err(BootError::InitrdTooLarge { .. })
    ));
}

#[test]
fn a_command_line_over_the_limit_is_refused() {
    let mem = memory(8 * MIB);
    let k = tmp("cl.elf", &elf(b"\xf4", Some(2 * MIB)));
    let mut b = boot(k, None);
    b.cmdline = "x".repeat(layout::CMDLINE_MAX as usize);
    assert!(matches!(
        load(&mem, &b),
        Err(BootError::CmdlineTooLong { .. })
    ));
}
