//! Capture by `SCAN` + `DUMP` + `PTTL`, for servers that refuse
//! replication (managed services, renamed commands, ACL users without
//! `PSYNC`). The keys are written as an RDB file, so a backup has one
//! format whichever path made it; but it is not a point-in-time snapshot:
//! each key is read at its own moment.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use capsule_core::{Error, Result};
use tokio::io::{AsyncWriteExt, DuplexStream};

use super::client::{Client, ServerInfo, engine_error};
use super::connection::RedisConnection;
use super::rdb::{RdbWriter, split_dump_payload};
use super::resp::Reply;

/// Keys whose `PTTL` and `DUMP` are pipelined together.
const BATCH: usize = 64;
/// Bytes gathered before they are written to the pipe.
const FLUSH_AT: usize = 256 * 1024;
/// Values at least this large are written without a copy.
const DIRECT: usize = 1 << 20;

/// Writes every database of the server at `conn` as an RDB into `out`.
///
/// # Errors
/// Connection, command (e.g. `DUMP` not allowed) and pipe failures.
pub(crate) async fn capture(
    conn: RedisConnection,
    scan_count: u32,
    mut out: DuplexStream,
) -> Result<()> {
    let mut client = Client::connect(&conn).await?;
    let endpoint = client.endpoint.clone();
    let server = ServerInfo::read(&mut client).await?;
    let dbs = client.keyspace().await?;
    let mut w = Lazy {
        writer: None,
        chosen: 0,
        fallback_version: server.rdb_version.unwrap_or(9),
        aux: vec![
            (b"redis-ver".to_vec(), server.version.clone().into_bytes()),
            (b"redis-bits".to_vec(), b"64".to_vec()),
            (
                b"ctime".to_vec(),
                chrono::Utc::now().timestamp().to_string().into_bytes(),
            ),
            (b"capsule-capture".to_vec(), b"scan".to_vec()),
        ],
    };
    let pipe_err = |e: std::io::Error| Error::io(format!("redis {endpoint}: writing the RDB"), e);

    match client.raw_call(&[b"FUNCTION", b"DUMP"]).await? {
        Reply::Bulk(Some(payload)) => {
            let (records, version) = split_dump_payload(&payload)
                .map_err(|e| engine_error(&endpoint, "FUNCTION DUMP", e))?;
            if !records.is_empty() {
                w.get(version as u32)?.raw(records);
            }
        }
        // Refused: a server before 7 (no functions), an ACL without
        // `function|dump`, a renamed or disabled command (`ERR unknown
        // command` on 7 as well). Fine only where the server holds no
        // library (`INFO memory` has no count before 7), else the backup
        // would finish without them and nothing would say so.
        Reply::Error(e) => {
            let memory = client.info("memory").await?;
            match memory.get("number_of_libraries").map(String::as_str) {
                None | Some("0") => {
                    tracing::debug!(%endpoint, reply = %e, "FUNCTION DUMP refused; the server holds no library");
                }
                Some(n) => {
                    let fix = if e.starts_with("ERR unknown") {
                        "the FUNCTION command is renamed or disabled on this server: capture \
                         by replication instead"
                    } else {
                        "allow the user `+function|dump`"
                    };
                    return Err(engine_error(
                        &endpoint,
                        "FUNCTION DUMP",
                        format!(
                            "{e}: the server holds {n} function libraries, which this backup \
                             would miss; {fix}"
                        ),
                    ));
                }
            }
        }
        other => tracing::debug!(%endpoint, reply = ?other, "no functions captured"),
    }

    let hasher = (RandomState::new(), RandomState::new());
    for (&db, &expected) in &dbs {
        client.call(&[b"SELECT", db.to_string().as_bytes()]).await?;
        let mut selected = false;
        let mut seen: HashSet<u128> = HashSet::with_capacity(expected.min(1 << 20) as usize);
        let mut cursor = b"0".to_vec();
        loop {
            let reply = client
                .call(&[
                    b"SCAN",
                    &cursor,
                    b"COUNT",
                    scan_count.to_string().as_bytes(),
                ])
                .await?;
            let (next, keys) = scan_reply(reply)
                .ok_or_else(|| engine_error(&endpoint, "SCAN", "unexpected reply shape"))?;
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .filter(|k| {
                    let h = ((hasher.0.hash_one(k) as u128) << 64) | hasher.1.hash_one(k) as u128;
                    seen.insert(h)
                })
                .collect();
            for batch in keys.chunks(BATCH) {
                for k in batch {
                    client.queue(&[b"PTTL", k]);
                    client.queue(&[b"DUMP", k]);
                }
                client.flush().await?;
                for k in batch {
                    let pttl = client.read().await?;
                    let dump = client.read().await?;
                    let now = chrono::Utc::now().timestamp_millis();
                    let expire = match pttl {
                        Reply::Int(-2) => continue,
                        Reply::Int(ms) if ms >= 0 => Some(now + ms),
                        Reply::Int(_) => None,
                        Reply::Error(e) => return Err(engine_error(&endpoint, "PTTL", e)),
                        other => {
                            return Err(engine_error(&endpoint, "PTTL", format!("{other:?}")));
                        }
                    };
                    let payload = match dump {
                        Reply::Bulk(Some(p)) => p,
                        Reply::Bulk(None) => continue, // deleted meanwhile
                        Reply::Error(e) => return Err(engine_error(&endpoint, "DUMP", e)),
                        other => {
                            return Err(engine_error(&endpoint, "DUMP", format!("{other:?}")));
                        }
                    };
                    let (value, version) = split_dump_payload(&payload)
                        .map_err(|e| engine_error(&endpoint, "DUMP", e))?;
                    if value.is_empty() {
                        return Err(engine_error(
                            &endpoint,
                            "DUMP",
                            "a payload with no value (only its footer)",
                        ));
                    }
                    let writer = w.get(version as u32)?;
                    if !selected {
                        writer.select_db(db);
                        selected = true;
                    }
                    if value.len() >= DIRECT {
                        writer.entry_head(k, expire, value[0]);
                        out.write_all(&writer.take()).await.map_err(pipe_err)?;
                        writer.account(&value[1..]);
                        out.write_all(&value[1..]).await.map_err(pipe_err)?;
                    } else {
                        writer.entry(k, expire, value);
                        if writer.buffered() >= FLUSH_AT {
                            out.write_all(&writer.take()).await.map_err(pipe_err)?;
                        }
                    }
                }
            }
            if next == b"0" {
                break;
            }
            cursor = next;
        }
        tracing::debug!(%endpoint, db, dbsize = seen.len(), "database scanned");
    }
    let writer = w.get(0)?;
    writer.finish();
    out.write_all(&writer.take()).await.map_err(pipe_err)?;
    out.shutdown().await.map_err(pipe_err)?;
    Ok(())
}

/// The cursor and keys of a `SCAN` reply.
fn scan_reply(reply: Reply) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let Reply::Array(Some(mut parts)) = reply else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let keys = match parts.pop()? {
        Reply::Array(Some(keys)) => keys
            .into_iter()
            .map(|k| match k {
                Reply::Bulk(Some(k)) => Some(k),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    let cursor = match parts.pop()? {
        Reply::Bulk(Some(c)) => c,
        _ => return None,
    };
    Some((cursor, keys))
}

/// The RDB writer, started when the first payload tells the version the
/// server's `DUMP` writes (its version string may not say).
struct Lazy {
    writer: Option<RdbWriter>,
    chosen: u32,
    fallback_version: u32,
    aux: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Lazy {
    /// The writer; `version` 0 means "whatever was chosen, or the
    /// server's".
    fn get(&mut self, version: u32) -> Result<&mut RdbWriter> {
        if self.writer.is_some() && version > self.chosen {
            return Err(Error::Unsupported(format!(
                "DUMP payloads of RDB version {version} after ones of version {}",
                self.chosen
            )));
        }
        if self.writer.is_none() {
            let v = if version == 0 {
                self.fallback_version
            } else {
                version
            };
            let mut w = RdbWriter::new(v);
            for (k, val) in &self.aux {
                w.aux(k, val);
            }
            self.chosen = v;
            self.writer = Some(w);
        }
        Ok(self.writer.as_mut().expect("just set"))
    }
}
