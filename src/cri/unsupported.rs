//! Calls a wasm guest cannot answer: there is no shell to exec, no terminal
//! to attach, no network namespace to forward into. Each says so clearly
//! (after checking the object exists), and never hangs.

use tonic::Status;

use super::Parts;
use crate::api;

fn no_processes(parts: &Parts, container_id: &str, what: &str) -> Status {
    match parts.pods.container(container_id) {
        Ok(container) => Status::failed_precondition(format!(
            "{what} is not possible: container {} runs a WebAssembly guest inside wasmrun; \
             it has no shell, processes or terminal",
            container.id
        )),
        Err(e) => e.into(),
    }
}

pub(super) async fn exec(parts: &Parts, request: api::ExecRequest) -> Result<api::ExecResponse, Status> {
    Err(no_processes(parts, &request.container_id, "exec"))
}

pub(super) async fn attach(parts: &Parts, request: api::AttachRequest) -> Result<api::AttachResponse, Status> {
    Err(no_processes(parts, &request.container_id, "attach"))
}

pub(super) async fn port_forward(
    parts: &Parts,
    request: api::PortForwardRequest,
) -> Result<api::PortForwardResponse, Status> {
    let sandbox = parts.pods.pod(&request.pod_sandbox_id)?;
    Err(Status::failed_precondition(format!(
        "port-forward is not possible: pod sandbox {} runs WebAssembly guests inside wasmrun, \
         which have no network namespace of their own",
        sandbox.id
    )))
}

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
