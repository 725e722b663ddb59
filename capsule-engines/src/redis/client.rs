//! A small Redis client over tokio: TCP or TLS, `AUTH`, `SELECT`, single
//! calls and pipelines. Replies are parsed by [`super::resp`]; the
//! password is sent in `AUTH` and nowhere else.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use capsule_core::{Error, Result};
use tokio::io::{
    AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf, ReadHalf, WriteHalf, split,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore, pki_types::ServerName};

use super::connection::RedisConnection;
use super::idle::IdleLimit;
use super::resp::{self, Reply};

/// A TCP or TLS connection.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The reading half, buffered, with an optional limit on silence.
pub(crate) type Reader = BufReader<IdleLimit<ReadHalf<Stream>>>;
/// The writing half.
pub(crate) type Writer = WriteHalf<Stream>;

/// One authenticated connection to a server.
pub(crate) struct Client {
    pub(crate) reader: Reader,
    pub(crate) writer: Writer,
    /// `host:port`, for messages.
    pub(crate) endpoint: String,
    /// This end's address of the TCP connection: the address the server
    /// reaches capsule at (a restore by replication listens on it).
    pub(crate) local_addr: Option<std::net::SocketAddr>,
    out: Vec<u8>,
}

/// An error of the server or the connection, naming the server and step.
pub(crate) fn engine_error(endpoint: &str, step: &str, message: impl std::fmt::Display) -> Error {
    Error::Engine {
        context: format!("redis {endpoint}: {step}"),
        message: message.to_string(),
    }
}

fn tls_config(conn: &RedisConnection) -> Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    match &conn.tls_ca_file {
        Some(path) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::invalid(
                        "redis connection",
                        format!("cannot read TLS authorities from {}: {e}", path.display()),
                    )
                })?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    Error::invalid(
                        "redis connection",
                        format!("bad certificate in {}: {e}", path.display()),
                    )
                })?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid("redis connection", format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Client {
    /// Connects (TCP, then TLS for `rediss://`), authenticates and selects
    /// the connection's database.
    ///
    /// # Errors
    /// [`Error::Engine`] naming the server and step (connect, TLS, AUTH,
    /// SELECT) with the server's message; never the password.
    pub(crate) async fn connect(conn: &RedisConnection) -> Result<Client> {
        let endpoint = conn.endpoint();
        let timeout = conn.connect_timeout;
        let tcp =
            tokio::time::timeout(timeout, TcpStream::connect((conn.host.as_str(), conn.port)))
                .await
                .map_err(|_| {
                    engine_error(&endpoint, "connect", format!("timed out after {timeout:?}"))
                })?
                .map_err(|e| engine_error(&endpoint, "connect", e))?;
        let _ = tcp.set_nodelay(true);
        let local_addr = tcp.local_addr().ok();
        let stream = if conn.tls {
            let config = tls_config(conn)?;
            let name = ServerName::try_from(conn.host.clone())
                .map_err(|e| engine_error(&endpoint, "TLS", e))?;
            let tls = tokio::time::timeout(
                timeout,
                TlsConnector::from(Arc::new(config)).connect(name, tcp),
            )
            .await
            .map_err(|_| engine_error(&endpoint, "TLS handshake", "timed out"))?
            .map_err(|e| engine_error(&endpoint, "TLS handshake", e))?;
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Tcp(tcp)
        };
        let (r, w) = split(stream);
        let mut client = Client {
            reader: BufReader::with_capacity(256 * 1024, IdleLimit::new(r, endpoint.clone())),
            writer: w,
            endpoint,
            local_addr,
            out: Vec::with_capacity(4096),
        };
        // Bounded like the connect: a peer that accepts and never answers
        // (not a Redis, a stuck proxy) must not hold the job forever.
        let endpoint = client.endpoint.clone();
        tokio::time::timeout(timeout, client.handshake(conn))
            .await
            .map_err(|_| {
                engine_error(
                    &endpoint,
                    "connect",
                    format!(
                        "no answer within {timeout:?}: the server does not speak Redis, or is \
                         stuck; is it the right host and port?"
                    ),
                )
            })??;
        // Every later reply, too: a server that stops answering fails the
        // request after `idle_timeout` instead of holding the job for ever.
        client.set_idle_limit(Some(conn.idle_timeout));
        Ok(client)
    }

    /// AUTH, SELECT, then a PING that proves the server answers.
    async fn handshake(&mut self, conn: &RedisConnection) -> Result<()> {
        let client = self;
        if let Some(password) = &conn.password {
            let reply = match &conn.username {
                Some(user) => {
                    client
                        .raw_call(&[b"AUTH", user.as_bytes(), password.expose().as_bytes()])
                        .await?
                }
                None => {
                    client
                        .raw_call(&[b"AUTH", password.expose().as_bytes()])
                        .await?
                }
            };
            if let Reply::Error(e) = reply {
                return Err(engine_error(&client.endpoint, "authentication", e));
            }
        }
        if conn.db != 0 {
            client
                .call(&[b"SELECT", conn.db.to_string().as_bytes()])
                .await?;
        }
        match client.raw_call(&[b"PING"]).await? {
            Reply::Error(e) if e.starts_with("NOAUTH") => {
                Err(engine_error(&client.endpoint, "authentication", e))
            }
            // Another error (an ACL without PING) still is an answer.
            _ => Ok(()),
        }
    }

    /// Makes every later read fail after `limit` without a byte from the
    /// server (`None` or zero: wait as long as it takes). [`Client::connect`]
    /// sets the connection's `idle_timeout`.
    pub(crate) fn set_idle_limit(&mut self, limit: Option<std::time::Duration>) {
        self.reader.get_mut().set_limit(limit);
    }

    /// Queues a command (sent on the next flush).
    pub(crate) fn queue(&mut self, args: &[&[u8]]) {
        resp::encode(&mut self.out, args);
    }

    /// Sends the queued commands.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        let result = async {
            self.writer.write_all(&self.out).await?;
            self.writer.flush().await
        }
        .await;
        self.out.clear();
        result.map_err(|e| engine_error(&self.endpoint, "sending", e))
    }

    /// Reads the next reply, error replies included.
    pub(crate) async fn read(&mut self) -> Result<Reply> {
        resp::read_reply(&mut self.reader)
            .await
            .map_err(|e| engine_error(&self.endpoint, "reading a reply", e))
    }

    /// Sends one command and reads its reply, error replies included.
    pub(crate) async fn raw_call(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.queue(args);
        self.flush().await?;
        self.read().await
    }

    /// Sends one command; an error reply is an [`Error::Engine`] naming the
    /// command.
    pub(crate) async fn call(&mut self, args: &[&[u8]]) -> Result<Reply> {
        match self.raw_call(args).await? {
            Reply::Error(e) => Err(engine_error(
                &self.endpoint,
                &String::from_utf8_lossy(args[0]),
                e,
            )),
            r => Ok(r),
        }
    }

    /// `INFO <section>` as a map of its `key:value` lines.
    pub(crate) async fn info(&mut self, section: &str) -> Result<BTreeMap<String, String>> {
        let reply = self.call(&[b"INFO", section.as_bytes()]).await?;
        let text = reply.text().unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect())
    }

    /// The number of keys in each database (`INFO keyspace`).
    pub(crate) async fn keyspace(&mut self) -> Result<BTreeMap<u64, u64>> {
        let info = self.info("keyspace").await?;
        Ok(info
            .iter()
            .filter_map(|(k, v)| {
                let db = k.strip_prefix("db")?.parse().ok()?;
                let keys = v.split(',').find_map(|p| p.strip_prefix("keys="))?;
                Some((db, keys.parse().ok()?))
            })
            .collect())
    }
}

/// What a server says about itself.
#[derive(Clone, Debug)]
pub(crate) struct ServerInfo {
    /// `redis_version`.
    pub(crate) version: String,
    /// The RDB version it reads and writes.
    pub(crate) rdb_version: Option<u32>,
}

impl ServerInfo {
    pub(crate) async fn read(client: &mut Client) -> Result<ServerInfo> {
        let info = client.info("server").await?;
        let version = info.get("redis_version").cloned().unwrap_or_default();
        let rdb_version = super::rdb::rdb_version_for_server(&version);
        Ok(ServerInfo {
            version,
            rdb_version,
        })
    }
}
