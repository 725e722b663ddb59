//! `--ns-whitelist`: namespace names or globs (`*`, `?`), comma-separated.

use std::fmt;
use std::str::FromStr;

/// The namespaces discovery scans. With only concrete names, each is
/// listed on its own, so no cluster-wide read permission is needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsWhitelist {
    patterns: Vec<String>,
}

impl Default for NsWhitelist {
    /// Every namespace (`*`).
    fn default() -> Self {
        NsWhitelist {
            patterns: vec!["*".into()],
        }
    }
}

impl FromStr for NsWhitelist {
    type Err = String;

    /// Parses `cnvrg,team-*`; blanks around names are ignored.
    fn from_str(s: &str) -> Result<Self, String> {
        let patterns: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        if patterns.is_empty() {
            return Err(format!(
                "--ns-whitelist {s:?} names no namespace: give names or globs, or * for all"
            ));
        }
        for p in &patterns {
            if !p
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-*?".contains(c))
            {
                return Err(format!(
                    "--ns-whitelist: {p:?} is not a namespace name or glob (lowercase letters, digits, '-', '*', '?')"
                ));
            }
        }
        Ok(NsWhitelist { patterns })
    }
}

impl fmt::Display for NsWhitelist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.patterns.join(","))
    }
}

impl NsWhitelist {
    /// Whether `namespace` is scanned.
    pub fn matches(&self, namespace: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), namespace.as_bytes()))
    }

    /// The namespaces, when every pattern is a concrete name.
    pub fn concrete(&self) -> Option<Vec<String>> {
        if self.patterns.iter().any(|p| p.contains(['*', '?'])) {
            None
        } else {
            let mut v = self.patterns.clone();
            v.dedup();
            Some(v)
        }
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_concrete_lists() {
        let w: NsWhitelist = "cnvrg, team-*".parse().unwrap();
        assert!(w.matches("cnvrg") && w.matches("team-a") && w.matches("team-"));
        assert!(!w.matches("cnvrg2") && !w.matches("other"));
        assert_eq!(w.concrete(), None);
        let w: NsWhitelist = "a,b".parse().unwrap();
        assert_eq!(w.concrete(), Some(vec!["a".into(), "b".into()]));
        assert!(NsWhitelist::default().matches("anything"));
        let q: NsWhitelist = "ns?".parse().unwrap();
        assert!(q.matches("ns1") && !q.matches("ns") && !q.matches("ns12"));
        assert!("".parse::<NsWhitelist>().is_err());
        assert!(" , ".parse::<NsWhitelist>().is_err());
        assert!("Bad_Name".parse::<NsWhitelist>().is_err());
    }
}
