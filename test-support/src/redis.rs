//! A throwaway `redis-server` on a free loopback port, and a small
//! synchronous RESP client to fill and inspect it.
//!
//! Every server runs without persistence (`--save ''`, `--appendonly
//! no`), with `DEBUG` enabled (for `DEBUG DIGEST`) and
//! `repl-diskless-sync-delay 0` (a replica's full sync starts at once).
//! [`RedisConfig`] adds a password, ACL users, TLS (certificates made
//! with `openssl` into the work directory), an RDB to load on start, or
//! any other flag. Binary: `$CAPSULE_REDIS_SERVER`, else `redis-server`
//! on `PATH`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{ServerProcess, find_binary, free_ports, wait_for_tcp};

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct RedisConfig {
    /// `requirepass` (the `default` user's password).
    pub password: Option<String>,
    /// ACL users: name, password and rules (e.g. `+@all -psync -sync`).
    pub users: Vec<(String, String, String)>,
    /// Also listen with TLS (see [`Redis::tls_port`], [`Redis::ca_file`]).
    pub tls: bool,
    /// An RDB file copied in as `dump.rdb` and loaded on start.
    pub rdb: Option<PathBuf>,
    /// More `--flag value` arguments.
    pub args: Vec<String>,
}

impl RedisConfig {
    /// Sets the `default` user's password.
    pub fn with_password(mut self, p: &str) -> Self {
        self.password = Some(p.into());
        self
    }
    /// Adds an ACL user with `password` and `rules`.
    pub fn with_user(mut self, name: &str, password: &str, rules: &str) -> Self {
        self.users
            .push((name.into(), password.into(), rules.into()));
        self
    }
    /// Listens with TLS too.
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }
    /// Loads `rdb` on start.
    pub fn with_rdb(mut self, rdb: &Path) -> Self {
        self.rdb = Some(rdb.to_path_buf());
        self
    }
    /// Adds `--flag value…` arguments.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// A running `redis-server`; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct Redis {
    /// The plain TCP port on 127.0.0.1.
    pub port: u16,
    /// The TLS port, when started with TLS.
    pub tls_port: Option<u16>,
    password: Option<String>,
    process: ServerProcess,
}

impl Redis {
    /// Starts a server with the defaults.
    ///
    /// # Panics
    /// As [`Redis::start_with`].
    pub fn start() -> Redis {
        Self::start_with(RedisConfig::default())
    }

    /// Starts a server configured by `config` and waits until it answers
    /// `PING` (after loading its RDB).
    ///
    /// # Panics
    /// If `redis-server` is missing (naming `scripts/setup-test-deps.sh`),
    /// certificates cannot be made, or the server is not ready within 60 s.
    pub fn start_with(config: RedisConfig) -> Redis {
        let binary = find_binary("redis-server", "CAPSULE_REDIS_SERVER", &[]);
        let work = ServerProcess::work_dir_for("redis");
        let dir = work.path().to_path_buf();
        let ports = free_ports(2);
        let mut cmd = Command::new(binary);
        cmd.current_dir(&dir)
            .args(["--port", &ports[0].to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes"])
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&dir);
        if let Some(rdb) = &config.rdb {
            std::fs::copy(rdb, dir.join("dump.rdb"))
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", rdb.display()));
            cmd.args(["--dbfilename", "dump.rdb"]);
        }
        if let Some(p) = &config.password {
            cmd.args(["--requirepass", p]);
        }
        for (name, password, rules) in &config.users {
            cmd.arg("--user")
                .arg(name)
                .arg("on")
                .arg(format!(">{password}"));
            cmd.args(["~*", "&*"]).args(rules.split_whitespace());
        }
        let tls_port = config.tls.then(|| {
            make_certificates(&dir);
            cmd.args(["--tls-port", &ports[1].to_string()])
                .args([
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"]);
            ports[1]
        });
        cmd.args(&config.args);
        let mut process = ServerProcess::spawn("redis", cmd, work);
        let port = ports[0];
        let password = config.password.clone();
        process.wait_ready("answering PING", Duration::from_secs(60), || {
            wait_for_tcp(port, Duration::from_millis(200))
                && RedisClient::connect(port, password.as_deref())
                    .ok()
                    .map(|mut c| c.cmd(&[b"PING"]) == Reply::Simple("PONG".into()))
                    .unwrap_or(false)
        });
        Redis {
            port,
            tls_port,
            password,
            process,
        }
    }

    /// `redis://127.0.0.1:<port>` (with the `default` user's password, when set).
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The `rediss://` URL of the TLS port, trusting [`Redis::ca_file`].
    ///
    /// # Panics
    /// When the server was started without TLS.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with TLS");
        format!(
            "rediss://127.0.0.1:{port}?cacert={}",
            self.ca_file().display()
        )
    }

    /// The certificate authority of the TLS port.
    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// The server's directory (its `dump.rdb`, log and certificates).
    pub fn dir(&self) -> &Path {
        self.process.work_dir()
    }

    /// A new client, authenticated as the `default` user.
    ///
    /// # Panics
    /// When the connection fails.
    pub fn client(&self) -> RedisClient {
        RedisClient::connect(self.port, self.password.as_deref())
            .unwrap_or_else(|e| self.process.fail(&format!("cannot connect: {e}")))
    }

    /// Runs one command on a new connection.
    pub fn cmd(&self, args: &[&[u8]]) -> Reply {
        self.client().cmd(args)
    }

    /// `DEBUG DIGEST`: one hash of every key and value of every database.
    pub fn digest(&self) -> String {
        self.cmd(&[b"DEBUG", b"DIGEST"]).text()
    }

    /// Keys per database (`INFO keyspace`), e.g. `[(0, 12), (3, 1)]`.
    pub fn keyspace(&self) -> Vec<(u64, u64)> {
        let info = self.cmd(&[b"INFO", b"keyspace"]).text();
        info.lines()
            .filter_map(|l| {
                let (db, rest) = l.split_once(':')?;
                let keys = rest.split(',').next()?.strip_prefix("keys=")?;
                Some((db.strip_prefix("db")?.parse().ok()?, keys.parse().ok()?))
            })
            .collect()
    }

    /// How many times the server ran `command` (lower case) since its
    /// counts were last reset (`INFO commandstats`, `CONFIG RESETSTAT`).
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cmd(&[b"INFO", b"commandstats"]).text();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |rest| {
                let n = rest.split(',').next().unwrap_or_default();
                n.parse()
                    .unwrap_or_else(|e| panic!("commandstats of {command}: {n:?}: {e}"))
            })
    }

    /// The server process (pid, log).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

fn make_certificates(dir: &Path) {
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write san.ext");
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=capsule test CA",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run openssl ({e}); run {}",
                    crate::process::SETUP_SCRIPT
                )
            });
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A RESP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+…`.
    Simple(String),
    /// `-…`.
    Error(String),
    /// `:…`.
    Int(i64),
    /// `$…`, `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*…`, `None` for the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (status, error, integer or bulk); `""` otherwise.
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(s) | Reply::Error(s) => s.clone(),
            Reply::Int(i) => i.to_string(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        }
    }

    /// The bytes of a bulk reply.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }
}

/// A blocking RESP client for tests and benchmark setup.
#[derive(Debug)]
pub struct RedisClient {
    reader: BufReader<TcpStream>,
    writer: std::io::BufWriter<TcpStream>,
}

impl RedisClient {
    /// Connects to 127.0.0.1:`port` and authenticates with `password`.
    ///
    /// # Errors
    /// Connection failures and a refused `AUTH`.
    pub fn connect(port: u16, password: Option<&str>) -> std::io::Result<RedisClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        let mut c = RedisClient {
            reader: BufReader::with_capacity(1 << 20, stream.try_clone()?),
            writer: std::io::BufWriter::with_capacity(1 << 20, stream),
        };
        if let Some(p) = password
            && let Reply::Error(e) = c.cmd(&[b"AUTH", p.as_bytes()])
        {
            return Err(std::io::Error::other(e));
        }
        Ok(c)
    }

    /// Sends one command and reads its reply.
    ///
    /// # Panics
    /// On I/O errors.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        self.send(args);
        self.flush();
        self.read()
    }

    /// Queues a command (pipelining); read its reply with [`RedisClient::read`].
    ///
    /// # Panics
    /// On I/O errors.
    pub fn send(&mut self, args: &[&[u8]]) {
        let w = &mut self.writer;
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        w.write_all(&out).expect("write to redis");
    }

    /// Sends the queued commands.
    ///
    /// # Panics
    /// On I/O errors.
    pub fn flush(&mut self) {
        self.writer.flush().expect("flush to redis");
    }

    /// Reads one reply.
    ///
    /// # Panics
    /// On I/O errors or a malformed reply.
    pub fn read(&mut self) -> Reply {
        let mut line = Vec::new();
        self.reader
            .read_until(b'\n', &mut line)
            .expect("read from redis");
        assert!(line.ends_with(b"\r\n"), "bad reply line {line:?}");
        line.truncate(line.len() - 2);
        let rest = String::from_utf8_lossy(&line[1..]).into_owned();
        match line.first() {
            Some(b'+') => Reply::Simple(rest),
            Some(b'-') => Reply::Error(rest),
            Some(b':') => Reply::Int(rest.parse().expect("integer reply")),
            Some(b'$') => {
                let n: i64 = rest.parse().expect("bulk length");
                if n < 0 {
                    return Reply::Bulk(None);
                }
                let mut data = vec![0u8; n as usize + 2];
                self.reader.read_exact(&mut data).expect("read bulk");
                data.truncate(n as usize);
                Reply::Bulk(Some(data))
            }
            Some(b'*') => {
                let n: i64 = rest.parse().expect("array length");
                if n < 0 {
                    return Reply::Array(None);
                }
                Reply::Array(Some((0..n).map(|_| self.read()).collect()))
            }
            _ => panic!("bad reply line {line:?}"),
        }
    }
}
