//! Damage and interruptions: a corrupt artifact is refused before
//! anything is written, a cut capture never stores a backup, an RDB newer
//! than the target is refused before anything is written.

use std::time::Duration;

use async_trait::async_trait;
use capsule_core::{
    ArtifactSink, ArtifactSource, ArtifactSpec, BackupOptions, Capabilities, Engine, EngineInfo,
    Error, Fingerprint, JobContext, NoProgress, RestoreOptions, RestoreOutcome, ServiceIdentity,
    ServiceType, run_backup, run_restore,
};
use capsule_engines::redis::rdb::{RdbWriter, Value};
use capsule_engines::{RedisCapture, RedisEngine, RedisLoad, RedisOptions};
use test_support::redis::{Redis, RedisConfig};

use super::support::*;

#[tokio::test]
async fn a_corrupt_byte_is_refused_naming_the_object_before_any_write() {
    // An RDB of about 2 MB of incompressible values: zstd stores them as
    // raw blocks, where a flipped byte decodes without error and only the
    // checksums find it.
    let (_source, fc, id) = every_type_backup().await;
    let path = fc.object_path(&id, "dump.rdb.zst");
    let good = std::fs::read(&path).unwrap();

    let target = Redis::start();
    target.cmd(&[b"SET", b"sentinel", b"untouched"]);
    let ctx = JobContext::new(&NoProgress);
    // By replication (--flush), by commands after FLUSHALL, and by
    // commands keeping other keys (which verifies while the stream
    // starts); a byte in the middle, and one near the end, after most of
    // the RDB would have streamed.
    for (flush, load) in [
        (true, RedisLoad::Auto),
        (true, RedisLoad::Commands),
        (false, RedisLoad::Auto),
    ] {
        for at in [good.len() / 2, good.len() - 64] {
            let mut bytes = good.clone();
            bytes[at] ^= 0x01;
            std::fs::write(&path, bytes).unwrap();
            let engine = RedisEngine::new(
                RedisOptions::from_url(&target.url())
                    .unwrap()
                    .with_flush(flush)
                    .with_load(load),
            );
            let e = run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains("dump.rdb.zst") && msg.contains(&id), "{msg}");
            assert!(!msg.contains("may hold part"), "{msg}");
            assert_eq!(target.cmd(&[b"GET", b"sentinel"]).text(), "untouched");
            assert_eq!(target.keyspace(), vec![(0, 1)], "flush {flush}, {load:?}");
        }
    }
    assert_eq!(fc.statefile_json(&id)["restores"][0]["status"], "failed");
}

/// A server with 20,000 keys whose fork writes them at 200 µs each: a
/// transfer of 4 s, long enough to cut or freeze.
fn slow_source() -> Redis {
    let redis =
        Redis::start_with(RedisConfig::default().with_args(&["--rdb-key-save-delay", "200"]));
    set_keys(&redis, 20_000, b"some value");
    redis
}

/// The id of the one backup in `fc`'s store.
fn only_backup(fc: &FileCatalog) -> String {
    let entries: Vec<_> = std::fs::read_dir(fc.dir.path().join(PREFIX))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries[0].clone()
}

#[tokio::test]
async fn a_capture_cut_short_fails_and_stores_nothing() {
    let redis = slow_source();
    let fc = FileCatalog::new();
    let engine = engine(&redis.url());
    let port = redis.port;
    let killer = tokio::task::spawn_blocking(move || {
        wait_until(port, |c| {
            c.cmd(&[b"CLIENT", b"KILL", b"TYPE", b"replica"]).text() != "0"
        })
    });
    let result = backup(&fc.catalog, &engine).await;
    assert!(
        killer.await.unwrap(),
        "the replica connection was never seen"
    );
    let e = result.unwrap_err().to_string();
    assert!(
        e.contains("closed the replication link") || e.contains("closed the connection"),
        "{e}"
    );
    let id = only_backup(&fc);
    let sf = fc.statefile_json(&id);
    assert_eq!(sf["status"], "failed");
    assert!(!fc.object_path(&id, "dump.rdb.zst").exists());
}

/// An engine that stores a hand-made RDB of `version` (as a backup of a
/// newer Redis would be).
struct NewerRdb {
    version: u32,
}

impl std::fmt::Display for NewerRdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "newer-rdb")
    }
}

#[async_trait]
impl Engine for NewerRdb {
    fn service_type(&self) -> ServiceType {
        ServiceType::Redis
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn identity(&self) -> ServiceIdentity {
        ServiceIdentity::default()
    }
    async fn backup(
        &self,
        sink: &mut dyn ArtifactSink,
        _ctx: &JobContext<'_>,
    ) -> capsule_core::Result<EngineInfo> {
        let mut w = RdbWriter::new(self.version);
        w.select_db(0);
        w.entry(b"k", None, &Value::String(b"v".to_vec()).encode());
        w.finish();
        let bytes = w.take();
        sink.put(
            ArtifactSpec::new("dump.rdb", "rdb"),
            Box::new(std::io::Cursor::new(bytes)),
        )
        .await?;
        Ok(EngineInfo {
            fingerprint: Some(Fingerprint {
                counts: [("db0".to_string(), 1)].into(),
                values: Default::default(),
            }),
            ..EngineInfo::default()
        })
    }
    async fn restore(
        &self,
        _s: &dyn ArtifactSource,
        _ctx: &JobContext<'_>,
    ) -> capsule_core::Result<RestoreOutcome> {
        unimplemented!()
    }
    async fn fingerprint(&self, _ctx: &JobContext<'_>) -> capsule_core::Result<Fingerprint> {
        unimplemented!()
    }
}

#[tokio::test]
async fn an_rdb_newer_than_the_target_is_refused_before_any_write() {
    let fc = FileCatalog::new();
    let ctx = JobContext::new(&NoProgress);
    let report = run_backup(
        &fc.catalog,
        &NewerRdb { version: 11 },
        BackupOptions::default(),
        &ctx,
    )
    .await
    .unwrap();
    let id = report.statefile.backup_id.to_string();
    let target = Redis::start();
    target.cmd(&[b"SET", b"sentinel", b"untouched"]);
    let engine = RedisEngine::new(
        RedisOptions::from_url(&target.url())
            .unwrap()
            .with_flush(true),
    );
    let e = run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("RDB version 11") && msg.contains("up to 10"),
        "{msg}"
    );
    assert_eq!(target.keyspace(), vec![(0, 1)]);

    // The same RDB at the target's version restores.
    let report = run_backup(
        &fc.catalog,
        &NewerRdb { version: 10 },
        BackupOptions::default(),
        &ctx,
    )
    .await
    .unwrap();
    let id = report.statefile.backup_id.to_string();
    run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap();
    assert_eq!(target.cmd(&[b"GET", b"k"]).text(), "v");
    assert_eq!(target.keyspace(), vec![(0, 1)]);
}

/// A restore that fails after it began to write says what it left on the
/// target: in the default mode, keys of the backup may have replaced
/// theirs, and no other key was touched. Found by the fault-injection
/// suite (capsule-cli/tests/faults): a network cut mid-restore failed with
/// only "reading RESTORE replies: the server closed the connection",
/// which did not tell the user their server had changed.
#[tokio::test]
async fn a_restore_failing_after_it_began_to_write_says_the_target_was_touched() {
    let redis = Redis::start();
    let mut c = redis.client();
    for i in 0..2000 {
        c.send(&[b"SET", format!("k{i}").as_bytes(), b"v"]);
    }
    // Not compressible: the RDB keeps it at its size.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let big: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    c.send(&[b"SET", b"big", &big]);
    c.flush();
    for _ in 0..2001 {
        c.read();
    }
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&redis.url())).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    // As a backup made before capsule recorded its largest value (which
    // would refuse the restore up front): the value larger than the
    // restore accepts stops it part-way.
    let path = fc.dir.path().join(PREFIX).join(&id).join("statefile.json");
    let mut sf: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let details = sf["engine"]["details"].as_object_mut().unwrap();
    assert!(details.remove("largestValueBytes").is_some());
    std::fs::write(&path, serde_json::to_vec(&sf).unwrap()).unwrap();

    let target = Redis::start();
    target.cmd(&[b"SET", b"sentinel", b"untouched"]);
    let engine = RedisEngine::new(
        RedisOptions::from_url(&target.url())
            .unwrap()
            .with_max_value_bytes(1024),
    );
    let ctx = JobContext::new(&NoProgress);
    let msg = run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("may hold part of the backup") && msg.contains("no other key was touched"),
        "{msg}"
    );
    assert_eq!(target.cmd(&[b"GET", b"sentinel"]).text(), "untouched");
    let recorded = fc.statefile_json(&id)["restores"][0]["error"].clone();
    assert!(
        recorded
            .as_str()
            .unwrap()
            .contains("may hold part of the backup"),
        "{recorded}"
    );

    // Refused before the first write (a corrupt artifact, a newer RDB):
    // nothing to say about the target.
    let path = fc.object_path(&id, "dump.rdb.zst");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let msg = run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(!msg.contains("may hold part"), "{msg}");
}

/// A URL pointing at a server that accepts connections and never answers
/// (not a Redis, a stuck proxy) fails within the connect timeout, saying
/// so, instead of hanging the job.
#[tokio::test]
async fn a_server_that_never_answers_fails_in_time() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let _held: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(30));
    });
    let mut options = RedisOptions::from_url(&format!("redis://127.0.0.1:{port}")).unwrap();
    options.connection.connect_timeout = Duration::from_secs(1);
    let fc = FileCatalog::new();
    let started = std::time::Instant::now();
    let e = backup(&fc.catalog, &RedisEngine::new(options))
        .await
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(10), "{e}");
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && e.contains("does not speak Redis"),
        "{e}"
    );
}

/// A server's refusal of an `MSET` names the command, how many keys it
/// carried and the first of them: here an ACL user whose key pattern
/// admits capsule's probe but not the backup's keys.
#[tokio::test]
async fn a_refused_mset_is_named_with_its_first_key() {
    let redis = Redis::start();
    set_keys(&redis, 300, b"v");
    let fc = FileCatalog::new();
    let id = backup_id(&fc, &redis).await;
    let target = Redis::start_with(RedisConfig::default().with_user(
        "restorer",
        "r3store-pw",
        "+@all resetkeys ~capsule:*",
    ));
    let url = format!("redis://restorer:r3store-pw@127.0.0.1:{}", target.port);
    let msg = engine(&url)
        .restore_with_report(&fc.catalog.artifact_source(&id).await.unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("MSET of ") && msg.contains(" keys from \"k") && msg.contains("NOPERM"),
        "{msg}"
    );
    assert!(!msg.contains("r3store-pw"), "{msg}");
    assert_eq!(target.keyspace(), Vec::new());
}

/// Waits (blocking, polling the server at `port`) until `ready` says so;
/// false after 30 s.
fn wait_until(port: u16, ready: impl Fn(&mut test_support::redis::RedisClient) -> bool) -> bool {
    let mut c = test_support::redis::RedisClient::connect(port, None).unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if ready(&mut c) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Runs `job` (for at most 60 s), freezing `server` ([`Redis::process`]'s
/// `freeze`) once `ready` holds and `settle` more has passed; `what` names
/// the moment waited for. The server runs again before this returns; the
/// outer error is the 60 s running out.
async fn frozen_during<T>(
    server: &Redis,
    what: &str,
    ready: impl Fn(&mut test_support::redis::RedisClient) -> bool + Send + 'static,
    settle: Duration,
    job: impl std::future::Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    let port = server.port;
    let freeze = async {
        let reached = tokio::task::spawn_blocking(move || wait_until(port, ready));
        assert!(reached.await.unwrap(), "{what}");
        tokio::time::sleep(settle).await;
        server.process().freeze()
    };
    let (result, frozen) = tokio::join!(tokio::time::timeout(Duration::from_secs(60), job), freeze);
    drop(frozen);
    result
}

/// `options` with a one-second idle timeout.
fn impatient(mut options: RedisOptions) -> RedisEngine {
    options.connection = options.connection.with_idle_timeout(Duration::from_secs(1));
    RedisEngine::new(options)
}

/// A source that stops answering in the middle of the RDB (frozen: alive,
/// the link open, no reset) fails the capture once the idle timeout has
/// passed: the backup is recorded failed with nothing stored, instead of
/// running (and holding the schedule) for ever.
#[tokio::test]
async fn a_source_silent_mid_capture_fails_the_backup() {
    let redis = slow_source();
    let fc = FileCatalog::new();
    let engine = impatient(RedisOptions::from_url(&redis.url()).unwrap());
    let port = redis.port;
    // capsule is a replica, and the RDB (4 s of it) has been streaming for
    // half a second.
    let result = frozen_during(
        &redis,
        "the capture never started",
        |c| {
            !c.cmd(&[b"CLIENT", b"LIST", b"TYPE", b"replica"])
                .text()
                .is_empty()
        },
        Duration::from_millis(500),
        backup(&fc.catalog, &engine),
    )
    .await;
    let e = failed_silently(result, port, &fc);
    // Mid-RDB: the pipeline's read of the payload failed.
    assert!(e.contains("reading the source failed"), "{e}");
}

/// Checks that a capture from the server at `port` ended on the idle
/// timeout (not the test's), recorded failed with nothing stored in `fc`;
/// returns the error's text.
fn failed_silently(
    result: Result<capsule_core::Result<capsule_core::BackupReport>, tokio::time::error::Elapsed>,
    port: u16,
    fc: &FileCatalog,
) -> String {
    let e = result
        .expect("the idle timeout, not the test's, ends the capture")
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("redis 127.0.0.1:{port}")), "{e}");
    assert!(e.contains("nothing received for 1 s"), "{e}");
    let id = only_backup(fc);
    assert_eq!(fc.statefile_json(&id)["status"], "failed");
    assert!(!fc.object_path(&id, "dump.rdb.zst").exists());
    e
}

/// The same by SCAN + DUMP (the fallback where replication is refused):
/// a source frozen once the DUMPs have begun fails the capture on the idle
/// timeout, recorded failed with nothing stored.
#[tokio::test]
async fn a_source_silent_mid_scan_fails_the_backup() {
    let redis = Redis::start();
    redis.cmd(&[b"DEBUG", b"POPULATE", b"300000", b"key", b"100"]);
    let fc = FileCatalog::new();
    let engine = impatient(
        RedisOptions::from_url(&redis.url())
            .unwrap()
            .with_capture(RedisCapture::Scan),
    );
    let port = redis.port;
    let result = frozen_during(
        &redis,
        "the SCAN capture never started",
        |c| {
            c.cmd(&[b"INFO", b"commandstats"])
                .text()
                .contains("cmdstat_dump:")
        },
        Duration::ZERO,
        backup(&fc.catalog, &engine),
    )
    .await;
    failed_silently(result, port, &fc);
}

/// A target that stops answering in the middle of a restore by commands
/// fails the restore once the idle timeout has passed, saying what the
/// target may hold.
#[tokio::test]
async fn a_target_silent_mid_restore_fails_it() {
    let source = Redis::start();
    source.cmd(&[b"DEBUG", b"POPULATE", b"300000", b"key", b"100"]);
    let fc = FileCatalog::new();
    let id = backup_id(&fc, &source).await;
    let target = Redis::start();
    target.cmd(&[b"SET", b"sentinel", b"untouched"]);
    let engine = impatient(
        RedisOptions::from_url(&target.url())
            .unwrap()
            .with_flush(true)
            .with_load(RedisLoad::Commands),
    );
    let ctx = JobContext::new(&NoProgress);
    // Flushed, and the first keys in: commands are in flight.
    let result = frozen_during(
        &target,
        "the restore never started",
        |c| c.cmd(&[b"EXISTS", b"sentinel"]).text() == "0" && c.cmd(&[b"DBSIZE"]).text() != "0",
        Duration::ZERO,
        run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx),
    )
    .await;
    let e = result
        .expect("the idle timeout, not the test's, ends the restore")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nothing received for 1 s"), "{e}");
    assert!(
        e.contains("was emptied (FLUSHALL) and may hold part of the backup"),
        "{e}"
    );
    let restored: u64 = target.cmd(&[b"DBSIZE"]).text().parse().unwrap();
    assert!(restored > 0 && restored < 300_000, "{restored}");
    assert_eq!(fc.statefile_json(&id)["restores"][0]["status"], "failed");
}
