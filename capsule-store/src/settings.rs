//! Legacy storage settings: the old CLI's flags and environment, and the
//! `CNVRG_STORAGE_*` keys of the Kubernetes bucket secret.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// The legacy `--bucket-type` (`CNVRG_STORAGE_TYPE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BucketType {
    /// MinIO or any S3-compatible server at a custom endpoint (path-style).
    #[default]
    Minio,
    /// Amazon S3.
    Aws,
    /// Azure Blob Storage.
    Azure,
    /// Google Cloud Storage.
    Gcp,
}

impl BucketType {
    /// Every bucket type, in documentation order.
    pub const ALL: [BucketType; 4] = [
        BucketType::Minio,
        BucketType::Aws,
        BucketType::Azure,
        BucketType::Gcp,
    ];

    /// The lowercase name: `minio`, `aws`, `azure` or `gcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            BucketType::Minio => "minio",
            BucketType::Aws => "aws",
            BucketType::Azure => "azure",
            BucketType::Gcp => "gcp",
        }
    }
}

impl fmt::Display for BucketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BucketType {
    type Err = Error;

    /// Parses a bucket type, ignoring case and surrounding blanks.
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim();
        BucketType::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown bucket type {s:?}: expected one of minio, aws, azure, gcp"
                ))
            })
    }
}

/// Legacy storage settings: the old CLI's flags/env and the bucket secret's
/// `CNVRG_STORAGE_*` keys. Turn them into a store with
/// [`StoreBuilder::from_settings`](crate::StoreBuilder::from_settings).
///
/// `Debug` never prints the secrets.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct StorageSettings {
    /// `--bucket-type`: minio (default), aws, azure or gcp.
    pub bucket_type: BucketType,
    /// `--endpoint`: the S3 endpoint, with or without scheme (minio).
    pub endpoint: Option<String>,
    /// `--region` (S3).
    pub region: Option<String>,
    /// `--access-key` (S3).
    pub access_key: Option<Secret>,
    /// `--secret-key` (S3).
    pub secret_key: Option<Secret>,
    /// `--use-ssl`: https for a minio endpoint given without scheme.
    pub use_ssl: Option<bool>,
    /// `--ca-file`: a PEM file of CA certificates trusted for https besides
    /// the system's (a MinIO with a private CA).
    pub ca_file: Option<PathBuf>,
    /// `--bucket-name`: the bucket (the container for azure).
    pub bucket_name: Option<String>,
    /// `--account-name` (azure).
    pub account_name: Option<String>,
    /// `--account-key` (azure).
    pub account_key: Option<Secret>,
    /// `--key-json` (gcp): the service account key JSON itself, or a path to it.
    pub key_json: Option<Secret>,
    /// `--project-id` (gcp; not needed for object access, kept for display).
    pub project_id: Option<String>,
}

impl StorageSettings {
    /// Empty settings of `bucket_type`; set the public fields next.
    pub fn new(bucket_type: BucketType) -> Self {
        StorageSettings {
            bucket_type,
            ..Default::default()
        }
    }

    /// From the bucket Secret's keys: `CNVRG_STORAGE_TYPE`, `_ENDPOINT`,
    /// `_BUCKET`, `_ACCESS_KEY`, `_SECRET_KEY`, `_REGION`,
    /// `_AZURE_ACCOUNT_NAME`, `_AZURE_ACCESS_KEY`, `_AZURE_CONTAINER` (the
    /// bucket for azure), `_PROJECT`. The GCP key JSON lives in a second
    /// secret (`CNVRG_STORAGE_GCP_SECRET_REF`) and is passed separately.
    /// Empty values count as absent; a missing type means minio.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `CNVRG_STORAGE_TYPE` when the type is
    /// unknown.
    pub fn from_secret_data(
        data: &BTreeMap<String, String>,
        gcp_key_json: Option<Secret>,
    ) -> Result<Self> {
        let get = |key: &str| {
            data.get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let secret = |key: &str| get(key).map(Secret::new);
        let bucket_type = match get("CNVRG_STORAGE_TYPE") {
            Some(t) => t.parse().map_err(|_| {
                Error::invalid(format!(
                    "CNVRG_STORAGE_TYPE {t:?} in the bucket secret is not a bucket type: expected one of minio, aws, azure, gcp"
                ))
            })?,
            None => BucketType::Minio,
        };
        let bucket_name = match bucket_type {
            BucketType::Azure => {
                get("CNVRG_STORAGE_AZURE_CONTAINER").or_else(|| get("CNVRG_STORAGE_BUCKET"))
            }
            _ => get("CNVRG_STORAGE_BUCKET"),
        };
        Ok(StorageSettings {
            bucket_type,
            endpoint: get("CNVRG_STORAGE_ENDPOINT"),
            region: get("CNVRG_STORAGE_REGION"),
            access_key: secret("CNVRG_STORAGE_ACCESS_KEY"),
            secret_key: secret("CNVRG_STORAGE_SECRET_KEY"),
            use_ssl: None,
            ca_file: None,
            bucket_name,
            account_name: get("CNVRG_STORAGE_AZURE_ACCOUNT_NAME"),
            account_key: secret("CNVRG_STORAGE_AZURE_ACCESS_KEY"),
            key_json: gcp_key_json.filter(|k| !k.is_empty()),
            project_id: get("CNVRG_STORAGE_PROJECT"),
        })
    }
}

impl fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &Option<Secret>| match s {
            Some(s) if !s.is_empty() => "***",
            Some(_) => "(empty)",
            None => "(none)",
        };
        f.debug_struct("StorageSettings")
            .field("bucket_type", &self.bucket_type)
            .field(
                "endpoint",
                &self.endpoint.as_deref().map(crate::error::redact_url_text),
            )
            .field("region", &self.region)
            .field("access_key", &set(&self.access_key))
            .field("secret_key", &set(&self.secret_key))
            .field("use_ssl", &self.use_ssl)
            .field("ca_file", &self.ca_file)
            .field("bucket_name", &self.bucket_name)
            .field("account_name", &self.account_name)
            .field("account_key", &set(&self.account_key))
            .field("key_json", &set(&self.key_json))
            .field("project_id", &self.project_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_type_parses_case_insensitively_and_displays_lowercase() {
        for (input, expected) in [
            ("minio", BucketType::Minio),
            ("AWS", BucketType::Aws),
            (" Azure ", BucketType::Azure),
            ("gCp", BucketType::Gcp),
        ] {
            let parsed: BucketType = input.parse().unwrap();
            assert_eq!(parsed, expected);
            assert_eq!(parsed.to_string(), expected.as_str());
        }
        let err = "s4".parse::<BucketType>().unwrap_err().to_string();
        assert!(err.contains("\"s4\""), "{err}");
        assert!(err.contains("minio, aws, azure, gcp"), "{err}");
        assert_eq!(BucketType::default(), BucketType::Minio);
    }

    #[test]
    fn from_secret_data_reads_every_key() {
        let data: BTreeMap<String, String> = [
            ("CNVRG_STORAGE_TYPE", "minio"),
            ("CNVRG_STORAGE_ENDPOINT", "http://minio.cnvrg:9000"),
            ("CNVRG_STORAGE_BUCKET", "cnvrg-storage"),
            ("CNVRG_STORAGE_ACCESS_KEY", "AKIAEXAMPLE"),
            ("CNVRG_STORAGE_SECRET_KEY", "wJalrXUtnFEMI"),
            ("CNVRG_STORAGE_REGION", ""),
            ("CNVRG_STORAGE_PROJECT", "proj"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = StorageSettings::from_secret_data(&data, None).unwrap();
        assert_eq!(s.bucket_type, BucketType::Minio);
        assert_eq!(s.endpoint.as_deref(), Some("http://minio.cnvrg:9000"));
        assert_eq!(s.bucket_name.as_deref(), Some("cnvrg-storage"));
        assert_eq!(s.access_key.as_ref().unwrap().expose(), "AKIAEXAMPLE");
        assert_eq!(s.secret_key.as_ref().unwrap().expose(), "wJalrXUtnFEMI");
        assert_eq!(s.region, None, "empty values are absent");
        assert_eq!(s.project_id.as_deref(), Some("proj"));
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("wJalrXUtnFEMI") && !debug.contains("AKIAEXAMPLE"),
            "{debug}"
        );
    }

    #[test]
    fn from_secret_data_azure_uses_the_container_key() {
        let data: BTreeMap<String, String> = [
            ("CNVRG_STORAGE_TYPE", "AZURE"),
            ("CNVRG_STORAGE_AZURE_ACCOUNT_NAME", "acct"),
            ("CNVRG_STORAGE_AZURE_ACCESS_KEY", "a2V5"),
            ("CNVRG_STORAGE_AZURE_CONTAINER", "backups"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = StorageSettings::from_secret_data(&data, None).unwrap();
        assert_eq!(s.bucket_type, BucketType::Azure);
        assert_eq!(s.bucket_name.as_deref(), Some("backups"));
        assert_eq!(s.account_name.as_deref(), Some("acct"));
        assert_eq!(s.account_key.as_ref().unwrap().expose(), "a2V5");
    }

    #[test]
    fn from_secret_data_rejects_unknown_type_naming_the_key() {
        let data = BTreeMap::from([("CNVRG_STORAGE_TYPE".to_string(), "ceph".to_string())]);
        let err = StorageSettings::from_secret_data(&data, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CNVRG_STORAGE_TYPE") && err.contains("ceph"),
            "{err}"
        );
    }
}
