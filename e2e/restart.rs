//! A daemon restart, as kubelet sees it: pods and containers come back from
//! their records. Running containers come back exited (255, reason Error, a
//! message saying the runtime restarted) so kubelet restarts them by their
//! restart policy; exited ones keep their exit; created ones can be started.
//! A record that cannot be read (the journal's last line cut short) is set
//! aside and the daemon starts anyway.

use std::collections::HashMap;

use tokio_stream::StreamExt;
use wasmrun::api::{
    ContainerEventType, ContainerState, ContainerStatus, GetEventsRequest, ListContainersRequest,
    ListPodSandboxRequest, PodSandboxState, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    StopContainerRequest, StopPodSandboxRequest,
};

use crate::harness::*;

async fn statuses(daemon: &Daemon, ids: &[&String]) -> HashMap<String, ContainerStatus> {
    let mut rt = daemon.runtime();
    let mut all = HashMap::new();
    for id in ids {
        all.insert(id.to_string(), container_status(&mut rt, id, false).await.status.expect("a status"));
    }
    all
}

async fn pod_states(daemon: &Daemon) -> Vec<(String, PodSandboxState)> {
    let list = daemon.runtime().list_pod_sandbox(ListPodSandboxRequest::default()).await.expect("ListPodSandbox");
    let mut pods: Vec<_> = list.into_inner().items.into_iter().map(|p| (p.id.clone(), p.state())).collect();
    pods.sort();
    pods
}

async fn container_states(daemon: &Daemon) -> Vec<(String, ContainerState)> {
    let list = daemon.runtime().list_containers(ListContainersRequest::default()).await.expect("ListContainers");
    let mut containers: Vec<_> = list.into_inner().containers.into_iter().map(|c| (c.id.clone(), c.state())).collect();
    containers.sort();
    containers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_with_containers_in_every_state_brings_them_back() {
    let mut daemon = Daemon::start().await;
    let hello = pulled_fixture(&daemon, "hello", "restart-hello").await;
    let exit_code = pulled_fixture(&daemon, "exit-code", "restart-exit-code").await;
    let sleeper = pulled_fixture(&daemon, "sleeper", "restart-sleeper").await;
    let spin = pulled_fixture(&daemon, "spin", "restart-spin").await;

    let web = Pod::run(&daemon, "web").await;
    let batch = Pod::run(&daemon, "batch").await;
    let stopped = Pod::run(&daemon, "stopped").await;
    let created_config = container_config("created", &hello.name, &[], &[], &[]);
    let created = web.create(&daemon, &created_config).await;
    let (exited, _) = web.run_to_exit(&daemon, &container_config("exited", &exit_code.name, &[], &["7"], &[])).await;
    let sleeping = web.create_and_start(&daemon, &container_config("sleeping", &sleeper.name, &[], &[], &[])).await;
    let spinning = batch.create_and_start(&daemon, &container_config("spinning", &spin.name, &[], &[], &[])).await;
    let (done, _) = batch.run_to_exit(&daemon, &container_config("done", &hello.name, &[], &[], &[])).await;
    daemon
        .runtime()
        .stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: stopped.id.clone() })
        .await
        .expect("StopPodSandbox");
    wait_state(&mut daemon.runtime(), &sleeping, ContainerState::ContainerRunning).await;
    // The sleeper has written its line once its log says so.
    let sleeping_log = web.log_dir().join("sleeping/0.log");
    wait_for_line(&sleeping_log, "sleeping").await;

    let all = [&created, &exited, &sleeping, &spinning, &done];
    let before = statuses(&daemon, &all).await;
    let pods_before = pod_states(&daemon).await;
    let logs_before: HashMap<String, Vec<u8>> =
        all.iter().map(|id| (id.to_string(), std::fs::read(&before[*id].log_path).unwrap_or_default())).collect();

    let dir = daemon.dir().to_path_buf();
    daemon.sigkill();
    drop(daemon);
    let daemon = Daemon::start_with(Some(dir), &[]).await;

    // The events a subscriber gets first: the exits the restart caused.
    let mut events = daemon.runtime().get_container_events(GetEventsRequest {}).await.expect("events").into_inner();
    let mut ended = Vec::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(WAIT_LIMIT, events.next())
            .await
            .expect("a recovered exit within the limit")
            .expect("the stream goes on")
            .expect("an event");
        assert_eq!(event.container_event_type(), ContainerEventType::ContainerStoppedEvent, "{event:#?}");
        let status = event.containers_statuses.iter().find(|s| s.id == event.container_id).expect("its status");
        assert_eq!(status.state(), ContainerState::ContainerExited, "{status:#?}");
        ended.push(event.container_id);
    }
    ended.sort();
    assert_eq!(ended, sorted(&[&sleeping, &spinning]));

    assert_eq!(pod_states(&daemon).await, pods_before);
    assert!(pods_before.contains(&(stopped.id.clone(), PodSandboxState::SandboxNotready)), "{pods_before:?}");
    let pod_status = daemon
        .runtime()
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: web.id.clone(), verbose: false })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("a status");
    assert_eq!(
        (pod_status.labels, pod_status.annotations),
        (web.config.labels.clone(), web.config.annotations.clone())
    );
    assert_eq!(pod_status.metadata, web.config.metadata);

    let mut expected: Vec<(String, ContainerState)> = vec![
        (created.clone(), ContainerState::ContainerCreated),
        (exited.clone(), ContainerState::ContainerExited),
        (sleeping.clone(), ContainerState::ContainerExited),
        (spinning.clone(), ContainerState::ContainerExited),
        (done.clone(), ContainerState::ContainerExited),
    ];
    expected.sort();
    assert_eq!(container_states(&daemon).await, expected);

    let after = statuses(&daemon, &all).await;
    for id in all {
        let (was, is) = (&before[id], &after[id]);
        assert_eq!(
            (
                &is.metadata,
                &is.labels,
                &is.annotations,
                &is.image,
                &is.image_ref,
                &is.image_id,
                &is.log_path,
                is.created_at
            ),
            (
                &was.metadata,
                &was.labels,
                &was.annotations,
                &was.image,
                &was.image_ref,
                &was.image_id,
                &was.log_path,
                was.created_at
            ),
            "container {id} came back changed"
        );
        assert_eq!(is.started_at, was.started_at, "{id}");
        let log = std::fs::read(&is.log_path).unwrap_or_default();
        assert!(log.starts_with(&logs_before[id]), "the log of {id} lost lines");
    }
    for id in [&exited, &done] {
        let (was, is) = (&before[id], &after[id]);
        assert_eq!((is.exit_code, &is.reason, is.finished_at), (was.exit_code, &was.reason, was.finished_at), "{id}");
    }
    assert_eq!(after[&exited].exit_code, 7);
    for id in [&sleeping, &spinning] {
        let is = &after[id];
        assert_eq!((is.exit_code, is.reason.as_str()), (255, "Error"), "{is:#?}");
        assert!(is.message.contains("restarted"), "{is:#?}");
        assert!(is.finished_at >= is.started_at && is.started_at > 0, "{is:#?}");
    }

    // The created container starts, runs and logs as any other.
    daemon
        .runtime()
        .start_container(wasmrun::api::StartContainerRequest { container_id: created.clone() })
        .await
        .expect("StartContainer of a recovered container");
    let status = wait_exited(&mut daemon.runtime(), &created).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    let log = std::fs::read_to_string(web.log_path(&created_config)).expect("its log");
    assert!(log.contains("stdout F hello from wasm"), "{log}");

    // Each recovered object stops and is removed; a second time is fine too.
    let mut rt = daemon.runtime();
    for id in all {
        for _ in 0..2 {
            rt.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 0 }).await.expect("stop");
            rt.remove_container(RemoveContainerRequest { container_id: id.clone() }).await.expect("remove");
        }
    }
    for pod in [&web, &batch, &stopped] {
        rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await.expect("stop pod");
        rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await.expect("remove pod");
    }
    assert_eq!(container_states(&daemon).await, Vec::new());
    assert_eq!(pod_states(&daemon).await, Vec::new());

    // What was removed stays removed across the next restart.
    let mut daemon = daemon;
    let dir = daemon.dir().to_path_buf();
    daemon.sigkill();
    drop(daemon);
    let daemon = Daemon::start_with(Some(dir), &[]).await;
    assert_eq!(container_states(&daemon).await, Vec::new());
    assert_eq!(pod_states(&daemon).await, Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_record_is_set_aside_and_the_daemon_starts() {
    let mut daemon = Daemon::start().await;
    let hello = pulled_fixture(&daemon, "hello", "restart-truncated").await;
    let pod = Pod::run(&daemon, "truncated").await;
    let kept = pod.create(&daemon, &container_config("kept", &hello.name, &[], &[], &[])).await;
    let config = container_config("c", &hello.name, &[], &[], &[]);
    let id = pod.create(&daemon, &config).await;
    let dir = daemon.dir().to_path_buf();
    daemon.sigkill();
    // The last record written, cut short, as a power loss may leave it.
    let journal = daemon.root().join("pods/journal");
    let bytes = std::fs::read(&journal).expect("the journal of records");
    let last = bytes[..bytes.len() - 1].iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
    assert!(String::from_utf8_lossy(&bytes[last..]).contains(&id), "the last record is not the last container's");
    std::fs::write(&journal, &bytes[..last + (bytes.len() - last) / 2]).expect("truncate the journal");
    drop(daemon);

    let daemon = Daemon::start_with(Some(dir), &[]).await;
    assert_serving(&daemon).await;
    assert_eq!(pod_states(&daemon).await, vec![(pod.id.clone(), PodSandboxState::SandboxReady)]);
    assert_eq!(container_states(&daemon).await, vec![(kept.clone(), ContainerState::ContainerCreated)]);
    let set_aside: Vec<_> = std::fs::read_dir(daemon.root().join("pods/set-aside"))
        .expect("the set-aside directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert!(set_aside[0].starts_with("journal-line-"), "{set_aside:?}");
    assert!(daemon.log().contains("set aside"), "no warning in the daemon's log");
    // Its name is free: kubelet can create the container again.
    pod.create(&daemon, &config).await;
}

/// Waits (bounded by WAIT_LIMIT) until the CRI log at `path` has a line ending in `text`.
async fn wait_for_line(path: &std::path::Path, text: &str) {
    let deadline = std::time::Instant::now() + WAIT_LIMIT;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.lines().any(|line| line.ends_with(text)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no line {text:?} in {}: {log}", path.display());
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
