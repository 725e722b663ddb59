//! Encryption named in the cluster: a target's `encryptionRef` Secret
//! (`recipients`, optional `identity`) checked at planning, read again
//! when each job starts, and used end to end by a real daemon job (a Redis
//! backup into SeaweedFS, encrypted to the Secret's recipient, restored
//! through the API with the Secret's identity). Against the fake API server
//! (test_support::kube_api).

use std::sync::Arc;
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret;
use capsule_core::{Catalog, ListFilter, RestoreStatus, Statefile, Status};
use capsule_daemon::{Daemon, Mode, TargetSource};
use capsule_store::Store;
use test_support::kube_api::FakeKubeApi;
use test_support::redis::Redis;
use test_support::seaweedfs::SeaweedFs;

use crate::discovery::{
    annotated_with, assert_no_secret, find, plan, s3_bucket_secret, service_secrets,
};
use crate::discovery_watch::discovery;

const ENCRYPTION_REF: &str = "capsule.mlops.cnvrg.io/encryptionRef";

/// A fresh age key pair.
struct Keys {
    /// `AGE-SECRET-KEY-1…`: must never show up anywhere.
    secret: String,
    /// `age1…`.
    public: String,
}

impl Keys {
    fn generate() -> Keys {
        let key = age::x25519::Identity::generate();
        Keys {
            secret: key.to_string().expose_secret().to_string(),
            public: key.to_public().to_string(),
        }
    }

    fn assert_not_in(&self, text: &str) {
        assert!(!text.contains(&self.secret), "an identity leaked: {text}");
    }
}

#[tokio::test]
async fn planning_checks_the_encryption_secret_and_plans_the_other_targets() {
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    service_secrets(&api, "ok");
    let keys = Keys::generate();
    api.add_secret(
        "cnvrg",
        "backup-keys",
        &[
            ("recipients", &format!("# ops team\n{}\n", keys.public)),
            ("identity", &keys.secret),
        ],
    );
    api.add_secret("cnvrg", "bad-keys", &[("recipients", "# ops\nage1nope\n")]);
    // pg: a good Secret; redis: a missing one (annotations); es: a
    // malformed one (the CnvrgApp's backup block); ok/pg: none.
    let good = [(ENCRYPTION_REF, "backup-keys")];
    annotated_with(
        &api,
        "cnvrg",
        "pg-storage",
        "postgresql",
        "pg-creds",
        "24h",
        &good,
    );
    let gone = [(ENCRYPTION_REF, "gone")];
    annotated_with(
        &api,
        "cnvrg",
        "redis-storage",
        "redis",
        "redis-creds",
        "24h",
        &gone,
    );
    api.add_cnvrgapp(
        "cnvrg",
        "cnvrgapp",
        r#"{"dbs":{"es":{"enabled":true,"backup":{"enabled":true,"encryptionRef":"bad-keys"}}}}"#,
    );
    annotated_with(
        &api,
        "ok",
        "pg-storage",
        "postgresql",
        "pg-creds",
        "24h",
        &[],
    );

    let plan = plan(&api, "cnvrg,ok").await;
    let runnable: Vec<_> = plan.runnable().into_iter().map(|t| t.name).collect();
    assert_eq!(runnable, ["cnvrg/pg-storage", "ok/pg-storage"], "{plan:#?}");

    let pg = find(&plan, "cnvrg/pg-storage");
    assert_eq!(
        pg.encryption.as_deref(),
        Some("Secret cnvrg/backup-keys: 1 recipient, and an identity")
    );
    let recipients = pg.target.as_ref().unwrap().encryption.as_ref().unwrap();
    assert_eq!(recipients.to_strings(), [keys.public.as_str()]);
    let plain = find(&plan, "ok/pg-storage");
    assert_eq!(plain.encryption, None);
    assert!(plain.target.as_ref().unwrap().encryption.is_none());

    let redis = find(&plan, "cnvrg/redis-storage").problem.clone().unwrap();
    assert_eq!(
        redis.to_string(),
        "PersistentVolumeClaim cnvrg/redis-storage, field \
         metadata.annotations[\"capsule.mlops.cnvrg.io/encryptionRef\"]: Secret cnvrg/gone not found"
    );
    let es = find(&plan, "cnvrg/es-storage").problem.clone().unwrap();
    assert_eq!(
        (es.resource.as_str(), es.field.as_str()),
        ("Secret cnvrg/bad-keys", "data.recipients"),
        "{es}"
    );
    assert!(
        es.message
            .contains("line 2: \"age1nope\" is not an age X25519 public key"),
        "{es}"
    );

    let text = format!("{plan:?} {}", serde_json::to_string(&plan).unwrap());
    keys.assert_not_in(&text);
    assert_no_secret(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encryption_secret_is_read_again_when_each_job_starts() {
    let api = FakeKubeApi::start();
    service_secrets(&api, "cnvrg");
    let (first, second) = (Keys::generate(), Keys::generate());
    api.add_secret("cnvrg", "backup-keys", &[("recipients", &first.public)]);
    let keys_ref = [(ENCRYPTION_REF, "backup-keys")];
    annotated_with(
        &api,
        "cnvrg",
        "pg-storage",
        "postgresql",
        "pg-creds",
        "24h",
        &keys_ref,
    );
    let d = discovery(&api, "cnvrg").await;
    let targets = d.targets().await.unwrap();
    let credentials = targets[0].credentials.clone().expect("read at job start");

    let job = credentials.resolve().await.unwrap();
    assert_eq!(
        job.encryption.as_ref().unwrap().to_strings(),
        [first.public.as_str()]
    );
    assert!(job.identities.is_none());

    // Rotated, with an identity added: the next job uses them, no new plan.
    api.add_secret(
        "cnvrg",
        "backup-keys",
        &[
            (
                "recipients",
                &format!("{}\n{}\n", second.public, first.public),
            ),
            ("identity", &second.secret),
        ],
    );
    let job = credentials.resolve().await.unwrap();
    assert_eq!(
        job.encryption.as_ref().unwrap().to_strings(),
        [second.public.as_str(), first.public.as_str()]
    );
    assert_eq!(
        job.identities.as_ref().unwrap().public_keys(),
        [second.public.as_str()]
    );
    second.assert_not_in(&format!("{job:?}"));
    assert!(
        d.metrics().contains("capsule_discovery_resyncs_total 1\n"),
        "{}",
        d.metrics()
    );

    // Malformed, then gone: the job fails naming the Secret, never
    // writing plaintext instead.
    api.add_secret("cnvrg", "backup-keys", &[("recipients", "age1nope")]);
    let e = credentials.resolve().await.expect_err("malformed");
    assert!(
        e.to_string()
            .contains("Secret cnvrg/backup-keys, field data.recipients: "),
        "{e}"
    );
    assert!(api.remove_secret("cnvrg", "backup-keys"));
    let e = credentials.resolve().await.expect_err("no Secret");
    assert_eq!(
        e.to_string(),
        "credentials of cnvrg/pg-storage read at job start: PersistentVolumeClaim cnvrg/pg-storage, \
         field metadata.annotations[\"capsule.mlops.cnvrg.io/encryptionRef\"]: Secret cnvrg/backup-keys not found"
    );
}

/// The statefiles in `catalog` (60 s at most) once `check` accepts them.
async fn statefiles_when(
    catalog: &Catalog,
    what: &str,
    check: impl Fn(&[Statefile]) -> bool,
) -> Vec<Statefile> {
    let start = Instant::now();
    loop {
        let found: Vec<Statefile> = catalog
            .list(&ListFilter::default())
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| e.statefile)
            .collect();
        if check(&found) {
            return found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_target_is_encrypted_to_its_secret_and_restored_with_its_identity() {
    let _serial = crate::support::serial().await;
    let s3 = SeaweedFs::shared();
    let bucket = format!("kenc{}", std::process::id());
    s3.create_bucket(&bucket);
    let redis = Redis::start();
    let marker = format!("discovered-plaintext-marker-{}", std::process::id());
    for i in 0..20 {
        let (key, value) = (format!("item:{i}"), format!("{marker}-{i}"));
        redis.cmd(&[b"SET", key.as_bytes(), value.as_bytes()]);
    }
    let api = FakeKubeApi::start();
    s3_bucket_secret(&api, "cnvrg", s3, &bucket);
    api.add_secret("cnvrg", "redis-creds", &[("REDIS_URL", &redis.url())]);
    let keys = Keys::generate();
    let recipients_only = [("recipients", keys.public.as_str())];
    let with_identity = [
        ("recipients", keys.public.as_str()),
        ("identity", keys.secret.as_str()),
    ];
    api.add_secret("cnvrg", "backup-keys", &with_identity);
    let keys_ref = [(ENCRYPTION_REF, "backup-keys")];
    annotated_with(
        &api,
        "cnvrg",
        "redis-storage",
        "redis",
        "redis-creds",
        "1h",
        &keys_ref,
    );

    // A daemon of its own: no recipients, no identity.
    let mut options = crate::support::options(Mode::AllInOne);
    options.cluster = "dev-eu".into();
    let d = discovery(&api, "cnvrg").await;
    let daemon = Daemon::start(options, crate::support::memory_store(), Arc::new(d))
        .await
        .unwrap();
    let addr = daemon.api_addr().unwrap();
    let store = Store::from_url(&s3.s3_url_with_credentials(&bucket))
        .unwrap()
        .with_prefix("cnvrg-smart-backups")
        .unwrap();
    let catalog = Catalog::new(store.clone());

    // 1. The periodic backup is encrypted to the Secret's recipient.
    let sf = statefiles_when(&catalog, "the first periodic backup", |s| {
        s.iter().any(|s| s.status == Status::Finished)
    })
    .await
    .remove(0);
    let id = sf.backup_id.to_string();
    assert!(!sf.artifacts.is_empty());
    for a in &sf.artifacts {
        let enc = a.encryption.as_ref().expect("encrypted");
        assert_eq!(
            (enc.format.as_str(), enc.recipients.clone()),
            ("age", vec![keys.public.clone()]),
            "{}",
            a.name
        );
    }
    let mut sealed = 0;
    for o in store.list("").await.unwrap() {
        let bytes = store.get(&o.key).await.unwrap().bytes;
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "the marker is readable in {}",
            o.key
        );
        assert!(
            !bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
            "{} is plain zstd",
            o.key
        );
        if o.key.ends_with(".age") {
            assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{}", o.key);
            sealed += 1;
        }
        keys.assert_not_in(&String::from_utf8_lossy(&bytes));
    }
    assert_eq!(sealed, sf.artifacts.len());

    // 2. Restores through the API read the Secret when they start: without
    //    its identity the restore fails before Redis is touched; with it,
    //    the data comes back.
    redis.cmd(&[b"FLUSHALL"]);
    let request_restore = || {
        let path = format!("/v1/backups/{id}/restores");
        tokio::task::spawn_blocking(move || {
            let token = Some(crate::support::TOKEN);
            crate::support::request(addr, "POST", &path, token, Some("{}"))
        })
    };
    let restores_ended = |n: usize| {
        let id = id.clone();
        move |s: &[Statefile]| {
            s.iter().any(|s| {
                s.backup_id.to_string() == id
                    && s.restores.len() == n
                    && s.restores.iter().all(|r| {
                        matches!(r.status, RestoreStatus::Finished | RestoreStatus::Failed)
                    })
            })
        }
    };
    let restores = |s: Vec<Statefile>| {
        s.into_iter()
            .find(|s| s.backup_id.to_string() == id)
            .unwrap()
            .restores
    };
    api.add_secret("cnvrg", "backup-keys", &recipients_only);
    let r = request_restore().await.unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let ended = statefiles_when(
        &catalog,
        "the restore without an identity",
        restores_ended(1),
    );
    let first = restores(ended.await).remove(0);
    assert_eq!(first.status, RestoreStatus::Failed);
    let error = first.error.unwrap_or_default();
    assert!(error.contains("no identity was given"), "{error}");
    assert_eq!(
        redis.cmd(&[b"DBSIZE"]).text(),
        "0",
        "the target was touched"
    );

    api.add_secret("cnvrg", "backup-keys", &with_identity);
    let r = request_restore().await.unwrap();
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let ended = statefiles_when(&catalog, "the restore with the identity", restores_ended(2));
    let restored = restores(ended.await);
    assert_eq!(restored[1].status, RestoreStatus::Finished, "{restored:#?}");
    assert_eq!(redis.cmd(&[b"DBSIZE"]).text(), "20");
    assert_eq!(
        redis.cmd(&[b"GET", b"item:7"]).text(),
        format!("{marker}-7")
    );

    let statefile = store
        .get(&format!("{id}/statefile.json"))
        .await
        .unwrap()
        .bytes;
    keys.assert_not_in(&String::from_utf8_lossy(&statefile));
    daemon.shutdown();
    daemon.wait().await.unwrap();
}
