//! A container: the config kubelet gave, the program it runs, and its
//! lifecycle (`lifecycle.rs`). `Pods` drives it; the container keeps its
//! state consistent under one lock and knows nothing of events or records.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, watch};

use super::Sandbox;
use super::lifecycle::{ContainerState, Lifecycle, StopAction, Transition};
use super::listing::KeptEntry;
use crate::api;
use crate::error::{Error, Result};
use crate::images::Image;
use crate::logs::ContainerLog;
use crate::wasm::{
    Compiled, CpuBandwidth, Exit, Guest, GuestSpec, Limits, ModuleSource, Mount, Root, Usage, UsageSnapshot,
};

/// How long a stop waits, past its grace period, for the guest's exit to be
/// recorded. A guest yields every epoch tick, so this is only reached if
/// something is badly wrong.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct Container {
    pub id: String,
    pub pod_id: String,
    pub(super) reserved_name: String,
    /// Exactly as kubelet sent it: metadata, labels, annotations, command, mounts.
    pub config: api::ContainerConfig,
    pub image: Image,
    pub process: Process,
    pub log_path: Option<PathBuf>,
    pub mounts: Vec<Mount>,
    /// A compat image's filesystem as the guest's `/`: the image's own tree,
    /// read-only, or an overlay of the container's own under `scratch_dir`.
    pub root: Option<Root>,
    /// `<state>/containers/<id>`: host files of the container's own, removed with it.
    pub scratch_dir: PathBuf,
    /// Unix time in nanoseconds.
    pub created_at: i64,
    /// Where its compiled code came from when it was created.
    pub module_source: ModuleSource,
    /// The compiled program: set at creation, or at the first start of a
    /// container recovered after a restart (`Pods::start_container`).
    pub(super) compiled: OnceCell<Arc<Compiled>>,
    resources: Mutex<Option<api::LinuxContainerResources>>,
    /// What its guests use and are held to (CPU, memory), charged by every
    /// instance started for it; kept after they end.
    pub(super) usage: Arc<Usage>,
    inner: Mutex<Inner>,
    /// True once the guest's end is recorded (the one exit path); a stop waits for it.
    ended: watch::Sender<bool>,
    /// Held while the container's record is written, so records are written
    /// one at a time, each from the state at its writing; true once the
    /// record is deleted (nothing is written after).
    pub(super) record_lock: Mutex<bool>,
    /// The container's entry of a ListContainers response.
    pub(super) list_entry: KeptEntry<ContainerState>,
}

/// What changes as the container lives: its lifecycle and, while it runs,
/// the handles of its guest.
struct Inner {
    life: Lifecycle,
    guest: Option<Guest>,
    log: Option<Arc<ContainerLog>>,
    /// The instances of execs under way (see `pods::exec`), by number:
    /// ended with the container.
    execs: HashMap<u64, Guest>,
    next_exec: u64,
    /// The writing end of the guest's stdin while it runs, for a container
    /// created with `stdin: true` (what attached clients write to).
    stdin: Option<Arc<tokio::sync::Mutex<StdinWriter>>>,
}

/// The writing end of a guest's stdin pipe.
pub type StdinWriter = tokio::io::WriteHalf<tokio::io::SimplexStream>;

/// What an attached client gets of a running container (CRI Attach).
pub struct Attached {
    /// The guest's output from now on; ends once the container has ended.
    pub output: tokio::sync::broadcast::Receiver<(crate::logs::Stream, bytes::Bytes)>,
    /// Its stdin, when the container was created with `stdin: true`.
    pub stdin: Option<Arc<tokio::sync::Mutex<StdinWriter>>>,
}

/// What a container is made of; the same for a new container and one
/// recovered from its record.
pub(super) struct Parts {
    pub id: String,
    pub pod_id: String,
    pub reserved_name: String,
    pub config: api::ContainerConfig,
    pub image: Image,
    pub process: Process,
    pub log_path: Option<PathBuf>,
    pub mounts: Vec<Mount>,
    pub root: Option<Root>,
    pub scratch_dir: PathBuf,
    pub created_at: i64,
    pub module_source: ModuleSource,
    pub resources: Option<api::LinuxContainerResources>,
    /// From `Engine::new_usage`, with the limits of `resources`.
    pub usage: Arc<Usage>,
    pub life: Lifecycle,
}

/// A consistent snapshot of a container's state, for status and list calls.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub state: ContainerState,
    pub started_at: i64,
    pub exit: Option<Exit>,
    pub resources: Option<api::LinuxContainerResources>,
    /// The guest's counters, once started.
    pub usage: UsageSnapshot,
}

impl Container {
    pub(super) fn new(parts: Parts, compiled: Option<Arc<Compiled>>) -> Self {
        let ended = matches!(parts.life.phase, super::lifecycle::Phase::Exited { .. });
        Self {
            id: parts.id,
            pod_id: parts.pod_id,
            reserved_name: parts.reserved_name,
            config: parts.config,
            image: parts.image,
            process: parts.process,
            log_path: parts.log_path,
            mounts: parts.mounts,
            root: parts.root,
            scratch_dir: parts.scratch_dir,
            created_at: parts.created_at,
            module_source: parts.module_source,
            compiled: OnceCell::new_with(compiled),
            resources: Mutex::new(parts.resources),
            usage: parts.usage,
            inner: Mutex::new(Inner {
                life: parts.life,
                guest: None,
                log: None,
                execs: HashMap::new(),
                next_exec: 0,
                stdin: None,
            }),
            ended: watch::Sender::new(ended),
            record_lock: Mutex::new(false),
            list_entry: KeptEntry::default(),
        }
    }

    pub fn state(&self) -> ContainerState {
        self.inner.lock().unwrap().life.state()
    }

    /// The lifecycle now (a copy).
    pub(super) fn lifecycle(&self) -> Lifecycle {
        self.inner.lock().unwrap().life.clone()
    }

    /// The resources as last set (CreateContainer or UpdateContainerResources).
    pub(super) fn resources(&self) -> Option<api::LinuxContainerResources> {
        self.resources.lock().unwrap().clone()
    }

    pub fn view(&self) -> ContainerView {
        let resources = self.resources();
        let inner = self.inner.lock().unwrap();
        ContainerView {
            state: inner.life.state(),
            started_at: inner.life.started_at(),
            exit: inner.life.exit().cloned(),
            resources,
            usage: self.usage.snapshot(),
        }
    }

    /// Applies a transition that needs no guest handle: Start, Remove.
    /// Errors: FailedPrecondition naming the container and its phase.
    pub(super) fn apply(&self, transition: Transition) -> Result<()> {
        self.inner
            .lock()
            .unwrap()
            .life
            .apply(transition)
            .map_err(|refused| Error::FailedPrecondition(format!("container {}: {refused}", self.id)))
    }

    /// Records that the guest runs (Starting → Running) and keeps its handles.
    pub(super) fn set_running(&self, guest: Guest, log: ContainerLog, started_at: i64) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        inner
            .life
            .apply(Transition::Started { at: started_at })
            .map_err(|refused| Error::internal(format!("container {}", self.id), anyhow::anyhow!("{refused}")))?;
        inner.guest = Some(guest);
        inner.log = Some(Arc::new(log));
        Ok(())
    }

    /// Records the end (`Exited`, `StartFailed` or `Recovered`), lets the
    /// guest's handles go, and wakes whoever waits for it. Only
    /// `Pods::record_exit` calls this: the one exit path.
    pub(super) fn end(&self, transition: Transition) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        inner
            .life
            .apply(transition)
            .map_err(|refused| Error::internal(format!("container {}", self.id), anyhow::anyhow!("{refused}")))?;
        inner.guest = None;
        inner.log = None;
        inner.stdin = None;
        // An exec cannot outlive its container.
        for (_, mut exec) in inner.execs.drain() {
            exec.stop(Duration::ZERO);
        }
        Ok(())
    }

    /// Keeps the instance of an exec, so that the container's end ends it
    /// too, and returns its number for [`Container::end_exec`].
    /// Errors: FailedPrecondition, with the instance ended, when the
    /// container no longer runs (it ended while the exec was started).
    pub(super) fn add_exec(&self, mut exec: Guest) -> Result<u64> {
        let mut inner = self.inner.lock().unwrap();
        if inner.life.state() != ContainerState::Running {
            exec.stop(Duration::ZERO);
            return Err(self.not_running(&inner.life, "exec"));
        }
        let id = inner.next_exec;
        inner.next_exec += 1;
        inner.execs.insert(id, exec);
        Ok(id)
    }

    /// Ends exec `id` if it still runs, and forgets it.
    pub(super) fn end_exec(&self, id: u64) {
        if let Some(mut exec) = self.inner.lock().unwrap().execs.remove(&id) {
            exec.stop(Duration::ZERO);
        }
    }

    /// The guest's stdin for a start: a pipe whose writing end the container
    /// keeps for attached clients when it was created with `stdin: true`
    /// (CRI `ContainerConfig.stdin`); else an empty stdin, as containerd gives.
    pub(super) fn open_stdin(&self) -> crate::wasm::Stdin {
        if !self.config.stdin {
            return crate::wasm::Stdin::default();
        }
        let (read_end, write_end) = tokio::io::simplex(64 * 1024);
        self.inner.lock().unwrap().stdin = Some(Arc::new(tokio::sync::Mutex::new(write_end)));
        crate::wasm::Stdin::new(read_end)
    }

    /// The running guest's output and stdin, for an attached client.
    /// Errors: FailedPrecondition when it is not running.
    pub fn attach(&self) -> Result<Attached> {
        let inner = self.inner.lock().unwrap();
        match (&inner.log, inner.life.state()) {
            (Some(log), ContainerState::Running) => Ok(Attached { output: log.attach(), stdin: inner.stdin.clone() }),
            _ => Err(self.not_running(&inner.life, "attach")),
        }
    }

    /// Nothing when the container runs; else FailedPrecondition saying that
    /// `what` (exec, attach) needs a running container, as containerd refuses it.
    pub fn require_running(&self, what: &str) -> Result<()> {
        let inner = self.inner.lock().unwrap();
        match inner.life.state() {
            ContainerState::Running => Ok(()),
            _ => Err(self.not_running(&inner.life, what)),
        }
    }

    fn not_running(&self, life: &Lifecycle, what: &str) -> Error {
        Error::FailedPrecondition(format!(
            "container {} is {}: {what} needs a running container",
            self.id,
            life.describe()
        ))
    }

    /// Ends the guest's input (`stdin_once`: the first attached client's
    /// stdin closing is its end); later attaches get no stdin.
    pub async fn close_stdin(&self) {
        let stdin = self.inner.lock().unwrap().stdin.take();
        if let Some(stdin) = stdin {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.lock().await.shutdown().await;
        }
    }

    /// How many execs are under way.
    pub fn running_execs(&self) -> usize {
        self.inner.lock().unwrap().execs.len()
    }

    /// Wakes the stops waiting for the recorded end (see `end`).
    pub(super) fn wake_stoppers(&self) {
        self.ended.send_replace(true);
    }

    /// The guest's view: argv, env, working dir and mounts.
    /// What the guest is started with; its sockets are made in its pod's
    /// `network` namespace, its names resolved with the pod's DNS config.
    pub(super) fn guest_spec(&self, network: &crate::network::PodNetwork) -> GuestSpec {
        GuestSpec {
            container_id: self.id.clone(),
            argv: self.process.argv.clone(),
            env: self.process.env.clone(),
            working_dir: Some(self.process.working_dir.clone()).filter(|dir| !dir.is_empty()),
            root: self.root.clone(),
            mounts: self.mounts.clone(),
            scratch_dir: Some(self.scratch_dir.clone()),
            netns: network.netns.clone(),
            resolver: network.resolver.clone(),
            stdin: Default::default(),
        }
    }

    /// Ends the guest if it runs, giving it `grace` (a served component's
    /// requests in flight get it; a command ends at once, see
    /// [`Guest::stop`]), and waits until its exit is recorded (its output
    /// written, its file mounts copied back, its event sent): also when it
    /// ended by itself and the exit path is still at work. Nothing to do for
    /// a container that never ran. Errors: FailedPrecondition while it is
    /// being started (as containerd refuses); Internal if the guest does not end.
    pub(super) async fn stop(&self, grace: Duration) -> Result<()> {
        let mut ended = self.ended.subscribe();
        {
            let mut inner = self.inner.lock().unwrap();
            match inner.life.stop_action() {
                StopAction::Nothing if inner.life.exit().is_none() || *ended.borrow() => return Ok(()),
                // Ended by itself; the exit path has not finished.
                StopAction::Nothing => {}
                StopAction::Refuse => {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} is being started: stop it once StartContainer has returned",
                        self.id
                    )));
                }
                StopAction::Kill => {
                    if let Some(guest) = inner.guest.as_mut() {
                        guest.stop(grace);
                    }
                }
            }
        }
        match tokio::time::timeout(grace + STOP_GRACE, ended.wait_for(|ended| *ended)).await {
            Ok(_) => {
                tracing::info!(container = %self.id, "container stopped");
                Ok(())
            }
            Err(_) => Err(Error::internal(
                format!("stopping container {}", self.id),
                anyhow::anyhow!("the guest's exit was not recorded within {:?} of stopping it", grace + STOP_GRACE),
            )),
        }
    }

    pub async fn reopen_log(&self) -> Result<()> {
        let log = {
            let inner = self.inner.lock().unwrap();
            match (&inner.log, inner.life.state()) {
                (Some(log), ContainerState::Running) => log.clone(),
                _ => {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} is {}: only a running container's log can be reopened",
                        self.id,
                        inner.life.describe()
                    )));
                }
            }
        };
        log.reopen().await.map_err(|e| Error::internal(format!("reopening the log of container {}", self.id), e))
    }

    /// Records new resources. The memory limit applies to the running guest at
    /// its next memory growth, the CPU quota at its next yield; the other
    /// fields are kept and reported.
    pub(super) fn update_resources(&self, resources: api::LinuxContainerResources) -> Result<()> {
        super::checks::resources_of(&format!("UpdateContainerResources of container {}", self.id), &resources)?;
        self.usage.set_limits(limits_of(&resources));
        *self.resources.lock().unwrap() = Some(resources);
        Ok(())
    }
}

/// What the guest is held to, from the CRI resources: memory_limit_in_bytes
/// (0: the engine's default) and the CFS quota and period.
pub(super) fn limits_of(resources: &api::LinuxContainerResources) -> Limits {
    Limits {
        memory_bytes: resources.memory_limit_in_bytes.max(0) as u64,
        cpu: CpuBandwidth::from_cri(resources.cpu_quota, resources.cpu_period),
    }
}

/// What the guest is started with, from the image config and the CRI config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
}

impl Process {
    /// As container runtimes do: the CRI command replaces the image's
    /// entrypoint (and then its cmd too), the CRI args replace its cmd; the
    /// CRI env overrides the image's; the CRI working dir, the image's.
    pub fn new(image: &Image, config: &api::ContainerConfig) -> Self {
        let (entrypoint, cmd) = if !config.command.is_empty() {
            (&config.command, &config.args)
        } else if !config.args.is_empty() {
            (&image.entrypoint, &config.args)
        } else {
            (&image.entrypoint, &image.cmd)
        };
        let mut env: Vec<(String, String)> = image
            .env
            .iter()
            .map(|kv| kv.split_once('=').map_or((kv.clone(), String::new()), |(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        for kv in &config.envs {
            env.retain(|(key, _)| *key != kv.key);
            env.push((kv.key.clone(), kv.value.clone()));
        }
        let working_dir =
            if config.working_dir.is_empty() { image.working_dir.clone() } else { config.working_dir.clone() };
        Self { argv: entrypoint.iter().chain(cmd).cloned().collect(), env, working_dir }
    }
}

/// The log file: the pod's log directory joined with the container's log path,
/// which must stay inside it. `None` when either is unset (output is dropped).
pub(super) fn log_path(sandbox: &Sandbox, config: &api::ContainerConfig) -> Result<Option<PathBuf>> {
    let directory = &sandbox.config.log_directory;
    if directory.is_empty() || config.log_path.is_empty() {
        return Ok(None);
    }
    let relative = Path::new(&config.log_path);
    if !relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(Error::InvalidArgument(format!(
            "CreateContainer: log_path {:?} must be relative to the pod's log directory, without `..`",
            config.log_path
        )));
    }
    Ok(Some(Path::new(directory).join(relative)))
}

/// Whether the container's root filesystem is read-only
/// (`linux.security_context.readonly_rootfs`; Kubernetes' default is writable).
pub(super) fn readonly_rootfs(config: &api::ContainerConfig) -> bool {
    config.linux.as_ref().and_then(|linux| linux.security_context.as_ref()).is_some_and(|sc| sc.readonly_rootfs)
}

/// Mounts as the guest sees them: each container path must be absolute.
pub(super) fn mounts(config: &api::ContainerConfig) -> Result<Vec<Mount>> {
    config
        .mounts
        .iter()
        .map(|mount| {
            if !mount.container_path.starts_with('/') {
                return Err(Error::InvalidArgument(format!(
                    "CreateContainer: mount container_path {:?} must be absolute",
                    mount.container_path
                )));
            }
            if mount.host_path.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "CreateContainer: mount at {:?} has no host_path",
                    mount.container_path
                )));
            }
            Ok(Mount {
                host_path: mount.host_path.clone(),
                guest_path: mount.container_path.clone(),
                readonly: mount.readonly,
            })
        })
        .collect()
}
