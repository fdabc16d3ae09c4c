//! PCI/PCIe emulation for cxlvm (helper-owned; see the task description in the commit history).
#![forbid(unsafe_code)]
