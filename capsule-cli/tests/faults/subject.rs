//! What the scenarios need of each engine: its `capsule` arguments, the
//! network to its server, its tool or server to kill, and the live
//! target a restore must leave untouched when it fails (or, in a
//! destructive mode, must say it changed).

use std::collections::BTreeMap;
use std::fmt;

use test_support::tcp_proxy::TcpProxy;

use crate::process::Running;

/// Backup or restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Backup,
    Restore,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Backup => "backup",
            Phase::Restore => "restore",
        })
    }
}

/// How a restore treats the live target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// The engine's default, which never destroys live data it cannot
    /// put back: PostgreSQL restores beside the live database and swaps
    /// names, Redis replaces only the backup's keys, Elasticsearch
    /// restores under new names.
    Default,
    /// The destructive mode an operator may choose: PostgreSQL
    /// `--in-place`, Redis `--flush`, Elasticsearch `--replace`.
    Destructive,
}

/// The live target's state before a restore run, as the engine measures
/// it (table checksums, a digest, document hashes).
pub struct Live {
    pub checksum: String,
    /// Checksums of the parts a destructive mode replaces one by one
    /// (Elasticsearch's indices), by name; empty where the engine judges
    /// the target as a whole.
    pub parts: BTreeMap<String, String>,
}

impl Live {
    /// A target judged as a whole.
    pub fn whole(checksum: String) -> Live {
        Live {
            checksum,
            parts: BTreeMap::new(),
        }
    }
}

/// Holds an engine's restore at its commit point (the moment it puts the
/// restored data in place of the live data) until dropped.
pub trait CommitHold {
    /// Whether a restore is now waiting at the commit point.
    fn reached(&self) -> bool;
}

/// An engine under fault.
pub trait Subject {
    /// `postgresql`, `redis`, `elasticsearch`.
    fn name(&self) -> &'static str;

    /// The engine's arguments of a backup (subcommand, `--create`, the
    /// connection through [`Subject::db_proxy`]).
    fn backup_args(&self) -> Vec<String>;

    /// The engine's arguments of a restore of backup `id` into the live
    /// target, through [`Subject::db_proxy`], in `mode`.
    fn restore_args(&self, id: &str, mode: Mode) -> Vec<String>;

    /// The flag that selects the destructive mode (`--in-place`), for
    /// the table.
    fn destructive_flag(&self) -> &'static str;

    /// The arguments of a backup of the live target itself, when a
    /// restore in `mode` must come from one: PostgreSQL's in-place
    /// restore recreates the dumped database under its own name. `None`
    /// (the default): the mode restores the source's backup.
    fn target_backup_args(&self, _mode: Mode) -> Option<Vec<String>> {
        None
    }

    /// The engine's arguments of a restore drill of backup `id`
    /// (`--verify`), straight to the server.
    fn verify_args(&self, id: &str) -> Vec<String>;

    /// The network between capsule and the server of `phase`.
    fn db_proxy(&self, phase: Phase) -> &TcpProxy;

    /// What [`Subject::kill_tool`] kills in `phase` (`pg_dump`,
    /// `redis-server`…).
    fn tool(&self, phase: Phase) -> &'static str;

    /// Whether the tool is a server holding the data (then killing it
    /// loses the live target: invariant 3 does not apply).
    fn tool_is_server(&self) -> bool;

    /// Kills the tool or server of `phase` if it runs now; true when
    /// something was killed.
    fn kill_tool(&mut self, run: &Running, phase: Phase) -> bool;

    /// Starts again what [`Subject::kill_tool`] killed (fresh server,
    /// same data, new proxy).
    fn recover(&mut self, phase: Phase);

    /// Makes the next restore in `mode` wait at its commit point
    /// (PostgreSQL's safe mode: the swap of the restored database for the
    /// live one), so a run can be killed exactly there; `None` for modes
    /// without one.
    fn hold_commit(&mut self, _mode: Mode) -> Option<Box<dyn CommitHold>> {
        None
    }

    /// Puts the live target in its known state before a restore run in
    /// `mode` (removing what earlier runs left) and measures it.
    fn live_before(&mut self, mode: Mode) -> Live;

    /// Invariant 3: checks the live target after a restore run in
    /// `mode`. With `restored` (the run said the restore finished) it
    /// must hold the backup; without, it must be as `before` — or, for a
    /// run killed at the very end, wholly restored (returned as a note).
    /// A mode that changes the target in place may leave it changed only
    /// if `error` (the run's `error: …` line) says so, or when the run
    /// was killed (`error` is `None`: a note, and the suite restores
    /// again to prove the backup still comes back). Returns (violations,
    /// notes).
    fn live_after(
        &mut self,
        mode: Mode,
        before: &Live,
        restored: bool,
        error: Option<&str>,
    ) -> (Vec<String>, Vec<String>);
}
