//! The streaming server: the URLs `Exec`, `Attach` and `PortForward` answer
//! with, and the connections clients (kubelet's proxy, crictl, Kubernetes
//! clients) make to them, as containerd and CRI-O serve them with kubelet's
//! streaming package.
//!
//! - An RPC's request is kept under a single-use token that expires
//!   ([`requests`]); its URL is `http://<stream_server_address>:<port>/<exec|attach|portforward>/<token>`.
//! - A connection upgrades to a websocket speaking the Kubernetes channel
//!   protocols ([`channel`], [`websocket`]) or to SPDY/3.1 ([`spdy`]), as
//!   kubelet's server does; [`session`] runs the exec, attach or
//!   port-forward over either.
//!
//! Only wasmrun's own containers and pods get URLs here; the backing
//! runtime's answer its RPCs with URLs of their own server, which the front
//! passes on unchanged.

mod channel;
mod requests;
mod session;
mod spdy;
mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::error::{Error, Result};
use crate::pods::Pods;
use channel::Purpose;
use requests::Requests;

/// A request kept for its connection.
#[derive(Debug, Clone)]
pub enum Pending {
    Exec(api::ExecRequest),
    Attach(api::AttachRequest),
    PortForward(api::PortForwardRequest),
}

impl Pending {
    /// The path segment of its URL.
    fn kind(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// The streaming server's state: where it listens, the requests waiting for
/// their connection, and the pods it runs execs in and forwards ports to.
pub struct Streaming {
    /// `http://address:port`.
    base_url: String,
    requests: Requests<Pending>,
    pods: Arc<Pods>,
}

impl Streaming {
    /// Binds `address:port` (port 0: a free one). Errors: Internal naming
    /// the address when it cannot be bound.
    pub async fn bind(address: &str, port: u16, pods: Arc<Pods>) -> Result<(Arc<Self>, TcpListener)> {
        let ip: std::net::IpAddr =
            address.parse().map_err(|e| Error::InvalidArgument(format!("stream_server_address {address:?}: {e}")))?;
        let listener = TcpListener::bind(SocketAddr::new(ip, port))
            .await
            .map_err(|e| Error::internal(format!("binding the streaming server to {address}:{port}"), e))?;
        let bound = listener.local_addr().map_err(|e| Error::internal("the streaming server's address", e))?;
        let streaming = Self { base_url: format!("http://{bound}"), requests: Requests::new(requests::TTL), pods };
        Ok((Arc::new(streaming), listener))
    }

    /// The URL a client connects to for `pending`, good once, for [`requests::TTL`].
    /// Errors: ResourceExhausted with too many URLs waiting.
    pub fn url(&self, pending: Pending) -> Result<String> {
        let kind = pending.kind();
        let token = self.requests.insert(pending)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// Serves connections on `listener` until `stop` is cancelled; sessions
    /// under way are ended with it (their execs with them).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(url = %self.base_url, "streaming server listening");
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and the like pass; the listener stays.
                        tracing::warn!(%error, "streaming server: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (server, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let (server, stop) = (server.clone(), stop.clone());
                    async move { Ok::<_, Infallible>(server.handle(request, stop)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                if let Err(error) = connection.await {
                    tracing::debug!(%peer, %error, "streaming connection ended with an error");
                }
            });
        }
    }

    /// Answers one HTTP request: the token's upgrade, or why not.
    fn handle(self: Arc<Self>, request: Request<Incoming>, stop: CancellationToken) -> Response<Full<Bytes>> {
        let mut segments = request.uri().path().trim_start_matches('/').splitn(2, '/');
        let (kind, token) = (segments.next().unwrap_or_default(), segments.next().unwrap_or_default());
        // As kubelet: the token is used up by its first connection, whatever follows.
        let pending = match self.requests.take(token) {
            Some(pending) if pending.kind() == kind => pending,
            _ => return plain(StatusCode::NOT_FOUND, "unknown, used or expired streaming URL"),
        };
        let purpose = match pending {
            Pending::Exec(_) | Pending::Attach(_) => Purpose::RemoteCommand,
            Pending::PortForward(_) => Purpose::PortForward,
        };
        if is_upgrade_to(&request, "websocket") {
            let offered = request.headers().get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok());
            let protocol = match channel::negotiate(purpose, offered) {
                Ok(protocol) => protocol,
                Err(why) => return plain(StatusCode::BAD_REQUEST, &why),
            };
            let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY) else {
                return plain(StatusCode::BAD_REQUEST, "a websocket upgrade needs Sec-WebSocket-Key");
            };
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let query = request.uri().query().unwrap_or_default();
            let ports = match &pending {
                Pending::PortForward(forward) => match websocket::forwarded_ports(&forward.port, query) {
                    Ok(ports) => ports,
                    Err(why) => return plain(StatusCode::BAD_REQUEST, &why),
                },
                Pending::Exec(_) | Pending::Attach(_) => Vec::new(),
            };
            let pods = self.pods.clone();
            tokio::spawn(async move {
                let upgraded = match hyper::upgrade::on(request).await {
                    Ok(upgraded) => upgraded,
                    Err(error) => return tracing::debug!(%error, "streaming: the upgrade did not complete"),
                };
                let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                tokio::select! {
                    () = websocket::run(pods, pending, protocol, socket, ports) => {}
                    () = stop.cancelled() => {}
                }
            });
            let mut response = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_ACCEPT, accept);
            if !protocol.name.is_empty() {
                response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol.name);
            }
            return response.body(Full::default()).unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, ""));
        }
        if is_upgrade_to(&request, "SPDY/3.1") {
            let offered = request.headers().get_all(spdy::PROTOCOL_HEADER).iter().filter_map(|v| v.to_str().ok());
            let protocol = match spdy::negotiate(purpose, offered) {
                Ok(protocol) => protocol,
                Err(refusal) => {
                    let mut response = plain(refusal.status, &refusal.message);
                    for accepted in refusal.accepted {
                        response
                            .headers_mut()
                            .append(spdy::ACCEPTED_HEADER, header::HeaderValue::from_static(accepted));
                    }
                    return response;
                }
            };
            let pods = self.pods.clone();
            tokio::spawn(async move {
                let upgraded = match hyper::upgrade::on(request).await {
                    Ok(upgraded) => upgraded,
                    Err(error) => return tracing::debug!(%error, "streaming: the upgrade did not complete"),
                };
                tokio::select! {
                    () = spdy::run(pods, pending, protocol, TokioIo::new(upgraded)) => {}
                    () = stop.cancelled() => {}
                }
            });
            return Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "SPDY/3.1")
                .header(spdy::PROTOCOL_HEADER, protocol.name)
                .body(Full::default())
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, ""));
        }
        plain(StatusCode::BAD_REQUEST, "a streaming URL needs an Upgrade to websocket or SPDY/3.1")
    }
}

/// Whether `request` asks to upgrade to `protocol` (`Connection: Upgrade`, `Upgrade: protocol`).
fn is_upgrade_to(request: &Request<Incoming>, protocol: &str) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        request
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, protocol)
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
