//! `wasi:http/outgoing-handler` for a guest of a pod: requests leave from the
//! pod's network namespace, and names resolve with the pod's DNS config.
//!
//! wasmtime-wasi-http sends a request through [`WasiHttpHooks::send_request`].
//! A hostNetwork pod's guest (no namespace, no DNS config of its own) gets
//! wasmtime-wasi-http's own sender, `default_send_request`, unchanged:
//! `http` and `https`, names resolved as the node resolves them. A guest
//! in a pod network gets [`send_from_pod`]: its connection's socket is made
//! inside the pod's namespace, and the name of the authority is looked up
//! with the pod's resolver. It speaks `http` only for now: `https` from a
//! pod network is refused with an error code the guest sees.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::network::{LookupError, NetNs, PodResolver, dns};

/// How long a connection, and the first byte of its answer, may take when
/// the guest's request options set no limit (wasmtime-wasi-http's default).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// What an outgoing request's future resolves to: the answer, and a future
/// that reports an error of the connection after the answer's head.
type Sent = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>;

/// The hooks of a guest's `wasi:http`: where its outgoing requests leave from.
#[derive(Clone, Default)]
pub(in crate::wasm) struct PodHttp {
    /// The pod's network namespace; none: the daemon's (a hostNetwork pod).
    pub netns: Option<Arc<NetNs>>,
    /// The pod's name resolution; none: the node's.
    pub resolver: Option<Arc<PodResolver>>,
}

impl WasiHttpHooks for PodHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let pod = self.clone();
        Box::new(async move {
            if pod.netns.is_none() && pod.resolver.is_none() {
                let (response, connection) = wasmtime_wasi_http::default_send_request(request, options).await?;
                return Ok((response.map(BodyExt::boxed_unsync), Box::new(connection) as Box<_>));
            }
            send_from_pod(&pod, request, options).await
        })
    }
}

/// Sends `request` over a new connection made in the pod's namespace, its
/// host looked up with the pod's resolver; HTTP/1.1, one request per
/// connection (as wasmtime-wasi-http's own sender does).
///
/// Errors, as the guest sees them: `HttpRequestUriInvalid` without an
/// authority; `InternalError` for `https`; `DnsError` for a name that does
/// not resolve; `ConnectionRefused`/`Connect` when no address answers;
/// `ConnectionTimeout` and `ConnectionReadTimeout` past the request options'
/// connect and first-byte timeouts.
async fn send_from_pod(pod: &PodHttp, mut request: http::Request<WasiBody>, options: Option<RequestOptions>) -> Sent {
    let uri = request.uri();
    if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        return Err(Error::InternalError(Some(
            "https requests from a pod's network namespace are not supported by wasmrun yet; use http".into(),
        )));
    }
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let connect_timeout = options.and_then(|o| o.connect_timeout).unwrap_or(DEFAULT_TIMEOUT);
    let first_byte_timeout = options.and_then(|o| o.first_byte_timeout).unwrap_or(DEFAULT_TIMEOUT);

    let addresses = dns::lookup(pod.resolver.as_deref(), &host).await.map_err(|e| dns_error(&host, e))?;
    let stream = tokio::time::timeout(connect_timeout, connect(pod.netns.as_deref(), &addresses, port))
        .await
        .map_err(|_| Error::ConnectionTimeout)?
        .map_err(Error::Connect)?;
    let (mut sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // The connection runs as a task of its own, ended when the guest drops
    // what it holds of the exchange (the returned future aborts it).
    let connection = wasmtime_wasi::runtime::spawn(connection);

    // The authority went into the Host header; the request line of a request
    // to an origin server carries the path only (RFC 9112, section 3.2.1).
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *request.uri_mut() = http::Uri::builder().path_and_query(path).build().map_err(|_| Error::HttpRequestUriInvalid)?;

    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;
    let response = response.map(|body: Incoming| body.map_err(Error::from).boxed_unsync());
    let connection_errors = async move { connection.await.map_err(Error::from) };
    Ok((response, Box::new(connection_errors)))
}

/// A TCP connection to the first of `addresses` that answers on `port`, its
/// socket made in `netns` (none: the daemon's namespace).
async fn connect(netns: Option<&NetNs>, addresses: &[IpAddr], port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address");
    for &ip in addresses {
        let address = SocketAddr::new(ip, port);
        let socket = {
            // Only the socket's creation needs the namespace; no await while inside.
            let _inside = netns.map(NetNs::enter).transpose()?;
            if address.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        }?;
        match socket.connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The `wasi:http` error of a name that did not resolve.
fn dns_error(host: &str, error: LookupError) -> Error {
    let rcode = match error {
        LookupError::InvalidName => "invalid name",
        LookupError::NoAddress => "NXDOMAIN",
        LookupError::Temporary => "SERVFAIL",
    };
    tracing::debug!(%host, ?error, "an outgoing request's host did not resolve");
    Error::DnsError { rcode: Some(rcode.into()), info_code: None }
}
