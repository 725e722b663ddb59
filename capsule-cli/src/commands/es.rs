//! `capsule es`: the common actions, and (with connection settings:
//! `--es-url`, `CNVRG_CAPSULE_ES_URL` or the legacy `ELASTICSEARCH_URL`)
//! the ones that run the engine now: `--create` backs up, `--restore`
//! restores, `--verify` runs a restore drill. Without connection settings
//! `--create` and `--restore` queue a request for a daemon.

use anyhow::Result;
use capsule_core::pipeline::PipelineOptions;
use capsule_core::{
    BackupOptions, Catalog, Error, Fingerprint, JobContext, RestoreOptions, ServiceType, Statefile,
    run_backup, run_restore, run_verify,
};
use capsule_engines::{EsEngine, EsOptions, EsRestorePreview};

use super::backups::{self, cancellable};
use super::drill;
use crate::args::{Action, EsArgs, GlobalArgs, ServiceArgs};
use crate::exit::UsageError;
use crate::{output, progress};

/// Runs `capsule es`.
///
/// # Errors
/// As [`backups::run`]; a usage error for `--verify`, or `--replace`,
/// `--rename` or `--indices` with `--create`/`--restore`, without connection
/// settings, or a bad flag value; the engine's errors when it runs now
/// ([`capsule_core::Error::VerificationFailed`] naming the differing
/// indices for a failed drill).
pub async fn run(g: &GlobalArgs, args: &EsArgs) -> Result<()> {
    let action = args.common.action();
    let Some(options) = args.engine.options()? else {
        if action == Action::Verify {
            return Err(UsageError::new(
                "--verify needs connection settings (--es-url or ELASTICSEARCH_URL)",
            )
            .into());
        }
        if matches!(action, Action::Create | Action::Restore)
            && let Some(flag) = args.engine.unqueueable_flag()
        {
            return Err(UsageError::new(format!(
                "{flag} needs connection settings (--es-url or ELASTICSEARCH_URL): a queued \
                 request uses the daemon's settings"
            ))
            .into());
        }
        return backups::run(g, ServiceType::Elasticsearch, &args.common).await;
    };
    if !matches!(action, Action::Create | Action::Restore | Action::Verify) {
        return backups::run(g, ServiceType::Elasticsearch, &args.common).await;
    }
    let now = Now {
        g,
        args: &args.common,
        catalog: backups::engine_catalog(g, &args.common)?,
    };
    match action {
        Action::Create => now.backup(options).await,
        Action::Restore => now.restore(options).await,
        _ => now.verify(options).await,
    }
}

/// The actions that run the engine in this process.
struct Now<'a> {
    g: &'a GlobalArgs,
    args: &'a ServiceArgs,
    catalog: Catalog,
}

impl Now<'_> {
    async fn backup(&self, options: EsOptions) -> Result<()> {
        let engine = EsEngine::new(options.with_service(backups::service_identity(self.args)?));
        let mut backup = BackupOptions::default()
            .with_description(&self.args.description)
            .with_pipeline(backups::pipeline(self.args, PipelineOptions::default())?);
        if let Some(c) = &self.args.cluster {
            backup = backup.with_cluster(c);
        }
        let progress = progress::for_output(self.g.json);
        let ctx = JobContext::new(progress.as_ref());
        let report = cancellable(&ctx, run_backup(&self.catalog, &engine, backup, &ctx)).await?;
        let sf = &report.statefile;
        if self.g.json {
            output::json(&sf.to_display_json())?;
            return Ok(());
        }
        output::out(sf.backup_id.as_str())?;
        let info = sf.engine.clone().unwrap_or_default();
        let raw: u64 = sf.artifacts.iter().filter_map(|a| a.raw_size_bytes).sum();
        output::note(&format!(
            "backup {} finished{}: {engine}{}, {}; {} exported, {} stored in {}",
            sf.backup_id,
            sf.duration()
                .map(|d| format!(" in {}", output::duration(d)))
                .unwrap_or_default(),
            info.server_version
                .map(|v| format!(" ({v})"))
                .unwrap_or_default(),
            contents(&info.fingerprint.unwrap_or_default()),
            output::size(raw),
            sf.size_bytes()
                .map(output::size)
                .unwrap_or_else(|| "-".into()),
            self.catalog.store().url(),
        ));
        backups::note_encryption(sf);
        Ok(())
    }

    async fn restore(&self, options: EsOptions) -> Result<()> {
        let id = self.backup_id("Restore which backup?").await?;
        let engine = EsEngine::new(options);
        let sf = self.catalog.describe(&id).await?;
        if !self.g.yes {
            backups::can_confirm("restore")?;
            let fp = sf
                .engine
                .as_ref()
                .and_then(|e| e.fingerprint.clone())
                .unwrap_or_default();
            // The fingerprint counts the documents of every index backed
            // up; without one (never for capsule's own backups) the prompt
            // cannot name indices and stays general.
            let backed_up: Vec<String> = fp.counts.keys().cloned().collect();
            let preview = if backed_up.is_empty() {
                None
            } else {
                Some(engine.restore_preview(&backed_up).await?)
            };
            if let Some(p) = preview.as_ref().filter(|p| !p.unmatched.is_empty()) {
                anyhow::bail!(
                    "--indices {} matches no index of backup {id}: nothing was changed",
                    p.unmatched.join(", ")
                );
            }
            let prompt = match &preview {
                Some(p) => restore_prompt(&id, &sf, &engine, p),
                None => format!(
                    "Restore backup {id} into {engine}{}?",
                    if engine.options().replace {
                        ", REPLACING existing indices of the same names"
                    } else {
                        ""
                    }
                ),
            };
            backups::ask("restore", &prompt)?;
        }
        let progress = progress::for_output(self.g.json);
        let ctx = JobContext::new(progress.as_ref());
        let mut opts = RestoreOptions::default();
        if let Some(c) = &self.args.cluster {
            opts = opts.with_cluster(c);
        }
        let started = std::time::Instant::now();
        let report =
            cancellable(&ctx, run_restore(&self.catalog, &engine, &id, opts, &ctx)).await?;
        let took = chrono::Duration::milliseconds(started.elapsed().as_millis() as i64);
        let got = report.outcome.fingerprint.clone().unwrap_or_default();
        if self.g.json {
            output::json(&serde_json::json!({
                "backupId": id,
                "target": report.outcome.target,
                "mode": report.outcome.mode,
                "documents": got.counts,
                "indices": report.outcome.details.get("indices"),
                "replaced": report.outcome.details.get("replaced"),
                "durationMs": took.num_milliseconds(),
            }))?;
            return Ok(());
        }
        output::out(&format!(
            "restored backup {id} into {} ({}) in {}: {}",
            report.outcome.target,
            report.outcome.mode,
            output::duration(took),
            contents(&got)
        ))?;
        if let Some(rename) = &engine.options().rename {
            output::out(&format!("indices and aliases renamed with {rename}"))?;
        }
        Ok(())
    }

    async fn verify(&self, options: EsOptions) -> Result<()> {
        let id = self.backup_id("Verify which backup?").await?;
        let engine = EsEngine::new(options);
        let recorded = self
            .catalog
            .describe(&id)
            .await?
            .engine
            .and_then(|e| e.fingerprint);
        let progress = progress::for_output(self.g.json);
        let ctx = JobContext::new(progress.as_ref());
        let report = match cancellable(&ctx, run_verify(&self.catalog, &engine, &id, &ctx)).await {
            Ok(report) => report,
            Err(e) => {
                if let Some(Error::VerificationFailed { mismatches, .. }) =
                    e.downcast_ref::<Error>()
                {
                    if self.g.json {
                        output::json(&serde_json::json!({
                            "backupId": id,
                            "status": "failed",
                            "mismatches": mismatches,
                        }))?;
                    } else {
                        for m in mismatches {
                            output::out(&format!("MISMATCH {m}"))?;
                        }
                    }
                }
                return Err(e);
            }
        };
        let v = &report.verification;
        let got = report.fingerprint.clone().unwrap_or_default();
        if self.g.json {
            output::json(&serde_json::json!({
                "backupId": id,
                "status": "passed",
                "compared": report.compared,
                "target": v.target,
                "durationMs": v.duration_ms,
                "restored": got,
            }))?;
            return Ok(());
        }
        if let Some(want) = &recorded {
            drill::print_comparison("INDEX", want, &got)?;
        }
        output::out(&format!(
            "backup {id}: verification passed in {}: {}{}",
            output::duration(chrono::Duration::milliseconds(
                v.duration_ms.unwrap_or(0) as i64
            )),
            contents(&got),
            if report.compared {
                " match the backup (scratch indices deleted)"
            } else {
                "; no fingerprint was recorded at backup, so nothing was compared"
            }
        ))?;
        Ok(())
    }

    async fn backup_id(&self, prompt: &str) -> Result<String> {
        backups::backup_id(
            &self.catalog,
            ServiceType::Elasticsearch,
            self.args.id.as_deref(),
            prompt,
            Some("finished"),
        )
        .await
    }
}

/// The confirmation question, saying what happens to existing indices.
fn restore_prompt(
    id: &str,
    sf: &Statefile,
    engine: &EsEngine,
    preview: &EsRestorePreview,
) -> String {
    let o = engine.options();
    let fp = sf
        .engine
        .as_ref()
        .and_then(|e| e.fingerprint.clone())
        .unwrap_or_default();
    let what = format!(
        "backup {id} ({}, {}, {})",
        sf.status,
        output::date(sf.requested_at),
        selected_contents(&fp, preview)
    );
    let names = match &o.rename {
        Some(r) => format!(" renamed with {r}"),
        None => String::new(),
    };
    let existing: Vec<&str> = preview.existing().collect();
    match (o.replace, existing.is_empty()) {
        (true, false) => format!(
            "Restore {what} into {engine}{names}, REPLACING {} existing {}: {} \
             (each is deleted once its restored copy is loaded and checked)?",
            existing.len(),
            if existing.len() == 1 {
                "index"
            } else {
                "indices"
            },
            name_list(&existing)
        ),
        (true, true) => format!(
            "Restore {what} into {engine}{names}? None of those indices exists there: nothing is replaced."
        ),
        (false, true) => format!("Restore {what} into {engine}{names}?"),
        (false, false) => format!(
            "Restore {what} into {engine}{names}? {} already {} there: the restore will refuse \
             and change nothing (pass --replace to replace {}).",
            name_list(&existing),
            if existing.len() == 1 {
                "exists"
            } else {
                "exist"
            },
            if existing.len() == 1 { "it" } else { "them" }
        ),
    }
}

/// `2 of 5 indices, 1200 documents` when `--indices` selects some of the
/// backup's indices, else as [`contents`].
fn selected_contents(fp: &Fingerprint, preview: &EsRestorePreview) -> String {
    let docs: u64 = preview
        .indices
        .iter()
        .filter_map(|i| fp.counts.get(&i.original))
        .sum();
    let n = preview.indices.len();
    counted(n, (n < fp.counts.len()).then_some(fp.counts.len()), docs)
}

/// `3 indices, 1200 documents`, or `2 of 5 indices, …` with `of`.
fn counted(n: usize, of: Option<usize>, docs: u64) -> String {
    let of_total = of.map(|t| format!(" of {t}")).unwrap_or_default();
    format!(
        "{n}{of_total} {}, {docs} document{}",
        if n == 1 && of.is_none() {
            "index"
        } else {
            "indices"
        },
        if docs == 1 { "" } else { "s" }
    )
}

/// Up to ten names, then how many more.
fn name_list(names: &[&str]) -> String {
    const SHOWN: usize = 10;
    let mut out = names
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        out.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    out
}

/// `3 indices, 1200 documents`.
fn contents(fp: &Fingerprint) -> String {
    counted(fp.counts.len(), None, fp.counts.values().sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use capsule_core::{BackupId, EngineInfo, RequestType};
    use capsule_engines::PreviewIndex;

    fn backup() -> (String, Statefile) {
        let id = BackupId::generate(ServiceType::Elasticsearch);
        let mut sf = Statefile::new(id.clone(), RequestType::Manual, chrono::Utc::now());
        let info = EngineInfo {
            fingerprint: Some(Fingerprint {
                counts: [("logs-1", 10), ("logs-2", 20), ("metrics", 5)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        sf.engine = Some(info);
        (id.to_string(), sf)
    }

    fn preview(indices: &[(&str, bool)]) -> EsRestorePreview {
        let mut p = EsRestorePreview::default();
        p.indices = indices
            .iter()
            .map(|(n, exists)| PreviewIndex::new(*n, *n, *exists))
            .collect();
        p
    }

    fn engine(flags: impl FnOnce(EsOptions) -> EsOptions) -> EsEngine {
        EsEngine::new(flags(EsOptions::from_url("http://127.0.0.1:9200").unwrap()))
    }

    #[test]
    fn prompts_name_what_is_replaced_and_count_only_the_selection() {
        let (id, sf) = backup();
        let replace = engine(|o| o.with_replace(true));
        let p = preview(&[("logs-1", true), ("logs-2", false)]);
        let text = restore_prompt(&id, &sf, &replace, &p);
        assert!(text.contains("2 of 3 indices, 30 documents"), "{text}");
        assert!(
            text.contains("REPLACING 1 existing index: logs-1 ("),
            "{text}"
        );
        let all = preview(&[("logs-1", false), ("logs-2", false), ("metrics", false)]);
        let text = restore_prompt(&id, &sf, &replace, &all);
        assert!(text.contains("3 indices, 35 documents"), "{text}");
        assert!(text.contains("nothing is replaced"), "{text}");
        let plain = engine(|o| o);
        let both = preview(&[("logs-1", true), ("logs-2", true)]);
        let text = restore_prompt(&id, &sf, &plain, &both);
        assert!(
            text.contains("logs-1, logs-2 already exist there: the restore will refuse"),
            "{text}"
        );
        assert!(!text.contains("REPLACING"), "{text}");
    }

    #[test]
    fn long_name_lists_are_cut_at_ten() {
        let names: Vec<String> = (0..12).map(|i| format!("i{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(name_list(&refs[..2]), "i0, i1");
        assert!(name_list(&refs).ends_with("i9 and 2 more"));
    }
}
