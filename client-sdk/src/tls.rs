//! TLS for `wss://` URLs: rustls with the ring provider (no OpenSSL),
//! trusting the system's root certificates plus any added with
//! [`ConnectOptions::add_root_certificates`](crate::ConnectOptions::add_root_certificates),
//! or a whole configuration given with
//! [`ConnectOptions::tls_config`](crate::ConnectOptions::tls_config).
//!
//! The configuration is built once per [`ConnectOptions`](crate::ConnectOptions)
//! (at the first `wss://` connect) and shared by every reconnect, so that
//! the system's store is read once.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, Result};

/// What `wss://` connections trust, as the options say.
#[derive(Clone, Default)]
pub(crate) struct TlsOptions {
    /// PEM files of extra roots (a private certificate authority).
    pub(crate) extra_roots: Vec<PathBuf>,
    /// A configuration that replaces all of the above.
    pub(crate) config: Option<Arc<ClientConfig>>,
    /// The configuration, built at the first `wss://` connect.
    built: Arc<OnceLock<Arc<ClientConfig>>>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("extra_roots", &self.extra_roots)
            .field(
                "config",
                &self.config.as_ref().map(|_| "<rustls::ClientConfig>"),
            )
            .finish()
    }
}

impl TlsOptions {
    /// Forgets a configuration built from earlier settings.
    pub(crate) fn changed(&mut self) {
        self.built = Arc::default();
    }

    /// The client configuration for `wss://`, built once.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>> {
        if let Some(config) = &self.config {
            return Ok(config.clone());
        }
        if let Some(config) = self.built.get() {
            return Ok(config.clone());
        }
        let config = Arc::new(self.build()?);
        // Two connects racing build the same thing; either copy serves.
        Ok(self.built.get_or_init(|| config).clone())
    }

    fn build(&self) -> Result<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "cannot read a system root certificate");
        }
        let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
        for path in &self.extra_roots {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|error| Error::Tls(format!("{}: {error}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Tls(format!(
                    "{}: holds no PEM certificate",
                    path.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|error| Error::Tls(format!("{}: {error}", path.display())))?;
            }
        }
        if roots.is_empty() {
            return Err(Error::Tls(
                "no root certificates: the system has none (install ca-certificates) \
                 and none were added with ConnectOptions::add_root_certificates"
                    .into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| Error::Tls(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}
