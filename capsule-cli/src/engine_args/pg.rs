//! PostgreSQL flags.

use clap::Args;

/// PostgreSQL connection and restore settings.
#[derive(Debug, Args, Default)]
pub struct PgEngineArgs {}

impl PgEngineArgs {
    /// Whether connection settings were given (run now rather than queue).
    pub fn has_connection(&self) -> bool {
        false
    }
}
