//! Restore behaviour: replace vs flush, expired keys, drills.

use std::time::Duration;

use capsule_core::{JobContext, NoProgress, VerificationStatus, run_verify};
use capsule_engines::{RedisConnection, RedisEngine, RedisLoad, RedisOptions};
use test_support::redis::Redis;

use super::support::*;

#[tokio::test]
async fn without_flush_only_the_backups_keys_are_replaced() {
    let source = Redis::start();
    source.cmd(&[b"SET", b"shared", b"from-backup"]);
    source.cmd(&[b"RPUSH", b"list", b"a", b"b"]);
    let fc = FileCatalog::new();
    let id = backup_id(&fc, &source).await;
    let src = fc.catalog.artifact_source(&id).await.unwrap();

    let target = Redis::start();
    target.cmd(&[b"SET", b"shared", b"old"]);
    target.cmd(&[b"SET", b"other", b"stays"]);
    let report = engine(&target.url())
        .restore_with_report(&src)
        .await
        .unwrap();
    assert_eq!(report.mode, "replace");
    assert!(report.fingerprint.is_none());
    assert_eq!(target.cmd(&[b"GET", b"shared"]).text(), "from-backup");
    assert_eq!(target.cmd(&[b"GET", b"other"]).text(), "stays");
    assert_eq!(target.cmd(&[b"LLEN", b"list"]).text(), "2");

    let flush = RedisEngine::new(
        RedisOptions::from_url(&target.url())
            .unwrap()
            .with_flush(true),
    );
    flush.restore_with_report(&src).await.unwrap();
    assert_eq!(target.cmd(&[b"EXISTS", b"other"]).text(), "0");
    assert_eq!(target.digest(), source.digest());
}

#[tokio::test]
async fn keys_expired_by_now_are_skipped_and_counted() {
    let source = Redis::start();
    source.cmd(&[b"SET", b"lasting", b"v"]);
    source.cmd(&[b"SET", b"brief", b"v", b"PX", b"1500"]);
    let fc = FileCatalog::new();
    let id = backup_id(&fc, &source).await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let recorded = fc
        .catalog
        .describe(&id)
        .await
        .unwrap()
        .engine
        .unwrap()
        .fingerprint
        .unwrap();
    for load in [RedisLoad::Commands, RedisLoad::Replication] {
        let target = Redis::start();
        let engine = RedisEngine::new(
            RedisOptions::from_url(&target.url())
                .unwrap()
                .with_flush(true)
                .with_load(load),
        );
        let report = engine
            .restore_with_report(&fc.catalog.artifact_source(&id).await.unwrap())
            .await
            .unwrap();
        assert_eq!(report.load, load.as_str(), "{load:?}");
        assert_eq!(report.restored["db0"], 1, "{load:?}");
        assert_eq!(report.skipped_expired["db0"], 1, "{load:?}");
        assert_eq!(target.cmd(&[b"GET", b"lasting"]).text(), "v");
        assert_eq!(target.cmd(&[b"EXISTS", b"brief"]).text(), "0", "{load:?}");
        assert_eq!(target.keyspace(), vec![(0, 1)], "{load:?}");
        // The count still agrees with the fingerprint: skipped keys are counted.
        assert_eq!(
            recorded.compare(report.fingerprint.as_ref().unwrap()),
            Vec::<String>::new(),
            "{load:?}"
        );
    }
}

#[tokio::test]
async fn drills_pass_on_a_started_server_and_on_a_given_scratch_server() {
    let source = Redis::start();
    fill_every_type(&source);
    let fc = FileCatalog::new();
    let id = backup_id(&fc, &source).await;
    let ctx = JobContext::new(&NoProgress);

    let own = engine(&source.url());
    let report = run_verify(&fc.catalog, &own, &id, &ctx).await.unwrap();
    assert!(report.compared);
    assert_eq!(report.verification.status, VerificationStatus::Passed);
    assert!(
        report
            .verification
            .target
            .as_deref()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let scratch = Redis::start();
    let with_scratch = RedisEngine::new(
        RedisOptions::from_url(&source.url())
            .unwrap()
            .with_verify_connection(RedisConnection::from_url(&scratch.url()).unwrap()),
    );
    let report = run_verify(&fc.catalog, &with_scratch, &id, &ctx)
        .await
        .unwrap();
    assert_eq!(report.verification.status, VerificationStatus::Passed);
    assert_eq!(
        report.verification.target.as_deref(),
        Some(format!("127.0.0.1:{}", scratch.port).as_str())
    );
    assert_eq!(
        scratch.keyspace(),
        vec![],
        "the scratch server is flushed after the drill"
    );
    let sf = fc.statefile_json(&id);
    assert_eq!(sf["verifications"].as_array().unwrap().len(), 2);

    // Options for drills only (no server backed up) drill the same way,
    // and refuse to back up or restore.
    let drill_only = RedisEngine::new(RedisOptions::drill_only(Some(
        RedisConnection::from_url(&scratch.url()).unwrap(),
    )));
    let report = run_verify(&fc.catalog, &drill_only, &id, &ctx)
        .await
        .unwrap();
    assert_eq!(report.verification.status, VerificationStatus::Passed);
    let e = backup(&fc.catalog, &drill_only).await.unwrap_err();
    assert!(e.to_string().contains("restore drills only"), "{e}");
    assert_eq!(scratch.keyspace(), vec![]);
}

/// A drill empties its scratch server: one that holds keys (a production
/// URL given as the scratch server) is refused and left as it is.
#[tokio::test]
async fn a_scratch_server_holding_keys_is_refused_untouched() {
    let source = Redis::start();
    fill_every_type(&source);
    let fc = FileCatalog::new();
    let id = backup_id(&fc, &source).await;
    let ctx = JobContext::new(&NoProgress);
    let digest = source.digest();
    let keyspace = source.keyspace();

    let onto_source = RedisEngine::new(RedisOptions::drill_only(Some(
        RedisConnection::from_url(&source.url()).unwrap(),
    )));
    let e = run_verify(&fc.catalog, &onto_source, &id, &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("scratch server 127.0.0.1:{} holds", source.port))
            && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(source.digest(), digest);
    assert_eq!(source.keyspace(), keyspace);
}

/// Cancelled (Ctrl-C) through the core: the restore stops and says what
/// the target may hold, a restore by commands and a load by replication
/// alike; the target is left a writable primary.
#[tokio::test]
async fn a_cancelled_restore_says_what_the_target_may_hold() {
    let (_source, fc, id) = every_type_backup().await;
    let target = Redis::start();
    for (flush, says) in [
        (false, "keys it holds may have been replaced"),
        (true, "may have been emptied"),
    ] {
        let engine = RedisEngine::new(
            RedisOptions::from_url(&target.url())
                .unwrap()
                .with_flush(flush),
        );
        let ctx = JobContext::new(&NoProgress);
        ctx.cancel.cancel();
        let e = capsule_core::run_restore(
            &fc.catalog,
            &engine,
            &id,
            capsule_core::RestoreOptions::default(),
            &ctx,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, capsule_core::Error::Cancelled(_)), "{e:?}");
        assert!(
            e.to_string().contains(says) && e.to_string().contains("run the restore again"),
            "{e}"
        );
        let info = target.cmd(&[b"INFO", b"replication"]).text();
        assert!(info.contains("role:master"), "{info}");
    }
}
