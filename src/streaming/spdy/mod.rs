//! A session over SPDY/3.1, as kubelet's streaming server serves it
//! (`k8s.io/apimachinery/pkg/util/httpstream/spdy` over `moby/spdystream`,
//! `cri-streaming/pkg/streaming/{remotecommand,portforward}/httpstream.go`),
//! which is what `kubectl` reaches through the API server and kubelet's
//! proxy, and what crictl speaks.
//!
//! - **Upgrade**: HTTP/1.1 `Connection: Upgrade`, `Upgrade: SPDY/3.1` and
//!   `X-Stream-Protocol-Version` (one value or more, in the client's order
//!   of preference); the first the server supports is answered in a `101`
//!   ([`negotiate`]).
//! - **Streams** are opened by the client (SYN_STREAM), each named by its
//!   `streamtype` header, and answered with a SYN_REPLY (`:status 200`).
//!   Exec and attach: `error`, `stdin`, `stdout`, `stderr`, `resize` (v3 and
//!   later, with a TTY), exactly those the CRI request asked for; the
//!   session starts once they are all there (kubelet's `waitForStreams`,
//!   30 s). Port-forward: for each forwarded connection an `error` and a
//!   `data` stream with the same `requestid` and a `port` header; the pair
//!   becomes one connection to the pod's port (30 s to complete a pair).
//! - **Flow control**: the client's data is answered with WINDOW_UPDATEs
//!   (the session's, SPDY/3.1, at once; its stream's once it is queued for
//!   the session), so a client that keeps to its windows (npm
//!   `spdy-transport`) can send on. The server sends without waiting for the client's windows,
//!   as kubelet's spdystream does (it implements none, and sends no
//!   WINDOW_UPDATE of its own as a client); TCP is the brake.
//!
//! One task reads frames and routes them (this module's [`run`]), one
//! writes ([`write_frames`]), the session runs as a third; the reader never
//! waits on the writer for the session's output, so a guest blocked on
//! stdout cannot stop its stdin or the reverse.

mod frame;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::task::AbortOnDropHandle;

use super::Pending;
use super::channel::Purpose;
use super::session::{
    self, ERROR, Incoming, MAX_MESSAGE_DATA, Out, Ports, QUEUE, RESIZE, STDERR, STDIN, STDOUT, ToClient,
};
use crate::pods::Pods;
use frame::{Frame, FrameReader, FrameWriter, status};

/// The request header naming the protocols a client speaks, and the
/// response header naming the one chosen.
pub const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// The response header listing what the server accepts, when nothing offered is.
pub const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";

/// How long a client has to open the streams of a session, or both of a
/// port-forward pair (kubelet's `DefaultStreamCreationTimeout`).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the end of a connection waits for the client to close it.
const LINGER: Duration = Duration::from_secs(5);
/// What a port-forward data stream may carry before its pair is complete:
/// the first window of a client that keeps to windows.
const PAIR_BUFFER: usize = 64 * 1024;
/// Streams one connection may hold open; more are refused (REFUSED_STREAM).
const MAX_OPEN_STREAMS: usize = 2048;

/// What a negotiated protocol means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Exec and attach. `json_status`: the exit status as a JSON `Status`
    /// (v4); before, a failure's text. `resize`: a TTY comes with a
    /// `resize` stream (v3 and later).
    RemoteCommand {
        json_status: bool,
        resize: bool,
    },
    PortForward,
}

/// A protocol chosen by [`negotiate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocol {
    /// As `X-Stream-Protocol-Version` names it.
    pub name: &'static str,
    pub kind: Kind,
}

const fn remote_command(name: &'static str, json_status: bool, resize: bool) -> Protocol {
    Protocol { name, kind: Kind::RemoteCommand { json_status, resize } }
}

/// Exec and attach: kubelet's `SupportedStreamingProtocols`, in its order.
const REMOTE_COMMAND: &[Protocol] = &[
    remote_command("v4.channel.k8s.io", true, true),
    remote_command("v3.channel.k8s.io", false, true),
    remote_command("v2.channel.k8s.io", false, false),
    remote_command("channel.k8s.io", false, false),
];
/// Port-forward: kubelet's one protocol.
const PORT_FORWARD: &[Protocol] = &[Protocol { name: "portforward.k8s.io", kind: Kind::PortForward }];

/// Why an upgrade is refused: the HTTP answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    /// For [`ACCEPTED_HEADER`].
    pub accepted: Vec<&'static str>,
}

/// The first of `offered` (the `X-Stream-Protocol-Version` values, each
/// possibly a comma-separated list) that `purpose` supports, as
/// apimachinery's `httpstream.Handshake` chooses. Errors: 400 when the
/// client offers none, 403 with what is accepted when nothing offered is.
pub fn negotiate<'a>(purpose: Purpose, offered: impl IntoIterator<Item = &'a str>) -> Result<Protocol, Refusal> {
    let supported = match purpose {
        Purpose::RemoteCommand => REMOTE_COMMAND,
        Purpose::PortForward => PORT_FORWARD,
    };
    let offered: Vec<&str> =
        offered.into_iter().flat_map(|value| value.split(',')).map(str::trim).filter(|p| !p.is_empty()).collect();
    let accepted: Vec<&'static str> = supported.iter().map(|p| p.name).collect();
    if offered.is_empty() {
        let message = "unable to upgrade: X-Stream-Protocol-Version is required".to_owned();
        return Err(Refusal { status: StatusCode::BAD_REQUEST, message, accepted });
    }
    offered.iter().find_map(|name| supported.iter().find(|p| p.name == *name).copied()).ok_or_else(|| {
        let message = format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {accepted:?}"
        );
        Refusal { status: StatusCode::FORBIDDEN, message, accepted }
    })
}

/// What the reader asks the writer to send, besides the session's output.
#[derive(Debug)]
enum Control {
    /// A SYN_REPLY (`:status 200`, `:version HTTP/1.1`: spdy-transport needs the first).
    Reply(u32),
    /// The session's `channel` is written on stream `stream_id` from now on.
    Map {
        channel: u32,
        stream_id: u32,
    },
    /// The client reset the stream: nothing more is written on it (section 2.4.2).
    Unmap(u32),
    Reset {
        stream_id: u32,
        status: u32,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// Echo of the client's PING.
    Ping(u32),
    /// Writes `data` on a stream no channel names, then ends it.
    Message {
        stream_id: u32,
        data: Vec<u8>,
    },
    /// The GOAWAY to end with, after the streams' ends.
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
}

/// Where a client's stream goes.
#[derive(Debug, Clone, Copy)]
struct Route {
    channel: u32,
    /// The client's bytes on it are the session's (stdin, a port-forward's data).
    reads: bool,
}

/// A port-forward pair being opened: its streams so far.
struct Pair {
    error: Option<u32>,
    /// The data stream and its port.
    data: Option<(u32, u16)>,
    /// What the client sent on the data stream so far (at most [`PAIR_BUFFER`]).
    buffered: Vec<u8>,
    /// The client ended its side of the data stream (its error stream's end,
    /// which client-go sends at once, changes nothing: the server only writes it).
    data_fin: bool,
    since: Instant,
}

/// Runs the session `pending` asked for over the SPDY connection `io`
/// (after the 101), until the session is done or the client goes.
pub(super) async fn run<S>(pods: Arc<Pods>, pending: Pending, protocol: Protocol, io: S)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let writer = match FrameWriter::new() {
        Ok(writer) => writer,
        Err(error) => return tracing::warn!(%error, "SPDY: no header compressor"),
    };
    let (read, write) = tokio::io::split(io);
    let (control, controlled) = mpsc::channel::<Control>(QUEUE);
    let (queue, queued) = mpsc::channel::<Out>(QUEUE);
    let writer =
        AbortOnDropHandle::new(tokio::spawn(write_frames(FramedWrite::new(write, writer), controlled, queued)));
    let (incoming, from_client) = mpsc::channel::<Incoming>(QUEUE);
    let json_status = matches!(protocol.kind, Kind::RemoteCommand { json_status: true, .. });
    let mut frames = FramedRead::new(read, FrameReader::default());
    let mut connection = Connection::new(protocol.kind, control, incoming);
    let start = Start { pods, pending, to_client: ToClient::new(queue, json_status), from_client };
    let ending = connection.serve(&mut frames, start).await;
    let last_good_stream_id = connection.last_stream_id;
    let _ = connection.control.send(Control::GoAway { last_good_stream_id, status: ending }).await;
    // The client is gone, or the session done: a session still running sees its client go, and ends.
    let Connection { control, incoming, session, .. } = connection;
    drop(incoming);
    if let Some(session) = session {
        let _ = session.await;
    }
    drop(control);
    let mut write = match writer.await {
        Ok(Ok(write)) => write,
        Ok(Err(error)) => return tracing::debug!(%error, "SPDY: writing to the client failed"),
        Err(_) => return,
    };
    // As spdystream's Close: after the GOAWAY the client closes the
    // connection once it has read what it waited for. Until then (at most
    // LINGER) its last frames (resets, its GOAWAY) are read, not left in the
    // socket: closing a socket with unread bytes resets the connection, which
    // can cost the client what it has not read yet (the output's end, the
    // exit status).
    let _ = tokio::time::timeout(LINGER, async { while let Some(Ok(_)) = frames.next().await {} }).await;
    let _ = write.shutdown().await;
}

/// What starts the session: [`session::exec`], [`session::attach`] or [`session::port_forward`].
struct Start {
    pods: Arc<Pods>,
    pending: Pending,
    to_client: ToClient,
    from_client: session::FromClient,
}

impl Start {
    fn spawn(self) -> AbortOnDropHandle<()> {
        let Start { pods, pending, to_client, from_client } = self;
        AbortOnDropHandle::new(tokio::spawn(async move {
            match pending {
                Pending::Exec(request) => session::exec(&pods, request, to_client, from_client).await,
                Pending::Attach(request) => session::attach(&pods, request, to_client, from_client).await,
                Pending::PortForward(request) => {
                    session::port_forward(&pods, &request.pod_sandbox_id, Ports::Opened, to_client, from_client).await
                }
            }
        }))
    }
}

/// The reader's side of a connection: where the client's streams go.
struct Connection {
    kind: Kind,
    control: mpsc::Sender<Control>,
    incoming: mpsc::Sender<Incoming>,
    routes: HashMap<u32, Route>,
    last_stream_id: u32,
    /// The client sent GOAWAY: it opens no more streams.
    going_away: bool,
    /// Exec and attach: the channels whose streams the session waits for.
    expected: Vec<u32>,
    /// Port-forward: pairs by request id, and the streams of those not complete.
    pairs: HashMap<String, Pair>,
    pending: HashMap<u32, String>,
    /// Port-forward: the next pair's data channel.
    next_channel: u32,
    session: Option<AbortOnDropHandle<()>>,
}

/// Why the reader stopped: the GOAWAY status to end the connection with.
struct Stop(u32);

impl Connection {
    /// A connection with no streams yet, its session not started.
    fn new(kind: Kind, control: mpsc::Sender<Control>, incoming: mpsc::Sender<Incoming>) -> Self {
        Self {
            kind,
            control,
            incoming,
            routes: HashMap::new(),
            last_stream_id: 0,
            going_away: false,
            expected: Vec::new(),
            pairs: HashMap::new(),
            pending: HashMap::new(),
            next_channel: 0,
            session: None,
        }
    }

    /// Reads and routes `frames` until the session is done or the client
    /// goes; the GOAWAY status to end with.
    async fn serve<R: AsyncRead + Unpin>(&mut self, frames: &mut FramedRead<R, FrameReader>, start: Start) -> u32 {
        let mut start = Some(start);
        let deadline = Instant::now() + STREAM_CREATION_TIMEOUT;
        match self.kind {
            Kind::RemoteCommand { resize, .. } => {
                self.expected = match &start.as_ref().map(|s| &s.pending) {
                    Some(Pending::Exec(r)) => expected_channels(r.stdin, r.stdout, r.stderr, r.tty && resize),
                    Some(Pending::Attach(r)) => expected_channels(r.stdin, r.stdout, r.stderr, r.tty && resize),
                    _ => Vec::new(),
                };
            }
            Kind::PortForward => self.session = start.take().map(Start::spawn),
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let started = self.session.is_some();
            let session = &mut self.session;
            let session_done = async {
                match session {
                    Some(session) => session.await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = frames.next() => {
                    let result = match frame {
                        Some(Ok(frame)) => self.handle(frame, &mut start).await,
                        Some(Err(error)) => {
                            tracing::debug!(%error, "SPDY: a bad frame; ending the connection");
                            Err(Stop(status::PROTOCOL_ERROR))
                        }
                        None => Err(Stop(status::OK)),
                    };
                    if let Err(Stop(status)) = result {
                        return status;
                    }
                }
                _ = session_done, if started => {
                    // Done: not to be waited for again.
                    self.session = None;
                    return status::OK;
                }
                () = tokio::time::sleep_until(deadline), if !started => {
                    let missing: Vec<&str> = self.expected.iter().map(|&channel| stream_type_name(channel)).collect();
                    tracing::debug!(?missing, "SPDY: timed out waiting for client to create streams");
                    return status::OK;
                }
                _ = tick.tick(), if !self.pairs.is_empty() => {
                    if self.expire_pairs().await.is_err() {
                        return status::INTERNAL_ERROR;
                    }
                }
            }
        }
    }

    async fn send(&self, control: Control) -> Result<(), Stop> {
        self.control.send(control).await.map_err(|_| Stop(status::INTERNAL_ERROR))
    }

    /// Acts on one frame of the client's.
    async fn handle(&mut self, frame: Frame, start: &mut Option<Start>) -> Result<(), Stop> {
        match frame {
            Frame::SynStream { stream_id, headers, fin, .. } => {
                if stream_id == 0 || stream_id % 2 == 0 || stream_id <= self.last_stream_id {
                    // A server's id, or not increasing: a session error (section 2.3.2).
                    tracing::debug!(stream_id, last = self.last_stream_id, "SPDY: a SYN_STREAM out of order");
                    return Err(Stop(status::PROTOCOL_ERROR));
                }
                self.last_stream_id = stream_id;
                if self.going_away || self.routes.len() + self.pending.len() >= MAX_OPEN_STREAMS {
                    return self.send(Control::Reset { stream_id, status: status::REFUSED_STREAM }).await;
                }
                let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
                match self.kind {
                    Kind::RemoteCommand { .. } if start.is_some() => {
                        self.remote_command_stream(stream_id, header("streamtype"), fin, start).await
                    }
                    // Exec and attach under way: nothing more is expected.
                    Kind::RemoteCommand { .. } => {
                        self.send(Control::Reset { stream_id, status: status::REFUSED_STREAM }).await
                    }
                    Kind::PortForward => {
                        let (kind, port, request_id) = (header("streamtype"), header("port"), header("requestid"));
                        self.port_forward_stream(stream_id, kind, port, request_id, fin).await
                    }
                }
            }
            Frame::Data { stream_id, fin, data } => self.data(stream_id, data, fin).await,
            // A HEADERS frame's FIN half-closes its stream as a DATA frame's does (section 2.6.7).
            Frame::Headers { stream_id, fin: true, .. } => self.data(stream_id, Bytes::new(), true).await,
            Frame::RstStream { stream_id, .. } => self.reset(stream_id).await,
            // Odd: the client's; echoed. Even ids would be answers to the server's, which sends none.
            Frame::Ping { id } if id % 2 == 1 => self.send(Control::Ping(id)).await,
            Frame::GoAway { .. } => {
                self.going_away = true;
                Ok(())
            }
            // SETTINGS (windows the server does not wait for), WINDOW_UPDATE,
            // HEADERS (inflated, so the zlib stream stays in step), SYN_REPLY
            // (the server opens no streams), even PINGs and unknown types: nothing to do.
            _ => Ok(()),
        }
    }

    /// The client's bytes on a stream, and its FIN: given to the session
    /// (in messages of at most [`MAX_MESSAGE_DATA`]) when the stream is
    /// one it reads, kept while a port-forward pair is incomplete, dropped
    /// otherwise. The stream's window is granted again once the bytes are
    /// queued for the session; the session's (SPDY/3.1) for every byte.
    async fn data(&mut self, stream_id: u32, data: Bytes, fin: bool) -> Result<(), Stop> {
        let delta = data.len() as u32;
        if delta > 0 {
            self.send(Control::WindowUpdate { stream_id: 0, delta }).await?;
        }
        if let Some(route) = self.routes.get(&stream_id).copied() {
            if route.reads && delta > 0 {
                for chunk in data.chunks(MAX_MESSAGE_DATA) {
                    self.deliver(Incoming::Data(route.channel, chunk.to_vec())).await?;
                }
                self.send(Control::WindowUpdate { stream_id, delta }).await?;
            }
            if fin {
                self.routes.remove(&stream_id);
                self.deliver(Incoming::Close(route.channel)).await?;
            }
            return Ok(());
        }
        // A port-forward stream whose pair is not complete yet.
        let Some(request_id) = self.pending.get(&stream_id) else { return Ok(()) };
        let Some(pair) = self.pairs.get_mut(request_id) else { return Ok(()) };
        if pair.data.is_some_and(|(id, _)| id == stream_id) {
            if pair.buffered.len() + data.len() > PAIR_BUFFER {
                // More than the first window before the pair exists: not a client that keeps to windows.
                tracing::debug!(stream_id, "SPDY port-forward: too much data before its error stream; reset");
                pair.data = None;
                self.pending.remove(&stream_id);
                return self.send(Control::Reset { stream_id, status: status::FLOW_CONTROL_ERROR }).await;
            }
            pair.buffered.extend_from_slice(&data);
            pair.data_fin |= fin;
        }
        Ok(())
    }

    /// The client reset a stream: the session's channel is over, and nothing more is written on it.
    async fn reset(&mut self, stream_id: u32) -> Result<(), Stop> {
        if let Some(request_id) = self.pending.remove(&stream_id) {
            if let Some(pair) = self.pairs.get_mut(&request_id) {
                if pair.error == Some(stream_id) {
                    pair.error = None;
                }
                if pair.data.is_some_and(|(id, _)| id == stream_id) {
                    pair.data = None;
                }
                if pair.error.is_none() && pair.data.is_none() {
                    self.pairs.remove(&request_id);
                }
            }
            return Ok(());
        }
        self.send(Control::Unmap(stream_id)).await?;
        match self.routes.remove(&stream_id) {
            Some(route) => self.deliver(Incoming::Reset(route.channel)).await,
            None => Ok(()),
        }
    }

    /// Gives the session what the client sent. Before it starts (exec and
    /// attach waiting for their streams) the queue is not drained: a client
    /// that fills it before opening its streams is cut off.
    async fn deliver(&self, incoming: Incoming) -> Result<(), Stop> {
        if self.session.is_some() {
            // A session gone (done) is no error: the loop sees it end.
            let _ = self.incoming.send(incoming).await;
            Ok(())
        } else {
            self.incoming.try_send(incoming).map_err(|_| Stop(status::PROTOCOL_ERROR))
        }
    }

    /// An exec or attach stream: answered, and the session started once all expected are there.
    async fn remote_command_stream(
        &mut self,
        stream_id: u32,
        stream_type: Option<&str>,
        fin: bool,
        start: &mut Option<Start>,
    ) -> Result<(), Stop> {
        let channel = [ERROR, STDIN, STDOUT, STDERR, RESIZE]
            .into_iter()
            .find(|&channel| Some(stream_type_name(channel)) == stream_type);
        let Some(channel) = channel.filter(|channel| self.expected.contains(channel)) else {
            // As kubelet: answered, and nothing more (an unexpected type, or one not asked for).
            tracing::debug!(stream_id, ?stream_type, "SPDY: unexpected stream type");
            return self.send(Control::Reply(stream_id)).await;
        };
        self.send(Control::Reply(stream_id)).await?;
        self.send(Control::Map { channel, stream_id }).await?;
        self.routes.insert(stream_id, Route { channel, reads: channel == STDIN || channel == RESIZE });
        if fin {
            self.routes.remove(&stream_id);
            self.deliver(Incoming::Close(channel)).await?;
        }
        // Each type once: a second of one type is answered and ignored, as an unexpected one.
        self.expected.retain(|&expected| expected != channel);
        if self.expected.is_empty() {
            self.session = start.take().map(Start::spawn);
        }
        Ok(())
    }

    /// A port-forward stream: answered and paired by request id; a full
    /// pair is a connection for the session. As kubelet's
    /// `httpStreamReceived`: a stream without a valid port or type is reset.
    async fn port_forward_stream(
        &mut self,
        stream_id: u32,
        stream_type: Option<&str>,
        port: Option<&str>,
        request_id: Option<&str>,
        fin: bool,
    ) -> Result<(), Stop> {
        let port = port.and_then(|port| port.parse::<u16>().ok()).filter(|&port| port > 0);
        let (is_data, Some(port)) = (stream_type == Some("data"), port) else {
            tracing::debug!(stream_id, ?stream_type, "SPDY port-forward: a stream without a valid port; reset");
            return self.send(Control::Reset { stream_id, status: status::REFUSED_STREAM }).await;
        };
        if !is_data && stream_type != Some("error") {
            tracing::debug!(stream_id, ?stream_type, "SPDY port-forward: an unknown stream type; reset");
            return self.send(Control::Reset { stream_id, status: status::REFUSED_STREAM }).await;
        }
        // Clients before request ids: the error stream's id names the pair, the data stream's is 2 more.
        let request_id = match request_id {
            Some(id) => id.to_owned(),
            None if is_data => stream_id.saturating_sub(2).to_string(),
            None => stream_id.to_string(),
        };
        let pair = self.pairs.entry(request_id.clone()).or_insert_with(|| Pair {
            error: None,
            data: None,
            buffered: Vec::new(),
            data_fin: false,
            since: Instant::now(),
        });
        let taken = if is_data { pair.data.is_some() } else { pair.error.is_some() };
        if taken {
            return self.send(Control::Reset { stream_id, status: status::STREAM_IN_USE }).await;
        }
        if is_data {
            pair.data = Some((stream_id, port));
            pair.data_fin = fin;
        } else {
            pair.error = Some(stream_id);
        }
        let complete = matches!((pair.error, pair.data), (Some(_), Some(_)));
        self.send(Control::Reply(stream_id)).await?;
        if !complete {
            self.pending.insert(stream_id, request_id);
            return Ok(());
        }
        let Some(pair) = self.pairs.remove(&request_id) else { return Ok(()) };
        let (Some(error), Some((data, port))) = (pair.error, pair.data) else { return Ok(()) };
        self.pending.remove(&error);
        self.pending.remove(&data);
        let channel = self.next_channel;
        self.next_channel = self.next_channel.wrapping_add(2);
        self.send(Control::Map { channel, stream_id: data }).await?;
        self.send(Control::Map { channel: channel + 1, stream_id: error }).await?;
        // The error stream is only written: the client's bytes on it go nowhere.
        self.routes.insert(data, Route { channel, reads: true });
        self.deliver(Incoming::Forward { channel, port }).await?;
        if !pair.buffered.is_empty() {
            let delta = pair.buffered.len() as u32;
            for chunk in pair.buffered.chunks(MAX_MESSAGE_DATA) {
                self.deliver(Incoming::Data(channel, chunk.to_vec())).await?;
            }
            self.send(Control::WindowUpdate { stream_id: data, delta }).await?;
        }
        if pair.data_fin {
            self.routes.remove(&data);
            self.deliver(Incoming::Close(channel)).await?;
        }
        Ok(())
    }

    /// Pairs not completed in time: the error stream says so (kubelet's
    /// words, without its connection's name), both end.
    async fn expire_pairs(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        let expired: Vec<String> = self
            .pairs
            .iter()
            .filter(|(_, pair)| now.duration_since(pair.since) >= STREAM_CREATION_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for request_id in expired {
            let Some(pair) = self.pairs.remove(&request_id) else { continue };
            if let Some(stream_id) = pair.error {
                self.pending.remove(&stream_id);
                let data = format!("(request={request_id}) timed out waiting for streams").into_bytes();
                self.send(Control::Message { stream_id, data }).await?;
            }
            if let Some((stream_id, _)) = pair.data {
                self.pending.remove(&stream_id);
                self.send(Control::Message { stream_id, data: Vec::new() }).await?;
            }
        }
        Ok(())
    }
}

/// The `streamtype` of an exec or attach channel.
fn stream_type_name(channel: u32) -> &'static str {
    match channel {
        ERROR => "error",
        STDIN => "stdin",
        STDOUT => "stdout",
        STDERR => "stderr",
        _ => "resize",
    }
}

/// The channels exec or attach waits for: error, and those the request asked for.
fn expected_channels(stdin: bool, stdout: bool, stderr: bool, resize: bool) -> Vec<u32> {
    [(true, ERROR), (stdin, STDIN), (stdout, STDOUT), (stderr, STDERR), (resize, RESIZE)]
        .into_iter()
        .filter_map(|(wanted, channel)| wanted.then_some(channel))
        .collect()
}

/// Writes frames: the reader's [`Control`]s first, then the session's
/// output on the streams its channels are mapped to. Once the reader is
/// done it writes what the session queued, ends every mapped stream (FIN)
/// and sends the GOAWAY; returns the connection's writing half, flushed.
async fn write_frames<W>(
    mut sink: FramedWrite<W, FrameWriter>,
    mut controlled: mpsc::Receiver<Control>,
    mut queued: mpsc::Receiver<Out>,
) -> io::Result<W>
where
    W: AsyncWrite + Unpin,
{
    let mut streams: HashMap<u32, u32> = HashMap::new();
    let mut go_away = Frame::GoAway { last_good_stream_id: 0, status: status::OK };
    let mut queue_open = true;
    loop {
        let frame = tokio::select! {
            biased;
            control = controlled.recv() => match control {
                Some(Control::Reply(stream_id)) => {
                    let headers = vec![(":status".into(), "200".into()), (":version".into(), "HTTP/1.1".into())];
                    Frame::SynReply { stream_id, fin: false, headers }
                }
                Some(Control::Map { channel, stream_id }) => {
                    streams.insert(channel, stream_id);
                    continue;
                }
                Some(Control::Unmap(stream_id)) => {
                    streams.retain(|_, mapped| *mapped != stream_id);
                    continue;
                }
                Some(Control::Reset { stream_id, status }) => Frame::RstStream { stream_id, status },
                Some(Control::WindowUpdate { stream_id, delta }) => Frame::WindowUpdate { stream_id, delta },
                Some(Control::Ping(id)) => Frame::Ping { id },
                Some(Control::Message { stream_id, data }) => {
                    if !data.is_empty() {
                        sink.feed(Frame::Data { stream_id, fin: false, data: Bytes::from(data) }).await?;
                    }
                    Frame::Data { stream_id, fin: true, data: Bytes::new() }
                }
                Some(Control::GoAway { last_good_stream_id, status }) => {
                    go_away = Frame::GoAway { last_good_stream_id, status };
                    continue;
                }
                None => break,
            },
            out = queued.recv(), if queue_open => match out {
                Some(out) => match out_frame(&mut streams, out) {
                    Some(frame) => frame,
                    None => continue,
                },
                None => {
                    queue_open = false;
                    continue;
                }
            },
        };
        sink.send(frame).await?;
    }
    while let Ok(out) = queued.try_recv() {
        if let Some(frame) = out_frame(&mut streams, out) {
            sink.feed(frame).await?;
        }
    }
    let mut open: Vec<u32> = streams.into_values().collect();
    open.sort_unstable();
    for stream_id in open {
        sink.feed(Frame::Data { stream_id, fin: true, data: Bytes::new() }).await?;
    }
    sink.feed(go_away).await?;
    sink.flush().await?;
    Ok(sink.into_inner())
}

/// The frame of a session's output; `None` for a channel no stream carries.
fn out_frame(streams: &mut HashMap<u32, u32>, out: Out) -> Option<Frame> {
    match out {
        Out::Data(channel, data) => {
            streams.get(&channel).map(|&stream_id| Frame::Data { stream_id, fin: false, data: Bytes::from(data) })
        }
        Out::End(channel) => {
            streams.remove(&channel).map(|stream_id| Frame::Data { stream_id, fin: true, data: Bytes::new() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_offered_protocol_supported_is_chosen() {
        let chosen = |purpose, offered: &[&str]| negotiate(purpose, offered.iter().copied()).map(|p| p.name);
        // client-go's exec offer: v5 is websocket-only, so v4.
        let offer =
            ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
        assert_eq!(chosen(Purpose::RemoteCommand, &offer), Ok("v4.channel.k8s.io"));
        assert_eq!(chosen(Purpose::RemoteCommand, &["v2.channel.k8s.io, channel.k8s.io"]), Ok("v2.channel.k8s.io"));
        assert_eq!(chosen(Purpose::PortForward, &["portforward.k8s.io"]), Ok("portforward.k8s.io"));
        let missing = negotiate(Purpose::RemoteCommand, []).unwrap_err();
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        let refused = negotiate(Purpose::PortForward, ["v4.channel.k8s.io"]).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(refused.accepted, vec!["portforward.k8s.io"]);
        assert!(refused.message.contains("unable to negotiate protocol"), "{}", refused.message);
        let v3 = negotiate(Purpose::RemoteCommand, ["v3.channel.k8s.io"]).unwrap();
        assert_eq!(v3.kind, Kind::RemoteCommand { json_status: false, resize: true });
    }

    fn syn_stream(stream_id: u32, pairs: &[(&str, &str)], fin: bool) -> Frame {
        let headers = pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        Frame::SynStream { stream_id, associated_to: 0, priority: 0, fin, unidirectional: false, headers }
    }

    fn data(stream_id: u32, data: &'static [u8], fin: bool) -> Frame {
        Frame::Data { stream_id, fin, data: Bytes::from_static(data) }
    }

    /// client-go's port-forwarder, connection after connection: an error
    /// stream half-closed at once, a data stream, bytes, and the data
    /// stream's FIN when the local connection ends. Nothing stays behind.
    #[tokio::test]
    async fn port_forward_pairs_leave_no_streams_behind() {
        let (control, mut controlled) = mpsc::channel(64);
        let (incoming, mut from_client) = mpsc::channel(64);
        let mut connection = Connection::new(Kind::PortForward, control, incoming);
        connection.session = Some(AbortOnDropHandle::new(tokio::spawn(std::future::pending())));
        let mut start = None;
        let connections = 3 * MAX_OPEN_STREAMS as u32;
        for request in 0..connections {
            let (error, data_id) = (4 * request + 1, 4 * request + 3);
            let id = request.to_string();
            let headers = |kind| [("streamtype", kind), ("port", "8080"), ("requestid", id.as_str())];
            let frames = [
                syn_stream(error, &headers("error"), false),
                data(error, b"", true),
                syn_stream(data_id, &headers("data"), false),
                data(data_id, b"hi\n", false),
                data(data_id, b"", true),
            ];
            for frame in frames {
                assert!(connection.handle(frame, &mut start).await.is_ok(), "request {request}");
                while controlled.try_recv().is_ok() {}
            }
            let mut seen = Vec::new();
            while let Ok(message) = from_client.try_recv() {
                seen.push(message);
            }
            let channel = 2 * request;
            let want = [
                Incoming::Forward { channel, port: 8080 },
                Incoming::Data(channel, b"hi\n".to_vec()),
                Incoming::Close(channel),
            ];
            assert_eq!(seen, want, "request {request}");
        }
        assert!(connection.routes.is_empty() && connection.pending.is_empty() && connection.pairs.is_empty());
        // Bytes before the pair is complete wait for it; so does the data stream's FIN.
        let headers = |kind| [("streamtype", kind), ("port", "8080"), ("requestid", "late")];
        let first = 4 * connections + 1;
        for frame in [
            syn_stream(first, &headers("data"), false),
            data(first, b"early", true),
            syn_stream(first + 2, &headers("error"), false),
        ] {
            assert!(connection.handle(frame, &mut start).await.is_ok());
        }
        let mut seen = Vec::new();
        while let Ok(message) = from_client.try_recv() {
            seen.push(message);
        }
        let channel = 2 * connections;
        let want = [
            Incoming::Forward { channel, port: 8080 },
            Incoming::Data(channel, b"early".to_vec()),
            Incoming::Close(channel),
        ];
        assert_eq!(seen, want);
        // A stream id that does not increase ends the connection.
        let stop = connection.handle(syn_stream(3, &headers("error"), false), &mut start).await;
        assert!(matches!(stop, Err(Stop(status::PROTOCOL_ERROR))));
    }

    #[test]
    fn exec_waits_for_the_streams_its_request_asked_for() {
        assert_eq!(expected_channels(false, true, true, false), vec![ERROR, STDOUT, STDERR]);
        assert_eq!(expected_channels(true, true, false, true), vec![ERROR, STDIN, STDOUT, RESIZE]);
        assert_eq!(expected_channels(false, false, false, false), vec![ERROR]);
    }
}
