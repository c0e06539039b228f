//! Opening one WebSocket to the broker: the handshake and its `welcome`.

use std::sync::Arc;

use futures_util::StreamExt;
use starling_protocol::http::ErrorBody;
use starling_protocol::{CloseCode, Codec, Envelope, Frame, Limits, PROTOCOL_VERSION, Payload};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri, header};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::{Error, Result};
use crate::options::ConnectOptions;

/// The WebSocket of one connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the broker's `welcome` told us.
#[derive(Debug, Clone)]
pub(crate) struct Welcome {
    pub(crate) node: Arc<str>,
    pub(crate) limits: Limits,
}

/// The header that carries [`ConnectOptions::name`].
pub(crate) const NAME_HEADER: &str = "x-starling-client-name";

/// A protocol frame as a WebSocket message (the SDK's one conversion).
pub(crate) fn to_ws(frame: Frame) -> WsMessage {
    match frame {
        Frame::Text(text) => WsMessage::Text(text.into()),
        Frame::Binary(bytes) => WsMessage::Binary(bytes.into()),
    }
}

/// Checks `url` and gives a URL without a path the broker's `/ws`.
pub(crate) fn normalize_url(url: &str) -> Result<String> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
    match uri.scheme_str() {
        Some("ws") | Some("wss") => {}
        _ => return Err(invalid("the scheme must be ws:// or wss://".into())),
    }
    let Some(authority) = uri.authority() else {
        return Err(invalid("no host".into()));
    };
    if authority.host().is_empty() {
        return Err(invalid("no host".into()));
    }
    let path = uri.path();
    if path.is_empty() || path == "/" {
        let scheme = uri.scheme_str().unwrap_or("ws");
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        return Ok(format!("{scheme}://{authority}/ws{query}"));
    }
    Ok(url.to_owned())
}

fn header_value(option: &'static str, value: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(|e| Error::InvalidOption {
        option,
        reason: format!("not a valid HTTP header value: {e}"),
    })
}

/// Asks the token provider for a token, or takes the fixed one.
pub(crate) async fn token(options: &ConnectOptions) -> Result<Option<String>> {
    match &options.token_provider {
        Some(provider) => provider
            .call()
            .await
            .map(Some)
            .map_err(Error::TokenProvider),
        None => Ok(options.token.clone()),
    }
}

/// Opens a connection (presenting `token`) and reads the broker's
/// `welcome`, all within the connect timeout.
pub(crate) async fn open(
    url: &str,
    options: &ConnectOptions,
    token: Option<&str>,
) -> Result<(Ws, Welcome)> {
    let mut request = url.into_client_request().map_err(|e| Error::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let headers = request.headers_mut();
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(options.codec.subprotocol()),
    );
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("starling-client-rust/", env!("CARGO_PKG_VERSION"))),
    );
    if let Some(token) = token {
        headers.insert(
            header::AUTHORIZATION,
            header_value("token", &format!("Bearer {token}"))?,
        );
    }
    if let Some(name) = &options.name {
        headers.insert(NAME_HEADER, header_value("name", name)?);
    }
    let connector = if request.uri().scheme_str() == Some("wss") {
        Some(Connector::Rustls(options.tls.client_config()?))
    } else {
        None
    };
    match tokio::time::timeout(
        options.connect_timeout,
        handshake(request, url, options.codec, connector),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(Error::ConnectTimeout {
            url: url.to_owned(),
            after: options.connect_timeout,
        }),
    }
}

async fn handshake(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    url: &str,
    codec: Codec,
    connector: Option<Connector>,
) -> Result<(Ws, Welcome)> {
    let (mut ws, _response) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector)
            .await
            .map_err(|e| handshake_error(url, e))?;
    // tungstenite already checked that the broker echoed our subprotocol.
    loop {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                return Err(Error::Connect {
                    url: url.to_owned(),
                    source: Box::new(e),
                });
            }
            None => {
                return Err(Error::Handshake(
                    "the broker closed the connection before its welcome".into(),
                ));
            }
        };
        let envelope = match (&message, codec) {
            (WsMessage::Text(text), Codec::Json) => codec.decode_bytes(text.as_bytes()),
            (WsMessage::Binary(bytes), Codec::MsgPack) => codec.decode_bytes(bytes),
            (WsMessage::Close(frame), _) => {
                let (code, reason) = frame
                    .as_ref()
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                if code == CloseCode::Policy.code() {
                    return Err(Error::Unauthorized { reason });
                }
                return Err(Error::Handshake(format!(
                    "the broker closed the connection with {code} before its welcome: {reason}"
                )));
            }
            (WsMessage::Text(_) | WsMessage::Binary(_), _) => {
                return Err(Error::Handshake(
                    "the broker's first frame is not in the negotiated codec".into(),
                ));
            }
            _ => continue,
        };
        return match envelope {
            Ok(Envelope::Welcome {
                version,
                node,
                codec: name,
                limits,
            }) => {
                if version != PROTOCOL_VERSION {
                    Err(Error::Handshake(format!(
                        "the broker speaks protocol version {version}, this client {PROTOCOL_VERSION}"
                    )))
                } else if name != codec.name() {
                    Err(Error::Handshake(format!(
                        "the broker chose codec {name:?}, this client asked for {:?}",
                        codec.name()
                    )))
                } else {
                    Ok((ws, Welcome { node, limits }))
                }
            }
            Ok(other) => Err(Error::Handshake(format!(
                "expected welcome as the first frame, got {}",
                other.type_name()
            ))),
            Err(e) => Err(Error::Handshake(format!("cannot decode welcome: {e}"))),
        };
    }
}

/// Maps a failed WebSocket handshake to the SDK's error: an HTTP refusal
/// keeps its status and the code of the broker's JSON body.
fn handshake_error(url: &str, error: WsError) -> Error {
    match error {
        WsError::Http(response) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let parsed = Payload::from_json(&body)
                .ok()
                .and_then(|p| p.decode::<ErrorBody>().ok());
            match parsed {
                Some(ErrorBody { code, message }) => Error::Refused {
                    status,
                    code: code.into_owned(),
                    message,
                },
                None => Error::Refused {
                    status,
                    code: "unknown".into(),
                    message: body,
                },
            }
        }
        WsError::Url(e) => Error::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        },
        WsError::Protocol(e) => Error::Handshake(e.to_string()),
        other => Error::Connect {
            url: url.to_owned(),
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_without_a_path_gets_ws() {
        assert_eq!(
            normalize_url("ws://127.0.0.1:7070").unwrap(),
            "ws://127.0.0.1:7070/ws"
        );
        assert_eq!(
            normalize_url("ws://127.0.0.1:7070/").unwrap(),
            "ws://127.0.0.1:7070/ws"
        );
        assert_eq!(
            normalize_url("ws://h:1/custom/path").unwrap(),
            "ws://h:1/custom/path"
        );
        assert_eq!(normalize_url("ws://h:1?a=b").unwrap(), "ws://h:1/ws?a=b");
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in ["http://h:1/ws", "127.0.0.1:7070", "", "ws:///ws"] {
            assert!(
                matches!(normalize_url(url), Err(Error::InvalidUrl { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn an_http_refusal_keeps_status_and_code() {
        let response = tokio_tungstenite::tungstenite::http::Response::builder()
            .status(503)
            .body(Some(
                br#"{"code":"shutting_down","message":"bye"}"#.to_vec(),
            ))
            .unwrap();
        let error = handshake_error("ws://x/ws", WsError::Http(Box::new(response)));
        match error {
            Error::Refused {
                status,
                code,
                message,
            } => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (503, "shutting_down", "bye")
                );
            }
            other => panic!("{other:?}"),
        }
        let response = tokio_tungstenite::tungstenite::http::Response::builder()
            .status(502)
            .body(Some(b"bad gateway".to_vec()))
            .unwrap();
        let error = handshake_error("ws://x/ws", WsError::Http(Box::new(response)));
        assert!(
            matches!(&error, Error::Refused { status: 502, code, message } if code == "unknown" && message == "bad gateway"),
            "{error:?}"
        );
    }
}
