//! Guest operations on a [`Rig`], decoded from fuzz input.
//!
//! Format: one opcode byte, then the op's fields in declaration order (see [`Op::decode`]). The
//! opcode selects an entry of the target's op table (`opcode % table.len()`), so the `ecam` and
//! `hdm` targets weight the same ops differently.

use cxlvm_cxl::dvsec;
use cxlvm_cxl::hdm::{CTRL_COMMIT, HDM_UNIT};
use cxlvm_pci::regs::{BRIDGE_CONTROL, BRIDGE_CONTROL_SBR, COMMAND};

use crate::reader::{Reader, Writer};
use crate::rig::{Comp, Func, HDM, Rig};

/// Arguments of a Linux-style region commit ([`Rig::region`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionArgs {
    /// Window (modulo the window count).
    pub win: u8,
    /// Devices per host bridge minus one (modulo what the host bridges have).
    pub k: u8,
    /// Rotation of each host bridge's port list (which devices, in which order).
    pub rot: u8,
    /// Endpoint granularity encoding 0..=6; anything else: the window's granularity.
    pub gran: u8,
    /// Size: (1 + units % 2) × 256 MiB per device.
    pub units: u8,
    /// Base: window base + (offset modulo the window's 256 MiB slots) × 256 MiB.
    pub offset: u8,
    /// DPA skip: (skip % 2) × 256 MiB.
    pub skip: u8,
    /// Enable the devices first (HDM Decoder Enable, Mem_Enable, memory space).
    pub enable: bool,
}

impl RegionArgs {
    /// Decodes the 8 bytes of a region.
    pub fn decode(r: &mut Reader<'_>) -> Self {
        RegionArgs {
            win: r.u8(),
            k: r.u8(),
            rot: r.u8(),
            gran: r.u8(),
            units: r.u8(),
            offset: r.u8(),
            skip: r.u8(),
            enable: r.u8() & 0x80 == 0,
        }
    }

    /// Encodes the 8 bytes of a region.
    pub fn encode(&self, w: &mut Writer) {
        w.u8(self.win)
            .u8(self.k)
            .u8(self.rot)
            .u8(self.gran)
            .u8(self.units)
            .u8(self.offset)
            .u8(self.skip)
            .u8(if self.enable { 0 } else { 0x80 });
    }
}

/// Access widths (CPU accesses, AVX stores, odd lengths split by the view).
pub const WIDTHS: [usize; 8] = [1, 2, 4, 8, 16, 32, 3, 64];

/// One guest operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A Linux-style region commit.
    Region(RegionArgs),
    /// Programs and commits one decoder through its registers (any values).
    Decoder {
        /// Component (modulo the component count).
        comp: u8,
        /// Decoder index (modulo 10: some beyond the block).
        n: u8,
        /// Base: first window base + base_units × 256 MiB (wrapping in the window area).
        base_units: u16,
        /// Size in 256 MiB units.
        size_units: u8,
        /// Control bits (IG, IW, lock, host-only; Commit is always set).
        ctrl: u16,
        /// Target list / DPA skip (raw register value).
        tl: u64,
    },
    /// Clears Commit of decoder `n` (the highest committed one when `n` is out of range).
    Uncommit {
        /// Component.
        comp: u8,
        /// Decoder index.
        n: u8,
    },
    /// Any write to a component block (biased to the CXL.cache/mem area).
    CompWrite {
        /// Component.
        comp: u8,
        /// Offset (0x1000 + off % 0x1000 unless the top bit is set: anywhere in the 64 KiB).
        off: u16,
        /// Width index into [`WIDTHS`].
        width: u8,
        /// Value (repeated for wide accesses).
        val: u64,
    },
    /// A read of a component block.
    CompRead {
        /// Component.
        comp: u8,
        /// Offset (as for writes).
        off: u16,
        /// Width index.
        width: u8,
    },
    /// HDM Decoder Global Control of a device (or host bridge).
    HdmGlobal {
        /// Component.
        comp: u8,
        /// Value.
        val: u8,
    },
    /// DVSEC CXL Control of a device.
    MemEnable {
        /// Device.
        dev: u8,
        /// Value.
        val: u16,
    },
    /// PCI Command of a function.
    Command {
        /// Function (root ports, then devices).
        func: u8,
        /// Value.
        val: u16,
    },
    /// Bridge Control of a root port (secondary bus reset and the rest).
    BridgeControl {
        /// Root port (functions index).
        func: u8,
        /// Value.
        val: u16,
    },
    /// Any configuration write at a raw ECAM position.
    CfgWrite {
        /// Bus.
        bus: u8,
        /// Device/function.
        devfn: u8,
        /// Register (12 bits).
        off: u16,
        /// Width index.
        width: u8,
        /// Value.
        val: u64,
    },
    /// Any configuration read at a raw ECAM position.
    CfgRead {
        /// Bus.
        bus: u8,
        /// Device/function.
        devfn: u8,
        /// Register.
        off: u16,
        /// Width index.
        width: u8,
    },
    /// A configuration write to a known function (where the guest finds it now).
    FnWrite {
        /// Function.
        func: u8,
        /// Register.
        off: u16,
        /// Width index.
        width: u8,
        /// Value.
        val: u64,
    },
    /// BAR programming of a known function: BAR `bar` (0..6) gets `val` (8 bytes for BAR0/2).
    Bar {
        /// Function.
        func: u8,
        /// BAR index.
        bar: u8,
        /// Value (aperture offset unless the top bit is set: raw).
        val: u64,
    },
    /// Primary/secondary/subordinate bus numbers of a root port.
    BusNumbers {
        /// Root port (functions index).
        func: u8,
        /// Primary.
        pri: u8,
        /// Secondary.
        sec: u8,
        /// Subordinate.
        sub: u8,
    },
    /// A window access; a write is followed by a read of the same bytes.
    Window {
        /// Window.
        win: u8,
        /// Offset (modulo the window size).
        off: u64,
        /// Width index.
        width: u8,
        /// Write (else read only).
        write: bool,
        /// Value (repeated).
        val: u64,
    },
    /// Direct mappings allowed or not (the guest's port 0x510).
    Direct(bool),
}

/// Op kinds, for the op tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// [`Op::Region`]
    Region,
    /// [`Op::Decoder`]
    Decoder,
    /// [`Op::Uncommit`]
    Uncommit,
    /// [`Op::CompWrite`]
    CompWrite,
    /// [`Op::CompRead`]
    CompRead,
    /// [`Op::HdmGlobal`]
    HdmGlobal,
    /// [`Op::MemEnable`]
    MemEnable,
    /// [`Op::Command`]
    Command,
    /// [`Op::BridgeControl`]
    BridgeControl,
    /// [`Op::CfgWrite`]
    CfgWrite,
    /// [`Op::CfgRead`]
    CfgRead,
    /// [`Op::FnWrite`]
    FnWrite,
    /// [`Op::Bar`]
    Bar,
    /// [`Op::BusNumbers`]
    BusNumbers,
    /// [`Op::Window`]
    Window,
    /// [`Op::Direct`]
    Direct,
}

/// The `hdm` target's ops: decoder programming, enables, window traffic.
pub const HDM_OPS: &[Kind] = &[
    Kind::Region,
    Kind::Region,
    Kind::Decoder,
    Kind::Decoder,
    Kind::Decoder,
    Kind::Uncommit,
    Kind::Uncommit,
    Kind::CompWrite,
    Kind::CompRead,
    Kind::HdmGlobal,
    Kind::MemEnable,
    Kind::Command,
    Kind::BridgeControl,
    Kind::Window,
    Kind::Window,
    Kind::Direct,
];

/// The `ecam` target's ops: configuration space first, plus enough decoding to matter.
pub const ECAM_OPS: &[Kind] = &[
    Kind::CfgWrite,
    Kind::CfgWrite,
    Kind::CfgRead,
    Kind::FnWrite,
    Kind::FnWrite,
    Kind::FnWrite,
    Kind::Bar,
    Kind::Bar,
    Kind::BusNumbers,
    Kind::MemEnable,
    Kind::Command,
    Kind::BridgeControl,
    Kind::Region,
    Kind::HdmGlobal,
    Kind::CompWrite,
    Kind::Window,
];

impl Op {
    /// The op's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Op::Region(_) => Kind::Region,
            Op::Decoder { .. } => Kind::Decoder,
            Op::Uncommit { .. } => Kind::Uncommit,
            Op::CompWrite { .. } => Kind::CompWrite,
            Op::CompRead { .. } => Kind::CompRead,
            Op::HdmGlobal { .. } => Kind::HdmGlobal,
            Op::MemEnable { .. } => Kind::MemEnable,
            Op::Command { .. } => Kind::Command,
            Op::BridgeControl { .. } => Kind::BridgeControl,
            Op::CfgWrite { .. } => Kind::CfgWrite,
            Op::CfgRead { .. } => Kind::CfgRead,
            Op::FnWrite { .. } => Kind::FnWrite,
            Op::Bar { .. } => Kind::Bar,
            Op::BusNumbers { .. } => Kind::BusNumbers,
            Op::Window { .. } => Kind::Window,
            Op::Direct(_) => Kind::Direct,
        }
    }

    /// Decodes one op with `table`.
    pub fn decode(r: &mut Reader<'_>, table: &[Kind]) -> Op {
        let kind = table[usize::from(r.u8()) % table.len()];
        match kind {
            Kind::Region => Op::Region(RegionArgs::decode(r)),
            Kind::Decoder => Op::Decoder {
                comp: r.u8(),
                n: r.u8(),
                base_units: r.u16(),
                size_units: r.u8(),
                ctrl: r.u16(),
                tl: r.u64(),
            },
            Kind::Uncommit => Op::Uncommit {
                comp: r.u8(),
                n: r.u8(),
            },
            Kind::CompWrite => Op::CompWrite {
                comp: r.u8(),
                off: r.u16(),
                width: r.u8(),
                val: r.u64(),
            },
            Kind::CompRead => Op::CompRead {
                comp: r.u8(),
                off: r.u16(),
                width: r.u8(),
            },
            Kind::HdmGlobal => Op::HdmGlobal {
                comp: r.u8(),
                val: r.u8(),
            },
            Kind::MemEnable => Op::MemEnable {
                dev: r.u8(),
                val: r.u16(),
            },
            Kind::Command => Op::Command {
                func: r.u8(),
                val: r.u16(),
            },
            Kind::BridgeControl => Op::BridgeControl {
                func: r.u8(),
                val: r.u16(),
            },
            Kind::CfgWrite => Op::CfgWrite {
                bus: r.u8(),
                devfn: r.u8(),
                off: r.u16(),
                width: r.u8(),
                val: r.u64(),
            },
            Kind::CfgRead => Op::CfgRead {
                bus: r.u8(),
                devfn: r.u8(),
                off: r.u16(),
                width: r.u8(),
            },
            Kind::FnWrite => Op::FnWrite {
                func: r.u8(),
                off: r.u16(),
                width: r.u8(),
                val: r.u64(),
            },
            Kind::Bar => Op::Bar {
                func: r.u8(),
                bar: r.u8(),
                val: r.u64(),
            },
            Kind::BusNumbers => Op::BusNumbers {
                func: r.u8(),
                pri: r.u8(),
                sec: r.u8(),
                sub: r.u8(),
            },
            Kind::Window => Op::Window {
                win: r.u8(),
                off: r.u64(),
                width: r.u8(),
                write: r.bool(),
                val: r.u64(),
            },
            Kind::Direct => Op::Direct(r.u8() & 0x80 == 0),
        }
    }

    /// Encodes the op for `table` (seed corpora). Panics if the table lacks its kind.
    pub fn encode(&self, w: &mut Writer, table: &[Kind]) {
        let k = table
            .iter()
            .position(|&k| k == self.kind())
            .expect("op kind in table");
        w.u8(k as u8);
        match *self {
            Op::Region(a) => a.encode(w),
            Op::Decoder {
                comp,
                n,
                base_units,
                size_units,
                ctrl,
                tl,
            } => {
                w.u8(comp)
                    .u8(n)
                    .u16(base_units)
                    .u8(size_units)
                    .u16(ctrl)
                    .u64(tl);
            }
            Op::Uncommit { comp, n } => {
                w.u8(comp).u8(n);
            }
            Op::CompWrite {
                comp,
                off,
                width,
                val,
            } => {
                w.u8(comp).u16(off).u8(width).u64(val);
            }
            Op::CompRead { comp, off, width } => {
                w.u8(comp).u16(off).u8(width);
            }
            Op::HdmGlobal { comp, val } => {
                w.u8(comp).u8(val);
            }
            Op::MemEnable { dev, val } => {
                w.u8(dev).u16(val);
            }
            Op::Command { func, val } | Op::BridgeControl { func, val } => {
                w.u8(func).u16(val);
            }
            Op::CfgWrite {
                bus,
                devfn,
                off,
                width,
                val,
            } => {
                w.u8(bus).u8(devfn).u16(off).u8(width).u64(val);
            }
            Op::CfgRead {
                bus,
                devfn,
                off,
                width,
            } => {
                w.u8(bus).u8(devfn).u16(off).u8(width);
            }
            Op::FnWrite {
                func,
                off,
                width,
                val,
            } => {
                w.u8(func).u16(off).u8(width).u64(val);
            }
            Op::Bar { func, bar, val } => {
                w.u8(func).u8(bar).u64(val);
            }
            Op::BusNumbers {
                func,
                pri,
                sec,
                sub,
            } => {
                w.u8(func).u8(pri).u8(sec).u8(sub);
            }
            Op::Window {
                win,
                off,
                width,
                write,
                val,
            } => {
                w.u8(win).u64(off).u8(width).bool(write).u64(val);
            }
            Op::Direct(on) => {
                w.u8(if on { 0 } else { 0x80 });
            }
        }
    }
}

fn pattern(val: u64, len: usize) -> Vec<u8> {
    val.to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn width(i: u8) -> usize {
    WIDTHS[usize::from(i) % WIDTHS.len()]
}

impl Rig {
    fn comp(&self, i: u8) -> Comp {
        self.comps[usize::from(i) % self.comps.len()]
    }

    fn func(&self, i: u8) -> Func {
        self.funcs[usize::from(i) % self.funcs.len()]
    }

    fn root_port(&self, i: u8) -> Func {
        let rps: Vec<Func> = self
            .funcs
            .iter()
            .copied()
            .filter(|f| matches!(f, Func::Rp(..)))
            .collect();
        rps[usize::from(i) % rps.len()]
    }

    fn comp_off(off: u16) -> u64 {
        if off & 0x8000 != 0 {
            u64::from(off & 0x7fff) * 2
        } else {
            0x1000 + u64::from(off % 0x1000)
        }
    }

    /// Applies `op` the way a guest would.
    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::Region(a) => self.region(&a),
            Op::Decoder {
                comp,
                n,
                base_units,
                size_units,
                ctrl,
                tl,
            } => {
                let c = self.comp(comp);
                let Some(at) = self.comp_addr(c) else { return };
                let wbase = self.p.windows.first().map_or(0, |w| w.base);
                let base = wbase.wrapping_add(u64::from(base_units % 64) * HDM_UNIT);
                let size = u64::from(size_units % 32) * HDM_UNIT;
                let d = at + HDM + 0x10 + 0x20 * u64::from(n % 10);
                self.wr32(d + 4, (base >> 32) as u32);
                self.wr32(d, base as u32);
                self.wr32(d + 0xc, (size >> 32) as u32);
                self.wr32(d + 8, size as u32);
                self.wr32(d + 0x18, (tl >> 32) as u32);
                self.wr32(d + 0x14, tl as u32);
                // IG, IW, Lock-On-Commit, Target Device Type as given; Commit set.
                self.wr32(d + 0x10, u32::from(ctrl) | CTRL_COMMIT);
            }
            Op::Uncommit { comp, n } => {
                let c = self.comp(comp);
                let Some(at) = self.comp_addr(c) else { return };
                let count = self.decoder_count(at);
                let n = if u64::from(n) < count {
                    u64::from(n)
                } else {
                    match self.next_free_decoder(at) {
                        Some(0) => return,
                        Some(f) => f - 1,
                        None => count - 1,
                    }
                };
                let ctl = at + HDM + 0x20 + 0x20 * n;
                let v = self.rd32(ctl);
                self.wr32(ctl, v & !CTRL_COMMIT);
            }
            Op::CompWrite {
                comp,
                off,
                width: wi,
                val,
            } => {
                let c = self.comp(comp);
                let Some(at) = self.comp_addr(c) else { return };
                let off = Self::comp_off(off);
                let len = width(wi).min((0x1_0000 - off) as usize);
                self.wr(at + off, &pattern(val, len));
            }
            Op::CompRead {
                comp,
                off,
                width: wi,
            } => {
                let c = self.comp(comp);
                let Some(at) = self.comp_addr(c) else { return };
                let off = Self::comp_off(off);
                let len = width(wi).min((0x1_0000 - off) as usize);
                let _ = self.rd(at + off, len);
            }
            Op::HdmGlobal { comp, val } => {
                let c = self.comp(comp);
                let Some(at) = self.comp_addr(c) else { return };
                self.wr32(at + HDM + 4, u32::from(val));
            }
            Op::MemEnable { dev, val } => {
                if self.dvsec.is_empty() {
                    return;
                }
                let d = usize::from(dev) % self.dvsec.len();
                let ctl = self.dvsec[d] + dvsec::DEVICE_CONTROL;
                self.cfg_write(Func::Dev(d), ctl, &val.to_le_bytes());
            }
            Op::Command { func, val } => {
                let f = self.func(func);
                self.cfg_write(f, COMMAND, &val.to_le_bytes());
            }
            Op::BridgeControl { func, val } => {
                let f = self.root_port(func);
                // Mostly just the SBR bit, sometimes anything.
                let v = if val & 0x8000 != 0 {
                    val & 0x7fff
                } else {
                    val & BRIDGE_CONTROL_SBR
                };
                self.cfg_write(f, BRIDGE_CONTROL, &v.to_le_bytes());
            }
            Op::CfgWrite {
                bus,
                devfn,
                off,
                width: wi,
                val,
            } => {
                let off = off & 0xfff;
                let len = width(wi).min(usize::from(0x1000 - off));
                self.wr(self.ecam(bus, devfn, off), &pattern(val, len));
            }
            Op::CfgRead {
                bus,
                devfn,
                off,
                width: wi,
            } => {
                let off = off & 0xfff;
                let len = width(wi).min(usize::from(0x1000 - off));
                let _ = self.rd(self.ecam(bus, devfn, off), len);
            }
            Op::FnWrite {
                func,
                off,
                width: wi,
                val,
            } => {
                let f = self.func(func);
                // Mostly the header and the capabilities/DVSECs Linux touches.
                let off = if off & 0x8000 != 0 {
                    off & 0xfff
                } else {
                    off % 0x200
                };
                let len = width(wi).min(usize::from(0x1000 - off));
                self.cfg_write(f, off, &pattern(val, len));
            }
            Op::Bar { func, bar, val } => {
                let f = self.func(func);
                let bar = u16::from(bar % 6);
                let v = if val & (1 << 63) != 0 {
                    val & !(1 << 63)
                } else {
                    (self.p.aperture.0 + (val % self.p.aperture.1)) & !0xfff
                };
                let off = 0x10 + 4 * bar;
                let len = if bar % 2 == 0 && bar < 6 { 8 } else { 4 };
                let len = len.min(usize::from(0x28 - off));
                self.cfg_write(f, off, &v.to_le_bytes()[..len]);
            }
            Op::BusNumbers {
                func,
                pri,
                sec,
                sub,
            } => {
                let f = self.root_port(func);
                self.cfg_write(f, 0x18, &[pri, sec, sub]);
            }
            Op::Window {
                win,
                off,
                width: wi,
                write,
                val,
            } => {
                if self.p.windows.is_empty() {
                    return;
                }
                let w = &self.p.windows[usize::from(win) % self.p.windows.len()];
                let len = width(wi);
                let at = w.base + off % (w.size - len as u64);
                self.window_access(at, len, write.then(|| pattern(val, len)));
            }
            Op::Direct(on) => self.p.overlays.set_direct(on),
        }
    }
}
