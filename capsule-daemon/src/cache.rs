//! An in-memory copy of a store's catalog, refreshed incrementally: each
//! refresh lists the objects (one listing) and re-reads only the
//! statefiles whose version (ETag, size, time) changed since the last one.
//! The API answers from the latest [`Snapshot`] without touching the
//! bucket; every entry's JSON summary is rendered once, when it changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::Bytes;

use capsule_core::statefile::STATEFILE_NAME;
use capsule_core::{BackupFolder, BackupId, Catalog, Error as CoreError, ListFilter, Statefile};
use capsule_store::Version;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::error::Result;

/// The marker object a delete writes first (see `Catalog::delete`).
const DELETING_MARKER: &str = "deleting";

/// How many statefiles are read at once during a refresh.
const READ_CONCURRENCY: usize = 32;

/// One backup folder as last seen.
#[derive(Debug)]
#[non_exhaustive]
pub struct CachedBackup {
    /// The folder name (the backup id).
    pub id: String,
    /// The statefile, when readable.
    pub statefile: Option<Arc<Statefile>>,
    /// Why it is not.
    pub unreadable: Option<String>,
    /// A delete marker is present.
    pub deleting: bool,
    /// Bytes in the folder, statefile excluded.
    pub stored_bytes: u64,
    /// When the statefile was last written.
    pub modified_at: Option<DateTime<Utc>>,
    /// The summary as JSON text (what `GET /v1/backups` lists).
    pub summary: String,
    tag: Option<Tag>,
    sizes: BTreeMap<String, u64>,
    /// The statefile read is newer than the listing that gave `sizes` (a
    /// backup finishing meanwhile): `sizes` cannot say what is missing.
    sizes_stale: bool,
}

/// What identifies one version of a statefile object.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tag {
    version: Version,
    size: u64,
    modified: DateTime<Utc>,
}

impl BackupFolder for CachedBackup {
    fn folder_id(&self) -> &str {
        &self.id
    }
    fn folder_statefile(&self) -> Option<&Statefile> {
        self.statefile.as_deref()
    }
    fn unreadable_reason(&self) -> Option<&str> {
        self.unreadable.as_deref()
    }
    fn is_deleting(&self) -> bool {
        self.deleting
    }
    fn folder_stored_bytes(&self) -> u64 {
        self.stored_bytes
    }
    fn statefile_modified_at(&self) -> Option<DateTime<Utc>> {
        self.modified_at
    }
    fn has_object(&self, name: &str) -> bool {
        self.sizes_stale || self.sizes.contains_key(name)
    }
}

impl CachedBackup {
    fn render(&mut self) {
        self.summary = self.summary_json().to_string();
    }
}

/// `{"backups":[…]}` of `entries`, from their pre-rendered summaries.
pub(crate) fn list_json<'a>(
    entries: impl Iterator<Item = &'a Arc<CachedBackup>> + Clone,
) -> String {
    let len: usize = entries.clone().map(|e| e.summary.len() + 1).sum();
    let mut body = String::with_capacity(16 + len);
    body.push_str("{\"backups\":[");
    for (i, e) in entries.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&e.summary);
    }
    body.push_str("]}");
    body
}

/// Which backups to list (the API's query): the catalog's own filter.
pub type Filter = ListFilter;

/// The catalog as of one refresh, newest first.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every backup folder, newest first.
    pub entries: Vec<Arc<CachedBackup>>,
    index: HashMap<String, usize>,
    /// When the listing that last found a change was taken.
    pub refreshed_at: Option<DateTime<Utc>>,
    full_list: OnceLock<Bytes>,
}

impl Snapshot {
    fn new(mut entries: Vec<Arc<CachedBackup>>, refreshed_at: Option<DateTime<Utc>>) -> Self {
        entries.sort_by(|a, b| b.date().cmp(&a.date()).then_with(|| a.id.cmp(&b.id)));
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        Snapshot {
            entries,
            index,
            refreshed_at,
            full_list: OnceLock::new(),
        }
    }

    /// `{"backups":[…]}` of every entry, rendered once per snapshot.
    pub fn full_list(&self) -> Bytes {
        self.full_list
            .get_or_init(|| Bytes::from(list_json(self.entries.iter())))
            .clone()
    }

    /// The entry of backup `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<CachedBackup>> {
        self.index.get(id).map(|i| &self.entries[*i])
    }

    /// Readable statefiles, newest first.
    pub fn statefiles(&self) -> impl Iterator<Item = &Arc<Statefile>> {
        self.entries.iter().filter_map(|e| {
            if e.deleting {
                None
            } else {
                e.statefile.as_ref()
            }
        })
    }
}

/// Counters of a cache, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Refreshes done.
    pub refreshes: u64,
    /// Statefiles read from the store, in total.
    pub statefile_reads: u64,
}

/// A catalog kept in memory (see the module docs).
#[derive(Debug)]
pub struct CatalogCache {
    catalog: Catalog,
    snapshot: RwLock<Arc<Snapshot>>,
    refresh_lock: tokio::sync::Mutex<()>,
    refreshes: AtomicU64,
    reads: AtomicU64,
}

impl CatalogCache {
    /// An empty cache over `catalog`; call [`CatalogCache::refresh`].
    pub fn new(catalog: Catalog) -> Self {
        CatalogCache {
            catalog,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            refresh_lock: tokio::sync::Mutex::new(()),
            refreshes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock").clone()
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            refreshes: self.refreshes.load(Ordering::Relaxed),
            statefile_reads: self.reads.load(Ordering::Relaxed),
        }
    }

    /// Lists the store and re-reads the statefiles that changed.
    ///
    /// # Errors
    /// Storage errors of the listing (the previous snapshot stays).
    pub async fn refresh(&self) -> Result<Arc<Snapshot>> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let started = Utc::now();
        let objects = self
            .catalog
            .store()
            .list("")
            .await
            .map_err(|e| CoreError::store("listing backups", e))?;
        #[derive(Default)]
        struct Folder {
            statefile: Option<Tag>,
            deleting: bool,
            stored_bytes: u64,
            sizes: BTreeMap<String, u64>,
        }
        let mut folders: BTreeMap<String, Folder> = BTreeMap::new();
        for o in objects {
            let Some((folder, name)) = o.key.split_once('/') else {
                continue;
            };
            if name.contains('/') {
                continue;
            }
            let f = folders.entry(folder.to_string()).or_default();
            match name {
                STATEFILE_NAME => {
                    f.statefile = Some(Tag {
                        version: o.version.clone(),
                        size: o.size,
                        modified: DateTime::<Utc>::from(o.last_modified),
                    })
                }
                DELETING_MARKER => f.deleting = true,
                _ => {
                    f.stored_bytes += o.size;
                    f.sizes.insert(name.to_string(), o.size);
                }
            }
        }
        let previous = self.snapshot();
        let mut keep = Vec::new();
        let mut reread = Vec::new();
        for (id, f) in folders {
            if f.statefile.is_none() && !f.deleting && id.parse::<BackupId>().is_err() {
                continue; // not a backup folder (.leases, foreign data)
            }
            let old = previous.get(&id);
            match old {
                Some(old)
                    if old.tag == f.statefile
                        && old.deleting == f.deleting
                        && old.sizes == f.sizes =>
                {
                    keep.push(old.clone())
                }
                Some(old) if old.tag == f.statefile && f.statefile.is_some() => {
                    // Same statefile, other objects changed: no read needed.
                    let mut b = CachedBackup {
                        id,
                        statefile: old.statefile.clone(),
                        unreadable: old.unreadable.clone(),
                        deleting: f.deleting,
                        stored_bytes: f.stored_bytes,
                        modified_at: old.modified_at,
                        summary: String::new(),
                        tag: f.statefile,
                        sizes: f.sizes,
                        sizes_stale: old.sizes_stale,
                    };
                    fill_sizes(&mut b);
                    b.render();
                    keep.push(Arc::new(b));
                }
                _ => reread.push((id, f.statefile, f.deleting, f.stored_bytes, f.sizes)),
            }
        }
        let fresh: Vec<CachedBackup> = futures::stream::iter(reread)
            .map(|(id, tag, deleting, stored_bytes, sizes)| async move {
                let mut b = CachedBackup {
                    modified_at: tag.as_ref().map(|t| t.modified),
                    id,
                    statefile: None,
                    unreadable: None,
                    deleting,
                    stored_bytes,
                    summary: String::new(),
                    tag,
                    sizes,
                    sizes_stale: false,
                };
                if b.tag.is_none() {
                    b.unreadable = Some("statefile missing".into());
                } else {
                    self.reads.fetch_add(1, Ordering::Relaxed);
                    match self.catalog.load(&b.id).await {
                        Ok(handle) => {
                            // Should it be newer than the listing's version,
                            // the next listing differs and reads it again.
                            b.sizes_stale = !b
                                .tag
                                .as_ref()
                                .is_some_and(|t| t.version.same_content(&handle.version));
                            b.statefile = Some(Arc::new(handle.statefile));
                            fill_sizes(&mut b);
                        }
                        Err(CoreError::UnreadableStatefile { reason, .. }) => {
                            b.unreadable = Some(reason)
                        }
                        Err(e) => b.unreadable = Some(e.to_string()),
                    }
                }
                b.render();
                b
            })
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let unchanged = fresh.is_empty()
            && keep.len() == previous.entries.len()
            && keep
                .iter()
                .all(|k| previous.get(&k.id).is_some_and(|p| Arc::ptr_eq(k, p)));
        if unchanged {
            // Keep the snapshot, and with it the rendered list.
            return Ok(previous);
        }
        keep.extend(fresh.into_iter().map(Arc::new));
        let snapshot = Arc::new(Snapshot::new(keep, Some(started)));
        // Render the full list here, not in the first request that needs it.
        let _ = snapshot.full_list();
        *self.snapshot.write().expect("snapshot lock") = snapshot.clone();
        Ok(snapshot)
    }

    /// Re-reads backup `id` now (after a change through the API) and
    /// updates the snapshot; a backup that is gone is removed.
    pub async fn refresh_one(&self, id: &str) {
        let _one_at_a_time = self.refresh_lock.lock().await;
        let previous = self.snapshot();
        let mut entries: Vec<Arc<CachedBackup>> = previous
            .entries
            .iter()
            .filter(|e| e.id != id)
            .cloned()
            .collect();
        self.reads.fetch_add(1, Ordering::Relaxed);
        match self.catalog.load(id).await {
            Ok(handle) => {
                let old = previous.get(id);
                let mut b = CachedBackup {
                    id: id.to_string(),
                    statefile: Some(Arc::new(handle.statefile)),
                    unreadable: None,
                    deleting: old.is_some_and(|o| o.deleting),
                    stored_bytes: old.map_or(0, |o| o.stored_bytes),
                    modified_at: Some(Utc::now()),
                    summary: String::new(),
                    // Unknown until the next listing: forces a re-read then.
                    tag: None,
                    sizes: old.map(|o| o.sizes.clone()).unwrap_or_default(),
                    // ... and so are the folder's objects.
                    sizes_stale: true,
                };
                fill_sizes(&mut b);
                b.render();
                entries.push(Arc::new(b));
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::debug!(backup = id, error = %e, "re-reading a statefile failed");
                if let Some(old) = previous.get(id) {
                    entries.push(old.clone());
                }
            }
        }
        let snapshot = Arc::new(Snapshot::new(entries, previous.refreshed_at));
        *self.snapshot.write().expect("snapshot lock") = snapshot;
    }
}

/// Legacy artifacts carry no size: take it from the listing.
fn fill_sizes(b: &mut CachedBackup) {
    let Some(sf) = &b.statefile else { return };
    if sf.artifacts.iter().all(|a| a.size_bytes.is_some()) {
        return;
    }
    let mut sf = (**sf).clone();
    for a in sf.artifacts.iter_mut().filter(|a| a.size_bytes.is_none()) {
        a.size_bytes = b.sizes.get(&a.name).copied();
    }
    b.statefile = Some(Arc::new(sf));
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsule_core::{ServiceIdentity, ServiceType};
    use capsule_store::Store;

    #[tokio::test]
    async fn refreshes_read_only_changed_statefiles() {
        let store = Store::from_url("memory://")
            .unwrap()
            .with_prefix("p")
            .unwrap();
        let catalog = Catalog::new(store.clone());
        let mut ids = Vec::new();
        for i in 0..5 {
            let sf = catalog
                .request_backup(
                    ServiceType::Postgresql,
                    ServiceIdentity {
                        cluster: Some(format!("c{}", i % 2)),
                        ..Default::default()
                    },
                    "",
                )
                .await
                .unwrap();
            ids.push(sf.backup_id.to_string());
        }
        store
            .put(".leases/x.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let cache = CatalogCache::new(catalog.clone());
        let snap = cache.refresh().await.unwrap();
        assert_eq!(snap.entries.len(), 5);
        assert_eq!(cache.stats().statefile_reads, 5);
        cache.refresh().await.unwrap();
        assert_eq!(cache.stats().statefile_reads, 5, "nothing changed");
        let mut h = catalog.load(&ids[0]).await.unwrap();
        catalog
            .update(&mut h, |sf| {
                sf.description = "changed".into();
                Ok(())
            })
            .await
            .unwrap();
        catalog.delete(&ids[1]).await.unwrap();
        let snap = cache.refresh().await.unwrap();
        assert_eq!(cache.stats().statefile_reads, 6, "one re-read");
        assert_eq!(snap.entries.len(), 4);
        assert!(snap.get(&ids[0]).unwrap().summary.contains("changed"));
        let filter = Filter::default().with_cluster("c0");
        assert_eq!(
            snap.entries
                .iter()
                .filter(|e| filter.matches(e.as_ref()))
                .count(),
            3
        );
    }
}
