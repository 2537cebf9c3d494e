//! Container lifecycle events, for kubelet's evented PLEG (GetContainerEvents).

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::{Stream, StreamExt};

use super::{Container, ContainerView, Sandbox};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// An event, with its pod and the states of the pod's containers as they
/// were when it happened (a DELETED event's list no longer has the deleted
/// container), as containerd sends them: a subscriber that reads the event
/// later still sees that moment.
#[derive(Clone)]
pub struct ContainerEvent {
    pub container_id: String,
    pub pod_id: String,
    pub kind: EventKind,
    /// Unix time in nanoseconds.
    pub at: i64,
    /// The pod, unless it is gone.
    pub pod: Option<Arc<Sandbox>>,
    /// The pod's containers, oldest first, each with its state then.
    pub containers: Vec<(Arc<Container>, ContainerView)>,
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

    /// Whether anyone listens now: an event nobody receives need not be made.
    pub fn has_subscribers(&self) -> bool {
        self.live.receiver_count() > 0
    }

    pub fn send(&self, event: ContainerEvent) {
        // No subscriber is fine: nobody is listening.
        let _ = self.live.send(event);
    }

    /// Keeps the exit of a container recovered at start, for every subscriber.
    pub fn recovered(&self, event: ContainerEvent) {
        self.recovered.lock().unwrap().push(event);
    }

    /// Forgets a recovered exit once its container is removed.
    pub fn forget(&self, container_id: &str) {
        self.recovered.lock().unwrap().retain(|event| event.container_id != container_id);
    }

    /// The recovered exits (as `refresh` brings them up to date), then every
    /// event from now on. A subscriber that falls more than [`BACKLOG`]
    /// events behind misses some, with a warning.
    pub fn subscribe(
        &self,
        refresh: impl Fn(ContainerEvent) -> ContainerEvent,
    ) -> impl Stream<Item = ContainerEvent> + Send + 'static {
        // Subscribed before the recovered exits are read: none is missed between.
        let live = BroadcastStream::new(self.live.subscribe()).filter_map(|event| match event {
            Ok(event) => Some(event),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                tracing::warn!(missed, "a GetContainerEvents subscriber fell behind and missed events");
                None
            }
        });
        let recovered: Vec<_> = self.recovered.lock().unwrap().iter().cloned().map(refresh).collect();
        tokio_stream::iter(recovered).chain(live)
    }
}
