//! Section `cpu`: CPU limits and fairness of spinning guests. One daemon runs
//! the `spin` fixture (a guest that never yields by itself):
//!
//! - with each CFS quota of `--millicores` (period 100 ms), alone, it measures
//!   the share of a CPU the guest gets over `--cpu-secs`, from ContainerStats;
//! - with no guest, then with two unlimited spinners per core, it measures the
//!   latency of ContainerStatus, as kubelet's calls would see it.

use std::time::{Duration, Instant};

use wasmrun::api::{
    ContainerStatsRequest, ContainerStatusRequest, LinuxContainerConfig, LinuxContainerResources,
    RemovePodSandboxRequest, StopPodSandboxRequest,
};

use crate::harness::{self, Daemon, Pod, Runtime};
use crate::support::{Latencies, Table};

/// The CFS period Kubernetes uses.
const PERIOD_MICROS: i64 = 100_000;

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Section cpu")]
pub struct Args {
    /// CPU limits to measure, in millicores (0 = no limit).
    #[arg(long, value_name = "M,…", value_delimiter = ',', default_values_t = [100, 250, 500, 1000, 0],
          value_parser = clap::value_parser!(u64).range(0..=64_000))]
    pub millicores: Vec<u64>,
    /// Seconds over which each guest's CPU share is measured.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub cpu_secs: u64,
    /// ContainerStatus calls measured with and without spinning guests.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub cpu_status_calls: u64,
}

pub async fn run(args: &Args) {
    let daemon = Daemon::start_with(None, &["--log-level", "info"]).await;
    let mut rt = daemon.runtime();
    let image = harness::pulled_fixture(&daemon, "spin", "bench-spin").await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut shares = Table::new(&["limit (millicores)", "quota/period", "measured share", "measured / limit"]);
    for &millicores in &args.millicores {
        eprintln!("cpu: measuring a spinning guest limited to {millicores} millicores for {} s", args.cpu_secs);
        let pod = Pod::run(&daemon, &format!("spin-{millicores}")).await;
        let quota = millicores as i64 * PERIOD_MICROS / 1000;
        let mut config = harness::container_config("spin", &image.name, &[], &[], &[]);
        config.linux = Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_period: PERIOD_MICROS,
                cpu_quota: quota,
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = pod.create_and_start(&daemon, &config).await;
        harness::wait_log_line(&pod.log_path(&config), "stdout", "spinning").await;
        let share = cpu_share(&mut rt, &id, Duration::from_secs(args.cpu_secs)).await;
        let (limit, ratio) = if millicores == 0 {
            ("none".to_owned(), "-".to_owned())
        } else {
            (format!("{quota}/{PERIOD_MICROS} µs"), format!("{:.2}", share * 1000.0 / millicores as f64))
        };
        shares.row(vec![
            if millicores == 0 { "none".into() } else { millicores.to_string() },
            limit,
            format!("{share:.3} CPU"),
            ratio,
        ]);
        remove_pod(&mut rt, &pod.id).await;
    }

    let idle_pod = Pod::run(&daemon, "status-target").await;
    let target = harness::container_config("target", &image.name, &[], &[], &[]);
    let target_id = idle_pod.create(&daemon, &target).await;
    eprintln!("cpu: ContainerStatus latency with no guest running");
    let quiet = status_latencies(&mut rt, &target_id, args.cpu_status_calls).await;
    let spinners = 2 * cores;
    eprintln!("cpu: ContainerStatus latency with {spinners} spinning guests");
    let busy_pod = Pod::run(&daemon, "spinners").await;
    for n in 0..spinners {
        let config = harness::container_config(&format!("spin-{n}"), &image.name, &[], &[], &[]);
        busy_pod.create_and_start(&daemon, &config).await;
        harness::wait_log_line(&busy_pod.log_path(&config), "stdout", "spinning").await;
    }
    let busy = status_latencies(&mut rt, &target_id, args.cpu_status_calls).await;
    remove_pod(&mut rt, &busy_pod.id).await;
    remove_pod(&mut rt, &idle_pod.id).await;

    let mut latency = Table::new(&["guests spinning", "ContainerStatus p50/p99 ms", "calls"]);
    latency.row(vec!["0".into(), quiet.p50_p99(), args.cpu_status_calls.to_string()]);
    latency.row(vec![format!("{spinners} ({cores} cores)"), busy.p50_p99(), args.cpu_status_calls.to_string()]);

    println!("== cpu: share of a CPU a spinning guest gets, by limit (over {} s each) ==", args.cpu_secs);
    println!("{}", shares.render());
    println!("== cpu: CRI latency while guests spin on every core ==");
    println!("{}", latency.render());
    crate::support::finish(daemon, Vec::new()).await;
}

/// The guest's share of one CPU over `window`, from two ContainerStats.
async fn cpu_share(rt: &mut Runtime, id: &str, window: Duration) -> f64 {
    let read = |rt: &mut Runtime| {
        let mut rt = rt.clone();
        let id = id.to_owned();
        async move {
            let stats = rt
                .container_stats(ContainerStatsRequest { container_id: id })
                .await
                .expect("ContainerStats")
                .into_inner()
                .stats
                .and_then(|s| s.cpu)
                .expect("ContainerStats without cpu");
            (stats.usage_core_nano_seconds.map_or(0, |v| v.value), stats.timestamp)
        }
    };
    let (cpu_before, at_before) = read(rt).await;
    tokio::time::sleep(window).await;
    let (cpu_after, at_after) = read(rt).await;
    (cpu_after - cpu_before) as f64 / (at_after - at_before).max(1) as f64
}

async fn status_latencies(rt: &mut Runtime, id: &str, calls: u64) -> Latencies {
    let mut latencies = Latencies::default();
    for _ in 0..calls {
        let start = Instant::now();
        rt.container_status(ContainerStatusRequest { container_id: id.to_owned(), verbose: false })
            .await
            .expect("ContainerStatus");
        latencies.push(start.elapsed());
    }
    latencies
}

async fn remove_pod(rt: &mut Runtime, id: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.to_owned() }).await.expect("StopPodSandbox");
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.to_owned() }).await.expect("RemovePodSandbox");
}
