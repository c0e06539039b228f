//! The WebSocket handshake on the real listener: upgrades taken before
//! hyper sees them, and those hyper serves (after another request on the
//! same connection, or with a long head), lose nothing the client sent.

use starling_tests::{RawWs, TestBroker};

/// Sends `before`, then `head` with a masked `subscribe` to `topic` right
/// behind it (in one write unless `byte_by_byte`), and checks the upgrade,
/// the subscription's `ack`, and a delivery on it.
async fn upgrade_and_subscribe(
    broker: &TestBroker,
    raw: &mut RawWs,
    head: &str,
    topic: &str,
    byte_by_byte: bool,
) {
    let text = format!(r#"{{"type":"subscribe","id":1,"topic":"{topic}"}}"#);
    let subscribe = RawWs::frame(0x81, text.as_bytes(), true);
    if byte_by_byte {
        for byte in head.as_bytes() {
            raw.write_raw(std::slice::from_ref(byte)).await;
        }
        raw.write_raw(&subscribe).await;
    } else {
        raw.write_raw(&[head.as_bytes(), &subscribe].concat()).await;
    }
    raw.expect_upgraded().await;
    let ack = raw.read_frame().await.expect("ack");
    assert_eq!(
        String::from_utf8(ack.payload).unwrap(),
        r#"{"type":"ack","id":1}"#
    );

    let mut publisher = broker.json().await;
    publisher.publish(topic, r#"{"n":1}"#).await;
    let frame = raw.read_frame().await.expect("message");
    let text = String::from_utf8(frame.payload).unwrap();
    assert!(text.contains(r#""payload":{"n":1}"#), "{text}");
}

/// An upgrade request for `path` with `extra` headers.
fn upgrade_head(broker: &TestBroker, path: &str, extra: &[(&str, &str)]) -> String {
    let mut headers = RawWs::UPGRADE_HEADERS.to_vec();
    headers.extend_from_slice(extra);
    RawWs::request_head(broker.addr(), "GET", path, &headers)
}

#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_not_lost() {
    let broker = TestBroker::start().await;
    let mut raw = RawWs::open(broker.addr()).await;
    let head = upgrade_head(&broker, "/ws?from=test", &[]);
    upgrade_and_subscribe(&broker, &mut raw, &head, "hs.early", false).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_upgrade_after_another_request_on_the_same_connection() {
    let broker = TestBroker::start().await;
    let mut raw = RawWs::open(broker.addr()).await;
    raw.write_raw(RawWs::request_head(broker.addr(), "GET", "/healthz", &[]).as_bytes())
        .await;
    let health = raw.read_answer().await;
    assert_eq!(health.status, 200, "{health:?}");
    assert!(health.body.contains(r#""status":"ok""#), "{}", health.body);
    // The same connection, now upgraded (hyper serves this one).
    let head = upgrade_head(&broker, "/ws", &[]);
    upgrade_and_subscribe(&broker, &mut raw, &head, "hs.kept", false).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_upgrade_with_a_long_head_is_served() {
    let broker = TestBroker::start().await;
    let cookie = format!("session={}", "c".repeat(12 * 1024));
    let mut raw = RawWs::open(broker.addr()).await;
    let head = upgrade_head(&broker, "/ws", &[("Cookie", &cookie)]);
    upgrade_and_subscribe(&broker, &mut raw, &head, "hs.long", false).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_upgrade_sent_a_byte_at_a_time_is_served() {
    let broker = TestBroker::start().await;
    let mut raw = RawWs::open(broker.addr()).await;
    let head = upgrade_head(&broker, "/ws", &[]);
    upgrade_and_subscribe(&broker, &mut raw, &head, "hs.slow", true).await;
    broker.stop().await;
}

#[tokio::test]
async fn bytes_that_are_not_a_request_get_400_at_once() {
    let broker = TestBroker::start().await;
    let mut raw = RawWs::open(broker.addr()).await;
    // Not a request line; no blank line after it either.
    raw.write_raw(b"\x16\x03\x01 hello\r\n").await;
    let answer = raw.read_answer().await;
    assert_eq!(answer.status, 400, "{answer:?}");
    broker.stop().await;
}
