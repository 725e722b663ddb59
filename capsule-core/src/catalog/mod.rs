//! The catalog: the backups in one store and prefix, read from their
//! statefiles, and the conditional updates that change them.

mod delete;
mod download;
mod folder;
mod list;

pub use delete::DeleteReport;
pub use download::{DownloadedArtifact, StoreArtifactSource};
pub use folder::{BackupFolder, LIVE_HEARTBEAT};
pub use list::{CatalogEntry, ListFilter};

use bytes::Bytes;
use capsule_store::{Store, Version};
use chrono::Utc;
use futures::StreamExt;

use crate::encryption::Identities;
use crate::error::{Error, Result};
use crate::id::{BackupId, ServiceType};
use crate::statefile::{
    MAX_STATEFILE_BYTES, RequestType, Restore, STATEFILE_NAME, ServiceIdentity, Statefile, legacy,
};
use crate::status::Status;

/// How many times a conditional update is retried after a conflict.
const UPDATE_ATTEMPTS: usize = 8;

/// A statefile as loaded, with the object version a conditional update
/// must match.
#[derive(Clone, Debug)]
pub struct StatefileHandle {
    /// The parsed statefile.
    pub statefile: Statefile,
    /// The stored object's version.
    pub version: Version,
    /// The stored bytes (needed to patch legacy files in their own format).
    pub raw: Bytes,
}

/// The backups of one store and prefix, and the identities that decrypt
/// encrypted ones.
#[derive(Clone, Debug)]
pub struct Catalog {
    store: Store,
    concurrency: usize,
    identities: Identities,
}

impl Catalog {
    /// A catalog over `store` (its prefix is the dst-dir).
    pub fn new(store: Store) -> Self {
        Catalog {
            store,
            concurrency: 64,
            identities: Identities::new(),
        }
    }

    /// Decrypts encrypted artifacts (downloads, restores, drills) with
    /// `identities`. Without them, encrypted backups can still be listed,
    /// described, checked and deleted, but not read.
    pub fn with_identities(mut self, identities: Identities) -> Self {
        self.identities = identities;
        self
    }

    /// The identities encrypted artifacts are decrypted with.
    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    /// How many statefiles are fetched at once when listing (default 64).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The key of `name` inside the folder of backup `id`.
    pub fn key(id: &str, name: &str) -> String {
        format!("{id}/{name}")
    }

    /// Loads the statefile of backup `id`.
    ///
    /// # Errors
    /// [`Error::BackupNotFound`] when there is none, [`Error::UnreadableStatefile`]
    /// when it cannot be parsed, storage errors otherwise.
    pub async fn load(&self, id: &str) -> Result<StatefileHandle> {
        check_id(id)?;
        let key = Self::key(id, STATEFILE_NAME);
        let reading = |e| Error::store(format!("backup {id}: reading the statefile"), e);
        // Streamed, so an oversized object (anyone with write access to the
        // bucket can put one) is refused by its size, not loaded whole.
        let obj = match self.store.get_stream(&key).await {
            Ok(obj) => obj,
            Err(capsule_store::Error::NotFound { .. }) => {
                return Err(Error::BackupNotFound {
                    id: id.to_string(),
                    store: self.store.url().to_string(),
                });
            }
            Err(e) => return Err(reading(e)),
        };
        let too_large = |size: u64| Error::UnreadableStatefile {
            id: id.to_string(),
            reason: format!("statefile too large ({size} bytes, at most {MAX_STATEFILE_BYTES})"),
        };
        if obj.size > MAX_STATEFILE_BYTES as u64 {
            return Err(too_large(obj.size));
        }
        let mut raw = Vec::with_capacity(obj.size as usize);
        let mut chunks = obj.stream;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(reading)?;
            if raw.len() + chunk.len() > MAX_STATEFILE_BYTES {
                return Err(too_large((raw.len() + chunk.len()) as u64));
            }
            raw.extend_from_slice(&chunk);
        }
        let raw = Bytes::from(raw);
        let statefile = Statefile::from_slice(&raw).map_err(|e| Error::UnreadableStatefile {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        if statefile.backup_id.as_str() != id {
            return Err(Error::UnreadableStatefile {
                id: id.to_string(),
                reason: format!(
                    "it names backup {} but lives in folder {id}",
                    statefile.backup_id
                ),
            });
        }
        Ok(StatefileHandle {
            statefile,
            version: obj.version,
            raw,
        })
    }

    /// The statefile of backup `id`, with legacy artifact sizes filled in
    /// from the store.
    ///
    /// # Errors
    /// As [`Catalog::load`].
    pub async fn describe(&self, id: &str) -> Result<Statefile> {
        let mut sf = self.load(id).await?.statefile;
        for a in sf.artifacts.iter_mut().filter(|a| a.size_bytes.is_none()) {
            if let Ok(info) = self.store.head(&Self::key(id, &a.name)).await {
                a.size_bytes = Some(info.size);
            }
        }
        if self.being_deleted(id).await? {
            sf.status = Status::Deleting;
        }
        Ok(sf)
    }

    /// Whether a delete of backup `id` began (its marker is there): the
    /// statefile may still say `finished` (a legacy statefile is never
    /// rewritten, and a v1 status change is best effort) while artifacts
    /// are already gone, so the backup must not be offered as finished.
    ///
    /// A marker that cannot be looked at counts as absent: on AWS a key
    /// allowed to get objects but not to list the bucket is answered 403,
    /// not 404, for a missing object, and such a restore-only key must
    /// keep working. The reads that follow fail on their own if the store
    /// is down.
    async fn being_deleted(&self, id: &str) -> Result<bool> {
        match self.store.head(&Self::key(id, list::DELETING_MARKER)).await {
            Ok(_) => Ok(true),
            Err(capsule_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => {
                tracing::debug!(backup = id, error = %e, "cannot check for a delete marker");
                Ok(false)
            }
        }
    }

    /// Writes a new statefile; fails if the backup already exists.
    ///
    /// # Errors
    /// [`Error::Conflict`] when a statefile already exists for the id.
    pub async fn create(&self, statefile: &Statefile) -> Result<StatefileHandle> {
        let id = statefile.backup_id.as_str();
        let bytes = Bytes::from(statefile.to_vec()?);
        let version = self
            .store
            .create(&Self::key(id, STATEFILE_NAME), bytes.clone())
            .await
            .map_err(|e| match e {
                capsule_store::Error::AlreadyExists { .. } => {
                    Error::Conflict { id: id.to_string() }
                }
                e => Error::store(format!("backup {id}: writing the statefile"), e),
            })?;
        Ok(StatefileHandle {
            statefile: statefile.clone(),
            version,
            raw: bytes,
        })
    }

    /// Applies `change` to the statefile and writes it back conditionally.
    /// On a conflict (another writer got there first) the statefile is
    /// reloaded and `change` applied again to the fresh copy, a few times.
    /// `change` may refuse by returning an error, which is passed through.
    ///
    /// # Errors
    /// [`Error::Conflict`] after repeated conflicts; [`Error::Unsupported`]
    /// for legacy statefiles (see [`Catalog::request_restore`]); whatever
    /// `change` returns.
    pub async fn update<F>(&self, handle: &mut StatefileHandle, mut change: F) -> Result<()>
    where
        F: FnMut(&mut Statefile) -> Result<()> + Send,
    {
        let id = handle.statefile.backup_id.to_string();
        for attempt in 0..UPDATE_ATTEMPTS {
            let mut next = handle.statefile.clone();
            change(&mut next)?;
            let bytes = Bytes::from(next.to_vec()?);
            match self
                .store
                .update(
                    &Self::key(&id, STATEFILE_NAME),
                    bytes.clone(),
                    &handle.version,
                )
                .await
            {
                Ok(version) => {
                    *handle = StatefileHandle {
                        statefile: next,
                        version,
                        raw: bytes,
                    };
                    return Ok(());
                }
                Err(capsule_store::Error::Conflict { .. }) => {
                    tracing::debug!(backup = %id, attempt, "statefile changed concurrently; reloading");
                    *handle = self.load(&id).await?;
                }
                Err(e) => {
                    return Err(Error::store(
                        format!("backup {id}: updating the statefile"),
                        e,
                    ));
                }
            }
        }
        Err(Error::Conflict { id })
    }

    /// Queues a manual backup for a daemon: a `requested` statefile.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn request_backup(
        &self,
        service_type: ServiceType,
        service: ServiceIdentity,
        description: &str,
    ) -> Result<Statefile> {
        let mut sf = Statefile::new(
            BackupId::generate(service_type),
            RequestType::Manual,
            Utc::now(),
        );
        sf.service = service;
        sf.description = description.to_string();
        Ok(self.create(&sf).await?.statefile)
    }

    /// Appends a restore request to a finished backup's history, for a
    /// daemon to execute. Legacy statefiles get the legacy entry
    /// (`{date, status: restorerequest}`) and keep their format.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the backup is not finished; storage errors.
    pub async fn request_restore(&self, id: &str) -> Result<StatefileHandle> {
        let mut handle = self.load(id).await?;
        if self.being_deleted(id).await? {
            return Err(being_deleted(&handle.statefile, "restored"));
        }
        for _ in 0..UPDATE_ATTEMPTS {
            ensure_restorable(&handle.statefile)?;
            let now = Utc::now();
            if !handle.statefile.is_legacy() {
                self.update(&mut handle, |sf| {
                    ensure_restorable(sf)?;
                    sf.restores.push(Restore::requested(now));
                    Ok(())
                })
                .await?;
                return Ok(handle);
            }
            let bytes = Bytes::from(legacy::append_restore_request(&handle.raw, now)?);
            let key = Self::key(id, STATEFILE_NAME);
            match self.store.update(&key, bytes, &handle.version).await {
                Ok(_) => return self.load(id).await,
                Err(capsule_store::Error::Conflict { .. }) => handle = self.load(id).await?,
                Err(e) => {
                    return Err(Error::store(
                        format!("backup {id}: updating the statefile"),
                        e,
                    ));
                }
            }
        }
        Err(Error::Conflict { id: id.to_string() })
    }
}

fn ensure_restorable(sf: &Statefile) -> Result<()> {
    if sf.status == Status::Deleting {
        return Err(being_deleted(sf, "restored or verified"));
    }
    if sf.status != Status::Finished {
        return Err(Error::invalid(
            "backup",
            format!(
                "backup {} is {}: only finished backups can be restored or verified",
                sf.backup_id, sf.status
            ),
        ));
    }
    Ok(())
}

/// The refusal to use a backup whose delete began.
fn being_deleted(sf: &Statefile, what: &str) -> Error {
    Error::invalid(
        "backup",
        format!(
            "backup {} is being deleted (a delete began and did not finish; some artifacts may \
             already be gone): it cannot be {what}; run the delete again to finish it",
            sf.backup_id
        ),
    )
}

/// Rejects ids that could escape the prefix or name something else.
fn check_id(id: &str) -> Result<()> {
    id.parse::<BackupId>().map(|_| ())
}

/// What a delete accepts: a backup id, or the name of any folder a listing
/// shows (one path segment, not hidden, no control characters), so that a
/// folder whose name is not a well-formed id can still be cleaned up.
fn check_folder_name(name: &str) -> Result<()> {
    if check_id(name).is_ok() {
        return Ok(());
    }
    let safe = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control);
    if safe { Ok(()) } else { check_id(name) }
}

#[cfg(test)]
mod tests {
    use super::check_folder_name;

    #[test]
    fn delete_takes_ids_and_plain_folder_names_only() {
        for ok in [
            "postgresql-9nVJ8sGmQbXc3RkHzW2tLp",
            "postgresql-has.dot",
            "Postgresql-X",
        ] {
            assert!(check_folder_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".leases", "a/b", "a\\b", "x\ny"] {
            assert!(check_folder_name(bad).is_err(), "{bad:?}");
        }
    }
}
