//! [`FaultProxy`]: an HTTP/1.1 proxy to a local server that rejects some
//! `_bulk` requests (or half their documents) with 429, fails them (500,
//! or a connection closed without an answer) from some request on, fails
//! requests to chosen endpoints, and can demand basic authentication. One
//! thread per client connection, keep-alive towards the client, one
//! upstream connection per request.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::tcp_proxy::Acceptor;

/// What the proxy does wrong on purpose.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The first this many `_bulk` requests are answered `429 Too Many
    /// Requests` without reaching the server.
    pub reject_bulk_requests: usize,
    /// The next this many `_bulk` requests have every second document
    /// rejected (item status 429); the others are forwarded and indexed.
    pub reject_bulk_items: usize,
    /// Demand this user and password (HTTP basic); others get 401.
    pub basic_auth: Option<(String, String)>,
    /// From this `_bulk` request on (0-based, counting every `_bulk`
    /// request received), each one fails as [`Faults::bulk_failure`] says,
    /// without reaching the server.
    pub fail_bulk_from: Option<usize>,
    /// How the requests of [`Faults::fail_bulk_from`] fail.
    pub bulk_failure: BulkFailure,
    /// Requests whose path (without the query) ends with one of these are
    /// answered 500 without reaching the server (e.g. `/_reindex`).
    pub fail_paths: Vec<String>,
}

/// How a failed `_bulk` request fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BulkFailure {
    /// `500 Internal Server Error` with an Elasticsearch error body.
    #[default]
    ServerError,
    /// The connection is closed once the request is read, without an
    /// answer (a network cut, a crashed node).
    CutConnection,
}

#[derive(Debug, Default)]
struct Counters {
    bulk: AtomicUsize,
    rejected_requests: AtomicUsize,
    rejected_items: AtomicUsize,
    unauthorized: AtomicUsize,
    failed: AtomicUsize,
}

/// A running proxy on 127.0.0.1; stopped on drop.
#[derive(Debug)]
pub struct FaultProxy {
    /// The proxy's port.
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    counters: Arc<Counters>,
    // Stops accepting when dropped.
    _acceptor: Acceptor,
}

struct Shared {
    upstream: u16,
    faults: Faults,
    counters: Arc<Counters>,
}

impl FaultProxy {
    /// Starts a proxy to 127.0.0.1:`upstream` with `faults`.
    ///
    /// # Panics
    /// If no port can be bound.
    pub fn start(upstream: u16, faults: Faults) -> FaultProxy {
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            upstream,
            faults,
            counters: counters.clone(),
        });
        let acceptor = Acceptor::spawn(move |conn| {
            let _ = serve(conn, &shared);
        });
        FaultProxy {
            port: acceptor.port,
            url: format!("http://127.0.0.1:{}", acceptor.port),
            counters,
            _acceptor: acceptor,
        }
    }

    /// `_bulk` requests received.
    pub fn bulk_requests(&self) -> usize {
        self.counters.bulk.load(Ordering::SeqCst)
    }

    /// `_bulk` requests answered 429 as a whole.
    pub fn rejected_requests(&self) -> usize {
        self.counters.rejected_requests.load(Ordering::SeqCst)
    }

    /// Documents answered 429 inside a `_bulk` response.
    pub fn rejected_items(&self) -> usize {
        self.counters.rejected_items.load(Ordering::SeqCst)
    }

    /// Requests answered 401.
    pub fn unauthorized(&self) -> usize {
        self.counters.unauthorized.load(Ordering::SeqCst)
    }

    /// Requests failed on purpose ([`Faults::fail_bulk_from`],
    /// [`Faults::fail_paths`]).
    pub fn failed(&self) -> usize {
        self.counters.failed.load(Ordering::SeqCst)
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Response {
    status: u16,
    content_type: String,
    extra: Vec<(String, String)>,
    body: Vec<u8>,
    /// For HEAD: the length the server announced.
    head_length: Option<usize>,
    /// Close the connection instead of answering.
    cut: bool,
}

fn serve(conn: TcpStream, shared: &Shared) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader)? {
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let resp = respond(&req, shared)?;
        if resp.cut {
            break;
        }
        write_response(&mut writer, &req, &resp, close)?;
        if close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
    Ok(())
}

fn respond(req: &Request, shared: &Shared) -> io::Result<Response> {
    if let Some((user, pass)) = &shared.faults.basic_auth {
        let want = format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()));
        if req.header("authorization") != Some(want.as_str()) {
            shared.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
            let mut r = json(
                401,
                r#"{"error":{"type":"security_exception","reason":"unable to authenticate user for REST request"},"status":401}"#,
            );
            r.extra
                .push(("WWW-Authenticate".into(), "Basic realm=\"security\"".into()));
            return Ok(r);
        }
    }
    let path = req.target.split('?').next().unwrap_or("");
    let faults = &shared.faults;
    if faults.fail_paths.iter().any(|p| path.ends_with(p.as_str())) {
        shared.counters.failed.fetch_add(1, Ordering::SeqCst);
        return Ok(injected_error());
    }
    if req.method == "POST" && path.ends_with("/_bulk") {
        let n = shared.counters.bulk.fetch_add(1, Ordering::SeqCst);
        if faults.fail_bulk_from.is_some_and(|from| n >= from) {
            shared.counters.failed.fetch_add(1, Ordering::SeqCst);
            return Ok(match faults.bulk_failure {
                BulkFailure::ServerError => injected_error(),
                BulkFailure::CutConnection => Response {
                    cut: true,
                    ..json(502, "")
                },
            });
        }
        if n < faults.reject_bulk_requests {
            shared
                .counters
                .rejected_requests
                .fetch_add(1, Ordering::SeqCst);
            return Ok(json(
                429,
                r#"{"error":{"type":"es_rejected_execution_exception","reason":"rejected execution (injected by the test proxy)"},"status":429}"#,
            ));
        }
        if n < faults.reject_bulk_requests + faults.reject_bulk_items {
            return half_rejected(req, shared);
        }
    }
    forward(req, shared.upstream, None)
}

/// `500` with an Elasticsearch error body.
fn injected_error() -> Response {
    json(
        500,
        r#"{"error":{"type":"injected_failure_exception","reason":"failed on purpose by the test proxy"},"status":500}"#,
    )
}

/// Forwards every second document and answers 429 for the others.
fn half_rejected(req: &Request, shared: &Shared) -> io::Result<Response> {
    let lines: Vec<&[u8]> = req
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let pairs: Vec<&[&[u8]]> = lines.chunks(2).collect();
    let mut forwarded = Vec::new();
    for pair in pairs.iter().step_by(2) {
        for line in pair.iter() {
            forwarded.extend_from_slice(line);
            forwarded.push(b'\n');
        }
    }
    let upstream = forward(req, shared.upstream, Some(forwarded))?;
    if upstream.status != 200 {
        return Ok(upstream);
    }
    let mut kept = split_items(&upstream.body).into_iter();
    let mut items = Vec::with_capacity(pairs.len());
    for i in 0..pairs.len() {
        if i % 2 == 0 {
            items.push(kept.next().unwrap_or_else(|| b"{}".to_vec()));
        } else {
            shared
                .counters
                .rejected_items
                .fetch_add(1, Ordering::SeqCst);
            items.push(
                br#"{"index":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution (injected by the test proxy)"}}}"#
                    .to_vec(),
            );
        }
    }
    let mut body = br#"{"took":1,"errors":true,"items":["#.to_vec();
    body.extend(items.join(&b","[..]));
    body.extend_from_slice(b"]}");
    Ok(Response {
        status: 200,
        content_type: "application/json; charset=UTF-8".into(),
        extra: Vec::new(),
        body,
        head_length: None,
        cut: false,
    })
}

/// The top-level objects of the `"items"` array of a `_bulk` response.
fn split_items(body: &[u8]) -> Vec<Vec<u8>> {
    let key = b"\"items\":[";
    let Some(start) = body.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut item_start) = (0usize, false, false, 0);
    for (i, &b) in body.iter().enumerate().skip(start + key.len()) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => {
                if depth == 0 {
                    item_start = i;
                }
                depth += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    out.push(body[item_start..=i].to_vec());
                }
            }
            b']' if depth == 0 => break,
            _ => {}
        }
    }
    out
}

fn json(status: u16, body: &str) -> Response {
    Response {
        status,
        content_type: "application/json; charset=UTF-8".into(),
        extra: Vec::new(),
        body: body.as_bytes().to_vec(),
        head_length: None,
        cut: false,
    }
}

fn forward(req: &Request, upstream: u16, body: Option<Vec<u8>>) -> io::Result<Response> {
    let body = body.as_deref().unwrap_or(&req.body);
    let mut up = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream))?;
    up.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{upstream}\r\nConnection: close\r\nContent-Length: {}\r\n",
        req.method,
        req.target,
        body.len()
    );
    for (k, v) in &req.headers {
        let lower = k.to_ascii_lowercase();
        if !matches!(
            lower.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    up.write_all(head.as_bytes())?;
    up.write_all(body)?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw)?;
    parse_upstream(&raw, req.method == "HEAD")
}

fn parse_upstream(raw: &[u8], head: bool) -> io::Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other("upstream answer without a header end"))?;
    let text = String::from_utf8_lossy(&raw[..split]);
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("bad upstream status line"))?;
    let mut content_type = "application/json".to_string();
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-type" => content_type = v.to_string(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "content-length" => length = v.parse().ok(),
                _ => {}
            }
        }
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        content_type,
        extra: Vec::new(),
        body: if head { Vec::new() } else { body },
        head_length: if head { length } else { None },
        cut: false,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return out;
        };
        if size == 0 || data.len() < end + 2 + size {
            return out;
        }
        out.extend_from_slice(&data[end + 2..end + 2 + size]);
        data = &data[(end + 4 + size).min(data.len())..];
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::other(format!("bad request line {line:?}")));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            if size == 0 {
                line.clear();
                reader.read_line(&mut line)?;
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            chunk.truncate(size);
            req.body.extend(chunk);
        }
    } else if let Some(n) = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0; n];
        reader.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(Some(req))
}

fn write_response(
    w: &mut TcpStream,
    req: &Request,
    resp: &Response,
    close: bool,
) -> io::Result<()> {
    let length = resp.head_length.unwrap_or(resp.body.len());
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {length}\r\nConnection: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        if close { "close" } else { "keep-alive" }
    );
    for (k, v) in &resp.extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if req.method != "HEAD" {
        w.write_all(&resp.body)?;
    }
    w.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        500 => "Internal Server Error",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        _ => "Status",
    }
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_base64() {
        assert_eq!(base64(b"elastic:changeme"), "ZWxhc3RpYzpjaGFuZ2VtZQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn splits_bulk_items() {
        let body = br#"{"errors":false,"items":[{"index":{"_id":"a}\"{","status":201}},{"index":{"_id":"b","status":201}}],"took":1}"#;
        let items = split_items(body);
        assert_eq!(items.len(), 2);
        assert_eq!(items[1], br#"{"index":{"_id":"b","status":201}}"#);
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            b"hello world"
        );
    }
}
