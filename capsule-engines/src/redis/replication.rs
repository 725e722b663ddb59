//! Capture by replication: capsule introduces itself as a replica
//! (`REPLCONF capa eof capa psync2`, `PSYNC ? -1`) and reads the full
//! resynchronisation payload, the RDB the server produces from a fork, i.e.
//! a point-in-time snapshot. Both framings are handled: `$<len>` (the
//! server wrote the RDB to its disk first) and `$EOF:<40-byte mark>`
//! (diskless, streamed from the fork; the RDB ends where the mark appears).
//! The connection is closed right after the RDB, before the server starts
//! streaming commands.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use capsule_core::Result;
use tokio::io::{AsyncRead, ReadBuf};

use super::client::{Client, Reader};
use super::connection::RedisConnection;
use super::resp::{self, Reply};

/// Length of the end-of-transfer mark of diskless transfers.
const MARK_LEN: usize = 40;

/// How long the server may stay silent before the payload starts (it
/// sends a newline every second while it prepares the RDB).
const IDLE: Duration = Duration::from_secs(120);

/// How the server frames the RDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `$<len>`: a disk-based transfer of this many bytes.
    Disk(u64),
    /// `$EOF:<mark>`: diskless, ends with the mark.
    Diskless,
}

impl Framing {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Framing::Disk(_) => "disk",
            Framing::Diskless => "diskless",
        }
    }
}

/// What the handshake established.
#[derive(Clone, Debug)]
pub(crate) struct Started {
    /// The replication id and offset the RDB corresponds to.
    pub(crate) replid: String,
    pub(crate) offset: u64,
    pub(crate) framing: Framing,
}

/// The outcome of the handshake: a stream of the RDB, or the server's
/// refusal (the reason, for the fallback's log and the statefile).
pub(crate) enum Handshake {
    Streaming(RdbPayload, Started),
    Refused(String),
}

/// Connects as a replica and waits for the payload to start.
///
/// # Errors
/// Authentication and connection failures (which a fallback would hit as
/// well); the server refusing replication is [`Handshake::Refused`].
pub(crate) async fn start(conn: &RedisConnection) -> Result<Handshake> {
    let mut client = Client::connect(conn).await?;
    let endpoint = client.endpoint.clone();
    let refused = |step: &str, why: String| Ok(Handshake::Refused(format!("{step}: {why}")));
    match client
        .raw_call(&[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"])
        .await
    {
        Ok(Reply::Error(e)) => return refused("REPLCONF", e),
        Err(e) => return refused("REPLCONF", e.to_string()),
        Ok(_) => {}
    }
    let (replid, offset) = match client.raw_call(&[b"PSYNC", b"?", b"-1"]).await {
        Ok(Reply::Simple(s)) if s.starts_with("FULLRESYNC") => {
            let mut parts = s.split_whitespace().skip(1);
            let replid = parts.next().unwrap_or_default().to_string();
            let offset = parts.next().and_then(|o| o.parse().ok()).unwrap_or(0);
            (replid, offset)
        }
        Ok(Reply::Simple(s)) => return refused("PSYNC", format!("unexpected reply {s:?}")),
        Ok(Reply::Error(e)) => return refused("PSYNC", e),
        Ok(other) => return refused("PSYNC", format!("unexpected reply {other:?}")),
        Err(e) => return refused("PSYNC", e.to_string()),
    };
    tracing::debug!(%endpoint, %replid, offset, "full resynchronisation started");
    // Newlines keep the link alive while the server forks and (for disk
    // transfers) writes the file; then comes `$…`.
    let header = loop {
        let line = tokio::time::timeout(IDLE, resp::read_line(&mut client.reader))
            .await
            .map_err(|_| {
                super::client::engine_error(&endpoint, "replication", "no payload after 120 s")
            })?
            .map_err(|e| super::client::engine_error(&endpoint, "replication", e))?;
        if !line.is_empty() {
            break line;
        }
    };
    let bad_header = || {
        super::client::engine_error(
            &endpoint,
            "replication",
            format!(
                "unexpected payload header {:?}",
                String::from_utf8_lossy(&header[..header.len().min(64)])
            ),
        )
    };
    let (framing, mode) = if let Some(mark) = header.strip_prefix(b"$EOF:") {
        let mark: [u8; MARK_LEN] = mark.try_into().map_err(|_| bad_header())?;
        (
            Framing::Diskless,
            Mode::Mark {
                mark,
                held: Vec::with_capacity(128 * 1024),
                out: 0,
                done: false,
            },
        )
    } else if let Some(len) = header.strip_prefix(b"$") {
        let len: u64 = std::str::from_utf8(len)
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(bad_header)?;
        (
            Framing::Disk(len),
            Mode::Len {
                left: len,
                total: len,
            },
        )
    } else {
        return Err(bad_header());
    };
    let Client { reader, writer, .. } = client;
    Ok(Handshake::Streaming(
        RdbPayload {
            reader,
            _writer: writer,
            mode,
        },
        Started {
            replid,
            offset,
            framing,
        },
    ))
}

enum Mode {
    Len {
        left: u64,
        total: u64,
    },
    Mark {
        mark: [u8; MARK_LEN],
        /// Bytes read and not yet handed out; the last 40 are held back
        /// until more arrive (they may be the mark).
        held: Vec<u8>,
        /// How much of `held` was handed out.
        out: usize,
        done: bool,
    },
}

/// The RDB of a full resynchronisation, without its framing.
pub(crate) struct RdbPayload {
    reader: Reader,
    /// Kept open until the RDB is read.
    _writer: super::client::Writer,
    mode: Mode,
}

fn closed(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what)
}

impl AsyncRead for RdbPayload {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.mode {
            Mode::Len { left, total } => {
                if *left == 0 || buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                let max = (*left).min(buf.remaining() as u64) as usize;
                let mut sub = ReadBuf::new(buf.initialize_unfilled_to(max));
                ready!(Pin::new(&mut this.reader).poll_read(cx, &mut sub))?;
                let n = sub.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(closed(format!(
                        "the server closed the replication link after {} of {total} bytes",
                        *total - *left
                    ))));
                }
                buf.advance(n);
                *left -= n as u64;
                Poll::Ready(Ok(()))
            }
            Mode::Mark {
                mark,
                held,
                out,
                done,
            } => loop {
                let releasable = if *done {
                    held.len()
                } else {
                    held.len().saturating_sub(MARK_LEN)
                };
                if *out < releasable {
                    let n = (releasable - *out).min(buf.remaining());
                    buf.put_slice(&held[*out..*out + n]);
                    *out += n;
                    return Poll::Ready(Ok(()));
                }
                if *done {
                    return Poll::Ready(Ok(()));
                }
                // Drop what was handed out, keep the held-back tail.
                held.drain(..*out);
                *out = 0;
                let at = held.len();
                held.resize(at + 64 * 1024, 0);
                let mut sub = ReadBuf::new(&mut held[at..]);
                let polled = Pin::new(&mut this.reader).poll_read(cx, &mut sub);
                let n = sub.filled().len();
                held.truncate(at + n);
                ready!(polled)?;
                if n == 0 {
                    return Poll::Ready(Err(closed(
                        "the server closed the replication link before the end of the RDB".into(),
                    )));
                }
                if held.len() >= MARK_LEN && held[held.len() - MARK_LEN..] == mark[..] {
                    held.truncate(held.len() - MARK_LEN);
                    *done = true;
                }
            },
        }
    }
}
