//! Connection settings: a `postgres://` URL or the libpq `PG*` variables,
//! with the password from the URL, `PGPASSWORD` or a passfile, and TLS as
//! libpq's `sslmode` and `sslrootcert` say.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capsule_core::{Error, Result};
use capsule_store::Secret;
use serde::Deserialize;

/// Default PostgreSQL port.
pub const DEFAULT_PORT: u16 = 5432;

/// How to reach one PostgreSQL database. The password is a [`Secret`]:
/// `Display` (`user@host:port/db`) and `Debug` never show it, and the
/// engine hands it to `pg_dump`/`pg_restore` only through the child's
/// environment (`PGPASSWORD`), never its arguments.
///
/// When no password is set, the passfile is consulted at connection time
/// like libpq does: [`PgConnection::passfile`], else `$PGPASSFILE`, else
/// `~/.pgpass` (ignored, with a warning, when group- or world-readable).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
#[non_exhaustive]
pub struct PgConnection {
    /// Host name, IP address, or the directory of a Unix socket (starting with `/`).
    pub host: String,
    /// TCP port (also the socket's suffix).
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password; `None` means "look in the passfile".
    pub password: Option<Secret>,
    /// Database name.
    pub database: String,
    /// Passfile to read the password from when none is set.
    pub passfile: Option<PathBuf>,
    /// How long to wait for a connection (default 10 s).
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// TLS, as libpq's `sslmode` (default `prefer`).
    pub ssl_mode: PgSslMode,
    /// PEM file of the CA certificates that may sign the server's
    /// certificate (libpq's `sslrootcert`); `None` means
    /// `~/.postgresql/root.crt` when it exists, as for libpq.
    pub ssl_root_cert: Option<PathBuf>,
}

/// libpq's `sslmode`: whether TLS is used and what is checked.
///
/// | mode | TLS | certificate checked |
/// |---|---|---|
/// | `disable` | never | – |
/// | `allow`, `prefer` | when the server offers it | only with a CA file (chain, like `verify-ca`) |
/// | `require` | always | only with a CA file (chain, like `verify-ca`) |
/// | `verify-ca` | always | chain up to the CA file |
/// | `verify-full` | always | chain, and the host name or address in the certificate |
///
/// The CA file is `sslrootcert`, else `~/.postgresql/root.crt` when it
/// exists; `verify-ca` and `verify-full` fail without one. capsule's own
/// SQL sessions treat `allow` as `prefer`; `pg_dump` and `pg_restore` get
/// the mode as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PgSslMode {
    /// No TLS.
    Disable,
    /// Plain first, TLS if the server insists (capsule's sessions: as `prefer`).
    Allow,
    /// TLS when the server offers it, else plain (libpq's default).
    #[default]
    Prefer,
    /// TLS or fail; the certificate is not checked unless a CA file is there.
    Require,
    /// TLS, the certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, the certificate signed by a trusted CA and naming the host.
    VerifyFull,
}

impl PgSslMode {
    /// Every mode, weakest first.
    pub const ALL: [PgSslMode; 6] = [
        PgSslMode::Disable,
        PgSslMode::Allow,
        PgSslMode::Prefer,
        PgSslMode::Require,
        PgSslMode::VerifyCa,
        PgSslMode::VerifyFull,
    ];

    /// The libpq name (`verify-full`…).
    pub fn as_str(self) -> &'static str {
        match self {
            PgSslMode::Disable => "disable",
            PgSslMode::Allow => "allow",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses a libpq name.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the value and the choices.
    pub fn parse(value: &str) -> Result<Self> {
        PgSslMode::ALL
            .into_iter()
            .find(|m| m.as_str() == value.trim())
            .ok_or_else(|| {
                invalid(format!(
                    "invalid sslmode {value:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
                ))
            })
    }

    /// Whether the server's certificate must be signed by a trusted CA.
    pub fn verifies(self) -> bool {
        matches!(self, PgSslMode::VerifyCa | PgSslMode::VerifyFull)
    }
}

impl fmt::Display for PgSslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?.max(0.0)))
    }
}

impl Default for PgConnection {
    fn default() -> Self {
        PgConnection {
            host: "localhost".into(),
            port: DEFAULT_PORT,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            passfile: None,
            connect_timeout: Duration::from_secs(10),
            ssl_mode: PgSslMode::default(),
            ssl_root_cert: None,
        }
    }
}

impl fmt::Display for PgConnection {
    /// `user@host:port/database`, never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}/{}", self.user, self.endpoint(), self.database)
    }
}

fn invalid(message: String) -> Error {
    Error::invalid("postgresql connection", message)
}

impl PgConnection {
    /// Parses `postgres://[user[:password]@][host][:port][/database][?param=value…]`
    /// (also `postgresql://`). Percent-escapes are decoded; the parameters
    /// `host` (e.g. a socket directory), `port`, `user`, `password`,
    /// `dbname`, `passfile`, `connect_timeout` (seconds), `sslmode` (see
    /// [`PgSslMode`]) and `sslrootcert` are honoured, others
    /// (`application_name`…) are ignored. Missing parts
    /// take the defaults: `localhost`, 5432, user `postgres`, and a
    /// database named like the user.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the fault (the URL in the message has its
    /// password removed).
    pub fn from_url(url: &str) -> Result<Self> {
        // libpq's URIs start `postgres://` or `postgresql://`. Anything
        // else (`postgres:/u:pw@h/db`, a missing colon) would otherwise
        // parse as a host-less URL whose database name holds the password.
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        let is_scheme = |s: &str| {
            s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        };
        if !scheme.is_some_and(is_scheme) {
            return Err(invalid(format!(
                "invalid URL {}: a PostgreSQL URL starts with postgres:// or postgresql://",
                redact_url(url)
            )));
        }
        // libpq takes `postgres://user@/db?host=/socket/dir`, a user with
        // an empty host, which the URL parser refuses: parse it with a
        // placeholder host, left unused.
        let mut empty_host = false;
        let parsed = match url::Url::parse(url) {
            Err(url::ParseError::EmptyHost) => {
                let with_host = url.split_once("://").and_then(|(scheme, rest)| {
                    let end = rest.find(['/', '?']).unwrap_or(rest.len());
                    rest[..end]
                        .ends_with('@')
                        .then(|| format!("{scheme}://{}localhost{}", &rest[..end], &rest[end..]))
                });
                empty_host = with_host.is_some();
                url::Url::parse(with_host.as_deref().unwrap_or(url))
            }
            other => other,
        }
        .map_err(|e| invalid(format!("invalid URL {}: {e}", redact_url(url))))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(invalid(format!(
                "unsupported URL scheme {:?} in {} (expected postgres:// or postgresql://)",
                parsed.scheme(),
                redact_url(url)
            )));
        }
        let decode = |s: &str| -> String {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let mut c = PgConnection::default();
        let mut user_set = false;
        let mut db_set = false;
        if !parsed.username().is_empty() {
            c.user = decode(parsed.username());
            user_set = true;
        }
        if let Some(p) = parsed.password() {
            c.password = Some(Secret::new(decode(p)));
        }
        if let Some(h) = parsed.host_str().filter(|h| !h.is_empty() && !empty_host) {
            c.host = decode(h.trim_start_matches('[').trim_end_matches(']'));
        }
        if let Some(p) = parsed.port() {
            c.port = p;
        }
        let path = parsed.path().trim_start_matches('/');
        if path.contains('@') {
            return Err(invalid(format!(
                "invalid URL {}: its database name holds an '@' (user:password@ in the wrong \
                 place?); write an '@' in a database name as %40",
                redact_url(url)
            )));
        }
        if !path.is_empty() {
            c.database = decode(path);
            db_set = true;
        }
        for (k, v) in parsed.query_pairs() {
            match k.as_ref() {
                "host" => c.host = v.into_owned(),
                "port" => {
                    c.port = v
                        .parse()
                        .map_err(|_| invalid(format!("invalid port {v:?} in the URL")))?;
                }
                "user" => {
                    c.user = v.into_owned();
                    user_set = true;
                }
                "password" => c.password = Some(Secret::new(v.into_owned())),
                "dbname" => {
                    c.database = v.into_owned();
                    db_set = true;
                }
                "passfile" => c.passfile = Some(PathBuf::from(v.as_ref())),
                "connect_timeout" => {
                    let secs: u64 = v.parse().map_err(|_| {
                        invalid(format!("invalid connect_timeout {v:?} in the URL"))
                    })?;
                    c.connect_timeout = Duration::from_secs(secs.max(1));
                }
                "sslmode" => c.ssl_mode = PgSslMode::parse(&v)?,
                "sslrootcert" => c.ssl_root_cert = Some(PathBuf::from(v.as_ref())),
                _ => {}
            }
        }
        if user_set && !db_set {
            c.database = c.user.clone();
        }
        Ok(c)
    }

    /// Reads the standard libpq variables: `PGHOST`, `PGPORT`, `PGUSER`,
    /// `PGPASSWORD`, `PGDATABASE`, `PGPASSFILE`, `PGCONNECT_TIMEOUT`,
    /// `PGSSLMODE`, `PGSSLROOTCERT`.
    /// Unset ones take the defaults (`localhost`, 5432, `$USER` or
    /// `postgres`, a database named like the user, `prefer`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an unparsable `PGPORT`, `PGCONNECT_TIMEOUT`
    /// or `PGSSLMODE`.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`PgConnection::from_env`], reading variables through `lookup`
    /// (for tests and embedders with their own environment).
    ///
    /// # Errors
    /// As [`PgConnection::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let mut c = PgConnection::default();
        if let Some(h) = get("PGHOST") {
            c.host = h;
        }
        if let Some(p) = get("PGPORT") {
            c.port = p
                .parse()
                .map_err(|_| invalid(format!("invalid PGPORT {p:?}")))?;
        }
        c.user = get("PGUSER")
            .or_else(|| get("USER"))
            .unwrap_or_else(|| "postgres".into());
        c.database = get("PGDATABASE").unwrap_or_else(|| c.user.clone());
        c.password = get("PGPASSWORD").map(Secret::new);
        c.passfile = get("PGPASSFILE").map(PathBuf::from);
        if let Some(t) = get("PGCONNECT_TIMEOUT") {
            let secs: u64 = t
                .parse()
                .map_err(|_| invalid(format!("invalid PGCONNECT_TIMEOUT {t:?}")))?;
            c.connect_timeout = Duration::from_secs(secs.max(1));
        }
        if let Some(mode) = get("PGSSLMODE") {
            c.ssl_mode = PgSslMode::parse(&mode)
                .map_err(|_| invalid(format!("invalid PGSSLMODE {mode:?}: expected disable, allow, prefer, require, verify-ca or verify-full")))?;
        }
        c.ssl_root_cert = get("PGSSLROOTCERT").map(PathBuf::from);
        Ok(c)
    }

    /// Sets the host (name, address or socket directory).
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }
    /// Sets the port.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Sets the user.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }
    /// Sets the password.
    pub fn with_password(mut self, password: Secret) -> Self {
        self.password = Some(password);
        self
    }
    /// Sets the database.
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = database.into();
        self
    }
    /// Sets the passfile.
    pub fn with_passfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.passfile = Some(path.into());
        self
    }
    /// Sets the connection timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
    /// Sets the TLS mode.
    pub fn with_ssl_mode(mut self, mode: PgSslMode) -> Self {
        self.ssl_mode = mode;
        self
    }
    /// Sets the CA file the server's certificate is checked against.
    pub fn with_ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// The CA file in effect: `sslrootcert`, else `~/.postgresql/root.crt`
    /// when it exists (as libpq).
    pub fn root_cert_file(&self) -> Option<PathBuf> {
        self.ssl_root_cert.clone().or_else(|| {
            let home = std::env::var_os("HOME")?;
            let path = Path::new(&home).join(".postgresql/root.crt");
            path.is_file().then_some(path)
        })
    }

    /// `host:port`, for identities and messages.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('/') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the host is a Unix socket directory.
    pub fn is_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The password to use: the one set, else the passfile's entry for
    /// this host, port, database and user.
    pub fn resolve_password(&self) -> Option<Secret> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let path = self
            .passfile
            .clone()
            .or_else(|| std::env::var_os("PGPASSFILE").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
        passfile_lookup(&path, self)
    }

    /// The same server and credentials, connected to `database`.
    pub fn for_database(&self, database: &str) -> PgConnection {
        let mut c = self.clone();
        c.database = database.to_string();
        c
    }
}

/// Looks `conn` up in the passfile at `path` (`host:port:db:user:password`,
/// `*` matches anything, `\` escapes `:` and `\`), as libpq does.
fn passfile_lookup(path: &Path, conn: &PgConnection) -> Option<Secret> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        if first_warning_for(path) {
            tracing::warn!(
                passfile = %path.display(),
                "passfile has group or world access; ignored (chmod 0600 it)"
            );
        }
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    passfile_match(&text, conn).map(Secret::new)
}

/// Whether this process has not yet warned about the passfile at `path`:
/// one operation resolves its password several times (its own sessions,
/// pg_dump, pg_restore), and one warning says it all. A warning given
/// before the process set its log subscriber (the CLI resolves passwords
/// for its redactor first) went nowhere, so it does not count.
fn first_warning_for(path: &Path) -> bool {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.iter().any(|p| p == path) {
        return false;
    }
    if tracing::dispatcher::has_been_set() {
        warned.push(path.to_path_buf());
    }
    true
}

/// The password of the first passfile line matching `conn`.
pub(crate) fn passfile_match(text: &str, conn: &PgConnection) -> Option<String> {
    let port = conn.port.to_string();
    // libpq matches a socket connection against `localhost`.
    let host = if conn.is_socket() {
        "localhost"
    } else {
        conn.host.as_str()
    };
    let wanted = [
        host,
        port.as_str(),
        conn.database.as_str(),
        conn.user.as_str(),
    ];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|(f, w)| f == "*" || f == w);
        if matches {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut().expect("non-empty").push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("non-empty").push(c),
        }
    }
    fields
}

/// `url` with its password (and any `user:password@` userinfo) removed,
/// for error messages.
/// `url` as it may be shown: without the password, nor anything between
/// the scheme and the last `@` (a misplaced `user:password@` included).
pub(crate) fn redact_url(url: &str) -> String {
    let scrubbed = crate::postgresql::tools::scrub(url, &[]);
    match scrubbed.rsplit_once('@') {
        Some((before, host)) => {
            let scheme = before.find("://").map_or("", |i| &before[..i + 3]);
            format!("{scheme}***@{host}")
        }
        None => scrubbed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        type Case<'a> = (&'a str, &'a str, u16, &'a str, Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            (
                "postgres://app:p%40ss@db.ns:6432/prod",
                "db.ns",
                6432,
                "app",
                Some("p@ss"),
                "prod",
            ),
            ("postgresql://app@db/prod", "db", 5432, "app", None, "prod"),
            ("postgres://app@db", "db", 5432, "app", None, "app"),
            (
                "postgres://",
                "localhost",
                5432,
                "postgres",
                None,
                "postgres",
            ),
            (
                "postgres:///prod?host=/var/run/postgresql&user=u&password=x",
                "/var/run/postgresql",
                5432,
                "u",
                Some("x"),
                "prod",
            ),
            (
                "postgres://app@/prod?host=/tmp/sock&port=7801",
                "/tmp/sock",
                7801,
                "app",
                None,
                "prod",
            ),
            (
                "postgres://app:pw@/prod",
                "localhost",
                5432,
                "app",
                Some("pw"),
                "prod",
            ),
            (
                "postgres://[::1]:5433/d",
                "::1",
                5433,
                "postgres",
                None,
                "d",
            ),
            ("postgres://u:a+b@h/d", "h", 5432, "u", Some("a+b"), "d"),
        ];
        for (url, host, port, user, pw, db) in cases {
            let c = PgConnection::from_url(url).unwrap();
            assert_eq!(&c.host, host, "{url}");
            assert_eq!(c.port, *port, "{url}");
            assert_eq!(&c.user, user, "{url}");
            assert_eq!(c.password.as_ref().map(|p| p.expose()), *pw, "{url}");
            assert_eq!(&c.database, db, "{url}");
        }
    }

    #[test]
    fn parses_tls_settings_like_libpq() {
        let c = PgConnection::from_url("postgres://h/d").unwrap();
        assert_eq!((c.ssl_mode, c.ssl_root_cert), (PgSslMode::Prefer, None));
        for mode in PgSslMode::ALL {
            let url = format!("postgres://h/d?sslmode={mode}&sslrootcert=/etc/ca%20x.pem");
            let c = PgConnection::from_url(&url).unwrap();
            assert_eq!(c.ssl_mode, mode, "{url}");
            assert_eq!(c.ssl_root_cert, Some(PathBuf::from("/etc/ca x.pem")));
        }
        let e = PgConnection::from_url("postgres://u:hunter2@h/d?sslmode=verify")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"verify\"") && e.contains("verify-full"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let env = |k: &str| {
            match k {
                "PGSSLMODE" => Some("verify-ca"),
                "PGSSLROOTCERT" => Some("/ca.pem"),
                _ => None,
            }
            .map(String::from)
        };
        let c = PgConnection::from_lookup(env).unwrap();
        assert_eq!(c.ssl_mode, PgSslMode::VerifyCa);
        assert_eq!(c.root_cert_file(), Some(PathBuf::from("/ca.pem")));
        let bad = PgConnection::from_lookup(|k| (k == "PGSSLMODE").then(|| "on".to_string()));
        assert!(bad.unwrap_err().to_string().contains("PGSSLMODE"));
        assert!(PgSslMode::VerifyFull.verifies() && !PgSslMode::Require.verifies());
    }

    #[test]
    fn rejects_bad_urls_without_showing_the_password() {
        for url in ["mysql://u:hunter2@h/d", "postgres://u:hunter2@h:notaport/d"] {
            let e = PgConnection::from_url(url).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
        // Typos that would otherwise parse as a database named after the
        // password (and so reach errors and statefiles).
        for url in [
            "postgres:/u:hunter2@127.0.0.1/app",
            "postgres:u:hunter2@127.0.0.1/app",
            "postgres//u:hunter2@127.0.0.1/app",
            "postgres:///u:hunter2@127.0.0.1/app",
            "u:hunter2@127.0.0.1/app",
        ] {
            let e = PgConnection::from_url(url).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{url}: {e}");
            assert!(e.contains("127.0.0.1"), "{url}: {e}");
        }
        assert!(PgConnection::from_url("postgres://127.0.0.1/a@b").is_err());
        let c = PgConnection::from_url("postgres://127.0.0.1/a%40b").unwrap();
        assert_eq!(c.database, "a@b");
        let socket = PgConnection::from_url("postgresql:///prod?host=/run/postgresql").unwrap();
        assert_eq!(
            (socket.host.as_str(), socket.database.as_str()),
            ("/run/postgresql", "prod")
        );
    }

    #[test]
    fn display_and_debug_never_show_the_password() {
        let c = PgConnection::from_url("postgres://app:hunter2@db:5432/prod").unwrap();
        assert_eq!(c.to_string(), "app@db:5432/prod");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(format!("{c:?}").contains("***"));
    }

    #[test]
    fn reads_the_libpq_environment() {
        let env = |k: &str| {
            match k {
                "PGHOST" => Some("pg.ns"),
                "PGPORT" => Some("6543"),
                "PGUSER" => Some("cnvrg"),
                "PGPASSWORD" => Some("pw"),
                "PGDATABASE" => Some("cnvrg_production"),
                _ => None,
            }
            .map(String::from)
        };
        let c = PgConnection::from_lookup(env).unwrap();
        assert_eq!(c.to_string(), "cnvrg@pg.ns:6543/cnvrg_production");
        assert_eq!(c.password.unwrap().expose(), "pw");
        let bad = PgConnection::from_lookup(|k| (k == "PGPORT").then(|| "x".to_string()));
        assert!(bad.is_err());
        let defaults =
            PgConnection::from_lookup(|k| (k == "USER").then(|| "me".to_string())).unwrap();
        assert_eq!(defaults.to_string(), "me@localhost:5432/me");
    }

    #[test]
    fn matches_passfile_lines_like_libpq() {
        let text = "# comment\n\
                    other:5432:*:app:nope\n\
                    db:5432:prod:app:s3cr\\:et\n\
                    *:*:*:*:fallback\n";
        let c = PgConnection::from_url("postgres://app@db/prod").unwrap();
        assert_eq!(passfile_match(text, &c).as_deref(), Some("s3cr:et"));
        let c = PgConnection::from_url("postgres://bob@elsewhere/x").unwrap();
        assert_eq!(passfile_match(text, &c).as_deref(), Some("fallback"));
        assert_eq!(passfile_match("db:5432:prod:app\n", &c), None);
    }

    #[test]
    fn warns_once_per_passfile() {
        let (a, b) = (
            Path::new("/nonexistent/a/pgpass"),
            Path::new("/nonexistent/b/pgpass"),
        );
        // Before a subscriber is set a warning goes nowhere: not counted.
        if !tracing::dispatcher::has_been_set() {
            assert!(first_warning_for(a));
        }
        let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::new());
        assert!(first_warning_for(a));
        assert!(!first_warning_for(a));
        assert!(first_warning_for(b));
        assert!(!first_warning_for(b));
    }

    #[test]
    fn passfile_is_read_only_when_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "db:5432:prod:app:frompass\n").unwrap();
        let c = PgConnection::from_url("postgres://app@db/prod")
            .unwrap()
            .with_passfile(&path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(c.resolve_password(), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(c.resolve_password().unwrap().expose(), "frompass");
        let explicit = c.clone().with_password(Secret::new("given"));
        assert_eq!(explicit.resolve_password().unwrap().expose(), "given");
    }
}
