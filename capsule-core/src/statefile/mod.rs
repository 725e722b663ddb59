//! The statefile: one JSON document per backup, `<prefix>/<backupId>/statefile.json`,
//! that says what the backup is, where it stands and what became of it.
//!
//! Capsule writes version `v1` (documented in `docs/statefile.md`, schema in
//! `docs/statefile.schema.json`) and reads the legacy `v1alpha1` of the Go
//! tool (see [`legacy`]). Reading is lenient (unknown fields are kept and
//! written back unchanged); secrets of legacy files are dropped while parsing.

pub mod legacy;
mod model;

pub use model::*;

use crate::error::{Error, Result};

/// Object name of the statefile inside a backup folder.
pub const STATEFILE_NAME: &str = "statefile.json";

/// The version capsule writes.
pub const STATEFILE_V1: &str = "v1";

/// The legacy version it reads.
pub const STATEFILE_V1ALPHA1: &str = "v1alpha1";

/// The `statefileVersion` a statefile declares (`None` when it has none, as
/// the oldest legacy ones), read without parsing the rest.
///
/// # Errors
/// When `bytes` is not a JSON object.
pub fn declared_version(bytes: &[u8]) -> serde_json::Result<Option<String>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        statefile_version: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes).map(|p| p.statefile_version)
}

/// `at` as statefiles, summaries and the API write dates: RFC 3339 in UTC
/// with `Z`, fractional seconds only as far as they are needed
/// (`2021-06-11T06:15:44.000000001Z`, `2026-11-26T12:00:00Z`).
pub fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Whether this capsule reads statefiles of `version`.
pub fn is_known_version(version: &str) -> bool {
    matches!(version, STATEFILE_V1 | STATEFILE_V1ALPHA1)
}

/// Largest statefile accepted; a bigger one is reported as unreadable
/// rather than loaded into memory.
pub const MAX_STATEFILE_BYTES: usize = 16 * 1024 * 1024;

impl Statefile {
    /// Parses a statefile of any supported version.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the bytes are not a statefile of a known version.
    pub fn from_slice(bytes: &[u8]) -> Result<Statefile> {
        if bytes.len() > MAX_STATEFILE_BYTES {
            return Err(Error::invalid(
                "statefile",
                format!("statefile too large ({} bytes)", bytes.len()),
            ));
        }
        let version = declared_version(bytes)
            .map_err(|e| Error::invalid("statefile", format!("not a JSON statefile: {e}")))?;
        match version.as_deref() {
            Some(STATEFILE_V1) => {
                let sf = serde_json::from_slice::<Statefile>(bytes).map_err(|e| {
                    Error::invalid("statefile", format!("invalid v1 statefile: {e}"))
                })?;
                // The id's prefix says which engine lists and restores it.
                if sf.backup_id.service_type() != sf.service_type {
                    return Err(Error::invalid(
                        "statefile",
                        format!(
                            "invalid v1 statefile: backupId {} names a {} backup but serviceType \
                             is {}",
                            sf.backup_id,
                            sf.backup_id.service_type(),
                            sf.service_type
                        ),
                    ));
                }
                Ok(sf)
            }
            Some(STATEFILE_V1ALPHA1) | None => legacy::parse(bytes),
            Some(other) => Err(Error::invalid(
                "statefile",
                format!(
                    "unsupported statefile version {other:?} (this capsule reads v1 and v1alpha1)"
                ),
            )),
        }
    }

    /// Serializes as a `v1` statefile.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a statefile read from `v1alpha1`: a legacy
    /// file is never rewritten into v1 implicitly (see [`legacy`]).
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        if self.is_legacy() {
            return Err(Error::Unsupported(format!(
                "backup {}: legacy v1alpha1 statefile is not rewritten as v1",
                self.backup_id
            )));
        }
        let mut out = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::invalid("statefile", format!("cannot serialize: {e}")))?;
        out.push(b'\n');
        Ok(out)
    }

    /// The JSON shown to users (`--describe`, `--json`, the API): the model
    /// of any version. Never holds a secret, since none is ever parsed.
    pub fn to_display_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod mutation_tests;
#[cfg(test)]
mod tests;
