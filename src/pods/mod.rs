//! Pods and containers: their identities, their state machines
//! (`lifecycle.rs`), their records on disk (`records.rs`), and the guests
//! behind running containers.
//!
//! A container moves Created → Running → Exited and never back. Names
//! (pod: namespace, name, uid, attempt; container: pod, name, attempt) are
//! reserved until the object is removed, so a retried create is refused.
//!
//! A guest's end is learned in one place, [`Pods::record_exit`]: it records
//! the transition, writes the record, counts the change for the list caches,
//! sends the event and wakes a waiting stop, in that order.

mod checks;
mod container;
mod events;
mod exec;
mod filter;
mod lifecycle;
mod listing;
mod programs;
mod records;
mod rootfs;
mod sandbox;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio_stream::Stream;

pub use container::{Attached, Container, ContainerView};
pub use events::{ContainerEvent, EventKind};
pub use filter::{ContainerFilter, PodFilter};
pub use lifecycle::ContainerState;
pub use programs::{ImagePrograms, Programs};
pub use sandbox::{Sandbox, SandboxState};

use crate::api;
use crate::error::{Error, Result};
use crate::logs::{ContainerLog, OpenedLog};
use crate::network::{self, Attachment, NetNs, Network, PodNetwork};
use crate::wasm::{self, EXIT_NOT_STARTED, Engine};
use lifecycle::{Lifecycle, Phase, Transition};
use records::{ContainerRecord, PhaseRecord, Proto, Records, RootRecord};

pub struct Pods {
    programs: Arc<dyn Programs>,
    engine: Arc<Engine>,
    network: Arc<Network>,
    /// `<state>/containers`: each container's scratch directory is in it, named by its id.
    containers_dir: PathBuf,
    records: Records,
    registry: Mutex<Registry>,
    events: events::Events,
    /// Pods run, stopped and removed: what a pod list shows.
    pod_changes: listing::Changes,
    unfiltered_pod_list: listing::UnfilteredList,
    /// Containers created, started, ended and removed: what a container list shows.
    container_changes: listing::Changes,
    unfiltered_container_list: listing::UnfilteredList,
}

#[derive(Default)]
struct Registry {
    sandboxes: HashMap<String, Arc<Sandbox>>,
    containers: HashMap<String, Arc<Container>>,
    names: HashSet<String>,
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The name a container reserves in its pod.
fn container_name(pod_id: &str, metadata: &api::ContainerMetadata) -> String {
    format!("{pod_id}/{}/{}", metadata.name, metadata.attempt)
}

impl Pods {
    /// Pods and containers as the records under `root` left them (see
    /// `records.rs`), with the containers' scratch directories under
    /// `state_dir`. Containers that ran when the daemon stopped come back
    /// exited ([`lifecycle::EXIT_LOST`], reason Error), and each such exit is sent to
    /// every GetContainerEvents subscriber. Pods' networks are set up and torn
    /// down through `network`. Errors: Internal when the record directories
    /// cannot be made.
    pub async fn open(
        programs: Arc<dyn Programs>,
        engine: Arc<Engine>,
        network: Arc<Network>,
        root: &Path,
        state_dir: &Path,
    ) -> Result<Self> {
        let containers_dir = state_dir.join("containers");
        let (records, loaded) = {
            let (root, containers_dir) = (root.to_owned(), containers_dir.clone());
            tokio::task::spawn_blocking(move || {
                clear_scratch(&containers_dir);
                Records::open(&root)
            })
            .await
            .map_err(|e| Error::internal("loading the pod and container records", e))??
        };
        let pods = Self {
            programs,
            engine,
            network,
            containers_dir,
            records,
            registry: Mutex::new(Registry::default()),
            events: events::Events::new(),
            pod_changes: listing::Changes::default(),
            unfiltered_pod_list: listing::UnfilteredList::default(),
            container_changes: listing::Changes::default(),
            unfiltered_container_list: listing::UnfilteredList::default(),
        };
        pods.recover(loaded).await;
        Ok(pods)
    }

    /// The memory budget of all guests, what they hold and its refusals
    /// (verbose Status shows it).
    pub fn memory_budget(&self) -> crate::wasm::BudgetSnapshot {
        self.engine.memory_budget()
    }

    /// Puts the loaded records back in the registry.
    async fn recover(&self, loaded: records::Loaded) {
        let now = crate::clock::now_nanos();
        for record in loaded.sandboxes {
            // `run_pod` and `join_pod` refuse a pod without metadata: every record has it.
            if record.config.0.metadata.is_none() {
                continue;
            }
            // Its namespace is pinned still, unless the node rebooted (the
            // state directory is gone) or the backing runtime removed a
            // joined one: its teardown runs without it then.
            let path = match (&record.network, &record.joined) {
                (Some(attachment), _) => Some(attachment.netns.as_path()),
                (None, Some(joined)) => joined.netns.as_deref(),
                (None, None) => None,
            };
            let netns = path.and_then(|path| match NetNs::open(path) {
                Ok(netns) => Some(Arc::new(netns)),
                Err(e) => {
                    tracing::warn!(pod = %record.id, netns = %path.display(), error = %e, "the pod's network namespace is gone; the pod is not ready");
                    None
                }
            });
            // A pod whose namespace is gone must not start guests: they would
            // get the node's network.
            let ready = record.ready && (path.is_none() || netns.is_some());
            let network = PodNetwork::new(&record.id, &record.config.0, record.network, netns);
            let sandbox = Sandbox::new(
                record.id,
                record.config.0,
                record.runtime_handler,
                record.created_at,
                ready,
                network,
                record.joined,
            );
            let mut registry = self.registry.lock().unwrap();
            if let Some(name) = sandbox.reserved_name() {
                registry.names.insert(name);
            }
            registry.sandboxes.insert(sandbox.id.clone(), Arc::new(sandbox));
        }
        let (mut created, mut ended) = (0, 0);
        for record in loaded.containers {
            let (container, ended_now) = match self.recover_container(record.clone(), now).await {
                Ok(recovered) => recovered,
                Err(why) => {
                    self.records.set_aside_container(&record, &why);
                    continue;
                }
            };
            let container = Arc::new(container);
            if container.lifecycle().phase == Phase::Created {
                created += 1;
            }
            if ended_now {
                ended += 1;
                self.events.recovered(self.event(&container.id, &container.pod_id, EventKind::Stopped, now));
                self.persist_container(&container);
            }
            let mut registry = self.registry.lock().unwrap();
            registry.names.insert(container.reserved_name.clone());
            registry.containers.insert(container.id.clone(), container);
        }
        let registry = self.registry.lock().unwrap();
        tracing::info!(
            pods = registry.sandboxes.len(),
            containers = registry.containers.len(),
            created,
            ended_by_restart = ended,
            "recovered pods and containers"
        );
    }

    /// A container from its record: a running one as exited at `now`, a
    /// created one with its writable root mounted again; and whether it
    /// ended now. Errors: why the record cannot be used.
    async fn recover_container(&self, record: ContainerRecord, now: i64) -> Result<(Container, bool), String> {
        if self.pod(&record.pod_id).map(|pod| pod.id != record.pod_id).unwrap_or(true) {
            return Err(format!("its pod sandbox {} is not recorded", record.pod_id));
        }
        let metadata = record.config.0.metadata.clone().ok_or("it has no metadata")?;
        let mounts = container::mounts(&record.config.0).map_err(|e| e.to_string())?;
        let mut life = Lifecycle { phase: record.phase.phase()?, removing: false };
        let mut ended_now = false;
        if matches!(life.phase, Phase::Running { .. }) {
            life.apply(Transition::Recovered { at: now }).map_err(|refused| refused.to_string())?;
            ended_now = true;
        }
        let scratch_dir = self.containers_dir.join(&record.id);
        let mut root = record.root.map(|root| wasm::Root { host_path: root.host_path, readonly: root.readonly });
        // The scratch directories were cleared: a created container's
        // writable root is mounted again (it never ran: its upper layer was empty).
        if life.phase == Phase::Created
            && let Some(wasm::Root { readonly: false, .. }) = root
        {
            let mounted = async {
                let image_rootfs = self
                    .programs
                    .rootfs(&record.image)?
                    .ok_or_else(|| Error::FailedPrecondition(format!("image {} has no filesystem", record.image.id)))?;
                rootfs::prepare(&record.id, image_rootfs, &scratch_dir, false).await
            }
            .await;
            match mounted {
                Ok(mounted) => root = Some(mounted),
                Err(e) => {
                    life.apply(Transition::Start).map_err(|refused| refused.to_string())?;
                    life.apply(Transition::StartFailed(not_started(format!(
                        "its root filesystem could not be mounted again after the runtime restarted: {e}"
                    ))))
                    .map_err(|refused| refused.to_string())?;
                    ended_now = true;
                }
            }
        }
        let container = Container::new(
            container::Parts {
                reserved_name: container_name(&record.pod_id, &metadata),
                id: record.id,
                pod_id: record.pod_id,
                config: record.config.0,
                image: record.image,
                process: record.process,
                log_path: record.log_path,
                mounts,
                root,
                scratch_dir,
                created_at: record.created_at,
                module_source: record.module_source,
                usage: self.engine.new_usage(
                    record.resources.as_ref().map(|resources| container::limits_of(&resources.0)).unwrap_or_default(),
                ),
                resources: record.resources.map(|resources| resources.0),
                life,
            },
            None,
        );
        Ok((container, ended_now))
    }

    /// Writes the pod's record as it is now; nothing once it is deleted. A
    /// failure is logged.
    fn persist_sandbox(&self, sandbox: &Sandbox) {
        let deleted = sandbox.record_lock.lock().unwrap();
        if !*deleted && let Err(e) = self.records.save_sandbox(&sandbox.record()) {
            tracing::warn!(pod = %sandbox.id, error = %e, "cannot record the pod sandbox");
        }
    }

    /// Writes the container's record as it is now; nothing once it is
    /// deleted. Made under the record lock, so records are written in the
    /// order of the states they show. A failure is logged.
    fn persist_container(&self, container: &Container) {
        let deleted = container.record_lock.lock().unwrap();
        if !*deleted && let Err(e) = self.records.save_container(&container_record(container)) {
            tracing::warn!(container = %container.id, error = %e, "cannot record the container");
        }
    }

    /// The recovered exits, then every container event from now on.
    pub fn subscribe(&self) -> impl Stream<Item = ContainerEvent> + Send + 'static {
        // A recovered exit shows its pod as it is now: it happened before anyone could subscribe.
        self.events
            .subscribe(|recovered| self.event(&recovered.container_id, &recovered.pod_id, recovered.kind, recovered.at))
    }

    /// Sends an event of `kind` about a container of pod `pod_id`, with the
    /// pod's state now; when nobody subscribes, makes nothing (the pod's
    /// containers are found by a scan of all of them).
    fn send(&self, container_id: &str, pod_id: &str, kind: EventKind) {
        if !self.events.has_subscribers() {
            return;
        }
        self.events.send(self.event(container_id, pod_id, kind, crate::clock::now_nanos()));
    }

    /// An event with the pod and its containers' states as they are now.
    fn event(&self, container_id: &str, pod_id: &str, kind: EventKind, at: i64) -> ContainerEvent {
        let mut containers = self.containers_of(pod_id);
        containers.sort_by_key(|c| c.created_at);
        ContainerEvent {
            container_id: container_id.to_owned(),
            pod_id: pod_id.to_owned(),
            kind,
            at,
            pod: self.registry.lock().unwrap().sandboxes.get(pod_id).cloned(),
            containers: containers
                .into_iter()
                .map(|c| {
                    let view = c.view();
                    (c, view)
                })
                .collect(),
        }
    }

    /// Runs a pod: checks its config, reserves its name, sets up its network
    /// (a namespace of its own, unless hostNetwork), records it, and makes
    /// it visible. Errors: InvalidArgument for a bad config, AlreadyExists
    /// for a name in use, the network's (FailedPrecondition without a CNI
    /// config or when a plugin fails), Internal when it cannot be recorded;
    /// after any of them nothing of the pod is left.
    pub async fn run_pod(
        self: &Arc<Self>,
        config: api::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<Arc<Sandbox>> {
        let metadata = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("RunPodSandbox: config.metadata is required".into()))?;
        if metadata.name.is_empty() {
            return Err(Error::InvalidArgument("RunPodSandbox: metadata.name is empty".into()));
        }
        checks::sandbox_config(&config)?;
        let name = sandbox::reserved_name(metadata);
        if !self.registry.lock().unwrap().names.insert(name.clone()) {
            return Err(Error::AlreadyExists(format!("pod sandbox {name} already exists: remove it first")));
        }
        if !network::has_own_namespace(&config) {
            return self.admit(name, config, runtime_handler.to_owned(), false).await;
        }
        // A client that gives up (kubelet's request timeout) drops this call
        // between awaits: the rest runs as a task of its own, so that it
        // always ends with a pod or with nothing (no namespace, no address,
        // no reserved name).
        let pods = self.clone();
        let runtime_handler = runtime_handler.to_owned();
        tokio::spawn(async move { pods.admit(name, config, runtime_handler, true).await })
            .await
            .map_err(|e| Error::internal("running a pod sandbox", e))?
    }

    /// The rest of [`Pods::run_pod`], once the pod's name is reserved; the
    /// pod gets a namespace of its own when `networked`.
    async fn admit(
        &self,
        name: String,
        config: api::PodSandboxConfig,
        runtime_handler: String,
        networked: bool,
    ) -> Result<Arc<Sandbox>> {
        let runtime_handler = runtime_handler.as_str();
        let (id, created_at) = (new_id(), crate::clock::now_nanos());
        let setting_up = std::time::Instant::now();
        let (attachment, netns, cni_add) = if networked {
            match self.set_up_network(&id, &config, runtime_handler, created_at).await {
                Ok((attachment, netns, cni_add)) => (Some(attachment), Some(Arc::new(netns)), Some(cni_add)),
                Err(e) => {
                    self.registry.lock().unwrap().names.remove(&name);
                    return Err(e);
                }
            }
        } else {
            (None, None, None)
        };
        let network_setup = setting_up.elapsed();
        let network = PodNetwork::new(&id, &config, attachment, netns);
        let sandbox = Arc::new(Sandbox::new(id, config, runtime_handler.to_owned(), created_at, true, network, None));
        // Recorded before it is visible: a pod kubelet was told of is never lost.
        if let Err(e) = self.records.save_sandbox(&sandbox.record()) {
            if let Some(attachment) = &sandbox.network.attachment {
                self.tear_down_network(&sandbox.id, attachment).await;
                if let Err(e) = self.records.delete_sandbox(&sandbox.id) {
                    tracing::warn!(pod = %sandbox.id, error = %e, "cannot delete the record of a pod that failed to start");
                }
            }
            self.registry.lock().unwrap().names.remove(&name);
            return Err(e);
        }
        self.registry.lock().unwrap().sandboxes.insert(sandbox.id.clone(), sandbox.clone());
        self.pod_changes.record();
        match cni_add {
            // How long setting up its network took, and the CNI plugins' part of it.
            Some(cni_add) => tracing::info!(
                pod = %sandbox.id,
                %name,
                network_setup_us = network_setup.as_micros() as u64,
                cni_add_us = cni_add.as_micros() as u64,
                "pod sandbox ready"
            ),
            None => tracing::info!(pod = %sandbox.id, %name, "pod sandbox ready"),
        }
        Ok(sandbox)
    }

    /// Sets up the network of pod `id` (not yet visible): its namespace, CNI
    /// ADD. The attachment is recorded (the pod not ready) before anything is
    /// made, so that a daemon killed meanwhile leaves a pod whose removal
    /// tears it down. Returns the attachment, the namespace and how long ADD
    /// took. Errors: the network's (see [`Network::attach`]), after which
    /// nothing is left, the record included.
    async fn set_up_network(
        &self,
        id: &str,
        config: &api::PodSandboxConfig,
        runtime_handler: &str,
        created_at: i64,
    ) -> Result<(Attachment, NetNs, std::time::Duration)> {
        let mut attachment = self.network.prepare(id, config).await?;
        let pending = Sandbox::new(
            id.to_owned(),
            config.clone(),
            runtime_handler.to_owned(),
            created_at,
            false,
            PodNetwork { attachment: Some(attachment.clone()), ..PodNetwork::default() },
            None,
        );
        self.records.save_sandbox(&pending.record())?;
        match self.network.attach(id, &mut attachment).await {
            Ok((netns, cni_add)) => Ok((attachment, netns, cni_add)),
            Err(e) => {
                if let Err(e) = self.records.delete_sandbox(id) {
                    tracing::warn!(pod = %id, error = %e, "cannot delete the record of a pod that failed to start");
                }
                Err(e)
            }
        }
    }

    /// CNI DEL and the namespace removed, for a pod that failed to start;
    /// failures are logged.
    async fn tear_down_network(&self, id: &str, attachment: &Attachment) {
        if let Err(e) = self.network.detach(id, attachment).await {
            tracing::warn!(pod = %id, error = %e, "cannot tear down the network of a pod that failed to start");
        }
        if let Err(e) = self.network.release(attachment).await {
            tracing::warn!(pod = %id, error = %e, "cannot remove the network namespace of a pod that failed to start");
        }
    }

    /// Joins a mixed pod's sandbox, which the backing runtime made with id
    /// `id` from `config`: wasm containers can then be created in it. They
    /// make their sockets in `joined.netns` (none: the node's network) and
    /// resolve names by the pod's DNS config. The joined sandbox is recorded
    /// (so a daemon restart keeps it), is not listed by this side, and has
    /// no network of wasmrun's to tear down: stop and remove end its wasm
    /// containers and forget it. `created_at` (Unix nanoseconds) is the
    /// backing runtime's.
    ///
    /// Errors: InvalidArgument for a config without metadata,
    /// AlreadyExists for an id already known, FailedPrecondition when the
    /// namespace cannot be opened, Internal when it cannot be recorded;
    /// after any of them nothing is kept.
    pub async fn join_pod(
        &self,
        id: &str,
        config: api::PodSandboxConfig,
        runtime_handler: &str,
        joined: network::Joined,
        created_at: i64,
    ) -> Result<Arc<Sandbox>> {
        if config.metadata.is_none() {
            return Err(Error::InvalidArgument("RunPodSandbox: config.metadata is required".into()));
        }
        if self.registry.lock().unwrap().sandboxes.contains_key(id) {
            return Err(Error::AlreadyExists(format!("pod sandbox {id} is already known to wasmrun")));
        }
        let netns = match &joined.netns {
            Some(path) => Some(Arc::new(NetNs::open(path).map_err(|e| {
                Error::FailedPrecondition(format!(
                    "cannot open the network namespace {} of the backing runtime's pod sandbox {id}: {e}",
                    path.display()
                ))
            })?)),
            None => None,
        };
        let network = PodNetwork::new(id, &config, None, netns);
        let sandbox = Arc::new(Sandbox::new(
            id.to_owned(),
            config,
            runtime_handler.to_owned(),
            created_at,
            true,
            network,
            Some(joined),
        ));
        self.records.save_sandbox(&sandbox.record())?;
        // Checked again: a join racing this one recorded the same pod, and won.
        match self.registry.lock().unwrap().sandboxes.entry(sandbox.id.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => {
                return Err(Error::AlreadyExists(format!("pod sandbox {id} is already known to wasmrun")));
            }
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(sandbox.clone()),
        };
        tracing::info!(pod = %sandbox.id, netns = ?sandbox.joined.as_ref().and_then(|j| j.netns.as_ref()), "joined the backing runtime's pod sandbox (a mixed pod)");
        Ok(sandbox)
    }

    pub fn pod(&self, id: &str) -> Result<Arc<Sandbox>> {
        let registry = self.registry.lock().unwrap();
        crate::ids::resolve(&registry.sandboxes, id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {} not found", crate::error::quoted(id))))
    }

    pub fn pods(&self, filter: &PodFilter) -> Vec<Arc<Sandbox>> {
        let registry = self.registry.lock().unwrap();
        let mut pods: Vec<_> = registry.sandboxes.values().filter(|s| filter.matches(s)).cloned().collect();
        pods.sort_by_key(|s| s.created_at);
        pods
    }

    /// The list entries of the pods `filter` selects, oldest first, one after
    /// another. `encode` makes a pod's entry showing a state; a pod keeps it
    /// until its state changes.
    pub async fn encoded_pod_list(
        &self,
        filter: &PodFilter,
        encode: impl Fn(&Sandbox, SandboxState) -> Bytes,
    ) -> Bytes {
        let make = || {
            let pods = self.pods(filter);
            let entries = pods.iter().map(|pod| {
                let state = pod.state();
                pod.list_entry.get_or_encode(state, || encode(pod, state))
            });
            listing::concat(entries.collect())
        };
        if !filter.selects_all() {
            return make();
        }
        self.unfiltered_pod_list.get_or_make(|| self.pod_changes.count(), make).await
    }

    /// Stops every container of the pod, marks it not ready, and tears its
    /// network down (CNI DEL, at every stop: plugins make a repeated DEL
    /// harmless, as containerd relies on). Unknown ids are fine. Errors: a
    /// container's stop's, or FailedPrecondition naming the plugin whose DEL
    /// failed (kubelet stops again).
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let Ok(sandbox) = self.pod(id) else {
            return Ok(());
        };
        for container in self.containers_of(&sandbox.id) {
            container.stop(Duration::ZERO).await?;
        }
        // Not ready before its network goes, as containerd stops the sandbox
        // before tearing its network down: a failed DEL leaves a stopped pod
        // that kubelet stops again.
        if sandbox.state() == SandboxState::Ready {
            sandbox.mark_not_ready();
            self.persist_sandbox(&sandbox);
            self.pod_changes.record();
            tracing::info!(pod = %sandbox.id, "pod sandbox stopped");
        }
        if let Some(attachment) = &sandbox.network.attachment {
            self.network.detach(&sandbox.id, attachment).await?;
        }
        Ok(())
    }

    /// Removes the pod and all its containers (stopping any still running),
    /// tears down its network (CNI DEL, again if it was stopped) and unpins
    /// its namespace. Errors: as [`Pods::stop_pod`]; Internal when the
    /// namespace cannot be unpinned. The pod stays until both succeed.
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let Ok(sandbox) = self.pod(id) else {
            return Ok(());
        };
        for container in self.containers_of(&sandbox.id) {
            self.remove_container(&container.id).await?;
        }
        if let Some(attachment) = &sandbox.network.attachment {
            self.network.detach(&sandbox.id, attachment).await?;
            self.network.release(attachment).await?;
        }
        sandbox.mark_not_ready();
        let removed = {
            let mut registry = self.registry.lock().unwrap();
            let removed = registry.sandboxes.remove(&sandbox.id).is_some();
            if removed && let Some(name) = sandbox.reserved_name() {
                registry.names.remove(&name);
            }
            removed
        };
        self.pod_changes.record();
        if removed {
            *sandbox.record_lock.lock().unwrap() = true;
            if let Err(e) = self.records.delete_sandbox(&sandbox.id) {
                tracing::warn!(pod = %sandbox.id, error = %e, "cannot delete the pod sandbox's record");
            }
            tracing::info!(pod = %sandbox.id, "pod sandbox removed");
        }
        Ok(())
    }

    fn containers_of(&self, pod_id: &str) -> Vec<Arc<Container>> {
        let registry = self.registry.lock().unwrap();
        registry.containers.values().filter(|c| c.pod_id == pod_id).cloned().collect()
    }

    /// Creates a container: its image must be pulled; its module is compiled
    /// (or loaded from the cache) now, so that start is quick and a bad module
    /// fails here.
    pub async fn create_container(&self, pod_id: &str, config: api::ContainerConfig) -> Result<Arc<Container>> {
        let sandbox = self.pod(pod_id)?;
        if sandbox.state() != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready: cannot create containers in it",
                sandbox.id
            )));
        }
        let metadata = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("CreateContainer: config.metadata is required".into()))?;
        if metadata.name.is_empty() {
            return Err(Error::InvalidArgument("CreateContainer: metadata.name is empty".into()));
        }
        let image_name = config.image.as_ref().map(|i| i.image.as_str()).unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::InvalidArgument("CreateContainer: config.image.image is empty".into()));
        }
        checks::container_config(&config)?;
        let log_path = container::log_path(&sandbox, &config)?;
        let image = self.programs.image(image_name)?;
        let process = container::Process::new(&image, &config);
        let mounts = container::mounts(&config)?;
        let image_rootfs = self.programs.rootfs(&image)?;
        let name = container_name(&sandbox.id, metadata);
        // Reserve the name before the slow part, so two racing creates cannot both win.
        if !self.registry.lock().unwrap().names.insert(name.clone()) {
            return Err(Error::AlreadyExists(format!(
                "container {:?} (attempt {}) already exists in pod sandbox {}",
                metadata.name, metadata.attempt, sandbox.id
            )));
        }
        let release_name = || {
            self.registry.lock().unwrap().names.remove(&name);
        };
        let argv0 = process.argv.first().map(String::as_str).unwrap_or_default();
        let (compiled, module_source) = match self.programs.program(&image, argv0, &process.working_dir).await {
            Ok(prepared) => prepared,
            Err(e) => {
                release_name();
                return Err(e.about_image(image_name));
            }
        };
        // A served component's address is checked here too, so that a bad
        // one fails CreateContainer (kubelet's CreateContainerError) rather
        // than each start.
        if let Err(e) = crate::wasm::serve_address(&compiled, &process.env) {
            release_name();
            return Err(e);
        }
        let id = new_id();
        let scratch_dir = self.containers_dir.join(&id);
        // A compat image's filesystem is the guest's `/`; the container's own
        // mounts go on top of it.
        let root = match image_rootfs {
            Some(image_rootfs) => {
                match rootfs::prepare(&id, image_rootfs, &scratch_dir, container::readonly_rootfs(&config)).await {
                    Ok(root) => Some(root),
                    Err(e) => {
                        release_name();
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let resources = config.linux.as_ref().and_then(|linux| linux.resources.clone());
        let container = Arc::new(Container::new(
            container::Parts {
                scratch_dir,
                root,
                id,
                pod_id: sandbox.id.clone(),
                reserved_name: name.clone(),
                config,
                image,
                process,
                log_path,
                mounts,
                created_at: crate::clock::now_nanos(),
                module_source,
                usage: self.engine.new_usage(resources.as_ref().map(container::limits_of).unwrap_or_default()),
                resources,
                life: Lifecycle::default(),
            },
            Some(compiled),
        ));
        // Recorded before it is visible: a container kubelet was told of is never lost.
        if let Err(e) = self.records.save_container(&container_record(&container)) {
            release_name();
            rootfs::release(&container.id, container.root.as_ref()).await;
            let _ = tokio::fs::remove_dir_all(&container.scratch_dir).await;
            return Err(e);
        }
        self.registry.lock().unwrap().containers.insert(container.id.clone(), container.clone());
        self.container_changes.record();
        self.send(&container.id, &sandbox.id, EventKind::Created);
        tracing::info!(container = %container.id, pod = %sandbox.id, source = ?module_source, "container created");
        Ok(container)
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        let registry = self.registry.lock().unwrap();
        crate::ids::resolve(&registry.containers, id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {} not found", crate::error::quoted(id))))
    }

    pub fn containers(&self, filter: &ContainerFilter) -> Vec<Arc<Container>> {
        let registry = self.registry.lock().unwrap();
        let mut containers: Vec<_> = registry.containers.values().filter(|c| filter.matches(c)).cloned().collect();
        containers.sort_by_key(|c| c.created_at);
        containers
    }

    /// The list entries of the containers `filter` selects, oldest first, one
    /// after another. `encode` makes a container's entry showing a state; a
    /// container keeps it until its state changes.
    pub async fn encoded_container_list(
        &self,
        filter: &ContainerFilter,
        encode: impl Fn(&Container, ContainerState) -> Bytes,
    ) -> Bytes {
        let make = || {
            let containers = self.containers(filter);
            let entries = containers.iter().map(|container| {
                let state = container.state();
                container.list_entry.get_or_encode(state, || encode(container, state))
            });
            listing::concat(entries.collect())
        };
        if !filter.selects_all() {
            return make();
        }
        self.unfiltered_container_list.get_or_make(|| self.container_changes.count(), make).await
    }

    /// Starts a created container's guest. The guest's end is recorded by
    /// [`Pods::record_exit`], from a task that waits for it. Errors:
    /// FailedPrecondition when the pod is not ready or the container is not
    /// created; a failed start (its log, its mounts) ends the container with
    /// [`EXIT_NOT_STARTED`], reason StartError, and is returned.
    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let container = self.container(id)?;
        let sandbox = self.pod(&container.pod_id)?;
        if sandbox.state() != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready: cannot start container {}",
                sandbox.id, container.id
            )));
        }
        container.apply(Transition::Start)?;
        // Taken before the guest runs, so that started_at <= finished_at even
        // for a guest that is done before `engine.start` returns.
        let started_at = crate::clock::now_nanos();
        let started = async {
            let compiled = container
                .compiled
                .get_or_try_init(|| async {
                    let argv0 = container.process.argv.first().map(String::as_str).unwrap_or_default();
                    let (compiled, _) =
                        self.programs.program(&container.image, argv0, &container.process.working_dir).await?;
                    Ok::<_, Error>(compiled)
                })
                .await?
                .clone();
            let OpenedLog { log, output } = ContainerLog::open(container.log_path.clone())
                .await
                .map_err(|e| Error::internal(format!("opening the log of container {}", container.id), e))?;
            let mut spec = container.guest_spec(&sandbox.network);
            spec.stdin = container.open_stdin();
            let guest = self.engine.start(compiled, spec, container.usage.clone(), output.into()).await?;
            Ok::<_, Error>((guest, log))
        }
        .await;
        let (guest, log) = match started {
            Ok(started) => started,
            Err(e) => {
                self.record_exit(&container, Transition::StartFailed(not_started(e.to_string()))).await;
                return Err(e);
            }
        };
        let waiter = guest.waiter();
        container.set_running(guest, log, started_at)?;
        self.persist_container(&container);
        self.container_changes.record();
        self.send(&container.id, &container.pod_id, EventKind::Started);
        tracing::info!(container = %container.id, "container started");
        let pods = self.clone();
        tokio::spawn(async move {
            let exit = waiter.wait().await;
            pods.record_exit(&container, Transition::Exited(exit)).await;
        });
        Ok(())
    }

    /// The one exit path: records the container's end (`transition`), writes
    /// its record, counts the change for the list caches, sends the STOPPED
    /// event, and then wakes the stops waiting for it: a RemoveContainer
    /// (which stops first) cannot send DELETED before STOPPED.
    async fn record_exit(&self, container: &Container, transition: Transition) {
        if let Err(e) = container.end(transition) {
            tracing::error!(container = %container.id, error = %e, "a container's end does not fit its state");
            container.wake_stoppers();
            return;
        }
        self.persist_container(container);
        self.container_changes.record();
        self.send(&container.id, &container.pod_id, EventKind::Stopped);
        container.wake_stoppers();
    }

    /// Ends a running container's guest within `grace` (StopContainer's
    /// timeout): a served component stops accepting and lets its requests in
    /// flight finish until then; a command is ended at once (WASI has no
    /// signal to ask it to shut down with), which is within any timeout.
    /// Stopping a container that is not running is fine.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        match self.container(id) {
            Ok(container) => container.stop(grace).await,
            Err(_) => Ok(()),
        }
    }

    /// Records new resources of a container (see `Container::update_resources`) and writes its record.
    pub async fn update_container_resources(&self, id: &str, resources: api::LinuxContainerResources) -> Result<()> {
        let container = self.container(id)?;
        container.update_resources(resources)?;
        self.persist_container(&container);
        Ok(())
    }

    /// Removes a container, stopping it first if it runs. Removing a missing
    /// container, or one already being removed, is fine. Errors:
    /// FailedPrecondition while it is being started (as containerd refuses).
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Ok(container) = self.container(id) else {
            return Ok(());
        };
        container.stop(Duration::ZERO).await?;
        if container.lifecycle().removing {
            return Ok(());
        }
        container.apply(Transition::Remove)?;
        let removed = {
            let mut registry = self.registry.lock().unwrap();
            let removed = registry.containers.remove(&container.id).is_some();
            if removed {
                registry.names.remove(&container.reserved_name);
            }
            removed
        };
        if removed {
            self.container_changes.record();
            {
                *container.record_lock.lock().unwrap() = true;
                if let Err(e) = self.records.delete_container(&container.id) {
                    tracing::warn!(container = %container.id, error = %e, "cannot delete the container's record");
                }
            }
            self.events.forget(&container.id);
            // Stopped, so its file mounts are copied back and nothing uses the
            // directory. A leftover is harmless (the next daemon start clears
            // it), so it does not fail a removal that has happened. Its root
            // filesystem, if it has one of its own, is unmounted first: its
            // writes go with the directory.
            rootfs::release(&container.id, container.root.as_ref()).await;
            match tokio::fs::remove_dir_all(&container.scratch_dir).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(container = %container.id, dir = %container.scratch_dir.display(), error = %e, "cannot remove the container's scratch directory");
                }
                _ => {}
            }
            self.send(&container.id, &container.pod_id, EventKind::Deleted);
            tracing::info!(container = %container.id, "container removed");
        }
        Ok(())
    }
}

/// What is written to disk of a container now.
fn container_record(container: &Container) -> ContainerRecord {
    ContainerRecord {
        version: records::VERSION,
        id: container.id.clone(),
        pod_id: container.pod_id.clone(),
        config: Proto(container.config.clone()),
        image: container.image.clone(),
        process: container.process.clone(),
        log_path: container.log_path.clone(),
        root: container.root.as_ref().map(RootRecord::of),
        module_source: container.module_source,
        created_at: container.created_at,
        resources: container.resources().map(Proto),
        phase: PhaseRecord::of(&container.lifecycle().phase),
    }
}

/// The exit of a container whose guest never ran, as containerd reports it.
fn not_started(message: String) -> Exit {
    Exit { code: EXIT_NOT_STARTED, reason: ExitReason::StartError, message, finished_at: crate::clock::now_nanos() }
}

/// Clears what an earlier daemon left in `containers_dir`: containers'
/// scratch directories hold nothing a recovered container needs (an exited
/// one never runs again; a created one never ran, and gets its root mounted
/// again). Its root filesystems may still be mounted there (it was killed):
/// unmounted first, never deleted through. Blocking.
fn clear_scratch(containers_dir: &Path) {
    rootfs::release_all(containers_dir);
    if let Err(e) = std::fs::remove_dir_all(containers_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %containers_dir.display(), error = %e, "cannot remove the scratch directories of an earlier run");
    }
}

pub use wasm::{Exit, ExitReason};
