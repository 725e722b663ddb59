//! Plain values and their simplest RDB encodings, for tests and tools:
//! [`Value::encode`] writes what any Redis since 2.x loads (strings, lists,
//! sets, sorted sets with binary scores, hashes); [`Value::decode`] reads
//! those encodings back. Compact encodings (listpacks, ziplists, intsets)
//! are not decoded here: the engine never needs to, it moves them as they
//! are.

use std::borrow::Cow;

use super::error::RdbError;
use super::parser::ParseOptions;
use super::source::Source;
use super::vtype;
use super::writer::{put_len, put_string};

/// A Redis value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// A string.
    String(Vec<u8>),
    /// A list, in order.
    List(Vec<Vec<u8>>),
    /// A set (members unique).
    Set(Vec<Vec<u8>>),
    /// A sorted set: members (unique) and scores (not NaN).
    SortedSet(Vec<(Vec<u8>, f64)>),
    /// A hash: fields (unique) and values.
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
}

impl Value {
    /// The type byte and the plain encoding: a `DUMP` payload without its
    /// footer (see [`dump_payload`](super::dump_payload)) and an entry's
    /// value in an RDB file.
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::new();
        match self {
            Value::String(s) => {
                o.push(vtype::STRING);
                put_string(&mut o, s);
            }
            Value::List(items) | Value::Set(items) => {
                o.push(if matches!(self, Value::List(_)) {
                    vtype::LIST
                } else {
                    vtype::SET
                });
                put_len(&mut o, items.len() as u64);
                for i in items {
                    put_string(&mut o, i);
                }
            }
            Value::SortedSet(members) => {
                o.push(vtype::ZSET_2);
                put_len(&mut o, members.len() as u64);
                for (m, score) in members {
                    put_string(&mut o, m);
                    o.extend_from_slice(&score.to_le_bytes());
                }
            }
            Value::Hash(fields) => {
                o.push(vtype::HASH);
                put_len(&mut o, fields.len() as u64);
                for (f, v) in fields {
                    put_string(&mut o, f);
                    put_string(&mut o, v);
                }
            }
        }
        o
    }

    /// Decodes a value written in a plain encoding (type byte first).
    ///
    /// # Errors
    /// [`RdbError::Unsupported`] for compact encodings;
    /// [`RdbError::Corrupt`]/[`RdbError::Truncated`] for malformed input
    /// or trailing bytes.
    pub fn decode(value: &[u8]) -> Result<Value, RdbError> {
        // An LZF string decodes to more bytes than it takes (up to ~90
        // times), so the encoding's size is no limit; the output grows
        // only with what the input really produces.
        let limit = ParseOptions::default().max_value_bytes;
        let mut src = Source::with_buffer(value, value.len().min(1 << 16) + 1);
        let t = src.byte()?;
        let v = match t {
            vtype::STRING => Value::String(src.string(limit, "string")?),
            vtype::LIST | vtype::SET => {
                let n = src.len()?;
                let mut items = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    items.push(src.string(limit, "element")?);
                }
                if t == vtype::LIST {
                    Value::List(items)
                } else {
                    Value::Set(items)
                }
            }
            vtype::ZSET | vtype::ZSET_2 => {
                let n = src.len()?;
                let mut members = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    let m = src.string(limit, "member")?;
                    let score = if t == vtype::ZSET_2 {
                        f64::from_le_bytes(src.u64_le()?.to_le_bytes())
                    } else {
                        text_score(&mut src)?
                    };
                    members.push((m, score));
                }
                Value::SortedSet(members)
            }
            vtype::HASH => {
                let n = src.len()?;
                let mut fields = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    let f = src.string(limit, "field")?;
                    fields.push((f, src.string(limit, "value")?));
                }
                Value::Hash(fields)
            }
            t => {
                return Err(RdbError::unsupported(
                    0,
                    format!("decoding value type {t} ({})", super::type_name(t)),
                ));
            }
        };
        let at = src.offset();
        if !src.at_end()? {
            return Err(RdbError::corrupt(at, "bytes after the value"));
        }
        Ok(v)
    }
}

/// The bytes of a string value (its type byte first, as the parser
/// captures it), decoded from any of its encodings (plain, integer, LZF);
/// `None` for a value of another type. A plain string, nearly every one,
/// is borrowed from `value`; lengths over `limit` are refused before
/// anything is allocated for them.
///
/// # Errors
/// [`RdbError::Corrupt`]/[`RdbError::Truncated`] for a malformed string
/// or bytes after it; [`RdbError::TooLarge`] over `limit`.
pub(crate) fn string_bytes(value: &[u8], limit: u64) -> Result<Option<Cow<'_, [u8]>>, RdbError> {
    let Some((&vtype::STRING, encoded)) = value.split_first() else {
        return Ok(None);
    };
    if let Some((len, head)) = plain_length(encoded)
        && head + len == encoded.len()
        && len as u64 <= limit
    {
        return Ok(Some(Cow::Borrowed(&encoded[head..])));
    }
    // Integers, LZF, and anything malformed (which the source names).
    let mut src = Source::with_buffer(value, value.len().min(1 << 16) + 1);
    src.byte()?;
    let s = src.string(limit, "string")?;
    // Compared by offset, not `at_end`: a refill would checksum the bytes
    // read, work a value does not need.
    let at = src.offset();
    if at != value.len() as u64 {
        return Err(RdbError::corrupt(at, "bytes after the value"));
    }
    Ok(Some(Cow::Owned(s)))
}

/// A plain string length at the start of `encoded` (the 6-, 14- and
/// 32-bit forms of [`Source::length`]) and the bytes it takes; `None` for
/// a special encoding, the 64-bit form or too few bytes.
fn plain_length(encoded: &[u8]) -> Option<(usize, usize)> {
    let first = *encoded.first()?;
    match first >> 6 {
        0 => Some(((first & 0x3f) as usize, 1)),
        1 => Some((
            (((first & 0x3f) as usize) << 8) | *encoded.get(1)? as usize,
            2,
        )),
        _ if first == 0x80 => {
            let n = u32::from_be_bytes(encoded.get(1..5)?.try_into().ok()?);
            Some((n as usize, 5))
        }
        _ => None,
    }
}

fn text_score(src: &mut Source<&[u8]>) -> Result<f64, RdbError> {
    let at = src.offset();
    let n = src.byte()?;
    Ok(match n {
        253 => f64::NAN,
        254 => f64::INFINITY,
        255 => f64::NEG_INFINITY,
        n => {
            let text = src.read_vec(n as u64)?;
            std::str::from_utf8(&text)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| RdbError::corrupt(at, "unparsable score"))?
        }
    })
}
