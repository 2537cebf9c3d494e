//! Served components: a component exporting `wasi:http/incoming-handler` is
//! served over HTTP/1.1 by its container (a fresh instance per request), on
//! `0.0.0.0:8080` of its pod or on the address its env
//! `WASMTIME_HTTP_PROXY_SOCKET_ADDR` names. Keep-alive and concurrent
//! requests, the container's env and logs, traps and the memory limit per
//! request, stats, a graceful StopContainer, the concurrency ceiling, probes
//! and outgoing requests on a pod's own address, and a component that is
//! both a command and a handler.
//!
//! The guest is e2e/fixtures-http (see its doc for the paths it answers).
//! Pods on the host's network listen on the node's 127.0.0.1; the pod
//! network test runs the daemon and its clients in a [`TestNet`].

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wasmrun::api::{
    ContainerConfig, ContainerState, ContainerStatsRequest, ContainerStatus, DnsConfig, RemovePodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};

use crate::harness::*;

/// The env naming the address a served component listens on (`wasmtime serve`'s own).
const ADDR_ENV: &str = "WASMTIME_HTTP_PROXY_SOCKET_ADDR";
/// The port a served component listens on when its container does not set [`ADDR_ENV`].
const DEFAULT_PORT: u16 = 8080;

/// Pushes the fixture `name` of e2e/fixtures-http as "e2e/<repo>:v1" and
/// pulls it; returns the image's name.
async fn pulled_http(daemon: &Daemon, name: &str, repo: &str) -> String {
    let image = push_bytes(repo, &fixture_http(name)).await;
    pull(daemon, &image.name).await;
    image.name
}

/// A container of `image` served on a free port of the node's 127.0.0.1
/// (through [`ADDR_ENV`]), with `envs` too; and that address.
fn on_the_node(name: &str, image: &str, envs: &[(&str, &str)]) -> (ContainerConfig, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = addr.to_string();
    let mut envs = envs.to_vec();
    envs.push((ADDR_ENV, &listen));
    (container_config(name, image, &[], &[], &envs), addr)
}

/// `method path` with `body` on a connection of its own; panics when no response comes.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let (status, _, body) = http_request(addr, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: no response: {e}"));
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, b"").await
}

/// StopContainer, bounded so that a broken stop cannot hang the test run.
async fn stop_container(daemon: &Daemon, id: &str, timeout: i64) {
    let mut rt = daemon.runtime();
    let stop = rt.stop_container(StopContainerRequest { container_id: id.into(), timeout });
    let limit = Duration::from_secs(timeout.max(0) as u64 + 60);
    tokio::time::timeout(limit, stop)
        .await
        .unwrap_or_else(|_| panic!("StopContainer {id} (timeout {timeout}) did not return within {limit:?}"))
        .unwrap_or_else(|s| panic!("StopContainer {id}: {s:?}"));
}

/// The container's CPU usage (nanoseconds, cumulative) from ContainerStats.
async fn cpu_nanos(daemon: &Daemon, id: &str) -> u64 {
    let stats = container_stats(daemon, id).await;
    stats
        .cpu
        .as_ref()
        .and_then(|cpu| cpu.usage_core_nano_seconds.as_ref())
        .unwrap_or_else(|| panic!("stats without usage_core_nano_seconds: {stats:#?}"))
        .value
}

/// The container's memory working set (bytes) from ContainerStats: what its live instances hold.
async fn working_set(daemon: &Daemon, id: &str) -> u64 {
    let stats = container_stats(daemon, id).await;
    stats
        .memory
        .as_ref()
        .and_then(|memory| memory.working_set_bytes.as_ref())
        .unwrap_or_else(|| panic!("stats without working_set_bytes: {stats:#?}"))
        .value
}

async fn container_stats(daemon: &Daemon, id: &str) -> wasmrun::api::ContainerStats {
    daemon
        .runtime()
        .container_stats(ContainerStatsRequest { container_id: id.into() })
        .await
        .unwrap_or_else(|s| panic!("ContainerStats {id}: {s:?}"))
        .into_inner()
        .stats
        .expect("ContainerStats without stats")
}

/// Polls a (possibly still growing) CRI log until a full line, on `stream`
/// when given, contains `needle`; returns that line. Panics after [`WAIT_LIMIT`].
async fn wait_log_containing(path: &Path, stream: Option<&str>, needle: &str) -> String {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let lines = full_lines(&parse_log(&text, false));
        let found = lines.into_iter().find(|(s, line)| stream.is_none_or(|want| s == want) && line.contains(needle));
        if let Some((_, line)) = found {
            return line;
        }
        if Instant::now() > deadline {
            panic!(
                "log {} has no {} line containing {needle:?} after {WAIT_LIMIT:?}; it holds:\n{}",
                path.display(),
                stream.unwrap_or("stdout or stderr"),
                text.chars().take(4000).collect::<String>()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_component_answers_keep_alive_requests_logs_traps_and_stops_cleanly() {
    let daemon = Daemon::start().await;
    let image = pulled_http(&daemon, "http-service", "http-node").await;
    let pod = Pod::run(&daemon, "http-node").await;
    let (config, addr) = on_the_node("web", &image, &[("GREETING", "hello, env")]);
    let id = pod.create_and_start(&daemon, &config).await;
    let log = pod.log_path(&config);
    wait_state(&mut daemon.runtime(), &id, ContainerState::ContainerRunning).await;

    // Listening once StartContainer has returned.
    assert_eq!(get(addr, "/").await, (200, "hello from wasm\n".into()));
    let (status, headers, body) = http_request(addr, "POST", "/echo", b"the body").await.expect("POST /echo");
    assert_eq!((status, body.as_slice()), (200, &b"the body"[..]));
    assert_eq!(headers.get("x-method").map(|v| v.as_bytes()), Some(&b"POST"[..]), "{headers:?}");

    // 50 requests, 8 at a time on 8 keep-alive connections; each gets its own answer.
    let cpu_before = cpu_nanos(&daemon, &id).await;
    let mut connections = tokio::task::JoinSet::new();
    for first in 0..8 {
        connections.spawn(async move {
            let mut connection = HttpConnection::connect(addr).await.expect("connect");
            let mut answers = Vec::new();
            for n in (first..50).step_by(8) {
                let sent = format!("request {n}");
                let (status, _, body) = connection
                    .send("POST", &format!("/echo?n={n}"), &[], sent.as_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("request {n} on keep-alive connection {first}: {e}"));
                answers.push((status, sent, String::from_utf8_lossy(&body).into_owned()));
            }
            answers
        });
    }
    let answers: Vec<_> = connections.join_all().await.into_iter().flatten().collect();
    assert_eq!(answers.len(), 50);
    for (status, sent, body) in &answers {
        assert_eq!((*status, body), (200, sent), "{answers:?}");
    }
    // The instances' CPU time counts in the container's stats.
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let cpu_after = cpu_nanos(&daemon, &id).await;
        if cpu_after > cpu_before {
            break;
        }
        assert!(Instant::now() < deadline, "CPU usage still {cpu_after} ns (before the load: {cpu_before} ns)");
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    // Each instance gets the container's env.
    assert_eq!(get(addr, "/env?name=GREETING").await, (200, "hello, env".into()));
    assert_eq!(get(addr, "/env?name=WASMRUN_E2E_UNSET").await.0, 404);

    // Both streams of every instance reach the CRI log file.
    for n in 0..3 {
        let line = format!("line-{n}");
        assert_eq!(get(addr, &format!("/log?msg={line}")).await, (200, "logged".into()));
        wait_log_line(&log, "stdout", &line).await;
        wait_log_line(&log, "stderr", &line).await;
    }

    // A trap fails its request only: 500, logged; the next request is answered.
    let (status, body) = get(addr, "/trap").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("the component trapped") && body.contains("unreachable"), "{body}");
    assert!(!body.contains("backtrace"), "the client gets the trap, not the daemon's details: {body}");
    assert_eq!(get(addr, "/").await, (200, "hello from wasm\n".into()));
    // The guest's panic message, then the trap itself (from the daemon).
    wait_log_containing(&log, Some("stderr"), "trap requested by /trap").await;
    wait_log_containing(&log, Some("stderr"), "unreachable").await;
    assert!(daemon.log().contains("unreachable"), "the daemon log does not mention the trap");
    let running = container_status(&mut daemon.runtime(), &id, false).await.status.expect("status");
    assert_eq!(running.state(), ContainerState::ContainerRunning, "{running:#?}");

    // Nothing in flight: the stop ends the container at once, as completed.
    stop_container(&daemon, &id, 10).await;
    let status = wait_exited(&mut daemon.runtime(), &id).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"), "{status:#?}");
    assert!(http_request(addr, "GET", "/", b"").await.is_err(), "{addr} still answers after StopContainer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_memory_limit_fails_alone() {
    let daemon = Daemon::start().await;
    let image = pulled_http(&daemon, "http-service", "http-memory").await;
    let pod = Pod::run(&daemon, "http-memory").await;
    let (mut config, addr) = on_the_node("web", &image, &[]);
    let resources = config.linux.as_mut().and_then(|linux| linux.resources.as_mut()).expect("resources");
    resources.memory_limit_in_bytes = 16 << 20;
    let id = pod.create_and_start(&daemon, &config).await;

    assert_eq!(get(addr, "/alloc?mb=64").await.0, 500);
    wait_log_containing(&pod.log_path(&config), None, "memory limit").await;
    // The limit is per instance: the next one starts afresh.
    assert_eq!(get(addr, "/alloc?mb=1").await, (200, "allocated 1 MiB".into()));
    let status = container_status(&mut daemon.runtime(), &id, false).await.status.expect("status");
    assert_eq!(status.state(), ContainerState::ContainerRunning, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_lets_requests_in_flight_finish_within_the_timeout() {
    let daemon = Daemon::start().await;
    let image = pulled_http(&daemon, "http-service", "http-stop").await;
    let pod = Pod::run(&daemon, "http-stop").await;

    // A slow request finishes, and the container exits as completed.
    let (slow, addr) = on_the_node("slow", &image, &[]);
    let id = pod.create_and_start(&daemon, &slow).await;
    let in_flight = tokio::spawn(async move { http_request(addr, "GET", "/sleep?ms=1500", b"").await });
    wait_log_line(&pod.log_path(&slow), "stdout", "sleeping 1500 ms").await;
    stop_container(&daemon, &id, 30).await;
    let (status, _, body) = in_flight.await.expect("the request's task").expect("the request in flight at the stop");
    assert_eq!((status, body.as_slice()), (200, &b"slept 1500 ms"[..]));
    let exited = wait_exited(&mut daemon.runtime(), &id).await;
    assert_eq!((exited.exit_code, exited.reason.as_str()), (0, "Completed"), "{exited:#?}");

    // A request that does not finish within the timeout is ended: 137.
    let (hang, addr) = on_the_node("hang", &image, &[]);
    let id = pod.create_and_start(&daemon, &hang).await;
    let in_flight = tokio::spawn(async move { http_request(addr, "GET", "/hang", b"").await });
    wait_log_line(&pod.log_path(&hang), "stdout", "hanging").await;
    stop_container(&daemon, &id, 1).await;
    // The connection closed without a response, or an error response.
    if let Ok((status, _, body)) = in_flight.await.expect("the request's task") {
        assert_ne!(status, 200, "a request ended by the stop succeeded: {}", String::from_utf8_lossy(&body));
    }
    let exited = wait_exited(&mut daemon.runtime(), &id).await;
    assert_eq!((exited.exit_code, exited.reason.as_str()), (137, "Error"), "{exited:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_concurrency_ceiling_get_503() {
    let daemon = Daemon::start_with(None, &["--http-max-concurrent-requests", "2"]).await;
    let image = pulled_http(&daemon, "http-service", "http-ceiling").await;
    let pod = Pod::run(&daemon, "http-ceiling").await;
    let (config, addr) = on_the_node("web", &image, &[]);
    let id = pod.create_and_start(&daemon, &config).await;
    assert_eq!(working_set(&daemon, &id).await, 0, "an idle served container holds no instance");

    // Two requests in flight (each has printed its line)...
    let slow: Vec<_> = [4000, 4001]
        .into_iter()
        .map(|ms| tokio::spawn(async move { http_request(addr, "GET", &format!("/sleep?ms={ms}"), b"").await }))
        .collect();
    for ms in [4000, 4001] {
        wait_log_line(&pod.log_path(&config), "stdout", &format!("sleeping {ms} ms")).await;
    }
    // ...fill the ceiling: a third is refused at once.
    assert_eq!(get(addr, "/").await.0, 503);
    // The two live instances' memory is the container's.
    assert!(working_set(&daemon, &id).await >= 2 * 65536, "two live instances hold at least a page each");
    for (task, ms) in slow.into_iter().zip([4000, 4001]) {
        let (status, _, body) = task.await.expect("the request's task").expect("a request under the ceiling");
        assert_eq!((status, String::from_utf8_lossy(&body).into_owned()), (200, format!("slept {ms} ms")));
    }
    assert_eq!(get(addr, "/").await, (200, "hello from wasm\n".into()));
    // Once the instances are gone, so is their memory.
    let deadline = Instant::now() + WAIT_LIMIT;
    while working_set(&daemon, &id).await != 0 {
        assert!(Instant::now() < deadline, "ended instances still count in the working set");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_containers_share_the_daemons_pool_of_instances() {
    let daemon = Daemon::start_with(None, &["--http-instance-pool-size", "2"]).await;
    let image = pulled_http(&daemon, "http-service", "http-pool").await;
    let pod = Pod::run(&daemon, "http-pool").await;
    let (busy, busy_addr) = on_the_node("busy", &image, &[]);
    let (other, other_addr) = on_the_node("other", &image, &[]);
    pod.create_and_start(&daemon, &busy).await;
    pod.create_and_start(&daemon, &other).await;

    // Two requests of one container take both slots of the daemon's pool...
    let slow: Vec<_> = [4000, 4001]
        .into_iter()
        .map(|ms| tokio::spawn(async move { http_request(busy_addr, "GET", &format!("/sleep?ms={ms}"), b"").await }))
        .collect();
    for ms in [4000, 4001] {
        wait_log_line(&pod.log_path(&busy), "stdout", &format!("sleeping {ms} ms")).await;
    }
    // ...so another container's request finds none: 503, and a line in its log.
    let (status, body) = get(other_addr, "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot make an instance"), "{body}");
    wait_log_containing(&pod.log_path(&other), Some("stderr"), "cannot make an instance").await;
    for task in slow {
        let (status, _, _) = task.await.expect("the request's task").expect("a request that had a slot");
        assert_eq!(status, 200);
    }
    assert_eq!(get(other_addr, "/").await, (200, "hello from wasm\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_is_also_a_command_is_served_only_when_asked() {
    let daemon = Daemon::start().await;
    let image = pulled_http(&daemon, "http-command", "http-command").await;
    let pod = Pod::run(&daemon, "http-command").await;

    // Without the env: `wasi:cli/run`.
    let command = container_config("command", &image, &[], &[], &[]);
    let (_, status) = pod.run_to_exit(&daemon, &command).await;
    let lines = full_lines(&read_log(&pod.log_path(&command)));
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"), "{status:#?} {lines:#?}");
    assert!(has_line(&lines, "stdout", "ran as a command"), "{lines:#?}");

    // With it: the handler, and `run` is not called.
    let (served, addr) = on_the_node("served", &image, &[]);
    let id = pod.create_and_start(&daemon, &served).await;
    assert_eq!(get(addr, "/").await, (200, "hello from the served command\n".into()));
    let status = container_status(&mut daemon.runtime(), &id, false).await.status.expect("status");
    assert_eq!(status.state(), ContainerState::ContainerRunning, "{status:#?}");
    stop_container(&daemon, &id, 10).await;
    let status = wait_exited(&mut daemon.runtime(), &id).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"), "{status:#?}");
    let lines = full_lines(&read_log(&pod.log_path(&served)));
    assert!(!has_line(&lines, "stdout", "ran as a command"), "the served component ran as a command: {lines:#?}");

    // An address that is not IP:PORT, or has no port, fails CreateContainer, naming it.
    for (name, value) in [("bad-address", "localhost"), ("port-zero", "127.0.0.1:0")] {
        let bad = container_config(name, &image, &[], &[], &[(ADDR_ENV, value)]);
        let created = pod.try_create(&daemon, &bad).await;
        let refused =
            expect_code(created, tonic::Code::InvalidArgument, "CreateContainer with a bad address to serve on");
        assert!(refused.message().contains(ADDR_ENV) && refused.message().contains(value), "{refused:?}");
    }
}

/// Runs `work` to its end on a thread in `net`'s namespace (so that its
/// sockets are made there), on a runtime of its own.
fn in_net<T: Send>(net: &TestNet, work: impl Future<Output = T> + Send) -> T {
    net.run(move || {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(work)
    })
}

/// A tiny HTTP server of the test: answers each of the next `count`
/// connections with 200 `from the upstream` and closes it. Sends (peer
/// address, request line) of each on the channel returned.
fn serve_upstream(listener: TcpListener, count: usize) -> mpsc::Receiver<(SocketAddr, String)> {
    let (seen, requests) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..count {
            let Ok((mut stream, peer)) = listener.accept() else { return };
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set a timeout");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let body = "from the upstream";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let head = String::from_utf8_lossy(&head);
            let _ = seen.send((peer, head.lines().next().unwrap_or_default().to_owned()));
        }
    });
    requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_serves_on_its_own_address_answers_probes_and_makes_outgoing_requests() {
    let image = push_bytes("http-pod-ip", &fixture_http("http-service")).await;
    let mut net = TestNet::new("http-net");
    net.write_bridge_config(&[]);
    net.serve_registry();
    // The upstream's name, for the pod's DNS server (a DNS server of the node).
    net.serve_dns(&[("upstream.e2e.test", NODE_ADDRESS)]);
    let conf_dir = net.conf_dir();
    let daemon = Daemon::start_in(Some(&net), None, &["--cni-conf-dir", conf_dir.to_str().unwrap()]).await;
    pull(&daemon, &image.name).await;

    let mut config = pod_network_config("http-pod", &new_uid());
    config.dns_config =
        Some(DnsConfig { servers: vec![NODE_ADDRESS.into()], searches: vec!["e2e.test".into()], options: vec![] });
    let pod = Pod::run_config(&daemon, config).await;
    let ip = pod_ips(&daemon, &pod).await.remove(0);
    let addr: SocketAddr = format!("{ip}:{DEFAULT_PORT}").parse().expect("the pod's address");
    let web = container_config("web", &image.name, &[], &[], &[]);
    pod.create_and_start(&daemon, &web).await;

    // The upstream listens on the node's address, in the test's namespace.
    let upstream = net.run(|| TcpListener::bind((NODE_ADDRESS, 0)).expect("bind the upstream"));
    let upstream_port = upstream.local_addr().expect("the upstream's address").port();
    let upstream_requests = serve_upstream(upstream, 2);

    let (root, probe, tcp_probe, fetched, fetched_by_name) = in_net(&net, async move {
        let root = http_request(addr, "GET", "/", b"").await;
        // kubelet's httpGet probe: its headers, a connection of its own.
        let mut prober = HttpConnection::connect(addr).await.expect("connect as the prober");
        let probe_headers = [("User-Agent", "kube-probe/1.34"), ("Accept", "*/*"), ("Connection", "close")];
        let probe = prober.send("GET", "/healthz", &probe_headers, b"").await;
        // kubelet's tcpSocket probe: a connection, nothing sent.
        let tcp_probe = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map(drop);
        let fetch = |host: String| format!("/fetch?url=http://{host}:{upstream_port}/x");
        let fetched = http_request(addr, "GET", &fetch(NODE_ADDRESS.into()), b"").await;
        let fetched_by_name = http_request(addr, "GET", &fetch("upstream".into()), b"").await;
        (root, probe, tcp_probe, fetched, fetched_by_name)
    });
    let text = |response: std::io::Result<HttpResponse>, what: &str| {
        let (status, _, body) = response.unwrap_or_else(|e| panic!("{what}: no response: {e}"));
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(text(root, "GET / on the pod's address"), (200, "hello from wasm\n".into()));
    let (status, body) = text(probe, "the httpGet probe");
    assert!((200..400).contains(&status), "the httpGet probe failed: {status} {body}");
    tcp_probe.unwrap_or_else(|e| panic!("the tcpSocket probe failed: {e}"));
    assert_eq!(text(fetched, "fetch by address"), (200, "status 200: from the upstream".into()));
    assert_eq!(text(fetched_by_name, "fetch by name"), (200, "status 200: from the upstream".into()));
    // Both requests left from the pod's own address.
    for _ in 0..2 {
        let (peer, line) = upstream_requests.recv_timeout(WAIT_LIMIT).expect("the upstream saw no request");
        assert_eq!(peer.ip().to_string(), ip, "the outgoing request did not leave from the pod");
        assert_eq!(line, "GET /x HTTP/1.1");
    }

    // A second served container of the pod wants the same port: StartContainer fails.
    let second = container_config("web-2", &image.name, &[], &[], &[]);
    let second_id = pod.create(&daemon, &second).await;
    let started = daemon.runtime().start_container(StartContainerRequest { container_id: second_id.clone() }).await;
    let refused = started.expect_err("StartContainer of a second server on the pod's port 8080");
    assert!(refused.message().contains(&format!("0.0.0.0:{DEFAULT_PORT}")), "{refused:?}");
    let status: ContainerStatus = wait_exited(&mut daemon.runtime(), &second_id).await;
    assert_eq!(status.reason, "StartError", "{status:#?}");

    let mut rt = daemon.runtime();
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await.expect("StopPodSandbox");
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() }).await.expect("RemovePodSandbox");
    assert_eq!(net.leftovers(&daemon.state()), Vec::<String>::new());
}
