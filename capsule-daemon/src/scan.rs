//! One scan of the bucket: refresh the cached catalogs, mark abandoned
//! backups and restores failed, start due periodic jobs and requested
//! backups and restores, and note requests nobody picked up.

use std::sync::Arc;

use capsule_core::{
    Due, RestoreStatus, Statefile, Status, is_abandoned, periodic_due, plan_rotation,
};
use chrono::{DateTime, Utc};

use crate::cache::Snapshot;
use crate::daemon::{Shared, StoreView, TargetRt};
use crate::jobs;

/// Runs one scan. Returns false when some part failed (logged).
pub(crate) async fn scan(shared: &Arc<Shared>) -> bool {
    let mut ok = true;
    if let Err(e) = shared.reload_targets().await {
        tracing::warn!(source = %shared.source.name(), error = %e, "cannot list targets; keeping the previous ones");
        ok = false;
    }
    let targets = shared.targets();
    for view in shared.views() {
        let snap = match view.cache.refresh().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(store = %view.url(), error = %e, "scan: cannot list the store");
                ok = false;
                continue;
            }
        };
        if shared.stop.is_cancelled() {
            break;
        }
        let now = Utc::now();
        let mine: Vec<&Arc<TargetRt>> = targets
            .iter()
            .filter(|t| Arc::ptr_eq(&t.view, &view))
            .collect();
        if shared.options.mode.runs_jobs() {
            mark_owners_lost(shared, &view, &snap, now).await;
            schedule(shared, &mine, &snap, now);
            watch(shared, &mine, &snap);
        }
        note_unserved(shared, &view, &mine, &snap, now).await;
    }
    ok
}

/// Marks `running` backups whose owner stopped heartbeating `failed`
/// ("owner lost"), and likewise `running` restores whose lease expired.
async fn mark_owners_lost(shared: &Shared, view: &StoreView, snap: &Snapshot, now: DateTime<Utc>) {
    let timeout = shared.options.timings.lease_ttl;
    for sf in snap.statefiles() {
        if sf.is_legacy() {
            continue;
        }
        let id = sf.backup_id.as_str();
        if is_abandoned(sf, timeout, now) {
            let Ok(mut handle) = view.catalog().load(id).await else {
                continue;
            };
            let seen_by = shared.holder.id.clone();
            let marked = view
                .catalog()
                .update(&mut handle, |sf| {
                    let now = Utc::now();
                    if !is_abandoned(sf, timeout, now) {
                        return Err(capsule_core::Error::invalid("backup", "owner alive"));
                    }
                    let (owner, beat) = sf
                        .owner
                        .as_ref()
                        .map(|o| (o.id.clone(), o.heartbeat_at.to_rfc3339()))
                        .unwrap_or_else(|| ("unknown".into(), "never".into()));
                    sf.status = Status::Failed;
                    sf.finished_at = Some(now);
                    sf.error = Some(format!(
                        "owner lost: {owner} stopped heartbeating (last heartbeat {beat}); marked failed by {seen_by}"
                    ));
                    Ok(())
                })
                .await;
            if marked.is_ok() {
                shared.metrics.owner_lost();
                tracing::warn!(
                    backup = id,
                    "running backup abandoned by its owner: marked failed"
                );
                view.cache.refresh_one(id).await;
            }
        }
        let stale_restore = sf.restores.iter().any(|r| {
            r.status == RestoreStatus::Running
                && passed(
                    r.started_at.unwrap_or(r.requested_at),
                    chrono_of(timeout),
                    now,
                )
        });
        if stale_restore && !shared.job_running(&jobs::restore_key(id)) {
            mark_restore_lost(shared, view, sf).await;
        }
    }
}

async fn mark_restore_lost(shared: &Shared, view: &StoreView, sf: &Statefile) {
    let id = sf.backup_id.as_str();
    let ttl = chrono_of(shared.options.timings.lease_ttl);
    // The restore runs under its service's lease (the service the backup is
    // of): while the process that runs it holds that lease, it is alive.
    // Without a way to name the lease, wait ten times longer.
    let mut timeout = ttl;
    let owners: Vec<&str> = sf
        .restores
        .iter()
        .filter(|r| r.status == RestoreStatus::Running)
        .filter_map(|r| r.owner.as_deref())
        .collect();
    match (&sf.service.cluster, sf.service.qualified_name()) {
        (Some(cluster), Some(name)) => {
            let key = jobs::service_key(cluster, sf.service_type.as_str(), &name);
            match view.leases.inspect(&key).await {
                Ok(Some((lease, _)))
                    if !lease.is_free(Utc::now())
                        && owners.iter().any(|o| same_process(o, &lease.holder.id)) =>
                {
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(backup = id, error = %e, "cannot read the service lease");
                    return;
                }
            }
        }
        _ => timeout = ttl * 10,
    }
    let Ok(mut handle) = view.catalog().load(id).await else {
        return;
    };
    let seen_by = shared.holder.id.clone();
    let marked = view
        .catalog()
        .update(&mut handle, |sf| {
            let now = Utc::now();
            let mut any = false;
            for r in sf.restores.iter_mut().filter(|r| {
                r.status == RestoreStatus::Running
                    && passed(r.started_at.unwrap_or(r.requested_at), timeout, now)
            }) {
                r.status = RestoreStatus::Failed;
                r.finished_at = Some(now);
                // The runner died mid-restore: whether it touched the
                // target (or even finished) is unknown, and the entry says so.
                r.error = Some(format!(
                    "owner lost: {} stopped heartbeating; marked failed by {seen_by}; \
                     the target may have been changed (the restore may even have completed)",
                    r.owner.as_deref().unwrap_or("unknown")
                ));
                any = true;
            }
            if any {
                Ok(())
            } else {
                Err(capsule_core::Error::invalid("restore", "nothing to mark"))
            }
        })
        .await;
    if marked.is_ok() {
        shared.metrics.owner_lost();
        tracing::warn!(
            backup = id,
            "running restore abandoned by its owner: marked failed"
        );
        view.cache.refresh_one(id).await;
    }
}

/// Starts the periodic job of each scheduled service whose backup is due
/// or whose rotation would delete something (decided again under the lease).
fn schedule(shared: &Arc<Shared>, targets: &[&Arc<TargetRt>], snap: &Snapshot, now: DateTime<Utc>) {
    let cluster = shared.options.cluster.as_str();
    let timings = &shared.options.timings;
    for t in targets {
        let Some(schedule) = &t.target.schedule else {
            continue;
        };
        let key = jobs::periodic_key(cluster, t);
        if shared.job_running(&key) {
            continue;
        }
        let mine: Vec<Statefile> = snap
            .entries
            .iter()
            .filter_map(|e| {
                let sf = e.statefile.as_ref()?;
                if !t.target.owns(sf, cluster) {
                    return None;
                }
                let mut sf = (**sf).clone();
                if e.deleting {
                    sf.status = Status::Deleting;
                }
                Some(sf)
            })
            .collect();
        let due = periodic_due(
            &mine,
            &schedule.due_policy(timings.retry_after, timings.lease_ttl),
            now,
        );
        let rotate = || {
            !plan_rotation(
                &mine,
                &schedule.rotation_policy(timings.failed_grace, timings.lease_ttl),
                now,
            )
            .is_empty()
        };
        if matches!(due, Due::Now(_)) || rotate() {
            shared.spawn_job(key, jobs::periodic(shared.clone(), (*t).clone()));
        }
    }
}

/// The first target (in configuration order) a request of `sf` is for.
fn target_for<'a>(
    targets: &[&'a Arc<TargetRt>],
    sf: &Statefile,
    cluster: &str,
) -> Option<&'a Arc<TargetRt>> {
    targets
        .iter()
        .copied()
        .find(|t| t.target.accepts(sf, cluster))
}

/// Starts the requested backups and restores addressed to our services.
fn watch(shared: &Arc<Shared>, targets: &[&Arc<TargetRt>], snap: &Snapshot) {
    let cluster = shared.options.cluster.as_str();
    for sf in snap.statefiles() {
        let id = sf.backup_id.to_string();
        if sf.status == Status::Requested
            && !sf.is_legacy()
            && let Some(t) = target_for(targets, sf, cluster)
        {
            let key = jobs::backup_key(&id);
            if !shared.job_running(&key) {
                shared.spawn_job(
                    key,
                    jobs::backup_request(shared.clone(), t.clone(), id.clone()),
                );
            }
        }
        if sf.status == Status::Finished
            && sf
                .restores
                .iter()
                .any(|r| r.status == RestoreStatus::Requested)
            && let Some(t) = target_for(targets, sf, cluster)
        {
            let key = jobs::restore_key(&id);
            if !shared.job_running(&key) {
                shared.spawn_job(key, jobs::restore_request(shared.clone(), t.clone(), id));
            }
        }
    }
}

/// Records why a request older than the request timeout is still waiting,
/// when no service of this daemon takes it and no capsule holds its
/// service's lease (the statefile's `error` for a
/// backup request, the restore entry's `error` for a restore request).
/// Legacy statefiles keep their format and are left alone.
async fn note_unserved(
    shared: &Shared,
    view: &StoreView,
    targets: &[&Arc<TargetRt>],
    snap: &Snapshot,
    now: DateTime<Utc>,
) {
    let cluster = shared.options.cluster.as_str();
    let timeout = chrono_of(shared.options.timings.request_timeout);
    for sf in snap.statefiles() {
        if sf.is_legacy() || target_for(targets, sf, cluster).is_some() {
            continue;
        }
        let waiting_backup = sf.status == Status::Requested
            && sf.error.is_none()
            && passed(sf.requested_at, timeout, now);
        let waiting_restore = sf.status == Status::Finished
            && sf.restores.iter().any(|r| {
                r.status == RestoreStatus::Requested
                    && r.error.is_none()
                    && passed(r.requested_at, timeout, now)
            });
        if !waiting_backup && !waiting_restore {
            continue;
        }
        let id = sf.backup_id.to_string();
        // A live lease on the service: a capsule serves it and is busy
        // (a long backup, here or in another daemon); it will get there.
        if let (Some(cluster), Some(name)) =
            (sf.service.cluster.as_deref(), sf.service.qualified_name())
        {
            let key = jobs::service_key(cluster, sf.service_type.as_str(), &name);
            if let Ok(Some((lease, _))) = view.leases.inspect(&key).await
                && !lease.is_free(now)
            {
                tracing::debug!(backup = %id, holder = %lease.holder.id, "request waits for its busy service");
                continue;
            }
        }
        let Ok(mut handle) = view.catalog().load(&id).await else {
            continue;
        };
        let what = format!(
            "{} service {} of cluster {}",
            sf.service_type,
            sf.service
                .qualified_name()
                .unwrap_or_else(|| "(any)".into()),
            sf.service.cluster.as_deref().unwrap_or("(any)")
        );
        let note = format!(
            "waiting: no capsule serving the {what} picked this request up within {}s (noted by {} at {})",
            timeout.num_seconds(),
            shared.holder.id,
            now.to_rfc3339()
        );
        let result = view
            .catalog()
            .update(&mut handle, |sf| {
                if sf.status == Status::Requested && sf.error.is_none() {
                    sf.error = Some(note.clone());
                }
                for r in sf.restores.iter_mut().filter(|r| {
                    r.status == RestoreStatus::Requested
                        && r.error.is_none()
                        && passed(r.requested_at, timeout, now)
                }) {
                    r.error = Some(note.clone());
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                tracing::warn!(backup = %id, "{note}");
                view.cache.refresh_one(&id).await;
            }
            Err(e) => tracing::debug!(backup = %id, error = %e, "could not note a waiting request"),
        }
    }
}

/// Whether two owner ids (`host/pid/random`) name the same process.
fn same_process(a: &str, b: &str) -> bool {
    let process = |id: &str| id.rsplit_once('/').map_or(id, |(p, _)| p).to_string();
    process(a) == process(b)
}

fn chrono_of(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Whether `d` has passed since `since` at `now`; never when `since + d`
/// is past the end of time (statefile dates are anyone's to edit).
fn passed(since: DateTime<Utc>, d: chrono::Duration, now: DateTime<Utc>) -> bool {
    since.checked_add_signed(d).is_some_and(|t| t <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_the_end_of_time_never_pass() {
        // Regression: `requested_at + timeout` panicked (DateTime +
        // TimeDelta overflow) on a statefile dated in the year 262142.
        let end: DateTime<Utc> = serde_json::from_str("\"+262142-12-31T23:59:59Z\"").unwrap();
        let now = Utc::now();
        assert!(!passed(
            end,
            chrono_of(std::time::Duration::from_secs(60)),
            now
        ));
        assert!(!passed(now, chrono::Duration::MAX, now));
        assert!(passed(now, chrono::Duration::zero(), now));
    }
}
