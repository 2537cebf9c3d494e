//! Pods and containers driven in-process: hand-written modules stand in for
//! pulled images (through the `Programs` seam), a real engine runs them, and
//! a second `Pods` over the same directories stands in for a restarted daemon.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest as _;
use tokio_stream::StreamExt;

use super::lifecycle::EXIT_LOST;
use super::*;
use crate::images::{Image, ImageFormat};
use crate::wasm::{Captured, Compiled, ModuleSource, Output, Stdin, WasmKind, WasmSource};

/// Ends with `proc_exit(3)`.
const EXIT_3: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))"#;

/// Writes "hello\n" to stdout and returns (exit 0).
const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// Never ends by itself.
const SPIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))"#;

/// Images named after their modules, each an artifact of one hand-written module.
struct Wat {
    engine: Arc<Engine>,
    modules: HashMap<String, Vec<u8>>,
}

impl Wat {
    fn new(engine: Arc<Engine>) -> Self {
        let modules = [("exit-3", EXIT_3), ("hello", HELLO), ("spin", SPIN)]
            .into_iter()
            .map(|(name, text)| (name.to_owned(), wat::parse_str(text).expect("a valid module")))
            .collect();
        Self { engine, modules }
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn image(name: &str, module: &[u8]) -> Image {
    let module_digest = digest(module);
    Image {
        id: digest(name.as_bytes()),
        repo_tags: vec![format!("test.local/{name}:latest")],
        repo_digests: Vec::new(),
        manifest_digest: digest(format!("manifest {name}").as_bytes()),
        config_digest: digest(name.as_bytes()),
        format: ImageFormat::WasmArtifact,
        layer_digests: vec![module_digest.clone()],
        module_digest,
        module_kind: WasmKind::Module,
        module_path: String::new(),
        entrypoint: vec![name.to_owned()],
        cmd: Vec::new(),
        env: Vec::new(),
        working_dir: String::new(),
        manifest_media_type: String::new(),
        config_media_type: String::new(),
        size: module.len() as u64,
        pulled_at: 0,
    }
}

impl Programs for Wat {
    fn image(&self, name: &str) -> Result<Image> {
        self.modules
            .get(name)
            .map(|module| image(name, module))
            .ok_or_else(|| Error::NotFound(format!("image {name} not found")))
    }

    fn rootfs(&self, _image: &Image) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    fn program<'a>(
        &'a self,
        image: &'a Image,
        _argv0: &'a str,
        _working_dir: &'a str,
    ) -> programs::Pending<'a, Result<(Arc<Compiled>, ModuleSource)>> {
        Box::pin(async move {
            let name = &image.entrypoint[0];
            let bytes = self.modules[name].clone();
            self.engine.prepare(&image.module_digest, WasmKind::Module, WasmSource::Bytes(bytes)).await
        })
    }

    /// Any module of the set, by its name.
    fn find_program<'a>(
        &'a self,
        _image: &'a Image,
        argv0: &'a str,
        _working_dir: &'a str,
    ) -> programs::Pending<'a, Result<Option<Arc<Compiled>>>> {
        Box::pin(async move {
            let Some(bytes) = self.modules.get(argv0).cloned() else {
                return Ok(None);
            };
            let (compiled, _) =
                self.engine.prepare(&digest(&bytes), WasmKind::Module, WasmSource::Bytes(bytes)).await?;
            Ok(Some(compiled))
        })
    }
}

/// A daemon's directories, removed when dropped.
struct Dirs(PathBuf);

impl Dirs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("wasmrun-pods-{}", rand::random::<u64>()));
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        Self(dir)
    }

    /// A daemon over these directories, as it starts.
    async fn open(&self) -> Arc<Pods> {
        let engine = Engine::new(
            &self.0.join("root/cache"),
            crate::wasm::GuestDefaults { memory_limit_bytes: 64 << 20, ..Default::default() },
            Default::default(),
            crate::wasm::Compiler::InProcess,
            Default::default(),
        )
        .unwrap();
        let programs = Arc::new(Wat::new(engine.clone()));
        // No CNI configuration: these pods use the host's network (see `pod_config`).
        let network =
            Arc::new(Network::new(self.0.join("cni"), vec![self.0.join("cni-bin")], &self.0.join("state"), 0).unwrap());
        Arc::new(Pods::open(programs, engine, network, &self.0.join("root"), &self.0.join("state")).await.unwrap())
    }

    fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }

    /// Directories holding the records these hold now, as a daemon killed
    /// now would leave them (its guests go on in this process, writing here only).
    fn as_if_killed(&self) -> Dirs {
        let copy = Dirs::new();
        std::fs::create_dir_all(copy.0.join("root/pods")).unwrap();
        std::fs::copy(self.0.join("root/pods/journal"), copy.0.join("root/pods/journal")).unwrap();
        copy
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod_config(name: &str, log_directory: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: log_directory.display().to_string(),
        labels: [("app".to_owned(), name.to_owned())].into(),
        linux: Some(api::LinuxPodSandboxConfig {
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(api::ImageSpec { image: image.into(), ..Default::default() }),
        log_path: format!("{name}.log"),
        annotations: [("io.kubernetes.container.restartCount".to_owned(), "0".to_owned())].into(),
        ..Default::default()
    }
}

/// Waits for the container's STOPPED event on `events`, skipping others.
async fn stopped(events: &mut (impl Stream<Item = ContainerEvent> + Unpin), id: &str) {
    while let Some(event) = events.next().await {
        if event.container_id == id && event.kind == EventKind::Stopped {
            return;
        }
    }
    panic!("the event stream ended before container {id} stopped");
}

fn exit_of(pods: &Pods, id: &str) -> Exit {
    pods.container(id).unwrap().view().exit.expect("the container has exited")
}

#[tokio::test]
async fn a_guest_ends_through_the_one_exit_path() {
    let dirs = Dirs::new();
    let pods = dirs.open().await;
    let pod = pods.run_pod(pod_config("one", &dirs.logs()), "wasmrun").await.unwrap();
    let container = pods.create_container(&pod.id, container_config("c", "exit-3")).await.unwrap();
    assert_eq!(container.state(), ContainerState::Created);
    let mut events = Box::pin(pods.subscribe());
    pods.start_container(&container.id).await.unwrap();
    stopped(&mut events, &container.id).await;

    let view = container.view();
    assert_eq!(view.state, ContainerState::Exited);
    let exit = view.exit.clone().unwrap();
    assert_eq!((exit.code, exit.reason), (3, ExitReason::Error));
    assert!(view.started_at > 0 && view.started_at <= exit.finished_at, "{view:?}");
    // The unfiltered list, kept between calls, shows the exit by the time the event is sent.
    let list =
        pods.encoded_container_list(&ContainerFilter::default(), |_, state| Bytes::from(format!("{state:?}"))).await;
    assert_eq!(list, "Exited");
    // An exited container cannot start again.
    let again = pods.start_container(&container.id).await.unwrap_err();
    assert!(matches!(&again, Error::FailedPrecondition(m) if m.contains("exited")), "{again}");
}

#[tokio::test]
async fn a_stop_ends_a_spinning_guest_and_remove_leaves_nothing() {
    let dirs = Dirs::new();
    let pods = dirs.open().await;
    let pod = pods.run_pod(pod_config("spin", &dirs.logs()), "wasmrun").await.unwrap();
    let container = pods.create_container(&pod.id, container_config("c", "spin")).await.unwrap();
    pods.start_container(&container.id).await.unwrap();
    assert_eq!(container.state(), ContainerState::Running);
    pods.stop_container(&container.id, Duration::ZERO).await.unwrap();
    assert_eq!(exit_of(&pods, &container.id).code, 128 + 9);
    pods.stop_container(&container.id, Duration::ZERO).await.unwrap();
    pods.remove_container(&container.id).await.unwrap();
    pods.remove_container(&container.id).await.unwrap();
    assert!(matches!(pods.container(&container.id), Err(Error::NotFound(_))));
    pods.remove_pod(&pod.id).await.unwrap();
    let restarted = dirs.open().await;
    assert!(restarted.pods(&PodFilter::default()).is_empty());
    assert!(restarted.containers(&ContainerFilter::default()).is_empty());
}

#[tokio::test]
async fn a_restart_brings_back_pods_and_containers() {
    let dirs = Dirs::new();
    let before = dirs.open().await;
    let pod = before.run_pod(pod_config("kept", &dirs.logs()), "wasmrun").await.unwrap();
    let stopped_pod = before.run_pod(pod_config("stopped", &dirs.logs()), "wasmrun").await.unwrap();
    let created = before.create_container(&pod.id, container_config("created", "hello")).await.unwrap();
    let exited = before.create_container(&pod.id, container_config("exited", "hello")).await.unwrap();
    let running = before.create_container(&pod.id, container_config("running", "spin")).await.unwrap();
    let mut events = Box::pin(before.subscribe());
    before.start_container(&exited.id).await.unwrap();
    stopped(&mut events, &exited.id).await;
    before.start_container(&running.id).await.unwrap();
    let resources = api::LinuxContainerResources { memory_limit_in_bytes: 32 << 20, ..Default::default() };
    before.update_container_resources(&running.id, resources.clone()).await.unwrap();
    before.stop_pod(&stopped_pod.id).await.unwrap();
    let exited_before = exit_of(&before, &exited.id);

    let restarted = dirs.as_if_killed();
    before.stop_container(&running.id, Duration::ZERO).await.unwrap();
    let after = restarted.open().await;

    let pods = after.pods(&PodFilter::default());
    assert_eq!(
        pods.iter().map(|p| (p.id.clone(), p.state())).collect::<Vec<_>>(),
        [(pod.id.clone(), SandboxState::Ready), (stopped_pod.id.clone(), SandboxState::NotReady)]
    );
    assert_eq!(pods[0].config, pod.config);
    assert_eq!(pods[0].created_at, pod.created_at);

    let c = after.container(&created.id).unwrap();
    assert_eq!(
        (c.state(), c.config.clone(), c.created_at),
        (ContainerState::Created, created.config.clone(), created.created_at)
    );
    assert_eq!(exit_of(&after, &exited.id), exited_before);
    let lost = after.container(&running.id).unwrap().view();
    assert_eq!(lost.state, ContainerState::Exited);
    assert_eq!(lost.resources, Some(resources));
    let exit = lost.exit.unwrap();
    assert_eq!((exit.code, exit.reason), (EXIT_LOST, ExitReason::Error));
    assert!(exit.message.contains("restarted"), "{}", exit.message);
    // Names stay reserved.
    let taken = after.create_container(&pod.id, container_config("created", "hello")).await.err();
    assert!(matches!(taken, Some(Error::AlreadyExists(_))), "{taken:?}");
    // The recovered exit is the first event a subscriber gets.
    let first = Box::pin(after.subscribe()).next().await.unwrap();
    assert_eq!((first.container_id.as_str(), first.kind), (running.id.as_str(), EventKind::Stopped));

    // A recovered container starts (its program compiled again) and ends as usual.
    let mut events = Box::pin(after.subscribe());
    after.start_container(&created.id).await.unwrap();
    stopped(&mut events, &created.id).await;
    assert_eq!(exit_of(&after, &created.id).code, 0);
    let log = std::fs::read_to_string(dirs.logs().join("created.log")).unwrap();
    assert!(log.ends_with(" stdout F hello\n"), "{log:?}");
    let log = std::fs::read_to_string(dirs.logs().join("exited.log")).unwrap();
    assert!(log.ends_with(" stdout F hello\n"), "{log:?}");

    // A third start finds what the second left: the lost exit is not made again.
    let third = restarted.open().await;
    assert_eq!(exit_of(&third, &running.id), exit);
    assert_eq!(exit_of(&third, &created.id).code, 0);
    for id in [&pod.id, &stopped_pod.id] {
        third.stop_pod(id).await.unwrap();
        third.remove_pod(id).await.unwrap();
    }
    assert!(restarted.open().await.containers(&ContainerFilter::default()).is_empty());
}

#[tokio::test]
async fn a_record_that_cannot_be_used_is_set_aside() {
    let dirs = Dirs::new();
    let before = dirs.open().await;
    let pod = before.run_pod(pod_config("p", &dirs.logs()), "wasmrun").await.unwrap();
    let kept = before.create_container(&pod.id, container_config("kept", "hello")).await.unwrap();
    let torn = before.create_container(&pod.id, container_config("torn", "hello")).await.unwrap();
    let orphan = before.run_pod(pod_config("orphan", &dirs.logs()), "wasmrun").await.unwrap();
    before.create_container(&orphan.id, container_config("c", "hello")).await.unwrap();
    drop(before);
    // The orphan's pod record is gone (as if deleted by hand), and the torn
    // container's line is the journal's last, cut short as a power loss may leave it.
    let journal = dirs.0.join("root/pods/journal");
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<&str> =
        text.lines().filter(|line| !line.contains(&format!("\"id\":\"{}\"", orphan.id))).collect();
    let torn_line = lines.iter().position(|line| line.contains(&torn.id)).unwrap();
    let torn_text = lines.remove(torn_line);
    let mut bytes = lines.join("\n").into_bytes();
    bytes.push(b'\n');
    bytes.extend_from_slice(&torn_text.as_bytes()[..torn_text.len() / 2]);
    std::fs::write(&journal, bytes).unwrap();

    let after = dirs.open().await;
    assert_eq!(after.pods(&PodFilter::default()).len(), 1);
    let containers: Vec<_> = after.containers(&ContainerFilter::default()).iter().map(|c| c.id.clone()).collect();
    assert_eq!(containers, vec![kept.id.clone()]);
    let set_aside = std::fs::read_dir(dirs.0.join("root/pods/set-aside")).unwrap().count();
    assert_eq!(set_aside, 2);
    // The name of the set-aside container is free again; the orphan is not recovered next time either.
    after.create_container(&pod.id, container_config("torn", "hello")).await.unwrap();
    drop(after);
    assert_eq!(dirs.open().await.containers(&ContainerFilter::default()).len(), 2);
}

#[tokio::test]
async fn events_come_in_order_each_with_the_pods_states_at_that_moment() {
    let dirs = Dirs::new();
    let pods = dirs.open().await;
    let pod = pods.run_pod(pod_config("events", &dirs.logs()), "wasmrun").await.unwrap();
    let mut events = Box::pin(pods.subscribe());
    let container = pods.create_container(&pod.id, container_config("c", "exit-3")).await.unwrap();
    pods.start_container(&container.id).await.unwrap();
    // Removed at once: the removal waits for the exit path, whether the guest
    // still runs or has just ended, so DELETED never comes before STOPPED.
    pods.remove_container(&container.id).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = events.next().await.unwrap();
        assert_eq!((event.container_id.as_str(), event.pod_id.as_str()), (container.id.as_str(), pod.id.as_str()));
        assert_eq!(event.pod.as_ref().map(|p| p.id.clone()), Some(pod.id.clone()));
        let states: Vec<_> = event.containers.iter().map(|(c, view)| (c.id.clone(), view.state)).collect();
        seen.push((event.kind, states));
    }
    let only = |state| vec![(container.id.clone(), state)];
    assert_eq!(seen[0], (EventKind::Created, only(ContainerState::Created)));
    assert_eq!(seen[1].0, EventKind::Started);
    assert_eq!(seen[2], (EventKind::Stopped, only(ContainerState::Exited)));
    assert_eq!(seen[3], (EventKind::Deleted, Vec::new()));
}

#[tokio::test]
async fn a_joined_pod_runs_wasm_containers_is_listed_by_the_backing_runtime_and_survives_a_restart() {
    let dirs = Dirs::new();
    let pods = dirs.open().await;
    let joined = |netns: Option<PathBuf>| network::Joined { netns, ips: vec!["10.1.0.7".parse().unwrap()] };
    // Ids as the backing runtime gives them.
    let (host_id, gone_id) = ("a".repeat(64), "b".repeat(64));
    let host = pods.join_pod(&host_id, pod_config("mixed-host", &dirs.logs()), "", joined(None), 7).await.unwrap();
    // A namespace file that will be gone when the daemon comes back.
    let pin = dirs.0.join("backing-netns");
    std::fs::write(&pin, "").unwrap();
    pods.join_pod(&gone_id, pod_config("mixed-gone", &dirs.logs()), "", joined(Some(pin.clone())), 7).await.unwrap();

    let again = pods.join_pod(&host_id, pod_config("mixed-host", &dirs.logs()), "", joined(None), 7).await.err();
    assert!(matches!(again, Some(Error::AlreadyExists(_))), "{again:?}");
    let missing = dirs.0.join("no-such-netns");
    let refused =
        pods.join_pod(&"c".repeat(64), pod_config("c", &dirs.logs()), "", joined(Some(missing)), 7).await.err();
    assert!(matches!(&refused, Some(Error::FailedPrecondition(m)) if m.contains("no-such-netns")), "{refused:?}");
    assert!(pods.pod(&"c".repeat(64)).is_err(), "a pod that could not be joined is kept");

    // Not listed here; its containers are, under its id.
    assert!(pods.pods(&PodFilter::default()).is_empty());
    let container = pods.create_container(&host.id, container_config("web", "hello")).await.unwrap();
    let mut events = Box::pin(pods.subscribe());
    pods.start_container(&container.id).await.unwrap();
    stopped(&mut events, &container.id).await;
    assert_eq!(exit_of(&pods, &container.id).code, 0);
    let filter = ContainerFilter { pod_id: Some(host_id.clone()), ..Default::default() };
    assert_eq!(pods.containers(&filter).len(), 1);

    // A restart keeps both; the one whose namespace is gone is not ready,
    // so no guest of it can start on the node's network.
    std::fs::remove_file(&pin).unwrap();
    let after = dirs.as_if_killed().open().await;
    assert!(after.pods(&PodFilter::default()).is_empty());
    let host_after = after.pod(&host_id).unwrap();
    assert_eq!((host_after.state(), host_after.joined.clone()), (SandboxState::Ready, Some(joined(None))));
    assert_eq!(host_after.created_at, 7);
    let gone_after = after.pod(&gone_id).unwrap();
    assert_eq!((gone_after.state(), gone_after.joined.clone()), (SandboxState::NotReady, Some(joined(Some(pin)))));
    assert_eq!(exit_of(&after, &container.id).code, 0);

    // Stop and remove forget it and its containers; again is fine.
    for _ in 0..2 {
        after.stop_pod(&host_id).await.unwrap();
        after.remove_pod(&host_id).await.unwrap();
    }
    assert!(after.pod(&host_id).is_err() && after.container(&container.id).is_err());
}

#[tokio::test]
async fn execs_run_in_a_running_container_and_end_with_it() {
    let dirs = Dirs::new();
    let pods = dirs.open().await;
    let pod = pods.run_pod(pod_config("exec", &dirs.logs()), "wasmrun").await.unwrap();
    let container = pods.create_container(&pod.id, container_config("c", "spin")).await.unwrap();
    let refused =
        pods.exec(&container.id, vec!["hello".into()], Stdin::default(), Output::discard()).await.err().unwrap();
    assert!(matches!(&refused, Error::FailedPrecondition(m) if m.contains("created")), "{refused}");
    pods.start_container(&container.id).await.unwrap();

    // Another program by name: its output, its exit.
    let (captured, output) = Captured::new(1024);
    let exit = pods.exec(&container.id, vec!["hello".into()], Stdin::default(), output).await.unwrap().wait().await;
    assert_eq!((exit.code, captured.stdout()), (0, b"hello\n".to_vec()));
    // No program of that name: 127, as a shell says.
    let (captured, output) = Captured::new(1024);
    let exit =
        pods.exec(&container.id, vec!["sh".into(), "-c".into()], Stdin::default(), output).await.unwrap().wait().await;
    assert_eq!((exit.code, captured.stderr()), (exec::EXIT_NOT_FOUND, b"sh: program not found\n".to_vec()));
    let empty = pods.exec(&container.id, vec![], Stdin::default(), Output::discard()).await.err().unwrap();
    assert!(matches!(empty, Error::InvalidArgument(_)), "{empty}");

    // Dropping an exec ends its instance (a client that went away).
    let exec = pods.exec(&container.id, vec!["spin".into()], Stdin::default(), Output::discard()).await.unwrap();
    assert_eq!(container.running_execs(), 1);
    drop(exec);
    assert_eq!(container.running_execs(), 0);

    // The container's own program, by name; stopping the container ends it.
    let exec = pods
        .exec(&container.id, vec!["spin".into(), "--again".into()], Stdin::default(), Output::discard())
        .await
        .unwrap();
    pods.stop_container(&container.id, Duration::ZERO).await.unwrap();
    let exit = exec.wait().await;
    assert_eq!((exit.code, exit.message.as_str()), (128 + 9, "stopped"));
    assert_eq!(container.running_execs(), 0);
    let refused =
        pods.exec(&container.id, vec!["spin".into()], Stdin::default(), Output::discard()).await.err().unwrap();
    assert!(matches!(&refused, Error::FailedPrecondition(m) if m.contains("exited")), "{refused}");
}
