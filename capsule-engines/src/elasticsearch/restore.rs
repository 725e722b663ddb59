//! Restoring, and restore drills: check the artifacts, plan (names,
//! conflicts), then templates → indices → documents → refresh → counts
//! and sample → aliases → final settings. A failed restore removes what
//! it created; a drill always removes its scratch indices.

use std::collections::{BTreeMap, BTreeSet};

use capsule_core::{ArtifactSource, Error, Fingerprint, JobContext, Result, Statefile};
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use super::EsEngine;
use super::apply::{self, Existing, TEMPLATE_KINDS};
use super::backup::{FORMAT_DOCUMENTS, FORMAT_METADATA};
use super::client::EsClient;
use super::export::IndexTally;
use super::import::{self, LoadPlan, LoadReport, Target};
use super::inventory;
use super::metadata::{EsMetadata, portable_settings};
use super::sample::{self, Sampler};
use super::selection::{Candidate, IndexPatterns};
use super::server::ServerInfo;

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

struct IndexPlan {
    original: String,
    target: String,
    settings: Map<String, Value>,
    create: Value,
    aliases: Vec<(String, Value)>,
    doc_type: Option<String>,
}

struct TemplatePlan {
    kind: &'static str,
    name: String,
    body: Value,
    existed: bool,
}

struct Plan {
    indices: Vec<IndexPlan>,
    templates: Vec<TemplatePlan>,
    delete_first: Vec<String>,
}

/// What this run created, removed again on failure.
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

/// Chooses names and finds conflicts, changing nothing.
async fn plan(
    engine: &EsEngine,
    client: &EsClient,
    server: &ServerInfo,
    metadata: &EsMetadata,
    mode: Mode,
) -> Result<Plan> {
    let options = engine.options();
    let patterns = IndexPatterns::new(&options.indices);
    let candidates: Vec<Candidate> = metadata
        .indices
        .keys()
        .map(|n| Candidate {
            name: n.clone(),
            hidden: false,
        })
        .collect();
    let selection = patterns.select(&candidates);
    if patterns.is_explicit() && !selection.unmatched.is_empty() {
        return Err(Error::invalid(
            "indices",
            format!(
                "no index of the backup matches {}",
                selection.unmatched.join(", ")
            ),
        ));
    }
    let tag = scratch_tag();
    let rename = |name: &str| match (mode, &options.rename) {
        (Mode::Scratch, _) => name.to_string(),
        (Mode::Restore, Some(r)) => r.apply(name),
        (Mode::Restore, None) => name.to_string(),
    };
    let mut indices = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, original) in selection.names.iter().enumerate() {
        let meta = &metadata.indices[original];
        let target = match mode {
            Mode::Scratch => scratch_name(&tag, original, i),
            Mode::Restore => rename(original),
        };
        if !seen.insert(target.clone()) {
            return Err(Error::invalid(
                "rename",
                format!("two indices would be restored as {target}"),
            ));
        }
        let (settings, dropped) = portable_settings(
            &meta.settings,
            metadata.server.distribution,
            server.distribution,
        );
        for key in dropped {
            tracing::warn!(index = %original, setting = %key, "dropping a setting {server} does not know");
        }
        let doc_type = server
            .typed()
            .then(|| meta.mapping_type.clone().unwrap_or_else(|| "_doc".into()));
        let create = apply::create_body(&settings, meta, doc_type.as_deref());
        let aliases = match mode {
            Mode::Scratch => Vec::new(),
            Mode::Restore => apply::renamed_aliases(meta, rename),
        };
        indices.push(IndexPlan {
            original: original.clone(),
            target,
            settings,
            create,
            aliases,
            doc_type,
        });
    }

    let mut conflicts = Vec::new();
    let mut delete_first = Vec::new();
    let targets: Vec<String> = indices.iter().map(|p| p.target.clone()).collect();
    for (name, what) in apply::existing(client, &targets).await? {
        match (what, options.replace) {
            (Existing::Alias, _) => conflicts.push(format!("an alias named {name} exists")),
            (Existing::Index, false) => conflicts.push(format!("index {name} exists")),
            (Existing::Index, true) => delete_first.push(name),
        }
    }
    let mut templates = Vec::new();
    if mode == Mode::Restore {
        let alias_names: Vec<String> = indices
            .iter()
            .flat_map(|p| p.aliases.iter().map(|(a, _)| a.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|a| !seen.contains(a))
            .collect();
        for (name, what) in apply::existing(client, &alias_names).await? {
            if what == Existing::Index {
                conflicts.push(format!("alias {name} is the name of an existing index"));
            }
        }
        templates =
            plan_templates(client, server, metadata, options.replace, &mut conflicts).await?;
    }
    if !conflicts.is_empty() {
        let hint = if options.replace {
            ""
        } else {
            " (pass --replace to replace them)"
        };
        return Err(Error::invalid(
            "restore",
            format!(
                "{}: cannot restore: {}{hint}; nothing was changed",
                client.label(),
                conflicts.join(", ")
            ),
        ));
    }
    Ok(Plan {
        indices,
        templates,
        delete_first,
    })
}

async fn plan_templates(
    client: &EsClient,
    server: &ServerInfo,
    metadata: &EsMetadata,
    replace: bool,
    conflicts: &mut Vec<String>,
) -> Result<Vec<TemplatePlan>> {
    let mut out = Vec::new();
    for kind in TEMPLATE_KINDS {
        let all = match kind {
            "_component_template" => &metadata.component_templates,
            "_index_template" => &metadata.index_templates,
            _ => &metadata.legacy_templates,
        };
        if all.is_empty() {
            continue;
        }
        if kind != "_template" && !server.composable_templates() {
            return Err(Error::Unsupported(format!(
                "{}: {server} has no composable templates; the backup has some",
                client.label()
            )));
        }
        for (name, body) in all {
            let existed = match inventory::template(client, kind, name).await? {
                None => false,
                Some(current) if &current == body => continue,
                Some(_) if replace => true,
                Some(_) => {
                    conflicts.push(format!("template {name} ({kind}) differs"));
                    continue;
                }
            };
            out.push(TemplatePlan {
                kind,
                name: name.clone(),
                body: body.clone(),
                existed,
            });
        }
    }
    Ok(out)
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

/// A random lowercase tag for scratch index names.
fn scratch_tag() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..8)
        .map(|_| {
            let n = rng.gen_range(0..36u8);
            if n < 10 {
                (b'0' + n) as char
            } else {
                (b'a' + n - 10) as char
            }
        })
        .collect()
}

/// `capsule-verify-<tag>-<name>`, or `…-<i>` when that would be too long.
fn scratch_name(tag: &str, original: &str, i: usize) -> String {
    let name = format!("capsule-verify-{tag}-{}", original.trim_start_matches('.'));
    if name.len() <= 255 {
        name
    } else {
        format!("capsule-verify-{tag}-{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_are_valid_index_names() {
        let tag = scratch_tag();
        assert_eq!(tag.len(), 8);
        assert!(
            tag.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_eq!(scratch_name("t", ".kibana", 0), "capsule-verify-t-kibana");
        assert_eq!(scratch_name("t", &"x".repeat(250), 3), "capsule-verify-t-3");
    }
}
