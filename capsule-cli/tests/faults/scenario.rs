//! One engine under fault: a clean backup and restore measured first, then
//! each fault run and its checks, then the daemon's pass over what the
//! crashed runs left.
//!
//! Invariants checked after every run, as a user would (reading the bucket
//! and the databases, not capsule's memory):
//! 1. no statefile says `finished` unless every artifact it lists is present
//!    with its recorded size and SHA-256 (downloaded and hashed), and the
//!    backup passes a restore drill (`--verify`);
//! 2. the next daemon start marks every run a crash abandoned (`running`
//!    backups, `running` restore entries) `failed`;
//! 3. the live target is untouched by a restore that did not finish — in
//!    a destructive mode (PostgreSQL `--in-place`, Redis `--flush`,
//!    Elasticsearch `--replace`), untouched or named as changed by the
//!    run's error, and after a kill (no error line) the same restore run
//!    again without faults must bring the backup back;
//! 4. a run that fails by itself ends within a bound, with exit code 1 and
//!    one `error: …` line (no panic, no hang, no secret).

mod checks;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use capsule_core::{Statefile, Status};
use chrono::{DateTime, Utc};
use test_support::tcp_proxy::NetFault;

use crate::process::{Exit, Rng, Running};
use crate::store::{self, Bucket};
use crate::subject::{Mode, Phase, Subject};
use crate::table::{Outcome, Table};

/// What is done to a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL to capsule at a random moment of a clean run's duration.
    KillCapsule,
    /// SIGTERM to capsule once its job is recorded, at a random moment
    /// within a clean run's duration after that: it must wind down as
    /// from any failure (exit 130, one error line, nothing left running,
    /// what it created removed or named).
    Interrupt,
    /// SIGKILL to the engine's tool (pg_dump, pg_restore) or server.
    KillTool,
    /// SIGKILL to capsule while its restore waits at the commit point
    /// (held there by the suite: PostgreSQL's swap).
    KillAtCommit,
    /// SIGKILL to SeaweedFS at a random moment, restarted after 0.2–2 s.
    StoreCrash,
    /// The link to the store cut once after a random number of bytes.
    StoreCut,
    /// The link to the store cut after a random number of bytes, and
    /// refusing from then on (healed after the run).
    StorePartition,
    /// Every 16 KiB to or from the store waits 1–5 ms.
    StoreSlow,
    /// The link to the database cut once after a random number of bytes.
    DbCut,
}

/// One row of the table: a fault in a phase (a restore in a mode).
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub fault: Fault,
    pub phase: Phase,
    /// [`Mode::Default`] for backups.
    pub mode: Mode,
}

impl Case {
    pub fn label(&self, subject: &dyn Subject) -> String {
        let what = match self.fault {
            Fault::KillCapsule => "kill -9 capsule".to_string(),
            Fault::Interrupt => "SIGTERM capsule".into(),
            Fault::KillTool => format!("kill -9 {}", subject.tool(self.phase)),
            Fault::KillAtCommit => "kill -9 capsule at the commit".into(),
            Fault::StoreCrash => "store crash + restart".into(),
            Fault::StoreCut => "store link cut".into(),
            Fault::StorePartition => "store partition".into(),
            Fault::StoreSlow => "store link slow".into(),
            Fault::DbCut => "database link cut".into(),
        };
        match self.mode {
            Mode::Default => format!("{what} ({})", self.phase),
            Mode::Destructive => format!("{what} ({} {})", self.phase, subject.destructive_flag()),
        }
    }

    fn slot(&self) -> usize {
        slot(self.phase, self.mode)
    }

    /// Sorts the table's rows.
    pub fn order(&self) -> usize {
        self.fault as usize * 3 + self.slot()
    }
}

/// Which clean run a run in `phase` and `mode` is measured against: the
/// backup, the restore, the destructive restore.
fn slot(phase: Phase, mode: Mode) -> usize {
    match (phase, mode) {
        (Phase::Backup, _) => 0,
        (Phase::Restore, Mode::Default) => 1,
        (Phase::Restore, Mode::Destructive) => 2,
    }
}

/// A clean backup, restore and destructive restore (by [`slot`]):
/// durations, bytes, the backup to restore.
struct Baseline {
    id: String,
    /// The backup a destructive restore restores, when not `id`
    /// ([`Subject::target_backup_args`]).
    target_id: Option<String>,
    duration: [Duration; 3],
    store_bytes: [u64; 3],
    db_bytes: [u64; 3],
    counts: std::collections::BTreeMap<String, u64>,
}

/// A crashed run's leftovers, for the daemon check.
enum Pending {
    Backup(String),
    Restore(DateTime<Utc>),
}

/// What the checks of one run found.
struct Verdict {
    violations: Vec<String>,
    notes: Vec<String>,
    /// Left `running` for the daemon to mark failed.
    abandoned: Vec<Pending>,
}

/// One fault run, as it went.
struct Run {
    case: Case,
    n: usize,
    /// How the fault was injected (when, how many bytes…).
    what: String,
    exit: Exit,
    started: Instant,
}

/// An engine, its bucket and its results.
pub struct Engine<'a> {
    subject: Box<dyn Subject + Send>,
    bucket: Bucket,
    rng: Rng,
    table: &'a Table,
    seed: u64,
    base: Option<Baseline>,
    pending: Vec<(Pending, String, usize, Outcome)>,
    /// Finished backups whose artifacts were checked.
    verified: BTreeSet<String>,
}

impl<'a> Engine<'a> {
    pub fn new(subject: Box<dyn Subject + Send>, rng: Rng, seed: u64, table: &'a Table) -> Self {
        let bucket = Bucket::new(subject.name());
        Engine {
            subject,
            bucket,
            rng,
            table,
            seed,
            base: None,
            pending: Vec::new(),
            verified: BTreeSet::new(),
        }
    }

    fn name(&self) -> &'static str {
        self.subject.name()
    }

    /// The table label of `case` on this engine.
    pub fn label(&self, case: Case) -> String {
        case.label(&*self.subject)
    }

    fn base(&self) -> &Baseline {
        self.base.as_ref().expect("baseline measured")
    }

    /// The backup a restore in `mode` restores.
    fn restore_id(&self, mode: Mode) -> String {
        let b = self.base();
        match (mode, &b.target_id) {
            (Mode::Destructive, Some(id)) => id.clone(),
            _ => b.id.clone(),
        }
    }

    /// The clean runs every fault run is measured against.
    ///
    /// # Panics
    /// When a clean run fails: nothing else would mean anything.
    pub fn baseline(&mut self) {
        let _store = store::s3().shared();
        let (store0, db0) = (
            self.bucket.proxy.forwarded(),
            self.subject.db_proxy(Phase::Backup).forwarded(),
        );
        let exit = self
            .spawn(Phase::Backup, Mode::Default)
            .wait(Duration::from_secs(300), false);
        assert_eq!(exit.code, Some(0), "clean backup failed:\n{exit:#?}");
        let id = exit.stdout.trim().to_string();
        let sf = self.statefile(&id);
        assert_eq!(sf.status, Status::Finished, "{sf:#?}");
        let wrong = self.bucket.check_artifacts(&sf);
        assert!(wrong.is_empty(), "clean backup: {wrong:?}");
        let backup = (
            exit.elapsed,
            self.bucket.proxy.forwarded() - store0,
            self.subject.db_proxy(Phase::Backup).forwarded() - db0,
        );
        let counts = sf
            .engine
            .and_then(|e| e.fingerprint)
            .unwrap_or_default()
            .counts;
        self.base = Some(Baseline {
            id: id.clone(),
            target_id: None,
            duration: [backup.0, Duration::ZERO, Duration::ZERO],
            store_bytes: [backup.1, 0, 0],
            db_bytes: [backup.2, 0, 0],
            counts,
        });
        if let Some(args) = self.subject.target_backup_args(Mode::Destructive) {
            let mut all = self.bucket.flags();
            all.extend(args);
            let exit = Running::spawn(&all).wait(Duration::from_secs(300), false);
            assert_eq!(
                exit.code,
                Some(0),
                "clean backup of the target failed:\n{exit:#?}"
            );
            let id = exit.stdout.trim().to_string();
            let wrong = self.bucket.check_artifacts(&self.statefile(&id));
            assert!(wrong.is_empty(), "clean backup of the target: {wrong:?}");
            self.verified.insert(id.clone());
            self.base.as_mut().expect("set above").target_id = Some(id);
        }

        for mode in [Mode::Default, Mode::Destructive] {
            let live = self.subject.live_before(mode);
            let (store0, db0) = (
                self.bucket.proxy.forwarded(),
                self.subject.db_proxy(Phase::Restore).forwarded(),
            );
            let exit = self
                .spawn(Phase::Restore, mode)
                .wait(Duration::from_secs(300), false);
            assert_eq!(
                exit.code,
                Some(0),
                "clean restore ({mode:?}) failed:\n{exit:#?}"
            );
            let (wrong, _) = self.subject.live_after(mode, &live, true, None);
            assert!(wrong.is_empty(), "clean restore ({mode:?}): {wrong:?}");
            let slot = slot(Phase::Restore, mode);
            let store_bytes = self.bucket.proxy.forwarded() - store0;
            let db_bytes = self.subject.db_proxy(Phase::Restore).forwarded() - db0;
            let b = self.base.as_mut().expect("set above");
            b.duration[slot] = exit.elapsed;
            b.store_bytes[slot] = store_bytes;
            b.db_bytes[slot] = db_bytes;
        }
        let b = self.base();
        eprintln!(
            "{}: clean backup {:.2?} ({} KiB to the store), clean restore {:.2?}, {} {:.2?}",
            self.subject.name(),
            b.duration[0],
            b.store_bytes[0] / 1024,
            b.duration[1],
            self.subject.destructive_flag(),
            b.duration[2]
        );
    }

    fn spawn(&self, phase: Phase, mode: Mode) -> Running {
        let mut args = self.bucket.flags();
        match phase {
            Phase::Backup => args.extend(self.subject.backup_args()),
            Phase::Restore => {
                let id = self.restore_id(mode);
                args.extend(self.subject.restore_args(&id, mode));
            }
        }
        Running::spawn(&args)
    }

    fn statefile(&self, id: &str) -> Statefile {
        self.bucket
            .load(id)
            .unwrap_or_else(|| panic!("no statefile {id}"))
    }

    /// Runs `case` once and records it (not at all when the engine lacks
    /// what the fault needs).
    pub fn run(&mut self, case: Case, n: usize) {
        let s3 = store::s3();
        let mut exclusive = None;
        let _shared = match case.fault {
            Fault::StoreCrash => {
                exclusive = Some(s3.exclusive());
                None
            }
            _ => Some(s3.shared()),
        };
        let run_started = Instant::now();
        let phase = case.phase;
        let i = case.slot();
        let (clean, store_bytes, db_bytes) = {
            let b = self.base();
            (b.duration[i], b.store_bytes[i], b.db_bytes[i])
        };
        let bound = clean * 3 + Duration::from_secs(60);
        let before = self.bucket.ids();
        let restores_before = match phase {
            Phase::Restore => self.statefile(&self.restore_id(case.mode)).restores.len(),
            Phase::Backup => 0,
        };
        let live = match phase {
            Phase::Restore => Some(self.subject.live_before(case.mode)),
            Phase::Backup => None,
        };
        let mut hold = None;
        if case.fault == Fault::KillAtCommit {
            match self.subject.hold_commit(case.mode) {
                Some(h) => hold = Some(h),
                None => return,
            }
        }

        let mut what = String::new();
        let net = |rng: &mut Rng, bytes: u64, partition: bool| {
            let n = rng.range(0, bytes);
            match partition {
                true => (NetFault::PartitionAfter(n), n),
                false => (NetFault::CutAfter(n), n),
            }
        };
        match case.fault {
            Fault::StoreCut | Fault::StorePartition => {
                let (f, n) = net(
                    &mut self.rng,
                    store_bytes,
                    case.fault == Fault::StorePartition,
                );
                self.bucket.proxy.set(f);
                what = format!("after {n} of {store_bytes} bytes");
            }
            Fault::StoreSlow => {
                let ms = self.rng.range(1, 5);
                self.bucket
                    .proxy
                    .set(NetFault::Delay(Duration::from_millis(ms)));
                what = format!("{ms} ms per 16 KiB");
            }
            Fault::DbCut => {
                let (f, n) = net(&mut self.rng, db_bytes, false);
                self.subject.db_proxy(phase).set(f);
                what = format!("after {n} of {db_bytes} bytes");
            }
            _ => {}
        }
        let delay = self.rng.duration(clean);
        let downtime = Duration::from_millis(self.rng.range(200, 2000));
        let mut run = self.spawn(phase, case.mode);
        let mut killed = false;
        let mut server_killed = false;
        match case.fault {
            Fault::KillCapsule => {
                what = format!("at {delay:.2?} of {clean:.2?}");
                if run.sleep_until(delay) {
                    killed = run.kill9();
                }
            }
            Fault::Interrupt => {
                // Once the job is recorded (its statefile, its restore
                // entry): capsule watches for the signal from before that,
                // and one sent earlier takes its default action, death,
                // before anything is written.
                let recorded = |e: &Self| match phase {
                    Phase::Backup => e.bucket.ids().len() > before.len(),
                    Phase::Restore => {
                        e.statefile(&e.restore_id(case.mode)).restores.len() > restores_before
                    }
                };
                while run.alive() && !recorded(self) && run.started.elapsed() < bound {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let at = run.started.elapsed() + delay;
                what = format!(
                    "at {at:.2?} ({delay:.2?} after it was recorded; clean run {clean:.2?})"
                );
                if run.sleep_until(at) {
                    run.sigterm();
                }
            }
            Fault::KillTool => {
                what = format!("at {delay:.2?} of {clean:.2?}");
                run.sleep_until(delay);
                while run.alive() {
                    if self.subject.kill_tool(&run, phase) {
                        server_killed = self.subject.tool_is_server();
                        what = format!("at {:.2?} of {clean:.2?}", run.started.elapsed());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Fault::KillAtCommit => {
                let h = hold.take().expect("held");
                while run.alive() && !h.reached() && run.started.elapsed() < bound {
                    std::thread::sleep(Duration::from_millis(10));
                }
                what = format!("at {:.2?}", run.started.elapsed());
                if h.reached() {
                    killed = run.kill9();
                }
                drop(h);
            }
            Fault::StoreCrash => {
                what = format!("at {delay:.2?} of {clean:.2?}, down {downtime:.2?}");
                if run.sleep_until(delay) {
                    let s3 = exclusive.as_mut().expect("exclusive");
                    s3.kill();
                    std::thread::sleep(downtime);
                    s3.restart();
                }
            }
            _ => {}
        }
        let exit = run.wait(bound, killed);
        self.bucket.proxy.set(NetFault::Pass);
        self.subject.db_proxy(phase).set(NetFault::Pass);
        if server_killed {
            self.subject.recover(phase);
        }

        let store_was_down = matches!(case.fault, Fault::StoreCrash | Fault::StorePartition);
        let mut verdict = Verdict {
            violations: Vec::new(),
            notes: Vec::new(),
            abandoned: Vec::new(),
        };
        self.check_exit(&exit, bound, case.fault, &mut verdict);
        let finished = match phase {
            Phase::Backup => self.judge_backup(&exit, &before, store_was_down, &mut verdict),
            Phase::Restore => {
                let live = live.as_ref().filter(|_| !server_killed);
                let finished = self.judge_restore(
                    &exit,
                    case.mode,
                    restores_before,
                    live,
                    store_was_down,
                    &mut verdict,
                );
                if let (Mode::Destructive, false, Some(live)) = (case.mode, finished, live) {
                    self.restore_again(live, &exit, bound, &mut verdict);
                }
                finished
            }
        };
        let run = Run {
            case,
            n,
            what,
            exit,
            started: run_started,
        };
        self.record(&run, finished, verdict);
        drop(exclusive);
    }
}
