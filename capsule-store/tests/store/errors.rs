//! Configuration mistakes and backend failures give clear messages that
//! name the culprit and never a secret.

use std::time::{Duration, Instant};

use capsule_store::{BucketType, Error, Secret, StorageSettings, Store, StoreBuilder};
use test_support::azurite::Azurite;
use test_support::seaweedfs::SeaweedFs;

use crate::support::{assert_no_secret, closed_port, s3_builder, unique_name};

fn invalid(result: Result<Store, Error>) -> String {
    match result {
        Err(e @ Error::InvalidConfig { .. }) => e.to_string(),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn unknown_bucket_type_names_the_value_and_the_choices() {
    let err = "s4".parse::<BucketType>().unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }));
    let text = err.to_string();
    assert!(
        text.contains("\"s4\"") && text.contains("minio, aws, azure, gcp"),
        "{text}"
    );
}

#[test]
fn malformed_urls_name_the_part_at_fault() {
    let cases = [
        ("s3:/x", "has no bucket"),
        ("ftp://x", "unsupported store URL scheme \"ftp\""),
        ("relative/dir", "relative path"),
        ("./dir", "no scheme"),
        ("file://host/dir", "not absolute"),
        (
            "s3://bucket?bogus_option=1",
            "unknown option \"bogus_option\"",
        ),
        ("file:///tmp/x?region=r", "option \"region\""),
        ("memory://?endpoint=x", "does not apply to memory://"),
        ("az://container?use_emulator=maybe", "must be true or false"),
        ("s3://bucket?max_retries=lots", "max_retries"),
        ("s3://bucket?retry_timeout=soon", "retry_timeout"),
    ];
    for (url, expected) in cases {
        let text = invalid(StoreBuilder::from_url(url).and_then(StoreBuilder::build));
        assert!(text.contains(expected), "{url}: {text}");
    }
    let text = invalid(
        StoreBuilder::from_url("memory://")
            .unwrap()
            .with_prefix("a/../b")
            .build(),
    );
    assert!(text.contains("prefix (dst-dir) \"a/../b\""), "{text}");
}

#[test]
fn a_malformed_endpoint_is_refused_when_the_store_is_built() {
    // object_store would take these and panic at the first signed request.
    for url in [
        "s3://b?endpoint=http://user:pw-Secret-7@127.0.0.1:notaport&access_key_id=a&secret_access_key=s",
        "az://c?endpoint=http://user:pw-Secret-7@127.0.0.1:notaport&account_name=a&access_key=AAAA",
        "gs://b?base_url=http://user:pw-Secret-7@127.0.0.1:notaport",
    ] {
        let text = invalid(StoreBuilder::from_url(url).and_then(StoreBuilder::build));
        assert!(
            text.contains(
                "endpoint http://***@127.0.0.1:notaport is not a valid URL: invalid port number"
            ),
            "{url}: {text}"
        );
        assert_no_secret(&text, &["pw-Secret-7"]);
    }
    let mut s = StorageSettings::new(BucketType::Minio);
    s.bucket_name = Some("b".into());
    s.endpoint = Some("minio:port".into());
    s.access_key = Some(Secret::new("a".to_string()));
    s.secret_key = Some(Secret::new("s".to_string()));
    let text = invalid(StoreBuilder::from_settings(&s).and_then(StoreBuilder::build));
    assert!(text.contains("is not a valid URL"), "{text}");
}

#[test]
fn legacy_settings_name_the_missing_flag() {
    let check = |settings: &StorageSettings, expected: &str| {
        let err = StoreBuilder::from_settings(settings)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
    };
    let mut s = StorageSettings::new(BucketType::Minio);
    check(
        &s,
        "--bucket-name (CNVRG_CAPSULE_BUCKET_NAME; CNVRG_STORAGE_BUCKET in a bucket Secret) is required for bucket type minio",
    );
    s.bucket_name = Some("b".into());
    check(
        &s,
        "--endpoint (CNVRG_CAPSULE_ENDPOINT; CNVRG_STORAGE_ENDPOINT in a bucket Secret) is required for bucket type minio",
    );
    s.endpoint = Some("minio:9000".into());
    check(
        &s,
        "--access-key (CNVRG_CAPSULE_ACCESS_KEY; CNVRG_STORAGE_ACCESS_KEY in a bucket Secret) is required",
    );
    s.access_key = Some(Secret::new("AK"));
    s.secret_key = Some(Secret::new(""));
    check(
        &s,
        "--secret-key (CNVRG_CAPSULE_SECRET_KEY; CNVRG_STORAGE_SECRET_KEY in a bucket Secret) is required",
    );
    s.endpoint = Some("ftp://minio:9000".into());
    s.secret_key = Some(Secret::new("sk-value"));
    check(&s, "must be http:// or https://");

    let mut s = StorageSettings::new(BucketType::Azure);
    s.bucket_name = Some("c".into());
    check(
        &s,
        "--account-name (CNVRG_CAPSULE_ACCOUNT_NAME; CNVRG_STORAGE_AZURE_ACCOUNT_NAME in a bucket Secret) is required for bucket type azure",
    );
    let s = StorageSettings::new(BucketType::Gcp);
    check(
        &s,
        "--bucket-name (CNVRG_CAPSULE_BUCKET_NAME; CNVRG_STORAGE_BUCKET in a bucket Secret) is required for bucket type gcp",
    );
    let mut s = StorageSettings::new(BucketType::Aws);
    s.bucket_name = Some("b".into());
    s.access_key = Some(Secret::new("AKONLY"));
    check(
        &s,
        "--secret-key (CNVRG_CAPSULE_SECRET_KEY; CNVRG_STORAGE_SECRET_KEY in a bucket Secret) is required with --access-key",
    );
}

#[test]
fn legacy_settings_build_the_expected_stores() {
    let mut s = StorageSettings::new(BucketType::Minio);
    s.bucket_name = Some("cnvrg-storage".into());
    s.endpoint = Some("minio.cnvrg:9000".into());
    s.access_key = Some(Secret::new("AKIAMINIO"));
    s.secret_key = Some(Secret::new("minio-secret-key"));
    let store = StoreBuilder::from_settings(&s).unwrap().build().unwrap();
    assert_eq!(
        store.url(),
        "s3://cnvrg-storage (endpoint http://minio.cnvrg:9000)"
    );
    s.use_ssl = Some(true);
    let store = StoreBuilder::from_settings(&s).unwrap().build().unwrap();
    assert_eq!(
        store.url(),
        "s3://cnvrg-storage (endpoint https://minio.cnvrg:9000)"
    );

    let mut s = StorageSettings::new(BucketType::Aws);
    s.bucket_name = Some("prod-backups".into());
    s.region = Some("eu-west-1".into());
    let store = StoreBuilder::from_settings(&s)
        .unwrap()
        .with_prefix("/cnvrg-smart-backups/")
        .build()
        .unwrap();
    assert_eq!(store.url(), "s3://prod-backups/cnvrg-smart-backups");
    assert_eq!(store.prefix(), "cnvrg-smart-backups");

    let mut s = StorageSettings::new(BucketType::Azure);
    s.bucket_name = Some("backups".into());
    s.account_name = Some("acct".into());
    s.account_key = Some(Secret::new("YWNjb3VudC1rZXktc2VjcmV0"));
    let store = StoreBuilder::from_settings(&s).unwrap().build().unwrap();
    assert_eq!(store.url(), "az://backups (account acct)");
    assert_no_secret(&format!("{store:?} {s:?}"), &["YWNjb3VudC1rZXktc2VjcmV0"]);
}

/// A store on a port nothing listens on.
fn assert_unreachable(err: &Error, port: u16, secrets: &[&str]) {
    let text = err.to_string();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(
        text.contains(&format!("cannot reach endpoint http://127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("connection refused"), "{text}");
    assert!(text.starts_with("ping (write) of ping on "), "{text}");
    assert_no_secret(&text, secrets);
    assert_no_secret(&format!("{err:?}"), secrets);
}

#[tokio::test]
async fn unreachable_s3_endpoint_fails_fast_naming_it() {
    let port = closed_port();
    let store = StoreBuilder::from_url(&format!("s3://bucket/p?endpoint=http://127.0.0.1:{port}"))
        .unwrap()
        .with_access_key(
            Secret::new("AKIAUNREACH"),
            Secret::new("unreach-secret-value"),
        )
        .build()
        .unwrap();
    let start = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert_unreachable(&err, port, &["unreach-secret-value", "AKIAUNREACH"]);
    assert!(
        err.to_string()
            .contains(&format!("s3://bucket/p (endpoint http://127.0.0.1:{port})"))
    );
}

#[tokio::test]
async fn unreachable_azure_endpoint_fails_fast_naming_it() {
    let port = closed_port();
    let key = "dW5yZWFjaGFibGUta2V5LXNlY3JldA==";
    let store = StoreBuilder::from_url(&format!(
        "az://container?endpoint=http://127.0.0.1:{port}/acct&account_name=acct"
    ))
    .unwrap()
    .with_option("account_key", key)
    .build()
    .unwrap();
    let start = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert_unreachable(&err, port, &[key]);
}

#[tokio::test]
async fn retries_can_be_capped_for_every_operation() {
    let port = closed_port();
    let store = Store::from_url(&format!(
        "s3://bucket?endpoint=http://127.0.0.1:{port}&access_key=AK&secret_key=secret-value-x&max_retries=1&retry_timeout=2s"
    ))
    .unwrap();
    let start = Instant::now();
    let err = store.list("").await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(err.to_string().starts_with("list on s3://bucket"), "{err}");
    assert_no_secret(&err.to_string(), &["secret-value-x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_keys_on_seaweedfs_say_access_denied() {
    let s3 = SeaweedFs::shared();
    let bucket = unique_name("t");
    s3.create_bucket(&bucket);
    let wrong_secret = "wrong-secret-key-value-123";
    let store = StoreBuilder::from_url(&s3.s3_url(&bucket))
        .unwrap()
        .with_access_key(Secret::new(&s3.access_key), Secret::new(wrong_secret))
        .build()
        .unwrap();
    let err = store.ping().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("access denied: check access key and secret key"),
        "{text}"
    );
    assert_no_secret(&text, &[wrong_secret, &s3.access_key, &s3.secret_key]);
    assert_no_secret(&format!("{err:?}"), &[wrong_secret, &s3.access_key]);

    let store = StoreBuilder::from_url(&s3.s3_url(&bucket))
        .unwrap()
        .with_access_key(Secret::new("AKUNKNOWN123"), Secret::new(&s3.secret_key))
        .build()
        .unwrap();
    let text = store.ping().await.unwrap_err().to_string();
    assert!(text.contains("access denied"), "{text}");
    assert_no_secret(&text, &[&s3.secret_key, "AKUNKNOWN123"]);
}

/// A key that may read but not write: its writes say it may lack the
/// permission, not only that the keys may be wrong; its reads work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_key_is_told_apart_from_a_wrong_one() {
    let s3 = SeaweedFs::shared();
    let bucket = unique_name("t");
    s3.create_bucket(&bucket);
    let store = StoreBuilder::from_url(&s3.s3_url(&bucket))
        .unwrap()
        .with_access_key(
            Secret::new(&s3.reader_access_key),
            Secret::new(&s3.reader_secret_key),
        )
        .build()
        .unwrap();
    assert!(store.list("").await.unwrap().is_empty());
    let err = store
        .put("k", bytes::Bytes::from_static(b"v"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("access denied for put"), "{err}");
    assert!(
        err.contains("a read-only key cannot write or delete"),
        "{err}"
    );
    assert!(!err.contains("<?xml"), "the XML body is condensed: {err}");
    assert_no_secret(&err, &[&s3.reader_secret_key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_on_seaweedfs_is_named() {
    let bucket = unique_name("nosuch");
    let store = s3_builder(&bucket).build().unwrap();
    let err = store.ping().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("bucket {bucket} does not exist")),
        "{text}"
    );
    assert_no_secret(&text, &[&SeaweedFs::shared().secret_key]);
    let err = store.list("").await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("bucket {bucket} does not exist")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_container_on_azurite_is_named() {
    let az = Azurite::shared();
    let container = unique_name("nosuch");
    let store = crate::support::az_builder(&container).build().unwrap();
    let text = store.ping().await.unwrap_err().to_string();
    assert!(
        text.contains(&format!("container {container} does not exist")),
        "{text}"
    );
    assert_no_secret(&text, &[&az.key]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_on_azurite_says_access_denied() {
    let az = Azurite::shared();
    let container = unique_name("t");
    az.create_container(&container);
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=";
    let store = StoreBuilder::from_url(&az.az_url(&container))
        .unwrap()
        .with_access_key(Secret::new(&az.account), Secret::new(wrong))
        .build()
        .unwrap();
    let err = store.ping().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("access denied: check account name and account key"),
        "{text}"
    );
    assert_no_secret(&format!("{text} {err:?}"), &[wrong, &az.key]);
}
