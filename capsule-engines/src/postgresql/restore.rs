//! Restore: verify every artifact, read the dump's table of contents,
//! create missing roles, then restore beside the live database and swap
//! (safe), over it (in place), into another database, or into a
//! throwaway database for a drill.

use std::collections::BTreeSet;
use std::time::Duration;

use capsule_core::{Artifact, ArtifactRole, ArtifactSource, Error, Fingerprint, Result, Statefile};
use chrono::Utc;
use tokio::io::AsyncReadExt;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::PgEngine;
use super::backup::{FORMAT_CUSTOM, FORMAT_TAR};
use super::connection::PgConnection;
use super::sql::{self, Session, ident, sql_error, sqlstate};
use super::toc::{self, Toc};
use super::tools::{self, Tool, ToolVersion};

/// Longest database name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;
/// Largest roles script read into memory.
const MAX_ROLES_SCRIPT: u64 = 64 * 1024 * 1024;

/// `base` + `suffix`, `base` shortened (on a character boundary) so the
/// whole fits in a PostgreSQL name.
pub(crate) fn fit_name(base: &str, suffix: &str) -> String {
    let room = MAX_NAME.saturating_sub(suffix.len());
    let mut end = base.len().min(room);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &base[..end])
}

fn short_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..8)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A verified backup, ready to restore on one server.
pub(crate) struct Prepared {
    data: Artifact,
    format_flag: &'static str,
    toc: Toc,
    pg_restore: Tool,
    /// Roles created on the server for this restore.
    pub created_roles: Vec<String>,
}

/// Verifies every artifact (before anything on the server changes), picks
/// `pg_restore`, reads the table of contents and creates missing roles.
pub(crate) async fn prepare(
    engine: &PgEngine,
    source: &dyn ArtifactSource,
    admin: &Client,
    server_conn: &PgConnection,
) -> Result<Prepared> {
    let sf = source.statefile();
    let id = sf.backup_id.to_string();
    let data = sf
        .data_artifact()
        .cloned()
        .ok_or_else(|| Error::invalid("backup", format!("backup {id} has no data artifact")))?;
    let format_flag = match data.format.as_str() {
        FORMAT_CUSTOM => "--format=custom",
        FORMAT_TAR => "--format=tar",
        other => {
            return Err(Error::Unsupported(format!(
                "backup {id}: {} has format {other}, which the postgresql engine cannot restore",
                data.name
            )));
        }
    };
    for a in &sf.artifacts {
        source.verify(&a.name).await?;
        tracing::debug!(backup = %id, artifact = %a.name, "verified");
    }

    let server = sql::server_info(admin, server_conn).await?;
    let pg_restore = engine
        .finder()
        .find("pg_restore", server.major(), &server.version)
        .await?;
    let dumped_by = data.tool_version.as_deref().and_then(ToolVersion::parse);
    check_archive_version(
        &pg_restore,
        dumped_by.as_ref().map(|v| (v.major, v.text.as_str())),
    )?;

    let context = format!("restore of backup {id}: reading the table of contents");
    let mut cmd = tools::command(&pg_restore, server_conn);
    cmd.args(["--list", "--create", format_flag]);
    let input = source.open(&data.name).await?;
    let secrets = secrets(server_conn);
    let list = tools::run(cmd, "pg_restore", &context, Some(input), &refs(&secrets)).await?;
    let toc = toc::parse(&String::from_utf8_lossy(&list.stdout));
    check_archive_version(
        &pg_restore,
        toc.dumped_by_major
            .map(|m| (m, toc.dumped_by.as_deref().unwrap_or(""))),
    )?;

    let mut created_roles = Vec::new();
    if let Some(roles) = sf.artifacts.iter().find(|a| a.role == ArtifactRole::Roles) {
        let mut script = Vec::new();
        source
            .open(&roles.name)
            .await?
            .take(MAX_ROLES_SCRIPT)
            .read_to_end(&mut script)
            .await
            .map_err(|e| Error::io(format!("backup {id}: reading {}", roles.name), e))?;
        created_roles =
            super::roles::apply(admin, server_conn, &String::from_utf8_lossy(&script)).await?;
    }
    // Owners the dump names but the server lacks (legacy backups have no
    // roles artifact): created NOLOGIN so ownership comes back exactly.
    created_roles.extend(super::roles::ensure(admin, server_conn, &toc.owners).await?);
    Ok(Prepared {
        data,
        format_flag,
        toc,
        pg_restore,
        created_roles,
    })
}

fn check_archive_version(pg_restore: &Tool, dumped_by: Option<(u32, &str)>) -> Result<()> {
    match dumped_by {
        Some((major, text)) if major > pg_restore.version.major => {
            Err(Error::Unsupported(format!(
                "the dump was made by pg_dump {major} ({text}) but pg_restore is {} ({}): \
             install the PostgreSQL {major} client tools",
                pg_restore.version.major, pg_restore.version.text
            )))
        }
        _ => Ok(()),
    }
}

fn secrets(conn: &PgConnection) -> Vec<String> {
    conn.resolve_password()
        .map(|p| vec![p.expose().to_string()])
        .unwrap_or_default()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A `-d` argument naming `db` as a conninfo string, so no database name
/// is ever read as a connection string of its own.
fn dbname_arg(db: &str) -> String {
    format!("dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
}

pub(crate) async fn database_exists(
    admin: &Client,
    conn: &PgConnection,
    name: &str,
) -> Result<bool> {
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(|e| {
            sql_error(
                &format!("postgresql {conn}: looking up database {name}"),
                &e,
                conn,
            )
        })?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// What the session's role may do, read before a restore changes
/// anything: a restore that cannot create its database must fail before
/// it drops or renames one.
struct Privileges {
    role: String,
    create_db: bool,
    /// Superuser, or member of the owner of the live database (what
    /// `DROP DATABASE` and `ALTER DATABASE … RENAME` require); `None` when
    /// it does not exist.
    owns_live: Option<bool>,
}

async fn privileges(admin: &Client, conn: &PgConnection, live: &str) -> Result<Privileges> {
    let row = admin
        .query_one(
            "SELECT current_user::text, r.rolcreatedb OR r.rolsuper, \
                    (SELECT r.rolsuper OR pg_catalog.pg_has_role(d.datdba, 'MEMBER') \
                       FROM pg_catalog.pg_database d WHERE d.datname = $1) \
               FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
            &[&live],
        )
        .await
        .map_err(|e| {
            sql_error(
                &format!("postgresql {conn}: reading the privileges of the session's role"),
                &e,
                conn,
            )
        })?;
    Ok(Privileges {
        role: row.get(0),
        create_db: row.get(1),
        owns_live: row.get(2),
    })
}

/// Fails, naming the role and what it lacks, unless it may create
/// databases and (`replacing` the live database) drop or rename it.
async fn check_privileges(
    admin: &Client,
    conn: &PgConnection,
    live: &str,
    replacing: bool,
    context: &str,
) -> Result<()> {
    let p = privileges(admin, conn, live).await?;
    let role = &p.role;
    if !p.create_db {
        return Err(Error::invalid(
            "restore",
            format!(
                "{context}: role {role} may not create databases (it lacks CREATEDB), which \
                 this restore needs: nothing was changed; ALTER ROLE {} CREATEDB, or restore \
                 as a role that has it",
                ident(role)
            ),
        ));
    }
    if replacing && p.owns_live == Some(false) {
        return Err(Error::invalid(
            "restore",
            format!(
                "{context}: role {role} does not own database {live}, so it may not drop or \
                 rename it: nothing was changed; restore as its owner or a superuser"
            ),
        ));
    }
    Ok(())
}

/// Terminates every other session on `db`, waiting (up to 10 s) until
/// they are gone.
async fn terminate_sessions(admin: &Client, conn: &PgConnection, db: &str) -> Result<()> {
    for _ in 0..100 {
        let row = admin
            .query_one(
                "SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_catalog.pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()",
                &[&db],
            )
            .await
            .map_err(|e| sql_error(&format!("postgresql {conn}: terminating sessions on {db}"), &e, conn))?;
        if row.get::<_, i64>(0) == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Engine {
        context: format!("postgresql {conn}"),
        message: format!("sessions on database {db} did not end within 10 s"),
    })
}

async fn allow_connections(
    admin: &Client,
    conn: &PgConnection,
    db: &str,
    allow: bool,
) -> Result<()> {
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
            ident(db)
        ))
        .await
        .map_err(|e| {
            sql_error(
                &format!("postgresql {conn}: changing connections to {db}"),
                &e,
                conn,
            )
        })
}

/// Runs a rename, retrying while sessions (e.g. autovacuum) still hold
/// the database.
async fn rename(admin: &Client, conn: &PgConnection, from: &str, to: &str) -> Result<()> {
    let stmt = format!("ALTER DATABASE {} RENAME TO {}", ident(from), ident(to));
    let mut last = None;
    for _ in 0..20 {
        terminate_sessions(admin, conn, from).await?;
        match admin.batch_execute(&stmt).await {
            Ok(()) => return Ok(()),
            Err(e) if sqlstate(&e) == Some("55006") => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(sql_error(
                    &format!("postgresql {conn}: renaming {from} to {to}"),
                    &e,
                    conn,
                ));
            }
        }
    }
    Err(sql_error(
        &format!("postgresql {conn}: renaming {from} to {to}"),
        &last.expect("retried"),
        conn,
    ))
}

/// Drops database `name` after ending its sessions. New connections are
/// refused while it tries; when the drop fails, a database that accepted
/// connections does so again, so what is kept can still be used.
pub(crate) async fn drop_database(admin: &Client, conn: &PgConnection, name: &str) -> Result<()> {
    let was_open = admin
        .query_opt(
            "SELECT datallowconn FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .ok()
        .flatten()
        .is_some_and(|row| row.get::<_, bool>(0));
    let dropped = drop_closed(admin, conn, name).await;
    if dropped.is_err()
        && was_open
        && let Err(e) = allow_connections(admin, conn, name, true).await
    {
        tracing::warn!(database = name, error = %e, "the database could not be dropped, nor opened to connections again");
    }
    dropped
}

/// [`drop_database`]'s attempts: closes `name` to new connections, ends
/// its sessions and drops it, retrying while sessions come back.
async fn drop_closed(admin: &Client, conn: &PgConnection, name: &str) -> Result<()> {
    let stmt = format!("DROP DATABASE IF EXISTS {}", ident(name));
    let mut last = None;
    for _ in 0..20 {
        let _ = allow_connections(admin, conn, name, false).await;
        terminate_sessions(admin, conn, name).await?;
        match admin.batch_execute(&stmt).await {
            Ok(()) => return Ok(()),
            Err(e) if sqlstate(&e) == Some("55006") => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(sql_error(
                    &format!("postgresql {conn}: dropping database {name}"),
                    &e,
                    conn,
                ));
            }
        }
    }
    Err(sql_error(
        &format!("postgresql {conn}: dropping database {name}"),
        &last.expect("retried"),
        conn,
    ))
}

/// The statements creating database `name` as the dumped one was
/// (encoding, locale, owner, settings, grants, comment).
async fn create_statements(
    source: &dyn ArtifactSource,
    prepared: &Prepared,
    server_conn: &PgConnection,
    name: &str,
) -> Result<Vec<String>> {
    let id = source.statefile().backup_id.to_string();
    let toc = &prepared.toc;
    let fallback = || {
        let mut v = vec![format!(
            "CREATE DATABASE {} TEMPLATE template0",
            ident(name)
        )];
        if let Some(owner) = &toc.database_owner {
            v.push(format!(
                "ALTER DATABASE {} OWNER TO {}",
                ident(name),
                ident(owner)
            ));
        }
        v
    };
    let Some(old) = toc
        .dbname
        .as_deref()
        .filter(|_| !toc.database_entries.is_empty())
    else {
        return Ok(fallback());
    };
    // With --create, pg_restore (11+) prints the database-level entries
    // (DATABASE, DATABASE PROPERTIES, and the database's ACL, COMMENT and
    // SECURITY LABEL) whatever the object filters; a schema that does not
    // exist filters out everything else. This selects exactly those
    // entries without a `--use-list` file (no temporary file), and
    // pg_restore reads only the head of the archive.
    let mut cmd = tools::command(&prepared.pg_restore, server_conn);
    cmd.args(["--create", "--file=-", prepared.format_flag])
        .arg(format!("--schema=capsule no such schema {}", short_id()));
    let input = source.open(&prepared.data.name).await?;
    let context = format!("restore of backup {id}: reading the database definition");
    let secrets = secrets(server_conn);
    let out = tools::run(cmd, "pg_restore", &context, Some(input), &refs(&secrets)).await?;
    let stmts = toc::database_statements(&String::from_utf8_lossy(&out.stdout), old, name);
    if !stmts.iter().any(|s| s.starts_with("CREATE DATABASE")) {
        return Ok(fallback());
    }
    Ok(stmts)
}

/// Creates database `name` like the dumped one and restores the dump into
/// it. On failure the new database is dropped and the error says so.
pub(crate) async fn restore_into_new(
    source: &dyn ArtifactSource,
    prepared: &Prepared,
    admin: &Client,
    server_conn: &PgConnection,
    name: &str,
    cancel: &CancellationToken,
) -> Result<()> {
    let id = source.statefile().backup_id.to_string();
    let context = format!(
        "restore of backup {id} into postgresql {}/{name}",
        server_conn.endpoint()
    );
    if database_exists(admin, server_conn, name).await? {
        return Err(Error::invalid(
            "database",
            format!("{context}: database {name} already exists; choose another name or drop it"),
        ));
    }
    check_privileges(admin, server_conn, name, false, &context).await?;
    let stmts = create_statements(source, prepared, server_conn, name).await?;
    let result = async {
        for stmt in &stmts {
            admin.batch_execute(stmt).await.map_err(|e| {
                sql_error(
                    &format!("{context}: creating the database"),
                    &e,
                    server_conn,
                )
            })?;
        }
        let mut cmd = tools::command(&prepared.pg_restore, &server_conn.for_database(name));
        cmd.args(["--exit-on-error", "--no-password", prepared.format_flag])
            .arg(format!("--dbname={}", dbname_arg(name)));
        let input = source.open(&prepared.data.name).await?;
        let secrets = secrets(server_conn);
        let secrets = refs(&secrets);
        let run = tools::run(cmd, "pg_restore", &context, Some(input), &secrets);
        until_cancelled(cancel, &context, run).await?;
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = result {
        let created = database_exists(admin, server_conn, name)
            .await
            .unwrap_or(true);
        let dropped = match created {
            true => drop_database(admin, server_conn, name).await,
            false => Ok(()),
        };
        return Err(match dropped {
            Ok(()) => annotate(e, &format!("database {name} was dropped again")),
            Err(d) => {
                tracing::warn!(database = name, error = %d, "cannot drop the partly restored database");
                annotate(
                    e,
                    &format!("the partly restored database {name} could not be dropped ({d})"),
                )
            }
        });
    }
    Ok(())
}

/// Runs `job` (pg_restore) until it ends or `cancel` fires; dropping it
/// kills pg_restore, and the caller's error path cleans up and says what
/// is left.
async fn until_cancelled<T>(
    cancel: &CancellationToken,
    context: &str,
    job: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = job => r,
        () = cancel.cancelled() => Err(Error::Cancelled(context.to_string())),
    }
}

/// Appends `note` to an error's message.
fn annotate(e: Error, note: &str) -> Error {
    match e {
        Error::Engine { context, message } => Error::Engine {
            context,
            message: format!("{message}; {note}"),
        },
        Error::Cancelled(what) => Error::Cancelled(format!("{what}; {note}")),
        e => Error::Engine {
            context: e.to_string(),
            message: note.to_string(),
        },
    }
}

/// What a restore did, beyond the core's outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgRestoreReport {
    /// `host:port/database` restored into.
    pub target: String,
    /// `safe-swap`, `in-place`, `target-db` or `scratch`.
    pub mode: String,
    /// The previous live database kept by a safe restore.
    pub previous_database: Option<String>,
    /// Whether a safe restore dropped the previous live database
    /// (`--drop-previous`, and there was one).
    pub previous_dropped: bool,
    /// Roles the restore created because the server lacked them.
    pub created_roles: Vec<String>,
    /// The restored data's fingerprint (drills).
    pub fingerprint: Option<Fingerprint>,
}

async fn admin_session(
    engine: &PgEngine,
    server_conn: &PgConnection,
) -> Result<(Session, PgConnection)> {
    let admin_conn = server_conn.for_database(&engine.options.maintenance_database);
    Ok((sql::connect(&admin_conn).await?, admin_conn))
}

/// Safe restore: beside the live database, then swap names.
pub(crate) async fn restore_safe(
    engine: &PgEngine,
    source: &dyn ArtifactSource,
    cancel: &CancellationToken,
) -> Result<PgRestoreReport> {
    let conn = &engine.options.connection;
    let live = conn.database.clone();
    let (admin, admin_conn) = admin_session(engine, conn).await?;
    let context = format!(
        "restore of backup {} into postgresql {}/{live}",
        source.statefile().backup_id,
        conn.endpoint()
    );
    refuse_maintenance_target(engine, &live, &context)?;
    check_privileges(&admin.client, &admin_conn, &live, true, &context).await?;
    let prepared = prepare(engine, source, &admin.client, &admin_conn).await?;
    let new = fit_name(&live, &format!("__capsule_restore_{}", short_id()));
    restore_into_new(source, &prepared, &admin.client, &admin_conn, &new, cancel).await?;
    let previous = swap(
        engine,
        &admin.client,
        &admin_conn,
        &live,
        &new,
        source.statefile(),
    )
    .await?;
    Ok(PgRestoreReport {
        target: format!("{}/{live}", conn.endpoint()),
        mode: engine.options.restore_mode.as_str().into(),
        previous_dropped: matches!(previous, Previous::Dropped),
        previous_database: match previous {
            Previous::Kept(name) => Some(name),
            Previous::Absent | Previous::Dropped => None,
        },
        created_roles: prepared.created_roles,
        fingerprint: None,
    })
}

/// What became of the live database a safe restore replaced.
enum Previous {
    /// There was none: the restored copy was renamed into place.
    Absent,
    /// Kept under this name.
    Kept(String),
    /// Dropped (`--drop-previous`).
    Dropped,
}

/// Puts `new` in the place of `live`; says what became of the old one.
/// Once the swap is done the restore has succeeded: a previous database
/// that `--drop-previous` cannot drop is kept, with a warning.
async fn swap(
    engine: &PgEngine,
    admin: &Client,
    conn: &PgConnection,
    live: &str,
    new: &str,
    sf: &Statefile,
) -> Result<Previous> {
    let context = format!(
        "restore of backup {} into postgresql {}/{live}",
        sf.backup_id,
        conn.endpoint()
    );
    if !database_exists(admin, conn, live).await? {
        rename(admin, conn, new, live)
            .await
            .map_err(|e| annotate(e, &format!("the restored copy is kept as {new}")))?;
        return Ok(Previous::Absent);
    }
    let stamp = Utc::now().format("%Y%m%d%H%M%S").to_string();
    let mut prev = fit_name(live, &format!("__capsule_prev_{stamp}"));
    // Two restores within one second: number the later ones.
    let mut n = 2;
    while database_exists(admin, conn, &prev).await? {
        prev = fit_name(live, &format!("__capsule_prev_{stamp}_{n}"));
        n += 1;
    }
    if let Err(e) = swap_names(admin, conn, live, &prev, new).await {
        let dropped = drop_database(admin, conn, new).await;
        let note = match dropped {
            Ok(()) => {
                format!("the live database {live} was left in place and the restored copy dropped")
            }
            Err(d) => format!(
                "the live database {live} was left in place; the restored copy {new} could not be dropped ({d})"
            ),
        };
        return Err(annotate(e, &note));
    }
    tracing::info!(database = live, previous = %prev, "{context}: swapped in the restored database");
    if !engine.options.drop_previous {
        return Ok(Previous::Kept(prev));
    }
    match drop_database(admin, conn, &prev).await {
        Ok(()) => {
            tracing::info!(database = %prev, "dropped the previous database");
            Ok(Previous::Dropped)
        }
        Err(e) => {
            tracing::warn!(database = %prev, error = %e, "{context}: restored, but the previous database could not be dropped; it is kept");
            Ok(Previous::Kept(prev))
        }
    }
}

/// Renames `live` to `prev` and `new` to `live` in one transaction, so
/// that whatever stops the restore before the commit (an error, a lost
/// connection, the process killed) leaves both names as they were: the
/// live database is never missing, nor closed to connections. Retried
/// while sessions (e.g. autovacuum, clients reconnecting) hold either
/// database; the renames take an exclusive lock on each database, so no
/// session can connect in between.
async fn swap_names(
    admin: &Client,
    conn: &PgConnection,
    live: &str,
    prev: &str,
    new: &str,
) -> Result<()> {
    let steps = [
        format!("ALTER DATABASE {} RENAME TO {}", ident(live), ident(prev)),
        format!("ALTER DATABASE {} RENAME TO {}", ident(new), ident(live)),
    ];
    let context = format!("postgresql {conn}: swapping {new} in as {live}");
    let mut last = None;
    for _ in 0..20 {
        terminate_sessions(admin, conn, live).await?;
        terminate_sessions(admin, conn, new).await?;
        let attempt = async {
            admin.batch_execute("BEGIN").await?;
            for step in &steps {
                admin.batch_execute(step).await?;
            }
            admin.batch_execute("COMMIT").await
        }
        .await;
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = admin.batch_execute("ROLLBACK").await;
                if sqlstate(&e) != Some("55006") {
                    return Err(sql_error(&context, &e, conn));
                }
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    Err(sql_error(&context, &last.expect("retried"), conn))
}

/// A restore that replaces the live database works from the maintenance
/// database, which therefore cannot be the one replaced (a `--pg-url`
/// naming no database names `postgres`).
fn refuse_maintenance_target(engine: &PgEngine, live: &str, context: &str) -> Result<()> {
    let maintenance = &engine.options.maintenance_database;
    if live == maintenance {
        return Err(Error::invalid(
            "restore",
            format!(
                "{context}: {live} is the maintenance database this restore works from, so it \
                 cannot replace it: nothing was changed; name the database to restore in the \
                 URL (postgres://…/app), or use --target-db to restore beside it"
            ),
        ));
    }
    Ok(())
}

/// Restore into a new database `name`, leaving the live one alone.
pub(crate) async fn restore_target(
    engine: &PgEngine,
    source: &dyn ArtifactSource,
    name: &str,
    cancel: &CancellationToken,
) -> Result<PgRestoreReport> {
    let conn = &engine.options.connection;
    let (admin, admin_conn) = admin_session(engine, conn).await?;
    if database_exists(&admin.client, &admin_conn, name).await? {
        return Err(Error::invalid(
            "database",
            format!(
                "restore of backup {} into postgresql {}/{name}: database {name} already exists",
                source.statefile().backup_id,
                conn.endpoint()
            ),
        ));
    }
    let prepared = prepare(engine, source, &admin.client, &admin_conn).await?;
    restore_into_new(source, &prepared, &admin.client, &admin_conn, name, cancel).await?;
    Ok(PgRestoreReport {
        target: format!("{}/{name}", conn.endpoint()),
        mode: engine.options.restore_mode.as_str().into(),
        previous_database: None,
        previous_dropped: false,
        created_roles: prepared.created_roles,
        fingerprint: None,
    })
}

/// The legacy in-place restore: block, terminate, `pg_restore --clean
/// --create --exit-on-error` from the maintenance database.
pub(crate) async fn restore_in_place(
    engine: &PgEngine,
    source: &dyn ArtifactSource,
    cancel: &CancellationToken,
) -> Result<PgRestoreReport> {
    let conn = &engine.options.connection;
    let live = conn.database.clone();
    let id = source.statefile().backup_id.to_string();
    let context = format!(
        "restore of backup {id} into postgresql {}/{live} (in place)",
        conn.endpoint()
    );
    let (admin, admin_conn) = admin_session(engine, conn).await?;
    refuse_maintenance_target(engine, &live, &context)?;
    check_privileges(&admin.client, &admin_conn, &live, true, &context).await?;
    let prepared = prepare(engine, source, &admin.client, &admin_conn).await?;
    if let Some(dumped) = prepared.toc.dbname.as_deref().filter(|d| *d != live) {
        return Err(Error::invalid(
            "restore",
            format!(
                "{context}: the dump is of database {dumped}, which an in-place restore would recreate \
                 under that name; use the safe or target-db mode to restore it as {live}"
            ),
        ));
    }
    let existed = database_exists(&admin.client, &admin_conn, &live).await?;
    // The stream is opened before the database is closed: a store failing
    // here leaves the database as it was.
    let input = source.open(&prepared.data.name).await?;
    if existed {
        allow_connections(&admin.client, &admin_conn, &live, false).await?;
        if let Err(e) = terminate_sessions(&admin.client, &admin_conn, &live).await {
            // Nothing was restored yet: open the database again.
            let note = match allow_connections(&admin.client, &admin_conn, &live, true).await {
                Ok(()) => format!("database {live} was not changed"),
                Err(_) => format!(
                    "database {live} was not changed but refuses new connections: \
                     ALTER DATABASE \"{live}\" ALLOW_CONNECTIONS true opens it again"
                ),
            };
            return Err(annotate(e, &note));
        }
    }
    let mut cmd = tools::command(&prepared.pg_restore, &admin_conn);
    cmd.args([
        "--clean",
        "--if-exists",
        "--create",
        "--exit-on-error",
        "--no-password",
        prepared.format_flag,
    ])
    .arg(format!(
        "--dbname={}",
        dbname_arg(&engine.options.maintenance_database)
    ));
    let secrets = secrets(&admin_conn);
    let secrets = refs(&secrets);
    let run = tools::run(cmd, "pg_restore", &context, Some(input), &secrets);
    if let Err(e) = until_cancelled(cancel, &context, run).await {
        let note = match database_exists(&admin.client, &admin_conn, &live).await {
            Ok(true) => {
                let _ = allow_connections(&admin.client, &admin_conn, &live, true).await;
                format!(
                    "database {live} may be partly restored (pg_restore --clean drops and \
                     re-creates it): run the restore again"
                )
            }
            Ok(false) => {
                format!("database {live} was dropped and not re-created: run the restore again")
            }
            Err(_) => format!(
                "database {live} may be partly restored, or dropped (pg_restore --clean drops \
                 and re-creates it): run the restore again"
            ),
        };
        return Err(annotate(e, &note));
    }
    Ok(PgRestoreReport {
        target: format!("{}/{live}", conn.endpoint()),
        mode: engine.options.restore_mode.as_str().into(),
        previous_database: None,
        previous_dropped: false,
        created_roles: prepared.created_roles,
        fingerprint: None,
    })
}

/// The drill: restore into a throwaway database, fingerprint it, drop it.
pub(crate) async fn restore_scratch(
    engine: &PgEngine,
    source: &dyn ArtifactSource,
    cancel: &CancellationToken,
) -> Result<PgRestoreReport> {
    let server_conn = engine
        .options
        .verify_connection
        .clone()
        .unwrap_or_else(|| engine.options.connection.clone());
    let sf = source.statefile();
    let base = sf
        .engine
        .as_ref()
        .and_then(|e| e.database.clone())
        .or_else(|| sf.service.database.clone())
        .unwrap_or_else(|| engine.options.connection.database.clone());
    let (admin, admin_conn) = admin_session(engine, &server_conn).await?;
    let prepared = prepare(engine, source, &admin.client, &admin_conn).await?;
    let name = fit_name(&base, &format!("__capsule_verify_{}", short_id()));
    restore_into_new(source, &prepared, &admin.client, &admin_conn, &name, cancel).await?;
    let skip: BTreeSet<String> = sf
        .engine
        .as_ref()
        .and_then(|e| e.details.get("unstableSequences"))
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let scratch_conn = server_conn.for_database(&name);
    let fingerprint = async {
        let s = sql::connect(&scratch_conn).await?;
        sql::fingerprint(&s.client, &scratch_conn, &skip).await
    }
    .await;
    let dropped = drop_database(&admin.client, &admin_conn, &name).await;
    let fingerprint = fingerprint?;
    if let Err(e) = dropped {
        tracing::warn!(database = %name, error = %e, "cannot drop the drill's database");
    }
    Ok(PgRestoreReport {
        target: format!("{}/{name}", server_conn.endpoint()),
        mode: "scratch".into(),
        previous_database: None,
        previous_dropped: false,
        created_roles: prepared.created_roles,
        fingerprint: Some(fingerprint),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_63_bytes() {
        let long = "x".repeat(80);
        let n = fit_name(&long, "__capsule_restore_abcdefgh");
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("__capsule_restore_abcdefgh"));
        let accents = "é".repeat(40);
        let n = fit_name(&accents, "__capsule_prev_20240101120000");
        assert!(n.len() <= 63 && n.ends_with("20240101120000"));
        assert_eq!(fit_name("app", "__x"), "app__x");
    }

    #[test]
    fn dbname_arguments_are_conninfo_strings() {
        assert_eq!(dbname_arg("app"), "dbname='app'");
        assert_eq!(dbname_arg("a'b\\c"), "dbname='a\\'b\\\\c'");
    }
}
