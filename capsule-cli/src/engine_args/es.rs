//! Elasticsearch flags.

use std::path::PathBuf;

use anyhow::Result;
use capsule_engines::elasticsearch::{EsConnection, LEGACY_CREDENTIAL_KEYS, LEGACY_URL_KEY};
use capsule_engines::{EsOptions, EsRename};
use clap::Args;

use crate::exit::UsageError;

/// Elasticsearch/OpenSearch connection and restore settings.
#[derive(Debug, Args, Default)]
pub struct EsEngineArgs {
    /// The server: http(s)://[user:password@]host:port. With it, --create,
    /// --restore and --verify run now (else they are queued for a daemon).
    /// Falls back to ELASTICSEARCH_URL; the user and password to
    /// ES_USERNAME/ES_PASSWORD, then CNVRG_ES_USER/CNVRG_ES_PASS.
    #[arg(
        long,
        value_name = "URL",
        env = "CNVRG_CAPSULE_ES_URL",
        hide_env_values = true
    )]
    pub es_url: Option<String>,
    /// Index patterns, comma-separated (`logs-*,-logs-old,users`). Default:
    /// at backup every index but system (`.`) and hidden ones, at restore
    /// every index of the backup.
    #[arg(long, value_name = "PATTERNS")]
    pub indices: Option<String>,
    /// Restore under other names: 'regex:replacement', e.g.
    /// 'logs-(.+):restored-logs-$1' (aliases are renamed alike).
    #[arg(long, value_name = "PATTERN:REPLACEMENT")]
    pub rename: Option<String>,
    /// Restore over existing indices of the same names, and overwrite
    /// templates that differ. Each such index is loaded into a staging
    /// index (capsule-restore-<tag>-<index>) and checked against the
    /// backup first; only then is the existing index deleted and the
    /// staging one moved to its name (_clone, or _reindex where the server
    /// has no _clone). A restore failing before that leaves the existing
    /// indices intact. Needs disk for both copies meanwhile.
    #[arg(long)]
    pub replace: bool,
    /// Parallel scroll slices per index at backup (default: automatic).
    #[arg(long, value_name = "N")]
    pub slices: Option<usize>,
    /// Extra CA certificates (PEM) trusted for https.
    #[arg(long, value_name = "FILE", env = "CNVRG_CAPSULE_ES_CA_CERT")]
    pub es_ca_cert: Option<PathBuf>,
    /// Accept any TLS certificate (testing only).
    #[arg(long)]
    pub es_insecure: bool,
}

impl EsEngineArgs {
    /// The first flag a queued request cannot carry (a daemon backs up and
    /// restores with its own settings), if one is given.
    pub fn unqueueable_flag(&self) -> Option<&'static str> {
        if self.replace {
            Some("--replace")
        } else if self.rename.is_some() {
            Some("--rename")
        } else if self.indices.is_some() {
            Some("--indices")
        } else {
            None
        }
    }

    /// The server URL: `--es-url` (or `CNVRG_CAPSULE_ES_URL`), else the
    /// legacy `ELASTICSEARCH_URL`.
    fn url(&self) -> Option<String> {
        self.es_url
            .clone()
            .or_else(|| std::env::var(LEGACY_URL_KEY).ok())
            .filter(|u| !u.trim().is_empty())
    }

    /// Every password this run may use, for the log and output redactor:
    /// the one in the URL (decoded and as written) and the legacy
    /// `ES_PASSWORD` / `CNVRG_ES_PASS` (user names are not secret).
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(url) = self.url() {
            if let Some(pw) = url::Url::parse(&url)
                .ok()
                .and_then(|u| u.password().map(str::to_string))
            {
                out.push(pw);
            }
            if let Some(pw) = EsConnection::from_url(&url).ok().and_then(|c| c.password) {
                out.push(pw.expose().to_string());
            }
        }
        for (_, key) in LEGACY_CREDENTIAL_KEYS {
            if let Some(pw) = std::env::var(key).ok().filter(|p| !p.is_empty()) {
                out.push(pw);
            }
        }
        out
    }

    /// The engine's options, `None` without connection settings.
    ///
    /// # Errors
    /// [`UsageError`] for a malformed URL or `--rename`, or `--slices 0`.
    pub fn options(&self) -> Result<Option<EsOptions>> {
        let Some(url) = self.url() else {
            return Ok(None);
        };
        let mut connection = EsConnection::from_url(&url)
            .map_err(|e| UsageError::new(format!("--es-url: {e}")))?
            .with_credentials_from(|k| std::env::var(k).ok())
            .with_insecure(self.es_insecure);
        if let Some(ca) = &self.es_ca_cert {
            connection = connection.with_ca_cert(ca);
        }
        let mut options = EsOptions::new(connection).with_replace(self.replace);
        if let Some(indices) = &self.indices {
            options = options.with_indices(indices);
        }
        if let Some(rule) = &self.rename {
            let rename: EsRename = rule
                .parse()
                .map_err(|e| UsageError::new(format!("--rename: {e}")))?;
            options = options.with_rename(rename);
        }
        if let Some(n) = self.slices {
            if n == 0 {
                return Err(UsageError::new("--slices must be at least 1").into());
            }
            options = options.with_slices(n);
        }
        Ok(Some(options))
    }
}
