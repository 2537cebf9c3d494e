//! ExecSync in a wasm container: a program run as a new instance in the
//! running container's context (its env, working directory, root and mounts,
//! its stats), as kubelet's exec probes call it. A program name that is no
//! program ends with 127 or 126 as a shell says; the timeout ends the
//! instance with DeadlineExceeded; output is cut as containerd cuts it; a
//! stopped container ends its execs.

use std::time::Duration;

use tonic::Code;
use wasmrun::api::{ContainerState, ContainerStatsRequest, ExecSyncRequest, ExecSyncResponse, StopContainerRequest};

use crate::harness::*;

/// The most output an ExecSync answer holds: 16 MiB (kubelet's message
/// limit) less 1 KiB for the rest of the message.
const MAX_OUTPUT: usize = (16 << 20) - 1024;

/// A compat image with the `exectool` program as its entrypoint
/// (`/bin/exectool.wasm`), `hello` beside it, a file that is not WebAssembly,
/// and WorkingDir `/srv`.
pub fn exec_image(repo: &str) -> String {
    let (tool, hello) = (fixture("exectool"), fixture("hello"));
    let files: &[(&str, &[u8])] =
        &[("/bin/exectool.wasm", &tool), ("/bin/hello.wasm", &hello), ("/etc/app.conf", b"not a program")];
    let image = BuildahImage { files, entrypoint: "/bin/exectool.wasm", os: "wasip1", working_dir: Some("/srv") };
    buildah_compat_image_with(&format!("e2e/{repo}"), "v1", &image)
}

async fn exec_sync(rt: &mut Runtime, id: &str, cmd: &[&str], timeout: i64) -> Result<ExecSyncResponse, tonic::Status> {
    let request =
        ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout };
    rt.exec_sync(request).await.map(|response| response.into_inner())
}

/// Runs `cmd`, expecting an answer; returns (exit code, stdout, stderr).
async fn run(rt: &mut Runtime, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let answer = exec_sync(rt, id, cmd, 10).await.unwrap_or_else(|s| panic!("ExecSync {cmd:?}: {s:?}"));
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (answer.exit_code, text(answer.stdout), text(answer.stderr))
}

pub async fn running_execs(rt: &mut Runtime, id: &str) -> u64 {
    let info = container_status(rt, id, true).await.info;
    let info: serde_json::Value = serde_json::from_str(&info["info"]).expect("verbose info is JSON");
    info["running_execs"].as_u64().expect("running_execs in the verbose info")
}

/// Polls the verbose status until `count` execs run; panics after [`WAIT_LIMIT`].
pub async fn wait_for_execs(rt: &mut Runtime, id: &str, count: u64) {
    let deadline = std::time::Instant::now() + WAIT_LIMIT;
    while running_execs(rt, id).await != count {
        assert!(std::time::Instant::now() < deadline, "container {id}: not {count} execs after {WAIT_LIMIT:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn cpu_nanos(rt: &mut Runtime, id: &str) -> u64 {
    let stats = rt.container_stats(ContainerStatsRequest { container_id: id.into() }).await.expect("ContainerStats");
    stats.into_inner().stats.and_then(|s| s.cpu).and_then(|cpu| cpu.usage_core_nano_seconds).map_or(0, |v| v.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_runs_programs_in_the_running_containers_context() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let image = exec_image("exec-sync");
    pull(&daemon, &image).await;
    let pod = Pod::run(&daemon, "exec-sync").await;
    let state = scratch_dir("exec-state");
    let mut config = container_config("app", &image, &[], &["serve", "/state"], &[("GREETING", "hi there")]);
    config.mounts = vec![mount("/state", &state, false)];
    let id = pod.create_and_start(&daemon, &config).await;
    wait_log_line(&pod.log_path(&config), "stdout", "serving").await;

    // A liveness probe's command, answered 0, then 1 once the guest is unwell.
    assert_eq!(run(&mut rt, &id, &["exectool", "check", "/state"]).await, (0, "healthy\n".into(), String::new()));
    // The container's own program by its path too; its env and working directory.
    let env = run(&mut rt, &id, &["/bin/exectool.wasm", "env", "GREETING"]).await;
    assert_eq!(env, (0, "hi there\n".into(), String::new()));
    assert_eq!(run(&mut rt, &id, &["exectool", "pwd"]).await.1, "/srv\n");
    assert_eq!(run(&mut rt, &id, &["exectool", "unwell", "/state"]).await.0, 0);
    assert!(!state.join("healthy").exists(), "the exec did not write the container's mount");
    let (code, stdout, stderr) = run(&mut rt, &id, &["exectool", "check", "/state"]).await;
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(stderr.starts_with("unhealthy: "), "{stderr:?}");
    // Another program of the image's filesystem, with its arguments.
    let (code, stdout, stderr) = run(&mut rt, &id, &["/bin/hello.wasm", "one"]).await;
    assert_eq!((code, stderr.as_str()), (0, "to stderr\n"), "{stdout}");
    assert!(
        stdout.contains("arg[0]=/bin/hello.wasm\narg[1]=one\n") && stdout.contains("env:GREETING=hi there"),
        "{stdout}"
    );
    // No such program: 127, as a shell says; a file that is not WebAssembly: 126.
    assert_eq!(run(&mut rt, &id, &["sh", "-c", "true"]).await, (127, String::new(), "sh: program not found\n".into()));
    let (code, _, stderr) = run(&mut rt, &id, &["/etc/app.conf"]).await;
    assert_eq!(code, 126, "{stderr}");
    assert!(stderr.starts_with("/etc/app.conf: cannot execute: "), "{stderr:?}");
    let empty = exec_sync(&mut rt, &id, &[], 1).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");

    // Output over what one answer can hold is cut there.
    // A client that takes messages as large as kubelet's (16 MiB).
    let mut large = rt.clone().max_decoding_message_size(16 << 20);
    let flood = exec_sync(&mut large, &id, &["exectool", "flood", &(MAX_OUTPUT + 4096).to_string()], 30).await.unwrap();
    assert_eq!((flood.exit_code, flood.stdout.len()), (0, MAX_OUTPUT));

    // The timeout ends the instance: DeadlineExceeded, nothing left running,
    // its CPU counted in the container's, the container untouched.
    let cpu_before = cpu_nanos(&mut rt, &id).await;
    let timed_out = exec_sync(&mut rt, &id, &["exectool", "spin"], 1).await.unwrap_err();
    assert_eq!(timed_out.code(), Code::DeadlineExceeded, "{timed_out:?}");
    assert!(timed_out.message().contains("timeout 1s exceeded"), "{timed_out:?}");
    assert_eq!(running_execs(&mut rt, &id).await, 0);
    // The container's own guest sleeps: what its CPU gained is the exec's.
    // Not a fraction of the second: with other tests spinning on two cores
    // the exec got 0.11 s of CPU in that second.
    let spent = cpu_nanos(&mut rt, &id).await - cpu_before;
    assert!(spent >= 10_000_000, "a second of spinning counted {spent} ns of the container's CPU");
    assert_eq!(
        wait_state(&mut rt, &id, ContainerState::ContainerRunning).await.state(),
        ContainerState::ContainerRunning
    );

    // A client that gives up ends its exec.
    let mut other = daemon.runtime();
    let request = ExecSyncRequest { container_id: id.clone(), cmd: vec!["exectool".into(), "spin".into()], timeout: 0 };
    let gave_up = tokio::time::timeout(Duration::from_millis(500), other.exec_sync(request)).await;
    assert!(gave_up.is_err(), "a spinning exec answered: {gave_up:?}");
    drop(other);
    wait_for_execs(&mut rt, &id, 0).await;

    // Stopping the container ends an exec under way: it answers 137.
    let mut other = daemon.runtime();
    let (exec_id, spin) = (id.clone(), ["exectool", "spin"]);
    let exec = tokio::spawn(async move { exec_sync(&mut other, &exec_id, &spin, 0).await });
    wait_for_execs(&mut rt, &id, 1).await;
    rt.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 10 }).await.expect("StopContainer");
    let ended = exec.await.unwrap().expect("the exec answers when its container stops");
    assert_eq!(ended.exit_code, 137);
    let refused = exec_sync(&mut rt, &id, &["exectool", "check", "/state"], 1).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("exited"), "{refused:?}");
    let unknown = exec_sync(&mut rt, &random_id(), &["exectool"], 1).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert_serving(&daemon).await;
}
