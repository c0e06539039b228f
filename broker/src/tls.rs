//! TLS for the listener: the certificate chain and key from PEM files, and
//! reloading them without a restart.
//!
//! The server configuration is built once; its certificate comes from a
//! resolver that holds the current chain and key, so that a reload (on
//! `SIGHUP`) swaps them for new handshakes while established connections
//! keep theirs. A reload that fails (a missing file, a key that does not
//! match) keeps the previous certificate.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::sync::lock;

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of `--tls-cert` and `--tls-key` is set.
    #[error("--tls-cert and --tls-key must be given together")]
    Incomplete,
    /// A file cannot be read or holds no PEM object of the kind needed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key cannot sign, or is not the certificate's.
    #[error("the key in {key} cannot be used with the certificate in {cert}: {reason}")]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls says.
        reason: String,
    },
}

/// The listener's TLS: an acceptor and the files its certificate comes from.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    certificate: Arc<CurrentCertificate>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// TLS from `--tls-cert` and `--tls-key`; `None` when neither is set.
    pub(crate) fn from_paths(
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Self::load(cert, key).map(Some),
            _ => Err(TlsError::Incomplete),
        }
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified_key(cert_path, key_path, &provider)?;
        let certificate = Arc::new(CurrentCertificate(Mutex::new(Arc::new(key))));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Key {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
                reason: error.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        // The broker speaks HTTP/1.1 only (WebSocket upgrades need it).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// Reads the certificate and key files again; new handshakes use them
    /// from now on. On an error the certificate in use stays.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let provider = rustls::crypto::ring::default_provider();
        let key = certified_key(&self.cert_path, &self.key_path, &provider)?;
        *lock(&self.certificate.0) = Arc::new(key);
        Ok(())
    }

    /// The server side of a TLS handshake on `tcp`.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.acceptor.accept(tcp).await
    }
}

/// The chain and key handshakes are answered with, replaced on reload.
#[derive(Debug)]
struct CurrentCertificate(Mutex<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(lock(&self.0).clone())
    }
}

/// The certificate chain of `cert_path` with the key of `key_path`, checked
/// to belong together.
fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|error| file_error(cert_path, pem_reason(error)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file_error(cert_path, pem_reason(error)))?;
    if chain.is_empty() {
        return Err(file_error(cert_path, "holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|error| match error {
        pem::Error::NoItemsFound => file_error(
            key_path,
            "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
        ),
        error => file_error(key_path, pem_reason(error)),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| TlsError::Key {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        reason: error.to_string(),
    })
}

fn pem_reason(error: pem::Error) -> String {
    match error {
        pem::Error::Io(error) => error.to_string(),
        error => format!("not valid PEM: {error}"),
    }
}
