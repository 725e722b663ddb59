//! A restore drill's result, side by side: what the backup recorded and
//! what the restored copy holds (`capsule pg|es --verify`).

use anyhow::Result;
use capsule_core::Fingerprint;

use crate::output;
use crate::table::{Cell, Table};

/// Every object of both fingerprints: (name, at backup, restored).
pub(super) fn compared_rows(
    want: &Fingerprint,
    got: &Fingerprint,
) -> Vec<(String, String, String)> {
    let mut names: Vec<&String> = want
        .counts
        .keys()
        .chain(got.counts.keys())
        .chain(want.values.keys())
        .chain(got.values.keys())
        .collect();
    names.sort();
    names.dedup();
    let show = |fp: &Fingerprint, name: &str| {
        fp.counts
            .get(name)
            .map(u64::to_string)
            .or_else(|| fp.values.get(name).cloned())
            .unwrap_or_else(|| "-".into())
    };
    names
        .into_iter()
        .map(|n| (n.clone(), show(want, n), show(got, n)))
        .collect()
}

/// The drill's comparison, one object (table, index…) a line, under a
/// first column named `object`.
pub(super) fn print_comparison(object: &str, want: &Fingerprint, got: &Fingerprint) -> Result<()> {
    let mut table = Table::new(&[object, "AT BACKUP", "RESTORED", "CHECK"]);
    for (name, a, b) in compared_rows(want, got) {
        let check = if a == b {
            Cell::styled("ok", console::Style::new().for_stdout().green())
        } else {
            Cell::styled("MISMATCH", console::Style::new().for_stdout().red())
        };
        table.row(vec![
            Cell::plain(name),
            Cell::plain(a),
            Cell::plain(b),
            check,
        ]);
    }
    for line in table.render() {
        output::out(&line)?;
    }
    Ok(())
}
