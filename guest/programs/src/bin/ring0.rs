//! `ring0`: instructions and exceptions at CPL0 (boot it with cxlvm's `Privilege::Kernel`).
//!
//! The program installs the kit's IDT, builds its own 4-level page tables (RAM and the
//! port-I/O window identity-mapped with 2 MiB pages, the scratch window too, and remappable 4 KiB
//! test pages at [`TEST_VA`]), loads CR3, runs the selected cases at CPL0 recording what it sees,
//! then drops to CPL3 to check and print (at CPL0 on `kvm_pvm` every instruction goes through
//! KVM's emulator, which cannot run the SSE code `core::fmt` uses).
//!
//! `mode=` (default `all`): `int3`, `fwait`, `mxcsr`, `smap`, `sse`, `pagefault`, or `all`.
//! - `int3`: `int3` reaches #BP once with the frame's RIP right after it; execution continues.
//! - `fwait`: `fwait` raises nothing.
//! - `mxcsr`: `ldmxcsr`/`stmxcsr` round trips; `ldmxcsr` with bit 31 set raises #GP(0) at the
//!   instruction, which the handler skips; MXCSR is unchanged by it.
//! - `smap`: `stac` sets RFLAGS.AC, `clac` clears it (needs CPUID SMAP).
//! - `sse`: `movups`/`movaps`/`movdqu`/`movq` loads and stores on RAM; the loaded registers are
//!   stored at CPL3 (natively) after the drop, so this case runs last.
//! - `pagefault` (needs AVX and a scratch window): #PF from AVX and plain accesses to test pages
//!   (not present, read-only, crossing into a not-present page) with CR2 and error code checked,
//!   the handler mapping the page and the access completing; and a `vmovdqu` store spanning a RAM
//!   page and a scratch-window page (alias off).
//!
//! Output: `ring0 <case> ok` or `ring0 <case> MISMATCH ...` per case (plus detail lines); exit
//! status 0 all passed, 2 bad argument, 3 no scratch window (pagefault), 4 a mismatch, 5 the CPU
//! lacks a feature a case needs (named), 6 not entered at CPL0, 7 page tables failed.
#![no_std]
#![no_main]

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use cxlvm_guest::idt::{self, ExceptionContext, pf, vector};
use cxlvm_guest::paging::{self, Arena, PAGE_4K, PageTables, Pte};
use cxlvm_guest::sync::SpinLock;
use cxlvm_guest::{BootInfo, DeviceKind, MemoryKind, arg, console, cpu, port, println};

cxlvm_guest::entry!(main);

const BAD_ARG: i32 = 2;
const NO_DEVICE: i32 = 3;
const MISMATCH: i32 = 4;
const UNSUPPORTED: i32 = 5;
const NOT_RING0: i32 = 6;
const PAGING_FAILED: i32 = 7;

/// Linear base of the remappable 4 KiB test pages (far from every identity mapping: RAM, the
/// 32-bit hole, the scratch window at 64 GiB, the aperture, CXL windows below 64 TiB).
const TEST_VA: u64 = 0x7000_0000_0000;
/// Test pages (and RAM frames: page `i` maps frame `i`, except [`WINDOW_PAGE`]).
const PAGES: usize = 12;

// Test pages of the pagefault case.
/// (a) not present, AVX store.
const P_AVX_NP_STORE: usize = 0;
/// (b) read-only, AVX store.
const P_AVX_RO_STORE: usize = 1;
/// (c) not present, AVX load.
const P_AVX_NP_LOAD: usize = 2;
/// (d) present, then not present: AVX store crossing.
const P_AVX_CROSS: usize = 3;
/// (e) present RAM page followed by the scratch-window page.
const P_SPAN: usize = 5;
/// The page mapped to the scratch window's first page.
const WINDOW_PAGE: usize = 6;
/// (b') read-only, plain store.
const P_MOV_RO_STORE: usize = 7;
/// (c') not present, plain load.
const P_MOV_NP_LOAD: usize = 8;
/// (d') present, then not present: plain 8-byte store crossing.
const P_MOV_CROSS: usize = 9;

/// Page tables: PML4, a PDPT and PD per identity range group, one PDPT/PD/PT for the test
/// pages.
static TABLES: Arena<24> = Arena::new();

/// RAM frames behind the test pages.
#[repr(C, align(4096))]
struct Frames(UnsafeCell<[[u8; 4096]; PAGES]>);
// SAFETY: accessed with volatile byte/word accesses only, on vCPU 0.
unsafe impl Sync for Frames {}
static FRAMES: Frames = Frames(UnsafeCell::new([[0; 4096]; PAGES]));

fn frame(i: usize) -> u64 {
    FRAMES.0.get().addr() as u64 + i as u64 * PAGE_4K
}

/// What each test page maps to when the handler makes it present (physical address).
static TARGET: [AtomicU64; PAGES] = [const { AtomicU64::new(0) }; PAGES];
/// The test pages' entries.
static PTES: SpinLock<[Option<Pte>; PAGES]> = SpinLock::new([None; PAGES]);

/// Exceptions seen, in order.
const LOG_MAX: usize = 32;
struct Log {
    count: AtomicU64,
    vector: [AtomicU64; LOG_MAX],
    error: [AtomicU64; LOG_MAX],
    rip: [AtomicU64; LOG_MAX],
    cr2: [AtomicU64; LOG_MAX],
    /// The u64 at [`PROBE`] when the exception came (0 when no probe was set).
    probe: [AtomicU64; LOG_MAX],
}
static LOG: Log = Log {
    count: AtomicU64::new(0),
    vector: [const { AtomicU64::new(0) }; LOG_MAX],
    error: [const { AtomicU64::new(0) }; LOG_MAX],
    rip: [const { AtomicU64::new(0) }; LOG_MAX],
    cr2: [const { AtomicU64::new(0) }; LOG_MAX],
    probe: [const { AtomicU64::new(0) }; LOG_MAX],
};

#[derive(Clone, Copy, Debug)]
struct Entry {
    vector: u64,
    error: u64,
    rip: u64,
    cr2: u64,
    probe: u64,
}

fn log_count() -> u64 {
    LOG.count.load(Relaxed)
}

fn log_entry(i: u64) -> Entry {
    let i = i as usize;
    Entry {
        vector: LOG.vector[i].load(Relaxed),
        error: LOG.error[i].load(Relaxed),
        rip: LOG.rip[i].load(Relaxed),
        cr2: LOG.cr2[i].load(Relaxed),
        probe: LOG.probe[i].load(Relaxed),
    }
}

/// Bytes of the faulting instruction the #GP handler skips (0: none expected).
static SKIP_LEN: AtomicU64 = AtomicU64::new(0);
/// Address the #PF handler reads (u64) into the log entry (0: none).
static PROBE: AtomicU64 = AtomicU64::new(0);

/// The exception handler: logs every exception; takes #BP, #GP with [`SKIP_LEN`] set, and #PF
/// on a test page (maps it, writable, to its target); anything else is unhandled.
fn handler(ctx: &mut ExceptionContext) -> bool {
    let n = LOG.count.load(Relaxed);
    let cr2 = idt::read_cr2();
    if (n as usize) < LOG_MAX {
        let i = n as usize;
        LOG.vector[i].store(ctx.vector, Relaxed);
        LOG.error[i].store(ctx.error_code, Relaxed);
        LOG.rip[i].store(ctx.frame.rip, Relaxed);
        LOG.cr2[i].store(if ctx.vector == 14 { cr2 } else { 0 }, Relaxed);
        let probe = PROBE.load(Relaxed);
        let value = if probe == 0 {
            0
        } else {
            // SAFETY: PROBE is only set to an 8-byte-aligned address inside FRAMES.
            unsafe { core::ptr::with_exposed_provenance::<u64>(probe as usize).read_volatile() }
        };
        LOG.probe[i].store(value, Relaxed);
    }
    LOG.count.store(n + 1, Relaxed);
    match ctx.vector as u8 {
        vector::BP => true,
        vector::GP => {
            let len = SKIP_LEN.load(Relaxed);
            if len == 0 {
                return false;
            }
            SKIP_LEN.store(0, Relaxed);
            ctx.frame.rip += len;
            true
        }
        vector::PF => {
            let page = cr2.wrapping_sub(TEST_VA) / PAGE_4K;
            if cr2 < TEST_VA || page >= PAGES as u64 {
                return false;
            }
            let Some(pte) = PTES.lock()[page as usize] else {
                return false;
            };
            let target = TARGET[page as usize].load(Relaxed);
            pte.set(target | paging::PRESENT | paging::WRITABLE | paging::USER);
            // SAFETY: CPL0 (exceptions here come from ring-0 code).
            unsafe { idt::invlpg(cr2) };
            true
        }
        _ => false,
    }
}

/// Observations of the ring-0 part of a case (checked at CPL3).
struct Obs<const N: usize>([AtomicU64; N]);
impl<const N: usize> Obs<N> {
    const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; N])
    }
    fn set(&self, i: usize, v: u64) {
        self.0[i].store(v, Relaxed);
    }
    fn get(&self, i: usize) -> u64 {
        self.0[i].load(Relaxed)
    }
}

const CASES: [&str; 6] = ["int3", "fwait", "mxcsr", "smap", "pagefault", "sse"];

fn main(boot: &BootInfo, vcpu: u32) -> i32 {
    if vcpu != 0 {
        return 0;
    }
    let mode = arg("mode").unwrap_or("all");
    let selected = |case: &str| mode == "all" || mode == case;
    if !(mode == "all" || CASES.contains(&mode)) {
        // CPL3 entry prints fine; at CPL0 this string has no numbers.
        console::write_str("ring0: bad mode (int3, fwait, mxcsr, smap, sse, pagefault, all)\n");
        return BAD_ARG;
    }
    if idt::cpl() != 0 {
        println!(
            "ring0: entered at CPL{}, not CPL0 (boot with Privilege::Kernel)",
            idt::cpl()
        );
        return NOT_RING0;
    }
    console::write_str("ring0: at CPL0, installing the IDT\n");
    idt::install(handler);
    let window = boot.find_device(DeviceKind::ScratchWindow);
    if let Err(what) = build_tables(boot, window.map(|w| w.base)) {
        console::write_str("ring0: page tables: ");
        console::write_str(what);
        console::write_byte(b'\n');
        return PAGING_FAILED;
    }
    console::write_str("ring0: own page tables loaded\n");

    // Not `cpu::has_avx`: XGETBV is not emulated at CPL0 on kvm_pvm. cxlvm enables in XCR0
    // what CPUID 0xd reports (docs/guest-abi.md); checked with XGETBV at CPL3 below.
    let avx = avx_by_cpuid();
    let smap = cpu::cpuid(0, 0).eax >= 7 && cpu::cpuid(7, 0).ebx & (1 << 20) != 0;
    let window_ok = window.is_some_and(|w| w.size >= PAGE_4K);
    let alias_off =
        window.is_some_and(|w| port::inl(w.control_port().unwrap_or(port::SCRATCH_CONTROL)) == 0);
    if selected("int3") {
        int3_run();
    }
    if selected("fwait") {
        fwait_run();
    }
    if selected("mxcsr") {
        mxcsr_run();
    }
    if selected("smap") && smap {
        smap_run();
    }
    if selected("pagefault") && avx && window_ok && alias_off {
        pagefault_run();
    }
    if selected("sse") {
        // Drops to CPL3 inside (its registers are stored natively there).
        sse_run_then_enter_user_mode();
    } else {
        // SAFETY: CPL0; every entry of the tables built above is user-accessible.
        unsafe { idt::enter_user_mode() };
    }
    if idt::cpl() != 3 {
        println!("ring0: not at CPL3 after the drop");
        return MISMATCH;
    }
    if avx != cpu::has_avx() {
        println!("ring0: CPUID says AVX={avx} but XGETBV disagrees");
        return MISMATCH;
    }

    let mut failed = false;
    let mut unsupported = false;
    let mut check = |case: &str, result: Result<(), ()>| {
        if result.is_err() {
            failed = true;
        } else {
            println!("ring0 {case} ok");
        }
    };
    if selected("int3") {
        check("int3", int3_check());
    }
    if selected("fwait") {
        check("fwait", fwait_check());
    }
    if selected("mxcsr") {
        check("mxcsr", mxcsr_check());
    }
    if selected("smap") {
        if smap {
            check("smap", smap_check());
        } else {
            println!("ring0 smap NOT RUN: the CPU lacks SMAP (CPUID.7.0:EBX[20])");
            unsupported = true;
        }
    }
    if selected("pagefault") {
        if !avx {
            println!("ring0 pagefault NOT RUN: the CPU lacks AVX");
            unsupported = true;
        } else if !window_ok {
            println!("ring0 pagefault: no scratch window (needs --scratch-window)");
            return NO_DEVICE;
        } else if !alias_off {
            println!("ring0 pagefault MISMATCH: the scratch window alias is on at start");
            check("pagefault", Err(()));
        } else {
            check("pagefault", pagefault_check(window.map_or(0, |w| w.base)));
        }
    }
    if selected("sse") {
        check("sse", sse_check());
    }
    let total = log_count();
    println!("ring0: {total} exceptions in all");
    if failed {
        MISMATCH
    } else if unsupported {
        UNSUPPORTED
    } else {
        0
    }
}

/// AVX usable according to CPUID alone: AVX and OSXSAVE, and x87|SSE|AVX state supported.
fn avx_by_cpuid() -> bool {
    let ecx = cpu::cpuid(1, 0).ecx;
    ecx & (1 << 28) != 0
        && ecx & (1 << 27) != 0
        && cpu::cpuid(0, 0).eax >= 0xd
        && cpu::cpuid(0xd, 0).eax & 0b111 == 0b111
}

/// Identity-maps RAM, the port-I/O window and the scratch window with 2 MiB pages, maps the test
/// pages (4 KiB) and loads CR3.
fn build_tables(boot: &BootInfo, window: Option<u64>) -> Result<(), &'static str> {
    // SAFETY: TABLES is used by this builder only, built once on vCPU 0.
    let mut pt = unsafe { PageTables::new(&TABLES) };
    let err = |_| "mapping failed (out of tables or conflict)";
    for r in boot.memory_map() {
        if r.kind == MemoryKind::Ram {
            pt.identity_2m(r.base, r.base + r.size).map_err(err)?;
        }
    }
    let pio = port::WINDOW_BASE;
    pt.identity_2m(pio, pio + 0x1_0000).map_err(err)?;
    if let Some(base) = window {
        pt.identity_2m(base, base + paging::PAGE_2M).map_err(err)?;
    }
    let mut ptes = PTES.lock();
    for i in 0..PAGES {
        let target = if i == WINDOW_PAGE {
            window.unwrap_or(frame(i))
        } else {
            frame(i)
        };
        TARGET[i].store(target, Relaxed);
        let rw = paging::PRESENT | paging::WRITABLE | paging::USER;
        let flags = match i {
            P_AVX_NP_STORE | P_AVX_NP_LOAD | P_MOV_NP_LOAD => 0,
            x if x == P_AVX_CROSS + 1 || x == P_MOV_CROSS + 1 => 0,
            P_AVX_RO_STORE | P_MOV_RO_STORE => paging::PRESENT | paging::USER,
            _ => rw,
        };
        let va = TEST_VA + i as u64 * PAGE_4K;
        ptes[i] = Some(pt.map_4k(va, target, flags).map_err(err)?);
    }
    drop(ptes);
    // SAFETY: CPL0; the new tables map the image, stacks, boot info and RAM (all RAM entries),
    // and the port-I/O window, at the same addresses as cxlvm's tables.
    unsafe { idt::write_cr3(pt.root()) };
    Ok(())
}

fn fill(addr: u64, len: u64, seed: u8) {
    for k in 0..len {
        // SAFETY: callers pass ranges inside FRAMES or the program's own statics.
        unsafe {
            core::ptr::with_exposed_provenance_mut::<u8>((addr + k) as usize)
                .write_volatile(seed.wrapping_add((k as u8).wrapping_mul(7)))
        }
    }
}

fn byte(addr: u64) -> u8 {
    // SAFETY: callers pass addresses inside FRAMES, statics or the (identity-mapped) window.
    unsafe { core::ptr::with_exposed_provenance::<u8>(addr as usize).read_volatile() }
}

/// Compares `len` bytes at `got` with those at `want` and prints the first difference.
fn compare(case: &str, what: &str, got: u64, want: u64, len: u64) -> Result<(), ()> {
    for k in 0..len {
        let (g, w) = (byte(got + k), byte(want + k));
        if g != w {
            println!(
                "ring0 {case} MISMATCH {what}: byte {k} at {:#x} is {g:#04x}, expected {w:#04x}",
                got + k
            );
            return Err(());
        }
    }
    Ok(())
}

/// Checks that exactly the exceptions `want` (vector, error code, RIP or 0 = any, CR2 or 0 =
/// none) were logged from index `from` to `to`.
fn expect_log(case: &str, from: u64, to: u64, want: &[(u64, u64, u64, u64)]) -> Result<(), ()> {
    if to - from != want.len() as u64 {
        println!(
            "ring0 {case} MISMATCH: {} exceptions, expected {}",
            to - from,
            want.len()
        );
        for i in from..to.min(LOG_MAX as u64) {
            let e = log_entry(i);
            println!(
                "ring0 {case}   vector={} error={:#x} rip={:#x} cr2={:#x}",
                e.vector, e.error, e.rip, e.cr2
            );
        }
        return Err(());
    }
    for (k, &(vector, error, rip, cr2)) in want.iter().enumerate() {
        let e = log_entry(from + k as u64);
        let rip_ok = rip == 0 || e.rip == rip;
        if e.vector != vector || e.error != error || !rip_ok || e.cr2 != cr2 {
            println!(
                "ring0 {case} MISMATCH: exception vector={} error={:#x} rip={:#x} cr2={:#x}, expected vector={vector} error={error:#x} rip={rip:#x} cr2={cr2:#x}",
                e.vector, e.error, e.rip, e.cr2
            );
            return Err(());
        }
    }
    Ok(())
}

// ---- int3 ----

static INT3: Obs<4> = Obs::new();

fn int3_run() {
    INT3.set(0, log_count());
    let after: u64;
    // SAFETY: INT3 traps to the #BP handler, which returns to the next instruction; no
    // register changes.
    unsafe { asm!("lea {a}, [rip + 2f]", "int3", "2:", a = out(reg) after, options(nostack)) }
    INT3.set(1, after);
    INT3.set(2, 1);
    INT3.set(3, log_count());
}

fn int3_check() -> Result<(), ()> {
    let (from, after, continued, to) = (INT3.get(0), INT3.get(1), INT3.get(2), INT3.get(3));
    if continued != 1 {
        println!("ring0 int3 MISMATCH: execution did not continue after int3");
        return Err(());
    }
    expect_log("int3", from, to, &[(3, 0, after, 0)])?;
    println!("ring0 int3: #BP count=1 frame rip={after:#x} (the byte after int3)");
    Ok(())
}

// ---- fwait ----

static FWAIT: Obs<3> = Obs::new();

fn fwait_run() {
    FWAIT.set(0, log_count());
    // SAFETY: FWAIT checks for pending x87 exceptions; there are none (FNINIT state at entry).
    unsafe { asm!("fwait", options(nomem, nostack)) }
    FWAIT.set(1, 1);
    FWAIT.set(2, log_count());
}

fn fwait_check() -> Result<(), ()> {
    if FWAIT.get(1) != 1 {
        println!("ring0 fwait MISMATCH: execution did not continue");
        return Err(());
    }
    expect_log("fwait", FWAIT.get(0), FWAIT.get(2), &[])
}

// ---- mxcsr ----

const MXCSR_VALUES: [u32; 6] = [0x1f80, 0x9fc0, 0x7f80, 0x3fbf, 0x1fc0, 0x1f80];
/// Reserved bit 31 set: `ldmxcsr` raises #GP(0).
const MXCSR_BAD: u32 = 0x8000_1f80;

static MXCSR: Obs<12> = Obs::new();

fn mxcsr_run() {
    for (i, &v) in MXCSR_VALUES.iter().enumerate() {
        let src = v;
        let mut dst: u32 = 0xdead_beef;
        // SAFETY: `src` has no reserved bit set; LDMXCSR/STMXCSR only touch MXCSR and `dst`.
        unsafe {
            asm!(
                "ldmxcsr [{s}]",
                "stmxcsr [{d}]",
                s = in(reg) &raw const src,
                d = in(reg) &raw mut dst,
                options(nostack, preserves_flags),
            )
        }
        MXCSR.set(i, u64::from(dst));
    }
    MXCSR.set(6, log_count());
    let bad = MXCSR_BAD;
    let mut after: u32 = 0;
    let at: u64;
    // SAFETY: LDMXCSR of a value with a reserved bit raises #GP(0) without changing MXCSR; the
    // handler advances RIP by SKIP_LEN (the instruction's length, from the labels) and returns.
    unsafe {
        asm!(
            "lea {at}, [rip + 2f]",
            "lea {len}, [rip + 3f]",
            "sub {len}, {at}",
            "mov qword ptr [{skip}], {len}",
            "2:",
            "ldmxcsr [{bad}]",
            "3:",
            "stmxcsr [{after}]",
            at = out(reg) at,
            len = out(reg) _,
            skip = in(reg) SKIP_LEN.as_ptr(),
            bad = in(reg) &raw const bad,
            after = in(reg) &raw mut after,
            options(nostack, preserves_flags),
        )
    }
    MXCSR.set(7, at);
    MXCSR.set(8, u64::from(after));
    MXCSR.set(9, log_count());
    MXCSR.set(10, SKIP_LEN.load(Relaxed));
    let reset: u32 = 0x1f80;
    // SAFETY: the default MXCSR.
    unsafe { asm!("ldmxcsr [{}]", in(reg) &raw const reset, options(nostack, preserves_flags)) }
}

fn mxcsr_check() -> Result<(), ()> {
    for (i, &v) in MXCSR_VALUES.iter().enumerate() {
        let got = MXCSR.get(i);
        if got != u64::from(v) {
            println!("ring0 mxcsr MISMATCH: ldmxcsr {v:#x} then stmxcsr gives {got:#x}");
            return Err(());
        }
    }
    let at = MXCSR.get(7);
    expect_log("mxcsr", MXCSR.get(6), MXCSR.get(9), &[(13, 0, at, 0)])?;
    if MXCSR.get(10) != 0 {
        println!("ring0 mxcsr MISMATCH: the #GP handler did not skip the instruction");
        return Err(());
    }
    let last = MXCSR_VALUES[MXCSR_VALUES.len() - 1];
    if MXCSR.get(8) != u64::from(last) {
        println!(
            "ring0 mxcsr MISMATCH: MXCSR {:#x} after the faulting ldmxcsr, expected {last:#x}",
            MXCSR.get(8)
        );
        return Err(());
    }
    println!(
        "ring0 mxcsr: {} values round-trip; ldmxcsr {MXCSR_BAD:#x} -> #GP(0) at {at:#x}",
        MXCSR_VALUES.len()
    );
    Ok(())
}

// ---- smap ----

static SMAP: Obs<3> = Obs::new();
const RFLAGS_AC: u64 = 1 << 18;

fn smap_run() {
    let (a, b, c): (u64, u64, u64);
    // SAFETY: CLAC/STAC only change RFLAGS.AC (CPL0, CPUID SMAP checked by the caller); AC has
    // no effect at CPL0 and is clear again at the end. The pushes are popped at once.
    unsafe {
        asm!(
            "clac",
            "pushfq",
            "pop {a}",
            "stac",
            "pushfq",
            "pop {b}",
            "clac",
            "pushfq",
            "pop {c}",
            a = out(reg) a,
            b = out(reg) b,
            c = out(reg) c,
        )
    }
    SMAP.set(0, a);
    SMAP.set(1, b);
    SMAP.set(2, c);
}

fn smap_check() -> Result<(), ()> {
    let (a, b, c) = (SMAP.get(0), SMAP.get(1), SMAP.get(2));
    if a & RFLAGS_AC != 0 || b & RFLAGS_AC == 0 || c & RFLAGS_AC != 0 {
        println!(
            "ring0 smap MISMATCH: rflags after clac={a:#x} stac={b:#x} clac={c:#x} (AC is bit 18)"
        );
        return Err(());
    }
    Ok(())
}

// ---- sse ----

#[repr(C, align(64))]
struct Buf<const N: usize>(UnsafeCell<[u8; N]>);
// SAFETY: accessed through volatile byte accesses and asm, on vCPU 0 only.
unsafe impl<const N: usize> Sync for Buf<N> {}
impl<const N: usize> Buf<N> {
    const fn new() -> Self {
        Self(UnsafeCell::new([0; N]))
    }
    fn addr(&self) -> u64 {
        self.0.get().addr() as u64
    }
}

static SSE_SRC: Buf<64> = Buf::new();
static SSE_ONES: Buf<16> = Buf::new();
static SSE_DST: Buf<128> = Buf::new();
/// XMM0..XMM3 as stored at CPL3 after the drop.
static SSE_REGS: Buf<64> = Buf::new();

fn sse_run_then_enter_user_mode() {
    fill(SSE_SRC.addr(), 64, 0x31);
    for k in 0..16 {
        // SAFETY: inside SSE_ONES.
        unsafe {
            core::ptr::with_exposed_provenance_mut::<u8>((SSE_ONES.addr() + k) as usize)
                .write_volatile(0xff)
        }
    }
    // SAFETY: the loads read SSE_SRC/SSE_ONES (16 bytes at offsets ≤ 48 of 64, the `movaps`
    // one 16-byte aligned), the stores write SSE_DST (≤ offset 96 + 16 of 128, `movaps` at
    // offset 32, aligned) and, after the drop to CPL3 (as in `idt::enter_user_mode`: same RSP
    // and RFLAGS; the tables are user-accessible), SSE_REGS (64 bytes). XMM0..3 and RAX are
    // declared clobbered.
    unsafe {
        asm!(
            "movdqu xmm3, [{ones}]",
            "movups xmm0, [{src} + 1]",
            "movaps xmm1, [{src} + 16]",
            "movdqu xmm2, [{src} + 35]",
            "movq xmm3, qword ptr [{src} + 50]",
            "movups [{dst} + 1], xmm0",
            "movaps [{dst} + 32], xmm1",
            "movdqu [{dst} + 55], xmm2",
            "movq qword ptr [{dst} + 96], xmm3",
            "mov rax, rsp",
            "push {uds}",
            "push rax",
            "pushfq",
            "push {ucs}",
            "lea rax, [rip + 2f]",
            "push rax",
            "iretq",
            "2:",
            "movdqu [{regs}], xmm0",
            "movdqu [{regs} + 16], xmm1",
            "movdqu [{regs} + 32], xmm2",
            "movdqu [{regs} + 48], xmm3",
            ones = in(reg) SSE_ONES.addr(),
            src = in(reg) SSE_SRC.addr(),
            dst = in(reg) SSE_DST.addr(),
            regs = in(reg) SSE_REGS.addr(),
            uds = const idt::USER_DS as u64,
            ucs = const idt::USER_CS as u64,
            out("rax") _,
            out("xmm0") _,
            out("xmm1") _,
            out("xmm2") _,
            out("xmm3") _,
        )
    }
}

fn sse_check() -> Result<(), ()> {
    let src = SSE_SRC.addr();
    let regs = SSE_REGS.addr();
    let dst = SSE_DST.addr();
    compare("sse", "xmm0 (movups load)", regs, src + 1, 16)?;
    compare("sse", "xmm1 (movaps load)", regs + 16, src + 16, 16)?;
    compare("sse", "xmm2 (movdqu load)", regs + 32, src + 35, 16)?;
    compare("sse", "xmm3 low (movq load)", regs + 48, src + 50, 8)?;
    static ZERO: [u8; 16] = [0; 16];
    let zero = ZERO.as_ptr().addr() as u64;
    compare("sse", "xmm3 high (movq load zeroes it)", regs + 56, zero, 8)?;
    // The destination: zero except the four stores.
    let mut want = [0u8; 128];
    let put = |want: &mut [u8; 128], at: usize, from: u64, len: usize| {
        for k in 0..len {
            want[at + k] = byte(from + k as u64);
        }
    };
    put(&mut want, 1, src + 1, 16);
    put(&mut want, 32, src + 16, 16);
    put(&mut want, 55, src + 35, 16);
    put(&mut want, 96, src + 50, 8);
    compare(
        "sse",
        "stores (movups, movaps, movdqu, movq)",
        dst,
        want.as_ptr().addr() as u64,
        128,
    )
}

// ---- pagefault ----

static PATTERN: Buf<32> = Buf::new();
/// What the AVX load of (c) loaded, stored back with `vmovdqu` at CPL0.
static LOADED: Buf<32> = Buf::new();
/// Log indices around each sub-case, and the plain load's result.
static PF: Obs<16> = Obs::new();

fn va(page: usize, offset: u64) -> u64 {
    TEST_VA + page as u64 * PAGE_4K + offset
}

/// `vmovdqu [dst], ymm` of PATTERN.
#[target_feature(enable = "avx")]
fn avx_store(dst: u64) {
    // SAFETY: `dst` is a test-page address (mapped by the handler if needed) or RAM; 32 bytes.
    unsafe {
        asm!(
            "vmovdqu ymm0, ymmword ptr [{p}]",
            "vmovdqu ymmword ptr [{d}], ymm0",
            p = in(reg) PATTERN.addr(),
            d = in(reg) dst,
            out("ymm0") _,
            options(nostack, preserves_flags),
        )
    }
}

#[target_feature(enable = "avx")]
fn avx_load_to_loaded(src: u64) {
    // SAFETY: `src` is a test-page address (mapped by the handler); LOADED is 32 bytes.
    unsafe {
        asm!(
            "vmovdqu ymm0, ymmword ptr [{s}]",
            "vmovdqu ymmword ptr [{d}], ymm0",
            s = in(reg) src,
            d = in(reg) LOADED.addr(),
            out("ymm0") _,
            options(nostack, preserves_flags),
        )
    }
}

fn pagefault_run() {
    fill(PATTERN.addr(), 32, 0xa0);
    for i in 0..PAGES {
        if i != WINDOW_PAGE {
            fill(frame(i), PAGE_4K, (i as u8) << 4);
        }
    }
    // SAFETY: the caller checked AVX.
    unsafe {
        PF.set(0, log_count());
        avx_store(va(P_AVX_NP_STORE, 0x100)); // (a)
        PF.set(1, log_count());
        avx_store(va(P_AVX_RO_STORE, 0x200)); // (b)
        PF.set(2, log_count());
        avx_load_to_loaded(va(P_AVX_NP_LOAD, 0x300)); // (c)
        PF.set(3, log_count());
        PROBE.store(frame(P_AVX_CROSS) + PAGE_4K - 16, Relaxed);
        avx_store(va(P_AVX_CROSS, PAGE_4K - 16)); // (d)
        PROBE.store(0, Relaxed);
        PF.set(4, log_count());
        avx_store(va(P_SPAN, PAGE_4K - 16)); // (e)
        PF.set(5, log_count());
    }
    // (b') (c') (d'): the same with plain moves.
    // SAFETY: test pages (the handler maps them); 8-byte accesses.
    unsafe {
        core::ptr::with_exposed_provenance_mut::<u64>(va(P_MOV_RO_STORE, 0x208) as usize)
            .write_volatile(0x1122_3344_5566_7788);
        PF.set(6, log_count());
        let v = core::ptr::with_exposed_provenance::<u64>(va(P_MOV_NP_LOAD, 0x308) as usize)
            .read_volatile();
        PF.set(10, v);
        PF.set(7, log_count());
        PROBE.store(frame(P_MOV_CROSS) + PAGE_4K - 8, Relaxed);
        asm!(
            "mov qword ptr [{d}], {v}",
            d = in(reg) va(P_MOV_CROSS, PAGE_4K - 4),
            v = in(reg) 0x99aa_bbcc_ddee_ff00u64,
            options(nostack, preserves_flags),
        );
        PROBE.store(0, Relaxed);
        PF.set(8, log_count());
    }
}

fn pagefault_check(window: u64) -> Result<(), ()> {
    const W: u64 = pf::WRITE;
    const P: u64 = pf::PRESENT;
    let pat = PATTERN.addr();
    let mut ok = true;
    let mut sub = |name: &str, r: Result<(), ()>| {
        if r.is_ok() {
            println!("ring0 pagefault {name} ok");
        } else {
            ok = false;
        }
    };
    let show = |name: &str, i: u64| {
        let e = log_entry(i);
        println!(
            "ring0 pagefault {name}: cr2={:#x} error={:#x} rip={:#x}",
            e.cr2, e.error, e.rip
        );
    };
    let pf_at = |va: u64, error: u64| [(14, error, 0, va)];
    // (a)
    let a = expect_log(
        "pagefault",
        PF.get(0),
        PF.get(1),
        &pf_at(va(P_AVX_NP_STORE, 0x100), W),
    )
    .and_then(|()| {
        compare(
            "pagefault",
            "(a) bytes",
            frame(P_AVX_NP_STORE) + 0x100,
            pat,
            32,
        )
    });
    if a.is_ok() {
        show("a-avx-store-not-present", PF.get(0));
    }
    sub("a-avx-store-not-present", a);
    let b = expect_log(
        "pagefault",
        PF.get(1),
        PF.get(2),
        &pf_at(va(P_AVX_RO_STORE, 0x200), W | P),
    )
    .and_then(|()| {
        compare(
            "pagefault",
            "(b) bytes",
            frame(P_AVX_RO_STORE) + 0x200,
            pat,
            32,
        )
    });
    if b.is_ok() {
        show("b-avx-store-read-only", PF.get(1));
    }
    sub("b-avx-store-read-only", b);
    let c = expect_log(
        "pagefault",
        PF.get(2),
        PF.get(3),
        &pf_at(va(P_AVX_NP_LOAD, 0x300), 0),
    )
    .and_then(|()| {
        compare(
            "pagefault",
            "(c) loaded ymm",
            LOADED.addr(),
            frame(P_AVX_NP_LOAD) + 0x300,
            32,
        )
    });
    if c.is_ok() {
        show("c-avx-load-not-present", PF.get(2));
    }
    sub("c-avx-load-not-present", c);
    let cross = P_AVX_CROSS;
    let d = expect_log(
        "pagefault",
        PF.get(3),
        PF.get(4),
        &pf_at(va(cross + 1, 0), W),
    )
    .and_then(|()| compare("pagefault", "(d) first page", frame(cross) + 4080, pat, 16))
    .and_then(|()| {
        compare(
            "pagefault",
            "(d) second page",
            frame(cross + 1),
            pat + 16,
            16,
        )
    });
    if d.is_ok() {
        show("d-avx-store-crossing", PF.get(3));
        report_probe(
            "d-avx-store-crossing",
            PF.get(3),
            frame(cross) + PAGE_4K - 16,
        );
    }
    sub("d-avx-store-crossing", d);
    let e = expect_log("pagefault", PF.get(4), PF.get(5), &[])
        .and_then(|()| compare("pagefault", "(e) RAM part", frame(P_SPAN) + 4080, pat, 16))
        .and_then(|()| {
            // The window part through plain 8-byte loads (MMIO exits, alias off).
            let mut got = [0u8; 16];
            for (k, chunk) in got.chunks_exact_mut(8).enumerate() {
                // SAFETY: the scratch window's first page, identity-mapped; aliases nothing.
                let v = unsafe { cxlvm_guest::mmio::read_u64(window + 8 * k as u64) };
                chunk.copy_from_slice(&v.to_le_bytes());
            }
            compare(
                "pagefault",
                "(e) window part",
                got.as_ptr().addr() as u64,
                pat + 16,
                16,
            )
        });
    sub("e-avx-store-ram-then-window", e);
    let b2 = expect_log(
        "pagefault",
        PF.get(5),
        PF.get(6),
        &pf_at(va(P_MOV_RO_STORE, 0x208), W | P),
    )
    .and_then(|()| {
        let want = 0x1122_3344_5566_7788u64.to_le_bytes();
        compare(
            "pagefault",
            "(b') bytes",
            frame(P_MOV_RO_STORE) + 0x208,
            want.as_ptr().addr() as u64,
            8,
        )
    });
    if b2.is_ok() {
        show("b-mov-store-read-only", PF.get(5));
    }
    sub("b-mov-store-read-only", b2);
    let c2 = expect_log(
        "pagefault",
        PF.get(6),
        PF.get(7),
        &pf_at(va(P_MOV_NP_LOAD, 0x308), 0),
    )
    .and_then(|()| {
        let want = PF.get(10).to_le_bytes();
        compare(
            "pagefault",
            "(c') loaded value",
            want.as_ptr().addr() as u64,
            frame(P_MOV_NP_LOAD) + 0x308,
            8,
        )
    });
    if c2.is_ok() {
        show("c-mov-load-not-present", PF.get(6));
    }
    sub("c-mov-load-not-present", c2);
    let cross = P_MOV_CROSS;
    let d2 = expect_log(
        "pagefault",
        PF.get(7),
        PF.get(8),
        &pf_at(va(cross + 1, 0), W),
    )
    .and_then(|()| {
        let want = 0x99aa_bbcc_ddee_ff00u64.to_le_bytes();
        let w = want.as_ptr().addr() as u64;
        compare("pagefault", "(d') first page", frame(cross) + 4092, w, 4)?;
        compare("pagefault", "(d') second page", frame(cross + 1), w + 4, 4)
    });
    if d2.is_ok() {
        show("d-mov-store-crossing", PF.get(7));
        report_probe(
            "d-mov-store-crossing",
            PF.get(7),
            frame(cross) + PAGE_4K - 8,
        );
    }
    sub("d-mov-store-crossing", d2);
    if ok { Ok(()) } else { Err(()) }
}

/// Prints whether the first page of a crossing store had been written when the #PF on the
/// second page came (information: the architecture writes nothing before the fault).
fn report_probe(name: &str, i: u64, addr: u64) {
    let at_fault = log_entry(i).probe;
    let page = (addr - FRAMES.0.get().addr() as u64) / PAGE_4K;
    let mut want = [0u8; 8];
    for (k, b) in want.iter_mut().enumerate() {
        let off = (addr % PAGE_4K) + k as u64;
        *b = ((page as u8) << 4).wrapping_add((off as u8).wrapping_mul(7));
    }
    let untouched = at_fault == u64::from_le_bytes(want);
    println!(
        "ring0 pagefault {name}: first page {} when the fault came (u64 {at_fault:#x})",
        if untouched {
            "untouched"
        } else {
            "already written"
        }
    );
}
