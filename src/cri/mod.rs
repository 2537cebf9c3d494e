//! The gRPC façade: CRI requests in, calls on `pods` and `images`, CRI answers out.
//! It keeps no state of its own. Each RPC family has its own file:
//!
//! | RPCs | file |
//! |---|---|
//! | Version, Status, RuntimeConfig, UpdateRuntimeConfig | `runtime.rs` |
//! | RunPodSandbox … ListPodSandbox | `sandboxes.rs` |
//! | CreateContainer … ReopenContainerLog, UpdateContainerResources | `containers.rs` |
//! | ContainerStats … ListPodSandboxStats | `stats.rs` |
//! | Exec, ExecSync, Attach, PortForward, Checkpoint, events, metrics | `unsupported.rs` |
//! | PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo | `images.rs` |

mod containers;
mod images;
mod runtime;
mod sandboxes;
mod stats;
mod unsupported;

use std::sync::Arc;

pub use images::ImageHandler;
pub use runtime::RuntimeHandler;

use crate::config::Config;
use crate::error::Error;
use crate::images::Images;
use crate::pods::Pods;

/// The parts the façade calls into; built once by the server.
#[derive(Clone)]
pub struct Parts {
    pub config: Arc<Config>,
    pub pods: Arc<Pods>,
    pub images: Arc<Images>,
}

/// The one place where errors become gRPC statuses.
impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::AlreadyExists(_) => tonic::Status::already_exists(message),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(message),
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            Error::Unavailable(_) => tonic::Status::unavailable(message),
            Error::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            Error::DataLoss(_) => tonic::Status::data_loss(message),
            Error::Internal(_) => {
                tracing::error!(error = %message, "internal error");
                tonic::Status::internal(message)
            }
        }
    }
}

/// Serialises verbose info for crictl's `inspect*`; a failure is shown, not hidden.
fn verbose_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"cannot encode: {e}\"}}"))
}
