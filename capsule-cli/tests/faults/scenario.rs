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
//! 3. the live target is untouched by a restore that did not finish;
//! 4. a run that fails by itself ends within a bound, with exit code 1 and
//!    one `error: …` line (no panic, no hang, no secret).

use std::collections::BTreeSet;
use std::time::Duration;

use capsule_core::{RestoreStatus, Statefile, Status};
use chrono::{DateTime, Utc};
use test_support::tcp_proxy::NetFault;

use crate::process::{Exit, Rng, Running};
use crate::store::{self, Bucket};
use crate::subject::{Phase, Subject};
use crate::table::{Outcome, Table};

/// What is done to a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL to capsule at a random moment of a clean run's duration.
    KillCapsule,
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

/// One row of the table: a fault in a phase.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub fault: Fault,
    pub phase: Phase,
}

impl Case {
    pub fn label(&self, subject: &dyn Subject) -> String {
        let what = match self.fault {
            Fault::KillCapsule => "kill -9 capsule".to_string(),
            Fault::KillTool => format!("kill -9 {}", subject.tool(self.phase)),
            Fault::KillAtCommit => "kill -9 capsule at the commit".into(),
            Fault::StoreCrash => "store crash + restart".into(),
            Fault::StoreCut => "store link cut".into(),
            Fault::StorePartition => "store partition".into(),
            Fault::StoreSlow => "store link slow".into(),
            Fault::DbCut => "database link cut".into(),
        };
        format!("{what} ({})", self.phase)
    }

    /// Sorts the table's rows.
    pub fn order(&self) -> usize {
        self.fault as usize * 2 + self.phase as usize
    }
}

/// A clean backup and restore: durations, bytes, the backup to restore.
struct Baseline {
    id: String,
    duration: [Duration; 2],
    store_bytes: [u64; 2],
    db_bytes: [u64; 2],
    counts: std::collections::BTreeMap<String, u64>,
}

/// A crashed run's leftovers, for the daemon check.
enum Pending {
    Backup(String),
    Restore(DateTime<Utc>),
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
            .spawn(Phase::Backup, None)
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
            duration: [backup.0, Duration::ZERO],
            store_bytes: [backup.1, 0],
            db_bytes: [backup.2, 0],
            counts,
        });

        let (live, _) = self.subject.live_before();
        let (store0, db0) = (
            self.bucket.proxy.forwarded(),
            self.subject.db_proxy(Phase::Restore).forwarded(),
        );
        let exit = self
            .spawn(Phase::Restore, None)
            .wait(Duration::from_secs(300), false);
        assert_eq!(exit.code, Some(0), "clean restore failed:\n{exit:#?}");
        let (wrong, _) = self.subject.live_after(&live, true);
        assert!(wrong.is_empty(), "clean restore: {wrong:?}");
        let b = self.base.as_mut().expect("set above");
        b.duration[1] = exit.elapsed;
        b.store_bytes[1] = self.bucket.proxy.forwarded() - store0;
        b.db_bytes[1] = self.subject.db_proxy(Phase::Restore).forwarded() - db0;
        eprintln!(
            "{}: clean backup {:.2?} ({} KiB to the store), clean restore {:.2?}",
            self.subject.name(),
            b.duration[0],
            b.store_bytes[0] / 1024,
            b.duration[1]
        );
    }

    fn spawn(&self, phase: Phase, id: Option<&str>) -> Running {
        let mut args = self.bucket.flags();
        match phase {
            Phase::Backup => args.extend(self.subject.backup_args()),
            Phase::Restore => {
                let id = id.unwrap_or(&self.base().id).to_string();
                args.extend(self.subject.restore_args(&id));
            }
        }
        Running::spawn(&args)
    }

    fn statefile(&self, id: &str) -> Statefile {
        self.bucket
            .statefiles()
            .into_iter()
            .find(|s| s.backup_id.as_str() == id)
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
        let run_started = std::time::Instant::now();
        let label = case.label(&*self.subject);
        let phase = case.phase;
        let i = phase as usize;
        let (clean, store_bytes, db_bytes) = {
            let b = self.base();
            (b.duration[i], b.store_bytes[i], b.db_bytes[i])
        };
        let bound = clean * 3 + Duration::from_secs(60);
        let before: BTreeSet<String> = ids(&self.bucket.statefiles());
        let restores_before = match phase {
            Phase::Restore => self.statefile(&self.base().id).restores.len(),
            Phase::Backup => 0,
        };
        let (live, mut notes) = match phase {
            Phase::Restore => {
                let (l, n) = self.subject.live_before();
                (Some(l), n)
            }
            Phase::Backup => (None, Vec::new()),
        };
        let mut hold = None;
        if case.fault == Fault::KillAtCommit {
            match self.subject.hold_commit() {
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
        let mut run = self.spawn(phase, None);
        let mut killed = false;
        let mut server_killed = false;
        match case.fault {
            Fault::KillCapsule => {
                what = format!("at {delay:.2?} of {clean:.2?}");
                if run.sleep_until(delay) {
                    killed = run.kill9();
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

        let mut violations = Vec::new();
        let mut abandoned = Vec::new();
        let store_was_down = matches!(case.fault, Fault::StoreCrash | Fault::StorePartition);
        self.check_exit(&exit, bound, &mut violations, &mut notes);
        let after = self.bucket.statefiles();
        let finished = match phase {
            Phase::Backup => {
                self.judge_backup(&exit, &before, &after, store_was_down, &mut violations)
            }
            Phase::Restore => {
                let sf = after
                    .iter()
                    .find(|s| s.backup_id.as_str() == self.base().id)
                    .expect("the baseline backup");
                let entries = &sf.restores[restores_before.min(sf.restores.len())..];
                let entry_finished = entries.iter().any(|r| r.status == RestoreStatus::Finished);
                let entry_running = entries.iter().any(|r| r.status == RestoreStatus::Running);
                match (exit.code, entry_finished, entry_running) {
                    (Some(0), false, true) if store_was_down => notes.push(
                        "restored, but the store was down when the outcome was to be recorded: \
                         the CLI said so (exit 0 with a warning) and the entry stays running \
                         until a daemon marks it failed (owner lost)"
                            .into(),
                    ),
                    (Some(0), false, _) => {
                        violations.push("exit 0 but the restore entry is not finished".into())
                    }
                    _ => {}
                }
                if exit.code == Some(1) && entry_finished {
                    notes.push("exit 1 although the restore entry says finished".into());
                }
                for r in entries
                    .iter()
                    .filter(|r| r.status == RestoreStatus::Running)
                {
                    if !killed && !store_was_down && !exit.hung {
                        violations.push(format!(
                            "the run ended (exit {:?}) but left its restore entry running",
                            exit.code
                        ));
                    }
                    abandoned.push(Pending::Restore(r.requested_at));
                }
                if server_killed {
                    notes.push(format!(
                        "{}: the live target was the server killed: invariant 3 not applicable",
                        self.name()
                    ));
                } else {
                    let live = live.as_ref().expect("measured before");
                    let (v, n) = self.subject.live_after(live, entry_finished);
                    violations.extend(v);
                    notes.extend(n);
                }
                entry_finished
            }
        };
        let outcome = if !violations.is_empty() {
            Outcome::Violation
        } else if finished {
            Outcome::Finished
        } else {
            Outcome::FailedCleanly
        };
        // What a crash left for the daemon: counted now, demoted if the
        // daemon does not mark it failed.
        if let Phase::Backup = phase {
            for sf in after
                .iter()
                .filter(|s| !before.contains(s.backup_id.as_str()))
            {
                if sf.status == Status::Running {
                    abandoned.push(Pending::Backup(sf.backup_id.to_string()));
                }
            }
        }
        for p in abandoned {
            self.pending.push((p, label.clone(), case.order(), outcome));
        }
        let engine = self.name();
        if std::env::var_os("CAPSULE_FAULT_VERBOSE").is_some() {
            eprintln!(
                "{engine} / {label} / run {n} ({what}): {outcome:?}, capsule exit {:?} after {:.2?}, run checked in {:.2?}{}",
                exit.code,
                exit.elapsed,
                run_started.elapsed(),
                exit.error_line()
                    .map(|e| format!("\n    {e}"))
                    .unwrap_or_default()
            );
        }
        self.table.record(engine, case.order(), &label, outcome);
        for v in &violations {
            self.table.violation(format!(
                "{engine} / {label} / run {n} ({what}; CAPSULE_FAULT_SEED={}): {v}\n  capsule exit {:?} after {:.2?}; stderr tail:\n{}",
                self.seed,
                exit.code,
                exit.elapsed,
                indent(&exit.stderr_tail(8))
            ));
        }
        for note in notes {
            self.table.note(format!("{engine} / {label}: {note}"));
        }
        drop(exclusive);
    }

    /// Invariant 4 for a run that ended by itself.
    fn check_exit(
        &self,
        exit: &Exit,
        bound: Duration,
        v: &mut Vec<String>,
        notes: &mut Vec<String>,
    ) {
        let s3 = store::s3();
        for secret in [&s3.secret_key, &s3.access_key] {
            if exit.stderr.contains(secret.as_str()) || exit.stdout.contains(secret.as_str()) {
                v.push("a store key appears in the output".into());
            }
        }
        if exit.hung {
            v.push(format!("still running after {bound:.0?}: killed"));
            return;
        }
        if exit.killed || exit.code == Some(0) {
            return;
        }
        match exit.code {
            Some(1) => {}
            other => v.push(format!("exit {other:?}, not 1")),
        }
        if exit.stderr.contains("panicked") {
            v.push("capsule panicked".into());
        }
        match exit.error_line() {
            None => v.push("no `error: …` line on stderr".into()),
            Some(line) if line.trim() == "error:" => v.push("an empty error line".into()),
            Some(_) => {}
        }
        if exit.retry_lines() > 0 {
            notes.push(format!(
                "failed after logged retries (\"retry N of M\"), within {:.0?}",
                bound
            ));
        }
    }

    /// Invariant 1 and the outcome of a backup run; true when it finished.
    fn judge_backup(
        &self,
        exit: &Exit,
        before: &BTreeSet<String>,
        after: &[Statefile],
        store_was_down: bool,
        v: &mut Vec<String>,
    ) -> bool {
        let new: Vec<&Statefile> = after
            .iter()
            .filter(|s| !before.contains(s.backup_id.as_str()))
            .collect();
        let mut finished = false;
        for sf in &new {
            match sf.status {
                Status::Finished => {
                    finished = true;
                    v.extend(self.bucket.check_artifacts(sf));
                    let counts = sf
                        .engine
                        .as_ref()
                        .and_then(|e| e.fingerprint.as_ref())
                        .map(|f| f.counts.clone())
                        .unwrap_or_default();
                    if counts != self.base().counts {
                        v.push(format!(
                            "backup {} recorded counts {counts:?}, the source has {:?}",
                            sf.backup_id,
                            self.base().counts
                        ));
                    }
                    v.extend(self.verify(sf.backup_id.as_str()));
                }
                Status::Running if !exit.killed && !store_was_down && !exit.hung => {
                    v.push(format!(
                        "the run ended (exit {:?}) but left backup {} running",
                        exit.code, sf.backup_id
                    ));
                }
                _ => {}
            }
        }
        if exit.code == Some(0) {
            let printed = exit.stdout.trim();
            if !new
                .iter()
                .any(|s| s.status == Status::Finished && s.backup_id.as_str() == printed)
            {
                v.push(format!("exit 0 but backup {printed:?} is not finished"));
            }
        }
        if new.len() > 1 {
            v.push(format!("one run made {} backups", new.len()));
        }
        finished
    }

    /// A restore drill of backup `id`: the proof a finished backup holds
    /// the data, not only bytes matching their checksum.
    fn verify(&self, id: &str) -> Vec<String> {
        let mut args = self.bucket.flags();
        args.extend(self.subject.verify_args(id));
        let exit = Running::spawn(&args).wait(Duration::from_secs(300), false);
        if std::env::var_os("CAPSULE_FAULT_VERBOSE").is_some() {
            eprintln!(
                "{}: restore drill of {id}: exit {:?} in {:.2?}",
                self.name(),
                exit.code,
                exit.elapsed
            );
        }
        if exit.code == Some(0) {
            return Vec::new();
        }
        vec![format!(
            "backup {id} is finished but its restore drill failed (exit {:?}): {}",
            exit.code,
            exit.error_line().unwrap_or("")
        )]
    }

    /// Invariant 2: a daemon started on the bucket marks every backup and
    /// restore a crashed run left `running` as failed.
    pub fn daemon_check(&mut self) {
        let _store = store::s3().shared();
        let (b, r) = store::unfinished(&self.bucket.statefiles());
        if b.is_empty() && r.is_empty() {
            return;
        }
        let mut daemon = crate::support::Spec::new(
            &format!("faults-{}", self.name()),
            &self.bucket.direct_url_with_keys(),
            "faults",
        )
        .dst_dir(store::DST_DIR)
        .start();
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let (b, r) = store::unfinished(&self.bucket.statefiles());
            if b.is_empty() && r.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "{}: the daemon marked {} abandoned backups and the restores of {} backups failed in {:.1?}",
            self.name(),
            b.len(),
            r.len(),
            started.elapsed()
        );
        let all = self.bucket.statefiles();
        let engine = self.name();
        for (pending, label, order, outcome) in std::mem::take(&mut self.pending) {
            let problem = match &pending {
                Pending::Backup(id) => {
                    let sf = all.iter().find(|s| s.backup_id.as_str() == id);
                    match sf.map(|s| (s.status, s.error.clone().unwrap_or_default())) {
                        Some((Status::Failed, e)) if e.starts_with("owner lost") => None,
                        Some((Status::Failed, _)) => None,
                        other => Some(format!(
                            "backup {id} left running by a crashed run is {other:?} after the daemon's scans"
                        )),
                    }
                }
                Pending::Restore(at) => {
                    let entry = all
                        .iter()
                        .flat_map(|s| s.restores.iter())
                        .find(|e| &e.requested_at == at);
                    match entry.map(|e| e.status) {
                        Some(RestoreStatus::Failed) | Some(RestoreStatus::Finished) => None,
                        other => Some(format!(
                            "the restore requested at {at} left running by a crashed run is {other:?} after the daemon's scans"
                        )),
                    }
                }
            };
            if let Some(p) = problem {
                self.table.demote(engine, order, &label, outcome);
                self.table.violation(format!(
                    "{engine} / {label} (CAPSULE_FAULT_SEED={}): {p}",
                    self.seed
                ));
            }
        }
        let _ = daemon.terminate(Duration::from_secs(30));
    }
}

fn ids(list: &[Statefile]) -> BTreeSet<String> {
    list.iter().map(|s| s.backup_id.to_string()).collect()
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
