//! Compiled code, cached in memory and on disk.
//!
//! On disk a binary's native code lives at `<cache>/<engine fingerprint>/<digest
//! hex>.cwasm`. The fingerprint hashes everything that makes compiled code
//! incompatible (wasmtime version, target, engine settings), so a changed
//! engine never loads stale code: it misses and compiles again. Keying by the
//! binary's own digest, not the image's, shares code between images that ship
//! the same module.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::guest::GuestState;
use super::{Linkers, WasmKind};
use crate::error::{Error, Result};

/// A binary ready to instantiate: compiled, and its imports resolved against WASI.
pub struct Compiled {
    pub digest: String,
    pub(super) program: Program,
}

pub(super) enum Program {
    /// A WASI preview 1 command module, run through `_start`.
    Module(wasmtime::InstancePre<GuestState>),
    /// A WASI 0.2 component, run through `wasi:cli/run`.
    Component(wasmtime_wasi::p2::bindings::CommandPre<GuestState>),
}

/// Where a container's compiled code came from; shown in ContainerStatus' verbose info.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleSource {
    /// Compiled for this call.
    Compiled,
    /// Loaded from the on-disk cache (memory-mapped, no compilation).
    DiskCache,
    /// Already loaded by an earlier call.
    Memory,
}

/// The bytes of a binary to compile, when the cache misses.
pub enum WasmSource {
    /// A verified blob of the image store.
    File(PathBuf),
    /// Bytes already read (and hashed) by the caller.
    Bytes(Vec<u8>),
}

enum Loaded {
    Module(wasmtime::Module),
    Component(wasmtime::component::Component),
}

pub(super) struct Cache {
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<Compiled>>>,
}

impl Cache {
    pub fn new(engine: &wasmtime::Engine, root: &Path) -> Result<Self> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let fingerprint = format!("{:016x}", hasher.finish());
        let dir = root.join(&fingerprint);
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("creating {}", dir.display()), e))?;
        // Code compiled by another engine configuration can never be loaded again.
        for stale in std::fs::read_dir(root).into_iter().flatten().flatten() {
            if stale.file_name() != fingerprint.as_str() && stale.path().is_dir() {
                tracing::info!(dir = %stale.path().display(), "removing compiled code of another engine configuration");
                let _ = std::fs::remove_dir_all(stale.path());
            }
        }
        Ok(Self { dir, loaded: Mutex::new(HashMap::new()) })
    }

    pub async fn get_or_compile(
        &self,
        engine: &wasmtime::Engine,
        linkers: &Linkers,
        digest: &str,
        kind: WasmKind,
        source: WasmSource,
    ) -> Result<(Arc<Compiled>, ModuleSource)> {
        if let Some(compiled) = self.loaded.lock().unwrap().get(digest) {
            return Ok((compiled.clone(), ModuleSource::Memory));
        }
        let cached = self.dir.join(format!("{}.cwasm", digest_hex(digest)?));
        let (loaded, from) = tokio::task::spawn_blocking({
            let engine = engine.clone();
            let digest = digest.to_owned();
            move || load_or_compile(&engine, &digest, kind, source, &cached)
        })
        .await
        .map_err(|e| Error::internal(format!("compiling {digest}"), e))??;

        let program = match loaded {
            Loaded::Module(module) => Program::Module(link_module(linkers, digest, &module)?),
            Loaded::Component(component) => Program::Component(link_component(linkers, digest, &component)?),
        };
        let compiled = Arc::new(Compiled { digest: digest.to_owned(), program });
        let compiled = self.loaded.lock().unwrap().entry(digest.to_owned()).or_insert(compiled).clone();
        Ok((compiled, from))
    }

    /// Drops a binary from memory and disk; running guests keep their own reference.
    pub async fn evict(&self, digest: &str) {
        self.loaded.lock().unwrap().remove(digest);
        if let Ok(hex) = digest_hex(digest) {
            let _ = tokio::fs::remove_file(self.dir.join(format!("{hex}.cwasm"))).await;
        }
    }
}

fn digest_hex(digest: &str) -> Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::InvalidArgument(format!("unsupported wasm digest {digest:?}")))
}

fn link_module(
    linkers: &Linkers,
    digest: &str,
    module: &wasmtime::Module,
) -> Result<wasmtime::InstancePre<GuestState>> {
    match module.get_export("_start") {
        Some(wasmtime::ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {}
        _ => {
            return Err(Error::InvalidArgument(format!(
                "module {digest} has no `_start` function to run: a WASI command module exports `_start: () -> ()`"
            )));
        }
    }
    linkers.module.instantiate_pre(module).map_err(|e| {
        Error::InvalidArgument(format!(
            "module {digest} cannot be linked: {e:#} (wasmrun provides WASI preview 1, `wasi_snapshot_preview1`)"
        ))
    })
}

fn link_component(
    linkers: &Linkers,
    digest: &str,
    component: &wasmtime::component::Component,
) -> Result<wasmtime_wasi::p2::bindings::CommandPre<GuestState>> {
    let pre = linkers.component.instantiate_pre(component).map_err(|e| {
        Error::InvalidArgument(format!(
            "component {digest} cannot be linked: {e:#} (wasmrun provides the WASI 0.2 interfaces)"
        ))
    })?;
    wasmtime_wasi::p2::bindings::CommandPre::new(pre).map_err(|e| {
        Error::InvalidArgument(format!(
            "component {digest} does not export `wasi:cli/run`: {e:#} (only WASI command components can run)"
        ))
    })
}

fn load_or_compile(
    engine: &wasmtime::Engine,
    digest: &str,
    kind: WasmKind,
    source: WasmSource,
    cached: &Path,
) -> Result<(Loaded, ModuleSource)> {
    if cached.is_file() {
        // SAFETY: the file was written by `serialize` of an engine with this same
        // fingerprint, and published by an atomic rename, so it is whole.
        let loaded = match kind {
            WasmKind::Module => unsafe { wasmtime::Module::deserialize_file(engine, cached) }.map(Loaded::Module),
            WasmKind::Component => {
                unsafe { wasmtime::component::Component::deserialize_file(engine, cached) }.map(Loaded::Component)
            }
        };
        match loaded {
            Ok(loaded) => return Ok((loaded, ModuleSource::DiskCache)),
            Err(e) => {
                tracing::warn!(%digest, path = %cached.display(), error = %format!("{e:#}"), "discarding unusable compiled code");
                let _ = std::fs::remove_file(cached);
            }
        }
    }
    let wasm = match source {
        WasmSource::Bytes(bytes) => bytes,
        WasmSource::File(path) => {
            std::fs::read(&path).map_err(|e| Error::internal(format!("reading {digest} from {}", path.display()), e))?
        }
    };
    let started = std::time::Instant::now();
    let invalid = |e: wasmtime::Error| Error::InvalidArgument(format!("{digest} is not valid WebAssembly: {e:#}"));
    let (loaded, serialized) = match kind {
        WasmKind::Module => {
            let module = wasmtime::Module::new(engine, &wasm).map_err(invalid)?;
            let bytes = module.serialize();
            (Loaded::Module(module), bytes)
        }
        WasmKind::Component => {
            let component = wasmtime::component::Component::new(engine, &wasm).map_err(invalid)?;
            let bytes = component.serialize();
            (Loaded::Component(component), bytes)
        }
    };
    tracing::info!(%digest, ?kind, bytes = wasm.len(), elapsed = ?started.elapsed(), "compiled");
    match serialized {
        Ok(bytes) => {
            if let Err(e) = crate::durable::write_atomically(cached, &bytes) {
                tracing::warn!(%digest, error = %e, "could not cache compiled code");
            }
        }
        Err(e) => tracing::warn!(%digest, error = %format!("{e:#}"), "could not serialize compiled code"),
    }
    Ok((loaded, ModuleSource::Compiled))
}
