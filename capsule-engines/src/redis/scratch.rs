//! Restore drills: into the scratch server of
//! [`RedisOptions::verify_connection`](super::RedisOptions::verify_connection)
//! (flushed before and after), or into a `redis-server` started for the
//! drill on a free loopback port, in a temporary directory, without
//! persistence, and stopped afterwards.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use capsule_core::{ArtifactSource, Error, Result};
use tokio::process::{Child, Command};

use super::RedisEngine;
use super::client::Client;
use super::connection::RedisConnection;
use super::restore::{self, RedisRestoreReport, Target};

/// How long a started server may take to answer `PING`.
const READY: Duration = Duration::from_secs(20);

/// Runs the drill of `source` for `engine`.
pub(crate) async fn drill(
    engine: &RedisEngine,
    source: &dyn ArtifactSource,
) -> Result<RedisRestoreReport> {
    if let Some(conn) = &engine.options.verify_connection {
        refuse_if_in_use(conn).await?;
        let result = restore::restore(engine, conn, source, Target::Scratch).await;
        if let Ok(mut c) = Client::connect(conn).await {
            let _ = c.call(&[b"FLUSHALL"]).await;
        }
        return result;
    }
    let databases = source
        .statefile()
        .engine
        .as_ref()
        .and_then(|e| e.fingerprint.as_ref())
        .and_then(|f| {
            f.counts
                .keys()
                .filter_map(|k| k.strip_prefix("db")?.parse::<u64>().ok())
                .max()
        })
        .map_or(16, |max| (max + 1).max(16));
    let binary = engine
        .options
        .redis_server
        .clone()
        .unwrap_or_else(|| PathBuf::from("redis-server"));
    let server = ScratchServer::start(&binary, databases).await?;
    let result = restore::restore(engine, &server.connection, source, Target::Scratch).await;
    server.stop().await;
    result
}

/// A drill empties its scratch server before and after, so it takes only
/// an empty one: a server holding keys is someone's data (a production
/// URL given as `--verify-url` by mistake), left as it is.
async fn refuse_if_in_use(conn: &RedisConnection) -> Result<()> {
    let mut client = Client::connect(conn).await?;
    let keyspace = client.keyspace().await?;
    if keyspace.is_empty() {
        return Ok(());
    }
    let total: u64 = keyspace.values().sum();
    let dbs: Vec<String> = keyspace
        .iter()
        .map(|(db, n)| format!("db{db}={n}"))
        .collect();
    Err(Error::invalid(
        "restore drill",
        format!(
            "restore drill: the scratch server {} holds {total} keys ({}) and a drill \
             empties its scratch server: nothing was changed; give an empty server \
             (--verify-url), or FLUSHALL this one if its keys are expendable",
            conn.endpoint(),
            dbs.join(", ")
        ),
    ))
}

/// A throwaway `redis-server`.
struct ScratchServer {
    child: Child,
    connection: RedisConnection,
    dir: tempfile::TempDir,
}

impl ScratchServer {
    async fn start(binary: &Path, databases: u64) -> Result<ScratchServer> {
        let mut dir = tempfile::Builder::new()
            .prefix("capsule-redis-drill-")
            .tempdir()
            .map_err(|e| Error::io("creating the drill's directory", e))?;
        let mut last = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| Error::io("finding a free port", e))?
                .port();
            let log = dir.path().join("redis.log");
            let mut cmd = Command::new(binary);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--databases", &databases.to_string()])
                .arg("--dir")
                .arg(dir.path())
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            let child = cmd.spawn().map_err(|e| {
                Error::Unsupported(format!(
                    "restore drill: cannot start {} ({e}); install redis-server or pass a scratch server (--verify-url)",
                    binary.display()
                ))
            })?;
            let connection = RedisConnection {
                port,
                ..RedisConnection::default()
            };
            let mut server = ScratchServer {
                child,
                connection,
                dir,
            };
            match server.wait_ready().await {
                Ok(()) => {
                    tracing::info!(port, "scratch redis-server started for the drill");
                    return Ok(server);
                }
                Err(e) => {
                    last = format!(
                        "{e}: {}",
                        std::fs::read_to_string(&log)
                            .unwrap_or_default()
                            .lines()
                            .last()
                            .unwrap_or("")
                    );
                    let _ = server.child.kill().await;
                    dir = server.dir;
                }
            }
        }
        Err(Error::Engine {
            context: "restore drill: starting redis-server".into(),
            message: last,
        })
    }

    async fn wait_ready(&mut self) -> std::result::Result<(), String> {
        let deadline = Instant::now() + READY;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("redis-server exited ({status})"));
            }
            if let Ok(mut c) = Client::connect(&self.connection).await
                && c.call(&[b"PING"]).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no answer within {READY:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        if let Ok(mut c) = Client::connect(&self.connection).await {
            c.queue(&[b"SHUTDOWN", b"NOSAVE"]);
            let _ = c.flush().await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        drop(self.dir);
    }
}
