//! The subcommands: argument handling, one core call each, rendering.

mod backups;
mod drill;
mod es;
mod pg;
pub mod plan;
mod redis;
pub mod start;

use anyhow::Result;
use clap::CommandFactory;

use crate::args::{Cli, Command};
use crate::encryption_args::hint;
use crate::output;

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the command hit; [`crate::exit::code_for`] maps it to an exit code.
pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Version => version(cli.global.json),
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "capsule", &mut std::io::stdout());
            Ok(())
        }
        Command::Pg(args) => pg::run(&cli.global, args).await.map_err(hint),
        Command::Redis(args) => redis::run(&cli.global, args).await.map_err(hint),
        Command::Es(args) => es::run(&cli.global, args).await.map_err(hint),
        Command::Start(args) => start::run(&cli.global, args).await,
        Command::Plan(args) => plan::run(&cli.global, args).await,
    }
}

fn version(json: bool) -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    if json {
        output::json(&serde_json::json!({ "version": version }))?;
    } else {
        output::out(&format!("capsule {version}"))?;
    }
    Ok(())
}
