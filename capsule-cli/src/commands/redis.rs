//! `capsule redis`: the common actions, and (with connection settings) the
//! ones that run the engine now: `--create` backs up, `--restore`
//! restores, `--verify` runs a restore drill.

use anyhow::Result;
use capsule_core::pipeline::PipelineOptions;
use capsule_core::{
    BackupId, BackupOptions, Catalog, Fingerprint, JobContext, ListFilter, RestoreOptions,
    ServiceIdentity, ServiceType, run_backup, run_restore, run_verify,
};
use capsule_engines::{RedisEngine, RedisOptions};

use super::backups::{self, cancellable};
use crate::args::{Action, GlobalArgs, RedisArgs, ServiceArgs};
use crate::exit::UsageError;
use crate::{output, picker, progress};

/// Runs `capsule redis`.
///
/// # Errors
/// As [`backups::run`]; a usage error for `--flush` without connection
/// settings or a bad flag value; the engine's errors
/// when it runs now.
pub async fn run(g: &GlobalArgs, args: &RedisArgs) -> Result<()> {
    let action = args.common.action();
    let options = match args.engine.options()? {
        Some(options) => Some(options),
        // A drill needs no server to back up: it restores into
        // --verify-url, or a redis-server of its own.
        None if action == Action::Verify => Some(args.engine.drill_options()?),
        None => None,
    };
    let Some(options) = options else {
        if args.engine.flush {
            return Err(UsageError::new("--flush needs connection settings (--redis-url)").into());
        }
        return backups::run(g, ServiceType::Redis, &args.common).await;
    };
    if action == Action::Restore
        && !options.flush
        && options.load == capsule_engines::RedisLoad::Replication
    {
        return Err(UsageError::new(
            "--redis-load replication needs --flush: a load by replication replaces the whole \
             target, and a restore that keeps its other keys sends SET/RESTORE commands",
        )
        .into());
    }
    let now = Now {
        g,
        args: &args.common,
        catalog: backups::engine_catalog(g, &args.common)?,
    };
    match action {
        Action::Create => now.backup(options).await,
        Action::Restore => now.restore(options).await,
        Action::Verify => now.verify(options).await,
        _ => backups::run(g, ServiceType::Redis, &args.common).await,
    }
}

/// The actions that run the engine in this process.
struct Now<'a> {
    g: &'a GlobalArgs,
    args: &'a ServiceArgs,
    catalog: Catalog,
}

impl Now<'_> {
    async fn backup(&self, options: RedisOptions) -> Result<()> {
        let (namespace, name) = match self.args.service.as_deref().map(|s| s.split_once('/')) {
            Some(Some((ns, n))) if !ns.is_empty() && !n.is_empty() => {
                (Some(ns.to_string()), Some(n.to_string()))
            }
            Some(_) => {
                return Err(UsageError::new("invalid --service: expected namespace/name").into());
            }
            None => (None, None),
        };
        let engine = RedisEngine::new(options.with_service(ServiceIdentity {
            cluster: self.args.cluster.clone(),
            namespace,
            name,
            ..Default::default()
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
        let capture = info
            .details
            .get("capture")
            .and_then(|c| c.as_str())
            .unwrap_or("-")
            .to_string();
        output::note(&format!(
            "backup {} finished: {} from {engine} by {capture}, {}{}",
            sf.backup_id,
            counts(&info.fingerprint.unwrap_or_default()),
            sf.size_bytes()
                .map(output::size)
                .unwrap_or_else(|| "-".into()),
            sf.duration()
                .map(|d| format!(" in {}", output::duration(d)))
                .unwrap_or_default()
        ));
        backups::note_encryption(sf);
        Ok(())
    }

    async fn restore(&self, options: RedisOptions) -> Result<()> {
        let id = self.backup_id("Restore which backup?").await?;
        let engine = RedisEngine::new(options);
        if !self.g.yes {
            if !picker::interactive() {
                return Err(UsageError::new(
                    "refusing to restore without confirmation and no terminal to ask on: pass --yes",
                )
                .into());
            }
            let sf = self.catalog.describe(&id).await?;
            let fp = sf
                .engine
                .as_ref()
                .and_then(|e| e.fingerprint.clone())
                .unwrap_or_default();
            let endpoint = engine.options().connection.endpoint();
            let prompt = format!(
                "Restore backup {id} ({}, {}, {}) into {endpoint}, {}?",
                sf.status,
                counts(&fp),
                output::date(sf.requested_at),
                if engine.options().flush {
                    "after deleting every key it holds (FLUSHALL)"
                } else {
                    "replacing the keys the backup holds"
                }
            );
            if !picker::confirm(&prompt)? {
                anyhow::bail!("restore cancelled: nothing was changed");
            }
        }
        let progress = progress::for_output(self.g.json);
        let ctx = JobContext::new(progress.as_ref());
        let mut opts = RestoreOptions::default();
        if let Some(c) = &self.args.cluster {
            opts = opts.with_cluster(c);
        }
        let report =
            cancellable(&ctx, run_restore(&self.catalog, &engine, &id, opts, &ctx)).await?;
        let outcome = &report.outcome;
        if self.g.json {
            let mut out = serde_json::json!({
                "backupId": id,
                "target": outcome.target,
                "mode": outcome.mode,
                "counts": outcome.fingerprint.as_ref().map(|f| &f.counts),
            });
            if let Some(map) = out.as_object_mut() {
                map.extend(outcome.details.clone());
            }
            output::json(&out)?;
        } else {
            output::out(&format!(
                "restored backup {id} into {} ({}): {}",
                outcome.target,
                outcome.mode,
                restored(&outcome.details)
            ))?;
        }
        Ok(())
    }

    async fn verify(&self, options: RedisOptions) -> Result<()> {
        let id = self.backup_id("Verify which backup?").await?;
        let engine = RedisEngine::new(options);
        let progress = progress::for_output(self.g.json);
        let ctx = JobContext::new(progress.as_ref());
        let report = cancellable(&ctx, run_verify(&self.catalog, &engine, &id, &ctx)).await?;
        let v = &report.verification;
        if self.g.json {
            output::json(&serde_json::to_value(v)?)?;
            return Ok(());
        }
        output::out(&format!(
            "backup {id}: verification {}{}: {}",
            if report.compared {
                "passed"
            } else {
                "passed (nothing recorded to compare)"
            },
            v.duration_ms
                .map(|ms| format!(
                    " in {}",
                    output::duration(chrono::Duration::milliseconds(ms as i64))
                ))
                .unwrap_or_default(),
            counts(&report.fingerprint.unwrap_or_default())
        ))?;
        Ok(())
    }

    /// `--id` (checked), else one finished backup picked on the terminal.
    async fn backup_id(&self, prompt: &str) -> Result<String> {
        if let Some(id) = &self.args.id {
            let parsed: BackupId = id
                .parse()
                .map_err(|e| UsageError::new(format!("--id: {e}")))?;
            if parsed.service_type() != ServiceType::Redis {
                return Err(UsageError::new(format!(
                    "--id {id} is a {} backup: use `capsule {}`",
                    parsed.service_type(),
                    parsed.service_type().short_name()
                ))
                .into());
            }
            return Ok(parsed.to_string());
        }
        if !picker::interactive() {
            return Err(
                UsageError::new("no --id given and no terminal to pick from: pass --id").into(),
            );
        }
        let filter = ListFilter::default()
            .with_service_type(ServiceType::Redis)
            .with_status("finished");
        let entries = self.catalog.list(&filter).await?;
        if entries.is_empty() {
            anyhow::bail!(
                "no finished redis backups in {} to pick from",
                self.catalog.store().url()
            );
        }
        picker::pick(prompt, &entries)?.ok_or_else(|| anyhow::anyhow!("no backup picked"))
    }
}

/// "20212 keys in 3 databases (51 expired by now, skipped), 1 function
/// library, loaded by replication" from a restore's details.
fn restored(details: &serde_json::Map<String, serde_json::Value>) -> String {
    let per_db = |key: &str| -> (usize, u64) {
        details
            .get(key)
            .and_then(|v| v.as_object())
            .map(|m| {
                let n = m.values().filter_map(|v| v.as_u64()).sum();
                (m.len(), n)
            })
            .unwrap_or_default()
    };
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let (dbs, keys) = per_db("restored");
    let mut out = format!(
        "{} in {}",
        plural(keys, "key", "keys"),
        plural(dbs as u64, "database", "databases")
    );
    let (_, expired) = per_db("skippedExpired");
    if expired > 0 {
        out.push_str(&format!(" ({expired} expired by now, skipped)"));
    }
    if let Some(f) = details
        .get("functions")
        .and_then(|v| v.as_u64())
        .filter(|&f| f > 0)
    {
        out.push_str(&format!(
            ", {}",
            plural(f, "function library", "function libraries")
        ));
    }
    if let Some(load) = details.get("load").and_then(|v| v.as_str()) {
        out.push_str(&format!(", loaded by {load}"));
    }
    out
}

/// `3 databases, 1200 keys`.
fn counts(fp: &Fingerprint) -> String {
    let keys: u64 = fp.counts.values().sum();
    format!(
        "{} database{}, {keys} key{}",
        fp.counts.len(),
        if fp.counts.len() == 1 { "" } else { "s" },
        if keys == 1 { "" } else { "s" }
    )
}
