//! Daemons dying and stopping: kill -9 mid-backup, SIGTERM with a running job.

use std::time::Duration;

use capsule_core::{RequestType, Status};

use crate::support::*;

/// Kill -9 a daemon mid-backup: another one marks the backup failed
/// ("owner lost"), takes the lease over and the next period runs.
#[test]
fn a_killed_daemon_is_taken_over() {
    let _serial = serial();
    let bucket = Bucket::new();
    let db = database("kill9", 20);
    let slow = slow_tools(60);
    let slow_cfg = service_toml(
        "cnvrg/pg-storage",
        "PG_URL",
        "2s",
        5,
        &format!("tool_dir = \"{}\"", slow.path().display()),
    );
    let fast_cfg = service_toml("cnvrg/pg-storage", "PG_URL", "2s", 5, "");
    let catalog = bucket.catalog("cnvrg-smart-backups");
    let mut a = Spec::new("a", &bucket.url, "c1")
        .config(slow_cfg)
        .env("PG_URL", &pg().url(&db))
        .start();
    wait_until(
        Duration::from_secs(30),
        "a's backup running",
        || {
            statefiles(&catalog)
                .iter()
                .any(|s| s.status == Status::Running)
        },
        || a.log_tail(40),
    );
    let victim = statefiles(&catalog)
        .into_iter()
        .find(|s| s.status == Status::Running)
        .unwrap();
    let b = Spec::new("b", &bucket.url, "c1")
        .config(fast_cfg)
        .env("PG_URL", &pg().url(&db))
        .start();
    // b sees the live lease and waits.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(b.metric("capsule_backups_total"), 0.0);
    a.kill9();

    wait_until(
        Duration::from_secs(40),
        "the abandoned backup failed and a newer one finished",
        || {
            let all = by_id(&statefiles(&catalog));
            let v = &all[victim.backup_id.as_str()];
            v.status == Status::Failed
                && all.values().any(|s| {
                    s.request_type == RequestType::Periodic
                        && s.status == Status::Finished
                        && s.requested_at > victim.requested_at
                })
        },
        || b.log_tail(60),
    );
    let v = &by_id(&statefiles(&catalog))[victim.backup_id.as_str()];
    let error = v.error.as_deref().unwrap();
    assert!(error.starts_with("owner lost"), "{error}");
    assert!(
        b.metric("capsule_leases_taken_over_total") >= 1.0,
        "{}",
        b.get("/metrics").body
    );
    assert!(b.metric("capsule_owner_lost_total") >= 1.0);
}

/// SIGTERM with a job running past the grace period: the job is cancelled
/// and marked failed, the lease released, and the daemon exits 0.
#[test]
fn sigterm_cancels_a_job_past_the_grace_period_and_exits_zero() {
    let _serial = serial();
    let bucket = Bucket::new();
    let db = database("sigterm", 10);
    let slow = slow_tools(60);
    let cfg = service_toml(
        "cnvrg/pg-storage",
        "PG_URL",
        "1h",
        5,
        &format!("tool_dir = \"{}\"", slow.path().display()),
    );
    let catalog = bucket.catalog("cnvrg-smart-backups");
    let mut a = Spec::new("a", &bucket.url, "c1")
        .config(cfg)
        .env("PG_URL", &pg().url(&db))
        .arg("--shutdown-grace")
        .arg("1s")
        .start();
    wait_until(
        Duration::from_secs(30),
        "the backup running",
        || {
            statefiles(&catalog)
                .iter()
                .any(|s| s.status == Status::Running)
        },
        || a.log_tail(40),
    );
    assert_eq!(a.metric("capsule_jobs_running"), 1.0);
    let started = std::time::Instant::now();
    let status = a.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", a.log_tail(40));
    assert!(started.elapsed() < Duration::from_secs(15));
    let all = statefiles(&catalog);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, Status::Failed, "{:#?}", all[0]);
    assert!(
        all[0].error.as_deref().unwrap().contains("cancelled"),
        "{:?}",
        all[0].error
    );
    let leases = block_on(catalog.store().list(".leases")).unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&block_on(catalog.store().get(&leases[0].key)).unwrap().bytes)
            .unwrap();
    assert_eq!(record["released"], true);
    let log = a.log();
    assert!(log.contains("grace period over"), "{log}");
}

/// A periodic backup that fails (a wrong password) is logged with its
/// backup id, so the operator reading the daemon's log finds its statefile.
#[test]
fn a_failed_periodic_backup_is_logged_with_its_id() {
    let _serial = serial();
    let bucket = Bucket::new();
    let db = database("failedlog", 5);
    let catalog = bucket.catalog("cnvrg-smart-backups");
    let mut a = Spec::new("a", &bucket.url, "c1")
        .config(service_toml("cnvrg/pg-storage", "PG_URL", "1h", 5, ""))
        .env("PG_URL", &pg().url_with_password(&db, "not-the-password"))
        .start();
    let mut failed = None;
    wait_until(
        Duration::from_secs(60),
        "a failed periodic backup",
        || {
            failed = statefiles(&catalog)
                .into_iter()
                .find(|s| s.status == Status::Failed);
            failed.is_some()
        },
        || a.log_tail(40),
    );
    let id = failed.unwrap().backup_id.to_string();
    wait_until(
        Duration::from_secs(10),
        "the daemon's warning",
        || a.log().contains("backup failed"),
        || a.log_tail(40),
    );
    assert!(a.terminate(Duration::from_secs(30)).success());
    let log = a.log();
    let line = log
        .lines()
        .find(|l| l.contains("backup failed"))
        .unwrap_or_else(|| panic!("no 'backup failed' line:\n{log}"));
    assert!(line.contains(&id), "the warning names {id}: {line}");
    assert!(line.contains("cnvrg/pg-storage"), "{line}");
    assert!(!line.contains("not-the-password"), "{line}");
}
