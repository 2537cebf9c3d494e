//! GetContainerEvents: wasmrun's own container events, merged with the
//! backing runtime's stream when there is one.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::{Parts, containers, sandboxes};
use crate::api;
use crate::pods::{ContainerEvent, ContainerFilter, EventKind};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<api::ContainerEventResponse, Status>> + Send>>;

pub(super) async fn get_container_events(parts: &Parts, request: api::GetEventsRequest) -> Result<EventStream, Status> {
    let owned = parts.clone();
    let local = parts.pods.subscribe().map(move |event| Ok(response(&owned, event)));
    let Some(backing) = &parts.backing else {
        return Ok(Box::pin(local));
    };
    match backing.runtime().get_container_events(request).await {
        Ok(theirs) => {
            let endpoint = backing.endpoint.clone();
            // The backing stream ending (containerd restarting) must not end ours.
            let theirs = theirs.into_inner().filter_map(move |event| match event {
                Ok(event) => Some(Ok(event)),
                Err(status) => {
                    tracing::warn!(%endpoint, error = %status.message(), "the backing runtime's event stream failed");
                    None
                }
            });
            Ok(Box::pin(local.merge(theirs)))
        }
        Err(status) => {
            tracing::warn!(endpoint = %backing.endpoint, error = %status.message(), "no events from the backing runtime");
            Ok(Box::pin(local))
        }
    }
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
