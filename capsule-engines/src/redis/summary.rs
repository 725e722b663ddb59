//! What a backup learns from the RDB it stored: the parser's walk over the
//! same bytes the pipeline uploads (header, version, every value's
//! framing, the CRC-64 trailer), with keys counted per database.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::{Map, Value, json};

use super::rdb::{ParseOptions, RdbItem, RdbParser, type_name};

/// The aux fields worth recording (the rest, e.g. `used-mem`, change with
/// every backup and say little).
const KEPT_AUX: [&str; 5] = ["redis-ver", "redis-bits", "ctime", "aof-base", "repl-id"];

/// The details field recording [`RdbSummary::largest_value`].
pub(crate) const LARGEST_VALUE: &str = "largestValueBytes";

/// The verified facts of one RDB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RdbSummary {
    /// RDB version from the header.
    pub(crate) version: u32,
    /// Keys per database.
    pub(crate) keys: BTreeMap<u64, u64>,
    /// Keys with an expiry per database.
    pub(crate) expires: BTreeMap<u64, u64>,
    /// Keys per data type.
    pub(crate) types: BTreeMap<&'static str, u64>,
    /// Function libraries.
    pub(crate) functions: u64,
    /// Module aux records (not restorable with `RESTORE`).
    pub(crate) module_aux: u64,
    /// Selected aux fields.
    pub(crate) aux: BTreeMap<String, String>,
    /// Size of the RDB.
    pub(crate) bytes: u64,
    /// The largest value's encoding (type byte included): what one
    /// `RESTORE` of it would carry.
    pub(crate) largest_value: u64,
    /// The CRC-64 trailer.
    pub(crate) checksum: u64,
    /// Whether the trailer was compared (false when the server writes 0).
    pub(crate) checksum_verified: bool,
}

impl RdbSummary {
    /// Keys per database as the fingerprint names them (`db0`, `db3`…).
    pub(crate) fn counts(&self) -> BTreeMap<String, u64> {
        self.keys
            .iter()
            .map(|(db, n)| (format!("db{db}"), *n))
            .collect()
    }

    /// The facts recorded in the statefile's engine details.
    pub(crate) fn details(&self, details: &mut Map<String, Value>) {
        details.insert("rdbVersion".into(), json!(self.version));
        details.insert("rdbBytes".into(), json!(self.bytes));
        details.insert(
            "rdbChecksum".into(),
            json!(format!("crc64:{:016x}", self.checksum)),
        );
        details.insert("rdbChecksumVerified".into(), json!(self.checksum_verified));
        details.insert("keys".into(), json!(self.keys.values().sum::<u64>()));
        let expires: BTreeMap<String, u64> = self
            .expires
            .iter()
            .map(|(db, n)| (format!("db{db}"), *n))
            .collect();
        details.insert("expires".into(), json!(expires));
        details.insert("keysByType".into(), json!(self.types));
        details.insert("functionLibraries".into(), json!(self.functions));
        details.insert(LARGEST_VALUE.into(), json!(self.largest_value));
        if self.module_aux > 0 {
            details.insert("moduleAuxRecords".into(), json!(self.module_aux));
        }
        if !self.aux.is_empty() {
            details.insert("rdbAux".into(), json!(self.aux));
        }
    }
}

/// Reads a whole RDB from `reader`, checking its framing and checksum.
///
/// # Errors
/// The parser's message (with the byte offset) for a corrupt, truncated or
/// unsupported RDB.
pub(crate) fn verify(reader: impl Read) -> Result<RdbSummary, String> {
    let fail = |e: super::rdb::RdbError| format!("invalid RDB stream: {e}");
    let mut parser = RdbParser::new(reader, ParseOptions::default()).map_err(fail)?;
    let mut s = RdbSummary {
        version: parser.version(),
        ..RdbSummary::default()
    };
    while let Some(item) = parser.next_item().map_err(fail)? {
        match item {
            RdbItem::Entry(e) => {
                *s.keys.entry(e.db).or_default() += 1;
                if e.expire_ms.is_some() {
                    *s.expires.entry(e.db).or_default() += 1;
                }
                *s.types.entry(type_name(e.value_type)).or_default() += 1;
                s.largest_value = s.largest_value.max(e.value_len);
            }
            RdbItem::Aux { key, value } => {
                let key = String::from_utf8_lossy(&key).into_owned();
                if KEPT_AUX.contains(&key.as_str()) {
                    s.aux
                        .insert(key, String::from_utf8_lossy(&value).into_owned());
                }
            }
            RdbItem::Function { .. } => s.functions += 1,
            RdbItem::ModuleAux { .. } => s.module_aux += 1,
            RdbItem::End { checksum, verified } => {
                s.checksum = checksum;
                s.checksum_verified = verified;
            }
            _ => {}
        }
    }
    s.bytes = parser.offset();
    Ok(s)
}
