//! The restore's consumer: writes the producer's commands to one
//! connection, pipelined, and reads the replies in order. The first error
//! reply stops the restore, naming the key and database.

use std::collections::BTreeMap;

use capsule_core::Result;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::client::{Client, Reader, engine_error};
use super::feed::{Batch, Command, Op};
use super::resp::{self, Reply};

/// The reply to nearly every command sent.
const OK: &[u8] = b"+OK\r\n";

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

/// Sends every batch of `ops` over `client` and checks every reply.
///
/// # Errors
/// [`capsule_core::Error::Engine`] with the server's error reply and the
/// key it was about, or a connection failure.
pub(crate) async fn send(client: Client, mut ops: mpsc::Receiver<Op>) -> Result<SendStats> {
    let Client {
        mut reader,
        mut writer,
        endpoint,
        ..
    } = client;
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<Batch>();
    let writing = async {
        let io = |e: std::io::Error| engine_error(&endpoint, "sending restore commands", e);
        while let Some(op) = ops.recv().await {
            let Op::Batch(batch) = op else { continue };
            writer.write_all(&batch.bytes).await.map_err(io)?;
            if sent_tx.send(batch).is_err() {
                break; // the reader failed; its error is reported
            }
        }
        writer.flush().await.map_err(io)?;
        drop(sent_tx);
        Ok::<_, capsule_core::Error>(())
    };
    let reading = async {
        let mut stats = SendStats::default();
        while let Some(batch) = sent_rx.recv().await {
            read_replies(&mut reader, &endpoint, &batch, &mut stats).await?;
            // `batch` (its bytes and permits) is released here.
        }
        Ok(stats)
    };
    let ((), stats) = tokio::try_join!(writing, reading)?;
    Ok(stats)
}

/// Reads the replies to every command of `batch`, counting what was
/// restored; the first error reply fails, naming its command.
async fn read_replies(
    reader: &mut Reader,
    endpoint: &str,
    batch: &Batch,
    stats: &mut SendStats,
) -> Result<()> {
    let failed = |e| engine_error(endpoint, "reading restore replies", e);
    let mut done = 0;
    while done < batch.commands.len() {
        // Nearly every reply is `+OK`: take all those buffered at once.
        let buf = reader.fill_buf().await.map_err(failed)?;
        let oks = buf
            .chunks_exact(OK.len())
            .take(batch.commands.len() - done)
            .take_while(|c| *c == OK)
            .count();
        if oks > 0 {
            for command in &batch.commands[done..done + oks] {
                count(command, stats);
            }
            reader.consume(oks * OK.len());
            done += oks;
            continue;
        }
        let command = &batch.commands[done];
        match resp::read_reply(reader).await.map_err(failed)? {
            Reply::Error(e) => {
                let what = match command {
                    Command::Key {
                        db,
                        key,
                        verb,
                        keys: 1,
                    } => format!(
                        "{verb} of key \"{}\" in db {db}",
                        show_key(&batch.bytes[key.clone()])
                    ),
                    Command::Key {
                        db,
                        key,
                        verb,
                        keys,
                    } => format!(
                        "{verb} of {keys} keys from \"{}\" in db {db}",
                        show_key(&batch.bytes[key.clone()])
                    ),
                    Command::Select(db) => format!("SELECT {db}"),
                    Command::Function => "FUNCTION RESTORE".to_string(),
                };
                return Err(engine_error(endpoint, &what, e));
            }
            _ => count(command, stats),
        }
        done += 1;
    }
    Ok(())
}

fn count(command: &Command, stats: &mut SendStats) {
    match command {
        Command::Key { db, keys, .. } => *stats.restored.entry(*db).or_default() += keys,
        Command::Function => stats.functions += 1,
        Command::Select(_) => {}
    }
}
