//! ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats.
//!
//! Guests have no cgroup: CPU is the time spent running each guest, measured
//! per poll on the guest executor; memory is the guest's linear memory.

use tonic::Status;

use super::Parts;
use crate::api;
use crate::pods::{Container, ContainerFilter, PodFilter, Sandbox};

pub(super) async fn container_stats(
    parts: &Parts,
    request: api::ContainerStatsRequest,
) -> Result<api::ContainerStatsResponse, Status> {
    let container = parts.pods.container(&request.container_id)?;
    Ok(api::ContainerStatsResponse { stats: Some(container_stats_of(&container)) })
}

pub(super) async fn list_container_stats(
    parts: &Parts,
    request: api::ListContainerStatsRequest,
) -> Result<api::ListContainerStatsResponse, Status> {
    let filter = request.filter.unwrap_or_default();
    let filter = ContainerFilter {
        id: Some(filter.id).filter(|id| !id.is_empty()),
        pod_id: Some(filter.pod_sandbox_id).filter(|id| !id.is_empty()),
        state: None,
        labels: filter.label_selector,
    };
    let stats = parts.pods.containers(&filter).iter().map(|c| container_stats_of(c)).collect();
    Ok(api::ListContainerStatsResponse { stats })
}

pub(super) async fn pod_sandbox_stats(
    parts: &Parts,
    request: api::PodSandboxStatsRequest,
) -> Result<api::PodSandboxStatsResponse, Status> {
    let sandbox = parts.pods.pod(&request.pod_sandbox_id)?;
    Ok(api::PodSandboxStatsResponse { stats: Some(pod_stats_of(parts, &sandbox)) })
}

pub(super) async fn list_pod_sandbox_stats(
    parts: &Parts,
    request: api::ListPodSandboxStatsRequest,
) -> Result<api::ListPodSandboxStatsResponse, Status> {
    let filter = request.filter.unwrap_or_default();
    let filter =
        PodFilter { id: Some(filter.id).filter(|id| !id.is_empty()), state: None, labels: filter.label_selector };
    let stats = parts.pods.pods(&filter).iter().map(|sandbox| pod_stats_of(parts, sandbox)).collect();
    Ok(api::ListPodSandboxStatsResponse { stats })
}

fn value(value: u64) -> Option<api::UInt64Value> {
    Some(api::UInt64Value { value })
}

fn usage(timestamp: i64, cpu_nanos: u64, memory_bytes: u64) -> (api::CpuUsage, api::MemoryUsage) {
    let cpu = api::CpuUsage { timestamp, usage_core_nano_seconds: value(cpu_nanos), usage_nano_cores: None };
    let memory = api::MemoryUsage {
        timestamp,
        working_set_bytes: value(memory_bytes),
        usage_bytes: value(memory_bytes),
        rss_bytes: value(memory_bytes),
        ..Default::default()
    };
    (cpu, memory)
}

fn container_stats_of(container: &Container) -> api::ContainerStats {
    let view = container.view();
    let (cpu, memory) = usage(crate::clock::now_nanos(), view.usage.cpu_nanos, view.usage.memory_bytes);
    api::ContainerStats {
        attributes: Some(api::ContainerAttributes {
            id: container.id.clone(),
            metadata: container.config.metadata.clone(),
            labels: container.config.labels.clone(),
            annotations: container.config.annotations.clone(),
        }),
        cpu: Some(cpu),
        memory: Some(memory),
        writable_layer: None,
        swap: None,
    }
}

fn pod_stats_of(parts: &Parts, sandbox: &Sandbox) -> api::PodSandboxStats {
    let filter = ContainerFilter { pod_id: Some(sandbox.id.clone()), ..Default::default() };
    let containers: Vec<api::ContainerStats> =
        parts.pods.containers(&filter).iter().map(|c| container_stats_of(c)).collect();
    let total = |pick: fn(&api::ContainerStats) -> u64| containers.iter().map(pick).sum::<u64>();
    let cpu_nanos = total(|s| s.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value));
    let memory_bytes = total(|s| s.memory.as_ref().and_then(|m| m.working_set_bytes.as_ref()).map_or(0, |v| v.value));
    let (cpu, memory) = usage(crate::clock::now_nanos(), cpu_nanos, memory_bytes);
    api::PodSandboxStats {
        attributes: Some(api::PodSandboxAttributes {
            id: sandbox.id.clone(),
            metadata: sandbox.config.metadata.clone(),
            labels: sandbox.config.labels.clone(),
            annotations: sandbox.config.annotations.clone(),
        }),
        linux: Some(api::LinuxPodSandboxStats {
            cpu: Some(cpu),
            memory: Some(memory),
            network: None,
            process: None,
            containers,
        }),
        windows: None,
    }
}
