//! What one backup folder shows, however it was read: the catalog's
//! listing ([`CatalogEntry`](super::CatalogEntry)) and caches built on the
//! same objects (the daemon's) derive status, date, size and the JSON
//! summary by the same rules.

use chrono::{DateTime, Utc};

use crate::id::ServiceType;
use crate::statefile::Statefile;

/// How long a running backup's owner may stay silent and still count as
/// alive: [`Catalog::delete`](super::Catalog::delete) refuses to delete
/// under it until then.
pub const LIVE_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(300);

/// One backup folder as seen in a listing: its statefile when readable and
/// what the listing itself says (delete marker, bytes stored, statefile
/// time). Implementors give the raw facts; the provided methods derive the
/// rest.
pub trait BackupFolder {
    /// The folder name (the backup id for well-formed backups).
    fn folder_id(&self) -> &str;
    /// The statefile, when it could be read.
    fn folder_statefile(&self) -> Option<&Statefile>;
    /// Why the statefile could not be read.
    fn unreadable_reason(&self) -> Option<&str>;
    /// A delete was started and not completed (a delete marker is present).
    fn is_deleting(&self) -> bool;
    /// Bytes stored in the folder, statefile excluded.
    fn folder_stored_bytes(&self) -> u64;
    /// When the statefile object was last written.
    fn statefile_modified_at(&self) -> Option<DateTime<Utc>>;
    /// Whether the folder holds an object `name` (besides the statefile).
    fn has_object(&self, name: &str) -> bool;

    /// The artifacts a finished backup's statefile names that its folder
    /// lacks: such a backup cannot be restored.
    fn missing_artifacts(&self) -> Vec<&str> {
        match self.folder_statefile() {
            Some(sf) if sf.status == crate::status::Status::Finished && !self.is_deleting() => sf
                .artifacts
                .iter()
                .map(|a| a.name.as_str())
                .filter(|n| !self.has_object(n))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// `finished`, `failed`, …; `deleting` for a half-deleted backup;
    /// `unreadable` when the statefile could not be read.
    fn status_label(&self) -> &str {
        if self.is_deleting() {
            return "deleting";
        }
        match self.folder_statefile() {
            Some(sf) => sf.status.as_str(),
            None => "unreadable",
        }
    }

    /// For a `running` backup, when it last showed life: its owner's
    /// heartbeat, or its start when it records none (legacy). A backup
    /// silent for longer than [`LIVE_HEARTBEAT`] is probably abandoned
    /// (its process killed) and can be deleted.
    fn last_heartbeat(&self) -> Option<DateTime<Utc>> {
        if self.is_deleting() {
            return None;
        }
        self.folder_statefile()?.last_heartbeat()
    }

    /// The service type, from the statefile or the folder name.
    fn service_type(&self) -> Option<ServiceType> {
        match self.folder_statefile() {
            Some(sf) => Some(sf.service_type),
            None => self
                .folder_id()
                .split_once('-')
                .and_then(|(t, _)| t.parse::<ServiceType>().ok()),
        }
    }

    /// When the backup was requested (else when its statefile was written).
    fn date(&self) -> Option<DateTime<Utc>> {
        self.folder_statefile()
            .map(|sf| sf.requested_at)
            .or(self.statefile_modified_at())
    }

    /// Stored size: the artifacts' recorded sizes, else what the folder holds.
    fn size_bytes(&self) -> Option<u64> {
        let stored = self.folder_stored_bytes();
        self.folder_statefile()
            .and_then(|sf| sf.size_bytes())
            .or((stored > 0).then_some(stored))
    }

    /// The machine-readable summary: one element of `capsule … --list
    /// --json` and of the daemon's `GET /v1/backups`. `error` is the
    /// backup's recorded error, or why its statefile is unreadable.
    fn summary_json(&self) -> serde_json::Value {
        let sf = self.folder_statefile();
        let date = |d: Option<DateTime<Utc>>| d.map(crate::statefile::rfc3339);
        serde_json::json!({
            "backupId": self.folder_id(),
            "serviceType": self.service_type().map(|t| t.as_str()),
            "status": self.status_label(),
            "requestType": sf.map(|s| s.request_type.as_str()),
            "date": date(self.date()),
            "startedAt": date(sf.and_then(|s| s.started_at)),
            "finishedAt": date(sf.and_then(|s| s.finished_at)),
            "sizeBytes": self.size_bytes(),
            "durationMs": sf.and_then(|s| s.duration()).map(|d| d.num_milliseconds()),
            "cluster": sf.and_then(|s| s.service.cluster.clone()),
            "heartbeatAt": date(self.last_heartbeat()),
            "service": sf.and_then(|s| s.service.qualified_name()),
            "endpoint": sf.and_then(|s| s.service.endpoint.clone()),
            "database": sf.and_then(|s| s.service.database.clone()),
            "description": sf.map(|s| s.description.clone()),
            "verified": sf
                .and_then(|s| s.last_verification())
                .map(|v| serde_json::to_value(v.status).unwrap_or_default()),
            "restores": sf.map_or(0, |s| s.restores.len()),
            "lastRestoreStatus": sf.and_then(|s| s.restores.last()).map(|r| r.status.as_str()),
            "missingArtifacts": self.missing_artifacts(),
            "error": sf
                .and_then(|s| s.error.clone())
                .or_else(|| self.unreadable_reason().map(str::to_string)),
            "statefileVersion": sf.map(|s| s.statefile_version.clone()),
        })
    }
}
