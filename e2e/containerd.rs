//! The harness' real containerd (CRI plugin, runc) driven directly over its
//! own CRI socket, without wasmrun: the ground the forwarding tests stand on.

use std::time::Instant;

use wasmrun::api::{
    ContainerState, CreateContainerRequest, ImageSpec, ListContainersRequest, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxState, PodSandboxStatusRequest, PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};

use crate::harness::*;

/// RunPodSandbox; returns the sandbox id.
async fn run_pod(containerd: &Containerd, config: &PodSandboxConfig) -> String {
    containerd
        .runtime()
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() })
        .await
        .unwrap_or_else(|s| panic!("RunPodSandbox: {s:?}"))
        .into_inner()
        .pod_sandbox_id
}

/// CreateContainer (after creating its log directory, as kubelet does) + StartContainer.
async fn create_and_start(
    containerd: &Containerd,
    pod_id: &str,
    pod: &PodSandboxConfig,
    container: &wasmrun::api::ContainerConfig,
) -> String {
    let log = std::path::Path::new(&pod.log_directory).join(&container.log_path);
    std::fs::create_dir_all(log.parent().unwrap()).expect("create container log directory");
    let id = containerd
        .runtime()
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(container.clone()),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_or_else(|s| panic!("CreateContainer: {s:?}"))
        .into_inner()
        .container_id;
    containerd
        .runtime()
        .start_container(StartContainerRequest { container_id: id.clone() })
        .await
        .unwrap_or_else(|s| panic!("StartContainer: {s:?}"));
    id
}

async fn pod_state(containerd: &Containerd, pod_id: &str) -> PodSandboxState {
    containerd
        .runtime()
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod_id.into(), verbose: false })
        .await
        .unwrap_or_else(|s| panic!("PodSandboxStatus: {s:?}"))
        .into_inner()
        .status
        .expect("PodSandboxStatus without status")
        .state()
}

async fn pull_hello(containerd: &Containerd) -> String {
    let image = linux_hello_image().await;
    let image_ref = containerd
        .images()
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: image.clone(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("PullImage {image}: {s:?}"))
        .into_inner()
        .image_ref;
    assert!(image_ref.starts_with("sha256:"), "image_ref {image_ref:?}");
    image
}

/// Asserts nothing is mounted under the dropped containerd's directory.
fn assert_no_mounts(dir: &std::path::Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy();
    let left: Vec<&str> = mountinfo.lines().filter(|l| l.contains(&*dir)).collect();
    assert!(left.is_empty(), "mounts left under {dir}:\n{}", left.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_a_host_network_pod_through_its_whole_lifecycle() {
    let started = Instant::now();
    let containerd = Containerd::start().await;
    let start_time = started.elapsed();
    let version = containerd.runtime().version(VersionRequest { version: "v1".into() }).await.unwrap().into_inner();
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");

    let lifecycle = Instant::now();
    let image = pull_hello(&containerd).await;
    let pull_time = lifecycle.elapsed();
    let pod = host_network_pod_config("linux-hello", &new_uid());
    let pod_id = run_pod(&containerd, &pod).await;
    let run_pod_time = lifecycle.elapsed();
    assert_eq!(pod_state(&containerd, &pod_id).await, PodSandboxState::SandboxReady);

    // A container that prints its line and waits for SIGTERM.
    let waiter = container_config("waiter", &image, &[], &["--wait"], &[]);
    let waiter_id = create_and_start(&containerd, &pod_id, &pod, &waiter).await;
    let waiter_log = std::path::Path::new(&pod.log_directory).join(&waiter.log_path);
    wait_log_line(&waiter_log, "stdout", LINUX_HELLO_LINE).await;
    let first_line_time = lifecycle.elapsed();
    let mut rt = containerd.runtime();
    let status = wait_state(&mut rt, &waiter_id, ContainerState::ContainerRunning).await;
    assert_eq!(status.log_path, waiter_log.to_string_lossy());
    let pids = containerd.processes();
    assert!(containerd.container_pids().len() >= 2, "expected the pause and hello processes: {pids:?}");

    // A container that exits by itself with status 3.
    let exiter = container_config("exiter", &image, &[], &["--exit", "3", "bye"], &[]);
    let exiter_id = create_and_start(&containerd, &pod_id, &pod, &exiter).await;
    let status = wait_state(&mut rt, &exiter_id, ContainerState::ContainerExited).await;
    assert_eq!(status.exit_code, 3, "{status:#?}");
    let lines = full_lines(&read_log(&std::path::Path::new(&pod.log_directory).join(&exiter.log_path)));
    assert!(has_line(&lines, "stdout", LINUX_HELLO_LINE) && has_line(&lines, "stdout", "bye"), "{lines:?}");

    rt.stop_container(StopContainerRequest { container_id: waiter_id.clone(), timeout: 10 })
        .await
        .unwrap_or_else(|s| panic!("StopContainer: {s:?}"));
    let status = wait_state(&mut rt, &waiter_id, ContainerState::ContainerExited).await;
    assert_eq!(status.exit_code, 0, "SIGTERM should end the waiter with 0: {status:#?}");
    wait_log_line(&waiter_log, "stdout", "hello got SIGTERM").await;

    for id in [&waiter_id, &exiter_id] {
        rt.remove_container(RemoveContainerRequest { container_id: id.to_string() })
            .await
            .unwrap_or_else(|s| panic!("RemoveContainer: {s:?}"));
    }
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod_id.clone() })
        .await
        .unwrap_or_else(|s| panic!("StopPodSandbox: {s:?}"));
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod_id.clone() })
        .await
        .unwrap_or_else(|s| panic!("RemovePodSandbox: {s:?}"));
    let lifecycle_time = lifecycle.elapsed();
    let containers = rt.list_containers(ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(containers.is_empty(), "{containers:#?}");
    let pods = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(pods.is_empty(), "{pods:#?}");
    eprintln!(
        "containerd: started in {start_time:?}; pull {pull_time:?}, RunPodSandbox done at {run_pod_time:?}, \
         first log line at {first_line_time:?}, whole lifecycle {lifecycle_time:?}"
    );

    let dir = containerd.dir.clone();
    drop(rt);
    drop(containerd);
    assert_processes_gone(&pids);
    assert_no_mounts(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_killed_and_restarted_finds_its_running_pod_and_drop_cleans_up() {
    let mut containerd = Containerd::start().await;
    let image = pull_hello(&containerd).await;
    let pod = host_network_pod_config("survivor", &new_uid());
    let pod_id = run_pod(&containerd, &pod).await;
    let waiter = container_config("waiter", &image, &[], &["--wait"], &[]);
    let waiter_id = create_and_start(&containerd, &pod_id, &pod, &waiter).await;
    let waiter_log = std::path::Path::new(&pod.log_directory).join(&waiter.log_path);
    wait_log_line(&waiter_log, "stdout", LINUX_HELLO_LINE).await;

    let shims = containerd.shim_pids();
    let inits = containerd.container_pids();
    assert!(!shims.is_empty() && inits.len() >= 2, "shims {shims:?}, inits {inits:?}");
    let old_pid = containerd.pid().unwrap();

    containerd.kill();
    assert!(live_cmdline(old_pid).is_none(), "containerd survived SIGKILL");
    // Shims and containers outlive containerd.
    for pid in shims.iter().chain(&inits) {
        assert!(live_cmdline(*pid).is_some(), "pid {pid} died with containerd");
    }

    let restarted = Instant::now();
    containerd.restart().await;
    eprintln!("containerd: restart answered Version after {:?}", restarted.elapsed());
    assert_ne!(containerd.pid(), Some(old_pid));
    let version = containerd.runtime().version(VersionRequest { version: "v1".into() }).await.unwrap().into_inner();
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(pod_state(&containerd, &pod_id).await, PodSandboxState::SandboxReady);
    let mut rt = containerd.runtime();
    let status = container_status(&mut rt, &waiter_id, false).await.status.unwrap();
    assert_eq!(status.state(), ContainerState::ContainerRunning, "{status:#?}");

    // The restarted containerd still drives the container.
    rt.stop_container(StopContainerRequest { container_id: waiter_id.clone(), timeout: 10 })
        .await
        .unwrap_or_else(|s| panic!("StopContainer after restart: {s:?}"));
    let status = wait_state(&mut rt, &waiter_id, ContainerState::ContainerExited).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    wait_log_line(&waiter_log, "stdout", "hello got SIGTERM").await;

    // A second container, left running: Drop must clean it all up.
    let second = container_config("second", &image, &[], &["--wait"], &[]);
    create_and_start(&containerd, &pod_id, &pod, &second).await;
    wait_log_line(&std::path::Path::new(&pod.log_directory).join(&second.log_path), "stdout", LINUX_HELLO_LINE).await;
    let pids = containerd.processes();
    let dir = containerd.dir.clone();
    drop(rt);
    drop(containerd);
    assert_processes_gone(&pids);
    assert_no_mounts(&dir);
}
