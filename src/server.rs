//! The daemon: the unix socket, the services on it, and a clean shutdown.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::{Context as _, bail};
use tokio::net::UnixListener;
use tonic::codegen::http;

use crate::api::image_service_server::ImageServiceServer;
use crate::api::runtime_service_server::RuntimeServiceServer;
use crate::authority::AuthorityFix;
use crate::backing::Backing;
use crate::config::Config;
use crate::cri::{ImageHandler, Parts, RuntimeHandler};
use crate::images::{Images, Limits, PullOptions, RegistryOptions};
use crate::pods::Pods;
use crate::route::Router;
use crate::wasm::Engine;

/// kubelet allows CRI messages of up to 16 MiB (a ListContainers of a busy node).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Raises the soft limit on open files to the hard limit, as containerd does:
/// every running container holds its log file open, and the default soft
/// limit (often 1024) would cap a node at about a thousand guests.
fn raise_open_files_limit() {
    match crate::sys::raise_open_files_limit() {
        Ok(open_files) => tracing::debug!(open_files, "raised the open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

/// Serves the CRI until SIGTERM or SIGINT, then finishes in-flight calls and
/// removes the socket.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    for dir in [&config.root, &config.state] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    refuse_if_served(&config.socket).await?;
    let _root_lock = lock_root(&config.root)?;
    raise_open_files_limit();

    let engine = Engine::new(&config.root.join("cache"), config.default_memory_limit_bytes)?;
    let options = PullOptions {
        registries: registry_options(&config)?,
        limits: Limits { max_manifest_bytes: config.max_manifest_bytes, max_blob_bytes: config.max_blob_bytes },
        auth_file: config.auth_file.clone(),
        registry_config: config.registry_config_path.clone(),
    };
    let images = Arc::new(Images::open(&config.root, options, engine.clone()).await?);
    let pods = Arc::new(Pods::new(images.clone(), engine, &config.state));
    let backing = config
        .backing_endpoint
        .as_deref()
        .map(|endpoint| Backing::new(endpoint, std::time::Duration::from_secs(config.backing_connect_timeout_secs)))
        .transpose()?;
    let router = Router { wasm_handlers: config.wasm_handlers.clone(), has_backing: backing.is_some() };
    let parts = Parts { config: Arc::new(config.clone()), pods, images, router, backing };

    let listener = bind(&config.socket)?;
    let signalled = tokio::sync::Notify::new();
    tracing::info!(socket = %config.socket.display(), root = %config.root.display(), version = env!("CARGO_PKG_VERSION"), "wasmrun serving the CRI");
    let served = tonic::transport::Server::builder()
        .layer(CallLogLayer)
        .add_service(
            RuntimeServiceServer::new(RuntimeHandler::new(parts.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(ImageHandler::new(parts))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(tokio_stream::wrappers::UnixListenerStream::new(listener), |accepted| {
                accepted.map(AuthorityFix::new)
            }),
            signalled.notified(),
        );
    let grace = std::time::Duration::from_secs(config.shutdown_grace_secs);
    let served = tokio::select! {
        served = served => served,
        // A graceful HTTP/2 shutdown waits for every client to acknowledge
        // it; one that hangs (or never reads) would hold the daemon forever.
        () = async {
            shutdown_signal().await;
            signalled.notify_one();
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(?grace, "calls or clients still in flight after the shutdown grace: stopping anyway");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&config.socket);
    served.context("serving the CRI")?;
    tracing::info!("wasmrun stopped");
    Ok(())
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
