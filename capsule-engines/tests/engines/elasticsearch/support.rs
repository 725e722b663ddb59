//! Shared helpers: a server per test, catalogs, engines, and reading an
//! index back (raw `_source` bytes, mappings, aliases, templates).

use std::collections::BTreeMap;

use capsule_core::{
    Catalog, JobContext, NoProgress, RestoreOptions, RestoreReport, Result, run_restore,
};
use capsule_engines::{EsEngine, EsOptions};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use test_support::opensearch::OpenSearch;

pub use crate::common::{FileCatalog, PREFIX, backup};

/// An engine for `server` backing up `indices` (comma-separated patterns).
pub fn engine(url: &str, indices: &str) -> EsEngine {
    EsEngine::new(options(url, indices))
}

/// Options for `url` and `indices`, small pages so that paging is exercised.
pub fn options(url: &str, indices: &str) -> EsOptions {
    EsOptions::from_url(url)
        .unwrap()
        .with_indices(indices)
        .with_page_size(500)
}

pub async fn restore(catalog: &Catalog, engine: &EsEngine, id: &str) -> Result<RestoreReport> {
    let ctx = JobContext::new(&NoProgress);
    run_restore(catalog, engine, id, RestoreOptions::default(), &ctx).await
}

/// JSON of a 2xx answer.
pub fn get(os: &OpenSearch, path: &str) -> Value {
    serde_json::from_str(&os.ok("GET", path, "")).unwrap()
}

/// Whether index (or alias) `name` exists.
pub fn exists(os: &OpenSearch, name: &str) -> bool {
    os.request("HEAD", &format!("/{name}"), "").status == 200
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(rename = "_scroll_id")]
    scroll_id: String,
    #[serde(borrow)]
    hits: Hits<'a>,
}

#[derive(Deserialize)]
struct Hits<'a> {
    #[serde(borrow)]
    hits: Vec<Hit<'a>>,
}

#[derive(Deserialize)]
struct Hit<'a> {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_routing", default)]
    routing: Option<String>,
    #[serde(borrow, rename = "_source")]
    source: &'a RawValue,
}

/// Every document of `index`: id → (routing, raw `_source` text).
pub fn documents(os: &OpenSearch, index: &str) -> BTreeMap<String, (Option<String>, String)> {
    let mut out = BTreeMap::new();
    let mut body = os.ok(
        "POST",
        &format!("/{index}/_search?scroll=1m"),
        r#"{"size":1000,"sort":["_doc"],"track_total_hits":true}"#,
    );
    loop {
        let page: Page<'_> = serde_json::from_str(&body).unwrap();
        if page.hits.hits.is_empty() {
            break;
        }
        for h in page.hits.hits {
            out.insert(h.id, (h.routing, h.source.get().to_string()));
        }
        body = os.ok(
            "POST",
            "/_search/scroll",
            &serde_json::json!({"scroll": "1m", "scroll_id": page.scroll_id}).to_string(),
        );
    }
    out
}

/// Mappings, aliases and the settings a restore keeps, of `index`.
pub fn definition(os: &OpenSearch, index: &str) -> Value {
    let mappings = &get(os, &format!("/{index}/_mapping"))[index]["mappings"];
    let aliases = &get(os, &format!("/{index}/_alias"))[index]["aliases"];
    let mut settings =
        get(os, &format!("/{index}/_settings?flat_settings=true"))[index]["settings"].clone();
    let s = settings.as_object_mut().unwrap();
    for generated in [
        "index.creation_date",
        "index.uuid",
        "index.provided_name",
        "index.version.created",
    ] {
        s.remove(generated);
    }
    serde_json::json!({ "mappings": mappings, "aliases": aliases, "settings": settings })
}

/// The count of `index`.
pub fn count(os: &OpenSearch, index: &str) -> u64 {
    get(os, &format!("/{index}/_count"))["count"]
        .as_u64()
        .unwrap()
}

/// `n` bulk lines (action + source) for `index`, documents of ~`size` bytes.
pub fn generated_docs(index: &str, n: usize, size: usize) -> String {
    let mut out = String::with_capacity(n * (size + 60));
    let filler = "lorem ipsum dolor sit amet ".repeat(size / 27 + 1);
    for i in 0..n {
        out.push_str(&format!(
            "{{\"index\":{{\"_index\":\"{index}\",\"_id\":\"d{i}\"}}}}\n"
        ));
        out.push_str(&format!(
            "{{\"n\":{},\"f\":{}.25,\"text\":\"{}\"}}\n",
            9_007_199_254_740_993u64 + i as u64,
            i,
            &filler[..size]
        ));
    }
    out
}
