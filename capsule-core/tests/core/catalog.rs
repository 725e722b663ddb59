//! Catalog over the legacy fixture and over v1 backups.

use std::sync::Arc;

use capsule_core::statefile::STATEFILE_NAME;
use capsule_core::{
    BackupFolder, Catalog, Error, ListFilter, NoProgress, RestoreStatus, ServiceIdentity,
    ServiceType, Status,
};
use sha2::{Digest, Sha256};

use test_support::seaweedfs::SeaweedFs;

use crate::stores;

const FINISHED: &str = "postgresql-9nVJ8sGmQbXc3RkHzW2tLp";
const FAILED: &str = "postgresql-4GfT7uYpWq2ZsLmK9bXcRv";
const REQUESTED: &str = "postgresql-Ts6Yh2KqPw9LmZc4NbXvRe";
const DUMP: &str = "Hq4mTzR7xKd2VwPbN8cYsE-pgdump.tar";
const DUMP_SHA256: &str = "e87c12cf3eaf4fe65b2478476a9b1eed9765b267686c6b1d3a474c84fa95190b";
const SECRETS: [&str; 3] = [
    "AKIALEGACYEXAMPLE",
    "legacySecretKeyExample0123456789abcdef",
    "s3cr3tPgPass",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_bucket_lists_describes_downloads_and_deletes() {
    for (name, ts) in stores::all() {
        let store = stores::with_legacy_fixture(&ts.store).await;
        let catalog = Catalog::new(store.clone());
        let list = catalog.list(&ListFilter::default()).await.unwrap();
        let ids: Vec<&str> = list.iter().map(|e| e.id.as_str()).collect();
        // Newest first: 06-11 16:40Z, 06-11 06:15Z (+03:00), 06-10.
        assert_eq!(ids, [REQUESTED, FAILED, FINISHED], "{name}");
        let labels: Vec<&str> = list.iter().map(|e| e.status_label()).collect();
        assert_eq!(labels, ["requested", "failed", "finished"], "{name}");
        assert_eq!(list[2].size_bytes(), Some(1_855_488), "{name}");
        let json =
            serde_json::to_string(&list.iter().map(|e| e.summary_json()).collect::<Vec<_>>())
                .unwrap();
        for s in SECRETS {
            assert!(!json.contains(s), "{name}: {s} in {json}");
        }

        let finished = catalog
            .list(&ListFilter::default().with_status("finished"))
            .await
            .unwrap();
        assert_eq!(finished.len(), 1);
        let redis = catalog
            .list(&ListFilter::default().with_service_type(ServiceType::Redis))
            .await
            .unwrap();
        assert!(redis.is_empty());

        let sf = catalog.describe(FINISHED).await.unwrap();
        assert_eq!(sf.artifacts[0].size_bytes, Some(1_855_488));

        let dir = tempfile::tempdir().unwrap();
        let files = catalog
            .download(FINISHED, dir.path(), &NoProgress)
            .await
            .unwrap();
        assert_eq!(files.len(), 1);
        assert!(!files[0].report.checksum_verified, "legacy has no checksum");
        let bytes = std::fs::read(&files[0].path).unwrap();
        assert_eq!(files[0].path, dir.path().join(FINISHED).join(DUMP));
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            DUMP_SHA256,
            "{name}: byte-identical dump"
        );

        let err = catalog
            .download(FAILED, dir.path(), &NoProgress)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("only finished backups"), "{err}");

        let report = catalog.delete(FINISHED).await.unwrap();
        assert_eq!(report.objects, 2);
        assert!(
            store
                .list(&format!("{FINISHED}/"))
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        assert_eq!(catalog.list(&ListFilter::default()).await.unwrap().len(), 2);
        assert!(catalog.describe(FINISHED).await.unwrap_err().is_not_found());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_statefile_is_listed_as_unreadable() {
    let ts = stores::file();
    let store = stores::with_legacy_fixture(&ts.store).await;
    store
        .put(&format!("{FAILED}/{STATEFILE_NAME}"), "{garbage".into())
        .await
        .unwrap();
    let catalog = Catalog::new(store.clone());
    let list = catalog.list(&ListFilter::default()).await.unwrap();
    assert_eq!(list.len(), 3);
    let bad = list.iter().find(|e| e.id == FAILED).unwrap();
    assert_eq!(bad.status_label(), "unreadable");
    assert!(
        bad.unreadable
            .as_ref()
            .unwrap()
            .contains("not a JSON statefile")
    );
    let err = catalog.describe(FAILED).await.unwrap_err().to_string();
    assert!(err.contains(FAILED) && err.contains("unreadable"), "{err}");
    // A folder with an artifact and no statefile is listed, not ignored.
    store
        .put("postgresql-OrphanOrphanOrphan123456/dump.zst", "x".into())
        .await
        .unwrap();
    let list = catalog.list(&ListFilter::default()).await.unwrap();
    let orphan = list.iter().find(|e| e.id.contains("Orphan")).unwrap();
    assert_eq!(orphan.unreadable.as_deref(), Some("statefile missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_statefile_is_refused_by_its_size() {
    // Once loaded whole before its size was checked: now refused from the
    // object's size, before any of it is read.
    use capsule_core::statefile::MAX_STATEFILE_BYTES;
    let ts = stores::file();
    let store = stores::with_legacy_fixture(&ts.store).await;
    let mut big = vec![b' '; MAX_STATEFILE_BYTES + 1];
    big[0] = b'{';
    store
        .put(&format!("{FAILED}/{STATEFILE_NAME}"), big.into())
        .await
        .unwrap();
    let catalog = Catalog::new(store.clone());
    let list = catalog.list(&ListFilter::default()).await.unwrap();
    let bad = list.iter().find(|e| e.id == FAILED).unwrap();
    let reason = bad.unreadable.as_deref().unwrap();
    assert!(
        reason.starts_with(&format!(
            "statefile too large ({} bytes",
            MAX_STATEFILE_BYTES + 1
        )),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_request_on_legacy_keeps_v1alpha1() {
    let ts = stores::memory();
    let store = stores::with_legacy_fixture(&ts.store).await;
    let catalog = Catalog::new(store.clone());
    let h = catalog.request_restore(FINISHED).await.unwrap();
    assert_eq!(h.statefile.restores.len(), 2);
    assert_eq!(h.statefile.restores[1].status, RestoreStatus::Requested);
    let raw = store
        .get(&format!("{FINISHED}/{STATEFILE_NAME}"))
        .await
        .unwrap()
        .bytes;
    let doc: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(doc["statefileVersion"], "v1alpha1");
    assert_eq!(doc["restores"][1]["status"], "restorerequest");
    let err = catalog
        .request_restore(FAILED)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("only finished backups can be restored"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_lose_nothing() {
    for (name, ts) in [("file", stores::file()), ("s3", stores::s3())] {
        let catalog = Arc::new(Catalog::new(ts.store.clone()));
        let sf = catalog
            .request_backup(ServiceType::Redis, ServiceIdentity::default(), "race")
            .await
            .unwrap();
        let id = sf.backup_id.to_string();

        // Raw conditional updates from one version: exactly one wins.
        let key = format!("{id}/{STATEFILE_NAME}");
        let v = ts.store.head(&key).await.unwrap().version;
        let (a, b) = tokio::join!(
            ts.store
                .update(&key, sf_bytes(&catalog, &id, "a").await, &v),
            ts.store
                .update(&key, sf_bytes(&catalog, &id, "b").await, &v),
        );
        assert_eq!(
            a.is_ok() as u8 + b.is_ok() as u8,
            1,
            "{name}: exactly one conditional update wins"
        );

        // Catalog updates retry on conflict: 8 concurrent changes all land.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let catalog = catalog.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = catalog.load(&id).await.unwrap();
                catalog
                    .update(&mut h, |sf| {
                        sf.description.push_str(&format!("[{i}]"));
                        Ok(())
                    })
                    .await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) => ok += 1,
                Err(Error::Conflict { .. }) => {}
                Err(e) => panic!("{name}: {e}"),
            }
        }
        let desc = catalog.load(&id).await.unwrap().statefile.description;
        let landed = (0..8).filter(|i| desc.contains(&format!("[{i}]"))).count();
        assert_eq!(
            landed, ok,
            "{name}: every reported success is in the file ({desc})"
        );
        assert!(ok >= 1);
    }
}

async fn sf_bytes(catalog: &Catalog, id: &str, desc: &str) -> bytes::Bytes {
    let mut sf = catalog.load(id).await.unwrap().statefile;
    sf.description = desc.into();
    sf.to_vec().unwrap().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_listed_and_deletable() {
    let ts = stores::memory();
    let catalog = Catalog::new(ts.store.clone());
    let sf = catalog
        .request_backup(
            ServiceType::Elasticsearch,
            ServiceIdentity::default(),
            "manual",
        )
        .await
        .unwrap();
    let list = catalog.list(&ListFilter::default()).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].statefile.as_ref().unwrap().status,
        Status::Requested
    );
    catalog.delete(sf.backup_id.as_str()).await.unwrap();
    assert!(
        catalog
            .list(&ListFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let err = catalog.delete(sf.backup_id.as_str()).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(catalog.describe("../etc").await.is_err());
}

/// A delete that was interrupted after its marker (the legacy statefile
/// still says finished; artifacts may be gone) is not offered as finished:
/// describe says deleting, download and restore refuse, and running the
/// delete again finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_delete_is_not_served_as_finished() {
    let ts = stores::memory();
    let store = stores::with_legacy_fixture(&ts.store).await;
    let catalog = Catalog::new(store.clone());
    store
        .put(
            &Catalog::key(FINISHED, "deleting"),
            bytes::Bytes::from_static(b"2026-11-26T00:00:00Z"),
        )
        .await
        .unwrap();
    let list = catalog.list(&ListFilter::default()).await.unwrap();
    let entry = list.iter().find(|e| e.id == FINISHED).unwrap();
    assert_eq!(entry.status_label(), "deleting");
    assert_eq!(
        catalog.describe(FINISHED).await.unwrap().status,
        Status::Deleting
    );
    let dir = tempfile::tempdir().unwrap();
    let err = catalog
        .download(FINISHED, dir.path(), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is being deleted"), "{err}");
    assert!(!dir.path().join(FINISHED).exists(), "nothing written");
    let err = catalog.artifact_source(FINISHED).await.unwrap_err();
    assert!(err.to_string().contains("cannot be restored"), "{err}");
    let before = sf_bytes_raw(&catalog, FINISHED).await;
    let err = catalog.request_restore(FINISHED).await.unwrap_err();
    assert!(err.to_string().contains("is being deleted"), "{err}");
    assert_eq!(
        sf_bytes_raw(&catalog, FINISHED).await,
        before,
        "no request recorded"
    );
    catalog.delete(FINISHED).await.unwrap();
    assert_eq!(objects_in(&store, FINISHED).await, 0);
}

/// A capsule killed mid-upload to a local store leaves `<artifact>#<n>`,
/// which the store never lists: deleting the backup removes it too, and
/// with it the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_a_killed_upload_from_a_local_store() {
    let ts = stores::file();
    let store = stores::with_legacy_fixture(&ts.store).await;
    let catalog = Catalog::new(store.clone());
    let folder = store.local_dir().unwrap().join(FINISHED);
    std::fs::write(folder.join("dump.pgc.zst#1"), vec![7u8; 4096]).unwrap();
    let listed: u64 = store
        .list(&format!("{FINISHED}/"))
        .await
        .unwrap()
        .iter()
        .map(|o| o.size)
        .sum();
    let report = catalog.delete(FINISHED).await.unwrap();
    assert!(
        !folder.exists(),
        "{:?}",
        std::fs::read_dir(&folder).map(|d| d.count())
    );
    assert_eq!(report.bytes, listed + 4096);
    // Elsewhere there is nothing to see.
    assert_eq!(
        stores::memory()
            .store
            .remove_partial_uploads("x/")
            .await
            .unwrap(),
        0
    );
}

/// On AWS a key allowed to get objects but not to list the bucket is
/// answered 403, not 404, for a missing object, so the check for a delete
/// marker is refused: such a restore-only key must still describe,
/// download and restore a backup. SeaweedFS answers 404 to any identity;
/// a bucket policy denying `GetObject` on `*/deleting` makes it answer
/// 403 there, like AWS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delete_marker_check_does_not_block_a_restore() {
    const BUCKET: &str = "core-marker-refused";
    let ts = stores::s3_in(BUCKET);
    SeaweedFs::shared().put_bucket_policy(
        BUCKET,
        &format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"marker","Effect":"Deny","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::{BUCKET}/*/deleting"}}]}}"#
        ),
    )
    .unwrap();
    let store = stores::with_legacy_fixture(&ts.store).await;
    let catalog = Catalog::new(store.clone());
    // The server applies a new policy through its metadata subscription:
    // give it a few seconds.
    let marker = Catalog::key(FINISHED, "deleting");
    let mut refused = store.head(&marker).await.unwrap_err();
    for _ in 0..50 {
        if !matches!(refused, capsule_core::store::Error::NotFound { .. }) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        refused = store.head(&marker).await.unwrap_err();
    }
    assert!(
        !matches!(refused, capsule_core::store::Error::NotFound { .. })
            && refused.to_string().contains("403"),
        "the policy must make the marker check fail with 403: {refused}"
    );

    assert_eq!(
        catalog.describe(FINISHED).await.unwrap().status,
        Status::Finished
    );
    let dir = tempfile::tempdir().unwrap();
    let files = catalog
        .download(FINISHED, dir.path(), &NoProgress)
        .await
        .unwrap();
    let bytes = std::fs::read(&files[0].path).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), DUMP_SHA256);
    catalog.artifact_source(FINISHED).await.unwrap();
    let handle = catalog.request_restore(FINISHED).await.unwrap();
    assert!(
        String::from_utf8_lossy(&handle.raw).contains("restorerequest"),
        "the restore request is recorded"
    );
}

/// How many objects backup `id`'s folder holds.
async fn objects_in(store: &capsule_store::Store, id: &str) -> usize {
    store.list(&format!("{id}/")).await.unwrap().len()
}

async fn sf_bytes_raw(catalog: &Catalog, id: &str) -> bytes::Bytes {
    catalog
        .store()
        .get(&Catalog::key(id, STATEFILE_NAME))
        .await
        .unwrap()
        .bytes
}

/// Delete refuses what may still be running elsewhere: a statefile of a
/// version this capsule does not read (a newer capsule's), and a legacy
/// backup that says dumpingdb and started moments ago (no heartbeat to
/// judge by); an old stuck legacy backup is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_refuses_what_may_still_be_running() {
    let ts = stores::memory();
    let store = stores::with_legacy_fixture(&ts.store).await;
    let catalog = Catalog::new(store.clone());
    let key = Catalog::key(FINISHED, STATEFILE_NAME);
    let legacy = String::from_utf8(store.get(&key).await.unwrap().bytes.to_vec()).unwrap();
    let put = |text: String| {
        let store = store.clone();
        let key = key.clone();
        async move { store.put(&key, bytes::Bytes::from(text)).await.unwrap() }
    };

    put(legacy.replace("\"v1alpha1\"", "\"v2\"")).await;
    let err = catalog.delete(FINISHED).await.unwrap_err();
    assert!(
        err.to_string().contains("version \"v2\"")
            && err.to_string().contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(objects_in(&store, FINISHED).await, 2);

    let mut dumping: serde_json::Value = serde_json::from_str(&legacy).unwrap();
    dumping["status"] = "dumpingdb".into();
    dumping["date"] = chrono::Utc::now().to_rfc3339().into();
    put(dumping.to_string()).await;
    let err = catalog.delete(FINISHED).await.unwrap_err();
    assert!(err.to_string().contains("records no heartbeat"), "{err}");
    assert_eq!(objects_in(&store, FINISHED).await, 2);

    dumping["date"] = "2021-06-10T09:15:42.532817263Z".into();
    put(dumping.to_string()).await;
    catalog.delete(FINISHED).await.unwrap();
    assert_eq!(objects_in(&store, FINISHED).await, 0);
}
