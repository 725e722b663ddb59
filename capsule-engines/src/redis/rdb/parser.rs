//! The streaming RDB parser: one item at a time from any `Read`.

use std::io::Read;

use super::error::RdbError;
use super::source::Source;
use super::{MAX_RDB_VERSION, opcode, vtype};

/// Limits and mode of a parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParseOptions {
    /// Keep each value's raw encoding in [`RdbEntry::value`] (for
    /// `RESTORE`); otherwise values are only checked and checksummed.
    pub capture_values: bool,
    /// Largest captured value (type byte and encoding), default 512 MiB
    /// (Redis's `proto-max-bulk-len`, so `RESTORE` could take it).
    pub max_value_bytes: u64,
    /// Largest key, default 512 MiB.
    pub max_key_bytes: u64,
    /// Largest aux field name or value, default 16 MiB.
    pub max_aux_bytes: u64,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            capture_values: false,
            max_value_bytes: 512 << 20,
            max_key_bytes: 512 << 20,
            max_aux_bytes: 16 << 20,
        }
    }
}

impl ParseOptions {
    /// Captures (or skips) values.
    pub fn with_capture_values(mut self, capture: bool) -> Self {
        self.capture_values = capture;
        self
    }
    /// Sets the largest captured value.
    pub fn with_max_value_bytes(mut self, max: u64) -> Self {
        self.max_value_bytes = max;
        self
    }
}

/// One key and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RdbEntry {
    /// The database it belongs to.
    pub db: u64,
    /// The key, decoded.
    pub key: Vec<u8>,
    /// The value's type byte (see [`type_name`](super::type_name)).
    pub value_type: u8,
    /// Absolute expiry in Unix milliseconds.
    pub expire_ms: Option<i64>,
    /// LRU idle time in seconds, when the file has it.
    pub lru_idle: Option<u64>,
    /// LFU frequency, when the file has it.
    pub lfu_freq: Option<u8>,
    /// The type byte and the value's raw encoding, when capturing.
    pub value: Option<Vec<u8>>,
    /// Size of the type byte and the value's encoding.
    pub value_len: u64,
}

/// What the parser found next.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RdbItem {
    /// An auxiliary field (`redis-ver`, `ctime`, …).
    Aux {
        /// Field name.
        key: Vec<u8>,
        /// Field value.
        value: Vec<u8>,
    },
    /// The following entries belong to this database.
    SelectDb(u64),
    /// Size hints of the current database.
    ResizeDb {
        /// Keys.
        keys: u64,
        /// Keys with an expiry.
        expires: u64,
    },
    /// A key and its value.
    Entry(RdbEntry),
    /// A function library; when capturing, its raw record (opcode and
    /// code), the unit `FUNCTION RESTORE` payloads are made of.
    Function {
        /// The raw record, when capturing.
        raw: Option<Vec<u8>>,
    },
    /// Module auxiliary data (skipped: `RESTORE` cannot carry it).
    ModuleAux {
        /// The module's id.
        module_id: u64,
    },
    /// Per-slot sizes (cluster mode; skipped).
    SlotInfo,
    /// The end of the RDB, its checksum checked.
    End {
        /// The CRC-64 stored in the trailer (0 when the server had
        /// `rdbchecksum no`, or before version 5).
        checksum: u64,
        /// Whether it was compared (false when it is 0).
        verified: bool,
    },
}

/// Reads an RDB item by item. Memory: a 256 KiB buffer, plus the current
/// key and (when capturing) value.
pub struct RdbParser<R> {
    pub(super) src: Source<R>,
    version: u32,
    options: ParseOptions,
    db: u64,
    expire_ms: Option<i64>,
    lru_idle: Option<u64>,
    lfu_freq: Option<u8>,
    done: bool,
}

impl<R: Read> RdbParser<R> {
    /// Reads the header (`REDIS` and a four-digit version) of `reader`.
    ///
    /// # Errors
    /// [`RdbError::Corrupt`] when it is not an RDB;
    /// [`RdbError::Unsupported`] for versions above [`MAX_RDB_VERSION`].
    pub fn new(reader: R, options: ParseOptions) -> Result<Self, RdbError> {
        let mut src = Source::new(reader);
        let head = src.take(9)?;
        if &head[..5] != b"REDIS" || !head[5..].iter().all(u8::is_ascii_digit) {
            return Err(RdbError::corrupt(0, "not an RDB file (no REDIS header)"));
        }
        let version: u32 = std::str::from_utf8(&head[5..])
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if version == 0 {
            return Err(RdbError::corrupt(5, "RDB version 0"));
        }
        if version > MAX_RDB_VERSION {
            return Err(RdbError::unsupported(
                5,
                format!(
                    "RDB version {version} is newer than this capsule reads (up to {MAX_RDB_VERSION})"
                ),
            ));
        }
        Ok(RdbParser {
            src,
            version,
            options,
            db: 0,
            expire_ms: None,
            lru_idle: None,
            lfu_freq: None,
            done: false,
        })
    }

    /// The RDB version from the header.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.src.offset()
    }

    /// The next item; `None` after [`RdbItem::End`].
    ///
    /// # Errors
    /// [`RdbError`] naming the offset of the fault; the parser should not
    /// be used after an error.
    pub fn next_item(&mut self) -> Result<Option<RdbItem>, RdbError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let at = self.src.offset();
            let op = self.src.byte()?;
            match op {
                opcode::EOF => return self.end(at).map(Some),
                opcode::SELECTDB => {
                    self.db = self.src.len()?;
                    return Ok(Some(RdbItem::SelectDb(self.db)));
                }
                opcode::RESIZEDB => {
                    let keys = self.src.len()?;
                    let expires = self.src.len()?;
                    return Ok(Some(RdbItem::ResizeDb { keys, expires }));
                }
                opcode::AUX => {
                    let key = self.src.string(self.options.max_aux_bytes, "aux field")?;
                    let value = self.src.string(self.options.max_aux_bytes, "aux value")?;
                    return Ok(Some(RdbItem::Aux { key, value }));
                }
                opcode::EXPIRETIME_MS => self.expire_ms = Some(self.src.u64_le()? as i64),
                opcode::EXPIRETIME => {
                    let v = self.src.take(4)?;
                    let secs = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                    self.expire_ms = Some(secs as i64 * 1000);
                }
                opcode::IDLE => self.lru_idle = Some(self.src.len()?),
                opcode::FREQ => self.lfu_freq = Some(self.src.byte()?),
                opcode::FUNCTION2 => {
                    if self.options.capture_values {
                        self.src
                            .start_recording(self.options.max_value_bytes as usize, 4096);
                        self.src.push_recorded(op);
                    }
                    self.src.skip_string()?;
                    let raw = self.src.take_recording();
                    return Ok(Some(RdbItem::Function { raw }));
                }
                opcode::FUNCTION_PRE_GA => {
                    return Err(RdbError::unsupported(
                        at,
                        "functions of the Redis 7.0 release candidates",
                    ));
                }
                opcode::MODULE_AUX => {
                    let module_id = self.src.len()?;
                    let when_op = self.src.len()?;
                    if when_op != 2 {
                        return Err(RdbError::corrupt(at, "module aux data without its 'when'"));
                    }
                    let _when = self.src.len()?;
                    self.skip_module_value()?;
                    return Ok(Some(RdbItem::ModuleAux { module_id }));
                }
                opcode::SLOT_INFO => {
                    for _ in 0..3 {
                        self.src.len()?;
                    }
                    return Ok(Some(RdbItem::SlotInfo));
                }
                t if t <= vtype::HASH_LISTPACK_EX => return self.entry(t, at).map(Some),
                t => {
                    return Err(RdbError::corrupt(
                        at,
                        format!("unknown opcode or value type {t}"),
                    ));
                }
            }
        }
    }

    fn entry(&mut self, value_type: u8, at: u64) -> Result<RdbItem, RdbError> {
        let key = self.src.string(self.options.max_key_bytes, "key")?;
        let start = self.src.offset();
        if self.options.capture_values {
            self.src
                .start_recording(self.options.max_value_bytes as usize, 256);
            self.src.push_recorded(value_type);
        }
        self.skip_value(value_type, at)?;
        let value = self.src.take_recording();
        Ok(RdbItem::Entry(RdbEntry {
            db: self.db,
            key,
            value_type,
            expire_ms: self.expire_ms.take(),
            lru_idle: self.lru_idle.take(),
            lfu_freq: self.lfu_freq.take(),
            value,
            value_len: self.src.offset() - start + 1,
        }))
    }

    fn end(&mut self, _at: u64) -> Result<RdbItem, RdbError> {
        self.done = true;
        let computed = self.src.crc();
        let mut checksum = 0;
        let mut verified = false;
        if self.version >= 5 {
            let at = self.src.offset();
            checksum = self.src.u64_le()?;
            if checksum != 0 {
                if checksum != computed {
                    return Err(RdbError::corrupt(
                        at,
                        format!(
                            "RDB checksum mismatch: trailer {checksum:016x}, computed {computed:016x}"
                        ),
                    ));
                }
                verified = true;
            }
        }
        let at = self.src.offset();
        if !self.src.at_end()? {
            return Err(RdbError::corrupt(at, "bytes after the end of the RDB"));
        }
        Ok(RdbItem::End { checksum, verified })
    }
}
