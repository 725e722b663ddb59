//! https endpoints verify the server's certificate; a private CA is
//! trusted only when given (`ca_file`). SeaweedFS serves S3 over https with
//! a certificate signed by a throwaway CA of its own.

use std::time::{Duration, Instant};

use bytes::Bytes;
use capsule_store::{
    BucketType, Error, Secret, StorageSettings, Store, StoreBuilder, UploadOptions,
};
use test_support::seaweedfs::SeaweedFs;
use test_support::tls::TestCa;

use crate::support::{assert_no_secret, pattern, unique_name};

/// A fresh bucket on the shared https SeaweedFS and its https URL
/// (credentials not included, CA not trusted).
fn https_bucket() -> (&'static SeaweedFs, String) {
    let s3 = SeaweedFs::shared_tls();
    let bucket = unique_name("tls");
    s3.create_bucket(&bucket);
    let url = s3.s3_https_url(&bucket);
    (s3, url)
}

fn with_keys(builder: StoreBuilder, s3: &SeaweedFs) -> StoreBuilder {
    builder.with_access_key(Secret::new(&s3.access_key), Secret::new(&s3.secret_key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_naming_the_endpoint() {
    let (s3, url) = https_bucket();
    let store = with_keys(StoreBuilder::from_url(&url).unwrap(), s3)
        .build()
        .unwrap();
    let start = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    let text = err.to_string();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(
        text.contains(&format!(
            "the TLS certificate of endpoint {} is not trusted (signed by an unknown authority)",
            s3.https_endpoint()
        )) && text.contains("--ca-file"),
        "{text}"
    );
    assert_no_secret(&text, &[&s3.secret_key, &s3.access_key]);

    // Another CA is no better than none.
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new("not the server's CA").write_pem(&dir.path().join("other.pem"));
    let store = with_keys(StoreBuilder::from_url(&url).unwrap(), s3)
        .with_option("ca_file", other.to_str().unwrap())
        .build()
        .unwrap();
    let err = store.list("").await.unwrap_err().to_string();
    assert!(err.contains("is not trusted"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_file_option_trusts_a_private_ca() {
    let (s3, url) = https_bucket();
    let ca = s3.ca_file();
    // As a URL option.
    let store = with_keys(
        StoreBuilder::from_url(&format!("{url}&ca_file={}", ca.display())).unwrap(),
        s3,
    )
    .with_prefix("p")
    .build()
    .unwrap();
    store.ping().await.unwrap();
    store
        .put("a/small.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let big = pattern(12 << 20, 7);
    let mut upload = store
        .upload("a/big.bin", UploadOptions::default())
        .await
        .unwrap();
    upload.write(Bytes::from(big.clone())).await.unwrap();
    upload.finish().await.unwrap();
    let keys: Vec<String> = store
        .list("a")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(store.get("a/big.bin").await.unwrap().bytes, big);

    // As a builder option, with a bundle holding another CA first.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        format!(
            "{}{}",
            TestCa::new("unrelated").pem(),
            std::fs::read_to_string(&ca).unwrap()
        ),
    )
    .unwrap();
    let store = with_keys(StoreBuilder::from_url(&url).unwrap(), s3)
        .with_option("ca-file", bundle.to_str().unwrap())
        .with_prefix("p")
        .build()
        .unwrap();
    assert_eq!(
        store.get("a/small.json").await.unwrap().bytes,
        Bytes::from_static(b"{}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_settings_use_ssl_and_ca_file() {
    let (s3, url) = https_bucket();
    let bucket = url
        .strip_prefix("s3://")
        .and_then(|u| u.split('?').next())
        .unwrap();
    let mut s = StorageSettings::new(BucketType::Minio);
    s.endpoint = Some(format!("127.0.0.1:{}", s3.https_port.unwrap()));
    s.bucket_name = Some(bucket.to_string());
    s.access_key = Some(Secret::new(&s3.access_key));
    s.secret_key = Some(Secret::new(&s3.secret_key));
    s.use_ssl = Some(true);
    s.ca_file = Some(s3.ca_file());
    let store = StoreBuilder::from_settings(&s).unwrap().build().unwrap();
    assert_eq!(
        store.url(),
        format!("s3://{bucket} (endpoint {})", s3.https_endpoint())
    );
    store.ping().await.unwrap();
    // Without the CA: refused.
    s.ca_file = None;
    let store = StoreBuilder::from_settings(&s).unwrap().build().unwrap();
    let err = store.ping().await.unwrap_err().to_string();
    assert!(err.contains("is not trusted"), "{err}");
}

fn invalid(result: Result<Store, Error>) -> String {
    match result {
        Err(e @ Error::InvalidConfig { .. }) => e.to_string(),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn ca_file_mistakes_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = "s3://b?endpoint=https://127.0.0.1:9&access_key=AK&secret_key=sk-value";
    let missing = dir.path().join("missing.pem");
    let err = invalid(Store::from_url(&format!(
        "{base}&ca_file={}",
        missing.display()
    )));
    assert!(
        err.contains(&format!("cannot read the CA file {}", missing.display()))
            && err.contains("option ca_file"),
        "{err}"
    );
    let not_pem = dir.path().join("key.txt");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let err = invalid(Store::from_url(&format!(
        "{base}&ca_file={}",
        not_pem.display()
    )));
    assert!(err.contains("holds no PEM certificate"), "{err}");
    assert_no_secret(&err, &["sk-value"]);
    // Local stores have no TLS.
    let err = invalid(
        StoreBuilder::from_url(&format!("file://{}", dir.path().display()))
            .unwrap()
            .with_option("ca_file", missing.to_str().unwrap())
            .build(),
    );
    assert!(err.contains("does not apply to file://"), "{err}");
}

/// Azure and GCS clients get the CA too: pointed at the https SeaweedFS
/// (which answers them with S3 errors), the TLS handshake fails without
/// the CA and succeeds with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_and_gcs_clients_trust_the_ca_file_too() {
    let s3 = SeaweedFs::shared_tls();
    let endpoint = s3.https_endpoint();
    let key_json = format!(
        r#"{{"type":"service_account","project_id":"p","private_key_id":"kid-1234","private_key":"","client_email":"capsule@p.iam.gserviceaccount.com","disable_oauth":true,"gcs_base_url":"{endpoint}"}}"#
    );
    let builders = [
        StoreBuilder::from_url(&format!(
            "az://c?endpoint={endpoint}/acct&account_name=acct&max_retries=0"
        ))
        .unwrap()
        .with_option("account_key", "YWNjb3VudC1rZXk="),
        StoreBuilder::from_url("gs://b?max_retries=0")
            .unwrap()
            .with_option("key_json", &key_json),
    ];
    for builder in builders {
        let err = builder.clone().build().unwrap().list("").await.unwrap_err();
        assert!(err.to_string().contains("is not trusted"), "{err}");
        let err = builder
            .with_option("ca_file", s3.ca_file().to_str().unwrap())
            .build()
            .unwrap()
            .list("")
            .await
            .unwrap_err()
            .to_string();
        // Through TLS, refused by S3's authentication.
        assert!(
            err.contains("403 Forbidden") && !err.contains("certificate"),
            "{err}"
        );
    }
}
