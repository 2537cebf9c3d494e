//! Where a guest's directories are preopened, so that relative paths resolve
//! against its working directory and absolute paths keep reaching its root
//! filesystem and its mounts.
//!
//! WASI preview 1 has no working directory: a program resolves every path
//! itself against the preopened directories, each known by a name.
//!
//! - wasi-libc (C, Rust's std, also on wasip2) starts every program in `/`,
//!   strips leading `/` and `./` from both preopen names and paths, and takes
//!   the longest preopen name that is a whole-component prefix of the path;
//!   among equal names the one preopened last wins
//!   (`libc-bottom-half/sources/preopens.c`: `strip_prefixes`,
//!   `__wasilibc_find_abspath`). So `/` and `.` are the same empty name
//!   (wasi-libc issue 484), and the relative path `in.txt` and the absolute
//!   `/in.txt` are the same path to it.
//! - Go (`syscall/fs_wasip1.go`) joins a relative path to `$PWD`, then takes
//!   the longest preopen name that is a string prefix of the absolute path;
//!   among equal names the one preopened first wins. A `.` preopen never
//!   matches an absolute path.
//!
//! With the working directory W at `/`, the root is preopened at `/` and the
//! mounts at their paths, as a shell would see them. With W elsewhere:
//!
//! 1. the root at `/` (for Go, whose relative paths are absolute by then; it
//!    loses every tie to what follows in wasi-libc);
//! 2. each top-level directory of the root at `/<name>`, unless a mount is
//!    there: absolute paths into them keep working in wasi-libc;
//! 3. the mounts at their paths;
//! 4. W at `.`, resolved through the mount holding it, else through the root:
//!    wasi-libc resolves a relative path (and an absolute path whose first
//!    component names no top-level directory) there;
//! 5. each mount below W again at its path relative to W, so that a relative
//!    path into it reaches it in wasi-libc too.
//!
//! What this cannot give wasi-libc programs when W is not `/`: a file at the
//! root's top level (`/config.json`) is looked up in W, and a relative path
//! whose first component names a top-level directory of the root
//! (`etc/app.conf` in W = `/srv`) reaches that directory (`/etc/app.conf`).
//! Go programs see neither.

use std::io;
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;

use super::file_mounts::{FileMountDir, FileMounts, normalize};
use super::spec::{Mount, Root};

/// The preopens of a guest, in order: see the module documentation. `mounts`
/// are the directories to preopen besides the root (directory mounts, then the
/// private directories of file mounts), each at an absolute guest path.
/// Returns them and, for each, whether it is the root or a directory of it
/// (writes there are refused as on a read-only filesystem when the root is
/// read-only).
///
/// Reads the root's top-level entries and may create W in a writable root (as
/// runc creates a missing working directory): call it off the async workers.
pub(super) fn preopens(root: Option<&Root>, working_dir: Option<&str>, mounts: Vec<Mount>) -> Vec<Preopen> {
    let working_dir = working_dir.and_then(|dir| match normalize(dir) {
        Some(dir) => Some(dir),
        None => {
            tracing::warn!(
                working_dir = dir,
                "the working directory is not an absolute path without `..`: relative paths resolve against `/`"
            );
            None
        }
    });
    let root_dir = |root: &Root, path: &Path| Preopen {
        mount: Mount::dir(&root_host(root, path), path, root.readonly),
        in_root: true,
        file_mounts: None,
    };
    let mut preopens = Vec::new();
    let Some(working_dir) = working_dir.filter(|dir| dir != Path::new("/")) else {
        preopens.extend(root.map(|root| root_dir(root, Path::new("/"))));
        preopens.extend(mounts.into_iter().map(|mount| Preopen { mount, in_root: false, file_mounts: None }));
        return preopens;
    };
    let mount_paths: Vec<PathBuf> = mounts.iter().filter_map(|m| normalize(&m.guest_path)).collect();
    let below_working_dir: Vec<(PathBuf, Mount)> = mounts
        .iter()
        .filter_map(|m| {
            let relative = normalize(&m.guest_path)?.strip_prefix(&working_dir).ok()?.to_owned();
            (!relative.as_os_str().is_empty()).then(|| (relative, m.clone()))
        })
        .collect();

    // W, through the deepest mount holding it, else through the root.
    let holder = mounts
        .iter()
        .filter_map(|m| Some((normalize(&m.guest_path)?, m)))
        .filter(|(path, _)| working_dir.starts_with(path))
        .max_by_key(|(path, _)| path.components().count());
    let working = match holder {
        Some((path, mount)) => {
            let host = Path::new(&mount.host_path).join(working_dir.strip_prefix(&path).unwrap_or(Path::new("")));
            match std::fs::metadata(&host) {
                Ok(meta) if meta.is_dir() => Some(Preopen { mount: Mount::dir(&host, Path::new("."), mount.readonly), in_root: false, file_mounts: None }),
                _ => {
                    tracing::warn!(working_dir = %working_dir.display(), host = %host.display(), "the working directory is not a directory of its mount: relative paths resolve against `/`");
                    None
                }
            }
        }
        None => root.and_then(|root| match working_dir_in_root(root, &working_dir) {
            Ok(()) => Some(Preopen { mount: Mount::dir(&root_host(root, &working_dir), Path::new("."), root.readonly), in_root: true, file_mounts: None }),
            Err(e) => {
                tracing::warn!(working_dir = %working_dir.display(), error = %e, "the working directory is not a directory of the root filesystem: relative paths resolve against `/`");
                None
            }
        }),
    };

    if let Some(root) = root {
        preopens.push(root_dir(root, Path::new("/")));
        if working.is_some() {
            for name in top_level_dirs(root) {
                let path = Path::new("/").join(&name);
                if !mount_paths.contains(&path) {
                    preopens.push(root_dir(root, &path));
                }
            }
        }
    }
    preopens.extend(mounts.into_iter().map(|mount| Preopen { mount, in_root: false, file_mounts: None }));
    if let Some(working) = working {
        preopens.push(working);
        for (relative, mount) in below_working_dir {
            preopens.push(Preopen {
                mount: Mount { guest_path: relative.display().to_string(), ..mount },
                in_root: false,
                file_mounts: None,
            });
        }
    }
    preopens
}

/// One directory given to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Preopen {
    pub mount: Mount,
    /// Whether it is the root filesystem or a directory of it.
    pub in_root: bool,
    /// The writable private directory of file mounts it is, if it is one:
    /// its files are bounded (see `file_mounts`).
    pub file_mounts: Option<FileMountDir>,
}

impl Mount {
    fn dir(host: &Path, guest: &Path, readonly: bool) -> Mount {
        Mount { host_path: host.display().to_string(), guest_path: guest.display().to_string(), readonly }
    }
}

/// The host path of `guest_path` (absolute, normalized) in the root.
fn root_host(root: &Root, guest_path: &Path) -> PathBuf {
    match guest_path.strip_prefix("/").unwrap_or(guest_path) {
        relative if relative.as_os_str().is_empty() => root.host_path.clone(),
        relative => root.host_path.join(relative),
    }
}

/// Checks that the working directory is a directory of the root, reached
/// without leaving it (cap-std refuses `..` above it and absolute links, as
/// wasmtime-wasi would refuse them to the guest); creates it in a writable
/// root when it is missing.
fn working_dir_in_root(root: &Root, working_dir: &Path) -> io::Result<()> {
    let dir = Dir::open_ambient_dir(&root.host_path, cap_std::ambient_authority())?;
    let relative = working_dir.strip_prefix("/").unwrap_or(working_dir);
    match dir.open_dir(relative) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !root.readonly => {
            dir.create_dir_all(relative)?;
            dir.open_dir(relative).map(drop)
        }
        other => other.map(drop),
    }
}

/// The names of the root's top-level directories, and of its top-level links
/// that lead to a directory inside it (`/lib -> usr/lib`). A link that leaves
/// the root (an absolute target) is left out: the host would follow it.
fn top_level_dirs(root: &Root) -> Vec<std::ffi::OsString> {
    let listed = Dir::open_ambient_dir(&root.host_path, cap_std::ambient_authority()).and_then(|dir| {
        let mut names = Vec::new();
        for entry in dir.entries()? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let name = entry.file_name();
            let is_dir = kind.is_dir()
                || (kind.is_symlink()
                    && dir.read_link_contents(&name).is_ok_and(|target| target.is_relative())
                    && dir.open_dir(&name).is_ok());
            if is_dir {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    });
    listed.unwrap_or_else(|e| {
        tracing::warn!(root = %root.host_path.display(), error = %e, "cannot list the root filesystem");
        Vec::new()
    })
}

/// What `spec`'s guest preopens, and its file mounts to copy back when it
/// ends: file mounts copied into `spec.scratch_dir` (see `file_mounts`),
/// then [`preopens`], each preopen of a writable private directory of file
/// mounts marked as such (at its guest directory, and again as `.` or at a
/// relative path when the working directory holds it). Blocking (copies and
/// directory reads): call it off the async workers when the spec has mounts or a root.
///
/// Errors: InvalidArgument for a file mount that cannot be copied.
pub(super) fn prepare(spec: &super::spec::GuestSpec) -> crate::error::Result<(Vec<Preopen>, FileMounts)> {
    let prepared = super::file_mounts::prepare(spec.mounts.clone(), spec.scratch_dir.clone())?;
    let mut preopens = preopens(spec.root.as_ref(), spec.working_dir.as_deref(), prepared.preopens);
    if let Some(copies) = prepared.files.writable_copies() {
        for preopen in &mut preopens {
            if let Some(dir) = copies.dir_at(Path::new(&preopen.mount.host_path)) {
                preopen.file_mounts = Some(FileMountDir { copies: copies.clone(), dir });
            }
        }
    }
    Ok((preopens, prepared.files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmrun-layout-{name}-{}", hex::encode(rand::random::<[u8; 8]>())));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(preopens: &[Preopen]) -> Vec<(String, String, bool)> {
        preopens.iter().map(|p| (p.mount.guest_path.clone(), p.mount.host_path.clone(), p.in_root)).collect()
    }

    fn mount(host: &Path, guest: &str) -> Mount {
        Mount { host_path: host.display().to_string(), guest_path: guest.into(), readonly: false }
    }

    #[test]
    fn at_the_root_the_root_and_the_mounts_are_all() {
        let host = temp_root("at-root");
        let root = Root { host_path: host.join("rootfs"), readonly: true };
        std::fs::create_dir_all(host.join("rootfs/etc")).unwrap();
        let mounts = vec![mount(&host.join("vol"), "/vol")];
        for working_dir in [None, Some("/"), Some("//"), Some("relative")] {
            let preopens = preopens(Some(&root), working_dir, mounts.clone());
            let root_path = host.join("rootfs").display().to_string();
            assert_eq!(
                names(&preopens),
                [("/".into(), root_path, true), ("/vol".into(), host.join("vol").display().to_string(), false)],
                "{working_dir:?}"
            );
        }
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[test]
    fn elsewhere_the_working_dir_is_dot_after_the_top_level_dirs_and_mounts() {
        let host = temp_root("elsewhere");
        let rootfs = host.join("rootfs");
        for dir in ["data/sub", "etc", "dev", "usr/lib"] {
            std::fs::create_dir_all(rootfs.join(dir)).unwrap();
        }
        std::fs::write(rootfs.join("top.txt"), "").unwrap();
        std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
        std::os::unix::fs::symlink("/etc", rootfs.join("host-etc")).unwrap();
        let root = Root { host_path: rootfs.clone(), readonly: true };
        let at = |p: &str| rootfs.join(p).display().to_string();
        let mounts = vec![mount(&host.join("dev"), "/dev"), mount(&host.join("vol"), "/data/./vol/")];
        let preopens = preopens(Some(&root), Some("/data/"), mounts);
        let vol = host.join("vol").display().to_string();
        assert_eq!(
            names(&preopens),
            [
                ("/".into(), rootfs.display().to_string(), true),
                // `/dev` is a mount; `/host-etc` leads out of the root.
                ("/data".into(), at("data"), true),
                ("/etc".into(), at("etc"), true),
                ("/lib".into(), at("lib"), true),
                ("/usr".into(), at("usr"), true),
                ("/dev".into(), host.join("dev").display().to_string(), false),
                ("/data/./vol/".into(), vol.clone(), false),
                (".".into(), at("data"), true),
                ("vol".into(), vol, false),
            ]
        );
        assert!(preopens.iter().all(|p| p.mount.readonly == p.in_root), "{preopens:?}");
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[test]
    fn a_working_dir_in_a_mount_is_that_mount() {
        let host = temp_root("in-mount");
        std::fs::create_dir_all(host.join("vol/sub")).unwrap();
        let preopens = preopens(None, Some("/data/sub"), vec![mount(&host.join("vol"), "/data")]);
        assert_eq!(
            names(&preopens),
            [
                ("/data".into(), host.join("vol").display().to_string(), false),
                (".".into(), host.join("vol/sub").display().to_string(), false),
            ]
        );
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[test]
    fn a_missing_working_dir_is_made_in_a_writable_root_only() {
        let host = temp_root("missing");
        let rootfs = host.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let readonly = Root { host_path: rootfs.clone(), readonly: true };
        let preopens_ro = preopens(Some(&readonly), Some("/app/run"), Vec::new());
        assert_eq!(names(&preopens_ro), [("/".into(), rootfs.display().to_string(), true)]);
        assert!(!rootfs.join("app").exists());

        let writable = Root { host_path: rootfs.clone(), readonly: false };
        let preopens_rw = preopens(Some(&writable), Some("/app/run"), Vec::new());
        assert!(rootfs.join("app/run").is_dir());
        assert_eq!(
            names(&preopens_rw),
            [
                ("/".into(), rootfs.display().to_string(), true),
                ("/app".into(), rootfs.join("app").display().to_string(), true),
                (".".into(), rootfs.join("app/run").display().to_string(), true),
            ]
        );
        std::fs::remove_dir_all(&host).unwrap();
    }

    #[test]
    fn a_working_dir_leaving_the_root_is_not_preopened() {
        let host = temp_root("escape");
        let rootfs = host.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::os::unix::fs::symlink("/tmp", rootfs.join("away")).unwrap();
        std::os::unix::fs::symlink("../..", rootfs.join("up")).unwrap();
        let root = Root { host_path: rootfs.clone(), readonly: false };
        for working_dir in ["/away", "/up", "/up/tmp"] {
            let preopens = preopens(Some(&root), Some(working_dir), Vec::new());
            assert_eq!(names(&preopens), [("/".into(), rootfs.display().to_string(), true)], "{working_dir}");
        }
        std::fs::remove_dir_all(&host).unwrap();
    }
}
