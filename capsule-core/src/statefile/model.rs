//! The statefile model shared by every version.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{BackupId, ServiceType};
use crate::period::Period;
use crate::status::{RestoreStatus, Status};

use super::STATEFILE_V1;

/// One backup's statefile (the model of every version).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Statefile {
    /// `v1` for statefiles capsule writes; `v1alpha1` for legacy ones read.
    pub statefile_version: String,
    /// The backup id, also the folder name.
    pub backup_id: BackupId,
    /// What kind of service was backed up.
    pub service_type: ServiceType,
    /// Which service: identity only, never credentials.
    #[serde(default)]
    pub service: ServiceIdentity,
    /// Periodic (made by a schedule) or manual.
    pub request_type: RequestType,
    /// Where the backup stands.
    pub status: Status,
    /// When the backup was asked for (legacy `date`).
    pub requested_at: DateTime<Utc>,
    /// When a capsule started running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Free text from the requester.
    #[serde(default)]
    pub description: String,
    /// The schedule that made a periodic backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// The stored objects, each with size and checksum.
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
    /// What the engine recorded: versions, database, fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInfo>,
    /// The capsule running (or that ran) the backup, with its heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Every restore of this backup, oldest first.
    #[serde(default)]
    pub restores: Vec<Restore>,
    /// Restore drills, oldest first.
    #[serde(default)]
    pub verifications: Vec<Verification>,
    /// Why the backup failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Present only on statefiles read from `v1alpha1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<LegacyInfo>,
    /// Fields this version does not know, kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Statefile {
    /// A new `requested` v1 statefile.
    pub fn new(
        backup_id: BackupId,
        request_type: RequestType,
        requested_at: DateTime<Utc>,
    ) -> Self {
        Statefile {
            statefile_version: STATEFILE_V1.to_string(),
            service_type: backup_id.service_type(),
            backup_id,
            service: ServiceIdentity::default(),
            request_type,
            status: Status::Requested,
            requested_at,
            started_at: None,
            finished_at: None,
            description: String::new(),
            schedule: None,
            artifacts: Vec::new(),
            engine: None,
            owner: None,
            restores: Vec::new(),
            verifications: Vec::new(),
            error: None,
            legacy: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Whether this statefile was read from the legacy `v1alpha1` format.
    pub fn is_legacy(&self) -> bool {
        self.legacy.is_some()
    }

    /// Total stored size of the artifacts, when every size is known (and
    /// the total fits in a `u64`: sizes come from a file anyone may edit).
    pub fn size_bytes(&self) -> Option<u64> {
        self.artifacts
            .iter()
            .map(|a| a.size_bytes)
            .try_fold(0u64, |acc, s| acc.checked_add(s?))
            .filter(|_| !self.artifacts.is_empty())
    }

    /// Wall time of the backup run, when it started and ended.
    pub fn duration(&self) -> Option<chrono::Duration> {
        Some(self.finished_at? - self.started_at?)
    }

    /// For a `running` backup, when it last showed life: its owner's
    /// heartbeat, or its start when it records none (a legacy statefile).
    /// `None` for any other status.
    pub fn last_heartbeat(&self) -> Option<DateTime<Utc>> {
        if self.status != Status::Running {
            return None;
        }
        Some(match &self.owner {
            Some(o) => o.heartbeat_at,
            None => self.started_at.unwrap_or(self.requested_at),
        })
    }

    /// Whether a restore of this backup is requested or running.
    pub fn restore_pending(&self) -> bool {
        self.restores.iter().any(|r| {
            matches!(
                r.status,
                crate::status::RestoreStatus::Requested | crate::status::RestoreStatus::Running
            )
        })
    }

    /// The newest verification, if any.
    pub fn last_verification(&self) -> Option<&Verification> {
        self.verifications.last()
    }

    /// The artifact named `name`.
    pub fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }

    /// The artifact that holds the data (role `data`, else the first).
    pub fn data_artifact(&self) -> Option<&Artifact> {
        self.artifacts
            .iter()
            .find(|a| a.role == ArtifactRole::Data)
            .or_else(|| self.artifacts.first())
    }
}

/// Which service a backup is of. Names and addresses only; credentials are
/// never part of a statefile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceIdentity {
    /// The cluster (capsule's `--cluster`), so many clusters can share a bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Kubernetes namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Service (or PVC) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Host and port, without user or password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Database (PostgreSQL database, Redis db number, ES index pattern).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

impl ServiceIdentity {
    /// `namespace/name`, or whichever part is known.
    pub fn qualified_name(&self) -> Option<String> {
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            (None, Some(n)) => Some(n.clone()),
            (Some(ns), None) => Some(ns.clone()),
            (None, None) => None,
        }
    }

    /// What an operator tells backups apart by: `namespace/name` when
    /// known, else `endpoint/database` (`10.0.0.7:5432/app`), else
    /// whichever of the two is known.
    pub fn label(&self) -> Option<String> {
        self.qualified_name()
            .or_else(|| match (&self.endpoint, &self.database) {
                (Some(e), Some(d)) => Some(format!("{e}/{d}")),
                (Some(e), None) => Some(e.clone()),
                (None, Some(d)) => Some(d.clone()),
                (None, None) => None,
            })
    }
}

/// Why the backup was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RequestType {
    /// Made by a schedule; subject to rotation.
    Periodic,
    /// Asked for by a person or a tool; never rotated away.
    Manual,
}

impl RequestType {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::Periodic => "periodic",
            RequestType::Manual => "manual",
        }
    }
}

impl std::fmt::Display for RequestType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The schedule that made a periodic backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Schedule {
    /// How often a backup is due.
    pub period: Period,
    /// How many finished periodic backups are kept.
    pub rotation: u32,
}

impl Schedule {
    /// A schedule.
    pub fn new(period: Period, rotation: u32) -> Self {
        Schedule { period, rotation }
    }
}

/// What part of the backup an artifact holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ArtifactRole {
    /// The data itself (a dump, an RDB, documents).
    #[default]
    Data,
    /// Roles or users the data needs.
    Roles,
    /// Schema-level metadata (mappings, settings, templates).
    Metadata,
    /// Anything else, by name.
    #[serde(untagged)]
    Other(String),
}

/// How an artifact's bytes are compressed in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Compression {
    /// Stored as the engine produced it.
    #[default]
    None,
    /// A zstd frame (with zstd's content checksum).
    Zstd,
}

impl Compression {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }
}

/// One stored object of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Artifact {
    /// Object name inside the backup folder.
    pub name: String,
    /// What it holds.
    #[serde(default)]
    pub role: ArtifactRole,
    /// Engine format, e.g. `pg_dump-custom`, `pg_dump-tar`, `rdb`, `ndjson`.
    pub format: String,
    /// Compression of the stored bytes.
    #[serde(default)]
    pub compression: Compression,
    /// Size of the stored object in bytes (unknown for some legacy ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Lowercase hex SHA-256 of the stored bytes (absent on legacy backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size before compression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_size_bytes: Option<u64>,
    /// The tool and version that produced it (`pg_dump (PostgreSQL) 15.18`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_version: Option<String>,
    /// How the stored bytes are encrypted (after compression); absent when
    /// they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Fields this version does not know, kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Artifact {
    /// An artifact with the data role and no size or checksum yet.
    pub fn new(name: impl Into<String>, format: impl Into<String>) -> Self {
        Artifact {
            name: name.into(),
            role: ArtifactRole::Data,
            format: format.into(),
            compression: Compression::None,
            size_bytes: None,
            sha256: None,
            raw_size_bytes: None,
            tool_version: None,
            encryption: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Whether the stored bytes are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }
}

/// How an artifact's stored bytes are encrypted: the format and who can
/// decrypt them. Public keys only, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Encryption {
    /// `age` (<https://age-encryption.org/v1>).
    pub format: String,
    /// The recipients' public keys (`age1…`): the holder of any of their
    /// identities can decrypt.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Fields this version does not know, kept so a rewrite loses nothing.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Encryption {
    /// age, to `recipients` (public keys).
    pub fn age(recipients: Vec<String>) -> Self {
        Encryption {
            format: crate::encryption::AGE_FORMAT.to_string(),
            recipients,
            extra: serde_json::Map::new(),
        }
    }
}

/// What the engine learnt while backing up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineInfo {
    /// Server product and version (`PostgreSQL 15.18`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// The database (or db number, or index pattern) backed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Data fingerprint taken in the same snapshot as the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
    /// Engine-specific facts (capture path, snapshot id…), never secrets.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// A comparable summary of the data: exact counts (rows per table, keys per
/// database, documents per index) and values (sequence positions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fingerprint {
    /// Exact counts by object name.
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    /// Other values by name (e.g. sequence last values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
}

impl Fingerprint {
    /// Differences between the recorded fingerprint (`self`) and `actual`,
    /// one line per object, empty when they agree.
    pub fn compare(&self, actual: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        diff_maps(&self.counts, &actual.counts, &mut out);
        diff_maps(&self.values, &actual.values, &mut out);
        out
    }
}

fn diff_maps<V: PartialEq + std::fmt::Display>(
    expected: &BTreeMap<String, V>,
    actual: &BTreeMap<String, V>,
    out: &mut Vec<String>,
) {
    for (name, want) in expected {
        match actual.get(name) {
            None => out.push(format!("{name}: missing (expected {want})")),
            Some(got) if got != want => out.push(format!("{name}: expected {want}, found {got}")),
            Some(_) => {}
        }
    }
    for (name, got) in actual {
        if !expected.contains_key(name) {
            out.push(format!("{name}: unexpected (found {got})"));
        }
    }
}

/// The capsule process that runs a backup, and its heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Owner {
    /// Unique per process run (host, pid and a random part).
    pub id: String,
    /// Host or pod name.
    #[serde(default)]
    pub host: String,
    /// The cluster it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Last sign of life.
    pub heartbeat_at: DateTime<Utc>,
}

impl Owner {
    /// An owner for this process, beating now.
    pub fn this_process(cluster: Option<String>, now: DateTime<Utc>) -> Self {
        let host = hostname();
        let pid = std::process::id();
        let tag: u32 = rand::random();
        Owner {
            id: format!("{host}/{pid}/{tag:08x}"),
            host,
            cluster,
            heartbeat_at: now,
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// One restore of the backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Restore {
    /// When it was asked for (legacy `date`).
    pub requested_at: DateTime<Utc>,
    /// Where it stands.
    pub status: RestoreStatus,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The target, without credentials (`127.0.0.1:5432/app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How it restored (`safe-swap`, `in-place`, `target-db`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Who ran it (owner id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Why it failed, and whether the target was touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Restore {
    /// A new restore request.
    pub fn requested(at: DateTime<Utc>) -> Self {
        Restore {
            requested_at: at,
            status: RestoreStatus::Requested,
            started_at: None,
            finished_at: None,
            target: None,
            mode: None,
            owner: None,
            error: None,
        }
    }
}

/// Outcome of a restore drill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum VerificationStatus {
    /// The restored data matched the fingerprint.
    Passed,
    /// It did not, or the drill failed.
    Failed,
}

/// One restore drill: restored into a scratch target and compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// When the drill ended.
    pub at: DateTime<Utc>,
    /// Its outcome.
    pub status: VerificationStatus,
    /// The scratch target, without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Every difference found, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
    /// How long the drill took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why the drill could not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a legacy (`v1alpha1`) statefile said that v1 models differently.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct LegacyInfo {
    /// The legacy status word (`initialized`, `dumpingdb`, …).
    pub status: String,
    /// The legacy bucket type (`minio`, `aws`, …), without the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_type: Option<String>,
    /// The dump's object name (`service.dumpfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dumpfile: Option<String>,
}
