//! GetContainerEvents: wasmrun's own container events, as they happen.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::{Parts, containers, sandboxes};
use crate::api;
use crate::pods::{ContainerEvent, ContainerFilter, EventKind};

/// The stream of GetContainerEvents; it ends only when the client goes away.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<api::ContainerEventResponse, Status>> + Send>>;

/// Events of every wasm container from now on; a subscriber that falls
/// behind misses events (with a warning) and goes on.
pub(super) async fn get_container_events(
    parts: &Parts,
    _request: api::GetEventsRequest,
) -> Result<EventStream, Status> {
    let owned = parts.clone();
    let events = parts.pods.subscribe().map(move |event| Ok(response(&owned, event)));
    Ok(Box::pin(events))
}

/// The event as kubelet wants it: with its pod's status and its containers'.
fn response(parts: &Parts, event: ContainerEvent) -> api::ContainerEventResponse {
    let kind = match event.kind {
        EventKind::Created => api::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => api::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => api::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => api::ContainerEventType::ContainerDeletedEvent,
    };
    let pod = parts.pods.pod(&event.pod_id).ok();
    let containers = parts
        .pods
        .containers(&ContainerFilter { pod_id: Some(event.pod_id.clone()), ..Default::default() })
        .iter()
        .map(|container| containers::status_of(container, &container.view()))
        .collect();
    api::ContainerEventResponse {
        container_id: event.container_id,
        container_event_type: kind as i32,
        created_at: event.at,
        pod_sandbox_status: pod.map(|pod| sandboxes::status(&pod)),
        containers_statuses: containers,
    }
}
