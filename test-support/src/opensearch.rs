//! A throwaway OpenSearch-compatible server (osmem-server, in memory) on a
//! free loopback port, and [`FaultProxy`], an HTTP proxy in front of it
//! that injects what osmem cannot be told to do: `_bulk` rejections (429),
//! failed or cut `_bulk` requests, failing endpoints and basic
//! authentication.
//!
//! The binary is `$CAPSULE_OSMEM`, else `osmem-server` on `PATH`, else the
//! one inside the `osmem_server` Python package (`pip install
//! osmem-server==0.1.6`, done by `scripts/setup-test-deps.sh`).

mod proxy;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub use proxy::{BulkFailure, FaultProxy, Faults};

use crate::process::{HttpResponse, ServerProcess, find_binary, free_port, http_request};

/// A running osmem-server on 127.0.0.1; stopped on drop.
#[derive(Debug)]
pub struct OpenSearch {
    /// The HTTP port.
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    process: ServerProcess,
}

impl OpenSearch {
    /// Starts osmem-server on a free port and waits until `GET /` answers.
    ///
    /// # Panics
    /// If the binary is missing (naming `scripts/setup-test-deps.sh`) or
    /// the server does not answer within 30 s (with the tail of its log).
    pub fn start() -> OpenSearch {
        let binary = find_binary("osmem-server", "CAPSULE_OSMEM", &package_bin_dir());
        let work = ServerProcess::work_dir_for("osmem");
        let port = free_port();
        let mut cmd = Command::new(binary);
        cmd.current_dir(work.path()).args([
            "-addr".to_string(),
            format!("127.0.0.1:{port}"),
            "-no-stdin-watch".to_string(),
        ]);
        let mut process = ServerProcess::spawn("osmem", cmd, work);
        process.wait_ready("GET / answering 200", Duration::from_secs(30), || {
            http_request(port, "GET", "/", &[], b"")
                .map(|r| r.status == 200)
                .unwrap_or(false)
        });
        OpenSearch {
            port,
            url: format!("http://127.0.0.1:{port}"),
            process,
        }
    }

    /// One server shared by every test of the calling test binary, started
    /// on first use and stopped when the test process exits. Tests sharing
    /// it use index and template names of their own.
    pub fn shared() -> &'static OpenSearch {
        static SHARED: OnceLock<OpenSearch> = OnceLock::new();
        SHARED.get_or_init(OpenSearch::start)
    }

    /// Sends a request with a JSON body (may be empty) and returns the
    /// answer, whatever its status.
    ///
    /// # Panics
    /// When the server cannot be reached.
    pub fn request(&self, method: &str, path: &str, body: &str) -> HttpResponse {
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("Content-Type", "application/json")]
        };
        http_request(self.port, method, path, headers, body.as_bytes())
            .unwrap_or_else(|e| self.process.fail(&format!("{method} {path}: {e}")))
    }

    /// As [`OpenSearch::request`], panicking unless the status is 2xx.
    ///
    /// # Panics
    /// On a non-2xx answer, with its body.
    pub fn ok(&self, method: &str, path: &str, body: &str) -> String {
        let r = self.request(method, path, body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: HTTP {}: {}",
            r.status,
            r.body
        );
        r.body
    }

    /// Loads NDJSON `_bulk` lines (a trailing newline is added when
    /// missing) and refreshes; panics when any item failed.
    ///
    /// # Panics
    /// On a non-2xx answer or `"errors":true`.
    pub fn bulk(&self, ndjson: &str) {
        let mut body = ndjson.to_string();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        let r = http_request(
            self.port,
            "POST",
            "/_bulk?refresh=true",
            &[("Content-Type", "application/x-ndjson")],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| self.process.fail(&format!("POST /_bulk: {e}")));
        assert!(
            r.status == 200 && !r.body.contains("\"errors\":true"),
            "_bulk failed: HTTP {}: {}",
            r.status,
            &r.body[..r.body.len().min(2000)]
        );
    }

    /// The server process (log, work directory).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

/// `<site-packages>/osmem_server/bin`, where the wheel keeps the binary.
fn package_bin_dir() -> Vec<PathBuf> {
    Command::new("python3")
        .args([
            "-c",
            "import osmem_server, os; print(os.path.dirname(osmem_server.__file__))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| vec![PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("bin")])
        .unwrap_or_default()
}
