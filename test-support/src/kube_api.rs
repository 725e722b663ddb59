//! A fake Kubernetes API server: serves the real JSON shapes of the
//! resources capsule's discovery reads (PersistentVolumeClaim lists,
//! `CnvrgApp` lists, Secrets, `Status` errors) on a free loopback port,
//! with a kubeconfig file (token auth) the real `kube` client can load.
//!
//! ```no_run
//! let api = test_support::kube_api::FakeKubeApi::start();
//! api.add_secret("cnvrg", "pg-creds", &[("POSTGRES_HOST", "postgres")]);
//! api.add_pvc("cnvrg", "pg-storage", &[("capsule.mlops.cnvrg.io/backup", "true")]);
//! api.respond("/api/v1/namespaces/cnvrg/secrets/pg-creds", 403, None);
//! let kubeconfig = api.kubeconfig();
//! # let _ = kubeconfig;
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The bearer token the kubeconfig carries and the server requires.
pub const TOKEN: &str = "capsule-test-token";

#[derive(Default)]
struct State {
    pvcs: Vec<(String, String)>,
    apps: Vec<(String, String)>,
    secrets: HashMap<String, String>,
    overrides: HashMap<String, (u16, String)>,
    requests: Vec<String>,
}

/// The fake API server; stops accepting when dropped (its thread is
/// detached and idles).
pub struct FakeKubeApi {
    port: u16,
    state: Arc<Mutex<State>>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for FakeKubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKubeApi")
            .field("port", &self.port)
            .finish()
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
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
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
        FakeKubeApi { port, state, dir }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The kubeconfig file pointing at this server (token auth).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Adds a PersistentVolumeClaim with `annotations`.
    pub fn add_pvc(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) {
        let body = pvc(namespace, name, annotations);
        self.with(|s| s.pvcs.push((namespace.into(), body)));
    }

    /// Adds a `CnvrgApp` with `spec` (JSON text).
    pub fn add_cnvrgapp(&self, namespace: &str, name: &str, spec: &str) {
        let body = cnvrgapp(namespace, name, spec);
        self.with(|s| s.apps.push((namespace.into(), body)));
    }

    /// Adds (or replaces) an Opaque Secret with `data` (base64-encoded on the wire).
    pub fn add_secret(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let body = secret(namespace, name, data);
        self.with(|s| {
            s.secrets.insert(
                format!("/api/v1/namespaces/{namespace}/secrets/{name}"),
                body,
            )
        });
    }

    /// Answers `path` (without query) with `status` and `body`, else a
    /// `Status` object of that code.
    pub fn respond(&self, path: &str, status: u16, body: Option<&str>) {
        let body = body.map_or_else(|| status_json(status, path), str::to_string);
        self.with(|s| s.overrides.insert(path.into(), (status, body)));
    }

    /// The paths requested so far (with query).
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
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

/// A PersistentVolumeClaim as the API serves it.
pub fn pvc(namespace: &str, name: &str, annotations: &[(&str, &str)]) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{{"name":{},"namespace":{},"uid":"0b0e4a8e-{name}","resourceVersion":"101","creationTimestamp":"2026-01-02T03:04:05Z","annotations":{}}},"spec":{{"accessModes":["ReadWriteOnce"],"resources":{{"requests":{{"storage":"10Gi"}}}},"storageClassName":"standard","volumeMode":"Filesystem","volumeName":"pvc-{name}"}},"status":{{"phase":"Bound","accessModes":["ReadWriteOnce"],"capacity":{{"storage":"10Gi"}}}}}}"#,
        json_string(name),
        json_string(namespace),
        object_map(annotations, false)
    )
}

/// A `CnvrgApp` (`mlops.cnvrg.io/v1`) with `spec` (JSON text).
pub fn cnvrgapp(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        r#"{{"apiVersion":"mlops.cnvrg.io/v1","kind":"CnvrgApp","metadata":{{"name":{},"namespace":{},"uid":"7d1c-{name}","resourceVersion":"202","generation":3}},"spec":{spec},"status":{{"status":"READY"}}}}"#,
        json_string(name),
        json_string(namespace)
    )
}

/// An Opaque Secret; `data` values base64-encoded as on the wire.
pub fn secret(namespace: &str, name: &str, data: &[(&str, &str)]) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":{},"namespace":{},"resourceVersion":"303"}},"type":"Opaque","data":{}}}"#,
        json_string(name),
        json_string(namespace),
        object_map(data, true)
    )
}

/// A list of `kind` with `items` (JSON texts).
pub fn list(api_version: &str, kind: &str, items: &[String]) -> String {
    format!(
        r#"{{"apiVersion":"{api_version}","kind":"{kind}","metadata":{{"resourceVersion":"999"}},"items":[{}]}}"#,
        items.join(",")
    )
}

fn base64(bytes: &[u8]) -> String {
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

fn route(state: &State, path: &str) -> (u16, String) {
    if let Some((code, body)) = state.overrides.get(path) {
        return (*code, body.clone());
    }
    let filtered = |items: &[(String, String)], ns: Option<&str>| -> Vec<String> {
        items
            .iter()
            .filter(|(n, _)| ns.is_none_or(|ns| ns == n))
            .map(|(_, b)| b.clone())
            .collect()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "persistentvolumeclaims"] => (
            200,
            list(
                "v1",
                "PersistentVolumeClaimList",
                &filtered(&state.pvcs, None),
            ),
        ),
        ["api", "v1", "namespaces", ns, "persistentvolumeclaims"] => (
            200,
            list(
                "v1",
                "PersistentVolumeClaimList",
                &filtered(&state.pvcs, Some(ns)),
            ),
        ),
        ["apis", "mlops.cnvrg.io", "v1", "cnvrgapps"] => (
            200,
            list(
                "mlops.cnvrg.io/v1",
                "CnvrgAppList",
                &filtered(&state.apps, None),
            ),
        ),
        [
            "apis",
            "mlops.cnvrg.io",
            "v1",
            "namespaces",
            ns,
            "cnvrgapps",
        ] => (
            200,
            list(
                "mlops.cnvrg.io/v1",
                "CnvrgAppList",
                &filtered(&state.apps, Some(ns)),
            ),
        ),
        _ => match state.secrets.get(path) {
            Some(b) => (200, b.clone()),
            None => (404, status_json(404, path)),
        },
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
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
        let (code, body) = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.requests.push(target.clone());
            if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {TOKEN}"))
            {
                (401, status_json(401, &path))
            } else {
                route(&s, &path)
            }
        };
        let reason = match code {
            200 => "OK",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
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
        s.pvcs.push(("a".into(), pvc("a", "p", &[])));
        s.pvcs.push(("b".into(), pvc("b", "q", &[])));
        assert!(
            route(&s, "/api/v1/persistentvolumeclaims")
                .1
                .contains("\"q\"")
        );
        let (_, only_a) = route(&s, "/api/v1/namespaces/a/persistentvolumeclaims");
        assert!(only_a.contains("\"p\"") && !only_a.contains("\"q\""));
        assert_eq!(route(&s, "/api/v1/namespaces/a/secrets/x").0, 404);
    }
}
