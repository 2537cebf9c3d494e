//! Running one guest: its store made from its spec (mounts prepared, WASI
//! context built by `host`), its program run (`_start` of a module,
//! `wasi:cli/run` of a component), and its end mapped to an [`Exit`], reported
//! once its output is written and its file mounts are copied back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use wasmtime_wasi::I32Exit;

use super::compile::{Compiled, Program};
use super::host::p1::{self, P1State};
use super::host::p2::{self, P2State};
use super::layout;
use super::limits::{CpuMeter, MemoryLimiter, Refusal, Usage};
use super::output::{Output, Writer};
use super::spec::GuestSpec;
use crate::error::{Error, Result};

/// Exit code of a guest ended by a stop, as if killed by SIGKILL.
pub const EXIT_KILLED: i32 = 128 + 9;
/// Exit code of a guest that trapped, as the wasmtime CLI reports it (128 + SIGABRT).
pub const EXIT_TRAPPED: i32 = 128 + 6;
/// Exit code of a container that could not be started, as containerd reports it.
pub const EXIT_NOT_STARTED: i32 = 128;

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

/// The host's side of a running guest: a command's instance, or a served
/// component's server.
pub struct Guest {
    /// Takes the grace period of a stop.
    stop: Option<oneshot::Sender<Duration>>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Guest {
    pub(super) fn new(stop: oneshot::Sender<Duration>, exit: watch::Receiver<Option<Exit>>) -> Self {
        Self { stop: Some(stop), exit }
    }

    /// Whether it has ended, without copying how (its message can be long).
    #[cfg(test)]
    pub fn has_ended(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Asks the guest to end now; returns at once.
    #[cfg(test)]
    pub fn kill(&mut self) {
        self.stop(Duration::ZERO);
    }

    /// Asks the guest to end within `grace`; returns at once. A command is
    /// ended at once (WASI has no signal to ask it to shut down with); a
    /// served component stops accepting and gives the requests in flight
    /// `grace` to finish (see `serve`).
    pub fn stop(&mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
    }

    /// Something to wait on for the guest's end, usable without holding the guest.
    pub fn waiter(&self) -> ExitWaiter {
        ExitWaiter(self.exit.clone())
    }
}

#[derive(Clone)]
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

/// A guest's store and what it runs, of either kind.
enum Instance {
    Module(wasmtime::Store<P1State>, wasmtime::InstancePre<P1State>),
    Component(wasmtime::Store<P2State>, wasmtime_wasi::p2::bindings::CommandPre<P2State>),
}

impl Instance {
    /// Builds the store of `compiled`'s kind (see `host`).
    fn new(
        engine: &wasmtime::Engine,
        compiled: &Compiled,
        spec: &GuestSpec,
        preopens: &[layout::Preopen],
        output: (Writer, Writer),
        usage: Arc<Usage>,
    ) -> Result<Self> {
        Ok(match &compiled.program {
            Program::Module(pre) => Instance::Module(p1::store(engine, spec, preopens, output, usage)?, pre.clone()),
            Program::Component(component) => {
                let pre = component.command.clone().ok_or_else(|| {
                    Error::internal("running a component", anyhow::anyhow!("it does not export `wasi:cli/run`"))
                })?;
                Instance::Component(p2::store(engine, spec, preopens, output, MemoryLimiter::new(usage))?, pre)
            }
        })
    }

    /// Instantiates and runs the program to its end.
    async fn run(&mut self, usage: &Usage) -> wasmtime::Result<()> {
        let instantiating = std::time::Instant::now();
        let instantiated =
            || usage.instantiate_nanos.store(instantiating.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match self {
            Instance::Module(store, pre) => {
                let instance = pre.instantiate_async(&mut *store).await.map_err(|e| e.context(NotInstantiated))?;
                instantiated();
                let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
                start.call_async(&mut *store, ()).await
            }
            Instance::Component(store, pre) => {
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

    /// Whether a memory or table growth of this instance was refused, and why.
    fn memory_refusal(&self) -> Option<Refusal> {
        match self {
            Instance::Module(store, _) => store.data().limiter().refusal(),
            Instance::Component(store, _) => store.data().limiter().refusal(),
        }
    }
}

/// Starts `compiled` with `spec`, on `executor`, its memory and CPU charged
/// to `usage`, its stdout and stderr going to `output`. Returns once its
/// WASI context is built (mounts opened, file mounts copied in).
///
/// Errors: InvalidArgument for a mount that cannot be opened or a file mount
/// that cannot be copied; Internal when the blocking pool is gone.
pub(super) async fn start(
    engine: &wasmtime::Engine,
    executor: &tokio::runtime::Handle,
    compiled: Arc<Compiled>,
    spec: GuestSpec,
    usage: Arc<Usage>,
    output: Output,
) -> Result<Guest> {
    let Output { stdout, stderr, done: output_done, fork } = output;
    // One instance: nothing else writes to its output.
    drop(fork);
    let has_mounts = !spec.mounts.is_empty() || spec.root.is_some();
    let prepare = {
        let (engine, usage) = (engine.clone(), usage.clone());
        move || {
            let (preopens, files) = layout::prepare(&spec)?;
            let instance = Instance::new(&engine, &compiled, &spec, &preopens, (stdout, stderr), usage)?;
            Ok::<_, Error>((instance, files))
        }
    };
    // The root and the mounts are opened (and file mounts copied) from the
    // host's filesystem, which is blocking I/O; a guest without any needs
    // none, and skips the hop to a blocking thread that would be most of its start.
    let (instance, files) = if has_mounts {
        executor.spawn_blocking(prepare).await.map_err(|e| Error::internal("preparing a guest's mounts", e))??
    } else {
        // In the executor's context: what the store spawns (the task feeding
        // a given stdin) must live on the executor, with the guest, not on
        // the caller's runtime (the CRI server's, gone first at shutdown).
        let _executor = executor.enter();
        prepare()?
    };
    let (stop_tx, stop_rx) = oneshot::channel::<Duration>();
    let (exit_tx, exit_rx) = watch::channel(None);
    let task_usage = usage.clone();
    executor.spawn(async move {
        let exit = run_until_stopped(instance, stop_rx, &task_usage).await;
        // Report the exit only once the output is written and the file mounts
        // are copied back: kubelet reads the log and the termination message
        // of an exited container and expects all of them.
        tokio::join!(files.copy_back(), output_done);
        let _ = exit_tx.send(Some(exit));
    });
    Ok(Guest::new(stop_tx, exit_rx))
}

async fn run_until_stopped(mut instance: Instance, stop: oneshot::Receiver<Duration>, usage: &Usage) -> Exit {
    let ended = {
        let run = CpuMeter::new(instance.run(usage), usage);
        tokio::select! {
            biased;
            _ = stop => None,
            result = run => Some(result),
        }
    };
    let exit = match ended {
        None => Exit {
            code: EXIT_KILLED,
            reason: ExitReason::Error,
            message: "stopped".into(),
            finished_at: crate::clock::now_nanos(),
        },
        Some(result) => classify(result, instance.memory_refusal(), usage),
    };
    // Dropping the store closes the guest's stdout and stderr; the output's
    // writer then writes what is left and ends. The memory the instance held
    // is given back to its usage with it (see `MemoryLimiter`).
    drop(instance);
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

/// How a run that ended by itself ended; `refusal` (a growth of the
/// instance that was refused) tells an out-of-memory failure from another
/// trap. A refusal for the budget of all guests ended the guest itself (see
/// `limits::Refusal`): `OOMKilled` whatever its code did.
fn classify(result: wasmtime::Result<()>, refusal: Option<Refusal>, usage: &Usage) -> Exit {
    let finished_at = crate::clock::now_nanos();
    let error = match result {
        Ok(()) => {
            return Exit { code: 0, reason: ExitReason::Completed, message: String::new(), finished_at };
        }
        Err(error) => error,
    };
    if let Some(budget @ Refusal::Budget { .. }) = refusal {
        return Exit { code: EXIT_KILLED, reason: ExitReason::OomKilled, message: budget.to_string(), finished_at };
    }
    if let Some(I32Exit(code)) = error.downcast_ref::<I32Exit>() {
        let reason = if *code == 0 { ExitReason::Completed } else { ExitReason::Error };
        return Exit { code: *code, reason, message: String::new(), finished_at };
    }
    if refusal.is_some() {
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

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use sha2::{Digest, Sha256};

    use super::super::{Captured, Compiler, CpuBandwidth, Engine, Limits, Output, WasmKind, WasmSource};
    use super::*;

    const PAGE: u64 = 65536;

    /// One engine for every test here: each has an executor and an epoch thread that live forever.
    fn engine() -> Arc<Engine> {
        static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
        ENGINE
            .get_or_init(|| {
                let cache = std::env::temp_dir().join(format!("wasmrun-guest-tests-{}", rand::random::<u64>()));
                Engine::new(&cache, Default::default(), Default::default(), Compiler::InProcess, Default::default())
                    .unwrap()
            })
            .clone()
    }

    async fn compile(engine: &Engine, wat: &str) -> Arc<Compiled> {
        let wasm = wat::parse_str(wat).unwrap();
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&wasm)));
        engine.prepare(&digest, WasmKind::Module, WasmSource::Bytes(wasm)).await.unwrap().0
    }

    fn spec() -> GuestSpec {
        GuestSpec { argv: vec!["test".into()], ..GuestSpec::default() }
    }

    /// Writes "hello\n" to stdout and "oops" to stderr, then exits with 3.
    const WRITES_AND_EXITS: &str = r#"(module
        (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
        (memory (export "memory") 1)
        (data (i32.const 64) "hello\n")
        (data (i32.const 80) "oops")
        (func $write (param $fd i32) (param $ptr i32) (param $len i32)
            (i32.store (i32.const 0) (local.get $ptr))
            (i32.store (i32.const 4) (local.get $len))
            (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
        (func (export "_start")
            (call $write (i32.const 1) (i32.const 64) (i32.const 6))
            (call $write (i32.const 2) (i32.const 80) (i32.const 4))
            (call $proc_exit (i32.const 3))))"#;

    /// Holds two pages of memory and spins until stopped.
    const SPINS_WITH_TWO_PAGES: &str = r#"(module (memory 2) (func (export "_start") (loop (br 0))))"#;

    #[tokio::test]
    async fn output_goes_to_memory_and_is_all_there_at_the_exit() {
        let engine = engine();
        let compiled = compile(&engine, WRITES_AND_EXITS).await;
        let (captured, output) = Captured::new(1024);
        let usage = engine.new_usage(Limits::default());
        let guest = engine.start(compiled, spec(), usage.clone(), output).await.unwrap();
        let exit = guest.waiter().wait().await;
        assert_eq!((exit.code, exit.reason, exit.message.as_str()), (3, ExitReason::Error, ""));
        assert_eq!(captured.stdout(), b"hello\n");
        assert_eq!(captured.stderr(), b"oops");
        assert_eq!(usage.snapshot().memory_bytes, 0, "an ended guest holds no memory");
    }

    #[tokio::test]
    async fn returning_from_start_completes_and_a_trap_is_134() {
        let engine = engine();
        let completes = compile(&engine, r#"(module (func (export "_start")))"#).await;
        let guest = engine.start(completes, spec(), engine.new_usage(Limits::default()), Output::discard()).await;
        let exit = guest.unwrap().waiter().wait().await;
        assert_eq!((exit.code, exit.reason), (0, ExitReason::Completed));

        let traps = compile(&engine, r#"(module (func (export "_start") unreachable))"#).await;
        let guest = engine.start(traps, spec(), engine.new_usage(Limits::default()), Output::discard()).await;
        let exit = guest.unwrap().waiter().wait().await;
        assert_eq!((exit.code, exit.reason), (EXIT_TRAPPED, ExitReason::Error));
        assert!(exit.message.contains("unreachable"), "{}", exit.message);
    }

    #[tokio::test]
    async fn instances_sharing_a_usage_share_its_memory_limit() {
        let engine = engine();
        let compiled = compile(&engine, SPINS_WITH_TWO_PAGES).await;
        let usage = engine.new_usage(Limits { memory_bytes: 3 * PAGE, cpu: None });
        let mut first = engine.start(compiled.clone(), spec(), usage.clone(), Output::discard()).await.unwrap();
        while usage.snapshot().memory_bytes < 2 * PAGE {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Two more pages would make four under a limit of three.
        let second = engine.start(compiled, spec(), usage.clone(), Output::discard()).await.unwrap();
        let exit = second.waiter().wait().await;
        assert_eq!((exit.code, exit.reason), (EXIT_KILLED, ExitReason::OomKilled), "{}", exit.message);
        assert!(!first.has_ended());
        assert_eq!(usage.snapshot().memory_bytes, 2 * PAGE, "the refused instance holds nothing");

        first.kill();
        let exit = first.waiter().wait().await;
        assert_eq!((exit.code, exit.reason, exit.message.as_str()), (EXIT_KILLED, ExitReason::Error, "stopped"));
        assert_eq!(usage.snapshot().memory_bytes, 0);
        assert!(usage.snapshot().cpu_nanos > 0, "both instances' CPU time is counted");
    }

    #[tokio::test]
    async fn a_spinning_guest_is_held_back_at_its_cpu_quota() {
        let engine = engine();
        let compiled = compile(&engine, SPINS_WITH_TWO_PAGES).await;
        let cpu =
            CpuBandwidth { quota: std::time::Duration::from_millis(1), period: std::time::Duration::from_secs(1) };
        let usage = engine.new_usage(Limits { memory_bytes: 0, cpu: Some(cpu) });
        let mut guest = engine.start(compiled, spec(), usage.clone(), Output::discard()).await.unwrap();
        // Past 1 ms of CPU in a period, the guest waits for the next one. The
        // limit only keeps a broken quota from hanging the test run.
        let throttled = async {
            while usage.snapshot().throttled_periods == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(120), throttled)
            .await
            .expect("the quota never held the guest back");
        assert!(usage.snapshot().throttled_nanos > 0);
        guest.kill();
        guest.waiter().wait().await;
    }
}
