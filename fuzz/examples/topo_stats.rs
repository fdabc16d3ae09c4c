//! Counts how many inputs of a topology corpus parse, validate and build (corpus health).
use cxlvm_cxl::topology::Topology;
fn main() {
    let (mut n, mut parsed, mut valid, mut regions) = (0, 0, 0, 0);
    for dir in std::env::args().skip(1) {
        for e in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            n += 1;
            let Ok(s) = std::str::from_utf8(&data) else {
                continue;
            };
            let Ok(mut t) = Topology::from_toml(s) else {
                continue;
            };
            parsed += 1;
            if t.validate(&cxlvm_fuzz::rig::limits()).is_ok() {
                valid += 1;
                regions += usize::from(!t.regions.is_empty());
                cxlvm_fuzz::targets::topology(&data);
            }
        }
    }
    println!(
        "{n} inputs, {parsed} parse, {valid} validate and were built ({regions} with regions)"
    );
}
