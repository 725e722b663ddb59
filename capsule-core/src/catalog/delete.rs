//! Deleting a backup: mark, remove artifacts, remove the statefile last.

use bytes::Bytes;
use chrono::Utc;

use super::Catalog;
use super::list::DELETING_MARKER;
use crate::error::{Error, Result};
use crate::statefile::STATEFILE_NAME;
use crate::status::Status;

/// A running backup whose owner beat within this many seconds is alive and
/// is not deleted under it.
const LIVE_HEARTBEAT_SECS: i64 = super::folder::LIVE_HEARTBEAT.as_secs() as i64;

/// What a delete removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeleteReport {
    /// The backup.
    pub id: String,
    /// Objects removed, statefile included.
    pub objects: usize,
    /// Bytes removed.
    pub bytes: u64,
}

impl Catalog {
    /// Deletes backup `id`: writes a `deleting` marker (and, for v1
    /// statefiles, sets status `deleting`), removes every artifact, then
    /// the statefile, then the marker. An interrupted delete therefore stays
    /// visible in listings as `deleting` and can be run again.
    ///
    /// # Errors
    /// [`Error::BackupNotFound`]; [`Error::Invalid`] for a backup that is
    /// running with a live owner; storage errors (the backup stays listed).
    pub async fn delete(&self, id: &str) -> Result<DeleteReport> {
        super::check_folder_name(id)?;
        let objects = self
            .store
            .list(&format!("{id}/"))
            .await
            .map_err(|e| Error::store(format!("backup {id}: listing its objects"), e))?;
        if objects.is_empty() {
            return Err(Error::BackupNotFound {
                id: id.to_string(),
                store: self.store.url().to_string(),
            });
        }
        // A folder whose name is not a backup id has no statefile this
        // capsule can load: what is left of it is deleted as for an
        // unreadable one.
        let loaded = match super::check_id(id) {
            Ok(()) => self.load(id).await,
            Err(_) => Err(Error::UnreadableStatefile {
                id: id.to_string(),
                reason: "the folder name is not a backup id".into(),
            }),
        };
        match loaded {
            Ok(mut handle) => {
                let sf = &handle.statefile;
                if let Some(at) = sf.last_heartbeat() {
                    let age = (Utc::now() - at).num_seconds();
                    if age < LIVE_HEARTBEAT_SECS {
                        let (mins, left) =
                            (LIVE_HEARTBEAT_SECS / 60, LIVE_HEARTBEAT_SECS - age.max(0));
                        return Err(Error::invalid(
                            "backup",
                            match &sf.owner {
                                Some(owner) => format!(
                                    "backup {id} is running (owner {}, last heartbeat {age}s ago): wait \
                                     for it to end; if its process is gone (killed, its pod evicted), \
                                     it can be deleted once it has had no heartbeat for {mins} min, in {left}s",
                                    owner.id
                                ),
                                // A legacy backup records no heartbeat: judged
                                // by when it started, with the same five minutes.
                                None => format!(
                                    "backup {id} is running: it started {age}s ago and records no \
                                     heartbeat (a legacy statefile); it can be deleted {mins} min after \
                                     it started, in {left}s"
                                ),
                            },
                        ));
                    }
                }
                self.mark(id).await?;
                if !handle.statefile.is_legacy() && handle.statefile.status != Status::Deleting {
                    // Best effort: the marker already makes the state visible.
                    let _ = self
                        .update(&mut handle, |sf| {
                            sf.status = Status::Deleting;
                            Ok(())
                        })
                        .await;
                }
            }
            // A statefile that is missing or unreadable does not stop the
            // delete of what is left of the folder, unless it declares a
            // version this capsule does not know: that may be a newer
            // capsule's backup in progress, not ours to judge.
            Err(Error::BackupNotFound { .. }) => self.mark(id).await?,
            Err(Error::UnreadableStatefile { .. }) => {
                if let Some(version) = self.newer_version(id, &objects).await {
                    return Err(Error::invalid(
                        "backup",
                        format!(
                            "backup {id} has a statefile of version {version:?}, which this \
                             capsule does not read: a newer capsule wrote it and may still be \
                             running it; delete it with that capsule (nothing was changed)"
                        ),
                    ));
                }
                self.mark(id).await?;
            }
            Err(e) => return Err(e),
        }

        let mut report = DeleteReport {
            id: id.to_string(),
            ..Default::default()
        };
        let statefile_key = Self::key(id, STATEFILE_NAME);
        let marker_key = Self::key(id, DELETING_MARKER);
        for o in objects
            .iter()
            .filter(|o| o.key != statefile_key && o.key != marker_key)
        {
            self.store
                .delete(&o.key)
                .await
                .map_err(|e| Error::store(format!("backup {id}: deleting {}", o.key), e))?;
            report.objects += 1;
            report.bytes += o.size;
        }
        // A capsule killed mid-upload leaves a partial file that a local
        // store never lists.
        report.bytes += self
            .store
            .remove_partial_uploads(&format!("{id}/"))
            .await
            .map_err(|e| Error::store(format!("backup {id}: removing partial uploads"), e))?;
        if let Some(sf) = objects.iter().find(|o| o.key == statefile_key) {
            self.store
                .delete(&statefile_key)
                .await
                .map_err(|e| Error::store(format!("backup {id}: deleting the statefile"), e))?;
            report.objects += 1;
            report.bytes += sf.size;
        }
        self.store
            .delete(&marker_key)
            .await
            .map_err(|e| Error::store(format!("backup {id}: deleting the delete marker"), e))?;
        tracing::info!(
            backup = id,
            objects = report.objects,
            bytes = report.bytes,
            "backup deleted"
        );
        Ok(report)
    }

    /// The statefile version of backup `id` when it declares one this
    /// capsule does not know (`objects`: the folder's listing, whose size
    /// keeps an oversized object from being read).
    async fn newer_version(
        &self,
        id: &str,
        objects: &[capsule_store::ObjectInfo],
    ) -> Option<String> {
        let key = Self::key(id, STATEFILE_NAME);
        let listed = objects.iter().find(|o| o.key == key)?;
        if listed.size > crate::statefile::MAX_STATEFILE_BYTES as u64 {
            return None;
        }
        let raw = self.store.get(&key).await.ok()?.bytes;
        crate::statefile::declared_version(&raw)
            .ok()
            .flatten()
            .filter(|v| !crate::statefile::is_known_version(v))
    }

    async fn mark(&self, id: &str) -> Result<()> {
        let body = Bytes::from(Utc::now().to_rfc3339());
        self.store
            .put(&Self::key(id, DELETING_MARKER), body)
            .await
            .map(|_| ())
            .map_err(|e| Error::store(format!("backup {id}: writing the delete marker"), e))
    }
}
