//! One node, two worlds: wasmrun in front of a real containerd. Wasm pods run
//! in wasmrun; every other request is forwarded, and lists merge both sides.

use std::time::Duration;

use tonic::Code;
use wasmrun::api::{
    ContainerStatusRequest, ListContainersRequest, ListImagesRequest, ListPodSandboxRequest, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest, StopContainerRequest,
    StopPodSandboxRequest,
};

use crate::harness::*;

/// A wasmrun whose backing runtime is `containerd`.
async fn daemon_in_front_of(containerd: &Containerd) -> Daemon {
    let endpoint = format!("unix://{}", containerd.socket.display());
    Daemon::start_with(None, &["--backing-endpoint", &endpoint]).await
}

async fn run_pod(daemon: &Daemon, config: &wasmrun::api::PodSandboxConfig, handler: &str) -> String {
    daemon
        .runtime()
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() })
        .await
        .unwrap_or_else(|s| panic!("RunPodSandbox ({handler:?}): {s:?}"))
        .into_inner()
        .pod_sandbox_id
}

/// The RuntimeReady condition of Status.
async fn runtime_ready(rt: &mut Runtime) -> wasmrun::api::RuntimeCondition {
    let status = rt.status(wasmrun::api::StatusRequest { verbose: false }).await.expect("Status").into_inner();
    let conditions = status.status.expect("Status without status").conditions;
    conditions.into_iter().find(|c| c.r#type == "RuntimeReady").expect("no RuntimeReady condition")
}

/// Waits (bounded) until `path` holds a log line ending in `line`.
async fn wait_for_line(path: &std::path::Path, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if std::fs::read_to_string(path).is_ok_and(|text| text.lines().any(|l| l.ends_with(line))) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no line {line:?} in {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linux_pod_and_a_wasm_pod_share_one_node() {
    let mut containerd = Containerd::start().await;
    let daemon = daemon_in_front_of(&containerd).await;
    let mut rt = daemon.runtime();

    // Images: the Linux one is forwarded, the wasm one stays here; both are listed.
    let linux_image = linux_hello_image().await;
    pull(&daemon, &linux_image).await;
    let wasm_image = pulled_fixture(&daemon, "sleeper", "forwarding-sleeper").await;
    let listed = daemon.images().list_images(ListImagesRequest::default()).await.expect("ListImages").into_inner();
    let tags: Vec<&String> = listed.images.iter().flat_map(|i| &i.repo_tags).collect();
    assert!(tags.contains(&&linux_image) && tags.contains(&&wasm_image.name), "ListImages: {tags:?}");

    // Pods: an empty handler is the backing runtime's default; `wasmrun` is ours.
    let linux_config = host_network_pod_config("linux", &new_uid());
    let linux_pod = run_pod(&daemon, &linux_config, "").await;
    let wasm_pod = Pod::run_config(&daemon, {
        let mut config = pod_config("wasm", &new_uid());
        config.annotations.insert("module.wasm.image/variant".into(), "compat".into());
        config
    })
    .await;
    let pods = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await.expect("ListPodSandbox").into_inner();
    let ids: Vec<&String> = pods.items.iter().map(|p| &p.id).collect();
    assert!(ids.contains(&&linux_pod) && ids.contains(&&wasm_pod.id), "ListPodSandbox: {ids:?}");

    // Containers: the Linux one runs in containerd, its log is where kubelet reads it.
    let linux_container = container_config("hello", &linux_image, &[], &["--wait"], &[]);
    let log = std::path::Path::new(&linux_config.log_directory).join(&linux_container.log_path);
    std::fs::create_dir_all(log.parent().unwrap()).expect("log directory");
    let linux_id = rt
        .create_container(wasmrun::api::CreateContainerRequest {
            pod_sandbox_id: linux_pod.clone(),
            config: Some(linux_container.clone()),
            sandbox_config: Some(linux_config.clone()),
        })
        .await
        .expect("CreateContainer in the Linux pod")
        .into_inner()
        .container_id;
    rt.start_container(wasmrun::api::StartContainerRequest { container_id: linux_id.clone() })
        .await
        .expect("StartContainer in the Linux pod");
    wait_for_line(&log, LINUX_HELLO_LINE).await;
    let wasm_id =
        wasm_pod.create_and_start(&daemon, &container_config("sleeper", &wasm_image.name, &[], &[], &[])).await;
    let containers =
        rt.list_containers(ListContainersRequest::default()).await.expect("ListContainers").into_inner().containers;
    let ids: Vec<&String> = containers.iter().map(|c| &c.id).collect();
    assert!(ids.contains(&&linux_id) && ids.contains(&&wasm_id), "ListContainers: {ids:?}");
    let status = rt
        .container_status(ContainerStatusRequest { container_id: linux_id.clone(), verbose: false })
        .await
        .expect("ContainerStatus of the Linux container")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.state(), wasmrun::api::ContainerState::ContainerRunning);
    // Exec in a forwarded container is containerd's, answered unchanged.
    let exec = rt
        .exec_sync(wasmrun::api::ExecSyncRequest {
            container_id: linux_id.clone(),
            cmd: vec!["/hello".into(), "--exit".into(), "0".into()],
            timeout: 30,
        })
        .await
        .expect("ExecSync in the Linux container")
        .into_inner();
    assert_eq!(exec.exit_code, 0, "{exec:?}");
    assert!(String::from_utf8_lossy(&exec.stdout).contains(LINUX_HELLO_LINE), "{exec:?}");
    // Exec URLs: containerd's streaming server for its container, wasmrun's for ours.
    let exec_url = |container_id: &String| wasmrun::api::ExecRequest {
        container_id: container_id.clone(),
        cmd: vec!["/hello".into()],
        stdout: true,
        ..Default::default()
    };
    let origin = |url: &str| url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
    let linux_url = rt.exec(exec_url(&linux_id)).await.expect("Exec in the Linux container").into_inner().url;
    let theirs = containerd.runtime().exec(exec_url(&linux_id)).await.expect("containerd's Exec").into_inner().url;
    let wasm_url = rt.exec(exec_url(&wasm_id)).await.expect("Exec in the wasm container").into_inner().url;
    assert_eq!(origin(&linux_url), origin(&theirs), "{linux_url} is not containerd's streaming server ({theirs})");
    assert_ne!(origin(&linux_url), origin(&wasm_url), "{linux_url} {wasm_url}");
    assert!(runtime_ready(&mut rt).await.status, "RuntimeReady with containerd up");
    // The runtime handlers: ours, then containerd's (its default, named empty,
    // is its own; Debian's containerd 1.6 predates the field and lists none).
    let theirs = containerd.runtime().status(StatusRequest { verbose: false }).await.expect("containerd Status");
    let merged = rt.status(StatusRequest { verbose: false }).await.expect("Status").into_inner().runtime_handlers;
    let wanted: Vec<String> = std::iter::once("wasmrun".to_owned())
        .chain(theirs.into_inner().runtime_handlers.into_iter().map(|h| h.name).filter(|name| name != "wasmrun"))
        .collect();
    assert_eq!(merged.iter().map(|h| h.name.clone()).collect::<Vec<_>>(), wanted, "{merged:?}");
    let stats = rt
        .list_container_stats(wasmrun::api::ListContainerStatsRequest::default())
        .await
        .expect("ListContainerStats")
        .into_inner()
        .stats;
    let ids: Vec<&String> = stats.iter().filter_map(|s| s.attributes.as_ref()).map(|a| &a.id).collect();
    assert!(ids.contains(&&linux_id) && ids.contains(&&wasm_id), "ListContainerStats: {ids:?}");

    // containerd hangs (SIGSTOP): wasm calls still answer, and lists give the
    // wasm side once the wait for containerd's part runs out.
    let pid = containerd.pid().expect("containerd runs") as libc::pid_t;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let still = container_status(&mut rt, &wasm_id, false).await.status.expect("status");
    assert_eq!(still.state(), wasmrun::api::ContainerState::ContainerRunning);
    let listed = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await.expect("ListPodSandbox").into_inner();
    assert!(listed.items.iter().any(|p| p.id == wasm_pod.id), "the wasm pod is listed while containerd hangs");
    unsafe { libc::kill(pid, libc::SIGCONT) };

    // containerd dies: the wasm pod is untouched and wasm calls go on;
    // forwarded calls say the backing runtime is unavailable.
    containerd.kill();
    let status = expect_code(
        rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: linux_pod.clone(), verbose: false }).await,
        Code::Unavailable,
        "a forwarded call while containerd is down",
    );
    assert!(status.message().contains("backing runtime"), "{status:?}");
    let still = container_status(&mut rt, &wasm_id, false).await.status.expect("status");
    assert_eq!(still.state(), wasmrun::api::ContainerState::ContainerRunning);
    let (_, done) = wasm_pod
        .run_to_exit(
            &daemon,
            &container_config("hello", &pulled_fixture(&daemon, "hello", "forwarding-hello").await.name, &[], &[], &[]),
        )
        .await;
    assert_eq!(done.exit_code, 0, "a wasm container while containerd is down: {done:#?}");
    let listed = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await.expect("ListPodSandbox").into_inner();
    assert!(listed.items.iter().any(|p| p.id == wasm_pod.id), "the wasm pod is listed while containerd is down");
    let ready = runtime_ready(&mut rt).await;
    assert!(
        !ready.status && ready.message.contains("backing runtime"),
        "RuntimeReady while containerd is down: {ready:?}"
    );

    // containerd comes back: forwarding resumes by itself.
    containerd.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status =
            rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: linux_pod.clone(), verbose: false }).await;
        if status.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "forwarding did not resume: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(runtime_ready(&mut rt).await.status, "RuntimeReady once containerd is back");

    // Stop and remove both, each through wasmrun.
    for id in [&linux_id, &wasm_id] {
        rt.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 10 }).await.expect("StopContainer");
        rt.remove_container(RemoveContainerRequest { container_id: id.clone() }).await.expect("RemoveContainer");
    }
    for id in [&linux_pod, &wasm_pod.id] {
        rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await.expect("StopPodSandbox");
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await.expect("RemovePodSandbox");
    }
    let pods = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await.expect("ListPodSandbox").into_inner();
    assert!(pods.items.iter().all(|p| p.id != linux_pod && p.id != wasm_pod.id), "{pods:?}");
}
