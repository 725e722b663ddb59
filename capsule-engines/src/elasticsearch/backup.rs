//! Backing up: the metadata artifact, then the documents streamed through
//! the core's pipeline, with the per-index counts and samples as the
//! fingerprint.

use std::collections::BTreeMap;

use capsule_core::{
    ArtifactRole, ArtifactSink, ArtifactSpec, EngineInfo, Fingerprint, JobContext, Result,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use super::EsEngine;
use super::client::EsClient;
use super::export::{self, ChunkStream, ExportPlan, IndexTally};
use super::inventory::{self, Inventory};
use super::sample;
use super::selection::IndexPatterns;

/// Object name of the metadata artifact (before the pipeline's `.zst`).
pub const METADATA_ARTIFACT: &str = "metadata.json";
/// Object name of the documents artifact (before the pipeline's `.zst`).
pub const DOCUMENTS_ARTIFACT: &str = "documents.ndjson";
/// Format of the metadata artifact.
pub const FORMAT_METADATA: &str = "es-metadata";
/// Format of the documents artifact: `_bulk` action and source lines.
pub const FORMAT_DOCUMENTS: &str = "es-bulk-ndjson";

/// The zstd level Elasticsearch backups are stored with unless the
/// backup's pipeline options name one (`Engine::zstd_level`): documents are bulky JSON that a server
/// streams faster than zstd's default level 3 compresses on a small
/// machine. Level 1 stores them about 8% larger (3.6x instead of 3.9x on
/// the benchmark's documents) for about 40% less CPU, which keeps the
/// export near the server's own scroll speed (`docs/benchmarks.md`).
pub const RECOMMENDED_ZSTD_LEVEL: i32 = 1;

/// Pages buffered between the slices and the upload, per slice.
const PAGES_IN_FLIGHT: usize = 2;

pub(super) async fn backup(
    engine: &EsEngine,
    sink: &mut dyn ArtifactSink,
    _ctx: &JobContext<'_>,
) -> Result<EngineInfo> {
    let options = engine.options();
    let client = engine.client()?;
    let server = client.server_info().await?;
    tracing::info!(engine = %engine, server = %server, "connected");
    let patterns = IndexPatterns::new(&options.indices);
    let Inventory { metadata, shards } =
        inventory::read(&client, server.clone(), &patterns).await?;
    if metadata.indices.is_empty() {
        tracing::warn!(engine = %engine, "no index to back up: only templates are saved");
    }

    let tool = format!("capsule {} ({server})", env!("CARGO_PKG_VERSION"));
    let spec = ArtifactSpec::new(METADATA_ARTIFACT, FORMAT_METADATA)
        .with_role(ArtifactRole::Metadata)
        .with_tool_version(tool.clone());
    sink.put(spec, Box::new(std::io::Cursor::new(metadata.to_bytes())))
        .await?;

    let plan = ExportPlan {
        indices: metadata
            .indices
            .keys()
            .map(|n| (n.clone(), shards.get(n).copied().unwrap_or(1)))
            .collect(),
        slices: options.slices,
        page_size: options.page_size,
        track_total_hits: server.track_total_hits(),
        typed: server.typed(),
        sample_size: options.sample_size,
    };
    let tallies = export_documents(&client, &plan, sink, tool).await?;

    let mut details = serde_json::Map::new();
    details.insert("distribution".into(), json!(server.distribution));
    details.insert("version".into(), json!(server.version));
    details.insert("clusterName".into(), json!(server.cluster_name));
    details.insert(
        "indices".into(),
        json!(metadata.indices.keys().collect::<Vec<_>>()),
    );
    details.insert(
        "templates".into(),
        json!({
            "component": metadata.component_templates.keys().collect::<Vec<_>>(),
            "index": metadata.index_templates.keys().collect::<Vec<_>>(),
            "legacy": metadata.legacy_templates.keys().collect::<Vec<_>>(),
        }),
    );
    let documents: u64 = tallies.values().map(|t| t.count).sum();
    details.insert("documents".into(), json!(documents));
    tracing::info!(engine = %engine, indices = tallies.len(), documents, "documents exported");
    Ok(EngineInfo {
        server_version: Some(server.to_string()),
        database: Some(if options.indices.is_empty() {
            "*".to_string()
        } else {
            options.indices.join(",")
        }),
        fingerprint: Some(fingerprint(tallies)),
        details,
    })
}

/// Streams every index's documents into the documents artifact.
async fn export_documents(
    client: &EsClient,
    plan: &ExportPlan,
    sink: &mut dyn ArtifactSink,
    tool: String,
) -> Result<BTreeMap<String, IndexTally>> {
    let depth = PAGES_IN_FLIGHT * plan.slices.max(2);
    let (tx, rx) = mpsc::channel(depth);
    let export_client = client.clone();
    let export_plan = plan.clone();
    let task = tokio::spawn(async move {
        let out = Some(tx);
        let result = export::export(&export_client, &export_plan, &out).await;
        if let (Err(e), Some(tx)) = (&result, &out) {
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
        result
    });
    let guard = AbortGuard(task);
    let spec = ArtifactSpec::new(DOCUMENTS_ARTIFACT, FORMAT_DOCUMENTS).with_tool_version(tool);
    let stored = sink
        .put(spec, Box::new(StreamReader::new(ChunkStream::new(rx))))
        .await;
    let exported = guard.join(client).await;
    match (stored, exported) {
        (Ok(_), Ok(tallies)) => Ok(tallies),
        (Err(stored), Err(e)) if e.to_string().ends_with(export::OUTPUT_CLOSED) => Err(stored),
        (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
    }
}

/// Counts per index, and each index's sample summary.
pub(crate) fn fingerprint(tallies: BTreeMap<String, IndexTally>) -> Fingerprint {
    let mut fp = Fingerprint::default();
    for (index, tally) in tallies {
        fp.counts.insert(index.clone(), tally.count);
        if tally.sampler.is_enabled() {
            let entries = tally.sampler.into_entries();
            fp.values
                .insert(sample::value_name(&index), sample::summary(&entries));
        }
    }
    fp
}

/// Aborts the export task if the backup is dropped (cancelled).
struct AbortGuard(tokio::task::JoinHandle<Result<BTreeMap<String, IndexTally>>>);

impl AbortGuard {
    async fn join(mut self, client: &EsClient) -> Result<BTreeMap<String, IndexTally>> {
        let result = (&mut self.0).await;
        result.map_err(|e| client.error(format!("the export task failed: {e}")))?
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
