//! `capsule pg`: the common actions, and (with connection settings:
//! `--pg-url` or the libpq `PG*` variables) the ones that run the engine
//! now: `--create` backs up, `--restore` restores, `--verify` runs a
//! restore drill. Without connection settings `--create` and `--restore`
//! queue a request for a daemon, as before.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use async_trait::async_trait;
use capsule_core::pipeline::PipelineOptions;
use capsule_core::{
    ArtifactSink, ArtifactSource, BackupOptions, Capabilities, Catalog, Engine, EngineInfo,
    Fingerprint, JobContext, RestoreOptions, RestoreOutcome, RestorePlan, ServiceIdentity,
    ServiceType, Statefile, run_backup, run_restore, run_verify,
};
use capsule_engines::{PgEngine, PgOptions, PgRestoreMode, PgRestoreReport};

use super::backups::{self, cancellable};
use super::drill;
use crate::args::{Action, GlobalArgs, PgArgs, ServiceArgs};
use crate::exit::UsageError;
use crate::{output, progress};

/// Runs `capsule pg`.
///
/// # Errors
/// As [`backups::run`]; a usage error for `--verify` or a restore mode
/// without connection settings, or a bad flag value; the engine's errors
/// when it runs now ([`capsule_core::Error::VerificationFailed`] naming
/// the differing tables for a failed drill).
pub async fn run(g: &GlobalArgs, args: &PgArgs) -> Result<()> {
    let action = args.common.action();
    args.engine.check(action)?;
    let Some(options) = args.engine.options()? else {
        if action == Action::Verify {
            return Err(UsageError::new(
                "--verify needs connection settings (--pg-url, or PGHOST/PGDATABASE…)",
            )
            .into());
        }
        if let Some(flag) = args.engine.restore_flags() {
            return Err(UsageError::new(format!(
                "{flag} needs connection settings (--pg-url, or PGHOST/PGDATABASE…): \
                 a queued restore uses the daemon's settings"
            ))
            .into());
        }
        return backups::run(g, ServiceType::Postgresql, &args.common).await;
    };
    if !matches!(action, Action::Create | Action::Restore | Action::Verify) {
        return backups::run(g, ServiceType::Postgresql, &args.common).await;
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
    async fn backup(&self, options: PgOptions) -> Result<()> {
        let service = backups::service_identity(self.args)?;
        let engine = PgEngine::new(options.with_service(ServiceIdentity {
            cluster: self.args.cluster.clone(),
            ..service
        }));
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
        let fp = info.fingerprint.unwrap_or_default();
        let dumped: u64 = sf.artifacts.iter().filter_map(|a| a.raw_size_bytes).sum();
        output::note(&format!(
            "backup {} finished{}: {engine}{}, {}; {} dumped, {} stored in {}",
            sf.backup_id,
            sf.duration()
                .map(|d| format!(" in {}", output::duration(d)))
                .unwrap_or_default(),
            info.server_version
                .map(|v| format!(" ({})", v.split(" (").next().unwrap_or(&v)))
                .unwrap_or_default(),
            contents(&fp),
            output::size(dumped),
            sf.size_bytes()
                .map(output::size)
                .unwrap_or_else(|| "-".into()),
            self.catalog.store().url(),
        ));
        backups::note_encryption(sf);
        Ok(())
    }

    async fn restore(&self, options: PgOptions) -> Result<()> {
        let id = self.backup_id("Restore which backup?").await?;
        let engine = Reporting::new(PgEngine::new(options));
        if !self.g.yes {
            backups::can_confirm("restore")?;
            let sf = self.catalog.describe(&id).await?;
            backups::ask("restore", &restore_prompt(&id, &sf, &engine.engine))?;
        }
        let progress = progress::for_output(self.g.json);
        let ctx = JobContext::new(progress.as_ref());
        let mut opts = RestoreOptions::default();
        if let Some(c) = &self.args.cluster {
            opts = opts.with_cluster(c);
        }
        let started = Instant::now();
        let report =
            cancellable(&ctx, run_restore(&self.catalog, &engine, &id, opts, &ctx)).await?;
        let took = chrono::Duration::milliseconds(started.elapsed().as_millis() as i64);
        let pg = engine.take_report().unwrap_or_default();
        let live = &engine.engine.options().connection.database;
        if self.g.json {
            output::json(&serde_json::json!({
                "backupId": id,
                "target": report.outcome.target,
                "mode": report.outcome.mode,
                "previousDatabase": pg.previous_database,
                "previousDatabaseDropped": pg.previous_dropped,
                "createdRoles": pg.created_roles,
                "durationMs": took.num_milliseconds(),
            }))?;
            return Ok(());
        }
        output::out(&format!(
            "restored backup {id} into {} ({}) in {}",
            report.outcome.target,
            report.outcome.mode,
            output::duration(took)
        ))?;
        match (&engine.engine.options().restore_mode, &pg.previous_database) {
            (PgRestoreMode::Safe, Some(prev)) => output::out(&format!(
                "previous database {live} kept as {prev}: drop it when no longer needed"
            ))?,
            (PgRestoreMode::Safe, None) if pg.previous_dropped => output::out(&format!(
                "previous database {live} dropped (--drop-previous)"
            ))?,
            (PgRestoreMode::Safe, None) => {
                output::out(&format!("database {live} did not exist: created"))?
            }
            _ => {}
        }
        if pg.created_roles.is_empty() {
            output::out("roles created: none (every role the backup needs exists)")?;
        } else {
            output::out(&format!(
                "roles created: {} (existing roles were not changed; give LOGIN roles a password)",
                pg.created_roles.join(", ")
            ))?;
        }
        Ok(())
    }

    async fn verify(&self, options: PgOptions) -> Result<()> {
        let id = self.backup_id("Verify which backup?").await?;
        let engine = Reporting::new(PgEngine::new(options));
        let progress = progress::for_output(self.g.json);
        let ctx = JobContext::new(progress.as_ref());
        let result = cancellable(&ctx, run_verify(&self.catalog, &engine, &id, &ctx)).await;
        let recorded = engine.recorded();
        let restored = engine.take_report().and_then(|r| r.fingerprint);
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                // A drill that restored but differs: show every object, then fail.
                if let (Some(want), Some(got)) = (&recorded, &restored) {
                    if self.g.json {
                        output::json(&comparison_json(&id, "failed", want, got))?;
                    } else {
                        drill::print_comparison("OBJECT", want, got)?;
                    }
                }
                return Err(e);
            }
        };
        let v = &report.verification;
        let took = output::duration(chrono::Duration::milliseconds(
            v.duration_ms.unwrap_or(0) as i64
        ));
        let target = v.target.clone().unwrap_or_else(|| "-".into());
        let got = report.fingerprint.clone().unwrap_or_default();
        match (&recorded, report.compared) {
            (Some(want), true) => {
                if self.g.json {
                    let mut j = comparison_json(&id, "passed", want, &got);
                    j["target"] = target.into();
                    j["durationMs"] = v.duration_ms.into();
                    output::json(&j)?;
                    return Ok(());
                }
                drill::print_comparison("OBJECT", want, &got)?;
                output::out(&format!(
                    "backup {id}: verification passed in {took}: {} match, restored into {target} (dropped)",
                    contents(want)
                ))?;
            }
            _ => {
                if self.g.json {
                    output::json(&serde_json::json!({
                        "backupId": id,
                        "status": "passed",
                        "compared": false,
                        "target": target,
                        "durationMs": v.duration_ms,
                        "restored": got,
                    }))?;
                    return Ok(());
                }
                output::out(&format!(
                    "backup {id}: verification passed in {took}: restored into {target} (dropped): {}; \
                     no fingerprint was recorded at backup, so nothing was compared",
                    contents(&got)
                ))?;
            }
        }
        Ok(())
    }

    async fn backup_id(&self, prompt: &str) -> Result<String> {
        backups::backup_id(
            &self.catalog,
            ServiceType::Postgresql,
            self.args.id.as_deref(),
            prompt,
            Some("finished"),
        )
        .await
    }
}

/// The confirmation question for a restore, saying what will happen to
/// the live database.
fn restore_prompt(id: &str, sf: &Statefile, engine: &PgEngine) -> String {
    let o = engine.options();
    let conn = &o.connection;
    let live = format!("{}/{}", conn.endpoint(), conn.database);
    let what = format!(
        "backup {id} ({}, {}{})",
        sf.status,
        output::date(sf.requested_at),
        sf.engine
            .as_ref()
            .and_then(|e| e.database.as_deref())
            .map(|d| format!(", database {d}"))
            .unwrap_or_default()
    );
    match &o.restore_mode {
        PgRestoreMode::InPlace => format!(
            "Restore {what} over {live} IN PLACE (the database is dropped and recreated; \
             its sessions are ended)?"
        ),
        PgRestoreMode::TargetDb(name) => format!(
            "Restore {what} into a new database {}/{name} (the live one is not touched)?",
            conn.endpoint()
        ),
        _ if o.drop_previous => format!(
            "Restore {what} as {live}, replacing it and DROPPING the current database \
             (its sessions are ended)?"
        ),
        _ => format!(
            "Restore {what} as {live}? It is restored beside it first; the current database \
             is then renamed {}__capsule_prev_<time> and kept (its sessions are ended).",
            conn.database
        ),
    }
}

/// `5 tables (300000 rows), 2 sequences, 1 large object`.
fn contents(fp: &Fingerprint) -> String {
    let lo_key = "pg_catalog.pg_largeobject_metadata";
    let tables = fp.counts.keys().filter(|k| *k != lo_key).count();
    let rows: u64 = fp
        .counts
        .iter()
        .filter(|(k, _)| *k != lo_key)
        .map(|(_, v)| v)
        .sum();
    let mut out = format!("{tables} {} ({rows} rows)", plural(tables, "table"));
    if !fp.values.is_empty() {
        let n = fp.values.len();
        out.push_str(&format!(", {n} {}", plural(n, "sequence")));
    }
    if let Some(&lo) = fp.counts.get(lo_key).filter(|n| **n > 0) {
        out.push_str(&format!(", {lo} {}", plural(lo as usize, "large object")));
    }
    out
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

fn comparison_json(
    id: &str,
    status: &str,
    want: &Fingerprint,
    got: &Fingerprint,
) -> serde_json::Value {
    let objects: Vec<_> = drill::compared_rows(want, got)
        .into_iter()
        .map(|(name, a, b)| {
            serde_json::json!({ "name": name, "atBackup": a, "restored": b, "match": a == b })
        })
        .collect();
    serde_json::json!({
        "backupId": id,
        "status": status,
        "compared": true,
        "mismatches": want.compare(got),
        "objects": objects,
    })
}

/// The PostgreSQL engine as the core drives it, keeping what
/// [`PgEngine::restore_with_report`] and [`PgEngine::verify_with_report`]
/// say beyond the core's [`RestoreOutcome`] (the previous database, the
/// roles created) and the fingerprint recorded at backup, for the output.
///
/// Every [`Engine`] method is passed on, those with a default included
/// (`cancel_grace`: without the engine's, an interrupted restore would be
/// dropped at once, before it drops the database it was creating).
struct Reporting {
    engine: PgEngine,
    report: Mutex<Option<PgRestoreReport>>,
    recorded: Mutex<Option<Fingerprint>>,
}

impl Reporting {
    fn new(engine: PgEngine) -> Self {
        Reporting {
            engine,
            report: Mutex::new(None),
            recorded: Mutex::new(None),
        }
    }

    fn keep(&self, source: &dyn ArtifactSource, report: &PgRestoreReport) {
        let recorded = source
            .statefile()
            .engine
            .as_ref()
            .and_then(|e| e.fingerprint.clone());
        *self.recorded.lock().unwrap_or_else(|e| e.into_inner()) = recorded;
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
    }

    fn take_report(&self) -> Option<PgRestoreReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn recorded(&self) -> Option<Fingerprint> {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl std::fmt::Display for Reporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.engine.fmt(f)
    }
}

#[async_trait]
impl Engine for Reporting {
    fn service_type(&self) -> ServiceType {
        self.engine.service_type()
    }

    fn capabilities(&self) -> Capabilities {
        self.engine.capabilities()
    }

    fn identity(&self) -> ServiceIdentity {
        self.engine.identity()
    }

    async fn backup(
        &self,
        sink: &mut dyn ArtifactSink,
        ctx: &JobContext<'_>,
    ) -> capsule_core::Result<EngineInfo> {
        self.engine.backup(sink, ctx).await
    }

    fn cancel_grace(&self) -> std::time::Duration {
        self.engine.cancel_grace()
    }

    fn zstd_level(&self) -> Option<i32> {
        self.engine.zstd_level()
    }

    async fn restore(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> capsule_core::Result<RestoreOutcome> {
        let report = self.engine.restore_with_report(source, ctx).await?;
        self.keep(source, &report);
        Ok(RestoreOutcome {
            target: report.target,
            mode: report.mode,
            fingerprint: None,
            details: Default::default(),
        })
    }

    async fn fingerprint(&self, ctx: &JobContext<'_>) -> capsule_core::Result<Fingerprint> {
        self.engine.fingerprint(ctx).await
    }

    fn restore_plan(&self) -> RestorePlan {
        self.engine.restore_plan()
    }

    async fn restore_scratch(
        &self,
        source: &dyn ArtifactSource,
        ctx: &JobContext<'_>,
    ) -> capsule_core::Result<RestoreOutcome> {
        let report = self.engine.verify_with_report(source, ctx).await?;
        self.keep(source, &report);
        Ok(RestoreOutcome {
            target: report.target,
            mode: report.mode,
            fingerprint: report.fingerprint,
            details: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(counts: &[(&str, u64)], values: &[(&str, &str)]) -> Fingerprint {
        Fingerprint {
            counts: counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn contents_count_tables_rows_sequences_and_large_objects() {
        let f = fp(
            &[
                ("public.a", 500),
                ("public.b", 1),
                ("pg_catalog.pg_largeobject_metadata", 0),
            ],
            &[("public.a_id_seq", "500")],
        );
        assert_eq!(contents(&f), "2 tables (501 rows), 1 sequence");
        let f = fp(&[("pg_catalog.pg_largeobject_metadata", 2)], &[]);
        assert_eq!(contents(&f), "0 tables (0 rows), 2 large objects");
    }

    #[test]
    fn comparisons_show_every_object_of_both_sides() {
        let want = fp(
            &[("public.a", 500), ("public.gone", 1)],
            &[("public.s", "9")],
        );
        let got = fp(
            &[("public.a", 499), ("public.new", 2)],
            &[("public.s", "9")],
        );
        let rows = drill::compared_rows(&want, &got);
        let row = |n: &str| rows.iter().find(|r| r.0 == n).cloned().unwrap();
        assert_eq!(
            row("public.a"),
            ("public.a".into(), "500".into(), "499".into())
        );
        assert_eq!(row("public.gone").2, "-");
        assert_eq!(row("public.new").1, "-");
        assert_eq!(row("public.s").1, row("public.s").2);
        let j = comparison_json("x", "failed", &want, &got);
        assert_eq!(j["mismatches"].as_array().unwrap().len(), 3);
    }
}
