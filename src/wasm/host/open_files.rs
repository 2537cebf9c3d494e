//! A guest's open-file limit (config `guest_max_open_files`, default 1024),
//! as `RLIMIT_NOFILE` bounds a process in a Linux container: one guest
//! reopening files must not take the daemon's descriptors from every other
//! pod and from pulls.
//!
//! What counts: the host descriptors one instance holds — its preopened
//! directories, the files and directories it opened, its sockets and its
//! name lookups under way. Each instance (a container's guest, each exec,
//! each request of a served component) has the limit, as each process of a
//! container has its own `nofile`.
//!
//! An open past the limit fails in the guest, as Linux's EMFILE would, and
//! touches nothing else: preview 1's `path_open` answers `EMFILE`; WASI 0.2
//! `open-at` answers `quota` (its `error-code` has no EMFILE: wasi-libc
//! shows EDQUOT), `create-tcp-socket`, `create-udp-socket`, `accept` and
//! `resolve-addresses` answer `new-socket-limit` (WASI's EMFILE for sockets).
//!
//! - A module's descriptors are counted in its resource table at each open
//!   (preview 1 holds nothing else there that outlives a call).
//! - A component's are tracked ([`OpenFiles`]), because a WASI 0.2 file
//!   stream holds its file open after the guest dropped the descriptor it
//!   came from: a file or directory counts while anything holds it (a weak
//!   reference to the host file tells), a socket or lookup while its table
//!   slot still holds it (its streams are its children: it cannot be
//!   dropped before them). Checking costs what the instance holds, not its
//!   whole table.

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p2::{TcpSocket, UdpSocket};

/// How many host descriptors the module instance of `table` holds: its files and directories.
pub(super) fn held(table: &mut ResourceTable) -> usize {
    table.iter_mut().filter(|entry| entry.is::<Descriptor>()).count()
}

/// Whether the module instance of `table` may not open another descriptor
/// under `limit` (0: no limit).
pub(super) fn at_limit(table: &mut ResourceTable, limit: usize) -> bool {
    limit > 0 && held(table) >= limit
}

/// What a component instance holds open, and its limit.
pub(super) struct OpenFiles {
    /// 0: no limit.
    limit: usize,
    /// Its preopened directories: open from its start.
    preopens: usize,
    /// The host files (and directories) it opened, while anything holds them.
    files: Vec<Weak<std::fs::File>>,
    /// The table slots of its sockets and name lookups.
    sockets: HashSet<u32>,
}

impl OpenFiles {
    pub(super) fn new(limit: usize, preopens: usize) -> Self {
        Self { limit, preopens, files: Vec::new(), sockets: HashSet::new() }
    }

    /// Whether the instance may not open another descriptor; forgets what it no longer holds.
    pub(super) fn at_limit(&mut self, table: &mut ResourceTable) -> bool {
        if self.limit == 0 {
            return false;
        }
        self.files.retain(|file| file.strong_count() > 0);
        self.sockets.retain(|&rep| {
            table.get_any_mut(rep).is_ok_and(|entry| {
                entry.is::<TcpSocket>() || entry.is::<UdpSocket>() || entry.is::<super::p2::NameLookup>()
            })
        });
        self.preopens + self.files.len() + self.sockets.len() >= self.limit
    }

    /// Counts a file or directory the instance opened.
    pub(super) fn opened(&mut self, descriptor: &Descriptor) {
        let file = match descriptor {
            Descriptor::File(file) => &file.file,
            Descriptor::Dir(dir) => &dir.dir,
        };
        self.files.push(Arc::downgrade(file));
    }

    /// Counts a socket or name lookup the instance made, by its table slot.
    pub(super) fn made(&mut self, rep: u32) {
        self.sockets.insert(rep);
    }
}

#[cfg(test)]
mod tests {
    use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
    use wasmtime_wasi::p2::bindings::filesystem::preopens::Host as _;
    use wasmtime_wasi::p2::bindings::filesystem::types::{DescriptorFlags, HostDescriptor, OpenFlags, PathFlags};
    use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

    use super::*;

    /// A file read through a stream stays open after its descriptor is
    /// dropped: it counts until the stream goes too.
    #[tokio::test]
    async fn a_file_counts_while_a_stream_of_it_is_held() {
        let dir = std::env::temp_dir().join(format!("wasmrun-open-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        let mut ctx = WasiCtxBuilder::new().preopened_dir(&dir, "/", FsPerms::ReadOnly).unwrap().build();
        let mut table = ResourceTable::new();
        let mut open_files = OpenFiles::new(3, 1);
        let mut view = WasiFilesystemCtxView { ctx: ctx.filesystem(), table: &mut table };
        let (root, _) = view.get_directories().unwrap().remove(0);
        let root_rep = root.rep();
        let mut streams = Vec::new();
        for _ in 0..2 {
            let root = wasmtime::component::Resource::new_borrow(root_rep);
            let flags = DescriptorFlags::READ;
            let fd = view.open_at(root, PathFlags::empty(), "f".into(), OpenFlags::empty(), flags).await.unwrap();
            open_files.opened(view.table.get(&fd).unwrap());
            let fd_again = wasmtime::component::Resource::new_borrow(fd.rep());
            streams.push(view.read_via_stream(fd_again, 0).unwrap());
            HostDescriptor::drop(&mut view, fd).unwrap();
        }
        // The preopen and two files whose descriptors are gone but whose streams are held.
        assert!(open_files.at_limit(view.table));
        for stream in streams {
            view.table.delete(stream).unwrap();
        }
        assert!(!open_files.at_limit(view.table));
        assert_eq!(open_files.files.len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
