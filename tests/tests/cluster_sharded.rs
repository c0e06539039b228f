//! Nodes act as one through a real Redis Cluster with sharded pub/sub.

use std::time::Duration;

use starling_protocol::Codec;
use starling_tests::redis::RedisCluster;
use starling_tests::{Client, TestBroker, http_get, metric};

const CHANNEL_PREFIX: &str = "starling:t:";

/// A topic's sharded channel: the topic is a hash tag.
fn channel(topic: &str) -> String {
    format!("{CHANNEL_PREFIX}{{{topic}}}")
}

async fn sharded_node(id: &str, cluster: &RedisCluster) -> TestBroker {
    TestBroker::node_with(id, &cluster.url(), |c| c.redis_sharded = true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_nodes_deliver_each_message_once_in_order_over_the_shards() {
    let cluster = RedisCluster::start();
    let a = sharded_node("a", &cluster).await;
    let b = sharded_node("b", &cluster).await;

    // Several topics, so their channels land on different shards.
    let topics: Vec<String> = (0..6).map(|i| format!("orders.region-{i}")).collect();
    let mut subscribers = Vec::new();
    for topic in &topics {
        let mut on_a = Client::connect(&a.ws_url(), Some(Codec::Json)).await;
        let mut on_b = Client::connect(&b.ws_url(), Some(Codec::MsgPack)).await;
        on_a.subscribe(topic).await;
        on_b.subscribe(topic).await;
        cluster.wait_shard_numsub(&channel(topic), 2).await;
        subscribers.push((on_a, on_b));
    }
    // Relayed through sharded channels only, not classic pub/sub.
    assert_eq!(cluster.numsub(&channel(&topics[0])), 0);
    let shards_used = cluster
        .each(&["PUBSUB", "SHARDCHANNELS"])
        .iter()
        .filter(|reply| reply.contains(CHANNEL_PREFIX))
        .count();
    assert!(shards_used >= 2, "six topics all on one shard");

    let mut publisher = a.json().await;
    for (t, topic) in topics.iter().enumerate() {
        for i in 0..20 {
            publisher.publish(topic, &format!("{}", t * 100 + i)).await;
        }
    }
    for (t, (on_a, on_b)) in subscribers.iter_mut().enumerate() {
        for client in [on_a, on_b] {
            for i in 0..20 {
                let (topic, payload) = client.recv_message().await;
                assert_eq!(topic, topics[t]);
                assert_eq!(payload.decode::<usize>().unwrap(), t * 100 + i);
            }
            client.expect_silence(Duration::from_millis(100)).await;
        }
    }
    let metrics = http_get(&format!("{}/metrics", b.http_url())).await.1;
    assert_eq!(metric(&metrics, "starling_cluster_relayed_in_total"), 120.0);

    // The last local subscriber leaving removes the node's sharded subscription.
    let (on_a, on_b) = subscribers.remove(0);
    drop(on_b);
    cluster.wait_shard_numsub(&channel(&topics[0]), 1).await;
    on_a.close().await;
    cluster.wait_shard_numsub(&channel(&topics[0]), 0).await;
}

/// History in a Redis Cluster: a topic's stream, epoch and sharded channel
/// share a hash tag, so one script on one shard numbers and publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_nodes_share_history_and_a_client_resumes_on_another_node() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let node = |id: &'static str| {
        TestBroker::node_with(id, &url, |c| {
            c.redis_sharded = true;
            c.history = 1_000;
        })
    };
    let a = node("a").await;
    let b = node("b").await;
    // Topics on different shards.
    let topics: Vec<String> = (0..6).map(|i| format!("rooms.r{i}")).collect();
    let mut publishers = [a.json().await, b.msgpack().await];
    let mut subscribers = Vec::new();
    for topic in &topics {
        let mut sub = a.json().await;
        let (latest, epoch) = sub.subscribe(topic).await.expect("a position");
        assert_eq!(latest, 0);
        subscribers.push((sub, epoch));
    }
    for round in 0..10u64 {
        for topic in &topics {
            let publisher = &mut publishers[(round % 2) as usize];
            // Acked, so that the publishers on two nodes take turns.
            publisher.publish(topic, &round.to_string()).await;
        }
    }
    // Read half on A, then resume on B.
    for (i, (sub, epoch)) in subscribers.into_iter().enumerate() {
        let mut sub = sub;
        for offset in 1..=5 {
            let (got, got_epoch) = match sub.recv().await {
                starling_protocol::Envelope::Message { offset, epoch, .. } => (offset, epoch),
                other => panic!("expected a message, got {other:?}"),
            };
            assert_eq!((got, got_epoch.as_ref()), (Some(offset), Some(&epoch)));
        }
        sub.close().await;
        let mut resumed = b.json().await;
        let (latest, same) = resumed
            .subscribe_from(&topics[i], Some(5), Some(&epoch))
            .await
            .unwrap();
        assert_eq!((latest, same), (10, epoch));
        for offset in 6..=10 {
            match resumed.recv().await {
                starling_protocol::Envelope::Message {
                    offset: got,
                    payload,
                    ..
                } => {
                    assert_eq!(got, Some(offset));
                    assert_eq!(payload.decode::<u64>().unwrap(), offset - 1);
                }
                other => panic!("expected a message, got {other:?}"),
            }
        }
        resumed.expect_silence(Duration::from_millis(100)).await;
    }
}

/// Presence over a Redis Cluster: a topic's presence keys and its sharded
/// channel share a slot, so the scripts announce on it; members agree on
/// both nodes across topics on different shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_nodes_share_presence() {
    use starling_tests::presence::{enter, join_of, leave_of, members, watcher};

    let cluster = RedisCluster::start();
    let url = cluster.url();
    let node = |id: &'static str| {
        TestBroker::node_with(id, &url, |c| {
            c.redis_sharded = true;
            c.presence_prefixes = vec!["room-".into()];
            c.presence_grace_ms = 0;
        })
    };
    let (a, b) = (node("a").await, node("b").await);
    for room in ["room-1", "room-2", "room-3"] {
        let mut on_a = watcher(&a, room, "wa").await;
        let mut on_b = watcher(&b, room, "wb").await;
        assert_eq!(join_of(on_a.recv().await).0, "wb");
        let mut ada = b.json().await;
        enter(&mut ada, room, Some("ada"), None).await;
        assert_eq!(join_of(on_a.recv().await).0, "ada");
        assert_eq!(join_of(on_b.recv().await).0, "ada");
        let expected = (
            3,
            vec![("ada".into(), 1), ("wa".into(), 1), ("wb".into(), 1)],
        );
        assert_eq!(members(&mut on_a, room).await, expected);
        ada.close().await;
        assert_eq!(leave_of(on_a.recv().await), "ada");
        assert_eq!(leave_of(on_b.recv().await), "ada");
    }
}
