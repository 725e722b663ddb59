//! Benchmark 3: `Catalog::list` over many backups, on `file://` and on
//! SeaweedFS, with a breakdown of where the time goes (the listing, the
//! statefile GETs, the parsing).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use capsule_core::statefile::STATEFILE_NAME;
use capsule_core::{
    Artifact, BackupId, Catalog, Compression, EngineInfo, Fingerprint, ListFilter, Owner,
    RequestType, Restore, RestoreStatus, Schedule, ServiceIdentity, ServiceType, Statefile, Status,
    Verification, VerificationStatus,
};
use capsule_store::Store;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::data::Generator;
use crate::measure::{CpuMeter, CpuUse, median, wait_for_quiet};
use crate::server::S3Server;
use crate::table::{Table, num, verdict};

const BUCKET: &str = "bench-catalog";
/// The dst-dir the backups live under, as in production.
const PREFIX: &str = "cnvrg-smart-backups";
/// Writes in flight while populating.
const POPULATE_CONCURRENCY: usize = 256;
/// Size of the one small artifact object of every backup.
const ARTIFACT_BYTES: usize = 4096;
/// `Catalog::list`'s default concurrency.
const DEFAULT_CONCURRENCY: usize = 64;

/// Settings of the catalog benchmark.
#[derive(Clone, Copy, Debug)]
pub struct CatalogBench {
    /// Backups to create.
    pub backups: usize,
    /// Timed runs per measurement (the median is reported).
    pub runs: usize,
}

/// One store under test.
struct Target {
    label: &'static str,
    url: String,
    limit: Duration,
    server_pgid: Option<u32>,
}

/// Wall and CPU time of one timed step.
#[derive(Clone, Copy, Debug)]
struct Sample {
    elapsed: Duration,
    cpu: CpuUse,
}

/// Runs `fut`, timing it.
async fn timed<T>(pgid: Option<u32>, fut: impl Future<Output = T>) -> (T, Sample) {
    let meter = CpuMeter::start(pgid);
    let start = Instant::now();
    let out = fut.await;
    let elapsed = start.elapsed();
    (
        out,
        Sample {
            elapsed,
            cpu: meter.stop(),
        },
    )
}

impl CatalogBench {
    /// Populates both stores, times the listings; returns the result table.
    ///
    /// # Errors
    /// A failed write, or a listing that misses backups.
    pub async fn run(&self) -> Result<Table> {
        let server = S3Server::start(&[BUCKET]).await?;
        let dir = tempfile::Builder::new()
            .prefix("capsule-bench-catalog-")
            .tempdir()?;
        let targets = [
            Target {
                label: "file://",
                url: format!("file://{}", dir.path().display()),
                limit: Duration::from_secs(2),
                server_pgid: None,
            },
            Target {
                label: "SeaweedFS",
                url: server.url(BUCKET),
                limit: Duration::from_secs(5),
                server_pgid: Some(server.pgid()),
            },
        ];
        let mut t = Table::new(
            format!(
                "Catalog::list of {} backups (statefile + one {} KiB artifact each), median of {}",
                self.backups,
                ARTIFACT_BYTES / 1024,
                self.runs
            ),
            &[
                "store",
                "measurement",
                "concurrency",
                "median s",
                "min–max s",
                "client CPU s",
                "server CPU s",
                "others' CPU s",
                "target",
                "result",
            ],
        );
        let objects = backups(self.backups)?;
        let statefile_bytes: usize = objects.iter().map(|(_, sf)| sf.len()).sum();
        for target in &targets {
            let start = Instant::now();
            populate(&open(&target.url)?, &objects).await?;
            eprintln!(
                "  {}: populated {} backups in {:.1}s",
                target.label,
                self.backups,
                start.elapsed().as_secs_f64()
            );
            self.measure(target, &mut t).await?;
        }
        t.note(format!(
            "Statefiles are realistic v1 documents (Statefile::to_vec), {} bytes on average; {} objects per store.",
            statefile_bytes / self.backups,
            2 * self.backups
        ));
        t.note("cold-ish: a new Store (new connection pool, nothing cached in the process) for each run; the OS page cache and the server stay warm. warm: the same Catalog, after one untimed listing.");
        t.note("Breakdown rows time the steps of Catalog::list one at a time: the recursive listing, the statefile GETs (64 at once), parsing the statefiles (one thread). Catalog::list runs them one after the other.");
        t.note("CPU seconds (median): client = this process, server = the SeaweedFS process group, others = every other process on the machine (noise).");
        Ok(t)
    }

    async fn measure(&self, target: &Target, t: &mut Table) -> Result<()> {
        let limit = target.limit;
        let mut row = |what: &str, conc: String, samples: &[Sample], timed: bool| {
            let secs: Vec<f64> = samples.iter().map(|s| s.elapsed.as_secs_f64()).collect();
            let m = median(&secs);
            let min = secs.iter().copied().fold(f64::INFINITY, f64::min);
            let max = secs.iter().copied().fold(0.0, f64::max);
            let cpu = |f: fn(&CpuUse) -> f64| {
                num(
                    median(&samples.iter().map(|s| f(&s.cpu)).collect::<Vec<_>>()),
                    2,
                )
            };
            eprintln!("  {} {what} ({conc}): {m:.2}s", target.label);
            let (target_cell, result) = if timed {
                (
                    format!("≤ {} s", limit.as_secs()),
                    verdict(m <= limit.as_secs_f64()),
                )
            } else {
                (String::new(), String::new())
            };
            t.row(vec![
                target.label.into(),
                what.into(),
                conc,
                num(m, 2),
                format!("{min:.2}–{max:.2}"),
                cpu(|c| c.client),
                cpu(|c| c.server),
                cpu(|c| c.foreign),
                target_cell,
                result,
            ]);
        };
        let pgid = target.server_pgid;

        wait_for_quiet().await;
        let mut cold = Vec::new();
        for _ in 0..self.runs {
            let catalog = Catalog::new(open(&target.url)?);
            cold.push(self.time_list(&catalog, pgid).await?);
        }
        let conc = DEFAULT_CONCURRENCY.to_string();
        row("Catalog::list, cold-ish", conc, &cold, true);

        let store = open(&target.url)?;
        for concurrency in [DEFAULT_CONCURRENCY, 16, 256] {
            let catalog = Catalog::new(store.clone()).with_concurrency(concurrency);
            self.time_list(&catalog, pgid).await?;
            let mut warm = Vec::new();
            for _ in 0..self.runs {
                warm.push(self.time_list(&catalog, pgid).await?);
            }
            row("Catalog::list, warm", concurrency.to_string(), &warm, true);
        }

        // Where the time goes: the three steps of Catalog::list, alone.
        let mut listing = Vec::new();
        let mut gets = Vec::new();
        let mut parsing = Vec::new();
        for _ in 0..self.runs {
            let (objects, sample) = timed(pgid, store.list("")).await;
            listing.push(sample);
            let keys: Vec<String> = objects?
                .into_iter()
                .map(|o| o.key)
                .filter(|k| k.ends_with(STATEFILE_NAME))
                .collect();
            ensure!(
                keys.len() == self.backups,
                "listed {} statefiles",
                keys.len()
            );

            let fetch = futures::stream::iter(keys)
                .map(|k| {
                    let store = store.clone();
                    async move { store.get(&k).await.map(|o| o.bytes) }
                })
                .buffer_unordered(DEFAULT_CONCURRENCY)
                .try_collect::<Vec<Bytes>>();
            let (bodies, sample) = timed(pgid, fetch).await;
            gets.push(sample);

            let parse = async {
                for body in &bodies? {
                    Statefile::from_slice(body)?;
                }
                anyhow::Ok(())
            };
            let (parsed, sample) = timed(pgid, parse).await;
            parsed?;
            parsing.push(sample);
        }
        row(
            "  breakdown: listing alone (store.list)",
            "1".into(),
            &listing,
            false,
        );
        row(
            "  breakdown: statefile GETs alone",
            DEFAULT_CONCURRENCY.to_string(),
            &gets,
            false,
        );
        row("  breakdown: parsing alone", "1".into(), &parsing, false);
        Ok(())
    }

    async fn time_list(&self, catalog: &Catalog, pgid: Option<u32>) -> Result<Sample> {
        let (entries, sample) = timed(pgid, catalog.list(&ListFilter::default())).await;
        let entries = entries?;
        ensure!(
            entries.len() == self.backups,
            "listed {} backups, expected {}",
            entries.len(),
            self.backups
        );
        if let Some(bad) = entries.iter().find(|e| e.unreadable.is_some()) {
            anyhow::bail!("backup {} unreadable: {:?}", bad.id, bad.unreadable);
        }
        Ok(sample)
    }
}

fn open(url: &str) -> Result<Store> {
    Ok(Store::from_url(url)?.with_prefix(PREFIX)?)
}

/// Writes every backup (statefile and artifact), many at once.
async fn populate(store: &Store, objects: &[(String, Bytes)]) -> Result<()> {
    let artifact = Generator::new(crate::data::DataKind::Random, 9).chunk(ARTIFACT_BYTES);
    futures::stream::iter(objects)
        .map(|(id, statefile)| {
            let (store, artifact) = (store.clone(), artifact.clone());
            async move {
                store
                    .put(&Catalog::key(id, STATEFILE_NAME), statefile.clone())
                    .await?;
                store
                    .put(&Catalog::key(id, ARTIFACT_NAME), artifact)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(POPULATE_CONCURRENCY)
        .try_collect::<()>()
        .await
        .context("populating")
}

const ARTIFACT_NAME: &str = "dump.zst";

/// `n` backup ids with realistic v1 statefiles, one an hour back from now.
fn backups(n: usize) -> Result<Vec<(String, Bytes)>> {
    let mut rng = StdRng::seed_from_u64(42);
    let now = Utc::now();
    (0..n)
        .map(|i| {
            let requested = now - chrono::Duration::hours((n - i) as i64);
            let sf = statefile(i, requested, &mut rng)?;
            Ok((sf.backup_id.as_str().to_string(), Bytes::from(sf.to_vec()?)))
        })
        .collect()
}

/// A finished (one in 50 failed) periodic or manual backup, as the daemon
/// writes them: service, schedule, artifacts with checksums, engine facts
/// with a fingerprint, owner, some restores and verifications.
fn statefile(i: usize, requested: DateTime<Utc>, rng: &mut StdRng) -> Result<Statefile> {
    let service_type = ServiceType::ALL[i % ServiceType::ALL.len()];
    let id = BackupId::generate_with(service_type, rng);
    let manual = i.is_multiple_of(5);
    let request = if manual {
        RequestType::Manual
    } else {
        RequestType::Periodic
    };
    let mut sf = Statefile::new(id, request, requested);
    let namespace = format!("team-{}", i % 12);
    let (name, port, database, format, tool) = match service_type {
        ServiceType::Postgresql => (
            "postgres",
            5432,
            "app",
            "pg_dump-custom",
            "pg_dump (PostgreSQL) 15.18",
        ),
        ServiceType::Redis => ("redis", 6379, "0", "rdb", "redis-server 7.0.15"),
        _ => ("opensearch", 9200, "logs-*", "ndjson", "capsule-es 0.1.0"),
    };
    sf.service = ServiceIdentity {
        cluster: Some("prod-eu-west-1".into()),
        namespace: Some(namespace.clone()),
        name: Some(name.into()),
        endpoint: Some(format!("{name}.{namespace}.svc.cluster.local:{port}")),
        database: Some(database.into()),
    };
    if manual {
        sf.description = "before the schema migration of the billing tables".into();
    } else {
        sf.schedule = Some(Schedule::new("24h".parse()?, 7));
    }
    let started = requested + chrono::Duration::seconds(3);
    let finished = started + chrono::Duration::seconds(20 + rng.gen_range(0..600));
    sf.started_at = Some(started);
    sf.finished_at = Some(finished);
    sf.owner = Some(Owner::this_process(Some("prod-eu-west-1".into()), finished));
    if i % 50 == 7 {
        sf.status = Status::Failed;
        sf.error = Some(format!(
            "{tool}: connection to {name}.{namespace}.svc.cluster.local:{port} lost after 41 s (server closed the connection unexpectedly)"
        ));
        return Ok(sf);
    }
    sf.status = Status::Finished;
    let raw = rng.gen_range(10_000_000u64..5_000_000_000);
    let mut data = Artifact::new(ARTIFACT_NAME, format);
    data.compression = Compression::Zstd;
    data.size_bytes = Some(ARTIFACT_BYTES as u64);
    data.raw_size_bytes = Some(raw);
    data.sha256 = Some(hex64(rng));
    data.tool_version = Some(tool.into());
    sf.artifacts.push(data);
    let mut counts = std::collections::BTreeMap::new();
    let mut values = std::collections::BTreeMap::new();
    for table in [
        "users",
        "orders",
        "order_items",
        "payments",
        "invoices",
        "sessions",
        "audit_log",
        "products",
    ] {
        counts.insert(format!("public.{table}"), rng.gen_range(0..50_000_000u64));
    }
    for seq in ["users_id_seq", "orders_id_seq", "payments_id_seq"] {
        values.insert(
            format!("public.{seq}"),
            rng.gen_range(1..50_000_000u64).to_string(),
        );
    }
    let mut details = serde_json::Map::new();
    details.insert(
        "snapshot".into(),
        format!("00000003-{:08X}-1", rng.r#gen::<u32>()).into(),
    );
    details.insert("jobs".into(), 2.into());
    sf.engine = Some(EngineInfo {
        server_version: Some(tool.replace(" (PostgreSQL)", "")),
        database: Some(database.into()),
        fingerprint: Some(Fingerprint { counts, values }),
        details,
    });
    if i % 10 == 3 {
        let mut r = Restore::requested(finished + chrono::Duration::days(1));
        r.status = RestoreStatus::Finished;
        r.started_at = Some(r.requested_at + chrono::Duration::seconds(2));
        r.finished_at = Some(r.requested_at + chrono::Duration::seconds(95));
        r.target = Some(format!(
            "{name}.{namespace}.svc.cluster.local:{port}/{database}"
        ));
        r.mode = Some("safe-swap".into());
        sf.restores.push(r);
    }
    if i % 4 == 1 {
        sf.verifications.push(Verification {
            at: finished + chrono::Duration::hours(2),
            status: VerificationStatus::Passed,
            target: Some(format!("scratch-{name}.capsule.svc.cluster.local:{port}")),
            mismatches: Vec::new(),
            duration_ms: Some(rng.gen_range(5_000..300_000)),
            error: None,
        });
    }
    Ok(sf)
}

/// 64 random hex digits (a fake SHA-256).
fn hex64(rng: &mut StdRng) -> String {
    (0..32)
        .map(|_| format!("{:02x}", rng.r#gen::<u8>()))
        .collect()
}
