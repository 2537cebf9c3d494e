//! Durable file writes, shared by the parts that persist state.

use std::io::{self, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Replaces `path` with `bytes` so that a reader, or the next start after a
/// crash, sees the old file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let write = || -> io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::internal(format!("writing {}", path.display()), e)
    })
}
