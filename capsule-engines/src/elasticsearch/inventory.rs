//! Reading what a backup covers from the server: the selected indices'
//! settings, mappings and aliases, and the templates.

use std::collections::BTreeMap;

use capsule_core::{Error, Result};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::client::{EsClient, name_groups, segment};
use super::metadata::{EsMetadata, IndexMeta, clean_settings, source_disabled};
use super::selection::{Candidate, IndexPatterns};
use super::server::ServerInfo;

/// Longest comma-separated list of names in one request path.
const MAX_PATH_NAMES: usize = 3000;

/// What a backup will read: the metadata plus the shard counts that size
/// the export's slices.
#[derive(Debug)]
pub(crate) struct Inventory {
    /// Templates and the selected indices.
    pub metadata: EsMetadata,
    /// Primary shards per selected index.
    pub shards: BTreeMap<String, usize>,
}

#[derive(Deserialize)]
struct CatIndex {
    index: String,
    #[serde(default)]
    status: Option<String>,
}

#[derive(Deserialize)]
struct SettingsEntry {
    #[serde(default)]
    settings: Map<String, Value>,
}

#[derive(Deserialize)]
struct MappingsEntry {
    #[serde(default)]
    mappings: Value,
}

#[derive(Deserialize)]
struct AliasesEntry {
    #[serde(default)]
    aliases: Map<String, Value>,
}

/// Reads the metadata of the indices `patterns` select, and every
/// user-defined template.
///
/// # Errors
/// [`Error::Invalid`] when an explicit pattern matches no index, or an
/// index named exactly is closed; [`Error::Unsupported`] when a selected
/// index has `_source` disabled; the client's errors.
pub(crate) async fn read(
    client: &EsClient,
    server: ServerInfo,
    patterns: &IndexPatterns,
) -> Result<Inventory> {
    let cat: Vec<CatIndex> = client
        .get("/_cat/indices?format=json&h=index,status&expand_wildcards=all")
        .await?;
    let settings: BTreeMap<String, SettingsEntry> = client
        .get("/_settings?flat_settings=true&expand_wildcards=all")
        .await?;
    let candidates: Vec<Candidate> = cat
        .iter()
        .map(|c| Candidate {
            name: c.index.clone(),
            hidden: c.index.starts_with('.')
                || settings.get(&c.index).is_some_and(|s| {
                    s.settings
                        .get("index.hidden")
                        .is_some_and(|v| v == "true" || v == &Value::Bool(true))
                }),
        })
        .collect();
    let selection = patterns.select(&candidates);
    if patterns.is_explicit() && !selection.unmatched.is_empty() {
        return Err(Error::invalid(
            "indices",
            format!(
                "{}: no index matches {}",
                client.label(),
                selection
                    .unmatched
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let closed: Vec<&str> = cat
        .iter()
        .filter(|c| c.status.as_deref() == Some("close"))
        .map(|c| c.index.as_str())
        .collect();
    let mut names = Vec::new();
    for name in selection.names {
        if closed.contains(&name.as_str()) {
            if patterns.names_exactly(&name) {
                return Err(Error::invalid(
                    "indices",
                    format!(
                        "{}: index {name} is closed; open it to back it up",
                        client.label()
                    ),
                ));
            }
            tracing::warn!(index = %name, "skipping a closed index");
            continue;
        }
        names.push(name);
    }

    let mut metadata = EsMetadata::new(server.clone());
    let mut shards = BTreeMap::new();
    let mut mappings: BTreeMap<String, MappingsEntry> = BTreeMap::new();
    let mut aliases: BTreeMap<String, AliasesEntry> = BTreeMap::new();
    for group in name_groups(&names, MAX_PATH_NAMES) {
        mappings.extend(
            client
                .get::<BTreeMap<String, MappingsEntry>>(&format!("/{group}/_mapping"))
                .await?,
        );
        aliases.extend(
            client
                .get::<BTreeMap<String, AliasesEntry>>(&format!("/{group}/_alias"))
                .await?,
        );
    }
    for name in &names {
        let raw = settings
            .get(name)
            .map(|s| s.settings.clone())
            .unwrap_or_default();
        let primaries = raw
            .get("index.number_of_shards")
            .and_then(|v| {
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .or(v.as_u64().map(|n| n as usize))
            })
            .unwrap_or(1);
        shards.insert(name.clone(), primaries);
        let (mapping_type, mappings) = untype(
            &server,
            mappings
                .remove(name)
                .map(|m| m.mappings)
                .unwrap_or(Value::Null),
        );
        if source_disabled(&mappings) {
            return Err(Error::Unsupported(format!(
                "{}: index {name} has _source disabled: its documents cannot be read back",
                client.label()
            )));
        }
        metadata.indices.insert(
            name.clone(),
            IndexMeta {
                settings: clean_settings(&raw),
                mappings,
                aliases: aliases.remove(name).map(|a| a.aliases).unwrap_or_default(),
                mapping_type,
            },
        );
    }
    read_templates(client, &server, &mut metadata).await?;
    Ok(Inventory { metadata, shards })
}

/// Elasticsearch 6 mappings are `{type: mapping}`: the type and the mapping.
fn untype(server: &ServerInfo, mappings: Value) -> (Option<String>, Value) {
    if !server.typed() {
        return (None, mappings);
    }
    match mappings {
        Value::Object(m) if m.len() == 1 => {
            let (t, inner) = m.into_iter().next().expect("one entry");
            (Some(t), inner)
        }
        Value::Object(m) if m.is_empty() => (None, Value::Object(m)),
        other => (None, other),
    }
}

/// Templates a user made: not `.`-prefixed, not marked managed by the
/// server (Elasticsearch 8's built-in `logs`, `metrics`…).
fn user_made(name: &str, body: &Value) -> bool {
    !name.starts_with('.') && body.pointer("/_meta/managed") != Some(&Value::Bool(true))
}

#[derive(Deserialize)]
struct NamedTemplates {
    #[serde(default, alias = "index_templates", alias = "component_templates")]
    templates: Vec<NamedTemplate>,
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    #[serde(alias = "index_template", alias = "component_template")]
    body: Value,
}

async fn read_templates(client: &EsClient, server: &ServerInfo, m: &mut EsMetadata) -> Result<()> {
    if server.composable_templates() {
        for (path, out) in [
            ("/_component_template", &mut m.component_templates),
            ("/_index_template", &mut m.index_templates),
        ] {
            if let Some(body) = get_optional(client, path).await? {
                let list: NamedTemplates = client.parse(&Method::GET, path, &body)?;
                for t in list.templates {
                    if user_made(&t.name, &t.body) {
                        out.insert(t.name, t.body);
                    }
                }
            }
        }
    }
    if let Some(body) = get_optional(client, "/_template").await? {
        let all: Map<String, Value> = client.parse(&Method::GET, "/_template", &body)?;
        for (name, body) in all {
            if user_made(&name, &body) {
                m.legacy_templates.insert(name, body);
            }
        }
    }
    Ok(())
}

/// The body of a GET, or `None` on 404.
pub(crate) async fn get_optional(client: &EsClient, path: &str) -> Result<Option<bytes::Bytes>> {
    let reply = client.request(Method::GET, path, None).await?;
    match reply.status.as_u16() {
        200..=299 => Ok(Some(reply.body)),
        404 => Ok(None),
        _ => Err(client.status_error(&Method::GET, path, &reply)),
    }
}

/// The current body of template `name` of `kind` (`_index_template`,
/// `_component_template` or `_template`), or `None`.
///
/// # Errors
/// The client's errors.
pub(crate) async fn template(client: &EsClient, kind: &str, name: &str) -> Result<Option<Value>> {
    let path = format!("/{kind}/{}", segment(name));
    let Some(body) = get_optional(client, &path).await? else {
        return Ok(None);
    };
    if kind == "_template" {
        let mut all: Map<String, Value> = client.parse(&Method::GET, &path, &body)?;
        return Ok(all.remove(name));
    }
    let list: NamedTemplates = client.parse(&Method::GET, &path, &body)?;
    Ok(list
        .templates
        .into_iter()
        .find(|t| t.name == name)
        .map(|t| t.body))
}
