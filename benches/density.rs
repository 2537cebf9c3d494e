//! Section `density`: how many sleeping guests one daemon holds, and what each
//! one costs. One daemon (release build, log level info) pulls the `sleeper`
//! fixture (prints "sleeping", then sleeps forever in WASI sleeps of `--sleep-secs`, 1 s by default) and is
//! grown to each count of running containers, each in a pod of its own as
//! kubelet makes them (RunPodSandbox, CreateContainer with a log path,
//! StartContainer), `--concurrency` pods at a time. At zero containers and at
//! each count it measures the daemon's memory, mappings, descriptors and idle
//! CPU, and the latency of ContainerStatus and ListContainers. Then it removes
//! every pod and stops the daemon.
//!
//! A start that fails (vm.max_map_count, RLIMIT_NOFILE, …) ends the growing:
//! the error and the count reached are reported, and the report goes on.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use prost::Message;
use rand::Rng;
use tokio::task::JoinSet;
use tonic::Status;
use wasmrun::api::{
    ContainerState, ContainerStatusRequest, CreateContainerRequest, ListContainerStatsRequest, ListContainersRequest,
    ListContainersResponse, ListPodSandboxRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};

use crate::harness::{self, Daemon, Runtime};
use crate::support::{self, Latencies, Process, Table, kib, mib, ms};

/// The largest CRI message kubelet accepts (16 MiB); a ListContainers bigger
/// than this would fail for kubelet too.
const MAX_MESSAGE: usize = 16 << 20;
/// How long the guests of a batch may take to print "sleeping", in all and
/// without any new one doing so.
const SLEEPING_LIMIT: Duration = Duration::from_secs(120);
const SLEEPING_STALL: Duration = Duration::from_secs(15);
/// Times one ListContainers response is decoded again, to time the client's share.
const LIST_DECODES: usize = 10;
/// Guests (the newest) whose instantiation time is read at each count.
const INSTANTIATE_SAMPLES: usize = 200;
/// Pause after a batch (or after the pull) before measuring: the threads tokio
/// started for blocking file work (log files) end after 10 s idle.
const SETTLE: Duration = Duration::from_secs(12);

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Section density")]
pub struct Args {
    /// Numbers of running containers to measure at, reached in increasing order.
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_values_t = [1000, 5000, 10000],
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub counts: Vec<u64>,
    /// Pods started at the same time while growing.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// ContainerStatus calls at each count (one after another, on random containers).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub status_calls: u64,
    /// ListContainers calls at each count (one after another).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub list_calls: u64,
    /// Seconds each sleeping guest sleeps between wake-ups (the CPU a sleeping guest costs is its wake-ups).
    #[arg(long, value_name = "SECS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub sleep_secs: u64,
    /// Seconds over which the daemon's idle CPU use is measured at each count.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub idle_secs: u64,
}

/// A running sleeper and its pod.
struct Guest {
    pod_id: String,
    container_id: String,
    log: PathBuf,
}

/// A pod start that failed.
struct Failure {
    /// Number of the pod (0-based) in the order of launch.
    n: usize,
    stage: &'static str,
    status: Status,
    /// The pod, when RunPodSandbox got through (to remove it at the end).
    pod_id: Option<String>,
}

/// The daemon at a number of running containers.
struct Point {
    /// The count asked for (0 for the baseline).
    target: usize,
    /// Containers RUNNING according to ListContainers.
    running: usize,
    /// Containers started by the batch that led here, and how long it took.
    batch: Option<(usize, Duration)>,
    rss: u64,
    rss_anon: u64,
    rss_file: u64,
    /// Sum of the guests' linear memory (ListContainerStats working_set_bytes).
    linear: u64,
    /// Number of containers ListContainerStats reported.
    stats: usize,
    maps: u64,
    fds: u64,
    threads: u64,
    /// CPU used while nobody called, in % of one core.
    idle_cpu: f64,
    status: Latencies,
    list: Latencies,
    /// How long instantiating the guest took, inside the daemon, for a sample of the guests.
    instantiate: Latencies,
    /// Encoded size of a ListContainers response.
    list_bytes: usize,
    /// Decoding one ListContainers response in this client: the client's part of `list`.
    list_decode: Latencies,
    /// CPU per ListContainers call (mean over the timed calls): the daemon's, and this client's.
    list_cpu: Option<(Duration, Duration)>,
    /// ListPodSandbox (no filter), the other half of kubelet's relist.
    list_pods: Latencies,
    /// Calls that failed while measuring.
    errors: Vec<String>,
    /// Containers listed but not RUNNING (guests that ended at once after
    /// StartContainer answered), and the status of one of them.
    not_running: Option<(usize, String)>,
}

pub async fn run(args: &Args) {
    let mut counts: Vec<usize> = args.counts.iter().map(|&c| c as usize).collect();
    counts.sort_unstable();
    counts.dedup();
    let concurrency = args.concurrency as usize;
    let max_maps = support::max_map_count();
    let (nofile_soft, nofile_hard) = support::nofile_rlimit();
    eprintln!(
        "density: counts {counts:?}, concurrency {concurrency}; vm.max_map_count {}, RLIMIT_NOFILE {nofile_soft} (hard {nofile_hard})",
        max_maps.map_or("?".into(), |m| m.to_string())
    );

    eprintln!("density: building the fixtures, starting the registry and the daemon");
    let daemon = Daemon::start_with(None, &["--log-level", "info"]).await;
    let process = Process(daemon.pid().expect("the daemon runs"));
    let mut rt: Runtime = daemon.runtime().max_decoding_message_size(MAX_MESSAGE);
    let image = harness::push_fixture("sleeper", "bench-sleeper").await;
    let pull_started = Instant::now();
    harness::pull(&daemon, &image.name).await;
    let pull_time = pull_started.elapsed();
    eprintln!("density: pulled {} in {}", image.name, duration(pull_time));

    let mut notes: Vec<String> = Vec::new();
    let mut guests: Vec<Guest> = Vec::new();
    let mut stray_pods: Vec<String> = Vec::new();
    // Why the growing stopped before the last count, if it did.
    let mut stop: Option<String> = None;
    let mut daemon_died = false;

    eprintln!("density: measuring at 0 containers");
    let baseline = measure(&mut rt, process, &guests, 0, None, args).await;
    let mut points = vec![];
    for &target in &counts {
        if target <= guests.len() {
            continue;
        }
        eprintln!("density: growing from {} to {target} containers", guests.len());
        let before = guests.len();
        let started_at = Instant::now();
        let failed = grow(&rt, &image.name, target, concurrency, &mut guests, &mut stray_pods, args.sleep_secs).await;
        let batch = (guests.len() - before, started_at.elapsed());
        // The limits' gauges at a failure, before anything is released.
        let failure = failed.map(|f| (f, process.maps(), process.fds()));
        if !process.alive() {
            daemon_died = true;
            notes.push(format!(
                "ERROR: the daemon exited while growing to {target} containers ({} had started); last lines of its log {}:\n{}",
                guests.len(),
                daemon.log_path().display(),
                harness::tail_file(&daemon.log_path(), 20)
            ));
            break;
        }
        let missing = wait_sleeping(&guests[before..]).await;
        if missing > 0 {
            notes.push(format!(
                "WARNING: at {target}: {missing} of the {} guests started did not log \"sleeping\" \
                 (waited until none did for {}, at most {})",
                batch.0,
                duration(SLEEPING_STALL),
                duration(SLEEPING_LIMIT)
            ));
        }
        eprintln!("density: measuring at {} containers", guests.len());
        let point = measure(&mut rt, process, &guests, target, Some(batch), args).await;
        let (running, maps, fds, nofile) = (point.running, point.maps, point.fds, process.nofile_limit());
        if let Some((f, maps, fds)) = &failure {
            stop = Some(format!(
                "LIMIT: starting pod #{} failed at {} with {:?}: {:?}; running containers reached: {running}; {}",
                f.n,
                f.stage,
                f.status.code(),
                f.status.message(),
                limit_causes(*maps, *fds, max_maps, nofile, f.status.message())
            ));
        } else if let Some((n, status)) = &point.not_running {
            // StartContainer answered, then the guest ended before it ran.
            stop = Some(format!(
                "LIMIT: {n} of the {target} containers started ended at once (StartContainer had answered OK); \
                 one of them: {status}; running containers reached: {running}; {}",
                limit_causes(maps, fds, max_maps, nofile, status)
            ));
        }
        points.push(point);
        if stop.is_some() {
            break;
        }
    }

    // The report of the measurements, before the teardown (which might fail).
    let mut table = Table::new(&[
        "count",
        "running",
        "start/s",
        "RSS MiB",
        "RSS/ctr KiB",
        "linmem/ctr KiB",
        "RSS-linmem/ctr KiB",
        "maps",
        "fds",
        "threads",
        "idle CPU %",
        "Status p50/p99 ms",
        "List p50/p99 ms",
        "List decode p50/p99 ms",
        "List CPU daemon/client ms",
        "ListPods p50/p99 ms",
        "instantiate p50/p99 ms",
    ]);
    for point in std::iter::once(&baseline).chain(&points) {
        table.row(row(point, &baseline));
    }
    println!(
        "== density: sleeping containers in one daemon (fixture `sleeper`, one container per pod, \
         {concurrency} starts at a time) =="
    );
    println!("{}", table.render());
    println!("{LEGEND}");

    let last = points.last().unwrap_or(&baseline);
    notes.push(format!(
        "pull of the sleeper image (compiled at pull): {}; RSS at 0 containers {} MiB (anon {}, file {})",
        duration(pull_time),
        mib(baseline.rss),
        mib(baseline.rss_anon),
        mib(baseline.rss_file)
    ));
    if last.target > 0 {
        notes.push(format!(
            "at {} containers: RSS anon {} MiB, file {} MiB; a ListContainers response is {} KiB \
             (kubelet's limit: {} MiB); ListContainerStats listed {} containers",
            last.running,
            mib(last.rss_anon),
            mib(last.rss_file),
            last.list_bytes / 1024,
            MAX_MESSAGE >> 20,
            last.stats
        ));
    }
    notes.extend(limit_notes(&baseline, last, max_maps, process.nofile_limit()));
    notes.extend(stop);
    if let Some(&skipped) = counts.iter().find(|&&c| c > guests.len() && points.iter().all(|p| p.target != c)) {
        notes.push(format!("counts from {skipped} on were not reached"));
    }
    for point in std::iter::once(&baseline).chain(&points) {
        for error in &point.errors {
            notes.push(format!("ERROR while measuring at {}: {error}", point.target));
        }
    }

    if !daemon_died {
        let pods: Vec<String> = guests.iter().map(|g| g.pod_id.clone()).chain(stray_pods).collect();
        notes.push(teardown(&mut rt, pods, concurrency, process, baseline.rss).await);
    }
    support::finish(daemon, notes).await;
}

const LEGEND: &str = "\
count: containers asked for; running: RUNNING in ListContainers when measured; start/s: containers started \
per second by the batch that led to the row (RunPodSandbox + CreateContainer + StartContainer);
RSS: the daemon's VmRSS; RSS/ctr: (RSS - RSS at 0) / running; linmem/ctr: the guests' linear memory \
(ListContainerStats working_set_bytes) / running; RSS-linmem/ctr: RSS/ctr minus linmem/ctr, \
the host-side cost of a guest beyond its linear memory (<0: RSS grew less than the linear memory, \
i.e. most of the guests' linear memory is not resident);
maps: lines of /proc/PID/maps (limited by vm.max_map_count); fds: open descriptors; \
idle CPU: the daemon's user+system CPU while nobody calls, in % of one core;
Status / List: latency of ContainerStatus on random containers and of ListContainers (all), one call at a time;
List decode: decoding one ListContainers response in this client (prost), 10 times: the client's part of List;
List CPU: user+system CPU per ListContainers call, mean over the timed calls, of the daemon (its sleepers' \
wake-ups included: see idle CPU) and of this client (its decoding included);
ListPods: latency of ListPodSandbox (all), one call at a time, as many calls as List: with ListContainers, kubelet's relist;
instantiate: the daemon's own measure of a guest's instantiation (verbose ContainerStatus `usage.instantiate_nanos`), for the newest 200 guests.
";

fn row(p: &Point, base: &Point) -> Vec<String> {
    let per = |bytes: f64| if p.running > 0 { kib(bytes / p.running as f64) } else { "-".into() };
    let grown = p.rss as f64 - base.rss as f64;
    vec![
        p.target.to_string(),
        p.running.to_string(),
        p.batch.map_or("-".into(), |(n, t)| format!("{:.0}", n as f64 / t.as_secs_f64())),
        mib(p.rss),
        per(grown),
        per(p.linear as f64),
        if grown < p.linear as f64 { "<0".into() } else { per(grown - p.linear as f64) },
        p.maps.to_string(),
        p.fds.to_string(),
        p.threads.to_string(),
        format!("{:.1}", p.idle_cpu),
        if p.running > 0 { p.status.p50_p99() } else { "-".into() },
        p.list.p50_p99(),
        p.list_decode.p50_p99(),
        p.list_cpu.map_or("-".into(), |(daemon, client)| format!("{}/{}", ms(daemon), ms(client))),
        p.list_pods.p50_p99(),
        p.instantiate.p50_p99(),
    ]
}

/// Starts pod `n` with a sleeper in it, as kubelet does.
async fn start_one(mut rt: Runtime, image: String, n: usize, sleep_secs: u64) -> Result<Guest, Failure> {
    let fail = |stage, status, pod_id| Failure { n, stage, status, pod_id };
    let pod = harness::pod_config(&format!("sleeper-{n}"), &harness::new_uid());
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(pod.clone()), runtime_handler: String::new() })
        .await
        .map_err(|s| fail("RunPodSandbox", s, None))?
        .into_inner()
        .pod_sandbox_id;
    let container = harness::container_config("sleeper", &image, &[], &[&sleep_secs.to_string()], &[]);
    let log = PathBuf::from(&pod.log_directory).join(&container.log_path);
    std::fs::create_dir_all(log.parent().expect("a log path has a directory"))
        .expect("create the container log directory");
    let container_id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container),
            sandbox_config: Some(pod),
        })
        .await
        .map_err(|s| fail("CreateContainer", s, Some(pod_id.clone())))?
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest { container_id: container_id.clone() })
        .await
        .map_err(|s| fail("StartContainer", s, Some(pod_id.clone())))?;
    Ok(Guest { pod_id, container_id, log })
}

/// Starts pods, `concurrency` at a time, until `guests` holds `target`. The
/// first failure stops the launching (the starts in flight finish) and is returned.
async fn grow(
    rt: &Runtime,
    image: &str,
    target: usize,
    concurrency: usize,
    guests: &mut Vec<Guest>,
    stray_pods: &mut Vec<String>,
    sleep_secs: u64,
) -> Option<Failure> {
    let from = guests.len();
    let step = ((target - from) / 10).max(1);
    let started_at = Instant::now();
    let mut next = from;
    let mut tasks = JoinSet::new();
    let mut failure: Option<Failure> = None;
    let mut failed = 0;
    loop {
        while failure.is_none() && next < target && tasks.len() < concurrency {
            tasks.spawn(start_one(rt.clone(), image.to_owned(), next, sleep_secs));
            next += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined.expect("a start task panicked") {
            Ok(guest) => {
                guests.push(guest);
                let done = guests.len() - from;
                if done.is_multiple_of(step) {
                    let rate = done as f64 / started_at.elapsed().as_secs_f64();
                    eprintln!("density: {}/{target} running ({rate:.0} started/s)", guests.len());
                }
            }
            Err(f) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!(
                        "density: pod #{} failed at {} ({:?}): {}",
                        f.n,
                        f.stage,
                        f.status.code(),
                        f.status.message()
                    );
                }
                stray_pods.extend(f.pod_id.clone());
                failure.get_or_insert(f);
            }
        }
    }
    if failed > 0 {
        eprintln!("density: {failed} starts failed; stopped growing at {} running", guests.len());
    }
    failure
}

/// Waits (at most [`SLEEPING_LIMIT`], or [`SLEEPING_STALL`] without
/// progress) until each guest's log holds its "sleeping" line; returns the
/// number of guests whose log does not.
async fn wait_sleeping(guests: &[Guest]) -> usize {
    let deadline = Instant::now() + SLEEPING_LIMIT;
    let mut progress_at = Instant::now();
    let mut pending: Vec<&Guest> = guests.iter().collect();
    loop {
        let before = pending.len();
        pending.retain(|g| !std::fs::read_to_string(&g.log).is_ok_and(|text| text.contains(" stdout F sleeping")));
        if pending.len() < before {
            progress_at = Instant::now();
        }
        if pending.is_empty() || Instant::now() > deadline || progress_at.elapsed() > SLEEPING_STALL {
            return pending.len();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Measures the daemon with `guests` running: idle CPU first (nobody calls),
/// then memory, mappings and descriptors, then the latency of the calls.
async fn measure(
    rt: &mut Runtime,
    process: Process,
    guests: &[Guest],
    target: usize,
    batch: Option<(usize, Duration)>,
    args: &Args,
) -> Point {
    tokio::time::sleep(SETTLE).await;
    let idle = Duration::from_secs(args.idle_secs);
    let cpu_before = process.cpu_time();
    let idle_started = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_cpu =
        (process.cpu_time().saturating_sub(cpu_before)).as_secs_f64() / idle_started.elapsed().as_secs_f64() * 100.0;

    let mut point = Point {
        target,
        running: 0,
        batch,
        rss: process.rss(),
        rss_anon: process.status_bytes("RssAnon").unwrap_or(0),
        rss_file: process.status_bytes("RssFile").unwrap_or(0),
        linear: 0,
        stats: 0,
        maps: process.maps(),
        fds: process.fds(),
        threads: process.threads(),
        idle_cpu,
        status: Latencies::default(),
        list: Latencies::default(),
        instantiate: Latencies::default(),
        list_bytes: 0,
        list_decode: Latencies::default(),
        list_cpu: None,
        list_pods: Latencies::default(),
        errors: Vec::new(),
        not_running: None,
    };

    // Which containers run (and why the others do not), untimed.
    let mut running: HashSet<String> = HashSet::new();
    match rt.list_containers(ListContainersRequest { filter: None }).await {
        Ok(response) => {
            let response = response.into_inner();
            point.list_bytes = response.encoded_len();
            let bytes = response.encode_to_vec();
            for _ in 0..LIST_DECODES {
                let started = Instant::now();
                let decoded =
                    ListContainersResponse::decode(bytes.as_slice()).expect("decode a ListContainers response");
                point.list_decode.push(started.elapsed());
                drop(decoded);
            }
            let (up, others): (Vec<_>, Vec<_>) =
                response.containers.iter().partition(|c| c.state() == ContainerState::ContainerRunning);
            running = up.iter().map(|c| c.id.clone()).collect();
            point.running = running.len();
            if let Some(other) = others.first() {
                point.not_running = Some((others.len(), describe(rt, &other.id).await));
            }
        }
        Err(status) => point.errors.push(format!("ListContainers: {status:?}")),
    }

    // The linear memory of the running guests (an ended one still reports its last size).
    match rt.list_container_stats(ListContainerStatsRequest { filter: None }).await {
        Ok(response) => {
            let stats = response.into_inner().stats;
            point.stats = stats.len();
            point.linear = stats
                .iter()
                .filter(|s| s.attributes.as_ref().is_some_and(|a| running.contains(&a.id)))
                .filter_map(|s| s.memory.as_ref()?.working_set_bytes.as_ref().map(|v| v.value))
                .sum();
        }
        Err(status) => point.errors.push(format!("ListContainerStats: {status:?}")),
    }

    eprintln!("density: at {}: timing {} ListContainers calls", point.running, args.list_calls);
    let client = Process(std::process::id());
    let (daemon_cpu_before, client_cpu_before) = (process.cpu_time(), client.cpu_time());
    for _ in 0..args.list_calls {
        let started = Instant::now();
        match rt.list_containers(ListContainersRequest { filter: None }).await {
            Ok(_) => point.list.push(started.elapsed()),
            Err(status) => {
                point.errors.push(format!("ListContainers: {status:?}"));
                break;
            }
        }
    }
    if !point.list.is_empty() {
        let calls = point.list.len() as u32;
        point.list_cpu = Some((
            process.cpu_time().saturating_sub(daemon_cpu_before) / calls,
            client.cpu_time().saturating_sub(client_cpu_before) / calls,
        ));
    }

    for _ in 0..args.list_calls {
        let started = Instant::now();
        match rt.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await {
            Ok(_) => point.list_pods.push(started.elapsed()),
            Err(status) => {
                point.errors.push(format!("ListPodSandbox: {status:?}"));
                break;
            }
        }
    }

    // The daemon's own measure of instantiation (verbose ContainerStatus), untimed here.
    for guest in guests.iter().rev().take(INSTANTIATE_SAMPLES) {
        let request = ContainerStatusRequest { container_id: guest.container_id.clone(), verbose: true };
        let Ok(response) = rt.container_status(request).await else { continue };
        let nanos = response
            .into_inner()
            .info
            .get("info")
            .and_then(|info| serde_json::from_str::<serde_json::Value>(info).ok())
            .and_then(|info| info["usage"]["instantiate_nanos"].as_u64());
        if let Some(nanos) = nanos {
            point.instantiate.push(Duration::from_nanos(nanos));
        }
    }

    if !guests.is_empty() {
        for _ in 0..args.status_calls {
            let id = guests[rand::rng().random_range(0..guests.len())].container_id.clone();
            let started = Instant::now();
            match rt.container_status(ContainerStatusRequest { container_id: id, verbose: false }).await {
                Ok(_) => point.status.push(started.elapsed()),
                Err(status) => {
                    point.errors.push(format!("ContainerStatus: {status:?}"));
                    break;
                }
            }
        }
    }
    eprintln!(
        "density: at {}: RSS {} MiB, {} maps, {} fds, idle CPU {:.1}%, ContainerStatus {} ms, ListContainers {} ms",
        point.running,
        mib(point.rss),
        point.maps,
        point.fds,
        point.idle_cpu,
        point.status.p50_p99(),
        point.list.p50_p99()
    );
    point
}

/// The state, exit code, reason and message of a container, for a report:
/// the message's first line, without the backtrace that may follow it.
async fn describe(rt: &mut Runtime, id: &str) -> String {
    let request = ContainerStatusRequest { container_id: id.to_owned(), verbose: false };
    match rt.container_status(request).await.map(|r| r.into_inner().status) {
        Ok(Some(s)) => {
            let mut message = s.message.lines().next().unwrap_or("").to_owned();
            if s.message.contains("\nStack backtrace:") {
                message.push_str(" [followed by a backtrace]");
            }
            format!("{id} is {:?}, exit code {}, reason {:?}, message {message:?}", s.state(), s.exit_code, s.reason)
        }
        Ok(None) => format!("ContainerStatus {id} answered without a status"),
        Err(status) => format!("ContainerStatus {id}: {status:?}"),
    }
}

/// True when `value` is within 2% (at least 64) of `limit`.
fn near(value: u64, limit: u64) -> bool {
    value + (limit / 50).max(64) >= limit
}

/// What the failure of a start points at, from the daemon's mappings and descriptors.
fn limit_causes(maps: u64, fds: u64, max_maps: Option<u64>, nofile: Option<u64>, message: &str) -> String {
    let mut causes = Vec::new();
    if let Some(limit) = max_maps.filter(|&limit| near(maps, limit)) {
        causes.push(format!(
            "vm.max_map_count reached: the daemon has {maps} mappings of at most {limit} \
             (mmap fails with ENOMEM, \"Cannot allocate memory\", at the limit)"
        ));
    }
    if nofile.is_some_and(|limit| near(fds, limit)) || message.contains("Too many open files") {
        let limit = nofile.map_or("?".into(), |l| l.to_string());
        causes.push(format!("RLIMIT_NOFILE reached: the daemon has {fds} open files of at most {limit}"));
    }
    if causes.is_empty() {
        causes.push(format!("no known limit is near ({maps} mappings, {fds} open files)"));
    }
    causes.join("; ")
}

/// What the measured growth of mappings and descriptors says about the limits.
fn limit_notes(base: &Point, last: &Point, max_maps: Option<u64>, nofile: Option<u64>) -> Vec<String> {
    let mut notes = Vec::new();
    let n = last.running as f64;
    let gauges = [
        ("vm.max_map_count", "maps", max_maps, base.maps, last.maps),
        ("RLIMIT_NOFILE (the daemon's)", "fds", nofile, base.fds, last.fds),
    ];
    for (limit_name, gauge, limit, at_zero, at_last) in gauges {
        let Some(limit) = limit else {
            notes.push(format!("{limit_name}: unknown"));
            continue;
        };
        if n == 0.0 {
            notes.push(format!("{limit_name} {limit}: {gauge} {at_zero} at 0 containers"));
            continue;
        }
        let per = (at_last as f64 - at_zero as f64) / n;
        let reach = if per > 0.0 {
            format!("reached near {:.0} containers", (limit as f64 - at_zero as f64) / per)
        } else {
            "not approached".into()
        };
        notes.push(format!(
            "{limit_name} {limit}: {gauge} {at_zero} at 0 containers, {at_last} at {} ({per:.2} per container): {reach}{}",
            last.running,
            if near(at_last, limit) { " -- AT THE LIMIT" } else { "" }
        ));
    }
    notes
}

/// Stops and removes every pod, `concurrency` at a time; checks that nothing
/// is left and what the daemon's RSS comes back to.
async fn teardown(
    rt: &mut Runtime,
    pods: Vec<String>,
    concurrency: usize,
    process: Process,
    rss_at_zero: u64,
) -> String {
    eprintln!("density: removing {} pods", pods.len());
    let started = Instant::now();
    let total = pods.len();
    let mut pending = pods.into_iter();
    let mut tasks = JoinSet::new();
    let mut errors: Vec<String> = Vec::new();
    loop {
        while tasks.len() < concurrency {
            let Some(pod) = pending.next() else { break };
            let mut rt = rt.clone();
            tasks.spawn(async move {
                rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() })
                    .await
                    .map_err(|s| format!("StopPodSandbox {pod}: {s:?}"))?;
                rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() })
                    .await
                    .map_err(|s| format!("RemovePodSandbox {pod}: {s:?}"))?;
                Ok::<(), String>(())
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        if let Err(e) = joined.expect("a teardown task panicked") {
            errors.push(e);
        }
    }
    let took = started.elapsed();
    let left_pods =
        rt.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.map(|r| r.into_inner().items.len());
    let left_containers =
        rt.list_containers(ListContainersRequest { filter: None }).await.map(|r| r.into_inner().containers.len());
    tokio::time::sleep(SETTLE).await;
    let rss = process.rss();
    let mut note = format!(
        "teardown: stopped and removed {total} pods in {} ({:.0} pods/s); left: {} pods, {} containers; \
         RSS after: {} MiB (anon {}, file {}; {} MiB at 0 containers before); {} maps, {} fds, {} threads",
        duration(took),
        total as f64 / took.as_secs_f64().max(1e-9),
        left_pods.map_or_else(|s| format!("? ({s:?})"), |n| n.to_string()),
        left_containers.map_or_else(|s| format!("? ({s:?})"), |n| n.to_string()),
        mib(rss),
        mib(process.status_bytes("RssAnon").unwrap_or(0)),
        mib(process.status_bytes("RssFile").unwrap_or(0)),
        mib(rss_at_zero),
        process.maps(),
        process.fds(),
        process.threads()
    );
    if let Some(first) = errors.first() {
        note.push_str(&format!("; {} calls FAILED, the first: {first}", errors.len()));
    }
    note
}

fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{} ms", ms(d)) } else { format!("{:.1} s", d.as_secs_f64()) }
}
