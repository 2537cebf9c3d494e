//! The CRI client of the backing runtime (containerd), for everything that is
//! not wasm. The channel is lazy: it connects on first use and reconnects by
//! itself after the backing runtime restarts, so wasmrun starts and serves
//! wasm pods whether or not the backing runtime is up.
//!
//! Only the front (`crate::front`) calls it: the wasm side knows nothing of it.

use std::collections::HashMap;
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

/// The network namespace of one of the backing runtime's pod sandboxes, from
/// the `info` map of its verbose PodSandboxStatus. containerd puts there, as
/// `info["info"]`, a JSON object whose `runtimeSpec` is the sandbox's OCI
/// runtime spec and `pid` its pause process (containerd's
/// `internal/cri/server/sandbox_status.go`, `SandboxInfo`):
///
/// - the spec's `linux.namespaces` entry of type `network` names the pinned
///   namespace in `path` (containerd's `/var/run/netns/cni-…`): that path;
/// - an entry without a path (a namespace runc made): `/proc/<pid>/ns/net`;
/// - no such entry: the sandbox uses the node's network (hostNetwork): None.
///
/// Errors (why, for a message): no `info` entry, JSON without a runtime
/// spec, or a namespace with neither path nor pid.
pub fn sandbox_netns(info: &HashMap<String, String>) -> Result<Option<PathBuf>, String> {
    let text = info.get("info").ok_or("its verbose status has no \"info\" entry")?;
    let info: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("its verbose status' \"info\" is not JSON: {e}"))?;
    let namespaces = info
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(|namespaces| namespaces.as_array())
        .ok_or("its verbose status has no runtimeSpec.linux.namespaces")?;
    let Some(network) = namespaces.iter().find(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("network")) else {
        return Ok(None);
    };
    match network.get("path").and_then(|path| path.as_str()).filter(|path| !path.is_empty()) {
        Some(path) => Ok(Some(PathBuf::from(path))),
        None => match info.get("pid").and_then(|pid| pid.as_u64()).filter(|pid| *pid > 0) {
            Some(pid) => Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/net")))),
            None => Err("its network namespace has no path and its pause process no pid".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(json: &str) -> HashMap<String, String> {
        HashMap::from([("info".to_owned(), json.to_owned())])
    }

    #[test]
    fn the_network_namespace_of_a_containerd_sandbox() {
        let pinned = r#"{"pid":42,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},
            {"type":"network","path":"/var/run/netns/cni-1234"}]}}}"#;
        assert_eq!(sandbox_netns(&info(pinned)), Ok(Some(PathBuf::from("/var/run/netns/cni-1234"))));
        let unpinned = r#"{"pid":42,"runtimeSpec":{"linux":{"namespaces":[{"type":"network"}]}}}"#;
        assert_eq!(sandbox_netns(&info(unpinned)), Ok(Some(PathBuf::from("/proc/42/ns/net"))));
        let host = r#"{"pid":42,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"}]}}}"#;
        assert_eq!(sandbox_netns(&info(host)), Ok(None));
    }

    #[test]
    fn a_status_without_what_is_needed_says_why() {
        assert!(sandbox_netns(&HashMap::new()).unwrap_err().contains("no \"info\""));
        assert!(sandbox_netns(&info("not json")).unwrap_err().contains("not JSON"));
        assert!(sandbox_netns(&info(r#"{"pid":1}"#)).unwrap_err().contains("runtimeSpec"));
        let no_pid = r#"{"runtimeSpec":{"linux":{"namespaces":[{"type":"network"}]}}}"#;
        assert!(sandbox_netns(&info(no_pid)).unwrap_err().contains("no pid"));
    }
}
