//! The socket under a subscriber connection in the epoll loop: a plain TCP
//! socket (`ws://`), read straight into the loop's buffer, or a TLS session
//! over one (`wss://`, [`TlsSocket`]). The plain arm does exactly what the
//! loop did before it knew TLS: one `read` per call, no copy, no allocation.

use std::io::{self, Read, Write};

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use tokio_tungstenite::MaybeTlsStream;

use crate::tls::TlsSocket;

/// A subscriber connection's socket.
#[derive(Debug)]
pub(crate) enum Socket {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://` (boxed: a rustls session is large, a socket is not).
    Tls(Box<TlsSocket>),
}

impl Socket {
    /// The socket under a subscribed connection, nonblocking, for mio, with
    /// its TLS session if it has one. The caller makes sure that tungstenite
    /// holds no unread frame.
    pub(crate) fn take(stream: MaybeTlsStream<tokio::net::TcpStream>) -> Result<Socket, String> {
        let into_mio = |tcp: tokio::net::TcpStream| {
            tcp.into_std()
                // tokio hands it over nonblocking, as mio needs it.
                .map(TcpStream::from_std)
                .map_err(|e| format!("cannot take the socket: {e}"))
        };
        match stream {
            MaybeTlsStream::Plain(tcp) => Ok(Socket::Plain(into_mio(tcp)?)),
            MaybeTlsStream::Rustls(tls) => {
                let (tcp, session) = tls.into_inner();
                Ok(Socket::Tls(Box::new(TlsSocket::new(
                    into_mio(tcp)?,
                    session,
                ))))
            }
            _ => Err("neither a plain TCP nor a rustls connection".to_owned()),
        }
    }

    /// Reads into `buf` (not empty): `Ok(0)` at the end of the stream.
    #[inline]
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => tcp.read(buf),
            Socket::Tls(tls) => tls.read(buf),
        }
    }

    /// Whether a read that did not fill its buffer left nothing to read
    /// until the next readiness edge. A plain socket's short read emptied
    /// its receive queue (as nginx relies on); a TLS read says.
    #[inline]
    pub(crate) fn short_read_drains(&self) -> bool {
        match self {
            Socket::Plain(_) => true,
            Socket::Tls(tls) => tls.drained(),
        }
    }

    /// Writes as much of `bytes` as the socket takes now; returns how much.
    pub(crate) fn write_some(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => write_some(tcp, bytes),
            Socket::Tls(tls) => tls.write_some(bytes),
        }
    }

    /// Sends what is waiting below the WebSocket frames (TLS records).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Plain(_) => Ok(()),
            Socket::Tls(tls) => tls.flush(),
        }
    }

    /// Before the socket is closed: a TLS session sends `close_notify`.
    pub(crate) fn shutdown(&mut self) {
        if let Socket::Tls(tls) = self {
            tls.close_notify();
        }
    }

    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Socket::Plain(tcp) => tcp,
            Socket::Tls(tls) => tls.tcp(),
        }
    }
}

impl Source for Socket {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.tcp().register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.tcp().reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.tcp().deregister(registry)
    }
}

/// Writes as much of `bytes` as a plain socket takes now.
fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
