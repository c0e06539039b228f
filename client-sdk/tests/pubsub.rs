//! Publish and subscribe against the real broker, in both codecs.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use starling_client::protocol::Value;
use starling_client::{Client, Codec, ConnectOptions, Event, Filter, Payload};
use starling_tests::{WAIT, broker, broker_with, eventually, stop, within};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Chat {
    nick: String,
    text: String,
    n: u32,
}

async fn client(url: &str, codec: Codec) -> Client {
    within("connect", ConnectOptions::new().codec(codec).connect(url))
        .await
        .expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_with_typed_decode_in_both_codecs() {
    let running = broker().await;
    for codec in Codec::ALL {
        let publisher = client(&running.ws_url(), codec).await;
        let subscriber = client(&running.ws_url(), codec).await;
        assert_eq!(subscriber.codec(), codec);
        let mut sub = within("subscribe", subscriber.subscribe("chat.lobby"))
            .await
            .unwrap();
        let sent = Chat {
            nick: "ada".into(),
            text: format!("hello in {codec:?}"),
            n: 7,
        };
        within("publish", publisher.publish("chat.lobby", &sent))
            .await
            .unwrap();
        // Topics keep no history yet, so the ack carries no offset.
        let offset = within("ack", publisher.publish_with_ack("chat.lobby", &sent))
            .await
            .unwrap();
        assert_eq!(offset, None);
        for _ in 0..2 {
            let msg = within("message", sub.next()).await.expect("a message");
            assert_eq!(msg.topic().as_str(), "chat.lobby");
            assert_eq!(msg.offset(), None);
            assert_eq!(msg.pattern(), None);
            assert_eq!(msg.decode::<Chat>().unwrap(), sent);
        }
        within("close", publisher.close()).await.unwrap();
        within("close", subscriber.close()).await.unwrap();
    }
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_msgpack_clients_share_topics() {
    let running = broker().await;
    let json = client(&running.ws_url(), Codec::Json).await;
    let msgpack = client(&running.ws_url(), Codec::MsgPack).await;
    let mut at_json = within("subscribe", json.subscribe("mixed.*"))
        .await
        .unwrap();
    let mut at_msgpack = within("subscribe", msgpack.subscribe("mixed.*"))
        .await
        .unwrap();

    let from_json = Chat {
        nick: "j".into(),
        text: "from json".into(),
        n: 1,
    };
    within("publish", json.publish_with_ack("mixed.a", &from_json))
        .await
        .unwrap();
    let from_msgpack = Chat {
        nick: "m".into(),
        text: "from msgpack".into(),
        n: 2,
    };
    within(
        "publish",
        msgpack.publish_with_ack("mixed.b", &from_msgpack),
    )
    .await
    .unwrap();

    for sub in [&mut at_json, &mut at_msgpack] {
        let first = within("message", sub.next()).await.unwrap();
        let second = within("message", sub.next()).await.unwrap();
        assert_eq!(first.topic().as_str(), "mixed.a");
        assert_eq!(first.pattern().map(Filter::as_str), Some("mixed.*"));
        assert_eq!(first.decode::<Chat>().unwrap(), from_json);
        assert_eq!(second.decode::<Chat>().unwrap(), from_msgpack);
    }

    // MessagePack `bin` reaches a MessagePack subscriber as `bin`.
    within(
        "publish bin",
        msgpack.publish_payload(
            "mixed.bin",
            Payload::from_value(Value::Bin(vec![0, 1, 255])),
        ),
    )
    .await
    .unwrap();
    let got = within("bin", at_msgpack.next()).await.unwrap();
    assert_eq!(got.payload().to_value(), Value::Bin(vec![0, 1, 255]));
    let got = within("bin as json", at_json.next()).await.unwrap();
    assert_eq!(got.payload().to_json_string(), r#"{"$bin":"AAH/"}"#);
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_exchange_ten_thousand_messages_in_order() {
    const N: u32 = 10_000;
    // A deep ring, so that the test is about the SDK and not about the
    // broker lagging a subscriber that a fast publisher outruns.
    let running = broker_with(|c| c.subscriber_buffer = 2 * N as usize).await;
    let a = client(&running.ws_url(), Codec::Json).await;
    let b = client(&running.ws_url(), Codec::MsgPack).await;
    let mut a_events = a.events();
    let mut b_events = b.events();
    let at_a = within("subscribe", a.subscribe("pingpong.to-a"))
        .await
        .unwrap();
    let at_b = within("subscribe", b.subscribe("pingpong.to-b"))
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let send = |from: Client, topic: &'static str| {
        tokio::spawn(async move {
            for n in 0..N {
                from.publish(topic, &n).await.unwrap();
            }
            from.flush().await.unwrap();
        })
    };
    let a_sends = send(a.clone(), "pingpong.to-b");
    let b_sends = send(b.clone(), "pingpong.to-a");
    let receive = |mut sub: starling_client::Subscription| {
        tokio::spawn(async move {
            for expected in 0..N {
                let msg = tokio::time::timeout(WAIT, sub.next())
                    .await
                    .unwrap_or_else(|_| panic!("message {expected} did not arrive"))
                    .expect("stream open");
                assert_eq!(msg.decode::<u32>().unwrap(), expected, "order kept");
            }
            sub
        })
    };
    let at_a = receive(at_a);
    let at_b = receive(at_b);
    within("a sends", a_sends).await.unwrap();
    within("b sends", b_sends).await.unwrap();
    let mut at_a = within("a receives", at_a).await.unwrap();
    let mut at_b = within("b receives", at_b).await.unwrap();
    eprintln!("2 x {N} messages in {:?}", started.elapsed());

    // Nothing more, and nothing was reported dropped.
    assert!(at_a.try_recv().is_none());
    assert!(at_b.try_recv().is_none());
    for events in [&mut a_events, &mut b_events] {
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(50), events.next()).await
        {
            assert!(
                !matches!(event, Event::Lagged { .. } | Event::SlowConsumer { .. }),
                "{event:?}"
            );
        }
    }
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscriptions_to_one_filter_each_get_every_message() {
    let running = broker().await;
    let c = client(&running.ws_url(), Codec::Json).await;
    let filter = Filter::new("news.*").unwrap();
    let mut first = within("subscribe", c.subscribe("news.*")).await.unwrap();
    let mut second = within("subscribe", c.subscribe("news.*")).await.unwrap();
    assert_eq!(running.broker.registry().subscribers(&filter), 1);

    within("publish", c.publish_with_ack("news.today", &"extra"))
        .await
        .unwrap();
    for sub in [&mut first, &mut second] {
        let msg = within("message", sub.next()).await.unwrap();
        assert_eq!(msg.decode::<String>().unwrap(), "extra");
    }

    // Dropping one keeps the broker's subscription for the other.
    drop(first);
    within("publish", c.publish_with_ack("news.today", &"more"))
        .await
        .unwrap();
    let msg = within("message", second.next()).await.unwrap();
    assert_eq!(msg.decode::<String>().unwrap(), "more");
    assert_eq!(running.broker.registry().subscribers(&filter), 1);
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_subscription_unsubscribes() {
    let running = broker().await;
    let c = client(&running.ws_url(), Codec::Json).await;
    let filter = Filter::new("drops.here").unwrap();
    let sub = within("subscribe", c.subscribe("drops.here"))
        .await
        .unwrap();
    let registry = running.broker.registry();
    assert_eq!(registry.subscribers(&filter), 1);
    drop(sub);
    eventually("the broker's subscriber count to fall", || {
        registry.subscribers(&filter) == 0
    })
    .await;

    // The explicit way waits for the broker's ack.
    let pattern = Filter::new("drops.*").unwrap();
    let sub = within("subscribe", c.subscribe("drops.*")).await.unwrap();
    assert_eq!(registry.subscribers(&pattern), 1);
    within("unsubscribe", sub.unsubscribe()).await.unwrap();
    assert_eq!(registry.subscribers(&pattern), 0);
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscription_drops_messages_and_the_connection_keeps_running() {
    let running = broker().await;
    let c = within(
        "connect",
        ConnectOptions::new()
            .subscriber_capacity(4)
            .connect(running.ws_url()),
    )
    .await
    .unwrap();
    let mut events = c.events();
    let mut slow = within("subscribe", c.subscribe("firehose")).await.unwrap();
    let mut fast = within("subscribe", c.subscribe("trickle")).await.unwrap();
    for n in 0..20 {
        c.publish("firehose", &n).await.unwrap();
    }
    within("flush", c.flush()).await.unwrap();
    let topic = common::wait_event(&mut events, "SlowConsumer", |e| match e {
        Event::SlowConsumer { topic } => Some(topic.clone()),
        _ => None,
    })
    .await;
    assert_eq!(topic.as_str(), "firehose");
    // The first four were kept, in order; later ones were dropped (some may
    // have found room again once the test started reading).
    let mut got = Vec::new();
    for _ in 0..4 {
        let msg = within("kept", slow.next()).await.unwrap();
        got.push(msg.decode::<u32>().unwrap());
    }
    assert_eq!(got, [0, 1, 2, 3]);
    // Take what else got in (the rest of the burst may still have been
    // arriving), until the burst is over.
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), slow.next()).await {
        got.push(msg.decode::<u32>().unwrap());
    }
    assert!(got.len() < 20, "some were dropped: {got:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    // The connection and the other subscription are fine.
    within("publish", c.publish_with_ack("trickle", &"still here"))
        .await
        .unwrap();
    let msg = within("trickle", fast.next()).await.unwrap();
    assert_eq!(msg.decode::<String>().unwrap(), "still here");
    within("publish", c.publish_with_ack("firehose", &99))
        .await
        .unwrap();
    loop {
        let n = within("firehose again", slow.next())
            .await
            .unwrap()
            .decode::<u32>()
            .unwrap();
        assert!(n > *got.last().unwrap(), "in order: {n} after {got:?}");
        got.push(n);
        if n == 99 {
            break;
        }
    }
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_what_is_queued() {
    let running = broker().await;
    let publisher = client(&running.ws_url(), Codec::MsgPack).await;
    let subscriber = client(&running.ws_url(), Codec::Json).await;
    let mut sub = within("subscribe", subscriber.subscribe("last.words"))
        .await
        .unwrap();
    let mut events = publisher.events();
    for n in 0..500u32 {
        publisher.publish("last.words", &n).await.unwrap();
    }
    within("close", publisher.close()).await.unwrap();
    for n in 0..500u32 {
        let msg = within("message", sub.next()).await.unwrap();
        assert_eq!(msg.decode::<u32>().unwrap(), n);
    }
    // Closed for good: every handle fails, and the events say so.
    let reason = common::wait_event(&mut events, "Closed", |e| match e {
        Event::Closed { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("closed by the application"), "{reason}");
    assert!(matches!(
        publisher.publish("last.words", &1).await,
        Err(starling_client::Error::Closed)
    ));
    assert!(!publisher.is_connected());
    within("second close", publisher.close()).await.unwrap();
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_stops_the_task_and_the_connection() {
    let running = broker().await;
    let c = client(&running.ws_url(), Codec::Json).await;
    let filter = Filter::new("bye.bye").unwrap();
    let sub = within("subscribe", c.subscribe("bye.bye")).await.unwrap();
    let mut events = c.events();
    drop(c);
    // A subscription alone keeps the connection alive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(running.broker.registry().subscribers(&filter), 1);
    drop(sub);
    common::wait_event(&mut events, "Closed", |e| {
        matches!(e, Event::Closed { .. }).then_some(())
    })
    .await;
    let registry = running.broker.registry();
    eventually("the broker to forget the connection", || {
        registry.subscribers(&filter) == 0
    })
    .await;
    stop(running).await;
}
