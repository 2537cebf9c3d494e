//! Where a guest's stdout and stderr go: any pair of async writers, and a
//! future that says when everything written to them has reached its
//! destination.
//!
//! The CRI log file (`crate::logs`) is one such sink; [`Captured`] keeps the
//! output in memory (for an exec's answer, or one HTTP request's instance).
//! The guest's end is reported only once [`Output`]'s `done` has resolved,
//! so whoever waits for the exit finds the output complete.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

/// One stream of output, as the guest writes it.
pub type Writer = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// Resolves once everything written to both writers is at its destination.
pub type Done = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A guest's stdout and stderr, and the way to wait for them to be written.
///
/// When the guest ends, its host side drops both writers (without a
/// shutdown: a stopped guest is dropped mid-write) and then awaits `done`,
/// before it reports the exit. So `done` must resolve once both writers are
/// dropped and what they took is written, and wait for nothing else.
pub struct Output {
    pub(super) stdout: Writer,
    pub(super) stderr: Writer,
    pub(super) done: Done,
    /// Makes one more pair of writers to the same destination, for another
    /// instance (a served component's requests); none for a sink of one
    /// instance only. `done` also waits for this to be dropped.
    pub(super) fork: Option<Fork>,
}

/// Makes a new pair of writers (stdout, stderr) to an output's destination.
pub(super) type Fork = Box<dyn Fn() -> (Writer, Writer) + Send + Sync>;

impl Output {
    /// An output of two writers and the future that resolves when what they
    /// were given is written out (see [`Output`] for what it must wait for).
    pub fn new(
        stdout: impl AsyncWrite + Send + Sync + Unpin + 'static,
        stderr: impl AsyncWrite + Send + Sync + Unpin + 'static,
        done: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self { stdout: Box::new(stdout), stderr: Box::new(stderr), done: Box::pin(done), fork: None }
    }

    /// An output whose writers can be cloned, so that many instances (the
    /// requests of a served component) write to it at once. `done` must
    /// resolve once every clone is dropped and what they took is written.
    pub fn shared<W>(stdout: W, stderr: W, done: impl Future<Output = ()> + Send + 'static) -> Self
    where
        W: AsyncWrite + Clone + Send + Sync + Unpin + 'static,
    {
        let (out, err) = (stdout.clone(), stderr.clone());
        let fork: Fork = Box::new(move || (Box::new(out.clone()) as Writer, Box::new(err.clone()) as Writer));
        Self { fork: Some(fork), ..Self::new(stdout, stderr, done) }
    }

    /// Writes `message` to stderr, closes both streams and waits until all is
    /// written: the whole output of a program that never ran (an exec's
    /// `program not found`). A writer that fails is given up on.
    pub async fn finish_with_error(self, message: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let Output { stdout, mut stderr, done, fork } = self;
        drop((stdout, fork));
        if let Err(error) = stderr.write_all(message).await {
            tracing::debug!(%error, "writing an error to a guest's stderr");
        }
        let _ = stderr.flush().await;
        drop(stderr);
        done.await;
    }

    /// Output nobody reads: both streams are discarded.
    #[cfg(test)]
    pub fn discard() -> Self {
        Self::new(tokio::io::sink(), tokio::io::sink(), std::future::ready(()))
    }
}

/// A guest's output kept in memory, up to a number of bytes per stream.
///
/// Bytes past `max_bytes` of a stream are accepted from the guest (it never
/// blocks or fails on its output) and dropped, and [`Captured::truncated`]
/// says so. Read it once the guest's exit is reported: everything it wrote is
/// in by then.
#[derive(Clone)]
pub struct Captured {
    streams: Arc<Mutex<Streams>>,
}

#[derive(Default)]
struct Streams {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    max_bytes: usize,
    truncated: bool,
}

impl Captured {
    /// A new capture keeping at most `max_bytes` of each stream, and the
    /// [`Output`] to start a guest with.
    pub fn new(max_bytes: usize) -> (Self, Output) {
        let streams = Arc::new(Mutex::new(Streams { max_bytes, ..Streams::default() }));
        // Each writer holds a sender; the receiver sees the channel close once
        // both are dropped. Writes go to memory at once, so that is when all is written.
        let (open, mut closed) = mpsc::channel::<()>(1);
        let writer = |stdout| MemoryWriter { streams: streams.clone(), stdout, _open: open.clone() };
        let output = Output::new(writer(true), writer(false), async move {
            let _ = closed.recv().await;
        });
        (Self { streams }, output)
    }

    /// What the guest wrote to stdout so far (at most `max_bytes`).
    pub fn stdout(&self) -> Vec<u8> {
        self.streams.lock().unwrap().stdout.clone()
    }

    /// What the guest wrote to stderr so far (at most `max_bytes`).
    pub fn stderr(&self) -> Vec<u8> {
        self.streams.lock().unwrap().stderr.clone()
    }

    /// Whether a stream had more than `max_bytes` and lost the rest.
    pub fn truncated(&self) -> bool {
        self.streams.lock().unwrap().truncated
    }
}

/// One stream of a [`Captured`] output.
struct MemoryWriter {
    streams: Arc<Mutex<Streams>>,
    stdout: bool,
    /// Dropped with the writer: see [`Captured::new`].
    _open: mpsc::Sender<()>,
}

impl AsyncWrite for MemoryWriter {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut streams = self.streams.lock().unwrap();
        let Streams { stdout, stderr, max_bytes, truncated } = &mut *streams;
        let stream = if self.stdout { stdout } else { stderr };
        let room = max_bytes.saturating_sub(stream.len());
        stream.extend_from_slice(&buf[..room.min(buf.len())]);
        *truncated |= buf.len() > room;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn captured_output_keeps_each_stream_up_to_its_limit() {
        let (captured, output) = Captured::new(8);
        let Output { mut stdout, mut stderr, done, .. } = output;
        stdout.write_all(b"hello ").await.unwrap();
        stderr.write_all(b"oops").await.unwrap();
        stdout.write_all(b"world").await.unwrap();
        assert!(captured.truncated());
        drop((stdout, stderr));
        done.await;
        assert_eq!(captured.stdout(), b"hello wo");
        assert_eq!(captured.stderr(), b"oops");
    }

    #[tokio::test]
    async fn captured_output_is_done_only_once_both_writers_are_dropped() {
        let (captured, output) = Captured::new(64);
        let Output { stdout, mut stderr, mut done, .. } = output;
        drop(stdout);
        let waker = std::task::Waker::noop();
        assert!(done.as_mut().poll(&mut Context::from_waker(waker)).is_pending());
        stderr.write_all(b"last words").await.unwrap();
        drop(stderr);
        done.await;
        assert_eq!(captured.stderr(), b"last words");
        assert!(!captured.truncated());
    }
}
