//! `--replace`: the documents are loaded into a staging index and checked
//! before the existing index is deleted; a restore that fails before that
//! (server errors, a cut connection, an artifact found corrupt late,
//! cancellation) leaves the existing index as it was and no staging index;
//! one that fails during the swap keeps the restored documents and says
//! where they are.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use capsule_core::{
    ArtifactSource, ByteStream, Error, JobContext, NoProgress, Progress, RestoreOptions, Statefile,
    run_restore,
};
use capsule_engines::{EsEngine, EsOptions, EsRename};
use serde_json::{Value, json};
use test_support::opensearch::{BulkFailure, FaultProxy, Faults, OpenSearch};
use tokio::io::{AsyncRead, ReadBuf};

use super::support::*;

const TEMPLATE: &str = "/_index_template/live-tpl";

/// Index `live` (settings, mappings, aliases, routing, numbers beyond
/// 2^53) and template `live-tpl`, backed up; then changed on the server
/// (documents added, deleted and updated, an alias and the template
/// changed), so that the live state differs from the backup.
struct Scenario {
    os: OpenSearch,
    fc: FileCatalog,
    id: String,
    backed_up: Vec<Value>,
}

impl Scenario {
    async fn new(docs: usize) -> Scenario {
        let os = OpenSearch::start();
        os.ok(
            "PUT",
            "/live",
            &json!({
                "settings": {"index.number_of_shards": 2, "index.number_of_replicas": 1, "index.refresh_interval": "5s"},
                "mappings": {"properties": {"n": {"type": "long"}, "f": {"type": "double"}, "text": {"type": "text"}}},
                "aliases": {"live-read": {"filter": {"range": {"f": {"gte": 10}}}}, "live-write": {"is_write_index": true}},
            })
            .to_string(),
        );
        os.bulk(&generated_docs("live", docs, 120));
        os.bulk(
            "{\"index\":{\"_index\":\"live\",\"_id\":\"routed\",\"routing\":\"r1\"}}\n{\"n\":9223372036854775807,\"f\":1.10,\"text\":\"Zoë ☃\"}",
        );
        os.ok(
            "PUT",
            TEMPLATE,
            r#"{"index_patterns":["live-*"],"priority":7,"template":{"settings":{"index.number_of_shards":1}}}"#,
        );
        let fc = FileCatalog::new();
        let report = backup(&fc.catalog, &engine(&os.url, "live")).await.unwrap();
        let id = report.statefile.backup_id.to_string();
        let backed_up = snapshot(&os, "live");

        os.bulk(&generated_docs("live", 5, 30).replace("\"d", "\"new-d"));
        os.bulk("{\"index\":{\"_index\":\"live\",\"_id\":\"d3\"}}\n{\"n\":3,\"changed\":true}");
        os.ok("DELETE", "/live/_doc/d4?refresh=true", "");
        os.ok(
            "POST",
            "/_aliases",
            r#"{"actions":[{"add":{"index":"live","alias":"live-extra"}}]}"#,
        );
        os.ok(
            "PUT",
            TEMPLATE,
            r#"{"index_patterns":["live-*"],"priority":8,"template":{"settings":{"index.number_of_shards":1}}}"#,
        );
        assert_ne!(snapshot(&os, "live"), backed_up);
        Scenario {
            os,
            fc,
            id,
            backed_up,
        }
    }

    fn replace_options(&self, url: &str) -> EsOptions {
        options(url, "")
            .with_replace(true)
            .with_bulk_docs(200)
            .with_bulk_workers(2)
            .with_retries(1)
    }

    /// Everything a failed restore must leave as it found it.
    fn state(&self) -> State {
        State {
            live: snapshot(&self.os, "live"),
            template: get(&self.os, TEMPLATE),
            indices: index_names(&self.os),
        }
    }
}

/// The indices and the template in full, the documents as a digest (a
/// failure message stays short).
#[derive(PartialEq)]
struct State {
    live: Vec<Value>,
    template: Value,
    indices: Vec<String>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use sha2::Digest;
        let docs = sha2::Sha256::digest(self.live[0].to_string().as_bytes());
        f.debug_struct("State")
            .field(
                "documents",
                &format!(
                    "{} sha256:{}",
                    self.live[0].as_object().map_or(0, |o| o.len()),
                    hex::encode(&docs[..8])
                ),
            )
            .field("definition", &self.live[1])
            .field("live-read", &self.live[2])
            .field("template", &self.template)
            .field("indices", &self.indices)
            .finish()
    }
}

/// The documents, the definition (settings, mappings, aliases) and the
/// filtered alias's count of `index`.
fn snapshot(os: &OpenSearch, index: &str) -> Vec<Value> {
    vec![
        serde_json::to_value(documents(os, index)).unwrap(),
        definition(os, index),
        json!(count(os, "live-read")),
    ]
}

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

fn staging_indices(os: &OpenSearch) -> Vec<String> {
    index_names(os)
        .into_iter()
        .filter(|n| n.starts_with("capsule-restore-"))
        .collect()
}

#[tokio::test]
async fn replace_loads_beside_checks_then_swaps_and_equals_the_backup() {
    let s = Scenario::new(1_500).await;
    let replace = EsEngine::new(s.replace_options(&s.os.url));
    let done = restore(&s.fc.catalog, &replace, &s.id).await.unwrap();
    assert_eq!(done.outcome.mode, "replace");
    // Documents byte for byte, settings, mappings, aliases (the one added
    // after the backup is gone with the replaced index), the filter.
    assert_eq!(snapshot(&s.os, "live"), s.backed_up);
    assert!(!exists(&s.os, "live-extra"));
    assert_eq!(staging_indices(&s.os), Vec::<String>::new());
    assert_eq!(
        get(&s.os, TEMPLATE)["index_templates"][0]["index_template"]["priority"],
        7
    );
    let entry = &s.fc.statefile_json(&s.id)["restores"][0];
    assert_eq!(
        (&entry["status"], &entry["mode"]),
        (&json!("finished"), &json!("replace"))
    );

    // With --rename: the renamed target is replaced alike; the report says so.
    s.os.bulk(&generated_docs("copy-live", 3, 10));
    let renamed = EsEngine::new(
        s.replace_options(&s.os.url)
            .with_rename("^live:copy-live".parse().unwrap()),
    );
    let source = s.fc.catalog.artifact_source(&s.id).await.unwrap();
    let ctx = JobContext::new(&NoProgress);
    let report = renamed.restore_with_report(&source, &ctx).await.unwrap();
    assert_eq!(report.replaced, ["copy-live"]);
    assert_eq!(report.documents, 1_501);
    assert_eq!(documents(&s.os, "copy-live"), documents(&s.os, "live"));
    assert_eq!(count(&s.os, "copy-live-read"), count(&s.os, "live-read"));
    assert_eq!(staging_indices(&s.os), Vec::<String>::new());
}

/// A restore of only some of the backup's indices (`--indices`) leaves
/// the cluster's templates alone: one that differs from the backup's is no
/// conflict without `--replace`, and is not overwritten with it. A
/// restore of all of them still restores it.
#[tokio::test]
async fn a_restore_of_some_indices_leaves_the_templates_alone() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("one", 20, 30));
    os.bulk(&generated_docs("two", 10, 30));
    let tpl = |priority: u32| {
        format!(
            r#"{{"index_patterns":["live-*"],"priority":{priority},"template":{{"settings":{{"index.number_of_shards":1}}}}}}"#
        )
    };
    os.ok("PUT", TEMPLATE, &tpl(7));
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&os.url, "one,two"))
        .await
        .unwrap();
    let id = report.statefile.backup_id.to_string();
    os.ok("PUT", TEMPLATE, &tpl(8));
    let template = get(&os, TEMPLATE);
    let some = |o: EsOptions| {
        EsEngine::new(
            o.with_indices("one")
                .with_rename("^(.+)$:sub-$1".parse().unwrap()),
        )
    };
    restore(&fc.catalog, &some(options(&os.url, "")), &id)
        .await
        .unwrap();
    assert_eq!(count(&os, "sub-one"), 20);
    assert!(!exists(&os, "sub-two"));
    assert_eq!(get(&os, TEMPLATE), template);
    let replace = options(&os.url, "").with_replace(true);
    let done = restore(&fc.catalog, &some(replace.clone()), &id)
        .await
        .unwrap();
    assert_eq!(done.outcome.mode, "replace");
    assert_eq!(get(&os, TEMPLATE), template);
    // All of them (the same pattern as the backup): the template too.
    let all = EsEngine::new(
        replace
            .with_indices("one,two")
            .with_rename("^(.+)$:all-$1".parse().unwrap()),
    );
    restore(&fc.catalog, &all, &id).await.unwrap();
    assert_eq!(
        get(&os, TEMPLATE)["index_templates"][0]["index_template"]["priority"],
        7
    );
}

/// A [`Progress`] that cancels the job once `after` bytes were loaded.
struct CancelAfter {
    after: u64,
    seen: AtomicU64,
    cancel: tokio_util::sync::CancellationToken,
}

impl Progress for CancelAfter {
    fn advance(&self, bytes: u64) {
        if self.seen.fetch_add(bytes, Ordering::SeqCst) + bytes >= self.after {
            self.cancel.cancel();
        }
    }
}

/// An artifact source whose documents stream fails after `after` bytes,
/// as the store's stream does when a checksum no longer matches: an
/// artifact found corrupt after the restore began.
struct CorruptLate<S> {
    inner: S,
    after: usize,
}

#[async_trait]
impl<S: ArtifactSource> ArtifactSource for CorruptLate<S> {
    fn statefile(&self) -> &Statefile {
        self.inner.statefile()
    }
    async fn verify(&self, name: &str) -> capsule_core::Result<()> {
        self.inner.verify(name).await
    }
    async fn open(&self, name: &str) -> capsule_core::Result<ByteStream> {
        let stream = self.inner.open(name).await?;
        if !name.starts_with("documents") {
            return Ok(stream);
        }
        Ok(Box::new(FailAfter {
            inner: stream,
            left: self.after,
        }))
    }
}

struct FailAfter {
    inner: ByteStream,
    left: usize,
}

impl AsyncRead for FailAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "sha256 mismatch (injected)",
            )));
        }
        let n = buf.remaining().min(self.left);
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(n));
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let filled = limited.filled().len();
        if let std::task::Poll::Ready(Ok(())) = &poll {
            buf.advance(filled);
            self.left -= filled;
        }
        poll
    }
}

#[tokio::test]
async fn a_restore_failing_before_the_swap_leaves_the_existing_index_intact() {
    let s = Scenario::new(3_000).await;
    let before = s.state();
    let intact = "nothing was replaced: the existing index live is intact";
    let source = s.fc.catalog.artifact_source(&s.id).await.unwrap();

    // The server fails, or the connection is cut, from the 4th _bulk on.
    for failure in [BulkFailure::ServerError, BulkFailure::CutConnection] {
        let proxy = FaultProxy::start(
            s.os.port,
            Faults {
                fail_bulk_from: Some(3),
                bulk_failure: failure,
                ..Faults::default()
            },
        );
        let engine = EsEngine::new(s.replace_options(&proxy.url));
        let e = restore(&s.fc.catalog, &engine, &s.id).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("POST /_bulk") && text.ends_with(intact),
            "{failure:?}: {text}"
        );
        if failure == BulkFailure::ServerError {
            assert!(
                text.contains("HTTP 500: injected_failure_exception"),
                "{text}"
            );
        }
        assert!(
            proxy.bulk_requests() > 3 && proxy.failed() >= 1,
            "{failure:?}"
        );
        assert_eq!(s.state(), before, "{failure:?}: the server is as it was");
    }

    // The documents artifact turns out corrupt half-way through the load.
    let engine = EsEngine::new(s.replace_options(&s.os.url));
    let corrupt = CorruptLate {
        inner: s.fc.catalog.artifact_source(&s.id).await.unwrap(),
        after: 200_000,
    };
    let ctx = JobContext::new(&NoProgress);
    let e = engine
        .restore_with_report(&corrupt, &ctx)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("documents.ndjson.zst is corrupt") && text.ends_with(intact),
        "{text}"
    );
    assert_eq!(s.state(), before, "corrupt late: the server is as it was");

    // Cancelled mid-load: the engine stops, undoes, and says so.
    let progress = CancelAfter {
        after: 150_000,
        seen: AtomicU64::new(0),
        cancel: tokio_util::sync::CancellationToken::new(),
    };
    let mut ctx = JobContext::new(&progress);
    ctx.cancel = progress.cancel.clone();
    let e = engine.restore_with_report(&source, &ctx).await.unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)), "{e:?}");
    assert!(e.to_string().contains(intact), "{e}");
    assert_eq!(s.state(), before, "cancelled: the server is as it was");

    // Cancelled through the core, as Ctrl-C does: the core gives the
    // engine its cancel grace, so the clean-up is done when run_restore
    // returns (a CLI exits right after: nothing may be left to the
    // background).
    let progress = CancelAfter {
        after: 150_000,
        seen: AtomicU64::new(0),
        cancel: tokio_util::sync::CancellationToken::new(),
    };
    let mut ctx = JobContext::new(&progress);
    ctx.cancel = progress.cancel.clone();
    let e = run_restore(
        &s.fc.catalog,
        &engine,
        &s.id,
        RestoreOptions::default(),
        &ctx,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)), "{e:?}");
    assert!(e.to_string().contains(intact), "{e}");
    assert_eq!(s.state(), before, "cancelled through the core: undone");
    let restores = s.fc.statefile_json(&s.id)["restores"].clone();
    assert!(
        restores
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "failed"),
        "{restores:#}"
    );
}

#[tokio::test]
async fn a_failed_swap_keeps_the_restored_documents_and_names_them() {
    let os = OpenSearch::start();
    os.bulk(&generated_docs("alpha", 700, 80));
    os.bulk(&generated_docs("beta", 300, 80));
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&os.url, "alpha,beta"))
        .await
        .unwrap();
    let id = report.statefile.backup_id.to_string();
    let alpha = documents(&os, "alpha");
    os.bulk(&generated_docs("alpha", 2, 10).replace("\"d", "\"late-d"));
    os.bulk(&generated_docs("beta", 2, 10).replace("\"d", "\"late-d"));
    let beta_now = documents(&os, "beta");

    // osmem-server has no _clone: the swap is a _reindex, which fails.
    let proxy = FaultProxy::start(
        os.port,
        Faults {
            fail_paths: vec!["/_reindex".into()],
            ..Faults::default()
        },
    );
    let engine = EsEngine::new(options(&proxy.url, "").with_replace(true).with_retries(0));
    let e = restore(&fc.catalog, &engine, &id)
        .await
        .unwrap_err()
        .to_string();
    let staging = staging_indices(&os);
    assert_eq!(staging.len(), 1, "{staging:?}");
    let staging = &staging[0];
    assert!(staging.starts_with("capsule-restore-") && staging.ends_with("-alpha"));
    for part in [
        "cannot replace index alpha: POST /_reindex",
        "HTTP 500: injected_failure_exception",
        &format!(
            "index alpha was deleted and its restored documents (700, checked against the backup) are kept in index {staging}"
        ),
        "not replaced, intact: beta",
        &format!("run it again, then delete index {staging}"),
    ] {
        assert!(e.contains(part), "{part:?} in {e}");
    }
    assert!(!exists(&os, "alpha"), "no incomplete copy under the name");
    assert_eq!(
        documents(&os, staging),
        alpha,
        "the restored documents are kept"
    );
    assert_eq!(documents(&os, "beta"), beta_now, "beta is untouched");

    // As the message says: again, then delete the staging index.
    let engine = EsEngine::new(options(&os.url, "").with_replace(true));
    restore(&fc.catalog, &engine, &id).await.unwrap();
    assert_eq!(documents(&os, "alpha"), alpha);
    assert_eq!(count(&os, "beta"), 300);
    os.ok("DELETE", &format!("/{staging}"), "");
    assert_eq!(index_names(&os), ["alpha", "beta"]);
}

/// The preview a confirmation prompt shows: the indices `--indices`
/// selects, their names after `--rename`, and which exist on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_names_the_indices_a_restore_would_replace() {
    let os = OpenSearch::start();
    for index in ["logs-1", "logs-2-copy"] {
        os.ok("PUT", &format!("/{index}"), "{}");
    }
    let backed_up: Vec<String> = ["logs-1", "logs-2", "metrics"].map(String::from).to_vec();
    let all = engine(&os.url, "")
        .restore_preview(&backed_up)
        .await
        .unwrap();
    let seen: Vec<(&str, &str, bool)> = all
        .indices
        .iter()
        .map(|i| (i.original.as_str(), i.target.as_str(), i.exists))
        .collect();
    assert_eq!(
        seen,
        [
            ("logs-1", "logs-1", true),
            ("logs-2", "logs-2", false),
            ("metrics", "metrics", false)
        ]
    );
    assert_eq!(all.existing().collect::<Vec<_>>(), ["logs-1"]);

    let renamed = EsEngine::new(
        options(&os.url, "logs-*,nothing-*")
            .with_rename("^(logs-.*)$:$1-copy".parse::<EsRename>().unwrap()),
    );
    let p = renamed.restore_preview(&backed_up).await.unwrap();
    assert_eq!(p.existing().collect::<Vec<_>>(), ["logs-2-copy"]);
    assert_eq!(p.indices.len(), 2);
    assert_eq!(p.unmatched, ["nothing-*"]);
    // Read only: nothing was created.
    assert_eq!(os.request("GET", "/logs-2", "").status, 404);
}
