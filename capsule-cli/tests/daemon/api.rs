//! The API from outside: auth, configuration errors, unserved requests,
//! fuzzing against the OpenAPI document (schemathesis) and the dashboard
//! in headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use capsule_core::{
    Artifact, BackupId, Catalog, LeaseHolder, Leases, RequestType, ServiceIdentity, ServiceType,
    Statefile, Status,
};
use capsule_store::Store;
use chrono::Utc;
use serde_json::json;
use test_support::process::{SETUP_SCRIPT, http_request};

use crate::support::*;

/// Writes finished (and one failed) backups of two clusters into a `file://` store.
fn seed(dir: &Path) -> Vec<String> {
    let catalog = Catalog::new(
        Store::from_url(&file_store(dir))
            .unwrap()
            .with_prefix("cnvrg-smart-backups")
            .unwrap(),
    );
    let mut ids = Vec::new();
    for (i, (cluster, status)) in [
        ("east", Status::Finished),
        ("east", Status::Failed),
        ("west", Status::Finished),
    ]
    .into_iter()
    .enumerate()
    {
        let now = Utc::now() - chrono::Duration::minutes(10 * i as i64);
        let mut sf = Statefile::new(
            BackupId::generate(ServiceType::Postgresql),
            RequestType::Periodic,
            now,
        );
        sf.status = status;
        sf.service = ServiceIdentity {
            cluster: Some(cluster.into()),
            namespace: Some("cnvrg".into()),
            name: Some("pg-storage".into()),
            ..Default::default()
        };
        sf.started_at = Some(now);
        sf.finished_at = Some(now + chrono::Duration::seconds(3));
        let mut a = Artifact::new("dump.pgc.zst", "pg_dump-custom");
        a.size_bytes = Some(4096);
        sf.artifacts.push(a);
        if status == Status::Failed {
            sf.error = Some("pg_dump: connection refused".into());
        }
        block_on(catalog.create(&sf)).unwrap();
        ids.push(sf.backup_id.to_string());
    }
    ids
}

#[test]
fn tokens_guard_reads_and_writes_and_never_reach_the_log() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let mut d = Spec::new("auth", &file_store(dir.path()), "east")
        .env("RUST_LOG", "trace")
        .start();
    let p = d.port;
    let get = |path: &str, auth: Option<&str>| {
        let h = auth.map(|a| format!("Bearer {a}"));
        let headers: Vec<(&str, &str)> = h.iter().map(|v| ("Authorization", v.as_str())).collect();
        http_request(p, "GET", path, &headers, b"").unwrap()
    };
    assert_eq!(get("/v1/backups", None).status, 401);
    let wrong = get("/v1/backups", Some("nope"));
    assert_eq!(wrong.status, 401);
    assert!(
        wrong
            .headers
            .iter()
            .any(|(k, v)| k == "www-authenticate" && v.starts_with("Bearer"))
    );
    assert_eq!(get("/v1/backups", Some(TOKEN)).status, 200);
    assert_eq!(get("/metrics", None).status, 401);
    assert_eq!(get("/healthz", None).status, 200);
    assert_eq!(get("/readyz", None).status, 200);
    assert_eq!(get("/openapi.json", None).status, 200);
    let post = http_request(
        p,
        "POST",
        "/v1/backups",
        &[("Content-Type", "application/json")],
        br#"{"serviceType":"redis"}"#,
    )
    .unwrap();
    assert_eq!(post.status, 401);
    let post = d.post(
        "/v1/backups",
        &json!({"serviceType": "redis", "service": "ns/r"}),
    );
    assert_eq!(post.status, 201, "{}", post.body);
    let bad = d.post("/v1/backups", &json!({"serviceType": "mysql"}));
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(d.get("/v1/backups?status=bogus").status, 400);
    assert_eq!(d.get("/v1/backups/not-an-id").status, 404);
    assert_eq!(
        d.get("/v1/backups/postgresql-AAAAAAAAAAAAAAAAAAAAAA")
            .status,
        404
    );
    let text = d.get("/metrics");
    assert!(
        text.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4"))
    );
    d.terminate(Duration::from_secs(20));
    let log = d.log();
    assert!(
        log.contains("\"level\":\"TRACE\"") || log.contains("\"level\":\"DEBUG\""),
        "trace logging on"
    );
    assert!(!log.contains(TOKEN), "the token reached the log");

    // Anonymous reads: reads pass, writes still need the token.
    let mut d = Spec::new("anon", &file_store(dir.path()), "east")
        .arg("--api-anonymous-read")
        .start();
    assert_eq!(
        http_request(d.port, "GET", "/v1/backups", &[], b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        http_request(d.port, "GET", "/v1/clusters", &[], b"")
            .unwrap()
            .status,
        200
    );
    let w = http_request(
        d.port,
        "DELETE",
        "/v1/backups/postgresql-AAAAAAAAAAAAAAAAAAAAAA",
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(w.status, 401);
    d.terminate(Duration::from_secs(20));
}

#[test]
fn a_bad_config_file_is_an_error_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("capsule.toml");
    std::fs::write(
        &cfg,
        "cluster = \"c1\"\n[[service]]\nname = \"ns/pg\"\ntype = \"postgresql\"\nurl_env = \"NO_SUCH_VAR_X\"\n",
    )
    .unwrap();
    let out = Command::new(CAPSULE)
        .args([
            "--store",
            &file_store(dir.path()),
            "start",
            "--api-bind-addr",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&cfg)
        .env_remove("NO_SUCH_VAR_X")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "config file {}, line 5, field service[0].url_env",
            cfg.display()
        )),
        "{err}"
    );
    assert!(err.contains("NO_SUCH_VAR_X is not set"), "{err}");
    std::fs::write(
        &cfg,
        "[[service]]\nname = \"ns/pg\"\ntype = \"mongo\"\nurl = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(CAPSULE)
        .args([
            "--store",
            &file_store(dir.path()),
            "start",
            "--api-bind-addr",
            "127.0.0.1:0",
        ])
        .env("CNVRG_CAPSULE_CONFIG", &cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("line 3, field service[0].type: unknown service type \"mongo\""),
        "{err}"
    );
}

/// A request for a service nobody serves stays `requested`, with a reason;
/// one for a service whose lease a capsule holds (busy serving it) gets
/// none.
#[test]
fn a_request_nobody_serves_gets_a_reason_after_the_timeout() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(dir.path());
    // Another capsule serves busy/db and is at work on it.
    let leases = Leases::new(
        Store::from_url(&store)
            .unwrap()
            .with_prefix("cnvrg-smart-backups")
            .unwrap(),
        LeaseHolder::new("elsewhere/1", "elsewhere", Some("east".into())),
        Duration::from_secs(120),
    );
    let held = block_on(leases.acquire("service.east.postgresql.busy/db", Utc::now())).unwrap();
    assert!(held.into_lease().is_some());
    let d = Spec::new("unserved", &store, "east")
        .arg("--request-timeout")
        .arg("1s")
        .start();
    let post = |service: &str| {
        let r = d.post(
            "/v1/backups",
            &json!({"serviceType": "postgresql", "service": service}),
        );
        assert_eq!(r.status, 201);
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["backupId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let busy = post("busy/db");
    let id = post("other/db");
    wait_until(
        Duration::from_secs(15),
        "the waiting note",
        || {
            let sf = d.get_json(&format!("/v1/backups/{id}"));
            sf["status"] == "requested"
                && sf["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("waiting: no capsule serving"))
        },
        || d.log_tail(30),
    );
    // Both were past the timeout in the scan that noted the other.
    let sf = d.get_json(&format!("/v1/backups/{busy}"));
    assert_eq!(sf["status"], "requested", "{sf:#}");
    assert!(sf.get("error").is_none_or(|e| e.is_null()), "{sf:#}");
}

fn tool(name: &str) -> Option<PathBuf> {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(scripts)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// schemathesis fuzzes a live daemon against its own `/openapi.json`:
/// zero server errors, and every response conforms to the document.
#[test]
fn the_api_conforms_to_its_openapi_document_under_schemathesis() {
    let Some(st) = tool("schemathesis") else {
        panic!(
            "schemathesis is not installed: this test cannot run. Install the test dependencies with {SETUP_SCRIPT} (pip schemathesis)"
        );
    };
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let mut d = Spec::new("fuzz", &file_store(dir.path()), "east").start();
    // schemathesis keeps a cache in its working directory: not in the repository.
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(st)
        .current_dir(work.path())
        .args(["run", &format!("http://127.0.0.1:{}/openapi.json", d.port)])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "all",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "-w",
            "2",
            "--no-color",
        ])
        .output()
        .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: String = {
        let chars: Vec<char> = report.chars().collect();
        chars[chars.len().saturating_sub(6000)..].iter().collect()
    };
    assert!(
        out.status.success(),
        "schemathesis failed:\n{tail}\n{}",
        d.log_tail(40)
    );
    assert!(report.contains("passed"), "{report}");
    assert!(d.running(), "the daemon survived the fuzzing");
    d.terminate(Duration::from_secs(20));
}

/// The dashboard, rendered by headless Chromium, shows the backups the API lists.
#[test]
fn the_dashboard_shows_what_the_api_lists() {
    let chromium = tool("chromium").unwrap_or_else(|| {
        panic!("chromium is not installed: this test cannot run. Install the test dependencies with {SETUP_SCRIPT} (apt chromium)")
    });
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path());
    let mut d = Spec::new("dash", &file_store(dir.path()), "east")
        .arg("--mode")
        .arg("api")
        .arg("--api-anonymous-read")
        .start();
    let listed = d.get_json("/v1/backups");
    let ids: Vec<String> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backupId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let profile = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Lets the page's fetches complete before the DOM is dumped.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("http://127.0.0.1:{}/", d.port))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in &ids {
        assert!(
            dom.contains(&format!("data-backup-id=\"{id}\"")),
            "{id} missing from the DOM:\n{dom}"
        );
    }
    for text in [
        "cluster east",
        "cluster west",
        "finished",
        "failed",
        "4.0 KiB",
    ] {
        assert!(dom.contains(text), "{text:?} missing from the DOM:\n{dom}");
    }
    eprintln!("chromium rendered the dashboard in {:?}", started.elapsed());
    d.terminate(Duration::from_secs(20));
}
