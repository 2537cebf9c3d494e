//! A container's root filesystem, for a compat image.
//!
//! Writable (Kubernetes' default, `readonly_rootfs` false): an overlay of the
//! container's own, as containerd's overlay snapshotter makes one, mounted at
//! `<scratch>/rootfs/merged` with the image's unpacked filesystem as its only
//! lower layer and the container's writes in `<scratch>/rootfs/upper`. The
//! image's tree is never written; another container of the image never sees
//! the writes; RemoveContainer unmounts it and deletes them.
//!
//! Read-only (`readonly_rootfs` true): the image's filesystem itself, which
//! the guest may not write to (it is told EROFS).
//!
//! An overlay needs CAP_SYS_ADMIN: a daemon that may not mount refuses to
//! create a container with a writable root (FailedPrecondition, saying so).

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::wasm::Root;

/// The directory in a container's scratch directory holding its overlay.
const DIR_NAME: &str = "rootfs";

/// The root of a container whose scratch directory is `scratch_dir`, from the
/// image's unpacked filesystem `image_rootfs`: that filesystem itself when
/// `readonly`, else an overlay mounted on it now.
/// Errors: FailedPrecondition when the daemon may not mount; Internal otherwise.
pub(super) async fn prepare(
    container_id: &str,
    image_rootfs: PathBuf,
    scratch_dir: &Path,
    readonly: bool,
) -> Result<Root> {
    if readonly {
        return Ok(Root { host_path: image_rootfs, readonly: true });
    }
    let dir = scratch_dir.join(DIR_NAME);
    let mounted = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || mount(&image_rootfs, &dir)
    })
    .await
    .map_err(|e| Error::internal("mounting a container's root filesystem", e))?;
    match mounted {
        Ok(merged) => {
            tracing::debug!(container = container_id, root = %merged.display(), "writable root filesystem mounted");
            Ok(Root { host_path: merged, readonly: false })
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Err(Error::FailedPrecondition(format!(
            "container {container_id}: its root filesystem is writable (readonly_rootfs is false), which takes an \
             overlay mount, and the daemon may not mount ({e}): run wasmrun as root (CAP_SYS_ADMIN), or set \
             readonly_rootfs"
        ))),
        Err(e) => Err(Error::internal(
            format!("mounting the root filesystem of container {container_id} at {}", dir.display()),
            e,
        )),
    }
}

/// Makes `dir/{upper,work,merged}` and mounts the overlay at `merged`; on
/// failure, leaves nothing behind.
fn mount(image_rootfs: &Path, dir: &Path) -> io::Result<PathBuf> {
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    let mounted = (|| {
        for sub in [&upper, &work, &merged] {
            std::fs::create_dir_all(sub)?;
        }
        crate::sys::mount_overlay(image_rootfs, &upper, &work, &merged)
    })();
    if let Err(e) = mounted {
        let _ = std::fs::remove_dir_all(dir);
        return Err(e);
    }
    Ok(merged)
}

/// Unmounts the overlay of a container's writable `root` (a read-only root
/// is the image's own tree, and an artifact has none: nothing to do), so that
/// its scratch directory can be deleted. A failure is logged: the next daemon
/// start unmounts what is left.
pub(super) async fn release(container_id: &str, root: Option<&Root>) {
    let Some(root) = root.filter(|root| !root.readonly) else {
        return;
    };
    let merged = root.host_path.clone();
    let unmounted = tokio::task::spawn_blocking(move || crate::sys::unmount(&merged))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
    match unmounted {
        Ok(()) => tracing::debug!(container = container_id, "root filesystem unmounted"),
        // Not a mount point any more, or no directory at all.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
        Err(e) => {
            tracing::warn!(container = container_id, error = %e, "cannot unmount the container's root filesystem")
        }
    }
}

/// Unmounts whatever an earlier daemon left mounted under `containers_dir`
/// (it was killed before removing its containers), deepest first, so that the
/// directory can be deleted without reaching through a mount. Blocking.
pub(super) fn release_all(containers_dir: &Path) {
    let mounts = match crate::sys::mounts_under(containers_dir) {
        Ok(mounts) => mounts,
        Err(e) => {
            tracing::warn!(dir = %containers_dir.display(), error = %e, "cannot list the mounts of an earlier run");
            return;
        }
    };
    for point in mounts {
        match crate::sys::unmount(&point) {
            Ok(()) => {
                tracing::info!(mount = %point.display(), "unmounted a container root filesystem left by an earlier run")
            }
            Err(e) => {
                tracing::warn!(mount = %point.display(), error = %e, "cannot unmount a mount left by an earlier run")
            }
        }
    }
}
