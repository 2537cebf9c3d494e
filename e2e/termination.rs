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

/// The cap on file mounts the flood test gives its daemon (`--file-mount-max-bytes`), 512 KiB.
const FLOOD_CAP: u64 = 512 << 10;
/// What the guest tries to write: 200 MiB, in 64 KiB writes.
const FLOOD_TOTAL: u64 = 200 << 20;
const FLOOD_CHUNK: u64 = 64 << 10;
/// kubelet's `MaxContainerTerminationMessageLength`: it reads the last 4 KiB of the file.
const KUBELET_MESSAGE_BYTES: u64 = 4096;
/// WASI's (and wasi-libc's) errno values.
const EACCES: i32 = 2;
const EIO: i32 = 29;
const ENOSPC: i32 = 51;

/// The total size of the regular files under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())).flatten() {
        let meta = entry.path().symlink_metadata().unwrap();
        if meta.is_dir() {
            total += bytes_under(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// What kubelet makes the termination message of: the last 4 KiB of the host file.
fn kubelet_message(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let start = bytes.len().saturating_sub(KUBELET_MESSAGE_BYTES as usize);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// The line of `stream` starting with `prefix`, in the container's log.
fn line_starting<'a>(lines: &'a [(String, String)], prefix: &str) -> &'a str {
    lines
        .iter()
        .find(|(stream, line)| stream == "stdout" && line.starts_with(prefix))
        .map(|(_, line)| line.as_str())
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}: {lines:#?}"))
}

/// Issue 17 item 5: a guest limited to 64 MiB writes 200 MiB into its
/// termination log and tries to create 100 files beside it. Its writes fail
/// past the cap on file mounts with ENOSPC, the creates (and a mkdir, a
/// rename, a removal of the log) with EACCES; the container's state holds no
/// more than the cap, nor does the host file; kubelet finds the message the
/// guest left; the daemon goes on. For a module (which leaves its message
/// over the file's last bytes: a write inside its size still goes through)
/// and a component (which opens the file again with `O_CREAT|O_TRUNC`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_termination_log_flood_stops_at_the_cap_and_nothing_is_created_beside_it() {
    let cap = FLOOD_CAP.to_string();
    let daemon = Daemon::start_with(None, &["--file-mount-max-bytes", &cap]).await;
    let module = push_bytes("termination-logflood", &fixture("logflood")).await;
    let component = push_bytes("termination-logflood-p2", &fixture_p2("logflood-p2")).await;
    pull(&daemon, &module.name).await;
    pull(&daemon, &component.name).await;
    let pod = Pod::run(&daemon, "logflood").await;
    let (total, chunk) = (FLOOD_TOTAL.to_string(), FLOOD_CHUNK.to_string());

    for (name, image, end) in [("flood-p1", &module.name, "tail"), ("flood-p2", &component.name, "truncate")] {
        let host = scratch_dir(&format!("termination-{name}"));
        let message = host.join("termination-log");
        std::fs::write(&message, "").unwrap();
        let mut config = container_config(name, image, &[], &[&total, &chunk, "100", end], &[]);
        config.mounts = vec![file_mount(&message, "/dev/termination-log", false)];
        let resources = config.linux.as_mut().and_then(|linux| linux.resources.as_mut()).expect("resources");
        resources.memory_limit_in_bytes = 64 << 20;

        let (id, status) = pod.run_to_exit(&daemon, &config).await;
        let lines = full_lines(&read_log(&pod.log_path(&config)));
        assert_eq!((status.exit_code, status.reason.as_str()), (0, "Completed"), "{name}: {status:#?} {lines:#?}");
        // Every write inside the cap went in, the first one past it failed
        // with ENOSPC. A component's Rust std writes files through the
        // preview 1 adapter that wasm-component-ld links in, which turns a
        // failed stream write into EIO whatever its error (its
        // `stream_error_to_errno`; later adapters ask `filesystem-error-code`,
        // which answers `insufficient-space` here): either is a refusal.
        let flood = line_starting(&lines, "flood: ");
        let errnos: &[i32] = if end == "tail" { &[ENOSPC] } else { &[ENOSPC, EIO] };
        assert!(
            errnos
                .iter()
                .any(|errno| flood
                    .starts_with(&format!("flood: wrote {FLOOD_CAP} of {FLOOD_TOTAL} bytes: errno {errno}: "))),
            "{name}: {flood}"
        );
        let create = line_starting(&lines, "create: ");
        assert!(create.starts_with(&format!("create: made 0 of 100: errno {EACCES}: ")), "{name}: {create}");
        for refused in ["mkdir", "rename", "remove"] {
            assert_eq!(line_starting(&lines, &format!("{refused}: ")), format!("{refused}: errno {EACCES}"), "{name}");
        }
        assert_eq!(line_starting(&lines, "message: "), "message: errno 0", "{name}");

        // The host file: at most the cap, and kubelet's read of it ends with the guest's message.
        let left = format!("flood stopped at {FLOOD_CAP} bytes");
        let host_bytes = std::fs::metadata(&message).unwrap().len();
        assert!(host_bytes <= FLOOD_CAP, "{name}: the host file holds {host_bytes} bytes");
        let read = kubelet_message(&message);
        if end == "tail" {
            assert_eq!(host_bytes, FLOOD_CAP, "{name}: the flood up to the cap, its tail overwritten");
            assert!(read.ends_with(&left) && read.starts_with('x'), "{name}: kubelet reads {read:?}");
        } else {
            assert_eq!(read, left, "{name}");
        }

        // The container's state: its one copy, no bigger than the cap, nothing beside it.
        let scratch = daemon.state().join("containers").join(&id);
        let state_bytes = bytes_under(&scratch);
        assert!(state_bytes <= FLOOD_CAP, "{name}: {} holds {state_bytes} bytes", scratch.display());
        let private = scratch.join("file-mounts").join("0");
        let entries: Vec<_> = std::fs::read_dir(&private).unwrap().flatten().map(|entry| entry.file_name()).collect();
        assert_eq!(entries, ["termination-log"], "{name}: {}", private.display());
    }

    // The daemon goes on: another container runs to its end.
    let hello = pulled_fixture(&daemon, "hello", "termination-logflood-hello").await;
    let (_, status) = pod.run_to_exit(&daemon, &container_config("hello", &hello.name, &[], &[], &[])).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert_serving(&daemon).await;
}
