//! # capsule-engines
//!
//! The database engines of capsule, each implementing
//! [`capsule_core::Engine`]:
//!
//! - [`postgresql`]: [`PgEngine`] built from [`PgOptions`] (a
//!   [`PgConnection`] from a `postgres://` URL or the libpq `PG*`
//!   variables, plus the [`PgRestoreMode`]). Backs up roles and a
//!   custom-format `pg_dump` streamed through the core's pipeline, with a
//!   fingerprint taken in the dump's snapshot; restores safely beside the
//!   live database and swaps; runs restore drills.
//! - [`elasticsearch`]: [`EsEngine`] built from [`EsOptions`] (an
//!   [`EsConnection`] from an `http(s)://` URL or the legacy Secret keys,
//!   index patterns, an [`EsRename`] rule). Backs up templates and each
//!   index's settings, mappings and aliases, and every document's raw
//!   `_source` as `_bulk` NDJSON read with a sliced scroll; restores with
//!   parallel `_bulk`, counts and a byte-for-byte sample checked; runs
//!   restore drills in scratch indices.
//!
//! - [`redis`]: [`RedisEngine`] built from [`RedisOptions`] (a
//!   [`RedisConnection`] from a `redis://`/`rediss://` URL or the legacy
//!   Secret keys, the [`RedisCapture`] path). Captures a point-in-time RDB
//!   as a replica (or by SCAN + DUMP when replication is refused) streamed
//!   through the pipeline and verified on the way; restores with pipelined
//!   `RESTORE`s (`SET`s for strings) from a streaming RDB parser of its own; runs restore drills
//!   on a scratch server.
//!
//! This crate holds no domain logic of its own beyond driving each database's tools
//! and protocols: the core's [`run_backup`](capsule_core::run_backup),
//! [`run_restore`](capsule_core::run_restore) and
//! [`run_verify`](capsule_core::run_verify) drive an engine and record
//! every outcome in the statefile.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capsule_core::{run_backup, run_restore, BackupOptions, Catalog, JobContext, NoProgress, RestoreOptions};
//! use capsule_engines::{PgEngine, PgOptions};
//! use capsule_store::Store;
//!
//! let catalog = Catalog::new(Store::from_url("file:///var/backups")?.with_prefix("cnvrg-smart-backups")?);
//! let engine = PgEngine::new(PgOptions::from_url("postgres://app@127.0.0.1:5432/app")?);
//! let ctx = JobContext::new(&NoProgress);
//!
//! let report = run_backup(&catalog, &engine, BackupOptions::default(), &ctx).await?;
//! let id = report.statefile.backup_id.to_string();
//! // Restores beside the live database, then swaps names (the default, safe mode).
//! run_restore(&catalog, &engine, &id, RestoreOptions::default(), &ctx).await?;
//! # Ok(()) }
//! ```

pub mod postgresql;

pub use postgresql::{
    PgConnection, PgEngine, PgOptions, PgRestoreMode, PgRestoreReport, PgSslMode,
};

pub mod elasticsearch;

pub use elasticsearch::{
    EsConnection, EsEngine, EsOptions, EsRename, EsRestorePreview, EsRestoreReport, PreviewIndex,
};

pub mod redis;

pub use redis::{
    RedisCapture, RedisConnection, RedisEngine, RedisLoad, RedisOptions, RedisRestoreReport,
};
