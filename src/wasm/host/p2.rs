//! The host side of a WASI 0.2 component: its context, its resource table
//! and its linker (wasmtime-wasi's WASI 0.2 interfaces).

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::error::Result;
use crate::wasm::layout::Preopen;
use crate::wasm::limits::{MemoryLimiter, Usage};
use crate::wasm::output::Writer;
use crate::wasm::spec::GuestSpec;

/// What a component's store holds: its WASI context, the table of the
/// resources it holds (streams, descriptors), and its share of the
/// container's usage.
pub(in crate::wasm) struct P2State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
}

impl P2State {
    /// The instance's memory limiter: whether it hit the limit.
    pub(in crate::wasm) fn limiter(&self) -> &MemoryLimiter {
        &self.limiter
    }
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// wasmtime-wasi's WASI 0.2 interfaces (async).
pub(super) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<wasmtime::component::Linker<P2State>> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// A store for one component instance started with `spec`, `preopens` and
/// the output writers, its memory charged to `usage`.
///
/// Errors: InvalidArgument naming a mount that cannot be opened. Opens
/// directories: call it off the async workers when there are any.
pub(in crate::wasm) fn store(
    engine: &wasmtime::Engine,
    spec: &GuestSpec,
    preopens: &[Preopen],
    (stdout, stderr): (Writer, Writer),
    usage: Arc<Usage>,
) -> Result<wasmtime::Store<P2State>> {
    let wasi = super::wasi_builder(spec, preopens, stdout, stderr)?.build();
    let state = P2State { wasi, table: ResourceTable::new(), limiter: MemoryLimiter::new(usage) };
    Ok(super::new_store(engine, state, |state| &mut state.limiter))
}
