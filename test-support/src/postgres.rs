//! A throwaway PostgreSQL cluster (`initdb` + `postgres`) on a free
//! loopback port.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI)
//! the data directory is owned by, and the server runs as, the `postgres`
//! user (std's `CommandExt::uid/gid`); otherwise it runs as the current
//! user. Authentication: `trust` for every user on the socket and on
//! 127.0.0.1, except [`PASSWORD_USER`], who must give [`PASSWORD_USER`]'s
//! password over TCP (`scram-sha-256`), for the tests of credentials.
//!
//! With [`PgConfig::with_tls`] the server also accepts TLS (`ssl=on`) with
//! a certificate for `127.0.0.1` and `localhost` signed by a private CA of
//! its own ([`Postgres::ca_file`]); plain connections stay allowed, so the
//! client's `sslmode` decides.
//!
//! Binaries: the directory of `$CAPSULE_PG_INITDB` if set, else the
//! newest `/usr/lib/postgresql/<major>/bin`, else `initdb` on `PATH`.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::{ServerProcess, find_binary, free_port, wait_for_tcp};
use crate::tls::TestCa;

/// The superuser every test connects as (trusted on 127.0.0.1).
pub const SUPERUSER: &str = "postgres";

/// A superuser that must authenticate with [`PASSWORD`] over TCP.
pub const PASSWORD_USER: &str = "capsule_pw";

/// The password of [`PASSWORD_USER`].
pub const PASSWORD: &str = "pw-Sup3r-S3cret-xyz";

/// How to start a cluster.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PgConfig {
    /// Accept TLS (`ssl=on`), with a certificate signed by a private CA.
    pub tls: bool,
}

impl PgConfig {
    /// Accepts TLS connections too (see [`Postgres::ca_file`]).
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// A running PostgreSQL cluster; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct Postgres {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    /// The directory of the cluster's binaries (`initdb`, `pg_dump`, `psql`…).
    pub bin_dir: PathBuf,
    /// The directory holding the Unix socket.
    pub socket_dir: PathBuf,
    /// The server's major version (e.g. 15).
    pub major: u32,
    process: ServerProcess,
}

impl Postgres {
    /// Runs `initdb` into a fresh work directory and starts `postgres` on
    /// 127.0.0.1 with a free port; waits until it accepts queries, then
    /// creates [`PASSWORD_USER`].
    ///
    /// # Panics
    /// If the binaries are missing (naming `scripts/setup-test-deps.sh`),
    /// `initdb` fails, or the server is not ready within 60 s (with the
    /// tail of its log).
    pub fn start() -> Postgres {
        Self::start_with(PgConfig::default())
    }

    /// As [`Postgres::start`], configured by `config`.
    ///
    /// # Panics
    /// As [`Postgres::start`].
    pub fn start_with(config: PgConfig) -> Postgres {
        let initdb = find_binary("initdb", "CAPSULE_PG_INITDB", &pg_bin_dirs());
        // `/usr/local/bin/initdb` may be a link into the real bin directory.
        let initdb = initdb.canonicalize().unwrap_or(initdb);
        let bin_dir = initdb
            .parent()
            .expect("initdb has a parent directory")
            .to_path_buf();
        let work = ServerProcess::work_dir_for("postgres");
        let data = work.path().join("data");
        let socket_dir = work.path().join("sock");
        std::fs::create_dir_all(&socket_dir).expect("create the socket dir");
        let owner = server_user();
        if let Some((uid, gid)) = owner {
            for dir in [work.path(), socket_dir.as_path()] {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("cannot chown {}: {e}", dir.display()));
            }
        }

        let mut init = Command::new(&initdb);
        init.current_dir(work.path())
            .args(["-D"])
            .arg(&data)
            .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-sync"])
            .args(["--locale=C.UTF-8"]);
        as_server_user(&mut init, owner);
        let out = init
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", initdb.display()));
        if !out.status.success() {
            panic!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let hba = format!(
            "local all all trust\n\
             host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n\
             host all all 127.0.0.1/32 trust\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        if config.tls {
            // The key must belong to the server's user, mode 0600.
            let ca = TestCa::new("capsule test CA (postgres)");
            ca.write_pem(&work.path().join("ca.pem"));
            let (cert, key) = ca.server_cert().write(&data, "server");
            if let Some((uid, gid)) = owner {
                for file in [&cert, &key] {
                    std::os::unix::fs::chown(file, Some(uid), Some(gid))
                        .unwrap_or_else(|e| panic!("cannot chown {}: {e}", file.display()));
                }
            }
        }

        let port = free_port();
        let mut server = Command::new(bin_dir.join("postgres"));
        server
            .current_dir(work.path())
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .args(["-c", "log_connections=on"]);
        if config.tls {
            server.args(["-c", "ssl=on"]).args([
                "-c",
                "ssl_cert_file=server.crt",
                "-c",
                "ssl_key_file=server.key",
            ]);
        }
        as_server_user(&mut server, owner);
        let mut process = ServerProcess::spawn("postgres", server, work);
        let isready = bin_dir.join("pg_isready");
        process.wait_ready("accepting connections", Duration::from_secs(60), || {
            wait_for_tcp(port, Duration::from_millis(200))
                && Command::new(&isready)
                    .args([
                        "-q",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "-U",
                        SUPERUSER,
                    ])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
        });
        let major = version_major(&bin_dir);
        let pg = Postgres {
            port,
            bin_dir,
            socket_dir,
            major,
            process,
        };
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {PASSWORD_USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'"),
        );
        pg
    }

    /// One cluster shared by every test of the test binary, started on
    /// first use. Give each test its own databases ([`Postgres::unique_name`]).
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    /// As [`Postgres::shared`], for a cluster started with TLS.
    pub fn shared_tls() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(|| Postgres::start_with(PgConfig::default().with_tls()))
    }

    /// The PEM file of the private CA that signed the server's certificate
    /// (started with TLS; the file is missing otherwise).
    pub fn ca_file(&self) -> PathBuf {
        self.process.work_dir().join("ca.pem")
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>` (trusted, no password).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The URL of [`PASSWORD_USER`] with `password` in it.
    pub fn url_with_password(&self, database: &str, password: &str) -> String {
        format!(
            "postgres://{PASSWORD_USER}:{password}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// A database or role name unique in this test process:
    /// `<prefix>_<pid>_<n>`.
    pub fn unique_name(prefix: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        format!(
            "{prefix}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Runs `sql` with `psql` in `database` as the superuser
    /// (`ON_ERROR_STOP`, unaligned, tuples only) and returns its output,
    /// trimmed.
    ///
    /// # Panics
    /// When `psql` fails, with its error output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self.try_psql(database, sql);
        if !out.status.success() {
            panic!(
                "psql in {database} failed ({}): {}\nSQL: {sql}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs `sql` with `psql` in `database` and returns its raw output,
    /// whether it failed or not.
    ///
    /// # Panics
    /// When `psql` cannot be started.
    pub fn try_psql(&self, database: &str, sql: &str) -> Output {
        Command::new(self.bin_dir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", database, "-c", sql])
            .env_remove("PGPASSWORD")
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"))
    }

    /// Creates database `name` (owned by `owner`, or the superuser).
    ///
    /// # Panics
    /// When it fails.
    pub fn create_database(&self, name: &str, owner: Option<&str>) {
        let owner = owner.map(|o| format!(" OWNER \"{o}\"")).unwrap_or_default();
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\"{owner}"));
    }

    /// Whether database `name` exists.
    pub fn database_exists(&self, name: &str) -> bool {
        self.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        ) == "1"
    }

    /// Names of the databases whose name starts with `prefix`, sorted.
    pub fn databases_like(&self, prefix: &str) -> Vec<String> {
        let out = self.psql(
            "postgres",
            &format!(
                "SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}') ORDER BY 1"
            ),
        );
        out.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The server process (pid, log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

/// `/usr/lib/postgresql/<major>/bin`, newest first.
fn pg_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let major = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((major, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, d)| d).collect()
}

/// The uid and gid of the `postgres` user when running as root.
fn server_user() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok()?;
    if me != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let found = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() > 3 && f[0] == "postgres").then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
    });
    match found.flatten() {
        Some(ids) => Some(ids),
        None => panic!(
            "running as root but there is no `postgres` user to run PostgreSQL as; \
             run {}",
            crate::process::SETUP_SCRIPT
        ),
    }
}

fn as_server_user(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid)
            .gid(gid)
            .env("HOME", "/tmp")
            .env("USER", "postgres");
    }
}

fn version_major(bin_dir: &Path) -> u32 {
    let out = Command::new(bin_dir.join("postgres"))
        .arg("--version")
        .output()
        .expect("postgres --version");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.split('.').next()?.parse().ok())
        .unwrap_or(0)
}
