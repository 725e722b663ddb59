//! TLS for the SQL sessions (tokio-postgres over rustls), as libpq reads
//! `sslmode` and `sslrootcert` (see [`PgSslMode`]), and plain words for
//! the handshake failures.

use std::path::Path;
use std::sync::Arc;

use capsule_core::{Error, Result};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::WebPkiSupportedAlgorithms;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::connection::{PgConnection, PgSslMode};

/// tokio-postgres's mode and the TLS connector for `conn`.
///
/// # Errors
/// [`Error::Invalid`] when `verify-ca`/`verify-full` has no CA file, or the
/// CA file cannot be read or holds no certificate.
pub(crate) fn connector(conn: &PgConnection) -> Result<(SslMode, MakeRustlsConnect)> {
    let invalid = |message: String| {
        Error::invalid(
            "postgresql connection",
            format!("postgresql {}: {message}", conn.endpoint()),
        )
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mode = match conn.ssl_mode {
        PgSslMode::Disable => SslMode::Disable,
        PgSslMode::Allow | PgSslMode::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    };
    let root_file = match conn.ssl_mode {
        PgSslMode::Disable => None,
        _ => conn.root_cert_file(),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match root_file {
        None if conn.ssl_mode.verifies() => {
            return Err(invalid(format!(
                "sslmode={} needs the CA that signed the server's certificate: add sslrootcert=FILE to the URL (or PGSSLROOTCERT, or put it in ~/.postgresql/root.crt)",
                conn.ssl_mode
            )));
        }
        None => Arc::new(AnyCertificate(provider.signature_verification_algorithms)),
        Some(file) => {
            let roots = Arc::new(read_roots(&file).map_err(invalid)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| invalid(format!("sslrootcert {}: {e}", file.display())))?;
            if conn.ssl_mode == PgSslMode::VerifyFull {
                webpki
            } else {
                // verify-ca, and require/prefer with a CA file (libpq).
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((mode, MakeRustlsConnect::new(config)))
}

/// The certificates of the PEM file at `path`; `Err` says what is wrong.
fn read_roots(path: &Path) -> std::result::Result<RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert {} holds no usable PEM certificate",
            path.display()
        ));
    }
    Ok(roots)
}

/// What the client saw wrong in a failed TLS connection to `conn`, from
/// the error chain `text`, with what to do about it; `None` when the
/// failure is not about TLS.
pub(crate) fn explain(text: &str, conn: &PgConnection) -> Option<String> {
    const MARK: &str = "invalid peer certificate";
    let endpoint = conn.endpoint();
    let lower = text.to_ascii_lowercase();
    if lower.contains("server does not support tls") {
        return Some(format!(
            "postgresql {endpoint} does not accept TLS connections, and sslmode={} requires TLS (ssl = off on the server?)",
            conn.ssl_mode
        ));
    }
    let at = lower.find(MARK)?;
    let detail = text[at + MARK.len()..].trim_start_matches([':', ' ']);
    let detail_lower = detail.to_ascii_lowercase();
    let short: String = detail.chars().take(200).collect();
    Some(if detail_lower.starts_with("unknownissuer") {
        format!(
            "the TLS certificate of postgresql {endpoint} is not trusted (signed by an unknown authority): name the CA that signed it with sslrootcert=FILE in the connection URL"
        )
    } else if detail_lower.starts_with("certificate not valid for name")
        || detail_lower.starts_with("notvalidforname")
    {
        format!(
            "the TLS certificate of postgresql {endpoint} does not name host {} ({short}): connect by a name it holds, or use sslmode=verify-ca",
            conn.host
        )
    } else {
        format!("the TLS certificate of postgresql {endpoint} is not trusted ({short})")
    })
}

/// Accepts any certificate (libpq's `prefer` and `require` without a CA
/// file: encrypted, not authenticated); the handshake signatures are still
/// checked.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in the
/// certificate is not compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first, the name last: a name error means
        // the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use test_support::tls::TestCa;

    use super::*;

    fn conn(url: &str) -> PgConnection {
        PgConnection::from_url(url).unwrap()
    }

    #[test]
    fn modes_map_to_tokio_postgres() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("t").write_pem(&dir.path().join("ca.pem"));
        let cases = [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Prefer),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::Require),
            ("verify-full", SslMode::Require),
        ];
        for (mode, expected) in cases {
            let url = format!("postgres://h/d?sslmode={mode}&sslrootcert={}", ca.display());
            let (got, _) = connector(&conn(&url)).unwrap();
            assert_eq!(got, expected, "{mode}");
        }
    }

    #[test]
    fn verifying_modes_need_a_readable_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        for mode in ["verify-ca", "verify-full"] {
            let c = conn(&format!("postgres://h/d?sslmode={mode}"));
            // Unless ~/.postgresql/root.crt exists, as for libpq.
            if c.root_cert_file().is_none() {
                let e = connector(&c).err().unwrap().to_string();
                assert!(e.contains("sslrootcert=FILE"), "{e}");
            }
        }
        let missing = dir.path().join("missing.pem");
        let c = conn(&format!(
            "postgres://h/d?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ));
        let e = connector(&c).err().unwrap().to_string();
        assert!(e.contains("cannot read sslrootcert"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let c = conn(&format!(
            "postgres://h/d?sslmode=require&sslrootcert={}",
            empty.display()
        ));
        let e = connector(&c).err().unwrap().to_string();
        assert!(e.contains("holds no usable PEM certificate"), "{e}");
        // Without verification no CA file is needed.
        assert!(connector(&conn("postgres://h/d?sslmode=require")).is_ok());
    }

    #[test]
    fn handshake_failures_are_explained() {
        let c = conn("postgres://db.ns:5433/d?sslmode=verify-full");
        let e = explain(
            "error performing TLS handshake: invalid peer certificate: UnknownIssuer",
            &c,
        )
        .unwrap();
        assert!(
            e.contains("postgresql db.ns:5433 is not trusted") && e.contains("sslrootcert=FILE"),
            "{e}"
        );
        let e = explain(
            "error performing TLS handshake: invalid peer certificate: certificate not valid for name \"db.ns\"; certificate is only valid for localhost",
            &c,
        )
        .unwrap();
        assert!(e.contains("does not name host db.ns"), "{e}");
        let e = explain(
            "error performing TLS handshake: server does not support TLS",
            &c,
        )
        .unwrap();
        assert!(
            e.contains("does not accept TLS") && e.contains("sslmode=verify-full"),
            "{e}"
        );
        assert_eq!(explain("password authentication failed", &c), None);
    }
}
