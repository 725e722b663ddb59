//! Elasticsearch flags.

use clap::Args;

/// Elasticsearch connection and restore settings.
#[derive(Debug, Args, Default)]
pub struct EsEngineArgs {}

impl EsEngineArgs {
    /// Whether connection settings were given (run now rather than queue).
    pub fn has_connection(&self) -> bool {
        false
    }
}
