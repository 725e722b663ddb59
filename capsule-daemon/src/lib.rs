//! # capsule-daemon
//!
//! What `capsule start` runs in the cluster. It is stateless: everything it
//! knows it reads from the bucket (through [`capsule_core::Catalog`]) and
//! from its targets, so it can be killed and restarted anywhere, and
//! several copies can serve one bucket at once.
//!
//! - [`Daemon`]: scans the bucket every watch interval. In job modes it
//!   marks `running` backups whose owner stopped heartbeating `failed`
//!   ("owner lost"), runs due periodic backups and their rotation
//!   ([`capsule_core::periodic_due`], [`capsule_core::plan_rotation`]), and
//!   executes the backup and restore requests addressed to its services.
//!   Every job runs under a lease ([`capsule_core::Leases`]), so no two
//!   daemons run the same job.
//! - The HTTP API (axum), the read-only dashboard at `/`, Prometheus
//!   `/metrics` and the OpenAPI document at `/openapi.json`, answering from
//!   an in-memory catalog ([`CatalogCache`]) refreshed incrementally.
//! - [`TargetSource`]: where the services come from: the static
//!   configuration file ([`DaemonConfig`] → [`StaticTargets`]) and
//!   Kubernetes discovery ([`KubeDiscovery`]: `CnvrgApp` resources and
//!   annotated PVCs, watched between full resyncs; their Secrets checked
//!   when planning and read again by each job through
//!   [`JobCredentials`]).
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use capsule_daemon::{
//!     DaemonConfig, DaemonOptions, DefaultEngines, DefaultStores, Mode, StaticTargets,
//! };
//! use capsule_store::Store;
//!
//! let store = Store::from_url("file:///var/backups")?.with_prefix("cnvrg-smart-backups")?;
//! let config = DaemonConfig::load("/etc/capsule.toml".as_ref())?;
//! let cluster = config.cluster.clone().unwrap_or_else(|| "dev-eu".into());
//! let targets = StaticTargets::from_config(
//!     &config, &cluster, &DefaultEngines, &DefaultStores::new(store.clone()),
//! )?;
//! let options = DaemonOptions::new(Mode::AllInOne, cluster).with_api_bind_addr("127.0.0.1:8080");
//! capsule_daemon::run(options, store, Arc::new(targets), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(()) }
//! ```

mod api;
mod cache;
mod config;
mod daemon;
mod discovery;
mod error;
mod jobs;
mod metrics;
mod options;
mod scan;
mod standin;
mod targets;

pub use cache::{CacheStats, CachedBackup, CatalogCache, Filter, Snapshot};
pub use config::{CONFIG_ENV, DEFAULT_PERIOD, DEFAULT_ROTATION, DaemonConfig, ServiceConfig};
pub use daemon::{Daemon, run};
pub use discovery::{
    ANNOTATION_PREFIX, DEFAULT_BUCKET_REF, DiscoveryOptions, DiscoveryPlan, DiscoveryProblem,
    KubeDiscovery, NsWhitelist, PlannedTarget, TargetOrigin,
};
pub use error::{ConfigError, Error, Result};
pub use metrics::{Metrics, Outcome, ServiceLabels};
pub use options::{ApiToken, DaemonOptions, Mode, Timings, parse_bind_addr, parse_duration};
pub use targets::{
    DefaultEngines, DefaultStores, EngineFactory, JobCredentials, JobTarget, StaticTargets,
    StoreResolver, Target, TargetSchedule, TargetSource,
};

/// The OpenAPI document the API serves at `/openapi.json` (`anonymous_read`:
/// reads need no token).
pub fn openapi_document(anonymous_read: bool) -> serde_json::Value {
    api::openapi::document(anonymous_read)
}
