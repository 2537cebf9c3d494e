//! Pods and containers, kept in memory: their identities, their state
//! machines, and the guests behind running containers.
//!
//! A container moves Created → Running → Exited and never back. Names
//! (pod: namespace, name, uid, attempt; container: pod, name, attempt) are
//! reserved until the object is removed, so a retried create is refused.

mod checks;
mod container;
mod events;
mod filter;
mod listing;
mod rootfs;
mod sandbox;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

pub use container::{Container, ContainerState, ContainerView};
pub use events::{ContainerEvent, EventKind};
pub use filter::{ContainerFilter, PodFilter};
pub use sandbox::{Sandbox, SandboxState};

use crate::api;
use crate::error::{Error, Result};
use crate::images::Images;
use crate::wasm::{self, Engine};

pub struct Pods {
    images: Arc<Images>,
    engine: Arc<Engine>,
    /// `<state>/containers`: each container's scratch directory is in it, named by its id.
    containers_dir: PathBuf,
    registry: Mutex<Registry>,
    events: events::Events,
    /// Pods run, stopped and removed: what a pod list shows.
    pod_changes: listing::Changes,
    unfiltered_pod_list: listing::UnfilteredList<u64>,
    /// Containers created, started, exited (recorded by the exit waiter of
    /// `start_container`) and removed: what a container list shows.
    container_changes: Arc<listing::Changes>,
    unfiltered_container_list: listing::UnfilteredList<listing::Generation>,
}

#[derive(Default)]
struct Registry {
    sandboxes: HashMap<String, Arc<Sandbox>>,
    containers: HashMap<String, Arc<Container>>,
    names: HashSet<String>,
}

impl Registry {
    /// Finds an id by its full form or a unique prefix, as crictl users type them.
    fn resolve<'a, T>(map: &'a HashMap<String, Arc<T>>, id: &str) -> Option<&'a Arc<T>> {
        if let Some(found) = map.get(id) {
            return Some(found);
        }
        if id.is_empty() {
            return None;
        }
        let mut matches = map.iter().filter(|(key, _)| key.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some((_, found)), None) => Some(found),
            _ => None,
        }
    }
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Pods {
    /// Pods and containers, with the containers' scratch directories under `state_dir`.
    pub fn new(images: Arc<Images>, engine: Arc<Engine>, state_dir: &Path) -> Self {
        let containers_dir = state_dir.join("containers");
        // Containers live in memory only: whatever an earlier daemon left here
        // belongs to no container any more. Its root filesystems may still be
        // mounted there (it was killed): unmounted first, never deleted through.
        rootfs::release_all(&containers_dir);
        if let Err(e) = std::fs::remove_dir_all(&containers_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %containers_dir.display(), error = %e, "cannot remove the scratch directories of an earlier run");
        }
        Self {
            images,
            engine,
            containers_dir,
            registry: Mutex::new(Registry::default()),
            events: events::Events::new(),
            pod_changes: listing::Changes::default(),
            unfiltered_pod_list: listing::UnfilteredList::default(),
            container_changes: Arc::default(),
            unfiltered_container_list: listing::UnfilteredList::default(),
        }
    }

    /// Every container event from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ContainerEvent> {
        self.events.subscribe()
    }

    pub fn run_pod(&self, config: api::PodSandboxConfig, runtime_handler: &str) -> Result<Arc<Sandbox>> {
        let metadata = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("RunPodSandbox: config.metadata is required".into()))?;
        if metadata.name.is_empty() {
            return Err(Error::InvalidArgument("RunPodSandbox: metadata.name is empty".into()));
        }
        checks::sandbox_config(&config)?;
        let name = sandbox::reserved_name(metadata);
        let sandbox = Arc::new(Sandbox::new(new_id(), config, runtime_handler.to_owned()));
        let mut registry = self.registry.lock().unwrap();
        if !registry.names.insert(name.clone()) {
            return Err(Error::AlreadyExists(format!("pod sandbox {name} already exists: remove it first")));
        }
        registry.sandboxes.insert(sandbox.id.clone(), sandbox.clone());
        drop(registry);
        self.pod_changes.record();
        tracing::info!(pod = %sandbox.id, %name, "pod sandbox ready");
        Ok(sandbox)
    }

    pub fn pod(&self, id: &str) -> Result<Arc<Sandbox>> {
        let registry = self.registry.lock().unwrap();
        Registry::resolve(&registry.sandboxes, id)
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

    /// Stops every container of the pod and marks it not ready. Unknown ids are fine.
    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let Ok(sandbox) = self.pod(id) else {
            return Ok(());
        };
        for container in self.containers_of(&sandbox.id) {
            container.stop().await?;
        }
        // As in `stop_container`: lists made from here on show the exits.
        self.container_changes.record();
        sandbox.mark_not_ready();
        self.pod_changes.record();
        tracing::info!(pod = %sandbox.id, "pod sandbox stopped");
        Ok(())
    }

    /// Removes the pod and all its containers (stopping any still running).
    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let Ok(sandbox) = self.pod(id) else {
            return Ok(());
        };
        for container in self.containers_of(&sandbox.id) {
            self.remove_container(&container.id).await?;
        }
        sandbox.mark_not_ready();
        let removed = {
            let mut registry = self.registry.lock().unwrap();
            let removed = registry.sandboxes.remove(&sandbox.id).is_some();
            if removed {
                registry.names.remove(&sandbox::reserved_name(sandbox.metadata()));
            }
            removed
        };
        self.pod_changes.record();
        if removed {
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
        let image = self.images.require(image_name)?;
        let process = container::Process::new(&image, &config);
        let mounts = container::mounts(&config)?;
        let image_rootfs = self.images.rootfs(&image)?;
        let name = format!("{}/{}/{}", sandbox.id, metadata.name, metadata.attempt);
        // Reserve the name before the slow part, so two racing creates cannot both win.
        if !self.registry.lock().unwrap().names.insert(name.clone()) {
            return Err(Error::AlreadyExists(format!(
                "container {:?} (attempt {}) already exists in pod sandbox {}",
                metadata.name, metadata.attempt, sandbox.id
            )));
        }
        let prepared = async {
            let argv0 = process.argv.first().map(String::as_str).unwrap_or_default();
            let program = self.images.program(&image, argv0, &process.working_dir).await?;
            self.engine.prepare(&program.digest, program.kind, program.source).await
        }
        .await;
        let (compiled, module_source) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                self.registry.lock().unwrap().names.remove(&name);
                return Err(e.about_image(image_name));
            }
        };
        let id = new_id();
        let scratch_dir = self.containers_dir.join(&id);
        // A compat image's filesystem is the guest's `/`; the container's own
        // mounts go on top of it.
        let root = match image_rootfs {
            Some(image_rootfs) => {
                match rootfs::prepare(&id, image_rootfs, &scratch_dir, container::readonly_rootfs(&config)).await {
                    Ok(root) => Some(root),
                    Err(e) => {
                        self.registry.lock().unwrap().names.remove(&name);
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let container = Arc::new(Container::new(container::NewContainer {
            scratch_dir,
            root,
            id,
            pod_id: sandbox.id.clone(),
            reserved_name: name,
            config,
            image,
            process,
            log_path,
            mounts,
            compiled,
            module_source,
        }));
        self.registry.lock().unwrap().containers.insert(container.id.clone(), container.clone());
        self.container_changes.record();
        self.events.send(&container.id, &sandbox.id, EventKind::Created);
        tracing::info!(container = %container.id, pod = %sandbox.id, source = ?module_source, "container created");
        Ok(container)
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        let registry = self.registry.lock().unwrap();
        Registry::resolve(&registry.containers, id)
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
        let generation = || listing::Generation { changes: self.container_changes.count() };
        self.unfiltered_container_list.get_or_make(generation, make).await
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let container = self.container(id)?;
        let sandbox = self.pod(&container.pod_id)?;
        if sandbox.state() != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready: cannot start container {}",
                sandbox.id, container.id
            )));
        }
        let started = container.start(&self.engine).await;
        self.container_changes.record();
        let events = self.events.clone();
        let (id, pod_id) = (container.id.clone(), container.pod_id.clone());
        match (&started, container.exit_waiter()) {
            (Ok(()), Some(waiter)) => {
                events.send(&id, &pod_id, EventKind::Started);
                tracing::info!(container = %id, "container started");
                let changes = self.container_changes.clone();
                tokio::spawn(async move {
                    waiter.wait().await;
                    // The exit is visible by now: lists made from here on show it.
                    changes.record();
                    events.send(&id, &pod_id, EventKind::Stopped);
                });
            }
            // It never ran: it is exited at once.
            _ => events.send(&id, &pod_id, EventKind::Stopped),
        }
        started
    }

    /// Ends a running container's guest. WASI preview 1 has no signals, so there
    /// is nothing to ask a guest to shut down with: it is ended at once, which is
    /// within any timeout. Stopping a container that is not running is fine.
    pub async fn stop_container(&self, id: &str) -> Result<()> {
        match self.container(id) {
            Ok(container) => {
                container.stop().await?;
                // The exit waiter of `start_container` records the exit too, but
                // perhaps only after this call has returned: a list made right
                // after a stop must show it.
                self.container_changes.record();
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Ok(container) = self.container(id) else {
            return Ok(());
        };
        container.stop().await?;
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
            self.events.send(&container.id, &container.pod_id, EventKind::Deleted);
            tracing::info!(container = %container.id, "container removed");
        }
        Ok(())
    }
}

pub use wasm::{Exit, ExitReason, ModuleSource};
