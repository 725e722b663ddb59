//! The capture paths and credentials: replication, the SCAN + DUMP
//! fallback (same digest), passwords, ACL users, TLS.

use capsule_core::{JobContext, NoProgress, RestoreOptions, run_restore};
use capsule_engines::{RedisCapture, RedisEngine, RedisOptions};
use test_support::redis::{Redis, RedisConfig};

use super::support::*;

/// Backs `source_url` up with `engine`, restores into a fresh server and
/// returns the restored server and the statefile's engine details.
async fn round_trip(engine: &RedisEngine) -> (Redis, serde_json::Value) {
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, engine).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    let target = Redis::start();
    let restore = RedisEngine::new(RedisOptions::from_url(&target.url()).unwrap());
    let ctx = JobContext::new(&NoProgress);
    run_restore(&fc.catalog, &restore, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap();
    (target, fc.statefile_json(&id)["engine"]["details"].clone())
}

#[tokio::test]
async fn an_acl_user_without_psync_falls_back_to_scan_and_dump() {
    let redis = Redis::start_with(RedisConfig::default().with_user(
        "backup",
        "b4ckup-pw",
        "+@all -psync -sync",
    ));
    fill_every_type(&redis);
    let url = format!("redis://backup:b4ckup-pw@127.0.0.1:{}", redis.port);
    let (target, details) = round_trip(&engine(&url)).await;
    assert_eq!(details["capture"], "scan-dump");
    assert_eq!(details["pointInTime"], false);
    assert!(
        details["fallbackReason"]
            .as_str()
            .unwrap()
            .contains("NOPERM"),
        "{details}"
    );
    assert_eq!(target.digest(), redis.digest());
    assert_eq!(target.keyspace(), redis.keyspace());
}

/// The fallback cannot capture function libraries the user may not dump:
/// the backup fails saying so, rather than finish without them; where the
/// server holds none, the refusal costs nothing.
#[tokio::test]
async fn a_fallback_refused_function_dump_fails_only_where_libraries_exist() {
    let redis = Redis::start_with(RedisConfig::default().with_user(
        "backup",
        "b4ckup-pw",
        "+@all -psync -sync -function|dump",
    ));
    fill_every_type(&redis);
    let url = format!("redis://backup:b4ckup-pw@127.0.0.1:{}", redis.port);
    let fc = FileCatalog::new();
    let err = backup(&fc.catalog, &engine(&url)).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("FUNCTION DUMP"), "{msg}");
    assert!(msg.contains("NOPERM"), "{msg}");
    assert!(msg.contains("holds 1 function libraries"), "{msg}");
    assert!(msg.contains("+function|dump"), "{msg}");
    assert!(!msg.contains("b4ckup-pw"), "{msg}");

    redis.cmd(&[b"FUNCTION", b"FLUSH"]);
    let (target, details) = round_trip(&engine(&url)).await;
    assert_eq!(details["capture"], "scan-dump");
    assert_eq!(target.digest(), redis.digest());
}

/// On Redis 7 a renamed or disabled FUNCTION answers `ERR unknown
/// command`, as a server before 7 does: the library count tells them
/// apart, so the libraries are not lost either way.
#[tokio::test]
async fn a_fallback_with_function_renamed_fails_only_where_libraries_exist() {
    let redis = Redis::start_with(
        RedisConfig::default().with_args(
            &[
                &NO_REPLICATION[..],
                &["--rename-command", "FUNCTION", "capsule-test-fn"],
            ]
            .concat(),
        ),
    );
    let lib = b"#!lua name=renamedlib\nredis.register_function('f1', function() return 1 end)";
    assert_eq!(
        redis.cmd(&[b"capsule-test-fn", b"LOAD", lib]).text(),
        "renamedlib"
    );
    redis.cmd(&[b"SET", b"k", b"v"]);
    let fc = FileCatalog::new();
    let msg = backup(&fc.catalog, &engine(&redis.url()))
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("ERR unknown command"), "{msg}");
    assert!(msg.contains("holds 1 function libraries"), "{msg}");
    assert!(msg.contains("renamed or disabled"), "{msg}");

    redis.cmd(&[b"capsule-test-fn", b"FLUSH"]);
    let (target, details) = round_trip(&engine(&redis.url())).await;
    assert_eq!(details["capture"], "scan-dump");
    assert_eq!(target.digest(), redis.digest());
}

/// Server arguments that disable replication (as managed services do).
const NO_REPLICATION: [&str; 6] = [
    "--rename-command",
    "PSYNC",
    "",
    "--rename-command",
    "SYNC",
    "",
];

#[tokio::test]
async fn a_renamed_psync_falls_back_and_forced_scan_gives_the_same_digest() {
    let redis = Redis::start_with(RedisConfig::default().with_args(&NO_REPLICATION));
    fill_every_type(&redis);
    let (target, details) = round_trip(&engine(&redis.url())).await;
    assert_eq!(details["capture"], "scan-dump");
    assert_eq!(target.digest(), redis.digest());

    let plain = Redis::start();
    fill_every_type(&plain);
    let forced = RedisEngine::new(
        RedisOptions::from_url(&plain.url())
            .unwrap()
            .with_capture(RedisCapture::Scan)
            .with_scan_count(7),
    );
    let (target, details) = round_trip(&forced).await;
    assert_eq!(details["capture"], "scan-dump");
    assert!(details.get("fallbackReason").is_none());
    assert_eq!(target.digest(), plain.digest());

    // Without libraries, FUNCTION DUMP answers with a footer only.
    plain.cmd(&[b"FUNCTION", b"FLUSH"]);
    let (target, details) = round_trip(&forced).await;
    assert_eq!(details["capture"], "scan-dump");
    assert_eq!(target.digest(), plain.digest());
    assert_eq!(
        target.cmd(&[b"FUNCTION", b"LIST"]),
        plain.cmd(&[b"FUNCTION", b"LIST"])
    );
}

/// A waiting replica gets keep-alive newlines: before `+FULLRESYNC` while
/// the server waits out `repl-diskless-sync-delay` (5 s by default), and
/// before `$<length>` while the BGSAVE of a disk transfer runs. Neither may
/// turn the capture into a fallback.
#[tokio::test]
async fn keep_alive_newlines_before_the_transfer_are_skipped() {
    for (args, framing) in [
        (&["--repl-diskless-sync-delay", "2"][..], "diskless"),
        // 20 keys at 100 ms each: a BGSAVE of 2 s.
        (
            &[
                "--repl-diskless-sync",
                "no",
                "--rdb-key-save-delay",
                "100000",
            ][..],
            "disk",
        ),
    ] {
        let redis = Redis::start_with(RedisConfig::default().with_args(args));
        let mut c = redis.client();
        for i in 0..20 {
            c.cmd(&[b"SET", format!("key:{i}").as_bytes(), b"value"]);
        }
        let engine = RedisEngine::new(
            RedisOptions::from_url(&redis.url())
                .unwrap()
                .with_capture(RedisCapture::Replication),
        );
        let (target, details) = round_trip(&engine).await;
        assert_eq!(details["capture"], "replication", "{args:?}");
        assert_eq!(details["framing"], framing, "{args:?}");
        assert_eq!(target.digest(), redis.digest(), "{args:?}");
        assert_eq!(target.keyspace(), vec![(0, 20)], "{args:?}");
    }
}

#[tokio::test]
async fn replication_only_fails_clearly_when_refused() {
    let redis =
        Redis::start_with(RedisConfig::default().with_args(&["--rename-command", "PSYNC", ""]));
    let engine = RedisEngine::new(
        RedisOptions::from_url(&redis.url())
            .unwrap()
            .with_capture(RedisCapture::Replication),
    );
    let fc = FileCatalog::new();
    let e = backup(&fc.catalog, &engine).await.unwrap_err().to_string();
    assert!(e.contains("replication") && e.contains("PSYNC"), "{e}");
}

#[tokio::test]
async fn passwords_and_acl_users_authenticate() {
    let redis = Redis::start_with(
        RedisConfig::default()
            .with_password("d3fault-Pw")
            .with_user("ops", "0ps-Pw", "+@all"),
    );
    fill_every_type(&redis);
    let (target, details) = round_trip(&engine(&redis.url())).await;
    assert_eq!(details["capture"], "replication");
    assert_eq!(target.digest(), redis.digest());
    let url = format!("redis://ops:0ps-Pw@127.0.0.1:{}/0", redis.port);
    let (target, details) = round_trip(&engine(&url)).await;
    assert_eq!(details["capture"], "replication");
    assert_eq!(target.digest(), redis.digest());
}

#[tokio::test]
async fn a_wrong_password_fails_clearly_without_showing_it() {
    let redis = Redis::start_with(RedisConfig::default().with_password("r1ght-Pw"));
    let fc = FileCatalog::new();
    for url in [
        format!("redis://:wr0ng-Pw-123@127.0.0.1:{}", redis.port),
        format!("redis://nobody:wr0ng-Pw-123@127.0.0.1:{}", redis.port),
    ] {
        let engine = engine(&url);
        assert!(!engine.to_string().contains("wr0ng"), "{engine}");
        let e = backup(&fc.catalog, &engine).await.unwrap_err().to_string();
        assert!(
            e.contains("authentication") && e.contains("WRONGPASS"),
            "{e}"
        );
        assert!(!e.contains("wr0ng-Pw-123"), "{e}");
    }
    let e = backup(
        &fc.catalog,
        &engine(&format!("redis://127.0.0.1:{}", redis.port)),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("NOAUTH"), "{e}");
    // Every attempt is recorded as failed, without the password.
    for entry in std::fs::read_dir(fc.dir.path().join(PREFIX)).unwrap() {
        let id = entry.unwrap().file_name().into_string().unwrap();
        let sf = fc.statefile_json(&id);
        assert_eq!(sf["status"], "failed");
        assert!(!sf.to_string().contains("wr0ng"), "{sf}");
    }
}

#[tokio::test]
async fn tls_with_a_private_authority() {
    let redis = Redis::start_with(RedisConfig::default().with_tls());
    fill_every_type(&redis);
    let engine = engine(&redis.tls_url());
    assert!(engine.options().connection.tls);
    let (target, details) = round_trip(&engine).await;
    assert_eq!(details["capture"], "replication");
    assert_eq!(target.digest(), redis.digest());
    // Without the authority, the system roots do not trust it.
    let untrusted = format!("rediss://127.0.0.1:{}", redis.tls_port.unwrap());
    let fc = FileCatalog::new();
    let e = backup(&fc.catalog, &super::support::engine(&untrusted))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("TLS"), "{e}");
}
