//! Listing the backups of a store.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::Catalog;
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

    fn matches(&self, e: &CatalogEntry) -> bool {
        if let Some(t) = self.service_type
            && e.service_type() != Some(t)
        {
            return false;
        }
        if let Some(c) = &self.cluster {
            match &e.statefile {
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
            match &e.statefile {
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
}

impl CatalogEntry {
    /// `finished`, `failed`, …; `deleting` for a half-deleted backup;
    /// `unreadable` when the statefile could not be read.
    pub fn status_label(&self) -> &str {
        if self.deleting {
            return "deleting";
        }
        match &self.statefile {
            Some(sf) => sf.status.as_str(),
            None => "unreadable",
        }
    }

    /// The service type, from the statefile or the folder name.
    pub fn service_type(&self) -> Option<ServiceType> {
        match &self.statefile {
            Some(sf) => Some(sf.service_type),
            None => self
                .id
                .split_once('-')
                .and_then(|(t, _)| t.parse::<ServiceType>().ok()),
        }
    }

    /// When the backup was requested (else when its statefile was written).
    pub fn date(&self) -> Option<DateTime<Utc>> {
        self.statefile
            .as_ref()
            .map(|sf| sf.requested_at)
            .or(self.modified_at)
    }

    /// Stored size: the artifacts' recorded sizes, else what the folder holds.
    pub fn size_bytes(&self) -> Option<u64> {
        self.statefile
            .as_ref()
            .and_then(|sf| sf.size_bytes())
            .or((self.stored_bytes > 0).then_some(self.stored_bytes))
    }

    /// The machine-readable summary (`--json` list, the API).
    pub fn summary_json(&self) -> serde_json::Value {
        let sf = self.statefile.as_ref();
        let mut v = serde_json::json!({
            "backupId": self.id,
            "serviceType": self.service_type().map(|t| t.as_str()),
            "status": self.status_label(),
            "requestType": sf.map(|s| s.request_type.as_str()),
            "date": self.date().map(|d| d.to_rfc3339()),
            "sizeBytes": self.size_bytes(),
            "statefileVersion": sf.map(|s| s.statefile_version.as_str()),
        });
        let obj = v.as_object_mut().expect("object");
        if let Some(sf) = sf {
            obj.insert("description".into(), sf.description.clone().into());
            if let Some(c) = &sf.service.cluster {
                obj.insert("cluster".into(), c.clone().into());
            }
            if let Some(n) = sf.service.qualified_name() {
                obj.insert("service".into(), n.into());
            }
            if let Some(d) = sf.duration() {
                obj.insert("durationMs".into(), d.num_milliseconds().into());
            }
            if let Some(ver) = sf.last_verification() {
                obj.insert(
                    "verified".into(),
                    serde_json::to_value(ver.status).unwrap_or_default(),
                );
            }
            obj.insert("restores".into(), sf.restores.len().into());
        }
        if let Some(r) = &self.unreadable {
            obj.insert("reason".into(), r.clone().into());
        }
        v
    }
}

#[derive(Default)]
struct Folder {
    statefile: Option<DateTime<Utc>>,
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
        let objects = self
            .store
            .list("")
            .await
            .map_err(|e| Error::store("listing backups", e))?;
        let mut folders: BTreeMap<String, Folder> = BTreeMap::new();
        for o in objects {
            let Some((folder, name)) = o.key.split_once('/') else {
                continue; // top-level objects such as `ping`
            };
            if name.contains('/') {
                continue;
            }
            let f = folders.entry(folder.to_string()).or_default();
            match name {
                STATEFILE_NAME => f.statefile = Some(DateTime::<Utc>::from(o.last_modified)),
                DELETING_MARKER => f.deleting = true,
                _ => {
                    f.stored_bytes += o.size;
                    f.sizes.insert(name.to_string(), o.size);
                }
            }
        }
        // A folder is a backup when it has a statefile, a delete marker or a
        // backup-shaped name; anything else in the prefix is not ours.
        let candidates: Vec<(String, Folder)> = folders
            .into_iter()
            .filter(|(name, f)| {
                f.statefile.is_some() || f.deleting || name.parse::<crate::BackupId>().is_ok()
            })
            .collect();

        let mut entries: Vec<CatalogEntry> = futures::stream::iter(candidates)
            .map(|(id, folder)| async move { Ok::<_, Error>(self.entry(id, folder).await) })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        entries.retain(|e| filter.matches(e));
        entries.sort_by(|a, b| b.date().cmp(&a.date()).then_with(|| a.id.cmp(&b.id)));
        Ok(entries)
    }

    async fn entry(&self, id: String, folder: Folder) -> CatalogEntry {
        let mut entry = CatalogEntry {
            id: id.clone(),
            statefile: None,
            unreadable: None,
            deleting: folder.deleting,
            stored_bytes: folder.stored_bytes,
            modified_at: folder.statefile,
        };
        if folder.statefile.is_none() {
            entry.unreadable = Some("statefile missing".into());
            return entry;
        }
        match self.load(&id).await {
            Ok(handle) => {
                let mut sf = handle.statefile;
                for a in sf.artifacts.iter_mut().filter(|a| a.size_bytes.is_none()) {
                    a.size_bytes = folder.sizes.get(&a.name).copied();
                }
                entry.statefile = Some(sf);
            }
            Err(Error::UnreadableStatefile { reason, .. }) => entry.unreadable = Some(reason),
            Err(e) => entry.unreadable = Some(e.to_string()),
        }
        entry
    }
}
