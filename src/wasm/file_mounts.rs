//! Mounts of single files. WASI preopens only directories, yet kubelet mounts
//! files: the termination-message path (`/dev/termination-log`), which it
//! reads on the host once the container has exited, and `/etc/hosts`.
//!
//! Each guest directory that holds file mounts becomes a private directory of
//! the container, holding copies of the host files under their guest names,
//! preopened at that guest directory. When the guest ends, the writable files
//! it changed are copied back to their host files, before the exit is
//! reported, so that whoever waits for the exit finds the host file written.
//!
//! The copies are bounded ([`WritableCopies`]), as a container's writes to
//! its termination log are bounded by its filesystem on Linux:
//! - the copies in a writable private directory may hold together at most
//!   `file_mount_max_bytes` (config, default [`DEFAULT_MAX_BYTES`]): a write
//!   that would grow them past it fails in the guest with ENOSPC (WASI 0.2
//!   `insufficient-space`), what a full filesystem answers, and writes
//!   nothing; one inside their present size always goes through. How each
//!   way of growing a file is held to it: `host::file_mount_guard`;
//! - a writable private directory holds only the mounted names: creating any
//!   other entry in it, and removing or renaming its files, fails with
//!   EACCES (WASI 0.2 `access`), what Linux answers in a directory one may
//!   not write; opening a mounted file with `O_CREAT|O_TRUNC` works;
//! - at most `file_mount_max_bytes` of a copy is copied back to its host file
//!   (its first bytes; a copy can only be longer when the host file already
//!   was). kubelet reads the last 4 KiB of it as the termination message.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::spec::Mount;
use crate::error::{Error, Result};

/// Where the private directories go inside the container's scratch directory.
const DIR_NAME: &str = "file-mounts";

/// What a container's writable file-mount copies may hold together when the
/// config says nothing (`file_mount_max_bytes`), in bytes: 1 MiB. kubelet
/// reads at most the last 4 KiB of a termination message
/// (`MaxContainerTerminationMessageLength`, read with `tail.ReadAtMost`);
/// other writable file mounts (a hostPath file a guest appends to) may need
/// more, and 1 MiB of state directory per container is little next to the
/// memory a guest is given.
pub(super) const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// What the guest is given in place of its mounts.
pub(super) struct Prepared {
    /// The directories to preopen: the directory mounts as they were, then a
    /// private directory for each guest directory holding file mounts.
    pub preopens: Vec<Mount>,
    pub files: FileMounts,
}

/// The copies of writable file mounts, to be copied back when the guest ends.
#[derive(Debug, Default)]
pub(super) struct FileMounts {
    writable: Vec<Writable>,
    /// The copies in writable private directories, and their cap; none when
    /// every private directory is read-only.
    copies: Option<Arc<WritableCopies>>,
}

/// The copies a container's guest may write (every file of its writable
/// private directories) and the cap on what they hold together; shared by
/// every instance of the container (see `host::file_mount_guard`) and by the copy back.
#[derive(Debug)]
pub(super) struct WritableCopies {
    /// Each writable private directory: its host path, and its files by name.
    dirs: Vec<PrivateDir>,
    /// The copies' host paths.
    copies: Vec<PathBuf>,
    /// The cap on what the copies hold together, in bytes; 0: none. From the
    /// container's `Usage` (config `file_mount_max_bytes`), set by each
    /// instance's store before it runs ([`WritableCopies::set_max_bytes`]).
    max_bytes: AtomicU64,
    /// Held from the check of a write that may grow a copy to its end, so
    /// that the instances of a served component, writing at once, cannot
    /// pass the cap together.
    lock: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct PrivateDir {
    host_path: PathBuf,
    /// The mounted names, each with its index in `WritableCopies::copies`.
    files: Vec<(OsString, usize)>,
}

/// A writable private directory of file mounts, as a preopen is it.
#[derive(Debug, Clone)]
pub(super) struct FileMountDir {
    pub copies: Arc<WritableCopies>,
    /// Its index among the container's writable private directories.
    pub dir: usize,
}

impl PartialEq for FileMountDir {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.copies, &other.copies) && self.dir == other.dir
    }
}

impl Eq for FileMountDir {}

/// What a path relative to a private directory names (its files are the
/// mounted ones: nothing else can be made there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry {
    /// The directory itself (`.`, or the empty path).
    Dir,
    /// The copy with this index in [`WritableCopies`].
    Copy(usize),
    /// Anything else: a name that is not mounted, or a path with `..` or more
    /// than one name.
    Other,
}

/// How a write grows a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Growth {
    /// To this size in bytes, when it is larger than the copy (a write
    /// ending there, a new size).
    To(u64),
    /// By this many bytes at its end (an append).
    By(u64),
}

impl WritableCopies {
    /// Sets the cap, in bytes (0: none).
    pub(super) fn set_max_bytes(&self, max_bytes: u64) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// The cap, in bytes (0: none).
    pub(super) fn max_bytes(&self) -> u64 {
        self.max_bytes.load(Ordering::Relaxed)
    }

    /// The writable private directory at `host_path`, if it is one.
    pub(super) fn dir_at(&self, host_path: &Path) -> Option<usize> {
        self.dirs.iter().position(|dir| dir.host_path == host_path)
    }

    /// What `path`, relative to the private directory `dir`, names. Paths
    /// resolve inside the directory only (cap-std refuses `..` out of a
    /// preopen) and it holds no directories or links, so a path of more than
    /// one name, or with `..`, names nothing that can be opened.
    pub(super) fn entry(&self, dir: usize, path: &str) -> Entry {
        let mut names = Vec::new();
        for component in Path::new(path).components() {
            match component {
                Component::CurDir => {}
                Component::Normal(name) => names.push(name),
                Component::RootDir | Component::ParentDir | Component::Prefix(_) => return Entry::Other,
            }
        }
        match names.as_slice() {
            [] => Entry::Dir,
            [name] => self.dirs[dir]
                .files
                .iter()
                .find(|(mounted, _)| mounted == name)
                .map_or(Entry::Other, |(_, copy)| Entry::Copy(*copy)),
            _ => Entry::Other,
        }
    }

    /// Waits for the writes to copies under way in other instances, then
    /// checks that `growth` of `copy` keeps the copies within the cap (on a
    /// blocking thread: it stats each copy). Returns the lock to hold until
    /// the write is done.
    ///
    /// Errors: ENOSPC when the write would pass the cap; the error of a
    /// copy that cannot be stat'ed.
    pub(super) async fn reserve(
        self: &Arc<Self>,
        copy: usize,
        growth: Growth,
    ) -> io::Result<tokio::sync::OwnedMutexGuard<()>> {
        let lock = self.lock.clone().lock_owned().await;
        let copies = self.clone();
        tokio::task::spawn_blocking(move || copies.admit(copy, growth)).await.map_err(io::Error::other)??;
        Ok(lock)
    }

    /// As [`WritableCopies::reserve`], on a blocking thread (not on an async worker).
    pub(super) fn reserve_blocking(&self, copy: usize, growth: Growth) -> io::Result<tokio::sync::MutexGuard<'_, ()>> {
        let lock = self.lock.blocking_lock();
        self.admit(copy, growth)?;
        Ok(lock)
    }

    /// Ok when `growth` of `copy` leaves the copies within the cap (or does
    /// not grow it); ENOSPC when not. Blocking: stats every copy.
    fn admit(&self, copy: usize, growth: Growth) -> io::Result<()> {
        let max = self.max_bytes();
        if max == 0 {
            return Ok(());
        }
        let (mut own, mut others) = (0, 0u64);
        for (index, path) in self.copies.iter().enumerate() {
            // A copy is never removed (see `host::file_mount_guard`); a missing one holds nothing.
            let size = match std::fs::symlink_metadata(path) {
                Ok(meta) => meta.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                Err(e) => return Err(e),
            };
            if index == copy {
                own = size;
            } else {
                others = others.saturating_add(size);
            }
        }
        let end = match growth {
            Growth::To(end) => end,
            Growth::By(bytes) => own.saturating_add(bytes),
        };
        if end <= own || others.saturating_add(end) <= max {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
    }
}

#[derive(Debug)]
struct Writable {
    host_path: PathBuf,
    guest_path: String,
    copy: PathBuf,
    /// SHA-256 of what was copied in, to tell whether the guest changed it
    /// without keeping the content in memory.
    copied_in: [u8; 32],
}

/// Sorts `mounts` into directories and files, and gives each guest directory
/// holding file mounts a private directory under `scratch_dir`, created only
/// when there are file mounts.
/// Reads the host's filesystem: call it off the async workers.
pub(super) fn prepare(mounts: Vec<Mount>, scratch_dir: Option<PathBuf>) -> Result<Prepared> {
    prepare_blocking(mounts, scratch_dir.as_deref())
}

struct FileMount {
    mount: Mount,
    /// The file's name inside its guest directory.
    name: std::ffi::OsString,
}

fn prepare_blocking(mounts: Vec<Mount>, scratch_dir: Option<&Path>) -> Result<Prepared> {
    let mut preopens = Vec::new();
    let mut files = Vec::new();
    for mount in mounts {
        let meta = std::fs::metadata(&mount.host_path).map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot mount {} at {} in the guest: the host path cannot be read: {e}",
                mount.host_path, mount.guest_path
            ))
        })?;
        if meta.is_dir() {
            preopens.push(mount);
        } else if meta.is_file() {
            files.push(mount);
        } else {
            // A socket or a device has no content to copy and nothing WASI could open it as.
            tracing::warn!(host_path = %mount.host_path, guest_path = %mount.guest_path, "skipping a mount that is neither a directory nor a regular file");
        }
    }
    if files.is_empty() {
        return Ok(Prepared { preopens, files: FileMounts::default() });
    }

    let dir_paths: HashSet<PathBuf> = preopens.iter().filter_map(|m| normalize(&m.guest_path)).collect();
    let mut groups = BTreeMap::<PathBuf, Vec<FileMount>>::new();
    let mut seen = HashSet::new();
    for mount in files {
        let split =
            normalize(&mount.guest_path).and_then(|p| Some((p.parent()?.to_owned(), p.file_name()?.to_owned())));
        let Some((parent, name)) = split else {
            return Err(Error::InvalidArgument(format!(
                "cannot mount the file {} at {} in the guest: the container path must name a file, without `..`",
                mount.host_path, mount.guest_path
            )));
        };
        if !seen.insert(parent.join(&name)) {
            return Err(Error::InvalidArgument(format!(
                "cannot mount the file {} at {} in the guest: another mount has the same container path",
                mount.host_path, mount.guest_path
            )));
        }
        if dir_paths.contains(&parent) {
            // The file could only be given by preopening a second directory at
            // the same guest path, and which of the two the guest would see is up to its libc.
            tracing::warn!(host_path = %mount.host_path, guest_path = %mount.guest_path, "skipping a file mount: its directory in the guest is a directory mount");
            continue;
        }
        groups.entry(parent).or_default().push(FileMount { mount, name });
    }
    if groups.is_empty() {
        return Ok(Prepared { preopens, files: FileMounts::default() });
    }

    let scratch_dir = scratch_dir.ok_or_else(|| {
        Error::internal("giving the guest its file mounts", anyhow::anyhow!("the container has no scratch directory"))
    })?;
    let root = scratch_dir.join(DIR_NAME);
    let copied = copy_in(&root, groups);
    if copied.is_err() {
        // Nothing will copy these back or run on them: the container never starts.
        let _ = std::fs::remove_dir_all(&root);
    }
    let (private_dirs, files) = copied?;
    preopens.extend(private_dirs);
    Ok(Prepared { preopens, files })
}

/// Copies each group's host files into a directory of its own under `root`.
fn copy_in(root: &Path, groups: BTreeMap<PathBuf, Vec<FileMount>>) -> Result<(Vec<Mount>, FileMounts)> {
    let mut preopens = Vec::new();
    let mut files = FileMounts::default();
    let (mut dirs, mut copies) = (Vec::new(), Vec::new());
    for (index, (guest_dir, group)) in groups.into_iter().enumerate() {
        // Numbered, not named after the guest directory: guest paths nest
        // (`/etc` and `/etc/app`) and each must be a directory of its own.
        let dir = root.join(index.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::internal(format!("creating {} for the file mounts at {}", dir.display(), guest_dir.display()), e)
        })?;
        let readonly = group.iter().all(|file| file.mount.readonly);
        let mut dir_files = Vec::new();
        for FileMount { mount, name } in group {
            let copy = dir.join(&name);
            let digest = copy_file(Path::new(&mount.host_path), &copy, !mount.readonly).map_err(|e| match e {
                CopyError::Read(e) => Error::InvalidArgument(format!(
                    "cannot mount the file {} at {} in the guest: reading it: {e}",
                    mount.host_path, mount.guest_path
                )),
                CopyError::Write(e) => Error::internal(
                    format!(
                        "copying {} to {} for the file mount at {}",
                        mount.host_path,
                        copy.display(),
                        mount.guest_path
                    ),
                    e,
                ),
            })?;
            if !readonly {
                // Every file of a writable directory can be written, a read-only mount's too.
                dir_files.push((name, copies.len()));
                copies.push(copy.clone());
            }
            if let Some(copied_in) = digest {
                files.writable.push(Writable {
                    host_path: PathBuf::from(mount.host_path),
                    guest_path: mount.guest_path,
                    copy,
                    copied_in,
                });
            }
        }
        if !readonly {
            dirs.push(PrivateDir { host_path: dir.clone(), files: dir_files });
        }
        tracing::debug!(guest_dir = %guest_dir.display(), private_dir = %dir.display(), readonly, "file mounts copied in");
        preopens.push(Mount {
            host_path: dir.display().to_string(),
            guest_path: guest_dir.display().to_string(),
            readonly,
        });
    }
    if !dirs.is_empty() {
        files.copies =
            Some(Arc::new(WritableCopies { dirs, copies, max_bytes: AtomicU64::new(0), lock: Arc::default() }));
    }
    Ok((preopens, files))
}

impl FileMounts {
    /// The copies the guest may write, when it has any: the preopens of
    /// their directories carry them (see `layout::prepare`).
    pub(super) fn writable_copies(&self) -> Option<&Arc<WritableCopies>> {
        self.copies.as_ref()
    }

    /// Writes each writable file the guest changed back to its host file,
    /// at most `file_mount_max_bytes` of it. Failures are logged, not
    /// returned: the guest has ended either way, and its exit must still be reported.
    pub async fn copy_back(self) {
        if self.writable.is_empty() {
            return;
        }
        let max_bytes = self.copies.as_ref().map_or(0, |copies| copies.max_bytes());
        let copied = tokio::task::spawn_blocking(move || {
            for file in &self.writable {
                file.copy_back(max_bytes);
            }
        })
        .await;
        if let Err(e) = copied {
            tracing::warn!(error = %e, "copying file mounts back to the host failed");
        }
    }
}

impl Writable {
    /// Copies the guest's copy back when it changed: at most `max_bytes` of
    /// it (0: all).
    fn copy_back(&self, max_bytes: u64) {
        let (host_path, guest_path, copy) = (self.host_path.display(), &self.guest_path, self.copy.display());
        let mut guest_copy = match open_guest_copy(&self.copy) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(%host_path, %guest_path, %copy, error = %e, "cannot read the guest's copy of a file mount; the host file is left as it was");
                return;
            }
        };
        let mut hasher = Sha256::new();
        let hashed = io::copy(&mut guest_copy, &mut hasher).and_then(|_| guest_copy.seek(SeekFrom::Start(0)));
        if let Err(e) = hashed {
            tracing::warn!(%host_path, %guest_path, %copy, error = %e, "cannot read the guest's copy of a file mount; the host file is left as it was");
            return;
        }
        if <[u8; 32]>::from(hasher.finalize()) == self.copied_in {
            tracing::debug!(%host_path, %guest_path, "file mount unchanged by the guest");
            return;
        }
        let limit = if max_bytes == 0 { u64::MAX } else { max_bytes };
        // In place, not by a rename: the host file keeps its inode, owner and
        // mode, as it would under a bind mount.
        let written = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.host_path)
            .and_then(|mut host| io::copy(&mut (&mut guest_copy).take(limit), &mut host));
        match written {
            Ok(bytes) if bytes == limit && guest_copy.metadata().is_ok_and(|meta| meta.len() > limit) => {
                tracing::warn!(%host_path, %guest_path, bytes, "file mount copied back to the host cut at file_mount_max_bytes")
            }
            Ok(bytes) => tracing::debug!(%host_path, %guest_path, bytes, "file mount copied back to the host"),
            Err(e) => {
                tracing::warn!(%host_path, %guest_path, %copy, error = %e, "cannot copy a file mount back to the host")
            }
        }
    }
}

/// Opens the guest's copy of a file without following a link: the guest could
/// have replaced its copy by a link to any host file, which would then be
/// written into the host file (and shown by kubelet as the termination message).
fn open_guest_copy(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("the guest made it something other than a regular file"));
    }
    Ok(file)
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `from` into a new `to`, telling read failures (the host file's) from
/// write failures (ours); returns the content's SHA-256 if asked to.
fn copy_file(from: &Path, to: &Path, hash: bool) -> Result<Option<[u8; 32]>, CopyError> {
    let mut source = File::open(from).map_err(CopyError::Read)?;
    let mut target = File::create(to).map_err(CopyError::Write)?;
    let mut hasher = hash.then(Sha256::new);
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        if let Some(hasher) = &mut hasher {
            hasher.update(&buf[..n]);
        }
        target.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
    Ok(hasher.map(|hasher| hasher.finalize().into()))
}

/// An absolute guest path without `.`, repeated or trailing slashes; `None`
/// for a relative path or one with `..`, which has no one meaning in WASI.
pub(super) fn normalize(guest_path: &str) -> Option<PathBuf> {
    let mut components = Path::new(guest_path).components();
    if components.next() != Some(Component::RootDir) {
        return None;
    }
    let mut path = PathBuf::from("/");
    for component in components {
        match component {
            Component::Normal(name) => path.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory of this test's own.
    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmrun-file-mounts-{name}-{}", hex::encode(rand::random::<[u8; 8]>())));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mount(host_path: &Path, guest_path: &str, readonly: bool) -> Mount {
        Mount { host_path: host_path.display().to_string(), guest_path: guest_path.into(), readonly }
    }

    fn preopen_at<'a>(prepared: &'a Prepared, guest_path: &str) -> &'a Mount {
        let found = prepared.preopens.iter().filter(|m| m.guest_path == guest_path).collect::<Vec<_>>();
        assert_eq!(found.len(), 1, "preopens at {guest_path}: {:?}", prepared.preopens);
        found[0]
    }

    #[tokio::test]
    async fn groups_file_mounts_by_directory_and_copies_them_in() {
        let host = temp_dir("groups");
        let scratch = host.join("scratch");
        let data = host.join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(host.join("log"), "").unwrap();
        std::fs::write(host.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(host.join("config"), "key=value").unwrap();
        let mounts = vec![
            mount(&data, "/data", true),
            mount(&host.join("log"), "/dev/termination-log", false),
            mount(&host.join("hosts"), "/etc//hosts", true),
            mount(&host.join("config"), "/etc/./config.txt/", true),
        ];

        let prepared = prepare(mounts, Some(scratch.clone())).unwrap();
        assert_eq!(prepared.preopens.len(), 3, "{:?}", prepared.preopens);
        assert_eq!(prepared.preopens[0], mount(&data, "/data", true));
        let dev = preopen_at(&prepared, "/dev");
        assert!(!dev.readonly);
        assert!(Path::new(&dev.host_path).starts_with(scratch.join(DIR_NAME)), "{dev:?}");
        assert_eq!(std::fs::read_to_string(Path::new(&dev.host_path).join("termination-log")).unwrap(), "");
        let etc = preopen_at(&prepared, "/etc");
        assert!(etc.readonly, "every file mount in /etc is read-only");
        assert_eq!(std::fs::read_to_string(Path::new(&etc.host_path).join("hosts")).unwrap(), "127.0.0.1 localhost\n");
        assert_eq!(std::fs::read_to_string(Path::new(&etc.host_path).join("config.txt")).unwrap(), "key=value");
        assert_eq!(prepared.files.writable.len(), 1, "only the writable mount is copied back");
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[tokio::test]
    async fn a_directory_with_one_writable_file_is_writable() {
        let host = temp_dir("mixed");
        std::fs::write(host.join("a"), "a").unwrap();
        std::fs::write(host.join("b"), "b").unwrap();
        let mounts = vec![mount(&host.join("a"), "/etc/a", true), mount(&host.join("b"), "/etc/b", false)];
        let prepared = prepare(mounts, Some(host.join("scratch"))).unwrap();
        assert!(!preopen_at(&prepared, "/etc").readonly);
        assert_eq!(prepared.files.writable.len(), 1);
        assert_eq!(prepared.files.writable[0].guest_path, "/etc/b");
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[tokio::test]
    async fn only_changed_writable_files_are_copied_back() {
        let host = temp_dir("copy-back");
        for name in ["changed", "unchanged", "readonly"] {
            std::fs::write(host.join(name), format!("{name} before")).unwrap();
        }
        let mounts = vec![
            mount(&host.join("changed"), "/out/changed", false),
            mount(&host.join("unchanged"), "/out/unchanged", false),
            mount(&host.join("readonly"), "/out/readonly", true),
        ];
        let prepared = prepare(mounts, Some(host.join("scratch"))).unwrap();
        let private = PathBuf::from(&preopen_at(&prepared, "/out").host_path);
        // What the guest does:
        std::fs::write(private.join("changed"), "written by the guest").unwrap();
        std::fs::write(private.join("readonly"), "must not reach the host").unwrap();
        // Someone else changes a host file the guest left alone: that change stays.
        std::fs::write(host.join("unchanged"), "changed on the host meanwhile").unwrap();

        prepared.files.copy_back().await;
        assert_eq!(std::fs::read_to_string(host.join("changed")).unwrap(), "written by the guest");
        assert_eq!(std::fs::read_to_string(host.join("unchanged")).unwrap(), "changed on the host meanwhile");
        assert_eq!(std::fs::read_to_string(host.join("readonly")).unwrap(), "readonly before");
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[tokio::test]
    async fn a_copy_the_guest_removed_leaves_the_host_file_alone() {
        let host = temp_dir("removed");
        std::fs::write(host.join("log"), "before").unwrap();
        let prepared = prepare(vec![mount(&host.join("log"), "/dev/log", false)], Some(host.join("scratch"))).unwrap();
        std::fs::remove_file(Path::new(&preopen_at(&prepared, "/dev").host_path).join("log")).unwrap();
        prepared.files.copy_back().await;
        assert_eq!(std::fs::read_to_string(host.join("log")).unwrap(), "before");
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[tokio::test]
    async fn a_copy_the_guest_replaced_by_a_link_is_not_followed() {
        let host = temp_dir("link");
        std::fs::write(host.join("log"), "before").unwrap();
        std::fs::write(host.join("secret"), "a host file the guest must not read").unwrap();
        let prepared = prepare(vec![mount(&host.join("log"), "/dev/log", false)], Some(host.join("scratch"))).unwrap();
        let copy = Path::new(&preopen_at(&prepared, "/dev").host_path).join("log");
        std::fs::remove_file(&copy).unwrap();
        std::os::unix::fs::symlink(host.join("secret"), &copy).unwrap();
        prepared.files.copy_back().await;
        assert_eq!(std::fs::read_to_string(host.join("log")).unwrap(), "before");
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[tokio::test]
    async fn a_file_in_a_mounted_directory_is_skipped() {
        let host = temp_dir("shadowed");
        std::fs::write(host.join("hosts"), "hosts").unwrap();
        let scratch = host.join("scratch");
        let mounts = vec![mount(&host, "/etc/", false), mount(&host.join("hosts"), "/etc/hosts", true)];
        let prepared = prepare(mounts, Some(scratch.clone())).unwrap();
        assert_eq!(prepared.preopens, vec![mount(&host, "/etc/", false)]);
        assert!(prepared.files.writable.is_empty());
        assert!(!scratch.exists(), "the scratch directory is created only for file mounts");
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[tokio::test]
    async fn directory_mounts_alone_create_nothing() {
        let host = temp_dir("dirs-only");
        let scratch = host.join("scratch");
        let prepared = prepare(vec![mount(&host, "/data", false)], Some(scratch.clone())).unwrap();
        assert_eq!(prepared.preopens, vec![mount(&host, "/data", false)]);
        assert!(!scratch.exists());
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[tokio::test]
    async fn bad_file_mounts_are_invalid_arguments() {
        let host = temp_dir("bad");
        std::fs::write(host.join("file"), "x").unwrap();
        let scratch = host.join("scratch");
        let missing = host.join("missing");
        let cases = [
            (vec![mount(&missing, "/dev/termination-log", false)], "the host path cannot be read"),
            (vec![mount(&host.join("file"), "/", false)], "must name a file"),
            (vec![mount(&host.join("file"), "/etc/../hosts", false)], "must name a file"),
            (
                vec![mount(&host.join("file"), "/a/b", false), mount(&host.join("file"), "/a//b", true)],
                "same container path",
            ),
        ];
        for (mounts, expected) in cases {
            let paths = (mounts[0].host_path.clone(), mounts.last().unwrap().guest_path.clone());
            match prepare(mounts, Some(scratch.clone())) {
                Err(Error::InvalidArgument(message)) => {
                    assert!(message.contains(expected), "{message}");
                    assert!(message.contains(&paths.0) && message.contains(&paths.1), "{message}");
                }
                Err(other) => panic!("{paths:?}: expected InvalidArgument, got {other:?}"),
                Ok(prepared) => panic!("{paths:?}: expected InvalidArgument, got preopens {:?}", prepared.preopens),
            }
        }
        assert!(!scratch.join(DIR_NAME).exists(), "a failed prepare leaves no copies behind");
        std::fs::remove_dir_all(&host).unwrap();
    }

    /// Copies in writable directories count against the cap, together; a
    /// read-only directory's do not (they cannot be written).
    #[test]
    fn writes_that_grow_the_copies_past_the_cap_are_refused() {
        let host = temp_dir("cap");
        for (name, content) in [("log", "0123456789"), ("a", ""), ("b", "bbbbb"), ("hosts", "127.0.0.1 localhost")] {
            std::fs::write(host.join(name), content).unwrap();
        }
        let mounts = vec![
            mount(&host.join("log"), "/dev/termination-log", false),
            mount(&host.join("a"), "/out/a", false),
            mount(&host.join("b"), "/out/b", true),
            mount(&host.join("hosts"), "/etc/hosts", true),
        ];
        let prepared = prepare(mounts, Some(host.join("scratch"))).unwrap();
        let copies = prepared.files.writable_copies().expect("writable copies").clone();
        copies.set_max_bytes(100);
        let (dev, out) = (preopen_at(&prepared, "/dev"), preopen_at(&prepared, "/out"));
        let dev_dir = copies.dir_at(Path::new(&dev.host_path)).expect("/dev is a writable private dir");
        let out_dir = copies.dir_at(Path::new(&format!("{}/", out.host_path))).expect("/out, with a slash");
        assert_eq!(copies.dir_at(Path::new(&preopen_at(&prepared, "/etc").host_path)), None, "read-only");

        let Entry::Copy(log) = copies.entry(dev_dir, "./termination-log") else { panic!("not the log") };
        let Entry::Copy(a) = copies.entry(out_dir, "a") else { panic!("not a") };
        assert!(matches!(copies.entry(out_dir, "b/"), Entry::Copy(b) if b != a));
        assert_eq!(copies.entry(dev_dir, "."), Entry::Dir);
        assert_eq!(copies.entry(dev_dir, ""), Entry::Dir);
        for other in ["a", "flood-1", "../0/termination-log", "termination-log/x", "/termination-log"] {
            assert_eq!(copies.entry(dev_dir, other), Entry::Other, "{other}");
        }

        // 10 + 0 + 5 bytes now: 85 more fit, anywhere.
        let enospc = |result: io::Result<tokio::sync::MutexGuard<'_, ()>>| {
            result.map(drop).unwrap_err().raw_os_error() == Some(libc::ENOSPC)
        };
        assert!(copies.reserve_blocking(log, Growth::To(95)).is_ok());
        assert!(enospc(copies.reserve_blocking(log, Growth::To(96))));
        assert!(copies.reserve_blocking(a, Growth::By(85)).is_ok());
        assert!(enospc(copies.reserve_blocking(a, Growth::By(86))));
        std::fs::write(Path::new(&dev.host_path).join("termination-log"), [b'x'; 95]).unwrap();
        // Full: a write inside a copy's size, or one that shrinks it, still goes through.
        assert!(enospc(copies.reserve_blocking(a, Growth::By(1))));
        assert!(copies.reserve_blocking(log, Growth::To(95)).is_ok());
        assert!(copies.reserve_blocking(log, Growth::To(3)).is_ok());
        copies.set_max_bytes(0);
        assert!(copies.reserve_blocking(a, Growth::By(1 << 40)).is_ok(), "0: no cap");
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[tokio::test]
    async fn at_most_the_cap_is_copied_back() {
        let host = temp_dir("copy-back-cap");
        std::fs::write(host.join("log"), "").unwrap();
        let prepared = prepare(vec![mount(&host.join("log"), "/dev/log", false)], Some(host.join("scratch"))).unwrap();
        prepared.files.writable_copies().unwrap().set_max_bytes(10);
        std::fs::write(Path::new(&preopen_at(&prepared, "/dev").host_path).join("log"), "0123456789abcdef").unwrap();
        prepared.files.copy_back().await;
        assert_eq!(std::fs::read_to_string(host.join("log")).unwrap(), "0123456789");
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[tokio::test]
    async fn only_writable_directories_have_copies_to_bound() {
        let host = temp_dir("read-only-dirs");
        std::fs::write(host.join("hosts"), "hosts").unwrap();
        let prepared =
            prepare(vec![mount(&host.join("hosts"), "/etc/hosts", true)], Some(host.join("scratch"))).unwrap();
        assert!(prepared.files.writable_copies().is_none());
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[test]
    fn normalizes_guest_paths() {
        assert_eq!(normalize("/dev/termination-log"), Some(PathBuf::from("/dev/termination-log")));
        assert_eq!(normalize("/etc//./hosts/"), Some(PathBuf::from("/etc/hosts")));
        assert_eq!(normalize("/"), Some(PathBuf::from("/")));
        assert_eq!(normalize("etc/hosts"), None);
        assert_eq!(normalize("/etc/../hosts"), None);
    }
}
