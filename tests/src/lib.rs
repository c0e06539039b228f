//! Test fixtures for Starling's end-to-end tests: a broker on an ephemeral
//! port and a raw WebSocket client that speaks the envelope.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use starling_broker::{Config, RunningBroker};
use starling_protocol::framing::{self, FIN, Header, opcode};
use starling_protocol::{Codec, Envelope, Filter, Frame, Payload, Topic};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

pub mod redis;
pub mod tokens;

pub use tokio_tungstenite::tungstenite;

/// How long a test waits for anything from the network.
pub const WAIT: Duration = Duration::from_secs(5);

/// Awaits `fut` for at most [`WAIT`], failing the test with `what` on timeout.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A broker started in-process on `127.0.0.1:0`.
pub struct TestBroker {
    running: RunningBroker,
}

impl TestBroker {
    /// A broker with the default configuration.
    pub async fn start() -> Self {
        Self::with_config(|_| {}).await
    }

    /// A broker with a configuration adjusted by `adjust`.
    pub async fn with_config(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::ephemeral();
        config.node_id = Some("test-node".into());
        adjust(&mut config);
        let running = starling_broker::start(config).await.expect("broker starts");
        TestBroker { running }
    }

    /// A cluster node: a broker with id `node` joined to the Redis at
    /// `redis_url`, returned once its Redis link is up.
    pub async fn node(node: &str, redis_url: &str) -> Self {
        Self::node_with(node, redis_url, |_| {}).await
    }

    /// A cluster node with a configuration adjusted by `adjust`.
    pub async fn node_with(node: &str, redis_url: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        let broker = Self::with_config(|c| {
            c.node_id = Some(node.into());
            c.redis_url = Some(redis_url.into());
            adjust(c);
        })
        .await;
        broker.wait_cluster(true).await;
        broker
    }

    /// Waits until the node's Redis link is up (or down).
    pub async fn wait_cluster(&self, up: bool) {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        while self.broker().cluster_up() != Some(up) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster link of {} not {}",
                self.broker().node_id(),
                if up { "up" } else { "down" }
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        self.running.ws_url()
    }

    /// `http://ADDR`.
    pub fn http_url(&self) -> String {
        self.running.http_url()
    }

    /// The broker.
    pub fn broker(&self) -> &starling_broker::Broker {
        &self.running.broker
    }

    /// Connects a JSON client.
    pub async fn json(&self) -> Client {
        Client::connect(&self.ws_url(), Some(Codec::Json)).await
    }

    /// Connects a MessagePack client.
    pub async fn msgpack(&self) -> Client {
        Client::connect(&self.ws_url(), Some(Codec::MsgPack)).await
    }

    /// Shuts the broker down gracefully.
    pub async fn stop(self) {
        within("broker shutdown", self.running.shutdown())
            .await
            .expect("broker stops cleanly");
    }
}

/// A raw WebSocket client speaking the Starling envelope.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    codec: Codec,
    /// The `welcome` frame the broker sent first.
    pub welcome: Envelope,
    next_id: u64,
    pending: std::collections::VecDeque<Envelope>,
    patience: Duration,
}

impl Client {
    /// Connects and reads `welcome`. `codec: None` offers no subprotocol.
    pub async fn connect(url: &str, codec: Option<Codec>) -> Client {
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
            tokio_tungstenite::connect_async_with_config(request, Some(config), true),
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

    /// Sends `envelope` and returns the `ack`, `error` or `pong` answering its
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
                _ => self.pending.push_back(frame),
            }
        }
    }

    /// Subscribes and waits for the ack.
    pub async fn subscribe(&mut self, topic: &str) {
        let id = self.next_id();
        let answer = self
            .request(&Envelope::Subscribe {
                id: Some(id),
                topic: Filter::new(topic).expect("valid filter"),
                since: None,
            })
            .await;
        assert_eq!(answer, Envelope::Ack { id, offset: None });
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

/// Fetches a URL; returns the status and the body.
pub async fn http_get(url: &str) -> (u16, String) {
    let response = within("http get", reqwest::get(url))
        .await
        .expect("http get");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// POSTs `body` as `application/json`, as a backend does; returns the
/// status and the body.
pub async fn http_post(url: &str, body: impl Into<String>) -> (u16, String) {
    let response = within(
        "http post",
        reqwest::Client::new()
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .send(),
    )
    .await
    .expect("http post");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// Reads one counter or gauge from `/metrics` text (labels included in `name`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Raises this process's open-file limit to at least `n` (as far as the hard
/// limit allows), for tests that open many sockets.
pub fn raise_fd_limit(n: u64) -> u64 {
    rlimit::increase_nofile_limit(n).expect("raising RLIMIT_NOFILE")
}

impl TestBroker {
    /// The address the broker listens on, `127.0.0.1:PORT`.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.running.addr
    }
}

/// An HTTP answer: status, `Content-Type` and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header, empty when absent.
    pub content_type: String,
    /// The body, as text.
    pub body: String,
}

/// Sends `method url` with an optional body (declared JSON); returns
/// status, content type and body.
pub async fn http_request(method: &str, url: &str, body: Option<Vec<u8>>) -> HttpAnswer {
    let json = [("content-type", "application/json")];
    let headers: &[(&str, &str)] = if body.is_some() { &json } else { &[] };
    http_request_with(method, url, headers, body).await
}

/// [`http_request`] with these headers (and no others).
pub async fn http_request_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> HttpAnswer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
    let mut request = reqwest::Client::new().request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = within("http request", request.send())
        .await
        .expect("http request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let body = within("http body", response.text()).await.expect("body");
    HttpAnswer {
        status,
        content_type,
        body,
    }
}

/// Polls `GET /metrics` until `name` reads `expected`; returns the last text.
/// Fails the test when it does not within [`WAIT`].
pub async fn wait_for_metric(http_url: &str, name: &str, expected: f64) -> String {
    let url = format!("{http_url}/metrics");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, text) = http_get(&url).await;
        assert_eq!(status, 200, "{text}");
        let value = metric(&text, name);
        if value == expected {
            return text;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{name} is {value}, expected {expected}; /metrics:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Parses `json` (one JSON value) into a [`Value`](starling_protocol::Value).
pub fn parse_json(json: &str) -> starling_protocol::Value {
    Payload::from_json(json)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {json}"))
        .to_value()
}

/// The field `key` of the JSON object `json`, when present.
pub fn json_field(json: &str, key: &str) -> Option<starling_protocol::Value> {
    match parse_json(json) {
        starling_protocol::Value::Map(entries) => entries
            .into_iter()
            .find_map(|(k, v)| (k == starling_protocol::Value::Str(key.to_owned())).then_some(v)),
        other => panic!("not a JSON object: {other:?}"),
    }
}

/// The string field `key` of the JSON object `json`; fails the test when it
/// is missing or not a string.
pub fn json_str(json: &str, key: &str) -> String {
    match json_field(json, key) {
        Some(starling_protocol::Value::Str(s)) => s,
        other => panic!("field {key:?} of {json} is not a string: {other:?}"),
    }
}

/// Counts panics on the runtime's threads (where the broker's tasks run in
/// `multi_thread` tests), from the first call on. Test code runs on the
/// test's own thread, so in a test binary whose tests spawn no tasks of their
/// own, a count above zero means a broker task panicked.
pub fn worker_panics() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            // Tokio names its threads `tokio-rt-worker` (or, in older
            // versions, `tokio-runtime-worker`) and `tokio-rt-blocking`.
            if thread.name().is_some_and(|n| n.starts_with("tokio-")) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

/// One frame read by [`RawWs`]: its first header byte and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// FIN, RSV1-3 and the opcode, as sent.
    pub head: u8,
    /// The unmasked payload.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The opcode (low four bits of the first byte).
    pub fn opcode(&self) -> u8 {
        self.head & 0x0f
    }
}

/// A WebSocket client written by hand on a plain TCP stream, for sending what
/// a correct WebSocket library refuses to send (invalid UTF-8, unmasked
/// frames, reserved bits).
pub struct RawWs {
    tcp: TcpStream,
    buffer: Vec<u8>,
}

/// The head of an HTTP answer read by hand: status line, headers and body.
#[derive(Debug, Clone)]
pub struct RawHttpAnswer {
    /// The status code.
    pub status: u16,
    /// Header lines, lowercased names, as `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// The body (read up to `Content-Length`; empty for 101).
    pub body: String,
}

impl RawHttpAnswer {
    /// The value of header `name` (case-insensitive), when present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl RawWs {
    /// The headers of a correct WebSocket upgrade request for `/ws` (with
    /// the key of RFC 6455's example), without the request line.
    pub const UPGRADE_HEADERS: [(&'static str, &'static str); 4] = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];

    /// Sends a WebSocket upgrade request for `/ws` by hand, offering
    /// `subprotocol` when given, and reads the answer. On 101 the returned
    /// client is ready for frames (the `welcome` frame is not read yet).
    pub async fn handshake(
        addr: std::net::SocketAddr,
        subprotocol: Option<&str>,
    ) -> (RawHttpAnswer, RawWs) {
        let mut headers = RawWs::UPGRADE_HEADERS.to_vec();
        if let Some(protocol) = subprotocol {
            headers.push(("Sec-WebSocket-Protocol", protocol));
        }
        RawWs::request(addr, "GET", "/ws", &headers).await
    }

    /// Sends `method path` with exactly `headers` (plus `Host`) on a new TCP
    /// connection and reads the answer's head, and its body unless it is 101.
    pub async fn request(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (RawHttpAnswer, RawWs) {
        let mut raw = RawWs::open(addr).await;
        raw.write_raw(RawWs::request_head(addr, method, path, headers).as_bytes())
            .await;
        let answer = raw.read_answer().await;
        (answer, raw)
    }

    /// A TCP connection to `addr` with nothing sent yet.
    pub async fn open(addr: std::net::SocketAddr) -> RawWs {
        let tcp = within("tcp connect", TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        RawWs {
            tcp,
            buffer: Vec::new(),
        }
    }

    /// The head of an HTTP/1.1 request: `method path`, `Host`, then exactly
    /// `headers`.
    pub fn request_head(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> String {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request
    }

    /// Writes `bytes` as they are.
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        within("write", self.tcp.write_all(bytes))
            .await
            .expect("write");
    }

    /// Connects with a hand-made handshake (no subprotocol: JSON), expects
    /// 101 and reads the `welcome` frame.
    pub async fn connect(addr: std::net::SocketAddr) -> RawWs {
        let mut raw = RawWs::open(addr).await;
        raw.write_raw(RawWs::request_head(addr, "GET", "/ws", &RawWs::UPGRADE_HEADERS).as_bytes())
            .await;
        raw.expect_upgraded().await;
        raw
    }

    /// Reads the answer to an upgrade request with [`RawWs::UPGRADE_HEADERS`]:
    /// a 101 with the right accept key, then the `welcome` frame.
    pub async fn expect_upgraded(&mut self) {
        let answer = self.read_answer().await;
        assert_eq!(answer.status, 101, "{answer:?}");
        assert_eq!(
            answer.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{answer:?}"
        );
        let welcome = self.read_frame().await.expect("welcome frame");
        assert_eq!(welcome.opcode(), 1, "{welcome:?}");
        let text = String::from_utf8(welcome.payload).expect("utf-8 welcome");
        assert!(text.contains(r#""type":"welcome""#), "{text}");
    }

    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        let n = within("tcp read", self.tcp.read(&mut chunk))
            .await
            .unwrap_or(0);
        self.buffer.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads an HTTP answer's head, and its body unless it is 101.
    pub async fn read_answer(&mut self) -> RawHttpAnswer {
        let end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(
                self.fill().await,
                "connection closed before the HTTP answer"
            );
        };
        let head = String::from_utf8(self.buffer[..end].to_vec()).expect("ASCII head");
        self.buffer.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut answer = RawHttpAnswer {
            status,
            headers,
            body: String::new(),
        };
        if status != 101 {
            let length: usize = answer
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while self.buffer.len() < length {
                assert!(self.fill().await, "connection closed inside the body");
            }
            let body: Vec<u8> = self.buffer.drain(..length).collect();
            answer.body = String::from_utf8(body).expect("UTF-8 body");
        }
        answer
    }

    /// Writes one frame: `head` is the first byte (FIN, RSV1-3, opcode),
    /// masked with a fixed key when `masked`.
    pub async fn send_frame(&mut self, head: u8, payload: &[u8], masked: bool) {
        let frame = RawWs::frame(head, payload, masked);
        self.write_raw(&frame).await;
    }

    /// The masking key of the frames [`RawWs`] sends masked.
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// The bytes of one frame, as [`RawWs::send_frame`] writes it: `head`
    /// exactly as given, the shortest length form, and the payload masked
    /// with a fixed key when `masked`.
    pub fn frame(head: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        let mut frame = Vec::new();
        framing::write_frame_raw(&mut frame, head, payload, masked.then_some(RawWs::MASK));
        frame
    }

    /// Reads the next frame from the broker; `None` when the connection ended.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buffer) {
                self.buffer.drain(..used);
                return Some(frame);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads until the broker's close frame; returns its code, its reason and
    /// the frames before it. Fails when the connection ends without one.
    pub async fn recv_close(&mut self) -> (u16, String, Vec<RawFrame>) {
        let mut before = Vec::new();
        loop {
            let frame = self
                .read_frame()
                .await
                .expect("a close frame before the connection ends");
            if frame.opcode() == 8 {
                assert!(frame.payload.len() >= 2, "close frame without a code");
                let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                let reason = String::from_utf8_lossy(&frame.payload[2..]).into_owned();
                // Answer it, as a well-behaved client does (errors do not matter here).
                let _ = tokio::time::timeout(WAIT, async {
                    use tokio::io::AsyncWriteExt;
                    let mut reply = Vec::new();
                    framing::write_masked(
                        &mut reply,
                        FIN | opcode::CLOSE,
                        &frame.payload[..2],
                        [0; 4],
                    );
                    self.tcp.write_all(&reply).await
                })
                .await;
                return (code, reason, before);
            }
            before.push(frame);
        }
    }
}

/// Parses one unmasked or masked frame from the front of `buf`, whatever
/// its first byte holds; `None` while it is incomplete. Fails the test on a
/// header that cannot be read (a 64-bit length with its top bit set).
fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let header = Header::parse(buf).unwrap_or_else(|v| panic!("unreadable frame header: {v}"))?;
    let end = usize::try_from(header.frame_len()).ok()?;
    let mut payload = buf.get(header.header_len..end)?.to_vec();
    if let Some(mask) = header.mask {
        framing::apply_mask(&mut payload, mask);
    }
    Some((
        RawFrame {
            head: header.head(),
            payload,
        },
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_are_written_byte_for_byte() {
        // RFC 6455, 5.7: "Hello", unmasked and masked with the fixed key.
        assert_eq!(
            RawWs::frame(0x81, b"Hello", false),
            [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]
        );
        assert_eq!(
            RawWs::frame(0x81, b"Hello", true),
            [
                0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        // The first byte as given, even when it breaks the rules.
        assert_eq!(
            RawWs::frame(0xc3, b"", true),
            [0xc3, 0x80, 0x37, 0xfa, 0x21, 0x3d]
        );
        // 16- and 64-bit lengths.
        let frame = RawWs::frame(0x02, &[0; 65_535], true);
        assert_eq!(
            &frame[..8],
            [0x02, 0xfe, 0xff, 0xff, 0x37, 0xfa, 0x21, 0x3d]
        );
        assert_eq!(frame.len(), 8 + 65_535);
        let frame = RawWs::frame(0x82, &[0; 65_536], false);
        assert_eq!(&frame[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(frame.len(), 10 + 65_536);
    }

    #[test]
    fn frames_parse_back_whole_or_not_at_all() {
        for masked in [false, true] {
            let mut wire = RawWs::frame(0x41, b"abc", masked);
            wire.extend(RawWs::frame(0x88, &[0x03, 0xe8], masked));
            let (first, used) = parse_frame(&wire).unwrap();
            assert_eq!(
                first,
                RawFrame {
                    head: 0x41,
                    payload: b"abc".to_vec()
                }
            );
            let (close, rest) = parse_frame(&wire[used..]).unwrap();
            assert_eq!((close.opcode(), close.payload), (8, vec![0x03, 0xe8]));
            assert_eq!(used + rest, wire.len());
            for cut in 0..used {
                assert_eq!(parse_frame(&wire[..cut]), None, "cut at {cut}");
            }
        }
    }
}
