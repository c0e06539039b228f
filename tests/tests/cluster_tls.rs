//! Nodes that cluster through a real redis-server over TLS (`rediss://`),
//! with the test's own authority and client certificates; a node that Redis
//! or the node itself does not trust stays a working single node.

use std::time::Duration;

use starling_broker::{Broker, Config, StartError};
use starling_protocol::Codec;
use starling_tests::redis::RedisServer;
use starling_tests::{Client, TestBroker, TestCerts};

/// Trust `certs`' authority and present its certificate to Redis.
fn trusting(config: &mut Config, certs: &TestCerts) {
    config.redis_ca = Some(certs.ca_path.clone());
    config.redis_client_cert = Some(certs.cert_path.clone());
    config.redis_client_key = Some(certs.key_path.clone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_relay_through_redis_over_tls() {
    let certs = TestCerts::new();
    let redis = RedisServer::start_tls(&certs);
    let url = redis.tls_url();
    let a = TestBroker::node_with("a", &url, |c| trusting(c, &certs)).await;
    let b = TestBroker::node_with("b", &url, |c| trusting(c, &certs)).await;

    let mut on_b = Client::connect(&b.ws_url(), Some(Codec::MsgPack)).await;
    on_b.subscribe("room.tls").await;
    redis.wait_numsub("starling:t:room.tls", 1).await;

    let mut on_a = a.json().await;
    for i in 0..10u64 {
        on_a.publish("room.tls", &i.to_string()).await;
    }
    for i in 0..10u64 {
        let (topic, payload) = on_b.recv_message().await;
        assert_eq!(topic, "room.tls");
        assert_eq!(payload.decode::<u64>().unwrap(), i);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_link_stays_down_and_the_node_serves_alone() {
    let certs = TestCerts::new();
    let redis = RedisServer::start_tls(&certs);
    let url = redis.tls_url();
    let stranger = TestCerts::new();

    // No client certificate: Redis refuses the handshake.
    let anonymous = TestBroker::with_config(|c| {
        c.node_id = Some("anonymous".into());
        c.redis_url = Some(url.clone());
        c.redis_ca = Some(certs.ca_path.clone());
    })
    .await;
    // Redis's certificate is not of the authority this node trusts.
    let suspicious = TestBroker::with_config(|c| {
        c.node_id = Some("suspicious".into());
        c.redis_url = Some(url.clone());
        trusting(c, &certs);
        c.redis_ca = Some(stranger.ca_path.clone());
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in [&anonymous, &suspicious] {
        assert_eq!(node.broker().cluster_up(), Some(false));
        // Local clients are served all the same.
        let mut subscriber = node.json().await;
        subscriber.subscribe("room.local").await;
        let mut publisher = node.msgpack().await;
        publisher.publish("room.local", "1").await;
        let (topic, _) = subscriber.recv_message().await;
        assert_eq!(topic, "room.local");
    }
    anonymous.stop().await;
    suspicious.stop().await;
}

#[tokio::test]
async fn tls_files_are_checked_at_start_up() {
    let certs = TestCerts::new();
    let start = |adjust: &dyn Fn(&mut Config)| {
        let mut config = Config::ephemeral();
        adjust(&mut config);
        Broker::new(config).expect_err("a start-up error")
    };

    let error = start(&|c| {
        c.redis_url = Some("redis://127.0.0.1:1".into());
        c.redis_ca = Some(certs.ca_path.clone());
    });
    assert!(matches!(error, StartError::Cluster(_)), "{error:?}");
    assert!(error.to_string().contains("rediss://"), "{error}");

    let missing = certs.dir().join("missing-ca.pem");
    let error = start(&|c| {
        c.redis_url = Some("rediss://localhost:1".into());
        c.redis_ca = Some(missing.clone());
    });
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );
}
