//! Why an RDB stream could not be read.

use std::io;

/// A parse failure, naming the byte offset in the stream where it was
/// found. Corrupt and truncated input end up here, never in a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RdbError {
    /// The bytes do not form a valid RDB (bad header, opcode, length,
    /// encoding or checksum).
    #[error("offset {offset}: {message}")]
    Corrupt {
        /// Byte offset in the stream.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// The stream ended before the RDB did.
    #[error("offset {offset}: the stream ended before the end of the RDB (truncated)")]
    Truncated {
        /// Bytes read before the end.
        offset: u64,
    },
    /// Valid RDB that this parser cannot handle (a newer version or type).
    #[error("offset {offset}: {message}")]
    Unsupported {
        /// Byte offset in the stream.
        offset: u64,
        /// What is not supported.
        message: String,
    },
    /// A length in the input exceeds the configured limit.
    #[error("offset {offset}: {what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Byte offset in the stream.
        offset: u64,
        /// What was being read (a key, a value, an aux field).
        what: &'static str,
        /// The length found.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// Reading the underlying stream failed.
    #[error("offset {offset}: {error}")]
    Io {
        /// Bytes read before the failure.
        offset: u64,
        /// The I/O error, shown in the message.
        error: io::Error,
    },
}

impl RdbError {
    /// The byte offset the error refers to.
    pub fn offset(&self) -> u64 {
        match self {
            RdbError::Corrupt { offset, .. }
            | RdbError::Truncated { offset }
            | RdbError::Unsupported { offset, .. }
            | RdbError::TooLarge { offset, .. }
            | RdbError::Io { offset, .. } => *offset,
        }
    }

    /// Whether the input itself is at fault (corrupt, truncated or over a
    /// limit), as opposed to an I/O failure or an unsupported feature.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            RdbError::Corrupt { .. } | RdbError::Truncated { .. } | RdbError::TooLarge { .. }
        )
    }

    pub(crate) fn corrupt(offset: u64, message: impl Into<String>) -> Self {
        RdbError::Corrupt {
            offset,
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(offset: u64, message: impl Into<String>) -> Self {
        RdbError::Unsupported {
            offset,
            message: message.into(),
        }
    }
}
