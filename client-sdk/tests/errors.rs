//! Errors: found locally without a round trip, refused by the broker, or
//! met while connecting.

mod common;

use std::time::{Duration, Instant};

use common::{FakeBroker, Pings, wait_event};
use starling_client::protocol::{Limits, TopicError};
use starling_client::{Client, ConnectOptions, Error, ErrorCode, Event};
use starling_tests::{broker, broker_with, eventually, stop, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topics_fail_without_a_round_trip() {
    let mut fake = FakeBroker::start(Pings::Answer, Limits::default()).await;
    let c = within("connect", Client::connect(fake.ws_url()))
        .await
        .unwrap();

    let err = c.publish("chat..lobby", &1).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidTopic { topic, source: TopicError::EmptyToken } if topic == "chat..lobby"),
        "{err:?}"
    );
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopic));
    // Patterns are for subscribing only.
    assert!(matches!(
        c.publish_with_ack("chat.*", &1).await,
        Err(Error::InvalidTopic {
            source: TopicError::Wildcard,
            ..
        })
    ));
    assert!(matches!(
        c.subscribe("chat.>.x").await,
        Err(Error::InvalidTopic {
            source: TopicError::MisplacedWildcard,
            ..
        })
    ));
    assert!(matches!(
        c.subscribe("").await,
        Err(Error::InvalidTopic {
            source: TopicError::Empty,
            ..
        })
    ));
    let long = "a".repeat(256);
    assert!(matches!(
        c.subscribe(&long).await,
        Err(Error::InvalidTopic {
            source: TopicError::TooLong(256),
            ..
        })
    ));

    // Only the flush's ping reached the (fake) broker: nothing was sent for
    // the invalid topics.
    within("flush", c.flush()).await.unwrap();
    let (_, frame) = within("a frame", fake.frames.recv()).await.unwrap();
    assert_eq!(frame.type_name(), "ping");
    assert!(fake.frames.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_fail_locally() {
    let running = broker_with(|c| c.max_message_bytes = 1024).await;
    let c = within("connect", Client::connect(running.ws_url()))
        .await
        .unwrap();
    assert_eq!(c.max_message_bytes(), 1024);
    let big = "x".repeat(2000);
    let err = c.publish("big.one", &big).await.unwrap_err();
    assert!(
        matches!(err, Error::MessageTooLarge { size, limit: 1024 } if size > 2000),
        "{err:?}"
    );
    assert!(matches!(
        c.publish_with_ack("big.one", &big).await,
        Err(Error::MessageTooLarge { .. })
    ));
    // Just under the limit is fine; the limit counts the whole frame.
    let fits = "x".repeat(900);
    within("ack", c.publish_with_ack("big.one", &fits))
        .await
        .unwrap();
    // The broker never saw a message_too_large.
    let metrics = running.broker.metrics().encode();
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("message_too_large") && !l.starts_with('#') && !l.ends_with(" 0")),
        "{metrics}"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_reserved_topic_is_unauthorized() {
    let running = broker().await;
    let c = within("connect", Client::connect(running.ws_url()))
        .await
        .unwrap();
    let mut events = c.events();
    let err = within("ack", c.publish_with_ack("$sys.x", &1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Server {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    assert!(!err.is_retryable());

    // Fire-and-forget: the refusal arrives as an event.
    c.publish("$sys.x", &1).await.unwrap();
    let code = wait_event(&mut events, "ServerError", |e| match e {
        Event::ServerError { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code, ErrorCode::Unauthorized);

    // Subscribing to a reserved topic is allowed.
    within("subscribe", c.subscribe("$sys.>")).await.unwrap();
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscribe_is_a_server_error() {
    let running = broker_with(|c| c.max_subscriptions = 1).await;
    let c = within("connect", Client::connect(running.ws_url()))
        .await
        .unwrap();
    let _first = within("subscribe", c.subscribe("one")).await.unwrap();
    let err = within("subscribe", c.subscribe("two")).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Server {
                code: ErrorCode::TooManySubscriptions,
                ..
            }
        ),
        "{err:?}"
    );
    // The client is fine, and the failed filter can be tried again later.
    within("flush", c.flush()).await.unwrap();
    drop(_first);
    let registry = running.broker.registry();
    let one = starling_client::Filter::new("one").unwrap();
    eventually("unsubscribed", || registry.subscribers(&one) == 0).await;
    within("subscribe", c.subscribe("two")).await.unwrap();
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_at_once() {
    // A port with nobody behind it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let err = within(
        "connect error",
        Client::connect(format!("ws://127.0.0.1:{port}/ws")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_answers_times_out() {
    // Accepts TCP connections (the kernel does) but never answers the handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let started = Instant::now();
    let err = within(
        "connect timeout",
        ConnectOptions::new()
            .connect_timeout(Duration::from_millis(300))
            .connect(format!("ws://{addr}/ws")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::ConnectTimeout { after, .. } if after == Duration::from_millis(300)),
        "{err:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_refusal_carries_status_and_code() {
    let running = broker_with(|c| c.max_connections = 0).await;
    let err = within("refusal", Client::connect(running.ws_url()))
        .await
        .unwrap_err();
    match &err {
        Error::Refused { status, code, .. } => {
            assert_eq!((*status, code.as_str()), (503, "too_many_connections"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
    stop(running).await;

    // Not the broker's path: a 404 with the broker's JSON body (from a
    // broker with room: at the limit every HTTP request gets the 503).
    let running = broker_with(|_| {}).await;
    let url = running.ws_url().replace("/ws", "/nope");
    let err = within("refusal", Client::connect(url)).await.unwrap_err();
    assert!(
        matches!(&err, Error::Refused { status: 404, code, .. } if code == "not_found"),
        "{err:?}"
    );
    stop(running).await;
}

#[tokio::test]
async fn bad_urls_and_options_are_refused_before_connecting() {
    for url in ["http://127.0.0.1:1/ws", "not a url", "ws://"] {
        let err = Client::connect(url).await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
    }
    let err = ConnectOptions::new()
        .token("line\nbreak")
        .connect("ws://127.0.0.1:1/ws")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidOption {
                option: "token",
                ..
            }
        ),
        "{err:?}"
    );
}
