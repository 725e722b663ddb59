//! `--rename 'pattern:replacement'`: restoring indices under other names.

use std::fmt;
use std::str::FromStr;

use capsule_core::{Error, Result};
use regex::Regex;
use serde::Deserialize;

/// A rename rule like Elasticsearch's snapshot restore
/// `rename_pattern`/`rename_replacement`: every match of the regular
/// expression in an index (or alias) name is replaced, `$1` / `${1}` /
/// `${name}` naming capture groups. Written `pattern:replacement`; the
/// replacement is what follows the last `:` (index names cannot contain
/// one).
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub struct EsRename {
    pattern: Regex,
    replacement: String,
}

impl EsRename {
    /// A rule replacing matches of `pattern` with `replacement`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an invalid regular expression.
    pub fn new(pattern: &str, replacement: &str) -> Result<Self> {
        let regex = Regex::new(pattern).map_err(|e| {
            Error::invalid("rename", format!("invalid rename pattern {pattern:?}: {e}"))
        })?;
        Ok(EsRename {
            pattern: regex,
            replacement: replacement.to_string(),
        })
    }

    /// `name` renamed (unchanged when the pattern does not match).
    pub fn apply(&self, name: &str) -> String {
        self.pattern
            .replace_all(name, self.replacement.as_str())
            .into_owned()
    }
}

impl FromStr for EsRename {
    type Err = Error;

    /// Parses `pattern:replacement`.
    fn from_str(s: &str) -> Result<Self> {
        match s.rsplit_once(':') {
            Some((pattern, replacement)) if !pattern.is_empty() => {
                EsRename::new(pattern, replacement)
            }
            _ => Err(Error::invalid(
                "rename",
                format!(
                    "invalid rename {s:?}: expected pattern:replacement, e.g. 'logs-(.+):restored-logs-$1'"
                ),
            )),
        }
    }
}

impl TryFrom<String> for EsRename {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl fmt::Display for EsRename {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pattern.as_str(), self.replacement)
    }
}

impl PartialEq for EsRename {
    fn eq(&self, other: &Self) -> bool {
        self.pattern.as_str() == other.pattern.as_str() && self.replacement == other.replacement
    }
}

impl Eq for EsRename {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_like_snapshot_restore() {
        let cases = [
            (
                "logs-(.+):restored-logs-$1",
                "logs-2024",
                "restored-logs-2024",
            ),
            ("logs-(.+):restored-logs-$1", "users", "users"),
            ("^(.*)$:copy-${1}-x", "users", "copy-users-x"),
            ("(?:a|b)x:y", "ax-bx", "y-y"),
            ("old:", "old-index", "-index"),
        ];
        for (rule, name, want) in cases {
            let r: EsRename = rule.parse().unwrap();
            assert_eq!(r.apply(name), want, "{rule} on {name}");
            assert_eq!(r.to_string(), rule);
        }
    }

    #[test]
    fn bad_rules_are_refused() {
        for rule in ["nocolon", ":x", "(unclosed:x"] {
            let e = rule.parse::<EsRename>().unwrap_err().to_string();
            assert!(e.contains("rename"), "{e}");
        }
    }
}
