//! The `capsule` binary run for real against real stores: a `file://`
//! directory, SeaweedFS (S3) and Azurite (Azure blob), each loaded with the
//! legacy v1alpha1 fixture bucket. Every command's stdout and stderr are
//! checked for secrets.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capsule_core::pipeline::PipelineOptions;
use capsule_core::{
    ArtifactSink, ArtifactSource, ArtifactSpec, BackupOptions, Capabilities, Catalog, Compression,
    Engine, EngineInfo, Fingerprint, JobContext, NoProgress, RestoreOutcome, ServiceIdentity,
    ServiceType,
};
use capsule_store::{Secret, Store, StoreBuilder};
use serde_json::Value;
use tempfile::TempDir;
use test_support::azurite::Azurite;
use test_support::fixtures::legacy_bucket_dir;
use test_support::seaweedfs::SeaweedFs;
use test_support::tcp_proxy::{NetFault, TcpProxy};

const PREFIX: &str = "cnvrg-smart-backups";
const FINISHED: &str = "postgresql-9nVJ8sGmQbXc3RkHzW2tLp";
const FAILED: &str = "postgresql-4GfT7uYpWq2ZsLmK9bXcRv";
const REQUESTED: &str = "postgresql-Ts6Yh2KqPw9LmZc4NbXvRe";
const DUMP: &str = "Hq4mTzR7xKd2VwPbN8cYsE-pgdump.tar";
const DUMP_SHA256: &str = "e87c12cf3eaf4fe65b2478476a9b1eed9765b267686c6b1d3a474c84fa95190b";
/// Secrets stored in plain text in the legacy statefiles.
const FIXTURE_SECRETS: [&str; 3] = [
    "AKIALEGACYEXAMPLE",
    "legacySecretKeyExample0123456789abcdef",
    "s3cr3tPgPass",
];

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// What one run of the binary produced.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success:\n{self:#?}");
        self
    }

    fn fails_with(self, code: i32) -> Self {
        assert_eq!(self.code, code, "expected exit {code}:\n{self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self:#?}"))
    }

    /// The `error: ...` line; asserts there is exactly one line on stderr
    /// (logs are off unless asked for).
    fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected a one-line error:\n{self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        lines[0]
    }
}

/// A store loaded with the legacy fixture, and how the CLI reaches it.
struct Target {
    name: &'static str,
    /// Global flags selecting the store.
    flags: Vec<String>,
    /// Values that must never be printed.
    secrets: Vec<String>,
    /// The store at the backups' prefix, for assertions.
    store: Store,
    rt: tokio::runtime::Runtime,
    /// Scratch space (dump dir, CAPSULE_HOME); the file store's root too.
    dir: TempDir,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A name no other test of this run uses (buckets, containers).
fn unique(kind: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{kind}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Every file of the fixture bucket, as (key relative to the bucket root, bytes).
fn fixture_objects() -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).expect("read fixture dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let key = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((key, std::fs::read(&path).expect("read fixture")));
            }
        }
    }
    let root = legacy_bucket_dir();
    let mut out = Vec::new();
    walk(&root, &root.join(PREFIX), &mut out);
    assert!(out.len() >= 5, "fixture incomplete: {out:?}");
    out
}

/// Puts the fixture into `root` (a store at the bucket root).
fn load_fixture(rt: &tokio::runtime::Runtime, root: &Store) {
    rt.block_on(async {
        for (key, bytes) in fixture_objects() {
            root.put(&key, Bytes::from(bytes))
                .await
                .unwrap_or_else(|e| panic!("loading {key}: {e}"));
        }
    });
}

/// `bucket` on `s3` at its root, with the admin keys, as the tests see it.
fn seaweedfs_root(s3: &SeaweedFs, bucket: &str) -> Store {
    StoreBuilder::from_url(&s3.s3_url(bucket))
        .unwrap()
        .with_access_key(
            Secret::new(s3.access_key.clone()),
            Secret::new(s3.secret_key.clone()),
        )
        .build()
        .unwrap()
}

impl Target {
    /// A `file://` store: a copy of the fixture directory.
    fn file() -> Target {
        let dir = TempDir::new().unwrap();
        let root = dir.path().join("bucket");
        for (key, bytes) in fixture_objects() {
            let path = root.join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let url = format!("file://{}", root.display());
        let store = Store::from_url(&url).unwrap().with_prefix(PREFIX).unwrap();
        Target {
            name: "file",
            flags: vec!["--store".into(), url],
            secrets: Vec::new(),
            store,
            rt: runtime(),
            dir,
        }
    }

    /// A fresh SeaweedFS bucket holding the fixture; the CLI gets the URL
    /// and the keys as flags.
    fn seaweedfs() -> Target {
        let s3 = SeaweedFs::shared();
        let bucket = unique("cli");
        s3.create_bucket(&bucket);
        let url = s3.s3_url(&bucket);
        let rt = runtime();
        let root = seaweedfs_root(s3, &bucket);
        load_fixture(&rt, &root);
        Target {
            name: "seaweedfs",
            flags: vec![
                "--store".into(),
                url,
                "--access-key".into(),
                s3.access_key.clone(),
                "--secret-key".into(),
                s3.secret_key.clone(),
            ],
            secrets: vec![s3.access_key.clone(), s3.secret_key.clone()],
            store: root.with_prefix(PREFIX).unwrap(),
            rt,
            dir: TempDir::new().unwrap(),
        }
    }

    /// A fresh Azurite container holding the fixture; the CLI gets one URL
    /// with the account key in it.
    fn azurite() -> Target {
        let az = Azurite::shared();
        let container = unique("cli");
        az.create_container(&container);
        let url = az.az_url_with_credentials(&container);
        let rt = runtime();
        let root = Store::from_url(&url).unwrap();
        load_fixture(&rt, &root);
        Target {
            name: "azurite",
            flags: vec!["--store".into(), url],
            secrets: vec![az.key.clone()],
            store: root.with_prefix(PREFIX).unwrap(),
            rt,
            dir: TempDir::new().unwrap(),
        }
    }

    fn dumpdir(&self) -> PathBuf {
        self.dir.path().join("dumps")
    }

    /// Runs `capsule <flags> <args>` with logs at the default level.
    fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// Runs with `RUST_LOG=trace`: every library's logs, still redacted.
    fn run_traced(&self, args: &[&str]) -> Run {
        self.run_env(args, &[("RUST_LOG", "trace")])
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let dumpdir = self.dumpdir();
        let mut all: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        all.extend(["--dumpdir", dumpdir.to_str().unwrap()]);
        all.extend(args);
        let run = capsule(&all, env, self.dir.path());
        assert_no_secrets(&run, &self.secrets);
        run
    }

    /// Keys (relative to the prefix) of the objects under `folder/`.
    fn objects(&self, folder: &str) -> Vec<String> {
        self.rt.block_on(async {
            let mut keys: Vec<String> = self
                .store
                .list(&format!("{folder}/"))
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect();
            keys.sort();
            keys
        })
    }

    fn get(&self, key: &str) -> Vec<u8> {
        self.rt
            .block_on(self.store.get(key))
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .bytes
            .to_vec()
    }

    fn put(&self, key: &str, bytes: Vec<u8>) {
        self.rt
            .block_on(self.store.put(key, Bytes::from(bytes)))
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
}

/// Runs the binary in `cwd` with a clean environment: no `CNVRG_CAPSULE_*`
/// from the caller, `CAPSULE_HOME` in the scratch dir, no colours.
fn capsule(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Run {
    let out = capsule_command(args, env, cwd)
        .output()
        .expect("run capsule");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `capsule <args>` in `cwd`, with none of the caller's capsule settings.
fn capsule_command(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsule"));
    cmd.args(args).current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("CNVRG_CAPSULE_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("CAPSULE_HOME", cwd.join("capsule-home"))
        .env("NO_COLOR", "1")
        .envs(env.iter().copied());
    cmd
}

/// A port where a server accepts connections and never answers: a job
/// talking to it waits until it is stopped.
fn silent_server() -> u16 {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    port
}

/// Sends SIGTERM to `pid`, as `kill` and Kubernetes do.
fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (up to `limit`) until `ready`, then sends `child` SIGTERM and
/// checks that it winds down as interrupted (exit 130, `cancelled`);
/// returns its stderr. `what` names the run in failures.
fn interrupted_when(
    child: std::process::Child,
    ready: impl Fn() -> bool,
    limit: Duration,
    what: &str,
) -> String {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "{what}: never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(130), "{what}: {stderr}");
    assert!(stderr.contains("cancelled"), "{what}: {stderr}");
    stderr
}

/// SIGTERM (what `kill` and Kubernetes send) stops a backup as ctrl-c
/// does: the job is cancelled, its statefile says failed, exit 130.
#[test]
fn sigterm_stops_a_backup_and_marks_it_failed() {
    let port = silent_server();
    let t = Target::file();
    let mut all: Vec<String> = t.flags.clone();
    all.extend(["es", "--create", "--es-url"].map(String::from));
    all.push(format!("http://127.0.0.1:{port}"));
    let args: Vec<&str> = all.iter().map(String::as_str).collect();
    let child = capsule_command(&args, &[], t.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the backup is recorded as running, then stop it.
    let running = || {
        t.rt.block_on(t.store.list(""))
            .unwrap()
            .iter()
            .any(|o| o.key.starts_with("elasticsearch-") && o.key.ends_with("/statefile.json"))
    };
    let stderr = interrupted_when(child, running, Duration::from_secs(30), "the backup");
    assert!(
        stderr.contains("interrupt again to exit at once"),
        "{stderr}"
    );
    let list = t.run(&["es", "--list", "--json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(list[0]["status"], "failed", "{list:#}");
}

/// A second SIGTERM while a cancelled job winds down exits at once, saying
/// what may be left: here the store stops answering after the backup
/// started, so marking its statefile failed would wait on it.
#[test]
fn a_second_sigterm_exits_without_waiting_for_the_job_to_stop() {
    let es_port = silent_server();
    let s3 = SeaweedFs::shared();
    let bucket = unique("cli");
    s3.create_bucket(&bucket);
    let proxy = TcpProxy::start(s3.port);
    let url = format!(
        "s3://{bucket}?endpoint=http://127.0.0.1:{}&region={}&allow_http=true",
        proxy.port, s3.region
    );
    let dir = TempDir::new().unwrap();
    let es_url = format!("http://127.0.0.1:{es_port}");
    let args = [
        "--store",
        &url,
        "--access-key",
        &s3.access_key,
        "--secret-key",
        &s3.secret_key,
        "es",
        "--create",
        "--es-url",
        &es_url,
    ];
    let mut child = capsule_command(&args, &[], dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The store as the test sees it, not through the proxy.
    let rt = runtime();
    let store = seaweedfs_root(s3, &bucket).with_prefix(PREFIX).unwrap();
    let statefile = || -> Option<Value> {
        let objects = rt.block_on(store.list("")).unwrap();
        let key = &objects
            .iter()
            .find(|o| o.key.ends_with("/statefile.json"))?
            .key;
        let bytes = rt.block_on(store.get(key)).unwrap().bytes;
        Some(serde_json::from_slice(&bytes).unwrap())
    };
    let start = Instant::now();
    while statefile().is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The store stops answering: each chunk now waits an hour.
    proxy.set(NetFault::Delay(Duration::from_secs(3600)));
    sigterm(child.id());
    // The first signal cancels; winding down waits on the store.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "capsule exited on the first signal although marking its statefile could not finish"
    );
    let second = Instant::now();
    sigterm(child.id());
    let out = child.wait_with_output().unwrap();
    let took = second.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        took < Duration::from_secs(5),
        "exit took {took:?} after the second signal"
    );
    assert!(
        stderr.contains("interrupt again to exit at once"),
        "{stderr}"
    );
    assert!(
        stderr.contains("interrupted again: exiting now")
            && stderr.contains("statefile may say running"),
        "{stderr}"
    );
    // What the message warns of: the statefile was not marked.
    let sf = statefile().unwrap();
    assert_eq!(sf["status"], "running", "{sf:#}");
}

/// The `error: ...` line, the only line on stderr apart from warnings
/// (logs are at `warn`; a failed job itself is not logged at that level).
fn error(run: &Run) -> &str {
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{run:#?}");
    let others = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with("error: ") && !l.contains(" WARN "))
        .count();
    assert_eq!(others, 0, "unexpected stderr lines:\n{run:#?}");
    errors[0]
}

/// Backup `id`'s statefile in `t`, as raw JSON.
fn statefile(t: &Target, id: &str) -> Value {
    serde_json::from_slice(&t.get(&format!("{id}/statefile.json"))).unwrap()
}

fn assert_no_secrets(run: &Run, extra: &[String]) {
    for secret in FIXTURE_SECRETS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "secret {secret:?} printed:\n{run:#?}"
        );
    }
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|e| e["backupId"].as_str().unwrap())
        .collect()
}

fn entry<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["backupId"] == id)
        .unwrap_or_else(|| panic!("{id} not in {list:#}"))
}

// ---------------------------------------------------------------------------
// The legacy bucket on every store: list, describe, download, delete
// ---------------------------------------------------------------------------

fn legacy_round_trip(t: &Target) {
    // --list: the three legacy backups, newest first.
    let run = t.run_traced(&["pg", "--list"]).ok();
    let rows: Vec<&str> = run.stdout.lines().collect();
    assert!(
        rows[0].starts_with("ID ") && rows[0].contains("STATUS"),
        "{run:#?}"
    );
    let order: Vec<&str> = rows[1..4]
        .iter()
        .map(|r| r.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(order, [REQUESTED, FAILED, FINISHED], "{}: {run:#?}", t.name);
    let row = |id: &str| *rows.iter().find(|r| r.starts_with(id)).unwrap();
    assert!(
        row(FINISHED).contains(" finished ") && row(FINISHED).contains("1.8 MiB"),
        "{run:#?}"
    );
    assert!(row(FINISHED).contains(" periodic "), "{run:#?}");
    assert!(row(FINISHED).contains(" cnvrg/pg-storage "), "{run:#?}");
    assert!(row(FAILED).contains(" failed "), "{run:#?}");
    assert!(
        row(REQUESTED).contains(" requested ") && row(REQUESTED).contains(" manual "),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("store: "),
        "header names the store: {run:#?}"
    );

    // --list --json
    let run = t.run_traced(&["pg", "--list", "--json"]).ok();
    let list = run.json();
    assert_eq!(ids(&list), [REQUESTED, FAILED, FINISHED]);
    let fin = entry(&list, FINISHED);
    assert_eq!(fin["status"], "finished");
    assert_eq!(fin["serviceType"], "postgresql");
    assert_eq!(fin["requestType"], "periodic");
    assert_eq!(fin["statefileVersion"], "v1alpha1");
    assert_eq!(fin["service"], "cnvrg/pg-storage");
    assert_eq!(fin["endpoint"], "pg.cnvrg");
    assert_eq!(fin["database"], "cnvrg_production");
    assert_eq!(fin["sizeBytes"], 1_855_488);
    // Dates in UTC with Z, as the statefile and describe write them (the
    // failed one was written with +03:00).
    assert_eq!(fin["date"], "2021-06-10T09:15:42.532817263Z");
    assert_eq!(
        entry(&list, FAILED)["date"],
        "2021-06-11T06:15:44.000000001Z"
    );
    assert_eq!(entry(&list, FAILED)["status"], "failed");
    assert_eq!(entry(&list, REQUESTED)["status"], "requested");
    // Other service types see nothing of it.
    assert_eq!(
        t.run(&["redis", "--list", "--json"]).ok().json(),
        serde_json::json!([])
    );

    // --describe: the statefile, with its restore, without secrets.
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["pg", "--describe", "--id", FINISHED];
        args.extend(extra);
        let sf = t.run_traced(&args).ok().json();
        assert_eq!(sf["backupId"], FINISHED);
        assert_eq!(sf["statefileVersion"], "v1alpha1");
        assert_eq!(sf["status"], "finished");
        assert_eq!(sf["restores"].as_array().unwrap().len(), 1, "{sf:#}");
    }

    // --download: byte-identical to the fixture dump.
    let run = t
        .run_traced(&["pg", "--download", "--id", FINISHED, "--json"])
        .ok();
    let report = run.json();
    assert_eq!(report["backupId"], FINISHED);
    let file = &report["files"][0];
    assert_eq!(file["name"], DUMP);
    assert_eq!(file["sha256"], DUMP_SHA256, "a legacy dump is stored as is");
    assert_eq!(file["storedSha256"], DUMP_SHA256);
    assert_eq!(file["sizeBytes"], 1_855_488);
    assert_eq!(
        file["checksumVerified"], false,
        "legacy dumps have no checksum"
    );
    let path = t.dumpdir().join(FINISHED).join(DUMP);
    assert_eq!(file["path"], path.to_str().unwrap());
    let fixture =
        std::fs::read(legacy_bucket_dir().join(PREFIX).join(FINISHED).join(DUMP)).unwrap();
    assert!(
        std::fs::read(&path).unwrap() == fixture,
        "downloaded dump differs"
    );
    let run = t.run(&["pg", "--download", "--id", FINISHED]).ok();
    assert!(
        run.stdout.contains(path.to_str().unwrap()) && run.stdout.contains("1.8 MiB"),
        "{run:#?}"
    );

    // --delete --yes: gone from the list and from the store.
    assert_eq!(t.objects(FINISHED).len(), 2);
    let run = t
        .run_traced(&["pg", "--delete", "--yes", "--id", FINISHED])
        .ok();
    assert!(run.stdout.contains(FINISHED), "{run:#?}");
    assert_eq!(t.objects(FINISHED), Vec::<String>::new());
    let list = t.run(&["pg", "--list", "--json"]).ok().json();
    assert_eq!(ids(&list), [REQUESTED, FAILED]);
}

#[test]
fn legacy_bucket_on_a_local_directory() {
    legacy_round_trip(&Target::file());
}

/// An empty listing of a local store whose directory does not exist says
/// so (a mistyped path or dst-dir), still exit 0; an existing empty one
/// does not.
#[test]
fn listing_a_local_store_that_does_not_exist_says_so() {
    let dir = TempDir::new().unwrap();
    let missing = format!("file://{}/typo", dir.path().display());
    let run = capsule(&["--store", &missing, "pg", "--list"], &[], dir.path()).ok();
    assert!(
        run.stderr
            .contains("typo/cnvrg-smart-backups does not exist"),
        "{run:#?}"
    );
    let t = Target::file();
    let run = t.run(&["--dst-dir", "elsewhere", "pg", "--list"]).ok();
    assert!(run.stderr.contains("elsewhere does not exist"), "{run:#?}");
    let run = t.run(&["redis", "--list"]).ok();
    assert!(run.stderr.contains("no redis backups"), "{run:#?}");
    assert!(!run.stderr.contains("does not exist"), "{run:#?}");
}

/// `pg --list` and the table row of backup `id`.
fn list_row(t: &Target, id: &str) -> (Run, String) {
    let run = t.run(&["pg", "--list"]).ok();
    let row = run.stdout.lines().find(|l| l.starts_with(id));
    let row = row
        .unwrap_or_else(|| panic!("{id} not listed: {run:#?}"))
        .to_string();
    (run, row)
}

/// A running backup that has been silent for long shows it in the table
/// (and its last sign of life in --json); the status stays `running`.
#[test]
fn a_silent_running_backup_shows_how_long_it_has_been_silent() {
    let t = Target::file();
    let key = format!("{FINISHED}/statefile.json");
    let mut sf: Value = serde_json::from_slice(&t.get(&key)).unwrap();
    sf["status"] = "dumpingdb".into();
    t.rt.block_on(t.store.put(&key, sf.to_string().into_bytes().into()))
        .unwrap();
    let (run, row) = list_row(&t, FINISHED);
    assert!(row.contains(" running "), "{run:#?}");
    assert!(row.contains(" no heartbeat for "), "{run:#?}");
    let list = t
        .run(&["pg", "--list", "--json", "--status", "running"])
        .ok()
        .json();
    assert_eq!(ids(&list), [FINISHED]);
    let e = entry(&list, FINISHED);
    assert_eq!(e["status"], "running");
    assert!(
        e["heartbeatAt"]
            .as_str()
            .unwrap()
            .starts_with("2021-06-10T09:15:42")
    );
    assert_eq!(
        entry(&t.run(&["pg", "--list", "--json"]).ok().json(), FAILED)["heartbeatAt"],
        Value::Null
    );
}

/// A finished backup whose dump is gone from the bucket says so in the
/// list (and --json), instead of looking restorable.
#[test]
fn a_finished_backup_missing_its_dump_says_so() {
    let t = Target::file();
    let all = t.run(&["pg", "--list", "--json"]).ok().json();
    assert_eq!(
        entry(&all, FINISHED)["missingArtifacts"],
        serde_json::json!([])
    );
    t.rt.block_on(t.store.delete(&format!("{FINISHED}/{DUMP}")))
        .unwrap();
    let (run, row) = list_row(&t, FINISHED);
    assert!(
        row.contains(" finished ") && row.ends_with(&format!(" missing {DUMP}")),
        "{run:#?}"
    );
    let all = t.run(&["pg", "--list", "--json"]).ok().json();
    assert_eq!(entry(&all, FINISHED)["status"], "finished");
    assert_eq!(
        entry(&all, FINISHED)["missingArtifacts"],
        serde_json::json!([DUMP])
    );
}

/// A folder the list shows whose name is not a well-formed id can be
/// deleted (and only such a listed folder: other malformed ids stay usage
/// errors).
#[test]
fn a_listed_folder_with_a_malformed_name_can_be_deleted() {
    let t = Target::file();
    let odd = "postgresql-has.dot";
    let statefile = t.get(&format!("{FINISHED}/statefile.json"));
    for (name, bytes) in [("statefile.json", statefile), ("dump", b"x".to_vec())] {
        t.rt.block_on(t.store.put(&format!("{odd}/{name}"), bytes.into()))
            .unwrap();
    }
    let list = t.run(&["pg", "--list", "--json"]).ok().json();
    assert_eq!(entry(&list, odd)["status"], "unreadable");
    let run = t.run(&["pg", "--delete", "--id", odd, "--yes"]).ok();
    assert!(
        run.stdout
            .contains(&format!("deleted backup {odd} (2 objects")),
        "{run:#?}"
    );
    assert!(t.objects(odd).is_empty());
    for bad in ["postgresql-not.listed", "../etc"] {
        t.run(&["pg", "--delete", "--id", bad, "--yes"])
            .fails_with(2);
    }
    assert!(!t.objects(FINISHED).is_empty(), "nothing else touched");
}

/// A folder whose statefile is gone is listed as unreadable; describe
/// says what it holds instead of "not found", and delete removes it.
#[test]
fn a_folder_without_statefile_is_described_and_deletable() {
    let t = Target::file();
    t.rt.block_on(t.store.delete(&format!("{FINISHED}/statefile.json")))
        .unwrap();
    let list = t.run(&["pg", "--list", "--json"]).ok().json();
    assert_eq!(entry(&list, FINISHED)["status"], "unreadable");
    let run = t.run(&["pg", "--describe", "--id", FINISHED]).fails_with(1);
    assert!(
        error(&run).contains("has no statefile: its folder holds 1 object (1.8 MiB)"),
        "{run:#?}"
    );
    t.run(&["pg", "--delete", "--id", FINISHED, "--yes"]).ok();
    assert!(t.objects(FINISHED).is_empty());
    let run = t.run(&["pg", "--describe", "--id", FINISHED]).fails_with(1);
    assert!(error(&run).contains("not found"), "{run:#?}");
}

#[test]
fn legacy_bucket_on_seaweedfs() {
    legacy_round_trip(&Target::seaweedfs());
}

#[test]
fn legacy_bucket_on_azurite() {
    legacy_round_trip(&Target::azurite());
}

#[test]
fn legacy_flags_select_an_s3_bucket() {
    let s3 = SeaweedFs::shared();
    let t = Target::seaweedfs();
    let bucket = t.flags[1]
        .trim_start_matches("s3://")
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let endpoint = s3.endpoint.trim_start_matches("http://").to_string();
    let dumpdir = t.dumpdir();
    let run = capsule(
        &[
            "pg",
            "--list",
            "--json",
            "--dumpdir",
            dumpdir.to_str().unwrap(),
        ],
        &[
            ("CNVRG_CAPSULE_BUCKET_TYPE", "minio"),
            ("CNVRG_CAPSULE_ENDPOINT", &endpoint),
            ("CNVRG_CAPSULE_USE_SSL", "false"),
            ("CNVRG_CAPSULE_REGION", "us-east-1"),
            ("CNVRG_CAPSULE_BUCKET_NAME", &bucket),
            ("CNVRG_CAPSULE_ACCESS_KEY", &s3.access_key),
            ("CNVRG_CAPSULE_SECRET_KEY", &s3.secret_key),
            ("RUST_LOG", "trace"),
        ],
        t.dir.path(),
    );
    assert_no_secrets(&run, &t.secrets);
    assert_eq!(ids(&run.ok().json()), [REQUESTED, FAILED, FINISHED]);
}

// ---------------------------------------------------------------------------
// Requests: create and restore
// ---------------------------------------------------------------------------

#[test]
fn create_queues_a_requested_backup() {
    let t = Target::file();
    let run = t
        .run_traced(&[
            "pg",
            "--create",
            "--description",
            "before upgrade",
            "--cluster",
            "east",
            "--service",
            "db/pg-main",
        ])
        .ok();
    let id = run.stdout.trim().to_string();
    assert!(id.starts_with("postgresql-"), "{run:#?}");
    let list = t.run(&["pg", "--list", "--json"]).ok().json();
    assert_eq!(ids(&list)[0], id, "the newest comes first");
    let e = entry(&list, &id);
    assert_eq!(e["status"], "requested");
    assert_eq!(e["requestType"], "manual");
    assert_eq!(e["description"], "before upgrade");
    assert_eq!(e["statefileVersion"], "v1");
    // The list filters.
    for filter in [&["--cluster", "east"][..], &["--service", "db/pg-main"][..]] {
        let mut args = vec!["pg", "--list", "--json"];
        args.extend(filter);
        assert_eq!(ids(&t.run(&args).ok().json()), [id.as_str()], "{filter:?}");
    }
    let requested = t
        .run(&["pg", "--list", "--json", "--status", "requested"])
        .ok()
        .json();
    assert_eq!(ids(&requested), [id.as_str(), REQUESTED]);
    let run = t.run(&["pg", "--list"]).ok();
    let row = run.stdout.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(row.contains(" requested "), "{run:#?}");
    // --json prints the statefile.
    let sf = t.run(&["es", "--create", "--json"]).ok().json();
    assert_eq!(sf["serviceType"], "elasticsearch");
    assert_eq!(sf["status"], "requested");
}

#[test]
fn restore_appends_a_request_to_a_legacy_statefile() {
    let t = Target::file();
    let key = format!("{FINISHED}/statefile.json");
    let before: Value = serde_json::from_slice(&t.get(&key)).unwrap();
    let run = t
        .run_traced(&["pg", "--restore", "--yes", "--id", FINISHED])
        .ok();
    assert!(run.stdout.contains(FINISHED), "{run:#?}");

    let sf = t.run(&["pg", "--describe", "--id", FINISHED]).ok().json();
    assert_eq!(sf["restores"].as_array().unwrap().len(), 2, "{sf:#}");
    assert_eq!(sf["statefileVersion"], "v1alpha1");

    let after: Value = serde_json::from_slice(&t.get(&key)).unwrap();
    assert_eq!(after["statefileVersion"], "v1alpha1");
    let restores = after["restores"].as_array().unwrap();
    assert_eq!(restores.len(), 2);
    assert_eq!(restores[0], before["restores"][0]);
    assert_eq!(restores[1]["status"], "restorerequest");
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("restores");
        v
    };
    assert_eq!(
        strip(&after),
        strip(&before),
        "nothing else of the statefile changed"
    );

    // Only finished backups can be restored; the statefile is untouched.
    let failed_key = format!("{FAILED}/statefile.json");
    let raw = t.get(&failed_key);
    let run = t
        .run(&["pg", "--restore", "--yes", "--id", FAILED])
        .fails_with(1);
    assert!(run.error_line().contains(FAILED), "{run:#?}");
    assert_eq!(t.get(&failed_key), raw);
}

// ---------------------------------------------------------------------------
// Confirmation and the picker without a terminal
// ---------------------------------------------------------------------------

#[test]
fn delete_without_yes_and_without_a_terminal_refuses() {
    let t = Target::file();
    let run = t.run(&["pg", "--delete", "--id", FINISHED]).fails_with(2);
    assert!(run.error_line().contains("--yes"), "{run:#?}");
    let run = t.run(&["pg", "--restore", "--id", FINISHED]).fails_with(2);
    assert!(run.error_line().contains("--yes"), "{run:#?}");
    assert_eq!(t.objects(FINISHED).len(), 2, "nothing deleted");
    let sf = t.run(&["pg", "--describe", "--id", FINISHED]).ok().json();
    assert_eq!(
        sf["restores"].as_array().unwrap().len(),
        1,
        "nothing requested"
    );
}

#[test]
fn no_id_without_a_terminal_is_a_usage_error() {
    let t = Target::file();
    for action in ["--describe", "--download", "--delete", "--restore"] {
        let run = t.run(&["pg", action]).fails_with(2);
        assert_eq!(
            run.error_line(),
            "error: no --id given and no terminal to pick from: pass --id",
            "{action}"
        );
    }
    assert_eq!(t.objects(FINISHED).len(), 2);
}

/// Runs the binary on a pseudo-terminal (util-linux `script`), typing
/// `input`; stdout and stderr both arrive in `stdout`.
fn on_terminal(t: &Target, args: &[&str], input: &str) -> Run {
    use std::io::Write;
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let dumpdir = t.dumpdir();
    let mut all: Vec<&str> = vec![env!("CARGO_BIN_EXE_capsule")];
    all.extend(t.flags.iter().map(String::as_str));
    all.extend(["--dumpdir", dumpdir.to_str().unwrap()]);
    all.extend(args);
    let line: Vec<String> = all.iter().map(|a| quote(a)).collect();
    let mut cmd = Command::new("script");
    for (k, _) in std::env::vars() {
        if k.starts_with("CNVRG_CAPSULE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["-qec", &line.join(" "), "/dev/null"])
        .current_dir(t.dir.path())
        .env("CAPSULE_HOME", t.dir.path().join("capsule-home"))
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "util-linux `script` runs commands on a pseudo-terminal (apt-get install util-linux)",
        );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_no_secrets(&run, &t.secrets);
    run
}

#[test]
fn on_a_terminal_the_picker_and_confirmations_are_shown() {
    let t = Target::file();
    // The picker lists newest first: Enter picks the newest.
    let run = on_terminal(&t, &["pg", "--describe"], "\r").ok();
    assert!(run.stdout.contains("Describe which backup?"), "{run:#?}");
    assert!(
        run.stdout
            .contains(&format!("\"backupId\": \"{REQUESTED}\"")),
        "{run:#?}"
    );
    // --restore and --download only offer finished backups.
    let run = on_terminal(&t, &["pg", "--download"], "\r").ok();
    assert!(t.dumpdir().join(FINISHED).join(DUMP).is_file(), "{run:#?}");
    // Declining changes nothing and fails.
    let run = on_terminal(&t, &["pg", "--delete", "--id", FINISHED], "n").fails_with(1);
    assert!(
        run.stdout.contains(&format!(
            "Delete backup {FINISHED} (finished, 1.8 MiB)? [y/N]"
        )),
        "{run:#?}"
    );
    assert_eq!(t.objects(FINISHED).len(), 2);
    // Pick, then confirm.
    on_terminal(&t, &["pg", "--restore"], "\ry").ok();
    let sf = t.run(&["pg", "--describe", "--id", FINISHED]).ok().json();
    assert_eq!(sf["restores"].as_array().unwrap().len(), 2);
    on_terminal(&t, &["pg", "--delete", "--id", FINISHED], "y").ok();
    assert_eq!(t.objects(FINISHED), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn usage_errors_name_the_flag_and_exit_2() {
    let t = Target::file();
    let home = t.dir.path();
    let cases: &[(&[&str], &str)] = &[
        (&["--bucket-type", "foo", "pg", "--list"], "--bucket-type"),
        (
            &["--bucket-type", "foo", "--bucket-name", "b", "pg", "--list"],
            "--bucket-type",
        ),
        (&["--store", "s3//nope", "pg", "--list"], "--store"),
        (&["--store", "ftp://host/x", "pg", "--list"], "--store"),
        (&["--store", "relative/path", "pg", "--list"], "--store"),
        (&["pg", "--describe", "--id", "../etc/passwd"], "--id"),
        (&["redis", "--describe", "--id", FINISHED], "capsule pg"),
        (&["pg", "--list", "--status", "done"], "--status"),
        (&["pg", "--list", "--service", "noslash"], "--service"),
    ];
    for (args, named) in cases {
        let run = capsule(args, &[], home).fails_with(2);
        let line = run.error_line();
        assert!(
            line.contains(named),
            "{args:?} should name {named}: {run:#?}"
        );
    }
    let run = capsule(&["--bucket-type", "foo", "pg", "--list"], &[], home);
    assert!(run.stderr.contains("foo"), "{run:#?}");
    // clap's own errors.
    capsule(&["pg"], &[], home).fails_with(2);
    capsule(&["pg", "--list", "--delete"], &[], home).fails_with(2);
    capsule(&["pg", "--list", "--use-ssl=maybe"], &[], home).fails_with(2);
}

#[test]
fn an_unreachable_endpoint_fails_fast() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let home = TempDir::new().unwrap();
    let url = format!("s3://b?endpoint=http://127.0.0.1:{port}&region=us-east-1&allow_http=true");
    let started = Instant::now();
    let run = capsule(
        &[
            "--store",
            &url,
            "--access-key",
            "AKUNREACHABLE",
            "--secret-key",
            "unreachableSecret",
            "pg",
            "--list",
        ],
        &[],
        home.path(),
    )
    .fails_with(1);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        run.error_line().contains(&port.to_string()),
        "names the endpoint: {run:#?}"
    );
    assert_no_secrets(&run, &["unreachableSecret".into()]);
}

#[test]
fn wrong_keys_fail_without_printing_them() {
    let s3 = SeaweedFs::shared();
    let t = Target::seaweedfs();
    let wrong = "wrongSecretKey0123456789";
    let run = capsule(
        &[
            "--store",
            &t.flags[1],
            "--access-key",
            &s3.access_key,
            "--secret-key",
            wrong,
            "pg",
            "--list",
        ],
        &[("RUST_LOG", "trace")],
        t.dir.path(),
    )
    .fails_with(1);
    assert_no_secrets(
        &run,
        &[
            wrong.to_string(),
            s3.secret_key.clone(),
            s3.access_key.clone(),
        ],
    );
    let run = capsule(
        &[
            "--store",
            &t.flags[1],
            "--access-key",
            &s3.access_key,
            "--secret-key",
            wrong,
            "pg",
            "--list",
        ],
        &[],
        t.dir.path(),
    )
    .fails_with(1);
    let bucket = t.flags[1]["s3://".len()..].split('?').next().unwrap();
    assert!(
        run.error_line().contains(bucket),
        "names the bucket: {run:#?}"
    );
}

#[test]
fn a_missing_bucket_is_named() {
    let s3 = SeaweedFs::shared();
    let home = TempDir::new().unwrap();
    let bucket = unique("missing");
    for action in ["--list", "--create"] {
        let run = capsule(
            &[
                "--store",
                &s3.s3_url(&bucket),
                "--access-key",
                &s3.access_key,
                "--secret-key",
                &s3.secret_key,
                "pg",
                action,
            ],
            &[],
            home.path(),
        )
        .fails_with(1);
        assert!(run.error_line().contains(&bucket), "{action}: {run:#?}");
        assert_no_secrets(&run, &[s3.secret_key.clone(), s3.access_key.clone()]);
    }
}

#[test]
fn a_corrupt_statefile_is_listed_as_unreadable() {
    let t = Target::file();
    t.put(
        &format!("{FAILED}/statefile.json"),
        b"{not json at all".to_vec(),
    );
    let run = t.run(&["pg", "--list"]).ok();
    let row = run.stdout.lines().find(|l| l.starts_with(FAILED)).unwrap();
    assert!(row.contains(" unreadable"), "{run:#?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with(&format!("{FAILED}: unreadable: "))),
        "the reason is shown: {run:#?}"
    );
    let list = t.run(&["pg", "--list", "--json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 3);
    let e = entry(&list, FAILED);
    assert_eq!(e["status"], "unreadable");
    assert!(e["error"].as_str().unwrap().contains("JSON"), "{e:#}");
    assert_eq!(entry(&list, FINISHED)["status"], "finished");
    let only = t
        .run(&["pg", "--list", "--json", "--status", "unreadable"])
        .ok()
        .json();
    assert_eq!(ids(&only), [FAILED]);

    let run = t.run(&["pg", "--describe", "--id", FAILED]).fails_with(1);
    assert!(run.error_line().contains(FAILED), "{run:#?}");
}

// ---------------------------------------------------------------------------
// v1 backups: checked downloads
// ---------------------------------------------------------------------------

/// An engine whose "dump" is fixed bytes.
struct FakeEngine(Vec<u8>);

impl std::fmt::Display for FakeEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fake")
    }
}

#[async_trait::async_trait]
impl Engine for FakeEngine {
    fn service_type(&self) -> ServiceType {
        ServiceType::Postgresql
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn identity(&self) -> ServiceIdentity {
        ServiceIdentity::default()
    }
    async fn backup(
        &self,
        sink: &mut dyn ArtifactSink,
        _ctx: &JobContext<'_>,
    ) -> capsule_core::Result<EngineInfo> {
        let data = std::io::Cursor::new(self.0.clone());
        sink.put(ArtifactSpec::new("dump.bin", "raw"), Box::new(data))
            .await?;
        Ok(EngineInfo::default())
    }
    async fn restore(
        &self,
        _source: &dyn ArtifactSource,
        _ctx: &JobContext<'_>,
    ) -> capsule_core::Result<RestoreOutcome> {
        Err(capsule_core::Error::Unsupported("fake restore".into()))
    }
    async fn fingerprint(&self, _ctx: &JobContext<'_>) -> capsule_core::Result<Fingerprint> {
        Err(capsule_core::Error::Unsupported("fake fingerprint".into()))
    }
}

/// Runs a real v1 backup of `data` into `t`; returns its id and artifact key.
fn v1_backup(t: &Target, data: &[u8], compression: Compression) -> (String, String) {
    let catalog = Catalog::new(t.store.clone());
    let engine = FakeEngine(data.to_vec());
    let options = BackupOptions::default()
        .with_pipeline(PipelineOptions::default().with_compression(compression));
    let report =
        t.rt.block_on(capsule_core::run_backup(
            &catalog,
            &engine,
            options,
            &JobContext::new(&NoProgress),
        ))
        .expect("backup");
    let sf = report.statefile;
    let artifact = &sf.artifacts[0];
    (
        sf.backup_id.to_string(),
        format!("{}/{}", sf.backup_id, artifact.name),
    )
}

fn artifact_path(t: &Target, key: &str) -> PathBuf {
    t.dir.path().join("bucket").join(PREFIX).join(key)
}

#[test]
fn v1_downloads_are_verified_and_corruption_is_caught() {
    let t = Target::file();
    let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();

    for compression in [Compression::None, Compression::Zstd] {
        let (id, key) = v1_backup(&t, &data, compression);
        let local = t.dumpdir().join(&id).join("dump.bin");

        // Intact: verified, identical.
        let run = t.run(&["pg", "--download", "--id", &id]).ok();
        assert!(run.stdout.contains("sha256 verified"), "{run:#?}");
        assert!(std::fs::read(&local).unwrap() == data);
        let json = t
            .run(&["pg", "--download", "--id", &id, "--json"])
            .ok()
            .json();
        assert_eq!(json["files"][0]["checksumVerified"], true);
        assert_eq!(json["files"][0]["sizeBytes"], data.len());
        // The stored object's hash is the file's only when it is stored
        // as is.
        match compression {
            Compression::None => {
                assert_eq!(json["files"][0]["sha256"], json["files"][0]["storedSha256"])
            }
            _ => assert!(json["files"][0].get("sha256").is_none(), "{json}"),
        }
        std::fs::remove_dir_all(t.dumpdir()).unwrap();

        // One byte flipped, same length: checksum (or frame) mismatch.
        let path = artifact_path(&t, &key);
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        std::fs::write(&path, &flipped).unwrap();
        let run = t.run(&["pg", "--download", "--id", &id]).fails_with(1);
        let line = run.error_line();
        assert!(
            line.contains(&key) || line.contains("dump.bin"),
            "names the object: {run:#?}"
        );
        if compression == Compression::None {
            assert!(line.contains("checksum mismatch"), "{run:#?}");
        }
        assert!(
            !local.exists(),
            "no file at the final path after a bad checksum"
        );

        // Truncated: length mismatch.
        std::fs::write(&path, &good[..good.len() - 100]).unwrap();
        let run = t.run(&["pg", "--download", "--id", &id]).fails_with(1);
        let line = run.error_line();
        assert!(
            line.contains(&key) || line.contains("dump.bin"),
            "names the object: {run:#?}"
        );
        assert!(
            !local.exists(),
            "no file at the final path after truncation"
        );
    }
}

// ---------------------------------------------------------------------------
// Secrets in --help, version, completion
// ---------------------------------------------------------------------------

#[test]
fn help_does_not_show_secret_environment_values() {
    let home = TempDir::new().unwrap();
    let secrets = [
        ("CNVRG_CAPSULE_ACCESS_KEY", "AKIAHELPSECRET"),
        ("CNVRG_CAPSULE_SECRET_KEY", "helpSecretKey0123"),
        ("CNVRG_CAPSULE_ACCOUNT_KEY", "helpAccountKey0123"),
        (
            "CNVRG_CAPSULE_KEY_JSON",
            "{\"private_key\":\"helpPrivateKey\"}",
        ),
        (
            "CNVRG_CAPSULE_STORE",
            "s3://b?secret_access_key=helpUrlSecret",
        ),
        (
            "CNVRG_CAPSULE_ENDPOINT",
            "http://user:helpEndpointPass@minio:9000",
        ),
    ];
    for args in [
        &["--help"][..],
        &["pg", "--help"][..],
        &["-h"][..],
        &["pg", "-h"][..],
    ] {
        let run = capsule(args, &secrets, home.path()).ok();
        for (name, value) in secrets {
            assert!(
                !run.stdout.contains(value),
                "{name} value shown by {args:?}:\n{}",
                run.stdout
            );
        }
        assert!(
            [
                "helpSecretKey",
                "helpAccountKey",
                "helpPrivateKey",
                "helpUrlSecret",
                "helpEndpointPass"
            ]
            .iter()
            .all(|s| !run.stdout.contains(s) && !run.stderr.contains(s))
        );
        assert!(
            run.stdout.contains("CNVRG_CAPSULE_SECRET_KEY"),
            "env names are documented"
        );
    }
    let run = capsule(&["--help"], &[], home.path()).ok();
    for flag in [
        "--verbose",
        "--dumpdir",
        "--auto-discovery",
        "--ns-whitelist",
        "--kubeconfig",
        "--endpoint",
        "--region",
        "--access-key",
        "--secret-key",
        "--use-ssl",
        "--bucket-name",
        "--dst-dir",
        "--bucket-type",
        "--account-name",
        "--account-key",
        "--key-json",
        "--project-id",
        "--store",
        "--json",
        "--yes",
        "CAPSULE_HOME",
    ] {
        assert!(run.stdout.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn version_and_completion() {
    let home = TempDir::new().unwrap();
    let run = capsule(&["version"], &[], home.path()).ok();
    assert_eq!(
        run.stdout.trim(),
        format!("capsule {}", env!("CARGO_PKG_VERSION"))
    );
    let v = capsule(&["version", "--json"], &[], home.path())
        .ok()
        .json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    for shell in ["bash", "zsh", "fish"] {
        let run = capsule(&["completion", shell], &[], home.path()).ok();
        assert!(
            run.stdout.contains("capsule") && run.stdout.contains("bucket-type"),
            "{shell}"
        );
    }
    capsule(&["completion", "tcsh"], &[], home.path()).fails_with(2);
}

#[test]
fn the_default_store_is_local() {
    let home = TempDir::new().unwrap();
    let run = capsule(&["pg", "--list", "--json"], &[], home.path()).ok();
    assert_eq!(run.json(), serde_json::json!([]));
    let id = capsule(&["pg", "--create"], &[], home.path())
        .ok()
        .stdout
        .trim()
        .to_string();
    let statefile = home
        .path()
        .join("capsule-home")
        .join(PREFIX)
        .join(&id)
        .join("statefile.json");
    assert!(statefile.is_file(), "{statefile:?}");
}

/// A memory:// store lasts as long as the process: a backup into it,
/// run now or queued, is refused rather than reported finished.
#[test]
fn a_backup_into_a_memory_store_and_list_with_an_id_are_refused() {
    let home = TempDir::new().unwrap();
    for args in [
        &[
            "--store",
            "memory://",
            "redis",
            "--create",
            "--redis-url",
            "redis://127.0.0.1:1",
        ][..],
        &["--store", "memory://", "pg", "--create"],
    ] {
        let run = capsule(args, &[], home.path()).fails_with(2);
        assert!(error(&run).contains("--store memory://"), "{run:#?}");
    }
    capsule(&["--store", "memory://", "pg", "--list"], &[], home.path()).ok();
    // --list takes no --id (it would be ignored, showing every backup).
    let run = capsule(&["pg", "--list", "--id", "postgresql-x"], &[], home.path()).fails_with(2);
    assert!(error(&run).contains("--describe --id"), "{run:#?}");
}

// ---------------------------------------------------------------------------
// Redis: backups, restores, drills and downloads run now with --redis-url
// ---------------------------------------------------------------------------

mod redis {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use test_support::redis::{Redis, RedisConfig};

    use super::*;

    /// `redis --restore --id ID --yes --redis-url URL` and `more`.
    fn restore_args(id: &str, url: &str, more: &[&str]) -> Vec<String> {
        [
            "redis",
            "--restore",
            "--id",
            id,
            "--yes",
            "--redis-url",
            url,
        ]
        .into_iter()
        .chain(more.iter().copied())
        .map(String::from)
        .collect()
    }

    fn fill(redis: &Redis, keys: usize) {
        let mut c = redis.client();
        for i in 0..keys {
            let k = format!("key:{i}");
            match i % 4 {
                0 => c.send(&[b"SET", k.as_bytes(), b"value"]),
                1 => c.send(&[b"RPUSH", k.as_bytes(), b"a", b"b"]),
                2 => c.send(&[b"HSET", k.as_bytes(), b"f", b"v"]),
                _ => c.send(&[b"SADD", k.as_bytes(), b"1", b"2"]),
            }
        }
        c.send(&[b"SELECT", b"3"]);
        c.send(&[b"SET", b"elsewhere", b"x", b"EX", b"86400"]);
        c.flush();
        for _ in 0..keys + 2 {
            c.read();
        }
    }

    /// The `error: ...` line (the core also logs the failure as a warning).
    fn error(run: &Run) -> &str {
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "expected one error line:\n{run:#?}");
        errors[0]
    }

    #[test]
    fn create_restore_verify_and_download_run_now_with_a_url() {
        let t = Target::file();
        let redis = Redis::start_with(RedisConfig::default().with_password("cl1-Redis-Pw"));
        fill(&redis, 400);
        let digest = redis.digest();
        let url = redis.url();
        let secrets = ["cl1-Redis-Pw".to_string()];

        let run = t
            .run_traced(&["redis", "--create", "--redis-url", &url])
            .ok();
        assert_no_secrets(&run, &secrets);
        let id = run.stdout.trim().to_string();
        assert!(id.starts_with("redis-"), "{run:#?}");
        assert!(run.stderr.contains("by replication"), "{run:#?}");
        let sf = statefile(&t, &id);
        assert_eq!(sf["status"], "finished");
        assert_eq!(sf["engine"]["fingerprint"]["counts"]["db0"], 400);
        assert_eq!(sf["engine"]["fingerprint"]["counts"]["db3"], 1);
        assert_eq!(sf["artifacts"][0]["name"], "dump.rdb.zst");
        assert!(!sf.to_string().contains("cl1-Redis-Pw"));

        // Restore: refused without --yes and no terminal; flushes with --flush.
        redis.cmd(&[b"FLUSHALL"]);
        redis.cmd(&[b"SET", b"stray", b"key"]);
        let run = t.run(&["redis", "--restore", "--id", &id, "--redis-url", &url]);
        run.fails_with(2);
        let run = t
            .run_env(
                &[
                    "redis",
                    "--restore",
                    "--id",
                    &id,
                    "--flush",
                    "--yes",
                    "--redis-url",
                    "redis://127.0.0.1:1",
                ],
                &[],
            )
            .fails_with(1);
        assert!(error(&run).contains("127.0.0.1:1"), "{run:#?}");
        // The password may come from the legacy variable instead of the URL.
        let plain = format!("redis://127.0.0.1:{}", redis.port);
        let run = t
            .run_env(
                &[
                    "redis",
                    "--restore",
                    "--id",
                    &id,
                    "--flush",
                    "--yes",
                    "--redis-url",
                    &plain,
                ],
                &[("CNVRG_REDIS_PASSWORD", "cl1-Redis-Pw")],
            )
            .ok();
        assert!(
            run.stdout.contains("(flush)") && run.stdout.contains("401 keys"),
            "{run:#?}"
        );
        assert_eq!(redis.digest(), digest);
        // A --flush restore loads by replication where it can; --redis-load
        // commands sends RESTOREs.
        let flush_restore = |load: &[&str]| -> Vec<String> {
            ["redis", "--restore", "--id", &id, "--flush", "--yes"]
                .into_iter()
                .chain(["--redis-url", &url])
                .chain(load.iter().copied())
                .map(String::from)
                .collect()
        };
        for (load, logged) in [
            (&[][..], "load=replication"),
            (&["--redis-load", "commands"][..], "load=commands"),
        ] {
            redis.cmd(&[b"SET", b"stray", b"key"]);
            let args = flush_restore(load);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let run = t.run_traced(&args).ok();
            assert!(run.stderr.contains(logged), "{run:#?}");
            assert_no_secrets(&run, &secrets);
            assert_eq!(redis.digest(), digest);
        }
        // Without --flush, into an empty server, the log points at --flush.
        redis.cmd(&[b"FLUSHALL"]);
        let restore = |more: &[&str]| restore_args(&id, &url, more);
        let args = restore(&[]);
        let run = t
            .run_traced(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .ok();
        assert!(
            run.stderr
                .contains("with --flush it would load the RDB by replication"),
            "{run:#?}"
        );
        assert_eq!(redis.digest(), digest);
        let args = flush_restore(&["--redis-load", "sideways"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = t.run(&args).fails_with(2);
        assert!(error(&run).contains("--redis-load"), "{run:#?}");
        // Replication replaces the whole target: a usage error without
        // --flush, refused before a restore is recorded.
        let restores = statefile(&t, &id)["restores"].as_array().unwrap().len();
        let args = restore(&["--redis-load", "replication"]);
        let run = t
            .run(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .fails_with(2);
        assert!(error(&run).contains("needs --flush"), "{run:#?}");
        assert_eq!(
            statefile(&t, &id)["restores"].as_array().unwrap().len(),
            restores
        );

        // Verify: a drill on a redis-server capsule starts itself.
        let run = t
            .run(&["redis", "--verify", "--id", &id, "--redis-url", &url])
            .ok();
        assert!(run.stdout.contains("verification passed"), "{run:#?}");
        assert_eq!(statefile(&t, &id)["verifications"][0]["status"], "passed");

        // Download: a dump.rdb that redis-server loads. The stored hash is
        // of dump.rdb.zst, so --json gives no sha256 of the file.
        let json = t
            .run(&["redis", "--download", "--id", &id, "--json"])
            .ok()
            .json();
        assert!(json["files"][0]["storedSha256"].is_string(), "{json}");
        assert!(json["files"][0].get("sha256").is_none(), "{json}");
        let rdb = t.dumpdir().join(&id).join("dump.rdb");
        let loaded = Redis::start_with(RedisConfig::default().with_rdb(&rdb));
        assert_eq!(loaded.digest(), digest);

        // Without a URL, --create still queues and --flush is refused; a
        // drill needs none (it never touches the server backed up).
        let run = t.run(&["redis", "--create"]).ok();
        let queued = run.stdout.trim().to_string();
        assert_eq!(statefile(&t, &queued)["status"], "requested");
        t.run(&["redis", "--restore", "--id", &id, "--flush", "--yes"])
            .fails_with(2);
        let run = t.run(&["redis", "--verify", "--id", &id]).ok();
        assert!(run.stdout.contains("verification passed"), "{run:#?}");
        let scratch = Redis::start();
        let run = t
            .run(&[
                "redis",
                "--verify",
                "--id",
                &id,
                "--verify-url",
                &scratch.url(),
            ])
            .ok();
        assert!(run.stdout.contains("verification passed"), "{run:#?}");
        // The production server given as the scratch one by mistake: refused,
        // nothing lost.
        let run = t
            .run(&["redis", "--verify", "--id", &id, "--verify-url", &url])
            .fails_with(1);
        assert!(
            error(&run).contains("holds") && error(&run).contains("nothing was changed"),
            "{run:#?}"
        );
        assert_eq!(redis.digest(), digest);
        // The three drills that ran are recorded; the refused one read
        // nothing of the backup (no verdict) and is not.
        let verifications = statefile(&t, &id)["verifications"].clone();
        let statuses: Vec<&str> = verifications
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["passed"; 3], "{verifications:#}");
    }

    #[test]
    fn a_wrong_password_is_a_one_line_error_without_the_password() {
        let t = Target::file();
        let redis = Redis::start_with(RedisConfig::default().with_password("r1ght-pw"));
        let url = format!("redis://:Wr0ng-Secret-9@127.0.0.1:{}", redis.port);
        let run = t
            .run_traced(&["redis", "--create", "--redis-url", &url])
            .fails_with(1);
        assert_no_secrets(&run, &["Wr0ng-Secret-9".to_string()]);
        assert!(run.stderr.contains("WRONGPASS"), "{run:#?}");
        let run = t
            .run(&["redis", "--create", "--redis-url", &url])
            .fails_with(1);
        let line = error(&run);
        assert!(
            line.contains("authentication") && line.contains("127.0.0.1"),
            "{line}"
        );
        // Said once: no log line repeating the error above it.
        assert_eq!(run.stderr.matches("WRONGPASS").count(), 1, "{run:#?}");
        let run = t
            .run(&[
                "redis",
                "--create",
                "--redis-url",
                "redis://u:Wr0ng-Secret-9@host:notaport",
            ])
            .fails_with(2);
        assert!(error(&run).contains("--redis-url"), "{run:#?}");
        assert_no_secrets(&run, &["Wr0ng-Secret-9".to_string()]);
    }

    /// A restore says how many keys it restored and how many it skipped
    /// because they expired since the backup, on the terminal and in JSON,
    /// with or without --flush.
    #[test]
    fn a_restore_reports_keys_restored_and_expired_ones_skipped() {
        let t = Target::file();
        let redis = Redis::start();
        fill(&redis, 20);
        redis.cmd(&[b"SET", b"short-lived", b"v", b"PX", b"1200"]);
        let url = redis.url();
        let id = t
            .run(&["redis", "--create", "--redis-url", &url])
            .ok()
            .stdout
            .trim()
            .to_string();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let restore = |more: &[&str]| {
            let args = restore_args(&id, &url, more);
            t.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .ok()
        };
        let run = restore(&["--flush"]);
        assert!(
            run.stdout
                .contains(": 21 keys in 2 databases (1 expired by now, skipped), loaded by "),
            "{run:#?}"
        );
        let run = restore(&["--json"]);
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(v["restored"]["db0"], 20, "{v}");
        assert_eq!(v["restored"]["db3"], 1, "{v}");
        assert_eq!(v["skippedExpired"]["db0"], 1, "{v}");
        assert_eq!(v["load"], "commands", "{v}");
        assert_eq!(redis.cmd(&[b"EXISTS", b"short-lived"]).text(), "0");
        assert_eq!(redis.cmd(&[b"EXISTS", b"key:0"]).text(), "1");
    }

    /// Unescaped `#`, `/`, `?` in a password end a URL parser's authority
    /// early; the password must not show anyway. An ACL user name is not a
    /// secret: a user called `redis` must not mask every `redis-…` id.
    #[test]
    fn odd_passwords_stay_hidden_and_user_names_are_not_masked() {
        let t = Target::file();
        for url in [
            "redis://backup:Pw#Secret-9@127.0.0.1:7901",
            "redis://:Pw/Secret-9@127.0.0.1:7901",
            "redis://backup:Pw?Secret-9@127.0.0.1:7901",
        ] {
            let run = t
                .run(&["redis", "--create", "--redis-url", url])
                .fails_with(2);
            assert!(error(&run).contains("--redis-url"), "{run:#?}");
            assert!(
                !format!("{}{}", run.stdout, run.stderr).contains("Secret-9"),
                "{run:#?}"
            );
        }
        let redis =
            Redis::start_with(RedisConfig::default().with_user("redis", "Us3r-Secret-9", "+@all"));
        fill(&redis, 10);
        let url = format!("redis://redis:Us3r-Secret-9@127.0.0.1:{}", redis.port);
        let run = t.run(&["redis", "--create", "--redis-url", &url]).ok();
        let id = run.stdout.trim();
        assert!(id.starts_with("redis-") && !id.contains("***"), "{run:#?}");
        let run = t.run(&["redis", "--list"]).ok();
        assert!(run.stdout.contains(id), "{run:#?}");
        let run = t
            .run_traced(&["redis", "--describe", "--id", id, "--redis-url", &url])
            .ok();
        assert_no_secrets(&run, &["Us3r-Secret-9".to_string()]);
    }

    /// The statefile status of the only backup under `root`, once there is one.
    fn only_status(root: &Path) -> Option<(String, String)> {
        let dir = std::fs::read_dir(root.join(PREFIX)).ok()?.next()?.ok()?;
        let bytes = std::fs::read(dir.path().join("statefile.json")).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        Some((
            dir.file_name().into_string().ok()?,
            v["status"].as_str()?.to_string(),
        ))
    }

    #[test]
    fn killing_capsule_mid_capture_never_leaves_finished() {
        let redis =
            Redis::start_with(RedisConfig::default().with_args(&["--rdb-key-save-delay", "1000"]));
        fill(&redis, 20_000);
        let home = TempDir::new().unwrap();
        let root = home.path().join("store");
        let store = format!("file://{}", root.display());
        let mut child = Command::new(env!("CARGO_BIN_EXE_capsule"))
            .args([
                "--store",
                &store,
                "redis",
                "--create",
                "--redis-url",
                &redis.url(),
            ])
            .current_dir(home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the capture is streaming (the server sees a replica).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let replicas = redis.cmd(&[b"INFO", b"replication"]).text();
            if replicas.contains("connected_slaves:1") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no replica connected: {replicas}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        child.kill().unwrap();
        child.wait().unwrap();
        let (id, status) = only_status(&root).expect("a statefile");
        assert_eq!(status, "running", "backup {id}");
        assert!(!root.join(PREFIX).join(&id).join("dump.rdb.zst").exists());
        // A later list shows it, never as finished.
        let run = capsule(
            &["--store", &store, "redis", "--list", "--json"],
            &[],
            home.path(),
        )
        .ok();
        assert_ne!(entry(&run.json(), &id)["status"], "finished");
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL: backups, restores and drills run now with --pg-url (or PG*)
// ---------------------------------------------------------------------------

mod pg {
    use test_support::postgres::{PASSWORD, PASSWORD_USER, Postgres};

    use super::*;

    fn pg() -> &'static Postgres {
        Postgres::shared()
    }

    /// libpq variables blanked, so a developer's environment cannot turn
    /// a queued request into a run now (the CLI treats empty as unset).
    const NO_LIBPQ: [(&str, &str); 5] = [
        ("PGHOST", ""),
        ("PGPORT", ""),
        ("PGUSER", ""),
        ("PGDATABASE", ""),
        ("PGPASSWORD", ""),
    ];

    /// A new database holding two tables, a view, a sequence and non-ASCII
    /// text; returns its name.
    fn sample_db(prefix: &str) -> String {
        let db = Postgres::unique_name(prefix);
        pg().create_database(&db, None);
        pg().psql(
            &db,
            "CREATE TABLE t (id int PRIMARY KEY, name text, data bytea);
             INSERT INTO t SELECT i, 'Zoë ' || i, decode(md5(i::text), 'hex')
               FROM generate_series(1, 500) i;
             CREATE TABLE u (id bigserial PRIMARY KEY, t_id int REFERENCES t);
             INSERT INTO u (t_id) SELECT 1 + i % 500 FROM generate_series(1, 1200) i;
             CREATE VIEW v AS SELECT t_id, count(*) FROM u GROUP BY t_id;
             CREATE SEQUENCE s START 40; SELECT setval('s', 42);",
        );
        db
    }

    /// Gives `db` database-level properties a restore must carry over: a
    /// comment, a setting and a grant (to a new role, returned).
    fn database_properties(db: &str) -> String {
        let reader = Postgres::unique_name("cli_pg_reader");
        pg().psql("postgres", &format!("CREATE ROLE {reader} NOLOGIN"));
        pg().psql(
            "postgres",
            &format!("COMMENT ON DATABASE {db} IS 'Zoë''s db'"),
        );
        pg().psql(
            "postgres",
            &format!("ALTER DATABASE {db} SET work_mem = '7MB'"),
        );
        pg().psql(
            "postgres",
            &format!("GRANT CONNECT ON DATABASE {db} TO {reader}"),
        );
        reader
    }

    /// The comment, settings and grants of database `db`.
    fn properties_of(db: &str) -> String {
        pg().psql(
            "postgres",
            &format!(
                "SELECT shobj_description(d.oid, 'pg_database') || ' | ' || \
                 coalesce((SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting \
                   WHERE setdatabase = d.oid AND setrole = 0), '') || ' | ' || \
                 array_to_string(d.datacl, ',') FROM pg_database d WHERE datname = '{db}'"
            ),
        )
    }

    fn counts(db: &str) -> String {
        pg().psql(
            db,
            "SELECT (SELECT count(*) FROM t) || '/' || (SELECT count(*) FROM u) || '/' || \
             (SELECT count(*) FROM v) || '/' || (SELECT last_value FROM s)",
        )
    }

    #[test]
    fn create_verify_and_restore_run_now_with_a_url() {
        let t = Target::file();
        let db = sample_db("cli_pg");
        let url = pg().url(&db);
        let before = counts(&db);
        assert_eq!(before, "500/1200/500/42");
        let reader = database_properties(&db);
        let props = properties_of(&db);
        assert!(
            props.starts_with("Zoë's db | work_mem=7MB | ") && props.contains(&reader),
            "{props}"
        );

        // --create: the id on stdout, a summary on stderr.
        let run = t.run_traced(&["pg", "--create", "--pg-url", &url]).ok();
        let id = run.stdout.trim().to_string();
        assert!(id.starts_with("postgresql-"), "{run:#?}");
        assert!(
            run.stderr.contains("2 tables (1700 rows), 2 sequences"),
            "{run:#?}"
        );
        let sf = statefile(&t, &id);
        assert_eq!(sf["status"], "finished");
        assert_eq!(sf["engine"]["database"], db.as_str());
        assert_eq!(sf["engine"]["fingerprint"]["counts"]["public.t"], 500);
        assert_eq!(sf["engine"]["fingerprint"]["values"]["public.s"], "42");
        let names: Vec<&str> = sf["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["roles.sql.zst", "dump.pgc.zst"]);
        // --json: the statefile.
        let run = t.run(&["pg", "--create", "--pg-url", &url, "--json"]).ok();
        assert_eq!(run.json()["status"], "finished");
        // --list tells backups of different databases apart.
        let label = format!("127.0.0.1:{}/{db}", pg().port);
        let run = t.run(&["pg", "--list"]).ok();
        let row = run.stdout.lines().find(|l| l.starts_with(&id)).unwrap();
        assert!(row.contains(&format!(" {label} ")), "{run:#?}");
        let list = t.run(&["pg", "--list", "--json"]).ok().json();
        let listed = entry(&list, &id);
        assert_eq!(listed["endpoint"], format!("127.0.0.1:{}", pg().port));
        assert_eq!(listed["database"], db.as_str());

        // --verify: every table compared, the result recorded.
        let run = t
            .run(&["pg", "--verify", "--id", &id, "--pg-url", &url])
            .ok();
        assert!(run.stdout.contains("verification passed"), "{run:#?}");
        for object in ["public.t ", "public.u ", "public.s ", "public.u_id_seq "] {
            let line = run.stdout.lines().find(|l| l.starts_with(object));
            assert!(
                line.is_some_and(|l| l.ends_with(" ok")),
                "{object}: {run:#?}"
            );
        }
        assert_eq!(statefile(&t, &id)["verifications"][0]["status"], "passed");
        assert!(
            pg().databases_like(&format!("{db}__capsule_verify"))
                .is_empty()
        );

        // --restore: refused without --yes and without a terminal, nothing changed.
        pg().psql(&db, "DELETE FROM u WHERE id > 1000");
        let run = t.run(&["pg", "--restore", "--id", &id, "--pg-url", &url]);
        run.fails_with(2);
        assert!(pg().databases_like(&format!("{db}__")).is_empty());
        // Safe (default): restored beside, swapped, the previous one kept.
        let run = t
            .run(&["pg", "--restore", "--id", &id, "--pg-url", &url, "--yes"])
            .ok();
        assert!(run.stdout.contains("(safe-swap)"), "{run:#?}");
        let prev = pg().databases_like(&format!("{db}__capsule_prev_"));
        assert_eq!(prev.len(), 1, "{run:#?}");
        assert!(
            run.stdout.contains(&format!("kept as {}", prev[0])),
            "{run:#?}"
        );
        assert!(run.stdout.contains("roles created: none"), "{run:#?}");
        assert_eq!(counts(&db), before);
        assert_eq!(properties_of(&db), props);
        assert_eq!(
            pg().psql(&prev[0], "SELECT count(*) FROM u"),
            "1000",
            "the previous database is kept as it was"
        );
        // --drop-previous: nothing kept.
        let run = t
            .run(&[
                "pg",
                "--restore",
                "--id",
                &id,
                "--pg-url",
                &url,
                "--yes",
                "--drop-previous",
                "--json",
            ])
            .ok();
        assert_eq!(run.json()["previousDatabase"], Value::Null);
        assert_eq!(run.json()["previousDatabaseDropped"], true, "{run:#?}");
        assert_eq!(pg().databases_like(&format!("{db}__capsule_prev_")), prev);
        // ... into a database that does not exist: created, nothing dropped.
        let fresh = format!("{db}_fresh");
        let fresh_url = pg().url(&fresh);
        let args = [
            "pg",
            "--restore",
            "--id",
            &id,
            "--pg-url",
            &fresh_url,
            "--yes",
            "--drop-previous",
        ];
        let run = t.run(&args).ok();
        assert!(
            run.stdout
                .contains(&format!("database {fresh} did not exist: created")),
            "{run:#?}"
        );
        assert!(!run.stdout.contains("dropped"), "{run:#?}");
        assert_eq!(counts(&fresh), before);
        pg().psql("postgres", &format!("DROP DATABASE \"{fresh}\""));
        // --target-db: a copy beside the live one.
        let copy = format!("{db}_copy");
        let run = t
            .run(&[
                "pg",
                "--restore",
                "--id",
                &id,
                "--pg-url",
                &url,
                "--yes",
                "--target-db",
                &copy,
            ])
            .ok();
        assert!(
            run.stdout.contains(&format!("/{copy} (target-db)")),
            "{run:#?}"
        );
        assert_eq!(counts(&copy), before);
        assert_eq!(
            properties_of(&copy),
            props,
            "the copy has the same comment, settings and grants"
        );
        // ... refused when it exists.
        let run = t
            .run(&[
                "pg",
                "--restore",
                "--id",
                &id,
                "--pg-url",
                &url,
                "--yes",
                "--target-db",
                &copy,
            ])
            .fails_with(1);
        assert!(error(&run).contains("already exists"), "{run:#?}");
        // --in-place: the legacy behaviour.
        pg().psql(&db, "DELETE FROM u");
        let run = t
            .run(&[
                "pg",
                "--restore",
                "--id",
                &id,
                "--pg-url",
                &url,
                "--yes",
                "--in-place",
            ])
            .ok();
        assert!(run.stdout.contains("(in-place)"), "{run:#?}");
        assert_eq!(counts(&db), before);
        let restores = &statefile(&t, &id)["restores"];
        let modes: Vec<String> = restores
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["mode"].as_str().unwrap(),
                    r["status"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            modes,
            [
                "safe-swap finished",
                "safe-swap finished",
                "safe-swap finished",
                "target-db finished",
                "target-db failed",
                "in-place finished"
            ]
        );

        // Conflicting or misplaced flags are usage errors.
        for args in [
            &["--in-place", "--target-db", "x"][..],
            &["--in-place", "--drop-previous"],
            &["--target-db", "x", "--drop-previous"],
        ] {
            let mut all = vec!["pg", "--restore", "--id", &id, "--pg-url", &url, "--yes"];
            all.extend(args);
            t.run(&all).fails_with(2);
        }
        let run = t
            .run(&["pg", "--create", "--pg-url", &url, "--in-place"])
            .fails_with(2);
        assert!(
            error(&run).contains("--in-place applies to --restore"),
            "{run:#?}"
        );

        // Without connection settings: --create queues, --verify and the
        // restore modes need them.
        let run = t.run_env(&["pg", "--create"], &NO_LIBPQ).ok();
        let queued = run.stdout.trim().to_string();
        assert_eq!(statefile(&t, &queued)["status"], "requested");
        let run = t
            .run_env(&["pg", "--verify", "--id", &id], &NO_LIBPQ)
            .fails_with(2);
        assert!(error(&run).contains("--pg-url"), "{run:#?}");
        t.run_env(
            &["pg", "--restore", "--id", &id, "--in-place", "--yes"],
            &NO_LIBPQ,
        )
        .fails_with(2);
    }

    /// Ctrl-C or SIGTERM while pg_restore runs cleans up as
    /// docs/postgresql.md says: a safe, target-db or drill restore drops
    /// the database it was creating, an in-place one says the live
    /// database may be partly restored; exit 130 either way.
    #[test]
    fn an_interrupted_restore_or_drill_cleans_up_and_says_so() {
        let t = Target::file();
        let db = sample_db("cli_pg_int");
        let id = t
            .run(&["pg", "--create", "--pg-url", &pg().url(&db)])
            .ok()
            .stdout
            .trim()
            .to_string();
        // capsule and pg_restore reach the server through a slow link, so
        // pg_restore is still at work when the signal comes.
        let proxy = TcpProxy::start(pg().port);
        proxy.set(NetFault::Delay(Duration::from_millis(40)));
        let url = format!("postgres://postgres@127.0.0.1:{}/{db}", proxy.port);
        let target = Postgres::unique_name("cli_pg_int_target");
        let runs: [(&[&str], &str, String); 4] = [
            (
                &["--restore", "--yes"],
                "dropped again",
                format!("{db}__capsule_restore_"),
            ),
            (
                &["--restore", "--yes", "--target-db", &target],
                "dropped again",
                target.clone(),
            ),
            (
                &["--verify"],
                "dropped again",
                format!("{db}__capsule_verify_"),
            ),
            (
                &["--restore", "--yes", "--in-place"],
                "run the restore again",
                format!("{db}__capsule_"),
            ),
        ];
        for (flags, says, leftover) in runs {
            let mut args: Vec<&str> = t.flags.iter().map(String::as_str).collect();
            args.extend(["pg", "--id", &id, "--pg-url", &url]);
            args.extend(flags);
            let child = capsule_command(&args, &[], t.dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let restoring = || {
                pg().psql(
                    "postgres",
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_restore'",
                ) != "0"
            };
            let stderr = interrupted_when(
                child,
                restoring,
                Duration::from_secs(60),
                &format!("{flags:?}"),
            );
            assert!(stderr.contains(says), "{flags:?}: {stderr}");
            assert_eq!(
                pg().databases_like(&leftover),
                Vec::<String>::new(),
                "{flags:?}"
            );
        }
        // The restore history says what happened to each; the stopped
        // drill, which learned nothing of the backup, is not recorded.
        let sf = statefile(&t, &id);
        assert_eq!(sf["verifications"], serde_json::json!([]), "{sf:#}");
        let restores = sf["restores"].as_array().unwrap();
        assert_eq!(restores.len(), 3, "{sf:#}");
        assert!(restores.iter().all(|r| r["status"] == "failed"), "{sf:#}");
        // Run again without the slow link, the in-place restore brings the
        // backup back.
        t.run(&[
            "pg",
            "--restore",
            "--id",
            &id,
            "--pg-url",
            &pg().url(&db),
            "--in-place",
            "--yes",
        ])
        .ok();
        assert_eq!(counts(&db), "500/1200/500/42");
    }

    #[test]
    fn libpq_variables_are_connection_settings() {
        let t = Target::file();
        let db = sample_db("cli_pg_env");
        let port = pg().port.to_string();
        let env = [
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", port.as_str()),
            ("PGUSER", PASSWORD_USER),
            ("PGDATABASE", db.as_str()),
            ("PGPASSWORD", PASSWORD),
        ];
        let run = t.run_env(&["pg", "--create"], &env).ok();
        assert_no_secrets(&run, &[PASSWORD.to_string()]);
        let id = run.stdout.trim().to_string();
        let sf = statefile(&t, &id);
        assert_eq!(sf["status"], "finished", "{run:#?}");
        assert_eq!(sf["engine"]["database"], db.as_str());
        assert!(!sf.to_string().contains(PASSWORD));
        let run = t.run_env(&["pg", "--verify", "--id", &id], &env).ok();
        assert!(run.stdout.contains("verification passed"), "{run:#?}");
        // A --pg-url wins over the variables.
        let other = sample_db("cli_pg_env_other");
        let run = t
            .run_env(&["pg", "--create", "--pg-url", &pg().url(&other)], &env)
            .ok();
        let sf = statefile(&t, run.stdout.trim());
        assert_eq!(sf["engine"]["database"], other.as_str());
    }

    #[test]
    fn passwords_never_show_and_errors_are_one_line() {
        let t = Target::file();
        let db = sample_db("cli_pg_pw");
        let good = pg().url_with_password(&db, PASSWORD);
        let secrets = [PASSWORD.to_string(), "Wr0ng-Pg-Secret-7".to_string()];

        // The right password, with every library's logs on: never printed.
        let run = t.run_traced(&["pg", "--create", "--pg-url", &good]).ok();
        assert_no_secrets(&run, &secrets);
        let id = run.stdout.trim().to_string();
        assert!(!statefile(&t, &id).to_string().contains(PASSWORD));
        let run = t
            .run_traced(&["pg", "--verify", "--id", &id, "--pg-url", &good])
            .ok();
        assert_no_secrets(&run, &secrets);
        let run = t
            .run_traced(&["pg", "--restore", "--id", &id, "--pg-url", &good, "--yes"])
            .ok();
        assert_no_secrets(&run, &secrets);

        // A wrong password: one line naming the server, exit 1.
        let bad = pg().url_with_password(&db, "Wr0ng-Pg-Secret-7");
        for action in [
            vec!["pg", "--create", "--pg-url", &bad],
            vec!["pg", "--verify", "--id", &id, "--pg-url", &bad],
            vec!["pg", "--restore", "--id", &id, "--pg-url", &bad, "--yes"],
        ] {
            let run = t.run(&action).fails_with(1);
            assert_no_secrets(&run, &secrets);
            let line = error(&run);
            assert!(
                line.contains("password authentication failed") && line.contains("127.0.0.1"),
                "{line}"
            );
            let run = t.run_traced(&action).fails_with(1);
            assert_no_secrets(&run, &secrets);
        }
        // ... also from PGPASSWORD.
        let plain = format!("postgres://{PASSWORD_USER}@127.0.0.1:{}/{db}", pg().port);
        let run = t
            .run_env(
                &["pg", "--create", "--pg-url", &plain],
                &[("PGPASSWORD", "Wr0ng-Pg-Secret-7"), ("RUST_LOG", "trace")],
            )
            .fails_with(1);
        assert_no_secrets(&run, &secrets);
        // A passfile (0600) supplies it when the URL has none.
        let passfile = t.dir.path().join("pgpass");
        std::fs::write(&passfile, format!("*:*:*:{PASSWORD_USER}:{PASSWORD}\n")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let run = t
            .run_env(
                &["pg", "--create", "--pg-url", &plain],
                &[
                    ("PGPASSFILE", passfile.to_str().unwrap()),
                    ("RUST_LOG", "trace"),
                ],
            )
            .ok();
        assert_no_secrets(&run, &secrets);
        // A passfile others can read is ignored, and said so once, though
        // the backup resolves its password several times.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let run = t
            .run_env(
                &["pg", "--create", "--pg-url", &plain],
                &[("PGPASSFILE", passfile.to_str().unwrap())],
            )
            .fails_with(1);
        assert_eq!(
            run.stderr
                .matches("passfile has group or world access")
                .count(),
            1,
            "{run:#?}"
        );
        assert_no_secrets(&run, &secrets);

        // A malformed URL: a usage error naming the flag, without the password.
        let run = t
            .run(&[
                "pg",
                "--create",
                "--pg-url",
                "postgres://u:Wr0ng-Pg-Secret-7@host:notaport/x",
            ])
            .fails_with(2);
        assert!(error(&run).starts_with("error: --pg-url: "), "{run:#?}");
        assert_no_secrets(&run, &secrets);
        // An unreachable server: one line, exit 1.
        let run = t
            .run(&[
                "pg",
                "--create",
                "--pg-url",
                "postgres://postgres@127.0.0.1:1/x",
            ])
            .fails_with(1);
        assert!(error(&run).contains("127.0.0.1:1"), "{run:#?}");
        // A missing backup.
        let run = t
            .run(&[
                "pg",
                "--verify",
                "--id",
                "postgresql-AAAAAAAAAAAAAAAAAAAAAA",
                "--pg-url",
                &good,
            ])
            .fails_with(1);
        assert!(error(&run).contains("not found"), "{run:#?}");
        assert_no_secrets(&run, &secrets);
    }

    #[test]
    fn a_failed_drill_names_the_tables_and_exits_1() {
        let t = Target::file();
        let db = sample_db("cli_pg_drill");
        let url = pg().url(&db);
        let id = t
            .run(&["pg", "--create", "--pg-url", &url])
            .ok()
            .stdout
            .trim()
            .to_string();
        // Pretend the backup saw other counts than its dump holds.
        let key = format!("{id}/statefile.json");
        let mut sf: Value = serde_json::from_slice(&t.get(&key)).unwrap();
        sf["engine"]["fingerprint"]["counts"]["public.t"] = 501.into();
        sf["engine"]["fingerprint"]["counts"]["public.u"] = 1199.into();
        t.put(&key, serde_json::to_vec(&sf).unwrap());

        let run = t
            .run(&["pg", "--verify", "--id", &id, "--pg-url", &url])
            .fails_with(1);
        let line = error(&run);
        assert!(
            line.contains("verification failed")
                && line.contains("public.t: expected 501, found 500")
                && line.contains("public.u: expected 1199, found 1200"),
            "{line}"
        );
        let t_line = run.stdout.lines().find(|l| l.starts_with("public.t "));
        assert!(t_line.is_some_and(|l| l.contains("MISMATCH")), "{run:#?}");
        let sf = statefile(&t, &id);
        assert_eq!(sf["verifications"][0]["status"], "failed");
        assert!(
            pg().databases_like(&format!("{db}__capsule_verify"))
                .is_empty()
        );
        // --json: the comparison.
        let run = t
            .run(&["pg", "--verify", "--id", &id, "--pg-url", &url, "--json"])
            .fails_with(1);
        assert_eq!(run.json()["mismatches"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_legacy_backup_restores_from_the_cli() {
        let t = Target::file();
        let db = Postgres::unique_name("cli_legacy");
        let url = pg().url(&db);
        let run = t
            .run(&[
                "pg",
                "--restore",
                "--id",
                FINISHED,
                "--pg-url",
                &url,
                "--yes",
            ])
            .ok();
        assert!(
            run.stdout.contains(&format!("/{db} (safe-swap)")),
            "{run:#?}"
        );
        assert_eq!(
            pg().psql(
                &db,
                "SELECT (SELECT count(*) FROM users) || '/' || (SELECT count(*) FROM projects) \
                 || '/' || (SELECT count(*) FROM experiments) || '/' || \
                 (SELECT count(*) FROM project_stats)"
            ),
            "500/1200/20000/1200"
        );
        // The legacy statefile keeps its format, with the restore appended.
        let sf = statefile(&t, FINISHED);
        assert_eq!(sf["statefileVersion"], "v1alpha1");
        assert_eq!(sf["restores"].as_array().unwrap().len(), 2);
        // A drill of a backup without a fingerprint: restores, compares nothing.
        let run = t
            .run(&["pg", "--verify", "--id", FINISHED, "--pg-url", &url])
            .ok();
        assert!(run.stdout.contains("nothing was compared"), "{run:#?}");
    }
}

// ---------------------------------------------------------------------------
// Elasticsearch: backups, restores, drills and downloads run now with --es-url
// ---------------------------------------------------------------------------

mod es {
    use test_support::opensearch::{FaultProxy, Faults, OpenSearch};

    use super::*;

    /// Legacy connection variables blanked, so a developer's environment
    /// cannot turn a queued request into a run now.
    const NO_LEGACY: [(&str, &str); 5] = [
        ("ELASTICSEARCH_URL", ""),
        ("ES_USERNAME", ""),
        ("ES_PASSWORD", ""),
        ("CNVRG_ES_USER", ""),
        ("CNVRG_ES_PASS", ""),
    ];

    /// Two indices (one with an alias) holding numbers beyond 2^53, floats
    /// as written, unicode and custom routing.
    fn load(os: &OpenSearch) {
        os.ok(
            "PUT",
            "/cli-a",
            r#"{"mappings":{"properties":{"n":{"type":"long"},"f":{"type":"double"}}},"aliases":{"cli-all":{}}}"#,
        );
        let mut docs = String::new();
        for i in 0..300u64 {
            docs.push_str(&format!(
                "{{\"index\":{{\"_index\":\"cli-a\",\"_id\":\"a{i}\"{}}}}}\n{{\"n\":{},\"f\":{i}.10,\"s\":\"Zoë ☃ {i}\"}}\n",
                if i % 7 == 0 { ",\"routing\":\"r7\"" } else { "" },
                9_007_199_254_740_993u64 + i
            ));
        }
        for i in 0..20 {
            docs.push_str(&format!(
                "{{\"index\":{{\"_index\":\"cli-b\",\"_id\":\"b{i}\"}}}}\n{{\"k\":\"v{i}\"}}\n"
            ));
        }
        os.bulk(&docs);
    }

    fn count(os: &OpenSearch, index: &str) -> u64 {
        let body: Value =
            serde_json::from_str(&os.ok("GET", &format!("/{index}/_count"), "")).unwrap();
        body["count"].as_u64().unwrap()
    }

    #[test]
    fn create_restore_verify_and_download_run_now_with_a_url() {
        let t = Target::file();
        let os = OpenSearch::start();
        load(&os);
        let url = os.url.clone();

        // --create with --es-url: a backup now.
        let run = t
            .run_env(
                &["es", "--create", "--es-url", &url, "--indices", "cli-*"],
                &NO_LEGACY,
            )
            .ok();
        let id = run.stdout.trim().to_string();
        assert!(id.starts_with("elasticsearch-"), "{run:#?}");
        assert!(run.stderr.contains("2 indices, 320 documents"), "{run:#?}");
        let sf = statefile(&t, &id);
        assert_eq!(sf["status"], "finished");
        assert_eq!(sf["engine"]["fingerprint"]["counts"]["cli-a"], 300);
        assert_eq!(sf["service"]["database"], "cli-*");

        // --restore over the live indices: refused, nothing changed.
        let run = t
            .run_env(
                &["es", "--restore", "--id", &id, "--es-url", &url, "--yes"],
                &NO_LEGACY,
            )
            .fails_with(1);
        let line = error(&run);
        assert!(
            line.contains("index cli-a exists") && line.contains("--replace"),
            "{line}"
        );
        // Without --yes and no terminal: a usage error.
        t.run_env(
            &["es", "--restore", "--id", &id, "--es-url", &url],
            &NO_LEGACY,
        )
        .fails_with(2);
        // --rename: beside them.
        let run = t
            .run_env(
                &[
                    "es",
                    "--restore",
                    "--id",
                    &id,
                    "--es-url",
                    &url,
                    "--yes",
                    "--rename",
                    "cli-(.+):copy-$1",
                ],
                &NO_LEGACY,
            )
            .ok();
        assert!(
            run.stdout.contains("(create)") && run.stdout.contains("320 documents"),
            "{run:#?}"
        );
        assert_eq!(count(&os, "copy-a"), 300);
        assert_eq!(count(&os, "copy-all"), 300, "the alias is renamed too");
        // --replace: over them.
        os.bulk("{\"index\":{\"_index\":\"cli-b\",\"_id\":\"extra\"}}\n{\"k\":\"x\"}");
        let run = t
            .run_env(
                &[
                    "es",
                    "--restore",
                    "--id",
                    &id,
                    "--es-url",
                    &url,
                    "--yes",
                    "--replace",
                    "--indices",
                    "cli-b",
                    "--json",
                ],
                &NO_LEGACY,
            )
            .ok();
        let json = run.json();
        assert_eq!(json["mode"], "replace");
        assert_eq!(json["indices"]["cli-b"], "cli-b", "{json}");
        assert_eq!(json["replaced"][0], "cli-b", "{json}");
        assert_eq!(count(&os, "cli-b"), 20);
        // --replace failing mid-load (the server fails every _bulk): the
        // live index is intact, no staging index is left, the error says so.
        os.bulk("{\"index\":{\"_index\":\"cli-b\",\"_id\":\"extra\"}}\n{\"k\":\"x\"}");
        let proxy = FaultProxy::start(
            os.port,
            Faults {
                fail_bulk_from: Some(0),
                ..Faults::default()
            },
        );
        let run = t
            .run_env(
                &[
                    "es",
                    "--restore",
                    "--id",
                    &id,
                    "--es-url",
                    &proxy.url,
                    "--yes",
                    "--replace",
                    "--indices",
                    "cli-b",
                ],
                &NO_LEGACY,
            )
            .fails_with(1);
        let line = error(&run);
        assert!(
            line.contains("POST /_bulk: HTTP 500")
                && line.contains("nothing was replaced: the existing index cli-b is intact"),
            "{line}"
        );
        assert_eq!(count(&os, "cli-b"), 21);
        let indices = os.ok("GET", "/_cat/indices?format=json&h=index", "");
        assert!(!indices.contains("capsule-restore-"), "{indices}");

        // --verify: a drill, compared index by index.
        let run = t
            .run_env(
                &["es", "--verify", "--id", &id, "--es-url", &url],
                &NO_LEGACY,
            )
            .ok();
        assert!(run.stdout.contains("verification passed"), "{run:#?}");
        let a_line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("cli-a "))
            .unwrap_or_default();
        assert!(a_line.contains("300") && a_line.ends_with("ok"), "{run:#?}");
        assert_eq!(statefile(&t, &id)["verifications"][0]["status"], "passed");

        // --download: the NDJSON and the metadata, checked.
        let run = t
            .run_env(&["es", "--download", "--id", &id], &NO_LEGACY)
            .ok();
        assert!(run.stdout.contains("documents.ndjson"), "{run:#?}");
        let ndjson =
            std::fs::read_to_string(t.dumpdir().join(&id).join("documents.ndjson")).unwrap();
        assert_eq!(ndjson.lines().count(), 640);
        assert!(
            ndjson.contains(r#""f":3.10,"s":"Zoë ☃ 3""#),
            "raw _source kept"
        );
        assert!(ndjson.contains(r#""routing":"r7""#));
        assert!(t.dumpdir().join(&id).join("metadata.json").is_file());
    }

    #[test]
    fn connection_failures_are_one_clear_line_without_the_password() {
        let mut t = Target::file();
        let os = OpenSearch::start();
        load(&os);
        let proxy = FaultProxy::start(
            os.port,
            Faults {
                basic_auth: Some(("elastic".into(), "Right-Pw-4711".into())),
                ..Faults::default()
            },
        );
        t.secrets
            .extend(["Right-Pw-4711".to_string(), "Wr0ng-Pw-0815".to_string()]);
        // Wrong password, with every library's logs on: still not printed.
        let wrong = format!("http://elastic:Wr0ng-Pw-0815@127.0.0.1:{}", proxy.port);
        let run = t
            .run_env(
                &["es", "--create", "--es-url", &wrong],
                &[("RUST_LOG", "trace")],
            )
            .fails_with(1);
        assert!(
            run.stderr
                .contains("authentication failed for user \"elastic\""),
            "{run:#?}"
        );
        // Unreachable: at once.
        let port = test_support::process::free_port();
        let started = Instant::now();
        let run = t
            .run_env(
                &[
                    "es",
                    "--create",
                    "--es-url",
                    &format!("http://elastic:Wr0ng-Pw-0815@127.0.0.1:{port}"),
                ],
                &NO_LEGACY,
            )
            .fails_with(1);
        assert!(started.elapsed() < Duration::from_secs(10));
        let line = error(&run);
        assert!(
            line.contains(&format!("cannot connect to http://127.0.0.1:{port}")),
            "{line}"
        );
        // A pattern matching nothing.
        let run = t
            .run_env(
                &[
                    "es",
                    "--create",
                    "--es-url",
                    &os.url,
                    "--indices",
                    "cli-a,nosuch",
                ],
                &NO_LEGACY,
            )
            .fails_with(1);
        assert!(
            error(&run).contains(r#"no index matches "nosuch""#),
            "{run:#?}"
        );
        // Bad flag values are usage errors.
        let run = t
            .run_env(
                &[
                    "es",
                    "--create",
                    "--es-url",
                    "ftp://elastic:Wr0ng-Pw-0815@h:1",
                ],
                &NO_LEGACY,
            )
            .fails_with(2);
        assert!(error(&run).contains("--es-url"), "{run:#?}");
        t.run_env(
            &[
                "es",
                "--restore",
                "--id",
                "elasticsearch-9nVJ8sGmQbXc3RkHzW2tLp",
                "--es-url",
                &os.url,
                "--rename",
                "(x:y",
                "--yes",
            ],
            &NO_LEGACY,
        )
        .fails_with(2);
        // The legacy Secret keys: a backup now, through the proxy.
        let run = t
            .run_env(
                &["es", "--create", "--indices", "cli-b"],
                &[
                    ("ELASTICSEARCH_URL", proxy.url.as_str()),
                    ("ES_USERNAME", "elastic"),
                    ("ES_PASSWORD", "Right-Pw-4711"),
                    ("RUST_LOG", "debug"),
                ],
            )
            .ok();
        let id = run.stdout.trim().to_string();
        assert_eq!(statefile(&t, &id)["status"], "finished");
        // A user:password@host without a scheme: refused, password unshown.
        let run = t
            .run_env(
                &[
                    "es",
                    "--list",
                    "--es-url",
                    "elastic:Wr0ng-Pw-0815@127.0.0.1:1",
                ],
                &NO_LEGACY,
            )
            .fails_with(2);
        assert!(error(&run).contains("***@127.0.0.1:1"), "{run:#?}");
        // Drills that never reached their target are no verdict on the
        // backup: not recorded; one that ran is.
        let verify = |url: &str| {
            t.run_env(
                &["es", "--verify", "--id", &id, "--es-url", url],
                &NO_LEGACY,
            )
        };
        let with = |pw: &str| format!("http://elastic:{pw}@127.0.0.1:{}", proxy.port);
        verify(&with("Wr0ng-Pw-0815")).fails_with(1);
        verify(&format!("http://127.0.0.1:{port}")).fails_with(1);
        assert_eq!(statefile(&t, &id)["verifications"], serde_json::json!([]));
        verify(&with("Right-Pw-4711")).ok();
        verify(&format!("http://127.0.0.1:{port}")).fails_with(1);
        let v = statefile(&t, &id)["verifications"].clone();
        assert_eq!(v.as_array().unwrap().len(), 1, "{v:#}");
        assert_eq!(v[0]["status"], "passed", "{v:#}");
    }

    #[test]
    fn without_connection_settings_create_queues_and_verify_is_refused() {
        let t = Target::file();
        let run = t.run_env(&["es", "--create"], &NO_LEGACY).ok();
        let queued = run.stdout.trim().to_string();
        assert_eq!(statefile(&t, &queued)["status"], "requested");
        let run = t
            .run_env(&["es", "--verify", "--id", &queued], &NO_LEGACY)
            .fails_with(2);
        assert!(
            run.stderr.contains("--verify needs connection settings"),
            "{run:#?}"
        );
        // A queued request cannot carry restore or index options: refused,
        // not silently dropped.
        for flags in [
            &["--restore", "--id", &queued, "--yes", "--replace"][..],
            &["--restore", "--id", &queued, "--yes", "--rename", "a:b"][..],
            &["--create", "--indices", "users"][..],
        ] {
            let args: Vec<&str> = ["es"].iter().chain(flags).copied().collect();
            let run = t.run_env(&args, &NO_LEGACY).fails_with(2);
            assert!(
                run.stderr.contains("needs connection settings"),
                "{flags:?}: {run:#?}"
            );
        }
        assert_eq!(
            statefile(&t, &queued)["restores"]
                .as_array()
                .map_or(0, Vec::len),
            0
        );
    }
}

// ---------------------------------------------------------------------------
// Encryption at rest: --encrypt-to, --encryption-key-file, --identity-file
// ---------------------------------------------------------------------------

mod encryption {
    use age::secrecy::ExposeSecret;
    use test_support::postgres::Postgres;

    use super::*;

    fn pg() -> &'static Postgres {
        Postgres::shared()
    }

    /// An identity file as `age-keygen` writes it; returns (path, public
    /// key, secret key).
    fn keygen(dir: &Path, name: &str) -> (PathBuf, String, String) {
        let k = age::x25519::Identity::generate();
        let public = k.to_public().to_string();
        let secret = k.to_string().expose_secret().to_string();
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("# created: 2024-01-01T00:00:00Z\n# public key: {public}\n{secret}\n"),
        )
        .unwrap();
        (path, public, secret)
    }

    /// Whether any object of the store holds `marker`.
    fn store_holds(t: &Target, marker: &str) -> bool {
        let keys: Vec<String> = t.rt.block_on(async {
            t.store
                .list("")
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect()
        });
        keys.iter().any(|k| {
            t.get(k)
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
        })
    }

    fn state(db: &str) -> String {
        pg().psql(
            db,
            "SELECT count(*) || ':' || md5(string_agg(id || '=' || body, ',' ORDER BY id)) FROM notes",
        )
    }

    #[test]
    fn flags_encrypt_and_identities_decrypt_end_to_end() {
        let t = Target::file();
        let keys = TempDir::new().unwrap();
        let (key_file, public, secret) = keygen(keys.path(), "key.txt");
        let (wrong_file, wrong_public, wrong_secret) = keygen(keys.path(), "wrong.txt");
        let recipients = keys.path().join("recipients.txt");
        std::fs::write(&recipients, format!("# ops team\n{public}\n")).unwrap();
        let secrets = [secret.clone(), wrong_secret.clone()];
        let (key_file, wrong_file) = (key_file.to_str().unwrap(), wrong_file.to_str().unwrap());

        let marker = format!("cli-plaintext-marker-{}", std::process::id());
        let db = Postgres::unique_name("cli_enc");
        pg().create_database(&db, None);
        pg().psql(
            &db,
            &format!(
                "CREATE TABLE notes (id int PRIMARY KEY, body text); \
                 INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 200) g; \
                 INSERT INTO notes VALUES (1000, '{marker}');"
            ),
        );
        let url = pg().url(&db);
        let at_backup = state(&db);

        // --create --encrypt-to: encrypted, the recipient recorded and shown.
        let run = t
            .run_traced(&["pg", "--create", "--pg-url", &url, "--encrypt-to", &public])
            .ok();
        assert_no_secrets(&run, &secrets);
        let id = run.stdout.trim().to_string();
        assert!(
            run.stderr.contains(&format!("encrypted (age) to {public}")),
            "{run:#?}"
        );
        let sf = statefile(&t, &id);
        for a in sf["artifacts"].as_array().unwrap() {
            assert!(a["name"].as_str().unwrap().ends_with(".zst.age"), "{a}");
            assert_eq!(a["encryption"]["format"], "age");
            assert_eq!(a["encryption"]["recipients"][0], public.as_str());
        }
        assert!(
            !store_holds(&t, &marker),
            "the marker is readable in the store"
        );
        // The recipients file, through its environment variable, works too.
        let run = t
            .run_env(
                &["pg", "--create", "--pg-url", &url],
                &[(
                    "CNVRG_CAPSULE_ENCRYPTION_KEY_FILE",
                    recipients.to_str().unwrap(),
                )],
            )
            .ok();
        let sf2 = statefile(&t, run.stdout.trim());
        assert_eq!(
            sf2["artifacts"][1]["encryption"]["recipients"][0],
            public.as_str()
        );
        assert!(!store_holds(&t, &marker));
        // Listing and describing need no key.
        t.run(&["pg", "--list"]).ok();
        let run = t.run(&["pg", "--describe", "--id", &id]).ok();
        assert_eq!(run.json()["artifacts"][0]["encryption"]["format"], "age");

        // The live database moves on; restores without the key leave it alone.
        pg().psql(&db, "UPDATE notes SET body = 'changed' WHERE id = 1");
        let live = state(&db);
        let databases = pg().databases_like(&db);
        // No identity: a usage error saying how to give one.
        let run = t
            .run(&["pg", "--restore", "--id", &id, "--pg-url", &url, "--yes"])
            .fails_with(2);
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{run:#?}"));
        assert!(
            line.contains(&format!("backup {id}: "))
                && line.contains(".sql.zst.age is encrypted (age, to ")
                && line.contains("no identity was given")
                && line.contains("--identity-file"),
            "{line}"
        );
        // The wrong identity: exit 1, naming both public keys, no secret.
        let run = t
            .run(&[
                "pg",
                "--restore",
                "--id",
                &id,
                "--pg-url",
                &url,
                "--yes",
                "--identity-file",
                wrong_file,
            ])
            .fails_with(1);
        assert_no_secrets(&run, &secrets);
        assert!(
            run.stderr.contains("cannot decrypt")
                && run.stderr.contains(&wrong_public)
                && run.stderr.contains(&public),
            "{run:#?}"
        );
        assert_eq!(state(&db), live, "the target was touched");
        assert_eq!(pg().databases_like(&db), databases);
        // Downloads and drills refuse the same way.
        t.run(&["pg", "--download", "--id", &id]).fails_with(2);
        t.run(&["pg", "--verify", "--id", &id, "--pg-url", &url])
            .fails_with(2);
        assert!(!t.dumpdir().join(&id).exists());

        // The key, from the environment: restored exactly.
        let with_key = [("CNVRG_CAPSULE_IDENTITY_FILE", key_file)];
        let run = t
            .run_env(
                &["pg", "--restore", "--id", &id, "--pg-url", &url, "--yes"],
                &with_key,
            )
            .ok();
        assert_no_secrets(&run, &secrets);
        assert_eq!(state(&db), at_backup);
        assert_eq!(
            pg().psql(&db, "SELECT body FROM notes WHERE id = 1000"),
            marker
        );
        // A drill and a download with --identity-file.
        let run = t
            .run(&[
                "pg",
                "--verify",
                "--id",
                &id,
                "--pg-url",
                &url,
                "--identity-file",
                key_file,
            ])
            .ok();
        assert!(run.stdout.contains("verification passed"), "{run:#?}");
        let run = t
            .run(&[
                "pg",
                "--download",
                "--id",
                &id,
                "--json",
                "--identity-file",
                key_file,
            ])
            .ok();
        let files = run.json()["files"].clone();
        assert!(
            files
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["decrypted"] == true)
        );
        let dump = std::fs::read(t.dumpdir().join(&id).join("dump.pgc")).unwrap();
        assert!(dump.starts_with(b"PGDMP"));
        assert!(dump.windows(marker.len()).any(|w| w == marker.as_bytes()));

        // An unencrypted backup still restores without any identity.
        let run = t.run(&["pg", "--create", "--pg-url", &url]).ok();
        let plain = run.stdout.trim().to_string();
        assert!(
            statefile(&t, &plain)["artifacts"][0]
                .get("encryption")
                .is_none()
        );
        t.run(&["pg", "--restore", "--id", &plain, "--pg-url", &url, "--yes"])
            .ok();
        for prev in pg().databases_like(&format!("{db}__")) {
            pg().psql("postgres", &format!("DROP DATABASE \"{prev}\""));
        }
    }

    #[test]
    fn bad_keys_are_usage_errors_naming_the_flag() {
        let t = Target::file();
        let keys = TempDir::new().unwrap();
        let (_, public, secret) = keygen(keys.path(), "key.txt");
        let url = pg().url("postgres");
        let run = t
            .run(&[
                "pg",
                "--create",
                "--pg-url",
                &url,
                "--encrypt-to",
                "age1nope",
            ])
            .fails_with(2);
        assert!(
            run.error_line().contains("invalid --encrypt-to"),
            "{run:#?}"
        );
        // A secret key given as a recipient is refused without being shown.
        let run = t
            .run(&["pg", "--create", "--pg-url", &url, "--encrypt-to", &secret])
            .fails_with(2);
        assert!(run.error_line().contains("secret key"), "{run:#?}");
        assert_no_secrets(&run, std::slice::from_ref(&secret));
        // A public key given as an identity file.
        let not_identity = keys.path().join("public.txt");
        std::fs::write(&not_identity, format!("{public}\n")).unwrap();
        let run = t
            .run(&[
                "pg",
                "--download",
                "--id",
                "postgresql-0000000000000000000000",
                "--identity-file",
                not_identity.to_str().unwrap(),
            ])
            .fails_with(2);
        assert!(
            run.error_line().contains("invalid --identity-file"),
            "{run:#?}"
        );
        // A queued backup is encrypted as the daemon says: refused here.
        let run = t
            .run_env(
                &["pg", "--create", "--encrypt-to", &public],
                &[
                    ("PGHOST", ""),
                    ("PGDATABASE", ""),
                    ("PGUSER", ""),
                    ("PGPORT", ""),
                ],
            )
            .fails_with(2);
        assert!(run.error_line().contains("connection settings"), "{run:#?}");
    }
}

// ---------------------------------------------------------------------------
// TLS: an https store and a PostgreSQL, each with a private CA
// ---------------------------------------------------------------------------

mod tls {
    use test_support::postgres::{PASSWORD, PASSWORD_USER, Postgres};

    use super::*;

    /// A fresh bucket on the shared https SeaweedFS: flags without the CA.
    fn https_target() -> (Target, PathBuf) {
        let s3 = SeaweedFs::shared_tls();
        let bucket = unique("cli-tls");
        s3.create_bucket(&bucket);
        let url = s3.s3_https_url(&bucket);
        let ca = s3.ca_file();
        let store = StoreBuilder::from_url(&url)
            .unwrap()
            .with_access_key(
                Secret::new(s3.access_key.clone()),
                Secret::new(s3.secret_key.clone()),
            )
            .with_option("ca_file", ca.to_str().unwrap())
            .with_prefix(PREFIX)
            .build()
            .unwrap();
        let target = Target {
            name: "seaweedfs-https",
            flags: vec![
                "--store".into(),
                url,
                "--access-key".into(),
                s3.access_key.clone(),
                "--secret-key".into(),
                s3.secret_key.clone(),
            ],
            secrets: vec![s3.access_key.clone(), s3.secret_key.clone()],
            store,
            rt: runtime(),
            dir: TempDir::new().unwrap(),
        };
        (target, ca)
    }

    #[test]
    fn https_store_and_postgresql_over_verified_tls() {
        let (t, store_ca) = https_target();
        let store_ca = store_ca.to_str().unwrap();
        let pg = Postgres::shared_tls();
        let db = Postgres::unique_name("cli_tls");
        pg.create_database(&db, None);
        pg.psql(
            &db,
            "CREATE TABLE t (id int PRIMARY KEY, name text); \
             INSERT INTO t SELECT i, 'row ' || i FROM generate_series(1, 200) i;",
        );
        let pg_url = format!(
            "postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=verify-full&sslrootcert={}",
            pg.port,
            pg.ca_file().display()
        );
        let secrets = [PASSWORD.to_string()];

        // The store's CA is not the system's: refused, naming the endpoint
        // and the flag, in one line, exit 1.
        let https = SeaweedFs::shared_tls().https_endpoint();
        let run = t.run(&["pg", "--list"]).fails_with(1);
        let line = run.error_line();
        assert!(
            line.contains(&format!(
                "the TLS certificate of endpoint {https} is not trusted"
            )) && line.contains("--ca-file"),
            "{run:#?}"
        );

        // With --ca-file: back up over TLS both ways (SCRAM over TLS too).
        let run = t
            .run_traced(&["pg", "--create", "--pg-url", &pg_url, "--ca-file", store_ca])
            .ok();
        assert_no_secrets(&run, &secrets);
        let id = run.stdout.trim().to_string();
        assert!(id.starts_with("postgresql-"), "{run:#?}");
        let sf: Value = serde_json::from_slice(&t.get(&format!("{id}/statefile.json"))).unwrap();
        assert_eq!(sf["status"], "finished");
        assert_eq!(sf["engine"]["fingerprint"]["counts"]["public.t"], 200);

        // The CA from the environment: list, download, restore.
        let env = [("CNVRG_CAPSULE_CA_FILE", store_ca)];
        let run = t.run_env(&["pg", "--list", "--json"], &env).ok();
        assert_eq!(ids(&run.json()), [id.as_str()]);
        t.run_env(&["pg", "--download", "--id", &id], &env).ok();
        let dump = std::fs::read(t.dumpdir().join(&id).join("dump.pgc")).unwrap();
        assert!(dump.starts_with(b"PGDMP"), "not a custom-format dump");
        pg.psql(&db, "DELETE FROM t WHERE id > 50");
        let run = t
            .run_env(
                &["pg", "--restore", "--id", &id, "--pg-url", &pg_url, "--yes"],
                &env,
            )
            .ok();
        assert_no_secrets(&run, &secrets);
        assert_eq!(pg.psql(&db, "SELECT count(*) FROM t"), "200");

        // verify-full without the server's CA: refused before any dump.
        let no_root = format!(
            "postgres://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=verify-full",
            pg.port
        );
        let run = t
            .run_env(&["pg", "--create", "--pg-url", &no_root], &env)
            .fails_with(1);
        assert!(
            run.stderr.contains("sslmode=verify-full needs the CA")
                && run.stderr.contains("sslrootcert=FILE"),
            "{run:#?}"
        );
        assert_no_secrets(&run, &secrets);
    }
}
