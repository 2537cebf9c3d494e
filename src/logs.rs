//! CRI container log files.
//!
//! Each record is `<RFC3339Nano time> <stdout|stderr> <P|F> <content>\n`; a
//! line longer than [`MAX_LINE`] is cut into `P` (partial) records followed by
//! one `F` (final) record, as containerd does. One task per container owns the
//! file: guests hand it bytes through a bounded channel (so a chatty guest waits
//! for the disk instead of filling memory), and `reopen` after kubelet's
//! rotation goes through the same channel so it is ordered with the writes.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::PollSender;

/// The longest content of one record; longer lines are split (containerd's default).
pub const MAX_LINE: usize = 16 * 1024;

/// How many chunks may wait for the writer before the guest is held back.
const QUEUE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Reopen requests, answered once the file at the log path is open again.
type Reopen = oneshot::Sender<io::Result<()>>;

/// The control side of a container's log, kept by the container for
/// reopens and attaches.
pub struct ContainerLog {
    reopen: mpsc::Sender<Reopen>,
    /// Every chunk of output, as the guest wrote it, to attached clients.
    attached: broadcast::Sender<(Stream, bytes::Bytes)>,
}

/// Chunks of output kept for an attached client that has not taken them
/// yet; one that falls further behind loses the oldest (see [`ContainerLog::attach`]).
const ATTACH_BACKLOG: usize = 256;

/// Waits for the writer to write out everything and close the file.
pub struct LogDone(tokio::task::JoinHandle<()>);

impl LogDone {
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

/// What a new container log gives: the control the container keeps, and the
/// output side the guest takes.
pub struct OpenedLog {
    pub log: ContainerLog,
    pub output: GuestOutput,
}

/// A guest's two output streams, and the way to wait for them to reach the file.
pub struct GuestOutput {
    pub stdout: LogWriter,
    pub stderr: LogWriter,
    pub done: LogDone,
}

/// The log file as a guest's output: the guest's end is reported once the
/// writer has written everything to the file.
impl From<GuestOutput> for crate::wasm::Output {
    fn from(output: GuestOutput) -> Self {
        crate::wasm::Output::shared(output.stdout, output.stderr, output.done.wait())
    }
}

impl ContainerLog {
    /// Opens (creating parent directories) the log file at `path` and starts its
    /// writer on the current runtime. `None` discards output, as containerd does
    /// for a container without a log path. The writer ends when both output
    /// streams are dropped.
    pub async fn open(path: Option<PathBuf>) -> io::Result<OpenedLog> {
        let file = match &path {
            Some(path) => Some(open_log_file(path).await?),
            None => None,
        };
        let (output_tx, output_rx) = mpsc::channel(QUEUE);
        let (reopen_tx, reopen_rx) = mpsc::channel(1);
        let (attached, _) = broadcast::channel(ATTACH_BACKLOG);
        let task = tokio::spawn(write_records(path, file, output_rx, reopen_rx, attached.clone()));
        let writer = |stream| LogWriter { stream, tx: PollSender::new(output_tx.clone()) };
        Ok(OpenedLog {
            log: ContainerLog { reopen: reopen_tx, attached },
            output: GuestOutput { stdout: writer(Stream::Stdout), stderr: writer(Stream::Stderr), done: LogDone(task) },
        })
    }

    /// The guest's output from now on, chunk by chunk, for an attached
    /// client (CRI Attach). The stream ends once the container's log is let
    /// go (its guest ended) and the writer has finished; a receiver more
    /// than [`ATTACH_BACKLOG`] chunks behind is told how many it lost
    /// (`RecvError::Lagged`), and the guest never waits for it.
    pub fn attach(&self) -> broadcast::Receiver<(Stream, bytes::Bytes)> {
        self.attached.subscribe()
    }

    /// Reopens the file at the same path, after kubelet renamed the old one.
    /// Output written before the call goes to the old file.
    pub async fn reopen(&self) -> io::Result<()> {
        let (reply, answer) = oneshot::channel();
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the container's log writer has stopped");
        self.reopen.send(reply).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Creates the parent directories and opens the file, in one trip to a
/// blocking thread (a container's start waits for it).
async fn open_log_file(path: &Path) -> io::Result<tokio::fs::File> {
    let path = path.to_owned();
    let file = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(&path)
    })
    .await
    .map_err(io::Error::other)??;
    Ok(tokio::fs::File::from_std(file))
}

/// The writer task: frames bytes into records and appends them in batches.
async fn write_records(
    path: Option<PathBuf>,
    mut file: Option<tokio::fs::File>,
    mut output: mpsc::Receiver<(Stream, Vec<u8>)>,
    mut reopens: mpsc::Receiver<Reopen>,
    attached: broadcast::Sender<(Stream, bytes::Bytes)>,
) {
    let mut stdout = LineFramer::default();
    let mut stderr = LineFramer::default();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            // Output first: what was written before a reopen belongs to the old file.
            biased;
            chunk = output.recv() => {
                let Some(mut chunk) = chunk else { break };
                loop {
                    let (stream, bytes) = chunk;
                    if attached.receiver_count() > 0 {
                        let _ = attached.send((stream, bytes::Bytes::copy_from_slice(&bytes)));
                    }
                    let framer = if stream == Stream::Stdout { &mut stdout } else { &mut stderr };
                    let now = timestamp();
                    framer.push(&bytes, |tag, line| format_record(&mut batch, &now, stream, tag, line));
                    // Take whatever else is queued, so that one write covers many records.
                    match output.try_recv() {
                        Ok(next) if batch.len() < 256 * 1024 => chunk = next,
                        Ok(next) => {
                            flush(&mut file, &mut batch, path.as_deref()).await;
                            chunk = next;
                        }
                        Err(_) => break,
                    }
                }
                flush(&mut file, &mut batch, path.as_deref()).await;
            }
            Some(reply) = reopens.recv() => {
                let result = match &path {
                    Some(path) => open_log_file(path).await.map(|reopened| file = Some(reopened)),
                    None => Ok(()),
                };
                let _ = reply.send(result);
            }
        }
    }
    // Both streams are closed: the guest has exited. A line without its newline is final.
    let now = timestamp();
    stdout.finish(|tag, line| format_record(&mut batch, &now, Stream::Stdout, tag, line));
    stderr.finish(|tag, line| format_record(&mut batch, &now, Stream::Stderr, tag, line));
    // Written, not synced: kubelet reads the file through the page cache, and
    // an fsync per exit would cost more than the container's whole start (as
    // containerd, which does not sync container logs either).
    flush(&mut file, &mut batch, path.as_deref()).await;
}

async fn flush(file: &mut Option<tokio::fs::File>, batch: &mut Vec<u8>, path: Option<&Path>) {
    if batch.is_empty() {
        return;
    }
    if let Some(f) = file {
        let result = async {
            f.write_all(batch).await?;
            f.flush().await
        }
        .await;
        if let Err(e) = result {
            // The guest must not die because its log could not be written; say so once per batch.
            tracing::warn!(path = ?path, error = %e, "dropping container output: log write failed");
        }
    }
    batch.clear();
}

fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn format_record(out: &mut Vec<u8>, time: &str, stream: Stream, tag: Tag, content: &[u8]) {
    out.extend_from_slice(time.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.extend_from_slice(if tag == Tag::Partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Partial,
    Full,
}

/// Cuts a byte stream into log lines: `Full` at each newline (not included),
/// `Partial` for every [`MAX_LINE`] bytes of a line still going on.
#[derive(Default)]
struct LineFramer {
    pending: Vec<u8>,
}

impl LineFramer {
    fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(Tag, &[u8])) {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(newline) if self.pending.len() + newline <= MAX_LINE => {
                    if self.pending.is_empty() {
                        emit(Tag::Full, &bytes[..newline]);
                    } else {
                        self.pending.extend_from_slice(&bytes[..newline]);
                        emit(Tag::Full, &self.pending);
                        self.pending.clear();
                    }
                    bytes = &bytes[newline + 1..];
                }
                _ => {
                    let room = MAX_LINE - self.pending.len();
                    let take = room.min(bytes.len());
                    self.pending.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    // Full, with more of the same line to come: that is a partial record.
                    if self.pending.len() == MAX_LINE && !bytes.is_empty() && bytes[0] != b'\n' {
                        emit(Tag::Partial, &self.pending);
                        self.pending.clear();
                    }
                }
            }
        }
    }

    fn finish(&mut self, mut emit: impl FnMut(Tag, &[u8])) {
        if !self.pending.is_empty() {
            emit(Tag::Full, &self.pending);
            self.pending.clear();
        }
    }
}

/// One stream of a guest's output, as an `AsyncWrite`. Dropping every writer
/// of a log closes it.
///
/// A clone writes to the same file (another instance of the container); the
/// file's writer ends once every clone is dropped.
#[derive(Clone)]
pub struct LogWriter {
    stream: Stream,
    tx: PollSender<(Stream, Vec<u8>)>,
}

impl AsyncWrite for LogWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "container log closed");
        std::task::ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        let message = (self.stream, buf.to_vec());
        self.tx.send_item(message).map_err(|_| closed())?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(chunks: &[&[u8]]) -> Vec<(Tag, Vec<u8>)> {
        let mut framer = LineFramer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk, |tag, line| out.push((tag, line.to_vec())));
        }
        framer.finish(|tag, line| out.push((tag, line.to_vec())));
        out
    }

    #[test]
    fn lines_are_full_records() {
        let out = frame(&[b"one\ntw", b"o\n\nthree"]);
        let want: Vec<(Tag, Vec<u8>)> = vec![
            (Tag::Full, b"one".to_vec()),
            (Tag::Full, b"two".to_vec()),
            (Tag::Full, vec![]),
            (Tag::Full, b"three".to_vec()),
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn long_lines_are_cut_into_partials() {
        let line = vec![b'x'; 100 * 1024];
        let chunks: Vec<&[u8]> = line.chunks(4096).chain([&b"\nafter\n"[..]]).collect();
        let out = frame(&chunks);
        let tags: Vec<Tag> = out.iter().map(|(tag, _)| *tag).collect();
        assert_eq!(tags, [vec![Tag::Partial; 6], vec![Tag::Full, Tag::Full]].concat());
        assert!(out[..6].iter().all(|(_, l)| l.len() == MAX_LINE));
        assert_eq!(out[6].1.len(), 100 * 1024 - 6 * MAX_LINE);
        assert_eq!(out[7].1, b"after");
    }

    #[test]
    fn a_line_of_exactly_max_is_one_full_record() {
        let mut line = vec![b'y'; MAX_LINE];
        line.push(b'\n');
        assert_eq!(frame(&[&line[..MAX_LINE], &line[MAX_LINE..]]), vec![(Tag::Full, vec![b'y'; MAX_LINE])]);
    }

    #[tokio::test]
    async fn records_reach_the_file_and_reopen_follows_a_rename() {
        let dir = std::env::temp_dir().join(format!("wasmrun-logs-{}", rand::random::<u64>()));
        let path = dir.join("c/0.log");
        let OpenedLog { log, output } = ContainerLog::open(Some(path.clone())).await.unwrap();
        let GuestOutput { stdout: mut out, stderr: mut err, done } = output;
        out.write_all(b"hello\n").await.unwrap();
        // A reopen is ordered after the writes before it: use one as a barrier,
        // so "hello" is on disk before the rename, as kubelet's rotation expects.
        log.reopen().await.unwrap();
        std::fs::rename(&path, dir.join("c/0.log.1")).unwrap();
        log.reopen().await.unwrap();
        out.write_all(b"again\n").await.unwrap();
        err.write_all(b"oops").await.unwrap();
        drop((out, err, log));
        done.wait().await;

        let rotated = std::fs::read_to_string(dir.join("c/0.log.1")).unwrap();
        assert!(rotated.ends_with(" stdout F hello\n"), "{rotated:?}");
        let current = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = current.lines().collect();
        assert_eq!(lines.len(), 2, "{current:?}");
        assert!(lines[0].ends_with(" stdout F again"));
        assert!(lines[1].ends_with(" stderr F oops"));
        let time = lines[0].split(' ').next().unwrap();
        chrono::DateTime::parse_from_rfc3339(time).unwrap();
    }
}
