//! The engine's options: connection, capture path, restore behaviour.

use std::path::PathBuf;

use capsule_core::{Result, ServiceIdentity};
use serde::Deserialize;

use super::connection::RedisConnection;

/// How a backup captures the data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RedisCapture {
    /// Replication, falling back to SCAN + DUMP when the server refuses
    /// it (the default).
    #[default]
    Auto,
    /// Only replication (`PSYNC`): a point-in-time RDB from the server's
    /// fork; fails when the server refuses.
    Replication,
    /// Only `SCAN` + `DUMP` + `PTTL`: works wherever those commands do, but
    /// is not a point-in-time snapshot (keys changing during the backup
    /// are captured at different moments).
    Scan,
}

impl RedisCapture {
    /// `auto`, `replication` or `scan`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisCapture::Auto => "auto",
            RedisCapture::Replication => "replication",
            RedisCapture::Scan => "scan",
        }
    }
}

impl std::str::FromStr for RedisCapture {
    type Err = capsule_core::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(RedisCapture::Auto),
            "replication" | "psync" => Ok(RedisCapture::Replication),
            "scan" | "dump" => Ok(RedisCapture::Scan),
            other => Err(capsule_core::Error::invalid(
                "redis capture",
                format!("unknown capture {other:?} (expected auto, replication or scan)"),
            )),
        }
    }
}

/// How a restore that empties its target (`--flush`, drills) loads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RedisLoad {
    /// Replication where the target allows it, else `RESTORE` commands
    /// (the default).
    #[default]
    Auto,
    /// Only replication: capsule serves the RDB as a primary the target
    /// replicates from (`REPLICAOF`), so the target loads it at RDB speed;
    /// fails when the target cannot (see `docs/redis.md`).
    Replication,
    /// Only pipelined `RESTORE` commands, as a restore that keeps the
    /// target's other keys always does.
    Commands,
}

impl RedisLoad {
    /// `auto`, `replication` or `commands`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisLoad::Auto => "auto",
            RedisLoad::Replication => "replication",
            RedisLoad::Commands => "commands",
        }
    }
}

impl std::str::FromStr for RedisLoad {
    type Err = capsule_core::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(RedisLoad::Auto),
            "replication" | "replicaof" => Ok(RedisLoad::Replication),
            "commands" | "restore" => Ok(RedisLoad::Commands),
            other => Err(capsule_core::Error::invalid(
                "redis load",
                format!("unknown load {other:?} (expected auto, replication or commands)"),
            )),
        }
    }
}

/// Everything the Redis engine needs: plain data with chainable setters;
/// build the engine with [`RedisEngine::new`](super::RedisEngine::new).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "camelCase")]
#[non_exhaustive]
pub struct RedisOptions {
    /// The server backed up, and the target of restores.
    pub connection: RedisConnection,
    /// How backups capture (default [`RedisCapture::Auto`]).
    pub capture: RedisCapture,
    /// Empty the target (`FLUSHALL`) before a restore (default false:
    /// keys in the backup replace theirs, other keys stay).
    pub flush: bool,
    /// How a restore that empties the target loads it (default
    /// [`RedisLoad::Auto`]); a restore that keeps other keys always sends
    /// `RESTORE` commands.
    pub load: RedisLoad,
    /// The scratch server restore drills restore into (it is flushed before
    /// and after). Default: a `redis-server` started on a free loopback
    /// port for the drill.
    pub verify_connection: Option<RedisConnection>,
    /// The `redis-server` binary for drills (default: `redis-server` on
    /// `PATH`).
    pub redis_server: Option<PathBuf>,
    /// Bytes of `RESTORE` commands sent and not yet answered during a
    /// restore (default 16 MiB; a single larger value is sent alone).
    pub max_inflight_bytes: usize,
    /// Largest value a restore accepts (default 512 MiB, Redis's
    /// `proto-max-bulk-len`); one such value is held in memory once.
    pub max_value_bytes: u64,
    /// `SCAN ... COUNT` of the SCAN + DUMP capture (default 1000).
    pub scan_count: u32,
    /// Names recorded in the statefile (cluster, namespace, service name);
    /// the endpoint and database come from the connection when unset.
    pub service: ServiceIdentity,
    /// Options for restore drills only ([`RedisOptions::drill_only`]).
    #[serde(skip)]
    pub(crate) drill_only: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            connection: RedisConnection::default(),
            capture: RedisCapture::Auto,
            flush: false,
            load: RedisLoad::Auto,
            verify_connection: None,
            redis_server: None,
            max_inflight_bytes: 16 << 20,
            max_value_bytes: 512 << 20,
            scan_count: 1000,
            service: ServiceIdentity::default(),
            drill_only: false,
        }
    }
}

impl RedisOptions {
    /// Options for `connection`, everything else default.
    pub fn new(connection: RedisConnection) -> Self {
        RedisOptions {
            connection,
            ..RedisOptions::default()
        }
    }

    /// Options for restore drills only, with no server to back up or
    /// restore into: drills go to the `scratch` server, else to a
    /// `redis-server` started for each drill. Backups and restores with
    /// them fail.
    pub fn drill_only(scratch: Option<RedisConnection>) -> Self {
        RedisOptions {
            connection: scratch.clone().unwrap_or_default(),
            verify_connection: scratch,
            drill_only: true,
            ..RedisOptions::default()
        }
    }

    /// Options for the server at `url` (see [`RedisConnection::from_url`]).
    ///
    /// # Errors
    /// [`capsule_core::Error::Invalid`] for a malformed URL.
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::new(RedisConnection::from_url(url)?))
    }

    /// Sets the capture path.
    pub fn with_capture(mut self, capture: RedisCapture) -> Self {
        self.capture = capture;
        self
    }
    /// Flushes (or not) the target before restoring.
    pub fn with_flush(mut self, flush: bool) -> Self {
        self.flush = flush;
        self
    }
    /// Sets how a restore that empties the target loads it.
    pub fn with_load(mut self, load: RedisLoad) -> Self {
        self.load = load;
        self
    }
    /// Runs restore drills on this scratch server.
    pub fn with_verify_connection(mut self, conn: RedisConnection) -> Self {
        self.verify_connection = Some(conn);
        self
    }
    /// Uses this `redis-server` binary for drills.
    pub fn with_redis_server(mut self, path: impl Into<PathBuf>) -> Self {
        self.redis_server = Some(path.into());
        self
    }
    /// Sets the bytes in flight during a restore.
    pub fn with_max_inflight_bytes(mut self, bytes: usize) -> Self {
        self.max_inflight_bytes = bytes;
        self
    }
    /// Sets the largest value a restore accepts.
    pub fn with_max_value_bytes(mut self, bytes: u64) -> Self {
        self.max_value_bytes = bytes;
        self
    }
    /// Sets the SCAN batch size.
    pub fn with_scan_count(mut self, count: u32) -> Self {
        self.scan_count = count.max(1);
        self
    }
    /// Sets the names recorded in the statefile.
    pub fn with_service(mut self, service: ServiceIdentity) -> Self {
        self.service = service;
        self
    }
}
