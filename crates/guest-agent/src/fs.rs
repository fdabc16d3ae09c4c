//! The agent's only view of sysfs: a small trait over "read an attribute", "write an
//! attribute", "list a directory", so that the region logic can run against a fake tree in a
//! temporary directory and tests can record the order of writes.
//!
//! Paths are relative to the sysfs root (`bus/cxl/devices/decoder0.0/cap_ram`), always with
//! `/` separators.

use std::io;
use std::path::{Path, PathBuf};

/// What the agent does with sysfs.
pub trait SysFs {
    /// The absolute path of `rel`, for messages.
    fn path(&self, rel: &str) -> PathBuf;
    /// The attribute's content without surrounding whitespace.
    fn read(&self, rel: &str) -> io::Result<String>;
    /// Writes `value` to the attribute in one `write(2)` (sysfs takes one write per value).
    fn write(&self, rel: &str, value: &str) -> io::Result<()>;
    /// The names in a directory, sorted (numeric suffixes in numeric order, see [`name_key`]).
    fn list(&self, rel: &str) -> io::Result<Vec<String>>;
    /// Whether the path exists (following symbolic links).
    fn exists(&self, rel: &str) -> bool;
    /// The path with every symbolic link resolved, relative to the root (`devices/platform/...`).
    fn canonical(&self, rel: &str) -> io::Result<String>;
}

/// The real filesystem below a root directory (`/sys`, or a fake tree in tests).
#[derive(Debug, Clone)]
pub struct RootFs {
    root: PathBuf,
}

impl RootFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl SysFs for RootFs {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn read(&self, rel: &str) -> io::Result<String> {
        Ok(std::fs::read_to_string(self.path(rel))?.trim().to_owned())
    }

    fn write(&self, rel: &str, value: &str) -> io::Result<()> {
        use std::io::Write;
        // O_TRUNC as `echo >` does: sysfs ignores it, a fake tree needs it.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.path(rel))?;
        // One write call: a sysfs store gets the whole value or fails.
        let n = f.write(value.as_bytes())?;
        if n != value.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write ({n} of {} bytes)", value.len()),
            ));
        }
        Ok(())
    }

    fn list(&self, rel: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(self.path(rel))? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort_by_key(|n| name_key(n));
        Ok(names)
    }

    fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    fn canonical(&self, rel: &str) -> io::Result<String> {
        let root = std::fs::canonicalize(&self.root)?;
        let full = std::fs::canonicalize(self.path(rel))?;
        let inside = full.strip_prefix(&root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} leads outside {}",
                    self.path(rel).display(),
                    root.display()
                ),
            )
        })?;
        Ok(inside.to_string_lossy().into_owned())
    }
}

/// A sort key that orders `decoder2.10` after `decoder2.9` and `mem10` after `mem9`: the name
/// cut into text and number runs.
pub fn name_key(name: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut chars = name.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_digit() {
            let mut n: u64 = 0;
            while let Some(&d) = chars.peek() {
                let Some(v) = d.to_digit(10) else { break };
                n = n.saturating_mul(10).saturating_add(u64::from(v));
                chars.next();
            }
            key.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
            chars.next();
        }
    }
    if !text.is_empty() {
        key.push((text, u64::MAX));
    }
    key
}

/// Parses a sysfs number: `0x`-prefixed hex or decimal (what the CXL attributes print).
pub fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sort_numerically() {
        let mut v = vec![
            "decoder2.10",
            "decoder2.9",
            "mem10",
            "mem9",
            "decoder10.0",
            "root0",
        ];
        v.sort_by_key(|n| name_key(n));
        assert_eq!(
            v,
            [
                "decoder2.9",
                "decoder2.10",
                "decoder10.0",
                "mem9",
                "mem10",
                "root0"
            ]
        );
    }

    #[test]
    fn parses_hex_and_decimal() {
        assert_eq!(parse_u64("0x40000000\n"), Some(1 << 30));
        assert_eq!(parse_u64("4096"), Some(4096));
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u64("ram"), None);
    }
}
