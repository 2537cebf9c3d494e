//! The CRI client of the backing runtime (containerd), for everything that is
//! not wasm. The channel is lazy: it connects on first use and reconnects by
//! itself after the backing runtime restarts, so wasmrun starts and serves
//! wasm pods whether or not the backing runtime is up.
//!
//! Only the front (`crate::front`) calls it: the wasm side knows nothing of it.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Uri};

use crate::api::image_service_client::ImageServiceClient;
use crate::api::runtime_service_client::RuntimeServiceClient;

/// How long one forwarded call may take before it fails with Unavailable, so
/// a stuck backing runtime cannot hold a kubelet call forever.
const CALL_LIMIT: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct Backing {
    /// As configured, for messages: `unix:///run/containerd/containerd.sock`.
    pub endpoint: String,
    channel: Channel,
}

impl Backing {
    /// A client of the CRI socket `endpoint` (`unix:///path` or `/path`);
    /// nothing is connected yet.
    pub fn new(endpoint: &str, connect_timeout: Duration) -> anyhow::Result<Self> {
        let socket = PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
        if !socket.is_absolute() {
            anyhow::bail!("backing_endpoint {endpoint:?} must be unix:///absolute/path or /absolute/path");
        }
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(connect_timeout)
            .timeout(CALL_LIMIT)
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }));
        Ok(Self { endpoint: endpoint.to_owned(), channel })
    }

    /// The backing runtime's `RuntimeService`.
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
            .max_decoding_message_size(crate::server::MAX_MESSAGE)
            .max_encoding_message_size(crate::server::MAX_MESSAGE)
    }

    /// The backing runtime's `ImageService`.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
            .max_decoding_message_size(crate::server::MAX_MESSAGE)
            .max_encoding_message_size(crate::server::MAX_MESSAGE)
    }

    /// Says that an answer came from the backing runtime, keeping its code:
    /// kubelet must see containerd's NotFound as NotFound.
    pub fn status(&self, status: tonic::Status) -> tonic::Status {
        tonic::Status::new(status.code(), format!("backing runtime {}: {}", self.endpoint, status.message()))
    }
}
