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

use bytes::{Buf, Bytes, BytesMut};
use capsule_core::ByteStream;
use tokio::io::{AsyncRead, DuplexStream, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

/// Chunks buffered between the async side and the parser thread.
pub(crate) const CHANNEL_DEPTH: usize = 8;

/// Bytes a [`Tee`] gathers before it hands them to the verifier. A socket
/// read returns what arrived since the last one (about 20 KiB while the
/// server is the slower side); waking the verifier thread for each cost
/// thousands of context switches per capture, which on a small machine
/// are taken from the server producing the RDB.
const TEE_BATCH: usize = 256 * 1024;

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
    /// Bytes read and not yet handed to the verifier.
    gathered: BytesMut,
    /// A full batch waiting for room in the channel.
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
        gathered: BytesMut::new(),
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

    /// Sends the pending batch; `Ready(false)` when the verifier stopped
    /// (it found a fault).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(tx) = self.tx.as_mut() else {
            return Poll::Ready(false);
        };
        if self.pending.is_some() {
            if ready!(tx.poll_reserve(cx)).is_err() {
                return Poll::Ready(false);
            }
            let batch = self.pending.take().expect("pending batch");
            if tx.send_item(batch).is_err() {
                return Poll::Ready(false);
            }
        }
        Poll::Ready(true)
    }
}

impl<T: Send + 'static> AsyncRead for Tee<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !ready!(this.poll_send(cx)) {
            return this.poll_verdict(cx);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            let read = &buf.filled()[before..];
            if this.gathered.is_empty() {
                this.gathered.reserve(TEE_BATCH.max(read.len()));
            }
            this.gathered.extend_from_slice(read);
            if this.gathered.len() >= TEE_BATCH {
                this.pending = Some(this.gathered.split().freeze());
            }
            return Poll::Ready(Ok(()));
        }
        // EOF: hand over the last bytes, let the verifier finish, and
        // report its verdict.
        if !this.gathered.is_empty() {
            this.pending = Some(this.gathered.split().freeze());
        }
        // Sent or not (a verifier that stopped has its reason), the
        // verdict comes next.
        ready!(this.poll_send(cx));
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A stream of `len` patterned bytes, read through a small duplex pipe
    /// so it arrives in many short reads, as from a socket.
    fn patterned(len: usize) -> (ByteStream, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let (mut w, r) = tokio::io::duplex(7 * 1024);
        let sent = data.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            w.write_all(&sent).await.expect("write");
        });
        (Box::new(r), data)
    }

    #[tokio::test]
    async fn the_pipeline_and_the_verifier_see_the_same_bytes() {
        for len in [
            0,
            1,
            TEE_BATCH - 1,
            TEE_BATCH,
            TEE_BATCH + 1,
            3 * TEE_BATCH + 12_345,
        ] {
            let (stream, data) = patterned(len);
            let (mut tee, verdict) = tee(stream, |mut r: ChannelRead| {
                let mut seen = Vec::new();
                r.read_to_end(&mut seen).map_err(|e| e.to_string())?;
                Ok(seen)
            });
            let mut passed = Vec::new();
            tee.read_to_end(&mut passed).await.expect("tee");
            assert_eq!(passed, data, "pipeline side, {len} bytes");
            let seen = verdict.lock().unwrap().take().expect("verdict at EOF");
            assert_eq!(seen, data, "verifier side, {len} bytes");
        }
    }

    #[tokio::test]
    async fn a_fault_the_verifier_finds_fails_the_stream() {
        let (stream, _) = patterned(3 * TEE_BATCH);
        let (mut tee, verdict) = tee(stream, |mut r: ChannelRead| -> Result<(), String> {
            let mut first = [0u8; 10];
            r.read_exact(&mut first).map_err(|e| e.to_string())?;
            Err("bad RDB at offset 10".into())
        });
        let mut passed = Vec::new();
        let err = tee.read_to_end(&mut passed).await.expect_err("fault");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("bad RDB at offset 10"), "{err}");
        assert!(verdict.lock().unwrap().is_none());
    }
}
