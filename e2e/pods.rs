//! Pod sandboxes: RunPodSandbox, PodSandboxStatus, ListPodSandbox,
//! StopPodSandbox, RemovePodSandbox.

use tonic::Code;
use wasmrun::api::{
    ContainerState, ListContainersRequest, ListPodSandboxRequest, PodSandbox, PodSandboxFilter, PodSandboxState,
    PodSandboxStateValue, PodSandboxStatus, PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StopPodSandboxRequest,
};

use crate::harness::*;

async fn pod_status(rt: &mut Runtime, id: &str) -> PodSandboxStatus {
    rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false })
        .await
        .unwrap_or_else(|s| panic!("PodSandboxStatus {id}: {s:?}"))
        .into_inner()
        .status
        .expect("PodSandboxStatus without status")
}

async fn list_pods(rt: &mut Runtime, filter: Option<PodSandboxFilter>) -> Vec<PodSandbox> {
    rt.list_pod_sandbox(ListPodSandboxRequest { filter }).await.expect("ListPodSandbox").into_inner().items
}

/// The ids of the listed pods, sorted.
async fn list_pod_ids(rt: &mut Runtime, filter: PodSandboxFilter) -> Vec<String> {
    let mut ids: Vec<String> = list_pods(rt, Some(filter)).await.into_iter().map(|p| p.id).collect();
    ids.sort();
    ids
}

fn state_filter(state: PodSandboxState) -> PodSandboxFilter {
    PodSandboxFilter { state: Some(PodSandboxStateValue { state: state as i32 }), ..Default::default() }
}

async fn stop_pod(rt: &mut Runtime, id: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.into() })
        .await
        .unwrap_or_else(|s| panic!("StopPodSandbox {id}: {s:?}"));
}

async fn remove_pod(rt: &mut Runtime, id: &str) {
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.into() })
        .await
        .unwrap_or_else(|s| panic!("RemovePodSandbox {id}: {s:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_sandbox_reports_a_ready_pod() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let pod = Pod::run(&daemon, "ready").await;

    let status = pod_status(&mut rt, &pod.id).await;
    assert_eq!(status.id, pod.id);
    assert_eq!(status.state(), PodSandboxState::SandboxReady);
    assert_eq!(status.metadata, pod.config.metadata);
    assert_eq!(status.labels, pod.config.labels);
    assert_eq!(status.annotations, pod.config.annotations);
    assert!(status.created_at > 0, "created_at {}", status.created_at);
    assert_eq!(status.network.map(|n| n.ip).unwrap_or_default(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pod_sandbox_filters_by_id_state_and_labels() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let mut config_a = pod_config("list-a", &new_uid());
    config_a.labels.insert("e2e-app".into(), "a".into());
    let mut config_b = pod_config("list-b", &new_uid());
    config_b.labels.insert("e2e-app".into(), "b".into());
    let a = Pod::run_config(&daemon, config_a).await;
    let b = Pod::run_config(&daemon, config_b).await;
    stop_pod(&mut rt, &b.id).await;

    let all = list_pods(&mut rt, None).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    let listed_a = all.iter().find(|p| p.id == a.id).expect("pod a listed");
    assert_eq!(listed_a.metadata, a.config.metadata);
    assert_eq!(listed_a.labels, a.config.labels);
    assert_eq!(listed_a.annotations, a.config.annotations);
    assert_eq!(listed_a.state(), PodSandboxState::SandboxReady);
    assert!(listed_a.created_at > 0);

    let by_id = PodSandboxFilter { id: a.id.clone(), ..Default::default() };
    assert_eq!(list_pod_ids(&mut rt, by_id).await, sorted(&[&a.id]));
    assert_eq!(list_pod_ids(&mut rt, state_filter(PodSandboxState::SandboxReady)).await, sorted(&[&a.id]));
    assert_eq!(list_pod_ids(&mut rt, state_filter(PodSandboxState::SandboxNotready)).await, sorted(&[&b.id]));
    let by_label =
        PodSandboxFilter { label_selector: [("e2e-app".to_string(), "b".to_string())].into(), ..Default::default() };
    assert_eq!(list_pod_ids(&mut rt, by_label).await, sorted(&[&b.id]));
    let shared_label = PodSandboxFilter {
        label_selector: [("io.kubernetes.pod.namespace".to_string(), "default".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(list_pod_ids(&mut rt, shared_label).await, sorted(&[&a.id, &b.id]));
    let no_match = PodSandboxFilter {
        id: a.id.clone(),
        state: Some(PodSandboxStateValue { state: PodSandboxState::SandboxNotready as i32 }),
        ..Default::default()
    };
    assert_eq!(list_pod_ids(&mut rt, no_match).await, Vec::<String>::new());
}

/// kubelet relists pods without a filter every second (the daemon keeps
/// that answer while nothing changes): each change shows in the next list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfiltered_pod_list_shows_every_change_in_the_next_list() {
    use PodSandboxState::{SandboxNotready as NotReady, SandboxReady as Ready};
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let states = |pods: Vec<PodSandbox>| pods.into_iter().map(|p| (p.id.clone(), p.state())).collect::<Vec<_>>();
    assert_eq!(states(list_pods(&mut rt, None).await), vec![]);

    let a = Pod::run(&daemon, "relist-a").await;
    assert_eq!(states(list_pods(&mut rt, None).await), vec![(a.id.clone(), Ready)]);
    let b = Pod::run(&daemon, "relist-b").await;
    assert_eq!(states(list_pods(&mut rt, None).await), vec![(a.id.clone(), Ready), (b.id.clone(), Ready)]);
    assert_eq!(states(list_pods(&mut rt, None).await), vec![(a.id.clone(), Ready), (b.id.clone(), Ready)]);

    stop_pod(&mut rt, &a.id).await;
    assert_eq!(states(list_pods(&mut rt, None).await), vec![(a.id.clone(), NotReady), (b.id.clone(), Ready)]);
    // A filtered list is made afresh; it agrees.
    assert_eq!(list_pod_ids(&mut rt, state_filter(NotReady)).await, vec![a.id.clone()]);

    remove_pod(&mut rt, &b.id).await;
    assert_eq!(states(list_pods(&mut rt, None).await), vec![(a.id.clone(), NotReady)]);
    remove_pod(&mut rt, &a.id).await;
    assert_eq!(states(list_pods(&mut rt, None).await), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_pod_sandbox_is_idempotent() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let pod = Pod::run(&daemon, "stop").await;

    stop_pod(&mut rt, &pod.id).await;
    assert_eq!(pod_status(&mut rt, &pod.id).await.state(), PodSandboxState::SandboxNotready);
    stop_pod(&mut rt, &pod.id).await;
    assert_eq!(pod_status(&mut rt, &pod.id).await.state(), PodSandboxState::SandboxNotready);
    stop_pod(&mut rt, &random_id()).await;
}

/// CRI: StopPodSandbox stops every running process of the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_pod_sandbox_stops_its_running_containers() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let image = pulled_fixture(&daemon, "sleeper", "pods-stop-running").await;
    let pod = Pod::run(&daemon, "stop-running").await;
    let config = container_config("sleeper", &image.name, &[], &[], &[]);
    let id = pod.create_and_start(&daemon, &config).await;
    wait_log_line(&pod.log_path(&config), "stdout", "sleeping").await;

    stop_pod(&mut rt, &pod.id).await;
    let status = container_status(&mut rt, &id, false).await.status.expect("status");
    assert_eq!(status.state(), ContainerState::ContainerExited, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_pod_sandbox_removes_the_pod_and_its_containers() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let image = pulled_fixture(&daemon, "hello", "pods-remove").await;
    let pod = Pod::run(&daemon, "remove").await;
    let exited = container_config("exited", &image.name, &[], &[], &[]);
    let (exited_id, _) = pod.run_to_exit(&daemon, &exited).await;
    let created_id = pod.create(&daemon, &container_config("created", &image.name, &[], &[], &[])).await;

    stop_pod(&mut rt, &pod.id).await;
    remove_pod(&mut rt, &pod.id).await;

    let result =
        rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: false }).await;
    expect_code(result, Code::NotFound, "PodSandboxStatus of a removed pod");
    assert!(list_pods(&mut rt, None).await.is_empty());
    for id in [&exited_id, &created_id] {
        let result = rt
            .container_status(wasmrun::api::ContainerStatusRequest { container_id: id.clone(), verbose: false })
            .await;
        expect_code(result, Code::NotFound, "ContainerStatus of a container of a removed pod");
    }
    let containers = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "containers of a removed pod still listed: {containers:#?}");

    remove_pod(&mut rt, &pod.id).await;
    remove_pod(&mut rt, &random_id()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_sandbox_with_the_same_metadata_already_exists() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let pod = Pod::run(&daemon, "duplicate").await;

    let result = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(pod.config.clone()), runtime_handler: String::new() })
        .await;
    expect_code(result, Code::AlreadyExists, "RunPodSandbox with duplicate metadata");

    // The next attempt of the same pod (what kubelet does after a failure) is a new sandbox.
    let mut next = pod.config.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    let retry = Pod::run_config(&daemon, next).await;
    assert_ne!(retry.id, pod.id);
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_backing_runtime_only_wasm_handlers_and_no_handler_run() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let run = |handler: &str| RunPodSandboxRequest {
        config: Some(pod_config(&format!("handler-{handler}"), &new_uid())),
        runtime_handler: handler.into(),
    };
    // crictl runp names no handler: that is a wasm pod while nothing else can run it.
    for handler in ["", "wasmrun"] {
        let id = rt
            .run_pod_sandbox(run(handler))
            .await
            .unwrap_or_else(|s| panic!("RunPodSandbox with handler {handler:?}: {s:?}"))
            .into_inner()
            .pod_sandbox_id;
        let status = pod_status(&mut rt, &id).await;
        assert_eq!(status.runtime_handler, handler);
        assert_eq!(status.state(), PodSandboxState::SandboxReady);
    }
    let status = expect_code(rt.run_pod_sandbox(run("runc")).await, Code::FailedPrecondition, "handler runc");
    assert!(status.message().contains("runc") && status.message().contains("backing"), "{status:?}");
    assert_serving(&daemon).await;
}
