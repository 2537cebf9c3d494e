//! File mounts, the way kubelet gives them: the termination-message path
//! `/dev/termination-log` (a writable host file that kubelet reads once the
//! container has exited) and read-only files such as `/etc/hosts`. WASI
//! preopens only directories, so the guest works on copies; the host file
//! must hold the message by the time the exit is reported, however the guest ended.

use std::path::{Path, PathBuf};

use tonic::Code;
use wasmrun::api::{
    ContainerConfig, ContainerState, Mount, RemoveContainerRequest, StartContainerRequest, StopContainerRequest,
};

use crate::harness::*;

const CONFIG_TEXT: &str = "setting=from the host";

fn file_mount(host_path: &Path, container_path: &str, readonly: bool) -> Mount {
    Mount {
        container_path: container_path.into(),
        host_path: host_path.to_string_lossy().into_owned(),
        readonly,
        ..Default::default()
    }
}

/// A fresh, empty termination-message file (kubelet creates it before
/// CreateContainer) and a read-only config file holding [`CONFIG_TEXT`].
fn host_files(name: &str) -> (PathBuf, PathBuf) {
    let host = scratch_dir(name);
    let (message, config) = (host.join("termination-log"), host.join("config.txt"));
    std::fs::write(&message, "").unwrap();
    std::fs::write(&config, CONFIG_TEXT).unwrap();
    (message, config)
}

fn termination_config(image: &str, args: &[&str], message: &Path, config: &Path) -> ContainerConfig {
    let mut container = container_config("termination", image, &[], args, &[]);
    container.mounts =
        vec![file_mount(message, "/dev/termination-log", false), file_mount(config, "/etc/config.txt", true)];
    container
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_message_reaches_the_host_file_before_the_exit_is_reported() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "termination", "termination-exit").await;
    let pod = Pod::run(&daemon, "termination").await;
    let (message, config_file) = host_files("termination-exit");
    let config = termination_config(&image.name, &["the guest's last words"], &message, &config_file);

    let (id, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(std::fs::read_to_string(&message).unwrap(), "the guest's last words");
    assert_eq!(status.exit_code, 3, "{status:#?}");
    assert_eq!(status.reason, "Error");
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    assert!(has_line(&lines, "stdout", "wrote the termination message"), "{lines:#?}");
    assert!(has_line(&lines, "stdout", &format!("config:{CONFIG_TEXT}")), "{lines:#?}");
    assert!(lines.iter().any(|(s, l)| s == "stdout" && l.starts_with("readonly write failed: ")), "{lines:#?}");
    assert_eq!(std::fs::read_to_string(&config_file).unwrap(), CONFIG_TEXT, "a read-only file mount was written");

    // The copies live in the container's scratch directory until it is removed.
    let scratch = daemon.state().join("containers").join(&id);
    assert!(scratch.is_dir(), "no scratch directory {}", scratch.display());
    daemon
        .runtime()
        .remove_container(RemoveContainerRequest { container_id: id.clone() })
        .await
        .unwrap_or_else(|s| panic!("RemoveContainer: {s:?}"));
    assert!(!scratch.exists(), "RemoveContainer left {}", scratch.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_guest_still_leaves_its_termination_message() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let image = pulled_fixture(&daemon, "termination", "termination-stop").await;
    let pod = Pod::run(&daemon, "termination-stop").await;
    let (message, config_file) = host_files("termination-stop");
    let config = termination_config(&image.name, &["stopped while waiting", "wait"], &message, &config_file);

    let id = pod.create_and_start(&daemon, &config).await;
    wait_log_line(&pod.log_path(&config), "stdout", "waiting").await;
    assert_eq!(std::fs::read_to_string(&message).unwrap(), "", "the host file changed while the guest runs");
    rt.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 2 })
        .await
        .unwrap_or_else(|s| panic!("StopContainer: {s:?}"));
    // StopContainer returns once the container has exited: the message is there by then.
    assert_eq!(std::fs::read_to_string(&message).unwrap(), "stopped while waiting");
    let status = container_status(&mut rt, &id, false).await.status.expect("status");
    assert_eq!(status.state(), ContainerState::ContainerExited, "{status:#?}");
    assert_eq!(status.exit_code, 137, "{status:#?}");
    assert_eq!(std::fs::read_to_string(&config_file).unwrap(), CONFIG_TEXT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_mount_of_a_missing_host_file_fails_the_start() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "termination", "termination-missing").await;
    let pod = Pod::run(&daemon, "termination-missing").await;
    let (_, config_file) = host_files("termination-missing");
    let missing = scratch_dir("termination-missing-host").join("termination-log");
    let config = termination_config(&image.name, &["never written"], &missing, &config_file);

    let id = pod.create(&daemon, &config).await;
    let started = daemon.runtime().start_container(StartContainerRequest { container_id: id.clone() }).await;
    let status = expect_code(started, Code::InvalidArgument, "StartContainer with a missing host file");
    let missing_path = missing.to_string_lossy();
    assert!(
        status.message().contains(&*missing_path) && status.message().contains("/dev/termination-log"),
        "the error names neither the host path nor the container path: {}",
        status.message()
    );
    assert!(!missing.exists(), "the missing host file was created");
    assert_serving(&daemon).await;
    let exited = container_status(&mut daemon.runtime(), &id, false).await.status.expect("status");
    assert_eq!(exited.state(), ContainerState::ContainerExited, "{exited:#?}");
}
