//! The bounds of file mounts (see `file_mounts`), as a guest meets them: the
//! writable private directories hold only the mounted names, and their copies
//! may grow to the container's cap (`file_mount_max_bytes`) and no further.
//!
//! Each instance whose preopens include a writable private directory keeps a
//! guard ([`P1Guard`] for a module, [`P2Guard`] for a component) that knows
//! which of its descriptors are such a directory or a copy in one. An
//! instance without one has no guard: its calls pay one branch.
//!
//! - A descriptor is known from where it was opened: a preopen of a private
//!   directory, or an open in one (`path_open`, `open-at`) of a path naming
//!   the directory itself or a mounted name (`WritableCopies::entry`). A
//!   module's are kept by number (moved by `fd_renumber`, forgotten by
//!   `fd_close`), a component's by the host file they hold (a weak
//!   reference: the file counts while anything, a stream too, holds it).
//! - In a private directory, creating anything but a mounted name
//!   (`path_open`/`open-at` with `O_CREAT`, directories, links, symlinks),
//!   removing or renaming an entry, and linking a copy elsewhere fail with
//!   EACCES (WASI 0.2 `access`): what Linux answers in a directory one may
//!   not write. wasmtime-wasi is not asked.
//! - A write that may grow a copy is checked before wasmtime-wasi runs it,
//!   under the container's lock (see `WritableCopies::reserve`): the copies'
//!   sizes are stat'ed on a blocking thread and the write's end compared
//!   with the cap. Past it the guest gets ENOSPC (WASI 0.2
//!   `insufficient-space`) and nothing is written: what a full filesystem
//!   answers, and what wasi-libc and Rust's std report as "No space left on
//!   device". Preview 1: `fd_write` (the first non-empty buffer, which is all
//!   wasmtime-wasi writes, at the descriptor's position or its end in append
//!   mode), `fd_pwrite`, `fd_filestat_set_size`. WASI 0.2: `write`,
//!   `set-size`, and the streams of `write-via-stream` and
//!   `append-via-stream`, which are [`CopyStream`]s in place of
//!   wasmtime-wasi's, checking each write on the blocking thread that makes it.
//!   `fd_allocate` grows nothing (wasmtime-wasi answers ENOTSUP), nor does
//!   `advise`; WASI 0.2 has no allocate; an `O_TRUNC` open only shrinks.
//!
//! Output to stdout and stderr, and writes to any other file (the root
//! filesystem, directory mounts), are not checked.

use std::io;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::wasm::file_mounts::{Entry, Growth, WritableCopies};
use crate::wasm::layout::Preopen;

/// WASI preview 1 errno values (`wasi_snapshot_preview1.witx`).
pub(super) const ERRNO_ACCES: i32 = 2;
const ERRNO_IO: i32 = 29;
const ERRNO_NOSPC: i32 = 51;

/// Preview 1 `oflags::creat` and `fdflags::append`.
pub(super) const OFLAGS_CREAT: i32 = 1;
pub(super) const FDFLAGS_APPEND: i32 = 1;

/// The preview 1 errno of a refused write: ENOSPC past the cap, else EIO (a
/// copy that could not be stat'ed: the host's fault, logged).
pub(super) fn p1_errno(error: &io::Error) -> i32 {
    if error.raw_os_error() == Some(libc::ENOSPC) {
        return ERRNO_NOSPC;
    }
    tracing::warn!(%error, "cannot check a write to a file mount against file_mount_max_bytes");
    ERRNO_IO
}

/// The WASI 0.2 error of a refused write, as [`p1_errno`].
pub(super) fn p2_error(error: &io::Error) -> wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode {
    use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode;
    if error.raw_os_error() == Some(libc::ENOSPC) {
        return ErrorCode::InsufficientSpace;
    }
    tracing::warn!(%error, "cannot check a write to a file mount against file_mount_max_bytes");
    ErrorCode::Io
}

/// The first writable private directory's copies among `preopens`, with the
/// cap set on them: every store of the container sets the same one.
fn copies_of(preopens: &[Preopen], max_bytes: u64) -> Option<Arc<WritableCopies>> {
    let copies = preopens.iter().find_map(|preopen| preopen.file_mounts.as_ref())?.copies.clone();
    copies.set_max_bytes(max_bytes);
    Some(copies)
}

/// A module instance's descriptors of writable private directories and of copies.
pub(super) struct P1Guard {
    copies: Arc<WritableCopies>,
    /// (descriptor, private directory)
    dirs: Vec<(u32, usize)>,
    files: Vec<P1Copy>,
}

/// A descriptor of a copy.
#[derive(Debug, Clone, Copy)]
pub(super) struct P1Copy {
    fd: u32,
    pub copy: usize,
    /// Opened with `fdflags::append`, or set so since: each write goes to the end.
    pub append: bool,
}

impl P1Guard {
    /// The guard of a module preopening `preopens` (numbered from 3 on), none
    /// when none is a writable private directory; `max_bytes` is the cap.
    pub(super) fn new(preopens: &[Preopen], max_bytes: u64) -> Option<Self> {
        let copies = copies_of(preopens, max_bytes)?;
        let dirs = (3..).zip(preopens).filter_map(|(fd, p)| Some((fd, p.file_mounts.as_ref()?.dir))).collect();
        Some(Self { copies, dirs, files: Vec::new() })
    }

    /// The container's copies.
    pub(super) fn copies(&self) -> &Arc<WritableCopies> {
        &self.copies
    }

    /// The private directory `fd` is, if it is one.
    pub(super) fn dir(&self, fd: i32) -> Option<usize> {
        self.dirs.iter().find(|(dir_fd, _)| *dir_fd as i32 == fd).map(|(_, dir)| *dir)
    }

    /// Whether any of `fds` is a private directory.
    pub(super) fn any_dir(&self, fds: &[i32]) -> bool {
        fds.iter().any(|fd| self.dir(*fd).is_some())
    }

    /// The copy `fd` is, if it is one.
    pub(super) fn copy(&self, fd: i32) -> Option<P1Copy> {
        self.files.iter().find(|file| file.fd as i32 == fd).copied()
    }

    /// Keeps `fd`, just opened as `entry` of the private directory `dir_fd`.
    pub(super) fn opened(&mut self, dir_fd: i32, entry: Entry, fd: u32, append: bool) {
        self.closed(fd);
        match (entry, self.dir(dir_fd)) {
            (Entry::Dir, Some(dir)) => self.dirs.push((fd, dir)),
            (Entry::Copy(copy), Some(_)) => self.files.push(P1Copy { fd, copy, append }),
            _ => {}
        }
    }

    /// Forgets `fd`, closed.
    pub(super) fn closed(&mut self, fd: u32) {
        self.dirs.retain(|(dir_fd, _)| *dir_fd != fd);
        self.files.retain(|file| file.fd != fd);
    }

    /// `from` is now `to` (`fd_renumber`), `to` closed first.
    pub(super) fn renumbered(&mut self, from: u32, to: u32) {
        if from == to {
            return;
        }
        self.closed(to);
        self.dirs.iter_mut().filter(|(fd, _)| *fd == from).for_each(|(fd, _)| *fd = to);
        self.files.iter_mut().filter(|file| file.fd == from).for_each(|file| file.fd = to);
    }

    /// `fd`'s append mode, set by `fd_fdstat_set_flags`.
    pub(super) fn set_append(&mut self, fd: u32, append: bool) {
        self.files.iter_mut().filter(|file| file.fd == fd).for_each(|file| file.append = append);
    }
}

/// A component instance's writable private directories and copies, by the
/// host file each descriptor holds.
pub(super) struct P2Guard {
    copies: Arc<WritableCopies>,
    /// (directory, private directory)
    dirs: Vec<(Weak<std::fs::File>, usize)>,
    /// (file, copy)
    files: Vec<(Weak<std::fs::File>, usize)>,
}

impl P2Guard {
    /// The guard of a component whose context `filesystem` preopens
    /// `preopens` (in order), none when none is a writable private
    /// directory; `max_bytes` is the cap. Learns which host directories the
    /// preopens are by asking `get-directories` once, as the guest would,
    /// and drops what that put in `table`.
    ///
    /// Errors: a table error (a full table: not the guest's doing, it has not run).
    pub(super) fn new(
        filesystem: &mut wasmtime_wasi::filesystem::WasiFilesystemCtx,
        table: &mut ResourceTable,
        preopens: &[Preopen],
        max_bytes: u64,
    ) -> wasmtime::Result<Option<Self>> {
        use wasmtime_wasi::p2::bindings::filesystem::preopens::Host as _;
        let Some(copies) = copies_of(preopens, max_bytes) else {
            return Ok(None);
        };
        let mut view = WasiFilesystemCtxView { ctx: filesystem, table };
        let opened = view.get_directories()?;
        let mut dirs = Vec::new();
        for ((fd, _), preopen) in opened.into_iter().zip(preopens) {
            if let (Some(dir), Descriptor::Dir(host)) = (&preopen.file_mounts, view.table.get(&fd)?) {
                dirs.push((Arc::downgrade(&host.dir), dir.dir));
            }
            view.table.delete(fd)?;
        }
        Ok(Some(Self { copies, dirs, files: Vec::new() }))
    }

    /// The container's copies.
    pub(super) fn copies(&self) -> &Arc<WritableCopies> {
        &self.copies
    }

    /// The private directory `descriptor` is, if it is one.
    pub(super) fn dir(&self, descriptor: &Descriptor) -> Option<usize> {
        match descriptor {
            Descriptor::Dir(dir) => find(&self.dirs, &dir.dir),
            Descriptor::File(_) => None,
        }
    }

    /// The copy `descriptor` is, if it is one, and its host file.
    pub(super) fn copy(&self, descriptor: &Descriptor) -> Option<(usize, wasmtime_wasi::filesystem::File)> {
        match descriptor {
            Descriptor::File(file) => Some((find(&self.files, &file.file)?, file.clone())),
            Descriptor::Dir(_) => None,
        }
    }

    /// What `path` names when `descriptor` is a private directory.
    pub(super) fn entry(&self, descriptor: &Descriptor, path: &str) -> Option<(usize, Entry)> {
        let dir = self.dir(descriptor)?;
        Some((dir, self.copies.entry(dir, path)))
    }

    /// Keeps `descriptor`, just opened as `entry` of the private directory `dir`.
    pub(super) fn opened(&mut self, dir: usize, entry: Entry, descriptor: &Descriptor) {
        self.dirs.retain(|(held, _)| held.strong_count() > 0);
        self.files.retain(|(held, _)| held.strong_count() > 0);
        match (entry, descriptor) {
            (Entry::Dir, Descriptor::Dir(opened)) => self.dirs.push((Arc::downgrade(&opened.dir), dir)),
            (Entry::Copy(copy), Descriptor::File(opened)) => self.files.push((Arc::downgrade(&opened.file), copy)),
            _ => {}
        }
    }
}

/// What `file` is among `held`: a live entry for the same host file (a dead
/// one's address may have been reused).
fn find(held: &[(Weak<std::fs::File>, usize)], file: &Arc<std::fs::File>) -> Option<usize> {
    held.iter()
        .find(|(weak, _)| weak.strong_count() > 0 && std::ptr::eq(weak.as_ptr(), Arc::as_ptr(file)))
        .map(|(_, index)| *index)
}

/// How much one write to a [`CopyStream`] may carry, in bytes: what
/// wasmtime-wasi's file streams allow (64 KiB).
const STREAM_WRITE_CAPACITY: usize = 64 * 1024;

/// An output stream to a copy, in place of wasmtime-wasi's file stream
/// (`write-via-stream`, `append-via-stream`): each write runs on a blocking
/// thread, under the container's lock, checked against the cap first
/// (ENOSPC past it, reported as the stream's last operation failing, which
/// the guest reads as `insufficient-space`); the stream then closes, as
/// wasmtime-wasi's does after a failed write.
pub(super) struct CopyStream {
    file: Arc<std::fs::File>,
    copies: Arc<WritableCopies>,
    copy: usize,
    /// Where the next write goes; none: at the end (an append).
    position: Option<u64>,
    state: StreamState,
}

enum StreamState {
    Ready,
    Writing(tokio::task::JoinHandle<io::Result<usize>>),
    Failed(io::Error),
    Closed,
}

impl CopyStream {
    /// A stream writing `file`, the copy `copy`, from `position` on (none: appending).
    pub(super) fn new(
        file: &wasmtime_wasi::filesystem::File,
        copies: Arc<WritableCopies>,
        copy: usize,
        position: Option<u64>,
    ) -> Self {
        Self { file: file.file.clone(), copies, copy, position, state: StreamState::Ready }
    }

    /// Writes all of `bytes` at `position` (none: at the end) if the cap allows. Blocking.
    fn write_blocking(
        file: &std::fs::File,
        copies: &WritableCopies,
        copy: usize,
        position: Option<u64>,
        bytes: &[u8],
    ) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let len = bytes.len() as u64;
        let growth = match position {
            Some(at) => Growth::To(at.saturating_add(len)),
            None => Growth::By(len),
        };
        let _lock = copies.reserve_blocking(copy, growth)?;
        let at = match position {
            Some(at) => at,
            None => file.metadata()?.len(),
        };
        file.write_all_at(bytes, at)?;
        Ok(bytes.len())
    }

    /// The failure of the last write, once: the stream is closed after it.
    fn take_failure(&mut self) -> StreamError {
        match std::mem::replace(&mut self.state, StreamState::Closed) {
            StreamState::Failed(error) => StreamError::LastOperationFailed(error.into()),
            _ => StreamError::Closed,
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CopyStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        match self.state {
            StreamState::Ready => {}
            StreamState::Closed => return Err(StreamError::Closed),
            StreamState::Writing(_) | StreamState::Failed(_) => {
                return Err(StreamError::trap("write not permitted: check_write not called first"));
            }
        }
        let (file, copies, copy, position) = (self.file.clone(), self.copies.clone(), self.copy, self.position);
        self.state = StreamState::Writing(tokio::task::spawn_blocking(move || {
            Self::write_blocking(&file, &copies, copy, position, &bytes)
        }));
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        match self.state {
            // Nothing is buffered here: a write is done when its thread is.
            StreamState::Ready | StreamState::Writing(_) => Ok(()),
            StreamState::Failed(_) => Err(self.take_failure()),
            StreamState::Closed => Err(StreamError::Closed),
        }
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        match self.state {
            StreamState::Ready => Ok(STREAM_WRITE_CAPACITY),
            StreamState::Writing(_) => Ok(0),
            StreamState::Failed(_) => Err(self.take_failure()),
            StreamState::Closed => Err(StreamError::Closed),
        }
    }

    async fn cancel(&mut self) {
        // A write on a blocking thread cannot be stopped: wait for it, as wasmtime-wasi does.
        if let StreamState::Writing(task) = std::mem::replace(&mut self.state, StreamState::Closed) {
            let _ = task.await;
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CopyStream {
    async fn ready(&mut self) {
        if let StreamState::Writing(task) = &mut self.state {
            self.state = match task.await {
                Ok(Ok(written)) => {
                    if let Some(position) = &mut self.position {
                        *position += written as u64;
                    }
                    StreamState::Ready
                }
                Ok(Err(error)) => StreamState::Failed(error),
                Err(joined) => StreamState::Failed(io::Error::other(joined)),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use wasmtime_wasi::{FsPerms, OpenMode};

    use super::*;
    use crate::wasm::spec::Mount;

    /// A container whose termination log is a writable file mount, its copy
    /// holding `content`, under the cap `max_bytes`: its copies, and the copy's path.
    fn termination_log(name: &str, content: &str, max_bytes: u64) -> (PathBuf, Arc<WritableCopies>, PathBuf) {
        let host = std::env::temp_dir()
            .join(format!("wasmrun-file-mount-guard-{name}-{}", hex::encode(rand::random::<[u8; 8]>())));
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("log"), content).unwrap();
        let mount = Mount {
            host_path: host.join("log").display().to_string(),
            guest_path: "/dev/termination-log".into(),
            readonly: false,
        };
        let prepared = crate::wasm::file_mounts::prepare(vec![mount], Some(host.join("scratch"))).unwrap();
        let copies = prepared.files.writable_copies().unwrap().clone();
        copies.set_max_bytes(max_bytes);
        let copy = Path::new(&prepared.preopens[0].host_path).join("termination-log");
        (host, copies, copy)
    }

    fn stream(copies: &Arc<WritableCopies>, copy: &Path, position: Option<u64>) -> CopyStream {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(copy).unwrap();
        let file =
            wasmtime_wasi::filesystem::File::new(file, FsPerms::ReadWrite, OpenMode::READ | OpenMode::WRITE, false);
        CopyStream::new(&file, copies.clone(), 0, position)
    }

    fn is_enospc(error: StreamError) -> bool {
        match error {
            StreamError::LastOperationFailed(error) => {
                error.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error) == Some(libc::ENOSPC)
            }
            _ => false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stream_to_a_copy_stops_at_the_cap() {
        let (host, copies, copy) = termination_log("stream", "", 100);
        let mut writer = stream(&copies, &copy, Some(0));
        writer.blocking_write_and_flush(Bytes::from(vec![b'a'; 60])).await.unwrap();
        let refused = writer.blocking_write_and_flush(Bytes::from(vec![b'b'; 41])).await.unwrap_err();
        assert!(is_enospc(refused));
        assert!(matches!(writer.check_write(), Err(StreamError::Closed)), "closed after its failure");
        assert_eq!(std::fs::read(&copy).unwrap(), vec![b'a'; 60], "nothing of the refused write");

        // An append fills it exactly; over what is there, a write goes through.
        let mut appender = stream(&copies, &copy, None);
        appender.blocking_write_and_flush(Bytes::from(vec![b'c'; 40])).await.unwrap();
        assert!(is_enospc(appender.blocking_write_and_flush(Bytes::from_static(b"d")).await.unwrap_err()));
        let mut overwriter = stream(&copies, &copy, Some(90));
        overwriter.blocking_write_and_flush(Bytes::from_static(b"0123456789")).await.unwrap();
        let written = std::fs::read(&copy).unwrap();
        assert_eq!(written.len(), 100);
        assert!(written.ends_with(b"cccc0123456789"), "{written:?}");
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[test]
    fn a_module_guard_follows_its_descriptors() {
        let (host, copies, _) = termination_log("p1", "", 100);
        let dir = crate::wasm::file_mounts::FileMountDir { copies, dir: 0 };
        let mount = Mount { host_path: "/h".into(), guest_path: "/dev".into(), readonly: false };
        let preopens = [
            Preopen { mount: mount.clone(), in_root: false, file_mounts: None },
            Preopen { mount, in_root: false, file_mounts: Some(dir) },
        ];
        let mut guard = P1Guard::new(&preopens, 100).expect("a writable private directory");
        assert_eq!((guard.dir(3), guard.dir(4)), (None, Some(0)));
        assert!(guard.any_dir(&[3, 4]) && !guard.any_dir(&[3, 5]));
        guard.opened(4, Entry::Copy(0), 7, false);
        guard.opened(4, Entry::Dir, 8, false);
        guard.opened(3, Entry::Copy(0), 9, false);
        assert_eq!(guard.copy(7).map(|file| (file.copy, file.append)), Some((0, false)));
        assert!(guard.copy(9).is_none(), "opened outside the private directory");
        assert_eq!(guard.dir(8), Some(0));
        guard.set_append(7, true);
        guard.renumbered(7, 10);
        assert!(guard.copy(7).is_none());
        assert!(guard.copy(10).is_some_and(|file| file.append));
        guard.closed(10);
        guard.closed(8);
        assert!(guard.copy(10).is_none() && guard.dir(8).is_none());
        std::fs::remove_dir_all(&host).unwrap();
    }
}
