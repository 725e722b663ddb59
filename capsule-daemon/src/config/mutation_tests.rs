//! The configuration file parser fed damaged files: valid configurations
//! with bytes flipped, cut, spliced and padded, and arbitrary text. Every
//! input is a configuration or an error naming the file (and a line inside
//! it), never a panic.

use proptest::prelude::*;
use test_support::mutation::mutate;

use super::*;

const SEEDS: [&str; 3] = [
    r#"
cluster = "dev-eu"
[[service]]
name = "cnvrg/pg-storage"
type = "postgresql"
url_env = "PG_URL"
period = "24h"
rotation = 5
keep_daily = 7
keep_weekly = 4
keep_monthly = 6
tool_dir = "/usr/lib/postgresql/16/bin"
"#,
    r#"
[[service]]
name = "cnvrg/redis"
type = "redis"
url = "redis://default:hunter2@redis:6379/0"
period = "1.5h"
store = "s3://other-bucket/prefix?endpoint=http://127.0.0.1:8333"
dst_dir = "team-a/backups"

[[service]]
name = "es"
type = "elasticsearch"
url = "http://es:9200"
period = "30m"
rotation = 10000
"#,
    "cluster = 'x'\nservice = [{name = 'a/b', type = 'pg', url_env = 'PG_URL', period = '90m'}]\n",
];

fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
    DaemonConfig::parse(Path::new("capsule.toml"), text, &|name| {
        (name == "PG_URL").then(|| "postgres://app@db:5432/app".to_string())
    })
}

/// Parses `text`; what is accepted holds what the parser promises, what is
/// refused names the file and a line of it.
fn check(text: &str) -> Result<(), TestCaseError> {
    match parse(text) {
        Ok(c) => {
            for s in &c.services {
                prop_assert!(!s.name.trim().is_empty());
                prop_assert!(s.rotation <= 10_000 && s.keep_daily <= 10_000);
                prop_assert!(s.line >= 1 && s.line <= text.lines().count() + 1);
            }
            for w in &c.warnings {
                prop_assert!(!w.contains("hunter2"), "{}", w);
            }
        }
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(shown.starts_with("config file capsule.toml"), "{}", shown);
            if let Some(line) = e.line {
                prop_assert!(line >= 1 && line <= text.lines().count() + 1, "{}", shown);
            }
        }
    }
    Ok(())
}

proptest! {
    // PROPTEST_CASES=N for a longer hunt.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
    ))]

    #[test]
    fn mutated_configs_never_panic(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(any::<(u8, usize, u8)>(), 1..6),
    ) {
        let bytes = mutate(seed.get(&SEEDS).as_bytes(), &edits);
        check(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in "[\\[\\]{}=\"'.,#a-z0-9 \n\t\\\\-]{0,200}|.{0,200}") {
        check(&text)?;
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for open in ["[", "{a="] {
        let text = format!("cluster = {}", open.repeat(100_000));
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }
}
