//! The port-I/O bus.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cxlvm_memory::MmioHandler;

/// A device failure that ends the run: which device, and the error, kept with its sources.
#[derive(Clone, Debug)]
pub struct DeviceFailure {
    /// The device (or subsystem) that failed.
    pub device: &'static str,
    /// What failed.
    pub error: Arc<dyn std::error::Error + Send + Sync>,
}

impl DeviceFailure {
    /// A failure of `device` caused by `error`.
    pub fn new(
        device: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            device,
            error: Arc::new(error),
        }
    }
}

impl std::fmt::Display for DeviceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.device, self.error)
    }
}

/// Two failures are equal when they are the same report (same device, same error object).
impl PartialEq for DeviceFailure {
    fn eq(&self, other: &Self) -> bool {
        self.device == other.device && Arc::ptr_eq(&self.error, &other.error)
    }
}

impl Eq for DeviceFailure {}

/// Why a device asks the VM to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest asked to exit with this status.
    Exit(u8),
    /// A device hit an error it cannot hide from the guest.
    Fatal(DeviceFailure),
    /// The guest powered the machine off (ACPI S5).
    PowerOff,
    /// The guest reset the machine (ACPI reset register).
    Reset,
}

/// Where devices ask the VM to stop. The vCPU loop checks [`Stopper::requested`] after every
/// exit it handles; the first request wins.
#[derive(Default)]
pub struct Stopper {
    flag: AtomicBool,
    reason: Mutex<Option<StopReason>>,
}

impl Stopper {
    /// Asks the VM to stop (ignored if a request is already pending).
    pub fn request(&self, reason: StopReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        self.flag.store(true, Ordering::Release);
    }

    /// Whether a stop was requested (cheap: one atomic load).
    pub fn requested(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// The request, if any.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A device on the port-I/O bus. `offset` is relative to the device's base port; `data` is 1, 2
/// or 4 bytes, little endian. Must never panic on guest input.
pub trait PioDevice: Send + Sync {
    /// Port read.
    fn read(&self, offset: u16, data: &mut [u8]);
    /// Port write.
    fn write(&self, offset: u16, data: &[u8]);
}

/// Errors building the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PioError {
    /// Two devices claim the same port.
    #[error("I/O ports {base:#x}+{len} of '{name}' overlap '{other}'")]
    Overlap {
        /// New device.
        name: String,
        /// Its base port.
        base: u16,
        /// Its port count.
        len: u16,
        /// The device already there.
        other: String,
    },
}

struct Entry {
    base: u16,
    len: u16,
    name: String,
    dev: Arc<dyn PioDevice>,
}

/// Port-I/O dispatch. Unclaimed ports read all-ones and ignore writes.
#[derive(Default)]
pub struct PioBus {
    entries: Vec<Entry>,
}

impl PioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `dev` at ports `[base, base + len)`.
    pub fn insert(
        &mut self,
        name: &str,
        base: u16,
        len: u16,
        dev: Arc<dyn PioDevice>,
    ) -> Result<(), PioError> {
        let end = u32::from(base) + u32::from(len);
        if let Some(o) = self.entries.iter().find(|e| {
            u32::from(base) < u32::from(e.base) + u32::from(e.len) && u32::from(e.base) < end
        }) {
            return Err(PioError::Overlap {
                name: name.to_owned(),
                base,
                len,
                other: o.name.clone(),
            });
        }
        self.entries.push(Entry {
            base,
            len,
            name: name.to_owned(),
            dev,
        });
        self.entries.sort_by_key(|e| e.base);
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(&Entry, u16)> {
        let idx = self.entries.partition_point(|e| e.base <= port);
        let e = self.entries.get(idx.checked_sub(1)?)?;
        let off = port - e.base;
        (off < e.len).then_some((e, off))
    }

    /// Dispatches a port read; returns whether a device claimed the port.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((e, off)) => {
                e.dev.read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a port write.
    pub fn write(&self, port: u16, data: &[u8]) {
        match self.find(port) {
            Some((e, off)) => e.dev.write(off, data),
            None => tracing::debug!("write to unclaimed port {port:#x} dropped"),
        }
    }
}

/// The port-I/O space as an MMIO range: an access at offset `p` is port `p`.
///
/// Port I/O from CPL3 needs RFLAGS.IOPL = 3, which hardware KVM honours but `kvm_pvm` does not
/// (its guest ring 3 runs as host ring 3, where `in`/`out` fault). Test guests therefore reach
/// every port through this window; the devices are the same.
pub struct PioWindow(pub Arc<PioBus>);

impl MmioHandler for PioWindow {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match u16::try_from(offset) {
            Ok(port) => {
                self.0.read(port, data);
            }
            Err(_) => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let Ok(port) = u16::try_from(offset) {
            self.0.write(port, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec(Mutex<Vec<(u16, Vec<u8>)>>);
    impl PioDevice for Rec {
        fn read(&self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u16, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_port_with_device_relative_offsets() {
        let mut bus = PioBus::new();
        let a = Arc::new(Rec::default());
        bus.insert("a", 0x3f8, 8, a.clone()).unwrap();
        bus.write(0x3f9, &[7]);
        assert_eq!(a.0.lock().unwrap().as_slice(), &[(1, vec![7])]);
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(!bus.read(0x400, &mut d));
        assert_eq!(d, [0xff]);
        bus.write(0x3f7, &[1]);
        assert_eq!(a.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn pio_window_forwards_mmio_offsets_as_ports() {
        let mut bus = PioBus::new();
        let a = Arc::new(Rec::default());
        bus.insert("a", 0x500, 4, a.clone()).unwrap();
        let w = PioWindow(Arc::new(bus));
        MmioHandler::write(&w, 0x502, &[1, 2]);
        assert_eq!(a.0.lock().unwrap().as_slice(), &[(2, vec![1, 2])]);
        let mut d = [0u8; 4];
        MmioHandler::read(&w, 0x501, &mut d);
        assert_eq!(d, [1; 4]);
        MmioHandler::read(&w, 0x1_0000, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn first_stop_request_wins() {
        let s = Stopper::default();
        assert!(!s.requested());
        s.request(StopReason::Exit(3));
        s.request(StopReason::Fatal(DeviceFailure::new(
            "test",
            std::io::Error::other("later"),
        )));
        assert!(s.requested());
        assert_eq!(s.reason(), Some(StopReason::Exit(3)));
    }

    #[test]
    fn refuses_overlapping_devices() {
        let mut bus = PioBus::new();
        bus.insert("a", 0x500, 4, Arc::new(Rec::default())).unwrap();
        assert!(matches!(
            bus.insert("b", 0x503, 2, Arc::new(Rec::default())),
            Err(PioError::Overlap { .. })
        ));
        bus.insert("c", 0x504, 4, Arc::new(Rec::default())).unwrap();
    }
}
