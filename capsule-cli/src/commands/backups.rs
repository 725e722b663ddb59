//! `capsule pg|redis|es`: list, describe, create, restore, download and
//! delete backups. Each action is one [`Catalog`] call plus rendering.

use anyhow::{Context, Result};
use capsule_core::pipeline::PipelineOptions;
use capsule_core::{
    BackupFolder, BackupId, Catalog, CatalogEntry, ListFilter, ServiceIdentity, ServiceType,
    Statefile,
};

use crate::args::{Action, GlobalArgs, ServiceArgs};
use crate::exit::{Interrupted, UsageError};
use crate::table::{Cell, Table};
use crate::{output, picker, progress, store_args};

/// The statuses `--status` accepts.
const STATUSES: [&str; 6] = [
    "requested",
    "running",
    "finished",
    "failed",
    "deleting",
    "unreadable",
];

/// Runs one action of a service subcommand.
///
/// # Errors
/// [`UsageError`] for bad flag values or a missing `--id`/`--yes` without a
/// terminal; the core's and the store's errors otherwise.
pub async fn run(g: &GlobalArgs, service_type: ServiceType, args: &ServiceArgs) -> Result<()> {
    if args.action() == Action::List && args.id.is_some() {
        return Err(UsageError::new(
            "--id does not apply to --list, which shows every backup: use --describe --id ID",
        )
        .into());
    }
    let filter = list_filter(service_type, args)?;
    let mut catalog = Catalog::new(lasting_store(g, args)?);
    if args.action() == Action::Download {
        catalog = catalog.with_identities(args.encryption.identities()?);
    }
    let cmd = Ctx {
        g,
        service_type,
        args,
        catalog: &catalog,
    };
    match args.action() {
        Action::List => cmd.list(&filter).await,
        Action::Describe => cmd.describe().await,
        Action::Create => cmd.create().await,
        Action::Restore => cmd.restore().await,
        Action::Download => cmd.download().await,
        Action::Delete => cmd.delete().await,
        Action::Verify => {
            Err(UsageError::new("--verify needs the engine's connection settings").into())
        }
    }
}

/// The catalog of an action that runs the engine now: the store the flags
/// select, with the `--identity-file` identities for `--restore` and
/// `--verify`.
///
/// # Errors
/// As [`store_args::build`]; a [`UsageError`] for an unreadable identity file.
pub fn engine_catalog(g: &GlobalArgs, args: &ServiceArgs) -> Result<Catalog> {
    let catalog = Catalog::new(lasting_store(g, args)?);
    Ok(match args.action() {
        Action::Restore | Action::Verify => catalog.with_identities(args.encryption.identities()?),
        _ => catalog,
    })
}

/// The store the flags select; a [`UsageError`] for `--create` into a
/// `memory://` store, whose backup would be gone when this process exits.
fn lasting_store(g: &GlobalArgs, args: &ServiceArgs) -> Result<capsule_store::Store> {
    let store = store_args::build(g)?;
    if args.action() == Action::Create && store.url().starts_with("memory:") {
        return Err(UsageError::new(
            "--store memory://: a backup there is gone when capsule exits; use a file:// store \
             for a local one",
        )
        .into());
    }
    Ok(store)
}

/// `base` with the recipients of `--encrypt-to` / `--encryption-key-file`.
///
/// # Errors
/// A [`UsageError`] naming the flag with a value that is not a public key.
pub fn pipeline(args: &ServiceArgs, base: PipelineOptions) -> Result<PipelineOptions> {
    Ok(match args.encryption.recipients()? {
        Some(r) => base.with_encryption(r),
        None => base,
    })
}

/// Says, on stderr, to whom a new backup was encrypted.
pub fn note_encryption(sf: &Statefile) {
    let mut to: Vec<&str> = sf
        .artifacts
        .iter()
        .filter_map(|a| a.encryption.as_ref())
        .flat_map(|e| e.recipients.iter().map(String::as_str))
        .collect();
    to.sort_unstable();
    to.dedup();
    if !to.is_empty() {
        output::note(&format!(
            "encrypted (age) to {}: restoring needs a matching --identity-file",
            to.join(", ")
        ));
    }
}

/// What every action needs.
struct Ctx<'a> {
    g: &'a GlobalArgs,
    service_type: ServiceType,
    args: &'a ServiceArgs,
    catalog: &'a Catalog,
}

impl Ctx<'_> {
    fn url(&self) -> String {
        self.catalog.store().url().to_string()
    }

    async fn list(&self, filter: &ListFilter) -> Result<()> {
        let entries = self.catalog.list(filter).await?;
        if self.g.json {
            let all: Vec<_> = entries.iter().map(BackupFolder::summary_json).collect();
            output::json(&serde_json::Value::Array(all))?;
            return Ok(());
        }
        output::note(&format!("store: {}", self.url()));
        if entries.is_empty() {
            output::note(&format!("no {} backups", self.service_type));
            if let Some(dir) = self.catalog.store().local_dir().filter(|d| !d.exists()) {
                output::note(&format!(
                    "{} does not exist: nothing was ever written to this store (check --store and --dst-dir)",
                    dir.display()
                ));
            }
            return Ok(());
        }
        for line in list_table(&entries).render() {
            output::out(&line)?;
        }
        let unreadable: Vec<_> = entries
            .iter()
            .filter_map(|e| e.unreadable.as_ref().map(|r| (&e.id, r)))
            .collect();
        if !unreadable.is_empty() {
            output::out("")?;
            for (id, reason) in unreadable {
                output::out(&format!("{id}: unreadable: {reason}"))?;
            }
        }
        Ok(())
    }

    async fn describe(&self) -> Result<()> {
        let id = self.backup_id("Describe which backup?", None).await?;
        let sf = match self.catalog.describe(&id).await {
            Ok(sf) => sf,
            // The list shows a folder without a statefile as unreadable:
            // say what it holds rather than that it is not there.
            Err(e) if e.is_not_found() => {
                let objects = self.catalog.store().list(&format!("{id}/")).await?;
                if objects.is_empty() {
                    return Err(e.into());
                }
                let bytes: u64 = objects.iter().map(|o| o.size).sum();
                anyhow::bail!(
                    "backup {id} has no statefile: its folder holds {} object{} ({}) but \
                     nothing says what they are; --delete removes them",
                    objects.len(),
                    if objects.len() == 1 { "" } else { "s" },
                    output::size(bytes)
                );
            }
            Err(e) => return Err(e.into()),
        };
        output::json(&sf.to_display_json())?;
        Ok(())
    }

    /// Queues a manual backup for a daemon. When engine connection flags
    /// exist (e.g. `--pg-url`), a "run now" branch goes here, calling
    /// `capsule_core::run_backup` with the engine instead.
    async fn create(&self) -> Result<()> {
        if self.args.encryption.encrypts() {
            return Err(UsageError::new(
                "--encrypt-to and --encryption-key-file need the engine's connection settings: \
                 a queued backup is encrypted as the daemon that runs it is configured",
            )
            .into());
        }
        self.queue_backup().await
    }

    async fn queue_backup(&self) -> Result<()> {
        // As the legacy tool did: prove the store works before accepting a request.
        self.catalog
            .store()
            .ping()
            .await
            .context("checking the store before queueing a backup request")?;
        let service = service_identity(self.args)?;
        let sf = self
            .catalog
            .request_backup(self.service_type, service, &self.args.description)
            .await?;
        if self.g.json {
            output::json(&sf.to_display_json())?;
        } else {
            output::out(sf.backup_id.as_str())?;
            output::note(&format!(
                "backup {} requested: a capsule daemon watching {} will run it",
                sf.backup_id,
                self.url()
            ));
        }
        Ok(())
    }

    async fn restore(&self) -> Result<()> {
        let id = self
            .backup_id("Restore which backup?", Some("finished"))
            .await?;
        if !self.g.yes {
            can_confirm("restore")?;
            let sf = self.catalog.describe(&id).await?;
            let target = sf
                .service
                .qualified_name()
                .map(|s| format!(" into {s}"))
                .unwrap_or_default();
            let prompt = format!(
                "Restore backup {id} ({}, {}){target}, replacing its current data?",
                sf.status,
                output::date(sf.requested_at),
            );
            ask("restore", &prompt)?;
        }
        let handle = self.catalog.request_restore(&id).await?;
        let sf = &handle.statefile;
        if self.g.json {
            output::json(&sf.to_display_json())?;
        } else {
            output::out(&format!(
                "restore of backup {id} requested ({} restore{} recorded): a capsule daemon watching {} will run it",
                sf.restores.len(),
                if sf.restores.len() == 1 { "" } else { "s" },
                self.url()
            ))?;
        }
        Ok(())
    }

    async fn download(&self) -> Result<()> {
        let id = self
            .backup_id("Download which backup?", Some("finished"))
            .await?;
        let progress = progress::for_output(self.g.json);
        let mut signals = StopSignals::watch();
        let files = tokio::select! {
            r = self.catalog.download(&id, &self.g.dumpdir, progress.as_ref()) => r?,
            () = signals.recv() => return Err(Interrupted.into()),
        };
        if self.g.json {
            let files: Vec<_> = files
                .iter()
                .map(|f| {
                    let mut v = serde_json::json!({
                        "name": f.name,
                        "path": f.path,
                        "sizeBytes": f.report.raw_size_bytes,
                        "storedSizeBytes": f.report.size_bytes,
                        "storedSha256": f.report.sha256,
                        "checksumVerified": f.report.checksum_verified,
                        "decrypted": f.report.decrypted,
                    });
                    // The stored object's hash is the file's only when the
                    // file is the object itself (not decompressed or
                    // decrypted).
                    let same_bytes = !f.report.decrypted
                        && f.path.file_name().and_then(|n| n.to_str()) == Some(f.name.as_str());
                    if same_bytes {
                        v["sha256"] = serde_json::json!(f.report.sha256);
                    }
                    v
                })
                .collect();
            output::json(&serde_json::json!({ "backupId": id, "files": files }))?;
            return Ok(());
        }
        let mut table = Table::new(&["FILE", "SIZE", "CHECK"]);
        for f in &files {
            let check = if f.report.checksum_verified {
                Cell::styled(
                    if f.report.decrypted {
                        "sha256 verified, decrypted"
                    } else {
                        "sha256 verified"
                    },
                    console::Style::new().for_stdout().green(),
                )
            } else {
                Cell::plain("length checked (no checksum recorded)")
            };
            table.row(vec![
                Cell::plain(f.path.display().to_string()),
                Cell::plain(output::size(f.report.raw_size_bytes)),
                check,
            ]);
        }
        for line in table.render() {
            output::out(&line)?;
        }
        Ok(())
    }

    async fn delete(&self) -> Result<()> {
        let id = match self.backup_id("Delete which backup?", None).await {
            Ok(id) => id,
            // A folder the list shows whose name is not a well-formed id
            // (written by hand or by another tool) can still be deleted.
            Err(e) => match self.args.id.as_deref() {
                Some(raw) if self.listed_folder(raw).await? => raw.to_string(),
                _ => return Err(e),
            },
        };
        if !self.g.yes {
            can_confirm("delete")?;
            let what = match self.catalog.describe(&id).await {
                Ok(sf) => format!(
                    "{}, {}",
                    sf.status,
                    sf.size_bytes()
                        .map(output::size)
                        .unwrap_or_else(|| "no data".into())
                ),
                Err(capsule_core::Error::UnreadableStatefile { reason, .. }) => {
                    format!("unreadable: {reason}")
                }
                Err(capsule_core::Error::BackupNotFound { .. }) => "no statefile".into(),
                Err(capsule_core::Error::Invalid { .. }) => {
                    "a folder whose name is not a backup id".into()
                }
                Err(e) => return Err(e.into()),
            };
            ask("delete", &format!("Delete backup {id} ({what})?"))?;
        }
        let report = self.catalog.delete(&id).await?;
        if self.g.json {
            output::json(&serde_json::json!({
                "backupId": report.id,
                "objects": report.objects,
                "bytes": report.bytes,
            }))?;
        } else {
            output::out(&format!(
                "deleted backup {} ({} objects, {})",
                report.id,
                report.objects,
                output::size(report.bytes)
            ))?;
        }
        Ok(())
    }

    /// Whether `--list` of this service type shows a folder named `name`.
    async fn listed_folder(&self, name: &str) -> Result<bool> {
        let filter = ListFilter::default().with_service_type(self.service_type);
        Ok(self
            .catalog
            .list(&filter)
            .await?
            .iter()
            .any(|e| e.id == name))
    }

    /// The backup to act on: `--id` (checked), else one picked on the
    /// terminal among this service type's backups (only those with
    /// `status` when given).
    async fn backup_id(&self, prompt: &str, status: Option<&str>) -> Result<String> {
        backup_id(
            self.catalog,
            self.service_type,
            self.args.id.as_deref(),
            prompt,
            status,
        )
        .await
    }
}

/// The backup to act on: `id` (checked against `service_type`), else one
/// picked on the terminal among `service_type`'s backups in `catalog`
/// (only those with `status` when given).
///
/// # Errors
/// [`UsageError`] for a malformed id or one of another service type, or
/// no id and no terminal; the store's errors while listing.
pub(crate) async fn backup_id(
    catalog: &Catalog,
    service_type: ServiceType,
    id: Option<&str>,
    prompt: &str,
    status: Option<&str>,
) -> Result<String> {
    if let Some(id) = id {
        return check_id(id, service_type);
    }
    if !picker::interactive() {
        return Err(
            UsageError::new("no --id given and no terminal to pick from: pass --id").into(),
        );
    }
    let mut filter = ListFilter::default().with_service_type(service_type);
    if let Some(s) = status {
        filter = filter.with_status(s);
    }
    let entries = catalog.list(&filter).await?;
    if entries.is_empty() {
        anyhow::bail!(
            "no {}{} backups in {} to pick from",
            status.map(|s| format!("{s} ")).unwrap_or_default(),
            service_type,
            catalog.store().url()
        );
    }
    picker::pick(prompt, &entries)?.ok_or_else(|| anyhow::anyhow!("no backup picked"))
}

/// Runs `job`, cancelling it on ctrl-c or SIGTERM: the core stops the engine (its
/// tools are killed) and marks the statefile; the error exits 130.
///
/// # Errors
/// The job's error; [`Interrupted`] (with what was cancelled) on ctrl-c.
pub(crate) async fn cancellable<T>(
    ctx: &capsule_core::JobContext<'_>,
    job: impl std::future::Future<Output = capsule_core::Result<T>>,
) -> Result<T> {
    let cancel = ctx.cancel.clone();
    let mut signals = StopSignals::watch();
    let watcher = tokio::spawn(async move {
        signals.recv().await;
        cancel.cancel();
        eprintln!(
            "interrupted: stopping the job and leaving its target consistent; \
             interrupt again to exit at once"
        );
        // A second signal while the job winds down (an engine's grace, a
        // store that does not answer) is an operator who will not wait.
        signals.recv().await;
        eprintln!(
            "error: interrupted again: exiting now, without waiting for the job to stop: its \
             target may be left part way, and its statefile may say running until its \
             heartbeat goes stale"
        );
        std::process::exit(i32::from(crate::exit::INTERRUPTED));
    });
    let result = job.await;
    watcher.abort();
    match result {
        Err(capsule_core::Error::Cancelled(what)) => {
            Err(anyhow::Error::new(Interrupted).context(format!("{what}: cancelled")))
        }
        r => Ok(r?),
    }
}

/// Watches for ctrl-c (SIGINT) and SIGTERM (what `kill` and Kubernetes
/// send): either stops a command the same way, so a job stopped by its
/// pod's termination marks its statefile and cleans up as on ctrl-c.
pub(crate) struct StopSignals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Starts watching now, before the job starts, so that no signal
    /// takes the default action (death) in between.
    pub(crate) fn watch() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Waits for either signal (for ever when neither can be watched).
    pub(crate) async fn recv(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = one(&mut self.int) => {}
            () = one(&mut self.term) => {}
        }
    }
}

/// The service recorded with `--create`: `--cluster` and `--service`
/// (namespace/name).
///
/// # Errors
/// [`UsageError`] when `--service` is not `namespace/name`.
pub(crate) fn service_identity(args: &ServiceArgs) -> Result<ServiceIdentity> {
    let (namespace, name) = match args.service.as_deref() {
        Some(s) => match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                (Some(ns.to_string()), Some(name.to_string()))
            }
            _ => {
                return Err(UsageError::new(format!(
                    "invalid --service {s:?}: expected namespace/name"
                ))
                .into());
            }
        },
        None => (None, None),
    };
    Ok(ServiceIdentity {
        cluster: args.cluster.clone(),
        namespace,
        name,
        ..Default::default()
    })
}

/// Without a terminal to ask on, `action` needs `--yes`: a usage error.
pub(crate) fn can_confirm(action: &str) -> Result<()> {
    if picker::interactive() {
        Ok(())
    } else {
        Err(UsageError::new(format!(
            "refusing to {action} without confirmation and no terminal to ask on: pass --yes"
        ))
        .into())
    }
}

/// Asks `prompt`; a "no" fails the command, changing nothing.
pub(crate) fn ask(action: &str, prompt: &str) -> Result<()> {
    if picker::confirm(prompt)? {
        Ok(())
    } else {
        anyhow::bail!("{action} cancelled: nothing was changed")
    }
}

/// Checks `--id`: a well-formed id of this subcommand's service type.
fn check_id(id: &str, service_type: ServiceType) -> Result<String> {
    let parsed: BackupId = id
        .parse()
        .map_err(|e| UsageError::new(format!("--id: {e}")))?;
    if parsed.service_type() != service_type {
        return Err(UsageError::new(format!(
            "--id {id} is a {} backup: use `capsule {}`",
            parsed.service_type(),
            parsed.service_type().short_name()
        ))
        .into());
    }
    Ok(parsed.to_string())
}

/// The list filter of the flags; checks `--status` and `--service`.
fn list_filter(service_type: ServiceType, args: &ServiceArgs) -> Result<ListFilter> {
    let mut filter = ListFilter::default().with_service_type(service_type);
    if let Some(c) = &args.cluster {
        filter = filter.with_cluster(c);
    }
    if let Some(s) = &args.service {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {}
            _ => {
                return Err(UsageError::new(format!(
                    "invalid --service {s:?}: expected namespace/name"
                ))
                .into());
            }
        }
        filter = filter.with_service(s);
    }
    if let Some(s) = &args.status {
        if !STATUSES.iter().any(|k| k.eq_ignore_ascii_case(s)) {
            return Err(UsageError::new(format!(
                "invalid --status {s:?}: expected one of {}",
                STATUSES.join(", ")
            ))
            .into());
        }
        filter = filter.with_status(s);
    }
    Ok(filter)
}

/// The `--list` table.
fn list_table(entries: &[CatalogEntry]) -> Table {
    let now = chrono::Utc::now();
    let mut table = Table::new(&[
        "ID", "SERVICE", "REQUEST", "STATUS", "DATE", "AGE", "SIZE", "DURATION", "VERIFIED", "NOTE",
    ]);
    let dash = || "-".to_string();
    for e in entries {
        let sf = e.statefile.as_ref();
        let status = e.status_label();
        let verified = match sf.and_then(|s| s.last_verification()) {
            Some(v) if v.status == capsule_core::VerificationStatus::Passed => "yes",
            Some(_) => "no",
            None => "-",
        };
        // A running backup silent for long is probably abandoned, and a
        // finished one whose artifacts are gone cannot be restored: a
        // last column says so (the others keep one word each, for scripts
        // that split the table).
        let missing = e.missing_artifacts();
        let note = match e.last_heartbeat() {
            Some(at)
                if (now - at)
                    .to_std()
                    .is_ok_and(|d| d > capsule_core::LIVE_HEARTBEAT) =>
            {
                format!("no heartbeat for {}", output::duration(now - at))
            }
            _ if !missing.is_empty() => format!("missing {}", missing.join(", ")),
            _ => String::new(),
        };
        table.row(vec![
            Cell::plain(&e.id),
            Cell::plain(sf.and_then(|s| s.service.label()).unwrap_or_else(dash)),
            Cell::plain(sf.map(|s| s.request_type.to_string()).unwrap_or_else(dash)),
            Cell::styled(status, output::status_style(status, false)),
            Cell::plain(e.date().map(output::date).unwrap_or_else(dash)),
            Cell::plain(e.date().map(|d| output::age(d, now)).unwrap_or_else(dash)),
            Cell::plain(e.size_bytes().map(output::size).unwrap_or_else(dash)),
            Cell::plain(
                sf.and_then(|s| s.duration())
                    .map(output::duration)
                    .unwrap_or_else(dash),
            ),
            Cell::plain(verified),
            Cell::styled(note, output::status_style("failed", false)),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_against_the_subcommand() {
        let id = "postgresql-9nVJ8sGmQbXc3RkHzW2tLp";
        assert_eq!(check_id(id, ServiceType::Postgresql).unwrap(), id);
        let e = check_id(id, ServiceType::Redis).unwrap_err();
        assert!(e.to_string().contains("capsule pg"), "{e}");
        assert!(e.is::<UsageError>());
        let e = check_id("../etc", ServiceType::Redis).unwrap_err();
        assert!(e.to_string().starts_with("--id: invalid backup id"), "{e}");
    }
}
