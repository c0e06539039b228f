//! Admission of every WebSocket upgrade, and the one place a connection
//! starts.
//!
//! An upgrade reaches the broker by one of two paths, and both go through
//! [`admit`], which checks the request (method, upgrade headers, version,
//! key, subprotocol) and takes a connection slot, and answers either an
//! [`Admitted`] upgrade or a typed [`Refusal`]:
//!
//! - **The first request on a connection** ([`serve_first_request`]): the
//!   request head is read into one small buffer and parsed with `httparse`;
//!   a `GET /ws` is answered here, straight from the socket (the `101`, or
//!   the refusal), and the connection task starts with whatever the client
//!   sent after its request. Hyper would give each connection an 8 KiB read
//!   buffer and a connection state machine before it knows what the request
//!   is; for the tens of thousands of WebSocket clients of a broker, this
//!   path allocates about a tenth of that, and costs less CPU per connection.
//! - **Everything else** goes to hyper and the HTTP router with the bytes
//!   already read put back in front (other paths, heads over [`HEAD_MAX`]
//!   bytes or [`MAX_HEADERS`] headers, an upgrade after another request on a
//!   kept-alive connection); the router's `/ws` handler calls [`admit`] too.
//!
//! Either way the `101` carries the headers of [`Admitted::response_headers`]
//! and the connection task is spawned by [`Admitted::start`].

use std::io;
use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use starling_protocol::http::ErrorBody;
use starling_protocol::{Codec, HttpErrorCode};
use std::future::poll_fn;

use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::debug;

use crate::auth::Auth;
use crate::broker::{Admission, Broker};
use crate::connection::{ConnCtx, run_connection};
use crate::proxy;
use crate::stream::Stream;

/// Largest request head read here; a longer one goes to hyper.
pub(crate) const HEAD_MAX: usize = 8 * 1024;

/// What the buffer for a request head starts at: a browser's upgrade request
/// is 400-700 bytes without cookies.
const HEAD_INITIAL: usize = 1024;

/// Most header lines parsed here; a request with more goes to hyper.
pub(crate) const MAX_HEADERS: usize = 32;

/// Why an upgrade is refused. Each is answered with an HTTP status and a
/// JSON body `{"code": ..., "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a `GET` with `Connection: upgrade` and `Upgrade: websocket`.
    NotUpgrade,
    /// A WebSocket version other than 13.
    UnsupportedVersion,
    /// No `Sec-WebSocket-Key`.
    MissingKey,
    /// Subprotocols offered, none of them Starling's.
    Subprotocol(String),
    /// A page of a web origin the broker does not allow.
    ForbiddenOrigin(String),
    /// The broker is at its connection limit.
    TooManyConnections,
    /// The broker is shutting down.
    ShuttingDown,
}

impl Refusal {
    /// The code of the body.
    pub(crate) fn code(&self) -> HttpErrorCode {
        match self {
            Refusal::NotUpgrade | Refusal::UnsupportedVersion | Refusal::MissingKey => {
                HttpErrorCode::NotWebsocket
            }
            Refusal::Subprotocol(_) => HttpErrorCode::UnsupportedSubprotocol,
            Refusal::ForbiddenOrigin(_) => HttpErrorCode::ForbiddenOrigin,
            Refusal::TooManyConnections => HttpErrorCode::TooManyConnections,
            Refusal::ShuttingDown => HttpErrorCode::ShuttingDown,
        }
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            other => StatusCode::from_u16(other.code().http_status())
                .expect("HTTP error codes map to valid statuses"),
        }
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> ErrorBody {
        let message = match self {
            Refusal::NotUpgrade => {
                "/ws takes WebSocket upgrades only (GET with Upgrade: websocket)".to_owned()
            }
            Refusal::UnsupportedVersion => "unsupported WebSocket version; use 13".to_owned(),
            Refusal::MissingKey => "missing Sec-WebSocket-Key".to_owned(),
            Refusal::Subprotocol(why) => why.clone(),
            Refusal::ForbiddenOrigin(origin) => format!(
                "pages of {origin} may not connect; the broker allows its own origin and those of --allowed-origin"
            ),
            Refusal::TooManyConnections => "the broker is at its connection limit".to_owned(),
            Refusal::ShuttingDown => {
                "the broker is shutting down; connect to another node".to_owned()
            }
        };
        ErrorBody::http(self.code(), message)
    }

    /// Headers the answer carries besides its content type.
    pub(crate) fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Refusal::UnsupportedVersion => vec![(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            )],
            _ => Vec::new(),
        }
    }

    /// The whole HTTP/1.1 answer, for a connection that closes after it.
    fn http1(&self) -> Vec<u8> {
        let status = self.status();
        let body = self.body().to_json();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        for (name, value) in self.headers() {
            head.push_str(&format!(
                "{name}: {}\r\n",
                value.to_str().unwrap_or_default()
            ));
        }
        head.push_str("\r\n");
        head.push_str(&body);
        head.into_bytes()
    }
}

/// An upgrade that passed every check, holding its connection slot.
#[derive(Debug)]
pub(crate) struct Admitted {
    broker: Broker,
    admission: Admission,
    codec: Codec,
    /// Whether the client offered a subprotocol (then it is echoed).
    echo_subprotocol: bool,
    /// The `Sec-WebSocket-Accept` value.
    accept: String,
    peer: SocketAddr,
    client: IpAddr,
    auth: Auth,
}

/// Checks an upgrade request (`query` is its URI's query string) and takes a
/// connection slot for it. The token, when auth is on, is checked here too;
/// a bad one does not refuse the upgrade (the connection is closed with
/// 1008 once it is a WebSocket, so that a browser can tell why).
pub(crate) fn admit(
    broker: &Broker,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Admitted, Refusal> {
    let is_upgrade = method == Method::GET
        && header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket");
    if !is_upgrade {
        return Err(Refusal::NotUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(Refusal::UnsupportedVersion);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Refusal::MissingKey);
    };
    let client = proxy::client(peer.ip(), headers, &broker.config().trusted_proxies);
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = String::from_utf8_lossy(origin.as_bytes());
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        // Behind a trusted proxy that ended TLS, the page's origin is https.
        let tls = client.tls.unwrap_or(broker.serves_tls());
        if !broker.origins().allows(&origin, host, tls) {
            return Err(Refusal::ForbiddenOrigin(origin.into_owned()));
        }
    }
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let (codec, echo_subprotocol) =
        Codec::negotiate(offers).map_err(|error| Refusal::Subprotocol(error.to_string()))?;
    let Some(admission) = broker.try_admit() else {
        broker.metrics().connections_refused.inc();
        return Err(if broker.is_shutting_down() {
            Refusal::ShuttingDown
        } else {
            Refusal::TooManyConnections
        });
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let auth = Auth::check(broker.verifier(), query, authorization);
    Ok(Admitted {
        broker: broker.clone(),
        admission,
        codec,
        echo_subprotocol,
        accept: derive_accept_key(key.as_bytes()),
        peer,
        client: client.ip,
        auth,
    })
}

fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

impl Admitted {
    /// The headers of the `101 Switching Protocols` answer, as lowercase
    /// names and values: no allocation, since every upgrade takes this path.
    pub(crate) fn response_headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", self.accept.as_str()),
        ]
        .into_iter()
        .chain(
            self.echo_subprotocol
                .then(|| ("sec-websocket-protocol", self.codec.subprotocol())),
        )
    }

    /// The `101` as HTTP/1.1 bytes.
    fn http1(&self) -> Vec<u8> {
        let mut answer = Vec::with_capacity(160);
        answer.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (name, value) in self.response_headers() {
            answer.extend_from_slice(name.as_bytes());
            answer.extend_from_slice(b": ");
            answer.extend_from_slice(value.as_bytes());
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"\r\n");
        answer
    }

    /// Starts the connection task on `stream`, after the `101` was sent;
    /// `early` is what the client sent after its request. The one place a
    /// connection is spawned: a broker's, or an echo broker's (checked once
    /// here, so that a connection's loop carries no check of it).
    pub(crate) fn start(self, stream: Stream, early: Bytes) {
        let echo = self.broker.echoes();
        let ctx = ConnCtx {
            broker: self.broker,
            admission: self.admission,
            codec: self.codec,
            peer: self.peer,
            client: self.client,
            auth: self.auth,
        };
        // A task of its own, holding only what the connection needs.
        if echo {
            tokio::spawn(run_connection::<true>(stream, early, ctx));
        } else {
            tokio::spawn(run_connection::<false>(stream, early, ctx));
        }
    }
}

/// Reads until the first request's head is complete (or cannot be a
/// request head: hyper answers that at once), [`HEAD_MAX`] bytes are in, or
/// the peer stops sending. Returns the bytes read, which may also hold what
/// the client sent after the head.
pub(crate) async fn read_head(stream: &mut Stream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    loop {
        // The buffer starts at HEAD_INITIAL and doubles, up to HEAD_MAX.
        let grow = match buf.len() {
            0 => HEAD_INITIAL,
            len => (HEAD_MAX - len).min(len),
        };
        let n = poll_fn(|cx| stream.poll_read_into(&mut buf, 1, grow, cx)).await?;
        if n == 0 || buf.len() >= HEAD_MAX || !head_partial(&buf) {
            return Ok(buf);
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

/// A complete `GET /ws` (any query) HTTP/1.1 request head: its headers, its
/// query string and its length. `None` for anything else, which goes to
/// hyper.
fn parse_upgrade(head: &[u8]) -> Option<(HeaderMap, Option<&str>, usize)> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut parsed);
    let httparse::Status::Complete(head_len) = request.parse(head).ok()? else {
        return None;
    };
    let (path, query) = match request.path?.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.path?, None),
    };
    if request.method? != "GET" || request.version? != 1 || path != "/ws" {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(request.headers.len());
    for header in request.headers.iter() {
        headers.append(
            HeaderName::from_bytes(header.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(header.value).ok()?,
        );
    }
    Some((headers, query, head_len))
}

/// Serves the first request of a connection when it is a `GET /ws`: admits
/// it and starts the connection, or answers the refusal and closes. Hands
/// anything else back (with the bytes already read) for hyper.
pub(crate) async fn serve_first_request(
    mut stream: Stream,
    head: Vec<u8>,
    peer: SocketAddr,
    broker: &Broker,
) -> Option<(Stream, Vec<u8>)> {
    let Some((headers, query, head_len)) = parse_upgrade(&head) else {
        return Some((stream, head));
    };
    let admitted = admit(broker, &Method::GET, query, &headers, peer);
    match admitted {
        Ok(admitted) => {
            let answer = admitted.http1();
            if let Err(error) = write_flushed(&mut stream, &answer).await {
                debug!(%peer, %error, "peer gone during the handshake");
                return None;
            }
            let early = Bytes::copy_from_slice(&head[head_len..]);
            drop(head);
            admitted.start(stream, early);
        }
        Err(refusal) => {
            debug!(%peer, ?refusal, "upgrade refused");
            refuse(stream, &refusal).await;
        }
    }
    None
}

/// Answers `refusal` and closes the connection.
pub(crate) async fn refuse(mut stream: Stream, refusal: &Refusal) {
    if write_flushed(&mut stream, &refusal.http1()).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

/// Writes all of `bytes` and flushes them (TLS holds records until then).
async fn write_flushed(stream: &mut Stream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const UPGRADE: &str = "GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: starling.v1.msgpack\r\n\r\n";

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    fn admit_head(broker: &Broker, head: &str) -> Result<Admitted, Refusal> {
        let (headers, query, _) = parse_upgrade(head.as_bytes()).expect("a GET /ws head");
        admit(broker, &Method::GET, query, &headers, peer())
    }

    #[test]
    fn a_get_of_ws_is_taken_here_with_its_head_length() {
        let mut head = UPGRADE.as_bytes().to_vec();
        head.extend_from_slice(b"\x81\x80early");
        let (_, query, len) = parse_upgrade(&head).expect("taken here");
        assert_eq!((query, len), (Some("x=1"), UPGRADE.len()));
    }

    #[test]
    fn other_requests_go_to_hyper() {
        let cases = [
            UPGRADE.replace("/ws?x=1", "/healthz"),
            UPGRADE.replace("/ws?x=1", "/wss"),
            UPGRADE.replace("GET", "POST"),
            UPGRADE.replace("HTTP/1.1", "HTTP/1.0"),
            // Incomplete.
            UPGRADE[..UPGRADE.len() - 2].to_owned(),
        ];
        for case in cases {
            assert!(parse_upgrade(case.as_bytes()).is_none(), "{case:?}");
        }
        let many: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
        let crowded = UPGRADE.replace("Host: a\r\n", &many);
        assert!(parse_upgrade(crowded.as_bytes()).is_none());
    }

    #[tokio::test]
    async fn a_valid_upgrade_is_admitted_with_its_accept_key_and_subprotocol() {
        let broker = Broker::new(Config::ephemeral()).unwrap();
        let admitted = admit_head(&broker, UPGRADE).expect("admitted");
        let answer = String::from_utf8(admitted.http1()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(answer.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(answer.contains("sec-websocket-protocol: starling.v1.msgpack\r\n"));
        assert!(answer.ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn bad_upgrades_are_refused_with_their_reason() {
        let broker = Broker::new(Config::ephemeral()).unwrap();
        let cases = [
            (
                UPGRADE.replace("Version: 13", "Version: 8"),
                Refusal::UnsupportedVersion,
            ),
            (
                UPGRADE.replace("Upgrade: websocket\r\n", ""),
                Refusal::NotUpgrade,
            ),
            (
                UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                Refusal::MissingKey,
            ),
        ];
        for (head, refusal) in cases {
            assert_eq!(admit_head(&broker, &head).unwrap_err(), refusal);
        }
        let subprotocol = admit_head(&broker, &UPGRADE.replace("starling.v1.msgpack", "mqtt"));
        assert!(matches!(subprotocol, Err(Refusal::Subprotocol(_))));
        let version = Refusal::UnsupportedVersion.http1();
        let version = String::from_utf8(version).unwrap();
        assert!(
            version.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{version}"
        );
        assert!(version.contains("sec-websocket-version: 13\r\n"));
        assert!(version.ends_with(
            r#""code":"not_websocket","message":"unsupported WebSocket version; use 13"}"#
        ));
    }

    #[tokio::test]
    async fn a_full_broker_refuses_and_counts() {
        let mut config = Config::ephemeral();
        config.max_connections = 1;
        let broker = Broker::new(config).unwrap();
        let first = admit_head(&broker, UPGRADE).expect("one slot");
        assert_eq!(
            admit_head(&broker, UPGRADE).unwrap_err(),
            Refusal::TooManyConnections
        );
        drop(first);
        let again = admit_head(&broker, UPGRADE).expect("the slot is free again");
        broker.begin_shutdown();
        drop(again);
        assert_eq!(
            admit_head(&broker, UPGRADE).unwrap_err(),
            Refusal::ShuttingDown
        );
        assert_eq!(broker.metrics().connections_refused.get(), 2);
    }
}
