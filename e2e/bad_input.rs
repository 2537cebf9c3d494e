//! Requests that must fail with a precise status code, after each of which
//! the daemon must keep serving.

use tonic::Code;
use wasmrun::api::{
    ContainerStatusRequest, PodSandboxConfig, PodSandboxStatusRequest, RunPodSandboxRequest, StartContainerRequest,
};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();

    let result = rt.container_status(ContainerStatusRequest { container_id: random_id(), verbose: false }).await;
    expect_code(result, Code::NotFound, "ContainerStatus of an unknown id");
    assert_serving(&daemon).await;

    let result = rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: random_id(), verbose: false }).await;
    expect_code(result, Code::NotFound, "PodSandboxStatus of an unknown id");
    assert_serving(&daemon).await;

    let result = rt.start_container(StartContainerRequest { container_id: random_id() }).await;
    expect_code(result, Code::NotFound, "StartContainer of an unknown id");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pod_sandbox_without_config_or_metadata_is_invalid() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();

    let result = rt.run_pod_sandbox(RunPodSandboxRequest { config: None, runtime_handler: String::new() }).await;
    expect_code(result, Code::InvalidArgument, "RunPodSandbox without config");
    assert_serving(&daemon).await;

    let no_metadata = PodSandboxConfig { metadata: None, ..pod_config("no-metadata", &new_uid()) };
    let result =
        rt.run_pod_sandbox(RunPodSandboxRequest { config: Some(no_metadata), runtime_handler: String::new() }).await;
    expect_code(result, Code::InvalidArgument, "RunPodSandbox without metadata");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_container_in_an_unknown_pod_is_not_found() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "hello", "bad-unknown-pod").await;
    let ghost = Pod { id: random_id(), config: pod_config("ghost", &new_uid()) };
    let result = ghost.try_create(&daemon, &container_config("hello", &image.name, &[], &[], &[])).await;
    expect_code(result, Code::NotFound, "CreateContainer in an unknown pod");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_container_of_an_image_never_pulled_is_not_found() {
    let daemon = Daemon::start().await;
    // Present in the registry, but never pulled into the daemon.
    let image = push_fixture("hello", "bad-never-pulled").await;
    let pod = Pod::run(&daemon, "never-pulled").await;
    let result = pod.try_create(&daemon, &container_config("hello", &image.name, &[], &[], &[])).await;
    expect_code(result, Code::NotFound, "CreateContainer of an image never pulled");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_of_a_layer_that_is_not_wasm_is_invalid() {
    let daemon = Daemon::start().await;
    let image = push_bytes("bad-garbage", GARBAGE).await;
    expect_code(try_pull(&daemon, Some(&image.name)).await, Code::InvalidArgument, "PullImage of garbage");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_does_not_compile_is_refused_at_pull() {
    let daemon = Daemon::start().await;
    let hello = fixture("hello");
    let image = push_bytes("bad-truncated", &hello[..100]).await;
    let status = expect_code(
        try_pull(&daemon, Some(&image.name)).await,
        Code::InvalidArgument,
        "PullImage of a truncated module",
    );
    assert!(status.message().contains(&image.name), "{status:?}");
    assert_eq!(image_status(&mut daemon.images(), &image.name).await, None);
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_without_start_is_refused_at_pull() {
    let daemon = Daemon::start().await;
    // The smallest valid module: the header and nothing else, so no `_start`.
    let image = push_bytes("bad-no-start", b"\0asm\x01\0\0\0").await;
    let status = expect_code(
        try_pull(&daemon, Some(&image.name)).await,
        Code::InvalidArgument,
        "PullImage of a module without _start",
    );
    assert!(status.message().contains("_start"), "{status:?}");
    assert_eq!(image_status(&mut daemon.images(), &image.name).await, None);
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_of_a_missing_tag_is_not_found() {
    let daemon = Daemon::start().await;
    let image = push_fixture("hello", "bad-missing-tag").await;
    let missing = format!("{}:no-such-tag", image.repository);
    expect_code(try_pull(&daemon, Some(&missing)).await, Code::NotFound, "PullImage of a missing tag");
    assert_serving(&daemon).await;
    let missing_repo = format!("{}/e2e/no-such-repo:v1", registry().host());
    expect_code(try_pull(&daemon, Some(&missing_repo)).await, Code::NotFound, "PullImage of a missing repository");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_registry_that_is_down_is_unavailable() {
    let down = format!("127.0.0.1:{}", free_port());
    let daemon = Daemon::start_with(None, &["--insecure-registry", &down]).await;
    let image = format!("{down}/e2e/hello:v1");
    expect_code(try_pull(&daemon, Some(&image)).await, Code::Unavailable, "PullImage from a registry that is down");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_over_plain_http_from_a_registry_not_listed_insecure_fails() {
    let daemon = Daemon::start().await;
    push_fixture("hello", "bad-not-insecure").await;
    // Same registry, but "localhost:PORT" is not in --insecure-registry, so
    // the daemon must use HTTPS against a plain-HTTP server and fail.
    let image = format!("localhost:{}/e2e/bad-not-insecure:v1", registry().port);
    expect_code(try_pull(&daemon, Some(&image)).await, Code::Unavailable, "PullImage over HTTPS from an HTTP registry");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_without_an_image_name_is_invalid() {
    let daemon = Daemon::start().await;
    expect_code(try_pull(&daemon, Some("")).await, Code::InvalidArgument, "PullImage of \"\"");
    assert_serving(&daemon).await;
    expect_code(try_pull(&daemon, None).await, Code::InvalidArgument, "PullImage without an ImageSpec");
    assert_serving(&daemon).await;
}

/// containerd's checks of a request, made alike wherever a field comes in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_containerd_refuses_are_refused_and_nothing_is_kept() {
    use wasmrun::api::{
        Int64Value, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
        LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest,
        UpdateContainerResourcesRequest,
    };
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();

    // log_directory: absolute and clean, outside the kernel's filesystems.
    for bad in ["relative/logs", "/var/log/../../etc", "/proc/self/fd"] {
        let config = PodSandboxConfig { log_directory: bad.into(), ..pod_config("bad-log-dir", &new_uid()) };
        let result =
            rt.run_pod_sandbox(RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }).await;
        let status = expect_code(result, Code::InvalidArgument, &format!("log_directory {bad}"));
        assert!(status.message().contains("log_directory"), "{status:?}");
    }
    // run_as_group without a user, for a pod.
    let mut config = pod_config("group-only", &new_uid());
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            run_as_group: Some(Int64Value { value: 1000 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let result =
        rt.run_pod_sandbox(RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() }).await;
    expect_code(result, Code::InvalidArgument, "a pod's run_as_group without run_as_user");
    let pods = rt.list_pod_sandbox(ListPodSandboxRequest::default()).await.expect("ListPodSandbox").into_inner();
    assert!(pods.items.is_empty(), "a refused pod was kept: {pods:?}");

    let image = pulled_fixture(&daemon, "sleeper", "bad-checks").await;
    let pod = Pod::run(&daemon, "checks").await;
    let with_linux = |linux: LinuxContainerConfig| {
        let mut config = container_config("checked", &image.name, &[], &["60000"], &[]);
        config.linux = Some(linux);
        config
    };
    let security = |context: LinuxContainerSecurityContext| {
        with_linux(LinuxContainerConfig { security_context: Some(context), ..Default::default() })
    };
    #[allow(deprecated)]
    let refused = [
        (
            "memory_limit_in_bytes -1",
            with_linux(LinuxContainerConfig {
                resources: Some(LinuxContainerResources { memory_limit_in_bytes: -1, ..Default::default() }),
                ..Default::default()
            }),
        ),
        (
            "run_as_group without a user",
            security(LinuxContainerSecurityContext {
                run_as_group: Some(Int64Value { value: 1000 }),
                ..Default::default()
            }),
        ),
        (
            "a seccomp profile path without localhost/",
            security(LinuxContainerSecurityContext {
                seccomp_profile_path: "/etc/profile.json".into(),
                ..Default::default()
            }),
        ),
    ];
    for (what, config) in refused {
        let status = expect_code(pod.try_create(&daemon, &config).await, Code::InvalidArgument, what);
        assert!(!status.message().is_empty(), "{what}");
    }
    let containers = rt.list_containers(ListContainersRequest::default()).await.expect("ListContainers").into_inner();
    assert!(containers.containers.is_empty(), "a refused container was kept: {containers:?}");

    // The same resources are refused by UpdateContainerResources, and the
    // running guest keeps its limits.
    let id = pod.create_and_start(&daemon, &container_config("sleeper", &image.name, &[], &["60000"], &[])).await;
    let result = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources { memory_limit_in_bytes: -1, ..Default::default() }),
            ..Default::default()
        })
        .await;
    expect_code(result, Code::InvalidArgument, "UpdateContainerResources with memory_limit_in_bytes -1");
    assert_eq!(container_status(&mut rt, &id, false).await.status.expect("status").state, 1, "still running");
    assert_serving(&daemon).await;
}

/// An error echoes a request's id cut short: a 10,000-character id gets
/// NotFound, not a status header too big for the client (RESOURCE_EXHAUSTED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_id_gets_not_found_with_a_short_message() {
    use wasmrun::api::RemoveContainerRequest;
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let huge = "f".repeat(10_000);
    let result = rt.container_status(ContainerStatusRequest { container_id: huge.clone(), verbose: false }).await;
    let status = expect_code(result, Code::NotFound, "ContainerStatus of a 10,000-character id");
    assert!(status.message().len() < 1024, "{} bytes", status.message().len());
    let result = rt.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: huge.clone(), verbose: false }).await;
    expect_code(result, Code::NotFound, "PodSandboxStatus of a 10,000-character id");
    let result = rt.start_container(StartContainerRequest { container_id: huge.clone() }).await;
    expect_code(result, Code::NotFound, "StartContainer of a 10,000-character id");
    // Remove is idempotent: a missing id is not an error, whatever its length.
    rt.remove_container(RemoveContainerRequest { container_id: huge }).await.expect("RemoveContainer");
    let image = format!("{}/{}:v1", registry().host(), "x".repeat(10_000));
    let result = daemon
        .images()
        .image_status(wasmrun::api::ImageStatusRequest {
            image: Some(wasmrun::api::ImageSpec { image, ..Default::default() }),
            verbose: false,
        })
        .await;
    assert!(result.is_ok() || result.as_ref().is_err_and(|s| s.code() != Code::ResourceExhausted), "{result:?}");
    assert_serving(&daemon).await;
}
