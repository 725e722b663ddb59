//! Property tests of URL parsing and redaction: arbitrary input never
//! panics, and a password in a URL never shows in the store's URL, its
//! `Debug` output or any error.

use capsule_store::{Store, StoreBuilder};
use proptest::prelude::*;
use test_support::mutation::mutate;

fn build(url: &str) -> Result<Store, capsule_store::Error> {
    StoreBuilder::from_url(url).and_then(StoreBuilder::build)
}

/// Percent-encodes everything but ASCII letters and digits.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

proptest! {
    // 512 cases; PROPTEST_CASES=N for a longer hunt.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn arbitrary_input_never_panics(input in ".{0,80}") {
        if let Ok(store) = build(&input) {
            let _ = (store.url(), format!("{store:?}"));
        }
    }

    #[test]
    fn url_shaped_input_never_panics(
        scheme in "(s3|s3a|gs|gcs|az|azure|file|memory|ftp|S3|)",
        sep in "(://|:/|:|:///|//)",
        rest in "[ -~]{0,60}",
    ) {
        let input = format!("{scheme}{sep}{rest}");
        match build(&input) {
            Ok(store) => { let _ = (store.url(), format!("{store:?}")); }
            Err(e) => { let _ = (e.to_string(), format!("{e:?}")); }
        }
    }

    #[test]
    fn a_password_in_the_url_never_shows(
        scheme in "(s3|gs|az|file|memory)",
        user in "[a-zA-Z0-9]{1,12}",
        password in "Pw[a-zA-Z0-9/+=@:#?&% ]{6,20}",
        bucket in "[a-z0-9][a-z0-9-]{2,12}",
        path in "(/[a-z0-9]{1,8}){0,3}",
        query_secret in proptest::option::of("Qs[a-zA-Z0-9/+=]{6,20}"),
        endpoint_port in 1u16..,
    ) {
        let mut url = format!("{scheme}://{user}:{}@{bucket}{path}", encode(&password));
        let mut secrets = vec![password.clone(), encode(&password)];
        url.push_str(&format!("?endpoint=http://127.0.0.1:{endpoint_port}"));
        if let Some(q) = &query_secret {
            let name = match scheme.as_str() {
                "az" => "account_key",
                "gs" => "service_account_key",
                _ => "secret_access_key",
            };
            url.push_str(&format!("&{name}={}", encode(q)));
            secrets.push(q.clone());
            secrets.push(encode(q));
        }
        let shown = match build(&url) {
            Ok(store) => format!("{} {store:?}", store.url()),
            Err(e) => format!("{e} {e:?}"),
        };
        for secret in &secrets {
            prop_assert!(!shown.contains(secret.as_str()), "{secret:?} in {shown}");
        }
    }

    #[test]
    fn a_password_in_a_malformed_url_never_shows(
        prefix in "(s3:/|s3://|ftp://|az:|)",
        password in "Pw[a-zA-Z0-9/+=#?&]{6,20}",
        tail in "[a-z0-9@/?=&:]{0,20}",
    ) {
        let url = format!("{prefix}user:{password}@host{tail}");
        if let Err(e) = build(&url) {
            let shown = format!("{e} {e:?}");
            prop_assert!(!shown.contains(password.as_str()), "{password:?} in {shown}");
        }
    }
}

proptest! {
    // 1,000 cases (building a store takes a few milliseconds); PROPTEST_CASES=N
    // for a longer hunt.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
    ))]

    #[test]
    fn mutated_urls_never_panic(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(any::<(u8, usize, u8)>(), 1..5),
    ) {
        let input = String::from_utf8_lossy(&mutate(seed.get(&VALID).as_bytes(), &edits)).into_owned();
        match build(&input) {
            Ok(store) => { let _ = (store.url(), format!("{store:?}")); }
            Err(e) => { let _ = (e.to_string(), format!("{e:?}")); }
        }
    }
}

/// Valid store URLs of every form, to damage.
const VALID: [&str; 10] = [
    "s3://cnvrg-storage/team/a?endpoint=http://127.0.0.1:8333&Region=us-east-1&allow-http=true",
    "s3://AKIA:se%2Fcret@bucket/p?secret_access_key=abc&session-token=t",
    "s3a://b.with.dots/x%20y/z",
    "gs://bkt/prefix?service_account_key=%7B%22k%22%3A1%7D",
    "gcs://bkt",
    "az://ctr/p/q/?account=devstoreaccount1&access_key=a2V5&endpoint=http://127.0.0.1:10000/devstoreaccount1",
    "azure://user:pass@ctr",
    "file:///tmp/some%20dir",
    "/srv/backups",
    "memory://a/b",
];
