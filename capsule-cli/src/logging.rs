//! Logging to stderr through a redacting writer.
//!
//! Every secret value known to this run (keys given by flag or environment,
//! the password and secret-looking options of `--store`) is replaced by
//! `***` in every log line and error message before it is written, whatever
//! the level: defence in depth against a library logging a request.

use std::io::{self, Write};
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

pub use capsule_store::Redactor;

/// A redactor over `secrets`.
fn redactor_for(secrets: impl IntoIterator<Item = String>) -> Redactor {
    let mut r = Redactor::new();
    for s in secrets {
        r.add(&s);
    }
    r
}

static REDACTOR: OnceLock<Redactor> = OnceLock::new();

/// The redactor of this run (empty until [`init`] ran).
pub fn redactor() -> &'static Redactor {
    REDACTOR.get_or_init(Redactor::default)
}

/// `text` with this run's secrets replaced by `***`.
pub fn redact(text: &str) -> String {
    redactor().redact(text)
}

/// Installs the stderr log subscriber: level `warn`, `debug` with
/// `verbose`, `RUST_LOG` when set; every line goes through a [`Redactor`]
/// over `secrets`. Call once, before any other output.
pub fn init(verbose: bool, secrets: Vec<String>) {
    let _ = REDACTOR.set(redactor_for(secrets));
    // rustls-platform-verifier logs every refused certificate (each retry)
    // at error level; the store's error says it once, with what to do.
    let default = if verbose {
        "debug"
    } else {
        "warn,rustls_platform_verifier=off"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_ansi(console::colors_enabled_stderr())
        .with_target(verbose)
        .try_init();
}

/// A [`MakeWriter`] whose writers redact each log line before it reaches stderr.
#[derive(Clone, Copy, Debug)]
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        LineBuffer(Vec::new())
    }
}

/// Collects one event; redacts and writes it when dropped (or flushed), so
/// a secret is never split over two writes.
struct LineBuffer(Vec<u8>);

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.0.is_empty() {
            let text = redact(&String::from_utf8_lossy(&self.0));
            self.0.clear();
            let mut err = io::stderr().lock();
            err.write_all(text.as_bytes())?;
            err.flush()?;
        }
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Option names in a store URL whose values are secret.
fn is_secret_option(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "key",
        "secret",
        "token",
        "password",
        "sig",
        "credential",
        "sas",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// The secret parts of a URL: its password, its user name when a password
/// is given too, and the values of secret-looking query options
/// (`secret_access_key`, `account_key`, `sas_token`, …). Values are returned
/// both decoded and as written.
pub fn url_secret_values(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(url) = url::Url::parse(raw) else {
        return out;
    };
    if let Some(password) = url.password() {
        out.push(password.to_string());
        out.extend(percent_decoded(password));
        if !url.username().is_empty() {
            out.push(url.username().to_string());
            out.extend(percent_decoded(url.username()));
        }
    }
    for (name, value) in url.query_pairs() {
        if is_secret_option(&name) && !value.is_empty() {
            out.push(value.into_owned());
        }
    }
    if let Some(query) = url.query() {
        for pair in query.split('&') {
            if let Some((name, value)) = pair.split_once('=')
                && is_secret_option(name)
                && !value.is_empty()
            {
                out.push(value.to_string());
            }
        }
    }
    out
}

/// The passwords in a database URL (`postgres://`, `redis://`): the
/// userinfo's and any `password=` query value. User names are not secret
/// (masking them would mangle every id and message that contains the same
/// word). A URL that does not parse, or whose userinfo holds a `/`, `?` or
/// `#` a parser would cut it at, still gives what sits between the
/// userinfo's first `:` and the last `@`.
pub fn url_passwords(raw: &str) -> Vec<String> {
    let raw_candidate = || {
        raw.split_once("://")
            .and_then(|(_, rest)| rest.rsplit_once('@'))
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
            .map(|(_, pw)| pw.to_string())
            .filter(|pw| !pw.is_empty())
    };
    let Ok(url) = url::Url::parse(raw) else {
        return raw_candidate().into_iter().collect();
    };
    let mut out = Vec::new();
    match url.password() {
        Some(pw) => {
            out.push(pw.to_string());
            out.extend(percent_decoded(pw));
        }
        // `redis://u:12/34@host` parses as host `u`, port 12: no password.
        None => out.extend(raw_candidate()),
    }
    out.extend(
        url.query_pairs()
            .filter(|(k, v)| k == "password" && !v.is_empty())
            .map(|(_, v)| v.into_owned()),
    );
    out
}

fn percent_decoded(s: &str) -> Option<String> {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .filter(|v| v != s)
}

/// The secret string values of a JSON service-account key
/// (`private_key`, `private_key_id`, …), so they are redacted even when a
/// library logs them one by one.
pub fn json_secret_values(key_json: &str) -> Vec<String> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str(key_json) else {
        return Vec::new();
    };
    map.iter()
        .filter(|(name, _)| is_secret_option(name))
        .filter_map(|(_, v)| v.as_str().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_known_secret() {
        let r = redactor_for([
            "s3cr3t/+=".to_string(),
            "AKIA1234".to_string(),
            "ab".to_string(),
        ]);
        assert_eq!(
            r.redact("key AKIA1234 secret s3cr3t/+= enc s3cr3t%2F%2B%3D ab"),
            "key *** secret *** enc *** ab"
        );
    }

    #[test]
    fn finds_secrets_in_store_urls() {
        let s = url_secret_values(
            "s3://b?endpoint=http://h:1&access_key_id=AKID9&secret_access_key=a%2Fb%2Bc&region=r",
        );
        assert!(s.contains(&"AKID9".to_string()));
        assert!(s.contains(&"a/b+c".to_string()));
        assert!(s.contains(&"a%2Fb%2Bc".to_string()));
        assert!(!s.iter().any(|v| v == "r"));
        let s = url_secret_values("s3://user:p%40ss@bucket/x");
        assert!(s.contains(&"p%40ss".to_string()) && s.contains(&"p@ss".to_string()));
        assert!(url_secret_values("not a url").is_empty());
    }

    #[test]
    fn finds_secrets_in_key_json() {
        let s = json_secret_values(
            r#"{"type":"service_account","private_key":"-----BEGIN","private_key_id":"abcd"}"#,
        );
        assert_eq!(s.len(), 2);
    }
}
