//! Rejections, wrong credentials, unreachable servers, missing patterns,
//! corrupt artifacts, existing indices, refused documents.

use std::time::{Duration, Instant};

use capsule_core::{Error, JobContext, NoProgress, Status};
use capsule_engines::EsEngine;
use test_support::opensearch::{FaultProxy, Faults, OpenSearch};
use test_support::process::free_port;

use super::support::*;

#[tokio::test]
async fn rejected_bulk_requests_and_documents_are_retried_and_nothing_is_lost() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("load", 3_000, 100));
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&os.url, "load")).await.unwrap();
    let id = report.statefile.backup_id.to_string();

    let proxy = FaultProxy::start(
        os.port,
        Faults {
            reject_bulk_requests: 3,
            reject_bulk_items: 2,
            ..Faults::default()
        },
    );
    let engine = EsEngine::new(
        options(&proxy.url, "")
            .with_rename("load:load-copy".parse().unwrap())
            .with_bulk_docs(500)
            .with_bulk_workers(2),
    );
    let source = fc.catalog.artifact_source(&id).await.unwrap();
    let ctx = JobContext::new(&NoProgress);
    let restored = engine.restore_with_report(&source, &ctx).await.unwrap();
    assert_eq!(proxy.rejected_requests(), 3);
    // Every second document of two requests (first sends or retries).
    assert!(proxy.rejected_items() >= 250, "{}", proxy.rejected_items());
    assert_eq!(restored.retried_documents, proxy.rejected_items() as u64);
    assert_eq!(restored.documents, 3_000);
    assert_eq!(count(&os, "load-copy"), 3_000);
    assert_eq!(documents(&os, "load-copy"), documents(&os, "load"));
}

#[tokio::test]
async fn wrong_credentials_fail_clearly_without_showing_the_password() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("private", 10, 50));
    let proxy = FaultProxy::start(
        os.port,
        Faults {
            basic_auth: Some(("elastic".into(), "right-Pa55".into())),
            ..Faults::default()
        },
    );
    let fc = FileCatalog::new();
    let url = format!("http://elastic:wr0ng-Pa55@127.0.0.1:{}", proxy.port);
    let engine = engine(&url, "private");
    assert_eq!(
        engine.to_string(),
        format!("elasticsearch(127.0.0.1:{})", proxy.port)
    );
    assert!(!format!("{engine:?}").contains("wr0ng-Pa55"));
    let e = backup(&fc.catalog, &engine).await.unwrap_err().to_string();
    assert!(
        e.contains("authentication failed for user \"elastic\""),
        "{e}"
    );
    assert!(!e.contains("wr0ng-Pa55"), "{e}");
    let listed = fc.catalog.list(&Default::default()).await.unwrap();
    let sf = listed[0].statefile.as_ref().unwrap();
    assert_eq!(sf.status, Status::Failed);
    let raw = std::fs::read_to_string(fc.object_path(&sf.backup_id.to_string(), "statefile.json"))
        .unwrap();
    assert!(
        !raw.contains("wr0ng-Pa55") && !raw.contains("right-Pa55"),
        "{raw}"
    );

    let anonymous = engine_for(&proxy.url);
    let e = backup(&fc.catalog, &anonymous)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("requires authentication"), "{e}");

    let right = format!("http://elastic:right-Pa55@127.0.0.1:{}", proxy.port);
    backup(&fc.catalog, &super::support::engine(&right, "private"))
        .await
        .unwrap();
}

fn engine_for(url: &str) -> EsEngine {
    engine(url, "private")
}

#[tokio::test]
async fn an_unreachable_server_fails_fast_and_clearly() {
    let port = free_port();
    let fc = FileCatalog::new();
    let engine = engine(&format!("http://elastic:s3cret-Pw@127.0.0.1:{port}"), "");
    let started = Instant::now();
    let e = backup(&fc.catalog, &engine).await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.contains(&format!(
            "elasticsearch(127.0.0.1:{port}): cannot connect to http://127.0.0.1:{port}"
        )),
        "{e}"
    );
    assert!(e.to_lowercase().contains("connection refused"), "{e}");
    assert!(!e.contains("s3cret-Pw"), "{e}");
}

#[tokio::test]
async fn a_pattern_matching_nothing_is_named() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("app", 3, 20));
    let fc = FileCatalog::new();
    let e = backup(&fc.catalog, &engine(&os.url, "app,nosuch,gone-*"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains(r#"no index matches "nosuch", "gone-*""#), "{e}");
}

#[tokio::test]
async fn a_corrupt_artifact_is_refused_before_anything_is_created() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("intact", 2_000, 200));
    os.ok(
        "PUT",
        "/_index_template/intact-tpl",
        r#"{"index_patterns":["intact-*"],"template":{"settings":{"index.number_of_shards":1}}}"#,
    );
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&os.url, "intact"))
        .await
        .unwrap();
    let id = report.statefile.backup_id.to_string();
    os.ok("DELETE", "/_index_template/intact-tpl", "");
    let path = fc.object_path(&id, "documents.ndjson.zst");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();

    let renamed = EsEngine::new(options(&os.url, "").with_rename("intact:copy".parse().unwrap()));
    let e = restore(&fc.catalog, &renamed, &id).await.unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains("documents.ndjson.zst"), "{e}");
    assert!(!exists(&os, "copy"));
    assert_eq!(
        os.request("GET", "/_index_template/intact-tpl", "").status,
        404
    );
    let entry = &fc.statefile_json(&id)["restores"][0];
    assert_eq!(entry["status"], "failed");
}

#[tokio::test]
async fn an_existing_index_is_an_error_unless_replace() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("live", 3, 20));
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&os.url, "live")).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    os.bulk(&generated_docs("live", 5, 20));
    let e = restore(&fc.catalog, &engine(&os.url, ""), &id)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("index live exists"), "{e}");
    assert!(
        e.contains("--replace") && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(count(&os, "live"), 5);
    let replace = EsEngine::new(options(&os.url, "").with_replace(true));
    let done = restore(&fc.catalog, &replace, &id).await.unwrap();
    assert_eq!(done.outcome.mode, "replace");
    assert_eq!(count(&os, "live"), 3);
}

#[tokio::test]
async fn refused_documents_are_reported_and_the_restore_is_undone() {
    let os = OpenSearch::start();
    let mut docs = generated_docs("src", 3, 20);
    docs.push_str(
        "{\"index\":{\"_index\":\"src\",\"_id\":\"routed\",\"routing\":\"r1\"}}\n{\"n\":1}\n",
    );
    os.bulk(&docs);
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&os.url, "src")).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    // On the target, a template now demands routing for refused-*.
    os.ok(
        "PUT",
        "/_index_template/strict-routing",
        r#"{"index_patterns":["refused-*"],"priority":100,"template":{"mappings":{"_routing":{"required":true}}}}"#,
    );
    let renamed =
        EsEngine::new(options(&os.url, "").with_rename("src:refused-src".parse().unwrap()));
    let e = restore(&fc.catalog, &renamed, &id)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 of 4 documents were refused"), "{e}");
    for id in ["d0", "d1", "d2"] {
        assert!(
            e.contains(&format!(
                "refused-src/{id}: HTTP 400: routing_missing_exception"
            )),
            "{e}"
        );
    }
    assert!(
        !exists(&os, "refused-src"),
        "a failed restore removes what it created"
    );
}
