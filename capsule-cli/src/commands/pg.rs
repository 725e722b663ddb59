//! `capsule pg`: the common actions, and (with connection settings) the
//! ones that run the engine now.

use anyhow::Result;
use capsule_core::ServiceType;

use super::backups;
use crate::args::{Action, GlobalArgs, PgArgs};
use crate::exit::UsageError;

/// Runs `capsule pg`.
///
/// # Errors
/// As [`backups::run`]; a usage error for `--verify` without connection settings.
pub async fn run(g: &GlobalArgs, args: &PgArgs) -> Result<()> {
    if args.common.action() == Action::Verify && !args.engine.has_connection() {
        return Err(UsageError::new("--verify needs connection settings (--pg-url)").into());
    }
    backups::run(g, ServiceType::Postgresql, &args.common).await
}
