//! Real CRI clients nobody here wrote, each sending the HTTP/2 `:authority`
//! it sends on a unix socket: Python's grpcio with its default options (the
//! percent-encoded socket path, as grpc-core sends it), and grpcio told to
//! send the bare socket path (what kubelet and crictl before 1.30 and
//! grpc-java send). Each must get every call served, not `RST_STREAM`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::*;

/// Runs e2e/clients/cri_client.py against `daemon`: pull, a pod with one
/// container run to its exit, a NotFound, stop and remove. Returns what it printed.
fn python_client(daemon: &Daemon, image: &str, authority: Option<&str>) -> Value {
    let (stubs, python) = python_cri_stubs();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/clients/cri_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(script).arg(&stubs).arg(daemon.socket()).arg(image);
    if let Some(authority) = authority {
        cmd.arg(authority);
    }
    let output = run_tool("the Python grpcio CRI client", &mut cmd);
    serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|e| panic!("the Python client printed no JSON ({e}): {}\n{}", output.stdout, output.stderr))
}

fn assert_served(seen: &Value, daemon: &Daemon) {
    assert_eq!(seen["runtime_name"], "wasmrun", "{seen}");
    assert_eq!(seen["runtime_api_version"], "v1", "{seen}");
    assert_eq!(seen["conditions"]["RuntimeReady"], true, "{seen}");
    assert!(seen["image_ref"].as_str().is_some_and(|r| r.starts_with("sha256:")), "{seen}");
    assert_eq!(seen["container_state"], "CONTAINER_EXITED", "{seen}");
    assert_eq!(seen["exit_code"], 0, "{seen}");
    assert_eq!(seen["reason"], "Completed", "{seen}");
    assert_eq!(seen["missing"], "NOT_FOUND", "{seen}");
    assert_eq!(seen["huge_missing"], "NOT_FOUND", "a 10,000-character id: {seen}");
    assert_eq!(seen["pods_left"], 0, "{seen}");
    let log = daemon.log();
    assert!(!log.contains("malformed authority"), "the daemon refused an authority:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_with_its_default_options_is_served() {
    let daemon = Daemon::start().await;
    let image = push_fixture("hello", "clients-python-default").await;
    let seen = tokio::task::block_in_place(|| python_client(&daemon, &image.name, None));
    assert_served(&seen, &daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_sending_the_socket_path_as_authority_is_served() {
    let daemon = Daemon::start().await;
    let image = push_fixture("hello", "clients-python-path").await;
    let socket = daemon.socket().display().to_string();
    let seen = tokio::task::block_in_place(|| python_client(&daemon, &image.name, Some(&socket)));
    assert_served(&seen, &daemon);
    // And one a client could send that is neither a host nor a path.
    let seen = tokio::task::block_in_place(|| python_client(&daemon, &image.name, Some("wasm run/%zz sock")));
    assert_served(&seen, &daemon);
}
