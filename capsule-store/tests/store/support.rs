//! Stores on the shared test servers, one fresh bucket or container each.

use std::sync::atomic::{AtomicUsize, Ordering};

use capsule_store::{Secret, Store, StoreBuilder};
use test_support::azurite::Azurite;
use test_support::seaweedfs::SeaweedFs;

/// A bucket or container name no other test uses (3-63 chars, [a-z0-9-]).
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh bucket on the shared SeaweedFS, with `prefix`.
pub fn s3_store(prefix: &str) -> Store {
    let s3 = SeaweedFs::shared();
    let bucket = unique_name("t");
    s3.create_bucket(&bucket);
    s3_builder(&bucket)
        .with_prefix(prefix)
        .build()
        .expect("s3 store")
}

/// A builder for `bucket` on the shared SeaweedFS, with its keys.
pub fn s3_builder(bucket: &str) -> StoreBuilder {
    let s3 = SeaweedFs::shared();
    StoreBuilder::from_url(&s3.s3_url(bucket))
        .expect("seaweedfs url")
        .with_access_key(Secret::new(&s3.access_key), Secret::new(&s3.secret_key))
}

/// A fresh container on the shared Azurite, with `prefix`.
pub fn az_store(prefix: &str) -> Store {
    let az = Azurite::shared();
    let container = unique_name("t");
    az.create_container(&container);
    az_builder(&container)
        .with_prefix(prefix)
        .build()
        .expect("az store")
}

/// A builder for `container` on the shared Azurite, with the account key.
pub fn az_builder(container: &str) -> StoreBuilder {
    let az = Azurite::shared();
    StoreBuilder::from_url(&az.az_url(container))
        .expect("azurite url")
        .with_access_key(Secret::new(&az.account), Secret::new(&az.key))
}

/// A `file://` store rooted at `dir`, with `prefix`.
pub fn file_store(dir: &std::path::Path, prefix: &str) -> Store {
    StoreBuilder::from_url(&format!("file://{}", dir.display()))
        .expect("file url")
        .with_prefix(prefix)
        .build()
        .expect("file store")
}

/// A TCP port on 127.0.0.1 nothing listens on.
pub fn closed_port() -> u16 {
    test_support::process::free_port()
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

/// Panics if `text` holds any of `secrets`.
pub fn assert_no_secret(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "secret {secret:?} leaked into: {text}"
        );
    }
}
