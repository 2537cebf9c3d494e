//! What a streaming connection does, whatever carries it: an exec (its
//! stdin from the client, its stdout and stderr to it, its exit status on
//! the error channel), an attach to a running guest, or a port-forward (a
//! TCP connection per forwarded port, made inside the pod's network
//! namespace). The transports ([`super::websocket`], [`super::spdy`]) turn
//! their frames into [`Incoming`] and [`Out`] by channel number: exec and
//! attach use 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize (kubelet's
//! numbering, which SPDY names by `streamtype` instead); a port-forward's
//! connection uses an even data channel and the error channel after it.
//!
//! The transport writes what the session sends in the order sent (so the
//! exit status comes after the last output), independently of what it
//! reads; the client going away ends [`FromClient`], which ends the exec
//! (its [`Exec`](crate::pods::Exec) is dropped) and closes the forwarded
//! connections.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::channel::{self, Ending};
use crate::api;
use crate::pods::Pods;
use crate::wasm::{Output, Stdin};

/// Channels of exec and attach.
pub(super) const STDIN: u32 = 0;
pub(super) const STDOUT: u32 = 1;
pub(super) const STDERR: u32 = 2;
pub(super) const ERROR: u32 = 3;
pub(super) const RESIZE: u32 = 4;

/// The most bytes of output one message carries.
pub(super) const MAX_MESSAGE_DATA: usize = 32 * 1024;
/// Messages queued each way before the sender waits.
pub(super) const QUEUE: usize = 16;

/// What the session sends the client.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Out {
    /// Bytes on a channel.
    Data(u32, Vec<u8>),
    /// Nothing more comes on the channel (SPDY: a FIN; a websocket channel has no end of its own).
    End(u32),
}

/// What the client sent, decoded by its transport.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Incoming {
    /// Bytes for a channel.
    Data(u32, Vec<u8>),
    /// The client closed its side of the channel (websocket v5 half-close, SPDY FIN).
    Close(u32),
    /// The client gave up on the channel (SPDY RST_STREAM).
    Reset(u32),
    /// A port-forward connection the client opened (SPDY: a data and an
    /// error stream of one request id): `port` on `channel` (data) and
    /// `channel + 1` (error).
    Forward { channel: u32, port: u16 },
}

/// The client's messages; `None` once it is gone.
pub(super) type FromClient = mpsc::Receiver<Incoming>;

/// What the session sends the client through.
#[derive(Clone)]
pub(super) struct ToClient {
    queue: mpsc::Sender<Out>,
    /// The exit status as a JSON `Status` (v4 and later), else a failure's text.
    json_status: bool,
}

impl ToClient {
    /// A sender into `queue`, which the transport writes in order.
    pub(super) fn new(queue: mpsc::Sender<Out>, json_status: bool) -> Self {
        Self { queue, json_status }
    }

    /// Queues `data` for `channel`; false once the client is gone.
    pub(super) async fn send(&self, channel: u32, data: &[u8]) -> bool {
        self.queue.send(Out::Data(channel, data.to_vec())).await.is_ok()
    }

    /// Ends `channel`.
    async fn end(&self, channel: u32) {
        let _ = self.queue.send(Out::End(channel)).await;
    }

    /// Sends how the command ended on the error channel, in the protocol's words.
    async fn status(&self, ending: &Ending) {
        let status = channel::status(self.json_status, ending);
        if !status.is_empty() {
            self.send(ERROR, &status).await;
        }
    }

    /// A writer of `channel` for a guest's output.
    fn writer(&self, channel: u32, open: mpsc::Sender<()>) -> ChannelWriter {
        ChannelWriter { sender: PollSender::new(self.queue.clone()), channel, _open: open }
    }
}

/// An exec: as kubelet's `ServeExec`, with `pods.exec` as the runtime.
pub(super) async fn exec(pods: &Pods, request: api::ExecRequest, to_client: ToClient, mut from_client: FromClient) {
    let (stdin, mut stdin_pipe) = if request.stdin {
        let (reader, writer) = tokio::io::simplex(64 * 1024);
        (Stdin::new(reader), Some(writer))
    } else {
        (Stdin::default(), None)
    };
    // With a TTY, stderr and stdout are one stream (a terminal's), as the client reads them.
    let output = output(&to_client, request.stdout, request.stderr || (request.tty && request.stdout), request.tty);
    let command = format!("[{}]", request.cmd.join(" "));
    let exec = match pods.exec(&request.container_id, request.cmd, stdin, output).await {
        Ok(exec) => exec,
        Err(error) => return to_client.status(&Ending::Failed(error.to_string())).await,
    };
    let reading = async {
        while let Some(message) = from_client.recv().await {
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
                Incoming::Close(STDIN) | Incoming::Reset(STDIN) => {
                    if let Some(mut pipe) = stdin_pipe.take() {
                        let _ = pipe.shutdown().await;
                    }
                }
                // Resize: WASI has no terminal to resize; other channels are not the client's to write.
                _ => {}
            }
        }
    };
    tokio::select! {
        exit = exec.wait() => {
            let ending = if exit.code == 0 { Ending::Success } else { Ending::Exited { code: exit.code, command } };
            to_client.status(&ending).await;
        }
        // The client went away: dropping the exec ends its instance.
        () = reading => tracing::debug!(container = %request.container_id, "exec client went away"),
    }
}

/// The first channel a websocket client reads: an empty message on it says the streams are ready.
pub(super) fn first_channel(stdout: bool, stderr: bool) -> u32 {
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
pub(super) async fn attach(pods: &Pods, request: api::AttachRequest, to_client: ToClient, mut from_client: FromClient) {
    use tokio::sync::broadcast::error::RecvError;
    let attached = pods.container(&request.container_id).and_then(|container| Ok((container.attach()?, container)));
    let (crate::pods::Attached { mut output, stdin }, container) = match attached {
        Ok(attached) => attached,
        Err(error) => return to_client.status(&Ending::Failed(error.to_string())).await,
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
            message = from_client.recv() => match message {
                Some(Incoming::Data(STDIN, bytes)) => {
                    if let Some(pipe) = &stdin
                        && pipe.lock().await.write_all(&bytes).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Some(Incoming::Close(STDIN) | Incoming::Reset(STDIN)) => {
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
        to_client.status(&Ending::Success).await;
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
    let writer = |wanted: bool, channel: u32| -> Box<dyn AsyncWrite + Send + Sync + Unpin> {
        if wanted { Box::new(to_client.writer(channel, open.clone())) } else { Box::new(tokio::io::sink()) }
    };
    Output::new(writer(stdout, STDOUT), writer(stderr, if tty { STDOUT } else { STDERR }), done)
}

/// One channel of output, as a guest writes it.
struct ChannelWriter {
    sender: PollSender<Out>,
    channel: u32,
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
        let message = Out::Data(self.channel, data.to_vec());
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

/// Which connections a port-forward makes.
pub(super) enum Ports {
    /// These ports, one connection each on data channels 0, 2, 4…, all at
    /// the start; the session ends once they all have (kubelet's websocket
    /// port-forward).
    Fixed(Vec<u16>),
    /// The ones the client opens ([`Incoming::Forward`]), for as long as it
    /// stays (kubelet's SPDY port-forward: a stream pair per connection).
    Opened,
}

/// A port-forward: one TCP connection per forwarded connection to
/// `localhost:port` inside the pod's network namespace (the node's for a
/// hostNetwork pod), its bytes both ways on its data channel; why it could
/// not be made, or failed, on its error channel (kubelet's words); both
/// channels ended when it is over. The session ends when the client goes
/// (and with [`Ports::Fixed`], once every connection has ended).
pub(super) async fn port_forward(
    pods: &Pods,
    pod_id: &str,
    ports: Ports,
    to_client: ToClient,
    mut from_client: FromClient,
) {
    let target = pods.pod(pod_id).map(|sandbox| (sandbox.network.netns.clone(), sandbox.id.clone()));
    let mut forwards = Forwards {
        target: target.map_err(|error| error.to_string()),
        to_client,
        to_ports: HashMap::new(),
        aborts: HashMap::new(),
        tasks: tokio::task::JoinSet::new(),
    };
    let fixed = matches!(ports, Ports::Fixed(_));
    if let Ports::Fixed(ports) = ports {
        for (index, port) in ports.into_iter().enumerate() {
            forwards.open(index as u32 * 2, port);
        }
    }
    while !(fixed && forwards.tasks.is_empty()) {
        tokio::select! {
            Some(ended) = forwards.tasks.join_next() => {
                if let Ok(channel) = ended {
                    forwards.to_ports.remove(&channel);
                    forwards.aborts.remove(&channel);
                }
            }
            message = from_client.recv() => match message {
                Some(Incoming::Forward { channel, port }) => forwards.open(channel, port),
                Some(Incoming::Data(channel, bytes)) => {
                    if let Some(Some(to_port)) = forwards.to_ports.get(&channel) {
                        // A connection that ended takes no more.
                        let _ = to_port.send(bytes).await;
                    }
                }
                // The client is done sending: the pod's end reads its end of input.
                Some(Incoming::Close(channel)) => {
                    if let Some(to_port) = forwards.to_ports.get_mut(&channel) {
                        *to_port = None;
                    }
                }
                // The client gave up on the connection: it ends, and its error stream with it.
                Some(Incoming::Reset(channel)) => {
                    if let Some(abort) = forwards.aborts.remove(&channel) {
                        abort.abort();
                        forwards.to_ports.remove(&channel);
                        forwards.to_client.end(channel).await;
                        forwards.to_client.end(channel + 1).await;
                    }
                }
                // The client went away: the connections close with their tasks.
                None => return,
            },
        }
    }
}

/// A port-forward's connections under way.
struct Forwards {
    /// The pod's network namespace and id, or why there is none.
    target: std::result::Result<(Option<Arc<crate::network::NetNs>>, String), String>,
    to_client: ToClient,
    /// Each connection's bytes from the client, by data channel (`None`: the client closed its side).
    to_ports: HashMap<u32, Option<mpsc::Sender<Vec<u8>>>>,
    aborts: HashMap<u32, tokio::task::AbortHandle>,
    /// Each ends with its data channel.
    tasks: tokio::task::JoinSet<u32>,
}

impl Forwards {
    /// Starts the connection to `port` of data channel `channel`.
    fn open(&mut self, channel: u32, port: u16) {
        let to_client = self.to_client.clone();
        let (to_port, from_client) = mpsc::channel::<Vec<u8>>(QUEUE);
        self.to_ports.insert(channel, Some(to_port));
        let target = self.target.clone();
        let abort = self.tasks.spawn(async move {
            let failed = match target {
                Ok((netns, pod_id)) => forward(netns, port, channel, &to_client, from_client)
                    .await
                    .err()
                    .map(|error| format!("error forwarding port {port} to pod {pod_id}: {error}")),
                Err(error) => Some(error),
            };
            if let Some(message) = failed {
                to_client.send(channel + 1, message.as_bytes()).await;
            }
            to_client.end(channel).await;
            to_client.end(channel + 1).await;
            channel
        });
        self.aborts.insert(channel, abort);
    }
}

/// One port's connection: made inside `netns` (none: the node's), bytes
/// from the client written to it, its bytes sent on channel `data`.
async fn forward(
    netns: Option<Arc<crate::network::NetNs>>,
    port: u16,
    data: u32,
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
    // The pod's end closing ends the forward, as kubelet's copy does; the
    // client's end of input (its FIN) only closes the write side, and the
    // pod's answer still comes back.
    tokio::pin!(downstream);
    tokio::select! {
        ended = &mut downstream => ended,
        ended = upstream => match ended {
            Ok(()) => downstream.await,
            Err(error) => Err(error),
        },
    }
}
