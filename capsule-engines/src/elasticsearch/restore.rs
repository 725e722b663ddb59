//! Restoring, and restore drills: check the artifacts, plan (names,
//! conflicts), then templates → indices (a staging index for each one
//! replaced) → documents → refresh → counts and sample → the swap of each
//! replaced index → aliases → final settings. A restore that fails before
//! an existing index is deleted removes what it created and leaves the
//! existing indices intact; one that fails later keeps the restored data
//! and says where it is. A drill always removes its scratch indices.

use std::collections::BTreeMap;

use capsule_core::{ArtifactSource, Error, Fingerprint, JobContext, Result, Statefile};
use tokio::io::AsyncReadExt;

use super::EsEngine;
use super::apply;
use super::backup::{FORMAT_DOCUMENTS, FORMAT_METADATA};
use super::client::EsClient;
use super::export::IndexTally;
use super::import::{self, InFlight, LoadPlan, LoadReport, Target};
use super::metadata::EsMetadata;
use super::plan::{IndexPlan, Plan, plan};
use super::sample::{self, SampleEntry, Sampler};
use super::server::ServerInfo;
use super::swap::{self, SwapError};
use super::undo::Undo;

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
    /// Existing indices replaced (`--replace`), by restored name.
    pub replaced: Vec<String>,
    /// Counts and sample summaries of the restored indices, by backed-up name.
    pub fingerprint: Fingerprint,
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
    // The server answers before the backup is read (a drill that cannot
    // reach its target has read none of it: no verdict).
    let client = engine.client()?;
    let server = client.server_info().await?;
    let metadata = read_metadata(source, &meta_name, &backup).await?;
    let plan = plan(engine, &client, &server, &metadata, mode).await?;
    let mut undo = Undo::new(client.clone());
    let job = Job {
        engine,
        client: &client,
        server: &server,
        source,
        ctx,
        plan: &plan,
        docs_name: &docs_name,
        mode,
    };
    let result = job.execute(&mut undo).await;
    if mode == Mode::Scratch || result.is_err() {
        undo.run().await;
    }
    undo.disarm();
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

/// One restore (or drill) and everything it needs.
struct Job<'a> {
    engine: &'a EsEngine,
    client: &'a EsClient,
    server: &'a ServerInfo,
    source: &'a dyn ArtifactSource,
    ctx: &'a JobContext<'a>,
    plan: &'a Plan,
    docs_name: &'a str,
    mode: Mode,
}

/// What was loaded and checked, per backed-up index name.
#[derive(Default)]
struct Loaded {
    /// Documents in the loaded index (as the backup recorded).
    counts: BTreeMap<String, u64>,
    /// The sample taken from the artifact.
    samples: BTreeMap<String, Vec<SampleEntry>>,
}

impl Job<'_> {
    /// Stages, swaps (`--replace`), then attaches aliases and settles the
    /// settings. Until an existing index is deleted the job can be undone
    /// and is cancelled with `ctx.cancel`; from then on it is not
    /// interrupted (only dropped), and a failure names what is where.
    async fn execute(&self, undo: &mut Undo) -> Result<EsRestoreReport> {
        let mut report = EsRestoreReport::default();
        let what = match self.mode {
            Mode::Restore => "restore",
            Mode::Scratch => "restore drill",
        };
        let backup = self.source.statefile().backup_id.to_string();
        let staged = tokio::select! {
            biased;
            () = self.ctx.cancel.cancelled() => Err(Error::Cancelled(format!("{what} of backup {backup}"))),
            r = self.stage(undo, &mut report) => r,
        };
        let loaded = staged.map_err(|e| with_note(e, &intact_note(self.plan)))?;
        if self.mode == Mode::Scratch {
            return Ok(report);
        }
        if self.ctx.cancel.is_cancelled() {
            let e = Error::Cancelled(format!("{what} of backup {backup}"));
            return Err(with_note(e, &intact_note(self.plan)));
        }
        if let Some(method) = self.plan.swap {
            for p in self.plan.replacing() {
                let expected = loaded.counts.get(&p.original).copied().unwrap_or(0);
                let sample = loaded
                    .samples
                    .get(&p.original)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let swapped =
                    swap::replace(self.client, self.server, method, p, expected, sample, undo)
                        .await;
                if let Err(e) = swapped {
                    return Err(self.swap_failure(p, e, &report.replaced, expected, undo));
                }
                report.replaced.push(p.target.clone());
            }
        }
        for p in &self.plan.indices {
            let settled = async {
                apply::add_aliases(self.client, &p.target, &p.aliases).await?;
                apply::put_settings(self.client, &p.target, &apply::final_settings(&p.settings))
                    .await
            };
            if let Err(e) = settled.await {
                return Err(match undo.committed() {
                    false => e,
                    true => with_note(
                        e,
                        &format!(
                            "the documents of every index are restored and kept (replaced: {}), \
                             but aliases and settings are incomplete: run the restore again",
                            report.replaced.join(", ")
                        ),
                    ),
                });
            }
        }
        Ok(report)
    }

    /// Templates, indices (staging ones for those replaced), documents,
    /// refresh, counts and samples: everything that can still be undone.
    async fn stage(&self, undo: &mut Undo, report: &mut EsRestoreReport) -> Result<Loaded> {
        let (client, plan, ctx) = (self.client, self.plan, self.ctx);
        let options = self.engine.options();
        let sf = self.source.statefile();
        let backup = sf.backup_id.to_string();
        for t in &plan.templates {
            apply::put_template(client, t.kind, &t.name, &t.body).await?;
            undo.wrote_template(t.kind, &t.name, t.previous.as_ref());
            report.templates.push(t.name.clone());
        }
        for p in &plan.indices {
            apply::create_index(client, p.load_name(), &p.create).await?;
            undo.created_index(p.load_name(), p.staging.is_some());
            report.indices.insert(p.original.clone(), p.target.clone());
        }
        if let Some(method) = plan.swap {
            let staging: Vec<&str> = plan.replacing().map(IndexPlan::load_name).collect();
            tracing::info!(server = %client.label(), staging = ?staging, "loading the indices to replace into staging indices; they replace the existing ones by {method} once checked");
        }

        let load_plan = LoadPlan {
            targets: plan
                .indices
                .iter()
                .map(|p| {
                    let target = Target {
                        name: p.load_name().to_string(),
                        doc_type: p.doc_type.clone(),
                    };
                    (p.original.clone(), target)
                })
                .collect(),
            bulk_bytes: options.bulk_bytes,
            bulk_docs: options.bulk_docs,
            retries: options.retries,
            sample_size: options.sample_size,
        };
        let raw = sf.artifact(self.docs_name).and_then(|a| a.raw_size_bytes);
        ctx.progress.start(self.docs_name, raw);
        let stream = self.source.open(self.docs_name).await?;
        let inflight = InFlight::new(options.bulk_workers);
        undo.loading(&inflight);
        let loaded = import::load(
            client,
            stream,
            &load_plan,
            &backup,
            self.docs_name,
            ctx.progress,
            &inflight,
        )
        .await;
        ctx.progress.finish();
        let loaded = loaded?;
        report.retried_documents = loaded.retried_items;
        report.documents = loaded.read.values().map(|t| t.count).sum();
        refused(client, &loaded)?;

        let names: Vec<String> = plan
            .indices
            .iter()
            .map(|p| p.load_name().to_string())
            .collect();
        apply::refresh(client, &names).await?;
        let recorded = sf
            .engine
            .as_ref()
            .and_then(|e| e.fingerprint.clone())
            .unwrap_or_default();
        let (fingerprint, checked, mismatches) =
            check(client, plan, loaded, &recorded, options.sample_size).await?;
        report.fingerprint = fingerprint;
        if self.mode == Mode::Restore && !mismatches.is_empty() {
            return Err(client.error(format!(
                "the restored indices differ from backup {backup}: {}",
                mismatches.join("; ")
            )));
        }
        for m in &mismatches {
            tracing::warn!(backup = %backup, mismatch = %m, "restore drill: difference");
        }
        Ok(checked)
    }

    /// The error of a failed replacement: the cause, and where every
    /// index's data is.
    fn swap_failure(
        &self,
        failed: &IndexPlan,
        e: SwapError,
        replaced: &[String],
        expected: u64,
        undo: &Undo,
    ) -> Error {
        if !undo.committed() {
            // Nothing was deleted yet: undone like a failed load.
            return with_note(e.error, &intact_note(self.plan));
        }
        let target = &failed.target;
        let staging = failed.load_name();
        let mut parts = vec![format!(
            "cannot replace index {target}: {}",
            message(&e.error)
        )];
        if e.deleted {
            parts.push(format!(
                "index {target} was deleted and its restored documents ({expected}, checked \
                 against the backup) are kept in index {staging}{}",
                if e.partial {
                    format!(" (an incomplete copy may remain as {target})")
                } else {
                    String::new()
                }
            ));
        } else {
            parts.push(format!("index {target} is intact"));
        }
        if !replaced.is_empty() {
            parts.push(format!("already replaced: {}", replaced.join(", ")));
        }
        let intact: Vec<&str> = self
            .plan
            .replacing()
            .skip_while(|p| p.target != *target)
            .skip(1)
            .map(|p| p.target.as_str())
            .collect();
        if !intact.is_empty() {
            parts.push(format!("not replaced, intact: {}", intact.join(", ")));
        }
        let mut advice =
            "the restore is incomplete (aliases and settings not applied): run it again"
                .to_string();
        if e.deleted {
            advice.push_str(&format!(", then delete index {staging}"));
        }
        parts.push(advice);
        self.client.error(parts.join("; "))
    }
}

/// What a failure before any replacement leaves intact, for its message.
fn intact_note(plan: &Plan) -> String {
    let names: Vec<&str> = plan.replacing().map(|p| p.target.as_str()).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => format!("nothing was replaced: the existing index {one} is intact"),
        many => format!(
            "nothing was replaced: the existing indices {} are intact",
            many.join(", ")
        ),
    }
}

/// `e`'s message without the server label an engine error starts with.
fn message(e: &Error) -> String {
    match e {
        Error::Engine { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// `e` with `note` appended to its message, keeping its kind.
fn with_note(e: Error, note: &str) -> Error {
    if note.is_empty() {
        return e;
    }
    match e {
        Error::Engine { context, message } => Error::Engine {
            context,
            message: format!("{message}; {note}"),
        },
        Error::Corrupt { id, object, reason } => Error::Corrupt {
            id,
            object,
            reason: format!("{reason}; {note}"),
        },
        Error::Invalid { what, message } => Error::Invalid {
            what,
            message: format!("{message}; {note}"),
        },
        Error::Unsupported(m) => Error::Unsupported(format!("{m}; {note}")),
        Error::Cancelled(what) => Error::Cancelled(format!("{what} ({note})")),
        Error::Store { context, error } => Error::Store {
            context: format!("{context} ({note})"),
            error,
        },
        Error::Io { context, error } => Error::Io {
            context: format!("{context} ({note})"),
            error,
        },
        other => other,
    }
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
) -> Result<(Fingerprint, Loaded, Vec<String>)> {
    let mut fp = Fingerprint::default();
    let mut checked = Loaded::default();
    let mut mismatches = Vec::new();
    for p in &plan.indices {
        let count = apply::count(client, p.load_name()).await?;
        fp.counts.insert(p.original.clone(), count);
        checked.counts.insert(p.original.clone(), count);
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
        let (restored, diffs) =
            apply::compare_sample(client, p.load_name(), &p.target, &from_artifact).await?;
        mismatches.extend(diffs);
        fp.values
            .insert(sample::value_name(&p.original), sample::summary(&restored));
        checked.samples.insert(p.original.clone(), from_artifact);
    }
    Ok((fp, checked, mismatches))
}
