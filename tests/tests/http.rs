//! The HTTP side of the broker's port: health, metrics, publishing from a
//! backend, the demo page, and JSON errors for everything else.

use std::time::Duration;

use starling_protocol::{Envelope, Payload, Value};
use starling_tests::{
    Client, HttpAnswer, RawWs, TestBroker, http_request, json_field, json_str, metric,
    wait_for_metric,
};

/// `max_message_bytes` of the brokers that test the body limit.
const LIMIT: usize = 1024;

async fn get(broker: &TestBroker, path: &str) -> HttpAnswer {
    http_request("GET", &format!("{}{path}", broker.http_url()), None).await
}

async fn post(broker: &TestBroker, path: &str, body: impl Into<Vec<u8>>) -> HttpAnswer {
    http_request(
        "POST",
        &format!("{}{path}", broker.http_url()),
        Some(body.into()),
    )
    .await
}

/// Asserts a JSON error answer with `status` and `code`; returns its message.
fn assert_json_error(answer: &HttpAnswer, status: u16, code: &str) -> String {
    assert_eq!(answer.status, status, "{answer:?}");
    assert!(
        answer.content_type.starts_with("application/json"),
        "{answer:?}"
    );
    assert_eq!(json_str(&answer.body, "code"), code, "{answer:?}");
    let message = json_str(&answer.body, "message");
    assert!(!message.is_empty(), "{answer:?}");
    message
}

#[tokio::test]
async fn healthz_answers_200_with_status_ok_and_the_node_id() {
    let broker = TestBroker::start().await;
    let a = broker.json().await;
    let b = broker.msgpack().await;
    let answer = get(&broker, "/healthz").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer.content_type.starts_with("application/json"),
        "{answer:?}"
    );
    assert_eq!(json_str(&answer.body, "status"), "ok");
    assert_eq!(json_str(&answer.body, "node"), "test-node");
    assert_eq!(
        json_field(&answer.body, "connections"),
        Some(Value::UInt(2))
    );
    a.close().await;
    b.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_counters_move_as_traffic_flows() {
    let broker = TestBroker::start().await;
    let url = broker.http_url();
    let text = {
        let answer = get(&broker, "/metrics").await;
        assert_eq!(answer.status, 200);
        assert!(
            answer
                .content_type
                .starts_with("application/openmetrics-text"),
            "{answer:?}"
        );
        assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
        assert!(
            answer.body.contains("# TYPE starling_connections gauge"),
            "{}",
            answer.body
        );
        answer.body
    };
    for name in [
        "starling_connections",
        "starling_subscriptions",
        "starling_topics",
        r#"starling_messages_published_total{source="ws"}"#,
        r#"starling_messages_published_total{source="http"}"#,
        "starling_messages_delivered_total",
        r#"starling_errors_total{code="invalid_topic"}"#,
    ] {
        assert_eq!(metric(&text, name), 0.0, "{name} on a fresh broker");
    }
    let bytes_in = metric(&text, "starling_received_bytes_total");
    let bytes_out = metric(&text, "starling_sent_bytes_total");

    // Three connections, three subscriptions on two topics (one a pattern).
    let mut json = broker.json().await;
    let mut msgpack = broker.msgpack().await;
    let mut publisher = broker.json().await;
    json.subscribe("m.a").await;
    json.subscribe("m.*").await;
    msgpack.subscribe("m.a").await;
    let text = wait_for_metric(&url, "starling_connections", 3.0).await;
    assert_eq!(metric(&text, "starling_connections_accepted_total"), 3.0);
    assert_eq!(metric(&text, "starling_subscriptions"), 3.0);
    assert_eq!(metric(&text, "starling_topics"), 2.0);

    // 5 WebSocket publishes on m.a reach three subscriptions each; 2 HTTP
    // publishes on m.b reach the pattern only: 17 deliveries.
    for n in 0..5 {
        publisher.publish("m.a", &n.to_string()).await;
    }
    for n in 0..2 {
        let body = format!(r#"{{"topic":"m.b","payload":{n}}}"#);
        assert_eq!(post(&broker, "/api/publish", body).await.status, 202);
    }
    for _ in 0..12 {
        json.recv_message().await;
    }
    for _ in 0..5 {
        msgpack.recv_message().await;
    }
    // Errors are counted by code, from WebSocket and HTTP alike.
    for (id, topic) in [(100, "m..x"), (101, "m.*")] {
        publisher
            .send_raw(
                format!(r#"{{"type":"publish","id":{id},"topic":"{topic}","payload":1}}"#).into(),
            )
            .await;
        assert!(
            matches!(publisher.recv().await, Envelope::Error { .. }),
            "{topic}"
        );
    }
    post(&broker, "/api/publish", r#"{"topic":"a b","payload":1}"#).await;
    post(&broker, "/api/publish", r#"{"topic":"$sys.x","payload":1}"#).await;

    let text = wait_for_metric(&url, "starling_messages_delivered_total", 17.0).await;
    assert_eq!(
        metric(&text, r#"starling_messages_published_total{source="ws"}"#),
        5.0
    );
    assert_eq!(
        metric(&text, r#"starling_messages_published_total{source="http"}"#),
        2.0
    );
    assert_eq!(
        metric(&text, r#"starling_errors_total{code="invalid_topic"}"#),
        3.0
    );
    assert_eq!(
        metric(&text, r#"starling_errors_total{code="unauthorized"}"#),
        1.0
    );
    assert!(metric(&text, "starling_received_bytes_total") > bytes_in);
    assert!(metric(&text, "starling_sent_bytes_total") > bytes_out);

    // Unsubscribing and disconnecting move the gauges back.
    let ack = json
        .request(&Envelope::Unsubscribe {
            id: Some(7),
            topic: "m.*".parse().unwrap(),
        })
        .await;
    assert!(matches!(ack, Envelope::Ack { id: 7, .. }), "{ack:?}");
    msgpack.close().await;
    let text = wait_for_metric(&url, "starling_connections", 2.0).await;
    assert_eq!(metric(&text, "starling_subscriptions"), 1.0);
    assert_eq!(metric(&text, "starling_topics"), 1.0);

    // A connection closed by the broker is counted by close code.
    publisher.send_raw(vec![0x80].into()).await;
    assert_eq!(publisher.recv_close().await.0, 1003);
    publisher.close().await;
    let text = wait_for_metric(&url, "starling_connections", 1.0).await;
    assert_eq!(metric(&text, r#"starling_closes_total{code="1003"}"#), 1.0);
    json.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn post_api_publish_answers_202_and_reaches_json_and_msgpack_subscribers() {
    let broker = TestBroker::start().await;
    let mut json = broker.json().await;
    let mut msgpack = broker.msgpack().await;
    json.subscribe("chat.lobby").await;
    msgpack.subscribe("chat.*").await;
    let payload = r#"{"user":"ada","text":"hi ✓","n":[1,-2,2.5,null,true],"o":{}}"#;
    let answer = post(
        &broker,
        "/api/publish",
        format!(r#"{{"topic":"chat.lobby","payload":{payload}}}"#),
    )
    .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert!(
        answer.content_type.starts_with("application/json"),
        "{answer:?}"
    );
    let expected = Payload::from_json(payload).unwrap().to_value();
    match json.recv().await {
        Envelope::Message {
            topic,
            payload,
            offset,
            epoch: _,
            sub,
            from: _,
        } => {
            assert_eq!(topic.as_str(), "chat.lobby");
            assert_eq!(payload.to_value(), expected);
            assert_eq!((offset, sub), (None, None));
        }
        other => panic!("expected a message, got {other:?}"),
    }
    match msgpack.recv().await {
        Envelope::Message {
            topic,
            payload,
            offset,
            epoch: _,
            sub,
            from: _,
        } => {
            assert_eq!(topic.as_str(), "chat.lobby");
            assert_eq!(payload.to_value(), expected);
            assert_eq!(offset, None);
            assert_eq!(sub.as_ref().map(|s| s.as_str()), Some("chat.*"));
        }
        other => panic!("expected a message, got {other:?}"),
    }
    json.close().await;
    msgpack.close().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_publish_bodies_get_4xx_with_a_json_error_body() {
    let broker = TestBroker::with_config(|c| c.max_message_bytes = LIMIT).await;
    let mut sub: Client = broker.json().await;
    sub.subscribe("chat.>").await;
    sub.subscribe("$sys.x").await;
    let published = broker.broker().metrics().published_total();
    for (body, status, code) in [
        ("not json", 400, "bad_frame"),
        (r#"{"topic":"chat.x","payload":"#, 400, "bad_frame"),
        (r#"[{"topic":"chat.x","payload":1}]"#, 400, "bad_frame"),
        ("", 400, "bad_frame"),
        (r#"{"topic":"chat.x"}"#, 400, "bad_frame"),
        (r#"{"topic":"chat.x","payload":"\udc00"}"#, 400, "bad_frame"),
        (r#"{"payload":1}"#, 400, "bad_frame"),
        (r#"{"topic":7,"payload":1}"#, 400, "bad_frame"),
        (r#"{"topic":"chat..bad","payload":1}"#, 400, "invalid_topic"),
        (r#"{"topic":"chat.*","payload":1}"#, 400, "invalid_topic"),
        (r#"{"topic":"chat.>","payload":1}"#, 400, "invalid_topic"),
        (r#"{"topic":"$sys.x","payload":1}"#, 403, "unauthorized"),
    ] {
        let answer = post(&broker, "/api/publish", body).await;
        let message = assert_json_error(&answer, status, code);
        if body.contains("chat..bad") {
            assert_eq!(message, "empty token in topic name");
        }
    }
    // The body limit is max_message_bytes: at it, accepted; over it, 413.
    let body_of = |size: usize| {
        let empty = r#"{"topic":"chat.big","payload":""}"#;
        let filler = "x".repeat(size - empty.len());
        format!(r#"{{"topic":"chat.big","payload":"{filler}"}}"#)
    };
    let answer = post(&broker, "/api/publish", body_of(LIMIT + 1)).await;
    assert_json_error(&answer, 413, "message_too_large");
    let answer = post(&broker, "/api/publish", vec![b' '; 10 * LIMIT]).await;
    assert_json_error(&answer, 413, "message_too_large");
    assert_eq!(
        broker.broker().metrics().published_total(),
        published,
        "a refused publish went through"
    );
    let answer = post(&broker, "/api/publish", body_of(LIMIT)).await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let (topic, payload) = sub.recv_message().await;
    assert_eq!(topic, "chat.big", "the first delivery is the good one");
    assert!(payload.to_json_string().len() > LIMIT / 2);
    sub.close().await;
    broker.stop().await;
}

#[tokio::test]
async fn unknown_path_gets_404_with_a_json_body() {
    let broker = TestBroker::start().await;
    for path in ["/nope", "/api/nope", "/ws/extra", "/index.htm"] {
        let answer = get(&broker, path).await;
        assert_json_error(&answer, 404, "not_found");
    }
    broker.stop().await;
}

#[tokio::test]
async fn wrong_method_gets_405_with_a_json_body() {
    let broker = TestBroker::start().await;
    for (method, path) in [
        ("GET", "/api/publish"),
        ("POST", "/healthz"),
        ("DELETE", "/metrics"),
    ] {
        let answer = http_request(method, &format!("{}{path}", broker.http_url()), None).await;
        assert_json_error(&answer, 405, "method_not_allowed");
    }
    broker.stop().await;
}

#[tokio::test]
async fn root_serves_the_html_demo_page() {
    let broker = TestBroker::start().await;
    let answer = get(&broker, "/").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.content_type.starts_with("text/html"), "{answer:?}");
    let body = answer.body.to_ascii_lowercase();
    assert!(body.starts_with("<!doctype html>"), "{:.100}", answer.body);
    assert!(body.contains("</html>"), "the whole page is served");
    broker.stop().await;
}

#[tokio::test]
async fn plain_get_of_ws_without_upgrade_headers_gets_400_with_a_json_body() {
    let broker = TestBroker::start().await;
    let answer = get(&broker, "/ws").await;
    let message = assert_json_error(&answer, 400, "not_websocket");
    assert!(message.contains("WebSocket"), "{message}");
    // No connection was made.
    let health = get(&broker, "/healthz").await;
    assert_eq!(
        json_field(&health.body, "connections"),
        Some(Value::UInt(0))
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_request_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = TestBroker::start().await;
    let mut tcp = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
    // Half a request line, then nothing.
    tcp.write_all(b"GET /healthz HT").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tcp.read_to_end(&mut answer),
    )
    .await
    .expect("the broker closes a connection whose request headers never come");
    // Closed, possibly after a 408; never a normal answer.
    if let Ok(n) = read
        && n > 0
    {
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
}

/// The bytes of a `POST /api/publish` of `body` on a keep-alive connection.
fn publish_request(addr: std::net::SocketAddr, body: &str) -> Vec<u8> {
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn a_body_that_does_not_arrive_is_answered_408_and_costs_nothing() {
    let broker = TestBroker::start().await;
    let mut subscriber = broker.json().await;
    subscriber.subscribe("slow.body").await;
    let mut slow = RawWs::open(broker.addr()).await;
    let request = publish_request(broker.addr(), r#"{"topic":"slow.body","payload":1}"#);
    // The head and most of the body, then nothing.
    slow.write_raw(&request[..request.len() - 5]).await;

    // Meanwhile the broker serves everyone else.
    let answer = post(
        &broker,
        "/api/publish",
        r#"{"topic":"slow.body","payload":2}"#,
    )
    .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let (_, payload) = subscriber.recv_message().await;
    assert_eq!(payload.decode::<u64>().unwrap(), 2);

    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let answer = slow.read_answer().await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(json_str(&answer.body, "code"), "request_timeout");
    assert!(
        slow.read_frame().await.is_none(),
        "the connection is closed"
    );
    subscriber.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn http_connections_count_toward_the_connection_limit() {
    let broker = TestBroker::with_config(|c| c.max_connections = 2).await;
    let addr = broker.addr();
    let healthz = RawWs::request_head(addr, "GET", "/healthz", &[]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut raw = RawWs::open(addr).await;
        raw.write_raw(healthz.as_bytes()).await;
        assert_eq!(raw.read_answer().await.status, 200);
        held.push(raw);
    }
    // Both slots are held by idle keep-alive connections.
    let (answer, _) = RawWs::request(addr, "GET", "/healthz", &[]).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(json_str(&answer.body, "code"), "too_many_connections");
    let (answer, _) = RawWs::handshake(addr, None).await;
    assert_eq!(answer.status, 503, "{answer:?}");

    // A slot is free again once a connection closes.
    drop(held.pop());
    starling_tests::within("a free slot", async {
        loop {
            let (answer, _) = RawWs::request(addr, "GET", "/healthz", &[]).await;
            if answer.status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_publish_api_keeps_to_the_rate_limit_per_connection() {
    let broker = TestBroker::with_config(|c| c.rate_limit = 5).await;
    let mut subscriber = broker.json().await;
    subscriber.subscribe("rate.http").await;
    let mut raw = RawWs::open(broker.addr()).await;
    let mut accepted = 0;
    for i in 0..8u64 {
        let body = format!(r#"{{"topic":"rate.http","payload":{i}}}"#);
        raw.write_raw(&publish_request(broker.addr(), &body)).await;
        let answer = raw.read_answer().await;
        match answer.status {
            202 => accepted += 1,
            429 => assert_eq!(json_str(&answer.body, "code"), "rate_limited"),
            _ => panic!("{answer:?}"),
        }
    }
    assert!((5..8).contains(&accepted), "{accepted} accepted");
    // Exactly the accepted publishes were delivered.
    for _ in 0..accepted {
        subscriber.recv_message().await;
    }
    subscriber.expect_silence(Duration::from_millis(100)).await;
}
