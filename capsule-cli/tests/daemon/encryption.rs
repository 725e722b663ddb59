//! Encryption at rest in the daemon: a service naming recipients in the
//! config file is backed up encrypted; restores decrypt with the daemon's
//! `--identity-file`, and fail before the database is touched without it.

use std::time::Duration;

use age::secrecy::ExposeSecret;
use capsule_core::RestoreStatus;
use serde_json::json;

use crate::support::*;

#[test]
fn configured_recipients_encrypt_and_the_identity_file_restores() {
    let _serial = serial();
    let bucket = Bucket::new();
    let catalog = bucket.catalog("cnvrg-smart-backups");
    let marker = format!("daemon-plaintext-marker-{}", std::process::id());
    let db = database("daemon_enc", 40);
    pg().psql(
        &db,
        &format!("INSERT INTO public.items (name) VALUES ('{marker}')"),
    );
    let keys = tempfile::tempdir().unwrap();
    let key = age::x25519::Identity::generate();
    let public = key.to_public().to_string();
    let identity_file = keys.path().join("key.txt");
    std::fs::write(
        &identity_file,
        format!("{}\n", key.to_string().expose_secret()),
    )
    .unwrap();
    let config = service_toml(
        "cnvrg/pg-enc",
        "PG_URL",
        "1h",
        5,
        &format!("encrypt_to = [\"{public}\"]"),
    );

    // 1. A daemon without an identity: backs up encrypted; a requested
    //    restore fails, recorded, before the database is touched.
    let mut a = Spec::new("a", &bucket.url, "c1")
        .config(config.clone())
        .env("PG_URL", &pg().url(&db))
        .start();
    wait_for_periodic_backup(&catalog, &a);
    let sf = statefiles(&catalog).remove(0);
    let id = sf.backup_id.to_string();
    for art in &sf.artifacts {
        let enc = art.encryption.as_ref().expect("encrypted");
        assert_eq!(enc.recipients, vec![public.clone()], "{}", art.name);
    }
    let objects = block_on(catalog.store().list("")).unwrap();
    for o in &objects {
        let bytes = block_on(catalog.store().get(&o.key)).unwrap().bytes;
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "the marker is readable in {}",
            o.key
        );
    }

    pg().psql(&db, "DELETE FROM public.items WHERE id <= 5");
    let databases = pg().databases_like(&db);
    let r = a.post(&format!("/v1/backups/{id}/restores"), &json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let restore_ended = |n: usize| {
        let sf = by_id(&statefiles(&catalog)).remove(&id).unwrap();
        sf.restores.len() == n
            && sf
                .restores
                .iter()
                .all(|r| matches!(r.status, RestoreStatus::Finished | RestoreStatus::Failed))
    };
    wait_until(
        Duration::from_secs(60),
        "the restore without an identity",
        || restore_ended(1),
        || a.log_tail(40),
    );
    let sf = by_id(&statefiles(&catalog)).remove(&id).unwrap();
    assert_eq!(sf.restores[0].status, RestoreStatus::Failed);
    let error = sf.restores[0].error.clone().unwrap_or_default();
    assert!(error.contains("no identity was given"), "{error}");
    assert_eq!(row_count(&db), 36, "the target was touched");
    assert_eq!(pg().databases_like(&db), databases);
    a.terminate(Duration::from_secs(30));

    // 2. With --identity-file: restored.
    let b = Spec::new("b", &bucket.url, "c1")
        .config(config)
        .env("PG_URL", &pg().url(&db))
        .arg("--identity-file")
        .arg(identity_file.to_str().unwrap())
        .start();
    let r = b.post(&format!("/v1/backups/{id}/restores"), &json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    wait_until(
        Duration::from_secs(60),
        "the restore with the identity",
        || restore_ended(2),
        || b.log_tail(40),
    );
    let sf = by_id(&statefiles(&catalog)).remove(&id).unwrap();
    assert_eq!(
        sf.restores[1].status,
        RestoreStatus::Finished,
        "{:#?}",
        sf.restores
    );
    assert_eq!(row_count(&db), 41);
    assert_eq!(
        pg().psql(
            &db,
            &format!("SELECT count(*) FROM public.items WHERE name = '{marker}'")
        ),
        "1"
    );
    assert!(!b.log().contains("AGE-SECRET-KEY"));
}
