//! The Elasticsearch / OpenSearch engine.
//!
//! - **Backup**: detects the distribution and version (Elasticsearch 6–8,
//!   OpenSearch 1–3), reads the selected indices' settings (without the
//!   server-generated ones), mappings and aliases and every user-defined
//!   index, component and legacy template into the `metadata.json`
//!   artifact; then streams every document through the core's pipeline
//!   into `documents.ndjson`, in `_bulk` format with `_id`, routing and the
//!   raw `_source` bytes, read with a sliced scroll (slices in parallel,
//!   each ending on an empty page). The documents per index and a
//!   deterministic sample's digest are the fingerprint.
//! - **Restore**: both artifacts are verified before anything is created;
//!   then templates, indices (replicas 0 and refresh off while loading),
//!   documents in parallel `_bulk` requests of bounded size (429/503
//!   retried with backoff, every refused document reported), refresh,
//!   counts and sample compared with the backup, aliases, final settings.
//!   An existing index of the same name is an error unless
//!   [`EsOptions::replace`]; a failed restore removes what it created.
//! - **Replace** ([`EsOptions::replace`]): an existing index is never
//!   deleted before its replacement is complete. The documents go to a
//!   staging index (`capsule-restore-<tag>-<index>`, same settings and
//!   mappings) and are counted and sampled there; then, one index at a
//!   time, the existing index is deleted and the staging index moved to
//!   its name with `_clone` (Elasticsearch 7.4+, OpenSearch; probed) or
//!   `_reindex`, counted and sampled again, and deleted. A failure or
//!   cancellation before the first delete leaves every existing index
//!   intact and removes the staging indices (the error says so); a
//!   failure after it keeps the restored data and names the index that
//!   was deleted and the staging index holding its documents. Staging
//!   needs disk for both copies until the swap.
//! - **Verify**: [`capsule_core::run_verify`] restores into scratch
//!   indices (`capsule-verify-<tag>-<index>`), compares counts and the
//!   sample byte for byte, and deletes them.
//!
//! See `docs/elasticsearch.md` for the artifact layout and loading a
//! download without capsule.

mod apply;
mod backup;
mod client;
mod export;
mod import;
mod inventory;
mod metadata;
mod ndjson;
mod options;
mod page;
mod plan;
mod preview;
mod rename;
mod restore;
mod sample;
mod selection;
mod server;
mod swap;
mod undo;

use std::fmt;

use async_trait::async_trait;
use capsule_core::{
    ArtifactSink, ArtifactSource, Capabilities, Engine, EngineInfo, Fingerprint, JobContext,
    RestoreOutcome, RestorePlan, Result, ServiceIdentity, ServiceType,
};

pub use backup::{
    DOCUMENTS_ARTIFACT, FORMAT_DOCUMENTS, FORMAT_METADATA, METADATA_ARTIFACT,
    RECOMMENDED_ZSTD_LEVEL,
};
pub use metadata::{EsMetadata, IndexMeta, METADATA_FORMAT, METADATA_VERSION};
pub use options::{ENV_URL, EsConnection, EsOptions, LEGACY_CREDENTIAL_KEYS, LEGACY_URL_KEY};
pub use preview::{EsRestorePreview, PreviewIndex};
pub use rename::EsRename;
pub use restore::EsRestoreReport;
pub use server::{Distribution, ServerInfo};

use client::EsClient;
use restore::Mode;

/// The Elasticsearch/OpenSearch [`Engine`]. `Display` is
/// `elasticsearch(host:port)`, never the user or password.
#[derive(Clone, Debug)]
pub struct EsEngine {
    options: EsOptions,
}

impl EsEngine {
    /// An engine with `options`. Nothing is contacted until a job runs.
    pub fn new(options: EsOptions) -> Self {
        EsEngine { options }
    }

    /// The options.
    pub fn options(&self) -> &EsOptions {
        &self.options
    }

    fn client(&self) -> Result<EsClient> {
        EsClient::new(
            &self.options.connection,
            self.options.retries,
            self.to_string(),
        )
    }

    /// Asks the server what it is (`GET /`), checking the credentials.
    ///
    /// # Errors
    /// [`capsule_core::Error::Engine`] when it cannot be reached or refuses
    /// the credentials; [`capsule_core::Error::Unsupported`] for another
    /// product or an old version.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        self.client()?.server_info().await
    }

    /// Restores as [`Engine::restore`] does, and says more about it.
    ///
    /// # Errors
    /// [`capsule_core::Error::Corrupt`] naming the artifact when a checksum
    /// does not match (nothing was created);
    /// [`capsule_core::Error::Invalid`] when an index exists (without
    /// [`EsOptions::replace`]) or a pattern matches no index of the backup;
    /// [`capsule_core::Error::Engine`] with the server's reason, the
    /// refused documents, or counts and sample that differ from the backup
    /// (what the run created is removed again).
    pub async fn restore_with_report(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<EsRestoreReport> {
        restore::run(self, source, ctx, Mode::Restore).await
    }

    /// The restore drill ([`Engine::restore_scratch`]) with its report.
    ///
    /// # Errors
    /// As [`EsEngine::restore_with_report`]; the scratch indices are
    /// deleted in every case.
    pub async fn verify_with_report(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<EsRestoreReport> {
        restore::run(self, source, ctx, Mode::Scratch).await
    }
}

impl fmt::Display for EsEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "elasticsearch({})", self.options.connection)
    }
}

#[async_trait]
impl Engine for EsEngine {
    fn service_type(&self) -> ServiceType {
        ServiceType::Elasticsearch
    }

    fn zstd_level(&self) -> Option<i32> {
        Some(RECOMMENDED_ZSTD_LEVEL)
    }

    /// A restore watches `ctx.cancel`: before its first existing index is
    /// deleted it stops and undoes everything (waiting up to 2 min for the
    /// `_bulk` requests in flight, which would re-create a deleted index);
    /// from then on it completes the swaps, aliases and settings, which an
    /// interruption would leave half-applied.
    fn cancel_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(180)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            verify: true,
            // `--replace` loads beside the existing index and swaps.
            in_place_restore: false,
            safe_restore: true,
        }
    }

    fn identity(&self) -> ServiceIdentity {
        let mut id = self.options.service.clone();
        if id.endpoint.is_none() {
            id.endpoint = Some(self.options.connection.endpoint());
        }
        if id.database.is_none() && !self.options.indices.is_empty() {
            id.database = Some(self.options.indices.join(","));
        }
        id
    }

    async fn backup(
        &self,
        sink: &mut dyn ArtifactSink,
        ctx: &JobContext<'_>,
    ) -> Result<EngineInfo> {
        backup::backup(self, sink, ctx).await
    }

    async fn restore(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<RestoreOutcome> {
        let report = self.restore_with_report(source, ctx).await?;
        let mut details = serde_json::Map::new();
        // The fingerprint is keyed by the backup's index names; where each
        // went (`--rename`), and which existing ones were replaced.
        details.insert("indices".into(), serde_json::json!(report.indices));
        details.insert("replaced".into(), serde_json::json!(report.replaced));
        Ok(RestoreOutcome {
            target: report.target,
            mode: report.mode,
            fingerprint: Some(report.fingerprint),
            details,
        })
    }

    /// Scans the selected indices of the live server (a full read, no
    /// output) for their counts and samples.
    async fn fingerprint(&self, _ctx: &JobContext<'_>) -> Result<Fingerprint> {
        let client = self.client()?;
        let server = client.server_info().await?;
        let patterns = selection::IndexPatterns::new(&self.options.indices);
        let inv = inventory::read(&client, server.clone(), &patterns).await?;
        let plan = export::ExportPlan {
            indices: inv.shards.into_iter().collect(),
            slices: self.options.slices,
            page_size: self.options.page_size,
            track_total_hits: server.track_total_hits(),
            typed: server.typed(),
            sample_size: self.options.sample_size,
        };
        let tallies = export::export(&client, &plan, &None).await?;
        Ok(backup::fingerprint(tallies))
    }

    fn restore_plan(&self) -> RestorePlan {
        let mut target = self.options.connection.endpoint();
        if let Some(r) = &self.options.rename {
            target.push_str(&format!(" (renamed {r})"));
        }
        let mode = if self.options.replace {
            "replace"
        } else {
            "create"
        };
        RestorePlan::new(target, mode)
    }

    async fn restore_scratch(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> Result<RestoreOutcome> {
        let report = self.verify_with_report(source, ctx).await?;
        Ok(RestoreOutcome {
            target: format!("{} (scratch indices, deleted)", report.target),
            mode: report.mode,
            fingerprint: Some(report.fingerprint),
            details: Default::default(),
        })
    }
}
