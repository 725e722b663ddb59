//! Restore by replication: when the target is to be emptied anyway
//! (`--flush`, drills), capsule serves the RDB as a primary and has the
//! target replicate from it (`REPLICAOF <capsule> <port>`). The target
//! loads the RDB the way it loads its own dump at start, about twice as
//! fast as it executes one `RESTORE` per key, and capsule parses nothing
//! but the census it checks the counts with.
//!
//! Nothing on the target changes until the whole RDB has been sent and
//! checked: the stored checksum, the RDB's own framing and CRC-64, and its
//! key counts against the fingerprint are all known before the last bytes
//! and the end-of-transfer mark go out, and a replica keeps its data until
//! the transfer is complete (it writes it to a file first, or loads it
//! aside with `repl-diskless-load swapdb`). Until then, any failure
//! detaches the target (`REPLICAOF NO ONE`) with its data as it was.
//!
//! While it replicates, the target refuses writes (`READONLY`). It is
//! detached as soon as it acknowledges the load, on every error, and,
//! when capsule's task is dropped (Ctrl-C), from the guard's `Drop`. Only
//! a killed capsule leaves it a replica of a primary that is gone; the log
//! says so and how to detach it by hand.
//!
//! The attempt is declined, before anything is asked of the target, when
//! the target is itself a replica, has replicas (they would resynchronise
//! from it), or is reached over TLS; and, after `REPLICAOF`, when the
//! target refuses it (cluster mode, ACLs, renamed commands) or cannot
//! connect back to capsule within [`ACCEPT`] (a network policy between
//! them). The caller then restores with `RESTORE` commands.

use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use capsule_core::{ArtifactSource, Error, Fingerprint, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedReadHalf;

use super::client::{Client, engine_error};
use super::connection::RedisConnection;
use super::feed::{self, FeedStats};
use super::resp::{self, Reply};
use super::restore::check_streamed;
use super::stream::tee;

/// How long the target has to connect to capsule after `REPLICAOF`.
pub(crate) const ACCEPT: Duration = Duration::from_secs(10);
/// How long the replication handshake may take once connected.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long `REPLICAOF NO ONE` is retried while the target cannot be
/// reached or answers `LOADING`.
const DETACH: Duration = Duration::from_secs(60);
/// Bytes read from the artifact per write to the target.
const CHUNK: usize = 256 * 1024;

/// What an attempt came to.
pub(crate) enum Attempt {
    /// The target loaded the RDB and is a primary again.
    Loaded(FeedStats),
    /// Replication was not possible; the target's data did not change.
    Declined(String),
    /// The target was sent the whole RDB and did not load it: it may
    /// have been emptied (it says why in its log).
    Failed(String),
}

/// Tries to load `name` of `source` into the server at `conn` by
/// replication. `check_version` (the target reads the RDB's version) and
/// `recorded` (the backup's fingerprint) are checked against the RDB
/// before the target is committed to it.
///
/// # Errors
/// Connection failures; [`Error::Corrupt`] naming the object when the
/// artifact does not check out; [`Error::VerificationFailed`] when its
/// key counts differ from `recorded`; in each case the target's data is
/// as it was. [`Error::Engine`] when the target cannot be detached.
pub(crate) async fn load(
    conn: &RedisConnection,
    source: &dyn ArtifactSource,
    name: &str,
    check_version: &(dyn Fn(u32) -> Result<()> + Sync),
    recorded: Option<&Fingerprint>,
) -> Result<Attempt> {
    let mut client = Client::connect(conn).await?;
    let endpoint = client.endpoint.clone();
    if conn.tls {
        return Ok(Attempt::Declined(
            "the target is reached over TLS, and its replication link may not be".into(),
        ));
    }
    let info = client.info("replication").await?;
    match info.get("role").map(String::as_str) {
        Some("master") => {}
        role => {
            return Ok(Attempt::Declined(format!(
                "the target's role is {}, not a primary",
                role.unwrap_or("unknown")
            )));
        }
    }
    let replicas: u64 = info
        .get("connected_slaves")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if replicas > 0 {
        return Ok(Attempt::Declined(format!(
            "the target has {replicas} replica(s), which would all resynchronise"
        )));
    }
    let Some(local) = client.local_addr else {
        return Ok(Attempt::Declined("capsule's own address is unknown".into()));
    };
    let listener = match TcpListener::bind((local.ip(), 0)).await {
        Ok(l) => l,
        Err(e) => {
            return Ok(Attempt::Declined(format!(
                "cannot listen on {}: {e}",
                local.ip()
            )));
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the replication listener's address", e))?;
    let ip = addr.ip().to_string();
    let port = addr.port().to_string();
    match client
        .raw_call(&[b"REPLICAOF", ip.as_bytes(), port.as_bytes()])
        .await?
    {
        Reply::Error(e) => return Ok(Attempt::Declined(format!("REPLICAOF: {e}"))),
        _ => drop(client),
    }
    let guard = Attached::new(conn);
    tracing::info!(
        target = %endpoint, primary = %addr,
        "the target replicates from capsule until it has loaded the RDB; it refuses writes meanwhile"
    );
    let served = serve(listener, addr, source, name, check_version, recorded).await;
    let detached = detach(conn).await;
    guard.disarm();
    if let Err(e) = detached {
        return Err(engine_error(
            &endpoint,
            "restore by replication",
            format!(
                "{e}; the target is still a replica of capsule's {addr}, which is gone: \
                 run REPLICAOF NO ONE on it"
            ),
        ));
    }
    tracing::debug!(target = %endpoint, "the target is a primary again");
    served
}

/// Serves the RDB to the first connection on `listener`.
async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    source: &dyn ArtifactSource,
    name: &str,
    check_version: &(dyn Fn(u32) -> Result<()> + Sync),
    recorded: Option<&Fingerprint>,
) -> Result<Attempt> {
    let socket = match tokio::time::timeout(ACCEPT, listener.accept()).await {
        Ok(Ok((socket, _))) => socket,
        Ok(Err(e)) => return Ok(Attempt::Declined(format!("accepting on {addr}: {e}"))),
        Err(_) => {
            return Ok(Attempt::Declined(format!(
                "the target did not connect to capsule at {addr} within {ACCEPT:?} \
                 (a firewall or network policy between them?)"
            )));
        }
    };
    drop(listener);
    let _ = socket.set_nodelay(true);
    let (r, mut w) = socket.into_split();
    let mut r = BufReader::new(r);
    match tokio::time::timeout(HANDSHAKE, handshake(&mut r, &mut w)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            let _ = w
                .write_all(b"-ERR capsule sends diskless transfers only\r\n")
                .await;
            return Ok(Attempt::Declined(
                "the target does not take diskless transfers (REPLCONF capa eof)".into(),
            ));
        }
        Ok(Err(e)) => return Ok(Attempt::Declined(format!("replication handshake: {e}"))),
        Err(_) => return Ok(Attempt::Declined("replication handshake timed out".into())),
    }
    let (replid, mark) = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        let mut hex40 = || -> String {
            (0..40)
                .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
                .collect()
        };
        (hex40(), hex40())
    };
    let started = Instant::now();
    let stream = source.open(name).await?;
    let (mut stream, verdict) = tee(stream, |r| feed::census(r).map_err(|e| e.to_string()));
    let head = format!("+FULLRESYNC {replid} 0\r\n$EOF:{mark}\r\n");
    if let Err(e) = w.write_all(head.as_bytes()).await {
        return Ok(Attempt::Declined(format!("the replication link: {e}")));
    }
    // One chunk is held back until the stream has ended cleanly: the
    // target must not see the end of the RDB before capsule has checked
    // all of it.
    let (mut held, mut next) = (Vec::with_capacity(CHUNK), vec![0u8; CHUNK]);
    loop {
        let n = stream
            .read(&mut next)
            .await
            .map_err(|e| corrupt(source, name, e))?;
        if n == 0 {
            break;
        }
        if !held.is_empty()
            && let Err(e) = w.write_all(&held).await
        {
            return Ok(Attempt::Declined(format!(
                "the target closed the replication link during the transfer: {e}"
            )));
        }
        held.clear();
        held.extend_from_slice(&next[..n]);
    }
    let stats = verdict
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or_else(|| corrupt(source, name, "the RDB parser did not report"))?;
    if stats.module_aux > 0 {
        return Ok(Attempt::Declined(format!(
            "the RDB holds {} module aux record(s), which the target may not load",
            stats.module_aux
        )));
    }
    check_version(stats.version)?;
    check_streamed(&stats, recorded, &source.statefile().backup_id.to_string())?;
    let sent = send_tail(&mut w, &held, &mark).await;
    if let Err(e) = sent {
        return Ok(Attempt::Failed(format!(
            "the replication link broke at the end of the transfer: {e}"
        )));
    }
    tracing::debug!(
        bytes = stats.bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "RDB sent; waiting for the target to load it"
    );
    match acknowledged(&mut r).await {
        Ok(()) => {
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "the target loaded the RDB"
            );
            Ok(Attempt::Loaded(stats))
        }
        Err(e) => Ok(Attempt::Failed(format!(
            "the target closed the replication link instead of acknowledging the load ({e}); \
             its log says why"
        ))),
    }
}

async fn send_tail(
    w: &mut (impl AsyncWrite + Unpin),
    held: &[u8],
    mark: &str,
) -> std::io::Result<()> {
    w.write_all(held).await?;
    w.write_all(mark.as_bytes()).await?;
    w.flush().await
}

fn corrupt(source: &dyn ArtifactSource, name: &str, reason: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        id: source.statefile().backup_id.to_string(),
        object: name.to_string(),
        reason: reason.to_string(),
    }
}

/// Answers the replica's handshake (`PING`, `AUTH`, `REPLCONF …`) up to
/// its `PSYNC`; true when it announced `capa eof`.
async fn handshake(
    r: &mut BufReader<OwnedReadHalf>,
    w: &mut (impl AsyncWrite + Unpin),
) -> std::io::Result<bool> {
    let mut eof = false;
    loop {
        let args = command(r).await?;
        let name = args
            .first()
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default();
        match name.as_slice() {
            b"PING" => w.write_all(b"+PONG\r\n").await?,
            b"AUTH" => w.write_all(b"+OK\r\n").await?,
            b"REPLCONF" => {
                eof |= args.windows(2).any(|p| {
                    p[0].eq_ignore_ascii_case(b"capa") && p[1].eq_ignore_ascii_case(b"eof")
                });
                w.write_all(b"+OK\r\n").await?
            }
            b"PSYNC" => return Ok(eof),
            b"SYNC" => return Ok(false),
            _ => {
                w.write_all(b"-ERR unexpected during the handshake\r\n")
                    .await?
            }
        }
        w.flush().await?;
    }
}

/// Reads one command (an array of bulk strings), skipping the newlines a
/// replica sends to keep the link alive while it loads.
async fn command(r: &mut BufReader<OwnedReadHalf>) -> std::io::Result<Vec<Vec<u8>>> {
    loop {
        let buf = r.fill_buf().await?;
        match buf.iter().position(|b| !matches!(b, b'\r' | b'\n')) {
            Some(0) => break,
            Some(n) => r.consume(n),
            None if buf.is_empty() => break, // EOF: read_reply says so
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
    match resp::read_reply(r).await? {
        Reply::Array(Some(items)) => Ok(items
            .into_iter()
            .map(|i| match i {
                Reply::Bulk(Some(b)) => b,
                other => other.text().unwrap_or_default().into_bytes(),
            })
            .collect()),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected {other:?} from the replica"),
        )),
    }
}

/// Waits for the replica's first `REPLCONF ACK`, which it sends once it
/// has loaded the RDB.
async fn acknowledged(r: &mut BufReader<OwnedReadHalf>) -> std::io::Result<()> {
    loop {
        let args = command(r).await?;
        if args.len() >= 2
            && args[0].eq_ignore_ascii_case(b"REPLCONF")
            && args[1].eq_ignore_ascii_case(b"ACK")
        {
            return Ok(());
        }
    }
}

/// `REPLICAOF NO ONE`, retried while the target is still loading.
async fn detach(conn: &RedisConnection) -> Result<()> {
    let deadline = Instant::now() + DETACH;
    loop {
        let reply = match Client::connect(conn).await {
            Ok(mut c) => c.raw_call(&[b"REPLICAOF", b"NO", b"ONE"]).await,
            Err(e) => Err(e),
        };
        match reply {
            Ok(Reply::Error(e)) if e.starts_with("LOADING") && Instant::now() < deadline => {}
            Ok(Reply::Error(e)) => {
                return Err(engine_error(&conn.endpoint(), "REPLICAOF NO ONE", e));
            }
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Detaches the target when the restore is dropped before it could
/// (Ctrl-C, a cancelled job): a blocking `REPLICAOF NO ONE`, as the
/// runtime may be going away.
struct Attached {
    conn: Option<RedisConnection>,
}

impl Attached {
    fn new(conn: &RedisConnection) -> Self {
        Attached {
            conn: Some(conn.clone()),
        }
    }

    fn disarm(mut self) {
        self.conn = None;
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let endpoint = conn.endpoint();
        match detach_blocking(&conn) {
            Ok(()) => {
                tracing::warn!(target = %endpoint, "restore interrupted: the target was detached from capsule (REPLICAOF NO ONE); its data may be the old or the restored")
            }
            Err(e) => {
                tracing::error!(target = %endpoint, error = %e, "restore interrupted: the target is still a replica of capsule, which is gone; run REPLICAOF NO ONE on it")
            }
        }
    }
}

fn detach_blocking(conn: &RedisConnection) -> std::io::Result<()> {
    let timeout = Duration::from_secs(2);
    let addr = (conn.host.as_str(), conn.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut out = Vec::new();
    let mut replies = 1;
    if let Some(password) = &conn.password {
        replies += 1;
        match &conn.username {
            Some(u) => resp::encode(
                &mut out,
                &[b"AUTH", u.as_bytes(), password.expose().as_bytes()],
            ),
            None => resp::encode(&mut out, &[b"AUTH", password.expose().as_bytes()]),
        }
    }
    resp::encode(&mut out, &[b"REPLICAOF", b"NO", b"ONE"]);
    s.write_all(&out)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.iter().filter(|&&b| b == b'\n').count() < replies {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let last = got
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .nth(replies - 1)
        .unwrap_or_default();
    if last.starts_with(b"+OK") {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(last).trim().to_string(),
        ))
    }
}
