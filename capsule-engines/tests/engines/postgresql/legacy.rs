//! The legacy (v1alpha1) fixture restores with exact counts, on `file://`
//! and on SeaweedFS, and its statefile keeps the legacy format.

use capsule_core::{Catalog, JobContext, NoProgress, RestoreOptions, run_restore};
use capsule_engines::PgRestoreMode;
use capsule_store::Store;
use test_support::fixtures::legacy_bucket_dir;
use test_support::postgres::Postgres;
use test_support::seaweedfs::SeaweedFs;

use super::support::*;

const LEGACY_ID: &str = "postgresql-9nVJ8sGmQbXc3RkHzW2tLp";

fn assert_legacy_counts(db: &str) {
    assert_eq!(count(db, "public.users"), 500);
    assert_eq!(count(db, "public.projects"), 1200);
    assert_eq!(count(db, "public.experiments"), 20000);
    assert_eq!(count(db, "public.project_stats"), 1200);
    assert_eq!(
        pg().psql(
            db,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'experiments'"
        ),
        "cnvrg",
        "ownership comes back (the owner role is created when missing)"
    );
}

async fn restore_legacy(
    catalog: &Catalog,
    db: &str,
    mode: PgRestoreMode,
) -> capsule_core::RestoreReport {
    let engine = engine_with(db, mode, false);
    let progress = NoProgress;
    let ctx = JobContext::new(&progress);
    run_restore(catalog, &engine, LEGACY_ID, RestoreOptions::default(), &ctx)
        .await
        .unwrap()
}

fn legacy_restores(json: &serde_json::Value) -> Vec<(String, String)> {
    json["restores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["date"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_backup_restores_from_a_file_store() {
    let fc = FileCatalog::new();
    copy_tree(&legacy_bucket_dir(), fc.dir.path());
    let db = Postgres::unique_name("legacy_file");
    let report = restore_legacy(&fc.catalog, &db, PgRestoreMode::Safe).await;
    assert_eq!(report.outcome.mode, "safe-swap");
    assert!(
        report.entry.is_none(),
        "legacy entries are written in the legacy shape"
    );
    assert_legacy_counts(&db);

    let json = fc.statefile_json(LEGACY_ID);
    assert_eq!(json["statefileVersion"], "v1alpha1");
    assert_eq!(
        json["bucket"]["secretKey"], "legacySecretKeyExample0123456789abcdef",
        "untouched"
    );
    let restores = legacy_restores(&json);
    assert_eq!(restores.len(), 2);
    assert_eq!(restores[1].1, "finished");
    assert!(restores[1].0.ends_with('Z'));
    // The model still reads it.
    let sf = fc.catalog.load(LEGACY_ID).await.unwrap().statefile;
    assert!(sf.is_legacy());
    assert_eq!(sf.restores.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_backup_restores_from_seaweedfs_and_in_place() {
    let s3 = SeaweedFs::shared();
    s3.create_bucket("engines-legacy");
    let prefix = format!("t{:016x}", rand::random::<u64>());
    let root = Store::from_url(&s3.s3_url_with_credentials("engines-legacy"))
        .unwrap()
        .with_prefix(&prefix)
        .unwrap();
    let fixture = legacy_bucket_dir();
    load_tree(&root, &fixture, &fixture).await;
    let catalog = Catalog::new(root.with_prefix(&format!("{prefix}/{PREFIX}")).unwrap());

    let db = Postgres::unique_name("legacy_s3");
    restore_legacy(&catalog, &db, PgRestoreMode::Safe).await;
    assert_legacy_counts(&db);

    // The legacy in-place behaviour, on the dump's own database name.
    // Only this test uses that name on the shared cluster.
    let live = "cnvrg_production";
    if pg().database_exists(live) {
        pg().psql("postgres", &format!("DROP DATABASE {live}"));
    }
    pg().create_database(live, None);
    pg().psql(live, "CREATE TABLE leftover (x int)");
    let report = restore_legacy(&catalog, live, PgRestoreMode::InPlace).await;
    assert_eq!(report.outcome.mode, "in-place");
    assert_legacy_counts(live);
    assert_eq!(
        pg().psql(
            live,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'leftover'"
        ),
        "0",
        "the database was recreated from the dump"
    );
    let sf = catalog.load(LEGACY_ID).await.unwrap().statefile;
    assert_eq!(sf.restores.len(), 3);
    pg().psql("postgres", &format!("DROP DATABASE {live}"));
}
