//! Nodes act as one through a real Redis Cluster with sharded pub/sub.

use std::time::Duration;

use starling_protocol::Codec;
use starling_tests::redis::RedisCluster;
use starling_tests::{Client, TestBroker, http_get, metric};

const CHANNEL_PREFIX: &str = "starling:t:";

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
        cluster
            .wait_shard_numsub(&format!("{CHANNEL_PREFIX}{topic}"), 2)
            .await;
        subscribers.push((on_a, on_b));
    }
    // Relayed through sharded channels only, not classic pub/sub.
    assert_eq!(cluster.numsub(&format!("{CHANNEL_PREFIX}{}", topics[0])), 0);
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
    cluster
        .wait_shard_numsub(&format!("{CHANNEL_PREFIX}{}", topics[0]), 1)
        .await;
    on_a.close().await;
    cluster
        .wait_shard_numsub(&format!("{CHANNEL_PREFIX}{}", topics[0]), 0)
        .await;
}
