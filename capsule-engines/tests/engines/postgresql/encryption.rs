//! Encryption at rest with a real PostgreSQL: a marker in the database
//! never appears in the stored bytes; the key restores it exactly; a
//! missing or wrong key fails before the target database is touched.

use std::path::Path;

use age::secrecy::ExposeSecret;
use capsule_core::pipeline::PipelineOptions;
use capsule_core::{
    BackupOptions, Catalog, Compression, Error, Identities, JobContext, NoProgress, Recipients,
    RestoreOptions, RestoreStatus, Statefile, run_backup, run_restore, run_verify,
};

use super::support::*;

/// A key pair: (identities, recipients).
fn keypair() -> (Identities, Recipients) {
    let k = age::x25519::Identity::generate();
    let ids = Identities::parse_file(k.to_string().expose_secret(), "test key").unwrap();
    let to = Recipients::from_keys([k.to_public().to_string()]).unwrap();
    (ids, to)
}

/// A database holding `marker` in a row.
fn marked_database(marker: &str) -> String {
    let db = small_database("enc", 300);
    pg().psql(
        &db,
        &format!("INSERT INTO public.notes VALUES (1000, '{marker}')"),
    );
    db
}

async fn backup_with(catalog: &Catalog, db: &str, pipeline: PipelineOptions) -> Statefile {
    run_backup(
        catalog,
        &engine(db),
        BackupOptions::default()
            .with_description("encryption test")
            .with_pipeline(pipeline),
        &JobContext::new(&NoProgress),
    )
    .await
    .unwrap()
    .statefile
}

/// Every file under `dir` (every object of a `file://` store), and whether
/// one of them holds `marker`.
fn store_holds(dir: &Path, marker: &str) -> (usize, bool) {
    let (mut files, mut found) = (0, false);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let (n, f) = store_holds(&path, marker);
            files += n;
            found |= f;
        } else {
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            found |= bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
        }
    }
    (files, found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marker_never_reaches_the_store_and_the_key_restores_it() {
    let marker = format!("capsule-secret-marker-{}", std::process::id());
    let db = marked_database(&marker);
    let original = content_checksums(&db);
    let (ids, to) = keypair();

    // Control: unencrypted and uncompressed, the marker is in the store, so
    // the scan below can see it.
    let control = FileCatalog::new();
    backup_with(
        &control.catalog,
        &db,
        PipelineOptions::default().with_compression(Compression::None),
    )
    .await;
    assert!(store_holds(control.dir.path(), &marker).1, "control scan");

    // Encrypted, with and without compression: nowhere in any object.
    for compression in [Compression::Zstd, Compression::None] {
        let fc = FileCatalog::new();
        let sf = backup_with(
            &fc.catalog,
            &db,
            PipelineOptions::default()
                .with_compression(compression)
                .with_encryption(to.clone()),
        )
        .await;
        let (files, found) = store_holds(fc.dir.path(), &marker);
        assert!(files >= 3, "statefile and two artifacts: {files}");
        assert!(
            !found,
            "{compression:?}: the marker is readable in the store"
        );
        for a in &sf.artifacts {
            assert!(a.name.ends_with(".age"), "{}", a.name);
            let enc = a.encryption.as_ref().unwrap();
            assert_eq!(enc.recipients, to.to_strings());
        }
        // The statefile names the recipient, never a secret.
        let json = fc.statefile_json(sf.backup_id.as_str()).to_string();
        assert!(json.contains(&to.to_strings()[0]) && !json.contains("AGE-SECRET-KEY"));

        // The key restores it exactly (after the live database changed).
        pg().psql(&db, "DELETE FROM public.notes WHERE id = 1000");
        let catalog = fc.catalog.clone().with_identities(ids.clone());
        let ctx = JobContext::new(&NoProgress);
        run_restore(
            &catalog,
            &engine(&db),
            sf.backup_id.as_str(),
            RestoreOptions::default(),
            &ctx,
        )
        .await
        .unwrap();
        assert_eq!(content_checksums(&db), original);
        assert_eq!(
            pg().psql(&db, "SELECT body FROM public.notes WHERE id = 1000"),
            marker
        );
        for prev in pg().databases_like(&format!("{db}__")) {
            pg().psql("postgres", &format!("DROP DATABASE \"{prev}\""));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_identity_fails_before_the_database_is_touched() {
    let marker = format!("capsule-wrong-key-marker-{}", std::process::id());
    let db = marked_database(&marker);
    let (ids, to) = keypair();
    let (wrong, _) = keypair();
    let fc = FileCatalog::new();
    let sf = backup_with(
        &fc.catalog,
        &db,
        PipelineOptions::default().with_encryption(to.clone()),
    )
    .await;
    let id = sf.backup_id.to_string();
    // The live database moves on: a restore would change it.
    pg().psql(
        &db,
        "INSERT INTO public.notes VALUES (2000, 'after the backup')",
    );
    let live = content_checksums(&db);
    let databases = pg().databases_like(&db);

    let cases = [
        (fc.catalog.clone(), "no identity was given"),
        (
            fc.catalog.clone().with_identities(wrong.clone()),
            "none of the identities given",
        ),
    ];
    for (catalog, want) in cases {
        let ctx = JobContext::new(&NoProgress);
        let err = run_restore(&catalog, &engine(&db), &id, RestoreOptions::default(), &ctx)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::IdentityRequired { .. } | Error::Decrypt { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("backup {id}: ")), "{msg}");
        assert!(msg.contains(".zst.age") && msg.contains(want), "{msg}");
        assert_eq!(content_checksums(&db), live, "the target was touched");
        assert_eq!(
            pg().databases_like(&db),
            databases,
            "a database was created"
        );
        let last = catalog.describe(&id).await.unwrap().restores.pop().unwrap();
        assert_eq!(last.status, RestoreStatus::Failed);

        // A drill fails the same way, before any scratch database exists.
        let err = run_verify(&catalog, &engine(&db), &id, &ctx)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(pg().databases_like(&db), databases);

        // A download too, before any file is written.
        let out = tempfile::tempdir().unwrap();
        let err = catalog
            .download(&id, out.path(), &NoProgress)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        assert!(!out.path().join(&id).exists());
    }

    // With the key: a drill passes, a download is a pg_dump archive.
    let catalog = fc.catalog.clone().with_identities(ids);
    let ctx = JobContext::new(&NoProgress);
    run_verify(&catalog, &engine(&db), &id, &ctx).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let files = catalog
        .download(&id, out.path(), &NoProgress)
        .await
        .unwrap();
    let dump = files.iter().find(|f| f.name.starts_with("dump")).unwrap();
    assert_eq!(dump.path, out.path().join(&id).join("dump.pgc"));
    assert!(dump.report.decrypted);
    assert!(std::fs::read(&dump.path).unwrap().starts_with(b"PGDMP"));
}
