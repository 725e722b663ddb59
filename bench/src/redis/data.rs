//! The benchmark's data: the mixed dataset loaded into the source server,
//! and the files of commands `redis-cli --pipe` replays.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Result, bail};
use capsule_engines::redis::rdb::{ParseOptions, RdbItem, RdbParser, Value, dump_payload};
use test_support::redis::{Redis, RedisClient, Reply};

/// Loads `keys` keys of mixed types: 50% strings of 150 bytes, 20% hashes
/// of 6 fields, 15% lists of 8 elements, 10% sets of 6 members, 5% sorted
/// sets of 5 members; one key in ten with an expiry a day away.
pub(super) fn load(redis: &Redis, keys: u64) -> Result<()> {
    let mut c: RedisClient = redis.client();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Hex of a fresh pseudo-random number every 16 characters: values that
    // LZF (and zstd) cannot shrink much, like real payloads.
    let hex = |n: u64, len: usize| -> Vec<u8> {
        let mut s = String::with_capacity(len + 16);
        let mut y = n | 1;
        while s.len() < len {
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            s.push_str(&format!("{y:016x}"));
        }
        s.truncate(len);
        s.into_bytes()
    };
    const BATCH: u64 = 10_000;
    let mut sent = 0u64;
    for i in 0..keys {
        let key = format!("key:{i:09}").into_bytes();
        let r = rand();
        let v = |j: u64, len| hex(r.rotate_left(j as u32 * 7) ^ j, len);
        match i % 20 {
            0..=9 => c.send(&[b"SET", &key, &v(0, 150)]),
            10..=13 => {
                let fields: Vec<Vec<u8>> = (0..6)
                    .flat_map(|j| [format!("field{j}").into_bytes(), v(j, 16)])
                    .collect();
                let mut args: Vec<&[u8]> = vec![b"HSET", &key];
                args.extend(fields.iter().map(Vec::as_slice));
                c.send(&args);
            }
            14..=16 => {
                let items: Vec<Vec<u8>> = (0..8).map(|j| v(j, 10)).collect();
                let mut args: Vec<&[u8]> = vec![b"RPUSH", &key];
                args.extend(items.iter().map(Vec::as_slice));
                c.send(&args);
            }
            17 | 18 => {
                let items: Vec<Vec<u8>> = (0..6).map(|j| v(j, 9)).collect();
                let mut args: Vec<&[u8]> = vec![b"SADD", &key];
                args.extend(items.iter().map(Vec::as_slice));
                c.send(&args);
            }
            _ => {
                let items: Vec<Vec<u8>> = (0..5)
                    .flat_map(|j| [(j * 3).to_string().into_bytes(), v(j, 8)])
                    .collect();
                let mut args: Vec<&[u8]> = vec![b"ZADD", &key];
                args.extend(items.iter().map(Vec::as_slice));
                c.send(&args);
            }
        }
        sent += 1;
        if i % 10 == 7 {
            c.send(&[b"EXPIRE", &key, b"86400"]);
            sent += 1;
        }
        if sent >= BATCH || i + 1 == keys {
            c.flush();
            for _ in 0..sent {
                if let Reply::Error(e) = c.read() {
                    bail!("loading: {e}");
                }
            }
            sent = 0;
        }
    }
    Ok(())
}

/// Which commands [`write_commands`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Commands {
    /// `RESTORE key ttl payload REPLACE [ABSTTL]` for every key.
    Restore,
    /// What capsule sends for this data: `SET key value PXAT ms` for
    /// strings with an expiry, the strings without one gathered into one
    /// `MSET` at the end of each batch of 256 keys (and `SELECT`s),
    /// `RESTORE` for the rest. Its strings are short (far from capsule's
    /// 1 MiB batch limit), carry no LRU/LFU hint and expire a day away, so
    /// none stays `RESTORE`; it has no function library and no key
    /// expired by the restore, which capsule would count or skip. Should
    /// that change, the restore series fails its check that the server
    /// counted as many `SET`s, `MSET`s and `RESTORE`s for both.
    Capsule,
}

/// Keys (and `SELECT`s) per batch of capsule's restore.
const BATCH_ITEMS: usize = 256;

fn put(w: &mut impl Write, args: &[&[u8]]) -> std::io::Result<()> {
    write!(w, "*{}\r\n", args.len())?;
    for a in args {
        write!(w, "${}\r\n", a.len())?;
        w.write_all(a)?;
        w.write_all(b"\r\n")?;
    }
    Ok(())
}

/// Writes the gathered strings as one `MSET` (a `SET` for one).
fn put_mset(w: &mut impl Write, pending: &mut Vec<(Vec<u8>, Vec<u8>)>) -> std::io::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let verb: &[u8] = if pending.len() == 1 { b"SET" } else { b"MSET" };
    let mut args: Vec<&[u8]> = vec![verb];
    for (k, v) in pending.iter() {
        args.extend([k.as_slice(), v.as_slice()]);
    }
    put(w, &args)?;
    pending.clear();
    Ok(())
}

/// Writes one command per key of the RDB at `rdb` (with `SELECT`s), as
/// RESP, to `out`.
pub(super) fn write_commands(rdb: &Path, out: &Path, commands: Commands) -> Result<()> {
    let input = std::io::BufReader::new(std::fs::File::open(rdb)?);
    let mut parser = RdbParser::new(input, ParseOptions::default().with_capture_values(true))?;
    let version = parser.version() as u16;
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out)?);
    let mut pending: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut items = 0;
    while let Some(item) = parser.next_item()? {
        match item {
            RdbItem::SelectDb(db) => {
                put_mset(&mut w, &mut pending)?;
                put(&mut w, &[b"SELECT", db.to_string().as_bytes()])?;
            }
            RdbItem::Entry(e) => {
                let value = e.value.unwrap_or_default();
                // Only capsule's commands need the value decoded.
                let string = match commands {
                    Commands::Capsule => match Value::decode(&value) {
                        Ok(Value::String(s)) => Some(s),
                        _ => None,
                    },
                    Commands::Restore => None,
                };
                match (string, e.expire_ms) {
                    (Some(s), None) => pending.push((e.key, s)),
                    (Some(s), Some(ms)) => put(
                        &mut w,
                        &[b"SET", &e.key, &s, b"PXAT", ms.to_string().as_bytes()],
                    )?,
                    (None, expiry) => {
                        let payload = dump_payload(value, version);
                        match expiry {
                            Some(ms) => put(
                                &mut w,
                                &[
                                    b"RESTORE",
                                    &e.key,
                                    ms.to_string().as_bytes(),
                                    &payload,
                                    b"REPLACE",
                                    b"ABSTTL",
                                ],
                            )?,
                            None => put(&mut w, &[b"RESTORE", &e.key, b"0", &payload, b"REPLACE"])?,
                        }
                    }
                }
            }
            _ => continue,
        }
        items += 1;
        if items == BATCH_ITEMS {
            put_mset(&mut w, &mut pending)?;
            items = 0;
        }
    }
    put_mset(&mut w, &mut pending)?;
    w.flush()?;
    Ok(())
}
