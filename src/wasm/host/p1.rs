//! The host side of a WASI preview 1 module: its context and its linker
//! (wasmtime-wasi's `wasi_snapshot_preview1`, with the path calls that write
//! answering EROFS on a read-only root, and the bounds of file mounts kept:
//! `read_only_root`, `file_mount_guard`).

use std::sync::Arc;

use wasmtime_wasi::p1::WasiP1Ctx;

use super::file_mount_guard::P1Guard;

use crate::error::Result;
use crate::wasm::layout::Preopen;
use crate::wasm::limits::{MemoryLimiter, Usage};
use crate::wasm::output::Writer;
use crate::wasm::spec::GuestSpec;

/// What a module's store holds: its WASI context and its share of the
/// container's usage.
pub(in crate::wasm) struct P1State {
    pub(super) wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    /// The preview 1 descriptors of the read-only root's preopens, where a
    /// refused write is EROFS (see `read_only_root`).
    pub(super) read_only_root_fds: Vec<u32>,
    /// Files and directories it may hold open (see `open_files`); 0: no limit.
    pub(super) max_open_files: usize,
    /// Its descriptors of writable file mounts, when it has any (see `file_mount_guard`).
    pub(super) file_mounts: Option<P1Guard>,
}

impl P1State {
    /// Whether the instance holds as many descriptors as it may (see `open_files`).
    pub(super) fn at_open_files_limit(&mut self) -> bool {
        let limit = self.max_open_files;
        super::open_files::at_limit(wasmtime_wasi::WasiView::ctx(&mut self.wasi).table, limit)
    }
}

impl P1State {
    /// The instance's memory limiter: whether it hit the limit.
    pub(in crate::wasm) fn limiter(&self) -> &MemoryLimiter {
        &self.limiter
    }
}

/// wasmtime-wasi's preview 1 (async), with `read_only_root`'s wrappers in
/// place of its path calls that write.
pub(super) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<wasmtime::Linker<P1State>> {
    let mut linker = wasmtime::Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut P1State| &mut state.wasi)?;
    super::read_only_root::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// A store for one module instance started with `spec`, `preopens` (in
/// order: preview 1 numbers them from 3 on) and the output writers, its
/// memory charged to `usage`.
///
/// Errors: InvalidArgument naming a mount that cannot be opened. Opens
/// directories: call it off the async workers when there are any.
pub(in crate::wasm) fn store(
    engine: &wasmtime::Engine,
    spec: &GuestSpec,
    preopens: &[Preopen],
    (stdout, stderr): (Writer, Writer),
    usage: Arc<Usage>,
) -> Result<wasmtime::Store<P1State>> {
    let wasi = super::wasi_builder(spec, preopens, stdout, stderr)?.build_p1();
    // Preview 1 numbers the preopens from 3 on, in order, after stdin, stdout and stderr.
    let read_only_root_fds = (3..)
        .zip(preopens)
        .filter(|(_, preopen)| preopen.in_root && preopen.mount.readonly)
        .map(|(fd, _)| fd)
        .collect();
    let max_open_files = usage.max_open_files();
    let file_mounts = P1Guard::new(preopens, usage.file_mount_max_bytes());
    let state = P1State { wasi, limiter: MemoryLimiter::new(usage), read_only_root_fds, max_open_files, file_mounts };
    Ok(super::new_store(engine, state, |state| &mut state.limiter))
}
