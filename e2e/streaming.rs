//! Exec, Attach and PortForward through the streaming server, driven by
//! clients nobody here wrote: the official Kubernetes Python client's
//! websocket code (`kubernetes` on PyPI, e2e/clients/k8s_stream.py),
//! speaking `v5.channel.k8s.io` for exec and `v4.channel.k8s.io`
//! port-forward framing, and npm `spdy-transport` speaking SPDY/3.1 as
//! kubelet's proxy and crictl do (e2e/clients/spdy_stream.js, streams
//! created as client-go creates them). URLs are single-use; a client that
//! goes away leaves no instance running; a port-forward reaches a guest's
//! TCP listener and a served component inside their pods' own network
//! namespaces.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use tonic::Code;
use wasmrun::api::{AttachRequest, ContainerConfig, ContainerState, ExecRequest, PortForwardRequest};

use crate::exec::{exec_image, wait_for_execs};
use crate::harness::*;

/// How to install the client.
const KUBERNETES_INSTALL: &str = "pip install kubernetes";

/// Runs e2e/clients/k8s_stream.py with `args` (inside `net` when given);
/// returns the JSON it printed.
fn k8s_stream(net: Option<&TestNet>, args: &[&str]) -> Value {
    let python = require_program("python3", &[], "apt-get install -y python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/clients/k8s_stream.py");
    let mut cmd = net.map_or_else(|| Command::new(&python), |net| net.command(&python));
    cmd.arg(script).args(args);
    let output = run_tool(&format!("the Kubernetes Python client ({KUBERNETES_INSTALL})"), &mut cmd);
    serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|e| panic!("the client printed no JSON ({e}): {}\n{}", output.stdout, output.stderr))
}

/// How to install the SPDY client's package (test.sh does).
const SPDY_INSTALL: &str = "npm ci --prefix e2e/clients";

/// Runs e2e/clients/spdy_stream.js (npm `spdy-transport`) with `args`
/// (inside `net` when given); returns the JSON it printed.
fn spdy_stream(net: Option<&TestNet>, args: &[&str]) -> Value {
    let node = require_program("node", &[], "apt-get install -y nodejs npm");
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/clients");
    assert!(
        clients.join("node_modules/spdy-transport").is_dir(),
        "npm `spdy-transport` is not installed for e2e/clients: run `{SPDY_INSTALL}`"
    );
    let mut cmd = net.map_or_else(|| Command::new(&node), |net| net.command(&node));
    cmd.arg(clients.join("spdy_stream.js")).args(args);
    let output = run_tool(&format!("the SPDY client ({SPDY_INSTALL})"), &mut cmd);
    let seen: Value = serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|e| panic!("the client printed no JSON ({e}): {}\n{}", output.stdout, output.stderr));
    assert!(seen.get("exception").is_none() && seen["timeout"] != true, "{args:?}: {seen}");
    seen
}

/// A SPDY exec or attach that ended cleanly: every stream ended with a FIN, no reset or error.
fn assert_clean(seen: &Value) {
    assert_eq!(seen["transport_errors"], json!([]), "{seen}");
    let fin = seen["fin"].as_object().unwrap_or_else(|| panic!("no fin: {seen}"));
    assert!(fin.values().all(|ended| ended == true), "a stream not ended with FIN: {seen}");
}

/// Upgrades `url` to SPDY/3.1 by hand (protocol v4), sends `frames`, and
/// returns every byte the server sent after its 101 until it closed.
fn spdy_raw(url: &str, frames: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (address, path) = rest.split_once('/').expect("a path");
    let mut socket = std::net::TcpStream::connect(address).expect("connect to the streaming server");
    socket.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).unwrap();
    socket.write_all(frames).unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).expect("the server closes the connection");
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer") + 4;
    let head = String::from_utf8_lossy(&answer[..end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    answer.split_off(end)
}

async fn exec_url(rt: &mut Runtime, id: &str, cmd: &[&str], stdin: bool) -> String {
    let request = ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdin,
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let url = rt.exec(request).await.unwrap_or_else(|s| panic!("Exec {cmd:?}: {s:?}")).into_inner().url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    url
}

/// Runs `cmd` through an Exec URL; returns the client's view.
async fn exec(rt: &mut Runtime, id: &str, cmd: &[&str], stdin: Option<&str>) -> Value {
    let url = exec_url(rt, id, cmd, stdin.is_some()).await;
    let mut args = vec!["exec", url.as_str()];
    args.extend(stdin);
    let seen = tokio::task::block_in_place(|| k8s_stream(None, &args));
    assert!(seen.get("exception").is_none(), "{cmd:?}: {seen}");
    assert_eq!(seen["protocol"], "v5.channel.k8s.io", "{seen}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_attach_stream_to_websocket_and_spdy_clients() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let image = exec_image("streaming-exec");
    pull(&daemon, &image).await;
    let pod = Pod::run(&daemon, "streaming-exec").await;
    let state = scratch_dir("streaming-state");
    let mut config = container_config("app", &image, &[], &["serve", "/state"], &[]);
    config.mounts = vec![mount("/state", &state, false)];
    let id = pod.create_and_start(&daemon, &config).await;
    wait_log_line(&pod.log_path(&config), "stdout", "serving").await;

    let seen = exec(&mut rt, &id, &["exectool", "check", "/state"], None).await;
    assert_eq!((seen["stdout"].as_str(), seen["returncode"].as_i64()), (Some("healthy\n"), Some(0)), "{seen}");
    let seen = exec(&mut rt, &id, &["exectool", "exit", "3"], None).await;
    assert_eq!(seen["returncode"], 3, "{seen}");
    assert!(seen["error"].as_str().unwrap().contains("NonZeroExitCode"), "{seen}");
    // stdin, closed by the client (v5), reaches the guest and ends its input.
    let seen = exec(&mut rt, &id, &["exectool", "echo"], Some("hello\nworld\n")).await;
    assert_eq!((seen["stdout"].as_str(), seen["stderr"].as_str()), (Some("hello\nworld\n"), Some("eof\n")), "{seen}");
    assert_eq!(seen["returncode"], 0, "{seen}");
    let seen = exec(&mut rt, &id, &["sh", "-c", "ls"], None).await;
    assert_eq!((seen["stderr"].as_str(), seen["returncode"].as_i64()), (Some("sh: program not found\n"), Some(127)));

    // With a TTY, stderr comes on stdout's channel, as a terminal shows both.
    let request =
        ExecRequest { container_id: id.clone(), cmd: vec!["sh".into()], tty: true, stdout: true, ..Default::default() };
    let url = rt.exec(request).await.expect("Exec with a TTY").into_inner().url;
    let seen = tokio::task::block_in_place(|| k8s_stream(None, &["exec", &url]));
    assert_eq!((seen["stdout"].as_str(), seen["returncode"].as_i64()), (Some("sh: program not found\n"), Some(127)));

    // A URL is good once.
    let url = exec_url(&mut rt, &id, &["exectool", "pwd"], false).await;
    let first = tokio::task::block_in_place(|| k8s_stream(None, &["exec", &url]));
    assert_eq!(first["returncode"], 0, "{first}");
    let again = tokio::task::block_in_place(|| k8s_stream(None, &["exec", &url]));
    assert!(again["exception"].as_str().is_some_and(|e| e.contains("404")), "a used URL answered: {again}");
    let made_up =
        url.rsplit_once('/').map(|(base, _)| format!("{base}/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")).unwrap();
    let refused = tokio::task::block_in_place(|| k8s_stream(None, &["exec", &made_up]));
    assert!(refused["exception"].as_str().is_some_and(|e| e.contains("404")), "{refused}");

    // A client that goes away mid-stream leaves no instance running.
    let url = exec_url(&mut rt, &id, &["exectool", "flood", "1000000000"], false).await;
    let left = tokio::task::block_in_place(|| k8s_stream(None, &["leave", &url]));
    assert!(left["first"].as_str().is_some_and(|out| out.starts_with('x')), "{left}");
    wait_for_execs(&mut rt, &id, 0).await;

    // The same over SPDY/3.1, as kubelet's proxy and crictl connect.
    let url = exec_url(&mut rt, &id, &["exectool", "check", "/state"], false).await;
    let seen = tokio::task::block_in_place(|| spdy_stream(None, &["exec", &url]));
    assert_eq!(seen["protocol"], "v4.channel.k8s.io", "{seen}");
    assert_eq!((seen["stdout"].as_str(), seen["returncode"].as_i64()), (Some("healthy\n"), Some(0)), "{seen}");
    assert_clean(&seen);
    let url = exec_url(&mut rt, &id, &["exectool", "exit", "3"], false).await;
    let seen = tokio::task::block_in_place(|| spdy_stream(None, &["exec", &url]));
    assert_eq!((seen["returncode"].as_i64(), seen["status"]["reason"].as_str()), (Some(3), Some("NonZeroExitCode")));
    // stdin beyond the first 64 KiB window: the server's WINDOW_UPDATEs let the client send on.
    let big_stdin = scratch_dir("spdy-stdin").join("stdin");
    let lines: String = (0..20_000).map(|i| format!("line {i:05}\n")).collect();
    std::fs::write(&big_stdin, &lines).unwrap();
    let url = exec_url(&mut rt, &id, &["exectool", "echo"], true).await;
    let seen =
        tokio::task::block_in_place(|| spdy_stream(None, &["exec", &url, "--stdin-file", big_stdin.to_str().unwrap()]));
    assert_eq!(seen["stdout"].as_str().map(str::len), Some(lines.len()), "stdin echoed whole");
    assert!(seen["stdout"] == lines.as_str() && seen["stderr"] == "eof\n" && seen["returncode"] == 0);
    assert_clean(&seen);
    // Output beyond the client's window arrives whole.
    let url = exec_url(&mut rt, &id, &["exectool", "flood", "3000000"], false).await;
    let seen = tokio::task::block_in_place(|| spdy_stream(None, &["exec", &url]));
    assert_eq!((seen["stdout"].as_str().map(str::len), seen["returncode"].as_i64()), (Some(3_000_000), Some(0)));
    // v2: the status is a failure's text, nothing for success.
    let url = exec_url(&mut rt, &id, &["exectool", "exit", "4"], false).await;
    let seen = tokio::task::block_in_place(|| spdy_stream(None, &["exec", &url, "--protocols", "v2.channel.k8s.io"]));
    assert_eq!(seen["protocol"], "v2.channel.k8s.io", "{seen}");
    assert!(seen["error"].as_str().is_some_and(|e| e.starts_with("command terminated with non-zero exit code")));
    // A TTY brings a resize stream (v4); WASI has no terminal to resize.
    let request =
        ExecRequest { container_id: id.clone(), cmd: vec!["sh".into()], tty: true, stdout: true, ..Default::default() };
    let url = rt.exec(request).await.expect("Exec with a TTY").into_inner().url;
    let seen = tokio::task::block_in_place(|| spdy_stream(None, &["exec", &url, "--tty", "--resize", "80x24"]));
    assert_eq!((seen["stdout"].as_str(), seen["returncode"].as_i64()), (Some("sh: program not found\n"), Some(127)));
    assert_clean(&seen);
    // A used URL, and a protocol nobody serves.
    let seen = tokio::task::block_in_place(|| spdy_stream(None, &["exec", &url]));
    assert_eq!(seen["http_status"], 404, "{seen}");
    let url = exec_url(&mut rt, &id, &["exectool", "pwd"], false).await;
    let seen = tokio::task::block_in_place(|| spdy_stream(None, &["exec", &url, "--protocols", "v5.channel.k8s.io"]));
    assert_eq!(seen["http_status"], 403, "{seen}");
    // A frame of another SPDY version ends the connection with GOAWAY
    // PROTOCOL_ERROR (no stream accepted: last good 0); the daemon goes on.
    let url = exec_url(&mut rt, &id, &["exectool", "pwd"], false).await;
    let spdy2_ping = [0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1];
    let answer = tokio::task::block_in_place(|| spdy_raw(&url, &spdy2_ping));
    let go_away = [0x80, 0x03, 0x00, 0x07, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1];
    assert_eq!(answer, go_away, "{answer:02x?}");
    // A client that drops the connection mid-stream leaves no instance running.
    let url = exec_url(&mut rt, &id, &["exectool", "flood", "1000000000"], false).await;
    let left = tokio::task::block_in_place(|| spdy_stream(None, &["leave", &url]));
    assert!(left["first"].as_str().is_some_and(|out| out.starts_with('x')), "{left}");
    wait_for_execs(&mut rt, &id, 0).await;

    // Requests kubelet's streaming server refuses, and unknown or stopped objects.
    let request = |tty, stdin, stdout, stderr| ExecRequest {
        container_id: id.clone(),
        cmd: vec!["exectool".into()],
        tty,
        stdin,
        stdout,
        stderr,
    };
    for (bad, code) in [
        (request(true, false, true, true), Code::InvalidArgument),
        (request(false, false, false, false), Code::InvalidArgument),
        (ExecRequest { container_id: random_id(), ..request(false, false, true, false) }, Code::NotFound),
        (ExecRequest { cmd: vec![], ..request(false, false, true, false) }, Code::InvalidArgument),
    ] {
        let status = rt.exec(bad.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{bad:?}: {status:?}");
    }
    let unknown = rt.port_forward(PortForwardRequest { pod_sandbox_id: random_id(), port: vec![80] }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    let attach = rt.attach(AttachRequest { container_id: random_id(), stdout: true, ..Default::default() }).await;
    assert_eq!(attach.unwrap_err().code(), Code::NotFound);
    let attach = rt.attach(AttachRequest { container_id: id.clone(), tty: true, stderr: true, ..Default::default() });
    assert_eq!(attach.await.unwrap_err().code(), Code::InvalidArgument);

    // Attach to a guest that echoes its stdin (`stdin` and `stdin_once`):
    // the client's stdin reaches it, its output comes back, and the
    // client's closing stdin is the guest's end of input.
    let mut config = container_config("echo", &image, &[], &["echo"], &[]);
    (config.stdin, config.stdin_once) = (true, true);
    let echo_id = pod.create_and_start(&daemon, &config).await;
    let request = AttachRequest { container_id: echo_id.clone(), stdin: true, stdout: true, stderr: true, tty: false };
    let url = rt.attach(request).await.expect("Attach").into_inner().url;
    let seen = tokio::task::block_in_place(|| k8s_stream(None, &["exec", &url, "ping\n"]));
    assert_eq!((seen["stdout"].as_str(), seen["stderr"].as_str()), (Some("ping\n"), Some("eof\n")), "{seen}");
    assert_eq!(seen["returncode"], 0, "{seen}");
    let status = wait_state(&mut rt, &echo_id, ContainerState::ContainerExited).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    assert!(has_line(&lines, "stdout", "ping"), "what an attached client sent is in the log too: {lines:?}");
    let late = rt.attach(AttachRequest { container_id: echo_id, stdout: true, ..Default::default() }).await;
    assert_eq!(late.unwrap_err().code(), Code::FailedPrecondition);
    // The same over SPDY.
    let mut config = container_config("echo-spdy", &image, &[], &["echo"], &[]);
    (config.stdin, config.stdin_once) = (true, true);
    let echo_id = pod.create_and_start(&daemon, &config).await;
    let request = AttachRequest { container_id: echo_id.clone(), stdin: true, stdout: true, stderr: true, tty: false };
    let url = rt.attach(request).await.expect("Attach").into_inner().url;
    let seen = tokio::task::block_in_place(|| spdy_stream(None, &["exec", &url, "--stdin", "pong\n"]));
    assert_eq!((seen["stdout"].as_str(), seen["stderr"].as_str()), (Some("pong\n"), Some("eof\n")), "{seen}");
    assert_eq!(seen["returncode"], 0, "{seen}");
    assert_clean(&seen);
    let status = wait_state(&mut rt, &echo_id, ContainerState::ContainerExited).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert_serving(&daemon).await;

    // A guest reading its stdin when the daemon stops: the feeding task is
    // the guest's executor's, so nothing is torn from under it.
    let config = ContainerConfig { stdin: true, ..container_config("reader", &image, &[], &["echo"], &[]) };
    pod.create_and_start(&daemon, &config).await;
    let mut daemon = daemon;
    let exit = tokio::task::block_in_place(|| daemon.sigterm_and_wait());
    assert!(exit.success(), "{exit:?}");
    let log = daemon.log();
    assert!(!log.contains("panicked"), "the daemon panicked at its stop:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_guests_listener_and_a_served_component_in_their_pods_namespaces() {
    let (echo, service) = (
        push_bytes("streaming-net-p2", &fixture_p2("net-p2")).await,
        push_bytes("streaming-http", &fixture_http("http-service")).await,
    );
    let mut net = TestNet::new("stream-pf");
    net.write_bridge_config(&[]);
    net.serve_registry();
    let conf_dir = net.conf_dir();
    let daemon = Daemon::start_in(Some(&net), None, &["--cni-conf-dir", conf_dir.to_str().unwrap()]).await;
    let mut rt = daemon.runtime();
    pull(&daemon, &echo.name).await;
    pull(&daemon, &service.name).await;

    // Two pods, each listening on 8080 in its own namespace.
    let pod_a = Pod::run_config(&daemon, pod_network_config("pf-a", &new_uid())).await;
    let echo_config = container_config("echo", &echo.name, &[], &["tcp-echo", "8080"], &[]);
    pod_a.create_and_start(&daemon, &echo_config).await;
    wait_log_line(&pod_a.log_path(&echo_config), "stdout", "listening tcp 8080").await;
    let pod_b = Pod::run_config(&daemon, pod_network_config("pf-b", &new_uid())).await;
    let web_config = container_config("web", &service.name, &[], &[], &[]);
    pod_b.create_and_start(&daemon, &web_config).await;

    let forward = |rt: &mut Runtime, pod: &Pod| {
        let request = PortForwardRequest { pod_sandbox_id: pod.id.clone(), port: vec![8080] };
        let mut rt = rt.clone();
        async move { rt.port_forward(request).await.expect("PortForward").into_inner().url }
    };
    let url = forward(&mut rt, &pod_a).await;
    let seen = tokio::task::block_in_place(|| k8s_stream(Some(&net), &["portforward", &url, "8080", "hi\n"]));
    assert_eq!(seen["received"], "echo:hi\n", "{seen}");
    let url = forward(&mut rt, &pod_b).await;
    let request = "GET / HTTP/1.0\r\nHost: pod\r\n\r\n";
    let seen = tokio::task::block_in_place(|| k8s_stream(Some(&net), &["portforward", &url, "8080", request]));
    assert!(
        seen["received"].as_str().is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200")),
        "{seen}"
    );
    // Nothing listens on 9090 in pod A: the error channel says so.
    let request = PortForwardRequest { pod_sandbox_id: pod_a.id.clone(), port: vec![9090] };
    let url = rt.port_forward(request).await.expect("PortForward").into_inner().url;
    let seen = tokio::task::block_in_place(|| k8s_stream(Some(&net), &["portforward-error", &url, "9090"]));
    assert!(seen["error"].as_str().is_some_and(|e| e.contains("error forwarding port 9090")), "{seen}");
    let bad = rt.port_forward(PortForwardRequest { pod_sandbox_id: pod_a.id.clone(), port: vec![70000] }).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    // A request naming no port: the websocket names them in the URL's `port`
    // query, as the API server passes kubectl's on (kubelet's); none is a 400.
    let unnamed = PortForwardRequest { pod_sandbox_id: pod_a.id.clone(), port: vec![] };
    let url = rt.port_forward(unnamed.clone()).await.expect("PortForward").into_inner().url;
    let seen = tokio::task::block_in_place(|| k8s_stream(Some(&net), &["portforward", &url, "8080", "hi\n"]));
    assert!(seen["exception"].as_str().is_some_and(|e| e.contains("400")), "{seen}");
    let url = rt.port_forward(unnamed).await.expect("PortForward").into_inner().url + "?port=8080";
    let seen = tokio::task::block_in_place(|| k8s_stream(Some(&net), &["portforward", &url, "8080", "hi\n"]));
    assert_eq!(seen["received"], "echo:hi\n", "{seen}");

    // Over SPDY: a pair of streams per connection, three at once in one session.
    let url = forward(&mut rt, &pod_a).await;
    let seen = tokio::task::block_in_place(|| spdy_stream(Some(&net), &["portforward", &url, "8080", "hi\n", "3"]));
    assert_eq!(seen["protocol"], "portforward.k8s.io", "{seen}");
    assert_eq!(seen["received"], json!(["echo:hi\n", "echo:hi\n", "echo:hi\n"]), "{seen}");
    assert_eq!(seen["errors"], json!(["", "", ""]), "{seen}");
    // The client's end of input (FIN, as client-go sends at its local end)
    // reaches the guest, which answers a line without a newline only then.
    let url = forward(&mut rt, &pod_a).await;
    let args = ["portforward", &url, "8080", "no newline", "--half-close"];
    let seen = tokio::task::block_in_place(|| spdy_stream(Some(&net), &args));
    assert_eq!(seen["received"], json!(["echo:no newline"]), "{seen}");
    let url = forward(&mut rt, &pod_b).await;
    let request = "GET / HTTP/1.0\r\nHost: pod\r\n\r\n";
    let seen = tokio::task::block_in_place(|| spdy_stream(Some(&net), &["portforward", &url, "8080", request]));
    assert!(seen["received"][0].as_str().is_some_and(|r| r.starts_with("HTTP/1.")), "{seen}");
    assert!(seen["received"][0].as_str().is_some_and(|r| r[9..].starts_with("200")), "{seen}");
    let url = forward(&mut rt, &pod_a).await;
    let seen = tokio::task::block_in_place(|| spdy_stream(Some(&net), &["portforward-error", &url, "9090"]));
    assert!(seen["error"].as_str().is_some_and(|e| e.contains("error forwarding port 9090")), "{seen}");
    assert_serving(&daemon).await;
    assert!(!daemon.log().contains("panicked"), "the daemon panicked:\n{}", daemon.log());
}
