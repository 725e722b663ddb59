//! Benchmark: the PostgreSQL engine through the real `capsule` binary,
//! side by side with the PostgreSQL tools, on a `pgbench -i` database.
//!
//! Backup: `capsule pg --create` to `file://` and to SeaweedFS against
//! `pg_dump -Fc -f file` (target ≤ 1.0×) and the extraction floor
//! `pg_dump -Fc -Z0 > /dev/null` (≤ 1.15×); artifact size against the
//! `pg_dump -Fc` file. Restore: `capsule pg --restore --target-db` against
//! `createdb` + `pg_restore -d` from a local file of that dump (≤ 1.1×).
//! Every capsule run is a child process (the release binary next to this
//! one, or `--capsule`), watched while it runs: its peak RSS (`VmHWM`,
//! sampled every 10 ms) and its tool's separately, the store directory
//! and a private `TMPDIR`, and every file it or its tool holds open for
//! writing (temp disk: target 0 bytes).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use test_support::postgres::Postgres;

use crate::measure::{MIB, cpu_secs, group_cpu_secs, machine_busy_secs, median, wait_for_quiet};
use crate::server::S3Server;
use crate::table::{Table, num, verdict};

const BUCKET: &str = "bench-pg";
const DB: &str = "bench";
/// Peak RSS allowed for capsule, in MiB.
const RSS_TARGET_MIB: f64 = 64.0;

/// What one scale's runs measured, for [`Scale::tables`].
struct Measured {
    /// Samples of each backup case.
    backups: BTreeMap<&'static str, Vec<Sample>>,
    /// Samples of each restore case.
    restores: BTreeMap<&'static str, Vec<Sample>>,
    /// Errors of the capsule runs that failed, per case.
    failures: BTreeMap<&'static str, Vec<String>>,
    /// Each capsule backup: (to SeaweedFS, id, dump bytes, all artifact bytes).
    ids: Vec<(bool, String, u64, u64)>,
    /// Size of the `pg_dump -Fc` file.
    reference_bytes: u64,
    /// Load average before and after the runs.
    load: (String, String),
}

/// Settings of the PostgreSQL benchmark.
#[derive(Clone, Debug)]
pub struct PgBench {
    /// `pgbench -i -s` scales, one database (and set of tables) each.
    pub scales: Vec<u32>,
    /// Timed runs per case at the first scale (the median is reported);
    /// later (larger) scales run once.
    pub runs: usize,
    /// The `capsule` binary (default: next to this one).
    pub capsule: Option<PathBuf>,
}

impl PgBench {
    /// Runs every scale and prints its tables as soon as it is done (a
    /// failing capsule run is a FAIL row, not an abort).
    ///
    /// # Errors
    /// When a server or a reference tool fails.
    pub async fn run(&self) -> Result<()> {
        let capsule = match &self.capsule {
            Some(p) => p.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("this binary's directory")?
                .join("capsule"),
        };
        ensure!(
            capsule.is_file(),
            "{} not found: build it with `cargo build --release -p capsule-cli` (or pass --capsule)",
            capsule.display()
        );
        eprintln!("capsule binary: {}", capsule.display());
        let s3 = S3Server::start(&[BUCKET]).await?;
        for (i, &scale) in self.scales.iter().enumerate() {
            let runs = if i == 0 { self.runs } else { 1 };
            let capsule = capsule.clone();
            let s3_url = s3.url(BUCKET);
            let s3_pgid = s3.pgid();
            let scale_tables = tokio::task::spawn_blocking(move || {
                Scale::prepare(scale, capsule, s3_url, s3_pgid)?.measure(runs)
            })
            .await??;
            for t in scale_tables {
                t.print();
            }
        }
        Ok(())
    }
}

/// One `pgbench` database and everything measured on it.
struct Scale {
    scale: u32,
    pg: Postgres,
    capsule: PathBuf,
    s3_url: String,
    s3_pgid: u32,
    work: tempfile::TempDir,
    db_bytes: u64,
    accounts: u64,
}

/// What one watched run measured.
#[derive(Clone, Debug, Default)]
struct Sample {
    secs: f64,
    stdout: String,
    /// Peak RSS (KiB) of the process itself.
    hwm_kib: u64,
    /// Peak RSS (KiB) of its children by command name (pg_dump, pg_restore).
    children_kib: BTreeMap<String, u64>,
    /// Largest size of the watched directory (the file store) during the
    /// run, beyond its size at the end (0 when nothing but the final
    /// objects was ever written there).
    store_overshoot: u64,
    /// Largest size of the private TMPDIR during the run.
    tmp_peak: u64,
    /// Whether anything was created in (or removed from) the private
    /// TMPDIR during the run (its modification time changed).
    tmp_touched: bool,
    /// Files opened for writing outside the store and /dev.
    written: BTreeSet<String>,
    /// CPU seconds: the process tree, the PostgreSQL server, SeaweedFS,
    /// everything else on the machine.
    cpu_tree: f64,
    cpu_server: f64,
    cpu_s3: f64,
    cpu_foreign: f64,
}

/// Backup cases, in the order they run (interleaved per run).
const BACKUPS: [&str; 4] = [
    "pg_dump -Fc -f file",
    "pg_dump -Fc -Z0 > /dev/null",
    "capsule → file://",
    "capsule → SeaweedFS",
];
/// Restore cases. The last one adds `timeout=2h` to the store URL:
/// object_store's default 30 s request timeout also covers a streamed GET
/// body, so a restore whose download outlives it fails (see
/// docs/benchmarks.md).
const RESTORES: [&str; 4] = [
    "createdb + pg_restore -d (local file)",
    "capsule file:// → --target-db",
    "capsule SeaweedFS → --target-db",
    "capsule SeaweedFS (URL timeout=2h) → --target-db",
];

impl Scale {
    fn prepare(scale: u32, capsule: PathBuf, s3_url: String, s3_pgid: u32) -> Result<Scale> {
        eprintln!("pgbench -i -s {scale}: starting a cluster and loading…");
        let pg = Postgres::start();
        pg.create_database(DB, None);
        let started = Instant::now();
        let out = Command::new(pg.bin_dir.join("pgbench"))
            .args(["-i", "-q", "-s", &scale.to_string(), "-h", "127.0.0.1"])
            .args(["-p", &pg.port.to_string(), "-U", "postgres", DB])
            .output()
            .context("running pgbench")?;
        ensure!(
            out.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let db_bytes: u64 = pg
            .psql("postgres", &format!("SELECT pg_database_size('{DB}')"))
            .parse()?;
        let accounts: u64 = pg
            .psql(DB, "SELECT count(*) FROM pgbench_accounts")
            .parse()?;
        eprintln!(
            "  loaded in {:.0}s: {:.2} GiB, {accounts} accounts",
            started.elapsed().as_secs_f64(),
            db_bytes as f64 / 1024f64.powi(3)
        );
        let work = tempfile::Builder::new()
            .prefix("capsule-bench-pg-")
            .tempdir()?;
        for d in ["dumps", "store", "tmp"] {
            std::fs::create_dir_all(work.path().join(d))?;
        }
        Ok(Scale {
            scale,
            pg,
            capsule,
            s3_url,
            s3_pgid,
            work,
            db_bytes,
            accounts,
        })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    fn pg_tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.pg.bin_dir.join(name));
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.pg.port.to_string(),
            "-U",
            "postgres",
        ]);
        cmd
    }

    fn capsule(&self, s3: bool, long_timeout: bool) -> Command {
        let mut cmd = Command::new(&self.capsule);
        for (k, _) in std::env::vars() {
            if k.starts_with("CNVRG_CAPSULE_") || k.starts_with("PG") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        let store = if s3 && long_timeout {
            format!("{}&timeout=2h", self.s3_url)
        } else if s3 {
            self.s3_url.clone()
        } else {
            format!("file://{}", self.dir("store").display())
        };
        // The store URL holds the S3 keys: environment, not arguments.
        cmd.env("CNVRG_CAPSULE_STORE", store)
            .env("CAPSULE_HOME", self.dir("tmp"))
            .env("TMPDIR", self.dir("tmp"))
            .env("NO_COLOR", "1")
            .arg("--json");
        cmd
    }

    fn watch(&self, cmd: Command) -> Result<Sample> {
        watch(
            cmd,
            &self.dir("store"),
            &self.dir("tmp"),
            self.pg.process().pid(),
            self.s3_pgid,
        )
    }

    fn measure(&self, runs: usize) -> Result<Vec<Table>> {
        let url = self.pg.url(DB);
        let reference = self.dir("dumps").join("ref.pgc");
        eprintln!("  warming the cache (pg_dump -Fc -Z0 > /dev/null, untimed)…");
        self.watch({
            let mut c = self.pg_tool("pg_dump");
            c.args(["-Fc", "-Z0", DB]).stdout(Stdio::null());
            c
        })?;
        wait_for_quiet().await_blocking();
        let load_before = loadavg();

        let mut backups: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
        let mut failures: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut ids: Vec<(bool, String, u64, u64)> = Vec::new();
        for run in 0..runs {
            if run > 0 {
                wait_for_quiet().await_blocking();
            }
            for case in BACKUPS {
                eprintln!("  backup run {}/{runs}: {case}", run + 1);
                let sample = match case {
                    "pg_dump -Fc -f file" => {
                        let mut c = self.pg_tool("pg_dump");
                        c.args(["-Fc", "-f"]).arg(&reference).arg(DB);
                        self.watch(c)?
                    }
                    "pg_dump -Fc -Z0 > /dev/null" => {
                        let mut c = self.pg_tool("pg_dump");
                        c.args(["-Fc", "-Z0", DB]).stdout(Stdio::null());
                        self.watch(c)?
                    }
                    _ => {
                        let s3 = case.ends_with("SeaweedFS");
                        let mut c = self.capsule(s3, false);
                        c.args(["pg", "--create", "--pg-url", &url]);
                        let sample = match self.watch(c) {
                            Ok(s) => s,
                            Err(e) => {
                                eprintln!("    FAILED: {e:#}");
                                failures.entry(case).or_default().push(format!("{e:#}"));
                                continue;
                            }
                        };
                        let sf: serde_json::Value = serde_json::from_str(&sample.stdout)
                            .with_context(|| format!("capsule's statefile: {}", sample.stdout))?;
                        ensure!(sf["status"] == "finished", "backup not finished: {sf}");
                        let size = |name: &str| {
                            sf["artifacts"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter(|a| name.is_empty() || a["name"] == name)
                                .filter_map(|a| a["sizeBytes"].as_u64())
                                .sum::<u64>()
                        };
                        let id = sf["backupId"].as_str().context("backupId")?.to_string();
                        ids.push((s3, id, size("dump.pgc.zst"), size("")));
                        sample
                    }
                };
                backups.entry(case).or_default().push(sample);
            }
        }
        let reference_bytes = std::fs::metadata(&reference)?.len();

        let mut restores: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
        let last_id = |s3: bool| ids.iter().rev().find(|i| i.0 == s3).map(|i| i.1.clone());
        for run in 0..runs {
            wait_for_quiet().await_blocking();
            for case in RESTORES {
                eprintln!("  restore run {}/{runs}: {case}", run + 1);
                let target = format!("restored_{run}");
                let _ = self
                    .pg
                    .try_psql("postgres", &format!("DROP DATABASE IF EXISTS {target}"));
                self.pg.psql("postgres", "CHECKPOINT");
                let sample = if case.starts_with("createdb") {
                    // Timed together, as capsule creates the database too.
                    let mut c = self.pg_tool("createdb");
                    c.arg(&target);
                    let created = self.watch(c)?;
                    let mut c = self.pg_tool("pg_restore");
                    c.args(["-d", &target]).arg(&reference);
                    created.then(self.watch(c)?)
                } else {
                    let s3 = case.contains("SeaweedFS");
                    let Some(id) = last_id(s3) else {
                        failures
                            .entry(case)
                            .or_default()
                            .push("no backup to restore".into());
                        continue;
                    };
                    let mut c = self.capsule(s3, case.contains("timeout=2h"));
                    c.args(["--yes", "pg", "--restore", "--id", &id]).args([
                        "--pg-url",
                        &url,
                        "--target-db",
                        &target,
                    ]);
                    match self.watch(c) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("    FAILED: {e:#}");
                            failures.entry(case).or_default().push(format!("{e:#}"));
                            continue;
                        }
                    }
                };
                if run == 0 {
                    let n: u64 = self
                        .pg
                        .psql(&target, "SELECT count(*) FROM pgbench_accounts")
                        .parse()?;
                    ensure!(n == self.accounts, "{case}: {n} accounts restored");
                }
                self.pg.psql("postgres", &format!("DROP DATABASE {target}"));
                restores.entry(case).or_default().push(sample);
            }
        }
        let load_after = loadavg();
        Ok(self.tables(
            runs,
            &Measured {
                backups,
                restores,
                failures,
                ids,
                reference_bytes,
                load: (load_before, load_after),
            },
        ))
    }

    fn tables(&self, runs: usize, m: &Measured) -> Vec<Table> {
        let Measured {
            backups,
            restores,
            failures,
            ids,
            reference_bytes,
            load,
        } = m;
        let reference_bytes = *reference_bytes;
        let gib = self.db_bytes as f64 / 1024f64.powi(3);
        let what = format!(
            "pgbench -s {} ({gib:.2} GiB database, {} accounts)",
            self.scale, self.accounts
        );
        let wall = |cases: &BTreeMap<&str, Vec<Sample>>, case: &str| {
            median(&cases[case].iter().map(|s| s.secs).collect::<Vec<_>>())
        };
        let cpu = |cases: &BTreeMap<&str, Vec<Sample>>, case: &str| {
            let s = &cases[case];
            let m = |f: fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
            (
                m(|s| s.cpu_tree),
                m(|s| s.cpu_server),
                m(|s| s.cpu_s3),
                m(|s| s.cpu_foreign),
            )
        };
        let mut t = Table::new(
            format!("PostgreSQL backup and restore, {what}: wall time (median of {runs})"),
            &[
                "case",
                "wall s",
                "ratio",
                "target",
                "result",
                "CPU s: tool/capsule",
                "postgres",
                "SeaweedFS",
                "others",
            ],
        );
        let dump = wall(backups, BACKUPS[0]);
        let floor = wall(backups, BACKUPS[1]);
        let restore = wall(restores, RESTORES[0]);
        let row = |t: &mut Table,
                   case: &str,
                   secs: f64,
                   ratio: Option<(f64, &str, f64)>,
                   c: (f64, f64, f64, f64)| {
            let (ratio, target, result) = match ratio {
                Some((r, label, max)) => (
                    format!("{r:.2}× {label}"),
                    format!("≤ {max:.2}×"),
                    verdict(r <= max),
                ),
                None => (String::new(), String::new(), String::new()),
            };
            t.row(vec![
                case.to_string(),
                num(secs, 1),
                ratio,
                target,
                result,
                num(c.0, 1),
                num(c.1, 1),
                num(c.2, 1),
                num(c.3, 1),
            ]);
        };
        let failed = |t: &mut Table, case: &str| {
            if let Some(errors) = failures.get(case) {
                let first = errors[0].chars().take(300).collect::<String>();
                t.row(vec![
                    case.to_string(),
                    String::new(),
                    format!("{} of {runs} runs failed", errors.len()),
                    String::new(),
                    "FAIL".into(),
                ]);
                t.note(format!("{case} failed: {first}"));
            }
        };
        for case in BACKUPS {
            if !backups.contains_key(case) {
                failed(&mut t, case);
                continue;
            }
            let secs = wall(backups, case);
            let c = cpu(backups, case);
            if case.starts_with("capsule") {
                row(
                    &mut t,
                    case,
                    secs,
                    Some((secs / dump, "pg_dump -Fc", 1.0)),
                    c,
                );
                row(
                    &mut t,
                    "",
                    secs,
                    Some((secs / floor, "floor", 1.15)),
                    (c.0, c.1, c.2, c.3),
                );
            } else {
                row(&mut t, case, secs, None, c);
            }
        }
        for case in RESTORES {
            if !restores.contains_key(case) {
                failed(&mut t, case);
                continue;
            }
            let secs = wall(restores, case);
            let c = cpu(restores, case);
            if case.starts_with("capsule") {
                row(
                    &mut t,
                    case,
                    secs,
                    Some((secs / restore, "pg_restore", 1.1)),
                    c,
                );
            } else {
                row(&mut t, case, secs, None, c);
            }
        }
        t.note(format!(
            "Load average (1, 5, 15 min) before the runs: {}; after: {}. \"others\" is the CPU \
             time every other process on the machine used during the run (other engineers' \
             builds): a large value marks a noisy number.",
            load.0, load.1
        ));
        t.note(
            "capsule: the release binary as a child process, `capsule pg --create --pg-url …` \
             (roles artifact, then pg_dump -Fc -Z0 of an exported snapshot → zstd -3 on 2 \
             threads → SHA-256 → store, with row counts of every table taken in the same \
             snapshot) and `capsule pg --restore --target-db …` (checksums verified, then \
             pg_restore fed from the store). Runs interleaved; the cluster runs with fsync=off.",
        );

        let mut sizes = Table::new(
            format!("PostgreSQL artifact size, {what}"),
            &["artifact", "bytes", "MiB", "ratio", "target", "result"],
        );
        sizes.row(vec![
            "pg_dump -Fc file (gzip level 6)".into(),
            reference_bytes.to_string(),
            num(reference_bytes as f64 / MIB as f64, 1),
            String::new(),
            String::new(),
            String::new(),
        ]);
        if let Some((_, id, data, total)) = ids.iter().rev().find(|i| !i.0) {
            for (label, bytes) in [
                (format!("capsule dump.pgc.zst ({id})"), *data),
                ("capsule, every artifact (dump + roles)".to_string(), *total),
            ] {
                let r = bytes as f64 / reference_bytes as f64;
                sizes.row(vec![
                    label,
                    bytes.to_string(),
                    num(bytes as f64 / MIB as f64, 1),
                    format!("{r:.3}×"),
                    "≤ 1.00×".into(),
                    verdict(r <= 1.0),
                ]);
            }
        }

        let mut mem = Table::new(
            format!("PostgreSQL peak memory and temporary disk, {what}"),
            &[
                "case",
                "capsule peak RSS MiB",
                "target",
                "result",
                "tool peak RSS MiB",
                "temp disk",
                "result",
            ],
        );
        let all = backups
            .iter()
            .chain(restores.iter())
            .filter(|(c, _)| c.starts_with("capsule"));
        for (case, samples) in all {
            let hwm = samples.iter().map(|s| s.hwm_kib).max().unwrap_or(0) as f64 / 1024.0;
            let mut tools: BTreeMap<&str, u64> = BTreeMap::new();
            for s in samples {
                for (name, kib) in &s.children_kib {
                    let e = tools.entry(name.as_str()).or_default();
                    *e = (*e).max(*kib);
                }
            }
            let tools = tools
                .iter()
                .map(|(n, k)| format!("{n} {:.1}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", ");
            let tmp = samples.iter().map(|s| s.tmp_peak).max().unwrap_or(0);
            let written: BTreeSet<&String> = samples.iter().flat_map(|s| &s.written).collect();
            let touched = samples.iter().any(|s| s.tmp_touched);
            let overshoot = samples.iter().map(|s| s.store_overshoot).max().unwrap_or(0);
            let temp_ok = written.is_empty() && tmp == 0 && !touched && overshoot == 0;
            let temp = if temp_ok {
                "0 bytes".to_string()
            } else {
                let mut parts = Vec::new();
                if touched || tmp > 0 {
                    parts.push(format!("TMPDIR: files created, peak {tmp} B seen"));
                }
                if !written.is_empty() {
                    let list: Vec<&str> = written.iter().map(|s| s.as_str()).collect();
                    parts.push(format!("written: {}", list.join(", ")));
                }
                if overshoot > 0 {
                    parts.push(format!("store dir {overshoot} B above its final size"));
                }
                parts.join("; ")
            };
            mem.row(vec![
                case.to_string(),
                num(hwm, 1),
                format!("≤ {RSS_TARGET_MIB:.0}"),
                verdict(hwm <= RSS_TARGET_MIB),
                tools,
                temp,
                verdict(temp_ok),
            ]);
        }
        for case in [BACKUPS[0], RESTORES[0]] {
            let samples = backups.get(case).or_else(|| restores.get(case));
            let hwm = samples
                .into_iter()
                .flatten()
                .map(|s| s.hwm_kib)
                .max()
                .unwrap_or(0) as f64
                / 1024.0;
            mem.row(vec![
                format!("{case} (reference)"),
                String::new(),
                String::new(),
                String::new(),
                format!(
                    "{} {hwm:.1}",
                    if case == RESTORES[0] {
                        "pg_restore"
                    } else {
                        "pg_dump"
                    }
                ),
                String::new(),
                String::new(),
            ]);
        }
        mem.note(
            "Peak RSS is VmHWM from /proc/<pid>/status, sampled every 10 ms while the process \
             runs (the last sample before it exits; VmHWM only grows). The tool (pg_dump, \
             pg_restore) is capsule's child process and is measured on its own.",
        );
        mem.note(
            "Temp disk: capsule runs with TMPDIR set to an empty private directory whose size \
             is sampled every 10 ms; every file capsule or its tool holds open for writing \
             (from /proc/<pid>/fd and fdinfo) outside the store directory is listed; for \
             file:// the store directory may never hold more than the artifacts finally stored.",
        );
        vec![t, sizes, mem]
    }
}

impl Sample {
    /// Two commands run one after the other, as one.
    fn then(mut self, next: Sample) -> Sample {
        self.secs += next.secs;
        self.cpu_tree += next.cpu_tree;
        self.cpu_server += next.cpu_server;
        self.cpu_s3 += next.cpu_s3;
        self.cpu_foreign += next.cpu_foreign;
        self.hwm_kib = self.hwm_kib.max(next.hwm_kib);
        self
    }
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lets an async fn run to completion on this (blocking) thread.
trait AwaitBlocking: std::future::Future + Sized {
    fn await_blocking(self) -> Self::Output {
        tokio::runtime::Handle::current().block_on(self)
    }
}
impl<F: std::future::Future> AwaitBlocking for F {}

/// CPU seconds of this process's waited-for children (`cutime + cstime`).
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (get(13) + get(14)) as f64 / 100.0
}

/// CPU seconds of a server's process group, including the processes that
/// already exited (PostgreSQL's backends end with their connection): those
/// are counted in the leader's `cutime + cstime` once it reaped them.
fn server_cpu_secs(pgid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pgid}/stat")).unwrap_or_default();
    let reaped = stat.rfind(')').map_or(0.0, |close| {
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        (get(13) + get(14)) as f64 / 100.0
    });
    group_cpu_secs(pgid) + reaped
}

/// `VmHWM` of `pid`, in KiB.
fn hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmHWM:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// The children of `pid` (started by any of its threads), with their
/// command names.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .map(|c: u32| {
            let comm = std::fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            (c, comm.trim().to_string())
        })
        .collect()
}

/// Bytes under `dir` (regular files).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Regular files `pid` holds open for writing, outside `allowed` and /dev.
fn files_written(pid: u32, allowed: &Path, out: &mut BTreeSet<String>) {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    for fd in rd.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let text = target.to_string_lossy().into_owned();
        if !text.starts_with('/') || text.starts_with("/dev/") || target.starts_with(allowed) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        // O_ACCMODE: 1 write-only, 2 read-write.
        if flags & 0o3 != 0 {
            out.insert(text);
        }
    }
}

/// Runs `cmd` to completion while sampling it; fails when it fails.
fn watch(
    mut cmd: Command,
    store: &Path,
    tmp: &Path,
    server_pgid: u32,
    s3_pgid: u32,
) -> Result<Sample> {
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    if cmd.get_program().to_string_lossy().ends_with("capsule") {
        cmd.stdout(Stdio::piped());
    }
    let tmp_mtime = || std::fs::metadata(tmp).and_then(|m| m.modified()).ok();
    let tmp0 = tmp_mtime();
    let (self0, cpu0, server0, s30, busy0) = (
        cpu_secs("self").unwrap_or(0.0),
        children_cpu_secs(),
        server_cpu_secs(server_pgid),
        server_cpu_secs(s3_pgid),
        machine_busy_secs(),
    );
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|r| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    })
    .collect();
    let mut sample = Sample::default();
    let mut store_peak = 0;
    let mut tick = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(k) = hwm_kib(pid) {
            sample.hwm_kib = sample.hwm_kib.max(k);
        }
        // Read each time: right after the spawn it is still this binary.
        let root_exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        for (c, comm) in children_of(pid) {
            // A child between fork and exec is still the parent's program.
            if std::fs::read_link(format!("/proc/{c}/exe")).ok() == root_exe {
                continue;
            }
            if let Some(k) = hwm_kib(c) {
                let e = sample.children_kib.entry(comm).or_default();
                *e = (*e).max(k);
            }
            if tick.is_multiple_of(10) {
                files_written(c, store, &mut sample.written);
            }
        }
        sample.tmp_peak = sample.tmp_peak.max(dir_bytes(tmp));
        if tick.is_multiple_of(10) {
            files_written(pid, store, &mut sample.written);
            store_peak = store_peak.max(dir_bytes(store));
        }
        tick += 1;
        std::thread::sleep(Duration::from_millis(10));
    };
    sample.secs = started.elapsed().as_secs_f64();
    // The server reaps a backend shortly after its client left; only then
    // is its CPU time counted (in the leader's cutime).
    std::thread::sleep(Duration::from_millis(300));
    let mut texts = readers.into_iter().map(|h| h.join().unwrap_or_default());
    sample.stdout = texts.next().unwrap_or_default();
    let stderr = texts.next().unwrap_or_default();
    if !status.success() {
        bail!("{cmd:?} failed ({status}): {}", stderr.trim());
    }
    sample.tmp_touched = tmp_mtime() != tmp0;
    sample.store_overshoot = store_peak.saturating_sub(dir_bytes(store));
    let me = cpu_secs("self").unwrap_or(0.0) - self0;
    sample.cpu_tree = children_cpu_secs() - cpu0;
    sample.cpu_server = server_cpu_secs(server_pgid) - server0;
    sample.cpu_s3 = server_cpu_secs(s3_pgid) - s30;
    let busy = machine_busy_secs() - busy0;
    sample.cpu_foreign = (busy - me - sample.cpu_tree - sample.cpu_server - sample.cpu_s3).max(0.0);
    Ok(sample)
}
