//! Images: pulling wasm images, naming them, and keeping them on disk.

mod format;
mod pull;
mod store;

use std::path::{Path, PathBuf};

use oci_client::Reference;

pub use pull::Credentials;
pub use store::{Image, ModuleKind};

use crate::error::{Error, Result};

/// The image service: every image operation the CRI needs, on one store.
pub struct Images {
    store: store::Store,
    puller: pull::Puller,
}

/// What the image store takes on disk, for kubelet's image garbage collection.
#[derive(Debug, Clone)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
    /// Unix time in nanoseconds.
    pub timestamp: i64,
}

impl Images {
    pub async fn open(root: &Path, insecure_registries: &[String]) -> Result<Self> {
        Ok(Self {
            store: store::Store::open(root.join("images")).await?,
            puller: pull::Puller::new(insecure_registries),
        })
    }

    /// Pulls `name` and records it; returns the stored image.
    pub async fn pull(&self, name: &str, credentials: &Credentials) -> Result<Image> {
        let reference = parse_reference(name)?;
        let image = self
            .puller
            .pull(&self.store, &reference, credentials)
            .await?;
        let id = image.id.clone();
        let dropped = self.store.insert(image).await?;
        if !dropped.is_empty() {
            self.store.collect_garbage().await?;
        }
        tracing::info!(image = %reference.whole(), %id, "pulled image");
        self.store.get(&id).ok_or_else(|| {
            Error::internal(
                "pull",
                anyhow::anyhow!("image {id} vanished after its pull"),
            )
        })
    }

    /// Finds a stored image by id, tag or digest reference; `None` when absent.
    pub fn status(&self, name: &str) -> Result<Option<Image>> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("image name is empty".into()));
        }
        if let Some(image) = self.store.find(name) {
            return Ok(Some(image));
        }
        // Not an id: normalise it the way pulls record it (docker.io/library/x:latest).
        match parse_reference(name) {
            Ok(reference) => Ok(self.store.find(&normalized(&reference))),
            Err(_) => Ok(None),
        }
    }

    /// The image a container asks for, which must have been pulled.
    pub fn require(&self, name: &str) -> Result<Image> {
        self.status(name)?
            .ok_or_else(|| Error::NotFound(format!("image {name:?} not found: pull it first")))
    }

    pub fn list(&self, filter: Option<&str>) -> Result<Vec<Image>> {
        match filter {
            Some(name) if !name.is_empty() => Ok(self.status(name)?.into_iter().collect()),
            _ => Ok(self.store.list()),
        }
    }

    /// Removes an image and every blob no other image needs. Removing an absent
    /// image is not an error. Returns the module digests no longer referenced.
    pub async fn remove(&self, name: &str) -> Result<Vec<String>> {
        let Some(image) = self.status(name)? else {
            return Ok(Vec::new());
        };
        self.store.remove(&image.id).await?;
        let deleted = self.store.collect_garbage().await?;
        tracing::info!(image = %image.id, blobs = deleted.len(), "removed image");
        Ok(deleted
            .into_iter()
            .filter(|digest| *digest == image.module_digest)
            .collect())
    }

    pub fn module_path(&self, image: &Image) -> Result<PathBuf> {
        self.store.blob_path(&image.module_digest)
    }

    pub async fn fs_usage(&self) -> Result<FsUsage> {
        let dir = self.store.dir().to_owned();
        let (used_bytes, inodes_used) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || disk_usage(&dir)
        })
        .await
        .map_err(|e| Error::internal("measuring the image store", e))??;
        Ok(FsUsage {
            mountpoint: dir,
            used_bytes,
            inodes_used,
            timestamp: crate::durable::now_nanos(),
        })
    }
}

fn parse_reference(name: &str) -> Result<Reference> {
    if name.trim().is_empty() {
        return Err(Error::InvalidArgument("image name is empty".into()));
    }
    Reference::try_from(name).map_err(|e| {
        Error::InvalidArgument(format!("image name {name:?} is not a valid reference: {e}"))
    })
}

/// The form the store records: `registry/repo:tag`, or `registry/repo@digest`.
fn normalized(reference: &Reference) -> String {
    let repository = format!("{}/{}", reference.registry(), reference.repository());
    match (reference.digest(), reference.tag()) {
        (Some(digest), _) => format!("{repository}@{digest}"),
        (None, Some(tag)) => format!("{repository}:{tag}"),
        (None, None) => format!("{repository}:latest"),
    }
}

/// Bytes on disk (allocated blocks) and inodes used below `dir`.
fn disk_usage(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut inodes = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let meta = std::fs::symlink_metadata(&current)
            .map_err(|e| Error::internal(format!("reading {}", current.display()), e))?;
        bytes += meta.blocks() * 512;
        inodes += 1;
        if meta.is_dir() {
            let entries = std::fs::read_dir(&current)
                .map_err(|e| Error::internal(format!("listing {}", current.display()), e))?;
            pending.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
    Ok((bytes, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_like_the_store_records_them() {
        let n = |s: &str| normalized(&parse_reference(s).unwrap());
        assert_eq!(n("hello"), "docker.io/library/hello:latest");
        assert_eq!(
            n("127.0.0.1:5000/e2e/hello:v1"),
            "127.0.0.1:5000/e2e/hello:v1"
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(n(&format!("r.io/x@{digest}")), format!("r.io/x@{digest}"));
        assert!(parse_reference("").is_err());
        assert!(parse_reference("has spaces:tag").is_err());
        assert!(parse_reference("r.io/x@sha256:nothex").is_err());
    }
}
