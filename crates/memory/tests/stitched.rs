//! Stitched backings: one contiguous backing made of pieces of other backings, sharing their bytes.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use cxlvm_memory::{BackingError, PAGE_SIZE, RamBacking};

const PAGE: u64 = PAGE_SIZE;

/// `a[0] b[0] a[1] b[1] ...`, one page each.
fn alternating(
    a: &Arc<RamBacking>,
    b: &Arc<RamBacking>,
    pairs: u64,
) -> Vec<(Arc<RamBacking>, u64, u64)> {
    (0..pairs)
        .flat_map(|i| [(a.clone(), i * PAGE, PAGE), (b.clone(), i * PAGE, PAGE)])
        .collect()
}

fn read_vec(backing: &RamBacking, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    backing.read(offset, &mut buf).unwrap();
    buf
}

#[test]
fn stitched_backing_alternates_pages_of_two_memfd_backings() {
    let a = RamBacking::memfd("dev0", 4 * PAGE).unwrap();
    let b = RamBacking::memfd("dev1", 4 * PAGE).unwrap();
    let s = RamBacking::stitched("window", &alternating(&a, &b, 4)).unwrap();
    assert_eq!(s.name(), "window");
    assert_eq!(s.size(), 8 * PAGE);
    assert!(s.is_stitched() && !a.is_stitched());
    assert_eq!(s.mappings(), 8);
    assert_eq!(a.mappings(), 1);
    assert!(s.file().is_none());
    assert!(a.file().is_some());
    assert_ne!(s.id(), a.id());

    // Writes through the stitched backing land in the right device at the right offset.
    for page in 0..8u64 {
        s.write(page * PAGE + 16, &(0xc0de_0000 + page).to_le_bytes())
            .unwrap();
    }
    for page in 0..8u64 {
        let dev = if page % 2 == 0 { &a } else { &b };
        assert_eq!(
            read_vec(dev, (page / 2) * PAGE + 16, 8),
            (0xc0de_0000 + page).to_le_bytes(),
            "page {page}"
        );
    }
    // ... and in the device's file itself.
    let mut word = [0u8; 8];
    b.file()
        .unwrap()
        .read_exact_at(&mut word, 3 * PAGE + 16)
        .unwrap();
    assert_eq!(u64::from_le_bytes(word), 0xc0de_0007);

    // Writes to a device are seen through the stitched backing.
    a.write(2 * PAGE + 100, b"written on dev0").unwrap();
    assert_eq!(read_vec(&s, 4 * PAGE + 100, 15), b"written on dev0");
    b.file()
        .unwrap()
        .write_all_at(b"into dev1's file", PAGE)
        .unwrap();
    assert_eq!(read_vec(&s, 3 * PAGE, 16), b"into dev1's file");
}

#[test]
fn stitched_backing_reads_and_writes_across_pieces_without_a_view() {
    let a = RamBacking::memfd("dev0", 2 * PAGE).unwrap();
    let b = RamBacking::memfd("dev1", 2 * PAGE).unwrap();
    let s = RamBacking::stitched("window", &alternating(&a, &b, 2)).unwrap();

    // One access spanning all four pieces.
    let pattern: Vec<u8> = (0..(2 * PAGE + 64) as usize)
        .map(|i| (i % 251) as u8)
        .collect();
    s.write(PAGE - 32, &pattern).unwrap();
    assert_eq!(read_vec(&s, PAGE - 32, pattern.len()), pattern);
    // Its parts sit in the devices: end of a[0], all of b[0], all of a[1], start of b[1].
    assert_eq!(read_vec(&a, PAGE - 32, 32), pattern[..32]);
    assert_eq!(
        read_vec(&b, 0, PAGE as usize),
        pattern[32..32 + PAGE as usize]
    );
    assert_eq!(
        read_vec(&a, PAGE, PAGE as usize),
        pattern[32 + PAGE as usize..32 + 2 * PAGE as usize]
    );
    assert_eq!(read_vec(&b, PAGE, 32), pattern[32 + 2 * PAGE as usize..]);

    // The host address is one contiguous range over the whole backing.
    let base = s.host_address(0, s.size()).unwrap();
    assert_eq!(s.host_address(3 * PAGE, PAGE), Some(base + 3 * PAGE));
    assert_ne!(base, a.host_address(0, 1).unwrap());
}

#[test]
fn stitched_backing_rejects_bad_pieces_and_out_of_bounds_accesses() {
    let a = RamBacking::memfd("dev0", 2 * PAGE).unwrap();
    let bad = |pieces: &[(Arc<RamBacking>, u64, u64)]| match RamBacking::stitched("w", pieces)
        .unwrap_err()
    {
        BackingError::BadPiece { index, problem, .. } => (index, problem),
        other => panic!("unexpected error: {other}"),
    };
    let ok = (a.clone(), 0, PAGE);
    assert!(matches!(
        RamBacking::stitched("w", &[]),
        Err(BackingError::BadSize { size: 0, .. })
    ));
    assert_eq!(bad(&[ok.clone(), (a.clone(), PAGE, 0)]).0, 1);
    assert_eq!(bad(&[(a.clone(), 100, PAGE)]).0, 0);
    assert_eq!(bad(&[ok.clone(), ok.clone(), (a.clone(), 0, 100)]).0, 2);
    let (index, problem) = bad(&[ok.clone(), (a.clone(), PAGE, 2 * PAGE)]);
    assert_eq!((index, problem), (1, "range is outside the source backing"));
    assert_eq!(bad(&[(a.clone(), u64::MAX - (PAGE - 1), PAGE)]).0, 0);
    let msg = RamBacking::stitched("w", &[(a.clone(), 2 * PAGE, PAGE)])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("piece 0") && msg.contains("'dev0'"), "{msg}");

    let s = RamBacking::stitched("w", &[ok.clone(), ok]).unwrap();
    let size = 2 * PAGE;
    assert!(matches!(
        s.write(size - 4, &[0; 8]),
        Err(BackingError::OutOfBounds { offset, len: 8, size: 0x2000, .. }) if offset == size - 4
    ));
    let mut buf = [0u8; 8];
    assert!(matches!(
        s.read(u64::MAX - 2, &mut buf),
        Err(BackingError::OutOfBounds { .. })
    ));
    assert_eq!(s.host_address(size, 1), None);
    assert_eq!(
        s.host_address(size - 1, 1),
        s.host_address(0, 1).map(|b| b + size - 1)
    );
}

#[test]
fn stitched_backing_keeps_sources_alive_and_merges_contiguous_pieces() {
    let a = RamBacking::memfd("dev0", 4 * PAGE).unwrap();
    // A file backing that starts inside its file: pieces are translated by its file offset.
    let file = memfd::MemfdOptions::default()
        .create("dev1-file")
        .unwrap()
        .into_file();
    file.set_len(8 * PAGE).unwrap();
    let b = RamBacking::from_file("dev1", file, 4 * PAGE, 4 * PAGE).unwrap();

    let s = RamBacking::stitched(
        "window",
        &[
            (a.clone(), 0, PAGE),
            (a.clone(), PAGE, 2 * PAGE), // contiguous with the previous piece: merged
            (b.clone(), 2 * PAGE, PAGE),
            (b.clone(), 3 * PAGE, PAGE), // merged
            (a.clone(), 3 * PAGE, PAGE), // contiguous in dev0, but not adjacent: own mapping
        ],
    )
    .unwrap();
    assert_eq!(s.size(), 6 * PAGE);
    assert_eq!(s.mappings(), 3);

    s.write(3 * PAGE + 8, b"dev1 page 2").unwrap();
    let mut buf = [0u8; 11];
    b.file()
        .unwrap()
        .read_exact_at(&mut buf, (4 + 2) * PAGE + 8)
        .unwrap();
    assert_eq!(&buf, b"dev1 page 2");

    let weak = Arc::downgrade(&a);
    drop(a);
    drop(b);
    assert!(
        weak.upgrade().is_some(),
        "the stitched backing keeps its sources"
    );
    s.write(5 * PAGE, b"still mapped").unwrap();
    assert_eq!(
        read_vec(&weak.upgrade().unwrap(), 3 * PAGE, 12),
        b"still mapped"
    );
    drop(s);
    assert!(weak.upgrade().is_none());
}

#[test]
fn a_stitched_backing_can_be_stitched_again() {
    let a = RamBacking::memfd("dev0", 2 * PAGE).unwrap();
    let b = RamBacking::memfd("dev1", 2 * PAGE).unwrap();
    let inner = RamBacking::stitched("inner", &alternating(&a, &b, 2)).unwrap(); // a0 b0 a1 b1
    // inner[1..3] = b0 a1, then inner[0] = a0: three pieces of files.
    let outer = RamBacking::stitched(
        "outer",
        &[(inner.clone(), PAGE, 2 * PAGE), (inner.clone(), 0, PAGE)],
    )
    .unwrap();
    assert_eq!(outer.size(), 3 * PAGE);
    assert_eq!(outer.mappings(), 3);
    for (page, (dev, dev_page)) in [(&b, 0), (&a, 1), (&a, 0)].into_iter().enumerate() {
        let tag = format!("outer page {page}");
        outer
            .write(page as u64 * PAGE + 40, tag.as_bytes())
            .unwrap();
        assert_eq!(
            read_vec(dev, dev_page * PAGE + 40, tag.len()),
            tag.as_bytes()
        );
    }
}
