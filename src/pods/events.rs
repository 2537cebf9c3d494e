//! Container lifecycle events, for kubelet's evented PLEG (GetContainerEvents).

use std::sync::Mutex;

use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub container_id: String,
    pub pod_id: String,
    pub kind: EventKind,
    /// Unix time in nanoseconds.
    pub at: i64,
}

/// How many events a slow subscriber may fall behind before it misses some
/// (kubelet then relists, as it does on any gap).
const BACKLOG: usize = 4096;

pub struct Events {
    live: broadcast::Sender<ContainerEvent>,
    /// The exits found at the daemon's start (containers that ran when it
    /// stopped): sent to every subscriber first, since nobody could be
    /// subscribed when they happened.
    recovered: Mutex<Vec<ContainerEvent>>,
}

impl Events {
    pub fn new() -> Self {
        Self { live: broadcast::channel(BACKLOG).0, recovered: Mutex::new(Vec::new()) }
    }

    pub fn send(&self, container_id: &str, pod_id: &str, kind: EventKind) {
        let event = ContainerEvent {
            container_id: container_id.to_owned(),
            pod_id: pod_id.to_owned(),
            kind,
            at: crate::durable::now_nanos(),
        };
        // No subscriber is fine: nobody is listening.
        let _ = self.live.send(event);
    }

    /// Keeps the exit of a container recovered at start, for every subscriber.
    pub fn recovered(&self, container_id: &str, pod_id: &str, at: i64) {
        let event = ContainerEvent {
            container_id: container_id.to_owned(),
            pod_id: pod_id.to_owned(),
            kind: EventKind::Stopped,
            at,
        };
        self.recovered.lock().unwrap().push(event);
    }

    /// Forgets a recovered exit once its container is removed.
    pub fn forget(&self, container_id: &str) {
        self.recovered.lock().unwrap().retain(|event| event.container_id != container_id);
    }

    /// The recovered exits, then every event from now on. A subscriber that
    /// falls more than [`BACKLOG`] events behind misses some, with a warning.
    pub fn subscribe(&self) -> impl Stream<Item = ContainerEvent> + Send + 'static {
        // Subscribed before the recovered exits are read: none is missed between.
        let live = BroadcastStream::new(self.live.subscribe()).filter_map(|event| match event {
            Ok(event) => Some(event),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                tracing::warn!(missed, "a GetContainerEvents subscriber fell behind and missed events");
                None
            }
        });
        let recovered = self.recovered.lock().unwrap().clone();
        tokio_stream::iter(recovered).chain(live)
    }
}
