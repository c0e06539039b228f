//! Several nodes act as one through a real redis-server.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use starling_protocol::{Codec, Envelope, Payload};
use starling_tests::redis::RedisServer;
use starling_tests::{Client, DelayProxy, TestBroker, WAIT, http_get, http_post, metric};

const CHANNEL_PREFIX: &str = "starling:t:";

async fn subscribed(
    redis: &RedisServer,
    nodes: &[&TestBroker],
    topic: &str,
    codec: Codec,
) -> Vec<Client> {
    let mut clients = Vec::new();
    for node in nodes {
        let mut c = Client::connect(&node.ws_url(), Some(codec)).await;
        c.subscribe(topic).await;
        clients.push(c);
    }
    redis
        .wait_numsub(&format!("{CHANNEL_PREFIX}{topic}"), nodes.len() as u64)
        .await;
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_every_node_get_each_message_once_in_order() {
    let redis = RedisServer::start();
    let a = TestBroker::node("a", &redis.url()).await;
    let b = TestBroker::node("b", &redis.url()).await;
    let c = TestBroker::node("c", &redis.url()).await;
    let mut json = subscribed(&redis, &[&a, &b, &c], "room.1", Codec::Json).await;
    let mut msgpack = subscribed(&redis, &[&a, &b, &c], "room.1", Codec::MsgPack).await;

    // From a WebSocket client on a, then from HTTP on c.
    let mut publisher = a.json().await;
    for i in 0..20 {
        publisher.publish("room.1", &i.to_string()).await;
    }
    // Each node relays its own publishes in order; between two publishers
    // on two nodes there is no order, so the second waits for the first.
    for client in json.iter_mut().chain(msgpack.iter_mut()) {
        for i in 0..20 {
            let (topic, payload) = client.recv_message().await;
            assert_eq!(topic, "room.1");
            assert_eq!(payload.decode::<u64>().unwrap(), i);
        }
    }
    let (status, _) = http_post(
        &format!("{}/api/publish", c.http_url()),
        r#"{"topic":"room.1","payload":20}"#,
    )
    .await;
    assert_eq!(status, 202);
    for client in json.iter_mut().chain(msgpack.iter_mut()) {
        let (topic, payload) = client.recv_message().await;
        assert_eq!(topic, "room.1");
        assert_eq!(payload.decode::<u64>().unwrap(), 20);
        client.expect_silence(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(
            &http_get(&format!("{}/metrics", a.http_url())).await.1,
            "starling_cluster_relayed_out_total"
        ),
        20.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_publishers_of_hundred_messages_lose_and_duplicate_nothing() {
    const PUBLISHERS: u64 = 100;
    const MESSAGES: u64 = 100;
    let redis = RedisServer::start();
    let nodes = [
        TestBroker::node_with("a", &redis.url(), |c| c.subscriber_buffer = 16_384).await,
        TestBroker::node_with("b", &redis.url(), |c| c.subscriber_buffer = 16_384).await,
        TestBroker::node_with("c", &redis.url(), |c| c.subscriber_buffer = 16_384).await,
    ];
    let node_refs: Vec<&TestBroker> = nodes.iter().collect();
    let subscribers = subscribed(&redis, &node_refs, "load", Codec::MsgPack).await;

    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                c.set_patience(WAIT * 4);
                let mut next: HashMap<u64, u64> = HashMap::new();
                for _ in 0..PUBLISHERS * MESSAGES {
                    let (_, payload) = c.recv_message().await;
                    let [p, seq]: [u64; 2] = payload.decode().unwrap();
                    let expected = next.entry(p).or_insert(0);
                    assert_eq!(seq, *expected, "publisher {p}: out of order or duplicated");
                    *expected += 1;
                }
                c.expect_silence(Duration::from_millis(200)).await;
                next
            })
        })
        .collect();

    let urls: Vec<String> = nodes.iter().map(TestBroker::ws_url).collect();
    join_all((0..PUBLISHERS).map(|p| {
        let url = urls[p as usize % urls.len()].clone();
        async move {
            let mut c = Client::connect(&url, Some(Codec::Json)).await;
            for seq in 0..MESSAGES {
                c.publish_nowait("load", Payload::from_json(&format!("[{p},{seq}]")).unwrap())
                    .await;
            }
            c.publish("side", "0").await;
        }
    }))
    .await;

    for reader in readers {
        let next = tokio::time::timeout(WAIT * 12, reader)
            .await
            .expect("in time")
            .unwrap();
        assert_eq!(next.len() as u64, PUBLISHERS);
        assert!(next.values().all(|n| *n == MESSAGES));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_subscribers_receives_none_of_the_traffic() {
    let redis = RedisServer::start();
    let a = TestBroker::node("a", &redis.url()).await;
    let b = TestBroker::node("b", &redis.url()).await;
    let quiet = TestBroker::node("quiet", &redis.url()).await;
    let _other = subscribed(&redis, &[&quiet], "elsewhere", Codec::Json).await;
    let mut subs = subscribed(&redis, &[&b], "busy", Codec::Json).await;
    let mut pattern = b.json().await;
    pattern.subscribe("busy.*").await;

    let mut publisher = a.json().await;
    for i in 0..50 {
        publisher.publish("busy", &i.to_string()).await;
    }
    for i in 0..50u64 {
        assert_eq!(subs[0].recv_message().await.1.decode::<u64>().unwrap(), i);
    }
    // Redis knows one subscriber of the channel (b), and quiet got nothing.
    assert_eq!(redis.numsub(&format!("{CHANNEL_PREFIX}busy")), 1);
    assert_eq!(redis.numpat(), 1);
    let metrics = http_get(&format!("{}/metrics", quiet.http_url())).await.1;
    assert_eq!(metric(&metrics, "starling_cluster_relayed_in_total"), 0.0);

    // When the last local subscriber leaves, so does the Redis subscription.
    drop(subs);
    redis.wait_numsub(&format!("{CHANNEL_PREFIX}busy"), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_leaves_the_others_alone_and_it_rejoins() {
    let redis = RedisServer::start();
    let a = TestBroker::node("a", &redis.url()).await;
    let b = TestBroker::node("b", &redis.url()).await;
    let c = TestBroker::node("c", &redis.url()).await;
    let mut subs = subscribed(&redis, &[&b, &c], "news", Codec::Json).await;
    let mut publisher = a.json().await;
    publisher.publish("news", "1").await;
    for s in subs.iter_mut() {
        assert_eq!(s.recv_message().await.1.decode::<u64>().unwrap(), 1);
    }

    let mut gone = subs.pop().unwrap();
    c.stop().await;
    let (code, _, _) = gone.recv_close().await;
    assert_eq!(code, 1001);
    redis.wait_numsub(&format!("{CHANNEL_PREFIX}news"), 1).await;
    publisher.publish("news", "2").await;
    assert_eq!(subs[0].recv_message().await.1.decode::<u64>().unwrap(), 2);

    let c = TestBroker::node("c", &redis.url()).await;
    let mut back = c.json().await;
    back.subscribe("news").await;
    redis.wait_numsub(&format!("{CHANNEL_PREFIX}news"), 2).await;
    publisher.publish("news", "3").await;
    assert_eq!(subs[0].recv_message().await.1.decode::<u64>().unwrap(), 3);
    assert_eq!(back.recv_message().await.1.decode::<u64>().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_local_delivery_and_cross_node_delivery_resumes() {
    let mut redis = RedisServer::start();
    let a = TestBroker::node("a", &redis.url()).await;
    let b = TestBroker::node("b", &redis.url()).await;
    let mut both = subscribed(&redis, &[&a, &b], "feed", Codec::Json).await;
    let mut remote = both.pop().unwrap();
    let mut local = both.pop().unwrap();
    let mut publisher = a.json().await;
    publisher.publish("feed", "1").await;
    assert_eq!(local.recv_message().await.1.decode::<u64>().unwrap(), 1);
    assert_eq!(remote.recv_message().await.1.decode::<u64>().unwrap(), 1);

    redis.stop();
    a.wait_cluster(false).await;
    b.wait_cluster(false).await;
    let (status, body) = http_get(&format!("{}/healthz", a.http_url())).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"status\":\"degraded\"") && body.contains("\"cluster\":\"down\""),
        "{body}"
    );
    // Local delivery never stops.
    for i in 2..12 {
        publisher.publish("feed", &i.to_string()).await;
        assert_eq!(local.recv_message().await.1.decode::<u64>().unwrap(), i);
    }

    redis.restart();
    a.wait_cluster(true).await;
    b.wait_cluster(true).await;
    redis.wait_numsub(&format!("{CHANNEL_PREFIX}feed"), 2).await;
    publisher.publish("feed", "100").await;
    assert_eq!(local.recv_message().await.1.decode::<u64>().unwrap(), 100);
    // Pub/sub is at most once: what was published while Redis was down may
    // be lost for other nodes (a batch in flight can still get through when
    // Redis is back); whatever arrives is in order, and the new message too.
    let mut last = 1;
    loop {
        let n = remote.recv_message().await.1.decode::<u64>().unwrap();
        assert!(n > last && (n < 12 || n == 100), "{n} after {last}");
        last = n;
        if n == 100 {
            break;
        }
    }
    let metrics = http_get(&format!("{}/metrics", b.http_url())).await.1;
    assert!(metric(&metrics, "starling_cluster_redis_reconnects_total") >= 1.0);
    let metrics = http_get(&format!("{}/metrics", a.http_url())).await.1;
    assert!(
        metric(&metrics, "starling_cluster_relay_failed_total") >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishers_identity_crosses_nodes() {
    use starling_tests::tokens::{Claims, SECRET};
    let redis = RedisServer::start();
    let auth = |c: &mut starling_broker::Config| c.jwt_secret = Some(SECRET.into());
    let a = TestBroker::node_with("a", &redis.url(), auth).await;
    let b = TestBroker::node_with("b", &redis.url(), auth).await;
    let token = Claims::new("ada")
        .publish(&["chat.>"])
        .subscribe(&["chat.>"])
        .hs256();
    let url = |node: &TestBroker| format!("{}?token={token}", node.ws_url());
    let mut on_b = Client::connect(&url(&b), Some(Codec::MsgPack)).await;
    on_b.subscribe("chat.lobby").await;
    redis
        .wait_numsub(&format!("{CHANNEL_PREFIX}chat.lobby"), 1)
        .await;
    let mut on_a = Client::connect(&url(&a), Some(Codec::Json)).await;
    on_a.publish("chat.lobby", r#""hi from a""#).await;
    match on_b.recv().await {
        Envelope::Message { from, payload, .. } => {
            assert_eq!(from.as_deref(), Some("ada"));
            assert_eq!(payload.to_json_string(), r#""hi from a""#);
        }
        other => panic!("expected a message, got {other:?}"),
    }
    a.stop().await;
    b.stop().await;
}

/// Waits until the node's Redis link is up, failing after `patience`.
async fn wait_up(node: &TestBroker, patience: Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    while node.broker().cluster_up() != Some(true) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the redis link of {} is not up after {patience:?}",
            node.broker().node_id()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_subscriptions_come_back_after_a_redis_restart() {
    const TOPICS: usize = 20_000;
    const CONNECTIONS: usize = 4;
    const SAMPLE: usize = 200;
    let started = std::time::Instant::now();
    let mut redis = RedisServer::start();
    // a reaches Redis through a proxy: a network without delay at first.
    let network = DelayProxy::start(redis.port(), Duration::ZERO).await;
    let a = TestBroker::node_with("a", &network.redis_url(), |c| {
        c.max_subscriptions = TOPICS / CONNECTIONS;
    })
    .await;
    let b = TestBroker::node("b", &redis.url()).await;
    let topic = |i: usize| format!("restore.{i}");
    // Connection `c` holds the topics `i` with `i % CONNECTIONS == c`.
    let mut subscribers = Vec::new();
    for c in 0..CONNECTIONS {
        let mut client = a.msgpack().await;
        let topics: Vec<String> = (c..TOPICS).step_by(CONNECTIONS).map(topic).collect();
        client
            .subscribe_all(topics.iter().map(String::as_str))
            .await;
        subscribers.push(client);
    }
    redis
        .wait_channel_subscriptions(TOPICS as u64, Duration::from_secs(20))
        .await;
    eprintln!("{TOPICS} topics subscribed in {:?}", started.elapsed());

    // Now a round trip takes 2 ms: restoring the subscriptions one round
    // trip each would take 40 s.
    network.set_delay(Duration::from_millis(1));
    redis.restart();
    let restarted = std::time::Instant::now();
    // Every subscription is back in Redis, in bounded time.
    redis
        .wait_channel_subscriptions(TOPICS as u64, Duration::from_secs(30))
        .await;
    wait_up(&a, Duration::from_secs(5)).await;
    wait_up(&b, Duration::from_secs(5)).await;
    eprintln!("subscriptions restored in {:?}", restarted.elapsed());

    // Pub/sub is at most once: until b's first message crosses, its link
    // may still be coming back, so it probes with the first topic.
    let mut publisher = b.json().await;
    let probe = topic(0);
    loop {
        publisher.publish(&probe, "-1").await;
        let got = tokio::time::timeout(Duration::from_millis(200), subscribers[0].recv()).await;
        if let Ok(Envelope::Message { topic, .. }) = got {
            assert_eq!(topic.as_str(), probe);
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "nothing crosses from b to a after the restart"
        );
    }
    // Then a sample of the topics, the first and the last included: each
    // reaches its subscriber, in the order published.
    let sample: Vec<usize> = (0..SAMPLE)
        .map(|k| k * (TOPICS - 1) / (SAMPLE - 1))
        .collect();
    for &i in &sample {
        publisher.publish(&topic(i), &i.to_string()).await;
    }
    let readers = subscribers.into_iter().enumerate().map(|(c, mut client)| {
        let expected: Vec<usize> = sample
            .iter()
            .copied()
            .filter(|i| i % CONNECTIONS == c)
            .collect();
        async move {
            for i in expected {
                let (got, n) = loop {
                    let (got, payload) = client.recv_message().await;
                    let n = payload.decode::<i64>().unwrap();
                    // A probe that was slow to cross is skipped.
                    if n >= 0 {
                        break (got, n);
                    }
                };
                assert_eq!((got, n), (format!("restore.{i}"), i as i64));
            }
        }
    });
    join_all(readers).await;
    eprintln!(
        "sample delivered {:?} after the restart",
        restarted.elapsed()
    );
}

/// A relayed message (wire.rs) from node `origin` on `topic` with a JSON
/// payload, every byte of it ASCII so that it travels as a `&str`.
fn relayed(origin: &str, topic: &str, json: &str) -> String {
    let mut message = String::from("\u{1}\u{1}");
    message.push_str(&"\0".repeat(8));
    message.push(char::from(origin.len() as u8));
    message.push_str(origin);
    message.push(char::from(topic.len() as u8));
    message.push_str(topic);
    message.push_str(json);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_naming_another_topic_than_its_channel_is_dropped() {
    let redis = RedisServer::start();
    let a = TestBroker::node("a", &redis.url()).await;
    let mut real = subscribed(&redis, &[&a], "spoof.real", Codec::Json).await;
    let mut other = subscribed(&redis, &[&a], "spoof.other", Codec::Json).await;
    let mut pattern = a.json().await;
    pattern.subscribe("spoof.*").await;
    while redis.numpat() != 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // On the channel of spoof.real, a message that says it is spoof.other:
    // neither spoof.other's subscriber nor the pattern (through its glob)
    // may take it for a message of spoof.other.
    let channel = format!("{CHANNEL_PREFIX}spoof.real");
    let spoof = relayed("mallory", "spoof.other", "666");
    let reply = redis.command(&["PUBLISH", &channel, &spoof]).unwrap();
    assert!(reply.starts_with(":2"), "{reply}");
    // A well-formed message on the same channel goes through.
    let genuine = relayed("mallory", "spoof.real", "1");
    redis.command(&["PUBLISH", &channel, &genuine]).unwrap();
    let (topic, payload) = real[0].recv_message().await;
    assert_eq!(
        (topic.as_str(), payload.to_json_string()),
        ("spoof.real", "1".into())
    );
    let (topic, payload) = pattern.recv_message().await;
    assert_eq!(
        (topic.as_str(), payload.to_json_string()),
        ("spoof.real", "1".into())
    );
    other[0].expect_silence(Duration::from_millis(200)).await;
    real[0].expect_silence(Duration::from_millis(100)).await;
    pattern.expect_silence(Duration::from_millis(100)).await;
    let metrics = http_get(&format!("{}/metrics", a.http_url())).await.1;
    assert_eq!(metric(&metrics, "starling_cluster_relayed_in_total"), 2.0);
    assert_eq!(
        metric(&metrics, "starling_cluster_relay_rejected_total"),
        2.0
    );
}
