//! Writing RDB: a sans-I/O encoder (the caller moves the bytes), and the
//! `DUMP` payload framing.

use super::crc64::{Crc64, crc64};
use super::error::RdbError;
use super::opcode;

/// Appends a length-encoded `n` to `out`.
pub(crate) fn put_len(out: &mut Vec<u8>, n: u64) {
    if n < 1 << 6 {
        out.push(n as u8);
    } else if n < 1 << 14 {
        out.push(0x40 | (n >> 8) as u8);
        out.push(n as u8);
    } else if n <= u32::MAX as u64 {
        out.push(0x80);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Appends `s` as a plain (uncompressed) length-prefixed string.
pub(crate) fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_len(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Writes an RDB file: header, aux fields, databases, entries, and the end
/// with its CRC-64. Bytes accumulate in an internal buffer that the caller
/// drains with [`RdbWriter::take`] and writes wherever it likes.
#[derive(Debug)]
pub struct RdbWriter {
    out: Vec<u8>,
    crc: Crc64,
    written: u64,
}

impl RdbWriter {
    /// Starts an RDB of `version` (`REDIS` and four digits).
    pub fn new(version: u32) -> Self {
        let mut w = RdbWriter {
            out: Vec::with_capacity(64 * 1024),
            crc: Crc64::new(),
            written: 0,
        };
        w.push(format!("REDIS{version:04}").as_bytes());
        w
    }

    fn push(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        self.written += bytes.len() as u64;
        self.out.extend_from_slice(bytes);
    }

    fn push_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        let from = self.out.len();
        f(&mut self.out);
        self.crc.update(&self.out[from..]);
        self.written += (self.out.len() - from) as u64;
    }

    /// An auxiliary field.
    pub fn aux(&mut self, key: &[u8], value: &[u8]) {
        self.push_with(|o| {
            o.push(opcode::AUX);
            put_string(o, key);
            put_string(o, value);
        });
    }

    /// Switches to database `db`.
    pub fn select_db(&mut self, db: u64) {
        self.push_with(|o| {
            o.push(opcode::SELECTDB);
            put_len(o, db);
        });
    }

    /// A key with its value: `value` is the type byte followed by the
    /// value's encoding (a `DUMP` payload without its footer).
    pub fn entry(&mut self, key: &[u8], expire_ms: Option<i64>, value: &[u8]) {
        let Some((&value_type, encoding)) = value.split_first() else {
            return;
        };
        self.entry_head(key, expire_ms, value_type);
        self.push(encoding);
    }

    /// The start of an entry (expiry, type, key) whose encoding the caller
    /// writes itself after [`RdbWriter::take`], declaring it with
    /// [`RdbWriter::account`]: a large value is then never copied.
    pub fn entry_head(&mut self, key: &[u8], expire_ms: Option<i64>, value_type: u8) {
        self.push_with(|o| {
            if let Some(ms) = expire_ms {
                o.push(opcode::EXPIRETIME_MS);
                o.extend_from_slice(&ms.to_le_bytes());
            }
            o.push(value_type);
            put_string(o, key);
        });
    }

    /// Counts (and checksums) `bytes` the caller wrote itself.
    pub fn account(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        self.written += bytes.len() as u64;
    }

    /// Raw records copied as they are (function libraries from a
    /// `FUNCTION DUMP` payload without its footer).
    pub fn raw(&mut self, records: &[u8]) {
        self.push(records);
    }

    /// Ends the file: the EOF opcode and the CRC-64 of everything before.
    pub fn finish(&mut self) {
        self.push(&[opcode::EOF]);
        let crc = self.crc.value();
        self.out.extend_from_slice(&crc.to_le_bytes());
        self.written += 8;
    }

    /// Bytes encoded since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.out, Vec::with_capacity(64 * 1024))
    }

    /// Bytes buffered and not yet taken.
    pub fn buffered(&self) -> usize {
        self.out.len()
    }

    /// Total bytes encoded.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// Turns `value` (type byte and encoding) into a `DUMP` payload in place:
/// appends the RDB version (2 bytes, little-endian) and the CRC-64 of
/// everything before it (8 bytes, little-endian).
pub fn dump_payload(mut value: Vec<u8>, version: u16) -> Vec<u8> {
    value.extend_from_slice(&version.to_le_bytes());
    let crc = crc64(&value);
    value.extend_from_slice(&crc.to_le_bytes());
    value
}

/// Checks a `DUMP` payload's footer and returns the value (type byte and
/// encoding) and its RDB version.
///
/// The value is empty only where the footer is all there is: `FUNCTION
/// DUMP` of a server without libraries. A key's value is never empty;
/// callers that split one check that.
///
/// # Errors
/// [`RdbError::Corrupt`] when it is shorter than its footer or its CRC
/// does not match.
pub fn split_dump_payload(payload: &[u8]) -> Result<(&[u8], u16), RdbError> {
    if payload.len() < 10 {
        return Err(RdbError::corrupt(0, "DUMP payload shorter than its footer"));
    }
    let (body, crc) = payload.split_at(payload.len() - 8);
    let want = u64::from_le_bytes(crc.try_into().expect("8 bytes"));
    if crc64(body) != want {
        return Err(RdbError::corrupt(
            (payload.len() - 8) as u64,
            "DUMP payload checksum mismatch",
        ));
    }
    let (value, version) = body.split_at(body.len() - 2);
    Ok((value, u16::from_le_bytes([version[0], version[1]])))
}
