//! A candidate's Secrets turned into its engine (credentials Secret) and
//! store (bucket Secret). Values stay in memory; messages name keys only.

use std::collections::BTreeMap;
use std::sync::Arc;

use capsule_core::{Engine, ServiceIdentity, ServiceType};
use capsule_engines::{
    EsConnection, EsEngine, EsOptions, PgConnection, PgEngine, PgOptions, RedisConnection,
    RedisEngine, RedisOptions,
};
use capsule_store::{Secret, StorageSettings, Store, StoreBuilder};

use super::plan::DiscoveryProblem;
use super::sources::Candidate;

/// A Secret's data (values decoded, never logged).
pub(crate) type SecretData = BTreeMap<String, String>;

/// `host` qualified with `namespace` when it is a bare service name
/// (no dot, not `localhost`), so it resolves from any namespace.
pub(crate) fn qualify(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains(':') || host == "localhost" || host.starts_with('/') {
        host.to_string()
    } else {
        format!("{host}.{namespace}")
    }
}

/// Whether the authority of `url` (`scheme://user:pass@host:port/…`)
/// names a port.
fn has_port(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = host_port.rsplit_once(']').map_or(host_port, |(_, p)| p);
    host_port.contains(':')
}

/// The engine of `c` from its credentials Secret `data`.
///
/// # Errors
/// A problem naming the Secret and the missing or invalid key.
pub(crate) fn engine(
    c: &Candidate,
    data: &SecretData,
    identity: ServiceIdentity,
) -> Result<Arc<dyn Engine>, DiscoveryProblem> {
    let resource = format!("Secret {}/{}", c.namespace, c.creds_ref);
    let get = |k: &str| data.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let require = |k: &str| {
        get(k).ok_or_else(|| {
            DiscoveryProblem::new(
                &c.namespace,
                &resource,
                format!("data.{k}"),
                "missing or empty",
            )
        })
    };
    let invalid = |k: &str, e: &dyn std::fmt::Display| {
        DiscoveryProblem::new(
            &c.namespace,
            &resource,
            format!("data.{k}"),
            format!("invalid: {e}"),
        )
    };
    match c.service_type {
        ServiceType::Postgresql => {
            let host = require("POSTGRES_HOST")?;
            let mut conn =
                PgConnection::from_url("postgres://").map_err(|e| invalid("POSTGRES_HOST", &e))?;
            conn.host = qualify(host, &c.namespace);
            conn.port = c.service.as_ref().map_or(5432, |s| s.1);
            conn.user = require("POSTGRES_USER")?.to_string();
            conn.password = Some(Secret::new(require("POSTGRES_PASSWORD")?.to_string()));
            conn.database = require("POSTGRES_DB")?.to_string();
            let identity = ServiceIdentity {
                endpoint: Some(format!("{}:{}", conn.host, conn.port)),
                database: Some(conn.database.clone()),
                ..identity
            };
            Ok(Arc::new(PgEngine::new(
                PgOptions::new(conn).with_service(identity),
            )))
        }
        ServiceType::Redis => {
            let url = require("REDIS_URL")?;
            let mut conn = RedisConnection::from_legacy_secret(url, get("CNVRG_REDIS_PASSWORD"))
                .map_err(|e| invalid("REDIS_URL", &e))?;
            conn.host = qualify(&conn.host, &c.namespace);
            if let Some((_, port)) = &c.service
                && !has_port(url)
            {
                conn.port = *port;
            }
            let identity = ServiceIdentity {
                endpoint: Some(conn.endpoint()),
                ..identity
            };
            Ok(Arc::new(RedisEngine::new(
                RedisOptions::new(conn).with_service(identity),
            )))
        }
        ServiceType::Elasticsearch => {
            let url = require("ELASTICSEARCH_URL")?;
            let mut conn = EsConnection::from_url(url)
                .map_err(|e| invalid("ELASTICSEARCH_URL", &e))?
                .with_credentials_from(|k| get(k).map(str::to_string));
            // Qualify a bare host and apply the CnvrgApp's port.
            if let Some((scheme, rest)) = conn.url.split_once("://") {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let (host, port) = match authority.rsplit_once(':') {
                    Some((h, p)) if !authority.ends_with(']') => {
                        (h.to_string(), Some(p.to_string()))
                    }
                    _ => (authority.to_string(), None),
                };
                let port = match (has_port(url), &c.service) {
                    (false, Some((_, p))) => Some(p.to_string()),
                    _ => port,
                };
                let host = qualify(&host, &c.namespace);
                conn.url = match port {
                    Some(p) => format!("{scheme}://{host}:{p}{path}"),
                    None => format!("{scheme}://{host}{path}"),
                };
            }
            let identity = ServiceIdentity {
                endpoint: Some(conn.endpoint()),
                ..identity
            };
            Ok(Arc::new(EsEngine::new(
                EsOptions::new(conn).with_service(identity),
            )))
        }
        other => Err(DiscoveryProblem::new(
            &c.namespace,
            &c.resource,
            c.field("serviceType"),
            format!("the {other} engine is not available in this build of capsule"),
        )),
    }
}

/// The store of a bucket Secret (`CNVRG_STORAGE_*`), with `gcp_key` the
/// `key.json` of the Secret named by `CNVRG_STORAGE_GCP_SECRET_REF`.
///
/// # Errors
/// A one-line message naming the key at fault (no value).
pub(crate) fn store(
    data: &SecretData,
    gcp_key: Option<String>,
    dst_dir: &str,
) -> Result<Store, String> {
    let settings = StorageSettings::from_secret_data(data, gcp_key.map(Secret::new))
        .map_err(|e| e.to_string())?;
    StoreBuilder::from_settings(&settings)
        .map_err(|e| e.to_string())?
        .with_prefix(dst_dir)
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualify_bare_names_only() {
        assert_eq!(qualify("postgres", "cnvrg"), "postgres.cnvrg");
        assert_eq!(qualify("postgres.other", "cnvrg"), "postgres.other");
        assert_eq!(qualify("127.0.0.1", "cnvrg"), "127.0.0.1");
        assert_eq!(qualify("localhost", "cnvrg"), "localhost");
    }

    #[test]
    fn port_detection() {
        assert!(has_port("redis://:pw@redis:6380"));
        assert!(!has_port("redis://:p:w@redis"));
        assert!(!has_port("http://u:p@es/prefix"));
        assert!(has_port("http://es:9201/x"));
    }
}
