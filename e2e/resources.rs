//! RPCs on running containers other than their lifecycle: ReopenContainerLog,
//! UpdateContainerResources, ContainerStats, ListContainerStats, PodSandboxStats.

use std::time::Instant;

use tonic::Code;
use wasmrun::api::{
    ContainerStats, ContainerStatsFilter, ContainerStatsRequest, LinuxContainerResources, ListContainerStatsRequest,
    PodSandboxStatsRequest, ReopenContainerLogRequest, StopContainerRequest, UpdateContainerResourcesRequest,
};

use crate::harness::*;

/// A daemon with one pod running one container of `fixture_name`, which has
/// printed `first_line`.
struct Running {
    daemon: Daemon,
    pod: Pod,
    config: wasmrun::api::ContainerConfig,
    id: String,
}

async fn start_running(fixture_name: &str, first_line: &str, repo: &str) -> Running {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, fixture_name, repo).await;
    let pod = Pod::run(&daemon, repo).await;
    let config = container_config(fixture_name, &image.name, &[], &[], &[]);
    let id = pod.create_and_start(&daemon, &config).await;
    wait_log_line(&pod.log_path(&config), "stdout", first_line).await;
    Running { daemon, pod, config, id }
}

impl Running {
    async fn stop(&self) {
        self.daemon
            .runtime()
            .stop_container(StopContainerRequest { container_id: self.id.clone(), timeout: 0 })
            .await
            .expect("StopContainer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_container_log_recreates_a_rotated_log() {
    let running = start_running("sleeper", "sleeping", "resources-reopen").await;
    let log = running.pod.log_path(&running.config);
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).expect("rotate the log");

    running
        .daemon
        .runtime()
        .reopen_container_log(ReopenContainerLogRequest { container_id: running.id.clone() })
        .await
        .expect("ReopenContainerLog");
    assert!(log.exists(), "ReopenContainerLog did not recreate {}", log.display());
    assert!(has_line(&full_lines(&read_log(&rotated)), "stdout", "sleeping"));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_container_log_of_an_exited_container_fails() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "hello", "resources-reopen-exited").await;
    let pod = Pod::run(&daemon, "reopen-exited").await;
    let (id, _) = pod.run_to_exit(&daemon, &container_config("hello", &image.name, &[], &[], &[])).await;

    let result = daemon.runtime().reopen_container_log(ReopenContainerLogRequest { container_id: id }).await;
    expect_code(result, Code::FailedPrecondition, "ReopenContainerLog of an exited container");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_container_resources_is_reflected_in_status() {
    const LIMIT: i64 = 256 * 1024 * 1024;
    let running = start_running("sleeper", "sleeping", "resources-update").await;
    let mut rt = running.daemon.runtime();
    let resources = LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: LIMIT,
        ..Default::default()
    };

    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: running.id.clone(),
        linux: Some(resources.clone()),
        ..Default::default()
    })
    .await
    .expect("UpdateContainerResources");
    let status = container_status(&mut rt, &running.id, false).await.status.expect("status");
    let linux = status.resources.and_then(|r| r.linux).expect("ContainerStatus without resources.linux");
    assert_eq!(linux.memory_limit_in_bytes, LIMIT, "{linux:#?}");

    let result = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: random_id(),
            linux: Some(resources),
            ..Default::default()
        })
        .await;
    expect_code(result, Code::NotFound, "UpdateContainerResources of an unknown container");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_of_a_running_guest_show_cpu_and_memory() {
    let running = start_running("spin", "spinning", "resources-stats").await;
    let mut rt = running.daemon.runtime();

    let deadline = Instant::now() + WAIT_LIMIT;
    let stats: ContainerStats = loop {
        let stats = rt
            .container_stats(ContainerStatsRequest { container_id: running.id.clone() })
            .await
            .expect("ContainerStats")
            .into_inner()
            .stats
            .expect("ContainerStats without stats");
        let cpu = stats.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value);
        if cpu > 0 {
            break stats;
        }
        assert!(Instant::now() < deadline, "CPU usage of a spinning guest still 0 after {WAIT_LIMIT:?}: {stats:#?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    assert_eq!(stats.attributes.as_ref().map(|a| a.id.as_str()), Some(running.id.as_str()));
    let memory = stats.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map_or(0, |v| v.value);
    assert!(memory > 0, "working_set_bytes is 0: {stats:#?}");

    let listed = rt
        .list_container_stats(ListContainerStatsRequest { filter: None })
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    assert!(
        listed.iter().any(|s| s.attributes.as_ref().is_some_and(|a| a.id == running.id)),
        "ListContainerStats lacks the container: {listed:#?}"
    );
    let filtered = rt
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter { pod_sandbox_id: running.pod.id.clone(), ..Default::default() }),
        })
        .await
        .expect("ListContainerStats by pod")
        .into_inner()
        .stats;
    assert_eq!(filtered.len(), 1, "{filtered:#?}");

    rt.pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: running.pod.id.clone() })
        .await
        .expect("PodSandboxStats");
    running.stop().await;
}

fn with_memory_limit(mut config: wasmrun::api::ContainerConfig, bytes: i64) -> wasmrun::api::ContainerConfig {
    config.linux = Some(wasmrun::api::LinuxContainerConfig {
        resources: Some(LinuxContainerResources { memory_limit_in_bytes: bytes, ..Default::default() }),
        ..Default::default()
    });
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_growing_past_its_memory_limit_is_oom_killed() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "memhog", "resources-memhog").await;
    let pod = Pod::run(&daemon, "memhog").await;
    // The guest asks for 256 MiB in 1 MiB steps; the limit is 32 MiB.
    let config = with_memory_limit(container_config("memhog", &image.name, &[], &["256"], &[]), 32 << 20);

    let (_, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(status.reason, "OOMKilled", "{status:#?}");
    assert_eq!(status.exit_code, 137, "{status:#?}");
    assert!(status.message.contains("memory limit"), "{status:#?}");
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    assert!(has_line(&lines, "stdout", "allocated 16 MiB"), "{lines:#?}");
    assert!(!has_line(&lines, "stdout", "done"), "{lines:#?}");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_within_its_memory_limit_completes() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "memhog", "resources-memhog-ok").await;
    let pod = Pod::run(&daemon, "memhog-ok").await;
    let config = with_memory_limit(container_config("memhog", &image.name, &[], &["16"], &[]), 64 << 20);

    let (_, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert_eq!(status.reason, "Completed", "{status:#?}");
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    assert!(has_line(&lines, "stdout", "done"), "{lines:#?}");
}
