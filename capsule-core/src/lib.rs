//! # capsule-core
//!
//! The domain of capsule, a backup and restore engine for PostgreSQL, Redis
//! and Elasticsearch whose every state lives in an object store:
//!
//! - [`Statefile`]: one JSON document per backup (`v1`, plus the legacy
//!   `v1alpha1` reader in [`statefile::legacy`]); the statefile is the commit
//!   point: it says `finished` only after every artifact is stored with its
//!   checksum, and it is always updated conditionally.
//! - [`BackupId`], [`ServiceType`], [`Status`] (an explicit state machine),
//!   [`Period`].
//! - [`Catalog`]: list, describe, download, delete backups in a store; queue
//!   backup and restore requests.
//! - [`pipeline`]: streaming upload (source → zstd → age encryption when
//!   [`Recipients`] are given → SHA-256 → multipart) and download (→ verify
//!   → decrypt with [`Identities`] → decompress → sink) with bounded memory.
//! - [`Engine`]: the trait the PostgreSQL, Redis and Elasticsearch engines
//!   implement; [`run_backup`] drives one into a store, [`run_restore`]
//!   back out of it and [`run_verify`] runs a restore drill; each records
//!   its outcome in the statefile.
//! - Scheduling ([`periodic_due`], [`plan_rotation`]): pure decisions with
//!   an injected `now`; [`Leases`]: who runs a job, via conditional writes
//!   in the bucket, so several daemons can share one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use capsule_core::{Catalog, ListFilter, ServiceType, ServiceIdentity};
//! use capsule_store::Store;
//!
//! let store = Store::from_url("memory://")?.with_prefix("cnvrg-smart-backups")?;
//! let catalog = Catalog::new(store);
//! // Queue a manual backup for a daemon, then list it.
//! let request = catalog
//!     .request_backup(ServiceType::Postgresql, ServiceIdentity::default(), "before upgrade")
//!     .await?;
//! let backups = catalog.list(&ListFilter::default()).await?;
//! assert_eq!(backups[0].id, request.backup_id.as_str());
//! # Ok(()) }
//! ```

mod backup;
mod catalog;
mod encryption;
mod engine;
mod error;
mod id;
mod lease;
mod period;
pub mod pipeline;
mod progress;
mod restore;
mod schedule;
pub mod statefile;
mod status;

pub use backup::{BackupOptions, BackupReport, run_backup};
pub use catalog::{
    BackupFolder, Catalog, CatalogEntry, DeleteReport, DownloadedArtifact, LIVE_HEARTBEAT,
    ListFilter, StatefileHandle, StoreArtifactSource,
};
pub use encryption::{AGE_FORMAT, Identities, Recipients};
pub use engine::{
    ArtifactSink, ArtifactSource, ArtifactSpec, ByteStream, Capabilities, Engine, JobContext,
    RestoreOutcome, RestorePlan,
};
pub use error::{Error, Result};
pub use id::{BACKUP_ID_RANDOM_LEN, BackupId, ServiceType};
pub use lease::{
    Acquisition, LEASE_V1, LEASES_DIR, Lease, LeaseHolder, LeaseRecord, Leases, Renewal,
};
pub use period::{MAX_PERIOD, Period};
pub use progress::{NoProgress, Progress};
pub use restore::{RestoreOptions, RestoreReport, VerifyReport, run_restore, run_verify};
pub use schedule::{
    Due, DuePolicy, DueReason, RotationDecision, RotationPlan, RotationPolicy, RotationReason,
    is_abandoned, periodic_due, plan_rotation,
};
pub use statefile::{
    Artifact, ArtifactRole, Compression, Encryption, EngineInfo, Fingerprint, LegacyInfo, Owner,
    RequestType, Restore, Schedule, ServiceIdentity, Statefile, Verification, VerificationStatus,
};
pub use status::{RestoreStatus, Status};

pub use capsule_store as store;
