//! Loading documents: the artifact's pairs, renamed to their target
//! indices, in `_bulk` requests of bounded size sent in parallel.
//! Requests answered 429/503 are retried whole; items rejected with 429
//! are retried alone; every other item error is logged and counted, never
//! dropped silently. A load that stops early (an error, a cancelled job)
//! leaves its requests in flight to finish rather than abandoning them
//! half-sent; [`InFlight::settle`] waits for them, so that what removes
//! the loaded index comes after the last write to it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use capsule_core::{ByteStream, Error, Progress, Result};
use reqwest::Method;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use tokio::io::BufReader;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::{Body, EsClient, backoff, describe_error};
use super::export::IndexTally;
use super::ndjson::{DocMeta, PairError, PairReader, parse_action, write_action};
use super::sample::Sampler;

/// Item errors kept in memory for the report (all are logged).
const KEPT_ERRORS: usize = 10_000;

/// Where one backed-up index goes.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The index to load into.
    pub name: String,
    /// The mapping type to name in actions (Elasticsearch 6 targets).
    pub doc_type: Option<String>,
}

/// How to load.
#[derive(Clone, Debug)]
pub(crate) struct LoadPlan {
    /// Backed-up index name → target; documents of other indices are skipped.
    pub targets: BTreeMap<String, Target>,
    /// Largest request body.
    pub bulk_bytes: usize,
    /// Most documents per request.
    pub bulk_docs: usize,
    /// Retries of rejected items.
    pub retries: u32,
    /// Documents sampled per index.
    pub sample_size: usize,
}

/// One document the server refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ItemError {
    /// Target index.
    pub index: String,
    /// Document id.
    pub id: String,
    /// HTTP status of the item.
    pub status: u16,
    /// `type: reason`.
    pub reason: String,
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}: HTTP {}: {}",
            self.index, self.id, self.status, self.reason
        )
    }
}

/// What a load did.
#[derive(Debug, Default)]
pub(crate) struct LoadReport {
    /// Per backed-up index: documents read from the artifact and their sample.
    pub read: BTreeMap<String, IndexTally>,
    /// Documents the server refused (the first [`KEPT_ERRORS`]).
    pub errors: Vec<ItemError>,
    /// How many documents were refused in all.
    pub error_count: u64,
    /// Items retried after a 429.
    pub retried_items: u64,
}

/// The `_bulk` requests of a load that may still be running: the
/// permits they hold, and a signal to stop retrying.
#[derive(Clone, Debug)]
pub(crate) struct InFlight {
    permits: Arc<Semaphore>,
    workers: usize,
    abandoned: CancellationToken,
}

impl InFlight {
    /// Room for `workers` parallel requests.
    pub fn new(workers: usize) -> Self {
        let workers = workers.max(1);
        InFlight {
            permits: Arc::new(Semaphore::new(workers)),
            workers,
            abandoned: CancellationToken::new(),
        }
    }

    /// Waits (at most `within`) until no request is in flight; whether
    /// that happened.
    pub async fn settle(&self, within: Duration) -> bool {
        self.abandoned.cancel();
        let all = u32::try_from(self.workers).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout(within, self.permits.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }
}

/// The tasks sending `_bulk` requests. Dropped while some run (the load
/// failed or was dropped), they are detached, not aborted: a request
/// already sent is processed by the server anyway, and aborting it would
/// only hide when. They stop retrying rejected documents.
struct Tasks {
    set: JoinSet<Result<BatchOutcome>>,
    abandoned: CancellationToken,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if !self.set.is_empty() {
            self.abandoned.cancel();
            self.set.detach_all();
        }
    }
}

#[derive(Default)]
struct Batch {
    body: Vec<u8>,
    ranges: Vec<(usize, usize)>,
}

/// Loads the documents of `stream` according to `plan`, at most
/// `inflight`'s workers requests at a time.
///
/// # Errors
/// [`Error::Corrupt`]-like errors for a malformed artifact, the client's
/// errors for a request that failed as a whole. Refused items are not
/// errors here: they are in the report.
pub(crate) async fn load(
    client: &EsClient,
    stream: ByteStream,
    plan: &LoadPlan,
    backup: &str,
    artifact: &str,
    progress: &dyn Progress,
    inflight: &InFlight,
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut reader = PairReader::new(BufReader::with_capacity(1 << 20, stream));
    let (mut action, mut source) = (Vec::new(), Vec::new());
    let permits = &inflight.permits;
    let mut tasks = Tasks {
        set: JoinSet::new(),
        abandoned: inflight.abandoned.clone(),
    };
    let mut batch = Batch::default();
    let corrupt = |reason: String| Error::Corrupt {
        id: backup.to_string(),
        object: artifact.to_string(),
        reason,
    };
    loop {
        let more = match reader.next(&mut action, &mut source).await {
            Ok(more) => more,
            Err(PairError::Io(e)) => {
                return Err(corrupt(format!("reading line {}: {e}", reader.line() + 1)));
            }
            Err(PairError::Malformed(m)) => return Err(corrupt(m)),
        };
        if !more {
            break;
        }
        progress.advance((action.len() + source.len() + 2) as u64);
        let Some(meta) = parse_action(&action) else {
            return Err(corrupt(format!(
                "line {}: not a bulk index action",
                reader.line() - 1
            )));
        };
        let Some(target) = plan.targets.get(meta.index.as_ref()) else {
            continue;
        };
        let tally = report
            .read
            .entry(meta.index.to_string())
            .or_insert_with(|| IndexTally {
                count: 0,
                sampler: Sampler::new(plan.sample_size),
            });
        tally.count += 1;
        tally
            .sampler
            .offer(&meta.id, meta.routing.as_deref(), &source);
        let start = batch.body.len();
        write_action(
            &mut batch.body,
            &DocMeta {
                index: target.name.as_str().into(),
                id: meta.id,
                routing: meta.routing,
                doc_type: target.doc_type.as_deref().map(Into::into),
            },
        );
        batch.body.extend_from_slice(&source);
        batch.body.push(b'\n');
        batch.ranges.push((start, batch.body.len()));
        if batch.body.len() >= plan.bulk_bytes || batch.ranges.len() >= plan.bulk_docs {
            let full = std::mem::take(&mut batch);
            dispatch(client, plan, permits, &mut tasks, full, &mut report).await?;
        }
    }
    if !batch.ranges.is_empty() {
        dispatch(client, plan, permits, &mut tasks, batch, &mut report).await?;
    }
    while let Some(done) = tasks.set.join_next().await {
        absorb(client, done, &mut report)?;
    }
    Ok(report)
}

/// Waits for a free worker (collecting finished ones), then sends `batch`.
async fn dispatch(
    client: &EsClient,
    plan: &LoadPlan,
    permits: &Arc<Semaphore>,
    tasks: &mut Tasks,
    batch: Batch,
    report: &mut LoadReport,
) -> Result<()> {
    while let Some(done) = tasks.set.try_join_next() {
        absorb(client, done, report)?;
    }
    let permit = loop {
        if let Ok(p) = permits.clone().try_acquire_owned() {
            break p;
        }
        match tasks.set.join_next().await {
            Some(done) => absorb(client, done, report)?,
            None => {
                break permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
            }
        }
    };
    let client = client.clone();
    let retries = plan.retries;
    let abandoned = tasks.abandoned.clone();
    tasks.set.spawn(async move {
        let outcome = send_batch(&client, batch, retries, &abandoned).await;
        drop(permit);
        outcome
    });
    Ok(())
}

fn absorb(
    client: &EsClient,
    done: std::result::Result<Result<BatchOutcome>, tokio::task::JoinError>,
    report: &mut LoadReport,
) -> Result<()> {
    let outcome = done.map_err(|e| client.error(format!("a _bulk task failed: {e}")))??;
    report.retried_items += outcome.retried;
    for e in outcome.errors {
        tracing::warn!(server = %client.label(), document = %e, "document refused");
        report.error_count += 1;
        if report.errors.len() < KEPT_ERRORS {
            report.errors.push(e);
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct BatchOutcome {
    errors: Vec<ItemError>,
    retried: u64,
}

#[derive(Deserialize)]
struct BulkQuick {
    errors: bool,
    #[serde(default)]
    items: IgnoredAny,
}

#[derive(Deserialize)]
struct BulkReply {
    #[serde(default)]
    items: Vec<BulkItem>,
}

#[derive(Deserialize)]
struct BulkItem {
    #[serde(alias = "create")]
    index: ItemResult,
}

#[derive(Deserialize)]
struct ItemResult {
    #[serde(rename = "_index", default)]
    index: Option<String>,
    #[serde(rename = "_id", default)]
    id: Option<String>,
    status: u16,
    #[serde(default)]
    error: Option<Value>,
}

/// Sends one batch; retries the items rejected with 429 alone, with
/// backoff, until the load is `abandoned`.
async fn send_batch(
    client: &EsClient,
    mut batch: Batch,
    retries: u32,
    abandoned: &CancellationToken,
) -> Result<BatchOutcome> {
    let mut outcome = BatchOutcome::default();
    let mut attempt = 0;
    loop {
        let body = Bytes::from(std::mem::take(&mut batch.body));
        let reply = client
            .request(Method::POST, "/_bulk", Some(Body::Ndjson(body.clone())))
            .await?;
        if !reply.status.is_success() {
            return Err(client.status_error(&Method::POST, "/_bulk", &reply));
        }
        let quick: BulkQuick = client.parse(&Method::POST, "/_bulk", &reply.body)?;
        let _ = quick.items;
        if !quick.errors {
            return Ok(outcome);
        }
        let full: BulkReply = client.parse(&Method::POST, "/_bulk", &reply.body)?;
        if full.items.len() != batch.ranges.len() {
            return Err(client.error(format!(
                "POST /_bulk: {} results for {} documents",
                full.items.len(),
                batch.ranges.len()
            )));
        }
        attempt += 1;
        let mut again = Batch::default();
        for (item, &(start, end)) in full.items.iter().zip(&batch.ranges) {
            let r = &item.index;
            if (200..300).contains(&r.status) {
                continue;
            }
            if r.status == 429 && attempt <= retries {
                let at = again.body.len();
                again.body.extend_from_slice(&body[start..end]);
                again.ranges.push((at, again.body.len()));
                continue;
            }
            let mut reason = r.error.as_ref().map(describe_error).unwrap_or_default();
            if r.status == 429 {
                reason = format!("{reason} (still rejected after {retries} retries)");
            }
            outcome.errors.push(ItemError {
                index: r.index.clone().unwrap_or_default(),
                id: r.id.clone().unwrap_or_default(),
                status: r.status,
                reason,
            });
        }
        if again.ranges.is_empty() {
            return Ok(outcome);
        }
        let wait = backoff(attempt);
        outcome.retried += again.ranges.len() as u64;
        tracing::info!(
            server = %client.label(),
            documents = again.ranges.len(),
            "_bulk rejected documents (429): retry {attempt} of {retries} in {wait:?}"
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = abandoned.cancelled() => return Ok(outcome),
        }
        batch = again;
    }
}
