//! https to Elasticsearch: osmem-server cannot serve TLS, so a
//! TLS-terminating proxy with a certificate from a throwaway CA sits in
//! front of it. The certificate is verified; `ca_cert` trusts the CA.

use capsule_core::Status;
use capsule_engines::{EsConnection, EsEngine, EsOptions};
use test_support::opensearch::OpenSearch;
use test_support::tls::{TestCa, TlsProxy};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_needs_the_ca_and_works_with_it() {
    let os = OpenSearch::start();
    let mut ndjson = String::new();
    for i in 0..50 {
        ndjson.push_str(&format!(
            "{{\"index\":{{\"_index\":\"tls-docs\",\"_id\":\"{i}\"}}}}\n{{\"n\":{i}}}\n"
        ));
    }
    os.bulk(&ndjson);
    let ca = TestCa::new("capsule test CA (es)");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(&dir.path().join("ca.pem"));
    let proxy = TlsProxy::start(os.port, &ca.server_cert());
    let fc = FileCatalog::new();

    // The system's roots do not know the CA: refused, saying so.
    let err = backup(&fc.catalog, &engine(&proxy.url(), "tls-*"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "the TLS certificate of {} is not trusted (signed by an unknown authority)",
            proxy.url()
        )) && err.contains("--es-ca-cert"),
        "{err}"
    );

    // With the CA: backup, delete, restore over https.
    let connection = EsConnection::from_url(&proxy.url())
        .unwrap()
        .with_ca_cert(&ca_file);
    let engine = EsEngine::new(
        EsOptions::new(connection)
            .with_indices("tls-*")
            .with_page_size(20),
    );
    let report = backup(&fc.catalog, &engine).await.unwrap();
    assert_eq!(report.statefile.status, Status::Finished);
    os.ok("DELETE", "/tls-docs", "");
    restore(&fc.catalog, &engine, report.statefile.backup_id.as_str())
        .await
        .unwrap();
    os.ok("POST", "/tls-docs/_refresh", "");
    assert_eq!(count(&os, "tls-docs"), 50);
}
