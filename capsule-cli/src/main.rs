//! `capsule`: the command line of the capsule backup engine. Parsing,
//! prompts, progress and output only; the domain lives in `capsule-core`.

// Argument doc comments are clap's --help text (`postgres://[user@]host`,
// `<db>`), written for terminals rather than rustdoc.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

mod args;
mod commands;
mod encryption_args;
mod engine_args;
mod exit;
mod logging;
mod output;
mod picker;
mod progress;
mod store_args;
mod table;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match &cli.command {
        // The daemon logs at info, as text or JSON lines.
        args::Command::Start(a) => commands::start::init_logging(&cli.global, a),
        _ => logging::init(cli.global.verbose, cli.secrets()),
    }
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            // On a worker thread, not on this one: a task woken by I/O then
            // runs on the thread that saw the event (no hand-off per wakeup).
            rt.block_on(async { tokio::spawn(commands::run(cli)).await? })
        });
    match result {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(err) if exit::is_broken_pipe(&err) => ExitCode::from(exit::SUCCESS),
        Err(err) => {
            output::note(&format!("error: {}", exit::render(&err)));
            ExitCode::from(exit::code_for(&err))
        }
    }
}
