//! The wasm side's CRI façade: requests in, calls on `pods` and `images`,
//! answers out. It keeps no state of its own and knows nothing of the backing
//! runtime: [`crate::front`] sends it the calls that are wasmrun's and merges
//! its answers with the backing runtime's. Alone, it answers as a wasm-only
//! runtime does (NotFound for an id it does not know, FailedPrecondition for
//! an image that is not wasm).
//!
//! [`Facade`] implements both CRI services; each RPC family has its own file:
//!
//! | RPCs | file |
//! |---|---|
//! | Version, Status, RuntimeConfig, UpdateRuntimeConfig | `runtime.rs` (also the `RuntimeService` impl) |
//! | RunPodSandbox … ListPodSandbox | `sandboxes.rs` |
//! | CreateContainer … ReopenContainerLog, UpdateContainerResources | `containers.rs` |
//! | ContainerStats … ListPodSandboxStats | `stats.rs` |
//! | GetContainerEvents | `events.rs` |
//! | ExecSync, Exec, Attach, PortForward | `exec.rs` (the streaming server: `crate::streaming`) |
//! | Checkpoint, metrics | `unsupported.rs` |
//! | PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo | `images.rs` (the `ImageService` impl) |
//!
//! Errors become gRPC statuses in one place, `status.rs`.

mod containers;
mod events;
mod exec;
mod images;
mod runtime;
mod sandboxes;
mod stats;
mod status;
mod unsupported;
pub mod wire;

use std::sync::Arc;

pub use events::EventStream;

use crate::config::Config;
use crate::images::Images;
use crate::pods::Pods;

/// The parts the façade calls into; built once by the server.
#[derive(Clone)]
pub struct Parts {
    pub config: Arc<Config>,
    pub pods: Arc<Pods>,
    pub images: Arc<Images>,
    /// Whether pods can get a network (Status's `NetworkReady`).
    pub network: Arc<crate::network::Network>,
    /// The URLs of Exec and PortForward.
    pub streaming: Arc<crate::streaming::Streaming>,
}

/// The wasm side's `RuntimeService` and `ImageService`: wasmrun's own pods,
/// containers and images, nothing else.
#[derive(Clone)]
pub struct Facade {
    parts: Parts,
}

impl Facade {
    pub fn new(parts: Parts) -> Self {
        Self { parts }
    }

    /// The parts it calls into.
    pub fn parts(&self) -> &Parts {
        &self.parts
    }
}

/// Serialises verbose info for crictl's `inspect*`; a failure is shown, not hidden.
fn verbose_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"cannot encode: {e}\"}}"))
}
