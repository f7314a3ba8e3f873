//! Files written whole or not at all: a flushed temporary sibling renamed over the target, so a
//! reader (or a crash) never sees half a file.

use serde::Serialize;
use std::path::Path;

/// Writes `bytes` to `path` through a flushed temporary file renamed into place.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::data::write_atomically(path, |w| w.write_all(bytes))?;
    Ok(())
}

/// `value` as pretty JSON, written as [`write_bytes_atomic`] does.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    write_bytes_atomic(path, &serde_json::to_vec_pretty(value)?)
}
