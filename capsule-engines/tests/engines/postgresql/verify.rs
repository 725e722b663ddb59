//! Restore drills: pass on a good backup, fail naming the table when the
//! recorded fingerprint differs; the throwaway database is always dropped.

use capsule_core::{Error, JobContext, NoProgress, VerificationStatus, run_verify};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_drill_passes_then_fails_naming_the_table() {
    let db = small_database("verify", 400);
    pg().psql(&db, "SELECT lo_from_bytea(0, '\\x0102')");
    let fc = FileCatalog::new();
    let engine = engine(&db);
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    // Changes to the live database do not matter to a drill.
    pg().psql(&db, "DELETE FROM public.items WHERE id <= 10");

    let progress = NoProgress;
    let ctx = JobContext::new(&progress);
    let ok = run_verify(&fc.catalog, &engine, &id, &ctx).await.unwrap();
    assert!(ok.compared);
    assert_eq!(ok.verification.status, VerificationStatus::Passed);
    let fp = ok.fingerprint.unwrap();
    assert_eq!(fp.counts["public.items"], 400);
    assert_eq!(fp.counts["pg_catalog.pg_largeobject_metadata"], 1);
    assert!(
        pg().databases_like(&format!("{db}__capsule_verify_"))
            .is_empty()
    );

    // Tamper with the recorded fingerprint.
    let mut json = fc.statefile_json(&id);
    json["engine"]["fingerprint"]["counts"]["public.items"] = serde_json::json!(401);
    json["engine"]["fingerprint"]["values"]["public.items_id_seq"] = serde_json::json!("999");
    fc.write_statefile_json(&id, &json);
    let err = run_verify(&fc.catalog, &engine, &id, &ctx)
        .await
        .unwrap_err();
    let Error::VerificationFailed { mismatches, .. } = &err else {
        panic!("expected a verification failure, got {err}");
    };
    assert_eq!(
        mismatches,
        &vec![
            "public.items: expected 401, found 400".to_string(),
            "public.items_id_seq: expected 999, found 400".to_string(),
        ]
    );
    assert!(
        err.to_string()
            .contains("public.items: expected 401, found 400"),
        "{err}"
    );
    assert!(
        pg().databases_like(&format!("{db}__capsule_verify_"))
            .is_empty()
    );

    let sf = fc.catalog.load(&id).await.unwrap().statefile;
    let statuses: Vec<_> = sf.verifications.iter().map(|v| v.status).collect();
    assert_eq!(
        statuses,
        [VerificationStatus::Passed, VerificationStatus::Failed]
    );
    assert_eq!(sf.verifications[1].mismatches.len(), 2);
    assert!(sf.verifications[0].duration_ms.is_some());
    assert!(
        sf.verifications[0]
            .target
            .as_deref()
            .unwrap()
            .contains("__capsule_verify_")
    );
}
