//! Throwaway TLS material and a TLS-terminating proxy, for the tests of
//! certificate verification.
//!
//! - [`TestCa`]: a private certificate authority made in memory (rcgen,
//!   ECDSA P-256), which signs [`ServerCert`]s for `127.0.0.1` and
//!   `localhost`. No client trusts it unless told to, which is the point.
//! - [`TlsProxy`]: accepts TLS on a free loopback port with a
//!   [`ServerCert`] and forwards the plain bytes to a local port, for
//!   servers that cannot speak TLS themselves (osmem-server).
//!
//! ```
//! use test_support::tls::TestCa;
//!
//! let ca = TestCa::new("capsule test CA");
//! let server = ca.server_cert();
//! assert!(ca.pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! assert!(server.key_pem.contains("PRIVATE KEY"));
//! ```

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The names every server certificate is valid for.
pub const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// A private certificate authority, in memory.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new authority with common name `name`.
    ///
    /// # Panics
    /// If rcgen cannot make the key or certificate (it does not fail on
    /// valid input).
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        TestCa { issuer }
    }

    /// The authority's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the authority's certificate (PEM) to `path` and returns it.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_pem(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.pem())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path.to_path_buf()
    }

    /// A server certificate for [`SERVER_NAMES`] signed by this authority.
    ///
    /// # Panics
    /// As [`TestCa::new`].
    pub fn server_cert(&self) -> ServerCert {
        let names: Vec<String> = SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// A server's certificate and private key (PKCS#8), PEM and DER.
#[derive(Clone)]
pub struct ServerCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert").finish_non_exhaustive()
    }
}

impl ServerCert {
    /// Writes `<name>.crt` and `<name>.key` (mode 0600) into `dir` and
    /// returns their paths.
    ///
    /// # Panics
    /// When the files cannot be written.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", cert.display()));
        std::fs::write(&key, &self.key_pem)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", key.display()));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", key.display()));
        (cert, key)
    }

    fn server_config(&self) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], key)
            .expect("server certificate and key")
    }
}

/// A TLS-terminating proxy on 127.0.0.1: TLS with a [`ServerCert`]
/// outside, plain TCP to a local port inside. One connection upstream per
/// client connection; handshakes the client aborts are simply dropped.
/// Stopped on drop.
pub struct TlsProxy {
    /// The TLS port.
    pub port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for TlsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProxy")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl TlsProxy {
    /// Starts a proxy in front of 127.0.0.1:`upstream` presenting `cert`.
    ///
    /// # Panics
    /// If no port can be bound or the runtime cannot start.
    pub fn start(upstream: u16, cert: &ServerCert) -> TlsProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tls-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the TLS proxy");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("local address").port();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config()));
        let _entered = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) =
                        tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsProxy {
            port,
            runtime: Some(runtime),
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn server_certificates_name_the_loopback_address_and_localhost() {
        let ca = TestCa::new("t");
        let server = ca.server_cert();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = server.write(dir.path(), "server");
        assert!(
            std::fs::read_to_string(cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Verified by rustls against the authority, for both names.
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap();
        roots.add(ca_der).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        for name in SERVER_NAMES {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(
                    &server.cert_der,
                    &[],
                    &name,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
    }
}
