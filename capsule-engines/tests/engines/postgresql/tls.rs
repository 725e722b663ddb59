//! TLS to PostgreSQL as libpq's `sslmode`/`sslrootcert` say: a cluster
//! with `ssl=on` and a certificate signed by a throwaway CA.

use capsule_core::{JobContext, NoProgress, RestoreOptions, Status, run_restore};
use capsule_engines::{PgEngine, PgOptions};
use test_support::postgres::Postgres;
use test_support::tls::TestCa;

use super::support::*;

fn tls_pg() -> &'static Postgres {
    Postgres::shared_tls()
}

/// A database with a few rows on the TLS cluster.
fn tls_database(prefix: &str) -> String {
    let db = Postgres::unique_name(prefix);
    tls_pg().create_database(&db, None);
    tls_pg().psql(
        &db,
        "CREATE TABLE public.items (id int PRIMARY KEY, name text); \
         INSERT INTO public.items SELECT g, 'item ' || g FROM generate_series(1, 300) g;",
    );
    db
}

fn engine_for(url: &str) -> PgEngine {
    PgEngine::new(PgOptions::from_url(url).unwrap())
}

/// Lines of the server log for sessions of `application` on `db` that
/// used TLS (`log_connections=on`).
fn tls_sessions(db: &str, application: &str) -> usize {
    let log = std::fs::read_to_string(tls_pg().process().log_path()).unwrap();
    log.lines()
        .filter(|l| {
            l.contains(&format!(
                "database={db} application_name={application} SSL enabled"
            ))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_with_the_ca_backs_up_and_restores_over_tls() {
    let db = tls_database("tls_ok");
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{db}?sslmode=verify-full&sslrootcert={}",
        tls_pg().port,
        tls_pg().ca_file().display()
    );
    let engine = engine_for(&url);
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine).await.unwrap();
    assert_eq!(report.statefile.status, Status::Finished);
    let id = report.statefile.backup_id.to_string();
    tls_pg().psql(&db, "DELETE FROM public.items WHERE id > 100");
    let ctx = JobContext::new(&NoProgress);
    run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap();
    assert_eq!(
        tls_pg().psql(&db, "SELECT count(*) FROM public.items"),
        "300"
    );
    // capsule's own sessions and the tools all used TLS.
    assert!(
        tls_sessions(&db, "capsule") > 0,
        "no TLS session of capsule"
    );
    assert!(
        tls_sessions(&db, "pg_dump") > 0,
        "no TLS session of pg_dump"
    );
    // verify-ca also accepts it, and `localhost` is in the certificate too.
    let url = format!(
        "postgres://postgres@localhost:{}/{db}?sslmode=verify-ca&sslrootcert={}",
        tls_pg().port,
        tls_pg().ca_file().display()
    );
    backup(&fc.catalog, &engine_for(&url)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_without_the_ca_fails_clearly() {
    let db = tls_database("tls_no_ca");
    let base = format!(
        "postgres://postgres@127.0.0.1:{}/{db}?sslmode=verify-full",
        tls_pg().port
    );
    let fc = FileCatalog::new();
    // No CA file at all (unless ~/.postgresql/root.crt exists, as for libpq).
    let no_file = PgOptions::from_url(&base).unwrap();
    if no_file.connection.root_cert_file().is_none() {
        let err = backup(&fc.catalog, &PgEngine::new(no_file))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sslmode=verify-full needs the CA") && err.contains("sslrootcert=FILE"),
            "{err}"
        );
    }
    // Another CA than the server's.
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new("not the server's CA").write_pem(&dir.path().join("ca.pem"));
    let url = format!("{base}&sslrootcert={}", other.display());
    let err = backup(&fc.catalog, &engine_for(&url))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "the TLS certificate of postgresql 127.0.0.1:{} is not trusted (signed by an unknown authority)",
            tls_pg().port
        )) && err.contains("sslrootcert=FILE"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_fails_clearly_on_a_server_without_tls() {
    let db = small_database("tls_plain", 10);
    let url = format!("{}?sslmode=require", pg().url(&db));
    let fc = FileCatalog::new();
    let err = backup(&fc.catalog, &engine_for(&url))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "postgresql 127.0.0.1:{} does not accept TLS connections, and sslmode=require requires TLS",
            pg().port
        )),
        "{err}"
    );
    // The default (prefer) falls back to plain there.
    backup(&fc.catalog, &engine(&db)).await.unwrap();
}
