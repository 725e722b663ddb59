//! Backup, FLUSHALL, restore: the server's `DEBUG DIGEST` is unchanged.

use capsule_core::{JobContext, NoProgress, RestoreOptions, RestoreReport, run_restore};
use capsule_engines::{RedisEngine, RedisOptions};
use capsule_store::Store;
use test_support::redis::{Redis, RedisConfig};
use test_support::seaweedfs::SeaweedFs;

use super::support::*;

const SAMPLE_KEYS: [&[u8]; 8] = [
    b"str:raw",
    b"list:big",
    b"list:plain",
    b"set:big",
    b"zset:small",
    b"hash:big",
    b"stream",
    b"bin:\x00\r\n\xff key",
];

/// Empties `redis` and restores backup `id` of `fc` into it with `engine`.
async fn wipe_and_restore(
    redis: &Redis,
    fc: &FileCatalog,
    engine: &RedisEngine,
    id: &str,
) -> RestoreReport {
    wipe(redis);
    let ctx = JobContext::new(&NoProgress);
    run_restore(&fc.catalog, engine, id, RestoreOptions::default(), &ctx)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_type_and_encoding_survives_backup_flushall_and_restore() {
    let redis = Redis::start();
    fill_every_type(&redis);
    let digest = redis.digest();
    let values = digest_values(&redis, &SAMPLE_KEYS);
    let keyspace = redis.keyspace();
    let pttl = redis
        .cmd(&[b"PTTL", b"str:raw"])
        .text()
        .parse::<i64>()
        .unwrap();

    let fc = FileCatalog::new();
    let engine = engine(&redis.url());
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let sf = &report.statefile;
    let id = sf.backup_id.to_string();
    assert_eq!(sf.artifacts[0].name, "dump.rdb.zst");
    assert_eq!(sf.artifacts[0].format, "rdb");
    let info = sf.engine.as_ref().unwrap();
    assert_eq!(info.details["capture"], "replication");
    assert_eq!(info.details["framing"], "diskless");
    assert_eq!(info.details["rdbVersion"], 10);
    assert_eq!(info.details["rdbChecksumVerified"], true);
    assert_eq!(info.details["functionLibraries"], 1);
    assert_eq!(info.details["keysByType"]["stream"], 2);
    let counts = &info.fingerprint.as_ref().unwrap().counts;
    let want: std::collections::BTreeMap<String, u64> = keyspace
        .iter()
        .map(|(db, n)| (format!("db{db}"), *n))
        .collect();
    assert_eq!(counts, &want);
    assert_eq!(
        info.server_version
            .as_deref()
            .map(|v| v.starts_with("Redis 7.")),
        Some(true)
    );

    let restored = wipe_and_restore(&redis, &fc, &engine, &id).await;
    assert_eq!(restored.outcome.mode, "replace");
    assert_eq!(redis.digest(), digest);
    // Strings went as SET (every encoding: int, short, raw, LZF, binary,
    // empty, one with an expiry), those of db 0 without an expiry in one
    // MSET; the other keys as RESTORE.
    let strings = info.details["keysByType"]["string"].as_u64().unwrap();
    let keys: u64 = keyspace.iter().map(|(_, n)| n).sum();
    assert!(strings >= 8, "{strings} strings");
    assert_eq!(redis.calls("mset"), 1);
    assert_eq!(
        redis.calls("set"),
        6,
        "the probe; str:short, str:raw and db5:ttl (expiries); the lone strings of db 1 and 15"
    );
    assert_eq!(redis.calls("restore"), keys - strings);
    assert_eq!(digest_values(&redis, &SAMPLE_KEYS), values);
    assert_eq!(redis.keyspace(), keyspace);
    let after = redis
        .cmd(&[b"PTTL", b"str:raw"])
        .text()
        .parse::<i64>()
        .unwrap();
    assert!((after - pttl).abs() < 60_000, "{pttl} → {after}");
    assert_eq!(redis.cmd(&[b"FCALL", b"capsule_answer", b"0"]).text(), "42");
    let sf = fc.statefile_json(&id);
    assert_eq!(sf["restores"][0]["status"], "finished");
    assert_eq!(
        sf["restores"][0]["target"],
        format!("127.0.0.1:{}", redis.port)
    );
}

/// `repl-diskless-sync no`: the server writes the RDB to its disk and sends
/// it framed `$<length>`, not `$EOF:<mark>`.
#[tokio::test]
async fn a_disk_based_transfer_round_trips() {
    let redis =
        Redis::start_with(RedisConfig::default().with_args(&["--repl-diskless-sync", "no"]));
    fill_every_type(&redis);
    let digest = redis.digest();
    let keyspace = redis.keyspace();

    let fc = FileCatalog::new();
    let engine = engine(&redis.url());
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let info = report.statefile.engine.as_ref().unwrap();
    assert_eq!(info.details["capture"], "replication");
    assert_eq!(info.details["framing"], "disk");
    assert_eq!(info.details["rdbChecksumVerified"], true);
    let id = report.statefile.backup_id.to_string();

    wipe_and_restore(&redis, &fc, &engine, &id).await;
    assert_eq!(redis.digest(), digest);
    assert_eq!(redis.keyspace(), keyspace);
}

#[tokio::test]
async fn restores_into_another_server_through_seaweedfs() {
    let source = Redis::start();
    fill_every_type(&source);
    let s3 = SeaweedFs::shared();
    s3.create_bucket("engines-redis");
    let store = Store::from_url(&s3.s3_url_with_credentials("engines-redis"))
        .unwrap()
        .with_prefix(PREFIX)
        .unwrap();
    let catalog = capsule_core::Catalog::new(store);
    let report = backup(&catalog, &engine(&source.url())).await.unwrap();
    let id = report.statefile.backup_id.to_string();

    let target = Redis::start();
    target.cmd(&[b"SET", b"stray", b"key"]);
    let engine = RedisEngine::new(
        RedisOptions::from_url(&target.url())
            .unwrap()
            .with_flush(true),
    );
    let report = engine
        .restore_with_report(&catalog.artifact_source(&id).await.unwrap())
        .await
        .unwrap();
    assert_eq!(report.mode, "flush");
    assert_eq!(report.functions, 1);
    assert_eq!(target.digest(), source.digest());
    let fp = report.fingerprint.unwrap();
    let recorded = report_fingerprint(&catalog, &id).await;
    assert_eq!(fp.compare(&recorded), Vec::<String>::new());
}

async fn report_fingerprint(
    catalog: &capsule_core::Catalog,
    id: &str,
) -> capsule_core::Fingerprint {
    catalog
        .describe(id)
        .await
        .unwrap()
        .engine
        .unwrap()
        .fingerprint
        .unwrap()
}

#[tokio::test]
async fn a_value_of_64_mib_round_trips() {
    let redis =
        Redis::start_with(RedisConfig::default().with_args(&["--proto-max-bulk-len", "1gb"]));
    let mut c = redis.client();
    // 65 MiB of incompressible bytes, appended in 1 MiB pieces.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..65 {
        let piece: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        c.send(&[b"APPEND", b"big", &piece]);
        c.send(&[b"RPUSH", b"biglist", &piece[..64 * 1024]]);
    }
    c.flush();
    for _ in 0..130 {
        c.read();
    }
    assert_eq!(
        c.cmd(&[b"STRLEN", b"big"]).text(),
        (65u64 << 20).to_string()
    );
    let digest = redis.digest();
    // A DUMP payload is the value's encoding (type byte included) plus the
    // RDB version (2 bytes) and a CRC-64 (8).
    let dumped = c.cmd(&[b"DUMP", b"big"]).bytes().unwrap().len() as u64;

    let fc = FileCatalog::new();
    let engine = engine(&redis.url());
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    // What a restore by commands checks against its limit before writing.
    assert_eq!(
        fc.statefile_json(&id)["engine"]["details"]["largestValueBytes"],
        dumped - 10
    );
    wipe_and_restore(&redis, &fc, &engine, &id).await;
    assert_eq!(redis.digest(), digest);
}

#[tokio::test]
async fn a_download_is_a_dump_rdb_that_redis_server_loads() {
    let redis = Redis::start();
    fill_every_type(&redis);
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&redis.url())).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    let dir = tempfile::tempdir().unwrap();
    let files = fc
        .catalog
        .download(&id, dir.path(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path.file_name().unwrap(), "dump.rdb");
    let loaded = Redis::start_with(RedisConfig::default().with_rdb(&files[0].path));
    assert_eq!(loaded.digest(), redis.digest());
    assert_eq!(loaded.keyspace(), redis.keyspace());
}

/// An ACL user that may SET but not MSET gets a SET per string: the probe
/// (MSET queued in a discarded transaction) finds MSET refused.
#[tokio::test]
async fn a_user_without_mset_restores_strings_with_set() {
    let (source, fc, id) = every_type_backup().await;
    let digest = source.digest();
    let strings = fc.statefile_json(&id)["engine"]["details"]["keysByType"]["string"]
        .as_u64()
        .unwrap();
    let target = Redis::start_with(RedisConfig::default().with_user(
        "restorer",
        "r3store-pw",
        "+@all -mset",
    ));
    let url = format!("redis://restorer:r3store-pw@127.0.0.1:{}", target.port);
    wipe_and_restore(&target, &fc, &engine(&url), &id).await;
    assert_eq!(target.digest(), digest);
    assert_eq!(target.calls("mset"), 0);
    assert_eq!(
        target.calls("set"),
        strings + 1,
        "one per string, and the probe"
    );
    assert!(strings > 10_000, "{strings} strings");
    // The same backup into a target that allows MSET: far fewer commands.
    let open = Redis::start();
    wipe_and_restore(&open, &fc, &engine(&open.url()), &id).await;
    assert_eq!(open.digest(), digest);
    let (set, mset) = (open.calls("set"), open.calls("mset"));
    assert!(
        mset > 0 && set + mset < strings / 10,
        "{set} SET, {mset} MSET"
    );
}

/// An ACL user that may RESTORE but not SET still restores every key: the
/// probe before the stream finds SET refused, and strings go as RESTORE.
#[tokio::test]
async fn a_user_without_set_restores_strings_with_restore() {
    let source = Redis::start();
    fill_every_type(&source);
    let digest = source.digest();
    let fc = FileCatalog::new();
    let id = backup(&fc.catalog, &engine(&source.url()))
        .await
        .unwrap()
        .statefile
        .backup_id
        .to_string();
    let target =
        Redis::start_with(RedisConfig::default().with_user("restorer", "r3store-pw", "+@all -set"));
    let url = format!("redis://restorer:r3store-pw@127.0.0.1:{}", target.port);
    wipe_and_restore(&target, &fc, &engine(&url), &id).await;
    assert_eq!(target.digest(), digest);
    let keys: u64 = target.keyspace().iter().map(|(_, n)| n).sum();
    assert_eq!(target.calls("set"), 0, "the probes were refused");
    assert_eq!(target.calls("restore"), keys);
}
