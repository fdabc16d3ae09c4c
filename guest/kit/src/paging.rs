//! A small 4-level page-table builder for ring-0 guests: tables in a static, 4 KiB-aligned
//! [`Arena`] (in `.bss`, so zero at start: the ABI loads images into zeroed RAM), identity maps
//! with 2 MiB pages, and 4 KiB mappings whose entries can be changed later ([`PageTables::pte`])
//! to make test pages present, read-only or point elsewhere.
//!
//! The program is identity-mapped (virtual = physical) both under cxlvm's tables and its own,
//! so a table's virtual address is its physical address. Every entry this builder writes has
//! the user bit set, so the same tables still work after [`crate::idt::enter_user_mode`].

use core::cell::UnsafeCell;
use core::ptr::NonNull;

/// Entry bit: present.
pub const PRESENT: u64 = 1 << 0;
/// Entry bit: writable.
pub const WRITABLE: u64 = 1 << 1;
/// Entry bit: user-accessible.
pub const USER: u64 = 1 << 2;
/// Entry bit: large page (in a PDE: 2 MiB).
pub const LARGE: u64 = 1 << 7;
/// Address bits of an entry (bits 51:12).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// 4 KiB.
pub const PAGE_4K: u64 = 1 << 12;
/// 2 MiB.
pub const PAGE_2M: u64 = 1 << 21;

/// Flags of every table entry that points to another table.
const TABLE: u64 = PRESENT | WRITABLE | USER;

/// One 4 KiB table.
#[repr(C, align(4096))]
pub struct Table(pub [u64; 512]);

/// `N` tables of storage, for a `static`.
#[repr(C, align(4096))]
pub struct Arena<const N: usize>(UnsafeCell<[Table; N]>);

// SAFETY: the tables are only written through the one `PageTables` built on the arena
// (`PageTables::new`'s contract), with volatile word accesses; the CPU reads the entries.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    /// Zeroed tables.
    pub const fn new() -> Self {
        Self(UnsafeCell::new([const { Table([0; 512]) }; N]))
    }
}

impl<const N: usize> Default for Arena<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The arena has no table left.
    OutOfTables,
    /// The address is not aligned to the page size, or not canonical below 2^47.
    BadAddress(u64),
    /// A 4 KiB mapping inside an existing 2 MiB page, or a 2 MiB page over an existing table.
    Conflict(u64),
}

/// Tables being built in an arena: the root (PML4) is its first table.
#[derive(Debug)]
pub struct PageTables {
    base: *mut Table,
    capacity: usize,
    used: usize,
}

// SAFETY: the builder only points into a static arena (see `Pte`).
unsafe impl Send for PageTables {}

impl PageTables {
    /// Starts building in `arena` (which must be zero: untouched since the program started).
    ///
    /// # Safety
    /// Only one `PageTables` may ever use `arena`, and the arena must not be used otherwise.
    pub unsafe fn new<const N: usize>(arena: &'static Arena<N>) -> Self {
        assert!(N >= 1, "the arena needs room for the PML4");
        Self {
            base: arena.0.get().cast::<Table>(),
            capacity: N,
            used: 1,
        }
    }

    /// Physical (= virtual) address of the PML4, for CR3.
    pub fn root(&self) -> u64 {
        self.base.addr() as u64
    }

    /// Tables used so far (the PML4 included).
    pub fn tables_used(&self) -> usize {
        self.used
    }

    /// Address of entry `index` of the table at physical address `table`.
    fn entry(table: u64, index: u64) -> *mut u64 {
        core::ptr::with_exposed_provenance_mut::<u64>(table as usize).wrapping_add(index as usize)
    }

    fn read(e: *mut u64) -> u64 {
        // SAFETY: `e` points into one of this builder's tables (the root or a table it
        // allocated from the arena), which live in a static.
        unsafe { e.read_volatile() }
    }

    fn write(e: *mut u64, v: u64) {
        // SAFETY: as in `read`; volatile because the CPU reads these words.
        unsafe { e.write_volatile(v) }
    }

    /// The table that `entry` points to, allocating a zeroed one when it is empty.
    fn next_table(&mut self, e: *mut u64, va: u64) -> Result<u64, MapError> {
        let v = Self::read(e);
        if v & PRESENT != 0 {
            if v & LARGE != 0 {
                return Err(MapError::Conflict(va));
            }
            return Ok(v & ADDR_MASK);
        }
        if self.used == self.capacity {
            return Err(MapError::OutOfTables);
        }
        // Arena tables are zero until allocated (`.bss`).
        let table = self.base.wrapping_add(self.used).addr() as u64;
        self.used += 1;
        Self::write(e, table | TABLE);
        Ok(table)
    }

    fn check(va: u64, align: u64) -> Result<(), MapError> {
        if !va.is_multiple_of(align) || va >= 1 << 47 {
            return Err(MapError::BadAddress(va));
        }
        Ok(())
    }

    /// The page directory covering `va`.
    fn pd(&mut self, va: u64) -> Result<u64, MapError> {
        let pml4 = self.root();
        let pdpt = self.next_table(Self::entry(pml4, (va >> 39) & 511), va)?;
        self.next_table(Self::entry(pdpt, (va >> 30) & 511), va)
    }

    /// Maps the 2 MiB page at `va` to `pa` with `flags` (plus present and large).
    pub fn map_2m(&mut self, va: u64, pa: u64, flags: u64) -> Result<(), MapError> {
        Self::check(va, PAGE_2M)?;
        Self::check(pa, PAGE_2M)?;
        let pd = self.pd(va)?;
        let e = Self::entry(pd, (va >> 21) & 511);
        let old = Self::read(e);
        if old & PRESENT != 0 && old & LARGE == 0 {
            return Err(MapError::Conflict(va));
        }
        Self::write(e, pa | flags | PRESENT | LARGE);
        Ok(())
    }

    /// Identity-maps every 2 MiB page that `[start, end)` touches, writable and user.
    pub fn identity_2m(&mut self, start: u64, end: u64) -> Result<(), MapError> {
        let mut page = start & !(PAGE_2M - 1);
        while page < end {
            self.map_2m(page, page, WRITABLE | USER)?;
            page += PAGE_2M;
        }
        Ok(())
    }

    /// The 4 KiB page-table entry for `va`, creating the tables above it (the entry itself is
    /// left as it is: zero, not present, when new). Change it with [`Pte::set`] and flush the
    /// TLB entry ([`crate::idt::invlpg`]) when the tables are live.
    pub fn pte(&mut self, va: u64) -> Result<Pte, MapError> {
        Self::check(va, PAGE_4K)?;
        let pd = self.pd(va)?;
        let pt = self.next_table(Self::entry(pd, (va >> 21) & 511), va)?;
        let e = Self::entry(pt, (va >> 12) & 511);
        // Tables are never at address 0 (the image links at 2 MiB).
        NonNull::new(e).map(Pte).ok_or(MapError::BadAddress(va))
    }

    /// Maps the 4 KiB page at `va` to `pa` with `flags` (`PRESENT` is not implied: a mapping
    /// without it is a not-present page that remembers its frame). Returns the entry.
    pub fn map_4k(&mut self, va: u64, pa: u64, flags: u64) -> Result<Pte, MapError> {
        Self::check(pa, PAGE_4K)?;
        let e = self.pte(va)?;
        e.set(pa | flags);
        Ok(e)
    }
}

/// A 4 KiB page-table entry of a [`PageTables`] (only the builder makes these, so it always
/// points into a static arena).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pte(NonNull<u64>);

// SAFETY: a `Pte` points into a static arena; accesses are volatile word accesses, as the
// CPU's own page walks are.
unsafe impl Send for Pte {}
// SAFETY: as for `Send`.
unsafe impl Sync for Pte {}

impl Pte {
    /// The entry's value.
    pub fn get(self) -> u64 {
        // SAFETY: the pointer points into a static arena's tables (see the type).
        unsafe { self.0.as_ptr().read_volatile() }
    }

    /// Sets the entry (volatile: the CPU reads it). When the tables are live, flush the page's
    /// TLB entry afterwards ([`crate::idt::invlpg`]).
    pub fn set(self, value: u64) {
        // SAFETY: as in `get`.
        unsafe { self.0.as_ptr().write_volatile(value) }
    }
}
