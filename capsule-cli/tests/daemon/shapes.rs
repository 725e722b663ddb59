//! The five deployment shapes of the legacy contract, each with real
//! daemons, PostgreSQL and SeaweedFS.

use std::collections::BTreeSet;
use std::time::Duration;

use capsule_core::{RequestType, RestoreStatus, Statefile, Status};
use serde_json::json;

use crate::support::*;

const PERIOD: &str = "2s";

fn finished_periodic(list: &[Statefile], cluster: &str) -> Vec<Statefile> {
    list.iter()
        .filter(|s| {
            s.request_type == RequestType::Periodic
                && s.status == Status::Finished
                && s.service.cluster.as_deref() == Some(cluster)
        })
        .cloned()
        .collect()
}

fn one_service(db_env: &str, db: &str, rotation: u32) -> (String, (String, String)) {
    (
        service_toml("cnvrg/pg-storage", db_env, PERIOD, rotation, ""),
        (db_env.to_string(), pg().url(db)),
    )
}

fn start(
    name: &str,
    store: &str,
    dst: &str,
    cluster: &str,
    toml: &str,
    env: &(String, String),
) -> Daemon {
    Spec::new(name, store, cluster)
        .dst_dir(dst)
        .config(toml.to_string())
        .env(&env.0, &env.1)
        .start()
}

#[test]
fn one_cluster_to_one_bucket() {
    let _serial = serial();
    let bucket = Bucket::new();
    let db = database("shape1", 30);
    let (toml, env) = one_service("PG_URL", &db, 3);
    let mut a = start("a", &bucket.url, "cnvrg-smart-backups", "c1", &toml, &env);
    let catalog = bucket.catalog("cnvrg-smart-backups");
    wait_until(
        Duration::from_secs(60),
        "two finished periodic backups",
        || finished_periodic(&statefiles(&catalog), "c1").len() >= 2,
        || a.log_tail(60),
    );
    let listed = a.get_json("/v1/backups?cluster=c1&status=finished");
    let listed = listed["backups"].as_array().unwrap();
    assert!(listed.len() >= 2);
    for b in listed {
        assert_eq!(b["cluster"], "c1");
        assert_eq!(b["service"], "cnvrg/pg-storage");
        assert_eq!(b["requestType"], "periodic");
        assert!(b["sizeBytes"].as_u64().unwrap() > 0);
    }
    let clusters = a.get_json("/v1/clusters");
    let c = &clusters["clusters"][0];
    assert_eq!(c["name"], "c1");
    assert!(c["services"][0]["lastGoodBackup"]["backupId"].is_string());
    let legacy = a.get_json("/v1/pg/backups");
    assert!(legacy["backups"].as_array().unwrap().len() >= 2);
    assert_eq!(legacy["backups"][0]["requestType"], "periodicbackuprequest");
    assert!(a.metric("capsule_backups_total") >= 2.0);
    assert!(
        a.get("/metrics")
            .body
            .contains("capsule_last_backup_success_timestamp_seconds{cluster=\"c1\"")
    );

    let status = a.terminate(Duration::from_secs(40));
    assert!(status.success(), "{status:?}\n{}", a.log_tail(30));
    // A clean stop leaves nothing running and its lease released.
    let all = statefiles(&catalog);
    assert!(all.iter().all(|s| s.status != Status::Running), "{all:#?}");
    let lease = block_on(catalog.store().list(".leases")).unwrap();
    assert_eq!(lease.len(), 1);
    let record: serde_json::Value =
        serde_json::from_slice(&block_on(catalog.store().get(&lease[0].key)).unwrap().bytes)
            .unwrap();
    assert_eq!(record["released"], true, "{record}");
    // Rotation 3 held throughout.
    assert!(finished_periodic(&all, "c1").len() <= 3);
}

#[test]
fn two_clusters_to_one_bucket_and_prefix() {
    let _serial = serial();
    let bucket = Bucket::new();
    let (db1, db2) = (database("shape2a", 10), database("shape2b", 20));
    let (t1, e1) = one_service("PG_URL", &db1, 2);
    let (t2, e2) = one_service("PG_URL", &db2, 2);
    let mut a = start("a", &bucket.url, "cnvrg-smart-backups", "c1", &t1, &e1);
    let mut b = start("b", &bucket.url, "cnvrg-smart-backups", "c2", &t2, &e2);
    let catalog = bucket.catalog("cnvrg-smart-backups");
    wait_until(
        Duration::from_secs(60),
        "three finished periodic backups per cluster (so rotation ran)",
        || {
            let all = statefiles(&catalog);
            a.metric("capsule_backups_total") >= 3.0
                && b.metric("capsule_backups_total") >= 3.0
                && !finished_periodic(&all, "c1").is_empty()
                && !finished_periodic(&all, "c2").is_empty()
        },
        || logs(&[&a, &b]),
    );
    // The API separates them.
    for (d, mine, other) in [(&a, "c1", "c2"), (&b, "c2", "c1")] {
        let list = d.get_json(&format!("/v1/backups?cluster={mine}"));
        let list = list["backups"].as_array().unwrap();
        assert!(!list.is_empty());
        assert!(list.iter().all(|x| x["cluster"] == mine));
        let names: BTreeSet<String> = d.get_json("/v1/clusters")["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert!(names.contains(mine) && names.contains(other), "{names:?}");
    }
    // Each rotates only its own: both keep backups, neither beyond rotation 2.
    // A backup's rotation runs just after it finishes, so count once both
    // have stopped cleanly (a clean stop lets the running job, rotation
    // included, finish); counting while they run can catch the moment
    // between the third backup and its rotation.
    for d in [&mut a, &mut b] {
        let status = d.terminate(Duration::from_secs(40));
        assert!(status.success(), "{status:?}\n{}", d.log_tail(30));
    }
    let all = statefiles(&catalog);
    for c in ["c1", "c2"] {
        let n = finished_periodic(&all, c).len();
        assert!((1..=2).contains(&n), "{c}: {n} finished periodic backups");
    }
    // Each backed up its own database.
    for s in &all {
        let want = if s.service.cluster.as_deref() == Some("c1") {
            &db1
        } else {
            &db2
        };
        assert_eq!(s.service.database.as_deref(), Some(want.as_str()));
    }
}

#[test]
fn two_clusters_to_one_bucket_in_two_dst_dirs() {
    let _serial = serial();
    let bucket = Bucket::new();
    let (db1, db2) = (database("shape3a", 10), database("shape3b", 10));
    let (t1, e1) = one_service("PG_URL", &db1, 2);
    let (t2, e2) = one_service("PG_URL", &db2, 2);
    let a = start("a", &bucket.url, "team-a/backups", "c1", &t1, &e1);
    let b = start("b", &bucket.url, "team-b/backups", "c2", &t2, &e2);
    let (ca, cb) = (
        bucket.catalog("team-a/backups"),
        bucket.catalog("team-b/backups"),
    );
    wait_until(
        Duration::from_secs(60),
        "a finished periodic backup in each dst-dir",
        || {
            !finished_periodic(&statefiles(&ca), "c1").is_empty()
                && !finished_periodic(&statefiles(&cb), "c2").is_empty()
        },
        || logs(&[&a, &b]),
    );
    assert!(
        statefiles(&ca)
            .iter()
            .all(|s| s.service.cluster.as_deref() == Some("c1"))
    );
    assert!(
        statefiles(&cb)
            .iter()
            .all(|s| s.service.cluster.as_deref() == Some("c2"))
    );
    for (d, mine) in [(&a, "c1"), (&b, "c2")] {
        let list = d.get_json("/v1/backups");
        let list = list["backups"].as_array().unwrap();
        assert!(!list.is_empty());
        assert!(list.iter().all(|x| x["cluster"] == mine), "{list:?}");
    }
}

#[test]
fn two_clusters_to_two_buckets() {
    let _serial = serial();
    let (b1, b2) = (Bucket::new(), Bucket::new());
    let (db1, db2) = (database("shape4a", 10), database("shape4b", 10));
    let (t1, e1) = one_service("PG_URL", &db1, 2);
    let (t2, e2) = one_service("PG_URL", &db2, 2);
    let a = start("a", &b1.url, "cnvrg-smart-backups", "c1", &t1, &e1);
    let b = start("b", &b2.url, "cnvrg-smart-backups", "c2", &t2, &e2);
    let (ca, cb) = (
        b1.catalog("cnvrg-smart-backups"),
        b2.catalog("cnvrg-smart-backups"),
    );
    wait_until(
        Duration::from_secs(60),
        "a finished periodic backup in each bucket",
        || {
            !finished_periodic(&statefiles(&ca), "c1").is_empty()
                && !finished_periodic(&statefiles(&cb), "c2").is_empty()
        },
        || logs(&[&a, &b]),
    );
    assert!(
        statefiles(&ca)
            .iter()
            .all(|s| s.service.cluster.as_deref() == Some("c1"))
    );
    assert!(
        statefiles(&cb)
            .iter()
            .all(|s| s.service.cluster.as_deref() == Some("c2"))
    );
    let clusters = a.get_json("/v1/clusters");
    assert_eq!(clusters["clusters"].as_array().unwrap().len(), 1);
    assert_eq!(clusters["clusters"][0]["name"], "c1");
}

/// Three capsules serve one cluster and bucket with a 2 s period for 100
/// ticks (200 ms each): no periodic backup is made twice, none overlaps
/// another, and every manual and restore request runs exactly once.
#[test]
fn three_capsules_one_cluster_and_bucket_for_100_ticks() {
    let _serial = serial();
    let bucket = Bucket::new();
    let db = database("shape5", 40);
    let (toml, env) = one_service("PG_URL", &db, 100);
    let mut daemons: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .map(|n| start(n, &bucket.url, "cnvrg-smart-backups", "c1", &toml, &env))
        .collect();
    let catalog = bucket.catalog("cnvrg-smart-backups");
    let all_logs = |ds: &[Daemon]| logs(&ds.iter().collect::<Vec<_>>());
    let started = std::time::Instant::now();
    let ticks = Duration::from_millis(200) * 100;

    let mut manual = Vec::new();
    let mut restored: Vec<(String, String)> = Vec::new(); // (backup, requestedAt)
    let mut step = 0;
    while started.elapsed() < ticks {
        std::thread::sleep(Duration::from_millis(1500));
        step += 1;
        let d = &daemons[step % 3];
        if step % 3 == 1 && manual.len() < 4 {
            let r = d.post(
                "/v1/backups",
                &json!({"serviceType": "postgresql", "service": "cnvrg/pg-storage", "description": format!("manual {step}")}),
            );
            assert_eq!(r.status, 201, "{}", r.body);
            let sf: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            manual.push(sf["backupId"].as_str().unwrap().to_string());
        }
        if step % 4 == 2 && restored.len() < 2 {
            let done = finished_periodic(&statefiles(&catalog), "c1");
            if let Some(target) = done.last() {
                let id = target.backup_id.to_string();
                let r = d.post(&format!("/v1/backups/{id}/restores"), &json!({}));
                assert_eq!(r.status, 202, "{}", r.body);
                let sf: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                let at = sf["restores"].as_array().unwrap().last().unwrap()["requestedAt"]
                    .as_str()
                    .unwrap()
                    .to_string();
                restored.push((id, at));
            }
        }
    }
    // Let the last requests run, then stop every capsule cleanly.
    wait_until(
        Duration::from_secs(60),
        "every request done",
        || {
            let all = by_id(&statefiles(&catalog));
            manual.iter().all(|id| all[id].status.is_terminal())
                && restored.iter().all(|(id, _)| {
                    all[id].restores.iter().all(|r| {
                        matches!(r.status, RestoreStatus::Finished | RestoreStatus::Failed)
                    })
                })
        },
        || all_logs(&daemons),
    );
    for d in daemons.iter_mut() {
        let s = d.terminate(Duration::from_secs(60));
        assert!(s.success(), "{} exited {s:?}", d.name);
    }
    let all = statefiles(&catalog);
    let logs_now = all_logs(&daemons);
    // Zero duplicate backups.
    let mut periodic: Vec<&Statefile> = all
        .iter()
        .filter(|s| s.request_type == RequestType::Periodic)
        .collect();
    periodic.sort_by_key(|s| s.requested_at);
    assert!(
        periodic.len() >= 5,
        "only {} periodic backups\n{logs_now}",
        periodic.len()
    );
    for s in &periodic {
        assert_eq!(s.status, Status::Finished, "{s:#?}\n{logs_now}");
    }
    for pair in periodic.windows(2) {
        let gap = pair[1].requested_at - pair[0].requested_at;
        assert!(
            gap >= chrono::Duration::seconds(2),
            "periodic backups {} and {} only {gap} apart",
            pair[0].backup_id,
            pair[1].backup_id
        );
        assert!(
            pair[1].requested_at >= pair[0].finished_at.unwrap(),
            "{} started before {} finished",
            pair[1].backup_id,
            pair[0].backup_id
        );
    }
    // Zero lost requests, each run once.
    let by = by_id(&all);
    assert_eq!(manual.len(), 4);
    for id in &manual {
        let s = &by[id];
        assert_eq!(s.status, Status::Finished, "{s:#?}");
        assert!(s.owner.is_some());
    }
    assert_eq!(
        restored.len(),
        2,
        "no finished backup to restore\n{logs_now}"
    );
    for (id, _) in &restored {
        for r in &by[id].restores {
            assert_eq!(r.status, RestoreStatus::Finished, "{r:#?}\n{logs_now}");
            assert!(r.owner.is_some() && r.finished_at.is_some());
        }
    }
    // Every backup any capsule ran is in the bucket, and none ran twice.
    let mut ran: Vec<String> = Vec::new();
    for d in &daemons {
        for line in d.log().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["message"] == "backup finished" && v["target"] == "capsule_daemon::jobs" {
                ran.push(v["backup"].as_str().unwrap().to_string());
            }
        }
    }
    let per_daemon: Vec<(String, usize)> = daemons
        .iter()
        .map(|d| {
            let n = d
                .log()
                .lines()
                .filter(|l| {
                    l.contains("\"message\":\"backup finished\"")
                        && l.contains("capsule_daemon::jobs")
                })
                .count();
            (d.name.clone(), n)
        })
        .collect();
    eprintln!(
        "3 capsules, 100 ticks: {} periodic + {} manual backups, {} restores; backups run per capsule: {per_daemon:?}",
        periodic.len(),
        manual.len(),
        restored.len()
    );
    let unique: BTreeSet<&String> = ran.iter().collect();
    assert_eq!(unique.len(), ran.len(), "a backup ran twice: {ran:?}");
    assert_eq!(
        ran.len(),
        periodic.len() + manual.len(),
        "{ran:?}\n{logs_now}"
    );
    assert_eq!(row_count(&db), 40);
}
