//! Statefiles of every version fed damaged: arbitrary bytes, and valid
//! files (the legacy fixtures, generated v1 and v1alpha1 files) with JSON
//! values swapped for edge cases (huge and negative numbers, wrong types,
//! extreme dates, deep nesting) or removed, then bytes flipped, cut and
//! spliced. Every input is a statefile or an error, never a panic; what is
//! accepted can be used (sizes, durations, display) and written back.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::Value;
use test_support::mutation::mutate;

use super::tests::{SECRETS, arb_legacy, arb_statefile, fixture};
use super::*;
use crate::schedule;
use crate::status::Status;

/// `PROPTEST_CASES=N` for a longer hunt.
fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    ProptestConfig::with_cases(n.unwrap_or(default))
}

/// JSON texts put in place of a value.
fn edge_values() -> Vec<String> {
    let mut v: Vec<String> = [
        "null",
        "true",
        "0",
        "-1",
        "1.5",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "1e308",
        "1e400",
        "\"\"",
        "\"v1\"",
        "\"v1alpha1\"",
        "\"v2\"",
        "\"postgresql-9nVJ8sGmQbXc3RkHzW2tLp\"",
        "\"redis-AAAAAAAAAAAAAAAAAAAAAA\"",
        "\"24h\"",
        "\"0.5s\"",
        "\"finished\"",
        "\"restorerequest\"",
        "\"periodicbackuprequest\"",
        "\"a/b\"",
        "\"..\"",
        "\"statefile.json\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "[]",
        "{}",
        "[{}]",
        "{\"date\":\"2021-06-10T09:15:42Z\",\"status\":\"restorerequest\"}",
    ]
    .map(String::from)
    .to_vec();
    v.push(format!("{}{}", "[".repeat(200), "]".repeat(200)));
    v.push(format!("\"{}\"", "x".repeat(10_000)));
    v.extend(edge_dates());
    v
}

/// Dates at the edges of what chrono reads, and around them.
fn edge_dates() -> Vec<String> {
    [
        "\"2021-06-10T09:15:42Z\"",
        "\"1970-01-01T00:00:00Z\"",
        "\"+262142-12-31T23:59:59.999999999Z\"",
        "\"-262143-01-01T00:00:00Z\"",
        "\"+262143-01-01T00:00:00Z\"",
        "\"9999-12-31T23:59:59.999999999-23:59\"",
        "\"0000-01-01T00:00:00+23:59\"",
        "\"2021-02-29T00:00:00Z\"",
        "\"2021-06-10T24:00:00Z\"",
        "\"2021-06-10T23:59:60Z\"",
    ]
    .map(String::from)
    .to_vec()
}

/// JSON pointers of every value in `v`, parents first.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Applies `(which value, what to do)` edits to the document `bytes`:
/// replace the value with an edge value, remove it, or add a key beside it.
fn mutate_json(bytes: &[u8], edits: &[(usize, usize)]) -> Vec<u8> {
    let Ok(mut doc) = serde_json::from_slice::<Value>(bytes) else {
        return bytes.to_vec();
    };
    let (any_value, date_values) = (edge_values(), edge_dates());
    let mut raw = Vec::new();
    for &(which, what) in edits {
        let mut all = Vec::new();
        pointers(&doc, String::new(), &mut all);
        let at = &all[which % all.len()];
        // A date is mostly swapped for another date, so the extreme ones
        // reach the date arithmetic behind the parser.
        let is_date = doc
            .pointer(at)
            .and_then(Value::as_str)
            .is_some_and(|t| t.len() > 18 && t.as_bytes()[10] == b'T');
        let edges = if is_date && what % 4 != 0 {
            &date_values
        } else {
            &any_value
        };
        match what % (edges.len() + 2) {
            n if n < edges.len() => {
                // A placeholder, swapped for the raw text (which need not
                // be valid for serde_json::Value, e.g. 1e400) at the end.
                let mark = format!("@@edge{}@@", raw.len());
                raw.push((format!("\"{mark}\""), edges[n].clone()));
                if at.is_empty() {
                    doc = Value::String(mark);
                } else if let Some(v) = doc.pointer_mut(at) {
                    *v = Value::String(mark);
                }
            }
            n if n == edges.len() => {
                if let Some((parent, key)) = at.rsplit_once('/')
                    && let Some(p) = doc.pointer_mut(parent)
                {
                    match p {
                        Value::Object(m) => {
                            m.shift_remove(&key.replace("~1", "/").replace("~0", "~"));
                        }
                        Value::Array(a) => {
                            if let Ok(i) = key.parse::<usize>() {
                                a.remove(i);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {
                if let Some(Value::Object(m)) = doc.pointer_mut(at) {
                    m.insert("unknownField".into(), Value::from(7));
                }
            }
        }
    }
    let mut text = serde_json::to_string(&doc).unwrap();
    for (mark, edge) in raw {
        text = text.replace(&mark, &edge);
    }
    text.into_bytes()
}

/// Parses `bytes` and uses what it gets the way the CLI and daemon do.
fn exercise(bytes: &[u8]) -> std::result::Result<Option<Statefile>, TestCaseError> {
    let now = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    // The legacy rewriters take any bytes.
    let appended = legacy::append_restore_request(bytes, now);
    let _ = legacy::record_restore(bytes, Some(now), now, "finished");
    let Ok(sf) = Statefile::from_slice(bytes) else {
        return Ok(None);
    };
    let _ = (sf.size_bytes(), sf.duration(), sf.last_verification());
    let _ = (sf.data_artifact(), format!("{sf:?}"), sf.to_display_json());
    // The scheduler and the rotation do date arithmetic on its dates, as
    // whatever periodic backup it could be.
    let hour = std::time::Duration::from_secs(3600);
    let due = schedule::DuePolicy::new("1h".parse().unwrap());
    let mut variants = vec![sf.clone()];
    for status in [
        Status::Finished,
        Status::Failed,
        Status::Running,
        Status::Deleting,
    ] {
        let mut v = sf.clone();
        v.status = status;
        v.request_type = RequestType::Periodic;
        variants.push(v);
    }
    for v in &variants {
        let _ = schedule::is_abandoned(v, hour, now);
        let _ = schedule::periodic_due([v], &due, now);
    }
    let _ = schedule::plan_rotation(&variants, &schedule::RotationPolicy::new(1), now);
    if sf.is_legacy() {
        // A restore request appended to an accepted legacy file is read
        // back. (The rewriter reads the whole document, so it refuses what
        // the reader skips unread, e.g. 1e400 or a lone surrogate in
        // `bucket`: an error, which is fine.)
        if let Ok(appended) = appended {
            let again = Statefile::from_slice(&appended);
            prop_assert!(again.is_ok(), "{:?}", again.err());
            prop_assert_eq!(again.unwrap().restores.len(), sf.restores.len() + 1);
        }
    } else {
        // Whatever v1 file is accepted is written back and read the same.
        let written = sf.to_vec();
        prop_assert!(written.is_ok(), "{:?}", written.err());
        let back = Statefile::from_slice(&written.unwrap());
        prop_assert!(back.is_ok(), "{:?}", back.err());
        prop_assert_eq!(back.unwrap(), sf.clone());
    }
    Ok(Some(sf))
}

fn fixtures() -> Vec<Vec<u8>> {
    [
        "postgresql-9nVJ8sGmQbXc3RkHzW2tLp",
        "postgresql-4GfT7uYpWq2ZsLmK9bXcRv",
        "postgresql-Ts6Yh2KqPw9LmZc4NbXvRe",
    ]
    .map(fixture)
    .to_vec()
}

fn json_edits() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec(any::<(usize, usize)>(), 1..4)
}

fn byte_edits() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    prop::collection::vec(any::<(u8, usize, u8)>(), 0..4)
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes)?;
    }

    #[test]
    fn mutated_legacy_fixtures_never_panic(
        seed in any::<prop::sample::Index>(),
        json in json_edits(),
        bytes in byte_edits(),
    ) {
        let fixtures = fixtures();
        let damaged = mutate_json(seed.get::<Vec<u8>>(&fixtures), &json);
        // Secrets sit only in fields the parser skips: moving values
        // around never brings one into the model.
        if let Some(sf) = exercise(&damaged)?
            && sf.is_legacy()
        {
            let shown = format!("{sf:?}{}", sf.to_display_json());
            for s in SECRETS {
                prop_assert!(!shown.contains(s), "{} in {}", s, shown);
            }
        }
        exercise(&mutate(&damaged, &bytes))?;
    }
}

proptest! {
    // Slower: each case generates two files.
    #![proptest_config(cases(1500))]

    #[test]
    fn mutated_generated_files_never_panic(
        v1 in arb_statefile(),
        (legacy, _, _) in arb_legacy(),
        json in json_edits(),
        bytes in byte_edits(),
    ) {
        for seed in [v1.to_vec().unwrap(), serde_json::to_vec(&legacy).unwrap()] {
            let damaged = mutate_json(&seed, &json);
            exercise(&damaged)?;
            exercise(&mutate(&damaged, &bytes))?;
        }
    }
}

#[test]
fn sizes_past_u64_are_unknown_not_a_panic() {
    // Regression (found by `mutated_generated_files_never_panic`): two
    // artifacts whose sizes add up past u64::MAX made `size_bytes` panic
    // with an overflow (what `capsule list` shows for every backup).
    let doc = serde_json::json!({
        "statefileVersion": "v1", "backupId": "postgresql-9nVJ8sGmQbXc3RkHzW2tLp",
        "serviceType": "postgresql", "requestType": "manual", "status": "finished",
        "requestedAt": "2021-06-10T09:15:42Z",
        "artifacts": [
            {"name": "a", "format": "x", "sizeBytes": u64::MAX},
            {"name": "b", "format": "x", "sizeBytes": 1},
        ],
    });
    let sf = Statefile::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(sf.size_bytes(), None);
}

#[test]
fn the_json_mutator_reaches_every_value() {
    let doc = br#"{"a":{"b/c":[1,2]},"d":"x"}"#;
    let mut all = Vec::new();
    pointers(
        &serde_json::from_slice(doc).unwrap(),
        String::new(),
        &mut all,
    );
    assert_eq!(all, ["", "/a", "/a/b~1c", "/a/b~1c/0", "/a/b~1c/1", "/d"]);
    let edges = edge_values();
    let big = edges.iter().position(|e| e == "1e400").unwrap();
    assert_eq!(
        mutate_json(doc, &[(3, big)]),
        br#"{"a":{"b/c":[1e400,2]},"d":"x"}"#
    );
    assert_eq!(
        mutate_json(doc, &[(2, edges.len())]),
        br#"{"a":{},"d":"x"}"#
    );
    assert_eq!(
        mutate_json(doc, &[(1, edges.len() + 1)]),
        br#"{"a":{"b/c":[1,2],"unknownField":7},"d":"x"}"#
    );
}
