//! `runtime.v1.RuntimeService` of the wasm side: the trait, each RPC one line
//! to its family's file; the runtime-wide calls (Version, Status,
//! RuntimeConfig) are here.

use std::collections::HashMap;

use tonic::{Request, Response, Status};

use super::{Facade, containers, events, exec, sandboxes, stats, unsupported, verbose_json};
use crate::api;
use crate::api::runtime_service_server::RuntimeService;
use crate::config::CgroupDriver;

type Reply<T> = Result<Response<T>, Status>;

/// Calls a family function with the parts and the request, and wraps its answer.
macro_rules! delegate {
    ($self:ident, $module:ident :: $function:ident, $request:ident) => {
        $module::$function(&$self.parts, $request.into_inner()).await.map(Response::new)
    };
}

#[tonic::async_trait]
impl RuntimeService for Facade {
    async fn version(&self, _request: Request<api::VersionRequest>) -> Reply<api::VersionResponse> {
        Ok(Response::new(api::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "wasmrun".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    /// wasmrun's own conditions: the runtime is ready once it serves; the
    /// network is ready while the CNI configuration directory holds a usable
    /// configuration (read at each call), else `NetworkReady` is false with
    /// reason `NetworkPluginNotReady`, as containerd reports it. The runtime
    /// handlers are the wasm ones (see [`runtime_handlers`]). Verbose, its
    /// info has the config and `guestMemory`: the memory budget of all
    /// guests, what they hold and how often it refused (`wasm::BudgetSnapshot`).
    async fn status(&self, request: Request<api::StatusRequest>) -> Reply<api::StatusResponse> {
        let runtime_ready = api::RuntimeCondition { r#type: "RuntimeReady".into(), status: true, ..Default::default() };
        let network_ready = match self.parts.network.ready().await {
            Ok(()) => api::RuntimeCondition { r#type: "NetworkReady".into(), status: true, ..Default::default() },
            // containerd's words, which kubelet shows in the node's Ready condition.
            Err(why) => api::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: cni plugin not initialized: {why}"),
            },
        };
        let mut info = HashMap::new();
        if request.get_ref().verbose {
            info.insert("config".to_owned(), verbose_json(&*self.parts.config));
            info.insert("guestMemory".to_owned(), verbose_json(&self.parts.pods.memory_budget()));
        }
        Ok(Response::new(api::StatusResponse {
            status: Some(api::RuntimeStatus { conditions: vec![runtime_ready, network_ready] }),
            info,
            runtime_handlers: runtime_handlers(&self.parts.config.wasm_handlers),
            features: Some(api::RuntimeFeatures { supplemental_groups_policy: false }),
        }))
    }

    /// The configured cgroup driver; wasm guests have no cgroups of their own.
    async fn runtime_config(&self, _request: Request<api::RuntimeConfigRequest>) -> Reply<api::RuntimeConfigResponse> {
        let cgroup_driver = match self.parts.config.cgroup_driver {
            CgroupDriver::Systemd => api::CgroupDriver::Systemd,
            CgroupDriver::Cgroupfs => api::CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(api::RuntimeConfigResponse {
            linux: Some(api::LinuxRuntimeConfiguration { cgroup_driver: cgroup_driver as i32 }),
        }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Reply<api::UpdateRuntimeConfigResponse> {
        // kubelet sends the node's pod CIDR here, which containerd only uses
        // to fill a config template; wasmrun has none: the CNI config is the
        // node's.
        let cidr = request.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr);
        tracing::debug!(pod_cidr = ?cidr, "runtime config update: nothing to apply");
        Ok(Response::new(api::UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(&self, request: Request<api::RunPodSandboxRequest>) -> Reply<api::RunPodSandboxResponse> {
        delegate!(self, sandboxes::run_pod_sandbox, request)
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<api::StopPodSandboxRequest>,
    ) -> Reply<api::StopPodSandboxResponse> {
        delegate!(self, sandboxes::stop_pod_sandbox, request)
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<api::RemovePodSandboxRequest>,
    ) -> Reply<api::RemovePodSandboxResponse> {
        delegate!(self, sandboxes::remove_pod_sandbox, request)
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<api::PodSandboxStatusRequest>,
    ) -> Reply<api::PodSandboxStatusResponse> {
        delegate!(self, sandboxes::pod_sandbox_status, request)
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<api::ListPodSandboxRequest>,
    ) -> Reply<api::ListPodSandboxResponse> {
        delegate!(self, sandboxes::list_pod_sandbox, request)
    }

    async fn create_container(
        &self,
        request: Request<api::CreateContainerRequest>,
    ) -> Reply<api::CreateContainerResponse> {
        delegate!(self, containers::create_container, request)
    }

    async fn start_container(
        &self,
        request: Request<api::StartContainerRequest>,
    ) -> Reply<api::StartContainerResponse> {
        delegate!(self, containers::start_container, request)
    }

    async fn stop_container(&self, request: Request<api::StopContainerRequest>) -> Reply<api::StopContainerResponse> {
        delegate!(self, containers::stop_container, request)
    }

    async fn remove_container(
        &self,
        request: Request<api::RemoveContainerRequest>,
    ) -> Reply<api::RemoveContainerResponse> {
        delegate!(self, containers::remove_container, request)
    }

    async fn list_containers(
        &self,
        request: Request<api::ListContainersRequest>,
    ) -> Reply<api::ListContainersResponse> {
        delegate!(self, containers::list_containers, request)
    }

    async fn container_status(
        &self,
        request: Request<api::ContainerStatusRequest>,
    ) -> Reply<api::ContainerStatusResponse> {
        delegate!(self, containers::container_status, request)
    }

    async fn update_container_resources(
        &self,
        request: Request<api::UpdateContainerResourcesRequest>,
    ) -> Reply<api::UpdateContainerResourcesResponse> {
        delegate!(self, containers::update_container_resources, request)
    }

    async fn reopen_container_log(
        &self,
        request: Request<api::ReopenContainerLogRequest>,
    ) -> Reply<api::ReopenContainerLogResponse> {
        delegate!(self, containers::reopen_container_log, request)
    }

    async fn exec_sync(&self, request: Request<api::ExecSyncRequest>) -> Reply<api::ExecSyncResponse> {
        delegate!(self, exec::exec_sync, request)
    }

    async fn exec(&self, request: Request<api::ExecRequest>) -> Reply<api::ExecResponse> {
        delegate!(self, exec::exec, request)
    }

    async fn attach(&self, request: Request<api::AttachRequest>) -> Reply<api::AttachResponse> {
        delegate!(self, exec::attach, request)
    }

    async fn port_forward(&self, request: Request<api::PortForwardRequest>) -> Reply<api::PortForwardResponse> {
        delegate!(self, exec::port_forward, request)
    }

    async fn container_stats(
        &self,
        request: Request<api::ContainerStatsRequest>,
    ) -> Reply<api::ContainerStatsResponse> {
        delegate!(self, stats::container_stats, request)
    }

    async fn list_container_stats(
        &self,
        request: Request<api::ListContainerStatsRequest>,
    ) -> Reply<api::ListContainerStatsResponse> {
        delegate!(self, stats::list_container_stats, request)
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<api::PodSandboxStatsRequest>,
    ) -> Reply<api::PodSandboxStatsResponse> {
        delegate!(self, stats::pod_sandbox_stats, request)
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<api::ListPodSandboxStatsRequest>,
    ) -> Reply<api::ListPodSandboxStatsResponse> {
        delegate!(self, stats::list_pod_sandbox_stats, request)
    }

    async fn checkpoint_container(
        &self,
        request: Request<api::CheckpointContainerRequest>,
    ) -> Reply<api::CheckpointContainerResponse> {
        delegate!(self, unsupported::checkpoint_container, request)
    }

    type GetContainerEventsStream = events::EventStream;

    async fn get_container_events(
        &self,
        request: Request<api::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        delegate!(self, events::get_container_events, request)
    }

    async fn list_metric_descriptors(
        &self,
        request: Request<api::ListMetricDescriptorsRequest>,
    ) -> Reply<api::ListMetricDescriptorsResponse> {
        delegate!(self, unsupported::list_metric_descriptors, request)
    }

    async fn list_pod_sandbox_metrics(
        &self,
        request: Request<api::ListPodSandboxMetricsRequest>,
    ) -> Reply<api::ListPodSandboxMetricsResponse> {
        delegate!(self, unsupported::list_pod_sandbox_metrics, request)
    }
}

/// The runtime handlers wasmrun serves, as containerd lists its runtimes in
/// Status (`introspectRuntimeHandlers`): each configured wasm handler by
/// name, then the default under the empty name, which a pod naming no
/// handler gets (wasm, when no backing runtime is configured: the front
/// puts the backing runtime's handlers in its place when one is). No
/// handler has recursive read-only mounts or user namespaces.
fn runtime_handlers(wasm_handlers: &[String]) -> Vec<api::RuntimeHandler> {
    let handler = |name: &str| api::RuntimeHandler {
        name: name.to_owned(),
        features: Some(api::RuntimeHandlerFeatures { recursive_read_only_mounts: false, user_namespaces: false }),
    };
    wasm_handlers.iter().map(|name| handler(name)).chain([handler("")]).collect()
}
