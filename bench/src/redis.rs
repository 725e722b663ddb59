//! The Redis benchmark, side by side in one run on one server:
//!
//! - capture: capsule (replication → zstd → SHA-256 → `file://` or
//!   SeaweedFS, with the RDB verified on the way) against
//!   `redis-cli --rdb <file>`, both with `repl-diskless-sync-delay 0`;
//!   target ≤ 1.1× its wall time; plus, not a target, the same capture to
//!   an S3 endpoint that discards what it gets (`sink.rs`), which shows
//!   what SeaweedFS's own work on the shared cores adds;
//! - restore: capsule (download → verify → parse → pipelined `SET` for
//!   strings and `RESTORE` for the rest), and capsule `--flush` (the target
//!   replicates the RDB from capsule), against `redis-cli --pipe` of one
//!   `RESTORE` per key read from a file; target ≤ 1.0×; also against
//!   `redis-cli --pipe` of the very commands capsule sends;
//! - the cold start of a `redis-server` loading that RDB, for scale;
//! - peak RSS of capsule's backup and restore processes (each a child
//!   process: this binary with `redis --child`), at the main size and at
//!   `--rss-keys`; target ≤ 64 MiB.

use std::path::Path;
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

use crate::measure::{MIB, median, self_status_kib};
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

/// Runs the benchmark; `runs` timed runs per measurement (median).
///
/// # Errors
/// When a server, a tool or a child fails.
pub async fn run(args: &RedisArgs, runs: usize) -> Result<Vec<Table>> {
    let work = tempfile::Builder::new()
        .prefix("capsule-bench-redis-")
        .tempdir()?;
    let s3 = S3Server::start(&[BUCKET]).await?;
    let sink = S3Sink::start().await?;
    let source = tokio::task::spawn_blocking(Redis::start).await?;
    let target = tokio::task::spawn_blocking(Redis::start).await?;
    eprintln!("loading {} keys…", args.keys);
    load(&source, args.keys)?;
    std::fs::create_dir_all(work.path().join("store"))?;
    let file_store = format!("file://{}", work.path().join("store").display());
    let s3_store = s3.url(BUCKET);
    let rdb = work.path().join("ref.rdb");

    let (mut cli_secs, mut file, mut seaweed, mut discard) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut ids = (String::new(), String::new());
    crate::measure::wait_for_quiet().await;
    for run in 0..runs {
        eprintln!("capture run {}/{runs}…", run + 1);
        cli_secs.push(timed(
            Command::new("redis-cli")
                .args(["-p", &source.port.to_string(), "--rdb"])
                .arg(&rdb),
        )?);
        let (r, id) = child("backup", &source.url(), &file_store, None)?;
        file.push(r);
        ids.0 = id;
        let (r, id) = child("backup", &source.url(), &s3_store, None)?;
        seaweed.push(r);
        ids.1 = id;
        discard.push(child("backup", &source.url(), &sink.url(BUCKET), None)?.0);
    }
    let rdb_mib = std::fs::metadata(&rdb)?.len() as f64 / MIB as f64;
    let reference = median(&cli_secs);
    let mut capture = Table::new(
        format!("Redis capture: {} keys, RDB {:.0} MiB", args.keys, rdb_mib),
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
    // The discarding endpoint is not a target row: it shows what the
    // SeaweedFS row costs without SeaweedFS.
    for (name, r, target) in [
        ("capsule → file:// (zstd, sha256)", &file, true),
        ("capsule → SeaweedFS (zstd, sha256)", &seaweed, true),
        ("capsule → S3 that discards (zstd, sha256)", &discard, false),
    ] {
        let secs = median(&walls(r));
        let peak = r.iter().map(|x| x.peak_mib).fold(0.0, f64::max);
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
            num(peak, 1),
            if target {
                verdict(ratio <= 1.1)
            } else {
                "".into()
            },
        ]);
    }
    capture.note(format!("median of {runs} runs; repl-diskless-sync-delay 0 on the server; capsule verifies the RDB (header, framing, CRC-64) while it streams"));
    capture.note(format!(
        "per run, capsule against the reference run just before it: file:// {}; SeaweedFS {}; discarding S3 {}",
        paired(&cli_secs, &walls(&file)),
        paired(&cli_secs, &walls(&seaweed)),
        paired(&cli_secs, &walls(&discard))
    ));
    capture.note(format!(
        "S3 that discards: capsule's whole S3 client path (SigV4, HTTP, multipart, {:.0} MiB of parts per run) to an endpoint in this bench's process that stores nothing, so the cores carry no storage work; not a target row, it shows what SeaweedFS itself adds",
        sink.discarded_bytes() as f64 / runs.max(1) as f64 / MIB as f64
    ));

    eprintln!("writing the commands…");
    let restores = work.path().join("restore.resp");
    write_commands(&rdb, &restores, Commands::Restore)?;
    let same = work.path().join("capsule.resp");
    write_commands(&rdb, &same, Commands::Capsule)?;
    let (mut pipe_secs, mut same_secs) = (Vec::new(), Vec::new());
    let (mut restore_file, mut restore_s3) = (Vec::new(), Vec::new());
    let (mut flush_file, mut flush_s3) = (Vec::new(), Vec::new());
    let pipe = |commands: &Path| -> Result<f64> {
        flush(&target)?;
        let input = std::fs::File::open(commands)
            .with_context(|| format!("opening {}", commands.display()))?;
        let secs = timed(
            Command::new("redis-cli")
                .args(["-p", &target.port.to_string(), "--pipe"])
                .stdin(input),
        )?;
        ensure!(
            target.digest() == source.digest(),
            "redis-cli --pipe of {} did not restore the source",
            commands.display()
        );
        Ok(secs)
    };
    crate::measure::wait_for_quiet().await;
    for run in 0..runs {
        eprintln!("restore run {}/{runs}…", run + 1);
        pipe_secs.push(pipe(&restores)?);
        same_secs.push(pipe(&same)?);
        flush(&target)?;
        restore_file.push(child("restore", &target.url(), &file_store, Some(&ids.0))?.0);
        flush(&target)?;
        restore_s3.push(child("restore", &target.url(), &s3_store, Some(&ids.1))?.0);
        ensure!(
            target.digest() == source.digest(),
            "the restored server differs from the source"
        );
        flush(&target)?;
        flush_file.push(child("restore-flush", &target.url(), &file_store, Some(&ids.0))?.0);
        ensure!(
            target.digest() == source.digest(),
            "the server restored by replication differs from the source"
        );
        flush(&target)?;
        flush_s3.push(child("restore-flush", &target.url(), &s3_store, Some(&ids.1))?.0);
        ensure!(
            target.digest() == source.digest(),
            "the server restored by replication differs from the source"
        );
    }
    let reference = median(&pipe_secs);
    let same_reference = median(&same_secs);
    let mut restore = Table::new(
        format!("Redis restore: {} keys", args.keys),
        &[
            "case",
            "seconds",
            "ratio",
            "target",
            "vs same commands",
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
        "".into(),
        "".into(),
    ]);
    restore.row(vec![
        "redis-cli --pipe (capsule's commands, from a file)".into(),
        num(same_reference, 2),
        format!("{:.2}×", same_reference / reference),
        "".into(),
        "1.00×".into(),
        "".into(),
        "".into(),
    ]);
    for (name, r, by_commands) in [
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
    ] {
        let secs = median(&walls(r));
        let peak = r.iter().map(|x| x.peak_mib).fold(0.0, f64::max);
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
            num(cpu, 2),
            num(peak, 1),
            verdict(ratio <= 1.0),
        ]);
    }
    restore.note("capsule's time includes verifying the stored SHA-256 first, downloading, decompressing and parsing; the target is empty before each run");
    restore.note("commands: the default restore, which keeps the target's other keys: SET key value [PXAT ms] for each string, RESTORE for the rest; --flush: the target replicates the RDB from capsule (REPLICAOF) and loads it itself");
    restore.note("ratio: against a RESTORE per key (the reference); vs same commands: against redis-cli --pipe of exactly what capsule sends");
    restore.note(format!(
        "per run, against the RESTORE-per-key run of the same round: capsule's commands piped {}; capsule ← file:// {}; ← SeaweedFS {}",
        paired(&pipe_secs, &same_secs),
        paired(&pipe_secs, &walls(&restore_file)),
        paired(&pipe_secs, &walls(&restore_s3))
    ));
    let cold = cold_start(&rdb)?;
    restore.note(format!(
        "for scale: a cold redis-server start loading the same RDB takes {cold:.2} s"
    ));

    let mut tables = vec![capture, restore];
    if args.rss_keys > 0 {
        eprintln!("memory run: loading {} keys…", args.rss_keys);
        flush(&source)?;
        load(&source, args.rss_keys)?;
        let (b, id) = child("backup", &source.url(), &file_store, None)?;
        flush(&target)?;
        let (r, _) = child("restore", &target.url(), &file_store, Some(&id))?;
        flush(&target)?;
        let (rf, _) = child("restore-flush", &target.url(), &file_store, Some(&id))?;
        let mut t = Table::new(
            "Redis peak RSS of capsule",
            &["keys", "backup MiB", "restore MiB", "target", "result"],
        );
        let peak = |rs: &[ChildRun]| rs.iter().map(|x| x.peak_mib).fold(0.0, f64::max);
        let main = (
            peak(&file).max(peak(&seaweed)),
            peak(&restore_file)
                .max(peak(&restore_s3))
                .max(peak(&flush_file))
                .max(peak(&flush_s3)),
        );
        for (keys, bk, rs) in [
            (args.keys, main.0, main.1),
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

fn flush(redis: &Redis) -> Result<()> {
    redis.cmd(&[b"FLUSHALL"]);
    ensure!(redis.keyspace().is_empty(), "FLUSHALL left keys");
    Ok(())
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
