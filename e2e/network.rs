//! Pod networking on Debian's real CNI plugins (bridge, host-local, portmap):
//! a namespace and an address per pod, guests' sockets in their pod, host
//! ports, NetworkReady, clean failure, and no leak, also across a daemon
//! killed with SIGKILL.
//!
//! Each test that makes pod networks runs the daemon (and the registry it
//! pulls from, and its own clients) inside a network namespace it creates
//! ([`TestNet`]); no traffic goes to a pod address from the machine's own
//! namespace.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use tonic::Code;
use wasmrun::api::{DnsConfig, PortMapping, Protocol, RemovePodSandboxRequest, StatusRequest, StopPodSandboxRequest};

use crate::harness::*;

/// The `NetworkReady` condition of the daemon's Status: (status, reason, message).
async fn network_ready(daemon: &Daemon) -> (bool, String, String) {
    let status = daemon.runtime().status(StatusRequest { verbose: false }).await.expect("Status").into_inner();
    let conditions = status.status.expect("Status without status").conditions;
    let ready = conditions.into_iter().find(|c| c.r#type == "NetworkReady").expect("no NetworkReady condition");
    (ready.status, ready.reason, ready.message)
}

async fn stop_and_remove(daemon: &Daemon, pod: &Pod) {
    let mut rt = daemon.runtime();
    for _ in 0..2 {
        rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() })
            .await
            .unwrap_or_else(|s| panic!("StopPodSandbox (twice is fine): {s:?}"));
    }
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.id.clone() })
        .await
        .unwrap_or_else(|s| panic!("RemovePodSandbox: {s:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_ready_follows_the_cni_config_directory() {
    let daemon = Daemon::start().await;
    let conf_dir = daemon.dir().join("net.d");
    std::fs::create_dir_all(&conf_dir).expect("create net.d");

    let (ready, reason, message) = network_ready(&daemon).await;
    assert!(!ready, "no configuration yet: {message}");
    assert_eq!(reason, "NetworkPluginNotReady");
    assert!(message.contains("cni plugin not initialized") && message.contains("no network config"), "{message}");
    // A pod that needs a network is refused; one on the host's is not.
    let result = Pod::try_run_config(&daemon, pod_network_config("no-cni", &new_uid())).await;
    let status = expect_code(result, Code::FailedPrecondition, "RunPodSandbox without a CNI configuration");
    assert!(status.message().contains("cni plugin not initialized"), "{}", status.message());
    Pod::run(&daemon, "host-network").await;

    // A configuration written later counts at once.
    std::fs::write(
        conf_dir.join("10-net.conflist"),
        r#"{"cniVersion":"1.0.0","name":"later","plugins":[{"type":"bridge","bridge":"unused0"}]}"#,
    )
    .expect("write a config");
    let (ready, reason, message) = network_ready(&daemon).await;
    assert!(ready, "{reason}: {message}");
    // Bad network settings of a pod are refused before any plugin runs, and leave no pod.
    let mut bandwidth = pod_network_config("bad-bandwidth", &new_uid());
    bandwidth.annotations.insert("kubernetes.io/ingress-bandwidth".into(), "fast".into());
    let status = expect_code(
        Pod::try_run_config(&daemon, bandwidth).await,
        Code::InvalidArgument,
        "RunPodSandbox with a bandwidth annotation that is not a quantity",
    );
    assert!(status.message().contains("kubernetes.io/ingress-bandwidth"), "{}", status.message());
    let mut dns = pod_network_config("bad-dns", &new_uid());
    dns.dns_config = Some(DnsConfig { servers: vec!["dns.example".into()], ..Default::default() });
    let status = expect_code(
        Pod::try_run_config(&daemon, dns).await,
        Code::InvalidArgument,
        "RunPodSandbox with a DNS server that is not an address",
    );
    assert!(status.message().contains("dns.example"), "{}", status.message());
    let pods = daemon.runtime().list_pod_sandbox(wasmrun::api::ListPodSandboxRequest { filter: None }).await.unwrap();
    assert_eq!(pods.into_inner().items.len(), 1, "only the host-network pod is kept");
    assert_eq!(std::fs::read_dir(daemon.state().join("netns")).map(|d| d.count()).unwrap_or(0), 0);
    // The first file in lexical order is the network: one that does not parse is an error, as in containerd.
    std::fs::write(conf_dir.join("05-broken.conf"), "{ not json").expect("write a broken config");
    let (ready, _, message) = network_ready(&daemon).await;
    assert!(!ready && message.contains("05-broken.conf"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_own_addresses_and_guests_serve_tcp_and_udp_on_them() {
    let image = push_bytes("network-net-p2", &fixture_p2("net-p2")).await;
    let mut net = TestNet::new("net-serve");
    net.write_bridge_config(&[]);
    net.serve_registry();
    let conf_dir = net.conf_dir();
    let daemon = Daemon::start_in(Some(&net), None, &["--cni-conf-dir", conf_dir.to_str().unwrap()]).await;
    assert!(network_ready(&daemon).await.0);
    pull(&daemon, &image.name).await;

    let mut config_a = pod_network_config("net-a", &new_uid());
    config_a.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port: 18080,
        host_ip: String::new(),
    }];
    let pod_a = Pod::run_config(&daemon, config_a).await;
    let ip_a = pod_ips(&daemon, &pod_a).await[0].clone();
    // Pod B resolves names with a DNS server of the node (the test's
    // namespace), through its search domain: `pod-a` is pod A.
    net.serve_dns(&[("pod-a.ns1.svc.e2e.test", &ip_a), ("web.ns1.svc.e2e.test", "10.1.2.3")]);
    let mut config_b = pod_network_config("net-b", &new_uid());
    config_b.dns_config = Some(DnsConfig {
        servers: vec![NODE_ADDRESS.into()],
        searches: vec!["ns1.svc.e2e.test".into(), "svc.e2e.test".into()],
        options: vec!["ndots:5".into()],
    });
    let pod_b = Pod::run_config(&daemon, config_b).await;
    let ip_b = pod_ips(&daemon, &pod_b).await[0].clone();
    assert_ne!(ip_a, ip_b);
    for ip in [&ip_a, &ip_b] {
        assert!(ip.starts_with("10.88.7."), "not from the bridge's range {POD_SUBNET}: {ip}");
    }

    // Both pods serve TCP on 8080: one port, two namespaces.
    let serve = |name: &str, args: &[&str]| container_config(name, &image.name, &[], args, &[]);
    let echo_a = serve("echo-a", &["tcp-echo", "8080"]);
    let echo_b = serve("echo-b", &["tcp-echo", "8080"]);
    let udp_a = serve("udp-a", &["udp-echo", "5353"]);
    pod_a.create_and_start(&daemon, &echo_a).await;
    pod_b.create_and_start(&daemon, &echo_b).await;
    pod_a.create_and_start(&daemon, &udp_a).await;
    wait_log_line(&pod_a.log_path(&echo_a), "stdout", "listening tcp 8080").await;
    wait_log_line(&pod_b.log_path(&echo_b), "stdout", "listening tcp 8080").await;
    wait_log_line(&pod_a.log_path(&udp_a), "stdout", "listening udp 5353").await;

    // From the test's namespace (the node), by each pod's address, and by the node's own address and the host port.
    let (a, b, host_port) = net.run(|| {
        (
            tcp_call(&format!("{ip_a}:8080"), "to a"),
            tcp_call(&format!("{ip_b}:8080"), "to b"),
            tcp_call(&format!("{NODE_ADDRESS}:18080"), "by host port"),
        )
    });
    assert_eq!(a, "echo:to a");
    assert_eq!(b, "echo:to b");
    assert_eq!(host_port, "echo:by host port");
    let udp = net.run(|| udp_call(&format!("{ip_a}:5353"), "datagram"));
    assert_eq!(udp, "echo:datagram");

    // From a guest in pod B to pod A's address, TCP and UDP.
    let call = serve("call-a", &["tcp-call", &format!("{ip_a}:8080"), "from b"]);
    let (_, status) = pod_b.run_to_exit(&daemon, &call).await;
    let lines = full_lines(&read_log(&pod_b.log_path(&call)));
    assert_eq!(status.exit_code, 0, "{lines:?}");
    assert!(has_line(&lines, "stdout", "reply:echo:from b"), "{lines:?}");
    let call_udp = serve("call-udp-a", &["udp-call", &format!("{ip_a}:5353"), "from b"]);
    let (_, status) = pod_b.run_to_exit(&daemon, &call_udp).await;
    let lines = full_lines(&read_log(&pod_b.log_path(&call_udp)));
    assert_eq!(status.exit_code, 0, "{lines:?}");
    assert!(has_line(&lines, "stdout", "reply:echo:from b"), "{lines:?}");
    // Names: a short one through the search domain, then a call by name.
    let lookup = serve("lookup-web", &["lookup", "web"]);
    let (_, status) = pod_b.run_to_exit(&daemon, &lookup).await;
    let lines = full_lines(&read_log(&pod_b.log_path(&lookup)));
    assert_eq!(status.exit_code, 0, "{lines:?}");
    assert!(has_line(&lines, "stdout", "addr:10.1.2.3"), "{lines:?}");
    let by_name = serve("call-by-name", &["tcp-call", "pod-a:8080", "by name"]);
    let (_, status) = pod_b.run_to_exit(&daemon, &by_name).await;
    let lines = full_lines(&read_log(&pod_b.log_path(&by_name)));
    assert_eq!(status.exit_code, 0, "{lines:?}");
    assert!(has_line(&lines, "stdout", "reply:echo:by name"), "{lines:?}");
    // The queries left from pod B's own address.
    let queries = std::fs::read_to_string(net.dir.join("dnsmasq.log")).unwrap_or_default();
    assert!(queries.contains(&format!("query[A] web.ns1.svc.e2e.test from {ip_b}")), "{queries}");
    let unknown = serve("lookup-unknown", &["lookup", "no-such-name"]);
    let (_, status) = pod_b.run_to_exit(&daemon, &unknown).await;
    assert_eq!(status.exit_code, 1, "{:?}", full_lines(&read_log(&pod_b.log_path(&unknown))));

    // A guest's 127.0.0.1 is its pod's loopback, never the node's: the test
    // registry listens on the node's 127.0.0.1, and pod B cannot reach it.
    let registry_port = registry().port.to_string();
    let call_node = serve("call-node", &["tcp-call", &format!("127.0.0.1:{registry_port}"), "x"]);
    let (_, status) = pod_b.run_to_exit(&daemon, &call_node).await;
    let lines = full_lines(&read_log(&pod_b.log_path(&call_node)));
    assert_eq!(status.exit_code, 1, "pod B reached the node's loopback: {lines:?}");

    stop_and_remove(&daemon, &pod_a).await;
    stop_and_remove(&daemon, &pod_b).await;
    assert_eq!(net.leftovers(&daemon.state()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_fails_the_pod_and_leaves_nothing_behind() {
    let net = TestNet::new("net-fail");
    // The bridge's ADD succeeds (a veth, an address), then a missing plugin fails.
    net.write_bridge_config(&[r#"{"type":"wasmrun-no-such-plugin"}"#]);
    let conf_dir = net.conf_dir();
    let daemon = Daemon::start_in(Some(&net), None, &["--cni-conf-dir", conf_dir.to_str().unwrap()]).await;
    let result = Pod::try_run_config(&daemon, pod_network_config("net-fail", &new_uid())).await;
    let status = expect_code(result, Code::FailedPrecondition, "RunPodSandbox with a missing plugin");
    assert!(status.message().contains("wasmrun-no-such-plugin"), "{}", status.message());
    assert_eq!(net.leftovers(&daemon.state()), Vec::<String>::new());
    let pods = daemon.runtime().list_pod_sandbox(wasmrun::api::ListPodSandboxRequest { filter: None }).await.unwrap();
    assert!(pods.into_inner().items.is_empty(), "a failed pod is listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_still_tears_down_the_pod_network_after_a_restart() {
    let net = TestNet::new("net-restart");
    net.write_bridge_config(&[]);
    let conf_dir = net.conf_dir();
    let args = ["--cni-conf-dir", conf_dir.to_str().unwrap()];
    let mut daemon = Daemon::start_in(Some(&net), None, &args).await;
    let pod = Pod::run_config(&daemon, pod_network_config("net-restart", &new_uid())).await;
    let ip = pod_ips(&daemon, &pod).await[0].clone();
    assert!(!net.leftovers(&daemon.state()).is_empty(), "the pod has a veth, a pinned namespace and a lease");
    daemon.sigkill();
    let daemon = Daemon::start_in(Some(&net), Some(daemon.dir().to_owned()), &args).await;
    assert_eq!(pod_ips(&daemon, &pod).await, [ip], "the pod's address survives the restart");
    stop_and_remove(&daemon, &pod).await;
    assert_eq!(net.leftovers(&daemon.state()), Vec::<String>::new());
}

/// Sends `text` and a newline over TCP to `addr`, and returns the reply line
/// (without its newline). Retries connecting for up to 10 s.
fn tcp_call(addr: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr.parse().expect("an address"), Duration::from_secs(2)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => panic!("connecting to {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set a timeout");
    writeln!(stream, "{text}").expect("send");
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).expect("read the reply");
    reply.trim_end_matches('\n').to_owned()
}

/// Sends `text` as one datagram to `addr` and returns the reply; resends up to 20 times.
fn udp_call(addr: &str, text: &str) -> String {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind UDP");
    socket.set_read_timeout(Some(Duration::from_millis(500))).expect("set a timeout");
    let mut buf = [0u8; 1500];
    for _ in 0..20 {
        socket.send_to(text.as_bytes(), addr).expect("send a datagram");
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no UDP reply from {addr}");
}
