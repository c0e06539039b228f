//! Fixtures of the SDK's tests alone: waiting for an SDK event, and a
//! scripted fake broker for what the real one does not do on demand. The
//! generic ones (a real broker in-process, `within`, `eventually`) are
//! `starling_tests`'.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use starling_client::protocol::{Codec, Envelope, Limits, PROTOCOL_VERSION};
use starling_client::{Event, Events};
use starling_tests::within;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Waits for the first event that `pick` accepts; fails after
/// [`starling_tests::WAIT`].
pub(crate) async fn wait_event<T>(
    events: &mut Events,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            let event = events
                .next()
                .await
                .unwrap_or_else(|| panic!("events ended before {what}"));
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    })
    .await
}

/// What a [`FakeBroker`] connection answers.
// Every test binary compiles this module, and pubsub.rs uses no fake broker:
// the allows below are for it.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pings {
    /// `pong` to every `ping`, and `ack` to every other frame with an id
    /// (publishes get offset 7).
    Answer,
    /// Nothing at all (a dead peer behind a live TCP connection).
    Ignore,
}

/// A scripted WebSocket server speaking just enough of the protocol: it
/// sends `welcome`, reports every frame it receives, and answers pings as
/// told. Each accepted connection is reported on `connections`.
#[allow(dead_code)]
pub(crate) struct FakeBroker {
    pub(crate) addr: SocketAddr,
    /// Frames received, tagged with the connection's number (from 1).
    pub(crate) frames: mpsc::UnboundedReceiver<(usize, Envelope)>,
    /// Per connection: a sender of raw messages to write to the client.
    pub(crate) connections: mpsc::UnboundedReceiver<mpsc::UnboundedSender<WsMessage>>,
}

#[allow(dead_code)]
impl FakeBroker {
    /// Starts a fake JSON broker; `pings` decides how it treats `ping`.
    pub(crate) async fn start(pings: Pings, limits: Limits) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (frames_tx, frames) = mpsc::unbounded_channel();
        let (conns_tx, connections) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                n += 1;
                let frames_tx = frames_tx.clone();
                let conns_tx = conns_tx.clone();
                let limits = limits.clone();
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // the signature is tungstenite's
                    let callback = |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                                    mut response: tokio_tungstenite::tungstenite::handshake::server::Response| {
                        if let Some(offer) = request.headers().get("sec-websocket-protocol") {
                            response.headers_mut().insert("sec-websocket-protocol", offer.clone());
                        }
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await
                    else {
                        return;
                    };
                    let welcome = Envelope::Welcome {
                        version: PROTOCOL_VERSION,
                        node: "fake".into(),
                        codec: Codec::Json.name(),
                        limits,
                    };
                    let text = match Codec::Json.encode(&welcome).expect("encodes") {
                        starling_client::protocol::Frame::Text(t) => t,
                        _ => unreachable!(),
                    };
                    if ws.send(WsMessage::Text(text.into())).await.is_err() {
                        return;
                    }
                    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<WsMessage>();
                    let _ = conns_tx.send(out_tx.clone());
                    loop {
                        tokio::select! {
                            Some(message) = out_rx.recv() => {
                                if ws.send(message).await.is_err() {
                                    return;
                                }
                            }
                            incoming = ws.next() => {
                                let Some(Ok(message)) = incoming else { return };
                                let WsMessage::Text(text) = message else { continue };
                                let Ok(envelope) = Codec::Json.decode_client(text.as_bytes()) else { continue };
                                if pings == Pings::Answer {
                                    let answer = match &envelope {
                                        Envelope::Ping { id } => Some(format!(
                                            r#"{{"type":"pong","id":{}}}"#,
                                            id.unwrap_or(0)
                                        )),
                                        Envelope::Publish { id: Some(id), .. } => {
                                            Some(format!(r#"{{"type":"ack","id":{id},"offset":7}}"#))
                                        }
                                        other => other
                                            .id()
                                            .map(|id| format!(r#"{{"type":"ack","id":{id}}}"#)),
                                    };
                                    if let Some(answer) = answer {
                                        let _ = out_tx.send(WsMessage::Text(answer.into()));
                                    }
                                }
                                let _ = frames_tx.send((n, envelope));
                            }
                        }
                    }
                });
            }
        });
        FakeBroker {
            addr,
            frames,
            connections,
        }
    }

    /// `ws://ADDR/ws`.
    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}
