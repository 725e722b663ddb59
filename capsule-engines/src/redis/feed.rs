//! The restore's producer: a blocking thread parsing the RDB stream and
//! turning each entry into a `RESTORE` (its raw value plus version and
//! CRC-64: the `DUMP` payload), each function library into a `FUNCTION
//! RESTORE`, skipping keys that have expired by now. Memory in flight is
//! bounded by a byte semaphore: a command holds permits for its payload
//! until the server answered it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use capsule_core::ByteStream;
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::rdb::{ParseOptions, RdbError, RdbItem, RdbParser, dump_payload};
use super::stream::{CHANNEL_DEPTH, ChannelRead};

/// Ops sent to the writer together (one channel hand-over, one wake-up).
const BATCH_OPS: usize = 256;
/// Payload bytes after which a batch is handed over early.
const BATCH_BYTES: usize = 1 << 20;

/// Keys expiring this far after the restore started are tracked by the
/// second, so a later count can tell "expired since" from "missing".
const EXPIRY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// One thing to send.
pub(crate) enum Op {
    /// The RDB's version, sent before anything else.
    Header(u32),
    /// `SELECT db`.
    Select(u64),
    /// `RESTORE key ttl payload REPLACE [ABSTTL] [IDLETIME|FREQ]`.
    Restore {
        db: u64,
        key: Vec<u8>,
        expire_ms: Option<i64>,
        lru_idle: Option<u64>,
        lfu_freq: Option<u8>,
        payload: Vec<u8>,
        permit: OwnedSemaphorePermit,
    },
    /// `FUNCTION RESTORE payload REPLACE`.
    Function {
        payload: Vec<u8>,
        permit: OwnedSemaphorePermit,
    },
}

/// What the producer saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct FeedStats {
    /// `RESTORE`s sent per database.
    pub(crate) sent: BTreeMap<u64, u64>,
    /// Keys skipped because their expiry had passed, per database.
    pub(crate) expired: BTreeMap<u64, u64>,
    /// Sent keys expiring within a day, by (database, second).
    pub(crate) expiring: BTreeMap<(u64, i64), u64>,
    /// Module aux records skipped.
    pub(crate) module_aux: u64,
    /// Bytes of RDB read.
    pub(crate) bytes: u64,
    /// Whether the parser reached the end of the RDB.
    pub(crate) complete: bool,
}

impl FeedStats {
    /// Keys of `db` sent that expire by `now_ms` (plus a second of slack).
    pub(crate) fn expiring_by(&self, db: u64, now_ms: i64) -> u64 {
        self.expiring
            .range((db, i64::MIN)..=(db, now_ms / 1000 + 1))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Copies `stream` into a chunk channel; the task's result says whether
/// the stream ended cleanly (it fails on a checksum mismatch).
pub(crate) fn pump(
    mut stream: ByteStream,
) -> (
    mpsc::Receiver<Bytes>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let task = tokio::spawn(async move {
        loop {
            let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
            let n = stream.read_buf(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            if tx.send(buf.freeze()).await.is_err() {
                return Ok(());
            }
        }
    });
    (rx, task)
}

/// Gathers ops into batches for the writer.
struct Batcher {
    ops: mpsc::Sender<Vec<Op>>,
    batch: Vec<Op>,
    bytes: usize,
}

impl Batcher {
    /// Adds `op` (of `bytes` payload); false once the writer is gone.
    fn push(&mut self, op: Op, bytes: usize) -> bool {
        self.batch.push(op);
        self.bytes += bytes;
        if self.batch.len() >= BATCH_OPS || self.bytes >= BATCH_BYTES {
            self.flush()
        } else {
            true
        }
    }

    /// Hands the batch over; false once the writer is gone.
    fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_OPS));
        self.bytes = 0;
        self.ops.blocking_send(batch).is_ok()
    }
}

/// Parses the RDB arriving on `chunks` and sends [`Op`]s to `ops`, until
/// the end of the RDB or until `ops` is closed. Blocking: run it with
/// `spawn_blocking`.
///
/// # Errors
/// The parser's error (corrupt, truncated, unsupported, a value over
/// `max_value_bytes`).
pub(crate) fn produce(
    chunks: mpsc::Receiver<Bytes>,
    ops: mpsc::Sender<Vec<Op>>,
    inflight: Arc<Semaphore>,
    max_inflight: usize,
    max_value_bytes: u64,
    runtime: tokio::runtime::Handle,
) -> Result<FeedStats, RdbError> {
    let options = ParseOptions::default()
        .with_capture_values(true)
        .with_max_value_bytes(max_value_bytes);
    let mut parser = RdbParser::new(ChannelRead::new(chunks), options)?;
    let version = parser.version();
    let mut stats = FeedStats::default();
    let start_ms = chrono::Utc::now().timestamp_millis();
    let mut out = Batcher {
        ops,
        batch: Vec::with_capacity(BATCH_OPS),
        bytes: 0,
    };
    // Permits for `n` bytes; the batch is handed over before waiting, as
    // the permits it holds come back only once the server answered it.
    let acquire = |out: &mut Batcher, n: usize| -> Option<OwnedSemaphorePermit> {
        let n = n.clamp(1, max_inflight.max(1)).min(u32::MAX as usize) as u32;
        if let Ok(p) = inflight.clone().try_acquire_many_owned(n) {
            return Some(p);
        }
        if !out.flush() {
            return None;
        }
        runtime
            .block_on(inflight.clone().acquire_many_owned(n))
            .ok()
    };
    macro_rules! send {
        ($op:expr, $bytes:expr) => {
            if !out.push($op, $bytes) {
                return Ok(stats);
            }
        };
    }
    send!(Op::Header(version), 0);
    if !out.flush() {
        return Ok(stats);
    }
    while let Some(item) = parser.next_item()? {
        match item {
            RdbItem::SelectDb(db) => send!(Op::Select(db), 0),
            RdbItem::Entry(e) => {
                let now = chrono::Utc::now().timestamp_millis();
                if e.expire_ms.is_some_and(|ms| ms <= now) {
                    *stats.expired.entry(e.db).or_default() += 1;
                    continue;
                }
                if let Some(ms) = e.expire_ms.filter(|ms| *ms <= start_ms + EXPIRY_WINDOW_MS) {
                    *stats.expiring.entry((e.db, ms / 1000)).or_default() += 1;
                }
                let payload = dump_payload(e.value.unwrap_or_default(), version as u16);
                let Some(permit) = acquire(&mut out, payload.len()) else {
                    return Ok(stats);
                };
                *stats.sent.entry(e.db).or_default() += 1;
                let bytes = payload.len();
                send!(
                    Op::Restore {
                        db: e.db,
                        key: e.key,
                        expire_ms: e.expire_ms,
                        lru_idle: e.lru_idle,
                        lfu_freq: e.lfu_freq,
                        payload,
                        permit,
                    },
                    bytes
                );
            }
            RdbItem::Function { raw } => {
                let payload = dump_payload(raw.unwrap_or_default(), version as u16);
                let Some(permit) = acquire(&mut out, payload.len()) else {
                    return Ok(stats);
                };
                let bytes = payload.len();
                send!(Op::Function { payload, permit }, bytes);
            }
            RdbItem::ModuleAux { module_id } => {
                tracing::warn!(
                    module_id,
                    "module aux data cannot be restored with RESTORE; skipped"
                );
                stats.module_aux += 1;
            }
            _ => {}
        }
    }
    if !out.flush() {
        return Ok(stats);
    }
    stats.bytes = parser.offset();
    stats.complete = true;
    Ok(stats)
}
