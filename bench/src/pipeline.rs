//! Benchmark 1: the upload pipeline against a plain multipart put of the
//! same bytes, to SeaweedFS on loopback.
//!
//! Cases, all with the same part size and parts in flight (capsule's
//! defaults, 5 MiB x 4), interleaved run by run so drift hits them alike:
//! - `object_store` `WriteMultipart` (the reference),
//! - capsule-store's `Upload` alone (no pipeline),
//! - `capsule_core::pipeline::upload` with its default zstd settings,
//! - the same pipeline with compression none.
//!
//! Throughput is source bytes per second. Diagnostics: the generator alone
//! and generator + zstd with no I/O, to show the CPU ceiling.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use capsule_core::pipeline::{self, DEFAULT_ZSTD_LEVEL, PipelineOptions};
use capsule_core::{Compression, NoProgress};
use capsule_store::{Store, UploadOptions};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use crate::data::Counter;
use crate::data::{DataKind, GenReader, Generator};
use crate::measure::{CpuMeter, CpuUse, Layout, MIB, median, mib_per_sec, wait_for_quiet};
use crate::server::S3Server;
use crate::table::{Table, num, pct, verdict};

/// Size of the chunks the sources produce (the pipeline's own chunk size).
const CHUNK: u64 = MIB;
/// The pipeline must reach this share of the reference throughput.
const TARGET_RATIO: f64 = 0.90;
const BUCKET: &str = "bench-pipeline";

/// Settings of the pipeline benchmark.
#[derive(Clone, Copy, Debug)]
pub struct PipelineBench {
    /// Bytes per run.
    pub size: u64,
    /// Runs per case (the median is reported).
    pub runs: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Raw,
    StoreUpload,
    Pipeline(Compression),
}

impl Case {
    const ALL: [Case; 4] = [
        Case::Raw,
        Case::StoreUpload,
        Case::Pipeline(Compression::Zstd),
        Case::Pipeline(Compression::None),
    ];

    fn label(self) -> String {
        match self {
            Case::Raw => "object_store WriteMultipart (reference)".into(),
            Case::StoreUpload => "capsule-store Upload, no pipeline".into(),
            Case::Pipeline(Compression::Zstd) => {
                let o = PipelineOptions::default();
                format!(
                    "pipeline, zstd level {} x{} workers",
                    o.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL),
                    o.zstd_workers
                )
            }
            Case::Pipeline(c) => format!("pipeline, compression {}", c.as_str()),
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Case::Raw => "raw",
            Case::StoreUpload => "store",
            Case::Pipeline(Compression::Zstd) => "pipeline-zstd",
            Case::Pipeline(_) => "pipeline-none",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Run {
    elapsed: Duration,
    stored: u64,
    cpu: CpuUse,
}

impl PipelineBench {
    /// Runs every case on both kinds of data, first with the cores shared
    /// by everyone, then with SeaweedFS and this process on one core each;
    /// returns the result tables.
    ///
    /// # Errors
    /// Any failed upload.
    pub async fn run(&self) -> Result<Vec<Table>> {
        wait_for_quiet().await;
        let mut tables = vec![self.diagnostics().await?];
        let server = S3Server::start(&[BUCKET]).await?;
        let store = server.store(BUCKET)?;
        let raw = server.raw(BUCKET)?;
        let options = PipelineOptions::default();
        let mut t = Table::new(
            format!(
                "Upload to SeaweedFS: pipeline vs plain multipart put ({} MiB per run, median of {}, parts {} MiB x {} in flight)",
                self.size / MIB,
                self.runs,
                options.upload.part_size / MIB as usize,
                options.upload.max_concurrency
            ),
            &[
                "cores",
                "data",
                "case",
                "MiB/s",
                "min–max MiB/s",
                "stored MiB",
                "client CPU s",
                "server CPU s",
                "others' CPU s",
                "vs reference",
                "target",
                "result",
            ],
        );
        // Warm-up, untimed: SeaweedFS allocates its volumes on the first
        // writes, and the clients open their connections.
        let warm_up = PipelineBench {
            size: self.size.min(256 * MIB),
            runs: 1,
        };
        for case in [Case::Raw, Case::StoreUpload] {
            warm_up
                .upload(case, DataKind::Random, &store, &raw, "warm-up")
                .await?;
            store.delete("warm-up").await?;
        }
        for layout in [Layout::Shared, Layout::Split] {
            layout.apply(&[], &[server.pgid()])?;
            let result = self
                .measure_layout(layout, &server, &store, &raw, &mut t)
                .await;
            Layout::Shared.apply(&[], &[server.pgid()])?;
            result?;
        }
        t.note("MiB/s counts source bytes (before compression); \"stored MiB\" is what reached the bucket.");
        t.note("CPU seconds are per run (median): client = this process (generator, zstd, SHA-256, HTTP, SigV4), server = the SeaweedFS process group, others = every other process on the machine (other people's builds and tests: noise).");
        t.note("cores \"shared\": every process may use both cores, so the client's CPU comes out of the server's. \"split\": SeaweedFS pinned to CPU 1 and this process to CPU 0 (taskset), as if the server were another machine.");
        tables.push(t);
        Ok(tables)
    }

    async fn measure_layout(
        &self,
        layout: Layout,
        server: &S3Server,
        store: &Store,
        raw: &Arc<dyn ObjectStore>,
        t: &mut Table,
    ) -> Result<()> {
        for kind in [DataKind::Random, DataKind::Dump] {
            let mut runs: Vec<(Case, Vec<Run>)> =
                Case::ALL.iter().map(|c| (*c, Vec::new())).collect();
            for rep in 0..self.runs {
                wait_for_quiet().await;
                for (case, results) in runs.iter_mut() {
                    let key = format!("{}/{}/{rep}", kind.name(), case.slug());
                    let meter = CpuMeter::start(Some(server.pgid()));
                    let start = Instant::now();
                    let stored = self.upload(*case, kind, store, raw, &key).await?;
                    let elapsed = start.elapsed();
                    let cpu = meter.stop();
                    results.push(Run {
                        elapsed,
                        stored,
                        cpu,
                    });
                    eprintln!(
                        "  {} / {} / {}: {:.0} MiB/s",
                        layout.label(),
                        kind.name(),
                        case.label(),
                        mib_per_sec(self.size, elapsed)
                    );
                    store
                        .delete(&key)
                        .await
                        .with_context(|| format!("deleting {key}"))?;
                    server.vacuum();
                }
            }
            let rate = |r: &Run| mib_per_sec(self.size, r.elapsed);
            let reference = median(&runs[0].1.iter().map(rate).collect::<Vec<_>>());
            for (case, results) in &runs {
                let rates: Vec<f64> = results.iter().map(rate).collect();
                let m = median(&rates);
                let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
                let max = rates.iter().copied().fold(0.0, f64::max);
                let ratio = m / reference;
                let cpu = |f: fn(&CpuUse) -> f64| {
                    num(
                        median(&results.iter().map(|r| f(&r.cpu)).collect::<Vec<_>>()),
                        1,
                    )
                };
                let (target, result) = match case {
                    Case::Pipeline(_) => (
                        format!("≥ {}", pct(TARGET_RATIO)),
                        verdict(ratio >= TARGET_RATIO),
                    ),
                    _ => (String::new(), String::new()),
                };
                t.row(vec![
                    layout.label().into(),
                    kind.name().into(),
                    case.label(),
                    num(m, 0),
                    format!("{min:.0}–{max:.0}"),
                    num(results[0].stored as f64 / MIB as f64, 0),
                    cpu(|c| c.client),
                    cpu(|c| c.server),
                    cpu(|c| c.foreign),
                    if *case == Case::Raw {
                        "100%".into()
                    } else {
                        pct(ratio)
                    },
                    target,
                    result,
                ]);
            }
        }
        Ok(())
    }

    /// Uploads `self.size` bytes of `kind` to `key` as `case`; returns the
    /// bytes stored.
    async fn upload(
        &self,
        case: Case,
        kind: DataKind,
        store: &Store,
        raw: &Arc<dyn ObjectStore>,
        key: &str,
    ) -> Result<u64> {
        let options = PipelineOptions::default();
        let seed = seed_of(kind);
        match case {
            Case::Raw => {
                // The reference writes under the same prefix-less key.
                let upload = raw.put_multipart(&Path::from(key)).await?;
                let mut writer =
                    WriteMultipart::new_with_chunk_size(upload, options.upload.part_size);
                let mut generator = Generator::new(kind, seed);
                let mut left = self.size;
                while left > 0 {
                    let n = left.min(CHUNK);
                    writer
                        .wait_for_capacity(options.upload.max_concurrency)
                        .await?;
                    writer.put(generator.chunk(n as usize));
                    left -= n;
                }
                writer.finish().await?;
                Ok(self.size)
            }
            Case::StoreUpload => {
                let mut upload = store.upload(key, upload_options(&options)).await?;
                let mut generator = Generator::new(kind, seed);
                let mut left = self.size;
                while left > 0 {
                    let n = left.min(CHUNK);
                    upload.write(generator.chunk(n as usize)).await?;
                    left -= n;
                }
                upload.finish().await?;
                Ok(self.size)
            }
            Case::Pipeline(compression) => {
                let source = GenReader::new(kind, seed, self.size);
                let options = options.with_compression(compression);
                let report = pipeline::upload(store, key, source, &options, &NoProgress).await?;
                anyhow::ensure!(report.raw_size_bytes == self.size, "short read");
                Ok(report.size_bytes)
            }
        }
    }

    /// The generator alone, and generator + zstd with the pipeline's
    /// settings into a counting sink (no I/O).
    async fn diagnostics(&self) -> Result<Table> {
        let size = self.size;
        let runs = self.runs;
        tokio::task::spawn_blocking(move || -> Result<Table> {
            let o = PipelineOptions::default();
            let mut t = Table::new(
                format!(
                    "CPU ceilings, no I/O ({} MiB per run, median of {runs})",
                    size / MIB
                ),
                &["data", "stage", "MiB/s", "compressed to"],
            );
            for kind in [DataKind::Random, DataKind::Dump] {
                let mut gen_rates = Vec::new();
                let mut zstd_rates = Vec::new();
                let mut ratio = 0.0;
                for _ in 0..runs {
                    let mut generator = Generator::new(kind, seed_of(kind));
                    let mut buf = vec![0u8; CHUNK as usize];
                    let start = Instant::now();
                    for _ in 0..size / CHUNK {
                        generator.fill(&mut buf);
                    }
                    gen_rates.push(mib_per_sec(size, start.elapsed()));

                    let mut generator = Generator::new(kind, seed_of(kind));
                    let start = Instant::now();
                    let mut enc = zstd::stream::write::Encoder::new(
                        Counter(0),
                        o.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL),
                    )?;
                    enc.include_checksum(true)?;
                    if o.zstd_workers > 0 {
                        enc.multithread(o.zstd_workers)?;
                    }
                    for _ in 0..size / CHUNK {
                        generator.fill(&mut buf);
                        enc.write_all(&buf)?;
                    }
                    let out = enc.finish()?;
                    zstd_rates.push(mib_per_sec(size, start.elapsed()));
                    ratio = out.0 as f64 / size as f64;
                }
                t.row(vec![
                    kind.name().into(),
                    "generator alone".into(),
                    num(median(&gen_rates), 0),
                    "".into(),
                ]);
                t.row(vec![
                    kind.name().into(),
                    format!(
                        "generator + zstd level {} x{} workers",
                        o.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL),
                        o.zstd_workers
                    ),
                    num(median(&zstd_rates), 0),
                    pct(ratio),
                ]);
            }
            Ok(t)
        })
        .await?
    }
}

/// The same seed for every case, so every case uploads the same bytes.
fn seed_of(kind: DataKind) -> u64 {
    match kind {
        DataKind::Random => 0x5eed_0001,
        DataKind::Dump => 0x5eed_0002,
    }
}

fn upload_options(o: &PipelineOptions) -> UploadOptions {
    UploadOptions::default()
        .with_part_size(o.upload.part_size)
        .with_max_concurrency(o.upload.max_concurrency)
}
