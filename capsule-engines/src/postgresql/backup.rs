//! Backup: roles, then `pg_dump -Fc -Z0` of an exported snapshot streamed
//! into the pipeline; the fingerprint's row counts are read from that
//! stream ([`ArchiveCounter`]), the rest counted in the same snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use capsule_core::{
    ArtifactRole, ArtifactSink, ArtifactSpec, ByteStream, EngineInfo, Error, Fingerprint,
    JobContext, Result,
};
use serde_json::{Map, Value, json};
use tokio_util::io::InspectReader;

use super::PgEngine;
use super::archive::ArchiveCounter;
use super::sql::{self, sql_error};
use super::tools::{self, ToolOutput};

/// Object name of the data artifact (before the pipeline's `.zst`).
pub const DUMP_ARTIFACT: &str = "dump.pgc";
/// Object name of the roles artifact (before the pipeline's `.zst`).
pub const ROLES_ARTIFACT: &str = "roles.sql";
/// Format of the data artifact.
pub const FORMAT_CUSTOM: &str = "pg_dump-custom";
/// Format of the legacy data artifact.
pub const FORMAT_TAR: &str = "pg_dump-tar";
/// Format of the roles artifact.
pub const FORMAT_ROLES: &str = "pg_dumpall-roles";

pub(crate) async fn backup(
    engine: &PgEngine,
    sink: &mut dyn ArtifactSink,
    _ctx: &JobContext<'_>,
) -> Result<EngineInfo> {
    let opts = &engine.options;
    let conn = &opts.connection;
    let session = sql::connect(conn).await?;
    let client = &session.client;
    let server = sql::server_info(client, conn).await?;
    let finder = engine.finder();
    let pg_dump = finder
        .find("pg_dump", server.major(), &server.version)
        .await?;
    let password = conn.resolve_password();
    let secrets: Vec<String> = password.iter().map(|p| p.expose().to_string()).collect();

    let row = client
        .query_one(
            "SELECT pg_catalog.pg_get_userbyid(datdba)::text, \
                    pg_catalog.pg_encoding_to_char(encoding)::text \
             FROM pg_catalog.pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| {
            sql_error(
                &format!("postgresql {conn}: reading the database"),
                &e,
                conn,
            )
        })?;
    let (owner, encoding): (String, String) = (row.get(0), row.get(1));

    let mut details = Map::new();
    if opts.roles {
        let pg_dumpall = finder
            .find("pg_dumpall", server.major(), &server.version)
            .await?;
        let mut cmd = tools::command(&pg_dumpall, conn);
        cmd.args(["--roles-only", "--no-role-passwords", "--no-password", "-l"])
            .arg(&conn.database);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("postgresql {conn}: starting pg_dumpall"), e))?;
        let stream = ToolOutput::new(child, "pg_dumpall", secrets.clone())
            .map_err(|e| Error::io("pg_dumpall", e))?
            .boxed();
        let spec = ArtifactSpec::new(ROLES_ARTIFACT, FORMAT_ROLES)
            .with_role(ArtifactRole::Roles)
            .with_tool_version(pg_dumpall.version.text.clone());
        let artifact = sink.put(spec, stream).await?;
        details.insert("rolesArtifact".into(), Value::String(artifact.name));
    }

    // One snapshot for the dump and the counts; kept open until pg_dump is done.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| {
            sql_error(
                &format!("postgresql {conn}: starting the snapshot"),
                &e,
                conn,
            )
        })?;
    let snapshot: String = client
        .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
        .await
        .map_err(|e| {
            sql_error(
                &format!("postgresql {conn}: exporting the snapshot"),
                &e,
                conn,
            )
        })?
        .get(0);
    let rels = if opts.fingerprint {
        sql::relations(client, conn).await?
    } else {
        Vec::new()
    };
    let seq_before = sql::sequences(client, conn, &rels).await?;

    let mut cmd = tools::command(&pg_dump, conn);
    cmd.args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={snapshot}"));
    let child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("postgresql {conn}: starting pg_dump"), e))?;
    tracing::info!(database = %conn.database, snapshot = %snapshot, tool = %pg_dump.version.text, "pg_dump started");
    let output = ToolOutput::new(child, "pg_dump", secrets.clone())
        .map_err(|e| Error::io("pg_dump", e))?
        .boxed();
    // The rows of each table are counted in the stream as it passes (no
    // second scan of the live tables); what the stream cannot tell is
    // counted with SQL afterwards, in the same snapshot.
    let counter = Arc::new(Mutex::new(ArchiveCounter::new()));
    let stream: ByteStream = if opts.fingerprint {
        let feed = counter.clone();
        Box::new(InspectReader::new(output, move |bytes: &[u8]| {
            feed.lock().unwrap_or_else(|e| e.into_inner()).feed(bytes);
        }))
    } else {
        output
    };
    let spec = ArtifactSpec::new(DUMP_ARTIFACT, FORMAT_CUSTOM)
        .with_tool_version(pg_dump.version.text.clone());
    let artifact = sink.put(spec, stream).await?;
    let counts = if opts.fingerprint {
        let counter = std::mem::replace(
            &mut *counter.lock().unwrap_or_else(|e| e.into_inner()),
            ArchiveCounter::new(),
        );
        let streamed = counter.finish().unwrap_or_else(|why| {
            tracing::info!(reason = %why, "rows not counted from the dump; counting with SQL");
            BTreeMap::new()
        });
        let missing: Vec<sql::Relation> = rels
            .iter()
            .filter(|r| !r.sequence && !streamed.contains_key(&r.key()))
            .cloned()
            .collect();
        details.insert("tablesCountedInDump".into(), json!(streamed.len()));
        details.insert("tablesCountedWithSql".into(), json!(missing.len()));
        let mut counts = sql::counts(client, conn, &missing).await?;
        counts.extend(
            rels.iter()
                .filter_map(|r| streamed.get(&r.key()).map(|n| (r.key(), *n))),
        );
        counts
    } else {
        BTreeMap::new()
    };
    // Sequences are not transactional: keep only those that did not move
    // while pg_dump ran, whose value is then the one in the dump.
    let seq_after = sql::sequences(client, conn, &rels).await?;
    let _ = client.batch_execute("COMMIT").await;
    let unstable: BTreeSet<String> = seq_before
        .iter()
        .filter(|(k, v)| seq_after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    let mut values = seq_after;
    values.retain(|k, _| !unstable.contains(k));
    if !unstable.is_empty() {
        tracing::info!(sequences = ?unstable, "sequences moved during the dump; left out of the fingerprint");
        details.insert("unstableSequences".into(), json!(unstable));
    }

    details.insert("snapshot".into(), Value::String(snapshot));
    details.insert("serverVersionNum".into(), json!(server.version_num));
    details.insert("pgDump".into(), Value::String(pg_dump.version.text.clone()));
    details.insert("databaseOwner".into(), Value::String(owner));
    details.insert("encoding".into(), Value::String(encoding));
    details.insert("dataArtifact".into(), Value::String(artifact.name));
    Ok(EngineInfo {
        server_version: Some(format!("PostgreSQL {}", server.version)),
        database: Some(conn.database.clone()),
        fingerprint: opts.fingerprint.then_some(Fingerprint { counts, values }),
        details,
    })
}
