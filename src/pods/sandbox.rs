//! A pod sandbox. A wasm pod needs no pause process: the sandbox is the
//! record of its config, its readiness and its network (a namespace of its
//! own set up by CNI, or none for a hostNetwork pod).
//!
//! A mixed pod's sandbox is the backing runtime's; wasmrun keeps a joined
//! sandbox under the same id, for the pod's wasm containers: its config, its
//! readiness, and the namespace they join ([`Joined`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::listing::KeptEntry;
use super::records::{Proto, SandboxRecord};
use crate::api;
use crate::network::{Joined, PodNetwork};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

pub struct Sandbox {
    pub id: String,
    /// Exactly as kubelet sent it: metadata, labels, annotations, log directory.
    pub config: api::PodSandboxConfig,
    pub runtime_handler: String,
    /// Unix time in nanoseconds.
    pub created_at: i64,
    ready: AtomicBool,
    /// Its namespace and CNI attachment, its name resolution.
    pub network: PodNetwork,
    /// Some for a mixed pod: the backing runtime's sandbox, whose network
    /// its wasm containers join. Such a pod is listed by the backing
    /// runtime, not here, and reserves no name here.
    pub joined: Option<Joined>,
    /// Held while the pod's record is written (see `Container::record_lock`);
    /// true once the record is deleted.
    pub(super) record_lock: Mutex<bool>,
    /// The pod's entry of a ListPodSandbox response.
    pub(super) list_entry: KeptEntry<SandboxState>,
}

impl Sandbox {
    /// A pod as run now (ready), or as recovered from its record.
    pub(super) fn new(
        id: String,
        config: api::PodSandboxConfig,
        runtime_handler: String,
        created_at: i64,
        ready: bool,
        network: PodNetwork,
        joined: Option<Joined>,
    ) -> Self {
        Self {
            id,
            config,
            runtime_handler,
            created_at,
            ready: AtomicBool::new(ready),
            network,
            joined,
            record_lock: Mutex::new(false),
            list_entry: KeptEntry::default(),
        }
    }

    /// What is written to disk of the pod now.
    pub(super) fn record(&self) -> SandboxRecord {
        SandboxRecord {
            version: super::records::VERSION,
            id: self.id.clone(),
            config: Proto(self.config.clone()),
            runtime_handler: self.runtime_handler.clone(),
            created_at: self.created_at,
            ready: self.state() == SandboxState::Ready,
            network: self.network.attachment.clone(),
            joined: self.joined.clone(),
        }
    }

    /// The name it reserves among live pods; none for a joined sandbox (the
    /// backing runtime reserves it).
    pub(super) fn reserved_name(&self) -> Option<String> {
        self.joined.is_none().then(|| reserved_name(self.metadata()))
    }

    pub fn state(&self) -> SandboxState {
        if self.ready.load(Ordering::Acquire) { SandboxState::Ready } else { SandboxState::NotReady }
    }

    pub(super) fn mark_not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }

    pub fn metadata(&self) -> &api::PodSandboxMetadata {
        // `Pods::run_pod` refuses a config without metadata.
        self.config.metadata.as_ref().expect("a sandbox always has metadata")
    }
}

/// The identity that must be unique among live sandboxes.
pub(super) fn reserved_name(metadata: &api::PodSandboxMetadata) -> String {
    format!("{}/{}/{}/{}", metadata.namespace, metadata.name, metadata.uid, metadata.attempt)
}
