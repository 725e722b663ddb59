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
//! Only the target is served: a primary told `REPLICAOF` asks for a
//! partial resynchronisation from its own history (`PSYNC <its
//! master_replid> <offset>`), so a connection naming another replication
//! id (a server left a replica of an earlier capsule that was killed, and
//! retrying an address and port this one now uses) is refused.
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
/// How long a loading target may stay silent: it sends a newline at
/// least every second while it loads.
const LOAD_IDLE: Duration = Duration::from_secs(120);
/// How long one `REPLICAOF NO ONE` may take.
const DETACH_CALL: Duration = Duration::from_secs(10);
/// How long a dropped restore waits for a loading target to detach it.
const DETACH_DROPPED: Duration = Duration::from_secs(600);
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
    // Armed before the command: a reply lost, or the restore dropped while
    // it waits for one, may leave the target a replica.
    let guard = Attached::new(conn);
    match client
        .raw_call(&[b"REPLICAOF", ip.as_bytes(), port.as_bytes()])
        .await?
    {
        Reply::Error(e) => {
            guard.disarm();
            return Ok(Attempt::Declined(format!("REPLICAOF: {e}")));
        }
        _ => drop(client),
    }
    tracing::info!(
        target = %endpoint, primary = %addr,
        "the target replicates from capsule until it has loaded the RDB; it refuses writes meanwhile"
    );
    // A primary asks for a partial resynchronisation from its own history.
    let target_replid = info.get("master_replid").filter(|id| id.len() == 40);
    let served = serve(
        listener,
        addr,
        target_replid.map(String::as_str),
        source,
        name,
        check_version,
        recorded,
    )
    .await;
    let detached = detach(conn).await;
    guard.disarm();
    if let Err(e) = detached {
        let data = match &served {
            Ok(Attempt::Loaded(_)) => "it holds the backup".to_string(),
            Ok(Attempt::Failed(reason)) => format!("{reason}; it may have been emptied"),
            Ok(Attempt::Declined(_)) | Err(_) => "its data is as it was".to_string(),
        };
        return Err(engine_error(
            &endpoint,
            "restore by replication",
            format!(
                "{e}; the target is still a replica of capsule's {addr}, which is gone: \
                 run REPLICAOF NO ONE on it ({data})"
            ),
        ));
    }
    tracing::debug!(target = %endpoint, "the target is a primary again");
    if let Ok(Attempt::Loaded(_)) = &served {
        over_maxmemory(conn).await?;
    }
    served
}

/// A replica loads past `maxmemory` (`replica-ignore-maxmemory`), so the
/// target, a primary again, may now hold more than its limit: with
/// `noeviction` every write would fail (a restore by `RESTORE` commands
/// would have failed instead, saying so), so that is an error; with an
/// eviction policy the target evicts keys of the backup, which is said.
async fn over_maxmemory(conn: &RedisConnection) -> Result<()> {
    let mut client = Client::connect(conn).await?;
    let info = client.info("memory").await?;
    let number = |k: &str| info.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (used, max) = (number("used_memory"), number("maxmemory"));
    if max == 0 || used <= max {
        return Ok(());
    }
    let policy = info.get("maxmemory_policy").map_or("", String::as_str);
    let what = format!(
        "the target loaded the backup and holds {used} bytes, over its maxmemory of {max} \
         ({policy})"
    );
    if policy == "noeviction" {
        Err(engine_error(
            &client.endpoint,
            "restore by replication",
            format!("{what}: every write to it will fail until maxmemory is raised"),
        ))
    } else {
        tracing::warn!(target = %client.endpoint, "{what}: it will evict keys of the backup");
        Ok(())
    }
}

/// Serves the RDB to the first connection on `listener`.
async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    target_replid: Option<&str>,
    source: &dyn ArtifactSource,
    name: &str,
    check_version: &(dyn Fn(u32) -> Result<()> + Sync),
    recorded: Option<&Fingerprint>,
) -> Result<Attempt> {
    // The first connection whose `PSYNC` names the target's own
    // replication id: a server left a replica of an earlier capsule (one
    // killed mid-load) that happens to retry this address and port is
    // not served the RDB.
    let deadline = tokio::time::Instant::now() + ACCEPT;
    let (mut r, mut w) = loop {
        let (socket, peer) = match tokio::time::timeout_at(deadline, listener.accept()).await {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(e)) => return Ok(Attempt::Declined(format!("accepting on {addr}: {e}"))),
            Err(_) => {
                return Ok(Attempt::Declined(format!(
                    "the target did not connect to capsule at {addr} within {ACCEPT:?} \
                     (a firewall or network policy between them?)"
                )));
            }
        };
        let _ = socket.set_nodelay(true);
        let (r, mut w) = socket.into_split();
        let mut r = BufReader::new(r);
        // A connection that stalls or says something else is dropped, and
        // the target may still come.
        let hello = match tokio::time::timeout_at(deadline, handshake(&mut r, &mut w)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::warn!(primary = %addr, %peer, error = %e, "a replication handshake failed; waiting for the target");
                continue;
            }
            Err(_) => continue, // the deadline: the next accept says so
        };
        if target_replid.is_some_and(|id| hello.replid != id.as_bytes()) {
            tracing::warn!(
                primary = %addr, %peer,
                "a server that is not the target connected to capsule's replication port \
                 (a replica left by an earlier, killed restore?); refused"
            );
            let _ = w.write_all(b"-ERR not the restore's target\r\n").await;
            continue;
        }
        if !hello.eof {
            let _ = w
                .write_all(b"-ERR capsule sends diskless transfers only\r\n")
                .await;
            return Ok(Attempt::Declined(
                "the target does not take diskless transfers (REPLCONF capa eof)".into(),
            ));
        }
        tracing::debug!(primary = %addr, %peer, "the target connected");
        break (r, w);
    };
    drop(listener);
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
    let (mut held, mut next) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut held_len = 0;
    loop {
        let n = stream
            .read(&mut next)
            .await
            .map_err(|e| Error::from_stream(e).unwrap_or_else(|e| corrupt(source, name, e)))?;
        if n == 0 {
            break;
        }
        if let Err(e) = w.write_all(&held[..held_len]).await {
            return Ok(Attempt::Declined(format!(
                "the target closed the replication link during the transfer: {e}"
            )));
        }
        std::mem::swap(&mut held, &mut next);
        held_len = n;
    }
    let held = &held[..held_len];
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
    let sent = send_tail(&mut w, held, &mark).await;
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

/// What a replica said in its handshake.
struct Hello {
    /// It announced `capa eof` (takes diskless transfers).
    eof: bool,
    /// The replication id of its `PSYNC <replid> <offset>` (`?` when it
    /// has none; empty for `SYNC`).
    replid: Vec<u8>,
}

/// Answers the replica's handshake (`PING`, `AUTH`, `REPLCONF …`) up to
/// its `PSYNC`.
async fn handshake(
    r: &mut BufReader<OwnedReadHalf>,
    w: &mut (impl AsyncWrite + Unpin),
) -> std::io::Result<Hello> {
    let mut eof = false;
    loop {
        let mut args = command(r).await?;
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
            b"PSYNC" if args.len() >= 2 => {
                return Ok(Hello {
                    eof,
                    replid: args.swap_remove(1),
                });
            }
            b"SYNC" => {
                return Ok(Hello {
                    eof: false,
                    replid: Vec::new(),
                });
            }
            _ => {
                w.write_all(b"-ERR unexpected during the handshake\r\n")
                    .await?
            }
        }
        w.flush().await?;
    }
}

/// Reads one command (an array of bulk strings).
async fn command(r: &mut BufReader<OwnedReadHalf>) -> std::io::Result<Vec<Vec<u8>>> {
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
/// has loaded the RDB; fails when it stays silent for [`LOAD_IDLE`] (it
/// sends newlines while it loads).
async fn acknowledged(r: &mut BufReader<OwnedReadHalf>) -> std::io::Result<()> {
    let silent = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the target sent nothing for {LOAD_IDLE:?}"),
        )
    };
    loop {
        let buf = tokio::time::timeout(LOAD_IDLE, r.fill_buf())
            .await
            .map_err(|_| silent())??;
        match buf.first() {
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the target closed the link",
                ));
            }
            Some(b'\r' | b'\n') => {
                r.consume(1);
                continue;
            }
            Some(_) => {}
        }
        let args = tokio::time::timeout(LOAD_IDLE, command(r))
            .await
            .map_err(|_| silent())??;
        if args.len() >= 2
            && args[0].eq_ignore_ascii_case(b"REPLCONF")
            && args[1].eq_ignore_ascii_case(b"ACK")
        {
            return Ok(());
        }
    }
}

/// `REPLICAOF NO ONE`, retried while the target cannot be reached or is
/// still loading, for up to [`DETACH`].
async fn detach(conn: &RedisConnection) -> Result<()> {
    let deadline = Instant::now() + DETACH;
    loop {
        let attempt = async {
            let mut c = Client::connect(conn).await?;
            c.raw_call(&[b"REPLICAOF", b"NO", b"ONE"]).await
        };
        let reply = tokio::time::timeout(DETACH_CALL, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(engine_error(
                    &conn.endpoint(),
                    "REPLICAOF NO ONE",
                    format!("no answer within {DETACH_CALL:?}"),
                ))
            });
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
        let result = detach_after_load(&conn, DETACH_DROPPED, || {
            tracing::warn!(target = %endpoint, "restore interrupted while the target loads the RDB: waiting for it to finish, up to 10 min, to detach it (kill capsule to leave it a replica instead)");
        });
        match result {
            Ok(()) => {
                tracing::warn!(target = %endpoint, "restore interrupted: the target was detached from capsule (REPLICAOF NO ONE); it holds its old data, the restored data, or, if a load from the socket was cut, nothing")
            }
            Err(e) => {
                tracing::error!(target = %endpoint, error = %e, "restore interrupted: the target is still a replica of capsule, which is gone; run REPLICAOF NO ONE on it")
            }
        }
    }
}

/// Sends `REPLICAOF NO ONE` until the target takes it, for at most
/// `patience`. A target loading the RDB answers `LOADING`, or (between
/// two `loading-process-events-interval-bytes`, or with a slow disk) does
/// not answer at all for a while: both mean "busy", and `busy` is called
/// the first time.
fn detach_after_load(
    conn: &RedisConnection,
    patience: Duration,
    mut busy: impl FnMut(),
) -> std::io::Result<()> {
    let deadline = Instant::now() + patience;
    let mut said = false;
    loop {
        match detach_blocking(conn) {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                if !said {
                    busy();
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// A `LOADING` reply, or no reply within the read timeout.
fn is_busy(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ) || e.to_string().starts_with("LOADING")
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
            // The server's error without its `-`: `LOADING …`, `NOAUTH …`.
            String::from_utf8_lossy(last)
                .trim()
                .trim_start_matches('-')
                .to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use capsule_core::{BackupId, ByteStream, RequestType, ServiceType, Statefile};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    use super::*;
    use crate::redis::rdb::RdbWriter;

    const TARGET: &str = "1111111111111111111111111111111111111111";

    /// An in-memory backup of `rdb`.
    struct Memory {
        statefile: Statefile,
        rdb: Vec<u8>,
    }

    #[async_trait::async_trait]
    impl ArtifactSource for Memory {
        fn statefile(&self) -> &Statefile {
            &self.statefile
        }
        async fn verify(&self, _name: &str) -> Result<()> {
            Ok(())
        }
        async fn open(&self, _name: &str) -> Result<ByteStream> {
            Ok(Box::new(std::io::Cursor::new(self.rdb.clone())))
        }
    }

    /// An RDB of `keys` strings of 1 KiB (several of capsule's chunks).
    fn rdb(keys: u32) -> Vec<u8> {
        let mut w = RdbWriter::new(10);
        w.select_db(0);
        for i in 0..keys {
            let mut value = vec![0u8]; // string type, then its encoding
            value.extend_from_slice(&[0x44, 0x00]); // 14-bit length 1024
            value.extend((0..1024).map(|j| (i as usize * 7 + j) as u8));
            w.entry(format!("k{i}").as_bytes(), None, &value);
        }
        w.finish();
        w.take()
    }

    /// A replica's handshake, as Redis sends it, naming `replid`.
    async fn hello(addr: SocketAddr, replid: &str) -> (BufReader<OwnedReadHalf>, impl AsyncWrite) {
        let (r, mut w) = TcpStream::connect(addr).await.unwrap().into_split();
        let mut out = Vec::new();
        resp::encode(&mut out, &[b"PING"]);
        resp::encode(&mut out, &[b"REPLCONF", b"listening-port", b"6379"]);
        resp::encode(
            &mut out,
            &[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"],
        );
        resp::encode(&mut out, &[b"PSYNC", replid.as_bytes(), b"42"]);
        w.write_all(&out).await.unwrap();
        (BufReader::new(r), w)
    }

    #[tokio::test]
    async fn only_the_target_is_served_the_rdb_framed_with_the_mark() {
        let bytes = rdb(1500);
        assert!(bytes.len() > 3 * CHUNK, "{}", bytes.len());
        let source = Memory {
            statefile: Statefile::new(
                BackupId::generate(ServiceType::Redis),
                RequestType::Manual,
                chrono::Utc::now(),
            ),
            rdb: bytes.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let check = |_: u32| Ok(());
        let serving = serve(
            listener,
            addr,
            Some(TARGET),
            &source,
            "dump.rdb",
            &check,
            None,
        );
        let replicas = async {
            // A connection that closes during its handshake is dropped.
            drop(TcpStream::connect(addr).await.unwrap());
            // A server that is not the target is refused and closed.
            let (mut r, _w) = hello(addr, "2222222222222222222222222222222222222222").await;
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(10), r.read_to_string(&mut answer))
                .await
                .expect("the refused replica was not closed")
                .unwrap();
            assert!(
                answer.ends_with("-ERR not the restore's target\r\n"),
                "{answer:?}"
            );
            // The target is served: +FULLRESYNC, $EOF:<mark>, the RDB, the mark.
            let (mut r, mut w) = hello(addr, TARGET).await;
            let mut lines = Vec::new();
            while lines.len() < 5 {
                lines.push(resp::read_line(&mut r).await.unwrap());
            }
            assert_eq!(
                lines[..3],
                [b"+PONG".to_vec(), b"+OK".to_vec(), b"+OK".to_vec()]
            );
            assert!(lines[3].starts_with(b"+FULLRESYNC "), "{:?}", lines[3]);
            let mark = lines[4].strip_prefix(b"$EOF:").unwrap().to_vec();
            assert_eq!(mark.len(), 40);
            let mut payload = vec![0u8; bytes.len() + 40];
            r.read_exact(&mut payload).await.unwrap();
            assert_eq!(&payload[..bytes.len()], &bytes[..]);
            assert_eq!(&payload[bytes.len()..], &mark[..]);
            // Keep-alive newlines while loading, then the acknowledgement.
            let mut ack = b"\n\n".to_vec();
            resp::encode(&mut ack, &[b"REPLCONF", b"ACK", b"0"]);
            w.write_all(&ack).await.unwrap();
            (r, w)
        };
        let (served, _replica) = tokio::join!(serving, replicas);
        match served.unwrap() {
            Attempt::Loaded(stats) => {
                assert_eq!(stats.sent.get(&0), Some(&1500));
                assert_eq!(stats.bytes, bytes.len() as u64);
            }
            Attempt::Declined(r) | Attempt::Failed(r) => panic!("{r}"),
        }
    }

    /// A fake target answering each `REPLICAOF NO ONE` connection in turn
    /// with `replies` (`None`: silent for 2.5 s, past the read timeout).
    fn fake_target(
        replies: Vec<Option<&'static str>>,
    ) -> (RedisConnection, std::thread::JoinHandle<()>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for reply in replies {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).contains("REPLICAOF"));
                match reply {
                    Some(r) => s.write_all(r.as_bytes()).unwrap(),
                    None => std::thread::sleep(Duration::from_millis(2500)),
                }
            }
        });
        let conn = RedisConnection {
            port,
            ..RedisConnection::default()
        };
        (conn, server)
    }

    #[test]
    fn a_loading_or_silent_target_is_waited_for_then_detached() {
        let (conn, server) = fake_target(vec![
            None,
            Some("-LOADING Redis is loading the dataset in memory\r\n"),
            Some("+OK\r\n"),
        ]);
        let mut busy = 0;
        detach_after_load(&conn, Duration::from_secs(30), || busy += 1).unwrap();
        assert_eq!(busy, 1);
        server.join().unwrap();

        let (conn, server) = fake_target(vec![Some("-ERR no way\r\n")]);
        let e = detach_after_load(&conn, Duration::from_secs(30), || busy += 1).unwrap_err();
        assert_eq!(e.to_string(), "ERR no way");
        assert_eq!(busy, 1);
        server.join().unwrap();

        // Patience has an end.
        let (conn, server) = fake_target(vec![None]);
        let e = detach_after_load(&conn, Duration::from_secs(1), || {}).unwrap_err();
        assert!(is_busy(&e), "{e}");
        server.join().unwrap();
    }
}
