//! Running a restore and a restore drill, recording each in the statefile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::catalog::{Catalog, StatefileHandle};
use crate::engine::{ArtifactSource, ByteStream, Engine, JobContext, RestoreOutcome};
use crate::error::{Error, Result};
use crate::statefile::{
    Fingerprint, Owner, Restore, STATEFILE_NAME, Statefile, Verification, VerificationStatus,
    legacy,
};
use crate::status::RestoreStatus;

/// How many times a legacy statefile patch is retried after a conflict.
const LEGACY_ATTEMPTS: usize = 8;

/// How a restore is run.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Run the queued restore request made at this time (an entry with
    /// status `requested` in the backup's `restores`, e.g. from
    /// [`Catalog::request_restore`]) instead of appending a new entry.
    pub request: Option<DateTime<Utc>>,
    /// The cluster recorded with this process as the restore's owner.
    pub cluster: Option<String>,
}

impl RestoreOptions {
    /// Runs the queued request made at `requested_at`.
    pub fn with_request(mut self, requested_at: DateTime<Utc>) -> Self {
        self.request = Some(requested_at);
        self
    }
    /// Sets the cluster.
    pub fn with_cluster(mut self, c: impl Into<String>) -> Self {
        self.cluster = Some(c.into());
        self
    }
}

/// The outcome of a restore run.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RestoreReport {
    /// What the engine did.
    pub outcome: RestoreOutcome,
    /// The restore-history entry as recorded (v1 statefiles; legacy ones
    /// get their `{date, status}` entry in the legacy shape instead).
    pub entry: Option<Restore>,
}

/// The outcome of a restore drill.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The verification as recorded (also for legacy backups, where it is
    /// not written: their format has no place for it).
    pub verification: Verification,
    /// Whether a fingerprint was recorded at backup and compared.
    pub compared: bool,
    /// The fingerprint of the restored data.
    pub fingerprint: Option<Fingerprint>,
}

/// Runs an engine's restore or drill until it ends or `ctx.cancel` fires;
/// then gives it [`Engine::cancel_grace`] to stop on its own (and undo what
/// it did) before dropping it. A job that finishes within the grace (past
/// its point of no return) counts as done.
async fn until_cancelled<T>(
    engine: &dyn Engine,
    ctx: &JobContext<'_>,
    what: String,
    job: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(job);
    tokio::select! {
        r = &mut job => return r,
        () = ctx.cancel.cancelled() => {}
    }
    let grace = engine.cancel_grace();
    if grace.is_zero() {
        return Err(Error::Cancelled(what));
    }
    tracing::warn!(job = %what, "cancelling: waiting up to {grace:?} for {engine} to stop and undo what it did");
    match tokio::time::timeout(grace, &mut job).await {
        Ok(Ok(done)) => {
            tracing::warn!(job = %what, "cancelled past its point of no return: it was completed instead");
            Ok(done)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Cancelled(format!(
            "{what} (it did not stop within {grace:?}; what it changed is not undone)"
        ))),
    }
}

/// Restores finished backup `id` with `engine`, recording the restore in
/// the backup's history: an entry `running` (with target, mode and owner)
/// before the engine starts, then `finished` or `failed` with the error.
/// Legacy (`v1alpha1`) statefiles keep their format: they get a
/// `{date, status}` entry (`finished`/`failed`) when the restore ends.
///
/// Encrypted artifacts are decrypted with the catalog's identities
/// ([`Catalog::with_identities`]); that they can be is checked on every
/// artifact's age header before the engine starts. The engine verifies the
/// artifacts before it changes the target; if `ctx.cancel` fires, the
/// engine's work is dropped (its tools killed) and the entry says `failed`.
///
/// # Errors
/// [`Error::BackupNotFound`], [`Error::Invalid`] when the backup is not
/// finished or the request is unknown, [`Error::Unsupported`] when the
/// engine is of another service type; [`Error::IdentityRequired`] or
/// [`Error::Decrypt`] for an encrypted backup without a matching identity
/// (the target untouched); otherwise the engine's error, after the entry
/// was marked `failed` (best effort).
pub async fn run_restore(
    catalog: &Catalog,
    engine: &dyn Engine,
    id: &str,
    options: RestoreOptions,
    ctx: &JobContext<'_>,
) -> Result<RestoreReport> {
    let source = catalog.artifact_source(id).await?;
    check_service_type(source.statefile(), engine)?;
    let plan = engine.restore_plan();
    let owner = Owner::this_process(options.cluster.clone(), Utc::now());
    let legacy = source.statefile().is_legacy();

    let mut handle = catalog.load(id).await?;
    let started = Utc::now();
    let requested_at = options.request.unwrap_or(started);
    if !legacy {
        let (target, mode, owner_id) = (plan.target.clone(), plan.mode.clone(), owner.id.clone());
        catalog
            .update(&mut handle, |sf| {
                let entry = match options.request {
                    Some(at) => sf
                        .restores
                        .iter_mut()
                        .find(|r| r.requested_at == at && r.status == RestoreStatus::Requested)
                        .ok_or_else(|| {
                            Error::invalid(
                                "restore",
                                format!(
                                    "backup {id}: no queued restore request made at {}",
                                    at.to_rfc3339()
                                ),
                            )
                        })?,
                    None => {
                        sf.restores.push(Restore::requested(requested_at));
                        sf.restores.last_mut().expect("just pushed")
                    }
                };
                entry.status = RestoreStatus::Running;
                entry.started_at = Some(started);
                entry.target = Some(target.clone());
                entry.mode = Some(mode.clone());
                entry.owner = Some(owner_id.clone());
                Ok(())
            })
            .await?;
    }
    tracing::info!(backup = %id, engine = %engine, target = %plan.target, mode = %plan.mode, "restore started");

    // A missing or wrong key fails here, before the engine touches the target.
    let result = until_cancelled(engine, ctx, format!("restore of backup {id}"), async {
        source.check_keys().await?;
        engine.restore(&source, ctx).await
    })
    .await;
    let finished = Utc::now();
    let entry = match &result {
        Ok(outcome) => {
            tracing::info!(backup = %id, target = %outcome.target, "restore finished");
            record_restore(
                catalog,
                &mut handle,
                requested_at,
                &owner.id,
                finished,
                |r| {
                    r.status = RestoreStatus::Finished;
                    if !outcome.target.is_empty() {
                        r.target = Some(outcome.target.clone());
                    }
                    if !outcome.mode.is_empty() {
                        r.mode = Some(outcome.mode.clone());
                    }
                },
            )
            .await
        }
        Err(e) => {
            // Returned, and reported by the caller: not a warning too.
            tracing::info!(backup = %id, error = %e, "restore failed");
            let message = e.to_string();
            record_restore(
                catalog,
                &mut handle,
                requested_at,
                &owner.id,
                finished,
                |r| {
                    r.status = RestoreStatus::Failed;
                    r.error = Some(message.clone());
                },
            )
            .await
        }
    };
    let entry = match entry {
        Ok(entry) => entry,
        Err(e) => {
            tracing::warn!(backup = %id, error = %e, "could not record the restore's outcome");
            None
        }
    };
    result.map(|outcome| RestoreReport { outcome, entry })
}

/// Updates this run's entry (v1) or appends/claims the legacy entry.
async fn record_restore<F>(
    catalog: &Catalog,
    handle: &mut StatefileHandle,
    requested_at: DateTime<Utc>,
    owner: &str,
    finished: DateTime<Utc>,
    apply: F,
) -> Result<Option<Restore>>
where
    F: Fn(&mut Restore) + Send + Sync,
{
    let id = handle.statefile.backup_id.to_string();
    if handle.statefile.is_legacy() {
        let mut probe = Restore::requested(requested_at);
        apply(&mut probe);
        let word = match probe.status {
            RestoreStatus::Finished => "finished",
            _ => "failed",
        };
        let key = Catalog::key(&id, STATEFILE_NAME);
        for _ in 0..LEGACY_ATTEMPTS {
            let bytes = Bytes::from(legacy::record_restore(
                &handle.raw,
                Some(requested_at),
                finished,
                word,
            )?);
            match catalog.store().update(&key, bytes, &handle.version).await {
                Ok(_) => return Ok(None),
                Err(capsule_store::Error::Conflict { .. }) => *handle = catalog.load(&id).await?,
                Err(e) => {
                    return Err(Error::store(
                        format!("backup {id}: updating the statefile"),
                        e,
                    ));
                }
            }
        }
        return Err(Error::Conflict { id });
    }
    catalog
        .update(handle, |sf| {
            let entry = sf
                .restores
                .iter_mut()
                .rev()
                .find(|r| r.requested_at == requested_at && r.owner.as_deref() == Some(owner))
                .ok_or_else(|| {
                    Error::invalid(
                        "restore",
                        format!("backup {id}: this restore's history entry disappeared"),
                    )
                })?;
            apply(entry);
            entry.finished_at = Some(finished);
            Ok(())
        })
        .await?;
    Ok(handle
        .statefile
        .restores
        .iter()
        .rev()
        .find(|r| r.requested_at == requested_at && r.owner.as_deref() == Some(owner))
        .cloned())
}

/// Runs a restore drill of finished backup `id`: the engine restores it
/// into a throwaway target ([`Engine::restore_scratch`]), fingerprints
/// it and removes the target; the fingerprint is compared with the one
/// recorded at backup and a [`Verification`] is appended to the statefile
/// (v1 statefiles; legacy ones have no place for it and are left as they
/// are). A backup without a recorded fingerprint passes when the restore
/// itself succeeds (`compared` is false).
///
/// # Errors
/// [`Error::Unsupported`] when the engine cannot run drills or is of
/// another service type; [`Error::VerificationFailed`] naming every
/// differing object on a mismatch; [`Error::IdentityRequired`] or
/// [`Error::Decrypt`] for an encrypted backup without a matching identity
/// (before the drill starts); the engine's error (e.g.
/// [`Error::Corrupt`]) when the drill could not restore. The verification
/// is recorded as `failed` in each of the last two cases, except for a
/// drill stopped by `ctx.cancel` or one that failed before it opened any
/// artifact (nothing learned of the backup: not recorded), unless it had
/// found a mismatch or corruption.
pub async fn run_verify(
    catalog: &Catalog,
    engine: &dyn Engine,
    id: &str,
    ctx: &JobContext<'_>,
) -> Result<VerifyReport> {
    let source = catalog.artifact_source(id).await?;
    check_service_type(source.statefile(), engine)?;
    if !engine.capabilities().verify {
        return Err(Error::Unsupported(format!(
            "{engine}: restore drills are not supported"
        )));
    }
    let recorded = source
        .statefile()
        .engine
        .as_ref()
        .and_then(|e| e.fingerprint.clone());
    let started = Instant::now();
    tracing::info!(backup = %id, engine = %engine, "restore drill started");
    let watched = Watched {
        inner: &source,
        opened: AtomicBool::new(false),
    };
    let result = until_cancelled(engine, ctx, format!("verification of backup {id}"), async {
        source.check_keys().await?;
        engine.restore_scratch(&watched, ctx).await
    })
    .await;
    let duration_ms = Some(started.elapsed().as_millis() as u64);
    let mut verification = Verification {
        at: Utc::now(),
        status: VerificationStatus::Passed,
        target: None,
        mismatches: Vec::new(),
        duration_ms,
        error: None,
    };
    let mut fingerprint = None;
    let outcome: Result<()> = match result {
        Ok(outcome) => {
            verification.target = Some(outcome.target.clone()).filter(|t| !t.is_empty());
            fingerprint = outcome.fingerprint.clone();
            match (&recorded, &outcome.fingerprint) {
                (Some(want), Some(got)) => {
                    verification.mismatches = want.compare(got);
                    if verification.mismatches.is_empty() {
                        Ok(())
                    } else {
                        Err(Error::VerificationFailed {
                            id: id.to_string(),
                            mismatches: verification.mismatches.clone(),
                        })
                    }
                }
                (Some(_), None) => Err(Error::Unsupported(format!(
                    "{engine}: the drill of backup {id} returned no fingerprint to compare"
                ))),
                (None, _) => Ok(()),
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome {
        verification.status = VerificationStatus::Failed;
        if !matches!(e, Error::VerificationFailed { .. }) {
            verification.error = Some(e.to_string());
        }
    }
    // A drill stopped by its caller, or one that failed before it read
    // any of the backup into its scratch target (the target unreachable,
    // its password wrong), learned nothing of the backup: a failed entry
    // would show it unverified and lift its rotation protection. A
    // mismatch or a corrupt artifact is a verdict whenever it comes.
    let no_verdict = outcome.as_ref().is_err_and(|e| {
        !matches!(e, Error::VerificationFailed { .. } | Error::Corrupt { .. })
            && (ctx.cancel.is_cancelled() || !watched.opened.load(Ordering::Relaxed))
    });
    if no_verdict {
        tracing::info!(backup = %id, "restore drill stopped or never started: not recorded");
    } else if source.statefile().is_legacy() {
        tracing::info!(backup = %id, "legacy statefile: verification not recorded");
    } else {
        let mut handle = catalog.load(id).await?;
        let v = verification.clone();
        let recorded_ok = catalog
            .update(&mut handle, |sf| {
                sf.verifications.push(v.clone());
                Ok(())
            })
            .await;
        if let Err(e) = recorded_ok {
            tracing::warn!(backup = %id, error = %e, "could not record the verification");
        }
    }
    match outcome {
        Ok(()) => {
            tracing::info!(backup = %id, "restore drill passed");
            Ok(VerifyReport {
                verification,
                compared: recorded.is_some(),
                fingerprint,
            })
        }
        Err(e) => {
            // Returned, and reported by the caller: not a warning too.
            tracing::info!(backup = %id, error = %e, "restore drill failed");
            Err(e)
        }
    }
}

/// The drill's view of the backup, noting whether it began to read it.
struct Watched<'a> {
    inner: &'a dyn ArtifactSource,
    opened: AtomicBool,
}

#[async_trait::async_trait]
impl ArtifactSource for Watched<'_> {
    fn statefile(&self) -> &Statefile {
        self.inner.statefile()
    }

    async fn verify(&self, name: &str) -> Result<()> {
        self.inner.verify(name).await
    }

    async fn open(&self, name: &str) -> Result<ByteStream> {
        self.opened.store(true, Ordering::Relaxed);
        self.inner.open(name).await
    }
}

fn check_service_type(sf: &Statefile, engine: &dyn Engine) -> Result<()> {
    if sf.service_type != engine.service_type() {
        return Err(Error::Unsupported(format!(
            "backup {} is a {} backup; {engine} restores {} backups",
            sf.backup_id,
            sf.service_type,
            engine.service_type()
        )));
    }
    Ok(())
}
