use super::*;
use crate::topology::{AddressLimits, Size};

const W0: u64 = 1 << 40;
const W1: u64 = W0 + (4 << 30);
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn limits() -> AddressLimits {
    AddressLimits {
        reserved: vec![],
        window_min: 1 << 40,
        window_max: 1 << 46,
    }
}

/// hb0: mem0 (rp 0, 1G), mem1 (rp 1, 1G + 512M persistent), mem4 (rp 2, 256M);
/// hb1: mem2 (rp 0, 512M), mem3 (rp 1, 512M + 512M persistent).
/// w0 over hb0, w1 over hb0 and hb1, 4 KiB. r0: 2-way in w0; r1: 4-way in w1; r2: persistent
/// 2-way in w1.
const GOOD: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 3
[[host_bridge]]
id = "hb1"
root_ports = 2

[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "1G"
[[device]]
id = "mem1"
host_bridge = "hb0"
root_port = 1
volatile = "1G"
persistent = "512M"
persistent_file = "/nonexistent/p1.img"
[[device]]
id = "mem2"
host_bridge = "hb1"
root_port = 0
volatile = "512M"
[[device]]
id = "mem3"
host_bridge = "hb1"
root_port = 1
volatile = "512M"
persistent = "512M"
persistent_file = "/nonexistent/p3.img"
[[device]]
id = "mem4"
host_bridge = "hb0"
root_port = 2
volatile = "256M"

[[window]]
id = "w0"
size = "4G"
targets = ["hb0"]
[[window]]
id = "w1"
size = "4G"
targets = ["hb0", "hb1"]

[[region]]
id = "r0"
window = "w0"
devices = ["mem0", "mem1"]
size = "1G"
[[region]]
id = "r1"
window = "w1"
devices = ["mem0", "mem2", "mem1", "mem3"]
size = "1G"
[[region]]
id = "r2"
window = "w1"
devices = ["mem1", "mem3"]
size = "512M"
persistent = true
lock = false
"#;

fn good() -> Topology {
    Topology::from_toml(GOOD).unwrap()
}

fn planned(t: &mut Topology) -> Vec<RegionPlan> {
    t.validate(&limits()).unwrap();
    plan(t).unwrap()
}

fn ep(device: usize, position: usize, decoder: usize, skip: u64, dpa: u64) -> EndpointDecoder {
    EndpointDecoder {
        device,
        position,
        decoder,
        dpa_skip: skip,
        dpa_base: dpa,
    }
}

#[test]
fn plans_decoders_dpa_and_target_lists_like_linux() {
    let mut t = good();
    let p = planned(&mut t);
    assert_eq!(p.len(), 3);
    // Bases: packed from each window's base; validate writes them back.
    assert_eq!(
        (p[0].base, p[1].base, p[2].base),
        (W0, W1, W1 + GIB),
        "{p:#?}"
    );
    assert_eq!(t.regions[2].base, Some(Size(W1 + GIB)));
    assert!(p[0].lock && p[1].lock && !p[2].lock);

    // r0: 2 ways at 4 KiB below one host bridge.
    assert_eq!((p[0].ways, p[0].gran), (Ways::X2, Granularity::K4));
    assert_eq!(p[0].endpoints, vec![ep(0, 0, 0, 0, 0), ep(1, 1, 0, 0, 0)]);
    assert_eq!(
        p[0].host_bridges,
        vec![HostBridgeDecoder {
            host_bridge: 0,
            decoder: Some(0),
            ways: Ways::X2,
            gran: Granularity::K4,
            targets: vec![0, 1],
        }]
    );

    // r1: 2 host bridges x 2 root ports; host bridges at 8 KiB; mem0 and mem1 continue their
    // volatile DPA after r0 (512 MiB each).
    assert_eq!(p[1].ways, Ways::X4);
    assert_eq!(
        p[1].endpoints,
        vec![
            ep(0, 0, 1, 0, 512 * MIB),
            ep(2, 1, 0, 0, 0),
            ep(1, 2, 1, 0, 512 * MIB),
            ep(3, 3, 0, 0, 0),
        ]
    );
    let hb = |h, decoder, targets: Vec<u8>| HostBridgeDecoder {
        host_bridge: h,
        decoder: Some(decoder),
        ways: Ways::X2,
        gran: Granularity::K8,
        targets,
    };
    assert_eq!(
        p[1].host_bridges,
        vec![hb(0, 1, vec![0, 1]), hb(1, 0, vec![0, 1])]
    );

    // r2: persistent; mem1's persistent DPA starts at V = 1 GiB (skip over the 256 MiB of
    // volatile capacity its decoders do not use), mem3's at 512 MiB.
    assert_eq!(p[2].capacity, Capacity::Persistent);
    assert_eq!(
        p[2].endpoints,
        vec![
            ep(1, 0, 2, 256 * MIB, GIB),
            ep(3, 1, 1, 256 * MIB, 512 * MIB)
        ]
    );
    assert_eq!(
        p[2].host_bridges
            .iter()
            .map(|h| (h.decoder, h.ways, h.gran, h.targets.clone()))
            .collect::<Vec<_>>(),
        vec![
            (Some(2), Ways::X1, Granularity::K8, vec![1]),
            (Some(1), Ways::X1, Granularity::K8, vec![1]),
        ]
    );
    // Validating again (bases now explicit) plans the same.
    let again = planned(&mut t);
    assert_eq!(again, p);
}

#[test]
fn passthrough_host_bridges_get_no_decoder() {
    let mut t = Topology::simple(1, 256 * MIB, 4096, true);
    t.regions.push(crate::topology::Region {
        id: "r".into(),
        window: "cfmw0".into(),
        devices: vec!["mem0".into()],
        granularity: None,
        size: Size(256 * MIB),
        base: None,
        persistent: false,
        lock: None,
    });
    let p = planned(&mut t);
    assert_eq!(p[0].host_bridges[0].decoder, None);
    assert_eq!(p[0].endpoints, vec![ep(0, 0, 0, 0, 0)]);
}

fn problem(edit: impl Fn(&mut Topology)) -> (String, RegionError) {
    let mut t = good();
    edit(&mut t);
    match t.validate(&limits()) {
        Err(TopologyError::Region { id, source }) => (id, *source),
        other => panic!("expected a region error, got {other:?}"),
    }
}

fn region(t: &mut Topology, id: &str) -> usize {
    t.regions.iter().position(|r| r.id == id).unwrap()
}

#[test]
fn each_problem_is_typed_and_names_its_region() {
    use RegionError as E;
    let set = |id: &'static str, f: fn(&mut crate::topology::Region)| {
        move |t: &mut Topology| {
            let i = region(t, id);
            f(&mut t.regions[i]);
        }
    };
    let devs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (id, e) = problem(|t| {
        let r = t.regions[0].clone();
        t.regions.push(r);
    });
    assert_eq!((id.as_str(), e), ("r0", E::DefinedTwice));

    let (id, e) = problem(set("r1", |r| r.window = "nope".into()));
    assert_eq!((id.as_str(), e), ("r1", E::NoSuchWindow("nope".into())));

    let (_, e) = problem(set("r0", |r| r.devices.clear()));
    assert_eq!(e, E::NoDevices);

    let (_, e) = problem(set("r0", |r| r.devices[1] = "memX".into()));
    assert_eq!(e, E::NoSuchDevice("memX".into()));

    let (_, e) = problem(set("r0", |r| r.devices[1] = "mem0".into()));
    assert_eq!(e, E::DeviceTwice("mem0".into()));

    let (_, e) = problem(set("r0", |r| r.devices[1] = "mem2".into()));
    assert!(
        matches!(e, E::NotUnderWindow { ref device, ref host_bridge, ref window }
            if device == "mem2" && host_bridge == "hb1" && window == "w0"),
        "{e:?}"
    );

    let (_, e) = problem(move |t| {
        let i = region(t, "r1");
        t.regions[i].devices = devs(&["mem0", "mem2", "mem1"]);
        t.regions[i].size = Size(768 * MIB);
    });
    assert!(
        matches!(
            e,
            E::NotMultiple {
                ways: 3,
                targets: 2,
                ..
            }
        ),
        "{e:?}"
    );

    let (_, e) = problem(move |t| {
        let i = region(t, "r0");
        t.regions[i].devices = devs(&["mem0", "mem1", "mem4"]);
        t.regions[i].size = Size(768 * MIB);
    });
    assert_eq!(e, E::HostBridgeWays(3));

    let (_, e) = problem(move |t| {
        let i = region(t, "r1");
        t.regions[i].devices = devs(&["mem0", "mem1", "mem2", "mem3"]);
    });
    assert!(
        matches!(e, E::WrongHostBridge { ref device, position: 1, ref expected, targets: 2, .. }
            if device == "mem1" && expected == "hb1"),
        "{e:?}"
    );

    let (_, e) = problem(set("r0", |r| r.granularity = Some(Size(100))));
    assert_eq!(e, E::Granularity(100));

    let (_, e) = problem(set("r1", |r| r.granularity = Some(Size(8192))));
    assert!(
        matches!(
            e,
            E::WindowGranularity {
                gran: 8192,
                window_gran: 4096,
                targets: 2,
                ..
            }
        ),
        "{e:?}"
    );

    let (_, e) = problem(|t| {
        t.windows[1].granularity = Some(Size(16384));
    });
    assert_eq!(
        e,
        E::HostBridgeGranularity {
            gran: 16384,
            targets: 2,
            needed: 32768
        }
    );

    let (_, e) = problem(set("r0", |r| r.size = Size(768 * MIB)));
    assert_eq!(
        e,
        E::Size {
            size: 768 * MIB,
            ways: 2
        }
    );

    let (_, e) = problem(set("r1", |r| r.base = Some(Size(W1 + 256 * MIB))));
    assert!(
        matches!(e, E::Misaligned { base, unit, .. } if base == W1 + 256 * MIB && unit == 512 * MIB),
        "{e:?}"
    );

    let (_, e) = problem(set("r2", |r| r.size = Size(4 << 30)));
    assert!(matches!(e, E::OutsideWindow { .. }), "{e:?}");
    let (_, e) = problem(set("r0", |r| r.base = Some(Size(W0 - GIB))));
    assert!(matches!(e, E::OutsideWindow { .. }), "{e:?}");

    let (id, e) = problem(set("r2", |r| r.base = Some(Size(W1))));
    assert!(
        id == "r2" && matches!(e, E::Overlap { ref other, .. } if other == "r1"),
        "{e:?}"
    );

    let (_, e) = problem(set("r0", |r| r.size = Size(4 << 30)));
    assert_eq!(
        e,
        E::Capacity {
            device: "mem0".into(),
            capacity: Capacity::Volatile,
            left: GIB,
            needed: 2 * GIB
        }
    );
    let (_, e) = problem(set("r2", |r| r.size = Size(2 * GIB)));
    assert_eq!(
        e,
        E::Capacity {
            device: "mem1".into(),
            capacity: Capacity::Persistent,
            left: 512 * MIB,
            needed: GIB
        }
    );
    // No persistent capacity at all on mem0.
    let (_, e) = problem(move |t| {
        let i = region(t, "r2");
        t.regions[i].devices = devs(&["mem0", "mem2"]);
    });
    assert!(
        matches!(e, E::Capacity { ref device, capacity: Capacity::Persistent, left: 0, .. } if device == "mem0"),
        "{e:?}"
    );

    // A persistent region on mem1 below its volatile r1 (w0 is below w1).
    let (id, e) = problem(|t| {
        t.regions.push(crate::topology::Region {
            id: "p".into(),
            window: "w0".into(),
            devices: vec!["mem1".into()],
            granularity: None,
            size: Size(256 * MIB),
            base: None,
            persistent: true,
            lock: None,
        });
    });
    assert_eq!(
        (id.as_str(), e),
        (
            "r1",
            E::DpaOrder {
                device: "mem1".into(),
                other: "p".into()
            }
        )
    );

    let (id, e) = problem(|t| t.devices[1].decoders = Some(2));
    assert_eq!(
        (id.as_str(), e),
        (
            "r2",
            E::Decoders {
                component: Component::Device("mem1".into()),
                decoders: 2
            }
        )
    );
    let (id, e) = problem(|t| t.host_bridges[1].decoders = Some(1));
    assert_eq!(
        (id.as_str(), e),
        (
            "r2",
            E::Decoders {
                component: Component::HostBridge("hb1".into()),
                decoders: 1
            }
        )
    );
}

#[test]
fn interleaves_beyond_address_bit_14_are_refused() {
    let mut t = Topology::simple(4, 256 * MIB, 16384, false);
    t.regions.push(crate::topology::Region {
        id: "r".into(),
        window: "cfmw0".into(),
        devices: (0..4).map(|i| format!("mem{i}")).collect(),
        granularity: None,
        size: Size(GIB),
        base: None,
        persistent: false,
        lock: None,
    });
    let e = t.validate(&limits()).unwrap_err();
    assert!(
        matches!(&e, TopologyError::Region { source, .. }
            if **source == RegionError::AddressBit { ways: 4, gran: 16384, bit: 15 }),
        "{e:?}"
    );
    // 4 ways at 8 KiB select on bits 13 and 14: accepted.
    t.regions[0].granularity = Some(Size(8192));
    t.validate(&limits()).unwrap();
}
