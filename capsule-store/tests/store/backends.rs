//! The conformance suite on every backend, and stores built from the
//! legacy settings against the real servers.

use std::collections::BTreeMap;

use bytes::Bytes;
use capsule_store::{BucketType, Secret, StorageSettings, Store, StoreBuilder};
use test_support::azurite::Azurite;
use test_support::seaweedfs::SeaweedFs;

use crate::conformance;
use crate::support::{az_store, file_store, s3_store, unique_name};

#[tokio::test]
async fn memory_conforms() {
    let store = Store::from_url("memory://")
        .unwrap()
        .with_prefix("prod-eu/backups")
        .unwrap();
    assert_eq!(store.url(), "memory://prod-eu/backups");
    conformance::run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket-root");
    // The root is created on first write.
    let store = file_store(&root, "prod-eu/backups");
    assert_eq!(store.local_dir(), Some(root.join("prod-eu/backups")));
    assert_eq!(
        store.url(),
        format!("file://{}/prod-eu/backups", root.display())
    );
    conformance::run(store.clone()).await;
    // Lock files exist but never show.
    assert!(root.join(".capsule-locks").is_dir());
    let top = file_store(&root, "");
    assert_eq!(top.list_dirs("").await.unwrap(), vec!["prod-eu"]);
    assert!(
        top.list("")
            .await
            .unwrap()
            .iter()
            .all(|i| i.key.starts_with("prod-eu/")),
        "no lock file listed"
    );
}

/// Deleting a backup folder's objects leaves no empty directory behind,
/// but the store's own prefix directory stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_delete_removes_emptied_directories_up_to_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket-root");
    let store = file_store(&root, "dst");
    for key in [
        "one/idx/a/part.zst",
        "one/statefile.json",
        "two/statefile.json",
    ] {
        store.put(key, Bytes::from_static(b"x")).await.unwrap();
    }
    store.delete("one/idx/a/part.zst").await.unwrap();
    assert!(
        !root.join("dst/one/idx").exists(),
        "emptied directories stay"
    );
    assert!(root.join("dst/one/statefile.json").is_file());
    store.delete("one/statefile.json").await.unwrap();
    assert!(!root.join("dst/one").exists());
    assert!(root.join("dst/two/statefile.json").is_file());
    store.delete("two/statefile.json").await.unwrap();
    assert!(root.join("dst").is_dir(), "the prefix directory is kept");
    assert_eq!(std::fs::read_dir(root.join("dst")).unwrap().count(), 0);
    // A directory that is not empty is left alone, and writes still work.
    store
        .put("three/x", Bytes::from_static(b"x"))
        .await
        .unwrap();
    std::fs::write(root.join("dst/three/operator-notes.txt"), "keep").unwrap();
    store.delete("three/x").await.unwrap();
    assert!(root.join("dst/three/operator-notes.txt").is_file());
    store
        .put("one/again", Bytes::from_static(b"y"))
        .await
        .unwrap();
    assert!(root.join("dst/one/again").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_absolute_path_is_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::from_url(dir.path().to_str().unwrap()).unwrap();
    store.put("k", Bytes::from_static(b"v")).await.unwrap();
    assert!(dir.path().join("k").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaweedfs_conforms() {
    let store = s3_store("prod-eu/backups");
    assert_eq!(store.local_dir(), None);
    let endpoint = &SeaweedFs::shared().endpoint;
    assert!(
        store.url().starts_with("s3://t-")
            && store
                .url()
                .ends_with(&format!("/prod-eu/backups (endpoint {endpoint})")),
        "{}",
        store.url()
    );
    conformance::run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_conforms() {
    let store = az_store("prod-eu/backups");
    let endpoint = &Azurite::shared().endpoint;
    assert!(
        store.url().ends_with(&format!(
            "/prod-eu/backups (account devstoreaccount1, endpoint {endpoint})"
        )),
        "{}",
        store.url()
    );
    conformance::run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_prefix_goes_in_front_of_the_dst_dir() {
    let s3 = SeaweedFs::shared();
    let bucket = unique_name("t");
    s3.create_bucket(&bucket);
    let url = s3.s3_url(&bucket).replacen('?', "/team-a/?", 1);
    let store = StoreBuilder::from_url(&url)
        .unwrap()
        .with_access_key(Secret::new(&s3.access_key), Secret::new(&s3.secret_key))
        .with_prefix("cnvrg-smart-backups")
        .build()
        .unwrap();
    assert_eq!(store.prefix(), "cnvrg-smart-backups");
    assert!(
        store
            .url()
            .contains(&format!("s3://{bucket}/team-a/cnvrg-smart-backups ("))
    );
    store
        .put("x/statefile.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let root = super::support::s3_builder(&bucket).build().unwrap();
    assert_eq!(
        root.list("").await.unwrap()[0].key,
        "team-a/cnvrg-smart-backups/x/statefile.json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_work_and_stay_hidden() {
    let s3 = SeaweedFs::shared();
    let bucket = unique_name("t");
    s3.create_bucket(&bucket);
    let store = Store::from_url(&s3.s3_url_with_credentials(&bucket)).unwrap();
    store.ping().await.unwrap();
    let shown = format!("{} {store:?}", store.url());
    crate::support::assert_no_secret(&shown, &[&s3.secret_key, &s3.access_key]);

    let url = s3.s3_url(&bucket).replacen(
        "s3://",
        &format!("s3://{}:{}@", s3.access_key, s3.secret_key),
        1,
    );
    let store = Store::from_url(&url).unwrap();
    store.ping().await.unwrap();
    crate::support::assert_no_secret(store.url(), &[&s3.secret_key, &s3.access_key]);

    let az = Azurite::shared();
    let container = unique_name("t");
    az.create_container(&container);
    let store = Store::from_url(&az.az_url_with_credentials(&container)).unwrap();
    store.ping().await.unwrap();
    crate::support::assert_no_secret(&format!("{} {store:?}", store.url()), &[&az.key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_minio_settings_reach_seaweedfs() {
    let s3 = SeaweedFs::shared();
    let bucket = unique_name("t");
    s3.create_bucket(&bucket);
    // As the bucket secret has them: endpoint without scheme, no region.
    let data: BTreeMap<String, String> = [
        ("CNVRG_STORAGE_TYPE", "minio"),
        (
            "CNVRG_STORAGE_ENDPOINT",
            s3.endpoint.trim_start_matches("http://"),
        ),
        ("CNVRG_STORAGE_BUCKET", bucket.as_str()),
        ("CNVRG_STORAGE_ACCESS_KEY", s3.access_key.as_str()),
        ("CNVRG_STORAGE_SECRET_KEY", s3.secret_key.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let settings = StorageSettings::from_secret_data(&data, None).unwrap();
    let store = StoreBuilder::from_settings(&settings)
        .unwrap()
        .with_prefix("cnvrg-smart-backups")
        .build()
        .unwrap();
    assert_eq!(
        store.url(),
        format!(
            "s3://{bucket}/cnvrg-smart-backups (endpoint {})",
            s3.endpoint
        )
    );
    store.ping().await.unwrap();
    let v = store
        .create("b/statefile.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    store
        .update("b/statefile.json", Bytes::from_static(b"{\"x\":1}"), &v)
        .await
        .unwrap();
    let debug = format!("{settings:?} {store:?}");
    crate::support::assert_no_secret(&debug, &[&s3.secret_key, &s3.access_key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_azure_settings_reach_azurite() {
    let az = Azurite::shared();
    let container = unique_name("t");
    az.create_container(&container);
    let mut settings = StorageSettings::new(BucketType::Azure);
    settings.bucket_name = Some(container.clone());
    settings.account_name = Some(az.account.clone());
    settings.account_key = Some(Secret::new(&az.key));
    settings.endpoint = Some(az.endpoint.clone());
    let store = StoreBuilder::from_settings(&settings)
        .unwrap()
        .with_prefix("cnvrg-smart-backups")
        .build()
        .unwrap();
    assert_eq!(
        store.url(),
        format!(
            "az://{container}/cnvrg-smart-backups (account devstoreaccount1, endpoint {})",
            az.endpoint
        )
    );
    store.ping().await.unwrap();
    crate::support::assert_no_secret(&format!("{settings:?} {store:?}"), &[&az.key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_emulator_option_fills_in_the_dev_account() {
    let az = Azurite::shared();
    let container = unique_name("t");
    az.create_container(&container);
    let url = format!(
        "az://{container}?use_emulator=true&endpoint={}",
        az.endpoint
    );
    let store = Store::from_url(&url).unwrap();
    store.ping().await.unwrap();
    assert!(
        store
            .url()
            .contains("(account devstoreaccount1, endpoint http://127.0.0.1:")
    );
}
