//! Where a Redis server is: a `redis://` or `rediss://` URL (or the legacy
//! secret's `REDIS_URL` and `CNVRG_REDIS_PASSWORD`), with the password kept
//! as a [`Secret`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use capsule_core::{Error, Result};
use capsule_store::Secret;
use serde::Deserialize;

/// Default Redis port.
pub const DEFAULT_PORT: u16 = 6379;

/// How to reach one Redis server. `Display` (`host:port/db`) and `Debug`
/// never show the password; it is sent only in `AUTH`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
#[non_exhaustive]
pub struct RedisConnection {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS (`rediss://`).
    pub tls: bool,
    /// ACL user name (Redis 6+); `None` authenticates as `default`.
    pub username: Option<String>,
    /// Password (`AUTH`).
    pub password: Option<Secret>,
    /// The logical database selected on connect (the backup covers every
    /// database; this one is recorded as the service's).
    pub db: u32,
    /// PEM file of the certificate authorities trusted for TLS (default:
    /// the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// How long to wait for a connection and each handshake step (default 10 s).
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// How long capsule waits for the next byte of a reply (captures,
    /// restores, drills; not a restore's `FLUSHALL`, which may take long)
    /// before the request fails (default 120 s; zero: no limit): a server
    /// that died or a network that partitioned without a reset cannot hold
    /// a job for ever. Only waiting on the server counts.
    #[serde(with = "secs")]
    pub idle_timeout: Duration,
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?.max(0.0)))
    }
}

impl Default for RedisConnection {
    fn default() -> Self {
        RedisConnection {
            host: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            tls: false,
            username: None,
            password: None,
            db: 0,
            tls_ca_file: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

impl fmt::Display for RedisConnection {
    /// `host:port/db`, never the user's password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.endpoint(), self.db)
    }
}

fn invalid(message: String) -> Error {
    Error::invalid("redis connection", message)
}

/// `url` with the user-info part replaced by `***`, for messages.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.split('@').next_back().unwrap_or_default().to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // A password holding `/`, `?` or `#` (unescaped) ends the authority
    // early: then the userinfo runs to the last `@`.
    match rest[..authority_end].rfind('@').or_else(|| rest.rfind('@')) {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

impl RedisConnection {
    /// Parses `redis://[[user]:password@]host[:port][/db][?param=value…]`
    /// or `rediss://…` (TLS). Percent-escapes are decoded; the parameters
    /// `db` and `cacert` (a PEM file of trusted authorities) are honoured.
    /// A URL without a scheme (`host:port`, as legacy secrets hold) is
    /// read as `redis://`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the fault (the URL in the message has its
    /// credentials removed).
    pub fn from_url(url: &str) -> Result<Self> {
        // A scheme typo: `redis//…` (no colon), `redis:/…` or `redis:…` (no
        // slashes; a host named redis takes a port: `redis:6379`).
        let mistyped_scheme = url.starts_with("redis//")
            || url.starts_with("rediss//")
            || matches!(url.split_once(':'), Some(("redis" | "rediss", rest))
                if !rest.starts_with(|c: char| c.is_ascii_digit()));
        let full = if url.contains("://") {
            url.to_string()
        } else if mistyped_scheme {
            return Err(invalid(format!(
                "invalid Redis URL {}: it starts with redis:// or rediss://, or with the host",
                redact_url(url)
            )));
        } else {
            format!("redis://{url}")
        };
        let parsed = url::Url::parse(&full).map_err(|e| {
            let hint = if url.contains('@') {
                " (percent-encode a password's special characters: # as %23, / as %2F, ? as %3F, @ as %40)"
            } else {
                ""
            };
            invalid(format!("invalid Redis URL {}: {e}{hint}", redact_url(url)))
        })?;
        let mut c = RedisConnection::default();
        match parsed.scheme() {
            "redis" => {}
            "rediss" => c.tls = true,
            other => {
                return Err(invalid(format!(
                    "unsupported URL scheme {other:?} in {} (expected redis:// or rediss://)",
                    redact_url(url)
                )));
            }
        }
        let decode = |s: &str| -> String {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        if !parsed.username().is_empty() {
            c.username = Some(decode(parsed.username()));
        }
        if let Some(p) = parsed.password() {
            c.password = Some(Secret::new(decode(p)));
        }
        match parsed.host_str().filter(|h| !h.is_empty()) {
            Some(h) => c.host = decode(h.trim_start_matches('[').trim_end_matches(']')),
            None => return Err(invalid(format!("no host in {}", redact_url(url)))),
        }
        if let Some(p) = parsed.port() {
            c.port = p;
        }
        let parse_db = |s: &str| -> Result<u32> {
            s.parse().map_err(|_| {
                if s.contains('@') {
                    // `redis://u:pa/ss@h`: the path holds the password's end.
                    invalid(format!(
                        "invalid database path in {} (percent-encode a password's / as %2F)",
                        redact_url(url)
                    ))
                } else {
                    invalid(format!("invalid database {s:?} in the Redis URL"))
                }
            })
        };
        let path = parsed.path().trim_matches('/');
        if !path.is_empty() {
            c.db = parse_db(path)?;
        }
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "db" => c.db = parse_db(&v)?,
                "cacert" => c.tls_ca_file = Some(PathBuf::from(v.into_owned())),
                _ => {}
            }
        }
        if c.tls_ca_file.is_some() && !c.tls {
            // Meant TLS, wrote redis://: never fall back to plain text.
            return Err(invalid(format!(
                "cacert is for TLS connections, but {} is plain redis://: use rediss://",
                redact_url(url)
            )));
        }
        Ok(c)
    }

    /// The connection of a legacy service secret: `REDIS_URL` (a URL, or
    /// `host:port`) and `CNVRG_REDIS_PASSWORD`, which applies when the URL
    /// holds no password.
    ///
    /// # Errors
    /// As [`RedisConnection::from_url`].
    pub fn from_legacy_secret(redis_url: &str, password: Option<&str>) -> Result<Self> {
        let mut c = Self::from_url(redis_url.trim())?;
        if c.password.is_none() {
            c.password = password.filter(|p| !p.is_empty()).map(Secret::new);
        }
        Ok(c)
    }

    /// `host:port` (IPv6 addresses in brackets).
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Sets the password.
    pub fn with_password(mut self, password: impl Into<Secret>) -> Self {
        self.password = Some(password.into());
        self
    }
    /// Sets the ACL user name.
    pub fn with_username(mut self, user: impl Into<String>) -> Self {
        self.username = Some(user.into());
        self
    }
    /// Trusts the authorities in this PEM file for TLS.
    pub fn with_tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }
    /// Sets how long a capture or a restore waits for the server's next
    /// byte ([`RedisConnection::idle_timeout`]).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }
    /// Sets the database selected on connect.
    pub fn with_db(mut self, db: u32) -> Self {
        self.db = db;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = RedisConnection::from_url("redis://127.0.0.1:6380/3").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.db, c.tls),
            ("127.0.0.1", 6380, 3, false)
        );
        assert!(c.username.is_none() && c.password.is_none());
        let c = RedisConnection::from_url("rediss://:p%40ss@cache.ns?cacert=/ca.pem").unwrap();
        assert!(c.tls);
        assert_eq!(c.port, DEFAULT_PORT);
        assert_eq!(c.password.unwrap().expose(), "p@ss");
        assert_eq!(c.username, None);
        assert_eq!(c.tls_ca_file, Some(PathBuf::from("/ca.pem")));
        let c = RedisConnection::from_url("redis://backup:pw@[::1]:7000?db=2").unwrap();
        assert_eq!(c.username.as_deref(), Some("backup"));
        assert_eq!(c.to_string(), "[::1]:7000/2");
        let c = RedisConnection::from_url("cache:6379").unwrap();
        assert_eq!(c.endpoint(), "cache:6379");
        // Hosts named like the scheme stay hosts.
        for (url, endpoint) in [
            ("redis:6379", "redis:6379"),
            ("redis-master.ns:6380", "redis-master.ns:6380"),
            ("rediss", "rediss:6379"),
        ] {
            assert_eq!(RedisConnection::from_url(url).unwrap().endpoint(), endpoint);
        }
        // A scheme missing its slashes or colon is named as such.
        for url in [
            "redis:/:hunter2@127.0.0.1:6379",
            "redis::hunter2@127.0.0.1:6379",
            "redis//:hunter2@127.0.0.1:6379",
            "rediss//u:hunter2@127.0.0.1",
        ] {
            let e = RedisConnection::from_url(url).unwrap_err().to_string();
            assert!(e.contains("starts with redis://"), "{url}: {e}");
            assert!(
                !e.contains("hunter2") && e.contains("127.0.0.1"),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn errors_never_show_the_password() {
        for bad in [
            "http://u:hunter2@h",
            "redis://u:hunter2@h/notadb",
            "redis://u:hunter2@h:99999",
            "redis://:hunter2@",
            // Unescaped `#`, `/`, `?` in the password end a parser's
            // authority early.
            "redis://backup:hun#ter2@127.0.0.1:7901",
            "redis://:hun/ter2@127.0.0.1:7901",
            "redis://u:hun?ter2@h",
            "redis://u:12/hunter2@h",
        ] {
            let e = RedisConnection::from_url(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2") && !e.contains("ter2"), "{e}");
        }
        let e = RedisConnection::from_url("redis://u:hunter2@h?cacert=/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(e.contains("use rediss://") && !e.contains("hunter2"), "{e}");
        let e = RedisConnection::from_url("redis://backup:hun#ter2@127.0.0.1:7901")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("redis://***@127.0.0.1:7901") && e.contains("%23"),
            "{e}"
        );
        assert_eq!(redact_url("redis://u:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn legacy_secrets() {
        let c = RedisConnection::from_legacy_secret("redis://redis:6379", Some("s3cr3t")).unwrap();
        assert_eq!(c.password.unwrap().expose(), "s3cr3t");
        let c =
            RedisConnection::from_legacy_secret("redis://:in-url@redis:6379", Some("x")).unwrap();
        assert_eq!(c.password.unwrap().expose(), "in-url");
        let c = RedisConnection::from_legacy_secret("redis:6379", Some("")).unwrap();
        assert!(c.password.is_none());
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
