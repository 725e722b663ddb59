//! `capsule plan` and `capsule start` with Kubernetes discovery: a fake API
//! server (test_support::kube_api) serving and watching CnvrgApps,
//! annotated PVCs and Secrets, reached through a generated kubeconfig; the
//! bucket is a real SeaweedFS bucket, the database a real PostgreSQL.

use std::process::Command;
use std::time::Duration;

use capsule_core::{RequestType, Statefile, Status};
use chrono::{DateTime, Utc};
use serde_json::Value;
use test_support::kube_api::FakeKubeApi;
use test_support::postgres::{PASSWORD, PASSWORD_USER, SUPERUSER};
use test_support::seaweedfs::SeaweedFs;

use crate::support::{Bucket, CAPSULE, Spec, pg, serial, statefiles, wait_until};

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
    bucket.add_secret_to(&api, "cnvrg");
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
        r#"{"dbs":{"pg":{"enabled":true,"port":6543,"backup":{"enabled":true}},"redis":{"enabled":true,"backup":{"enabled":true}},"es":{"enabled":true,"backup":{"enabled":true}}}}"#,
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
    assert!(pgt["store"].as_str().unwrap().contains(&bucket.name));
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
    bucket.add_secret_to(&api, "cnvrg");
    pg_secret(&api, "cnvrg", &db);
    api.add_cnvrgapp(
        "cnvrg",
        "cnvrgapp",
        &format!(r#"{{"dbs":{{"pg":{{"enabled":true,"port":{},"backup":{{"enabled":true,"period":"1h","rotation":2}}}}}}}}"#, pg().port),
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

/// Gives [`PASSWORD_USER`] its usual password back when the test ends
/// (other tests of this binary may log in with it).
struct RestorePassword;

impl Drop for RestorePassword {
    fn drop(&mut self) {
        pg().psql(
            "postgres",
            &format!("ALTER ROLE {PASSWORD_USER} PASSWORD '{PASSWORD}'"),
        );
    }
}

/// A CnvrgApp in `ns` whose PostgreSQL (the test server) is backed up
/// every 2 s.
fn pg_app(api: &FakeKubeApi, ns: &str) {
    api.add_cnvrgapp(
        ns,
        "cnvrgapp",
        &format!(
            r#"{{"dbs":{{"pg":{{"enabled":true,"port":{},"backup":{{"enabled":true,"period":"2s","rotation":3}}}}}}}}"#,
            pg().port
        ),
    );
}

fn creds(api: &FakeKubeApi, ns: &str, db: &str, user: &str, password: &str) {
    api.add_secret(
        ns,
        "pg-creds",
        &[
            ("POSTGRES_HOST", "127.0.0.1"),
            ("POSTGRES_DB", db),
            ("POSTGRES_USER", user),
            ("POSTGRES_PASSWORD", password),
        ],
    );
}

#[test]
fn start_plans_changes_as_they_happen_and_reads_secrets_when_each_job_starts() {
    let _guard = serial();
    let _restore = RestorePassword;
    let bucket = Bucket::new();
    let (db_a, db_b) = (
        crate::support::database("krot", 20),
        crate::support::database("kwatch", 20),
    );
    let api = FakeKubeApi::start();
    bucket.add_secret_to(&api, "cnvrg");
    // cnvrg's database needs the password (scram over TCP).
    creds(&api, "cnvrg", &db_a, PASSWORD_USER, PASSWORD);
    pg_app(&api, "cnvrg");
    let kubeconfig = api.kubeconfig();
    // The cluster is read in full once an hour: what happens sooner comes
    // from the watches, and from the Secrets read by each job.
    let mut daemon = Spec::new("k8s-watch", &bucket.url, "dev-eu")
        .arg("--kubeconfig")
        .arg(kubeconfig.to_str().unwrap())
        .arg("--discovery-resync")
        .arg("1h")
        .start();
    let catalog = bucket.catalog("cnvrg-smart-backups");
    let backups = |service: &str, status: Status, after: DateTime<Utc>| -> Vec<Statefile> {
        statefiles(&catalog)
            .into_iter()
            .filter(|sf| {
                sf.status == status
                    && sf.request_type == RequestType::Periodic
                    && sf.service.qualified_name().as_deref() == Some(service)
                    && sf.started_at.is_some_and(|t| t > after)
            })
            .collect()
    };
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    wait_until(
        Duration::from_secs(60),
        "a backup of cnvrg/pg-storage",
        || !backups("cnvrg/pg-storage", Status::Finished, epoch).is_empty(),
        || daemon.log_tail(40),
    );

    // A CnvrgApp created while the daemon runs is backed up within seconds.
    bucket.add_secret_to(&api, "team-a");
    creds(&api, "team-a", &db_b, SUPERUSER, "unused");
    pg_app(&api, "team-a");
    wait_until(
        Duration::from_secs(20),
        "a backup of team-a/pg-storage, created after the daemon started",
        || !backups("team-a/pg-storage", Status::Finished, epoch).is_empty(),
        || daemon.log_tail(40),
    );

    // The password is rotated in the database and in the Secret: the next
    // job logs in with the new one, without a restart.
    let rotated = "Rotated-Pg-Pw-4821";
    pg().psql(
        "postgres",
        &format!("ALTER ROLE {PASSWORD_USER} PASSWORD '{rotated}'"),
    );
    creds(&api, "cnvrg", &db_a, PASSWORD_USER, rotated);
    let rotated_at = Utc::now();
    wait_until(
        Duration::from_secs(20),
        "a backup of cnvrg/pg-storage with the rotated password",
        || !backups("cnvrg/pg-storage", Status::Finished, rotated_at).is_empty(),
        || daemon.log_tail(40),
    );

    // team-a's Secret is deleted: its next job fails naming the Secret,
    // recorded in its statefile; cnvrg's jobs go on.
    assert!(api.remove_secret("team-a", "pg-creds"));
    let removed_at = Utc::now();
    wait_until(
        Duration::from_secs(20),
        "a failed backup of team-a/pg-storage naming its Secret, and cnvrg's still running",
        || {
            backups("team-a/pg-storage", Status::Failed, removed_at)
                .iter()
                .any(|sf| {
                    sf.error
                        .as_deref()
                        .is_some_and(|e| e.contains("Secret team-a/pg-creds not found"))
                })
                && !backups("cnvrg/pg-storage", Status::Finished, removed_at).is_empty()
        },
        || daemon.log_tail(40),
    );
    // Planned again at once: the problem is in /metrics.
    let problem = r#"capsule_discovery_problems{namespace="team-a",resource="CnvrgApp team-a/cnvrgapp",field="spec.dbs.pg.credsRef"} 1"#;
    wait_until(
        Duration::from_secs(10),
        "the missing Secret in /metrics",
        || daemon.get("/metrics").body.contains(problem),
        || daemon.get("/metrics").body,
    );
    assert!(daemon.running());
    let log = daemon.log();
    for secret in [PASSWORD, rotated, SeaweedFs::shared().secret_key.as_str()] {
        assert!(!log.contains(secret), "a secret value is in the log");
    }
}
