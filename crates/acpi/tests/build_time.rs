//! Measures how long building the sample platform's tables takes (printed, never asserted:
//! run with `--nocapture` to see it).

mod common;

use std::time::Instant;

#[test]
fn table_build_time() {
    let p = common::sample();
    let layout = cxlvm_acpi::Layout::new(common::BASE);
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let tables = layout.build(&p).unwrap();
        times.push(t.elapsed());
        std::hint::black_box(tables);
    }
    times.sort();
    let bytes = layout.build(&p).unwrap().blob().len();
    println!(
        "ACPI tables for the sample platform ({bytes} bytes, {} build): median {:?}, min {:?}, \
         max {:?} over {} builds",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        times.len()
    );
}
