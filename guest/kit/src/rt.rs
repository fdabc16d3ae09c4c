//! Start-up: what runs between `_start` (from [`entry!`](crate::entry)) and the program's main.

use crate::boot::{self, BootInfo};
use crate::port;

/// The Rust side of `_start`, on every vCPU. Not for direct use: [`entry!`](crate::entry) calls it.
///
/// 1. vCPU 0 writes the boot-mark port once (the other vCPUs do not);
/// 2. the boot info at `boot_gpa` is checked (magic, version, header size); if it is bad, the
///    vCPU prints `guest: bad boot info ...` and exits with
///    [`BAD_BOOT_INFO_STATUS`](crate::BAD_BOOT_INFO_STATUS);
/// 3. `main(boot, vcpu)` runs;
/// 4. vCPU 0 writes its return value to the exit port, which ends the run; any other vCPU
///    [`park`]s, so that returning early from `main` never ends the run behind vCPU 0's back.
pub fn run(boot_gpa: u64, vcpu: u64, main: fn(&'static BootInfo, u32) -> i32) -> ! {
    let vcpu = vcpu as u32;
    if vcpu == 0 {
        port::outb(port::BOOT_MARK, 1);
    }
    let boot = match boot::init(boot_gpa) {
        Ok(boot) => boot,
        Err(e) => {
            crate::println!("guest: bad boot info at {boot_gpa:#x} (vCPU {vcpu}): {e}");
            port::exit(crate::BAD_BOOT_INFO_STATUS)
        }
    };
    let status = main(boot, vcpu);
    if vcpu == 0 {
        port::exit(status)
    }
    park()
}

/// Spins forever. This is how a vCPU other than vCPU 0 ends: CPL3 code cannot `hlt`, and only
/// vCPU 0 may write the exit status.
pub fn park() -> ! {
    loop {
        core::hint::spin_loop();
    }
}
