//! capsule's foundation benchmarks: the upload pipeline against a plain
//! multipart put, peak memory of a large upload, and listing a catalog of
//! many backups. Each prints Markdown tables with the target, the measured
//! value, the ratio and PASS/FAIL, after a table describing the machine.
//!
//! ```text
//! cargo run --release -p capsule-bench -- all
//! cargo run --release -p capsule-bench -- pipeline --pipeline-mib 512 --runs 3
//! ```
//!
//! These are benchmarks, not tests: they need SeaweedFS
//! (`scripts/setup-test-deps.sh`) and minutes of run time.

mod catalog;
mod data;
mod es;
mod machine;
mod measure;
mod pg;
mod pipeline;
mod redis;
mod rss;
mod server;
mod sink;
mod table;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::catalog::CatalogBench;
use crate::measure::MIB;
use crate::pipeline::PipelineBench;
use crate::rss::RssBench;

/// capsule's foundation benchmarks (run with --release).
#[derive(Debug, Parser)]
#[command(name = "capsule-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Timed runs per measurement; the median is reported.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// MiB uploaded per run by the pipeline benchmark.
    #[arg(long, global = true, default_value_t = 512)]
    pipeline_mib: u64,
    /// MiB streamed by each case of the memory benchmark.
    #[arg(long, global = true, default_value_t = 1024)]
    rss_mib: u64,
    /// Backups created for the catalog benchmark.
    #[arg(long, global = true, default_value_t = 10_000)]
    backups: usize,
    /// Seconds to wait, before each series, for other processes to leave
    /// the cores alone (then measure anyway).
    #[arg(long, global = true, default_value_t = 180)]
    quiet_wait: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pipeline upload vs object_store multipart put, to SeaweedFS.
    Pipeline,
    /// Peak RSS of a process streaming a large upload (SeaweedFS, file://).
    Rss,
    /// Catalog::list of many backups (file://, SeaweedFS).
    Catalog,
    /// Every benchmark, one after the other (not `pg`).
    All,
    /// The PostgreSQL engine: the release `capsule` binary against pg_dump
    /// and pg_restore on `pgbench -i` databases (backup and restore wall
    /// time, artifact size, peak RSS, temp disk). --runs applies to the
    /// first scale; later scales run once.
    Pg {
        /// `pgbench -i -s` scales, comma-separated (70 ≈ 1 GiB, 280 ≈ 4 GiB).
        #[arg(long = "pg-scale", value_delimiter = ',', default_value = "70")]
        scales: Vec<u32>,
        /// The capsule binary (default: `capsule` next to this binary).
        #[arg(long, value_name = "FILE")]
        capsule: Option<std::path::PathBuf>,
    },
    /// Internal: one case of `rss`, run as a child process.
    #[command(hide = true)]
    RssChild(rss::ChildArgs),
    /// Elasticsearch/OpenSearch export and import vs the server's ceilings
    /// and elasticdump, on osmem-server (not part of `all`).
    Es {
        /// Documents in the benchmark index.
        #[arg(long, default_value_t = 200_000)]
        es_docs: usize,
        /// Skip elasticdump (installed by bench/setup.sh).
        #[arg(long)]
        no_elasticdump: bool,
        /// Skip the import runs.
        #[arg(long)]
        no_import: bool,
        /// Use this server (http://host:port) instead of a fresh osmem-server.
        #[arg(long, value_name = "URL")]
        es_url: Option<String>,
    },
    /// Internal: one capsule backup or restore of `es`, run as a child process.
    #[command(hide = true)]
    EsChild(es::ChildArgs),
    /// Redis capture and restore vs redis-cli --rdb and --pipe, cold start,
    /// peak RSS (not part of `all`).
    Redis(redis::RedisArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("capsule-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("capsule-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::RssChild(args) = cli.command {
        return rss::child(args).await;
    }
    if let Command::EsChild(args) = cli.command {
        return es::child(args).await;
    }
    if let Command::Redis(args) = &cli.command
        && args.child.is_some()
    {
        return redis::child_main(args).await;
    }
    if cfg!(debug_assertions) {
        eprintln!("capsule-bench: warning: a debug build; numbers mean little without --release");
    }
    anyhow::ensure!(cli.runs > 0, "--runs must be at least 1");
    measure::set_quiet_wait(std::time::Duration::from_secs(cli.quiet_wait));
    machine::Machine::detect().table().print();
    if let Command::Pg { scales, capsule } = &cli.command {
        eprintln!("PostgreSQL benchmark…");
        let bench = pg::PgBench {
            scales: scales.clone(),
            runs: cli.runs,
            capsule: capsule.clone(),
        };
        return bench.run().await;
    }
    if let Command::Es {
        es_docs,
        no_elasticdump,
        no_import,
        es_url,
    } = cli.command
    {
        eprintln!("elasticsearch benchmark…");
        let bench = es::EsBench {
            docs: es_docs,
            runs: cli.runs,
            no_elasticdump,
            no_import,
            url: es_url,
        };
        for t in bench.run().await? {
            t.print();
        }
        return Ok(());
    }
    if let Command::Redis(args) = &cli.command {
        eprintln!("redis benchmark…");
        for t in redis::run(args, cli.runs).await? {
            t.print();
        }
        return Ok(());
    }
    let (pipeline, rss, catalog) = match cli.command {
        Command::Pipeline => (true, false, false),
        Command::Rss => (false, true, false),
        Command::Catalog => (false, false, true),
        _ => (true, true, true),
    };
    if pipeline {
        eprintln!("pipeline benchmark…");
        let bench = PipelineBench {
            size: cli.pipeline_mib * MIB,
            runs: cli.runs,
        };
        for t in bench.run().await? {
            t.print();
        }
    }
    if rss {
        eprintln!("memory benchmark…");
        let bench = RssBench {
            size: cli.rss_mib * MIB,
        };
        for t in bench.run().await? {
            t.print();
        }
    }
    if catalog {
        eprintln!("catalog benchmark…");
        CatalogBench {
            backups: cli.backups,
            runs: cli.runs,
        }
        .run()
        .await?
        .print();
    }
    Ok(())
}
