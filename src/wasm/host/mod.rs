//! The host side of a guest: the WASI context it runs with and the linkers
//! that give it WASI, one of each per kind of guest. [`p1`] serves WASI
//! preview 1 modules (with the EROFS answers of a read-only root,
//! `read_only_root`), [`p2`] WASI 0.2 components; both hold each instance
//! to its open-file limit (`open_files`) and to the bounds of its file
//! mounts (`file_mount_guard`).
//!
//! A context is built from the guest's [`GuestSpec`] (argv, env, working
//! directory) and the directories `layout` chose to preopen; the guest's
//! output goes to the writers of an [`Output`](super::output::Output).

mod file_mount_guard;
mod http;
mod open_files;
pub(super) mod p1;
pub(super) mod p2;
mod read_only_root;

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::layout::Preopen;
use super::limits::MemoryLimiter;
use super::output::Writer;
use super::spec::GuestSpec;
use crate::error::{Error, Result};

/// The WASI the host provides: preview 1 for modules, 0.2 for components.
/// Compiling checks a binary's imports against them; instantiating links them.
pub(super) struct Linkers {
    pub module: wasmtime::Linker<p1::P1State>,
    pub component: wasmtime::component::Linker<p2::P2State>,
}

impl Linkers {
    /// Both linkers for guests of `engine`.
    ///
    /// Errors: Internal if wasmtime-wasi cannot define its functions (a name
    /// defined twice: a bug, never the guest's doing).
    pub fn new(engine: &wasmtime::Engine) -> Result<Self> {
        let module = p1::linker(engine).map_err(|e| link_error("linking WASI preview 1", e))?;
        let component = p2::linker(engine).map_err(|e| link_error("linking WASI 0.2", e))?;
        Ok(Self { module, component })
    }
}

fn link_error(what: &str, e: wasmtime::Error) -> Error {
    Error::internal(what.to_owned(), anyhow::anyhow!("{e:#}"))
}

/// The part of a WASI context both kinds of guest share: argv, env, the
/// working directory, stdout and stderr, and `preopens` in order.
///
/// Errors: InvalidArgument naming a mount whose host directory cannot be
/// opened. Opens directories: call it off the async workers.
fn wasi_builder(spec: &GuestSpec, preopens: &[Preopen], stdout: Writer, stderr: Writer) -> Result<WasiCtxBuilder> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&spec.argv).envs(&spec.env);
    wasi.stdout(OutputStream::new(stdout)).stderr(OutputStream::new(stderr));
    if let Some(stdin) = spec.stdin.take() {
        wasi.stdin(wasmtime_wasi::cli::AsyncStdinStream::new(stdin));
    }
    for Preopen { mount, .. } in preopens {
        let perms = if mount.readonly { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        wasi.preopened_dir(&mount.host_path, &mount.guest_path, perms).map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot mount {} at {} in the guest: {e:#}",
                mount.host_path, mount.guest_path
            ))
        })?;
    }
    if let Some(dir) = &spec.working_dir {
        // Components read this as `wasi:cli/environment.initial-cwd`. WASI
        // preview 1 has no such notion (wasi-libc starts every module in `/`):
        // modules get the directory as $PWD, as a shell would give it, which
        // Go reads, and as the `.` preopen, which wasi-libc resolves relative
        // paths in (see `layout`).
        wasi.initial_cwd(dir);
        if !spec.env.iter().any(|(key, _)| key == "PWD") {
            wasi.env("PWD", dir);
        }
    }
    Ok(wasi)
}

/// A store for one instance: its memory and tables charged to `usage` (see
/// [`MemoryLimiter`]), and a yield to the executor at every epoch tick.
fn new_store<T: 'static>(
    engine: &wasmtime::Engine,
    state: T,
    limiter: fn(&mut T) -> &mut MemoryLimiter,
) -> wasmtime::Store<T> {
    let mut store = wasmtime::Store::new(engine, state);
    store.limiter(move |state| limiter(state));
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    store
}

/// Adapts an output writer to what wasmtime-wasi wants for stdout and stderr.
struct OutputStream(std::sync::Mutex<Option<Writer>>);

impl OutputStream {
    fn new(writer: Writer) -> Self {
        Self(std::sync::Mutex::new(Some(writer)))
    }
}

impl IsTerminal for OutputStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // WASI asks once per stream; a second ask gets a sink, so that the
        // output closes when the guest's one stream is dropped.
        match self.0.lock().unwrap().take() {
            Some(writer) => writer,
            None => Box::new(tokio::io::sink()),
        }
    }
}
