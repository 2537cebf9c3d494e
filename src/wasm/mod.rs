//! The wasm engine: one shared wasmtime `Engine`, a compiled-code cache, and
//! the executor guests run on.
//!
//! Guests run as async tasks on a tokio runtime of their own, so that a guest
//! that spins can never hold up the CRI server. Epoch interruption makes every
//! guest yield to that executor each [`EPOCH_TICK`]; a stop request is seen at
//! the next yield, even in an infinite loop.

mod compile;
mod guest;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use compile::{Compiled, ModuleSource};
pub use guest::{Exit, ExitReason, ExitWaiter, Guest, GuestSpec, Mount, Usage};

use crate::error::{Error, Result};

/// How often a running guest yields to the executor.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

pub struct Engine {
    engine: wasmtime::Engine,
    linker: wasmtime::Linker<guest::GuestState>,
    cache: compile::Cache,
    guests: tokio::runtime::Handle,
}

impl Engine {
    /// Creates the engine, its compiled-code cache under `cache_dir`, the epoch
    /// ticker and the guest executor.
    pub fn new(cache_dir: &Path) -> Result<Arc<Self>> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = wasmtime::Engine::new(&config).map_err(|e| {
            Error::internal("creating the wasmtime engine", anyhow::anyhow!("{e:#}"))
        })?;

        let mut linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut guest::GuestState| {
            &mut state.wasi
        })
        .map_err(|e| Error::internal("linking WASI preview 1", anyhow::anyhow!("{e:#}")))?;

        let cache = compile::Cache::new(&engine, cache_dir)?;
        spawn_epoch_ticker(&engine)?;
        let guests = spawn_guest_executor()?;
        Ok(Arc::new(Self {
            engine,
            linker,
            cache,
            guests,
        }))
    }

    /// The compiled form of the module stored at `wasm_path` with digest `digest`,
    /// from memory, from the disk cache, or compiled now (off the async workers).
    pub async fn prepare(
        &self,
        digest: &str,
        wasm_path: &Path,
    ) -> Result<(Arc<Compiled>, ModuleSource)> {
        self.cache
            .get_or_compile(&self.engine, &self.linker, digest, wasm_path)
            .await
    }

    /// Forgets the compiled code of modules no image uses any more.
    pub async fn evict(&self, digests: &[String]) {
        for digest in digests {
            self.cache.evict(digest).await;
        }
    }

    /// Starts a guest. Returns once its WASI context is built (mounts opened),
    /// so a bad mount fails the call instead of the guest.
    pub async fn start(
        &self,
        compiled: Arc<Compiled>,
        spec: GuestSpec,
        output: crate::logs::GuestOutput,
    ) -> Result<Guest> {
        guest::start(
            &self.engine,
            &self.guests,
            compiled,
            spec,
            output.stdout,
            output.stderr,
            output.done,
        )
        .await
    }

    pub fn cache_dir(&self) -> &Path {
        self.cache.dir()
    }
}

/// One thread moves the engine's epoch forward; every guest's deadline is one tick.
fn spawn_epoch_ticker(engine: &wasmtime::Engine) -> Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
        .map_err(|e| Error::internal("starting the epoch ticker", e))
}

/// A multi-threaded tokio runtime for guests, kept apart from the CRI server's.
fn spawn_guest_executor() -> Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("wasm-guest")
        .enable_all()
        .build()
        .map_err(|e| Error::internal("starting the guest executor", e))?;
    let handle = runtime.handle().clone();
    // The runtime lives as long as the process: park it on a thread of its own,
    // since dropping a runtime inside another runtime's context panics.
    std::thread::Builder::new()
        .name("wasm-executor".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(|e| Error::internal("starting the guest executor", e))?;
    Ok(handle)
}
