//! Rotation over real periods.

use std::collections::BTreeMap;
use std::time::Duration;

use capsule_core::{RequestType, RestoreStatus, Status};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::support::*;

/// Rotation 2 over 6+ periods leaves exactly the 2 newest finished
/// periodic backups, plus every manual one.
#[test]
fn rotation_keeps_the_two_newest_periodic_and_every_manual_backup() {
    let _serial = serial();
    let bucket = Bucket::new();
    let db = database("rotation", 10);
    let catalog = bucket.catalog("cnvrg-smart-backups");
    let mut a = Spec::new("a", &bucket.url, "c1")
        .config(service_toml("cnvrg/pg-storage", "PG_URL", "2s", 2, ""))
        .env("PG_URL", &pg().url(&db))
        .start();
    let mut manual = Vec::new();
    for i in 0..2 {
        let r = a.post(
            "/v1/backups",
            &json!({"serviceType": "postgresql", "service": "cnvrg/pg-storage", "description": format!("keep me {i}")}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        manual.push(v["backupId"].as_str().unwrap().to_string());
    }
    // Every finished periodic backup ever seen, with its time.
    let mut seen: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    wait_until(
        Duration::from_secs(90),
        "six finished periodic backups and four rotated away",
        || {
            for s in statefiles(&catalog) {
                if s.request_type == RequestType::Periodic && s.status == Status::Finished {
                    seen.insert(s.backup_id.to_string(), s.requested_at);
                }
            }
            seen.len() >= 6 && a.metric("capsule_backups_rotated_total") >= 4.0
        },
        || a.log_tail(60),
    );
    let status = a.terminate(Duration::from_secs(60));
    assert!(status.success());
    let all = statefiles(&catalog);
    for s in &all {
        if s.request_type == RequestType::Periodic && s.status == Status::Finished {
            seen.insert(s.backup_id.to_string(), s.requested_at);
        }
    }
    let kept: Vec<&capsule_core::Statefile> = all
        .iter()
        .filter(|s| s.request_type == RequestType::Periodic)
        .collect();
    assert_eq!(kept.len(), 2, "{kept:#?}");
    assert!(kept.iter().all(|s| s.status == Status::Finished));
    let mut newest: Vec<(&DateTime<Utc>, &String)> = seen.iter().map(|(k, v)| (v, k)).collect();
    newest.sort();
    let newest_two: Vec<&String> = newest.iter().rev().take(2).map(|(_, k)| *k).collect();
    for s in &kept {
        assert!(
            newest_two.contains(&&s.backup_id.to_string()),
            "{} is not among the newest",
            s.backup_id
        );
    }
    for id in &manual {
        let s = all
            .iter()
            .find(|s| s.backup_id.as_str() == id)
            .expect("manual backup kept");
        assert_eq!(s.status, Status::Finished);
        assert_eq!(s.request_type, RequestType::Manual);
    }
    assert_eq!(all.len(), 4);
}

/// A restore requested while the next periodic backup runs (and holds the
/// service) keeps the backup it reads through that backup's rotation, and
/// runs once the service is free: rotation 1 would otherwise delete it
/// first, and the accepted request would never run.
#[test]
fn a_backup_with_a_pending_restore_survives_rotation_and_is_restored() {
    let _serial = serial();
    let bucket = Bucket::new();
    let db = database("rotation_restore", 30);
    let slow = slow_tools(4);
    let catalog = bucket.catalog("cnvrg-smart-backups");
    let tools = format!("tool_dir = \"{}\"", slow.path().display());
    let a = Spec::new("a", &bucket.url, "c1")
        .config(service_toml("cnvrg/pg-storage", "PG_URL", "2s", 1, &tools))
        .env("PG_URL", &pg().url(&db))
        .start();
    let mut first = None;
    wait_until(
        Duration::from_secs(60),
        "a finished periodic backup, and the next one running",
        || {
            let all = statefiles(&catalog);
            let running = all.iter().any(|s| s.status == Status::Running);
            first = all
                .iter()
                .find(|s| s.status == Status::Finished)
                .filter(|_| running)
                .map(|s| s.backup_id.to_string());
            first.is_some()
        },
        || a.log_tail(40),
    );
    let id = first.unwrap();
    pg().psql(&db, "DELETE FROM public.items WHERE id <= 10");
    assert_eq!(row_count(&db), 20);
    let r = a.post(&format!("/v1/backups/{id}/restores"), &json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    // Kept until the restore ended (a later rotation may delete it then).
    let mut ended = None;
    wait_until(
        Duration::from_secs(90),
        "the restore to end",
        || {
            ended = by_id(&statefiles(&catalog)).remove(&id).filter(|sf| {
                sf.restores
                    .iter()
                    .any(|r| matches!(r.status, RestoreStatus::Finished | RestoreStatus::Failed))
            });
            ended.is_some()
        },
        || a.log_tail(40),
    );
    let sf = ended.unwrap();
    assert_eq!(sf.restores[0].status, RestoreStatus::Finished, "{sf:#?}");
    assert_eq!(row_count(&db), 30);
}
