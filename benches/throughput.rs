//! Section `throughput`: how many short-lived containers one daemon starts and
//! finishes per second. One daemon (release build, log level info) with the
//! `hello` fixture pulled (it prints a few lines and exits 0) runs
//! `--throughput-guests` of them, each in a pod of its own, at most
//! `--throughput-concurrency` in flight: RunPodSandbox, CreateContainer with a
//! log path, StartContainer, wait for the container's exit (GetContainerEvents,
//! ContainerStatus as a fallback once a second), StopPodSandbox,
//! RemovePodSandbox, as kubelet would for a pod that ran to completion.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use wasmrun::api::{
    ContainerEventType, ContainerState, ContainerStatusRequest, CreateContainerRequest, GetEventsRequest,
    ListPodSandboxRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};

use crate::harness::{self, Daemon, Runtime};
use crate::support::{Latencies, Process, Table};

/// How long one guest may take to exit once started.
const EXIT_LIMIT: Duration = Duration::from_secs(60);
/// Interval of the ContainerStatus fallback while waiting for the exit event.
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// Lifecycles run, one at a time, before the measured ones.
const WARMUP: usize = 8;

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Section throughput")]
pub struct Args {
    /// Short-lived guests (`hello`) to run, each in a pod of its own.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub throughput_guests: u64,
    /// Guests in flight at a time.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub throughput_concurrency: u64,
    /// The daemon's `--log-level` (`debug` logs every CRI call with its duration, at a cost).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub throughput_log_level: String,
}

/// Exit codes by container id, from the event stream: waiters, and exits
/// that came before their waiter.
#[derive(Default)]
struct Exits {
    waiting: HashMap<String, oneshot::Sender<i32>>,
    early: HashMap<String, i32>,
}

type SharedExits = Arc<Mutex<Exits>>;

/// How one lifecycle went.
struct Lifecycle {
    took: Duration,
    exit_code: i32,
    /// The exit was seen by the ContainerStatus fallback, not by an event.
    by_fallback: bool,
}

pub async fn run(args: &Args) {
    let guests = args.throughput_guests as usize;
    let concurrency = args.throughput_concurrency as usize;
    eprintln!("throughput: building the fixtures, starting the registry and the daemon");
    let daemon = Daemon::start_with(None, &["--log-level", &args.throughput_log_level]).await;
    let process = Process(daemon.pid().expect("the daemon runs"));
    let rt = daemon.runtime();
    let image = harness::push_fixture("hello", "bench-hello").await;
    harness::pull(&daemon, &image.name).await;

    let exits: SharedExits = Arc::default();
    let mut notes = Vec::new();
    let events = match rt.clone().get_container_events(GetEventsRequest {}).await {
        Ok(stream) => {
            let exits = exits.clone();
            let mut stream = stream.into_inner();
            Some(tokio::spawn(async move {
                while let Some(Ok(event)) = stream.next().await {
                    if event.container_event_type() != ContainerEventType::ContainerStoppedEvent {
                        continue;
                    }
                    let code = event
                        .containers_statuses
                        .iter()
                        .find(|s| s.id == event.container_id)
                        .map_or(i32::MIN, |s| s.exit_code);
                    let mut exits = exits.lock().unwrap();
                    match exits.waiting.remove(&event.container_id) {
                        Some(waiter) => {
                            let _ = waiter.send(code);
                        }
                        None => {
                            exits.early.insert(event.container_id, code);
                        }
                    }
                }
            }))
        }
        Err(s) => {
            notes.push(format!("GetContainerEvents failed ({s:?}): every exit is seen by polling ContainerStatus"));
            None
        }
    };

    eprintln!("throughput: {WARMUP} warm-up lifecycles");
    for n in 0..WARMUP {
        if let Err(e) = lifecycle(rt.clone(), image.name.clone(), format!("warm-{n}"), exits.clone()).await {
            notes.push(format!("ERROR: warm-up lifecycle: {e}"));
        }
    }

    eprintln!("throughput: {guests} guests, {concurrency} in flight");
    let cpu_before = process.cpu_time();
    let bench = Process(std::process::id());
    let bench_cpu_before = bench.cpu_time();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut next = 0;
    let mut done = Latencies::default();
    let (mut ok, mut nonzero, mut by_fallback) = (0usize, 0usize, 0usize);
    let mut failures: Vec<String> = Vec::new();
    let step = (guests / 10).max(1);
    loop {
        while next < guests && tasks.len() < concurrency {
            tasks.spawn(lifecycle(rt.clone(), image.name.clone(), format!("tp-{next}"), exits.clone()));
            next += 1;
        }
        let Some(joined) = tasks.join_next().await else { break };
        match joined {
            Ok(Ok(l)) => {
                done.push(l.took);
                ok += 1;
                nonzero += usize::from(l.exit_code != 0);
                by_fallback += usize::from(l.by_fallback);
            }
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("a lifecycle task failed: {e}")),
        }
        let finished = ok + failures.len();
        if finished.is_multiple_of(step) {
            eprintln!(
                "throughput: {finished}/{guests} done ({:.0}/s)",
                finished as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let wall = started.elapsed();
    let cpu = process.cpu_time().saturating_sub(cpu_before);
    let bench_cpu = bench.cpu_time().saturating_sub(bench_cpu_before);
    if let Some(events) = events {
        events.abort();
    }

    let mut table = Table::new(&[
        "guests",
        "in flight",
        "completed",
        "failed",
        "wall s",
        "containers/s",
        "lifecycle p50/p99 ms",
        "daemon CPU ms/ctr",
        "daemon CPU cores",
        "client CPU cores",
    ]);
    table.row(vec![
        guests.to_string(),
        concurrency.to_string(),
        ok.to_string(),
        failures.len().to_string(),
        format!("{:.2}", wall.as_secs_f64()),
        format!("{:.0}", ok as f64 / wall.as_secs_f64()),
        done.p50_p99(),
        format!("{:.3}", cpu.as_secs_f64() * 1000.0 / ok.max(1) as f64),
        format!("{:.2}", cpu.as_secs_f64() / wall.as_secs_f64()),
        format!("{:.2}", bench_cpu.as_secs_f64() / wall.as_secs_f64()),
    ]);
    println!(
        "== throughput: short-lived guests (fixture `hello`) started and finished, one pod each, \
         {concurrency} in flight =="
    );
    println!("{}", table.render());
    println!("{LEGEND}");

    if nonzero > 0 {
        notes.push(format!("WARNING: {nonzero} guests exited with a code other than 0"));
    }
    if by_fallback > 0 {
        notes.push(format!(
            "{by_fallback} exits were seen by the ContainerStatus fallback (up to {FALLBACK_POLL:?} late), not by an event"
        ));
    }
    if let Some(first) = failures.first() {
        notes.push(format!("FAILED: {} lifecycles; the first: {first}", failures.len()));
    }
    let left = rt.clone().list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.map(|r| r.into_inner().items);
    notes.push(format!(
        "{WARMUP} warm-up lifecycles before, one at a time, not counted; pods left after: {}",
        left.map_or_else(|s| format!("? ({s:?})"), |pods| pods.len().to_string())
    ));
    crate::support::finish(daemon, notes).await;
}

const LEGEND: &str = "\
wall: from the first RunPodSandbox to the last RemovePodSandbox answered; containers/s: completed / wall;
lifecycle: one guest's RunPodSandbox → CreateContainer → StartContainer → exit seen → StopPodSandbox → \
RemovePodSandbox, as the client sees it (with the others in flight);
daemon CPU: the daemon's user+system CPU time over the run, per completed container and in cores (2 = both cores \
of this machine busy); client CPU: the same for this benchmark process (the CRI client), on the same cores.
";

/// One guest's whole life; its pod and log directory are removed at the end.
async fn lifecycle(mut rt: Runtime, image: String, name: String, exits: SharedExits) -> Result<Lifecycle, String> {
    let started = Instant::now();
    let pod = harness::pod_config(&name, &harness::new_uid());
    let log_dir = PathBuf::from(&pod.log_directory);
    let container = harness::container_config("hello", &image, &[], &[], &[]);
    std::fs::create_dir_all(log_dir.join("hello")).map_err(|e| format!("creating the log directory: {e}"))?;
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(pod.clone()), runtime_handler: String::new() })
        .await
        .map_err(|s| format!("RunPodSandbox: {s:?}"))?
        .into_inner()
        .pod_sandbox_id;
    let result = async {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container),
            sandbox_config: Some(pod),
        };
        let id = rt
            .create_container(request)
            .await
            .map_err(|s| format!("CreateContainer: {s:?}"))?
            .into_inner()
            .container_id;
        let (tx, mut exited) = oneshot::channel();
        {
            let mut exits = exits.lock().unwrap();
            match exits.early.remove(&id) {
                Some(code) => {
                    let _ = tx.send(code);
                }
                None => {
                    exits.waiting.insert(id.clone(), tx);
                }
            }
        }
        rt.start_container(StartContainerRequest { container_id: id.clone() })
            .await
            .map_err(|s| format!("StartContainer: {s:?}"))?;
        let deadline = Instant::now() + EXIT_LIMIT;
        let (exit_code, by_fallback) = loop {
            match tokio::time::timeout(FALLBACK_POLL, &mut exited).await {
                Ok(Ok(code)) => break (code, false),
                // The event stream is gone: poll.
                Ok(Err(_)) => tokio::time::sleep(FALLBACK_POLL).await,
                Err(_) => {}
            }
            let status = rt
                .container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false })
                .await
                .map_err(|s| format!("ContainerStatus: {s:?}"))?
                .into_inner()
                .status
                .ok_or("ContainerStatus without a status")?;
            if status.state() == ContainerState::ContainerExited {
                break (status.exit_code, true);
            }
            if Instant::now() > deadline {
                return Err(format!("container {id} did not exit within {EXIT_LIMIT:?}"));
            }
        };
        exits.lock().unwrap().waiting.remove(&id);
        Ok::<_, String>((exit_code, by_fallback))
    }
    .await;
    let removed = async {
        rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod_id.clone() })
            .await
            .map_err(|s| format!("StopPodSandbox: {s:?}"))?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod_id.clone() })
            .await
            .map_err(|s| format!("RemovePodSandbox: {s:?}"))
    }
    .await;
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&log_dir);
    let (exit_code, by_fallback) = result?;
    removed?;
    Ok(Lifecycle { took, exit_code, by_fallback })
}
