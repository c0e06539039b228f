//! The envelope-speaking WebSocket client of the end-to-end tests.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use starling_protocol::{Codec, Envelope, Filter, Frame, Payload, Topic};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::{WAIT, within};

/// A raw WebSocket client speaking the Starling envelope.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    codec: Codec,
    /// The `welcome` frame the broker sent first.
    pub welcome: Envelope,
    next_id: u64,
    pending: VecDeque<Envelope>,
    patience: Duration,
}

impl Client {
    /// Connects and reads `welcome`. `codec: None` offers no subprotocol.
    pub async fn connect(url: &str, codec: Option<Codec>) -> Client {
        Self::connect_with(url, codec, None).await
    }

    /// [`Client::connect`] to a `wss://` URL, trusting what `tls` trusts.
    pub async fn connect_tls(url: &str, codec: Option<Codec>, tls: Arc<ClientConfig>) -> Client {
        Self::connect_with(url, codec, Some(Connector::Rustls(tls))).await
    }

    async fn connect_with(url: &str, codec: Option<Codec>, tls: Option<Connector>) -> Client {
        let mut request = url.into_client_request().expect("valid url");
        if let Some(codec) = codec {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(codec.subprotocol()),
            );
        }
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (ws, response) = within(
            "connect",
            tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, tls),
        )
        .await
        .expect("websocket handshake");
        let echoed = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(echoed.as_deref(), codec.map(Codec::subprotocol));
        let mut client = Client {
            ws,
            codec: codec.unwrap_or(Codec::Json),
            welcome: Envelope::Ping { id: None },
            next_id: 1,
            pending: Default::default(),
            patience: WAIT,
        };
        client.welcome = client.recv().await;
        assert!(
            matches!(client.welcome, Envelope::Welcome { .. }),
            "{:?}",
            client.welcome
        );
        client
    }

    /// The `welcome` the broker sent.
    pub fn welcome(&self) -> &Envelope {
        &self.welcome
    }

    /// The codec in use.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// How long [`Client::recv`] waits for a frame ([`WAIT`] unless set):
    /// tests that push heavy traffic through one process allow more.
    pub fn set_patience(&mut self, patience: Duration) {
        self.patience = patience;
    }

    /// A fresh frame id.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends one frame in this client's codec.
    pub async fn send(&mut self, envelope: &Envelope) {
        let frame = self.codec.encode(envelope).expect("encodable");
        self.send_raw(match frame {
            Frame::Text(t) => Message::Text(t.into()),
            Frame::Binary(b) => Message::Binary(b.into()),
        })
        .await;
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, message: Message) {
        within("send", self.ws.send(message)).await.expect("send");
    }

    /// Receives the next frame (WebSocket pings and pongs are skipped).
    pub async fn recv(&mut self) -> Envelope {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        self.recv_wire().await
    }

    async fn recv_wire(&mut self) -> Envelope {
        loop {
            let message = tokio::time::timeout(self.patience, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no frame within {:?}", self.patience))
                .expect("connection open")
                .expect("no transport error");
            let frame = match message {
                Message::Text(t) => {
                    assert_eq!(
                        self.codec,
                        Codec::Json,
                        "text frame on a MessagePack client"
                    );
                    Frame::Text(t.to_string())
                }
                Message::Binary(b) => {
                    assert_eq!(self.codec, Codec::MsgPack, "binary frame on a JSON client");
                    Frame::Binary(b.to_vec())
                }
                Message::Close(frame) => panic!("unexpected close: {frame:?}"),
                _ => continue,
            };
            return self.codec.decode(&frame).expect("broker frames decode");
        }
    }

    /// Receives the next raw WebSocket message.
    pub async fn recv_raw(&mut self) -> Option<Message> {
        within("a message", self.ws.next())
            .await
            .map(|r| r.expect("no transport error"))
    }

    /// Reads until the broker's close frame; returns its code and reason.
    /// Frames before it are returned too, in order.
    pub async fn recv_close(&mut self) -> (u16, String, Vec<Message>) {
        let mut before = Vec::new();
        loop {
            match within("a close frame", self.ws.next()).await {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string(), before);
                }
                Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
                Some(Ok(other)) => before.push(other),
                Some(Err(e)) => panic!("transport error before the close frame: {e}"),
                None => panic!("connection dropped without a close frame"),
            }
        }
    }

    /// Sends `envelope` and returns the `ack`, `error`, `pong` or `presence` answering its
    /// id; `message` frames that arrive meanwhile are kept for [`Client::recv`].
    pub async fn request(&mut self, envelope: &Envelope) -> Envelope {
        let id = envelope.id().expect("a request has an id");
        self.send(envelope).await;
        loop {
            let frame = self.recv_wire().await;
            match &frame {
                Envelope::Ack { id: got, .. } if *got == id => return frame,
                Envelope::Error { id: Some(got), .. } if *got == id => return frame,
                Envelope::Pong { id: Some(got) } if *got == id => return frame,
                Envelope::Presence {
                    id: Some(got),
                    count: Some(_),
                    ..
                } if *got == id => return frame,
                _ => self.pending.push_back(frame),
            }
        }
    }

    /// Subscribes and waits for the ack. Returns where the topic's history
    /// stands (latest offset, epoch) when it keeps history.
    pub async fn subscribe(&mut self, topic: &str) -> Option<(u64, Arc<str>)> {
        self.subscribe_from(topic, None, None).await
    }

    /// Subscribes with `since` and `epoch` and waits for the ack (frames
    /// that follow it, such as `lagged` and replayed messages, are left to
    /// read). Returns where the topic's history stands (latest offset,
    /// epoch) when it keeps history.
    pub async fn subscribe_from(
        &mut self,
        topic: &str,
        since: Option<u64>,
        epoch: Option<&str>,
    ) -> Option<(u64, Arc<str>)> {
        let id = self.next_id();
        let answer = self
            .request(&Envelope::Subscribe {
                name: None,
                info: None,
                id: Some(id),
                topic: Filter::new(topic).expect("valid filter"),
                since,
                epoch: epoch.map(Into::into),
            })
            .await;
        match answer {
            Envelope::Ack {
                id: got,
                offset,
                epoch,
            } if got == id => {
                assert_eq!(offset.is_some(), epoch.is_some(), "{offset:?} {epoch:?}");
                offset.zip(epoch)
            }
            other => panic!("expected the ack of subscribe {id}, got {other:?}"),
        }
    }

    /// Subscribes to every topic of `topics`, sending the requests a batch
    /// at a time without waiting for each ack (the acks of a batch are
    /// read before the next batch goes).
    pub async fn subscribe_all<'a>(&mut self, topics: impl IntoIterator<Item = &'a str>) {
        let topics: Vec<&str> = topics.into_iter().collect();
        for batch in topics.chunks(256) {
            let first = self.next_id + 1;
            for topic in batch {
                let id = self.next_id();
                self.send(&Envelope::Subscribe {
                    name: None,
                    info: None,
                    epoch: None,
                    id: Some(id),
                    topic: Filter::new(topic).expect("valid filter"),
                    since: None,
                })
                .await;
            }
            for id in first..first + batch.len() as u64 {
                loop {
                    let frame = self.recv_wire().await;
                    match frame {
                        Envelope::Ack { id: got, .. } if got == id => break,
                        Envelope::Message { .. } => self.pending.push_back(frame),
                        other => panic!("expected the ack of subscribe {id}, got {other:?}"),
                    }
                }
            }
        }
    }

    /// Publishes a JSON payload and waits for the ack.
    pub async fn publish(&mut self, topic: &str, json: &str) {
        let id = self.next_id();
        let answer = self
            .request(&Envelope::Publish {
                id: Some(id),
                topic: Topic::new(topic).expect("valid topic"),
                payload: Payload::from_json(json).expect("valid json"),
            })
            .await;
        assert!(matches!(answer, Envelope::Ack { .. }), "{answer:?}");
    }

    /// Publishes without an id (fire and forget).
    pub async fn publish_nowait(&mut self, topic: &str, payload: Payload) {
        self.send(&Envelope::Publish {
            id: None,
            topic: Topic::new(topic).expect("valid topic"),
            payload,
        })
        .await;
    }

    /// Receives the next frame and asserts it is the `lagged` with `reset`
    /// of `topic`: the client's history position is void.
    pub async fn expect_reset(&mut self, topic: &str) {
        let frame = self.recv().await;
        assert_eq!(
            frame,
            Envelope::Lagged {
                topic: Filter::new(topic).expect("valid filter"),
                missed: None,
                reset: true,
            }
        );
    }

    /// Receives the next `message` frame, returning (topic, payload).
    pub async fn recv_message(&mut self) -> (String, Payload) {
        match self.recv().await {
            Envelope::Message { topic, payload, .. } => (topic.to_string(), payload),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(Some(Ok(message))) = tokio::time::timeout(quiet, self.ws.next()).await {
            panic!("expected silence, got {message:?}");
        }
    }

    /// Closes with 1000 and waits for the broker's answer.
    pub async fn close(mut self) {
        let _ = within("close", self.ws.close(None)).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}
