use std::fs::File;
use std::os::unix::fs::FileExt;

use super::*;

const PAGE: u64 = PAGE_SIZE;

fn memfd(name: &str, pages: u64) -> File {
    let file = memfd::MemfdOptions::default()
        .close_on_exec(true)
        .create(name)
        .unwrap()
        .into_file();
    file.set_len(pages * PAGE).unwrap();
    file
}

fn piece(file: &File, page: u64, pages: u64) -> Piece<'_> {
    Piece {
        file,
        file_offset: page * PAGE,
        len: pages * PAGE,
    }
}

/// `a0 b0 a1 b1 ...`: page `i` of the map is page `i / 2` of `a` (even `i`) or `b` (odd `i`).
fn alternating<'a>(a: &'a File, b: &'a File, pairs: u64) -> Vec<Piece<'a>> {
    (0..pairs)
        .flat_map(|i| [piece(a, i, 1), piece(b, i, 1)])
        .collect()
}

fn file_bytes(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn writes_through_an_alternating_map_land_in_the_right_file_and_offset() {
    let a = memfd("stitch-a", 4);
    let b = memfd("stitch-b", 4);
    let map = StitchedMap::new(&alternating(&a, &b, 4)).unwrap();
    assert_eq!(map.len() as u64, 8 * PAGE);
    assert!(!map.is_empty());
    assert_eq!(map.mappings(), 8);

    for page in 0..8u64 {
        // A tag at the start, one straddling nothing, and an 8-byte word at the page's end.
        map.write(page * PAGE, &[0x10 + page as u8; 3]).unwrap();
        map.write(page * PAGE + PAGE - 8, &(page + 0x100).to_le_bytes())
            .unwrap();
    }
    for page in 0..8u64 {
        let (file, file_page) = if page % 2 == 0 {
            (&a, page / 2)
        } else {
            (&b, page / 2)
        };
        assert_eq!(
            file_bytes(file, file_page * PAGE, 3),
            [0x10 + page as u8; 3],
            "page {page}"
        );
        assert_eq!(
            file_bytes(file, file_page * PAGE + PAGE - 8, 8),
            (page + 0x100).to_le_bytes(),
            "page {page}"
        );
    }

    // An access crossing a piece boundary is split between the two files.
    map.write(PAGE - 2, &[0xaa, 0xbb, 0xcc, 0xdd]).unwrap();
    assert_eq!(file_bytes(&a, PAGE - 2, 2), [0xaa, 0xbb]);
    assert_eq!(file_bytes(&b, 0, 2), [0xcc, 0xdd]);
}

#[test]
fn writes_to_the_files_are_visible_through_the_map() {
    let a = memfd("stitch-a", 2);
    let b = memfd("stitch-b", 2);
    let map = StitchedMap::new(&alternating(&a, &b, 2)).unwrap();
    b.write_all_at(b"from b page 1", PAGE + 100).unwrap();
    a.write_all_at(b"from a page 0", 7).unwrap();

    let mut buf = [0u8; 13];
    map.read(3 * PAGE + 100, &mut buf).unwrap();
    assert_eq!(&buf, b"from b page 1");
    map.read(7, &mut buf).unwrap();
    assert_eq!(&buf, b"from a page 0");

    // Aligned word reads see what was written.
    a.write_all_at(&0x1122_3344_5566_7788u64.to_le_bytes(), PAGE + 8)
        .unwrap();
    let mut word = [0u8; 8];
    map.read(2 * PAGE + 8, &mut word).unwrap();
    assert_eq!(u64::from_le_bytes(word), 0x1122_3344_5566_7788);
}

#[test]
fn files_may_be_closed_while_the_map_lives() {
    let a = memfd("stitch-a", 1);
    let b = memfd("stitch-b", 1);
    let map = StitchedMap::new(&alternating(&a, &b, 1)).unwrap();
    let a2 = a.try_clone().unwrap();
    drop(a);
    drop(b);
    map.write(10, b"still here").unwrap();
    assert_eq!(file_bytes(&a2, 10, 10), b"still here");
}

#[test]
fn adjacent_pieces_of_the_same_file_are_merged_into_one_mmap() {
    let a = memfd("stitch-a", 8);
    let b = memfd("stitch-b", 8);
    // a[0..3] as three pieces, then b[4..6] as two, then a[3] (contiguous in `a` but not
    // adjacent to the first run), then a[5] right after it (not contiguous in `a`).
    let pieces = [
        piece(&a, 0, 1),
        piece(&a, 1, 1),
        piece(&a, 2, 1),
        piece(&b, 4, 1),
        piece(&b, 5, 1),
        piece(&a, 3, 1),
        piece(&a, 5, 2),
    ];
    let map = StitchedMap::new(&pieces).unwrap();
    assert_eq!(map.mappings(), 4);
    assert_eq!(map.len() as u64, 8 * PAGE);

    let expect: [(&File, u64); 8] = [
        (&a, 0),
        (&a, 1),
        (&a, 2),
        (&b, 4),
        (&b, 5),
        (&a, 3),
        (&a, 5),
        (&a, 6),
    ];
    for (page, (file, file_page)) in expect.into_iter().enumerate() {
        let tag = (page as u32 + 1).to_le_bytes();
        file.write_all_at(&tag, file_page * PAGE + 64).unwrap();
        let mut got = [0u8; 4];
        map.read(page as u64 * PAGE + 64, &mut got).unwrap();
        assert_eq!(got, tag, "map page {page}");
    }

    // The same file with contiguous offsets but through another descriptor is not merged.
    let a_again = a.try_clone().unwrap();
    let map = StitchedMap::new(&[piece(&a, 0, 1), piece(&a_again, 1, 1)]).unwrap();
    assert_eq!(map.mappings(), 2);
}

#[test]
fn rejects_empty_unaligned_zero_overflowing_and_past_eof_pieces() {
    let a = memfd("stitch-a", 2);
    let ok = piece(&a, 0, 1);
    let check = |pieces: &[Piece<'_>]| StitchedMap::new(pieces).unwrap_err();

    assert!(matches!(check(&[]), StitchError::Empty));
    let zero = Piece { len: 0, ..ok };
    assert!(matches!(
        check(&[ok, zero]),
        StitchError::BadLength { index: 1, len: 0 }
    ));
    let short = Piece { len: 100, ..ok };
    assert!(matches!(
        check(&[short]),
        StitchError::BadLength { index: 0, len: 100 }
    ));
    let unaligned = Piece {
        file_offset: 0x800,
        ..ok
    };
    assert!(matches!(
        check(&[ok, ok, unaligned]),
        StitchError::BadOffset {
            index: 2,
            file_offset: 0x800
        }
    ));
    let huge = Piece {
        file_offset: u64::MAX - (PAGE - 1),
        ..ok
    };
    assert!(matches!(
        check(&[huge]),
        StitchError::FileRangeOverflow { index: 0, .. }
    ));
    // A device file has no meaningful size, so only the total is at fault here.
    let dev_zero = File::open("/dev/zero").unwrap();
    let total = Piece {
        file: &dev_zero,
        file_offset: 0,
        len: 1 << 62,
    };
    assert!(matches!(
        check(&[total, total]),
        StitchError::TotalOverflow { index: 1 }
    ));
    let past_eof = piece(&a, 1, 2);
    let err = check(&[ok, past_eof]);
    assert!(
        matches!(
            err,
            StitchError::BeyondEof {
                index: 1,
                end: 0x3000,
                file_size: 0x2000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn accesses_are_bounds_checked() {
    let a = memfd("stitch-a", 1);
    let b = memfd("stitch-b", 1);
    let map = StitchedMap::new(&alternating(&a, &b, 1)).unwrap();
    let size = 2 * PAGE;
    map.write(size - 8, &[1; 8]).unwrap();
    let mut buf = [0u8; 8];
    map.read(size - 8, &mut buf).unwrap();
    assert_eq!(buf, [1; 8]);
    assert_eq!(
        map.write(size - 4, &[0; 8]),
        Err(OutOfBounds {
            offset: size - 4,
            len: 8,
            size
        })
    );
    assert!(map.read(size, &mut buf[..1]).is_err());
    assert!(map.read(u64::MAX - 2, &mut buf).is_err());
    // Empty accesses at the end are fine, past it are not.
    map.read(size, &mut []).unwrap();
    assert!(map.write(size + 1, &[]).is_err());
}

#[test]
fn vma_numbers_are_readable() {
    let limit = vma_limit().expect("/proc/sys/vm/max_map_count");
    let in_use = vmas_in_use().expect("/proc/self/maps");
    assert!(in_use > 0 && in_use < limit, "{in_use} of {limit}");
}
