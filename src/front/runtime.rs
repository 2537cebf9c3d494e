//! `runtime.v1.RuntimeService` of the front: one line per RPC, saying where
//! it goes (see the table in `front/mod.rs`).

use tonic::{Request, Response, Status};

use super::{Front, Owner, merge, mixed, route};
use crate::api;
use crate::api::runtime_service_server::RuntimeService;

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RuntimeService for Front {
    async fn version(&self, request: Request<api::VersionRequest>) -> Reply<api::VersionResponse> {
        route!(self, runtime.version(request), to wasm)
    }

    async fn status(&self, request: Request<api::StatusRequest>) -> Reply<api::StatusResponse> {
        merge::status(&self.wasm, self.backing.as_ref(), request).await
    }

    async fn runtime_config(&self, request: Request<api::RuntimeConfigRequest>) -> Reply<api::RuntimeConfigResponse> {
        route!(self, runtime.runtime_config(request), by runtime_settings)
    }

    async fn update_runtime_config(
        &self,
        request: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Reply<api::UpdateRuntimeConfigResponse> {
        route!(self, runtime.update_runtime_config(request), by runtime_settings)
    }

    async fn run_pod_sandbox(&self, request: Request<api::RunPodSandboxRequest>) -> Reply<api::RunPodSandboxResponse> {
        match self.new_pod_owner(request.get_ref())? {
            Owner::Mixed(backing) => {
                let pods = self.wasm.parts().pods.clone();
                mixed::run_pod_sandbox(pods, backing, &self.rules.wasm_handlers, request).await
            }
            owner => route!(@send self, owner, runtime.run_pod_sandbox(request)),
        }
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<api::StopPodSandboxRequest>,
    ) -> Reply<api::StopPodSandboxResponse> {
        match self.pod_owner(&request.get_ref().pod_sandbox_id)? {
            Owner::Mixed(backing) => mixed::stop_pod_sandbox(&self.wasm, backing, request).await,
            owner => route!(@send self, owner, runtime.stop_pod_sandbox(request)),
        }
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<api::RemovePodSandboxRequest>,
    ) -> Reply<api::RemovePodSandboxResponse> {
        match self.pod_owner(&request.get_ref().pod_sandbox_id)? {
            Owner::Mixed(backing) => mixed::remove_pod_sandbox(&self.wasm, backing, request).await,
            owner => route!(@send self, owner, runtime.remove_pod_sandbox(request)),
        }
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<api::PodSandboxStatusRequest>,
    ) -> Reply<api::PodSandboxStatusResponse> {
        route!(self, runtime.pod_sandbox_status(request), by pod_sandbox_id)
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<api::ListPodSandboxRequest>,
    ) -> Reply<api::ListPodSandboxResponse> {
        merge::list_pod_sandbox(&self.wasm, self.backing.as_ref(), request).await
    }

    async fn create_container(
        &self,
        request: Request<api::CreateContainerRequest>,
    ) -> Reply<api::CreateContainerResponse> {
        let (owner, join_first) = self.new_container_owner(request.get_ref())?;
        if let Some(backing) = join_first {
            mixed::join_late(&self.wasm.parts().pods, backing, request.get_ref()).await?;
        }
        route!(@send self, owner, runtime.create_container(request))
    }

    async fn start_container(
        &self,
        request: Request<api::StartContainerRequest>,
    ) -> Reply<api::StartContainerResponse> {
        route!(self, runtime.start_container(request), by container_id)
    }

    async fn stop_container(&self, request: Request<api::StopContainerRequest>) -> Reply<api::StopContainerResponse> {
        route!(self, runtime.stop_container(request), by container_id)
    }

    async fn remove_container(
        &self,
        request: Request<api::RemoveContainerRequest>,
    ) -> Reply<api::RemoveContainerResponse> {
        route!(self, runtime.remove_container(request), by container_id)
    }

    async fn list_containers(
        &self,
        request: Request<api::ListContainersRequest>,
    ) -> Reply<api::ListContainersResponse> {
        merge::list_containers(&self.wasm, self.backing.as_ref(), request).await
    }

    async fn container_status(
        &self,
        request: Request<api::ContainerStatusRequest>,
    ) -> Reply<api::ContainerStatusResponse> {
        route!(self, runtime.container_status(request), by container_id)
    }

    async fn update_container_resources(
        &self,
        request: Request<api::UpdateContainerResourcesRequest>,
    ) -> Reply<api::UpdateContainerResourcesResponse> {
        route!(self, runtime.update_container_resources(request), by container_id)
    }

    async fn reopen_container_log(
        &self,
        request: Request<api::ReopenContainerLogRequest>,
    ) -> Reply<api::ReopenContainerLogResponse> {
        route!(self, runtime.reopen_container_log(request), by container_id)
    }

    async fn exec_sync(&self, request: Request<api::ExecSyncRequest>) -> Reply<api::ExecSyncResponse> {
        route!(self, runtime.exec_sync(request), by container_id)
    }

    async fn exec(&self, request: Request<api::ExecRequest>) -> Reply<api::ExecResponse> {
        route!(self, runtime.exec(request), by container_id)
    }

    async fn attach(&self, request: Request<api::AttachRequest>) -> Reply<api::AttachResponse> {
        route!(self, runtime.attach(request), by container_id)
    }

    async fn port_forward(&self, request: Request<api::PortForwardRequest>) -> Reply<api::PortForwardResponse> {
        route!(self, runtime.port_forward(request), by pod_sandbox_id)
    }

    async fn container_stats(
        &self,
        request: Request<api::ContainerStatsRequest>,
    ) -> Reply<api::ContainerStatsResponse> {
        route!(self, runtime.container_stats(request), by container_id)
    }

    async fn list_container_stats(
        &self,
        request: Request<api::ListContainerStatsRequest>,
    ) -> Reply<api::ListContainerStatsResponse> {
        merge::list_container_stats(&self.wasm, self.backing.as_ref(), request).await
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<api::PodSandboxStatsRequest>,
    ) -> Reply<api::PodSandboxStatsResponse> {
        match self.pod_owner(&request.get_ref().pod_sandbox_id)? {
            Owner::Mixed(backing) => mixed::pod_sandbox_stats(&self.wasm, backing, request).await,
            owner => route!(@send self, owner, runtime.pod_sandbox_stats(request)),
        }
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<api::ListPodSandboxStatsRequest>,
    ) -> Reply<api::ListPodSandboxStatsResponse> {
        merge::list_pod_sandbox_stats(&self.wasm, self.backing.as_ref(), request).await
    }

    /// Not forwarded: checkpointing was never forwarded, and a wasm container cannot be.
    async fn checkpoint_container(
        &self,
        request: Request<api::CheckpointContainerRequest>,
    ) -> Reply<api::CheckpointContainerResponse> {
        route!(self, runtime.checkpoint_container(request), to wasm)
    }

    type GetContainerEventsStream = crate::cri::EventStream;

    async fn get_container_events(
        &self,
        request: Request<api::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        merge::container_events(&self.wasm, self.backing.as_ref(), request).await
    }

    async fn list_metric_descriptors(
        &self,
        request: Request<api::ListMetricDescriptorsRequest>,
    ) -> Reply<api::ListMetricDescriptorsResponse> {
        route!(self, runtime.list_metric_descriptors(request), to wasm)
    }

    async fn list_pod_sandbox_metrics(
        &self,
        request: Request<api::ListPodSandboxMetricsRequest>,
    ) -> Reply<api::ListPodSandboxMetricsResponse> {
        route!(self, runtime.list_pod_sandbox_metrics(request), to wasm)
    }
}
