//! What a restore has changed on the server, so that a failure can undo
//! it, and so that nobody loses track of the data when it cannot.
//!
//! Until the first existing index is deleted (`--replace`), everything a
//! restore did can be undone: the indices it created (staging and new
//! ones) are deleted, the templates it created are deleted and the ones it
//! overwrote are put back. From then on the restored data is kept and only
//! the staging indices of existing indices that were not replaced yet are
//! removed. [`Undo`] also runs on drop (a cancelled job's future is
//! dropped): the clean-up is spawned on the runtime and the state is
//! logged, naming an index whose original was deleted and the staging
//! index that holds its data.

use std::time::Duration;

use serde_json::Value;

use super::apply;
use super::client::EsClient;
use super::import::InFlight;

/// Longest wait for the `_bulk` requests of a stopped load.
const SETTLE: Duration = Duration::from_secs(120);

/// The clean-up a failed restore needs.
#[derive(Clone, Debug)]
struct Work {
    client: EsClient,
    /// Staging indices whose existing index is still there.
    staged: Vec<String>,
    /// Other indices this run created (new targets, scratch indices).
    created: Vec<String>,
    /// Templates this run created: `(kind, name)`.
    templates_created: Vec<(&'static str, String)>,
    /// Templates this run overwrote: `(kind, name, previous body)`.
    templates_overwritten: Vec<(&'static str, String, Value)>,
    /// An existing index was deleted: keep the restored data.
    committed: bool,
    /// The `_bulk` requests of the load, waited for before deleting.
    inflight: Option<InFlight>,
}

impl Work {
    fn is_empty(&self) -> bool {
        self.staged.is_empty()
            && (self.committed
                || (self.created.is_empty()
                    && self.templates_created.is_empty()
                    && self.templates_overwritten.is_empty()))
    }

    /// Deletes and puts back what [`Undo`]'s doc says; logs what fails.
    async fn run(&self) {
        let mut indices = self.staged.clone();
        if !self.committed {
            indices.extend(self.created.iter().cloned());
        }
        if !indices.is_empty() {
            // A `_bulk` request still running would re-create a deleted
            // index (auto-create).
            if let Some(inflight) = &self.inflight
                && !inflight.settle(SETTLE).await
            {
                tracing::warn!(indices = ?indices, "_bulk requests of the failed restore still running after {SETTLE:?}: deleting anyway");
            }
            match apply::delete_indices(&self.client, &indices).await {
                Ok(()) => {
                    tracing::debug!(indices = ?indices, "removed the indices of a failed restore")
                }
                Err(e) => tracing::warn!(
                    indices = ?indices,
                    error = %e,
                    "could not remove the indices a failed restore staged or created: delete them yourself"
                ),
            }
        }
        if self.committed {
            return;
        }
        for (kind, name) in &self.templates_created {
            apply::delete_template(&self.client, kind, name).await;
        }
        for (kind, name, previous) in &self.templates_overwritten {
            if let Err(e) = apply::put_template(&self.client, kind, name, previous).await {
                tracing::warn!(template = %name, error = %e, "could not put back a template the failed restore overwrote");
            }
        }
    }
}

#[derive(Debug)]
struct Swapping {
    target: String,
    staging: String,
    /// [`Work::committed`] before this delete.
    was_committed: bool,
}

/// The undo log of one restore (or drill); see the module doc.
#[derive(Debug)]
pub(crate) struct Undo {
    work: Work,
    /// The index being replaced: from the request deleting it until its
    /// data is in place again.
    in_flight: Option<Swapping>,
    armed: bool,
}

impl Undo {
    /// An empty log for restores through `client`.
    pub fn new(client: EsClient) -> Self {
        Undo {
            work: Work {
                client,
                staged: Vec::new(),
                created: Vec::new(),
                templates_created: Vec::new(),
                templates_overwritten: Vec::new(),
                committed: false,
                inflight: None,
            },
            in_flight: None,
            armed: true,
        }
    }

    /// Index `name` was created (`staging`: as the staging index of an
    /// existing one).
    pub fn created_index(&mut self, name: &str, staging: bool) {
        match staging {
            true => self.work.staged.push(name.to_string()),
            false => self.work.created.push(name.to_string()),
        }
    }

    /// Documents are being loaded with `inflight`'s requests.
    pub fn loading(&mut self, inflight: &InFlight) {
        self.work.inflight = Some(inflight.clone());
    }

    /// Template `name` was written over `previous` (`None`: created).
    pub fn wrote_template(&mut self, kind: &'static str, name: &str, previous: Option<&Value>) {
        match previous {
            Some(p) => self
                .work
                .templates_overwritten
                .push((kind, name.to_string(), p.clone())),
            None => self.work.templates_created.push((kind, name.to_string())),
        }
    }

    /// Index `target` is about to be deleted, `staging` holding its
    /// replacement: from now on a failure keeps the restored data.
    pub fn deleting(&mut self, target: &str, staging: &str) {
        self.in_flight = Some(Swapping {
            target: target.to_string(),
            staging: staging.to_string(),
            was_committed: self.work.committed,
        });
        self.work.committed = true;
        self.work.staged.retain(|s| s != staging);
    }

    /// The index being deleted is still there after all (its delete
    /// failed): its staging index can go again.
    pub fn not_deleted(&mut self) {
        if let Some(f) = self.in_flight.take() {
            self.work.committed = f.was_committed;
            self.work.staged.push(f.staging);
        }
    }

    /// The index being replaced has its data in place again.
    pub fn replaced(&mut self) {
        self.in_flight = None;
    }

    /// Whether an existing index was deleted.
    pub fn committed(&self) -> bool {
        self.work.committed
    }

    /// Undoes what can be undone, now.
    pub async fn run(&mut self) {
        self.work.run().await;
        self.work.staged.clear();
        self.work.created.clear();
        self.work.templates_created.clear();
        self.work.templates_overwritten.clear();
    }

    /// Nothing is to be undone any more (the restore finished, or the
    /// clean-up ran).
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(Swapping {
            target, staging, ..
        }) = &self.in_flight
        {
            tracing::error!(
                server = %self.work.client.label(),
                index = %target,
                staging = %staging,
                "restore interrupted while replacing index {target}: it may have been deleted; \
                 its restored documents are in index {staging}, which is kept"
            );
        }
        if self.work.is_empty() {
            return;
        }
        let mut left = self.work.staged.clone();
        if !self.work.committed {
            left.extend(self.work.created.iter().cloned());
        }
        let work = self.work.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::warn!(
                    server = %work.client.label(),
                    indices = ?left,
                    "restore interrupted: removing what it staged or created in the background \
                     (existing indices not replaced yet are unchanged; if this process exits first, \
                     delete these indices yourself)"
                );
                runtime.spawn(async move { work.run().await });
            }
            Err(_) => tracing::warn!(
                server = %work.client.label(),
                indices = ?left,
                "restore interrupted: delete these indices yourself \
                 (existing indices not replaced yet are unchanged)"
            ),
        }
    }
}
