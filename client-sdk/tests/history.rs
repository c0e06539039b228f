//! With topic history on the broker, a subscription that loses its
//! connection catches up with `since`: no gap and no duplicate.

use std::time::Duration;

use starling_client::{ConnectOptions, Event, ReconnectPolicy};
use starling_tests::{broker_with, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_catches_up_with_since_after_its_connection_is_closed() {
    // The rate limit gives a way to make the broker close the subscriber's
    // connection (4029, which a client may reconnect after).
    let broker = broker_with(|c| {
        c.history = 100;
        c.rate_limit = 20;
    })
    .await;
    let url = broker.ws_url();
    let client = ConnectOptions::new()
        .reconnect(ReconnectPolicy {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_millis(400),
            ..Default::default()
        })
        .connect(&url)
        .await
        .unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("feed").await.unwrap();
    let other = starling_client::connect(&url).await.unwrap();

    for i in 1..=5u64 {
        assert_eq!(other.publish_with_ack("feed", &i).await.unwrap(), Some(i));
    }
    for i in 1..=5u64 {
        let message = within("a message", sub.recv()).await.unwrap();
        assert_eq!(
            (message.offset(), message.decode::<u64>().unwrap()),
            (Some(i), i)
        );
    }

    // Flood the broker from the subscriber's client until it is closed.
    for _ in 0..200 {
        if client.publish("noise", &0).await.is_err() {
            break;
        }
    }
    loop {
        match within("the disconnect", events.recv()).await {
            Some(Event::Disconnected { code, .. }) => {
                assert_eq!(code, Some(4029));
                break;
            }
            Some(_) => continue,
            None => panic!("events ended"),
        }
    }
    // Published while the subscriber is away (or just back): it gets them
    // once each, in order, replayed or live.
    for i in 6..=10u64 {
        assert_eq!(other.publish_with_ack("feed", &i).await.unwrap(), Some(i));
    }
    for i in 6..=10u64 {
        let message = within("a message after the reconnect", sub.recv())
            .await
            .unwrap();
        assert_eq!(
            (message.offset(), message.decode::<u64>().unwrap()),
            (Some(i), i)
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.recv())
            .await
            .is_err(),
        "a message arrived twice"
    );
}

/// A broker restarted with its history in memory starts a new epoch: the
/// resuming subscription is told with `Event::Reset` and gets what the new
/// broker retains, once each, instead of skipping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_resets_the_subscription_instead_of_skipping() {
    let first = broker_with(|c| c.history = 100).await;
    let addr = first.addr;
    let url = first.ws_url();
    let client = ConnectOptions::new()
        .reconnect(ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(200),
            ..Default::default()
        })
        .connect(&url)
        .await
        .unwrap();
    let mut events = client.events();
    let mut sub = client.subscribe("chat.room").await.unwrap();
    let other = starling_client::connect(&url).await.unwrap();
    for i in 1..=3u64 {
        other.publish_with_ack("chat.room", &i).await.unwrap();
    }
    let mut old_epoch = None;
    for i in 1..=3u64 {
        let message = within("a message", sub.recv()).await.unwrap();
        assert_eq!(message.offset(), Some(i));
        old_epoch = message.epoch().map(str::to_owned);
    }
    let old_epoch = old_epoch.expect("messages carry their epoch");
    drop(other);
    starling_tests::stop(first).await;

    // The same address, a new process's history: offsets from 1 again.
    let second = starling_tests::broker_on_with(addr, |c| c.history = 100).await;
    let other = starling_client::connect(&url).await.unwrap();
    for i in 1..=2u64 {
        assert_eq!(
            other
                .publish_with_ack("chat.room", &(10 + i))
                .await
                .unwrap(),
            Some(i)
        );
    }
    loop {
        match within("the reset", events.recv()).await {
            Some(Event::Reset { topic }) => {
                assert_eq!(topic.as_str(), "chat.room");
                break;
            }
            Some(_) => continue,
            None => panic!("events ended"),
        }
    }
    for i in 1..=2u64 {
        let message = within("a message of the new epoch", sub.recv())
            .await
            .unwrap();
        assert_eq!(message.offset(), Some(i));
        assert_eq!(message.decode::<u64>().unwrap(), 10 + i);
        assert_ne!(message.epoch(), Some(old_epoch.as_str()));
    }
    other.publish_with_ack("chat.room", &13).await.unwrap();
    let message = within("a live message", sub.recv()).await.unwrap();
    assert_eq!(message.offset(), Some(3));
    drop(second);
}
