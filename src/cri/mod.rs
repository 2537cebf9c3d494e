//! The gRPC façade: CRI requests in, calls on `pods` and `images`, CRI answers out.
//! It keeps no state of its own. Each RPC family has its own file:
//!
//! | RPCs | file |
//! |---|---|
//! | Version, Status, RuntimeConfig, UpdateRuntimeConfig | `runtime.rs` |
//! | RunPodSandbox … ListPodSandbox | `sandboxes.rs` |
//! | CreateContainer … ReopenContainerLog, UpdateContainerResources | `containers.rs` |
//! | ContainerStats … ListPodSandboxStats | `stats.rs` |
//! | GetContainerEvents | `events.rs` |
//! | Exec, ExecSync, Attach, PortForward, Checkpoint, metrics | `unsupported.rs` |
//! | PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo | `images.rs` |

mod containers;
mod events;
mod images;
mod runtime;
mod sandboxes;
mod stats;
mod unsupported;
pub mod wire;

use std::sync::Arc;

pub use images::ImageHandler;
pub use runtime::RuntimeHandler;

use crate::backing::Backing;
use crate::config::Config;
use crate::error::Error;
use crate::images::Images;
use crate::pods::Pods;
use crate::route::Router;

/// How long a merged list waits for the backing runtime's part: a slow
/// backing runtime must not slow the listing of wasm objects much.
const BACKING_LIST_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The parts the façade calls into; built once by the server.
#[derive(Clone)]
pub struct Parts {
    pub config: Arc<Config>,
    pub pods: Arc<Pods>,
    pub images: Arc<Images>,
    pub router: Router,
    /// The runtime for everything that is not wasm, when configured.
    pub backing: Option<Backing>,
}

impl Parts {
    /// The backing runtime, or the error for a call only it could answer.
    fn backing_for(&self, what: &str) -> Result<&Backing, tonic::Status> {
        self.backing.as_ref().ok_or_else(|| {
            tonic::Status::failed_precondition(format!(
                "{what}: this is not a wasm object, and no backing runtime is configured (backing_endpoint)"
            ))
        })
    }

    /// What the backing runtime lists, or nothing (with a warning) when it
    /// cannot answer: a backing runtime that is down must not stop wasm calls.
    async fn backing_list<T, F, Fut>(&self, what: &str, call: F) -> Vec<T>
    where
        F: FnOnce(Backing) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, tonic::Status>>,
    {
        let Some(backing) = self.backing.clone() else {
            return Vec::new();
        };
        let endpoint = backing.endpoint.clone();
        let answer = tokio::time::timeout(BACKING_LIST_LIMIT, call(backing))
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")));
        match answer {
            Ok(items) => items,
            Err(status) => {
                tracing::warn!(%endpoint, code = ?status.code(), error = %status.message(), "{what}: the backing runtime did not answer; listing wasm objects only");
                Vec::new()
            }
        }
    }
}

/// The one place where errors become gRPC statuses.
impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        // Nobody to forward to: the error of the sources, with its own kind.
        let error = match error {
            Error::Unfetchable(error) => *error,
            error => error,
        };
        let message = capped(error.to_string());
        match error {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::NotFound(_) => tonic::Status::not_found(message),
            Error::AlreadyExists(_) => tonic::Status::already_exists(message),
            Error::FailedPrecondition(_) | Error::NotWasm(_) => tonic::Status::failed_precondition(message),
            Error::Unauthenticated(_) => tonic::Status::unauthenticated(message),
            Error::Unavailable(_) => tonic::Status::unavailable(message),
            Error::ResourceExhausted(_) => tonic::Status::resource_exhausted(message),
            Error::DataLoss(_) => tonic::Status::data_loss(message),
            // Unwrapped above; one level is all `Puller::fetch` makes.
            Error::Unfetchable(_) => tonic::Status::unavailable(message),
            Error::Internal(_) => {
                tracing::error!(error = %message, "internal error");
                tonic::Status::internal(message)
            }
        }
    }
}

/// The longest status message sent, in bytes. It travels percent-encoded in
/// the `grpc-message` header, and clients refuse a header list over 8–16 KiB
/// (grpc-go's and hyper's defaults); parts of requests are cut where they are
/// echoed ([`crate::error::quoted`]), and this bounds what is left.
pub const MAX_STATUS_MESSAGE: usize = 2048;

/// `message` cut to [`MAX_STATUS_MESSAGE`] bytes at a character boundary.
fn capped(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE {
        let mut cut = MAX_STATUS_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("… (cut)");
    }
    message
}

/// Serialises verbose info for crictl's `inspect*`; a failure is shown, not hidden.
fn verbose_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"cannot encode: {e}\"}}"))
}
