//! Seeding stores and talking HTTP to an in-process daemon.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use capsule_core::{
    Artifact, BackupId, Catalog, RequestType, ServiceIdentity, ServiceType, Statefile, Status,
};
use capsule_daemon::{ApiToken, Daemon, DaemonOptions, Mode, StaticTargets, Timings};
use capsule_store::Store;
use chrono::Utc;
use futures::StreamExt;

pub const TOKEN: &str = "in-process-token-Zq81";

/// One test at a time: the latency test measures, the others start servers.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A finished (or `status`) statefile of `cluster`'s `service`, `age_secs` old.
pub fn statefile(cluster: &str, service: &str, status: Status, age_secs: i64) -> Statefile {
    let at = Utc::now() - chrono::Duration::seconds(age_secs);
    let mut sf = Statefile::new(
        BackupId::generate(ServiceType::Postgresql),
        RequestType::Periodic,
        at,
    );
    let (ns, name) = service.split_once('/').unwrap();
    sf.service = ServiceIdentity {
        cluster: Some(cluster.into()),
        namespace: Some(ns.into()),
        name: Some(name.into()),
        endpoint: Some("127.0.0.1:5432".into()),
        database: Some("app".into()),
    };
    sf.status = status;
    sf.started_at = Some(at);
    if status != Status::Running {
        sf.finished_at = Some(at + chrono::Duration::seconds(2));
    }
    let mut a = Artifact::new("dump.pgc.zst", "pg_dump-custom");
    a.size_bytes = Some(1000 + age_secs as u64);
    a.sha256 = Some("00".repeat(32));
    sf.artifacts.push(a);
    sf.description = "seeded".into();
    sf
}

/// Writes `list` into `catalog`, 64 at a time.
pub async fn seed(catalog: &Catalog, list: Vec<Statefile>) {
    futures::stream::iter(list)
        .map(|sf| {
            let c = catalog.clone();
            async move { c.create(&sf).await.unwrap() }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

/// A fresh in-memory store with the default prefix.
pub fn memory_store() -> Store {
    Store::from_url("memory://")
        .unwrap()
        .with_prefix("cnvrg-smart-backups")
        .unwrap()
}

/// Options for an in-process API daemon on 127.0.0.1:0 with short clocks.
pub fn options(mode: Mode) -> DaemonOptions {
    let mut t = Timings::default();
    t.watch_interval = Duration::from_millis(200);
    t.heartbeat = Duration::from_millis(500);
    t.lease_ttl = Duration::from_secs(2);
    t.shutdown_grace = Duration::from_secs(5);
    DaemonOptions::new(mode, "east")
        .with_api_bind_addr("127.0.0.1:0")
        .with_api_token(Some(ApiToken::new(TOKEN).unwrap()))
        .with_timings(t)
}

/// Starts a daemon serving no targets over `store`.
pub async fn start(options: DaemonOptions, store: Store) -> Daemon {
    Daemon::start(options, store, Arc::new(StaticTargets::default()))
        .await
        .unwrap()
}

/// One HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A blocking HTTP/1.1 request (`Connection: close`) to `addr`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers end");
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers[9..12].parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
