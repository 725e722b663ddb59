//! Running `capsule start` as real processes against SeaweedFS and
//! PostgreSQL, and looking at what they left in the bucket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use capsule_core::{Catalog, ListFilter, Statefile};
use capsule_store::Store;
use tempfile::TempDir;
use test_support::kube_api::FakeKubeApi;
use test_support::postgres::Postgres;
use test_support::process::{HttpResponse, free_port, http_request};
use test_support::seaweedfs::SeaweedFs;

/// The binary under test.
pub const CAPSULE: &str = env!("CARGO_BIN_EXE_capsule");

/// The API token every test daemon gets.
pub const TOKEN: &str = "tok-7Qx9-daemon-test-secret";

/// Runs one daemon test at a time: each starts several processes on two
/// cores, and the timings (2 s periods) need the CPU.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Polls `check` every 100 ms until it holds; panics after `timeout` with
/// `what` and `context()` (daemon logs).
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}\n{}",
        context()
    );
}

/// A fresh bucket on the shared SeaweedFS.
pub struct Bucket {
    /// The bucket's name.
    pub name: String,
    /// Store URL with the keys as options.
    pub url: String,
}

impl Bucket {
    pub fn new() -> Bucket {
        let s3 = SeaweedFs::shared();
        let name = format!("d{}-{}", std::process::id(), rand_suffix());
        s3.create_bucket(&name);
        Bucket {
            url: s3.s3_url_with_credentials(&name),
            name,
        }
    }

    /// Adds the bucket Secret `cp-object-storage` naming this bucket to
    /// namespace `ns` of the fake Kubernetes API.
    pub fn add_secret_to(&self, api: &FakeKubeApi, ns: &str) {
        let s3 = SeaweedFs::shared();
        api.add_secret(
            ns,
            "cp-object-storage",
            &[
                ("CNVRG_STORAGE_TYPE", "minio"),
                ("CNVRG_STORAGE_ENDPOINT", &s3.endpoint),
                ("CNVRG_STORAGE_BUCKET", &self.name),
                ("CNVRG_STORAGE_ACCESS_KEY", &s3.access_key),
                ("CNVRG_STORAGE_SECRET_KEY", &s3.secret_key),
                ("CNVRG_STORAGE_REGION", "us-east-1"),
            ],
        );
    }

    pub fn catalog(&self, dst_dir: &str) -> Catalog {
        Catalog::new(
            Store::from_url(&self.url)
                .unwrap()
                .with_prefix(dst_dir)
                .unwrap(),
        )
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}{:x}", N.fetch_add(1, Ordering::Relaxed), nanos % 0xfffff)
}

/// Every readable statefile under `dst_dir`, newest first.
pub fn statefiles(catalog: &Catalog) -> Vec<Statefile> {
    block_on(catalog.list(&ListFilter::default()))
        .unwrap()
        .into_iter()
        .filter_map(|e| e.statefile)
        .collect()
}

/// Waits (30 s at most) until `daemon` has finished a periodic backup in
/// `catalog`.
pub fn wait_for_periodic_backup(catalog: &Catalog, daemon: &Daemon) {
    wait_until(
        Duration::from_secs(30),
        "the first periodic backup",
        || {
            statefiles(catalog).iter().any(|s| {
                s.request_type == capsule_core::RequestType::Periodic
                    && s.status == capsule_core::Status::Finished
            })
        },
        || daemon.log_tail(40),
    );
}

pub fn pg() -> &'static Postgres {
    Postgres::shared()
}

/// A fresh database with `rows` rows in `public.items`.
pub fn database(prefix: &str, rows: u32) -> String {
    let db = Postgres::unique_name(prefix);
    pg().create_database(&db, None);
    pg().psql(
        &db,
        &format!(
            "CREATE TABLE public.items (id serial PRIMARY KEY, name text NOT NULL); \
             INSERT INTO public.items (name) SELECT 'item ' || g FROM generate_series(1, {rows}) g;"
        ),
    );
    db
}

pub fn row_count(db: &str) -> u64 {
    pg().psql(db, "SELECT count(*) FROM public.items")
        .parse()
        .unwrap()
}

/// A `[[service]]` entry reading its URL from `env`.
pub fn service_toml(name: &str, env: &str, period: &str, rotation: u32, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\ntype = \"postgresql\"\nurl_env = \"{env}\"\nperiod = \"{period}\"\nrotation = {rotation}\n{extra}\n"
    )
}

/// A directory of PostgreSQL client tools whose `pg_dump` sleeps `secs`
/// before dumping (so a backup can be caught running).
pub fn slow_tools(secs: u32) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let real = &pg().bin_dir;
    for entry in std::fs::read_dir(real).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name != "pg_dump" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(&name)).unwrap();
        }
    }
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in --version|-V) exec {real}/pg_dump \"$@\";; esac\nsleep {secs}\nexec {real}/pg_dump \"$@\"\n",
        real = real.display()
    );
    let path = dir.path().join("pg_dump");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// How to start one daemon.
pub struct Spec {
    pub name: String,
    pub store: String,
    pub dst_dir: String,
    pub cluster: String,
    pub config: Option<String>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

impl Spec {
    pub fn new(name: &str, store: &str, cluster: &str) -> Spec {
        Spec {
            name: name.into(),
            store: store.into(),
            dst_dir: "cnvrg-smart-backups".into(),
            cluster: cluster.into(),
            config: None,
            env: vec![("CNVRG_CAPSULE_API_TOKEN".into(), TOKEN.into())],
            args: Vec::new(),
        }
    }
    pub fn dst_dir(mut self, d: &str) -> Spec {
        self.dst_dir = d.into();
        self
    }
    pub fn config(mut self, toml: String) -> Spec {
        self.config = Some(toml);
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Spec {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn arg(mut self, a: &str) -> Spec {
        self.args.push(a.into());
        self
    }
    pub fn start(self) -> Daemon {
        Daemon::start(self)
    }
}

/// A `capsule start` process; killed (with its process group) on drop.
pub struct Daemon {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Daemon {
    fn start(spec: Spec) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut cmd = Command::new(CAPSULE);
        cmd.args(["--store", &spec.store, "--dst-dir", &spec.dst_dir, "start"])
            .args(["--cluster", &spec.cluster])
            .args(["--api-bind-addr", &format!("127.0.0.1:{port}")]);
        // JSON logs and short clocks, unless the test sets its own.
        for (flag, value) in [
            ("--log-format", "json"),
            ("--watch-interval", "200ms"),
            ("--heartbeat-interval", "500ms"),
            ("--lease-ttl", "2s"),
            ("--retry-after", "1s"),
            ("--shutdown-grace", "30s"),
        ] {
            if !spec.args.iter().any(|a| a == flag) {
                cmd.args([flag, value]);
            }
        }
        if let Some(toml) = &spec.config {
            let path = dir.path().join("capsule.toml");
            std::fs::write(&path, toml).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.args(&spec.args)
            .env_remove("CNVRG_CAPSULE_CONFIG")
            .env("RUST_LOG", "info,capsule_daemon=debug")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd.spawn().expect("spawn capsule start");
        let mut d = Daemon {
            name: spec.name,
            port,
            child: Some(child),
            dir,
        };
        let serves_api = !spec.args.iter().any(|a| a == "backup-engine");
        if serves_api {
            let start = Instant::now();
            while http_request(port, "GET", "/healthz", &[], b"").is_err() {
                if start.elapsed() > Duration::from_secs(20) || !d.running() {
                    panic!("daemon {} did not come up\n{}", d.name, d.log_tail(40));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- {} (last {n} lines) ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(n)..].join("\n")
        )
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        let auth = format!("Bearer {TOKEN}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        http_request(self.port, method, path, &headers, body).unwrap_or_else(|e| {
            panic!(
                "{method} {path} on {}: {e}\n{}",
                self.name,
                self.log_tail(30)
            )
        })
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, b"")
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> HttpResponse {
        self.request("POST", path, body.to_string().as_bytes())
    }

    /// The sum of every sample of metric `name` (all label sets).
    pub fn metric(&self, name: &str) -> f64 {
        self.get("/metrics")
            .body
            .lines()
            .filter(|l| {
                l.starts_with(name)
                    && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        signal(self.pid(), "TERM");
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if start.elapsed() > timeout {
                panic!(
                    "daemon {} did not exit within {timeout:?} of SIGTERM\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL to the daemon's whole process group (a pod dying).
    pub fn kill9(&mut self) {
        signal_group(self.pid(), "KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_group(c.id(), "KILL");
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

fn signal_group(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pid}")])
        .status();
}

/// The logs of every daemon, for failure messages.
pub fn logs(daemons: &[&Daemon]) -> String {
    daemons
        .iter()
        .map(|d| d.log_tail(60))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `statefile.json` of each backup, by id.
pub fn by_id(list: &[Statefile]) -> BTreeMap<String, Statefile> {
    list.iter()
        .map(|s| (s.backup_id.to_string(), s.clone()))
        .collect()
}

/// Runs the `capsule` CLI with `args` and the store flags, returning
/// (exit code, stdout, stderr).
pub fn cli(store: &str, dst_dir: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(CAPSULE)
        .args(["--store", store, "--dst-dir", dst_dir])
        .args(args)
        .env_remove("CNVRG_CAPSULE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `file://` store URL in `dir`.
pub fn file_store(dir: &Path) -> String {
    format!("file://{}", dir.display())
}
