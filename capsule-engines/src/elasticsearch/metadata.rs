//! The `metadata.json` artifact: server, templates and every index's
//! settings, mappings and aliases, each in the shape the REST API accepts
//! back (`PUT /<index>`, `PUT /_index_template/<name>`, …), so the file is
//! usable without capsule.

use std::collections::BTreeMap;

use capsule_core::{Error, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::server::{Distribution, ServerInfo};

/// `format` of the metadata document.
pub const METADATA_FORMAT: &str = "capsule-elasticsearch-metadata";
/// The version capsule writes.
pub const METADATA_VERSION: u32 = 1;

/// Everything but the documents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EsMetadata {
    /// Always [`METADATA_FORMAT`].
    pub format: String,
    /// [`METADATA_VERSION`] for files capsule writes.
    pub version: u32,
    /// The server backed up.
    pub server: ServerInfo,
    /// When the metadata was read.
    pub created_at: DateTime<Utc>,
    /// Component templates by name: bodies for `PUT /_component_template/<name>`.
    #[serde(default)]
    pub component_templates: Map<String, Value>,
    /// Composable index templates by name: bodies for `PUT /_index_template/<name>`.
    #[serde(default)]
    pub index_templates: Map<String, Value>,
    /// Legacy templates by name: bodies for `PUT /_template/<name>`.
    #[serde(default)]
    pub legacy_templates: Map<String, Value>,
    /// The indices by name.
    #[serde(default)]
    pub indices: BTreeMap<String, IndexMeta>,
    /// Fields a newer capsule wrote.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One index: settings (flat keys, server-generated ones removed),
/// mappings and aliases.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexMeta {
    /// `index.*` settings with flat keys, as `PUT /<index>` accepts them.
    #[serde(default)]
    pub settings: Map<String, Value>,
    /// The mappings (typeless).
    #[serde(default)]
    pub mappings: Value,
    /// Aliases by name, each with its filter, routing and flags.
    #[serde(default)]
    pub aliases: Map<String, Value>,
    /// The mapping type of an Elasticsearch 6 index (`_doc`, `doc`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_type: Option<String>,
}

impl EsMetadata {
    /// Empty metadata for `server`, read now.
    pub fn new(server: ServerInfo) -> Self {
        EsMetadata {
            format: METADATA_FORMAT.into(),
            version: METADATA_VERSION,
            server,
            created_at: Utc::now(),
            component_templates: Map::new(),
            index_templates: Map::new(),
            legacy_templates: Map::new(),
            indices: BTreeMap::new(),
            extra: Map::new(),
        }
    }

    /// Parses a metadata artifact.
    ///
    /// # Errors
    /// [`Error::Invalid`] when it is not capsule's metadata, or a newer
    /// version than this capsule reads.
    pub fn from_slice(bytes: &[u8], backup: &str) -> Result<Self> {
        let m: EsMetadata = serde_json::from_slice(bytes).map_err(|e| {
            Error::invalid(
                "metadata",
                format!("backup {backup}: metadata unreadable: {e}"),
            )
        })?;
        if m.format != METADATA_FORMAT || m.version > METADATA_VERSION {
            return Err(Error::invalid(
                "metadata",
                format!(
                    "backup {backup}: metadata format {} version {} is not one this capsule reads",
                    m.format, m.version
                ),
            ));
        }
        Ok(m)
    }

    /// The JSON bytes of the artifact (pretty, for people reading a download).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// Settings the server generates, or that pin the index to the old
/// cluster's nodes: never restored. Entries ending in `.` are prefixes.
const GENERATED_SETTINGS: &[&str] = &[
    "index.uuid",
    "index.creation_date",
    "index.creation_date_string",
    "index.provided_name",
    "index.version.",
    "index.history.uuid",
    "index.verified_before_close",
    "index.resize.source.",
    "index.shrink.source.",
    "index.routing.allocation.initial_recovery.",
    "index.store.snapshot.",
    "index.frozen",
    "index.search.throttled",
];

/// Node attributes whose allocation filters name nodes of the old cluster.
const NODE_FILTERS: &[&str] = &["_id", "_name", "_host", "_ip", "_host_ip", "_publish_ip"];

/// Settings only one distribution knows: dropped when restoring into the other.
const ELASTICSEARCH_ONLY: &[&str] = &[
    "index.routing.allocation.include._tier_preference",
    "index.lifecycle.",
];
const OPENSEARCH_ONLY: &[&str] = &[
    "index.replication.type",
    "index.plugins.",
    "index.opendistro.",
];

fn listed(key: &str, list: &[&str]) -> bool {
    list.iter().any(|p| {
        if p.ends_with('.') {
            key.starts_with(p)
        } else {
            key == *p
        }
    })
}

fn pins_nodes(key: &str) -> bool {
    ["require", "include", "exclude"].iter().any(|kind| {
        key.strip_prefix("index.routing.allocation.")
            .and_then(|k| k.strip_prefix(kind))
            .and_then(|k| k.strip_prefix('.'))
            .is_some_and(|attr| NODE_FILTERS.contains(&attr))
    })
}

/// `settings` (flat keys) without the server-generated ones.
pub fn clean_settings(settings: &Map<String, Value>) -> Map<String, Value> {
    settings
        .iter()
        .filter(|(k, _)| !listed(k, GENERATED_SETTINGS) && !pins_nodes(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `settings` without those the target distribution does not know; the
/// dropped keys are returned too.
pub fn portable_settings(
    settings: &Map<String, Value>,
    from: Distribution,
    to: Distribution,
) -> (Map<String, Value>, Vec<String>) {
    let foreign = match (from, to) {
        (a, b) if a == b => return (settings.clone(), Vec::new()),
        (Distribution::Elasticsearch, _) => ELASTICSEARCH_ONLY,
        (Distribution::Opensearch, _) => OPENSEARCH_ONLY,
    };
    let mut kept = Map::new();
    let mut dropped = Vec::new();
    for (k, v) in settings {
        if listed(k, foreign) {
            dropped.push(k.clone());
        } else {
            kept.insert(k.clone(), v.clone());
        }
    }
    (kept, dropped)
}

/// Settings applied only after the documents are loaded: replicas,
/// refresh and write blocks.
pub fn is_deferred(key: &str) -> bool {
    matches!(
        key,
        "index.number_of_replicas" | "index.refresh_interval" | "index.auto_expand_replicas"
    ) || key.starts_with("index.blocks.")
}

/// Whether the mappings disable `_source` (documents cannot be exported).
pub fn source_disabled(mappings: &Value) -> bool {
    mappings
        .pointer("/_source/enabled")
        .is_some_and(|v| v == &Value::Bool(false) || v == "false")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn generated_settings_are_removed() {
        let s = map(json!({
            "index.creation_date": "1",
            "index.uuid": "u",
            "index.provided_name": "x",
            "index.version.created": "137297827",
            "index.version.upgraded": "1",
            "index.routing.allocation.initial_recovery._id": "node1",
            "index.routing.allocation.require._name": "old-node-3",
            "index.routing.allocation.require.zone": "a",
            "index.number_of_shards": "2",
            "index.analysis.analyzer.a.type": "custom",
            "index.versioned": "kept",
        }));
        let clean = clean_settings(&s);
        let keys: Vec<&str> = clean.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "index.routing.allocation.require.zone",
                "index.number_of_shards",
                "index.analysis.analyzer.a.type",
                "index.versioned"
            ]
        );
    }

    #[test]
    fn foreign_settings_are_dropped_across_distributions() {
        let s = map(json!({"index.replication.type": "DOCUMENT", "index.number_of_shards": "1"}));
        let (kept, dropped) =
            portable_settings(&s, Distribution::Opensearch, Distribution::Elasticsearch);
        assert_eq!(dropped, ["index.replication.type"]);
        assert_eq!(kept.len(), 1);
        let (kept, dropped) =
            portable_settings(&s, Distribution::Opensearch, Distribution::Opensearch);
        assert!(dropped.is_empty());
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn deferred_and_source_checks() {
        assert!(is_deferred("index.number_of_replicas"));
        assert!(is_deferred("index.blocks.write"));
        assert!(!is_deferred("index.number_of_shards"));
        assert!(source_disabled(&json!({"_source": {"enabled": false}})));
        assert!(!source_disabled(&json!({"properties": {}})));
    }

    #[test]
    fn metadata_round_trips_and_checks_its_format() {
        let server = ServerInfo {
            distribution: Distribution::Opensearch,
            version: "3.8.0".into(),
            cluster_name: "c".into(),
        };
        let mut m = EsMetadata::new(server);
        m.indices.insert(
            "a".into(),
            IndexMeta {
                mappings: json!({"properties": {}}),
                ..Default::default()
            },
        );
        let back = EsMetadata::from_slice(&m.to_bytes(), "b").unwrap();
        assert_eq!(back, m);
        let mut newer = serde_json::to_value(&m).unwrap();
        newer["version"] = json!(99);
        let e = EsMetadata::from_slice(newer.to_string().as_bytes(), "b").unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
        assert!(EsMetadata::from_slice(b"{}", "b").is_err());
    }
}
