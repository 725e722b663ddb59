//! run_backup with a scripted engine: the statefile as the commit point.

use std::fmt;
use std::io;
use std::time::Duration;

use async_trait::async_trait;
use capsule_core::{
    ArtifactSink, ArtifactSource, ArtifactSpec, BackupId, BackupOptions, Capabilities, Catalog,
    Engine, EngineInfo, Error, Fingerprint, JobContext, ListFilter, NoProgress, RestoreOutcome,
    Result, ServiceIdentity, ServiceType, Status, run_backup,
};
use tokio::io::AsyncReadExt;

use crate::{pipeline::data, stores};

/// Produces `len` bytes, then fails if `fail` is set; can hang forever.
struct ScriptedEngine {
    len: usize,
    fail: bool,
    hang: bool,
    /// What `Engine::zstd_level` answers.
    level: Option<i32>,
}

impl ScriptedEngine {
    /// Produces `len` bytes and succeeds.
    fn producing(len: usize) -> Self {
        ScriptedEngine {
            len,
            fail: false,
            hang: false,
            level: None,
        }
    }
}

/// `run_backup` with default options and no progress.
async fn backup_with(
    catalog: &Catalog,
    engine: &ScriptedEngine,
) -> Result<capsule_core::BackupReport> {
    run_backup(
        catalog,
        engine,
        BackupOptions::default(),
        &JobContext::new(&NoProgress),
    )
    .await
}

impl fmt::Display for ScriptedEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scripted(test)")
    }
}

#[async_trait]
impl Engine for ScriptedEngine {
    fn service_type(&self) -> ServiceType {
        ServiceType::Redis
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn zstd_level(&self) -> Option<i32> {
        self.level
    }
    fn identity(&self) -> ServiceIdentity {
        ServiceIdentity {
            name: Some("scripted".into()),
            ..Default::default()
        }
    }
    async fn backup(
        &self,
        sink: &mut dyn ArtifactSink,
        _ctx: &JobContext<'_>,
    ) -> Result<EngineInfo> {
        let bytes = data(self.len, 11);
        if self.hang {
            let (w, r) = tokio::io::duplex(1024);
            let _keep = w;
            sink.put(ArtifactSpec::new("dump.rdb", "rdb"), Box::new(r))
                .await?;
            unreachable!();
        }
        let reader: capsule_core::ByteStream = if self.fail {
            Box::new(tokio::io::AsyncReadExt::chain(
                std::io::Cursor::new(bytes),
                FailAfter,
            ))
        } else {
            Box::new(std::io::Cursor::new(bytes))
        };
        sink.put(
            ArtifactSpec::new("dump.rdb", "rdb").with_tool_version("test 1"),
            reader,
        )
        .await?;
        let mut fp = Fingerprint::default();
        fp.counts.insert("db0".into(), 42);
        Ok(EngineInfo {
            fingerprint: Some(fp),
            ..Default::default()
        })
    }
    async fn restore(&self, _: &dyn ArtifactSource, _: &JobContext<'_>) -> Result<RestoreOutcome> {
        Err(Error::Unsupported("scripted".into()))
    }
    async fn fingerprint(&self, _: &JobContext<'_>) -> Result<Fingerprint> {
        Ok(Fingerprint::default())
    }
}

struct FailAfter;
impl tokio::io::AsyncRead for FailAfter {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Err(io::Error::other("redis connection reset")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_backup_records_checksums_and_restores_byte_for_byte() {
    for (name, ts) in stores::all() {
        let catalog = Catalog::new(ts.store.clone());
        let engine = ScriptedEngine::producing(6 * 1024 * 1024);
        let report = run_backup(
            &catalog,
            &engine,
            BackupOptions::default().with_description("t"),
            &JobContext::new(&NoProgress),
        )
        .await
        .unwrap();
        let sf = report.statefile;
        assert_eq!(sf.status, Status::Finished, "{name}");
        assert_eq!(sf.artifacts.len(), 1);
        let a = &sf.artifacts[0];
        assert_eq!(a.name, "dump.rdb.zst");
        assert_eq!(a.raw_size_bytes, Some(6 * 1024 * 1024));
        assert!(a.sha256.is_some() && a.size_bytes.is_some());
        assert_eq!(
            sf.engine
                .as_ref()
                .unwrap()
                .fingerprint
                .as_ref()
                .unwrap()
                .counts["db0"],
            42
        );

        // Read it back through the restore source: identical bytes.
        let source = catalog
            .artifact_source(sf.backup_id.as_str())
            .await
            .unwrap();
        source.verify("dump.rdb.zst").await.unwrap();
        let mut out = Vec::new();
        source
            .open("dump.rdb.zst")
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert!(out == data(6 * 1024 * 1024, 11), "{name}");

        // And the stored statefile agrees.
        let stored = catalog.load(sf.backup_id.as_str()).await.unwrap().statefile;
        assert_eq!(stored, sf);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_engine_leaves_a_failed_statefile() {
    for (name, ts) in stores::all() {
        let catalog = Catalog::new(ts.store.clone());
        let engine = ScriptedEngine {
            len: 2 * 1024 * 1024,
            fail: true,
            hang: false,
            level: None,
        };
        let err = backup_with(&catalog, &engine).await.unwrap_err();
        assert!(
            err.to_string().contains("redis connection reset"),
            "{name}: {err}"
        );
        let list = catalog.list(&ListFilter::default()).await.unwrap();
        assert_eq!(list.len(), 1);
        let sf = list[0].statefile.as_ref().unwrap();
        assert_eq!(sf.status, Status::Failed, "{name}");
        assert!(
            sf.error
                .as_ref()
                .unwrap()
                .contains("redis connection reset")
        );
        assert!(sf.artifacts.is_empty(), "{name}: no artifact recorded");
        let objects = ts.store.list(&format!("{}/", sf.backup_id)).await.unwrap();
        assert_eq!(objects.len(), 1, "{name}: only the statefile: {objects:?}");
    }
}

/// An id chosen by the caller (the daemon logs a failure with it) is the
/// backup's; one of another service type is refused before anything is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_takes_the_id_its_caller_chose() {
    let ts = stores::memory();
    let catalog = Catalog::new(ts.store.clone());
    let ctx = JobContext::new(&NoProgress);
    let mut failing = ScriptedEngine::producing(1000);
    failing.fail = true;
    let id = BackupId::generate(ServiceType::Redis);
    let options = BackupOptions::default().with_id(id.clone());
    run_backup(&catalog, &failing, options, &ctx)
        .await
        .unwrap_err();
    let sf = catalog.load(id.as_str()).await.unwrap().statefile;
    assert_eq!(sf.backup_id, id);
    assert_eq!(sf.status, Status::Failed);

    let pg_id = BackupId::generate(ServiceType::Postgresql);
    let options = BackupOptions::default().with_id(pg_id.clone());
    let err = run_backup(&catalog, &ScriptedEngine::producing(10), options, &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(pg_id.as_str()) && err.contains("redis"),
        "{err}"
    );
    let list = catalog.list(&ListFilter::default()).await.unwrap();
    assert_eq!(list.len(), 1, "nothing written for the refused id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_backup_never_says_finished() {
    let ts = stores::file();
    let catalog = Catalog::new(ts.store.clone());
    let engine = ScriptedEngine {
        len: 0,
        fail: false,
        hang: true,
        level: None,
    };
    let opts = BackupOptions::default().with_heartbeat(Duration::from_millis(100));
    // The process "dies": the future is dropped mid-stream.
    let r = tokio::time::timeout(Duration::from_millis(700), async {
        run_backup(&catalog, &engine, opts, &JobContext::new(&NoProgress)).await
    })
    .await;
    assert!(r.is_err(), "still running at the timeout");
    let list = catalog.list(&ListFilter::default()).await.unwrap();
    let sf = list[0].statefile.as_ref().unwrap();
    assert_eq!(sf.status, Status::Running);
    let owner = sf.owner.as_ref().unwrap();
    assert!(
        owner.heartbeat_at > sf.requested_at,
        "heartbeat was renewed"
    );

    // Not deleted under a live owner; the refusal says when a dead owner's
    // backup can go, and once its heartbeat is 5 min old, it goes.
    let id = sf.backup_id.to_string();
    let e = catalog.delete(&id).await.unwrap_err().to_string();
    assert!(
        e.contains("is running") && e.contains("no heartbeat for 5 min") && e.contains(", in "),
        "{e}"
    );
    let key = format!("{id}/statefile.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&ts.store.get(&key).await.unwrap().bytes).unwrap();
    let stale = chrono::Utc::now() - chrono::Duration::minutes(6);
    json["owner"]["heartbeatAt"] = serde_json::json!(stale);
    ts.store
        .put(&key, serde_json::to_vec(&json).unwrap().into())
        .await
        .unwrap();
    catalog.delete(&id).await.unwrap();

    // Cancellation marks it failed.
    let ctx = JobContext::new(&NoProgress);
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let err = run_backup(&catalog, &engine, BackupOptions::default(), &ctx)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled(_)), "{err}");
    let failed = catalog
        .list(&ListFilter::default().with_status("failed"))
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
}

/// The window log a zstd frame declares (its `Window_Descriptor`), which
/// zstd derives from the compression level: 19 for level 1, 21 for level 3.
fn window_log(frame: &[u8]) -> u8 {
    assert_eq!(frame[..4], [0x28, 0xB5, 0x2F, 0xFD], "a zstd frame");
    assert_eq!(
        frame[4] & 0x20,
        0,
        "not single-segment: a window descriptor follows"
    );
    10 + (frame[5] >> 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_zstd_level_applies_unless_the_options_name_one() {
    let ts = stores::memory();
    let catalog = Catalog::new(ts.store.clone());
    let cases = [
        (None, None, 21),       // neither: the pipeline default, level 3
        (Some(1), None, 19),    // the engine's level
        (Some(1), Some(3), 21), // the options win
    ];
    for (engine_level, options_level, want) in cases {
        let engine = ScriptedEngine {
            len: 4 * 1024 * 1024,
            fail: false,
            hang: false,
            level: engine_level,
        };
        let mut pipeline = capsule_core::pipeline::PipelineOptions::default();
        if let Some(l) = options_level {
            pipeline = pipeline.with_zstd_level(l);
        }
        let report = run_backup(
            &catalog,
            &engine,
            BackupOptions::default().with_pipeline(pipeline),
            &JobContext::new(&NoProgress),
        )
        .await
        .unwrap();
        let key = format!("{}/dump.rdb.zst", report.statefile.backup_id);
        let stored = ts.store.get_range(&key, 0..16).await.unwrap();
        assert_eq!(
            window_log(&stored),
            want,
            "engine level {engine_level:?}, options level {options_level:?}"
        );
    }
}

/// Signals on the first bytes written.
struct FirstBytes(tokio::sync::Notify);

impl capsule_core::Progress for FirstBytes {
    fn advance(&self, _: u64) {
        self.0.notify_one();
    }
}

/// A download stopped part way (ctrl-c drops its future) leaves no partial
/// file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_stopped_part_way_leaves_no_partial_file() {
    let ts = stores::memory();
    let catalog = Catalog::new(ts.store.clone());
    let engine = ScriptedEngine::producing(64 * 1024 * 1024);
    let report = backup_with(&catalog, &engine).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    let dir = tempfile::tempdir().unwrap();
    let progress = FirstBytes(tokio::sync::Notify::new());
    tokio::select! {
        r = catalog.download(&id, dir.path(), &progress) => panic!("finished first: {r:?}"),
        () = progress.0.notified() => {}
    }
    let left: Vec<String> = std::fs::read_dir(dir.path().join(&id))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A restore reads an artifact through `ArtifactSource::open`; when that
/// stream fails, the typed error travels inside its I/O error, so an
/// engine tells a corrupt artifact (condemns the backup) from a broken
/// download (the store or the network: try again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_stream_fails_with_its_typed_error() {
    let ts = stores::file();
    let catalog = Catalog::new(ts.store.clone());
    let sf = backup_with(&catalog, &ScriptedEngine::producing(1 << 20))
        .await
        .unwrap()
        .statefile;
    let id = sf.backup_id.as_str();
    let key = Catalog::key(id, "dump.rdb.zst");
    let stream_error = || async {
        let source = catalog.artifact_source(id).await.unwrap();
        let mut out = Vec::new();
        let e = source
            .open("dump.rdb.zst")
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        Error::from_stream(e).expect("the stream carries capsule's error")
    };

    // One byte changed: corrupt, naming the object.
    let mut stored = ts.store.get(&key).await.unwrap().bytes.to_vec();
    stored[100] ^= 1;
    ts.store.put(&key, stored.into()).await.unwrap();
    let e = stream_error().await;
    assert!(
        matches!(&e, Error::Corrupt { object, .. } if object.ends_with("/dump.rdb.zst")),
        "{e:?}"
    );

    // Gone: a store error, not a corrupt backup.
    ts.store.delete(&key).await.unwrap();
    let e = stream_error().await;
    assert!(matches!(e, Error::Store { .. }), "{e:?}");
    assert!(e.is_not_found(), "{e}");

    // An I/O error that carries none is given back as it was.
    let plain = io::Error::new(io::ErrorKind::InvalidData, "zstd: bad frame");
    let back = Error::from_stream(plain).unwrap_err();
    assert_eq!(back.kind(), io::ErrorKind::InvalidData);
    assert_eq!(back.to_string(), "zstd: bad frame");
}
