//! The restore's consumer: writes the producer's commands to one
//! connection, pipelined, and reads the replies in order. The first error
//! reply stops the restore, naming the key and database.

use std::collections::BTreeMap;

use capsule_core::Result;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::client::{Client, Reader, engine_error};
use super::feed::Op;
use super::resp::{self, Reply};

/// Bytes gathered before a write to the socket.
const WRITE_BUFFER: usize = 256 * 1024;

/// A command sent and not yet answered.
struct Pending {
    what: What,
    _permit: Option<OwnedSemaphorePermit>,
}

enum What {
    Select(u64),
    Restore { db: u64, key: Vec<u8> },
    Function,
}

/// What the server acknowledged.
#[derive(Clone, Debug, Default)]
pub(crate) struct SendStats {
    /// Keys restored per database.
    pub(crate) restored: BTreeMap<u64, u64>,
    /// Function libraries restored.
    pub(crate) functions: u64,
}

/// A key for messages: printable, at most 64 characters.
pub(crate) fn show_key(key: &[u8]) -> String {
    let text: String = key.escape_ascii().to_string();
    if text.len() > 64 {
        format!("{}…", &text[..64])
    } else {
        text
    }
}

/// Sends every op of `ops` over `client` and checks every reply.
///
/// # Errors
/// [`capsule_core::Error::Engine`] with the server's error reply and the
/// key it was about, or a connection failure.
pub(crate) async fn send(client: Client, mut ops: mpsc::Receiver<Vec<Op>>) -> Result<SendStats> {
    let Client {
        mut reader,
        writer,
        endpoint,
        ..
    } = client;
    let (pending_tx, mut pending_rx) = mpsc::unbounded_channel::<Vec<Pending>>();
    let writing = async {
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, writer);
        let mut head = Vec::with_capacity(256);
        let io = |e: std::io::Error| engine_error(&endpoint, "sending RESTORE commands", e);
        while let Some(batch) = ops.recv().await {
            let mut sent = Vec::with_capacity(batch.len());
            for op in batch {
                head.clear();
                let pending = match op {
                    Op::Header(_) => continue,
                    Op::Select(db) => {
                        resp::encode(&mut head, &[b"SELECT", db.to_string().as_bytes()]);
                        w.write_all(&head).await.map_err(io)?;
                        Pending {
                            what: What::Select(db),
                            _permit: None,
                        }
                    }
                    Op::Restore {
                        db,
                        key,
                        expire_ms,
                        lru_idle,
                        lfu_freq,
                        payload,
                        permit,
                    } => {
                        let ttl = expire_ms.unwrap_or(0).to_string();
                        let extra = match (lru_idle, lfu_freq) {
                            (Some(idle), _) => Some(("IDLETIME", idle.to_string())),
                            (None, Some(freq)) => Some(("FREQ", freq.to_string())),
                            _ => None,
                        };
                        let n =
                            5 + usize::from(expire_ms.is_some()) + 2 * usize::from(extra.is_some());
                        head.extend_from_slice(format!("*{n}\r\n").as_bytes());
                        for a in [&b"RESTORE"[..], &key, ttl.as_bytes()] {
                            resp::bulk_header(&mut head, a.len());
                            head.extend_from_slice(a);
                            head.extend_from_slice(b"\r\n");
                        }
                        resp::bulk_header(&mut head, payload.len());
                        w.write_all(&head).await.map_err(io)?;
                        w.write_all(&payload).await.map_err(io)?;
                        head.clear();
                        head.extend_from_slice(b"\r\n");
                        let mut tail: Vec<&[u8]> = vec![b"REPLACE"];
                        if expire_ms.is_some() {
                            tail.push(b"ABSTTL");
                        }
                        if let Some((name, value)) = &extra {
                            tail.push(name.as_bytes());
                            tail.push(value.as_bytes());
                        }
                        for a in tail {
                            resp::bulk_header(&mut head, a.len());
                            head.extend_from_slice(a);
                            head.extend_from_slice(b"\r\n");
                        }
                        w.write_all(&head).await.map_err(io)?;
                        drop(payload);
                        Pending {
                            what: What::Restore { db, key },
                            _permit: Some(permit),
                        }
                    }
                    Op::Function { payload, permit } => {
                        resp::encode(&mut head, &[b"FUNCTION", b"RESTORE", &payload, b"REPLACE"]);
                        w.write_all(&head).await.map_err(io)?;
                        Pending {
                            what: What::Function,
                            _permit: Some(permit),
                        }
                    }
                };
                sent.push(pending);
            }
            if pending_tx.send(sent).is_err() {
                break; // the reader failed; its error is reported
            }
            if ops.is_empty() {
                w.flush().await.map_err(io)?;
            }
        }
        w.flush().await.map_err(io)?;
        drop(pending_tx);
        Ok::<_, capsule_core::Error>(w.into_inner())
    };
    let reading = async {
        let mut stats = SendStats::default();
        while let Some(batch) = pending_rx.recv().await {
            for p in batch {
                let reply = read(&mut reader, &endpoint).await?;
                match (reply, p.what) {
                    (Reply::Error(e), What::Restore { db, key }) => {
                        return Err(engine_error(
                            &endpoint,
                            &format!("RESTORE of key \"{}\" in db {db}", show_key(&key)),
                            e,
                        ));
                    }
                    (Reply::Error(e), What::Select(db)) => {
                        return Err(engine_error(&endpoint, &format!("SELECT {db}"), e));
                    }
                    (Reply::Error(e), What::Function) => {
                        return Err(engine_error(&endpoint, "FUNCTION RESTORE", e));
                    }
                    (_, What::Restore { db, .. }) => *stats.restored.entry(db).or_default() += 1,
                    (_, What::Function) => stats.functions += 1,
                    (_, What::Select(_)) => {}
                }
            }
        }
        Ok(stats)
    };
    let (_writer, stats) = tokio::try_join!(writing, reading)?;
    Ok(stats)
}

async fn read(reader: &mut Reader, endpoint: &str) -> Result<Reply> {
    use tokio::io::AsyncBufReadExt;
    // Nearly every reply is `+OK`: take it straight from the buffer.
    let buf = reader
        .fill_buf()
        .await
        .map_err(|e| engine_error(endpoint, "reading RESTORE replies", e))?;
    if buf.starts_with(b"+OK\r\n") {
        reader.consume(5);
        return Ok(Reply::Simple(String::new()));
    }
    resp::read_reply(reader)
        .await
        .map_err(|e| engine_error(endpoint, "reading RESTORE replies", e))
}
