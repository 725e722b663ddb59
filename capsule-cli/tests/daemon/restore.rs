//! Restore requests executed by the watcher.

use std::time::Duration;

use capsule_core::{RestoreStatus, Status};
use serde_json::json;

use crate::support::*;

/// A restore requested through the API, and one through `capsule pg
/// --restore` without connection settings, are run by the watcher and
/// recorded in the statefile.
#[test]
fn restores_requested_through_the_api_and_the_cli_are_executed_and_recorded() {
    let _serial = serial();
    let bucket = Bucket::new();
    let db = database("restore", 50);
    let catalog = bucket.catalog("cnvrg-smart-backups");
    let a = Spec::new("a", &bucket.url, "c1")
        .config(service_toml("cnvrg/pg-storage", "PG_URL", "1h", 5, ""))
        .env("PG_URL", &pg().url(&db))
        .start();
    wait_for_periodic_backup(&catalog, &a);
    let id = statefiles(&catalog)[0].backup_id.to_string();
    let restores_done = |n: usize| {
        let sf = by_id(&statefiles(&catalog)).remove(&id).unwrap();
        sf.restores.len() == n
            && sf
                .restores
                .iter()
                .all(|r| matches!(r.status, RestoreStatus::Finished | RestoreStatus::Failed))
    };

    // 1. Through the API.
    pg().psql(
        &db,
        "INSERT INTO public.items (name) SELECT 'extra' FROM generate_series(1, 25)",
    );
    assert_eq!(row_count(&db), 75);
    let r = a.post(&format!("/v1/backups/{id}/restores"), &json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    wait_until(
        Duration::from_secs(60),
        "the API restore",
        || restores_done(1),
        || a.log_tail(40),
    );
    assert_eq!(row_count(&db), 50);

    // 2. Through the CLI, without connection settings: queued for the daemon.
    pg().psql(&db, "DELETE FROM public.items WHERE id <= 10");
    let (code, out, err) = cli(
        &bucket.url,
        "cnvrg-smart-backups",
        &["pg", "--restore", "--id", &id, "-y"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("requested"), "{out}");
    wait_until(
        Duration::from_secs(60),
        "the CLI restore",
        || restores_done(2),
        || a.log_tail(40),
    );
    assert_eq!(row_count(&db), 50);

    let sf = by_id(&statefiles(&catalog)).remove(&id).unwrap();
    for r in &sf.restores {
        assert_eq!(r.status, RestoreStatus::Finished, "{r:#?}");
        assert!(r.owner.is_some() && r.started_at.is_some() && r.finished_at.is_some());
        assert_eq!(r.mode.as_deref(), Some("safe-swap"));
        assert!(
            r.target.as_deref().unwrap().ends_with(&format!("/{db}")),
            "{r:?}"
        );
    }
    assert_eq!(a.metric("capsule_restores_total"), 2.0);
    let listed = a.get_json("/v1/backups?service=cnvrg/pg-storage&cluster=c1");
    let b = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backupId"] == id.as_str())
        .unwrap();
    assert_eq!(b["restores"], 2);
    assert_eq!(b["lastRestoreStatus"], "finished");
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A legacy (`v1alpha1`) backup: `capsule pg --restore` appends the legacy
/// `restorerequest` entry; the watcher restores it and records the outcome
/// in the legacy format.
#[test]
fn a_legacy_restorerequest_is_executed_and_recorded_in_the_legacy_format() {
    const LEGACY_ID: &str = "postgresql-9nVJ8sGmQbXc3RkHzW2tLp";
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&test_support::fixtures::legacy_bucket_dir(), dir.path());
    let store = file_store(dir.path());
    let db = database("legacy", 0);
    let a = Spec::new("a", &store, "c1")
        .config(service_toml("cnvrg/pg-storage", "PG_URL", "1h", 5, ""))
        .env("PG_URL", &pg().url(&db))
        .start();
    let (code, out, err) = cli(
        &store,
        "cnvrg-smart-backups",
        &["pg", "--restore", "--id", LEGACY_ID, "-y"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let statefile = dir
        .path()
        .join("cnvrg-smart-backups")
        .join(LEGACY_ID)
        .join("statefile.json");
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&statefile).unwrap()).unwrap()
    };
    assert_eq!(
        read()["restores"].as_array().unwrap().last().unwrap()["status"],
        "restorerequest"
    );
    wait_until(
        Duration::from_secs(90),
        "the legacy restore",
        || read()["restores"].as_array().unwrap().last().unwrap()["status"] != "restorerequest",
        || a.log_tail(40),
    );
    let json = read();
    assert_eq!(json["statefileVersion"], "v1alpha1", "kept its format");
    let restores = json["restores"].as_array().unwrap();
    assert_eq!(restores.len(), 2);
    assert_eq!(
        restores[1]["status"],
        "finished",
        "{json}\n{}",
        a.log_tail(40)
    );
    assert_eq!(pg().psql(&db, "SELECT count(*) FROM public.users"), "500");
    assert_eq!(
        pg().psql(&db, "SELECT count(*) FROM public.experiments"),
        "20000"
    );
}

/// One daemon serving PostgreSQL and Redis backs both up on their periods
/// and restores the Redis backup on request.
#[test]
fn one_daemon_serves_postgresql_and_redis() {
    let _serial = serial();
    let redis = test_support::redis::Redis::start();
    for (k, v) in [("user:1", "ada"), ("user:2", "grace"), ("counter", "41")] {
        redis.cmd(&[b"SET", k.as_bytes(), v.as_bytes()]);
    }
    let digest = redis.digest();
    let bucket = Bucket::new();
    let db = database("mixed", 5);
    let config = format!(
        "{}[[service]]\nname = \"cnvrg/redis-storage\"\ntype = \"redis\"\nurl_env = \"REDIS_URL\"\nperiod = \"1h\"\nrotation = 3\n",
        service_toml("cnvrg/pg-storage", "PG_URL", "1h", 3, "")
    );
    let a = Spec::new("a", &bucket.url, "c1")
        .config(config)
        .env("PG_URL", &pg().url(&db))
        .env("REDIS_URL", &redis.url())
        .start();
    let catalog = bucket.catalog("cnvrg-smart-backups");
    wait_until(
        Duration::from_secs(60),
        "a finished backup of each service",
        || {
            let all = statefiles(&catalog);
            ["postgresql", "redis"].iter().all(|t| {
                all.iter()
                    .any(|s| s.service_type.as_str() == *t && s.status == Status::Finished)
            })
        },
        || a.log_tail(40),
    );
    let rb = statefiles(&catalog)
        .into_iter()
        .find(|s| s.service_type.as_str() == "redis")
        .unwrap();
    assert_eq!(
        rb.service.qualified_name().as_deref(),
        Some("cnvrg/redis-storage")
    );
    assert_eq!(rb.service.cluster.as_deref(), Some("c1"));
    let legacy = a.get_json("/v1/redis/backups");
    assert_eq!(legacy["backups"].as_array().unwrap().len(), 1);

    redis.cmd(&[b"SET", b"counter", b"9999"]);
    assert_ne!(redis.digest(), digest);
    let id = rb.backup_id.to_string();
    let r = a.post(&format!("/v1/backups/{id}/restores"), &json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    wait_until(
        Duration::from_secs(60),
        "the Redis restore",
        || {
            by_id(&statefiles(&catalog))[&id]
                .restores
                .iter()
                .all(|r| matches!(r.status, RestoreStatus::Finished | RestoreStatus::Failed))
        },
        || a.log_tail(40),
    );
    let sf = &by_id(&statefiles(&catalog))[&id];
    assert_eq!(
        sf.restores[0].status,
        RestoreStatus::Finished,
        "{:#?}",
        sf.restores
    );
    assert_eq!(redis.digest(), digest, "the data came back");
}
