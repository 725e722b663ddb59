//! Capture by replication: capsule introduces itself as a replica
//! (`REPLCONF capa eof capa psync2`, `REPLCONF rdb-only 1` where the server
//! knows it, `PSYNC ? -1`) and reads the full
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
    Streaming(Box<RdbPayload>, Started),
    Refused(String),
}

/// Connects as a replica and waits for the payload to start.
///
/// # Errors
/// Authentication and connection failures (which a fallback would hit as
/// well); the server refusing replication is [`Handshake::Refused`].
pub(crate) async fn start(conn: &RedisConnection) -> Result<Handshake> {
    // Its idle limit makes a server that stops sending mid-RDB fail the
    // capture instead of holding it (and the schedule behind it) for ever.
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
    // Redis 7+: a replica that wants the RDB only. The server neither keeps
    // a replication buffer for it during the transfer (no output-buffer
    // growth on a busy primary, no `client-output-buffer-limit replica`
    // disconnect of a long capture) nor streams commands after it; it
    // closes the link. Older servers answer an error: they keep the buffer,
    // as for any replica, until the link closes.
    match client.raw_call(&[b"REPLCONF", b"rdb-only", b"1"]).await {
        Ok(Reply::Error(e)) => {
            tracing::debug!(%endpoint, reason = %e, "the server does not know REPLCONF rdb-only");
        }
        Err(e) => return refused("REPLCONF rdb-only", e.to_string()),
        Ok(_) => {}
    }
    // The reply comes when the server starts the transfer: after its
    // `repl-diskless-sync-delay` (5 s by default) for a diskless one. Until
    // then it sends newlines to keep the link alive.
    client.queue(&[b"PSYNC", b"?", b"-1"]);
    client.flush().await?;
    let reply = match next_line(&mut client, conn.idle_timeout).await {
        Ok(line) => String::from_utf8_lossy(&line).into_owned(),
        Err(e) => return refused("PSYNC", e.to_string()),
    };
    let (replid, offset) = match reply.strip_prefix('+') {
        Some(s) if s.starts_with("FULLRESYNC") => {
            let mut parts = s.split_whitespace().skip(1);
            let replid = parts.next().unwrap_or_default().to_string();
            let offset = parts.next().and_then(|o| o.parse().ok()).unwrap_or(0);
            (replid, offset)
        }
        _ => match reply.strip_prefix('-') {
            Some(e) => return refused("PSYNC", e.to_string()),
            None => return refused("PSYNC", format!("unexpected reply {reply:?}")),
        },
    };
    tracing::debug!(%endpoint, %replid, offset, "full resynchronisation started");
    // Newlines keep the link alive while the server forks and (for disk
    // transfers) writes the file; then comes `$…`.
    let header = next_line(&mut client, conn.idle_timeout).await?;
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
        (Framing::Diskless, Mode::Mark(MarkState::new(mark)))
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
        Box::new(RdbPayload {
            reader,
            _writer: Some(writer),
            mode,
        }),
        Started {
            replid,
            offset,
            framing,
        },
    ))
}

/// The next line the server sends that is not a keep-alive newline; at
/// most `idle` of silence (the server sends a newline every second while
/// it prepares the RDB).
async fn next_line(client: &mut Client, idle: Duration) -> Result<Vec<u8>> {
    // Zero: no limit (a year is as good).
    let idle = if idle.is_zero() {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        idle
    };
    let mut said = false;
    loop {
        let line = tokio::time::timeout(idle, resp::read_line(&mut client.reader))
            .await
            .map_err(|_| {
                super::client::engine_error(
                    &client.endpoint,
                    "replication",
                    format!("nothing received for {}", super::idle::shown(idle)),
                )
            })?
            .map_err(|e| super::client::engine_error(&client.endpoint, "replication", e))?;
        if !line.is_empty() {
            return Ok(line);
        }
        if !said {
            tracing::info!(endpoint = %client.endpoint, "the server is preparing the transfer (its repl-diskless-sync-delay, 5 s by default, or a disk BGSAVE): waiting");
            said = true;
        }
    }
}

enum Mode {
    Len { left: u64, total: u64 },
    Mark(MarkState),
}

/// Where a diskless transfer stands: the mark to look for, and the last
/// bytes read, held back until more arrive (they may be the mark's start).
struct MarkState {
    mark: [u8; MARK_LEN],
    tail: [u8; MARK_LEN],
    tail_len: usize,
    done: bool,
}

impl MarkState {
    fn new(mark: [u8; MARK_LEN]) -> Self {
        MarkState {
            mark,
            tail: [0; MARK_LEN],
            tail_len: 0,
            done: false,
        }
    }

    /// Takes `data`, the held-back tail followed by the bytes just read:
    /// if it ends with the mark the transfer is done, else its last 40
    /// bytes become the new tail. Returns how many leading bytes of `data`
    /// are RDB, to hand out.
    fn settle(&mut self, data: &[u8]) -> usize {
        let total = data.len();
        if total >= MARK_LEN && data[total - MARK_LEN..] == self.mark[..] {
            self.done = true;
            self.tail_len = 0;
            return total - MARK_LEN;
        }
        let release = total.saturating_sub(MARK_LEN);
        self.tail_len = total - release;
        self.tail[..self.tail_len].copy_from_slice(&data[release..]);
        release
    }
}

/// The RDB of a full resynchronisation, without its framing.
pub(crate) struct RdbPayload<R = Reader> {
    reader: R,
    /// Kept open until the RDB is read.
    _writer: Option<super::client::Writer>,
    mode: Mode,
}

/// The error of a link closed before the diskless transfer's end mark.
const MARK_EOF: &str = "the server closed the replication link before the end of the RDB";

fn closed(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what)
}

impl<R: AsyncRead + Unpin> AsyncRead for RdbPayload<R> {
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
            Mode::Mark(state) => loop {
                if state.done || buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                let held = state.tail_len;
                let release = if buf.remaining() <= MARK_LEN {
                    // Too small to take the tail and read past it: read at
                    // most as many bytes as fit, so what is surely not the
                    // mark (all but the last 40) fits in `buf`.
                    let room = buf.remaining();
                    let mut small = [0u8; 2 * MARK_LEN];
                    small[..held].copy_from_slice(&state.tail[..held]);
                    let mut sub = ReadBuf::new(&mut small[held..held + room]);
                    ready!(Pin::new(&mut this.reader).poll_read(cx, &mut sub))?;
                    let total = held + sub.filled().len();
                    if total == held {
                        return Poll::Ready(Err(closed(MARK_EOF.into())));
                    }
                    let release = state.settle(&small[..total]);
                    buf.put_slice(&small[..release]);
                    release
                } else {
                    // The held-back tail goes first, then the reader
                    // appends straight into the caller's buffer (a large
                    // one bypasses the BufReader's too); the new last
                    // bytes are taken back.
                    let before = buf.filled().len();
                    buf.put_slice(&state.tail[..held]);
                    let polled = Pin::new(&mut this.reader).poll_read(cx, buf);
                    let total = buf.filled().len() - before;
                    if let Poll::Pending | Poll::Ready(Err(_)) = polled {
                        buf.set_filled(before);
                        return polled;
                    }
                    if total == held {
                        buf.set_filled(before);
                        return Poll::Ready(Err(closed(MARK_EOF.into())));
                    }
                    let release = state.settle(&buf.filled()[before..]);
                    buf.set_filled(before + release);
                    release
                };
                if release > 0 {
                    return Poll::Ready(Ok(()));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    /// A reader handing out `data` in pieces of the given sizes (cycled),
    /// saying "not yet" before every other piece.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
        pending: bool,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let size = self.sizes[self.turn % self.sizes.len()];
            self.turn += 1;
            let n = size.min(buf.remaining()).min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    const MARK: [u8; MARK_LEN] = *b"0123456789abcdef0123456789abcdef01234567";

    /// Reads a diskless payload framed from `wire` with reads of `reads`
    /// bytes (cycled); the RDB or the error.
    fn read_diskless(wire: Vec<u8>, pieces: Vec<usize>, reads: &[usize]) -> io::Result<Vec<u8>> {
        let mut payload = RdbPayload {
            reader: Pieces {
                data: wire,
                at: 0,
                sizes: pieces,
                turn: 0,
                pending: false,
            },
            _writer: None,
            mode: Mode::Mark(MarkState::new(MARK)),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut out = Vec::new();
            for turn in 0.. {
                let mut chunk = vec![0u8; reads[turn % reads.len()]];
                let n = payload.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
            Ok(out)
        })
    }

    proptest! {
        /// Whatever the network's and the caller's read sizes, the RDB
        /// comes out whole, without the mark.
        #[test]
        fn the_diskless_payload_ends_at_the_mark(
            rdb in proptest::collection::vec(any::<u8>(), 0..3000),
            pieces in proptest::collection::vec(1usize..600, 1..6),
            reads in proptest::collection::vec(prop_oneof![1usize..60, 60usize..5000], 1..6),
        ) {
            let mut wire = rdb.clone();
            wire.extend_from_slice(&MARK);
            prop_assert_eq!(read_diskless(wire, pieces, &reads).expect("payload"), rdb);
        }

        /// A link closed before the mark is an error, never a clean end,
        /// even when the RDB's last bytes look like part of the mark.
        #[test]
        fn a_payload_without_its_mark_is_an_error(
            rdb in proptest::collection::vec(any::<u8>(), 0..3000),
            partial_mark in 0usize..MARK_LEN,
            pieces in proptest::collection::vec(1usize..600, 1..6),
            reads in proptest::collection::vec(prop_oneof![1usize..60, 60usize..5000], 1..6),
        ) {
            let mut wire = rdb;
            wire.extend_from_slice(&MARK[..partial_mark]);
            let err = read_diskless(wire, pieces, &reads).expect_err("truncated payload");
            prop_assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        }
    }

    /// A server that stops sending in the middle of the RDB (alive, the
    /// link open, no reset) fails the capture once the limit passes, in
    /// both framings, after handing out what it did send.
    #[tokio::test]
    async fn a_server_silent_mid_rdb_fails_the_payload() {
        use super::super::idle::IdleLimit;
        use tokio::io::AsyncWriteExt;
        for mode in [
            Mode::Mark(MarkState::new(MARK)),
            Mode::Len {
                left: 1000,
                total: 1000,
            },
        ] {
            let (mut server, client) = tokio::io::duplex(4096);
            let mut reader = IdleLimit::new(client, "cache:6379".into());
            reader.set_limit(Some(Duration::from_millis(200)));
            let mut payload = RdbPayload {
                reader,
                _writer: None,
                mode,
            };
            server.write_all(&[b'R'; 300]).await.unwrap();
            let mut out = Vec::new();
            let err = tokio::time::timeout(Duration::from_secs(10), payload.read_to_end(&mut out))
                .await
                .expect("the limit, not the test's timeout, ends the read")
                .expect_err("silence mid-RDB is an error");
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
            assert!(err.to_string().contains("cache:6379"), "{err}");
            // A diskless payload holds back its last 40 bytes (they may be
            // the mark's start); a sized one hands out all it read.
            assert!(
                out.len() >= 300 - MARK_LEN && out.len() <= 300,
                "{}",
                out.len()
            );
            drop(server);
        }
    }
}
