//! The PostgreSQL engine.
//!
//! - **Backup**: the cluster's roles (`pg_dumpall --roles-only
//!   --no-role-passwords`, artifact `roles.sql.zst`), then `pg_dump
//!   --format=custom --compress=0` of an exported snapshot streamed
//!   through the core's pipeline (zstd, SHA-256, multipart upload;
//!   artifact `dump.pgc.zst`). Row counts of every table and the
//!   sequences' positions are taken in the same snapshot as the dump and
//!   recorded as the backup's fingerprint. A failing or killed `pg_dump`
//!   fails the upload with its message (credentials stripped).
//! - **Restore**: every artifact's checksum is verified first; then
//!   missing roles are created (existing ones are never altered) and the
//!   dump is streamed into `pg_restore`, by default into a new database
//!   that replaces the live one only when it restored completely (see
//!   [`PgRestoreMode`]).
//! - **Verify**: [`capsule_core::run_verify`] restores into a throwaway
//!   database, compares its fingerprint with the recorded one and drops it.
//!
//! The client tools are chosen by the server's major version (see
//! `docs/postgresql.md`).

mod archive;
mod backup;
mod connection;
mod options;
mod restore;
mod roles;
mod sql;
mod tls;
mod toc;
mod tools;

use std::collections::BTreeSet;
use std::fmt;

use async_trait::async_trait;
use capsule_core::{
    ArtifactSink, ArtifactSource, Capabilities, Engine, EngineInfo, Fingerprint, JobContext,
    RestoreOutcome, RestorePlan, Result, ServiceIdentity, ServiceType,
};
use tokio_util::sync::CancellationToken;

pub use backup::{DUMP_ARTIFACT, FORMAT_CUSTOM, FORMAT_ROLES, FORMAT_TAR, ROLES_ARTIFACT};
pub use connection::{DEFAULT_PORT, PgConnection, PgSslMode};
pub use options::{PgOptions, PgRestoreMode};
pub use restore::PgRestoreReport;

use tools::ToolFinder;

/// The PostgreSQL [`Engine`]: backs one database up with `pg_dump` and
/// restores it with `pg_restore`. `Display` is
/// `postgresql(user@host:port/database)`, never the password.
#[derive(Clone, Debug)]
pub struct PgEngine {
    options: PgOptions,
}

impl PgEngine {
    /// An engine with `options`. Nothing is contacted until a job runs.
    pub fn new(options: PgOptions) -> Self {
        PgEngine { options }
    }

    /// The options.
    pub fn options(&self) -> &PgOptions {
        &self.options
    }

    fn finder(&self) -> ToolFinder {
        ToolFinder {
            dir: self.options.tool_dir.clone(),
        }
    }

    /// Restores as [`Engine::restore`] does, and says more about it (the
    /// previous database kept by a safe restore, the roles created).
    ///
    /// # Errors
    /// [`capsule_core::Error::Corrupt`] naming the artifact when a
    /// checksum does not match (nothing on the server was changed);
    /// [`capsule_core::Error::Engine`] with the tool's or server's message
    /// (credentials stripped), saying what became of the databases;
    /// [`capsule_core::Error::Invalid`] when a target database exists;
    /// [`capsule_core::Error::Unsupported`] for an unknown dump format or
    /// client tools older than the dump or the server.
    ///
    /// `ctx`'s cancel token stops it: pg_restore is killed, a database
    /// being created is dropped again, and the error
    /// ([`capsule_core::Error::Cancelled`]) says what is left. Give it the
    /// [`Engine::cancel_grace`] it asks for.
    pub async fn restore_with_report(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<PgRestoreReport> {
        self.restore_until(source, &ctx.cancel).await
    }

    /// [`PgEngine::restore_with_report`], stopped by `cancel`.
    async fn restore_until(
        &self,
        source: &dyn ArtifactSource,
        cancel: &CancellationToken,
    ) -> Result<PgRestoreReport> {
        match &self.options.restore_mode {
            PgRestoreMode::Safe => restore::restore_safe(self, source, cancel).await,
            PgRestoreMode::InPlace => restore::restore_in_place(self, source, cancel).await,
            PgRestoreMode::TargetDb(name) => {
                restore::restore_target(self, source, name, cancel).await
            }
        }
    }

    /// The restore drill ([`Engine::restore_scratch`]) with its report.
    ///
    /// # Errors
    /// As [`PgEngine::restore_with_report`]; the throwaway database is
    /// dropped in every case, a cancelled drill included.
    pub async fn verify_with_report(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<PgRestoreReport> {
        restore::restore_scratch(self, source, &ctx.cancel).await
    }
}

impl fmt::Display for PgEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgresql({})", self.options.connection)
    }
}

#[async_trait]
impl Engine for PgEngine {
    fn service_type(&self) -> ServiceType {
        ServiceType::Postgresql
    }

    /// A restore watches `ctx.cancel`: pg_restore is killed, a database it
    /// was creating is dropped again, and the error says what is left (an
    /// in-place restore: the database partly restored or dropped). A swap,
    /// one short transaction, is let finish.
    fn cancel_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(60)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            verify: true,
            in_place_restore: true,
            safe_restore: true,
        }
    }

    fn identity(&self) -> ServiceIdentity {
        let mut id = self.options.service.clone();
        if id.endpoint.is_none() {
            id.endpoint = Some(self.options.connection.endpoint());
        }
        if id.database.is_none() {
            id.database = Some(self.options.connection.database.clone());
        }
        id
    }

    async fn backup(
        &self,
        sink: &mut dyn ArtifactSink,
        ctx: &JobContext<'_>,
    ) -> Result<EngineInfo> {
        backup::backup(self, sink, ctx).await
    }

    async fn restore(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<RestoreOutcome> {
        let report = self.restore_until(source, &ctx.cancel).await?;
        if let Some(prev) = &report.previous_database {
            tracing::info!(previous = %prev, "the previous database is kept; drop it when no longer needed");
        }
        Ok(RestoreOutcome {
            target: report.target,
            mode: report.mode,
            fingerprint: None,
            details: Default::default(),
        })
    }

    async fn fingerprint(&self, _ctx: &JobContext<'_>) -> Result<Fingerprint> {
        let conn = &self.options.connection;
        let session = sql::connect(conn).await?;
        sql::fingerprint(&session.client, conn, &BTreeSet::new()).await
    }

    fn restore_plan(&self) -> RestorePlan {
        let conn = &self.options.connection;
        let db = match &self.options.restore_mode {
            PgRestoreMode::TargetDb(name) => name.as_str(),
            _ => conn.database.as_str(),
        };
        RestorePlan::new(
            format!("{}/{db}", conn.endpoint()),
            self.options.restore_mode.as_str(),
        )
    }

    async fn restore_scratch(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<RestoreOutcome> {
        let report = self.verify_with_report(source, ctx).await?;
        Ok(RestoreOutcome {
            target: report.target,
            mode: report.mode,
            fingerprint: report.fingerprint,
            details: Default::default(),
        })
    }
}
