//! The wasm engine: one shared wasmtime `Engine`, a compiled-code cache, and
//! the executor guests run on.
//!
//! Guests run as async tasks on a tokio runtime of their own, so that a guest
//! that spins can never hold up the CRI server. Epoch interruption makes every
//! guest yield to that executor each [`EPOCH_TICK`]; a stop request is seen at
//! the next yield, even in an infinite loop.
//!
//! A guest is started ([`Engine::start`]) with a [`GuestSpec`] (what it sees),
//! a [`Usage`] the caller made ([`Engine::new_usage`], one per container,
//! shared by the instances run for it) and an [`Output`] (where its stdout
//! and stderr go: a CRI log, memory with [`Captured`], any writer).
//!
//! The modules, each depending only on those listed before it (no cycles):
//!
//! - `spec`, `budget`, `limits`, `output`: what a guest is started with, the
//!   memory budget of all guests, each guest's limits and usage counters, its
//!   output sinks; plain data and small types.
//! - `file_mounts`, `layout`: the host directories a spec becomes (copies of
//!   file mounts; where each directory is preopened). `layout` uses
//!   `file_mounts`' normalizing of guest paths.
//! - `host`: WASI contexts and linkers, `host::p1` for preview 1 modules
//!   (with the read-only root's EROFS), `host::p2` for components.
//! - `compile_worker`: compiles a binary into a cache file, in a worker
//!   process held to a time and a memory limit.
//! - `compile`: what kind a binary is, the compiled-code cache (compiling
//!   through `compile_worker`); links binaries against `host`'s linkers to
//!   check their imports.
//! - `guest`: runs one compiled program in a store `host` builds, and maps
//!   its end to an [`Exit`].
//! - this module: the [`Engine`] tying them together.

mod budget;
mod compile;
mod compile_worker;
mod file_mounts;
mod guest;
mod host;
mod layout;
mod limits;
pub mod output;
mod serve;
mod serving;
mod spec;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use budget::{BudgetSnapshot, DefaultBudget, MemoryBudget};
pub use compile::{Compiled, ModuleSource, WasmKind, WasmSource};
pub use compile_worker::{CompileLimits, Compiler, WORKER_COMMAND, worker_main as compile_worker_main};
pub use guest::{EXIT_NOT_STARTED, Exit, ExitReason, ExitWaiter, Guest};
pub use limits::{DEFAULT_MAX_OPEN_FILES, GuestDefaults, Usage, UsageSnapshot};
pub use output::{Captured, Output};
pub use serve::address as serve_address;
pub use spec::{CpuBandwidth, GuestSpec, Limits, Mount, Root, Stdin};

use crate::error::{Error, Result};

/// How often a running guest yields to the executor.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The wasmtime engine, the WASI linkers, the compiled-code cache and the
/// guest executor, shared by every guest of the daemon.
pub struct Engine {
    engine: wasmtime::Engine,
    linkers: host::Linkers,
    cache: compile::Cache,
    guests: tokio::runtime::Handle,
    defaults: GuestDefaults,
    /// What all guests hold together, against `guest_memory_budget_bytes`.
    budget: Arc<MemoryBudget>,
    max_concurrent_requests: usize,
    instance_pool_size: u32,
    /// The pooling engine of served components, made at the first served
    /// start; `Err` (with why) when it cannot be, and the daemon's engine serves.
    serving: tokio::sync::OnceCell<std::result::Result<Arc<serving::Serving>, String>>,
}

impl Engine {
    /// Creates the engine, its compiled-code cache under `cache_dir`, the epoch
    /// ticker and the guest executor. Guests get `defaults` where their
    /// container sets nothing (memory limit, open files); all of them
    /// together hold at most `budget` (see `budget`). Binaries are compiled
    /// by `compiler` (see `compile_worker`). A served component
    /// runs at most `http.max_concurrent_requests` instances at once, and all
    /// of them together `http.instance_pool_size`.
    pub fn new(
        cache_dir: &Path,
        defaults: GuestDefaults,
        budget: MemoryBudget,
        compiler: Compiler,
        http: HttpLimits,
    ) -> Result<Arc<Self>> {
        let wasm_error = |what: &str, e: wasmtime::Error| Error::internal(what.to_owned(), anyhow::anyhow!("{e:#}"));
        let engine =
            wasmtime::Engine::new(&engine_config()).map_err(|e| wasm_error("creating the wasmtime engine", e))?;
        let linkers = host::Linkers::new(&engine)?;
        let cache = compile::Cache::new(&engine, cache_dir, compiler)?;
        spawn_epoch_ticker(&engine)?;
        let guests = spawn_guest_executor()?;
        Ok(Arc::new(Self {
            engine,
            linkers,
            cache,
            guests,
            defaults,
            budget: Arc::new(budget),
            max_concurrent_requests: http.max_concurrent_requests,
            instance_pool_size: u32::try_from(http.instance_pool_size).unwrap_or(u32::MAX),
            serving: tokio::sync::OnceCell::new(),
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
            if let Some(Ok(serving)) = self.serving.get() {
                serving.evict(digest);
            }
        }
    }

    /// The usage counters of a new container with `limits`: a memory limit
    /// of 0 (none set) gets the engine's default memory limit. Give it to
    /// every instance started for the container.
    pub fn new_usage(&self, limits: Limits) -> Arc<Usage> {
        Arc::new(Usage::new(limits, self.defaults, self.budget.clone()))
    }

    /// The memory budget of all guests, what they hold and the refusals so far.
    pub fn memory_budget(&self) -> BudgetSnapshot {
        self.budget.snapshot()
    }

    /// Starts `compiled` as a guest seeing `spec`, its memory and CPU charged
    /// to `usage` (from [`Engine::new_usage`]; its limits apply), its stdout
    /// and stderr written to `output`: run as a command, or served when it
    /// is a `wasi:http` component (see `serve::address` for which, and
    /// where). Returns once its WASI context is built (mounts opened), or it
    /// listens, so a bad mount or a taken port fails the call instead of the
    /// guest. The guest's exit ([`Guest::waiter`]) is reported once `output`
    /// is done and its file mounts are copied back.
    ///
    /// Errors: InvalidArgument for a mount that cannot be opened, a file
    /// mount that cannot be copied, or a bad address to serve on;
    /// FailedPrecondition for an address that cannot be listened on;
    /// Internal when the executor is gone.
    pub async fn start(
        &self,
        compiled: Arc<Compiled>,
        spec: GuestSpec,
        usage: Arc<Usage>,
        output: Output,
    ) -> Result<Guest> {
        match serve::address(&compiled, &spec.env)? {
            Some(address) => {
                let listen = serve::Listen { address, max_concurrent_requests: self.max_concurrent_requests };
                let (engine, pre) = self.proxy(&compiled).await?;
                serve::start(&engine, &self.guests, pre, spec, usage, output, listen).await
            }
            None => guest::start(&self.engine, &self.guests, compiled, spec, usage, output).await,
        }
    }

    /// Starts `compiled` as a command, whatever its container serves: an
    /// exec's instance (see `pods::exec`). As [`Engine::start`] otherwise.
    ///
    /// Errors: FailedPrecondition for a program that cannot run as a command
    /// (a component exporting no `wasi:cli/run`); as [`Engine::start`].
    pub async fn run_command(
        &self,
        compiled: Arc<Compiled>,
        spec: GuestSpec,
        usage: Arc<Usage>,
        output: Output,
    ) -> Result<Guest> {
        if !compiled.runs_as_command() {
            return Err(Error::FailedPrecondition(format!(
                "program {} is a component that exports no `wasi:cli/run`: it cannot run as a command",
                compiled.digest
            )));
        }
        guest::start(&self.engine, &self.guests, compiled, spec, usage, output).await
    }

    /// The engine a served component runs in, and its `wasi:http/proxy` form
    /// there: the pooling engine's, or else the daemon's own.
    ///
    /// Errors: Internal for a program that does not serve `wasi:http`.
    async fn proxy(
        &self,
        compiled: &Compiled,
    ) -> Result<(wasmtime::Engine, wasmtime_wasi_http::p2::bindings::ProxyPre<host::p2::P2State>)> {
        let serving = self
            .serving
            .get_or_init(|| async {
                serving::Serving::new(engine_config(), self.instance_pool_size).map(Arc::new).map_err(|e| e.to_string())
            })
            .await;
        let failed = match serving {
            Ok(serving) => match serving.proxy(compiled).await {
                Ok(pre) => return Ok((serving.engine().clone(), pre)),
                Err(e) => e,
            },
            Err(e) => e.clone(),
        };
        tracing::warn!(digest = %compiled.digest, reason = %failed, "serving a component from the daemon's engine, not the pooling one");
        let pre = compiled.proxy().ok_or_else(|| {
            Error::internal("serving a component", anyhow::anyhow!("it does not export `wasi:http/incoming-handler`"))
        })?;
        Ok((self.engine.clone(), pre))
    }
}

/// How many instances served components may run at once.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Per container; a request over it gets a 503.
    pub max_concurrent_requests: usize,
    /// In the whole daemon (the pooling allocator's slots); a request that
    /// finds none free gets a 503.
    pub instance_pool_size: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { max_concurrent_requests: 1000, instance_pool_size: 1000 }
    }
}

/// The settings of every engine of the daemon. Compiled code depends on
/// them: both engines (see `serving`) load the same `.cwasm` files.
fn engine_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    // Each guest's memory costs mappings, and a process may have only
    // vm.max_map_count of them (65530 by default). The guard region before
    // a memory is defense in depth against bugs in wasmtime's code
    // generation; without it a guest takes 6 mappings instead of 7, which
    // lets a node with default settings hold 10,000 guests rather than 9,000.
    // The guard after each memory, which bounds checks rely on, stays.
    config.guard_before_linear_memory(false);
    config
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
