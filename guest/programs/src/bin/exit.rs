//! `exit`: ends the run with `code=` (default 0).
//!
//! Without `width=` it returns the code from main (the kit writes it to the exit port as 32
//! bits); with `width=8|16|32` it writes the exit port itself with an access of that width.
#![no_std]
#![no_main]

use cxlvm_guest::{BootInfo, arg, arg_u64, port, println};

cxlvm_guest::entry!(main);

fn main(_boot: &BootInfo, vcpu: u32) -> i32 {
    if vcpu != 0 {
        return 0;
    }
    let code = arg_u64("code", 0);
    match arg("width") {
        None => {
            println!("exit code={code}");
            code as i32
        }
        Some(width) => {
            println!("exit code={code} width={width}");
            match width {
                "8" => port::outb(port::EXIT, code as u8),
                "16" => port::outw(port::EXIT, code as u16),
                "32" => port::outl(port::EXIT, code as u32),
                _ => {
                    println!("exit: bad width `{width}` (8, 16 or 32)");
                    return 2;
                }
            }
            // The exit port stops the run; getting here means it did not.
            println!("exit: still running after writing the exit port");
            1
        }
    }
}
