//! Kubernetes discovery against a fake API server serving the real JSON
//! shapes (test_support::kube_api), reached by the real `kube` client
//! through a generated kubeconfig.

use std::time::{Duration, Instant};

use capsule_core::ServiceType;
use capsule_daemon::{
    DiscoveryOptions, DiscoveryPlan, KubeDiscovery, NsWhitelist, PlannedTarget, TargetOrigin,
    TargetSource,
};
use test_support::kube_api::FakeKubeApi;
use test_support::seaweedfs::SeaweedFs;

pub(crate) const PG_PASSWORD: &str = "pg-Secret-Value-1";
const REDIS_PASSWORD: &str = "redis-Secret-Value-2";
const ES_PASSWORD: &str = "es-Secret-Value-3";
const BUCKET_SECRET: &str = "bucket-Secret-Value-4";

pub(crate) fn bucket_secret(api: &FakeKubeApi, ns: &str, name: &str) {
    api.add_secret(
        ns,
        name,
        &[
            ("CNVRG_STORAGE_TYPE", "minio"),
            ("CNVRG_STORAGE_ENDPOINT", "http://127.0.0.1:9"),
            ("CNVRG_STORAGE_BUCKET", "cnvrg-storage"),
            ("CNVRG_STORAGE_ACCESS_KEY", "AKIDBUCKET"),
            ("CNVRG_STORAGE_SECRET_KEY", BUCKET_SECRET),
        ],
    );
}

/// Bucket Secret `cp-object-storage` of `ns` naming `bucket` of the
/// SeaweedFS S3 server `s3`.
pub(crate) fn s3_bucket_secret(api: &FakeKubeApi, ns: &str, s3: &SeaweedFs, bucket: &str) {
    s3_bucket_secret_at(api, ns, s3, bucket, &s3.endpoint);
}

/// As [`s3_bucket_secret`], with the endpoint `endpoint` (https…).
fn s3_bucket_secret_at(api: &FakeKubeApi, ns: &str, s3: &SeaweedFs, bucket: &str, endpoint: &str) {
    api.add_secret(
        ns,
        "cp-object-storage",
        &[
            ("CNVRG_STORAGE_TYPE", "minio"),
            ("CNVRG_STORAGE_ENDPOINT", endpoint),
            ("CNVRG_STORAGE_BUCKET", bucket),
            ("CNVRG_STORAGE_ACCESS_KEY", &s3.access_key),
            ("CNVRG_STORAGE_SECRET_KEY", &s3.secret_key),
            ("CNVRG_STORAGE_REGION", "us-east-1"),
        ],
    );
}

pub(crate) fn service_secrets(api: &FakeKubeApi, ns: &str) {
    api.add_secret(
        ns,
        "pg-creds",
        &[
            ("POSTGRES_HOST", "postgres"),
            ("POSTGRES_DB", "cnvrg_production"),
            ("POSTGRES_USER", "cnvrg"),
            ("POSTGRES_PASSWORD", PG_PASSWORD),
        ],
    );
    api.add_secret(
        ns,
        "redis-creds",
        &[
            ("REDIS_URL", "redis://redis"),
            ("CNVRG_REDIS_PASSWORD", REDIS_PASSWORD),
        ],
    );
    api.add_secret(
        ns,
        "es-creds",
        &[
            ("ELASTICSEARCH_URL", "http://elasticsearch"),
            ("CNVRG_ES_USER", "cnvrg"),
            ("CNVRG_ES_PASS", ES_PASSWORD),
        ],
    );
    bucket_secret(api, ns, "cp-object-storage");
}

pub(crate) async fn plan(api: &FakeKubeApi, whitelist: &str) -> DiscoveryPlan {
    let options =
        DiscoveryOptions::new("dev-eu").with_whitelist(whitelist.parse::<NsWhitelist>().unwrap());
    let d = KubeDiscovery::from_kubeconfig(Some(&api.kubeconfig()), options)
        .await
        .expect("kubeconfig loads");
    d.plan().await.expect("the fake API answers")
}

pub(crate) fn find<'a>(plan: &'a DiscoveryPlan, name: &str) -> &'a PlannedTarget {
    plan.targets
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{name} not planned: {plan:#?}"))
}

pub(crate) fn assert_no_secret(text: &str) {
    for s in [PG_PASSWORD, REDIS_PASSWORD, ES_PASSWORD, BUCKET_SECRET] {
        assert!(!text.contains(s), "a secret value leaked: {text}");
    }
}

const ALL_DEFAULTS: &str = r#"{"clusterDomain":"example.com","dbs":{"pg":{"enabled":true,"backup":{"enabled":true}},"redis":{"enabled":true,"backup":{"enabled":true}},"es":{"enabled":true,"backup":{"enabled":true}}}}"#;

#[tokio::test]
async fn cnvrgapp_with_defaults_plans_pg_redis_and_es() {
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    api.add_cnvrgapp("cnvrg", "cnvrgapp", ALL_DEFAULTS);
    let plan = plan(&api, "*").await;
    assert!(plan.all_problems().next().is_none(), "{plan:#?}");
    assert_eq!(plan.targets.len(), 3);
    let pg = find(&plan, "cnvrg/pg-storage");
    assert_eq!(pg.service_type, ServiceType::Postgresql);
    assert_eq!(pg.endpoint.as_deref(), Some("postgres.cnvrg:5432"));
    assert_eq!(pg.origin, TargetOrigin::CnvrgApp);
    assert_eq!((pg.period.as_str(), pg.rotation), ("1d", 5));
    assert_eq!(pg.dst_dir.as_deref(), Some("cnvrg-smart-backups"));
    assert!(
        pg.store.as_deref().unwrap().contains("cnvrg-storage"),
        "{pg:?}"
    );
    let redis = find(&plan, "cnvrg/redis-storage");
    assert_eq!(redis.endpoint.as_deref(), Some("redis.cnvrg:6379"));
    let es = find(&plan, "cnvrg/es-storage");
    assert_eq!(es.endpoint.as_deref(), Some("elasticsearch.cnvrg:9200"));
    assert_eq!(plan.runnable().len(), 3);
    let text = format!("{plan:?} {}", serde_json::to_string(&plan).unwrap());
    assert_no_secret(&text);
    // One cluster-wide list of each kind, no namespaced list.
    let req = api.requests();
    assert!(
        req.iter()
            .any(|r| r.starts_with("/apis/mlops.cnvrg.io/v1/cnvrgapps")),
        "{req:?}"
    );
    assert!(
        req.iter()
            .any(|r| r.starts_with("/api/v1/persistentvolumeclaims")),
        "{req:?}"
    );
}

#[tokio::test]
async fn cnvrgapp_overrides_are_honoured() {
    let api = FakeKubeApi::start();
    api.add_secret(
        "prod",
        "db-secret",
        &[
            ("POSTGRES_HOST", "pg-main"),
            ("POSTGRES_DB", "app"),
            ("POSTGRES_USER", "app"),
            ("POSTGRES_PASSWORD", PG_PASSWORD),
        ],
    );
    api.add_secret("prod", "r", &[("REDIS_URL", "redis://:pw@cache:7000")]);
    bucket_secret(&api, "prod", "other-bucket");
    bucket_secret(&api, "prod", "cp-object-storage");
    api.add_cnvrgapp(
        "prod",
        "app",
        r#"{"dbs":{"pg":{"enabled":true,"svcName":"pg-main","port":6543,"credsRef":"db-secret","pvcName":"pg-data",
            "backup":{"enabled":true,"bucketRef":"other-bucket","rotation":9,"period":"90m"}},
           "redis":{"enabled":true,"port":6380,"credsRef":"r","backup":{"enabled":true,"period":"1.5h"}},
           "es":{"enabled":false}}}"#,
    );
    let plan = plan(&api, "*").await;
    assert!(plan.all_problems().next().is_none(), "{plan:#?}");
    assert_eq!(plan.targets.len(), 2);
    let pg = find(&plan, "prod/pg-data");
    assert_eq!(pg.endpoint.as_deref(), Some("pg-main.prod:6543"));
    assert_eq!((pg.period.as_str(), pg.rotation), ("90m", 9));
    // The URL's own port wins over the spec's.
    let redis = find(&plan, "prod/redis-storage");
    assert_eq!(redis.endpoint.as_deref(), Some("cache.prod:7000"));
    assert_eq!(redis.period, "90m");
}

pub(crate) fn annotated(
    api: &FakeKubeApi,
    ns: &str,
    pvc: &str,
    kind: &str,
    creds: &str,
    period: &str,
) {
    annotated_with(api, ns, pvc, kind, creds, period, &[]);
}

/// As [`annotated`], with `extra` annotations (`encryptionRef`…).
pub(crate) fn annotated_with(
    api: &FakeKubeApi,
    ns: &str,
    pvc: &str,
    kind: &str,
    creds: &str,
    period: &str,
    extra: &[(&str, &str)],
) {
    let mut annotations = vec![
        ("capsule.mlops.cnvrg.io/backup", "true"),
        ("capsule.mlops.cnvrg.io/serviceType", kind),
        ("capsule.mlops.cnvrg.io/bucketRef", "cp-object-storage"),
        ("capsule.mlops.cnvrg.io/credsRef", creds),
        ("capsule.mlops.cnvrg.io/rotation", "3"),
        ("capsule.mlops.cnvrg.io/period", period),
    ];
    annotations.extend_from_slice(extra);
    api.add_pvc(ns, pvc, &annotations);
}

#[tokio::test]
async fn annotated_pvcs_are_planned_and_others_ignored() {
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    annotated(&api, "cnvrg", "pg-storage", "postgresql", "pg-creds", "12h");
    annotated(
        &api,
        "cnvrg",
        "redis-storage",
        "redis",
        "redis-creds",
        "30m",
    );
    api.add_pvc(
        "cnvrg",
        "scratch",
        &[("capsule.mlops.cnvrg.io/backup", "false")],
    );
    api.add_pvc("cnvrg", "plain", &[]);
    let plan = plan(&api, "*").await;
    assert!(plan.all_problems().next().is_none(), "{plan:#?}");
    assert_eq!(plan.targets.len(), 2, "{plan:#?}");
    let pg = find(&plan, "cnvrg/pg-storage");
    assert_eq!(
        (pg.origin, pg.period.as_str(), pg.rotation),
        (TargetOrigin::Pvc, "12h", 3)
    );
    assert_eq!(pg.endpoint.as_deref(), Some("postgres.cnvrg:5432"));
    assert_eq!(find(&plan, "cnvrg/redis-storage").period, "30m");
}

#[tokio::test]
async fn a_service_in_both_sources_is_one_target_and_the_cnvrgapp_wins() {
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    api.add_cnvrgapp(
        "cnvrg",
        "cnvrgapp",
        r#"{"dbs":{"pg":{"enabled":true,"backup":{"enabled":true}}}}"#,
    );
    // The mirror lags: another period.
    annotated(&api, "cnvrg", "pg-storage", "postgresql", "pg-creds", "1h");
    annotated(
        &api,
        "cnvrg",
        "redis-storage",
        "redis",
        "redis-creds",
        "30m",
    );
    let plan = plan(&api, "*").await;
    assert_eq!(plan.targets.len(), 2, "{plan:#?}");
    let pg = find(&plan, "cnvrg/pg-storage");
    assert_eq!(
        (pg.origin, pg.also_in),
        (TargetOrigin::CnvrgApp, Some(TargetOrigin::Pvc))
    );
    assert_eq!(pg.period, "1d");
    assert_eq!(find(&plan, "cnvrg/redis-storage").origin, TargetOrigin::Pvc);
}

#[tokio::test]
async fn the_whitelist_filters_and_concrete_names_list_per_namespace() {
    let api = FakeKubeApi::start();
    for ns in ["cnvrg", "team-a", "other"] {
        service_secrets(&api, ns);
        annotated(&api, ns, "pg-storage", "postgresql", "pg-creds", "24h");
    }
    let plan1 = plan(&api, "cnvrg,team-a").await;
    let names: Vec<_> = plan1.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["cnvrg/pg-storage", "team-a/pg-storage"]);
    let req = api.requests();
    assert!(
        !req.iter()
            .any(|r| r.starts_with("/api/v1/persistentvolumeclaims")
                || r.starts_with("/apis/mlops.cnvrg.io/v1/cnvrgapps")),
        "a cluster-wide list with concrete namespaces: {req:?}"
    );
    assert!(
        req.iter()
            .any(|r| r.starts_with("/api/v1/namespaces/team-a/persistentvolumeclaims"))
    );

    let plan2 = plan(&api, "team-*").await;
    let names: Vec<_> = plan2.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["team-a/pg-storage"]);
}

#[tokio::test]
async fn missing_secret_missing_key_and_forbidden_are_reported_and_the_rest_planned() {
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    // pg: key missing; redis: Secret missing; es: forbidden.
    api.add_secret(
        "cnvrg",
        "pg-creds",
        &[
            ("POSTGRES_HOST", "postgres"),
            ("POSTGRES_DB", "d"),
            ("POSTGRES_USER", "u"),
        ],
    );
    api.respond("/api/v1/namespaces/cnvrg/secrets/redis-creds", 404, None);
    api.respond("/api/v1/namespaces/cnvrg/secrets/es-creds", 403, None);
    api.add_cnvrgapp("cnvrg", "cnvrgapp", ALL_DEFAULTS);
    // A healthy annotated service in another namespace, and a namespace whose PVCs are forbidden.
    service_secrets(&api, "ok");
    annotated(&api, "ok", "pg-storage", "postgresql", "pg-creds", "24h");
    annotated(&api, "ok", "bad-period", "postgresql", "pg-creds", "soon");
    annotated(&api, "ok", "mongo", "mongodb", "pg-creds", "24h");
    api.respond(
        "/api/v1/namespaces/locked/persistentvolumeclaims",
        403,
        None,
    );

    let plan = plan(&api, "cnvrg,ok,locked").await;
    let runnable: Vec<_> = plan.runnable().into_iter().map(|t| t.name).collect();
    assert_eq!(runnable, ["ok/pg-storage"], "{plan:#?}");

    let pg = find(&plan, "cnvrg/pg-storage")
        .problem
        .clone()
        .expect("pg problem");
    assert_eq!(
        (pg.resource.as_str(), pg.field.as_str()),
        ("Secret cnvrg/pg-creds", "data.POSTGRES_PASSWORD")
    );
    let redis = find(&plan, "cnvrg/redis-storage")
        .problem
        .clone()
        .expect("redis problem");
    assert_eq!(
        (redis.resource.as_str(), redis.field.as_str()),
        ("CnvrgApp cnvrg/cnvrgapp", "spec.dbs.redis.credsRef")
    );
    assert!(
        redis.message.contains("Secret cnvrg/redis-creds not found"),
        "{redis}"
    );
    let es = find(&plan, "cnvrg/es-storage")
        .problem
        .clone()
        .expect("es problem");
    assert!(es.message.contains("forbidden"), "{es}");
    assert_eq!(es.field, "spec.dbs.es.credsRef");

    let all: Vec<String> = plan.all_problems().map(|p| p.to_string()).collect();
    let joined = all.join("\n");
    assert!(joined.contains("PersistentVolumeClaim ok/bad-period, field metadata.annotations[\"capsule.mlops.cnvrg.io/period\"]: invalid period \"soon\""), "{joined}");
    assert!(joined.contains("PersistentVolumeClaim ok/mongo, field metadata.annotations[\"capsule.mlops.cnvrg.io/serviceType\"]: unknown service type"), "{joined}");
    assert!(
        joined.contains("PersistentVolumeClaim list in namespace locked") && joined.contains("403"),
        "{joined}"
    );
    assert_no_secret(&format!(
        "{joined} {}",
        serde_json::to_string(&plan).unwrap()
    ));
}

/// Requests other than the watches' (a plan's lists and Secret reads).
pub(crate) fn reads(api: &FakeKubeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| !r.contains("watch=") && !r.contains("limit="))
        .count()
}

/// Polls `check` every 50 ms for up to 10 s.
pub(crate) async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_source_reports_problems_in_metrics_and_caches_between_resyncs() {
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    api.respond("/api/v1/namespaces/cnvrg/secrets/redis-creds", 404, None);
    api.add_cnvrgapp("cnvrg", "cnvrgapp", ALL_DEFAULTS);
    let d =
        KubeDiscovery::from_kubeconfig(Some(&api.kubeconfig()), DiscoveryOptions::new("dev-eu"))
            .await
            .unwrap();
    let targets = d.targets().await.unwrap();
    assert_eq!(targets.len(), 2);
    // The watches start after the first plan; their first list matches
    // it, so it is not planned again.
    wait_for("the two cluster-wide watches", || api.open_watches() == 2).await;
    let before = reads(&api);
    assert_eq!(d.targets().await.unwrap().len(), 2);
    assert_eq!(
        reads(&api),
        before,
        "a second call within the resync, nothing changed, reads nothing"
    );
    let m = d.metrics();
    assert!(m.contains("capsule_discovery_targets 2"), "{m}");
    assert!(
        m.contains(r#"capsule_discovery_problems{namespace="cnvrg",resource="CnvrgApp cnvrg/cnvrgapp",field="spec.dbs.redis.credsRef"} 1"#),
        "{m}"
    );
    assert!(d.name().contains("kubernetes"));
}

#[tokio::test]
async fn an_unreachable_api_is_an_error_not_an_empty_plan() {
    let api = FakeKubeApi::start();
    let kubeconfig = std::fs::read_to_string(api.kubeconfig()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    // Port 9 (discard) on loopback: nothing listens.
    std::fs::write(&path, kubeconfig.replace(&api.url(), "http://127.0.0.1:9")).unwrap();
    let d = KubeDiscovery::from_kubeconfig(Some(&path), DiscoveryOptions::new("x"))
        .await
        .unwrap();
    assert!(d.plan().await.is_err());
    assert!(d.targets().await.is_err());
    assert!(d.metrics().contains("capsule_discovery_errors_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_wins_over_discovery_and_the_daemon_serves_discovery_metrics() {
    use std::sync::Arc;

    use capsule_daemon::{Daemon, Mode, Target, TargetSchedule};
    use capsule_engines::{PgEngine, PgOptions};

    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    api.respond("/api/v1/namespaces/cnvrg/secrets/es-creds", 404, None);
    api.add_cnvrgapp("cnvrg", "cnvrgapp", ALL_DEFAULTS);
    let store = crate::support::memory_store();
    let engine = Arc::new(PgEngine::new(
        PgOptions::from_url("postgres://app@db.example:5433/app").unwrap(),
    ));
    let from_config = Target::new(
        "cnvrg/pg-storage",
        ServiceType::Postgresql,
        Some(TargetSchedule::new("2h".parse().unwrap(), 4)),
        store.clone(),
        engine,
    );
    let d = KubeDiscovery::from_kubeconfig(Some(&api.kubeconfig()), DiscoveryOptions::new("east"))
        .await
        .unwrap()
        .with_config_targets(vec![from_config]);
    let plan = d.plan().await.unwrap();
    let pg = find(&plan, "cnvrg/pg-storage");
    assert_eq!(
        (pg.origin, pg.also_in, pg.period.as_str(), pg.rotation),
        (TargetOrigin::Config, Some(TargetOrigin::CnvrgApp), "2h", 4)
    );
    assert_eq!(plan.runnable().len(), 2, "{plan:#?}");

    let daemon = Daemon::start(crate::support::options(Mode::Api), store, Arc::new(d))
        .await
        .unwrap();
    let addr = daemon.api_addr().unwrap();
    let metrics = tokio::task::spawn_blocking(move || {
        crate::support::request(addr, "GET", "/metrics", Some(crate::support::TOKEN), None)
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert_eq!(metrics.status, 200, "{text}");
    assert!(text.contains("capsule_discovery_targets 2"), "{text}");
    assert!(
        text.contains(r#"capsule_discovery_problems{namespace="cnvrg",resource="CnvrgApp cnvrg/cnvrgapp",field="spec.dbs.es.credsRef"} 1"#),
        "{text}"
    );
    assert_no_secret(&text);
    daemon.shutdown();
    daemon.wait().await.unwrap();
}

/// A bucket Secret naming an https endpoint signed by a private CA: the
/// daemon's `--ca-file` is trusted by the store planned from it and by the
/// store each job opens; without it the certificate is refused.
#[tokio::test]
async fn bucket_secrets_trust_the_daemons_ca_file() {
    let s3 = SeaweedFs::shared_tls();
    let bucket = format!("disc-tls-{}", std::process::id());
    s3.create_bucket(&bucket);
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    s3_bucket_secret_at(&api, "cnvrg", s3, &bucket, &s3.https_endpoint());
    annotated(&api, "cnvrg", "redis-data", "redis", "redis-creds", "1h");

    for ca_file in [Some(s3.ca_file()), None] {
        let options = DiscoveryOptions::new("dev-eu")
            .with_whitelist("cnvrg".parse::<NsWhitelist>().unwrap())
            .with_ca_file(ca_file.clone());
        let d = KubeDiscovery::from_kubeconfig(Some(&api.kubeconfig()), options)
            .await
            .unwrap();
        let plan = d.plan().await.unwrap();
        let target = find(&plan, "cnvrg/redis-data").target.clone().unwrap();
        let job = target
            .credentials
            .as_ref()
            .unwrap()
            .resolve()
            .await
            .unwrap();
        for (what, store) in [("planned", &target.store), ("job", &job.store)] {
            let listed = store.list("").await;
            match &ca_file {
                Some(_) => assert!(listed.is_ok(), "{what}: {listed:?}"),
                None => {
                    let e = listed.unwrap_err().to_string();
                    assert!(e.contains("not trusted"), "{what}: {e}");
                }
            }
        }
    }
}
