//! The wasm engine: one shared wasmtime `Engine`, a compiled-code cache, and
//! the executor guests run on.
//!
//! Guests run as async tasks on a tokio runtime of their own, so that a guest
//! that spins can never hold up the CRI server. Epoch interruption makes every
//! guest yield to that executor each [`EPOCH_TICK`]; a stop request is seen at
//! the next yield, even in an infinite loop.

mod compile;
mod file_mounts;
mod guest;
mod layout;
mod limits;
mod read_only_root;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use compile::{Compiled, ModuleSource, WasmSource};
pub use guest::{EXIT_NOT_STARTED, Exit, ExitReason, ExitWaiter, Guest, GuestSpec, Mount, Root};
pub use limits::{CpuBandwidth, Limits, Usage, UsageSnapshot};

use crate::error::{Error, Result};

/// How often a running guest yields to the executor.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What the binary header of a wasm file says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WasmKind {
    /// A core module (`\0asm` version 1).
    Module,
    /// A component (`\0asm`, version 0x0d, layer 1).
    Component,
}

impl WasmKind {
    /// Reads the 8-byte header: magic, then version and layer.
    pub fn detect(header: &[u8]) -> Option<Self> {
        match header.get(..8)? {
            [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(WasmKind::Module),
            [0, b'a', b's', b'm', _, _, 1, 0] => Some(WasmKind::Component),
            _ => None,
        }
    }
}

/// WASI for both kinds of guest: preview 1 for modules, 0.2 for components.
pub(crate) struct Linkers {
    module: wasmtime::Linker<guest::GuestState>,
    component: wasmtime::component::Linker<guest::GuestState>,
}

pub struct Engine {
    engine: wasmtime::Engine,
    linkers: Linkers,
    cache: compile::Cache,
    guests: tokio::runtime::Handle,
    default_memory_limit: u64,
    /// Guests that have ended, counted once each exit is reported.
    ended_guests: Arc<AtomicU64>,
}

impl Engine {
    /// Creates the engine, its compiled-code cache under `cache_dir`, the epoch
    /// ticker and the guest executor. Guests whose container sets no memory
    /// limit get `default_memory_limit` bytes (0: none).
    pub fn new(cache_dir: &Path, default_memory_limit: u64) -> Result<Arc<Self>> {
        let wasm_error = |what: &str, e: wasmtime::Error| Error::internal(what.to_owned(), anyhow::anyhow!("{e:#}"));
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // Each guest's memory costs mappings, and a process may have only
        // vm.max_map_count of them (65530 by default). The guard region before
        // a memory is defense in depth against bugs in wasmtime's code
        // generation; without it a guest takes 6 mappings instead of 7, which
        // lets a node with default settings hold 10,000 guests rather than 9,000.
        // The guard after each memory, which bounds checks rely on, stays.
        config.guard_before_linear_memory(false);
        let engine = wasmtime::Engine::new(&config).map_err(|e| wasm_error("creating the wasmtime engine", e))?;

        let mut module = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module, |state: &mut guest::GuestState| &mut state.wasi)
            .map_err(|e| wasm_error("linking WASI preview 1", e))?;
        read_only_root::add_to_linker(&mut module).map_err(|e| wasm_error("linking WASI preview 1", e))?;
        let mut component = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component).map_err(|e| wasm_error("linking WASI 0.2", e))?;

        let cache = compile::Cache::new(&engine, cache_dir)?;
        spawn_epoch_ticker(&engine)?;
        let guests = spawn_guest_executor()?;
        Ok(Arc::new(Self {
            engine,
            linkers: Linkers { module, component },
            cache,
            guests,
            default_memory_limit,
            ended_guests: Arc::default(),
        }))
    }

    /// The compiled form of the binary with `digest`, from memory, from the
    /// disk cache, or compiled now from `source` (off the async workers).
    pub async fn prepare(
        &self,
        digest: &str,
        kind: WasmKind,
        source: WasmSource,
    ) -> Result<(Arc<Compiled>, ModuleSource)> {
        self.cache.get_or_compile(&self.engine, &self.linkers, digest, kind, source).await
    }

    /// Forgets the compiled code of binaries no image uses any more.
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
        let ended = self.ended_guests.clone();
        guest::start(&self.engine, &self.guests, self.default_memory_limit, ended, compiled, spec, output).await
    }

    /// How many guests have ended so far. It grows only once the exit is
    /// visible through [`Guest::exit`]: what was read of the guests after
    /// reading a count shows every exit that count includes.
    pub fn ended_guests(&self) -> u64 {
        self.ended_guests.load(Ordering::Acquire)
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

/// Niceness of the guest executor's threads. Guests that spin on every core
/// must not slow down the threads that serve kubelet, write logs and tick
/// the epoch (all at nice 0). It only weighs guests against the daemon's own
/// threads: containers of the backing runtime are in cgroups of their own.
const GUEST_NICE: i32 = 10;

/// A multi-threaded tokio runtime for guests, kept apart from the CRI server's.
fn spawn_guest_executor() -> Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("wasm-guest")
        .on_thread_start(lower_thread_priority)
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

/// Sets [`GUEST_NICE`] on the calling thread (on Linux, niceness is per thread).
fn lower_thread_priority() {
    if let Err(error) = crate::sys::set_thread_nice(GUEST_NICE) {
        tracing::warn!(%error, "cannot lower the priority of a guest thread");
    }
}

#[cfg(test)]
mod tests {
    use super::WasmKind;

    #[test]
    fn detects_modules_and_components() {
        assert_eq!(WasmKind::detect(b"\0asm\x01\0\0\0rest"), Some(WasmKind::Module));
        assert_eq!(WasmKind::detect(b"\0asm\x0d\0\x01\0"), Some(WasmKind::Component));
        assert_eq!(WasmKind::detect(b"\0asm"), None);
        assert_eq!(WasmKind::detect(b"not wasm at all"), None);
    }
}
