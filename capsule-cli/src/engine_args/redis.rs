//! Redis flags.

use clap::Args;

/// Redis connection and restore settings.
#[derive(Debug, Args, Default)]
pub struct RedisEngineArgs {}

impl RedisEngineArgs {
    /// Whether connection settings were given (run now rather than queue).
    pub fn has_connection(&self) -> bool {
        false
    }
}
