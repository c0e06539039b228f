//! Opening and closing WebSocket connections to the broker: the handshake
//! with the codec's subprotocol, the token and TLS, the `welcome`,
//! subscriptions, and the closing handshake.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use rustls::ClientConfig;
use starling_protocol::{Codec, Envelope, ErrorCode, Filter, Frame, Limits};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::frame::PublishEncoder;
use crate::stats::now_ns;
use crate::tls;

/// A client connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one handshake, `welcome` or round of subscribe acks may take.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection refused with 1008 (policy) before its `welcome` is
/// reported: the broker's answer to a missing or bad token.
const REFUSED: &str = "refused with 1008";

/// Checks that `url` is one this tool can connect to.
pub(crate) fn check_url(url: &str) -> Result<()> {
    if !(url.starts_with("ws://") || url.starts_with("wss://")) {
        bail!("the broker's URL must be ws:// or wss://, got {url:?}");
    }
    url.into_client_request()
        .map_err(|e| anyhow!("{url:?} is not a usable WebSocket URL: {e}"))?;
    Ok(())
}

/// What every connection the bench opens presents: the token, and for
/// `wss://` what the broker's certificate is checked against.
#[derive(Clone, Default)]
pub(crate) struct Dialer {
    /// `Bearer <token>`, marked sensitive.
    authorization: Option<HeaderValue>,
    /// Built when a URL is `wss://`.
    tls: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("token", &self.authorization.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Dialer {
    /// A dialer for `urls` (checked), presenting `token`, trusting the
    /// system's roots and `ca_files` for those that are `wss://`.
    pub(crate) fn new(token: Option<&str>, ca_files: &[PathBuf], urls: &[&str]) -> Result<Self> {
        for url in urls {
            check_url(url)?;
        }
        let authorization = match token.map(str::trim) {
            None => None,
            Some("") => bail!("--token is empty"),
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| anyhow!("--token holds characters a header cannot carry"))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let tls = if urls.iter().any(|url| url.starts_with("wss://")) {
            Some(tls::client_config(ca_files)?)
        } else {
            None
        };
        Ok(Dialer { authorization, tls })
    }
}

/// The WebSocket settings of the bench's connections: no message or frame
/// size limit, and a read buffer of `read_buffer_bytes`.
pub(crate) fn config(read_buffer_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes.max(1024))
        .max_message_size(None)
        .max_frame_size(None)
}

/// A protocol frame as a WebSocket message.
pub(crate) fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::text(text),
        Frame::Binary(bytes) => Message::binary(bytes),
    }
}

/// The bytes of a data message; `None` for control messages.
pub(crate) fn data(message: &Message) -> Option<&[u8]> {
    match message {
        Message::Text(text) => Some(text.as_bytes()),
        Message::Binary(bytes) => Some(bytes),
        _ => None,
    }
}

/// The close code of a close message, as a tally key.
pub(crate) fn close_code(frame: Option<&CloseFrame>) -> String {
    frame.map_or_else(|| "no code".to_owned(), |f| u16::from(f.code).to_string())
}

/// A short, groupable reason for a failed connection step.
pub(crate) fn failure(error: &WsError) -> String {
    match error {
        WsError::Http(response) => format!("HTTP {}", response.status()),
        WsError::Io(e) => match (e.raw_os_error(), e.get_ref()) {
            (Some(_), _) => e.to_string(),
            // A TLS failure, for one: rustls's words.
            (None, Some(inner)) => inner.to_string(),
            (None, None) => format!("{:?}", e.kind()),
        },
        WsError::Protocol(e) => format!("protocol: {e}"),
        other => other.to_string(),
    }
}

/// The broker's close frame, for a report: the code and the reason.
fn closed_with(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) if !f.reason.is_empty() => format!("{} ({})", u16::from(f.code), f.reason),
        _ => close_code(frame),
    }
}

/// Opens a connection with `codec` and reads its `welcome`. Errors are short
/// reasons, grouped in the report.
pub(crate) async fn connect(
    dialer: &Dialer,
    url: &str,
    codec: Codec,
    config: WebSocketConfig,
) -> Result<(Ws, Limits), String> {
    let mut request = url.into_client_request().map_err(|e| failure(&e))?;
    let headers = request.headers_mut();
    headers.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(codec.subprotocol()),
    );
    if let Some(authorization) = &dialer.authorization {
        headers.insert(AUTHORIZATION, authorization.clone());
    }
    let connector = match (&dialer.tls, url.starts_with("wss://")) {
        (Some(tls), true) => Connector::Rustls(tls.clone()),
        (None, true) => return Err("no TLS configuration for a wss:// URL".to_owned()),
        (_, false) => Connector::Plain,
    };
    let (mut ws, _response) = timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(connector),
        ),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| failure(&e))?;
    let first = timeout(STEP_TIMEOUT, ws.next())
        .await
        .map_err(|_| "no welcome within 10 s".to_owned())?;
    match first {
        Some(Ok(message)) => match data(&message).map(|b| codec.decode_bytes(b)) {
            Some(Ok(Envelope::Welcome { limits, .. })) => Ok((ws, limits)),
            Some(Ok(other)) => Err(format!("first frame is {}, not welcome", other.type_name())),
            Some(Err(e)) => Err(format!("undecodable welcome: {e}")),
            None => match message {
                Message::Close(Some(frame)) if frame.code == CloseCode::Policy => {
                    Err(match frame.reason.as_str() {
                        "" => REFUSED.to_owned(),
                        reason => format!("{REFUSED} ({reason})"),
                    })
                }
                Message::Close(frame) => Err(format!(
                    "closed before welcome with {}",
                    closed_with(frame.as_ref())
                )),
                _ => Err("control frame before welcome".to_owned()),
            },
        },
        Some(Err(e)) => Err(failure(&e)),
        None => Err("closed before welcome".to_owned()),
    }
}

/// Opens one connection to `url` and checks, before any load, what would
/// otherwise fail once per connection, or silently: the handshake (TLS and
/// the token), and whether the token lets the bench subscribe to
/// `subscribe_to` and publish to `publish_to` (one publish, acked). The error
/// says what to fix.
pub(crate) async fn probe(
    dialer: &Dialer,
    url: &str,
    codec: Codec,
    subscribe_to: Option<&str>,
    publish_to: Option<&str>,
) -> Result<()> {
    let (mut ws, _limits) = connect(dialer, url, codec, config(0))
        .await
        .map_err(|reason| {
            let hint = if reason.starts_with(REFUSED) {
                match dialer.authorization {
                    Some(_) => ": the broker does not accept --token",
                    None => ": the broker wants a token (--token or STARLING_BENCH_TOKEN)",
                }
            } else if reason.contains("invalid peer certificate") {
                ": add the authority that signed the broker's certificate with --ca-file"
            } else {
                ""
            };
            anyhow!("cannot connect to {url}: {reason}{hint}")
        })?;
    let checked = permissions(&mut ws, codec, subscribe_to, publish_to).await;
    close(&mut ws, STEP_TIMEOUT).await;
    checked.map_err(|reason| anyhow!("{url}: {reason}"))
}

/// Subscribes to `subscribe_to` and publishes once to `publish_to`, and
/// waits for the answers; the error says which was refused.
async fn permissions(
    ws: &mut Ws,
    codec: Codec,
    subscribe_to: Option<&str>,
    publish_to: Option<&str>,
) -> Result<(), String> {
    let refused = |what: &str, code: &str| {
        let hint = if code == ErrorCode::Unauthorized.as_str() {
            " (the token's permissions must cover the bench's topics: see --topic-prefix)"
        } else {
            ""
        };
        format!("{what} was refused with {code}{hint}")
    };
    if let Some(topic) = subscribe_to
        && let Some(code) = subscribe(ws, codec, &[topic]).await?.refused.first()
    {
        return Err(refused(&format!("subscribing to {topic}"), code));
    }
    let Some(topic) = publish_to else {
        return Ok(());
    };
    // Id 1 was the subscription's, answered. (Small: a JavaScript peer
    // reads ids as doubles.)
    let id = 2;
    let publish = PublishEncoder::new(codec, 0).encode(topic, Some(id), now_ns());
    ws.send(publish).await.map_err(|e| failure(&e))?;
    loop {
        let next = timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| "publish not answered within 10 s".to_owned())?;
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(failure(&e)),
            None => return Err("closed while publishing".to_owned()),
        };
        if let Message::Close(frame) = &message {
            return Err(format!(
                "closed while publishing with {}",
                closed_with(frame.as_ref())
            ));
        }
        // Our own message comes back too when we are subscribed.
        match data(&message).map(|b| codec.decode_bytes(b)) {
            Some(Ok(Envelope::Ack { id: acked, .. })) if acked == id => return Ok(()),
            Some(Ok(Envelope::Error {
                id: Some(refused_id),
                code,
                ..
            })) if refused_id == id => {
                return Err(refused(
                    &format!("publishing to {topic}"),
                    &code.to_string(),
                ));
            }
            _ => {}
        }
    }
}

/// The outcome of subscribing one connection.
#[derive(Debug, Default)]
pub(crate) struct Subscribed {
    /// Indexes (into the `topics` given) of the acked subscriptions.
    pub(crate) acked: Vec<usize>,
    /// `error` answers, by code.
    pub(crate) refused: Vec<String>,
}

impl Subscribed {
    /// Takes `envelope` if it answers one of `topics` subscribes (ids 1 to
    /// `topics`); returns whether it did.
    pub(crate) fn answer(&mut self, envelope: Envelope, topics: usize) -> bool {
        let ours = |id: u64| id >= 1 && id as usize <= topics;
        match envelope {
            Envelope::Ack { id, .. } if ours(id) => self.acked.push(id as usize - 1),
            Envelope::Error {
                id: Some(id), code, ..
            } if ours(id) => self.refused.push(code.to_string()),
            _ => return false,
        }
        true
    }

    /// How many subscribes are answered.
    pub(crate) fn count(&self) -> usize {
        self.acked.len() + self.refused.len()
    }
}

/// Subscribes to each of `topics` (with ids 1, 2, ...) and waits for every
/// answer.
pub(crate) async fn subscribe(
    ws: &mut Ws,
    codec: Codec,
    topics: &[&str],
) -> Result<Subscribed, String> {
    for (i, topic) in topics.iter().enumerate() {
        let envelope = Envelope::Subscribe {
            name: None,
            info: None,
            epoch: None,
            id: Some(i as u64 + 1),
            topic: Filter::new(topic).map_err(|e| format!("bad topic {topic:?}: {e}"))?,
            since: None,
        };
        let frame = codec
            .encode(&envelope)
            .map_err(|e| format!("cannot encode subscribe: {e}"))?;
        ws.feed(to_message(frame)).await.map_err(|e| failure(&e))?;
    }
    ws.flush().await.map_err(|e| failure(&e))?;

    let mut out = Subscribed::default();
    let mut answered = 0;
    while answered < topics.len() {
        let next = timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| "subscribe not answered within 10 s".to_owned())?;
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(failure(&e)),
            None => return Err("closed while subscribing".to_owned()),
        };
        if let Message::Close(frame) = &message {
            return Err(format!(
                "closed while subscribing with {}",
                close_code(frame.as_ref())
            ));
        }
        if let Some(Ok(envelope)) = data(&message).map(|b| codec.decode_bytes(b)) {
            answered += usize::from(out.answer(envelope, topics.len()));
        }
    }
    Ok(out)
}

/// Sends close 1000 and waits (at most `wait`) for the broker's answer.
/// Returns whether the closing handshake completed.
pub(crate) async fn close(ws: &mut Ws, wait: Duration) -> bool {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bench done".into(),
    };
    if ws.close(Some(frame)).await.is_err() {
        return false;
    }
    let drain = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | None => return true,
                Some(Ok(_)) => {}
                // The broker's close, answered: tungstenite reports the end so.
                Some(Err(WsError::ConnectionClosed)) => return true,
                Some(Err(_)) => return false,
            }
        }
    };
    timeout(wait, drain).await.unwrap_or(false)
}
