//! Listing the backups of a store.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;

use super::{BackupFolder, Catalog, StatefileHandle};
use crate::error::{Error, Result};
use crate::id::ServiceType;
use crate::statefile::{STATEFILE_NAME, Statefile};

/// Name of the marker object written first when a backup is deleted, so
/// an interrupted delete (of any statefile version) stays visible.
pub(super) const DELETING_MARKER: &str = "deleting";

/// Which backups to list.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ListFilter {
    /// Only this service type.
    pub service_type: Option<ServiceType>,
    /// Only backups of this cluster.
    pub cluster: Option<String>,
    /// Only this status (`finished`, `failed`, …, or `unreadable`).
    pub status: Option<String>,
    /// Only backups of this service (`namespace/name`).
    pub service: Option<String>,
}

impl ListFilter {
    /// Only `service_type`.
    pub fn with_service_type(mut self, t: ServiceType) -> Self {
        self.service_type = Some(t);
        self
    }
    /// Only `cluster`.
    pub fn with_cluster(mut self, c: impl Into<String>) -> Self {
        self.cluster = Some(c.into());
        self
    }
    /// Only `status`.
    pub fn with_status(mut self, s: impl Into<String>) -> Self {
        self.status = Some(s.into());
        self
    }
    /// Only the service `namespace/name`.
    pub fn with_service(mut self, s: impl Into<String>) -> Self {
        self.service = Some(s.into());
        self
    }

    /// Whether the filter lets everything through.
    pub fn is_empty(&self) -> bool {
        self.service_type.is_none()
            && self.cluster.is_none()
            && self.status.is_none()
            && self.service.is_none()
    }

    /// Whether the backup `e` passes.
    pub fn matches(&self, e: &impl BackupFolder) -> bool {
        if let Some(t) = self.service_type
            && e.service_type() != Some(t)
        {
            return false;
        }
        if let Some(c) = &self.cluster {
            match e.folder_statefile() {
                Some(sf) if sf.service.cluster.as_deref() == Some(c.as_str()) => {}
                _ => return false,
            }
        }
        if let Some(s) = &self.status
            && !e.status_label().eq_ignore_ascii_case(s)
        {
            return false;
        }
        if let Some(s) = &self.service {
            match e.folder_statefile() {
                Some(sf) if sf.service.qualified_name().as_deref() == Some(s.as_str()) => {}
                _ => return false,
            }
        }
        true
    }
}

/// One backup folder as the catalog sees it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CatalogEntry {
    /// The folder name (the backup id for well-formed backups).
    pub id: String,
    /// The statefile, when it could be read.
    #[serde(skip)]
    pub statefile: Option<Statefile>,
    /// Why the statefile could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// A delete was started and not completed.
    pub deleting: bool,
    /// Bytes stored in the folder, statefile excluded.
    pub stored_bytes: u64,
    /// When the statefile object was last written.
    pub modified_at: Option<DateTime<Utc>>,
    /// The folder's other objects and their sizes; `None` when the
    /// statefile read is newer than the listing (a backup finishing
    /// meanwhile), so the listing cannot tell what is missing.
    #[serde(skip)]
    pub objects: Option<BTreeMap<String, u64>>,
}

impl BackupFolder for CatalogEntry {
    fn folder_id(&self) -> &str {
        &self.id
    }
    fn folder_statefile(&self) -> Option<&Statefile> {
        self.statefile.as_ref()
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
        self.objects.as_ref().is_none_or(|o| o.contains_key(name))
    }
}

#[derive(Default)]
struct Folder {
    statefile: Option<DateTime<Utc>>,
    /// The statefile's version as listed.
    listed_version: Option<capsule_store::Version>,
    deleting: bool,
    stored_bytes: u64,
    sizes: BTreeMap<String, u64>,
}

impl Catalog {
    /// Lists the backups under the prefix, newest first. Statefiles are
    /// fetched in parallel; one that cannot be read is listed as
    /// `unreadable` with its reason.
    ///
    /// # Errors
    /// Storage errors of the listing itself.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<CatalogEntry>> {
        // Each statefile is fetched as soon as the listing shows it, while
        // the listing goes on (up to `concurrency` at once): on S3 the
        // listing alone is a quarter of the time of 10,000 GETs.
        let mut listing = self.store.list_stream("");
        let mut listing_done = false;
        let mut loads = FuturesUnordered::new();
        let mut loaded: HashMap<String, Result<StatefileHandle>> = HashMap::new();
        let mut folders: BTreeMap<String, Folder> = BTreeMap::new();
        loop {
            tokio::select! {
                biased;
                Some((id, handle)) = loads.next(), if !loads.is_empty() => {
                    loaded.insert(id, handle);
                }
                item = listing.next(), if !listing_done && loads.len() < self.concurrency => {
                    let Some(item) = item else {
                        listing_done = true;
                        continue;
                    };
                    let o = item.map_err(|e| Error::store("listing backups", e))?;
                    let Some((folder, name)) = o.key.split_once('/') else {
                        continue; // top-level objects such as `ping`
                    };
                    if name.contains('/') {
                        continue;
                    }
                    let f = folders.entry(folder.to_string()).or_default();
                    match name {
                        STATEFILE_NAME => {
                            f.statefile = Some(DateTime::<Utc>::from(o.last_modified));
                            f.listed_version = Some(o.version.clone());
                            let id = folder.to_string();
                            loads.push(async move {
                                let handle = self.load(&id).await;
                                (id, handle)
                            });
                        }
                        DELETING_MARKER => f.deleting = true,
                        _ => {
                            f.stored_bytes += o.size;
                            f.sizes.insert(name.to_string(), o.size);
                        }
                    }
                }
                else => break,
            }
        }
        // A folder is a backup when it has a statefile, a delete marker or a
        // backup-shaped name; anything else in the prefix is not ours.
        let mut entries: Vec<CatalogEntry> = folders
            .into_iter()
            .filter(|(name, f)| {
                f.statefile.is_some() || f.deleting || name.parse::<crate::BackupId>().is_ok()
            })
            .map(|(id, folder)| {
                let handle = loaded.remove(&id);
                Self::entry(id, folder, handle)
            })
            .collect();
        entries.retain(|e| filter.matches(e));
        entries.sort_by(|a, b| b.date().cmp(&a.date()).then_with(|| a.id.cmp(&b.id)));
        Ok(entries)
    }

    /// The entry of folder `id`, from what the listing saw and its loaded
    /// statefile (`None`: it has none).
    fn entry(id: String, folder: Folder, handle: Option<Result<StatefileHandle>>) -> CatalogEntry {
        let mut entry = CatalogEntry {
            id: id.clone(),
            statefile: None,
            unreadable: None,
            deleting: folder.deleting,
            stored_bytes: folder.stored_bytes,
            modified_at: folder.statefile,
            objects: None,
        };
        let Some(handle) = handle else {
            entry.unreadable = Some("statefile missing".into());
            return entry;
        };
        let mut listing_current = true;
        match handle {
            Ok(handle) => {
                listing_current = folder
                    .listed_version
                    .as_ref()
                    .is_some_and(|v| v.same_content(&handle.version));
                let mut sf = handle.statefile;
                for a in sf.artifacts.iter_mut().filter(|a| a.size_bytes.is_none()) {
                    a.size_bytes = folder.sizes.get(&a.name).copied();
                }
                entry.statefile = Some(sf);
            }
            Err(Error::UnreadableStatefile { reason, .. }) => entry.unreadable = Some(reason),
            Err(e) => entry.unreadable = Some(e.to_string()),
        }
        entry.objects = listing_current.then_some(folder.sizes);
        entry
    }
}
