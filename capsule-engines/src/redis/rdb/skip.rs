//! Walking a value's structure without decoding it: enough to find where
//! it ends (and, for streams and modules, to check its framing), while
//! every byte goes through the checksum and, when capturing, the recorder.

use std::io::Read;

use super::error::RdbError;
use super::parser::RdbParser;
use super::vtype::*;

/// Module value opcodes.
const MODULE_EOF: u64 = 0;
const MODULE_SINT: u64 = 1;
const MODULE_UINT: u64 = 2;
const MODULE_FLOAT: u64 = 3;
const MODULE_DOUBLE: u64 = 4;
const MODULE_STRING: u64 = 5;

/// Length of a raw stream id (ms and sequence, big-endian).
const STREAM_ID: u64 = 16;

impl<R: Read> RdbParser<R> {
    /// Skips one value of `value_type` (its type byte already read at `at`).
    pub(super) fn skip_value(&mut self, value_type: u8, at: u64) -> Result<(), RdbError> {
        let src = &mut self.src;
        match value_type {
            STRING
            | HASH_ZIPMAP
            | LIST_ZIPLIST
            | SET_INTSET
            | ZSET_ZIPLIST
            | HASH_ZIPLIST
            | HASH_LISTPACK
            | ZSET_LISTPACK
            | SET_LISTPACK
            | HASH_LISTPACK_EX_PRE_GA => src.skip_string(),
            LIST | SET | LIST_QUICKLIST => {
                for _ in 0..src.len()? {
                    src.skip_string()?;
                }
                Ok(())
            }
            ZSET => {
                for _ in 0..src.len()? {
                    src.skip_string()?;
                    // A score as text: a length byte, 253-255 for nan/+inf/-inf.
                    let n = src.byte()?;
                    if n < 253 {
                        src.skip(n as u64)?;
                    }
                }
                Ok(())
            }
            ZSET_2 => {
                for _ in 0..src.len()? {
                    src.skip_string()?;
                    src.skip(8)?;
                }
                Ok(())
            }
            HASH => {
                for _ in 0..src.len()? {
                    src.skip_string()?;
                    src.skip_string()?;
                }
                Ok(())
            }
            LIST_QUICKLIST_2 => {
                for _ in 0..src.len()? {
                    let c = src.offset();
                    let container = src.len()?;
                    if container != 1 && container != 2 {
                        return Err(RdbError::corrupt(
                            c,
                            format!("quicklist node container {container}"),
                        ));
                    }
                    src.skip_string()?;
                }
                Ok(())
            }
            HASH_METADATA_PRE_GA | HASH_METADATA => {
                if value_type == HASH_METADATA {
                    src.skip(8)?; // minimum expiry of the fields
                }
                for _ in 0..src.len()? {
                    src.len()?; // field ttl
                    src.skip_string()?;
                    src.skip_string()?;
                }
                Ok(())
            }
            HASH_LISTPACK_EX => {
                src.skip(8)?;
                src.skip_string()
            }
            STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => {
                self.skip_stream(value_type)
            }
            MODULE_2 => {
                self.src.len()?; // module id
                self.skip_module_value()
            }
            MODULE_PRE_GA => Err(RdbError::unsupported(
                at,
                "module values of the pre-4.0 format",
            )),
            t => Err(RdbError::unsupported(at, format!("unknown value type {t}"))),
        }
    }

    fn skip_stream(&mut self, value_type: u8) -> Result<(), RdbError> {
        let src = &mut self.src;
        for _ in 0..src.len()? {
            let at = src.offset();
            let id = src.string(STREAM_ID, "stream node id")?;
            if id.len() as u64 != STREAM_ID {
                return Err(RdbError::corrupt(at, "stream node id not 16 bytes"));
            }
            src.skip_string()?; // the node's listpack
        }
        src.len()?; // length
        src.len()?; // last id ms
        src.len()?; // last id seq
        if value_type >= STREAM_LISTPACKS_2 {
            for _ in 0..5 {
                // first id, max deleted id, entries added
                src.len()?;
            }
        }
        for _ in 0..src.len()? {
            src.skip_string()?; // group name
            src.len()?; // last id ms
            src.len()?; // last id seq
            if value_type >= STREAM_LISTPACKS_2 {
                src.len()?; // entries read
            }
            for _ in 0..src.len()? {
                src.skip(STREAM_ID + 8)?; // id, delivery time
                src.len()?; // delivery count
            }
            for _ in 0..src.len()? {
                src.skip_string()?; // consumer name
                src.skip(8)?; // seen time
                if value_type >= STREAM_LISTPACKS_3 {
                    src.skip(8)?; // active time
                }
                let pending = src.len()?;
                src.skip(pending.saturating_mul(STREAM_ID))?;
            }
        }
        Ok(())
    }

    /// Skips a module value: typed fields until the EOF opcode.
    pub(super) fn skip_module_value(&mut self) -> Result<(), RdbError> {
        let src = &mut self.src;
        loop {
            let at = src.offset();
            match src.len()? {
                MODULE_EOF => return Ok(()),
                MODULE_SINT | MODULE_UINT => {
                    src.len()?;
                }
                MODULE_FLOAT => src.skip(4)?,
                MODULE_DOUBLE => src.skip(8)?,
                MODULE_STRING => src.skip_string()?,
                op => {
                    return Err(RdbError::corrupt(
                        at,
                        format!("unknown module value opcode {op}"),
                    ));
                }
            }
        }
    }
}
