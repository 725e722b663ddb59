//! What a restore would touch, for a confirmation prompt: which indices of
//! a backup it covers, under which names, and which of those names the
//! target holds now. Nothing is changed.

use capsule_core::Result;

use super::EsEngine;
use super::apply;
use super::selection::IndexPatterns;

/// One index of the backup that a restore covers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PreviewIndex {
    /// Its name in the backup.
    pub original: String,
    /// The name it is restored to (after `--rename`).
    pub target: String,
    /// The target holds an index or alias of that name now: replaced with
    /// [`super::EsOptions::replace`], a conflict without it.
    pub exists: bool,
}

impl PreviewIndex {
    /// Index `original` of the backup, restored as `target`, which exists
    /// on the server now or not.
    pub fn new(original: impl Into<String>, target: impl Into<String>, exists: bool) -> Self {
        PreviewIndex {
            original: original.into(),
            target: target.into(),
            exists,
        }
    }
}

/// What [`EsEngine::restore_preview`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EsRestorePreview {
    /// The indices restored, in the backup's order.
    pub indices: Vec<PreviewIndex>,
    /// `--indices` patterns that match no index of the backup (the restore
    /// refuses them).
    pub unmatched: Vec<String>,
}

impl EsRestorePreview {
    /// The target names that exist now.
    pub fn existing(&self) -> impl Iterator<Item = &str> {
        self.indices
            .iter()
            .filter(|i| i.exists)
            .map(|i| i.target.as_str())
    }
}

impl EsEngine {
    /// Which of `backed_up` (the backup's index names) a restore with these
    /// options covers, the names it restores them to, and which of those
    /// the server holds now. Reads only.
    ///
    /// # Errors
    /// [`capsule_core::Error::Engine`] when the server cannot be reached or
    /// refuses the credentials.
    pub async fn restore_preview(&self, backed_up: &[String]) -> Result<EsRestorePreview> {
        let options = self.options();
        let selection = IndexPatterns::new(&options.indices).select_backed_up(backed_up);
        let targets: Vec<String> = selection
            .names
            .iter()
            .map(|n| options.restored_name(n))
            .collect();
        let existing = apply::existing(&self.client()?, &targets).await?;
        let indices = selection
            .names
            .into_iter()
            .zip(targets)
            .map(|(original, target)| PreviewIndex {
                exists: existing.contains_key(&target),
                original,
                target,
            })
            .collect();
        Ok(EsRestorePreview {
            indices,
            unmatched: selection.unmatched,
        })
    }
}
