//! A candidate's Secrets turned into its engine (credentials Secret), store
//! (bucket Secret) and encryption keys (encryption Secret). Values stay in
//! memory; messages name keys only.

use std::collections::BTreeMap;
use std::sync::Arc;

use capsule_core::{Engine, Identities, Recipients, ServiceIdentity, ServiceType};
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
/// `key.json` of the Secret named by `CNVRG_STORAGE_GCP_SECRET_REF`,
/// trusting `ca_file` (the daemon's `--ca-file`) for https.
///
/// # Errors
/// A one-line message naming the key at fault (no value).
pub(crate) fn store(
    data: &SecretData,
    gcp_key: Option<String>,
    dst_dir: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<Store, String> {
    let mut settings = StorageSettings::from_secret_data(data, gcp_key.map(Secret::new))
        .map_err(|e| e.to_string())?;
    if settings.ca_file.is_none() {
        settings.ca_file = ca_file.map(std::path::Path::to_path_buf);
    }
    StoreBuilder::from_settings(&settings)
        .map_err(|e| e.to_string())?
        .with_prefix(dst_dir)
        .build()
        .map_err(|e| e.to_string())
}

/// The encryption Secret's key holding the age recipients (`age1…`), one a
/// line, `#` comments allowed: a recipients file.
pub(crate) const RECIPIENTS_KEY: &str = "recipients";
/// The encryption Secret's optional key holding the age identities
/// (`AGE-SECRET-KEY-1…`) that decrypt the target's backups for restores.
pub(crate) const IDENTITY_KEY: &str = "identity";

/// A target's encryption keys, from its encryption Secret (`encryptionRef`).
/// `Debug` shows public keys only (as [`Identities`] does).
#[derive(Clone, Debug)]
pub(crate) struct SecretEncryption {
    /// Its backups are encrypted to these.
    pub(crate) recipients: Recipients,
    /// Its restores decrypt with these (besides the daemon's own).
    pub(crate) identities: Option<Identities>,
}

impl SecretEncryption {
    /// What `capsule plan` shows: the Secret, how many recipients, whether
    /// it holds an identity (never a key).
    pub(crate) fn describe(&self, secret: &str) -> String {
        format!(
            "{secret}: {}{}",
            super::plan::recipients_text(self.recipients.len()),
            if self.identities.is_some() {
                ", and an identity"
            } else {
                ""
            }
        )
    }
}

/// The encryption keys in `data`, the encryption Secret `name` of `c`'s
/// namespace: [`RECIPIENTS_KEY`] (required, parsed as a recipients file)
/// and [`IDENTITY_KEY`] (optional, parsed as an identity file).
///
/// # Errors
/// A problem naming the Secret, the key and the line at fault; never a
/// secret key.
pub(crate) fn encryption(
    c: &Candidate,
    name: &str,
    data: &SecretData,
) -> Result<SecretEncryption, DiscoveryProblem> {
    let resource = format!("Secret {}/{name}", c.namespace);
    let problem =
        |k: &str, m: String| DiscoveryProblem::new(&c.namespace, &resource, format!("data.{k}"), m);
    let text = |k: &str| data.get(k).filter(|v| !v.trim().is_empty());
    let recipients = text(RECIPIENTS_KEY)
        .ok_or_else(|| {
            problem(
                RECIPIENTS_KEY,
                "missing or empty: the age recipients (age1…), one a line".into(),
            )
        })
        .and_then(|t| {
            let origin = format!("data.{RECIPIENTS_KEY}");
            Recipients::parse_file(t, &origin).map_err(|e| problem(RECIPIENTS_KEY, e.to_string()))
        })?;
    let identities = text(IDENTITY_KEY)
        .map(|t| {
            let origin = format!("data.{IDENTITY_KEY}");
            Identities::parse_file(t, &origin).map_err(|e| problem(IDENTITY_KEY, e.to_string()))
        })
        .transpose()?;
    Ok(SecretEncryption {
        recipients,
        identities,
    })
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

    fn candidate() -> Candidate {
        let a = |k: &str, v: &str| (format!("{}{k}", super::super::ANNOTATION_PREFIX), v.into());
        let annotations = [
            a("backup", "true"),
            a("serviceType", "redis"),
            a("credsRef", "c"),
            a("encryptionRef", "keys"),
        ];
        super::super::sources::from_pvc("ns", "p", &annotations.into_iter().collect())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn encryption_secret_keys() {
        use age::secrecy::ExposeSecret;
        let key = age::x25519::Identity::generate();
        let secret = key.to_string().expose_secret().to_string();
        let public = key.to_public().to_string();
        let other = age::x25519::Identity::generate().to_public().to_string();
        let data = |pairs: &[(&str, &str)]| -> SecretData {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = candidate();

        let ok = encryption(
            &c,
            "keys",
            &data(&[
                (
                    "recipients",
                    &format!("# ops team\n{public}\n\n  {other}  \n"),
                ),
                ("identity", &format!("# created: today\n{secret}\n")),
            ]),
        )
        .unwrap();
        assert_eq!(ok.recipients.to_strings(), [public.clone(), other.clone()]);
        let ids = ok.identities.as_ref().unwrap();
        assert_eq!(ids.public_keys(), [public.as_str()]);
        assert_eq!(
            ok.describe("Secret ns/keys"),
            "Secret ns/keys: 2 recipients, and an identity"
        );
        assert!(!format!("{ok:?}").contains(&secret));
        let no_identity = encryption(&c, "keys", &data(&[("recipients", &public)])).unwrap();
        assert!(no_identity.identities.is_none());
        assert_eq!(
            no_identity.describe("Secret ns/keys"),
            "Secret ns/keys: 1 recipient"
        );

        for (pairs, field, says) in [
            (vec![], "data.recipients", "missing or empty"),
            (
                vec![("recipients", " \n")],
                "data.recipients",
                "missing or empty",
            ),
            (
                vec![("recipients", "# only a comment\n")],
                "data.recipients",
                "holds no recipient",
            ),
            (
                vec![("recipients", &format!("{public}\nage1nope\n") as &str)],
                "data.recipients",
                "line 2: \"age1nope\" is not an age X25519 public key",
            ),
            (
                vec![("recipients", &secret as &str)],
                "data.recipients",
                "this is a secret key",
            ),
            (
                vec![("recipients", &public as &str), ("identity", &public)],
                "data.identity",
                "line 1: this is a public key",
            ),
            (
                vec![
                    ("recipients", &public as &str),
                    ("identity", "AGE-SECRET-KEY-1NOPE"),
                ],
                "data.identity",
                "line 1: not an age X25519 identity",
            ),
        ] {
            let e = encryption(&c, "keys", &data(&pairs)).unwrap_err();
            assert_eq!(
                (e.resource.as_str(), e.field.as_str()),
                ("Secret ns/keys", field),
                "{e}"
            );
            assert!(e.message.contains(says), "{e}");
            assert!(!e.to_string().contains(&secret), "a secret key leaked: {e}");
            assert!(
                !e.to_string().contains("NOPE"),
                "an identity line leaked: {e}"
            );
        }
    }

    #[test]
    fn port_detection() {
        assert!(has_port("redis://:pw@redis:6380"));
        assert!(!has_port("redis://:p:w@redis"));
        assert!(!has_port("http://u:p@es/prefix"));
        assert!(has_port("http://es:9201/x"));
    }
}
