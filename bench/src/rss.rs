//! Benchmark 2: peak memory of a large upload through the pipeline.
//!
//! Each case runs in a child process (`capsule-bench rss-child`, this same
//! binary), which streams the synthetic data through the pipeline, then
//! reads its own peak resident set (`VmHWM` in `/proc/self/status`) and
//! prints it as one JSON line for the parent.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capsule_core::pipeline::{self, DEFAULT_ZSTD_LEVEL, PipelineOptions};
use capsule_core::{Compression, NoProgress};
use capsule_store::Store;

use crate::data::{Counter, DataKind, GenReader, Generator};
use crate::measure::{MIB, mib_per_sec, self_status_kib, wait_for_quiet};
use crate::server::S3Server;
use crate::table::{Table, num, pct, verdict};

/// Peak RSS allowed, in MiB.
const TARGET_MIB: f64 = 64.0;
const BUCKET: &str = "bench-rss";
/// The environment variable passing the store URL (with credentials) to
/// the child, rather than its command line.
pub const URL_ENV: &str = "CAPSULE_BENCH_URL";
const KEY: &str = "rss/artifact";
/// The public key `--age` encrypts to (age's documentation example; the
/// data is never decrypted).
const AGE_RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

/// Settings of the memory benchmark.
#[derive(Clone, Copy, Debug)]
pub struct RssBench {
    /// Bytes per run.
    pub size: u64,
}

impl RssBench {
    /// Runs every case in a child process; returns the result table and a
    /// table of what-if cases showing where the memory goes.
    ///
    /// # Errors
    /// When a child fails.
    pub async fn run(&self) -> Result<Vec<Table>> {
        let server = S3Server::start(&[BUCKET]).await?;
        let dir = tempfile::Builder::new()
            .prefix("capsule-bench-rss-")
            .tempdir()?;
        let file_url = format!("file://{}", dir.path().display());
        let s3_url = server.url(BUCKET);
        let columns = [
            "store",
            "data",
            "compression",
            "peak RSS MiB",
            "MiB/s",
            "stored MiB",
            "target",
            "result",
        ];
        let mut t = Table::new(
            format!(
                "Peak RSS of one process streaming {} MiB through the pipeline (defaults)",
                self.size / MIB
            ),
            &columns,
        );
        let mut cases = vec![(
            "SeaweedFS",
            &s3_url,
            ChildArgs::new(DataKind::Dump, CompressionArg::Zstd, 0),
        )];
        for (label, url) in [("SeaweedFS", &s3_url), ("file://", &file_url)] {
            for (kind, compression) in [
                (DataKind::Dump, CompressionArg::Zstd),
                (DataKind::Random, CompressionArg::Zstd),
                (DataKind::Random, CompressionArg::None),
            ] {
                cases.push((label, url, ChildArgs::new(kind, compression, self.size)));
            }
        }
        // Encryption at rest (age after zstd), on incompressible data.
        for (label, url) in [("SeaweedFS, age", &s3_url), ("file://, age", &file_url)] {
            let mut a = ChildArgs::new(DataKind::Random, CompressionArg::Zstd, self.size);
            a.age = true;
            cases.push((label, url, a));
        }
        wait_for_quiet().await;
        for (label, url, args) in &cases {
            let out = run_child(url, args).await?;
            server.vacuum();
            let hwm = out.vm_hwm_kib as f64 / 1024.0;
            let baseline = args.bytes == 0;
            let compression = Compression::from(args.compression).as_str();
            eprintln!(
                "  {label} {} {compression}: peak {hwm:.1} MiB",
                args.data.name()
            );
            t.row(vec![
                label.to_string(),
                if baseline {
                    "(nothing: process baseline)".into()
                } else {
                    args.data.name().into()
                },
                compression.into(),
                num(hwm, 1),
                if baseline {
                    "".into()
                } else {
                    num(out.rate(args.bytes), 0)
                },
                num(out.stored as f64 / MIB as f64, 0),
                if baseline {
                    "".into()
                } else {
                    format!("≤ {TARGET_MIB:.0}")
                },
                if baseline {
                    "".into()
                } else {
                    verdict(hwm <= TARGET_MIB)
                },
            ]);
        }
        let o = PipelineOptions::default();
        t.note(format!(
            "Pipeline defaults: zstd level {} x{} workers, parts {} MiB x {} in flight, 1 MiB chunks between stages.",
            o.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL),
            o.zstd_workers,
            o.upload.part_size / MIB as usize,
            o.upload.max_concurrency
        ));
        t.note("Peak RSS is VmHWM of the child process, read by the child just before it exits (it includes the binary, the tokio runtime and the HTTP client).");
        Ok(vec![t, self.what_if(&s3_url).await?])
    }

    /// The same measurement with one knob changed at a time, and zstd alone.
    async fn what_if(&self, s3_url: &str) -> Result<Table> {
        let size = self.size.min(256 * MIB);
        let mut t = Table::new(
            format!(
                "Where the memory goes: one knob at a time ({} MiB per case)",
                size / MIB
            ),
            &["case", "data", "peak RSS MiB", "MiB/s", "stored %"],
        );
        let zstd = |data, workers: Option<u32>, job: Option<u32>| {
            let mut a = ChildArgs::new(data, CompressionArg::Zstd, size);
            a.zstd_only = true;
            a.zstd_workers = workers;
            a.zstd_job_mib = job;
            a
        };
        let pipe = |compression, workers: Option<u32>, part: Option<usize>, conc: Option<usize>| {
            let mut a = ChildArgs::new(DataKind::Random, compression, size);
            a.zstd_workers = workers;
            a.part_mib = part;
            a.concurrency = conc;
            a
        };
        let default_workers = PipelineOptions::default().zstd_workers;
        let w = default_workers;
        let cases: Vec<(String, ChildArgs)> = vec![
            (
                format!(
                    "zstd alone, {w} workers, zstd's default 8 MiB jobs (the pipeline before the job-size fix)"
                ),
                zstd(DataKind::Random, None, None),
            ),
            (
                format!("zstd alone, {w} workers, zstd's default 8 MiB jobs"),
                zstd(DataKind::Dump, None, None),
            ),
            (
                format!("zstd alone, {w} workers, 2 MiB jobs"),
                zstd(DataKind::Random, None, Some(2)),
            ),
            (
                format!("zstd alone, {w} workers, 1 MiB jobs (the pipeline's)"),
                zstd(DataKind::Random, None, Some(1)),
            ),
            (
                format!("zstd alone, {w} workers, 1 MiB jobs (the pipeline's)"),
                zstd(DataKind::Dump, None, Some(1)),
            ),
            (
                "zstd alone, single-threaded".into(),
                zstd(DataKind::Random, Some(0), None),
            ),
            (
                "zstd alone, single-threaded".into(),
                zstd(DataKind::Dump, Some(0), None),
            ),
            (
                "pipeline → SeaweedFS, none, parts 8 MiB x 4 (the default before 5 MiB parts)"
                    .into(),
                pipe(CompressionArg::None, None, None, None),
            ),
            (
                "pipeline → SeaweedFS, none, parts 8 MiB x 2".into(),
                pipe(CompressionArg::None, None, None, Some(2)),
            ),
            (
                "pipeline → SeaweedFS, none, parts 5 MiB x 4".into(),
                pipe(CompressionArg::None, None, Some(5), None),
            ),
            (
                "pipeline → SeaweedFS, zstd, parts 8 MiB x 4 (the default before 5 MiB parts)"
                    .into(),
                pipe(CompressionArg::Zstd, None, None, None),
            ),
            (
                "pipeline → SeaweedFS, zstd, parts 8 MiB x 3".into(),
                pipe(CompressionArg::Zstd, None, None, Some(3)),
            ),
            (
                "pipeline → SeaweedFS, zstd, parts 5 MiB x 4".into(),
                pipe(CompressionArg::Zstd, None, Some(5), None),
            ),
            (
                "pipeline → SeaweedFS, zstd single-threaded, parts 8 MiB x 4".into(),
                pipe(CompressionArg::Zstd, Some(0), None, None),
            ),
        ];
        wait_for_quiet().await;
        for (label, args) in &cases {
            let out = run_child(s3_url, args).await?;
            let hwm = out.vm_hwm_kib as f64 / 1024.0;
            eprintln!("  {label} {}: peak {hwm:.1} MiB", args.data.name());
            t.row(vec![
                label.clone(),
                args.data.name().into(),
                num(hwm, 1),
                num(out.rate(args.bytes), 0),
                pct(out.stored as f64 / args.bytes as f64),
            ]);
        }
        t.note("zstd alone = the pipeline's encoder settings writing into a counting sink in a process that does nothing else; its MiB/s is compression speed.");
        t.note("The zstd-alone rows set ZSTD_c_jobSize directly; the pipeline now uses 1 MiB jobs (it used zstd's default, 8 MiB at level 3, before).");
        Ok(t)
    }
}

/// What a child reports.
#[derive(Debug)]
struct ChildReport {
    vm_hwm_kib: u64,
    secs: f64,
    stored: u64,
}

impl ChildReport {
    fn rate(&self, bytes: u64) -> f64 {
        mib_per_sec(bytes, Duration::from_secs_f64(self.secs))
    }
}

/// Compression as a command-line value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// zstd.
    Zstd,
    /// None.
    None,
}

impl From<CompressionArg> for Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::None => Compression::None,
        }
    }
}

/// One case, as the arguments of `capsule-bench rss-child`. Unset knobs
/// keep the pipeline's defaults.
#[derive(Clone, Debug, clap::Args)]
pub struct ChildArgs {
    /// The data to stream.
    #[arg(long, value_enum)]
    pub data: DataKind,
    /// Compression of the pipeline.
    #[arg(long, value_enum)]
    pub compression: CompressionArg,
    /// Bytes to stream.
    #[arg(long)]
    pub bytes: u64,
    /// Only compress into a counting sink (no pipeline, no store).
    #[arg(long)]
    pub zstd_only: bool,
    /// zstd worker threads (0 = single-threaded).
    #[arg(long)]
    pub zstd_workers: Option<u32>,
    /// zstd job size in MiB (zstd-only mode; the pipeline has no knob).
    #[arg(long)]
    pub zstd_job_mib: Option<u32>,
    /// Multipart part size in MiB.
    #[arg(long)]
    pub part_mib: Option<usize>,
    /// Parts in flight.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Encrypt (age) after compression, to a fixed public key.
    #[arg(long)]
    pub age: bool,
}

impl ChildArgs {
    fn new(data: DataKind, compression: CompressionArg, bytes: u64) -> Self {
        ChildArgs {
            data,
            compression,
            bytes,
            zstd_only: false,
            zstd_workers: None,
            zstd_job_mib: None,
            part_mib: None,
            concurrency: None,
            age: false,
        }
    }

    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "rss-child".to_string(),
            "--data".into(),
            self.data.name_for_cli().into(),
            "--compression".into(),
            Compression::from(self.compression).as_str().into(),
            "--bytes".into(),
            self.bytes.to_string(),
        ];
        if self.zstd_only {
            args.push("--zstd-only".into());
        }
        if self.age {
            args.push("--age".into());
        }
        let knobs = [
            ("--zstd-workers", self.zstd_workers.map(|v| v.to_string())),
            ("--zstd-job-mib", self.zstd_job_mib.map(|v| v.to_string())),
            ("--part-mib", self.part_mib.map(|v| v.to_string())),
            ("--concurrency", self.concurrency.map(|v| v.to_string())),
        ];
        for (flag, value) in knobs {
            if let Some(v) = value {
                args.push(flag.into());
                args.push(v);
            }
        }
        args
    }

    fn options(&self) -> PipelineOptions {
        let mut o = PipelineOptions::default().with_compression(self.compression.into());
        if let Some(w) = self.zstd_workers {
            o = o.with_zstd_workers(w);
        }
        let mut upload = o.upload.clone();
        if let Some(p) = self.part_mib {
            upload = upload.with_part_size(p * MIB as usize);
        }
        if let Some(c) = self.concurrency {
            upload = upload.with_max_concurrency(c);
        }
        if self.age {
            o = o.with_encryption(
                capsule_core::Recipients::from_keys([AGE_RECIPIENT]).expect("a valid key"),
            );
        }
        o.with_upload(upload)
    }
}

async fn run_child(url: &str, args: &ChildArgs) -> Result<ChildReport> {
    let exe = std::env::current_exe().context("finding this binary")?;
    let output = tokio::process::Command::new(exe)
        .args(args.to_args())
        .env(URL_ENV, url)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running the rss child")?;
    if !output.status.success() {
        bail!(
            "rss child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("rss child printed nothing")?;
    let v: serde_json::Value = serde_json::from_str(line).context("rss child output")?;
    let field = |k: &str| v.get(k).cloned().unwrap_or_default();
    Ok(ChildReport {
        vm_hwm_kib: field("vmHwmKib").as_u64().context("vmHwmKib")?,
        secs: field("secs").as_f64().context("secs")?,
        stored: field("stored").as_u64().context("stored")?,
    })
}

/// The child: streams the data into the store named by [`URL_ENV`] (or,
/// with `--zstd-only`, only compresses it), then prints its peak RSS as
/// one JSON line.
///
/// # Errors
/// When the upload fails.
pub async fn child(args: ChildArgs) -> Result<()> {
    let options = args.options();
    let start = Instant::now();
    let (stored, raw) = if args.zstd_only {
        let job = args.zstd_job_mib;
        let (kind, size) = (args.data, args.bytes);
        tokio::task::spawn_blocking(move || compress_only(kind, size, &options, job)).await??
    } else {
        let url = std::env::var(URL_ENV).with_context(|| format!("{URL_ENV} is not set"))?;
        let store = Store::from_url(&url)?;
        let source = GenReader::new(args.data, 0x5eed_0003, args.bytes);
        let report = pipeline::upload(&store, KEY, source, &options, &NoProgress).await?;
        (report.size_bytes, report.raw_size_bytes)
    };
    let secs = start.elapsed().as_secs_f64();
    let hwm = self_status_kib("VmHWM").context("reading VmHWM")?;
    if !args.zstd_only {
        let store = Store::from_url(&std::env::var(URL_ENV)?)?;
        store.delete(KEY).await?;
    }
    println!(
        "{}",
        serde_json::json!({
            "vmHwmKib": hwm,
            "secs": secs,
            "stored": stored,
            "raw": raw,
        })
    );
    Ok(())
}

/// Compresses `size` bytes of `kind` as the pipeline would, into a
/// counting sink; returns (compressed, raw) sizes.
fn compress_only(
    kind: DataKind,
    size: u64,
    o: &PipelineOptions,
    job_mib: Option<u32>,
) -> Result<(u64, u64)> {
    let mut enc =
        zstd::stream::write::Encoder::new(Counter(0), o.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL))?;
    enc.include_checksum(true)?;
    if o.zstd_workers > 0 {
        enc.multithread(o.zstd_workers)?;
        if let Some(job) = job_mib {
            enc.set_parameter(zstd::stream::raw::CParameter::JobSize(job * MIB as u32))?;
        }
    }
    let mut generator = Generator::new(kind, 0x5eed_0003);
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        generator.fill(&mut buf[..n]);
        enc.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok((enc.finish()?.0, size))
}
