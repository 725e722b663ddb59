//! Backup: capture an RDB (replication, or SCAN + DUMP when the server
//! refuses) and stream it through the pipeline while the parser verifies
//! the same bytes.

use capsule_core::{
    ArtifactSink, ArtifactSpec, ByteStream, EngineInfo, Error, Fingerprint, JobContext, Result,
};
use serde_json::{Map, Value, json};

use super::RedisEngine;
use super::client::{Client, ServerInfo};
use super::options::RedisCapture;
use super::replication::{self, Handshake};
use super::stream::{TaskReader, tee};
use super::summary::{self, RdbSummary};

/// Object name of the data artifact (before the pipeline's `.zst`), so a
/// download gives a `dump.rdb` that `redis-server` loads.
pub const DUMP_ARTIFACT: &str = "dump.rdb";
/// Format of the data artifact.
pub const FORMAT_RDB: &str = "rdb";

/// Which path made the RDB.
pub(crate) const CAPTURE_REPLICATION: &str = "replication";
/// The SCAN + DUMP path.
pub(crate) const CAPTURE_SCAN: &str = "scan-dump";

pub(crate) async fn backup(
    engine: &RedisEngine,
    sink: &mut dyn ArtifactSink,
    _ctx: &JobContext<'_>,
) -> Result<EngineInfo> {
    let opts = &engine.options;
    let conn = &opts.connection;
    let mut client = Client::connect(conn).await?;
    let server = ServerInfo::read(&mut client).await?;
    drop(client);

    let mut details = Map::new();
    let stream: ByteStream = match opts.capture {
        RedisCapture::Scan => scan_stream(engine, &mut details),
        mode => match replication::start(conn).await? {
            Handshake::Streaming(payload, started) => {
                tracing::info!(
                    server = %engine, replid = %started.replid, offset = started.offset,
                    framing = started.framing.as_str(), "capturing the RDB by replication"
                );
                if let replication::Framing::Disk(_) = started.framing {
                    tracing::info!(server = %engine, "the server wrote the RDB to its disk for this transfer (repl-diskless-sync no)");
                }
                details.insert("capture".into(), json!(CAPTURE_REPLICATION));
                details.insert("pointInTime".into(), json!(true));
                details.insert("framing".into(), json!(started.framing.as_str()));
                details.insert("replicationId".into(), json!(started.replid));
                details.insert("replicationOffset".into(), json!(started.offset));
                payload
            }
            Handshake::Refused(reason) if mode == RedisCapture::Auto => {
                tracing::warn!(server = %engine, %reason, "replication refused; falling back to SCAN + DUMP (not a point-in-time snapshot)");
                details.insert("fallbackReason".into(), json!(reason));
                scan_stream(engine, &mut details)
            }
            Handshake::Refused(reason) => {
                return Err(Error::Engine {
                    context: format!("{engine}: replication"),
                    message: reason,
                });
            }
        },
    };

    let (stream, verdict) = tee(stream, summary::verify);
    let spec = ArtifactSpec::new(DUMP_ARTIFACT, FORMAT_RDB)
        .with_tool_version(format!("Redis {}", server.version));
    let artifact = sink.put(spec, stream).await?;
    let summary: RdbSummary = verdict
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .ok_or_else(|| Error::Engine {
            context: format!("{engine}: backup"),
            message: "the RDB was stored but its verification did not report".into(),
        })?;
    tracing::info!(
        server = %engine, dbsize = summary.keys.values().sum::<u64>(), bytes = summary.bytes,
        rdb_version = summary.version, "RDB captured and verified"
    );
    summary.details(&mut details);
    details.insert("dataArtifact".into(), Value::String(artifact.name));
    Ok(EngineInfo {
        server_version: Some(format!("Redis {}", server.version)),
        database: Some(conn.db.to_string()),
        fingerprint: Some(Fingerprint {
            counts: summary.counts(),
            values: Default::default(),
        }),
        details,
    })
}

fn scan_stream(engine: &RedisEngine, details: &mut Map<String, Value>) -> ByteStream {
    tracing::info!(server = %engine, "capturing with SCAN + DUMP + PTTL");
    details.insert("capture".into(), json!(CAPTURE_SCAN));
    details.insert("pointInTime".into(), json!(false));
    let conn = engine.options.connection.clone();
    let count = engine.options.scan_count;
    Box::new(TaskReader::spawn(1 << 20, move |pipe| {
        super::scan::capture(conn, count, pipe)
    }))
}
