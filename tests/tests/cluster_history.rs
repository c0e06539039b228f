//! Topic history kept in Redis: offsets agree across nodes, a client
//! resumes on any node with no gap and no duplicate, a node restart keeps
//! the history, a Redis restart changes the epoch.

use std::sync::Arc;
use std::time::Duration;

use starling_protocol::{Envelope, Payload, Topic};
use starling_tests::redis::RedisServer;
use starling_tests::{Client, TestBroker, http_get, http_post};

/// A node of a cluster whose topics keep `history` messages.
async fn node(name: &str, redis: &RedisServer, history: usize) -> TestBroker {
    TestBroker::node_with(name, &redis.url(), |c| {
        c.history = history;
        c.history_prefixes = vec![("nohist.".into(), 0)];
    })
    .await
}

/// The offset, epoch and payload of a `message` frame.
fn numbered(frame: &Envelope) -> (u64, Arc<str>, u64) {
    match frame {
        Envelope::Message {
            offset: Some(offset),
            epoch: Some(epoch),
            payload,
            ..
        } => (*offset, epoch.clone(), payload.decode().unwrap()),
        other => panic!("expected a numbered message, got {other:?}"),
    }
}

/// Publishes `n` and returns the offset and epoch its ack carries.
async fn publish(client: &mut Client, topic: &str, n: u64) -> (u64, Arc<str>) {
    let id = client.next_id();
    let answer = client
        .request(&Envelope::Publish {
            id: Some(id),
            topic: Topic::new(topic).unwrap(),
            payload: Payload::from_json(&n.to_string()).unwrap(),
        })
        .await;
    match answer {
        Envelope::Ack {
            offset: Some(offset),
            epoch: Some(epoch),
            ..
        } => (offset, epoch),
        other => panic!("expected an ack with an offset, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_give_one_topic_the_same_offsets_in_the_same_order() {
    let redis = RedisServer::start();
    let a = node("a", &redis, 100).await;
    let b = node("b", &redis, 100).await;
    let mut on_a = a.json().await;
    let mut on_b = b.msgpack().await;
    let (latest_a, epoch) = on_a.subscribe("room.1").await.expect("a position");
    let (latest_b, epoch_b) = on_b.subscribe("room.1").await.expect("a position");
    assert_eq!((latest_a, latest_b), (0, 0));
    assert_eq!(epoch, epoch_b, "one epoch for the cluster");

    // Publishers on both nodes, interleaved: each ack gets the next offset.
    let mut pub_a = a.json().await;
    let mut pub_b = b.json().await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let publisher = if i % 2 == 0 { &mut pub_a } else { &mut pub_b };
        let (offset, got) = publish(publisher, "room.1", i).await;
        assert_eq!(got, epoch);
        acked.push((offset, i));
    }
    assert_eq!(
        acked.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    // Every subscriber, on either node, sees the same offsets in order,
    // each with the payload it was acked for.
    for client in [&mut on_a, &mut on_b] {
        for &(offset, n) in &acked {
            let (got, got_epoch, payload) = numbered(&client.recv().await);
            assert_eq!((got, payload), (offset, n));
            assert_eq!(got_epoch, epoch);
        }
    }
    // HTTP publishes get offsets too, and the history API reads them on
    // either node.
    let (status, body) = http_post(
        &format!("{}/api/publish", b.http_url()),
        r#"{"topic":"room.1","payload":20}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, format!(r#"{{"offset":21,"epoch":"{epoch}"}}"#));
    let (status, page) = http_get(&format!(
        "{}/api/history?topic=room.1&since=18&epoch={epoch}",
        a.http_url()
    ))
    .await;
    assert_eq!(status, 200, "{page}");
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(page["offset"], 21);
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [19, 20, 21]);
    // A topic without history stays as it was: no offset.
    let (status, _) = http_post(
        &format!("{}/api/publish", b.http_url()),
        r#"{"topic":"nohist.x","payload":1}"#,
    )
    .await;
    assert_eq!(status, 202);
}

/// The check the issue asks for: a subscriber leaves node A and resumes on
/// node B while publishers on both nodes go on; it gets every message once,
/// in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_with_no_gap_and_no_duplicate() {
    const MESSAGES: u64 = 10_000;
    let redis = RedisServer::start();
    let a = node("a", &redis, MESSAGES as usize).await;
    let b = node("b", &redis, MESSAGES as usize).await;
    let mut sub = a.json().await;
    let (_, epoch) = sub.subscribe("feed").await.unwrap();

    let publishers = [a.msgpack().await, b.msgpack().await];
    let publishing = tokio::spawn(async move {
        let mut publishers = publishers;
        for i in 0..MESSAGES {
            let publisher = &mut publishers[(i % 2) as usize];
            publisher
                .publish_nowait("feed", Payload::from_json(&i.to_string()).unwrap())
                .await;
            if i % 500 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        publishers
    });
    // Read some on A, then leave.
    let mut last = 0;
    for _ in 0..1_000 {
        let (offset, got, _) = numbered(&sub.recv().await);
        assert_eq!(offset, last + 1);
        assert_eq!(got, epoch);
        last = offset;
    }
    sub.close().await;
    // Resume on B while the publishers go on.
    let mut sub = b.json().await;
    sub.subscribe_from("feed", Some(last), Some(&epoch)).await;
    while last < MESSAGES {
        let (offset, got, _) = numbered(&sub.recv().await);
        assert_eq!(offset, last + 1, "no gap and no duplicate");
        assert_eq!(got, epoch);
        last = offset;
    }
    publishing.await.unwrap();
    sub.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restart_keeps_the_history_and_a_redis_restart_changes_the_epoch() {
    let mut redis = RedisServer::start();
    let first = node("a", &redis, 100).await;
    let mut publisher = first.json().await;
    let mut epoch = None;
    for i in 0..50 {
        epoch = Some(publish(&mut publisher, "chat.room", i).await.1);
    }
    let epoch = epoch.unwrap();
    drop(publisher);
    first.stop().await;

    // A new node process: the history is in Redis.
    let second = node("a", &redis, 100).await;
    let mut client = second.json().await;
    let (latest, same) = client
        .subscribe_from("chat.room", Some(41), Some(&epoch))
        .await
        .unwrap();
    assert_eq!((latest, &same), (50, &epoch));
    for offset in 42..=50 {
        let (got, _, payload) = numbered(&client.recv().await);
        assert_eq!((got, payload), (offset, offset - 1));
    }
    let mut publisher = second.json().await;
    assert_eq!(
        publish(&mut publisher, "chat.room", 50).await,
        (51, epoch.clone())
    );
    assert_eq!(numbered(&client.recv().await).0, 51);
    drop((client, publisher));

    // Redis restarts without persistence: the offsets restart, in a new
    // epoch, and a client resuming from the old one is reset.
    // (The link may notice, reconnect and be up again before a check for
    // "down" would run: the probes below are what waits for Redis.)
    redis.restart();
    let mut publisher = second.json().await;
    // The first command after the restart may find the store's connection
    // broken: it fails with `internal` (the client may try again) while
    // the connection is made anew.
    let mut tries = 0;
    loop {
        let id = publisher.next_id();
        let probe = Envelope::Publish {
            id: Some(id),
            topic: Topic::new("probe").unwrap(),
            payload: Payload::from_json("0").unwrap(),
        };
        match publisher.request(&probe).await {
            Envelope::Ack { .. } => break,
            Envelope::Error { code, .. } if tries < 20 => {
                assert_eq!(code, starling_protocol::ErrorCode::Internal);
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("the store did not come back: {other:?}"),
        }
    }
    let (_, metrics) = http_get(&format!("{}/metrics", second.http_url())).await;
    let failures = starling_tests::metric(&metrics, "starling_history_store_failures_total");
    assert_eq!(failures, f64::from(tries), "each failed publish is counted");
    let requests = starling_tests::metric(&metrics, "starling_history_store_requests_total");
    // The probes, and the read and publish before the restart.
    assert!(requests >= f64::from(tries) + 3.0, "{requests} requests");
    let mut new_epoch = None;
    for i in 0..5 {
        let (offset, got) = publish(&mut publisher, "chat.room", 100 + i).await;
        assert_eq!(offset, i + 1);
        new_epoch = Some(got);
    }
    let new_epoch = new_epoch.unwrap();
    assert_ne!(new_epoch, epoch);
    let mut client = second.json().await;
    let (latest, got) = client
        .subscribe_from("chat.room", Some(41), Some(&epoch))
        .await
        .unwrap();
    assert_eq!((latest, got), (5, new_epoch));
    client.expect_reset("chat.room").await;
    for offset in 1..=5 {
        assert_eq!(numbered(&client.recv().await).0, offset);
    }
    second.stop().await;
}

/// Evicted messages are reported with their exact count before the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_redis_counts_what_was_trimmed() {
    let redis = RedisServer::start();
    let a = node("a", &redis, 3).await;
    let mut publisher = a.json().await;
    let mut epoch = None;
    // `MAXLEN ~` trims whole blocks of entries: publish enough for one to go.
    for i in 0..400 {
        epoch = Some(publish(&mut publisher, "t", i).await.1);
    }
    let epoch = epoch.unwrap();
    let mut client = a.json().await;
    client.subscribe_from("t", Some(0), Some(&epoch)).await;
    let Envelope::Lagged {
        missed: Some(missed),
        reset: false,
        ..
    } = client.recv().await
    else {
        panic!("expected lagged with a count");
    };
    // The rest is replayed from the first retained offset, then nothing.
    let (first, _, _) = numbered(&client.recv().await);
    assert_eq!(first, missed + 1);
    for offset in first + 1..=400 {
        assert_eq!(numbered(&client.recv().await).0, offset);
    }
    client.expect_silence(Duration::from_millis(200)).await;
}

#[test]
fn the_history_store_must_fit_the_other_settings() {
    use starling_broker::{Broker, Config, HistoryStore, StartError};
    let mut config = Config::ephemeral();
    config.history_store = Some(HistoryStore::Redis);
    let refused = Broker::new(config).unwrap_err();
    assert!(matches!(refused, StartError::HistoryStore(_)), "{refused}");
    assert!(refused.to_string().contains("--redis-url"), "{refused}");

    // A cluster's nodes cannot keep history in memory; without history,
    // where it would be kept does not matter.
    let mut config = Config::ephemeral();
    config.redis_url = Some("redis://127.0.0.1:1".into());
    config.history_store = Some(HistoryStore::Memory);
    assert!(Broker::new(config.clone()).is_ok());
    config.history = 10;
    let refused = Broker::new(config).unwrap_err();
    assert!(matches!(refused, StartError::HistoryStore(_)), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_api_pages_from_redis_are_bounded_in_bytes() {
    let redis = RedisServer::start();
    let a = node("a", &redis, 10).await;
    starling_tests::assert_history_pages_are_bounded_in_bytes(&a, "big").await;
}
