//! Opening and closing WebSocket connections to the broker: the handshake
//! with the codec's subprotocol, the `welcome`, subscriptions, and the
//! closing handshake.

use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::{SinkExt, StreamExt};
use starling_protocol::{Codec, Envelope, Filter, Frame, Limits};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long one handshake, `welcome` or round of subscribe acks may take.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks that `url` is one this tool can connect to.
pub(crate) fn check_url(url: &str) -> Result<()> {
    if !url.starts_with("ws://") {
        bail!("--url must be a ws:// URL (this tool has no TLS), got {url:?}");
    }
    url.into_client_request()
        .map_err(|e| anyhow::anyhow!("--url {url:?} is not a usable WebSocket URL: {e}"))?;
    Ok(())
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
        WsError::Io(e) => match e.raw_os_error() {
            Some(_) => e.to_string(),
            None => format!("{:?}", e.kind()),
        },
        WsError::Protocol(e) => format!("protocol: {e}"),
        other => other.to_string(),
    }
}

/// Opens a connection with `codec` and reads its `welcome`. Errors are short
/// reasons, grouped in the report.
pub(crate) async fn connect(
    url: &str,
    codec: Codec,
    config: WebSocketConfig,
) -> Result<(Ws, Limits), String> {
    let mut request = url.into_client_request().map_err(|e| failure(&e))?;
    request.headers_mut().insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(codec.subprotocol()),
    );
    let (mut ws, _response) = timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
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
                Message::Close(frame) => Err(format!(
                    "closed before welcome with {}",
                    close_code(frame.as_ref())
                )),
                _ => Err("control frame before welcome".to_owned()),
            },
        },
        Some(Err(e)) => Err(failure(&e)),
        None => Err("closed before welcome".to_owned()),
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

/// Subscribes to each of `topics` (with ids 1, 2, ...) and waits for every
/// answer.
pub(crate) async fn subscribe(
    ws: &mut Ws,
    codec: Codec,
    topics: &[&str],
) -> Result<Subscribed, String> {
    for (i, topic) in topics.iter().enumerate() {
        let envelope = Envelope::Subscribe {
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
        let Some(Ok(envelope)) = data(&message).map(|b| codec.decode_bytes(b)) else {
            continue;
        };
        match envelope {
            Envelope::Ack { id, .. } if id >= 1 && id as usize <= topics.len() => {
                out.acked.push(id as usize - 1);
                answered += 1;
            }
            Envelope::Error {
                id: Some(id), code, ..
            } if id >= 1 && id as usize <= topics.len() => {
                out.refused.push(code.to_string());
                answered += 1;
            }
            _ => {}
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
