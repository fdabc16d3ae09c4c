//! Identity page tables with 2 MiB pages, user-accessible, for CPL3 test guests.

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const TABLE_FLAGS: u64 = PRESENT | WRITABLE | USER;

/// Size of one large page.
pub const LARGE_PAGE: u64 = 2 << 20;

/// Errors building page tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PagingError {
    /// A range reaches past the identity-mappable (canonical lower-half) space.
    #[error("range {start:#x}+{size:#x} is beyond the identity-mappable 128 TiB")]
    NotCanonical {
        /// Start of the range.
        start: u64,
        /// Size of the range.
        size: u64,
    },
}

/// Identity page tables ready to be copied into guest memory.
#[derive(Clone, Debug)]
pub struct PageTables {
    /// Guest-physical address the tables were built for (the PML4; CR3).
    pub base: u64,
    /// The tables, 4 KiB each, PML4 first.
    pub bytes: Vec<u8>,
}

/// The 2 MiB-aligned runs `[start, end)` covering `ranges`, sorted and merged.
fn runs(ranges: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, PagingError> {
    let mut out = Vec::new();
    for &(start, size) in ranges {
        if size == 0 {
            continue;
        }
        let end = start
            .checked_add(size)
            .filter(|&e| e <= crate::layout::MAX_GPA)
            .ok_or(PagingError::NotCanonical { start, size })?;
        out.push((start & !(LARGE_PAGE - 1), end.next_multiple_of(LARGE_PAGE)));
    }
    out.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(out.len());
    for (s, e) in out {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    Ok(merged)
}

/// The 2 MiB blocks to map (as merged runs), worked out once; [`Plan::size`] tells how much room
/// the tables need (in closed form, whatever the size of the ranges) and [`Plan::build`] lays
/// them out once their address is known.
#[derive(Clone, Debug)]
pub struct Plan {
    runs: Vec<(u64, u64)>,
    tables: u64,
}

impl Plan {
    /// Plans identity tables mapping every 2 MiB block touched by `ranges` (start, size).
    pub fn new(ranges: &[(u64, u64)]) -> Result<Self, PagingError> {
        let runs = runs(ranges)?;
        // Distinct table indices at one level: each run covers a contiguous span of indices;
        // runs are sorted, so a span can only share its first index with the previous run's last.
        let distinct = |shift: u32| {
            let mut n = 0u64;
            let mut last: Option<u64> = None;
            for &(s, e) in &runs {
                let (first, end) = (s >> shift, (e - 1) >> shift);
                n += end - first + 1;
                if last == Some(first) {
                    n -= 1;
                }
                last = Some(end);
            }
            n
        };
        let tables = 1 + distinct(39) + distinct(30);
        Ok(Self { runs, tables })
    }

    /// Bytes of tables [`Plan::build`] produces.
    pub fn size(&self) -> u64 {
        self.tables * 4096
    }

    /// Builds the tables, user-accessible and writable large pages, to live at guest-physical
    /// `base`.
    pub fn build(&self, base: u64) -> PageTables {
        let mut bytes = vec![0u8; self.size() as usize];
        let mut next = 1usize;
        let mut pdpt: Option<(u64, usize)> = None;
        let mut pd: Option<(u64, usize)> = None;
        let set = |bytes: &mut Vec<u8>, table: usize, idx: u64, val: u64| {
            let at = table * 4096 + (idx as usize) * 8;
            bytes[at..at + 8].copy_from_slice(&val.to_le_bytes());
        };
        let blocks = self
            .runs
            .iter()
            .flat_map(|&(s, e)| (s..e).step_by(LARGE_PAGE as usize));
        for addr in blocks {
            let (l4, l3, l2) = ((addr >> 39) & 511, (addr >> 30) & 511, (addr >> 21) & 511);
            let pdpt_t = match pdpt {
                Some((k, t)) if k == addr >> 39 => t,
                _ => {
                    let t = next;
                    next += 1;
                    set(&mut bytes, 0, l4, (base + t as u64 * 4096) | TABLE_FLAGS);
                    pdpt = Some((addr >> 39, t));
                    t
                }
            };
            let pd_t = match pd {
                Some((k, t)) if k == addr >> 30 => t,
                _ => {
                    let t = next;
                    next += 1;
                    set(
                        &mut bytes,
                        pdpt_t,
                        l3,
                        (base + t as u64 * 4096) | TABLE_FLAGS,
                    );
                    pd = Some((addr >> 30, t));
                    t
                }
            };
            set(&mut bytes, pd_t, l2, addr | TABLE_FLAGS | PAGE_SIZE_BIT);
        }
        PageTables { base, bytes }
    }
}

/// Builds identity tables mapping every 2 MiB block touched by `ranges` (start, size) as a
/// user-accessible, writable large page, to live at guest-physical `base`.
pub fn build(base: u64, ranges: &[(u64, u64)]) -> Result<PageTables, PagingError> {
    Ok(Plan::new(ranges)?.build(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: &PageTables, table_addr: u64, idx: u64) -> u64 {
        let at = (table_addr - t.base) as usize + idx as usize * 8;
        u64::from_le_bytes(t.bytes[at..at + 8].try_into().unwrap())
    }

    /// Walks the tables like the MMU does.
    fn translate(t: &PageTables, va: u64) -> Option<(u64, bool)> {
        let e4 = entry(t, t.base, (va >> 39) & 511);
        if e4 & PRESENT == 0 {
            return None;
        }
        let e3 = entry(t, e4 & !0xfff, (va >> 30) & 511);
        if e3 & PRESENT == 0 {
            return None;
        }
        let e2 = entry(t, e3 & !0xfff, (va >> 21) & 511);
        if e2 & PRESENT == 0 || e2 & PAGE_SIZE_BIT == 0 {
            return None;
        }
        let user = e4 & e3 & e2 & USER != 0;
        Some((
            (e2 & !(LARGE_PAGE - 1) & ((1 << 52) - 1)) | (va & (LARGE_PAGE - 1)),
            user,
        ))
    }

    #[test]
    fn maps_exactly_the_requested_blocks_identity_and_user() {
        let ranges = [
            (0, 64 << 20),
            (64 << 30, 4 << 20),
            (4 << 40, 2 << 20),
            (0xD000_0000, 0x1000),
        ];
        let t = build(0x80_0000, &ranges).unwrap();
        assert_eq!(t.bytes.len() as u64, Plan::new(&ranges).unwrap().size());
        for va in [
            0u64,
            0x1234_5678 & ((64 << 20) - 1),
            (64 << 30) + 0x3f_ffff,
            (4 << 40) + 8,
            0xD000_0010,
        ] {
            assert_eq!(translate(&t, va), Some((va, true)), "va {va:#x}");
        }
        for va in [64 << 20, (64 << 30) + (4 << 20), 1 << 46, 0xC000_0000] {
            assert_eq!(translate(&t, va), None, "va {va:#x} must be unmapped");
        }
    }

    #[test]
    fn rejects_non_canonical_ranges() {
        assert!(matches!(
            build(0, &[(1 << 47, 4096)]),
            Err(PagingError::NotCanonical { .. })
        ));
        assert!(build(0, &[(u64::MAX, 2)]).is_err());
    }

    /// Table count by brute force: one PML4, one PDPT per distinct 512 GiB index, one PD per
    /// distinct 1 GiB index among the touched 2 MiB blocks.
    fn naive_tables(ranges: &[(u64, u64)]) -> u64 {
        let mut blocks = std::collections::BTreeSet::new();
        for &(s, n) in ranges {
            let mut b = s & !(LARGE_PAGE - 1);
            while b < s + n {
                blocks.insert(b);
                b += LARGE_PAGE;
            }
        }
        let l4: std::collections::BTreeSet<u64> = blocks.iter().map(|b| b >> 39).collect();
        let l3: std::collections::BTreeSet<u64> = blocks.iter().map(|b| b >> 30).collect();
        1 + l4.len() as u64 + l3.len() as u64
    }

    #[test]
    fn table_count_is_closed_form_and_matches_brute_force() {
        const G: u64 = 1 << 30;
        let cases: Vec<Vec<(u64, u64)>> = vec![
            vec![(0, 64 << 20)],
            vec![(0, 64 << 20), (64 << 20, 4096)],
            vec![(0, 3 * G), (3 * G - 4096, 2 * G)],
            vec![(G - 4096, 8192), (G + 4096, 4096)],
            vec![(5 * G, G), (0, 4096), (5 * G + 4096, 4096)],
            vec![(511 << 30, 2 * G), (1 << 40, 1 << 33)],
            vec![(0, 1), (1, 1), (LARGE_PAGE, 1)],
        ];
        for ranges in cases {
            let plan = Plan::new(&ranges).unwrap();
            assert_eq!(plan.size() / 4096, naive_tables(&ranges), "{ranges:x?}");
            assert_eq!(plan.build(0).bytes.len() as u64, plan.size(), "{ranges:x?}");
        }
        // A 32 TiB window is planned without visiting its blocks.
        let plan = Plan::new(&[(1 << 40, 32 << 40)]).unwrap();
        // One PML4, 64 PDPTs (512 GiB each), 32768 PDs (1 GiB each).
        assert_eq!(plan.size() / 4096, 1 + 64 + (32 << 10));
    }
}
