//! Section `http`: a `wasi:http` component served by wasmrun against the
//! same component served by `wasmtime serve`, beside a plain hyper server
//! (the machine's own round trip); the first request after StartContainer;
//! the daemon's memory per idle served container.
//!
//! - The component is the e2e fixture `http-service` (e2e/fixtures-http):
//!   `GET /` answers 200 `hello from wasm\n`. wasmrun gets it as an image
//!   pushed to the test registry and pulled by the daemon (release build,
//!   log level info); it serves it from a host-network pod whose container
//!   has `WASMTIME_HTTP_PROXY_SOCKET_ADDR=127.0.0.1:<port>`. The peer is
//!   `wasmtime serve` of wasmtime-cli 48.0.8 (the wasmtime wasmrun embeds),
//!   `--addr 127.0.0.1:<port> -S cli=y`, on the same .wasm file; it is
//!   installed under target/bench-tools with `cargo install` when missing.
//! - The load generator is this process's one runtime thread: N keep-alive
//!   HTTP/1.1 connections (hyper's client, `TCP_NODELAY`), each sending
//!   `GET /` one after the other until the level's count of requests is
//!   taken; warm-up requests first on the same connections. Each server gets
//!   the same requests at each concurrency. The floor is hyper serving the
//!   same body from a runtime of its own in this process.
//! - First request: a pod per sample (RunPodSandbox, CreateContainer,
//!   StartContainer), then at once a new connection and `GET /`, timed from
//!   StartContainer's answer to the 200; against `wasmtime serve` timed from
//!   spawning the process to the first 200 (polled every millisecond).
//! - Idle memory: the daemon's RSS with 0, then (grown to) each count of
//!   served containers, each in a host-network pod on a port of its own and
//!   sent one request on a connection closed after it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use wasmrun::api::{
    CreateContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};

use crate::harness::{self, Daemon, Runtime};
use crate::support::{Latencies, Process, Table, kib, mib, ms};

/// The fixture, and what its `/` answers.
const FIXTURE: &str = "http-service";
const BODY: &[u8] = b"hello from wasm\n";
/// The wasmtime-cli release `wasmtime serve` comes from: the wasmtime wasmrun embeds.
const WASMTIME_VERSION: &str = "48.0.8";
/// The container env naming the address a served component listens on.
const ADDR_ENV: &str = "WASMTIME_HTTP_PROXY_SOCKET_ADDR";
/// How long one request may take before it counts as failed.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// How long a server may take to answer its first 200 (wasmtime serve compiles first).
const SERVING_LIMIT: Duration = Duration::from_secs(120);
/// How long after StartContainer a served container may take to answer.
const FIRST_LIMIT: Duration = Duration::from_secs(5);
/// A load run stops after this many failed requests.
const MAX_ERRORS: usize = 100;
/// Pods started (or removed) at the same time for the idle-memory counts.
const GROW_AT_ONCE: usize = 32;
/// Idle before reading the daemon's memory: tokio's blocking threads (log
/// files) end after 10 s idle (as section `density` waits).
const SETTLE: Duration = Duration::from_secs(10);
/// Then the daemon's CPU use is read over this long.
const IDLE_CPU: Duration = Duration::from_secs(2);
/// Starts thrown away before the first-request samples.
const FIRST_WARMUP: usize = 2;
/// The targets of the issue.
const THROUGHPUT_TARGET: f64 = 0.95;
const P99_TARGET: f64 = 1.1;
const FIRST_TARGET: Duration = Duration::from_millis(1);
const IDLE_TARGET_KIB: f64 = 64.0;

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Section http")]
pub struct Args {
    /// Keep-alive connections the load generator uses at once (each sends its requests one after the other), one row each.
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_values_t = [1, 16, 64],
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub http_concurrency: Vec<u64>,
    /// Requests measured per server at each concurrency.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub http_requests: u64,
    /// Requests sent first, not measured, per server at each concurrency (on the same connections).
    #[arg(long, value_name = "N", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub http_warmup: u64,
    /// A measured run ends after this many seconds even with requests left (the row then says so).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_max_secs: u64,
    /// Served containers started (and `wasmtime serve` processes spawned) to time the first request.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub http_first_samples: u64,
    /// Numbers of idle served containers at which the daemon's RSS is read (reached in increasing order).
    #[arg(long, value_name = "N,…", value_delimiter = ',', default_values_t = [100, 1000],
          value_parser = clap::value_parser!(u64).range(1..=20_000))]
    pub http_idle_counts: Vec<u64>,
    /// The wasmtime binary for `wasmtime serve` (default: target/bench-tools/bin/wasmtime, installed by
    /// `cargo install wasmtime-cli --version =48.0.8 --locked` when missing).
    #[arg(long, value_name = "PATH")]
    pub http_wasmtime: Option<PathBuf>,
    /// Leave out `wasmtime serve` (and its install).
    #[arg(long)]
    pub http_no_peer: bool,
}

pub async fn run(args: &Args) {
    let mut levels: Vec<usize> = args.http_concurrency.iter().map(|&n| n as usize).collect();
    levels.dedup();
    let mut counts: Vec<usize> = args.http_idle_counts.iter().map(|&n| n as usize).collect();
    counts.sort_unstable();
    counts.dedup();
    let mut notes: Vec<String> = Vec::new();

    eprintln!("http: building the fixture `{FIXTURE}`");
    let wasm = harness::fixtures::fixture_http(FIXTURE);
    let dir = harness::scratch_dir("bench-http");
    let wasm_path = dir.join("http_service.wasm");
    if let Err(e) = std::fs::write(&wasm_path, &wasm) {
        println!("== http: SKIPPED: writing {}: {e} ==\n", wasm_path.display());
        return;
    }

    let peer = if args.http_no_peer {
        notes.push("wasmtime serve rows left out (--http-no-peer)".into());
        None
    } else {
        let explicit = args.http_wasmtime.clone();
        match tokio::task::spawn_blocking(move || wasmtime_binary(explicit.as_deref())).await {
            Ok(Ok(found)) => Some(found),
            Ok(Err(e)) => {
                notes.push(format!("wasmtime serve rows SKIPPED: {e}"));
                None
            }
            Err(e) => {
                notes.push(format!("wasmtime serve rows SKIPPED: the install thread failed: {e}"));
                None
            }
        }
    };
    let peer_label = peer.as_ref().map_or("wasmtime serve".to_owned(), |(_, version)| {
        format!("wasmtime serve {}", version.split_whitespace().nth(1).unwrap_or("?"))
    });

    eprintln!("http: starting the registry and the daemon, pulling the component");
    let daemon = Daemon::start_with(None, &["--log-level", "info"]).await;
    let process = Process(daemon.pid().expect("the daemon runs"));
    let image = harness::push_bytes("bench-http-service", &wasm).await;
    harness::pull(&daemon, &image.name).await;
    let rt = daemon.runtime();
    let mut ports = Ports::default();

    // Memory first, on a daemon that has served one container only.
    eprintln!("http: the daemon's memory per idle served container, at {counts:?}");
    let idle = idle_memory(&rt, process, &image.name, &counts, &mut ports, &mut notes).await;

    // Throughput and latency under load.
    let mut rows: Vec<LoadRow> = Vec::new();
    let floor = match Floor::start() {
        Ok(floor) => Some(floor),
        Err(e) => {
            notes.push(format!("ERROR: the floor server did not start: {e}"));
            None
        }
    };
    let mut load_pods = Vec::new();
    let served = match start_served(&rt, &image.name, "http-load", ports.take()).await {
        Ok(started) => {
            load_pods.push(started.pod_id.clone());
            match wait_serving(started.addr, None).await {
                Ok(_) => Some(started.addr),
                Err(e) => {
                    notes.push(format!("ERROR: the served container on {} never answered 200: {e}", started.addr));
                    None
                }
            }
        }
        Err((e, pod)) => {
            load_pods.extend(pod);
            notes.push(format!("ERROR: starting the served container: {e}"));
            None
        }
    };
    let mut serve = None;
    if let Some((binary, _)) = &peer {
        let port = ports.take();
        match WasmtimeServe::spawn(binary, &wasm_path, port, &dir, "load") {
            Ok(mut child) => {
                let addr = child.addr;
                match wait_serving(addr, Some(&mut child)).await {
                    Ok(took) => {
                        notes.push(format!(
                            "{peer_label}: the process for the load rows answered its first 200 {} ms after it was \
                             spawned (a cold start: it compiled the component and filled wasmtime's cache, \
                             XDG_CACHE_HOME={})",
                            ms(took),
                            dir.join("wasmtime-cache").display()
                        ));
                        serve = Some(child);
                    }
                    Err(e) => notes.push(format!("ERROR: {peer_label} never answered 200: {e}; {}", child.log_tail())),
                }
            }
            Err(e) => notes.push(format!("ERROR: spawning {peer_label}: {e}")),
        }
    }
    let (warmup, requests) = (args.http_warmup as usize, args.http_requests as usize);
    let limit = Duration::from_secs(args.http_max_secs);
    for &level in &levels {
        let servers = [
            ("floor: hyper in this process", floor.as_ref().map(|f| (f.addr, None))),
            (peer_label.as_str(), serve.as_ref().map(|s| (s.addr, Some(Process(s.child.id()))))),
            ("wasmrun", served.map(|addr| (addr, Some(process)))),
        ];
        for (label, server) in servers {
            if peer.is_none() && label == peer_label {
                continue;
            }
            eprintln!("http: {label}, {level} connections, {warmup} warm-up + {requests} requests");
            let outcome = match server {
                Some((addr, process)) => run_level(addr, level, warmup, requests, limit, process).await,
                None => Err("the server did not start".into()),
            };
            if let Ok(o) = &outcome {
                eprintln!(
                    "http: {label}, {level} connections: {:.0} requests/s, p50/p99 {} ms, {} errors",
                    o.rate(),
                    o.latencies.p50_p99(),
                    o.errors
                );
            }
            rows.push(LoadRow { label: label.to_owned(), level, outcome });
        }
    }
    drop(floor);
    if let Some(mut serve) = serve.take() {
        serve.kill();
    }
    remove_pods(&rt, std::mem::take(&mut load_pods)).await;

    // The first request.
    let samples = args.http_first_samples as usize;
    eprintln!("http: the first request after StartContainer, {samples} containers");
    let first = first_wasmrun(&rt, &image.name, samples, &mut ports, &mut notes).await;
    let first_peer = match &peer {
        Some((binary, _)) => {
            eprintln!("http: the first request after spawning {peer_label}, {samples} processes");
            Some(first_wasmtime(binary, &wasm_path, &dir, samples, &mut ports, &mut notes).await)
        }
        None => None,
    };

    let log = daemon.log_path();
    let (_daemon, exit) = crate::support::stop(daemon).await;
    notes.push(format!("wasmrun daemon exit after SIGTERM: {exit}; its log: {}", log.display()));

    print_load(&rows, &peer_label, peer.is_some());
    print_first(&first, first_peer.as_ref(), &peer_label);
    print_idle(&idle);
    print_targets(&rows, &levels, &peer_label, peer.is_some(), &first, &idle);
    for row in &rows {
        match &row.outcome {
            Ok(o) => {
                if o.errors > 0 || o.warmup_errors > 0 {
                    notes.push(format!(
                        "ERRORS ({} at {} connections): {} measured, {} in the warm-up, {} reconnections; first: {}",
                        row.label,
                        row.level,
                        o.errors,
                        o.warmup_errors,
                        o.reconnects,
                        o.first_errors.join(" | ")
                    ));
                }
                if o.cut_short {
                    notes.push(format!(
                        "{} at {} connections: stopped after --http-max-secs {} with {} requests answered",
                        row.label,
                        row.level,
                        args.http_max_secs,
                        o.latencies.len()
                    ));
                }
            }
            Err(e) => notes.push(format!("FAILED ({} at {} connections): {e}", row.label, row.level)),
        }
    }
    let _ = std::fs::remove_dir_all(harness::scratch_root().join("pods"));
    for note in notes {
        println!("- {note}");
    }
    println!();
}

/// Ports on 127.0.0.1 that nothing listened on when taken, none given twice in a run.
#[derive(Default)]
struct Ports(HashSet<u16>);

impl Ports {
    fn take(&mut self) -> u16 {
        loop {
            let port = harness::free_port();
            if self.0.insert(port) {
                return port;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The load generator

type Sender = SendRequest<Empty<Bytes>>;

/// A request that went wrong.
enum Failed {
    /// Answered, but not 200 with the body: the connection is still good.
    Answer(String),
    /// The connection broke.
    Transport(String),
}

/// A new keep-alive connection, its driver a task of this runtime.
async fn connect(addr: SocketAddr) -> Result<Sender, std::io::Error> {
    let stream = tokio::time::timeout(REQUEST_LIMIT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr}")))??;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// `GET /` on `sender`: Ok when the answer is 200 with [`BODY`].
async fn get(sender: &mut Sender, host: &str) -> Result<(), Failed> {
    let transport = |what: &str, e: hyper::Error| Failed::Transport(format!("{what}: {e}"));
    sender.ready().await.map_err(|e| transport("connection", e))?;
    let request =
        hyper::Request::get("/").header(hyper::header::HOST, host).body(Empty::new()).expect("a GET request is valid");
    let response = sender.send_request(request).await.map_err(|e| transport("request", e))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| transport("body", e))?.to_bytes();
    if status == hyper::StatusCode::OK && body.as_ref() == BODY {
        Ok(())
    } else {
        Err(Failed::Answer(format!("{status}: {:?}", String::from_utf8_lossy(&body[..body.len().min(200)]))))
    }
}

/// What a load run got.
#[derive(Default)]
struct Outcome {
    latencies: Latencies,
    errors: usize,
    warmup_errors: usize,
    /// The first few error messages.
    first_errors: Vec<String>,
    reconnects: usize,
    wall: Duration,
    /// Stopped by the time limit with requests left.
    cut_short: bool,
    /// The server process's user + system CPU over the measured run.
    server_cpu: Option<Duration>,
    /// This thread's CPU (the load generator's) over the measured run.
    client_cpu: Duration,
}

impl Outcome {
    fn rate(&self) -> f64 {
        if self.wall.is_zero() { 0.0 } else { self.latencies.len() as f64 / self.wall.as_secs_f64() }
    }
}

/// What one connection's task did.
struct Worker {
    conn: Option<Sender>,
    latencies: Vec<Duration>,
    errors: Vec<String>,
    reconnects: usize,
}

/// One connection sending requests one after the other while tickets are left.
async fn worker(
    addr: SocketAddr,
    mut conn: Option<Sender>,
    tickets: Arc<AtomicUsize>,
    total: usize,
    deadline: Instant,
    errors: Arc<AtomicUsize>,
) -> Worker {
    let host = addr.to_string();
    let mut w = Worker { conn: None, latencies: Vec::with_capacity(total / 8), errors: Vec::new(), reconnects: 0 };
    while tickets.fetch_add(1, Ordering::Relaxed) < total
        && Instant::now() < deadline
        && errors.load(Ordering::Relaxed) < MAX_ERRORS
    {
        let sender = match conn.as_mut() {
            Some(sender) => sender,
            None => {
                w.reconnects += 1;
                match connect(addr).await {
                    Ok(sender) => conn.insert(sender),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        w.errors.push(format!("connect: {e}"));
                        continue;
                    }
                }
            }
        };
        let started = Instant::now();
        match tokio::time::timeout(REQUEST_LIMIT, get(sender, &host)).await {
            Ok(Ok(())) => w.latencies.push(started.elapsed()),
            Ok(Err(Failed::Answer(e))) => {
                errors.fetch_add(1, Ordering::Relaxed);
                w.errors.push(e);
            }
            Ok(Err(Failed::Transport(e))) => {
                errors.fetch_add(1, Ordering::Relaxed);
                w.errors.push(e);
                conn = None;
            }
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                w.errors.push(format!("no answer within {REQUEST_LIMIT:?}"));
                conn = None;
            }
        }
    }
    w.conn = conn;
    w
}

/// `total` requests over `conns`, as fast as they are answered, for at most `limit`.
async fn drive(
    addr: SocketAddr,
    conns: Vec<Option<Sender>>,
    total: usize,
    limit: Duration,
) -> (Vec<Option<Sender>>, Outcome) {
    let tickets = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let mut tasks = JoinSet::new();
    for conn in conns {
        tasks.spawn(worker(addr, conn, tickets.clone(), total, deadline, errors.clone()));
    }
    let mut outcome = Outcome::default();
    let mut back = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(w) => {
                w.latencies.into_iter().for_each(|d| outcome.latencies.push(d));
                outcome.errors += w.errors.len();
                outcome.reconnects += w.reconnects;
                for e in w.errors {
                    if outcome.first_errors.len() < 3 && !outcome.first_errors.contains(&e) {
                        outcome.first_errors.push(e);
                    }
                }
                back.push(w.conn);
            }
            Err(e) => {
                outcome.errors += 1;
                outcome.first_errors.push(format!("a load task failed: {e}"));
            }
        }
    }
    outcome.wall = started.elapsed();
    outcome.cut_short = outcome.latencies.len() + outcome.errors < total && Instant::now() >= deadline;
    (back, outcome)
}

/// One row: `level` connections opened, `warmup` requests, then `requests` measured.
async fn run_level(
    addr: SocketAddr,
    level: usize,
    warmup: usize,
    requests: usize,
    limit: Duration,
    server: Option<Process>,
) -> Result<Outcome, String> {
    let mut conns = Vec::with_capacity(level);
    for _ in 0..level {
        conns.push(Some(connect(addr).await.map_err(|e| format!("opening connection {}: {e}", conns.len() + 1))?));
    }
    let (conns, warm) = drive(addr, conns, warmup, limit).await;
    let server_before = server.map(|p| p.cpu_time());
    let client_before = thread_cpu();
    let (conns, mut outcome) = drive(addr, conns, requests, limit).await;
    outcome.client_cpu = thread_cpu().saturating_sub(client_before);
    outcome.server_cpu = server.zip(server_before).map(|(p, before)| p.cpu_time().saturating_sub(before));
    outcome.warmup_errors = warm.errors;
    if outcome.first_errors.is_empty() {
        outcome.first_errors = warm.first_errors;
    }
    drop(conns);
    Ok(outcome)
}

/// CPU time of the calling thread (the load generator: the benchmark's one runtime thread).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One attempt at `GET /` on a new connection.
enum Attempt {
    /// Nothing listens yet.
    Refused,
    Failed(String),
}

async fn get_once(addr: SocketAddr) -> Result<(), Attempt> {
    let mut sender = match connect(addr).await {
        Ok(sender) => sender,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(Attempt::Refused),
        Err(e) => return Err(Attempt::Failed(format!("connect: {e}"))),
    };
    match tokio::time::timeout(REQUEST_LIMIT, get(&mut sender, &addr.to_string())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(Failed::Answer(e) | Failed::Transport(e))) => Err(Attempt::Failed(e)),
        Err(_) => Err(Attempt::Failed(format!("no answer within {REQUEST_LIMIT:?}"))),
    }
}

/// Polls `GET /` every millisecond until a 200 (at most [`SERVING_LIMIT`]);
/// returns how long it took. With `child`, fails as soon as it exits.
async fn wait_serving(addr: SocketAddr, mut child: Option<&mut WasmtimeServe>) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        match get_once(addr).await {
            Ok(()) => return Ok(started.elapsed()),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::Refused) => {}
        }
        if let Some(child) = child.as_deref_mut()
            && let Ok(Some(status)) = child.child.try_wait()
        {
            return Err(format!("the process exited ({status})"));
        }
        if started.elapsed() > SERVING_LIMIT {
            return Err(format!("connection refused for {SERVING_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------------------
// The floor and the peer

/// hyper serving [`BODY`] from a multi-thread runtime of its own in this process.
struct Floor {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Floor {
    fn start() -> std::io::Result<Floor> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("http-floor").build()?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("http-floor".into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(|_request| async {
                                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(BODY))))
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
            // Dropping the runtime ends its connection tasks.
            drop(runtime);
        })?;
        Ok(Floor { addr, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The wasmtime binary (and its `--version`): `explicit`, or the one under
/// target/bench-tools, installed there by `cargo install` when missing or
/// of another version (progress on stderr).
fn wasmtime_binary(explicit: Option<&Path>) -> Result<(PathBuf, String), String> {
    let version = |binary: &Path| -> Result<String, String> {
        let output = Command::new(binary)
            .arg("--version")
            .output()
            .map_err(|e| format!("running {} --version: {e}", binary.display()))?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    if let Some(binary) = explicit {
        return Ok((binary.to_path_buf(), version(binary)?));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("bench-tools");
    let binary = root.join("bin").join("wasmtime");
    if let Ok(found) = version(&binary)
        && found.split_whitespace().nth(1) == Some(WASMTIME_VERSION)
    {
        return Ok((binary, found));
    }
    eprintln!(
        "http: installing wasmtime-cli {WASMTIME_VERSION} into {} with cargo install (takes several minutes)",
        root.display()
    );
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["install", "wasmtime-cli", "--version", &format!("={WASMTIME_VERSION}"), "--locked", "--root"])
        .arg(&root)
        .stdin(Stdio::null());
    // What the outer `cargo bench` sets for its own build must not reach this one.
    for var in ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "RUSTC_WRAPPER"] {
        cmd.env_remove(var);
    }
    // Its stdout goes to our stderr: our stdout is the report.
    if let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() {
        cmd.stdout(Stdio::from(stderr));
    }
    let status = cmd.status().map_err(|e| format!("running cargo install: {e}"))?;
    if !status.success() {
        return Err(format!("cargo install wasmtime-cli --version ={WASMTIME_VERSION} failed ({status})"));
    }
    let found = version(&binary)?;
    if found.split_whitespace().nth(1) != Some(WASMTIME_VERSION) {
        return Err(format!("{} --version says {found:?} after the install", binary.display()));
    }
    Ok((binary, found))
}

/// A `wasmtime serve` process, killed when dropped.
struct WasmtimeServe {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl WasmtimeServe {
    /// `wasmtime serve --addr 127.0.0.1:PORT -S cli=y WASM`, its output in
    /// `<dir>/wasmtime-serve-<name>.log`, its compilation cache under `<dir>`.
    fn spawn(binary: &Path, wasm: &Path, port: u16, dir: &Path, name: &str) -> std::io::Result<WasmtimeServe> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join(format!("wasmtime-serve-{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(binary);
        cmd.args(["serve", "--addr", &addr.to_string(), "-S", "cli=y"])
            .arg(wasm)
            .env("XDG_CACHE_HOME", dir.join("wasmtime-cache"))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        harness::die_with_parent(&mut cmd);
        Ok(WasmtimeServe { child: cmd.spawn()?, addr, log })
    }

    fn log_tail(&self) -> String {
        format!("its output ({}): {}", self.log.display(), harness::tail_file(&self.log, 10))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Served containers

/// A served container that StartContainer started.
struct Started {
    pod_id: String,
    addr: SocketAddr,
    /// Right before RunPodSandbox.
    called: Instant,
    /// StartContainer answered.
    answered: Instant,
}

/// RunPodSandbox (host network), CreateContainer with the serving address in
/// its env, StartContainer. On failure, the error and the pod to remove.
async fn start_served(rt: &Runtime, image: &str, name: &str, port: u16) -> Result<Started, (String, Option<String>)> {
    let mut rt = rt.clone();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let pod = harness::pod_config(name, &harness::new_uid());
    let container = harness::container_config("http", image, &[], &[], &[(ADDR_ENV, &addr.to_string())]);
    let log_dir = Path::new(&pod.log_directory).join("http");
    std::fs::create_dir_all(&log_dir).map_err(|e| (format!("creating {}: {e}", log_dir.display()), None))?;
    let called = Instant::now();
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(pod.clone()), runtime_handler: String::new() })
        .await
        .map_err(|s| (format!("RunPodSandbox: {:?}: {}", s.code(), s.message()), None))?
        .into_inner()
        .pod_sandbox_id;
    let failed =
        |what: &str, s: tonic::Status| (format!("{what}: {:?}: {}", s.code(), s.message()), Some(pod_id.clone()));
    let request =
        CreateContainerRequest { pod_sandbox_id: pod_id.clone(), config: Some(container), sandbox_config: Some(pod) };
    let container_id =
        rt.create_container(request).await.map_err(|s| failed("CreateContainer", s))?.into_inner().container_id;
    rt.start_container(StartContainerRequest { container_id }).await.map_err(|s| failed("StartContainer", s))?;
    let answered = Instant::now();
    Ok(Started { pod_id, addr, called, answered })
}

/// Stops and removes the pods, [`GROW_AT_ONCE`] at a time.
async fn remove_pods(rt: &Runtime, pods: Vec<String>) {
    let mut tasks = JoinSet::new();
    for pod in pods {
        if tasks.len() >= GROW_AT_ONCE {
            tasks.join_next().await;
        }
        let mut rt = rt.clone();
        tasks.spawn(async move {
            let stop = rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await;
            let remove = rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await;
            if let Err(e) = stop.and(remove) {
                eprintln!("http: removing pod {pod}: {:?}: {}", e.code(), e.message());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// A served container started, then sent one request on a connection closed after it.
async fn start_and_touch(rt: Runtime, image: String, n: usize, port: u16) -> Result<String, (String, Option<String>)> {
    let started = start_served(&rt, &image, &format!("http-idle-{n}"), port).await?;
    let deadline = Instant::now() + FIRST_LIMIT;
    loop {
        match get_once(started.addr).await {
            Ok(()) => return Ok(started.pod_id),
            Err(Attempt::Refused) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(Attempt::Refused) => {
                return Err(("connection refused after StartContainer".into(), Some(started.pod_id)));
            }
            Err(Attempt::Failed(e)) => return Err((e, Some(started.pod_id))),
        }
    }
}

// ---------------------------------------------------------------------------
// Idle memory

/// The daemon with `count` idle served containers.
struct IdlePoint {
    count: usize,
    rss: u64,
    anon: u64,
    fds: u64,
    threads: u64,
    /// CPU over [`IDLE_CPU`], in % of one core.
    idle_cpu: f64,
}

impl IdlePoint {
    /// Waits [`SETTLE`], then reads the daemon.
    async fn read(process: Process, count: usize) -> IdlePoint {
        tokio::time::sleep(SETTLE).await;
        let cpu = process.cpu_time();
        tokio::time::sleep(IDLE_CPU).await;
        let idle_cpu = process.cpu_time().saturating_sub(cpu).as_secs_f64() / IDLE_CPU.as_secs_f64() * 100.0;
        IdlePoint {
            count,
            rss: process.rss(),
            anon: process.status_bytes("RssAnon").unwrap_or(0),
            fds: process.fds(),
            threads: process.threads(),
            idle_cpu,
        }
    }
}

/// One served container started, touched and removed (warm-up); the daemon
/// read at 0, then grown to each count and read; every pod removed.
async fn idle_memory(
    rt: &Runtime,
    process: Process,
    image: &str,
    counts: &[usize],
    ports: &mut Ports,
    notes: &mut Vec<String>,
) -> Vec<IdlePoint> {
    match start_and_touch(rt.clone(), image.to_owned(), 0, ports.take()).await {
        Ok(pod) => remove_pods(rt, vec![pod]).await,
        Err((e, pod)) => {
            notes.push(format!("ERROR: the warm-up served container: {e}"));
            remove_pods(rt, pod.into_iter().collect()).await;
            return Vec::new();
        }
    }
    let mut points = vec![IdlePoint::read(process, 0).await];
    let mut pods: Vec<String> = Vec::new();
    let mut failures = 0;
    'counts: for &count in counts {
        let started_at = Instant::now();
        let mut tasks = JoinSet::new();
        let mut next = pods.len();
        while next < count || !tasks.is_empty() {
            while next < count && tasks.len() < GROW_AT_ONCE && failures == 0 {
                tasks.spawn(start_and_touch(rt.clone(), image.to_owned(), next, ports.take()));
                next += 1;
            }
            let Some(joined) = tasks.join_next().await else { break };
            match joined {
                Ok(Ok(pod)) => pods.push(pod),
                Ok(Err((e, pod))) => {
                    failures += 1;
                    pods.extend(pod);
                    if failures == 1 {
                        notes.push(format!(
                            "ERROR: a served container for the idle-memory rows failed after {} were serving: {e}",
                            pods.len()
                        ));
                    }
                }
                Err(e) => {
                    failures += 1;
                    notes.push(format!("ERROR: a start task failed: {e}"));
                }
            }
        }
        if failures > 0 {
            notes.push(format!("idle-memory rows stopped at {} pods, {failures} failed starts", pods.len()));
            break 'counts;
        }
        eprintln!(
            "http: {} served containers started and touched in {} ms; reading the daemon after {} s idle",
            pods.len(),
            ms(started_at.elapsed()),
            (SETTLE + IDLE_CPU).as_secs()
        );
        points.push(IdlePoint::read(process, pods.len()).await);
    }
    let removing = Instant::now();
    let removed = pods.len();
    remove_pods(rt, pods).await;
    notes.push(format!(
        "idle memory: {removed} served pods removed in {} ms; daemon RSS after: {} MiB",
        ms(removing.elapsed()),
        mib(process.rss())
    ));
    points
}

// ---------------------------------------------------------------------------
// The first request

/// The first request's times on wasmrun.
#[derive(Default)]
struct First {
    /// StartContainer answered → first 200.
    after_start: Latencies,
    /// RunPodSandbox called → first 200.
    whole: Latencies,
    /// Samples whose first connection was refused (not listening yet when StartContainer answered).
    refused: usize,
    failures: usize,
}

async fn first_wasmrun(rt: &Runtime, image: &str, samples: usize, ports: &mut Ports, notes: &mut Vec<String>) -> First {
    let mut first = First::default();
    for n in 0..FIRST_WARMUP + samples {
        let started = match start_served(rt, image, &format!("http-first-{n}"), ports.take()).await {
            Ok(started) => started,
            Err((e, pod)) => {
                notes.push(format!("FAILED first-request start #{n}: {e}"));
                remove_pods(rt, pod.into_iter().collect()).await;
                first.failures += 1;
                if first.failures >= 3 {
                    break;
                }
                continue;
            }
        };
        let mut refused = false;
        let result = loop {
            match get_once(started.addr).await {
                Ok(()) => break Ok(Instant::now()),
                Err(Attempt::Refused) if started.answered.elapsed() < FIRST_LIMIT => {
                    refused = true;
                    tokio::task::yield_now().await;
                }
                Err(Attempt::Refused) => break Err(format!("connection refused for {FIRST_LIMIT:?}")),
                Err(Attempt::Failed(e)) => break Err(e),
            }
        };
        remove_pods(rt, vec![started.pod_id.clone()]).await;
        match result {
            Ok(at) if n >= FIRST_WARMUP => {
                first.after_start.push(at - started.answered);
                first.whole.push(at - started.called);
                first.refused += usize::from(refused);
            }
            Ok(_) => {}
            Err(e) => {
                notes.push(format!("FAILED first request #{n} on {}: {e}", started.addr));
                first.failures += 1;
                if first.failures >= 3 {
                    break;
                }
            }
        }
    }
    first
}

/// Spawn → first 200 of `wasmtime serve`, one process per sample (killed
/// after), the first one thrown away (it may compile: the cache is this
/// run's own).
async fn first_wasmtime(
    binary: &Path,
    wasm: &Path,
    dir: &Path,
    samples: usize,
    ports: &mut Ports,
    notes: &mut Vec<String>,
) -> Latencies {
    let mut latencies = Latencies::default();
    let mut failures = 0;
    for n in 0..=samples {
        let port = ports.take();
        // Spawning is part of the time: measured from right before it.
        let spawned = Instant::now();
        let mut serve = match WasmtimeServe::spawn(binary, wasm, port, dir, "first") {
            Ok(serve) => serve,
            Err(e) => {
                notes.push(format!("FAILED spawning wasmtime serve: {e}"));
                break;
            }
        };
        let addr = serve.addr;
        match wait_serving(addr, Some(&mut serve)).await {
            Ok(_) if n > 0 => latencies.push(spawned.elapsed()),
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                notes.push(format!("FAILED wasmtime serve first request #{n}: {e}; {}", serve.log_tail()));
            }
        }
        serve.kill();
        if failures >= 3 {
            break;
        }
    }
    latencies
}

// ---------------------------------------------------------------------------
// The report

struct LoadRow {
    label: String,
    level: usize,
    outcome: Result<Outcome, String>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn p99(o: &Outcome) -> Option<Duration> {
    o.latencies.percentile(99.0)
}

fn print_load(rows: &[LoadRow], peer_label: &str, with_peer: bool) {
    let mut table = Table::new(&[
        "connections",
        "server",
        "requests",
        "errors",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "server CPU µs/req",
        "client CPU %",
        "req/s ÷ wasmtime",
        "p99 ÷ wasmtime",
    ]);
    for row in rows {
        let peer =
            rows.iter().find(|r| r.level == row.level && r.label == peer_label).and_then(|r| r.outcome.as_ref().ok());
        match &row.outcome {
            Ok(o) => {
                let p = |q: f64| o.latencies.percentile(q).map_or("-".into(), ms);
                let per_request = |cpu: Duration| {
                    if o.latencies.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.1}", cpu.as_secs_f64() * 1e6 / o.latencies.len() as f64)
                    }
                };
                let (rate_ratio, p99_ratio) = match peer {
                    Some(peer) if with_peer => (
                        ratio(o.rate(), peer.rate()).map_or("-".into(), |r| format!("{r:.2}")),
                        p99(o)
                            .zip(p99(peer))
                            .and_then(|(a, b)| ratio(a.as_secs_f64(), b.as_secs_f64()))
                            .map_or("-".into(), |r| format!("{r:.2}")),
                    ),
                    _ => ("-".into(), "-".into()),
                };
                let client = if o.wall.is_zero() {
                    "-".into()
                } else {
                    format!("{:.0}", o.client_cpu.as_secs_f64() / o.wall.as_secs_f64() * 100.0)
                };
                table.row(vec![
                    row.level.to_string(),
                    row.label.clone(),
                    o.latencies.len().to_string(),
                    (o.errors + o.warmup_errors).to_string(),
                    format!("{:.0}", o.rate()),
                    p(50.0),
                    p(99.0),
                    o.server_cpu.map_or("-".into(), per_request),
                    client,
                    rate_ratio,
                    p99_ratio,
                ]);
            }
            Err(_) => {
                let mut cells = vec![row.level.to_string(), row.label.clone(), "FAILED".into()];
                cells.resize(11, "-".into());
                table.row(cells);
            }
        }
    }
    println!(
        "== http: GET / of the component `{FIXTURE}` (200 `hello from wasm\\n`), keep-alive connections, one load generator =="
    );
    println!("{}", table.render());
    println!("{LOAD_LEGEND}");
}

const LOAD_LEGEND: &str = "\
connections: keep-alive HTTP/1.1 connections, each sending GET / as soon as its previous answer is in; the load \
generator is this process's one runtime thread (hyper's client), the same for every server;
requests: answered 200 with the body in the measured run (warm-up requests before it, on the same connections, not \
counted); errors: other answers, broken connections and timeouts, warm-up included;
requests/s: requests / wall time of the measured run; p50/p99: one request, sent → whole body received;
server CPU: the server process's user+system CPU over the measured run per request (the daemon's for wasmrun; - \
for the floor, which runs in this process); client CPU: the load generator's thread, in % of one core over the run \
(near 100: the client may be what limits the rate);
÷ wasmtime: this row against wasmtime serve's at the same connections (requests/s: higher is better; p99: lower is \
better); floor: hyper answering the same body from a runtime of its own in this process, no wasm.
";

fn print_first(first: &First, peer: Option<&Latencies>, peer_label: &str) {
    let mut table = Table::new(&["from → to", "samples", "p50 ms", "p99 ms", "max ms"]);
    let mut row = |label: String, l: &Latencies| {
        let p = |q: f64| l.percentile(q).map_or("-".into(), ms);
        table.row(vec![label, l.len().to_string(), p(50.0), p(99.0), p(100.0)]);
    };
    row("wasmrun: StartContainer answered → first 200".into(), &first.after_start);
    row("wasmrun: RunPodSandbox called → first 200".into(), &first.whole);
    if let Some(peer) = peer {
        row(format!("{peer_label}: process spawned → first 200 (polled every 1 ms)"), peer);
    }
    println!("== http: the first request (one pod or process at a time, then a new connection and GET /) ==");
    println!("{}", table.render());
    let mut legend = format!(
        "wasmrun: {} of {} samples found the port not yet listening when StartContainer answered (then retried at \
         once); {} failed; {FIRST_WARMUP} starts thrown away before",
        first.refused,
        first.after_start.len(),
        first.failures
    );
    if peer.is_some() {
        legend.push_str(
            "; wasmtime serve: the first spawn (compiling into the run's own cache) thrown away, the others load \
             the compiled code from that cache",
        );
    }
    println!("{legend}\n");
}

fn per_container(point: &IdlePoint, base: &IdlePoint, bytes: impl Fn(&IdlePoint) -> u64) -> Option<f64> {
    (point.count > 0).then(|| (bytes(point) as f64 - bytes(base) as f64) / point.count as f64)
}

fn print_idle(points: &[IdlePoint]) {
    let Some(base) = points.first() else {
        println!("== http: idle served containers: no rows (see the notes) ==\n");
        return;
    };
    let mut table = Table::new(&[
        "containers",
        "RSS MiB",
        "RssAnon MiB",
        "RSS/ctr KiB",
        "RssAnon/ctr KiB",
        "fds",
        "threads",
        "idle CPU %",
    ]);
    for point in points {
        let per = |f: fn(&IdlePoint) -> u64| per_container(point, base, f).map_or("-".into(), kib);
        table.row(vec![
            point.count.to_string(),
            mib(point.rss),
            mib(point.anon),
            per(|p| p.rss),
            per(|p| p.anon),
            point.fds.to_string(),
            point.threads.to_string(),
            format!("{:.1}", point.idle_cpu),
        ]);
    }
    println!(
        "== http: the daemon with idle served containers (host-network pods, a port each, one request each on a \
         connection closed after it) =="
    );
    println!("{}", table.render());
    println!(
        "RSS/ctr: (RSS - RSS at 0) / containers; read after {} s without requests (tokio's idle blocking threads gone), \
         idle CPU over the last {} s; grown {GROW_AT_ONCE} at a time; one served container was started, sent a \
         request and removed before the row at 0\n",
        SETTLE.as_secs(),
        IDLE_CPU.as_secs()
    );
}

fn met(ok: bool) -> String {
    if ok { "yes".into() } else { "NO".into() }
}

fn print_targets(
    rows: &[LoadRow],
    levels: &[usize],
    peer_label: &str,
    with_peer: bool,
    first: &First,
    idle: &[IdlePoint],
) {
    let mut table = Table::new(&["target", "measured", "met"]);
    let outcome = |label: &str, level: usize| {
        rows.iter().find(|r| r.level == level && r.label == label).and_then(|r| r.outcome.as_ref().ok())
    };
    for &level in levels {
        let (ours, peer) = (outcome("wasmrun", level), outcome(peer_label, level));
        let (rate, tail) = match (ours, peer) {
            (Some(ours), Some(peer)) if with_peer => (
                ratio(ours.rate(), peer.rate()),
                p99(ours).zip(p99(peer)).and_then(|(a, b)| ratio(a.as_secs_f64(), b.as_secs_f64())),
            ),
            _ => (None, None),
        };
        table.row(vec![
            format!("requests/s ≥ {THROUGHPUT_TARGET}× wasmtime serve, {level} connections"),
            rate.map_or("-".into(), |r| format!("{r:.2}×")),
            rate.map_or("-".into(), |r| met(r >= THROUGHPUT_TARGET)),
        ]);
        table.row(vec![
            format!("p99 ≤ {P99_TARGET}× wasmtime serve's, {level} connections"),
            tail.map_or("-".into(), |r| format!("{r:.2}×")),
            tail.map_or("-".into(), |r| met(r <= P99_TARGET)),
        ]);
    }
    let (p50, p99) = (first.after_start.percentile(50.0), first.after_start.percentile(99.0));
    table.row(vec![
        "first request < 1 ms after StartContainer answers".into(),
        match (p50, p99) {
            (Some(p50), Some(p99)) => format!("p50 {} ms, p99 {} ms", ms(p50), ms(p99)),
            _ => "-".into(),
        },
        match (p50, p99) {
            (Some(_), Some(p99)) if p99 < FIRST_TARGET => "yes (p99)".into(),
            (Some(p50), Some(_)) if p50 < FIRST_TARGET => "p50 only".into(),
            (Some(_), Some(_)) => "NO".into(),
            _ => "-".into(),
        },
    ]);
    if let Some(base) = idle.first() {
        for point in &idle[1..] {
            let per = per_container(point, base, |p| p.rss).map(|b| b / 1024.0);
            table.row(vec![
                format!("idle served container < {IDLE_TARGET_KIB} KiB of daemon RSS, at {}", point.count),
                per.map_or("-".into(), |k| format!("{k:.1} KiB")),
                per.map_or("-".into(), |k| met(k < IDLE_TARGET_KIB)),
            ]);
        }
    }
    println!("== http: the targets ==");
    println!("{}", table.render());
}
