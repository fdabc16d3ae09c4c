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

/// Line status register offset, and its break-interrupt bit.
const LSR: u8 = 5;
const LSR_BREAK: u8 = 0x10;

type Uart = vm_superio::Serial<SerialIrq, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

/// A 16550 UART (vm-superio) whose output goes to a writer (stdout, a file, a test buffer).
///
/// On top of vm-superio, which has no line conditions, it can receive a *break*, as a 16550
/// does: a NUL character enters the receive FIFO and the next line-status read reports the
/// break-interrupt bit (reading LSR clears it). Linux's 8250 driver takes a break on its console
/// followed by a key as a magic SysRq request.
pub struct Serial(Mutex<UartState>);

struct UartState {
    uart: Uart,
    /// A break was received and no LSR read has reported it yet.
    break_unreported: bool,
    /// FIFO room when empty.
    fifo_size: usize,
}

impl Serial {
    /// A UART writing to `out`, without an interrupt line (test guests poll).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self::with_irq(out, SerialIrq::None)
    }

    /// A UART writing to `out` that raises `irq` as a 16550 does.
    pub fn with_irq(out: Box<dyn Write + Send>, irq: SerialIrq) -> Self {
        let uart = vm_superio::Serial::new(irq, out);
        let fifo_size = uart.fifo_capacity();
        Self(Mutex::new(UartState {
            uart,
            break_unreported: false,
            fifo_size,
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UartState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues console input for the guest (as if typed); bytes beyond the FIFO are dropped, so
    /// callers feed it in small pieces. Returns how many were queued.
    pub fn input(&self, bytes: &[u8]) -> usize {
        let mut s = self.state();
        let room = s.uart.fifo_capacity();
        let n = bytes.len().min(room);
        match s.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!("serial input dropped: {e:?}");
                0
            }
        }
    }

    /// Receives a break: a NUL character whose line status reports the break, raising the
    /// received-data interrupt. Only once the guest has drained the receive FIFO (so the break
    /// character is at its head); returns whether the break was received.
    pub fn input_break(&self) -> bool {
        let mut s = self.state();
        if s.uart.fifo_capacity() != s.fifo_size || s.break_unreported {
            return false;
        }
        match s.uart.enqueue_raw_bytes(&[0]) {
            Ok(1) => {
                s.break_unreported = true;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::debug!("serial break dropped: {e:?}");
                false
            }
        }
    }
}

impl PioDevice for Serial {
    fn read(&self, offset: u16, data: &mut [u8]) {
        let v = match u8::try_from(offset) {
            Ok(o) => {
                let mut s = self.state();
                let mut v = s.uart.read(o);
                if o == LSR && s.break_unreported {
                    s.break_unreported = false;
                    v |= LSR_BREAK;
                }
                v
            }
            Err(_) => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&self, offset: u16, data: &[u8]) {
        if let (Ok(o), Some(&v)) = (u8::try_from(offset), data.first())
            && let Err(e) = self.state().uart.write(o, v)
        {
            tracing::warn!("serial output failed: {e:?}");
        }
    }
}

/// What a console keystroke stream asks of the UART, once cxlvm's escape is interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleInput {
    /// Characters for the guest.
    Bytes(Vec<u8>),
    /// A line break condition (`Ctrl-A b`): with Linux's serial console, the next key is a
    /// magic SysRq command.
    Break,
}

/// Interprets cxlvm's console escape, `Ctrl-A` (0x01), in keystrokes from the user: `Ctrl-A b`
/// sends a break, `Ctrl-A Ctrl-A` one `Ctrl-A`; after any other key both bytes go through. The
/// escape may be split across reads.
#[derive(Debug, Default)]
pub struct ConsoleKeys {
    escaped: bool,
}

impl ConsoleKeys {
    /// The escape character, `Ctrl-A`.
    pub const ESCAPE: u8 = 0x01;

    /// Turns the next keystrokes into guest input, in order.
    pub fn feed(&mut self, keys: &[u8]) -> Vec<ConsoleInput> {
        let mut out = Vec::new();
        let mut bytes = Vec::new();
        for &k in keys {
            if std::mem::take(&mut self.escaped) {
                match k {
                    b'b' => {
                        if !bytes.is_empty() {
                            out.push(ConsoleInput::Bytes(std::mem::take(&mut bytes)));
                        }
                        out.push(ConsoleInput::Break);
                    }
                    Self::ESCAPE => bytes.push(Self::ESCAPE),
                    other => bytes.extend_from_slice(&[Self::ESCAPE, other]),
                }
            } else if k == Self::ESCAPE {
                self.escaped = true;
            } else {
                bytes.push(k);
            }
        }
        if !bytes.is_empty() {
            out.push(ConsoleInput::Bytes(bytes));
        }
        out
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

    #[test]
    fn a_break_is_a_nul_whose_line_status_reports_the_break_once() {
        let irq = vmm_sys_util::eventfd::EventFd::new(libc_nonblock()).unwrap();
        let s = Serial::with_irq(
            Box::new(std::io::sink()),
            SerialIrq::EventFd(irq.try_clone().unwrap()),
        );
        s.write(1, &[1]);
        assert!(s.input_break());
        assert_eq!(irq.read().unwrap(), 1, "the break raises the interrupt");
        assert!(
            !s.input_break(),
            "a second break waits for the first to be read"
        );
        let lsr = |s: &Serial| {
            let mut v = [0u8; 1];
            PioDevice::read(s, 5, &mut v);
            v[0]
        };
        assert_eq!(lsr(&s) & 0x11, 0x11, "data ready and break");
        assert_eq!(lsr(&s) & 0x11, 0x01, "reading LSR cleared the break bit");
        let mut c = [0xffu8; 1];
        PioDevice::read(&s, 0, &mut c);
        assert_eq!(c[0], 0, "the break character is NUL");
        assert_eq!(lsr(&s) & 0x11, 0, "FIFO empty, no break");
        // Not while earlier input is still in the FIFO: the break would not be at its head.
        assert_eq!(s.input(b"m"), 1);
        assert!(!s.input_break());
        PioDevice::read(&s, 0, &mut c);
        assert_eq!(c[0], b'm');
        assert!(s.input_break());
    }

    #[test]
    fn console_escape_sends_breaks_and_passes_everything_else() {
        use ConsoleInput::{Break, Bytes};
        let mut k = ConsoleKeys::default();
        assert_eq!(
            k.feed(b"ab\x01bm"),
            vec![Bytes(b"ab".to_vec()), Break, Bytes(b"m".to_vec())]
        );
        assert_eq!(k.feed(b"\x01\x01x"), vec![Bytes(b"\x01x".to_vec())]);
        assert_eq!(k.feed(b"\x01q"), vec![Bytes(b"\x01q".to_vec())]);
        // Split across reads.
        assert_eq!(k.feed(b"z\x01"), vec![Bytes(b"z".to_vec())]);
        assert_eq!(k.feed(b"b"), vec![Break]);
        assert_eq!(k.feed(b""), vec![]);
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
