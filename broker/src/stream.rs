//! A client's byte stream: plain TCP, or TLS over TCP.
//!
//! Plain TCP keeps the readiness-based read of the connection loop (no
//! buffer is allocated until the socket has data); TLS reads through
//! rustls, which holds the connection's records itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client's stream. The TLS state is boxed: it is large, and the plain
/// variant is what most deployments behind a TLS-terminating proxy use.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Reads what the stream has into `buf`, making room for at least
    /// `room` bytes first (`chunk` more when there is less). For plain
    /// TCP the room is made only once the socket is readable, so that a
    /// waiting connection holds no buffer; `Ok(0)` is the end of the stream.
    pub(crate) fn poll_read_into(
        &mut self,
        buf: &mut Vec<u8>,
        room: usize,
        chunk: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Plain(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                reserve(buf, room, chunk);
                match tcp.try_read_buf(buf) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        // A stale readiness, now cleared: wait for the next one.
                        if buf.is_empty() {
                            *buf = Vec::new();
                        }
                    }
                    result => return Poll::Ready(result),
                }
            },
            Stream::Tls(tls) => {
                reserve(buf, room, chunk);
                let filled = buf.len();
                buf.resize(buf.capacity(), 0);
                let mut read = ReadBuf::new(&mut buf[filled..]);
                let result = Pin::new(&mut **tls).poll_read(cx, &mut read);
                let n = read.filled().len();
                buf.truncate(filled + n);
                if buf.is_empty() && result.is_pending() {
                    *buf = Vec::new();
                }
                result.map_ok(|()| n)
            }
        }
    }

    /// Whether bytes accepted by a write may still wait inside the stream
    /// (TLS records not handed to the socket yet): then a flush is due.
    pub(crate) fn wants_flush(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls.get_ref().1.wants_write(),
        }
    }
}

fn reserve(buf: &mut Vec<u8>, room: usize, chunk: usize) {
    if buf.capacity() - buf.len() < room {
        buf.reserve(chunk.max(room));
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
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
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}
