//! Backup identifiers and service types.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// The kind of service a backup belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ServiceType {
    /// PostgreSQL (`postgresql`, CLI `pg`).
    Postgresql,
    /// Redis (`redis`).
    Redis,
    /// Elasticsearch or OpenSearch (`elasticsearch`, CLI `es`).
    Elasticsearch,
}

impl ServiceType {
    /// Every service type, in display order.
    pub const ALL: [ServiceType; 3] = [
        ServiceType::Postgresql,
        ServiceType::Redis,
        ServiceType::Elasticsearch,
    ];

    /// The name used in backup ids, statefiles and bucket paths.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::Postgresql => "postgresql",
            ServiceType::Redis => "redis",
            ServiceType::Elasticsearch => "elasticsearch",
        }
    }

    /// The short name of the CLI subcommand (`pg`, `redis`, `es`).
    pub fn short_name(self) -> &'static str {
        match self {
            ServiceType::Postgresql => "pg",
            ServiceType::Redis => "redis",
            ServiceType::Elasticsearch => "es",
        }
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "postgresql" | "postgres" | "pg" => Ok(ServiceType::Postgresql),
            "redis" => Ok(ServiceType::Redis),
            "elasticsearch" | "es" | "opensearch" => Ok(ServiceType::Elasticsearch),
            _ => Err(Error::Invalid {
                what: "service type".into(),
                message: format!(
                    "unknown service type {s:?}: expected postgresql, redis or elasticsearch"
                ),
            }),
        }
    }
}

impl Serialize for ServiceType {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ServiceType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of the random part of a backup id, as the legacy tool made them.
pub const BACKUP_ID_RANDOM_LEN: usize = 22;

/// A backup identifier: `<serviceType>-<22 base62 characters>`, also the
/// name of the backup's folder in the bucket.
///
/// Parsing is lenient about the random part (any non-empty run of ASCII
/// letters, digits, `_` and `-`), so ids written by other tools still load;
/// [`BackupId::generate`] always makes the legacy shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackupId {
    service_type: ServiceType,
    value: String,
}

impl BackupId {
    /// A new random id for a backup of `service_type`.
    pub fn generate(service_type: ServiceType) -> Self {
        Self::generate_with(service_type, &mut rand::thread_rng())
    }

    /// A new id drawn from `rng` (for reproducible tests).
    pub fn generate_with(service_type: ServiceType, rng: &mut impl Rng) -> Self {
        let random: String = (0..BACKUP_ID_RANDOM_LEN)
            .map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char)
            .collect();
        BackupId {
            service_type,
            value: format!("{service_type}-{random}"),
        }
    }

    /// The service type named by the id's first part.
    pub fn service_type(&self) -> ServiceType {
        self.service_type
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl FromStr for BackupId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |why: &str| Error::Invalid {
            what: "backup id".into(),
            message: format!("invalid backup id {s:?}: {why}"),
        };
        let (kind, random) = s
            .split_once('-')
            .ok_or_else(|| invalid("expected <serviceType>-<random>"))?;
        let service_type: ServiceType = match kind {
            "postgresql" | "redis" | "elasticsearch" => kind.parse()?,
            _ => return Err(invalid("unknown service type prefix")),
        };
        if random.is_empty()
            || random.len() > 128
            || !random
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid("the random part must be letters and digits"));
        }
        Ok(BackupId {
            service_type,
            value: s.to_string(),
        })
    }
}

impl Serialize for BackupId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.value)
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_ids_have_the_legacy_shape() {
        for t in ServiceType::ALL {
            let id = BackupId::generate(t);
            let (kind, random) = id.as_str().split_once('-').unwrap();
            assert_eq!(kind, t.as_str());
            assert_eq!(random.len(), BACKUP_ID_RANDOM_LEN);
            assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(id.as_str().parse::<BackupId>().unwrap(), id);
        }
    }

    #[test]
    fn legacy_ids_parse() {
        let id: BackupId = "postgresql-9nVJ8sGmQbXc3RkHzW2tLp".parse().unwrap();
        assert_eq!(id.service_type(), ServiceType::Postgresql);
    }

    #[test]
    fn bad_ids_are_named() {
        for bad in [
            "",
            "postgresql",
            "postgresql-",
            "mysql-abc",
            "redis-a/b",
            "redis-a b",
        ] {
            let err = bad.parse::<BackupId>().unwrap_err().to_string();
            assert!(err.contains("invalid backup id"), "{err}");
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".*") {
            let _ = s.parse::<BackupId>();
        }
    }
}
