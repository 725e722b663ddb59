//! `--replace` without putting the only good copy at risk: the documents
//! are loaded into a staging index and checked there; only then is the
//! existing index deleted and the staging index moved to its name.
//!
//! Elasticsearch cannot rename an index. The move is a `_clone` of the
//! write-blocked staging index where the server has one (Elasticsearch
//! 7.4+, OpenSearch 1+: hard links, seconds), else a `_reindex` into an
//! index created like the staging one (a second copy of the documents;
//! a task polled through `_tasks`, or one long request where the server
//! has no `_tasks`). Either way the result is counted and its sample read
//! back before the staging index is deleted.

use std::fmt;
use std::time::Duration;

use capsule_core::{Error, Result};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::apply;
use super::client::{Body, EsClient, describe_error, segment};
use super::plan::IndexPlan;
use super::sample::SampleEntry;
use super::server::ServerInfo;
use super::undo::Undo;

/// Longest wait for a synchronous `_reindex` (servers without `_tasks`).
const SYNC_REINDEX_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// Server-side wait of one `_cluster/health` call.
const HEALTH_WAIT: &str = "30s";
/// `_cluster/health` calls before a clone that does not start is an error.
const HEALTH_ATTEMPTS: u32 = 20;
/// Longest pause between two looks at a `_reindex` task.
const POLL_MAX: Duration = Duration::from_secs(5);

/// How a staging index takes the name of the index it replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SwapMethod {
    /// `_clone` of the write-blocked staging index.
    Clone,
    /// `_reindex` into a new index; `tasks`: run as a task and polled.
    Reindex {
        /// The server has `_tasks`.
        tasks: bool,
    },
}

impl fmt::Display for SwapMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SwapMethod::Clone => "_clone",
            SwapMethod::Reindex { .. } => "_reindex",
        })
    }
}

/// Finds how this server can move a staging index, changing nothing:
/// `_clone` of a missing index must be answered `index_not_found`
/// (osmem-server, which claims OpenSearch 3, has no `_clone`); `_tasks`
/// must answer.
///
/// # Errors
/// The client's errors when the server cannot be reached.
pub(crate) async fn method(
    client: &EsClient,
    server: &ServerInfo,
    tag: &str,
) -> Result<SwapMethod> {
    // Only where `_clone` is a route: before it, `PUT /a/_clone/b` would
    // index a document of type `_clone`.
    if server.clone_api() {
        let path = format!("/capsule-probe-{tag}-missing/_clone/capsule-probe-{tag}-target");
        let reply = client.request(Method::POST, &path, None).await?;
        if clone_answered(reply.status, &reply.body) {
            tracing::debug!(server = %client.label(), "replacing indices with _clone");
            return Ok(SwapMethod::Clone);
        }
        tracing::debug!(server = %client.label(), status = reply.status.as_u16(), "no _clone here: replacing indices with _reindex");
    }
    let tasks = client
        .request(Method::GET, "/_tasks?actions=capsule-probe", None)
        .await?
        .status
        .is_success();
    Ok(SwapMethod::Reindex { tasks })
}

/// Whether the answer to a `_clone` of a missing index shows the API.
fn clone_answered(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::NOT_FOUND
        && String::from_utf8_lossy(body).contains("index_not_found_exception")
}

/// A failed replacement: the cause, and whether the existing index is
/// still there.
#[derive(Debug)]
pub(crate) struct SwapError {
    /// The existing index was deleted (or may have been).
    pub deleted: bool,
    /// An incomplete copy may be left under the index's name (it could
    /// not be deleted).
    pub partial: bool,
    /// What failed.
    pub error: Error,
}

/// Replaces index `p.target` by its checked staging index: deletes it,
/// moves the staging index to its name with `method`, counts and reads
/// back the sample, deletes the staging index. `undo` learns when the
/// index is deleted.
///
/// # Errors
/// [`SwapError`] with the cause, saying whether the index was deleted.
pub(crate) async fn replace(
    client: &EsClient,
    server: &ServerInfo,
    method: SwapMethod,
    p: &IndexPlan,
    expected: u64,
    sample: &[SampleEntry],
    undo: &mut Undo,
) -> std::result::Result<(), SwapError> {
    let staging = p
        .staging
        .as_deref()
        .expect("only staged indices are replaced");
    let target = p.target.as_str();
    let intact = |error| SwapError {
        deleted: false,
        partial: false,
        error,
    };
    let deleted = |error| SwapError {
        deleted: true,
        partial: false,
        error,
    };
    if method == SwapMethod::Clone {
        let block = json!({ "index.blocks.write": true });
        apply::put_settings(client, staging, &block)
            .await
            .map_err(intact)?;
    }
    undo.deleting(target, staging);
    tracing::info!(server = %client.label(), index = %target, staging = %staging, "replacing index {target}: deleting it, then {method} of {staging}");
    if let Err(e) = apply::delete_indices(client, &[target.to_string()]).await {
        if let Ok(true) = client.exists(&format!("/{}", segment(target))).await {
            undo.not_deleted();
            return Err(intact(e));
        }
        return Err(deleted(e));
    }
    // Whether this run created an index of the name (not a writer's
    // auto-created one, which is left alone).
    let mut created = false;
    let moved = match method {
        SwapMethod::Clone => clone(client, staging, target, &mut created).await,
        SwapMethod::Reindex { tasks } => {
            reindex(client, server, p, staging, tasks, expected, &mut created).await
        }
    };
    let checked = match moved {
        Ok(()) => check(client, target, expected, sample).await,
        Err(e) => Err(e),
    };
    if let Err(error) = checked {
        // What this run put under the name is incomplete: the staging
        // index alone holds the restored documents.
        let partial = created
            && apply::delete_indices(client, &[target.to_string()])
                .await
                .is_err();
        return Err(SwapError {
            deleted: true,
            partial,
            error,
        });
    }
    undo.replaced();
    if let Err(e) = apply::delete_indices(client, &[staging.to_string()]).await {
        tracing::warn!(server = %client.label(), staging = %staging, error = %e, "index {target} is replaced, but its staging index {staging} could not be deleted: delete it yourself");
    }
    Ok(())
}

/// The count and the sample of `target` after the move.
async fn check(
    client: &EsClient,
    target: &str,
    expected: u64,
    sample: &[SampleEntry],
) -> Result<()> {
    apply::refresh(client, &[target.to_string()]).await?;
    let count = apply::count(client, target).await?;
    if count != expected {
        return Err(client.error(format!(
            "{target}: expected {expected} documents after the move, found {count}"
        )));
    }
    let (_, diffs) = apply::compare_sample(client, target, target, sample).await?;
    if !diffs.is_empty() {
        return Err(client.error(format!("after the move: {}", diffs.join("; "))));
    }
    Ok(())
}

/// The body of the `_clone` request: no replicas yet (the final settings
/// come later) and without the write block copied from the staging index.
fn clone_body() -> Value {
    json!({ "settings": { "index.number_of_replicas": "0", "index.blocks.write": null } })
}

async fn clone(client: &EsClient, staging: &str, target: &str, created: &mut bool) -> Result<()> {
    let path = format!("/{}/_clone/{}", segment(staging), segment(target));
    client
        .call(Method::POST, &path, Some(Body::json(&clone_body())))
        .await?;
    *created = true;
    wait_green(client, target).await
}

#[derive(Deserialize)]
struct Health {
    #[serde(default)]
    status: String,
    #[serde(default)]
    timed_out: bool,
}

/// Waits until every shard of `index` is started.
async fn wait_green(client: &EsClient, index: &str) -> Result<()> {
    let path = format!(
        "/_cluster/health/{}?wait_for_status=green&timeout={HEALTH_WAIT}",
        segment(index)
    );
    for attempt in 1..=HEALTH_ATTEMPTS {
        let reply = client.request(Method::GET, &path, None).await?;
        // A wait that times out is answered 408, with the health.
        if !reply.status.is_success() && reply.status != StatusCode::REQUEST_TIMEOUT {
            return Err(client.status_error(&Method::GET, &path, &reply));
        }
        let health: Health = client.parse(&Method::GET, &path, &reply.body)?;
        if health.status == "green" && !health.timed_out {
            return Ok(());
        }
        tracing::info!(server = %client.label(), index = %index, status = %health.status, "waiting for the shards of {index}: {attempt} of {HEALTH_ATTEMPTS}");
    }
    Err(client.error(format!(
        "{index}: the shards did not start (health not green after {HEALTH_ATTEMPTS} waits of {HEALTH_WAIT})"
    )))
}

/// What `_reindex` reports.
#[derive(Debug, Default, Deserialize)]
struct ReindexReply {
    #[serde(default)]
    created: u64,
    #[serde(default)]
    updated: u64,
    #[serde(default)]
    timed_out: bool,
    #[serde(default)]
    failures: Vec<Value>,
}

impl ReindexReply {
    /// `Err` with the reason unless every one of `expected` documents
    /// was copied.
    fn check(&self, expected: u64) -> std::result::Result<(), String> {
        if let Some(first) = self.failures.first() {
            let cause = first.get("cause").unwrap_or(first);
            let id = first.get("id").and_then(Value::as_str).unwrap_or("?");
            return Err(format!(
                "{} documents failed, the first ({id}): {}",
                self.failures.len(),
                describe_error(cause)
            ));
        }
        if self.timed_out {
            return Err("timed out".into());
        }
        let copied = self.created + self.updated;
        if copied != expected {
            return Err(format!("copied {copied} of {expected} documents"));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct TaskStarted {
    task: String,
}

#[derive(Deserialize)]
struct TaskReply {
    #[serde(default)]
    completed: bool,
    #[serde(default)]
    response: Option<ReindexReply>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    task: Option<TaskInfo>,
}

#[derive(Deserialize)]
struct TaskInfo {
    #[serde(default)]
    status: Option<Value>,
}

async fn reindex(
    client: &EsClient,
    server: &ServerInfo,
    p: &IndexPlan,
    staging: &str,
    tasks: bool,
    expected: u64,
    created: &mut bool,
) -> Result<()> {
    apply::create_index(client, &p.target, &p.create).await?;
    *created = true;
    let body = json!({
        "source": { "index": staging, "size": 1000 },
        "dest": { "index": p.target, "op_type": "create" },
    });
    let slices = if server.auto_slices() {
        "&slices=auto"
    } else {
        ""
    };
    let reply = if tasks {
        let path = format!("/_reindex?wait_for_completion=false{slices}");
        let started = client
            .call(Method::POST, &path, Some(Body::json(&body)))
            .await?;
        let started: TaskStarted = client.parse(&Method::POST, &path, &started)?;
        wait_task(client, &started.task, &p.target).await?
    } else {
        let path = format!("/_reindex?refresh=true{slices}");
        let raw = client
            .call_with_timeout(
                Method::POST,
                &path,
                Some(Body::json(&body)),
                SYNC_REINDEX_TIMEOUT,
            )
            .await?;
        client.parse(&Method::POST, &path, &raw)?
    };
    reply
        .check(expected)
        .map_err(|why| client.error(format!("_reindex of {staging} into {}: {why}", p.target)))
}

/// Polls task `id` until it completes; its `_reindex` answer.
async fn wait_task(client: &EsClient, id: &str, target: &str) -> Result<ReindexReply> {
    let path = format!("/_tasks/{}", segment(id));
    let mut pause = Duration::from_millis(200);
    let mut polls = 0u32;
    loop {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
        let reply: TaskReply = client.get(&path).await?;
        if reply.completed {
            if let Some(e) = &reply.error {
                return Err(client.error(format!(
                    "_reindex into {target} (task {id}): {}",
                    describe_error(e)
                )));
            }
            return Ok(reply.response.unwrap_or_default());
        }
        polls += 1;
        if polls.is_multiple_of(6) {
            let status = reply.task.and_then(|t| t.status).unwrap_or(Value::Null);
            let number = |key: &str| status.get(key).and_then(Value::as_u64).unwrap_or(0);
            let (created, total) = (number("created"), number("total"));
            tracing::info!(
                server = %client.label(),
                index = %target,
                task = %id,
                "_reindex into {target}: {created} of {total} documents"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_support_is_read_from_the_answer_for_a_missing_index() {
        let es = br#"{"error":{"root_cause":[{"type":"index_not_found_exception","reason":"no such index [x]"}],"type":"index_not_found_exception"},"status":404}"#;
        assert!(clone_answered(StatusCode::NOT_FOUND, es));
        let osmem = br#"{"error":"no handler found for uri [/x/_clone/y] and method [POST]"}"#;
        assert!(!clone_answered(StatusCode::BAD_REQUEST, osmem));
        assert!(!clone_answered(StatusCode::METHOD_NOT_ALLOWED, b""));
        assert!(!clone_answered(
            StatusCode::NOT_FOUND,
            b"<html>not found</html>"
        ));
    }

    #[test]
    fn the_clone_drops_the_write_block_and_the_replicas() {
        assert_eq!(
            clone_body(),
            json!({"settings": {"index.number_of_replicas": "0", "index.blocks.write": null}})
        );
    }

    #[test]
    fn reindex_answers_are_checked() {
        let ok: ReindexReply = serde_json::from_str(
            r#"{"took":1,"created":3,"updated":0,"failures":[],"timed_out":false}"#,
        )
        .unwrap();
        assert_eq!(ok.check(3), Ok(()));
        assert_eq!(ok.check(4), Err("copied 3 of 4 documents".into()));
        let failed: ReindexReply = serde_json::from_str(
            r#"{"created":1,"failures":[{"index":"b","id":"d7","cause":{"type":"mapper_parsing_exception","reason":"failed to parse"},"status":400}]}"#,
        )
        .unwrap();
        assert_eq!(
            failed.check(2),
            Err(
                "1 documents failed, the first (d7): mapper_parsing_exception: failed to parse"
                    .into()
            )
        );
        let late: ReindexReply = serde_json::from_str(r#"{"created":1,"timed_out":true}"#).unwrap();
        assert_eq!(late.check(1), Err("timed out".into()));
        let task: TaskReply = serde_json::from_str(
            r#"{"completed":true,"task":{"status":{"total":2,"created":2}},"response":{"created":2,"failures":[]}}"#,
        )
        .unwrap();
        assert!(task.completed && task.response.unwrap().check(2).is_ok());
    }
}
