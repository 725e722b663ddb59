//! Benchmark: the Elasticsearch/OpenSearch engine against the server's own
//! ceilings and elasticdump, on one osmem-server, in one run.
//!
//! - Data: `--es-docs` documents of about 1 KiB (ids, keywords, a long
//!   beyond 2^53, a date, a title and a ~180-byte message as analysed
//!   text, a ~500-byte payload with floats stored but not indexed), in one
//!   index with explicit mappings.
//! - `_bulk` ceiling: a bare client (reqwest) sending pre-built bodies of
//!   2000 documents with 4 requests in flight (capsule's defaults) into an
//!   index created like capsule's restore creates one (replicas 0, refresh
//!   off).
//! - Sliced-scroll ceiling: a bare client reading every page of 1000
//!   documents (capsule's default) with 1, 2 and 4 slices, parsing only the
//!   scroll id and the number of hits; the best is the ceiling.
//! - capsule: a child process (`capsule-bench es-child`, this binary) runs
//!   `run_backup` / `run_restore` with the engine's and pipeline's defaults
//!   into a `file://` store and reports its time and peak RSS (`VmHWM`).
//! - elasticdump 6.125.1 (`bench/setup.sh`): `--type=data --limit=1000`
//!   into a file, with `track_total_hits` in its search body (else it
//!   stops at the 10,000 hits the server reports by default).
//!
//! After the load, one untimed full read warms the server. Runs are
//! interleaved (ceiling, capsule, elasticdump, then again), the median of
//! `--runs` is reported, with the CPU seconds of the client, the server and
//! everything else.

mod bare;
mod child;
mod docs;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use capsule_core::pipeline::DEFAULT_ZSTD_LEVEL;
use capsule_engines::elasticsearch::RECOMMENDED_ZSTD_LEVEL;
use test_support::opensearch::OpenSearch;

use crate::measure::{CpuMeter, CpuUse, MIB, median, wait_for_quiet};
use crate::table::{Table, num, pct, verdict};

pub use child::{ChildArgs, child};

use bare::Bare;
use child::run_child;
use docs::bodies;

const SOURCE: &str = "bench-src";
const EXPORT_VS_ELASTICDUMP: f64 = 3.0;
const EXPORT_VS_CEILING: f64 = 0.80;
const IMPORT_VS_CEILING: f64 = 0.80;
const RSS_MIB: f64 = 64.0;
/// Documents per `_bulk` request and requests in flight (capsule's defaults).
const BULK_DOCS: usize = 2000;
const BULK_WORKERS: usize = 4;
/// Documents per scroll page (capsule's default).
const PAGE: usize = 1000;
const COLUMNS: [&str; 9] = [
    "case",
    "docs/s",
    "source MiB/s",
    "client CPU s",
    "server CPU s",
    "other CPU s",
    "ratio",
    "target",
    "result",
];

/// Settings of the Elasticsearch benchmark.
#[derive(Clone, Debug)]
pub struct EsBench {
    /// Documents in the index.
    pub docs: usize,
    /// Timed runs per case (the median is reported).
    pub runs: usize,
    /// Skip elasticdump.
    pub no_elasticdump: bool,
    /// Skip the import runs (export and memory of the backup only).
    pub no_import: bool,
    /// Measure this server instead of a fresh osmem-server (its index
    /// `bench-src` is loaded unless it already holds the documents).
    pub url: Option<String>,
}

/// CPU seconds of this process's waited-for children (`cutime + cstime`).
fn children_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (get(13) + get(14)) / 100.0
}

/// One timed case: seconds, CPU use (client includes waited children).
#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    cpu: CpuUse,
}

async fn timed<F, T>(pgid: Option<u32>, f: F) -> Result<(Sample, T)>
where
    F: std::future::Future<Output = Result<T>>,
{
    let meter = CpuMeter::start(pgid);
    let kids = children_cpu_secs();
    let start = Instant::now();
    let out = f.await?;
    let secs = start.elapsed().as_secs_f64();
    let mut cpu = meter.stop();
    let child = children_cpu_secs() - kids;
    cpu.client += child;
    cpu.foreign = (cpu.foreign - child).max(0.0);
    Ok((Sample { secs, cpu }, out))
}

fn elasticdump_binary() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("elasticdump"))
            .find(|p| p.is_file())
    })
}

async fn elasticdump(bin: &PathBuf, url: &str, out: &std::path::Path) -> Result<u64> {
    let _ = std::fs::remove_file(out);
    let status = tokio::process::Command::new(bin)
        .arg(format!("--input={url}/{SOURCE}"))
        .arg(format!("--output={}", out.display()))
        .args(["--type=data", &format!("--limit={PAGE}"), "--quiet"])
        // Without it, the server reports at most 10,000 hits and
        // elasticdump stops there (it trusts the reported total).
        .arg(r#"--searchBody={"query":{"match_all":{}},"track_total_hits":true}"#)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .await?;
    ensure!(status.success(), "elasticdump failed: {status}");
    let text = tokio::fs::read_to_string(out).await?;
    Ok(text.lines().filter(|l| !l.is_empty()).count() as u64)
}

struct Row {
    label: String,
    samples: Vec<Sample>,
}

impl Row {
    fn new(label: impl Into<String>) -> Self {
        Row {
            label: label.into(),
            samples: Vec::new(),
        }
    }
    fn secs(&self) -> f64 {
        median(&self.samples.iter().map(|s| s.secs).collect::<Vec<_>>())
    }
    fn rate(&self, docs: usize) -> f64 {
        docs as f64 / self.secs()
    }
    fn cpu(&self) -> CpuUse {
        let m = |f: fn(&CpuUse) -> f64| {
            median(&self.samples.iter().map(|s| f(&s.cpu)).collect::<Vec<_>>())
        };
        CpuUse {
            client: m(|c| c.client),
            server: m(|c| c.server),
            foreign: m(|c| c.foreign),
        }
    }
}

impl EsBench {
    /// Runs the benchmark; returns the export, import and memory tables.
    ///
    /// # Errors
    /// When the server, a child or elasticdump fails.
    pub async fn run(&self) -> Result<Vec<Table>> {
        // An external server (`--es-url`), or a fresh osmem-server.
        let started = match &self.url {
            Some(_) => None,
            None => Some(
                tokio::task::spawn_blocking(OpenSearch::start)
                    .await
                    .context("starting osmem-server (run scripts/setup-test-deps.sh)")?,
            ),
        };
        let url = match (&self.url, &started) {
            (Some(u), _) => u.trim_end_matches('/').to_string(),
            (None, Some(s)) => s.url.clone(),
            (None, None) => unreachable!("started above"),
        };
        let pgid = started.as_ref().map(|s| s.process().pid());
        let bare = Bare {
            http: reqwest::Client::builder().tcp_nodelay(true).build()?,
            url: url.clone(),
        };
        let version: serde_json::Value =
            serde_json::from_str(&bare.send(reqwest::Method::GET, "/", "").await?)?;
        let version = format!(
            "{} {}",
            version["version"]["distribution"]
                .as_str()
                .unwrap_or("elasticsearch"),
            version["version"]["number"].as_str().unwrap_or("?")
        );
        eprintln!("generating {} documents…", self.docs);
        let (bodies, source_bytes) = bodies(self.docs);
        let bodies = Arc::new(bodies);
        let store_dir = tempfile::Builder::new()
            .prefix("capsule-bench-es-")
            .tempdir()?;
        let store_url = format!("file://{}", store_dir.path().display());
        let dump_file = store_dir.path().join("elasticdump.json");
        let elasticdump_bin = if self.no_elasticdump {
            None
        } else {
            elasticdump_binary()
        };
        if !self.no_elasticdump && elasticdump_bin.is_none() {
            bail!("elasticdump not found on PATH: run bench/setup.sh (or pass --no-elasticdump)");
        }

        let mut bulk_ceiling = Row::new("bare client `_bulk` (ceiling)");
        let loaded = bare
            .send(reqwest::Method::GET, &format!("/{SOURCE}/_count"), "")
            .await
            .ok()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["count"].as_u64());
        if loaded == Some(self.docs as u64) {
            eprintln!(
                "{SOURCE} already holds {} documents: not loading it",
                self.docs
            );
        } else {
            eprintln!("loading {SOURCE}…");
            if loaded.is_some() {
                bare.delete_index(SOURCE).await?;
            }
            bare.create_index(SOURCE).await?;
            let (s, ()) = timed(pgid, bare.bulk(SOURCE, &bodies)).await?;
            bulk_ceiling.samples.push(s);
            bare.send(reqwest::Method::POST, &format!("/{SOURCE}/_refresh"), "")
                .await?;
            bare.send(
                reqwest::Method::PUT,
                &format!("/{SOURCE}/_settings"),
                r#"{"index.refresh_interval":null}"#,
            )
            .await?;
        }

        // One untimed full read: the server settles after the load (osmem
        // builds and collects in the background), so every case sees it warm.
        eprintln!("warming up…");
        let n = bare.scroll(SOURCE, 1).await?;
        ensure!(n == self.docs as u64, "{SOURCE} holds {n} documents");
        wait_for_quiet().await;
        let mut scroll_rows: Vec<Row> = [1, 2, 4]
            .iter()
            .map(|s| {
                Row::new(format!(
                    "bare client sliced scroll, {s} slice{}",
                    if *s == 1 { "" } else { "s" }
                ))
            })
            .collect();
        let mut capsule_export = Row::new(format!(
            "capsule backup as `capsule es --create` (zstd {RECOMMENDED_ZSTD_LEVEL})"
        ));
        let core_level = DEFAULT_ZSTD_LEVEL;
        let mut capsule_export_core = Row::new(format!(
            "capsule backup, core pipeline default (zstd {core_level})"
        ));
        let mut dump_row = Row::new("elasticdump 6.125.1 `--limit=1000`");
        let mut backup_hwm = Vec::new();
        let mut backup_id = String::new();
        for run in 0..self.runs {
            eprintln!("export run {}…", run + 1);
            for (row, slices) in scroll_rows.iter_mut().zip([1, 2, 4]) {
                let (s, n) = timed(pgid, bare.scroll(SOURCE, slices)).await?;
                ensure!(n == self.docs as u64, "scroll read {n} documents");
                row.samples.push(s);
            }
            let args = vec![
                "--mode".into(),
                "backup".into(),
                "--es-url".into(),
                url.clone(),
                "--store".into(),
                store_url.clone(),
            ];
            let (s, report) = timed(pgid, run_child(&args)).await?;
            ensure!(
                report.documents == self.docs as u64,
                "capsule exported {}",
                report.documents
            );
            capsule_export.samples.push(s);
            backup_hwm.push(report.hwm_kib);
            backup_id = report.id;
            let mut core_args = args.clone();
            core_args.extend(["--zstd-level".to_string(), core_level.to_string()]);
            let (s, report) = timed(pgid, run_child(&core_args)).await?;
            ensure!(
                report.documents == self.docs as u64,
                "capsule exported {}",
                report.documents
            );
            capsule_export_core.samples.push(s);
            backup_hwm.push(report.hwm_kib);
            if let Some(bin) = &elasticdump_bin {
                let (s, n) = timed(pgid, elasticdump(bin, &url, &dump_file)).await?;
                ensure!(n == self.docs as u64, "elasticdump wrote {n} documents");
                dump_row.samples.push(s);
            }
        }

        let mut capsule_import = Row::new("capsule restore (`run_restore`, defaults)");
        let mut restore_hwm = Vec::new();
        let import_runs = if self.no_import { 0 } else { self.runs };
        for run in 0..import_runs {
            eprintln!("import run {}…", run + 1);
            bare.create_index("bench-ceiling").await?;
            let (s, ()) = timed(pgid, bare.bulk("bench-ceiling", &bodies)).await?;
            bulk_ceiling.samples.push(s);
            bare.delete_index("bench-ceiling").await?;
            let args = vec![
                "--mode".into(),
                "restore".into(),
                "--es-url".into(),
                url.clone(),
                "--store".into(),
                store_url.clone(),
                "--id".into(),
                backup_id.clone(),
                "--rename".into(),
                format!("^{SOURCE}$:bench-restored"),
            ];
            let (s, report) = timed(pgid, run_child(&args)).await?;
            ensure!(
                report.documents == self.docs as u64,
                "capsule restored {}",
                report.documents
            );
            capsule_import.samples.push(s);
            restore_hwm.push(report.hwm_kib);
            bare.delete_index("bench-restored").await?;
        }
        // The first load ran before the machine was quiet: keep the timed runs.
        if import_runs > 0 && bulk_ceiling.samples.len() > import_runs {
            bulk_ceiling.samples.remove(0);
        }
        Ok(self.tables(
            &version,
            source_bytes,
            &scroll_rows,
            &capsule_export,
            &capsule_export_core,
            elasticdump_bin.is_some().then_some(&dump_row),
            &bulk_ceiling,
            &capsule_import,
            &backup_hwm,
            &restore_hwm,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn tables(
        &self,
        version: &str,
        source_bytes: u64,
        scroll_rows: &[Row],
        capsule_export: &Row,
        capsule_export_core: &Row,
        dump: Option<&Row>,
        bulk_ceiling: &Row,
        capsule_import: &Row,
        backup_hwm: &[u64],
        restore_hwm: &[u64],
    ) -> Vec<Table> {
        let docs = self.docs;
        let mib = source_bytes as f64 / MIB as f64;
        let row = |t: &mut Table, r: &Row, ratio: String, target: String, result: String| {
            let cpu = r.cpu();
            t.row(vec![
                r.label.clone(),
                num(r.rate(docs), 0),
                num(mib / r.secs(), 1),
                num(cpu.client, 1),
                num(cpu.server, 1),
                num(cpu.foreign, 1),
                ratio,
                target,
                result,
            ]);
        };
        let ceiling = scroll_rows
            .iter()
            .max_by(|a, b| a.rate(docs).total_cmp(&b.rate(docs)))
            .expect("three rows");
        let mut export = Table::new(
            format!(
                "Export of {docs} documents (~{:.0} B of _source each) from {version}, median of {}",
                source_bytes as f64 / docs as f64,
                self.runs
            ),
            &COLUMNS,
        );
        for r in scroll_rows {
            let best = std::ptr::eq(r, ceiling);
            let target = if best { "ceiling" } else { "" };
            row(&mut export, r, String::new(), target.into(), String::new());
        }
        let vs_ceiling = capsule_export.rate(docs) / ceiling.rate(docs);
        row(
            &mut export,
            capsule_export,
            pct(vs_ceiling),
            format!("≥ {} of ceiling", pct(EXPORT_VS_CEILING)),
            verdict(vs_ceiling >= EXPORT_VS_CEILING),
        );
        let core_ratio = capsule_export_core.rate(docs) / ceiling.rate(docs);
        row(
            &mut export,
            capsule_export_core,
            pct(core_ratio),
            String::new(),
            String::new(),
        );
        if let Some(d) = dump {
            let vs_dump = capsule_export.rate(docs) / d.rate(docs);
            row(
                &mut export,
                d,
                format!("capsule {}x", num(vs_dump, 1)),
                format!("capsule ≥ {EXPORT_VS_ELASTICDUMP:.0}x"),
                verdict(vs_dump >= EXPORT_VS_ELASTICDUMP),
            );
        }
        export.note(format!("The verdict is for the configuration `capsule es --create` uses (zstd level {RECOMMENDED_ZSTD_LEVEL}, `capsule_engines::elasticsearch::RECOMMENDED_ZSTD_LEVEL`); the core's default level is shown for comparison."));
        export.note("capsule's time covers the whole backup as a process: start-up, statefile, metadata, sliced scroll (automatic slices), NDJSON, zstd, SHA-256, `file://` store; the bare client only reads and counts.");
        export.note("CPU seconds per run: client = the bare client, the capsule child or elasticdump; server = osmem-server; other = every other process on the machine (noise).");
        let mut tables = vec![export];

        if !capsule_import.samples.is_empty() {
            let mut import = Table::new(
                format!(
                    "Import of the same {docs} documents into a new index, median of {}",
                    self.runs
                ),
                &COLUMNS,
            );
            row(
                &mut import,
                bulk_ceiling,
                String::new(),
                "ceiling".into(),
                String::new(),
            );
            let vs_bulk = capsule_import.rate(docs) / bulk_ceiling.rate(docs);
            row(
                &mut import,
                capsule_import,
                pct(vs_bulk),
                format!("≥ {} of ceiling", pct(IMPORT_VS_CEILING)),
                verdict(vs_bulk >= IMPORT_VS_CEILING),
            );
            import.note(format!(
                "Both send {BULK_DOCS} documents per `_bulk` request, {BULK_WORKERS} in flight, into an index with replicas 0 and refresh off; the bare client's bodies are built before timing."
            ));
            import.note("capsule's time covers the whole restore as a process: checksum pass over both artifacts, index creation, load, refresh, counts and sample compared, final settings.");
            tables.push(import);
        }

        let mut rss = Table::new(
            "Peak RSS of the capsule process",
            &["job", "peak RSS MiB (max of runs)", "target", "result"],
        );
        for (job, hwm) in [("backup", backup_hwm), ("restore", restore_hwm)] {
            if hwm.is_empty() {
                continue;
            }
            let peak = hwm.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
            rss.row(vec![
                job.into(),
                num(peak, 1),
                format!("≤ {RSS_MIB:.0}"),
                verdict(peak <= RSS_MIB),
            ]);
        }
        tables.push(rss);
        tables
    }
}
