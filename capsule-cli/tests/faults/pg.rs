//! PostgreSQL under fault: a source database backed up through a proxy,
//! and a live database restored over in the default (safe) mode, which
//! restores beside it and swaps names only when the restore succeeded.
//! The live database must stay reachable and hold either its own data or
//! the backup's, never a mix.
//!
//! The destructive mode (`--in-place`: connections blocked, sessions
//! ended, `pg_restore --clean --create`) recreates the dumped database
//! under its own name, so it restores a backup of a database of its own
//! (a copy of the source) over that database. A failure may leave it
//! closed, gone or partly restored only if the error says it may be
//! partly restored.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::postgres::Postgres;
use test_support::tcp_proxy::TcpProxy;

use crate::process::{Running, signal};
use crate::subject::{CommitHold, Live, Mode, Phase, Subject};

/// Rows of the main table (about 300 bytes each).
const ROWS: u32 = 60_000;

pub struct Pg {
    src: String,
    live: String,
    /// The database `--in-place` restores its own backup over.
    in_place: String,
    proxy: TcpProxy,
    /// The checksum of the source: what a restored live database holds.
    backup: String,
}

fn pg() -> &'static Postgres {
    Postgres::shared()
}

impl Pg {
    pub fn new() -> Pg {
        let src = Postgres::unique_name("faults_src");
        pg().create_database(&src, None);
        pg().psql(
            &src,
            &format!(
                "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, payload text NOT NULL);
                 INSERT INTO items SELECT i, 'item ' || i, repeat(md5(i::text), 8)
                   FROM generate_series(1, {ROWS}) i;
                 CREATE TABLE notes (id serial PRIMARY KEY, item int REFERENCES items, body text);
                 INSERT INTO notes (item, body) SELECT 1 + i % {ROWS}, md5(i::text)
                   FROM generate_series(1, {}) i;
                 CREATE INDEX ON notes (item);",
                ROWS / 4
            ),
        );
        let backup = checksum(&src).expect("checksum of the source");
        let live = Postgres::unique_name("faults_live");
        let in_place = Postgres::unique_name("faults_inplace");
        copy_of(&src, &in_place);
        Pg {
            src,
            live,
            in_place,
            proxy: TcpProxy::start(pg().port),
            backup,
        }
    }

    fn url(&self, port: u16, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{db}")
    }

    /// Databases a restore of the live one made: `<live>__capsule_…`.
    fn siblings(&self) -> Vec<String> {
        pg().databases_like(&format!("{}__capsule_", self.live))
    }

    /// Makes `db` exist, accept connections and differ from the backup
    /// (a row the backup lacks); its checksum.
    fn prepare_live(&self, db: &str) -> Live {
        if checksum(db).is_err() {
            // Closed, gone or half restored by an earlier in-place run.
            drop_database(db);
            copy_of(&self.src, db);
        }
        let mut sum = checksum(db).expect("checksum of the live database");
        if sum == self.backup {
            // The live database must differ from the backup, or a restore
            // could not be told from no restore.
            pg().psql(
                db,
                "INSERT INTO items VALUES (-1, 'live only', 'not in the backup')",
            );
            sum = checksum(db).expect("checksum of the live database");
        }
        Live::whole(sum)
    }

    /// What an unreadable database is: gone, closed, or without the
    /// tables (recreated, not yet filled).
    fn unreadable(db: &str) -> &'static str {
        if !pg().database_exists(db) {
            return "gone";
        }
        let open = pg().psql(
            "postgres",
            &format!("SELECT datallowconn FROM pg_database WHERE datname = '{db}'"),
        );
        match open.as_str() {
            "f" => "closed (ALLOW_CONNECTIONS false)",
            _ => "without its tables",
        }
    }

    /// Invariant 3 for `--in-place`: see the module doc.
    fn in_place_after(
        &self,
        before: &Live,
        restored: bool,
        error: Option<&str>,
    ) -> (Vec<String>, Vec<String>) {
        let db = &self.in_place;
        settle(db);
        const BACKUP: &str = "holding the backup's rows";
        let state = match checksum(db) {
            Ok(sum) if sum == self.backup => BACKUP,
            Ok(sum) if sum == before.checksum => "untouched",
            Ok(_) => "partly restored",
            Err(_) => Pg::unreadable(db),
        };
        let note = |n: String| (Vec::new(), vec![n]);
        match (restored, state, error) {
            (true, BACKUP, _) | (false, "untouched", _) => (Vec::new(), Vec::new()),
            (true, _, _) => (
                vec![format!(
                    "the in-place restore says finished but the live database is {state}"
                )],
                Vec::new(),
            ),
            (false, _, Some(e))
                if e.contains("may be partly restored")
                    || e.contains("was dropped and not re-created") =>
            {
                note(format!(
                    "a failed restore left the live database {state}, and its error said so \
                     (the in-place mode)"
                ))
            }
            (false, _, Some(e)) => (
                vec![format!(
                    "a failed in-place restore left the live database {state} without saying so: {e}"
                )],
                Vec::new(),
            ),
            (false, BACKUP, None) => note(
                "the live database holds the whole backup, but the run is not recorded as \
                 finished (killed at the end, or the store was down when it was to be recorded)"
                    .into(),
            ),
            (false, _, None) => note(format!(
                "killed mid-restore: the live database is {state} (the in-place mode drops and \
                 recreates it)"
            )),
        }
    }
}

/// Waits (up to 10 s) until no server session works on `db` any more:
/// the statement a killed `pg_restore` had sent (`CREATE DATABASE`, say)
/// runs on after its client died, and would race the next restore.
fn settle(db: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let busy: u32 = pg()
            .psql(
                "postgres",
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                     AND backend_type = 'client backend' AND state <> 'idle' \
                     AND (datname = '{db}' OR query LIKE '%{db}%')"
                ),
            )
            .parse()
            .unwrap_or(0);
        if busy == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Creates database `db` as a copy of `src`.
fn copy_of(src: &str, db: &str) {
    pg().psql(
        "postgres",
        &format!("CREATE DATABASE \"{db}\" TEMPLATE \"{src}\""),
    );
}

/// The tables' contents, hashed; an error when the database cannot be read.
fn checksum(db: &str) -> Result<String, String> {
    let out = pg().try_psql(
        db,
        "SELECT (SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM items t) || '/' || \
                (SELECT md5(string_agg(n::text, '|' ORDER BY id)) FROM notes n)",
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A `psql` session holding the live database's `pg_database` row
/// (`SELECT … FOR UPDATE`): the swap's first change to it waits.
struct SwapHold {
    psql: Child,
}

/// Sessions other than the caller's running `ALTER DATABASE`, waiting for
/// a lock when `waiting`.
fn swap_sessions(waiting: bool) -> u32 {
    let wait = if waiting {
        "AND wait_event_type = 'Lock'"
    } else {
        ""
    };
    pg().psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'ALTER DATABASE%' \
             AND pid <> pg_backend_pid() {wait}"
        ),
    )
    .parse()
    .unwrap_or(0)
}

impl SwapHold {
    fn start(live: &str) -> SwapHold {
        let mut psql = Command::new(pg().bin_dir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-h", "127.0.0.1"])
            .args([
                "-p",
                &pg().port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("psql");
        let stdin = psql.stdin.as_mut().expect("piped");
        writeln!(
            stdin,
            "BEGIN;\nSELECT 'held' FROM pg_catalog.pg_database WHERE datname = '{live}' FOR UPDATE;"
        )
        .expect("write to psql");
        let mut line = String::new();
        BufReader::new(psql.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("read from psql");
        assert_eq!(line.trim(), "held", "cannot hold the row of {live}");
        SwapHold { psql }
    }
}

impl CommitHold for SwapHold {
    fn reached(&self) -> bool {
        swap_sessions(true) > 0
    }
}

impl Drop for SwapHold {
    fn drop(&mut self) {
        // psql ends, its transaction rolls back; the swap's session (its
        // client killed) then runs the statement it was waiting with.
        drop(self.psql.stdin.take());
        let _ = self.psql.wait();
        let started = Instant::now();
        while swap_sessions(false) > 0 && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn drop_database(db: &str) {
    pg().psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
    );
}

impl Subject for Pg {
    fn name(&self) -> &'static str {
        "postgresql"
    }

    fn backup_args(&self) -> Vec<String> {
        let url = self.url(self.proxy.port, &self.src);
        ["pg", "--create", "--pg-url", &url]
            .into_iter()
            .chain(["--cluster", "faults", "--service", "faults/pg"])
            .map(String::from)
            .collect()
    }

    fn restore_args(&self, id: &str, mode: Mode) -> Vec<String> {
        let (db, flags): (&str, &[&str]) = match mode {
            Mode::Default => (&self.live, &[]),
            Mode::Destructive => (&self.in_place, &["--in-place"]),
        };
        let url = self.url(self.proxy.port, db);
        ["pg", "--restore", "--yes", "--id", id, "--pg-url", &url]
            .into_iter()
            .chain(flags.iter().copied())
            .chain(["--cluster", "faults"])
            .map(String::from)
            .collect()
    }

    fn destructive_flag(&self) -> &'static str {
        "--in-place"
    }

    fn target_backup_args(&self, mode: Mode) -> Option<Vec<String>> {
        let url = self.url(self.proxy.port, &self.in_place);
        let args = ["pg", "--create", "--pg-url", &url]
            .into_iter()
            .chain(["--cluster", "faults", "--service", "faults/pg-in-place"])
            .map(String::from)
            .collect();
        (mode == Mode::Destructive).then_some(args)
    }

    fn verify_args(&self, id: &str) -> Vec<String> {
        let url = self.url(pg().port, &self.src);
        ["pg", "--verify", "--id", id, "--pg-url", &url]
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn db_proxy(&self, _phase: Phase) -> &TcpProxy {
        &self.proxy
    }

    fn tool(&self, phase: Phase) -> &'static str {
        match phase {
            Phase::Backup => "pg_dump",
            Phase::Restore => "pg_restore",
        }
    }

    fn tool_is_server(&self) -> bool {
        false
    }

    fn kill_tool(&mut self, run: &Running, phase: Phase) -> bool {
        // Not the `--version` probes of the tool lookup: a tool at work.
        let children: Vec<u32> = run
            .children_named(self.tool(phase))
            .into_iter()
            .filter(|pid| {
                !std::fs::read(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .split(|b| *b == 0)
                    .any(|arg| arg == b"--version")
            })
            .collect();
        for pid in &children {
            signal(*pid, "KILL");
        }
        !children.is_empty()
    }

    fn recover(&mut self, _phase: Phase) {}

    fn hold_commit(&mut self, mode: Mode) -> Option<Box<dyn CommitHold>> {
        match mode {
            Mode::Default => Some(Box::new(SwapHold::start(&self.live))),
            // No swap: the in-place restore changes the database directly.
            Mode::Destructive => None,
        }
    }

    fn live_before(&mut self, mode: Mode) -> Live {
        match mode {
            Mode::Default => {
                for db in self.siblings() {
                    drop_database(&db);
                }
                self.prepare_live(&self.live)
            }
            Mode::Destructive => self.prepare_live(&self.in_place),
        }
    }

    fn live_after(
        &mut self,
        mode: Mode,
        before: &Live,
        restored: bool,
        error: Option<&str>,
    ) -> (Vec<String>, Vec<String>) {
        if mode == Mode::Destructive {
            return self.in_place_after(before, restored, error);
        }
        let now = match checksum(&self.live) {
            Ok(sum) => sum,
            Err(e) => {
                let exists = pg().database_exists(&self.live);
                let others = self.siblings();
                return (
                    vec![format!(
                        "the live database is unusable after the run (exists: {exists}; \
                         databases beside it: {others:?}): {e}"
                    )],
                    Vec::new(),
                );
            }
        };
        let mut notes = Vec::new();
        let left: Vec<String> = self
            .siblings()
            .into_iter()
            .filter(|d| d.contains("__capsule_restore_"))
            .collect();
        match (left.first(), error) {
            (None, _) => {}
            (Some(copy), Some(e)) if !e.contains(copy.as_str()) => {
                return (
                    vec![format!(
                        "a failed restore left {copy} behind and its error does not say so: {e}"
                    )],
                    notes,
                );
            }
            (Some(_), Some(_)) => notes.push(
                "the partly restored copy could not be dropped (the link was cut) and the \
                 error names it; the live database was not touched"
                    .to_string(),
            ),
            (Some(_), None) => notes.push(
                "killed: the restored copy (<live>__capsule_restore_…) was left behind; \
                 the live database was not touched (the suite drops the copy)"
                    .to_string(),
            ),
        }
        match (restored, now == before.checksum, now == self.backup) {
            (true, _, true) | (false, true, _) => (Vec::new(), notes),
            (true, _, false) => (
                vec![
                    "the restore says finished but the live database does not hold the backup"
                        .into(),
                ],
                Vec::new(),
            ),
            (false, false, true) => {
                notes.push(
                    "the live database holds the whole backup (swapped in), but the run is not \
                     recorded as finished (killed after the commit, or the store was down when \
                     it was to be recorded)"
                        .into(),
                );
                (Vec::new(), notes)
            }
            (false, false, false) => (
                vec!["a restore that did not finish changed the live database".into()],
                Vec::new(),
            ),
        }
    }
}
