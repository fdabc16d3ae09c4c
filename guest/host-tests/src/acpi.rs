//! The kit's ACPI reader and checker (`kit/src/acpi/{parse,check}.rs`), included by path (the
//! checker reaches the reader as `super::parse`, as in the kit).

#[path = "../../kit/src/acpi/check.rs"]
pub mod check;
#[path = "../../kit/src/acpi/parse.rs"]
pub mod parse;
