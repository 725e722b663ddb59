//! Restore drills: scratch indices, counts and the sample compared, clean-up.

use capsule_core::{Engine, Error, JobContext, NoProgress, VerificationStatus, run_verify};
use test_support::opensearch::OpenSearch;

use super::support::*;

fn index_names(os: &OpenSearch) -> Vec<String> {
    let cat = get(os, "/_cat/indices?format=json&h=index&expand_wildcards=all");
    let mut names: Vec<String> = cat
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_drill_restores_compares_and_cleans_up() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("events", 1_500, 120));
    os.bulk(&generated_docs(".audit", 7, 30));
    os.ok(
        "POST",
        "/_aliases",
        r#"{"actions":[{"add":{"index":"events","alias":"current"}}]}"#,
    );
    os.ok("PUT", "/empty", "");
    let fc = FileCatalog::new();
    let engine = engine(&os.url, "events,.audit,empty");
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    let before = index_names(&os);

    let ctx = JobContext::new(&NoProgress);
    let v = run_verify(&fc.catalog, &engine, &id, &ctx).await.unwrap();
    assert!(v.compared);
    assert_eq!(v.verification.status, VerificationStatus::Passed);
    assert!(
        v.verification
            .target
            .as_deref()
            .unwrap()
            .contains("scratch")
    );
    let fp = v.fingerprint.unwrap();
    assert_eq!(fp.counts["events"], 1_500);
    assert_eq!(fp.counts[".audit"], 7);
    assert_eq!(fp.counts["empty"], 0);
    assert_eq!(index_names(&os), before, "scratch indices are deleted");
    assert_eq!(count(&os, "current"), 1_500, "live aliases are untouched");
    assert_eq!(
        fc.statefile_json(&id)["verifications"][0]["status"],
        "passed"
    );
}

#[tokio::test]
async fn a_drill_reports_counts_and_samples_that_differ() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("events", 300, 50));
    let fc = FileCatalog::new();
    let engine = engine(&os.url, "events");
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    let mut sf = fc.statefile_json(&id);
    sf["engine"]["fingerprint"]["counts"]["events"] = 301.into();
    sf["engine"]["fingerprint"]["values"]["events/sample"] =
        "64 docs sha256:0000000000000000".into();
    fc.write_statefile_json(&id, &sf);

    let ctx = JobContext::new(&NoProgress);
    let e = run_verify(&fc.catalog, &engine, &id, &ctx)
        .await
        .unwrap_err();
    let Error::VerificationFailed { mismatches, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(mismatches.len(), 2, "{mismatches:?}");
    assert!(
        mismatches[0].starts_with("events: expected 301, found 300"),
        "{mismatches:?}"
    );
    assert!(
        mismatches[1].starts_with(
            "events/sample: expected 64 docs sha256:0000000000000000, found 64 docs sha256:"
        ),
        "{mismatches:?}"
    );
    let recorded = &fc.statefile_json(&id)["verifications"][0];
    assert_eq!(recorded["status"], "failed");
    assert_eq!(recorded["mismatches"].as_array().unwrap().len(), 2);
    assert_eq!(index_names(&os), ["events"]);
}

#[tokio::test]
async fn the_live_fingerprint_matches_the_backup() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("a", 700, 40));
    os.bulk(&generated_docs("b", 20, 40));
    let fc = FileCatalog::new();
    let engine = engine(&os.url, "a,b");
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let recorded = report.statefile.engine.unwrap().fingerprint.unwrap();
    let ctx = JobContext::new(&NoProgress);
    assert_eq!(engine.fingerprint(&ctx).await.unwrap(), recorded);
    os.bulk("{\"index\":{\"_index\":\"b\",\"_id\":\"d3\"}}\n{\"changed\":true}");
    let live = engine.fingerprint(&ctx).await.unwrap();
    assert_eq!(live.counts, recorded.counts);
    assert_ne!(live.values["b/sample"], recorded.values["b/sample"]);
}
