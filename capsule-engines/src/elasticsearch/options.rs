//! The engine's options: connection, index selection, restore and tuning.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use capsule_core::{Error, Result, ServiceIdentity};
use capsule_store::Secret;
use serde::Deserialize;

use super::rename::EsRename;

/// Environment variable of the server URL (as `--es-url`).
pub const ENV_URL: &str = "CNVRG_CAPSULE_ES_URL";
/// The legacy Secret keys, in the order they are consulted: the URL, then
/// user and password pairs (the first pair with a user wins).
pub const LEGACY_URL_KEY: &str = "ELASTICSEARCH_URL";
/// Legacy user/password keys, first pair first.
pub const LEGACY_CREDENTIAL_KEYS: [(&str, &str); 2] = [
    ("ES_USERNAME", "ES_PASSWORD"),
    ("CNVRG_ES_USER", "CNVRG_ES_PASS"),
];

/// How to reach one Elasticsearch or OpenSearch cluster. The password is
/// a [`Secret`]: `Display` (`host:port`) and `Debug` never show it, and it
/// is sent only in the `Authorization` header, never in a URL.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
#[non_exhaustive]
pub struct EsConnection {
    /// Base URL without credentials (`http://127.0.0.1:9200`, possibly
    /// with a path prefix when behind a proxy).
    pub url: String,
    /// User for HTTP basic authentication.
    pub user: Option<String>,
    /// Password for HTTP basic authentication.
    pub password: Option<Secret>,
    /// Extra PEM CA certificates trusted for `https` (besides the system's).
    pub ca_cert: Option<PathBuf>,
    /// Accept any TLS certificate (testing only).
    pub insecure: bool,
    /// Timeout of one request (default 120 s).
    #[serde(with = "secs")]
    pub timeout: Duration,
    /// Timeout of establishing a connection (default 10 s).
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?.max(0.0)))
    }
}

impl Default for EsConnection {
    fn default() -> Self {
        EsConnection {
            url: "http://localhost:9200".into(),
            user: None,
            password: None,
            ca_cert: None,
            insecure: false,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Display for EsConnection {
    /// `host:port`, never the user or password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.endpoint())
    }
}

fn invalid(message: String) -> Error {
    Error::invalid("elasticsearch connection", message)
}

/// `url` with its user info replaced by `***` (for error messages).
/// Where the parser finds no host (`user:pw@host` without a scheme reads
/// as scheme `user`), everything before the last `@` goes.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("***");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(u) if u.host_str().is_some() => u.to_string(),
        _ => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_string(),
        },
    }
}

impl EsConnection {
    /// Parses `http(s)://[user:password@]host[:port][/prefix]` (`host:port`
    /// without a scheme is read as `http://`). Percent
    /// escapes in the user and password are decoded; both are moved out of
    /// the URL. Without a port, the scheme's (80 or 443) is used.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed URL or another scheme (the URL in
    /// the message has its credentials removed).
    pub fn from_url(url: &str) -> Result<Self> {
        // `host:port`, as a legacy secret may hold it, is plain http.
        let full = match url.trim() {
            u if u.contains("://") || u.contains('@') || u.contains(char::is_whitespace) => {
                u.to_string()
            }
            u => format!("http://{u}"),
        };
        let mut parsed = url::Url::parse(&full)
            .map_err(|e| invalid(format!("invalid URL {}: {e}", redact_url(url))))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "unsupported URL scheme {:?} in {} (expected http:// or https://)",
                parsed.scheme(),
                redact_url(url)
            )));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid(format!("no host in {}", redact_url(url))));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(format!(
                "unexpected query or fragment in {}",
                redact_url(url)
            )));
        }
        let decode = |s: &str| -> String {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let mut c = EsConnection::default();
        if !parsed.username().is_empty() {
            c.user = Some(decode(parsed.username()));
        }
        if let Some(p) = parsed.password() {
            c.password = Some(Secret::new(decode(p)));
        }
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let mut base = parsed.to_string();
        while base.ends_with('/') {
            base.pop();
        }
        c.url = base;
        Ok(c)
    }

    /// Reads the connection from the environment: the URL from
    /// `CNVRG_CAPSULE_ES_URL`, else the legacy `ELASTICSEARCH_URL`; the
    /// credentials from the URL, else `ES_USERNAME`/`ES_PASSWORD`, else
    /// `CNVRG_ES_USER`/`CNVRG_ES_PASS`. `None` when no URL is set.
    ///
    /// # Errors
    /// As [`EsConnection::from_url`].
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`EsConnection::from_env`], reading variables (or a Kubernetes
    /// Secret's keys) through `lookup`.
    ///
    /// # Errors
    /// As [`EsConnection::from_url`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let Some(url) = get(ENV_URL).or_else(|| get(LEGACY_URL_KEY)) else {
            return Ok(None);
        };
        Ok(Some(Self::from_url(&url)?.with_credentials_from(lookup)))
    }

    /// When no user is set yet, takes the first legacy user/password pair
    /// found through `lookup` (`ES_USERNAME`/`ES_PASSWORD`, then
    /// `CNVRG_ES_USER`/`CNVRG_ES_PASS`).
    pub fn with_credentials_from(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        if self.user.is_some() {
            return self;
        }
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        for (user_key, pass_key) in LEGACY_CREDENTIAL_KEYS {
            if let Some(user) = get(user_key) {
                self.user = Some(user);
                self.password = get(pass_key).map(Secret::new);
                break;
            }
        }
        self
    }

    /// Sets the user and password.
    pub fn with_credentials(mut self, user: impl Into<String>, password: Option<Secret>) -> Self {
        self.user = Some(user.into());
        self.password = password;
        self
    }
    /// Trusts the PEM CA certificates in `path` too.
    pub fn with_ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_cert = Some(path.into());
        self
    }
    /// Accepts any certificate (testing only).
    pub fn with_insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }
    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `host:port` of the server (the port the URL names or implies).
    pub fn endpoint(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(u) => {
                let host = u.host_str().unwrap_or_default();
                match u.port_or_known_default() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_string(),
                }
            }
            Err(_) => self.url.clone(),
        }
    }
}

/// Everything the Elasticsearch engine needs: plain data with chainable
/// setters; build the engine with [`EsEngine::new`](super::EsEngine::new).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "camelCase")]
#[non_exhaustive]
pub struct EsOptions {
    /// The cluster backed up, and the target of restores.
    pub connection: EsConnection,
    /// Index patterns (`logs-*`, `-logs-old*`, exact names). Empty: at
    /// backup every open index except system (`.`-prefixed) and hidden
    /// ones; at restore every index of the backup.
    pub indices: Vec<String>,
    /// Restore under other names (`pattern:replacement`, a regex).
    pub rename: Option<EsRename>,
    /// At restore, delete existing indices of the same names (and
    /// overwrite differing templates) instead of failing.
    pub replace: bool,
    /// Parallel slices per index when exporting (0: one per primary
    /// shard, at most 8, and 1 for small indices; more slices than
    /// shards only slow the server down).
    pub slices: usize,
    /// Documents per scroll page (default 1000).
    pub page_size: usize,
    /// Largest `_bulk` request body in bytes (default 4 MiB).
    pub bulk_bytes: usize,
    /// Most documents in one `_bulk` request (default 2000).
    pub bulk_docs: usize,
    /// Parallel `_bulk` requests (default 4).
    pub bulk_workers: usize,
    /// Retries of a request answered 429/503 (or refused), with
    /// exponential backoff (default 8).
    pub retries: u32,
    /// Documents per index compared byte for byte after a restore or drill
    /// (default 64; 0 disables the sample).
    pub sample_size: usize,
    /// Names recorded in the statefile (cluster, namespace, service name);
    /// the endpoint comes from the connection when unset.
    pub service: ServiceIdentity,
}

impl Default for EsOptions {
    fn default() -> Self {
        EsOptions {
            connection: EsConnection::default(),
            indices: Vec::new(),
            rename: None,
            replace: false,
            slices: 0,
            page_size: 1000,
            bulk_bytes: 4 * 1024 * 1024,
            bulk_docs: 2000,
            bulk_workers: 4,
            retries: 8,
            sample_size: 64,
            service: ServiceIdentity::default(),
        }
    }
}

impl EsOptions {
    /// The name index `name` of a backup is restored to: after
    /// [`EsOptions::rename`], when set.
    pub(crate) fn restored_name(&self, name: &str) -> String {
        match &self.rename {
            Some(r) => r.apply(name),
            None => name.to_string(),
        }
    }

    /// Options for `connection`, everything else default.
    pub fn new(connection: EsConnection) -> Self {
        EsOptions {
            connection,
            ..EsOptions::default()
        }
    }

    /// Options for the server at `url` (see [`EsConnection::from_url`]).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed URL.
    pub fn from_url(url: &str) -> Result<Self> {
        Ok(Self::new(EsConnection::from_url(url)?))
    }

    /// Sets the index patterns from a comma-separated list (`a,b*,-b2`).
    pub fn with_indices(mut self, patterns: &str) -> Self {
        self.indices = patterns
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        self
    }
    /// Sets the rename rule.
    pub fn with_rename(mut self, rename: EsRename) -> Self {
        self.rename = Some(rename);
        self
    }
    /// Replaces existing indices at restore (or not).
    pub fn with_replace(mut self, replace: bool) -> Self {
        self.replace = replace;
        self
    }
    /// Sets the slices per index (0: automatic).
    pub fn with_slices(mut self, slices: usize) -> Self {
        self.slices = slices;
        self
    }
    /// Sets the scroll page size.
    pub fn with_page_size(mut self, size: usize) -> Self {
        self.page_size = size.max(1);
        self
    }
    /// Sets the largest `_bulk` body in bytes.
    pub fn with_bulk_bytes(mut self, bytes: usize) -> Self {
        self.bulk_bytes = bytes.max(1);
        self
    }
    /// Sets the most documents per `_bulk` request.
    pub fn with_bulk_docs(mut self, docs: usize) -> Self {
        self.bulk_docs = docs.max(1);
        self
    }
    /// Sets the parallel `_bulk` requests.
    pub fn with_bulk_workers(mut self, workers: usize) -> Self {
        self.bulk_workers = workers.max(1);
        self
    }
    /// Sets the retries of rejected requests.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }
    /// Sets the documents per index compared byte for byte.
    pub fn with_sample_size(mut self, n: usize) -> Self {
        self.sample_size = n;
        self
    }
    /// Sets the names recorded in the statefile.
    pub fn with_service(mut self, service: ServiceIdentity) -> Self {
        self.service = service;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        let c = EsConnection::from_url("https://elastic:p%40ss@es.example:9243/prefix/").unwrap();
        assert_eq!(c.url, "https://es.example:9243/prefix");
        assert_eq!(c.user.as_deref(), Some("elastic"));
        assert_eq!(c.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(c.to_string(), "es.example:9243");
        assert!(!format!("{c:?}").contains("p@ss"));
        let c = EsConnection::from_url("http://127.0.0.1:9200").unwrap();
        assert_eq!((c.url.as_str(), c.user), ("http://127.0.0.1:9200", None));
        assert_eq!(
            EsConnection::from_url("https://es").unwrap().endpoint(),
            "es:443"
        );
        // Without a scheme, as a legacy secret may hold it: http.
        let c = EsConnection::from_url("127.0.0.1:9200").unwrap();
        assert_eq!(c.url, "http://127.0.0.1:9200");
        let c = EsConnection::from_url("elasticsearch.ns:9200").unwrap();
        assert_eq!(c.url, "http://elasticsearch.ns:9200");
    }

    #[test]
    fn bad_urls_are_refused_without_the_password() {
        for url in [
            "ftp://u:hunter2@h:1",
            "http://u:hunter2@h:1/?x=1",
            "not a url hunter2@x",
            // No scheme: `elastic` reads as one.
            "elastic:hunter2@127.0.0.1:9200",
            "http//u:hunter2@127.0.0.1:9200",
        ] {
            let e = EsConnection::from_url(url).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn legacy_keys_are_read_in_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(EsConnection::from_lookup(env(&[])).unwrap().is_none());
        let c = EsConnection::from_lookup(env(&[
            ("ELASTICSEARCH_URL", "http://es:9200"),
            ("CNVRG_ES_USER", "cnvrg"),
            ("CNVRG_ES_PASS", "pw2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.user.as_deref(), Some("cnvrg"));
        assert_eq!(c.password.unwrap().expose(), "pw2");
        let c = EsConnection::from_lookup(env(&[
            ("CNVRG_CAPSULE_ES_URL", "http://new:9200"),
            ("ELASTICSEARCH_URL", "http://old:9200"),
            ("ES_USERNAME", "elastic"),
            ("ES_PASSWORD", "pw1"),
            ("CNVRG_ES_USER", "cnvrg"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.endpoint(), "new:9200");
        assert_eq!(c.user.as_deref(), Some("elastic"));
        let c = EsConnection::from_lookup(env(&[
            ("ELASTICSEARCH_URL", "http://u:in-url@es:9200"),
            ("ES_USERNAME", "elastic"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.user.as_deref(), Some("u"));
    }

    #[test]
    fn index_lists_are_split() {
        let o = EsOptions::default().with_indices(" logs-*, ,-logs-old,users ");
        assert_eq!(o.indices, ["logs-*", "-logs-old", "users"]);
    }
}
