//! Statefile tests: v1 round trip, legacy fixture, generated legacy files.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use proptest::prelude::*;

use super::*;
use crate::id::{BackupId, ServiceType};
use crate::period::Period;
use crate::status::{RestoreStatus, Status};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/legacy-v1alpha1/cnvrg-smart-backups"
);
pub(super) const SECRETS: [&str; 3] = [
    "AKIALEGACYEXAMPLE",
    "legacySecretKeyExample0123456789abcdef",
    "s3cr3tPgPass",
];

pub(super) fn fixture(id: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURE}/{id}/statefile.json")).unwrap()
}

#[test]
fn legacy_fixture_maps_into_the_model_without_secrets() {
    let sf = Statefile::from_slice(&fixture("postgresql-9nVJ8sGmQbXc3RkHzW2tLp")).unwrap();
    assert!(sf.is_legacy());
    assert_eq!(sf.statefile_version, STATEFILE_V1ALPHA1);
    assert_eq!(sf.service_type, ServiceType::Postgresql);
    assert_eq!(sf.status, Status::Finished);
    assert_eq!(sf.request_type, RequestType::Periodic);
    assert_eq!(
        sf.requested_at,
        Utc.with_ymd_and_hms(2021, 6, 10, 9, 15, 42).unwrap()
            + chrono::Duration::nanoseconds(532_817_263)
    );
    assert_eq!(sf.service.namespace.as_deref(), Some("cnvrg"));
    assert_eq!(sf.service.name.as_deref(), Some("pg-storage"));
    assert_eq!(sf.service.database.as_deref(), Some("cnvrg_production"));
    let schedule = sf.schedule.as_ref().unwrap();
    assert_eq!(schedule.period, "24h".parse::<Period>().unwrap());
    assert_eq!(schedule.rotation, 5);
    assert_eq!(sf.artifacts.len(), 1);
    assert_eq!(sf.artifacts[0].name, "Hq4mTzR7xKd2VwPbN8cYsE-pgdump.tar");
    assert_eq!(sf.artifacts[0].format, legacy::LEGACY_DUMP_FORMAT);
    assert_eq!(sf.artifacts[0].sha256, None);
    assert_eq!(sf.restores.len(), 1);
    assert_eq!(sf.restores[0].status, RestoreStatus::Finished);

    let shown = format!("{:?}\n{}", sf, sf.to_display_json());
    for s in SECRETS {
        assert!(!shown.contains(s), "secret {s} leaked: {shown}");
    }
    // Never rewritten into v1 implicitly.
    assert!(sf.to_vec().is_err());
}

#[test]
fn legacy_offsets_statuses_and_descriptions() {
    let failed = Statefile::from_slice(&fixture("postgresql-4GfT7uYpWq2ZsLmK9bXcRv")).unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert!(
        failed.artifacts.is_empty(),
        "a failed legacy backup has no usable dump"
    );
    let expected: DateTime<Utc> = DateTime::parse_from_rfc3339("2021-06-11T06:15:44.000000001Z")
        .unwrap()
        .into();
    assert_eq!(failed.requested_at, expected);

    let manual = Statefile::from_slice(&fixture("postgresql-Ts6Yh2KqPw9LmZc4NbXvRe")).unwrap();
    assert_eq!(manual.status, Status::Requested);
    assert_eq!(manual.request_type, RequestType::Manual);
    assert_eq!(manual.description, "before upgrade to 3.9");
    assert_eq!(manual.legacy.as_ref().unwrap().status, "initialized");
    assert!(manual.schedule.is_none());
}

#[test]
fn legacy_restore_request_keeps_the_legacy_shape() {
    let raw = fixture("postgresql-9nVJ8sGmQbXc3RkHzW2tLp");
    let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let patched = legacy::append_restore_request(&raw, at).unwrap();
    let before: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let after: serde_json::Value = serde_json::from_slice(&patched).unwrap();
    assert_eq!(after["statefileVersion"], "v1alpha1");
    assert_eq!(after["restores"].as_array().unwrap().len(), 2);
    assert_eq!(after["restores"][1]["status"], "restorerequest");
    let mut trimmed = after.clone();
    trimmed["restores"].as_array_mut().unwrap().pop();
    assert_eq!(trimmed, before, "nothing else changes");
    let sf = Statefile::from_slice(&patched).unwrap();
    assert_eq!(sf.restores[1].status, RestoreStatus::Requested);
    assert_eq!(sf.restores[1].requested_at, at);
}

#[test]
fn legacy_restore_outcome_claims_the_request_or_appends() {
    let raw = fixture("postgresql-9nVJ8sGmQbXc3RkHzW2tLp");
    let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let later = Utc.with_ymd_and_hms(2026, 1, 2, 3, 9, 0).unwrap();
    let queued = legacy::append_restore_request(&raw, at).unwrap();
    // The queued request gets its outcome in place.
    let claimed = legacy::record_restore(&queued, Some(at), later, "finished").unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&claimed).unwrap();
    assert_eq!(doc["restores"].as_array().unwrap().len(), 2);
    assert_eq!(doc["restores"][1]["status"], "finished");
    assert_eq!(doc["statefileVersion"], "v1alpha1");
    // Without a matching request, an entry is appended.
    let appended = legacy::record_restore(&raw, None, later, "failed").unwrap();
    let sf = Statefile::from_slice(&appended).unwrap();
    assert_eq!(sf.restores.len(), 2);
    assert_eq!(sf.restores[1].status, RestoreStatus::Failed);
    assert_eq!(sf.restores[1].requested_at, later);
}

#[test]
fn bad_statefiles_are_named() {
    let cases: [(&[u8], &str); 5] = [
        (b"not json", "not a JSON statefile"),
        (
            br#"{"statefileVersion":"v9"}"#,
            "unsupported statefile version \"v9\"",
        ),
        (
            br#"{"statefileVersion":"v1","backupId":"x"}"#,
            "invalid v1 statefile",
        ),
        (
            br#"{"backupId":"postgresql-abc","date":"yesterday","status":"finished"}"#,
            "invalid date",
        ),
        (
            br#"{"backupId":"postgresql-abc","date":"2021-06-10T09:15:42Z","status":"weird"}"#,
            "unknown status",
        ),
    ];
    for (input, expect) in cases {
        let err = Statefile::from_slice(input).unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
    }
    // An id whose engine contradicts serviceType (a hand-written request).
    let sf = sample_full();
    let mut doc: serde_json::Value = serde_json::from_slice(&sf.to_vec().unwrap()).unwrap();
    let other = if sf.service_type == ServiceType::Redis {
        "postgresql"
    } else {
        "redis"
    };
    doc["serviceType"] = other.into();
    let err = Statefile::from_slice(&serde_json::to_vec(&doc).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("backupId {} names a", sf.backup_id))
            && err.contains(&format!("serviceType is {other}")),
        "{err}"
    );
}

#[test]
fn v1_keeps_unknown_fields() {
    let mut sf = Statefile::new(
        BackupId::generate(ServiceType::Redis),
        RequestType::Manual,
        Utc::now(),
    );
    sf.extra
        .insert("futureField".into(), serde_json::json!({"a": 1}));
    let bytes = sf.to_vec().unwrap();
    let back = Statefile::from_slice(&bytes).unwrap();
    assert_eq!(back.extra["futureField"]["a"], 1);
    assert_eq!(back, sf);
}

#[test]
fn schema_documents_every_field() {
    // Every key capsule writes is described in docs/statefile.schema.json.
    let schema: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/statefile.schema.json"
    )))
    .unwrap();
    let sf = sample_full();
    let value = serde_json::to_value(&sf).unwrap();
    check_keys(&value, &schema, &schema, "$");
}

fn resolve<'a>(node: &'a serde_json::Value, root: &'a serde_json::Value) -> &'a serde_json::Value {
    match node.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => {
            let name = r.trim_start_matches("#/$defs/");
            &root["$defs"][name]
        }
        None => node,
    }
}

fn check_keys(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    root: &serde_json::Value,
    path: &str,
) {
    let schema = resolve(schema, root);
    match value {
        serde_json::Value::Object(map) => {
            let props = &schema["properties"];
            let open = schema
                .get("additionalProperties")
                .map(|a| a != false)
                .unwrap_or(true);
            for (k, v) in map {
                match props.get(k) {
                    Some(s) => check_keys(v, s, root, &format!("{path}.{k}")),
                    None => assert!(
                        open && props.is_null() || schema["additionalProperties"].is_object(),
                        "{path}.{k} is not in the schema"
                    ),
                }
            }
            if let Some(req) = schema["required"].as_array() {
                for r in req {
                    assert!(
                        map.contains_key(r.as_str().unwrap()),
                        "{path}: required {r} missing"
                    );
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_keys(v, &schema["items"], root, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

fn sample_full() -> Statefile {
    let now = Utc::now();
    let mut sf = Statefile::new(
        BackupId::generate(ServiceType::Postgresql),
        RequestType::Periodic,
        now,
    );
    sf.service = ServiceIdentity {
        cluster: Some("dev-eu".into()),
        namespace: Some("cnvrg".into()),
        name: Some("pg-storage".into()),
        endpoint: Some("pg.cnvrg:5432".into()),
        database: Some("app".into()),
    };
    sf.status = Status::Finished;
    sf.started_at = Some(now);
    sf.finished_at = Some(now);
    sf.description = "nightly".into();
    sf.schedule = Some(Schedule::new("24h".parse().unwrap(), 5));
    let mut a = Artifact::new("dump.pgc.zst", "pg_dump-custom");
    a.compression = Compression::Zstd;
    a.size_bytes = Some(10);
    a.raw_size_bytes = Some(20);
    a.sha256 = Some("00".repeat(32));
    a.tool_version = Some("pg_dump (PostgreSQL) 15.18".into());
    sf.artifacts.push(a);
    let mut fp = Fingerprint::default();
    fp.counts.insert("public.users".into(), 500);
    fp.values.insert("public.users_id_seq".into(), "500".into());
    let mut info = EngineInfo {
        server_version: Some("PostgreSQL 15.18".into()),
        database: Some("app".into()),
        fingerprint: Some(fp),
        ..Default::default()
    };
    info.details
        .insert("snapshot".into(), "00000003-0000001B-1".into());
    sf.engine = Some(info);
    sf.owner = Some(Owner::this_process(Some("dev-eu".into()), now));
    let mut r = Restore::requested(now);
    r.status = RestoreStatus::Finished;
    r.started_at = Some(now);
    r.finished_at = Some(now);
    r.target = Some("127.0.0.1:5432/app".into());
    r.mode = Some("safe-swap".into());
    r.owner = Some("host/1/abc".into());
    sf.restores.push(r);
    sf.verifications.push(Verification {
        at: now,
        status: VerificationStatus::Failed,
        target: Some("127.0.0.1:5432/capsule_verify".into()),
        mismatches: vec!["public.users: expected 500, found 499".into()],
        duration_ms: Some(1200),
        error: None,
    });
    sf.error = Some("boom".into());
    sf
}

// ---------- generators ----------

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-zA-Z0-9 _./:-]{1,24}", "\\PC{0,12}"]
}

fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(|(s, ns)| Utc.timestamp_opt(s, ns).unwrap())
}

fn arb_status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Requested),
        Just(Status::Running),
        Just(Status::Finished),
        Just(Status::Failed),
        Just(Status::Deleting)
    ]
}

fn arb_service_type() -> impl Strategy<Value = ServiceType> {
    prop_oneof![
        Just(ServiceType::Postgresql),
        Just(ServiceType::Redis),
        Just(ServiceType::Elasticsearch)
    ]
}

fn arb_artifact() -> impl Strategy<Value = Artifact> {
    (
        "[a-z0-9._-]{1,20}",
        "[a-z_-]{1,16}",
        proptest::option::of(any::<u64>()),
        proptest::option::of("[0-9a-f]{64}"),
        any::<bool>(),
        proptest::option::of(arb_text()),
    )
        .prop_map(|(name, format, size, sha, zstd, tool)| {
            let mut a = Artifact::new(name, format);
            a.size_bytes = size;
            a.sha256 = sha;
            a.compression = if zstd {
                Compression::Zstd
            } else {
                Compression::None
            };
            a.raw_size_bytes = size.map(|s| s / 2);
            a.tool_version = tool;
            a
        })
}

prop_compose! {
    pub(super) fn arb_statefile()(
        t in arb_service_type(),
        periodic in any::<bool>(),
        status in arb_status(),
        requested in arb_time(),
        started in proptest::option::of(arb_time()),
        description in arb_text(),
        cluster in proptest::option::of("[a-z0-9-]{1,12}"),
        name in proptest::option::of("[a-z0-9-]{1,12}"),
        period_secs in 1u64..1_000_000,
        rotation in 0u32..100,
        artifacts in proptest::collection::vec(arb_artifact(), 0..4),
        counts in proptest::collection::btree_map("[a-z_.]{1,12}", any::<u64>(), 0..5),
        restores in proptest::collection::vec((arb_time(), 0usize..4, proptest::option::of(arb_text())), 0..3),
        error in proptest::option::of(arb_text()),
    ) -> Statefile {
        let mut sf = Statefile::new(BackupId::generate(t), if periodic { RequestType::Periodic } else { RequestType::Manual }, requested);
        sf.status = status;
        sf.started_at = started;
        sf.description = description;
        sf.service.cluster = cluster;
        sf.service.name = name;
        if periodic {
            sf.schedule = Some(Schedule::new(Period::new(std::time::Duration::from_secs(period_secs)).unwrap(), rotation));
        }
        sf.artifacts = artifacts;
        if !counts.is_empty() {
            sf.engine = Some(EngineInfo { fingerprint: Some(Fingerprint { counts, values: Default::default() }), ..Default::default() });
        }
        for (at, s, err) in restores {
            let mut r = Restore::requested(at);
            r.status = [RestoreStatus::Requested, RestoreStatus::Running, RestoreStatus::Finished, RestoreStatus::Failed][s];
            r.error = err;
            sf.restores.push(r);
        }
        sf.error = error;
        sf
    }
}

/// A legacy statefile as the Go tool wrote it, with optional keys dropped
/// and dates in any offset with 0–9 fractional digits.
pub(super) fn arb_legacy() -> impl Strategy<Value = (serde_json::Value, DateTime<Utc>, &'static str)>
{
    (
        arb_time(),
        0usize..10,
        -14 * 60i32..=14 * 60,
        prop_oneof![
            Just("initialized"),
            Just("dumpingdb"),
            Just("uploadingdb"),
            Just("failed"),
            Just("finished")
        ],
        any::<[bool; 6]>(),
        "[A-Za-z0-9]{22}",
    )
        .prop_map(|(t, digits, offset_min, status, drop, random)| {
            let t = Utc.timestamp_opt(t.timestamp(), t.timestamp_subsec_nanos() / 10u32.pow(9 - digits as u32) * 10u32.pow(9 - digits as u32)).unwrap();
            let offset = FixedOffset::east_opt(offset_min * 60).unwrap();
            let local = t.with_timezone(&offset);
            let frac = if digits == 0 { String::new() } else { format!(".{:09}", t.timestamp_subsec_nanos())[..digits + 1].to_string() };
            let tz = if offset_min == 0 { "Z".to_string() } else { local.format("%:z").to_string() };
            let date = format!("{}{}{}", local.format("%Y-%m-%dT%H:%M:%S"), frac, tz);
            let mut v = serde_json::json!({
                "backupId": format!("postgresql-{random}"),
                "requestType": "periodicbackuprequest",
                "rotation": 5,
                "date": date,
                "period": 86400,
                "bucketType": "minio",
                "bucket": {"accessKey": SECRETS[0], "secretKey": SECRETS[1]},
                "serviceType": "postgresql",
                "service": {"name": "cnvrg/pg-storage", "creds": {"host": "pg", "db": "db", "user": "u", "pass": SECRETS[2]},
                            "backupCmd": [format!("--dbname=postgresql://u:{}@pg/db", SECRETS[2])], "dumpfile": "x-pgdump.tar"},
                "restores": [{"date": date, "status": "finished"}],
                "status": status,
                "description": "",
                "statefileVersion": "v1alpha1"
            });
            let obj = v.as_object_mut().unwrap();
            for (flag, key) in drop.iter().zip(["rotation", "period", "bucketType", "restores", "description", "requestType"]) {
                if *flag { obj.remove(key); }
            }
            (v, t, status)
        })
}

proptest! {
    #[test]
    fn v1_round_trips(sf in arb_statefile()) {
        let bytes = sf.to_vec().unwrap();
        let back = Statefile::from_slice(&bytes).unwrap();
        prop_assert_eq!(back, sf);
    }

    #[test]
    fn legacy_parses_generated_files((doc, date, status) in arb_legacy()) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let sf = Statefile::from_slice(&bytes).unwrap();
        prop_assert_eq!(sf.requested_at, date);
        prop_assert_eq!(sf.legacy.as_ref().unwrap().status.as_str(), status);
        prop_assert_eq!(sf.artifacts.len(), usize::from(status == "finished"));
        let shown = format!("{:?}{}", sf, sf.to_display_json());
        for s in SECRETS { prop_assert!(!shown.contains(s)); }
    }
}
