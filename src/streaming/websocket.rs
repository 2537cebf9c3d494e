//! A session over a websocket, in the Kubernetes channel protocols
//! ([`super::channel`]), as kubelet's `wsstream` serves them: each message
//! one channel's bytes. One task writes the session's [`Out`] as messages,
//! one reads the client's into [`Incoming`]; the session runs between them.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::task::AbortOnDropHandle;

use super::Pending;
use super::channel::{self, Outgoing, Protocol};
use super::session::{self, Incoming, Out, Ports, QUEUE, ToClient};
use crate::pods::Pods;

/// The most ports one websocket port-forward carries: their channels (two
/// each) are one byte.
const MAX_PORTS: usize = 128;

/// Runs the session `pending` asked for on `socket`, until it is done or
/// the client goes; a port-forward forwards `ports` (from [`forwarded_ports`]).
pub(super) async fn run<S>(
    pods: Arc<Pods>,
    pending: Pending,
    protocol: Protocol,
    socket: WebSocketStream<S>,
    ports: Vec<u16>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, messages) = socket.split();
    let (queue, queued) = mpsc::channel::<Out>(QUEUE);
    // Both end with the connection's session (dropped, they are aborted).
    let writer = AbortOnDropHandle::new(tokio::spawn(write_messages(sink, queued, protocol)));
    let (incoming, from_client) = mpsc::channel::<Incoming>(QUEUE);
    let reader = AbortOnDropHandle::new(tokio::spawn(read_messages(messages, incoming, protocol)));
    let to_client = ToClient::new(queue, protocol.json_status);
    match pending {
        Pending::Exec(request) => {
            if ready(&to_client, request.stdout, request.stderr).await {
                session::exec(&pods, request, to_client, from_client).await;
            }
        }
        Pending::Attach(request) => {
            if ready(&to_client, request.stdout, request.stderr).await {
                session::attach(&pods, request, to_client, from_client).await;
            }
        }
        Pending::PortForward(request) => {
            // Each port's channels open with a message holding the port, little-endian.
            for (index, port) in ports.iter().enumerate() {
                for channel in [index as u32 * 2, index as u32 * 2 + 1] {
                    if !to_client.send(channel, &port.to_le_bytes()).await {
                        return reader.abort();
                    }
                }
            }
            session::port_forward(&pods, &request.pod_sandbox_id, Ports::Fixed(ports), to_client, from_client).await;
        }
    }
    reader.abort();
    // Every sender is dropped by now: the writer sends what is queued, then closes.
    let _ = writer.await;
}

/// The empty message on the first channel the client reads, which says the streams are ready.
async fn ready(to_client: &ToClient, stdout: bool, stderr: bool) -> bool {
    to_client.send(session::first_channel(stdout, stderr), b"").await
}

/// Sends `queued` messages to the client, then a close.
async fn write_messages<K>(mut sink: K, mut queued: mpsc::Receiver<Out>, protocol: Protocol)
where
    K: futures_util::Sink<Message> + Unpin,
{
    while let Some(out) = queued.recv().await {
        // Channels have no end of their own here: the connection's close ends them all.
        let Out::Data(channel, data) = out else { continue };
        let Ok(channel) = u8::try_from(channel) else { continue };
        let message = match channel::encode(protocol, channel, &data) {
            Outgoing::Binary(bytes) => Message::Binary(bytes.into()),
            Outgoing::Text(text) => Message::Text(text.into()),
        };
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}

/// Decodes the client's messages into `incoming` until it closes or goes
/// (which drops `incoming`: the session's [`FromClient`] ends).
async fn read_messages<R>(mut messages: R, incoming: mpsc::Sender<Incoming>, protocol: Protocol)
where
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = messages.next().await {
        let decoded = match &message {
            Message::Binary(bytes) => channel::decode(protocol, bytes),
            Message::Text(text) => channel::decode(protocol, text.as_bytes()),
            Message::Close(_) => return,
            _ => continue,
        };
        let message = match decoded {
            channel::Incoming::Data(channel, bytes) => Incoming::Data(u32::from(channel), bytes),
            channel::Incoming::Close(channel) => Incoming::Close(u32::from(channel)),
            channel::Incoming::Nothing => continue,
        };
        if incoming.send(message).await.is_err() {
            return;
        }
    }
}

/// The ports to forward: the CRI request's, or when it names none the
/// URL's `port` query (repeatable, each a comma-separated list), as
/// kubelet's `NewV4Options` reads it (the API server passes kubectl's ports
/// on so); at most [`MAX_PORTS`]. Errors (kubelet's words, for a 400): no
/// port at all, an empty, bad or zero one.
pub(super) fn forwarded_ports(requested: &[i32], query: &str) -> Result<Vec<u16>, String> {
    let ports: Vec<u16> = if !requested.is_empty() {
        requested.iter().filter_map(|&port| u16::try_from(port).ok()).filter(|&port| port > 0).collect()
    } else {
        let mut ports = Vec::new();
        for value in query.split('&').filter_map(|pair| pair.strip_prefix("port=")) {
            if value.is_empty() {
                return Err("query parameter \"port\" cannot be empty".into());
            }
            for port in value.split("%2C").flat_map(|part| part.split(',')) {
                match port.parse::<u16>() {
                    Ok(0) => return Err(format!("port {port:?} must be > 0")),
                    Ok(port) => ports.push(port),
                    Err(e) => return Err(format!("unable to parse {port:?} as a port: {e}")),
                }
            }
        }
        ports
    };
    if ports.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports.into_iter().take(MAX_PORTS).collect())
}

#[cfg(test)]
mod tests {
    use super::forwarded_ports;

    #[test]
    fn ports_come_from_the_request_or_the_query() {
        assert_eq!(forwarded_ports(&[8080, 0, 70000, 9090], "port=1"), Ok(vec![8080, 9090]));
        // As the API server passes kubectl's ports on: `port`, repeated or comma-separated.
        assert_eq!(forwarded_ports(&[], "port=8080%2C9090&port=7"), Ok(vec![8080, 9090, 7]));
        assert!(forwarded_ports(&[], "port=8080,x").unwrap_err().contains("unable to parse"));
        assert!(forwarded_ports(&[], "port=0").unwrap_err().contains("must be > 0"));
        assert!(forwarded_ports(&[], "port=").unwrap_err().contains("cannot be empty"));
        assert!(forwarded_ports(&[], "ports=80").unwrap_err().contains("is required"));
        assert!(forwarded_ports(&[], "").unwrap_err().contains("is required"));
    }
}
