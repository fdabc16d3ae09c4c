//! Unit tests against a model vCPU and a sparse guest memory with real page tables.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::paging::{AccessKind, Walker, pf};
use crate::state::{Component, Cpu, CpuError, Gpa, Linear, Memory, Registers, System, XState};
use crate::state::{XsaveLayout, cr, flags, gpr, legacy};
use crate::{Completion, Exception, Failure, Mnemonic, complete};

/// Sparse guest memory; pages at or above `MMIO` count as MMIO (and log their accesses).
#[derive(Default)]
struct Mem {
    pages: RefCell<BTreeMap<u64, Vec<u8>>>,
    mmio_writes: RefCell<Vec<(u64, usize)>>,
}

const MMIO: u64 = 0x10_0000_0000;

impl Mem {
    fn byte(&self, a: u64) -> u8 {
        self.pages
            .borrow()
            .get(&(a & !0xfff))
            .map_or(0, |p| p[(a & 0xfff) as usize])
    }
    fn set(&self, a: u64, v: u8) {
        self.pages
            .borrow_mut()
            .entry(a & !0xfff)
            .or_insert_with(|| vec![0; 4096])[(a & 0xfff) as usize] = v;
    }
    fn put(&self, a: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.set(a + i as u64, *b);
        }
    }
    fn get(&self, a: u64, n: usize) -> Vec<u8> {
        (0..n).map(|i| self.byte(a + i as u64)).collect()
    }
    fn u64(&self, a: u64) -> u64 {
        u64::from_le_bytes(self.get(a, 8).try_into().unwrap())
    }
}

impl Memory for Mem {
    fn read(&self, gpa: Gpa, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.byte(gpa.0 + i as u64);
        }
    }
    fn write(&self, gpa: Gpa, data: &[u8]) {
        if gpa.0 >= MMIO {
            self.mmio_writes.borrow_mut().push((gpa.0, data.len()));
        }
        self.put(gpa.0, data);
    }
    fn is_ram(&self, gpa: Gpa) -> bool {
        gpa.0 < MMIO
    }
}

struct TestCpu {
    regs: Registers,
    sys: System,
    xs: XState,
}

impl Cpu for TestCpu {
    fn registers(&mut self) -> Result<&mut Registers, CpuError> {
        Ok(&mut self.regs)
    }
    fn system(&mut self) -> Result<System, CpuError> {
        Ok(self.sys)
    }
    fn xstate(&mut self) -> Result<&mut XState, CpuError> {
        Ok(&mut self.xs)
    }
}

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 0x80;
const NX: u64 = 1 << 63;
const PML4: u64 = 0x1000;

/// Page tables at 0x1000.. mapping 4 KiB pages; `map(la, gpa, flags)` adds one.
struct Tables<'a> {
    mem: &'a Mem,
    next: u64,
    levels: u32,
}

impl<'a> Tables<'a> {
    fn new(mem: &'a Mem, levels: u32) -> Self {
        Self {
            mem,
            next: PML4 + 0x1000,
            levels,
        }
    }
    fn map_at(&mut self, la: u64, gpa: u64, flags: u64, leaf_level: u32) {
        let mut table = PML4;
        for level in (leaf_level + 1..=self.levels).rev() {
            let idx = (la >> (12 + 9 * (level - 1))) & 0x1ff;
            let at = table + idx * 8;
            let e = self.mem.u64(at);
            table = if e & P == 0 {
                let t = self.next;
                self.next += 0x1000;
                self.mem.put(at, &(t | P | RW | US).to_le_bytes());
                t
            } else {
                e & 0x000f_ffff_ffff_f000
            };
        }
        let idx = (la >> (12 + 9 * (leaf_level - 1))) & 0x1ff;
        let large = if leaf_level > 1 { PS } else { 0 };
        self.mem
            .put(table + idx * 8, &(gpa | flags | large).to_le_bytes());
    }
    fn map(&mut self, la: u64, gpa: u64, flags: u64) {
        self.map_at(la, gpa, flags, 1);
    }
}

fn system(cpl: u8) -> System {
    System {
        cr0: 1 | cr::CR0_WP | cr::CR0_PG | 2,
        cr3: PML4,
        cr4: cr::CR4_PAE | cr::CR4_OSFXSR | cr::CR4_OSXSAVE,
        efer: cr::EFER_LMA | cr::EFER_NXE | (1 << 8),
        cpl,
        long_mode: true,
        fs_base: 0,
        gs_base: 0,
    }
}

fn xstate() -> XState {
    let mut image = vec![0u8; 4096];
    image[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
    image[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    image[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
    image[legacy::XSTATE_BV..legacy::XSTATE_BV + 8].copy_from_slice(&3u64.to_le_bytes());
    let mut components = vec![None; 64];
    components[2] = Some(Component {
        offset: 576,
        size: 256,
        align64: false,
    });
    XState {
        image,
        xcr0: 7,
        layout: XsaveLayout { components },
    }
}

fn cpu(cpl: u8, rip: u64) -> TestCpu {
    TestCpu {
        regs: Registers {
            rip,
            rflags: 2,
            ..Default::default()
        },
        sys: system(cpl),
        xs: xstate(),
    }
}

const CODE: u64 = 0x40_0000;
const DATA: u64 = 0x50_0000;

/// Memory with code and data pages mapped user+writable, the code holding `bytes`.
fn setup(bytes: &[u8]) -> (Mem, u64) {
    let mem = Mem::default();
    let mut t = Tables::new(&mem, 4);
    t.map(CODE, 0x20_0000, P | RW | US);
    for i in 0..4 {
        t.map(DATA + i * 0x1000, 0x30_0000 + i * 0x1000, P | RW | US);
    }
    mem.put(0x20_0000, bytes);
    let next = t.next;
    (mem, next)
}

fn run(c: &mut TestCpu, mem: &Mem, bytes: &[u8]) -> Result<Completion, Failure> {
    complete(c, mem, Some(bytes))
}

#[test]
fn walk_reports_each_permission_failure_with_its_error_code() {
    let mem = Mem::default();
    let mut t = Tables::new(&mem, 4);
    t.map(0x1000_0000, 0x7000_0000, P | RW | US);
    t.map(0x1000_1000, 0x7000_1000, P | US); // read-only
    t.map(0x1000_2000, 0x7000_2000, P | RW); // supervisor
    t.map(0x1000_3000, 0x7000_3000, P | RW | US | NX);
    let walk = |cpl: u8, la: u64, kind: AccessKind, tweak: &dyn Fn(&mut System)| {
        let mut s = system(cpl);
        tweak(&mut s);
        Walker::new(s, 2).translate(&mem, Linear(la), kind)
    };
    let none = |_: &mut System| {};
    let ok = walk(3, 0x1000_0123, AccessKind::Write, &none).unwrap();
    assert_eq!(ok.gpa, Gpa(0x7000_0123));
    assert_eq!(ok.room, 0x1000 - 0x123);
    let code = |r: Result<_, crate::Fault>| {
        let f = r.unwrap_err();
        assert_eq!(f.exception, Exception::PageFault);
        (f.cr2.unwrap(), f.error_code.unwrap())
    };
    // Not present: read (0), write (W), at CPL3 (U).
    assert_eq!(
        code(walk(0, 0x2000_0008, AccessKind::Read, &none)),
        (0x2000_0008, 0)
    );
    assert_eq!(
        code(walk(0, 0x2000_0008, AccessKind::Write, &none)),
        (0x2000_0008, pf::WRITE)
    );
    assert_eq!(
        code(walk(3, 0x2000_0008, AccessKind::Write, &none)),
        (0x2000_0008, pf::WRITE | pf::USER)
    );
    // Read-only: user write faults; supervisor write faults only with CR0.WP.
    assert_eq!(
        code(walk(3, 0x1000_1000, AccessKind::Write, &none)),
        (0x1000_1000, pf::PRESENT | pf::WRITE | pf::USER)
    );
    assert_eq!(
        code(walk(0, 0x1000_1000, AccessKind::Write, &none)).1,
        pf::PRESENT | pf::WRITE
    );
    assert!(
        walk(0, 0x1000_1000, AccessKind::Write, &|s: &mut System| s
            .cr0 &=
            !cr::CR0_WP)
        .is_ok()
    );
    // Supervisor page at CPL3.
    assert_eq!(
        code(walk(3, 0x1000_2000, AccessKind::Read, &none)).1,
        pf::PRESENT | pf::USER
    );
    // NX fetch.
    assert_eq!(
        code(walk(3, 0x1000_3000, AccessKind::Fetch, &none)).1,
        pf::PRESENT | pf::USER | pf::FETCH
    );
    assert!(walk(3, 0x1000_3000, AccessKind::Read, &none).is_ok());
    // SMAP: supervisor data access to a user page faults unless RFLAGS.AC.
    let smap = |s: &mut System| s.cr4 |= cr::CR4_SMAP;
    assert_eq!(
        code(walk(0, 0x1000_0000, AccessKind::Read, &smap)).1,
        pf::PRESENT
    );
    let mut s = system(0);
    s.cr4 |= cr::CR4_SMAP;
    assert!(
        Walker::new(s, flags::AC | 2)
            .translate(&mem, Linear(0x1000_0000), AccessKind::Read)
            .is_ok()
    );
    // SMEP: supervisor fetch from a user page.
    let smep = |s: &mut System| s.cr4 |= cr::CR4_SMEP;
    assert_eq!(
        code(walk(0, 0x1000_0000, AccessKind::Fetch, &smep)).1,
        pf::PRESENT | pf::FETCH
    );
    // Non-canonical: #GP(0), not #PF.
    let f = walk(0, 0x0000_8000_0000_0000, AccessKind::Read, &none).unwrap_err();
    assert_eq!(f.exception, Exception::GeneralProtection);
}

#[test]
fn walk_sets_accessed_and_dirty_bits() {
    let mem = Mem::default();
    let mut t = Tables::new(&mem, 4);
    t.map(0x1000_0000, 0x7000_0000, P | RW | US);
    // PML4 → PDPT → PD → PT, allocated at 0x2000, 0x3000, 0x4000; 0x1000_0000 is entry 0 of
    // its page table (index bits 20:12 are zero).
    let pte = |mem: &Mem| mem.u64(0x4000);
    let w = Walker::new(system(3), 2);
    w.translate(&mem, Linear(0x1000_0000), AccessKind::Read)
        .unwrap();
    assert_eq!(pte(&mem) & 0x60, 0x20, "read sets A only");
    w.translate(&mem, Linear(0x1000_0000), AccessKind::Write)
        .unwrap();
    assert_eq!(pte(&mem) & 0x60, 0x60, "write sets D");
    assert_ne!(mem.u64(PML4) & 0x20, 0, "upper levels accessed");
}

#[test]
fn walk_handles_large_pages_and_five_levels() {
    let mem = Mem::default();
    let mut t = Tables::new(&mem, 4);
    t.map_at(0x4000_0000, 0x8000_0000, P | RW | US, 3); // 1 GiB
    t.map_at(0x20_0000, 0x60_0000, P | RW | US, 2); // 2 MiB
    let w = Walker::new(system(3), 2);
    let a = w
        .translate(&mem, Linear(0x4123_4567), AccessKind::Read)
        .unwrap();
    assert_eq!(a.gpa, Gpa(0x8123_4567));
    assert_eq!(a.room, 0x4000_0000 - 0x0123_4567);
    let b = w
        .translate(&mem, Linear(0x21_0010), AccessKind::Read)
        .unwrap();
    assert_eq!(b.gpa, Gpa(0x61_0010));

    let mem5 = Mem::default();
    let mut t5 = Tables::new(&mem5, 5);
    let la = 0x0010_0000_0000_1000u64; // needs bits above 47
    t5.map(la, 0x9000, P | RW | US);
    let mut s = system(3);
    s.cr4 |= cr::CR4_LA57;
    let w5 = Walker::new(s, 2);
    assert_eq!(
        w5.translate(&mem5, Linear(la + 8), AccessKind::Read)
            .unwrap()
            .gpa,
        Gpa(0x9008)
    );
    // The same address is not canonical with 4 levels.
    assert_eq!(
        Walker::new(system(3), 2)
            .translate(&mem5, Linear(la), AccessKind::Read)
            .unwrap_err()
            .exception,
        Exception::GeneralProtection
    );
}

#[test]
fn avx_store_crossing_into_an_absent_page_faults_and_writes_nothing() {
    // vmovdqu [rax], ymm0
    let bytes = [0xc5, 0xfe, 0x7f, 0x00];
    let (mem, _) = setup(&bytes);
    let mut c = cpu(3, CODE);
    // DATA+0x4000 is not mapped; store 16 bytes before it.
    c.regs.gpr[gpr::RAX] = DATA + 0x4000 - 16;
    let r = run(&mut c, &mem, &bytes).unwrap();
    let Completion::Raise { mnemonic, fault } = r else {
        panic!("expected a fault, got {r:?}");
    };
    assert_eq!(mnemonic, Mnemonic::Vmovdqu);
    assert_eq!(fault.exception, Exception::PageFault);
    assert_eq!(fault.cr2, Some(DATA + 0x4000));
    assert_eq!(fault.error_code, Some(pf::WRITE | pf::USER));
    assert_eq!(mem.get(0x30_3000 - 16, 16), vec![0; 16], "nothing written");
    assert_eq!(c.regs.rip, CODE, "a fault leaves RIP on the instruction");
}

#[test]
fn avx_store_spanning_ram_and_mmio_lands_in_both() {
    let bytes = [0xc5, 0xfe, 0x7f, 0x00];
    let (mem, _) = setup(&bytes);
    let mut t = Tables {
        mem: &mem,
        next: 0x10_0000,
        levels: 4,
    };
    t.map(0x60_0000, 0x30_0000, P | RW | US);
    t.map(0x60_1000, MMIO, P | RW | US);
    let mut c = cpu(3, CODE);
    let ymm: Vec<u8> = (1..=32).collect();
    c.xs.write_vector(0, &ymm);
    c.regs.gpr[gpr::RAX] = 0x60_1000 - 8;
    assert_eq!(
        run(&mut c, &mem, &bytes).unwrap(),
        Completion::Done {
            mnemonic: Mnemonic::Vmovdqu
        }
    );
    assert_eq!(mem.get(0x30_1000 - 8, 8), ymm[..8].to_vec());
    assert_eq!(mem.get(MMIO, 24), ymm[8..].to_vec());
    assert_eq!(*mem.mmio_writes.borrow(), vec![(MMIO, 24)]);
    assert_eq!(c.regs.rip, CODE + 4);
}

#[test]
fn legacy_loads_keep_the_upper_ymm_half_and_vex_loads_clear_it() {
    let (mem, _) = setup(&[]);
    mem.put(0x30_0000, &[0xaa; 32]);
    for (bytes, upper_kept) in [
        (&[0x0f, 0x10, 0x08][..], true),        // movups xmm1, [rax]
        (&[0xc5, 0xfa, 0x6f, 0x08][..], false), // vmovdqu xmm1, [rax]
    ] {
        let mut c = cpu(3, CODE);
        c.xs.write_vector(1, &[0x55; 32]);
        c.regs.gpr[gpr::RAX] = DATA;
        run(&mut c, &mem, bytes).unwrap();
        let mut v = [0u8; 32];
        c.xs.read_vector(1, &mut v);
        assert_eq!(v[..16], [0xaa; 16]);
        let upper = if upper_kept { 0x55 } else { 0 };
        assert_eq!(v[16..], [upper; 16], "{bytes:02x?}");
    }
    // movq xmm1, [rax] zero-extends to 128 bits; movlps merges the low half.
    let mut c = cpu(3, CODE);
    c.xs.write_vector(1, &[0x55; 32]);
    c.regs.gpr[gpr::RAX] = DATA;
    run(&mut c, &mem, &[0xf3, 0x0f, 0x7e, 0x08]).unwrap();
    let mut v = [0u8; 32];
    c.xs.read_vector(1, &mut v);
    assert_eq!(
        (&v[..8], &v[8..16], &v[16..]),
        (&[0xaa; 8][..], &[0; 8][..], &[0x55; 16][..])
    );
    let mut c = cpu(3, CODE);
    c.xs.write_vector(1, &[0x55; 32]);
    c.regs.gpr[gpr::RAX] = DATA;
    run(&mut c, &mem, &[0x0f, 0x12, 0x08]).unwrap();
    c.xs.read_vector(1, &mut v);
    assert_eq!((&v[..8], &v[8..16]), (&[0xaa; 8][..], &[0x55; 8][..]));
}

#[test]
fn aligned_moves_raise_gp_on_misaligned_operands() {
    let (mem, _) = setup(&[]);
    let mut c = cpu(3, CODE);
    c.regs.gpr[gpr::RAX] = DATA + 8;
    // movaps [rax], xmm0
    let r = run(&mut c, &mem, &[0x0f, 0x29, 0x00]).unwrap();
    assert!(
        matches!(r, Completion::Raise { fault, .. } if fault.exception == Exception::GeneralProtection)
    );
}

#[test]
fn cmpxchg16b_swaps_on_match_and_loads_on_mismatch() {
    let bytes = [0x48, 0x0f, 0xc7, 0x0f]; // cmpxchg16b [rdi]
    let (mem, _) = setup(&bytes);
    mem.put(0x30_0000, &1u64.to_le_bytes());
    mem.put(0x30_0008, &2u64.to_le_bytes());
    let mut c = cpu(3, CODE);
    c.regs.gpr[gpr::RDI] = DATA;
    c.regs.gpr[gpr::RAX] = 1;
    c.regs.gpr[gpr::RDX] = 2;
    c.regs.gpr[gpr::RBX] = 3;
    c.regs.gpr[gpr::RCX] = 4;
    run(&mut c, &mem, &bytes).unwrap();
    assert_ne!(c.regs.rflags & flags::ZF, 0);
    assert_eq!((mem.u64(0x30_0000), mem.u64(0x30_0008)), (3, 4));
    // Now RDX:RAX (2:1) no longer matches 4:3.
    c.regs.rip = CODE;
    run(&mut c, &mem, &bytes).unwrap();
    assert_eq!(c.regs.rflags & flags::ZF, 0);
    assert_eq!((c.regs.gpr[gpr::RAX], c.regs.gpr[gpr::RDX]), (3, 4));
    assert_eq!((mem.u64(0x30_0000), mem.u64(0x30_0008)), (3, 4));
    // Misaligned: #GP.
    c.regs.rip = CODE;
    c.regs.gpr[gpr::RDI] = DATA + 8;
    let r = run(&mut c, &mem, &bytes).unwrap();
    assert!(
        matches!(r, Completion::Raise { fault, .. } if fault.exception == Exception::GeneralProtection)
    );
}

#[test]
fn rep_movs_and_stos_follow_the_direction_flag_and_count() {
    let (mem, _) = setup(&[]);
    let src: Vec<u8> = (0..100u8).collect();
    mem.put(0x30_0000, &src);
    // rep movsb, forward, crossing into the next page.
    let mut c = cpu(3, CODE);
    c.regs.gpr[gpr::RSI] = DATA;
    c.regs.gpr[gpr::RDI] = DATA + 0x1000 - 30;
    c.regs.gpr[gpr::RCX] = 100;
    run(&mut c, &mem, &[0xf3, 0xa4]).unwrap();
    assert_eq!(mem.get(0x30_1000 - 30, 100), src);
    assert_eq!(c.regs.gpr[gpr::RCX], 0);
    assert_eq!(c.regs.gpr[gpr::RSI], DATA + 100);
    assert_eq!(c.regs.rip, CODE + 2);
    // rep stosq backwards (DF=1): 3 quadwords ending at DATA+0x2010.
    let mut c = cpu(3, CODE);
    c.regs.rflags |= flags::DF;
    c.regs.gpr[gpr::RDI] = DATA + 0x2010;
    c.regs.gpr[gpr::RCX] = 3;
    c.regs.gpr[gpr::RAX] = 0x1122_3344_5566_7788;
    run(&mut c, &mem, &[0xf3, 0x48, 0xab]).unwrap();
    for q in 0..3 {
        assert_eq!(mem.u64(0x30_2010 - 8 * q), 0x1122_3344_5566_7788);
    }
    assert_eq!(c.regs.gpr[gpr::RDI], DATA + 0x2010 - 24);
    // A count of zero does nothing but advance RIP.
    let mut c = cpu(3, CODE);
    run(&mut c, &mem, &[0xf3, 0xa4]).unwrap();
    assert_eq!(c.regs.rip, CODE + 2);
}

#[test]
fn rep_string_faults_after_the_iterations_it_completed() {
    let (mem, _) = setup(&[]);
    let mut c = cpu(3, CODE);
    c.regs.gpr[gpr::RDI] = DATA + 0x4000 - 4; // 4 bytes before an absent page
    c.regs.gpr[gpr::RCX] = 10;
    c.regs.gpr[gpr::RAX] = 0x77;
    let r = run(&mut c, &mem, &[0xf3, 0xaa]).unwrap(); // rep stosb
    assert!(matches!(r, Completion::Raise { fault, .. } if fault.cr2 == Some(DATA + 0x4000)));
    assert_eq!(c.regs.gpr[gpr::RCX], 6);
    assert_eq!(c.regs.gpr[gpr::RDI], DATA + 0x4000);
    assert_eq!(c.regs.rip, CODE);
    assert_eq!(mem.get(0x30_4000 - 4, 4), vec![0x77; 4]);
}

#[test]
fn xsavec_then_xrstor_restores_the_saved_registers() {
    let (mem, _) = setup(&[]);
    let mut c = cpu(3, CODE);
    let y0: Vec<u8> = (0..32).map(|i| i as u8 ^ 0x3c).collect();
    c.xs.write_vector(0, &y0);
    c.xs.set_mxcsr(0x1fa0);
    c.regs.gpr[gpr::RDI] = DATA;
    c.regs.gpr[gpr::RAX] = 7;
    // xsavec [rdi] of AVX only leaves MXCSR's field alone.
    mem.put(0x30_0000 + 24, &[0xee; 4]);
    c.regs.gpr[gpr::RAX] = 4;
    run(&mut c, &mem, &[0x0f, 0xc7, 0x27]).unwrap();
    assert_eq!(mem.get(0x30_0000 + 24, 4), vec![0xee; 4]);
    assert_eq!(mem.u64(0x30_0000 + 520), 4 | 1 << 63, "XCOMP_BV");
    // xsavec [rdi] of x87|SSE|AVX
    c.regs.rip = CODE;
    c.regs.gpr[gpr::RAX] = 7;
    run(&mut c, &mem, &[0x0f, 0xc7, 0x27]).unwrap();
    assert_eq!(mem.u64(0x30_0000 + 512), 7, "XSTATE_BV");
    assert_eq!(mem.u64(0x30_0000 + 520), 7 | 1 << 63, "XCOMP_BV");
    assert_eq!(mem.get(0x30_0000 + 576, 16), y0[16..].to_vec(), "YMM0 high");
    // Clobber, then xrstor [rdi].
    c.xs.write_vector(0, &[0; 32]);
    c.xs.set_mxcsr(0x1f80);
    c.regs.rip = CODE;
    run(&mut c, &mem, &[0x0f, 0xae, 0x2f]).unwrap();
    let mut v = [0u8; 32];
    c.xs.read_vector(0, &mut v);
    assert_eq!(v.to_vec(), y0);
    assert_eq!(c.xs.mxcsr(), 0x1fa0);
    assert_eq!(c.xs.xinuse() & 7, 7);
    // A header with reserved bytes set: #GP, nothing restored.
    mem.put(0x30_0000 + 540, &[1]);
    c.regs.rip = CODE;
    let r = run(&mut c, &mem, &[0x0f, 0xae, 0x2f]).unwrap();
    assert!(
        matches!(r, Completion::Raise { fault, .. } if fault.exception == Exception::GeneralProtection)
    );
}

#[test]
fn xrstor_initialises_components_absent_from_xstate_bv() {
    let (mem, _) = setup(&[]);
    let mut c = cpu(3, CODE);
    c.xs.write_vector(3, &[0x99; 32]);
    // A standard-form area whose XSTATE_BV is 0: every requested component initialised.
    c.regs.gpr[gpr::RDI] = DATA;
    c.regs.gpr[gpr::RAX] = 7;
    mem.put(0x30_0000 + 24, &0x1f80u32.to_le_bytes());
    run(&mut c, &mem, &[0x0f, 0xae, 0x2f]).unwrap();
    let mut v = [0u8; 32];
    c.xs.read_vector(3, &mut v);
    assert_eq!(v, [0; 32]);
    assert_eq!(c.xs.xinuse() & 7, 0);
    assert_eq!(
        u16::from_le_bytes([c.xs.image[0], c.xs.image[1]]),
        0x037f,
        "x87 FCW at init"
    );
}

#[test]
fn ring0_int3_ldmxcsr_clac_stac_fwait() {
    let (mem, _) = setup(&[]);
    // int3: #BP with RIP past it.
    let mut c = cpu(0, CODE);
    let r = run(&mut c, &mem, &[0xcc]).unwrap();
    assert!(
        matches!(r, Completion::Raise { fault, .. } if fault.exception == Exception::Breakpoint)
    );
    assert_eq!(c.regs.rip, CODE + 1);
    // ldmxcsr [rax]: a valid value loads; a reserved bit raises #GP(0).
    let mut c = cpu(0, CODE);
    c.regs.gpr[gpr::RAX] = DATA;
    mem.put(0x30_0000, &0x9fc0u32.to_le_bytes());
    run(&mut c, &mem, &[0x0f, 0xae, 0x10]).unwrap();
    assert_eq!(c.xs.mxcsr(), 0x9fc0);
    mem.put(0x30_0000, &0x8000_0000u32.to_le_bytes());
    c.regs.rip = CODE;
    let r = run(&mut c, &mem, &[0x0f, 0xae, 0x10]).unwrap();
    assert!(matches!(r, Completion::Raise { fault, .. } if fault == crate::Fault::gp(0)));
    // stmxcsr [rax]
    c.regs.rip = CODE;
    run(&mut c, &mem, &[0x0f, 0xae, 0x18]).unwrap();
    assert_eq!(mem.get(0x30_0000, 4), 0x9fc0u32.to_le_bytes().to_vec());
    // stac / clac
    run(&mut c, &mem, &[0x0f, 0x01, 0xcb]).unwrap();
    assert_ne!(c.regs.rflags & flags::AC, 0);
    run(&mut c, &mem, &[0x0f, 0x01, 0xca]).unwrap();
    assert_eq!(c.regs.rflags & flags::AC, 0);
    // clac at CPL3: #UD.
    let mut u = cpu(3, CODE);
    let r = run(&mut u, &mem, &[0x0f, 0x01, 0xca]).unwrap();
    assert!(
        matches!(r, Completion::Raise { fault, .. } if fault.exception == Exception::InvalidOpcode)
    );
    // xgetbv with ECX = 0: XCR0 in EDX:EAX; ECX = 2: #GP(0).
    let rip = c.regs.rip;
    c.regs.gpr[gpr::RCX] = 0;
    run(&mut c, &mem, &[0x0f, 0x01, 0xd0]).unwrap();
    assert_eq!((c.regs.gpr[gpr::RAX], c.regs.gpr[gpr::RDX]), (7, 0));
    assert_eq!(c.regs.rip, rip + 3);
    c.regs.gpr[gpr::RCX] = 2;
    let r = run(&mut c, &mem, &[0x0f, 0x01, 0xd0]).unwrap();
    assert!(matches!(r, Completion::Raise { fault, .. } if fault == crate::Fault::gp(0)));
    c.regs.rip = rip;
    // fwait: nothing pending, a no-op; with FSW.ES set, #MF.
    run(&mut c, &mem, &[0x9b]).unwrap();
    assert_eq!(c.regs.rip, rip + 1);
    c.xs.image[2] = 0x80;
    let r = run(&mut c, &mem, &[0x9b]).unwrap();
    assert!(
        matches!(r, Completion::Raise { fault, .. } if fault.exception == Exception::MathFault)
    );
}

#[test]
fn uncovered_instructions_and_bad_bytes_are_failures_with_the_mnemonic() {
    let (mem, _) = setup(&[]);
    let mut c = cpu(3, CODE);
    let r = run(&mut c, &mem, &[0x0f, 0xa2]); // cpuid
    assert!(matches!(
        r,
        Err(Failure::Unsupported {
            mnemonic: Mnemonic::Cpuid
        })
    ));
    let r = run(&mut c, &mem, &[0x0f, 0xff]);
    assert!(matches!(r, Err(Failure::Decode { .. })));
    // Without KVM's bytes the instruction is fetched through the page tables.
    let (mem, _) = setup(&[0xf3, 0xa4]);
    let mut c = cpu(3, CODE);
    assert_eq!(
        complete(&mut c, &mem, None).unwrap(),
        Completion::Done {
            mnemonic: Mnemonic::Movsb
        }
    );
    // ... and a fetch from the MMIO path is refused.
    let mem = Mem::default();
    let mut t = Tables::new(&mem, 4);
    t.map(CODE, MMIO, P | RW | US);
    let mut c = cpu(3, CODE);
    assert!(matches!(
        complete(&mut c, &mem, None),
        Err(Failure::FetchFromMmio { gpa: Gpa(MMIO) })
    ));
}

#[test]
fn movdir64b_copies_64_bytes_to_an_aligned_destination() {
    let (mem, _) = setup(&[]);
    let src: Vec<u8> = (0..64).collect();
    mem.put(0x30_0000, &src);
    let mut c = cpu(3, CODE);
    c.regs.gpr[gpr::RSI] = DATA;
    c.regs.gpr[gpr::RDI] = DATA + 0x1000;
    // movdir64b rdi, [rsi]
    run(&mut c, &mem, &[0x66, 0x0f, 0x38, 0xf8, 0x3e]).unwrap();
    assert_eq!(mem.get(0x30_1000, 64), src);
    c.regs.rip = CODE;
    c.regs.gpr[gpr::RDI] = DATA + 0x1008;
    let r = run(&mut c, &mem, &[0x66, 0x0f, 0x38, 0xf8, 0x3e]).unwrap();
    assert!(
        matches!(r, Completion::Raise { fault, .. } if fault.exception == Exception::GeneralProtection)
    );
}
