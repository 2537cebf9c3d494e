//! Serving a `wasi:http/proxy` component: a listener in the pod's network
//! namespace, HTTP/1.1 with keep-alive (hyper, as `wasmtime serve` uses it),
//! and a fresh instance of the component per request, made from its
//! pre-instantiated form (`ProxyPre`, with copy-on-write memory images).
//!
//! What a container expects of it, as a Linux container serving HTTP has it:
//! - its address: `0.0.0.0:8080`, or the container's
//!   `WASMTIME_HTTP_PROXY_SOCKET_ADDR` (runwasi's variable), bound when the
//!   container starts, so a taken port fails the start;
//! - each request's stdout and stderr go to the container's output (its CRI
//!   log), and so does what became of a request that failed: a trap or the
//!   memory limit gives the client a 500 and the log a line;
//! - the container's memory limit caps each instance (as `wasmtime serve`
//!   caps each with `-W max-memory-size`); its CPU quota covers all of them
//!   together, and its usage counts all of them (see `limits`);
//! - at most `max_concurrent_requests` instances at once: a request over the
//!   ceiling gets a 503 at once, so nothing piles up;
//! - a graceful stop ([`Guest::stop`](super::Guest::stop)): no new
//!   connections, connections closed once their request is answered,
//!   requests in flight given the grace period, then ended. Exit code 0
//!   (`Completed`) when every request finished, 137 when some had to be ended.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::compile::Compiled;
use super::guest::{EXIT_KILLED, Exit, ExitReason, Guest};
use super::host::p2::{self, P2State};
use super::layout::{self, Preopen};
use super::limits::{CpuMeter, MemoryLimiter, Refusal, Usage};
use super::output::{Fork, Output};
use super::spec::GuestSpec;
use crate::error::{Error, Result};
use crate::network::NetNs;

/// The environment variable that sets the address a component is served on
/// (runwasi's wasmtime shim reads the same), as `IP:PORT`.
pub const ADDRESS_ENV: &str = "WASMTIME_HTTP_PROXY_SOCKET_ADDR";

/// Where a component is served when its container does not say (runwasi's default).
pub const DEFAULT_ADDRESS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8080);

/// How long the accept loop waits after the listener failed (out of file
/// descriptors, say), before it accepts again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The address `compiled` is served on for a guest with `env`, or none when
/// it runs as a command: a component exporting `wasi:http/incoming-handler`
/// is served, on [`ADDRESS_ENV`] or [`DEFAULT_ADDRESS`]; one that also
/// exports `wasi:cli/run` is served only when its container sets
/// [`ADDRESS_ENV`].
///
/// Errors: InvalidArgument for an [`ADDRESS_ENV`] that is not `IP:PORT`, or
/// has port 0.
pub fn address(compiled: &Compiled, env: &[(String, String)]) -> Result<Option<SocketAddr>> {
    if !compiled.serves_http() {
        return Ok(None);
    }
    let asked = env.iter().rev().find(|(key, _)| key == ADDRESS_ENV).map(|(_, value)| value.as_str());
    match asked {
        Some(value) => match value.trim().parse::<SocketAddr>() {
            Ok(address) if address.port() != 0 => Ok(Some(address)),
            Ok(_) => Err(Error::InvalidArgument(format!(
                "{ADDRESS_ENV}={value:?} asks for port 0: name the port to serve on (probes and Services need it)"
            ))),
            Err(_) => Err(Error::InvalidArgument(format!(
                "{ADDRESS_ENV}={value:?} is not an address to listen on, IP:PORT (such as 0.0.0.0:8080)"
            ))),
        },
        None if compiled.runs_as_command() => Ok(None),
        None => Ok(Some(DEFAULT_ADDRESS)),
    }
}

/// Where and how much a component is served.
pub(super) struct Listen {
    pub address: SocketAddr,
    /// Instances that may run at once; a request over it gets a 503.
    pub max_concurrent_requests: usize,
}

/// Starts serving `pre` (in `engine`) on `listen.address` for a guest seeing `spec`: binds
/// the listener (in `spec.netns`), opens its mounts, and runs the server on
/// `executor`. Returns once it listens, so a client may connect at once.
///
/// Errors: FailedPrecondition when the address cannot be bound (taken, or
/// not an address of the pod); InvalidArgument for a mount that cannot be
/// opened.
pub(super) async fn start(
    engine: &wasmtime::Engine,
    executor: &tokio::runtime::Handle,
    pre: ProxyPre<P2State>,
    spec: GuestSpec,
    usage: Arc<Usage>,
    output: Output,
    Listen { address, max_concurrent_requests }: Listen,
) -> Result<Guest> {
    let listener = {
        let listener = listen(address, spec.netns.as_deref())?;
        let _runtime = executor.enter();
        tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::internal(format!("registering the listener on {address}"), e))?
    };
    let has_mounts = !spec.mounts.is_empty() || spec.root.is_some();
    let prepare = {
        let spec = spec.clone();
        move || layout::prepare(&spec)
    };
    let (preopens, files) = if has_mounts {
        executor.spawn_blocking(prepare).await.map_err(|e| Error::internal("preparing a guest's mounts", e))??
    } else {
        prepare()?
    };
    let Output { stdout, stderr, done: output_done, fork } = output;
    let fork = fork.ok_or_else(|| {
        Error::internal("serving a component", anyhow::anyhow!("its output cannot be shared by many instances"))
    })?;
    // The container's output outlives every instance: its first writers are
    // not needed (each request gets its own from `fork`).
    drop((stdout, stderr));
    let service = Arc::new(Service {
        engine: engine.clone(),
        pre,
        spec,
        preopens,
        usage,
        fork,
        permits: Arc::new(Semaphore::new(max_concurrent_requests)),
        max_concurrent_requests,
        requests: TaskTracker::new(),
        ended: CancellationToken::new(),
        cut_short: AtomicUsize::new(0),
    });
    let (stop_tx, stop_rx) = oneshot::channel::<Duration>();
    let (exit_tx, exit_rx) = watch::channel(None);
    tracing::info!(container = %service.spec.container_id, %address, "serving a wasi:http component");
    executor.spawn(async move {
        let exit = serve(listener, service, stop_rx).await;
        tokio::join!(files.copy_back(), output_done);
        let _ = exit_tx.send(Some(exit));
    });
    Ok(Guest::new(stop_tx, exit_rx))
}

/// A listening socket on `address`, made in `netns` (none: the daemon's).
fn listen(address: SocketAddr, netns: Option<&NetNs>) -> Result<std::net::TcpListener> {
    let place = if netns.is_some() { "in the pod's network namespace" } else { "on the node" };
    let listener = {
        let _inside = netns
            .map(NetNs::enter)
            .transpose()
            .map_err(|e| Error::internal(format!("entering the pod's network namespace to listen on {address}"), e))?;
        // std sets SO_REUSEADDR, so a port in TIME_WAIT after an earlier
        // container can be bound again at once.
        std::net::TcpListener::bind(address)
    }
    .map_err(|e| Error::FailedPrecondition(format!("cannot listen on {address} {place}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::internal(format!("making the listener on {address} non-blocking"), e))?;
    Ok(listener)
}

/// What every request of one served container shares.
struct Service {
    engine: wasmtime::Engine,
    pre: ProxyPre<P2State>,
    spec: GuestSpec,
    preopens: Vec<Preopen>,
    usage: Arc<Usage>,
    /// New writers to the container's output, one pair per request.
    fork: Fork,
    /// One per instance that may run at once.
    permits: Arc<Semaphore>,
    max_concurrent_requests: usize,
    /// The tasks running the requests' instances.
    requests: TaskTracker,
    /// Cancelled when the grace period of a stop is over: every instance
    /// and connection left ends.
    ended: CancellationToken,
    /// How many instances were ended by a stop before they finished.
    cut_short: AtomicUsize,
}

/// Accepts connections until a stop comes, then stops gracefully; returns how it ended.
async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<Service>,
    mut stop: oneshot::Receiver<Duration>,
) -> Exit {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = TaskTracker::new();
    let grace = loop {
        tokio::select! {
            biased;
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let handler = service.clone();
                    let connection = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(
                        TokioIo::new(stream),
                        hyper::service::service_fn(move |request| handler.clone().handle(request)),
                    );
                    let connection = graceful.watch(connection);
                    let ended = service.ended.clone();
                    connections.spawn(async move {
                        tokio::select! {
                            _ = ended.cancelled() => {}
                            _ = connection => {}
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(container = %service.spec.container_id, %error, "a served container cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    };
    drop(listener);
    // Connections answer what they are reading and close; instances run on.
    let requests_done = async {
        service.requests.close();
        service.requests.wait().await;
    };
    let _ = tokio::time::timeout(grace, async { tokio::join!(graceful.shutdown(), requests_done) }).await;
    service.ended.cancel();
    connections.close();
    connections.wait().await;
    service.requests.wait().await;
    let cut_short = service.cut_short.load(Ordering::Relaxed);
    let finished_at = crate::clock::now_nanos();
    if cut_short == 0 {
        Exit { code: 0, reason: ExitReason::Completed, message: String::new(), finished_at }
    } else {
        Exit {
            code: EXIT_KILLED,
            reason: ExitReason::Error,
            message: format!(
                "stopped: {cut_short} request(s) still running at the end of the grace period of {grace:?} were ended"
            ),
            finished_at,
        }
    }
}

impl Service {
    /// Answers one request with a fresh instance, or a 503 over the ceiling.
    async fn handle(
        self: Arc<Self>,
        request: hyper::Request<Incoming>,
    ) -> std::result::Result<hyper::Response<HyperOutgoingBody>, Infallible> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let ceiling = self.max_concurrent_requests;
            tracing::debug!(container = %self.spec.container_id, ceiling, "a served request over the ceiling got a 503");
            return Ok(plain(
                503,
                format!(
                    "wasmrun: the container already runs its ceiling of {ceiling} request(s) at once \
                     (http_max_concurrent_requests)\n"
                ),
            ));
        };
        let what = format!("{} {}", request.method(), request.uri().path());
        let (stdout, stderr) = (self.fork)();
        let limiter = MemoryLimiter::per_instance(self.usage.clone());
        let mut store = match p2::store(&self.engine, &self.spec, &self.preopens, (stdout, stderr), limiter) {
            Ok(store) => store,
            Err(e) => return Ok(self.failed(&what, Failure::new(500, format!("cannot make its instance: {e}"))).await),
        };
        let (sender, receiver) = oneshot::channel();
        let made = (|| {
            let request = store.data_mut().http().new_incoming_request(Scheme::Http, request)?;
            let outparam = store.data_mut().http().new_response_outparam(sender)?;
            Ok::<_, wasmtime::Error>((request, outparam))
        })();
        let (request, outparam) = match made {
            Ok(made) => made,
            Err(e) => {
                let failure = Failure::new(500, format!("cannot pass the request to the component: {e:#}"));
                return Ok(self.failed(&what, failure).await);
            }
        };
        let task = self.requests.spawn(self.clone().run(store, request, outparam, permit, what));
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Ok(plain(500, format!("wasmrun: the component answered with an error: {code:?}\n"))),
            // The instance ended without answering: it trapped, or ran out of
            // memory, or was ended by a stop; `run` logged which.
            Err(_) => {
                let failure = match task.await {
                    Ok(Some(failure)) => failure,
                    Ok(None) => Failure::new(500, "the component returned without answering".into()),
                    Err(e) => Failure::new(500, format!("its task failed: {e}")),
                };
                Ok(plain(failure.status, format!("wasmrun: {}\n", failure.summary)))
            }
        }
    }

    /// Runs the request's instance to its end, its CPU charged to the
    /// container. Returns what went wrong (also written to the container's
    /// log), if anything did, with the status it gives a request not yet
    /// answered: 503 when no instance could be made (the daemon's pool of
    /// instances is full), 500 for the rest.
    async fn run(
        self: Arc<Self>,
        mut store: wasmtime::Store<P2State>,
        request: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
        outparam: wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
        _permit: OwnedSemaphorePermit,
        what: String,
    ) -> Option<Failure> {
        let mut instantiated = false;
        let result = {
            let pre = &self.pre;
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                instantiated = true;
                proxy.wasi_http_incoming_handler().call_handle(&mut store, request, outparam).await
            };
            tokio::select! {
                biased;
                _ = self.ended.cancelled() => {
                    self.cut_short.fetch_add(1, Ordering::Relaxed);
                    return Some(Failure::new(500, "the container was stopped while the request ran".into()));
                }
                result = CpuMeter::new(run, &*self.usage) => result,
            }
        };
        let error = result.err()?;
        // The root cause is the trap itself ("wasm trap: …"); the error's
        // chain around it carries the wasm backtrace, for the log only.
        let cause = error.root_cause().to_string();
        let mut failure = if let Some(budget @ Refusal::Budget { .. }) = store.data().limiter().refusal() {
            Failure::new(500, format!("the request's instance was ended: {budget}"))
        } else if store.data().limiter().hit_limit() {
            Failure::new(500, format!("memory limit of {} bytes reached: {cause}", self.usage.memory_limit()))
        } else if !instantiated {
            Failure::new(503, format!("cannot make an instance: {cause}"))
        } else {
            Failure::new(500, format!("the component trapped: {cause}"))
        };
        failure.detail = format!("{error:#}");
        drop(store);
        self.log(&what, &failure).await;
        Some(failure)
    }

    /// Logs the failure of a request that got no instance; its answer.
    async fn failed(&self, what: &str, failure: Failure) -> hyper::Response<HyperOutgoingBody> {
        self.log(what, &failure).await;
        plain(failure.status, format!("wasmrun: {}\n", failure.summary))
    }

    /// Writes what became of request `what` to the container's log (stderr:
    /// the summary, then the details) and the daemon's (the summary).
    async fn log(&self, what: &str, failure: &Failure) {
        tracing::info!(container = %self.spec.container_id, request = %what, failure = %failure.summary, "a served request failed");
        let mut line = format!("wasmrun: request {what}: {}\n", failure.summary);
        if !failure.detail.is_empty() {
            line.push_str(&failure.detail);
            line.push('\n');
        }
        let (_, mut stderr) = (self.fork)();
        let _ = stderr.write_all(line.as_bytes()).await;
    }
}

/// What became of a request that failed.
struct Failure {
    /// The status of its answer, if it had none yet.
    status: u16,
    /// One line, for the client, the daemon's log and the container's.
    summary: String,
    /// More for the container's log (a trap's wasm backtrace); may be empty.
    detail: String,
}

impl Failure {
    fn new(status: u16, summary: String) -> Self {
        Self { status, summary, detail: String::new() }
    }
}

/// A plain-text response of wasmrun's own.
fn plain(status: u16, body: String) -> hyper::Response<HyperOutgoingBody> {
    let body = http_body_util::Full::new(bytes::Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    response
}
