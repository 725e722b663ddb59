//! The fake secrets, everything capsule wrote that was captured, and the
//! search of the one in the other.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// One fake secret: what it is (for the report) and its value.
#[derive(Clone, Debug)]
struct Marker {
    what: String,
    value: String,
}

/// Where a secret was found.
#[derive(Debug)]
pub struct Finding {
    pub what: String,
    pub place: String,
    pub excerpt: String,
}

/// The fake secrets and the captured outputs (stdout, stderr, logs, API
/// responses, objects, downloaded files), each under the place it came
/// from.
#[derive(Default)]
pub struct Sweep {
    markers: Vec<Marker>,
    /// (marker value, place): a fixture's own secret where the fixture put it.
    allowed: BTreeSet<(String, String)>,
    captured: Mutex<Vec<(String, Vec<u8>)>>,
}

impl Sweep {
    /// Registers `value` as a secret described by `what` and returns it
    /// (a value registered before keeps its first description).
    /// Markers must be long and none may contain another, so a hit names
    /// exactly one secret; a URL-encoded form that differs is searched too.
    pub fn secret(&mut self, what: &str, value: &str) -> String {
        if self.markers.iter().any(|m| m.value == value) {
            return value.to_string();
        }
        assert!(value.len() >= 12, "marker {what} is too short: {value:?}");
        for m in &self.markers {
            assert!(
                !m.value.contains(value) && !value.contains(&m.value),
                "markers {what} and {} overlap",
                m.what
            );
        }
        self.markers.push(Marker {
            what: what.into(),
            value: value.into(),
        });
        let encoded = url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
        if encoded != value {
            self.markers.push(Marker {
                what: format!("{what} (URL-encoded)"),
                value: encoded,
            });
        }
        value.to_string()
    }

    /// Whether `text` holds a secret.
    pub fn holds_secret(&self, text: &str) -> bool {
        self.markers.iter().any(|m| text.contains(&m.value))
    }

    /// Lets the secret `value` appear in `place` (the fixture put it there).
    pub fn allow(&mut self, value: &str, place: &str) {
        self.allowed.insert((value.to_string(), place.to_string()));
    }

    /// Keeps `bytes`, captured at `place`, for the search.
    pub fn record(&self, place: impl Into<String>, bytes: impl AsRef<[u8]>) {
        self.captured
            .lock()
            .unwrap()
            .push((place.into(), bytes.as_ref().to_vec()));
    }

    /// How many captures there are, and how many bytes they hold.
    pub fn size(&self) -> (usize, usize) {
        let c = self.captured.lock().unwrap();
        (c.len(), c.iter().map(|(_, b)| b.len()).sum())
    }

    /// How many secrets (and encoded forms) are searched for.
    pub fn count(&self) -> usize {
        self.markers.len()
    }

    /// Every secret found in every capture (except where allowed).
    pub fn findings(&self) -> Vec<Finding> {
        let captured = self.captured.lock().unwrap();
        let mut out = Vec::new();
        for (place, bytes) in captured.iter() {
            for m in &self.markers {
                if self.allowed.contains(&(m.value.clone(), place.clone())) {
                    continue;
                }
                if let Some(at) = find(bytes, m.value.as_bytes()) {
                    out.push(Finding {
                        what: m.what.clone(),
                        place: place.clone(),
                        excerpt: excerpt(bytes, at, m.value.len()),
                    });
                }
            }
        }
        out
    }

    /// Panics listing every finding.
    pub fn assert_clean(&self) {
        let findings = self.findings();
        if findings.is_empty() {
            return;
        }
        let list: Vec<String> = findings
            .iter()
            .map(|f| format!("- {} in {}: …{}…", f.what, f.place, f.excerpt))
            .collect();
        panic!("{} secret(s) leaked:\n{}", findings.len(), list.join("\n"));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Up to 80 bytes either side of the hit, on one line.
fn excerpt(bytes: &[u8], at: usize, len: usize) -> String {
    let start = at.saturating_sub(80);
    let end = (at + len + 80).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..end]).replace(['\n', '\r'], "⏎")
}
