//! The Redis benchmark, side by side in one run on one server:
//!
//! - capture: capsule (replication → zstd → SHA-256 → `file://` or
//!   SeaweedFS, with the RDB verified on the way) against
//!   `redis-cli --rdb <file>`, both with `repl-diskless-sync-delay 0`;
//!   target ≤ 1.1× its wall time; plus, not targets, the same capture to
//!   an S3 endpoint that discards what it gets (`sink.rs`), which shows
//!   what SeaweedFS's own work on the shared cores adds, and
//!   `redis-cli --rdb - | zstd -1 | sha256sum` into a file, the reference
//!   tools doing capsule's job (compress, checksum) on the same cores;
//! - restore: capsule (download → verify → parse → pipelined `MSET`s and
//!   `SET`s for strings, `RESTORE` for the rest), and capsule `--flush` (the target
//!   replicates the RDB from capsule), against `redis-cli --pipe` of one
//!   `RESTORE` per key read from a file; target ≤ 1.0×; also against
//!   `redis-cli --pipe` of the very commands capsule sends (checked: the
//!   server counts as many `SET`s, `MSET`s and `RESTORE`s for both);
//! - the cold start of a `redis-server` loading that RDB, for scale;
//! - peak RSS of capsule's backup and restore processes (each a child
//!   process: this binary with `redis --child`), at the main size and at
//!   `--rss-keys`; target ≤ 64 MiB.
//!
//! The capture and restore series run twice (`--layout both`): with the
//! cores shared by every process (the Redis fork, capsule and SeaweedFS
//! compete for two cores), then split (the Redis servers on CPU 1, the
//! rest on CPU 0), as if Redis ran on a machine of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use capsule_core::{
    BackupOptions, Catalog, JobContext, NoProgress, RestoreOptions, run_backup, run_restore,
};
use capsule_engines::{RedisEngine, RedisOptions};
use capsule_store::Store;
use test_support::redis::{Redis, RedisClient};

mod data;

use data::{Commands, load, write_commands};

use crate::measure::{CpuMeter, Layout, MIB, median, self_status_kib};
use crate::server::S3Server;
use crate::sink::S3Sink;
use crate::table::{Table, num, verdict};

const BUCKET: &str = "bench-redis";
const PREFIX: &str = "cnvrg-smart-backups";
/// Environment of the child: the Redis URL, the store URL (with keys), the backup id.
const REDIS_ENV: &str = "CAPSULE_BENCH_REDIS_URL";
const STORE_ENV: &str = "CAPSULE_BENCH_STORE_URL";
const ID_ENV: &str = "CAPSULE_BENCH_BACKUP_ID";
const RSS_TARGET_MIB: f64 = 64.0;

/// `capsule-bench redis` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct RedisArgs {
    /// Keys of the main dataset (mixed types, ~150 B each in the RDB).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Keys of the memory-only run (0 to skip).
    #[arg(long, default_value_t = 4_000_000)]
    pub rss_keys: u64,
    /// Cores: `shared` (every process on both), `split` (the Redis
    /// servers on CPU 1, everything else on CPU 0, as if Redis ran on a
    /// machine of its own), or `both`, one after the other.
    #[arg(long, value_enum, default_value_t = Layouts::Both)]
    pub layout: Layouts,
    /// Internal: run one capsule backup or restore and print a JSON line.
    #[arg(long, hide = true, value_name = "backup|restore|restore-flush")]
    pub child: Option<String>,
}

/// One capsule run in a child process.
#[derive(Clone, Copy, Debug)]
struct ChildRun {
    secs: f64,
    cpu_secs: f64,
    peak_mib: f64,
}

/// The core layouts `--layout` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Layouts {
    /// Every process on both cores.
    Shared,
    /// The Redis servers on CPU 1, everything else on CPU 0.
    Split,
    /// Shared, then split.
    Both,
}

impl Layouts {
    fn list(self) -> Vec<Layout> {
        match self {
            Layouts::Shared => vec![Layout::Shared],
            Layouts::Split => vec![Layout::Split],
            Layouts::Both => vec![Layout::Shared, Layout::Split],
        }
    }
}

/// What one note says of each layout.
fn layout_note(layout: Layout) -> &'static str {
    match layout {
        Layout::Shared => {
            "cores shared: every process may use both cores, so the Redis fork that writes the RDB, the server, capsule and SeaweedFS compete for them (the worst case: everything on one 2-core machine)"
        }
        Layout::Split => {
            "cores split 1+1: the Redis servers (and the forks that write their RDBs) pinned to CPU 1, this bench, capsule, redis-cli and SeaweedFS to CPU 0 (taskset), as if Redis ran in a pod whose CPU the backup does not take"
        }
    }
}

/// The servers, stores and files every series uses.
struct Setup {
    runs: usize,
    keys: u64,
    s3: S3Server,
    sink: S3Sink,
    source: Redis,
    target: Redis,
    file_store: String,
    s3_store: String,
    /// `redis-cli --rdb`'s output.
    rdb: PathBuf,
    /// A `RESTORE` per key, for `redis-cli --pipe`.
    restores: PathBuf,
    /// The commands capsule sends, for `redis-cli --pipe`.
    same: PathBuf,
}

impl Setup {
    /// Pins the processes as `layout` says.
    fn apply(&self, layout: Layout) -> Result<()> {
        layout.apply(
            &[self.s3.pgid()],
            &[self.source.process().pid(), self.target.process().pid()],
        )
    }
}

/// Runs the benchmark; `runs` timed runs per measurement (median).
///
/// # Errors
/// When a server, a tool or a child fails.
pub async fn run(args: &RedisArgs, runs: usize) -> Result<Vec<Table>> {
    // Checked before the minutes of loading: the capture series pipes
    // redis-cli's RDB through these.
    for tool in ["zstd", "sha256sum", "tee"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(
            found,
            "the redis benchmark needs the `{tool}` command (bench/setup.sh installs zstd)"
        );
    }
    let work = tempfile::Builder::new()
        .prefix("capsule-bench-redis-")
        .tempdir()?;
    let s3 = S3Server::start(&[BUCKET]).await?;
    let setup = Setup {
        runs,
        keys: args.keys,
        s3_store: s3.url(BUCKET),
        s3,
        sink: S3Sink::start().await?,
        source: tokio::task::spawn_blocking(Redis::start).await?,
        target: tokio::task::spawn_blocking(Redis::start).await?,
        file_store: format!("file://{}", work.path().join("store").display()),
        rdb: work.path().join("ref.rdb"),
        restores: work.path().join("restore.resp"),
        same: work.path().join("capsule.resp"),
    };
    eprintln!("loading {} keys…", args.keys);
    load(&setup.source, args.keys)?;
    std::fs::create_dir_all(work.path().join("store"))?;

    let mut tables = Vec::new();
    let (mut backup_peak, mut restore_peak) = (0.0f64, 0.0f64);
    for layout in args.layout.list() {
        setup.apply(layout)?;
        let series = async {
            let (capture, ids, peak) = capture(&setup, layout).await?;
            backup_peak = backup_peak.max(peak);
            if !setup.same.exists() {
                eprintln!("writing the commands…");
                write_commands(&setup.rdb, &setup.restores, Commands::Restore)?;
                write_commands(&setup.rdb, &setup.same, Commands::Capsule)?;
            }
            let (restore, peak) = restore(&setup, layout, &ids).await?;
            restore_peak = restore_peak.max(peak);
            anyhow::Ok([capture, restore])
        }
        .await;
        setup.apply(Layout::Shared)?;
        tables.extend(series?);
    }
    let cold = cold_start(&setup.rdb)?;
    if let Some(restore) = tables.get_mut(1) {
        restore.note(format!(
            "for scale: a cold redis-server start loading the same RDB takes {cold:.2} s (cores shared)"
        ));
    }

    if args.rss_keys > 0 {
        let (source, target) = (&setup.source, &setup.target);
        let file_store = &setup.file_store;
        eprintln!("memory run: loading {} keys…", args.rss_keys);
        flush(source)?;
        load(source, args.rss_keys)?;
        let (b, id) = child("backup", &source.url(), file_store, None)?;
        flush(target)?;
        let (r, _) = child("restore", &target.url(), file_store, Some(&id))?;
        flush(target)?;
        let (rf, _) = child("restore-flush", &target.url(), file_store, Some(&id))?;
        let mut t = Table::new(
            "Redis peak RSS of capsule",
            &["keys", "backup MiB", "restore MiB", "target", "result"],
        );
        for (keys, bk, rs) in [
            (args.keys, backup_peak, restore_peak),
            (args.rss_keys, b.peak_mib, r.peak_mib.max(rf.peak_mib)),
        ] {
            t.row(vec![
                keys.to_string(),
                num(bk, 1),
                num(rs, 1),
                format!("≤ {RSS_TARGET_MIB:.0}"),
                verdict(bk <= RSS_TARGET_MIB && rs <= RSS_TARGET_MIB),
            ]);
        }
        t.note("VmHWM of the child process doing one backup (replication capture to file://) or one restore (from file://, with RESTORE commands and by replication)");
        tables.push(t);
    }
    Ok(tables)
}

/// The capture series in `layout`: its table, the ids of the last
/// backups to `file://` and to SeaweedFS, and capsule's peak RSS.
async fn capture(setup: &Setup, layout: Layout) -> Result<(Table, (String, String), f64)> {
    let (runs, source) = (setup.runs, &setup.source);
    let (mut cli_secs, mut file, mut seaweed, mut discard, mut shell) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The reference tools doing capsule's job on a local disk: compress
    // (zstd level 1, as capsule) and checksum (SHA-256) the RDB. With `-`,
    // redis-cli 7.0 leaves the diskless transfer's 40-byte end mark in its
    // output (it truncates a file, not a pipe): only the time is used.
    let shell_pipe = format!(
        "set -o pipefail; redis-cli -p {} --rdb - | zstd -1 -q -c | tee {} | sha256sum >/dev/null",
        source.port,
        setup.rdb.with_extension("rdb.zst").display()
    );
    let mut ids = (String::new(), String::new());
    crate::measure::wait_for_quiet().await;
    for run in 0..runs {
        eprintln!("capture ({}) run {}/{runs}…", layout.label(), run + 1);
        for case in rotation(run, 5) {
            match case {
                0 => cli_secs.push(timed(
                    Command::new("redis-cli")
                        .args(["-p", &source.port.to_string(), "--rdb"])
                        .arg(&setup.rdb),
                )?),
                1 => {
                    let (r, id) = child("backup", &source.url(), &setup.file_store, None)?;
                    file.push(r);
                    ids.0 = id;
                }
                2 => {
                    let (r, id) = child("backup", &source.url(), &setup.s3_store, None)?;
                    seaweed.push(r);
                    ids.1 = id;
                }
                3 => discard.push(child("backup", &source.url(), &setup.sink.url(BUCKET), None)?.0),
                _ => shell.push(timed(Command::new("bash").args(["-c", &shell_pipe]))?),
            }
        }
    }
    let rdb_mib = std::fs::metadata(&setup.rdb)?.len() as f64 / MIB as f64;
    let reference = median(&cli_secs);
    let mut capture = Table::new(
        format!(
            "Redis capture, cores {}: {} keys, RDB {:.0} MiB",
            layout.label(),
            setup.keys,
            rdb_mib
        ),
        &[
            "case",
            "seconds",
            "ratio",
            "target",
            "capsule CPU s",
            "peak RSS MiB",
            "result",
        ],
    );
    capture.row(vec![
        "redis-cli --rdb (file)".into(),
        num(reference, 2),
        "1.00×".into(),
        "".into(),
        "".into(),
        "".into(),
    ]);
    let shell_secs = median(&shell);
    capture.row(vec![
        "redis-cli --rdb - | zstd -1 | sha256sum (file)".into(),
        num(shell_secs, 2),
        format!("{:.2}×", shell_secs / reference),
        "".into(),
        "".into(),
        "".into(),
    ]);
    // The discarding endpoint is not a target row: it shows what the
    // SeaweedFS row costs without SeaweedFS.
    for (name, r, target) in [
        ("capsule → file:// (zstd, sha256)", &file, true),
        ("capsule → SeaweedFS (zstd, sha256)", &seaweed, true),
        ("capsule → S3 that discards (zstd, sha256)", &discard, false),
    ] {
        let secs = median(&walls(r));
        let cpu = median(&r.iter().map(|x| x.cpu_secs).collect::<Vec<_>>());
        let ratio = secs / reference;
        capture.row(vec![
            name.into(),
            num(secs, 2),
            format!("{ratio:.2}×"),
            if target {
                "≤ 1.10×".into()
            } else {
                "".into()
            },
            num(cpu, 2),
            num(peak(r), 1),
            if target {
                verdict(ratio <= 1.1)
            } else {
                "".into()
            },
        ]);
    }
    capture.note(format!("median of {runs} runs; each round runs the cases in turn, starting one case later than the round before; repl-diskless-sync-delay 0 on the server; capsule verifies the RDB (header, framing, CRC-64) while it streams"));
    capture.note(layout_note(layout));
    capture.note(format!(
        "per run, capsule against the reference run of the same round: file:// {}; SeaweedFS {}; discarding S3 {}",
        paired(&cli_secs, &walls(&file)),
        paired(&cli_secs, &walls(&seaweed)),
        paired(&cli_secs, &walls(&discard))
    ));
    capture.note(format!(
        "redis-cli --rdb - | zstd -1 | sha256sum: not a target row, the reference tools doing capsule's job (compress at capsule's zstd level, checksum) into a local file, on the same cores; per run against the reference: {}",
        paired(&cli_secs, &shell)
    ));
    capture.note(format!(
        "S3 that discards: capsule's whole S3 client path (SigV4, HTTP, multipart, {:.0} MiB of parts per run) to an endpoint in this bench's process that stores nothing, so the cores carry no storage work; not a target row, it shows what SeaweedFS itself adds",
        setup.sink.take_discarded_bytes() as f64 / runs.max(1) as f64 / MIB as f64
    ));
    let peak = peak(&file).max(peak(&seaweed));
    Ok((capture, ids, peak))
}

/// The restore series in `layout`, from the backups `ids` (`file://`,
/// SeaweedFS): its table and capsule's peak RSS.
async fn restore(setup: &Setup, layout: Layout, ids: &(String, String)) -> Result<(Table, f64)> {
    let (runs, source, target) = (setup.runs, &setup.source, &setup.target);
    let (file_store, s3_store) = (&setup.file_store, &setup.s3_store);
    let (mut pipe_secs, mut same_secs) = (Vec::new(), Vec::new());
    let (mut restore_file, mut restore_s3) = (Vec::new(), Vec::new());
    let (mut flush_file, mut flush_s3) = (Vec::new(), Vec::new());
    let pipe = |commands: &Path| -> Result<f64> {
        let input = std::fs::File::open(commands)
            .with_context(|| format!("opening {}", commands.display()))?;
        timed(
            Command::new("redis-cli")
                .args(["-p", &target.port.to_string(), "--pipe"])
                .stdin(input),
        )
    };
    let restored = |what: &str, store: &str, id: &str| -> Result<ChildRun> {
        Ok(child(what, &target.url(), store, Some(id))?.0)
    };
    let want = source.digest();
    let target_pgid = target.process().pid();
    // The target server's CPU seconds, per case and run.
    let mut server_cpu = vec![Vec::new(); RESTORE_CASES.len()];
    let mut piped_calls = None;
    crate::measure::wait_for_quiet().await;
    for run in 0..runs {
        eprintln!("restore ({}) run {}/{runs}…", layout.label(), run + 1);
        // Every case starts on an empty target right after the same work
        // (a FLUSHALL after a DEBUG DIGEST of the previous case's result).
        for case in rotation(run, RESTORE_CASES.len()) {
            flush(target)?;
            let meter = CpuMeter::start(Some(target_pgid));
            match case {
                0 => pipe_secs.push(pipe(&setup.restores)?),
                1 => same_secs.push(pipe(&setup.same)?),
                2 => restore_file.push(restored("restore", file_store, &ids.0)?),
                3 => restore_s3.push(restored("restore", s3_store, &ids.1)?),
                4 => flush_file.push(restored("restore-flush", file_store, &ids.0)?),
                _ => flush_s3.push(restored("restore-flush", s3_store, &ids.1)?),
            }
            server_cpu[case].push(meter.stop().server);
            ensure!(
                target.digest() == want,
                "{} did not restore the source",
                RESTORE_CASES[case]
            );
            // The pipe of capsule's commands must be what capsule sends
            // (besides its probe: one `SET … XX` that writes nothing).
            let calls = write_calls(target);
            match case {
                1 => piped_calls = Some(calls),
                2 | 3 => {
                    let [set, mset, restore] = calls;
                    let sent = [set.saturating_sub(1), mset, restore];
                    if let Some(piped) = piped_calls {
                        ensure!(
                            sent == piped,
                            "{} sent SET/MSET/RESTORE {sent:?}, the pipe of its commands {piped:?}",
                            RESTORE_CASES[case]
                        );
                    }
                }
                _ => {}
            }
        }
    }
    let reference = median(&pipe_secs);
    let same_reference = median(&same_secs);
    let server_secs = |case: usize| num(median(&server_cpu[case]), 2);
    let mut restore = Table::new(
        format!(
            "Redis restore, cores {}: {} keys",
            layout.label(),
            setup.keys
        ),
        &[
            "case",
            "seconds",
            "ratio",
            "target",
            "vs same commands",
            "server CPU s",
            "capsule CPU s",
            "peak RSS MiB",
            "result",
        ],
    );
    restore.row(vec![
        "redis-cli --pipe (a RESTORE per key, from a file)".into(),
        num(reference, 2),
        "1.00×".into(),
        "".into(),
        "".into(),
        server_secs(0),
        "".into(),
        "".into(),
        "".into(),
    ]);
    restore.row(vec![
        "redis-cli --pipe (capsule's commands, from a file)".into(),
        num(same_reference, 2),
        format!("{:.2}×", same_reference / reference),
        "".into(),
        "1.00×".into(),
        server_secs(1),
        "".into(),
        "".into(),
        "".into(),
    ]);
    for (case, (name, r, by_commands)) in (2..).zip([
        ("capsule ← file:// (commands)", &restore_file, true),
        ("capsule ← SeaweedFS (commands)", &restore_s3, true),
        (
            "capsule --flush ← file:// (replication)",
            &flush_file,
            false,
        ),
        (
            "capsule --flush ← SeaweedFS (replication)",
            &flush_s3,
            false,
        ),
    ]) {
        let secs = median(&walls(r));
        let cpu = median(&r.iter().map(|x| x.cpu_secs).collect::<Vec<_>>());
        let ratio = secs / reference;
        restore.row(vec![
            name.into(),
            num(secs, 2),
            format!("{ratio:.2}×"),
            "≤ 1.00×".into(),
            match by_commands {
                true => format!("{:.2}×", secs / same_reference),
                false => String::new(),
            },
            server_secs(case),
            num(cpu, 2),
            num(peak(r), 1),
            verdict(ratio <= 1.0),
        ]);
    }
    restore.note(format!("median of {runs} runs; each round runs the cases in turn, starting one case later than the round before; before each case the target is emptied (FLUSHALL), after it its DEBUG DIGEST must equal the source's"));
    restore.note("capsule's time includes verifying the stored SHA-256 first, downloading, decompressing and parsing");
    restore.note(layout_note(layout));
    restore.note("commands: the default restore, which keeps the target's other keys: the strings without an expiry in one MSET per batch of 256 keys, SET key value PXAT ms for those with one, RESTORE for the other types (the server counts as many of each for capsule as for the pipe of its commands); --flush: the target replicates the RDB from capsule (REPLICAOF) and loads it itself");
    restore.note("ratio: against a RESTORE per key (the reference); vs same commands: against redis-cli --pipe of exactly what capsule sends");
    restore.note("server CPU s: CPU time of the target redis-server over the case (median), from /proc: the work the restore cost the server, whatever the wall time");
    restore.note(format!(
        "per run, against the RESTORE-per-key run of the same round: capsule's commands piped {}; capsule ← file:// {}; ← SeaweedFS {}",
        paired(&pipe_secs, &same_secs),
        paired(&pipe_secs, &walls(&restore_file)),
        paired(&pipe_secs, &walls(&restore_s3))
    ));
    let peak = [&restore_file, &restore_s3, &flush_file, &flush_s3]
        .into_iter()
        .map(|r| peak(r))
        .fold(0.0, f64::max);
    Ok((restore, peak))
}

/// The restore cases, in the order of their first round.
const RESTORE_CASES: [&str; 6] = [
    "redis-cli --pipe of a RESTORE per key",
    "redis-cli --pipe of capsule's commands",
    "capsule's restore from file://",
    "capsule's restore from SeaweedFS",
    "capsule's restore --flush from file://",
    "capsule's restore --flush from SeaweedFS",
];

/// The indexes `0..n` starting at `run % n`: round `run` of cases that
/// take turns, so that every case runs at every place of a round alike.
fn rotation(run: usize, n: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + run) % n)
}

/// The highest peak RSS of `runs`, in MiB.
fn peak(runs: &[ChildRun]) -> f64 {
    runs.iter().map(|x| x.peak_mib).fold(0.0, f64::max)
}

/// The ratio of each run to the reference run of the same round, and
/// their median: `1.02 0.98 … (median 1.01)`. Paired ratios cancel the
/// drift of a shared machine between rounds.
fn paired(reference: &[f64], secs: &[f64]) -> String {
    let ratios: Vec<f64> = reference.iter().zip(secs).map(|(r, s)| s / r).collect();
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    format!("{} (median {:.2})", each.join(" "), median(&ratios))
}

/// The wall times of `runs`.
fn walls(runs: &[ChildRun]) -> Vec<f64> {
    runs.iter().map(|r| r.secs).collect()
}

/// Wall time of `cmd`, which must succeed.
fn timed(cmd: &mut Command) -> Result<f64> {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(start.elapsed().as_secs_f64())
}

/// Runs this binary as `redis --child <what>`; returns its time, peak RSS and backup id.
fn child(what: &str, redis: &str, store: &str, id: Option<&str>) -> Result<(ChildRun, String)> {
    let exe = std::env::current_exe().context("this binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["redis", "--child", what])
        .env(REDIS_ENV, redis)
        .env(STORE_ENV, store);
    if let Some(id) = id {
        cmd.env(ID_ENV, id);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "the {what} child failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("child output")?;
    Ok((
        ChildRun {
            secs: v["secs"].as_f64().unwrap_or(0.0),
            cpu_secs: v["cpuSecs"].as_f64().unwrap_or(0.0),
            peak_mib: v["vmHwmKib"].as_f64().unwrap_or(0.0) / 1024.0,
        },
        v["id"].as_str().unwrap_or_default().to_string(),
    ))
}

/// The child: one backup or restore, then its time and peak RSS as JSON.
///
/// # Errors
/// When the job fails.
pub async fn child_main(args: &RedisArgs) -> Result<()> {
    let env = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    let catalog = Catalog::new(Store::from_url(&env(STORE_ENV)?)?.with_prefix(PREFIX)?);
    let options = RedisOptions::from_url(&env(REDIS_ENV)?)?
        .with_flush(args.child.as_deref() == Some("restore-flush"));
    let engine = RedisEngine::new(options);
    let ctx = JobContext::new(&NoProgress);
    let start = Instant::now();
    let id = match args.child.as_deref() {
        Some("backup") => run_backup(&catalog, &engine, BackupOptions::default(), &ctx)
            .await?
            .statefile
            .backup_id
            .to_string(),
        Some("restore" | "restore-flush") => {
            let id = env(ID_ENV)?;
            run_restore(&catalog, &engine, &id, RestoreOptions::default(), &ctx).await?;
            id
        }
        other => bail!("unknown child {other:?}"),
    };
    let secs = start.elapsed().as_secs_f64();
    let hwm = self_status_kib("VmHWM").context("reading VmHWM")?;
    let cpu = crate::measure::cpu_secs("self").unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({ "secs": secs, "cpuSecs": cpu, "vmHwmKib": hwm, "id": id })
    );
    Ok(())
}

/// Empties `redis` and zeroes its command statistics.
fn flush(redis: &Redis) -> Result<()> {
    redis.cmd(&[b"FLUSHALL"]);
    ensure!(redis.keyspace().is_empty(), "FLUSHALL left keys");
    redis.cmd(&[b"CONFIG", b"RESETSTAT"]);
    Ok(())
}

/// Calls of `SET`, `MSET` and `RESTORE` since the last [`flush`].
fn write_calls(redis: &Redis) -> [u64; 3] {
    ["set", "mset", "restore"].map(|c| redis.calls(c))
}

/// Seconds from starting a `redis-server` on `rdb` (in its directory)
/// until it answers `PING` with `PONG` (not `LOADING`).
fn cold_start(rdb: &Path) -> Result<f64> {
    let port = test_support::process::free_port();
    let dir = rdb.parent().context("the RDB's directory")?;
    let name = rdb.file_name().context("the RDB's name")?;
    let start = Instant::now();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--dbfilename")
        .arg(name)
        .stdout(Stdio::null())
        .spawn()?;
    let ready = loop {
        if let Ok(mut c) = RedisClient::connect(port, None)
            && c.cmd(&[b"PING"]).text() == "PONG"
        {
            break Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(600) {
            break Err(anyhow::anyhow!(
                "redis-server did not load {} in 600 s",
                rdb.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = server.kill();
    let _ = server.wait();
    ready
}

#[cfg(test)]
mod tests {
    use super::rotation;

    #[test]
    fn each_round_starts_one_case_later() {
        assert_eq!(rotation(0, 4).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(rotation(1, 4).collect::<Vec<_>>(), [1, 2, 3, 0]);
        assert_eq!(rotation(6, 4).collect::<Vec<_>>(), [2, 3, 0, 1]);
    }
}
