//! Section `start`: how long a pod takes from RunPodSandbox to its guest's
//! first log line on disk, against what the same guest costs in-process and
//! against containerd + runc.
//!
//! - wasmrun: one daemon (release build, log level info) with the `hello`
//!   fixture pulled. Each start is a pod of its own, made as kubelet makes it:
//!   RunPodSandbox, CreateContainer with a log path, StartContainer; the clock
//!   starts right before RunPodSandbox and stops when the guest's first line
//!   ("hello from wasm") is in the log file (seen through inotify by a thread
//!   of its own) and StartContainer has answered, whichever comes last. N
//!   starts are launched together (one row per N of `--start-parallel`), each
//!   start a sample; rounds are repeated until `--start-samples` samples. The
//!   pods are stopped and removed after each round, untimed.
//! - wasmrun, compat: the same `hello` program as the one file of a compat
//!   image (an OCI image whose Entrypoint is the .wasm file), measured the
//!   same way twice: with `readonly_rootfs` (the guest's `/` is the image's
//!   unpacked tree) and without (Kubernetes' default: each container gets an
//!   overlay of its own, mounted by CreateContainer and unmounted when its pod
//!   is removed, untimed). Left out with `--no-compat`.
//! - the floor: wasmtime and wasmtime-wasi in this process, module compiled
//!   once, an `InstancePre` with a WASI preview 1 linker; each sample is a new
//!   Store and WASI context (stdout and stderr in memory, the same argv and
//!   environment the daemon gave the guest), instantiation and `_start` run to
//!   completion. Two rows: synchronous (the bare minimum) and async with epoch
//!   interruption, as wasmrun's engine runs guests.
//! - the peer: a real containerd 1.6 + runc (the e2e harness's), driven
//!   through its CRI socket exactly as wasmrun is, with a static C program
//!   that prints one line ("hello from linux") in a host-network pod, its
//!   image and the pause image pulled beforehand.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Barrier, oneshot};
use tokio::task::JoinSet;
use wasmrun::api::{
    ContainerConfig, ContainerStatusRequest, CreateContainerRequest, PodSandboxConfig, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};

use crate::harness::{self, Containerd, Daemon, Runtime};
use crate::support::{Latencies, Table, ms};

/// The line the wasm `hello` fixture prints first.
pub(crate) const WASM_LINE: &str = "hello from wasm";
/// How long a start may take until its line is on disk.
const LINE_LIMIT: Duration = Duration::from_secs(60);
/// A row gives up after this many failed starts.
const MAX_FAILURES: usize = 3;
/// Version calls timed to give the cost of a bare CRI round trip.
const ROUND_TRIPS: usize = 1000;
/// Lines written to measure how late the watcher sees a line.
const CALIBRATION_WRITES: usize = 200;

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Section start")]
pub struct Args {
    /// Samples of each wasmrun row: rounds of N parallel starts are repeated until there are at least this many.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub start_samples: u64,
    /// Numbers of starts launched together, one wasmrun row each.
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_values_t = [1, 8, 64],
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub start_parallel: Vec<u64>,
    /// Starts made and thrown away before the measured ones on wasmrun (at least 1; on containerd, at most 3).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub start_warmup: u64,
    /// Samples of each in-process floor row.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub floor_samples: u64,
    /// Samples of each containerd + runc row.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub peer_samples: u64,
    /// Numbers of starts launched together on containerd, one row each.
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_values_t = [1, 8],
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub peer_parallel: Vec<u64>,
    /// Leave out the containerd + runc rows.
    #[arg(long)]
    pub no_peer: bool,
    /// Leave out the compat image rows (read-only and writable root).
    #[arg(long)]
    pub no_compat: bool,
    /// The wasmrun daemon's `--log-level` (`debug` logs every CRI call with its duration, at a cost).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub start_log_level: String,
}

/// The runtime a start goes to.
#[derive(Clone)]
pub(crate) struct Target {
    pub name: &'static str,
    pub rt: Runtime,
    pub image: String,
    /// The guest's first line.
    pub line: &'static str,
    /// Pods on the host network as kubelet makes them for containerd (no
    /// hostname; containerd: no CNI here).
    pub host_network: bool,
    /// Pods with a network namespace of their own, set up by CNI (section `net-start`).
    pub pod_network: bool,
    /// For a compat image: the containers' `readonly_rootfs`.
    pub readonly_rootfs: Option<bool>,
}

/// One timed start.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// RunPodSandbox called → line on disk and StartContainer answered.
    total: Duration,
    run_pod: Duration,
    create: Duration,
    start: Duration,
    /// StartContainer answered → line on disk (zero when the line came first).
    after_start: Duration,
    line_first: bool,
    /// The time written in the line's record (the runtime's clock when it formatted it) → seen by the watcher.
    seen_lag: Option<Duration>,
    /// The daemon's own measure of the guest's instantiation (verbose ContainerStatus), read after the sample.
    instantiate: Option<Duration>,
}

/// A row of the table: a runtime at one parallelism.
pub(crate) struct Row {
    pub label: String,
    pub parallel: usize,
    pub total: Latencies,
    pub run_pod: Latencies,
    create: Latencies,
    start: Latencies,
    after_start: Latencies,
    seen_lag: Latencies,
    seen_lags: usize,
    instantiate: Latencies,
    line_first: usize,
    samples: usize,
    pub failures: Vec<String>,
}

impl Row {
    pub fn new(label: &str, parallel: usize) -> Self {
        Row {
            label: label.to_owned(),
            parallel,
            total: Latencies::default(),
            run_pod: Latencies::default(),
            create: Latencies::default(),
            start: Latencies::default(),
            after_start: Latencies::default(),
            seen_lag: Latencies::default(),
            seen_lags: 0,
            instantiate: Latencies::default(),
            line_first: 0,
            samples: 0,
            failures: Vec::new(),
        }
    }

    fn push(&mut self, s: Sample) {
        self.total.push(s.total);
        self.run_pod.push(s.run_pod);
        self.create.push(s.create);
        self.start.push(s.start);
        self.after_start.push(s.after_start);
        if let Some(lag) = s.seen_lag {
            self.seen_lag.push(lag);
            self.seen_lags += 1;
        }
        if let Some(instantiate) = s.instantiate {
            self.instantiate.push(instantiate);
        }
        self.line_first += usize::from(s.line_first);
        self.samples += 1;
    }

    pub fn p50(&self) -> Option<Duration> {
        self.total.percentile(50.0)
    }

    pub fn cells(&self) -> Vec<String> {
        let p = |l: &Latencies, q: f64| l.percentile(q).map_or("-".into(), ms);
        let calls = self.samples > 0 && !self.label.starts_with("floor");
        let call = |l: &Latencies| if calls { p(l, 50.0) } else { "-".into() };
        vec![
            self.label.clone(),
            self.parallel.to_string(),
            self.samples.to_string(),
            p(&self.total, 50.0),
            p(&self.total, 99.0),
            call(&self.run_pod),
            call(&self.create),
            call(&self.start),
            call(&self.after_start),
            p(&self.instantiate, 50.0),
            if calls { format!("{}/{}", self.line_first, self.samples) } else { "-".into() },
        ]
    }
}

pub async fn run(args: &Args) {
    let mut parallels: Vec<usize> = args.start_parallel.iter().map(|&n| n as usize).collect();
    parallels.dedup();
    let watcher = match Watcher::new() {
        Ok(w) => Arc::new(w),
        Err(e) => {
            println!("== start: SKIPPED: cannot watch log files with inotify: {e} ==\n");
            return;
        }
    };
    let mut notes: Vec<String> = Vec::new();
    let detection = calibrate(&watcher).await;
    notes.push(format!(
        "the watcher itself: a line this process appends to a watched file is seen p50/p99 {} ms after the write \
         call starts ({CALIBRATION_WRITES} writes)",
        detection.p50_p99()
    ));

    eprintln!("start: building the fixtures, starting the registry and the daemon");
    let daemon = Daemon::start_with(None, &["--log-level", &args.start_log_level]).await;
    let image = harness::push_fixture("hello", "bench-hello").await;
    harness::pull(&daemon, &image.name).await;
    let wasmrun = Target {
        name: "wasmrun",
        rt: daemon.runtime(),
        image: image.name.clone(),
        line: WASM_LINE,
        host_network: false,
        pod_network: false,
        readonly_rootfs: None,
    };

    eprintln!("start: {} warm-up starts on wasmrun", args.start_warmup);
    let (warm, first_log) = warm_up(&wasmrun, &watcher, args.start_warmup as usize).await;
    let inputs = first_log.as_deref().map(GuestInputs::from_log).unwrap_or_default();
    notes.extend(warm);
    let mut rows: Vec<Row> = Vec::new();
    for &parallel in &parallels {
        let samples = args.start_samples as usize;
        eprintln!("start: wasmrun, {parallel} at a time, {samples} samples");
        rows.push(measure(&wasmrun, &watcher, "wasmrun", parallel, samples).await);
    }
    if !args.no_compat {
        let compat = push_compat_hello().await;
        harness::pull(&daemon, &compat).await;
        for (readonly, label) in [(true, "wasmrun compat, read-only root"), (false, "wasmrun compat, writable root")] {
            let target = Target { image: compat.clone(), readonly_rootfs: Some(readonly), ..wasmrun.clone() };
            eprintln!("start: {} warm-up starts on {label}", args.start_warmup);
            notes.extend(warm_up(&target, &watcher, args.start_warmup as usize).await.0);
            for &parallel in &parallels {
                let samples = args.start_samples as usize;
                eprintln!("start: {label}, {parallel} at a time, {samples} samples");
                rows.push(measure(&target, &watcher, label, parallel, samples).await);
            }
        }
    }
    // What one CRI call costs with no work behind it: the transport's share of each of the three calls.
    let mut version = Latencies::default();
    let mut rt = daemon.runtime();
    for _ in 0..ROUND_TRIPS {
        let started = Instant::now();
        if rt.version(wasmrun::api::VersionRequest { version: "v1".into() }).await.is_err() {
            break;
        }
        version.push(started.elapsed());
    }
    notes.push(format!(
        "one CRI round trip with no work behind it (Version, {ROUND_TRIPS} calls one at a time, same daemon): \
         p50/p99 {} ms",
        version.p50_p99()
    ));
    notes.push(format!(
        "this machine's floor for any such round trip: 64 bytes there and back between two threads over a unix \
         socket pair, {ROUND_TRIPS} times: p50/p99 {} ms",
        socket_round_trips(ROUND_TRIPS).p50_p99()
    ));
    let (daemon, exit) = crate::support::stop(daemon).await;
    notes.push(format!("wasmrun daemon exit after SIGTERM: {exit}; its log: {}", daemon.log_path().display()));

    eprintln!("start: the in-process floor, {} samples each", args.floor_samples);
    let wasm = harness::fixture("hello");
    let floors = [(false, "floor: wasmtime in-process, sync"), (true, "floor: wasmtime in-process, async+epoch")];
    let mut floor_rows = Vec::new();
    for (asynchronous, label) in floors {
        let (wasm, inputs, samples) = (wasm.clone(), inputs.clone(), args.floor_samples as usize);
        // A thread outside tokio, as an embedder would run it (the sync WASI calls block on a runtime of their own).
        let result = std::thread::spawn(move || floor(&wasm, &inputs, samples, asynchronous))
            .join()
            .unwrap_or_else(|_| Err("the floor thread panicked".into()));
        let mut row = Row::new(label, 1);
        match result {
            Ok((latencies, compile)) => {
                row.samples = args.floor_samples as usize;
                row.total = latencies;
                notes.push(format!("{label}: compiling hello.wasm (untimed) took {} ms", ms(compile)));
            }
            Err(e) => notes.push(format!("ERROR: {label}: {e}")),
        }
        floor_rows.push(row);
    }
    notes.push(format!(
        "floor guest inputs (as the daemon gave them, read from a warm-up's log): argv {:?}, {} environment variables",
        inputs.argv,
        inputs.env.len()
    ));

    let mut peer_rows: Vec<Row> = Vec::new();
    match peer_unavailable(args) {
        Some(why) => notes.push(format!("containerd + runc rows SKIPPED: {why}")),
        None => peer(args, &watcher, &mut peer_rows, &mut notes).await,
    }

    let mut table = rows_table();
    for row in rows.iter().chain(&floor_rows).chain(&peer_rows) {
        table.row(row.cells());
    }
    println!(
        "== start: RunPodSandbox → CreateContainer → StartContainer → the guest's first log line on disk \
         (image pulled, one pod per start) =="
    );
    println!("{}", table.render());
    println!("{LEGEND}");

    let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("{:.1}", a.as_secs_f64() / b.as_secs_f64()),
        _ => "-".into(),
    };
    let mut header: Vec<String> = vec!["ratio of p50s".into()];
    header.extend(parallels.iter().map(|n| format!("parallel {n}")));
    header.push("target".into());
    let mut ratios = Table::new(&header.iter().map(String::as_str).collect::<Vec<_>>());
    let wasmrun_at = |n: usize| rows.iter().find(|r| r.label == "wasmrun" && r.parallel == n).and_then(Row::p50);
    for (floor_row, target) in floor_rows.iter().zip(["≤ 5 (at parallel 1)", "-"]) {
        let mut cells = vec![format!("wasmrun / {}", floor_row.label.trim_start_matches("floor: "))];
        cells.extend(parallels.iter().map(|&n| ratio(wasmrun_at(n), floor_row.p50())));
        cells.push(target.into());
        ratios.row(cells);
    }
    if !peer_rows.is_empty() {
        let mut cells = vec!["containerd+runc / wasmrun".to_owned()];
        cells.extend(parallels.iter().map(|&n| {
            let peer = peer_rows.iter().find(|r| r.parallel == n).and_then(Row::p50);
            ratio(peer, wasmrun_at(n))
        }));
        cells.push("≥ 50".into());
        ratios.row(cells);
    }
    println!("== start: ratios (the floor rows run one at a time: every wasmrun row is divided by the same floor) ==");
    println!("{}", ratios.render());

    for row in rows.iter().chain(&peer_rows) {
        notes.push(format!(
            "{} at {} in parallel: the watcher saw the line p50/p99 {} ms after the time in its record \
             (the runtime's clock when it formatted the line; {} of {} samples)",
            row.label,
            row.parallel,
            row.seen_lag.p50_p99(),
            row.seen_lags,
            row.samples
        ));
    }
    notes.extend(failure_notes(rows.iter().chain(&peer_rows)));
    let _ = std::fs::remove_dir_all(harness::scratch_root().join("pods"));
    for note in notes {
        println!("- {note}");
    }
    println!();
}

/// An empty table with the columns of [`Row::cells`].
pub(crate) fn rows_table() -> Table {
    Table::new(&[
        "runtime",
        "parallel",
        "samples",
        "p50 ms",
        "p99 ms",
        "RunPod p50",
        "Create p50",
        "Start p50",
        "answer→line p50",
        "instantiate p50",
        "line first",
    ])
}

/// A note for each failed start of `rows`.
pub(crate) fn failure_notes<'a>(rows: impl Iterator<Item = &'a Row>) -> Vec<String> {
    rows.flat_map(|row| {
        row.failures
            .iter()
            .map(|failure| format!("FAILED start ({} at {} in parallel): {failure}", row.label, row.parallel))
    })
    .collect()
}

pub(crate) const LEGEND: &str = "\
p50/p99: from right before RunPodSandbox to the guest's first line in its log file (seen by inotify) with \
StartContainer answered, whichever is later; the floor rows: new Store + WASI context, instantiate, _start to \
completion, stdout in memory;
RunPod/Create/Start p50: each call as the client sees it; answer→line: StartContainer answered → line on disk \
(0 when the line was there first); instantiate: the daemon's own measure of the guest's instantiation (verbose \
ContainerStatus usage.instantiate_nanos, read after the sample), compare with the floor rows; line first: starts whose line was on disk before StartContainer answered;
parallel: starts launched together, each one a sample (rounds repeated, pods stopped and removed between rounds, \
untimed).
";

/// Pushes `hello` as a compat image (one tar layer holding `/hello.wasm`, its
/// Entrypoint; platform wasip1/wasm); returns its name.
async fn push_compat_hello() -> String {
    let layer = harness::tar_layer(&[("hello.wasm", &harness::fixture("hello"), 0o755)], false);
    let config = serde_json::json!({"architecture": "wasm", "os": "wasip1",
        "config": {"Entrypoint": ["/hello.wasm"]}, "rootfs": {"type": "layers", "diff_ids": []}});
    let parts = harness::ImageParts {
        config_media_type: "application/vnd.oci.image.config.v1+json".into(),
        config: serde_json::to_vec(&config).expect("serialize the image config"),
        layers: vec![("application/vnd.oci.image.layer.v1.tar".into(), layer)],
        ..harness::ImageParts::default()
    };
    let host = harness::registry().host();
    harness::push_image(&host, "bench-hello-compat", "v1", &parts).await;
    format!("{host}/bench-hello-compat:v1")
}

/// Why containerd cannot run here, if it cannot.
fn peer_unavailable(args: &Args) -> Option<String> {
    if args.no_peer {
        return Some("--no-peer".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("containerd and runc need root".into());
    }
    for binary in [harness::CONTAINERD_BIN, harness::RUNC_BIN, harness::SHIM_BIN] {
        if !Path::new(binary).exists() {
            return Some(format!("{binary} is missing ({})", harness::CONTAINERD_INSTALL));
        }
    }
    if std::process::Command::new("gcc").arg("--version").output().is_err() {
        return Some("gcc is missing (apt-get install -y gcc libc6-dev)".into());
    }
    None
}

/// The containerd + runc rows: one containerd for all of them, killed at the end.
async fn peer(args: &Args, watcher: &Arc<Watcher>, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    let parallels: Vec<usize> = args.peer_parallel.iter().map(|&n| n as usize).collect();
    let peer = Peer {
        net: None,
        warmup: (args.start_warmup as usize).min(3),
        parallels: &parallels,
        samples: args.peer_samples as usize,
    };
    peer.rows(watcher, rows, notes).await;
}

/// How containerd + runc rows are made.
pub(crate) struct Peer<'a> {
    /// A test network namespace to run containerd in (its pinned file and its
    /// CNI configuration directory), its pods then with a network namespace
    /// each; none: the machine's, its pods on the host network.
    pub net: Option<(PathBuf, PathBuf)>,
    /// Starts thrown away first.
    pub warmup: usize,
    /// One row per number of starts launched together.
    pub parallels: &'a [usize],
    /// Samples per row.
    pub samples: usize,
}

impl Peer<'_> {
    /// Starts containerd, pulls the pause and hello images, and measures
    /// one row per parallelism; containerd is killed at the end.
    pub async fn rows(self, watcher: &Arc<Watcher>, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
        eprintln!("start: starting containerd");
        let pod_network = self.net.is_some();
        let net = self.net.clone();
        // Containerd::start panics when it fails; in a task of its own, that is a skipped section.
        let containerd = match tokio::spawn(async {
            let containerd = Containerd::start_in(net).await;
            let image = harness::linux_hello_image().await;
            (containerd, image)
        })
        .await
        {
            Ok(started) => started,
            Err(e) => {
                notes.push(format!("containerd + runc rows SKIPPED: containerd did not start: {e}"));
                return;
            }
        };
        let (containerd, image) = containerd;
        if let Err(e) = crate::support::pull_into(&containerd, &[harness::pause_image().await, image.clone()]).await {
            notes.push(format!("containerd + runc rows SKIPPED: {e}"));
            return;
        }
        let target = Target {
            name: "containerd",
            rt: containerd.runtime(),
            image,
            line: harness::LINUX_HELLO_LINE,
            host_network: !pod_network,
            pod_network,
            readonly_rootfs: None,
        };
        eprintln!("start: {} warm-up starts on containerd", self.warmup);
        let (warm, _) = warm_up(&target, watcher, self.warmup).await;
        notes.extend(warm);
        let version = containerd
            .runtime()
            .version(wasmrun::api::VersionRequest { version: "v1".into() })
            .await
            .map(|v| v.into_inner().runtime_version)
            .unwrap_or_else(|_| "?".into());
        let label = if pod_network {
            format!("containerd {version} + runc, pod network")
        } else {
            format!("containerd {version} + runc")
        };
        let mut parallels = self.parallels.to_vec();
        parallels.dedup();
        for parallel in parallels {
            eprintln!("start: {label}, {parallel} at a time, {} samples", self.samples);
            rows.push(measure(&target, watcher, &label, parallel, self.samples).await);
        }
        let pid = containerd.pid();
        drop(containerd);
        notes.push(format!(
            "containerd (pid {}) killed at the end, its containers and shims removed; warm-up: {} starts",
            pid.map_or("?".into(), |p| p.to_string()),
            self.warmup
        ));
    }
}

/// `count` (at least 1) starts one at a time, not measured; returns notes on
/// failures and the log of the first one.
pub(crate) async fn warm_up(target: &Target, watcher: &Arc<Watcher>, count: usize) -> (Vec<String>, Option<String>) {
    let mut notes = Vec::new();
    let mut first_log = None;
    for n in 0..count.max(1) {
        let prepared = match prepare(target, watcher, &format!("warm-{n}")) {
            Ok(p) => p,
            Err(e) => {
                notes.push(format!("ERROR: warm-up start on {}: {e}", target.name));
                break;
            }
        };
        let log = prepared.log.clone();
        let (result, pod) = timed_start(target.rt.clone(), prepared, None).await;
        if first_log.is_none() && result.is_ok() {
            // The guest may still be writing its last lines: wait until it is done (bounded).
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && !std::fs::read_to_string(&log).is_ok_and(|text| text.contains(" stderr F to stderr\n"))
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            first_log = std::fs::read_to_string(&log).ok();
        }
        if let Err(e) = result {
            notes.push(format!("ERROR: warm-up start on {}: {e}", target.name));
        }
        remove_pods(&target.rt, pod.into_iter().collect()).await;
    }
    (notes, first_log)
}

/// Rounds of `parallel` starts launched together until there are `samples` samples.
pub(crate) async fn measure(
    target: &Target,
    watcher: &Arc<Watcher>,
    label: &str,
    parallel: usize,
    samples: usize,
) -> Row {
    let mut row = Row::new(label, parallel);
    let rounds = samples.div_ceil(parallel);
    let mut n = 0;
    for round in 0..rounds {
        let barrier = Arc::new(Barrier::new(parallel));
        let mut tasks = JoinSet::new();
        let mut pods = Vec::new();
        for _ in 0..parallel {
            n += 1;
            match prepare(target, watcher, &format!("start-{parallel}-{n}")) {
                Ok(prepared) => {
                    tasks.spawn(timed_start(target.rt.clone(), prepared, Some(barrier.clone())));
                }
                Err(e) => {
                    row.failures.push(e);
                    break;
                }
            }
        }
        if tasks.len() < parallel {
            // The barrier would never open.
            tasks.abort_all();
        }
        let mut done = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((result, pod)) = joined else { continue };
            pods.extend(pod);
            match result {
                Ok(sample) => done.push(sample),
                Err(e) => row.failures.push(e),
            }
        }
        // Once every start of the round is done, so that these calls do not weigh on the others.
        let mut rt = target.rt.clone();
        for (mut sample, container_id) in done {
            sample.instantiate = instantiate_time(&mut rt, &container_id).await;
            row.push(sample);
        }
        remove_pods(&target.rt, pods).await;
        if row.failures.len() >= MAX_FAILURES {
            row.failures.push(format!("gave up after {} failures, in round {}", row.failures.len(), round + 1));
            break;
        }
        if rounds >= 10 && (round + 1) % (rounds / 5) == 0 {
            eprintln!("start: {label}, {parallel} at a time: {} samples, p50 {}", row.samples, row.total.p50_p99());
        }
    }
    eprintln!("start: {label}, {parallel} at a time: p50/p99 {} ms over {} samples", row.total.p50_p99(), row.samples);
    row
}

/// A start made ready: configs built, directories made, the log file watched.
struct Prepared {
    pod: PodSandboxConfig,
    container: ContainerConfig,
    log: PathBuf,
    line: &'static str,
    wait: LineWait,
}

fn prepare(target: &Target, watcher: &Arc<Watcher>, name: &str) -> Result<Prepared, String> {
    let uid = harness::new_uid();
    let pod = if target.host_network {
        harness::host_network_pod_config(name, &uid)
    } else if target.pod_network {
        harness::pod_network_config(name, &uid)
    } else {
        harness::pod_config(name, &uid)
    };
    let mut container = harness::container_config("hello", &target.image, &[], &[], &[]);
    if let Some(readonly_rootfs) = target.readonly_rootfs {
        container.linux.get_or_insert_with(Default::default).security_context =
            Some(wasmrun::api::LinuxContainerSecurityContext { readonly_rootfs, ..Default::default() });
    }
    let log = Path::new(&pod.log_directory).join(&container.log_path);
    let dir = log.parent().expect("a log path has a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let wait = watcher.watch(&log, target.line).map_err(|e| format!("watching {}: {e}", log.display()))?;
    Ok(Prepared { pod, container, log, line: target.line, wait })
}

/// One start, timed from right before RunPodSandbox (after `barrier`, when
/// given) to the guest's first line on disk with StartContainer answered.
/// Returns the sample with the container's id, and the pod's id when
/// RunPodSandbox got through, to remove it.
async fn timed_start(
    mut rt: Runtime,
    prepared: Prepared,
    barrier: Option<Arc<Barrier>>,
) -> (Result<(Sample, String), String>, Option<String>) {
    let Prepared { pod, container, log, line, wait } = prepared;
    if let Some(barrier) = barrier {
        barrier.wait().await;
    }
    let t0 = Instant::now();
    let pod_id = match rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(pod.clone()), runtime_handler: String::new() })
        .await
    {
        Ok(r) => r.into_inner().pod_sandbox_id,
        Err(s) => return (Err(format!("RunPodSandbox: {:?}: {}", s.code(), s.message())), None),
    };
    let t1 = Instant::now();
    let request =
        CreateContainerRequest { pod_sandbox_id: pod_id.clone(), config: Some(container), sandbox_config: Some(pod) };
    let container_id = match rt.create_container(request).await {
        Ok(r) => r.into_inner().container_id,
        Err(s) => return (Err(format!("CreateContainer: {:?}: {}", s.code(), s.message())), Some(pod_id)),
    };
    let t2 = Instant::now();
    if let Err(s) = rt.start_container(StartContainerRequest { container_id: container_id.clone() }).await {
        return (Err(format!("StartContainer: {:?}: {}", s.code(), s.message())), Some(pod_id));
    }
    let t3 = Instant::now();
    let Some((line_at, seen_wall)) = wait.wait(LINE_LIMIT).await else {
        return (
            Err(format!("no line in {} within {LINE_LIMIT:?}: {:?}", log.display(), std::fs::read_to_string(&log))),
            Some(pod_id),
        );
    };
    let end = line_at.max(t3);
    let sample = Sample {
        total: end - t0,
        run_pod: t1 - t0,
        create: t2 - t1,
        start: t3 - t2,
        after_start: line_at.saturating_duration_since(t3),
        line_first: line_at < t3,
        seen_lag: record_time(&log, line).and_then(|written| seen_wall.duration_since(written).ok()),
        instantiate: None,
    };
    (Ok((sample, container_id)), Some(pod_id))
}

/// How late the watcher sees a line: this process appends one to a watched
/// file, from the start of the write call to the watcher's report.
async fn calibrate(watcher: &Arc<Watcher>) -> Latencies {
    use std::io::Write;
    let mut latencies = Latencies::default();
    let dir = harness::scratch_dir("watcher-calibration");
    for n in 0..CALIBRATION_WRITES {
        let file = dir.join(format!("{n}.log"));
        let Ok(wait) = watcher.watch(&file, WASM_LINE) else { break };
        let started = Instant::now();
        let written = std::fs::File::create(&file).and_then(|mut f| f.write_all(format!("x {WASM_LINE}\n").as_bytes()));
        if written.is_err() {
            break;
        }
        match wait.wait(Duration::from_secs(5)).await {
            Some((seen, _)) => latencies.push(seen.saturating_duration_since(started)),
            None => break,
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    latencies
}

/// wasmrun's own measure of a guest's instantiation (verbose ContainerStatus
/// `usage.instantiate_nanos`); None from a runtime that has none.
async fn instantiate_time(rt: &mut Runtime, container_id: &str) -> Option<Duration> {
    let request = ContainerStatusRequest { container_id: container_id.to_owned(), verbose: true };
    let info = rt.container_status(request).await.ok()?.into_inner().info;
    let info: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    info["usage"]["instantiate_nanos"].as_u64().filter(|&n| n > 0).map(Duration::from_nanos)
}

/// The time in the record of the first log line holding `line`.
fn record_time(log: &Path, line: &str) -> Option<SystemTime> {
    let text = std::fs::read_to_string(log).ok()?;
    let record = text.lines().find(|l| l.ends_with(&format!(" {line}")))?;
    let time = chrono::DateTime::parse_from_rfc3339(record.split(' ').next()?).ok()?;
    let nanos = u64::try_from(time.timestamp_nanos_opt()?).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// Stops and removes the pods, all at once, and their log directories.
async fn remove_pods(rt: &Runtime, pods: Vec<String>) {
    let mut tasks = JoinSet::new();
    for pod in pods {
        let mut rt = rt.clone();
        tasks.spawn(async move {
            let stop = rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await;
            let remove = rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await;
            if let Err(e) = stop.and(remove) {
                eprintln!("start: removing pod {pod}: {e:?}");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The argv and environment the daemon gave the guest, read back from what
/// `hello` prints (`arg[i]=…`, `env:KEY=VALUE`).
#[derive(Clone, Debug, Default)]
struct GuestInputs {
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

impl GuestInputs {
    fn from_log(log: &str) -> Self {
        let mut inputs = GuestInputs::default();
        for line in log.lines() {
            let Some(content) = line.split_once(" stdout F ").map(|(_, c)| c) else { continue };
            if let Some(arg) = content.strip_prefix("arg[").and_then(|rest| rest.split_once("]=")) {
                inputs.argv.push(arg.1.to_owned());
            } else if let Some((key, value)) = content.strip_prefix("env:").and_then(|kv| kv.split_once('=')) {
                inputs.env.push((key.to_owned(), value.to_owned()));
            }
        }
        inputs
    }
}

/// The in-process floor: `samples` runs of `hello`, each a new Store and WASI
/// context, instantiation and `_start` to completion; returns their
/// durations and the (untimed) compile time.
fn floor(
    wasm: &[u8],
    inputs: &GuestInputs,
    samples: usize,
    asynchronous: bool,
) -> Result<(Latencies, Duration), String> {
    use wasmtime_wasi::p1::WasiP1Ctx;
    use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

    fn err(what: &'static str) -> impl Fn(wasmtime::Error) -> String {
        move |e| format!("{what}: {e:#}")
    }
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(asynchronous);
    let engine = wasmtime::Engine::new(&config).map_err(err("engine"))?;
    let compile_started = Instant::now();
    let module = wasmtime::Module::new(&engine, wasm).map_err(err("compiling hello.wasm"))?;
    let compile = compile_started.elapsed();
    let mut linker: wasmtime::Linker<WasiP1Ctx> = wasmtime::Linker::new(&engine);
    if asynchronous {
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |cx| cx).map_err(err("linking WASI"))?;
    } else {
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).map_err(err("linking WASI"))?;
    }
    let pre = linker.instantiate_pre(&module).map_err(err("instantiate_pre"))?;
    let new_store = || {
        let stdout = MemoryOutputPipe::new(1 << 20);
        let stderr = MemoryOutputPipe::new(1 << 20);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .args(&inputs.argv)
            .envs(&inputs.env)
            .stdout(stdout.clone())
            .stderr(stderr)
            .build_p1();
        (wasmtime::Store::new(&engine, wasi), stdout)
    };
    let exited = |result: wasmtime::Result<()>| match result {
        Ok(()) => Ok(()),
        Err(e) if e.downcast_ref::<wasmtime_wasi::I32Exit>().is_some_and(|exit| exit.0 == 0) => Ok(()),
        Err(e) => Err(format!("_start: {e:#}")),
    };
    let check = |stdout: &MemoryOutputPipe| {
        let out = stdout.contents();
        if out.starts_with(format!("{WASM_LINE}\n").as_bytes()) {
            Ok(())
        } else {
            Err(format!("unexpected output: {:?}", String::from_utf8_lossy(&out)))
        }
    };
    let mut latencies = Latencies::default();
    if !asynchronous {
        for _ in 0..samples {
            let started = Instant::now();
            let (mut store, stdout) = new_store();
            let instance = pre.instantiate(&mut store).map_err(err("instantiate"))?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(err("_start"))?;
            exited(start.call(&mut store, ()))?;
            latencies.push(started.elapsed());
            check(&stdout)?;
        }
        return Ok((latencies, compile));
    }
    // As wasmrun runs guests: async calls, an epoch ticker every 10 ms, a
    // deadline of one tick at which the guest yields.
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                engine.increment_epoch();
                std::thread::sleep(wasmrun::EPOCH_TICK);
            }
        })
    };
    let executor = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let result = executor.block_on(async {
        for _ in 0..samples {
            let started = Instant::now();
            let (mut store, stdout) = new_store();
            store.set_epoch_deadline(1);
            store.epoch_deadline_async_yield_and_update(1);
            let instance = pre.instantiate_async(&mut store).await.map_err(err("instantiate"))?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(err("_start"))?;
            exited(start.call_async(&mut store, ()).await)?;
            latencies.push(started.elapsed());
            check(&stdout)?;
        }
        Ok::<(), String>(())
    });
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    result.map(|()| (latencies, compile))
}

/// Tells, through inotify, when a line is in a log file: one thread reads the
/// events of every watched directory and checks the file each time it changes.
pub(crate) struct Watcher {
    shared: Arc<WatcherShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WatcherShared {
    fd: OwnedFd,
    stop: AtomicBool,
    /// By watch descriptor: what is waited for.
    watches: Mutex<HashMap<i32, Pending>>,
}

struct Pending {
    file: PathBuf,
    /// What the file must hold: " <line>\n".
    needle: Vec<u8>,
    found: Option<oneshot::Sender<(Instant, SystemTime)>>,
}

impl Watcher {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: inotify_init1 takes no pointers.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(WatcherShared { fd, stop: AtomicBool::new(false), watches: Mutex::new(HashMap::new()) });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new().name("log-watcher".into()).spawn(move || shared.serve())?
        };
        Ok(Watcher { shared, thread: Some(thread) })
    }

    /// Watches `file` (in an existing directory, watched by no one else) until it holds `line`.
    fn watch(&self, file: &Path, line: &str) -> std::io::Result<LineWait> {
        let dir = file.parent().unwrap_or(Path::new("."));
        let dir_c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
        let (tx, rx) = oneshot::channel();
        // Held while adding, so that the thread cannot see an event of this descriptor before it is known.
        let mut watches = self.shared.watches.lock().unwrap();
        let mask = libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_CREATE | libc::IN_MOVED_TO;
        // SAFETY: a valid descriptor and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.shared.fd.as_raw_fd(), dir_c.as_ptr(), mask) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let needle = format!(" {line}\n").into_bytes();
        let mut pending = Pending { file: file.to_path_buf(), needle, found: Some(tx) };
        pending.check();
        watches.insert(wd, pending);
        Ok(LineWait { wd, found: rx, shared: self.shared.clone() })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Pending {
    /// Reports the time if the file holds the line (each pending wait reports once).
    fn check(&mut self) {
        if self.found.is_none() {
            return;
        }
        let now = (Instant::now(), SystemTime::now());
        let holds = std::fs::read(&self.file)
            .is_ok_and(|bytes| bytes.windows(self.needle.len()).any(|window| window == self.needle.as_slice()));
        if holds && let Some(found) = self.found.take() {
            let _ = found.send(now);
        }
    }
}

impl WatcherShared {
    fn serve(&self) {
        let mut buffer = vec![0u8; 64 * 1024];
        let header = std::mem::size_of::<libc::inotify_event>();
        while !self.stop.load(Ordering::Relaxed) {
            let mut poll = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd; at most 100 ms, to see `stop`.
            if unsafe { libc::poll(&mut poll, 1, 100) } <= 0 {
                continue;
            }
            // SAFETY: reads into a buffer of the given length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
            if n <= 0 {
                continue;
            }
            let mut changed: Vec<i32> = Vec::new();
            let mut overflow = false;
            let mut at = 0;
            while at + header <= n as usize {
                // SAFETY: within the bytes read; read_unaligned as the buffer has no alignment.
                let event: libc::inotify_event = unsafe { std::ptr::read_unaligned(buffer[at..].as_ptr().cast()) };
                if event.mask & libc::IN_Q_OVERFLOW != 0 {
                    overflow = true;
                }
                if !changed.contains(&event.wd) {
                    changed.push(event.wd);
                }
                at += header + event.len as usize;
            }
            let mut watches = self.watches.lock().unwrap();
            if overflow {
                watches.values_mut().for_each(Pending::check);
            } else {
                for wd in &changed {
                    if let Some(pending) = watches.get_mut(wd) {
                        pending.check();
                    }
                }
            }
        }
    }
}

/// A wait for a line; stops watching when dropped.
struct LineWait {
    wd: i32,
    found: oneshot::Receiver<(Instant, SystemTime)>,
    shared: Arc<WatcherShared>,
}

impl LineWait {
    /// When the line was seen on disk, or None after `limit`.
    async fn wait(mut self, limit: Duration) -> Option<(Instant, SystemTime)> {
        tokio::time::timeout(limit, &mut self.found).await.ok()?.ok()
    }
}

impl Drop for LineWait {
    fn drop(&mut self) {
        let mut watches = self.shared.watches.lock().unwrap();
        if watches.remove(&self.wd).is_some() {
            // SAFETY: a descriptor this watcher added.
            unsafe { libc::inotify_rm_watch(self.shared.fd.as_raw_fd(), self.wd) };
        }
    }
}

/// Round trips of 64 bytes between this thread and an echoing one over a
/// unix socket pair: two wake-ups of a blocked thread, what a CRI call costs
/// at the least (one process to another) before any gRPC or daemon work.
fn socket_round_trips(count: usize) -> Latencies {
    use std::io::{Read, Write};
    let (mut near, mut far) = std::os::unix::net::UnixStream::pair().expect("a unix socket pair");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while far.read_exact(&mut buf).is_ok() && far.write_all(&buf).is_ok() {}
    });
    let mut latencies = Latencies::default();
    let mut buf = [0u8; 64];
    for _ in 0..count {
        let started = Instant::now();
        near.write_all(&buf).expect("write to the echo thread");
        near.read_exact(&mut buf).expect("read from the echo thread");
        latencies.push(started.elapsed());
    }
    drop(near);
    echo.join().expect("the echo thread");
    latencies
}
