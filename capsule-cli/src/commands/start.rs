//! `capsule start`: the daemon. Builds the store from the global flags,
//! the targets from `--config` and Kubernetes discovery
//! ([`crate::commands::plan::target_source`]), and runs `capsule_daemon::run` until
//! SIGTERM or SIGINT.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use capsule_daemon::{ApiToken, DaemonConfig, DaemonOptions, Mode, StoreResolver, Timings};
use capsule_store::{Redactor, Secret, Store, StoreBuilder};
use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::args::GlobalArgs;
use crate::exit::UsageError;
use crate::store_args;

/// The environment variable holding the API token.
const TOKEN_ENV: &str = "CNVRG_CAPSULE_API_TOKEN";

/// What the daemon does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// API, dashboard and jobs.
    Allinone,
    /// API and dashboard only.
    Api,
    /// Jobs only (scheduler and watcher).
    BackupEngine,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `capsule start`: the daemon.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// What to run: the API and dashboard, the jobs, or both.
    #[arg(
        long,
        value_enum,
        env = "CNVRG_CAPSULE_MODE",
        default_value = "allinone"
    )]
    pub mode: ModeArg,
    /// Where the API listens (`:8080` = every interface).
    #[arg(
        long,
        value_name = "ADDR",
        env = "CNVRG_CAPSULE_API_BIND_ADDR",
        default_value = ":8080"
    )]
    pub api_bind_addr: String,
    /// The cluster written into statefiles and matched in requests (else
    /// the config file's `cluster`, else `default`).
    #[arg(long, value_name = "NAME", env = "CNVRG_CAPSULE_CLUSTER")]
    pub cluster: Option<String>,
    /// The services to back up (TOML; see docs/daemon.md).
    #[arg(long, value_name = "FILE", env = "CNVRG_CAPSULE_CONFIG")]
    pub config: Option<PathBuf>,
    /// A file holding the API bearer token (else CNVRG_CAPSULE_API_TOKEN).
    #[arg(long, value_name = "FILE", env = "CNVRG_CAPSULE_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Let reads (lists, the dashboard's data, metrics) through without the token.
    #[arg(long, env = "CNVRG_CAPSULE_API_ANONYMOUS_READ")]
    pub api_anonymous_read: bool,
    /// How often the bucket is scanned for requests, due backups and rotation.
    #[arg(long, value_name = "DURATION", env = "CNVRG_CAPSULE_WATCH_INTERVAL",
          default_value = "10s", value_parser = duration)]
    pub watch_interval: Duration,
    /// How often Kubernetes discovery re-reads the whole cluster; watches
    /// pick up a changed PVC or CnvrgApp within seconds in between.
    #[arg(long, value_name = "DURATION", env = "CNVRG_CAPSULE_DISCOVERY_RESYNC",
          default_value = "60s", value_parser = duration)]
    pub discovery_resync: Duration,
    /// How many jobs run at once.
    #[arg(
        long,
        value_name = "N",
        env = "CNVRG_CAPSULE_MAX_JOBS",
        default_value_t = 2
    )]
    pub max_jobs: usize,
    /// On SIGTERM, how long running jobs may take to finish before they are
    /// cancelled (and marked failed).
    #[arg(long, value_name = "DURATION", env = "CNVRG_CAPSULE_SHUTDOWN_GRACE",
          default_value = "60s", value_parser = duration)]
    pub shutdown_grace: Duration,
    /// A request no capsule picked up within this gets a reason recorded.
    #[arg(long, value_name = "DURATION", env = "CNVRG_CAPSULE_REQUEST_TIMEOUT",
          default_value = "10m", value_parser = duration)]
    pub request_timeout: Duration,
    /// Failed and abandoned periodic backups are deleted after this.
    #[arg(long, value_name = "DURATION", env = "CNVRG_CAPSULE_FAILED_GRACE",
          default_value = "24h", value_parser = duration)]
    pub failed_grace: Duration,
    /// Log format.
    #[arg(
        long,
        value_enum,
        env = "CNVRG_CAPSULE_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Lease and statefile heartbeat interval (tests shorten it).
    #[arg(long, hide = true, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub heartbeat_interval: Duration,
    /// A silent lease holder (or backup owner) is taken over after this.
    #[arg(long, hide = true, value_name = "DURATION", default_value = "120s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// After a failed periodic backup, retry after this (at most one period).
    #[arg(long, hide = true, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    pub retry_after: Duration,
    /// Encryption at rest: the recipients of every service's backups
    /// (unless its config names its own), the identities restores decrypt with.
    #[command(flatten)]
    pub encryption: crate::encryption_args::EncryptionArgs,
}

fn duration(s: &str) -> Result<Duration, String> {
    capsule_daemon::parse_duration(s)
}

/// Installs the daemon's log subscriber: level `info` (`debug` with
/// `--verbose`, `RUST_LOG` overrides), text or JSON lines on stderr, every
/// line redacted of the run's secrets (store keys, the API token).
pub fn init_logging(g: &GlobalArgs, args: &StartArgs) {
    let mut redactor = Redactor::new();
    for s in g.secrets() {
        redactor.add(&s);
    }
    if let Ok(t) = std::env::var(TOKEN_ENV) {
        redactor.add(t.trim());
    }
    if let Some(t) = args
        .api_token_file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
    {
        redactor.add(t.trim());
    }
    let default = if g.verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let writer = RedactingStderr(Arc::new(redactor));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A [`MakeWriter`] whose writers redact each log line before it reaches stderr.
#[derive(Clone)]
struct RedactingStderr(Arc<Redactor>);

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer(Vec::new(), self.0.clone())
    }
}

/// Collects one event; redacts and writes it when dropped.
struct LineBuffer(Vec<u8>, Arc<Redactor>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.0.is_empty() {
            let text = self.1.redact(&String::from_utf8_lossy(&self.0));
            self.0.clear();
            let mut err = io::stderr().lock();
            err.write_all(text.as_bytes())?;
            err.flush()?;
        }
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Builds the store of a service that names its own: the URL with the
/// global `--access-key`/`--secret-key` (and `--ca-file`, unless the URL
/// names a CA file itself) applied when given, else the global store;
/// `dst_dir` else the global `--dst-dir`.
pub(crate) struct CliStores {
    pub(crate) global: Store,
    pub(crate) access: Option<(String, String)>,
    pub(crate) ca_file: Option<std::path::PathBuf>,
}

impl StoreResolver for CliStores {
    fn resolve(&self, url: Option<&str>, dst_dir: Option<&str>) -> Result<Store, String> {
        // An empty one, as an unset one: the global folder.
        let prefix = dst_dir
            .filter(|d| !d.trim().is_empty())
            .unwrap_or(self.global.prefix());
        let base = match url {
            None => self.global.clone(),
            Some(u) => {
                let mut b = StoreBuilder::from_url(u).map_err(|e| e.to_string())?;
                if let Some((a, s)) = &self.access {
                    b = b.with_access_key(Secret::new(a.clone()), Secret::new(s.clone()));
                }
                if let Some(ca) = self.ca_file.as_ref().filter(|_| url_needs_ca(u)) {
                    b = b.with_option("ca_file", &ca.display().to_string());
                }
                b.build().map_err(|e| e.to_string())?
            }
        };
        base.with_prefix(prefix).map_err(|e| e.to_string())
    }
}

/// Whether the global `--ca-file` applies to a service's store URL: a
/// remote store whose URL names no `ca_file` of its own.
fn url_needs_ca(url: &str) -> bool {
    url::Url::parse(url.trim()).is_ok_and(|u| {
        !matches!(u.scheme(), "file" | "memory")
            && !u
                .query_pairs()
                .any(|(k, _)| k.to_ascii_lowercase().replace('-', "_") == "ca_file")
    })
}

/// Runs `capsule start` until SIGTERM or SIGINT; exits 0 after a graceful
/// shutdown.
///
/// # Errors
/// [`UsageError`] for a bad configuration file or flag; the daemon's
/// start-up errors (API address taken, store unusable).
pub async fn run(g: &GlobalArgs, args: &StartArgs) -> Result<()> {
    let store = store_args::build(g)?;
    let config = match &args.config {
        Some(path) => Some(DaemonConfig::load(path).map_err(|e| UsageError::new(e.to_string()))?),
        None => None,
    };
    for w in config.iter().flat_map(|c| c.warnings.iter()) {
        tracing::warn!("{w}");
    }
    let cluster = args
        .cluster
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.cluster.clone()))
        .unwrap_or_else(|| "default".to_string());
    // The config file's services, plus Kubernetes discovery when enabled
    // (the same code path as `capsule plan`).
    let targets = crate::commands::plan::target_source(
        g,
        config.as_ref(),
        &cluster,
        &store,
        args.discovery_resync,
    )
    .await?;
    let token = match (&args.api_token_file, std::env::var(TOKEN_ENV).ok()) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading --api-token-file {}", file.display()))?;
            Some(ApiToken::new(&text).map_err(|e| {
                UsageError::new(format!("--api-token-file {}: {e}", file.display()))
            })?)
        }
        (None, Some(t)) if !t.trim().is_empty() => Some(ApiToken::new(&t)?),
        _ => None,
    };
    let mode = match args.mode {
        ModeArg::Allinone => Mode::AllInOne,
        ModeArg::Api => Mode::Api,
        ModeArg::BackupEngine => Mode::BackupEngine,
    };
    let mut timings = Timings::default();
    timings.watch_interval = args.watch_interval;
    timings.heartbeat = args.heartbeat_interval;
    timings.lease_ttl = args.lease_ttl;
    timings.retry_after = args.retry_after;
    timings.failed_grace = args.failed_grace;
    timings.request_timeout = args.request_timeout;
    timings.shutdown_grace = args.shutdown_grace;
    let options = DaemonOptions::new(mode, cluster)
        .with_api_bind_addr(args.api_bind_addr.clone())
        .with_api_token(token)
        .with_anonymous_read(args.api_anonymous_read)
        .with_max_jobs(args.max_jobs)
        .with_timings(timings)
        .with_encryption(args.encryption.recipients()?.unwrap_or_default())
        .with_identities(args.encryption.identities()?);
    capsule_daemon::run(options, store, targets, shutdown_signal())
        .await
        .map_err(|e| match e {
            capsule_daemon::Error::InvalidOption(m) => UsageError::new(m).into(),
            e => anyhow::Error::new(e),
        })
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
