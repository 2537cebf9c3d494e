//! Helpers that drive the CRI API the way kubelet does.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::time::Instant;

use rand::Rng;
use tonic::transport::Channel;
use tonic::{Code, Status};
use wasmrun::api::runtime_service_client::RuntimeServiceClient;
use wasmrun::api::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    ContainerStatusResponse, CreateContainerRequest, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, PullImageRequest, RunPodSandboxRequest,
    StartContainerRequest, VersionRequest,
};

use super::{Daemon, POLL_INTERVAL, TestImage, WAIT_LIMIT, push_fixture, scratch_root};

/// The runtime service client type.
pub type Runtime = RuntimeServiceClient<Channel>;

/// Values the module_source key of a verbose ContainerStatus may take.
pub const MODULE_SOURCES: &[&str] = &["compiled", "disk-cache", "memory"];

/// A random 64-hex-digit id that no object has.
pub fn random_id() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

/// A random pod UID in the UUID format Kubernetes uses.
pub fn new_uid() -> String {
    let h = hex::encode(rand::rng().random::<[u8; 16]>());
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Asserts that `id` is 64 lowercase hex digits.
#[track_caller]
pub fn assert_hex_id(id: &str) {
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "expected an id of 64 lowercase hex digits, got {id:?}"
    );
}

fn string_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A pod config as kubelet sends it, in namespace "default", with its log
/// directory (created, as kubelet does) under the scratch directory, on the
/// host's network (`network: NODE`, so no CNI is involved: most tests are not
/// about networking; see [`pod_network_config`]).
pub fn pod_config(name: &str, uid: &str) -> PodSandboxConfig {
    let log_directory = scratch_root().join("pods").join(uid);
    std::fs::create_dir_all(&log_directory).expect("create pod log directory");
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.to_string_lossy().into_owned(),
        labels: string_map(&[
            ("io.kubernetes.pod.uid", uid),
            ("io.kubernetes.pod.name", name),
            ("io.kubernetes.pod.namespace", "default"),
        ]),
        annotations: string_map(&[("kubernetes.io/config.source", "api"), ("e2e.wasmrun.dev/pod", name)]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_")),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// [`pod_config`] for a pod with a network namespace of its own
/// (`network: POD`, kubelet's default), which the CNI configuration sets up.
pub fn pod_network_config(name: &str, uid: &str) -> PodSandboxConfig {
    let mut config = pod_config(name, uid);
    let linux = config.linux.as_mut().expect("pod_config sets linux");
    let options =
        linux.security_context.as_mut().and_then(|c| c.namespace_options.as_mut()).expect("namespace options");
    options.network = NamespaceMode::Pod as i32;
    config
}

/// A container config as kubelet sends it (BestEffort resources), logging
/// to `<name>/0.log` under the pod's log directory.
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    args: &[&str],
    envs: &[(&str, &str)],
) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), user_specified_image: image.into(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        args: args.iter().map(|s| s.to_string()).collect(),
        envs: envs.iter().map(|(key, value)| KeyValue { key: key.to_string(), value: value.to_string() }).collect(),
        labels: string_map(&[("io.kubernetes.container.name", name)]),
        annotations: string_map(&[("io.kubernetes.container.restartCount", "0"), ("e2e.wasmrun.dev/container", name)]),
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_shares: 2,
                oom_score_adj: 1000,
                ..Default::default()
            }),
            security_context: None,
        }),
        ..Default::default()
    }
}

/// A pod sandbox that has been run.
#[derive(Debug)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

impl Pod {
    /// Runs a pod named `name` with a fresh UID.
    pub async fn run(daemon: &Daemon, name: &str) -> Pod {
        Pod::run_config(daemon, pod_config(name, &new_uid())).await
    }

    pub async fn run_config(daemon: &Daemon, config: PodSandboxConfig) -> Pod {
        let pod = Pod::try_run_config(daemon, config).await.unwrap_or_else(|s| panic!("RunPodSandbox: {s:?}"));
        assert_hex_id(&pod.id);
        pod
    }

    /// RunPodSandbox with `config` and the default runtime handler.
    pub async fn try_run_config(daemon: &Daemon, config: PodSandboxConfig) -> Result<Pod, Status> {
        let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        let id = daemon.runtime().run_pod_sandbox(request).await?.into_inner().pod_sandbox_id;
        Ok(Pod { id, config })
    }

    pub fn log_dir(&self) -> PathBuf {
        PathBuf::from(&self.config.log_directory)
    }

    /// Where the container's CRI log goes: pod log directory + container log path.
    pub fn log_path(&self, container: &ContainerConfig) -> PathBuf {
        self.log_dir().join(&container.log_path)
    }

    /// CreateContainer in this pod (after creating the container's log
    /// directory, as kubelet does).
    pub async fn try_create(&self, daemon: &Daemon, container: &ContainerConfig) -> Result<String, Status> {
        if let Some(parent) = self.log_path(container).parent() {
            std::fs::create_dir_all(parent).expect("create container log directory");
        }
        daemon
            .runtime()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(container.clone()),
                sandbox_config: Some(self.config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn create(&self, daemon: &Daemon, container: &ContainerConfig) -> String {
        let id = self.try_create(daemon, container).await.unwrap_or_else(|s| panic!("CreateContainer: {s:?}"));
        assert_hex_id(&id);
        id
    }

    /// CreateContainer + StartContainer.
    pub async fn create_and_start(&self, daemon: &Daemon, container: &ContainerConfig) -> String {
        let id = self.create(daemon, container).await;
        daemon
            .runtime()
            .start_container(StartContainerRequest { container_id: id.clone() })
            .await
            .unwrap_or_else(|s| panic!("StartContainer: {s:?}"));
        id
    }

    /// Creates and starts the container and waits until it has exited.
    pub async fn run_to_exit(&self, daemon: &Daemon, container: &ContainerConfig) -> (String, ContainerStatus) {
        let id = self.create_and_start(daemon, container).await;
        let status = wait_exited(&mut daemon.runtime(), &id).await;
        (id, status)
    }
}

/// PullImage by name; returns the image_ref.
pub async fn pull(daemon: &Daemon, image: &str) -> String {
    daemon
        .images()
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: image.into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("PullImage {image}: {s:?}"))
        .into_inner()
        .image_ref
}

/// PullImage of `image`, bounded so that a hanging pull fails the test.
pub async fn try_pull(
    daemon: &Daemon,
    image: Option<&str>,
) -> Result<tonic::Response<wasmrun::api::PullImageResponse>, Status> {
    let mut images = daemon.images();
    let pull = images.pull_image(PullImageRequest {
        image: image.map(|image| ImageSpec { image: image.into(), ..Default::default() }),
        ..Default::default()
    });
    tokio::time::timeout(std::time::Duration::from_secs(120), pull)
        .await
        .unwrap_or_else(|_| panic!("PullImage {image:?} did not return within 120 s"))
}

/// Pushes the fixture as "e2e/<repo>:v1" and pulls it into the daemon.
pub async fn pulled_fixture(daemon: &Daemon, fixture_name: &str, repo: &str) -> TestImage {
    let image = push_fixture(fixture_name, repo).await;
    pull(daemon, &image.name).await;
    image
}

pub async fn container_status(rt: &mut Runtime, id: &str, verbose: bool) -> ContainerStatusResponse {
    rt.container_status(ContainerStatusRequest { container_id: id.into(), verbose })
        .await
        .unwrap_or_else(|s| panic!("ContainerStatus {id}: {s:?}"))
        .into_inner()
}

/// Polls ContainerStatus until the container is in `state`; panics after [`WAIT_LIMIT`].
pub async fn wait_state(rt: &mut Runtime, id: &str, state: ContainerState) -> ContainerStatus {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let status = container_status(rt, id, false).await.status.expect("ContainerStatus without status");
        if status.state() == state {
            return status;
        }
        if Instant::now() > deadline {
            panic!("container {id} not {state:?} after {WAIT_LIMIT:?}: {status:#?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls ContainerStatus until the container has exited.
pub async fn wait_exited(rt: &mut Runtime, id: &str) -> ContainerStatus {
    wait_state(rt, id, ContainerState::ContainerExited).await
}

/// The `module_source` of a verbose ContainerStatus' `info["info"]` JSON.
pub async fn module_source(rt: &mut Runtime, id: &str) -> String {
    let response = container_status(rt, id, true).await;
    let info = response
        .info
        .get("info")
        .unwrap_or_else(|| panic!("verbose ContainerStatus has no \"info\" key: {:?}", response.info));
    let json: serde_json::Value =
        serde_json::from_str(info).unwrap_or_else(|e| panic!("info[\"info\"] is not JSON ({e}): {info}"));
    let source = json
        .get("module_source")
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("info[\"info\"] has no string module_source: {json}"))
        .to_owned();
    assert!(MODULE_SOURCES.contains(&source.as_str()), "unexpected module_source {source:?}");
    source
}

/// Asserts that an RPC failed with `code`; returns the status.
#[track_caller]
pub fn expect_code<T: Debug>(result: Result<T, Status>, code: Code, what: &str) -> Status {
    match result {
        Ok(value) => panic!("{what}: expected {code:?}, got Ok({value:?})"),
        Err(status) if status.code() == code => status,
        Err(status) => panic!("{what}: expected {code:?}, got {:?}: {}", status.code(), status.message()),
    }
}

/// Asserts that the daemon still answers Version.
pub async fn assert_serving(daemon: &Daemon) {
    let version = daemon
        .runtime()
        .version(VersionRequest { version: "v1".into() })
        .await
        .unwrap_or_else(|s| panic!("the daemon stopped serving: Version failed: {s:?}"))
        .into_inner();
    assert_eq!(version.runtime_name, "wasmrun");
}

/// Ids, sorted, to compare with a sorted listing.
pub fn sorted(ids: &[&String]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

/// The image `image` names, or `None` when the daemon does not have it.
pub async fn image_status(
    images: &mut wasmrun::api::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    image: &str,
) -> Option<wasmrun::api::Image> {
    images
        .image_status(wasmrun::api::ImageStatusRequest {
            image: Some(wasmrun::api::ImageSpec { image: image.into(), ..Default::default() }),
            verbose: false,
        })
        .await
        .unwrap_or_else(|s| panic!("ImageStatus {image}: {s:?}"))
        .into_inner()
        .image
}

/// A CRI mount of the host directory `host_path` at `container_path`.
pub fn mount(container_path: &str, host_path: &std::path::Path, readonly: bool) -> wasmrun::api::Mount {
    wasmrun::api::Mount {
        container_path: container_path.into(),
        host_path: host_path.display().to_string(),
        readonly,
        ..Default::default()
    }
}

/// The pod's addresses from PodSandboxStatus: the ip, then the additional ones.
pub async fn pod_ips(daemon: &Daemon, pod: &Pod) -> Vec<String> {
    let status = daemon
        .runtime()
        .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: pod.id.clone(), verbose: false })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
        .status
        .expect("no status");
    let network = status.network.expect("no network status");
    std::iter::once(network.ip).chain(network.additional_ips.into_iter().map(|ip| ip.ip)).collect()
}
