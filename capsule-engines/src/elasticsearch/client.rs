//! A small HTTP client for the Elasticsearch/OpenSearch REST API: base URL
//! without credentials, basic authentication in a header, retries of
//! rejected requests with exponential backoff, and error messages that
//! name the request and the server's reason (never the password).

use std::time::Duration;

use bytes::Bytes;
use capsule_core::{Error, Result};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::options::EsConnection;
use super::server::ServerInfo;

/// First backoff after a rejected request; doubled each retry.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A request body and its content type.
#[derive(Clone, Debug)]
pub(crate) enum Body {
    /// `application/json`.
    Json(Bytes),
    /// `application/x-ndjson` (`_bulk`).
    Ndjson(Bytes),
}

impl Body {
    /// A JSON body from a value.
    pub fn json(value: &serde_json::Value) -> Body {
        Body::Json(Bytes::from(value.to_string()))
    }
}

/// A response: status and whole body.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

/// The REST client of one engine job.
#[derive(Clone, Debug)]
pub(crate) struct EsClient {
    http: reqwest::Client,
    base: String,
    user: Option<String>,
    password: Option<capsule_store::Secret>,
    label: String,
    retries: u32,
}

/// Whether a status means "rejected, nothing done: try again later".
pub(crate) fn is_retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
}

/// The backoff before retry `attempt` (1-based).
pub(crate) fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

impl EsClient {
    /// A client for `conn`; `label` (`elasticsearch(host:port)`) prefixes
    /// every error.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the CA certificate file cannot be read.
    pub fn new(conn: &EsConnection, retries: u32, label: String) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(conn.timeout)
            .connect_timeout(conn.connect_timeout)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(32)
            .no_proxy()
            .user_agent(concat!("capsule/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &conn.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                Error::invalid(
                    "elasticsearch connection",
                    format!("cannot read CA certificate {}: {e}", path.display()),
                )
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::invalid(
                    "elasticsearch connection",
                    format!("invalid CA certificate {}: {e}", path.display()),
                )
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        if conn.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| Error::Engine {
            context: label.clone(),
            message: format!("cannot build the HTTP client: {}", chain(&e)),
        })?;
        Ok(EsClient {
            http,
            base: conn.url.trim_end_matches('/').to_string(),
            user: conn.user.clone(),
            password: conn.password.clone(),
            label,
            retries,
        })
    }

    /// `elasticsearch(host:port)`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// An engine error about this server.
    pub fn error(&self, message: impl Into<String>) -> Error {
        Error::Engine {
            context: self.label.clone(),
            message: message.into(),
        }
    }

    /// `GET /`: the distribution and version, checking the credentials.
    ///
    /// # Errors
    /// As [`EsClient::call`]; [`Error::Unsupported`] for another product
    /// or an old version.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        // The first call of a job: an unreachable server fails at once.
        let reply = self.request_with(Method::GET, "/", None, 0, None).await?;
        if !reply.status.is_success() {
            return Err(self.status_error(&Method::GET, "/", &reply));
        }
        ServerInfo::from_root(&reply.body, &self.label)
    }

    /// Sends one request, retrying (with backoff) when the server answers
    /// 429/503 or the connection cannot be made; returns any other answer.
    ///
    /// # Errors
    /// [`Error::Engine`] naming the request when the server cannot be
    /// reached (after the retries) or the response cannot be read.
    pub async fn request(&self, method: Method, path: &str, body: Option<Body>) -> Result<Reply> {
        self.request_with(method, path, body, self.retries, None)
            .await
    }

    /// As [`EsClient::call`], waiting up to `timeout` for the answer
    /// instead of the connection's timeout (a synchronous `_reindex`).
    ///
    /// # Errors
    /// As [`EsClient::call`].
    pub async fn call_with_timeout(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        timeout: Duration,
    ) -> Result<Bytes> {
        let reply = self
            .request_with(method.clone(), path, body, self.retries, Some(timeout))
            .await?;
        if reply.status.is_success() {
            Ok(reply.body)
        } else {
            Err(self.status_error(&method, path, &reply))
        }
    }

    async fn request_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        retries: u32,
        timeout: Option<Duration>,
    ) -> Result<Reply> {
        let mut attempt = 0;
        loop {
            let outcome = self
                .send_once(method.clone(), path, body.clone(), timeout)
                .await;
            let retryable = match &outcome {
                Ok(reply) => is_retryable(reply.status),
                Err(e) => e.is_connect(),
            };
            if !retryable || attempt >= retries {
                return outcome.map_err(|e| self.transport_error(&method, path, &e));
            }
            attempt += 1;
            let wait = backoff(attempt);
            let why = match &outcome {
                Ok(reply) => format!("HTTP {}", reply.status.as_u16()),
                Err(e) => chain(e),
            };
            tracing::info!(
                server = %self.label,
                request = %format!("{method} {path}"),
                reason = %why,
                "retry {attempt} of {retries} in {wait:?}"
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        timeout: Option<Duration>,
    ) -> std::result::Result<Reply, reqwest::Error> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(user) = &self.user {
            req = req.basic_auth(user, self.password.as_ref().map(|p| p.expose()));
        }
        req = match body {
            Some(Body::Json(b)) => req.header("content-type", "application/json").body(b),
            Some(Body::Ndjson(b)) => req.header("content-type", "application/x-ndjson").body(b),
            None => req,
        };
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        Ok(Reply { status, body })
    }

    fn transport_error(&self, method: &Method, path: &str, e: &reqwest::Error) -> Error {
        let message = if let Some(problem) = certificate_problem(&chain(e)) {
            format!("the TLS certificate of {} {problem}", self.base)
        } else if e.is_connect() {
            format!("cannot connect to {}: {}", self.base, root_cause(e))
        } else if e.is_timeout() {
            format!("{method} {path}: no answer in time ({})", root_cause(e))
        } else {
            format!("{method} {path}: {}", chain(e))
        };
        self.error(message)
    }

    /// Sends a request ([`EsClient::request`]) and returns the body of a
    /// 2xx answer.
    ///
    /// # Errors
    /// [`Error::Engine`] with the server's reason for any other status
    /// (authentication failures say so, naming the user only).
    pub async fn call(&self, method: Method, path: &str, body: Option<Body>) -> Result<Bytes> {
        let reply = self.request(method.clone(), path, body).await?;
        if reply.status.is_success() {
            Ok(reply.body)
        } else {
            Err(self.status_error(&method, path, &reply))
        }
    }

    /// A 2xx answer's body parsed as `T`.
    ///
    /// # Errors
    /// As [`EsClient::call`]; [`Error::Engine`] for an unexpected body.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.call(Method::GET, path, None).await?;
        self.parse(&Method::GET, path, &body)
    }

    /// `body` parsed as `T`, or an error naming the request.
    ///
    /// # Errors
    /// [`Error::Engine`] for an unexpected body.
    pub fn parse<'a, T: Deserialize<'a>>(
        &self,
        method: &Method,
        path: &str,
        body: &'a [u8],
    ) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| {
            self.error(format!(
                "{method} {path}: unexpected answer ({e}): {}",
                excerpt(body)
            ))
        })
    }

    /// Whether `HEAD path` finds something (200) or not (404).
    ///
    /// # Errors
    /// As [`EsClient::call`] for any other status.
    pub async fn exists(&self, path: &str) -> Result<bool> {
        let reply = self.request(Method::HEAD, path, None).await?;
        match reply.status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&Method::HEAD, path, &reply)),
        }
    }

    /// The error for a non-2xx `reply`.
    pub fn status_error(&self, method: &Method, path: &str, reply: &Reply) -> Error {
        let status = reply.status.as_u16();
        let reason = server_reason(&reply.body);
        let message = match reply.status {
            StatusCode::UNAUTHORIZED => match &self.user {
                Some(user) => format!(
                    "authentication failed for user {user:?} (HTTP 401): check the user and password"
                ),
                None => "the server requires authentication (HTTP 401): give a user and password"
                    .to_string(),
            },
            StatusCode::FORBIDDEN => {
                format!("{method} {path}: permission denied (HTTP 403): {reason}")
            }
            _ => format!("{method} {path}: HTTP {status}: {reason}"),
        };
        self.error(message)
    }
}

/// What is wrong with a server certificate the TLS client refused (from
/// rustls's `invalid peer certificate: ...` in an error chain), and what to
/// do about it.
fn certificate_problem(text: &str) -> Option<String> {
    const MARK: &str = "invalid peer certificate";
    let at = text.to_ascii_lowercase().find(MARK)?;
    let detail = text[at + MARK.len()..].trim_start_matches([':', ' ']);
    let short: String = detail.chars().take(200).collect();
    Some(
        if detail.to_ascii_lowercase().starts_with("unknownissuer") {
            "is not trusted (signed by an unknown authority): give the CA that signed it as the connection's CA certificate (--es-ca-cert FILE)".to_string()
        } else {
            format!("is not trusted ({short})")
        },
    )
}

/// Characters kept as they are in a path segment (index and template names).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'+');

/// `name` escaped for a URL path segment.
pub(crate) fn segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, SEGMENT).to_string()
}

/// `names` as comma-separated path segments, in groups whose joined
/// length stays under `max` bytes (request lines have a length limit).
pub(crate) fn name_groups(names: &[String], max: usize) -> Vec<String> {
    let mut groups = Vec::new();
    let mut current = String::new();
    for n in names {
        let s = segment(n);
        if !current.is_empty() && current.len() + 1 + s.len() > max {
            groups.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&s);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// `type: reason` of an Elasticsearch error body, else an excerpt of it.
pub(crate) fn server_reason(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return excerpt(body);
    };
    match value.get("error") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(err @ serde_json::Value::Object(_)) => describe_error(err),
        _ => excerpt(body),
    }
}

/// `type: reason` of an error object (a bulk item's or a response's),
/// with the innermost `caused_by` reason when it says more.
pub(crate) fn describe_error(err: &serde_json::Value) -> String {
    let kind = err.get("type").and_then(|v| v.as_str()).unwrap_or("error");
    let reason = err.get("reason").and_then(|v| v.as_str()).unwrap_or("");
    let mut out = format!("{kind}: {reason}");
    let mut cause = err.get("caused_by");
    let mut innermost = None;
    while let Some(c) = cause {
        innermost = c.get("reason").and_then(|v| v.as_str());
        cause = c.get("caused_by");
    }
    if let Some(inner) = innermost.filter(|r| !reason.contains(r)) {
        out.push_str(&format!(" ({inner})"));
    }
    out
}

/// The first 300 characters of a body, on one line.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        s.push('…');
    }
    s.replace(['\n', '\r'], " ")
}

/// An error and its sources on one line, without repeating a cause its
/// parent already printed.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The innermost cause's message (e.g. `Connection refused (os error 111)`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(4), Duration::from_millis(1600));
        assert_eq!(backoff(30), BACKOFF_MAX);
    }

    #[test]
    fn names_are_escaped_and_grouped() {
        assert_eq!(segment("logs-2024.01+x"), "logs-2024.01+x");
        assert_eq!(segment("a b/é"), "a%20b%2F%C3%A9");
        let names: Vec<String> = ["aaa", "bbb", "ccc"].map(String::from).to_vec();
        assert_eq!(name_groups(&names, 7), ["aaa,bbb", "ccc"]);
        assert_eq!(name_groups(&names, 100), ["aaa,bbb,ccc"]);
        assert!(name_groups(&[], 10).is_empty());
    }

    #[test]
    fn server_reasons_are_short() {
        let body = br#"{"error":{"root_cause":[],"type":"index_not_found_exception","reason":"no such index [x]"},"status":404}"#;
        assert_eq!(
            server_reason(body),
            "index_not_found_exception: no such index [x]"
        );
        let body = br#"{"error":{"type":"mapper_parsing_exception","reason":"failed to parse","caused_by":{"type":"x","reason":"Numeric value out of range"}}}"#;
        assert_eq!(
            server_reason(body),
            "mapper_parsing_exception: failed to parse (Numeric value out of range)"
        );
        assert_eq!(server_reason(br#"{"error":"no handler"}"#), "no handler");
        assert_eq!(server_reason(b"<html>\nbad gateway"), "<html> bad gateway");
    }
}
