//! A guest's open-file limit (config `guest_max_open_files`, default 1024),
//! as `RLIMIT_NOFILE` bounds a process in a Linux container: one guest
//! reopening files must not take the daemon's descriptors from every other
//! pod and from pulls.
//!
//! What counts: the files, directories (its preopens included) and sockets
//! one instance holds, i.e. its resource table's entries of those kinds,
//! each holding one host descriptor. A stream of a file or socket is a view
//! of it, sharing its descriptor, and is not counted again. Each instance
//! (a container's guest, each exec, each request of a served component) has
//! the limit, as each process of a container has its own `nofile`.
//!
//! An open past the limit fails in the guest, as Linux's EMFILE would, and
//! touches nothing else: preview 1's `path_open` answers `EMFILE`; WASI 0.2
//! `open-at` answers `quota` (its `error-code` has no EMFILE: wasi-libc
//! shows EDQUOT), `create-tcp-socket`, `create-udp-socket` and `accept`
//! answer `new-socket-limit` (WASI's EMFILE for sockets).
//!
//! Counting walks the table at each open (its entries are few: the limit
//! bounds them), so closes need no bookkeeping.

use wasmtime::component::ResourceTable;
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p2::{TcpSocket, UdpSocket};

/// How many host descriptors the instance of `table` holds: its files, directories and sockets.
pub(super) fn held(table: &mut ResourceTable) -> usize {
    table
        .iter_mut()
        .filter(|entry| entry.is::<Descriptor>() || entry.is::<TcpSocket>() || entry.is::<UdpSocket>())
        .count()
}

/// Whether the instance of `table` may not open another descriptor under
/// `limit` (0: no limit).
pub(super) fn at_limit(table: &mut ResourceTable, limit: usize) -> bool {
    limit > 0 && held(table) >= limit
}
