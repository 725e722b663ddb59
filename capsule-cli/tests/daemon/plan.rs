//! `capsule plan` and `capsule start` with Kubernetes discovery: a fake API
//! server (test_support::kube_api) serving a CnvrgApp, annotated PVCs and
//! Secrets, reached through a generated kubeconfig; the bucket is a real
//! SeaweedFS bucket, the database a real PostgreSQL.

use std::process::Command;
use std::time::Duration;

use capsule_core::{RequestType, Status};
use serde_json::Value;
use test_support::kube_api::FakeKubeApi;
use test_support::postgres::{PASSWORD, SUPERUSER};
use test_support::seaweedfs::SeaweedFs;

use crate::support::{Bucket, CAPSULE, Spec, pg, serial, statefiles, wait_until};

/// The bucket Secret of `bucket` on the shared SeaweedFS.
fn bucket_secret(api: &FakeKubeApi, ns: &str, bucket: &str) {
    let s3 = SeaweedFs::shared();
    api.add_secret(
        ns,
        "cp-object-storage",
        &[
            ("CNVRG_STORAGE_TYPE", "minio"),
            ("CNVRG_STORAGE_ENDPOINT", &s3.endpoint),
            ("CNVRG_STORAGE_BUCKET", bucket),
            ("CNVRG_STORAGE_ACCESS_KEY", &s3.access_key),
            ("CNVRG_STORAGE_SECRET_KEY", &s3.secret_key),
            ("CNVRG_STORAGE_REGION", "us-east-1"),
        ],
    );
}

fn pg_secret(api: &FakeKubeApi, ns: &str, db: &str) {
    api.add_secret(
        ns,
        "pg-creds",
        &[
            ("POSTGRES_HOST", "127.0.0.1"),
            ("POSTGRES_DB", db),
            ("POSTGRES_USER", SUPERUSER),
            ("POSTGRES_PASSWORD", PASSWORD),
        ],
    );
}

fn bucket_name(b: &Bucket) -> String {
    // s3://NAME?endpoint=…
    b.url
        .trim_start_matches("s3://")
        .split(['?', '/'])
        .next()
        .unwrap()
        .to_string()
}

fn plan(api: &FakeKubeApi, extra: &[&str]) -> (String, String, bool) {
    let out = Command::new(CAPSULE)
        .args(["--store", "memory://", "--kubeconfig"])
        .arg(api.kubeconfig())
        .args(extra)
        .arg("plan")
        .args(["--cluster", "dev-eu"])
        .env_remove("CNVRG_CAPSULE_CONFIG")
        .output()
        .expect("run capsule plan");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn plan_prints_targets_and_problems_without_secrets() {
    let _guard = serial();
    let bucket = Bucket::new();
    let api = FakeKubeApi::start();
    bucket_secret(&api, "cnvrg", &bucket_name(&bucket));
    pg_secret(&api, "cnvrg", "cnvrg_production");
    api.add_secret(
        "cnvrg",
        "redis-creds",
        &[("REDIS_URL", "redis://:redis-pw-Secret@redis")],
    );
    // es-creds is forbidden.
    api.respond("/api/v1/namespaces/cnvrg/secrets/es-creds", 403, None);
    api.add_cnvrgapp(
        "cnvrg",
        "cnvrgapp",
        r#"{"dbs":{"pg":{"enabled":true,"port":6543},"redis":{"enabled":true},"es":{"enabled":true}}}"#,
    );
    // An annotated PVC in another namespace whose Secret is missing.
    api.add_pvc(
        "team-a",
        "pg-storage",
        &[
            ("capsule.mlops.cnvrg.io/backup", "true"),
            ("capsule.mlops.cnvrg.io/serviceType", "postgresql"),
            ("capsule.mlops.cnvrg.io/credsRef", "pg-creds"),
            ("capsule.mlops.cnvrg.io/period", "6h"),
        ],
    );
    let secrets = [
        PASSWORD,
        "redis-pw-Secret",
        SeaweedFs::shared().secret_key.as_str(),
    ];

    let (out, err, ok) = plan(&api, &[]);
    assert!(ok, "capsule plan failed:\n{out}\n{err}");
    for s in secrets {
        assert!(
            !out.contains(s) && !err.contains(s),
            "secret in output:\n{out}\n{err}"
        );
    }
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
            .to_string()
    };
    let pgl = line("cnvrg/pg-storage ");
    assert!(
        pgl.contains("postgresql") && pgl.contains("CnvrgApp") && pgl.contains("127.0.0.1:6543"),
        "{pgl}"
    );
    assert!(
        pgl.contains("cnvrg-smart-backups") && pgl.contains("1d") && pgl.contains("now"),
        "{pgl}"
    );
    assert!(
        line("cnvrg/redis-storage ").contains("redis.cnvrg:6379"),
        "{out}"
    );
    assert!(line("cnvrg/es-storage ").contains("not planned"), "{out}");
    assert!(line("team-a/pg-storage ").contains("not planned"), "{out}");
    assert!(out.contains("problems (2):"), "{out}");
    assert!(out.contains("CnvrgApp cnvrg/cnvrgapp, field spec.dbs.es.credsRef: forbidden to read Secret cnvrg/es-creds"), "{out}");
    assert!(out.contains("PersistentVolumeClaim team-a/pg-storage, field metadata.annotations[\"capsule.mlops.cnvrg.io/credsRef\"]: Secret team-a/pg-creds not found"), "{out}");

    let (out, err, ok) = plan(&api, &["--json"]);
    assert!(ok, "capsule plan --json failed:\n{out}\n{err}");
    for s in secrets {
        assert!(
            !out.contains(s) && !err.contains(s),
            "secret in output:\n{out}\n{err}"
        );
    }
    let v: Value = serde_json::from_str(&out).unwrap();
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 4, "{v:#}");
    let pgt = targets
        .iter()
        .find(|t| t["name"] == "cnvrg/pg-storage")
        .unwrap();
    assert_eq!(pgt["serviceType"], "postgresql");
    assert_eq!(pgt["origin"], "CnvrgApp");
    assert_eq!(pgt["endpoint"], "127.0.0.1:6543");
    assert_eq!(pgt["nextDue"], "now");
    assert!(
        pgt["store"]
            .as_str()
            .unwrap()
            .contains(&bucket_name(&bucket))
    );
    let es = targets
        .iter()
        .find(|t| t["name"] == "cnvrg/es-storage")
        .unwrap();
    assert_eq!(es["problem"]["field"], "spec.dbs.es.credsRef");

    // Whitelist: only team-a.
    let (out, _, ok) = plan(&api, &["--ns-whitelist", "team-*"]);
    assert!(ok);
    assert!(
        !out.contains("cnvrg/") && out.contains("team-a/pg-storage"),
        "{out}"
    );
}

#[test]
fn start_backs_up_a_discovered_postgresql_on_schedule() {
    let _guard = serial();
    let bucket = Bucket::new();
    let db = crate::support::database("kdisc", 50);
    let api = FakeKubeApi::start();
    bucket_secret(&api, "cnvrg", &bucket_name(&bucket));
    pg_secret(&api, "cnvrg", &db);
    api.add_cnvrgapp(
        "cnvrg",
        "cnvrgapp",
        &format!(r#"{{"dbs":{{"pg":{{"enabled":true,"port":{},"backup":{{"period":"1h","rotation":2}}}}}}}}"#, pg().port),
    );
    let kubeconfig = api.kubeconfig();
    let mut daemon = Spec::new("k8s", &bucket.url, "dev-eu")
        .arg("--kubeconfig")
        .arg(kubeconfig.to_str().unwrap())
        .start();
    let catalog = bucket.catalog("cnvrg-smart-backups");
    wait_until(
        Duration::from_secs(90),
        "a finished periodic backup of cnvrg/pg-storage",
        || {
            statefiles(&catalog).iter().any(|sf| {
                sf.status == Status::Finished
                    && sf.request_type == RequestType::Periodic
                    && sf.service.qualified_name().as_deref() == Some("cnvrg/pg-storage")
                    && sf.service.cluster.as_deref() == Some("dev-eu")
            })
        },
        || daemon.log_tail(40),
    );
    assert!(daemon.running());
    let log = daemon.log();
    assert!(
        !log.contains(PASSWORD),
        "the database password is in the log"
    );
    assert!(
        !log.contains(&SeaweedFs::shared().secret_key),
        "the bucket key is in the log"
    );
    let metrics = daemon.get("/metrics").body;
    assert!(metrics.contains("capsule_discovery_targets 1"), "{metrics}");
}
