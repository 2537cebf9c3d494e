//! Mixed pods (`module.wasm.image/variant: compat-smart`): a wasm container
//! of wasmrun's and a Linux sidecar of the backing containerd in one pod. The
//! sandbox, its network namespace and its CNI network are containerd's (in
//! the test's own namespace, with the bridge network the networking tests
//! use); the wasm container runs in wasmrun, with its sockets in that
//! namespace.

use std::future::Future;
use std::net::SocketAddr;

use tonic::Code;
use wasmrun::api::{
    ContainerEventType, ContainerFilter, ContainerState, ContainerStatsFilter, ContainerStatsRequest,
    ContainerStatusRequest, GetEventsRequest, ListContainerStatsRequest, ListContainersRequest, ListPodSandboxRequest,
    ListPodSandboxStatsRequest, PodSandboxStatsRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StopContainerRequest, StopPodSandboxRequest,
};

use crate::harness::*;

const VARIANT: &str = "module.wasm.image/variant";
/// Where the wasm service listens (its default) and the sidecar listens.
const WEB_PORT: u16 = 8080;
const SIDECAR_PORT: u16 = 9090;

fn in_net<T: Send>(net: &TestNet, work: impl Future<Output = T> + Send) -> T {
    net.run(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(work)
    })
}

/// GET `path` on `addr` from inside the test's namespace: (status, body).
fn get_in(net: &TestNet, addr: SocketAddr, path: &str) -> (u16, String) {
    let path = path.to_owned();
    in_net(net, async move {
        let (status, _, body) = http_request(addr, "GET", &path, b"")
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {addr}: no response: {e}"));
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

/// The ids of the containers the daemon lists in pod `pod_id`, sorted.
async fn containers_of(daemon: &Daemon, pod_id: &str) -> Vec<String> {
    let filter = ContainerFilter { pod_sandbox_id: pod_id.into(), ..Default::default() };
    let request = ListContainersRequest { filter: Some(filter) };
    let listed = daemon.runtime().list_containers(request).await.expect("ListContainers").into_inner().containers;
    let mut ids: Vec<String> = listed.into_iter().map(|c| c.id).collect();
    ids.sort();
    ids
}

/// How many times the daemon's ListPodSandbox shows `pod_id`.
async fn times_listed(daemon: &Daemon, pod_id: &str) -> usize {
    let listed = daemon.runtime().list_pod_sandbox(ListPodSandboxRequest::default()).await.expect("ListPodSandbox");
    listed.into_inner().items.iter().filter(|pod| pod.id == pod_id).count()
}

async fn state_of(daemon: &Daemon, id: &str) -> ContainerState {
    container_status(&mut daemon.runtime(), id, false).await.status.expect("no status").state()
}

fn cpu_of(stats: &wasmrun::api::ContainerStats) -> u64 {
    stats.cpu.as_ref().and_then(|cpu| cpu.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_pod_runs_a_wasm_service_and_a_linux_sidecar_in_one_network_namespace() {
    let web_image = push_bytes("mixed-web", &fixture_http("http-service")).await;
    let sidecar_image = linux_sidecar_image().await;
    let mut net = TestNet::new("mixed-net");
    net.write_bridge_config(&[]);
    net.serve_registry();
    let mut containerd = Containerd::start_in(Some((net.file.clone(), net.conf_dir()))).await;
    let endpoint = format!("unix://{}", containerd.socket.display());
    let conf_dir = net.conf_dir().to_string_lossy().into_owned();
    let args = ["--cni-conf-dir", conf_dir.as_str(), "--backing-endpoint", endpoint.as_str()];
    let mut daemon = Daemon::start_in(Some(&net), None, &args).await;
    pull(&daemon, &web_image.name).await;
    // Not wasm: the pull is the backing runtime's.
    pull(&daemon, &sidecar_image).await;

    // A pod of the wasmrun RuntimeClass, annotated as crun's smart variant.
    let mut config = pod_network_config("mixed", &new_uid());
    config.annotations.insert(VARIANT.into(), "compat-smart".into());
    let _cgroup = PodCgroup::create(&config);
    let request = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: "wasmrun".into() };
    let pod_id = daemon.runtime().run_pod_sandbox(request).await.expect("RunPodSandbox").into_inner().pod_sandbox_id;
    let pod = Pod { id: pod_id.clone(), config };
    // Its sandbox is containerd's, with containerd's CNI address.
    let theirs = containerd.runtime().list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner();
    assert!(theirs.items.iter().any(|p| p.id == pod_id), "containerd does not list the sandbox: {theirs:#?}");
    let ip = pod_ips(&daemon, &pod).await.remove(0);
    assert!(ip.starts_with("10.88.7."), "the pod's address {ip:?} is not of the bridge network");
    let web_addr: SocketAddr = format!("{ip}:{WEB_PORT}").parse().unwrap();

    let mut events =
        daemon.runtime().get_container_events(GetEventsRequest {}).await.expect("GetContainerEvents").into_inner();
    let web = container_config("web", &web_image.name, &[], &[], &[]);
    let web_id = pod.create_and_start(&daemon, &web).await;
    // The wasm container's events carry the mixed pod's status: its id and
    // the address containerd gave it.
    let started = loop {
        let event = tokio::time::timeout(WAIT_LIMIT, events.message())
            .await
            .expect("no event in time")
            .expect("the event stream failed")
            .expect("the event stream ended");
        if event.container_id == web_id && event.container_event_type() == ContainerEventType::ContainerStartedEvent {
            break event;
        }
    };
    let event_pod = started.pod_sandbox_status.expect("the event carries its pod's status");
    assert_eq!((event_pod.id.as_str(), event_pod.network.map(|n| n.ip)), (pod_id.as_str(), Some(ip.clone())));
    let sidecar_args = [SIDECAR_PORT.to_string(), WEB_PORT.to_string(), "/log?msg=from-the-sidecar".into()];
    let sidecar_args: Vec<&str> = sidecar_args.iter().map(String::as_str).collect();
    let sidecar = container_config("sidecar", &sidecar_image, &[], &sidecar_args, &[]);
    let sidecar_id = pod.create_and_start(&daemon, &sidecar).await;

    // The wasm container is wasmrun's, the sidecar containerd's.
    let asked = containerd
        .runtime()
        .container_status(ContainerStatusRequest { container_id: web_id.clone(), verbose: false })
        .await;
    expect_code(asked, Code::NotFound, "containerd's ContainerStatus of the wasm container");
    let sidecar_status = containerd
        .runtime()
        .container_status(ContainerStatusRequest { container_id: sidecar_id.clone(), verbose: false })
        .await;
    assert!(sidecar_status.is_ok(), "containerd does not know the sidecar: {sidecar_status:?}");

    // The sidecar reaches the guest on 127.0.0.1; both logs show it.
    wait_log_line(&pod.log_path(&sidecar), "stdout", "sidecar got: HTTP/1.0 200 OK").await;
    wait_log_line(&pod.log_path(&sidecar), "stdout", "sidecar got: logged").await;
    wait_log_line(&pod.log_path(&web), "stdout", "from-the-sidecar").await;
    // The guest reaches the sidecar on 127.0.0.1, asked on the pod's address.
    let fetched = get_in(&net, web_addr, &format!("/fetch?url=http://127.0.0.1:{SIDECAR_PORT}/"));
    assert_eq!(fetched, (200, "status 200: hello from the sidecar\n".into()));
    wait_log_line(&pod.log_path(&sidecar), "stdout", "sidecar answered a request").await;

    // One pod to kubelet, both containers under it, both running.
    assert_eq!(times_listed(&daemon, &pod_id).await, 1, "ListPodSandbox must show the mixed pod once");
    assert_eq!(containers_of(&daemon, &pod_id).await, sorted(&[&web_id, &sidecar_id]));
    for id in [&web_id, &sidecar_id] {
        assert_eq!(state_of(&daemon, id).await, ContainerState::ContainerRunning, "container {id}");
    }

    // Stats: both kinds; the pod's CPU includes the wasm container's.
    let web_stats = daemon.runtime().container_stats(ContainerStatsRequest { container_id: web_id.clone() }).await;
    assert!(cpu_of(web_stats.expect("ContainerStats of the wasm container").get_ref().stats.as_ref().unwrap()) > 0);
    let sidecar_stats =
        daemon.runtime().container_stats(ContainerStatsRequest { container_id: sidecar_id.clone() }).await;
    assert!(sidecar_stats.is_ok(), "ContainerStats of the sidecar: {sidecar_stats:?}");
    let pod_stats = daemon.runtime().pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: pod_id.clone() }).await;
    let pod_stats = pod_stats.expect("PodSandboxStats").into_inner().stats.expect("no stats");
    let linux = pod_stats.linux.expect("no Linux stats");
    let in_stats = |id: &String| linux.containers.iter().find(|c| c.attributes.as_ref().is_some_and(|a| &a.id == id));
    let web_in_pod = in_stats(&web_id).expect("PodSandboxStats lacks the wasm container");
    assert!(in_stats(&sidecar_id).is_some(), "PodSandboxStats lacks the sidecar: {:#?}", linux.containers);
    let pod_cpu = linux.cpu.as_ref().and_then(|cpu| cpu.usage_core_nano_seconds.as_ref()).map_or(0, |v| v.value);
    assert!(
        pod_cpu >= cpu_of(web_in_pod) && cpu_of(web_in_pod) > 0,
        "pod CPU {pod_cpu}, wasm container's {}",
        cpu_of(web_in_pod)
    );
    let filter = ContainerStatsFilter { pod_sandbox_id: pod_id.clone(), ..Default::default() };
    let request = ListContainerStatsRequest { filter: Some(filter) };
    let listed = daemon.runtime().list_container_stats(request).await.expect("ListContainerStats").into_inner();
    let mut listed: Vec<String> =
        listed.stats.iter().filter_map(|s| s.attributes.as_ref().map(|a| a.id.clone())).collect();
    listed.sort();
    assert_eq!(listed, sorted(&[&web_id, &sidecar_id]), "ListContainerStats of the mixed pod");
    let listed = daemon.runtime().list_pod_sandbox_stats(ListPodSandboxStatsRequest::default()).await;
    let listed = listed.expect("ListPodSandboxStats").into_inner().stats;
    let entries: Vec<_> = listed.iter().filter(|s| s.attributes.as_ref().is_some_and(|a| a.id == pod_id)).collect();
    assert_eq!(entries.len(), 1, "ListPodSandboxStats must show the mixed pod once");
    let listed_containers = &entries[0].linux.as_ref().expect("no Linux stats").containers;
    assert!(listed_containers.iter().any(|c| c.attributes.as_ref().is_some_and(|a| a.id == web_id)));

    // containerd killed: the wasm container keeps running and answering.
    containerd.kill();
    assert_eq!(get_in(&net, web_addr, "/"), (200, "hello from wasm\n".into()));
    assert_eq!(state_of(&daemon, &web_id).await, ContainerState::ContainerRunning);
    assert!(containers_of(&daemon, &pod_id).await.contains(&web_id), "the wasm container is not listed");
    containerd.restart().await;

    // A daemon restart keeps the mixed pod: its guest ended with the daemon,
    // and stop and remove still reach both sides.
    daemon.sigterm_and_wait();
    let dir = daemon.dir().to_owned();
    drop(daemon);
    let daemon = Daemon::start_in(Some(&net), Some(dir), &args).await;
    let status = wait_exited(&mut daemon.runtime(), &web_id).await;
    assert_eq!(status.reason, "Error", "{status:#?}");
    assert_eq!(containers_of(&daemon, &pod_id).await, sorted(&[&web_id, &sidecar_id]));
    assert_eq!(times_listed(&daemon, &pod_id).await, 1);

    // A mixed pod whose sandbox wasmrun never joined (made while wasmrun was
    // not in front of containerd, here by containerd directly) is joined at
    // its first wasm container's CreateContainer.
    let mut late_config = pod_network_config("mixed-late", &new_uid());
    late_config.annotations.insert("run.oci.handler".into(), "wasm-smart".into());
    let _late_cgroup = PodCgroup::create(&late_config);
    let request = RunPodSandboxRequest { config: Some(late_config.clone()), runtime_handler: String::new() };
    let late_id = containerd.runtime().run_pod_sandbox(request).await.expect("containerd's RunPodSandbox");
    let late = Pod { id: late_id.into_inner().pod_sandbox_id, config: late_config };
    let late_web = container_config("web", &web_image.name, &[], &[], &[]);
    let late_web_id = late.create_and_start(&daemon, &late_web).await;
    let late_ip = pod_ips(&daemon, &late).await.remove(0);
    let late_addr: SocketAddr = format!("{late_ip}:{WEB_PORT}").parse().unwrap();
    assert_eq!(get_in(&net, late_addr, "/"), (200, "hello from wasm\n".into()));
    assert_eq!(containers_of(&daemon, &late.id).await, vec![late_web_id]);
    // RemovePodSandbox without a stop first, its guest serving: both sides go.
    let request = RemovePodSandboxRequest { pod_sandbox_id: late.id.clone() };
    daemon.runtime().remove_pod_sandbox(request).await.expect("RemovePodSandbox of the late-joined pod");
    assert_eq!(containers_of(&daemon, &late.id).await, Vec::<String>::new());
    let theirs = containerd.runtime().list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner();
    assert!(theirs.items.iter().all(|p| p.id != late.id), "containerd still has the late-joined pod: {theirs:#?}");

    // kubelet stops each container with its grace period, then the pod.
    let stop = StopContainerRequest { container_id: sidecar_id.clone(), timeout: 10 };
    daemon.runtime().stop_container(stop).await.expect("StopContainer of the sidecar");
    wait_log_line(&pod.log_path(&sidecar), "stdout", "sidecar got SIGTERM").await;
    for _ in 0..2 {
        let stopped = daemon.runtime().stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod_id.clone() }).await;
        stopped.expect("StopPodSandbox of the mixed pod");
    }
    assert_eq!(state_of(&daemon, &sidecar_id).await, ContainerState::ContainerExited);
    for _ in 0..2 {
        let removed =
            daemon.runtime().remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod_id.clone() }).await;
        removed.expect("RemovePodSandbox of the mixed pod");
    }
    // Nothing left on either side.
    assert_eq!(times_listed(&daemon, &pod_id).await, 0);
    assert_eq!(containers_of(&daemon, &pod_id).await, Vec::<String>::new());
    let theirs = containerd.runtime().list_pod_sandbox(ListPodSandboxRequest::default()).await.unwrap().into_inner();
    assert!(theirs.items.is_empty(), "containerd still has pods: {theirs:#?}");
    let theirs = containerd.runtime().list_containers(ListContainersRequest::default()).await.unwrap().into_inner();
    assert!(theirs.containers.is_empty(), "containerd still has containers: {theirs:#?}");
    let gone = daemon
        .runtime()
        .container_status(ContainerStatusRequest { container_id: web_id.clone(), verbose: false })
        .await;
    expect_code(gone, Code::NotFound, "ContainerStatus of the removed wasm container");
    assert_eq!(net.leftovers(&daemon.state()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_backing_runtime_a_mixed_pods_linux_container_is_refused_and_its_wasm_ones_run() {
    let daemon = Daemon::start().await;
    let wasm = pulled_fixture(&daemon, "hello", "mixed-alone-hello").await;
    let linux = linux_hello_image().await;
    let mut config = pod_config("mixed-alone", &new_uid());
    config.annotations.insert("run.oci.handler".into(), "wasm-smart".into());
    let pod = Pod::run_config(&daemon, config).await;

    let refused = pod.try_create(&daemon, &container_config("linux", &linux, &[], &[], &[])).await;
    let refused = expect_code(refused, Code::FailedPrecondition, "CreateContainer of a Linux image in a mixed pod");
    assert!(refused.message().contains(&linux), "the message does not name the image: {refused:?}");
    assert!(refused.message().contains("backing"), "the message does not say what is missing: {refused:?}");

    let (_, status) = pod.run_to_exit(&daemon, &container_config("wasm", &wasm.name, &[], &[], &[])).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"), "{status:#?}");
}
