//! Serving every gRPC client on the unix socket, whatever HTTP/2 `:authority`
//! it sends.
//!
//! gRPC clients disagree on the authority of a unix-socket channel: grpc-go
//! (kubelet from 1.30) sends `localhost`; kubelet and crictl before 1.30 and
//! grpc-java send the socket path (`/run/wasmrun/wasmrun.sock`); grpc-core
//! (Python, C++, Ruby) sends the percent-encoded path
//! (`run%2Fwasmrun%2Fwasmrun.sock`). The `h2` crate under tonic parses
//! `:authority` as a URI authority (RFC 3986 §3.2) and resets every stream
//! whose value is not one (`PROTOCOL_ERROR`, "malformed authority"), where
//! containerd and CRI-O (Go servers) serve them all. h2 declined to relax the
//! check, so [`AuthorityFix`] sits between the socket and the HTTP/2 server
//! and replaces an authority h2 would refuse with [`REPLACEMENT`], before h2
//! parses it.
//!
//! How: it reads the client's byte stream (RFC 9113 §3.4 preface, then frames
//! of §4.1) and passes every frame through untouched, except header blocks
//! (HEADERS and its CONTINUATION frames, §6.2 and §6.10), which it decodes
//! with an HPACK decoder (RFC 7541; the `loona-hpack` crate) that keeps the
//! client's dynamic table. A gRPC client sends one authority for every call
//! of a channel, so the connection's first request decides: if h2 accepts
//! its authority, that block and everything after it pass through unread, and
//! the connection costs one decode. Otherwise that block and every later one
//! are re-encoded with each refused authority replaced, without the dynamic
//! table (the first one starts with a table size update to 0, §6.3), so that
//! the server's table, which no longer matches the client's, is never
//! referred to. What the server writes goes to the client untouched.
//!
//! The cost: loona-hpack builds its Huffman table for every Huffman-coded
//! string it decodes (about 57 µs each, measured on the development machine),
//! so a client that needs its authority replaced pays that for each literal
//! in each request; clients that send a valid authority pay it on their first
//! request only.
//!
//! A header block that cannot be decoded is passed on as it came, and the
//! rest of the connection too: the server then answers it as it would have
//! (a `COMPRESSION_ERROR`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The authority a refused one is replaced with: what grpc-go sends for a
/// unix socket.
pub const REPLACEMENT: &[u8] = b"localhost";

/// The connection preface every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A frame header: length (24 bits), type, flags, stream id (31 bits).
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may set (RFC 9113 §6.5.2):
/// re-encoded blocks are cut into frames no larger, so they fit whatever the
/// server set.
const MIN_MAX_FRAME_SIZE: usize = 16_384;
/// The largest header block (all its frames together) held to be decoded;
/// a larger one ends the connection with an error. The server under it
/// refuses far smaller header lists (hyper's default is 16 KiB).
pub const MAX_HEADER_BLOCK: usize = 1024 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Before the 24-byte preface.
    Preface,
    /// At a frame header.
    FrameHeader,
    /// Inside a frame that goes through as it came: this many bytes remain.
    PassThrough(usize),
    /// Everything goes through unread: the connection's first request had
    /// an authority the server accepts, or the stream is not HTTP/2 as
    /// expected, or a block could not be decoded (the server answers those).
    Blind,
}

/// A header block being gathered: its first frame's header and flags, the
/// frames as they came, and the HPACK fragment.
#[derive(Default)]
struct Block {
    /// The frames as they came (headers included), passed on if unchanged.
    raw: Vec<u8>,
    /// The header block fragment, padding and priority removed.
    fragment: Vec<u8>,
    stream_id: u32,
    /// END_STREAM of the HEADERS frame.
    end_stream: bool,
    /// The 5 priority bytes of a HEADERS frame with the PRIORITY flag.
    priority: Option<[u8; 5]>,
    /// Whether a HEADERS frame was seen and CONTINUATIONs are expected.
    open: bool,
}

/// A unix-socket connection whose client side has each refused `:authority`
/// replaced (see the module docs). Reads are rewritten; writes, flushes and
/// shutdown go to the socket as they are.
pub struct AuthorityFix<IO> {
    io: IO,
    /// Read from the socket, not yet looked at.
    input: BytesMut,
    /// Looked at, ready for the server.
    output: BytesMut,
    position: Position,
    block: Block,
    decoder: loona_hpack::Decoder<'static>,
    /// Set from the first rewritten block on: every later block is re-encoded.
    encoder: Option<loona_hpack::Encoder<'static>>,
    /// The socket said end of file.
    eof: bool,
}

impl<IO> AuthorityFix<IO> {
    /// Wraps a freshly accepted connection (nothing read from it yet).
    pub fn new(io: IO) -> Self {
        Self {
            io,
            input: BytesMut::new(),
            output: BytesMut::new(),
            position: Position::Preface,
            block: Block::default(),
            decoder: loona_hpack::Decoder::new(),
            encoder: None,
            eof: false,
        }
    }

    /// Moves what can be decided from `input` to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.position {
                Position::Blind => {
                    self.output.extend_from_slice(&self.input.split());
                    return Ok(());
                }
                Position::Preface => {
                    let seen = self.input.len().min(PREFACE.len());
                    if self.input[..seen] != PREFACE[..seen] {
                        self.position = Position::Blind;
                        continue;
                    }
                    if seen < PREFACE.len() {
                        return Ok(());
                    }
                    self.output.extend_from_slice(&self.input.split_to(PREFACE.len()));
                    self.position = Position::FrameHeader;
                }
                Position::PassThrough(0) => self.position = Position::FrameHeader,
                Position::PassThrough(remaining) => {
                    if self.input.is_empty() {
                        return Ok(());
                    }
                    let n = remaining.min(self.input.len());
                    self.output.extend_from_slice(&self.input.split_to(n));
                    self.position = Position::PassThrough(remaining - n);
                }
                Position::FrameHeader => {
                    if self.input.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let length =
                        usize::from(self.input[0]) << 16 | usize::from(self.input[1]) << 8 | usize::from(self.input[2]);
                    let kind = self.input[3];
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.block.open {
                            // RFC 9113 §6.10: only CONTINUATION may follow an
                            // unfinished block. Let the server say so.
                            self.pass_block_as_it_came();
                            continue;
                        }
                        self.output.extend_from_slice(&self.input.split_to(FRAME_HEADER));
                        self.position = Position::PassThrough(length);
                        continue;
                    }
                    if self.block.raw.len() + FRAME_HEADER + length > MAX_HEADER_BLOCK {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("a client's HTTP/2 header block is over {MAX_HEADER_BLOCK} bytes"),
                        ));
                    }
                    if self.input.len() < FRAME_HEADER + length {
                        return Ok(());
                    }
                    let frame = self.input.split_to(FRAME_HEADER + length);
                    self.take_header_frame(&frame);
                }
            }
        }
    }

    /// Adds one HEADERS or CONTINUATION frame (header and payload) to the
    /// block, and finishes the block at END_HEADERS.
    fn take_header_frame(&mut self, frame: &[u8]) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[FRAME_HEADER..];
        if kind == HEADERS {
            if self.block.open {
                // A new HEADERS inside a block is a protocol error: the server says so.
                self.block.raw.extend_from_slice(frame);
                self.pass_block_as_it_came();
                return;
            }
            if flags & PADDED != 0 {
                let Some((&pad, rest)) = payload.split_first() else {
                    return self.pass_frame_blind(frame);
                };
                let Some(unpadded) = rest.len().checked_sub(usize::from(pad)) else {
                    return self.pass_frame_blind(frame);
                };
                payload = &rest[..unpadded];
            }
            if flags & PRIORITY != 0 {
                let Some((priority, rest)) = payload.split_first_chunk::<5>() else {
                    return self.pass_frame_blind(frame);
                };
                self.block.priority = Some(*priority);
                payload = rest;
            }
            self.block.open = true;
            self.block.stream_id = stream_id;
            self.block.end_stream = flags & END_STREAM != 0;
        } else if !self.block.open || stream_id != self.block.stream_id {
            // A CONTINUATION out of place: the server answers it.
            return self.pass_frame_blind(frame);
        }
        self.block.raw.extend_from_slice(frame);
        self.block.fragment.extend_from_slice(payload);
        if flags & END_HEADERS != 0 {
            self.finish_block();
        }
    }

    /// Decodes a whole block and passes it on: as it came, or re-encoded.
    fn finish_block(&mut self) {
        let block = std::mem::take(&mut self.block);
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut refused_authority = false;
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            if &*name == b":authority" && !acceptable_authority(&value) {
                refused_authority = true;
                headers.push((name.into_owned(), REPLACEMENT.to_vec()));
            } else {
                headers.push((name.into_owned(), value.into_owned()));
            }
        });
        if let Err(error) = decoded {
            tracing::debug!(%error, "a client's HTTP/2 header block does not decode; the server answers it");
            self.output.extend_from_slice(&block.raw);
            self.position = Position::Blind;
            return;
        }
        if refused_authority && self.encoder.is_none() {
            tracing::debug!("a client sent an :authority the HTTP/2 server refuses; replacing it on this connection");
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + REPLACEMENT.len());
        let encoder = match &mut self.encoder {
            Some(encoder) => encoder,
            None if refused_authority => {
                let mut encoder = loona_hpack::Encoder::new();
                encoder.set_max_table_size(0);
                // A dynamic table size update to 0 (RFC 7541 §6.3): the
                // server drops what the client had it store.
                encoded.push(0x20);
                self.encoder.insert(encoder)
            }
            None => {
                // The first request's authority is accepted: so will the
                // channel's later ones be.
                self.output.extend_from_slice(&block.raw);
                self.position = Position::Blind;
                return;
            }
        };
        encoder
            .encode_into(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())), &mut encoded)
            .expect("writing to a Vec cannot fail");
        self.write_block(&block, &encoded);
        self.position = Position::FrameHeader;
    }

    /// Writes a re-encoded block as a HEADERS frame and as many CONTINUATION
    /// frames as the size needs.
    fn write_block(&mut self, block: &Block, encoded: &[u8]) {
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let first_room = MIN_MAX_FRAME_SIZE - priority.len();
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.frame_header(first.len() + priority.len(), HEADERS, flags, block.stream_id);
        self.output.extend_from_slice(priority);
        self.output.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(MIN_MAX_FRAME_SIZE));
            let flags = if after.is_empty() { END_HEADERS } else { 0 };
            self.frame_header(chunk.len(), CONTINUATION, flags, block.stream_id);
            self.output.extend_from_slice(chunk);
            rest = after;
        }
    }

    fn frame_header(&mut self, length: usize, kind: u8, flags: u8, stream_id: u32) {
        let length = u32::try_from(length).expect("frames are cut to 16 KiB");
        self.output.put_slice(&length.to_be_bytes()[1..]);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_u32(stream_id);
    }

    /// The frames of an unfinished block go on as they came; the server
    /// answers the protocol error they make.
    fn pass_block_as_it_came(&mut self) {
        let block = std::mem::take(&mut self.block);
        self.output.extend_from_slice(&block.raw);
        self.position = Position::Blind;
    }

    fn pass_frame_blind(&mut self, frame: &[u8]) {
        self.pass_block_as_it_came();
        self.output.extend_from_slice(frame);
    }
}

/// Whether h2 accepts `value` as `:authority`: it must parse as a URI
/// authority (`http::uri::Authority`, the check h2's server makes).
fn acceptable_authority(value: &[u8]) -> bool {
    tonic::codegen::http::uri::Authority::try_from(value).is_ok()
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.position == Position::Blind && this.output.is_empty() && this.input.is_empty() {
                // Nothing held back and nothing more to read: straight from the socket.
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What is left in `input` is an unfinished frame the server
                // would have seen cut off too.
                if !this.input.is_empty() || !this.block.raw.is_empty() {
                    let block = std::mem::take(&mut this.block);
                    this.output.extend_from_slice(&block.raw);
                    this.output.extend_from_slice(&this.input.split());
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            // Reads into the spare capacity, uninitialised, and grows `input`
            // by what was read: tokio-util does the `unsafe` part.
            this.input.reserve(READ_CHUNK);
            let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.input))?;
            if n == 0 {
                this.eof = true;
                continue;
            }
            this.process()?;
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for AuthorityFix<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream_id.to_be_bytes());
        out.extend(payload);
        out
    }

    fn request(authority: &str, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(encoder: &mut loona_hpack::Encoder, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    /// Runs `input` through an AuthorityFix and returns what the server reads.
    async fn through(input: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            // Dribble it in small pieces, as a socket may.
            for chunk in input.chunks(7) {
                client.write_all(chunk).await.unwrap();
            }
            client.shutdown().await.unwrap();
        });
        let mut out = Vec::new();
        AuthorityFix::new(server).read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        out
    }

    /// Splits what the server reads into (type, flags, stream id, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], id, rest[FRAME_HEADER..FRAME_HEADER + length].to_vec()));
            rest = &rest[FRAME_HEADER + length..];
        }
        out
    }

    /// The header lists the server decodes from the HEADERS frames it reads.
    fn server_headers(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut lists = Vec::new();
        let mut fragment = Vec::new();
        for (kind, flags, _, payload) in frames(bytes) {
            if kind == HEADERS || kind == CONTINUATION {
                let payload = if kind == HEADERS && flags & PRIORITY != 0 { &payload[5..] } else { &payload[..] };
                fragment.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    lists.push(decoder.decode(&fragment).unwrap());
                    fragment.clear();
                }
            }
        }
        lists
    }

    #[tokio::test]
    async fn an_acceptable_authority_passes_byte_for_byte() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &encode(&mut encoder, &request("localhost", "/a"))));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\x05hello")); // DATA
        input.extend(frame(HEADERS, END_HEADERS, 3, &encode(&mut encoder, &request("localhost", "/b"))));
        assert_eq!(through(input.clone()).await, input);
    }

    #[tokio::test]
    async fn a_socket_path_authority_is_replaced_and_the_dynamic_table_stays_consistent() {
        // The client's encoder indexes headers, so later blocks refer to
        // entries the first block stored.
        let mut encoder = loona_hpack::Encoder::new();
        let first = request("/run/wasmrun/wasmrun.sock", "/runtime.v1.RuntimeService/Version");
        let second = request("localhost", "/runtime.v1.RuntimeService/Version");
        let third = request("run%2Fwasmrun%2Fwasmrun.sock", "/runtime.v1.RuntimeService/Status");
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &encode(&mut encoder, &first)));
        // The second block in a HEADERS frame with padding and priority plus a CONTINUATION.
        let block = encode(&mut encoder, &second);
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8];
        payload.extend([0, 0, 0, 1, 15]);
        payload.extend(a);
        payload.extend([0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 3, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        input.extend(frame(0x0, END_STREAM, 3, b"\0\0\0\0\0"));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &encode(&mut encoder, &third)));

        let out = through(input).await;
        let lists = server_headers(&out);
        let with = |headers: &[(Vec<u8>, Vec<u8>)], authority: &str| {
            let mut headers = headers.to_vec();
            headers[3].1 = authority.as_bytes().to_vec();
            headers
        };
        assert_eq!(lists, vec![with(&first, "localhost"), second.clone(), with(&third, "localhost")]);
        let frames = frames(&out);
        // The rewritten HEADERS keeps its priority and stream, loses its padding.
        assert_eq!(frames[1].0, HEADERS);
        assert_eq!(frames[1].1, PRIORITY | END_HEADERS);
        assert_eq!(frames[1].2, 3);
        assert_eq!(&frames[1].3[..5], &[0, 0, 0, 1, 15]);
        // The DATA frame is untouched; the last block keeps END_STREAM.
        assert_eq!(frames[2], (0x0, END_STREAM, 3, b"\0\0\0\0\0".to_vec()));
        assert_eq!(frames[3].1, END_HEADERS | END_STREAM);
    }

    /// A gRPC channel sends one authority: once the first request's is
    /// accepted, the connection goes through unread.
    #[tokio::test]
    async fn after_an_accepted_first_request_the_connection_is_not_read() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &encode(&mut encoder, &request("localhost", "/a"))));
        input.extend(frame(HEADERS, END_HEADERS, 3, &encode(&mut encoder, &request("/a/path.sock", "/b"))));
        assert_eq!(through(input.clone()).await, input);
    }

    #[tokio::test]
    async fn a_large_rewritten_block_is_cut_into_continuations() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut headers = request("/a/socket.sock", "/x");
        headers.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let block = encode(&mut encoder, &headers);
        let mut input = PREFACE.to_vec();
        for (i, chunk) in block.chunks(MIN_MAX_FRAME_SIZE).enumerate() {
            let last = (i + 1) * MIN_MAX_FRAME_SIZE >= block.len();
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            input.extend(frame(kind, if last { END_HEADERS } else { 0 }, 1, chunk));
        }
        let out = through(input).await;
        assert!(frames(&out).iter().all(|f| f.3.len() <= MIN_MAX_FRAME_SIZE));
        assert_eq!(server_headers(&out)[0][3].1, b"localhost");
        assert_eq!(server_headers(&out)[0][6].1.len(), 40_000);
    }

    #[tokio::test]
    async fn what_is_not_http2_or_does_not_decode_goes_through_as_it_came() {
        let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through(garbage.clone()).await, garbage);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
        input.extend(frame(0x0, 0, 1, b"after"));
        assert_eq!(through(input.clone()).await, input);
        // A frame cut off by the end of the stream reaches the server as it was.
        let mut cut = PREFACE.to_vec();
        cut.extend(&frame(HEADERS, END_HEADERS, 1, b"abcdef")[..12]);
        assert_eq!(through(cut.clone()).await, cut);
    }

    #[test]
    fn the_authorities_clients_send_are_judged_as_h2_judges_them() {
        assert!(acceptable_authority(b"localhost"));
        assert!(acceptable_authority(b"127.0.0.1:5000"));
        assert!(!acceptable_authority(b"/run/wasmrun/wasmrun.sock"));
        assert!(!acceptable_authority(b"run%2Fwasmrun%2Fwasmrun.sock"));
        assert!(!acceptable_authority(b""));
    }
}
