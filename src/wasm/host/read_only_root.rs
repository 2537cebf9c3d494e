//! EROFS for writes to a read-only root filesystem, as Linux answers them.
//!
//! wasmtime-wasi 48 refuses a write through a read-only preopen with EPERM
//! (its `not-permitted`), and turns a kernel EROFS into EIO (its errno table,
//! `filesystem.rs` `from_raw_os_error`, has no EROFS), so neither a read-only
//! preopen nor a read-only mount gives a guest the error a container on a
//! read-only root gets. The WASI preview 1 calls that write through a path
//! are therefore wrapped: each calls wasmtime-wasi's own implementation, and
//! when that fails with EPERM on a directory of a read-only root (the root
//! and its top-level directories, which are preopened read-only: see
//! `layout`), the guest gets EROFS instead. Any other result is passed on.
//!
//! A write through a descriptor the guest opened itself below the root
//! (`openat` on a directory it opened) still gets EPERM, as do components:
//! wasi-libc and Go resolve every path from a preopen, so programs rarely do.
//!
//! `path_open`, wrapped here, also answers EMFILE when the instance holds
//! as many descriptors as it may (`open_files`), before anything is opened.

use wasmtime::{Caller, Extern, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1 as _;

use super::p1::P1State;

/// WASI preview 1 errno values (`wasi_snapshot_preview1.witx`).
const ERRNO_MFILE: i32 = 33;
const ERRNO_PERM: i32 = 63;
const ERRNO_ROFS: i32 = 69;
const MODULE: &str = "wasi_snapshot_preview1";

/// Replaces the path calls that write in `linker` (which already holds
/// wasmtime-wasi's preview 1) with ones that answer EROFS as described above.
pub(super) fn add_to_linker(linker: &mut Linker<P1State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    // `wrap!(name, (arguments: types), [the arguments that are directory
    // descriptors], refuse)`: `refuse` gives an errno to answer before the call, if any.
    macro_rules! wrap {
        ($name:ident, ($($arg:ident: $ty:ty),*), [$($fd:ident),*], $refuse:expr) => {
            linker.func_wrap_async(
                MODULE,
                stringify!($name),
                |mut caller: Caller<'_, P1State>, ($($arg,)*): ($($ty,)*)| {
                    Box::new(async move {
                        let refuse: fn(&mut P1State) -> Option<i32> = $refuse;
                        if let Some(errno) = refuse(caller.data_mut()) {
                            return Ok(errno);
                        }
                        // wasmtime-wasi's own wrappers hand the store's hostcall fuel to each call.
                        let fuel = wasmtime::AsContextMut::as_context_mut(&mut caller).hostcall_fuel();
                        let errno = match caller.get_export("memory") {
                            Some(Extern::Memory(memory)) => {
                                let (memory, state) = memory.data_and_store_mut(&mut caller);
                                state.wasi.set_hostcall_fuel(fuel);
                                let mut memory = wiggle::GuestMemory::Unshared(memory);
                                p1::$name(&mut state.wasi, &mut memory, $($arg),*).await?
                            }
                            Some(Extern::SharedMemory(memory)) => {
                                let state = caller.data_mut();
                                state.wasi.set_hostcall_fuel(fuel);
                                let mut memory = wiggle::GuestMemory::Shared(memory.data());
                                p1::$name(&mut state.wasi, &mut memory, $($arg),*).await?
                            }
                            _ => wasmtime::bail!("missing required memory export"),
                        };
                        Ok(read_only_error(caller.data(), errno, &[$($fd),*]))
                    })
                },
            )?;
        };
    }
    wrap!(path_open, (fd: i32, dirflags: i32, path: i32, path_len: i32, oflags: i32, rights: i64, inheriting: i64,
        fdflags: i32, opened: i32), [fd], open_files_limit);
    wrap!(path_create_directory, (fd: i32, path: i32, path_len: i32), [fd], |_| None);
    wrap!(path_unlink_file, (fd: i32, path: i32, path_len: i32), [fd], |_| None);
    wrap!(path_remove_directory, (fd: i32, path: i32, path_len: i32), [fd], |_| None);
    wrap!(path_rename, (fd: i32, path: i32, path_len: i32, new_fd: i32, new_path: i32, new_len: i32), [fd, new_fd], |_| None);
    wrap!(path_link, (fd: i32, flags: i32, path: i32, path_len: i32, new_fd: i32, new_path: i32, new_len: i32),
        [new_fd], |_| None);
    wrap!(path_symlink, (target: i32, target_len: i32, fd: i32, path: i32, path_len: i32), [fd], |_| None);
    wrap!(path_filestat_set_times, (fd: i32, flags: i32, path: i32, path_len: i32, atim: i64, mtim: i64,
        fst_flags: i32), [fd], |_| None);
    linker.allow_shadowing(false);
    Ok(())
}

/// EMFILE when the instance holds as many descriptors as it may.
fn open_files_limit(state: &mut P1State) -> Option<i32> {
    state.at_open_files_limit().then_some(ERRNO_MFILE)
}

/// `errno`, or EROFS for EPERM on a directory of a read-only root.
fn read_only_error(state: &P1State, errno: i32, fds: &[i32]) -> i32 {
    if errno == ERRNO_PERM && fds.iter().any(|fd| state.read_only_root_fds.contains(&(*fd as u32))) {
        ERRNO_ROFS
    } else {
        errno
    }
}
