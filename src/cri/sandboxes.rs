//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus, ListPodSandbox.

use std::collections::HashMap;

use tonic::Status;

use super::{Parts, verbose_json, wire};
use crate::api;
use crate::pods::{PodFilter, Sandbox, SandboxState};

pub(super) async fn run_pod_sandbox(
    parts: &Parts,
    request: api::RunPodSandboxRequest,
) -> Result<api::RunPodSandboxResponse, Status> {
    let config = request.config.ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is required"))?;
    let sandbox = parts.pods.run_pod(config, &request.runtime_handler).await?;
    Ok(api::RunPodSandboxResponse { pod_sandbox_id: sandbox.id.clone() })
}

pub(super) async fn stop_pod_sandbox(
    parts: &Parts,
    request: api::StopPodSandboxRequest,
) -> Result<api::StopPodSandboxResponse, Status> {
    parts.pods.stop_pod(&request.pod_sandbox_id).await?;
    Ok(api::StopPodSandboxResponse {})
}

pub(super) async fn remove_pod_sandbox(
    parts: &Parts,
    request: api::RemovePodSandboxRequest,
) -> Result<api::RemovePodSandboxResponse, Status> {
    parts.pods.remove_pod(&request.pod_sandbox_id).await?;
    Ok(api::RemovePodSandboxResponse {})
}

pub(super) async fn pod_sandbox_status(
    parts: &Parts,
    request: api::PodSandboxStatusRequest,
) -> Result<api::PodSandboxStatusResponse, Status> {
    let sandbox = parts.pods.pod(&request.pod_sandbox_id)?;
    let mut info = HashMap::new();
    if request.verbose {
        let containers: Vec<String> = parts
            .pods
            .containers(&crate::pods::ContainerFilter { pod_id: Some(sandbox.id.clone()), ..Default::default() })
            .iter()
            .map(|c| c.id.clone())
            .collect();
        let details = serde_json::json!({
            "runtime": "wasmrun",
            "runtime_handler": sandbox.runtime_handler,
            "network": match &sandbox.network.attachment {
                Some(attachment) => serde_json::json!({
                    "netns": attachment.netns,
                    "network_name": attachment.network.name,
                    "config_file": attachment.network.source,
                    "cni_result": attachment.result,
                }),
                None => serde_json::json!("host: the pod shares the node's network namespace (hostNetwork)"),
            },
            "log_directory": sandbox.config.log_directory,
            "containers": containers,
        });
        info.insert("info".to_owned(), verbose_json(&details));
    }
    Ok(api::PodSandboxStatusResponse { status: Some(status(&sandbox)), info, ..Default::default() })
}

pub(super) async fn list_pod_sandbox(
    parts: &Parts,
    request: api::ListPodSandboxRequest,
) -> Result<api::ListPodSandboxResponse, Status> {
    let filter = request.filter.map(pod_filter).unwrap_or_default();
    let entries =
        parts.pods.encoded_pod_list(&filter, |pod, state| wire::encode_entry(&list_entry_of(pod, state))).await;
    Ok(api::ListPodSandboxResponse::from_encoded(entries))
}

fn list_entry_of(pod: &Sandbox, current: SandboxState) -> api::PodSandbox {
    api::PodSandbox {
        id: pod.id.clone(),
        metadata: pod.config.metadata.clone(),
        state: state(current) as i32,
        created_at: pod.created_at,
        labels: pod.config.labels.clone(),
        annotations: pod.config.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    }
}

fn pod_filter(filter: api::PodSandboxFilter) -> PodFilter {
    PodFilter {
        id: Some(filter.id).filter(|id| !id.is_empty()),
        state: filter.state.map(|value| match api::PodSandboxState::try_from(value.state) {
            Ok(api::PodSandboxState::SandboxReady) => SandboxState::Ready,
            _ => SandboxState::NotReady,
        }),
        labels: filter.label_selector,
    }
}

fn state(current: SandboxState) -> api::PodSandboxState {
    match current {
        SandboxState::Ready => api::PodSandboxState::SandboxReady,
        SandboxState::NotReady => api::PodSandboxState::SandboxNotready,
    }
}

pub(super) fn status(sandbox: &Sandbox) -> api::PodSandboxStatus {
    let namespace_options = sandbox
        .config
        .linux
        .as_ref()
        .and_then(|linux| linux.security_context.as_ref())
        .and_then(|context| context.namespace_options.clone());
    api::PodSandboxStatus {
        id: sandbox.id.clone(),
        metadata: sandbox.config.metadata.clone(),
        state: state(sandbox.state()) as i32,
        created_at: sandbox.created_at,
        network: Some(network_status(sandbox)),
        linux: Some(api::LinuxPodSandboxStatus { namespaces: Some(api::Namespace { options: namespace_options }) }),
        labels: sandbox.config.labels.clone(),
        annotations: sandbox.config.annotations.clone(),
        runtime_handler: sandbox.runtime_handler.clone(),
    }
}

/// The pod's IPs from its CNI result, IPv4 first (as containerd selects
/// them), or for a joined sandbox those the backing runtime reported; an
/// empty ip tells kubelet the pod uses the host's network.
fn network_status(sandbox: &Sandbox) -> api::PodSandboxNetworkStatus {
    let ips = match (&sandbox.network.attachment, &sandbox.joined) {
        (Some(attachment), _) => attachment.ips(),
        (None, Some(joined)) => joined.ips.clone(),
        (None, None) => Vec::new(),
    };
    let mut ips = ips.into_iter();
    api::PodSandboxNetworkStatus {
        ip: ips.next().map(|ip| ip.to_string()).unwrap_or_default(),
        additional_ips: ips.map(|ip| api::PodIp { ip: ip.to_string() }).collect(),
    }
}
