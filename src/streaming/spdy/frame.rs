//! SPDY/3 frames, as the SPDY/3 draft (`spdy-protocol-draft3`) defines them
//! and as Kubernetes' SPDY clients send them (`moby/spdystream`, which
//! client-go and kubelet use, and npm `spdy-transport`). The upgrade says
//! `SPDY/3.1`; frames carry version 3 (3.1 only adds the session's flow
//! control window, stream 0 of WINDOW_UPDATE).
//!
//! - A control frame: `1 | version (15) | type (16)`, `flags (8) | length (24)`, data.
//! - A data frame: `0 | stream id (31)`, `flags (8) | length (24)`, data; flag 0x01 is FIN.
//! - A header block (SYN_STREAM, SYN_REPLY, HEADERS) is `count (32)`, then
//!   `name length (32) | name | value length (32) | value` pairs, names in
//!   lower case, several values of one name separated by NUL; it is
//!   zlib-compressed with the SPDY/3 dictionary (section 2.6.10.1), in one
//!   zlib stream per direction for the whole connection, each block ending
//!   with a sync flush. Every block must therefore go through the same
//!   inflater in order, even of frames nobody acts on (HEADERS).
//!
//! [`FrameReader`] and [`FrameWriter`] are a connection's two directions as
//! `tokio_util` codecs. Errors are `io::Error`s of kind `InvalidData` that
//! say which frame was wrong; after one the connection is over (its zlib
//! state cannot be trusted).

use std::io;
use std::sync::LazyLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio_util::codec::{Decoder, Encoder};

/// The version control frames carry.
pub const VERSION: u16 = 3;

/// The largest frame a peer may send: the 24-bit length's limit (data
/// frames up to 16 MiB − 1, as the spec allows).
pub const MAX_FRAME_LENGTH: usize = (1 << 24) - 1;
/// The most bytes one header block may inflate to; more is refused (a zlib bomb).
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The most name/value pairs of one header block.
const MAX_HEADERS: u32 = 1024;

/// Flags.
pub const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM and GOAWAY status codes (section 2.6.3, 2.6.6).
pub mod status {
    /// GOAWAY: a normal end.
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const REFUSED_STREAM: u32 = 3;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const STREAM_IN_USE: u32 = 8;
}

/// Name/value pairs of a header block, in order; names lower case.
pub type Headers = Vec<(String, String)>;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Type 1: a peer opens a stream.
    SynStream { stream_id: u32, associated_to: u32, priority: u8, fin: bool, unidirectional: bool, headers: Headers },
    /// Type 2: the answer to a SYN_STREAM.
    SynReply { stream_id: u32, fin: bool, headers: Headers },
    /// Type 3: a stream ends abnormally; `status` from [`status`].
    RstStream { stream_id: u32, status: u32 },
    /// Type 4: `(flags, id, value)` entries.
    Settings { entries: Vec<(u8, u32, u32)> },
    /// Type 6: echoed by the side that did not send it.
    Ping { id: u32 },
    /// Type 7: no new streams after `last_good_stream_id`.
    GoAway { last_good_stream_id: u32, status: u32 },
    /// Type 8: more headers of a stream.
    Headers { stream_id: u32, fin: bool, headers: Headers },
    /// Type 9: `delta` more bytes may be sent on the stream (0: the session, SPDY/3.1).
    WindowUpdate { stream_id: u32, delta: u32 },
    /// Bytes of a stream; `fin` ends the sender's side of it.
    Data { stream_id: u32, fin: bool, data: Bytes },
    /// A control frame of a type this codec does not know: the spec says to ignore it.
    Unknown { frame_type: u16 },
}

/// The zlib dictionary of SPDY/3 header blocks (section 2.6.10.1): these
/// words, each after its length (32 bits), then the rest as it is.
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
const DICTIONARY_TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden\
404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// The dictionary's bytes (1,423; Adler-32 0xe3c6a7c2).
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut dictionary = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        dictionary.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dictionary.extend_from_slice(word.as_bytes());
    }
    dictionary.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dictionary
});

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads frames: one direction of a connection, with its inflater.
pub struct FrameReader {
    inflate: Decompress,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self { inflate: Decompress::new(true) }
    }
}

impl FrameReader {
    /// Inflates one header block and parses its pairs.
    fn headers(&mut self, block: &[u8], frame: &str) -> io::Result<Headers> {
        let bytes = self.inflate_block(block).map_err(|e| invalid(format!("SPDY {frame} header block: {e}")))?;
        parse_headers(&bytes).map_err(|e| invalid(format!("SPDY {frame} header block: {e}")))
    }

    fn inflate_block(&mut self, mut input: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity((input.len() * 4).clamp(256, MAX_HEADER_BLOCK));
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(invalid(format!("inflates to more than {MAX_HEADER_BLOCK} bytes")));
                }
                out.reserve(out.len().min(MAX_HEADER_BLOCK - out.len()));
            }
            let (before, produced) = (self.inflate.total_in(), out.len());
            let result = self.inflate.decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - before) as usize;
            input = &input[consumed..];
            match result {
                // The connection's one zlib stream should never end: a peer
                // compressing blocks apart. This block inflated; nothing after
                // the end will.
                Ok(Status::StreamEnd) if input.is_empty() => return Ok(out),
                Ok(Status::StreamEnd) => return Err(invalid("the header compression stream ended")),
                // Input left that zlib neither takes nor turns into output: never would.
                Ok(_) if consumed == 0 && out.len() == produced && !input.is_empty() && out.len() < out.capacity() => {
                    return Err(invalid("header block bytes the inflater does not take"));
                }
                Ok(_) => {}
                Err(error) if error.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| invalid(format!("the SPDY dictionary: {e}")))?;
                    continue;
                }
                Err(error) => return Err(invalid(error.to_string())),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(invalid(format!("inflates to more than {MAX_HEADER_BLOCK} bytes")));
            }
            // Done once every byte is in and the inflater had room to spare.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Parses an inflated header block.
fn parse_headers(mut block: &[u8]) -> Result<Headers, String> {
    fn take<'a>(block: &mut &'a [u8], what: &str) -> Result<&'a [u8], String> {
        if block.len() < 4 {
            return Err(format!("ends inside the length of {what}"));
        }
        let length = block.get_u32() as usize;
        if block.len() < length {
            return Err(format!("{what} of {length} bytes with {} left", block.len()));
        }
        let (value, rest) = block.split_at(length);
        *block = rest;
        Ok(value)
    }
    if block.len() < 4 {
        return Err("no pair count".into());
    }
    let count = block.get_u32();
    if count > MAX_HEADERS {
        return Err(format!("{count} pairs (at most {MAX_HEADERS})"));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = take(&mut block, "a name")?;
        let value = take(&mut block, "a value")?;
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        headers.push((name, String::from_utf8_lossy(value).into_owned()));
    }
    Ok(headers)
}

impl Decoder for FrameReader {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        if src.len() < 8 {
            src.reserve(8 - src.len());
            return Ok(None);
        }
        let length = usize::from(src[5]) << 16 | usize::from(src[6]) << 8 | usize::from(src[7]);
        if src.len() < 8 + length {
            src.reserve(8 + length - src.len());
            return Ok(None);
        }
        let head = src.get_u32();
        let flags = src.get_u8();
        src.advance(3);
        let mut body = src.split_to(length).freeze();
        if head & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data { stream_id: head, fin: flags & FLAG_FIN != 0, data: body }));
        }
        let version = ((head >> 16) & 0x7fff) as u16;
        let frame_type = (head & 0xffff) as u16;
        if version != VERSION {
            return Err(invalid(format!("SPDY control frame of version {version} (this server speaks {VERSION})")));
        }
        let need = |size: usize, name: &str| {
            if length < size {
                Err(invalid(format!("SPDY {name} of {length} bytes (at least {size})")))
            } else {
                Ok(())
            }
        };
        let fin = flags & FLAG_FIN != 0;
        let frame = match frame_type {
            1 => {
                need(10, "SYN_STREAM")?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                let associated_to = body.get_u32() & 0x7fff_ffff;
                let priority = body.get_u8() >> 5;
                body.advance(1); // slot
                let headers = self.headers(&body, "SYN_STREAM")?;
                let unidirectional = flags & FLAG_UNIDIRECTIONAL != 0;
                Frame::SynStream { stream_id, associated_to, priority, fin, unidirectional, headers }
            }
            2 => {
                need(4, "SYN_REPLY")?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                Frame::SynReply { stream_id, fin, headers: self.headers(&body, "SYN_REPLY")? }
            }
            3 => {
                need(8, "RST_STREAM")?;
                Frame::RstStream { stream_id: body.get_u32() & 0x7fff_ffff, status: body.get_u32() }
            }
            4 => {
                need(4, "SETTINGS")?;
                let count = body.get_u32() as usize;
                if body.len() != count.saturating_mul(8) {
                    return Err(invalid(format!("SPDY SETTINGS of {count} entries in {} bytes", body.len())));
                }
                let entries = (0..count)
                    .map(|_| {
                        let id = body.get_u32();
                        ((id >> 24) as u8, id & 0x00ff_ffff, body.get_u32())
                    })
                    .collect();
                Frame::Settings { entries }
            }
            6 => {
                need(4, "PING")?;
                Frame::Ping { id: body.get_u32() }
            }
            7 => {
                need(8, "GOAWAY")?;
                Frame::GoAway { last_good_stream_id: body.get_u32() & 0x7fff_ffff, status: body.get_u32() }
            }
            8 => {
                need(4, "HEADERS")?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                Frame::Headers { stream_id, fin, headers: self.headers(&body, "HEADERS")? }
            }
            9 => {
                need(8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate { stream_id: body.get_u32() & 0x7fff_ffff, delta: body.get_u32() & 0x7fff_ffff }
            }
            frame_type => Frame::Unknown { frame_type },
        };
        Ok(Some(frame))
    }
}

/// Writes frames: the other direction, with its deflater.
pub struct FrameWriter {
    deflate: Compress,
}

impl FrameWriter {
    /// Errors: Other when zlib refuses the dictionary (it does not, on a new stream).
    pub fn new() -> io::Result<Self> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(&DICTIONARY).map_err(|e| io::Error::other(format!("the SPDY dictionary: {e}")))?;
        Ok(Self { deflate })
    }

    /// A header block, compressed (continuing this direction's zlib stream).
    fn header_block(&mut self, headers: &Headers) -> io::Result<Vec<u8>> {
        let mut block = Vec::new();
        block.put_u32(headers.len() as u32);
        for (name, value) in headers {
            block.put_u32(name.len() as u32);
            block.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            block.put_u32(value.len() as u32);
            block.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut input = block.as_slice();
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| io::Error::other(format!("compressing a SPDY header block: {e}")))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn control_head(dst: &mut BytesMut, frame_type: u16, flags: u8, length: usize) -> io::Result<()> {
    if length > MAX_FRAME_LENGTH {
        return Err(io::Error::other(format!("a SPDY frame of {length} bytes")));
    }
    dst.put_u32(0x8000_0000 | u32::from(VERSION) << 16 | u32::from(frame_type));
    dst.put_u32(u32::from(flags) << 24 | length as u32);
    Ok(())
}

impl Encoder<Frame> for FrameWriter {
    type Error = io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> io::Result<()> {
        let fin = |fin: bool| if fin { FLAG_FIN } else { 0 };
        let frame_type = if matches!(frame, Frame::SynReply { .. }) { 2 } else { 8 };
        match frame {
            Frame::Data { stream_id, fin: end, data } => {
                if data.len() > MAX_FRAME_LENGTH {
                    return Err(io::Error::other(format!("a SPDY data frame of {} bytes", data.len())));
                }
                dst.reserve(8 + data.len());
                dst.put_u32(stream_id & 0x7fff_ffff);
                dst.put_u32(u32::from(fin(end)) << 24 | data.len() as u32);
                dst.extend_from_slice(&data);
            }
            Frame::SynStream { stream_id, associated_to, priority, fin: end, unidirectional, headers } => {
                let block = self.header_block(&headers)?;
                let flags = fin(end) | if unidirectional { FLAG_UNIDIRECTIONAL } else { 0 };
                control_head(dst, 1, flags, 10 + block.len())?;
                dst.put_u32(stream_id);
                dst.put_u32(associated_to);
                dst.put_u8(priority << 5);
                dst.put_u8(0);
                dst.extend_from_slice(&block);
            }
            Frame::SynReply { stream_id, fin: end, headers } | Frame::Headers { stream_id, fin: end, headers } => {
                let block = self.header_block(&headers)?;
                control_head(dst, frame_type, fin(end), 4 + block.len())?;
                dst.put_u32(stream_id);
                dst.extend_from_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                control_head(dst, 3, 0, 8)?;
                dst.put_u32(stream_id);
                dst.put_u32(status);
            }
            Frame::Settings { entries } => {
                control_head(dst, 4, 0, 4 + 8 * entries.len())?;
                dst.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    dst.put_u32(u32::from(flags) << 24 | id);
                    dst.put_u32(value);
                }
            }
            Frame::Ping { id } => {
                control_head(dst, 6, 0, 4)?;
                dst.put_u32(id);
            }
            Frame::GoAway { last_good_stream_id, status } => {
                control_head(dst, 7, 0, 8)?;
                dst.put_u32(last_good_stream_id);
                dst.put_u32(status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                control_head(dst, 9, 0, 8)?;
                dst.put_u32(stream_id);
                dst.put_u32(delta);
            }
            Frame::Unknown { frame_type } => {
                return Err(io::Error::other(format!("a SPDY frame of type {frame_type}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(reader: &mut FrameReader, bytes: &[u8]) -> Vec<Frame> {
        let mut buffer = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = reader.decode(&mut buffer).expect("decodes") {
            frames.push(frame);
        }
        assert!(buffer.is_empty(), "{} bytes left over", buffer.len());
        frames
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_dictionary_is_the_specs() {
        assert_eq!(DICTIONARY.len(), 1423);
        // Adler-32, as zlib names the dictionary a stream needs.
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in DICTIONARY.iter() {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(b << 16 | a, 0xe3c6_a7c2);
    }

    #[test]
    fn frames_round_trip_and_header_blocks_share_one_zlib_stream() {
        let mut writer = FrameWriter::new().unwrap();
        let mut reader = FrameReader::default();
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: headers(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 0,
                fin: true,
                unidirectional: false,
                headers: headers(&[("streamtype", "stdout"), ("x", "a\0b")]),
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: headers(&[(":status", "200"), (":version", "HTTP/1.1")]),
            },
            Frame::Headers { stream_id: 1, fin: true, headers: vec![] },
            Frame::Data { stream_id: 3, fin: false, data: Bytes::from_static(b"hello\n") },
            Frame::Data { stream_id: 3, fin: true, data: Bytes::new() },
            Frame::RstStream { stream_id: 5, status: status::REFUSED_STREAM },
            Frame::Settings { entries: vec![(0, 7, 1 << 20)] },
            Frame::Ping { id: 1 },
            Frame::GoAway { last_good_stream_id: 3, status: status::OK },
            Frame::WindowUpdate { stream_id: 0, delta: 65536 },
        ];
        let mut wire = BytesMut::new();
        for frame in frames.clone() {
            writer.encode(frame, &mut wire).unwrap();
        }
        // Fed a byte at a time, as a slow connection would.
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire {
            buffer.put_u8(byte);
            while let Some(frame) = reader.decode(&mut buffer).unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
    }

    /// Frames npm `spdy-transport` 3.0.0 wrote, a client opening an exec's
    /// error and stdin streams and a server answering (recorded with
    /// `node e2e/clients/spdy_stream.js record [--compress]`). The client's
    /// header blocks are one zlib stream, the server's another.
    #[test]
    fn frames_recorded_from_spdy_transport_decode() {
        let client_stored = [
            "800300040000000c000000010100000700100000",
            "800300090000000800000000000f0000",
            "8003000100000098000000010000000060003830e3c6a7c2007e0081ff000000060000000a73747265616d74797065000000056572726f72000000073a6d6574686f6400000004504f5354000000083a76657273696f6e00000008485454502f312e31000000053a70617468000000012f000000073a736368656d65000000056874747073000000053a686f7374000000096c6f63616c686f7374000000ffff",
            "800300010000009200000003000000006000007e0081ff000000060000000a73747265616d7479706500000005737464696e000000073a6d6574686f6400000004504f5354000000083a76657273696f6e00000008485454502f312e31000000053a70617468000000012f000000073a736368656d65000000056874747073000000053a686f7374000000096c6f63616c686f7374000000ffff",
            "000000030000000368690a",
            "0000000301000000",
            "800300060000000400000001",
        ];
        let client_deflated = [
            "800300010000005a0000000100000000600038ace3c6a7c202a523703a2b294a4dcc851625aca9a0800625532b78626609f00f0e0125572bec4997d5aa20115c9631ea8335162767a4e6820dcb2829292806ab80163a9ca0e22007c401000000ffff",
            "800300010000001a00000003000000006000c26e7b71494a661e1d6c07000000ffff",
        ];
        let stream_type = |frame: &Frame| match frame {
            Frame::SynStream { headers, .. } => headers.iter().find(|(n, _)| n == "streamtype").map(|(_, v)| v.clone()),
            _ => None,
        };
        let decode = |hexes: &[&str]| {
            let bytes: Vec<u8> = hexes.iter().flat_map(|h| hex::decode(h).unwrap()).collect();
            read_all(&mut FrameReader::default(), &bytes)
        };
        let frames = decode(&client_stored);
        assert_eq!(frames[0], Frame::Settings { entries: vec![(1, 7, 1 << 20)] });
        assert_eq!(frames[1], Frame::WindowUpdate { stream_id: 0, delta: 983_040 });
        assert!(
            matches!(&frames[2], Frame::SynStream { stream_id: 1, fin: false, priority: 3, .. }),
            "{:?}",
            frames[2]
        );
        assert_eq!(stream_type(&frames[2]).as_deref(), Some("error"));
        assert_eq!(stream_type(&frames[3]).as_deref(), Some("stdin"));
        assert_eq!(frames[4], Frame::Data { stream_id: 3, fin: false, data: Bytes::from_static(b"hi\n") });
        assert_eq!(frames[5], Frame::Data { stream_id: 3, fin: true, data: Bytes::new() });
        assert_eq!(frames[6], Frame::Ping { id: 1 });
        let deflated = decode(&client_deflated);
        assert_eq!(deflated.iter().map(stream_type).collect::<Vec<_>>(), [Some("error".into()), Some("stdin".into())]);
        let Frame::SynStream { headers: sent, .. } = &deflated[0] else { panic!("{deflated:?}") };
        assert!(sent.contains(&(":method".into(), "POST".into())), "{sent:?}");
        // Its server's answers, which its client reads as this server's.
        let replies = decode(&[
            "8003000200000045000000013830e3c6a7c2003100ceff00000002000000073a73746174757300000006323030204f4b000000083a76657273696f6e00000008485454502f312e31000000ffff",
            "800300020000003f00000003003100ceff00000002000000073a73746174757300000006323030204f4b000000083a76657273696f6e00000008485454502f312e31000000ffff",
        ]);
        let status = headers(&[(":status", "200 OK"), (":version", "HTTP/1.1")]);
        assert_eq!(replies[1], Frame::SynReply { stream_id: 3, fin: false, headers: status });
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let bad: &[&[u8]] = &[
            // Version 2.
            &[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1],
            // A PING of 2 bytes.
            &[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 2, 0, 1],
            // A SYN_STREAM whose header block is not zlib.
            &[0x80, 0x03, 0x00, 0x01, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xde, 0xad],
            // SETTINGS saying 2 entries, holding 1.
            &[0x80, 0x03, 0x00, 0x04, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1],
        ];
        for bytes in bad {
            let error = FrameReader::default().decode(&mut BytesMut::from(*bytes)).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        }
        // Header blocks each compressed as a whole zlib stream (ended): the
        // second cannot continue the first's stream; an error, not a spin.
        let mut wire = BytesMut::new();
        for stream_id in [1u32, 3] {
            let mut block = Vec::new();
            block.put_u32(1);
            for text in ["streamtype", "stdout"] {
                block.put_u32(text.len() as u32);
                block.extend_from_slice(text.as_bytes());
            }
            let mut deflate = Compress::new(Compression::default(), true);
            deflate.set_dictionary(&DICTIONARY).unwrap();
            let mut compressed = Vec::with_capacity(256);
            deflate.compress_vec(&block, &mut compressed, FlushCompress::Finish).unwrap();
            control_head(&mut wire, 1, 0, 10 + compressed.len()).unwrap();
            wire.put_u32(stream_id);
            wire.put_u32(0);
            wire.put_u16(0);
            wire.extend_from_slice(&compressed);
        }
        let mut reader = FrameReader::default();
        let first = reader.decode(&mut wire).expect("the first block inflates");
        assert!(matches!(first, Some(Frame::SynStream { stream_id: 1, .. })), "{first:?}");
        let error = reader.decode(&mut wire).unwrap_err();
        assert!(error.to_string().contains("header compression stream ended"), "{error}");
        // An unknown control type is skipped whole.
        let frames = read_all(&mut FrameReader::default(), &[0x80, 0x03, 0x00, 0x0a, 0, 0, 0, 2, 1, 2]);
        assert_eq!(frames, vec![Frame::Unknown { frame_type: 10 }]);
        // A header block that inflates beyond the bound.
        let mut writer = FrameWriter::new().unwrap();
        let mut wire = BytesMut::new();
        let huge = "x".repeat(MAX_HEADER_BLOCK);
        writer
            .encode(Frame::Headers { stream_id: 1, fin: false, headers: headers(&[("a", &huge)]) }, &mut wire)
            .unwrap();
        let error = FrameReader::default().decode(&mut wire).unwrap_err();
        assert!(error.to_string().contains("inflates to more than"), "{error}");
    }
}
