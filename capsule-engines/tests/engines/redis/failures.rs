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
use capsule_engines::{RedisEngine, RedisOptions};
use test_support::redis::{Redis, RedisConfig};

use super::support::*;

#[tokio::test]
async fn a_corrupt_byte_is_refused_naming_the_object_before_any_write() {
    let redis = Redis::start();
    fill_every_type(&redis);
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&redis.url())).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    let path = fc.object_path(&id, "dump.rdb.zst");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let target = Redis::start();
    target.cmd(&[b"SET", b"sentinel", b"untouched"]);
    let engine = RedisEngine::new(
        RedisOptions::from_url(&target.url())
            .unwrap()
            .with_flush(true),
    );
    let ctx = JobContext::new(&NoProgress);
    let e = run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("dump.rdb.zst") && msg.contains(&id), "{msg}");
    assert_eq!(target.cmd(&[b"GET", b"sentinel"]).text(), "untouched");
    assert_eq!(target.keyspace(), vec![(0, 1)]);
    assert_eq!(fc.statefile_json(&id)["restores"][0]["status"], "failed");
}

#[tokio::test]
async fn a_capture_cut_short_fails_and_stores_nothing() {
    let redis = Redis::start_with(RedisConfig::default().with_args(&[
        // Throttle the fork's output so the transfer lasts long enough to cut.
        "--rdb-key-save-delay",
        "200",
    ]));
    let mut c = redis.client();
    for i in 0..20_000 {
        c.send(&[b"SET", format!("k{i}").as_bytes(), b"some value"]);
    }
    c.flush();
    for _ in 0..20_000 {
        c.read();
    }
    let fc = FileCatalog::new();
    let engine = engine(&redis.url());
    let killer = tokio::task::spawn_blocking({
        let port = redis.port;
        move || {
            let mut c = test_support::redis::RedisClient::connect(port, None).unwrap();
            for _ in 0..600 {
                std::thread::sleep(Duration::from_millis(50));
                if c.cmd(&[b"CLIENT", b"KILL", b"TYPE", b"replica"]).text() != "0" {
                    return true;
                }
            }
            false
        }
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
    let entries: Vec<_> = std::fs::read_dir(fc.dir.path().join(PREFIX))
        .unwrap()
        .collect();
    assert_eq!(entries.len(), 1);
    let id = entries[0]
        .as_ref()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
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
