//! One running guest: its WASI context, its limits, its usage, and how it ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{oneshot, watch};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::compile::{Compiled, Program};
use super::limits::{CpuMeter, Limits, MemoryLimiter, Usage};
use super::{file_mounts, layout};
use crate::error::{Error, Result};
use crate::logs::{GuestOutput, LogWriter};

/// Exit code of a guest ended by a stop, as if killed by SIGKILL.
pub const EXIT_KILLED: i32 = 128 + 9;
/// Exit code of a guest that trapped, as the wasmtime CLI reports it (128 + SIGABRT).
pub const EXIT_TRAPPED: i32 = 128 + 6;
/// Exit code of a container that could not be started, as containerd reports it.
pub const EXIT_NOT_STARTED: i32 = 128;

/// What a guest is given: the process-like view of its container.
#[derive(Debug, Clone, Default)]
pub struct GuestSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// An absolute guest path; relative paths resolve against it (see `layout`).
    pub working_dir: Option<String>,
    /// The guest's `/`: a compat image's filesystem. `None` for an artifact,
    /// which sees only its mounts.
    pub root: Option<Root>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
    /// A host directory of the container's own, for the copies that stand in
    /// for its file mounts; created only when there are some.
    pub scratch_dir: Option<PathBuf>,
}

/// A container's root filesystem on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// The directory the guest sees as `/`.
    pub host_path: PathBuf,
    /// Whether writes are refused (as on a read-only filesystem, EROFS).
    pub readonly: bool,
}

/// A host directory (or file) the guest sees at `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: String,
    pub guest_path: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ExitReason {
    Completed,
    Error,
    #[serde(rename = "OOMKilled")]
    OomKilled,
    /// The guest never ran: its context or its instance could not be made.
    StartError,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OomKilled => "OOMKilled",
            ExitReason::StartError => "StartError",
        }
    }

    /// The reason [`ExitReason::as_str`] spells `text`.
    pub fn parse(text: &str) -> Option<Self> {
        [ExitReason::Completed, ExitReason::Error, ExitReason::OomKilled, ExitReason::StartError]
            .into_iter()
            .find(|reason| reason.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub reason: ExitReason,
    pub message: String,
    /// Unix time in nanoseconds.
    pub finished_at: i64,
}

/// The host's side of a running guest.
pub struct Guest {
    stop: Option<oneshot::Sender<()>>,
    exit: watch::Receiver<Option<Exit>>,
    pub usage: Arc<Usage>,
}

impl Guest {
    /// How it ended, or `None` while it runs.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Whether it has ended, without copying how (its message can be long).
    pub fn has_ended(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Asks the guest to end now; returns at once.
    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Changes the limits of the running guest: memory at its next growth,
    /// CPU at its next yield.
    pub fn set_limits(&self, limits: Limits) {
        self.usage.set_limits(limits);
    }

    /// Something to wait on for the guest's end, usable without holding the guest.
    pub fn waiter(&self) -> ExitWaiter {
        ExitWaiter(self.exit.clone())
    }
}

pub struct ExitWaiter(watch::Receiver<Option<Exit>>);

impl ExitWaiter {
    /// Waits until the guest has ended and its output is written.
    pub async fn wait(mut self) -> Exit {
        match self.0.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().expect("wait_for returned a finished guest"),
            Err(_) => Exit {
                code: EXIT_KILLED,
                reason: ExitReason::Error,
                message: "the guest's task ended without reporting an exit".into(),
                finished_at: crate::clock::now_nanos(),
            },
        }
    }
}

pub(super) struct GuestState {
    pub wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
    /// The preview 1 descriptors of the read-only root's preopens, where a
    /// refused write is EROFS (see `read_only_root`).
    pub read_only_root_fds: Vec<u32>,
}

/// Components reach the same WASI context as modules do.
impl wasmtime_wasi::WasiView for GuestState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiView::ctx(&mut self.wasi)
    }
}

pub(super) async fn start(
    engine: &wasmtime::Engine,
    executor: &tokio::runtime::Handle,
    default_memory_limit: u64,
    ended_guests: Arc<AtomicU64>,
    compiled: Arc<Compiled>,
    spec: GuestSpec,
    output: GuestOutput,
) -> Result<Guest> {
    let GuestOutput { stdout, stderr, done: log_done } = output;
    let usage = Arc::new(Usage::new(spec.limits, default_memory_limit));
    let has_mounts = !spec.mounts.is_empty() || spec.root.is_some();
    let prepare = {
        let (engine, usage) = (engine.clone(), usage.clone());
        move || {
            let prepared = file_mounts::prepare(spec.mounts.clone(), spec.scratch_dir.clone())?;
            let preopens = layout::preopens(spec.root.as_ref(), spec.working_dir.as_deref(), prepared.preopens);
            let store = build_store(&engine, &spec, &preopens, stdout, stderr, usage)?;
            Ok::<_, Error>((store, prepared.files))
        }
    };
    // The root and the mounts are opened (and file mounts copied) from the
    // host's filesystem, which is blocking I/O; a guest without any needs
    // none, and skips the hop to a blocking thread that would be most of its start.
    let (store, files) = if has_mounts {
        executor.spawn_blocking(prepare).await.map_err(|e| Error::internal("preparing a guest's mounts", e))??
    } else {
        prepare()?
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (exit_tx, exit_rx) = watch::channel(None);
    let task_usage = usage.clone();
    executor.spawn(async move {
        let exit = run_until_stopped(store, compiled, stop_rx, &task_usage).await;
        // Report the exit only once the output is written and the file mounts
        // are copied back: kubelet reads the log and the termination message
        // of an exited container and expects all of them.
        tokio::join!(files.copy_back(), log_done.wait());
        let _ = exit_tx.send(Some(exit));
        ended_guests.fetch_add(1, Ordering::Release);
    });
    Ok(Guest { stop: Some(stop_tx), exit: exit_rx, usage })
}

fn build_store(
    engine: &wasmtime::Engine,
    spec: &GuestSpec,
    preopens: &[layout::Preopen],
    stdout: LogWriter,
    stderr: LogWriter,
    usage: Arc<Usage>,
) -> Result<wasmtime::Store<GuestState>> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&spec.argv).envs(&spec.env);
    wasi.stdout(OutputStream::new(stdout)).stderr(OutputStream::new(stderr));
    for layout::Preopen { mount, .. } in preopens {
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
    // Preview 1 numbers the preopens from 3 on, in order, after stdin, stdout and stderr.
    let read_only_root_fds = (3..)
        .zip(preopens)
        .filter(|(_, preopen)| preopen.in_root && preopen.mount.readonly)
        .map(|(fd, _)| fd)
        .collect();
    let state = GuestState { wasi: wasi.build_p1(), limiter: MemoryLimiter { usage }, read_only_root_fds };
    let mut store = wasmtime::Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    Ok(store)
}

async fn run_until_stopped(
    mut store: wasmtime::Store<GuestState>,
    compiled: Arc<Compiled>,
    stop: oneshot::Receiver<()>,
    usage: &Usage,
) -> Exit {
    let run = CpuMeter::new(run_start(&mut store, &compiled, usage), usage);
    let exit = tokio::select! {
        biased;
        _ = stop => Exit {
            code: EXIT_KILLED,
            reason: ExitReason::Error,
            message: "stopped".into(),
            finished_at: crate::clock::now_nanos(),
        },
        result = run => classify(result, usage),
    };
    // Dropping the store closes the guest's stdout and stderr; the log writer
    // then writes what is left and ends. The guest's memory is gone with it.
    drop(store);
    usage.memory_bytes.store(0, Ordering::Relaxed);
    exit
}

/// Marks an error that ended the guest before its code ran: it could not be
/// instantiated (the host refused memory, or its initial memory is over its limit).
#[derive(Debug)]
struct NotInstantiated;

impl std::fmt::Display for NotInstantiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot instantiate the guest")
    }
}

async fn run_start(
    store: &mut wasmtime::Store<GuestState>,
    compiled: &Compiled,
    usage: &Usage,
) -> wasmtime::Result<()> {
    let instantiating = std::time::Instant::now();
    let instantiated = || usage.instantiate_nanos.store(instantiating.elapsed().as_nanos() as u64, Ordering::Relaxed);
    match &compiled.program {
        Program::Module(pre) => {
            let instance = pre.instantiate_async(&mut *store).await.map_err(|e| e.context(NotInstantiated))?;
            instantiated();
            let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
            start.call_async(&mut *store, ()).await
        }
        Program::Component(pre) => {
            let command = pre.instantiate_async(&mut *store).await.map_err(|e| e.context(NotInstantiated))?;
            instantiated();
            match command.wasi_cli_run().call_run(&mut *store).await? {
                Ok(()) => Ok(()),
                // `wasi:cli/run` returning an error is a failed program, exit status 1.
                Err(()) => Err(I32Exit(1).into()),
            }
        }
    }
}

fn classify(result: wasmtime::Result<()>, usage: &Usage) -> Exit {
    let finished_at = crate::clock::now_nanos();
    let error = match result {
        Ok(()) => {
            return Exit { code: 0, reason: ExitReason::Completed, message: String::new(), finished_at };
        }
        Err(error) => error,
    };
    if let Some(I32Exit(code)) = error.downcast_ref::<I32Exit>() {
        let reason = if *code == 0 { ExitReason::Completed } else { ExitReason::Error };
        return Exit { code: *code, reason, message: String::new(), finished_at };
    }
    if usage.hit_memory_limit.load(Ordering::Relaxed) {
        let limit = usage.memory_limit();
        return Exit {
            code: EXIT_KILLED,
            reason: ExitReason::OomKilled,
            message: format!("memory limit of {limit} bytes reached: {error}"),
            finished_at,
        };
    }
    // `{:#}` gives the error and its causes, with the wasm backtrace wasmtime
    // attaches to a trap, and never the daemon's own Rust backtrace.
    let mut message = format!("{error:#}");
    if error.downcast_ref::<NotInstantiated>().is_some() {
        // wasmtime maps each instance's memory, tables and stack: ENOMEM here
        // is most often the per-process limit on mappings, not a lack of RAM.
        if message.contains("os error 12") {
            message.push_str(&format!(
                " (the host refused a memory mapping: the daemon may be at vm.max_map_count, {}, which each \
                 running guest takes about 6 of, or at its address-space limit)",
                std::fs::read_to_string("/proc/sys/vm/max_map_count").map_or("unknown".into(), |s| s.trim().to_owned())
            ));
        }
        tracing::warn!(error = %message, "a guest could not be instantiated");
        truncate_at_char(&mut message, 4096);
        return Exit { code: EXIT_NOT_STARTED, reason: ExitReason::StartError, message, finished_at };
    }
    truncate_at_char(&mut message, 4096);
    Exit { code: EXIT_TRAPPED, reason: ExitReason::Error, message, finished_at }
}

fn truncate_at_char(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Adapts a log writer to what wasmtime-wasi wants for stdout and stderr.
struct OutputStream(std::sync::Mutex<Option<LogWriter>>);

impl OutputStream {
    fn new(writer: LogWriter) -> Self {
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
        // WASI asks once per stream; a second ask gets a sink, so that the log
        // closes when the guest's one stream is dropped.
        match self.0.lock().unwrap().take() {
            Some(writer) => Box::new(writer),
            None => Box::new(tokio::io::sink()),
        }
    }
}
