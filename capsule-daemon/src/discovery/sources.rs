//! The two Kubernetes sources of a target, turned into [`Candidate`]s: the
//! `CnvrgApp` custom resource (`mlops.cnvrg.io/v1`, `spec.dbs`) and
//! PersistentVolumeClaims annotated `capsule.mlops.cnvrg.io/backup: "true"`.
//! Pure functions of the resources, so they are tested without a cluster.

use std::collections::BTreeMap;

use capsule_core::{Period, ServiceType};
use serde::Deserialize;

use super::plan::{DiscoveryProblem, TargetOrigin};

/// The annotation prefix the operator mirrors each `backup` block under.
pub const ANNOTATION_PREFIX: &str = "capsule.mlops.cnvrg.io/";
/// Default bucket Secret (`bucketRef`).
pub const DEFAULT_BUCKET_REF: &str = "cp-object-storage";
/// Default rotation.
pub const DEFAULT_ROTATION: u32 = 5;
/// Default period.
pub const DEFAULT_PERIOD: &str = "24h";

/// One service a source asks to back up, before its Secrets are read.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub(crate) namespace: String,
    /// The PVC name (the service's identity: `namespace/pvc`).
    pub(crate) name: String,
    pub(crate) service_type: ServiceType,
    pub(crate) origin: TargetOrigin,
    /// `CnvrgApp ns/name` or `PersistentVolumeClaim ns/name`.
    pub(crate) resource: String,
    pub(crate) creds_ref: String,
    pub(crate) bucket_ref: String,
    pub(crate) rotation: u32,
    pub(crate) period: Period,
    /// The CnvrgApp's service name and port.
    pub(crate) service: Option<(String, u16)>,
    /// The Secret holding the age recipients (and optionally the identity)
    /// this service's backups are encrypted to (`encryptionRef`); `None`:
    /// the daemon's own setting applies.
    pub(crate) encryption_ref: Option<String>,
}

impl Candidate {
    /// The field holding `what` (`credsRef`, `bucketRef`, `encryptionRef`)
    /// in the source.
    pub(crate) fn field(&self, what: &str) -> String {
        match self.origin {
            TargetOrigin::CnvrgApp => {
                let db = match self.service_type {
                    ServiceType::Postgresql => "pg",
                    ServiceType::Redis => "redis",
                    _ => "es",
                };
                if what == "credsRef" {
                    format!("spec.dbs.{db}.credsRef")
                } else {
                    format!("spec.dbs.{db}.backup.{what}")
                }
            }
            _ => annotation_field(what),
        }
    }
}

fn annotation_field(what: &str) -> String {
    format!("metadata.annotations[\"{ANNOTATION_PREFIX}{what}\"]")
}

/// `spec` of a `CnvrgApp` (only what capsule reads; the rest is ignored).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CnvrgAppSpec {
    #[serde(default)]
    pub(crate) dbs: Dbs,
}

/// `spec.dbs`.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Dbs {
    pub(crate) pg: Option<DbSpec>,
    pub(crate) redis: Option<DbSpec>,
    pub(crate) es: Option<DbSpec>,
}

/// `spec.dbs.pg|redis|es`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DbSpec {
    #[serde(default)]
    pub(crate) enabled: bool,
    pub(crate) svc_name: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) creds_ref: Option<String>,
    pub(crate) pvc_name: Option<String>,
    pub(crate) backup: Option<BackupSpec>,
}

/// `spec.dbs.*.backup`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BackupSpec {
    pub(crate) enabled: Option<bool>,
    pub(crate) bucket_ref: Option<String>,
    pub(crate) creds_ref: Option<String>,
    pub(crate) rotation: Option<u32>,
    pub(crate) period: Option<String>,
    pub(crate) encryption_ref: Option<String>,
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The services of one `CnvrgApp`: each enabled db whose backup is not
/// disabled (`backup.enabled` defaults to true), with the operator's
/// defaults for every field left out.
pub(crate) fn from_cnvrgapp(
    namespace: &str,
    name: &str,
    spec: &serde_json::Value,
) -> (Vec<Candidate>, Vec<DiscoveryProblem>) {
    let resource = format!("CnvrgApp {namespace}/{name}");
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let spec: CnvrgAppSpec = match serde_json::from_value(spec.clone()) {
        Ok(s) => s,
        Err(e) => {
            problems.push(DiscoveryProblem::new(
                namespace,
                &resource,
                "spec.dbs",
                format!("cannot read the spec: {e}"),
            ));
            return (out, problems);
        }
    };
    let dbs = [
        (
            "pg",
            ServiceType::Postgresql,
            &spec.dbs.pg,
            ("postgres", 5432, "pg-creds", "pg-storage"),
        ),
        (
            "redis",
            ServiceType::Redis,
            &spec.dbs.redis,
            ("redis", 6379, "redis-creds", "redis-storage"),
        ),
        (
            "es",
            ServiceType::Elasticsearch,
            &spec.dbs.es,
            ("elasticsearch", 9200, "es-creds", "es-storage"),
        ),
    ];
    for (key, service_type, db, (svc, port, creds, pvc)) in dbs {
        let Some(db) = db else { continue };
        // The operator's default is no backup (`Backup{Enabled: false}`,
        // mirrored onto the PVC as `backup: "false"`): only an explicit
        // `backup.enabled: true` turns one on.
        let backup = db.backup.clone().unwrap_or_default();
        if !db.enabled || backup.enabled != Some(true) {
            continue;
        }
        let period_text = non_empty(&backup.period).unwrap_or_else(|| DEFAULT_PERIOD.into());
        let period = match period_text.parse::<Period>() {
            Ok(p) => p,
            Err(e) => {
                problems.push(DiscoveryProblem::new(
                    namespace,
                    &resource,
                    format!("spec.dbs.{key}.backup.period"),
                    format!("invalid period {period_text:?}: {e}"),
                ));
                continue;
            }
        };
        out.push(Candidate {
            namespace: namespace.into(),
            name: non_empty(&db.pvc_name).unwrap_or_else(|| pvc.into()),
            service_type,
            origin: TargetOrigin::CnvrgApp,
            resource: resource.clone(),
            creds_ref: non_empty(&backup.creds_ref)
                .or_else(|| non_empty(&db.creds_ref))
                .unwrap_or_else(|| creds.into()),
            bucket_ref: non_empty(&backup.bucket_ref).unwrap_or_else(|| DEFAULT_BUCKET_REF.into()),
            rotation: backup.rotation.unwrap_or(DEFAULT_ROTATION),
            period,
            service: Some((
                non_empty(&db.svc_name).unwrap_or_else(|| svc.into()),
                db.port.unwrap_or(port),
            )),
            encryption_ref: non_empty(&backup.encryption_ref),
        });
    }
    (out, problems)
}

/// The service of one PVC, from its annotations: `None` when it is not
/// annotated `backup: "true"`; a problem naming the annotation when one is
/// missing or wrong.
pub(crate) fn from_pvc(
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> Option<Result<Candidate, DiscoveryProblem>> {
    let get = |k: &str| {
        annotations
            .get(&format!("{ANNOTATION_PREFIX}{k}"))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if !get("backup").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    let resource = format!("PersistentVolumeClaim {namespace}/{name}");
    let problem = |k: &str, m: String| {
        Some(Err(DiscoveryProblem::new(
            namespace,
            &resource,
            annotation_field(k),
            m,
        )))
    };
    let service_type = match get("serviceType") {
        None => {
            return problem(
                "serviceType",
                "missing: the service type is required".into(),
            );
        }
        Some(t) => match t.parse::<ServiceType>() {
            Ok(t) => t,
            Err(_) => {
                return problem(
                    "serviceType",
                    format!(
                        "unknown service type {t:?}: expected postgresql, redis or elasticsearch"
                    ),
                );
            }
        },
    };
    let Some(creds_ref) = get("credsRef") else {
        return problem(
            "credsRef",
            "missing: the credentials Secret is required".into(),
        );
    };
    let rotation = match get("rotation") {
        None => DEFAULT_ROTATION,
        Some(r) => match r.parse::<u32>() {
            Ok(r) => r,
            Err(_) => {
                return problem(
                    "rotation",
                    format!("invalid rotation {r:?}: expected a whole number"),
                );
            }
        },
    };
    let period_text = get("period").unwrap_or_else(|| DEFAULT_PERIOD.into());
    let period = match period_text.parse::<Period>() {
        Ok(p) => p,
        Err(e) => return problem("period", format!("invalid period {period_text:?}: {e}")),
    };
    Some(Ok(Candidate {
        namespace: namespace.into(),
        name: name.into(),
        service_type,
        origin: TargetOrigin::Pvc,
        resource,
        creds_ref,
        bucket_ref: get("bucketRef").unwrap_or_else(|| DEFAULT_BUCKET_REF.into()),
        rotation,
        period,
        service: None,
        encryption_ref: get("encryptionRef"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator's default is no backup: a service without an explicit
    /// `backup.enabled: true` is not one (its PVC annotation, the
    /// operator's mirror, may still make it one).
    #[test]
    fn cnvrgapp_backups_are_off_unless_enabled() {
        let spec = serde_json::json!({"dbs": {"pg": {"enabled": true},
            "redis": {"enabled": true, "backup": {"rotation": 3}},
            "es": {"enabled": true, "backup": {"enabled": null}}}});
        let (c, p) = from_cnvrgapp("cnvrg", "app", &spec);
        assert!(c.is_empty() && p.is_empty(), "{c:?} {p:?}");
    }

    #[test]
    fn cnvrgapp_defaults() {
        let on = serde_json::json!({"enabled": true});
        let spec = serde_json::json!({"dbs": {"pg": {"enabled": true, "backup": on},
            "redis": {"enabled": true, "backup": on}, "es": {"enabled": true, "backup": on},
            "unknown": 1}});
        let (c, p) = from_cnvrgapp("cnvrg", "app", &spec);
        assert!(p.is_empty());
        let got: Vec<_> = c
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.creds_ref.as_str(),
                    c.bucket_ref.as_str(),
                    c.rotation,
                    c.period.to_string(),
                    c.service.clone().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got[0],
            (
                "pg-storage",
                "pg-creds",
                "cp-object-storage",
                5,
                "1d".to_string(),
                ("postgres".to_string(), 5432)
            )
        );
        assert_eq!(got[1].0, "redis-storage");
        assert_eq!(got[1].5, ("redis".to_string(), 6379));
        assert_eq!(got[2].0, "es-storage");
        assert_eq!(got[2].1, "es-creds");
        assert_eq!(got[2].5, ("elasticsearch".to_string(), 9200));
    }

    #[test]
    fn cnvrgapp_overrides_disabled_and_bad_period() {
        let spec = serde_json::json!({"dbs": {
            "pg": {"enabled": true, "svcName": "db", "port": 6432, "credsRef": "c", "pvcName": "p",
                   "backup": {"enabled": true, "bucketRef": "b", "rotation": 2, "period": "90m", "encryptionRef": " keys "}},
            "redis": {"enabled": true, "backup": {"enabled": false}},
            "es": {"enabled": true, "backup": {"enabled": true, "period": "1x"}}}});
        let (c, p) = from_cnvrgapp("ns", "app", &spec);
        assert_eq!(c.len(), 1);
        assert_eq!(
            (
                c[0].name.as_str(),
                c[0].creds_ref.as_str(),
                c[0].bucket_ref.as_str(),
                c[0].rotation
            ),
            ("p", "c", "b", 2)
        );
        assert_eq!(c[0].service, Some(("db".into(), 6432)));
        assert_eq!(c[0].encryption_ref.as_deref(), Some("keys"));
        assert_eq!(
            c[0].field("encryptionRef"),
            "spec.dbs.pg.backup.encryptionRef"
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "spec.dbs.es.backup.period");
        assert_eq!(p[0].resource, "CnvrgApp ns/app");
    }

    #[test]
    fn pvc_annotations() {
        let a = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (format!("{ANNOTATION_PREFIX}{k}"), v.to_string()))
                .collect()
        };
        assert!(from_pvc("n", "p", &a(&[("backup", "false")])).is_none());
        assert!(from_pvc("n", "p", &BTreeMap::new()).is_none());
        let ok = from_pvc(
            "n",
            "p",
            &a(&[
                ("backup", "true"),
                ("serviceType", "postgresql"),
                ("credsRef", "c"),
                ("rotation", "3"),
                ("period", "1h"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (ok.rotation, ok.period.to_string(), ok.bucket_ref.as_str()),
            (3, "1h".into(), "cp-object-storage")
        );
        assert_eq!(ok.encryption_ref, None);
        let encrypted = from_pvc(
            "n",
            "p",
            &a(&[
                ("backup", "true"),
                ("serviceType", "redis"),
                ("credsRef", "c"),
                ("encryptionRef", "backup-keys"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(encrypted.encryption_ref.as_deref(), Some("backup-keys"));
        assert_eq!(
            encrypted.field("encryptionRef"),
            "metadata.annotations[\"capsule.mlops.cnvrg.io/encryptionRef\"]"
        );
        for (bad, field) in [
            (
                vec![("serviceType", "mongo"), ("credsRef", "c")],
                "serviceType",
            ),
            (vec![("serviceType", "redis")], "credsRef"),
            (
                vec![
                    ("serviceType", "redis"),
                    ("credsRef", "c"),
                    ("period", "soon"),
                ],
                "period",
            ),
            (
                vec![
                    ("serviceType", "redis"),
                    ("credsRef", "c"),
                    ("rotation", "-1"),
                ],
                "rotation",
            ),
        ] {
            let mut pairs = vec![("backup", "true")];
            pairs.extend(bad);
            let e = from_pvc("n", "p", &a(&pairs)).unwrap().unwrap_err();
            assert!(e.field.contains(field), "{e:?}");
            assert_eq!(e.resource, "PersistentVolumeClaim n/p");
        }
    }
}
