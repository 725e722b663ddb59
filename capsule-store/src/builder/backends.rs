//! The object_store backend behind each kind of store URL.

use std::path::Path as FsPath;
use std::str::FromStr;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{Certificate, ClientConfigKey, ClientOptions, ObjectStore};

use super::StoreBuilder;
use crate::error::{BackendKind, Error, Redactor, Result, is_secret_name};
use crate::local_cas::LocalLocks;
use crate::store::Backend;
use crate::url::{Location, display_endpoint};

/// Azurite's development account, used with `use_emulator=true`.
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's development account key (public, documented by Microsoft).
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const EMULATOR_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

impl StoreBuilder {
    /// Refuses a custom endpoint that is not an absolute URL with a host:
    /// object_store takes it as it is and parses it only when it signs a
    /// request, where a bad one (a port that is not a number) panics.
    fn check_endpoint(&self, scheme: &str, endpoint: &str) -> Result<()> {
        let problem = match url::Url::parse(endpoint.trim()) {
            Ok(url) if url.has_host() => return Ok(()),
            Ok(_) => "it has no host".to_string(),
            Err(e) => e.to_string(),
        };
        Err(Error::invalid(format!(
            "cannot configure the {scheme} store from {}: endpoint {} is not a valid URL: {problem}",
            self.origin,
            display_endpoint(endpoint)
        )))
    }

    pub(super) fn build_simple(&self, kind: BackendKind, redactor: Redactor) -> Result<Backend> {
        if let Some((key, _)) = self.options.first() {
            return Err(Error::invalid(format!(
                "option {key:?} in {} does not apply to {} stores",
                self.origin,
                if kind == BackendKind::Memory {
                    "memory://"
                } else {
                    "file://"
                }
            )));
        }
        if self.access.is_some() {
            return Err(Error::invalid(format!(
                "an access key and secret key do not apply to {}",
                self.origin
            )));
        }
        let (store, root, display_root, locks): (Arc<dyn ObjectStore>, String, String, _) =
            match &self.location {
                Location::Local { root } => {
                    let object_root = local_root(root, &self.origin)?;
                    let store = Arc::new(LocalFileSystem::new());
                    let display = url::Url::from_file_path(root)
                        .map(|u| u.to_string())
                        .unwrap_or_else(|()| format!("file://{}", root.display()));
                    let locks = Some(Arc::new(LocalLocks::new(root)));
                    (
                        store,
                        object_root,
                        display.trim_end_matches('/').to_string(),
                        locks,
                    )
                }
                _ => (
                    Arc::new(InMemory::new()),
                    String::new(),
                    "memory://".to_string(),
                    None,
                ),
            };
        Ok(Backend {
            probe: Arc::clone(&store),
            store,
            kind,
            root,
            url_prefix: self.url_prefix.clone(),
            display_root,
            display_suffix: String::new(),
            endpoint: None,
            default_endpoint: None,
            bucket: None,
            redactor,
            locks,
        })
    }

    pub(super) fn build_s3(&self, bucket: &str, mut redactor: Redactor) -> Result<Backend> {
        let (options, retry) = self.split_options(|k| match k {
            "access_key" => "access_key_id",
            "secret_key" => "secret_access_key",
            other => other,
        })?;
        let mut parsed = Vec::new();
        for (name, value) in &options {
            let key =
                AmazonS3ConfigKey::from_str(name).map_err(|_| self.unknown_option(name, "s3"))?;
            if matches!(
                key,
                AmazonS3ConfigKey::AccessKeyId
                    | AmazonS3ConfigKey::SecretAccessKey
                    | AmazonS3ConfigKey::Token
                    | AmazonS3ConfigKey::Encryption(_)
            ) || is_secret_name(name)
            {
                redactor.add(value);
            }
            parsed.push((key, value.clone()));
        }
        let mut b = AmazonS3Builder::from_env();
        if !retry.roots.is_empty() {
            b = b.with_client_options(client_options("AWS_", &retry.roots, |k| match k {
                AmazonS3ConfigKey::Client(k) => Some(k),
                _ => None,
            }));
        }
        b = b.with_bucket_name(bucket);
        // The endpoint decides the defaults: custom endpoints (MinIO,
        // SeaweedFS) are path-style and may be plain http.
        let endpoint = parsed
            .iter()
            .rev()
            .find(|(k, _)| {
                matches!(
                    k,
                    AmazonS3ConfigKey::Endpoint | AmazonS3ConfigKey::S3Endpoint
                )
            })
            .map(|(_, v)| v.clone())
            .or_else(|| b.get_config_value(&AmazonS3ConfigKey::S3Endpoint))
            .or_else(|| b.get_config_value(&AmazonS3ConfigKey::Endpoint));
        b = b.with_virtual_hosted_style_request(endpoint.is_none());
        if let Some(endpoint) = &endpoint {
            add_userinfo_secrets(&mut redactor, endpoint);
            self.check_endpoint("s3", endpoint)?;
            if endpoint.starts_with("http://") {
                b = b.with_allow_http(true);
            }
        }
        for (key, value) in parsed {
            b = b.with_config(key, value);
        }
        if let Some(user) = &self.user {
            b = b.with_access_key_id(user.expose());
        }
        if let Some(password) = &self.password {
            b = b.with_secret_access_key(password.expose());
        }
        if let Some((key, secret)) = &self.access {
            b = b
                .with_access_key_id(key.expose())
                .with_secret_access_key(secret.expose());
        }
        for key in [
            AmazonS3ConfigKey::AccessKeyId,
            AmazonS3ConfigKey::SecretAccessKey,
            AmazonS3ConfigKey::Token,
        ] {
            if let Some(v) = b.get_config_value(&key) {
                redactor.add(&v);
            }
        }
        // `update` relies on If-Match; SeaweedFS, MinIO, R2 and S3 have it.
        b = b.with_conditional_put(S3ConditionalPut::ETagMatch);
        let region = b
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".into());
        let store = b
            .clone()
            .with_retry(retry.normal.clone())
            .build()
            .map_err(|e| self.build_error("s3", &e, &redactor))?;
        let probe = b
            .with_retry(retry.probe.clone())
            .build()
            .map_err(|e| self.build_error("s3", &e, &redactor))?;
        let shown = endpoint.as_deref().map(display_endpoint);
        Ok(Backend {
            store: Arc::new(store),
            probe: Arc::new(probe),
            kind: BackendKind::S3,
            root: String::new(),
            url_prefix: self.url_prefix.clone(),
            display_root: format!("s3://{bucket}"),
            display_suffix: shown
                .as_ref()
                .map(|e| format!(" (endpoint {e})"))
                .unwrap_or_default(),
            endpoint: shown,
            default_endpoint: Some(format!("https://s3.{region}.amazonaws.com")),
            bucket: Some(bucket.to_string()),
            redactor,
            locks: None,
        })
    }

    pub(super) fn build_azure(&self, container: &str, mut redactor: Redactor) -> Result<Backend> {
        let (options, retry) = self.split_options(|k| match k {
            "account" => "account_name",
            other => other,
        })?;
        let mut emulator = false;
        let mut parsed = Vec::new();
        for (name, value) in &options {
            if matches!(name.as_str(), "use_emulator" | "azure_storage_use_emulator") {
                emulator = parse_bool(value).ok_or_else(|| {
                    Error::invalid(format!(
                        "option {name:?} in {} must be true or false",
                        self.origin
                    ))
                })?;
                continue;
            }
            let key =
                AzureConfigKey::from_str(name).map_err(|_| self.unknown_option(name, "az"))?;
            if matches!(
                key,
                AzureConfigKey::AccessKey
                    | AzureConfigKey::ClientSecret
                    | AzureConfigKey::SasKey
                    | AzureConfigKey::Token
                    | AzureConfigKey::FabricSessionToken
                    | AzureConfigKey::EncryptionKey
            ) || is_secret_name(name)
            {
                redactor.add(value);
            }
            parsed.push((key, value.clone()));
        }
        let mut b = MicrosoftAzureBuilder::from_env();
        if !retry.roots.is_empty() {
            b = b.with_client_options(client_options("AZURE_", &retry.roots, |k| match k {
                AzureConfigKey::Client(k) => Some(k),
                _ => None,
            }));
        }
        b = b
            .with_container_name(container)
            // Emulator mode is done here (object_store's takes the endpoint
            // from AZURITE_BLOB_STORAGE_URL only).
            .with_use_emulator(false);
        if emulator {
            b = b
                .with_account(EMULATOR_ACCOUNT)
                .with_access_key(EMULATOR_KEY)
                .with_endpoint(EMULATOR_ENDPOINT.to_string());
        }
        let endpoint = parsed
            .iter()
            .rev()
            .find(|(k, _)| matches!(k, AzureConfigKey::Endpoint))
            .map(|(_, v)| v.clone())
            .or_else(|| b.get_config_value(&AzureConfigKey::Endpoint));
        if let Some(endpoint) = &endpoint {
            add_userinfo_secrets(&mut redactor, endpoint);
            self.check_endpoint("az", endpoint)?;
            if endpoint.starts_with("http://") {
                b = b.with_allow_http(true);
            }
        }
        for (key, value) in parsed {
            b = b.with_config(key, value);
        }
        if let Some(user) = &self.user {
            b = b.with_account(user.expose());
        }
        if let Some(password) = &self.password {
            b = b.with_access_key(password.expose());
        }
        if let Some((account, key)) = &self.access {
            b = b
                .with_account(account.expose())
                .with_access_key(key.expose());
        }
        for key in [
            AzureConfigKey::AccessKey,
            AzureConfigKey::SasKey,
            AzureConfigKey::Token,
            AzureConfigKey::ClientSecret,
        ] {
            if let Some(v) = b.get_config_value(&key) {
                redactor.add(&v);
            }
        }
        let account = b
            .get_config_value(&AzureConfigKey::AccountName)
            .filter(|a| !a.is_empty());
        let store = b
            .clone()
            .with_retry(retry.normal.clone())
            .build()
            .map_err(|e| self.build_error("az", &e, &redactor))?;
        let probe = b
            .with_retry(retry.probe.clone())
            .build()
            .map_err(|e| self.build_error("az", &e, &redactor))?;
        let shown = endpoint.as_deref().map(display_endpoint);
        let mut details = Vec::new();
        if let Some(account) = &account {
            details.push(format!("account {account}"));
        }
        if let Some(endpoint) = &shown {
            details.push(format!("endpoint {endpoint}"));
        }
        Ok(Backend {
            store: Arc::new(store),
            probe: Arc::new(probe),
            kind: BackendKind::Azure,
            root: String::new(),
            url_prefix: self.url_prefix.clone(),
            display_root: format!("az://{container}"),
            display_suffix: if details.is_empty() {
                String::new()
            } else {
                format!(" ({})", details.join(", "))
            },
            endpoint: shown,
            default_endpoint: account.map(|a| format!("https://{a}.blob.core.windows.net")),
            bucket: Some(container.to_string()),
            redactor,
            locks: None,
        })
    }

    pub(super) fn build_gcs(&self, bucket: &str, mut redactor: Redactor) -> Result<Backend> {
        if self.user.is_some() || self.password.is_some() || self.access.is_some() {
            return Err(Error::invalid(format!(
                "gs stores take no access key or userinfo ({}): give the service account key with key_json=<JSON or path> or GOOGLE_SERVICE_ACCOUNT",
                self.origin
            )));
        }
        let (options, retry) = self.split_options(|k| match k {
            "endpoint" => "base_url",
            other => other,
        })?;
        let mut parsed = Vec::new();
        let mut explicit_key = false;
        for (name, value) in &options {
            let (key, value) = if name == "key_json" {
                // The JSON itself, or a path to it.
                if value.trim_start().starts_with('{') {
                    (GoogleConfigKey::ServiceAccountKey, value.clone())
                } else {
                    (GoogleConfigKey::ServiceAccount, value.trim().to_string())
                }
            } else {
                let key =
                    GoogleConfigKey::from_str(name).map_err(|_| self.unknown_option(name, "gs"))?;
                (key, value.clone())
            };
            if matches!(
                key,
                GoogleConfigKey::ServiceAccountKey | GoogleConfigKey::BearerToken
            ) || is_secret_name(name) && name != "key_json"
            {
                redactor.add(&value);
            }
            explicit_key |= matches!(
                key,
                GoogleConfigKey::ServiceAccountKey | GoogleConfigKey::ServiceAccount
            );
            parsed.push((key, value));
        }
        // Explicit credentials replace the environment's (object_store
        // refuses a key and a key path together).
        let mut b = if explicit_key {
            GoogleCloudStorageBuilder::new()
        } else {
            GoogleCloudStorageBuilder::from_env()
        };
        if !retry.roots.is_empty() {
            let prefix = if explicit_key { "" } else { "GOOGLE_" };
            b = b.with_client_options(client_options(prefix, &retry.roots, |k| match k {
                GoogleConfigKey::Client(k) => Some(k),
                _ => None,
            }));
        }
        b = b.with_bucket_name(bucket);
        for (key, value) in parsed {
            b = b.with_config(key, value);
        }
        for key in [
            GoogleConfigKey::ServiceAccountKey,
            GoogleConfigKey::BearerToken,
        ] {
            if let Some(v) = b.get_config_value(&key) {
                redactor.add(&v);
            }
        }
        let key_json = match (
            b.get_config_value(&GoogleConfigKey::ServiceAccountKey),
            b.get_config_value(&GoogleConfigKey::ServiceAccount),
        ) {
            (Some(content), _) => Some(content),
            // object_store reads the file at build too; a read error is its to report.
            (None, Some(path)) => std::fs::read_to_string(path).ok(),
            (None, None) => None,
        };
        let key_fields = key_json
            .as_deref()
            .map(service_account_fields)
            .unwrap_or_default();
        for secret in &key_fields.secrets {
            redactor.add(secret);
        }
        let base_url = b
            .get_config_value(&GoogleConfigKey::BaseUrl)
            .or(key_fields.base_url);
        if let Some(base_url) = &base_url {
            self.check_endpoint("gs", base_url)?;
        }
        let store = b
            .clone()
            .with_retry(retry.normal.clone())
            .build()
            .map_err(|e| self.build_error("gs", &e, &redactor))?;
        let probe = b
            .with_retry(retry.probe.clone())
            .build()
            .map_err(|e| self.build_error("gs", &e, &redactor))?;
        let shown = base_url.as_deref().map(display_endpoint);
        Ok(Backend {
            store: Arc::new(store),
            probe: Arc::new(probe),
            kind: BackendKind::Gcs,
            root: String::new(),
            url_prefix: self.url_prefix.clone(),
            display_root: format!("gs://{bucket}"),
            display_suffix: shown
                .as_ref()
                .map(|e| format!(" (endpoint {e})"))
                .unwrap_or_default(),
            endpoint: shown,
            default_endpoint: Some("https://storage.googleapis.com".into()),
            bucket: Some(bucket.to_string()),
            redactor,
            locks: None,
        })
    }
}

/// What a service account key JSON holds that matters here.
#[derive(Default)]
struct ServiceAccountFields {
    /// `gcs_base_url`, where emulators point the client.
    base_url: Option<String>,
    /// `private_key`, `private_key_id`, `client_secret`, `refresh_token`.
    secrets: Vec<String>,
}

fn service_account_fields(json: &str) -> ServiceAccountFields {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json) else {
        return ServiceAccountFields::default();
    };
    let text = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_string);
    ServiceAccountFields {
        base_url: text("gcs_base_url").filter(|u| !u.is_empty()),
        secrets: [
            "private_key",
            "private_key_id",
            "client_secret",
            "refresh_token",
        ]
        .into_iter()
        .filter_map(text)
        .filter(|s| !s.is_empty())
        .collect(),
    }
}

/// The object path of a local bucket root (`/tmp/x` is `tmp/x`).
fn local_root(root: &FsPath, origin: &str) -> Result<String> {
    if !root.is_absolute() {
        return Err(Error::invalid(format!(
            "{origin}: the directory must be an absolute path"
        )));
    }
    let mut parts = Vec::new();
    for component in root.components() {
        match component {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(part) => {
                let part = part.to_str().ok_or_else(|| {
                    Error::invalid(format!("{origin}: the directory path is not valid UTF-8"))
                })?;
                parts.push(part);
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{origin}: the directory path has '.' or '..' components"
                )));
            }
        }
    }
    let path = parts.join("/");
    object_store::path::Path::parse(&path)
        .map_err(|e| Error::invalid(format!("{origin}: the directory path is not usable: {e}")))?;
    Ok(path)
}

/// object_store's HTTP client options as `from_env` reads them (the
/// client keys of the variables starting with `env_prefix`; none for an
/// empty prefix) plus `roots` trusted besides the system's. Set on a
/// builder before any other option, since it replaces the client options.
fn client_options<K: FromStr>(
    env_prefix: &str,
    roots: &[Certificate],
    client_key: impl Fn(K) -> Option<ClientConfigKey>,
) -> ClientOptions {
    let mut options = ClientOptions::new();
    if !env_prefix.is_empty() {
        for (name, value) in std::env::vars_os() {
            let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
                continue;
            };
            if !name.starts_with(env_prefix) {
                continue;
            }
            if let Some(key) = K::from_str(&name.to_ascii_lowercase())
                .ok()
                .and_then(&client_key)
            {
                options = options.with_config(key, value);
            }
        }
    }
    for root in roots {
        options = options.with_root_certificate(root.clone());
    }
    options
}

fn add_userinfo_secrets(redactor: &mut Redactor, endpoint: &str) {
    if let Ok(url) = url::Url::parse(endpoint) {
        if !url.username().is_empty() {
            redactor.add(url.username());
        }
        if let Some(password) = url.password() {
            redactor.add(password);
        }
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}
