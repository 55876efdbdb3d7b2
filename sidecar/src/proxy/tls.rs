//! TLS on each of the proxy's three sides with rustls and PEM files: the
//! client-facing listener, the source link and the target link, each
//! configured on its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A read half, plain or TLS.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A write half, plain or TLS.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading PEM {path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("TLS handshake with {peer}: {source}")]
    Handshake {
        peer: String,
        source: std::io::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        path: path.to_owned(),
        source,
    })
}

fn root_store(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// TLS settings of one upstream link (source or target).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub ca: PathBuf,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Name checked against the server certificate (default: the host
    /// each connection goes to).
    pub server_name: Option<String>,
    /// Check the chain only, not the name (`crate::tls`).
    pub skip_hostname_verification: bool,
}

/// Connects TLS over an established TCP stream to an upstream.
#[derive(Clone)]
pub struct Connector {
    inner: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl Connector {
    pub fn new(cfg: &UpstreamTls) -> Result<Self, TlsError> {
        let client_auth = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => Some((load_certs(cert)?, load_key(key)?)),
            _ => None,
        };
        let config = crate::tls::client_config(
            root_store(&cfg.ca)?,
            client_auth,
            cfg.skip_hostname_verification,
        )?;
        let server_name = cfg.server_name.as_deref().map(server_name).transpose()?;
        Ok(Self {
            inner: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// TLS over `tcp`, a connection to `host`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<(BoxRead, BoxWrite), TlsError> {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => server_name(host)?,
        };
        let stream = self
            .inner
            .connect(name, tcp)
            .await
            .map_err(|source| TlsError::Handshake { peer, source })?;
        let (r, w) = tokio::io::split(stream);
        Ok((Box::new(r), Box::new(w)))
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(
        name.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|_| TlsError::ServerName(name.to_owned()))
}

/// Client-facing TLS settings.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone)]
pub struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl Acceptor {
    pub fn new(cfg: &ListenerTls) -> Result<Self, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &cfg.client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(root_store(ca)?),
                    provider(),
                )
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(load_certs(&cfg.cert)?, load_key(&cfg.key)?)?;
        Ok(Self {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub async fn accept(&self, tcp: TcpStream) -> Result<(BoxRead, BoxWrite), TlsError> {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let stream = self
            .inner
            .accept(tcp)
            .await
            .map_err(|source| TlsError::Handshake { peer, source })?;
        let (r, w) = tokio::io::split(stream);
        Ok((Box::new(r), Box::new(w)))
    }
}

/// Splits a plain TCP stream into boxed halves.
pub fn plain(tcp: TcpStream) -> (BoxRead, BoxWrite) {
    let (r, w) = tcp.into_split();
    (Box::new(r), Box::new(w))
}
