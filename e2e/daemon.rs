//! The daemon process and the runtime-wide RPCs: Version, Status,
//! RuntimeConfig, socket ownership and shutdown.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Stdio;
use std::time::Duration;

use wasmrun::api::runtime_service_client::RuntimeServiceClient;
use wasmrun::api::{CgroupDriver, RuntimeConfigRequest, StatusRequest, VersionRequest};

use crate::harness::daemon::{connect, wait_bounded};
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_identifies_wasmrun() {
    let daemon = Daemon::start().await;
    let version =
        daemon.runtime().version(VersionRequest { version: "v1".into() }).await.expect("Version").into_inner();
    assert_eq!(version.runtime_name, "wasmrun");
    assert_eq!(version.runtime_api_version, "v1");
    assert_eq!(version.runtime_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_its_conditions_and_handlers() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();

    let status = rt.status(StatusRequest { verbose: false }).await.expect("Status").into_inner();
    let conditions = status.status.expect("Status without status").conditions;
    let condition = |wanted: &str| {
        conditions
            .iter()
            .find(|c| c.r#type == wanted)
            .unwrap_or_else(|| panic!("no {wanted} condition in {conditions:?}"))
    };
    assert!(condition("RuntimeReady").status, "{conditions:?}");
    // The test daemon's CNI configuration directory is empty (see e2e/network.rs).
    assert!(!condition("NetworkReady").status, "{conditions:?}");
    // As containerd lists its runtimes: each by name, the default (here wasm) named empty.
    let handlers: Vec<&str> = status.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(handlers, ["wasmrun", ""], "{:?}", status.runtime_handlers);

    let verbose = rt.status(StatusRequest { verbose: true }).await.expect("Status verbose").into_inner();
    let config = verbose
        .info
        .get("config")
        .unwrap_or_else(|| panic!("verbose Status has no \"config\" key: {:?}", verbose.info));
    serde_json::from_str::<serde_json::Value>(config)
        .unwrap_or_else(|e| panic!("info[\"config\"] is not JSON ({e}): {config}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_config_reports_systemd_cgroup_driver() {
    let daemon = Daemon::start().await;
    let config = daemon.runtime().runtime_config(RuntimeConfigRequest {}).await.expect("RuntimeConfig").into_inner();
    let linux = config.linux.expect("RuntimeConfig without linux");
    assert_eq!(linux.cgroup_driver(), CgroupDriver::Systemd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_a_socket_with_mode_0660() {
    let daemon = Daemon::start().await;
    let metadata = std::fs::metadata(daemon.socket()).expect("stat socket");
    assert!(metadata.file_type().is_socket(), "{} is not a socket", daemon.socket().display());
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o660);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_removes_socket() {
    let mut daemon = Daemon::start().await;
    let status = daemon.sigterm_and_wait();
    assert!(status.success(), "wasmrun exited with {status} after SIGTERM");
    assert!(!daemon.socket().exists(), "socket {} left behind", daemon.socket().display());
}

/// A graceful HTTP/2 shutdown waits for each client to acknowledge it. A
/// client that never reads never does: after the grace the daemon stops anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_after_the_grace_even_when_a_client_never_reads() {
    use std::io::Write;
    let mut daemon = Daemon::start_with(None, &["--shutdown-grace-secs", "1"]).await;
    let mut silent = std::os::unix::net::UnixStream::connect(daemon.socket()).expect("connect to the CRI socket");
    // The HTTP/2 client preface and an empty SETTINGS frame; then nothing is read or sent.
    silent.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").expect("write the preface");
    // The daemon has read the preface once it acknowledges the SETTINGS
    // (a connection still in its handshake at SIGTERM is dropped at once, and
    // would test nothing). From then on nothing is read.
    wait_for_settings_ack(&mut silent);
    daemon.runtime().version(VersionRequest::default()).await.expect("Version");

    let status = daemon.sigterm_and_wait();
    assert!(status.success(), "wasmrun exited with {status} after SIGTERM");
    assert!(!daemon.socket().exists(), "socket {} left behind", daemon.socket().display());
    assert!(daemon.log().contains("stopping anyway"), "{}", daemon.log());
    drop(silent);
}

/// Reads HTTP/2 frames from `stream` until a SETTINGS frame with the ACK
/// flag (type 4, flag 1); each read is bounded by WAIT_LIMIT.
fn wait_for_settings_ack(stream: &mut std::os::unix::net::UnixStream) {
    use std::io::Read;
    stream.set_read_timeout(Some(WAIT_LIMIT)).expect("set a read timeout");
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).expect("an HTTP/2 frame header from the daemon");
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).expect("an HTTP/2 frame payload from the daemon");
        if header[3] == 4 && header[4] & 1 == 1 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_daemon_on_the_same_socket_refuses_to_start() {
    let daemon = Daemon::start().await;
    let other = scratch_dir("daemon-second");
    let stderr_path = other.join("stderr.log");
    let mut child = Daemon::command(&other, &daemon.socket(), &[])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("create stderr log"))
        .spawn()
        .expect("spawn second wasmrun");
    let status = match wait_bounded(&mut child, Duration::from_secs(30)) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second wasmrun on the same socket kept running");
        }
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(!status.success(), "second wasmrun exited with {status}; stderr:\n{stderr}");
    assert!(
        stderr.to_lowercase().contains("in use"),
        "second wasmrun's stderr does not say the socket is in use:\n{stderr}"
    );
    // The first daemon keeps its socket and keeps serving.
    assert!(daemon.socket().exists(), "the second daemon removed the live socket");
    assert_serving(&daemon).await;
    let channel = connect(&daemon.socket()).await.expect("new connection to the first daemon");
    RuntimeServiceClient::new(channel)
        .version(VersionRequest { version: "v1".into() })
        .await
        .expect("Version on a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_of_a_killed_daemon_is_replaced() {
    let mut daemon = Daemon::start().await;
    let dir = daemon.dir().to_path_buf();
    daemon.sigkill();
    assert!(daemon.socket().exists(), "SIGKILL should leave the socket file behind");
    drop(daemon);

    let restarted = Daemon::start_with(Some(dir), &[]).await;
    assert_serving(&restarted).await;
}
