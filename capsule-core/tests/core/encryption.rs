//! Encryption at rest: the pipeline and run_backup / run_restore /
//! download with age recipients and identities, on every store.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use age::secrecy::ExposeSecret;
use async_trait::async_trait;
use capsule_core::pipeline::{self, Expected, PipelineOptions};
use capsule_core::store::Store;
use capsule_core::{
    AGE_FORMAT, ArtifactSink, ArtifactSource, ArtifactSpec, BackupOptions, Capabilities, Catalog,
    Compression, Engine, EngineInfo, Error, Fingerprint, Identities, JobContext, NoProgress,
    Recipients, RestoreOptions, RestoreOutcome, RestoreStatus, Result, ServiceIdentity,
    ServiceType, Statefile, run_backup, run_restore,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::pipeline::data;
use crate::stores;

const MARKER: &[u8] = b"CAPSULE-PLAINTEXT-MARKER-7f3a";

/// A key pair: (identities, recipients, public key).
fn keypair() -> (Identities, Recipients, String) {
    let k = age::x25519::Identity::generate();
    let public = k.to_public().to_string();
    let ids = Identities::parse_file(k.to_string().expose_secret(), "test key").unwrap();
    (ids, Recipients::from_keys([&public]).unwrap(), public)
}

/// Compressible data with the marker every few KiB.
fn marked(len: usize) -> Vec<u8> {
    let mut out = data(len, 5);
    let mut i = 0;
    while i + MARKER.len() < out.len() {
        out[i..i + MARKER.len()].copy_from_slice(MARKER);
        i += 4096;
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every object in the store holds no marker.
async fn assert_no_plaintext(store: &Store, what: &str) {
    let objects = store.list("").await.unwrap();
    assert!(!objects.is_empty(), "{what}: nothing stored");
    for o in objects {
        let bytes = store.get(&o.key).await.unwrap().bytes;
        assert!(
            !contains(&bytes, MARKER),
            "{what}: the marker is readable in {}",
            o.key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_pipeline_round_trips_only_with_a_recipient_identity() {
    let input = marked(5 * 1024 * 1024 + 3);
    let (ids_a, to_a, public_a) = keypair();
    let (ids_b, to_b, _) = keypair();
    let (ids_c, _, public_c) = keypair();
    let both = to_a.merge(to_b);
    for (name, ts) in stores::all() {
        for compression in [Compression::Zstd, Compression::None] {
            let key = format!("b/{name}-{}", compression.as_str());
            let o = PipelineOptions::default()
                .with_compression(compression)
                .with_encryption(both.clone());
            let report = pipeline::upload(&ts.store, &key, &input[..], &o, &NoProgress)
                .await
                .unwrap();
            let enc = report.encryption.clone().expect("recorded");
            assert_eq!(enc.format, AGE_FORMAT);
            assert_eq!(enc.recipients, both.to_strings());
            assert_eq!(report.raw_size_bytes, input.len() as u64);
            let stored = ts.store.get(&key).await.unwrap().bytes;
            assert!(stored.starts_with(b"age-encryption.org/v1\n"), "{name}");
            assert_eq!(stored.len() as u64, report.size_bytes, "{name}");
            assert_eq!(hex::encode(Sha256::digest(&stored)), report.sha256);
            assert!(!contains(&stored, MARKER), "{name}: plaintext stored");

            let expected = Expected {
                size_bytes: Some(report.size_bytes),
                sha256: Some(report.sha256.clone()),
                compression,
                encryption: Some(enc),
            };
            // Either recipient's identity decrypts.
            for ids in [&ids_a, &ids_b] {
                let mut out = Vec::new();
                let d =
                    pipeline::download(&ts.store, "b", &key, &expected, ids, &mut out, &NoProgress)
                        .await
                        .unwrap();
                assert!(d.checksum_verified);
                assert_eq!(d.raw_size_bytes, input.len() as u64);
                assert!(out == input, "{name}: bytes differ after the round trip");
            }
            // Another identity: a clear error, nothing written.
            let mut out = Vec::new();
            let e = pipeline::download(
                &ts.store,
                "b",
                &key,
                &expected,
                &ids_c,
                &mut out,
                &NoProgress,
            )
            .await
            .unwrap_err();
            assert!(matches!(e, Error::Decrypt { .. }), "{name}: {e}");
            let msg = e.to_string();
            assert!(msg.starts_with("backup b: cannot decrypt"), "{msg}");
            assert!(msg.contains(&public_c) && msg.contains(&public_a), "{msg}");
            assert!(out.is_empty());
            // No identity at all.
            let e = pipeline::download(
                &ts.store,
                "b",
                &key,
                &expected,
                &Identities::new(),
                &mut out,
                &NoProgress,
            )
            .await
            .unwrap_err();
            assert!(matches!(e, Error::IdentityRequired { .. }), "{name}: {e}");
            assert!(e.to_string().contains("no identity was given"), "{e}");
        }
        assert_no_plaintext(&ts.store, name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_an_encrypted_object_is_caught() {
    let ts = stores::memory();
    let (ids, to, _) = keypair();
    let o = PipelineOptions::default().with_encryption(to);
    let input = marked(2 * 1024 * 1024);
    let r = pipeline::upload(&ts.store, "c/obj", &input[..], &o, &NoProgress)
        .await
        .unwrap();
    let good = ts.store.get("c/obj").await.unwrap().bytes.to_vec();
    let mut flipped = good.clone();
    let at = good.len() / 2;
    flipped[at] ^= 0x01;
    ts.store.put("c/obj", flipped.into()).await.unwrap();
    // With the checksum: a checksum mismatch; without (as if legacy): age's
    // authentication fails.
    for sha256 in [Some(r.sha256.clone()), None] {
        let expected = Expected {
            size_bytes: Some(r.size_bytes),
            sha256: sha256.clone(),
            compression: Compression::Zstd,
            encryption: r.encryption.clone(),
        };
        let e = pipeline::download(
            &ts.store,
            "b",
            "c/obj",
            &expected,
            &ids,
            &mut Vec::new(),
            &NoProgress,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        let want = if sha256.is_some() {
            "checksum mismatch"
        } else {
            "cannot decrypt or decompress"
        };
        assert!(e.to_string().contains(want), "{e}");
    }
}

/// Backs up `data` as one artifact; its restore reads the artifact back
/// and counts how often it was called (how often the "target" was touched).
struct MarkerEngine {
    data: Vec<u8>,
    restores: AtomicUsize,
    restored: std::sync::Mutex<Vec<u8>>,
}

impl MarkerEngine {
    fn new(data: Vec<u8>) -> Self {
        MarkerEngine {
            data,
            restores: AtomicUsize::new(0),
            restored: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl fmt::Display for MarkerEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "marker(test)")
    }
}

#[async_trait]
impl Engine for MarkerEngine {
    fn service_type(&self) -> ServiceType {
        ServiceType::Redis
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn identity(&self) -> ServiceIdentity {
        ServiceIdentity {
            name: Some("marker".into()),
            ..Default::default()
        }
    }
    async fn backup(&self, sink: &mut dyn ArtifactSink, _: &JobContext<'_>) -> Result<EngineInfo> {
        sink.put(
            ArtifactSpec::new("dump.rdb", "rdb"),
            Box::new(std::io::Cursor::new(self.data.clone())),
        )
        .await?;
        Ok(EngineInfo::default())
    }
    async fn restore(
        &self,
        source: &dyn ArtifactSource,
        _: &JobContext<'_>,
    ) -> Result<RestoreOutcome> {
        self.restores.fetch_add(1, Ordering::SeqCst);
        let name = source.statefile().artifacts[0].name.clone();
        source.verify(&name).await?;
        let mut out = Vec::new();
        source
            .open(&name)
            .await?
            .read_to_end(&mut out)
            .await
            .map_err(|e| Error::io("reading", e))?;
        *self.restored.lock().unwrap() = out;
        Ok(RestoreOutcome::default())
    }
    async fn fingerprint(&self, _: &JobContext<'_>) -> Result<Fingerprint> {
        Ok(Fingerprint::default())
    }
}

async fn backup(catalog: &Catalog, engine: &MarkerEngine, to: Option<Recipients>) -> Statefile {
    let mut pipeline = PipelineOptions::default();
    if let Some(to) = to {
        pipeline = pipeline.with_encryption(to);
    }
    run_backup(
        catalog,
        engine,
        BackupOptions::default().with_pipeline(pipeline),
        &JobContext::new(&NoProgress),
    )
    .await
    .unwrap()
    .statefile
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backups_restore_only_with_the_key_and_fail_before_the_target() {
    let (ids, to, public) = keypair();
    let (wrong, _, wrong_public) = keypair();
    for (name, ts) in stores::all() {
        let engine = MarkerEngine::new(marked(3 * 1024 * 1024));
        let plain_catalog = Catalog::new(ts.store.clone());
        let sf = backup(&plain_catalog, &engine, Some(to.clone())).await;
        let id = sf.backup_id.to_string();

        // The statefile: encrypted, to whom, checksum of the stored bytes.
        let a = &sf.artifacts[0];
        assert_eq!(a.name, "dump.rdb.zst.age", "{name}");
        let enc = a.encryption.as_ref().expect("encryption recorded");
        assert_eq!(
            (enc.format.as_str(), &enc.recipients),
            (AGE_FORMAT, &vec![public.clone()])
        );
        let stored = ts
            .store
            .get(&format!("{id}/{}", a.name))
            .await
            .unwrap()
            .bytes;
        assert_eq!(Some(hex::encode(Sha256::digest(&stored))), a.sha256);
        assert_eq!(a.raw_size_bytes, Some(engine.data.len() as u64));
        let json = String::from_utf8(sf.to_vec().unwrap()).unwrap();
        assert!(
            json.contains("\"encryption\"") && json.contains(&public),
            "{json}"
        );
        assert!(!json.contains("AGE-SECRET-KEY"), "{json}");
        assert_no_plaintext(&ts.store, name).await;

        // No identity, then a wrong one: clear errors naming the backup and
        // the artifact; the engine never ran; the history says why.
        let cases = [
            (plain_catalog.clone(), "is encrypted (age, to"),
            (
                Catalog::new(ts.store.clone()).with_identities(wrong.clone()),
                "none of the identities given",
            ),
        ];
        for (catalog, want) in cases {
            let e = run_restore(
                &catalog,
                &engine,
                &id,
                RestoreOptions::default(),
                &JobContext::new(&NoProgress),
            )
            .await
            .unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("backup {id}: ")), "{msg}");
            assert!(
                msg.contains("dump.rdb.zst.age") && msg.contains(want),
                "{msg}"
            );
            assert!(msg.contains(&public), "{msg}");
            assert_eq!(engine.restores.load(Ordering::SeqCst), 0, "{name}: touched");
            let last = catalog.describe(&id).await.unwrap().restores.pop().unwrap();
            assert_eq!(last.status, RestoreStatus::Failed);
            assert!(last.error.unwrap().contains(want));

            // Downloads fail the same way, before any file is created.
            let dir = tempfile::tempdir().unwrap();
            let e = catalog
                .download(&id, dir.path(), &NoProgress)
                .await
                .unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert!(!dir.path().join(&id).exists(), "{name}: a file was created");
        }
        let e = Catalog::new(ts.store.clone())
            .with_identities(wrong.clone())
            .artifact_source(&id)
            .await
            .unwrap()
            .check_keys()
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Decrypt { .. }) && e.to_string().contains(&wrong_public));

        // The key restores it exactly, and downloads it decrypted.
        let catalog = Catalog::new(ts.store.clone()).with_identities(ids.clone());
        run_restore(
            &catalog,
            &engine,
            &id,
            RestoreOptions::default(),
            &JobContext::new(&NoProgress),
        )
        .await
        .unwrap();
        assert_eq!(engine.restores.load(Ordering::SeqCst), 1);
        assert!(*engine.restored.lock().unwrap() == engine.data, "{name}");
        let dir = tempfile::tempdir().unwrap();
        let files = catalog
            .download(&id, dir.path(), &NoProgress)
            .await
            .unwrap();
        assert_eq!(files[0].path, dir.path().join(&id).join("dump.rdb"));
        assert!(std::fs::read(&files[0].path).unwrap() == engine.data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencrypted_backups_need_no_identity() {
    let ts = stores::file();
    let (ids, _, _) = keypair();
    let engine = MarkerEngine::new(marked(1024 * 1024));
    let sf = backup(&Catalog::new(ts.store.clone()), &engine, None).await;
    assert!(sf.artifacts[0].encryption.is_none());
    assert_eq!(sf.artifacts[0].name, "dump.rdb.zst");
    // With or without identities given.
    for catalog in [
        Catalog::new(ts.store.clone()),
        Catalog::new(ts.store.clone()).with_identities(ids.clone()),
    ] {
        run_restore(
            &catalog,
            &engine,
            sf.backup_id.as_str(),
            RestoreOptions::default(),
            &JobContext::new(&NoProgress),
        )
        .await
        .unwrap();
        assert!(*engine.restored.lock().unwrap() == engine.data);
    }
}

#[test]
fn the_statefile_keeps_encryption_and_unknown_fields() {
    let json = r#"{"statefileVersion":"v1","backupId":"redis-0123456789abcdefghijkl",
        "serviceType":"redis","requestType":"manual","status":"finished",
        "requestedAt":"2024-01-01T00:00:00Z",
        "artifacts":[{"name":"dump.rdb.zst.age","format":"rdb","compression":"zstd",
          "sizeBytes":10,"sha256":"00","futureField":1,
          "encryption":{"format":"age","recipients":["age1x"],"futureToo":true}}]}"#;
    let sf = Statefile::from_slice(json.as_bytes()).unwrap();
    let a = &sf.artifacts[0];
    assert!(a.is_encrypted());
    let enc = a.encryption.as_ref().unwrap();
    assert_eq!(
        (enc.format.as_str(), enc.recipients.as_slice()),
        ("age", &["age1x".to_string()][..])
    );
    let back: serde_json::Value = serde_json::from_slice(&sf.to_vec().unwrap()).unwrap();
    let a = &back["artifacts"][0];
    assert_eq!(a["futureField"], 1);
    assert_eq!(a["encryption"]["futureToo"], true);
    assert_eq!(a["encryption"]["recipients"][0], "age1x");
}
