//! The port-I/O bus.

use std::sync::Arc;

/// What the vCPU loop must do after a port write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoAction {
    /// Resume the guest.
    Continue,
    /// Stop the VM with this exit status.
    Exit(u8),
    /// Stop the VM: the device hit an error it cannot hide from the guest (message for the user).
    Fatal(String),
}

/// A device on the port-I/O bus. `offset` is relative to the device's base port; `data` is 1, 2
/// or 4 bytes, little endian. Must never panic on guest input.
pub trait PioDevice: Send + Sync {
    /// Port read.
    fn read(&self, offset: u16, data: &mut [u8]);
    /// Port write.
    fn write(&self, offset: u16, data: &[u8]) -> IoAction;
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
    pub fn insert(&mut self, name: &str, base: u16, len: u16, dev: Arc<dyn PioDevice>) -> Result<(), PioError> {
        let end = u32::from(base) + u32::from(len);
        if let Some(o) = self
            .entries
            .iter()
            .find(|e| u32::from(base) < u32::from(e.base) + u32::from(e.len) && u32::from(e.base) < end)
        {
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
    pub fn write(&self, port: u16, data: &[u8]) -> IoAction {
        match self.find(port) {
            Some((e, off)) => e.dev.write(off, data),
            None => {
                tracing::debug!("write to unclaimed port {port:#x} dropped");
                IoAction::Continue
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Mutex<Vec<(u16, Vec<u8>)>>);
    impl PioDevice for Rec {
        fn read(&self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u16, data: &[u8]) -> IoAction {
            self.0.lock().unwrap().push((offset, data.to_vec()));
            IoAction::Continue
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
        assert_eq!(bus.write(0x3f7, &[1]), IoAction::Continue);
        assert_eq!(a.0.lock().unwrap().len(), 1);
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
