//! The static configuration file (`--config FILE`, TOML): the cluster and
//! the services this daemon backs up.
//!
//! ```toml
//! cluster = "dev-eu"                 # optional, else --cluster
//! [[service]]
//! name = "cnvrg/pg-storage"          # namespace/name, shown in the API
//! type = "postgresql"                # postgresql | redis | elasticsearch
//! url_env = "PG_URL"                 # or url = "..." (credentials in a file: warned)
//! period = "24h"                     # default 24h
//! rotation = 5                       # default 5
//! # keep_daily = 7, keep_weekly = 4, keep_monthly = 6   (default 0)
//! # store = "s3://other-bucket"      # optional, else the global store
//! # dst_dir = "team-a/backups"       # optional, else the global dst-dir
//! # tool_dir = "/usr/lib/postgresql/16/bin"   # postgresql: client tools
//! # encrypt_to = ["age1…"]          # encrypt backups (age) to these public keys
//! # encryption_key_file = "/etc/capsule/recipients.txt"   # … or those in a file
//! ```
//!
//! The file is strict: an unknown key, an unknown type, a bad period or a
//! missing environment variable is an error naming the file, the line and
//! the field, and the daemon does not start.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use capsule_core::{Period, Recipients, ServiceType};
use capsule_store::Secret;
use serde::Deserialize;
use toml::Spanned;

use crate::error::ConfigError;

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "CNVRG_CAPSULE_CONFIG";

/// Default period of a configured service.
pub const DEFAULT_PERIOD: &str = "24h";

/// Default rotation of a configured service.
pub const DEFAULT_ROTATION: u32 = 5;

/// The parsed configuration file.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DaemonConfig {
    /// The file it was read from.
    pub file: PathBuf,
    /// `cluster`, when set.
    pub cluster: Option<String>,
    /// The services, in file order.
    pub services: Vec<ServiceConfig>,
    /// Things that work but should be fixed (credentials in the file).
    pub warnings: Vec<String>,
}

/// One `[[service]]`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// `namespace/name` (or a bare name).
    pub name: String,
    /// The service type.
    pub service_type: ServiceType,
    /// The connection URL (from `url` or the variable `url_env` names).
    pub url: Secret,
    /// How often a periodic backup is due.
    pub period: Period,
    /// How many finished periodic backups are kept.
    pub rotation: u32,
    /// Keep the newest of each of the last N days.
    pub keep_daily: u32,
    /// … weeks.
    pub keep_weekly: u32,
    /// … months.
    pub keep_monthly: u32,
    /// Another store URL for this service's backups.
    pub store: Option<String>,
    /// Another dst-dir for this service's backups.
    pub dst_dir: Option<String>,
    /// PostgreSQL: take the client tools from this directory.
    pub tool_dir: Option<PathBuf>,
    /// Encrypt this service's backups to these age recipients
    /// (`encrypt_to`, `encryption_key_file`).
    pub encryption: Option<Recipients>,
    /// The line of the `name` key, for later messages.
    pub line: usize,
}

impl ServiceConfig {
    /// `(namespace, name)`: `cnvrg/pg` → (`cnvrg`, `pg`); `pg` → (None, `pg`).
    pub fn split_name(&self) -> (Option<String>, String) {
        match self.name.split_once('/') {
            Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
            None => (None, self.name.clone()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Option<Spanned<String>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    service_type: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    period: Option<Spanned<String>>,
    rotation: Option<Spanned<i64>>,
    keep_daily: Option<Spanned<i64>>,
    keep_weekly: Option<Spanned<i64>>,
    keep_monthly: Option<Spanned<i64>>,
    store: Option<Spanned<String>>,
    dst_dir: Option<Spanned<String>>,
    tool_dir: Option<Spanned<String>>,
    encrypt_to: Option<Spanned<Vec<String>>>,
    encryption_key_file: Option<Spanned<String>>,
}

impl DaemonConfig {
    /// Reads and checks `file`, resolving `url_env` from the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, line and field at fault.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::new(file, None, None, format!("cannot read it: {e}")))?;
        Self::parse(file, &text, &|name| std::env::var(name).ok())
    }

    /// Parses `text` (read from `file`, named in messages), resolving
    /// `url_env` with `env`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, line and field at fault.
    pub fn parse(
        file: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let at = |span: Range<usize>, field: String, msg: String| {
            ConfigError::new(file, Some(line_of(text, span.start)), Some(field), msg)
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            ConfigError::new(
                file,
                e.span().map(|s| line_of(text, s.start)),
                None,
                e.message().trim().to_string(),
            )
        })?;
        let mut warnings = Vec::new();
        let cluster = match raw.cluster {
            Some(c) if c.get_ref().trim().is_empty() => {
                return Err(at(c.span(), "cluster".into(), "is empty".into()));
            }
            Some(c) => Some(c.into_inner()),
            None => None,
        };
        let mut services = Vec::new();
        let mut names = BTreeSet::new();
        for (i, s) in raw.service.into_iter().enumerate() {
            let table_span = s.span();
            let s = s.into_inner();
            let field = |f: &str| format!("service[{i}].{f}");
            let missing = |f: &str| {
                at(
                    table_span.clone(),
                    field(f),
                    format!("missing (every [[service]] needs {f})"),
                )
            };
            let name = s.name.ok_or_else(|| missing("name"))?;
            let line = line_of(text, name.span().start);
            if name.get_ref().trim().is_empty() || name.get_ref().split('/').count() > 2 {
                return Err(at(
                    name.span(),
                    field("name"),
                    format!(
                        "invalid service name {:?}: expected namespace/name",
                        name.get_ref()
                    ),
                ));
            }
            if !names.insert(name.get_ref().clone()) {
                return Err(at(
                    name.span(),
                    field("name"),
                    format!("service {:?} is configured twice", name.get_ref()),
                ));
            }
            let ty = s.service_type.ok_or_else(|| missing("type"))?;
            let service_type: ServiceType = ty.get_ref().parse().map_err(|_| {
                at(
                    ty.span(),
                    field("type"),
                    format!(
                        "unknown service type {:?}: expected postgresql, redis or elasticsearch",
                        ty.get_ref()
                    ),
                )
            })?;
            let url = match (s.url, s.url_env) {
                (Some(_), Some(e)) => {
                    return Err(at(
                        e.span(),
                        field("url_env"),
                        "give url or url_env, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(at(
                        table_span,
                        field("url"),
                        "missing: give url_env (the environment variable holding the URL) or url"
                            .into(),
                    ));
                }
                (Some(u), None) => {
                    if has_password(u.get_ref()) {
                        warnings.push(format!(
                            "config file {}, line {}, field {}: the URL holds a password; \
                             keep credentials out of files (use url_env)",
                            file.display(),
                            line_of(text, u.span().start),
                            field("url")
                        ));
                    }
                    Secret::new(u.into_inner())
                }
                (None, Some(e)) => match env(e.get_ref()).filter(|v| !v.is_empty()) {
                    Some(v) => Secret::new(v),
                    None => {
                        return Err(at(
                            e.span(),
                            field("url_env"),
                            format!("environment variable {} is not set", e.get_ref()),
                        ));
                    }
                },
            };
            let period = match s.period {
                Some(p) => p
                    .get_ref()
                    .parse::<Period>()
                    .map_err(|e| at(p.span(), field("period"), e.to_string()))?,
                None => DEFAULT_PERIOD.parse().expect("the default period parses"),
            };
            let count = |v: Option<Spanned<i64>>, f: &str, default: u32| match v {
                None => Ok(default),
                Some(n) => u32::try_from(*n.get_ref())
                    .ok()
                    .filter(|n| *n <= 10_000)
                    .ok_or_else(|| {
                        at(
                            n.span(),
                            field(f),
                            format!("{} is out of range (0 to 10000)", n.get_ref()),
                        )
                    }),
            };
            let rotation = count(s.rotation, "rotation", DEFAULT_ROTATION)?;
            let keep_daily = count(s.keep_daily, "keep_daily", 0)?;
            let keep_weekly = count(s.keep_weekly, "keep_weekly", 0)?;
            let keep_monthly = count(s.keep_monthly, "keep_monthly", 0)?;
            let nonempty = |v: Option<Spanned<String>>, f: &str| match v {
                Some(x) if x.get_ref().trim().is_empty() => {
                    Err(at(x.span(), field(f), "is empty".into()))
                }
                Some(x) => Ok(Some(x.into_inner())),
                None => Ok(None),
            };
            let store = nonempty(s.store, "store")?;
            let dst_dir = nonempty(s.dst_dir, "dst_dir")?;
            let tool_dir = nonempty(s.tool_dir, "tool_dir")?.map(PathBuf::from);
            let mut encryption = None;
            if let Some(keys) = s.encrypt_to {
                let r = Recipients::from_keys(keys.get_ref())
                    .map_err(|e| at(keys.span(), field("encrypt_to"), e.to_string()))?;
                encryption = Some(r);
            }
            if let Some(path) = s.encryption_key_file {
                let r = Recipients::read_file(Path::new(path.get_ref()))
                    .map_err(|e| at(path.span(), field("encryption_key_file"), e.to_string()))?;
                encryption = Some(encryption.unwrap_or_default().merge(r));
            }
            services.push(ServiceConfig {
                name: name.into_inner(),
                service_type,
                url,
                period,
                rotation,
                keep_daily,
                keep_weekly,
                keep_monthly,
                store,
                dst_dir,
                tool_dir,
                encryption: encryption.filter(|r| !r.is_empty()),
                line,
            });
        }
        Ok(DaemonConfig {
            file: file.to_path_buf(),
            cluster,
            services,
            warnings,
        })
    }

    /// A [`ConfigError`] about service `i`'s `field` (at its `name` line).
    pub fn error_at(&self, i: usize, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(
            &self.file,
            self.services.get(i).map(|s| s.line),
            Some(format!("service[{i}].{field}")),
            message,
        )
    }
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn has_password(url: &str) -> bool {
    url.split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
        DaemonConfig::parse(Path::new("capsule.toml"), text, &|name| {
            (name == "PG_URL").then(|| "postgres://app@db:5432/app".to_string())
        })
    }

    const GOOD: &str = r#"
cluster = "dev-eu"
[[service]]
name = "cnvrg/pg-storage"
type = "postgresql"
url_env = "PG_URL"
period = "24h"
rotation = 5
keep_daily = 7
"#;

    #[test]
    fn a_good_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.cluster.as_deref(), Some("dev-eu"));
        let s = &c.services[0];
        assert_eq!(s.service_type, ServiceType::Postgresql);
        assert_eq!(s.url.expose(), "postgres://app@db:5432/app");
        assert_eq!((s.rotation, s.keep_daily, s.line), (5, 7, 4));
        assert_eq!(
            s.split_name(),
            (Some("cnvrg".into()), "pg-storage".to_string())
        );
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn errors_name_the_file_line_and_field() {
        let cases = [
            (
                GOOD.replace("postgresql", "mysql"),
                5,
                "service[0].type",
                "unknown service type",
            ),
            (
                GOOD.replace("24h", "1x"),
                7,
                "service[0].period",
                "invalid period",
            ),
            (
                GOOD.replace("PG_URL", "NOPE_URL"),
                6,
                "service[0].url_env",
                "NOPE_URL is not set",
            ),
            (
                GOOD.replace("rotation = 5", "rotation = -1"),
                8,
                "service[0].rotation",
                "out of range",
            ),
        ];
        for (text, line, field, msg) in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.line, Some(line), "{e}");
            assert_eq!(e.field.as_deref(), Some(field), "{e}");
            let shown = e.to_string();
            assert!(
                shown.starts_with("config file capsule.toml, line"),
                "{shown}"
            );
            assert!(shown.contains(msg), "{shown}");
        }
        let e = parse(&GOOD.replace("rotation = 5", "rotaton = 5")).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.to_string().contains("rotaton"), "{e}");
        let e = parse("[[service]]\nname = \"a/b\"\ntype = \"redis\"\n").unwrap_err();
        assert!(e.to_string().contains("url_env"), "{e}");
        let e = parse("cluster = 3").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn credentials_in_the_file_are_warned_about_without_showing_them() {
        let c = parse(&GOOD.replace(
            "url_env = \"PG_URL\"",
            "url = \"postgres://app:hunter2@db/app\"",
        ))
        .unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("line 6"), "{}", c.warnings[0]);
        assert!(!c.warnings[0].contains("hunter2"));
    }

    #[test]
    fn services_name_their_recipients() {
        let key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recipients.txt");
        std::fs::write(&file, format!("# ops\n{key}\n")).unwrap();
        let c = parse(&format!(
            "{GOOD}encrypt_to = [\"{key}\"]\nencryption_key_file = {:?}\n",
            file.display().to_string()
        ))
        .unwrap();
        let r = c.services[0].encryption.as_ref().unwrap();
        assert_eq!(r.to_strings(), vec![key.to_string()]);
        assert!(parse(GOOD).unwrap().services[0].encryption.is_none());
        let e = parse(&format!("{GOOD}encrypt_to = [\"age1nope\"]\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("service[0].encrypt_to"), "{e}");
        assert_eq!(e.line, Some(10), "{e}");
        let e = parse(&format!("{GOOD}encryption_key_file = \"/nonexistent\"\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("reading recipients file /nonexistent"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_services_are_refused() {
        let text = format!(
            "{GOOD}\n[[service]]\nname = \"cnvrg/pg-storage\"\ntype = \"redis\"\nurl = \"redis://r\"\n"
        );
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("configured twice"), "{e}");
    }
}

#[cfg(test)]
mod mutation_tests;
