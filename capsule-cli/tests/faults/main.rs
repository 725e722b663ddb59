//! The fault-injection suite: real `capsule` processes backing up and
//! restoring PostgreSQL, Redis and Elasticsearch (osmem-server) into
//! SeaweedFS while the suite kills capsule (`kill -9` at a random moment of
//! a clean run's duration), kills the engine's tool or server, crashes the
//! object store and starts it again, and cuts, partitions or slows the
//! network with a TCP proxy. After each run it checks the invariants of
//! [`scenario`] as a user would, and prints a table of runs and outcomes.
//!
//! Restores run in each engine's default mode and in its destructive one
//! (PostgreSQL `--in-place`, Redis `--flush`, Elasticsearch `--replace`).
//!
//! - CI mode (default): a handful of runs per engine, three of them in the
//!   destructive mode.
//! - Long mode: `CAPSULE_FAULT_RUNS=50` runs `kill -9 capsule` and
//!   `SIGTERM capsule` 50 times per engine (backup, restore, destructive
//!   restore) and every other fault a fifth as often.
//! - `CAPSULE_FAULT_SEED=<n>` replays the random choices of a run (the
//!   timings of real processes still vary); it is printed at the start and
//!   with every violation.
//! - Arguments that do not start with `-` select engines by name
//!   (`cargo test -p capsule-cli --test faults -- redis`);
//!   `CAPSULE_FAULT_CASES=pg_restore,partition` selects faults by a part of
//!   their label; `CAPSULE_FAULT_VERBOSE=1` prints every run.
//!
//! Needs SeaweedFS, PostgreSQL, redis-server and osmem-server
//! (scripts/setup-test-deps.sh). Exits non-zero on any violation.

#[allow(dead_code)]
#[path = "../daemon/support.rs"]
mod support;

mod es;
mod pg;
mod process;
mod redis;
mod scenario;
mod store;
mod subject;
mod table;

use std::process::ExitCode;
use std::time::Instant;

use process::Rng;
use scenario::{Case, Engine, Fault};
use subject::{Mode, Phase, Subject};
use table::Table;

const ENGINES: [&str; 3] = ["postgresql", "redis", "elasticsearch"];

/// The cases and how many runs each gets. CI mode crashes and partitions
/// the store in one phase per engine, picked by `rng`, and runs the
/// destructive restore killed and with its database link cut.
fn plan(runs: Option<usize>, rng: &mut Rng) -> Vec<(Case, usize)> {
    use Fault::*;
    use Phase::*;
    let case = |fault, phase| Case {
        fault,
        phase,
        mode: Mode::Default,
    };
    let destructive = |fault| Case {
        fault,
        phase: Restore,
        mode: Mode::Destructive,
    };
    let mut any_phase = || if rng.unit() < 0.5 { Backup } else { Restore };
    match runs {
        None => vec![
            (case(KillCapsule, Backup), 2),
            (case(KillCapsule, Restore), 2),
            (case(Interrupt, Backup), 1),
            (case(Interrupt, Restore), 1),
            (destructive(Interrupt), 1),
            (case(KillTool, Backup), 1),
            (case(KillTool, Restore), 1),
            (case(KillAtCommit, Restore), 1),
            (case(StoreCrash, any_phase()), 1),
            (case(StoreCut, Backup), 1),
            (case(StoreCut, Restore), 1),
            (case(StorePartition, any_phase()), 1),
            (case(DbCut, Backup), 1),
            (case(DbCut, Restore), 1),
            (destructive(KillCapsule), 1),
            (destructive(DbCut), 1),
        ],
        Some(n) => {
            let few = (n / 5).max(1);
            let mut all = vec![
                (case(KillCapsule, Backup), n),
                (case(KillCapsule, Restore), n),
                (destructive(KillCapsule), n),
                (case(Interrupt, Backup), n),
                (case(Interrupt, Restore), n),
                (destructive(Interrupt), n),
                (case(KillAtCommit, Restore), few),
            ];
            for fault in [
                KillTool,
                StoreCrash,
                StoreCut,
                StorePartition,
                StoreSlow,
                DbCut,
            ] {
                for phase in [Backup, Restore] {
                    all.push((case(fault, phase), few));
                }
                all.push((destructive(fault), few));
            }
            all
        }
    }
}

fn subject(name: &str) -> Box<dyn Subject + Send> {
    match name {
        "postgresql" => Box::new(pg::Pg::new()),
        "redis" => Box::new(redis::RedisSubject::new()),
        _ => Box::new(es::Es::new()),
    }
}

/// Runs every case of `plan` on one engine, round by round (so a long run
/// stopped early has covered every fault).
fn run_engine(name: &str, runs: Option<usize>, mut rng: Rng, seed: u64, table: &Table) {
    let started = Instant::now();
    let plan = plan(runs, &mut rng);
    let cases: Vec<String> = std::env::var("CAPSULE_FAULT_CASES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect();
    let mut engine = Engine::new(subject(name), rng, seed, table);
    eprintln!(
        "{name}: servers and data ready in {:.1?}",
        started.elapsed()
    );
    engine.baseline();
    let rounds = plan.iter().map(|(_, n)| *n).max().unwrap_or(0);
    for round in 0..rounds {
        for (case, n) in &plan {
            let wanted = cases.is_empty() || cases.iter().any(|c| engine.label(*case).contains(c));
            if round < *n && wanted {
                engine.run(*case, round + 1);
            }
        }
    }
    engine.daemon_check();
    engine.sweep();
    eprintln!("{name}: done in {:.1?}", started.elapsed());
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("faults: test");
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let engines: Vec<&str> = ENGINES
        .into_iter()
        .filter(|e| filters.is_empty() || filters.iter().any(|f| e.contains(f)))
        .collect();
    if engines.is_empty() {
        println!("faults: no engine matches {filters:?}");
        return ExitCode::SUCCESS;
    }
    let seed = std::env::var("CAPSULE_FAULT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let runs = std::env::var("CAPSULE_FAULT_RUNS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|n| *n > 0);
    eprintln!(
        "fault-injection suite: CAPSULE_FAULT_SEED={seed}, {} mode, engines {engines:?}",
        match runs {
            None => "CI".to_string(),
            Some(n) => format!("long (CAPSULE_FAULT_RUNS={n})"),
        }
    );
    let started = Instant::now();
    store::s3();
    let table = Table::default();
    let mut rng = Rng::new(seed);
    let rngs: Vec<Rng> = engines.iter().map(|_| rng.fork()).collect();
    let mut crashed = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .iter()
            .zip(rngs)
            .map(|(name, rng)| {
                let table = &table;
                (
                    *name,
                    s.spawn(move || run_engine(name, runs, rng, seed, table)),
                )
            })
            .collect();
        for (name, h) in handles {
            if h.join().is_err() {
                crashed.push(name);
            }
        }
    });
    println!("\n{}", table.render());
    println!(
        "fault-injection suite: {:.1?} wall time, CAPSULE_FAULT_SEED={seed}",
        started.elapsed()
    );
    if !crashed.is_empty() {
        eprintln!(
            "the suite itself failed for {crashed:?} (see the panic above); CAPSULE_FAULT_SEED={seed}"
        );
        return ExitCode::FAILURE;
    }
    if table.violations() > 0 {
        eprintln!(
            "{} violations; replay with CAPSULE_FAULT_SEED={seed}",
            table.violations()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
