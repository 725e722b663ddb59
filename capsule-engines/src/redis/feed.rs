//! The restore's producer: a blocking thread parsing the RDB stream and
//! encoding each entry as a `RESTORE` (its raw value plus version and
//! CRC-64: the `DUMP` payload), or, for a string, as the cheaper `SET`
//! (strings without an expiry gathered into one `MSET` per batch), each
//! function library as a `FUNCTION RESTORE`, skipping keys that have
//! expired by now. Commands are encoded
//! straight into batches of RESP bytes, so the connection task only writes
//! them; memory in flight is bounded by a byte semaphore: a batch holds
//! permits for its bytes until the server answered all of it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use capsule_core::ByteStream;
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::rdb::{Crc64, ParseOptions, RdbError, RdbItem, RdbParser, string_bytes};
use super::resp;
use super::stream::{CHANNEL_DEPTH, ChannelRead};

/// Keys (and `SELECT`s, function libraries) sent to the writer together
/// (one channel hand-over, one wake-up, one release of permits); also the
/// most keys one `MSET` carries.
const BATCH_OPS: usize = 256;
/// Bytes after which a batch is handed over early.
const BATCH_BYTES: usize = 1 << 20;

/// Strings stored in more bytes than this go as `RESTORE`: decoding one
/// for `SET` would hold it twice, for a saving that only shows on small
/// values (a command's fixed cost).
const SET_MAX_BYTES: usize = 64 * 1024;

/// Strings expiring sooner than this after they are read go as
/// `RESTORE`, whose `ABSTTL` creates nothing once passed (the server's
/// clock may run ahead of capsule's, and a batch waits for its turn).
const SET_EXPIRY_MARGIN_MS: i64 = 60_000;

/// Keys expiring this far after the restore started are tracked by the
/// second, so a later count can tell "expired since" from "missing".
const EXPIRY_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// What the producer hands the connection task.
pub(crate) enum Op {
    /// The RDB's version, sent before anything else.
    Header(u32),
    /// Encoded commands.
    Batch(Batch),
}

/// Commands encoded as RESP, and what each one is (to read the replies).
pub(crate) struct Batch {
    /// The commands, back to back.
    pub(crate) bytes: Bytes,
    /// One entry per command, in order.
    pub(crate) commands: Vec<Command>,
    /// Permits for `bytes`, held until every reply was read.
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// One command of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// `SELECT db`.
    Select(u64),
    /// A key's `RESTORE key ttl payload REPLACE [ABSTTL] [IDLETIME|FREQ]`
    /// or `SET key value [PXAT ms]`, or the `MSET` of `keys` strings
    /// (`verb`); the (first) key is `bytes[key]` of its batch.
    Key {
        db: u64,
        key: Range<usize>,
        verb: &'static str,
        keys: u64,
    },
    /// `FUNCTION RESTORE payload REPLACE`.
    Function,
}

/// What the producer saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct FeedStats {
    /// Keys sent per database.
    pub(crate) sent: BTreeMap<u64, u64>,
    /// Keys skipped because their expiry had passed, per database.
    pub(crate) expired: BTreeMap<u64, u64>,
    /// Sent keys expiring within a day, by (database, second).
    pub(crate) expiring: BTreeMap<(u64, i64), u64>,
    /// Function libraries (counted by [`census`]; a restore by commands
    /// counts the `FUNCTION RESTORE`s acknowledged).
    pub(crate) functions: u64,
    /// Module aux records skipped.
    pub(crate) module_aux: u64,
    /// The RDB's version.
    pub(crate) version: u32,
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

impl FeedStats {
    /// The RDB's keys per database (`db0`…), live and expired: what its
    /// fingerprint counted at backup.
    pub(crate) fn streamed(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for (db, n) in self.sent.iter().chain(self.expired.iter()) {
            *out.entry(format!("db{db}")).or_default() += n;
        }
        out
    }

    /// Counts a key of `db` expiring at `expire_ms`: expired by `now_ms`
    /// (false: it is skipped), or live (true), tracked by the second when
    /// it expires within a day of `start_ms`.
    fn account(&mut self, db: u64, expire_ms: Option<i64>, now_ms: i64, start_ms: i64) -> bool {
        if expire_ms.is_some_and(|ms| ms <= now_ms) {
            *self.expired.entry(db).or_default() += 1;
            return false;
        }
        if let Some(ms) = expire_ms.filter(|ms| *ms <= start_ms + EXPIRY_WINDOW_MS) {
            *self.expiring.entry((db, ms / 1000)).or_default() += 1;
        }
        *self.sent.entry(db).or_default() += 1;
        true
    }
}

/// Reads a whole RDB from `reader` and counts it as [`produce`] would
/// send it (keys live and expired by now per database, module aux
/// records), without encoding anything: the accounting of a restore by
/// replication, where the target loads the RDB itself. Blocking.
///
/// # Errors
/// The parser's error for a corrupt, truncated or unsupported RDB.
pub(crate) fn census(reader: impl std::io::Read) -> Result<FeedStats, RdbError> {
    let mut parser = RdbParser::new(reader, ParseOptions::default())?;
    let mut stats = FeedStats {
        version: parser.version(),
        ..FeedStats::default()
    };
    let start_ms = chrono::Utc::now().timestamp_millis();
    while let Some(item) = parser.next_item()? {
        match item {
            RdbItem::Entry(e) => {
                stats.account(e.db, e.expire_ms, start_ms, start_ms);
            }
            RdbItem::Function { .. } => stats.functions += 1,
            RdbItem::ModuleAux { .. } => stats.module_aux += 1,
            _ => {}
        }
    }
    stats.bytes = parser.offset();
    stats.complete = true;
    Ok(stats)
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

/// What the producer needs to know besides its input and output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FeedConfig {
    /// Bytes of commands sent and not yet answered, at most.
    pub(crate) max_inflight: usize,
    /// The largest value accepted.
    pub(crate) max_value_bytes: u64,
    /// Whether strings may go as `SET` (the target's user may run it).
    pub(crate) set_strings: bool,
    /// Whether the target takes `SET … PXAT` (Redis 6.2 and later): without
    /// it, strings with an expiry are sent as `RESTORE`s.
    pub(crate) set_pxat: bool,
    /// Whether strings without an expiry may be gathered into `MSET`s (the
    /// user may run it, and the target is no cluster, where the keys of
    /// one `MSET` must share a slot).
    pub(crate) mset: bool,
}

/// Encodes commands into batches and hands them to the writer.
struct Batcher {
    ops: mpsc::Sender<Op>,
    buf: Vec<u8>,
    commands: Vec<Command>,
    /// Keys, `SELECT`s and function libraries in the batch so far.
    items: usize,
    /// The pending `MSET`: its keys and values, encoded.
    mset: Mset,
    version: u16,
    inflight: Arc<Semaphore>,
    config: FeedConfig,
    runtime: tokio::runtime::Handle,
}

/// Strings without an expiry gathered for one `MSET`: for the server,
/// one command of many keys costs about a fifth less per key than a `SET`
/// each (one dispatch and one reply for them all). The keys of an RDB's
/// database are distinct, so sending them after the other keys of their
/// batch changes nothing.
#[derive(Default)]
struct Mset {
    /// `key value` pairs as bulk strings, back to back.
    args: Vec<u8>,
    /// Where the first key is in `args`.
    first: Range<usize>,
    /// Their database.
    db: u64,
    /// How many keys.
    keys: u64,
}

impl Batcher {
    /// Appends `SELECT db`.
    fn select(&mut self, db: u64) {
        self.close_mset();
        self.buf.extend_from_slice(b"*2\r\n$6\r\nSELECT\r\n");
        resp::bulk_number(&mut self.buf, db);
        self.commands.push(Command::Select(db));
        self.items += 1;
    }

    /// Appends the pending `MSET` (a `SET` for a single key), if any.
    fn close_mset(&mut self) {
        let m = &mut self.mset;
        if m.keys == 0 {
            return;
        }
        if m.keys == 1 {
            self.buf.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
        } else {
            resp::array_header(&mut self.buf, 1 + 2 * m.keys as usize);
            self.buf.extend_from_slice(b"$4\r\nMSET\r\n");
        }
        let at = self.buf.len();
        self.buf.extend_from_slice(&m.args);
        self.commands.push(Command::Key {
            db: m.db,
            key: at + m.first.start..at + m.first.end,
            verb: if m.keys == 1 { "SET" } else { "MSET" },
            keys: m.keys,
        });
        m.args.clear();
        m.keys = 0;
    }

    /// Appends `key` as a bulk string; returns where its bytes are.
    fn key(&mut self, key: &[u8]) -> Range<usize> {
        resp::bulk_header(&mut self.buf, key.len());
        let start = self.buf.len();
        self.buf.extend_from_slice(key);
        let range = start..self.buf.len();
        self.buf.extend_from_slice(b"\r\n");
        range
    }

    /// Appends `RESTORE key ttl payload REPLACE [ABSTTL] [IDLETIME n | FREQ n]`,
    /// the payload being `value`, the RDB version and the CRC-64 of both.
    fn restore(&mut self, db: u64, key: &[u8], entry: &RestoreArgs, value: &[u8]) {
        let extra = usize::from(entry.lru_idle.is_some() || entry.lfu_freq.is_some());
        let n = 5 + usize::from(entry.expire_ms.is_some()) + 2 * extra;
        resp::array_header(&mut self.buf, n);
        self.buf.extend_from_slice(b"$7\r\nRESTORE\r\n");
        let key_range = self.key(key);
        resp::bulk_number(&mut self.buf, entry.expire_ms.unwrap_or(0));
        self.payload(value);
        self.buf.extend_from_slice(b"$7\r\nREPLACE\r\n");
        if entry.expire_ms.is_some() {
            self.buf.extend_from_slice(b"$6\r\nABSTTL\r\n");
        }
        match (entry.lru_idle, entry.lfu_freq) {
            (Some(idle), _) => {
                self.buf.extend_from_slice(b"$8\r\nIDLETIME\r\n");
                resp::bulk_number(&mut self.buf, idle);
            }
            (None, Some(freq)) => {
                self.buf.extend_from_slice(b"$4\r\nFREQ\r\n");
                resp::bulk_number(&mut self.buf, freq);
            }
            _ => {}
        }
        self.commands.push(Command::Key {
            db,
            key: key_range,
            verb: "RESTORE",
            keys: 1,
        });
        self.items += 1;
    }

    /// Appends `SET key value [PXAT ms]` (without an expiry: adds `key
    /// value` to the pending `MSET`, where allowed) when `value` is a
    /// string that command restores exactly: no LRU/LFU hint to carry (only `RESTORE`
    /// takes them), an expiry only where the target takes `PXAT` and at
    /// least [`SET_EXPIRY_MARGIN_MS`] after `now_ms` (a `RESTORE` whose
    /// `ABSTTL` has passed creates nothing; a `SET` whose `PXAT` has
    /// passed may create the key, already expired). For the
    /// server, a `SET` costs about a fifth less than the `RESTORE` of the
    /// same string (no payload to check and load). False when `RESTORE`
    /// must carry it, including a string that does not decode (the server
    /// judges its `RESTORE` and names the key if it refuses it).
    fn set(&mut self, db: u64, key: &[u8], entry: &RestoreArgs, value: &[u8], now_ms: i64) -> bool {
        let expiry_ok = |ms: i64| self.config.set_pxat && ms > now_ms + SET_EXPIRY_MARGIN_MS;
        if !self.config.set_strings
            || value.len() > SET_MAX_BYTES
            || entry.lru_idle.is_some()
            || entry.lfu_freq.is_some()
            || entry.expire_ms.is_some_and(|ms| !expiry_ok(ms))
        {
            return false;
        }
        let Ok(Some(string)) = string_bytes(value, self.config.max_value_bytes) else {
            return false;
        };
        self.items += 1;
        if self.config.mset && entry.expire_ms.is_none() {
            let m = &mut self.mset;
            resp::bulk_header(&mut m.args, key.len());
            if m.keys == 0 {
                m.db = db;
                m.first = m.args.len()..m.args.len() + key.len();
            }
            m.args.extend_from_slice(key);
            m.args.extend_from_slice(b"\r\n");
            resp::bulk_header(&mut m.args, string.len());
            m.args.extend_from_slice(&string);
            m.args.extend_from_slice(b"\r\n");
            m.keys += 1;
            return true;
        }
        resp::array_header(
            &mut self.buf,
            3 + 2 * usize::from(entry.expire_ms.is_some()),
        );
        self.buf.extend_from_slice(b"$3\r\nSET\r\n");
        let key_range = self.key(key);
        resp::bulk_header(&mut self.buf, string.len());
        self.buf.extend_from_slice(&string);
        self.buf.extend_from_slice(b"\r\n");
        if let Some(ms) = entry.expire_ms {
            self.buf.extend_from_slice(b"$4\r\nPXAT\r\n");
            resp::bulk_number(&mut self.buf, ms);
        }
        self.commands.push(Command::Key {
            db,
            key: key_range,
            verb: "SET",
            keys: 1,
        });
        true
    }

    /// Appends `FUNCTION RESTORE payload REPLACE`.
    fn function(&mut self, value: &[u8]) {
        self.buf
            .extend_from_slice(b"*4\r\n$8\r\nFUNCTION\r\n$7\r\nRESTORE\r\n");
        self.payload(value);
        self.buf.extend_from_slice(b"$7\r\nREPLACE\r\n");
        self.commands.push(Command::Function);
        self.items += 1;
    }

    /// The `DUMP` payload of `value` as a bulk string (what `dump_payload`
    /// builds, written in place).
    fn payload(&mut self, value: &[u8]) {
        let version = self.version.to_le_bytes();
        let mut crc = Crc64::new();
        crc.update(value);
        crc.update(&version);
        resp::bulk_header(&mut self.buf, value.len() + version.len() + 8);
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(&version);
        self.buf.extend_from_slice(&crc.value().to_le_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// Takes permits for the batch (waiting for earlier batches to be
    /// answered) and hands it over; false once the writer is gone.
    fn flush(&mut self) -> bool {
        self.close_mset();
        self.items = 0;
        if self.commands.is_empty() {
            return true;
        }
        // The permits count the allocation, not only the bytes used.
        let n = self
            .buf
            .capacity()
            .clamp(1, self.config.max_inflight.max(1))
            .min(u32::MAX as usize) as u32;
        let permit = match self.inflight.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => match self
                .runtime
                .block_on(self.inflight.clone().acquire_many_owned(n))
            {
                Ok(p) => p,
                Err(_) => return false,
            },
        };
        // The next batch is likely about the size of this one.
        let next = (self.buf.len() + self.buf.len() / 4).clamp(4096, BATCH_BYTES + 64 * 1024);
        let bytes = std::mem::replace(&mut self.buf, Vec::with_capacity(next));
        let commands = std::mem::replace(&mut self.commands, Vec::with_capacity(BATCH_OPS));
        self.ops
            .blocking_send(Op::Batch(Batch {
                bytes: Bytes::from(bytes),
                commands,
                _permit: permit,
            }))
            .is_ok()
    }
}

/// The `RESTORE` arguments of an entry besides its key and value.
struct RestoreArgs {
    expire_ms: Option<i64>,
    lru_idle: Option<u64>,
    lfu_freq: Option<u8>,
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
    ops: mpsc::Sender<Op>,
    inflight: Arc<Semaphore>,
    config: FeedConfig,
    runtime: tokio::runtime::Handle,
) -> Result<FeedStats, RdbError> {
    let options = ParseOptions::default()
        .with_capture_values(true)
        .with_max_value_bytes(config.max_value_bytes);
    let mut parser = RdbParser::new(ChannelRead::new(chunks), options)?;
    let version = parser.version();
    let mut stats = FeedStats::default();
    let start_ms = chrono::Utc::now().timestamp_millis();
    if ops.blocking_send(Op::Header(version)).is_err() {
        return Ok(stats);
    }
    let mut out = Batcher {
        ops,
        buf: Vec::with_capacity(64 * 1024),
        commands: Vec::with_capacity(BATCH_OPS),
        items: 0,
        mset: Mset::default(),
        version: version as u16,
        inflight,
        config,
        runtime,
    };
    // "Now" for the expiry check, read again for each batch: a key that
    // expires within one batch's time is sent, and Redis drops a RESTORE
    // whose ABSTTL has passed.
    let mut now = start_ms;
    while let Some(item) = parser.next_item()? {
        match item {
            RdbItem::SelectDb(db) => out.select(db),
            RdbItem::Entry(e) => {
                if !stats.account(e.db, e.expire_ms, now, start_ms) {
                    continue;
                }
                let args = RestoreArgs {
                    expire_ms: e.expire_ms,
                    lru_idle: e.lru_idle,
                    lfu_freq: e.lfu_freq,
                };
                let value = e.value.as_deref().unwrap_or_default();
                if !out.set(e.db, &e.key, &args, value, now) {
                    out.restore(e.db, &e.key, &args, value);
                }
            }
            RdbItem::Function { raw } => out.function(raw.as_deref().unwrap_or_default()),
            RdbItem::ModuleAux { module_id } => {
                tracing::warn!(
                    module_id,
                    "module aux data cannot be restored with RESTORE; skipped"
                );
                stats.module_aux += 1;
                continue;
            }
            _ => continue,
        }
        if out.items >= BATCH_OPS || out.buf.len() + out.mset.args.len() >= BATCH_BYTES {
            if !out.flush() {
                return Ok(stats);
            }
            now = chrono::Utc::now().timestamp_millis();
        }
    }
    if !out.flush() {
        return Ok(stats);
    }
    stats.bytes = parser.offset();
    stats.complete = true;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::rdb::dump_payload;

    fn batcher() -> (Batcher, mpsc::Receiver<Op>) {
        let (tx, rx) = mpsc::channel(4);
        let b = Batcher {
            ops: tx,
            buf: Vec::new(),
            commands: Vec::new(),
            items: 0,
            mset: Mset::default(),
            version: 10,
            inflight: Arc::new(Semaphore::new(1 << 20)),
            config: FeedConfig {
                max_inflight: 1 << 20,
                max_value_bytes: 1 << 20,
                set_strings: true,
                set_pxat: true,
                mset: false,
            },
            runtime: tokio::runtime::Handle::current(),
        };
        (b, rx)
    }

    /// "Now" for the expiry checks: well before the expiries used.
    const NOW: i64 = 1_700_000_000_000;

    fn plain() -> RestoreArgs {
        RestoreArgs {
            expire_ms: None,
            lru_idle: None,
            lfu_freq: None,
        }
    }

    /// Strings go as `SET` in every encoding (plain, integer, LZF), with
    /// `PXAT` for an expiry; `RESTORE` carries what `SET` cannot.
    #[tokio::test]
    async fn strings_are_sent_as_set_where_it_restores_them_exactly() {
        let (mut b, _rx) = batcher();
        let mut want = Vec::new();
        // Plain, as the parser captures it: type byte, length, bytes.
        assert!(b.set(0, b"k", &plain(), b"\x00\x05hello", NOW));
        resp::encode(&mut want, &[b"SET", b"k", b"hello"]);
        // An integer encoding (0xC1: 16 bits, little endian).
        assert!(b.set(0, b"i", &plain(), &[0x00, 0xC1, 0x39, 0x30], NOW));
        resp::encode(&mut want, &[b"SET", b"i", b"12345"]);
        // LZF: 0xC3, compressed length, raw length, then "aaaaaaaaaa"
        // as a literal and a back reference.
        let lzf = [0x00, 0xC3, 0x05, 0x0A, 0x00, b'a', 0xE0, 0x00, 0x00];
        let decoded = crate::redis::rdb::string_bytes(&lzf, 1 << 20).unwrap();
        assert_eq!(decoded.as_deref(), Some(&b"aaaaaaaaaa"[..]));
        assert!(b.set(2, b"z", &plain(), &lzf, NOW));
        resp::encode(&mut want, &[b"SET", b"z", b"aaaaaaaaaa"]);
        let ttl = RestoreArgs {
            expire_ms: Some(1_795_000_000_123),
            ..plain()
        };
        assert!(b.set(0, b"t", &ttl, b"\x00\x01v", NOW));
        resp::encode(&mut want, &[b"SET", b"t", b"v", b"PXAT", b"1795000000123"]);
        assert_eq!(b.buf, want);
        assert_eq!(
            b.commands
                .iter()
                .map(|c| match c {
                    Command::Key { db, verb, .. } => (*db, *verb),
                    _ => panic!("{c:?}"),
                })
                .collect::<Vec<_>>(),
            [(0, "SET"), (0, "SET"), (2, "SET"), (0, "SET")]
        );

        // What SET cannot carry, or a target without PXAT, or a value
        // that is no string or does not decode: left to RESTORE.
        let idle = RestoreArgs {
            lru_idle: Some(5),
            ..plain()
        };
        let freq = RestoreArgs {
            lfu_freq: Some(3),
            ..plain()
        };
        assert!(!b.set(0, b"k", &idle, b"\x00\x01v", NOW));
        assert!(!b.set(0, b"k", &freq, b"\x00\x01v", NOW));
        assert!(!b.set(0, b"k", &plain(), b"\x02\x01\x01v", NOW), "a set");
        assert!(!b.set(0, b"k", &plain(), b"\x00\x05hel", NOW), "truncated");
        assert!(
            !b.set(0, b"k", &plain(), b"\x00\x01vv", NOW),
            "trailing bytes"
        );
        // An expiry too close to pass a SET PXAT (it might create the key
        // already expired; RESTORE ABSTTL creates nothing).
        let soon = RestoreArgs {
            expire_ms: Some(NOW + SET_EXPIRY_MARGIN_MS),
            ..plain()
        };
        assert!(!b.set(0, b"t", &soon, b"\x00\x01v", NOW));
        let later = RestoreArgs {
            expire_ms: Some(NOW + SET_EXPIRY_MARGIN_MS + 1),
            ..plain()
        };
        assert!(b.set(0, b"t", &later, b"\x00\x01v", NOW));
        b.config.set_strings = false;
        assert!(!b.set(0, b"k", &plain(), b"\x00\x01v", NOW), "SET refused");
        b.config.set_strings = true;
        b.config.set_pxat = false;
        assert!(!b.set(0, b"t", &ttl, b"\x00\x01v", NOW));
        assert!(b.set(0, b"k", &plain(), b"\x00\x01v", NOW));
        let big = crate::redis::rdb::Value::String(vec![b'x'; SET_MAX_BYTES + 1]).encode();
        assert!(!b.set(0, b"k", &plain(), &big, NOW), "a big string");
        b.config.max_value_bytes = 4;
        assert!(
            !b.set(0, b"k", &plain(), b"\x00\x05hello", NOW),
            "over the limit"
        );
        assert_eq!(b.commands.len(), 6);
    }

    /// Strings without an expiry wait for one `MSET` per batch and
    /// database, after the batch's other commands; a lone one is a `SET`.
    #[tokio::test]
    async fn strings_without_expiry_are_gathered_into_one_mset() {
        let (mut b, _rx) = batcher();
        b.config.mset = true;
        let value = b"\x00\x01v".to_vec();
        let ttl = RestoreArgs {
            expire_ms: Some(1_795_000_000_123),
            ..plain()
        };
        assert!(b.set(0, b"a", &plain(), b"\x00\x011", NOW));
        b.restore(0, b"h", &plain(), b"\x04\x00");
        assert!(b.set(0, b"t", &ttl, &value, NOW));
        assert!(b.set(0, b"b\r\n", &plain(), b"\x00\x022x", NOW));
        b.select(1);
        assert!(b.set(1, b"c", &plain(), b"\x00\x013", NOW));
        assert_eq!(b.items, 6);
        b.close_mset();

        let mut want = Vec::new();
        resp::encode(
            &mut want,
            &[
                b"RESTORE",
                b"h",
                b"0",
                &dump_payload(b"\x04\x00".to_vec(), 10),
                b"REPLACE",
            ],
        );
        resp::encode(&mut want, &[b"SET", b"t", b"v", b"PXAT", b"1795000000123"]);
        resp::encode(&mut want, &[b"MSET", b"a", b"1", b"b\r\n", b"2x"]);
        resp::encode(&mut want, &[b"SELECT", b"1"]);
        resp::encode(&mut want, &[b"SET", b"c", b"3"]);
        assert_eq!(
            String::from_utf8_lossy(&b.buf),
            String::from_utf8_lossy(&want)
        );
        let summary: Vec<_> = b
            .commands
            .iter()
            .map(|c| match c {
                Command::Key {
                    db,
                    key,
                    verb,
                    keys,
                } => {
                    format!("{verb} {db} {} {keys}", b.buf[key.clone()].escape_ascii())
                }
                Command::Select(db) => format!("SELECT {db}"),
                Command::Function => "FUNCTION".into(),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "RESTORE 0 h 1",
                "SET 0 t 1",
                "MSET 0 a 2",
                "SELECT 1",
                "SET 1 c 1"
            ]
        );
    }

    /// The commands encoded in place are byte for byte what the generic
    /// RESP encoder makes of the same arguments.
    #[tokio::test]
    async fn encodes_what_resp_encode_would() {
        let (mut b, _rx) = batcher();
        let value = b"\x00\x05hello".to_vec();
        let payload = dump_payload(value.clone(), 10);
        let mut want = Vec::new();
        b.select(3);
        resp::encode(&mut want, &[b"SELECT", b"3"]);
        b.restore(3, b"k\r\n1", &plain(), &value);
        resp::encode(
            &mut want,
            &[b"RESTORE", b"k\r\n1", b"0", &payload, b"REPLACE"],
        );
        let ttl = RestoreArgs {
            expire_ms: Some(1_795_000_000_123),
            lru_idle: Some(42),
            lfu_freq: None,
        };
        b.restore(3, b"t", &ttl, &value);
        resp::encode(
            &mut want,
            &[
                b"RESTORE",
                b"t",
                b"1795000000123",
                &payload,
                b"REPLACE",
                b"ABSTTL",
                b"IDLETIME",
                b"42",
            ],
        );
        let lfu = RestoreArgs {
            expire_ms: None,
            lru_idle: None,
            lfu_freq: Some(7),
        };
        b.restore(0, b"", &lfu, b"");
        resp::encode(
            &mut want,
            &[
                b"RESTORE",
                b"",
                b"0",
                &dump_payload(Vec::new(), 10),
                b"REPLACE",
                b"FREQ",
                b"7",
            ],
        );
        b.function(&value);
        resp::encode(&mut want, &[b"FUNCTION", b"RESTORE", &payload, b"REPLACE"]);
        assert_eq!(
            String::from_utf8_lossy(&b.buf),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(b.buf, want);
        let Command::Key { key, .. } = &b.commands[1] else {
            panic!()
        };
        assert_eq!(&b.buf[key.clone()], b"k\r\n1");
        assert_eq!(b.commands.len(), 5);
    }
}
