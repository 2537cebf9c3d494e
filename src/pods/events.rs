//! Container lifecycle events, for kubelet's evented PLEG (GetContainerEvents).

use tokio::sync::broadcast;

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

#[derive(Clone)]
pub struct Events(broadcast::Sender<ContainerEvent>);

impl Events {
    pub fn new() -> Self {
        Self(broadcast::channel(BACKLOG).0)
    }

    pub fn send(&self, container_id: &str, pod_id: &str, kind: EventKind) {
        let event = ContainerEvent {
            container_id: container_id.to_owned(),
            pod_id: pod_id.to_owned(),
            kind,
            at: crate::clock::now_nanos(),
        };
        // No subscriber is fine: nobody is listening.
        let _ = self.0.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEvent> {
        self.0.subscribe()
    }
}
