//! One running guest: its WASI context, its limits, its usage, and how it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{oneshot, watch};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use super::compile::{Compiled, Program};
use crate::error::{Error, Result};
use crate::logs::{LogDone, LogWriter};

/// Exit code of a guest ended by a stop, as if killed by SIGKILL.
pub const EXIT_KILLED: i32 = 128 + 9;
/// Exit code of a guest that trapped, as the wasmtime CLI reports it (128 + SIGABRT).
pub const EXIT_TRAPPED: i32 = 128 + 6;

/// What a guest is given: the process-like view of its container.
#[derive(Debug, Clone, Default)]
pub struct GuestSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    /// Bytes of linear memory the guest may hold; 0 means no limit.
    pub memory_limit: u64,
}

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
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OomKilled => "OOMKilled",
        }
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

/// Live counters of a guest, read by stats calls without stopping it.
#[derive(Debug, Default)]
pub struct Usage {
    /// CPU time spent running the guest (and its host calls), in nanoseconds.
    pub cpu_nanos: AtomicU64,
    /// Bytes of linear memory the guest holds now.
    pub memory_bytes: AtomicU64,
    /// Limit on `memory_bytes`; 0 means none. Can change while the guest runs.
    pub memory_limit: AtomicU64,
    /// Set when a memory growth was refused for the limit.
    pub hit_memory_limit: AtomicBool,
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

    /// Asks the guest to end now; returns at once.
    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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
                finished_at: crate::durable::now_nanos(),
            },
        }
    }
}

pub(super) struct GuestState {
    pub wasi: WasiP1Ctx,
    limiter: MemoryLimiter,
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
    compiled: Arc<Compiled>,
    spec: GuestSpec,
    stdout: LogWriter,
    stderr: LogWriter,
    log_done: LogDone,
) -> Result<Guest> {
    let usage = Arc::new(Usage::default());
    usage.memory_limit.store(spec.memory_limit, Ordering::Relaxed);
    let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (exit_tx, exit_rx) = watch::channel(None);
    let engine = engine.clone();
    let task_usage = usage.clone();
    executor.spawn(async move {
        let store = match build_store(&engine, &spec, stdout, stderr, task_usage.clone()) {
            Ok(store) => store,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        let exit = run_until_stopped(store, compiled, stop_rx, &task_usage).await;
        // Report the exit only once the output is on disk: kubelet reads the
        // log of an exited container and expects all of it.
        log_done.wait().await;
        let _ = exit_tx.send(Some(exit));
    });
    ready_rx.await.map_err(|_| {
        Error::internal("starting a guest", anyhow::anyhow!("the guest task ended before it was ready"))
    })??;
    Ok(Guest { stop: Some(stop_tx), exit: exit_rx, usage })
}

fn build_store(
    engine: &wasmtime::Engine,
    spec: &GuestSpec,
    stdout: LogWriter,
    stderr: LogWriter,
    usage: Arc<Usage>,
) -> Result<wasmtime::Store<GuestState>> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&spec.argv).envs(&spec.env);
    wasi.stdout(OutputStream::new(stdout)).stderr(OutputStream::new(stderr));
    for mount in &spec.mounts {
        // WASI preview 1 can only preopen directories; kubelet's file mounts
        // (/etc/hosts, the termination-message path) cannot be given.
        if std::fs::metadata(&mount.host_path).is_ok_and(|meta| !meta.is_dir()) {
            tracing::warn!(host_path = %mount.host_path, guest_path = %mount.guest_path, "skipping a file mount: WASI preview 1 preopens only directories");
            continue;
        }
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
        // preview 1 has no such notion (wasi-libc starts every module in `/`),
        // so modules get the directory as $PWD, as a shell would give it.
        wasi.initial_cwd(dir);
        if !spec.env.iter().any(|(key, _)| key == "PWD") {
            wasi.env("PWD", dir);
        }
    }
    let mut store =
        wasmtime::Store::new(engine, GuestState { wasi: wasi.build_p1(), limiter: MemoryLimiter { usage } });
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
    let run = CpuMeter { inner: run_start(&mut store, &compiled), usage };
    let exit = tokio::select! {
        biased;
        _ = stop => Exit {
            code: EXIT_KILLED,
            reason: ExitReason::Error,
            message: "stopped".into(),
            finished_at: crate::durable::now_nanos(),
        },
        result = run => classify(result, usage),
    };
    // Dropping the store closes the guest's stdout and stderr; the log writer
    // then writes what is left and ends.
    drop(store);
    exit
}

async fn run_start(store: &mut wasmtime::Store<GuestState>, compiled: &Compiled) -> wasmtime::Result<()> {
    match &compiled.program {
        Program::Module(pre) => {
            let instance = pre.instantiate_async(&mut *store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
            start.call_async(&mut *store, ()).await
        }
        Program::Component(pre) => {
            let command = pre.instantiate_async(&mut *store).await?;
            match command.wasi_cli_run().call_run(&mut *store).await? {
                Ok(()) => Ok(()),
                // `wasi:cli/run` returning an error is a failed program, exit status 1.
                Err(()) => Err(I32Exit(1).into()),
            }
        }
    }
}

fn classify(result: wasmtime::Result<()>, usage: &Usage) -> Exit {
    let finished_at = crate::durable::now_nanos();
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
        let limit = usage.memory_limit.load(Ordering::Relaxed);
        return Exit {
            code: EXIT_KILLED,
            reason: ExitReason::OomKilled,
            message: format!("memory limit of {limit} bytes reached: {error}"),
            finished_at,
        };
    }
    let mut message = format!("{error:?}");
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

/// Counts the CPU time of every poll of the guest: the guest's own CPU usage,
/// since a guest runs only inside those polls.
struct CpuMeter<'a, F> {
    inner: F,
    usage: &'a Usage,
}

impl<F: Future> Future for CpuMeter<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is never moved out of the pinned `self`.
        let this = unsafe { self.get_unchecked_mut() };
        let before = thread_cpu_nanos();
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        let poll = inner.poll(cx);
        this.usage.cpu_nanos.fetch_add(thread_cpu_nanos().saturating_sub(before), Ordering::Relaxed);
        poll
    }
}

fn thread_cpu_nanos() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Tracks linear memory and refuses growth past the container's limit.
struct MemoryLimiter {
    usage: Arc<Usage>,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let held = self.usage.memory_bytes.load(Ordering::Relaxed);
        let after = held.saturating_sub(current as u64) + desired as u64;
        let limit = self.usage.memory_limit.load(Ordering::Relaxed);
        if limit > 0 && after > limit {
            self.usage.hit_memory_limit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        self.usage.memory_bytes.store(after, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
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
