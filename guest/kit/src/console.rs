//! Serial console on COM1 (a 16550 UART at 0x3f8), polled.
//!
//! [`print!`](crate::print) and [`println!`](crate::println) hold a spin lock for the whole
//! formatted message, so lines from different vCPUs do not interleave. Lines end with `\n` only.

use core::fmt;

use crate::port::{self, COM1};
use crate::sync::SpinLock;

/// Line status register.
const LSR: u16 = COM1 + 5;
/// LSR bit 5: the transmit holding register is empty.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Give up waiting for THR-empty after this many polls (and write anyway) rather than hang.
const MAX_POLLS: u32 = 1 << 10;

static LOCK: SpinLock<()> = SpinLock::new(());

/// Writes one byte to the UART, after polling LSR for THR-empty.
pub fn write_byte(b: u8) {
    let mut polls = 0;
    while port::inb(LSR) & LSR_THR_EMPTY == 0 && polls < MAX_POLLS {
        polls += 1;
        core::hint::spin_loop();
    }
    port::outb(COM1, b);
}

/// Writes `s` to the UART (without taking the console lock).
pub fn write_str(s: &str) {
    s.bytes().for_each(write_byte);
}

/// The UART as a [`fmt::Write`] sink. It does not lock: use [`print!`](crate::print), or hold
/// the lock yourself through [`with_lock`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_str(s);
        Ok(())
    }
}

/// Runs `f` with the console lock held, so that its output stays together.
pub fn with_lock<R>(f: impl FnOnce(&mut Serial) -> R) -> R {
    let _guard = LOCK.lock();
    f(&mut Serial)
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    with_lock(|s| {
        let _ = fmt::Write::write_fmt(s, args);
    });
}

/// Prints for the panic handler: takes the lock if it can within `max_spins` tries (another vCPU
/// may be in the middle of a line), and prints anyway when it cannot (this vCPU may itself hold
/// it, having panicked inside a `print!`).
pub(crate) fn print_for_panic(args: fmt::Arguments<'_>, max_spins: u32) {
    let guard = LOCK.try_lock_spinning(max_spins);
    let _ = fmt::Write::write_fmt(&mut Serial, args);
    drop(guard);
}

/// Prints to the serial console (COM1).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!($($arg)*))
    };
}

/// Prints to the serial console (COM1), with a newline (`\n`).
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::write_line("")
    };
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

#[doc(hidden)]
pub fn write_line(s: &str) {
    with_lock(|_| {
        write_str(s);
        write_byte(b'\n');
    });
}
