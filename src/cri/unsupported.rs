//! Calls wasmrun does not answer for its containers: checkpoints and CRI
//! metrics. Each says so clearly (after checking the
//! object exists), and never hangs.

use tonic::Status;

use super::Parts;
use crate::api;

pub(super) async fn checkpoint_container(
    parts: &Parts,
    request: api::CheckpointContainerRequest,
) -> Result<api::CheckpointContainerResponse, Status> {
    let container = parts.pods.container(&request.container_id)?;
    Err(Status::unimplemented(format!(
        "checkpointing WebAssembly containers is not supported (container {})",
        container.id
    )))
}

pub(super) async fn list_metric_descriptors(
    _parts: &Parts,
    _request: api::ListMetricDescriptorsRequest,
) -> Result<api::ListMetricDescriptorsResponse, Status> {
    Err(Status::unimplemented("wasmrun does not serve CRI metrics; use ContainerStats and PodSandboxStats"))
}

pub(super) async fn list_pod_sandbox_metrics(
    _parts: &Parts,
    _request: api::ListPodSandboxMetricsRequest,
) -> Result<api::ListPodSandboxMetricsResponse, Status> {
    Err(Status::unimplemented("wasmrun does not serve CRI metrics; use ContainerStats and PodSandboxStats"))
}
