//! Running out of VMAs fails cleanly, names the cause and leaves nothing behind.
//!
//! This binary holds a single test: it uses up the whole per-process VMA budget for a moment,
//! which nothing else in the process may be doing at the same time.

use std::fs::File;

use cxlvm_stitch::{PAGE_SIZE, Piece, StitchError, StitchedMap, vma_limit, vmas_in_use};

fn memfd(name: &str, pages: u64) -> File {
    let file = memfd::MemfdOptions::default()
        .close_on_exec(true)
        .create(name)
        .unwrap()
        .into_file();
    file.set_len(pages * PAGE_SIZE).unwrap();
    file
}

#[test]
fn exceeding_the_vma_limit_reports_it_and_unmaps_everything() {
    // Tests are not skipped silently: a host where this cannot be exercised fails, saying why.
    let limit = vma_limit().expect("this test needs a readable /proc/sys/vm/max_map_count");
    assert!(
        limit <= 600_000,
        "vm.max_map_count is {limit}: too many mappings to hit the limit in a quick test; \
         run this test on a host with the default limit (65530)"
    );
    // Alternating single pages of two files: nothing merges, every piece is one VMA.
    let pairs = limit / 2 + 64;
    let a = memfd("cxlvm-stitch-vma-a", pairs);
    let b = memfd("cxlvm-stitch-vma-b", pairs);
    let pieces: Vec<Piece<'_>> = (0..pairs)
        .flat_map(|i| {
            [&a, &b].map(|file| Piece {
                file,
                file_offset: i * PAGE_SIZE,
                len: PAGE_SIZE,
            })
        })
        .collect();

    let before = vmas_in_use().unwrap();
    let err = StitchedMap::new(&pieces).unwrap_err();
    assert_eq!(vmas_in_use().unwrap(), before, "VMAs left behind");
    match &err {
        StitchError::Map {
            index,
            mapping,
            source,
            ..
        } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOMEM), "{err}");
            assert_eq!(index, mapping);
            // It got about as far as the budget allowed.
            assert!((*index as u64) + before + 8 >= limit, "{err}");
            assert!((*index as u64) < limit, "{err}");
        }
        other => panic!("unexpected error: {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("vm.max_map_count"), "{msg}");
    assert!(msg.contains(&format!("is {limit}")), "{msg}");

    // Within the budget the same kind of map works.
    let fitting = (limit - before) / 2;
    let map = StitchedMap::new(&pieces[..fitting as usize]).unwrap();
    assert_eq!(map.mappings() as u64, fitting);
}
