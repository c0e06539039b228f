//! Shared fixtures: a real broker in-process on an ephemeral port, and a
//! scripted fake broker for what the real one does not do on demand.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use starling_broker::{Config, RunningBroker};
use starling_client::protocol::{Codec, Envelope, Limits, PROTOCOL_VERSION};
use starling_client::{Event, Events};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How long a test waits for anything from the network.
pub const WAIT: Duration = Duration::from_secs(5);

/// Awaits `fut` for at most [`WAIT`], failing the test with `what`.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Starts a broker on `127.0.0.1:0` with `adjust` applied to its config.
pub async fn broker_with(adjust: impl FnOnce(&mut Config)) -> RunningBroker {
    let mut config = Config::ephemeral();
    config.node_id = Some("test-node".into());
    adjust(&mut config);
    starling_broker::start(config).await.expect("broker starts")
}

/// Starts a broker with the default settings.
pub async fn broker() -> RunningBroker {
    broker_with(|_| {}).await
}

/// Starts a broker on `addr` (the port of a broker that just stopped),
/// retrying briefly while the port is still held.
pub async fn broker_on(addr: SocketAddr) -> RunningBroker {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut config = Config::ephemeral();
        config.node_id = Some("test-node-2".into());
        config.listen = addr;
        match starling_broker::start(config).await {
            Ok(running) => return running,
            Err(error) if tokio::time::Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("cannot bind {addr} again: {error}"),
        }
    }
}

/// Stops a broker gracefully (its clients get 1001).
pub async fn stop(running: RunningBroker) {
    within("broker shutdown", running.shutdown())
        .await
        .expect("broker stops cleanly");
}

/// Waits for the first event that `pick` accepts; fails after [`WAIT`].
pub async fn wait_event<T>(
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

/// Polls `check` every 10 ms until it holds; fails after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// What a [`FakeBroker`] connection answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pings {
    /// `pong` to every `ping`, and `ack` to every other frame with an id
    /// (publishes get offset 7).
    Answer,
    /// Nothing at all (a dead peer behind a live TCP connection).
    Ignore,
}

/// A scripted WebSocket server speaking just enough of the protocol: it
/// sends `welcome`, reports every frame it receives, and answers pings as
/// told. Each accepted connection is reported on `connections`.
pub struct FakeBroker {
    pub addr: SocketAddr,
    /// Frames received, tagged with the connection's number (from 1).
    pub frames: mpsc::UnboundedReceiver<(usize, Envelope)>,
    /// Per connection: a sender of raw messages to write to the client.
    pub connections: mpsc::UnboundedReceiver<mpsc::UnboundedSender<WsMessage>>,
}

impl FakeBroker {
    /// Starts a fake JSON broker; `pings` decides how it treats `ping`.
    pub async fn start(pings: Pings, limits: Limits) -> FakeBroker {
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
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}
