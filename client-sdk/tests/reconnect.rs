//! Resilience: the broker restarts, the connection goes silent, or the
//! broker closes for good.

mod common;

use std::time::{Duration, Instant};

use common::{FakeBroker, Pings, wait_event};
use futures_util::StreamExt;
use starling_client::protocol::Limits;
use starling_client::{Client, ConnectOptions, Error, Event, OfflinePolicy, ReconnectPolicy};
use starling_tests::{broker, broker_on, stop, within};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

fn policy(max_delay_ms: u64) -> ReconnectPolicy {
    ReconnectPolicy {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(max_delay_ms),
        max_attempts: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_survive_a_broker_restart() {
    const MAX_DELAY: Duration = Duration::from_millis(500);
    let first = broker().await;
    let addr = first.addr;
    let client = within(
        "connect",
        ConnectOptions::new()
            .reconnect(policy(MAX_DELAY.as_millis() as u64))
            .connect(first.ws_url()),
    )
    .await
    .unwrap();
    let mut events = client.events();
    let mut topic_sub = within("subscribe", client.subscribe("alerts.fire"))
        .await
        .unwrap();
    let mut pattern_sub = within("subscribe", client.subscribe("alerts.*"))
        .await
        .unwrap();

    stop(first).await;
    let (code, _) = wait_event(&mut events, "Disconnected", |e| match e {
        Event::Disconnected { code, reason } => Some((*code, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(code, Some(1001), "the broker says it is going away");
    assert!(!client.is_connected());

    // Published while the broker is down: queued, sent after the reconnect.
    client
        .publish("alerts.fire", &"while offline")
        .await
        .unwrap();

    // Some reconnect attempts fail meanwhile; then the broker is back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = broker_on(addr).await;
    let back_at = Instant::now();
    let node = wait_event(&mut events, "Connected", |e| match e {
        Event::Connected { node } => Some(node.clone()),
        _ => None,
    })
    .await;
    assert_eq!(&*node, "test-node-2");
    wait_event(&mut events, "Reconnected", |e| {
        matches!(e, Event::Reconnected).then_some(())
    })
    .await;
    let took = back_at.elapsed();
    // The last delay is at most MAX_DELAY, plus the time to connect.
    assert!(took < MAX_DELAY + Duration::from_secs(1), "{took:?}");
    assert!(client.is_connected());

    // The subscriptions came back without any call from the application.
    let registry = second.broker.registry();
    assert_eq!(registry.subscribers(&"alerts.fire".parse().unwrap()), 1);
    assert_eq!(registry.subscribers(&"alerts.*".parse().unwrap()), 1);

    // The offline publish went out behind the resubscriptions, so it reached them.
    let msg = within("offline publish", topic_sub.next()).await.unwrap();
    assert_eq!(msg.decode::<String>().unwrap(), "while offline");
    let msg = within("offline publish", pattern_sub.next()).await.unwrap();
    assert_eq!(msg.decode::<String>().unwrap(), "while offline");

    // Messages published after the reconnect arrive, from another client too.
    let other = within("connect", Client::connect(second.ws_url()))
        .await
        .unwrap();
    within("publish", other.publish_with_ack("alerts.fire", &"after"))
        .await
        .unwrap();
    let msg = within("message", topic_sub.next()).await.unwrap();
    assert_eq!(msg.decode::<String>().unwrap(), "after");
    let msg = within("message", pattern_sub.next()).await.unwrap();
    assert_eq!(msg.pattern().map(|p| p.as_str()), Some("alerts.*"));
    stop(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_refuses_publishes_while_disconnected() {
    let first = broker().await;
    let addr = first.addr;
    let client = within(
        "connect",
        ConnectOptions::new()
            .reconnect(policy(200))
            .offline(OfflinePolicy::FailFast)
            .connect(first.ws_url()),
    )
    .await
    .unwrap();
    let mut events = client.events();
    stop(first).await;
    wait_event(&mut events, "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    assert!(matches!(
        client.publish("x.y", &1).await,
        Err(Error::Disconnected)
    ));
    assert!(matches!(
        client.publish_with_ack("x.y", &1).await,
        Err(Error::Disconnected)
    ));
    assert!(matches!(client.flush().await, Err(Error::Disconnected)));
    // Subscribing while disconnected registers the subscription at once.
    let mut sub = within("subscribe offline", client.subscribe("x.y"))
        .await
        .unwrap();

    let second = broker_on(addr).await;
    wait_event(&mut events, "Reconnected", |e| {
        matches!(e, Event::Reconnected).then_some(())
    })
    .await;
    within("publish", client.publish_with_ack("x.y", &2))
        .await
        .unwrap();
    let msg = within("message", sub.next()).await.unwrap();
    assert_eq!(msg.decode::<u32>().unwrap(), 2);
    stop(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_closes_the_client() {
    let first = broker().await;
    let client = within(
        "connect",
        ConnectOptions::new()
            .reconnect(ReconnectPolicy {
                max_attempts: Some(2),
                ..policy(50)
            })
            .connect(first.ws_url()),
    )
    .await
    .unwrap();
    let mut sub = within("subscribe", client.subscribe("a.b")).await.unwrap();
    let mut events = client.events();
    stop(first).await;
    let reason = wait_event(&mut events, "Closed", |e| match e {
        Event::Closed { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("gave up after 2"), "{reason}");
    // The subscription ends and every call fails with Closed.
    assert!(within("end of stream", sub.next()).await.is_none());
    assert!(matches!(
        client.publish("a.b", &1).await,
        Err(Error::Closed)
    ));
    assert!(matches!(client.subscribe("a.b").await, Err(Error::Closed)));
    assert!(within("events end", events.next()).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_detected_by_ping_and_replaced() {
    let mut fake = FakeBroker::start(Pings::Ignore, Limits::default()).await;
    let client = within(
        "connect",
        ConnectOptions::new()
            .ping_interval(Duration::from_millis(100))
            .ping_timeout(Duration::from_millis(200))
            .reconnect(policy(100))
            .connect(fake.ws_url()),
    )
    .await
    .unwrap();
    let mut events = client.events();
    let _sub = within("subscribe offline-ish", async {
        // The fake broker never acks: give up on the answer, keep going.
        client.subscribe("quiet.topic").await
    })
    .await;
    let started = Instant::now();
    let reason = wait_event(&mut events, "Disconnected", |e| match e {
        Event::Disconnected { code: None, reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("no answer to ping"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(2));
    wait_event(&mut events, "Connected", |e| {
        matches!(e, Event::Connected { .. }).then_some(())
    })
    .await;
    // The second connection got pings too, after the resubscription.
    let second = within("frames of the second connection", async {
        let mut seen = Vec::new();
        while let Some((n, frame)) = fake.frames.recv().await {
            if n == 2 {
                seen.push(frame.type_name());
                if frame.type_name() == "ping" {
                    return seen;
                }
            }
        }
        seen
    })
    .await;
    assert_eq!(second.first(), Some(&"subscribe"), "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_close_code_stops_reconnecting() {
    let mut fake = FakeBroker::start(Pings::Answer, Limits::default()).await;
    let client = within(
        "connect",
        ConnectOptions::new()
            .token("expired")
            .reconnect(policy(50))
            .connect(fake.ws_url()),
    )
    .await
    .unwrap();
    let mut events = client.events();
    let conn = within("connection", fake.connections.recv()).await.unwrap();
    conn.send(WsMessage::Close(Some(CloseFrame {
        code: 1008.into(),
        reason: "token expired".into(),
    })))
    .unwrap();
    let (code, reason) = wait_event(&mut events, "Disconnected", |e| match e {
        Event::Disconnected { code, reason } => Some((*code, reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!((code, reason.as_str()), (Some(1008), "token expired"));
    let reason = wait_event(&mut events, "Closed", |e| match e {
        Event::Closed { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("1008"), "{reason}");
    // No second connection was made.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(fake.connections.try_recv().is_err());
    assert!(matches!(client.flush().await, Err(Error::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_are_answered_by_the_broker() {
    let running = broker().await;
    let client = within(
        "connect",
        ConnectOptions::new()
            .name("ingest-1")
            .token("s3cret")
            .ping_interval(Duration::from_millis(50))
            .ping_timeout(Duration::from_millis(500))
            .connect(running.ws_url()),
    )
    .await
    .unwrap();
    let mut events = client.events();
    // Several ping intervals pass without a disconnect.
    let quiet = tokio::time::timeout(Duration::from_millis(400), async {
        loop {
            if let Some(Event::Disconnected { reason, .. }) = events.next().await {
                return reason;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "disconnected: {quiet:?}");
    assert!(client.is_connected());
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribing_asks_for_the_messages_after_the_last_offset_seen() {
    let mut fake = FakeBroker::start(Pings::Answer, Limits::default()).await;
    let client = within(
        "connect",
        ConnectOptions::new()
            .reconnect(policy(50))
            .connect(fake.ws_url()),
    )
    .await
    .unwrap();
    let mut events = client.events();
    let mut orders = within("subscribe", client.subscribe("orders.new"))
        .await
        .unwrap();
    let mut all = within("subscribe", client.subscribe("orders.*"))
        .await
        .unwrap();
    // An ack with an offset comes back from publish_with_ack.
    let offset = within("ack", client.publish_with_ack("orders.new", &"o"))
        .await
        .unwrap();
    assert_eq!(offset, Some(7));

    let conn = within("connection", fake.connections.recv()).await.unwrap();
    for frame in [
        r#"{"type":"message","topic":"orders.new","payload":{"n":1},"offset":41}"#,
        r#"{"type":"message","topic":"orders.new","payload":{"n":2},"offset":42}"#,
        r#"{"type":"message","topic":"orders.new","payload":{"n":2},"offset":42,"sub":"orders.*"}"#,
        r#"{"type":"lagged","topic":"orders.*","missed":5}"#,
    ] {
        conn.send(WsMessage::Text(frame.into())).unwrap();
    }
    let offsets = [
        within("message", orders.next()).await.unwrap().offset(),
        within("message", orders.next()).await.unwrap().offset(),
        within("message", all.next()).await.unwrap().offset(),
    ];
    assert_eq!(offsets, [Some(41), Some(42), Some(42)]);
    let (topic, missed) = wait_event(&mut events, "Lagged", |e| match e {
        Event::Lagged { topic, missed } => Some((topic.clone(), *missed)),
        _ => None,
    })
    .await;
    assert_eq!((topic.as_str(), missed), ("orders.*", 5));

    // The broker goes away; on the next connection the client subscribes
    // again by itself, from offset 42 on for the topic (a pattern has no
    // single offset).
    conn.send(WsMessage::Close(Some(CloseFrame {
        code: 1001.into(),
        reason: "restarting".into(),
    })))
    .unwrap();
    wait_event(&mut events, "Reconnected", |e| {
        matches!(e, Event::Reconnected).then_some(())
    })
    .await;
    let mut resubscribed = Vec::new();
    while resubscribed.len() < 2 {
        let (n, frame) = within("frames", fake.frames.recv()).await.unwrap();
        if let (2, starling_client::protocol::Envelope::Subscribe { topic, since, .. }) = (n, frame)
        {
            resubscribed.push((topic.to_string(), since));
        }
    }
    resubscribed.sort();
    assert_eq!(
        resubscribed,
        [
            ("orders.*".to_owned(), None),
            ("orders.new".to_owned(), Some(42))
        ]
    );
}
