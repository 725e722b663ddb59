//! Prometheus metrics, rendered in the text exposition format (0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Upper bounds (seconds) of the duration histograms' buckets.
const BUCKETS: [f64; 9] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 10800.0, 43200.0];

/// The labels that name a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceLabels {
    /// The cluster.
    pub cluster: String,
    /// `postgresql`, `redis`, `elasticsearch`.
    pub service_type: String,
    /// `namespace/name`.
    pub service: String,
}

impl ServiceLabels {
    fn render(&self) -> String {
        format!(
            "cluster=\"{}\",service_type=\"{}\",service=\"{}\"",
            escape(&self.cluster),
            escape(&self.service_type),
            escape(&self.service)
        )
    }
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// It did what it should.
    Finished,
    /// It failed (including cancelled and owner lost).
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Default)]
struct Inner {
    backups: BTreeMap<(ServiceLabels, Outcome), u64>,
    restores: BTreeMap<(ServiceLabels, Outcome), u64>,
    backup_seconds: BTreeMap<ServiceLabels, Histogram>,
    restore_seconds: BTreeMap<ServiceLabels, Histogram>,
    backup_bytes: BTreeMap<ServiceLabels, u64>,
    last_success: BTreeMap<ServiceLabels, i64>,
    deleted: BTreeMap<ServiceLabels, u64>,
}

/// The daemon's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    jobs_running: AtomicI64,
    leases_taken_over: AtomicU64,
    owners_lost: AtomicU64,
    scans: AtomicU64,
    scan_errors: AtomicU64,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A backup ended.
    pub fn backup(
        &self,
        labels: &ServiceLabels,
        outcome: Outcome,
        took: Duration,
        bytes: Option<u64>,
        at: DateTime<Utc>,
    ) {
        self.with(|m| {
            *m.backups.entry((labels.clone(), outcome)).or_default() += 1;
            m.backup_seconds
                .entry(labels.clone())
                .or_default()
                .observe(took.as_secs_f64());
            if outcome == Outcome::Finished {
                *m.backup_bytes.entry(labels.clone()).or_default() += bytes.unwrap_or(0);
                m.last_success.insert(labels.clone(), at.timestamp());
            }
        });
    }

    /// A restore ended.
    pub fn restore(&self, labels: &ServiceLabels, outcome: Outcome, took: Duration) {
        self.with(|m| {
            *m.restores.entry((labels.clone(), outcome)).or_default() += 1;
            m.restore_seconds
                .entry(labels.clone())
                .or_default()
                .observe(took.as_secs_f64());
        });
    }

    /// A rotation deleted a backup.
    pub fn deleted(&self, labels: &ServiceLabels) {
        self.with(|m| *m.deleted.entry(labels.clone()).or_default() += 1);
    }

    /// A job started (+1) or ended (-1).
    pub fn job_running(&self, delta: i64) {
        self.jobs_running.fetch_add(delta, Ordering::Relaxed);
    }

    /// Jobs running now.
    pub fn jobs_running(&self) -> i64 {
        self.jobs_running.load(Ordering::Relaxed)
    }

    /// A lease was taken over from a silent holder.
    pub fn lease_taken_over(&self) {
        self.leases_taken_over.fetch_add(1, Ordering::Relaxed);
    }

    /// A running backup or restore was marked failed, its owner lost.
    pub fn owner_lost(&self) {
        self.owners_lost.fetch_add(1, Ordering::Relaxed);
    }

    /// A scan of the bucket ended.
    pub fn scan(&self, ok: bool) {
        self.scans.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.scan_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        counter_family(
            &mut out,
            "capsule_backups_total",
            "Backups run by this daemon, by service and outcome.",
            &m.backups,
        );
        counter_family(
            &mut out,
            "capsule_restores_total",
            "Restores run by this daemon, by service and outcome.",
            &m.restores,
        );
        histogram_family(
            &mut out,
            "capsule_backup_duration_seconds",
            "Wall time of backups.",
            &m.backup_seconds,
        );
        histogram_family(
            &mut out,
            "capsule_restore_duration_seconds",
            "Wall time of restores.",
            &m.restore_seconds,
        );
        header(
            &mut out,
            "capsule_backup_bytes_total",
            "Bytes stored by finished backups.",
            "counter",
        );
        for (l, v) in &m.backup_bytes {
            let _ = writeln!(out, "capsule_backup_bytes_total{{{}}} {v}", l.render());
        }
        header(
            &mut out,
            "capsule_last_backup_success_timestamp_seconds",
            "When the last backup of the service finished (Unix time).",
            "gauge",
        );
        for (l, v) in &m.last_success {
            let _ = writeln!(
                out,
                "capsule_last_backup_success_timestamp_seconds{{{}}} {v}",
                l.render()
            );
        }
        header(
            &mut out,
            "capsule_backups_rotated_total",
            "Backups deleted by rotation.",
            "counter",
        );
        for (l, v) in &m.deleted {
            let _ = writeln!(out, "capsule_backups_rotated_total{{{}}} {v}", l.render());
        }
        drop(m);
        for (name, help, kind, value) in [
            (
                "capsule_jobs_running",
                "Jobs (backups, restores, rotations) running now.",
                "gauge",
                self.jobs_running.load(Ordering::Relaxed),
            ),
            (
                "capsule_leases_taken_over_total",
                "Leases taken over from a holder that stopped heartbeating.",
                "counter",
                self.leases_taken_over.load(Ordering::Relaxed) as i64,
            ),
            (
                "capsule_owner_lost_total",
                "Running backups and restores marked failed because their owner stopped heartbeating.",
                "counter",
                self.owners_lost.load(Ordering::Relaxed) as i64,
            ),
            (
                "capsule_scans_total",
                "Scans of the bucket.",
                "counter",
                self.scans.load(Ordering::Relaxed) as i64,
            ),
            (
                "capsule_scan_errors_total",
                "Scans of the bucket that failed.",
                "counter",
                self.scan_errors.load(Ordering::Relaxed) as i64,
            ),
        ] {
            header(&mut out, name, help, kind);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter_family(
    out: &mut String,
    name: &str,
    help: &str,
    values: &BTreeMap<(ServiceLabels, Outcome), u64>,
) {
    header(out, name, help, "counter");
    for ((l, o), v) in values {
        let _ = writeln!(
            out,
            "{name}{{{},outcome=\"{}\"}} {v}",
            l.render(),
            o.as_str()
        );
    }
}

fn histogram_family(
    out: &mut String,
    name: &str,
    help: &str,
    values: &BTreeMap<ServiceLabels, Histogram>,
) {
    header(out, name, help, "histogram");
    for (l, h) in values {
        let labels = l.render();
        for (le, c) in BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
    }
}

/// Escapes a label value: backslash, double quote, newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        let l = ServiceLabels {
            cluster: "c\"1".into(),
            service_type: "postgresql".into(),
            service: "ns/pg".into(),
        };
        m.backup(
            &l,
            Outcome::Finished,
            Duration::from_secs(3),
            Some(100),
            Utc::now(),
        );
        m.backup(
            &l,
            Outcome::Failed,
            Duration::from_secs(700),
            None,
            Utc::now(),
        );
        m.lease_taken_over();
        let text = m.render();
        assert!(text.contains(
            "capsule_backups_total{cluster=\"c\\\"1\",service_type=\"postgresql\",service=\"ns/pg\",outcome=\"finished\"} 1"
        ), "{text}");
        assert!(text.contains("capsule_backup_duration_seconds_bucket{cluster=\"c\\\"1\",service_type=\"postgresql\",service=\"ns/pg\",le=\"5\"} 1"), "{text}");
        assert!(text.contains("capsule_backup_duration_seconds_count{cluster=\"c\\\"1\",service_type=\"postgresql\",service=\"ns/pg\"} 2"));
        assert!(text.contains("capsule_leases_taken_over_total 1"));
        assert!(text.contains("capsule_backup_bytes_total{cluster=\"c\\\"1\",service_type=\"postgresql\",service=\"ns/pg\"} 100"));
    }
}
