//! The bucket the legacy capsule wrote reads through a `file://` store.

use capsule_store::StoreBuilder;
use test_support::fixtures::legacy_bucket_dir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_legacy_fixture_bucket() {
    let root = legacy_bucket_dir();
    let store = StoreBuilder::from_url(&format!("file://{}", root.display()))
        .unwrap()
        .with_prefix("cnvrg-smart-backups")
        .build()
        .unwrap();
    let dirs = store.list_dirs("").await.unwrap();
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    assert!(dirs.iter().all(|d| d.starts_with("postgresql-")));
    let statefile = store
        .get(&format!("{}/statefile.json", dirs[0]))
        .await
        .unwrap();
    assert!(statefile.bytes.starts_with(b"{"));
    assert!(store.head("ping").await.is_ok());
    assert!(
        !root.join(".capsule-locks").exists(),
        "reading takes no lock"
    );
}
