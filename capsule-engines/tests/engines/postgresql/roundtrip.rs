//! Round trips: backup, then restore in each mode; contents, large
//! objects, roles and owners come back exactly.

use capsule_core::{
    ArtifactRole, JobContext, NoProgress, RestoreOptions, RestoreStatus, Status, run_restore,
};
use capsule_engines::PgRestoreMode;
use test_support::postgres::Postgres;

use super::support::*;

/// A database with schemas, views, a materialized view, sequences, large
/// objects, bytea, non-ASCII text and several roles as owners.
fn rich_database(owner_a: &str, owner_b: &str) -> String {
    let db = Postgres::unique_name("rt");
    pg().psql(
        "postgres",
        &format!(
            "CREATE ROLE {owner_a}; CREATE ROLE {owner_b} LOGIN; GRANT {owner_a} TO {owner_b};"
        ),
    );
    pg().create_database(&db, Some(owner_a));
    pg().psql(
        &db,
        &format!(
            r#"
CREATE SCHEMA app AUTHORIZATION {owner_b};
CREATE SCHEMA "Mixed Case";
CREATE TABLE public.items (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2),
  data bytea, created timestamptz NOT NULL DEFAULT '2024-01-02 03:04:05+00');
ALTER TABLE public.items OWNER TO {owner_a};
INSERT INTO public.items (name, price, data)
  SELECT 'item ' || g || ' ünïcödé 日本語 🎉', g * 1.5, decode(md5(g::text) || md5((g+1)::text), 'hex')
  FROM generate_series(1, 1000) g;
CREATE TABLE app.events (id bigserial PRIMARY KEY, item_id int REFERENCES public.items(id),
  payload jsonb, note text);
ALTER TABLE app.events OWNER TO {owner_b};
INSERT INTO app.events (item_id, payload, note)
  SELECT (g % 1000) + 1, jsonb_build_object('g', g, 'k', 'välue ✓'), repeat('x', g % 50)
  FROM generate_series(1, 5000) g;
CREATE VIEW app.item_totals AS SELECT item_id, count(*) AS n FROM app.events GROUP BY item_id;
ALTER VIEW app.item_totals OWNER TO {owner_b};
CREATE MATERIALIZED VIEW app.item_stats AS SELECT item_id, count(*) AS n FROM app.events GROUP BY item_id;
CREATE SEQUENCE app.counter START 100;
SELECT nextval('app.counter'), nextval('app.counter'), nextval('app.counter');
CREATE TABLE "Mixed Case"."Tåble ""q""" (k text PRIMARY KEY, v bytea);
INSERT INTO "Mixed Case"."Tåble ""q""" VALUES ('ключ', '\x00ff10'), ('κλειδί', NULL),
  (E'multi\nline\r\n\ttab \\ backslash', '\x0a0a0d');
SELECT lo_from_bytea(0, convert_to('large object ' || g || ' ✓', 'UTF8')) FROM generate_series(1, 3) g;
GRANT SELECT ON app.events TO {owner_a};
"#
        ),
    );
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_restore_round_trip_with_roles_swap_and_history() {
    let owner_a = Postgres::unique_name("rt_owner_a");
    let owner_b = Postgres::unique_name("rt_owner_b");
    let db = rich_database(&owner_a, &owner_b);
    let original = content_checksums(&db);
    assert_eq!(original["public.items"].split(':').next(), Some("1000"));

    let fc = FileCatalog::new();
    let engine = engine(&db);
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let sf = &report.statefile;
    let id = sf.backup_id.to_string();
    assert_eq!(sf.status, Status::Finished);
    let names: Vec<&str> = sf.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["roles.sql.zst", "dump.pgc.zst"]);
    assert_eq!(sf.artifacts[0].role, ArtifactRole::Roles);
    assert_eq!(sf.artifacts[1].format, "pg_dump-custom");
    assert!(sf.artifacts.iter().all(|a| a.sha256.is_some()));
    let info = sf.engine.as_ref().unwrap();
    assert!(
        info.server_version
            .as_deref()
            .unwrap()
            .starts_with("PostgreSQL ")
    );
    assert_eq!(info.database.as_deref(), Some(db.as_str()));
    assert!(info.details["snapshot"].as_str().unwrap().contains('-'));
    let fp = info.fingerprint.as_ref().unwrap();
    assert_eq!(fp.counts["public.items"], 1000);
    assert_eq!(fp.counts["app.events"], 5000);
    assert_eq!(fp.counts["app.item_stats"], 1000);
    assert_eq!(fp.counts["Mixed Case.Tåble \"q\""], 3);
    // Tables are counted in the dump stream; only the materialized view
    // (whose data pg_dump does not dump) with SQL.
    assert_eq!(info.details["tablesCountedInDump"], 3, "{:?}", info.details);
    assert_eq!(
        info.details["tablesCountedWithSql"], 1,
        "{:?}",
        info.details
    );
    assert_eq!(fp.counts["pg_catalog.pg_largeobject_metadata"], 3);
    assert_eq!(fp.values["app.counter"], "102");
    assert_eq!(fp.values["public.items_id_seq"], "1000");
    assert_eq!(sf.service.database.as_deref(), Some(db.as_str()));
    let statefile_text = std::fs::read_to_string(fc.object_path(&id, "statefile.json")).unwrap();
    assert!(!statefile_text.contains("postgres://"), "{statefile_text}");

    // 1. Restore into a server that lost the database and one owner role.
    pg().psql("postgres", &format!("DROP DATABASE \"{db}\""));
    pg().psql("postgres", &format!("DROP ROLE {owner_b}"));
    let progress = NoProgress;
    let ctx = JobContext::new(&progress);
    let r = run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap();
    assert_eq!(r.outcome.mode, "safe-swap");
    assert_eq!(content_checksums(&db), original);
    assert_eq!(
        pg().psql(
            &db,
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'app' AND tablename = 'events'"
        ),
        owner_b
    );
    assert_eq!(
        pg().psql(
            "postgres",
            &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'")
        ),
        owner_a
    );
    assert_eq!(
        pg().psql(
            "postgres",
            &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{owner_b}'")
        ),
        "t",
        "the role came back with its attributes"
    );
    assert_eq!(
        pg().psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_auth_members WHERE roleid = '{owner_a}'::regrole AND member = '{owner_b}'::regrole")
        ),
        "1",
        "the membership came back"
    );
    assert_eq!(pg().psql(&db, "SELECT last_value FROM app.counter"), "102");

    // 2. Restore over a live database that changed: swap, previous kept.
    pg().psql(
        &db,
        "INSERT INTO public.items (name) VALUES ('added after the backup')",
    );
    // An existing role is never altered: the dump says NOLOGIN.
    pg().psql("postgres", &format!("ALTER ROLE {owner_a} LOGIN"));
    let r = run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap();
    assert_eq!(r.outcome.target, format!("127.0.0.1:{}/{db}", pg().port));
    assert_eq!(content_checksums(&db), original);
    let prev = pg().databases_like(&format!("{db}__capsule_prev_"));
    assert_eq!(prev.len(), 1, "{prev:?}");
    assert_eq!(
        count(&prev[0], "public.items"),
        1001,
        "the previous database is kept as it was"
    );
    assert!(
        pg().databases_like(&format!("{db}__capsule_restore_"))
            .is_empty()
    );
    assert_eq!(
        pg().psql(
            "postgres",
            &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{owner_a}'")
        ),
        "t"
    );

    // 3. drop_previous: the previous database is gone after the swap.
    let dropping = engine_with(&db, PgRestoreMode::Safe, true);
    run_restore(&fc.catalog, &dropping, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap();
    assert_eq!(
        pg().databases_like(&format!("{db}__capsule_prev_")),
        prev,
        "only the first one is left"
    );

    // 4. Target database: the live one is left alone; an existing target is refused.
    let target = format!("{db}_copy");
    pg().psql(
        &db,
        "INSERT INTO public.items (name) VALUES ('live change')",
    );
    let to_target = engine_with(&db, PgRestoreMode::TargetDb(target.clone()), false);
    let r = run_restore(
        &fc.catalog,
        &to_target,
        &id,
        RestoreOptions::default(),
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(r.outcome.mode, "target-db");
    assert_eq!(content_checksums(&target), original);
    assert_eq!(count(&db, "public.items"), 1001);
    let err = run_restore(
        &fc.catalog,
        &to_target,
        &id,
        RestoreOptions::default(),
        &ctx,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("already exists"), "{err}");

    // Every restore is in the history, with its outcome.
    let sf = fc.catalog.load(&id).await.unwrap().statefile;
    let statuses: Vec<_> = sf.restores.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            RestoreStatus::Finished,
            RestoreStatus::Finished,
            RestoreStatus::Finished,
            RestoreStatus::Finished,
            RestoreStatus::Failed
        ]
    );
    let first = &sf.restores[0];
    assert_eq!(first.mode.as_deref(), Some("safe-swap"));
    assert_eq!(
        first.target.as_deref(),
        Some(format!("127.0.0.1:{}/{db}", pg().port).as_str())
    );
    assert!(first.started_at.is_some() && first.finished_at.is_some() && first.owner.is_some());
    assert_eq!(sf.restores[3].mode.as_deref(), Some("target-db"));
    assert!(
        sf.restores[4]
            .error
            .as_deref()
            .unwrap()
            .contains("already exists")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_restore_request_is_claimed_and_in_place_restore_works() {
    let db = small_database("inplace", 300);
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&db)).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    let before = content_checksums(&db);
    pg().psql(&db, "DELETE FROM public.items WHERE id > 100");

    let queued = fc.catalog.request_restore(&id).await.unwrap();
    let requested_at = queued.statefile.restores[0].requested_at;
    let in_place = engine_with(&db, PgRestoreMode::InPlace, false);
    let progress = NoProgress;
    let ctx = JobContext::new(&progress);
    let r = run_restore(
        &fc.catalog,
        &in_place,
        &id,
        RestoreOptions::default().with_request(requested_at),
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(r.outcome.mode, "in-place");
    assert_eq!(content_checksums(&db), before);
    assert_eq!(
        pg().psql(
            "postgres",
            &format!("SELECT datallowconn FROM pg_database WHERE datname = '{db}'")
        ),
        "t"
    );
    let sf = fc.catalog.load(&id).await.unwrap().statefile;
    assert_eq!(
        sf.restores.len(),
        1,
        "the queued request was claimed, not duplicated"
    );
    assert_eq!(sf.restores[0].status, RestoreStatus::Finished);
    assert_eq!(sf.restores[0].mode.as_deref(), Some("in-place"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaded_dump_is_accepted_by_plain_pg_restore() {
    let db = small_database("download", 200);
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&db)).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    let out = tempfile::tempdir().unwrap();
    let files = fc
        .catalog
        .download(&id, out.path(), &NoProgress)
        .await
        .unwrap();
    let dump = files.iter().find(|f| f.name == "dump.pgc.zst").unwrap();
    assert!(dump.path.ends_with("dump.pgc"));
    let roles = files.iter().find(|f| f.name == "roles.sql.zst").unwrap();
    let roles_text = std::fs::read_to_string(&roles.path).unwrap();
    assert!(roles_text.contains("CREATE ROLE postgres;"), "{roles_text}");

    let target = Postgres::unique_name("download_plain");
    pg().create_database(&target, None);
    let status = std::process::Command::new(pg().bin_dir.join("pg_restore"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg().port.to_string(),
            "-U",
            "postgres",
            "--exit-on-error",
            "-d",
            &target,
        ])
        .arg(&dump.path)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(content_checksums(&target), content_checksums(&db));
}
