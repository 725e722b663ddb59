//! The API on a real router bound to 127.0.0.1:0.

use std::time::Duration;

use capsule_core::{Catalog, Status};
use capsule_daemon::Mode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_filters_creates_restores_and_deletes() {
    let _serial = crate::support::serial().await;
    let store = memory_store();
    let catalog = Catalog::new(store.clone());
    let finished = statefile("east", "cnvrg/pg", Status::Finished, 60);
    let failed = statefile("east", "cnvrg/pg", Status::Failed, 30);
    let west = statefile("west", "cnvrg/pg", Status::Finished, 10);
    seed(
        &catalog,
        vec![finished.clone(), failed.clone(), west.clone()],
    )
    .await;
    let daemon = start(options(Mode::Api), store).await;
    let addr = daemon.api_addr().unwrap();
    let (fid, wid) = (finished.backup_id.to_string(), west.backup_id.to_string());

    let r = tokio::task::spawn_blocking(move || {
        // Newest first, all of them.
        let all = request(addr, "GET", "/v1/backups", Some(TOKEN), None).json();
        let ids: Vec<&str> = all["backups"].as_array().unwrap().iter().map(|b| b["backupId"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0], wid);
        // Filters.
        let east = request(addr, "GET", "/v1/backups?cluster=east&status=finished", Some(TOKEN), None).json();
        assert_eq!(east["backups"].as_array().unwrap().len(), 1);
        assert_eq!(east["backups"][0]["backupId"], fid.as_str());
        assert_eq!(east["backups"][0]["sizeBytes"], 1060);
        assert_eq!(east["backups"][0]["durationMs"], 2000);
        let none = request(addr, "GET", "/v1/backups?serviceType=redis", Some(TOKEN), None).json();
        assert!(none["backups"].as_array().unwrap().is_empty());
        assert_eq!(request(addr, "GET", "/v1/backups?serviceType=pg", Some(TOKEN), None).status, 400);
        // One backup, fresh from the store.
        let one = request(addr, "GET", &format!("/v1/backups/{fid}"), Some(TOKEN), None).json();
        assert_eq!(one["status"], "finished");
        assert_eq!(one["service"]["cluster"], "east");
        // Clusters.
        let c = request(addr, "GET", "/v1/clusters", Some(TOKEN), None).json();
        let clusters = c["clusters"].as_array().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(clusters[0]["name"], "east");
        assert_eq!(clusters[0]["backups"], 2);
        assert_eq!(clusters[0]["services"][0]["lastGoodBackup"]["backupId"], fid.as_str());
        assert_eq!(clusters[0]["services"][0]["lastBackupStatus"], "failed");
        // Legacy.
        let legacy = request(addr, "GET", "/v1/pg/backups", Some(TOKEN), None).json();
        assert_eq!(legacy["backups"].as_array().unwrap().len(), 3);
        assert_eq!(legacy["backups"][0]["requestType"], "periodicbackuprequest");
        assert!(legacy["backups"][0].get("bucket").is_none());
        let redis = request(addr, "GET", "/v1/redis/backups", Some(TOKEN), None).json();
        assert!(redis["backups"].as_array().unwrap().is_empty());
        // Writes: request a backup, a restore, delete.
        let created = request(addr, "POST", "/v1/backups", Some(TOKEN), Some(r#"{"serviceType":"postgresql","service":"cnvrg/pg","description":"before upgrade"}"#));
        assert_eq!(created.status, 201);
        let created = created.json();
        assert_eq!(created["status"], "requested");
        assert_eq!(created["service"]["cluster"], "east", "defaults to the daemon's cluster");
        let restore = request(addr, "POST", &format!("/v1/backups/{fid}/restores"), Some(TOKEN), None);
        assert_eq!(restore.status, 202);
        assert_eq!(restore.json()["restores"][0]["status"], "requested");
        let not_finished = request(addr, "POST", &format!("/v1/backups/{}/restores", created["backupId"].as_str().unwrap()), Some(TOKEN), None);
        assert_eq!(not_finished.status, 409);
        let deleted = request(addr, "DELETE", &format!("/v1/backups/{wid}"), Some(TOKEN), None);
        assert_eq!(deleted.status, 200);
        assert_eq!(deleted.json()["objects"], 1);
        assert_eq!(request(addr, "GET", &format!("/v1/backups/{wid}"), Some(TOKEN), None).status, 404);
        // The list reflects the writes at once.
        let all = request(addr, "GET", "/v1/backups", Some(TOKEN), None).json();
        let all = all["backups"].as_array().unwrap();
        assert_eq!(all.len(), 3);
        assert!(all.iter().any(|b| b["description"] == "before upgrade"));
        // Bodies that are not requests.
        assert_eq!(request(addr, "POST", "/v1/backups", Some(TOKEN), Some("{")).status, 400);
        assert_eq!(request(addr, "POST", "/v1/backups", Some(TOKEN), Some(r#"{"serviceType":"postgresql","service":"a/b/c"}"#)).status, 422);
        assert_eq!(request(addr, "POST", "/v1/backups", Some(TOKEN), Some(r#"{"serviceType":"postgresql","cluster":null}"#)).status, 422);
        // Options the request cannot carry are refused, not dropped.
        let unknown = request(addr, "POST", "/v1/backups", Some(TOKEN), Some(r#"{"serviceType":"redis","foo":1}"#));
        assert_eq!(unknown.status, 422);
        assert!(String::from_utf8_lossy(&unknown.body).contains("foo"));
        let flush = request(addr, "POST", &format!("/v1/backups/{fid}/restores"), Some(TOKEN), Some(r#"{"flush":true}"#));
        assert_eq!(flush.status, 422);
        assert!(String::from_utf8_lossy(&flush.body).contains("takes no options (got flush)"));
        assert_eq!(request(addr, "POST", &format!("/v1/backups/{fid}/restores"), Some(TOKEN), Some("{}")).status, 202);
        assert_eq!(request(addr, "GET", "/v1/nope", Some(TOKEN), None).status, 404);
        // A known path with a method it does not take: 405 with a JSON error.
        let put = request(addr, "PUT", "/v1/backups", Some(TOKEN), Some("{}"));
        assert_eq!(put.status, 405);
        assert!(put.headers.to_ascii_lowercase().contains("allow:"), "{}", put.headers);
        assert!(put.json()["error"].as_str().unwrap().contains("PUT is not allowed"));
        // OpenAPI and dashboard are open.
        let doc = request(addr, "GET", "/openapi.json", None, None).json();
        assert_eq!(doc["openapi"], "3.0.3");
        let page = request(addr, "GET", "/", None, None);
        assert!(page.headers.contains("text/html"));
        assert!(String::from_utf8_lossy(&page.body).contains("capsule backups"));
    })
    .await;
    daemon.shutdown();
    daemon.wait().await.unwrap();
    r.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_checked_on_every_endpoint_but_health_and_documents() {
    let _serial = crate::support::serial().await;
    let daemon = start(options(Mode::AllInOne), memory_store()).await;
    let addr = daemon.api_addr().unwrap();
    let anon = start(options(Mode::Api).with_anonymous_read(true), memory_store()).await;
    let anon_addr = anon.api_addr().unwrap();
    let no_token = start(options(Mode::Api).with_api_token(None), memory_store()).await;
    let no_token_addr = no_token.api_addr().unwrap();
    tokio::task::spawn_blocking(move || {
        let id = "postgresql-AAAAAAAAAAAAAAAAAAAAAA";
        let reads = [
            "/v1/backups",
            "/v1/clusters",
            "/v1/pg/backups",
            "/v1/es/backups",
            "/metrics",
        ];
        for path in reads {
            assert_eq!(request(addr, "GET", path, None, None).status, 401, "{path}");
            assert_eq!(
                request(addr, "GET", path, Some("wrong"), None).status,
                401,
                "{path}"
            );
            assert_eq!(
                request(addr, "GET", path, Some(TOKEN), None).status,
                200,
                "{path}"
            );
            assert_eq!(
                request(anon_addr, "GET", path, None, None).status,
                200,
                "{path}"
            );
        }
        let writes = [
            ("POST", "/v1/backups".to_string()),
            ("POST", format!("/v1/backups/{id}/restores")),
            ("DELETE", format!("/v1/backups/{id}")),
        ];
        // Without a token configured, the legacy lists answer anyone, as
        // the legacy daemon's did; every other read is refused.
        for path in reads {
            let legacy = ["/v1/pg/backups", "/v1/es/backups"].contains(&path);
            assert_eq!(
                request(no_token_addr, "GET", path, None, None).status,
                if legacy { 200 } else { 401 },
                "{path}"
            );
        }
        for (m, path) in &writes {
            assert_eq!(
                request(addr, m, path, None, Some("{}")).status,
                401,
                "{m} {path}"
            );
            assert_eq!(
                request(anon_addr, m, path, None, Some("{}")).status,
                401,
                "{m} {path}"
            );
            assert_eq!(
                request(no_token_addr, m, path, Some("anything"), Some("{}")).status,
                401,
                "{m} {path}"
            );
        }
        assert_eq!(
            request(addr, "GET", &format!("/v1/backups/{id}"), Some(TOKEN), None).status,
            404
        );
        let r = request(addr, "GET", "/v1/backups", Some(&format!("{TOKEN}x")), None);
        assert_eq!(r.status, 401);
        assert!(
            r.headers
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer")
        );
        for path in ["/healthz", "/readyz", "/openapi.json", "/"] {
            assert_eq!(request(addr, "GET", path, None, None).status, 200, "{path}");
        }
    })
    .await
    .unwrap();
    for d in [daemon, anon, no_token] {
        d.shutdown();
        tokio::time::timeout(Duration::from_secs(10), d.wait())
            .await
            .unwrap()
            .unwrap();
    }
}
