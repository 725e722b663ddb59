//! The command line, as clap parses it.
//!
//! Every global flag of the legacy tool is kept, with its default and its
//! environment variable `CNVRG_CAPSULE_<FLAG_WITH_UNDERSCORES>`. Values are
//! checked later ([`crate::store_args`]) so a bad value gets a one-line error
//! naming the flag.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand};

const STORE_HELP: &str = "\
Store selection:
  1. --store URL (file://, s3://, az://, gs://, memory://), with --access-key
     and --secret-key applied when given;
  2. else the legacy settings, when --bucket-name (or, for azure,
     --account-name) is given: --bucket-type, --endpoint, --region,
     --use-ssl, keys;
  3. else a local store: file://$CAPSULE_HOME, else
     file://$XDG_DATA_HOME/capsule/store, else
     file://~/.local/share/capsule/store.
Backups live under --dst-dir inside the store. Remote calls are retried for
up to 8 s; add retry_timeout=30s (or max_retries=N) to the --store URL to
change that. https endpoints must present a certificate the system trusts,
or one signed by a CA in --ca-file; plain http is used only for an endpoint
given as http:// (or without scheme and --use-ssl=false).

Exit codes: 0 success, 1 the operation failed (store unreachable, backup not
found or corrupt, confirmation declined), 2 usage error (bad flag or value,
no --id and no terminal, a destructive action without --yes and without a
terminal), 130 interrupted.";

/// `capsule`: list, inspect, download, delete, back up and restore the
/// backups of PostgreSQL, Redis and Elasticsearch kept in an object store.
#[derive(Debug, Parser)]
#[command(name = "capsule", version, about, after_long_help = STORE_HELP)]
pub struct Cli {
    /// Flags shared by every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Every secret value given on this run, for redaction: the global ones
    /// ([`GlobalArgs::secrets`]) and the engine's (database passwords).
    pub fn secrets(&self) -> Vec<String> {
        let mut out = self.global.secrets();
        if let Command::Pg(a) = &self.command {
            out.extend(a.engine.secrets());
        }
        if let Command::Es(a) = &self.command {
            out.extend(a.engine.secrets());
        }
        if let Command::Redis(a) = &self.command {
            out.extend(a.engine.secrets());
        }
        out
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// PostgreSQL backups.
    Pg(PgArgs),
    /// Redis backups.
    Redis(RedisArgs),
    /// Elasticsearch backups.
    Es(EsArgs),
    /// Run the daemon: scheduler, bucket watcher, HTTP API and dashboard.
    Start(crate::commands::start::StartArgs),
    /// Print the backup plan the daemon would run (Kubernetes discovery and
    /// --config), with every problem, and exit.
    Plan(crate::commands::plan::PlanArgs),
    /// Print capsule's version.
    Version,
    /// Print a shell completion script.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// The service type and arguments of a service subcommand.
    #[cfg(test)]
    pub fn service(&self) -> Option<(capsule_core::ServiceType, &ServiceArgs)> {
        match self {
            Command::Pg(a) => Some((capsule_core::ServiceType::Postgresql, &a.common)),
            Command::Redis(a) => Some((capsule_core::ServiceType::Redis, &a.common)),
            Command::Es(a) => Some((capsule_core::ServiceType::Elasticsearch, &a.common)),
            Command::Version
            | Command::Completion { .. }
            | Command::Start(_)
            | Command::Plan(_) => None,
        }
    }
}

/// Arguments of `capsule pg|redis|es`: exactly one action and its options.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("action").required(true).multiple(false)))]
pub struct ServiceArgs {
    /// List the backups (newest first).
    #[arg(long, group = "action")]
    pub list: bool,
    /// Print one backup's statefile.
    #[arg(long, group = "action")]
    pub describe: bool,
    /// Back up now with the engine's connection settings (--pg-url,
    /// --redis-url, --es-url), else queue a request for a capsule daemon.
    #[arg(long, group = "action")]
    pub create: bool,
    /// Restore a finished backup (asks for confirmation): now with the
    /// engine's connection settings, else queued for a capsule daemon.
    #[arg(long, group = "action")]
    pub restore: bool,
    /// Download a finished backup's files to --dumpdir, checking them.
    #[arg(long, group = "action")]
    pub download: bool,
    /// Delete a backup (asks for confirmation).
    #[arg(long, group = "action")]
    pub delete: bool,
    /// Restore drill: restore into a scratch target, compare with the
    /// fingerprint recorded at backup, record the result (pg and es need
    /// connection settings; redis drills into --verify-url or a
    /// redis-server of its own).
    #[arg(long, group = "action")]
    pub verify: bool,

    /// The backup; without it, pick one interactively (needs a terminal).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Description recorded with --create.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
    /// The cluster: recorded with --create, a filter for --list.
    #[arg(long, value_name = "NAME", env = "CNVRG_CAPSULE_CLUSTER")]
    pub cluster: Option<String>,
    /// The service as namespace/name: recorded with --create, a filter for --list.
    #[arg(long, value_name = "NS/NAME")]
    pub service: Option<String>,
    /// Only backups with this status (--list): requested, running, finished,
    /// failed, deleting, unreadable.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Encryption at rest: recipients for --create, identities for
    /// --restore, --verify and --download.
    #[command(flatten)]
    pub encryption: crate::encryption_args::EncryptionArgs,
}

impl ServiceArgs {
    /// The chosen action.
    pub fn action(&self) -> Action {
        if self.list {
            Action::List
        } else if self.describe {
            Action::Describe
        } else if self.create {
            Action::Create
        } else if self.restore {
            Action::Restore
        } else if self.download {
            Action::Download
        } else if self.verify {
            Action::Verify
        } else {
            Action::Delete
        }
    }
}

/// The action of a service subcommand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `--list`.
    List,
    /// `--describe`.
    Describe,
    /// `--create`.
    Create,
    /// `--restore`.
    Restore,
    /// `--download`.
    Download,
    /// `--delete`.
    Delete,
    /// `--verify`.
    Verify,
}

/// `capsule pg`: the common actions plus PostgreSQL connection settings.
#[derive(Debug, Args)]
pub struct PgArgs {
    /// Actions and options every service has.
    #[command(flatten)]
    pub common: ServiceArgs,
    /// PostgreSQL connection and restore settings.
    #[command(flatten)]
    pub engine: crate::engine_args::PgEngineArgs,
}

/// `capsule redis`: the common actions plus Redis connection settings.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// Actions and options every service has.
    #[command(flatten)]
    pub common: ServiceArgs,
    /// Redis connection and restore settings.
    #[command(flatten)]
    pub engine: crate::engine_args::RedisEngineArgs,
}

/// `capsule es`: the common actions plus Elasticsearch connection settings.
#[derive(Debug, Args)]
pub struct EsArgs {
    /// Actions and options every service has.
    #[command(flatten)]
    pub common: ServiceArgs,
    /// Elasticsearch connection and restore settings.
    #[command(flatten)]
    pub engine: crate::engine_args::EsEngineArgs,
}

/// Global flags: the legacy ones (same names, defaults and environment
/// variables) plus `--store`, `--json` and `--yes`.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log debug messages to stderr (RUST_LOG overrides the level).
    #[arg(short = 'v', long, global = true, env = "CNVRG_CAPSULE_VERBOSE",
          action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub verbose: bool,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Answer yes to confirmations (needed to delete or restore without a terminal).
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,

    /// The store as a URL (s3://bucket?endpoint=..., az://container?..., file:///dir, ...).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "CNVRG_CAPSULE_STORE",
        hide_env_values = true
    )]
    pub store: Option<String>,

    /// Where --download writes the backup's files.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "CNVRG_CAPSULE_DUMPDIR",
        default_value = "/tmp/capsule-data"
    )]
    pub dumpdir: PathBuf,
    /// Discover services in Kubernetes (`capsule start`, `capsule plan`; needs
    /// --kubeconfig or running in a pod).
    #[arg(long, global = true, value_name = "BOOL", env = "CNVRG_CAPSULE_AUTO_DISCOVERY",
          default_value = "true", default_missing_value = "true", num_args = 0..=1,
          require_equals = true, action = ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub auto_discovery: bool,
    /// Namespaces discovery scans: names or globs, comma-separated.
    #[arg(
        long,
        global = true,
        value_name = "LIST",
        env = "CNVRG_CAPSULE_NS_WHITELIST",
        default_value = "*"
    )]
    pub ns_whitelist: String,
    /// Kubeconfig file for discovery (else the pod's service account).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "CNVRG_CAPSULE_KUBECONFIG"
    )]
    pub kubeconfig: Option<PathBuf>,

    /// Object storage endpoint (minio, S3-compatible, Azure blob endpoint).
    #[arg(
        long,
        global = true,
        value_name = "HOST[:PORT]|URL",
        env = "CNVRG_CAPSULE_ENDPOINT",
        hide_env_values = true
    )]
    pub endpoint: Option<String>,
    /// Object storage region.
    #[arg(
        long,
        global = true,
        value_name = "REGION",
        env = "CNVRG_CAPSULE_REGION"
    )]
    pub region: Option<String>,
    /// Access key (S3/minio), or account name with --store az://.
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "CNVRG_CAPSULE_ACCESS_KEY",
        hide_env_values = true
    )]
    pub access_key: Option<String>,
    /// Secret key (S3/minio), or account key with --store az://.
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "CNVRG_CAPSULE_SECRET_KEY",
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// Use https for --endpoint.
    #[arg(long, global = true, value_name = "BOOL", env = "CNVRG_CAPSULE_USE_SSL",
          default_value = "false", default_missing_value = "true", num_args = 0..=1,
          require_equals = true, action = ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub use_ssl: bool,
    /// PEM file of CA certificates trusted for an https object store
    /// besides the system's (a MinIO with a private CA).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "CNVRG_CAPSULE_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// Bucket (or Azure container) name.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        env = "CNVRG_CAPSULE_BUCKET_NAME"
    )]
    pub bucket_name: Option<String>,
    /// Folder of the backups inside the store (empty: the default, as the
    /// legacy tool read it).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "CNVRG_CAPSULE_DST_DIR",
        default_value = DEFAULT_DST_DIR
    )]
    pub dst_dir: String,
    /// Bucket type: minio, aws, azure or gcp.
    #[arg(
        long,
        global = true,
        value_name = "TYPE",
        env = "CNVRG_CAPSULE_BUCKET_TYPE",
        default_value = "minio"
    )]
    pub bucket_type: String,
    /// Azure storage account name.
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        env = "CNVRG_CAPSULE_ACCOUNT_NAME"
    )]
    pub account_name: Option<String>,
    /// Azure storage account key.
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "CNVRG_CAPSULE_ACCOUNT_KEY",
        hide_env_values = true
    )]
    pub account_key: Option<String>,
    /// GCP service account key (JSON).
    #[arg(
        long,
        global = true,
        value_name = "JSON",
        env = "CNVRG_CAPSULE_KEY_JSON",
        hide_env_values = true
    )]
    pub key_json: Option<String>,
    /// GCP project id.
    #[arg(
        long,
        global = true,
        value_name = "ID",
        env = "CNVRG_CAPSULE_PROJECT_ID"
    )]
    pub project_id: Option<String>,
}

/// The backups' folder when `--dst-dir` is not given, or given empty.
pub const DEFAULT_DST_DIR: &str = "cnvrg-smart-backups";

impl GlobalArgs {
    /// `--dst-dir`, with an empty one (`CNVRG_CAPSULE_DST_DIR=` in a
    /// manifest) read as the default, as the legacy tool did: the bucket's
    /// root would hold no backups.
    pub fn dst_dir(&self) -> &str {
        match self.dst_dir.trim() {
            "" => DEFAULT_DST_DIR,
            _ => &self.dst_dir,
        }
    }

    /// Every secret value given on this run (flags or environment), for
    /// redaction. The store URL's password and secret-looking query values
    /// are included.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = [
            &self.access_key,
            &self.secret_key,
            &self.account_key,
            &self.key_json,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        if let Some(key_json) = &self.key_json {
            out.extend(crate::logging::json_secret_values(key_json));
        }
        for url in [&self.store, &self.endpoint].into_iter().flatten() {
            out.extend(crate::logging::url_secret_values(url));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("capsule").chain(args.iter().copied()))
    }

    #[test]
    fn exactly_one_action_is_required() {
        assert!(parse(&["pg"]).is_err());
        assert!(parse(&["pg", "--list", "--delete"]).is_err());
        let cli = parse(&["pg", "--list"]).unwrap();
        let (t, a) = cli.command.service().unwrap();
        assert_eq!(t, capsule_core::ServiceType::Postgresql);
        assert_eq!(a.action(), Action::List);
    }

    #[test]
    fn booleans_take_optional_values() {
        let cli = parse(&["--use-ssl", "es", "--list"]).unwrap();
        assert!(cli.global.use_ssl);
        let cli = parse(&[
            "redis",
            "--use-ssl=false",
            "--auto-discovery=false",
            "--list",
        ])
        .unwrap();
        assert!(!cli.global.use_ssl);
        assert!(!cli.global.auto_discovery);
        let cli = parse(&["pg", "--list"]).unwrap();
        assert!(!cli.global.use_ssl);
        assert!(cli.global.auto_discovery);
        assert_eq!(cli.global.dst_dir, "cnvrg-smart-backups");
        // The legacy tool's -v.
        assert!(parse(&["-v", "pg", "--list"]).unwrap().global.verbose);
        let cli = parse(&["--dst-dir", "", "pg", "--list"]).unwrap();
        assert_eq!(cli.global.dst_dir(), "cnvrg-smart-backups");
        let cli = parse(&["--dst-dir", "mine", "pg", "--list"]).unwrap();
        assert_eq!(cli.global.dst_dir(), "mine");
        assert_eq!(cli.global.bucket_type, "minio");
        assert!(parse(&["pg", "--list", "--use-ssl=maybe"]).is_err());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["pg", "--delete", "--id", "x", "-y", "--json"]).unwrap();
        assert!(cli.global.yes && cli.global.json);
    }
}
