//! The bare client measuring the server's ceilings: pre-built `_bulk`
//! bodies in parallel, and sliced scrolls that only count hits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::docs::MAPPINGS;
use super::{BULK_WORKERS, PAGE};

/// A reqwest client on the server's URL.
pub(super) struct Bare {
    /// The HTTP client.
    pub http: reqwest::Client,
    /// The server, `http://host:port`.
    pub url: String,
}

#[derive(Deserialize)]
struct Page {
    #[serde(rename = "_scroll_id")]
    scroll_id: String,
    hits: PageHits,
}

#[derive(Deserialize)]
struct PageHits {
    hits: Vec<IgnoredAny>,
}

impl Bare {
    /// Sends one request; its body on 2xx.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: &str) -> Result<String> {
        let r = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        ensure!(status.is_success(), "{method} {path}: {status}: {text}");
        Ok(text)
    }

    /// Creates `index` as capsule's restore does (replicas 0, refresh off).
    pub async fn create_index(&self, index: &str) -> Result<()> {
        let body = format!(
            r#"{{"settings":{{"index.number_of_replicas":"0","index.refresh_interval":"-1"}},"mappings":{MAPPINGS}}}"#
        );
        self.send(reqwest::Method::PUT, &format!("/{index}"), &body)
            .await?;
        Ok(())
    }

    /// Deletes `index`.
    pub async fn delete_index(&self, index: &str) -> Result<()> {
        self.send(reqwest::Method::DELETE, &format!("/{index}"), "")
            .await?;
        Ok(())
    }

    /// Loads `bodies` into `index` with [`BULK_WORKERS`] requests in flight.
    pub async fn bulk(&self, index: &str, bodies: &Arc<Vec<Bytes>>) -> Result<()> {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..BULK_WORKERS {
            let (http, url, bodies, next) = (
                self.http.clone(),
                format!("{}/{index}/_bulk", self.url),
                bodies.clone(),
                next.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(body) = bodies.get(i) else {
                        return Ok::<_, anyhow::Error>(());
                    };
                    let r = http
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = r.status();
                    let text = r.bytes().await?;
                    let head = String::from_utf8_lossy(&text[..text.len().min(4096)]);
                    ensure!(
                        status.is_success() && !head.contains("\"errors\":true"),
                        "_bulk: {status}: {head}"
                    );
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }

    /// Reads every document of `index` with `slices` parallel scrolls.
    pub async fn scroll(&self, index: &str, slices: usize) -> Result<u64> {
        let mut tasks = Vec::new();
        for slice in 0..slices {
            let (http, url, index) = (self.http.clone(), self.url.clone(), index.to_string());
            tasks.push(tokio::spawn(async move {
                let mut query =
                    serde_json::json!({"size": PAGE, "sort": ["_doc"], "track_total_hits": true});
                if slices > 1 {
                    query["slice"] = serde_json::json!({"id": slice, "max": slices});
                }
                let mut req = (
                    format!("{url}/{index}/_search?scroll=5m"),
                    query.to_string(),
                );
                let mut n = 0u64;
                loop {
                    let body = http
                        .post(&req.0)
                        .header("content-type", "application/json")
                        .body(req.1.clone())
                        .send()
                        .await?
                        .bytes()
                        .await?;
                    let page: Page = serde_json::from_slice(&body).context("scroll page")?;
                    if page.hits.hits.is_empty() {
                        let clear = serde_json::json!({"scroll_id": [page.scroll_id]}).to_string();
                        let _ = http
                            .delete(format!("{url}/_search/scroll"))
                            .header("content-type", "application/json")
                            .body(clear)
                            .send()
                            .await;
                        return Ok::<_, anyhow::Error>(n);
                    }
                    n += page.hits.hits.len() as u64;
                    req = (
                        format!("{url}/_search/scroll"),
                        serde_json::json!({"scroll": "5m", "scroll_id": page.scroll_id})
                            .to_string(),
                    );
                }
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        Ok(total)
    }
}
