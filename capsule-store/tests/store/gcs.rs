//! Google Cloud Storage: no emulator runs here, so these check the
//! configuration (service account key as JSON or path, bucket from the URL)
//! and that requests go where the key says, using a closed loopback port.

use std::time::{Duration, Instant};

use capsule_store::{BucketType, Error, Secret, StorageSettings, Store, StoreBuilder};

use crate::support::{assert_no_secret, closed_port};

/// A service account key that needs no OAuth and points at `base_url`
/// (object_store honours `disable_oauth` and `gcs_base_url`, as emulators use).
fn key_json(base_url: &str) -> String {
    format!(
        r#"{{"type":"service_account","project_id":"p","private_key_id":"kid-1234","private_key":"","client_email":"capsule@p.iam.gserviceaccount.com","disable_oauth":true,"gcs_base_url":"{base_url}"}}"#
    )
}

async fn assert_requests_go_to(store: &Store, port: u16) {
    let start = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "cannot reach endpoint http://127.0.0.1:{port}: connection refused"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn key_json_content_in_an_option() {
    let port = closed_port();
    let store = StoreBuilder::from_url("gs://backups-bucket/team")
        .unwrap()
        .with_option("key_json", &key_json(&format!("http://127.0.0.1:{port}")))
        .with_prefix("cnvrg-smart-backups")
        .build()
        .unwrap();
    assert_eq!(
        store.url(),
        format!("gs://backups-bucket/team/cnvrg-smart-backups (endpoint http://127.0.0.1:{port})")
    );
    assert_requests_go_to(&store, port).await;
}

#[tokio::test]
async fn key_json_path_from_legacy_settings() {
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.json");
    std::fs::write(&path, key_json(&format!("http://127.0.0.1:{port}"))).unwrap();
    let mut settings = StorageSettings::new(BucketType::Gcp);
    settings.bucket_name = Some("legacy-bucket".into());
    settings.project_id = Some("p".into());
    settings.key_json = Some(Secret::new(path.to_str().unwrap()));
    let store = StoreBuilder::from_settings(&settings)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        store.url(),
        format!("gs://legacy-bucket (endpoint http://127.0.0.1:{port})")
    );
    assert_requests_go_to(&store, port).await;

    // The same key given as content through the legacy field.
    settings.key_json = Some(Secret::new(key_json(&format!("http://127.0.0.1:{port}"))));
    let store = StoreBuilder::from_settings(&settings)
        .unwrap()
        .build()
        .unwrap();
    assert_requests_go_to(&store, port).await;
}

#[test]
fn a_broken_key_is_a_config_error_without_the_key() {
    let private = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7secretbits";
    let json = format!(
        r#"{{"type":"service_account","private_key_id":"kid","private_key":"-----BEGIN PRIVATE KEY-----\n{private}\n-----END PRIVATE KEY-----\n","client_email":"x@p.iam.gserviceaccount.com"}}"#
    );
    let err = StoreBuilder::from_url("gs://b")
        .unwrap()
        .with_option("key_json", &json)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("cannot configure the gs store"), "{text}");
    assert_no_secret(&format!("{text} {err:?}"), &[private]);

    let err = StoreBuilder::from_url("gs://b")
        .unwrap()
        .with_option("key_json", "/no/such/key.json")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/key.json"), "{err}");

    let err = StoreBuilder::from_url("gs://b")
        .unwrap()
        .with_access_key(Secret::new("a"), Secret::new("b"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("gs stores take no access key"), "{err}");

    // Without a key JSON the default endpoint applies.
    let store = StoreBuilder::from_url("gs://plain-bucket/p")
        .unwrap()
        .with_option("bearer_token", "tok-secret-value")
        .build()
        .unwrap();
    assert_eq!(store.url(), "gs://plain-bucket/p");
    assert_no_secret(&format!("{store:?}"), &["tok-secret-value"]);
}
