//! Volatile accesses to guest-physical addresses (identity mapped, so a physical address is
//! also the virtual one).
//!
//! Each access is one `mov` of its width (`core::ptr::{read,write}_volatile` on an aligned
//! pointer), which KVM can emulate when the address is MMIO.

use core::ptr;

macro_rules! raw_accessors {
    ($($read:ident, $write:ident, $t:ty;)*) => {$(
        #[doc = concat!("Volatile read of a `", stringify!($t), "` at guest-physical `addr`.")]
        ///
        /// # Safety
        /// `addr` must be mapped (the boot info's RAM or a listed device range) and aligned to
        /// the access size, and must not alias memory that Rust code uses non-atomically.
        #[inline]
        pub unsafe fn $read(addr: u64) -> $t {
            // SAFETY: the caller guarantees a mapped, aligned address that aliases nothing.
            unsafe { ptr::read_volatile(ptr::with_exposed_provenance::<$t>(addr as usize)) }
        }

        #[doc = concat!("Volatile write of a `", stringify!($t), "` at guest-physical `addr`.")]
        ///
        /// # Safety
        /// As for the read: mapped, aligned, and aliasing no memory Rust code uses.
        #[inline]
        pub unsafe fn $write(addr: u64, value: $t) {
            // SAFETY: the caller guarantees a mapped, aligned address that aliases nothing.
            unsafe { ptr::write_volatile(ptr::with_exposed_provenance_mut::<$t>(addr as usize), value) }
        }
    )*};
}

raw_accessors! {
    read_u8, write_u8, u8;
    read_u16, write_u16, u16;
    read_u32, write_u32, u32;
    read_u64, write_u64, u64;
}

/// A guest-physical range accessed with volatile, bounds-checked loads and stores.
///
/// Get one from [`Device::mmio`](crate::Device::mmio), or with [`Mmio::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mmio {
    base: u64,
    size: u64,
}

macro_rules! region_accessors {
    ($($read:ident, $write:ident, $t:ty, $raw_read:ident, $raw_write:ident;)*) => {$(
        #[doc = concat!("Volatile read of a `", stringify!($t), "` at `offset`.")]
        ///
        /// # Panics
        /// When the access is out of the range or misaligned.
        #[inline]
        #[track_caller]
        pub fn $read(&self, offset: u64) -> $t {
            let addr = self.checked_addr(offset, core::mem::size_of::<$t>() as u64);
            // SAFETY: `Mmio::new`'s contract covers the whole range; the access was checked
            // to be inside it and aligned.
            unsafe { $raw_read(addr) }
        }

        #[doc = concat!("Volatile write of a `", stringify!($t), "` at `offset`.")]
        ///
        /// # Panics
        /// When the access is out of the range or misaligned.
        #[inline]
        #[track_caller]
        pub fn $write(&self, offset: u64, value: $t) {
            let addr = self.checked_addr(offset, core::mem::size_of::<$t>() as u64);
            // SAFETY: as for the read.
            unsafe { $raw_write(addr, value) }
        }
    )*};
}

impl Mmio {
    /// The range `base .. base + size`.
    ///
    /// # Safety
    /// The whole range must be mapped and must not alias memory that Rust code uses
    /// non-atomically (the program image, its stacks, boot info): e.g. a range from the boot
    /// info's device table, or free RAM the program reserves for this.
    pub const unsafe fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// First address of the range.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size of the range in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Address of `offset`, for instructions that need a pointer (XSAVEC, AVX, `rep movsb`).
    ///
    /// # Panics
    /// When `offset` is beyond the range.
    #[track_caller]
    pub fn addr(&self, offset: u64) -> u64 {
        assert!(
            offset <= self.size,
            "offset {offset:#x} beyond MMIO range of {:#x} bytes",
            self.size
        );
        self.base + offset
    }

    /// Pointer to `offset` (see [`addr`](Self::addr)).
    #[track_caller]
    pub fn ptr(&self, offset: u64) -> *mut u8 {
        ptr::with_exposed_provenance_mut(self.addr(offset) as usize)
    }

    #[inline]
    #[track_caller]
    fn checked_addr(&self, offset: u64, len: u64) -> u64 {
        let in_range = offset.checked_add(len).is_some_and(|end| end <= self.size);
        if !in_range || !offset.is_multiple_of(len) || !self.base.is_multiple_of(len) {
            bad_access(self.base, self.size, offset, len);
        }
        self.base + offset
    }

    region_accessors! {
        read_u8, write_u8, u8, read_u8, write_u8;
        read_u16, write_u16, u16, read_u16, write_u16;
        read_u32, write_u32, u32, read_u32, write_u32;
        read_u64, write_u64, u64, read_u64, write_u64;
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn bad_access(base: u64, size: u64, offset: u64, len: u64) -> ! {
    panic!("bad {len}-byte MMIO access at offset {offset:#x} of [{base:#x}, +{size:#x})")
}
