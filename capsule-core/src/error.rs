//! The error type of capsule-core.

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the capsule domain. Each message names
/// what failed and on what (backup id, object, store).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input that cannot be accepted: a malformed id, period, statefile field.
    #[error("{message}")]
    Invalid {
        /// What was being parsed or checked (e.g. "period", "backup id").
        what: String,
        /// A one-line description naming the value at fault.
        message: String,
    },
    /// No backup with this id in the store.
    #[error("backup {id} not found in {store}")]
    BackupNotFound {
        /// The id that was asked for.
        id: String,
        /// The store (credentials stripped).
        store: String,
    },
    /// A statefile exists but cannot be read.
    #[error("backup {id}: statefile unreadable: {reason}")]
    UnreadableStatefile {
        /// The backup folder.
        id: String,
        /// Why it could not be read.
        reason: String,
    },
    /// Stored bytes do not match what the statefile recorded.
    #[error("backup {id}: {object} is corrupt: {reason}")]
    Corrupt {
        /// The backup.
        id: String,
        /// The artifact's object name.
        object: String,
        /// What did not match (checksum, length, compression frame).
        reason: String,
    },
    /// An artifact is encrypted and no identity was given to decrypt it.
    #[error(
        "backup {id}: {object} is encrypted ({encryption}) and no identity was given to decrypt it"
    )]
    IdentityRequired {
        /// The backup.
        id: String,
        /// The artifact's object name.
        object: String,
        /// How it is encrypted: format and recipients' public keys.
        encryption: String,
    },
    /// An encrypted artifact cannot be decrypted with the identities given
    /// (none is one of its recipients).
    #[error("backup {id}: cannot decrypt {object}: {reason}")]
    Decrypt {
        /// The backup.
        id: String,
        /// The artifact's object name.
        object: String,
        /// Why, naming the identities' and the recipients' public keys.
        reason: String,
    },
    /// A status change the state machine does not allow.
    #[error("backup {id}: cannot go from {from} to {to}")]
    InvalidTransition {
        /// The backup.
        id: String,
        /// Current status.
        from: String,
        /// Requested status.
        to: String,
    },
    /// Another writer changed the statefile first.
    #[error("backup {id}: statefile changed by another writer; retry")]
    Conflict {
        /// The backup.
        id: String,
    },
    /// An operation the backup or engine cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// An engine (database tool or server) failed.
    #[error("{context}: {message}")]
    Engine {
        /// What was running, e.g. "backup postgresql-…: pg_dump".
        context: String,
        /// The tool's message, credentials stripped.
        message: String,
    },
    /// A restore drill restored data that differs from the fingerprint
    /// recorded at backup.
    #[error("backup {id}: verification failed: {}", mismatches.join("; "))]
    VerificationFailed {
        /// The backup.
        id: String,
        /// One line per differing object (e.g. `public.users: expected 500, found 499`).
        mismatches: Vec<String>,
    },
    /// The operation was cancelled (signal, shutdown).
    #[error("{0}: cancelled")]
    Cancelled(String),
    /// Object storage failed.
    #[error("{context}: {error}")]
    Store {
        /// What capsule was doing.
        context: String,
        /// The storage error (already names the store and object); shown in
        /// the message, so it is not also a `source` (no doubled chains in `{:#}`).
        error: capsule_store::Error,
    },
    /// Local I/O failed (a download target, a pipe to a tool).
    #[error("{context}: {error}")]
    Io {
        /// What capsule was doing and on which file.
        context: String,
        /// The I/O error, shown in the message.
        error: std::io::Error,
    },
}

impl Error {
    /// Wraps a storage error with what capsule was doing.
    pub fn store(context: impl Into<String>, source: capsule_store::Error) -> Self {
        Error::Store {
            context: context.into(),
            error: source,
        }
    }

    /// Wraps an I/O error with what capsule was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            error: source,
        }
    }

    /// A one-line invalid-input error.
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }

    /// The error an artifact's stream ([`crate::ArtifactSource::open`])
    /// carried inside the [`std::io::Error`] it failed with, so a reader
    /// can tell a corrupt artifact ([`Error::Corrupt`]) from a broken
    /// download ([`Error::Store`]); `Err` gives back an I/O error that
    /// carries none (e.g. a decoder's).
    pub fn from_stream(e: std::io::Error) -> std::result::Result<Error, std::io::Error> {
        if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return Err(e);
        }
        let inner = e.into_inner().expect("checked: it carries an error");
        Ok(*inner.downcast::<Error>().expect("checked: it is an Error"))
    }

    /// True when the error means "not found" (a missing backup or object).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::BackupNotFound { .. }
                | Error::Store {
                    error: capsule_store::Error::NotFound { .. },
                    ..
                }
        )
    }
}
