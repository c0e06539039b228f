//! Every bad input of PROTOCOL.md gets its documented `error` frame or close
//! code, and a client subscribed meanwhile loses nothing.
//!
//! Each case runs between two numbered messages on topic `w`: a witness
//! subscriber must receive both, in order, whatever the bad client did. Every
//! test ends by checking that a fresh client still round-trips and that no
//! broker task panicked.

use starling_protocol::{Codec, Envelope, ErrorCode, Payload, Value};
use starling_tests::tungstenite::Message;
use starling_tests::{Client, RawHttpAnswer, RawWs, TestBroker, json_str, worker_panics};

/// `max_message_bytes` of every broker in this file.
const LIMIT: usize = 1024;
/// `max_subscriptions` of every broker in this file.
const MAX_SUBS: usize = 3;
/// `max_patterns` of every broker in this file.
const MAX_PATTERNS: usize = 2;

/// A broker with small limits, with the panic counter installed first.
async fn broker() -> TestBroker {
    worker_panics();
    TestBroker::with_config(|c| {
        c.max_message_bytes = LIMIT;
        c.max_subscriptions = MAX_SUBS;
        c.max_patterns = MAX_PATTERNS;
    })
    .await
}

/// A subscriber of `w` and a publisher of numbered messages to it.
struct Witness {
    subscriber: Client,
    publisher: Client,
    published: u64,
    received: u64,
}

impl Witness {
    async fn new(broker: &TestBroker) -> Self {
        let mut subscriber = broker.json().await;
        subscriber.subscribe("w").await;
        Witness {
            subscriber,
            publisher: broker.json().await,
            published: 0,
            received: 0,
        }
    }

    /// Publishes the next numbered message (and waits for its ack).
    async fn publish(&mut self) {
        self.published += 1;
        let json = format!(r#"{{"n":{}}}"#, self.published);
        self.publisher.publish("w", &json).await;
    }

    /// The witness receives every message published so far, in order.
    async fn receives_everything(&mut self) {
        while self.received < self.published {
            self.received += 1;
            let (topic, payload) = self.subscriber.recv_message().await;
            assert_eq!(topic, "w");
            assert_eq!(
                payload.to_json_string(),
                format!(r#"{{"n":{}}}"#, self.received),
                "the witness lost or reordered a message"
            );
        }
    }
}

/// Runs `case` between two witness messages and checks both arrive in order.
macro_rules! witnessed {
    ($broker:expr, $case:expr) => {{
        let mut witness = Witness::new($broker).await;
        witness.publish().await;
        $case;
        witness.publish().await;
        witness.receives_everything().await;
    }};
}

/// A fresh client can still connect and round-trip, and no broker task panicked.
async fn broker_still_serves(broker: &TestBroker) {
    let mut sub = broker.json().await;
    let mut publisher = broker.msgpack().await;
    sub.subscribe("after.all").await;
    publisher.publish("after.all", r#"{"ok":true}"#).await;
    let (topic, payload) = sub.recv_message().await;
    assert_eq!(topic, "after.all");
    assert_eq!(payload.to_json_string(), r#"{"ok":true}"#);
    assert_eq!(
        worker_panics(),
        0,
        "a broker task panicked (see its message above)"
    );
}

/// Sends `text` as one text frame and expects the next frame to be an
/// `error` with `id` and `code`; returns its message.
async fn expect_error(client: &mut Client, text: &str, id: Option<u64>, code: ErrorCode) -> String {
    client.send_raw(Message::Text(text.into())).await;
    match client.recv().await {
        Envelope::Error {
            id: got_id,
            code: got_code,
            message,
        } => {
            assert_eq!(
                (got_id, got_code),
                (id, code),
                "answer to {text}: {message}"
            );
            assert!(!message.is_empty(), "error messages are for people");
            message
        }
        other => panic!("expected an error for {text}, got {other:?}"),
    }
}

/// The connection is still open and answers in order.
async fn still_usable(client: &mut Client) {
    let id = client.next_id();
    assert_eq!(
        client.request(&Envelope::Ping { id: Some(id) }).await,
        Envelope::Pong { id: Some(id) }
    );
}

// ---- the cases, each usable alone or in a row on one broker ----

async fn malformed_json(broker: &TestBroker) {
    let mut c = broker.json().await;
    let published = broker.broker().metrics().published_total();
    // None of these has an id that can be read.
    for text in [
        r#"{"type":"publish","topic":"w","payload":"#,
        r#"{"type":"ping", id: 4}"#,
        r#"{"type":"ping",}"#,
        "{'type':'ping'}",
        "{",
        "",
    ] {
        expect_error(&mut c, text, None, ErrorCode::BadFrame).await;
    }
    still_usable(&mut c).await;
    assert_eq!(broker.broker().metrics().published_total(), published);
}

async fn not_an_object(broker: &TestBroker) {
    let mut c = broker.json().await;
    for text in [
        r#"[{"type":"ping","id":1}]"#,
        r#""ping""#,
        "42",
        "null",
        "true",
    ] {
        expect_error(&mut c, text, None, ErrorCode::BadFrame).await;
    }
    still_usable(&mut c).await;
}

async fn field_of_wrong_type(broker: &TestBroker) {
    let mut c = broker.json().await;
    let published = broker.broker().metrics().published_total();
    for (text, id) in [
        (r#"{"type":"subscribe","id":7,"topic":42}"#, 7),
        (r#"{"type":"publish","id":8,"topic":["w"],"payload":1}"#, 8),
        (
            r#"{"type":"subscribe","id":9,"topic":"x","since":"yesterday"}"#,
            9,
        ),
        (r#"{"type":5,"id":10}"#, 10),
        (r#"{"type":"publish","id":11,"topic":"w"}"#, 11),
        // A lone surrogate is valid JSON text but no character: it could
        // not reach a MessagePack subscriber, so it is refused for all.
        (
            r#"{"type":"publish","id":12,"topic":"w","payload":{"t":"\ud800"}}"#,
            12,
        ),
    ] {
        expect_error(&mut c, text, Some(id), ErrorCode::BadFrame).await;
    }
    // An id that is not an unsigned integer cannot be echoed.
    expect_error(
        &mut c,
        r#"{"type":"ping","id":"x"}"#,
        None,
        ErrorCode::BadFrame,
    )
    .await;
    still_usable(&mut c).await;
    // The same in MessagePack.
    let mut m = broker.msgpack().await;
    let s = |v: &str| Value::Str(v.into());
    for (frame, id) in [
        (
            vec![
                (s("type"), s("subscribe")),
                (s("id"), Value::UInt(7)),
                (s("topic"), Value::UInt(42)),
            ],
            7,
        ),
        (
            vec![
                (s("type"), s("publish")),
                (s("id"), Value::UInt(8)),
                (s("topic"), Value::Array(vec![s("w")])),
                (s("payload"), Value::UInt(1)),
            ],
            8,
        ),
        (
            vec![(s("type"), Value::UInt(5)), (s("id"), Value::UInt(10))],
            10,
        ),
        (
            vec![
                (s("type"), s("publish")),
                (s("id"), Value::UInt(11)),
                (s("topic"), s("w")),
            ],
            11,
        ),
        // Strings sent as `bin` are not strings, even when they are UTF-8.
        (
            vec![
                (s("type"), s("publish")),
                (s("id"), Value::UInt(12)),
                (s("topic"), Value::Bin(b"w".to_vec())),
                (s("payload"), Value::UInt(1)),
            ],
            12,
        ),
        (
            vec![
                (s("type"), Value::Bin(b"ping".to_vec())),
                (s("id"), Value::UInt(13)),
            ],
            13,
        ),
    ] {
        m.send_raw(Message::Binary(msgpack(&Value::Map(frame)).into()))
            .await;
        match m.recv().await {
            Envelope::Error {
                id: got,
                code: ErrorCode::BadFrame,
                ..
            } => assert_eq!(got, Some(id)),
            other => panic!("expected bad_frame with id {id}, got {other:?}"),
        }
    }
    still_usable(&mut m).await;
    assert_eq!(
        broker.broker().metrics().published_total(),
        published,
        "a publish of the wrong shape was delivered"
    );
}

async fn unknown_type(broker: &TestBroker) {
    let mut c = broker.json().await;
    expect_error(
        &mut c,
        r#"{"type":"frobnicate","id":21}"#,
        Some(21),
        ErrorCode::UnknownType,
    )
    .await;
    // A frame only the broker sends is not a client frame either.
    expect_error(
        &mut c,
        r#"{"type":"ack","id":22}"#,
        Some(22),
        ErrorCode::UnknownType,
    )
    .await;
    expect_error(
        &mut c,
        r#"{"type":"frobnicate"}"#,
        None,
        ErrorCode::UnknownType,
    )
    .await;
    still_usable(&mut c).await;
}

async fn invalid_topics(broker: &TestBroker) {
    let mut c = broker.json().await;
    // The example of PROTOCOL.md, byte for byte.
    c.send_raw(r#"{"type":"subscribe","id":3,"topic":"chat..bad"}"#.into())
        .await;
    assert_eq!(
        c.recv_raw().await.unwrap().to_text().unwrap(),
        r#"{"type":"error","id":3,"code":"invalid_topic","message":"empty token in topic name"}"#
    );
    let message = expect_error(
        &mut c,
        r#"{"type":"publish","id":4,"topic":"chat..bad","payload":1}"#,
        Some(4),
        ErrorCode::InvalidTopic,
    )
    .await;
    assert_eq!(message, "empty token in topic name");
    let too_long = "a".repeat(256);
    for (n, topic) in ["", "a b", ".a", "a.", "é", "a.$b", too_long.as_str()]
        .into_iter()
        .enumerate()
    {
        let id = 100 + 2 * n as u64;
        let sub = format!(r#"{{"type":"subscribe","id":{id},"topic":"{topic}"}}"#);
        expect_error(&mut c, &sub, Some(id), ErrorCode::InvalidTopic).await;
        let id = id + 1;
        let publish = format!(r#"{{"type":"publish","id":{id},"topic":"{topic}","payload":1}}"#);
        expect_error(&mut c, &publish, Some(id), ErrorCode::InvalidTopic).await;
    }
    still_usable(&mut c).await;
}

async fn publish_to_pattern(broker: &TestBroker) {
    let mut c = broker.json().await;
    let published = broker.broker().metrics().published_total();
    for (id, topic) in [(31, "chat.*"), (32, "chat.>"), (33, "*")] {
        let text = format!(r#"{{"type":"publish","id":{id},"topic":"{topic}","payload":1}}"#);
        expect_error(&mut c, &text, Some(id), ErrorCode::InvalidTopic).await;
    }
    still_usable(&mut c).await;
    assert_eq!(broker.broker().metrics().published_total(), published);
}

async fn publish_to_reserved(broker: &TestBroker) {
    let mut c = broker.json().await;
    // Subscribing to a `$` topic is allowed; publishing to one is not.
    c.subscribe("$sys.x").await;
    let published = broker.broker().metrics().published_total();
    expect_error(
        &mut c,
        r#"{"type":"publish","id":41,"topic":"$sys.x","payload":1}"#,
        Some(41),
        ErrorCode::Unauthorized,
    )
    .await;
    expect_error(
        &mut c,
        r#"{"type":"publish","topic":"$sys.stats","payload":{}}"#,
        None,
        ErrorCode::Unauthorized,
    )
    .await;
    still_usable(&mut c).await;
    assert_eq!(
        broker.broker().metrics().published_total(),
        published,
        "a publish to a reserved topic went through"
    );
}

async fn unsubscribe_not_subscribed(broker: &TestBroker) {
    let mut c = broker.json().await;
    expect_error(
        &mut c,
        r#"{"type":"unsubscribe","id":51,"topic":"never.subscribed"}"#,
        Some(51),
        ErrorCode::NotSubscribed,
    )
    .await;
    expect_error(
        &mut c,
        r#"{"type":"unsubscribe","topic":"never.*"}"#,
        None,
        ErrorCode::NotSubscribed,
    )
    .await;
    // Unsubscribing twice: the second one is not subscribed any more.
    c.subscribe("once").await;
    let ack = c
        .request(&Envelope::Unsubscribe {
            id: Some(52),
            topic: "once".parse().unwrap(),
        })
        .await;
    assert_eq!(
        ack,
        Envelope::Ack {
            epoch: None,
            id: 52,
            offset: None
        }
    );
    expect_error(
        &mut c,
        r#"{"type":"unsubscribe","id":53,"topic":"once"}"#,
        Some(53),
        ErrorCode::NotSubscribed,
    )
    .await;
    still_usable(&mut c).await;
}

async fn too_many_patterns(broker: &TestBroker) {
    let mut c = broker.json().await;
    match &c.welcome {
        Envelope::Welcome { limits, .. } => {
            assert_eq!(limits.max_patterns, MAX_PATTERNS as u64)
        }
        other => panic!("{other:?}"),
    }
    c.subscribe("p.*").await;
    c.subscribe("p.>").await;
    let message = expect_error(
        &mut c,
        r#"{"type":"subscribe","id":71,"topic":"q.*"}"#,
        Some(71),
        ErrorCode::TooManySubscriptions,
    )
    .await;
    assert!(message.contains("pattern"), "{message}");
    // Exact topics are still allowed, up to max_subscriptions.
    c.subscribe("p.x").await;
    // A pattern given up makes room for another.
    let id = c.next_id();
    let answer = c
        .request(&Envelope::Unsubscribe {
            id: Some(id),
            topic: starling_protocol::Filter::new("p.*").unwrap(),
        })
        .await;
    assert!(matches!(answer, Envelope::Ack { .. }), "{answer:?}");
    c.subscribe("q.*").await;
    still_usable(&mut c).await;
}

async fn too_many_subscriptions(broker: &TestBroker) {
    let mut c = broker.json().await;
    let limit = match &c.welcome {
        Envelope::Welcome { limits, .. } => limits.max_subscriptions,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        limit, MAX_SUBS as u64,
        "welcome announces the limit in force"
    );
    for topic in ["s.1", "s.2", "s.*"] {
        c.subscribe(topic).await;
    }
    expect_error(
        &mut c,
        r#"{"type":"subscribe","id":61,"topic":"s.4"}"#,
        Some(61),
        ErrorCode::TooManySubscriptions,
    )
    .await;
    // Subscribing again to one it holds is harmless and acked.
    c.subscribe("s.2").await;
    c.subscribe("s.*").await;
    // The refused subscription does not deliver.
    let mut publisher = broker.json().await;
    publisher.publish("s.4", "4").await;
    publisher.publish("s.2", "2").await;
    let mut got: Vec<(String, Option<String>)> = Vec::new();
    for _ in 0..3 {
        match c.recv().await {
            Envelope::Message { topic, sub, .. } => {
                got.push((topic.to_string(), sub.map(|s| s.to_string())))
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    got.sort();
    // s.4 reaches it through `s.*` only; s.2 through `s.2` and through `s.*`.
    let s = |t: &str, sub: Option<&str>| (t.to_owned(), sub.map(str::to_owned));
    assert_eq!(
        got,
        [s("s.2", None), s("s.2", Some("s.*")), s("s.4", Some("s.*"))]
    );
    // After an unsubscribe there is room again.
    let ack = c
        .request(&Envelope::Unsubscribe {
            id: Some(62),
            topic: "s.1".parse().unwrap(),
        })
        .await;
    assert!(matches!(ack, Envelope::Ack { id: 62, .. }), "{ack:?}");
    c.subscribe("s.4").await;
    still_usable(&mut c).await;
}

/// A publish frame of exactly `size` bytes in `codec`, with `id`.
fn publish_of_size(codec: Codec, id: u64, size: usize) -> Message {
    let frame = |filler: usize| {
        codec
            .encode(&Envelope::Publish {
                id: Some(id),
                topic: "big".parse().unwrap(),
                payload: Payload::from_value(Value::Str("x".repeat(filler))),
            })
            .unwrap()
    };
    let overhead = frame(0).len();
    let mut filler = size.saturating_sub(overhead);
    // MessagePack string headers grow with the length.
    while frame(filler).len() > size {
        filler -= 1;
    }
    let encoded = frame(filler);
    assert_eq!(encoded.len(), size);
    match encoded {
        starling_protocol::Frame::Text(t) => Message::Text(t.into()),
        starling_protocol::Frame::Binary(b) => Message::Binary(b.into()),
    }
}

async fn oversized_message(broker: &TestBroker) {
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut c = Client::connect(&broker.ws_url(), Some(codec)).await;
        c.subscribe("big").await;
        // At the limit: fine.
        c.send_raw(publish_of_size(codec, 70, LIMIT)).await;
        let mut answers = [c.recv().await, c.recv().await];
        answers.sort_by_key(|e| e.type_name());
        assert!(
            matches!(answers[0], Envelope::Ack { id: 70, .. }),
            "{codec:?}: {answers:?}"
        );
        assert!(
            matches!(answers[1], Envelope::Message { .. }),
            "{codec:?}: {answers:?}"
        );
        // Over the limit, under twice it: an error with the frame's id, nothing published.
        let published = broker.broker().metrics().published_total();
        for (id, size) in [(71, LIMIT + 1), (72, 2 * LIMIT)] {
            c.send_raw(publish_of_size(codec, id, size)).await;
            match c.recv().await {
                Envelope::Error {
                    id: got,
                    code: ErrorCode::MessageTooLarge,
                    ..
                } => assert_eq!(got, Some(id), "{codec:?}, {size} bytes"),
                other => {
                    panic!("{codec:?}, {size} bytes: expected message_too_large, got {other:?}")
                }
            }
        }
        assert_eq!(broker.broker().metrics().published_total(), published);
        // The connection stays usable.
        c.publish("big", "1").await;
        assert_eq!(c.recv_message().await.1.to_json_string(), "1");
        still_usable(&mut c).await;
    }
}

async fn fragmented_message_over_hard_cap(broker: &TestBroker) {
    // Fragments of 1000 bytes adding up to more than the cap (twice LIMIT):
    // the cap is on the message, not the frame.
    let chunk = [b'x'; 1000];
    let mut frames: Vec<RawFrameSpec<'_>> = vec![(
        0x01,
        br#"{"type":"publish","topic":"big","payload":""#,
        true,
    )];
    frames.extend((0..(2 * LIMIT / chunk.len() + 1)).map(|_| (0x00, &chunk[..], true)));
    // No final fragment: the broker closes as soon as the message passes the cap.
    closed_with(broker, &frames, 1009).await;
}

async fn message_over_hard_cap(broker: &TestBroker, size: usize) {
    let mut c = broker.json().await;
    c.send_raw(publish_of_size(Codec::Json, 80, size)).await;
    match c.recv_raw().await {
        Some(Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1009, "{size} bytes: {frame:?}")
        }
        other => panic!("{size} bytes: expected a close frame with 1009, got {other:?}"),
    }
}

async fn binary_on_json(broker: &TestBroker) {
    let mut c = broker.json().await;
    // Even a well-formed MessagePack ping.
    let ping = Codec::MsgPack
        .encode(&Envelope::Ping { id: Some(1) })
        .unwrap();
    c.send_raw(Message::Binary(ping.as_bytes().to_vec().into()))
        .await;
    let (code, reason, before) = c.recv_close().await;
    assert_eq!(code, 1003, "{reason}");
    assert!(before.is_empty(), "{before:?}");
}

async fn text_on_msgpack(broker: &TestBroker) {
    let mut c = broker.msgpack().await;
    c.send_raw(Message::Text(r#"{"type":"ping","id":1}"#.into()))
        .await;
    let (code, reason, before) = c.recv_close().await;
    assert_eq!(code, 1003, "{reason}");
    assert!(before.is_empty(), "{before:?}");
}

/// One frame written by hand: first byte (FIN, RSV1-3, opcode), payload, masked.
type RawFrameSpec<'a> = (u8, &'a [u8], bool);

/// Sends `frames` on a fresh hand-made connection and expects the broker to
/// close it with `code`, sending nothing else first.
async fn closed_with(broker: &TestBroker, frames: &[RawFrameSpec<'_>], code: u16) {
    let mut raw = RawWs::connect(broker.addr()).await;
    for &(head, payload, masked) in frames {
        raw.send_frame(head, payload, masked).await;
    }
    let (got, reason, before) = raw.recv_close().await;
    let heads: Vec<String> = frames.iter().map(|f| format!("{:#04x}", f.0)).collect();
    assert_eq!(got, code, "frames {heads:?}: {reason}");
    assert!(before.is_empty(), "frames {heads:?}: {before:?}");
}

const PING: &[u8] = br#"{"type":"ping","id":1}"#;

async fn invalid_utf8(broker: &TestBroker) {
    // FIN + text, masked, payload 0xC3 0x28 (a truncated two-byte sequence).
    closed_with(broker, &[(0x81, &[0xc3, 0x28], true)], 1007).await;
    // The same sequence split across two fragments of one message.
    let frames: [RawFrameSpec<'_>; 2] = [
        (0x01, b"{\"type\":\"ping\",\"x\":\"\xc3", true),
        (0x80, b"\x28\"}", true),
    ];
    closed_with(broker, &frames, 1007).await;
    // A fragment that breaks it fails the message at once, before its end.
    let frames: [RawFrameSpec<'_>; 2] = [
        (0x01, "{\"type\":\"ping\",\"x\":\"κόσμε".as_bytes(), true),
        (0x00, b"\xf4\x90", true),
    ];
    closed_with(broker, &frames, 1007).await;
}

/// Sends a close frame that breaks the rules: the broker fails the
/// connection with `code` and ends the stream at once, without waiting
/// for a close frame from a peer that has sent its own.
async fn failed_by_close_frame(broker: &TestBroker, payload: &[u8], code: u16) {
    let mut raw = RawWs::connect(broker.addr()).await;
    raw.send_frame(0x88, payload, true).await;
    let close = raw.read_frame().await.expect("a close frame");
    assert_eq!(close.opcode(), 8, "{close:?}");
    assert_eq!(close.payload[..2], code.to_be_bytes(), "{close:?}");
    // Well within the second the broker waits for a close frame after its own.
    let end = tokio::time::timeout(std::time::Duration::from_millis(600), raw.read_frame()).await;
    assert_eq!(end, Ok(None), "the stream ends at once");
}

async fn bad_close_frames(broker: &TestBroker) {
    failed_by_close_frame(broker, &[0x03], 1002).await;
    failed_by_close_frame(broker, &999u16.to_be_bytes(), 1002).await;
    failed_by_close_frame(broker, &5000u16.to_be_bytes(), 1002).await;
    failed_by_close_frame(broker, &[0x03, 0xe8, 0xff], 1007).await;
    failed_by_close_frame(broker, &[0x03, 0xe8].repeat(63), 1002).await;
}

async fn unmasked_frame(broker: &TestBroker) {
    closed_with(broker, &[(0x81, PING, false)], 1002).await;
}

async fn reserved_bits(broker: &TestBroker) {
    // RSV1 (no extension was negotiated), then RSV3.
    closed_with(broker, &[(0xc1, PING, true)], 1002).await;
    closed_with(broker, &[(0x91, PING, true)], 1002).await;
}

async fn reserved_opcode(broker: &TestBroker) {
    closed_with(broker, &[(0x83, PING, true)], 1002).await;
    closed_with(broker, &[(0x8b, b"", true)], 1002).await;
}

async fn bad_frame_sequences(broker: &TestBroker) {
    // A ping over 125 bytes.
    closed_with(broker, &[(0x89, &[0; 126], true)], 1002).await;
    // A fragmented ping.
    closed_with(broker, &[(0x09, b"x", true)], 1002).await;
    // A continuation with nothing to continue.
    closed_with(broker, &[(0x80, PING, true)], 1002).await;
    // A new text message while the previous one is unfinished.
    closed_with(broker, &[(0x01, b"{", true), (0x81, PING, true)], 1002).await;
}

/// MessagePack bytes of a small `value` (short strings and `bin`, small
/// maps and arrays, unsigned integers), for frames the codec itself would not encode.
fn msgpack(value: &Value) -> Vec<u8> {
    fn encode(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Null => out.push(0xc0),
            Value::UInt(n) if *n < 128 => out.push(*n as u8),
            Value::UInt(n) => {
                out.push(0xcf);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Value::Str(s) if s.len() < 32 => {
                out.push(0xa0 | s.len() as u8);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bin(bytes) if bytes.len() < 256 => {
                out.extend_from_slice(&[0xc4, bytes.len() as u8]);
                out.extend_from_slice(bytes);
            }
            Value::Array(items) if items.len() < 16 => {
                out.push(0x90 | items.len() as u8);
                items.iter().for_each(|item| encode(item, out));
            }
            Value::Map(entries) if entries.len() < 16 => {
                out.push(0x80 | entries.len() as u8);
                for (key, value) in entries {
                    encode(key, out);
                    encode(value, out);
                }
            }
            other => unimplemented!("test encoder: {other:?}"),
        }
    }
    let mut out = Vec::new();
    encode(value, &mut out);
    out
}

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn msgpack_garbage(broker: &TestBroker) {
    let mut c = broker.msgpack().await;
    let publish = Codec::MsgPack
        .encode(&Envelope::Publish {
            id: Some(90),
            topic: "w".parse().unwrap(),
            payload: Payload::from_json(r#"{"a":[1,2,3]}"#).unwrap(),
        })
        .unwrap();
    let truncated = publish.as_bytes()[..publish.len() / 2].to_vec();
    let mut frames = vec![
        truncated,
        vec![0x92, 0x01, 0x02], // an array, not a map
        vec![0xc1],             // the one byte MessagePack never uses
        vec![0x80],             // an empty map: no type
        vec![],
    ];
    for seed in 1..=8u64 {
        frames.push(noise(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 64));
        let mut map = noise(seed, 63);
        map.insert(0, 0x83); // a map of three entries, then noise
        frames.push(map);
    }
    let published = broker.broker().metrics().published_total();
    for bytes in frames {
        c.send_raw(Message::Binary(bytes.clone().into())).await;
        match c.recv().await {
            Envelope::Error {
                code: ErrorCode::BadFrame,
                message,
                ..
            } => assert!(!message.is_empty()),
            other => panic!("{bytes:02x?}: expected bad_frame, got {other:?}"),
        }
    }
    assert_eq!(broker.broker().metrics().published_total(), published);
    still_usable(&mut c).await;
}

/// Asserts an HTTP refusal with `status` and a JSON body with `code`;
/// returns the body's message.
fn assert_refused(answer: &RawHttpAnswer, status: u16, code: &str) -> String {
    assert_eq!(answer.status, status, "{answer:?}");
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{answer:?}"
    );
    assert_eq!(answer.header("upgrade"), None, "{answer:?}");
    assert_eq!(json_str(&answer.body, "code"), code, "{answer:?}");
    json_str(&answer.body, "message")
}

async fn foreign_subprotocol(broker: &TestBroker) {
    for offer in ["mqtt", "mqtt, wamp.2.json"] {
        let (answer, _raw) = RawWs::handshake(broker.addr(), Some(offer)).await;
        let message = assert_refused(&answer, 400, "unsupported_subprotocol");
        assert_eq!(answer.header("sec-websocket-protocol"), None);
        assert!(
            message.contains("mqtt"),
            "names what was offered: {message}"
        );
        assert!(
            message.contains("starling.v1.json"),
            "names what to offer: {message}"
        );
    }
}

async fn bad_upgrades(broker: &TestBroker) {
    let headers = |skip: &str, extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = RawWs::UPGRADE_HEADERS
            .into_iter()
            .filter(|(name, _)| *name != skip)
            .collect();
        h.extend_from_slice(extra);
        h
    };
    // Another WebSocket version: 426, naming the one supported.
    let (answer, _) = RawWs::request(
        broker.addr(),
        "GET",
        "/ws",
        &headers("Sec-WebSocket-Version", &[("Sec-WebSocket-Version", "8")]),
    )
    .await;
    assert_refused(&answer, 426, "not_websocket");
    assert_eq!(answer.header("sec-websocket-version"), Some("13"));
    // No key.
    let (answer, _) = RawWs::request(
        broker.addr(),
        "GET",
        "/ws",
        &headers("Sec-WebSocket-Key", &[]),
    )
    .await;
    assert_refused(&answer, 400, "not_websocket");
    // An upgrade by POST.
    let (answer, _) = RawWs::request(
        broker.addr(),
        "POST",
        "/ws",
        &headers("", &[("Content-Length", "0")]),
    )
    .await;
    assert_refused(&answer, 400, "not_websocket");
}

/// How deeply a payload may nest (docs/protocol.md, "Payload limits").
const MAX_DEPTH: usize = 64;

/// `levels` nested arrays, as JSON: `[[...]]`.
fn nested_json(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

/// A `publish` frame with `id` on topic `deep` whose payload is `levels`
/// nested arrays, in `codec`.
fn deep_publish(codec: Codec, id: u8, levels: usize) -> Message {
    match codec {
        Codec::Json => Message::Text(
            format!(
                r#"{{"type":"publish","id":{id},"topic":"deep","payload":{}}}"#,
                nested_json(levels)
            )
            .into(),
        ),
        Codec::MsgPack => {
            let s = |v: &str| Value::Str(v.into());
            let mut bytes = msgpack(&Value::Map(vec![
                (s("type"), s("publish")),
                (s("id"), Value::UInt(id.into())),
                (s("topic"), s("deep")),
                (s("payload"), Value::Null),
            ]));
            // Replace the trailing nil with the nested arrays (and make the
            // map's four entries end there).
            bytes.pop();
            bytes.extend(std::iter::repeat_n(0x91, levels - 1));
            bytes.push(0x90);
            Message::Binary(bytes.into())
        }
    }
}

/// A publisher in `codec`, JSON and MessagePack subscribers of `deep`.
async fn deep_clients(broker: &TestBroker, codec: Codec) -> (Client, Client, Client) {
    let mut json = broker.json().await;
    json.subscribe("deep").await;
    let mut msgpack = broker.msgpack().await;
    msgpack.subscribe("deep").await;
    let publisher = Client::connect(&broker.ws_url(), Some(codec)).await;
    (publisher, json, msgpack)
}

/// A payload nested at most 64 deep reaches subscribers of both codecs; a
/// deeper one is refused with bad_frame and reaches nobody: nobody loses a
/// message that was acked.
async fn deep_payloads(broker: &TestBroker, codec: Codec) {
    let (mut publisher, mut json, mut msgpack) = deep_clients(broker, codec).await;
    publisher.send_raw(deep_publish(codec, 1, MAX_DEPTH)).await;
    assert!(
        matches!(publisher.recv().await, Envelope::Ack { id: 1, .. }),
        "{codec:?}: a payload {MAX_DEPTH} deep is accepted"
    );
    let expected = nested_json(MAX_DEPTH);
    assert_eq!(json.recv_message().await.1.to_json_string(), expected);
    assert_eq!(msgpack.recv_message().await.1.to_json_string(), expected);

    let levels = match codec {
        Codec::Json => [MAX_DEPTH + 1, 450],
        Codec::MsgPack => [MAX_DEPTH + 1, 900],
    };
    for levels in levels {
        publisher.send_raw(deep_publish(codec, 2, levels)).await;
        match publisher.recv().await {
            Envelope::Error {
                code: ErrorCode::BadFrame,
                id,
                ..
            } => {
                if codec == Codec::Json {
                    assert_eq!(id, Some(2), "{levels} deep");
                }
            }
            other => panic!("{codec:?}, {levels} deep: expected bad_frame, got {other:?}"),
        }
    }
    // What comes next is the marker: the refused payloads reached nobody.
    publisher.publish("deep", r#""marker""#).await;
    assert_eq!(json.recv_message().await.1.to_json_string(), r#""marker""#);
    assert_eq!(
        msgpack.recv_message().await.1.to_json_string(),
        r#""marker""#
    );
}

/// docs/protocol.md: "A `bad_frame` error carries the frame's `id` whenever
/// the `id` itself could be read." The id comes before the payload here.
async fn deep_msgpack_error_carries_id(broker: &TestBroker) {
    let mut publisher = broker.msgpack().await;
    for levels in [MAX_DEPTH + 1, 900] {
        publisher
            .send_raw(deep_publish(Codec::MsgPack, 3, levels))
            .await;
        match publisher.recv().await {
            Envelope::Error {
                code: ErrorCode::BadFrame,
                id,
                message,
            } => assert_eq!(id, Some(3), "{levels} deep: {message}"),
            other => panic!("{levels} deep: expected bad_frame, got {other:?}"),
        }
    }
}

// ---- the tests: each case on a broker of its own, between two witness
// messages, then a fresh client round trip ----

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_gets_bad_frame_without_id() {
    let broker = broker().await;
    witnessed!(&broker, malformed_json(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frame_that_is_not_an_object_gets_bad_frame() {
    let broker = broker().await;
    witnessed!(&broker, not_an_object(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn field_of_the_wrong_type_gets_bad_frame_with_the_frames_id() {
    let broker = broker().await;
    witnessed!(&broker, field_of_wrong_type(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_type_gets_unknown_type_with_the_frames_id() {
    let broker = broker().await;
    witnessed!(&broker, unknown_type(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_topic_on_subscribe_and_publish_gets_invalid_topic() {
    let broker = broker().await;
    witnessed!(&broker, invalid_topics(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_to_a_pattern_gets_invalid_topic() {
    let broker = broker().await;
    witnessed!(&broker, publish_to_pattern(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_to_a_reserved_topic_gets_unauthorized() {
    let broker = broker().await;
    witnessed!(&broker, publish_to_reserved(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsubscribing_from_something_not_subscribed_gets_not_subscribed() {
    let broker = broker().await;
    witnessed!(&broker, unsubscribe_not_subscribed(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_over_the_limit_gets_too_many_subscriptions_and_resubscribing_is_acked() {
    let broker = broker().await;
    witnessed!(&broker, too_many_subscriptions(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn patterns_over_their_limit_get_too_many_subscriptions() {
    let broker = broker().await;
    witnessed!(&broker, too_many_patterns(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn message_over_the_limit_gets_message_too_large_and_the_connection_stays_usable() {
    let broker = broker().await;
    witnessed!(&broker, oversized_message(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn message_far_over_the_limit_is_closed_with_1009() {
    let broker = broker().await;
    // Over twice the limit, and over the broker's 64 KiB floor of the hard cap.
    witnessed!(&broker, message_over_hard_cap(&broker, 70_000).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fragmented_message_far_over_the_limit_is_closed_with_1009() {
    let broker = broker().await;
    witnessed!(&broker, fragmented_message_over_hard_cap(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn message_over_twice_the_limit_is_closed_with_1009() {
    let broker = broker().await;
    witnessed!(&broker, message_over_hard_cap(&broker, 4 * LIMIT).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_frame_on_json_connection_is_closed_with_1003() {
    let broker = broker().await;
    witnessed!(&broker, binary_on_json(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn text_frame_on_msgpack_connection_is_closed_with_1003() {
    let broker = broker().await;
    witnessed!(&broker, text_on_msgpack(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn text_frame_with_invalid_utf8_is_closed_with_1007() {
    let broker = broker().await;
    witnessed!(&broker, invalid_utf8(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn close_frame_that_breaks_the_rules_is_answered_and_the_stream_ends_at_once() {
    let broker = broker().await;
    witnessed!(&broker, bad_close_frames(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unmasked_client_frame_is_closed_with_1002() {
    let broker = broker().await;
    witnessed!(&broker, unmasked_frame(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frame_with_reserved_bits_set_is_closed_with_1002() {
    let broker = broker().await;
    witnessed!(&broker, reserved_bits(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn frame_with_a_reserved_opcode_is_closed_with_1002() {
    let broker = broker().await;
    witnessed!(&broker, reserved_opcode(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_control_frames_and_fragment_sequences_are_closed_with_1002() {
    let broker = broker().await;
    witnessed!(&broker, bad_frame_sequences(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_msgpack_gets_bad_frame() {
    let broker = broker().await;
    witnessed!(&broker, msgpack_garbage(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_offering_only_a_foreign_subprotocol_is_refused_with_400_and_a_json_body() {
    let broker = broker().await;
    witnessed!(&broker, foreign_subprotocol(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_with_another_websocket_version_or_without_a_key_is_refused_with_a_json_body() {
    let broker = broker().await;
    witnessed!(&broker, bad_upgrades(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_payload_nested_deeper_than_64_is_refused_and_64_reaches_both_codecs() {
    let broker = broker().await;
    witnessed!(&broker, deep_payloads(&broker, Codec::Json).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn msgpack_payload_nested_deeper_than_64_is_refused_and_64_reaches_both_codecs() {
    let broker = broker().await;
    witnessed!(&broker, deep_payloads(&broker, Codec::MsgPack).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frame_for_a_too_deep_msgpack_payload_carries_the_frames_id() {
    let broker = broker().await;
    witnessed!(&broker, deep_msgpack_error_carries_id(&broker).await);
    broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_survives_every_bad_input_in_a_row() {
    let broker = broker().await;
    let mut witness = Witness::new(&broker).await;
    witness.publish().await;
    malformed_json(&broker).await;
    not_an_object(&broker).await;
    field_of_wrong_type(&broker).await;
    unknown_type(&broker).await;
    witness.publish().await;
    invalid_topics(&broker).await;
    publish_to_pattern(&broker).await;
    publish_to_reserved(&broker).await;
    unsubscribe_not_subscribed(&broker).await;
    too_many_subscriptions(&broker).await;
    too_many_patterns(&broker).await;
    witness.publish().await;
    oversized_message(&broker).await;
    message_over_hard_cap(&broker, 70_000).await;
    fragmented_message_over_hard_cap(&broker).await;
    binary_on_json(&broker).await;
    text_on_msgpack(&broker).await;
    witness.publish().await;
    invalid_utf8(&broker).await;
    bad_close_frames(&broker).await;
    unmasked_frame(&broker).await;
    reserved_bits(&broker).await;
    reserved_opcode(&broker).await;
    bad_frame_sequences(&broker).await;
    msgpack_garbage(&broker).await;
    deep_payloads(&broker, Codec::Json).await;
    deep_payloads(&broker, Codec::MsgPack).await;
    foreign_subprotocol(&broker).await;
    bad_upgrades(&broker).await;
    witness.publish().await;
    witness.receives_everything().await;
    broker_still_serves(&broker).await;
    // Every closed, refused or dropped client is gone: only the witness pair remains.
    let deadline = tokio::time::Instant::now() + starling_tests::WAIT;
    loop {
        let (_, health) = starling_tests::http_get(&format!("{}/healthz", broker.http_url())).await;
        match starling_tests::json_field(&health, "connections") {
            Some(Value::UInt(2)) => break,
            other if tokio::time::Instant::now() >= deadline => {
                panic!("expected 2 open connections, got {other:?}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    broker.stop().await;
}
