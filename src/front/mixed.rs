//! Mixed pods (`compat-smart`, `wasm-smart`; see `route.rs`): the backing
//! runtime's sandbox with wasm containers of wasmrun's in it. The sandbox
//! (pause process, network namespace, CNI) is made, listed and reported by
//! the backing runtime; the wasm side joins it ([`Pods::join_pod`]) and runs
//! the pod's wasm containers in its namespace. This file is what the front
//! does for the pod-level calls of such a pod; its containers are routed by
//! id like any other, and CreateContainer by image (`Rules::new_container`).
//!
//! | RPC | what happens |
//! |---|---|
//! | RunPodSandbox | forwarded (a wasm handler named becomes the backing runtime's default); its namespace read from the backing runtime's verbose status; the wasm side joins it. A failed join stops and removes the backing sandbox |
//! | CreateContainer of a wasm image in a backing sandbox the wasm side does not know, whose `sandbox_config` is mixed | the sandbox joined first ([`join_late`]) |
//! | StopPodSandbox, RemovePodSandbox | the wasm side's containers stopped (removed, and the joined sandbox forgotten) first, then forwarded |
//! | PodSandboxStats (and each mixed pod's entry of ListPodSandboxStats) | the backing runtime's, with the wasm containers' CPU and memory added and their stats appended |
//! | PodSandboxStatus, PortForward | forwarded: the sandbox and its namespace are the backing runtime's |
//!
//! [`Pods::join_pod`]: crate::pods::Pods::join_pod

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api;
use crate::api::runtime_service_server::RuntimeService;
use crate::backing::{self, Backing};
use crate::cri::Facade;
use crate::network::{self, Joined};
use crate::pods::Pods;

type Reply<T> = Result<Response<T>, Status>;

/// RunPodSandbox of a mixed pod: the sandbox is made by the backing runtime
/// and joined by the wasm side. It runs as a task of its own, so that a
/// client giving up (kubelet's timeout) cannot leave a backing sandbox that
/// the wasm side never joined. `wasm_handlers` are the handler names the
/// backing runtime does not know.
pub async fn run_pod_sandbox(
    pods: Arc<Pods>,
    backing: &Backing,
    wasm_handlers: &[String],
    request: Request<api::RunPodSandboxRequest>,
) -> Reply<api::RunPodSandboxResponse> {
    let mut forwarded = request.into_inner();
    let config =
        forwarded.config.clone().ok_or_else(|| Status::invalid_argument("RunPodSandbox: config is required"))?;
    let handler = forwarded.runtime_handler.clone();
    // The pod's RuntimeClass may name wasmrun's handler: its sandbox is the
    // backing runtime's default kind.
    if wasm_handlers.contains(&handler) {
        forwarded.runtime_handler.clear();
    }
    let backing = backing.clone();
    tokio::spawn(async move {
        let id = backing
            .runtime()
            .run_pod_sandbox(forwarded)
            .await
            .map_err(|s| backing.status(s))?
            .into_inner()
            .pod_sandbox_id;
        match join(&pods, &backing, &id, config, &handler).await {
            Ok(()) => Ok(Response::new(api::RunPodSandboxResponse { pod_sandbox_id: id })),
            Err(status) => {
                undo(&backing, &id).await;
                Err(status)
            }
        }
    })
    .await
    .map_err(|e| Status::internal(format!("running a mixed pod's sandbox: {e}")))?
}

/// The wasm side joins the backing runtime's new sandbox `id`. Errors:
/// the backing runtime's status, FailedPrecondition when its namespace
/// cannot be found or opened, the wasm side's.
async fn join(
    pods: &Pods,
    backing: &Backing,
    id: &str,
    config: api::PodSandboxConfig,
    handler: &str,
) -> Result<(), Status> {
    let request = api::PodSandboxStatusRequest { pod_sandbox_id: id.to_owned(), verbose: true };
    let status = backing.runtime().pod_sandbox_status(request).await.map_err(|s| backing.status(s))?.into_inner();
    let not_found = |why: &str| {
        Status::failed_precondition(format!(
            "cannot find the network namespace of the backing runtime's pod sandbox {id}: {why}"
        ))
    };
    let netns = backing::sandbox_netns(&status.info).map_err(|why| not_found(&why))?;
    if netns.is_none() && network::has_own_namespace(&config) {
        return Err(not_found(
            "the pod asks for a network of its own, and the sandbox's spec has no network namespace",
        ));
    }
    let network = status.status.as_ref().and_then(|status| status.network.clone()).unwrap_or_default();
    let ips = std::iter::once(network.ip)
        .chain(network.additional_ips.into_iter().map(|ip| ip.ip))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let (id, created_at) = match status.status {
        // The full id, also when `id` is a prefix of it (a late join).
        Some(status) if !status.id.is_empty() => (status.id, status.created_at),
        _ => (id.to_owned(), crate::clock::now_nanos()),
    };
    pods.join_pod(&id, config, handler, Joined { netns, ips }, created_at).await?;
    Ok(())
}

/// Joins, at its first wasm container's CreateContainer, a mixed pod's
/// sandbox the wasm side does not know: one made while wasmrun was not in
/// front of containerd, or whose join was lost (wasmrun stopped between
/// containerd's RunPodSandbox and the record, or a failed join whose sandbox
/// could not be removed). The pod's config is the `sandbox_config` kubelet
/// sends with every CreateContainer. Errors: as at RunPodSandbox, and
/// InvalidArgument without a `sandbox_config`.
pub async fn join_late(pods: &Pods, backing: &Backing, request: &api::CreateContainerRequest) -> Result<(), Status> {
    let config = request.sandbox_config.clone().ok_or_else(|| {
        Status::invalid_argument("CreateContainer: sandbox_config is required to join a mixed pod's sandbox")
    })?;
    tracing::info!(pod = %request.pod_sandbox_id, "joining a mixed pod's sandbox at its first wasm container");
    match join(pods, backing, &request.pod_sandbox_id, config, "").await {
        // Another CreateContainer of the pod joined it meanwhile.
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
        joined => joined,
    }
}

/// Stops and removes the backing runtime's sandbox `id` that the wasm side
/// could not join; failures are logged (kubelet removes what it lists).
async fn undo(backing: &Backing, id: &str) {
    // Removed even when the stop failed: containerd's RemovePodSandbox stops it too.
    let stopped =
        backing.runtime().stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id: id.to_owned() }).await;
    let removed =
        backing.runtime().remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id: id.to_owned() }).await;
    if let Err(status) = &stopped {
        tracing::debug!(pod = %id, error = %status.message(), "stopping a sandbox that could not be joined failed; removing it");
    }
    if let Err(status) = removed {
        tracing::warn!(pod = %id, endpoint = %backing.endpoint, error = %status.message(), "cannot remove the backing runtime's sandbox of a mixed pod that could not be joined; its first wasm container will join it");
    }
}

/// StopPodSandbox of a mixed pod: its wasm containers first, then the
/// backing runtime's sandbox (and its containers, namespace and network).
pub async fn stop_pod_sandbox(
    wasm: &Facade,
    backing: &Backing,
    request: Request<api::StopPodSandboxRequest>,
) -> Reply<api::StopPodSandboxResponse> {
    let forwarded = request.get_ref().clone();
    wasm.stop_pod_sandbox(request).await?;
    backing.runtime().stop_pod_sandbox(forwarded).await.map_err(|s| backing.status(s))
}

/// RemovePodSandbox of a mixed pod: its wasm containers removed and the
/// joined sandbox forgotten first, then forwarded. A retry after a failed
/// forward finds the id the backing runtime's alone, and is forwarded.
pub async fn remove_pod_sandbox(
    wasm: &Facade,
    backing: &Backing,
    request: Request<api::RemovePodSandboxRequest>,
) -> Reply<api::RemovePodSandboxResponse> {
    let forwarded = request.get_ref().clone();
    wasm.remove_pod_sandbox(request).await?;
    backing.runtime().remove_pod_sandbox(forwarded).await.map_err(|s| backing.status(s))
}

/// PodSandboxStats of a mixed pod: the backing runtime's, with the wasm
/// side's added (see [`add_pod_stats`]). Errors: the backing runtime's,
/// then the wasm side's.
pub async fn pod_sandbox_stats(
    wasm: &Facade,
    backing: &Backing,
    request: Request<api::PodSandboxStatsRequest>,
) -> Reply<api::PodSandboxStatsResponse> {
    let forwarded = request.get_ref().clone();
    let mut client = backing.runtime();
    let (ours, theirs) = tokio::join!(wasm.pod_sandbox_stats(request), client.pod_sandbox_stats(forwarded));
    let mut theirs = theirs.map_err(|s| backing.status(s))?;
    let ours = ours?.into_inner();
    if let (Some(theirs), Some(ours)) = (theirs.get_mut().stats.as_mut(), ours.stats) {
        add_pod_stats(theirs, ours);
    }
    Ok(theirs)
}

/// Adds the stats of the backing runtime's mixed pods in `stats` (a merged
/// ListPodSandboxStats) their wasm containers' (see [`add_pod_stats`]). The
/// wasm side lists no joined sandbox itself: each is in `stats` at most once.
pub async fn add_joined_pod_stats(wasm: &Facade, stats: &mut [api::PodSandboxStats]) {
    for entry in stats {
        let Some(id) = entry.attributes.as_ref().map(|attributes| attributes.id.clone()) else {
            continue;
        };
        if !wasm.parts().pods.pod(&id).is_ok_and(|pod| pod.joined.is_some() && pod.id == id) {
            continue;
        }
        let request = Request::new(api::PodSandboxStatsRequest { pod_sandbox_id: id });
        if let Ok(ours) = wasm.pod_sandbox_stats(request).await
            && let Some(ours) = ours.into_inner().stats
        {
            add_pod_stats(entry, ours);
        }
    }
}

/// Adds the wasm side's stats of a mixed pod (`ours`: its wasm containers)
/// to the backing runtime's (`theirs`: the pause process and Linux
/// containers): cumulative CPU time and memory (working set, usage, RSS)
/// summed, the wasm containers' stats appended. `usage_nano_cores` stays
/// the backing runtime's: the wasm side reports no rate.
pub fn add_pod_stats(theirs: &mut api::PodSandboxStats, ours: api::PodSandboxStats) {
    let Some(ours) = ours.linux else {
        return;
    };
    let linux = theirs.linux.get_or_insert_with(Default::default);
    let add = |to: &mut Option<api::UInt64Value>, value: &Option<api::UInt64Value>| {
        if let Some(value) = value {
            to.get_or_insert_with(Default::default).value += value.value;
        }
    };
    if let Some(cpu) = &ours.cpu {
        let into = linux.cpu.get_or_insert_with(|| api::CpuUsage { timestamp: cpu.timestamp, ..Default::default() });
        add(&mut into.usage_core_nano_seconds, &cpu.usage_core_nano_seconds);
    }
    if let Some(memory) = &ours.memory {
        let into =
            linux.memory.get_or_insert_with(|| api::MemoryUsage { timestamp: memory.timestamp, ..Default::default() });
        add(&mut into.working_set_bytes, &memory.working_set_bytes);
        add(&mut into.usage_bytes, &memory.usage_bytes);
        add(&mut into.rss_bytes, &memory.rss_bytes);
    }
    linux.containers.extend(ours.containers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(value: u64) -> Option<api::UInt64Value> {
        Some(api::UInt64Value { value })
    }

    fn pod_stats(cpu: u64, memory: u64, containers: &[&str]) -> api::PodSandboxStats {
        api::PodSandboxStats {
            linux: Some(api::LinuxPodSandboxStats {
                cpu: Some(api::CpuUsage {
                    timestamp: 1,
                    usage_core_nano_seconds: value(cpu),
                    usage_nano_cores: value(5),
                }),
                memory: Some(api::MemoryUsage {
                    timestamp: 1,
                    working_set_bytes: value(memory),
                    usage_bytes: value(memory),
                    rss_bytes: value(memory),
                    ..Default::default()
                }),
                containers: containers
                    .iter()
                    .map(|id| api::ContainerStats {
                        attributes: Some(api::ContainerAttributes { id: id.to_string(), ..Default::default() }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_mixed_pods_stats_sum_both_sides() {
        let mut theirs = pod_stats(1_000, 4 << 20, &["sidecar"]);
        add_pod_stats(&mut theirs, pod_stats(250, 1 << 20, &["wasm"]));
        let linux = theirs.linux.unwrap();
        let cpu = linux.cpu.unwrap();
        assert_eq!(cpu.usage_core_nano_seconds, value(1_250));
        assert_eq!(cpu.usage_nano_cores, value(5));
        let memory = linux.memory.unwrap();
        for bytes in [memory.working_set_bytes, memory.usage_bytes, memory.rss_bytes] {
            assert_eq!(bytes, value(5 << 20));
        }
        let ids: Vec<_> = linux.containers.iter().map(|c| c.attributes.as_ref().unwrap().id.as_str()).collect();
        assert_eq!(ids, ["sidecar", "wasm"]);
    }

    #[test]
    fn stats_the_backing_runtime_left_out_are_ours() {
        let mut theirs = api::PodSandboxStats::default();
        add_pod_stats(&mut theirs, pod_stats(250, 1 << 20, &["wasm"]));
        let linux = theirs.linux.unwrap();
        assert_eq!(linux.cpu.unwrap().usage_core_nano_seconds, value(250));
        assert_eq!(linux.memory.unwrap().working_set_bytes, value(1 << 20));
    }
}
