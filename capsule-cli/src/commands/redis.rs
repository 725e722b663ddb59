//! `capsule redis`: the common actions, and (with connection settings) the
//! ones that run the engine now.

use anyhow::Result;
use capsule_core::ServiceType;

use super::backups;
use crate::args::{Action, GlobalArgs, RedisArgs};
use crate::exit::UsageError;

/// Runs `capsule redis`.
///
/// # Errors
/// As [`backups::run`]; a usage error for `--verify` without connection settings.
pub async fn run(g: &GlobalArgs, args: &RedisArgs) -> Result<()> {
    if args.common.action() == Action::Verify && !args.engine.has_connection() {
        return Err(UsageError::new("--verify needs connection settings (--redis-url)").into());
    }
    backups::run(g, ServiceType::Redis, &args.common).await
}
