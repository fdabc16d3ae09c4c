//! `mode=enumerate`: prints what the walk found, then checks it against the ABI.

use cxlvm_guest::cxl::{self, ways_to_enc};
use cxlvm_guest::{BootInfo, println};

use crate::topology::Topology;
use crate::{BAD_REGISTERS, Csv};

pub fn run(boot: &BootInfo) -> Result<(), i32> {
    let topo = Topology::discover(boot)?;
    print(&topo);
    let failures = check(&topo);
    if failures > 0 {
        return Err(BAD_REGISTERS);
    }
    println!(
        "enumerate ok functions={} type3={}",
        topo.functions.len(),
        topo.type3s.len()
    );
    Ok(())
}

fn print(topo: &Topology) {
    for f in topo.functions.iter() {
        if f.is_root_port() {
            println!(
                "pci {} vendor={:04x} device={:04x} class={:06x} type={} port={} secondary={:02x}",
                f.bdf,
                f.vendor,
                f.device,
                f.class,
                f.type_name(),
                f.port,
                f.secondary
            );
        } else {
            println!(
                "pci {} vendor={:04x} device={:04x} class={:06x} type={}",
                f.bdf,
                f.vendor,
                f.device,
                f.class,
                f.type_name()
            );
        }
    }
    for hb in topo.hbs.iter() {
        let (decoders, targets) = hb
            .hdm
            .map_or((0, 0), |h| (h.decoder_count(), h.target_count()));
        println!(
            "hb uid={} chbcr={:#x} root_bus={:02x} hdm={} decoders={decoders} targets={targets}",
            hb.entry.uid,
            hb.entry.chbcr,
            hb.entry.root_bus,
            if hb.hdm.is_some() { "yes" } else { "no" },
        );
    }
    for t in topo.type3s.iter() {
        let cap = t.dvsec.map_or(0, |d| d.capability());
        println!(
            "type3 {} component={:#x} devregs={:#x} hdm_decoders={} dvsec_hdm_count={} mem_capable={} hb={} port={}",
            t.bdf,
            t.blocks.component.unwrap_or(0),
            t.blocks.device.unwrap_or(0),
            t.hdm.map_or(0, |h| h.decoder_count()),
            cxl::dvsec_hdm_count(cap),
            u8::from(cxl::dvsec_mem_capable(cap)),
            topo.hbs[t.hb].entry.uid,
            t.port,
        );
    }
    for (i, w) in topo.windows.iter().enumerate() {
        println!(
            "window index={i} base={:#x} size={:#x} ways={} gran={} arith={} targets={}",
            w.base,
            w.size,
            w.ways,
            w.gran,
            w.arithmetic,
            Csv(w.targets())
        );
    }
}

/// Checks the topology against the ABI; prints one `enumerate fail ...` line per problem and
/// returns how many there were.
fn check(topo: &Topology) -> usize {
    let mut failures = 0;
    let mut fail = |args: core::fmt::Arguments<'_>| {
        println!("enumerate fail {args}");
        failures += 1;
    };
    for hb in topo.hbs.iter() {
        let e = &hb.entry;
        if hb.component.is_none() {
            fail(format_args!(
                "hb uid={} chbcr={:#x} not mapped",
                e.uid, e.chbcr
            ));
        } else if e.passthrough == hb.hdm.is_some() {
            fail(format_args!(
                "hb uid={} passthrough={} but hdm={}",
                e.uid,
                u8::from(e.passthrough),
                if hb.hdm.is_some() { "yes" } else { "no" }
            ));
        }
        if hb.ports.len() != usize::from(e.root_ports) {
            fail(format_args!(
                "hb uid={} root-ports found={} expected={}",
                e.uid,
                hb.ports.len(),
                e.root_ports
            ));
        }
        if let Some(h) = hb.hdm
            && h.target_count() == 0
        {
            fail(format_args!("hb uid={} hdm target count 0", e.uid));
        }
        for (i, rp) in hb.ports.iter().enumerate() {
            let expected = u32::from(e.root_bus) + 1 + u32::from(rp.port);
            if u32::from(rp.secondary) != expected {
                fail(format_args!(
                    "root-port {} secondary={:02x} expected={expected:02x}",
                    rp.bdf, rp.secondary
                ));
            }
            if hb.ports[..i].iter().any(|o| o.port == rp.port) {
                fail(format_args!(
                    "root-port {} port={} used twice on hb uid={}",
                    rp.bdf, rp.port, e.uid
                ));
            }
        }
    }
    for t in topo.type3s.iter() {
        if t.bdf.dev != 0 || t.bdf.func != 0 {
            fail(format_args!("type3 {} not at device 0 function 0", t.bdf));
        }
        if !t.has_locator {
            fail(format_args!("type3 {} no register locator dvsec", t.bdf));
        }
        if t.blocks.component.is_none() {
            fail(format_args!("type3 {} no component registers", t.bdf));
        } else if t.hdm.is_none() {
            fail(format_args!("type3 {} no hdm decoders", t.bdf));
        }
        if t.blocks.device.is_none() {
            fail(format_args!("type3 {} no device registers", t.bdf));
        }
        match t.dvsec {
            None => fail(format_args!("type3 {} no device dvsec", t.bdf)),
            Some(d) => {
                let cap = d.capability();
                if !cxl::dvsec_mem_capable(cap) || !(1..=2).contains(&cxl::dvsec_hdm_count(cap)) {
                    fail(format_args!("type3 {} dvsec capability={cap:#06x}", t.bdf));
                }
            }
        }
    }
    for (i, w) in topo.windows.iter().enumerate() {
        if w.ways == 0 || w.gran == 0 {
            fail(format_args!(
                "window index={i} bad encodings ways={} gran={}",
                w.flags.ways_enc, w.flags.gran_enc
            ));
            continue;
        }
        if w.targets().len() != w.ways as usize || ways_to_enc(w.ways).is_none() {
            fail(format_args!(
                "window index={i} targets={} ways={}",
                w.targets().len(),
                w.ways
            ));
        }
        if w.base % cxl::UNIT != 0 || w.size % cxl::UNIT != 0 || w.size == 0 {
            fail(format_args!("window index={i} not 256 MiB aligned"));
        }
        for &uid in w.targets() {
            if topo.hb_by_uid(uid).is_none() {
                fail(format_args!(
                    "window index={i} target uid={uid} has no host bridge"
                ));
            }
        }
    }
    failures
}
