//! CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ListContainers, ContainerStatus, UpdateContainerResources, ReopenContainerLog.

use std::collections::HashMap;

use tonic::Status;

use super::{Parts, verbose_json, wire};
use crate::api;
use crate::pods::{Container, ContainerFilter, ContainerState, ContainerView};

pub(super) async fn create_container(
    parts: &Parts,
    request: api::CreateContainerRequest,
) -> Result<api::CreateContainerResponse, Status> {
    let config = request.config.ok_or_else(|| Status::invalid_argument("CreateContainer: config is required"))?;
    let container = parts.pods.create_container(&request.pod_sandbox_id, config).await?;
    Ok(api::CreateContainerResponse { container_id: container.id.clone() })
}

pub(super) async fn start_container(
    parts: &Parts,
    request: api::StartContainerRequest,
) -> Result<api::StartContainerResponse, Status> {
    parts.pods.start_container(&request.container_id).await?;
    Ok(api::StartContainerResponse {})
}

pub(super) async fn stop_container(
    parts: &Parts,
    request: api::StopContainerRequest,
) -> Result<api::StopContainerResponse, Status> {
    // `timeout` is the grace period in seconds (kubelet's terminationGracePeriodSeconds); below 0 is none.
    let grace = std::time::Duration::from_secs(request.timeout.max(0) as u64);
    parts.pods.stop_container(&request.container_id, grace).await?;
    Ok(api::StopContainerResponse {})
}

pub(super) async fn remove_container(
    parts: &Parts,
    request: api::RemoveContainerRequest,
) -> Result<api::RemoveContainerResponse, Status> {
    parts.pods.remove_container(&request.container_id).await?;
    Ok(api::RemoveContainerResponse {})
}

pub(super) async fn list_containers(
    parts: &Parts,
    request: api::ListContainersRequest,
) -> Result<api::ListContainersResponse, Status> {
    let filter = request.filter.map(container_filter).unwrap_or_default();
    let entries = parts
        .pods
        .encoded_container_list(&filter, |container, state| wire::encode_entry(&list_entry_of(container, state)))
        .await;
    Ok(wire::ListContainersResponse::from_encoded(entries))
}

fn list_entry_of(container: &Container, current: ContainerState) -> api::Container {
    api::Container {
        id: container.id.clone(),
        pod_sandbox_id: container.pod_id.clone(),
        metadata: container.config.metadata.clone(),
        image: Some(image_spec(container)),
        image_ref: image_ref(container),
        state: state(current) as i32,
        created_at: container.created_at,
        labels: container.config.labels.clone(),
        annotations: container.config.annotations.clone(),
        image_id: container.image.id.clone(),
    }
}

pub(super) async fn container_status(
    parts: &Parts,
    request: api::ContainerStatusRequest,
) -> Result<api::ContainerStatusResponse, Status> {
    let container = parts.pods.container(&request.container_id)?;
    let view = container.view();
    let mut info = HashMap::new();
    if request.verbose {
        info.insert("info".to_owned(), verbose_json(&verbose_info(&container, &view)));
    }
    Ok(api::ContainerStatusResponse { status: Some(status_of(&container, &view)), info })
}

/// A container's CRI status, from one snapshot of its state.
pub(super) fn status_of(container: &Container, view: &ContainerView) -> api::ContainerStatus {
    let exit = view.exit.as_ref();
    api::ContainerStatus {
        id: container.id.clone(),
        metadata: container.config.metadata.clone(),
        state: state(view.state) as i32,
        created_at: container.created_at,
        started_at: view.started_at,
        finished_at: exit.map_or(0, |exit| exit.finished_at),
        exit_code: exit.map_or(0, |exit| exit.code),
        image: Some(image_spec(container)),
        image_ref: image_ref(container),
        reason: exit.map(|exit| exit.reason.as_str().to_owned()).unwrap_or_default(),
        message: exit.map(|exit| exit.message.clone()).unwrap_or_default(),
        labels: container.config.labels.clone(),
        annotations: container.config.annotations.clone(),
        mounts: container.config.mounts.clone(),
        log_path: container.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        resources: view.resources.clone().map(|linux| api::ContainerResources { linux: Some(linux), windows: None }),
        image_id: container.image.id.clone(),
        user: None,
    }
}

pub(super) async fn update_container_resources(
    parts: &Parts,
    request: api::UpdateContainerResourcesRequest,
) -> Result<api::UpdateContainerResourcesResponse, Status> {
    let container = parts.pods.container(&request.container_id)?;
    let linux = request
        .linux
        .ok_or_else(|| Status::invalid_argument("UpdateContainerResources: linux resources are required"))?;
    parts.pods.update_container_resources(&container.id, linux).await?;
    Ok(api::UpdateContainerResourcesResponse {})
}

pub(super) async fn reopen_container_log(
    parts: &Parts,
    request: api::ReopenContainerLogRequest,
) -> Result<api::ReopenContainerLogResponse, Status> {
    parts.pods.container(&request.container_id)?.reopen_log().await?;
    Ok(api::ReopenContainerLogResponse {})
}

fn container_filter(filter: api::ContainerFilter) -> ContainerFilter {
    ContainerFilter {
        id: Some(filter.id).filter(|id| !id.is_empty()),
        pod_id: Some(filter.pod_sandbox_id).filter(|id| !id.is_empty()),
        state: filter.state.map(|value| match api::ContainerState::try_from(value.state) {
            Ok(api::ContainerState::ContainerCreated) => ContainerState::Created,
            Ok(api::ContainerState::ContainerRunning) => ContainerState::Running,
            // No container of ours is ever in an unknown state; a filter for it matches none.
            Ok(api::ContainerState::ContainerUnknown) => ContainerState::Unknown,
            _ => ContainerState::Exited,
        }),
        labels: filter.label_selector,
    }
}

fn state(state: ContainerState) -> api::ContainerState {
    match state {
        ContainerState::Created => api::ContainerState::ContainerCreated,
        ContainerState::Running => api::ContainerState::ContainerRunning,
        ContainerState::Exited => api::ContainerState::ContainerExited,
        ContainerState::Unknown => api::ContainerState::ContainerUnknown,
    }
}

/// The image as kubelet shows it: its first tag, as containerd reports it,
/// since kubelet creates containers by image id.
fn image_spec(container: &Container) -> api::ImageSpec {
    let requested = container.config.image.clone().unwrap_or_default();
    api::ImageSpec {
        image: container.image.repo_tags.first().cloned().unwrap_or(requested.image),
        annotations: requested.annotations,
        user_specified_image: requested.user_specified_image,
        ..Default::default()
    }
}

/// The digest reference kubelet shows as the container's image ID.
fn image_ref(container: &Container) -> String {
    container.image.repo_digests.first().cloned().unwrap_or_else(|| container.image.id.clone())
}

fn verbose_info(container: &Container, view: &ContainerView) -> serde_json::Value {
    serde_json::json!({
        "sandbox_id": container.pod_id,
        "runtime": "wasmtime",
        "module_digest": container.image.module_digest,
        "module_source": container.module_source,
        "argv": container.process.argv,
        "env": container.process.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "working_dir": container.process.working_dir,
        "root": container.root.as_ref().map(|root| serde_json::json!({
            "host_path": root.host_path, "readonly": root.readonly,
        })),
        "mounts": container.mounts.iter().map(|m| serde_json::json!({
            "host_path": m.host_path, "guest_path": m.guest_path, "readonly": m.readonly,
        })).collect::<Vec<_>>(),
        "usage": view.usage,
        // Execs under way (ExecSync, Exec): each an instance of its own.
        "running_execs": container.running_execs(),
    })
}
