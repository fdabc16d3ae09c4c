//! The cxlvm test guests (`guest/programs`), built from source by this crate's build script.
//!
//! Each guest is a static x86-64 ELF for `cxlvm run --guest <ELF>` (see `docs/guest-abi.md` and
//! `guest/README.md`, which lists every program's command line and output).
//!
//! ```
//! let hello = cxlvm_test_guests::path("hello");
//! assert!(hello.is_file());
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;

include!("names.rs");

/// Directory holding the built guest images (one file per entry of [`NAMES`]).
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CXLVM_TEST_GUESTS_DIR"))
}

/// Path of the guest image `name`, if it is one of [`NAMES`].
pub fn try_path(name: &str) -> Option<PathBuf> {
    NAMES.contains(&name).then(|| dir().join(name))
}

/// Path of the guest image `name`.
///
/// # Panics
/// When `name` is not one of [`NAMES`] (this is test-support code: a typo should fail loudly).
pub fn path(name: &str) -> PathBuf {
    try_path(name).unwrap_or_else(|| {
        panic!(
            "unknown test guest `{name}` (known guests: {})",
            NAMES.join(", ")
        )
    })
}

/// Exit statuses of the test guests (cxlvm exits with the guest's status).
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// `window`: a bad command line argument, too few vCPUs for `stress`, or a window too small
    /// for the requested words (also `exit`/`fault` for a bad argument).
    pub const BAD_ARG: i32 = 2;
    /// `window`: no scratch window device (or no null MMIO device for `mode=exits`).
    pub const NO_DEVICE: i32 = 3;
    /// `window`: data read back differs from what was written.
    pub const MISMATCH: i32 = 4;
    /// `window`: the CPU lacks XSAVEC (`mode=xsavec`) or usable AVX (`mode=avx`).
    pub const UNSUPPORTED: i32 = 5;
    /// `window`: the control port does not read back the alias state just written.
    pub const BAD_CONTROL: i32 = 6;
    /// Any guest: the boot info failed the kit's magic/version check.
    pub const BAD_BOOT_INFO: i32 = 0xfd;
    /// Any guest: it panicked (the message, `guest panic: ...`, is on the serial console).
    pub const PANIC: i32 = 0xfe;
}

/// A serial console sink that keeps what the guest printed (clone it: all clones share the text).
#[derive(Clone, Default)]
pub struct SerialCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SerialCapture {
    /// Everything written so far, as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for SerialCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
