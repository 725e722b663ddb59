//! PostgreSQL flags.

use anyhow::Result;
use capsule_engines::{PgConnection, PgOptions, PgRestoreMode};
use clap::Args;

use crate::args::Action;
use crate::exit::UsageError;
use crate::logging::url_passwords;

/// libpq variables that say where or as whom to connect: any of them set
/// means "connection settings given" (run now rather than queue).
/// `PGPASSWORD` or `PGPASSFILE` alone say nothing about where.
const LIBPQ_TARGET_VARS: [&str; 4] = ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE"];

/// PostgreSQL connection and restore settings.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "PostgreSQL")]
pub struct PgEngineArgs {
    /// The database: postgres://[user[:password]@]host[:port]/database
    /// (also ?host=/socket/dir, ?passfile=FILE). With it, or with the libpq
    /// variables (PGHOST, PGPORT, PGUSER, PGDATABASE; password from
    /// PGPASSWORD or ~/.pgpass), --create, --restore and --verify run now
    /// (else they are queued for a daemon).
    #[arg(
        long,
        value_name = "URL",
        env = "CNVRG_CAPSULE_PG_URL",
        hide_env_values = true
    )]
    pub pg_url: Option<String>,
    /// --restore over the live database (the legacy behaviour: drop and
    /// recreate it; a failure can leave it partly restored). Default: restore
    /// beside it and swap names only when the restore succeeded.
    #[arg(long, conflicts_with_all = ["target_db", "drop_previous"])]
    pub in_place: bool,
    /// --restore into a new database NAME, leaving the live one alone
    /// (refused when NAME exists).
    #[arg(long, value_name = "NAME", conflicts_with = "drop_previous")]
    pub target_db: Option<String>,
    /// After a safe --restore, drop the previous database instead of keeping
    /// it as <db>__capsule_prev_<timestamp>.
    #[arg(long)]
    pub drop_previous: bool,
    /// The server --verify restores its throwaway database on (default: the
    /// --pg-url server).
    #[arg(
        long = "verify-url",
        value_name = "URL",
        env = "CNVRG_CAPSULE_PG_VERIFY_URL",
        hide_env_values = true
    )]
    pub pg_verify_url: Option<String>,
}

impl PgEngineArgs {
    /// `--pg-url` (or `CNVRG_CAPSULE_PG_URL`), when not blank.
    fn url(&self) -> Option<&str> {
        self.pg_url.as_deref().filter(|u| !u.trim().is_empty())
    }

    /// Whether connection settings were given (run now rather than queue):
    /// `--pg-url`, or any libpq variable naming a host, port, user or
    /// database.
    pub fn has_connection(&self) -> bool {
        self.has_connection_in(|k| std::env::var(k).ok())
    }

    fn has_connection_in(&self, env: impl Fn(&str) -> Option<String>) -> bool {
        self.url().is_some()
            || LIBPQ_TARGET_VARS
                .iter()
                .any(|k| env(k).is_some_and(|v| !v.is_empty()))
    }

    /// Checks that the flags given apply to `action` (restore modes to
    /// `--restore`, `--verify-url` to `--verify`).
    ///
    /// # Errors
    /// [`UsageError`] naming the flag.
    pub fn check(&self, action: Action) -> Result<()> {
        if let Some(flag) = self.restore_flags().filter(|_| action != Action::Restore) {
            return Err(UsageError::new(format!("{flag} applies to --restore only")).into());
        }
        // The environment variable may be set for every run; only the flag is refused.
        if self.pg_verify_url.is_some() && action != Action::Verify && !verify_url_from_env() {
            return Err(UsageError::new("--verify-url applies to --verify only").into());
        }
        Ok(())
    }

    /// Restore-only flags given, named for a usage error.
    pub fn restore_flags(&self) -> Option<&'static str> {
        if self.in_place {
            Some("--in-place")
        } else if self.target_db.is_some() {
            Some("--target-db")
        } else if self.drop_previous {
            Some("--drop-previous")
        } else {
            None
        }
    }

    /// The engine's options, `None` without connection settings.
    ///
    /// # Errors
    /// [`UsageError`] for a malformed URL, bad libpq variables or an empty
    /// `--target-db`.
    pub fn options(&self) -> Result<Option<PgOptions>> {
        if !self.has_connection() {
            return Ok(None);
        }
        let connection = match self.url() {
            Some(url) => PgConnection::from_url(url)
                .map_err(|e| UsageError::new(format!("--pg-url: {e}")))?,
            None => PgConnection::from_env()
                .map_err(|e| UsageError::new(format!("libpq environment: {e}")))?,
        };
        let mode = match &self.target_db {
            Some(name) if name.trim().is_empty() => {
                return Err(UsageError::new("--target-db needs a database name").into());
            }
            Some(name) => PgRestoreMode::TargetDb(name.clone()),
            None if self.in_place => PgRestoreMode::InPlace,
            None => PgRestoreMode::Safe,
        };
        let mut options = PgOptions::new(connection)
            .with_restore_mode(mode)
            .with_drop_previous(self.drop_previous);
        if let Some(url) = self
            .pg_verify_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            let scratch = PgConnection::from_url(url)
                .map_err(|e| UsageError::new(format!("--verify-url: {e}")))?;
            options = options.with_verify_connection(scratch);
        }
        Ok(Some(options))
    }

    /// Every password this run may use, for the log and output redactor:
    /// those in `--pg-url` and `--verify-url` (the user names are not
    /// secret), `PGPASSWORD`, and the passfile entry the connection would
    /// use.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = [self.url(), self.pg_verify_url.as_deref()]
            .into_iter()
            .flatten()
            .flat_map(url_passwords)
            .collect();
        if let Some(pw) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
            out.push(pw);
        }
        if let Ok(Some(options)) = self.options() {
            let conns = std::iter::once(&options.connection).chain(&options.verify_connection);
            out.extend(conns.filter_map(|c| c.resolve_password().map(|p| p.expose().to_string())));
        }
        out
    }
}

/// Whether `CNVRG_CAPSULE_PG_VERIFY_URL` is set (then `--verify-url` may
/// come from it rather than from the command line).
fn verify_url_from_env() -> bool {
    std::env::var_os("CNVRG_CAPSULE_PG_VERIFY_URL").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<PgEngineArgs, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("capsule").chain(args.iter().copied()))?;
        match cli.command {
            crate::args::Command::Pg(a) => Ok(a.engine),
            other => panic!("not pg: {other:?}"),
        }
    }

    #[test]
    fn restore_modes_conflict_and_need_restore() {
        let url = "postgres://app@db/app";
        let ok = |args: &[&str]| parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let a = ok(&["pg", "--restore", "--pg-url", url, "--in-place"]);
        assert_eq!(
            a.options().unwrap().unwrap().restore_mode,
            PgRestoreMode::InPlace
        );
        let a = ok(&["pg", "--restore", "--pg-url", url, "--target-db", "copy"]);
        assert_eq!(
            a.options().unwrap().unwrap().restore_mode,
            PgRestoreMode::TargetDb("copy".into())
        );
        let a = ok(&["pg", "--restore", "--pg-url", url, "--drop-previous"]);
        let o = a.options().unwrap().unwrap();
        assert!(o.drop_previous && o.restore_mode == PgRestoreMode::Safe);
        for bad in [
            &["pg", "--restore", "--in-place", "--target-db", "x"][..],
            &["pg", "--restore", "--in-place", "--drop-previous"],
            &["pg", "--restore", "--target-db", "x", "--drop-previous"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        for (bad, action) in [
            (&["pg", "--create", "--in-place"][..], Action::Create),
            (&["pg", "--create", "--target-db", "x"], Action::Create),
            (&["pg", "--list", "--drop-previous"], Action::List),
            (&["pg", "--restore", "--verify-url", url], Action::Restore),
        ] {
            let e = ok(bad).check(action).unwrap_err().to_string();
            assert!(e.contains("applies to --"), "{bad:?}: {e}");
        }
        ok(&["pg", "--verify", "--verify-url", url])
            .check(Action::Verify)
            .unwrap();
        let a = ok(&["pg", "--restore", "--pg-url", url, "--target-db", " "]);
        assert!(a.options().is_err());
    }

    #[test]
    fn libpq_variables_count_as_connection_settings() {
        let none = PgEngineArgs::default();
        assert!(!none.has_connection_in(|_| None));
        assert!(none.has_connection_in(|k| (k == "PGHOST").then(|| "db".into())));
        assert!(none.has_connection_in(|k| (k == "PGDATABASE").then(|| "app".into())));
        assert!(!none.has_connection_in(|k| (k == "PGPASSWORD").then(|| "pw".into())));
        assert!(!none.has_connection_in(|k| (k == "PGHOST").then(String::new)));
        let url = PgEngineArgs {
            pg_url: Some("postgres://db/app".into()),
            ..Default::default()
        };
        assert!(url.has_connection_in(|_| None));
        let blank = PgEngineArgs {
            pg_url: Some("  ".into()),
            ..Default::default()
        };
        assert!(!blank.has_connection_in(|_| None));
    }

    #[test]
    fn passwords_are_found_but_not_user_names() {
        let s = url_passwords("postgres://postgres:p%40ss@db:5432/app?password=other");
        assert_eq!(s, ["p%40ss", "p@ss", "other"]);
        assert!(url_passwords("postgres://postgres@db/app").is_empty());
        // A `/` in the password makes the parser see a host and a port.
        assert_eq!(url_passwords("postgres://u:12/34@db/app"), ["12/34"]);
        assert_eq!(url_passwords("redis://backup:pw#1@h:6379"), ["pw#1"]);
        assert_eq!(url_passwords("postgres://u:hunter2@db:port/x"), ["hunter2"]);
        let e = PgEngineArgs {
            pg_url: Some("postgres://u:hunter2@db:notaport/x".into()),
            ..Default::default()
        }
        .options()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("--pg-url: ") && !e.contains("hunter2"), "{e}");
    }
}
