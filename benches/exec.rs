//! Section `exec`: ExecSync, as kubelet's exec probes call it. One daemon
//! (release build) runs containers of the `exectool` fixture (`serve DIR`:
//! it sleeps); each probe is `ExecSync [exectool exit 0]`, the container's
//! own program run as a new instance that exits at once. Rows: one probe at
//! a time; then one probe on each of `--exec-containers` containers at once,
//! round after round (a probe every period on every container, compressed);
//! beside them the floors (a bare CRI round trip to the same daemon, the
//! same module instantiated and run in-process by wasmtime) and the peer,
//! containerd + runc running ExecSync of a static Linux program that exits
//! at once in a running container, in the same run.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use wasmrun::api::{CreateContainerRequest, ExecSyncRequest, RunPodSandboxRequest, StartContainerRequest};

use crate::harness::{self, Containerd, Daemon, Runtime};
use crate::support::{Latencies, Process, Table};

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Section exec")]
pub struct Args {
    /// Probes one at a time (each row of one-at-a-time probes).
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub exec_samples: u64,
    /// Containers probed at once, one probe each per round.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub exec_containers: u64,
    /// Rounds of probes on every container.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub exec_rounds: u64,
    /// Probes of containerd + runc, one at a time (0: no peer rows).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub exec_peer_samples: u64,
}

/// Busy CPU time of the whole machine so far (all CPUs; `/proc/stat`).
fn machine_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = fields.iter().enumerate().filter(|(i, _)| !matches!(i, 3 | 4)).take(8).map(|(_, v)| v).sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(busy * 1_000_000_000 / ticks)
}

fn probe(container_id: &str, cmd: &[&str]) -> ExecSyncRequest {
    ExecSyncRequest { container_id: container_id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout: 10 }
}

/// One row's figures.
struct Measured {
    latencies: Latencies,
    failures: Vec<String>,
    wall: Duration,
    machine_cpu: Duration,
    daemon_cpu: Option<Duration>,
}

/// `rounds` rounds of one ExecSync on each of `containers`, all of a round
/// at once; a probe counts when it exits with `exit_code`.
async fn measure(
    rt: &Runtime,
    containers: &[String],
    (cmd, exit_code): (&[&str], i32),
    rounds: usize,
    daemon: Option<&Process>,
) -> Measured {
    let (machine_before, daemon_before) = (machine_cpu(), daemon.map(Process::cpu_time));
    let started = Instant::now();
    let (mut latencies, mut failures) = (Latencies::default(), Vec::new());
    for _ in 0..rounds {
        let mut tasks = JoinSet::new();
        for id in containers {
            let (mut rt, request) = (rt.clone(), probe(id, cmd));
            tasks.spawn(async move {
                let started = Instant::now();
                let answer = rt.exec_sync(request).await;
                (started.elapsed(), answer.map(|a| a.into_inner()))
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((took, Ok(answer))) if answer.exit_code == exit_code => latencies.push(took),
                Ok((_, Ok(answer))) => failures.push(format!(
                    "exit code {}: {:?}",
                    answer.exit_code,
                    String::from_utf8_lossy(&answer.stderr)
                )),
                Ok((_, Err(status))) => failures.push(format!("{status:?}")),
                Err(e) => failures.push(format!("a probe task failed: {e}")),
            }
        }
    }
    Measured {
        latencies,
        failures,
        wall: started.elapsed(),
        machine_cpu: machine_cpu().saturating_sub(machine_before),
        daemon_cpu: daemon.zip(daemon_before).map(|(process, before)| process.cpu_time().saturating_sub(before)),
    }
}

fn row(table: &mut Table, what: &str, at_once: usize, m: &Measured) {
    let per = |cpu: Duration| format!("{:.1}", cpu.as_secs_f64() * 1e6 / m.latencies.len().max(1) as f64);
    table.row(vec![
        what.into(),
        at_once.to_string(),
        m.latencies.len().to_string(),
        m.failures.len().to_string(),
        m.latencies.p50_p99(),
        format!("{:.0}", m.latencies.len() as f64 / m.wall.as_secs_f64()),
        m.daemon_cpu.map_or("-".into(), per),
        per(m.machine_cpu),
    ]);
}

/// The in-process floor: `samples` runs of `exectool exit 0`, each a new
/// store and WASI context, instantiated and run to its exit, synchronously.
fn floor(wasm: &[u8], samples: usize) -> Result<Latencies, String> {
    let fail = |what: &'static str| move |e: wasmtime::Error| format!("{what}: {e:#}");
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, wasm).map_err(fail("compiling exectool"))?;
    let mut linker: wasmtime::Linker<wasmtime_wasi::p1::WasiP1Ctx> = wasmtime::Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).map_err(fail("linking WASI"))?;
    let pre = linker.instantiate_pre(&module).map_err(fail("instantiate_pre"))?;
    let mut latencies = Latencies::default();
    for _ in 0..samples {
        let started = Instant::now();
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().args(&["exectool", "exit", "0"]).build_p1();
        let mut store = wasmtime::Store::new(&engine, wasi);
        let instance = pre.instantiate(&mut store).map_err(fail("instantiate"))?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(fail("_start"))?;
        match start.call(&mut store, ()) {
            Ok(()) => {}
            Err(e) if e.downcast_ref::<wasmtime_wasi::I32Exit>().is_some_and(|exit| exit.0 == 0) => {}
            Err(e) => return Err(format!("_start: {e:#}")),
        }
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

/// Runs a pod and a started container of `config` on `rt`; returns the container's id.
async fn running_container(
    rt: &mut Runtime,
    name: &str,
    config: wasmrun::api::ContainerConfig,
) -> Result<String, String> {
    // The host's network (no CNI here), as a host-network pod is sent by kubelet.
    let pod = harness::host_network_pod_config(name, &harness::new_uid());
    let _ = std::fs::create_dir_all(std::path::Path::new(&pod.log_directory).join(name));
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(pod.clone()), runtime_handler: String::new() })
        .await
        .map_err(|s| format!("RunPodSandbox: {s:?}"))?
        .into_inner()
        .pod_sandbox_id;
    let request = CreateContainerRequest { pod_sandbox_id: pod_id, config: Some(config), sandbox_config: Some(pod) };
    let id =
        rt.create_container(request).await.map_err(|s| format!("CreateContainer: {s:?}"))?.into_inner().container_id;
    rt.start_container(StartContainerRequest { container_id: id.clone() })
        .await
        .map_err(|s| format!("StartContainer: {s:?}"))?;
    Ok(id)
}

pub async fn run(args: &Args) {
    let (samples, containers, rounds) =
        (args.exec_samples as usize, args.exec_containers as usize, args.exec_rounds as usize);
    eprintln!("exec: building the fixtures, starting the registry and the daemon");
    let daemon = Daemon::start_with(None, &["--log-level", "info"]).await;
    let process = Process(daemon.pid().expect("the daemon runs"));
    let mut rt = daemon.runtime();
    let wasm = harness::fixture("exectool");
    let image = harness::push_bytes("bench-exectool", &wasm).await;
    harness::pull(&daemon, &image.name).await;
    let state = harness::scratch_dir("bench-exec-state");
    let mut notes = Vec::new();

    let mut ids = Vec::new();
    for n in 0..containers {
        let mut config = harness::container_config("probed", &image.name, &["exectool"], &["serve", "/state"], &[]);
        config.mounts = vec![harness::mount("/state", &state, false)];
        match running_container(&mut rt, &format!("exec-{n}"), config).await {
            Ok(id) => ids.push(id),
            Err(e) => {
                notes.push(format!("ERROR: starting container {n}: {e}"));
                break;
            }
        }
    }
    let cmd: (&[&str], i32) = (&["exectool", "exit", "0"], 0);
    let mut table = Table::new(&[
        "what",
        "at once",
        "probes",
        "failed",
        "p50/p99 ms",
        "probes/s",
        "daemon CPU µs/probe",
        "machine CPU µs/probe",
    ]);
    // Floors.
    let mut version = Latencies::default();
    for _ in 0..samples {
        let started = Instant::now();
        if rt.version(wasmrun::api::VersionRequest { version: "v1".into() }).await.is_ok() {
            version.push(started.elapsed());
        }
    }
    table.row(vec![
        "floor: one CRI round trip (Version)".into(),
        "1".into(),
        version.len().to_string(),
        "0".into(),
        version.p50_p99(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    match floor(&wasm, samples) {
        Ok(floor) => table.row(vec![
            "floor: wasmtime in-process, instantiate + run".into(),
            "1".into(),
            floor.len().to_string(),
            "0".into(),
            floor.p50_p99(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]),
        Err(e) => notes.push(format!("ERROR: the in-process floor: {e}")),
    }
    if let Some(first) = ids.first() {
        eprintln!("exec: warm-up, then {samples} probes one at a time");
        measure(&rt, std::slice::from_ref(first), cmd, 20, None).await;
        let one = measure(&rt, std::slice::from_ref(first), cmd, samples, Some(&process)).await;
        row(&mut table, "wasmrun ExecSync", 1, &one);
        notes.extend(
            one.failures
                .first()
                .map(|f| format!("FAILED: {} probes one at a time; the first: {f}", one.failures.len())),
        );
        eprintln!("exec: {rounds} rounds of a probe on each of {} containers at once", ids.len());
        let many = measure(&rt, &ids, cmd, rounds, Some(&process)).await;
        row(&mut table, "wasmrun ExecSync", ids.len(), &many);
        notes.extend(
            many.failures.first().map(|f| format!("FAILED: {} probes at once; the first: {f}", many.failures.len())),
        );
    }
    if args.exec_peer_samples > 0 {
        peer(args.exec_peer_samples as usize, &mut table, &mut notes).await;
    }
    println!("== exec: ExecSync of a program that exits at once (an exec probe), {containers} containers running ==");
    println!("{}", table.render());
    println!("{LEGEND}");
    crate::support::finish(daemon, notes).await;
}

/// containerd + runc: ExecSync of `/sidecar` (a static C program; without
/// arguments it prints its usage and exits 2) in a running container of the
/// sidecar image, one at a time.
async fn peer(samples: usize, table: &mut Table, notes: &mut Vec<String>) {
    eprintln!("exec: starting containerd");
    let started = tokio::spawn(async {
        let containerd = Containerd::start().await;
        let image = harness::linux_sidecar_image().await;
        (containerd, image)
    })
    .await;
    let Ok((containerd, image)) = started else {
        notes.push("containerd + runc row SKIPPED: containerd did not start".into());
        return;
    };
    if let Err(e) = crate::support::pull_into(&containerd, &[harness::pause_image().await, image.clone()]).await {
        return notes.push(format!("containerd + runc row SKIPPED: {e}"));
    }
    let mut rt = containerd.runtime();
    let config = harness::container_config("sidecar", &image, &[], &["18480", "18481", "/"], &[]);
    let id = match running_container(&mut rt, "exec-peer", config).await {
        Ok(id) => id,
        Err(e) => return notes.push(format!("containerd + runc row SKIPPED: {e}")),
    };
    let version = rt
        .version(wasmrun::api::VersionRequest { version: "v1".into() })
        .await
        .map_or("?".into(), |v| v.into_inner().runtime_version);
    let cmd: (&[&str], i32) = (&["/sidecar"], 2);
    measure(&rt, std::slice::from_ref(&id), cmd, 5, None).await;
    let measured = measure(&rt, std::slice::from_ref(&id), cmd, samples, None).await;
    row(table, &format!("containerd {version} + runc ExecSync"), 1, &measured);
    notes.extend(
        measured
            .failures
            .first()
            .map(|f| format!("FAILED: {} containerd probes; the first: {f}", measured.failures.len())),
    );
    notes.push("containerd + runc: ExecSync of /sidecar without arguments (prints its usage, exits 2) in a running container; containerd killed at the end".into());
    drop(containerd);
}

const LEGEND: &str = "\
p50/p99: ExecSync as the client sees it (for `at once` > 1, each probe with the others of its round in flight); \
probes/s: probes answered / wall time of the row;
daemon CPU: wasmrun's user+system CPU time over the row, per probe; machine CPU: busy time of all CPUs \
(/proc/stat) over the row, per probe: the daemon, the client, and for containerd its shim and runc;
floors: a Version call to the same daemon (the least a CRI call costs), and the same module instantiated and run \
by wasmtime in this process, without the daemon.
";
