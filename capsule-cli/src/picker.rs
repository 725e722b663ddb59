//! Interactive prompts on the terminal (stderr): the backup picker used
//! when `--id` is missing, and yes/no confirmations.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use capsule_core::{BackupFolder, CatalogEntry};
use console::Term;
use dialoguer::{Confirm, Select};

use crate::output;
use crate::table::{Cell, Table};

/// Whether prompts can be shown: stdin and stderr are both terminals.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Lets the user pick one of `entries` (shown in the given order, newest
/// first as listed) and returns its id; `None` when the user cancelled
/// (Esc or q).
///
/// # Errors
/// When the terminal cannot be read.
pub fn pick(prompt: &str, entries: &[CatalogEntry]) -> Result<Option<String>> {
    let now = chrono::Utc::now();
    let mut table = Table::new(&["", "", "", "", "", ""]);
    for e in entries {
        let status = e.status_label();
        let service = e.statefile.as_ref().and_then(|s| s.service.label());
        table.row(vec![
            Cell::plain(&e.id),
            Cell::plain(service.unwrap_or_else(|| "-".into())),
            Cell::styled(status, output::status_style(status, true)),
            Cell::plain(e.date().map(output::date).unwrap_or_else(|| "-".into())),
            Cell::plain(e.date().map(|d| output::age(d, now)).unwrap_or_default()),
            Cell::plain(
                e.size_bytes()
                    .map(output::size)
                    .unwrap_or_else(|| "-".into()),
            ),
        ]);
    }
    // The first rendered line is the (empty) header.
    let items: Vec<String> = table.render().into_iter().skip(1).collect();
    let choice = Select::new()
        .with_prompt(prompt)
        .items(&items)
        .default(0)
        .max_length(15)
        .interact_on_opt(&Term::stderr())
        .context("reading the terminal")?;
    Ok(choice.map(|i| entries[i].id.clone()))
}

/// Asks `prompt` with a `[y/N]` answer (default no).
///
/// # Errors
/// When the terminal cannot be read.
pub fn confirm(prompt: &str) -> Result<bool> {
    Ok(Confirm::new()
        .with_prompt(prompt)
        .default(false)
        .interact_on_opt(&Term::stderr())
        .context("reading the terminal")?
        .unwrap_or(false))
}
