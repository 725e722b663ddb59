//! What a restore does to the target server: templates, index creation
//! with load-time settings, refresh, counts, aliases, the final settings,
//! the sample comparison and the clean-up.

use std::collections::BTreeMap;

use capsule_core::Result;
use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::client::{Body, EsClient, name_groups, segment};
use super::metadata::{IndexMeta, is_deferred};
use super::sample::{SampleEntry, digest};

/// The three kinds of templates, in the order they are restored.
pub(crate) const TEMPLATE_KINDS: [&str; 3] =
    ["_component_template", "_index_template", "_template"];

/// Longest comma-separated list of names in one request path.
const MAX_PATH_NAMES: usize = 3000;

/// Creates template `name` of `kind` with `body`.
///
/// # Errors
/// The client's errors (the server's reason for a refused template).
pub(crate) async fn put_template(
    client: &EsClient,
    kind: &str,
    name: &str,
    body: &Value,
) -> Result<()> {
    let path = format!("/{kind}/{}", segment(name));
    client
        .call(Method::PUT, &path, Some(Body::json(body)))
        .await?;
    Ok(())
}

/// Deletes template `name` of `kind` (clean-up; a missing one is fine).
pub(crate) async fn delete_template(client: &EsClient, kind: &str, name: &str) {
    let path = format!("/{kind}/{}", segment(name));
    if let Err(e) = client.request(Method::DELETE, &path, None).await {
        tracing::warn!(template = %name, error = %e, "could not remove a template");
    }
}

/// The body creating `meta`'s index for loading: its settings without the
/// deferred ones, replicas 0 and refresh off; typed mappings for
/// Elasticsearch 6 targets.
pub(crate) fn create_body(
    settings: &Map<String, Value>,
    meta: &IndexMeta,
    doc_type: Option<&str>,
) -> Value {
    let mut s: Map<String, Value> = settings
        .iter()
        .filter(|(k, _)| !is_deferred(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    s.insert("index.number_of_replicas".into(), json!("0"));
    s.insert("index.refresh_interval".into(), json!("-1"));
    let mut body = json!({ "settings": s });
    let has_mappings = meta.mappings.as_object().is_some_and(|m| !m.is_empty());
    if has_mappings {
        body["mappings"] = match doc_type {
            Some(t) => json!({ t: meta.mappings }),
            None => meta.mappings.clone(),
        };
    }
    body
}

/// The settings restored once the documents are in: replicas, refresh
/// interval and blocks as backed up (or back to the defaults).
pub(crate) fn final_settings(settings: &Map<String, Value>) -> Value {
    let mut s = Map::new();
    for key in ["index.number_of_replicas", "index.refresh_interval"] {
        s.insert(
            key.into(),
            settings.get(key).cloned().unwrap_or(Value::Null),
        );
    }
    for (k, v) in settings {
        if is_deferred(k) && !s.contains_key(k) {
            s.insert(k.clone(), v.clone());
        }
    }
    Value::Object(s)
}

/// Creates index `name` with `body`.
///
/// # Errors
/// The client's errors (the server's reason, e.g. an invalid setting).
pub(crate) async fn create_index(client: &EsClient, name: &str, body: &Value) -> Result<()> {
    client
        .call(
            Method::PUT,
            &format!("/{}", segment(name)),
            Some(Body::json(body)),
        )
        .await?;
    Ok(())
}

/// Deletes indices (a missing one is fine).
///
/// # Errors
/// The client's errors.
pub(crate) async fn delete_indices(client: &EsClient, names: &[String]) -> Result<()> {
    for group in name_groups(names, MAX_PATH_NAMES) {
        let path = format!("/{group}?ignore_unavailable=true");
        client.call(Method::DELETE, &path, None).await?;
    }
    Ok(())
}

/// Makes the documents of `names` searchable.
///
/// # Errors
/// The client's errors.
pub(crate) async fn refresh(client: &EsClient, names: &[String]) -> Result<()> {
    for group in name_groups(names, MAX_PATH_NAMES) {
        client
            .call(Method::POST, &format!("/{group}/_refresh"), None)
            .await?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct CountReply {
    count: u64,
}

/// The number of documents in index `name`.
///
/// # Errors
/// The client's errors.
pub(crate) async fn count(client: &EsClient, name: &str) -> Result<u64> {
    let reply: CountReply = client.get(&format!("/{}/_count", segment(name))).await?;
    Ok(reply.count)
}

/// Attaches the aliases: one `_aliases` call per index.
///
/// # Errors
/// The client's errors (the server's reason, e.g. a name clash).
pub(crate) async fn add_aliases(
    client: &EsClient,
    index: &str,
    aliases: &[(String, Value)],
) -> Result<()> {
    if aliases.is_empty() {
        return Ok(());
    }
    let actions: Vec<Value> = aliases
        .iter()
        .map(|(alias, def)| {
            let mut add = def.as_object().cloned().unwrap_or_default();
            add.insert("index".into(), json!(index));
            add.insert("alias".into(), json!(alias));
            json!({ "add": add })
        })
        .collect();
    client
        .call(
            Method::POST,
            "/_aliases",
            Some(Body::json(&json!({ "actions": actions }))),
        )
        .await?;
    Ok(())
}

/// Applies `settings` to index `name`.
///
/// # Errors
/// The client's errors.
pub(crate) async fn put_settings(client: &EsClient, name: &str, settings: &Value) -> Result<()> {
    client
        .call(
            Method::PUT,
            &format!("/{}/_settings", segment(name)),
            Some(Body::json(settings)),
        )
        .await?;
    Ok(())
}

#[derive(Deserialize)]
struct MgetReply<'a> {
    #[serde(borrow)]
    docs: Vec<MgetDoc<'a>>,
}

#[derive(Deserialize)]
struct MgetDoc<'a> {
    #[serde(default)]
    found: bool,
    #[serde(borrow, rename = "_source", default)]
    source: Option<&'a RawValue>,
}

/// Reads the sampled documents back from index `index` and compares
/// their `_source` bytes with the sample. Returns the restored entries
/// (digest of what the server returned; zeros for a missing document) and
/// one line per difference, naming the index `label` (the target of a
/// staging index).
///
/// # Errors
/// The client's errors.
pub(crate) async fn compare_sample(
    client: &EsClient,
    index: &str,
    label: &str,
    sample: &[SampleEntry],
) -> Result<(Vec<SampleEntry>, Vec<String>)> {
    if sample.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let docs: Vec<Value> = sample
        .iter()
        .map(|e| {
            let mut d = json!({ "_index": index, "_id": e.id });
            if let Some(r) = &e.routing {
                d["routing"] = json!(r);
            }
            d
        })
        .collect();
    let body = client
        .call(
            Method::POST,
            "/_mget",
            Some(Body::json(&json!({ "docs": docs }))),
        )
        .await?;
    let reply: MgetReply<'_> = client.parse(&Method::POST, "/_mget", &body)?;
    let mut restored = Vec::with_capacity(sample.len());
    let mut mismatches = Vec::new();
    for (i, want) in sample.iter().enumerate() {
        let got = reply.docs.get(i).filter(|d| d.found).and_then(|d| d.source);
        let mut entry = want.clone();
        match got {
            Some(src) => {
                entry.digest = digest(src.get().as_bytes());
                if entry.digest != want.digest {
                    mismatches.push(format!(
                        "{label}/{}: _source differs from the backup",
                        want.id
                    ));
                }
            }
            None => {
                entry.digest = [0; 32];
                mismatches.push(format!("{label}/{}: missing", want.id));
            }
        }
        restored.push(entry);
    }
    Ok((restored, mismatches))
}

/// The aliases of `meta`, renamed.
pub(crate) fn renamed_aliases(
    meta: &IndexMeta,
    rename: impl Fn(&str) -> String,
) -> Vec<(String, Value)> {
    meta.aliases
        .iter()
        .map(|(name, def)| (rename(name), def.clone()))
        .collect()
}

/// Index names grouped for `HEAD`-free existence checks: which of `names`
/// exist as indices, and which as aliases.
///
/// # Errors
/// The client's errors.
pub(crate) async fn existing(
    client: &EsClient,
    names: &[String],
) -> Result<BTreeMap<String, Existing>> {
    let mut out = BTreeMap::new();
    for name in names {
        if !client.exists(&format!("/{}", segment(name))).await? {
            continue;
        }
        let alias = client.exists(&format!("/_alias/{}", segment(name))).await?;
        out.insert(
            name.clone(),
            if alias {
                Existing::Alias
            } else {
                Existing::Index
            },
        );
    }
    Ok(out)
}

/// What a name already is on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    /// An index.
    Index,
    /// An alias.
    Alias,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_created_for_loading_and_settled_after() {
        let settings = json!({
            "index.number_of_shards": "3",
            "index.number_of_replicas": "2",
            "index.blocks.write": "true",
            "index.analysis.analyzer.a.type": "standard",
        });
        let settings = settings.as_object().unwrap();
        let meta = IndexMeta {
            mappings: json!({"properties": {"n": {"type": "long"}}}),
            ..Default::default()
        };
        let body = create_body(settings, &meta, None);
        assert_eq!(
            body,
            json!({
                "settings": {
                    "index.number_of_shards": "3",
                    "index.analysis.analyzer.a.type": "standard",
                    "index.number_of_replicas": "0",
                    "index.refresh_interval": "-1",
                },
                "mappings": {"properties": {"n": {"type": "long"}}},
            })
        );
        let typed = create_body(settings, &meta, Some("doc"));
        assert!(typed.pointer("/mappings/doc/properties/n").is_some());
        assert_eq!(
            final_settings(settings),
            json!({
                "index.number_of_replicas": "2",
                "index.refresh_interval": null,
                "index.blocks.write": "true",
            })
        );
        let empty = create_body(&Map::new(), &IndexMeta::default(), None);
        assert!(empty.get("mappings").is_none());
    }
}
