//! Byte-stream plumbing between the async side (sockets, the pipeline) and
//! the RDB parser, which runs on a blocking thread:
//!
//! - [`Tee`]: hands the pipeline every byte it reads and, in parallel, the
//!   same bytes to a verifier; it reports EOF only once the verifier
//!   accepted the whole RDB, so a corrupt or truncated capture fails the
//!   upload (and nothing is stored).
//! - [`ChannelRead`]: the blocking `Read` side of a bounded chunk channel.
//! - [`TaskReader`]: a reader fed by a task through a pipe, that reports
//!   the task's error instead of a clean EOF.

use std::future::Future;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use capsule_core::ByteStream;
use tokio::io::{AsyncRead, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

/// Chunks buffered between the async side and the parser thread.
pub(crate) const CHANNEL_DEPTH: usize = 8;

/// The blocking reading end of a chunk channel.
pub(crate) struct ChannelRead {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelRead {
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelRead {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Where a [`Tee`] leaves the verifier's result once the stream ended.
pub(crate) type Verdict<T> = Arc<Mutex<Option<T>>>;

/// A reader passing `inner`'s bytes through while a verifier (running on
/// a blocking thread) reads the same bytes.
pub(crate) struct Tee<T> {
    inner: ByteStream,
    tx: Option<PollSender<Bytes>>,
    pending: Option<Bytes>,
    verifier: Option<JoinHandle<Result<T, String>>>,
    verdict: Verdict<T>,
}

/// Starts `verify` on a blocking thread over the bytes of `inner`; returns
/// the stream to hand to the pipeline and the slot its result lands in.
pub(crate) fn tee<T, F>(inner: ByteStream, verify: F) -> (ByteStream, Verdict<T>)
where
    T: Send + 'static,
    F: FnOnce(ChannelRead) -> Result<T, String> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let verifier = tokio::task::spawn_blocking(move || verify(ChannelRead::new(rx)));
    let verdict = Arc::new(Mutex::new(None));
    let tee = Tee {
        inner,
        tx: Some(PollSender::new(tx)),
        pending: None,
        verifier: Some(verifier),
        verdict: verdict.clone(),
    };
    (Box::new(tee), verdict)
}

impl<T: Send + 'static> Tee<T> {
    fn poll_verdict(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx = None;
        self.pending = None;
        let Some(handle) = self.verifier.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(Pin::new(handle).poll(cx));
        self.verifier = None;
        match result {
            Ok(Ok(v)) => {
                *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
                Poll::Ready(Ok(()))
            }
            Ok(Err(message)) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, message)))
            }
            Err(e) => Poll::Ready(Err(io::Error::other(format!("RDB verifier failed: {e}")))),
        }
    }
}

impl<T: Send + 'static> AsyncRead for Tee<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_some() {
            let Some(tx) = this.tx.as_mut() else {
                return this.poll_verdict(cx);
            };
            if ready!(tx.poll_reserve(cx)).is_err() {
                // The verifier stopped early: it found a fault.
                return this.poll_verdict(cx);
            }
            let chunk = this.pending.take().expect("pending chunk");
            if tx.send_item(chunk).is_err() {
                return this.poll_verdict(cx);
            }
        }
        if this.tx.is_none() {
            return this.poll_verdict(cx);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.pending = Some(Bytes::copy_from_slice(&buf.filled()[before..]));
            return Poll::Ready(Ok(()));
        }
        // EOF: let the verifier finish, and report its verdict.
        this.poll_verdict(cx)
    }
}

/// A reader over a pipe a task writes into: at EOF of the pipe it waits
/// for the task and reports its error, if any, instead of a clean end.
pub(crate) struct TaskReader {
    inner: DuplexStream,
    task: Option<JoinHandle<capsule_core::Result<()>>>,
}

impl TaskReader {
    /// Runs `work` with the writing end of a pipe of `capacity` bytes.
    pub(crate) fn spawn<F, Fut>(capacity: usize, work: F) -> TaskReader
    where
        F: FnOnce(DuplexStream) -> Fut,
        Fut: Future<Output = capsule_core::Result<()>> + Send + 'static,
    {
        let (writer, reader) = tokio::io::duplex(capacity);
        TaskReader {
            inner: reader,
            task: Some(tokio::spawn(work(writer))),
        }
    }
}

impl Drop for TaskReader {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl AsyncRead for TaskReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            return Poll::Ready(Ok(()));
        }
        let Some(task) = self.task.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = ready!(Pin::new(task).poll(cx));
        self.task = None;
        match result {
            Ok(Ok(())) => Poll::Ready(Ok(())),
            Ok(Err(e)) => Poll::Ready(Err(io::Error::other(e.to_string()))),
            Err(e) => Poll::Ready(Err(io::Error::other(format!("capture task failed: {e}")))),
        }
    }
}
