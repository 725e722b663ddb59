//! The status machines of a backup and of a restore.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a backup is in its life.
///
/// ```text
/// requested ──► running ──► finished ──► deleting
///     │            │                        ▲
///     └────────────┴──► failed ─────────────┘
/// ```
///
/// `finished` is the commit point: it is written only after every artifact
/// is uploaded and its checksum recorded. `deleting` marks a backup whose
/// artifacts are being removed; the statefile goes last, so an interrupted
/// delete stays visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// Asked for (by the CLI, the API or the scheduler); nobody runs it yet.
    Requested,
    /// Claimed by an owner and streaming its artifacts.
    Running,
    /// Every artifact is stored with its checksum: restorable.
    Finished,
    /// Did not complete; `error` says why. Never restorable.
    Failed,
    /// Being deleted.
    Deleting,
}

impl Status {
    /// The statuses a backup may move to from `self`.
    pub fn successors(self) -> &'static [Status] {
        use Status::*;
        match self {
            Requested => &[Running, Failed, Deleting],
            Running => &[Finished, Failed],
            Finished => &[Deleting],
            Failed => &[Deleting],
            Deleting => &[],
        }
    }

    /// Whether `self -> next` is allowed.
    pub fn can_become(self, next: Status) -> bool {
        self.successors().contains(&next)
    }

    /// Finished, failed or deleting: nothing will run any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Finished | Status::Failed | Status::Deleting)
    }

    /// The lowercase name used in statefiles.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Requested => "requested",
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Deleting => "deleting",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one restore of a backup is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RestoreStatus {
    /// Asked for; a daemon (or the CLI) will run it.
    Requested,
    /// Being restored.
    Running,
    /// Restored.
    Finished,
    /// Failed; `error` says why and whether the target was touched.
    Failed,
}

impl RestoreStatus {
    /// Whether `self -> next` is allowed.
    pub fn can_become(self, next: RestoreStatus) -> bool {
        use RestoreStatus::*;
        matches!(
            (self, next),
            (Requested, Running) | (Requested, Failed) | (Running, Finished) | (Running, Failed)
        )
    }

    /// The lowercase name used in statefiles.
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreStatus::Requested => "requested",
            RestoreStatus::Running => "running",
            RestoreStatus::Finished => "finished",
            RestoreStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for RestoreStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Status; 5] = [
        Status::Requested,
        Status::Running,
        Status::Finished,
        Status::Failed,
        Status::Deleting,
    ];

    #[test]
    fn finished_is_reached_only_from_running() {
        for s in ALL {
            assert_eq!(s.can_become(Status::Finished), s == Status::Running, "{s}");
        }
    }

    #[test]
    fn nothing_leaves_deleting() {
        for s in ALL {
            assert!(!Status::Deleting.can_become(s));
        }
    }

    proptest! {
        /// Any walk through the machine that ends in finished went through running,
        /// and never revisits an earlier state.
        #[test]
        fn walks_are_monotonic(steps in proptest::collection::vec(0usize..5, 0..12)) {
            let mut s = Status::Requested;
            let mut seen_running = false;
            for i in steps {
                let next = ALL[i];
                if s.can_become(next) {
                    prop_assert!(next != Status::Requested);
                    s = next;
                    seen_running |= s == Status::Running;
                }
            }
            if s == Status::Finished { prop_assert!(seen_running); }
        }
    }
}
