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
//!
//! The calls that write through a path, and those that write to, resize,
//! close, renumber a descriptor or set its flags, are also where the
//! bounds of file mounts are kept (`file_mount_guard`): EACCES for a new
//! entry in a private directory of file mounts, ENOSPC for a write past the
//! container's cap; an instance without writable file mounts skips them.

use wasmtime::{Caller, Extern, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1 as _;
use wiggle::{GuestMemory, GuestPtr};

use super::file_mount_guard::{ERRNO_ACCES, FDFLAGS_APPEND, OFLAGS_CREAT, p1_errno};
use super::p1::P1State;
use crate::wasm::file_mounts::{Entry, Growth};

/// WASI preview 1 errno values (`wasi_snapshot_preview1.witx`).
const ERRNO_MFILE: i32 = 33;
const ERRNO_PERM: i32 = 63;
const ERRNO_ROFS: i32 = 69;
const MODULE: &str = "wasi_snapshot_preview1";

/// Replaces the path calls that write in `linker` (which already holds
/// wasmtime-wasi's preview 1) with ones that answer EROFS as described
/// above, and the calls that may grow a file mount's copy or change what a
/// descriptor is with ones that keep the bounds of file mounts.
pub(super) fn add_to_linker(linker: &mut Linker<P1State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    // `wrap!(name, (arguments: types), |state, memory| body)`: `body` runs
    // with the store's state and the guest's memory, and gives the errno;
    // wasmtime-wasi's own function is `p1::name(&mut state.wasi, memory, arguments)`.
    //
    // `wrap!(name, (arguments: types), [directory descriptors], [descriptors
    // that may be EROFS], refuse)`: `refuse` gives an errno to answer
    // before the call, if any; else wasmtime-wasi's runs, its EPERM on a
    // read-only root made EROFS.
    macro_rules! wrap {
        ($name:ident, ($($arg:ident: $ty:ty),*), |$state:ident, $memory:ident| $body:block) => {
            linker.func_wrap_async(
                MODULE,
                stringify!($name),
                |mut caller: Caller<'_, P1State>, ($($arg,)*): ($($ty,)*)| {
                    Box::new(async move {
                        // wasmtime-wasi's own wrappers hand the store's hostcall fuel to each call.
                        let fuel = wasmtime::AsContextMut::as_context_mut(&mut caller).hostcall_fuel();
                        match caller.get_export("memory") {
                            Some(Extern::Memory(memory)) => {
                                let (memory, $state) = memory.data_and_store_mut(&mut caller);
                                $state.wasi.set_hostcall_fuel(fuel);
                                let mut memory = GuestMemory::Unshared(memory);
                                let $memory = &mut memory;
                                $body
                            }
                            Some(Extern::SharedMemory(memory)) => {
                                let $state = caller.data_mut();
                                $state.wasi.set_hostcall_fuel(fuel);
                                let mut memory = GuestMemory::Shared(memory.data());
                                let $memory = &mut memory;
                                $body
                            }
                            _ => wasmtime::bail!("missing required memory export"),
                        }
                    })
                },
            )?;
        };
        ($name:ident, ($($arg:ident: $ty:ty),*), [$($dir:ident),*], [$($rofs:ident),*], $refuse:expr) => {
            wrap!($name, ($($arg: $ty),*), |state, memory| {
                let refuse: fn(&mut P1State, &[i32]) -> Option<i32> = $refuse;
                if let Some(errno) = refuse(state, &[$($dir),*]) {
                    return Ok(errno);
                }
                let errno = p1::$name(&mut state.wasi, memory, $($arg),*).await?;
                Ok(read_only_error(state, errno, &[$($rofs),*]))
            });
        };
    }
    wrap!(path_open, (fd: i32, dirflags: i32, path: i32, path_len: i32, oflags: i32, rights: i64, inheriting: i64,
        fdflags: i32, opened: i32), |state, memory| {
        if state.at_open_files_limit() {
            return Ok(ERRNO_MFILE);
        }
        // In a private directory of file mounts: only a mounted name may be created.
        let entry = state.file_mounts.as_ref().and_then(|guard| Some((guard, guard.dir(fd)?))).map(|(guard, dir)| {
            read_path(memory, path, path_len).map_or(Entry::Other, |path| guard.copies().entry(dir, &path))
        });
        if entry.is_some_and(|entry| oflags & OFLAGS_CREAT != 0 && !matches!(entry, Entry::Copy(_))) {
            return Ok(ERRNO_ACCES);
        }
        let errno = p1::path_open(&mut state.wasi, memory, fd, dirflags, path, path_len, oflags, rights,
            inheriting, fdflags, opened).await?;
        if let (0, Some(entry), Some(guard)) = (errno, entry, &mut state.file_mounts) {
            let new_fd = memory.read(GuestPtr::<u32>::new(opened as u32))?;
            guard.opened(fd, entry, new_fd, fdflags & FDFLAGS_APPEND != 0);
        }
        Ok(read_only_error(state, errno, &[fd]))
    });
    wrap!(path_create_directory, (fd: i32, path: i32, path_len: i32), [fd], [fd], in_private_dir);
    wrap!(path_unlink_file, (fd: i32, path: i32, path_len: i32), [fd], [fd], in_private_dir);
    wrap!(path_remove_directory, (fd: i32, path: i32, path_len: i32), [fd], [fd], in_private_dir);
    wrap!(path_rename, (fd: i32, path: i32, path_len: i32, new_fd: i32, new_path: i32, new_len: i32),
        [fd, new_fd], [fd, new_fd], in_private_dir);
    // A link out of a private directory would be a way to write a copy that the guard does not know.
    wrap!(path_link, (fd: i32, flags: i32, path: i32, path_len: i32, new_fd: i32, new_path: i32, new_len: i32),
        [fd, new_fd], [new_fd], in_private_dir);
    wrap!(path_symlink, (target: i32, target_len: i32, fd: i32, path: i32, path_len: i32), [fd], [fd], in_private_dir);
    wrap!(path_filestat_set_times, (fd: i32, flags: i32, path: i32, path_len: i32, atim: i64, mtim: i64,
        fst_flags: i32), [], [fd], |_, _| None);

    wrap!(fd_write, (fd: i32, iovs: i32, iovs_len: i32, nwritten: i32), |state, memory| {
        let _lock = match reserve(state, memory, fd, iovs, iovs_len, None).await {
            Ok(lock) => lock,
            Err(errno) => return Ok(errno),
        };
        p1::fd_write(&mut state.wasi, memory, fd, iovs, iovs_len, nwritten).await
    });
    wrap!(fd_pwrite, (fd: i32, iovs: i32, iovs_len: i32, offset: i64, nwritten: i32), |state, memory| {
        let _lock = match reserve(state, memory, fd, iovs, iovs_len, Some(offset as u64)).await {
            Ok(lock) => lock,
            Err(errno) => return Ok(errno),
        };
        p1::fd_pwrite(&mut state.wasi, memory, fd, iovs, iovs_len, offset, nwritten).await
    });
    wrap!(fd_filestat_set_size, (fd: i32, size: i64), |state, memory| {
        let copy = state.file_mounts.as_ref().and_then(|guard| Some((guard.copies().clone(), guard.copy(fd)?)));
        let _lock = match copy {
            Some((copies, file)) => match copies.reserve(file.copy, Growth::To(size as u64)).await {
                Ok(lock) => Some(lock),
                Err(error) => return Ok(p1_errno(&error)),
            },
            None => None,
        };
        p1::fd_filestat_set_size(&mut state.wasi, memory, fd, size).await
    });
    wrap!(fd_fdstat_set_flags, (fd: i32, flags: i32), |state, memory| {
        let errno = p1::fd_fdstat_set_flags(&mut state.wasi, memory, fd, flags)?;
        if let (0, Some(guard)) = (errno, &mut state.file_mounts) {
            guard.set_append(fd as u32, flags & FDFLAGS_APPEND != 0);
        }
        Ok(errno)
    });
    wrap!(fd_close, (fd: i32), |state, memory| {
        let errno = p1::fd_close(&mut state.wasi, memory, fd).await?;
        if let (0, Some(guard)) = (errno, &mut state.file_mounts) {
            guard.closed(fd as u32);
        }
        Ok(errno)
    });
    wrap!(fd_renumber, (from: i32, to: i32), |state, memory| {
        let errno = p1::fd_renumber(&mut state.wasi, memory, from, to).await?;
        if let (0, Some(guard)) = (errno, &mut state.file_mounts) {
            guard.renumbered(from as u32, to as u32);
        }
        Ok(errno)
    });
    linker.allow_shadowing(false);
    Ok(())
}

/// EACCES when one of `fds` is a writable private directory of file mounts:
/// nothing may be created, removed or renamed there (see `file_mount_guard`).
fn in_private_dir(state: &mut P1State, fds: &[i32]) -> Option<i32> {
    state.file_mounts.as_ref().is_some_and(|guard| guard.any_dir(fds)).then_some(ERRNO_ACCES)
}

/// When `fd` is a copy of a file mount: waits for the container's lock and
/// checks that writing the buffers `iovs` at `offset` (none: at the
/// descriptor's position, or its end in append mode) keeps the copies
/// within the cap. Returns the lock to hold while writing (none for any
/// other descriptor), or the errno to answer (ENOSPC past the cap).
async fn reserve(
    state: &mut P1State,
    memory: &mut GuestMemory<'_>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    offset: Option<u64>,
) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>, i32> {
    let Some(guard) = &state.file_mounts else {
        return Ok(None);
    };
    let Some(file) = guard.copy(fd) else {
        return Ok(None);
    };
    let copies = guard.copies().clone();
    // wasmtime-wasi writes the first non-empty buffer only; a bad buffer list
    // fails in its hands, before anything is written.
    let len = match first_buffer_len(memory, iovs, iovs_len) {
        Some(len) if len > 0 => len,
        _ => return Ok(None),
    };
    let growth = if file.append {
        Growth::By(len)
    } else {
        let at = match offset {
            Some(at) => at,
            None => match state.wasi.fd_tell(memory, wasmtime_wasi::p1::types::Fd::from(fd as u32)) {
                Ok(position) => position,
                // A descriptor that is not a file: wasmtime-wasi refuses the write itself.
                Err(_) => return Ok(None),
            },
        };
        Growth::To(at.saturating_add(len))
    };
    copies.reserve(file.copy, growth).await.map(Some).map_err(|error| p1_errno(&error))
}

/// The length of the first non-empty buffer of the `ciovec` array at `iovs`
/// (`iovs_len` entries of a 32-bit pointer and a 32-bit length); none when
/// the array is outside the guest's memory.
fn first_buffer_len(memory: &GuestMemory<'_>, iovs: i32, iovs_len: i32) -> Option<u64> {
    let bytes = (iovs_len as u32).checked_mul(8)?;
    let array = memory.as_cow(GuestPtr::<[u8]>::new((iovs as u32, bytes))).ok()?;
    let len = array
        .chunks_exact(8)
        .map(|iov| u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]))
        .find(|len| *len > 0)
        .unwrap_or(0);
    Some(u64::from(len))
}

/// The path at `path`, none when it is outside the guest's memory or not UTF-8.
fn read_path(memory: &GuestMemory<'_>, path: i32, path_len: i32) -> Option<String> {
    memory.as_cow_str(GuestPtr::<str>::new((path as u32, path_len as u32))).ok().map(|path| path.into_owned())
}

/// `errno`, or EROFS for EPERM on a directory of a read-only root.
fn read_only_error(state: &P1State, errno: i32, fds: &[i32]) -> i32 {
    if errno == ERRNO_PERM && fds.iter().any(|fd| state.read_only_root_fds.contains(&(*fd as u32))) {
        ERRNO_ROFS
    } else {
        errno
    }
}
