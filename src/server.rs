//! The daemon: its parts built from a [`Config`], the listeners that serve
//! them, and one shutdown signal that stops them all.
//!
//! ```text
//! let daemon = Daemon::build(config).await?;   // parts, root lock, socket bound
//! let shutdown = CancellationToken::new();      // cancel() = stop gracefully
//! daemon.serve(shutdown).await?;                // every listener, until shutdown
//! ```
//!
//! [`serve`] does exactly that, cancelling on SIGTERM or SIGINT.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tonic::service::Routes;

use crate::api::image_service_server::ImageServiceServer;
use crate::api::runtime_service_server::RuntimeServiceServer;
use crate::authority::AuthorityFix;
use crate::backing::Backing;
use crate::config::Config;
use crate::cri::Parts;
use crate::front::Front;
use crate::images::{Images, Limits, PullOptions, RegistryOptions};
use crate::network::Network;
use crate::pods::{ImagePrograms, Pods};
use crate::streaming::Streaming;
use crate::wasm::{CompileLimits, Compiler, DefaultBudget, Engine, GuestDefaults, HttpLimits, MemoryBudget};

/// kubelet allows CRI messages of up to 16 MiB (a ListContainers of a busy node).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Serves the CRI until SIGTERM or SIGINT, then finishes in-flight calls
/// (for at most `shutdown_grace_secs`) and removes the socket.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let daemon = Daemon::build(config).await?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = shutdown_signal() => shutdown.cancel(),
                // The daemon stopped for another reason (a listener failed).
                () = shutdown.cancelled() => {}
            }
        }
    });
    let served = daemon.serve(shutdown.clone()).await;
    shutdown.cancel();
    let _ = signals.await;
    served
}

/// A daemon built and bound, not serving yet: the CRI socket accepts
/// connections (they wait in its backlog) and the root is locked.
pub struct Daemon {
    socket: PathBuf,
    root: PathBuf,
    grace: Duration,
    cri: Routes,
    cri_listener: UnixListener,
    /// The streaming server (Exec, PortForward URLs) and its bound listener.
    streaming: (Arc<Streaming>, tokio::net::TcpListener),
    /// Pods' networks: its pool of namespaces made ahead is emptied at the end.
    network: Arc<Network>,
    /// Held for the daemon's life: one daemon per root.
    _root_lock: std::fs::File,
}

impl Daemon {
    /// Builds everything `config` describes: creates the root and state
    /// directories, refuses if another server answers on the socket, locks
    /// the root, raises the open-files limit, opens the engine, the image
    /// store and the pods (clearing an earlier run's scratch directories),
    /// connects the backing runtime lazily, and binds the socket (mode 0660,
    /// replacing a stale one).
    ///
    /// Errors: each with the path or setting that failed.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        for dir in [&config.root, &config.state] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        refuse_if_served(&config.socket).await?;
        let root_lock = lock_root(&config.root)?;
        raise_open_files_limit();

        let budget = match config.guest_memory_budget_bytes {
            Some(bytes) => MemoryBudget::new(bytes, "guest_memory_budget_bytes"),
            None => {
                let derived = tokio::task::spawn_blocking(DefaultBudget::derive).await?;
                MemoryBudget::new(derived.bytes, derived.source)
            }
        };
        tracing::info!(budget_bytes = budget.limit(), source = %budget.snapshot().source, "memory budget of all guests");
        let engine = Engine::new(
            &config.root.join("cache"),
            GuestDefaults {
                memory_limit_bytes: config.default_memory_limit_bytes,
                max_open_files: config.guest_max_open_files,
                file_mount_max_bytes: config.file_mount_max_bytes,
            },
            budget,
            Compiler::worker(CompileLimits {
                timeout: Duration::from_secs(config.compile_timeout_secs),
                memory_bytes: config.compile_memory_bytes,
            }),
            HttpLimits {
                max_concurrent_requests: config.http_max_concurrent_requests,
                instance_pool_size: config.http_instance_pool_size,
            },
        )?;
        let options = PullOptions {
            registries: registry_options(&config)?,
            limits: Limits { max_manifest_bytes: config.max_manifest_bytes, max_blob_bytes: config.max_blob_bytes },
            auth_file: config.auth_file.clone(),
            registry_config: config.registry_config_path.clone(),
            max_concurrent_pulls: config.max_concurrent_pulls,
        };
        let images = Arc::new(Images::open(&config.root, options, engine.clone()).await?);
        let programs = Arc::new(ImagePrograms { images: images.clone(), engine: engine.clone() });
        let network = Arc::new(Network::new(
            config.cni_conf_dir.clone(),
            config.cni_bin_dirs.clone(),
            &config.state,
            config.netns_pool_size,
        )?);
        network.fill_pool().await;
        let pods = Arc::new(Pods::open(programs, engine, network.clone(), &config.root, &config.state).await?);
        let backing = config
            .backing_endpoint
            .as_deref()
            .map(|endpoint| Backing::new(endpoint, Duration::from_secs(config.backing_connect_timeout_secs)))
            .transpose()?;
        let (streaming, streaming_listener) =
            Streaming::bind(&config.stream_server_address, config.stream_server_port, pods.clone()).await?;
        let cri = cri_services(&config, pods.clone(), images, network.clone(), streaming.clone(), backing);

        let cri_listener = bind(&config.socket)?;
        Ok(Self {
            socket: config.socket.clone(),
            root: config.root.clone(),
            grace: Duration::from_secs(config.shutdown_grace_secs),
            cri,
            cri_listener,
            streaming: (streaming, streaming_listener),
            network,
            _root_lock: root_lock,
        })
    }

    /// Serves every listener until `shutdown` is cancelled (or one of them
    /// fails, which cancels the rest), then lets each finish the calls in
    /// flight for at most `shutdown_grace_secs`, drops whatever is left, and
    /// removes the socket. Returns the first listener's error, if any.
    ///
    /// A second listener (metrics, streaming) is one more `listeners.spawn`
    /// of a future that serves until `stop` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Daemon { socket, root, grace, cri, cri_listener, streaming, network, _root_lock } = self;
        // Cancelled by the caller's signal or by a failing listener; cancelling
        // it never cancels the caller's token.
        let stop = shutdown.child_token();
        let mut listeners = tokio::task::JoinSet::new();
        tracing::info!(socket = %socket.display(), root = %root.display(), version = env!("CARGO_PKG_VERSION"), "wasmrun serving the CRI");
        listeners.spawn(serve_cri(cri, cri_listener, stop.clone()));
        listeners.spawn(streaming.0.serve(streaming.1, stop.clone()));

        let joined = async {
            let mut first_error = None;
            while let Some(ended) = listeners.join_next().await {
                let ended = ended.map_err(anyhow::Error::from).and_then(|served| served);
                if let Err(e) = ended {
                    stop.cancel();
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        };
        let served = tokio::select! {
            served = joined => served,
            // A graceful HTTP/2 shutdown waits for every client to acknowledge
            // it; one that hangs (or never reads) would hold the daemon forever.
            () = async {
                stop.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(?grace, "calls or clients still in flight after the shutdown grace: stopping anyway");
                Ok(())
            }
        };
        // Listeners still running after the grace are aborted here.
        drop(listeners);
        let _ = std::fs::remove_file(&socket);
        // Namespaces made ahead were never given to a pod: nothing holds them after us.
        network.empty_pool().await;
        served?;
        tracing::info!("wasmrun stopped");
        Ok(())
    }
}

/// The CRI's two gRPC services over one set of parts: the one place both
/// are put together.
fn cri_services(
    config: &Config,
    pods: Arc<Pods>,
    images: Arc<Images>,
    network: Arc<Network>,
    streaming: Arc<Streaming>,
    backing: Option<Backing>,
) -> Routes {
    let parts = Parts { config: Arc::new(config.clone()), pods, images, network, streaming };
    let front = Arc::new(Front::new(parts, backing));
    Routes::new(
        RuntimeServiceServer::from_arc(front.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    )
    .add_service(
        ImageServiceServer::from_arc(front)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    )
}

/// Serves the CRI on `listener`, every call logged and every client's
/// `:authority` made acceptable ([`AuthorityFix`]), until `stop` is
/// cancelled; then finishes the calls in flight.
async fn serve_cri(cri: Routes, listener: UnixListener, stop: CancellationToken) -> anyhow::Result<()> {
    let incoming =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::UnixListenerStream::new(listener), |accepted| {
            accepted.map(AuthorityFix::new)
        });
    tonic::transport::Server::builder()
        .layer(CallLogLayer)
        .add_routes(cri)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .context("serving the CRI")
}

/// Raises the soft limit on open files to the hard limit, as containerd does:
/// every running container holds its log file open, and the default soft
/// limit (often 1024) would cap a node at about a thousand guests.
fn raise_open_files_limit() {
    match crate::sys::raise_open_files_limit() {
        Ok(open_files) => tracing::debug!(open_files, "raised the open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

/// The per-registry settings of the config, CA files read.
fn registry_options(config: &Config) -> anyhow::Result<std::collections::HashMap<String, RegistryOptions>> {
    let mut options = std::collections::HashMap::<String, RegistryOptions>::new();
    for host in &config.insecure_registries {
        options.entry(host.clone()).or_default().insecure = true;
    }
    for (host, registry) in &config.registries {
        let entry = options.entry(host.clone()).or_default();
        entry.insecure |= registry.insecure;
        entry.mirrors = registry.mirrors.clone();
        if let Some(ca) = &registry.ca_file {
            entry.ca_pem =
                Some(std::fs::read(ca).with_context(|| format!("reading ca_file {} of {host}", ca.display()))?);
        }
    }
    Ok(options)
}

/// One daemon per root: the image store and compile cache have one writer.
fn lock_root(root: &Path) -> anyhow::Result<std::fs::File> {
    let path = root.join("wasmrun.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // flock(LOCK_EX | LOCK_NB) on Linux; the lock lasts as long as the file is open.
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("root directory {} is in use by another wasmrun (it holds {})", root.display(), path.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

/// Fails if a live server answers on `socket`; a socket file nobody answers
/// on is stale and is replaced by `bind`.
async fn refuse_if_served(socket: &Path) -> anyhow::Result<()> {
    if tokio::net::UnixStream::connect(socket).await.is_ok() {
        bail!(
            "socket {} is in use: another process serves on it; stop it, or give this wasmrun another --socket",
            socket.display()
        );
    }
    Ok(())
}

fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => tracing::info!(socket = %socket.display(), "replaced a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", socket.display()));
        }
    }
    let listener = UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT: stop wasmrun with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down: finishing calls in flight");
}

/// Logs every CRI call at debug level with its duration and gRPC status.
#[derive(Clone, Copy)]
struct CallLogLayer;

impl<S> tower::Layer<S> for CallLogLayer {
    type Service = CallLog<S>;

    fn layer(&self, inner: S) -> CallLog<S> {
        CallLog { inner }
    }
}

#[derive(Clone)]
struct CallLog<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for CallLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = request.uri().path().to_owned();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            // A failed unary call carries its status in the headers; a successful one, in trailers.
            let status = match &response {
                Ok(r) => r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_owned(),
                Err(_) => "transport error".to_owned(),
            };
            tracing::debug!(%call, elapsed = ?started.elapsed(), grpc_status = %status, "CRI call");
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str) -> Config {
        let dir = std::env::temp_dir().join(format!("wasmrun-server-{name}-{}", rand::random::<u64>()));
        Config {
            socket: dir.join("wasmrun.sock"),
            root: dir.join("root"),
            state: dir.join("state"),
            shutdown_grace_secs: 1,
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn a_built_daemon_holds_its_socket_and_root_until_it_stops() {
        let config = config("holds");
        let daemon = Daemon::build(config.clone()).await.expect("building the daemon");
        assert!(config.socket.exists(), "the socket is bound by build");

        // Another daemon on the same socket (which answers) or root (which is locked) is refused.
        let same_socket = Daemon::build(config.clone()).await.err().expect("a second daemon on the socket");
        assert!(format!("{same_socket:#}").contains("in use"), "{same_socket:#}");
        let other_socket = Config { socket: config.socket.with_file_name("other.sock"), ..config.clone() };
        let same_root = Daemon::build(other_socket).await.err().expect("a second daemon on the root");
        assert!(format!("{same_root:#}").contains("wasmrun.lock"), "{same_root:#}");

        let shutdown = CancellationToken::new();
        shutdown.cancel();
        daemon.serve(shutdown).await.expect("serving until shutdown");
        assert!(!config.socket.exists(), "the socket is removed when the daemon stops");
        // The root lock went with the daemon.
        let again = Daemon::build(config.clone()).await.expect("building again after the stop");
        drop(again);
        let _ = std::fs::remove_dir_all(config.root.parent().unwrap());
    }
}
