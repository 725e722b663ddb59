//! Restoring, and restore drills: check the artifacts, plan (names,
//! conflicts), then templates → indices → documents → refresh → counts
//! and sample → aliases → final settings. A failed restore removes what
//! it created; a drill always removes its scratch indices.

use std::collections::BTreeMap;

use capsule_core::{ArtifactSource, Error, Fingerprint, JobContext, Result, Statefile};
use tokio::io::AsyncReadExt;

use super::EsEngine;
use super::apply;
use super::backup::{FORMAT_DOCUMENTS, FORMAT_METADATA};
use super::client::EsClient;
use super::export::IndexTally;
use super::import::{self, LoadPlan, LoadReport, Target};
use super::metadata::EsMetadata;
use super::plan::{Plan, plan};
use super::sample::{self, Sampler};

/// Refused documents quoted in an error message (all are logged).
const QUOTED_ERRORS: usize = 5;

/// Restore into the live names, or into throwaway ones (drill).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `--restore`.
    Restore,
    /// `--verify`.
    Scratch,
}

/// What a restore (or drill) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EsRestoreReport {
    /// The server, without credentials (`127.0.0.1:9200`).
    pub target: String,
    /// `create`, `replace` or `scratch`.
    pub mode: String,
    /// Backed-up index name → restored index name.
    pub indices: BTreeMap<String, String>,
    /// Templates created or overwritten.
    pub templates: Vec<String>,
    /// Documents loaded.
    pub documents: u64,
    /// Documents retried after the server rejected them (429).
    pub retried_documents: u64,
    /// Counts and sample summaries of the restored indices, by backed-up name.
    pub fingerprint: Fingerprint,
}

#[derive(Default)]
struct Created {
    indices: Vec<String>,
    templates: Vec<(&'static str, String)>,
}

pub(super) async fn run(
    engine: &EsEngine,
    source: &dyn ArtifactSource,
    ctx: &JobContext<'_>,
    mode: Mode,
) -> Result<EsRestoreReport> {
    let sf = source.statefile();
    let backup = sf.backup_id.to_string();
    let (meta_name, docs_name) = artifact_names(sf)?;
    // Nothing is created before both artifacts are known to be intact.
    source.verify(&meta_name).await?;
    source.verify(&docs_name).await?;
    let metadata = read_metadata(source, &meta_name, &backup).await?;

    let client = engine.client()?;
    let server = client.server_info().await?;
    let plan = plan(engine, &client, &server, &metadata, mode).await?;
    let mut created = Created::default();
    let result = execute(
        engine,
        &client,
        source,
        ctx,
        &plan,
        &docs_name,
        mode,
        &mut created,
    )
    .await;
    if mode == Mode::Scratch || result.is_err() {
        clean_up(&client, &created).await;
    }
    let mut report = result?;
    report.target = engine.options().connection.endpoint();
    report.mode = match mode {
        Mode::Scratch => "scratch",
        Mode::Restore if engine.options().replace => "replace",
        Mode::Restore => "create",
    }
    .into();
    Ok(report)
}

fn artifact_names(sf: &Statefile) -> Result<(String, String)> {
    let find = |format: &str| {
        sf.artifacts
            .iter()
            .find(|a| a.format == format)
            .map(|a| a.name.clone())
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "backup {} has no {format} artifact: not an Elasticsearch backup capsule can restore",
                    sf.backup_id
                ))
            })
    };
    Ok((find(FORMAT_METADATA)?, find(FORMAT_DOCUMENTS)?))
}

async fn read_metadata(
    source: &dyn ArtifactSource,
    name: &str,
    backup: &str,
) -> Result<EsMetadata> {
    let mut bytes = Vec::new();
    source
        .open(name)
        .await?
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| Error::Corrupt {
            id: backup.to_string(),
            object: name.to_string(),
            reason: e.to_string(),
        })?;
    EsMetadata::from_slice(&bytes, backup)
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    engine: &EsEngine,
    client: &EsClient,
    source: &dyn ArtifactSource,
    ctx: &JobContext<'_>,
    plan: &Plan,
    docs_name: &str,
    mode: Mode,
    created: &mut Created,
) -> Result<EsRestoreReport> {
    let options = engine.options();
    let sf = source.statefile();
    let backup = sf.backup_id.to_string();
    let mut report = EsRestoreReport::default();
    if !plan.delete_first.is_empty() {
        tracing::warn!(indices = ?plan.delete_first, "deleting the existing indices (--replace)");
        apply::delete_indices(client, &plan.delete_first).await?;
    }
    for t in &plan.templates {
        apply::put_template(client, t.kind, &t.name, &t.body).await?;
        if !t.existed {
            created.templates.push((t.kind, t.name.clone()));
        }
        report.templates.push(t.name.clone());
    }
    for p in &plan.indices {
        apply::create_index(client, &p.target, &p.create).await?;
        created.indices.push(p.target.clone());
        report.indices.insert(p.original.clone(), p.target.clone());
    }

    let load_plan = LoadPlan {
        targets: plan
            .indices
            .iter()
            .map(|p| {
                let target = Target {
                    name: p.target.clone(),
                    doc_type: p.doc_type.clone(),
                };
                (p.original.clone(), target)
            })
            .collect(),
        bulk_bytes: options.bulk_bytes,
        bulk_docs: options.bulk_docs,
        workers: options.bulk_workers,
        retries: options.retries,
        sample_size: options.sample_size,
    };
    let raw = sf.artifact(docs_name).and_then(|a| a.raw_size_bytes);
    ctx.progress.start(docs_name, raw);
    let stream = source.open(docs_name).await?;
    let loaded = import::load(client, stream, &load_plan, &backup, docs_name, ctx.progress).await;
    ctx.progress.finish();
    let loaded = loaded?;
    report.retried_documents = loaded.retried_items;
    report.documents = loaded.read.values().map(|t| t.count).sum();
    refused(client, &loaded)?;

    apply::refresh(client, &created.indices).await?;
    let recorded = sf
        .engine
        .as_ref()
        .and_then(|e| e.fingerprint.clone())
        .unwrap_or_default();
    let (fingerprint, mismatches) =
        check(client, plan, loaded, &recorded, options.sample_size).await?;
    report.fingerprint = fingerprint;
    if mode == Mode::Restore && !mismatches.is_empty() {
        return Err(client.error(format!(
            "the restored indices differ from backup {backup}: {}",
            mismatches.join("; ")
        )));
    }
    for m in &mismatches {
        tracing::warn!(backup = %backup, mismatch = %m, "restore drill: difference");
    }
    if mode == Mode::Restore {
        for p in &plan.indices {
            apply::add_aliases(client, &p.target, &p.aliases).await?;
            apply::put_settings(client, &p.target, &apply::final_settings(&p.settings)).await?;
        }
    }
    Ok(report)
}

/// Fails when the server refused documents, quoting the first ones.
fn refused(client: &EsClient, loaded: &LoadReport) -> Result<()> {
    if loaded.error_count == 0 {
        return Ok(());
    }
    let total: u64 = loaded.read.values().map(|t| t.count).sum();
    let quoted: Vec<String> = loaded
        .errors
        .iter()
        .take(QUOTED_ERRORS)
        .map(ToString::to_string)
        .collect();
    let more = loaded.error_count.saturating_sub(quoted.len() as u64);
    Err(client.error(format!(
        "{} of {total} documents were refused: {}{}",
        loaded.error_count,
        quoted.join("; "),
        if more > 0 {
            format!("; and {more} more (each is logged)")
        } else {
            String::new()
        }
    )))
}

/// Counts and samples of the restored indices, compared with what the
/// backup recorded and what the artifact held.
async fn check(
    client: &EsClient,
    plan: &Plan,
    mut loaded: LoadReport,
    recorded: &Fingerprint,
    sample_size: usize,
) -> Result<(Fingerprint, Vec<String>)> {
    let mut fp = Fingerprint::default();
    let mut mismatches = Vec::new();
    for p in &plan.indices {
        let count = apply::count(client, &p.target).await?;
        fp.counts.insert(p.original.clone(), count);
        // An index without documents has no tally from the load.
        let tally = loaded
            .read
            .remove(&p.original)
            .unwrap_or_else(|| IndexTally {
                count: 0,
                sampler: Sampler::new(sample_size),
            });
        let expected = recorded
            .counts
            .get(&p.original)
            .copied()
            .unwrap_or(tally.count);
        if count != expected {
            mismatches.push(format!(
                "{}: expected {expected} documents, found {count}",
                p.target
            ));
        }
        if !tally.sampler.is_enabled() {
            continue;
        }
        let from_artifact = tally.sampler.into_entries();
        let (restored, diffs) = apply::compare_sample(client, &p.target, &from_artifact).await?;
        mismatches.extend(diffs);
        fp.values
            .insert(sample::value_name(&p.original), sample::summary(&restored));
    }
    Ok((fp, mismatches))
}

async fn clean_up(client: &EsClient, created: &Created) {
    if !created.indices.is_empty()
        && let Err(e) = apply::delete_indices(client, &created.indices).await
    {
        tracing::warn!(indices = ?created.indices, error = %e, "could not remove the indices this run created");
    }
    for (kind, name) in &created.templates {
        apply::delete_template(client, kind, name).await;
    }
}
