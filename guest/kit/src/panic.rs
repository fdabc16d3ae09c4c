//! Panic handler: prints `guest panic: <info>` on the serial console and exits with
//! [`PANIC_STATUS`](crate::PANIC_STATUS).

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::{console, port};

/// Panics so far, on all vCPUs.
static PANICS: AtomicU32 = AtomicU32::new(0);

/// How long to wait for the console lock (another vCPU may be printing a line, one exit per
/// byte) before printing regardless.
const LOCK_SPINS: u32 = 1 << 22;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if PANICS.fetch_add(1, Ordering::AcqRel) == 0 {
        console::print_for_panic(format_args!("guest panic: {info}\n"), LOCK_SPINS);
    } else {
        // A second panic: either another vCPU panicked too, or printing the first message
        // panicked. Give the first one time to finish, then report without formatting.
        for _ in 0..LOCK_SPINS {
            core::hint::spin_loop();
        }
        console::write_str("guest panic: (nested or concurrent panic)\n");
    }
    port::exit(crate::PANIC_STATUS)
}

/// The unwinder's personality routine, which the precompiled `core` (built to unwind) refers to
/// from its unwind tables. Guests abort on panic and have no unwinder, so it is never called;
/// the linker only needs the symbol.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() -> ! {
    port::exit(crate::PANIC_STATUS)
}
