//! A container: a compiled module, the config kubelet gave, and its state
//! machine Created → Running → Exited.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Sandbox;
use super::listing::KeptEntry;
use crate::api;
use crate::error::{Error, Result};
use crate::images::Image;
use crate::logs::{ContainerLog, OpenedLog};
use crate::wasm::{
    Compiled, CpuBandwidth, EXIT_NOT_STARTED, Engine, Exit, ExitReason, ExitWaiter, Guest, GuestSpec, Limits,
    ModuleSource, Mount, Root, UsageSnapshot,
};

/// How long a stop waits for a killed guest to be gone. A guest yields every
/// epoch tick, so this is only reached if something is badly wrong.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    /// CRI's unknown state; no container of ours is ever in it.
    Unknown,
}

enum Phase {
    Created,
    /// StartContainer is opening the log and building the guest.
    Starting,
    Started {
        guest: Guest,
        log: Arc<ContainerLog>,
        started_at: i64,
    },
    /// StartContainer failed: the container never ran.
    StartFailed {
        exit: Exit,
    },
}

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
    pub created_at: i64,
    pub module_source: ModuleSource,
    compiled: Arc<Compiled>,
    resources: Mutex<Option<api::LinuxContainerResources>>,
    phase: Mutex<Phase>,
    /// The container's entry of a ListContainers response.
    pub(super) list_entry: KeptEntry<ContainerState>,
}

pub(super) struct NewContainer {
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
    pub compiled: Arc<Compiled>,
    pub module_source: ModuleSource,
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
    pub(super) fn new(new: NewContainer) -> Self {
        let resources = new.config.linux.as_ref().and_then(|linux| linux.resources.clone());
        Self {
            id: new.id,
            pod_id: new.pod_id,
            reserved_name: new.reserved_name,
            config: new.config,
            image: new.image,
            process: new.process,
            log_path: new.log_path,
            mounts: new.mounts,
            root: new.root,
            scratch_dir: new.scratch_dir,
            created_at: crate::durable::now_nanos(),
            module_source: new.module_source,
            compiled: new.compiled,
            resources: Mutex::new(resources),
            phase: Mutex::new(Phase::Created),
            list_entry: KeptEntry::default(),
        }
    }

    pub fn state(&self) -> ContainerState {
        match &*self.phase.lock().unwrap() {
            Phase::Created | Phase::Starting => ContainerState::Created,
            Phase::StartFailed { .. } => ContainerState::Exited,
            Phase::Started { guest, .. } if guest.has_ended() => ContainerState::Exited,
            Phase::Started { .. } => ContainerState::Running,
        }
    }

    pub fn view(&self) -> ContainerView {
        let resources = self.resources.lock().unwrap().clone();
        let phase = self.phase.lock().unwrap();
        let (state, started_at, exit, usage) = match &*phase {
            Phase::Created | Phase::Starting => (ContainerState::Created, 0, None, UsageSnapshot::default()),
            Phase::StartFailed { exit } => (ContainerState::Exited, 0, Some(exit.clone()), UsageSnapshot::default()),
            Phase::Started { guest, started_at, .. } => {
                let exit = guest.exit();
                let state = if exit.is_some() { ContainerState::Exited } else { ContainerState::Running };
                (state, *started_at, exit, guest.usage.snapshot())
            }
        };
        ContainerView { state, started_at, exit, resources, usage }
    }

    /// The guest's view: argv, env, working dir and mounts.
    fn guest_spec(&self) -> GuestSpec {
        GuestSpec {
            argv: self.process.argv.clone(),
            env: self.process.env.clone(),
            working_dir: Some(self.process.working_dir.clone()).filter(|dir| !dir.is_empty()),
            root: self.root.clone(),
            mounts: self.mounts.clone(),
            scratch_dir: Some(self.scratch_dir.clone()),
        }
    }

    pub(super) async fn start(&self, engine: &Engine) -> Result<()> {
        {
            let mut phase = self.phase.lock().unwrap();
            if !matches!(*phase, Phase::Created) {
                return Err(Error::FailedPrecondition(format!(
                    "container {} cannot be started: it is {}",
                    self.id,
                    describe(&phase)
                )));
            }
            *phase = Phase::Starting;
        }
        // Taken before the guest runs, so that started_at <= finished_at even
        // for a guest that is done before `engine.start` returns.
        let started_at = crate::durable::now_nanos();
        let started = async {
            let OpenedLog { log, output } = ContainerLog::open(self.log_path.clone())
                .await
                .map_err(|e| Error::internal(format!("opening the log of container {}", self.id), e))?;
            let limits = self.resources.lock().unwrap().as_ref().map(limits_of).unwrap_or_default();
            let usage = engine.new_usage(limits);
            let guest = engine.start(self.compiled.clone(), self.guest_spec(), usage, output.into()).await?;
            Ok::<_, Error>((guest, log))
        }
        .await;
        let mut phase = self.phase.lock().unwrap();
        match started {
            Ok((guest, log)) => {
                *phase = Phase::Started { guest, log: Arc::new(log), started_at };
                Ok(())
            }
            Err(e) => {
                *phase = Phase::StartFailed {
                    exit: Exit {
                        code: EXIT_NOT_STARTED,
                        reason: ExitReason::StartError,
                        message: e.to_string(),
                        finished_at: crate::durable::now_nanos(),
                    },
                };
                Err(e)
            }
        }
    }

    /// Ends the guest if it runs, and waits until it is gone and its output written.
    pub(super) async fn stop(&self) -> Result<()> {
        let waiter = {
            let mut phase = self.phase.lock().unwrap();
            match &mut *phase {
                Phase::Started { guest, .. } if !guest.has_ended() => {
                    guest.kill();
                    guest.waiter()
                }
                _ => return Ok(()),
            }
        };
        match tokio::time::timeout(STOP_GRACE, waiter.wait()).await {
            Ok(exit) => {
                tracing::info!(container = %self.id, code = exit.code, "container stopped");
                Ok(())
            }
            Err(_) => Err(Error::internal(
                format!("stopping container {}", self.id),
                anyhow::anyhow!("the guest did not end within {STOP_GRACE:?} of being killed"),
            )),
        }
    }

    /// Something to wait on for the guest's end, once it has started.
    pub(super) fn exit_waiter(&self) -> Option<ExitWaiter> {
        match &*self.phase.lock().unwrap() {
            Phase::Started { guest, .. } => Some(guest.waiter()),
            _ => None,
        }
    }

    pub async fn reopen_log(&self) -> Result<()> {
        let log = {
            let phase = self.phase.lock().unwrap();
            match &*phase {
                Phase::Started { guest, log, .. } if !guest.has_ended() => log.clone(),
                other => {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} is {}: only a running container's log can be reopened",
                        self.id,
                        describe(other)
                    )));
                }
            }
        };
        log.reopen().await.map_err(|e| Error::internal(format!("reopening the log of container {}", self.id), e))
    }

    /// Records new resources. The memory limit applies to the running guest at
    /// its next memory growth, the CPU quota at its next yield; the other
    /// fields are kept and reported.
    pub fn update_resources(&self, resources: api::LinuxContainerResources) -> Result<()> {
        super::checks::resources_of(&format!("UpdateContainerResources of container {}", self.id), &resources)?;
        if let Phase::Started { guest, .. } = &*self.phase.lock().unwrap() {
            guest.set_limits(limits_of(&resources));
        }
        *self.resources.lock().unwrap() = Some(resources);
        Ok(())
    }
}

/// What the guest is held to, from the CRI resources: memory_limit_in_bytes
/// (0: the engine's default) and the CFS quota and period.
fn limits_of(resources: &api::LinuxContainerResources) -> Limits {
    Limits {
        memory_bytes: resources.memory_limit_in_bytes.max(0) as u64,
        cpu: CpuBandwidth::from_cri(resources.cpu_quota, resources.cpu_period),
    }
}

fn describe(phase: &Phase) -> &'static str {
    match phase {
        Phase::Created => "created",
        Phase::Starting => "starting",
        Phase::Started { guest, .. } if !guest.has_ended() => "running",
        Phase::Started { .. } | Phase::StartFailed { .. } => "exited",
    }
}

/// What the guest is started with, from the image config and the CRI config.
#[derive(Debug, Clone, PartialEq)]
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
