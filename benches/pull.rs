//! Section `pull`: pulling and compiling a large module, against downloading
//! the same blob with curl and compiling it as `wasmtime compile` would; and
//! pulling again an image that is present.
//!
//! The module is `benches/fixtures/big` (built here: thousands of generated
//! functions, about 6 MB of wasm), pushed as a wasm artifact to a registry of
//! the section's own (so that its access log holds our requests only). One
//! daemon (log level debug: it logs each CRI call's duration and each
//! compilation's) pulls it `--pull-runs` times, with RemoveImage after each
//! pull, which deletes the blobs and the compiled code from memory and disk:
//! every measured pull downloads and compiles. Interleaved with those pulls,
//! the baseline downloads the blob with `curl` (a process per download, as a
//! user would) and compiles it in this process with
//! `wasmtime::Engine::precompile_module` under the daemon's engine settings,
//! writing the `.cwasm` to a file: what `wasmtime compile` does. Then the
//! image is pulled once more and re-pulled `--pull-runs` times, each re-pull's
//! registry requests counted from the access log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wasmrun::api::{ImageSpec, RemoveImageRequest};

use crate::harness::registry::Request;
use crate::harness::{self, Daemon};
use crate::support::{Latencies, Table, mib, ms};

/// The crate of the large module, and the program it builds.
const BIG_CRATE: &str = "benches/fixtures/big";
const BIG_PROGRAM: &str = "big";
const REPOSITORY: &str = "bench/big";

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Section pull")]
pub struct Args {
    /// Measured runs of each kind: pull + compile, download + compile, re-pull.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub pull_runs: u64,
}

/// Registry requests of one pull, from the access log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Requests {
    manifests: usize,
    blobs: usize,
    /// `GET /v2/`, and anything else.
    others: usize,
}

impl Requests {
    fn count(requests: &[Request]) -> Self {
        let manifests = requests.iter().filter(|r| r.is_manifest()).count();
        let blobs = requests.iter().filter(|r| r.is_blob()).count();
        Requests { manifests, blobs, others: requests.len() - manifests - blobs }
    }

    fn cell(&self) -> String {
        format!("{}/{}/{}", self.manifests, self.blobs, self.others)
    }
}

/// Every distinct request count of a series, e.g. "1/0/1" or "1/0/1 (9), 1/0/2 (1)".
fn request_cells(all: &[Requests]) -> String {
    let mut seen: Vec<(Requests, usize)> = Vec::new();
    for r in all {
        match seen.iter_mut().find(|(s, _)| s == r) {
            Some((_, n)) => *n += 1,
            None => seen.push((*r, 1)),
        }
    }
    if seen.len() == 1 {
        return seen[0].0.cell();
    }
    seen.iter().map(|(r, n)| format!("{} ({n})", r.cell())).collect::<Vec<_>>().join(", ")
}

pub async fn run(args: &Args) {
    let runs = args.pull_runs as usize;
    eprintln!("pull: building the large module ({BIG_CRATE}, wasm32-wasip1, release)");
    let built = Instant::now();
    let dir = tokio::task::spawn_blocking(|| harness::fixtures::build(BIG_CRATE, "wasm32-wasip1"))
        .await
        .expect("build the large module");
    let build_time = built.elapsed();
    let wasm_path = dir.join(format!("{BIG_PROGRAM}.wasm"));
    let wasm = std::fs::read(&wasm_path).unwrap_or_else(|e| panic!("read {}: {e}", wasm_path.display()));
    let digest = harness::sha256_digest(&wasm);
    let hex = digest.trim_start_matches("sha256:").to_owned();

    let registry = harness::start_own_registry("pull-registry");
    let host = registry.host();
    harness::push_wasm_artifact(&host, REPOSITORY, "v1", &wasm).await;
    let image = format!("{host}/{REPOSITORY}:v1");
    let blob_url = format!("http://{host}/v2/{REPOSITORY}/blobs/{digest}");
    eprintln!("pull: pushed {image} ({} MiB module); starting the daemon", mib(wasm.len() as u64));
    let daemon = Daemon::start_with(None, &["--insecure-registry", &host]).await;
    let scratch = harness::scratch_dir("pull-baseline");
    let engine = baseline_engine();

    let (mut pulls, mut downloads, mut compiles, mut baselines) =
        (Latencies::default(), Latencies::default(), Latencies::default(), Latencies::default());
    let mut paired_ratios: Vec<f64> = Vec::new();
    let mut pull_requests: Vec<Requests> = Vec::new();
    let mut download_requests: Vec<Requests> = Vec::new();
    let mut baseline_cwasm = 0;
    let mut daemon_cwasm = 0;
    // The daemon's own compilation time of each measured pull, and the rest of the pull.
    let (mut in_daemon, mut rest) = (Latencies::default(), Latencies::default());
    // From the end of that compilation to the end of the pull, by the daemon's log.
    let mut after_compile = Latencies::default();
    let mut compiled_before = compiled_times(&daemon.log(), &digest).len();
    // Resident memory across the cycles: the daemon's (compiling in a worker
    // process), and this process's, which compiles in process as the daemon
    // did before its compile worker.
    let daemon_process = crate::support::Process(daemon.pid().expect("the daemon runs"));
    let own_process = crate::support::Process(std::process::id());
    let (daemon_rss_before, own_rss_before) = (daemon_process.rss(), own_process.rss());
    for run in 0..runs {
        let baseline = async {
            let offset = registry.log_len();
            let download = curl(&blob_url, &scratch.join("big.wasm"), wasm.len()).await;
            download_requests.push(Requests::count(&registry.requests_since(offset)));
            let (compile, cwasm_len) = compile(&engine, &scratch.join("big.wasm"), &scratch.join("big.cwasm")).await;
            (download, compile, cwasm_len)
        };
        // Alternate which comes first, so that neither always follows the other's I/O.
        let (pull_time, (download, compile, cwasm_len)) = if run % 2 == 0 {
            let b = baseline.await;
            (cold_pull(&daemon, &registry, &image, &hex, &mut pull_requests).await, b)
        } else {
            let p = cold_pull(&daemon, &registry, &image, &hex, &mut pull_requests).await;
            (p, baseline.await)
        };
        // The pull really compiled: the daemon logged one more compilation of the module.
        let compiled = compiled_times(&daemon.log(), &digest);
        assert_eq!(compiled.len(), compiled_before + 1, "pull {} did not compile the module once", run + 1);
        compiled_before = compiled.len();
        let compile_in_daemon = compiled[compiled.len() - 1];
        in_daemon.push(compile_in_daemon);
        rest.push(pull_time.saturating_sub(compile_in_daemon));
        if let Some(after) = after_compiling(&daemon.log(), &digest) {
            after_compile.push(after);
        }
        daemon_cwasm = cached_code(&daemon.root(), &hex).map_or(0, |(_, len)| len);
        baseline_cwasm = cwasm_len;
        remove_image(&daemon, &image).await;
        assert!(cached_code(&daemon.root(), &hex).is_none(), "RemoveImage left the compiled code on disk");

        eprintln!(
            "pull: run {}/{runs}: PullImage {} ms (compiling {} ms); curl {} ms + compile {} ms",
            run + 1,
            ms(pull_time),
            ms(compile_in_daemon),
            ms(download),
            ms(compile)
        );
        pulls.push(pull_time);
        downloads.push(download);
        compiles.push(compile);
        baselines.push(download + compile);
        paired_ratios.push(pull_time.as_secs_f64() / (download + compile).as_secs_f64());
    }

    let (daemon_rss_after, own_rss_after) = (daemon_process.rss(), own_process.rss());
    let mut worker_peaks: Vec<u64> = daemon
        .log()
        .lines()
        .filter(|l| l.contains(&format!("compiled digest={digest} ")))
        .filter_map(|l| field(l, "peak_rss=")?.parse().ok())
        .collect();
    worker_peaks.sort_unstable();
    eprintln!("pull: {runs} re-pulls of the image, present");
    harness::pull(&daemon, &image).await;
    let mut repulls = Latencies::default();
    let mut repull_requests: Vec<Requests> = Vec::new();
    let repulls_start = registry.log_len();
    for _ in 0..runs {
        let offset = registry.log_len();
        let started = Instant::now();
        harness::pull(&daemon, &image).await;
        repulls.push(started.elapsed());
        repull_requests.push(Requests::count(&registry.requests_since(offset)));
    }
    // Where a re-pull's time goes: the daemon's side of each call, and the registry's of each request.
    let daemon_log = daemon.log();
    let mut repull_in_daemon = Latencies::default();
    let pull_calls: Vec<Duration> = daemon_log
        .lines()
        .filter(|l| l.contains("call=/runtime.v1.ImageService/PullImage "))
        .filter_map(|l| field(l, "elapsed=").and_then(parse_duration))
        .collect();
    pull_calls.iter().rev().take(runs).for_each(|d| repull_in_daemon.push(*d));
    let (mut repull_manifest, mut repull_ping) = (Latencies::default(), Latencies::default());
    let registry_log = std::fs::read(&registry.log).unwrap_or_default();
    for line in String::from_utf8_lossy(registry_log.get(repulls_start as usize..).unwrap_or_default()).lines() {
        let (Some(uri), Some(took)) =
            (field(line, "http.request.uri="), field(line, "http.response.duration=").and_then(parse_duration))
        else {
            continue;
        };
        if uri.contains("/manifests/") {
            repull_manifest.push(took);
        } else if uri == "/v2/" {
            repull_ping.push(took);
        }
    }
    let ratio = |p: f64| {
        let (a, b) = (pulls.percentile(p).unwrap(), baselines.percentile(p).unwrap());
        format!("{:.2}", a.as_secs_f64() / b.as_secs_f64())
    };
    let p = |l: &Latencies, q: f64| l.percentile(q).map_or("-".into(), ms);
    let mut table = Table::new(&["measured", "p50 ms", "p99 ms", "runs", "requests manifest/blob/other"]);
    let n = runs.to_string();
    table.row(vec![
        "wasmrun PullImage, cold (pull + compile)".into(),
        p(&pulls, 50.0),
        p(&pulls, 99.0),
        n.clone(),
        request_cells(&pull_requests),
    ]);
    table.row(vec![
        "download alone (curl)".into(),
        p(&downloads, 50.0),
        p(&downloads, 99.0),
        n.clone(),
        request_cells(&download_requests),
    ]);
    table.row(vec![
        "compile alone (precompile_module + write .cwasm)".into(),
        p(&compiles, 50.0),
        p(&compiles, 99.0),
        n.clone(),
        "-".into(),
    ]);
    table.row(vec!["download + compile".into(), p(&baselines, 50.0), p(&baselines, 99.0), n.clone(), "-".into()]);
    table.row(vec!["ratio pull / (download + compile)".into(), ratio(50.0), ratio(99.0), n.clone(), "-".into()]);
    table.row(vec![
        "wasmrun PullImage, image present (re-pull)".into(),
        p(&repulls, 50.0),
        p(&repulls, 99.0),
        n.clone(),
        request_cells(&repull_requests),
    ]);

    let mut sorted = paired_ratios.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "== pull: a {} MiB module ({}), pulled and compiled vs downloaded and compiled ==",
        mib(wasm.len() as u64),
        wasm_path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(&wasm_path).display()
    );
    println!("{}", table.render());
    println!(
        "- ratio per run (each pull against the download + compile next to it): median {:.2}, min {:.2}, max {:.2}",
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1]
    );
    println!(
        "- resident memory across the {runs} pull + compile + RemoveImage cycles: the daemon (compiling in a worker \
         process) {} MiB before, {} MiB after; this benchmark process, compiling the same module in process as the \
         daemon did before its worker (precompile_module) {} MiB before, {} MiB after; the compile worker's peak \
         (the daemon's log, `peak_rss`, sampled every 10 ms) p50 {} MiB, max {} MiB",
        mib(daemon_rss_before),
        mib(daemon_rss_after),
        mib(own_rss_before),
        mib(own_rss_after),
        worker_peaks.get(worker_peaks.len() / 2).map_or("-".into(), |&b| mib(b)),
        worker_peaks.last().map_or("-".into(), |&b| mib(b)),
    );
    println!(
        "- of each cold pull, the daemon's compilation (its log, `compiled … elapsed=`: the compile worker from \
         spawn to exit: reading the module, compiling, serializing and writing the .cwasm): p50/p99 {} ms; the \
         rest of the pull (download, verification, writes, loading the .cwasm, linking, index, gRPC): p50/p99 {} \
         ms, of which after the compilation (loading the .cwasm, linking, the index; from the daemon's log \
         timestamps): p50/p99 {} ms",
        in_daemon.p50_p99(),
        rest.p50_p99(),
        after_compile.p50_p99()
    );
    println!(
        "- of each re-pull, the daemon's side of PullImage (its log): p50/p99 {} ms; the registry's side \
         (its log) of the manifest GET: p50/p99 {} ms, of GET /v2/: p50/p99 {} ms",
        repull_in_daemon.p50_p99(),
        repull_manifest.p50_p99(),
        repull_ping.p50_p99()
    );
    println!(
        "- compiled code: {} MiB .cwasm from the daemon's cache, {} MiB from precompile_module",
        mib(daemon_cwasm),
        mib(baseline_cwasm)
    );
    println!(
        "- requests are manifest/blob/other per pull, from the registry's access log; other is `GET /v2/`, which \
         oci-client sends before each request to a registry that asks no authentication"
    );
    let built = format!("the large module built in {:.1} s (0 when already built)", build_time.as_secs_f64());
    crate::support::finish(daemon, vec![built]).await;
}

/// A wasmtime engine with the daemon's settings (src/wasm/mod.rs, `Engine::new`).
fn baseline_engine() -> wasmtime::Engine {
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(true);
    wasmtime::Engine::new(&config).expect("create a wasmtime engine")
}

/// Downloads `url` to `to` with curl; returns how long it took.
async fn curl(url: &str, to: &Path, expected_len: usize) -> Duration {
    let _ = std::fs::remove_file(to);
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--fail", "--location", "--output"]).arg(to).arg(url);
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || cmd.output()).await.expect("curl task");
    let elapsed = started.elapsed();
    let output = output.unwrap_or_else(|e| panic!("cannot run curl (is it installed?): {e}"));
    assert!(output.status.success(), "curl {url}: {}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    let len = std::fs::metadata(to).map_or(0, |m| m.len() as usize);
    assert_eq!(len, expected_len, "curl {url} downloaded {len} bytes");
    elapsed
}

/// Reads the module, compiles it and writes the compiled code, as `wasmtime
/// compile` does; returns how long it took and the size of the code.
async fn compile(engine: &wasmtime::Engine, wasm: &Path, cwasm: &Path) -> (Duration, u64) {
    let (engine, wasm, cwasm) = (engine.clone(), wasm.to_owned(), cwasm.to_owned());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let bytes = std::fs::read(&wasm).expect("read the downloaded module");
        let compiled = engine.precompile_module(&bytes).expect("compile the module");
        std::fs::write(&cwasm, &compiled).expect("write the .cwasm");
        (started.elapsed(), compiled.len() as u64)
    })
    .await
    .expect("compile task")
}

/// PullImage of an image absent from the daemon; checks that it downloaded the module once.
async fn cold_pull(
    daemon: &Daemon,
    registry: &harness::registry::Registry,
    image: &str,
    hex: &str,
    requests: &mut Vec<Requests>,
) -> Duration {
    assert!(cached_code(&daemon.root(), hex).is_none(), "compiled code of the module is on disk before the pull");
    let offset = registry.log_len();
    let started = Instant::now();
    harness::pull(daemon, image).await;
    let elapsed = started.elapsed();
    let seen = registry.requests_since(offset);
    let module_gets = seen.iter().filter(|r| r.is_blob() && r.uri.ends_with(hex)).count();
    assert_eq!(module_gets, 1, "the pull did not download the module once: {seen:#?}");
    requests.push(Requests::count(&seen));
    elapsed
}

async fn remove_image(daemon: &Daemon, image: &str) {
    daemon
        .images()
        .remove_image(RemoveImageRequest { image: Some(ImageSpec { image: image.into(), ..Default::default() }) })
        .await
        .unwrap_or_else(|s| panic!("RemoveImage {image}: {s:?}"));
}

/// The compiled code of the module in the daemon's cache (`root/cache/<engine>/<hex>.cwasm`), and its size.
fn cached_code(root: &Path, hex: &str) -> Option<(PathBuf, u64)> {
    std::fs::read_dir(root.join("cache")).ok()?.flatten().find_map(|engine| {
        let path = engine.path().join(format!("{hex}.cwasm"));
        std::fs::metadata(&path).ok().map(|m| (path, m.len()))
    })
}

/// The `elapsed` of every `compiled digest=<digest> …` line of the daemon's log.
fn compiled_times(log: &str, digest: &str) -> Vec<Duration> {
    let needle = format!("compiled digest={digest} ");
    log.lines().filter(|l| l.contains(&needle)).filter_map(|l| field(l, "elapsed=").and_then(parse_duration)).collect()
}

/// The time from the daemon's last `compiled digest=<digest>` line (logged
/// when compiling ends) to its next `pulled image` line.
fn after_compiling(log: &str, digest: &str) -> Option<Duration> {
    let needle = format!("compiled digest={digest} ");
    let timestamp = |line: &str| chrono::DateTime::parse_from_rfc3339(line.split_whitespace().next()?).ok();
    let lines: Vec<&str> = log.lines().collect();
    let compiled = lines.iter().rposition(|l| l.contains(&needle))?;
    let pulled = lines[compiled..].iter().find(|l| l.contains("pulled image"))?;
    (timestamp(pulled)? - timestamp(lines[compiled])?).to_std().ok()
}

/// The value of `key` (`elapsed=`, `http.request.uri=`) in a `key=value` log line, unquoted.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(&format!(" {key}"))? + 1 + key.len()..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split_whitespace().next(),
    }
}

/// A `Duration` as its Debug form prints it: `1.48s`, `20.7ms`, `961.2µs`, `12ns`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" | "us" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}
