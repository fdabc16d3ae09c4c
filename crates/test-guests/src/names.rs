/// Every test guest `guest/programs` builds (its `[[bin]]`s), by name.
pub const NAMES: &[&str] = &[
    "hello", "window", "fault", "exit", "spin", "cxl", "acpi", "emulate", "ring0",
];
