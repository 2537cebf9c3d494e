//! A small HTTP/1.1 client (hyper's) for served components: one request on
//! its own connection ([`http_request`]), or many in turn on one keep-alive
//! connection ([`HttpConnection`]). Every step is bounded, so a server that
//! never answers fails the request instead of hanging the test.

use std::io::{Error, ErrorKind};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::{HeaderMap, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long connecting (TCP and the HTTP/1.1 handshake) may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long a request may take, from sending it to the end of the response's body.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// A response: status, headers, the whole body.
pub type HttpResponse = (u16, HeaderMap, Vec<u8>);

/// `method path` with `body` to `addr` on a new connection, closed afterwards.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<HttpResponse> {
    HttpConnection::connect(addr).await?.send(method, path, &[], body).await
}

/// One keep-alive HTTP/1.1 connection: requests go one after the other on
/// the same TCP connection. Dropping it closes the connection.
pub struct HttpConnection {
    sender: SendRequest<Full<Bytes>>,
    /// The `Host` header of its requests (hyper's low-level client sets none).
    host: String,
    /// Drives the connection (reads and writes) until it ends.
    driver: JoinHandle<()>,
}

impl HttpConnection {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<HttpConnection> {
        let connect = async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            handshake(TokioIo::new(stream)).await.map_err(Error::other)
        };
        let (sender, connection) = tokio::time::timeout(CONNECT_LIMIT, connect).await.map_err(|_| {
            Error::new(ErrorKind::TimedOut, format!("connecting to {addr}: no answer in {CONNECT_LIMIT:?}"))
        })??;
        let driver = tokio::spawn(async move {
            // Its error, if any, is also what the pending request gets.
            let _ = connection.await;
        });
        Ok(HttpConnection { sender, host: addr.to_string(), driver })
    }

    /// Sends `method path` with `headers` (plus `Host`, unless given) and
    /// `body`, and reads the whole response. Fails when the connection is
    /// gone (closed by the server, or broken) or after [`REQUEST_LIMIT`].
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let mut request = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
            request = request.header("host", &self.host);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{method} {path}: {e}")))?;
        let exchange = async {
            self.sender.ready().await.map_err(Error::other)?;
            let response = self.sender.send_request(request).await.map_err(Error::other)?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(Error::other)?.to_bytes();
            Ok((parts.status.as_u16(), parts.headers, body.to_vec()))
        };
        tokio::time::timeout(REQUEST_LIMIT, exchange).await.map_err(|_| {
            Error::new(
                ErrorKind::TimedOut,
                format!("{method} {path} to {}: no response in {REQUEST_LIMIT:?}", self.host),
            )
        })?
    }
}

impl Drop for HttpConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
