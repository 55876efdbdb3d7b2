//! The rustls client configuration of every Ferry component that connects
//! to a Cassandra cluster: the proxy's source and target links, the bulk
//! Jobs' sessions and the operator's own checks. One home, so that the
//! three verify servers the same way.
//!
//! Hostname verification can be turned off (`insecureSkipHostnameVerification`
//! in the CR): drivers reach nodes at the IP addresses the ring lists, and
//! the proxy reaches its own node over loopback, names node certificates
//! rarely carry. The chain must still lead to the given CA; only a name
//! mismatch is forgiven.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why a CA bundle could not become a root store.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("parsing a PEM certificate: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("adding a CA certificate: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the CA bundle holds no certificate")]
    Empty,
}

/// The CA certificates of a PEM bundle.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert?)?;
    }
    if roots.is_empty() {
        return Err(RootsError::Empty);
    }
    Ok(roots)
}

/// A client certificate chain and its key, for servers that require one.
pub type ClientAuth = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A client configuration (ring provider, safe protocol versions) that
/// trusts `roots`, presents `client_auth` when given, and checks the
/// server's name unless `skip_hostname_verification`.
pub fn client_config(
    roots: RootCertStore,
    client_auth: Option<ClientAuth>,
    skip_hostname_verification: bool,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if skip_hostname_verification {
        let chain = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
    } else {
        builder.with_root_certificates(roots)
    };
    match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Verifies the chain and the signatures as WebPKI does, and forgives a
/// name the certificate does not carry.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA's PEM, and a server configuration whose certificate, signed by
    /// that CA, names only `node.example`.
    fn server_for_node_example() -> (String, Arc<rustls::ServerConfig>) {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["node.example".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key pem"),
        )
        .expect("server config");
        (ca.pem(), Arc::new(server))
    }

    /// Whether a handshake of `client` with `server` for `name` succeeds.
    async fn handshake(
        client: rustls::ClientConfig,
        server: Arc<rustls::ServerConfig>,
        name: &str,
    ) -> bool {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let serve = tokio::spawn(async move {
            if let Ok(mut s) = acceptor.accept(b).await {
                let mut byte = [0u8; 1];
                if s.read_exact(&mut byte).await.is_ok() {
                    let _ = s.write_all(&byte).await;
                }
            }
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        let ok = match connector.connect(name, a).await {
            Ok(mut s) => {
                let mut byte = [0u8; 1];
                s.write_all(b"x").await.is_ok() && s.read_exact(&mut byte).await.is_ok()
            }
            Err(_) => false,
        };
        drop(serve);
        ok
    }

    #[tokio::test]
    async fn names_are_checked_unless_skipped_and_the_chain_always_is() {
        let (ca, server) = server_for_node_example();
        let config =
            |skip| client_config(roots_from_pem(ca.as_bytes()).expect("roots"), None, skip);
        assert!(handshake(config(false).unwrap(), server.clone(), "node.example").await);
        assert!(
            !handshake(config(false).unwrap(), server.clone(), "10.0.0.7").await,
            "a name the certificate lacks must be refused"
        );
        assert!(handshake(config(true).unwrap(), server.clone(), "10.0.0.7").await);
        // Another CA: refused even without the name check.
        let (other_ca, _) = server_for_node_example();
        let other = client_config(roots_from_pem(other_ca.as_bytes()).unwrap(), None, true);
        assert!(!handshake(other.unwrap(), server, "node.example").await);
    }

    #[test]
    fn a_bundle_without_certificates_is_an_error() {
        assert!(matches!(roots_from_pem(b""), Err(RootsError::Empty)));
        assert!(roots_from_pem(b"-----BEGIN CERTIFICATE-----\nnot base64\n").is_err());
    }
}
