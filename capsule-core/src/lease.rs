//! Leases: who runs a job, recorded in the bucket so several daemons can
//! serve one bucket without running a job twice.
//!
//! A lease is a small JSON object at `<prefix>/.leases/<job-key>.json`
//! (the catalog's listing ignores the `.leases` folder: it is neither a
//! backup id nor holds a statefile). The protocol uses only the store's
//! conditional writes:
//!
//! 1. **Acquire**: create-if-absent. If the object exists and its holder
//!    released it, or its heartbeat is older than the holder's `ttl`, it is
//!    **taken over** by an update-if-unchanged from the version just read;
//!    of several contenders exactly one update succeeds.
//! 2. **Renew** (heartbeat): update-if-unchanged from the version this
//!    holder last wrote. A conflict means someone took the lease over
//!    (this holder was presumed dead): [`Renewal::Lost`], and the job must
//!    stop.
//! 3. **Release**: update-if-unchanged to `released`, then (optionally)
//!    delete the object.
//!
//! Expiry is judged with the reader's clock against the holder's recorded
//! heartbeat, so clocks must agree to well within the ttl.

use std::time::Duration;

use bytes::Bytes;
use capsule_store::{Store, Version};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The folder (under the store prefix) that holds the lease objects.
pub const LEASES_DIR: &str = ".leases";

/// The version written in every lease object.
pub const LEASE_V1: &str = "v1";

/// How many times [`Leases::acquire`] retries when the object changes or
/// vanishes between its steps.
const ACQUIRE_ATTEMPTS: usize = 4;

/// Who holds (or wants) a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LeaseHolder {
    /// Unique per process run (host, pid and a random part).
    pub id: String,
    /// Host or pod name.
    #[serde(default)]
    pub host: String,
    /// The cluster the holder serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl LeaseHolder {
    /// A holder named `id` on `host`.
    pub fn new(id: impl Into<String>, host: impl Into<String>, cluster: Option<String>) -> Self {
        LeaseHolder {
            id: id.into(),
            host: host.into(),
            cluster,
        }
    }
}

/// The content of a lease object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LeaseRecord {
    /// Always [`LEASE_V1`].
    pub lease_version: String,
    /// The job key.
    pub job: String,
    /// The current (or last) holder.
    pub holder: LeaseHolder,
    /// When this holder acquired it.
    pub acquired_at: DateTime<Utc>,
    /// The holder's last heartbeat.
    pub renewed_at: DateTime<Utc>,
    /// How long after `renewed_at` the lease may be taken over, in ms.
    pub ttl_ms: u64,
    /// The holder let it go.
    #[serde(default)]
    pub released: bool,
    /// How many times the lease was taken over from a silent holder.
    #[serde(default)]
    pub takeovers: u32,
    /// Fields a newer capsule wrote, kept on rewrite.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl LeaseRecord {
    /// When the lease may be taken over unless renewed.
    pub fn expires_at(&self) -> DateTime<Utc> {
        // The record is a file in the bucket: a ttl or date past the end
        // of time means never (not a panic).
        let ttl = chrono::Duration::milliseconds(self.ttl_ms.min(i64::MAX as u64) as i64);
        self.renewed_at
            .checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Whether the lease is free at `now`: released, or not renewed within its ttl.
    pub fn is_free(&self, now: DateTime<Utc>) -> bool {
        self.released || self.expires_at() <= now
    }
}

/// The outcome of [`Leases::acquire`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Acquisition {
    /// The lease was free (absent or released) and is now ours.
    Acquired(Lease),
    /// The lease had expired (its holder stopped renewing) and is now ours.
    TakenOver {
        /// Our lease.
        lease: Lease,
        /// What the silent holder had written.
        previous: Box<LeaseRecord>,
    },
    /// Someone else holds it.
    Held(LeaseRecord),
}

impl Acquisition {
    /// Our lease, if we got it.
    pub fn into_lease(self) -> Option<Lease> {
        match self {
            Acquisition::Acquired(l) | Acquisition::TakenOver { lease: l, .. } => Some(l),
            Acquisition::Held(_) => None,
        }
    }
}

/// The outcome of [`Lease::renew`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renewal {
    /// Still ours, heartbeat recorded.
    Renewed,
    /// Someone took it over or removed it: stop the job.
    Lost(Option<Box<LeaseRecord>>),
}

/// Lease objects of one store, acquired for one holder.
#[derive(Clone, Debug)]
pub struct Leases {
    store: Store,
    holder: LeaseHolder,
    ttl: Duration,
}

impl Leases {
    /// Leases in `store` (under its prefix) for `holder`, taken over by
    /// others when not renewed within `ttl`.
    pub fn new(store: Store, holder: LeaseHolder, ttl: Duration) -> Self {
        Leases { store, holder, ttl }
    }

    /// The holder leases are acquired for.
    pub fn holder(&self) -> &LeaseHolder {
        &self.holder
    }

    /// The ttl written into new leases.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The object key of `job`'s lease: `.leases/<job>.json`, the job key
    /// reduced to `[A-Za-z0-9._-]` (anything else becomes `_` followed by
    /// its hex code, so distinct keys stay distinct).
    pub fn key(job: &str) -> String {
        let mut name = String::with_capacity(job.len() + 8);
        for c in job.chars() {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                name.push(c);
            } else {
                name.push_str(&format!("_{:x}_", c as u32));
            }
        }
        if name.starts_with('.') {
            name.insert(0, '_');
        }
        format!("{LEASES_DIR}/{name}.json")
    }

    fn record(&self, job: &str, now: DateTime<Utc>, takeovers: u32) -> LeaseRecord {
        LeaseRecord {
            lease_version: LEASE_V1.to_string(),
            job: job.to_string(),
            holder: self.holder.clone(),
            acquired_at: now,
            renewed_at: now,
            ttl_ms: self.ttl.as_millis().min(u64::MAX as u128) as u64,
            released: false,
            takeovers,
            extra: serde_json::Map::new(),
        }
    }

    /// Reads `job`'s lease, if any.
    ///
    /// # Errors
    /// Storage errors; [`Error::Invalid`] when the object cannot be parsed.
    pub async fn inspect(&self, job: &str) -> Result<Option<(LeaseRecord, Version)>> {
        let key = Self::key(job);
        match self.store.get(&key).await {
            Ok(obj) => Ok(Some((parse(&key, &obj.bytes)?, obj.version))),
            Err(capsule_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store(format!("lease {job}: reading"), e)),
        }
    }

    /// Tries to take `job`'s lease at `now` (see the module docs).
    ///
    /// # Errors
    /// Storage errors, or repeated races with other holders.
    pub async fn acquire(&self, job: &str, now: DateTime<Utc>) -> Result<Acquisition> {
        let key = Self::key(job);
        for _ in 0..ACQUIRE_ATTEMPTS {
            let record = self.record(job, now, 0);
            match self.store.create(&key, encode(&record)?).await {
                Ok(version) => {
                    tracing::debug!(job, "lease acquired");
                    return Ok(Acquisition::Acquired(self.lease(key, record, version)));
                }
                Err(capsule_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(Error::store(format!("lease {job}: creating"), e)),
            }
            let (current, version) = match self.store.get(&key).await {
                Ok(obj) => {
                    // An unreadable lease object is garbage: free to take.
                    let current = parse(&key, &obj.bytes).ok();
                    (current, obj.version)
                }
                Err(capsule_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(Error::store(format!("lease {job}: reading"), e)),
            };
            if let Some(c) = &current
                && !c.is_free(now)
            {
                return Ok(Acquisition::Held(c.clone()));
            }
            let expired = current.as_ref().is_some_and(|c| !c.released);
            let takeovers = current
                .as_ref()
                .map_or(0, |c| c.takeovers)
                .saturating_add(u32::from(expired));
            let mut record = self.record(job, now, takeovers);
            if let Some(c) = &current {
                record.extra = c.extra.clone();
            }
            match self.store.update(&key, encode(&record)?, &version).await {
                Ok(version) => {
                    let lease = self.lease(key, record, version);
                    return Ok(match current {
                        Some(previous) if expired => {
                            tracing::info!(
                                job,
                                previous = %previous.holder.id,
                                renewed_at = %previous.renewed_at,
                                "lease taken over from a silent holder"
                            );
                            Acquisition::TakenOver {
                                lease,
                                previous: Box::new(previous),
                            }
                        }
                        _ => Acquisition::Acquired(lease),
                    });
                }
                // Another contender won, or the object vanished: look again.
                Err(
                    capsule_store::Error::Conflict { .. } | capsule_store::Error::NotFound { .. },
                ) => {}
                Err(e) => return Err(Error::store(format!("lease {job}: taking over"), e)),
            }
        }
        match self.inspect(job).await? {
            Some((record, _)) if !record.is_free(now) => Ok(Acquisition::Held(record)),
            _ => Err(Error::invalid(
                "lease",
                format!("lease {job}: contended, try again later"),
            )),
        }
    }

    fn lease(&self, key: String, record: LeaseRecord, version: Version) -> Lease {
        Lease {
            store: self.store.clone(),
            key,
            record,
            version,
        }
    }
}

/// A lease this holder holds. Renew it more often than its ttl; release it
/// at the end of the job. Dropping it without release leaves it to expire.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    key: String,
    record: LeaseRecord,
    version: Version,
}

impl Lease {
    /// The job key.
    pub fn job(&self) -> &str {
        &self.record.job
    }

    /// What this holder last wrote.
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// Records a heartbeat at `now`, if the lease is still ours.
    ///
    /// # Errors
    /// Storage errors other than a lost race (which is [`Renewal::Lost`]).
    pub async fn renew(&mut self, now: DateTime<Utc>) -> Result<Renewal> {
        let mut next = self.record.clone();
        next.renewed_at = now;
        match self
            .store
            .update(&self.key, encode(&next)?, &self.version)
            .await
        {
            Ok(version) => {
                self.record = next;
                self.version = version;
                Ok(Renewal::Renewed)
            }
            Err(capsule_store::Error::Conflict { .. } | capsule_store::Error::NotFound { .. }) => {
                let current = match self.store.get(&self.key).await {
                    Ok(obj) => parse(&self.key, &obj.bytes).ok().map(Box::new),
                    Err(_) => None,
                };
                tracing::warn!(job = %self.record.job, holder = ?current.as_ref().map(|c| &c.holder.id), "lease lost");
                Ok(Renewal::Lost(current))
            }
            Err(e) => Err(Error::store(
                format!("lease {}: renewing", self.record.job),
                e,
            )),
        }
    }

    /// Releases the lease: marks it released if it is still ours, then,
    /// with `remove`, deletes the object. Returns whether it was still ours.
    ///
    /// # Errors
    /// Storage errors (the lease then simply expires).
    pub async fn release(mut self, now: DateTime<Utc>, remove: bool) -> Result<bool> {
        self.record.released = true;
        self.record.renewed_at = now;
        match self
            .store
            .update(&self.key, encode(&self.record)?, &self.version)
            .await
        {
            Ok(_) => {}
            Err(capsule_store::Error::Conflict { .. } | capsule_store::Error::NotFound { .. }) => {
                return Ok(false);
            }
            Err(e) => {
                return Err(Error::store(
                    format!("lease {}: releasing", self.record.job),
                    e,
                ));
            }
        }
        if remove {
            self.store
                .delete(&self.key)
                .await
                .map_err(|e| Error::store(format!("lease {}: removing", self.record.job), e))?;
        }
        tracing::debug!(job = %self.record.job, "lease released");
        Ok(true)
    }
}

fn encode(record: &LeaseRecord) -> Result<Bytes> {
    serde_json::to_vec_pretty(record)
        .map(Bytes::from)
        .map_err(|e| Error::invalid("lease", format!("lease {}: encoding: {e}", record.job)))
}

fn parse(key: &str, bytes: &[u8]) -> Result<LeaseRecord> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid("lease", format!("lease object {key} unreadable: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn leases(store: &Store, who: &str) -> Leases {
        Leases::new(
            store.clone(),
            LeaseHolder::new(who, "host", Some("c".into())),
            Duration::from_secs(30),
        )
    }

    #[test]
    fn keys_are_safe_and_distinct() {
        assert_eq!(
            Leases::key("periodic.dev-eu.postgresql.cnvrg/pg"),
            ".leases/periodic.dev-eu.postgresql.cnvrg_2f_pg.json"
        );
        assert_ne!(Leases::key("a/b"), Leases::key("a_b"));
        assert_eq!(Leases::key(".x"), ".leases/_.x.json");
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_takeover_after_expiry() {
        let store = Store::from_url("memory://")
            .unwrap()
            .with_prefix("p")
            .unwrap();
        let (a, b) = (leases(&store, "a"), leases(&store, "b"));
        let mut la = a.acquire("job", t(0)).await.unwrap().into_lease().unwrap();
        assert!(
            matches!(b.acquire("job", t(10)).await.unwrap(), Acquisition::Held(r) if r.holder.id == "a")
        );
        assert_eq!(la.renew(t(20)).await.unwrap(), Renewal::Renewed);
        // Renewed at 20: still held at 45, free at 50.
        assert!(matches!(
            b.acquire("job", t(45)).await.unwrap(),
            Acquisition::Held(_)
        ));
        let Acquisition::TakenOver {
            lease: lb,
            previous,
        } = b.acquire("job", t(50)).await.unwrap()
        else {
            panic!("expected a takeover")
        };
        assert_eq!(previous.holder.id, "a");
        assert_eq!(lb.record().takeovers, 1);
        // The silent holder finds out on its next heartbeat.
        assert!(
            matches!(la.renew(t(51)).await.unwrap(), Renewal::Lost(Some(r)) if r.holder.id == "b")
        );
        assert!(!la.release(t(52), true).await.unwrap());
        // Release frees it for the next holder without a takeover.
        assert!(lb.release(t(53), false).await.unwrap());
        assert!(
            matches!(a.acquire("job", t(54)).await.unwrap(), Acquisition::Acquired(l) if l.record().takeovers == 1)
        );
    }

    #[tokio::test]
    async fn the_catalog_listing_ignores_lease_objects() {
        let store = Store::from_url("memory://")
            .unwrap()
            .with_prefix("p")
            .unwrap();
        let catalog = crate::Catalog::new(store.clone());
        let sf = catalog
            .request_backup(crate::ServiceType::Redis, Default::default(), "x")
            .await
            .unwrap();
        let _lease = leases(&store, "a").acquire("backup.x", t(0)).await.unwrap();
        let listed = catalog.list(&Default::default()).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, sf.backup_id.as_str());
    }

    #[tokio::test]
    async fn released_and_removed_leases_can_be_acquired_again() {
        let store = Store::from_url("memory://").unwrap();
        let a = leases(&store, "a");
        let l = a.acquire("j", t(0)).await.unwrap().into_lease().unwrap();
        assert!(l.release(t(1), true).await.unwrap());
        assert!(a.inspect("j").await.unwrap().is_none());
        assert!(matches!(
            a.acquire("j", t(2)).await.unwrap(),
            Acquisition::Acquired(_)
        ));
    }

    #[tokio::test]
    async fn absurd_lease_records_are_values_not_panics() {
        // Regression: a lease object with a ttl or a date past the end of
        // time panicked in `expires_at` (DateTime + TimeDelta overflow), one
        // with u32::MAX takeovers on the next takeover (u32 overflow).
        let record = |renewed: &str, ttl_ms: u64| -> LeaseRecord {
            serde_json::from_value(serde_json::json!({
                "leaseVersion": "v1", "job": "j",
                "holder": {"id": "x", "host": "h"},
                "acquiredAt": "2020-01-01T00:00:00Z", "renewedAt": renewed,
                "ttlMs": ttl_ms, "takeovers": u32::MAX,
            }))
            .unwrap()
        };
        for r in [
            record("2020-01-01T00:00:00Z", u64::MAX),
            record("+262142-12-31T23:59:59Z", 1000),
        ] {
            assert_eq!(r.expires_at(), DateTime::<Utc>::MAX_UTC);
            assert!(!r.is_free(t(0)));
        }
        let store = Store::from_url("memory://").unwrap();
        let expired = record("2020-01-01T00:00:00Z", 1000);
        store
            .put(&Leases::key("j"), encode(&expired).unwrap())
            .await
            .unwrap();
        let got = leases(&store, "a").acquire("j", t(0)).await.unwrap();
        let Acquisition::TakenOver { lease, .. } = got else {
            panic!("expected a takeover, got {got:?}")
        };
        assert_eq!(lease.record().takeovers, u32::MAX);
    }

    #[tokio::test]
    async fn contenders_race_for_an_expired_lease_and_exactly_one_wins() {
        let store = Store::from_url("memory://").unwrap();
        let old = leases(&store, "old");
        drop(old.acquire("j", t(0)).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..8 {
            let l = leases(&store, &format!("c{i}"));
            tasks.push(tokio::spawn(async move {
                l.acquire("j", t(100)).await.unwrap()
            }));
        }
        let mut winners = 0;
        for task in tasks {
            if task.await.unwrap().into_lease().is_some() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }
}
