//! Redis flags.

use std::path::PathBuf;

use anyhow::Result;
use capsule_engines::{RedisCapture, RedisConnection, RedisLoad, RedisOptions};
use clap::Args;

use crate::exit::UsageError;

/// The legacy service secret's URL key, read when no `--redis-url` is given.
const LEGACY_URL_KEY: &str = "REDIS_URL";

/// Redis connection and restore settings.
#[derive(Debug, Args, Default)]
pub struct RedisEngineArgs {
    /// The server: redis://[[user]:password@]host[:port][/db], rediss://
    /// for TLS (?cacert=FILE to trust a private authority). With it,
    /// --create, --restore and --verify run now (else they are queued for a
    /// daemon). Falls back to REDIS_URL.
    #[arg(
        long,
        value_name = "URL",
        env = "CNVRG_CAPSULE_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// The password, when the URL holds none.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "CNVRG_REDIS_PASSWORD",
        hide_env_values = true
    )]
    pub redis_password: Option<String>,
    /// How --create captures: auto (replication, else SCAN + DUMP),
    /// replication, or scan.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub redis_capture: String,
    /// Empty the target (FLUSHALL) before --restore; without it, keys in
    /// the backup replace theirs and other keys stay.
    #[arg(long)]
    pub flush: bool,
    /// How --restore --flush and --verify load the target: auto
    /// (replication where the target allows it, else SET/RESTORE commands),
    /// replication (the target replicates the RDB from capsule, which it
    /// must be able to connect to), or commands.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub redis_load: String,
    /// A scratch Redis for --verify, flushed before and after (default: a
    /// redis-server started on a free loopback port).
    #[arg(
        long,
        value_name = "URL",
        env = "CNVRG_CAPSULE_REDIS_VERIFY_URL",
        hide_env_values = true
    )]
    pub verify_url: Option<String>,
    /// The redis-server binary for --verify drills.
    #[arg(long, value_name = "FILE")]
    pub redis_server: Option<PathBuf>,
}

impl RedisEngineArgs {
    fn url(&self) -> Option<String> {
        self.redis_url
            .clone()
            .or_else(|| std::env::var(LEGACY_URL_KEY).ok())
            .filter(|u| !u.trim().is_empty())
    }

    /// Secret values of these settings (URL passwords, `--redis-password`),
    /// for the log redactor. ACL user names are not secret.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = [self.url(), self.verify_url.clone()]
            .into_iter()
            .flatten()
            .flat_map(|u| crate::logging::url_passwords(&u))
            .collect();
        out.extend(self.redis_password.clone().filter(|p| !p.is_empty()));
        out
    }

    /// The engine's options, `None` without connection settings.
    ///
    /// # Errors
    /// [`UsageError`] for a malformed URL or capture mode.
    pub fn options(&self) -> Result<Option<RedisOptions>> {
        let Some(url) = self.url() else {
            return Ok(None);
        };
        let mut options = self.load_options(RedisOptions::new(
            RedisConnection::from_legacy_secret(&url, self.redis_password.as_deref())
                .map_err(|e| UsageError::new(format!("--redis-url: {e}")))?,
        ))?;
        let capture: RedisCapture = self
            .redis_capture
            .parse()
            .map_err(|e| UsageError::new(format!("--redis-capture: {e}")))?;
        options = options.with_capture(capture).with_flush(self.flush);
        Ok(Some(options))
    }

    /// The options of a restore drill without a server to back up
    /// (`--verify` without `--redis-url`): into `--verify-url`, else a
    /// `redis-server` of its own.
    ///
    /// # Errors
    /// [`UsageError`] for a malformed `--verify-url` or load mode.
    pub fn drill_options(&self) -> Result<RedisOptions> {
        let scratch = self.scratch()?;
        self.load_options(RedisOptions::drill_only(scratch))
    }

    fn scratch(&self) -> Result<Option<RedisConnection>> {
        self.verify_url
            .as_deref()
            .map(|v| {
                RedisConnection::from_url(v)
                    .map_err(|e| UsageError::new(format!("--verify-url: {e}")).into())
            })
            .transpose()
    }

    /// `--redis-load`, `--verify-url` and `--redis-server` applied to
    /// `options`.
    fn load_options(&self, mut options: RedisOptions) -> Result<RedisOptions> {
        let load: RedisLoad = self
            .redis_load
            .parse()
            .map_err(|e| UsageError::new(format!("--redis-load: {e}")))?;
        options = options.with_load(load);
        if let Some(scratch) = self.scratch()? {
            options = options.with_verify_connection(scratch);
        }
        if let Some(bin) = &self.redis_server {
            options = options.with_redis_server(bin);
        }
        Ok(options)
    }
}
