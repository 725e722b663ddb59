//! Reader for the legacy Go tool's `v1alpha1` statefiles.
//!
//! The legacy file stored the bucket credentials (`bucket`) and the database
//! credentials (`service.creds`, and again inside `backupCmd`/`restoreCmd`)
//! in plain text. Those fields are skipped by the parser (`IgnoredAny`): they
//! are never held in memory as strings, so they cannot leak into output.
//!
//! Mapping into the v1 model:
//!
//! | v1alpha1 | model |
//! |---|---|
//! | `date` (RFC 3339, ns, any offset) | `requestedAt` (UTC) |
//! | `requestType` `periodicbackuprequest`/`manualbackuprequest` | `periodic`/`manual` |
//! | `period` (float seconds), `rotation` | `schedule` (periodic only) |
//! | `status` `initialized` | `requested` |
//! | `status` `dumpingdb`, `uploadingdb` | `running` |
//! | `status` `failed`, `finished` | same |
//! | `service.name` `ns/pvc` | `service.namespace`, `service.name` |
//! | `service.creds.host`, `.db` | `service.endpoint`, `service.database` |
//! | `service.dumpfile` | one artifact, format `pg_dump-tar`, no checksum |
//! | `restores[]` `{date, status}` | `restores[]` (`restorerequest` = requested) |
//!
//! A legacy statefile is never rewritten into v1 implicitly; a restore
//! request on a legacy backup is appended in the legacy shape by
//! [`append_restore_request`].

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{
    Artifact, ArtifactRole, Compression, LegacyInfo, RequestType, Restore, STATEFILE_V1ALPHA1,
    Schedule, ServiceIdentity, Statefile,
};
use crate::error::{Error, Result};
use crate::id::{BackupId, ServiceType};
use crate::period::Period;
use crate::status::{RestoreStatus, Status};

/// Format name of a legacy dump artifact.
pub const LEGACY_DUMP_FORMAT: &str = "pg_dump-tar";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    backup_id: String,
    #[serde(default)]
    request_type: Option<String>,
    #[serde(default)]
    rotation: Option<serde_json::Number>,
    date: String,
    #[serde(default)]
    period: Option<serde_json::Number>,
    #[serde(default)]
    bucket_type: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    bucket: Option<IgnoredAny>,
    #[serde(default)]
    service_type: Option<String>,
    #[serde(default)]
    service: Option<RawService>,
    #[serde(default)]
    restores: Option<Vec<RawRestore>>,
    status: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawService {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    creds: Option<RawCreds>,
    #[serde(default)]
    #[allow(dead_code)]
    backup_cmd: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    restore_cmd: Option<IgnoredAny>,
    #[serde(default)]
    dumpfile: Option<String>,
}

/// Only the non-secret parts of `service.creds`; `user` and `pass` are skipped.
#[derive(Deserialize)]
struct RawCreds {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    db: Option<String>,
}

#[derive(Deserialize)]
struct RawRestore {
    date: String,
    status: String,
}

fn invalid(id: &str, message: String) -> Error {
    Error::invalid("statefile", format!("v1alpha1 statefile {id}: {message}"))
}

/// Parses a legacy date: RFC 3339 with up to nanoseconds and any offset.
///
/// # Errors
/// When the text is not such a date.
pub fn parse_date(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| Error::invalid("date", format!("invalid date {s:?}: {e}")))
}

/// Parses a `v1alpha1` statefile into the model, dropping every secret.
///
/// # Errors
/// When a required key is missing or malformed; the message names it.
pub fn parse(bytes: &[u8]) -> Result<Statefile> {
    let raw: Raw = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid("statefile", format!("invalid v1alpha1 statefile: {e}")))?;
    let id_text = raw.backup_id.clone();
    let backup_id: BackupId = raw
        .backup_id
        .parse()
        .map_err(|e: Error| invalid(&id_text, e.to_string()))?;
    let service_type = match raw.service_type.as_deref() {
        Some(t) => t
            .parse::<ServiceType>()
            .map_err(|e| invalid(&id_text, e.to_string()))?,
        None => backup_id.service_type(),
    };
    let requested_at = parse_date(&raw.date).map_err(|e| invalid(&id_text, e.to_string()))?;
    let request_type = match raw.request_type.as_deref() {
        Some("periodicbackuprequest") => RequestType::Periodic,
        Some("manualbackuprequest") | None => RequestType::Manual,
        Some(other) => return Err(invalid(&id_text, format!("unknown requestType {other:?}"))),
    };
    let status = match raw.status.as_str() {
        "initialized" => Status::Requested,
        "dumpingdb" | "uploadingdb" => Status::Running,
        "failed" => Status::Failed,
        "finished" => Status::Finished,
        other => return Err(invalid(&id_text, format!("unknown status {other:?}"))),
    };
    let schedule = match (request_type, raw.period.as_ref().and_then(|p| p.as_f64())) {
        (RequestType::Periodic, Some(secs)) if secs >= 1.0 => {
            let rotation = raw
                .rotation
                .as_ref()
                .and_then(|r| r.as_u64())
                .map(|r| r.min(u32::MAX as u64) as u32)
                .unwrap_or(0);
            Some(Schedule::new(
                Period::from_secs_f64(secs).map_err(|e| invalid(&id_text, e.to_string()))?,
                rotation,
            ))
        }
        _ => None,
    };

    let mut service = ServiceIdentity::default();
    let mut dumpfile = None;
    if let Some(s) = raw.service {
        if let Some(name) = s.name.filter(|n| !n.is_empty()) {
            match name.split_once('/') {
                Some((ns, n)) => {
                    service.namespace = Some(ns.to_string());
                    service.name = Some(n.to_string());
                }
                None => service.name = Some(name),
            }
        }
        if let Some(c) = s.creds {
            service.endpoint = c.host.filter(|h| !h.is_empty());
            service.database = c.db.filter(|d| !d.is_empty());
        }
        dumpfile = s.dumpfile.filter(|d| !d.is_empty());
    }
    if let Some(d) = &dumpfile
        && (d.contains('/') || d == "." || d == ".." || d == super::STATEFILE_NAME)
    {
        return Err(invalid(&id_text, format!("invalid dumpfile {d:?}")));
    }

    let mut restores = Vec::new();
    for r in raw.restores.unwrap_or_default() {
        let at = parse_date(&r.date).map_err(|e| invalid(&id_text, e.to_string()))?;
        let mut entry = Restore::requested(at);
        entry.status = match r.status.as_str() {
            "restorerequest" | "requested" => RestoreStatus::Requested,
            "finished" => RestoreStatus::Finished,
            "failed" => RestoreStatus::Failed,
            "restoring" | "downloading" | "running" => RestoreStatus::Running,
            other => {
                return Err(invalid(
                    &id_text,
                    format!("unknown restore status {other:?}"),
                ));
            }
        };
        restores.push(entry);
    }

    // The dump of a finished backup is its one artifact. Size is filled in
    // by the catalog from the object listing; there was never a checksum.
    let artifacts = match (&dumpfile, status) {
        (Some(d), Status::Finished) => {
            let mut a = Artifact::new(d.clone(), LEGACY_DUMP_FORMAT);
            a.role = ArtifactRole::Data;
            a.compression = Compression::None;
            vec![a]
        }
        _ => Vec::new(),
    };

    let mut sf = Statefile::new(backup_id, request_type, requested_at);
    sf.statefile_version = STATEFILE_V1ALPHA1.to_string();
    sf.service_type = service_type;
    sf.service = service;
    sf.status = status;
    sf.description = raw.description.unwrap_or_default();
    sf.schedule = schedule;
    sf.artifacts = artifacts;
    sf.restores = restores;
    sf.legacy = Some(LegacyInfo {
        status: raw.status,
        bucket_type: raw.bucket_type.filter(|b| !b.is_empty()),
        dumpfile,
    });
    Ok(sf)
}

/// Appends a restore request (`{date, status: restorerequest}`) to a legacy
/// statefile's `restores`, leaving every other byte of meaning unchanged, as
/// the legacy CLI did.
///
/// # Errors
/// When `bytes` is not a JSON object.
pub fn append_restore_request(bytes: &[u8], at: DateTime<Utc>) -> Result<Vec<u8>> {
    let mut doc: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid("statefile", format!("invalid v1alpha1 statefile: {e}")))?;
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| Error::invalid("statefile", "v1alpha1 statefile is not an object"))?;
    let entry = serde_json::json!({
        "date": at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "status": "restorerequest",
    });
    match obj.get_mut("restores") {
        Some(serde_json::Value::Array(list)) => list.push(entry),
        _ => {
            obj.insert("restores".into(), serde_json::Value::Array(vec![entry]));
        }
    }
    serde_json::to_vec(&doc)
        .map_err(|e| Error::invalid("statefile", format!("cannot serialize: {e}")))
}

/// Records the outcome of a restore in a legacy statefile, in the legacy
/// shape: the `restores` entry whose `date` is `request` (a queued
/// `restorerequest`) gets `status`; without `request`, or when no such
/// entry is found, `{date: at, status}` is appended. Every other byte of
/// meaning is left unchanged. `status` is a legacy word (`finished`,
/// `failed`).
///
/// # Errors
/// When `bytes` is not a JSON object.
pub fn record_restore(
    bytes: &[u8],
    request: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
    status: &str,
) -> Result<Vec<u8>> {
    let mut doc: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid("statefile", format!("invalid v1alpha1 statefile: {e}")))?;
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| Error::invalid("statefile", "v1alpha1 statefile is not an object"))?;
    if !matches!(obj.get("restores"), Some(serde_json::Value::Array(_))) {
        obj.insert("restores".into(), serde_json::Value::Array(Vec::new()));
    }
    let Some(serde_json::Value::Array(list)) = obj.get_mut("restores") else {
        unreachable!("inserted above")
    };
    let claimed = request.and_then(|want| {
        list.iter_mut().find(|e| {
            e.get("status").and_then(|s| s.as_str()) == Some("restorerequest")
                && e.get("date")
                    .and_then(|d| d.as_str())
                    .and_then(|d| parse_date(d).ok())
                    == Some(want)
        })
    });
    match claimed {
        Some(entry) => {
            entry["status"] = serde_json::Value::String(status.to_string());
        }
        None => list.push(serde_json::json!({
            "date": at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "status": status,
        })),
    }
    serde_json::to_vec(&doc)
        .map_err(|e| Error::invalid("statefile", format!("cannot serialize: {e}")))
}
