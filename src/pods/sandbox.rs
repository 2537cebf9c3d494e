//! A pod sandbox. A wasm pod needs no pause process and no network namespace
//! of its own: the sandbox is the record of its config and its readiness.

use std::sync::atomic::{AtomicBool, Ordering};

use super::listing::KeptEntry;
use crate::api;

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
    /// The pod's entry of a ListPodSandbox response.
    pub(super) list_entry: KeptEntry<SandboxState>,
}

impl Sandbox {
    pub(super) fn new(id: String, config: api::PodSandboxConfig, runtime_handler: String) -> Self {
        Self {
            id,
            config,
            runtime_handler,
            created_at: crate::clock::now_nanos(),
            ready: AtomicBool::new(true),
            list_entry: KeptEntry::default(),
        }
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
