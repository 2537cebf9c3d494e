//! Compiled code, cached in memory and on disk.
//!
//! On disk a module's native code lives at `<cache>/<engine fingerprint>/<module
//! digest hex>.cwasm`. The fingerprint hashes everything that makes compiled
//! code incompatible (wasmtime version, target, engine settings), so a changed
//! engine never loads stale code: it misses and compiles again. Keying by the
//! module's own digest, not the image's, shares code between images that ship
//! the same module.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::guest::GuestState;
use crate::error::{Error, Result};

/// A module ready to instantiate: compiled, and its imports resolved against WASI.
pub struct Compiled {
    pub digest: String,
    pub(super) pre: wasmtime::InstancePre<GuestState>,
}

/// Where a container's compiled code came from; shown in ContainerStatus' verbose info.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleSource {
    /// Compiled for this container.
    Compiled,
    /// Loaded from the on-disk cache (memory-mapped, no compilation).
    DiskCache,
    /// Already loaded by an earlier container.
    Memory,
}

pub(super) struct Cache {
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<Compiled>>>,
}

impl Cache {
    pub fn new(engine: &wasmtime::Engine, root: &Path) -> Result<Self> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = root.join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::internal(format!("creating {}", dir.display()), e))?;
        Ok(Self {
            dir,
            loaded: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub async fn get_or_compile(
        &self,
        engine: &wasmtime::Engine,
        linker: &wasmtime::Linker<GuestState>,
        digest: &str,
        wasm_path: &Path,
    ) -> Result<(Arc<Compiled>, ModuleSource)> {
        if let Some(compiled) = self.loaded.lock().unwrap().get(digest) {
            return Ok((compiled.clone(), ModuleSource::Memory));
        }
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("unsupported module digest {digest:?}"))
            })?;
        let cached = self.dir.join(format!("{hex}.cwasm"));
        let (module, source) = tokio::task::spawn_blocking({
            let engine = engine.clone();
            let wasm_path = wasm_path.to_owned();
            let digest = digest.to_owned();
            move || load_or_compile(&engine, &digest, &wasm_path, &cached)
        })
        .await
        .map_err(|e| Error::internal(format!("compiling module {digest}"), e))??;

        match module.get_export("_start") {
            Some(wasmtime::ExternType::Func(ty))
                if ty.params().len() == 0 && ty.results().len() == 0 => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "module {digest} has no `_start` function to run: a WASI command module exports `_start: () -> ()`"
                )));
            }
        }
        let pre = linker.instantiate_pre(&module).map_err(|e| {
            Error::InvalidArgument(format!(
                "module {digest} cannot be linked: {e:#} (wasmrun provides WASI preview 1, `wasi_snapshot_preview1`)"
            ))
        })?;
        let compiled = Arc::new(Compiled {
            digest: digest.to_owned(),
            pre,
        });
        let compiled = self
            .loaded
            .lock()
            .unwrap()
            .entry(digest.to_owned())
            .or_insert(compiled)
            .clone();
        Ok((compiled, source))
    }

    /// Drops a module from memory and disk; running guests keep their own reference.
    pub async fn evict(&self, digest: &str) {
        self.loaded.lock().unwrap().remove(digest);
        if let Some(hex) = digest
            .strip_prefix("sha256:")
            .filter(|hex| !hex.contains('/'))
        {
            let _ = tokio::fs::remove_file(self.dir.join(format!("{hex}.cwasm"))).await;
        }
    }
}

fn load_or_compile(
    engine: &wasmtime::Engine,
    digest: &str,
    wasm_path: &Path,
    cached: &Path,
) -> Result<(wasmtime::Module, ModuleSource)> {
    if cached.is_file() {
        // SAFETY: the file was written by `Module::serialize` of an engine with
        // this same fingerprint, and published by an atomic rename, so it is whole.
        match unsafe { wasmtime::Module::deserialize_file(engine, cached) } {
            Ok(module) => return Ok((module, ModuleSource::DiskCache)),
            Err(e) => {
                tracing::warn!(%digest, path = %cached.display(), error = %format!("{e:#}"), "discarding unusable compiled code");
                let _ = std::fs::remove_file(cached);
            }
        }
    }
    let wasm = std::fs::read(wasm_path).map_err(|e| {
        Error::internal(
            format!("reading module {digest} from {}", wasm_path.display()),
            e,
        )
    })?;
    let started = std::time::Instant::now();
    let module = wasmtime::Module::new(engine, &wasm).map_err(|e| {
        Error::InvalidArgument(format!("module {digest} is not valid WebAssembly: {e:#}"))
    })?;
    tracing::info!(%digest, bytes = wasm.len(), elapsed = ?started.elapsed(), "compiled module");
    match module.serialize() {
        Ok(bytes) => {
            if let Err(e) = crate::durable::write_atomically(cached, &bytes) {
                tracing::warn!(%digest, error = %e, "could not cache compiled code");
            }
        }
        Err(e) => {
            tracing::warn!(%digest, error = %format!("{e:#}"), "could not serialize compiled code")
        }
    }
    Ok((module, ModuleSource::Compiled))
}
