//! The content-addressed blob store and the image index, both on disk under
//! `<root>/images`, so that images survive a restart.
//!
//! A blob is written to `tmp/`, hashed while it is written, fsynced, checked
//! against its digest and only then renamed into `blobs/sha256/<hex>`: a blob
//! under `blobs/` is always whole and verified. A temporary file never
//! outlives its writer: a [`BlobWriter`] dropped without a commit (an error, a
//! cancelled future, a panic) removes its file. The index is one JSON file,
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

use crate::digest::Digest;
use crate::durable::write_atomically;
use crate::error::{Error, IoContext, Result};
use crate::wasm::WasmKind;

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
    /// Which layout of wasm image this is (see `format.rs`).
    pub format: ImageFormat,
    /// Every layer blob, in manifest order.
    pub layer_digests: Vec<String>,
    /// The wasm binary run by default: the wasm layer of an artifact, or the
    /// entrypoint file of a compat image, copied out of its filesystem.
    pub module_digest: String,
    pub module_kind: WasmKind,
    /// The program's path inside a compat image's filesystem; empty for artifacts.
    pub module_path: String,
    /// From the image config: the argv a container gets without a CRI command.
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value`, from the image config.
    pub env: Vec<String>,
    pub working_dir: String,
    /// Media types, as the registry gave them.
    pub manifest_media_type: String,
    pub config_media_type: String,
    /// Bytes of config plus layers, as the manifest gives them.
    pub size: u64,
    /// Unix time in nanoseconds.
    pub pulled_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// CNCF wasm artifact: `application/vnd.wasm.config.v0+json`, one `application/wasm` layer.
    WasmArtifact,
    /// wasm-to-oci / krustlet: `application/vnd.wasm.config.v1+json`.
    WasmToOci,
    /// runwasi: an OCI image whose layer is `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm`.
    Runwasi,
    /// An ordinary OCI or Docker image (tar layers) for the wasi/wasm platform.
    Compat,
}

impl Image {
    /// Every blob this image needs kept.
    pub fn blobs(&self) -> impl Iterator<Item = &String> {
        [&self.manifest_digest, &self.config_digest, &self.module_digest].into_iter().chain(&self.layer_digests)
    }

    /// Compat images carry a filesystem, unpacked once per image id.
    pub fn has_rootfs(&self) -> bool {
        self.format == ImageFormat::Compat
    }
}

/// The fewest hex digits of an image id that [`Store::find`] takes as an id
/// prefix rather than a name: docker's short image id.
const MIN_ID_PREFIX: usize = 12;

pub struct Store {
    dir: PathBuf,
    images: Mutex<BTreeMap<String, Image>>,
    /// Pulls hold it shared while they bring blobs in that are not indexed
    /// yet; garbage collection holds it alone, so it never takes those blobs.
    collecting: tokio::sync::RwLock<()>,
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
            collecting: tokio::sync::RwLock::new(()),
            persist: tokio::sync::Mutex::new(()),
        })
    }

    /// Keeps what a pull brings in safe from garbage collection until the
    /// guard is dropped, which must be after the image is indexed.
    pub async fn pulling(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.collecting.read().await
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a compat image's filesystem is unpacked.
    pub fn rootfs_path(&self, image_id: &Digest) -> PathBuf {
        self.dir.join("rootfs").join(image_id.hex())
    }

    /// A fresh directory to unpack into before `rootfs_path` is published by rename.
    pub fn rootfs_staging(&self) -> PathBuf {
        self.dir.join("tmp").join(format!("rootfs.{}", rand::random::<u64>()))
    }

    /// Where the blob `digest` is (or would be) stored: `blobs/sha256/<hex>`,
    /// as in an OCI image layout (image-layout.md, "Blobs").
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs").join(digest_path(digest))
    }

    pub async fn has_blob(&self, digest: &Digest) -> bool {
        tokio::fs::metadata(self.blob_path(digest)).await.is_ok_and(|meta| meta.is_file())
    }

    /// Starts writing a blob that must hash to `digest` and may hold at most `limit` bytes.
    pub async fn blob_writer(&self, digest: &Digest, limit: u64) -> Result<BlobWriter> {
        let target = self.blob_path(digest);
        let tmp = self.dir.join("tmp").join(format!("{}.{}", digest.hex(), rand::random::<u64>()));
        let file = tokio::fs::File::create(&tmp).await.io_context(|| format!("creating {}", tmp.display()))?;
        Ok(BlobWriter {
            file,
            tmp,
            target,
            expected: digest.clone(),
            hasher: Sha256::new(),
            header: Vec::with_capacity(8),
            written: 0,
            limit,
            done: false,
        })
    }

    /// Stores bytes already in memory (manifests, configs).
    pub async fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let mut writer = self.blob_writer(digest, u64::MAX).await?;
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

    /// Finds an image by id (`sha256:<hex>`), by tag, by repo digest, or by a
    /// unique prefix of its id's hex (with or without `sha256:`) of 12 or more
    /// hex digits, resolved by [`crate::ids::resolve`]. `name` must already be
    /// normalised.
    ///
    /// Ids and names share one namespace here (`cafe` or `deadbeef` are
    /// repository names too), so a name counts as an id prefix only from 12
    /// hex digits on: the short image id docker prints. A name that is a tag
    /// or repo digest of an image is that image, whatever it looks like.
    pub fn find(&self, name: &str) -> Option<Image> {
        let images = self.images.lock().unwrap();
        if let Some(image) = images.get(name) {
            return Some(image.clone());
        }
        if let Some(image) =
            images.values().find(|image| image.repo_tags.iter().chain(&image.repo_digests).any(|r| r == name))
        {
            return Some(image.clone());
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= MIN_ID_PREFIX && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            // The index is keyed by id, `sha256:<hex>`.
            return crate::ids::resolve(&*images, &format!("sha256:{hex}")).cloned();
        }
        None
    }

    /// Records a pulled image. Its tags move to it from any image that had them,
    /// and an image left with neither tags nor digests is dropped. Returns the
    /// image as stored (names merged) and the dropped images.
    pub async fn insert(&self, mut image: Image) -> Result<(Image, Vec<Image>)> {
        let id = image.id.clone();
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
        let stored =
            self.get(&id).ok_or_else(|| Error::internal("indexing", anyhow::anyhow!("image {id} vanished")))?;
        Ok((stored, dropped))
    }

    /// Removes an image from the index; `None` when it was not there.
    pub async fn remove(&self, id: &str) -> Result<Option<Image>> {
        let removed = self.images.lock().unwrap().remove(id);
        if removed.is_some() {
            self.persist().await?;
        }
        Ok(removed)
    }

    /// Deletes blobs and unpacked filesystems that no image references;
    /// returns the blob digests deleted.
    pub async fn collect_garbage(&self) -> Result<Vec<String>> {
        let _alone = self.collecting.write().await;
        let (blobs, rootfs): (HashSet<String>, HashSet<String>) = {
            let images = self.images.lock().unwrap();
            let blobs = images.values().flat_map(|image| image.blobs().cloned()).collect();
            let rootfs = images
                .values()
                .filter(|i| i.has_rootfs())
                .map(|i| i.id.trim_start_matches("sha256:").to_owned())
                .collect();
            (blobs, rootfs)
        };
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<String>> {
            let mut deleted = Vec::new();
            for name in list_dir(&dir.join("blobs").join("sha256"))? {
                let digest = format!("sha256:{name}");
                if !blobs.contains(&digest) {
                    let path = dir.join("blobs").join("sha256").join(&name);
                    std::fs::remove_file(&path).io_context(|| format!("deleting unreferenced blob {digest}"))?;
                    deleted.push(digest);
                }
            }
            for name in list_dir(&dir.join("rootfs"))? {
                if !rootfs.contains(&name) {
                    let path = dir.join("rootfs").join(&name);
                    std::fs::remove_dir_all(&path).io_context(|| format!("deleting {}", path.display()))?;
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
        let json = serde_json::to_vec_pretty(&images).map_err(|e| Error::internal("encoding the image index", e))?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir.join("index.json"), &json))
            .await
            .map_err(|e| Error::internal("writing the image index", e))?
    }
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).io_context(|| format!("listing {}", dir.display()))?;
    Ok(entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
}

fn merge(into: &mut Vec<String>, from: &[String]) {
    for item in from {
        if !into.contains(item) {
            into.push(item.clone());
        }
    }
}

fn load(dir: &Path) -> Result<BTreeMap<String, Image>> {
    for sub in ["blobs/sha256", "rootfs", "tmp"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).io_context(|| format!("creating {}", path.display()))?;
    }
    // Whatever is in tmp/ is a write that never committed.
    let tmp = dir.join("tmp");
    for entry in std::fs::read_dir(&tmp).io_context(|| format!("listing {}", tmp.display()))?.flatten() {
        let path = entry.path();
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
    let index = dir.join("index.json");
    let images: Vec<Image> = match std::fs::read(&index) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("parsing the image index {}", index.display()), e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::internal(format!("reading {}", index.display()), e)),
    };
    let mut kept = BTreeMap::new();
    for image in images {
        let blobs_whole = image
            .blobs()
            .all(|digest| digest.parse().is_ok_and(|digest| dir.join("blobs").join(digest_path(&digest)).is_file()));
        let rootfs_whole = !image.has_rootfs()
            || image.id.parse::<Digest>().is_ok_and(|id| dir.join("rootfs").join(id.hex()).is_dir());
        let whole = blobs_whole && rootfs_whole;
        if whole {
            kept.insert(image.id.clone(), image);
        } else {
            tracing::warn!(image = %image.id, "dropping image whose blobs are missing from the store");
        }
    }
    Ok(kept)
}

/// `sha256:<hex>` → `sha256/<hex>`: a [`Digest`] holds only `[a-z0-9:]`,
/// so a digest from a registry can never name a path outside the store.
fn digest_path(digest: &Digest) -> PathBuf {
    Path::new(digest.algorithm()).join(digest.hex())
}

/// Writes a blob to a temporary file while hashing it; `commit` verifies and
/// publishes it. Dropped without a successful `commit` (or after `discard`),
/// its temporary file is removed, whatever path led there.
pub struct BlobWriter {
    file: tokio::fs::File,
    tmp: PathBuf,
    target: PathBuf,
    expected: Digest,
    hasher: Sha256,
    header: Vec<u8>,
    written: u64,
    limit: u64,
    /// The temporary file is gone: renamed into place, or removed.
    done: bool,
}

impl BlobWriter {
    /// The first bytes written, up to 8: enough to tell a wasm module from a component.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Whether more than the limit was offered: the write was refused.
    pub fn over_limit(&self) -> bool {
        self.written > self.limit
    }

    /// Verifies the digest, makes the blob durable and moves it into place.
    pub async fn commit(mut self) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let actual = Digest::from_sha256(std::mem::take(&mut self.hasher).finalize().into());
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
            return Err(Error::internal(format!("storing blob {}", self.expected), e));
        }
        self.done = true;
        Ok(())
    }

    /// Removes the temporary file now (rather than when the writer is dropped).
    pub async fn discard(&mut self) {
        self.done = true;
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

impl Drop for BlobWriter {
    /// A writer that was neither committed nor discarded (its future was
    /// cancelled, or an error returned early) removes its temporary file: on
    /// the blocking pool inside a runtime, so no async worker waits on the
    /// disk, else in place. A runtime shutting down may refuse the task; the
    /// store's start (`load`) empties `tmp/` then.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let tmp = std::mem::take(&mut self.tmp);
        let remove = move || {
            if let Err(e) = std::fs::remove_file(&tmp)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %tmp.display(), error = %e, "cannot remove an unfinished blob");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

impl AsyncWrite for BlobWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.written.saturating_add(buf.len() as u64) > this.limit {
            this.written = this.written.saturating_add(buf.len() as u64);
            return Poll::Ready(Err(io::Error::other(format!(
                "blob {} is larger than the limit of {} bytes",
                this.expected, this.limit
            ))));
        }
        let n = std::task::ready!(Pin::new(&mut this.file).poll_write(cx, buf))?;
        this.hasher.update(&buf[..n]);
        this.written += n as u64;
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
        let dir = std::env::temp_dir().join(format!("wasmrun-store-{name}-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_blob_is_stored_under_its_algorithm_and_hex() {
        let good = Digest::sha256(b"x");
        assert_eq!(digest_path(&good), Path::new("sha256").join(good.hex()));
    }

    #[tokio::test]
    async fn a_blob_that_does_not_match_its_digest_is_not_stored() {
        let store = Store::open(temp_dir("mismatch")).await.unwrap();
        let digest = Digest::sha256(b"expected");
        let err = store.put_blob(&digest, b"something else").await.unwrap_err();
        assert!(matches!(err, Error::DataLoss(_)), "{err}");
        assert!(!store.has_blob(&digest).await);
        assert_eq!(std::fs::read_dir(store.dir().join("tmp")).unwrap().count(), 0);

        let mut writer = store.blob_writer(&digest, 4).await.unwrap();
        let err = tokio::io::AsyncWriteExt::write_all(&mut writer, b"expected").await.unwrap_err();
        assert!(writer.over_limit(), "{err}");
        writer.discard().await;
        assert!(!store.has_blob(&digest).await);

        store.put_blob(&digest, b"expected").await.unwrap();
        assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), b"expected");
    }

    #[tokio::test]
    async fn a_writer_dropped_unfinished_removes_its_temporary_file() {
        let store = Store::open(temp_dir("dropped")).await.unwrap();
        let digest = Digest::sha256(b"partial");
        let mut writer = store.blob_writer(&digest, 1024).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"part").await.unwrap();
        assert_eq!(std::fs::read_dir(store.dir().join("tmp")).unwrap().count(), 1);
        drop(writer);
        // The removal runs on the blocking pool: wait for it, boundedly.
        for _ in 0..1000 {
            if std::fs::read_dir(store.dir().join("tmp")).unwrap().count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::read_dir(store.dir().join("tmp")).unwrap().count(), 0, "the partial blob stayed");
        assert!(!store.has_blob(&digest).await);

        // A committed writer's file is the blob: dropping it removes nothing.
        store.put_blob(&digest, b"partial").await.unwrap();
        assert!(store.has_blob(&digest).await);
    }

    #[tokio::test]
    async fn the_index_survives_reopening_and_tags_move() {
        let dir = temp_dir("index");
        let store = Store::open(dir.clone()).await.unwrap();
        let mut images = Vec::new();
        for content in [&b"one"[..], b"two"] {
            let digest = Digest::sha256(content);
            store.put_blob(&digest, content).await.unwrap();
            let blob = digest.to_string();
            images.push(Image {
                id: blob.clone(),
                repo_tags: vec!["r/x:latest".into()],
                repo_digests: vec![],
                manifest_digest: blob.clone(),
                config_digest: blob.clone(),
                format: ImageFormat::WasmArtifact,
                layer_digests: vec![blob.clone()],
                module_digest: blob,
                module_kind: WasmKind::Module,
                module_path: String::new(),
                entrypoint: vec!["x".into()],
                cmd: vec![],
                env: vec![],
                working_dir: String::new(),
                manifest_media_type: String::new(),
                config_media_type: String::new(),
                size: 3,
                pulled_at: 0,
            });
        }
        store.insert(images[0].clone()).await.unwrap();
        // The tag moves to the second image; the first, left with no name, goes.
        let (_, dropped) = store.insert(images[1].clone()).await.unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].id, images[0].id);

        let reopened = Store::open(dir).await.unwrap();
        assert_eq!(reopened.list(), vec![images[1].clone()]);
        assert_eq!(reopened.find("r/x:latest").unwrap().id, images[1].id);
        assert_eq!(reopened.find(&images[1].id[..20]).unwrap().id, images[1].id);
        assert_eq!(reopened.find(&images[1].id[7..19]).unwrap().id, images[1].id, "12 hex digits, no sha256:");
        assert_eq!(reopened.find(&images[1].id[7..18]), None, "11 hex digits are a name, not an id");

        reopened.remove(&images[1].id).await.unwrap();
        let deleted = reopened.collect_garbage().await.unwrap();
        assert_eq!(deleted.len(), 2);
        assert!(reopened.list().is_empty());
    }
}
