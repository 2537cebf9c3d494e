//! GetContainerEvents: the container lifecycle as kubelet's evented PLEG sees it.

use std::time::Duration;

use wasmrun::api::{ContainerEventType, ContainerState, GetEventsRequest, RemoveContainerRequest};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_lifecycle_streams_created_started_stopped_deleted() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "hello", "events-hello").await;
    let mut stream =
        daemon.runtime().get_container_events(GetEventsRequest {}).await.expect("GetContainerEvents").into_inner();

    let pod = Pod::run(&daemon, "events").await;
    let config = container_config("hello", &image.name, &[], &[], &[]);
    let (id, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    daemon.runtime().remove_container(RemoveContainerRequest { container_id: id.clone() }).await.expect("remove");

    let mut seen = Vec::new();
    while seen.last() != Some(&ContainerEventType::ContainerDeletedEvent) {
        let event = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no event within 60 s; seen {seen:?}"))
            .expect("event stream")
            .expect("the event stream ended");
        assert_eq!(event.container_id, id, "{event:#?}");
        assert!(event.created_at > 0);
        let pod_status = event.pod_sandbox_status.as_ref().expect("the event carries its pod's status");
        assert_eq!(pod_status.id, pod.id);
        let kind = event.container_event_type();
        if kind == ContainerEventType::ContainerStoppedEvent {
            let ours = event.containers_statuses.iter().find(|c| c.id == id).expect("the container's status");
            assert_eq!(ours.state(), ContainerState::ContainerExited, "{ours:#?}");
            assert_eq!(ours.exit_code, 0);
        }
        if kind == ContainerEventType::ContainerDeletedEvent {
            assert!(event.containers_statuses.iter().all(|c| c.id != id), "a deleted container is still listed");
        }
        seen.push(kind);
    }
    assert_eq!(
        seen,
        [
            ContainerEventType::ContainerCreatedEvent,
            ContainerEventType::ContainerStartedEvent,
            ContainerEventType::ContainerStoppedEvent,
            ContainerEventType::ContainerDeletedEvent,
        ]
    );
}
