//! Turning the global flags into a [`Store`].
//!
//! 1. `--store URL` wins; `--access-key`/`--secret-key` are applied to it
//!    when given.
//! 2. Else the legacy settings, when `--bucket-name` (or `--account-name`
//!    for azure) is given.
//! 3. Else a local store: `file://$CAPSULE_HOME`, else
//!    `file://$XDG_DATA_HOME/capsule/store`, else
//!    `file://~/.local/share/capsule/store` (created when missing).
//!
//! `--ca-file` (a private CA for https) applies to remote stores of either
//! kind. The backups live under `--dst-dir` in the store. Remote calls are retried
//! for up to 8 s unless the `--store` URL sets `retry_timeout` or
//! `max_retries`. A configuration the
//! store rejects (unknown bucket type, malformed URL, missing option) is a
//! [`UsageError`] naming the flag.

use std::path::PathBuf;

use anyhow::{Context, Result};
use capsule_store::{BucketType, Secret, StorageSettings, Store, StoreBuilder};

use crate::args::GlobalArgs;
use crate::exit::UsageError;

/// Where the store of this run comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSource {
    /// `--store URL`.
    Url(String),
    /// The legacy flags (`--bucket-type`, `--bucket-name`, …).
    Legacy,
    /// The local default store at this directory.
    Local(PathBuf),
}

/// Which store the flags select (see the module docs).
///
/// # Errors
/// [`UsageError`] for an unknown `--bucket-type`; an error when no local
/// directory can be found (no `$HOME`).
pub fn source(g: &GlobalArgs) -> Result<StoreSource> {
    if let Some(url) = &g.store {
        return Ok(StoreSource::Url(url.clone()));
    }
    let bucket_type = bucket_type(g)?;
    let legacy =
        g.bucket_name.is_some() || (bucket_type == BucketType::Azure && g.account_name.is_some());
    if legacy {
        return Ok(StoreSource::Legacy);
    }
    default_local_dir().map(StoreSource::Local)
}

/// Builds the store the flags select, with `--dst-dir` as its prefix.
/// Nothing is read or written yet.
///
/// # Errors
/// [`UsageError`] for configuration the store rejects; local I/O errors
/// creating the default directory.
pub fn build(g: &GlobalArgs) -> Result<Store> {
    let source = source(g)?;
    // Which flags a configuration error is about.
    let culprit = match &source {
        StoreSource::Url(_) => Some("--store"),
        // The store's messages name the legacy flag at fault themselves.
        StoreSource::Legacy => None,
        StoreSource::Local(_) => Some("the local store"),
    };
    let usage = |e| usage(culprit, e);
    let remote = match &source {
        StoreSource::Url(url) => is_remote(url) && !has_retry_options(url),
        StoreSource::Legacy => true,
        StoreSource::Local(_) => false,
    };
    // The legacy settings carry --ca-file themselves.
    let url_ca_file = match &source {
        StoreSource::Url(url) if is_remote(url) => g.ca_file.as_ref(),
        _ => None,
    };
    let mut builder = match source {
        StoreSource::Url(url) => {
            let b = StoreBuilder::from_url(&url).map_err(usage)?;
            match (&g.access_key, &g.secret_key) {
                (Some(access), Some(secret)) => {
                    b.with_access_key(Secret::new(access.clone()), Secret::new(secret.clone()))
                }
                (None, None) => b,
                _ => {
                    return Err(UsageError::new(
                        "--access-key and --secret-key go together: give both or neither",
                    )
                    .into());
                }
            }
        }
        StoreSource::Legacy => StoreBuilder::from_settings(&settings(g)?).map_err(usage)?,
        StoreSource::Local(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the local store {}", dir.display()))?;
            StoreBuilder::from_url(&format!("file://{}", dir.display())).map_err(usage)?
        }
    };
    if remote {
        builder = builder.with_option("retry_timeout", CLI_RETRY_TIMEOUT);
    }
    if let Some(ca) = url_ca_file {
        builder = builder.with_option("ca_file", &ca.display().to_string());
    }
    builder
        .build()
        .map_err(usage)?
        .with_prefix(g.dst_dir())
        .map_err(|e| self::usage(Some("--dst-dir"), e))
}

/// How long a remote call is retried, unless the `--store` URL says
/// (`retry_timeout=...`, `max_retries=...`): a person is waiting, so an
/// unreachable endpoint fails within seconds rather than minutes.
const CLI_RETRY_TIMEOUT: &str = "8s";

/// Whether the URL names a remote store (not `file://`, `memory://` or a path).
fn is_remote(url: &str) -> bool {
    url::Url::parse(url.trim()).is_ok_and(|u| !matches!(u.scheme(), "file" | "memory"))
}

/// Whether the URL sets capsule's retry options itself.
fn has_retry_options(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.query_pairs().any(|(k, _)| {
            let k = k.to_ascii_lowercase().replace('-', "_");
            k == "retry_timeout" || k == "max_retries"
        })
    })
}

/// A store error is a usage error when it is about configuration; the
/// message then starts with `culprit` (the flag at fault) when given.
fn usage(culprit: Option<&str>, e: capsule_store::Error) -> anyhow::Error {
    match (&e, culprit) {
        (capsule_store::Error::InvalidConfig { .. }, Some(c)) => {
            UsageError::new(format!("{c}: {e}")).into()
        }
        (capsule_store::Error::InvalidConfig { .. }, None) => UsageError::new(e.to_string()).into(),
        _ => anyhow::Error::new(e),
    }
}

fn bucket_type(g: &GlobalArgs) -> Result<BucketType> {
    g.bucket_type.parse::<BucketType>().map_err(|_| {
        UsageError::new(format!(
            "invalid --bucket-type {:?}: expected one of minio, aws, azure, gcp",
            g.bucket_type
        ))
        .into()
    })
}

/// The legacy settings from the flags.
fn settings(g: &GlobalArgs) -> Result<StorageSettings> {
    let secret = |s: &Option<String>| s.clone().map(Secret::new);
    let mut s = StorageSettings::new(bucket_type(g)?);
    s.endpoint = g.endpoint.clone();
    s.region = g.region.clone();
    s.access_key = secret(&g.access_key);
    s.secret_key = secret(&g.secret_key);
    s.use_ssl = Some(g.use_ssl);
    s.ca_file = g.ca_file.clone();
    s.bucket_name = g.bucket_name.clone();
    s.account_name = g.account_name.clone();
    s.account_key = secret(&g.account_key);
    s.key_json = secret(&g.key_json);
    s.project_id = g.project_id.clone();
    Ok(s)
}

/// The default local store directory: `$CAPSULE_HOME`, else
/// `$XDG_DATA_HOME/capsule/store`, else `~/.local/share/capsule/store`.
fn default_local_dir() -> Result<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(home) = var("CAPSULE_HOME") {
        return Ok(home);
    }
    if let Some(data) = var("XDG_DATA_HOME") {
        return Ok(data.join("capsule").join("store"));
    }
    var("HOME")
        .map(|h| h.join(".local/share/capsule/store"))
        .ok_or_else(|| {
            UsageError::new(
                "no store given and no home directory for the local store: pass --store or set CAPSULE_HOME",
            )
            .into()
        })
}
