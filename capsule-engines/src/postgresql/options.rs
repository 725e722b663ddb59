//! The engine's options: connection, restore mode, tools.

use std::path::PathBuf;

use capsule_core::{Result, ServiceIdentity};
use serde::Deserialize;

use super::connection::PgConnection;

/// Where a restore writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PgRestoreMode {
    /// Restore into a new database beside the live one
    /// (`<db>__capsule_restore_<id>`); only when that succeeded, swap
    /// names: the live database becomes `<db>__capsule_prev_<timestamp>`
    /// (kept until an admin drops it, or dropped with
    /// [`PgOptions::drop_previous`]) and the new one becomes `<db>`. A
    /// failed restore drops the new database and leaves the live one
    /// untouched.
    #[default]
    Safe,
    /// The legacy behaviour: block connections to the live database,
    /// terminate its sessions and `pg_restore --clean --create
    /// --exit-on-error` over it. A failure can leave it partly restored.
    InPlace,
    /// Restore into a new database of this name and leave the live one
    /// alone; refused when the database exists.
    TargetDb(String),
}

impl PgRestoreMode {
    /// The name recorded in the restore history: `safe-swap`, `in-place`,
    /// `target-db`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PgRestoreMode::Safe => "safe-swap",
            PgRestoreMode::InPlace => "in-place",
            PgRestoreMode::TargetDb(_) => "target-db",
        }
    }
}

/// Everything the PostgreSQL engine needs: plain data with chainable
/// setters; build the engine with [`PgEngine::new`](super::PgEngine::new).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "camelCase")]
#[non_exhaustive]
pub struct PgOptions {
    /// The database backed up, and the target of restores.
    pub connection: PgConnection,
    /// How restores write (default [`PgRestoreMode::Safe`]).
    pub restore_mode: PgRestoreMode,
    /// After a successful safe restore, drop the previous database instead
    /// of keeping it (default false).
    pub drop_previous: bool,
    /// The database connected to for creating, renaming and dropping
    /// databases (default `postgres`).
    pub maintenance_database: String,
    /// The server restore drills restore into (default: the backed-up
    /// server itself, into a throwaway database).
    pub verify_connection: Option<PgConnection>,
    /// Take the client tools from this directory only (default: the
    /// version matching the server among `/usr/lib/postgresql/*/bin` and
    /// `PATH`).
    pub tool_dir: Option<PathBuf>,
    /// Back up the cluster's roles as their own artifact (default true).
    pub roles: bool,
    /// Count rows and read sequences in the dump's snapshot for the
    /// fingerprint (default true; costs one read of every table).
    pub fingerprint: bool,
    /// Names recorded in the statefile (cluster, namespace, service name);
    /// the endpoint and database come from the connection when unset.
    pub service: ServiceIdentity,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            connection: PgConnection::default(),
            restore_mode: PgRestoreMode::Safe,
            drop_previous: false,
            maintenance_database: "postgres".into(),
            verify_connection: None,
            tool_dir: None,
            roles: true,
            fingerprint: true,
            service: ServiceIdentity::default(),
        }
    }
}

impl PgOptions {
    /// Options for `connection`, everything else default.
    pub fn new(connection: PgConnection) -> Self {
        PgOptions {
            connection,
            ..PgOptions::default()
        }
    }

    /// Options for the database at `url` (see [`PgConnection::from_url`]).
    ///
    /// # Errors
    /// [`capsule_core::Error::Invalid`] for a malformed URL.
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::new(PgConnection::from_url(url)?))
    }

    /// Options from the libpq `PG*` variables (see [`PgConnection::from_env`]).
    ///
    /// # Errors
    /// [`capsule_core::Error::Invalid`] for malformed variables.
    pub fn from_env() -> Result<Self> {
        Ok(Self::new(PgConnection::from_env()?))
    }

    /// Sets the restore mode.
    pub fn with_restore_mode(mut self, mode: PgRestoreMode) -> Self {
        self.restore_mode = mode;
        self
    }
    /// Drops (or keeps) the previous database after a safe restore.
    pub fn with_drop_previous(mut self, drop: bool) -> Self {
        self.drop_previous = drop;
        self
    }
    /// Sets the maintenance database.
    pub fn with_maintenance_database(mut self, db: impl Into<String>) -> Self {
        self.maintenance_database = db.into();
        self
    }
    /// Runs restore drills on another server.
    pub fn with_verify_connection(mut self, conn: PgConnection) -> Self {
        self.verify_connection = Some(conn);
        self
    }
    /// Takes the client tools from `dir` only.
    pub fn with_tool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.tool_dir = Some(dir.into());
        self
    }
    /// Backs up roles (or not).
    pub fn with_roles(mut self, roles: bool) -> Self {
        self.roles = roles;
        self
    }
    /// Takes the fingerprint at backup (or not).
    pub fn with_fingerprint(mut self, fingerprint: bool) -> Self {
        self.fingerprint = fingerprint;
        self
    }
    /// Sets the names recorded in the statefile.
    pub fn with_service(mut self, service: ServiceIdentity) -> Self {
        self.service = service;
        self
    }
}
