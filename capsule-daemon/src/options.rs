//! How the daemon runs: mode, identity, API settings and timings.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use capsule_core::{Identities, Recipients};

use crate::error::{Error, Result};

/// What a daemon does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// The API, the dashboard and the jobs (default).
    #[default]
    AllInOne,
    /// The API and the dashboard only: runs no jobs.
    Api,
    /// The jobs only: scheduler and watcher, no API.
    BackupEngine,
}

impl Mode {
    /// Whether this mode serves the HTTP API.
    pub fn serves_api(self) -> bool {
        matches!(self, Mode::AllInOne | Mode::Api)
    }
    /// Whether this mode runs backups, restores and rotations.
    pub fn runs_jobs(self) -> bool {
        matches!(self, Mode::AllInOne | Mode::BackupEngine)
    }
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::AllInOne => "allinone",
            Mode::Api => "api",
            Mode::BackupEngine => "backup-engine",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "allinone" | "all-in-one" => Ok(Mode::AllInOne),
            "api" => Ok(Mode::Api),
            "backup-engine" | "backupengine" => Ok(Mode::BackupEngine),
            _ => Err(Error::InvalidOption(format!(
                "invalid mode {s:?}: expected allinone, api or backup-engine"
            ))),
        }
    }
}

/// The daemon's clocks. Defaults suit production; tests shorten them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timings {
    /// How often the bucket is scanned (requests, due backups, rotation).
    pub watch_interval: Duration,
    /// How often a running job renews its lease and statefile heartbeat.
    pub heartbeat: Duration,
    /// A lease (and a running statefile's owner) silent for this long is
    /// taken over (marked failed, "owner lost").
    pub lease_ttl: Duration,
    /// After a failed periodic backup, the next attempt is due after this
    /// (at most one period).
    pub retry_after: Duration,
    /// Failed and abandoned periodic backups are deleted after this.
    pub failed_grace: Duration,
    /// A request nobody picked up within this gets a reason recorded.
    pub request_timeout: Duration,
    /// On SIGTERM, running jobs get this long to finish before they are
    /// cancelled (and marked failed).
    pub shutdown_grace: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            watch_interval: Duration::from_secs(10),
            heartbeat: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(120),
            retry_after: Duration::from_secs(300),
            failed_grace: Duration::from_secs(24 * 3600),
            request_timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(60),
        }
    }
}

impl Timings {
    /// Checks the timings fit together (heartbeats well within the ttl).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the values at fault.
    pub fn validate(&self) -> Result<()> {
        if self.watch_interval.is_zero() || self.heartbeat.is_zero() {
            return Err(Error::InvalidOption(
                "the watch interval and the heartbeat interval must be positive".into(),
            ));
        }
        if self.lease_ttl < self.heartbeat * 2 {
            return Err(Error::InvalidOption(format!(
                "lease ttl {:?} must be at least twice the heartbeat interval {:?}",
                self.lease_ttl, self.heartbeat
            )));
        }
        Ok(())
    }
}

/// An API bearer token. Never printed: `Debug` shows `***`.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    /// A token; surrounding whitespace (a file's newline) is trimmed.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] when it is empty.
    pub fn new(token: &str) -> Result<Self> {
        let t = token.trim();
        if t.is_empty() {
            return Err(Error::InvalidOption("the API token is empty".into()));
        }
        Ok(ApiToken(t.to_string()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

/// Everything `capsule start` configures, besides the store and the targets.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DaemonOptions {
    /// What this daemon does.
    pub mode: Mode,
    /// The cluster written into statefiles and matched in requests.
    pub cluster: String,
    /// Where the API listens (`:8080` = every interface, port 8080).
    pub api_bind_addr: String,
    /// The bearer token every write (and, unless `anonymous_read`, every
    /// read) must present. Without one, writes are refused.
    pub api_token: Option<ApiToken>,
    /// Reads need no token.
    pub anonymous_read: bool,
    /// How many jobs run at once (default 2).
    pub max_jobs: usize,
    /// The clocks.
    pub timings: Timings,
    /// Encrypt the backups of every target that names no recipients of its
    /// own to these (age public keys); `None`: unencrypted.
    pub encryption: Option<Recipients>,
    /// Decrypt encrypted backups for restores with these (age identities).
    pub identities: Identities,
}

impl DaemonOptions {
    /// Options for `cluster` in `mode`, everything else default.
    pub fn new(mode: Mode, cluster: impl Into<String>) -> Self {
        DaemonOptions {
            mode,
            cluster: cluster.into(),
            api_bind_addr: ":8080".into(),
            api_token: None,
            anonymous_read: false,
            max_jobs: 2,
            timings: Timings::default(),
            encryption: None,
            identities: Identities::new(),
        }
    }
    /// Sets the API address.
    pub fn with_api_bind_addr(mut self, addr: impl Into<String>) -> Self {
        self.api_bind_addr = addr.into();
        self
    }
    /// Sets the API token.
    pub fn with_api_token(mut self, token: Option<ApiToken>) -> Self {
        self.api_token = token;
        self
    }
    /// Lets reads through without a token.
    pub fn with_anonymous_read(mut self, yes: bool) -> Self {
        self.anonymous_read = yes;
        self
    }
    /// Sets how many jobs run at once.
    pub fn with_max_jobs(mut self, n: usize) -> Self {
        self.max_jobs = n.max(1);
        self
    }
    /// Sets the timings.
    pub fn with_timings(mut self, t: Timings) -> Self {
        self.timings = t;
        self
    }
    /// Encrypts the backups of targets without recipients of their own to
    /// `recipients` (none: no encryption).
    pub fn with_encryption(mut self, recipients: Recipients) -> Self {
        self.encryption = (!recipients.is_empty()).then_some(recipients);
        self
    }
    /// Decrypts encrypted backups for restores with `identities`.
    pub fn with_identities(mut self, identities: Identities) -> Self {
        self.identities = identities;
        self
    }
}

/// Parses a bind address: `:8080` (every interface), `127.0.0.1:0`, `[::1]:80`.
///
/// # Errors
/// [`Error::InvalidOption`] naming the value.
pub fn parse_bind_addr(s: &str) -> Result<SocketAddr> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        Error::InvalidOption(format!(
            "invalid API bind address {s:?}: expected HOST:PORT or :PORT"
        ))
    })
}

/// Parses a duration: a number and a unit `ms`, `s`, `m`, `h` or `d`
/// (`250ms`, `10s`, `1.5h`).
///
/// # Errors
/// A message naming the value.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("invalid duration {s:?}: missing unit (ms, s, m, h, d)"))?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: not a number"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?}")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("invalid duration {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_addresses() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("x s").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(parse_bind_addr(":8080").unwrap().port(), 8080);
        assert!(parse_bind_addr("127.0.0.1:0").is_ok());
        assert!(parse_bind_addr("nope").is_err());
        assert_eq!("backup-engine".parse::<Mode>().unwrap(), Mode::BackupEngine);
        assert!("x".parse::<Mode>().is_err());
        assert_eq!(
            format!("{:?}", ApiToken::new(" t\n").unwrap()),
            "ApiToken(***)"
        );
        assert!(Timings::default().validate().is_ok());
    }
}
