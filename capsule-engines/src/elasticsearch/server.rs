//! The server's distribution and version, and what they imply.

use std::fmt;

use capsule_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which product answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Elasticsearch (6 to 8 supported).
    Elasticsearch,
    /// OpenSearch (1 to 3 supported).
    Opensearch,
}

impl Distribution {
    /// `Elasticsearch` or `OpenSearch`.
    pub fn product(self) -> &'static str {
        match self {
            Distribution::Elasticsearch => "Elasticsearch",
            Distribution::Opensearch => "OpenSearch",
        }
    }
}

/// The distribution and version of a server, from `GET /`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    /// Elasticsearch or OpenSearch.
    pub distribution: Distribution,
    /// The version number as the server reports it (`8.11.3`).
    pub version: String,
    /// The cluster's name.
    #[serde(default)]
    pub cluster_name: String,
}

impl fmt::Display for ServerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.distribution.product(), self.version)
    }
}

#[derive(Deserialize)]
struct RootReply {
    #[serde(default)]
    cluster_name: String,
    version: RootVersion,
}

#[derive(Deserialize)]
struct RootVersion {
    number: String,
    #[serde(default)]
    distribution: Option<String>,
}

impl ServerInfo {
    /// Parses the body of `GET /`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when it is not an Elasticsearch or
    /// OpenSearch answer, or a version before Elasticsearch 6.
    pub fn from_root(body: &[u8], label: &str) -> Result<Self> {
        let reply: RootReply = serde_json::from_slice(body).map_err(|_| {
            Error::Unsupported(format!(
                "{label}: the server's answer to GET / is not Elasticsearch's or OpenSearch's"
            ))
        })?;
        let distribution = match reply.version.distribution.as_deref() {
            Some("opensearch") => Distribution::Opensearch,
            _ => Distribution::Elasticsearch,
        };
        let info = ServerInfo {
            distribution,
            version: reply.version.number,
            cluster_name: reply.cluster_name,
        };
        let major = info.major();
        let (lo, hi) = match distribution {
            Distribution::Elasticsearch => (6, 8),
            Distribution::Opensearch => (1, 3),
        };
        if major < lo {
            return Err(Error::Unsupported(format!(
                "{label}: {info} is not supported ({} {lo} to {hi} are)",
                distribution.product()
            )));
        }
        if major > hi {
            tracing::warn!(server = %info, "newer than the versions capsule was tested with; trying anyway");
        }
        Ok(info)
    }

    /// The major version (0 when unparsable).
    pub fn major(&self) -> u32 {
        self.version_part(0)
    }

    fn version_part(&self, i: usize) -> u32 {
        self.version
            .split(['.', '-'])
            .nth(i)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major(), self.version_part(1)) >= (major, minor)
    }

    /// Elasticsearch 6: mappings carry a type name, documents a `_type`.
    pub fn typed(&self) -> bool {
        self.distribution == Distribution::Elasticsearch && self.major() < 7
    }

    /// Has `_index_template` and `_component_template` (ES 7.8+, OpenSearch).
    pub fn composable_templates(&self) -> bool {
        match self.distribution {
            Distribution::Elasticsearch => self.at_least(7, 8),
            Distribution::Opensearch => true,
        }
    }

    /// Accepts `track_total_hits` in a search body (ES 7+, OpenSearch).
    pub fn track_total_hits(&self) -> bool {
        match self.distribution {
            Distribution::Elasticsearch => self.major() >= 7,
            Distribution::Opensearch => true,
        }
    }

    /// Has the clone index API, `_clone` (ES 7.4+, OpenSearch 1+). Whether
    /// a server claiming it really answers is probed before it is used.
    pub fn clone_api(&self) -> bool {
        match self.distribution {
            Distribution::Elasticsearch => self.at_least(7, 4),
            Distribution::Opensearch => true,
        }
    }

    /// Accepts `slices=auto` on `_reindex` (ES 6.1+, OpenSearch).
    pub fn auto_slices(&self) -> bool {
        match self.distribution {
            Distribution::Elasticsearch => self.at_least(6, 1),
            Distribution::Opensearch => true,
        }
    }

    /// Knows `expand_wildcards=hidden` (ES 7.7+, OpenSearch).
    pub fn hidden_indices(&self) -> bool {
        match self.distribution {
            Distribution::Elasticsearch => self.at_least(7, 7),
            Distribution::Opensearch => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(body: &str) -> Result<ServerInfo> {
        ServerInfo::from_root(body.as_bytes(), "elasticsearch(h:1)")
    }

    #[test]
    fn detects_distribution_and_features() {
        let os = info(
            r#"{"cluster_name":"c","version":{"distribution":"opensearch","number":"3.8.0"}}"#,
        )
        .unwrap();
        assert_eq!(os.to_string(), "OpenSearch 3.8.0");
        assert!(os.composable_templates() && os.track_total_hits() && !os.typed());
        let es6 = info(r#"{"version":{"number":"6.8.23"}}"#).unwrap();
        assert_eq!(es6.to_string(), "Elasticsearch 6.8.23");
        assert!(es6.typed() && !es6.composable_templates() && !es6.track_total_hits());
        assert!(!es6.clone_api() && es6.auto_slices());
        let es60 = info(r#"{"version":{"number":"6.0.1"}}"#).unwrap();
        assert!(!es60.auto_slices());
        let es73 = info(r#"{"version":{"number":"7.3.2"}}"#).unwrap();
        let es74 = info(r#"{"version":{"number":"7.4.0"}}"#).unwrap();
        assert!(!es73.clone_api() && es74.clone_api() && os.clone_api());
        let es77 = info(r#"{"version":{"number":"7.7.1","build_flavor":"default"}}"#).unwrap();
        assert!(es77.hidden_indices() && !es77.composable_templates());
        let es8 = info(r#"{"version":{"number":"8.13.0-SNAPSHOT"}}"#).unwrap();
        assert_eq!(es8.major(), 8);
        assert!(es8.composable_templates());
        assert!(info(r#"{"version":{"number":"5.6.0"}}"#).is_err());
        assert!(info("<html>").is_err());
    }
}
