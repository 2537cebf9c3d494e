//! Containers: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, ListContainers, ContainerStatus, and what the guests see
//! and print (argv, environment, exit codes, traps, logs, mounts).

use std::time::Duration;

use tonic::Code;
use wasmrun::api::{
    ContainerFilter, ContainerMetadata, ContainerState, ContainerStateValue, ContainerStatusRequest,
    ListContainersRequest, Mount, RemoveContainerRequest, StartContainerRequest, StopContainerRequest,
};

use crate::harness::*;

async fn stop_container(rt: &mut Runtime, id: &str, timeout: i64) {
    let stop = rt.stop_container(StopContainerRequest { container_id: id.into(), timeout });
    // Bounded only so that a broken stop cannot hang the test run.
    tokio::time::timeout(Duration::from_secs(30), stop)
        .await
        .unwrap_or_else(|_| panic!("StopContainer {id} did not return within 30 s"))
        .unwrap_or_else(|s| panic!("StopContainer {id}: {s:?}"));
}

async fn remove_container(rt: &mut Runtime, id: &str) {
    rt.remove_container(RemoveContainerRequest { container_id: id.into() })
        .await
        .unwrap_or_else(|s| panic!("RemoveContainer {id}: {s:?}"));
}

/// The ids of the listed containers, sorted.
async fn list_container_ids(rt: &mut Runtime, filter: ContainerFilter) -> Vec<String> {
    let mut ids: Vec<String> = rt
        .list_containers(ListContainersRequest { filter: Some(filter) })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

fn state_filter(state: ContainerState) -> ContainerFilter {
    ContainerFilter { state: Some(ContainerStateValue { state: state as i32 }), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_runs_to_completion() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let image = pulled_fixture(&daemon, "hello", "containers-hello").await;
    let pod = Pod::run(&daemon, "hello").await;
    let config = container_config("hello", &image.name, &["/hello.wasm"], &["a b", "c"], &[("FOO", "bar")]);

    let id = pod.create(&daemon, &config).await;
    let created = container_status(&mut rt, &id, false).await.status.expect("status");
    assert_eq!(created.state(), ContainerState::ContainerCreated);

    rt.start_container(wasmrun::api::StartContainerRequest { container_id: id.clone() }).await.expect("StartContainer");
    let started = container_status(&mut rt, &id, false).await.status.expect("status");
    assert!(
        matches!(started.state(), ContainerState::ContainerRunning | ContainerState::ContainerExited),
        "state after StartContainer: {:?}",
        started.state()
    );

    let status = wait_exited(&mut rt, &id).await;
    assert_eq!(status.id, id);
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert_eq!(status.reason, "Completed");
    assert!(status.created_at > 0, "created_at {}", status.created_at);
    assert!(status.started_at > 0, "started_at {}", status.started_at);
    assert!(status.finished_at > 0, "finished_at {}", status.finished_at);
    assert!(status.created_at <= status.started_at && status.started_at <= status.finished_at, "{status:#?}");
    assert_eq!(status.metadata, config.metadata);
    assert_eq!(status.labels, config.labels);
    assert_eq!(status.annotations, config.annotations);
    assert_eq!(status.image.as_ref().map(|i| i.image.as_str()), Some(image.name.as_str()));
    assert_eq!(status.image_ref, image.repo_digest());
    assert_eq!(status.log_path, pod.log_path(&config).to_string_lossy());

    let log = read_log(&pod.log_path(&config));
    assert!(log.iter().all(|l| l.tag == "F"), "unexpected partial lines: {log:#?}");
    let lines = full_lines(&log);
    for (stream, line) in [
        ("stdout", "hello from wasm"),
        ("stdout", "arg[0]=/hello.wasm"),
        ("stdout", "arg[1]=a b"),
        ("stdout", "arg[2]=c"),
        ("stdout", "env:FOO=bar"),
        ("stderr", "to stderr"),
    ] {
        assert!(has_line(&lines, stream, line), "no {stream} line {line:?} in {lines:#?}");
    }
    assert!(!lines.iter().any(|(_, l)| l.starts_with("arg[3]")), "extra arguments: {lines:#?}");

    module_source(&mut rt, &id).await;
    let verbose = container_status(&mut rt, &id, true).await;
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).expect("verbose info is JSON");
    assert!(info["usage"]["instantiate_nanos"].as_u64() > Some(0), "no instantiation time in {info:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv0_defaults_to_the_repository_name() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "hello", "containers-argv0").await;
    let pod = Pod::run(&daemon, "argv0").await;
    let config = container_config("argv0", &image.name, &[], &["x"], &[]);

    let (_, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    assert!(has_line(&lines, "stdout", "arg[0]=containers-argv0"), "{lines:#?}");
    assert!(has_line(&lines, "stdout", "arg[1]=x"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_is_reported() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "exit-code", "containers-exit-code").await;
    let pod = Pod::run(&daemon, "exit-code").await;
    let config = container_config("exit-code", &image.name, &["/exit-code.wasm"], &["7"], &[]);

    let (_, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(status.exit_code, 7, "{status:#?}");
    assert_eq!(status.reason, "Error");
    assert!(status.finished_at > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_is_reported_as_an_error() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "trap", "containers-trap").await;
    let pod = Pod::run(&daemon, "trap").await;
    let config = container_config("trap", &image.name, &[], &[], &[]);

    let (_, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(status.exit_code, 134, "{status:#?}");
    assert_eq!(status.reason, "Error");
    assert!(status.message.contains("unreachable"), "message {:?}", status.message);
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    assert!(has_line(&lines, "stdout", "about to trap"), "{lines:#?}");
}

/// Starts `fixture_name`, waits for its first log line, stops it with a
/// grace period and checks it was killed.
async fn check_stop_interrupts(fixture_name: &str, first_line: &str) {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let image = pulled_fixture(&daemon, fixture_name, &format!("containers-stop-{fixture_name}")).await;
    let pod = Pod::run(&daemon, fixture_name).await;
    let config = container_config(fixture_name, &image.name, &[], &[], &[]);
    let id = pod.create_and_start(&daemon, &config).await;
    wait_log_line(&pod.log_path(&config), "stdout", first_line).await;
    let running = container_status(&mut rt, &id, false).await.status.expect("status");
    assert_eq!(running.state(), ContainerState::ContainerRunning);

    stop_container(&mut rt, &id, 2).await;
    let status = container_status(&mut rt, &id, false).await.status.expect("status");
    assert_eq!(status.state(), ContainerState::ContainerExited, "{status:#?}");
    assert_eq!(status.exit_code, 137, "{status:#?}");
    assert_eq!(status.reason, "Error", "{status:#?}");
    assert!(status.finished_at > 0, "{status:#?}");
    assert!(status.started_at > 0 && status.finished_at >= status.started_at, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_interrupts_a_spinning_guest() {
    check_stop_interrupts("spin", "spinning").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_interrupts_a_guest_blocked_in_a_host_call() {
    check_stop_interrupts("sleeper", "sleeping").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_are_split_into_partial_entries() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "longline", "containers-longline").await;
    let pod = Pod::run(&daemon, "longline").await;
    let config = container_config("longline", &image.name, &[], &[], &[]);

    let (_, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    let log = read_log(&pod.log_path(&config));
    let entries: Vec<(&str, &str, usize)> =
        log.iter().map(|l| (l.stream.as_str(), l.tag.as_str(), l.content.len())).collect();
    let mut expected = vec![("stdout", "P", 16384); 6];
    expected.push(("stdout", "F", 4096));
    expected.push(("stdout", "F", 5));
    assert_eq!(entries, expected, "log entries (stream, tag, length)");
    assert!(log[..7].iter().all(|l| l.content.bytes().all(|b| b == b'x')));
    assert_eq!(log[7].content, "after");
    assert_eq!(full_lines(&log)[0].1.len(), 102_400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_are_preopened_and_readonly_is_enforced() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "files", "containers-files").await;
    let pod = Pod::run(&daemon, "files").await;
    let host = scratch_dir("files");
    let (data, out) = (host.join("data"), host.join("out"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(data.join("in.txt"), "hello input").unwrap();
    let mut config = container_config("files", &image.name, &[], &[], &[]);
    config.mounts = vec![
        Mount {
            container_path: "/data".into(),
            host_path: data.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        },
        Mount {
            container_path: "/out".into(),
            host_path: out.to_string_lossy().into_owned(),
            readonly: false,
            ..Default::default()
        },
    ];

    let (_, status) = pod.run_to_exit(&daemon, &config).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    let lines = full_lines(&read_log(&pod.log_path(&config)));
    assert!(has_line(&lines, "stdout", "read:hello input"), "{lines:#?}");
    assert!(has_line(&lines, "stdout", "wrote /out/out.txt"), "{lines:#?}");
    assert!(lines.iter().any(|(s, l)| s == "stdout" && l.starts_with("readonly write failed: ")), "{lines:#?}");
    assert_eq!(std::fs::read_to_string(out.join("out.txt")).expect("out/out.txt"), "written by wasm");
    assert!(!data.join("forbidden.txt").exists(), "the guest wrote into a read-only mount");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_containers_filters_by_id_state_pod_and_labels() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let hello = pulled_fixture(&daemon, "hello", "containers-list-hello").await;
    let sleeper = pulled_fixture(&daemon, "sleeper", "containers-list-sleeper").await;
    let pod_a = Pod::run(&daemon, "list-a").await;
    let pod_b = Pod::run(&daemon, "list-b").await;

    let exited_config = container_config("exited", &hello.name, &[], &[], &[]);
    let (exited, _) = pod_a.run_to_exit(&daemon, &exited_config).await;
    let running_config = container_config("running", &sleeper.name, &[], &[], &[]);
    let running = pod_a.create_and_start(&daemon, &running_config).await;
    wait_log_line(&pod_a.log_path(&running_config), "stdout", "sleeping").await;
    let created = pod_b.create(&daemon, &container_config("created", &hello.name, &[], &[], &[])).await;

    let all = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(all.len(), 3, "{all:#?}");
    let listed = all.iter().find(|c| c.id == running).expect("running container listed");
    assert_eq!(listed.pod_sandbox_id, pod_a.id);
    assert_eq!(listed.metadata, running_config.metadata);
    assert_eq!(listed.labels, running_config.labels);
    assert_eq!(listed.annotations, running_config.annotations);
    assert_eq!(listed.image.as_ref().map(|i| i.image.as_str()), Some(sleeper.name.as_str()));
    assert_eq!(listed.image_ref, sleeper.repo_digest());
    assert_eq!(listed.state(), ContainerState::ContainerRunning);
    assert!(listed.created_at > 0);

    let by_id = ContainerFilter { id: created.clone(), ..Default::default() };
    assert_eq!(list_container_ids(&mut rt, by_id).await, sorted(&[&created]));
    let by_pod = ContainerFilter { pod_sandbox_id: pod_a.id.clone(), ..Default::default() };
    assert_eq!(list_container_ids(&mut rt, by_pod).await, sorted(&[&exited, &running]));
    assert_eq!(list_container_ids(&mut rt, state_filter(ContainerState::ContainerExited)).await, sorted(&[&exited]));
    assert_eq!(list_container_ids(&mut rt, state_filter(ContainerState::ContainerRunning)).await, sorted(&[&running]));
    assert_eq!(list_container_ids(&mut rt, state_filter(ContainerState::ContainerCreated)).await, sorted(&[&created]));
    let by_label = ContainerFilter {
        label_selector: [("io.kubernetes.container.name".to_string(), "running".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(list_container_ids(&mut rt, by_label).await, sorted(&[&running]));
    let pod_and_state = ContainerFilter {
        pod_sandbox_id: pod_b.id.clone(),
        state: Some(ContainerStateValue { state: ContainerState::ContainerRunning as i32 }),
        ..Default::default()
    };
    assert_eq!(list_container_ids(&mut rt, pod_and_state).await, Vec::<String>::new());

    stop_container(&mut rt, &running, 0).await;
}

/// The state of each container an unfiltered ListContainers shows, by id.
async fn listed_states(rt: &mut Runtime) -> Vec<(String, ContainerState)> {
    let listed = rt.list_containers(ListContainersRequest { filter: None }).await.expect("ListContainers");
    listed.into_inner().containers.into_iter().map(|c| (c.id.clone(), c.state())).collect()
}

/// kubelet relists without a filter every second and acts on what changed
/// since the last list (the daemon keeps that answer while nothing changes):
/// each change must show in the next list, a guest ending on its own included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfiltered_list_shows_every_change_in_the_next_list() {
    use ContainerState::{ContainerCreated as Created, ContainerExited as Exited, ContainerRunning as Running};
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let memhog = pulled_fixture(&daemon, "memhog", "containers-relist").await;
    let pod = Pod::run(&daemon, "relist").await;
    assert_eq!(listed_states(&mut rt).await, vec![]);

    // The guest waits for /signal/go, then takes 1 MiB more and ends by itself.
    let signal = scratch_dir("relist-signal");
    let mut config = container_config("waiter", &memhog.name, &[], &["1", "wait-for=/signal/go"], &[]);
    config.mounts.push(Mount {
        container_path: "/signal".into(),
        host_path: signal.display().to_string(),
        readonly: true,
        ..Default::default()
    });
    let waiter = pod.create(&daemon, &config).await;
    assert_eq!(listed_states(&mut rt).await, vec![(waiter.clone(), Created)]);
    assert_eq!(listed_states(&mut rt).await, vec![(waiter.clone(), Created)]);

    rt.start_container(StartContainerRequest { container_id: waiter.clone() }).await.expect("StartContainer");
    wait_log_line(&pod.log_path(&config), "stdout", "waiting").await;
    assert_eq!(listed_states(&mut rt).await, vec![(waiter.clone(), Running)]);

    let other_config = container_config("other", &memhog.name, &[], &["1"], &[]);
    let other = pod.create(&daemon, &other_config).await;
    assert_eq!(listed_states(&mut rt).await, vec![(waiter.clone(), Running), (other.clone(), Created)]);

    // Nothing but lists from here until the guest's exit shows in one.
    std::fs::write(signal.join("go"), "").expect("signal the guest");
    wait_log_line(&pod.log_path(&config), "stdout", "grown").await;
    let mut lists = 0;
    let states = loop {
        let states = listed_states(&mut rt).await;
        lists += 1;
        if states[0].1 != Running || lists == 600 {
            break states;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(states, vec![(waiter.clone(), Exited), (other.clone(), Created)], "after {lists} lists");
    assert_eq!(wait_exited(&mut rt, &waiter).await.exit_code, 0);

    remove_container(&mut rt, &waiter).await;
    assert_eq!(listed_states(&mut rt).await, vec![(other.clone(), Created)]);
    // A filtered list is made afresh; it agrees.
    assert_eq!(list_container_ids(&mut rt, state_filter(Created)).await, vec![other.clone()]);
    remove_container(&mut rt, &other).await;
    assert_eq!(listed_states(&mut rt).await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_remove_of_an_exited_container_are_idempotent() {
    let daemon = Daemon::start().await;
    let mut rt = daemon.runtime();
    let image = pulled_fixture(&daemon, "hello", "containers-remove").await;
    let pod = Pod::run(&daemon, "remove").await;
    let (id, _) = pod.run_to_exit(&daemon, &container_config("hello", &image.name, &[], &[], &[])).await;

    stop_container(&mut rt, &id, 0).await;
    remove_container(&mut rt, &id).await;
    let result = rt.container_status(ContainerStatusRequest { container_id: id.clone(), verbose: false }).await;
    expect_code(result, Code::NotFound, "ContainerStatus of a removed container");
    assert_eq!(list_container_ids(&mut rt, ContainerFilter::default()).await, Vec::<String>::new());
    remove_container(&mut rt, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_container_with_the_same_metadata_already_exists() {
    let daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "hello", "containers-duplicate").await;
    let pod = Pod::run(&daemon, "duplicate").await;
    let config = container_config("dup", &image.name, &[], &[], &[]);
    pod.create(&daemon, &config).await;

    let result = pod.try_create(&daemon, &config).await;
    match result {
        Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        Ok(id) => panic!("a second container with the same name and attempt was created: {id}"),
    }

    // A restart of the same container (next attempt) is a new container.
    let mut restart = config.clone();
    restart.metadata = Some(ContainerMetadata { name: "dup".into(), attempt: 1 });
    restart.log_path = "dup/1.log".into();
    pod.create(&daemon, &restart).await;
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_modules_are_cached_in_memory_and_on_disk() {
    let mut daemon = Daemon::start().await;
    let image = pulled_fixture(&daemon, "hello", "containers-cache").await;
    let pod = Pod::run(&daemon, "cache").await;
    let first = container_config("first", &image.name, &[], &[], &[]);
    let second = container_config("second", &image.name, &[], &[], &[]);

    // PullImage compiled the module: no container compiles it again.
    let (first_id, status) = pod.run_to_exit(&daemon, &first).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert_eq!(module_source(&mut daemon.runtime(), &first_id).await, "memory");
    let (second_id, status) = pod.run_to_exit(&daemon, &second).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert_eq!(module_source(&mut daemon.runtime(), &second_id).await, "memory");

    let dir = daemon.dir().to_path_buf();
    let exit = daemon.sigterm_and_wait();
    assert!(exit.success(), "wasmrun exited with {exit}");
    // Code compiled under another engine configuration, as an upgrade leaves it.
    let stale = daemon.root().join("cache/00000000deadbeef");
    std::fs::create_dir_all(&stale).expect("create a stale cache");
    std::fs::write(stale.join("old.cwasm"), b"old").expect("write stale code");
    drop(daemon);

    let daemon = Daemon::start_with(Some(dir), &[]).await;
    let pod = Pod::run(&daemon, "cache-after-restart").await;
    let third = container_config("third", &image.name, &[], &[], &[]);
    let (third_id, status) = pod.run_to_exit(&daemon, &third).await;
    assert_eq!(status.exit_code, 0, "{status:#?}");
    assert_eq!(module_source(&mut daemon.runtime(), &third_id).await, "disk-cache");
    assert!(!stale.exists(), "compiled code of another engine configuration is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_cannot_be_instantiated_ends_with_start_error() {
    let daemon = Daemon::start().await;
    let image = push_bytes("containers-bad-segment", &wat_fixture("bad-segment.module.wat")).await;
    pull(&daemon, &image.name).await;
    let pod = Pod::run(&daemon, "bad-segment").await;

    let (_, status) = pod.run_to_exit(&daemon, &container_config("bad-segment", &image.name, &[], &[], &[])).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (128, "StartError"), "{status:#?}");
    assert!(status.message.contains("cannot instantiate the guest"), "{status:#?}");
    assert!(status.message.contains("out of bounds"), "{status:#?}");
    assert!(!status.message.contains("stack backtrace"), "the daemon's own backtrace leaked: {status:#?}");
    assert_serving(&daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_whose_initial_memory_is_over_its_limit_is_oom_killed() {
    let daemon = Daemon::start_with(None, &["--default-memory-limit-bytes", "33554432"]).await;
    let image = push_bytes("containers-big-memory", &wat_fixture("big-memory.module.wat")).await;
    pull(&daemon, &image.name).await;
    let pod = Pod::run(&daemon, "big-memory").await;

    let (_, status) = pod.run_to_exit(&daemon, &container_config("big-memory", &image.name, &[], &[], &[])).await;
    assert_eq!((status.exit_code, status.reason.as_str()), (137, "OOMKilled"), "{status:#?}");
    assert!(status.message.contains("memory limit of 33554432 bytes"), "{status:#?}");
}
