//! Jobs: a due periodic backup (with the rotation after it), a requested
//! backup, a requested restore. Each is claimed with its service's lease
//! (`service.<cluster>.<type>.<namespace/name>`), renewed while it runs, so
//! across every daemon sharing the bucket one job at a time touches a
//! service (a restore never swaps a database under a running dump); losing
//! the lease cancels the job. Requests are additionally claimed in their
//! statefile (`requested` → `running`, a conditional update), so each runs
//! exactly once.

use std::sync::Arc;
use std::time::Instant;

use capsule_core::{
    Acquisition, BackupId, BackupOptions, Catalog, Error as CoreError, JobContext, NoProgress,
    Recipients, Renewal, RequestType, RestoreOptions, RestoreStatus, Statefile, Status,
    periodic_due, plan_rotation, run_backup, run_restore,
};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::daemon::{Shared, StoreView, TargetRt};
use crate::metrics::{Outcome, ServiceLabels};
use crate::standin::StandInEngine;
use crate::targets::credentials_error;

static NO_PROGRESS: NoProgress = NoProgress;

/// The lease key of every job on a service.
pub(crate) fn service_key(cluster: &str, service_type: &str, name: &str) -> String {
    format!("service.{cluster}.{service_type}.{name}")
}

fn lease_key(shared: &Shared, t: &TargetRt) -> String {
    service_key(
        &shared.options.cluster,
        t.target.service_type.as_str(),
        &t.target.name,
    )
}

/// The in-process key of a service's periodic job (and rotation).
pub(crate) fn periodic_key(cluster: &str, t: &TargetRt) -> String {
    format!(
        "periodic.{cluster}.{}.{}",
        t.target.service_type, t.target.name
    )
}

/// The in-process key of a backup request.
pub(crate) fn backup_key(id: &str) -> String {
    format!("backup.{id}")
}

/// The in-process key of the restores of a backup.
pub(crate) fn restore_key(id: &str) -> String {
    format!("restore.{id}")
}

pub(crate) fn labels(shared: &Shared, t: &TargetRt) -> ServiceLabels {
    ServiceLabels {
        cluster: shared.options.cluster.clone(),
        service_type: t.target.service_type.to_string(),
        service: t.target.name.clone(),
    }
}

/// Runs `work` under lease `key` in `view`: acquire (or take over), renew
/// every heartbeat, cancel `work` if the lease is lost, release at the end
/// (the object stays, marked released: one per service).
async fn leased<F, Fut>(shared: &Arc<Shared>, view: &StoreView, key: &str, work: F)
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let acquired = match view.leases.acquire(key, Utc::now()).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(job = key, error = %e, "could not take the lease");
            return;
        }
    };
    let mut lease = match acquired {
        Acquisition::Acquired(l) => l,
        Acquisition::TakenOver { lease, previous } => {
            shared.metrics.lease_taken_over();
            tracing::warn!(job = key, previous = %previous.holder.id, renewed_at = %previous.renewed_at, "took over the lease of a silent holder");
            lease
        }
        Acquisition::Held(by) => {
            tracing::debug!(job = key, holder = %by.holder.id, "job held by another capsule");
            return;
        }
        _ => return,
    };
    let cancel = shared.abort.child_token();
    let job = work(cancel.clone());
    tokio::pin!(job);
    let mut beat = tokio::time::interval(shared.options.timings.heartbeat);
    beat.tick().await;
    loop {
        tokio::select! {
            () = &mut job => break,
            _ = beat.tick() => match lease.renew(Utc::now()).await {
                Ok(Renewal::Renewed) => {}
                Ok(_) => {
                    tracing::warn!(job = key, "lease lost: cancelling the job");
                    cancel.cancel();
                }
                Err(e) => tracing::warn!(job = key, error = %e, "could not renew the lease"),
            },
        }
    }
    match lease.release(Utc::now(), false).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!(job = key, "lease was no longer ours at release"),
        Err(e) => tracing::warn!(job = key, error = %e, "could not release the lease"),
    }
}

fn context(cancel: CancellationToken) -> JobContext<'static> {
    let mut ctx = JobContext::new(&NO_PROGRESS);
    ctx.cancel = cancel;
    ctx
}

/// A service's periodic job: if a backup is due (checked again on a fresh
/// listing under the lease), run it; then apply the rotation.
pub(crate) async fn periodic(shared: Arc<Shared>, t: Arc<TargetRt>) {
    let key = lease_key(&shared, &t);
    let view = t.view.clone();
    let (job_shared, job_t) = (shared.clone(), t.clone());
    leased(&shared, &view, &key, move |cancel| async move {
        let (shared, t) = (job_shared, job_t);
        let view = t.view.clone();
        let Some(schedule) = t.target.schedule.clone() else {
            return;
        };
        let timings = &shared.options.timings;
        let cluster = shared.options.cluster.as_str();
        let snap = match view.cache.refresh().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(service = %t.target.name, error = %e, "cannot list backups");
                return;
            }
        };
        let mine: Vec<Statefile> = snap
            .statefiles()
            .filter(|sf| t.target.owns(sf, cluster))
            .map(|sf| (**sf).clone())
            .collect();
        let due = periodic_due(
            &mine,
            &schedule.due_policy(timings.retry_after, timings.lease_ttl),
            Utc::now(),
        );
        if let capsule_core::Due::Now(reason) = &due
            && !cancel.is_cancelled()
        {
            tracing::info!(service = %t.target.name, reason = %reason, "periodic backup due");
            let options = BackupOptions::default()
                .with_request_type(RequestType::Periodic)
                .with_cluster(cluster)
                .with_schedule(schedule.statefile_schedule())
                .with_heartbeat(timings.heartbeat)
                .with_description(format!("periodic backup every {}", schedule.period));
            backup(&shared, &t, options, cancel.clone()).await;
        }
        rotate(&shared, &t).await;
    })
    .await;
}

/// What one job runs with: its engine, its catalog (the store, and the
/// identities its restores decrypt with) and the recipients its backup is
/// encrypted to.
struct JobParts {
    engine: Arc<dyn capsule_core::Engine>,
    catalog: Catalog,
    encryption: Option<Recipients>,
}

/// The parts one job runs with. A target with [`crate::JobCredentials`]
/// reads them now (so a rotated password, key or recipient is used at
/// once, and nothing outlives the job); when they cannot be read, the job
/// runs with an engine that fails with why, over the scan's catalog, so the
/// failure is recorded in the statefile and the metrics like any other.
/// Recipients: the job's own (read now), else the target's, else the
/// daemon's; identities: the job's own and the daemon's.
async fn job_parts(shared: &Shared, t: &TargetRt) -> JobParts {
    let planned = || {
        t.target
            .encryption
            .clone()
            .or_else(|| shared.options.encryption.clone())
    };
    let Some(credentials) = &t.target.credentials else {
        return JobParts {
            engine: t.target.engine.clone(),
            catalog: t.view.catalog().clone(),
            encryption: planned(),
        };
    };
    let resolved = match credentials.resolve().await {
        Ok(job) if job.store.url() != t.view.url() => Err(credentials_error(
            &t.target.name,
            format!(
                "the credentials name the store {}, not the target's {}",
                job.store.url(),
                t.view.url()
            ),
        )),
        other => other,
    };
    match resolved {
        Ok(job) => {
            tracing::debug!(service = %t.target.name, engine = %job.engine, "credentials read for this job");
            let daemon = t.view.catalog().identities().clone();
            let identities = match job.identities {
                Some(own) => own.merge(daemon),
                None => daemon,
            };
            JobParts {
                engine: job.engine,
                catalog: Catalog::new(job.store).with_identities(identities),
                encryption: job.encryption.or_else(planned),
            }
        }
        Err(e) => {
            tracing::warn!(service = %t.target.name, error = %e, "cannot read the credentials: the job fails");
            let engine = StandInEngine::of(t.target.engine.as_ref(), e.to_string());
            JobParts {
                engine: Arc::new(engine),
                catalog: t.view.catalog().clone(),
                encryption: planned(),
            }
        }
    }
}

async fn backup(
    shared: &Shared,
    t: &TargetRt,
    mut options: BackupOptions,
    cancel: CancellationToken,
) {
    let ctx = context(cancel);
    let started = Instant::now();
    let job = job_parts(shared, t).await;
    if let Some(to) = job.encryption {
        options.pipeline = options.pipeline.with_encryption(to);
    }
    // The id up front, so that a failure is logged with it.
    let id = match (&options.request, &options.id) {
        (Some(id), _) | (None, Some(id)) => id.clone(),
        (None, None) => {
            let id = BackupId::generate(job.engine.service_type());
            options = options.with_id(id.clone());
            id
        }
    };
    let result = run_backup(&job.catalog, job.engine.as_ref(), options, &ctx).await;
    drop(job.engine);
    let took = started.elapsed();
    let labels = labels(shared, t);
    match result {
        Ok(report) => {
            let sf = &report.statefile;
            tracing::info!(backup = %sf.backup_id, service = %t.target.name, took = ?took, bytes = sf.size_bytes().unwrap_or(0), "backup finished");
            shared.metrics.backup(
                &labels,
                Outcome::Finished,
                took,
                sf.size_bytes(),
                Utc::now(),
            );
            t.view.cache.refresh_one(sf.backup_id.as_str()).await;
        }
        Err(e) => {
            tracing::warn!(backup = %id, service = %t.target.name, error = %e, "backup failed");
            shared
                .metrics
                .backup(&labels, Outcome::Failed, took, None, Utc::now());
        }
    }
}

/// Plans the rotation of a service on a fresh listing and deletes what it
/// says (each with `Catalog::delete`: marker, artifacts, statefile last).
async fn rotate(shared: &Shared, t: &TargetRt) {
    let Some(schedule) = &t.target.schedule else {
        return;
    };
    let timings = &shared.options.timings;
    let snap = match t.view.cache.refresh().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(service = %t.target.name, error = %e, "cannot list backups for rotation");
            return;
        }
    };
    let mine: Vec<Statefile> = snap
        .entries
        .iter()
        .filter_map(|e| {
            let sf = e.statefile.as_ref()?;
            if !t.target.owns(sf, &shared.options.cluster) {
                return None;
            }
            let mut sf = (**sf).clone();
            if e.deleting {
                sf.status = Status::Deleting;
            }
            Some(sf)
        })
        .collect();
    let plan = plan_rotation(
        &mine,
        &schedule.rotation_policy(timings.failed_grace, timings.lease_ttl),
        Utc::now(),
    );
    if plan.is_empty() {
        return;
    }
    // One line per event, whatever the log format: the plan's lines joined.
    tracing::info!(service = %t.target.name, plan = %plan.to_string().trim_end().replace('\n', "; "), "rotation");
    let labels = labels(shared, t);
    for d in &plan.delete {
        // A restore requested since the listing keeps it (the plan's
        // rule, checked again on the statefile as it is now).
        if let Ok(handle) = t.view.catalog().load(d.id.as_str()).await
            && handle.statefile.restore_pending()
        {
            tracing::info!(backup = %d.id, "kept: a restore of it was requested meanwhile");
            continue;
        }
        match t.view.catalog().delete(d.id.as_str()).await {
            Ok(report) => {
                shared.metrics.deleted(&labels);
                tracing::info!(backup = %d.id, reason = %d.reasons[0], objects = report.objects, "rotated away");
            }
            Err(e) => tracing::warn!(backup = %d.id, error = %e, "rotation could not delete"),
        }
        t.view.cache.refresh_one(d.id.as_str()).await;
    }
}

/// Runs a requested backup (`requested` statefile `id`).
pub(crate) async fn backup_request(shared: Arc<Shared>, t: Arc<TargetRt>, id: String) {
    let key = lease_key(&shared, &t);
    let view = t.view.clone();
    let (job_shared, job_t) = (shared.clone(), t.clone());
    leased(&shared, &view, &key, move |cancel| async move {
        let (shared, t) = (job_shared, job_t);
        let view = t.view.clone();
        let catalog = view.catalog();
        let mut handle = match catalog.load(&id).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(backup = %id, error = %e, "request gone");
                return;
            }
        };
        if handle.statefile.status != Status::Requested || handle.statefile.is_legacy() {
            return; // someone else ran it meanwhile
        }
        // Record which service runs it, and clear a "waiting" note.
        let identity = t.target.engine.identity();
        let cluster = shared.options.cluster.clone();
        let claimed = catalog
            .update(&mut handle, |sf| {
                if sf.status != Status::Requested {
                    return Err(CoreError::InvalidTransition {
                        id: sf.backup_id.to_string(),
                        from: sf.status.to_string(),
                        to: Status::Running.to_string(),
                    });
                }
                let s = &mut sf.service;
                s.cluster.get_or_insert_with(|| cluster.clone());
                if s.namespace.is_none() && s.name.is_none() {
                    s.namespace = identity.namespace.clone();
                    s.name = identity.name.clone();
                }
                if s.endpoint.is_none() {
                    s.endpoint = identity.endpoint.clone();
                }
                if s.database.is_none() {
                    s.database = identity.database.clone();
                }
                sf.error = None;
                Ok(())
            })
            .await;
        if let Err(e) = claimed {
            tracing::debug!(backup = %id, error = %e, "request no longer runnable");
            return;
        }
        tracing::info!(backup = %id, service = %t.target.name, "running requested backup");
        let Ok(bid) = id.parse() else { return };
        let options = BackupOptions::default()
            .with_request(bid)
            .with_cluster(cluster)
            .with_heartbeat(shared.options.timings.heartbeat);
        backup(&shared, &t, options, cancel).await;
        view.cache.refresh_one(&id).await;
    })
    .await;
}

/// Runs the oldest requested restore of backup `id`.
pub(crate) async fn restore_request(shared: Arc<Shared>, t: Arc<TargetRt>, id: String) {
    let key = lease_key(&shared, &t);
    let view = t.view.clone();
    let (job_shared, job_t) = (shared.clone(), t.clone());
    leased(&shared, &view, &key, move |cancel| async move {
        let (shared, t) = (job_shared, job_t);
        let view = t.view.clone();
        let catalog = view.catalog();
        let mut handle = match catalog.load(&id).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(backup = %id, error = %e, "restore request gone");
                return;
            }
        };
        let Some(requested_at) = handle
            .statefile
            .restores
            .iter()
            .find(|r| r.status == RestoreStatus::Requested)
            .map(|r| r.requested_at)
        else {
            return;
        };
        if !handle.statefile.is_legacy() {
            let _ = catalog
                .update(&mut handle, |sf| {
                    if let Some(r) = sf
                        .restores
                        .iter_mut()
                        .find(|r| r.requested_at == requested_at)
                    {
                        r.error = None;
                    }
                    Ok(())
                })
                .await;
        }
        tracing::info!(backup = %id, service = %t.target.name, requested_at = %requested_at, "running requested restore");
        let ctx = context(cancel);
        let started = Instant::now();
        let options = RestoreOptions::default()
            .with_request(requested_at)
            .with_cluster(shared.options.cluster.clone());
        let job = job_parts(&shared, &t).await;
        let result = run_restore(&job.catalog, job.engine.as_ref(), &id, options, &ctx).await;
        drop(job);
        let labels = labels(&shared, &t);
        let took = started.elapsed();
        match result {
            Ok(report) => {
                tracing::info!(backup = %id, target = %report.outcome.target, took = ?took, "restore finished");
                shared.metrics.restore(&labels, Outcome::Finished, took);
            }
            Err(e) => {
                tracing::warn!(backup = %id, error = %e, "restore failed");
                shared.metrics.restore(&labels, Outcome::Failed, took);
            }
        }
        view.cache.refresh_one(&id).await;
    })
    .await;
}
