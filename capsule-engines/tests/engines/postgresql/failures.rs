//! Failures: a killed pg_dump, corrupt artifacts, bad credentials and
//! servers, old client tools, a restore that breaks half-way.

use std::time::{Duration, Instant};

use capsule_core::{
    Error, JobContext, NoProgress, RestoreOptions, RestoreStatus, Status, run_restore, run_verify,
};
use capsule_engines::{PgEngine, PgOptions};
use sha2::{Digest, Sha256};
use test_support::postgres::PASSWORD;

use super::support::*;

/// Holds an exclusive lock on `public.items` of `db`, so pg_dump waits
/// (connected, mid-backup) until it is killed.
async fn lock_items(db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            pg().port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("BEGIN; LOCK TABLE public.items IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    client
}

/// Waits until pg_dump's session on `db` exists and returns its backend pid.
fn wait_for_pg_dump_session(db: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pid = pg().psql(
            "postgres",
            &format!(
                "SELECT pid FROM pg_stat_activity WHERE datname = '{db}' \
                 AND application_name = 'pg_dump' AND wait_event_type = 'Lock'"
            ),
        );
        if !pid.is_empty() {
            return pid;
        }
        assert!(Instant::now() < deadline, "pg_dump never started on {db}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid of the pg_dump process (a child of this test process) dumping `db`.
fn pg_dump_process(db: &str) -> Option<u32> {
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").ok()? {
        let entry = entry.ok()?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "pg_dump" {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1));
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let wanted = format!("PGDATABASE={db}");
        if ppid == Some(me.as_str()) && environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

async fn assert_failed_without_dump(fc: &FileCatalog, needle: &[&str]) -> String {
    let entries = fc.catalog.list(&Default::default()).await.unwrap();
    assert_eq!(entries.len(), 1);
    let sf = fc.catalog.load(&entries[0].id).await.unwrap().statefile;
    assert_eq!(sf.status, Status::Failed, "never finished");
    let error = sf.error.clone().unwrap();
    for n in needle {
        assert!(error.contains(n), "{error:?} lacks {n:?}");
    }
    assert!(
        !fc.object_path(&entries[0].id, "dump.pgc.zst").exists(),
        "the aborted upload left nothing"
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_pg_dump_session_fails_the_backup() {
    let db = small_database("killdump", 1000);
    let fc = FileCatalog::new();
    let locker = lock_items(&db).await;
    let engine = engine(&db);
    let running = tokio::spawn({
        let catalog = fc.catalog.clone();
        async move { backup(&catalog, &engine).await }
    });
    let pid = tokio::task::spawn_blocking({
        let db = db.clone();
        move || wait_for_pg_dump_session(&db)
    })
    .await
    .unwrap();
    pg().psql("postgres", &format!("SELECT pg_terminate_backend({pid})"));
    let err = running.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("pg_dump exited with status 1"), "{err}");
    let error =
        assert_failed_without_dump(&fc, &["pg_dump exited with status 1", "terminat"]).await;
    assert_eq!(error, err);
    drop(locker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pg_dump_process_fails_the_backup() {
    let db = small_database("sigkill", 1000);
    let fc = FileCatalog::new();
    let locker = lock_items(&db).await;
    let engine = engine(&db);
    let running = tokio::spawn({
        let catalog = fc.catalog.clone();
        async move { backup(&catalog, &engine).await }
    });
    let pid = tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            wait_for_pg_dump_session(&db);
            pg_dump_process(&db).expect("pg_dump runs as a child of the test")
        }
    })
    .await
    .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let err = running.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("pg_dump was killed by signal 9"), "{err}");
    assert_failed_without_dump(&fc, &["pg_dump was killed by signal 9"]).await;
    drop(locker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_refused_before_the_target_is_touched() {
    let db = small_database("flip", 2000);
    let fc = FileCatalog::new();
    let engine = engine(&db);
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    pg().psql(
        &db,
        "INSERT INTO public.notes VALUES (1000, 'written after the backup')",
    );
    let live = content_checksums(&db);

    let path = fc.object_path(&id, "dump.pgc.zst");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let progress = NoProgress;
    let ctx = JobContext::new(&progress);
    let err = run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("dump.pgc.zst") && text.contains("checksum mismatch"),
        "{text}"
    );
    assert_eq!(
        content_checksums(&db),
        live,
        "the live database is unchanged"
    );
    assert!(
        pg().databases_like(&format!("{db}__capsule")).is_empty(),
        "no database was created"
    );

    let err = run_verify(&fc.catalog, &engine, &id, &ctx)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(pg().databases_like(&format!("{db}__capsule")).is_empty());

    let sf = fc.catalog.load(&id).await.unwrap().statefile;
    assert_eq!(sf.restores.len(), 1);
    assert_eq!(sf.restores[0].status, RestoreStatus::Failed);
    assert!(
        sf.restores[0]
            .error
            .as_deref()
            .unwrap()
            .contains("dump.pgc.zst")
    );
    assert!(
        sf.verifications[0]
            .error
            .as_deref()
            .unwrap()
            .contains("dump.pgc.zst")
    );
}

/// `drop_previous` with a previous database that PostgreSQL will not drop
/// (a logical replication subscription lives in it): the restore stands,
/// and the previous database is kept, whole and open to connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_database_that_cannot_be_dropped_is_kept_open() {
    let db = small_database("undroppable", 500);
    let fc = FileCatalog::new();
    let id = backed_up(&fc, &db).await;
    let original = content_checksums(&db);
    pg().psql(&db, "INSERT INTO public.notes VALUES (1000, 'live change')");
    let live = content_checksums(&db);
    // DROP DATABASE refuses a database with a subscription (55006, as a
    // busy database does, so it is retried first). `connect = false`
    // makes one without a publisher.
    let sub = format!("{db}_sub");
    pg().psql(
        &db,
        &format!(
            "CREATE SUBSCRIPTION {sub} CONNECTION 'dbname=postgres' PUBLICATION absent \
             WITH (connect = false, enabled = false, create_slot = false, slot_name = NONE)"
        ),
    );

    let engine = engine_with(&db, capsule_engines::PgRestoreMode::Safe, true);
    let ctx = JobContext::new(&NoProgress);
    run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap();
    assert_eq!(content_checksums(&db), original, "the backup is live");
    let prev = pg().databases_like(&format!("{db}__capsule_prev_"));
    assert_eq!(prev.len(), 1, "the previous database is kept: {prev:?}");
    assert_eq!(
        content_checksums(&prev[0]),
        live,
        "the kept database still opens and holds what was live"
    );
    let sf = fc.catalog.load(&id).await.unwrap().statefile;
    assert_eq!(sf.restores[0].status, RestoreStatus::Finished);

    pg().psql(&prev[0], &format!("DROP SUBSCRIPTION {sub}"));
    pg().psql("postgres", &format!("DROP DATABASE {}", prev[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_failing_half_way_leaves_the_live_database_untouched() {
    let db = small_database("halfway", 20000);
    let fc = FileCatalog::new();
    let engine = engine(&db);
    let report = backup(&fc.catalog, &engine).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    pg().psql(&db, "INSERT INTO public.notes VALUES (1000, 'live change')");
    let live = content_checksums(&db);

    // A dump broken inside its data yet stored with a matching checksum
    // (as a faulty tool might have produced): only pg_restore notices.
    let out = tempfile::tempdir().unwrap();
    let files = fc
        .catalog
        .download(&id, out.path(), &NoProgress)
        .await
        .unwrap();
    let dump = std::fs::read(
        &files
            .iter()
            .find(|f| f.name == "dump.pgc.zst")
            .unwrap()
            .path,
    )
    .unwrap();
    let truncated = &dump[..dump.len() * 7 / 10];
    std::fs::write(fc.object_path(&id, "broken.pgc"), truncated).unwrap();
    let mut json = fc.statefile_json(&id);
    for a in json["artifacts"].as_array_mut().unwrap() {
        if a["role"] == "data" {
            a["name"] = "broken.pgc".into();
            a["compression"] = "none".into();
            a["sizeBytes"] = truncated.len().into();
            a["rawSizeBytes"] = truncated.len().into();
            a["sha256"] = hex::encode(Sha256::digest(truncated)).into();
        }
    }
    fc.write_statefile_json(&id, &json);

    let progress = NoProgress;
    let ctx = JobContext::new(&progress);
    let err = run_restore(&fc.catalog, &engine, &id, RestoreOptions::default(), &ctx)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("pg_restore"), "{err}");
    assert!(err.contains("was dropped again"), "{err}");
    assert_eq!(
        content_checksums(&db),
        live,
        "the live database is untouched"
    );
    assert!(
        pg().databases_like(&format!("{db}__capsule")).is_empty(),
        "the new database was dropped"
    );
    let sf = fc.catalog.load(&id).await.unwrap().statefile;
    assert_eq!(sf.restores[0].status, RestoreStatus::Failed);
    assert_eq!(sf.restores[0].error.as_deref(), Some(err.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_servers_give_clear_errors_without_the_password() {
    let db = small_database("creds", 50);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            pg().url_with_password(&db, "wrong-Pa55word-x"),
            "wrong-Pa55word-x",
            "password authentication failed for user \"capsule_pw\"",
        ),
        (
            format!(
                "postgres://postgres:Sekrit-Unreach@127.0.0.1:{}/{db}",
                test_support::process::free_port()
            ),
            "Sekrit-Unreach",
            "connecting to postgresql postgres@127.0.0.1:",
        ),
        (
            pg().url_with_password("no_such_database_x", PASSWORD),
            PASSWORD,
            "database \"no_such_database_x\" does not exist",
        ),
    ];
    for (url, secret, expected) in cases {
        let fc = FileCatalog::new();
        let engine = PgEngine::new(PgOptions::from_url(&url).unwrap());
        assert!(!engine.to_string().contains(secret));
        assert!(!format!("{engine:?}").contains(secret));
        let err = backup(&fc.catalog, &engine).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        assert!(!err.contains(secret), "{err}");
        let error = assert_failed_without_dump(&fc, &[expected]).await;
        assert!(!error.contains(secret));
        let statefile = std::fs::read_dir(fc.dir.path().join(PREFIX))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let text = std::fs::read_to_string(statefile.join("statefile.json")).unwrap();
        assert!(!text.contains(secret), "{text}");
    }

    // The right password works end to end (pg_dump and pg_restore get it
    // through their environment).
    let fc = FileCatalog::new();
    let url = pg().url_with_password(&db, PASSWORD);
    let engine = PgEngine::new(PgOptions::from_url(&url).unwrap());
    let report = backup(&fc.catalog, &engine).await.unwrap();
    assert_eq!(
        report.statefile.service.database.as_deref(),
        Some(db.as_str())
    );
    let text = std::fs::read_to_string(
        fc.object_path(report.statefile.backup_id.as_str(), "statefile.json"),
    )
    .unwrap();
    assert!(!text.contains(PASSWORD), "{text}");
    let progress = NoProgress;
    let ctx = JobContext::new(&progress);
    run_restore(
        &fc.catalog,
        &engine,
        report.statefile.backup_id.as_str(),
        RestoreOptions::default(),
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(count(&db, "public.items"), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_older_than_the_server_is_refused_naming_both_versions() {
    use std::os::unix::fs::PermissionsExt;
    let db = small_database("oldclient", 10);
    let tools = tempfile::tempdir().unwrap();
    let fake = tools.path().join("pg_dump");
    std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let engine = PgEngine::new(
        PgOptions::from_url(&pg().url(&db))
            .unwrap()
            .with_tool_dir(tools.path()),
    );
    let fc = FileCatalog::new();
    let err = backup(&fc.catalog, &engine).await.unwrap_err().to_string();
    let server = format!("PostgreSQL {}.", pg().major);
    assert!(
        err.contains("pg_dump 9 (pg_dump (PostgreSQL) 9.6.24) is older than the server"),
        "{err}"
    );
    assert!(err.contains(&server), "{err}");
    assert_failed_without_dump(&fc, &["is older than the server"]).await;
}

/// A safe restore that dies during the swap (its future dropped, its
/// connections closed, while its statement on the live database waits for
/// a lock the test holds) leaves the live database as it was: there, open
/// to connections, unchanged. Found by the fault-injection suite
/// (capsule-cli/tests/faults): the swap's steps used to commit one by one,
/// so a `kill -9` after `ALLOW_CONNECTIONS false` left the live database
/// closed to every client, and one after the first rename left no database
/// under the live name at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_killed_during_the_swap_leaves_the_live_database_in_place() {
    let db = small_database("swapkill", 2000);
    let fc = FileCatalog::new();
    let report = backup(&fc.catalog, &engine(&db)).await.unwrap();
    let id = report.statefile.backup_id.to_string();
    pg().psql(&db, "INSERT INTO public.notes VALUES (1000, 'live change')");
    let live = content_checksums(&db);

    // Hold the live database's catalog row: the swap's first change to it
    // waits until the restore is gone.
    let (blocker, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            pg().port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM pg_catalog.pg_database WHERE datname = '{db}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let (catalog, restoring) = (fc.catalog.clone(), engine(&db));
    let restore = tokio::spawn(async move {
        let ctx = JobContext::new(&NoProgress);
        run_restore(&catalog, &restoring, &id, RestoreOptions::default(), &ctx).await
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg().psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query ILIKE 'ALTER DATABASE%'",
    ) != "1"
    {
        assert!(
            !restore.is_finished(),
            "the restore ended before its swap: {:?}",
            restore.await
        );
        assert!(Instant::now() < deadline, "the swap never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The crash: the restore's future and connections go away mid-swap.
    restore.abort();
    let _ = restore.await;
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg().psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'ALTER DATABASE%' \
         AND pid <> pg_backend_pid()",
    ) != "0"
    {
        assert!(Instant::now() < deadline, "the swap's session never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(
        pg().psql(
            "postgres",
            &format!("SELECT datallowconn FROM pg_database WHERE datname = '{db}'")
        ),
        "t",
        "the live database exists and takes connections; beside it: {:?}",
        pg().databases_like(&format!("{db}__capsule"))
    );
    assert_eq!(
        content_checksums(&db),
        live,
        "the live database is untouched"
    );
    for leftover in pg().databases_like(&format!("{db}__capsule")) {
        assert!(leftover.contains("__capsule_restore_"), "{leftover}");
        pg().psql(
            "postgres",
            &format!("DROP DATABASE \"{leftover}\" WITH (FORCE)"),
        );
    }
}

/// A restore that replaces the live database checks, before it changes
/// anything, that its role may create databases and owns the live one
/// (an in-place restore by a role without CREATEDB used to drop the
/// database, then fail to create it), and that the live database is not
/// the maintenance database it works from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_lacking_privileges_are_refused_before_anything_changes() {
    use capsule_engines::PgRestoreMode;
    use test_support::postgres::Postgres;

    let db = small_database("priv", 50);
    let owner = Postgres::unique_name("owner");
    let other = Postgres::unique_name("other");
    pg().psql(
        "postgres",
        &format!(
            "CREATE ROLE {owner} LOGIN; CREATE ROLE {other} LOGIN CREATEDB; \
             ALTER DATABASE {db} OWNER TO {owner};"
        ),
    );
    let fc = FileCatalog::new();
    let id = backed_up(&fc, &db).await;
    let before = content_checksums(&db);
    let as_role = |role: &str, mode: PgRestoreMode| {
        let url = format!("postgres://{role}@127.0.0.1:{}/{db}", pg().port);
        PgEngine::new(PgOptions::from_url(&url).unwrap().with_restore_mode(mode))
    };
    for (role, mode, says) in [
        (&owner, PgRestoreMode::InPlace, "lacks CREATEDB"),
        (&owner, PgRestoreMode::Safe, "lacks CREATEDB"),
        (&other, PgRestoreMode::InPlace, "does not own database"),
        (&other, PgRestoreMode::Safe, "does not own database"),
    ] {
        let e = restore_error(&fc, &as_role(role, mode.clone()), &id).await;
        assert!(
            e.contains(says) && e.contains(role.as_str()) && e.contains("nothing was changed"),
            "{role} {mode:?}: {e}"
        );
        assert_eq!(content_checksums(&db), before, "{role} {mode:?}");
        assert_eq!(
            pg().psql(
                "postgres",
                &format!("SELECT datallowconn FROM pg_database WHERE datname = '{db}'")
            ),
            "t"
        );
    }

    // A URL naming no database names postgres, the maintenance database.
    for mode in [PgRestoreMode::Safe, PgRestoreMode::InPlace] {
        let e = restore_error(&fc, &engine_with("postgres", mode.clone(), false), &id).await;
        assert!(
            e.contains("maintenance database") && e.contains("nothing was changed"),
            "{mode:?}: {e}"
        );
    }
    assert!(pg().databases_like(&format!("{db}__capsule")).is_empty());
}

/// Cancelled (Ctrl-C) while pg_restore runs: a safe restore drops the
/// database it was creating and leaves the live one as it was; an
/// in-place restore says the database may be partly restored and to run
/// the restore again, which brings the backup back. The token fires
/// before the job starts, so pg_restore is stopped as soon as it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_restore_cleans_up_and_says_what_is_left() {
    use capsule_engines::PgRestoreMode;

    let db = small_database("cancel", 2000);
    let fc = FileCatalog::new();
    let id = backed_up(&fc, &db).await;
    pg().psql(
        &db,
        "INSERT INTO public.notes VALUES (1000, 'after the backup')",
    );
    let live = content_checksums(&db);
    let cancelled = |mode: PgRestoreMode| {
        let fc = &fc;
        let id = &id;
        let db = &db;
        async move {
            let ctx = JobContext::new(&NoProgress);
            ctx.cancel.cancel();
            run_restore(
                &fc.catalog,
                &engine_with(db, mode, false),
                id,
                RestoreOptions::default(),
                &ctx,
            )
            .await
            .unwrap_err()
        }
    };

    let e = cancelled(PgRestoreMode::Safe).await;
    assert!(matches!(e, Error::Cancelled(_)), "{e:?}");
    assert!(e.to_string().contains("was dropped again"), "{e}");
    assert!(pg().databases_like(&format!("{db}__capsule")).is_empty());
    assert_eq!(content_checksums(&db), live);

    let e = cancelled(PgRestoreMode::InPlace).await;
    assert!(matches!(e, Error::Cancelled(_)), "{e:?}");
    assert!(e.to_string().contains("run the restore again"), "{e}");
    if pg().database_exists(&db) {
        assert_eq!(
            pg().psql(
                "postgres",
                &format!("SELECT datallowconn FROM pg_database WHERE datname = '{db}'")
            ),
            "t"
        );
    }
    let ctx = JobContext::new(&NoProgress);
    run_restore(
        &fc.catalog,
        &engine_with(&db, PgRestoreMode::InPlace, false),
        &id,
        RestoreOptions::default(),
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(count(&db, "public.items"), 2000);
    assert_eq!(count(&db, "public.notes"), 25);
}

/// A URL pointing at a server that does not speak PostgreSQL (here a
/// Redis, which waits for a newline that never comes) fails within the
/// connect timeout plus 5 s, saying so, instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_postgresql_fails_in_time_and_is_named() {
    let redis = test_support::redis::Redis::start();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/app?connect_timeout=1",
        redis.port
    );
    let fc = FileCatalog::new();
    let engine = PgEngine::new(PgOptions::from_url(&url).unwrap());
    let started = Instant::now();
    let e = backup(&fc.catalog, &engine).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(20), "{e}");
    assert!(
        e.contains(&format!(
            "the server at 127.0.0.1:{} does not speak PostgreSQL",
            redis.port
        )),
        "{e}"
    );

    // An HTTP server answers at once, with bytes the driver cannot read.
    // It serves every connection the driver makes (sslmode=prefer makes
    // more than one) and reads what the client sent before it closes: a
    // listener dropped with a connection in its backlog, or a socket
    // closed with unread bytes, would reset the connection instead (a
    // flaky "Connection reset by peer" seen in CI-like runs).
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in http.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut [0u8; 512]);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = std::io::copy(&mut s, &mut std::io::sink());
        }
    });
    for sslmode in ["disable", "prefer"] {
        let url = format!("postgres://postgres@127.0.0.1:{port}/app?sslmode={sslmode}");
        let engine = PgEngine::new(PgOptions::from_url(&url).unwrap());
        let e = backup(&fc.catalog, &engine).await.unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "the server at 127.0.0.1:{port} did not answer as PostgreSQL does"
            )),
            "{sslmode}: {e}"
        );
    }
}
