//! [`StoreBuilder`]: from a URL or legacy settings to a [`Store`].

mod backends;

use std::sync::Arc;
use std::time::Duration;

use object_store::{BackoffConfig, Certificate, RetryConfig};

use crate::error::{BackendKind, Error, Redactor, Result, chain_text};
use crate::secret::Secret;
use crate::settings::{BucketType, StorageSettings};
use crate::store::Store;
use crate::url::{
    Location, normalize_option_name, normalize_prefix, parse_store_url, redact_input,
};

/// Builds a [`Store`] from a URL or from legacy settings.
///
/// ```
/// # fn main() -> capsule_store::Result<()> {
/// use capsule_store::{Secret, StoreBuilder};
///
/// let store = StoreBuilder::from_url("s3://cnvrg-storage?endpoint=http://127.0.0.1:8333")?
///     .with_access_key(Secret::new("AKIA123"), Secret::new("s3cr3t"))
///     .with_prefix("cnvrg-smart-backups")
///     .build()?;
/// assert_eq!(store.url(), "s3://cnvrg-storage/cnvrg-smart-backups (endpoint http://127.0.0.1:8333)");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct StoreBuilder {
    location: Location,
    url_prefix: String,
    prefix: String,
    /// Backend options, names normalized, in the order given (later wins).
    options: Vec<(String, String)>,
    /// From `with_access_key`.
    access: Option<(Secret, Secret)>,
    /// From the URL's userinfo.
    user: Option<Secret>,
    password: Option<Secret>,
    /// What the configuration came from, for messages (redacted).
    origin: String,
}

impl std::fmt::Debug for StoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreBuilder")
            .field("origin", &self.origin)
            .field("prefix", &self.prefix)
            .field(
                "options",
                &self
                    .options
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl StoreBuilder {
    /// Parses a store URL:
    ///
    /// - `file:///abs/path`: the directory is the bucket root, created on
    ///   first write (an absolute path without scheme works too);
    /// - `memory://`: a fresh in-memory store at each [`build`](Self::build);
    /// - `s3://bucket[/prefix]`, `gs://bucket[/prefix]`, `az://container[/prefix]`.
    ///
    /// Query parameters are backend options, as for [`with_option`](Self::with_option):
    /// `s3://b?endpoint=http://127.0.0.1:8333&region=us-east-1`. A path after
    /// the bucket goes in front of the prefix (dst-dir). Userinfo is taken as
    /// credentials (`s3://KEY:SECRET@bucket`, `az://ACCOUNT:KEY@container`).
    /// Credentials may also come from the environment as object_store reads
    /// it (`AWS_*`, `AZURE_*`, `GOOGLE_*`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the URL part at fault (scheme, bucket,
    /// path, option) with the URL shown redacted.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = parse_store_url(url)?;
        Ok(StoreBuilder {
            location: parsed.location,
            url_prefix: parsed.prefix,
            prefix: String::new(),
            options: parsed.options,
            access: None,
            user: parsed.user.map(Secret::new),
            password: parsed.password.map(Secret::new),
            origin: format!("store URL {}", redact_input(url.trim())),
        })
    }

    /// From the legacy settings:
    ///
    /// - minio: S3 at `endpoint` (scheme http unless `use_ssl`, if the
    ///   endpoint has none), path-style, http allowed for http endpoints,
    ///   region `us-east-1` unless given; access and secret key required;
    /// - aws: S3, virtual-hosted style in `region`; empty keys mean the
    ///   default credential chain (environment, pod identity, instance role);
    /// - azure: account name and key, container `bucket_name`;
    /// - gcp: service account key from `key_json` (the JSON itself or a path
    ///   to it; none means application default credentials), bucket `bucket_name`.
    ///
    /// `ca_file` becomes the `ca_file` option (a private CA trusted for https).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the flag (and bucket secret key) at
    /// fault, e.g. `--bucket-name (CNVRG_STORAGE_BUCKET) is required for bucket type minio`.
    pub fn from_settings(settings: &StorageSettings) -> Result<Self> {
        let kind = settings.bucket_type;
        let text = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let secret = |v: &Option<Secret>| {
            v.as_ref()
                .filter(|s| !s.expose().trim().is_empty())
                .cloned()
        };
        let required = |value: Option<String>, flag: &Setting| {
            value
                .ok_or_else(|| Error::invalid(format!("{flag} is required for bucket type {kind}")))
        };
        let bucket_flag = match kind {
            BucketType::Azure => &AZURE_CONTAINER,
            _ => &BUCKET,
        };
        let bucket = required(text(&settings.bucket_name), bucket_flag)?;
        let mut options: Vec<(String, String)> = Vec::new();
        let mut opt = |k: &str, v: &str| options.push((k.to_string(), v.to_string()));
        let endpoint = text(&settings.endpoint);
        let location = match kind {
            BucketType::Minio => {
                let endpoint = required(endpoint, &ENDPOINT)?;
                let endpoint = endpoint_with_scheme(&endpoint, settings.use_ssl)?;
                let access = required(
                    secret(&settings.access_key).map(|s| s.expose().to_string()),
                    &ACCESS_KEY,
                )?;
                let secret_key = required(
                    secret(&settings.secret_key).map(|s| s.expose().to_string()),
                    &SECRET_KEY,
                )?;
                opt(
                    "allow_http",
                    if endpoint.starts_with("http://") {
                        "true"
                    } else {
                        "false"
                    },
                );
                opt("endpoint", &endpoint);
                opt("virtual_hosted_style_request", "false");
                opt(
                    "region",
                    text(&settings.region).as_deref().unwrap_or("us-east-1"),
                );
                opt("access_key_id", &access);
                opt("secret_access_key", &secret_key);
                Location::S3 { bucket }
            }
            BucketType::Aws => {
                match endpoint.filter(|e| !e.contains("amazonaws.com")) {
                    Some(endpoint) => {
                        let endpoint =
                            endpoint_with_scheme(&endpoint, settings.use_ssl.or(Some(true)))?;
                        opt(
                            "allow_http",
                            if endpoint.starts_with("http://") {
                                "true"
                            } else {
                                "false"
                            },
                        );
                        opt("endpoint", &endpoint);
                        opt("virtual_hosted_style_request", "false");
                    }
                    None => opt("virtual_hosted_style_request", "true"),
                }
                if let Some(region) = text(&settings.region) {
                    opt("region", &region);
                }
                match (secret(&settings.access_key), secret(&settings.secret_key)) {
                    (Some(a), Some(s)) => {
                        opt("access_key_id", a.expose());
                        opt("secret_access_key", s.expose());
                    }
                    (None, None) => {}
                    (Some(_), None) => {
                        return Err(Error::invalid(format!(
                            "{} is required with --access-key for bucket type aws (or give neither to use the default credential chain)",
                            SECRET_KEY
                        )));
                    }
                    (None, Some(_)) => {
                        return Err(Error::invalid(format!(
                            "{} is required with --secret-key for bucket type aws (or give neither to use the default credential chain)",
                            ACCESS_KEY
                        )));
                    }
                }
                Location::S3 { bucket }
            }
            BucketType::Azure => {
                let account = required(text(&settings.account_name), &ACCOUNT_NAME)?;
                opt("account_name", &account);
                if let Some(key) = secret(&settings.account_key) {
                    opt("account_key", key.expose());
                }
                if let Some(endpoint) = endpoint {
                    let endpoint =
                        endpoint_with_scheme(&endpoint, settings.use_ssl.or(Some(true)))?;
                    opt(
                        "allow_http",
                        if endpoint.starts_with("http://") {
                            "true"
                        } else {
                            "false"
                        },
                    );
                    opt("endpoint", &endpoint);
                }
                Location::Azure { container: bucket }
            }
            BucketType::Gcp => {
                if let Some(key) = secret(&settings.key_json) {
                    opt("key_json", key.expose());
                }
                Location::Gcs { bucket }
            }
        };
        if let Some(ca_file) = &settings.ca_file {
            options.push(("ca_file".into(), ca_file.display().to_string()));
        }
        Ok(StoreBuilder {
            location,
            url_prefix: String::new(),
            prefix: String::new(),
            options,
            access: None,
            user: None,
            password: None,
            origin: format!("bucket type {kind} settings"),
        })
    }

    /// Adds a backend option (object_store's configuration key names, with
    /// or without the `aws_`/`azure_`/`google_` prefix; short names such as
    /// `endpoint`, `region`, `allow_http`, `connect_timeout` work), overriding
    /// the URL's. capsule's own: `max_retries` and `retry_timeout` (e.g.
    /// `30s`) for every remote operation but [`Store::ping`]; `ca_file`
    /// (s3, az, gs: a PEM file of one or more CA certificates trusted for
    /// https besides the system's, for a server with a private CA);
    /// `access_key` and `secret_key` (s3); `use_emulator` (az: Azurite's
    /// account, key and `http://127.0.0.1:10000/devstoreaccount1` unless
    /// given); `key_json` (gs: the service account JSON or a path to it).
    /// Unknown names fail at [`build`](Self::build).
    ///
    /// https endpoints always verify the server's certificate (against the
    /// system's roots plus `ca_file`); plain http is used only for an
    /// endpoint given as `http://`.
    pub fn with_option(mut self, key: &str, value: &str) -> Self {
        self.options
            .push((normalize_option_name(key), value.to_string()));
        self
    }

    /// Credentials overriding the URL's and the environment's: access key
    /// and secret key for s3, account name and account key for az.
    pub fn with_access_key(mut self, key: Secret, secret: Secret) -> Self {
        self.access = Some((key, secret));
        self
    }

    /// The prefix (dst-dir) under the bucket (after the URL's path), possibly
    /// several segments (`prod-eu/backups`); `""` for none. Leading and
    /// trailing `/` are trimmed; `..` segments fail at [`build`](Self::build).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Builds the store. Does no I/O, except reading a GCS service account
    /// key file given by path and the `ca_file`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid prefix, an unknown or invalid
    /// option, an unreadable `ca_file` or one without a PEM certificate, or
    /// a configuration object_store rejects (missing account, unparsable
    /// key); the message never holds a secret.
    pub fn build(self) -> Result<Store> {
        let prefix = normalize_prefix(&self.prefix)
            .map_err(|why| Error::invalid(format!("prefix (dst-dir) {:?} {why}", self.prefix)))?;
        let mut redactor = Redactor::default();
        // The password and secret are secrets everywhere; the user name and
        // access key are for S3 only (for Azure they are the account name).
        for secret in [self.password.as_ref(), self.access.as_ref().map(|(_, s)| s)]
            .into_iter()
            .flatten()
        {
            redactor.add(secret.expose());
        }
        if matches!(self.location, Location::S3 { .. }) {
            for key in [self.user.as_ref(), self.access.as_ref().map(|(k, _)| k)]
                .into_iter()
                .flatten()
            {
                redactor.add(key.expose());
            }
        }
        let backend = match self.location.clone() {
            Location::Memory => self.build_simple(BackendKind::Memory, redactor)?,
            Location::Local { .. } => self.build_simple(BackendKind::Local, redactor)?,
            Location::S3 { bucket } => self.build_s3(&bucket, redactor)?,
            Location::Azure { container } => self.build_azure(&container, redactor)?,
            Location::Gcs { bucket } => self.build_gcs(&bucket, redactor)?,
        };
        let store = Store::new(Arc::new(backend), prefix);
        tracing::debug!(store = %store.url(), "store configured");
        Ok(store)
    }

    /// Splits capsule's own options (retries, `ca_file`) from the
    /// backend's, renaming aliases with `alias`.
    fn split_options(
        &self,
        alias: impl Fn(&str) -> &str,
    ) -> Result<(Vec<(String, String)>, RetrySettings)> {
        let mut retry = RetryConfig::default();
        let mut backend = Vec::new();
        let mut roots = Vec::new();
        for (name, value) in &self.options {
            match name.as_str() {
                "ca_file" => roots = self.read_ca_file(value)?,
                "max_retries" => {
                    retry.max_retries = value.trim().parse().map_err(|_| {
                        Error::invalid(format!(
                            "option max_retries={value:?} in {} is not a whole number",
                            self.origin
                        ))
                    })?;
                }
                "retry_timeout" => {
                    retry.retry_timeout = parse_duration(value).ok_or_else(|| {
                        Error::invalid(format!(
                            "option retry_timeout={value:?} in {} is not a duration like 30s, 500ms or 2m",
                            self.origin
                        ))
                    })?;
                }
                other => backend.push((alias(other).to_string(), value.clone())),
            }
        }
        let probe = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: retry.max_retries.min(2),
            retry_timeout: retry.retry_timeout.min(Duration::from_secs(5)),
        };
        Ok((
            backend,
            RetrySettings {
                normal: retry,
                probe,
                roots,
            },
        ))
    }

    /// The certificates of the PEM file at `path` (option `ca_file`).
    fn read_ca_file(&self, path: &str) -> Result<Vec<Certificate>> {
        let path = path.trim();
        let pem = std::fs::read(path).map_err(|e| {
            Error::invalid(format!(
                "cannot read the CA file {path} (option ca_file of {}): {e}",
                self.origin
            ))
        })?;
        let certs = Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::invalid(format!(
                "the CA file {path} (option ca_file of {}) is not PEM: {}",
                self.origin,
                chain_text(&e)
            ))
        })?;
        if certs.is_empty() {
            return Err(Error::invalid(format!(
                "the CA file {path} (option ca_file of {}) holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                self.origin
            )));
        }
        tracing::debug!(
            ca_file = path,
            certificates = certs.len(),
            "trusting a private CA"
        );
        Ok(certs)
    }

    fn unknown_option(&self, name: &str, scheme: &str) -> Error {
        Error::invalid(format!(
            "unknown option {name:?} for {scheme} stores in {} (see object_store's configuration keys)",
            self.origin
        ))
    }

    fn build_error(&self, scheme: &str, err: &object_store::Error, redactor: &Redactor) -> Error {
        Error::invalid(format!(
            "cannot configure the {scheme} store from {}: {}",
            self.origin,
            redactor.redact(&chain_text(err))
        ))
    }
}

/// capsule's own client settings: retries for object operations and for
/// [`Store::ping`], and the CA certificates of `ca_file`.
struct RetrySettings {
    normal: RetryConfig,
    probe: RetryConfig,
    /// Trusted for https besides the system's roots.
    roots: Vec<Certificate>,
}

/// A storage setting as messages name it: the CLI flag, its environment
/// variable, and its key in a bucket Secret (the daemon's).
struct Setting {
    flag: &'static str,
    env: &'static str,
    secret_key: &'static str,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}; {} in a bucket Secret)",
            self.flag, self.env, self.secret_key
        )
    }
}

impl Setting {
    const fn new(flag: &'static str, env: &'static str, secret_key: &'static str) -> Self {
        Setting {
            flag,
            env,
            secret_key,
        }
    }
}

const BUCKET: Setting = Setting::new(
    "--bucket-name",
    "CNVRG_CAPSULE_BUCKET_NAME",
    "CNVRG_STORAGE_BUCKET",
);
const AZURE_CONTAINER: Setting = Setting::new(
    "--bucket-name",
    "CNVRG_CAPSULE_BUCKET_NAME",
    "CNVRG_STORAGE_AZURE_CONTAINER",
);
const ENDPOINT: Setting = Setting::new(
    "--endpoint",
    "CNVRG_CAPSULE_ENDPOINT",
    "CNVRG_STORAGE_ENDPOINT",
);
const ACCESS_KEY: Setting = Setting::new(
    "--access-key",
    "CNVRG_CAPSULE_ACCESS_KEY",
    "CNVRG_STORAGE_ACCESS_KEY",
);
const SECRET_KEY: Setting = Setting::new(
    "--secret-key",
    "CNVRG_CAPSULE_SECRET_KEY",
    "CNVRG_STORAGE_SECRET_KEY",
);
const ACCOUNT_NAME: Setting = Setting::new(
    "--account-name",
    "CNVRG_CAPSULE_ACCOUNT_NAME",
    "CNVRG_STORAGE_AZURE_ACCOUNT_NAME",
);

/// `endpoint` with a scheme: as given, or `https://` when `use_ssl` is true
/// and `http://` otherwise.
fn endpoint_with_scheme(endpoint: &str, use_ssl: Option<bool>) -> Result<String> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if let Some((scheme, _)) = endpoint.split_once("://") {
        if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
            return Err(Error::invalid(format!(
                "{} {} must be http:// or https:// (or a host:port without scheme)",
                ENDPOINT,
                redact_input(endpoint)
            )));
        }
        return Ok(endpoint.to_string());
    }
    let scheme = if use_ssl == Some(true) {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{endpoint}"))
}

/// `30s`, `500ms`, `2m`, `1h` or plain seconds.
fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}
