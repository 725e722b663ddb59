//! The checks after each run (invariants 1, 3 and 4), the re-run of a
//! destructive restore that did not finish, the daemon's pass over what
//! crashed runs left (invariant 2), and the recording of outcomes.

use std::collections::BTreeSet;
use std::time::Duration;

use capsule_core::{RestoreStatus, Statefile, Status};

use super::{Engine, Fault, Pending, Run, Verdict};
use crate::process::{Exit, Running};
use crate::store;
use crate::subject::{Live, Mode, Phase};
use crate::table::Outcome;

fn verbose() -> bool {
    std::env::var_os("CAPSULE_FAULT_VERBOSE").is_some()
}

impl Engine<'_> {
    /// Invariant 4 for a run that ended by itself: within `bound`, exit 1,
    /// one `error: …` line, no panic, no store key in the output; a
    /// failure on an unreachable store after logged retries.
    pub(super) fn check_exit(&self, exit: &Exit, bound: Duration, fault: Fault, v: &mut Verdict) {
        let s3 = store::s3();
        for secret in [&s3.secret_key, &s3.access_key] {
            if exit.stderr.contains(secret.as_str()) || exit.stdout.contains(secret.as_str()) {
                v.violations
                    .push("a store key appears in the output".into());
            }
        }
        if exit.hung {
            v.violations
                .push(format!("still running after {bound:.0?}: killed"));
            return;
        }
        if exit.killed || exit.code == Some(0) {
            return;
        }
        // Interrupted: 130, as from ctrl-c; any other failure: 1.
        let expected = if fault == Fault::Interrupt { 130 } else { 1 };
        if exit.code != Some(expected) {
            v.violations
                .push(format!("exit {:?}, not {expected}", exit.code));
        }
        if exit.stderr.contains("panicked") {
            v.violations.push("capsule panicked".into());
        }
        match exit.error_line() {
            None => v.violations.push("no `error: …` line on stderr".into()),
            Some(line) if line.trim() == "error:" => {
                v.violations.push("an empty error line".into())
            }
            Some(_) => {}
        }
        match (fault, exit.retry_lines()) {
            (Fault::StorePartition, 0) => v
                .violations
                .push("failed on an unreachable store without a logged retry".into()),
            (_, 0) => {}
            _ => v.notes.push(format!(
                "failed after logged retries (\"retry N of M\"), within {bound:.0?}"
            )),
        }
    }

    /// Invariant 1 on the backups a run made (artifacts downloaded and
    /// hashed, counts as recorded by the clean run, a restore drill);
    /// true when one finished.
    pub(super) fn judge_backup(
        &mut self,
        exit: &Exit,
        before: &BTreeSet<String>,
        store_was_down: bool,
        v: &mut Verdict,
    ) -> bool {
        let new: Vec<Statefile> = self
            .bucket
            .ids()
            .difference(before)
            .filter_map(|id| self.bucket.load(id))
            .collect();
        let mut finished = false;
        for sf in &new {
            let id = sf.backup_id.to_string();
            match sf.status {
                Status::Finished => {
                    finished = true;
                    self.verified.insert(id.clone());
                    v.violations.extend(self.bucket.check_artifacts(sf));
                    let counts = sf
                        .engine
                        .as_ref()
                        .and_then(|e| e.fingerprint.as_ref())
                        .map(|f| f.counts.clone())
                        .unwrap_or_default();
                    if counts != self.base().counts {
                        v.violations.push(format!(
                            "backup {id} recorded counts {counts:?}, the source has {:?}",
                            self.base().counts
                        ));
                    }
                    v.violations.extend(self.verify(&id));
                }
                Status::Running => {
                    if !exit.killed && !store_was_down && !exit.hung {
                        v.violations.push(format!(
                            "the run ended (exit {:?}) but left backup {id} running",
                            exit.code
                        ));
                    }
                    v.abandoned.push(Pending::Backup(id));
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
                v.violations
                    .push(format!("exit 0 but backup {printed:?} is not finished"));
            }
        }
        if new.len() > 1 {
            v.violations
                .push(format!("one run made {} backups", new.len()));
        }
        finished
    }

    /// The restore entry a run in `mode` added to the backup it restores,
    /// and invariant 3 on the live target (`live`: `None` when the fault
    /// killed the live server itself); true when the entry says finished.
    pub(super) fn judge_restore(
        &mut self,
        exit: &Exit,
        mode: Mode,
        restores_before: usize,
        live: Option<&Live>,
        store_was_down: bool,
        v: &mut Verdict,
    ) -> bool {
        let sf = self.statefile(&self.restore_id(mode));
        let entries = &sf.restores[restores_before.min(sf.restores.len())..];
        let finished = entries.iter().any(|r| r.status == RestoreStatus::Finished);
        let running = entries.iter().any(|r| r.status == RestoreStatus::Running);
        match (exit.code, finished, running) {
            (Some(0), false, true) if store_was_down => v.notes.push(
                "restored, but the store was down when the outcome was to be recorded: \
                 the CLI said so (exit 0 with a warning) and the entry stays running \
                 until a daemon marks it failed (owner lost)"
                    .into(),
            ),
            (Some(0), false, _) => v
                .violations
                .push("exit 0 but the restore entry is not finished".into()),
            (Some(1), true, _) => v
                .notes
                .push("exit 1 although the restore entry says finished".into()),
            _ => {}
        }
        for r in entries
            .iter()
            .filter(|r| r.status == RestoreStatus::Running)
        {
            if !exit.killed && !store_was_down && !exit.hung {
                v.violations.push(format!(
                    "the run ended (exit {:?}) but left its restore entry running",
                    exit.code
                ));
            }
            v.abandoned.push(Pending::Restore(r.requested_at));
        }
        match live {
            Some(live) => {
                let (wrong, notes) =
                    self.subject
                        .live_after(mode, live, finished, exit.error_line());
                v.violations.extend(wrong);
                v.notes.extend(notes);
            }
            None => v
                .notes
                .push("the live target was the server killed: invariant 3 not applicable".into()),
        }
        finished
    }

    /// After a destructive restore that did not finish (`exit`), whatever
    /// it left: the same restore run again without faults must finish,
    /// be recorded, and leave the target holding the backup (and what it
    /// does not hold as in `live`) — the proof that the stored backup
    /// still brings the data back after the worst case.
    pub(super) fn restore_again(
        &mut self,
        live: &Live,
        exit: &Exit,
        bound: Duration,
        v: &mut Verdict,
    ) {
        let mode = Mode::Destructive;
        let id = self.restore_id(mode);
        let before = self.statefile(&id).restores.len();
        let again = self.spawn(Phase::Restore, mode).wait(bound, false);
        if verbose() {
            eprintln!(
                "{}: re-run of the restore: exit {:?} in {:.2?}",
                self.name(),
                again.code,
                again.elapsed
            );
        }
        if again.code != Some(0) {
            v.violations.push(format!(
                "the same restore run again without faults failed (exit {:?}): {}",
                again.code,
                again.error_line().unwrap_or("")
            ));
            return;
        }
        let sf = self.statefile(&id);
        let entries = &sf.restores[before.min(sf.restores.len())..];
        if !entries.iter().any(|r| r.status == RestoreStatus::Finished) {
            v.violations.push(
                "the same restore run again without faults exited 0 but is not recorded finished"
                    .into(),
            );
        }
        let (wrong, _) = self.subject.live_after(mode, live, true, None);
        v.violations.extend(
            wrong
                .into_iter()
                .map(|w| format!("after the same restore run again without faults: {w}")),
        );
        if exit.killed {
            v.notes.push(
                "killed: the same restore run again without faults finished and the target \
                 holds the backup"
                    .into(),
            );
        }
    }

    /// A restore drill of backup `id`: the proof a finished backup holds
    /// the data, not only bytes matching their checksum.
    fn verify(&self, id: &str) -> Vec<String> {
        let mut args = self.bucket.flags();
        args.extend(self.subject.verify_args(id));
        let exit = Running::spawn(&args).wait(Duration::from_secs(300), false);
        if verbose() {
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

    /// Records a run's outcome in the table, its violations and notes, and
    /// what it left for the daemon check.
    pub(super) fn record(&mut self, run: &Run, finished: bool, verdict: Verdict) {
        let outcome = if !verdict.violations.is_empty() {
            Outcome::Violation
        } else if finished {
            Outcome::Finished
        } else {
            Outcome::FailedCleanly
        };
        let engine = self.name();
        let label = run.case.label(&*self.subject);
        let exit = &run.exit;
        if verbose() {
            eprintln!(
                "{engine} / {label} / run {} ({}): {outcome:?}, capsule exit {:?} after {:.2?}, \
                 checked in {:.2?}{}",
                run.n,
                run.what,
                exit.code,
                exit.elapsed,
                run.started.elapsed(),
                exit.error_line()
                    .map(|e| format!("\n    {e}"))
                    .unwrap_or_default()
            );
        }
        self.table.record(engine, run.case.order(), &label, outcome);
        for v in &verdict.violations {
            self.table.violation(format!(
                "{engine} / {label} / run {} ({}; CAPSULE_FAULT_SEED={}): {v}\n  \
                 capsule exit {:?} after {:.2?}; stderr tail:\n{}",
                run.n,
                run.what,
                self.seed,
                exit.code,
                exit.elapsed,
                indent(&exit.stderr_tail(8))
            ));
        }
        for note in verdict.notes {
            self.table.note(format!("{engine} / {label}: {note}"));
        }
        // Counted now; demoted if the daemon does not mark them failed.
        for p in verdict.abandoned {
            self.pending
                .push((p, label.clone(), run.case.order(), outcome));
        }
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
                    match sf.map(|s| s.status) {
                        Some(Status::Failed) => None,
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
                    match entry.map(|e| (e.status, e.error.clone().unwrap_or_default())) {
                        // The statefile's contract: a failed restore's error
                        // says whether the target was touched.
                        Some((RestoreStatus::Failed, e)) if e.contains("may have been changed") => {
                            None
                        }
                        Some((RestoreStatus::Failed, e)) => Some(format!(
                            "the restore requested at {at}, abandoned by a crashed run, was marked \
                             failed without saying the target may have changed: {e}"
                        )),
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

    /// Invariant 1 once more over the whole bucket, as the daemon left it.
    pub fn sweep(&mut self) {
        let _store = store::s3().shared();
        for sf in self.bucket.statefiles() {
            if sf.status == Status::Finished && self.verified.insert(sf.backup_id.to_string()) {
                for p in self.bucket.check_artifacts(&sf) {
                    self.table
                        .violation(format!("{} (final sweep): {p}", self.name()));
                }
            }
        }
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
