//! Serial console and the test-guest ABI ports.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use cxlvm_memory::MmioHandler;

use std::sync::Arc;

use crate::{PioDevice, StopReason, Stopper};

/// Interrupt line of the UART: cxlvm's test guests poll, so raising it does nothing.
pub struct NoInterrupt;

impl vm_superio::Trigger for NoInterrupt {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// A 16550 UART (vm-superio) whose output goes to a writer (stdout, a file, a test buffer).
pub struct Serial(
    Mutex<vm_superio::Serial<NoInterrupt, vm_superio::serial::NoEvents, Box<dyn Write + Send>>>,
);

impl Serial {
    /// A UART writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self(Mutex::new(vm_superio::Serial::new(NoInterrupt, out)))
    }
}

impl PioDevice for Serial {
    fn read(&self, offset: u16, data: &mut [u8]) {
        let v = match u8::try_from(offset) {
            Ok(o) => self.0.lock().unwrap_or_else(|e| e.into_inner()).read(o),
            Err(_) => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&self, offset: u16, data: &[u8]) {
        if let (Ok(o), Some(&v)) = (u8::try_from(offset), data.first()) {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = s.write(o, v) {
                tracing::warn!("serial output failed: {e:?}");
            }
        }
    }
}

/// The exit port: a write stops the VM with `value & 0xff` as cxlvm's exit status.
pub struct ExitPort(pub Arc<Stopper>);

impl PioDevice for ExitPort {
    fn read(&self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u16, data: &[u8]) {
        self.0
            .request(StopReason::Exit(data.first().copied().unwrap_or(0)));
    }
}

/// The boot-mark port: remembers when the guest first wrote it.
#[derive(Default)]
pub struct BootMark(OnceLock<Instant>);

impl BootMark {
    /// Time of the first write, if any.
    pub fn first(&self) -> Option<Instant> {
        self.0.get().copied()
    }
}

impl PioDevice for BootMark {
    fn read(&self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u16, _data: &[u8]) {
        let _ = self.0.set(Instant::now());
    }
}

/// A device whose accesses do nothing but count: the cost floor of an exit (as a port and as an
/// MMIO range). Reads return zero.
#[derive(Default)]
pub struct NullDevice(AtomicU64);

impl NullDevice {
    /// Accesses so far.
    pub fn accesses(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl PioDevice for NullDevice {
    fn read(&self, _offset: u16, data: &mut [u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
        data.fill(0);
    }
    fn write(&self, _offset: u16, _data: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl MmioHandler for NullDevice {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
        data.fill(0);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn serial_transmits_bytes_and_reports_an_empty_transmitter() {
        let buf = Buf::default();
        let s = Serial::new(Box::new(buf.clone()));
        for &c in b"hi" {
            s.write(0, &[c]);
        }
        assert_eq!(buf.0.lock().unwrap().as_slice(), b"hi");
        let mut lsr = [0u8; 1];
        PioDevice::read(&s, 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty bit set");
    }

    #[test]
    fn exit_port_requests_a_stop_with_the_low_byte() {
        let s = Arc::new(Stopper::default());
        ExitPort(s.clone()).write(0, &[0x2a, 1, 0, 0]);
        assert_eq!(s.reason(), Some(StopReason::Exit(0x2a)));
        let s = Arc::new(Stopper::default());
        ExitPort(s.clone()).write(0, &[]);
        assert_eq!(s.reason(), Some(StopReason::Exit(0)));
    }
}
