//! The engine of served components: the daemon's engine settings with
//! wasmtime's pooling allocator, as `wasmtime serve` uses it.
//!
//! A served component makes an instance per request. With the on-demand
//! allocator each one maps and unmaps its memories, tables and fiber stack,
//! and the `munmap`s (with their TLB shootdowns) were a third of the daemon's
//! CPU under load (`cargo bench -- http`, BENCHMARKS.md). The pooling
//! allocator reserves slots once and reuses them. It is not the daemon's
//! only engine because its slots are a fixed budget reserved up front
//! (address space: a memory slot is the 4 GiB reservation plus its guard),
//! which a node of thousands of long-running commands must not be held to.
//!
//! The engine is made at the first served start. A component's compiled
//! code is the same for both engines (same settings, same fingerprint): it
//! is loaded from the compile cache's `.cwasm` file, not compiled again.
//! When that fails (the pool cannot be reserved, the file is gone), the
//! component is served from the daemon's engine instead, and a warning says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::compile::Compiled;
use super::host::p2::{self, P2State};
use crate::error::{Error, Result};

/// The pooling engine and the pre-instantiated components it serves.
pub(super) struct Serving {
    engine: wasmtime::Engine,
    linker: wasmtime::component::Linker<P2State>,
    /// By binary digest.
    loaded: Mutex<HashMap<String, ProxyPre<P2State>>>,
}

impl Serving {
    /// An engine of `config` (the daemon's settings) with pools for `slots`
    /// component instances at once, and its epoch ticker.
    ///
    /// Errors: Internal when the pools cannot be reserved (an address-space
    /// limit) or the linker cannot be made.
    pub fn new(mut config: wasmtime::Config, slots: u32) -> Result<Self> {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // A component instance holds several core instances (its modules
        // and the shims between them), tables and, usually, one or two memories.
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(8))
            .total_stacks(slots);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let wasm_error = |what: &str, e: wasmtime::Error| Error::internal(what.to_owned(), anyhow::anyhow!("{e:#}"));
        let engine =
            wasmtime::Engine::new(&config).map_err(|e| wasm_error("creating the engine of served components", e))?;
        let linker = p2::linker(&engine).map_err(|e| wasm_error("linking WASI 0.2 for served components", e))?;
        super::spawn_epoch_ticker(&engine)?;
        Ok(Self { engine, linker, loaded: Mutex::new(HashMap::new()) })
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// `compiled`'s `wasi:http/proxy` form in this engine, loaded from its
    /// `.cwasm` file the first time (on a blocking thread).
    ///
    /// Errors: a message saying why it cannot be loaded here.
    pub async fn proxy(self: &Arc<Self>, compiled: &Compiled) -> std::result::Result<ProxyPre<P2State>, String> {
        if let Some(pre) = self.loaded.lock().unwrap().get(&compiled.digest) {
            return Ok(pre.clone());
        }
        let serving = self.clone();
        let cwasm = compiled.cwasm.clone();
        let pre = tokio::task::spawn_blocking(move || {
            // SAFETY: the file was written by `serialize` of the daemon's
            // engine, published by an atomic rename, and is only removed
            // (never rewritten) while the daemon runs; deserializing checks
            // that it was compiled with settings this engine shares.
            let component = unsafe { wasmtime::component::Component::deserialize_file(&serving.engine, &cwasm) }
                .map_err(|e| format!("loading {}: {e:#}", cwasm.display()))?;
            let pre = serving.linker.instantiate_pre(&component).map_err(|e| format!("linking: {e:#}"))?;
            ProxyPre::new(pre).map_err(|e| format!("{e:#}"))
        })
        .await
        .map_err(|e| format!("its loading task failed: {e}"))??;
        Ok(self.loaded.lock().unwrap().entry(compiled.digest.clone()).or_insert(pre).clone())
    }

    /// Forgets a binary no image uses any more; running servers keep theirs.
    pub fn evict(&self, digest: &str) {
        self.loaded.lock().unwrap().remove(digest);
    }
}
