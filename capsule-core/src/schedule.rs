//! Scheduling decisions: when a periodic backup is due, and which backups
//! a rotation keeps. Pure functions of the backups of one service and an
//! injected `now`, so every policy can be tested at any point in time; the
//! daemon plans ([`plan_rotation`]) and then executes the plan with
//! [`Catalog::delete`](crate::Catalog::delete).
//!
//! Semantics (the legacy tool's, plus the safety rules capsule adds):
//!
//! - A periodic backup is **due** when no periodic backup exists, or the
//!   newest one is older than the period. A periodic backup that is
//!   `requested`, or `running` with a live owner, is never started twice.
//!   After a failed (or abandoned) attempt the next one is due after
//!   `retry_after` (at most one period).
//! - **Rotation** keeps the `rotation` newest *finished* periodic backups;
//!   manual backups are never rotated away. On top of that:
//!   `keep_daily`/`keep_weekly`/`keep_monthly` keep the newest finished
//!   periodic backup of each of the last N days, ISO weeks and months (UTC)
//!   that have one; the newest finished backup, the newest verified one
//!   and any with a restore requested or running are never deleted
//!   whatever the settings; failed and abandoned periodic
//!   backups are deleted once older than `failed_grace`, and interrupted
//!   deletes are resumed after the same grace.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};

use crate::id::BackupId;
use crate::period::Period;
use crate::statefile::{RequestType, Statefile, VerificationStatus};
use crate::status::Status;

/// When a running backup's owner counts as gone, and how soon a failed
/// periodic backup is retried.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DuePolicy {
    /// How often a periodic backup is due.
    pub period: Period,
    /// After a failed or abandoned periodic backup, the next attempt is due
    /// this long after it (capped at `period`; default 5 minutes).
    pub retry_after: Duration,
    /// A `running` backup whose owner's heartbeat is older than this is
    /// abandoned (default 2 minutes).
    pub owner_timeout: Duration,
}

impl DuePolicy {
    /// A policy for `period` with the default retry delay and owner timeout.
    pub fn new(period: Period) -> Self {
        DuePolicy {
            period,
            retry_after: Duration::from_secs(300),
            owner_timeout: Duration::from_secs(120),
        }
    }
    /// Sets the retry delay after a failed attempt.
    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = d;
        self
    }
    /// Sets the owner timeout.
    pub fn with_owner_timeout(mut self, d: Duration) -> Self {
        self.owner_timeout = d;
        self
    }
}

/// Whether a periodic backup of a service should start now.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Due {
    /// Start one now.
    Now(DueReason),
    /// Not before this time.
    At(DateTime<Utc>),
    /// A periodic backup of the service is requested or running with a live
    /// owner: never start a second one.
    InProgress(BackupId),
}

impl Due {
    /// Whether a backup should start now.
    pub fn is_now(&self) -> bool {
        matches!(self, Due::Now(_))
    }
}

/// Why a periodic backup is due.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DueReason {
    /// The service has no periodic backup (finished or failed) yet.
    NoBackup,
    /// The newest finished one is older than the period.
    PeriodElapsed {
        /// The newest finished periodic backup.
        newest: BackupId,
    },
    /// The newest attempt failed (or was abandoned) and the retry delay passed.
    Retry {
        /// The failed attempt.
        failed: BackupId,
    },
}

impl fmt::Display for DueReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DueReason::NoBackup => f.write_str("no periodic backup yet"),
            DueReason::PeriodElapsed { newest } => {
                write!(
                    f,
                    "newest periodic backup {newest} is older than the period"
                )
            }
            DueReason::Retry { failed } => write!(f, "retrying after failed backup {failed}"),
        }
    }
}

/// Whether a `running` statefile's owner stopped heartbeating: no owner,
/// or a heartbeat older than `owner_timeout` at `now`.
pub fn is_abandoned(sf: &Statefile, owner_timeout: Duration, now: DateTime<Utc>) -> bool {
    sf.last_heartbeat()
        .is_some_and(|at| after(at, to_chrono(owner_timeout)) <= now)
}

/// Decides whether a periodic backup is due, from the backups of **one
/// service** (others are the caller's to filter out; manual backups are
/// ignored here).
pub fn periodic_due<'a>(
    backups: impl IntoIterator<Item = &'a Statefile>,
    policy: &DuePolicy,
    now: DateTime<Utc>,
) -> Due {
    let mut newest_ok: Option<&Statefile> = None;
    let mut newest_failed: Option<(&Statefile, DateTime<Utc>)> = None;
    for sf in backups {
        if sf.request_type != RequestType::Periodic {
            continue;
        }
        match sf.status {
            Status::Requested => return Due::InProgress(sf.backup_id.clone()),
            Status::Running if !is_abandoned(sf, policy.owner_timeout, now) => {
                return Due::InProgress(sf.backup_id.clone());
            }
            Status::Finished => {
                if newest_ok.is_none_or(|n| newer(sf, n)) {
                    newest_ok = Some(sf);
                }
            }
            Status::Running | Status::Failed => {
                let at = attempt_time(sf);
                if newest_failed.is_none_or(|(_, t)| at > t) {
                    newest_failed = Some((sf, at));
                }
            }
            Status::Deleting => {}
        }
    }
    let period = to_chrono(policy.period.duration());
    let retry = to_chrono(policy.retry_after.min(policy.period.duration()));
    let success = newest_ok.map(|sf| (sf, after(sf.requested_at, period)));
    let failure = newest_failed
        .filter(|(_, at)| newest_ok.is_none_or(|ok| *at > ok.requested_at))
        .map(|(sf, at)| (sf, after(at, retry)));
    let (due_at, reason) = match (success, failure) {
        (None, None) => return Due::Now(DueReason::NoBackup),
        (Some((ok, at)), None) => (
            at,
            DueReason::PeriodElapsed {
                newest: ok.backup_id.clone(),
            },
        ),
        (None, Some((failed, at))) => (
            at,
            DueReason::Retry {
                failed: failed.backup_id.clone(),
            },
        ),
        (Some((_, ok_at)), Some((failed, retry_at))) => (
            ok_at.max(retry_at),
            DueReason::Retry {
                failed: failed.backup_id.clone(),
            },
        ),
    };
    if now >= due_at {
        Due::Now(reason)
    } else {
        Due::At(due_at)
    }
}

/// When an unsuccessful attempt happened: its end, else its start, else
/// its request.
fn attempt_time(sf: &Statefile) -> DateTime<Utc> {
    sf.finished_at.or(sf.started_at).unwrap_or(sf.requested_at)
}

/// Newest first: by request time, then by id (a stable tie-break).
fn newer(a: &Statefile, b: &Statefile) -> bool {
    (a.requested_at, a.backup_id.as_str()) > (b.requested_at, b.backup_id.as_str())
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// `t + d`, or the end of time when that is past it: the times come from
/// statefiles, which anyone may edit (chrono reads years up to 262142).
fn after(t: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Which backups of a service a rotation keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotationPolicy {
    /// Keep this many newest finished periodic backups (legacy `rotation`).
    pub rotation: u32,
    /// Also keep the newest finished periodic backup of each of the last N
    /// days (UTC) that have one.
    pub keep_daily: u32,
    /// … of each of the last N ISO weeks that have one.
    pub keep_weekly: u32,
    /// … of each of the last N months that have one.
    pub keep_monthly: u32,
    /// Failed and abandoned periodic backups are deleted once older than
    /// this, and interrupted deletes resumed (default 24 hours).
    pub failed_grace: Duration,
    /// A `running` backup whose owner's heartbeat is older than this is
    /// abandoned (default 2 minutes).
    pub owner_timeout: Duration,
}

impl RotationPolicy {
    /// Keep the `rotation` newest finished periodic backups, nothing more.
    pub fn new(rotation: u32) -> Self {
        RotationPolicy {
            rotation,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            failed_grace: Duration::from_secs(24 * 3600),
            owner_timeout: Duration::from_secs(120),
        }
    }
    /// Sets `keep_daily`.
    pub fn with_keep_daily(mut self, n: u32) -> Self {
        self.keep_daily = n;
        self
    }
    /// Sets `keep_weekly`.
    pub fn with_keep_weekly(mut self, n: u32) -> Self {
        self.keep_weekly = n;
        self
    }
    /// Sets `keep_monthly`.
    pub fn with_keep_monthly(mut self, n: u32) -> Self {
        self.keep_monthly = n;
        self
    }
    /// Sets the grace period of failed backups.
    pub fn with_failed_grace(mut self, d: Duration) -> Self {
        self.failed_grace = d;
        self
    }
    /// Sets the owner timeout.
    pub fn with_owner_timeout(mut self, d: Duration) -> Self {
        self.owner_timeout = d;
        self
    }
}

/// A calendar keep rule: how many buckets, the bucket of a time, the reason.
type CalendarRule = (
    u32,
    fn(DateTime<Utc>) -> String,
    fn(String) -> RotationReason,
);

/// Why a backup is kept or deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotationReason {
    /// A manual backup: never rotated.
    Manual,
    /// Requested, or running with a live owner.
    InProgress,
    /// Among the `rotation` newest finished periodic backups (1 = newest).
    Rotation(u32),
    /// The newest finished backup of the service: never deleted.
    NewestFinished,
    /// The newest finished backup whose last verification passed.
    NewestVerified,
    /// A restore of it is requested or running.
    RestorePending,
    /// The newest of its day (`keep_daily`).
    Daily(String),
    /// The newest of its ISO week (`keep_weekly`).
    Weekly(String),
    /// The newest of its month (`keep_monthly`).
    Monthly(String),
    /// Failed or abandoned, still within the grace period.
    InGrace,
    /// Deleted: a finished periodic backup beyond every keep rule.
    Rotated,
    /// Deleted: failed or abandoned, older than the grace period.
    FailedExpired,
    /// Deleted: an interrupted delete, resumed after the grace period.
    ResumeDelete,
    /// A delete in progress, within the grace period: left alone.
    DeleteInProgress,
}

impl fmt::Display for RotationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RotationReason::Manual => f.write_str("manual backup"),
            RotationReason::InProgress => f.write_str("in progress"),
            RotationReason::Rotation(n) => write!(f, "rotation #{n}"),
            RotationReason::NewestFinished => f.write_str("newest finished backup"),
            RotationReason::NewestVerified => f.write_str("newest verified backup"),
            RotationReason::RestorePending => f.write_str("a restore of it is pending"),
            RotationReason::Daily(d) => write!(f, "newest of day {d}"),
            RotationReason::Weekly(w) => write!(f, "newest of week {w}"),
            RotationReason::Monthly(m) => write!(f, "newest of month {m}"),
            RotationReason::InGrace => f.write_str("failed, within the grace period"),
            RotationReason::Rotated => f.write_str("beyond the rotation"),
            RotationReason::FailedExpired => f.write_str("failed, grace period over"),
            RotationReason::ResumeDelete => f.write_str("interrupted delete, resumed"),
            RotationReason::DeleteInProgress => f.write_str("delete in progress"),
        }
    }
}

/// One backup's fate in a [`RotationPlan`], with every reason that applies.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotationDecision {
    /// The backup.
    pub id: BackupId,
    /// Why it is kept (all the keep rules that hold) or deleted (one reason).
    pub reasons: Vec<RotationReason>,
}

/// What a rotation keeps and deletes, newest first in each list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotationPlan {
    /// Backups left alone.
    pub keep: Vec<RotationDecision>,
    /// Backups to delete with [`Catalog::delete`](crate::Catalog::delete).
    pub delete: Vec<RotationDecision>,
}

impl RotationPlan {
    /// Whether the plan deletes nothing.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty()
    }

    /// Whether `id` is deleted by the plan.
    pub fn deletes(&self, id: &str) -> bool {
        self.delete.iter().any(|d| d.id.as_str() == id)
    }
}

impl fmt::Display for RotationPlan {
    /// One line per backup: `keep <id> (reasons)` / `delete <id> (reason)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (verb, list) in [("keep", &self.keep), ("delete", &self.delete)] {
            for d in list {
                let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
                writeln!(f, "{verb} {} ({})", d.id, reasons.join(", "))?;
            }
        }
        Ok(())
    }
}

/// Plans a rotation of the backups of **one service** (see the module docs
/// for the rules). Pure: nothing is read or deleted.
pub fn plan_rotation(
    backups: &[Statefile],
    policy: &RotationPolicy,
    now: DateTime<Utc>,
) -> RotationPlan {
    let mut order: Vec<&Statefile> = backups.iter().collect();
    order.sort_by(|a, b| {
        (b.requested_at, b.backup_id.as_str()).cmp(&(a.requested_at, a.backup_id.as_str()))
    });
    let mut keep: BTreeMap<&str, Vec<RotationReason>> = BTreeMap::new();
    let mut delete: BTreeMap<&str, RotationReason> = BTreeMap::new();

    // Protections that hold whatever the settings.
    if let Some(sf) = order.iter().find(|sf| sf.status == Status::Finished) {
        keep.entry(sf.backup_id.as_str())
            .or_default()
            .push(RotationReason::NewestFinished);
    }
    if let Some(sf) = order.iter().find(|sf| {
        sf.status == Status::Finished
            && sf
                .last_verification()
                .is_some_and(|v| v.status == VerificationStatus::Passed)
    }) {
        keep.entry(sf.backup_id.as_str())
            .or_default()
            .push(RotationReason::NewestVerified);
    }
    // An accepted restore request runs when its service is free, maybe
    // after the very backup whose rotation would delete what it restores.
    for sf in order
        .iter()
        .filter(|sf| sf.status == Status::Finished && sf.restore_pending())
    {
        keep.entry(sf.backup_id.as_str())
            .or_default()
            .push(RotationReason::RestorePending);
    }

    let finished_periodic: Vec<&Statefile> = order
        .iter()
        .copied()
        .filter(|sf| sf.request_type == RequestType::Periodic && sf.status == Status::Finished)
        .collect();
    for (rank, sf) in finished_periodic
        .iter()
        .take(policy.rotation as usize)
        .enumerate()
    {
        keep.entry(sf.backup_id.as_str())
            .or_default()
            .push(RotationReason::Rotation(rank as u32 + 1));
    }
    let buckets: [CalendarRule; 3] = [
        (
            policy.keep_daily,
            |t| t.format("%Y-%m-%d").to_string(),
            RotationReason::Daily,
        ),
        (
            policy.keep_weekly,
            |t| {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            },
            RotationReason::Weekly,
        ),
        (
            policy.keep_monthly,
            |t| t.format("%Y-%m").to_string(),
            RotationReason::Monthly,
        ),
    ];
    for (n, bucket_of, reason) in buckets {
        let mut seen = BTreeSet::new();
        for sf in &finished_periodic {
            if seen.len() >= n as usize {
                break;
            }
            let bucket = bucket_of(sf.requested_at);
            if seen.insert(bucket.clone()) {
                keep.entry(sf.backup_id.as_str())
                    .or_default()
                    .push(reason(bucket));
            }
        }
    }

    let grace = to_chrono(policy.failed_grace);
    for sf in &order {
        let id = sf.backup_id.as_str();
        if keep.contains_key(id) {
            continue;
        }
        let abandoned = is_abandoned(sf, policy.owner_timeout, now);
        match (sf.status, sf.request_type) {
            (Status::Deleting, _) => {
                if after(attempt_time(sf), grace) <= now {
                    delete.insert(id, RotationReason::ResumeDelete);
                } else {
                    keep.entry(id)
                        .or_default()
                        .push(RotationReason::DeleteInProgress);
                }
            }
            (_, RequestType::Manual) => keep.entry(id).or_default().push(RotationReason::Manual),
            (Status::Requested, _) => keep.entry(id).or_default().push(RotationReason::InProgress),
            (Status::Running, _) if !abandoned => {
                keep.entry(id).or_default().push(RotationReason::InProgress)
            }
            (Status::Running | Status::Failed, _) => {
                if after(attempt_time(sf), grace) <= now {
                    delete.insert(id, RotationReason::FailedExpired);
                } else {
                    keep.entry(id).or_default().push(RotationReason::InGrace);
                }
            }
            (Status::Finished, _) => {
                delete.insert(id, RotationReason::Rotated);
            }
        }
    }

    let mut plan = RotationPlan::default();
    for sf in &order {
        let id = sf.backup_id.as_str();
        if let Some(reasons) = keep.remove(id) {
            plan.keep.push(RotationDecision {
                id: sf.backup_id.clone(),
                reasons,
            });
        } else if let Some(reason) = delete.remove(id) {
            plan.delete.push(RotationDecision {
                id: sf.backup_id.clone(),
                reasons: vec![reason],
            });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ServiceType;
    use crate::statefile::Restore;
    use crate::statefile::{Owner, Verification};
    use crate::status::RestoreStatus;
    use proptest::prelude::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn backup(secs: i64, kind: RequestType, status: Status) -> Statefile {
        let mut sf = Statefile::new(BackupId::generate(ServiceType::Postgresql), kind, at(secs));
        sf.status = status;
        if status != Status::Requested {
            sf.started_at = Some(at(secs));
        }
        if matches!(status, Status::Finished | Status::Failed) {
            sf.finished_at = Some(at(secs + 10));
        }
        if status == Status::Running {
            sf.owner = Some(Owner::this_process(None, at(secs)));
        }
        sf
    }

    fn periodic(secs: i64, status: Status) -> Statefile {
        backup(secs, RequestType::Periodic, status)
    }

    fn hour() -> Period {
        "1h".parse().unwrap()
    }

    #[test]
    fn times_at_the_end_of_time_are_values_not_panics() {
        // Regression: a statefile saying `"requestedAt":
        // "+262142-12-31T23:59:59Z"` (chrono reads it) panicked the
        // scheduler and the rotation with a DateTime + TimeDelta overflow.
        let end: DateTime<Utc> = serde_json::from_str("\"+262142-12-31T23:59:59Z\"").unwrap();
        let mut all = Vec::new();
        for status in [
            Status::Finished,
            Status::Failed,
            Status::Running,
            Status::Deleting,
        ] {
            let mut sf = periodic(0, status);
            sf.requested_at = end;
            sf.started_at = Some(end);
            sf.finished_at = sf.finished_at.map(|_| end);
            if let Some(o) = sf.owner.as_mut() {
                o.heartbeat_at = end;
            }
            assert!(!is_abandoned(&sf, Duration::MAX, at(0)));
            all.push(sf);
        }
        let due = periodic_due(&all[..1], &DuePolicy::new(hour()), at(0));
        assert_eq!(due, Due::At(DateTime::<Utc>::MAX_UTC));
        let failed = periodic_due(&all[1..2], &DuePolicy::new(hour()), at(0));
        assert_eq!(failed, Due::At(DateTime::<Utc>::MAX_UTC));
        let plan = plan_rotation(&all, &RotationPolicy::new(0), at(0));
        assert!(plan.delete.is_empty(), "{plan}");
    }

    #[test]
    fn due_table() {
        let policy = DuePolicy::new(hour()).with_retry_after(Duration::from_secs(600));
        let cases: Vec<(&str, Vec<Statefile>, i64, bool)> = vec![
            ("no backups", vec![], 0, true),
            (
                "manual only",
                vec![backup(0, RequestType::Manual, Status::Finished)],
                10,
                true,
            ),
            (
                "fresh periodic",
                vec![periodic(0, Status::Finished)],
                3599,
                false,
            ),
            (
                "period elapsed",
                vec![periodic(0, Status::Finished)],
                3600,
                true,
            ),
            (
                "running, live owner",
                vec![periodic(0, Status::Running)],
                60,
                false,
            ),
            (
                "running, long but live",
                vec![periodic(0, Status::Running)],
                100,
                false,
            ),
            // Abandoned counts as a failed attempt: retried after retry_after.
            (
                "abandoned, retry not yet",
                vec![periodic(0, Status::Running)],
                121,
                false,
            ),
            (
                "abandoned, retry due",
                vec![periodic(0, Status::Running)],
                601,
                true,
            ),
            (
                "requested periodic",
                vec![periodic(-9999, Status::Requested)],
                0,
                false,
            ),
            (
                "failed, retry not yet",
                vec![periodic(0, Status::Failed)],
                300,
                false,
            ),
            (
                "failed, retry due",
                vec![periodic(0, Status::Failed)],
                610,
                true,
            ),
            (
                "failed after a fresh success",
                vec![periodic(0, Status::Finished), periodic(100, Status::Failed)],
                1000,
                false,
            ),
            (
                "failed before the newest success",
                vec![periodic(0, Status::Failed), periodic(100, Status::Finished)],
                700,
                false,
            ),
            (
                "deleting ignored",
                vec![periodic(0, Status::Deleting)],
                1,
                true,
            ),
        ];
        for (name, backups, now, want) in cases {
            let due = periodic_due(&backups, &policy, at(now));
            assert_eq!(due.is_now(), want, "{name}: {due:?}");
        }
    }

    #[test]
    fn due_says_when() {
        let policy = DuePolicy::new(hour());
        let b = vec![periodic(0, Status::Finished)];
        assert_eq!(periodic_due(&b, &policy, at(5)), Due::At(at(3600)));
    }

    #[test]
    fn rotation_keeps_n_newest_finished_periodic_and_every_manual() {
        let mut b: Vec<Statefile> = (0..6)
            .map(|i| periodic(i * 3600, Status::Finished))
            .collect();
        b.push(backup(100, RequestType::Manual, Status::Finished));
        b.push(backup(200, RequestType::Manual, Status::Failed));
        let plan = plan_rotation(&b, &RotationPolicy::new(2), at(10 * 3600));
        let deleted: Vec<&str> = plan.delete.iter().map(|d| d.id.as_str()).collect();
        let want: Vec<&str> = b[..4].iter().rev().map(|s| s.backup_id.as_str()).collect();
        assert_eq!(deleted, want);
        assert_eq!(plan.keep.len(), 4);
        assert!(plan.to_string().contains("rotation #1"));
    }

    #[test]
    fn a_backup_with_a_pending_restore_is_kept() {
        let mut b: Vec<Statefile> = (0..4)
            .map(|i| periodic(i * 3600, Status::Finished))
            .collect();
        b[0].restores.push(Restore::requested(at(4 * 3600)));
        let mut running = Restore::requested(at(4 * 3600));
        running.status = RestoreStatus::Running;
        b[1].restores.push(running);
        let mut done = Restore::requested(at(4 * 3600));
        done.status = RestoreStatus::Finished;
        b[2].restores.push(done);
        let plan = plan_rotation(&b, &RotationPolicy::new(1), at(5 * 3600));
        let deleted: Vec<&str> = plan.delete.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(deleted, [b[2].backup_id.as_str()]);
        assert!(
            plan.to_string().contains("a restore of it is pending"),
            "{plan}"
        );
    }

    #[test]
    fn rotation_zero_still_keeps_the_newest_finished() {
        let b: Vec<Statefile> = (0..3)
            .map(|i| periodic(i * 3600, Status::Finished))
            .collect();
        let plan = plan_rotation(&b, &RotationPolicy::new(0), at(5 * 3600));
        assert_eq!(plan.keep.len(), 1);
        assert_eq!(plan.keep[0].id, b[2].backup_id);
        assert_eq!(plan.keep[0].reasons, vec![RotationReason::NewestFinished]);
    }

    #[test]
    fn the_newest_verified_backup_is_kept() {
        let mut b: Vec<Statefile> = (0..4)
            .map(|i| periodic(i * 3600, Status::Finished))
            .collect();
        b[0].verifications.push(Verification {
            at: at(50),
            status: VerificationStatus::Passed,
            target: None,
            mismatches: vec![],
            duration_ms: None,
            error: None,
        });
        let plan = plan_rotation(&b, &RotationPolicy::new(1), at(5 * 3600));
        assert!(!plan.deletes(b[0].backup_id.as_str()));
        assert!(plan.deletes(b[1].backup_id.as_str()));
    }

    #[test]
    fn failed_backups_wait_for_the_grace_period() {
        let b = vec![
            periodic(0, Status::Failed),
            periodic(7200, Status::Failed),
            periodic(7300, Status::Running), // abandoned at 7300 + 120
            periodic(3600, Status::Finished),
        ];
        let policy = RotationPolicy::new(5).with_failed_grace(Duration::from_secs(3600));
        let plan = plan_rotation(&b, &policy, at(7200));
        assert!(plan.deletes(b[0].backup_id.as_str()));
        assert!(!plan.deletes(b[1].backup_id.as_str()));
        assert!(!plan.deletes(b[2].backup_id.as_str()));
        let later = plan_rotation(&b, &policy, at(20_000));
        assert!(later.deletes(b[1].backup_id.as_str()) && later.deletes(b[2].backup_id.as_str()));
        assert!(!later.deletes(b[3].backup_id.as_str()));
    }

    #[test]
    fn calendar_keeps_take_the_newest_of_each_day() {
        // Four backups a day for five days.
        let b: Vec<Statefile> = (0..20)
            .map(|i| periodic(i * 6 * 3600, Status::Finished))
            .collect();
        let policy = RotationPolicy::new(2).with_keep_daily(3);
        let plan = plan_rotation(&b, &policy, at(30 * 86400));
        let kept: BTreeSet<&str> = plan.keep.iter().map(|d| d.id.as_str()).collect();
        // The 2 newest, plus the newest of each of the last 3 days (one of
        // which is the newest overall).
        assert_eq!(kept.len(), 4, "{plan}");
        let days: BTreeSet<String> = plan
            .keep
            .iter()
            .flat_map(|d| d.reasons.iter())
            .filter_map(|r| match r {
                RotationReason::Daily(d) => Some(d.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(days.len(), 3);
    }

    #[test]
    fn deletes_in_progress_are_resumed_after_the_grace() {
        let b = vec![
            periodic(0, Status::Deleting),
            backup(0, RequestType::Manual, Status::Deleting),
        ];
        let policy = RotationPolicy::new(2).with_failed_grace(Duration::from_secs(60));
        assert!(plan_rotation(&b, &policy, at(30)).is_empty());
        assert_eq!(plan_rotation(&b, &policy, at(100)).delete.len(), 2);
    }

    fn arb_backups() -> impl Strategy<Value = Vec<Statefile>> {
        proptest::collection::vec(
            (
                0i64..200_000,
                0usize..5,
                any::<bool>(),
                any::<bool>(),
                0usize..8,
            ),
            0..40,
        )
        .prop_map(|items| {
            items
                .into_iter()
                .map(|(t, s, manual, verified, restore)| {
                    let status = [
                        Status::Requested,
                        Status::Running,
                        Status::Finished,
                        Status::Failed,
                        Status::Deleting,
                    ][s];
                    let kind = if manual {
                        RequestType::Manual
                    } else {
                        RequestType::Periodic
                    };
                    let mut sf = backup(t, kind, status);
                    // Mostly no restore; else one in any state.
                    if let Some(&state) = [
                        RestoreStatus::Requested,
                        RestoreStatus::Running,
                        RestoreStatus::Finished,
                        RestoreStatus::Failed,
                    ]
                    .get(restore)
                    {
                        let mut r = Restore::requested(at(t + 30));
                        r.status = state;
                        sf.restores.push(r);
                    }
                    if verified && status == Status::Finished {
                        sf.verifications.push(Verification {
                            at: at(t + 20),
                            status: VerificationStatus::Passed,
                            target: None,
                            mismatches: vec![],
                            duration_ms: None,
                            error: None,
                        });
                    }
                    sf
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn rotation_invariants(
            backups in arb_backups(),
            rotation in 0u32..6,
            daily in 0u32..3,
            now in 0i64..400_000,
            grace in 0u64..100_000,
        ) {
            let policy = RotationPolicy::new(rotation)
                .with_keep_daily(daily)
                .with_failed_grace(Duration::from_secs(grace));
            let plan = plan_rotation(&backups, &policy, at(now));
            // Every backup is decided exactly once.
            prop_assert_eq!(plan.keep.len() + plan.delete.len(), backups.len());
            let deleted: BTreeSet<&str> = plan.delete.iter().map(|d| d.id.as_str()).collect();
            let by_id: BTreeMap<&str, &Statefile> =
                backups.iter().map(|sf| (sf.backup_id.as_str(), sf)).collect();
            // The newest finished backup is never deleted.
            let mut finished: Vec<&Statefile> =
                backups.iter().filter(|sf| sf.status == Status::Finished).collect();
            finished.sort_by(|a, b| (b.requested_at, b.backup_id.as_str()).cmp(&(a.requested_at, a.backup_id.as_str())));
            if let Some(newest) = finished.first() {
                prop_assert!(!deleted.contains(newest.backup_id.as_str()));
            }
            // Manual backups are never deleted unless a delete was already started.
            for id in &deleted {
                let sf = by_id[id];
                prop_assert!(sf.request_type == RequestType::Periodic || sf.status == Status::Deleting);
                // Nothing live is deleted, nor what a pending restore reads.
                prop_assert!(sf.status != Status::Requested);
                prop_assert!(sf.status != Status::Finished || !sf.restore_pending());
                prop_assert!(sf.status != Status::Running || is_abandoned(sf, policy.owner_timeout, at(now)));
            }
            // Finished periodic backups kept: at most N, plus the protected and calendar ones.
            let kept_periodic = plan.keep.iter().filter(|d| {
                let sf = by_id[d.id.as_str()];
                sf.request_type == RequestType::Periodic && sf.status == Status::Finished
            }).count();
            let pending = backups.iter().filter(|sf| sf.status == Status::Finished && sf.restore_pending()).count();
            prop_assert!(kept_periodic <= rotation as usize + 2 + daily as usize + pending);
            if daily == 0 {
                let extra = plan.keep.iter().filter(|d| {
                    let sf = by_id[d.id.as_str()];
                    sf.request_type == RequestType::Periodic && sf.status == Status::Finished
                        && !d.reasons.iter().any(|r| matches!(r, RotationReason::Rotation(_)))
                }).count();
                prop_assert!(extra <= 2 + pending);
                // With nothing verified and N >= 1, exactly min(N, count) are kept.
                let any_verified = backups.iter().any(|sf| !sf.verifications.is_empty());
                let periodic_finished = backups.iter().filter(|sf| sf.request_type == RequestType::Periodic && sf.status == Status::Finished).count();
                let newest_is_periodic = finished.first().is_none_or(|sf| sf.request_type == RequestType::Periodic);
                if rotation >= 1 && !any_verified && newest_is_periodic && pending == 0 {
                    prop_assert_eq!(kept_periodic, periodic_finished.min(rotation as usize));
                }
            }
        }

        #[test]
        fn due_never_starts_a_second_live_backup(
            backups in arb_backups(),
            now in 0i64..400_000,
        ) {
            let policy = DuePolicy::new(hour());
            let due = periodic_due(&backups, &policy, at(now));
            let live = backups.iter().any(|sf| sf.request_type == RequestType::Periodic
                && (sf.status == Status::Requested
                    || (sf.status == Status::Running && !is_abandoned(sf, policy.owner_timeout, at(now)))));
            prop_assert_eq!(live, matches!(due, Due::InProgress(_)));
            // Never due while a finished periodic backup is younger than the period.
            let young = backups.iter().any(|sf| sf.request_type == RequestType::Periodic
                && sf.status == Status::Finished
                && at(now) - sf.requested_at < chrono::Duration::hours(1));
            if young {
                prop_assert!(!due.is_now());
            }
        }
    }
}
