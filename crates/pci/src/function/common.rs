//! What endpoints and root ports share: the locked configuration space, BARs, hooks and reset.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cxlvm_memory::AddressSpace;

use crate::PciError;
use crate::bar::{BarSet, BarSpec, BarWidth, bar_offset};
use crate::config::ConfigSpace;
use crate::function::ConfigHooks;
use crate::regs::{
    BRIDGE_CONTROL, BRIDGE_CONTROL_SBR, COMMAND, COMMAND_MEMORY, HEADER_TYPE_BRIDGE,
};

/// Locks a mutex, recovering from poisoning (a panicking hook must not wedge the guest).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State under the function's configuration lock.
pub(crate) struct State {
    pub(crate) cfg: ConfigSpace,
    bars: BarSet,
    /// Command.MEM as last reported to the hooks.
    mem_enabled: bool,
    /// Bridge Control SBR as last seen (type 1 only).
    pub(crate) sbr: bool,
}

/// The shared part of [`Endpoint`](super::Endpoint) and [`RootPort`](super::RootPort).
pub(crate) struct FunctionCore {
    name: String,
    state: Mutex<State>,
    /// Configuration at build: what a reset restores.
    initial: ConfigSpace,
    hooks: Option<Arc<dyn ConfigHooks>>,
}

/// Effects of a write that the owner must act on after the lock is released.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WriteEffects {
    /// Secondary bus reset went from 0 to 1: reset the children.
    pub(crate) sbr_asserted: bool,
}

/// What every function builder collects before sealing: name, configuration space, BARs,
/// hooks and the address space of the BAR regions.
pub(crate) struct BuilderParts {
    pub(crate) name: String,
    pub(crate) config: ConfigSpace,
    pub(crate) bars: Vec<(usize, BarSpec)>,
    pub(crate) hooks: Option<Arc<dyn ConfigHooks>>,
    pub(crate) space: Option<Arc<Mutex<AddressSpace>>>,
}

impl std::fmt::Debug for BuilderParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuilderParts")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl BuilderParts {
    pub(crate) fn new(name: &str, config: ConfigSpace) -> Self {
        Self {
            name: name.to_owned(),
            config,
            bars: Vec::new(),
            hooks: None,
            space: None,
        }
    }

    /// Seals the configuration space with the BARs laid out in `max_bars` BAR registers.
    pub(crate) fn into_core(self, max_bars: usize) -> Result<FunctionCore, PciError> {
        FunctionCore::new(
            self.name,
            self.config,
            &self.bars,
            max_bars,
            self.space,
            self.hooks,
        )
    }
}

impl FunctionCore {
    /// Seals `cfg` with `bars` laid out in its `max_bars` BAR registers.
    pub(crate) fn new(
        name: String,
        mut cfg: ConfigSpace,
        bars: &[(usize, BarSpec)],
        max_bars: usize,
        space: Option<Arc<Mutex<AddressSpace>>>,
        hooks: Option<Arc<dyn ConfigHooks>>,
    ) -> Result<Self, PciError> {
        let bars = BarSet::new(&name, bars, max_bars, space)?;
        bars.init_config(&mut cfg, max_bars);
        Ok(Self {
            name,
            state: Mutex::new(State {
                cfg: cfg.clone(),
                bars,
                mem_enabled: false,
                sbr: false,
            }),
            initial: cfg,
            hooks,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn read(&self, offset: u16, data: &mut [u8]) {
        self.lock().cfg.read(offset, data);
    }

    /// A guest write: masks, hooks, BAR placement, change notifications.
    pub(crate) fn write(&self, offset: u16, data: &[u8]) -> WriteEffects {
        let mut st = self.lock();
        st.cfg.write(offset, data);
        if let Some(h) = &self.hooks {
            h.written(&mut st.cfg, offset, data.len());
        }
        self.settle(&mut st)
    }

    /// Brings BARs and notifications in line with the configuration after a change.
    fn settle(&self, st: &mut State) -> WriteEffects {
        let State { cfg, bars, .. } = &mut *st;
        bars.sync(cfg, &self.name);
        let mem = st.cfg.u16(COMMAND) & COMMAND_MEMORY != 0;
        if mem != st.mem_enabled {
            st.mem_enabled = mem;
            if let Some(h) = &self.hooks {
                h.memory_enable_changed(mem);
            }
        }
        let mut effects = WriteEffects::default();
        if st.cfg.header_layout() == HEADER_TYPE_BRIDGE {
            let sbr = st.cfg.u16(BRIDGE_CONTROL) & BRIDGE_CONTROL_SBR != 0;
            if sbr != st.sbr {
                st.sbr = sbr;
                effects.sbr_asserted = sbr;
                if let Some(h) = &self.hooks {
                    h.secondary_bus_reset(sbr);
                }
            }
        }
        effects
    }

    /// Runs `f` on the configuration (device side, masks not applied), then brings BARs and
    /// notifications in line. No `written` hook is called.
    pub(crate) fn with_config<R>(
        &self,
        f: impl FnOnce(&mut ConfigSpace) -> R,
    ) -> (R, WriteEffects) {
        let mut st = self.lock();
        let r = f(&mut st.cfg);
        let effects = self.settle(&mut st);
        (r, effects)
    }

    /// Tries again to place BARs that decode but are not placed.
    pub(crate) fn retry_bars(&self) {
        let mut st = self.lock();
        st.bars.retry_pending(&self.name);
    }

    /// Restores the configuration at build, unmaps the BARs and notifies the hooks.
    pub(crate) fn reset(&self) {
        let mut st = self.lock();
        st.cfg = self.initial.clone();
        st.bars.unmap_all(&self.name);
        if st.mem_enabled {
            st.mem_enabled = false;
            if let Some(h) = &self.hooks {
                h.memory_enable_changed(false);
            }
        }
        if st.sbr {
            st.sbr = false;
            if let Some(h) = &self.hooks {
                h.secondary_bus_reset(false);
            }
        }
        if let Some(h) = &self.hooks {
            h.reset();
        }
    }

    /// Firmware-style BAR assignment: programs BAR `index` with `addr`, sets Command.MEM and
    /// checks that the region got mapped there.
    pub(crate) fn assign_bar(&self, index: usize, addr: u64) -> Result<WriteEffects, PciError> {
        let mut st = self.lock();
        let Some(spec) = st.bars.spec(index) else {
            return Err(PciError::NoSuchBar {
                name: self.name.clone(),
                index,
            });
        };
        if addr & !spec.address_mask() != 0 || addr == 0 {
            return Err(PciError::BadBarAddress {
                name: self.name.clone(),
                index,
                addr,
                size: spec.size,
            });
        }
        let off = bar_offset(index);
        let bytes = addr.to_le_bytes();
        let len = match spec.width {
            BarWidth::Bits32 => 4,
            BarWidth::Bits64 => 8,
        };
        let value = &bytes[..len];
        st.cfg.write(off, value);
        if let Some(h) = &self.hooks {
            h.written(&mut st.cfg, off, len);
        }
        let command = st.cfg.u16(COMMAND) | COMMAND_MEMORY;
        st.cfg.write(COMMAND, &command.to_le_bytes());
        if let Some(h) = &self.hooks {
            h.written(&mut st.cfg, COMMAND, 2);
        }
        let effects = self.settle(&mut st);
        if st.bars.mapped(index) != Some(addr) {
            return Err(PciError::BarNotMapped {
                name: self.name.clone(),
                index,
                addr,
            });
        }
        Ok(effects)
    }

    /// Programmed address of BAR `index`.
    pub(crate) fn bar_address(&self, index: usize) -> Option<u64> {
        let st = self.lock();
        st.bars.programmed(&st.cfg, index)
    }

    /// Where BAR `index`'s region is placed now.
    pub(crate) fn bar_mapping(&self, index: usize) -> Option<u64> {
        self.lock().bars.mapped(index)
    }
}
