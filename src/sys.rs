//! The few calls into the kernel that need `unsafe`. Everything else goes
//! through std, cap-std or tokio.
//!
//! All of these block: call them off the async workers.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Flushes every dirty page and inode of the filesystem holding `dir` to disk
/// (`syncfs(2)`). The directory is opened for reading, since `syncfs` refuses
/// an `O_PATH` descriptor (EBADF).
pub fn syncfs(dir: &Path) -> io::Result<()> {
    let file = File::open(dir)?;
    // SAFETY: the descriptor belongs to `file`, which stays open for the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_a_directory() {
        syncfs(&std::env::temp_dir()).expect("syncfs of the temporary directory");
    }
}
