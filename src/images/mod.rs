//! Images: pulling wasm images, naming them, keeping them on disk, and
//! finding the program a container runs.

mod auth;
mod format;
pub mod hosts;
mod pull;
mod store;
mod unpack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::Reference;

pub use pull::{Credentials, Limits, RegistryOptions};
pub use store::{Image, ImageFormat};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::wasm::{Engine, WasmKind, WasmSource};

/// How pulls reach registries.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Per-registry settings (plain http, CA, mirrors), by `host[:port]`.
    pub registries: HashMap<String, RegistryOptions>,
    pub limits: Limits,
    /// A docker config.json with default credentials per registry.
    pub auth_file: Option<PathBuf>,
    /// containerd's hosts directory (`registry_config_path`); see [`hosts`].
    pub registry_config: Option<PathBuf>,
    /// How many pulls run at once (`max_concurrent_pulls`, at least 1).
    pub max_concurrent_pulls: usize,
}

/// The image service: every image operation the CRI needs, on one store.
pub struct Images {
    store: store::Store,
    puller: pull::Puller,
    engine: Arc<Engine>,
    limits: Limits,
    auth_file: Option<PathBuf>,
    /// One pull at a time per reference: a second pull of the same image waits
    /// for the first and then finds its blobs present.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Turns to pull (`max_concurrent_pulls`): a pull downloads, unpacks and
    /// compiles, so ten large ones at once would take the node's disk,
    /// network and memory; more wait.
    turns: tokio::sync::Semaphore,
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

/// The wasm binary a container runs, ready for `Engine::prepare`.
pub struct Program {
    pub digest: String,
    pub kind: WasmKind,
    pub source: WasmSource,
}

impl Images {
    pub async fn open(root: &Path, options: PullOptions, engine: Arc<Engine>) -> Result<Self> {
        Ok(Self {
            store: store::Store::open(root.join("images")).await?,
            puller: pull::Puller::new(&options.registries, options.limits, options.registry_config),
            engine,
            limits: options.limits,
            auth_file: options.auth_file,
            pulls: Mutex::new(HashMap::new()),
            turns: tokio::sync::Semaphore::new(options.max_concurrent_pulls.max(1)),
        })
    }

    /// Pulls `name`, compiles its program, and records it; returns the stored
    /// image. A pull that fails leaves no image behind, and no blob of its own.
    ///
    /// The pull runs as a task of its own that the caller only awaits: a
    /// caller that goes away (kubelet's deadline, a pod deleted mid-pull)
    /// does not cut it short, so it still either completes into the store or
    /// fails and cleans up after itself; a later pull of the same image waits
    /// for it and finds its blobs.
    ///
    /// The sources tried are the registry's mirrors, from containerd's hosts
    /// directory (`registry_config_path`, read at every pull; see [`hosts`]
    /// for its rules and `Puller::sources` for how it combines with
    /// `[registries]`), then the registry. An image no source could give
    /// fails with [`Error::Unfetchable`].
    pub async fn pull(self: &Arc<Self>, name: &str, credentials: &Credentials) -> Result<Image> {
        let reference = parse_reference(name)?;
        let images = Arc::clone(self);
        let credentials = credentials.clone();
        tokio::spawn(async move { images.pull_detached(reference, credentials).await })
            .await
            .map_err(|e| Error::internal(format!("pulling {name}"), e))?
    }

    /// The pull itself, one at a time per reference and at most
    /// `max_concurrent_pulls` at once; see [`Images::pull`].
    async fn pull_detached(&self, reference: Reference, credentials: Credentials) -> Result<Image> {
        let key = normalized(&reference);
        let lock = self.pulls.lock().unwrap().entry(key.clone()).or_default().clone();
        let pulled = {
            let _one_at_a_time = lock.lock().await;
            // Never closed: the semaphore lives as long as `self`.
            let _turn = self.turns.acquire().await.map_err(|e| Error::internal("waiting for a turn to pull", e))?;
            let _not_garbage_yet = self.store.pulling().await;
            self.pull_once(&reference, &credentials).await
        };
        {
            let mut pulls = self.pulls.lock().unwrap();
            // The map's and ours: nobody else waits on this reference.
            if Arc::strong_count(&lock) == 2 {
                pulls.remove(&key);
            }
        }
        match pulled {
            Ok((image, dropped)) => {
                tracing::info!(image = %key, id = %image.id, format = ?image.format, "pulled image");
                if !dropped.is_empty() {
                    // Its tag moved here from images now without a name.
                    let deleted = self.store.collect_garbage().await?;
                    self.engine.evict(&deleted).await;
                }
                Ok(image)
            }
            Err(e) => {
                if let Err(gc) = self.store.collect_garbage().await {
                    tracing::warn!(error = %gc, "could not clean up after a failed pull");
                }
                Err(e)
            }
        }
    }

    /// Pulls and indexes; returns the image and the images it took the last name of.
    async fn pull_once(&self, reference: &Reference, credentials: &Credentials) -> Result<(Image, Vec<Image>)> {
        let name = reference.whole();
        let credentials = match &self.auth_file {
            Some(file) if credentials.is_empty() => {
                auth::from_file(file, reference.registry()).await?.unwrap_or_default()
            }
            _ => credentials.clone(),
        };
        let fetched = self.puller.fetch(&self.store, reference, &credentials).await?;
        let image_config = match fetched.config.media_type.as_str() {
            format::WASM_CONFIG_V0 | format::WASM_CONFIG_V1 => format::ImageConfig::default(),
            _ => format::parse_config(&name, &fetched.config_json)?,
        };
        let process = image_config.config;
        let repository = format!("{}/{}", reference.registry(), reference.repository());
        let mut image = Image {
            id: fetched.config.digest.clone(),
            repo_tags: reference.tag().map(|tag| vec![format!("{repository}:{tag}")]).unwrap_or_default(),
            repo_digests: vec![format!("{repository}@{}", fetched.manifest_digest)],
            manifest_digest: fetched.manifest_digest,
            config_digest: fetched.config.digest.clone(),
            format: ImageFormat::WasmArtifact,
            layer_digests: Vec::new(),
            module_digest: String::new(),
            module_kind: WasmKind::Module,
            module_path: String::new(),
            // A wasm artifact has no entrypoint: argv[0] names the program after its repository.
            entrypoint: vec![reference.repository().rsplit('/').next().unwrap_or_default().to_owned()],
            cmd: Vec::new(),
            env: process.env,
            working_dir: process.working_dir,
            manifest_media_type: fetched.manifest_media_type,
            config_media_type: fetched.config.media_type.clone(),
            size: fetched.size,
            pulled_at: crate::clock::now_nanos(),
        };
        match fetched.layout {
            format::Layout::Artifact { format, layer } => {
                let header = pull::read_header(&self.store.blob_path(&layer.digest.parse()?)).await?;
                image.module_kind = WasmKind::detect(&header).ok_or_else(|| {
                    Error::InvalidArgument(format!("image {name}: layer {} is not WebAssembly", layer.digest))
                })?;
                image.format = format;
                image.layer_digests = vec![layer.digest.clone()];
                image.module_digest = layer.digest;
            }
            format::Layout::Compat { layers, smart } => {
                image.format = ImageFormat::Compat;
                image.layer_digests = layers.iter().map(|layer| layer.digest.clone()).collect();
                image.entrypoint = process.entrypoint;
                image.cmd = process.cmd;
                self.unpack_rootfs(&name, &image.id, &layers).await?;
                let program = match image.entrypoint.iter().chain(&image.cmd).next().cloned() {
                    Some(argv0) => self
                        .read_program(&image, &argv0, &image.working_dir)
                        .await
                        .and_then(|found| found.ok_or_else(|| no_program(&name, &argv0, &image.working_dir))),
                    None => Err(Error::InvalidArgument(format!(
                        "image {name}: a compat image needs an Entrypoint or Cmd naming its .wasm program"
                    ))),
                };
                let (path, bytes, kind) = match program {
                    // crun's compat-smart: wasm only if the entrypoint is a
                    // wasm binary; any other image is not a wasm image. The
                    // failed pull's garbage collection removes what it unpacked.
                    Err(Error::InvalidArgument(why)) if smart => {
                        return Err(Error::NotWasm(format!(
                            "image {name} is not a wasm image: it is annotated {}=compat-smart, and its \
                             entrypoint is not a wasm binary ({why})",
                            format::VARIANT_ANNOTATION
                        )));
                    }
                    program => program?,
                };
                let digest = Digest::sha256(&bytes);
                self.store.put_blob(&digest, &bytes).await?;
                image.module_path = path;
                image.module_kind = kind;
                image.module_digest = digest.to_string();
            }
        }
        // Compile now, so that the first container starts without compiling
        // and a program that cannot run is refused here.
        let path = self.store.blob_path(&image.module_digest.parse()?);
        self.engine
            .prepare(&image.module_digest, image.module_kind, WasmSource::File(path))
            .await
            .map_err(|e| e.about_image(&name))?;

        self.store.insert(image).await
    }

    /// Unpacks a compat image's layers once per image id, publishing the tree
    /// by rename so that a crash never leaves half a filesystem in place.
    async fn unpack_rootfs(&self, name: &str, id: &str, layers: &[pull::Descriptor]) -> Result<()> {
        let target = self.store.rootfs_path(&id.parse()?);
        if tokio::fs::metadata(&target).await.is_ok_and(|meta| meta.is_dir()) {
            return Ok(());
        }
        let mut plan = Vec::new();
        for layer in layers {
            plan.push(unpack::Layer {
                digest: layer.digest.clone(),
                path: self.store.blob_path(&layer.digest.parse()?),
                compression: unpack::Compression::from_media_type(&layer.media_type)
                    .map_err(|e| e.about_image(name))?,
            });
        }
        let staging = self.store.rootfs_staging();
        let unpacked = tokio::task::spawn_blocking({
            // The staging directory is removed on failure by the same blocking
            // task, so that no exit path of the pull can leave it behind.
            move || -> Result<()> {
                let unpacked = std::fs::create_dir_all(&staging)
                    .map_err(|e| Error::internal(format!("creating {}", staging.display()), e))
                    .and_then(|()| unpack::unpack_layers(&plan, &staging))
                    .and_then(|()| {
                        std::fs::rename(&staging, &target)
                            .map_err(|e| Error::internal(format!("publishing {}", target.display()), e))
                    });
                if unpacked.is_err() {
                    let _ = std::fs::remove_dir_all(&staging);
                }
                unpacked
            }
        })
        .await
        .map_err(|e| Error::internal(format!("unpacking {name}"), e))?;
        unpacked.map_err(|e| e.about_image(name))
    }

    /// Reads the program `argv0` names inside a compat image's filesystem,
    /// through cap-std so that no path or link in the image can reach outside
    /// it. `None` when nothing is at that path.
    async fn read_program(
        &self,
        image: &Image,
        argv0: &str,
        working_dir: &str,
    ) -> Result<Option<(String, Vec<u8>, WasmKind)>> {
        let rootfs = self.store.rootfs_path(&image.id.parse()?);
        let path = program_path(argv0, working_dir);
        let limit = self.limits.max_blob_bytes;
        let image_name = image.repo_tags.first().cloned().unwrap_or_else(|| image.id.clone());
        tokio::task::spawn_blocking(move || {
            let read = || -> std::io::Result<Vec<u8>> {
                use std::io::Read;
                let dir = cap_std::fs::Dir::open_ambient_dir(&rootfs, cap_std::ambient_authority())?;
                let mut bytes = Vec::new();
                dir.open(path.trim_start_matches('/'))?.take(limit + 1).read_to_end(&mut bytes)?;
                Ok(bytes)
            };
            let bytes = match read() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "image {image_name}: cannot read its program {path:?}: {e}"
                    )));
                }
            };
            if bytes.len() as u64 > limit {
                return Err(Error::ResourceExhausted(format!(
                    "image {image_name}: program {path:?} is over the limit of {limit} bytes (max_blob_bytes)"
                )));
            }
            let kind = WasmKind::detect(&bytes).ok_or_else(|| {
                Error::InvalidArgument(format!("image {image_name}: {path:?} is not a WebAssembly module or component"))
            })?;
            Ok(Some((path, bytes, kind)))
        })
        .await
        .map_err(|e| Error::internal("reading a program from an image", e))?
    }

    /// The program a container of `image` runs when its argv[0] is `argv0`: in
    /// a compat image, the file argv[0] names; in an artifact, its one module.
    pub async fn program(&self, image: &Image, argv0: &str, working_dir: &str) -> Result<Program> {
        let default = || -> Result<Program> {
            Ok(Program {
                digest: image.module_digest.clone(),
                kind: image.module_kind,
                source: WasmSource::File(self.store.blob_path(&image.module_digest.parse()?)),
            })
        };
        if !image.has_rootfs() || program_path(argv0, working_dir) == image.module_path {
            return default();
        }
        self.find_program(image, argv0, working_dir).await?.ok_or_else(|| {
            let image_name = image.repo_tags.first().cloned().unwrap_or_else(|| image.id.clone());
            no_program(&image_name, argv0, working_dir)
        })
    }

    /// The program at `argv0` (absolute, or relative to `working_dir`) in a
    /// compat image's filesystem, as an exec finds it: `None` when the image
    /// has no filesystem or nothing is at that path. Errors: InvalidArgument
    /// for a file that is not a WebAssembly binary or cannot be read;
    /// ResourceExhausted over `max_blob_bytes`.
    pub async fn find_program(&self, image: &Image, argv0: &str, working_dir: &str) -> Result<Option<Program>> {
        if !image.has_rootfs() {
            return Ok(None);
        }
        let found = self.read_program(image, argv0, working_dir).await?;
        Ok(found.map(|(_, bytes, kind)| Program {
            digest: Digest::sha256(&bytes).to_string(),
            kind,
            source: WasmSource::Bytes(bytes),
        }))
    }

    /// The unpacked filesystem of a compat image, which its guests see as `/`.
    pub fn rootfs(&self, image: &Image) -> Result<Option<PathBuf>> {
        if image.has_rootfs() { Ok(Some(self.store.rootfs_path(&image.id.parse()?))) } else { Ok(None) }
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
            .ok_or_else(|| Error::NotFound(format!("image {} not found: pull it first", crate::error::quoted(name))))
    }

    pub fn list(&self, filter: Option<&str>) -> Result<Vec<Image>> {
        match filter {
            Some(name) if !name.is_empty() => Ok(self.status(name)?.into_iter().collect()),
            _ => Ok(self.store.list()),
        }
    }

    /// Removes an image, every blob and filesystem no other image needs, and
    /// their compiled code. Removing an absent image is not an error.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let Some(image) = self.status(name)? else {
            return Ok(());
        };
        self.store.remove(&image.id).await?;
        let deleted = self.store.collect_garbage().await?;
        self.engine.evict(&deleted).await;
        tracing::info!(image = %image.id, blobs = deleted.len(), "removed image");
        Ok(())
    }

    pub async fn fs_usage(&self) -> Result<FsUsage> {
        let dir = self.store.dir().to_owned();
        let (used_bytes, inodes_used) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || disk_usage(&dir)
        })
        .await
        .map_err(|e| Error::internal("measuring the image store", e))??;
        Ok(FsUsage { mountpoint: dir, used_bytes, inodes_used, timestamp: crate::clock::now_nanos() })
    }
}

/// A program's absolute path in the image: argv[0] as is when absolute, else
/// under the working directory.
/// InvalidArgument: image `image_name` has no file where its argv[0] points.
fn no_program(image_name: &str, argv0: &str, working_dir: &str) -> Error {
    let path = program_path(argv0, working_dir);
    Error::InvalidArgument(format!("image {image_name}: cannot read its program {path:?}: no such file"))
}

fn program_path(argv0: &str, working_dir: &str) -> String {
    if argv0.starts_with('/') { argv0.to_owned() } else { format!("{}/{argv0}", working_dir.trim_end_matches('/')) }
}

fn parse_reference(name: &str) -> Result<Reference> {
    if name.trim().is_empty() {
        return Err(Error::InvalidArgument("image name is empty".into()));
    }
    Reference::try_from(name)
        .map_err(|e| Error::InvalidArgument(format!("image name {name:?} is not a valid reference: {e}")))
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
        assert_eq!(n("127.0.0.1:5000/e2e/hello:v1"), "127.0.0.1:5000/e2e/hello:v1");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(n(&format!("r.io/x@{digest}")), format!("r.io/x@{digest}"));
        assert!(parse_reference("").is_err());
        assert!(parse_reference("has spaces:tag").is_err());
        assert!(parse_reference("r.io/x@sha256:nothex").is_err());
    }

    #[test]
    fn program_paths_resolve_against_the_working_dir() {
        assert_eq!(program_path("/app.wasm", "/srv"), "/app.wasm");
        assert_eq!(program_path("app.wasm", "/srv/"), "/srv/app.wasm");
        assert_eq!(program_path("app.wasm", ""), "/app.wasm");
    }
}
