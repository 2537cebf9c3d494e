//! Applying the tar layers of a "compat" image (a wasm program plus files) to a root filesystem.
//!
//! Layers come from images anyone can publish, so each entry is checked before it touches the
//! disk: no path, link or whiteout may reach outside the rootfs, nothing is written through a
//! symlink, and device files are refused. All filesystem work goes through a cap-std `Dir` opened
//! on the rootfs, which cannot resolve a path outside it even if a check here were wrong.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt::Display;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, DirBuilder, DirBuilderExt, OpenOptions, OpenOptionsExt, Permissions, PermissionsExt};
use tar::EntryType;

use crate::error::{Error, Result};

/// Tar-bomb guards: a layer may not unpack to more bytes or more entries than this.
const MAX_LAYER_BYTES: u64 = 8 << 30;
const MAX_LAYER_ENTRIES: usize = 1_000_000;

/// OCI whiteouts: `.wh.name` deletes `name` of lower layers, `.wh..wh..opq` empties its directory.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

impl Compression {
    /// From a layer media type: OCI `application/vnd.oci.image.layer.v1.tar`, `...tar+gzip`,
    /// Docker `application/vnd.docker.image.rootfs.diff.tar.gzip` (gzip) and
    /// `application/vnd.docker.image.rootfs.diff.tar` (plain). Anything else (zstd,
    /// foreign/nondistributable layers, unknown) is refused, naming the media type.
    pub fn from_media_type(media_type: &str) -> Result<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => {
                Ok(Compression::None)
            }
            "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                Ok(Compression::Gzip)
            }
            other => Err(Error::InvalidArgument(format!(
                "unsupported layer media type {other:?}: only plain and gzip tar layers are supported"
            ))),
        }
    }
}

/// One layer blob on disk.
pub struct Layer {
    pub digest: String,
    pub path: PathBuf,
    pub compression: Compression,
}

/// Applies `layers` in order into `rootfs` (which must exist and be empty). Blocking: callers run
/// it in spawn_blocking.
pub fn unpack_layers(layers: &[Layer], rootfs: &Path) -> Result<()> {
    let root = Dir::open_ambient_dir(rootfs, cap_std::ambient_authority())
        .map_err(|e| Error::internal(format!("opening rootfs {}", rootfs.display()), e))?;
    let mut existing =
        root.entries().map_err(|e| Error::internal(format!("listing rootfs {}", rootfs.display()), e))?;
    if existing.next().is_some() {
        // Whiteouts would otherwise delete files that came from no layer.
        return Err(Error::Internal(anyhow::anyhow!("rootfs {} is not empty", rootfs.display())));
    }
    for layer in layers {
        Applier { root: &root, layer, created: HashSet::new(), bytes: 0 }.apply()?;
    }
    // One syncfs makes the whole tree durable, far cheaper than an fsync per
    // file; it needs a descriptor open for reading, which cap-std's `Dir` (an
    // O_PATH descriptor) is not. The tree is renamed into place only after
    // this, so a failure here fails the pull rather than publishing an image
    // that a power loss could leave half written.
    crate::sys::syncfs(rootfs)
        .map_err(|e| Error::internal(format!("syncing the unpacked rootfs {} to disk", rootfs.display()), e))
}

type Entry<'a> = tar::Entry<'a, Box<dyn Read>>;

/// Applies one layer.
struct Applier<'a> {
    root: &'a Dir,
    layer: &'a Layer,
    /// Paths this layer has put in place: its own whiteouts must not remove them, since a
    /// whiteout hides only what lower layers put there.
    created: HashSet<PathBuf>,
    /// Bytes of file content written so far.
    bytes: u64,
}

impl Applier<'_> {
    fn apply(&mut self) -> Result<()> {
        let file = std::fs::File::open(&self.layer.path).map_err(|e| {
            let what = format!("opening layer {} at {}", self.layer.digest, self.layer.path.display());
            Error::internal(what, e)
        })?;
        let blob = HostRead(BufReader::new(file));
        let reader: Box<dyn Read> = match self.layer.compression {
            Compression::None => Box::new(blob),
            // Multi-member: parallel compressors (pigz) write one gzip member per chunk.
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| self.read_error(e))?;
        for (count, entry) in entries.enumerate() {
            if count >= MAX_LAYER_ENTRIES {
                return Err(Error::ResourceExhausted(format!(
                    "layer {} has more than {MAX_LAYER_ENTRIES} entries",
                    self.layer.digest
                )));
            }
            let mut entry = entry.map_err(|e| self.read_error(e))?;
            self.apply_entry(&mut entry)?;
        }
        Ok(())
    }

    fn apply_entry(&mut self, entry: &mut Entry) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            // Metadata for other entries, already applied by the tar crate; nothing to create.
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let path = sanitize(&raw).map_err(|why| self.refuse(&name, why))?;
        let Some(file_name) = path.file_name() else {
            return Ok(()); // `.` or `./`: the rootfs itself, which we do not change.
        };
        if let Some(hidden) = file_name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&name, &path, hidden);
        }
        // No setuid, setgid or sticky bits from an image.
        let mode = entry.header().mode().map_err(|e| self.refuse(&name, format!("bad mode: {e}")))? & 0o777;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(entry, &name, &path, mode)?
            }
            EntryType::Directory => self.make_dir(&name, &path, mode)?,
            EntryType::Symlink => self.make_symlink(entry, &name, &path)?,
            EntryType::Link => self.make_hard_link(entry, &name, &path)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(self.refuse(&name, "device files and FIFOs are not allowed"));
            }
            other => return Err(self.refuse(&name, format!("unsupported entry type {other:?}"))),
        }
        self.created.insert(path);
        Ok(())
    }

    fn write_file(&mut self, entry: &mut Entry, name: &str, path: &Path, mode: u32) -> Result<()> {
        self.prepare(name, path)?;
        // create_new: the path was just cleared, and O_EXCL never follows a symlink.
        let mut file = self
            .root
            .open_with(path, OpenOptions::new().write(true).create_new(true).mode(0o600))
            .map_err(|e| self.host_error(name, "creating file", e))?;
        let mut buf = vec![0; 64 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            self.bytes += n as u64;
            if self.bytes > MAX_LAYER_BYTES {
                return Err(Error::ResourceExhausted(format!(
                    "layer {} unpacks to more than {} GiB",
                    self.layer.digest,
                    MAX_LAYER_BYTES >> 30
                )));
            }
            file.write_all(&buf[..n]).map_err(|e| self.host_error(name, "writing file", e))?;
        }
        // Set after creation: the mode given to open is narrowed by the umask.
        file.set_permissions(Permissions::from_mode(mode)).map_err(|e| self.host_error(name, "setting file mode", e))
    }

    fn make_dir(&mut self, name: &str, path: &Path, mode: u32) -> Result<()> {
        self.ensure_parents(name, path, true)?;
        let is_dir = matches!(self.root.symlink_metadata(path), Ok(m) if m.is_dir());
        if !is_dir {
            self.remove(name, path)?;
            self.root.create_dir(path).map_err(|e| self.host_error(name, "creating directory", e))?;
        }
        // The owner keeps write access so that later entries and layers can fill it.
        self.root
            .set_permissions(path, Permissions::from_mode(mode | 0o700))
            .map_err(|e| self.host_error(name, "setting directory mode", e))
    }

    fn make_symlink(&mut self, entry: &Entry, name: &str, path: &Path) -> Result<()> {
        let target = self.link_target(entry, name)?;
        // An absolute target is read relative to the rootfs by whoever follows it; a relative
        // one must not climb above the rootfs from the link's directory.
        if target.is_relative() && !stays_inside(path, &target) {
            let why = format!("link target {:?} escapes the root filesystem", target);
            return Err(self.refuse(name, why));
        }
        self.prepare(name, path)?;
        // symlink_contents stores the target text as is (cap-std's `symlink` rejects absolute).
        self.root.symlink_contents(&target, path).map_err(|e| self.host_error(name, "creating symlink", e))
    }

    fn make_hard_link(&mut self, entry: &Entry, name: &str, path: &Path) -> Result<()> {
        let text = self.link_target(entry, name)?;
        let target = sanitize(text.as_os_str().as_bytes())
            .map_err(|why| self.refuse(name, format!("hard link target {text:?} {why}")))?;
        // The target must be a regular file of the rootfs, reached through real directories.
        let is_file = self.ensure_parents(name, &target, false)?
            && matches!(self.root.symlink_metadata(&target), Ok(m) if m.is_file());
        if !is_file {
            let why = format!("hard link target {text:?} is not a regular file of the image");
            return Err(self.refuse(name, why));
        }
        if target == path {
            return Ok(()); // clearing the path would delete the target
        }
        self.prepare(name, path)?;
        self.root.hard_link(&target, self.root, path).map_err(|e| self.host_error(name, "creating hard link", e))
    }

    /// `hidden` is the whiteout's file name without its `.wh.` prefix.
    fn whiteout(&mut self, name: &str, path: &Path, hidden: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new(""));
        if path.file_name().map(OsStr::as_bytes) == Some(OPAQUE_WHITEOUT) {
            // The directory becomes (or stays) a real directory, emptied of lower layers' files.
            self.ensure_parents(name, path, true)?;
            let children = self
                .root
                .read_dir(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
                .map_err(|e| self.host_error(name, "listing directory", e))?;
            for child in children {
                let child = child.map_err(|e| self.host_error(name, "listing directory", e))?;
                let child = dir.join(child.file_name());
                if !self.created.contains(&child) {
                    self.remove(name, &child)?;
                }
            }
            return Ok(());
        }
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(self.refuse(name, "whiteout names no file"));
        }
        let victim = dir.join(OsStr::from_bytes(hidden));
        // Nothing to delete when a parent is missing; a parent that is a link is refused.
        if !self.created.contains(&victim) && self.ensure_parents(name, &victim, false)? {
            self.remove(name, &victim)?;
        }
        Ok(())
    }

    /// Makes `path`'s parents real directories and clears `path` itself, so that a new entry
    /// can be created there: a later layer replaces whatever an earlier one put at that path.
    fn prepare(&mut self, name: &str, path: &Path) -> Result<()> {
        self.ensure_parents(name, path, true)?;
        self.remove(name, path)
    }

    /// Checks that every parent of `path` is a real directory, never a symlink, so that nothing
    /// is written through a link. Missing parents are created when `create`; otherwise returns
    /// whether they all exist.
    fn ensure_parents(&mut self, name: &str, path: &Path, create: bool) -> Result<bool> {
        let mut prefix = PathBuf::new();
        for part in path.parent().into_iter().flat_map(Path::components) {
            prefix.push(part);
            match self.root.symlink_metadata(&prefix) {
                Ok(m) if m.is_dir() => {}
                Ok(m) if m.is_symlink() => {
                    let why = format!("refused to go through a link at {}", prefix.display());
                    return Err(self.refuse(name, why));
                }
                Ok(_) => {
                    let why = format!("parent {} is not a directory", prefix.display());
                    return Err(self.refuse(name, why));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.root
                        .create_dir_with(&prefix, DirBuilder::new().mode(0o755))
                        .map_err(|e| self.host_error(name, "creating parent directory", e))?;
                    self.created.insert(prefix.clone());
                }
                Err(e) => return Err(self.host_error(name, "inspecting parent directory", e)),
            }
        }
        Ok(true)
    }

    /// Removes whatever is at `path` (a file, a link, or a whole tree), if anything.
    fn remove(&self, name: &str, path: &Path) -> Result<()> {
        let removed = match self.root.symlink_metadata(path) {
            Ok(m) if m.is_dir() => self.root.remove_dir_all(path),
            Ok(_) => self.root.remove_file(path),
            Err(e) => Err(e),
        };
        match removed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(self.host_error(name, &format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// The link target of a symlink or hard link entry, as written in the archive.
    fn link_target(&self, entry: &Entry, name: &str) -> Result<PathBuf> {
        match entry.link_name_bytes() {
            Some(bytes) if bytes.contains(&0) => Err(self.refuse(name, "link target contains a NUL byte")),
            Some(bytes) if !bytes.is_empty() => Ok(PathBuf::from(OsStr::from_bytes(&bytes))),
            _ => Err(self.refuse(name, "link has no target")),
        }
    }

    fn refuse(&self, name: &str, why: impl Display) -> Error {
        Error::InvalidArgument(format!("layer {}: entry {name:?}: {why}", self.layer.digest))
    }

    fn host_error(&self, name: &str, what: &str, e: io::Error) -> Error {
        Error::internal(format!("layer {}: entry {name:?}: {what}", self.layer.digest), e)
    }

    /// A failure while decoding the layer: the host's if reading the blob file failed, else the
    /// layer's (bad gzip, bad tar).
    fn read_error(&self, e: io::Error) -> Error {
        if e.get_ref().is_some_and(|inner| inner.is::<HostReadError>()) {
            let what = format!("reading layer {} at {}", self.layer.digest, self.layer.path.display());
            Error::internal(what, e)
        } else {
            let digest = &self.layer.digest;
            Error::InvalidArgument(format!("layer {digest} is not a valid tar archive: {e}"))
        }
    }
}

/// An entry path as a path relative to the rootfs: `./` and `.` components dropped, absolute
/// paths, `..` and NUL bytes refused (the reason is returned). Empty means the rootfs itself.
fn sanitize(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    if raw.contains(&0) {
        return Err("contains a NUL byte");
    }
    let mut clean = PathBuf::new();
    for part in Path::new(OsStr::from_bytes(raw)).components() {
        match part {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                return Err("escapes the root filesystem");
            }
        }
    }
    Ok(clean)
}

/// Whether the relative symlink `target`, in the link at `link` (a clean rootfs path), stays
/// inside the rootfs when resolved lexically from the link's directory.
fn stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count().saturating_sub(1);
    for part in target.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::ParentDir if depth == 0 => return false,
            Component::ParentDir => depth -= 1,
            _ => {}
        }
    }
    true
}

/// Wraps the blob file so that its read errors can be told from decoding errors: the first are
/// the host's fault, the second the layer's.
struct HostRead<R>(R);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HostReadError(io::Error);

impl<R: Read> Read for HostRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| io::Error::new(e.kind(), HostReadError(e)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    /// A scratch directory holding `rootfs/` and the layer blobs, removed on drop.
    struct Scratch {
        base: PathBuf,
        rootfs: PathBuf,
        layers: usize,
    }

    impl Scratch {
        fn new() -> Self {
            let base = std::env::temp_dir().join(format!("wasmrun-unpack-{:016x}", rand::random::<u64>()));
            let rootfs = base.join("rootfs");
            std::fs::create_dir_all(&rootfs).unwrap();
            Scratch { base, rootfs, layers: 0 }
        }

        /// Writes a layer blob of `entries`, gzipped when `gzip`.
        fn layer(&mut self, entries: &[TestEntry], gzip: bool) -> Layer {
            self.layers += 1;
            let path = self.base.join(format!("layer-{}", self.layers));
            let bytes = if gzip {
                let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                tar_of(encoder, entries).finish().unwrap()
            } else {
                tar_of(Vec::new(), entries)
            };
            std::fs::write(&path, bytes).unwrap();
            Layer {
                digest: format!("sha256:test{}", self.layers),
                path,
                compression: if gzip { Compression::Gzip } else { Compression::None },
            }
        }

        fn unpack(&mut self, layers: &[&[TestEntry]]) -> Result<()> {
            let layers: Vec<Layer> = layers.iter().map(|entries| self.layer(entries, false)).collect();
            unpack_layers(&layers, &self.rootfs)
        }

        /// Unpacks one layer that must be refused as invalid; returns the message.
        fn refused(&mut self, entries: &[TestEntry]) -> String {
            match self.unpack(&[entries]) {
                Err(Error::InvalidArgument(message)) => {
                    self.assert_nothing_outside();
                    message
                }
                other => panic!("expected InvalidArgument, got {other:?}"),
            }
        }

        /// Nothing but the rootfs and the layer blobs may appear next to the rootfs.
        fn assert_nothing_outside(&self) {
            for entry in std::fs::read_dir(&self.base).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                assert!(name == "rootfs" || name.starts_with("layer-"), "{name} was created outside");
            }
        }

        fn path(&self, path: &str) -> PathBuf {
            self.rootfs.join(path)
        }

        fn read(&self, path: &str) -> String {
            std::fs::read_to_string(self.path(path)).unwrap()
        }

        fn mode(&self, path: &str) -> u32 {
            std::fs::symlink_metadata(self.path(path)).unwrap().permissions().mode() & 0o7777
        }

        fn exists(&self, path: &str) -> bool {
            std::fs::symlink_metadata(self.path(path)).is_ok()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    struct TestEntry {
        kind: EntryType,
        name: &'static str,
        link: &'static str,
        mode: u32,
        data: &'static [u8],
    }

    fn entry(kind: EntryType, name: &'static str, link: &'static str) -> TestEntry {
        TestEntry { kind, name, link, mode: 0o644, data: b"" }
    }
    fn file(name: &'static str, data: &'static [u8], mode: u32) -> TestEntry {
        TestEntry { mode, data, ..entry(EntryType::Regular, name, "") }
    }
    fn dir(name: &'static str, mode: u32) -> TestEntry {
        TestEntry { mode, ..entry(EntryType::Directory, name, "") }
    }
    fn symlink(name: &'static str, target: &'static str) -> TestEntry {
        entry(EntryType::Symlink, name, target)
    }
    fn hard_link(name: &'static str, target: &'static str) -> TestEntry {
        entry(EntryType::Link, name, target)
    }

    /// Writes `entries` as a tar archive into `out`. Names are set as raw header bytes, so that
    /// malicious names the tar crate's own setters refuse (`..`, absolute) can be written.
    fn tar_of<W: Write>(out: W, entries: &[TestEntry]) -> W {
        let mut builder = tar::Builder::new(out);
        for e in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(e.kind);
            header.set_mode(e.mode);
            header.set_size(e.data.len() as u64);
            let gnu = header.as_gnu_mut().unwrap();
            gnu.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            gnu.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
            header.set_cksum();
            builder.append(&header, e.data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn unpacks_files_dirs_and_links() {
        let mut s = Scratch::new();
        let layer = s.layer(
            &[
                dir("./", 0o755),
                dir("./bin/", 0o750),
                file("./bin/app.wasm", b"\0asm", 0o4755),
                file("etc/config", b"key = 1\n", 0o640),
                dir("etc/", 0o500),
                file("data/nested/file", b"deep", 0o600),
                symlink("bin/latest", "app.wasm"),
                symlink("usr-bin", "/usr/bin"),
                symlink("data/nested/up", "../../etc/config"),
                hard_link("bin/copy.wasm", "./bin/app.wasm"),
            ],
            true,
        );
        unpack_layers(&[layer], &s.rootfs).unwrap();

        assert_eq!(s.read("bin/app.wasm"), "\0asm");
        assert_eq!(s.mode("bin/app.wasm"), 0o755, "setuid is dropped");
        assert_eq!(s.mode("bin"), 0o750);
        assert_eq!(s.read("etc/config"), "key = 1\n");
        assert_eq!(s.mode("etc/config"), 0o640);
        assert_eq!(s.mode("etc"), 0o700, "the owner keeps write access");
        assert_eq!(s.read("data/nested/file"), "deep");
        assert!(s.path("data/nested").is_dir());
        assert_eq!(std::fs::read_link(s.path("bin/latest")).unwrap(), Path::new("app.wasm"));
        assert_eq!(s.read("bin/latest"), "\0asm");
        assert_eq!(std::fs::read_link(s.path("usr-bin")).unwrap(), Path::new("/usr/bin"));
        assert_eq!(s.read("data/nested/up"), "key = 1\n");
        let ino = |p: &str| std::fs::metadata(s.path(p)).unwrap().ino();
        assert_eq!(ino("bin/copy.wasm"), ino("bin/app.wasm"));
    }

    #[test]
    fn later_layers_override_and_white_out() {
        let mut s = Scratch::new();
        let lower: &[TestEntry] = &[
            file("a.txt", b"old", 0o644),
            file("gone.txt", b"x", 0o644),
            symlink("link-to-a", "a.txt"),
            file("keep/x", b"x", 0o644),
            file("opaque/old", b"x", 0o644),
            file("opaque/sub/old", b"x", 0o644),
            file("was-dir/inner", b"x", 0o644),
            dir("gone-dir/", 0o755),
            file("gone-dir/inner", b"x", 0o644),
        ];
        let upper: &[TestEntry] = &[
            file("a.txt", b"new", 0o600),
            file("link-to-a", b"replaced", 0o644),
            file(".wh.gone.txt", b"", 0o644),
            file(".wh.gone-dir", b"", 0o644),
            dir("opaque/", 0o755),
            file("opaque/.wh..wh..opq", b"", 0o644),
            file("opaque/new", b"n", 0o644),
            file("was-dir", b"file now", 0o644),
            // A whiteout hides only lower layers, never a file of its own layer.
            file("same.txt", b"s", 0o644),
            file(".wh.same.txt", b"", 0o644),
        ];
        s.unpack(&[lower, upper]).unwrap();

        assert_eq!(s.read("a.txt"), "new");
        assert_eq!(s.mode("a.txt"), 0o600);
        assert_eq!(s.read("link-to-a"), "replaced");
        assert!(!std::fs::symlink_metadata(s.path("link-to-a")).unwrap().is_symlink());
        assert!(!s.exists("gone.txt"));
        assert!(!s.exists("gone-dir"));
        assert_eq!(s.read("keep/x"), "x");
        let mut opaque: Vec<_> = std::fs::read_dir(s.path("opaque"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        opaque.sort();
        assert_eq!(opaque, ["new"]);
        assert_eq!(s.read("was-dir"), "file now");
        assert_eq!(s.read("same.txt"), "s");
        assert!(!s.exists(".wh.gone.txt") && !s.exists("opaque/.wh..wh..opq"));
    }

    #[test]
    fn refuses_paths_outside_the_rootfs() {
        for name in ["../evil", "a/../../evil", "./../evil"] {
            let message = Scratch::new().refused(&[file(name, b"x", 0o644)]);
            assert!(message.contains("escapes the root filesystem"), "{message}");
            assert!(message.contains("sha256:test1") && message.contains("evil"), "{message}");
        }
        let absolute = format!("/wasmrun-unpack-abs-{:016x}", rand::random::<u64>());
        let name: &'static str = absolute.clone().leak();
        let message = Scratch::new().refused(&[file(name, b"x", 0o644)]);
        assert!(message.contains("escapes the root filesystem"), "{message}");
        assert!(!Path::new(&absolute).exists());
    }

    #[test]
    fn refuses_symlinks_escaping_the_rootfs() {
        for (name, target) in [("link", "../../outside"), ("a/b/link", "../../../outside"), ("a/link", "b/../../..")] {
            let mut s = Scratch::new();
            let message = s.refused(&[symlink(name, target)]);
            assert!(message.contains("link target") && message.contains("escapes"), "{message}");
            assert!(!s.exists(name));
        }
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        let file_name = format!("wasmrun-unpack-{:016x}", rand::random::<u64>());
        let name: &'static str = format!("dir/{file_name}").leak();
        let message = Scratch::new().refused(&[symlink("dir", "/tmp"), file(name, b"x", 0o644)]);
        assert!(message.contains("through a link"), "{message}");
        assert!(!Path::new("/tmp").join(&file_name).exists());
        assert!(!std::env::temp_dir().join(&file_name).exists());

        // Even a link that stays inside is never written through.
        let mut s = Scratch::new();
        let message = s.refused(&[dir("real/", 0o755), symlink("alias", "real"), file("alias/f", b"x", 0o644)]);
        assert!(message.contains("through a link"), "{message}");
        assert!(!s.exists("real/f"));
    }

    #[test]
    fn refuses_hard_links_outside_the_rootfs() {
        let message = Scratch::new().refused(&[hard_link("passwd", "../../etc/passwd")]);
        assert!(message.contains("escapes the root filesystem"), "{message}");
        let message = Scratch::new().refused(&[hard_link("passwd", "/etc/passwd")]);
        assert!(message.contains("escapes the root filesystem"), "{message}");
        // Through a symlink to the host's /etc.
        let mut s = Scratch::new();
        let message = s.refused(&[symlink("etc", "/etc"), hard_link("passwd", "etc/passwd")]);
        assert!(message.contains("through a link"), "{message}");
        assert!(!s.exists("passwd"));
        // To something that is not a regular file.
        let message = Scratch::new().refused(&[dir("d/", 0o755), hard_link("l", "d")]);
        assert!(message.contains("not a regular file"), "{message}");
    }

    #[test]
    fn refuses_devices_and_fifos() {
        for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
            let mut s = Scratch::new();
            let message = s.refused(&[entry(kind, "dev/thing", "")]);
            assert!(message.contains("device files and FIFOs are not allowed"), "{message}");
            assert!(!s.exists("dev/thing"));
        }
    }

    #[test]
    fn refuses_bad_whiteouts_and_nul_bytes() {
        let message = Scratch::new().refused(&[file("a/.wh..", b"", 0o644)]);
        assert!(message.contains("whiteout"), "{message}");
        let message = Scratch::new().refused(&[file(".wh.", b"", 0o644)]);
        assert!(message.contains("whiteout"), "{message}");

        // A NUL can only come through a PAX path record: "12 path=a\0b\n" is 12 bytes.
        let s = Scratch::new();
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(EntryType::XHeader);
        pax.set_size(12);
        pax.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&pax, &b"12 path=a\0b\n"[..]).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("placeholder").unwrap();
        header.set_size(0);
        header.set_cksum();
        builder.append(&header, &b""[..]).unwrap();
        let path = s.base.join("layer-nul");
        std::fs::write(&path, builder.into_inner().unwrap()).unwrap();
        let layer = Layer { digest: "sha256:nul".into(), path, compression: Compression::None };
        match unpack_layers(&[layer], &s.rootfs) {
            Err(Error::InvalidArgument(message)) => assert!(message.contains("NUL"), "{message}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn refuses_a_corrupt_layer() {
        let s = Scratch::new();
        let path = s.base.join("layer-bad");
        std::fs::write(&path, b"not gzip at all").unwrap();
        let layer = Layer { digest: "sha256:bad".into(), path, compression: Compression::Gzip };
        match unpack_layers(&[layer], &s.rootfs) {
            Err(Error::InvalidArgument(message)) => assert!(message.contains("sha256:bad"), "{message}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn media_types() {
        let gzip = ["application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip"];
        let plain = ["application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar"];
        for media_type in gzip {
            assert_eq!(Compression::from_media_type(media_type).unwrap(), Compression::Gzip);
        }
        for media_type in plain {
            assert_eq!(Compression::from_media_type(media_type).unwrap(), Compression::None);
        }
        for media_type in [
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/octet-stream",
        ] {
            match Compression::from_media_type(media_type) {
                Err(Error::InvalidArgument(message)) => assert!(message.contains(media_type), "{message}"),
                other => panic!("{media_type}: expected InvalidArgument, got {other:?}"),
            }
        }
    }
}
