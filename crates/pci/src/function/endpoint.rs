//! Type 0 functions.

use std::sync::{Arc, Mutex};

use cxlvm_memory::AddressSpace;

use super::common::{BuilderParts, FunctionCore};
use super::{ConfigHooks, PciFunction};
use crate::PciError;
use crate::bar::BarSpec;
use crate::config::ConfigSpace;
use crate::regs::HEADER_TYPE_NORMAL;

/// BAR slots of a type 0 header.
pub const ENDPOINT_BARS: usize = 6;

/// Builds an [`Endpoint`]. See the [module documentation](super) for the flow.
#[derive(Debug)]
pub struct EndpointBuilder {
    parts: BuilderParts,
}

impl EndpointBuilder {
    /// Starts from `config`, which must have a type 0 header (see
    /// [`ConfigSpace::new_type0`]) and may already hold capabilities and DVSECs.
    pub fn new(name: &str, config: ConfigSpace) -> Self {
        Self {
            parts: BuilderParts::new(name, config),
        }
    }

    /// The configuration space, to add capabilities before [`EndpointBuilder::build`].
    pub fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.parts.config
    }

    /// Declares memory BAR `index` (0..6; a 64-bit BAR also uses `index + 1`).
    pub fn bar(mut self, index: usize, spec: BarSpec) -> Self {
        self.parts.bars.push((index, spec));
        self
    }

    /// Device-model callbacks.
    pub fn hooks(mut self, hooks: Arc<dyn ConfigHooks>) -> Self {
        self.parts.hooks = Some(hooks);
        self
    }

    /// The address space the BAR regions live in (required when there are BARs).
    pub fn address_space(mut self, space: Arc<Mutex<AddressSpace>>) -> Self {
        self.parts.space = Some(space);
        self
    }

    /// Checks the BARs (index, size, region unplaced and not larger than the BAR; the address
    /// space is locked briefly), lays them out in the configuration space and seals it.
    pub fn build(self) -> Result<Arc<Endpoint>, PciError> {
        let found = self.parts.config.header_layout();
        if found != HEADER_TYPE_NORMAL {
            return Err(PciError::WrongHeaderType {
                name: self.parts.name,
                found,
                expected: HEADER_TYPE_NORMAL,
            });
        }
        let core = self.parts.into_core(ENDPOINT_BARS)?;
        Ok(Arc::new(Endpoint { core }))
    }
}

/// A generic type 0 function: a sealed [`ConfigSpace`], up to six memory BARs backed by regions
/// and optional [`ConfigHooks`].
pub struct Endpoint {
    core: FunctionCore,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.core.name())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Starts building an endpoint from a filled-in type 0 configuration space.
    pub fn builder(name: &str, config: ConfigSpace) -> EndpointBuilder {
        EndpointBuilder::new(name, config)
    }

    /// Name given at build (used in logs).
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// Firmware-style assignment: writes `addr` into BAR `index` (both dwords of a 64-bit BAR)
    /// and sets Command.MEM, as one update (the `written` hook sees both writes). Fails if there
    /// is no such BAR, `addr` is zero or not aligned to the BAR size (or above 4 GiB for a
    /// 32-bit BAR), or the region could not be placed there (overlap, outside the address
    /// space; the BAR then stays programmed but unmapped).
    pub fn assign_bar(&self, index: usize, addr: u64) -> Result<(), PciError> {
        self.core.assign_bar(index, addr).map(|_| ())
    }

    /// The address programmed in BAR `index` (decoding or not); `None` if there is no such BAR.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        self.core.bar_address(index)
    }

    /// Where BAR `index`'s region is placed in the address space now, if anywhere.
    pub fn bar_mapping(&self, index: usize) -> Option<u64> {
        self.core.bar_mapping(index)
    }

    /// Runs `f` on the configuration space (device side: masks do not apply, no `written` hook),
    /// then updates BAR placement and notifications. Same locking rules as a hook: `f` must not
    /// call back into this function.
    pub fn with_config<R>(&self, f: impl FnOnce(&mut ConfigSpace) -> R) -> R {
        self.core.with_config(f).0
    }
}

impl PciFunction for Endpoint {
    fn read_config(&self, offset: u16, data: &mut [u8]) {
        self.core.read(offset, data);
    }

    fn retry_bars(&self) {
        self.core.retry_bars();
    }

    fn write_config(&self, offset: u16, data: &[u8]) {
        self.core.write(offset, data);
    }

    fn reset(&self) {
        self.core.reset();
    }
}
