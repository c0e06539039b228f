//! TLS for `wss://` URLs: the client configuration (rustls with the ring
//! provider, trusting the system's roots plus `--ca-file`), and the TLS
//! session of a subscriber connection driven by hand over the epoll loop's
//! nonblocking socket.
//!
//! A `wss://` connection is opened, subscribed and published on by
//! tokio-tungstenite over tokio-rustls, as a `ws://` one is over a plain
//! socket. A subscriber connection then leaves tokio for the epoll loop:
//! tokio-rustls gives up its stream as the socket and the rustls
//! [`ClientConnection`] (`TlsStream::into_inner`), with the session's keys,
//! sequence numbers and whatever it has buffered, so that the loop goes on
//! with the same session ([`TlsSocket`]). The TLS and HTTP handshakes are
//! thus the libraries', for both kinds of connection (rather than a second,
//! hand-written handshake on the loop's socket), every subscriber stays in
//! the one loop (rather than TLS ones in tokio tasks), and the loop keeps
//! one buffer and one frame parser for both: only the bytes it parses come
//! out of rustls instead of straight from the socket.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mio::net::TcpStream;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// The client configuration of every `wss://` connection: the system's root
/// certificates plus those in each of `ca_files` (PEM).
pub(crate) fn client_config(ca_files: &[PathBuf]) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    // An unreadable system store is not fatal when --ca-file names the roots.
    let (_added, _ignored) = roots.add_parsable_certificates(system.certs);
    for path in ca_files {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("--ca-file {}", path.display()))?;
        if certs.is_empty() {
            bail!("--ca-file {} holds no PEM certificate", path.display());
        }
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("--ca-file {}", path.display()))?;
        }
    }
    if roots.is_empty() {
        let why = system
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), |e| e.to_string());
        bail!(
            "no root certificates to check the broker's certificate with: the system's \
             ({why}; install ca-certificates), and no --ca-file"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no protocol version")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A subscriber's TLS connection in the epoll loop: its rustls session over
/// its nonblocking socket.
///
/// Reads take the plaintext rustls has decrypted, then read more records
/// from the socket (`read_tls`, at most one TLS record's worth at a time)
/// and decrypt them (`process_new_packets`), until the caller's buffer is
/// full or the socket has nothing more. rustls holds at most one record
/// being received and the plaintext of what one `read_tls` brought, so the
/// memory of a connection stays bounded. Writes go through rustls's writer
/// and out with `write_tls`, as far as the socket takes them; the rest stays
/// in rustls (64 KiB at most) until the socket is writable again.
#[derive(Debug)]
pub(crate) struct TlsSocket {
    tcp: TcpStream,
    tls: ClientConnection,
    /// The last read ended because the socket had nothing more: bytes that
    /// arrive later raise a new readiness edge.
    drained: bool,
}

impl TlsSocket {
    /// The session `tls`, established over `tcp` (nonblocking).
    pub(crate) fn new(tcp: TcpStream, tls: ClientConnection) -> Self {
        TlsSocket {
            tcp,
            tls,
            drained: false,
        }
    }

    /// The socket, to register with the loop.
    pub(crate) fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Whether the last read, when it did not fill its buffer, ended
    /// because the socket had nothing more (rather than at the end of the
    /// stream, which the next read reports).
    pub(crate) fn drained(&self) -> bool {
        self.drained
    }

    /// Reads plaintext into `buf` (not empty): `Ok(0)` at the end of the
    /// stream, with or without the broker's `close_notify` (either way the
    /// WebSocket connection ended without a close frame when that is all
    /// there is); `WouldBlock` when nothing has arrived.
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        loop {
            match self.tls.reader().read(&mut buf[n..]) {
                Ok(0) => return self.ended(n),
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        self.drained = false;
                        return Ok(n);
                    }
                    // rustls has no more plaintext: the next read says why.
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return self.ended(n),
                Err(e) => return Err(e),
            }
            // No plaintext left: decrypt what the socket has.
            match self.tls.read_tls(&mut self.tcp) {
                // Zero is the end of the stream, which rustls notes and
                // its reader reports above.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.drained = true;
                    return if n > 0 { Ok(n) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // rustls queued an alert that says why; a courtesy.
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // A TLS 1.3 key update is answered at once.
            self.flush()?;
        }
    }

    /// The end of the stream after `n` bytes: those first, then `Ok(0)`.
    fn ended(&mut self, n: usize) -> io::Result<usize> {
        // Not drained: a short read must be followed by one that returns 0,
        // as no readiness edge will come for an end already seen.
        self.drained = false;
        Ok(n)
    }

    /// Takes as much of `bytes` as rustls buffers, and sends what the
    /// socket takes now; returns how many bytes were taken.
    pub(crate) fn write_some(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let taken = self.tls.writer().write(bytes)?;
        self.flush()?;
        Ok(taken)
    }

    /// Sends the TLS records waiting, as far as the socket takes them.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends `close_notify` as far as the socket takes it, before the
    /// socket is closed.
    pub(crate) fn close_notify(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush();
    }
}
