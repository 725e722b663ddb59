//! Index patterns: which indices a backup or restore covers.
//!
//! Patterns follow Elasticsearch's multi-target syntax, simplified: a
//! comma-separated list of names and `*` wildcards, `-pattern` excluding.
//! A wildcard matches a system (`.`-prefixed) or hidden index only when the
//! pattern itself starts with `.`; an exact name matches whatever it names.

/// One index the server (or a backup) has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// Its name.
    pub name: String,
    /// `index.hidden` is true, or the name starts with `.`.
    pub hidden: bool,
}

/// Parsed include and exclude patterns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IndexPatterns {
    includes: Vec<String>,
    excludes: Vec<String>,
    explicit: bool,
}

/// What a selection found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    /// The selected names, in the candidates' order.
    pub names: Vec<String>,
    /// Include patterns that matched nothing.
    pub unmatched: Vec<String>,
}

impl IndexPatterns {
    /// From a list of patterns; an empty list means `*` (not explicit).
    pub fn new(patterns: &[String]) -> Self {
        let mut includes = Vec::new();
        let mut excludes = Vec::new();
        for p in patterns.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            match p.strip_prefix('-') {
                Some(ex) if !ex.is_empty() => excludes.push(ex.to_string()),
                _ => includes.push(p.to_string()),
            }
        }
        let explicit = !includes.is_empty();
        if includes.is_empty() {
            includes.push("*".to_string());
        }
        IndexPatterns {
            includes,
            excludes,
            explicit,
        }
    }

    /// Whether the user named patterns (rather than the default `*`).
    pub fn is_explicit(&self) -> bool {
        self.explicit
    }

    /// Whether an include pattern is exactly `name` (no wildcard).
    pub fn names_exactly(&self, name: &str) -> bool {
        self.explicit && self.includes.iter().any(|p| p == name)
    }

    /// Selects among `candidates`.
    pub fn select(&self, candidates: &[Candidate]) -> Selection {
        let mut hit = vec![false; self.includes.len()];
        let mut names = Vec::new();
        for c in candidates {
            let mut included = false;
            for (i, p) in self.includes.iter().enumerate() {
                if pattern_matches(p, c) {
                    hit[i] = true;
                    included = true;
                }
            }
            if included && !self.excludes.iter().any(|p| glob(p, &c.name)) {
                names.push(c.name.clone());
            }
        }
        let unmatched = self
            .includes
            .iter()
            .zip(hit)
            .filter(|(_, h)| !h)
            .map(|(p, _)| p.clone())
            .collect();
        Selection { names, unmatched }
    }

    /// Selects among a backup's index names (none hidden: the backup
    /// holds what its own selection took). `unmatched` lists only include
    /// patterns the user named, since the default `*` may match nothing.
    pub fn select_backed_up<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> Selection {
        let candidates: Vec<Candidate> = names
            .into_iter()
            .map(|n| Candidate {
                name: n.clone(),
                hidden: false,
            })
            .collect();
        let mut selection = self.select(&candidates);
        if !self.explicit {
            selection.unmatched.clear();
        }
        selection
    }
}

fn pattern_matches(pattern: &str, c: &Candidate) -> bool {
    if !pattern.contains('*') {
        return pattern == c.name;
    }
    if c.hidden && !pattern.starts_with('.') {
        return false;
    }
    glob(pattern, &c.name)
}

/// Matches `name` against `pattern`, where `*` matches any run of characters.
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, hidden: bool) -> Candidate {
        Candidate {
            name: name.into(),
            hidden: hidden || name.starts_with('.'),
        }
    }

    #[test]
    fn globs() {
        let cases = [
            ("*", "abc", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("**", "", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(glob(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn selects_like_multi_target_syntax() {
        let all = [
            c("logs-1", false),
            c("logs-2", false),
            c("users", false),
            c(".kibana", false),
            c("secret", true),
        ];
        let sel = |ps: &[&str]| {
            IndexPatterns::new(&ps.iter().map(|s| s.to_string()).collect::<Vec<_>>()).select(&all)
        };
        assert_eq!(sel(&[]).names, ["logs-1", "logs-2", "users"]);
        assert_eq!(sel(&["logs-*", "-logs-2"]).names, ["logs-1"]);
        assert_eq!(sel(&[".*"]).names, [".kibana"]);
        assert_eq!(sel(&["secret", "users"]).names, ["users", "secret"]);
        let s = sel(&["nosuch", "logs-*", "nope*"]);
        assert_eq!(s.names, ["logs-1", "logs-2"]);
        assert_eq!(s.unmatched, ["nosuch", "nope*"]);
        assert!(!IndexPatterns::new(&[]).is_explicit());
        let p = IndexPatterns::new(&["logs-*".into(), "users".into()]);
        assert!(p.names_exactly("users") && !p.names_exactly("logs-1"));
        assert!(
            IndexPatterns::new(&["-x".into()])
                .select(&all)
                .unmatched
                .is_empty()
        );
    }
}
