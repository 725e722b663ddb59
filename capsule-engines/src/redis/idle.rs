//! A read half that gives up when the server goes silent.
//!
//! A capture only reads: when the server dies or the network partitions
//! without a reset reaching capsule, a read waits forever, the backup's
//! heartbeat goes on, its statefile stays `running`, and the schedule
//! starts no later backup of that service. [`IdleLimit`] turns silence
//! into an error: once armed, a read that has waited that long for a
//! single byte fails with [`io::ErrorKind::TimedOut`], naming the server.
//! Only time spent waiting *on the server* counts: while the caller is
//! busy elsewhere (the pipeline pushing back), nothing is pending and
//! the clock is stopped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A reader whose reads fail after `limit` without a byte (no limit until
/// [`IdleLimit::set_limit`]).
pub(crate) struct IdleLimit<R> {
    inner: R,
    /// `host:port`, for the error.
    endpoint: String,
    limit: Option<Duration>,
    /// Allocated once; reset each time a read starts waiting.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<R> IdleLimit<R> {
    /// Wraps `inner`, the read half of the connection to `endpoint`.
    pub(crate) fn new(inner: R, endpoint: String) -> Self {
        IdleLimit {
            inner,
            endpoint,
            limit: None,
            timer: None,
            armed: false,
        }
    }

    /// Sets (or, with `None` or zero, lifts) the limit for the reads to
    /// come.
    pub(crate) fn set_limit(&mut self, limit: Option<Duration>) {
        self.limit = limit.filter(|d| !d.is_zero());
        self.armed = false;
    }
}

/// `limit` for messages: `120 s`, or `500 ms` below a whole second.
pub(crate) fn shown(limit: Duration) -> String {
    if limit.subsec_nanos() == 0 {
        format!("{} s", limit.as_secs())
    } else {
        format!("{} ms", limit.as_millis())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for IdleLimit<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if polled.is_ready() {
            this.armed = false;
            return polled;
        }
        let Some(limit) = this.limit else {
            return Poll::Pending;
        };
        if !this.armed {
            let deadline = Instant::now() + limit;
            match &mut this.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            this.armed = true;
        }
        let timer = this.timer.as_mut().expect("armed above");
        if timer.as_mut().poll(cx).is_ready() {
            this.armed = false;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "redis {}: nothing received for {}: the server or the network stopped \
                     answering",
                    this.endpoint,
                    shown(limit)
                ),
            )));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMIT: Duration = Duration::from_millis(200);

    fn limited(r: tokio::io::DuplexStream) -> IdleLimit<tokio::io::DuplexStream> {
        let mut r = IdleLimit::new(r, "cache:6379".into());
        r.set_limit(Some(LIMIT));
        r
    }

    #[tokio::test]
    async fn a_silent_server_fails_the_read_naming_it() {
        let (_server, client) = tokio::io::duplex(64);
        let mut r = limited(client);
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), r.read(&mut [0u8; 8]))
            .await
            .expect("the limit, not the test's timeout, ends the read")
            .expect_err("silence is an error");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            err.to_string()
                .contains("redis cache:6379: nothing received"),
            "{err}"
        );
        assert!(started.elapsed() >= LIMIT, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn bytes_arriving_within_the_limit_keep_it_going() {
        let (mut server, client) = tokio::io::duplex(64);
        let mut r = limited(client);
        let feed = tokio::spawn(async move {
            for i in 0..5u8 {
                tokio::time::sleep(LIMIT / 2).await;
                server.write_all(&[i]).await.unwrap();
            }
        });
        let mut got = Vec::new();
        for _ in 0..5 {
            let mut b = [0u8; 1];
            r.read_exact(&mut b)
                .await
                .expect("each byte within the limit");
            got.push(b[0]);
        }
        assert_eq!(got, [0, 1, 2, 3, 4]);
        feed.await.unwrap();
    }

    #[tokio::test]
    async fn time_the_caller_spends_elsewhere_does_not_count() {
        let (mut server, client) = tokio::io::duplex(64);
        let mut r = limited(client);
        server.write_all(b"a").await.unwrap();
        let mut b = [0u8; 1];
        r.read_exact(&mut b).await.unwrap();
        // The caller is busy for longer than the limit, then reads again
        // while the server answers a moment later.
        tokio::time::sleep(LIMIT * 3).await;
        let feed = tokio::spawn(async move {
            tokio::time::sleep(LIMIT / 4).await;
            server.write_all(b"b").await.unwrap();
            server
        });
        r.read_exact(&mut b)
            .await
            .expect("only waiting on the server counts");
        assert_eq!(&b, b"b");
        drop(feed.await.unwrap());
    }

    #[tokio::test]
    async fn without_a_limit_a_read_waits() {
        for limit in [None, Some(Duration::ZERO)] {
            let (_server, client) = tokio::io::duplex(64);
            let mut r = IdleLimit::new(client, "cache:6379".into());
            r.set_limit(limit);
            let waited = tokio::time::timeout(LIMIT * 2, r.read(&mut [0u8; 8])).await;
            assert!(waited.is_err(), "{limit:?}: the read is still waiting");
        }
    }

    #[test]
    fn limits_show_in_seconds_or_milliseconds() {
        assert_eq!(shown(Duration::from_secs(120)), "120 s");
        assert_eq!(shown(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(shown(Duration::from_millis(200)), "200 ms");
    }
}
