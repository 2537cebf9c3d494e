//! The content-addressed blob store and the image index, both on disk under
//! `<root>/images`, so that images survive a restart.
//!
//! A blob is written to `tmp/`, hashed while it is written, fsynced, checked
//! against its digest and only then renamed into `blobs/sha256/<hex>`: a blob
//! under `blobs/` is always whole and verified. The index is one JSON file,
//! replaced atomically (write, fsync, rename) on every change.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWrite;

use crate::durable::write_atomically;
use crate::error::{Error, IoContext, Result};

/// One image as the store knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<hex>` of the image config: the image id kubelet sees.
    pub id: String,
    /// Normalised references with a tag, `registry/repo:tag`.
    pub repo_tags: Vec<String>,
    /// `registry/repo@sha256:<manifest digest>`.
    pub repo_digests: Vec<String>,
    pub manifest_digest: String,
    pub config_digest: String,
    /// The one wasm layer.
    pub module_digest: String,
    pub module_kind: ModuleKind,
    /// Media types, as the registry gave them.
    pub manifest_media_type: String,
    pub config_media_type: String,
    pub layer_media_type: String,
    /// Bytes of config plus layers: what the image takes on disk.
    pub size: u64,
    /// The name argv[0] gets when the container gives no command.
    pub default_argv0: String,
    /// Unix time in nanoseconds.
    pub pulled_at: i64,
}

/// What the binary header of a wasm blob says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// A core module (`\0asm` version 1).
    Module,
    /// A component (`\0asm` layer 1, version 0x0d).
    Component,
}

impl ModuleKind {
    /// Reads the 8-byte header: magic, then version and layer.
    pub fn detect(header: &[u8]) -> Option<Self> {
        match header.get(..8)? {
            [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(ModuleKind::Module),
            [0, b'a', b's', b'm', _, _, 1, 0] => Some(ModuleKind::Component),
            _ => None,
        }
    }
}

pub struct Store {
    dir: PathBuf,
    images: Mutex<BTreeMap<String, Image>>,
    /// Serialises index writes so that the file on disk is always the latest state.
    persist: tokio::sync::Mutex<()>,
}

impl Store {
    /// Opens (or creates) the store, dropping index entries whose blobs are gone.
    pub async fn open(dir: PathBuf) -> Result<Self> {
        let load_dir = dir.clone();
        let images = tokio::task::spawn_blocking(move || load(&load_dir))
            .await
            .map_err(|e| Error::internal("loading the image store", e))??;
        Ok(Self {
            dir,
            images: Mutex::new(images),
            persist: tokio::sync::Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("blobs").join(digest_path(digest)?))
    }

    pub async fn has_blob(&self, digest: &str) -> bool {
        match self.blob_path(digest) {
            Ok(path) => tokio::fs::metadata(path)
                .await
                .is_ok_and(|meta| meta.is_file()),
            Err(_) => false,
        }
    }

    /// Starts writing a blob that must hash to `digest`.
    pub async fn blob_writer(&self, digest: &str) -> Result<BlobWriter> {
        let target = self.blob_path(digest)?;
        let tmp =
            self.dir
                .join("tmp")
                .join(format!("{}.{}", digest_hex(digest)?, rand::random::<u64>()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .io_context(|| format!("creating {}", tmp.display()))?;
        Ok(BlobWriter {
            file,
            tmp,
            target,
            expected: digest.to_owned(),
            hasher: Sha256::new(),
            header: Vec::with_capacity(8),
        })
    }

    /// Stores bytes already in memory (manifests, configs).
    pub async fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let mut writer = self.blob_writer(digest).await?;
        tokio::io::AsyncWriteExt::write_all(&mut writer, bytes)
            .await
            .io_context(|| format!("writing blob {digest}"))?;
        writer.commit().await
    }

    pub fn list(&self) -> Vec<Image> {
        self.images.lock().unwrap().values().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Image> {
        self.images.lock().unwrap().get(id).cloned()
    }

    /// Finds an image by id (`sha256:<hex>`, or a unique prefix of the hex), by
    /// tag, or by repo digest. `name` must already be normalised.
    pub fn find(&self, name: &str) -> Option<Image> {
        let images = self.images.lock().unwrap();
        if let Some(image) = images.get(name) {
            return Some(image.clone());
        }
        if let Some(image) = images.values().find(|image| {
            image
                .repo_tags
                .iter()
                .chain(&image.repo_digests)
                .any(|r| r == name)
        }) {
            return Some(image.clone());
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut matches = images
                .values()
                .filter(|image| image.id[7..].starts_with(hex));
            if let (Some(image), None) = (matches.next(), matches.next()) {
                return Some(image.clone());
            }
        }
        None
    }

    /// Records a pulled image. Its tags move to it from any image that had them,
    /// and an image left with neither tags nor digests is dropped.
    pub async fn insert(&self, mut image: Image) -> Result<Vec<Image>> {
        let dropped = {
            let mut images = self.images.lock().unwrap();
            for other in images.values_mut().filter(|other| other.id != image.id) {
                other.repo_tags.retain(|tag| !image.repo_tags.contains(tag));
            }
            if let Some(existing) = images.get(&image.id) {
                merge(&mut image.repo_tags, &existing.repo_tags);
                merge(&mut image.repo_digests, &existing.repo_digests);
            }
            images.insert(image.id.clone(), image);
            let orphans: Vec<String> = images
                .values()
                .filter(|image| image.repo_tags.is_empty() && image.repo_digests.is_empty())
                .map(|image| image.id.clone())
                .collect();
            orphans.iter().filter_map(|id| images.remove(id)).collect()
        };
        self.persist().await?;
        Ok(dropped)
    }

    /// Removes an image from the index; `None` when it was not there.
    pub async fn remove(&self, id: &str) -> Result<Option<Image>> {
        let removed = self.images.lock().unwrap().remove(id);
        if removed.is_some() {
            self.persist().await?;
        }
        Ok(removed)
    }

    /// Deletes blobs that no image references; returns the digests deleted.
    pub async fn collect_garbage(&self) -> Result<Vec<String>> {
        let referenced: HashSet<String> = self
            .images
            .lock()
            .unwrap()
            .values()
            .flat_map(|image| {
                [
                    image.manifest_digest.clone(),
                    image.config_digest.clone(),
                    image.module_digest.clone(),
                ]
            })
            .collect();
        let blobs = self.dir.join("blobs").join("sha256");
        tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
            let mut deleted = Vec::new();
            for entry in
                std::fs::read_dir(&blobs).io_context(|| format!("listing {}", blobs.display()))?
            {
                let entry = entry.io_context(|| format!("listing {}", blobs.display()))?;
                let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
                if !referenced.contains(&digest) {
                    std::fs::remove_file(entry.path())
                        .io_context(|| format!("deleting unreferenced blob {digest}"))?;
                    deleted.push(digest);
                }
            }
            Ok(deleted)
        })
        .await
        .map_err(|e| Error::internal("collecting unreferenced blobs", e))?
    }

    async fn persist(&self) -> Result<()> {
        let _guard = self.persist.lock().await;
        let images: Vec<Image> = self.list();
        let json = serde_json::to_vec_pretty(&images)
            .map_err(|e| Error::internal("encoding the image index", e))?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir.join("index.json"), &json))
            .await
            .map_err(|e| Error::internal("writing the image index", e))?
    }
}

fn merge(into: &mut Vec<String>, from: &[String]) {
    for item in from {
        if !into.contains(item) {
            into.push(item.clone());
        }
    }
}

fn load(dir: &Path) -> Result<BTreeMap<String, Image>> {
    for sub in ["blobs/sha256", "tmp"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).io_context(|| format!("creating {}", path.display()))?;
    }
    // Whatever is in tmp/ is a write that never committed.
    let tmp = dir.join("tmp");
    for entry in std::fs::read_dir(&tmp)
        .io_context(|| format!("listing {}", tmp.display()))?
        .flatten()
    {
        let _ = std::fs::remove_file(entry.path());
    }
    let index = dir.join("index.json");
    let images: Vec<Image> = match std::fs::read(&index) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::internal(format!("parsing the image index {}", index.display()), e)
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::internal(format!("reading {}", index.display()), e)),
    };
    let mut kept = BTreeMap::new();
    for image in images {
        let whole = [
            &image.manifest_digest,
            &image.config_digest,
            &image.module_digest,
        ]
        .iter()
        .all(|digest| digest_path(digest).is_ok_and(|p| dir.join("blobs").join(p).is_file()));
        if whole {
            kept.insert(image.id.clone(), image);
        } else {
            tracing::warn!(image = %image.id, "dropping image whose blobs are missing from the store");
        }
    }
    Ok(kept)
}

/// `sha256:<64 hex>` → `sha256/<hex>`; anything else is refused, so that a
/// digest from a registry can never name a path outside the store.
fn digest_path(digest: &str) -> Result<PathBuf> {
    Ok(Path::new("sha256").join(digest_hex(digest)?))
}

fn digest_hex(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Ok(hex)
        }
        _ => Err(Error::InvalidArgument(format!(
            "unsupported digest {digest:?}: expected sha256:<64 lowercase hex>"
        ))),
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes a blob to a temporary file while hashing it; `commit` verifies and publishes it.
pub struct BlobWriter {
    file: tokio::fs::File,
    tmp: PathBuf,
    target: PathBuf,
    expected: String,
    hasher: Sha256,
    header: Vec<u8>,
}

impl BlobWriter {
    /// The first bytes written, up to 8: enough to tell a wasm module from a component.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Verifies the digest, makes the blob durable and moves it into place.
    pub async fn commit(mut self) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let actual = format!(
            "sha256:{}",
            hex::encode(std::mem::take(&mut self.hasher).finalize())
        );
        if actual != self.expected {
            self.discard().await;
            return Err(Error::DataLoss(format!(
                "blob {} does not match its digest: its content hashes to {actual}",
                self.expected
            )));
        }
        let result: io::Result<()> = async {
            self.file.flush().await?;
            self.file.sync_all().await?;
            tokio::fs::rename(&self.tmp, &self.target).await
        }
        .await;
        if let Err(e) = result {
            self.discard().await;
            return Err(Error::internal(
                format!("storing blob {}", self.expected),
                e,
            ));
        }
        Ok(())
    }

    pub async fn discard(&self) {
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

impl AsyncWrite for BlobWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.file).poll_write(cx, buf))?;
        this.hasher.update(&buf[..n]);
        let missing = 8usize.saturating_sub(this.header.len()).min(n);
        this.header.extend_from_slice(&buf[..missing]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmrun-store-{name}-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn detects_modules_and_components() {
        assert_eq!(
            ModuleKind::detect(b"\0asm\x01\0\0\0rest"),
            Some(ModuleKind::Module)
        );
        assert_eq!(
            ModuleKind::detect(b"\0asm\x0d\0\x01\0"),
            Some(ModuleKind::Component)
        );
        assert_eq!(ModuleKind::detect(b"\0asm"), None);
        assert_eq!(ModuleKind::detect(b"not wasm at all"), None);
    }

    #[test]
    fn digests_never_escape_the_store() {
        for bad in [
            "sha256:../../etc/passwd",
            "sha512:abc",
            "sha256:ABC",
            "",
            "sha256:",
        ] {
            assert!(digest_path(bad).is_err(), "{bad:?}");
        }
        let good = sha256_digest(b"x");
        assert_eq!(
            digest_path(&good).unwrap(),
            Path::new("sha256").join(&good[7..])
        );
    }

    #[tokio::test]
    async fn a_blob_that_does_not_match_its_digest_is_not_stored() {
        let store = Store::open(temp_dir("mismatch")).await.unwrap();
        let digest = sha256_digest(b"expected");
        let err = store
            .put_blob(&digest, b"something else")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DataLoss(_)), "{err}");
        assert!(!store.has_blob(&digest).await);
        assert_eq!(
            std::fs::read_dir(store.dir().join("tmp")).unwrap().count(),
            0
        );

        store.put_blob(&digest, b"expected").await.unwrap();
        assert_eq!(
            std::fs::read(store.blob_path(&digest).unwrap()).unwrap(),
            b"expected"
        );
    }

    #[tokio::test]
    async fn the_index_survives_reopening_and_tags_move() {
        let dir = temp_dir("index");
        let store = Store::open(dir.clone()).await.unwrap();
        let mut images = Vec::new();
        for content in [&b"one"[..], b"two"] {
            let blob = sha256_digest(content);
            store.put_blob(&blob, content).await.unwrap();
            images.push(Image {
                id: blob.clone(),
                repo_tags: vec!["r/x:latest".into()],
                repo_digests: vec![],
                manifest_digest: blob.clone(),
                config_digest: blob.clone(),
                module_digest: blob,
                module_kind: ModuleKind::Module,
                manifest_media_type: String::new(),
                config_media_type: String::new(),
                layer_media_type: String::new(),
                size: 3,
                default_argv0: "x".into(),
                pulled_at: 0,
            });
        }
        store.insert(images[0].clone()).await.unwrap();
        // The tag moves to the second image; the first, left with no name, goes.
        let dropped = store.insert(images[1].clone()).await.unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].id, images[0].id);

        let reopened = Store::open(dir).await.unwrap();
        assert_eq!(reopened.list(), vec![images[1].clone()]);
        assert_eq!(reopened.find("r/x:latest").unwrap().id, images[1].id);
        assert_eq!(reopened.find(&images[1].id[..20]).unwrap().id, images[1].id);

        reopened.remove(&images[1].id).await.unwrap();
        let deleted = reopened.collect_garbage().await.unwrap();
        assert_eq!(deleted.len(), 2);
        assert!(reopened.list().is_empty());
    }
}
