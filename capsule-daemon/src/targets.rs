//! What the daemon backs up: [`Target`]s from a [`TargetSource`]. The
//! static configuration file is one source ([`StaticTargets`]);
//! Kubernetes discovery ([`crate::KubeDiscovery`]) is another behind the
//! same trait.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use capsule_core::{
    DuePolicy, Engine, Identities, Period, Recipients, RotationPolicy, Schedule, ServiceIdentity,
    ServiceType, Statefile,
};
use capsule_engines::{EsEngine, EsOptions, PgEngine, PgOptions, RedisEngine, RedisOptions};
use capsule_store::Store;

use crate::config::{DaemonConfig, ServiceConfig};
use crate::error::{ConfigError, Error, Result};

/// A service's schedule and retention.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TargetSchedule {
    /// How often a periodic backup is due.
    pub period: Period,
    /// How many finished periodic backups are kept.
    pub rotation: u32,
    /// Keep the newest of each of the last N days.
    pub keep_daily: u32,
    /// … weeks.
    pub keep_weekly: u32,
    /// … months.
    pub keep_monthly: u32,
}

impl std::fmt::Display for TargetSchedule {
    /// `every 1h, keep 7 (daily 7, weekly 4, monthly 0)`, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "every {}, keep {} (daily {}, weekly {}, monthly {})",
            self.period, self.rotation, self.keep_daily, self.keep_weekly, self.keep_monthly
        )
    }
}

impl TargetSchedule {
    /// `period` and `rotation`, no calendar keeps.
    pub fn new(period: Period, rotation: u32) -> Self {
        TargetSchedule {
            period,
            rotation,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
        }
    }

    /// The schedule recorded in periodic statefiles.
    pub fn statefile_schedule(&self) -> Schedule {
        Schedule::new(self.period, self.rotation)
    }

    /// The rotation policy, with the daemon's grace and owner timeout.
    pub fn rotation_policy(
        &self,
        failed_grace: std::time::Duration,
        owner_timeout: std::time::Duration,
    ) -> RotationPolicy {
        RotationPolicy::new(self.rotation)
            .with_keep_daily(self.keep_daily)
            .with_keep_weekly(self.keep_weekly)
            .with_keep_monthly(self.keep_monthly)
            .with_failed_grace(failed_grace)
            .with_owner_timeout(owner_timeout)
    }

    /// The due policy, with the daemon's retry delay and owner timeout.
    pub fn due_policy(
        &self,
        retry_after: std::time::Duration,
        owner_timeout: std::time::Duration,
    ) -> DuePolicy {
        DuePolicy::new(self.period)
            .with_retry_after(retry_after)
            .with_owner_timeout(owner_timeout)
    }
}

/// One service this daemon serves.
#[derive(Clone)]
#[non_exhaustive]
pub struct Target {
    /// `namespace/name`, as shown in the API and matched in requests.
    pub name: String,
    /// The service type.
    pub service_type: ServiceType,
    /// Periodic backups and rotation; `None` runs requests only.
    pub schedule: Option<TargetSchedule>,
    /// Where this service's backups live (the global store, or its own).
    /// The daemon lists it between jobs (what is due, requests).
    pub store: Store,
    /// The engine, configured with the connection. With
    /// [`Target::credentials`] it only describes the service (type,
    /// identity, capabilities) and the job's engine comes from there.
    pub engine: Arc<dyn Engine>,
    /// Reads the credentials when a job starts (Kubernetes discovery: the
    /// target's Secrets); `None`: jobs use `engine` and `store` as they are.
    pub credentials: Option<Arc<dyn JobCredentials>>,
    /// Encrypt this service's backups to these age recipients (else the
    /// daemon's, else unencrypted).
    pub encryption: Option<Recipients>,
}

impl Target {
    /// A target.
    pub fn new(
        name: impl Into<String>,
        service_type: ServiceType,
        schedule: Option<TargetSchedule>,
        store: Store,
        engine: Arc<dyn Engine>,
    ) -> Self {
        Target {
            name: name.into(),
            service_type,
            schedule,
            store,
            engine,
            credentials: None,
            encryption: None,
        }
    }

    /// Encrypts this service's backups to `recipients` (none: the daemon's
    /// default applies).
    pub fn with_encryption(mut self, recipients: Recipients) -> Self {
        self.encryption = (!recipients.is_empty()).then_some(recipients);
        self
    }

    /// Sets where each job reads its credentials (see [`JobCredentials`]).
    pub fn with_credentials(mut self, credentials: Arc<dyn JobCredentials>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Whether `sf` is a backup of this service in `cluster` (exact
    /// match of cluster, type and `namespace/name`).
    pub fn owns(&self, sf: &Statefile, cluster: &str) -> bool {
        sf.service_type == self.service_type
            && sf.service.cluster.as_deref() == Some(cluster)
            && sf.service.qualified_name().as_deref() == Some(self.name.as_str())
    }

    /// Whether a request (a `requested` backup, or a restore of `sf`) is
    /// addressed to this service in `cluster`: same type, and cluster and
    /// name equal where the request names them.
    pub fn accepts(&self, sf: &Statefile, cluster: &str) -> bool {
        sf.service_type == self.service_type
            && sf.service.cluster.as_deref().is_none_or(|c| c == cluster)
            && sf
                .service
                .qualified_name()
                .is_none_or(|n| n == self.name.as_str())
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("service_type", &self.service_type)
            .field("schedule", &self.schedule)
            .field("store", &self.store.url())
            .field("engine", &self.engine.to_string())
            .field("credentials_at_job_start", &self.credentials.is_some())
            .field("encryption", &self.encryption)
            .finish()
    }
}

/// What one job runs with: the engine and the store, built from
/// credentials read for this job and dropped when it ends, and the
/// encryption keys read with them, if any.
#[derive(Clone)]
#[non_exhaustive]
pub struct JobTarget {
    /// The engine, with the service's credentials.
    pub engine: Arc<dyn Engine>,
    /// The store, with the bucket's credentials.
    pub store: Store,
    /// A backup is encrypted to these age recipients, read for this job
    /// (over [`Target::encryption`] and the daemon's); `None`: those apply.
    pub encryption: Option<Recipients>,
    /// A restore decrypts with these age identities, read for this job,
    /// besides the daemon's own.
    pub identities: Option<Identities>,
}

impl JobTarget {
    /// A job's engine and store, no encryption keys of its own.
    pub fn new(engine: Arc<dyn Engine>, store: Store) -> Self {
        JobTarget {
            engine,
            store,
            encryption: None,
            identities: None,
        }
    }

    /// Encrypts this job's backup to `recipients` (none: the target's or
    /// the daemon's recipients apply).
    pub fn with_encryption(mut self, recipients: Recipients) -> Self {
        self.encryption = (!recipients.is_empty()).then_some(recipients);
        self
    }

    /// Decrypts this job's restore with `identities` too (besides the
    /// daemon's).
    pub fn with_identities(mut self, identities: Identities) -> Self {
        self.identities = (!identities.is_empty()).then_some(identities);
        self
    }
}

impl fmt::Debug for JobTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobTarget")
            .field("engine", &self.engine.to_string())
            .field("store", &self.store.url())
            .field("encryption", &self.encryption.as_ref().map(Recipients::len))
            .field("identities", &self.identities.as_ref().map(Identities::len))
            .finish()
    }
}

/// Reads a target's credentials when one of its jobs starts, so a rotated
/// password or bucket key is used by the next job without a restart and
/// no database credential is held between jobs. Kubernetes discovery
/// implements it with the target's Secrets.
///
/// Implementations must not log, store or cache what they read, and must
/// name the source and field at fault in their errors, never a value.
#[async_trait]
pub trait JobCredentials: Send + Sync {
    /// The engine and store for one job, built from credentials read now,
    /// with the encryption keys read now when the target has its own
    /// ([`JobTarget::encryption`], [`JobTarget::identities`]). The job's
    /// store must be the target's store (same [`Store::url`]): only the
    /// credentials may differ.
    ///
    /// # Errors
    /// [`Error::Credentials`] when they cannot be read or are incomplete;
    /// the job is then recorded as failed with that message.
    async fn resolve(&self) -> Result<JobTarget>;
}

/// The error of a job whose credentials cannot be read.
pub(crate) fn credentials_error(target: &str, message: impl Into<String>) -> Error {
    Error::Credentials {
        target: target.to_string(),
        message: message.into(),
    }
}

/// Where targets come from. Called on every scan, so a source may change
/// its answer (Kubernetes discovery will).
///
/// Implementations must not block: do I/O asynchronously, and return the
/// last good answer (or an error) when the source is unreachable.
#[async_trait]
pub trait TargetSource: Send + Sync {
    /// A name for logs (`config file /etc/capsule.toml`).
    fn name(&self) -> String;
    /// The targets now.
    ///
    /// # Errors
    /// When the source cannot answer; the daemon keeps the previous targets.
    async fn targets(&self) -> Result<Vec<Target>>;
    /// Extra Prometheus text appended to `/metrics` (Kubernetes discovery
    /// reports its problems there); none by default.
    fn metrics(&self) -> String {
        String::new()
    }
    /// Completes when the targets may have changed (Kubernetes discovery:
    /// a watch saw a change), so the daemon asks again at once rather than
    /// at its next scan. Must be cancel-safe (it is raced against a timer);
    /// by default it never completes.
    async fn changed(&self) {
        std::future::pending::<()>().await;
    }
}

/// A fixed list of targets (from the configuration file).
#[derive(Clone, Debug, Default)]
pub struct StaticTargets {
    name: String,
    targets: Vec<Target>,
}

impl StaticTargets {
    /// A source always answering `targets`.
    pub fn new(name: impl Into<String>, targets: Vec<Target>) -> Self {
        StaticTargets {
            name: name.into(),
            targets,
        }
    }

    /// The targets of a configuration file: each service's engine built by
    /// `engines`, its store by `stores`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the service whose engine or store cannot
    /// be built.
    pub fn from_config(
        config: &DaemonConfig,
        cluster: &str,
        engines: &dyn EngineFactory,
        stores: &dyn StoreResolver,
    ) -> Result<Self, ConfigError> {
        let mut targets = Vec::new();
        for (i, s) in config.services.iter().enumerate() {
            let store = stores
                .resolve(s.store.as_deref(), s.dst_dir.as_deref())
                .map_err(|m| {
                    config.error_at(
                        i,
                        if s.store.is_some() {
                            "store"
                        } else {
                            "dst_dir"
                        },
                        m,
                    )
                })?;
            let (namespace, name) = s.split_name();
            let identity = ServiceIdentity {
                cluster: Some(cluster.to_string()),
                namespace,
                name: Some(name),
                ..Default::default()
            };
            let engine = engines
                .build(s, identity)
                .map_err(|m| config.error_at(i, "url", m))?;
            let mut schedule = TargetSchedule::new(s.period, s.rotation);
            schedule.keep_daily = s.keep_daily;
            schedule.keep_weekly = s.keep_weekly;
            schedule.keep_monthly = s.keep_monthly;
            let mut target = Target::new(
                s.name.clone(),
                s.service_type,
                Some(schedule),
                store,
                engine,
            );
            if let Some(to) = &s.encryption {
                target = target.with_encryption(to.clone());
            }
            targets.push(target);
        }
        Ok(StaticTargets::new(
            format!("config file {}", config.file.display()),
            targets,
        ))
    }
}

#[async_trait]
impl TargetSource for StaticTargets {
    fn name(&self) -> String {
        self.name.clone()
    }
    async fn targets(&self) -> Result<Vec<Target>> {
        Ok(self.targets.clone())
    }
}

/// Builds the engine of a configured service.
pub trait EngineFactory: Send + Sync {
    /// The engine for `service`, recording `identity` in its statefiles.
    ///
    /// # Errors
    /// A one-line message (no credentials) when it cannot be built.
    fn build(
        &self,
        service: &ServiceConfig,
        identity: ServiceIdentity,
    ) -> std::result::Result<Arc<dyn Engine>, String>;
}

/// The engines of this build: PostgreSQL (`PgEngine`), Redis
/// (`RedisEngine`) and Elasticsearch/OpenSearch (`EsEngine`), each from the
/// service's URL.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultEngines;

impl EngineFactory for DefaultEngines {
    fn build(
        &self,
        service: &ServiceConfig,
        identity: ServiceIdentity,
    ) -> std::result::Result<Arc<dyn Engine>, String> {
        match service.service_type {
            ServiceType::Postgresql => {
                let mut options = PgOptions::from_url(service.url.expose())
                    .map_err(|e| e.to_string())?
                    .with_service(identity);
                if let Some(dir) = &service.tool_dir {
                    options = options.with_tool_dir(dir);
                }
                Ok(Arc::new(PgEngine::new(options)))
            }
            ServiceType::Redis => {
                let options = RedisOptions::from_url(service.url.expose())
                    .map_err(|e| e.to_string())?
                    .with_service(identity);
                Ok(Arc::new(RedisEngine::new(options)))
            }
            ServiceType::Elasticsearch => {
                let options = EsOptions::from_url(service.url.expose())
                    .map_err(|e| e.to_string())?
                    .with_service(identity);
                Ok(Arc::new(EsEngine::new(options)))
            }
            other => Err(format!(
                "the {other} engine is not available in this build of capsule"
            )),
        }
    }
}

/// Builds the store of a service that names its own (`store`, `dst_dir`).
pub trait StoreResolver: Send + Sync {
    /// The store for `url` (else the global one) with prefix `dst_dir`
    /// (else the global dst-dir).
    ///
    /// # Errors
    /// A one-line message (no credentials) when it cannot be built.
    fn resolve(
        &self,
        url: Option<&str>,
        dst_dir: Option<&str>,
    ) -> std::result::Result<Store, String>;
}

/// Resolves against a global store: `dst_dir` replaces its prefix; a URL
/// is built as given (credentials in its options).
#[derive(Clone, Debug)]
pub struct DefaultStores {
    global: Store,
}

impl DefaultStores {
    /// Resolution against `global`.
    pub fn new(global: Store) -> Self {
        DefaultStores { global }
    }
}

impl StoreResolver for DefaultStores {
    fn resolve(
        &self,
        url: Option<&str>,
        dst_dir: Option<&str>,
    ) -> std::result::Result<Store, String> {
        let prefix = dst_dir.unwrap_or(self.global.prefix());
        let base = match url {
            Some(u) => Store::from_url(u).map_err(|e| e.to_string())?,
            None => self.global.clone(),
        };
        base.with_prefix(prefix).map_err(|e| e.to_string())
    }
}
