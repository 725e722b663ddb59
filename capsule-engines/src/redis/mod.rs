//! The Redis engine.
//!
//! - **Backup**: capsule connects as a replica (`REPLCONF capa eof`,
//!   `PSYNC ? -1`) and streams the full-resynchronisation RDB, a
//!   point-in-time snapshot from the server's fork, straight through the
//!   core's pipeline (zstd, SHA-256, multipart upload; artifact
//!   `dump.rdb.zst`): no file on capsule's disk, no `BGSAVE`. When the
//!   server refuses replication (managed services, renamed commands, ACL
//!   users without `PSYNC`), it falls back to `SCAN` + `DUMP` + `PTTL`
//!   written as an RDB (not point-in-time; recorded in the statefile's
//!   details as `capture: scan-dump`). A parser reads the same bytes the
//!   pipeline uploads and checks header, version, every value's framing
//!   and the CRC-64 trailer, counting keys per database for the
//!   fingerprint; a corrupt or truncated RDB fails the upload.
//! - **Restore**: the artifact's checksum is verified and the target's
//!   Redis version checked first; then the RDB streams through the
//!   parser and every key is sent as a pipelined `RESTORE key ttl payload
//!   ABSTTL REPLACE` (the payload is the value's raw RDB encoding plus the
//!   version and CRC-64, so no collection is decoded), or, for a string, as
//!   the cheaper `SET key value [PXAT ms]` (those without an expiry
//!   gathered into one `MSET` per batch), with bounded bytes in flight.
//!   Keys that have expired by now are skipped and counted.
//!   [`RedisOptions::flush`] empties the target first; such a restore
//!   (and every drill) instead has the target replicate the RDB from
//!   capsule (`REPLICAOF`) where it can, so it loads at RDB speed
//!   ([`RedisLoad`]); nothing is committed before the whole RDB checked
//!   out, and the target is detached in every case.
//! - **Verify**: [`capsule_core::run_verify`] restores into a scratch
//!   server and compares its key counts with the fingerprint.
//!
//! See `docs/redis.md`.

mod backup;
mod client;
mod connection;
mod feed;
mod idle;
mod options;
mod primary;
pub mod rdb;
mod replication;
mod resp;
mod restore;
mod scan;
mod scratch;
mod sender;
mod stream;
mod summary;

use std::fmt;

use async_trait::async_trait;
use capsule_core::{
    ArtifactSink, ArtifactSource, Capabilities, Engine, EngineInfo, Fingerprint, JobContext,
    RestoreOutcome, RestorePlan, Result, ServiceIdentity, ServiceType,
};

pub use backup::{DUMP_ARTIFACT, FORMAT_RDB};
pub use connection::{DEFAULT_PORT, RedisConnection};
pub use options::{RedisCapture, RedisLoad, RedisOptions};
pub use restore::RedisRestoreReport;

use restore::Target;

/// The Redis [`Engine`]: backs a server up by replication (or SCAN +
/// DUMP) and restores it with pipelined `RESTORE`s (`MSET`s and `SET`s
/// for strings). `Display` is
/// `redis(host:port/db)`, never the password.
#[derive(Clone, Debug)]
pub struct RedisEngine {
    options: RedisOptions,
}

impl RedisEngine {
    /// An engine with `options`. Nothing is contacted until a job runs.
    pub fn new(options: RedisOptions) -> Self {
        RedisEngine { options }
    }

    /// The options.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// Fails for [`RedisOptions::drill_only`] options, which name no
    /// server to back up or restore into.
    fn server(&self) -> Result<&RedisConnection> {
        if self.options.drill_only {
            return Err(capsule_core::Error::invalid(
                "redis",
                "no server to back up or restore into: these options are for restore drills only",
            ));
        }
        Ok(&self.options.connection)
    }

    fn target(&self) -> Target {
        if self.options.flush {
            Target::Flush
        } else {
            Target::Replace
        }
    }

    /// Restores as [`Engine::restore`] does, and says more about it (keys
    /// restored and skipped per database, functions, timings).
    ///
    /// # Errors
    /// [`capsule_core::Error::Corrupt`] naming the artifact when its
    /// checksum or the RDB inside does not check out (found before
    /// anything is written when the stored checksum differs);
    /// [`capsule_core::Error::Unsupported`] when the target's Redis is older
    /// than the RDB; [`capsule_core::Error::Engine`] with the server's
    /// message (authentication, a refused `RESTORE` naming the key);
    /// [`capsule_core::Error::VerificationFailed`] when the keys restored do
    /// not add up to the recorded fingerprint.
    pub async fn restore_with_report(
        &self,
        source: &dyn ArtifactSource,
    ) -> Result<RedisRestoreReport> {
        restore::restore(self, self.server()?, source, self.target()).await
    }

    /// The restore drill ([`Engine::restore_scratch`]) with its report.
    ///
    /// # Errors
    /// As [`RedisEngine::restore_with_report`]; also when no scratch
    /// server is configured and `redis-server` cannot be started.
    pub async fn verify_with_report(
        &self,
        source: &dyn ArtifactSource,
    ) -> Result<RedisRestoreReport> {
        scratch::drill(self, source).await
    }
}

impl fmt::Display for RedisEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.options.verify_connection, self.options.drill_only) {
            (Some(scratch), true) => write!(f, "redis(drills on {scratch})"),
            (None, true) => write!(f, "redis(drills on a redis-server of its own)"),
            _ => write!(f, "redis({})", self.options.connection),
        }
    }
}

#[async_trait]
impl Engine for RedisEngine {
    fn service_type(&self) -> ServiceType {
        ServiceType::Redis
    }

    /// Level 1: an RDB packs its strings with LZF already, and zstd level 1
    /// stores it as small as level 3 (62.4 MB vs 62.6 MB for a 125 MB RDB of
    /// 1M mixed keys) with 40% less CPU, CPU a capture shares with the
    /// server's fork on a small machine.
    fn zstd_level(&self) -> Option<i32> {
        Some(1)
    }

    /// A restore watches `ctx.cancel` and stops at once, saying what the
    /// target may hold; the grace only covers that.
    fn cancel_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(10)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            verify: true,
            in_place_restore: true,
            safe_restore: false,
        }
    }

    fn identity(&self) -> ServiceIdentity {
        let mut id = self.options.service.clone();
        if id.endpoint.is_none() {
            id.endpoint = Some(self.options.connection.endpoint());
        }
        if id.database.is_none() {
            id.database = Some(self.options.connection.db.to_string());
        }
        id
    }

    async fn backup(
        &self,
        sink: &mut dyn ArtifactSink,
        ctx: &JobContext<'_>,
    ) -> Result<EngineInfo> {
        self.server()?;
        backup::backup(self, sink, ctx).await
    }

    async fn restore(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<RestoreOutcome> {
        tokio::select! {
            r = self.restore_with_report(source) => Ok(r?.into_outcome()),
            // Dropping the restore stops its stream (a load by replication
            // is detached by its guard); what it may have written is said.
            () = ctx.cancel.cancelled() => Err(capsule_core::Error::Cancelled(format!(
                "restore into {}: {}",
                self.options.connection.endpoint(),
                restore::cancelled_note(self.target()),
            ))),
        }
    }

    async fn fingerprint(&self, _ctx: &JobContext<'_>) -> Result<Fingerprint> {
        let mut client = client::Client::connect(self.server()?).await?;
        let counts = client
            .keyspace()
            .await?
            .into_iter()
            .map(|(db, n)| (format!("db{db}"), n))
            .collect();
        Ok(Fingerprint {
            counts,
            values: Default::default(),
        })
    }

    fn restore_plan(&self) -> RestorePlan {
        RestorePlan::new(self.options.connection.endpoint(), self.target().as_str())
    }

    async fn restore_scratch(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<RestoreOutcome> {
        tokio::select! {
            r = self.verify_with_report(source) => Ok(r?.into_outcome()),
            () = ctx.cancel.cancelled() => Err(capsule_core::Error::Cancelled(
                "restore drill (a scratch server of its own is stopped; a --verify-url one may hold part of the backup)".into(),
            )),
        }
    }
}
