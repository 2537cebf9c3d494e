//! What a guest is started with: the process-like view of its container
//! (argv, env, working directory, root filesystem, mounts), and the host
//! directory that holds what the container needs on the host's side.
//!
//! Plain data, built by the caller and read by the host side (`host`,
//! `layout`, `file_mounts`); nothing here touches wasmtime. Limits travel in
//! the container's [`Usage`](super::Usage), not here: they change while the
//! guest runs, and several instances share them.

use std::path::PathBuf;
use std::sync::Arc;

use crate::network::{NetNs, PodResolver};

pub use super::limits::{CpuBandwidth, Limits};

/// What a guest is given: the process-like view of its container.
#[derive(Debug, Clone, Default)]
pub struct GuestSpec {
    /// The container's id, for the daemon's log lines about its guest.
    pub container_id: String,
    /// `argv[0]` first, as WASI `args_get` / `wasi:cli/environment.get-arguments` give them.
    pub argv: Vec<String>,
    /// `(name, value)` pairs, handed to the guest in this order.
    pub env: Vec<(String, String)>,
    /// An absolute guest path; relative paths resolve against it (see `layout`).
    pub working_dir: Option<String>,
    /// The guest's `/`: a compat image's filesystem. `None` for an artifact,
    /// which sees only its mounts.
    pub root: Option<Root>,
    /// Directories and files of the host the guest sees, in the container
    /// config's order (see `file_mounts` for files).
    pub mounts: Vec<Mount>,
    /// A host directory of the container's own, for the copies that stand in
    /// for its file mounts; created only when there are some.
    pub scratch_dir: Option<PathBuf>,
    /// The pod's network namespace, where a component's sockets are made;
    /// none: the daemon's own (a hostNetwork pod). WASI preview 1 modules
    /// have no sockets.
    pub netns: Option<Arc<NetNs>>,
    /// The pod's name resolution (its DNS config, queried from its
    /// namespace); none: the node's (`getaddrinfo`).
    pub resolver: Option<Arc<PodResolver>>,
    /// Where the guest's stdin comes from (an exec's client, an attached
    /// container's pipe); none: an empty stdin, at its end at once.
    pub stdin: Stdin,
}

/// The reader a guest's stdin comes from, taken by the first instance made
/// from the spec (a spec's clones share it).
#[derive(Clone, Default)]
pub struct Stdin(Arc<std::sync::Mutex<Option<StdinReader>>>);

/// What [`Stdin`] holds.
pub type StdinReader = Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>;

impl Stdin {
    pub fn new(reader: impl tokio::io::AsyncRead + Send + Sync + Unpin + 'static) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(Box::new(reader)))))
    }

    /// The reader, once; `None` after, or when there was none.
    pub(super) fn take(&self) -> Option<StdinReader> {
        self.0.lock().unwrap().take()
    }
}

impl std::fmt::Debug for Stdin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = self.0.lock().map(|reader| reader.is_some()).unwrap_or(false);
        f.write_str(if given { "Stdin(given)" } else { "Stdin(none)" })
    }
}

/// A container's root filesystem on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// The directory the guest sees as `/`.
    pub host_path: PathBuf,
    /// Whether writes are refused (as on a read-only filesystem, EROFS).
    pub readonly: bool,
}

/// A host directory (or file) the guest sees at `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: String,
    /// An absolute path in the guest.
    pub guest_path: String,
    pub readonly: bool,
}
