//! Redis under fault: a source server backed up (replication capture)
//! through a proxy, and a live server restored into in the default mode,
//! where keys in the backup replace theirs and other keys stay. A failed
//! restore may leave some of the backup's keys (the mode says so); it must
//! never touch a key the backup does not hold, nor add a foreign one.
//!
//! The destructive mode (`--flush`) empties the live server first (it
//! loads by replication, the direct link to capsule outside the proxy): a
//! finished restore leaves it holding exactly the source's data; a failed
//! one may leave it emptied and partly restored only if its error says
//! so, and never with a foreign key.

use test_support::redis::{Redis, Reply};
use test_support::tcp_proxy::TcpProxy;

use crate::process::Running;
use crate::subject::{Live, Mode, Phase, Subject};

/// Keys of the source (about 600 bytes each).
const KEYS: usize = 20_000;
/// Keys only the live server has.
const LIVE_ONLY: usize = 200;
/// Keys of the backup the live server holds with other values.
const OVERWRITTEN: usize = 100;

pub struct RedisSubject {
    source: Redis,
    source_proxy: TcpProxy,
    target: Redis,
    target_proxy: TcpProxy,
    /// `DEBUG DIGEST-VALUE` of the live-only keys.
    live_only: Vec<Reply>,
    /// `DEBUG DIGEST` of the live server after a whole restore.
    restored: Option<String>,
    /// Started ahead, to replace a killed server at once.
    spare: Option<Redis>,
}

fn fill(redis: &Redis) {
    let mut c = redis.client();
    let mut rng = crate::process::Rng::new(7);
    for i in 0..KEYS {
        let k = format!("key:{i}");
        // Hex of a fixed random sequence: values that compress about 2:1.
        let v: String = (0..38)
            .map(|_| format!("{:016x}", rng.next_u64()))
            .collect();
        match i % 4 {
            0 => c.send(&[b"SET", k.as_bytes(), v.as_bytes()]),
            1 => c.send(&[
                b"RPUSH",
                k.as_bytes(),
                &v.as_bytes()[..300],
                &v.as_bytes()[300..],
            ]),
            2 => c.send(&[b"HSET", k.as_bytes(), b"f", v.as_bytes()]),
            _ => c.send(&[b"ZADD", k.as_bytes(), b"1.5", v.as_bytes()]),
        }
    }
    c.send(&[b"SELECT", b"3"]);
    c.send(&[b"SET", b"elsewhere", b"x", b"EX", b"86400"]);
    c.flush();
    for _ in 0..KEYS + 2 {
        c.read();
    }
}

fn live_only_keys() -> Vec<Vec<u8>> {
    (0..LIVE_ONLY)
        .map(|i| format!("live:{i}").into_bytes())
        .collect()
}

fn digest_values(redis: &Redis) -> Vec<Reply> {
    let keys = live_only_keys();
    let mut args: Vec<&[u8]> = vec![b"DEBUG", b"DIGEST-VALUE"];
    args.extend(keys.iter().map(Vec::as_slice));
    match redis.cmd(&args) {
        Reply::Array(Some(v)) => v,
        other => panic!("DEBUG DIGEST-VALUE: {other:?}"),
    }
}

/// Every key of every database, as `db:key`.
fn all_keys(redis: &Redis) -> Vec<String> {
    let mut out = Vec::new();
    let mut c = redis.client();
    for (db, _) in redis.keyspace() {
        c.cmd(&[b"SELECT", db.to_string().as_bytes()]);
        let mut cursor = b"0".to_vec();
        loop {
            let Reply::Array(Some(page)) = c.cmd(&[b"SCAN", &cursor, b"COUNT", b"5000"]) else {
                panic!("SCAN failed");
            };
            cursor = page[0].bytes().unwrap_or(b"0").to_vec();
            if let Reply::Array(Some(keys)) = &page[1] {
                out.extend(keys.iter().map(|k| {
                    format!(
                        "{db}:{}",
                        String::from_utf8_lossy(k.bytes().unwrap_or_default())
                    )
                }));
            }
            if cursor == b"0" {
                break;
            }
        }
    }
    out
}

/// Whether `key` (`db:name`) is one the backup holds.
fn in_backup(key: &str) -> bool {
    key == "3:elsewhere"
        || key
            .strip_prefix("0:key:")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n < KEYS)
}

impl RedisSubject {
    pub fn new() -> RedisSubject {
        let source = Redis::start();
        fill(&source);
        let target = Redis::start();
        RedisSubject {
            source_proxy: TcpProxy::start(source.port),
            target_proxy: TcpProxy::start(target.port),
            source,
            target,
            live_only: Vec::new(),
            restored: None,
            spare: Some(Redis::start()),
        }
    }
}

impl Subject for RedisSubject {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn backup_args(&self) -> Vec<String> {
        let url = format!("redis://127.0.0.1:{}", self.source_proxy.port);
        ["redis", "--create", "--redis-url", &url]
            .into_iter()
            .chain(["--cluster", "faults", "--service", "faults/redis"])
            .map(String::from)
            .collect()
    }

    fn restore_args(&self, id: &str, mode: Mode) -> Vec<String> {
        let url = format!("redis://127.0.0.1:{}", self.target_proxy.port);
        let flags: &[&str] = match mode {
            Mode::Default => &[],
            Mode::Destructive => &["--flush"],
        };
        [
            "redis",
            "--restore",
            "--yes",
            "--id",
            id,
            "--redis-url",
            &url,
        ]
        .into_iter()
        .chain(flags.iter().copied())
        .chain(["--cluster", "faults"])
        .map(String::from)
        .collect()
    }

    fn destructive_flag(&self) -> &'static str {
        "--flush"
    }

    fn verify_args(&self, id: &str) -> Vec<String> {
        let url = format!("redis://127.0.0.1:{}", self.source.port);
        ["redis", "--verify", "--id", id, "--redis-url", &url]
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn db_proxy(&self, phase: Phase) -> &TcpProxy {
        match phase {
            Phase::Backup => &self.source_proxy,
            Phase::Restore => &self.target_proxy,
        }
    }

    fn tool(&self, _phase: Phase) -> &'static str {
        "redis-server"
    }

    fn tool_is_server(&self) -> bool {
        true
    }

    fn kill_tool(&mut self, _run: &Running, phase: Phase) -> bool {
        // Dropping the guard SIGKILLs the server's process group.
        let fresh = self.spare.take().unwrap_or_else(Redis::start);
        match phase {
            Phase::Backup => drop(std::mem::replace(&mut self.source, fresh)),
            Phase::Restore => drop(std::mem::replace(&mut self.target, fresh)),
        }
        true
    }

    fn recover(&mut self, phase: Phase) {
        self.spare = Some(Redis::start());
        match phase {
            Phase::Backup => {
                fill(&self.source);
                self.source_proxy = TcpProxy::start(self.source.port);
            }
            Phase::Restore => self.target_proxy = TcpProxy::start(self.target.port),
        }
    }

    fn live_before(&mut self, _mode: Mode) -> Live {
        let t = &self.target;
        t.cmd(&[b"FLUSHALL"]);
        let mut c = t.client();
        for k in live_only_keys() {
            c.send(&[b"SET", &k, b"live value"]);
        }
        for i in 0..OVERWRITTEN {
            c.send(&[
                b"SET",
                format!("key:{i}").as_bytes(),
                b"live value of a key in the backup",
            ]);
        }
        c.flush();
        for _ in 0..LIVE_ONLY + OVERWRITTEN {
            c.read();
        }
        if self.live_only.is_empty() {
            self.live_only = digest_values(t);
        }
        Live::whole(t.digest())
    }

    fn live_after(
        &mut self,
        mode: Mode,
        before: &Live,
        restored: bool,
        error: Option<&str>,
    ) -> (Vec<String>, Vec<String>) {
        let t = &self.target;
        let mut wrong = Vec::new();
        let mut notes = Vec::new();
        // `--flush` loads by replication: capsule detaches the server on
        // every outcome it lives to see; only `kill -9` leaves it a replica.
        let role = t.cmd(&[b"INFO", b"replication"]).text();
        if role.lines().any(|l| l == "role:slave") {
            match (restored, error) {
                (false, None) => notes.push(
                    "killed during a load by replication: the live server was left a replica \
                     of capsule (documented; REPLICAOF NO ONE detached it)"
                        .into(),
                ),
                _ => wrong.push("capsule ended and left the live server a replica".into()),
            }
            // It may still be loading the RDB it was sent.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while t.cmd(&[b"REPLICAOF", b"NO", b"ONE"]).text() != "OK" {
                assert!(
                    std::time::Instant::now() < deadline,
                    "REPLICAOF NO ONE failed for 60 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        // `--flush` empties the server: the keys the backup lacks go.
        if mode == Mode::Default && digest_values(t) != self.live_only {
            wrong.push("a restore changed keys the backup does not hold".into());
        }
        let foreign: Vec<String> = all_keys(t)
            .into_iter()
            .filter(|k| !k.starts_with("0:live:") && !in_backup(k))
            .take(5)
            .collect();
        if !foreign.is_empty() {
            wrong.push(format!(
                "keys neither live nor in the backup appeared: {foreign:?}"
            ));
        }
        let now = t.digest();
        if mode == Mode::Default && restored && self.restored.is_none() {
            // The clean restore of the baseline: what a whole restore leaves.
            self.restored = Some(now.clone());
        }
        let whole = match mode {
            Mode::Default => self.restored.clone().unwrap_or_default(),
            // Emptied, then restored: the source's data, nothing else.
            Mode::Destructive => self.source.digest(),
        };
        let what = match mode {
            Mode::Default => "the default mode replaces the keys the backup holds",
            Mode::Destructive => "--flush empties the server first",
        };
        match (restored, now == whole, now == before.checksum) {
            (true, true, _) | (false, _, true) => {}
            (true, false, _) => wrong.push(
                "the restore says finished but the live server does not hold the backup".into(),
            ),
            (false, true, false) => notes.push(
                "the live server holds the whole backup, but the run is not recorded as \
                 finished (killed at the end, or the store was down when it was to be recorded)"
                    .into(),
            ),
            (false, false, false) => match error {
                Some(e) if !e.contains("may hold part of the backup") => wrong.push(format!(
                    "a failed restore changed the live server without saying so: {e}"
                )),
                Some(_) => notes.push(format!(
                    "a failed restore left part of the backup in place, and its error said so \
                     ({what})"
                )),
                None => notes.push(format!(
                    "killed mid-restore: part of the backup is in place ({what})"
                )),
            },
        }
        (wrong, notes)
    }
}
