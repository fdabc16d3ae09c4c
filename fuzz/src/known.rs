//! Open bugs the targets have found, by id. While a bug is listed here its invariant is not
//! enforced during fuzzing (so CI keeps finding *new* bugs instead of re-finding this one), and
//! `tests/replay.rs` checks that its regression input (`regressions/<target>/<id>*`) still
//! breaks the invariant in strict mode. Fixing the bug makes that test fail: then remove the id
//! here, and the regression input guards the fix from then on.
//!
//! Strict mode ([`STRICT`], or `CXLVM_FUZZ_STRICT=1` in the environment of a fuzz run)
//! enforces every invariant.

use std::sync::atomic::{AtomicBool, Ordering};

/// Ids of the open bugs (see fuzz/README.md, "Bugs found").
pub const OPEN: &[&str] = &[];

/// Enforce the invariants of open bugs too.
pub static STRICT: AtomicBool = AtomicBool::new(false);

/// Whether the invariant of bug `id` is not enforced now.
pub fn tolerated(id: &str) -> bool {
    OPEN.contains(&id)
        && !STRICT.load(Ordering::Relaxed)
        && std::env::var_os("CXLVM_FUZZ_STRICT").is_none()
}
