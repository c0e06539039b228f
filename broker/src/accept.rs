//! The first request on an accepted connection. A WebSocket upgrade of
//! `/ws` that will succeed is answered here, straight from the socket:
//! the request head is read into one small buffer and parsed with
//! `httparse`, the `101` is written, and the connection task starts with
//! whatever the client sent after its request. Everything else (other
//! paths, refused upgrades, heads over [`HEAD_MAX`]) goes to hyper with the
//! bytes already read put back in front, so hyper and the router answer it
//! exactly as if they had read it themselves.
//!
//! Why: hyper gives each connection an 8 KiB read buffer and a connection
//! state machine before it knows what the request is. For the
//! tens of thousands of WebSocket clients of a broker, the handshake here
//! allocates about a tenth of that, and costs less CPU per connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::broker::Broker;
use crate::connection::{ConnCtx, run_connection};
use crate::server::{Handshake, check_upgrade};

/// Largest request head read here; a longer one goes to hyper.
pub(crate) const HEAD_MAX: usize = 8 * 1024;

/// What the buffer for a request head starts at: a browser's upgrade request
/// is 400-700 bytes without cookies.
const HEAD_INITIAL: usize = 1024;

/// Most header lines parsed here; a request with more goes to hyper.
const MAX_HEADERS: usize = 32;

/// Reads until the first request's head is complete (or cannot be a
/// request head: hyper answers that at once), [`HEAD_MAX`] bytes are in, or
/// the peer stops sending. Returns the bytes read, which may also hold what
/// the client sent after the head.
pub(crate) async fn read_head(tcp: &TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(HEAD_INITIAL);
    loop {
        tcp.readable().await?;
        match tcp.try_read_buf(&mut buf) {
            Ok(0) => return Ok(buf),
            Ok(_) => {
                if buf.len() >= HEAD_MAX || !head_partial(&buf) {
                    return Ok(buf);
                }
                if buf.len() == buf.capacity() {
                    buf.reserve((HEAD_MAX - buf.len()).min(buf.len()));
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
}

/// Whether `buf` is the start of a request head that is not complete yet.
fn head_partial(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    matches!(
        httparse::Request::new(&mut headers).parse(buf),
        Ok(httparse::Status::Partial)
    )
}

/// An upgrade this module completes itself: what was checked, and where
/// the head ends.
pub(crate) struct FastUpgrade {
    handshake: Handshake,
    head_len: usize,
}

/// Recognises a `GET /ws` (any query) HTTP/1.1 request that passes every
/// handshake check; `None` sends the request to hyper, which answers it or
/// refuses it with the router's error.
pub(crate) fn fast_upgrade(head: &[u8]) -> Option<FastUpgrade> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut parsed);
    let httparse::Status::Complete(head_len) = request.parse(head).ok()? else {
        return None;
    };
    let path = request.path?;
    if request.method? != "GET" || request.version? != 1 || path.split('?').next()? != "/ws" {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        headers.append(
            HeaderName::from_bytes(header.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(header.value).ok()?,
        );
    }
    let handshake = check_upgrade(&Method::GET, &headers).ok()?;
    Some(FastUpgrade {
        handshake,
        head_len,
    })
}

/// Completes `upgrade`: admits the connection, writes the `101` and starts
/// the connection task. When the broker has no room, or is shutting down,
/// hands the connection back (with the bytes already read) for hyper and
/// the router to refuse it.
pub(crate) async fn complete(
    mut tcp: TcpStream,
    head: Vec<u8>,
    upgrade: FastUpgrade,
    peer: SocketAddr,
    broker: Broker,
) -> Option<(TcpStream, Vec<u8>)> {
    let Some(admission) = broker.try_admit() else {
        return Some((tcp, head));
    };
    let FastUpgrade {
        handshake,
        head_len,
    } = upgrade;
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {}\r\n",
        handshake.accept
    );
    if handshake.echo {
        answer.push_str("sec-websocket-protocol: ");
        answer.push_str(handshake.codec.subprotocol());
        answer.push_str("\r\n");
    }
    answer.push_str("\r\n");
    if let Err(error) = tcp.write_all(answer.as_bytes()).await {
        tracing::debug!(%peer, %error, "peer gone during the handshake");
        return None;
    }
    let early = Bytes::copy_from_slice(&head[head_len..]);
    drop(head);
    let ctx = ConnCtx {
        broker,
        admission,
        codec: handshake.codec,
        peer,
    };
    // A task of its own, holding only what the connection needs.
    tokio::spawn(run_connection(tcp, early, ctx));
    None
}

/// A TCP stream with bytes already read from it put back in front, for
/// hyper to read first.
pub(crate) struct Prefixed {
    prefix: Vec<u8>,
    /// How much of `prefix` has been read.
    taken: usize,
    tcp: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(tcp: TcpStream, prefix: Vec<u8>) -> Self {
        Prefixed {
            prefix,
            taken: 0,
            tcp,
        }
    }

    /// The stream, and what of the prefix was not read.
    pub(crate) fn into_parts(self) -> (TcpStream, Vec<u8>) {
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

    const UPGRADE: &str = "GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: starling.v1.msgpack\r\n\r\n";

    #[test]
    fn a_valid_upgrade_is_taken_here_with_its_head_length() {
        let mut head = UPGRADE.as_bytes().to_vec();
        head.extend_from_slice(b"\x81\x80early");
        let upgrade = fast_upgrade(&head).expect("taken here");
        assert_eq!(upgrade.head_len, UPGRADE.len());
        assert_eq!(upgrade.handshake.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(upgrade.handshake.echo);
        assert_eq!(upgrade.handshake.codec, starling_protocol::Codec::MsgPack);
    }

    #[test]
    fn anything_else_goes_to_hyper() {
        let cases = [
            // Other paths and methods.
            UPGRADE.replace("/ws?x=1", "/healthz"),
            UPGRADE.replace("/ws?x=1", "/wss"),
            UPGRADE.replace("GET", "POST"),
            UPGRADE.replace("HTTP/1.1", "HTTP/1.0"),
            // Handshakes the router refuses with its own error.
            UPGRADE.replace("Version: 13", "Version: 8"),
            UPGRADE.replace("Upgrade: websocket\r\n", ""),
            UPGRADE.replace("starling.v1.msgpack", "mqtt"),
            UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            // Incomplete.
            UPGRADE[..UPGRADE.len() - 2].to_owned(),
        ];
        for case in cases {
            assert!(fast_upgrade(case.as_bytes()).is_none(), "{case:?}");
        }
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let crowded = UPGRADE.replace("Host: a\r\n", &many);
        assert!(fast_upgrade(crowded.as_bytes()).is_none());
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_then_the_stream() {
        use tokio::io::AsyncReadExt;
        let (mut client, server, _) = crate::test_support::tcp_pair().await;
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut prefixed = Prefixed::new(server, b"hello".to_vec());
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
        let mut prefixed = Prefixed::new(server, b"abcdef".to_vec());
        let mut two = [0u8; 2];
        prefixed.read_exact(&mut two).await.unwrap();
        let (_tcp, rest) = prefixed.into_parts();
        assert_eq!(rest, b"cdef");
    }
}
