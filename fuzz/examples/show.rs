//! Replays one input of the `ecam` or `hdm` target and prints every op and the overlay state
//! after it, or shows the topology a `regions` input generates (triage):
//! `cargo run --example show -- hdm FILE`.

use cxlvm_fuzz::ops::{ECAM_OPS, HDM_OPS, Op};
use cxlvm_fuzz::reader::Reader;
use cxlvm_fuzz::rig::Rig;
use cxlvm_fuzz::targets::{MAX_OPS, PLATFORM, budget};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let table = match args.get(1).map(String::as_str) {
        Some("ecam") => ECAM_OPS,
        Some("hdm") => HDM_OPS,
        Some("regions") => {
            // The generated topology and what validation says about it.
            let data = std::fs::read(&args[2]).unwrap();
            let toml = cxlvm_fuzz::targets::generate_topology(&mut Reader::new(&data));
            println!("{toml}");
            let mut t = cxlvm_cxl::topology::Topology::from_toml(&toml).unwrap();
            println!("validate: {:?}", t.validate(&cxlvm_fuzz::rig::limits()));
            cxlvm_fuzz::targets::regions(&data);
            println!("ok");
            return;
        }
        _ => panic!("usage: show ecam|hdm|regions FILE"),
    };
    let data = std::fs::read(&args[2]).unwrap();
    let mut r = Reader::new(&data);
    let budget = budget(r.u8());
    println!("budget {budget}");
    let mut rig = Rig::build(PLATFORM, budget);
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = Op::decode(&mut r, table);
        println!("{op:?}");
        rig.apply(&op);
        for s in rig.p.overlays.ranges() {
            println!(
                "    {} [{:#x}, {:#x}) {}: {}",
                s.window,
                s.hpa,
                s.hpa + s.len,
                s.mode,
                s.detail
            );
        }
        rig.check_all();
    }
    rig.check_functions();
    println!("ok");
}
