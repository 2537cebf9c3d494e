//! GetContainerEvents: wasmrun's own container events, as they happen.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::{Parts, containers, sandboxes};
use crate::api;
use crate::pods::{ContainerEvent, EventKind};

/// The stream of GetContainerEvents; it ends only when the client goes away.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<api::ContainerEventResponse, Status>> + Send>>;

/// The exits a restart caused, then events of every wasm container from now
/// on; a subscriber that falls behind misses events (with a warning) and goes on.
pub(super) async fn get_container_events(
    parts: &Parts,
    _request: api::GetEventsRequest,
) -> Result<EventStream, Status> {
    let events = parts.pods.subscribe().map(|event| Ok(response(event)));
    Ok(Box::pin(events))
}

/// The event as kubelet wants it: with its pod's status and its containers',
/// as they were when it happened.
fn response(event: ContainerEvent) -> api::ContainerEventResponse {
    let kind = match event.kind {
        EventKind::Created => api::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => api::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => api::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => api::ContainerEventType::ContainerDeletedEvent,
    };
    api::ContainerEventResponse {
        container_id: event.container_id,
        container_event_type: kind as i32,
        created_at: event.at,
        pod_sandbox_status: event.pod.map(|pod| sandboxes::status(&pod)),
        containers_statuses: event
            .containers
            .iter()
            .map(|(container, view)| containers::status_of(container, view))
            .collect(),
    }
}
