//! A failed stitch and a dropped map leave nothing mapped behind.
//!
//! This binary holds a single test so that no other test maps or unmaps memory in this process
//! while it compares `/proc/self/maps` before and after.

use std::fs::File;
use std::os::fd::AsRawFd;

use cxlvm_stitch::{PAGE_SIZE, Piece, StitchError, StitchedMap, vmas_in_use};

fn memfd(name: &str, pages: u64) -> File {
    let file = memfd::MemfdOptions::default()
        .close_on_exec(true)
        .create(name)
        .unwrap()
        .into_file();
    file.set_len(pages * PAGE_SIZE).unwrap();
    file
}

fn maps() -> String {
    std::fs::read_to_string("/proc/self/maps").unwrap()
}

/// Lines of /proc/self/maps that overlap `start..end`.
fn overlapping(start: u64, end: u64) -> Vec<String> {
    maps()
        .lines()
        .filter(|line| {
            let range = line.split_whitespace().next().unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let lo = u64::from_str_radix(lo, 16).unwrap();
            let hi = u64::from_str_radix(hi, 16).unwrap();
            lo < end && start < hi
        })
        .map(str::to_owned)
        .collect()
}

fn piece(file: &File, page: u64) -> Piece<'_> {
    Piece {
        file,
        file_offset: page * PAGE_SIZE,
        len: PAGE_SIZE,
    }
}

#[test]
fn failed_stitch_and_dropped_map_leave_no_mapping_behind() {
    // --- failure midway: the third mmap fails after two succeeded --------------------------
    let name = format!("cxlvm-stitch-cleanup-{}", std::process::id());
    let writable = memfd(&name, 4);
    // The same memfd reopened read-only: a shared writable mapping of it fails with EACCES.
    let read_only = File::open(format!("/proc/self/fd/{}", writable.as_raw_fd())).unwrap();
    let pieces = [
        piece(&writable, 0),
        piece(&writable, 2),
        piece(&read_only, 1),
        piece(&writable, 3),
    ];
    let before = vmas_in_use().unwrap();
    let err = StitchedMap::new(&pieces).unwrap_err();
    let after = vmas_in_use().unwrap();
    match &err {
        StitchError::Map {
            index: 2,
            mapping: 2,
            offset,
            source,
            hint,
            ..
        } => {
            assert_eq!(*offset, 2 * PAGE_SIZE);
            assert_eq!(source.raw_os_error(), Some(libc::EACCES), "{err}");
            assert!(hint.is_empty(), "{err}");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().starts_with("piece 2:"), "{err}");
    assert_eq!(before, after, "a failed stitch left VMAs behind");
    assert!(
        !maps().contains(&name),
        "a failed stitch left a mapping of the memfd behind:\n{}",
        maps()
    );

    // --- drop: the whole range goes away ----------------------------------------------------
    let other = memfd("cxlvm-stitch-cleanup-other", 4);
    let pieces = [
        piece(&writable, 0),
        piece(&other, 0),
        piece(&writable, 1),
        piece(&other, 1),
    ];
    let before = vmas_in_use().unwrap();
    let map = StitchedMap::new(&pieces).unwrap();
    let start = map.as_ptr() as u64;
    let end = start + map.len() as u64;
    let lines = overlapping(start, end);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains(" rw-s ")), "{lines:#?}");
    assert_eq!(lines.iter().filter(|l| l.contains(&name)).count(), 2);
    assert_eq!(vmas_in_use().unwrap(), before + 4);
    drop(map);
    assert_eq!(overlapping(start, end), Vec::<String>::new());
    assert_eq!(vmas_in_use().unwrap(), before);
    assert!(!maps().contains(&name));
}
