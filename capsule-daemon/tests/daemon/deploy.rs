//! The Kustomize manifests in `deploy/` render offline with `kubectl
//! kustomize`, and every rendered object parses into its typed
//! k8s-openapi struct with nothing left over (an unknown or misspelt field
//! fails the test).

use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `kubectl kustomize deploy/<dir>`, one JSON value per object.
fn render(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir().join(dir))
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl is not installed ({e}): run scripts/setup-test-deps.sh (Debian package kubectl)")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/{dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}\n{d}")))
        .collect()
}

/// Parses `v` as `T` and checks that serializing it back gives `v` again
/// (so no field was unknown to the schema).
fn typed<T: DeserializeOwned + serde::Serialize>(v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{e}\n{}", serde_json::to_string_pretty(v).unwrap()));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back,
        v,
        "fields unknown to {} were dropped",
        std::any::type_name::<T>()
    );
    t
}

/// The Prometheus Operator's ServiceMonitor (no k8s-openapi type): only
/// the fields used, unknown ones denied.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ServiceMonitorSpec {
    selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Endpoint {
    port: String,
    path: String,
    interval: String,
}

#[derive(Default)]
struct Rendered {
    kinds: Vec<String>,
    deployment: Option<Deployment>,
    rules: Vec<PolicyRule>,
}

fn check(dir: &str) -> Rendered {
    let mut r = Rendered::default();
    for v in render(dir) {
        let kind = v["kind"].as_str().unwrap().to_string();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(&v)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&v)),
            "ClusterRole" => r.rules = typed::<ClusterRole>(&v).rules.unwrap(),
            "Role" => r.rules = typed::<Role>(&v).rules.unwrap(),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&v)),
            "RoleBinding" => drop(typed::<RoleBinding>(&v)),
            "Service" => drop(typed::<Service>(&v)),
            "Deployment" => r.deployment = Some(typed::<Deployment>(&v)),
            "ServiceMonitor" => {
                let m: ServiceMonitor = serde_json::from_value(v.clone()).unwrap();
                assert_eq!(m.api_version, "monitoring.coreos.com/v1");
                assert_eq!(m.spec.endpoints[0].path, "/metrics");
            }
            other => panic!("deploy/{dir} renders an unexpected {other}"),
        }
        r.kinds.push(kind);
    }
    r
}

fn assert_least_privilege(rules: &[PolicyRule]) {
    let mut got: Vec<String> = rules
        .iter()
        .map(|r| {
            format!(
                "{}/{}: {}",
                r.api_groups.clone().unwrap_or_default().join(","),
                r.resources.clone().unwrap_or_default().join(","),
                r.verbs.join(",")
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "/persistentvolumeclaims: list,watch",
            "/secrets: get",
            "mlops.cnvrg.io/cnvrgapps: list,watch"
        ]
    );
}

fn assert_deployment(d: &Deployment, whitelist: &str) {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("capsule"));
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let c = &pod.containers[0];
    let probe = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone()
    };
    assert_eq!(probe(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe(&c.readiness_probe).as_deref(), Some("/readyz"));
    let env = c.env.as_ref().unwrap();
    let ns = env
        .iter()
        .find(|e| e.name == "CNVRG_CAPSULE_NS_WHITELIST")
        .unwrap();
    assert_eq!(ns.value.as_deref(), Some(whitelist));
}

#[test]
fn base_renders_cluster_wide_rbac_and_typed_objects() {
    let r = check("base");
    for k in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceMonitor",
    ] {
        assert!(
            r.kinds.iter().any(|x| x == k),
            "base lacks a {k}: {:?}",
            r.kinds
        );
    }
    assert_least_privilege(&r.rules);
    assert_deployment(r.deployment.as_ref().unwrap(), "*");
}

#[test]
fn the_namespaced_overlay_has_no_cluster_scoped_object() {
    let r = check("overlays/namespaced");
    for k in ["Namespace", "ClusterRole", "ClusterRoleBinding"] {
        assert!(
            !r.kinds.iter().any(|x| x == k),
            "namespaced overlay has a {k}"
        );
    }
    assert!(r.kinds.iter().any(|x| x == "Role") && r.kinds.iter().any(|x| x == "RoleBinding"));
    assert_least_privilege(&r.rules);
    assert_deployment(r.deployment.as_ref().unwrap(), "cnvrg");
}

/// The secret key each store setting of the global store comes from.
fn store_keys(d: &Deployment) -> Vec<(String, String)> {
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
            (r.name == "cp-object-storage").then(|| (e.name.clone(), r.key.clone()))
        })
        .collect()
}

/// Every legacy bucket Secret key of a minio, AWS or Azure store reaches
/// the global store (optional but the type); the Azure overlay takes the
/// container from CNVRG_STORAGE_AZURE_CONTAINER.
#[test]
fn the_global_store_reads_every_bucket_secret_key_and_azure_its_container() {
    let base = check("base");
    let keys = store_keys(base.deployment.as_ref().unwrap());
    for (env, key) in [
        ("CNVRG_CAPSULE_BUCKET_TYPE", "CNVRG_STORAGE_TYPE"),
        ("CNVRG_CAPSULE_ENDPOINT", "CNVRG_STORAGE_ENDPOINT"),
        ("CNVRG_CAPSULE_BUCKET_NAME", "CNVRG_STORAGE_BUCKET"),
        ("CNVRG_CAPSULE_REGION", "CNVRG_STORAGE_REGION"),
        ("CNVRG_CAPSULE_ACCESS_KEY", "CNVRG_STORAGE_ACCESS_KEY"),
        ("CNVRG_CAPSULE_SECRET_KEY", "CNVRG_STORAGE_SECRET_KEY"),
        (
            "CNVRG_CAPSULE_ACCOUNT_NAME",
            "CNVRG_STORAGE_AZURE_ACCOUNT_NAME",
        ),
        (
            "CNVRG_CAPSULE_ACCOUNT_KEY",
            "CNVRG_STORAGE_AZURE_ACCESS_KEY",
        ),
    ] {
        assert!(
            keys.contains(&(env.to_string(), key.to_string())),
            "{env} <- {key}: {keys:?}"
        );
    }
    let azure = check("overlays/azure");
    let d = azure.deployment.as_ref().unwrap();
    assert_deployment(d, "*");
    let keys = store_keys(d);
    assert!(
        keys.contains(&(
            "CNVRG_CAPSULE_BUCKET_NAME".into(),
            "CNVRG_STORAGE_AZURE_CONTAINER".into()
        )),
        "{keys:?}"
    );
}
