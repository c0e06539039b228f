//! A client's stream with the bytes already read from it put back in front, so
//! that hyper reads a request that the broker started to read itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream::Stream;

/// A client's stream with bytes already read from it put back in front, for
/// hyper to read first.
pub(crate) struct Prefixed {
    prefix: Vec<u8>,
    /// How much of `prefix` has been read.
    taken: usize,
    tcp: Stream,
}

impl Prefixed {
    pub(crate) fn new(tcp: Stream, prefix: Vec<u8>) -> Self {
        Prefixed {
            prefix,
            taken: 0,
            tcp,
        }
    }

    /// The stream, and what of the prefix was not read.
    pub(crate) fn into_parts(self) -> (Stream, Vec<u8>) {
        let mut rest = self.prefix;
        rest.drain(..self.taken);
        (self.tcp, rest)
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = &this.prefix[this.taken..];
        if rest.is_empty() {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.taken += n;
        if this.taken == this.prefix.len() {
            this.prefix = Vec::new();
            this.taken = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn prefixed_reads_the_prefix_then_the_stream() {
        use tokio::io::AsyncReadExt;
        let (mut client, server, _) = crate::test_support::tcp_pair().await;
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut prefixed = Prefixed::new(Stream::Plain(server), b"hello".to_vec());
        let mut first = [0u8; 3];
        prefixed.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"hel");
        let mut rest = Vec::new();
        prefixed.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"lo world");
    }

    #[tokio::test]
    async fn unread_prefix_is_handed_back() {
        use tokio::io::AsyncReadExt;
        let (_client, server, _) = crate::test_support::tcp_pair().await;
        let mut prefixed = Prefixed::new(Stream::Plain(server), b"abcdef".to_vec());
        let mut two = [0u8; 2];
        prefixed.read_exact(&mut two).await.unwrap();
        let (_tcp, rest) = prefixed.into_parts();
        assert_eq!(rest, b"cdef");
    }
}
