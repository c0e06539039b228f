//! Certificates the tests make: a certificate authority of their own and a
//! server certificate for `localhost` and `127.0.0.1` that it signs, written
//! as PEM files for the broker's `--tls-cert` and `--tls-key`, and TLS client
//! configurations that trust that authority.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::within;

/// A certificate authority and a server certificate it signed, as files in
/// a directory of their own (removed when dropped).
pub struct TestCerts {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The authority's certificate, PEM.
    pub ca_pem: String,
    ca_der: CertificateDer<'static>,
    /// The server certificate (the broker's `--tls-cert`).
    pub cert_path: PathBuf,
    /// The server certificate's key (the broker's `--tls-key`).
    pub key_path: PathBuf,
    /// The authority's certificate (a client's custom CA).
    pub ca_path: PathBuf,
    /// The server certificate, DER: what a client sees in the handshake.
    pub server_der: CertificateDer<'static>,
}

impl TestCerts {
    /// A new authority and a server certificate for `localhost` and
    /// `127.0.0.1`, written to a fresh directory.
    pub fn new() -> TestCerts {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "starling-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Starling test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("self-signed CA");
        let mut certs = TestCerts {
            cert_path: dir.join("server.pem"),
            key_path: dir.join("server.key"),
            ca_path: dir.join("ca.pem"),
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            ca,
            server_der: CertificateDer::from(Vec::new()),
            dir,
        };
        std::fs::write(&certs.ca_path, &certs.ca_pem).expect("write the CA");
        certs.server_der = certs.reissue();
        certs
    }

    /// Issues a new server certificate (and key) from the same authority and
    /// writes it over the files, as a renewal does; returns it.
    pub fn reissue(&self) -> CertificateDer<'static> {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(names)
            .expect("server params")
            .signed_by(&key, &self.ca)
            .expect("signed server certificate");
        std::fs::write(&self.cert_path, cert.pem()).expect("write the certificate");
        std::fs::write(&self.key_path, key.serialize_pem()).expect("write the key");
        cert.der().clone()
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A TLS client configuration that trusts this authority only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("a valid CA");
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(
                tokio_rustls::rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    /// Opens a TLS connection to `addr` for `localhost`, trusting this
    /// authority; the error of a failed handshake.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("a valid name");
        within(
            "TLS handshake",
            TlsConnector::from(self.client_config()).connect(name, tcp),
        )
        .await
    }

    /// Sends one HTTP/1.1 request over TLS and reads the whole answer
    /// (`Connection: close`): status line, headers and body as text.
    pub async fn https(&self, addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
        let mut tls = self.connect(addr).await.expect("TLS handshake");
        tls.write_all(head.as_bytes()).await.expect("write head");
        tls.write_all(body).await.expect("write body");
        let mut answer = Vec::new();
        within("HTTPS answer", tls.read_to_end(&mut answer))
            .await
            .expect("read the answer");
        String::from_utf8_lossy(&answer).into_owned()
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        TestCerts::new()
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
