//! The capsule side of `capsule-bench es`: a child process (this binary,
//! `es-child`) running one backup or restore as `capsule es` would, then
//! reporting its time and peak RSS as one JSON line.

use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use capsule_core::pipeline::PipelineOptions;
use capsule_core::{BackupOptions, Catalog, JobContext, NoProgress, RestoreOptions};
use capsule_engines::elasticsearch::RECOMMENDED_ZSTD_LEVEL;
use capsule_engines::{EsEngine, EsOptions};
use capsule_store::Store;
use serde::Deserialize;

use super::SOURCE;
use crate::measure::self_status_kib;

/// Arguments of the hidden `es-child` subcommand.
#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    /// `backup` or `restore`.
    #[arg(long)]
    mode: String,
    /// The server.
    #[arg(long)]
    es_url: String,
    /// A file:// store.
    #[arg(long)]
    store: String,
    /// Index patterns (backup).
    #[arg(long, default_value = SOURCE)]
    indices: String,
    /// The backup (restore).
    #[arg(long)]
    id: Option<String>,
    /// Rename rule (restore).
    #[arg(long)]
    rename: Option<String>,
    /// zstd level (backup; default: what `capsule es --create` uses).
    #[arg(long, allow_hyphen_values = true)]
    zstd_level: Option<i32>,
}

#[derive(Debug, serde::Serialize, Deserialize)]
pub(super) struct ChildReport {
    /// Milliseconds of the job.
    pub ms: u64,
    /// Peak RSS (`VmHWM`), KiB.
    pub hwm_kib: u64,
    /// The backup.
    pub id: String,
    /// Documents backed up or restored.
    pub documents: u64,
}

/// The child: one backup or restore with the defaults, then its report as
/// one JSON line.
///
/// # Errors
/// The engine's errors.
pub async fn child(args: ChildArgs) -> Result<()> {
    let store = Store::from_url(&args.store)?.with_prefix("bench")?;
    let catalog = Catalog::new(store);
    let mut options = EsOptions::from_url(&args.es_url)?.with_indices(&args.indices);
    if let Some(r) = &args.rename {
        options = options.with_rename(r.parse()?).with_indices("");
    }
    let engine = EsEngine::new(options);
    let ctx = JobContext::new(&NoProgress);
    let start = Instant::now();
    let (id, fp) = if args.mode == "backup" {
        let level = args.zstd_level.unwrap_or(RECOMMENDED_ZSTD_LEVEL);
        let backup = BackupOptions::default()
            .with_pipeline(PipelineOptions::default().with_zstd_level(level));
        let r = capsule_core::run_backup(&catalog, &engine, backup, &ctx).await?;
        let fp = r
            .statefile
            .engine
            .and_then(|e| e.fingerprint)
            .unwrap_or_default();
        (r.statefile.backup_id.to_string(), fp)
    } else {
        let id = args.id.context("--id")?;
        let r = capsule_core::run_restore(&catalog, &engine, &id, RestoreOptions::default(), &ctx)
            .await?;
        (id, r.outcome.fingerprint.unwrap_or_default())
    };
    let ms = start.elapsed().as_millis() as u64;
    let report = ChildReport {
        ms,
        hwm_kib: self_status_kib("VmHWM").unwrap_or(0),
        id,
        documents: fp.counts.values().sum(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs `capsule-bench es-child <args>` and reads its report.
///
/// # Errors
/// When the child fails (with its stderr) or prints no report.
pub(super) async fn run_child(args: &[String]) -> Result<ChildReport> {
    // This very binary, even if a rebuild replaced the file meanwhile.
    let out = tokio::process::Command::new("/proc/self/exe")
        .arg("es-child")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("starting capsule-bench es-child")?;
    if !out.status.success() {
        bail!(
            "es-child {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("es-child output {line:?}"))
}
