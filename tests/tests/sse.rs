//! Server-Sent Events (`GET /sse`): messages as events, resume through
//! history with `Last-Event-ID`, the same refusals as WebSocket clients,
//! a slow stream told what it missed, keep-alive comments, and the end of
//! the stream at shutdown.

use std::time::Duration;

use starling_protocol::{ErrorCode, Payload, Value};
use starling_tests::tokens::{Claims, SECRET};
use starling_tests::{Client, SseStream, TestBroker, http_post, json_field, json_str};

fn publish_body(topic: &str, payload: &str) -> String {
    format!(r#"{{"topic":"{topic}","payload":{payload}}}"#)
}

/// A JSON number as a payload's value.
fn number(n: u64) -> Value {
    Payload::from_json(&n.to_string()).unwrap().to_value()
}

/// The payload of a `message` event's data.
fn payload_of(data: &str) -> Value {
    json_field(data, "payload").unwrap_or_else(|| panic!("no payload: {data}"))
}

#[tokio::test]
async fn a_stream_gets_messages_of_its_topics_and_patterns_as_events() {
    let broker = TestBroker::start().await;
    let url = format!("{}/sse?topic=news.a&topic=metrics.*", broker.http_url());
    let mut stream = SseStream::open(&url, &[]).await;
    let publish = format!("{}/api/publish", broker.http_url());
    let (status, _) = http_post(&publish, publish_body("news.a", r#"{"n":1}"#)).await;
    assert_eq!(status, 202);
    http_post(&publish, publish_body("other.x", "0")).await;
    http_post(&publish, publish_body("metrics.cpu", "0.5")).await;

    let first = stream.next().await.unwrap();
    assert_eq!(first.event, "message");
    assert_eq!(first.id, None, "no history, no id");
    assert_eq!(json_str(&first.data, "topic"), "news.a");
    assert_eq!(json_str(&first.data, "type"), "message");
    assert_eq!(
        payload_of(&first.data),
        Payload::from_json(r#"{"n":1}"#).unwrap().to_value()
    );
    let second = stream.next().await.unwrap();
    assert_eq!(json_str(&second.data, "topic"), "metrics.cpu");
    assert_eq!(json_str(&second.data, "sub"), "metrics.*");
}

#[tokio::test]
async fn last_event_id_resumes_through_history() {
    let broker = TestBroker::with_config(|c| c.history = 100).await;
    let publish = format!("{}/api/publish", broker.http_url());
    for n in 1..=3 {
        http_post(&publish, publish_body("feed.a", &n.to_string())).await;
    }
    let url = format!("{}/sse?topic=feed.a", broker.http_url());
    let mut stream = SseStream::open(&url, &[]).await;
    http_post(&publish, publish_body("feed.a", "4")).await;
    let event = stream.next().await.unwrap();
    let id = event.id.clone().expect("an id on a topic with history");
    let (offset, epoch) = id.split_once('@').unwrap();
    assert_eq!(offset, "4");
    assert_eq!(payload_of(&event.data), number(4));
    drop(stream);

    // Gone while 5 and 6 were published; back with the last id it saw.
    http_post(&publish, publish_body("feed.a", "5")).await;
    http_post(&publish, publish_body("feed.a", "6")).await;
    let mut stream = SseStream::open(&url, &[("Last-Event-ID", &id)]).await;
    for n in [5, 6] {
        let event = stream.next().await.unwrap();
        assert_eq!(payload_of(&event.data), number(n));
        assert_eq!(event.id, Some(format!("{n}@{epoch}")));
    }
    http_post(&publish, publish_body("feed.a", "7")).await;
    assert_eq!(payload_of(&stream.next().await.unwrap().data), number(7));

    // From another epoch: told so, then everything retained.
    let mut stream = SseStream::open(&url, &[("Last-Event-ID", "3@not-this-one")]).await;
    let reset = stream.next().await.unwrap();
    assert_eq!(reset.event, "lagged");
    assert_eq!(json_field(&reset.data, "reset"), Some(Value::Bool(true)));
    assert_eq!(payload_of(&stream.next().await.unwrap().data), number(1));
}

#[tokio::test]
async fn streams_are_refused_like_websocket_clients() {
    let broker = TestBroker::with_config(|c| {
        c.jwt_secret = Some(SECRET.into());
        c.max_subscriptions = 2;
    })
    .await;
    let base = format!("{}/sse", broker.http_url());
    let refused = |status: u16, code: ErrorCode| (status, code.as_str().to_owned());
    let answer = |url: String, headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let response = SseStream::request(&url, &headers).await;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        (status, json_str(&body, "code"))
    };
    let token = Claims::new("ada")
        .subscribe(&["news.>"])
        .publish(&["news.>"])
        .hs256();
    assert_eq!(
        answer(format!("{base}?topic=news.a"), vec![]).await,
        refused(
            ErrorCode::Unauthorized.http_status(),
            ErrorCode::Unauthorized
        )
    );
    assert_eq!(
        answer(format!("{base}?topic=chat.a&token={token}"), vec![]).await,
        refused(
            ErrorCode::Unauthorized.http_status(),
            ErrorCode::Unauthorized
        )
    );
    assert_eq!(
        answer(format!("{base}?token={token}"), vec![]).await,
        refused(400, ErrorCode::BadFrame)
    );
    assert_eq!(
        answer(format!("{base}?topic=news..a&token={token}"), vec![]).await,
        refused(400, ErrorCode::InvalidTopic)
    );
    assert_eq!(
        answer(
            format!("{base}?topic=news.a&topic=news.b&topic=news.c&token={token}"),
            vec![]
        )
        .await,
        refused(
            ErrorCode::TooManySubscriptions.http_status(),
            ErrorCode::TooManySubscriptions
        )
    );
    // The token in a header does as well as in the query.
    let mut stream = SseStream::open(
        &format!("{base}?topic=news.a"),
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    let mut publisher = Client::connect(&format!("{}?token={token}", broker.ws_url()), None).await;
    publisher.publish("news.a", "1").await;
    assert_eq!(stream.next().await.unwrap().event, "message");
}

#[tokio::test]
async fn a_stream_that_does_not_read_is_told_what_it_missed() {
    let broker = TestBroker::with_config(|c| c.subscriber_buffer = 16).await;
    let url = format!("{}/sse?topic=flood.a", broker.http_url());
    let mut stream = SseStream::open(&url, &[]).await;
    let mut publisher = broker.json().await;
    let big = format!("\"{}\"", "x".repeat(4096));
    for _ in 0..10_000 {
        publisher
            .publish_nowait("flood.a", Payload::from_json(&big).unwrap())
            .await;
    }
    let mut messages = 0u64;
    let mut missed = 0u64;
    while messages + missed < 10_000 {
        let event = stream.next().await.unwrap();
        match event.event.as_str() {
            "message" => messages += 1,
            "lagged" => {
                let field = json_field(&event.data, "missed");
                missed += match field {
                    Some(Value::UInt(n)) => n,
                    Some(Value::Int(n)) => n as u64,
                    other => panic!("lagged without missed: {other:?}"),
                };
            }
            other => panic!("unexpected {other} event"),
        }
    }
    assert!(missed > 0, "the stream never fell behind");
    assert_eq!(messages + missed, 10_000);
}

#[tokio::test]
async fn keep_alive_comments_flow_and_the_stream_ends_at_shutdown() {
    let broker = TestBroker::with_config(|c| c.ping_interval_ms = 1000).await;
    let url = format!("{}/sse?topic=quiet.a", broker.http_url());
    let mut stream = SseStream::open(&url, &[]).await;
    let ended = tokio::spawn(async move {
        let next = stream.next().await;
        (next, stream.comments)
    });
    tokio::time::sleep(Duration::from_millis(2500)).await;
    broker.stop().await;
    let (next, comments) = ended.await.unwrap();
    assert_eq!(next, None, "the stream ends");
    assert!(comments >= 1, "no keep-alive comment in 2.5 s");
}
