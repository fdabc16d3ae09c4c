//! What a CXL machine is made of, from a TOML file or the short command-line flags, and every check
//! on it. A topology that passes [`Topology::validate`] can be built without further user errors
//! (except files that cannot be opened, checked by [`Topology::open_files`]).
//!
//! ```toml
//! [[host_bridge]]
//! id = "hb0"
//! root_ports = 2            # root ports numbered 0..n (their PCIe port numbers)
//! # passthrough = true      # no HDM decoders; only with exactly one root port
//!
//! [[device]]
//! id = "mem0"
//! host_bridge = "hb0"
//! root_port = 0
//! volatile = "1G"
//! # persistent = "512M"     # needs persistent_file
//! # persistent_file = "pmem0.img"
//! # lsa_file = "lsa0.img"   # label storage area (persistent devices; memfd if absent)
//!
//! [[window]]
//! id = "cfmw0"
//! size = "2G"
//! targets = ["hb0"]         # host-bridge interleave set, in position order
//! granularity = "4K"        # 256 B .. 16 KiB
//! # base = "0x10000000000"  # chosen by cxlvm when absent
//! # arithmetic = "modulo"   # or "xor"
//!
//! [[region]]                # committed by cxlvm, playing firmware, before the guest starts
//! id = "r0"
//! window = "cfmw0"
//! devices = ["mem0"]        # interleave order: position i is the i-th device
//! size = "1G"
//! # granularity = "4K"      # default: the window's
//! # base = "0x10000000000"  # default: packed from the window base after earlier regions
//! # persistent = true       # persistent capacity instead of volatile
//! # lock = false            # Lock-On-Commit (default true)
//! ```
//!
//! Regions are checked and planned by [`crate::region`].

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;

/// 256 MiB: the unit of CXL capacities, window bases and sizes.
pub const CXL_UNIT: u64 = 256 << 20;
/// Most host bridges (CHBCR slots).
pub const MAX_HOST_BRIDGES: usize = 16;
/// Most root ports per host bridge (HDM target count).
pub const MAX_ROOT_PORTS: u8 = 8;
/// Most fixed memory windows (the boot info and the ACPI CEDT are sized for this many).
pub const MAX_WINDOWS: usize = 64;
/// Highest host-bridge UID: the test-guest boot info lists window targets as 8-bit UIDs.
pub const MAX_UID: u32 = 255;
/// Most device capacity in one machine (all devices together): cxlvm maps every device's memory
/// into its own address space (and interleaved windows once more), which x86-64 limits to
/// 128 TiB.
pub const MAX_TOTAL_CAPACITY: u64 = 64 << 40;
/// Label storage area size of persistent devices.
pub const LSA_SIZE: u64 = 128 << 10;

/// A size given as a number of bytes or a string like "256M", "1G", "0x10000000".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `4096`, `0x1000`, `64K`, `256M`, `2G`, `1T` (also `KiB`/`MiB`/`GiB`/`TiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let err = || format!("'{s}' is not a size (examples: 4096, 0x1000, 256M, 2G)");
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(&hex.replace('_', ""), 16).map_err(|_| err());
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| err())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Window interleave arithmetic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arithmetic {
    /// Host bridge = (offset / granularity) mod ways.
    #[default]
    Modulo,
    /// Host bridge bits = parity of HPA bits selected by per-bit XOR maps (power-of-2 ways).
    Xor,
}

/// A CXL host bridge.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostBridge {
    /// Name used by windows and devices.
    pub id: String,
    /// ACPI `_UID` / CHBS UID (default: index in the file).
    pub uid: Option<u32>,
    /// Number of root ports (port numbers 0..n).
    pub root_ports: u8,
    /// No HDM decoders (only with exactly one root port).
    #[serde(default)]
    pub passthrough: bool,
    /// HDM decoders (1, 2, 4, 6, 8 or 10; default 4).
    pub decoders: Option<u8>,
}

/// A CXL Type-3 memory expander.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Name.
    pub id: String,
    /// Host bridge it sits under.
    pub host_bridge: String,
    /// Root port (port number) it is attached to.
    pub root_port: u8,
    /// Volatile capacity (memfd, sparse).
    pub volatile: Option<Size>,
    /// Persistent capacity (backed by `persistent_file`).
    pub persistent: Option<Size>,
    /// File holding the persistent capacity (created sparse if missing).
    pub persistent_file: Option<PathBuf>,
    /// File holding the label storage area (created if missing; memfd when absent).
    pub lsa_file: Option<PathBuf>,
    /// Serial number (default: index + 1).
    pub serial: Option<u64>,
    /// HDM decoders (1, 2, 4, 6, 8 or 10; default 4).
    pub decoders: Option<u8>,
}

impl HostBridge {
    /// The HDM decoder capabilities of its CHBCR (`None` when passthrough).
    pub fn hdm_caps(&self) -> Option<crate::hdm::HdmCaps> {
        (!self.passthrough).then(|| crate::hdm::HdmCaps {
            decoders: self.decoders.unwrap_or(4),
            target_count: self.root_ports,
            a11to8: true,
            a14to12: true,
            ways_3_6_12: false,
            ways_16: false,
        })
    }
}

impl Device {
    /// The HDM decoder capabilities of its component registers.
    pub fn hdm_caps(&self) -> crate::hdm::HdmCaps {
        crate::hdm::HdmCaps {
            decoders: self.decoders.unwrap_or(4),
            target_count: 0,
            a11to8: true,
            a14to12: true,
            ways_3_6_12: true,
            ways_16: true,
        }
    }

    /// Volatile bytes.
    pub fn volatile_bytes(&self) -> u64 {
        self.volatile.map_or(0, |s| s.0)
    }
    /// Persistent bytes.
    pub fn persistent_bytes(&self) -> u64 {
        self.persistent.map_or(0, |s| s.0)
    }
}

/// A CXL fixed memory window (CFMWS).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Name.
    pub id: String,
    /// Guest-physical base (chosen by cxlvm when absent).
    pub base: Option<Size>,
    /// Size.
    pub size: Size,
    /// Host bridges in interleave order.
    pub targets: Vec<String>,
    /// Host-bridge interleave granularity (default 4 KiB).
    pub granularity: Option<Size>,
    /// Interleave arithmetic (default modulo).
    #[serde(default)]
    pub arithmetic: Arithmetic,
}

impl Window {
    /// Granularity in bytes.
    pub fn granularity_bytes(&self) -> u64 {
        self.granularity.map_or(4096, |g| g.0)
    }
}

/// A region that cxlvm, playing platform firmware, programs and commits before the guest starts
/// (docs/cxl.md, [`crate::region`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Name.
    pub id: String,
    /// The window (id) it lies in.
    pub window: String,
    /// Device ids in interleave order: position `i` is the `i`-th device.
    pub devices: Vec<String>,
    /// Region (endpoint) interleave granularity (default: the window's).
    pub granularity: Option<Size>,
    /// HPA size (the whole region).
    pub size: Size,
    /// HPA base inside the window (default: packed from the window base after earlier regions
    /// of the same window); set by [`Topology::validate`].
    pub base: Option<Size>,
    /// Uses the devices' persistent capacity instead of their volatile capacity.
    #[serde(default)]
    pub persistent: bool,
    /// Commit the decoders with Lock-On-Commit (default true).
    pub lock: Option<bool>,
}

impl Region {
    /// Whether its decoders are locked.
    pub fn locked(&self) -> bool {
        self.lock.unwrap_or(true)
    }
}

/// A whole CXL topology.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Host bridges.
    #[serde(default, rename = "host_bridge")]
    pub host_bridges: Vec<HostBridge>,
    /// Type-3 devices.
    #[serde(default, rename = "device")]
    pub devices: Vec<Device>,
    /// Fixed memory windows.
    #[serde(default, rename = "window")]
    pub windows: Vec<Window>,
    /// Regions committed before the guest starts.
    #[serde(default, rename = "region")]
    pub regions: Vec<Region>,
}

/// A problem with a topology: one line naming the offending item.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    /// TOML syntax or schema error.
    #[error("{0}")]
    Parse(String),
    /// Something is wrong with one item.
    #[error("{item}: {problem}")]
    Item {
        /// `window 'cfmw0'`, `device 'mem0'`, …
        item: String,
        /// What is wrong.
        problem: String,
    },
    /// A `[[region]]` cannot be committed.
    #[error("region '{id}': {source}")]
    Region {
        /// Region id.
        id: String,
        /// Why.
        #[source]
        source: Box<crate::region::RegionError>,
    },
}

fn item(kind: &str, id: &str, problem: impl Into<String>) -> TopologyError {
    TopologyError::Item {
        item: format!("{kind} '{id}'"),
        problem: problem.into(),
    }
}

pub(crate) fn fmt_size(b: u64) -> String {
    if b >= 1 << 40 && b.is_multiple_of(1 << 40) {
        format!("{} TiB", b >> 40)
    } else if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else {
        format!("{b:#x} bytes")
    }
}

/// The backing files named so far, to refuse one file backing two things. A file is known by
/// its device and inode when it exists, and by its absolute path either way.
#[derive(Default)]
struct FileSet {
    owners: Vec<(FileKey, String)>,
}

#[derive(PartialEq, Eq)]
enum FileKey {
    Inode { dev: u64, ino: u64 },
    Path(PathBuf),
}

impl FileSet {
    fn keys(path: &std::path::Path) -> Vec<FileKey> {
        use std::os::unix::fs::MetadataExt;
        let mut keys = Vec::new();
        if let Ok(m) = std::fs::metadata(path) {
            keys.push(FileKey::Inode {
                dev: m.dev(),
                ino: m.ino(),
            });
        }
        if let Ok(abs) = std::path::absolute(path) {
            keys.push(FileKey::Path(abs));
        }
        keys
    }

    /// Records `path` as `owner`'s; returns the earlier owner when the file is taken.
    fn claim(&mut self, path: &std::path::Path, owner: &str) -> Option<String> {
        let keys = Self::keys(path);
        if let Some((_, o)) = self.owners.iter().find(|(k, _)| keys.contains(k)) {
            return Some(o.clone());
        }
        self.owners
            .extend(keys.into_iter().map(|k| (k, owner.to_owned())));
        None
    }
}

/// Placement limits the platform imposes on windows, checked by [`Topology::validate`].
#[derive(Clone, Debug)]
pub struct AddressLimits {
    /// Ranges windows must not overlap (RAM, platform devices), with names for messages.
    pub reserved: Vec<(u64, u64, String)>,
    /// Lowest address a window may start at.
    pub window_min: u64,
    /// One past the highest address a window may reach.
    pub window_max: u64,
}

impl Topology {
    /// Parses a TOML topology.
    pub fn from_toml(text: &str) -> Result<Self, TopologyError> {
        toml::from_str(text).map_err(|e| {
            // toml's messages are multi-line; keep the first line and the location.
            let msg = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_owned();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    TopologyError::Parse(format!("line {line}: {msg}"))
                }
                None => TopologyError::Parse(msg),
            }
        })
    }

    /// The common case: one window over one host bridge with `devices` root ports, each holding a
    /// volatile device of `size` bytes. The window spans all devices (the host bridge interleaves
    /// them as the guest programs it).
    pub fn simple(devices: u8, size: u64, granularity: u64, passthrough: bool) -> Self {
        let mut t = Topology {
            host_bridges: vec![HostBridge {
                id: "hb0".into(),
                uid: None,
                root_ports: devices,
                passthrough,
                decoders: None,
            }],
            ..Default::default()
        };
        for i in 0..devices {
            t.devices.push(Device {
                id: format!("mem{i}"),
                host_bridge: "hb0".into(),
                root_port: i,
                volatile: Some(Size(size)),
                persistent: None,
                persistent_file: None,
                lsa_file: None,
                serial: None,
                decoders: None,
            });
        }
        t.windows.push(Window {
            id: "cfmw0".into(),
            base: None,
            size: Size(size.saturating_mul(u64::from(devices))),
            targets: vec!["hb0".into()],
            granularity: Some(Size(granularity)),
            arithmetic: Arithmetic::Modulo,
        });
        t
    }

    /// Index of device `id`.
    pub fn device(&self, id: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.id == id)
    }

    /// Index of window `id`.
    pub fn window(&self, id: &str) -> Option<usize> {
        self.windows.iter().position(|w| w.id == id)
    }

    /// Index of host bridge `id`.
    pub fn host_bridge(&self, id: &str) -> Option<usize> {
        self.host_bridges.iter().position(|h| h.id == id)
    }

    /// UID of host bridge `i`.
    pub fn uid(&self, i: usize) -> u32 {
        self.host_bridges[i].uid.unwrap_or(i as u32)
    }

    /// Checks everything except files, and assigns window bases that were not given (packed
    /// upward from `limits.window_min`, 256 MiB aligned, avoiding reserved ranges) and region
    /// bases that were not given ([`crate::region::plan`]). Returns the first problem found.
    pub fn validate(&mut self, limits: &AddressLimits) -> Result<(), TopologyError> {
        if self.host_bridges.is_empty() && (!self.devices.is_empty() || !self.windows.is_empty()) {
            return Err(TopologyError::Parse(
                "a CXL topology needs at least one [[host_bridge]]".into(),
            ));
        }
        if self.host_bridges.len() > MAX_HOST_BRIDGES {
            return Err(TopologyError::Parse(format!(
                "{} host bridges: at most {MAX_HOST_BRIDGES}",
                self.host_bridges.len()
            )));
        }
        let mut ids = BTreeSet::new();
        let mut uids = BTreeSet::new();
        for (i, h) in self.host_bridges.iter().enumerate() {
            let hb = |p: String| item("host bridge", &h.id, p);
            if !ids.insert(("hb", h.id.clone())) {
                return Err(hb("defined twice".into()));
            }
            if self.uid(i) > MAX_UID {
                return Err(hb(format!(
                    "uid {}: must be 0 to {MAX_UID} (guests are told window targets as 8-bit UIDs)",
                    self.uid(i)
                )));
            }
            if !uids.insert(h.uid.unwrap_or(i as u32)) {
                return Err(hb(format!(
                    "uid {} is used by another host bridge",
                    self.uid(i)
                )));
            }
            if h.root_ports == 0 || h.root_ports > MAX_ROOT_PORTS {
                return Err(hb(format!(
                    "root_ports = {}: must be 1 to {MAX_ROOT_PORTS}",
                    h.root_ports
                )));
            }
            if h.passthrough && h.root_ports != 1 {
                return Err(hb(format!(
                    "passthrough needs exactly one root port, has {}",
                    h.root_ports
                )));
            }
            if let Some(d) = h.decoders
                && !matches!(d, 1 | 2 | 4 | 6 | 8 | 10)
            {
                return Err(hb(format!("decoders = {d}: must be 1, 2, 4, 6, 8 or 10")));
            }
        }
        let mut ports = BTreeSet::new();
        let mut total: u64 = 0;
        let mut files = FileSet::default();
        for d in &self.devices {
            let dev = |p: String| item("device", &d.id, p);
            if !ids.insert(("dev", d.id.clone())) {
                return Err(dev("defined twice".into()));
            }
            let Some(h) = self.host_bridge(&d.host_bridge) else {
                return Err(dev(format!(
                    "host_bridge '{}' does not exist",
                    d.host_bridge
                )));
            };
            if d.root_port >= self.host_bridges[h].root_ports {
                return Err(dev(format!(
                    "root_port {} does not exist on host bridge '{}' (it has {} root ports)",
                    d.root_port, d.host_bridge, self.host_bridges[h].root_ports
                )));
            }
            if !ports.insert((h, d.root_port)) {
                return Err(dev(format!(
                    "root port {} of host bridge '{}' already has a device",
                    d.root_port, d.host_bridge
                )));
            }
            let (v, p) = (d.volatile_bytes(), d.persistent_bytes());
            for (what, b) in [("volatile", v), ("persistent", p)] {
                if b % CXL_UNIT != 0 {
                    return Err(dev(format!(
                        "{what} capacity {} is not a multiple of 256 MiB",
                        fmt_size(b)
                    )));
                }
            }
            if v == 0 && p == 0 {
                return Err(dev(
                    "has no capacity (set volatile and/or persistent)".into()
                ));
            }
            if v.checked_add(p).is_none_or(|t| t > 1 << 46) {
                return Err(dev("capacity above 64 TiB".into()));
            }
            total = total.saturating_add(v.saturating_add(p));
            if total > MAX_TOTAL_CAPACITY {
                return Err(dev(format!(
                    "total device capacity reaches {} here: at most {} in one machine (cxlvm maps all device memory into its own address space)",
                    fmt_size(total),
                    fmt_size(MAX_TOTAL_CAPACITY)
                )));
            }
            for (what, f) in [
                ("persistent_file", &d.persistent_file),
                ("lsa_file", &d.lsa_file),
            ] {
                if let Some(path) = f
                    && let Some(owner) = files.claim(path, &format!("{what} of device '{}'", d.id))
                {
                    return Err(dev(format!(
                        "{what} {} is already the {owner}: devices must not share bytes",
                        path.display()
                    )));
                }
            }
            if p > 0 && d.persistent_file.is_none() {
                return Err(dev("persistent capacity needs persistent_file".into()));
            }
            if p == 0 && (d.persistent_file.is_some() || d.lsa_file.is_some()) {
                return Err(dev(
                    "persistent_file/lsa_file given without persistent capacity".into(),
                ));
            }
            if let Some(n) = d.decoders
                && !matches!(n, 1 | 2 | 4 | 6 | 8 | 10)
            {
                return Err(dev(format!("decoders = {n}: must be 1, 2, 4, 6, 8 or 10")));
            }
        }
        if self.windows.len() > MAX_WINDOWS {
            return Err(TopologyError::Parse(format!(
                "{} windows: at most {MAX_WINDOWS}",
                self.windows.len()
            )));
        }
        for w in &self.windows {
            let win = |p: String| item("window", &w.id, p);
            if !ids.insert(("win", w.id.clone())) {
                return Err(win("defined twice".into()));
            }
            if w.size.0 == 0 || w.size.0 % CXL_UNIT != 0 {
                return Err(win(format!(
                    "size {} is not a non-zero multiple of 256 MiB",
                    fmt_size(w.size.0)
                )));
            }
            if w.targets.is_empty() {
                return Err(win("has no targets".into()));
            }
            if u32::try_from(w.targets.len())
                .ok()
                .and_then(crate::interleave::Ways::from_count)
                .is_none()
            {
                return Err(win(format!(
                    "{} targets: interleave ways must be 1, 2, 3, 4, 6, 8, 12 or 16",
                    w.targets.len()
                )));
            }
            let mut seen = BTreeSet::new();
            for t in &w.targets {
                if self.host_bridge(t).is_none() {
                    return Err(win(format!("target '{t}' is not a host bridge")));
                }
                if !seen.insert(t) {
                    return Err(win(format!("target '{t}' is listed twice")));
                }
            }
            let g = w.granularity_bytes();
            if crate::interleave::Granularity::from_bytes(g).is_none() {
                return Err(win(format!(
                    "granularity {g} must be a power of two from 256 B to 16 KiB"
                )));
            }
            if w.arithmetic == Arithmetic::Xor && !w.targets.len().is_power_of_two() {
                return Err(win("xor arithmetic needs 1, 2, 4, 8 or 16 targets".into()));
            }
            if w.arithmetic == Arithmetic::Xor
                && let Some(other) = self.windows.iter().find(|o| {
                    o.arithmetic == Arithmetic::Xor
                        && o.granularity_bytes() == g
                        && o.targets.len() != w.targets.len()
                })
            {
                return Err(win(format!(
                    "xor window with {} targets at granularity {g} B next to window '{}' with {}: XOR windows of one granularity need the same number of targets (the ACPI CEDT holds one XOR map list per granularity)",
                    w.targets.len(),
                    other.id,
                    other.targets.len()
                )));
            }
            if w.size.0 % (CXL_UNIT * w.targets.len() as u64) != 0 {
                return Err(win(format!(
                    "size {} is not a multiple of {} targets x 256 MiB",
                    fmt_size(w.size.0),
                    w.targets.len()
                )));
            }
        }
        self.place_windows(limits)?;
        let plans = crate::region::plan(self)?;
        for (r, p) in self.regions.iter_mut().zip(&plans) {
            r.base = Some(Size(p.base));
        }
        Ok(())
    }

    fn place_windows(&mut self, limits: &AddressLimits) -> Result<(), TopologyError> {
        // Explicit bases first.
        let mut taken: Vec<(u64, u64, String)> = limits.reserved.clone();
        for w in &self.windows {
            let Some(Size(base)) = w.base else { continue };
            let win = |p: String| item("window", &w.id, p);
            if base % CXL_UNIT != 0 {
                return Err(win(format!("base {base:#x} is not 256 MiB aligned")));
            }
            let end = base.saturating_add(w.size.0);
            if base < limits.window_min || end > limits.window_max {
                return Err(win(format!(
                    "[{base:#x}, {end:#x}) is outside the window area [{:#x}, {:#x})",
                    limits.window_min, limits.window_max
                )));
            }
            if let Some((_, _, other)) = taken.iter().find(|(s, e, _)| base < *e && *s < end) {
                return Err(win(format!("[{base:#x}, {end:#x}) overlaps {other}")));
            }
            taken.push((base, end, format!("window '{}'", w.id)));
        }
        // Then the others, packed upward.
        for i in 0..self.windows.len() {
            if self.windows[i].base.is_some() {
                continue;
            }
            let size = self.windows[i].size.0;
            let mut base = limits.window_min.next_multiple_of(CXL_UNIT);
            loop {
                let end = base.saturating_add(size);
                match taken
                    .iter()
                    .filter(|(s, e, _)| base < *e && *s < end)
                    .map(|(_, e, _)| *e)
                    .max()
                {
                    Some(e) => match e.checked_next_multiple_of(CXL_UNIT) {
                        Some(b) => base = b,
                        None => {
                            return Err(item(
                                "window",
                                &self.windows[i].id,
                                "no room left in the window area".to_owned(),
                            ));
                        }
                    },
                    None => break,
                }
            }
            let end = base.saturating_add(size);
            if end > limits.window_max {
                return Err(item(
                    "window",
                    &self.windows[i].id,
                    format!(
                        "{} does not fit below {:#x}",
                        fmt_size(size),
                        limits.window_max
                    ),
                ));
            }
            taken.push((base, end, format!("window '{}'", self.windows[i].id)));
            self.windows[i].base = Some(Size(base));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AddressLimits {
        AddressLimits {
            reserved: vec![(0, 1 << 30, "guest RAM".into())],
            window_min: 1 << 40,
            window_max: 1 << 46,
        }
    }

    const GOOD: &str = r#"
[[host_bridge]]
id = "hb0"
root_ports = 2

[[host_bridge]]
id = "hb1"
root_ports = 1
passthrough = true

[[device]]
id = "mem0"
host_bridge = "hb0"
root_port = 0
volatile = "1G"

[[device]]
id = "mem1"
host_bridge = "hb0"
root_port = 1
volatile = 268435456

[[device]]
id = "mem2"
host_bridge = "hb1"
root_port = 0
persistent = "512M"
persistent_file = "/tmp/x.img"

[[window]]
id = "w0"
size = "4G"
targets = ["hb0", "hb1"]
granularity = "16K"

[[window]]
id = "w1"
size = "1G"
base = "0x20000000000"
targets = ["hb0"]
"#;

    #[test]
    fn parses_validates_and_places_windows() {
        let mut t = Topology::from_toml(GOOD).unwrap();
        t.validate(&limits()).unwrap();
        assert_eq!(t.windows[1].base, Some(Size(0x200_0000_0000)));
        assert_eq!(t.windows[0].base, Some(Size(1 << 40)));
        assert_eq!(t.devices[1].volatile_bytes(), 256 << 20);
        assert_eq!(t.windows[0].granularity_bytes(), 16384);
        assert_eq!(t.windows[1].granularity_bytes(), 4096);
    }

    fn err_of(edit: impl Fn(&mut Topology)) -> String {
        let mut t = Topology::from_toml(GOOD).unwrap();
        edit(&mut t);
        t.validate(&limits()).unwrap_err().to_string()
    }

    /// An edit of a valid topology and the message it must produce.
    type Case = (Box<dyn Fn(&mut Topology)>, &'static str);

    #[test]
    fn each_problem_names_its_item() {
        let cases: Vec<Case> = vec![
            (
                Box::new(|t| t.windows[0].size = Size(100 << 20)),
                "window 'w0': size 100 MiB is not a non-zero multiple of 256 MiB",
            ),
            (
                Box::new(|t| t.windows[0].size = Size(768 << 20)),
                "window 'w0': size 768 MiB is not a multiple of 2 targets x 256 MiB",
            ),
            (
                Box::new(|t| t.windows[1].base = Some(Size(0x200_0000_1000))),
                "window 'w1': base 0x20000001000 is not 256 MiB aligned",
            ),
            (
                Box::new(|t| t.windows[1].base = Some(Size(0))),
                "window 'w1': [0x0, 0x40000000) is outside the window area",
            ),
            (
                Box::new(|t| t.windows[0].base = Some(Size(0x200_0000_0000))),
                "window 'w1': [0x20000000000, 0x20040000000) overlaps window 'w0'",
            ),
            (
                Box::new(|t| {
                    t.windows[0].targets = ["hb0", "hb1", "hb0", "hb1", "hb0"]
                        .map(String::from)
                        .to_vec()
                }),
                "window 'w0': 5 targets: interleave ways must be",
            ),
            (
                Box::new(|t| t.windows[1].targets = vec!["hb9".into()]),
                "window 'w1': target 'hb9' is not a host bridge",
            ),
            (
                Box::new(|t| t.windows[0].targets = vec!["hb0".into(), "hb0".into()]),
                "window 'w0': target 'hb0' is listed twice",
            ),
            (
                Box::new(|t| t.windows[0].granularity = Some(Size(128))),
                "window 'w0': granularity 128",
            ),
            (
                Box::new(|t| t.windows[0].granularity = Some(Size(32768))),
                "window 'w0': granularity 32768",
            ),
            (
                Box::new(|t| t.windows[1].targets.clear()),
                "window 'w1': has no targets",
            ),
            (
                Box::new(|t| t.devices[0].root_port = 5),
                "device 'mem0': root_port 5 does not exist on host bridge 'hb0'",
            ),
            (
                Box::new(|t| t.devices[0].host_bridge = "nope".into()),
                "device 'mem0': host_bridge 'nope' does not exist",
            ),
            (
                Box::new(|t| t.devices[1].root_port = 0),
                "device 'mem1': root port 0 of host bridge 'hb0' already has a device",
            ),
            (
                Box::new(|t| t.devices[0].volatile = Some(Size(300 << 20))),
                "device 'mem0': volatile capacity 300 MiB is not a multiple of 256 MiB",
            ),
            (
                Box::new(|t| t.devices[2].persistent_file = None),
                "device 'mem2': persistent capacity needs persistent_file",
            ),
            (
                Box::new(|t| t.devices[0].volatile = None),
                "device 'mem0': has no capacity",
            ),
            (
                Box::new(|t| t.devices[1].id = "mem0".into()),
                "device 'mem0': defined twice",
            ),
            (
                Box::new(|t| t.host_bridges[1].root_ports = 2),
                "host bridge 'hb1': passthrough needs exactly one root port, has 2",
            ),
            (
                Box::new(|t| t.host_bridges[0].root_ports = 9),
                "host bridge 'hb0': root_ports = 9",
            ),
            (
                Box::new(|t| t.host_bridges[1].uid = Some(0)),
                "host bridge 'hb1': uid 0 is used by another host bridge",
            ),
            (
                Box::new(|t| t.host_bridges[0].decoders = Some(3)),
                "host bridge 'hb0': decoders = 3",
            ),
            (
                Box::new(|t| {
                    t.windows[0].arithmetic = Arithmetic::Xor;
                    t.windows[0].targets = vec!["hb0".into(), "hb1".into()];
                    t.windows[1].targets = vec!["hb0".into()];
                    t.host_bridges.push(HostBridge {
                        id: "hb2".into(),
                        uid: None,
                        root_ports: 1,
                        passthrough: false,
                        decoders: None,
                    });
                    t.windows[0].targets.push("hb2".into());
                    t.windows[0].size = Size(3 << 30);
                }),
                "window 'w0': xor arithmetic needs 1, 2, 4, 8 or 16 targets",
            ),
        ];
        for (edit, want) in cases {
            let got = err_of(edit);
            assert!(got.contains(want), "expected '{want}' in '{got}'");
            assert_eq!(got.lines().count(), 1, "{got}");
        }
    }

    #[test]
    fn parse_errors_are_one_line_with_a_location() {
        let e = Topology::from_toml("[[window]]\nid = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2:"), "{e}");
        assert_eq!(e.lines().count(), 1);
        let e = Topology::from_toml(
            "[[device]]\nid = \"a\"\nhost_bridge = \"h\"\nroot_port = 0\nsize = \"1G\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `size`"), "{e}");
        let e = Topology::from_toml("[[window]]\nid = \"w\"\nsize = \"lots\"\ntargets = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'lots' is not a size"), "{e}");
    }

    #[test]
    fn simple_topology_is_valid_and_window_spans_all_devices() {
        let mut t = Topology::simple(4, 1 << 30, 4096, false);
        t.validate(&limits()).unwrap();
        assert_eq!(t.windows[0].size, Size(4 << 30));
        assert_eq!(t.devices.len(), 4);
        let mut p = Topology::simple(1, 1 << 30, 4096, true);
        p.validate(&limits()).unwrap();
    }

    #[test]
    fn windows_pack_around_reserved_ranges() {
        let mut t = Topology::simple(1, 1 << 30, 4096, false);
        let l = AddressLimits {
            reserved: vec![(1 << 40, (1 << 40) + 0x1000, "the scratch window".into())],
            window_min: 1 << 40,
            window_max: 1 << 46,
        };
        t.validate(&l).unwrap();
        assert_eq!(t.windows[0].base, Some(Size((1 << 40) + CXL_UNIT)));
        let mut big = Topology::simple(1, 1 << 30, 4096, false);
        big.windows[0].size = Size(1 << 46);
        let e = big.validate(&l).unwrap_err().to_string();
        assert!(e.contains("does not fit below"), "{e}");
    }
}
