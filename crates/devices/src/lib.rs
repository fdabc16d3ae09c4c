//! Legacy and foundation devices of cxlvm.
//!
//! - [`PioBus`]: port-I/O dispatch (x86 ports are few and fixed at build time).
//! - [`Serial`]: a 16550 UART (vm-superio) writing to stdout or a file, reading console input
//!   ([`ConsoleKeys`]: `Ctrl-A b` sends a break, for Linux's magic SysRq).
//! - [`ExitPort`], [`BootMark`], [`NullDevice`]: the test-guest ABI ports (docs/guest-abi.md).
//! - [`ScratchWindow`]: a window modelled like a CXL fixed memory window — a container holding an
//!   MMIO path over a device backing and a RAM alias of the same backing — switched by a port.
#![forbid(unsafe_code)]

mod legacy;
mod pio;
mod window;

pub use legacy::{
    AcpiSleep, BootMark, ConsoleInput, ConsoleKeys, ExitPort, NullDevice, ResetRegister, Serial,
    SerialIrq, acpi_sleep,
};
pub use pio::{DeviceFailure, PioBus, PioDevice, PioError, PioWindow, StopReason, Stopper};
pub use window::{ScratchWindow, WindowError};
