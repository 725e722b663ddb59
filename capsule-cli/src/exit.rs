//! Exit codes, and the error that marks a usage mistake.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed: store unreachable, backup not found, corrupt data, confirmation declined |
//! | 2 | usage error: clap parse errors, bad flag values (unknown bucket type, malformed URL or id), no `--id` and no terminal, a destructive action without `--yes` and without a terminal |
//! | 130 | interrupted (ctrl-c or SIGTERM) |

use std::fmt;

/// Success.
pub const SUCCESS: u8 = 0;
/// The operation failed.
pub const FAILURE: u8 = 1;
/// The command line was wrong (the same code clap uses for parse errors).
pub const USAGE: u8 = 2;
/// Interrupted by ctrl-c.
pub const INTERRUPTED: u8 = 130;

/// A mistake on the command line found after parsing: a flag's value that
/// cannot be used, or a missing flag the situation requires. Exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl UsageError {
    /// A usage error with `message` (one line, naming the flag at fault).
    pub fn new(message: impl Into<String>) -> Self {
        UsageError(message.into())
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The operation was interrupted (ctrl-c or SIGTERM). Exit code 130.
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// The exit code for `err`: [`USAGE`] when a [`UsageError`] is in its
/// chain, [`INTERRUPTED`] for [`Interrupted`], else [`FAILURE`].
pub fn code_for(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        USAGE
    } else if err.chain().any(|e| e.is::<Interrupted>()) {
        INTERRUPTED
    } else {
        FAILURE
    }
}

/// Whether `err` is a write to a closed stdout (`capsule pg --list | head`):
/// not worth a message, and not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `err` and its causes on one line, like `{:#}`, except that a cause whose
/// text already ends its parent's message is not repeated (errors that both
/// print and chain their source).
pub fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_anywhere_in_the_chain_exit_2() {
        let e =
            anyhow::Error::new(UsageError::new("bad --bucket-type")).context("building the store");
        assert_eq!(code_for(&e), USAGE);
        let e: anyhow::Error = Err::<(), _>(std::io::Error::other("boom"))
            .context("x")
            .unwrap_err();
        assert_eq!(code_for(&e), FAILURE);
        assert_eq!(code_for(&anyhow::Error::new(Interrupted)), INTERRUPTED);
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::new(pipe)));
    }

    #[derive(Debug)]
    struct Doubled(std::io::Error);

    impl fmt::Display for Doubled {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "reading x: {}", self.0)
        }
    }

    impl std::error::Error for Doubled {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn render_does_not_repeat_causes() {
        let e =
            anyhow::Error::new(Doubled(std::io::Error::other("disk on fire"))).context("listing");
        assert_eq!(render(&e), "listing: reading x: disk on fire");
        let e = anyhow::Error::new(std::io::Error::other("a\nb")).context("c");
        assert_eq!(render(&e), "c: a b");
    }
}
