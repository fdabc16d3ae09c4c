//! Serial console and the test-guest ABI ports.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use cxlvm_memory::MmioHandler;

use std::sync::Arc;

use crate::{PioDevice, StopReason, Stopper};

/// Interrupt line of the UART: none for test guests (they poll), or an eventfd that KVM's
/// irqfd turns into an interrupt of the in-kernel irqchip (Linux guests).
pub enum SerialIrq {
    /// Raising it does nothing.
    None,
    /// Writing the eventfd raises the line.
    EventFd(vmm_sys_util::eventfd::EventFd),
}

impl vm_superio::Trigger for SerialIrq {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        match self {
            SerialIrq::None => Ok(()),
            SerialIrq::EventFd(e) => e.write(1),
        }
    }
}

/// A 16550 UART (vm-superio) whose output goes to a writer (stdout, a file, a test buffer).
pub struct Serial(
    Mutex<vm_superio::Serial<SerialIrq, vm_superio::serial::NoEvents, Box<dyn Write + Send>>>,
);

impl Serial {
    /// A UART writing to `out`, without an interrupt line (test guests poll).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self::with_irq(out, SerialIrq::None)
    }

    /// A UART writing to `out` that raises `irq` as a 16550 does.
    pub fn with_irq(out: Box<dyn Write + Send>, irq: SerialIrq) -> Self {
        Self(Mutex::new(vm_superio::Serial::new(irq, out)))
    }

    /// Queues console input for the guest (as if typed); bytes beyond the FIFO are dropped, so
    /// callers feed it in small pieces. Returns how many were queued.
    pub fn input(&self, bytes: &[u8]) -> usize {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = s.fifo_capacity();
        let n = bytes.len().min(room);
        match s.enqueue_raw_bytes(&bytes[..n]) {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!("serial input dropped: {e:?}");
                0
            }
        }
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
    fn console_input_is_received_and_raises_the_interrupt() {
        let irq = vmm_sys_util::eventfd::EventFd::new(libc_nonblock()).unwrap();
        let s = Serial::with_irq(
            Box::new(std::io::sink()),
            SerialIrq::EventFd(irq.try_clone().unwrap()),
        );
        // The guest enables the received-data interrupt (IER bit 0).
        s.write(1, &[1]);
        assert_eq!(s.input(b"ok\n"), 3);
        assert_eq!(irq.read().unwrap(), 1, "interrupt raised once");
        let mut got = Vec::new();
        loop {
            let mut lsr = [0u8; 1];
            PioDevice::read(&s, 5, &mut lsr);
            if lsr[0] & 1 == 0 {
                break;
            }
            let mut c = [0u8; 1];
            PioDevice::read(&s, 0, &mut c);
            got.push(c[0]);
        }
        assert_eq!(got, b"ok\n");
        // A full FIFO takes what fits and says so.
        let big = [b'x'; 1000];
        let q = s.input(&big);
        assert!(q > 0 && q < big.len(), "{q}");
    }

    fn libc_nonblock() -> i32 {
        0o4000 // EFD_NONBLOCK
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

/// The hardware-reduced ACPI sleep registers (FADT `SLEEP_CONTROL_REG` at offset 0 and
/// `SLEEP_STATUS_REG` at offset 1, one byte each in I/O space): writing SLP_EN with the `_S5`
/// sleep type powers the machine off, which ends the run.
pub struct AcpiSleep {
    stopper: Arc<Stopper>,
    /// The `_S5` SLP_TYP value the DSDT announces.
    s5_type: u8,
}

/// Register layout of [`AcpiSleep`].
pub mod acpi_sleep {
    /// Sleep control register (SLP_TYP in bits 4:2, SLP_EN bit 5).
    pub const CONTROL: u16 = 0;
    /// Sleep status register (WAK_STS bit 7; reads 0).
    pub const STATUS: u16 = 1;
    /// Ports the device spans.
    pub const LEN: u16 = 2;
    /// SLP_EN.
    pub const SLP_EN: u8 = 1 << 5;
}

impl AcpiSleep {
    /// Sleep registers that stop the run through `stopper` on S5 (`s5_type`).
    pub fn new(stopper: Arc<Stopper>, s5_type: u8) -> Self {
        Self { stopper, s5_type }
    }
}

impl PioDevice for AcpiSleep {
    fn read(&self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        if offset == acpi_sleep::CONTROL
            && v & acpi_sleep::SLP_EN != 0
            && (v >> 2) & 7 == self.s5_type
        {
            self.stopper.request(StopReason::PowerOff);
        } else {
            tracing::debug!("ACPI sleep register {offset} written with {v:#x}: ignored");
        }
    }
}

/// The reset register (FADT `RESET_REG`, one byte in I/O space): writing its reset value resets
/// the machine, which ends the run.
pub struct ResetRegister {
    stopper: Arc<Stopper>,
    value: u8,
}

impl ResetRegister {
    /// A reset register that stops the run through `stopper` when `value` is written.
    pub fn new(stopper: Arc<Stopper>, value: u8) -> Self {
        Self { stopper, value }
    }
}

impl PioDevice for ResetRegister {
    fn read(&self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, _offset: u16, data: &[u8]) {
        if data.first() == Some(&self.value) {
            self.stopper.request(StopReason::Reset);
        }
    }
}
