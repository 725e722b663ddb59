//! An S3 endpoint that stores small objects in memory and throws away the
//! parts of multipart uploads: the bench's way to measure capsule's own
//! S3 client path (SigV4, HTTP, multipart) without any storage work on the
//! same cores.
//!
//! It answers what a capsule backup asks of a bucket (PUT with
//! `If-None-Match`/`If-Match`, GET, HEAD, DELETE, ListObjectsV2 and the
//! multipart calls), checks no signature, and is not a test double for
//! correctness: SeaweedFS is. A completed multipart object keeps its size
//! but not its bytes; reading it back is an error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::Response;
use futures::StreamExt;

/// One stored object.
#[derive(Clone, Debug)]
struct Object {
    /// `None`: a multipart upload's result, whose bytes were discarded.
    bytes: Option<Bytes>,
    size: u64,
    etag: String,
    modified: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
struct State {
    objects: Mutex<BTreeMap<String, Object>>,
    /// Open multipart uploads: id → bytes received so far.
    uploads: Mutex<BTreeMap<String, u64>>,
    next: AtomicU64,
    /// Bytes received in parts, for the table's note.
    discarded: AtomicU64,
}

/// A running sink; stops when dropped.
pub struct S3Sink {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl S3Sink {
    /// Starts the sink on a free loopback port.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start() -> Result<Self> {
        let state = Arc::new(State::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback({
            let state = Arc::clone(&state);
            move |method: Method, uri: Uri, headers: HeaderMap, body: Body| {
                let state = Arc::clone(&state);
                async move { handle(&state, method, uri, headers, body).await }
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(S3Sink { addr, state, task })
    }

    /// A store URL for `bucket` on this sink (any keys are accepted).
    pub fn url(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}?endpoint=http://{}&region=us-east-1&access_key_id=sink&secret_access_key=sink&allow_http=true",
            self.addr
        )
    }

    /// Bytes received in multipart parts (and thrown away) since the
    /// last call; the count starts again from zero.
    pub fn take_discarded_bytes(&self) -> u64 {
        self.state.discarded.swap(0, Ordering::Relaxed)
    }
}

impl Drop for S3Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = code;
    r
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn object_response(o: &Object, with_body: bool) -> Response {
    let mut r = if with_body {
        match &o.bytes {
            Some(b) => Response::new(Body::from(b.clone())),
            None => return status(StatusCode::NOT_IMPLEMENTED, "discarded by the sink"),
        }
    } else {
        Response::new(Body::empty())
    };
    let h = r.headers_mut();
    h.insert(header::ETAG, o.etag.parse().expect("etag"));
    h.insert(
        header::LAST_MODIFIED,
        o.modified
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string()
            .parse()
            .expect("date"),
    );
    h.insert(header::CONTENT_LENGTH, o.size.into());
    r
}

async fn handle(
    state: &State,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let q = query(&uri);
    let path = uri.path().trim_start_matches('/');
    // capsule's keys (ids, artifact names) need no percent-decoding.
    let (_bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let key = key.to_string();
    let tag = || format!("\"{}\"", state.next.fetch_add(1, Ordering::Relaxed));
    match method {
        Method::GET if key.is_empty() => list(state, &q),
        Method::GET | Method::HEAD => match state.objects.lock().expect("lock").get(&key) {
            Some(o) => object_response(o, method == Method::GET),
            None => status(
                StatusCode::NOT_FOUND,
                "<Error><Code>NoSuchKey</Code></Error>",
            ),
        },
        Method::DELETE if q.contains_key("uploadId") => {
            state.uploads.lock().expect("lock").remove(&q["uploadId"]);
            status(StatusCode::NO_CONTENT, "")
        }
        Method::DELETE => {
            state.objects.lock().expect("lock").remove(&key);
            status(StatusCode::NO_CONTENT, "")
        }
        Method::POST if q.contains_key("uploads") => {
            let id = format!("u{}", state.next.fetch_add(1, Ordering::Relaxed));
            state.uploads.lock().expect("lock").insert(id.clone(), 0);
            status(
                StatusCode::OK,
                format!(
                    "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>{key}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
                ),
            )
        }
        Method::PUT if q.contains_key("uploadId") => {
            let mut n = 0u64;
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => n += c.len() as u64,
                    Err(e) => return status(StatusCode::BAD_REQUEST, e.to_string()),
                }
            }
            state.discarded.fetch_add(n, Ordering::Relaxed);
            match state.uploads.lock().expect("lock").get_mut(&q["uploadId"]) {
                Some(total) => *total += n,
                None => {
                    return status(
                        StatusCode::NOT_FOUND,
                        "<Error><Code>NoSuchUpload</Code></Error>",
                    );
                }
            }
            let mut r = status(StatusCode::OK, "");
            r.headers_mut()
                .insert(header::ETAG, tag().parse().expect("etag"));
            r
        }
        Method::POST if q.contains_key("uploadId") => {
            let _ = axum::body::to_bytes(body, 1 << 20).await;
            let Some(size) = state.uploads.lock().expect("lock").remove(&q["uploadId"]) else {
                return status(
                    StatusCode::NOT_FOUND,
                    "<Error><Code>NoSuchUpload</Code></Error>",
                );
            };
            let etag = tag();
            let object = Object {
                bytes: None,
                size,
                etag: etag.clone(),
                modified: chrono::Utc::now(),
            };
            state
                .objects
                .lock()
                .expect("lock")
                .insert(key.clone(), object);
            status(
                StatusCode::OK,
                format!(
                    "<CompleteMultipartUploadResult><Key>{key}</Key><ETag>{etag}</ETag></CompleteMultipartUploadResult>"
                ),
            )
        }
        Method::PUT => {
            let bytes = match axum::body::to_bytes(body, 64 << 20).await {
                Ok(b) => b,
                Err(e) => return status(StatusCode::BAD_REQUEST, e.to_string()),
            };
            let mut objects = state.objects.lock().expect("lock");
            let current = objects.get(&key).map(|o| o.etag.clone());
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let refused = match (header("if-none-match"), header("if-match")) {
                (Some("*"), _) => current.is_some(),
                (_, Some(want)) => current.as_deref() != Some(want),
                _ => false,
            };
            if refused {
                return status(
                    StatusCode::PRECONDITION_FAILED,
                    "<Error><Code>PreconditionFailed</Code></Error>",
                );
            }
            let etag = tag();
            objects.insert(
                key,
                Object {
                    size: bytes.len() as u64,
                    bytes: Some(bytes),
                    etag: etag.clone(),
                    modified: chrono::Utc::now(),
                },
            );
            let mut r = status(StatusCode::OK, "");
            r.headers_mut()
                .insert(header::ETAG, etag.parse().expect("etag"));
            r
        }
        _ => status(StatusCode::NOT_IMPLEMENTED, format!("{method} {uri}")),
    }
}

/// ListObjectsV2, with `prefix` and `delimiter`, in one page.
fn list(state: &State, q: &BTreeMap<String, String>) -> Response {
    let prefix = q.get("prefix").map(String::as_str).unwrap_or("");
    let delimiter = q
        .get("delimiter")
        .map(String::as_str)
        .filter(|d| !d.is_empty());
    let objects = state.objects.lock().expect("lock");
    let mut contents = String::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (key, o) in objects.range(prefix.to_string()..) {
        let Some(rest) = key.strip_prefix(prefix) else {
            break;
        };
        if let Some(d) = delimiter
            && let Some(i) = rest.find(d)
        {
            dirs.insert(format!("{prefix}{}", &rest[..i + d.len()]));
            continue;
        }
        contents.push_str(&format!(
            "<Contents><Key>{key}</Key><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size></Contents>",
            o.modified.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            o.etag.replace('"', "&quot;"),
            o.size
        ));
    }
    for d in dirs {
        contents.push_str(&format!(
            "<CommonPrefixes><Prefix>{d}</Prefix></CommonPrefixes>"
        ));
    }
    status(
        StatusCode::OK,
        format!(
            "<ListBucketResult><Prefix>{prefix}</Prefix><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
        ),
    )
}
