//! Discovery between full resyncs: the watches (a new, changed or deleted
//! annotated PVC is planned within seconds; a dropped watch reconnects;
//! per-namespace watches with concrete namespaces), the daemon waking on a
//! change, and Secrets read when a job starts. Against the fake API server
//! (test_support::kube_api), with a resync of an hour so only the watches
//! can explain what is seen.

use std::sync::Arc;
use std::time::Duration;

use capsule_daemon::{
    Daemon, DiscoveryOptions, Error, KubeDiscovery, Mode, NsWhitelist, Target, TargetSource,
};
use test_support::kube_api::FakeKubeApi;
use test_support::seaweedfs::SeaweedFs;

use crate::discovery::{
    annotated, assert_no_secret, reads, s3_bucket_secret, service_secrets, wait_for,
};

const HOUR: Duration = Duration::from_secs(3600);

pub(crate) async fn discovery(api: &FakeKubeApi, whitelist: &str) -> KubeDiscovery {
    let options = DiscoveryOptions::new("dev-eu")
        .with_whitelist(whitelist.parse::<NsWhitelist>().unwrap())
        .with_resync(HOUR);
    KubeDiscovery::from_kubeconfig(Some(&api.kubeconfig()), options)
        .await
        .unwrap()
}

fn names(targets: &[Target]) -> Vec<String> {
    targets.iter().map(|t| t.name.clone()).collect()
}

/// Asks `d` every 100 ms until its targets satisfy `check` (5 s at most).
async fn targets_until(d: &KubeDiscovery, what: &str, check: impl Fn(&[Target]) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let targets = d.targets().await.unwrap();
        if check(&targets) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not within 5 s: {what}; targets {:?}",
            names(&targets)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn watches(api: &FakeKubeApi) -> Vec<String> {
    api.requests()
        .into_iter()
        .filter(|r| r.contains("watch=true"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_plans_changes_within_seconds_and_survives_a_dropped_connection() {
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    annotated(&api, "cnvrg", "pg-storage", "postgresql", "pg-creds", "24h");
    let d = discovery(&api, "*").await;
    assert_eq!(names(&d.targets().await.unwrap()), ["cnvrg/pg-storage"]);
    wait_for("the two cluster-wide watches", || api.open_watches() == 2).await;

    // A new annotated PVC: the daemon is woken, the next call plans it.
    annotated(
        &api,
        "cnvrg",
        "redis-storage",
        "redis",
        "redis-creds",
        "30m",
    );
    tokio::time::timeout(Duration::from_secs(5), d.changed())
        .await
        .expect("the watch reports the new PVC within seconds");
    targets_until(&d, "the new PVC is planned", |t| t.len() == 2).await;

    // A PVC planning ignores (not annotated) plans nothing again.
    let before = reads(&api);
    api.add_pvc("cnvrg", "scratch", &[("app", "x")]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.targets().await.unwrap().len(), 2);
    assert_eq!(reads(&api), before, "an irrelevant PVC made a plan");

    // The connection drops: the watcher reconnects (after kube-runtime's
    // backoff), resuming from its last resourceVersion.
    let lists = |api: &FakeKubeApi| {
        api.requests()
            .iter()
            .filter(|r| r.contains("limit="))
            .count()
    };
    let (before, listed) = (watches(&api).len(), lists(&api));
    api.drop_watches();
    wait_for("both watches reconnected", || {
        watches(&api).len() >= before + 2 && api.open_watches() == 2
    })
    .await;
    assert_eq!(lists(&api), listed, "resumed without a relist");
    // Later changes are still seen: a changed period, then a deletion.
    annotated(&api, "cnvrg", "redis-storage", "redis", "redis-creds", "2h");
    targets_until(&d, "the changed period", |t| {
        t.iter().any(|t| {
            t.name == "cnvrg/redis-storage"
                && t.schedule.as_ref().unwrap().period.to_string() == "2h"
        })
    })
    .await;
    api.remove_pvc("cnvrg", "pg-storage");
    targets_until(&d, "the deleted PVC is gone", |t| {
        names(t) == ["cnvrg/redis-storage"]
    })
    .await;
    let m = d.metrics();
    assert!(m.contains("capsule_discovery_watch_events_total 3"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concrete_namespaces_are_watched_one_by_one_and_globs_cluster_wide() {
    let api = FakeKubeApi::start();
    for ns in ["cnvrg", "team-a", "team-b", "other"] {
        service_secrets(&api, ns);
    }
    annotated(&api, "cnvrg", "pg-storage", "postgresql", "pg-creds", "24h");
    let d = discovery(&api, "cnvrg,team-a").await;
    assert_eq!(names(&d.targets().await.unwrap()), ["cnvrg/pg-storage"]);
    wait_for("four namespaced watches", || api.open_watches() == 4).await;
    annotated(
        &api,
        "team-a",
        "pg-storage",
        "postgresql",
        "pg-creds",
        "24h",
    );
    targets_until(&d, "team-a's new PVC", |t| t.len() == 2).await;
    for r in api.requests() {
        assert!(
            r.starts_with("/api/v1/namespaces/cnvrg/")
                || r.starts_with("/api/v1/namespaces/team-a/")
                || r.starts_with("/apis/mlops.cnvrg.io/v1/namespaces/cnvrg/")
                || r.starts_with("/apis/mlops.cnvrg.io/v1/namespaces/team-a/"),
            "a read outside the whitelisted namespaces: {r}"
        );
    }
    assert!(
        watches(&api)
            .iter()
            .any(|r| r.starts_with("/api/v1/namespaces/team-a/persistentvolumeclaims?")),
        "{:?}",
        watches(&api)
    );
    drop(d);

    // A glob: one cluster-wide watch per kind, filtered.
    let api = FakeKubeApi::start();
    for ns in ["team-b", "other"] {
        service_secrets(&api, ns);
    }
    let d = discovery(&api, "team-*").await;
    assert!(d.targets().await.unwrap().is_empty());
    wait_for("two cluster-wide watches", || api.open_watches() == 2).await;
    let before = reads(&api);
    annotated(&api, "other", "pg-storage", "postgresql", "pg-creds", "24h");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(d.targets().await.unwrap().is_empty());
    assert_eq!(
        reads(&api),
        before,
        "a PVC outside the whitelist made a plan"
    );
    annotated(
        &api,
        "team-b",
        "pg-storage",
        "postgresql",
        "pg-creds",
        "24h",
    );
    targets_until(&d, "team-b's new PVC", |t| {
        names(t) == ["team-b/pg-storage"]
    })
    .await;
    assert!(
        watches(&api)
            .iter()
            .all(|r| r.starts_with("/api/v1/persistentvolumeclaims?")
                || r.starts_with("/apis/mlops.cnvrg.io/v1/cnvrgapps?")),
        "{:?}",
        watches(&api)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_read_when_a_job_starts_and_a_missing_one_names_the_secret() {
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    annotated(&api, "cnvrg", "pg-storage", "postgresql", "pg-creds", "24h");
    let d = discovery(&api, "cnvrg").await;
    let targets = d.targets().await.unwrap();
    let t = &targets[0];
    // The planned target describes the service; it holds no password.
    assert_eq!(
        t.engine.identity().endpoint.as_deref(),
        Some("postgres.cnvrg:5432")
    );
    assert_no_secret(&format!("{t:?} {}", t.engine));
    let credentials = t.credentials.clone().expect("read at job start");

    let secret_reads = || {
        api.requests()
            .iter()
            .filter(|r| r.contains("/secrets/"))
            .count()
    };
    let before = secret_reads();
    let job = credentials.resolve().await.unwrap();
    assert_eq!(secret_reads(), before + 2, "the creds and bucket Secrets");
    assert_eq!(job.store.url(), t.store.url());
    assert_eq!(
        job.engine.identity().endpoint.as_deref(),
        Some("postgres.cnvrg:5432")
    );
    drop(job);

    // Rotated: the next job reads the new value, with no new plan.
    api.add_secret(
        "cnvrg",
        "pg-creds",
        &[
            ("POSTGRES_HOST", "postgres-b"),
            ("POSTGRES_DB", "cnvrg_production"),
            ("POSTGRES_USER", "cnvrg"),
            ("POSTGRES_PASSWORD", "rotated-Pw-5"),
        ],
    );
    let job = credentials.resolve().await.unwrap();
    assert_eq!(
        job.engine.identity().endpoint.as_deref(),
        Some("postgres-b.cnvrg:5432")
    );
    assert!(!job.engine.to_string().contains("rotated-Pw-5"));
    drop(job);

    // Gone: an error naming the Secret and the field that refers to it;
    // the plan is made again at once and reports the problem.
    let resyncs = |d: &KubeDiscovery| {
        d.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("capsule_discovery_resyncs_total "))
            .unwrap()
            .to_string()
    };
    assert_eq!(resyncs(&d), "1");
    assert!(api.remove_secret("cnvrg", "pg-creds"));
    let e = credentials.resolve().await.expect_err("no Secret");
    assert!(matches!(e, Error::Credentials { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "credentials of cnvrg/pg-storage read at job start: PersistentVolumeClaim cnvrg/pg-storage, \
         field metadata.annotations[\"capsule.mlops.cnvrg.io/credsRef\"]: Secret cnvrg/pg-creds not found"
    );
    tokio::time::timeout(Duration::from_secs(5), d.changed())
        .await
        .expect("a failed job wakes the daemon");
    assert!(d.targets().await.unwrap().is_empty());
    assert_eq!(resyncs(&d), "2");
    let m = d.metrics();
    assert!(
        m.contains(r#"capsule_discovery_problems{namespace="cnvrg",resource="PersistentVolumeClaim cnvrg/pg-storage",field="metadata.annotations[\"capsule.mlops.cnvrg.io/credsRef\"]"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_plans_a_new_pvc_at_once_not_at_its_next_scan() {
    let _serial = crate::support::serial().await;
    let s3 = SeaweedFs::shared();
    let bucket = format!("kwatch{}", std::process::id());
    s3.create_bucket(&bucket);
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    s3_bucket_secret(&api, "cnvrg", s3, &bucket);
    annotated(&api, "cnvrg", "pg-storage", "postgresql", "pg-creds", "24h");
    let d = discovery(&api, "*").await;
    // Scans an hour apart: only the watch can explain a quick pickup.
    let mut options = crate::support::options(Mode::Api);
    options.timings.watch_interval = HOUR;
    let daemon = Daemon::start(options, crate::support::memory_store(), Arc::new(d))
        .await
        .unwrap();
    let addr = daemon.api_addr().unwrap();
    let metrics = move || {
        let r = crate::support::request(addr, "GET", "/metrics", Some(crate::support::TOKEN), None);
        String::from_utf8_lossy(&r.body).into_owned()
    };
    let m = tokio::task::spawn_blocking(metrics).await.unwrap();
    assert!(m.contains("capsule_discovery_targets 1"), "{m}");
    wait_for("the two watches", || api.open_watches() == 2).await;
    annotated(
        &api,
        "cnvrg",
        "redis-storage",
        "redis",
        "redis-creds",
        "30m",
    );
    let start = std::time::Instant::now();
    loop {
        let m = tokio::task::spawn_blocking(metrics).await.unwrap();
        if m.contains("capsule_discovery_targets 2") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the daemon did not plan the new PVC within 5 s:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.shutdown();
    daemon.wait().await.unwrap();
}
