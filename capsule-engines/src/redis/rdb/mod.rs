//! The RDB format, streamed: a parser that never holds more than one value
//! (and, when asked, not even that), the `DUMP` payload encoding `RESTORE`
//! takes, an encoder for writing RDB files, and Redis's CRC-64.
//!
//! - [`RdbParser`] reads an RDB from any [`std::io::Read`] item by item
//!   (aux fields, database switches, key/value entries, function
//!   libraries, the end with its checksum). Values are skipped structurally
//!   (only their bytes pass through the checksum) or captured as the raw
//!   value encoding, which, with the RDB version and a CRC-64 appended, is
//!   exactly the payload `DUMP` produces and `RESTORE` accepts
//!   ([`dump_payload`]): nothing is decoded or re-encoded on the way.
//! - Every length read from the input is checked against a limit before
//!   anything is allocated for it ([`ParseOptions`]); a corrupt or
//!   truncated input is an [`RdbError`] naming the byte offset, never a
//!   panic.
//! - [`RdbWriter`] writes RDB files (the SCAN/DUMP capture path builds one
//!   from `DUMP` payloads), [`Value`] encodes and decodes plain values (used
//!   by tests and tools).

mod crc64;
mod error;
mod lzf;
mod parser;
mod skip;
mod source;
mod value;
mod writer;

pub use crc64::{Crc64, crc64};
pub use error::RdbError;
pub use parser::{ParseOptions, RdbEntry, RdbItem, RdbParser};
pub use value::Value;
pub(crate) use value::string_bytes;
pub use writer::{RdbWriter, dump_payload, split_dump_payload};

/// The highest RDB version this parser understands (Redis 7.4 and 8.x
/// write 12).
pub const MAX_RDB_VERSION: u32 = 12;

/// Opcodes between entries.
pub(crate) mod opcode {
    /// Per-slot sizes (cluster mode).
    pub const SLOT_INFO: u8 = 0xF4;
    /// A function library (Redis 7 functions).
    pub const FUNCTION2: u8 = 0xF5;
    /// Function library of the 7.0 release candidates.
    pub const FUNCTION_PRE_GA: u8 = 0xF6;
    /// Module auxiliary data.
    pub const MODULE_AUX: u8 = 0xF7;
    /// LRU idle time of the next key.
    pub const IDLE: u8 = 0xF8;
    /// LFU frequency of the next key.
    pub const FREQ: u8 = 0xF9;
    /// An auxiliary field (name, value).
    pub const AUX: u8 = 0xFA;
    /// Hash table size hints of the current database.
    pub const RESIZEDB: u8 = 0xFB;
    /// Expiry of the next key in milliseconds.
    pub const EXPIRETIME_MS: u8 = 0xFC;
    /// Expiry of the next key in seconds.
    pub const EXPIRETIME: u8 = 0xFD;
    /// Switch to a database.
    pub const SELECTDB: u8 = 0xFE;
    /// End of the file; the CRC-64 follows (version 5 and later).
    pub const EOF: u8 = 0xFF;
}

/// Value types (the byte before each key).
pub(crate) mod vtype {
    pub const STRING: u8 = 0;
    pub const LIST: u8 = 1;
    pub const SET: u8 = 2;
    pub const ZSET: u8 = 3;
    pub const HASH: u8 = 4;
    pub const ZSET_2: u8 = 5;
    pub const MODULE_PRE_GA: u8 = 6;
    pub const MODULE_2: u8 = 7;
    pub const HASH_ZIPMAP: u8 = 9;
    pub const LIST_ZIPLIST: u8 = 10;
    pub const SET_INTSET: u8 = 11;
    pub const ZSET_ZIPLIST: u8 = 12;
    pub const HASH_ZIPLIST: u8 = 13;
    pub const LIST_QUICKLIST: u8 = 14;
    pub const STREAM_LISTPACKS: u8 = 15;
    pub const HASH_LISTPACK: u8 = 16;
    pub const ZSET_LISTPACK: u8 = 17;
    pub const LIST_QUICKLIST_2: u8 = 18;
    pub const STREAM_LISTPACKS_2: u8 = 19;
    pub const SET_LISTPACK: u8 = 20;
    pub const STREAM_LISTPACKS_3: u8 = 21;
    pub const HASH_METADATA_PRE_GA: u8 = 22;
    pub const HASH_LISTPACK_EX_PRE_GA: u8 = 23;
    pub const HASH_METADATA: u8 = 24;
    pub const HASH_LISTPACK_EX: u8 = 25;
}

/// The data type a value type byte stores: `string`, `list`, `set`,
/// `zset`, `hash`, `stream`, `module`, or `unknown`.
pub fn type_name(value_type: u8) -> &'static str {
    use vtype::*;
    match value_type {
        STRING => "string",
        LIST | LIST_ZIPLIST | LIST_QUICKLIST | LIST_QUICKLIST_2 => "list",
        SET | SET_INTSET | SET_LISTPACK => "set",
        ZSET | ZSET_2 | ZSET_ZIPLIST | ZSET_LISTPACK => "zset",
        HASH
        | HASH_ZIPMAP
        | HASH_ZIPLIST
        | HASH_LISTPACK
        | HASH_METADATA_PRE_GA
        | HASH_LISTPACK_EX_PRE_GA
        | HASH_METADATA
        | HASH_LISTPACK_EX => "hash",
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => "stream",
        MODULE_PRE_GA | MODULE_2 => "module",
        _ => "unknown",
    }
}

/// The RDB version a Redis server writes and reads, from its version
/// string (`INFO server`'s `redis_version`): 7.0 → 10, 7.2 → 11, 7.4 and
/// 8.x → 12, 5.0–6.2 → 9, 4.0 → 8, 3.2 → 7, older → 6. `None` when the
/// string is not a version.
pub fn rdb_version_for_server(redis_version: &str) -> Option<u32> {
    let mut parts = redis_version.trim().split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some(match (major, minor) {
        (0..=2, _) | (3, 0..=1) => 6,
        (3, _) => 7,
        (4, _) => 8,
        (5 | 6, _) => 9,
        (7, 0..=1) => 10,
        (7, 2..=3) => 11,
        _ => 12,
    })
}

#[cfg(test)]
mod mutation_tests;
#[cfg(test)]
mod tests;
