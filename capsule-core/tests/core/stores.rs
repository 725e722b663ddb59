//! The stores the tests run on, and loading the legacy fixture into one.

use std::path::Path;

use capsule_core::store::{Store, StoreBuilder};
use tempfile::TempDir;
use test_support::seaweedfs::SeaweedFs;

/// A store under test; keeps its temp dir alive.
pub struct TestStore {
    pub store: Store,
    _dir: Option<TempDir>,
}

pub fn memory() -> TestStore {
    TestStore {
        store: Store::from_url("memory://").unwrap(),
        _dir: None,
    }
}

pub fn file() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    TestStore {
        store: Store::from_url(&url).unwrap(),
        _dir: Some(dir),
    }
}

/// A fresh prefix in one bucket of the shared SeaweedFS.
pub fn s3() -> TestStore {
    s3_in("core-tests")
}

/// A fresh prefix in `bucket` (created if needed) of the shared SeaweedFS.
pub fn s3_in(bucket: &str) -> TestStore {
    let s = SeaweedFs::shared();
    s.create_bucket(bucket);
    let prefix = format!("t{:016x}", rand::random::<u64>());
    let store = StoreBuilder::from_url(&s.s3_url_with_credentials(bucket))
        .unwrap()
        .with_prefix(&prefix)
        .build()
        .unwrap();
    TestStore { store, _dir: None }
}

/// Every flavour, for tests that run on each.
pub fn all() -> Vec<(&'static str, TestStore)> {
    vec![("memory", memory()), ("file", file()), ("s3", s3())]
}

/// Copies a local directory tree into `store` (keys relative to `root`).
pub async fn load_tree(store: &Store, root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let key = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string();
                store
                    .put(&key, std::fs::read(&path).unwrap().into())
                    .await
                    .unwrap();
            }
        }
    }
}

/// The legacy bucket's dst-dir loaded into `store` (whose prefix is then
/// the default `cnvrg-smart-backups`).
pub async fn with_legacy_fixture(store: &Store) -> Store {
    let root = test_support::fixtures::legacy_bucket_dir().join("cnvrg-smart-backups");
    let s = store
        .with_prefix(format!("{}/cnvrg-smart-backups", store.prefix()).trim_start_matches('/'))
        .unwrap();
    load_tree(&s, &root).await;
    s
}
