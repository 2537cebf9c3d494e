//! Compiling out of the daemon's heap: each binary is compiled by a worker
//! process (the daemon's own executable, run as `wasmrun compile-worker`),
//! which writes the serialized code to the cache file; the daemon then loads
//! it with wasmtime's `deserialize_file`, which memory-maps the code.
//!
//! Compiling takes about 40× the binary's size in memory, and an allocator
//! seldom gives all of it back: in the daemon, 30 compile-and-remove cycles
//! took its RSS from 17 to 238 MB, and one 44 MB module with 300,000
//! functions compiled for 30 s at a peak of 1.72 GB. A worker's memory goes
//! back to the kernel when it exits, and the worker is held to two limits:
//!
//! - `compile_timeout_secs`: wall time, from spawn to exit;
//! - `compile_memory_bytes`: its resident memory (RSS, `/proc/PID/statm`),
//!   sampled every [`SAMPLE_EVERY`]; a sample over the limit kills it. A
//!   burst of allocation between samples can pass the limit by what the
//!   worker allocates in that time.
//!
//! A worker over either is killed and the pull refused with
//! ResourceExhausted naming the limit. The worker dies with the daemon
//! (`PR_SET_PDEATHSIG`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::compile::WasmKind;
use crate::error::{Error, Result};

/// The first argument that makes the daemon's executable a compile worker.
pub const WORKER_COMMAND: &str = "compile-worker";

/// How often a worker's resident memory is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Exit code of a worker given a binary that is not valid WebAssembly
/// (`EX_DATAERR` of sysexits.h); its stderr says why.
const EXIT_INVALID: u8 = 65;

/// The most of a worker's stderr kept for an error message.
const MAX_STDERR: u64 = 16 * 1024;

/// How binaries are compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// In a worker process: `exe` run with [`WORKER_COMMAND`] (the daemon's
    /// own executable, `/proc/self/exe`), held to the limits.
    Worker { exe: PathBuf, limits: CompileLimits },
    /// In the calling process, without limits: for unit tests, whose
    /// executable is not the daemon's.
    #[cfg(test)]
    InProcess,
}

/// What one compilation may take (config `compile_timeout_secs`, `compile_memory_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Wall time from the worker's spawn to its exit; zero means none.
    pub timeout: Duration,
    /// The worker's resident memory in bytes; 0 means none.
    pub memory_bytes: u64,
}

impl Compiler {
    /// A worker of this executable (`/proc/self/exe`, which stays valid
    /// when the file is replaced by an upgrade) with `limits`.
    pub fn worker(limits: CompileLimits) -> Self {
        Compiler::Worker { exe: PathBuf::from("/proc/self/exe"), limits }
    }

    /// Compiles `wasm` (a file) as `kind` into `cwasm`, written atomically.
    ///
    /// Errors: InvalidArgument when the binary is not valid WebAssembly;
    /// ResourceExhausted when the worker passed a limit (the message names
    /// it); Internal when the worker cannot be run or fails otherwise.
    pub async fn compile(
        &self,
        // Only compiling in process uses the daemon's engine; a worker makes its own of the same settings.
        #[cfg_attr(not(test), expect(unused_variables))] engine: &wasmtime::Engine,
        digest: &str,
        kind: WasmKind,
        wasm: &Path,
        cwasm: &Path,
    ) -> Result<()> {
        match self {
            #[cfg(test)]
            Compiler::InProcess => {
                let (engine, digest, wasm, cwasm) =
                    (engine.clone(), digest.to_owned(), wasm.to_owned(), cwasm.to_owned());
                tokio::task::spawn_blocking(move || compile_file(&engine, kind, &wasm, &cwasm))
                    .await
                    .map_err(|e| Error::internal(format!("compiling {digest}"), e))?
                    .map_err(|failure| failure.into_error(&digest))
            }
            Compiler::Worker { exe, limits } => run_worker(exe, *limits, digest, kind, wasm, cwasm).await,
        }
    }
}

/// Why an in-process compilation failed.
enum Failure {
    Invalid(String),
    Io(String),
}

impl Failure {
    #[cfg(test)]
    fn into_error(self, digest: &str) -> Error {
        match self {
            Failure::Invalid(why) => Error::InvalidArgument(format!("{digest} is not valid WebAssembly: {why}")),
            Failure::Io(why) => Error::internal(format!("compiling {digest}"), anyhow::anyhow!(why)),
        }
    }
}

/// Reads `wasm`, compiles it as `kind` with `engine` and writes the
/// serialized code to `cwasm` atomically.
fn compile_file(engine: &wasmtime::Engine, kind: WasmKind, wasm: &Path, cwasm: &Path) -> Result<(), Failure> {
    let bytes = std::fs::read(wasm).map_err(|e| Failure::Io(format!("reading {}: {e}", wasm.display())))?;
    let serialized = match kind {
        WasmKind::Module => wasmtime::Module::new(engine, &bytes).and_then(|module| module.serialize()),
        WasmKind::Component => {
            wasmtime::component::Component::new(engine, &bytes).and_then(|component| component.serialize())
        }
    }
    .map_err(|e| Failure::Invalid(format!("{e:#}")))?;
    crate::durable::write_atomically(cwasm, &serialized).map_err(|e| Failure::Io(e.to_string()))
}

/// The worker: `wasmrun compile-worker module|component INPUT OUTPUT`
/// compiles INPUT with the daemon's engine settings into OUTPUT. Exit 0
/// when written, [`EXIT_INVALID`] for a binary that is not valid
/// WebAssembly, 1 otherwise; the reason on stderr.
pub fn worker_main(args: &[OsString]) -> ExitCode {
    let usage = || {
        eprintln!("usage: wasmrun {WORKER_COMMAND} module|component INPUT OUTPUT");
        ExitCode::from(2)
    };
    let [kind, input, output] = args else { return usage() };
    let kind = match kind.to_str() {
        Some("module") => WasmKind::Module,
        Some("component") => WasmKind::Component,
        _ => return usage(),
    };
    let engine = match wasmtime::Engine::new(&super::engine_config()) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("cannot create the wasmtime engine: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match compile_file(&engine, kind, Path::new(input), Path::new(output)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(why)) => {
            eprintln!("{why}");
            ExitCode::from(EXIT_INVALID)
        }
        Err(Failure::Io(why)) => {
            eprintln!("{why}");
            ExitCode::FAILURE
        }
    }
}

/// Why a worker was stopped before it exited.
enum Stopped {
    Timeout,
    Memory(u64),
}

async fn run_worker(
    exe: &Path,
    limits: CompileLimits,
    digest: &str,
    kind: WasmKind,
    wasm: &Path,
    cwasm: &Path,
) -> Result<()> {
    let started = Instant::now();
    let kind_arg = match kind {
        WasmKind::Module => "module",
        WasmKind::Component => "component",
    };
    let mut command = tokio::process::Command::new(exe);
    command
        .arg(WORKER_COMMAND)
        .arg(kind_arg)
        .arg(wasm)
        .arg(cwasm)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe, and touches nothing of the parent's.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child =
        command.spawn().map_err(|e| Error::internal(format!("starting a compile worker for {digest}"), e))?;
    let pid = child.id();
    tracing::debug!(%digest, ?pid, "compile worker started");
    let mut stderr = child.stderr.take().map(|stderr| stderr.take(MAX_STDERR));
    let read_stderr = async {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let mut bytes = Vec::new();
            let _ = stderr.read_to_end(&mut bytes).await;
            text = String::from_utf8_lossy(&bytes).trim().to_owned();
        }
        text
    };
    // The highest resident memory sampled, in bytes.
    let peak = std::sync::atomic::AtomicU64::new(0);
    let watch = async {
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if !limits.timeout.is_zero() && started.elapsed() >= limits.timeout {
                return Stopped::Timeout;
            }
            if let Some(rss) = pid.and_then(resident_bytes) {
                peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                if limits.memory_bytes != 0 && rss > limits.memory_bytes {
                    return Stopped::Memory(rss);
                }
            }
        }
    };
    let waited = async { tokio::join!(child.wait(), read_stderr) };
    let outcome = tokio::select! {
        (status, stderr) = waited => Ok((status, stderr)),
        stopped = watch => Err(stopped),
    };
    let (status, stderr) = match outcome {
        Ok(done) => done,
        Err(stopped) => {
            let _ = child.kill().await;
            let peak_rss = peak.into_inner();
            tracing::warn!(%digest, elapsed = ?started.elapsed(), peak_rss, "compile worker stopped at its limit");
            return Err(Error::ResourceExhausted(match stopped {
                Stopped::Timeout => format!(
                    "compiling {digest} took longer than compile_timeout_secs ({} s); the binary is refused",
                    limits.timeout.as_secs()
                ),
                Stopped::Memory(rss) => format!(
                    "compiling {digest} needed more memory than compile_memory_bytes ({} bytes; the compile \
                     worker held {rss}); the binary is refused",
                    limits.memory_bytes
                ),
            }));
        }
    };
    let status = status.map_err(|e| Error::internal(format!("waiting for the compile worker of {digest}"), e))?;
    let peak_rss = peak.into_inner();
    match status.code() {
        Some(0) => {
            // `elapsed`: from the worker's spawn to its exit (reading, compiling, serializing, writing).
            tracing::info!(%digest, ?kind, elapsed = ?started.elapsed(), peak_rss, "compiled");
            Ok(())
        }
        Some(code) if code == i32::from(EXIT_INVALID) => {
            Err(Error::InvalidArgument(format!("{digest} is not valid WebAssembly: {stderr}")))
        }
        _ => Err(Error::internal(
            format!("compiling {digest}"),
            anyhow::anyhow!("the compile worker ended with {status}: {stderr}"),
        )),
    }
}

/// The resident memory of process `pid` in bytes (`/proc/PID/statm`'s
/// second field, in pages); None when it is gone. procfs reads are served
/// from the kernel's memory, not a disk.
fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_resident_memory_is_read_from_procfs() {
        let own = resident_bytes(std::process::id()).expect("our own statm");
        assert!(own > 1 << 20, "a test process holds more than 1 MiB: {own}");
        assert_eq!(resident_bytes(u32::MAX), None);
    }

    #[tokio::test]
    async fn in_process_compilation_writes_code_the_engine_loads_and_refuses_bad_binaries() {
        let dir = std::env::temp_dir().join(format!("wasmrun-compile-{}", hex::encode(rand::random::<[u8; 8]>())));
        std::fs::create_dir_all(&dir).unwrap();
        let engine = wasmtime::Engine::new(&super::super::engine_config()).unwrap();
        let (wasm, cwasm) = (dir.join("m.wasm"), dir.join("m.cwasm"));
        std::fs::write(&wasm, wat::parse_str("(module (func (export \"_start\")))").unwrap()).unwrap();
        Compiler::InProcess.compile(&engine, "sha256:m", WasmKind::Module, &wasm, &cwasm).await.unwrap();
        // SAFETY: written by `serialize` of an engine of the same settings just now.
        let module = unsafe { wasmtime::Module::deserialize_file(&engine, &cwasm) }.unwrap();
        assert!(module.get_export("_start").is_some());

        std::fs::write(&wasm, b"\0asm\x01\0\0\0\x01").unwrap();
        let error = Compiler::InProcess.compile(&engine, "sha256:bad", WasmKind::Module, &wasm, &cwasm).await;
        assert!(
            matches!(&error, Err(Error::InvalidArgument(m)) if m.starts_with("sha256:bad is not valid WebAssembly")),
            "{error:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
