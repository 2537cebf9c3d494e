//! One connection's session over a websocket: an exec (its stdin from the
//! client, its stdout and stderr to it, its exit status on the error
//! channel), an attach to a running guest, or a port-forward (a TCP connection per port, made inside the
//! pod's network namespace). See [`super::channel`] for the framing.
//!
//! One task writes every message to the client, in the order given (so the
//! exit status comes after the last output); the session reads the client.
//! A client that goes away ends the exec (its [`Exec`](crate::pods::Exec) is
//! dropped) and closes the forwarded connections.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::PollSender;

use super::Pending;
use super::channel::{self, Ending, Incoming, Outgoing, Protocol};
use crate::api;
use crate::pods::Pods;
use crate::wasm::{Output, Stdin};

/// Channels of exec and attach.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;

/// The most bytes of output one message carries.
const MAX_MESSAGE_DATA: usize = 32 * 1024;
/// Messages queued for the client before writers wait.
const QUEUE: usize = 16;

/// Runs the session `pending` asked for on `socket`, until it is done or the client goes.
pub(super) async fn run<S>(
    pods: Arc<Pods>,
    pending: Pending,
    protocol: Protocol,
    socket: WebSocketStream<S>,
    query: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, incoming) = socket.split();
    let (queue, queued) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(write_messages(sink, queued));
    let to_client = ToClient { protocol, queue };
    match pending {
        Pending::Exec(request) => exec(&pods, request, to_client, incoming).await,
        Pending::Attach(request) => attach(&pods, request, to_client, incoming).await,
        Pending::PortForward(request) => port_forward(&pods, request, query, to_client, incoming).await,
    }
    // Every sender is dropped by now: the writer sends what is queued, then closes.
    let _ = writer.await;
}

/// Sends `queued` messages to the client, then a close.
async fn write_messages<K>(mut sink: K, mut queued: mpsc::Receiver<Message>)
where
    K: futures_util::Sink<Message> + Unpin,
{
    while let Some(message) = queued.recv().await {
        if sink.send(message).await.is_err() {
            return;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}

/// What the session sends the client through.
#[derive(Clone)]
struct ToClient {
    protocol: Protocol,
    queue: mpsc::Sender<Message>,
}

impl ToClient {
    fn message(&self, channel: u8, data: &[u8]) -> Message {
        match channel::encode(self.protocol, channel, data) {
            Outgoing::Binary(bytes) => Message::Binary(bytes.into()),
            Outgoing::Text(text) => Message::Text(text.into()),
        }
    }

    /// Queues `data` for `channel`; false once the client is gone.
    async fn send(&self, channel: u8, data: &[u8]) -> bool {
        self.queue.send(self.message(channel, data)).await.is_ok()
    }

    /// A writer of `channel` for a guest's output.
    fn writer(&self, channel: u8, open: mpsc::Sender<()>) -> ChannelWriter {
        ChannelWriter { to_client: self.clone(), sender: PollSender::new(self.queue.clone()), channel, _open: open }
    }
}

/// The messages a client sends, decoded; `None` once it is gone (closed, or the connection failed).
async fn next_incoming<R>(incoming: &mut R, protocol: Protocol) -> Option<Incoming>
where
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match incoming.next().await? {
            Ok(Message::Binary(bytes)) => return Some(channel::decode(protocol, &bytes)),
            Ok(Message::Text(text)) => return Some(channel::decode(protocol, text.as_bytes())),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// An exec: as kubelet's `ServeExec`, with `pods.exec` as the runtime.
async fn exec<R>(pods: &Pods, request: api::ExecRequest, to_client: ToClient, mut incoming: R)
where
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    if !to_client.send(first_stream(request.stdout, request.stderr), b"").await {
        return;
    }
    let (stdin, mut stdin_pipe) = if request.stdin {
        let (reader, writer) = tokio::io::simplex(64 * 1024);
        (Stdin::new(reader), Some(writer))
    } else {
        (Stdin::default(), None)
    };
    // With a TTY, stderr and stdout are one stream (a terminal's), as the client reads them.
    let output = output(&to_client, request.stdout, request.stderr || (request.tty && request.stdout), request.tty);
    let command = format!("{:?}", request.cmd);
    let exec = match pods.exec(&request.container_id, request.cmd, stdin, output).await {
        Ok(exec) => exec,
        Err(error) => {
            to_client.send(ERROR, &channel::status(to_client.protocol, &Ending::Failed(error.to_string()))).await;
            return;
        }
    };
    let reading = async {
        while let Some(message) = next_incoming(&mut incoming, to_client.protocol).await {
            match message {
                Incoming::Data(STDIN, bytes) => {
                    if let Some(pipe) = stdin_pipe.as_mut()
                        && pipe.write_all(&bytes).await.is_err()
                    {
                        // The guest closed its stdin: nothing more reaches it.
                        stdin_pipe = None;
                    }
                }
                // Closing stdin is the guest's end of input.
                Incoming::Close(STDIN) => {
                    if let Some(mut pipe) = stdin_pipe.take() {
                        let _ = pipe.shutdown().await;
                    }
                }
                // Resize (4): WASI has no terminal to resize; other channels are not the client's to write.
                Incoming::Data(..) | Incoming::Close(_) | Incoming::Nothing => {}
            }
        }
    };
    tokio::select! {
        exit = exec.wait() => {
            let ending = if exit.code == 0 { Ending::Success } else { Ending::Exited { code: exit.code, command } };
            to_client.send(ERROR, &channel::status(to_client.protocol, &ending)).await;
        }
        // The client went away: dropping the exec ends its instance.
        () = reading => tracing::debug!(container = %request.container_id, "exec client went away"),
    }
}

/// The first stream a client reads: an empty message on it says the streams are ready.
fn first_stream(stdout: bool, stderr: bool) -> u8 {
    if stdout {
        STDOUT
    } else if stderr {
        STDERR
    } else {
        ERROR
    }
}

/// An attach: as kubelet's `ServeAttach`. The running guest's output from
/// now on goes to the client (the streams it asked for), the client's stdin
/// to the guest's when the container has one (`stdin: true`; else it is
/// dropped); the session ends with the container (status Success) or when
/// the client goes. A client's stdin ending, or the client going, ends the
/// guest's input when the container says `stdin_once`.
async fn attach<R>(pods: &Pods, request: api::AttachRequest, to_client: ToClient, mut incoming: R)
where
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    use tokio::sync::broadcast::error::RecvError;
    if !to_client.send(first_stream(request.stdout, request.stderr), b"").await {
        return;
    }
    let attached = pods.container(&request.container_id).and_then(|container| Ok((container.attach()?, container)));
    let (crate::pods::Attached { mut output, stdin }, container) = match attached {
        Ok(attached) => attached,
        Err(error) => {
            to_client.send(ERROR, &channel::status(to_client.protocol, &Ending::Failed(error.to_string()))).await;
            return;
        }
    };
    let mut stdin = stdin.filter(|_| request.stdin);
    let mut client_stdin_ended = false;
    let ended = loop {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Ok((stream, bytes)) => {
                    let channel = match stream {
                        crate::logs::Stream::Stdout if request.stdout => STDOUT,
                        crate::logs::Stream::Stderr if request.stderr => STDERR,
                        // A terminal shows both streams.
                        crate::logs::Stream::Stderr if request.tty && request.stdout => STDOUT,
                        _ => continue,
                    };
                    if !to_client.send(channel, &bytes).await {
                        break false;
                    }
                }
                Err(RecvError::Lagged(lost)) => {
                    tracing::debug!(container = %request.container_id, lost, "attached client fell behind; output lost");
                }
                Err(RecvError::Closed) => break true,
            },
            message = next_incoming(&mut incoming, to_client.protocol) => match message {
                Some(Incoming::Data(STDIN, bytes)) => {
                    if let Some(pipe) = &stdin
                        && pipe.lock().await.write_all(&bytes).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(Incoming::Close(STDIN)) => {
                    stdin = None;
                    client_stdin_ended = true;
                    if container.config.stdin_once {
                        container.close_stdin().await;
                    }
                }
                Some(_) => {}
                None => break false,
            },
        }
    };
    if request.stdin && container.config.stdin_once && !client_stdin_ended {
        container.close_stdin().await;
    }
    if ended {
        to_client.send(ERROR, &channel::status(to_client.protocol, &Ending::Success)).await;
    }
}

/// An exec's output to the client: stdout and stderr on their channels (or
/// dropped when not asked for; with `tty`, stderr on stdout's, as a terminal
/// merges them), done once both writers are dropped (what they wrote is
/// queued before the exit status).
fn output(to_client: &ToClient, stdout: bool, stderr: bool, tty: bool) -> Output {
    let (open, mut closed) = mpsc::channel::<()>(1);
    let done = async move {
        let _ = closed.recv().await;
    };
    let writer = |wanted: bool, channel: u8| -> Box<dyn AsyncWrite + Send + Sync + Unpin> {
        if wanted { Box::new(to_client.writer(channel, open.clone())) } else { Box::new(tokio::io::sink()) }
    };
    Output::new(writer(stdout, STDOUT), writer(stderr, if tty { STDOUT } else { STDERR }), done)
}

/// One channel of output, as a guest writes it.
struct ChannelWriter {
    to_client: ToClient,
    sender: PollSender<Message>,
    channel: u8,
    /// Dropped with the writer: see [`output`].
    _open: mpsc::Sender<()>,
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // A client gone takes the output with it: the guest is not failed for it.
        if ready!(self.sender.poll_reserve(cx)).is_err() {
            return Poll::Ready(Ok(buf.len()));
        }
        let data = &buf[..buf.len().min(MAX_MESSAGE_DATA)];
        let message = self.to_client.message(self.channel, data);
        let _ = self.sender.send_item(message);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A port-forward: as kubelet's websocket port-forward, each port of the
/// request (or, when it names none, of the URL's `ports` query) a data
/// channel and an error channel, opened by a message holding the port; one
/// TCP connection per port to `localhost:port` inside the pod's network
/// namespace. The session ends once every port's connection has ended, or
/// the client goes.
async fn port_forward<R>(
    pods: &Pods,
    request: api::PortForwardRequest,
    query: &str,
    to_client: ToClient,
    mut incoming: R,
) where
    R: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let ports = forwarded_ports(&request.port, query);
    let sandbox = match pods.pod(&request.pod_sandbox_id) {
        Ok(sandbox) => sandbox,
        Err(error) => {
            for (index, port) in ports.iter().enumerate() {
                let data = channel::port_data_channel(index);
                to_client.send(data, &port.to_le_bytes()).await;
                to_client.send(data + 1, &port.to_le_bytes()).await;
                to_client.send(data + 1, error.to_string().as_bytes()).await;
            }
            return;
        }
    };
    let mut to_ports = Vec::new();
    let mut forwards = tokio::task::JoinSet::new();
    for (index, &port) in ports.iter().enumerate() {
        let data = channel::port_data_channel(index);
        if !to_client.send(data, &port.to_le_bytes()).await || !to_client.send(data + 1, &port.to_le_bytes()).await {
            return;
        }
        let (to_port, from_client) = mpsc::channel::<Vec<u8>>(QUEUE);
        to_ports.push(to_port);
        let (netns, to_client, pod_id) = (sandbox.network.netns.clone(), to_client.clone(), sandbox.id.clone());
        forwards.spawn(async move {
            if let Err(error) = forward(netns, port, data, &to_client, from_client).await {
                let message = format!("error forwarding port {port} to pod {pod_id}: {error}");
                to_client.send(data + 1, message.as_bytes()).await;
            }
        });
    }
    let reading = async {
        while let Some(message) = next_incoming(&mut incoming, to_client.protocol).await {
            if let Incoming::Data(channel, bytes) = message
                && channel % 2 == 0
                && let Some(to_port) = to_ports.get(usize::from(channel / 2))
            {
                // A port whose connection ended takes no more.
                let _ = to_port.send(bytes).await;
            }
        }
    };
    tokio::select! {
        () = async { while forwards.join_next().await.is_some() {} } => {}
        // The client went away: the connections close with the tasks.
        () = reading => forwards.abort_all(),
    }
}

/// The ports to forward: the request's, or the URL's `ports` query
/// (comma-separated, repeatable) when it names none; 0 and bad ones are skipped.
fn forwarded_ports(requested: &[i32], query: &str) -> Vec<u16> {
    if !requested.is_empty() {
        return requested.iter().filter_map(|&port| u16::try_from(port).ok()).filter(|&port| port > 0).collect();
    }
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("ports="))
        .flat_map(|list| list.split("%2C").flat_map(|part| part.split(',')))
        .filter_map(|port| port.parse::<u16>().ok())
        .filter(|&port| port > 0)
        .collect()
}

/// One port's connection: made inside `netns` (none: the node's), bytes
/// from the client written to it, its bytes sent on channel `data`.
async fn forward(
    netns: Option<Arc<crate::network::NetNs>>,
    port: u16,
    data: u8,
    to_client: &ToClient,
    mut from_client: mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    // containerd dials `localhost:port` in the namespace: IPv4 first, then IPv6.
    let connect = |address: std::net::IpAddr| {
        crate::network::InNetNs::new(netns.clone(), tokio::net::TcpStream::connect((address, port)))
    };
    let stream = match connect(std::net::Ipv4Addr::LOCALHOST.into()).await? {
        Ok(stream) => stream,
        Err(v4) => connect(std::net::Ipv6Addr::LOCALHOST.into()).await?.map_err(|_| v4)?,
    };
    let (mut reader, mut writer) = stream.into_split();
    let upstream = async {
        while let Some(bytes) = from_client.recv().await {
            writer.write_all(&bytes).await?;
        }
        writer.shutdown().await
    };
    let downstream = async {
        let mut buffer = vec![0u8; MAX_MESSAGE_DATA];
        loop {
            let read = reader.read(&mut buffer).await?;
            if read == 0 || !to_client.send(data, &buffer[..read]).await {
                return Ok::<_, io::Error>(());
            }
        }
    };
    // The pod's end closing ends the forward, as kubelet's copy does.
    tokio::select! {
        ended = downstream => ended,
        ended = upstream => match ended {
            Ok(()) => std::future::pending().await,
            Err(error) => Err(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::forwarded_ports;

    #[test]
    fn ports_come_from_the_request_or_the_query() {
        assert_eq!(forwarded_ports(&[8080, 0, 70000, 9090], "ports=1"), vec![8080, 9090]);
        assert_eq!(forwarded_ports(&[], "ports=8080%2C9090&ports=7"), vec![8080, 9090, 7]);
        assert_eq!(forwarded_ports(&[], "ports=8080,x"), vec![8080]);
        assert!(forwarded_ports(&[], "").is_empty());
    }
}
