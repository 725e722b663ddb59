//! The crate's [`Error`], and the translation of object_store errors into it
//! with every secret of the store redacted.

use std::fmt::Write as _;

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong with a store operation or configuration.
///
/// Every message names the store by its redacted URL (see
/// [`Store::url`](crate::Store::url)) and, for object operations, the key
/// relative to the store prefix. No message carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object does not exist.
    #[error("object {key} not found in {store}")]
    NotFound {
        /// The store's redacted URL.
        store: String,
        /// The key, relative to the store prefix.
        key: String,
    },

    /// A create-if-absent found the object already there.
    #[error("object {key} already exists in {store}")]
    AlreadyExists {
        /// The store's redacted URL.
        store: String,
        /// The key, relative to the store prefix.
        key: String,
    },

    /// A conditional update failed: the object was changed by another
    /// writer since the expected version was read.
    #[error("object {key} in {store} was changed by another writer (precondition failed)")]
    Conflict {
        /// The store's redacted URL.
        store: String,
        /// The key, relative to the store prefix.
        key: String,
    },

    /// The configuration is wrong; the message names the flag, field,
    /// option or URL part at fault.
    #[error("invalid storage configuration: {message}")]
    InvalidConfig {
        /// What is wrong, naming the culprit.
        message: String,
    },

    /// The backend cannot do this.
    #[error("{what} is not supported by {store}")]
    Unsupported {
        /// The store's redacted URL.
        store: String,
        /// The operation or feature.
        what: String,
    },

    /// The backend failed; `message` is the backend's error chain with a
    /// leading hint for common causes (unreachable endpoint, wrong keys,
    /// missing bucket) and every secret replaced by `***`.
    #[error("{op}{} on {store} failed: {message}", key_part(key))]
    Backend {
        /// The store's redacted URL.
        store: String,
        /// The operation, e.g. `put`, `list`, `ping (write)`.
        op: &'static str,
        /// The key or prefix, relative to the store prefix.
        key: String,
        /// The redacted backend error text.
        message: String,
    },
}

fn key_part(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" of {key}")
    }
}

impl Error {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            message: message.into(),
        }
    }
}

/// Replaces known secret values, URL userinfo and secret-looking query
/// parameters in text by `***`. The store uses one for its error texts;
/// frontends use one over their log output.
///
/// ```
/// let mut r = capsule_store::Redactor::new();
/// r.add("s3cr3t-value");
/// assert_eq!(r.redact("key=s3cr3t-value"), "key=***");
/// ```
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

/// Secrets shorter than this are not searched for in free text (a one-letter
/// "secret" would mangle every message); URLs are still redacted by structure.
const MIN_SECRET_LEN: usize = 4;

impl Redactor {
    /// An empty redactor (it still redacts URL userinfo and secret query values).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `secret` and its percent-encoded, percent-decoded and
    /// JSON-escaped forms.
    pub fn add(&mut self, secret: &str) {
        let mut forms = vec![secret.to_string()];
        if let Ok(quoted) = serde_json::to_string(secret) {
            forms.push(quoted[1..quoted.len() - 1].to_string());
        }
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        forms.push(encoded);
        forms.push(
            url::form_urlencoded::byte_serialize(secret.as_bytes())
                .collect::<String>()
                .replace('+', "%20"),
        );
        if let Ok(decoded) = percent_decode(secret) {
            forms.push(decoded);
        }
        // Multi-line secrets (PEM keys in a service account JSON) may be
        // echoed one line at a time.
        for line in secret.lines() {
            forms.push(line.trim().to_string());
        }
        for form in forms {
            if form.len() >= MIN_SECRET_LEN && !self.secrets.contains(&form) {
                self.secrets.push(form);
            }
        }
        // Longest first, so a secret containing another is replaced whole.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with every known secret, URL userinfo and secret query value
    /// replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        redact_url_text(&out)
    }
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

/// Decodes `%XX` escapes; invalid escapes are kept as they are.
pub(crate) fn percent_decode(s: &str) -> std::result::Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

/// Whether a URL query or option name looks like it carries a secret.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('-', "_");
    [
        "secret",
        "password",
        "token",
        "sig",
        "sas",
        "key",
        "credential",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// Redacts URLs inside free text by structure: the userinfo of every
/// `scheme://user:pass@host` and the values of secret-looking `name=value`
/// query parameters become `***`. Never panics, whatever the input.
pub(crate) fn redact_url_text(text: &str) -> String {
    let without_userinfo = redact_userinfo(text);
    redact_secret_params(&without_userinfo)
}

fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (before, after) = rest.split_at(pos + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        if let Some(at) = authority.rfind('@') {
            out.push_str("***");
            out.push_str(&authority[at..]);
        } else {
            out.push_str(authority);
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

fn redact_secret_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Look at every `name=value` whose name starts after `?`, `&`, space or
    // line start.
    while let Some(eq) = rest.find('=') {
        let (head, tail) = rest.split_at(eq);
        let name_start = head
            .rfind(|c: char| matches!(c, '?' | '&' | ';' | ',' | '"' | '\'') || c.is_whitespace())
            .map(|i| i + head[i..].chars().next().map_or(1, char::len_utf8))
            .unwrap_or(0);
        let name = &head[name_start..];
        out.push_str(head);
        out.push('=');
        let value = &tail[1..];
        let value_end = value
            .find(|c: char| matches!(c, '&' | '#' | '"' | '\'' | ')' | ',') || c.is_whitespace())
            .unwrap_or(value.len());
        if !name.is_empty() && value_end > 0 && is_secret_name(name) {
            out.push_str("***");
        } else {
            out.push_str(&value[..value_end]);
        }
        rest = &value[value_end..];
    }
    out.push_str(rest);
    out
}

/// Which kind of backend failed, for hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackendKind {
    Memory,
    Local,
    S3,
    Azure,
    Gcs,
}

/// What error translation needs to know about a store.
#[derive(Clone, Debug)]
pub(crate) struct ErrorContext {
    /// Redacted URL, as [`crate::Store::url`] returns.
    pub(crate) store: String,
    pub(crate) kind: BackendKind,
    /// The endpoint configured explicitly, for "cannot reach" hints.
    pub(crate) endpoint: Option<String>,
    /// The backend's usual endpoint, when none is configured and the error
    /// text names no URL.
    pub(crate) default_endpoint: Option<String>,
    /// The bucket or container, for "does not exist" hints.
    pub(crate) bucket: Option<String>,
    pub(crate) redactor: Redactor,
}

impl ErrorContext {
    /// Translates an object_store error of operation `op` on `key`.
    pub(crate) fn translate(&self, op: &'static str, key: &str, err: object_store::Error) -> Error {
        let text = chain_text(&err);
        let store = self.store.clone();
        let key = key.to_string();
        match err {
            object_store::Error::NotFound { .. } if self.missing_bucket(&text).is_none() => {
                Error::NotFound { store, key }
            }
            object_store::Error::AlreadyExists { .. } => Error::AlreadyExists { store, key },
            object_store::Error::Precondition { .. } => Error::Conflict { store, key },
            object_store::Error::NotImplemented { .. }
            | object_store::Error::NotSupported { .. } => Error::Unsupported {
                store,
                what: format!("{op} ({})", self.redactor.redact(&text)),
            },
            _ => {
                let message = match self.hint(op, &err, &text) {
                    Some(hint) => format!("{hint}: {text}"),
                    None => text,
                };
                Error::Backend {
                    store,
                    op,
                    key,
                    message: self.redactor.redact(&message),
                }
            }
        }
    }

    /// A backend error that did not come from object_store.
    pub(crate) fn backend(&self, op: &'static str, key: &str, message: impl AsRef<str>) -> Error {
        Error::Backend {
            store: self.store.clone(),
            op,
            key: key.to_string(),
            message: self.redactor.redact(message.as_ref()),
        }
    }

    pub(crate) fn not_found(&self, key: &str) -> Error {
        Error::NotFound {
            store: self.store.clone(),
            key: key.to_string(),
        }
    }

    pub(crate) fn conflict(&self, key: &str) -> Error {
        Error::Conflict {
            store: self.store.clone(),
            key: key.to_string(),
        }
    }

    pub(crate) fn already_exists(&self, key: &str) -> Error {
        Error::AlreadyExists {
            store: self.store.clone(),
            key: key.to_string(),
        }
    }

    /// "bucket X does not exist" when the error text says so.
    fn missing_bucket(&self, text: &str) -> Option<String> {
        let lower = text.to_ascii_lowercase();
        let missing = [
            "nosuchbucket",
            "containernotfound",
            "the specified container does not exist",
            "the specified bucket does not exist",
        ]
        .iter()
        .any(|m| lower.contains(m));
        missing.then(|| {
            let what = if self.kind == BackendKind::Azure {
                "container"
            } else {
                "bucket"
            };
            let bucket = self.bucket.as_deref().unwrap_or("(unknown)");
            format!("{what} {bucket} does not exist")
        })
    }

    /// A short explanation of common failures, from the error chain text.
    fn hint(&self, op: &str, err: &object_store::Error, text: &str) -> Option<String> {
        let lower = text.to_ascii_lowercase();
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| origin_in(text))
            .or_else(|| self.default_endpoint.clone())
            .unwrap_or_else(|| "(default endpoint)".into());
        if let Some(problem) = certificate_problem(text) {
            return Some(format!(
                "the TLS certificate of endpoint {endpoint} {problem}"
            ));
        }
        if lower.contains("connection refused") {
            return Some(format!(
                "cannot reach endpoint {endpoint}: connection refused"
            ));
        }
        if lower.contains("dns error")
            || lower.contains("failed to lookup address")
            || lower.contains("name or service not known")
        {
            return Some(format!(
                "cannot reach endpoint {endpoint}: host name not resolved"
            ));
        }
        if (lower.contains("connect") && lower.contains("timed out"))
            || lower.contains("operation timed out")
        {
            return Some(format!(
                "cannot reach endpoint {endpoint}: connection timed out"
            ));
        }
        if lower.contains("error sending request") || lower.contains("tcp connect error") {
            return Some(format!("cannot reach endpoint {endpoint}"));
        }
        if let Some(hint) = self.missing_bucket(text) {
            return Some(hint);
        }
        let check = match self.kind {
            BackendKind::Azure => "check account name and account key",
            BackendKind::Gcs => "check the service account key",
            _ => "check access key and secret key",
        };
        let says = |marks: &[&str]| marks.iter().any(|m| lower.contains(m));
        // The server did not take the credentials at all.
        let rejected = matches!(err, object_store::Error::Unauthenticated { .. })
            || says(&[
                "signaturedoesnotmatch",
                "invalidaccesskeyid",
                "authenticationfailed",
                "failed to authenticate",
                "invalid_grant",
            ]);
        if rejected {
            return Some(format!("access denied: {check}"));
        }
        // It took them, or cannot say: the key may lack the right.
        let refused = matches!(err, object_store::Error::PermissionDenied { .. })
            || says(&[
                "accessdenied",
                "access denied",
                "authorizationfailure",
                "authorizationpermissionmismatch",
            ]);
        if refused {
            let writes = ["put", "create", "update", "upload", "delete", "write"]
                .iter()
                .any(|w| op.contains(w));
            return Some(format!(
                "access denied for {op}: the credentials may lack the permission for it{}, \
                 or be wrong: {check}",
                if writes {
                    " (a read-only key cannot write or delete)"
                } else {
                    ""
                }
            ));
        }
        None
    }
}

/// What is wrong with a server certificate the TLS client refused (from
/// rustls's `invalid peer certificate: ...` in an error text), and what to
/// do about it: "is not trusted (...): ...".
fn certificate_problem(text: &str) -> Option<String> {
    const MARK: &str = "invalid peer certificate";
    let lower = text.to_ascii_lowercase();
    let detail = match lower.find(MARK) {
        Some(at) => text[at + MARK.len()..].trim_start_matches([':', ' ']),
        None if lower.contains("certificate verify failed") => "",
        None => return None,
    };
    let detail_lower = detail.to_ascii_lowercase();
    let problem = if detail_lower.starts_with("unknownissuer") || detail.is_empty() {
        "is not trusted (signed by an unknown authority): give the CA that signed it with --ca-file FILE (store option ca_file=FILE)".to_string()
    } else if detail_lower.starts_with("certificate not valid for name")
        || detail_lower.starts_with("notvalidforname")
    {
        let why: String = detail.chars().take(200).collect();
        format!("does not name the endpoint's host ({why})")
    } else if detail_lower.starts_with("certificate expired") || detail_lower.starts_with("expired")
    {
        "has expired".to_string()
    } else {
        let why: String = detail
            .chars()
            .take_while(|c| !matches!(c, '\n' | ')'))
            .take(200)
            .collect();
        format!("is not trusted ({why})")
    };
    Some(problem)
}

/// `scheme://host[:port]` of the first http(s) URL in `text`.
fn origin_in(text: &str) -> Option<String> {
    let start = text.find("http://").or_else(|| text.find("https://"))?;
    let url = &text[start..];
    let end = url
        .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | ','))
        .unwrap_or(url.len());
    let parsed = url::Url::parse(&url[..end]).ok()?;
    let mut origin = format!("{}://{}", parsed.scheme(), parsed.host_str()?);
    if let Some(port) = parsed.port() {
        origin.push_str(&format!(":{port}"));
    }
    Some(origin)
}

/// An error and its sources as one line, skipping sources whose text the
/// line already holds (object_store repeats them in its messages); line
/// breaks (XML error bodies) become single spaces.
pub(crate) fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !t.is_empty() && !text.contains(&t) {
            let _ = write!(text, ": {t}");
        }
        source = s.source();
    }
    condense_xml_error(&one_line(&text))
}

/// Replaces an S3 or Azure XML error body quoted in `text`
/// (`<?xml …><Error><Code>AccessDenied</Code><Message>Access Denied.</Message>
/// <Resource>…</Resource><RequestId>…</RequestId></Error>`) by its code and
/// message: the rest is noise in a one-line error.
fn condense_xml_error(text: &str) -> String {
    let Some(end) = text.find("</Error>") else {
        return text.to_string();
    };
    let start = text[..end]
        .find("<?xml")
        .or_else(|| text[..end].find("<Error>"))
        .unwrap_or(end);
    let body = &text[start..end];
    let field = |name: &str| {
        let open = format!("<{name}>");
        let from = body.find(&open)? + open.len();
        let to = body[from..].find(&format!("</{name}>"))? + from;
        Some(body[from..to].trim().to_string())
    };
    let mut summary = match (field("Code"), field("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        (None, Some(m)) => m,
        (None, None) => return text.to_string(),
    };
    // Azure says why it refused a signature here (a clock skew: "Request
    // date header too old"): its first sentence, which is the point.
    if let Some(detail) = field("AuthenticationErrorDetail") {
        let first = detail.split(". ").next().unwrap_or(&detail);
        let first: String = first.chars().take(200).collect();
        summary = format!("{summary} ({first})");
    }
    format!(
        "{}{summary}{}",
        &text[..start],
        &text[end + "</Error>".len()..]
    )
}

/// Replaces each run of whitespace holding a line break by one space.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending: Option<String> = None;
    for c in text.chars() {
        if c.is_whitespace() {
            pending.get_or_insert_with(String::new).push(c);
            continue;
        }
        if let Some(ws) = pending.take() {
            if ws.contains(['\n', '\r']) {
                out.push(' ');
            } else {
                out.push_str(&ws);
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_and_name_store_and_key() {
        let e = Error::Backend {
            store: "s3://b/p (endpoint http://127.0.0.1:1)".into(),
            op: "put",
            key: "x/statefile.json".into(),
            message: "boom".into(),
        };
        assert_eq!(
            e.to_string(),
            "put of x/statefile.json on s3://b/p (endpoint http://127.0.0.1:1) failed: boom"
        );
        let e = Error::Backend {
            store: "s3://b".into(),
            op: "list",
            key: String::new(),
            message: "boom".into(),
        };
        assert_eq!(e.to_string(), "list on s3://b failed: boom");
        let e = Error::NotFound {
            store: "memory://".into(),
            key: "k".into(),
        };
        assert_eq!(e.to_string(), "object k not found in memory://");
    }

    #[test]
    fn redacts_secrets_userinfo_and_params() {
        let mut r = Redactor::default();
        r.add("s3cr3t/key+x");
        r.add("ab"); // too short to search for in free text
        let text =
            "failed s3cr3t/key+x and s3cr3t%2Fkey%2Bx; url http://u:pw@host:1/b?sig=abc&x=1 ab";
        let red = r.redact(text);
        assert!(!red.contains("s3cr3t"), "{red}");
        assert!(!red.contains("pw@"), "{red}");
        assert!(!red.contains("sig=abc"), "{red}");
        assert!(red.contains("x=1"), "{red}");
        assert!(red.contains("http://***@host:1/b"), "{red}");
    }

    #[test]
    fn url_text_redaction_never_panics_on_odd_input() {
        for input in [
            "",
            "=",
            "==",
            "://",
            "a://@",
            "?=&=",
            "é=é",
            "x://é@é?é=é",
            "&key=",
            "a=b=c",
        ] {
            let _ = redact_url_text(input);
        }
        assert_eq!(
            redact_url_text("s3://k:s@b/p?secret_key=zz&region=r"),
            "s3://***@b/p?secret_key=***&region=r"
        );
    }

    #[test]
    fn refused_certificates_are_explained() {
        let hint = |text: &str| certificate_problem(text).unwrap_or_default();
        let unknown = hint(
            "error sending request: client error (Connect): invalid peer certificate: UnknownIssuer",
        );
        assert!(
            unknown.starts_with("is not trusted (signed by an unknown authority)")
                && unknown.contains("--ca-file"),
            "{unknown}"
        );
        let name = hint(
            "invalid peer certificate: certificate not valid for name \"minio\"; certificate is only valid for localhost",
        );
        assert!(
            name.starts_with("does not name the endpoint's host"),
            "{name}"
        );
        assert_eq!(
            hint("invalid peer certificate: certificate expired: verification time 2"),
            "has expired"
        );
        assert_eq!(
            hint("invalid peer certificate: BadSignature"),
            "is not trusted (BadSignature)"
        );
        assert_eq!(certificate_problem("connection refused"), None);
    }

    #[test]
    fn xml_error_bodies_shrink_to_code_and_message() {
        let text = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\" \
                    encoding=\"UTF-8\"?> <Error><Code>AccessDenied</Code><Message>Access Denied.\
                    </Message><Resource>/b/k</Resource><RequestId>17A</RequestId></Error> (after 0 retries)";
        assert_eq!(
            condense_xml_error(text),
            "Server returned non-2xx status code: 403 Forbidden: AccessDenied: Access Denied. (after 0 retries)"
        );
        let azure = "403: <?xml?><Error><Code>AuthenticationFailed</Code><Message>Server failed \
                     to authenticate the request.</Message><AuthenticationErrorDetail>Request date \
                     header too old: 'Fri, 01 Jan 2021 00:00:00 GMT'. More text.\
                     </AuthenticationErrorDetail></Error>";
        assert_eq!(
            condense_xml_error(azure),
            "403: AuthenticationFailed: Server failed to authenticate the request. (Request date \
             header too old: 'Fri, 01 Jan 2021 00:00:00 GMT')"
        );
        let plain = "connection refused";
        assert_eq!(condense_xml_error(plain), plain);
        let odd = "x </Error> y";
        assert_eq!(condense_xml_error(odd), odd);
    }

    #[test]
    fn chain_text_skips_repeated_sources() {
        let inner = std::io::Error::other("connection refused");
        let outer = object_store::Error::Generic {
            store: "S3",
            source: Box::new(inner),
        };
        assert_eq!(chain_text(&outer), "Generic S3 error: connection refused");
        assert_eq!(one_line("a\n  <b>\r\n c  d\n"), "a <b> c  d");
    }
}
