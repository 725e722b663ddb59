//! A candidate's Secrets read through the API and turned into its engine,
//! store and encryption keys: at planning, to check that they exist and
//! hold every key (the values are dropped at once), and when a job starts,
//! for that job only ([`SecretCredentials`]). No value is logged or written
//! anywhere.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use capsule_core::{Engine, ServiceIdentity};
use capsule_store::Store;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use super::credentials::{self, SecretData, SecretEncryption};
use super::plan::DiscoveryProblem;
use super::sources::Candidate;
use super::watch::Watched;
use super::{Failure, failure};
use crate::error::Result;
use crate::targets::{JobCredentials, JobTarget, credentials_error};

/// Reads Secrets, each at most once per pass (one plan, or one job).
pub(crate) struct SecretReader {
    client: Client,
    cache: HashMap<(String, String), std::result::Result<SecretData, String>>,
}

impl SecretReader {
    pub(crate) fn new(client: Client) -> Self {
        SecretReader {
            client,
            cache: HashMap::new(),
        }
    }

    /// The data of Secret `namespace/name`, or why it cannot be read
    /// (naming the Secret, never a value).
    async fn get(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> std::result::Result<SecretData, String> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(found) = self.cache.get(&key) {
            return found.clone();
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let got = match api.get(name).await {
            Ok(s) => {
                let mut data: SecretData = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                data.extend(s.string_data.unwrap_or_default());
                Ok(data)
            }
            Err(e) => Err(match failure(e) {
                Failure::Api(404, _) => format!("Secret {namespace}/{name} not found"),
                Failure::Api(403, m) => format!("forbidden to read Secret {namespace}/{name}: {m}"),
                Failure::Api(code, m) => {
                    format!("reading Secret {namespace}/{name}: the API answered {code}: {m}")
                }
                Failure::Transport(m) => format!("reading Secret {namespace}/{name}: {m}"),
            }),
        };
        self.cache.insert(key, got.clone());
        got
    }
}

/// `c`'s engine, from its credentials Secret (`credsRef`).
///
/// # Errors
/// A problem naming the Secret (or the field referring to it) and the key.
pub(crate) async fn open_engine(
    c: &Candidate,
    reader: &mut SecretReader,
    identity: ServiceIdentity,
) -> std::result::Result<Arc<dyn Engine>, DiscoveryProblem> {
    let creds = reader
        .get(&c.namespace, &c.creds_ref)
        .await
        .map_err(|m| DiscoveryProblem::new(&c.namespace, &c.resource, c.field("credsRef"), m))?;
    credentials::engine(c, &creds, identity)
}

/// `c`'s store, from its bucket Secret (`bucketRef`) and the GCP key
/// Secret that one names, with `dst_dir` as prefix.
///
/// # Errors
/// A problem naming the Secret (or the field referring to it) and the key.
pub(crate) async fn open_store(
    c: &Candidate,
    reader: &mut SecretReader,
    dst_dir: &str,
    ca_file: Option<&std::path::Path>,
) -> std::result::Result<Store, DiscoveryProblem> {
    let bucket = reader
        .get(&c.namespace, &c.bucket_ref)
        .await
        .map_err(|m| DiscoveryProblem::new(&c.namespace, &c.resource, c.field("bucketRef"), m))?;
    let bucket_resource = format!("Secret {}/{}", c.namespace, c.bucket_ref);
    let gcp_key = match bucket
        .get("CNVRG_STORAGE_GCP_SECRET_REF")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(gcp_ref) => {
            let d = reader.get(&c.namespace, gcp_ref).await.map_err(|m| {
                DiscoveryProblem::new(
                    &c.namespace,
                    &bucket_resource,
                    "data.CNVRG_STORAGE_GCP_SECRET_REF",
                    m,
                )
            })?;
            match d.get("key.json") {
                Some(k) => Some(k.clone()),
                None => {
                    return Err(DiscoveryProblem::new(
                        &c.namespace,
                        format!("Secret {}/{gcp_ref}", c.namespace),
                        "data.key.json",
                        "missing or empty",
                    ));
                }
            }
        }
    };
    credentials::store(&bucket, gcp_key, dst_dir, ca_file)
        .map_err(|m| DiscoveryProblem::new(&c.namespace, &bucket_resource, "data", m))
}

/// `c`'s encryption keys, from the Secret its `encryptionRef` names;
/// `None` when it names none (the daemon's own setting applies).
///
/// # Errors
/// A problem naming the Secret (or the field referring to it) and the key.
pub(crate) async fn open_encryption(
    c: &Candidate,
    reader: &mut SecretReader,
) -> std::result::Result<Option<SecretEncryption>, DiscoveryProblem> {
    let Some(name) = &c.encryption_ref else {
        return Ok(None);
    };
    let data = reader.get(&c.namespace, name).await.map_err(|m| {
        DiscoveryProblem::new(&c.namespace, &c.resource, c.field("encryptionRef"), m)
    })?;
    credentials::encryption(c, name, &data).map(Some)
}

/// A discovered target's credentials, read from its Secrets when a job
/// starts. A failure also marks the plan stale, so the next scan plans
/// again and reports the problem (logs, `/metrics`).
pub(crate) struct SecretCredentials {
    pub(crate) client: Client,
    pub(crate) candidate: Candidate,
    pub(crate) identity: ServiceIdentity,
    pub(crate) dst_dir: String,
    /// The daemon's `--ca-file`, trusted by the bucket's store.
    pub(crate) ca_file: Option<std::path::PathBuf>,
    /// The store URL as planned (credentials stripped).
    pub(crate) store_url: String,
    pub(crate) watched: Arc<Watched>,
}

impl SecretCredentials {
    fn target(&self) -> String {
        format!("{}/{}", self.candidate.namespace, self.candidate.name)
    }
}

#[async_trait]
impl JobCredentials for SecretCredentials {
    async fn resolve(&self) -> Result<JobTarget> {
        let mut reader = SecretReader::new(self.client.clone());
        let fail = |m: String| {
            self.watched.mark_stale();
            credentials_error(&self.target(), m)
        };
        let c = &self.candidate;
        let engine = open_engine(c, &mut reader, self.identity.clone())
            .await
            .map_err(|p| fail(p.to_string()))?;
        let store = open_store(c, &mut reader, &self.dst_dir, self.ca_file.as_deref())
            .await
            .map_err(|p| fail(p.to_string()))?;
        if store.url() != self.store_url {
            return Err(fail(format!(
                "Secret {}/{} now names the store {}, not {} (it is planned again at once)",
                c.namespace,
                c.bucket_ref,
                store.url(),
                self.store_url
            )));
        }
        let mut job = JobTarget::new(engine, store);
        // Read now too: rotated recipients apply to the next job, and a
        // broken encryption Secret fails the job rather than letting it
        // write plaintext.
        if let Some(keys) = open_encryption(c, &mut reader)
            .await
            .map_err(|p| fail(p.to_string()))?
        {
            job = job.with_encryption(keys.recipients);
            if let Some(identities) = keys.identities {
                job = job.with_identities(identities);
            }
        }
        Ok(job)
    }
}
