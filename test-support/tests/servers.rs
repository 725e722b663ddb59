//! Starts each server for real and checks setup calls and teardown.

use std::path::Path;
use std::time::Duration;

use test_support::azurite::Azurite;
use test_support::postgres::{PgConfig, Postgres};
use test_support::process::wait_for_tcp;
use test_support::seaweedfs::{SeaweedConfig, SeaweedFs};
use test_support::tls::{TestCa, TlsProxy};

fn gone(pid: u32) -> bool {
    for _ in 0..50 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn seaweedfs_starts_creates_buckets_and_stops() {
    let s3 = SeaweedFs::start();
    assert!(wait_for_tcp(s3.port, Duration::from_secs(1)));
    s3.create_bucket("first");
    s3.create_bucket("first");
    assert!(
        s3.s3_url("first")
            .starts_with("s3://first?endpoint=http://127.0.0.1:")
    );
    assert!(!s3.s3_url("first").contains(&s3.secret_key));
    assert!(s3.s3_url_with_credentials("first").contains(&s3.secret_key));
    let (pid, dir) = (s3.process().pid(), s3.process().work_dir().to_path_buf());
    drop(s3);
    assert!(gone(pid), "weed {pid} still running");
    assert!(!dir.exists());
}

/// Each bucket is a SeaweedFS collection with volumes of its own; the test
/// binaries create dozens. With the volume count left to SeaweedFS (free disk
/// / volume size) a small CI disk ran out after a few buckets and every later
/// PUT failed with `500 InternalError`.
#[test]
fn seaweedfs_accepts_writes_into_many_buckets() {
    let s3 = SeaweedFs::start();
    for i in 0..60 {
        let bucket = format!("many-{i:02}");
        s3.create_bucket(&bucket);
        s3.put_object(&bucket, "object", format!("payload {i}").as_bytes())
            .unwrap_or_else(|e| panic!("bucket {i} of 60: {e}"));
    }
}

#[test]
fn azurite_starts_creates_containers_and_stops() {
    let az = Azurite::start();
    az.create_container("first");
    az.create_container("first");
    assert_eq!(
        az.endpoint,
        format!("http://127.0.0.1:{}/devstoreaccount1", az.port)
    );
    let pid = az.process().pid();
    drop(az);
    assert!(gone(pid), "azurite {pid} still running");
}

/// Sends `GET /` over TLS to 127.0.0.1:`port`, trusting only `ca_pem`, and
/// returns the status line; `Err` with the client's reason otherwise.
fn tls_get(port: u16, ca_pem: &str) -> Result<String, String> {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        Ok(text.lines().next().unwrap_or_default().to_string())
    })
}

#[test]
fn tls_proxy_terminates_tls_with_the_test_ca() {
    use std::io::{Read, Write};

    let ca = TestCa::new("proxy test CA");
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in upstream.incoming() {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let proxy = TlsProxy::start(upstream_port, &ca.server_cert());
    assert_eq!(
        tls_get(proxy.port, &ca.pem()).unwrap(),
        "HTTP/1.1 204 No Content"
    );
    let stranger = TestCa::new("another CA");
    let err = tls_get(proxy.port, &stranger.pem()).unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn seaweedfs_serves_s3_over_https_with_its_own_ca() {
    let s3 = SeaweedFs::start_with(SeaweedConfig::default().with_tls());
    let port = s3.https_port.unwrap();
    assert_eq!(s3.https_endpoint(), format!("https://127.0.0.1:{port}"));
    assert!(
        s3.s3_https_url("b")
            .starts_with("s3://b?endpoint=https://127.0.0.1:")
    );
    let ca = std::fs::read_to_string(s3.ca_file()).unwrap();
    // Unsigned: refused by S3, but over a verified TLS connection.
    let status = tls_get(port, &ca).unwrap();
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    s3.create_bucket("over-plain-http-too");
}

#[test]
fn postgres_accepts_verified_tls_with_its_own_ca() {
    let pg = Postgres::start_with(PgConfig::default().with_tls());
    let psql = |mode: &str, root: &Path| {
        std::process::Command::new(pg.bin_dir.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
            ])
            .args(["-U", "postgres", "-d", "postgres", "-c"])
            .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .env("PGSSLMODE", mode)
            .env("PGSSLROOTCERT", root)
            .output()
            .unwrap()
    };
    let out = psql("verify-full", &pg.ca_file());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    let out = psql("disable", &pg.ca_file());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "f", "{out:?}");
    let stranger = tempfile::tempdir().unwrap();
    let other = TestCa::new("another CA").write_pem(&stranger.path().join("ca.pem"));
    let out = psql("verify-full", &other);
    assert!(!out.status.success(), "{out:?}");
}

/// The fault-injection suite crashes the object store mid-upload and
/// starts it again: same port, same keys, the objects written before.
#[test]
fn seaweedfs_restarts_on_its_port_with_its_data() {
    let mut s3 = SeaweedFs::start();
    s3.create_bucket("kept");
    s3.put_object("kept", "before", b"written before the crash")
        .unwrap();
    s3.kill();
    assert!(s3.put_object("kept", "during", b"x").is_err());
    let started = std::time::Instant::now();
    s3.restart();
    eprintln!("seaweedfs restarted in {:?}", started.elapsed());
    s3.put_object("kept", "after", b"written after the restart")
        .unwrap();
    s3.create_bucket("kept");
}
