//! A fake Kubernetes API server: serves the real JSON shapes of the
//! resources capsule's discovery reads (PersistentVolumeClaim lists,
//! `CnvrgApp` lists, Secrets, `Status` errors) and watches them, on a free
//! loopback port, with a kubeconfig file (token auth) the real `kube`
//! client can load.
//!
//! Every change gets the next `resourceVersion`, as in a real cluster:
//! lists carry the current one, and `?watch=true&resourceVersion=N`
//! streams (chunked, one JSON object per line) every `ADDED`, `MODIFIED`
//! and `DELETED` event after `N` for that collection, then a `BOOKMARK`,
//! then the events as they happen, until `timeoutSeconds` or until a test
//! drops the connection ([`FakeKubeApi::drop_watches`]) to exercise the
//! client's reconnect.
//!
//! ```no_run
//! let api = test_support::kube_api::FakeKubeApi::start();
//! api.add_secret("cnvrg", "pg-creds", &[("POSTGRES_HOST", "postgres")]);
//! api.add_pvc("cnvrg", "pg-storage", &[("capsule.mlops.cnvrg.io/backup", "true")]);
//! api.respond("/api/v1/namespaces/cnvrg/secrets/pg-creds", 403, None);
//! // Later, while a client watches: an event, then a lost connection.
//! api.add_pvc("cnvrg", "redis-storage", &[("capsule.mlops.cnvrg.io/backup", "true")]);
//! api.drop_watches();
//! let kubeconfig = api.kubeconfig();
//! # let _ = kubeconfig;
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The bearer token the kubeconfig carries and the server requires.
pub const TOKEN: &str = "capsule-test-token";

/// Where an object's `resourceVersion` goes in a stored body.
const RV: &str = "__RESOURCE_VERSION__";

/// The collections the server keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Pvc,
    App,
    Secret,
}

impl Kind {
    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Pvc => ("v1", "PersistentVolumeClaimList"),
            Kind::App => ("mlops.cnvrg.io/v1", "CnvrgAppList"),
            Kind::Secret => ("v1", "SecretList"),
        }
    }

    fn object_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Pvc => ("v1", "PersistentVolumeClaim"),
            Kind::App => ("mlops.cnvrg.io/v1", "CnvrgApp"),
            Kind::Secret => ("v1", "Secret"),
        }
    }
}

/// One watch event as it goes on the wire.
struct Event {
    rv: u64,
    kind: Kind,
    namespace: String,
    kind_of_event: &'static str,
    object: String,
}

struct State {
    /// The last resourceVersion handed out.
    rv: u64,
    /// (kind, namespace, name) → (body with the [`RV`] placeholder, its resourceVersion).
    objects: BTreeMap<(Kind, String, String), (String, u64)>,
    /// Every change to PVCs and CnvrgApps, oldest first (never compacted).
    events: Vec<Event>,
    overrides: HashMap<String, (u16, String)>,
    requests: Vec<String>,
    /// Bumped by `drop_watches`: open watches with an older value close.
    drops: u64,
    open_watches: usize,
    closed: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            rv: 100,
            objects: BTreeMap::new(),
            events: Vec::new(),
            overrides: HashMap::new(),
            requests: Vec::new(),
            drops: 0,
            open_watches: 0,
            closed: false,
        }
    }
}

impl State {
    fn body(&self, key: &(Kind, String, String)) -> Option<String> {
        self.objects
            .get(key)
            .map(|(b, rv)| b.replace(RV, &rv.to_string()))
    }

    fn upsert(&mut self, kind: Kind, namespace: &str, name: &str, template: String) {
        self.rv += 1;
        let key = (kind, namespace.to_string(), name.to_string());
        let existed = self
            .objects
            .insert(key.clone(), (template, self.rv))
            .is_some();
        if kind != Kind::Secret {
            let object = self.body(&key).expect("just inserted");
            self.events.push(Event {
                rv: self.rv,
                kind,
                namespace: namespace.into(),
                kind_of_event: if existed { "MODIFIED" } else { "ADDED" },
                object,
            });
        }
    }

    fn remove(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let key = (kind, namespace.to_string(), name.to_string());
        let Some((template, _)) = self.objects.remove(&key) else {
            return false;
        };
        self.rv += 1;
        if kind != Kind::Secret {
            self.events.push(Event {
                rv: self.rv,
                kind,
                namespace: namespace.into(),
                kind_of_event: "DELETED",
                object: template.replace(RV, &self.rv.to_string()),
            });
        }
        true
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server; stops serving when dropped.
pub struct FakeKubeApi {
    port: u16,
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for FakeKubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKubeApi")
            .field("port", &self.port)
            .finish()
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        // Wake the accept loop so it sees `closed`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl FakeKubeApi {
    /// Starts the server on `127.0.0.1:0` and writes its kubeconfig.
    ///
    /// # Panics
    /// When the port cannot be bound or the kubeconfig written.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake Kubernetes API");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if accepting.lock().closed {
                    return;
                }
                let shared = accepting.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\n\
             users:\n- name: capsule\n  user:\n    token: {TOKEN}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: capsule\n\
             current-context: fake\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("write kubeconfig");
        FakeKubeApi { port, shared, dir }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The kubeconfig file pointing at this server (token auth).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn change<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.shared.lock());
        self.shared.changed.notify_all();
        r
    }

    /// Adds (or replaces) a PersistentVolumeClaim with `annotations`: an
    /// `ADDED` (or `MODIFIED`) event for its watchers.
    pub fn add_pvc(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) {
        let body = pvc_template(namespace, name, annotations);
        self.change(|s| s.upsert(Kind::Pvc, namespace, name, body));
    }

    /// Deletes a PersistentVolumeClaim (a `DELETED` event); false when
    /// there was none.
    pub fn remove_pvc(&self, namespace: &str, name: &str) -> bool {
        self.change(|s| s.remove(Kind::Pvc, namespace, name))
    }

    /// Adds (or replaces) a `CnvrgApp` with `spec` (JSON text): an
    /// `ADDED` (or `MODIFIED`) event for its watchers.
    pub fn add_cnvrgapp(&self, namespace: &str, name: &str, spec: &str) {
        let body = cnvrgapp_template(namespace, name, spec);
        self.change(|s| s.upsert(Kind::App, namespace, name, body));
    }

    /// Deletes a `CnvrgApp` (a `DELETED` event); false when there was none.
    pub fn remove_cnvrgapp(&self, namespace: &str, name: &str) -> bool {
        self.change(|s| s.remove(Kind::App, namespace, name))
    }

    /// Adds (or replaces, with a new `resourceVersion`) an Opaque Secret
    /// with `data` (base64-encoded on the wire).
    pub fn add_secret(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let body = secret_template(namespace, name, data);
        self.change(|s| s.upsert(Kind::Secret, namespace, name, body));
    }

    /// Deletes a Secret (reads answer 404); false when there was none.
    pub fn remove_secret(&self, namespace: &str, name: &str) -> bool {
        self.change(|s| s.remove(Kind::Secret, namespace, name))
    }

    /// Answers `path` (without query; lists and watches share it) with
    /// `status` and `body`, else a `Status` object of that code.
    pub fn respond(&self, path: &str, status: u16, body: Option<&str>) {
        let body = body.map_or_else(|| status_json(status, path), str::to_string);
        self.change(|s| s.overrides.insert(path.into(), (status, body)));
    }

    /// Closes every open watch connection abruptly (no final chunk), as a
    /// lost connection or a restarted API server would.
    pub fn drop_watches(&self) {
        self.change(|s| s.drops += 1);
    }

    /// How many watch connections are open now.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().open_watches
    }

    /// The paths requested so far (with query).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }
}

/// The `Status` object the API server answers errors with.
pub fn status_json(code: u16, path: &str) -> String {
    let (reason, message) = match code {
        401 => ("Unauthorized", "Unauthorized".to_string()),
        403 => (
            "Forbidden",
            format!("system:serviceaccount:capsule:capsule cannot get {path}"),
        ),
        404 => ("NotFound", format!("{path} not found")),
        410 => ("Expired", "too old resource version".to_string()),
        _ => ("InternalError", format!("error on {path}")),
    };
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":{},"reason":"{reason}","code":{code}}}"#,
        json_string(&message)
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn object_map(pairs: &[(&str, &str)], encode: bool) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = if encode {
                base64(v.as_bytes())
            } else {
                v.to_string()
            };
            format!("{}:{}", json_string(k), json_string(&v))
        })
        .collect();
    format!("{{{}}}", items.join(","))
}

fn pvc_template(namespace: &str, name: &str, annotations: &[(&str, &str)]) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{{"name":{},"namespace":{},"uid":"0b0e4a8e-{name}","resourceVersion":"{RV}","creationTimestamp":"2026-01-02T03:04:05Z","annotations":{}}},"spec":{{"accessModes":["ReadWriteOnce"],"resources":{{"requests":{{"storage":"10Gi"}}}},"storageClassName":"standard","volumeMode":"Filesystem","volumeName":"pvc-{name}"}},"status":{{"phase":"Bound","accessModes":["ReadWriteOnce"],"capacity":{{"storage":"10Gi"}}}}}}"#,
        json_string(name),
        json_string(namespace),
        object_map(annotations, false)
    )
}

fn cnvrgapp_template(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"mlops.cnvrg.io/v1","kind":"CnvrgApp","metadata":{{"name":{},"namespace":{},"uid":"7d1c-{name}","resourceVersion":"{RV}","generation":3}},"spec":{spec},"status":{{"status":"READY"}}}}"#,
        json_string(name),
        json_string(namespace)
    )
}

fn secret_template(namespace: &str, name: &str, data: &[(&str, &str)]) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":{},"namespace":{},"resourceVersion":"{RV}"}},"type":"Opaque","data":{}}}"#,
        json_string(name),
        json_string(namespace),
        object_map(data, true)
    )
}

/// A PersistentVolumeClaim as the API serves it.
pub fn pvc(namespace: &str, name: &str, annotations: &[(&str, &str)]) -> String {
    pvc_template(namespace, name, annotations).replace(RV, "101")
}

/// A `CnvrgApp` (`mlops.cnvrg.io/v1`) with `spec` (JSON text).
pub fn cnvrgapp(namespace: &str, name: &str, spec: &str) -> String {
    cnvrgapp_template(namespace, name, spec).replace(RV, "202")
}

/// An Opaque Secret; `data` values base64-encoded as on the wire.
pub fn secret(namespace: &str, name: &str, data: &[(&str, &str)]) -> String {
    secret_template(namespace, name, data).replace(RV, "303")
}

/// A list of `kind` with `items` (JSON texts), at `resourceVersion` 999.
pub fn list(api_version: &str, kind: &str, items: &[String]) -> String {
    list_at(api_version, kind, items, 999)
}

fn list_at(api_version: &str, kind: &str, items: &[String], rv: u64) -> String {
    format!(
        r#"{{"apiVersion":"{api_version}","kind":"{kind}","metadata":{{"resourceVersion":"{rv}"}},"items":[{}]}}"#,
        items.join(",")
    )
}

/// Standard base64 (padded), as Secret data goes on the wire (also the
/// form of an HTTP basic `Authorization` header).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The collection a path names: its kind and namespace (`None`: every
/// namespace).
fn collection(path: &str) -> Option<(Kind, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "persistentvolumeclaims"] => Some((Kind::Pvc, None)),
        ["api", "v1", "namespaces", ns, "persistentvolumeclaims"] => {
            Some((Kind::Pvc, Some(ns.to_string())))
        }
        ["apis", "mlops.cnvrg.io", "v1", "cnvrgapps"] => Some((Kind::App, None)),
        [
            "apis",
            "mlops.cnvrg.io",
            "v1",
            "namespaces",
            ns,
            "cnvrgapps",
        ] => Some((Kind::App, Some(ns.to_string()))),
        _ => None,
    }
}

fn route(state: &State, path: &str) -> (u16, String) {
    if let Some((code, body)) = state.overrides.get(path) {
        return (*code, body.clone());
    }
    if let Some((kind, ns)) = collection(path) {
        let items: Vec<String> = state
            .objects
            .keys()
            .filter(|(k, n, _)| *k == kind && ns.as_ref().is_none_or(|ns| ns == n))
            .filter_map(|key| state.body(key))
            .collect();
        let (api_version, list_kind) = kind.list_kind();
        return (200, list_at(api_version, list_kind, &items, state.rv));
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let ["api", "v1", "namespaces", ns, "secrets", name] = parts.as_slice()
        && let Some(body) = state.body(&(Kind::Secret, ns.to_string(), name.to_string()))
    {
        return (200, body);
    }
    (404, status_json(404, path))
}

fn query(target: &str) -> HashMap<String, String> {
    target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn serve(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if let Some(n) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let mut body = vec![0; n];
            reader.read_exact(&mut body)?;
        }
        let path = target.split('?').next().unwrap_or("/").to_string();
        let q = query(&target);
        let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
        let (code, body) = {
            let mut s = shared.lock();
            s.requests.push(target.clone());
            if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}"))
            {
                (401, status_json(401, &path))
            } else if let (true, false, Some((kind, ns))) =
                (watch, s.overrides.contains_key(&path), collection(&path))
            {
                drop(s);
                let from = q
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let timeout = q
                    .get("timeoutSeconds")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(290);
                let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
                let spec = WatchSpec {
                    kind,
                    namespace: ns,
                    from,
                    timeout: Duration::from_secs(timeout),
                    bookmarks,
                };
                // A watch ends the connection (the client opens another).
                return watch_stream(&mut stream, shared, &spec);
            } else {
                route(&s, &path)
            }
        };
        let reason = match code {
            200 => "OK",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            410 => "Gone",
            _ => "Error",
        };
        write!(
            stream,
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        stream.flush()?;
    }
}

struct WatchSpec {
    kind: Kind,
    namespace: Option<String>,
    from: u64,
    timeout: Duration,
    bookmarks: bool,
}

/// Counts an open watch while it lives.
struct OpenWatch<'a>(&'a Shared);

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.lock().open_watches -= 1;
    }
}

fn chunk(stream: &mut TcpStream, line: &str) -> std::io::Result<()> {
    write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
    stream.flush()
}

/// Whether the client closed its end (a non-blocking peek reads EOF).
fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

/// Streams the events of `spec`'s collection after `spec.from`, then new
/// ones as they happen, until the timeout (a final chunk), a
/// `drop_watches` (an abrupt close), the client leaving or the server
/// being dropped.
fn watch_stream(stream: &mut TcpStream, shared: &Shared, spec: &WatchSpec) -> std::io::Result<()> {
    let drops = {
        let mut s = shared.lock();
        s.open_watches += 1;
        s.drops
    };
    let _open = OpenWatch(shared);
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    stream.flush()?;
    let started = Instant::now();
    let mut cursor = spec.from;
    let mut bookmarked = !spec.bookmarks;
    loop {
        let (lines, end) = {
            let mut s = shared.lock();
            loop {
                let pending = s.events.iter().any(|e| e.rv > cursor);
                if pending || s.closed || s.drops != drops || !bookmarked {
                    break;
                }
                let (next, timed_out) = shared
                    .changed
                    .wait_timeout(s, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner());
                s = next;
                if timed_out.timed_out() {
                    break;
                }
            }
            if s.closed || s.drops != drops {
                (Vec::new(), Some(true))
            } else {
                let mut lines: Vec<String> = s
                    .events
                    .iter()
                    .filter(|e| {
                        e.rv > cursor
                            && e.kind == spec.kind
                            && spec.namespace.as_ref().is_none_or(|n| *n == e.namespace)
                    })
                    .map(|e| format!(r#"{{"type":"{}","object":{}}}"#, e.kind_of_event, e.object))
                    .collect();
                cursor = cursor.max(s.rv);
                if !bookmarked {
                    let (api_version, kind) = spec.kind.object_kind();
                    lines.push(format!(
                        r#"{{"type":"BOOKMARK","object":{{"kind":"{kind}","apiVersion":"{api_version}","metadata":{{"resourceVersion":"{}"}}}}}}"#,
                        s.rv
                    ));
                    bookmarked = true;
                }
                (lines, None)
            }
        };
        if end == Some(true) {
            // Abrupt: no final chunk, the client sees a broken stream.
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        for line in lines {
            chunk(stream, &format!("{line}\n"))?;
        }
        if started.elapsed() >= spec.timeout {
            write!(stream, "0\r\n\r\n")?;
            stream.flush()?;
            return Ok(());
        }
        if peer_closed(stream) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn paths_route() {
        let mut s = State::default();
        s.upsert(Kind::Pvc, "a", "p", pvc_template("a", "p", &[]));
        s.upsert(Kind::Pvc, "b", "q", pvc_template("b", "q", &[]));
        let (_, all) = route(&s, "/api/v1/persistentvolumeclaims");
        assert!(all.contains("\"q\"") && all.contains(r#""resourceVersion":"102""#));
        let (_, only_a) = route(&s, "/api/v1/namespaces/a/persistentvolumeclaims");
        assert!(only_a.contains("\"p\"") && !only_a.contains("\"q\""));
        assert_eq!(route(&s, "/api/v1/namespaces/a/secrets/x").0, 404);
        // A change is a new version and an event; a delete, another.
        s.upsert(Kind::Pvc, "a", "p", pvc_template("a", "p", &[("k", "v")]));
        assert!(s.remove(Kind::Pvc, "b", "q"));
        let kinds: Vec<_> = s.events.iter().map(|e| (e.rv, e.kind_of_event)).collect();
        assert_eq!(
            kinds,
            [
                (101, "ADDED"),
                (102, "ADDED"),
                (103, "MODIFIED"),
                (104, "DELETED")
            ]
        );
    }

    #[test]
    fn a_watch_replays_later_events_then_streams_and_can_be_dropped() {
        let api = FakeKubeApi::start();
        api.add_pvc("a", "before", &[]);
        let rv = api.shared.lock().rv;
        api.add_pvc("a", "after", &[]);
        api.add_pvc("b", "elsewhere", &[]);
        let mut s = TcpStream::connect(("127.0.0.1", api.port)).unwrap();
        write!(
            s,
            "GET /api/v1/namespaces/a/persistentvolumeclaims?watch=true&resourceVersion={rv}&allowWatchBookmarks=true HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut lines = Vec::new();
        let mut read_event = |lines: &mut Vec<String>| loop {
            let mut l = String::new();
            assert!(reader.read_line(&mut l).unwrap() > 0, "stream ended");
            if l.starts_with('{') {
                lines.push(l);
                return;
            }
        };
        read_event(&mut lines);
        read_event(&mut lines);
        assert!(lines[0].contains(r#""type":"ADDED""#) && lines[0].contains("\"after\""));
        assert!(lines[1].contains(r#""type":"BOOKMARK""#), "{lines:?}");
        api.remove_pvc("a", "before");
        read_event(&mut lines);
        assert!(lines[2].contains(r#""type":"DELETED""#) && lines[2].contains("\"before\""));
        assert_eq!(api.open_watches(), 1);
        api.drop_watches();
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        let start = Instant::now();
        while api.open_watches() > 0 && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(api.open_watches(), 0);
    }
}
