//! Checks and loading plan for a test-guest ELF image.
//!
//! linux-loader's ELF loader copies segments but validates neither the machine, the type nor where
//! segments land, and keeps the program headers private; a test guest needs those checks to fail
//! with one clear line, so the few header fields are read here.

/// Errors in a guest image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// Not an ELF file.
    #[error("not an ELF file (bad magic)")]
    NotElf,
    /// Truncated headers.
    #[error("truncated ELF file")]
    Truncated,
    /// Not 64-bit little-endian x86-64.
    #[error("not a 64-bit little-endian x86-64 ELF")]
    WrongMachine,
    /// Not a static executable.
    #[error("not a static executable (ELF type {0}, need ET_EXEC)")]
    NotExecutable(u16),
    /// Has an interpreter or dynamic section.
    #[error("dynamically linked (has PT_INTERP or PT_DYNAMIC); build it static")]
    Dynamic,
    /// No loadable segment.
    #[error("has no loadable segment")]
    NoSegments,
    /// A segment's file bytes are outside the file.
    #[error("segment at {paddr:#x} points outside the file")]
    SegmentOutsideFile {
        /// Segment load address.
        paddr: u64,
    },
    /// Entry point is not inside a loaded segment.
    #[error("entry point {0:#x} is not inside a loaded segment")]
    BadEntry(u64),
}

/// One PT_LOAD segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address.
    pub paddr: u64,
    /// Offset of its bytes in the file.
    pub file_offset: u64,
    /// Bytes copied from the file.
    pub file_size: u64,
    /// Bytes occupied in memory (the rest is zero).
    pub mem_size: u64,
}

impl Segment {
    /// One past the last byte in memory.
    pub fn end(&self) -> u64 {
        self.paddr.saturating_add(self.mem_size)
    }
}

/// A checked image: entry point and segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Entry point.
    pub entry: u64,
    /// Loadable segments.
    pub segments: Vec<Segment>,
}

impl Image {
    /// Lowest load address.
    pub fn start(&self) -> u64 {
        self.segments.iter().map(|s| s.paddr).min().unwrap_or(0)
    }
    /// One past the highest loaded byte.
    pub fn end(&self) -> u64 {
        self.segments.iter().map(Segment::end).max().unwrap_or(0)
    }
}

fn rd<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], ElfError> {
    b.get(at..at.checked_add(N).ok_or(ElfError::Truncated)?)
        .ok_or(ElfError::Truncated)?
        .try_into()
        .map_err(|_| ElfError::Truncated)
}
fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    rd::<2>(b, at).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    rd::<4>(b, at).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    rd::<8>(b, at).map(u64::from_le_bytes)
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;

/// Parses and checks an image.
pub fn parse(file: &[u8]) -> Result<Image, ElfError> {
    if file.len() < 4 || &file[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if file.len() < 64 {
        return Err(ElfError::Truncated);
    }
    if file[4] != 2 || file[5] != 1 || u16_at(file, 18)? != 62 {
        return Err(ElfError::WrongMachine);
    }
    let etype = u16_at(file, 16)?;
    if etype != 2 {
        return Err(ElfError::NotExecutable(etype));
    }
    let entry = u64_at(file, 24)?;
    let phoff = usize::try_from(u64_at(file, 32)?).map_err(|_| ElfError::Truncated)?;
    let phentsize = usize::from(u16_at(file, 54)?);
    let phnum = usize::from(u16_at(file, 56)?);
    if phentsize < 56 {
        return Err(ElfError::Truncated);
    }
    let mut segments = Vec::new();
    for i in 0..phnum {
        let at = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(ElfError::Truncated)?)
            .ok_or(ElfError::Truncated)?;
        let ptype = u32_at(file, at)?;
        match ptype {
            PT_INTERP | PT_DYNAMIC => return Err(ElfError::Dynamic),
            PT_LOAD => {}
            _ => continue,
        }
        let seg = Segment {
            file_offset: u64_at(file, at + 8)?,
            paddr: u64_at(file, at + 24)?,
            file_size: u64_at(file, at + 32)?,
            mem_size: u64_at(file, at + 40)?,
        };
        if seg.mem_size == 0 {
            continue;
        }
        let file_end = seg.file_offset.checked_add(seg.file_size);
        if file_end.is_none_or(|e| e > file.len() as u64) || seg.file_size > seg.mem_size {
            return Err(ElfError::SegmentOutsideFile { paddr: seg.paddr });
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    if !segments.iter().any(|s| entry >= s.paddr && entry < s.end()) {
        return Err(ElfError::BadEntry(entry));
    }
    Ok(Image { entry, segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid image: one PT_LOAD of 16 bytes at 0x200000, entry at its start.
    pub(crate) fn tiny() -> Vec<u8> {
        let mut f = vec![0u8; 0x100];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&0xf0u64.to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&0x20_0000u64.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&0x20_0000u64.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&16u64.to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&0x1000u64.to_le_bytes());
        f
    }

    #[test]
    fn accepts_a_minimal_static_executable() {
        let img = parse(&tiny()).unwrap();
        assert_eq!(img.entry, 0x20_0000);
        assert_eq!(img.end(), 0x20_1000);
    }

    #[test]
    fn rejects_each_kind_of_bad_image() {
        assert_eq!(parse(b"hello world"), Err(ElfError::NotElf));
        assert_eq!(parse(&tiny()[..40]), Err(ElfError::Truncated));
        let mut m = tiny();
        m[18] = 3;
        assert_eq!(parse(&m), Err(ElfError::WrongMachine));
        let mut t = tiny();
        t[16] = 3;
        assert_eq!(parse(&t), Err(ElfError::NotExecutable(3)));
        let mut d = tiny();
        d[64] = PT_INTERP as u8;
        assert_eq!(parse(&d), Err(ElfError::Dynamic));
        let mut o = tiny();
        o[64 + 32] = 0xff;
        assert_eq!(
            parse(&o),
            Err(ElfError::SegmentOutsideFile { paddr: 0x20_0000 })
        );
        let mut e = tiny();
        e[24..32].copy_from_slice(&0x10u64.to_le_bytes());
        assert_eq!(parse(&e), Err(ElfError::BadEntry(0x10)));
        let mut h = tiny();
        h[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse(&h), Err(ElfError::Truncated));
    }
}
