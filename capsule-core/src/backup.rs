//! Running a backup: the statefile as the commit point.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use crate::catalog::{Catalog, StatefileHandle};
use crate::engine::{ArtifactSink, ArtifactSpec, ByteStream, Engine, JobContext};
use crate::error::{Error, Result};
use crate::id::BackupId;
use crate::pipeline::{self, PipelineOptions};
use crate::progress::Progress;
use crate::statefile::{Artifact, Owner, RequestType, Schedule, Statefile};
use crate::status::Status;

/// How a backup is run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackupOptions {
    /// Periodic or manual (default manual).
    pub request_type: RequestType,
    /// Free text recorded in the statefile.
    pub description: String,
    /// The cluster recorded as the service's and owner's.
    pub cluster: Option<String>,
    /// The schedule that asked for it (periodic backups).
    pub schedule: Option<Schedule>,
    /// Compression, encryption and upload settings.
    pub pipeline: PipelineOptions,
    /// How often the owner's heartbeat is written (default 30 s).
    pub heartbeat: Duration,
    /// Run this queued request (a `requested` statefile) instead of a new backup.
    pub request: Option<BackupId>,
    /// The id of the new backup (default: a fresh one), so that a caller
    /// can name the backup in its own logs even when it fails; must be of
    /// the engine's service type. Not used with `request`.
    pub id: Option<BackupId>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            request_type: RequestType::Manual,
            description: String::new(),
            cluster: None,
            schedule: None,
            pipeline: PipelineOptions::default(),
            heartbeat: Duration::from_secs(30),
            request: None,
            id: None,
        }
    }
}

impl BackupOptions {
    /// Sets the description.
    pub fn with_description(mut self, d: impl Into<String>) -> Self {
        self.description = d.into();
        self
    }
    /// Sets the request type.
    pub fn with_request_type(mut self, t: RequestType) -> Self {
        self.request_type = t;
        self
    }
    /// Sets the cluster.
    pub fn with_cluster(mut self, c: impl Into<String>) -> Self {
        self.cluster = Some(c.into());
        self
    }
    /// Sets the schedule.
    pub fn with_schedule(mut self, s: Schedule) -> Self {
        self.schedule = Some(s);
        self
    }
    /// Sets the pipeline options.
    pub fn with_pipeline(mut self, p: PipelineOptions) -> Self {
        self.pipeline = p;
        self
    }
    /// Sets the heartbeat interval.
    pub fn with_heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }
    /// Runs a queued request instead of creating a new backup.
    pub fn with_request(mut self, id: BackupId) -> Self {
        self.request = Some(id);
        self
    }
    /// Gives the new backup this id instead of a fresh one.
    pub fn with_id(mut self, id: BackupId) -> Self {
        self.id = Some(id);
        self
    }
}

/// The outcome of a backup run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackupReport {
    /// The final statefile (`finished`).
    pub statefile: Statefile,
}

struct StoreSink<'a> {
    catalog: &'a Catalog,
    id: String,
    options: &'a PipelineOptions,
    progress: &'a dyn Progress,
    artifacts: Vec<Artifact>,
}

#[async_trait]
impl ArtifactSink for StoreSink<'_> {
    async fn put(&mut self, spec: ArtifactSpec, data: ByteStream) -> Result<Artifact> {
        let mut name = spec.name.clone();
        let compression = self.options.compression;
        if compression == crate::Compression::Zstd && !name.ends_with(".zst") {
            name.push_str(".zst");
        }
        if self
            .options
            .encryption
            .as_ref()
            .is_some_and(|r| !r.is_empty())
        {
            name.push_str(crate::encryption::AGE_SUFFIX);
        }
        if name.contains('/')
            || name == crate::statefile::STATEFILE_NAME
            || self.artifacts.iter().any(|a| a.name == name)
        {
            return Err(Error::invalid(
                "artifact",
                format!(
                    "backup {}: invalid or duplicate artifact name {name}",
                    self.id
                ),
            ));
        }
        let key = Catalog::key(&self.id, &name);
        let report = pipeline::upload(
            self.catalog.store(),
            &key,
            data,
            self.options,
            self.progress,
        )
        .await
        .map_err(|e| prefix(&self.id, e))?;
        let mut a = Artifact::new(name, spec.format);
        a.role = spec.role;
        a.compression = report.compression;
        a.size_bytes = Some(report.size_bytes);
        a.raw_size_bytes = Some(report.raw_size_bytes);
        a.sha256 = Some(report.sha256);
        a.tool_version = spec.tool_version;
        a.encryption = report.encryption;
        self.artifacts.push(a.clone());
        Ok(a)
    }
}

fn prefix(id: &str, e: Error) -> Error {
    match e {
        Error::Store { context, error } => Error::Store {
            context: format!("backup {id}: {context}"),
            error,
        },
        Error::Io { context, error } => Error::Io {
            context: format!("backup {id}: {context}"),
            error,
        },
        e => e,
    }
}

/// Backs `engine`'s service up into `catalog`'s store.
///
/// The statefile is written `running` (with this process as owner) before
/// any artifact, its heartbeat renewed while the engine streams, and it
/// says `finished` only after every artifact is stored with its checksum.
/// If the engine, the pipeline or the store fails, or `ctx.cancel` fires,
/// the statefile says `failed` with the reason; if this process dies, it
/// stays `running` with a stale heartbeat, which readers treat as abandoned.
///
/// # Errors
/// The first failure, after the statefile was marked `failed` (best effort).
pub async fn run_backup(
    catalog: &Catalog,
    engine: &dyn Engine,
    options: BackupOptions,
    ctx: &JobContext<'_>,
) -> Result<BackupReport> {
    let now = Utc::now();
    let owner = Owner::this_process(options.cluster.clone(), now);
    let mut handle: StatefileHandle = match &options.request {
        Some(id) => {
            let mut h = catalog.load(id.as_str()).await?;
            let owner = owner.clone();
            catalog
                .update(&mut h, |sf| {
                    if !sf.status.can_become(Status::Running) || sf.status != Status::Requested {
                        return Err(Error::InvalidTransition {
                            id: sf.backup_id.to_string(),
                            from: sf.status.to_string(),
                            to: Status::Running.to_string(),
                        });
                    }
                    sf.status = Status::Running;
                    sf.started_at = Some(now);
                    sf.owner = Some(owner.clone());
                    Ok(())
                })
                .await?;
            h
        }
        None => {
            let id = match &options.id {
                Some(id) if id.service_type() != engine.service_type() => {
                    return Err(Error::invalid(
                        "backup id",
                        format!(
                            "{id} is a {} backup id; the engine backs up {}",
                            id.service_type(),
                            engine.service_type()
                        ),
                    ));
                }
                Some(id) => id.clone(),
                None => BackupId::generate(engine.service_type()),
            };
            let mut sf = Statefile::new(id, options.request_type, now);
            sf.service = engine.identity();
            if sf.service.cluster.is_none() {
                sf.service.cluster = options.cluster.clone();
            }
            sf.description = options.description.clone();
            sf.schedule = options.schedule.clone();
            sf.status = Status::Running;
            sf.started_at = Some(now);
            sf.owner = Some(owner.clone());
            catalog.create(&sf).await?
        }
    };
    let id = handle.statefile.backup_id.to_string();
    let encrypted_to = options.pipeline.encryption.as_ref().map_or(0, |r| r.len());
    tracing::info!(backup = %id, engine = %engine, encrypted_to, "backup started");

    let mut pipeline = options.pipeline.clone();
    pipeline.zstd_level = pipeline.zstd_level.or_else(|| engine.zstd_level());
    let mut sink = StoreSink {
        catalog,
        id: id.clone(),
        options: &pipeline,
        progress: ctx.progress,
        artifacts: Vec::new(),
    };
    let outcome = {
        let work = engine.backup(&mut sink, ctx);
        tokio::pin!(work);
        let mut beat = tokio::time::interval(options.heartbeat);
        beat.tick().await;
        loop {
            tokio::select! {
                r = &mut work => break r,
                _ = ctx.cancel.cancelled() => break Err(Error::Cancelled(format!("backup {id}"))),
                _ = beat.tick() => {
                    if let Err(e) = heartbeat(catalog, &mut handle, &owner.id).await {
                        break Err(e);
                    }
                }
            }
        }
    };
    let artifacts = std::mem::take(&mut sink.artifacts);
    drop(sink);

    match outcome {
        Ok(info) => {
            let finished = Utc::now();
            catalog
                .update(&mut handle, |sf| {
                    ensure_owner(sf, &owner.id)?;
                    sf.status = Status::Finished;
                    sf.finished_at = Some(finished);
                    sf.artifacts = artifacts.clone();
                    sf.engine = Some(info.clone());
                    if let Some(o) = sf.owner.as_mut() {
                        o.heartbeat_at = finished;
                    }
                    Ok(())
                })
                .await?;
            tracing::info!(backup = %id, "backup finished");
            Ok(BackupReport {
                statefile: handle.statefile,
            })
        }
        Err(err) => {
            let message = err.to_string();
            let failed = Utc::now();
            let marked = catalog
                .update(&mut handle, |sf| {
                    ensure_owner(sf, &owner.id)?;
                    sf.status = Status::Failed;
                    sf.finished_at = Some(failed);
                    sf.error = Some(message.clone());
                    sf.artifacts = artifacts.clone();
                    Ok(())
                })
                .await;
            if let Err(e) = marked {
                tracing::warn!(backup = %id, error = %e, "could not mark the backup failed");
            }
            // The error is returned: the caller reports it (a warning here
            // printed it twice, once as a log line and once as the error).
            // At info, the status change, with the id the caller may lack.
            tracing::info!(backup = %id, error = %message, "backup marked failed");
            Err(err)
        }
    }
}

fn ensure_owner(sf: &Statefile, owner: &str) -> Result<()> {
    if sf.status != Status::Running || sf.owner.as_ref().map(|o| o.id.as_str()) != Some(owner) {
        return Err(Error::invalid(
            "backup",
            format!(
                "backup {}: lost ownership (status {}, owner {})",
                sf.backup_id,
                sf.status,
                sf.owner.as_ref().map(|o| o.id.as_str()).unwrap_or("none")
            ),
        ));
    }
    Ok(())
}

async fn heartbeat(catalog: &Catalog, handle: &mut StatefileHandle, owner: &str) -> Result<()> {
    let now = Utc::now();
    catalog
        .update(handle, |sf| {
            ensure_owner(sf, owner)?;
            if let Some(o) = sf.owner.as_mut() {
                o.heartbeat_at = now;
            }
            Ok(())
        })
        .await
}
