//! The error type of capsule-daemon.

use std::path::PathBuf;

/// Result with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stops the daemon from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file (or a flag) is wrong; nothing was started.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// An option value is invalid (bind address, interval).
    #[error("{0}")]
    InvalidOption(String),
    /// The API address could not be bound.
    #[error("binding the API to {addr}: {error}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        error: std::io::Error,
    },
    /// The domain failed (store, statefile).
    #[error(transparent)]
    Core(#[from] capsule_core::Error),
    /// A target source could not list its targets.
    #[error("target source {source_name}: {message}")]
    Targets {
        /// The source (`config file`, `kubernetes`).
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// A job's credentials could not be read when it started (a Secret
    /// gone, a key missing, a forbidden read); never holds a value.
    #[error("credentials of {target} read at job start: {message}")]
    Credentials {
        /// The target (`namespace/name`).
        target: String,
        /// The source and field at fault
        /// (`Secret cnvrg/pg-creds not found`).
        message: String,
    },
}

/// A configuration error, naming the file, the line and the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field (`service[0].period`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(
        file: impl Into<PathBuf>,
        line: Option<usize>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.into(),
            line,
            field,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    /// `config file capsule.toml, line 7, field service[0].period: invalid period "1x": …`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config file {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
