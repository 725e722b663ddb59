//! Exporting documents: a sliced scroll per index, slices in parallel,
//! each page turned into `_bulk` NDJSON with the `_source` bytes
//! untouched. A slice ends on an empty page, never on a reported total.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use capsule_core::Result;
use futures::Stream;
use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::client::{Body, EsClient, describe_error, segment};
use super::ndjson::{DocMeta, write_action, write_source};
use super::page::{self, HitView, PageView};
use super::sample::Sampler;

/// How long the server keeps a scroll context between pages.
const SCROLL_KEEP_ALIVE: &str = "5m";
/// The end of a slice's error message when the upload stopped first (the
/// upload's own error is the one to report).
pub(crate) const OUTPUT_CLOSED: &str = "the upload stopped reading";
/// Most slices chosen automatically (one per primary shard up to this).
const MAX_AUTO_SLICES: usize = 8;
/// Indices with fewer documents than this many pages get one slice.
const PAGES_PER_SLICE: u64 = 5;

/// What to export and how.
#[derive(Clone, Debug)]
pub(crate) struct ExportPlan {
    /// Index names and primary shard counts, in export order.
    pub indices: Vec<(String, usize)>,
    /// Slices per index (0: automatic).
    pub slices: usize,
    /// Documents per page.
    pub page_size: usize,
    /// Send `track_total_hits` (ES 7+, OpenSearch).
    pub track_total_hits: bool,
    /// Keep each document's mapping type (Elasticsearch 6 sources only:
    /// later versions report `_doc`, which typeless servers refuse).
    pub typed: bool,
    /// Documents to sample per index.
    pub sample_size: usize,
}

/// What was exported from one index.
#[derive(Debug)]
pub(crate) struct IndexTally {
    /// Documents exported.
    pub count: u64,
    /// The sample.
    pub sampler: Sampler,
}

/// A chunk of the documents stream: data, or the end of a complete export.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// NDJSON bytes (whole pairs).
    Data(Bytes),
    /// Every index was exported: the stream may end.
    End,
}

/// Where pages go: the artifact's stream, or nowhere (fingerprinting).
pub(crate) type Output = Option<mpsc::Sender<io::Result<Chunk>>>;

/// A page parsed by serde (the fallback of [`page::scan`]).
#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow, rename = "_scroll_id", default)]
    scroll_id: Option<Cow<'a, str>>,
    #[serde(default)]
    timed_out: bool,
    #[serde(borrow, rename = "_shards", default)]
    shards: Option<&'a RawValue>,
    #[serde(borrow)]
    hits: Hits<'a>,
}

impl<'a> Page<'a> {
    fn view(&'a self) -> PageView<'a> {
        PageView {
            scroll_id: self.scroll_id.as_deref().map(Cow::Borrowed),
            timed_out: self.timed_out,
            shards: self.shards.map(|r| r.get().as_bytes()),
            hits: self
                .hits
                .hits
                .iter()
                .map(|h| HitView {
                    id: Cow::Borrowed(&h.id),
                    routing: h.routing.as_deref().map(Cow::Borrowed),
                    doc_type: h.doc_type.as_deref().map(Cow::Borrowed),
                    source: h.source.map(|r| r.get().as_bytes()),
                })
                .collect(),
        }
    }
}

#[derive(Deserialize)]
struct Shards {
    #[serde(default)]
    failed: u64,
    #[serde(default)]
    failures: Vec<Value>,
}

#[derive(Deserialize)]
struct Hits<'a> {
    #[serde(borrow, default)]
    hits: Vec<Hit<'a>>,
}

#[derive(Deserialize)]
struct Hit<'a> {
    #[serde(borrow, rename = "_id")]
    id: Cow<'a, str>,
    #[serde(borrow, rename = "_routing", default)]
    routing: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "_type", default)]
    doc_type: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "_source", default)]
    source: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CountReply {
    count: u64,
}

/// Exports every index of `plan`, in order, into `out`; returns the tally
/// of each. On error nothing more is sent (the caller turns the error into
/// a failed stream); on success [`Chunk::End`] is sent last.
///
/// # Errors
/// The client's errors, a shard failure or time-out reported by the
/// server, a document without `_source`.
pub(crate) async fn export(
    client: &EsClient,
    plan: &ExportPlan,
    out: &Output,
) -> Result<BTreeMap<String, IndexTally>> {
    let mut tallies = BTreeMap::new();
    for (index, shards) in &plan.indices {
        let slices = slices_for(client, plan, index, *shards).await?;
        tracing::debug!(index = %index, slices, "exporting");
        let mut tasks = Vec::with_capacity(slices);
        for slice in 0..slices {
            let job = SliceJob {
                client: client.clone(),
                index: index.clone(),
                slice: (slices > 1).then_some((slice, slices)),
                page_size: plan.page_size,
                track_total_hits: plan.track_total_hits,
                typed: plan.typed,
                sample_size: plan.sample_size,
                out: out.clone(),
            };
            tasks.push(AbortOnDrop(tokio::spawn(job.run())));
        }
        let mut tally = IndexTally {
            count: 0,
            sampler: Sampler::new(plan.sample_size),
        };
        for task in &mut tasks {
            let part = (&mut task.0).await.map_err(|e| {
                client.error(format!("exporting {index}: a slice task failed: {e}"))
            })??;
            tally.count += part.count;
            tally.sampler.merge(part.sampler);
        }
        tracing::info!(index = %index, documents = tally.count, "index exported");
        tallies.insert(index.clone(), tally);
    }
    if let Some(tx) = out {
        let _ = tx.send(Ok(Chunk::End)).await;
    }
    Ok(tallies)
}

async fn slices_for(
    client: &EsClient,
    plan: &ExportPlan,
    index: &str,
    shards: usize,
) -> Result<usize> {
    if plan.slices > 0 {
        return Ok(plan.slices);
    }
    if shards <= 1 {
        return Ok(1);
    }
    let reply: CountReply = client.get(&format!("/{}/_count", segment(index))).await?;
    if reply.count < PAGES_PER_SLICE * plan.page_size as u64 {
        return Ok(1);
    }
    Ok(shards.min(MAX_AUTO_SLICES))
}

/// Aborts a spawned task when dropped (a cancelled backup stops its slices).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct SliceJob {
    client: EsClient,
    index: String,
    slice: Option<(usize, usize)>,
    page_size: usize,
    track_total_hits: bool,
    typed: bool,
    sample_size: usize,
    out: Output,
}

impl SliceJob {
    async fn run(self) -> Result<IndexTally> {
        let mut scroll_id: Option<String> = None;
        let result = self.scroll(&mut scroll_id).await;
        if let Some(id) = scroll_id {
            let body = Body::json(&json!({ "scroll_id": [id] }));
            if let Err(e) = self
                .client
                .request(Method::DELETE, "/_search/scroll", Some(body))
                .await
            {
                tracing::debug!(error = %e, "could not clear a scroll");
            }
        }
        result
    }

    /// Pages through the slice. The next page is requested as soon as a
    /// page arrives (its scroll id is read from the first bytes), so the
    /// server works while this page is turned into NDJSON.
    async fn scroll(&self, scroll_id: &mut Option<String>) -> Result<IndexTally> {
        let mut tally = IndexTally {
            count: 0,
            sampler: Sampler::new(self.sample_size),
        };
        let mut query = json!({ "size": self.page_size, "sort": ["_doc"] });
        if let Some((id, max)) = self.slice {
            query["slice"] = json!({ "id": id, "max": max });
        }
        if self.track_total_hits {
            query["track_total_hits"] = json!(true);
        }
        let first = format!(
            "/{}/_search?scroll={SCROLL_KEEP_ALIVE}",
            segment(&self.index)
        );
        let mut inflight = self.fetch(first, Body::json(&query));
        loop {
            let (path, page_bytes) = (&mut inflight.0)
                .await
                .map_err(|e| self.client.error(format!("exporting {}: {e}", self.index)))??;
            let quick_id = leading_scroll_id(&page_bytes);
            let next = quick_id.as_ref().map(|id| self.fetch_next(id));
            let (data, n, next_id) = self.format_page(&path, &page_bytes, &mut tally)?;
            drop(page_bytes);
            if next_id.is_some() {
                *scroll_id = next_id;
            }
            if n == 0 {
                return Ok(tally);
            }
            tally.count += n as u64;
            if let Some(tx) = &self.out
                && tx.send(Ok(Chunk::Data(data))).await.is_err()
            {
                return Err(self
                    .client
                    .error(format!("exporting {}: {OUTPUT_CLOSED}", self.index)));
            }
            inflight = match (next, scroll_id.as_ref()) {
                (Some(next), Some(id)) if quick_id.as_ref() == Some(id) => next,
                (_, Some(id)) => self.fetch_next(id),
                (_, None) => {
                    return Err(self.client.error(format!(
                        "exporting {}: the server sent no scroll id",
                        self.index
                    )));
                }
            };
        }
    }

    fn fetch(&self, path: String, body: Body) -> AbortOnDrop<Result<(String, Bytes)>> {
        let client = self.client.clone();
        AbortOnDrop(tokio::spawn(async move {
            let bytes = client.call(Method::POST, &path, Some(body)).await?;
            Ok((path, bytes))
        }))
    }

    fn fetch_next(&self, scroll_id: &str) -> AbortOnDrop<Result<(String, Bytes)>> {
        let body = Body::json(&json!({ "scroll": SCROLL_KEEP_ALIVE, "scroll_id": scroll_id }));
        self.fetch("/_search/scroll".to_string(), body)
    }

    /// Turns one page into NDJSON: (bytes, documents, scroll id). The
    /// byte-level scanner reads the page; serde does when the scanner
    /// does not recognise its shape.
    fn format_page(
        &self,
        path: &str,
        body: &[u8],
        tally: &mut IndexTally,
    ) -> Result<(Bytes, usize, Option<String>)> {
        let fallback;
        let view = match page::scan(body) {
            Some(view) => view,
            None => {
                fallback = self.client.parse::<Page<'_>>(&Method::POST, path, body)?;
                fallback.view()
            }
        };
        if let Some(raw) = view.shards {
            let shards: Shards = self.client.parse(&Method::POST, path, raw)?;
            if shards.failed > 0 {
                let reason = shards
                    .failures
                    .first()
                    .and_then(|f| f.get("reason"))
                    .map(describe_error)
                    .unwrap_or_default();
                return Err(self.client.error(format!(
                    "exporting {}: {} shard(s) failed: {reason}",
                    self.index, shards.failed
                )));
            }
        }
        if view.timed_out {
            return Err(self
                .client
                .error(format!("exporting {}: the search timed out", self.index)));
        }
        let n = view.hits.len();
        let mut out = Vec::with_capacity(if self.out.is_some() { body.len() } else { 0 });
        if self.out.is_some() || tally.sampler.is_enabled() {
            let mut line = Vec::new();
            for hit in &view.hits {
                let Some(source) = hit.source else {
                    return Err(self.client.error(format!(
                        "exporting {}: document {} has no _source",
                        self.index, hit.id
                    )));
                };
                let routing = hit.routing.as_deref();
                if self.out.is_some() {
                    let meta = DocMeta {
                        index: Cow::Borrowed(&self.index),
                        id: Cow::Borrowed(&hit.id),
                        routing: routing.map(Cow::Borrowed),
                        doc_type: hit
                            .doc_type
                            .as_deref()
                            .filter(|_| self.typed)
                            .map(Cow::Borrowed),
                    };
                    write_action(&mut out, &meta);
                    let start = out.len();
                    write_source(&mut out, source);
                    tally
                        .sampler
                        .offer(&hit.id, routing, &out[start..out.len() - 1]);
                } else {
                    line.clear();
                    write_source(&mut line, source);
                    line.pop();
                    tally.sampler.offer(&hit.id, routing, &line);
                }
            }
        }
        Ok((Bytes::from(out), n, view.scroll_id.map(Cow::into_owned)))
    }
}

/// The scroll id when the body starts with it (`{"_scroll_id":"…",`, as
/// Elasticsearch and OpenSearch write it), without parsing the rest.
fn leading_scroll_id(body: &[u8]) -> Option<String> {
    let rest = body.strip_prefix(br#"{"_scroll_id":""#)?;
    let end = memchr::memchr(b'"', rest)?;
    let id = &rest[..end];
    if id.contains(&b'\\') {
        return None;
    }
    String::from_utf8(id.to_vec()).ok()
}

/// The documents stream handed to the upload pipeline: yields the chunks,
/// and fails (rather than ending) if the export stops without
/// [`Chunk::End`], so a partial export is never stored.
pub(crate) struct ChunkStream {
    rx: mpsc::Receiver<io::Result<Chunk>>,
    ended: bool,
}

impl ChunkStream {
    /// A stream over `rx`.
    pub fn new(rx: mpsc::Receiver<io::Result<Chunk>>) -> Self {
        ChunkStream { rx, ended: false }
    }
}

impl Stream for ChunkStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(Chunk::Data(b)))) => Poll::Ready(Some(Ok(b))),
            Poll::Ready(Some(Ok(Chunk::End))) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Err(io::Error::other(
                    "the document export stopped before the end",
                ))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn the_scroll_id_is_read_from_the_first_bytes() {
        assert_eq!(
            leading_scroll_id(br#"{"_scroll_id":"FGlu==","took":1}"#).as_deref(),
            Some("FGlu==")
        );
        assert_eq!(leading_scroll_id(br#"{"took":1,"_scroll_id":"x"}"#), None);
        assert_eq!(leading_scroll_id(br#"{"_scroll_id":"a\"b"}"#), None);
    }

    #[tokio::test]
    async fn the_stream_fails_unless_the_export_ended() {
        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(Chunk::Data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        tx.send(Ok(Chunk::End)).await.unwrap();
        let items: Vec<_> = ChunkStream::new(rx).collect().await;
        assert_eq!(items.len(), 1);
        assert!(items[0].is_ok());

        let (tx, rx) = mpsc::channel(4);
        tx.send(Ok(Chunk::Data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        drop(tx);
        let items: Vec<_> = ChunkStream::new(rx).collect().await;
        assert_eq!(items.len(), 2);
        assert!(items[1].is_err());
    }
}
