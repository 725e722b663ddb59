//! The suite's result table: per engine and fault, how many runs failed
//! cleanly, finished, or broke an invariant; and every violation and
//! note with the run that produced it.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// How one run ended, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The run failed (or was killed) and every invariant held.
    FailedCleanly,
    /// The run finished (backup or restore complete) and every invariant held.
    Finished,
    /// An invariant was broken.
    Violation,
}

#[derive(Default, Clone)]
struct Row {
    runs: usize,
    failed: usize,
    finished: usize,
    violations: usize,
}

/// Results of every engine, filled from several threads.
#[derive(Default)]
pub struct Table {
    rows: Mutex<BTreeMap<(String, usize, String), Row>>,
    details: Mutex<Vec<String>>,
    notes: Mutex<Vec<String>>,
}

impl Table {
    /// Records one run of `fault` (`order` sorts the rows).
    pub fn record(&self, engine: &str, order: usize, fault: &str, outcome: Outcome) {
        let mut rows = self.rows.lock().unwrap();
        let row = rows
            .entry((engine.to_string(), order, fault.to_string()))
            .or_default();
        row.runs += 1;
        match outcome {
            Outcome::FailedCleanly => row.failed += 1,
            Outcome::Finished => row.finished += 1,
            Outcome::Violation => row.violations += 1,
        }
    }

    /// Turns one already counted run of `fault` into a violation (the
    /// daemon check comes after the runs).
    pub fn demote(&self, engine: &str, order: usize, fault: &str, from: Outcome) {
        let mut rows = self.rows.lock().unwrap();
        if let Some(row) = rows.get_mut(&(engine.to_string(), order, fault.to_string())) {
            match from {
                Outcome::FailedCleanly if row.failed > 0 => row.failed -= 1,
                Outcome::Finished if row.finished > 0 => row.finished -= 1,
                _ => return,
            }
            row.violations += 1;
        }
    }

    pub fn violation(&self, text: String) {
        eprintln!("VIOLATION {text}");
        self.details.lock().unwrap().push(text);
    }

    pub fn note(&self, text: String) {
        self.notes.lock().unwrap().push(text);
    }

    pub fn violations(&self) -> usize {
        self.rows
            .lock()
            .unwrap()
            .values()
            .map(|r| r.violations)
            .sum()
    }

    /// The table as Markdown (readable in a terminal too), then the
    /// violations and notes.
    pub fn render(&self) -> String {
        let rows = self.rows.lock().unwrap();
        let mut out = String::from(
            "| engine | fault | runs | failed cleanly | finished | violations |\n\
             |---|---|---:|---:|---:|---:|\n",
        );
        let mut total = Row::default();
        for ((engine, _, fault), r) in rows.iter() {
            out.push_str(&format!(
                "| {engine} | {fault} | {} | {} | {} | {} |\n",
                r.runs, r.failed, r.finished, r.violations
            ));
            total.runs += r.runs;
            total.failed += r.failed;
            total.finished += r.finished;
            total.violations += r.violations;
        }
        out.push_str(&format!(
            "| **all** | | **{}** | **{}** | **{}** | **{}** |\n",
            total.runs, total.failed, total.finished, total.violations
        ));
        let details = self.details.lock().unwrap();
        if !details.is_empty() {
            out.push_str("\nViolations:\n");
            for d in details.iter() {
                out.push_str(&format!("- {d}\n"));
            }
        }
        let notes = self.notes.lock().unwrap();
        if !notes.is_empty() {
            out.push_str("\nNotes (not violations):\n");
            let mut counted: BTreeMap<&str, usize> = BTreeMap::new();
            for n in notes.iter() {
                *counted.entry(n.as_str()).or_default() += 1;
            }
            for (n, count) in counted {
                match count {
                    1 => out.push_str(&format!("- {n}\n")),
                    _ => out.push_str(&format!("- {n} (×{count})\n")),
                }
            }
        }
        out
    }
}
